"""`quern quantize` on the reference model (SmolLM2-135M-Instruct), checked against
llama.cpp's own quantiser (`llama_model_quantize` through llama-cpp-python, from
the independent F32 GGUF `smollm2-f32.gguf`) and PyPI `gguf`'s dequantisers:

* sizes: for each mix our file (quantised straight from the bf16 HF folder) is
  within 1% of llama.cpp's file for the same mix; the `--json` summary agrees
  with the file; per-tensor type choices that differ from llama.cpp's are printed.
* closeness: every tensor of our file, dequantised by `gguf.quants.dequantize`,
  is within a per-type relative RMS bound of the reference weights (read from the
  safetensors, q/k rows permuted here, not by quern).
* error vs llama.cpp, same input: both tools quantise `smollm2-f32.gguf`; on every
  tensor both give the same type, K-quant and IQ4 tensors have a relative RMS
  error <= 1.02 x llama.cpp's, and the legacy types (Q8_0, Q4_0/1, Q5_0/1) are
  byte-identical. (The reference weights lie on a Q4_1 grid, which flatters the
  4-bit types; bench/quant_error.py also measures random weights.)
* llama.cpp (marker `llama`): every file loads and gives finite logits; and the
  perplexity of our Q4_K_M is at most 1.01 x that of llama.cpp's Q4_K_M, computed
  from llama.cpp's logits with llama-perplexity's protocol (see `perplexity`).
  QUERN_PPL_CHUNKS sets the number of 512-token chunks (default 10 for CI time;
  the 20-chunk figure is in bench/results/quant-error.md).
"""
import json
import math
import os
import subprocess
import time

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.quants import dequantize

import quernlib as q

MIXES = ["Q4_K_M", "Q8_0", "Q4_0", "Q6_K", "IQ4_XS"]
K_AND_IQ4 = {T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS}
LEGACY = {T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1}
ERROR_SLACK = 1.02  # ours <= 1.02 x llama.cpp's relative RMS error, per tensor
SIZE_TOLERANCE = 0.01
# Relative RMS error bounds against the reference weights (Gaussian-like weights
# give about 0.004 for Q8_0, 0.02 for Q6_K, 0.04 for 5-bit, 0.09 for 4-bit).
MAX_REL_RMS = {T.F32: 0.0, T.F16: 1e-3, T.BF16: 4e-3, T.Q8_0: 0.01, T.Q6_K: 0.03, T.Q5_K: 0.06, T.Q5_0: 0.06,
               T.Q5_1: 0.06, T.Q4_K: 0.12, T.Q4_0: 0.12, T.Q4_1: 0.12, T.IQ4_NL: 0.12, T.IQ4_XS: 0.12}
PPL_CHUNKS = int(os.environ.get("QUERN_PPL_CHUNKS", "10"))
PPL_CTX = 512
PPL_MAX_RATIO = 1.01
LOAD_TOKENS = 64

RESULTS = {}


def _record(results_dir, key, value):
    RESULTS[key] = value
    (results_dir / "quantize_llama_cpp.json").write_text(json.dumps(RESULTS, indent=2))


def rel_rms(got, want):
    want = np.asarray(want, dtype=np.float64)
    err = np.asarray(got, dtype=np.float64) - want
    return math.sqrt(float((err * err).sum()) / max(float((want * want).sum()), 1e-30))


def dequantized(t):
    """f32 values of a GGUFReader tensor, shape (rows, cols) as numpy orders it."""
    return dequantize(np.asarray(t.data), t.tensor_type).reshape([int(x) for x in reversed(t.shape)])


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        q.require(False, "llama-cpp-python is not installed (testdata/setup-python.sh)")
    return llama_cpp


def llama_quantize(src, dst, mix, nthread=2):
    """llama.cpp's quantiser (llama_model_quantize, as llama-quantize calls it)."""
    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = nthread
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{mix}")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    assert rc == 0 and dst.is_file(), f"llama_model_quantize({src}, {mix}) returned {rc}"
    return dst


def quern_quantize(quern_bin, src, dst, mix):
    proc = subprocess.run([str(quern_bin), "quantize", str(src), "-o", str(dst), "--type", mix, "--threads", "2",
                           "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"quern quantize {src} --type {mix} exited {proc.returncode}:\n{proc.stderr}"
    assert dst.is_file(), f"quern quantize reported success but wrote no {dst}"
    # Temporary outputs are named .NAME.tmp-*; the provenance sidecar NAME.provenance.json is expected.
    leftovers = [p.name for p in dst.parent.iterdir()
                 if dst.name in p.name and p != dst and p.name != dst.name + ".provenance.json"]
    assert not leftovers, f"temporary files left beside the output: {leftovers}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def files(quern_bin, reference, tmp_path_factory):
    """files(kind, mix) -> path, built once per module. kind: "ours" (quern, from the HF
    folder), "ours_f32" (quern, from smollm2-f32.gguf), "llama" (llama.cpp, from smollm2-f32.gguf)."""
    out_dir = tmp_path_factory.mktemp("quantized")
    cache, summaries, secs = {}, {}, {}

    def get(kind, mix):
        key = (kind, mix)
        if key not in cache:
            dst = out_dir / f"{kind}-{mix}.gguf"
            t0 = time.perf_counter()
            if kind == "ours":
                summaries[mix] = quern_quantize(quern_bin, reference, dst, mix)
            elif kind == "ours_f32":
                quern_quantize(quern_bin, q.REFERENCE_F32, dst, mix)
            else:
                llama_quantize(q.REFERENCE_F32, dst, mix)
            secs[key] = time.perf_counter() - t0
            cache[key] = dst
        return cache[key]

    get.summaries = summaries
    get.seconds = secs
    return get


@pytest.fixture(scope="module")
def f32_weights(reference):
    return {t.name: t for t in GGUFReader(q.REFERENCE_F32).tensors}


@pytest.mark.parametrize("mix", MIXES)
def test_size_matches_llama_cpp(mix, files, results_dir):
    ours_path, theirs_path = files("ours", mix), files("llama", mix)
    ours, theirs = GGUFReader(ours_path), GGUFReader(theirs_path)
    ours_types = {t.name: t.tensor_type for t in ours.tensors}
    theirs_types = {t.name: t.tensor_type for t in theirs.tensors}
    assert set(ours_types) == set(theirs_types)
    assert ours.fields["general.file_type"].contents() == theirs.fields["general.file_type"].contents()
    assert ours.fields["general.quantization_version"].contents() == 2

    # The --json summary describes the file.
    summary = files.summaries[mix]
    size, their_size = ours_path.stat().st_size, theirs_path.stat().st_size
    assert summary["output_bytes"] == size
    assert {t["name"]: t["type"] for t in summary["tensors"]} == {k: v.name for k, v in ours_types.items()}

    differ = sorted(f"{k}: {ours_types[k].name} (llama.cpp {theirs_types[k].name})"
                    for k in ours_types if ours_types[k] != theirs_types[k])
    ratio = size / their_size
    _record(results_dir, f"size/{mix}", {"ours_bytes": size, "llama_cpp_bytes": their_size, "ratio": ratio,
                                         "types_differ": len(differ)})
    print(f"\n[{mix}] ours {size} B, llama.cpp {their_size} B (ratio {ratio:.5f}); "
          f"{len(differ)} tensors typed differently{': ' + '; '.join(differ[:8]) if differ else ''}")
    assert abs(ratio - 1) <= SIZE_TOLERANCE, f"{mix}: {size} bytes vs llama.cpp's {their_size}"


@pytest.mark.parametrize("mix", MIXES)
def test_close_to_reference_weights(mix, files, reference_tensors, reference_config):
    """Our file (from the HF folder), dequantised by PyPI gguf, against the bf16 reference weights."""
    by_name = {t.name: t for t in GGUFReader(files("ours", mix)).tensors}
    problems, worst = [], {}
    for hf_name, (dtype, shape, src) in reference_tensors.items():
        name = q.gguf_name(hf_name)
        t = by_name[name]
        w = q.to_f32(dtype, src)
        if ".attn_q." in name:
            w = q.permute_qk(w, reference_config["num_attention_heads"])
        elif ".attn_k." in name:
            w = q.permute_qk(w, reference_config["num_key_value_heads"])
        got = dequantized(t)
        assert got.shape == w.shape, name
        e = rel_rms(got, w)
        worst[t.tensor_type.name] = max(worst.get(t.tensor_type.name, 0.0), e)
        bound = MAX_REL_RMS.get(t.tensor_type)
        if bound is None:
            problems.append(f"{name}: unexpected type {t.tensor_type.name}")
        elif e > bound:
            problems.append(f"{name} ({t.tensor_type.name}): relative RMS error {e:.4g} > {bound}")
    print(f"\n[{mix}] worst relative RMS error per type: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(worst.items())))
    assert not problems, f"{len(problems)} tensors too far from the reference:\n" + "\n".join(problems[:20])


@pytest.mark.parametrize("mix", MIXES)
def test_error_no_worse_than_llama_cpp(mix, files, f32_weights, results_dir):
    """Same input (smollm2-f32.gguf) to both quantisers; errors against those F32 weights."""
    ours = {t.name: t for t in GGUFReader(files("ours_f32", mix)).tensors}
    theirs = {t.name: t for t in GGUFReader(files("llama", mix)).tensors}
    worse, not_identical, skipped, identical = [], [], [], 0
    agg = {}  # type -> [our squared error, their squared error, reference energy, tensors, ours better]
    for name, ref in f32_weights.items():
        a, b = ours[name], theirs[name]
        if a.tensor_type != b.tensor_type:
            skipped.append(f"{name}: {a.tensor_type.name} vs {b.tensor_type.name}")
            continue
        if a.tensor_type in LEGACY:
            if np.asarray(a.data).tobytes() != np.asarray(b.data).tobytes():
                not_identical.append(f"{name} ({a.tensor_type.name})")
            else:
                identical += 1
        if a.tensor_type not in K_AND_IQ4:
            continue
        w = np.asarray(ref.data, dtype=np.float64).reshape([int(x) for x in reversed(ref.shape)])
        ea = dequantized(a) - w
        eb = dequantized(b) - w
        sa, sb, sw = float((ea * ea).sum()), float((eb * eb).sum()), float((w * w).sum())
        ra, rb = math.sqrt(sa / sw), math.sqrt(sb / sw)
        s = agg.setdefault(a.tensor_type.name, [0.0, 0.0, 0.0, 0, 0])
        s[0] += sa; s[1] += sb; s[2] += sw; s[3] += 1; s[4] += ra < rb
        if ra > ERROR_SLACK * rb + 1e-7:
            worse.append(f"{name} ({a.tensor_type.name}): {ra:.5f} vs llama.cpp {rb:.5f} ({ra / rb:.3f}x)")
    table = {k: {"tensors": v[3], "ours_rel_rms": math.sqrt(v[0] / v[2]), "llama_cpp_rel_rms": math.sqrt(v[1] / v[2]),
                 "ratio": math.sqrt(v[0] / v[1]) if v[1] else None, "ours_better": v[4]} for k, v in agg.items()}
    _record(results_dir, f"error/{mix}", table)
    print(f"\n[{mix}] aggregate relative RMS error, ours vs llama.cpp: " + "; ".join(
        f"{k} ({v['tensors']} tensors, ours better on {v['ours_better']}): {v['ours_rel_rms']:.5f} vs "
        f"{v['llama_cpp_rel_rms']:.5f} ({v['ratio']:.4f}x)" for k, v in sorted(table.items()))
        + f"; legacy-type tensors byte-identical: {identical} of {identical + len(not_identical)}"
        + (f"; {len(skipped)} tensors typed differently, not compared" if skipped else ""))
    assert table or identical + len(not_identical), f"{mix}: no quantised tensors of the same type to compare"
    assert not worse, f"{len(worse)} tensors with a larger error than llama.cpp's (slack {ERROR_SLACK}):\n" + "\n".join(worse[:20])
    assert not not_identical, f"legacy-type tensors not byte-identical to llama.cpp's: {not_identical[:10]}"


# ---------------------------------------------------------------- llama.cpp

def _llama(path, n_ctx, n_batch):
    llama_cpp = _llama_cpp()
    # flash_attn: llama-perplexity's default (auto) enables it on the CPU backend, and it moves PPL by ~1%.
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch, n_threads=2,
                           n_threads_batch=2, logits_all=True, flash_attn=True, verbose=False)


@pytest.mark.llama
@pytest.mark.parametrize("mix", MIXES)
def test_loads_in_llama_cpp(mix, files, wikitext):
    llm = _llama(files("ours", mix), n_ctx=LOAD_TOKENS, n_batch=LOAD_TOKENS)
    try:
        tokens = llm.tokenize(wikitext[:2000].encode("utf-8"), add_bos=True, special=False)[:LOAD_TOKENS]
        llm.eval(tokens)
        logits = np.array(llm.scores[:LOAD_TOKENS], dtype=np.float32)
    finally:
        llm.close()
    assert logits.shape == (LOAD_TOKENS, 49152)
    assert np.isfinite(logits).all(), f"{mix}: non-finite logits"
    assert logits.std() > 0.1, f"{mix}: degenerate logits"


def perplexity(path, text, n_chunks, n_ctx=PPL_CTX):
    """llama-perplexity's protocol (tools/perplexity/perplexity.cpp, perplexity()): tokenise the
    whole text with add_special (BOS only if the vocab's add_bos_token says so; false for SmolLM2),
    split into non-overlapping n_ctx chunks, put BOS in place of each chunk's first token when
    add_bos, evaluate each chunk from an empty cache, and score positions n_ctx/2 .. n_ctx-2
    (each predicting the next token): PPL = exp(mean NLL)."""
    llama_cpp = _llama_cpp()
    llm = _llama(path, n_ctx=n_ctx, n_batch=n_ctx)
    try:
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        bos = llama_cpp.llama_vocab_bos(vocab)
        assert len(tokens) >= n_chunks * n_ctx
        first = n_ctx // 2
        nll, count, t0 = 0.0, 0, time.perf_counter()
        for c in range(n_chunks):
            chunk = list(tokens[c * n_ctx:(c + 1) * n_ctx])
            if add_bos:
                chunk[0] = bos
            llm.reset()
            llm.eval(chunk)
            logp = q.log_softmax64(np.array(llm.scores[first:n_ctx - 1], dtype=np.float32))
            nll -= float(logp[np.arange(n_ctx - 1 - first), chunk[first + 1:]].sum())
            count += n_ctx - 1 - first
        return math.exp(nll / count), time.perf_counter() - t0, add_bos
    finally:
        llm.close()


@pytest.mark.llama
def test_perplexity_q4_k_m_matches_llama_cpp(files, wikitext, results_dir):
    ours, secs, add_bos = perplexity(files("ours", "Q4_K_M"), wikitext, PPL_CHUNKS)
    theirs, their_secs, _ = perplexity(files("llama", "Q4_K_M"), wikitext, PPL_CHUNKS)
    ratio = ours / theirs
    _record(results_dir, "perplexity/Q4_K_M", {"chunks": PPL_CHUNKS, "n_ctx": PPL_CTX, "add_bos": add_bos,
                                               "ours": ours, "llama_cpp": theirs, "ratio": ratio,
                                               "seconds": [secs, their_secs]})
    print(f"\n[Q4_K_M] wiki.test.raw, {PPL_CHUNKS} x {PPL_CTX} tokens: PPL ours {ours:.4f}, llama.cpp {theirs:.4f} "
          f"(ratio {ratio:.4f}); {secs:.1f} s + {their_secs:.1f} s")
    assert math.isfinite(ours) and math.isfinite(theirs)
    assert ratio <= PPL_MAX_RATIO, f"our Q4_K_M perplexity {ours:.4f} > {PPL_MAX_RATIO} x llama.cpp's {theirs:.4f}"
