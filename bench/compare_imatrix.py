#!/usr/bin/env python3
"""Per-tensor agreement of two importance matrices (llama.cpp's imatrix GGUF).

For each tensor: rel = ||a - b|| / ||b|| of the mean squared activations
(in_sum2 / counts), a = the first file, b = the second. Prints the metadata of
both, tensors present in only one, and the max, median and worst five of rel.
Exit status 1 when a tensor differs by more than --max (default 0.01) or the
tensor sets differ.

usage: compare_imatrix.py OURS.imatrix.gguf THEIRS.imatrix.gguf [--max 0.01] [--json]
needs: numpy, gguf (PyPI; llama.cpp's gguf-py)
"""
import argparse
import json
import sys

import numpy as np
from gguf import GGUFReader


def load(path):
    r = GGUFReader(path)
    meta = {k: r.fields[k].contents() for k in ("general.type", "imatrix.datasets",
                                               "imatrix.chunk_count", "imatrix.chunk_size")
            if k in r.fields}
    t = {x.name: np.asarray(x.data, dtype=np.float64).reshape(-1) for x in r.tensors}
    means = {}
    for name in t:
        if name.endswith(".in_sum2"):
            base = name[: -len(".in_sum2")]
            counts = t[base + ".counts"]
            means[base] = (t[name].reshape(len(counts), -1) / counts[:, None]).reshape(-1)
    return meta, means


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ours")
    ap.add_argument("theirs")
    ap.add_argument("--max", type=float, default=0.01)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    meta_a, ma = load(a.ours)
    meta_b, mb = load(a.theirs)
    only_a = sorted(set(ma) - set(mb))
    only_b = sorted(set(mb) - set(ma))
    rel = {n: float(np.linalg.norm(ma[n] - mb[n]) / np.linalg.norm(mb[n]))
           for n in sorted(set(ma) & set(mb))}
    vals = np.array(list(rel.values()))
    worst = sorted(rel.items(), key=lambda kv: -kv[1])[:5]
    out = {
        "ours": {"file": a.ours, **meta_a}, "theirs": {"file": a.theirs, **meta_b},
        "tensors": len(rel), "only_ours": only_a, "only_theirs": only_b,
        "max": float(vals.max()), "median": float(np.median(vals)), "worst": worst,
    }
    if a.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"ours:   {a.ours} {meta_a}")
        print(f"theirs: {a.theirs} {meta_b}")
        print(f"{len(rel)} tensors in both; only ours: {only_a}; only theirs: {only_b}")
        print(f"relative difference ||a-b||/||b|| per tensor: max {out['max']:.3e}, median {out['median']:.3e}")
        for n, v in worst:
            print(f"  {n:40s} {v:.3e}")
    ok = not only_a and not only_b and out["max"] <= a.max
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
