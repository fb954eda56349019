#!/usr/bin/env python3
"""Markdown tables from quern's kernel benchmark and the PyTorch peers' JSON."""
import json
import sys

q = json.load(open(sys.argv[1]))
try:
    t = json.load(open(sys.argv[2]))
except (OSError, IndexError, ValueError):
    t = {"results": [], "copy": None}
copy = q["copy"]["gb_s"]
peer = {(r["kind"], r["in_features"], r["out_features"], r["batch"]): r for r in t["results"]}
print(f"device: {q['device']} ({q['arch']}, driver {q['driver_version']}, NVRTC {q.get('nvrtc_version')})")
print(f"copy bandwidth (quern, cuMemcpyDtoD, read+write): {copy:.0f} GB/s")
if t.get("copy"):
    print(f"copy bandwidth (torch copy_): {t['copy']['gb_s']:.0f} GB/s; torch {t.get('torch')}")
print()
print("| type | in×out | batch | µs | GB/s | % copy | torch int4 µs | × int4 | bf16 µs | × bf16 |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in q["results"]:
    key = (r["in_features"], r["out_features"], r["batch"])
    i4 = peer.get(("int4pack_mm_g128",) + key)
    bf = peer.get(("bf16_linear",) + key)
    cells = [
        r["type"], f"{key[0]}×{key[1]}", str(key[2]), f"{r['us_median']:.2f}",
        f"{r['gb_s']:.0f}", f"{100 * r['gb_s'] / copy:.1f}",
        f"{i4['us_median']:.2f}" if i4 else "–",
        f"{i4['us_median'] / r['us_median']:.2f}" if i4 else "–",
        f"{bf['us_median']:.2f}" if bf else "–",
        f"{bf['us_median'] / r['us_median']:.2f}" if bf else "–",
    ]
    print("| " + " | ".join(cells) + " |")
print()
print("torch peers:")
for r in t["results"]:
    print(f"  {r['kind']} {r['in_features']}×{r['out_features']} b{r['batch']}: "
          f"{r['us_median']:.2f} µs, {r['gb_s']:.0f} GB/s ({100 * r['gb_s'] / copy:.1f}% of quern's copy)")
