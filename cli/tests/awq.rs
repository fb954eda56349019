//! `quern quantize --format awq`: our files read back by our reader and by an
//! independent numpy reader written here from the published AutoAWQ GEMM layout
//! (eight 4-bit values per int32 in the order 0,2,4,6,1,3,5,7; w = (q - z) * s).

use std::path::{Path, PathBuf};
use std::process::Command;

use half::f16;
use quern_formats::awq::{dequantize_linear, AwqTensors};
use quern_formats::safetensors::SafetensorsModel;
use quern_formats::testutil::TinyModel;

fn quern(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_quern"))
        .args(args)
        .output()
        .unwrap()
}

fn model() -> TinyModel {
    TinyModel {
        hidden: 128,
        intermediate: 256,
        heads: 4,
        kv_heads: 2,
        head_dim: 32,
        ..TinyModel::llama()
    }
}

/// The test interpreter, or None (skip) unless QUERN_REQUIRE_PYTHON=1.
fn python(modules: &str) -> Option<PathBuf> {
    let py = std::env::var_os("QUERN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    let ok = Command::new(&py)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(py);
    }
    if std::env::var("QUERN_REQUIRE_PYTHON").is_ok_and(|v| v == "1") {
        panic!(
            "QUERN_REQUIRE_PYTHON=1 but {} cannot import {modules}",
            py.display()
        );
    }
    eprintln!("notice: skipping: {} cannot import {modules}", py.display());
    None
}

fn i32s(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn ours(folder: &Path, prefix: &str, group: usize) -> Vec<f32> {
    let m = SafetensorsModel::open(&folder.join("model.safetensors")).unwrap();
    let qw = m.get(&format!("{prefix}.qweight")).unwrap();
    let (inf, out8) = (qw.shape[0] as usize, qw.shape[1] as usize);
    let t = AwqTensors {
        qweight: i32s(m.data(qw)),
        qzeros: i32s(m.data(m.get(&format!("{prefix}.qzeros")).unwrap())),
        scales: m
            .data(m.get(&format!("{prefix}.scales")).unwrap())
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]))
            .collect(),
        in_features: inf,
        out_features: out8 * 8,
        group,
    };
    dequantize_linear(&t).unwrap()
}

const NUMPY_READER: &str = r#"
import json, sys
import numpy as np
from safetensors.numpy import load_file
folder, prefix, out = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = json.load(open(folder + "/config.json"))
q = cfg["quantization_config"]
assert q["quant_method"] == "awq" and q["bits"] == 4 and q["version"] == "gemm" and q["zero_point"]
g = q["group_size"]
t = load_file(folder + "/model.safetensors")
qw, qz, sc = t[prefix + ".qweight"], t[prefix + ".qzeros"], t[prefix + ".scales"]
assert qw.dtype == np.int32 and qz.dtype == np.int32 and sc.dtype == np.float16
order = [0, 2, 4, 6, 1, 3, 5, 7]
def unpack(a):
    u = a.view(np.uint32)
    cols = np.empty((a.shape[0], a.shape[1] * 8), dtype=np.int64)
    for slot, col in enumerate(order):
        cols[:, col::8] = (u >> (4 * slot)) & 0xF
    return cols
iw, iz = unpack(qw), unpack(qz)            # [in, out], [in/g, out]
groups = np.arange(iw.shape[0]) // g
w = (iw - iz[groups]).astype(np.float32) * sc[groups].astype(np.float32)
np.ascontiguousarray(w.T).astype("<f4").tofile(out)   # [out, in], HF orientation
from transformers import AutoConfig
c = AutoConfig.from_pretrained(folder)
assert c.quantization_config["quant_method"] == "awq", c.quantization_config
"#;

#[test]
fn numpy_reader_and_ours_agree_bit_for_bit() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("hf");
    m.write(&src).unwrap();
    let out = dir.path().join("awq");
    let o = quern(&[
        "quantize",
        src.to_str().unwrap(),
        "--format",
        "awq",
        "--group-size",
        "64",
        "-o",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let weights = m.weights();
    for prefix in [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
        "model.layers.1.self_attn.k_proj",
    ] {
        let mine = ours(&out, prefix, 64);
        // Against the source: 4-bit RTN of bf16 weights in [-0.05, 0.05].
        let src = &weights
            .iter()
            .find(|w| w.0 == format!("{prefix}.weight"))
            .unwrap()
            .2;
        let worst = mine
            .iter()
            .zip(src)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 0.1 / 15.0 * 0.5 + 2e-3,
            "{prefix}: max error {worst}"
        );
        let Some(py) = python("numpy, safetensors, transformers") else {
            continue;
        };
        let raw = dir.path().join("np.f32");
        let o = Command::new(&py)
            .args([
                "-c",
                NUMPY_READER,
                out.to_str().unwrap(),
                prefix,
                raw.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let theirs: Vec<f32> = std::fs::read(&raw)
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(theirs.len(), mine.len());
        for (i, (a, b)) in mine.iter().zip(&theirs).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{prefix}[{i}]: ours {a} numpy {b}"
            );
        }
    }
}

/// The activation-aware output (`--calib`) keeps the layout: the numpy reader
/// reads it bit for bit too, and the search reports what it did.
#[test]
fn calibrated_awq_is_read_by_numpy_bit_for_bit() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("hf");
    m.write(&src).unwrap();
    let calib = dir.path().join("calib.txt");
    std::fs::write(
        &calib,
        "the quick brown fox jumps over the lazy dog. ".repeat(40),
    )
    .unwrap();
    let out = dir.path().join("awq");
    let report = dir.path().join("search.json");
    let args = |samples: &str| {
        vec![
            "quantize".to_string(),
            src.to_str().unwrap().into(),
            "--format".into(),
            "awq".into(),
            "--group-size".into(),
            "64".into(),
            "--calib".into(),
            calib.to_str().unwrap().into(),
            "--samples".into(),
            samples.into(),
            "--seq-len".into(),
            "32".into(),
            "-o".into(),
            out.to_str().unwrap().into(),
            "--awq-report".into(),
            report.to_str().unwrap().into(),
            "--quiet".into(),
        ]
    };
    // Too short a text: a clear error, nothing written.
    let a = args("100000");
    let o = quern(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("calibration text too short"), "{err}");
    assert!(!out.exists());

    let a = args("4");
    let o = quern(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["calibration_tokens"], 128);
    // qkv, gate/up and down per block (GQA: o is not folded into v).
    assert_eq!(r["groups"].as_array().unwrap().len(), 3 * m.layers);
    let Some(py) = python("numpy, safetensors, transformers") else {
        return;
    };
    for prefix in [
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.mlp.up_proj",
    ] {
        let mine = ours(&out, prefix, 64);
        let raw = dir.path().join("np.f32");
        let o = Command::new(&py)
            .args([
                "-c",
                NUMPY_READER,
                out.to_str().unwrap(),
                prefix,
                raw.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let theirs: Vec<f32> = std::fs::read(&raw)
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(theirs.len(), mine.len());
        assert!(
            mine.iter()
                .zip(&theirs)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{prefix}"
        );
    }
}

#[test]
fn awq_refuses_a_gguf_input_and_bad_groups() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("hf");
    m.write(&src).unwrap();
    let out = dir.path().join("awq");
    let o = quern(&[
        "quantize",
        src.to_str().unwrap(),
        "--format",
        "awq",
        "--group-size",
        "96",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("group size 96"), "{err}");
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "only the input folder may remain: {leftovers:?}"
    );

    let gguf = dir.path().join("m.gguf");
    assert!(quern(&[
        "convert",
        src.to_str().unwrap(),
        "-o",
        gguf.to_str().unwrap(),
        "--quiet"
    ])
    .status
    .success());
    let o = quern(&[
        "quantize",
        gguf.to_str().unwrap(),
        "--format",
        "awq",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("Hugging Face folder"));
    assert!(!out.exists());
}
