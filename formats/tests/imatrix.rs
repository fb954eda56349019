//! Importance matrices: both file forms round-trip, the legacy layout is byte-exact,
//! and malformed files fail with errors that name the file and the entry.

use std::path::Path;

use quern_formats::ggml::GgmlType;
use quern_formats::gguf::{GgufFile, TensorSpec, Value, ValueType, Writer};
use quern_formats::imatrix::{Imatrix, ImatrixEntry, ImatrixError, LEGACY_CHUNK_SIZE};

fn sample() -> Imatrix {
    // Values are exact binary fractions so equality checks are meaningful.
    let cols: Vec<f32> = (0..64).map(|i| (i as f32) * 0.25 + 0.5).collect();
    Imatrix {
        entries: vec![
            ImatrixEntry {
                name: "blk.1.attn_q.weight".into(),
                sums: cols.iter().map(|v| v * 1024.0).collect(),
                counts: vec![1024.0],
            },
            ImatrixEntry {
                name: "blk.0.ffn_down_exps.weight".into(),
                sums: (0..3 * 16).map(|i| i as f32 * 3.0).collect(),
                counts: vec![512.0, 1536.0, 0.0],
            },
        ],
        datasets: vec!["shakespeare.txt".into(), "more.txt".into()],
        chunk_count: 3,
        chunk_size: 512,
    }
}

fn sorted(mut m: Imatrix) -> Imatrix {
    m.entries.sort_by(|a, b| a.name.cmp(&b.name));
    m
}

#[test]
fn gguf_round_trip_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("imatrix.gguf");
    let m = sample();
    m.write_gguf(&path).expect("write");
    let back = Imatrix::read(&path).expect("read");
    // llama-imatrix sorts entries by name; so do we.
    assert_eq!(back, sorted(m.clone()));
    assert_eq!(
        back.importance_for("blk.0.ffn_down_exps.weight")
            .expect("entry")[16..18],
        [48.0 / 1536.0, 51.0 / 1536.0]
    );

    // The layout llama.cpp's quantizer reads: keys, suffixed F32 tensors, ggml shapes.
    let f = GgufFile::open(&path).expect("open");
    assert_eq!(
        f.get("general.type"),
        Some(&Value::String("imatrix".into()))
    );
    assert_eq!(f.get("imatrix.chunk_count"), Some(&Value::U32(3)));
    assert_eq!(f.get("imatrix.chunk_size"), Some(&Value::U32(512)));
    assert_eq!(
        f.get("imatrix.datasets"),
        Some(&Value::Array(
            ValueType::String,
            vec![
                Value::String("shakespeare.txt".into()),
                Value::String("more.txt".into())
            ]
        ))
    );
    let shapes: Vec<(String, Vec<u64>, GgmlType)> = f
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone(), t.ggml_type))
        .collect();
    assert_eq!(
        shapes,
        vec![
            (
                "blk.0.ffn_down_exps.weight.in_sum2".into(),
                vec![16, 3],
                GgmlType::F32
            ),
            (
                "blk.0.ffn_down_exps.weight.counts".into(),
                vec![1, 3],
                GgmlType::F32
            ),
            (
                "blk.1.attn_q.weight.in_sum2".into(),
                vec![64],
                GgmlType::F32
            ),
            ("blk.1.attn_q.weight.counts".into(), vec![1], GgmlType::F32),
        ]
    );
}

#[test]
fn legacy_round_trip_keeps_importance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("imatrix.dat");
    let m = sample();
    m.write_legacy(&path).expect("write");
    let back = Imatrix::read(&path).expect("read");
    assert_eq!(back.chunk_count, 3);
    assert_eq!(back.chunk_size, LEGACY_CHUNK_SIZE);
    assert_eq!(
        back.datasets,
        vec!["more.txt".to_string()],
        "the last dataset is kept"
    );
    for e in &m.entries {
        let want = e.importance();
        let got = back.importance_for(&e.name).expect("entry present");
        assert_eq!(got.len(), want.len(), "{}", e.name);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{} [{i}]: {g} vs {w}",
                e.name
            );
        }
    }

    // Legacy → struct → legacy is byte-identical.
    let again = dir.path().join("again.dat");
    back.write_legacy(&again).expect("rewrite");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        std::fs::read(&again).expect("read")
    );
}

/// A legacy file assembled by hand from the published layout.
fn hand_made_legacy() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&2i32.to_le_bytes()); // n_entries
    b.extend_from_slice(&8i32.to_le_bytes());
    b.extend_from_slice(b"output.w");
    b.extend_from_slice(&4i32.to_le_bytes()); // ncall
    b.extend_from_slice(&3i32.to_le_bytes()); // nval
    for v in [4.0f32, 8.0, 2.0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&1i32.to_le_bytes());
    b.extend_from_slice(b"a");
    b.extend_from_slice(&1i32.to_le_bytes());
    b.extend_from_slice(&1i32.to_le_bytes());
    b.extend_from_slice(&0.75f32.to_le_bytes());
    b.extend_from_slice(&10i32.to_le_bytes()); // chunk count
    b.extend_from_slice(&4i32.to_le_bytes());
    b.extend_from_slice(b"wiki");
    b
}

#[test]
fn hand_made_legacy_file_reads_and_writes_back_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hand.dat");
    let bytes = hand_made_legacy();
    std::fs::write(&path, &bytes).expect("write");
    let m = Imatrix::read(&path).expect("read");
    assert_eq!(m.entries.len(), 2);
    assert_eq!(m.entries[0].name, "output.w");
    assert_eq!(m.importance_for("output.w"), Some(vec![1.0, 2.0, 0.5]));
    assert_eq!(m.importance_for("a"), Some(vec![0.75]));
    assert_eq!(m.chunk_count, 10);
    assert_eq!(m.datasets, vec!["wiki".to_string()]);

    let out = dir.path().join("out.dat");
    m.write_legacy(&out).expect("write back");
    assert_eq!(std::fs::read(&out).expect("read"), bytes);
}

#[test]
fn legacy_file_without_trailer_is_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.dat");
    let mut bytes = hand_made_legacy();
    bytes.truncate(bytes.len() - 12);
    std::fs::write(&path, &bytes).expect("write");
    let m = Imatrix::read(&path).expect("read");
    assert_eq!(
        m.chunk_count, 4,
        "largest call count stands in for the chunk count"
    );
    assert!(m.datasets.is_empty());
}

fn read_err(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.dat");
    std::fs::write(&path, bytes).expect("write");
    let e = Imatrix::read(&path).expect_err("must fail");
    let s = e.to_string();
    assert!(s.contains("bad.dat"), "error names the file: {s}");
    s
}

#[test]
fn truncated_and_bad_legacy_files_are_errors() {
    let good = hand_made_legacy();
    // Too short for two entries at all.
    let s = read_err(&good[..30]);
    assert!(
        s.contains("entry count 2") && s.contains("truncated"),
        "{s}"
    );
    // Cut inside the second entry's name.
    let s = read_err(&good[..40]);
    assert!(
        s.contains("name of entry 1") && s.contains("truncated"),
        "{s}"
    );
    // Cut inside the first entry's values (with a single-entry count).
    let mut b = good[..30].to_vec();
    b[0..4].copy_from_slice(&1i32.to_le_bytes());
    let s = read_err(&b);
    assert!(
        s.contains("values of output.w") && s.contains("truncated"),
        "{s}"
    );
    // Cut inside the trailer's dataset name.
    let s = read_err(&good[..good.len() - 2]);
    assert!(s.contains("dataset"), "{s}");
    // A value count larger than the file.
    let mut b = good.clone();
    b[20..24].copy_from_slice(&1_000_000i32.to_le_bytes());
    let s = read_err(&b);
    assert!(
        s.contains("values of output.w") && s.contains("4000000 bytes"),
        "{s}"
    );
    // A negative name length.
    let mut b = good.clone();
    b[4..8].copy_from_slice(&(-3i32).to_le_bytes());
    let s = read_err(&b);
    assert!(s.contains("negative"), "{s}");
    // Zero values.
    let mut b = good.clone();
    b[20..24].copy_from_slice(&0i32.to_le_bytes());
    let s = read_err(&b);
    assert!(s.contains("output.w") && s.contains("no values"), "{s}");
    // Junk after the trailer.
    let mut b = good.clone();
    b.extend_from_slice(b"xyz");
    let s = read_err(&b);
    assert!(s.contains("unexpected bytes"), "{s}");
    // An absurd entry count.
    let s = read_err(&i32::MAX.to_le_bytes());
    assert!(s.contains("entry count"), "{s}");
    // Empty file.
    let s = read_err(&[]);
    assert!(s.contains("entry count"), "{s}");
}

fn write_gguf(path: &Path, meta: Vec<(String, Value)>, tensors: Vec<(&str, Vec<u64>, Vec<f32>)>) {
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|(n, s, _)| TensorSpec::new(*n, s.clone(), GgmlType::F32))
        .collect();
    let file = std::fs::File::create(path).expect("create");
    let mut w = Writer::new(file, &meta, &specs).expect("writer");
    for (n, _, data) in &tensors {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_tensor(n, &bytes).expect("tensor");
    }
    w.finish().expect("finish");
}

#[test]
fn bad_gguf_imatrices_name_the_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = || vec![("general.type".to_string(), Value::String("imatrix".into()))];

    let p = dir.path().join("mismatch.gguf");
    write_gguf(
        &p,
        meta(),
        vec![
            ("blk.0.ffn_up.weight.in_sum2", vec![4, 2], vec![1.0; 8]),
            ("blk.0.ffn_up.weight.counts", vec![1, 3], vec![1.0; 3]),
        ],
    );
    let s = Imatrix::read(&p).expect_err("counts mismatch").to_string();
    assert!(
        s.contains("mismatch.gguf") && s.contains("blk.0.ffn_up.weight"),
        "{s}"
    );

    let p = dir.path().join("nocounts.gguf");
    write_gguf(
        &p,
        meta(),
        vec![("x.weight.in_sum2", vec![4], vec![1.0; 4])],
    );
    let s = Imatrix::read(&p).expect_err("no counts").to_string();
    assert!(s.contains("x.weight") && s.contains("no counts"), "{s}");

    // A model GGUF is not an importance matrix.
    let p = dir.path().join("model.gguf");
    write_gguf(
        &p,
        vec![(
            "general.architecture".to_string(),
            Value::String("llama".into()),
        )],
        vec![("token_embd.weight", vec![4, 2], vec![0.0; 8])],
    );
    let e = Imatrix::read(&p).expect_err("model");
    assert!(matches!(e, ImatrixError::BadFile { .. }), "{e}");
    assert!(e.to_string().contains("is this a model"), "{e}");
}

#[test]
fn empty_imatrices_are_refused_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m = sample();
    for e in &mut m.entries {
        e.counts.iter_mut().for_each(|c| *c = 0.0);
    }
    for name in ["e.gguf", "e.dat"] {
        let path = dir.path().join(name);
        let r = if name.ends_with("gguf") {
            m.write_gguf(&path)
        } else {
            m.write_legacy(&path)
        };
        assert!(
            matches!(r, Err(ImatrixError::Empty { .. })),
            "{name}: {r:?}"
        );
        assert!(!path.exists());
    }
    // A legacy file with zero entries (llama.cpp: "no data in file").
    let s = read_err(&[0, 0, 0, 0]);
    assert!(s.contains("no data"), "{s}");
}

#[test]
fn writing_a_malformed_entry_fails_and_leaves_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m = sample();
    m.entries[0].sums.pop(); // 63 sums for one count is fine; make it not divide:
    m.entries[1].sums.pop(); // 47 sums for 3 experts is not
    let path = dir.path().join("bad.gguf");
    let s = m.write_gguf(&path).expect_err("bad entry").to_string();
    assert!(s.contains("blk.0.ffn_down_exps.weight"), "{s}");
    assert!(!path.exists());
    let path = dir.path().join("bad.dat");
    assert!(m.write_legacy(&path).is_err());
    assert!(!path.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("ls").count(),
        0,
        "no temp files left"
    );
}
