//! AWQ: folding scales into norms and preceding linears leaves the float
//! model's outputs unchanged (before any rounding), through the GGUF writer
//! that `quern quantize --awq` uses; and the calibration pass + search runs end
//! to end on a tiny model, its scales folded the same way.

use std::path::Path;

use quern_formats::testutil::{SplitMix, TinyModel};
use quern_quant::awq::fold::Folds;
use quern_quant::awq::FakeQuant;
use quern_quant::mix::Mix;
use quern_quant::pipeline::{quantize_folded, NoProgress, QuantizeOptions};
use quern_quant::GgmlType;
use quern_runtime::awq::{calibrate_awq, calibration_tokens, AwqCalibOptions, Target};
use quern_runtime::{CpuBackend, Model};

fn open(path: &Path) -> Model {
    Model::open(path, Box::new(CpuBackend::new())).expect("open model")
}

fn logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut s = model.session(64);
    model.forward(&mut s, tokens, true).expect("forward")
}

/// F32 GGUF of `folder` with `folds` applied (exact float weights).
fn f32_gguf(folder: &Path, out: &Path, folds: Option<&Folds>) {
    let options = QuantizeOptions {
        mix: Mix::parse("F32").expect("F32 mix"),
        allow_requantize: false,
        model_name: None,
    };
    quantize_folded(folder, out, &options, None, folds, &NoProgress).expect("quantize");
}

fn random_scales(rng: &mut SplitMix, n: usize) -> Vec<f32> {
    // Spread over [1/8, 8]: far from 1, so a missed fold shows.
    (0..n)
        .map(|_| 2f32.powf(rng.uniform() * 6.0 - 3.0))
        .collect()
}

/// Every group AWQ folds, with random scales.
fn all_folds(m: &TinyModel, rng: &mut SplitMix) -> Folds {
    let mut f = Folds::default();
    let bias = m.architecture == "Qwen2ForCausalLM";
    for l in 0..m.layers {
        let n = |s: &str| format!("blk.{l}.{s}");
        let s = random_scales(rng, m.hidden);
        f.add_scale(
            &s,
            &[
                &n("attn_q.weight"),
                &n("attn_k.weight"),
                &n("attn_v.weight"),
            ],
            &[&n("attn_norm.weight")],
        );
        if m.kv_heads == m.heads {
            let s = random_scales(rng, m.heads * m.head_dim);
            let mut producers = vec![n("attn_v.weight")];
            if bias {
                producers.push(n("attn_v.bias"));
            }
            let p: Vec<&str> = producers.iter().map(String::as_str).collect();
            f.add_scale(&s, &[&n("attn_output.weight")], &p);
        }
        let s = random_scales(rng, m.hidden);
        f.add_scale(
            &s,
            &[&n("ffn_gate.weight"), &n("ffn_up.weight")],
            &[&n("ffn_norm.weight")],
        );
        let s = random_scales(rng, m.intermediate);
        f.add_scale(&s, &[&n("ffn_down.weight")], &[&n("ffn_up.weight")]);
    }
    f
}

fn models() -> Vec<TinyModel> {
    let f32 = |m: TinyModel| TinyModel { dtype: "f32", ..m };
    vec![
        // Grouped-query attention (4 heads, 2 KV heads): o is not folded into v.
        f32(TinyModel::llama()),
        // Full attention: o folded into v.
        f32(TinyModel {
            kv_heads: 4,
            seed: 11,
            ..TinyModel::llama()
        }),
        // Biases on q/k/v: v's bias must be divided too.
        f32(TinyModel {
            kv_heads: 4,
            ..TinyModel::qwen2()
        }),
        f32(TinyModel::qwen2()),
        f32(TinyModel::qwen3()),
    ]
}

#[test]
fn folding_scales_leaves_the_float_outputs_unchanged() {
    let tokens: Vec<u32> = (0..24).map(|i| (i * 7 + 3) % 200).collect();
    for (k, m) in models().into_iter().enumerate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hf = dir.path().join("hf");
        m.write(&hf).expect("write model");
        let mut rng = SplitMix(100 + k as u64);
        let folds = all_folds(&m, &mut rng);
        let (plain, folded) = (
            dir.path().join("plain.gguf"),
            dir.path().join("folded.gguf"),
        );
        f32_gguf(&hf, &plain, None);
        f32_gguf(&hf, &folded, Some(&folds));
        let a = logits(&open(&plain), &tokens);
        let b = logits(&open(&folded), &tokens);
        let scale = a.iter().fold(0f32, |s, v| s.max(v.abs()));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-4 * scale.max(1.0),
            "{} (kv {}): logits differ by {worst} (scale {scale})",
            m.architecture,
            m.kv_heads
        );
        // The folds really changed the weights (the check is not vacuous).
        let (wa, _) = open(&plain).matrix_f32("blk.0.ffn_down.weight").expect("w");
        let (wb, _) = open(&folded)
            .matrix_f32("blk.0.ffn_down.weight")
            .expect("w");
        assert!(wa
            .iter()
            .zip(&wb)
            .any(|(x, y)| (x - y).abs() > 1e-3 * x.abs().max(1e-3)));
    }
}

#[test]
fn calibration_search_runs_and_its_folds_keep_the_float_outputs() {
    let m = TinyModel {
        dtype: "f32",
        kv_heads: 4,
        ..TinyModel::llama()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let hf = dir.path().join("hf");
    m.write(&hf).expect("write model");
    let model = open(&hf);
    let text = "the quick brown fox jumps over the lazy dog. ".repeat(40);
    let samples = calibration_tokens(&model, &text, 4, 32).expect("tokens");
    assert_eq!(samples.len(), 4);
    assert!(matches!(
        calibration_tokens(&model, "too short", 4, 32),
        Err(quern_runtime::RuntimeError::CalibrationTooShort { .. })
    ));
    let opts = AwqCalibOptions {
        samples: 4,
        seq_len: 32,
        loss_tokens: 64,
        clip: false,
        ..Default::default()
    };
    for fq in [
        FakeQuant::Awq4 { group: 32 },
        FakeQuant::Ggml(GgmlType::Q4_0),
    ] {
        let target = |_: &str| Target {
            fake_quant: fq,
            importance: None,
        };
        let r = calibrate_awq(&model, &samples, &opts, &target, &|_, _, _| {}).expect("search");
        // qkv, o (no GQA here), gate/up, down in each of the 2 blocks.
        assert_eq!(r.groups.len(), 4 * m.layers);
        assert_eq!(r.tokens, 128);
        for g in &r.groups {
            assert!(g.loss <= g.loss_unscaled, "{g:?}");
        }
        let (plain, folded) = (dir.path().join("p.gguf"), dir.path().join("f.gguf"));
        f32_gguf(&hf, &plain, None);
        f32_gguf(&hf, &folded, Some(&r.folds));
        let a = logits(&open(&plain), &samples[0]);
        let b = logits(&open(&folded), &samples[0]);
        let scale = a.iter().fold(0f32, |s, v| s.max(v.abs()));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-4 * scale.max(1.0), "{fq:?}: {worst}");
    }
}
