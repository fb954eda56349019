#!/usr/bin/env python3
"""bf16 cuBLAS beside `quern bench --synthetic llama-8b -p 512`: the weight
products of a Llama-3-8B prefill of P tokens in bf16 (torch.nn.functional.linear),
32 layers × q, k, v, o (4096 → 4096, 1024, 1024, 4096), gate, up (4096 → 14336),
down (14336 → 4096), each layer with its own weights (14 GB in all, so nothing
comes from the L2), plus the output projection (4096 → 128256) of the last
token. Only the products: no attention, norms or other work, so this is a lower
bound on the time of a bf16 prefill. Timed between CUDA events after a warm-up
pass, median of 5 passes; prints tokens/s = P / time.
Usage: torch_prefill.py [P [OUT.json]]
"""
import json
import statistics
import sys

import torch


def main():
    p = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    out_path = sys.argv[2] if len(sys.argv) > 2 else None
    dev = torch.device("cuda")
    torch.manual_seed(0)
    d, kv, ff, vocab, layers = 4096, 1024, 14336, 128256, 32
    shapes = [(d, d), (d, kv), (d, kv), (d, d), (d, ff), (d, ff), (ff, d)]
    ws = [[torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02 for k, n in shapes] for _ in range(layers)]
    wout = torch.randn(vocab, d, device=dev, dtype=torch.bfloat16) * 0.02
    xs = {k: torch.randn(p, k, device=dev, dtype=torch.bfloat16) for k in (d, ff)}
    x1 = torch.randn(1, d, device=dev, dtype=torch.bfloat16)

    def run():
        for lw in ws:
            for (k, _), w in zip(shapes, lw):
                torch.nn.functional.linear(xs[k], w)
        torch.nn.functional.linear(x1, wout)

    for _ in range(2):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    ms = statistics.median(times)
    flops = 2 * p * layers * sum(k * n for k, n in shapes) + 2 * d * vocab
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "tokens": p,
           "ms_median": ms, "ms_min": min(times), "tok_s": p / (ms * 1e-3), "tflops": flops / (ms * 1e9)}
    print(f"bf16 prefill products, 8B, {p} tokens: {ms:.2f} ms ({res['tok_s']:.0f} tok/s, {res['tflops']:.0f} TFLOP/s)")
    if out_path:
        with open(out_path, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
