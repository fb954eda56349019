//! safetensors: single files, shards with an index, folders of files, and every
//! malformed-header case the reader must reject with an error naming file and tensor.

use std::path::Path;

#[path = "../src/test_python.rs"]
mod test_python;

use quern_formats::safetensors::{Dtype, SafetensorsError, SafetensorsModel};
use serde_json::json;

/// Deterministic non-zero bytes.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed) | 1)
        .collect()
}

/// Writes a safetensors file from a header value and a data section, verbatim.
fn write_raw(path: &Path, header: &serde_json::Value, data: &[u8]) {
    let h = serde_json::to_vec(header).unwrap();
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend(h);
    b.extend(data);
    std::fs::write(path, b).unwrap();
}

/// A valid file with the given (name, dtype, shape) tensors laid out in order; returns each tensor's bytes.
fn write_file(path: &Path, tensors: &[(&str, &str, Vec<u64>)], seed: u8) -> Vec<Vec<u8>> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut data = Vec::new();
    let mut datas = Vec::new();
    for (i, (name, dtype, shape)) in tensors.iter().enumerate() {
        let size = Dtype::from_name(dtype).unwrap().size_in_bytes();
        let n = shape.iter().product::<u64>() as usize * size;
        let bytes = pattern(n, seed.wrapping_add(i as u8));
        header.insert(
            name.to_string(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + n]}),
        );
        data.extend(&bytes);
        datas.push(bytes);
    }
    write_raw(path, &serde_json::Value::Object(header), &data);
    datas
}

fn err_of(path: &Path) -> SafetensorsError {
    match SafetensorsModel::open(path) {
        Ok(_) => panic!("{} was accepted", path.display()),
        Err(e) => e,
    }
}

#[test]
fn single_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let spec = [
        ("model.norm.weight", "BF16", vec![16]),
        ("lm_head.weight", "F32", vec![4, 16]),
        ("a.f16", "F16", vec![2, 3, 5]),
        ("scalar", "I64", vec![]),
        ("empty", "F32", vec![0, 3]),
    ];
    let datas = write_file(&path, &spec, 3);
    let m = SafetensorsModel::open(&path).unwrap();
    assert_eq!(m.files(), std::slice::from_ref(&path));
    let names: Vec<&str> = m.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "a.f16",
            "empty",
            "lm_head.weight",
            "model.norm.weight",
            "scalar"
        ],
        "sorted by name"
    );
    for ((name, dtype, shape), data) in spec.iter().zip(&datas) {
        let t = m.get(name).unwrap();
        assert_eq!(t.dtype.to_string(), *dtype);
        assert_eq!(&t.shape, shape);
        assert_eq!(m.data(t), &data[..], "{name}");
        assert_eq!(m.file_path(t), path);
    }
    assert_eq!(
        m.total_bytes(),
        datas.iter().map(|d| d.len() as u64).sum::<u64>()
    );
    assert_eq!(m.file_metadata(0).unwrap()["format"], "pt");
    assert!(m.get("nope").is_none());
}

#[test]
fn folder_prefers_model_safetensors_then_all_files_sorted() {
    let dir = tempfile::tempdir().unwrap();
    write_file(
        &dir.path().join("b.safetensors"),
        &[("x", "F32", vec![2])],
        1,
    );
    write_file(
        &dir.path().join("a.safetensors"),
        &[("y", "F32", vec![2])],
        2,
    );
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let m = SafetensorsModel::open(dir.path()).unwrap();
    assert_eq!(
        m.files(),
        &[
            dir.path().join("a.safetensors"),
            dir.path().join("b.safetensors")
        ]
    );
    assert_eq!(
        m.file_path(m.get("x").unwrap()),
        dir.path().join("b.safetensors")
    );

    write_file(
        &dir.path().join("model.safetensors"),
        &[("z", "BF16", vec![3])],
        3,
    );
    let m = SafetensorsModel::open(dir.path()).unwrap();
    assert_eq!(
        m.tensors().len(),
        1,
        "model.safetensors wins over other files"
    );
    assert!(m.get("z").is_some());

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        err_of(empty.path()),
        SafetensorsError::NoFiles { .. }
    ));
}

fn sharded(dir: &Path) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let a = write_file(
        &dir.join("model-00001-of-00002.safetensors"),
        &[("l.0.w", "BF16", vec![8, 4]), ("l.0.b", "BF16", vec![8])],
        10,
    );
    let b = write_file(
        &dir.join("model-00002-of-00002.safetensors"),
        &[("l.1.w", "F16", vec![4, 4])],
        20,
    );
    (a, b)
}

fn write_index(dir: &Path, map: serde_json::Value) {
    let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

#[test]
fn shards_with_index() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = sharded(dir.path());
    let s1 = "model-00001-of-00002.safetensors";
    let s2 = "model-00002-of-00002.safetensors";
    write_index(dir.path(), json!({"l.0.w": s1, "l.0.b": s1, "l.1.w": s2}));
    let m = SafetensorsModel::open(dir.path()).unwrap();
    assert_eq!(m.files().len(), 2);
    assert_eq!(m.data(m.get("l.0.w").unwrap()), &a[0][..]);
    assert_eq!(m.data(m.get("l.0.b").unwrap()), &a[1][..]);
    assert_eq!(m.data(m.get("l.1.w").unwrap()), &b[0][..]);
    assert_eq!(m.file_path(m.get("l.1.w").unwrap()), dir.path().join(s2));
    assert_eq!(m.total_bytes(), 64 + 16 + 32);
}

#[test]
fn index_errors_name_shard_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    sharded(dir.path());
    let s1 = "model-00001-of-00002.safetensors";
    let s2 = "model-00002-of-00002.safetensors";

    write_index(
        dir.path(),
        json!({"l.0.w": s1, "l.9.w": "model-00003-of-00002.safetensors"}),
    );
    let e = err_of(dir.path());
    assert!(
        matches!(&e, SafetensorsError::MissingShard { name, .. } if name == "l.9.w"),
        "{e}"
    );
    assert!(
        e.to_string().contains("model-00003-of-00002.safetensors"),
        "{e}"
    );

    write_index(dir.path(), json!({"l.0.w": s1, "l.1.b": s2}));
    let e = err_of(dir.path());
    assert!(
        matches!(&e, SafetensorsError::MissingTensor { name, .. } if name == "l.1.b"),
        "{e}"
    );
    assert!(e.to_string().contains(s2), "{e}");

    write_index(dir.path(), json!({"l.0.w": s2}));
    assert!(
        matches!(err_of(dir.path()), SafetensorsError::MissingTensor { .. }),
        "wrong shard"
    );

    write_index(dir.path(), json!({"l.0.w": "../escape.safetensors"}));
    assert!(matches!(
        err_of(dir.path()),
        SafetensorsError::BadIndex { .. }
    ));

    std::fs::write(dir.path().join("model.safetensors.index.json"), "{not json").unwrap();
    assert!(matches!(
        err_of(dir.path()),
        SafetensorsError::BadIndex { .. }
    ));

    // The same tensor in two shards.
    write_file(
        &dir.path().join(s2),
        &[("l.1.w", "F16", vec![4, 4]), ("l.0.w", "BF16", vec![8, 4])],
        5,
    );
    write_index(dir.path(), json!({"l.0.w": s1, "l.0.b": s1, "l.1.w": s2}));
    let e = err_of(dir.path());
    assert!(
        matches!(&e, SafetensorsError::DuplicateTensor { name, .. } if name == "l.0.w"),
        "{e}"
    );
}

#[test]
fn malformed_headers_are_rejected_naming_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let check = |header: serde_json::Value,
                 data_len: usize,
                 want: &dyn Fn(&SafetensorsError) -> bool,
                 tensor: Option<&str>| {
        write_raw(&path, &header, &pattern(data_len, 1));
        let e = err_of(&path);
        assert!(want(&e), "unexpected error: {e}");
        assert!(
            e.to_string().contains("bad.safetensors"),
            "no file name: {e}"
        );
        if let Some(t) = tensor {
            assert!(e.to_string().contains(t), "no tensor name: {e}");
        }
    };
    let entry = |dtype: &str, shape: serde_json::Value, a: u64, b: u64| json!({"dtype": dtype, "shape": shape, "data_offsets": [a, b]});

    check(
        json!({"w": entry("F32", json!([2]), 0, 8), "v": entry("F32", json!([2]), 4, 12)}),
        12,
        &|e| matches!(e, SafetensorsError::Overlap { .. }),
        Some("\"v\""),
    );
    check(
        json!({"w": entry("F32", json!([3]), 0, 8)}),
        8,
        &|e| {
            matches!(
                e,
                SafetensorsError::SizeMismatch {
                    expected: 12,
                    got: 8,
                    ..
                }
            )
        },
        Some("\"w\""),
    );
    check(
        json!({"w": entry("F32", json!([4]), 0, 16)}),
        12,
        &|e| {
            matches!(
                e,
                SafetensorsError::OutOfFile {
                    end: 16,
                    data_len: 12,
                    ..
                }
            )
        },
        Some("\"w\""),
    );
    check(
        json!({"w": entry("F32", json!([2]), 8, 0)}),
        8,
        &|e| matches!(e, SafetensorsError::BadEntry { .. }),
        Some("\"w\""),
    );
    check(
        json!({"w": entry("Q4", json!([2]), 0, 8)}),
        8,
        &|e| matches!(e, SafetensorsError::UnknownDtype { .. }),
        Some("\"w\""),
    );
    check(
        json!({"w": {"dtype": "F32", "shape": [2]}}),
        8,
        &|e| matches!(e, SafetensorsError::BadEntry { .. }),
        Some("\"w\""),
    );
    check(
        json!({"w": entry("F32", json!([-2]), 0, 8)}),
        8,
        &|e| matches!(e, SafetensorsError::BadEntry { .. }),
        Some("\"w\""),
    );
    check(
        json!({"w": entry("BF16", json!([u64::MAX, 4]), 0, 8)}),
        8,
        &|e| matches!(e, SafetensorsError::SizeMismatch { .. }),
        Some("\"w\""),
    );
    check(
        json!([1, 2]),
        0,
        &|e| matches!(e, SafetensorsError::BadJson { .. }),
        None,
    );
    check(
        json!({"__metadata__": {"a": 1}}),
        0,
        &|e| matches!(e, SafetensorsError::BadEntry { .. }),
        None,
    );

    // Not JSON at all, a duplicate key, a header longer than the file, a file shorter than 8 bytes.
    let raw = |header: &[u8], total: Option<u64>| {
        let mut b = total.unwrap_or(header.len() as u64).to_le_bytes().to_vec();
        b.extend(header);
        b.extend([7, 7]);
        std::fs::write(&path, b).unwrap();
        err_of(&path)
    };
    assert!(matches!(
        raw(b"{\"w\": [", None),
        SafetensorsError::BadJson { .. }
    ));
    let dup = br#"{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}"#;
    let e = raw(dup, None);
    assert!(
        matches!(&e, SafetensorsError::DuplicateKey { key, .. } if key == "w"),
        "{e}"
    );
    assert!(matches!(
        raw(b"{}", Some(1 << 40)),
        SafetensorsError::HeaderTooLong { .. }
    ));
    assert!(matches!(
        raw(b"{}", Some(u64::MAX)),
        SafetensorsError::HeaderTooLong { .. }
    ));
    std::fs::write(&path, [1, 2, 3]).unwrap();
    assert!(matches!(
        err_of(&path),
        SafetensorsError::TooShort { file_len: 3, .. }
    ));
    std::fs::write(&path, []).unwrap();
    assert!(matches!(
        err_of(&path),
        SafetensorsError::TooShort { file_len: 0, .. }
    ));
}

#[test]
fn truncation_anywhere_is_an_error_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    write_file(
        &path,
        &[("a", "BF16", vec![3, 5]), ("b", "F32", vec![7])],
        4,
    );
    let full = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.safetensors");
    for len in 0..full.len() {
        std::fs::write(&cut, &full[..len]).unwrap();
        match SafetensorsModel::open(&cut) {
            Ok(_) => panic!("truncated to {len} of {} bytes was accepted", full.len()),
            Err(e) => assert!(e.to_string().contains("cut.safetensors"), "{e}"),
        }
    }
}

#[test]
fn missing_path_names_it() {
    let e = err_of(Path::new("/nonexistent/m.safetensors"));
    assert!(
        matches!(e, SafetensorsError::Io { .. })
            && e.to_string().contains("/nonexistent/m.safetensors")
    );
}

#[test]
fn the_safetensors_crate_reads_our_test_files_the_same_way() {
    // Independent check of the test writer itself: the reference crate agrees on every tensor.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    write_file(
        &path,
        &[
            ("a", "BF16", vec![3, 5]),
            ("b", "F32", vec![7]),
            ("c", "I8", vec![2, 2]),
        ],
        4,
    );
    let bytes = std::fs::read(&path).unwrap();
    let reference = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ours = SafetensorsModel::open(&path).unwrap();
    for t in ours.tensors() {
        let r = reference.tensor(&t.name).unwrap();
        assert_eq!(r.data(), ours.data(t));
        let shape: Vec<u64> = r.shape().iter().map(|&d| d as u64).collect();
        assert_eq!(shape, t.shape);
    }
}

const PY_SAVE: &str = r#"
import sys, json, os, numpy as np
from safetensors.numpy import save_file
d = sys.argv[1]
a = {"model.embed_tokens.weight": (np.arange(12, dtype=np.float32) * 0.5 - 2).reshape(3, 4),
     "model.norm.weight": np.arange(4, dtype=np.float16) + 1}
b = {"lm_head.weight": (np.arange(8, dtype=np.int64) - 3).reshape(2, 2, 2),
     "flags": np.array([True, False, True])}
save_file(a, os.path.join(d, "model-00001-of-00002.safetensors"), metadata={"format": "np"})
save_file(b, os.path.join(d, "model-00002-of-00002.safetensors"))
wm = {k: "model-00001-of-00002.safetensors" for k in a}
wm.update({k: "model-00002-of-00002.safetensors" for k in b})
json.dump({"metadata": {}, "weight_map": wm}, open(os.path.join(d, "model.safetensors.index.json"), "w"))
"#;

#[test]
fn reads_shards_written_by_python_safetensors() {
    let Some(py) = test_python::python(&["safetensors", "numpy"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(py)
        .arg("-c")
        .arg(PY_SAVE)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = SafetensorsModel::open(dir.path()).unwrap();
    assert_eq!(m.tensors().len(), 4);
    let t = m.get("model.embed_tokens.weight").unwrap();
    assert_eq!((t.dtype, t.shape.as_slice()), (Dtype::F32, &[3u64, 4][..]));
    let mut vals = vec![0f32; 12];
    quern_formats::dtype::to_f32(t.dtype, m.data(t), &mut vals).unwrap();
    let want: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
    assert_eq!(vals, want);
    let t = m.get("model.norm.weight").unwrap();
    let mut vals = vec![0f32; 4];
    quern_formats::dtype::to_f32(t.dtype, m.data(t), &mut vals).unwrap();
    assert_eq!(vals, [1.0, 2.0, 3.0, 4.0]);
    let t = m.get("lm_head.weight").unwrap();
    assert_eq!(
        (t.dtype, t.shape.as_slice()),
        (Dtype::I64, &[2u64, 2, 2][..])
    );
    let ints: Vec<i64> = m
        .data(t)
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(ints, [-3, -2, -1, 0, 1, 2, 3, 4]);
    let t = m.get("flags").unwrap();
    assert_eq!((t.dtype, m.data(t)), (Dtype::Bool, &[1u8, 0, 1][..]));
    assert_eq!(m.file_metadata(t.file).map(|md| md.len()), Some(0));
    assert_eq!(m.file_metadata(0).unwrap()["format"], "np");
    assert_eq!(m.total_bytes(), 48 + 8 + 64 + 3);
}
