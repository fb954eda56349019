#!/usr/bin/env python3
"""Write a Llama-shaped bf16 Hugging Face folder with random weights, for
benchmarks and tests that need a model larger than the reference one.

The weights are ~N(0, 0.02) from a fixed seed (each tensor has its own stream,
derived from the seed and the tensor name, so the output is deterministic),
RMS-norm weights are 1.0. The tokenizer files (and generation_config.json) are
copied from the reference model folder so the result has a valid tokenizer;
config.json is the reference's with the preset's sizes. Tensors are generated
and written chunk by chunk, so memory stays bounded (~100 MB) whatever the
model size. The safetensors are split in shards with a
model.safetensors.index.json, as hub models of this size are.

The folder is written under a temporary name and renamed into place; an
existing OUT made with the same preset and seed is kept (use --force to redo).

usage: make-synthetic-llama.py OUT [--preset tinyllama-1.1b] [--seed 0] [--shards 2]
       [--reference DIR]   (default <repo>/.cache/reference/smollm2-135m)
needs: numpy
"""
import argparse
import hashlib
import json
import os
import shutil
import struct
import sys
import time

import numpy as np

PRESETS = {
    # TinyLlama-1.1B's shapes with the reference model's 49152-token vocabulary.
    "tinyllama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                           num_attention_heads=32, num_key_value_heads=4, vocab_size=49152,
                           max_position_embeddings=2048, rope_theta=10000.0, tie_word_embeddings=False),
    # SmolLM2-135M's shapes (the reference model's), tied embeddings: speed runs
    # where the real weights cannot travel.
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                         max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True),
    # A small one for quick tests of this script and of sharded input.
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=49152,
                 max_position_embeddings=2048, rope_theta=10000.0, tie_word_embeddings=False),
}
COPIED = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]
STD = 0.02
CHUNK = 1 << 23  # elements generated at a time (32 MB of f32)
STAMP = ".quern-synthetic.json"


def tensor_list(c):
    """(name, shape, kind) in file order: kind is 'normal' or 'ones'."""
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = h // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", (v, h), "normal")]
    for n in range(c["num_hidden_layers"]):
        p = f"model.layers.{n}."
        out += [
            (p + "input_layernorm.weight", (h,), "ones"),
            (p + "self_attn.q_proj.weight", (h, h), "normal"),
            (p + "self_attn.k_proj.weight", (kv, h), "normal"),
            (p + "self_attn.v_proj.weight", (kv, h), "normal"),
            (p + "self_attn.o_proj.weight", (h, h), "normal"),
            (p + "post_attention_layernorm.weight", (h,), "ones"),
            (p + "mlp.gate_proj.weight", (i, h), "normal"),
            (p + "mlp.up_proj.weight", (i, h), "normal"),
            (p + "mlp.down_proj.weight", (h, i), "normal"),
        ]
    out.append(("model.norm.weight", (h,), "ones"))
    if not c["tie_word_embeddings"]:
        out.append(("lm_head.weight", (v, h), "normal"))
    return out


def nbytes(shape):
    return int(np.prod(shape)) * 2


def split_shards(tensors, shards):
    """Cut the ordered list into `shards` runs of about equal byte size."""
    total = sum(nbytes(s) for _, s, _ in tensors)
    groups, cur, acc = [], [], 0
    for t in tensors:
        if cur and len(groups) < shards - 1 and acc + nbytes(t[1]) / 2 > total * (len(groups) + 1) / shards:
            groups.append(cur)
            cur = []
        cur.append(t)
        acc += nbytes(t[1])
    groups.append(cur)
    return groups


def to_bf16(a):
    bits = a.view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even


def stream(name, shape, kind, seed):
    n = int(np.prod(shape))
    if kind == "ones":
        yield np.full(n, 0x3F80, dtype=np.uint16)  # bf16 1.0
        return
    key = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(key)
    for start in range(0, n, CHUNK):
        x = rng.standard_normal(min(CHUNK, n - start), dtype=np.float32)
        x *= STD
        yield to_bf16(x)


def write_shard(path, tensors, seed, progress):
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, _ in tensors:
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes(shape)]}
        offset += nbytes(shape)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * ((8 - len(head) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for name, shape, kind in tensors:
            for part in stream(name, shape, kind, seed):
                f.write(part.tobytes())
            progress(nbytes(shape))
    return offset


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("out")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tinyllama-1.1b")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", type=int, default=2)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--reference", default=os.path.join(repo, ".cache", "reference", "smollm2-135m"))
    ap.add_argument("--force", action="store_true", help="rebuild even if OUT exists with the same preset and seed")
    args = ap.parse_args()

    out = os.path.abspath(args.out)
    want = {"preset": args.preset, "seed": args.seed, "shards": args.shards, "std": STD, "version": 1}
    stamp = os.path.join(out, STAMP)
    if not args.force and os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == want:
                print(f"{out} is up to date ({args.preset}, seed {args.seed})")
                return
    for name in COPIED + ["config.json"]:
        if not os.path.exists(os.path.join(args.reference, name)):
            sys.exit(f"error: {args.reference}/{name} missing (run testdata/reference-model.sh first)")

    preset = PRESETS[args.preset]
    with open(os.path.join(args.reference, "config.json")) as f:
        config = json.load(f)
    config.update(preset)
    config["head_dim"] = preset["hidden_size"] // preset["num_attention_heads"]
    config["torch_dtype"] = "bfloat16"

    tensors = tensor_list(config)
    total = sum(nbytes(s) for _, s, _ in tensors)
    params = total // 2
    print(f"{args.preset}: {len(tensors)} tensors, {params / 1e9:.3f} B parameters, {total / 2**30:.2f} GiB bf16 "
          f"in {args.shards} shard(s)", flush=True)

    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    t0, done = time.time(), [0]

    def progress(n):
        done[0] += n
        if sys.stderr.isatty() or done[0] == total or done[0] * 20 // total != (done[0] - n) * 20 // total:
            print(f"\r  {done[0] / total * 100:5.1f}%  {done[0] / 2**20 / max(time.time() - t0, 1e-9):7.1f} MiB/s",
                  end="" if done[0] < total else "\n", file=sys.stderr, flush=True)

    try:
        groups = split_shards(tensors, args.shards)
        weight_map = {}
        for k, group in enumerate(groups, 1):
            fname = "model.safetensors" if len(groups) == 1 else f"model-{k:05d}-of-{len(groups):05d}.safetensors"
            write_shard(os.path.join(tmp, fname), group, args.seed, progress)
            weight_map.update({name: fname for name, _, _ in group})
        if len(groups) > 1:
            with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
                f.write("\n")
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        for name in COPIED:
            shutil.copyfile(os.path.join(args.reference, name), os.path.join(tmp, name))
        with open(os.path.join(tmp, STAMP), "w") as f:
            json.dump(want, f)
        old = f"{out}.old-{os.getpid()}"
        if os.path.exists(out):
            os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {out} in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
