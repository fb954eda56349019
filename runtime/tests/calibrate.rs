//! `quern calibrate`'s importance matrix: which tensors it covers (exactly the
//! ones the quantiser weights), what it sums (checked against a direct
//! computation), its files (round trips through both forms), and agreement with
//! a committed `llama-imatrix` output on the real reference model.

mod common;

use std::collections::BTreeSet;

use quern_formats::imatrix::Imatrix;
use quern_formats::testutil::TinyModel;
use quern_quant::mix::Mix;
use quern_quant::pipeline::{quantize, NoProgress, OutType, QuantizeOptions};
use quern_runtime::calibrate::{self, CalibrateError, CalibrateOptions, Calibration};
use quern_runtime::{CpuBackend, Model};

use common::tiny_gguf;

/// Pseudo-random token ids below `vocab`.
fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n as u64)
        .map(|i| ((i * 2654435761 + 12345) % vocab as u64) as u32)
        .collect()
}

fn opts(ctx: usize, chunks: usize, process_output: bool) -> CalibrateOptions {
    CalibrateOptions {
        ctx,
        chunks: Some(chunks),
        process_output,
        dataset: "calib.txt".into(),
    }
}

fn run(model: &Model, toks: &[u32], o: &CalibrateOptions) -> Calibration {
    calibrate::importance_matrix(model, toks, None, o, &calibrate::NoProgress).expect("calibrate")
}

/// The tensors `quern quantize --imatrix` quantises and weights, against the
/// tensors the calibration observed: the same set, but for the looked-up token
/// embeddings (and the output projection when it is not collected), which
/// llama-imatrix leaves out too.
#[test]
fn observers_see_exactly_the_tensors_quantised() {
    for (m, process_output) in [
        (TinyModel::llama(), false),
        (TinyModel::llama(), true),
        (TinyModel::qwen2(), false),
        (TinyModel::qwen2(), true),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let gguf = tiny_gguf(&m, dir.path(), OutType::F32);
        let model = Model::open(&gguf, Box::new(CpuBackend::new())).expect("open");
        let toks = tokens(100, model.config.vocab);
        let cal = run(&model, &toks, &opts(16, 3, process_output));
        assert_eq!(cal.output_collected, process_output && !m.tied);
        let observed: BTreeSet<String> =
            cal.imatrix.entries.iter().map(|e| e.name.clone()).collect();

        let im_path = dir.path().join("calib.imatrix.gguf");
        cal.imatrix.write_gguf(&im_path).expect("write");
        let im = Imatrix::read(&im_path).expect("read");
        let report = quantize(
            &gguf,
            &dir.path().join("q.gguf"),
            &QuantizeOptions {
                mix: Mix::parse("Q4_0").expect("mix"),
                allow_requantize: false,
                model_name: None,
            },
            Some(&im),
            &NoProgress,
        )
        .expect("our quantiser takes our imatrix");
        let quantised: BTreeSet<String> = report
            .tensors
            .iter()
            .filter(|t| t.out_type.is_quantized())
            .map(|t| t.gguf_name.clone())
            .collect();
        let left_out: BTreeSet<String> = quantised.difference(&observed).cloned().collect();
        let mut want_left_out = BTreeSet::from(["token_embd.weight".to_string()]);
        if !cal.output_collected && !m.tied {
            want_left_out.insert("output.weight".into());
        }
        assert_eq!(
            left_out, want_left_out,
            "{} {process_output}",
            m.architecture
        );
        assert!(
            observed.is_subset(&quantised),
            "observed only quantised tensors"
        );
        assert_eq!(report.weighted_tensors, observed.len());
        // The runtime's own list of the matrices it multiplies by is the same set.
        let matrices: BTreeSet<String> = model
            .matrices()
            .into_iter()
            .map(|(n, _)| n.to_string())
            .filter(|n| calibrate::imatrix::collects(n, process_output))
            .collect();
        assert_eq!(matrices, observed);
    }
}

/// Layer 0's q/k/v input is the rms-normed embedding rows times the norm's
/// weights: its sums of squares computed here from the file, in f64, against the
/// collector's; every matrix saw every token of every chunk.
#[test]
fn sums_are_the_squared_inputs() {
    let m = TinyModel::llama();
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(&m, dir.path(), OutType::F32);
    let model = Model::open(&gguf, Box::new(CpuBackend::new())).expect("open");
    let (ctx, chunks) = (24, 3);
    let toks = tokens(ctx * chunks + 7, model.config.vocab);
    let cal = run(&model, &toks, &opts(ctx, chunks, false));
    assert_eq!(cal.imatrix.chunk_count, chunks as u64);
    assert_eq!(cal.imatrix.chunk_size, ctx as u64);
    assert_eq!(cal.imatrix.datasets, vec!["calib.txt".to_string()]);
    assert_eq!(cal.imatrix.entries.len(), 7 * m.layers);
    for e in &cal.imatrix.entries {
        assert_eq!(e.counts, vec![(ctx * chunks) as f32], "{}", e.name);
    }

    let file = quern_formats::gguf::GgufFile::open(&gguf).expect("gguf");
    let f32s = |name: &str| -> Vec<f64> {
        let t = file.tensor(name).expect(name);
        file.tensor_data(t)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect()
    };
    let embd = f32s("token_embd.weight");
    let norm = f32s("blk.0.attn_norm.weight");
    let d = m.hidden;
    let eps = model.config.rms_eps as f64;
    let mut want = vec![0f64; d];
    for &id in &toks[..ctx * chunks] {
        let row = &embd[id as usize * d..][..d];
        let rms = (row.iter().map(|v| v * v).sum::<f64>() / d as f64 + eps).sqrt();
        for j in 0..d {
            want[j] += (row[j] / rms * norm[j]).powi(2);
        }
    }
    for name in ["attn_q", "attn_k", "attn_v"] {
        let e = cal
            .imatrix
            .get(&format!("blk.0.{name}.weight"))
            .expect("entry");
        for (j, (&got, &w)) in e.sums.iter().zip(&want).enumerate() {
            assert!(
                (got as f64 - w).abs() <= 1e-5 * w,
                "{name} column {j}: {got} vs {w}"
            );
        }
    }
}

#[test]
fn imatrix_files_round_trip() {
    let m = TinyModel::qwen2();
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(&m, dir.path(), OutType::F32);
    let model = Model::open(&gguf, Box::new(CpuBackend::new())).expect("open");
    let toks = tokens(80, model.config.vocab);
    let im = run(&model, &toks, &opts(16, 4, true)).imatrix;

    let g = dir.path().join("a.imatrix.gguf");
    im.write_gguf(&g).expect("write gguf");
    assert_eq!(
        Imatrix::read(&g).expect("read gguf"),
        im,
        "GGUF: exactly equal"
    );

    // The legacy form stores means × calls and assumes 512-token chunks: the
    // importance (the mean square) survives, to f32 rounding.
    let l = dir.path().join("a.imatrix.dat");
    im.write_legacy(&l).expect("write dat");
    let back = Imatrix::read(&l).expect("read dat");
    assert_eq!(back.chunk_count, im.chunk_count);
    assert_eq!(back.datasets, im.datasets);
    let names = |m: &Imatrix| m.entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&back), names(&im));
    for (a, b) in im.entries.iter().zip(&back.entries) {
        for (x, y) in a.importance().iter().zip(&b.importance()) {
            assert!(
                (x - y).abs() <= 1e-6 * x.abs().max(1e-30),
                "{}: {x} vs {y}",
                a.name
            );
        }
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let m = TinyModel::llama();
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(&m, dir.path(), OutType::Q8_0);
    let model = Model::open(&gguf, Box::new(CpuBackend::new())).expect("open");
    let toks = tokens(64, model.config.vocab);
    let err = calibrate::importance_matrix(
        &model,
        &toks,
        None,
        &opts(16, 2, false),
        &calibrate::NoProgress,
    )
    .expect_err("quantised model");
    assert!(matches!(err, CalibrateError::NotFloat { .. }), "{err}");
    assert!(err.to_string().contains("Q8_0"), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = tiny_gguf(&m, dir.path(), OutType::F32);
    let model = Model::open(&gguf, Box::new(CpuBackend::new())).expect("open");
    let short = calibrate::importance_matrix(
        &model,
        &toks[..20],
        None,
        &opts(32, 2, false),
        &calibrate::NoProgress,
    )
    .expect_err("text shorter than a chunk");
    assert!(
        short.to_string().contains("fewer than one chunk"),
        "{short}"
    );
    let small = calibrate::importance_matrix(
        &model,
        &toks,
        None,
        &opts(8, 2, false),
        &calibrate::NoProgress,
    )
    .expect_err("ctx too small");
    assert!(matches!(small, CalibrateError::ContextTooSmall { ctx: 8 }));
}

/// Per tensor, ‖a − b‖ / ‖b‖ of the mean squared activations.
fn rel_diffs(ours: &Imatrix, theirs: &Imatrix) -> Vec<(String, f64)> {
    let names = |m: &Imatrix| m.entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(ours), names(theirs), "the same tensors");
    ours.entries
        .iter()
        .zip(&theirs.entries)
        .map(|(a, b)| {
            let (x, y) = (a.importance(), b.importance());
            let num: f64 = x
                .iter()
                .zip(&y)
                .map(|(p, q)| (*p as f64 - *q as f64).powi(2))
                .sum();
            let den: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum();
            (a.name.clone(), (num / den).sqrt())
        })
        .collect()
}

/// `llama-imatrix` on the F32 reference model, 4 chunks of 128 tokens of Tiny
/// Shakespeare (testdata/fixtures/llama-imatrix/make.sh), against ours on the
/// bf16 folder itself: within 1% per tensor.
#[test]
fn agrees_with_llama_imatrix_fixture() {
    let Some(folder) = common::reference_folder() else {
        return;
    };
    let root = common::workspace_root();
    let text = root.join("../shared/data/tinyshakespeare/input.txt");
    if !text.is_file() {
        eprintln!("notice: skipping: {} is missing", text.display());
        return;
    }
    let fixture = root.join("testdata/fixtures/llama-imatrix/smollm2-c128x4.imatrix.gguf");
    let theirs = Imatrix::read(&fixture).expect("fixture");
    assert_eq!((theirs.chunk_count, theirs.chunk_size), (4, 128));

    let model = Model::open(&folder, Box::new(CpuBackend::new())).expect("open");
    let (toks, bos) = calibrate::tokenize(&folder, &text).expect("tokenize");
    let o = opts(128, 4, false);
    let ours = calibrate::importance_matrix(&model, &toks, bos, &o, &calibrate::NoProgress)
        .expect("calibrate")
        .imatrix;
    assert_eq!(ours.chunk_count, theirs.chunk_count);
    let mut diffs = rel_diffs(&ours, &theirs);
    diffs.sort_by(|a, b| b.1.total_cmp(&a.1));
    eprintln!(
        "worst {:?}, median {:.2e}",
        &diffs[..3],
        diffs[diffs.len() / 2].1
    );
    assert!(diffs[0].1 <= 0.01, "worst tensor {:?}", diffs[0]);
}
