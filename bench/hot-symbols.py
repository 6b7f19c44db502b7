#!/usr/bin/env python3
"""Merges what ran in trellis-proxy into the symbol ordering list its build uses.

Usage: hot-symbols.py BINARY OUT INPUT...

Each INPUT is a callgrind output file (written with --demangle=no) or the text of
`perf script -F ip,sym,dso --no-demangle`. The list holds the binary's own functions (those
`nm` shows), most executed first, so the hottest code also shares the fewest pages: first
what perf sampled natively, by samples, then what callgrind counted, by instructions (the
two measure different runs, so they are not summed).
"""
import re
import subprocess
import sys
from collections import Counter

binary, out, *inputs = sys.argv[1:]
exe = binary.rsplit("/", 1)[-1]

functions = set()
for line in subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True).stdout.splitlines():
    fields = line.split()
    # i: an IFUNC resolver (glibc's memcpy, strlen...), run at start-up to pick a variant.
    if len(fields) == 3 and fields[1] in "tTwWiI":
        functions.add(fields[2])

# C libraries keep a variant of a function per CPU feature (glibc's __strlen_avx2 and
# __strlen_evex, aws-lc's sha256_block_data_order_avx2 and _hw) and pick one when the
# process starts. valgrind's virtual CPU lacks AVX-512 and SHA extensions, so callgrind sees
# other variants than run natively, and perf samples only the hottest: after a variant seen,
# its siblings for those features are listed (a few small functions each), so the one a CPU
# with them picks is among the hot code too.
VARIANT = re.compile(r"^(.+?)_(sse2|ssse3|sse4_1|sse4_2|sse42|avx|avx2|avx512|evex|evex512|erms|nohw|hw|shaext|clmul)(?:_.*)?$")
UNSEEN_UNDER_VALGRIND = {"avx512", "evex", "evex512", "hw", "shaext"}
variants = {}
for name in functions:
    m = VARIANT.match(name)
    if m and m.group(2) in UNSEEN_UNDER_VALGRIND and not name.endswith("_rtm"):
        variants.setdefault(m.group(1), []).append(name)

counted, sampled = Counter(), Counter()
# Names are compressed per kind: objects (ob, cob), files (fl, fi, fe, cfi, cfl) and
# functions (fn, cfn) are numbered separately.
NAMED = re.compile(r"^(c?ob|c?fn|c?fi|c?fl|fe)=\((\d+)\)(?: (.*))?$")
TABLE = {"ob": "objects", "cob": "objects", "fn": "functions", "cfn": "functions"}
for path in inputs:
    with open(path, errors="replace") as f:
        head = f.readline()
        if head.startswith("# callgrind format") or head.startswith("version:"):
            # Names are given once, then referred to by number; cost lines follow an fn=.
            tables = {"objects": {}, "files": {}, "functions": {}}
            current_object, current = "", None
            after_call = False
            for line in f:
                if line.startswith("calls="):
                    after_call = True  # the next cost line is the call's, not the caller's own
                    continue
                m = NAMED.match(line.rstrip("\n"))
                if m:
                    kind, number, name = m.groups()
                    table = tables[TABLE.get(kind, "files")]
                    if name:
                        table[number] = name
                    if kind == "ob":
                        current_object = table.get(number, "")
                    elif kind == "fn":
                        current = table.get(number) if current_object.endswith("/" + exe) else None
                    continue
                if line[:1].isdigit() or line[:1] in "+-*":
                    cost = line.split()
                    if current and not after_call and len(cost) >= 2 and cost[1].isdigit():
                        counted[current] += int(cost[1])
                    after_call = False
        else:
            for line in [head, *f]:
                # "address symbol (dso)" per sample
                m = re.match(r"^\s*[0-9a-f]+\s+(\S+)\s+\((.*)\)\s*$", line)
                if m and m.group(2).endswith("/" + exe):
                    sampled[m.group(1)] += 1

ordered, seen = [], set()
for name, _ in sampled.most_common() + counted.most_common():
    name = name.split("'")[0]  # callgrind marks recursion depth as name'2
    if name in functions and name not in seen:
        seen.add(name)
        ordered.append(name)
        m = VARIANT.match(name)
        for sibling in sorted(variants.get(m.group(1), [])) if m else []:
            if sibling not in seen:
                seen.add(sibling)
                ordered.append(sibling)

with open(out, "w") as f:
    f.write("# Functions trellis-proxy runs, hottest first: its build places them side by side.\n")
    f.write("# Written by bench/hot-symbols.sh; see crates/trellis-proxy/build.rs.\n")
    f.write("\n".join(ordered) + "\n")
print(f"hot-symbols: {len(ordered)} functions ({len(sampled)} sampled natively, {len(counted)} counted by callgrind)", file=sys.stderr)
