#!/usr/bin/env python3
"""Writes the compare.sh report: markdown tables, the issue-7 targets and an SVG plot.

Usage: compare-report.py RESULTS_DIR OUT.md key=value...
Keys: clk_tck stamp machine commit versions rates systems duration warmup connections path
workers saturation_connections saturation_duration scale_services scale_endpoints
profile_rate profile_duration profile_side smoke hot_symbols.

RESULTS_DIR holds, per system S and rate R (or `max` for the closed-loop run): S-R.json (the
trellis-bench report) and S-R.procs (name rss_idle_kib rss_load_kib cpu_ticks user_ticks
sys_ticks per line); S-idle.rss and S-scale.rss (client VmRSS, client RssAnon, server VmRSS, server RssAnon in KiB,
idle after start-up and with the large configuration);
and, when profiled, profile.json, profile.self and profile.inclusive (callgrind_annotate).
"""
import json
import math
import os
import re
import sys

results, out = sys.argv[1:3]
arg = dict(a.split("=", 1) for a in sys.argv[3:])
clk_tck = int(arg["clk_tck"])
rates = [int(r) for r in arg["rates"].split()]
systems = arg["systems"].split()
proxied = [s for s in systems if s != "direct"]

TITLE = {
    "direct": "direct",
    "trellis": "Trellis",
    "trellis-mtls": "Trellis mTLS",
    "trellis-mtls-h2": "Trellis mTLS, HTTP/2 between",
    "envoy": "Envoy",
    "envoy-mtls": "Envoy mTLS",
    "envoy-mtls-h2": "Envoy mTLS, HTTP/2 between",
    "haproxy": "HAProxy",
}
DETAIL = {
    "direct": "generator → backend",
    "trellis": "2 × trellis-proxy, HTTP/1.1 keep-alive between, L7 routes on the client side",
    "trellis-mtls": "2 × trellis-proxy joined to a control plane, mutual TLS 1.3 with SPIFFE identities (HTTP/1.1 "
                    "keep-alive inside, the default), strict policy, same routes",
    "trellis-mtls-h2": "as Trellis mTLS, with the service's `meshHttp1: multiplex`: the HTTP/1.1 requests travel "
                       "multiplexed over one HTTP/2 connection between the proxies",
    "envoy": "2 × Envoy, HTTP/1.1 keep-alive between, the same routes",
    "envoy-mtls": "2 × Envoy, mutual TLS 1.3 (HTTP/1.1 keep-alive inside, Istio's default), SPIFFE SAN checks both "
                  "ways, the same routes",
    "envoy-mtls-h2": "as Envoy mTLS, with HTTP/2 to the server side (`http2_protocol_options`, Istio's `UPGRADE`)",
    "haproxy": "2 × HAProxy, HTTP/1.1 keep-alive, no routes (plaintext baseline)",
}
COLOR = {"direct": "#555555", "trellis": "#2e5bd8", "trellis-mtls": "#0b2f8a", "trellis-mtls-h2": "#7f9cf0",
         "envoy": "#e07a7a", "envoy-mtls": "#a31515", "envoy-mtls-h2": "#e0a030", "haproxy": "#1f8a4c"}
# The Envoy row each system is compared with: the same transport.
ENVOY_PEER = {"trellis": "envoy", "trellis-mtls": "envoy-mtls", "trellis-mtls-h2": "envoy-mtls-h2",
              "haproxy": "envoy", "envoy": "envoy", "envoy-mtls": "envoy-mtls", "envoy-mtls-h2": "envoy-mtls-h2"}


def load(label):
    name = os.path.join(results, label)
    try:
        report = json.load(open(name + ".json"))
    except (OSError, ValueError):
        return None
    procs = {}
    for line in open(name + ".procs"):
        proc, idle, load_, ticks, user, sys_ = line.split()
        procs[proc] = {"idle_mib": int(idle) / 1024, "load_mib": int(load_) / 1024, "cpu_s": int(ticks) / clk_tck,
                       "user_s": int(user) / clk_tck, "sys_s": int(sys_) / clk_tck}
    report["procs"] = procs
    return report


data = {(s, r): load(f"{s}-{r}") for s in systems for r in rates + ["max"]}
def memory(name):
    """{system: (client RSS, client anon, server RSS, server anon)} in MiB."""
    found = {}
    for s in proxied:
        try:
            values = [int(v) / 1024 for v in open(os.path.join(results, f"{s}-{name}.rss")).read().split()]
        except (OSError, ValueError):
            continue
        if len(values) == 4:
            found[s] = tuple(values)
    return found


scale = memory("scale")
idle_memory = memory("idle")


def q(report, key):
    return report["latency_ms"].get(key) if report else None


def fmt(v, digits=3):
    return "–" if v is None else f"{v:.{digits}f}"


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def fr(v):
    return "–" if v is None else f"{v:.2f}×"


def added(s, rate, key):
    r, d = data.get((s, rate)), data.get(("direct", rate))
    if not r or not d or s == "direct":
        return None
    return q(r, key) - q(d, key)


def cpu_per_10k(s, rate, proc):
    r = data.get((s, rate))
    if not r or not r["ok"] or proc not in r["procs"]:
        return None
    return r["procs"][proc]["cpu_s"] / r["ok"] * 10000


def cpu_mean(s, rate):
    c, v = cpu_per_10k(s, rate, "client"), cpu_per_10k(s, rate, "server")
    return None if c is None or v is None else (c + v) / 2


def max_rate(s):
    r = data.get((s, "max"))
    return r["achieved_rate"] if r else None


def busiest_cores(s):
    """CPU cores the busier of the two proxies used during the closed-loop run."""
    r = data.get((s, "max"))
    if not r or s == "direct":
        return None
    return max(r["procs"][p]["cpu_s"] for p in ("client", "server")) / r["duration_s"]


def rss(s, rate, proc, key):
    r = data.get((s, rate))
    return r["procs"][proc][key] if r and proc in r["procs"] else None


L = [f"# Trellis, Envoy and HAProxy side by side — {arg['stamp']}", ""]
if arg.get("smoke") == "1":
    L += ["**Smoke run** (a second per phase): checks that the suite works; the figures mean nothing.", ""]
L += [f"- Machine: {arg['machine']}. Everything (generator, backend, proxies) shares it; nothing is pinned.",
      f"- Commit {arg['commit']}; {arg['versions']}.",
      f"- Every proxy has **{arg['workers']} worker thread(s)**.",
      f"- Load: open loop (`trellis-bench`, latency from each request's intended start, so coordinated omission is "
      f"corrected), {arg['connections']} HTTP/1.1 keep-alive connections from the generator, `GET {arg['path']}`, "
      f"{arg['duration']} per rate after {arg['warmup']} warm-up.",
      f"- Saturation: closed loop (each connection sends its next request when the last is answered) on "
      f"{arg['saturation_connections']} connections for {arg['saturation_duration']}.",
      "- CPU: utime + stime of each proxy process from `/proc/PID/stat` over the measured window. RSS: `VmRSS`.",
      "- Only ratios from one run mean much: the same path moves by 10–20% between runs on a shared VM.", "",
      "| system | path |", "|---|---|"]
L += [f"| {TITLE.get(s, s)} | {DETAIL.get(s, s)} |" for s in systems]
L.append("")

# ------------------------------------------------------------------ targets
target_rows = []
T, E, H = "trellis-mtls", "envoy-mtls", "haproxy"


def per_rate(check):
    """(met at every rate, text) for a per-rate check returning (value, bound) pairs."""
    results_ = [(rate, *check(rate)) for rate in rates]
    results_ = [(rate, v, b) for rate, v, b in results_ if v is not None and b is not None]
    if not results_:
        return None, "not measured"
    ok = all(v <= b for _, v, b in results_)
    return ok, "; ".join(f"{rate}/s: {v:.3f} vs {b:.3f}" for rate, v, b in results_)


if T in systems and H in systems:
    ok, text = per_rate(lambda rate: (cpu_mean(T, rate), cpu_mean(H, rate)))
    target_rows.append(("CPU per request (s/10k, mean of the two proxies) ≤ HAProxy plaintext", text, ok))
    ok, text = per_rate(lambda rate: (added(T, rate, "p99"), added(H, rate, "p99")))
    target_rows.append(("added p99 (ms) ≤ HAProxy plaintext", text, ok))
    t, h = max_rate(T), max_rate(H)
    target_rows.append(("max throughput ≥ HAProxy plaintext", f"{fmt(t, 0)} vs {fmt(h, 0)} req/s",
                        None if t is None or h is None else t >= h))
if T in scale:
    target_rows.append((f"RSS ≤ 10 MiB per proxy idle with {arg['scale_services']} services "
                        f"(client-side proxy; server-side idle)",
                        f"{scale[T][0]:.1f} MiB; server side {fmt(rss(T, rates[0], 'server', 'idle_mib'), 1)} MiB",
                        scale[T][0] <= 10 and (rss(T, rates[0], "server", "idle_mib") or 0) <= 10))
if T in systems and E in systems:
    ok, text = per_rate(lambda rate: (ratio(cpu_mean(T, rate), cpu_mean(E, rate)), 0.3))
    target_rows.append(("CPU per request ≤ 0.3× Envoy mTLS", text.replace(" vs 0.300", "×"), ok))
    if T in scale and E in scale:
        r = ratio(scale[T][0], scale[E][0])
        target_rows.append(("RSS ≤ 0.15× Envoy mTLS (large configuration)", f"{fmt(r, 3)}× ({scale[T][0]:.1f} vs {scale[E][0]:.1f} MiB)",
                            None if r is None else r <= 0.15))
    r = ratio(max_rate(T), max_rate(E))
    target_rows.append(("max throughput ≥ 4× Envoy mTLS", f"{fmt(r, 2)}× ({fmt(max_rate(T), 0)} vs {fmt(max_rate(E), 0)} req/s)",
                        None if r is None else r >= 4))
if target_rows:
    L += ["## Targets (issue 7): Trellis with mTLS and L7 routes", "",
          "| target | measured | met |", "|---|---|---|"]
    L += [f"| {name} | {text} | {'–' if ok is None else 'yes' if ok else '**no**'} |" for name, text, ok in target_rows]
    L.append("")

# ------------------------------------------------------------------ latency
L += ["## Latency (ms) and what the proxies add to direct", ""]
for rate in rates:
    L += [f"### {rate} req/s", "",
          "| system | ok | errors | p50 | p90 | p99 | p99.9 | max | added p50 | added p99 | added p99 vs Envoy's (same transport) |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in systems:
        r = data.get((s, rate))
        if not r:
            L.append(f"| {TITLE.get(s, s)} |" + " – |" * 10)
            continue
        peer = ENVOY_PEER.get(s)
        vs = fr(ratio(added(s, rate, "p99"), added(peer, rate, "p99"))) if peer and peer != s else "–"
        L.append(f"| {TITLE.get(s, s)} | {r['ok']} | {r['errors']} | {fmt(q(r, 'p50'))} | {fmt(q(r, 'p90'))} | "
                 f"{fmt(q(r, 'p99'))} | {fmt(q(r, 'p999'))} | {fmt(q(r, 'max'))} | {fmt(added(s, rate, 'p50'))} | "
                 f"{fmt(added(s, rate, 'p99'))} | {vs} |")
    L.append("")
L += [f"![p99 against rate]({os.path.splitext(os.path.basename(out))[0]}.svg)", ""]

# ------------------------------------------------------------------ CPU
L += ["## CPU seconds per 10,000 requests, per proxy", "",
      "Client-side, server-side; then the mean of the two against Envoy (same transport) and HAProxy.", "",
      "| system | " + " | ".join(f"{r} req/s" for r in rates) + " | closed loop |", "|---|" + "---|" * (len(rates) + 1)]
for s in proxied:
    cells = []
    for rate in rates + ["max"]:
        c, v = cpu_per_10k(s, rate, "client"), cpu_per_10k(s, rate, "server")
        cells.append("–" if c is None else f"{c:.2f}, {v:.2f}")
    L.append(f"| {TITLE.get(s, s)} | " + " | ".join(cells) + " |")
L += ["", "| system (mean per proxy) | " + " | ".join(f"{r} req/s" for r in rates) + " |", "|---|" + "---|" * len(rates)]
for s in proxied:
    cells = []
    for rate in rates:
        mine = cpu_mean(s, rate)
        cells.append(f"{fmt(mine, 2)} ({fr(ratio(mine, cpu_mean(ENVOY_PEER[s], rate)))} Envoy, {fr(ratio(mine, cpu_mean('haproxy', rate)))} HAProxy)")
    L.append(f"| {TITLE.get(s, s)} | " + " | ".join(cells) + " |")
top = rates[-1]
L += ["", f"User and system CPU at {top} req/s (seconds per 10,000 requests, client + server): how much is the "
      "proxy's own code and how much the kernel's network stack.", "",
      "| system | user | system | system share |", "|---|---|---|---|"]
for s in proxied:
    r = data.get((s, top))
    if not r or not r["ok"]:
        continue
    u = sum(r["procs"][p]["user_s"] for p in ("client", "server")) / r["ok"] * 10000
    k = sum(r["procs"][p]["sys_s"] for p in ("client", "server")) / r["ok"] * 10000
    L.append(f"| {TITLE.get(s, s)} | {u:.2f} | {k:.2f} | {100 * k / max(u + k, 1e-9):.0f}% |")
L.append("")

# ------------------------------------------------------------------ throughput
L += ["## Maximum throughput", "",
      f"Closed loop on {arg['saturation_connections']} connections. \"Per proxy core\" divides the throughput by the "
      "CPU the busier proxy used (cores = CPU seconds / wall seconds): what one core of that proxy carries here, "
      "where generator, backend and both proxies share the machine.", "",
      "| system | max req/s | vs direct | vs Envoy (same transport) | proxy cores used (client, server) | req/s per proxy core | errors |",
      "|---|---|---|---|---|---|---|"]
for s in systems:
    r = data.get((s, "max"))
    if not r:
        continue
    m = r["achieved_rate"]
    cores = "–" if s == "direct" else ", ".join(f"{r['procs'][p]['cpu_s'] / r['duration_s']:.2f}" for p in ("client", "server"))
    per_core = "–" if s == "direct" else f"{m / max(busiest_cores(s), 1e-9):,.0f}"
    peer = ENVOY_PEER.get(s)
    L.append(f"| {TITLE.get(s, s)} | {m:,.0f} | {fr(ratio(m, max_rate('direct')))} | "
             f"{fr(ratio(m, max_rate(peer))) if peer and peer != s else '–'} | {cores} | {per_core} | {r['errors']} |")
L.append("")

# ------------------------------------------------------------------ memory
L += ["## Memory (RSS, MiB per proxy)", "",
      f"Idle: after start-up and a few requests. Large configuration: the client-side proxy also holds "
      f"{arg['scale_services']} services × {arg['scale_endpoints']} endpoints, each with a route (Trellis: Service "
      "and Endpoints documents, pushed by the control plane for Trellis mTLS; Envoy: a cluster and a virtual host "
      "each; HAProxy: a backend each, chosen by Host); measured idle. The rows with HTTP/2 between the proxies hold the "
      "same configuration as the rows without, so it is not measured again for them.", "",
      "| system | idle (client, server) | under load at " + f"{top} req/s" + " | closed loop | large configuration (client) | vs Envoy (same transport) |",
      "|---|---|---|---|---|---|"]
for s in proxied:
    idle = f"{fmt(rss(s, rates[0], 'client', 'idle_mib'), 1)}, {fmt(rss(s, rates[0], 'server', 'idle_mib'), 1)}"
    if s in idle_memory:
        idle = f"{idle_memory[s][0]:.1f}, {idle_memory[s][2]:.1f}"
    loaded = f"{fmt(rss(s, top, 'client', 'load_mib'), 1)}, {fmt(rss(s, top, 'server', 'load_mib'), 1)}"
    sat = f"{fmt(rss(s, 'max', 'client', 'load_mib'), 1)}, {fmt(rss(s, 'max', 'server', 'load_mib'), 1)}"
    big = scale.get(s, (None, None))[0]
    peer = ENVOY_PEER[s]
    L.append(f"| {TITLE.get(s, s)} | {idle} | {loaded} | {sat} | {fmt(big, 1)} | "
             f"{fr(ratio(big, scale.get(peer, (None,))[0])) if peer != s else '–'} |")
L += ["", "Of that, anonymous memory (heap and stacks; the rest is mapped code and data of the binary and its "
      "libraries, shared with every other process running the same files):", "",
      "| system | idle (client, server) | large configuration (client) |", "|---|---|---|"]
for s in proxied:
    if s in idle_memory or s in scale:
        i, b = idle_memory.get(s), scale.get(s)
        L.append(f"| {TITLE.get(s, s)} | {f'{i[1]:.1f}, {i[3]:.1f}' if i else '–'} | {f'{b[1]:.1f}' if b else '–'} |")
L += ["", f"`trellis-proxy` keeps the functions it runs side by side (`crates/trellis-proxy/build.rs`): this binary "
      f"has {arg.get('hot_symbols', 'unknown')} of the functions `crates/trellis-proxy/hot-symbols.txt` lists; when "
      "that falls well short, run `bench/hot-symbols.sh` and rebuild.", ""]

# ------------------------------------------------------------------ profile
LINE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(.*)$")


def annotate(name):
    """(total, [(instructions, file:function [object])]) from callgrind_annotate's output."""
    try:
        text = open(os.path.join(results, name)).read()
    except OSError:
        return None, []
    total, rows = None, []
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            if rows and not line.strip():
                break  # the end of the function table
            continue
        n, what = int(m.group(1).replace(",", "")), m.group(2).strip()
        if what.startswith("PROGRAM TOTALS"):
            total = n
        elif what and not what.startswith("file:function") and total is not None:
            rows.append((n, what))
    return total, rows


def split_symbol(what):
    """(function, object) from `file:function [object]`."""
    obj = ""
    m = re.search(r" \[([^\]]*)\]$", what)
    if m:
        obj, what = os.path.basename(m.group(1)), what[:m.start()]
    head, sep, rest = what.partition(":")
    if sep and " " not in head and (head == "???" or "/" in head or "." in head):
        what = rest
    return what, obj


def crate_of(function, obj):
    f = function.lstrip("<&*(")
    if "::" in f:
        name = f.split("::", 1)[0]
        return {"core": "core/alloc/std", "alloc": "core/alloc/std", "std": "core/alloc/std"}.get(name, name)
    if f.lstrip("_").startswith(("aws_lc", "bn_", "ec_", "p256", "ecp_nistz256", "aes", "gcm_", "sha", "chacha", "ChaCha")):
        return "aws-lc (crypto, C and assembly)"
    return f"C: {obj or 'unknown'}"


total, self_rows = annotate("profile.self")
profile = None
try:
    profile = json.load(open(os.path.join(results, "profile.json")))
except (OSError, ValueError):
    pass
if total and profile and profile.get("ok"):
    n = profile["ok"]
    L += [f"## Profile: the Trellis mTLS {arg.get('profile_side', 'client')}-side proxy", "",
          f"callgrind (valgrind) instruction counts while it carried {n} requests ({arg['profile_rate']} req/s for "
          f"{arg['profile_duration']}, instrumentation on only during the load, after a 2 s closed-loop warm-up that opens the pooled connections; background work such as telemetry "
          "reports included). Instruction counts are stable where timings on a shared VM are not; they count "
          "user space only, so the kernel's share (the system CPU above) is not in them. valgrind counts every "
          "iteration of a `rep movsb` (one per byte moved) as an instruction, so large memcpys weigh more here "
          "than in time.", "",
          f"**{total / n:,.0f} instructions per request** in user space.", "",
          "By crate (self cost):", "", "| crate | instructions per request | share |", "|---|---|---|"]
    by_crate = {}
    for count, what in self_rows:
        function, obj = split_symbol(what)
        c = crate_of(function, obj)
        by_crate[c] = by_crate.get(c, 0) + count
    for c, count in sorted(by_crate.items(), key=lambda kv: -kv[1])[:14]:
        L.append(f"| {c} | {count / n:,.0f} | {100 * count / total:.1f}% |")
    L += ["", "Top functions (self cost):", "", "| function | instructions per request | share |", "|---|---|---|"]
    for count, what in self_rows[:25]:
        function, obj = split_symbol(what)
        short = function if len(function) <= 110 else function[:107] + "…"
        L.append(f"| `{short.replace('|', '/')}` | {count / n:,.0f} | {100 * count / total:.1f}% |")
    _, inclusive = annotate("profile.inclusive")
    wanted = [("request handling (service, route, chain, response)", "trellis_proxy::http::Handler::handle"),
              ("the element chain (its first element, down to forwarding)", "trellis_proxy::elements::"),
              ("the upstream HTTP/2 connection task (h2)", "trellis_proxy::upstream::http2::Http2Connection::handshake"),
              ("the inbound HTTP/2 connection (h2 via hyper)", "hyper::proto::h2::server::"),
              ("the inbound HTTP/1.1 connection (hyper; the request's handling runs inside it)", "hyper::proto::h1::dispatch::Dispatcher"),
              ("taking a pooled HTTP/1.1 connection and sending on it", "trellis_proxy::upstream::Upstreams::send_http1"),
              ("the upstream HTTP/1.1 exchange (request out, response head in)",
               "trellis_proxy::upstream::http1::Http1Connection::send"),
              ("reading an upstream HTTP/1.1 response body", "trellis_proxy::upstream::http1::ResponseBody"),
              ("TLS record decryption (rustls)", "rustls::record_layer"),
              ("telemetry (recording a finished request)", "trellis_proxy::telemetry")]
    L += ["", "Inclusive cost of some subsystems (the largest function of each prefix, so nested calls are not "
          "counted twice):", "", "| subsystem | largest inclusive function | instructions per request |", "|---|---|---|"]
    for label, prefix in wanted:
        best = next(((c, f) for c, f in ((c, split_symbol(w)[0]) for c, w in inclusive) if f.lstrip("<").startswith(prefix)), None)
        if best:
            short = best[1] if len(best[1]) <= 90 else best[1][:87] + "…"
            L.append(f"| {label} | `{short.replace('|', '/')}` | {best[0] / n:,.0f} |")
    L.append("")

# ------------------------------------------------------------------ plot: p99 against rate
svg_name = os.path.splitext(os.path.basename(out))[0] + ".svg"
W, Hh, Lm, B, T_, R = 760, 440, 70, 50, 30, 170
ys = [q(data[(s, r)], "p99") for s in systems for r in rates if data.get((s, r)) and q(data[(s, r)], "p99")]
ymin = max(min(ys) * 0.8, 0.01) if ys else 0.01
ymax = max(ys) * 1.2 if ys else 1
lo, hi = math.log10(ymin), math.log10(ymax)


def px(i):
    return Lm + (W - Lm - R) * (i / max(1, len(rates) - 1))


def py(v):
    return T_ + (Hh - T_ - B) * (1 - (math.log10(v) - lo) / max(1e-9, hi - lo))


svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{Hh}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{Hh}" fill="white"/>',
       f'<text x="{Lm}" y="18" font-size="14">p99 latency (ms, log scale) against request rate — {arg["stamp"]}</text>',
       f'<line x1="{Lm}" y1="{Hh - B}" x2="{W - R}" y2="{Hh - B}" stroke="black"/>',
       f'<line x1="{Lm}" y1="{T_}" x2="{Lm}" y2="{Hh - B}" stroke="black"/>']
for i, r in enumerate(rates):
    svg.append(f'<text x="{px(i):.1f}" y="{Hh - B + 18}" text-anchor="middle">{r}</text>')
svg.append(f'<text x="{(Lm + W - R) / 2:.1f}" y="{Hh - 10}" text-anchor="middle">requests per second</text>')
for exp in range(math.floor(lo), math.ceil(hi) + 1):
    for m in (1, 2, 5):
        v = m * 10 ** exp
        if ymin <= v <= ymax:
            svg.append(f'<line x1="{Lm}" y1="{py(v):.1f}" x2="{W - R}" y2="{py(v):.1f}" stroke="#ddd"/>')
            svg.append(f'<text x="{Lm - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
for k, s in enumerate(systems):
    color = COLOR.get(s, "black")
    dash = ' stroke-dasharray="6,3"' if s.endswith("-mtls") else ""
    points = [(px(i), py(q(data[(s, r)], "p99"))) for i, r in enumerate(rates) if data.get((s, r)) and q(data[(s, r)], "p99")]
    if points:
        svg.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="' +
                   " ".join(f"{x:.1f},{y:.1f}" for x, y in points) + '"/>')
        for x, y in points:
            svg.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')
    svg.append(f'<line x1="{W - R + 15}" y1="{T_ + 12 + 22 * k}" x2="{W - R + 35}" y2="{T_ + 12 + 22 * k}" stroke="{color}" stroke-width="3"{dash}/>')
    svg.append(f'<text x="{W - R + 42}" y="{T_ + 16 + 22 * k}">{TITLE.get(s, s)}</text>')
svg.append("</svg>")
open(os.path.join(os.path.dirname(out), svg_name), "w").write("\n".join(svg) + "\n")
open(out, "w").write("\n".join(L) + "\n")
