#!/usr/bin/env python3
"""llama.cpp's side of `quern verify`: KL divergence of quantised GGUF files from an F32
baseline, computed from llama.cpp's logits (llama-cpp-python) with llama-perplexity's protocol:

- the whole text tokenised once by llama.cpp (BOS first only when the vocab's add_bos says so);
- non-overlapping chunks of CTX tokens, each evaluated from an empty cache, BOS written over the
  chunk's first token when add_bos;
- positions CTX/2 .. CTX-2 scored, each predicting the next token;
- per scored token: KL(baseline || artifact) over the vocabulary, NLL of each model, whether the two
  most likely tokens agree ("same top p"), dp = p_artifact(next) - p_baseline(next);
- mean ± standard error (sqrt(var/(n-1))), linearly interpolated percentiles.

llama-perplexity saves the baseline's log-probabilities to a file in a first run
(--kl-divergence-base) and reads them back in a second (--kl-divergence); here both models run
chunk by chunk in one process instead (nothing on disk), and each model's evaluation time
(llama_decode plus copying its logits out) is measured separately, so the wall time of the two
runs it replaces is base + artifact.

flash_attn=True: llama-perplexity's default (auto) enables it on the CPU backend.

usage: .venv/bin/python bench/verify_vs_llama_cpp.py --baseline .cache/reference/smollm2-f32.gguf \
           --text ../shared/data/wikitext-2-raw/wiki.test.raw --ctx 512 --chunks 40 --threads 2 \
           [--json OUT.json] ARTIFACT.gguf [ARTIFACT.gguf ...]
"""
import argparse
import json
import math
import sys
import time

import numpy as np


def log_softmax64(x):
    x = np.asarray(x, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def mean_err(v):
    v = np.asarray(v, dtype=np.float64)
    n = v.size
    m = float(v.mean())
    var = max(float((v * v).mean()) - m * m, 0.0)
    return m, (math.sqrt(var / (n - 1)) if n > 1 else 0.0)


def distribution(v):
    v = np.asarray(v, dtype=np.float64)
    m, e = mean_err(v)
    pct = lambda f: float(np.percentile(v, 100 * f))  # linear interpolation, as llama-perplexity
    return {"mean": m, "error": e, "rms": float(np.sqrt((v * v).mean())), "min": float(v.min()),
            "p01": pct(0.01), "p05": pct(0.05), "median": pct(0.5), "p95": pct(0.95),
            "p99": pct(0.99), "p999": pct(0.999), "max": float(v.max())}


def open_model(llama_cpp, path, ctx, threads):
    return llama_cpp.Llama(model_path=str(path), n_ctx=ctx, n_batch=ctx, n_ubatch=ctx,
                           n_threads=threads, n_threads_batch=threads, logits_all=True,
                           flash_attn=True, verbose=False)


def scored_logprobs(llm, chunk, first, ctx):
    """Evaluates one chunk from an empty cache; the log-softmax of the scored rows and the seconds taken."""
    t = time.perf_counter()
    llm.reset()
    llm.eval(chunk)
    logits = np.array(llm.scores[first:ctx - 1], dtype=np.float32)
    secs = time.perf_counter() - t
    return log_softmax64(logits), logits.argmax(axis=-1), secs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--hf-tokenizer", help="tokenizer.json to check that llama.cpp's ids are the ones "
                    "quern verify scores (the reference folder's, through the tokenizers package)")
    ap.add_argument("--also-chunks", type=int, nargs="*", default=[],
                    help="also report the figures over the first N chunks (same run)")
    args = ap.parse_args()
    import llama_cpp

    ctx, first = args.ctx, args.ctx // 2
    text = open(args.text, encoding="utf-8").read()
    base = open_model(llama_cpp, args.baseline, ctx, args.threads)
    vocab = llama_cpp.llama_model_get_vocab(base.model)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    bos = llama_cpp.llama_vocab_bos(vocab)
    t = time.perf_counter()
    tokens = base.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    tokenize_s = time.perf_counter() - t
    n_chunks = min(args.chunks, len(tokens) // ctx)
    if n_chunks < 1:
        sys.exit(f"{args.text}: {len(tokens)} tokens, fewer than one chunk of {ctx}")
    same_ids = None
    if args.hf_tokenizer:
        import tokenizers
        hf = tokenizers.Tokenizer.from_file(args.hf_tokenizer).encode(text, add_special_tokens=False).ids
        hf = ([bos] if add_bos else []) + hf
        n = n_chunks * ctx
        same_ids = sum(int(a == b) for a, b in zip(hf[:n], tokens[:n])) == n and len(hf) >= n
        print(f"token ids of the {n_chunks} chunks, llama.cpp vs {args.hf_tokenizer}: "
              f"{'identical' if same_ids else 'DIFFERENT'} ({len(tokens)} vs {len(hf)} tokens in the text)",
              file=sys.stderr, flush=True)
    arts = [(p, open_model(llama_cpp, p, ctx, args.threads)) for p in args.artifacts]
    acc = {p: {"kld": [], "nll": [], "dp": [], "same_list": [], "secs": 0.0, "kld_secs": 0.0} for p, _ in arts}
    base_nll, base_secs = [], 0.0
    for c in range(n_chunks):
        chunk = list(tokens[c * ctx:(c + 1) * ctx])
        if add_bos:
            chunk[0] = bos
        target = np.array(chunk[first + 1:ctx])
        rows = np.arange(ctx - 1 - first)
        lp, top_p, secs = scored_logprobs(base, chunk, first, ctx)
        base_secs += secs
        base_nll.extend((-lp[rows, target]).tolist())
        p_base = np.exp(lp[rows, target])
        for path, llm in arts:
            a = acc[path]
            lq, top_q, secs = scored_logprobs(llm, chunk, first, ctx)
            a["secs"] += secs
            t = time.perf_counter()
            a["kld"].extend((np.exp(lp) * (lp - lq)).sum(axis=-1).tolist())
            a["nll"].extend((-lq[rows, target]).tolist())
            a["dp"].extend((np.exp(lq[rows, target]) - p_base).tolist())
            a["same_list"].extend((top_p == top_q).tolist())
            a["kld_secs"] += time.perf_counter() - t
        print(f"chunk {c + 1}/{n_chunks}: PPL(base) {math.exp(np.mean(base_nll)):.4f} "
              + " ".join(f"KLD[{p.split('/')[-1]}] {np.mean(acc[p]['kld']):.5f}" for p, _ in arts),
              file=sys.stderr, flush=True)
    per_chunk = ctx - 1 - first
    results = {"baseline": args.baseline, "text": args.text, "ctx": ctx, "chunks": n_chunks,
               "tokens": len(tokens), "ids_match_hf_tokenizer": same_ids, "add_bos": add_bos, "threads": args.threads, "llama_cpp_python": llama_cpp.__version__,
               "tokenize_seconds": tokenize_s, "baseline_seconds": base_secs,
               "seconds": {p: acc[p]["secs"] for p, _ in arts},
               "kld_seconds": {p: acc[p]["kld_secs"] for p, _ in arts}, "by_chunks": {}}
    for nc in sorted({n_chunks, *[c for c in args.also_chunks if 0 < c < n_chunks]}):
        n = nc * per_chunk
        b = np.array(base_nll[:n])
        b_m, b_e = mean_err(b)
        r = {"scored_tokens": n, "ppl_baseline": {"value": math.exp(b_m), "error": math.exp(b_m) * b_e},
             "artifacts": {}}
        for path, _ in arts:
            a = acc[path]
            nll = np.array(a["nll"][:n])
            q_m, q_e = mean_err(nll)
            ln_m, ln_e = mean_err(nll - b)
            same = int(np.sum(a["same_list"][:n]))
            p = same / n
            r["artifacts"][path] = {
                "ppl": {"value": math.exp(q_m), "error": math.exp(q_m) * q_e},
                "ppl_ratio": math.exp(ln_m), "ln_ppl_ratio": {"value": ln_m, "error": ln_e},
                "kld": distribution(a["kld"][:n]),
                "same_top_p": {"value": p, "error": math.sqrt(p * (1 - p) / (n - 1))},
                "delta_p": distribution(a["dp"][:n])}
        results["by_chunks"][str(nc)] = r
        print(f"--- {nc} chunks x {ctx}: {n} scored tokens, add_bos {add_bos}; baseline {args.baseline}: "
              f"PPL {r['ppl_baseline']['value']:.4f}")
        for path, x in r["artifacts"].items():
            k = x["kld"]
            print(f"{path}: PPL {x['ppl']['value']:.4f} (ratio {x['ppl_ratio']:.4f}), KLD mean {k['mean']:.6f} "
                  f"± {k['error']:.6f}, median {k['median']:.6f}, p99 {k['p99']:.6f}, max {k['max']:.6f}, "
                  f"same top p {100 * x['same_top_p']['value']:.3f} ± {100 * x['same_top_p']['error']:.3f} %")
    print(f"eval seconds: baseline {base_secs:.1f}, "
          + ", ".join(f"{p} {acc[p]['secs']:.1f} (+ {acc[p]['kld_secs']:.1f} KLD)" for p, _ in arts))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
