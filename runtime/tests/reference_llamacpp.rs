//! The real reference model (SmolLM2-135M-Instruct, converted to bf16 GGUF by
//! our converter) against llama.cpp through llama-cpp-python: the same token
//! ids for a WikiText passage, and the same top-1 token at ≥ 99% of 128
//! positions. Skips with a notice when the model or Python is missing.

mod common;

use common::{python, read_f32, read_u32, reference_folder, run_llama_ref, write_u32};
use quern_quant::pipeline::{convert_hf_folder, ConvertOptions, NoProgress, OutType};
use quern_runtime::sampler::argmax;
use quern_runtime::{CpuBackend, Model};

fn passage() -> String {
    let p = common::workspace_root().join("../shared/data/wikitext-2-raw/wiki.test.raw");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|_| {
        // Any English text exercises the same paths; this keeps the test independent
        // of the data folder.
        "The quick brown fox jumps over the lazy dog. In 1997, 42 people met at the \
         station; they didn't expect it to rain. "
            .repeat(20)
    });
    text.chars().skip(200).take(2400).collect()
}

#[test]
fn bf16_reference_matches_llama_cpp() {
    let Some(folder) = reference_folder() else {
        return;
    };
    let Some(py) = python(&["numpy", "llama_cpp"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = dir.path().join("smollm2-bf16.gguf");
    let opts = ConvertOptions {
        outtype: OutType::Bf16,
        model_name: None,
    };
    convert_hf_folder(&folder, &gguf, &opts, &NoProgress).expect("convert");
    let gguf_s = gguf.to_str().expect("utf-8 path");

    // Tokenizer: ours against llama.cpp's on the same text, specials included.
    let model = Model::open(&gguf, Box::new(CpuBackend::new())).expect("open");
    let tok = model.tokenizer().expect("tokenizer");
    let text = format!("<|im_start|>user\n{}", passage());
    let text_path = dir.path().join("text.txt");
    std::fs::write(&text_path, &text).expect("write text");
    let ids_path = dir.path().join("ids.u32");
    run_llama_ref(
        &py,
        &[
            "tokenize",
            gguf_s,
            text_path.to_str().expect("path"),
            ids_path.to_str().expect("path"),
        ],
    );
    let theirs = read_u32(&ids_path);
    let ours = tok.encode(&text, false).expect("encode");
    assert_eq!(ours, theirs, "token ids differ from llama.cpp's");
    assert_eq!(tok.decode(&ours), text);
    assert!(
        ours.len() >= 128,
        "passage too short: {} tokens",
        ours.len()
    );

    // Logits of 128 positions.
    let n = 128;
    let tokens = &ours[..n];
    let toks_path = dir.path().join("toks.u32");
    write_u32(&toks_path, tokens);
    let logits_path = dir.path().join("logits.f32");
    run_llama_ref(
        &py,
        &[
            "logits",
            gguf_s,
            toks_path.to_str().expect("path"),
            logits_path.to_str().expect("path"),
        ],
    );
    let theirs = read_f32(&logits_path);
    let vocab = model.config.vocab;
    assert_eq!(theirs.len(), n * vocab);
    let mut session = model.session(n);
    let ours = model.forward(&mut session, tokens, true).expect("forward");
    let mut agree = 0;
    let mut worst = 0f64;
    for (a, b) in ours.chunks_exact(vocab).zip(theirs.chunks_exact(vocab)) {
        agree += usize::from(argmax(a) == argmax(b));
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        worst = worst.max((num / den).sqrt());
    }
    let share = agree as f64 / n as f64;
    eprintln!(
        "top-1 agreement {share:.4} over {n} positions; worst relative logit error {worst:.2e}"
    );
    assert!(share >= 0.99, "top-1 agreement {share} < 0.99");
    assert!(worst < 0.05, "relative logit error {worst}");
}
