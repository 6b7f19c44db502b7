#!/usr/bin/env python3
"""Writes the compare.sh report: markdown tables and an SVG plot (p99 against rate).

Usage: compare-report.py RESULTS_DIR OUT.md CLK_TCK STAMP MACHINE COMMIT RATES SYSTEMS
       DURATION WARMUP CONNECTIONS REQUEST_PATH WORKERS
RESULTS_DIR holds SYSTEM-RATE.json (trellis-bench reports) and SYSTEM-RATE.procs
(name rss_idle_kib rss_load_kib cpu_ticks per line).
"""
import json
import os
import sys

(results, out, clk_tck, stamp, machine, commit, rates, systems, duration, warmup, connections, path,
 workers) = sys.argv[1:14]
clk_tck = int(clk_tck)
rates = [int(r) for r in rates.split()]
systems = systems.split()
TITLE = {"direct": "direct", "trellis": "Trellis (2 proxies, HTTP/2 between)",
         "envoy": "Envoy 1.40 (2 proxies, HTTP/2 between)", "haproxy": "HAProxy (2 proxies, HTTP/1.1)"}
COLOR = {"direct": "#555555", "trellis": "#2e5bd8", "envoy": "#c23a3a", "haproxy": "#1f8a4c"}


def load(system, rate):
    name = os.path.join(results, f"{system}-{rate}")
    try:
        report = json.load(open(name + ".json"))
    except (OSError, ValueError):
        return None
    procs = {}
    for line in open(name + ".procs"):
        proc, idle, load_, ticks = line.split()
        procs[proc] = {"idle_mib": int(idle) / 1024, "load_mib": int(load_) / 1024, "cpu_s": int(ticks) / clk_tck}
    report["procs"] = procs
    return report


data = {(s, r): load(s, r) for s in systems for r in rates}


def q(report, key):
    return report["latency_ms"].get(key) if report else None


def fmt(v, digits=3):
    return "–" if v is None else f"{v:.{digits}f}"


def ratio(a, b):
    return "–" if a is None or b in (None, 0) else f"{a / b:.2f}×"


lines = [f"# Trellis, Envoy and HAProxy side by side — {stamp}", "",
         f"Commit {commit} on {machine}. Load: open loop (trellis-bench, latency from each request's "
         f"intended start), {connections} HTTP/1.1 keep-alive connections from the generator, GET {path}, "
         f"{duration} per point after {warmup} warm-up. Every proxy has {workers} worker threads. "
         "All processes share the machine; compare within this run only.", ""]

lines += ["## Latency (ms) and what the proxies add to direct", ""]
for rate in rates:
    lines += [f"### {rate} req/s", "", "| system | ok | errors | p50 | p90 | p99 | p99.9 | max | added p50 | added p99 | added p99 vs Envoy's |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    direct = data.get(("direct", rate))
    envoy = data.get(("envoy", rate))
    envoy_added = (q(envoy, "p99") - q(direct, "p99")) if envoy and direct else None
    for s in systems:
        r = data.get((s, rate))
        if not r:
            lines.append(f"| {TITLE.get(s, s)} | – | – | – | – | – | – | – | – | – | – |")
            continue
        added50 = q(r, "p50") - q(direct, "p50") if direct and s != "direct" else None
        added99 = q(r, "p99") - q(direct, "p99") if direct and s != "direct" else None
        lines.append(f"| {TITLE.get(s, s)} | {r['ok']} | {r['errors']} | {fmt(q(r, 'p50'))} | {fmt(q(r, 'p90'))} | {fmt(q(r, 'p99'))} | "
                     f"{fmt(q(r, 'p999'))} | {fmt(q(r, 'max'))} | {fmt(added50)} | {fmt(added99)} | "
                     f"{ratio(added99, envoy_added) if s not in ('direct', 'envoy') else '–'} |")
    lines.append("")

lines += ["## CPU seconds per 10,000 requests, per proxy", "",
          "| system | " + " | ".join(f"{r} req/s (client, server)" for r in rates) + " |",
          "|---|" + "---|" * len(rates)]
cpu = {}
for s in systems:
    if s == "direct":
        continue
    cells = []
    for rate in rates:
        r = data.get((s, rate))
        if not r or not r["ok"]:
            cells.append("–")
            continue
        c = r["procs"]["client"]["cpu_s"] / r["ok"] * 10000
        v = r["procs"]["server"]["cpu_s"] / r["ok"] * 10000
        cpu[(s, rate)] = (c + v) / 2
        cells.append(f"{c:.2f}, {v:.2f}")
    lines.append(f"| {TITLE.get(s, s)} | " + " | ".join(cells) + " |")
lines += ["", "Mean per proxy against Envoy and HAProxy at the same rate:", "",
          "| system | " + " | ".join(f"{r} req/s" for r in rates) + " |", "|---|" + "---|" * len(rates)]
for s in systems:
    if s in ("direct",):
        continue
    cells = []
    for rate in rates:
        mine = cpu.get((s, rate))
        cells.append(f"{fmt(mine, 2)} ({ratio(mine, cpu.get(('envoy', rate)))} Envoy, {ratio(mine, cpu.get(('haproxy', rate)))} HAProxy)")
    lines.append(f"| {TITLE.get(s, s)} | " + " | ".join(cells) + " |")

lines += ["", "## Memory (RSS, MiB per proxy)", "", "| system | idle (client, server) | under the highest load (client, server) |", "|---|---|---|"]
for s in systems:
    if s == "direct":
        continue
    first = data.get((s, rates[0]))
    last = data.get((s, rates[-1]))
    if not first or not last:
        continue
    lines.append(f"| {TITLE.get(s, s)} | {first['procs']['client']['idle_mib']:.1f}, {first['procs']['server']['idle_mib']:.1f} | "
                 f"{last['procs']['client']['load_mib']:.1f}, {last['procs']['server']['load_mib']:.1f} |")

# The plot: p99 against rate, one line per system (log scale on y).
svg_name = os.path.splitext(os.path.basename(out))[0] + ".svg"
W, H, L, B, T, R = 720, 420, 70, 50, 30, 190
ys = [q(data[(s, r)], "p99") for s in systems for r in rates if data.get((s, r))]
import math
ymin = max(min(ys) * 0.8, 0.01) if ys else 0.01
ymax = max(ys) * 1.2 if ys else 1
lo, hi = math.log10(ymin), math.log10(ymax)
def px(i):
    return L + (W - L - R) * (i / max(1, len(rates) - 1))
def py(v):
    return T + (H - T - B) * (1 - (math.log10(v) - lo) / max(1e-9, hi - lo))
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{L}" y="18" font-size="14">p99 latency (ms, log scale) against request rate</text>',
       f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
       f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>']
for i, r in enumerate(rates):
    svg.append(f'<text x="{px(i):.1f}" y="{H - B + 18}" text-anchor="middle">{r}</text>')
svg.append(f'<text x="{(L + W - R) / 2:.1f}" y="{H - 10}" text-anchor="middle">requests per second</text>')
for exp in range(math.floor(lo), math.ceil(hi) + 1):
    for m in (1, 2, 5):
        v = m * 10 ** exp
        if ymin <= v <= ymax:
            svg.append(f'<line x1="{L}" y1="{py(v):.1f}" x2="{W - R}" y2="{py(v):.1f}" stroke="#ddd"/>')
            svg.append(f'<text x="{L - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
for k, s in enumerate(systems):
    points = [(px(i), py(q(data[(s, r)], "p99"))) for i, r in enumerate(rates) if data.get((s, r)) and q(data[(s, r)], "p99")]
    if points:
        svg.append(f'<polyline fill="none" stroke="{COLOR.get(s, "black")}" stroke-width="2" points="' +
                   " ".join(f"{x:.1f},{y:.1f}" for x, y in points) + '"/>')
        for x, y in points:
            svg.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{COLOR.get(s, "black")}"/>')
    svg.append(f'<rect x="{W - R + 15}" y="{T + 10 + 22 * k}" width="14" height="4" fill="{COLOR.get(s, "black")}"/>')
    svg.append(f'<text x="{W - R + 35}" y="{T + 16 + 22 * k}">{TITLE.get(s, s).split(" (")[0]}</text>')
svg.append("</svg>")
open(os.path.join(os.path.dirname(out), svg_name), "w").write("\n".join(svg))
lines += ["", f"![p99 against rate]({svg_name})", ""]
open(out, "w").write("\n".join(lines) + "\n")
