#!/usr/bin/env python3
"""The batch-1 geometry sweep of run.sh's "sweep" step: one table of µs (and % of
copy bandwidth) per format, shape and variant, and the best rows x units of the
warp kernels per format (lowest time summed over the shapes) written as
QUERN_CUDA_MMW_B1 to BEST (with the warps/fuse settings of the best variant
common to all formats).

usage: sweep.py DIR BEST     DIR holds v<i>.env (assignments) and v<i>.json
"""
import glob
import json
import os
import re
import sys

d, best_path = sys.argv[1], sys.argv[2]
runs = []
for env_path in sorted(glob.glob(os.path.join(d, "v*.env")), key=lambda p: int(re.findall(r"\d+", os.path.basename(p))[0])):
    env = open(env_path).read().strip()
    js = env_path[:-4] + ".json"
    try:
        rep = json.load(open(js))
    except Exception as e:  # a failed variant: say so, keep going
        print(f"{env or 'default'}: no result ({e})")
        continue
    runs.append((env, rep))
if not runs:
    sys.exit("no variant ran")
copy = runs[0][1]["copy"]["gb_s"]
print(f"copy bandwidth {copy:.0f} GB/s ({runs[0][1]['device']}); batch 1, µs (% of copy)\n")
cases = []
for _, rep in runs:
    for r in rep["results"]:
        c = (r["type"], r["in_features"], r["out_features"])
        if c not in cases:
            cases.append(c)
types = []
for c in cases:
    if c[0] not in types:
        types.append(c[0])
shapes = sorted({(c[1], c[2]) for c in cases})
hdr = "| variant | " + " | ".join(f"{t} {k}x{n}" for t in types for (k, n) in shapes if (t, k, n) in cases) + " |"
print(hdr)
print("|" + "---|" * (hdr.count("|") - 1))
table = {}
for env, rep in runs:
    byc = {(r["type"], r["in_features"], r["out_features"]): r for r in rep["results"]}
    cells = []
    for t in types:
        for (k, n) in shapes:
            if (t, k, n) not in cases:
                continue
            r = byc.get((t, k, n))
            if r is None:
                cells.append("–")
                continue
            table[(env, t, k, n)] = r["us_median"]
            cells.append(f"{r['us_median']:.2f} ({100 * r['gb_s'] / rep['copy']['gb_s']:.0f})")
    print(f"| {env or 'default'} | " + " | ".join(cells) + " |")

# Best rows x units per format among the variants that set them (or the
# defaults), all with the warp kernel, fused.
def geo_of(env):
    if "MMV_KERNEL=block" in env or "MMW_FUSE=0" in env or "MMW_WARPS" in env or "MMW_BPS" in env:
        return None
    m_r = re.search(r"QUERN_CUDA_MMW_ROWS=(\d)", env)
    m_u = re.search(r"QUERN_CUDA_MMW_UNITS=(\d)", env)
    if "QUERN_CUDA_MMW_B1" in env:
        return None
    return (m_r.group(1) if m_r else None, m_u.group(1) if m_u else None)

print()
choice = []
for t in types:
    best = None
    for env, _ in runs:
        g = geo_of(env)
        if g is None or None in g:
            continue
        ts = [table.get((env, t, k, n)) for (k, n) in shapes if (t, k, n) in cases]
        if any(x is None for x in ts):
            continue
        tot = sum(ts)
        if best is None or tot < best[0]:
            best = (tot, g, env)
    if best:
        print(f"{t}: best rows x units {best[1][0]}x{best[1][1]} (summed {best[0]:.2f} µs: {best[2]})")
        choice.append(f"{t}:{best[1][0]}x{best[1][1]}")
line = "QUERN_CUDA_MMW_B1=" + ",".join(choice)
with open(best_path, "w") as f:
    f.write(line + "\n")
print("chosen:", line)
