//! The runtime on the real reference model (SmolLM2-135M-Instruct) against two
//! independent references:
//! - a float64 numpy forward pass written from the Hugging Face definition
//!   (`scripts/numpy_ref.py`), on our bf16 GGUF and on the bf16 folder itself;
//! - llama.cpp (llama-cpp-python) over 512 tokens of WikiText-2 on the wheel's
//!   llama.cpp-made Q4_1 GGUF and on our Q8_0 and Q4_K_M files: top-1 agreement
//!   with llama.cpp's logits, and the KL divergence of each side's distribution
//!   from the independent F32 baseline (the wheel's GGUF dequantised by
//!   `shared/tools/gguf-to-f32`), ours at most 1.05× llama.cpp's own.
//!
//! Skips with a notice when the model or Python is missing.

mod common;

use std::path::Path;

use common::{
    kl, log_softmax, python, read_f32, read_f64, reference_folder, run_llama_ref, run_script,
    wiki_tokens, write_u32,
};
use quern_quant::mix::Mix;
use quern_quant::pipeline::{
    convert_hf_folder, quantize, ConvertOptions, NoProgress, OutType, QuantizeOptions,
};
use quern_runtime::sampler::argmax;
use quern_runtime::{CpuBackend, Model};

fn logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut session = model.session(tokens.len());
    model.forward(&mut session, tokens, true).expect("forward")
}

#[test]
fn bf16_matches_float64_numpy_forward() {
    let Some(folder) = reference_folder() else {
        return;
    };
    let Some(py) = python(&["numpy"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = dir.path().join("bf16.gguf");
    let opts = ConvertOptions {
        outtype: OutType::Bf16,
        model_name: None,
    };
    convert_hf_folder(&folder, &gguf, &opts, &NoProgress).expect("convert");
    let gguf_model = Model::open(&gguf, Box::new(CpuBackend::new())).expect("open gguf");
    let Some(tokens) = wiki_tokens(&gguf_model, 24) else {
        return;
    };
    let toks = dir.path().join("toks.u32");
    write_u32(&toks, &tokens);
    let out = dir.path().join("ref.f64");
    run_script(
        &py,
        "numpy_ref.py",
        &[
            folder.to_str().expect("path"),
            toks.to_str().expect("path"),
            out.to_str().expect("path"),
        ],
    );
    let want = read_f64(&out);
    let folder_model = Model::open(&folder, Box::new(CpuBackend::new())).expect("open folder");
    for (what, model) in [("bf16 GGUF", &gguf_model), ("bf16 folder", &folder_model)] {
        let got = logits(model, &tokens);
        assert_eq!(got.len(), want.len(), "{what}");
        let vocab = model.config.vocab;
        let mut worst = 0f64;
        for (g, w) in got.chunks_exact(vocab).zip(want.chunks_exact(vocab)) {
            let num: f64 = g.iter().zip(w).map(|(&a, &b)| (a as f64 - b).powi(2)).sum();
            let den: f64 = w.iter().map(|b| b * b).sum();
            worst = worst.max((num / den).sqrt());
        }
        eprintln!(
            "{what}: worst relative logit error {worst:.2e} over {} positions",
            tokens.len()
        );
        assert!(worst < 1e-3, "{what}: relative error {worst}");
    }
}

/// Mean KL divergence of `test` from `base` over positions `from..`, and the
/// share of those positions where `a` and `b` pick the same top token.
fn mean_kl(base: &[f32], test: &[f32], vocab: usize, from: usize) -> f64 {
    let rows: Vec<f64> = base
        .chunks_exact(vocab)
        .zip(test.chunks_exact(vocab))
        .skip(from)
        .map(|(b, t)| kl(&log_softmax(b), &log_softmax(t)))
        .collect();
    rows.iter().sum::<f64>() / rows.len() as f64
}

fn top1_agreement(a: &[f32], b: &[f32], vocab: usize, from: usize) -> f64 {
    let (mut same, mut n) = (0usize, 0usize);
    for (x, y) in a.chunks_exact(vocab).zip(b.chunks_exact(vocab)).skip(from) {
        same += usize::from(argmax(x) == argmax(y));
        n += 1;
    }
    same as f64 / n as f64
}

fn llama_cpp_logits(py: &Path, model: &Path, toks: &Path, out: &Path) -> Vec<f32> {
    run_llama_ref(
        py,
        &[
            "logits",
            model.to_str().expect("path"),
            toks.to_str().expect("path"),
            out.to_str().expect("path"),
        ],
    );
    read_f32(out)
}

#[test]
fn quantised_files_match_llama_cpp_over_512_tokens() {
    let Some(folder) = reference_folder() else {
        return;
    };
    let Some(py) = python(&["numpy", "llama_cpp"]) else {
        return;
    };
    let cache = folder.parent().expect("cache folder");
    let (f32_base, wheel_q4_1) = (
        cache.join("smollm2-f32.gguf"),
        cache.join("smollm2-q4_1.gguf"),
    );
    assert!(
        f32_base.is_file() && wheel_q4_1.is_file(),
        "reference GGUFs missing in {}",
        cache.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = vec![("wheel Q4_1 (llama.cpp-made)", wheel_q4_1)];
    for (name, mix) in [("Q8_0", "Q8_0"), ("Q4_K_M", "Q4_K_M")] {
        let path = dir.path().join(format!("{name}.gguf"));
        let opts = QuantizeOptions {
            mix: mix.parse::<Mix>().expect("mix"),
            allow_requantize: false,
            model_name: None,
        };
        quantize(&folder, &path, &opts, None, &NoProgress).expect("quantize");
        files.push((name, path));
    }

    let n = 512;
    let first = Model::open(&files[0].1, Box::new(CpuBackend::new())).expect("open");
    let Some(tokens) = wiki_tokens(&first, n) else {
        return;
    };
    drop(first);
    let toks = dir.path().join("toks.u32");
    write_u32(&toks, &tokens);
    let base = llama_cpp_logits(&py, &f32_base, &toks, &dir.path().join("base.f32"));
    // llama-perplexity's protocol: the second half of the chunk is scored.
    let from = n / 2;
    for (name, path) in &files {
        let theirs = llama_cpp_logits(&py, path, &toks, &dir.path().join("theirs.f32"));
        let model = Model::open(path, Box::new(CpuBackend::new())).expect("open");
        let vocab = model.config.vocab;
        let ours = logits(&model, &tokens);
        assert_eq!(ours.len(), theirs.len(), "{name}");
        let agree = top1_agreement(&ours, &theirs, vocab, from);
        let (kl_ours, kl_theirs) = (
            mean_kl(&base, &ours, vocab, from),
            mean_kl(&base, &theirs, vocab, from),
        );
        eprintln!(
            "{name}: top-1 agreement with llama.cpp {agree:.4}; mean KLD from F32: ours {kl_ours:.5}, \
             llama.cpp {kl_theirs:.5} (ratio {:.3})",
            kl_ours / kl_theirs
        );
        assert!(agree >= 0.95, "{name}: top-1 agreement {agree} < 0.95");
        assert!(
            kl_ours <= 1.05 * kl_theirs,
            "{name}: our KLD {kl_ours} > 1.05 × llama.cpp's {kl_theirs}"
        );
    }
}
