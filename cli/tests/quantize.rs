//! `quern quantize` end to end on tiny generated models: mixes, the one-pass
//! HF path against convert-then-quantize, importance matrices, and bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use quern_formats::gguf::GgufFile;
use quern_formats::imatrix::{Imatrix, ImatrixEntry};
use quern_formats::testutil::{write_safetensors, TinyModel};
use quern_formats::GgmlType;

fn quern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quern"))
        .args(args)
        .output()
        .expect("run quern")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Rows of 256 so every K-quant applies without fallbacks.
fn model() -> TinyModel {
    TinyModel {
        hidden: 256,
        intermediate: 512,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        ..TinyModel::llama()
    }
}

fn tiny(m: &TinyModel) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("tiny");
    m.write(&folder).unwrap();
    (dir, folder)
}

fn assert_fails(o: &Output, out: &Path, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure; stderr: {err}");
    assert!(
        err.contains(needle),
        "error should mention {needle:?}: {err}"
    );
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one-line error expected: {err}"
    );
    assert!(!out.exists(), "no output may be left after a failure");
    let dir = out.parent().unwrap();
    let tmp: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(tmp.is_empty(), "temporary files left behind");
}

fn rel_rms(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        num += (*x as f64 - *y as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    (num / den).sqrt()
}

#[test]
fn q4_k_m_from_a_folder_follows_the_mix_and_stays_close() {
    let m = model();
    let (dir, folder) = tiny(&m);
    let out = dir.path().join("q.gguf");
    let o = quern(&[
        "quantize",
        s(&folder),
        "-o",
        s(&out),
        "--type",
        "Q4_K_M",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["type"], "Q4_K_M");
    assert_eq!(report["file_type"], 15, "LLAMA_FTYPE_MOSTLY_Q4_K_M");

    let gguf = GgufFile::open(&out).unwrap();
    assert_eq!(
        gguf.get("general.file_type").and_then(|v| v.as_u64()),
        Some(15)
    );
    let types: Vec<GgmlType> = gguf.tensors().iter().map(|t| t.ggml_type).collect();
    assert!(types.contains(&GgmlType::Q4K), "{types:?}");
    assert!(
        types.contains(&GgmlType::Q6K),
        "the _M mix gives some tensors Q6_K: {types:?}"
    );
    for t in gguf.tensors().iter().filter(|t| t.shape.len() == 1) {
        assert_eq!(t.ggml_type, GgmlType::F32, "{}", t.name);
    }
    // Dequantised weights against the (bf16) source, tensor by tensor.
    let source = GgufFile::open(&{
        let f32_out = dir.path().join("f32.gguf");
        let o = quern(&[
            "convert",
            s(&folder),
            "-o",
            s(&f32_out),
            "--outtype",
            "f32",
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        f32_out
    })
    .unwrap();
    for t in gguf.tensors() {
        let src = source.tensor(&t.name).unwrap();
        let n = t.n_elements() as usize;
        let mut a = vec![0f32; n];
        let mut b = vec![0f32; n];
        quern_quant::dequantize_row(t.ggml_type, gguf.tensor_data(t), &mut a).unwrap();
        quern_quant::dequantize_row(src.ggml_type, source.tensor_data(src), &mut b).unwrap();
        let err = rel_rms(&a, &b);
        let bound = match t.ggml_type {
            GgmlType::F32 => 0.0,
            GgmlType::Q6K | GgmlType::Q8_0 => 0.03,
            _ => 0.12,
        };
        assert!(
            err <= bound,
            "{} ({}): relative RMS error {err}",
            t.name,
            t.ggml_type
        );
    }
}

#[test]
fn one_pass_from_a_folder_equals_convert_then_quantize() {
    let (dir, folder) = tiny(&model());
    let f32_gguf = dir.path().join("f32.gguf");
    assert!(quern(&[
        "convert",
        s(&folder),
        "-o",
        s(&f32_gguf),
        "--outtype",
        "f32",
        "--quiet"
    ])
    .status
    .success());
    for ty in ["Q8_0", "Q4_K_M", "IQ4_XS"] {
        let a = dir.path().join(format!("a-{ty}.gguf"));
        let b = dir.path().join(format!("b-{ty}.gguf"));
        let o = quern(&["quantize", s(&folder), "-o", s(&a), "--type", ty, "--quiet"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = quern(&[
            "quantize",
            s(&f32_gguf),
            "-o",
            s(&b),
            "--type",
            ty,
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let (ga, gb) = (GgufFile::open(&a).unwrap(), GgufFile::open(&b).unwrap());
        assert_eq!(ga.tensors().len(), gb.tensors().len());
        for (x, y) in ga.tensors().iter().zip(gb.tensors()) {
            assert_eq!(x.name, y.name);
            assert_eq!(x.ggml_type, y.ggml_type, "{ty} {}", x.name);
            assert!(
                ga.tensor_data(x) == gb.tensor_data(y),
                "{ty} {}: bytes differ",
                x.name
            );
        }
    }
}

#[test]
fn unknown_type_lists_the_valid_ones() {
    let (dir, folder) = tiny(&model());
    let out = dir.path().join("q.gguf");
    let o = quern(&["quantize", s(&folder), "-o", s(&out), "--type", "Q4_K_Z"]);
    assert!(!o.status.success());
    for t in ["Q4_K_M", "Q8_0", "IQ4_XS", "Q3_K_L"] {
        assert!(stderr(&o).contains(t), "should list {t}: {}", stderr(&o));
    }
    assert!(!out.exists());
}

#[test]
fn requantizing_needs_the_flag() {
    let (dir, folder) = tiny(&model());
    let q8 = dir.path().join("q8.gguf");
    assert!(quern(&[
        "quantize",
        s(&folder),
        "-o",
        s(&q8),
        "--type",
        "Q8_0",
        "--quiet"
    ])
    .status
    .success());
    let out = dir.path().join("q4.gguf");
    let o = quern(&["quantize", s(&q8), "-o", s(&out), "--type", "Q4_K_M"]);
    assert_fails(&o, &out, "--allow-requantize");
    let o = quern(&[
        "quantize",
        s(&q8),
        "-o",
        s(&out),
        "--type",
        "Q4_K_M",
        "--allow-requantize",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.exists());
}

fn imatrix_for(m: &TinyModel, extra: Option<(&str, usize)>) -> Imatrix {
    let mut entries = Vec::new();
    for l in 0..m.layers {
        for (name, cols) in [
            ("attn_q", m.hidden),
            ("attn_k", m.hidden),
            ("attn_v", m.hidden),
            ("attn_output", m.heads * m.head_dim),
            ("ffn_gate", m.hidden),
            ("ffn_up", m.hidden),
            ("ffn_down", m.intermediate),
        ] {
            entries.push(ImatrixEntry {
                name: format!("blk.{l}.{name}.weight"),
                // Strongly uneven importance, so it must change the result.
                sums: (0..cols).map(|c| 1.0 + (c % 7) as f32 * 50.0).collect(),
                counts: vec![10.0],
            });
        }
    }
    if let Some((name, cols)) = extra {
        entries.push(ImatrixEntry {
            name: name.to_string(),
            sums: vec![1.0; cols],
            counts: vec![1.0],
        });
    }
    Imatrix {
        entries,
        datasets: vec!["test".into()],
        chunk_count: 1,
        chunk_size: 512,
    }
}

#[test]
fn an_imatrix_changes_the_k_quants() {
    let m = model();
    let (dir, folder) = tiny(&m);
    let im = dir.path().join("im.gguf");
    imatrix_for(&m, None).write_gguf(&im).unwrap();
    let plain = dir.path().join("plain.gguf");
    let weighted = dir.path().join("weighted.gguf");
    assert!(quern(&[
        "quantize",
        s(&folder),
        "-o",
        s(&plain),
        "--type",
        "Q4_K_M",
        "--quiet"
    ])
    .status
    .success());
    let o = quern(&[
        "quantize",
        s(&folder),
        "-o",
        s(&weighted),
        "--type",
        "Q4_K_M",
        "--imatrix",
        s(&im),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["imatrix_tensors"], 7 * m.layers as u64);
    let (a, b) = (
        GgufFile::open(&plain).unwrap(),
        GgufFile::open(&weighted).unwrap(),
    );
    let t = a.tensor("blk.0.ffn_up.weight").unwrap();
    let u = b.tensor("blk.0.ffn_up.weight").unwrap();
    assert_ne!(a.tensor_data(t), b.tensor_data(u), "imatrix had no effect");
}

#[test]
fn an_imatrix_naming_a_missing_tensor_is_refused() {
    let m = model();
    let (dir, folder) = tiny(&m);
    let im = dir.path().join("im.gguf");
    imatrix_for(&m, Some(("blk.9.attn_q.weight", m.hidden)))
        .write_gguf(&im)
        .unwrap();
    let out = dir.path().join("q.gguf");
    let o = quern(&[
        "quantize",
        s(&folder),
        "-o",
        s(&out),
        "--type",
        "Q4_K_M",
        "--imatrix",
        s(&im),
    ]);
    assert_fails(&o, &out, "blk.9.attn_q.weight");
}

#[test]
fn an_imatrix_of_the_wrong_length_is_refused() {
    let m = model();
    let (dir, folder) = tiny(&m);
    let mut imatrix = imatrix_for(&m, None);
    imatrix.entries[0].sums.truncate(100);
    let im = dir.path().join("im.gguf");
    imatrix.write_gguf(&im).unwrap();
    let out = dir.path().join("q.gguf");
    let o = quern(&[
        "quantize",
        s(&folder),
        "-o",
        s(&out),
        "--type",
        "Q4_K_M",
        "--imatrix",
        s(&im),
    ]);
    assert_fails(&o, &out, &imatrix.entries[0].name);
}

#[test]
fn nan_in_weights_names_the_tensor() {
    let m = model();
    let (dir, folder) = tiny(&m);
    let mut weights = m.weights();
    let victim = weights
        .iter_mut()
        .find(|w| w.0 == "model.layers.1.mlp.up_proj.weight")
        .unwrap();
    victim.2[300] = f32::NAN;
    write_safetensors(&folder.join("model.safetensors"), &weights, m.dtype).unwrap();
    let out = dir.path().join("q.gguf");
    let o = quern(&["quantize", s(&folder), "-o", s(&out), "--type", "Q4_K_M"]);
    assert_fails(&o, &out, "blk.1.ffn_up.weight");
}

/// The provenance of a quantised file names the input and the output by their
/// sha256: the output's is computed while writing, the input's comes from the
/// digest cache on a second run, and a changed input is hashed again.
#[test]
fn provenance_digests_are_the_files_and_the_cache_tracks_changes() {
    use sha2::{Digest, Sha256};
    let (dir, folder) = tiny(&model());
    let cache = dir.path().join("digests");
    let hex = |p: &Path| format!("{:x}", Sha256::digest(std::fs::read(p).unwrap()));
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_quern"))
            .args(args)
            .env("QUERN_DIGEST_CACHE", &cache)
            .output()
            .expect("run quern");
        assert!(o.status.success(), "{}", stderr(&o));
    };
    let f32 = dir.path().join("f32.gguf");
    run(&[
        "convert",
        s(&folder),
        "-o",
        s(&f32),
        "--outtype",
        "f32",
        "--quiet",
    ]);
    // convert recorded its output's digest (computed while writing).
    assert!(std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0) > 0);
    let check = |out: &Path| {
        let side = PathBuf::from(format!("{}.provenance.json", out.display()));
        let p: serde_json::Value = serde_json::from_slice(&std::fs::read(side).unwrap()).unwrap();
        assert_eq!(p["subject"][0]["digest"]["sha256"], hex(out).as_str());
        let deps = p["predicate"]["buildDefinition"]["resolvedDependencies"]
            .as_array()
            .unwrap();
        let input = deps
            .iter()
            .find(|d| d["name"] == "f32.gguf")
            .expect("input listed");
        assert_eq!(input["digest"]["sha256"], hex(&f32).as_str());
    };
    for (i, ty) in ["Q8_0", "Q4_0"].iter().enumerate() {
        let out = dir.path().join(format!("q{i}.gguf"));
        run(&["quantize", s(&f32), "-o", s(&out), "--type", ty, "--quiet"]);
        check(&out);
    }
    // Rewrite the input (same size, different bytes): the cached digest must not be used.
    // (The lowest mantissa byte of the last value: still a finite weight.)
    let mut bytes = std::fs::read(&f32).unwrap();
    let at = bytes.len() - 4;
    bytes[at] ^= 0x01;
    std::fs::write(&f32, &bytes).unwrap();
    let out = dir.path().join("after-change.gguf");
    run(&[
        "quantize",
        s(&f32),
        "-o",
        s(&out),
        "--type",
        "Q8_0",
        "--quiet",
    ]);
    check(&out);
}
