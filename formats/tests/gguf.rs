//! GGUF writer → reader round trips, corruption handling, and cross-checks with
//! llama.cpp's own Python package (`gguf`).

#[path = "../src/test_python.rs"]
mod test_python;

use std::path::Path;

use quern_formats::gguf::{GgufError, GgufFile, TensorSpec, Value, ValueType, Writer};
use quern_formats::GgmlType;

/// Deterministic non-zero bytes.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn every_value_type() -> Vec<(String, Value)> {
    vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("t.u8".into(), Value::U8(200)),
        ("t.i8".into(), Value::I8(-100)),
        ("t.u16".into(), Value::U16(60000)),
        ("t.i16".into(), Value::I16(-30000)),
        ("t.u32".into(), Value::U32(4_000_000_000)),
        ("t.i32".into(), Value::I32(-2_000_000_000)),
        ("t.f32".into(), Value::F32(-1.5e-3)),
        ("t.bool_true".into(), Value::Bool(true)),
        ("t.bool_false".into(), Value::Bool(false)),
        ("t.string".into(), Value::String("héllo, 世界 🦀".into())),
        ("t.empty_string".into(), Value::String(String::new())),
        ("t.u64".into(), Value::U64(u64::MAX - 7)),
        ("t.i64".into(), Value::I64(i64::MIN + 3)),
        ("t.f64".into(), Value::F64(std::f64::consts::PI)),
        (
            "t.array_i32".into(),
            Value::Array(ValueType::I32, vec![Value::I32(-1), Value::I32(7)]),
        ),
        (
            "t.array_f32".into(),
            Value::Array(ValueType::F32, vec![Value::F32(0.5), Value::F32(-2.25)]),
        ),
        (
            "t.array_str".into(),
            Value::strings(["a", "", "ü", "<|im_start|>"]),
        ),
        (
            "t.array_bool".into(),
            Value::Array(ValueType::Bool, vec![Value::Bool(true), Value::Bool(false)]),
        ),
        (
            "t.array_u8".into(),
            Value::Array(ValueType::U8, vec![Value::U8(1), Value::U8(255)]),
        ),
        ("t.empty_array".into(), Value::Array(ValueType::U32, vec![])),
        (
            "t.nested".into(),
            Value::Array(
                ValueType::Array,
                vec![
                    Value::Array(ValueType::I64, vec![Value::I64(1), Value::I64(-2)]),
                    Value::Array(ValueType::I64, vec![]),
                    Value::Array(ValueType::I64, vec![Value::I64(3)]),
                ],
            ),
        ),
        (
            "t.nested_strings".into(),
            Value::Array(
                ValueType::Array,
                vec![Value::strings(["x", "yz"]), Value::strings(["ω"])],
            ),
        ),
        ("ключ.unicode".into(), Value::F64(-0.0)),
    ]
}

fn specs() -> Vec<TensorSpec> {
    vec![
        TensorSpec::new("token_embd.weight", vec![64, 3], GgmlType::F32),
        TensorSpec::new("blk.0.attn_q.weight", vec![32, 5], GgmlType::F16),
        TensorSpec::new("blk.0.ffn_up.weight", vec![64, 2], GgmlType::Q8_0),
        TensorSpec::new("blk.0.ffn_down.weight", vec![256, 2], GgmlType::Q4K),
        TensorSpec::new("output_norm.weight", vec![7], GgmlType::Bf16),
        TensorSpec::new("odd.i8", vec![3, 1, 1, 1], GgmlType::I8),
        TensorSpec::new("empty", vec![0, 4], GgmlType::F32),
    ]
}

fn write_file(path: &Path, metadata: &[(String, Value)], specs: &[TensorSpec]) -> Vec<Vec<u8>> {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut w = Writer::new(file, metadata, specs).unwrap();
    let expected_len = w.file_len();
    let mut datas = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let data = pattern(s.n_bytes().unwrap() as usize, i as u8);
        w.write_tensor(&s.name, &data).unwrap();
        datas.push(data);
    }
    w.finish().unwrap();
    assert_eq!(
        std::fs::metadata(path).unwrap().len(),
        expected_len,
        "Writer::file_len"
    );
    datas
}

fn check_round_trip(alignment: u64, metadata: Vec<(String, Value)>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let specs = specs();
    let datas = write_file(&path, &metadata, &specs);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), alignment);
    assert_eq!(f.data_offset() % alignment, 0);
    assert_eq!(f.metadata(), &metadata[..], "metadata in file order");
    for (k, v) in &metadata {
        assert_eq!(f.get(k), Some(v), "{k}");
    }
    assert_eq!(f.get("missing"), None);
    assert_eq!(f.tensors().len(), specs.len());
    // llama.cpp wants tensors packed in order, each padded to the alignment.
    let mut expected_offset = 0;
    for ((t, s), data) in f.tensors().iter().zip(&specs).zip(&datas) {
        assert_eq!(t.offset, expected_offset, "{} packed offset", t.name);
        expected_offset += (data.len() as u64).div_ceil(alignment) * alignment;
        assert_eq!(t.name, s.name);
        assert_eq!(t.shape, s.shape);
        assert_eq!(t.ggml_type, s.ggml_type);
        assert_eq!(t.offset % alignment, 0, "{} offset", t.name);
        assert_eq!(t.n_bytes(), data.len() as u64);
        assert_eq!(f.tensor_data(t), &data[..], "{} data", t.name);
        assert_eq!(f.tensor(&s.name), Some(t));
    }
    let q4k = f.tensor("blk.0.ffn_down.weight").unwrap();
    assert_eq!(
        (q4k.row_len(), q4k.n_rows(), q4k.n_elements(), q4k.n_bytes()),
        (256, 2, 512, 288)
    );
    let i8t = f.tensor("odd.i8").unwrap();
    assert_eq!((i8t.row_len(), i8t.n_rows()), (3, 1));
}

#[test]
fn round_trip_every_value_type_default_alignment() {
    check_round_trip(32, every_value_type());
}

#[test]
fn round_trip_custom_alignment() {
    let mut md = every_value_type();
    md.insert(1, ("general.alignment".into(), Value::U32(64)));
    check_round_trip(64, md);
    let mut md = every_value_type();
    md.push(("general.alignment".into(), Value::U32(8)));
    check_round_trip(8, md);
}

#[test]
fn round_trip_no_tensors_no_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.gguf");
    write_file(&path, &[], &[]);
    let f = GgufFile::open(&path).unwrap();
    assert!(f.metadata().is_empty() && f.tensors().is_empty());
}

fn writer_err(metadata: &[(String, Value)], specs: &[TensorSpec]) -> GgufError {
    match Writer::new(Vec::new(), metadata, specs) {
        Ok(_) => panic!("writer accepted invalid input"),
        Err(e) => e,
    }
}

#[test]
fn writer_rejects_invalid_input_naming_it() {
    let t = |name: &str, shape: Vec<u64>, ty| vec![TensorSpec::new(name, shape, ty)];
    let dup = vec![("a".into(), Value::U8(1)), ("a".into(), Value::U8(2))];
    assert!(matches!(writer_err(&dup, &[]), GgufError::InvalidMetadata { key, .. } if key == "a"));
    for bad in [Value::U64(32), Value::U32(0), Value::U32(48)] {
        let md = vec![("general.alignment".into(), bad)];
        let e = writer_err(&md, &[]);
        assert!(e.to_string().contains("general.alignment"), "{e}");
    }
    let mixed = vec![(
        "m".into(),
        Value::Array(ValueType::U8, vec![Value::U8(1), Value::I8(1)]),
    )];
    assert!(writer_err(&mixed, &[]).to_string().contains("\"m\""));
    let e = writer_err(&[], &t("q", vec![33, 2], GgmlType::Q8_0));
    assert!(
        matches!(&e, GgufError::InvalidTensor { name, .. } if name == "q"),
        "{e}"
    );
    let e = writer_err(&[], &t("d", vec![1, 1, 1, 1, 1], GgmlType::F32));
    assert!(e.to_string().contains("5 dimensions"), "{e}");
    let e = writer_err(&[], &t(&"n".repeat(64), vec![1], GgmlType::F32));
    assert!(e.to_string().contains("at most 63"), "{e}");
    let two = [
        TensorSpec::new("x", vec![1], GgmlType::F32),
        TensorSpec::new("x", vec![1], GgmlType::F32),
    ];
    assert!(matches!(writer_err(&[], &two), GgufError::InvalidTensor { name, .. } if name == "x"));
}

#[test]
fn writer_checks_order_size_and_completeness() {
    let specs = [
        TensorSpec::new("a", vec![4], GgmlType::F32),
        TensorSpec::new("b", vec![32], GgmlType::Q8_0),
    ];
    let mut w = Writer::new(Vec::new(), &[], &specs).unwrap();
    let e = w.write_tensor("b", &[1; 34]).unwrap_err();
    assert!(
        matches!(&e, GgufError::OutOfOrder { got, .. } if got == "b"),
        "{e}"
    );
    let e = w.write_tensor("a", &[1; 15]).unwrap_err();
    assert!(
        matches!(e, GgufError::WrongDataSize { ref name, expected: 16, got: 15 } if name == "a"),
        "{e}"
    );
    w.write_tensor("a", &[1; 16]).unwrap();
    let e = Writer::finish(w).unwrap_err();
    assert!(
        matches!(&e, GgufError::MissingTensor { name } if name == "b"),
        "{e}"
    );

    let mut w = Writer::new(Vec::new(), &[], &specs[..1]).unwrap();
    w.write_tensor("a", &[2; 16]).unwrap();
    assert!(matches!(
        w.write_tensor("a", &[2; 16]),
        Err(GgufError::OutOfOrder { .. })
    ));
    let bytes = w.finish().unwrap();
    assert_eq!(
        bytes.len() % 32,
        0,
        "padded to alignment after the last tensor"
    );
}

/// A GGUF file assembled field by field, so tests can write what our Writer refuses to.
struct Raw {
    magic: u32,
    version: u32,
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, u64)>,
    alignment: usize,
    data: Vec<u8>,
    n_kv_override: Option<u64>,
    n_tensors_override: Option<u64>,
}

impl Raw {
    fn new() -> Raw {
        Raw {
            magic: 0x4655_4747,
            version: 3,
            kv: vec![("general.architecture".into(), 8, str_bytes("llama"))],
            tensors: vec![
                ("a".into(), vec![8, 2], 0, 0),
                ("b".into(), vec![32], 8, 64),
            ],
            alignment: 32,
            data: pattern(64 + 34, 9),
            n_kv_override: None,
            n_tensors_override: None,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(self.magic.to_le_bytes());
        b.extend(self.version.to_le_bytes());
        b.extend(
            self.n_tensors_override
                .unwrap_or(self.tensors.len() as u64)
                .to_le_bytes(),
        );
        b.extend(
            self.n_kv_override
                .unwrap_or(self.kv.len() as u64)
                .to_le_bytes(),
        );
        for (k, ty, v) in &self.kv {
            b.extend(str_bytes(k));
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        for (name, shape, ty, off) in &self.tensors {
            b.extend(str_bytes(name));
            b.extend((shape.len() as u32).to_le_bytes());
            for d in shape {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(off.to_le_bytes());
        }
        while b.len() % self.alignment != 0 {
            b.push(0);
        }
        b.extend(&self.data);
        b
    }

    fn open(&self) -> Result<GgufFile, GgufError> {
        open_bytes(&self.bytes())
    }
}

fn str_bytes(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend(s.as_bytes());
    b
}

fn open_bytes(bytes: &[u8]) -> Result<GgufFile, GgufError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.gguf");
    std::fs::write(&path, bytes).unwrap();
    GgufFile::open(&path)
}

/// The error, checking that its message names the file.
fn open_err(raw: &Raw) -> GgufError {
    match raw.open() {
        Ok(_) => panic!("corrupt file was accepted"),
        Err(e) => {
            assert!(
                e.to_string().contains("x.gguf"),
                "error does not name the file: {e}"
            );
            e
        }
    }
}

#[test]
fn raw_baseline_is_valid() {
    let f = Raw::new().open().unwrap();
    assert_eq!(f.tensors().len(), 2);
    assert_eq!(f.tensor_data(&f.tensors()[1]), &pattern(98, 9)[64..98]);
    let mut v2 = Raw::new();
    v2.version = 2;
    assert_eq!(v2.open().unwrap().version(), 2);
}

#[test]
fn rejects_bad_magic_and_versions() {
    let mut r = Raw::new();
    r.magic = 0x4655_4746;
    assert!(matches!(open_err(&r), GgufError::BadMagic { .. }));
    for v in [1, 4, 0x0300_0000] {
        let mut r = Raw::new();
        r.version = v;
        assert!(
            matches!(open_err(&r), GgufError::UnsupportedVersion { version, .. } if version == v)
        );
    }
    let e = open_bytes(b"GGU").unwrap_err();
    assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
    let e = open_bytes(b"").unwrap_err();
    assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
}

#[test]
fn truncation_anywhere_is_an_error_never_a_panic() {
    let full = Raw::new().bytes();
    let header_end = {
        let mut r = Raw::new();
        r.alignment = 1;
        r.data.clear();
        r.bytes().len()
    };
    for len in 0..full.len() {
        let e = match open_bytes(&full[..len]) {
            Ok(_) => panic!(
                "file truncated to {len} of {} bytes was accepted",
                full.len()
            ),
            Err(e) => e,
        };
        if len < header_end {
            // inside the header proper (before the alignment padding)
            assert!(
                matches!(
                    e,
                    GgufError::Truncated { .. } | GgufError::AbsurdCount { .. }
                ),
                "len {len}: {e}"
            );
        } else {
            assert!(matches!(e, GgufError::OutOfFile { .. }), "len {len}: {e}");
        }
    }
    // And the same on a file with every value type.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    write_file(&path, &every_value_type(), &specs());
    let full = std::fs::read(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    // Trailing padding after the last tensor's data may go without harm.
    let data_end = f
        .tensors()
        .iter()
        .filter(|t| t.n_bytes() > 0)
        .map(|t| f.data_offset() + t.offset + t.n_bytes())
        .max()
        .unwrap();
    assert!(open_bytes(&full[..data_end as usize]).is_ok());
    for len in (0..data_end as usize).step_by(7) {
        assert!(open_bytes(&full[..len]).is_err(), "truncated to {len}");
    }
}

#[test]
fn absurd_counts_do_not_allocate() {
    let mut r = Raw::new();
    r.n_kv_override = Some(u64::MAX);
    assert!(matches!(
        open_err(&r),
        GgufError::AbsurdCount {
            count: u64::MAX,
            ..
        }
    ));
    let mut r = Raw::new();
    r.n_tensors_override = Some(1 << 40);
    assert!(matches!(open_err(&r), GgufError::AbsurdCount { .. }));
    // a string that claims 2^62 bytes
    let mut r = Raw::new();
    r.kv.push(("s".into(), 8, (1u64 << 62).to_le_bytes().to_vec()));
    let e = open_err(&r);
    assert!(
        matches!(e, GgufError::AbsurdCount { .. }) && e.to_string().contains("\"s\""),
        "{e}"
    );
    // an array of u64 that claims 2^60 elements
    let mut r = Raw::new();
    let mut v = 10u32.to_le_bytes().to_vec();
    v.extend((1u64 << 60).to_le_bytes());
    r.kv.push(("arr".into(), 9, v));
    let e = open_err(&r);
    assert!(
        matches!(e, GgufError::AbsurdCount { .. }) && e.to_string().contains("arr"),
        "{e}"
    );
}

#[test]
fn deep_nesting_is_rejected() {
    let mut r = Raw::new();
    let mut v = Vec::new();
    for _ in 0..100 {
        v.extend(9u32.to_le_bytes());
        v.extend(1u64.to_le_bytes());
    }
    v.extend(0u32.to_le_bytes());
    v.extend(0u64.to_le_bytes());
    r.kv.push(("deep".into(), 9, v));
    assert!(matches!(open_err(&r), GgufError::TooDeep { .. }));
}

#[test]
fn rejects_bad_metadata() {
    let mut r = Raw::new();
    r.kv.push(("general.architecture".into(), 8, str_bytes("x")));
    assert!(
        matches!(open_err(&r), GgufError::DuplicateKey { key, .. } if key == "general.architecture")
    );
    let mut r = Raw::new();
    r.kv.push(("weird".into(), 13, vec![0; 8]));
    assert!(matches!(
        open_err(&r),
        GgufError::UnknownValueType { id: 13, .. }
    ));
    let mut r = Raw::new();
    r.kv.push(("bad_utf8".into(), 8, {
        let mut b = 2u64.to_le_bytes().to_vec();
        b.extend([0xff, 0xfe]);
        b
    }));
    assert!(matches!(open_err(&r), GgufError::BadUtf8 { .. }));
    for (ty, payload) in [
        (4u32, 0u32.to_le_bytes().to_vec()),
        (4, 48u32.to_le_bytes().to_vec()),
        (10, 32u64.to_le_bytes().to_vec()),
    ] {
        let mut r = Raw::new();
        r.kv.push(("general.alignment".into(), ty, payload));
        assert!(
            matches!(open_err(&r), GgufError::BadMetadata { key, .. } if key == "general.alignment")
        );
    }
}

#[test]
fn rejects_bad_tensor_infos_naming_the_tensor() {
    let name_in = |e: &GgufError, n: &str| e.to_string().contains(&format!("\"{n}\""));

    let mut r = Raw::new();
    r.tensors[1].0 = "a".into();
    assert!(matches!(open_err(&r), GgufError::DuplicateTensor { name, .. } if name == "a"));

    let mut r = Raw::new();
    r.tensors[1].2 = 4; // removed Q4_2
    let e = open_err(&r);
    assert!(
        matches!(e, GgufError::UnknownGgmlType { id: 4, .. }) && name_in(&e, "b"),
        "{e}"
    );

    let mut r = Raw::new();
    r.tensors[0].1 = vec![1, 1, 1, 1, 16];
    let e = open_err(&r);
    assert!(
        matches!(e, GgufError::TooManyDims { n_dims: 5, .. }) && name_in(&e, "a"),
        "{e}"
    );

    let mut r = Raw::new();
    r.tensors[1].1 = vec![33];
    let e = open_err(&r);
    assert!(
        matches!(e, GgufError::BadShape { .. }) && name_in(&e, "b"),
        "{e}"
    );

    let mut r = Raw::new();
    r.tensors[0].1 = vec![u64::MAX, 2];
    assert!(matches!(open_err(&r), GgufError::BadShape { .. }));

    let mut r = Raw::new();
    r.tensors[1].3 = 48;
    let e = open_err(&r);
    assert!(
        matches!(
            e,
            GgufError::Misaligned {
                offset: 48,
                alignment: 32,
                ..
            }
        ) && name_in(&e, "b"),
        "{e}"
    );

    let mut r = Raw::new();
    r.tensors[1].3 = 32; // a: [0, 64) overlaps b: [32, 66)
    let e = open_err(&r);
    assert!(
        matches!(e, GgufError::Overlap { .. }) && name_in(&e, "a") && name_in(&e, "b"),
        "{e}"
    );

    let mut r = Raw::new();
    r.tensors[1].3 = 96;
    let e = open_err(&r);
    assert!(
        matches!(e, GgufError::OutOfFile { .. }) && name_in(&e, "b"),
        "{e}"
    );

    let mut r = Raw::new();
    r.tensors[1].3 = u64::MAX - 31;
    assert!(matches!(open_err(&r), GgufError::OutOfFile { .. }));
}

#[test]
fn random_corruption_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    write_file(&path, &every_value_type(), &specs());
    let good = std::fs::read(&path).unwrap();
    let header_len = GgufFile::open(&path).unwrap().data_offset() as usize;
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let bad = dir.path().join("bad.gguf");
    for _ in 0..400 {
        let mut b = good.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() as usize) % header_len;
            b[i] = next() as u8;
        }
        std::fs::write(&bad, &b).unwrap();
        // Either outcome is fine; what matters is no panic and no huge allocation.
        if let Ok(f) = GgufFile::open(&bad) {
            for t in f.tensors() {
                assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes());
            }
        }
    }
}

#[test]
fn open_missing_file_names_it() {
    let e = GgufFile::open(Path::new("/nonexistent/q.gguf")).unwrap_err();
    assert!(matches!(e, GgufError::Open { .. }) && e.to_string().contains("/nonexistent/q.gguf"));
}

// ---- cross-checks with PyPI `gguf` ----

/// Our value as gguf-py's `ReaderField.contents()` shows it (nested arrays come out flat),
/// plus the type list gguf-py reports.
fn py_view(v: &Value) -> (serde_json::Value, Vec<u32>) {
    fn flat(v: &Value, out: &mut Vec<serde_json::Value>) {
        match v {
            Value::Array(_, items) => items.iter().for_each(|i| flat(i, out)),
            other => out.push(scalar(other)),
        }
    }
    fn scalar(v: &Value) -> serde_json::Value {
        match v {
            Value::String(s) => s.clone().into(),
            Value::Bool(b) => (*b).into(),
            Value::F32(x) => f64::from(*x).into(),
            Value::F64(x) => (*x).into(),
            Value::I8(_) | Value::I16(_) | Value::I32(_) | Value::I64(_) => match v.as_f64() {
                Some(_) => serde_json::json!(i64_of(v)),
                None => serde_json::Value::Null,
            },
            other => other.as_u64().into(),
        }
    }
    fn i64_of(v: &Value) -> i64 {
        match *v {
            Value::I8(x) => x.into(),
            Value::I16(x) => x.into(),
            Value::I32(x) => x.into(),
            Value::I64(x) => x,
            _ => 0,
        }
    }
    fn types(v: &Value, out: &mut Vec<u32>) {
        out.push(v.value_type() as u32);
        if let Value::Array(_, items) = v {
            // gguf-py reports no element type for an empty array
            if let Some(first) = items.first() {
                types(first, out);
            }
        }
    }
    let mut t = Vec::new();
    types(v, &mut t);
    match v {
        Value::Array(..) => {
            let mut out = Vec::new();
            flat(v, &mut out);
            (serde_json::Value::Array(out), t)
        }
        other => (scalar(other), t),
    }
}

fn run_python(py: &Path, script: &str, args: &[&Path]) -> String {
    let out = std::process::Command::new(py)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const PY_DUMP: &str = r#"
import sys, json, numpy as np
from gguf import GGUFReader
r = GGUFReader(sys.argv[1])
fields = []
for name, f in r.fields.items():
    if name.startswith("GGUF."):
        continue
    types = [int(t) for t in f.types]
    if types[0] == 9 and len(f.data) == 0:
        contents = []
    else:
        contents = f.contents()
    fields.append([name, types, contents])
tensors = []
for t in r.tensors:
    data = np.ascontiguousarray(t.data).tobytes()
    tensors.append([t.name, [int(x) for x in t.shape], int(t.tensor_type), int(t.n_bytes), int(t.data_offset), data.hex(), len(data)])
print(json.dumps({"fields": fields, "tensors": tensors, "alignment": int(r.alignment)}))
"#;

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn gguf_py_reads_what_we_write() {
    let Some(py) = test_python::python(&["gguf", "numpy"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ours.gguf");
    let mut md = every_value_type();
    md.insert(1, ("general.alignment".into(), Value::U32(64)));
    let specs = specs();
    let datas = write_file(&path, &md, &specs);
    let dump: serde_json::Value =
        serde_json::from_str(&run_python(&py, PY_DUMP, &[&path])).unwrap();
    assert_eq!(dump["alignment"], 64);
    let fields = dump["fields"].as_array().unwrap();
    assert_eq!(fields.len(), md.len());
    for ((key, value), field) in md.iter().zip(fields) {
        assert_eq!(field[0], key.as_str());
        let (contents, types) = py_view(value);
        let py_types: Vec<u32> = serde_json::from_value(field[1].clone()).unwrap();
        assert_eq!(py_types, types, "{key} types");
        assert_eq!(field[2], contents, "{key} contents");
    }
    let tensors = dump["tensors"].as_array().unwrap();
    let ours = GgufFile::open(&path).unwrap();
    assert_eq!(tensors.len(), specs.len());
    for ((t, s), data) in tensors.iter().zip(&specs).zip(&datas) {
        assert_eq!(t[0], s.name.as_str());
        let shape: Vec<u64> = serde_json::from_value(t[1].clone()).unwrap();
        assert_eq!(
            shape, s.shape,
            "{} shape (gguf-py reports ggml order)",
            s.name
        );
        assert_eq!(t[2], s.ggml_type.id());
        assert_eq!(t[3], data.len() as u64);
        let info = ours.tensor(&s.name).unwrap();
        assert_eq!(
            t[4],
            ours.data_offset() + info.offset,
            "{} absolute offset",
            s.name
        );
        assert_eq!(t[5], hex(data).as_str(), "{} bytes gguf-py sees", s.name);
    }
}

const PY_WRITE: &str = r#"
import sys, numpy as np, gguf
from gguf import GGUFWriter, GGUFValueType as T, GGMLQuantizationType as Q
w = GGUFWriter(sys.argv[1], "llama")
w.add_custom_alignment(int(sys.argv[2]))
w.add_uint8("k.u8", 250)
w.add_int8("k.i8", -128)
w.add_uint16("k.u16", 65535)
w.add_int16("k.i16", -32768)
w.add_uint32("k.u32", 123456789)
w.add_int32("k.i32", -123456789)
w.add_float32("k.f32", 0.1)
w.add_bool("k.bool", True)
w.add_string("k.str", "ünïcødé ✓")
w.add_uint64("k.u64", 2**64 - 1)
w.add_int64("k.i64", -2**63)
w.add_float64("k.f64", 1e-300)
w.add_array("k.strs", ["<s>", "</s>", "é"])
w.add_array("k.ints", [1, -2, 3])
w.add_array("k.nested", [[1, 2], [3]])
w.add_key_value("k.floats", [0.5, 0.25], T.ARRAY, sub_type=T.FLOAT32)
f32 = (np.arange(24, dtype=np.float32) * 0.25 + 1).reshape(3, 8)
w.add_tensor("f32", f32)
f16 = (np.arange(64, dtype=np.float32) - 10.5).astype(np.float16).reshape(2, 32)
w.add_tensor("f16", f16)
q8 = (np.arange(2 * 34) % 251 + 1).astype(np.uint8).reshape(2, 34)
w.add_tensor("q8", q8, raw_dtype=Q.Q8_0)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
"#;

#[test]
fn we_read_what_gguf_py_writes() {
    let Some(py) = test_python::python(&["gguf", "numpy"]) else {
        return;
    };
    for alignment in [32u32, 64] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("theirs.gguf");
        run_python(&py, PY_WRITE, &[&path, Path::new(&alignment.to_string())]);
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), u64::from(alignment));
        let get = |k: &str| f.get(k).unwrap_or_else(|| panic!("missing {k}")).clone();
        assert_eq!(get("general.architecture"), Value::String("llama".into()));
        assert_eq!(get("general.alignment"), Value::U32(alignment));
        assert_eq!(get("k.u8"), Value::U8(250));
        assert_eq!(get("k.i8"), Value::I8(-128));
        assert_eq!(get("k.u16"), Value::U16(65535));
        assert_eq!(get("k.i16"), Value::I16(-32768));
        assert_eq!(get("k.u32"), Value::U32(123_456_789));
        assert_eq!(get("k.i32"), Value::I32(-123_456_789));
        assert_eq!(get("k.f32"), Value::F32(0.1));
        assert_eq!(get("k.bool"), Value::Bool(true));
        assert_eq!(get("k.str"), Value::String("ünïcødé ✓".into()));
        assert_eq!(get("k.u64"), Value::U64(u64::MAX));
        assert_eq!(get("k.i64"), Value::I64(i64::MIN));
        assert_eq!(get("k.f64"), Value::F64(1e-300));
        assert_eq!(get("k.strs"), Value::strings(["<s>", "</s>", "é"]));
        let ints = get("k.ints");
        let ints: Vec<f64> = ints
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(ints, [1.0, -2.0, 3.0]);
        let nested = get("k.nested");
        let inner: Vec<usize> = nested
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_array().unwrap().len())
            .collect();
        assert_eq!(inner, [2, 1]);
        assert_eq!(
            get("k.floats"),
            Value::Array(ValueType::F32, vec![Value::F32(0.5), Value::F32(0.25)])
        );

        let t = f.tensor("f32").unwrap();
        assert_eq!(
            (t.shape.as_slice(), t.ggml_type),
            (&[8u64, 3][..], GgmlType::F32)
        );
        let want: Vec<u8> = (0..24)
            .flat_map(|i| (i as f32 * 0.25 + 1.0).to_le_bytes())
            .collect();
        assert_eq!(f.tensor_data(t), &want[..]);
        let t = f.tensor("f16").unwrap();
        assert_eq!(
            (t.shape.as_slice(), t.ggml_type),
            (&[32u64, 2][..], GgmlType::F16)
        );
        let want: Vec<u8> = (0..64)
            .flat_map(|i| half::f16::from_f32(i as f32 - 10.5).to_le_bytes())
            .collect();
        assert_eq!(f.tensor_data(t), &want[..]);
        let t = f.tensor("q8").unwrap();
        assert_eq!(
            (t.shape.as_slice(), t.ggml_type),
            (&[32u64, 2][..], GgmlType::Q8_0)
        );
        let want: Vec<u8> = (0..68u32).map(|i| (i % 251 + 1) as u8).collect();
        assert_eq!(f.tensor_data(t), &want[..]);
        assert_eq!(t.offset % u64::from(alignment), 0);
    }
}

/// Reads a GGUF file with llama.cpp's own parser (`gguf_init_from_file` in the
/// libggml-base that llama-cpp-python ships) and prints what it sees as JSON.
const PY_LLAMA_DUMP: &str = r#"
import ctypes, json, os, struct, sys, llama_cpp
lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
class Params(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]
def fn(name, res, *args):
    f = getattr(lib, name); f.restype = res; f.argtypes = list(args); return f
vp, i64, sz = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
init = fn("gguf_init_from_file", vp, ctypes.c_char_p, Params)
ctx = init(sys.argv[1].encode(), Params(True, None))
if not ctx:
    print(json.dumps({"rejected": True})); sys.exit(0)
scalar = {0: ("gguf_get_val_u8", ctypes.c_uint8), 1: ("gguf_get_val_i8", ctypes.c_int8),
          2: ("gguf_get_val_u16", ctypes.c_uint16), 3: ("gguf_get_val_i16", ctypes.c_int16),
          4: ("gguf_get_val_u32", ctypes.c_uint32), 5: ("gguf_get_val_i32", ctypes.c_int32),
          6: ("gguf_get_val_f32", ctypes.c_float), 7: ("gguf_get_val_bool", ctypes.c_bool),
          10: ("gguf_get_val_u64", ctypes.c_uint64), 11: ("gguf_get_val_i64", ctypes.c_int64),
          12: ("gguf_get_val_f64", ctypes.c_double)}
packed = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
kvs = []
for k in range(fn("gguf_get_n_kv", i64, vp)(ctx)):
    key = fn("gguf_get_key", ctypes.c_char_p, vp, i64)(ctx, k).decode()
    t = fn("gguf_get_kv_type", ctypes.c_int, vp, i64)(ctx, k)
    if t == 8:
        v = fn("gguf_get_val_str", ctypes.c_char_p, vp, i64)(ctx, k).decode()
    elif t == 9:
        at = fn("gguf_get_arr_type", ctypes.c_int, vp, i64)(ctx, k)
        n = fn("gguf_get_arr_n", sz, vp, i64)(ctx, k)
        if at == 8:
            v = [fn("gguf_get_arr_str", ctypes.c_char_p, vp, i64, sz)(ctx, k, i).decode() for i in range(n)]
        else:
            width = struct.calcsize(packed[at])
            ptr = fn("gguf_get_arr_data", vp, vp, i64)(ctx, k) if n else None
            raw = ctypes.string_at(ptr, n * width) if n else b""
            v = list(struct.unpack("<%d%s" % (n, packed[at]), raw))
        v = [at, v]
    else:
        name, ct = scalar[t]
        v = fn(name, ct, vp, i64)(ctx, k)
    kvs.append([key, t, v])
tensors = []
for i in range(fn("gguf_get_n_tensors", i64, vp)(ctx)):
    tensors.append([fn("gguf_get_tensor_name", ctypes.c_char_p, vp, i64)(ctx, i).decode(),
                    fn("gguf_get_tensor_type", ctypes.c_int, vp, i64)(ctx, i),
                    fn("gguf_get_tensor_offset", sz, vp, i64)(ctx, i),
                    fn("gguf_get_tensor_size", sz, vp, i64)(ctx, i)])
print(json.dumps({"version": fn("gguf_get_version", ctypes.c_uint32, vp)(ctx),
                  "alignment": fn("gguf_get_alignment", sz, vp)(ctx),
                  "data_offset": fn("gguf_get_data_offset", sz, vp)(ctx),
                  "kv": kvs, "tensors": tensors}))
fn("gguf_free", None, vp)(ctx)
"#;

/// Our value as the llama.cpp dump shows it.
fn llama_view(v: &Value) -> serde_json::Value {
    fn scalar(v: &Value) -> serde_json::Value {
        match v {
            Value::String(s) => s.clone().into(),
            Value::Bool(b) => (*b).into(),
            Value::F32(x) => f64::from(*x).into(),
            Value::F64(x) => (*x).into(),
            Value::I8(x) => (*x).into(),
            Value::I16(x) => (*x).into(),
            Value::I32(x) => (*x).into(),
            Value::I64(x) => (*x).into(),
            other => other.as_u64().into(),
        }
    }
    match v {
        Value::Array(elem, items) => {
            serde_json::json!([*elem as u32, items.iter().map(scalar).collect::<Vec<_>>()])
        }
        other => scalar(other),
    }
}

#[test]
fn llama_cpp_parses_what_we_write() {
    let Some(py) = test_python::python(&["llama_cpp"]) else {
        return;
    };
    for alignment in [None, Some(64u32)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ours.gguf");
        // llama.cpp's parser rejects arrays of arrays (checked below), so leave them out here.
        let mut md: Vec<(String, Value)> = every_value_type()
            .into_iter()
            .filter(|(_, v)| !matches!(v, Value::Array(ValueType::Array, _)))
            .collect();
        if let Some(a) = alignment {
            md.push(("general.alignment".into(), Value::U32(a)));
        }
        let specs = specs();
        write_file(&path, &md, &specs);
        let dump: serde_json::Value =
            serde_json::from_str(&run_python(&py, PY_LLAMA_DUMP, &[&path])).unwrap();
        assert!(
            dump.get("rejected").is_none(),
            "llama.cpp rejected our file"
        );
        let ours = GgufFile::open(&path).unwrap();
        assert_eq!(dump["version"], 3);
        assert_eq!(dump["alignment"], ours.alignment());
        assert_eq!(dump["data_offset"], ours.data_offset());
        let kv = dump["kv"].as_array().unwrap();
        assert_eq!(kv.len(), md.len());
        for ((key, value), got) in md.iter().zip(kv) {
            assert_eq!(got[0], key.as_str());
            assert_eq!(got[1], value.value_type() as u32, "{key} type");
            assert_eq!(got[2], llama_view(value), "{key} value");
        }
        let tensors = dump["tensors"].as_array().unwrap();
        assert_eq!(tensors.len(), specs.len());
        for (t, info) in tensors.iter().zip(ours.tensors()) {
            assert_eq!(t[0], info.name.as_str());
            assert_eq!(t[1], info.ggml_type.id());
            assert_eq!(t[2], info.offset, "{} offset", info.name);
            assert_eq!(t[3], info.n_bytes(), "{} size", info.name);
        }
    }

    // Documented limitation: llama.cpp refuses nested arrays, though GGUF allows them.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested.gguf");
    write_file(&path, &every_value_type(), &[]);
    let dump: serde_json::Value =
        serde_json::from_str(&run_python(&py, PY_LLAMA_DUMP, &[&path])).unwrap();
    assert_eq!(
        dump["rejected"], true,
        "llama.cpp now accepts nested arrays: update Writer docs"
    );
}
