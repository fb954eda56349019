#!/usr/bin/env python3
"""PyTorch peers for `quern bench --device cuda --kernels`, timed the same way.

- int4 weight-only: torch._weight_int4pack_mm (group 128, bf16 activations,
  bf16 scales and zeros), bytes counted = packed 4-bit weights + scales/zeros;
- bf16: torch.nn.functional.linear (cuBLAS), bytes counted = bf16 weights;
- the device-to-device copy bandwidth (read + write) through Tensor.copy_.

Method, as quern's: several copies of the weights (at least 512 MiB together,
so each call reads from device memory, not the L2); a CUDA graph of 20 calls on
successive copies, replayed between CUDA events, the median over 30 replays
after warm-up, divided by 20.
Usage: [TORCH_BATCHES=1,4,16,64] torch_gemv.py [OUT.json]
"""
import json
import os
import statistics
import sys
import time

import torch

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096)]  # (in features, out features)
# TORCH_BATCHES="1,4,16,64" overrides the batch sizes.
BATCHES = [int(b) for b in os.environ.get("TORCH_BATCHES", "1,4,16").split(",")]
GROUP, SAMPLES, ROTATE = 20, 30, 512 << 20


def time_calls(fn, ncopies, graph=True):
    """Median and minimum µs per call: a CUDA graph of GROUP calls on successive
    copies, replayed between events (no host launch overhead between calls)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(3):
            fn(i % ncopies)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for j in range(GROUP):
                fn(j % ncopies)
        run = g.replay
    else:
        def run():
            for j in range(GROUP):
                fn(j % ncopies)
    # At least 100 ms of warm-up, as quern's benchmark: the SM clock rises from
    # idle only under sustained load.
    t0 = time.perf_counter()
    n = 0
    while n < 3 or time.perf_counter() - t0 < 0.1:
        run()
        n += 1
        if n % 8 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    times = []
    for _ in range(SAMPLES):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / GROUP)
    return statistics.median(times), min(times)


def pack_int4(n, k, dev):
    """Random 4-bit codes packed for _weight_int4pack_mm, whichever input the
    installed PyTorch takes (uint8 [n, k/2] in recent versions, int32 [n, k] before)."""
    q = torch.randint(0, 16, (n, k), dtype=torch.int32, device=dev)
    try:
        u8 = ((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8)
        return torch._convert_weight_to_int4pack(u8, 8)
    except (RuntimeError, TypeError):
        return torch._convert_weight_to_int4pack(q, 8)


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else None
    dev = torch.device("cuda")
    torch.manual_seed(0)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": []}

    nbytes = 1 << 30
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    us, _ = time_calls(lambda i: dst.copy_(src), 1, graph=False)
    res["copy"] = {"bytes": nbytes, "us": us, "gb_s": 2 * nbytes / (us * 1e3)}
    del src, dst
    print(f"copy: {res['copy']['gb_s']:.0f} GB/s")

    for k, n in SHAPES:
        # int4, group 128
        wbytes = n * k // 2 + (k // 128) * n * 2 * 2
        ncopies = max(2, min(64, ROTATE // wbytes))
        packs = [pack_int4(n, k, dev) for _ in range(ncopies)]
        sz = [
            (torch.rand(k // 128, n, 2, device=dev, dtype=torch.bfloat16) * 0.02 + 0.001)
            for _ in range(ncopies)
        ]
        for b in BATCHES:
            x = torch.randn(b, k, device=dev, dtype=torch.bfloat16)
            y = torch._weight_int4pack_mm(x, packs[0], 128, sz[0])
            assert y.shape == (b, n) and torch.isfinite(y).all()
            us, mn = time_calls(lambda i: torch._weight_int4pack_mm(x, packs[i], 128, sz[i]), ncopies)
            r = {"kind": "int4pack_mm_g128", "in_features": k, "out_features": n, "batch": b,
                 "weight_bytes": wbytes, "us_median": us, "us_min": mn, "gb_s": wbytes / (us * 1e3)}
            res["results"].append(r)
            print(f"int4 g128 {k}x{n} b{b}: {us:.2f} µs {r['gb_s']:.0f} GB/s")
        del packs, sz
        # bf16 cuBLAS
        wbytes = n * k * 2
        ncopies = max(2, min(64, ROTATE // wbytes))
        ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(ncopies)]
        for b in BATCHES:
            x = torch.randn(b, k, device=dev, dtype=torch.bfloat16)
            us, mn = time_calls(lambda i: torch.nn.functional.linear(x, ws[i]), ncopies)
            r = {"kind": "bf16_linear", "in_features": k, "out_features": n, "batch": b,
                 "weight_bytes": wbytes, "us_median": us, "us_min": mn, "gb_s": wbytes / (us * 1e3)}
            res["results"].append(r)
            print(f"bf16 {k}x{n} b{b}: {us:.2f} µs {r['gb_s']:.0f} GB/s")
        del ws
        torch.cuda.empty_cache()

    if out_path:
        with open(out_path, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
