"""A float64 numpy forward pass of a Llama-family Hugging Face folder, written
from the Hugging Face model definition (no torch, no llama.cpp): the independent
reference the runtime's logits are checked against.

  numpy_ref.py FOLDER TOKENS_U32 OUT_F64    every position's logits, row-major

Supports what the reference model needs and its relatives: llama / mistral /
qwen2 (q/k/v biases) / qwen3 (q/k norms), GQA, tied embeddings, plain rope.
"""
import json
import os
import struct
import sys

import numpy as np


def load_safetensors(folder):
    paths = []
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            paths = sorted(set(json.load(f)["weight_map"].values()))
    else:
        paths = ["model.safetensors"]
    out = {}
    for p in paths:
        with open(os.path.join(folder, p), "rb") as f:
            data = f.read()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            raw = data[base + a : base + b]
            dt = info["dtype"]
            if dt == "BF16":
                u = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
                arr = u.view(np.float32)
            elif dt == "F16":
                arr = np.frombuffer(raw, dtype=np.float16)
            elif dt == "F32":
                arr = np.frombuffer(raw, dtype=np.float32)
            else:
                sys.exit(f"{name}: dtype {dt} not supported by the reference")
            out[name] = arr.astype(np.float64).reshape(info["shape"])
    return out


def rms(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def rope(x, pos, theta):
    # x: [T, heads, hd]; Hugging Face's rotate_half convention.
    hd = x.shape[-1]
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = pos[:, None] * inv[None, :]
    cos = np.cos(np.concatenate([ang, ang], -1))[:, None, :]
    sin = np.sin(np.concatenate([ang, ang], -1))[:, None, :]
    half = hd // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def forward(folder, toks):
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    w = load_safetensors(folder)
    arch = cfg["architectures"][0]
    h = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    hd = cfg.get("head_dim") or h // nh
    eps = cfg.get("rms_norm_eps", 1e-6)
    theta = cfg.get("rope_theta", 10000.0)
    T = len(toks)
    pos = np.arange(T, dtype=np.float64)
    x = w["model.embed_tokens.weight"][toks]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        xn = rms(x, w[p + "input_layernorm.weight"], eps)
        q = xn @ w[p + "self_attn.q_proj.weight"].T
        k = xn @ w[p + "self_attn.k_proj.weight"].T
        v = xn @ w[p + "self_attn.v_proj.weight"].T
        for name, t in (("q", q), ("k", k), ("v", v)):
            b = w.get(p + f"self_attn.{name}_proj.bias")
            if b is not None:
                t += b
        q = q.reshape(T, nh, hd)
        k = k.reshape(T, nkv, hd)
        v = v.reshape(T, nkv, hd)
        if arch == "Qwen3ForCausalLM":
            q = rms(q, w[p + "self_attn.q_norm.weight"], eps)
            k = rms(k, w[p + "self_attn.k_norm.weight"], eps)
        q = rope(q, pos, theta)
        k = rope(k, pos, theta)
        rep = nh // nkv
        k = np.repeat(k, rep, axis=1)
        v = np.repeat(v, rep, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask[None]
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = np.einsum("hts,shd->thd", s, v).reshape(T, nh * hd)
        x = x + a @ w[p + "self_attn.o_proj.weight"].T
        xn = rms(x, w[p + "post_attention_layernorm.weight"], eps)
        g = xn @ w[p + "mlp.gate_proj.weight"].T
        u = xn @ w[p + "mlp.up_proj.weight"].T
        x = x + (g / (1.0 + np.exp(-g)) * u) @ w[p + "mlp.down_proj.weight"].T
    x = rms(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x @ head.T


def main():
    folder, src, out = sys.argv[1:4]
    toks = np.fromfile(src, dtype=np.uint32).astype(np.int64)
    forward(folder, toks).astype(np.float64).tofile(out)


if __name__ == "__main__":
    main()
