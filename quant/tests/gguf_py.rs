//! Bit-identity against PyPI `gguf` (llama.cpp's Python package): quantisers of the
//! formats it implements, and dequantisers of every format on random valid blocks and
//! on our own quantiser's output.

mod common;

use common::{
    f16_fields, python_with, read_f32, row, run_python, script, write_f32, Rng, ROW_KINDS,
};
use quern_quant::{dequantize_row, quantize_row, GgmlType};

const ROW_LEN: usize = 256;

fn rows(seed: u64, per_kind: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for kind in ROW_KINDS {
        for _ in 0..per_kind {
            out.extend(row(&mut rng, kind, ROW_LEN));
        }
    }
    out
}

fn ours(ty: GgmlType, src: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; src.len() / ty.block_size() * ty.type_size()];
    for (x, o) in src
        .chunks(ROW_LEN)
        .zip(out.chunks_mut(ROW_LEN / ty.block_size() * ty.type_size()))
    {
        quantize_row(ty, x, None, o).expect("quantize");
    }
    out
}

#[test]
fn quantisers_match_gguf_py_bit_for_bit() {
    let Some(py) = python_with(&["numpy", "gguf"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let src = rows(1, 6);
    let input = dir.path().join("in.f32");
    write_f32(&input, &src);
    for ty in [
        GgmlType::F16,
        GgmlType::Bf16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
    ] {
        let out = dir.path().join(format!("{ty}.bin"));
        run_python(
            &py,
            &script("gguf_ref.py"),
            &[
                "quantize",
                ty.name(),
                &ROW_LEN.to_string(),
                input.to_str().unwrap(),
                out.to_str().unwrap(),
            ],
        );
        let theirs = std::fs::read(&out).expect("reading gguf-py output");
        let mine = ours(ty, &src);
        assert_eq!(mine.len(), theirs.len(), "{ty}: byte count");
        if let Some(i) = mine.iter().zip(&theirs).position(|(a, b)| a != b) {
            let block = i / ty.type_size();
            panic!(
                "{ty}: first difference at byte {i} (block {block}, row {}): ours {:?} gguf-py {:?}",
                block * ty.block_size() / ROW_LEN,
                &mine[block * ty.type_size()..(block + 1) * ty.type_size()],
                &theirs[block * ty.type_size()..(block + 1) * ty.type_size()],
            );
        }
    }
}

fn random_blocks(rng: &mut Rng, ty: GgmlType, n_blocks: usize) -> Vec<u8> {
    if !ty.is_quantized() {
        let vals: Vec<f32> = (0..n_blocks).map(|_| rng.normal()).collect();
        return ours(ty, &vals[..n_blocks / ROW_LEN * ROW_LEN]);
    }
    let ts = ty.type_size();
    let mut bytes: Vec<u8> = (0..n_blocks * ts).map(|_| rng.next_u64() as u8).collect();
    for b in bytes.chunks_mut(ts) {
        for &off in f16_fields(ty) {
            let v = half::f16::from_f32(rng.normal() * 0.01);
            b[off..off + 2].copy_from_slice(&v.to_bits().to_le_bytes());
        }
    }
    bytes
}

#[test]
fn dequantisers_match_gguf_py_bit_for_bit() {
    let Some(py) = python_with(&["numpy", "gguf"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng::new(2);
    let src = rows(3, 2);
    for ty in [
        GgmlType::F16,
        GgmlType::Bf16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Iq4Nl,
        GgmlType::Iq4Xs,
    ] {
        let mut bytes = random_blocks(&mut rng, ty, 2048 / ty.block_size().max(1) * 8);
        bytes.extend(ours(ty, &src));
        let input = dir.path().join(format!("{ty}.bin"));
        let output = dir.path().join(format!("{ty}.f32"));
        std::fs::write(&input, &bytes).expect("writing blocks");
        run_python(
            &py,
            &script("gguf_ref.py"),
            &[
                "dequantize",
                ty.name(),
                input.to_str().unwrap(),
                output.to_str().unwrap(),
            ],
        );
        let theirs = read_f32(&output);
        let mut mine = vec![0f32; bytes.len() / ty.type_size() * ty.block_size()];
        dequantize_row(ty, &bytes, &mut mine).expect("dequantize");
        assert_eq!(mine.len(), theirs.len(), "{ty}: value count");
        for (i, (a, b)) in mine.iter().zip(&theirs).enumerate() {
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{ty}: value {i}: ours {a} gguf-py {b}"
            );
        }
    }
}
