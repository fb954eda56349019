//! Whole forward passes of tiny generated models with every weight product on the
//! GPU, against the same model on the CPU backend: prefill of five tokens (all
//! logits), then decode one token at a time. Without a CUDA device the tests
//! print why and pass, unless `QUERN_REQUIRE_CUDA=1`, when they fail.

mod common;

use quern_formats::testutil::TinyModel;
use quern_quant::pipeline::OutType;
use quern_runtime::cuda::CudaBackend;
use quern_runtime::{CpuBackend, Model};

fn cuda() -> Option<CudaBackend> {
    common::cuda_backend()
}

fn logits(model: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let vocab = model.config.vocab;
    let mut session = model.session(64);
    let pre = model
        .forward(&mut session, &tokens[..5], true)
        .expect("prefill");
    let mut out: Vec<Vec<f32>> = pre.chunks_exact(vocab).map(|c| c.to_vec()).collect();
    for &t in &tokens[5..] {
        out.push(model.forward(&mut session, &[t], false).expect("decode"));
    }
    out
}

fn check(m: TinyModel, outtype: OutType, tol: f64) {
    let Some(be) = cuda() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = common::tiny_gguf(&m, dir.path(), outtype);
    let tokens: Vec<u32> = vec![5, 77, 260, 3, 131, 19, 200, 42, 9, 64, 128];
    let gpu = Model::open(&path, Box::new(be)).expect("open on cuda");
    assert_eq!(gpu.backend().name(), "cuda");
    let cpu = Model::open(&path, Box::new(CpuBackend::new())).expect("open on cpu");
    let (g, c) = (logits(&gpu, &tokens), logits(&cpu, &tokens));
    assert_eq!(g.len(), c.len());
    for (pos, (g, c)) in g.iter().zip(&c).enumerate() {
        assert!(
            g.iter().all(|v| v.is_finite()),
            "position {pos}: non-finite logits"
        );
        let e = common::rel_err(g, c);
        assert!(
            e < tol,
            "{} {outtype:?} position {pos}: cuda vs cpu relative error {e}",
            m.architecture
        );
    }
}

#[test]
fn llama_f32_on_cuda_matches_cpu() {
    // Both backends multiply f32 weights by f32 activations: rounding only.
    check(TinyModel::llama(), OutType::F32, 1e-5);
}

#[test]
fn qwen2_bf16_and_f16_on_cuda_match_cpu() {
    check(TinyModel::qwen2(), OutType::Bf16, 1e-5);
    check(TinyModel::qwen3(), OutType::F16, 1e-5);
}

#[test]
fn llama_q8_0_on_cuda_is_close_to_cpu() {
    // The CPU quantises activations to 8 bits for Q8_0; the GPU does not.
    check(TinyModel::llama(), OutType::Q8_0, 3e-2);
}

/// `quern calibrate --device cuda`: the importance matrix with every weight
/// product on the GPU (the observer sees the host activations between them)
/// equals the CPU's to float rounding, entry for entry, counts exactly.
#[test]
fn calibration_on_cuda_matches_cpu() {
    use quern_runtime::calibrate::{self, CalibrateOptions};
    for (m, process_output) in [(TinyModel::llama(), true), (TinyModel::qwen2(), false)] {
        let Some(be) = cuda() else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = common::tiny_gguf(&m, dir.path(), OutType::F32);
        let gpu = Model::open(&path, Box::new(be)).expect("open on cuda");
        let cpu = Model::open(&path, Box::new(CpuBackend::new())).expect("open on cpu");
        let vocab = cpu.config.vocab as u64;
        let toks: Vec<u32> = (0..100u64)
            .map(|i| ((i * 2654435761 + 12345) % vocab) as u32)
            .collect();
        let opts = CalibrateOptions {
            ctx: 16,
            chunks: Some(3),
            process_output,
            dataset: "calib.txt".into(),
        };
        let run = |model: &Model| {
            calibrate::importance_matrix(model, &toks, None, &opts, &calibrate::NoProgress)
                .expect("calibrate")
                .imatrix
        };
        let (g, c) = (run(&gpu), run(&cpu));
        assert_eq!(g.entries.len(), c.entries.len());
        assert!(!c.entries.is_empty());
        for (ge, ce) in g.entries.iter().zip(&c.entries) {
            assert_eq!(ge.name, ce.name);
            assert_eq!(ge.counts, ce.counts, "{}: counts", ge.name);
            let e = common::rel_err(&ge.sums, &ce.sums);
            assert!(
                e < 1e-5,
                "{} {}: sums differ by {e}",
                m.architecture,
                ge.name
            );
        }
    }
}
