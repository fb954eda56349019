//! Loading errors, the GGUF tokenizer and the sampler on tiny generated models.

use std::path::{Path, PathBuf};

use quern_formats::gguf::{GgufFile, TensorSpec, Value, Writer};
use quern_formats::testutil::{tokenizer_vocab, TinyModel};
use quern_formats::GgmlType;
use quern_quant::pipeline::{convert_hf_folder, ConvertOptions, NoProgress, OutType};
use quern_runtime::sampler::argmax;
use quern_runtime::{CpuBackend, Model, Sampler, SamplerConfig, Tokenizer};

fn tiny_gguf(dir: &Path) -> PathBuf {
    let folder = dir.join("hf");
    TinyModel::llama().write(&folder).expect("write");
    let out = dir.join("tiny.gguf");
    let opts = ConvertOptions {
        outtype: OutType::F32,
        model_name: None,
    };
    convert_hf_folder(&folder, &out, &opts, &NoProgress).expect("convert");
    out
}

/// Copies `src` to `dst`, replacing metadata values and re-encoding one tensor.
fn rewrite(src: &Path, dst: &Path, meta: &[(&str, Value)], retype: Option<(&str, GgmlType)>) {
    let f = GgufFile::open(src).expect("open");
    let mut md: Vec<(String, Value)> = f.metadata().to_vec();
    for (k, v) in meta {
        match md.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.clone(),
            None => md.push((k.to_string(), v.clone())),
        }
    }
    let specs: Vec<TensorSpec> = f
        .tensors()
        .iter()
        .map(|t| {
            let ty = match retype {
                Some((n, ty)) if n == t.name => ty,
                _ => t.ggml_type,
            };
            TensorSpec::new(t.name.clone(), t.shape.clone(), ty)
        })
        .collect();
    let mut w =
        Writer::new(std::fs::File::create(dst).expect("create"), &md, &specs).expect("writer");
    for (t, s) in f.tensors().iter().zip(&specs) {
        if s.ggml_type == t.ggml_type {
            w.write_tensor(&t.name, f.tensor_data(t)).expect("write");
        } else {
            let n = t.n_elements() as usize;
            let mut vals = vec![0f32; n];
            quern_quant::dequantize_row(t.ggml_type, f.tensor_data(t), &mut vals).expect("deq");
            let mut bytes = vec![0u8; quern_quant::row_bytes(s.ggml_type, n).expect("blocks")];
            quern_quant::quantize_matrix(
                s.ggml_type,
                &vals,
                t.row_len() as usize,
                None,
                &mut bytes,
            )
            .expect("quantize");
            w.write_tensor(&t.name, &bytes).expect("write");
        }
    }
    w.finish().expect("finish");
}

fn open_err(path: &Path) -> String {
    match Model::open(path, Box::new(CpuBackend::new())) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unsupported_architecture_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = tiny_gguf(dir.path());
    let dst = dir.path().join("gptneox.gguf");
    rewrite(
        &src,
        &dst,
        &[("general.architecture", Value::String("gptneox".into()))],
        None,
    );
    let e = open_err(&dst);
    assert!(e.contains("gptneox") && e.contains("gptneox.gguf"), "{e}");
}

#[test]
fn unsupported_tensor_type_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = tiny_gguf(dir.path());
    // Q8_K is an activation format: no kernel multiplies by it.
    let dst = dir.path().join("q8k.gguf");
    let big = TinyModel {
        hidden: 256,
        intermediate: 256,
        ..TinyModel::llama()
    };
    let folder = dir.path().join("big");
    big.write(&folder).expect("write");
    let opts = ConvertOptions {
        outtype: OutType::F32,
        model_name: None,
    };
    let big_gguf = dir.path().join("big.gguf");
    convert_hf_folder(&folder, &big_gguf, &opts, &NoProgress).expect("convert");
    rewrite(
        &big_gguf,
        &dst,
        &[],
        Some(("blk.1.ffn_up.weight", GgmlType::Q8K)),
    );
    let e = open_err(&dst);
    assert!(
        e.contains("blk.1.ffn_up.weight") && e.contains("Q8_K"),
        "{e}"
    );
    let _ = src;
}

#[test]
fn k_quant_weights_run_close_to_f32() {
    // Same tiny model with every matrix in a K-quant or IQ4 format: the logits stay
    // close to the F32 file's (the kernels' own accuracy is tested in kernels.rs).
    let dir = tempfile::tempdir().expect("tempdir");
    let m = TinyModel {
        hidden: 256,
        intermediate: 512,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        dtype: "f32",
        ..TinyModel::qwen2()
    };
    let folder = dir.path().join("hf");
    m.write(&folder).expect("write");
    let f32_path = dir.path().join("f32.gguf");
    let opts = ConvertOptions {
        outtype: OutType::F32,
        model_name: None,
    };
    convert_hf_folder(&folder, &f32_path, &opts, &NoProgress).expect("convert");
    let tokens = [5u32, 80, 17, 200, 3];
    let base = {
        let model = Model::open(&f32_path, Box::new(CpuBackend::new())).expect("open");
        let mut s = model.session(16);
        model.forward(&mut s, &tokens, true).expect("forward")
    };
    for (ty, tol) in [
        (GgmlType::Q6K, 0.03),
        (GgmlType::Q5K, 0.06),
        (GgmlType::Q4K, 0.12),
        (GgmlType::Q3K, 0.25),
        (GgmlType::Q2K, 0.5),
        (GgmlType::Iq4Xs, 0.12),
        (GgmlType::Iq4Nl, 0.12),
        (GgmlType::Q4_0, 0.15),
        (GgmlType::Q5_1, 0.08),
    ] {
        let mut cur = f32_path.clone();
        for (i, name) in [
            "blk.0.attn_q.weight",
            "blk.0.ffn_down.weight",
            "blk.1.ffn_gate.weight",
            "output.weight",
        ]
        .iter()
        .enumerate()
        {
            let next = dir.path().join(format!("{ty}-{i}.gguf"));
            rewrite(&cur, &next, &[], Some((name, ty)));
            cur = next;
        }
        let model = Model::open(&cur, Box::new(CpuBackend::new())).expect("open");
        let mut s = model.session(16);
        let got = model.forward(&mut s, &tokens, true).expect("forward");
        let num: f64 = got
            .iter()
            .zip(&base)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = base.iter().map(|b| (*b as f64).powi(2)).sum();
        let e = (num / den).sqrt();
        eprintln!("{ty}: relative logit error {e:.4}");
        assert!(e < tol && e > 0.0, "{ty}: relative error {e}");
    }
}

#[test]
fn tokenizer_from_gguf_metadata() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_gguf(dir.path());
    let f = GgufFile::open(&path).expect("open");
    let tok = Tokenizer::from_gguf(&f).expect("tokenizer");
    let vocab = tokenizer_vocab();
    let id = |s: &str| vocab.iter().position(|t| t == s).expect(s) as u32;
    let ids = tok.encode("<|im_start|>the the 42", false).expect("encode");
    // "the" without a leading space has no merge to "the"; " the" does (Ġt + he);
    // digits are split one by one.
    let want = vec![
        id("<|im_start|>"),
        id("t"),
        id("he"),
        id("Ġthe"),
        id("Ġ"),
        id("4"),
        id("2"),
    ];
    assert_eq!(ids, want);
    assert_eq!(tok.decode(&ids), "<|im_start|>the the 42");
    // Multi-byte characters survive the byte-level round trip.
    let text = "naïve — 東京";
    assert_eq!(tok.decode(&tok.encode(text, false).expect("encode")), text);
    assert_eq!(tok.eos, Some(id("<|im_end|>")));
    assert!(tok.is_end(id("<|im_end|>")));
}

#[test]
fn sampler_is_greedy_seeded_and_filters() {
    let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 50) as f32 / 10.0).collect();
    let best = argmax(&logits);
    let mut greedy = Sampler::new(SamplerConfig {
        temperature: 0.0,
        ..Default::default()
    });
    assert_eq!(greedy.sample(&logits), best);
    let mut top1 = Sampler::new(SamplerConfig {
        temperature: 1.5,
        top_k: 1,
        top_p: 1.0,
        seed: 3,
    });
    assert!((0..20).all(|_| top1.sample(&logits) == best));
    let draw = |seed| {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed,
        });
        (0..64).map(|_| s.sample(&logits)).collect::<Vec<_>>()
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
    // top-k 3 never leaves the three best tokens.
    let mut order: Vec<u32> = (0..50).collect();
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    let mut k3 = Sampler::new(SamplerConfig {
        temperature: 5.0,
        top_k: 3,
        top_p: 1.0,
        seed: 1,
    });
    let seen: std::collections::HashSet<u32> = (0..200).map(|_| k3.sample(&logits)).collect();
    assert!(
        seen.iter().all(|t| order[..3].contains(t)) && seen.len() == 3,
        "{seen:?}"
    );
    // A tiny top-p keeps only the best token.
    let mut p = Sampler::new(SamplerConfig {
        temperature: 1.0,
        top_k: 0,
        top_p: 1e-6,
        seed: 1,
    });
    assert!((0..20).all(|_| p.sample(&logits) == best));
}
