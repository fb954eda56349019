//! Quality against llama.cpp's own quantisers (through the libggml that PyPI
//! llama-cpp-python ships): on the same matrices, our relative RMS error must be no
//! worse than theirs, with and without an importance vector. Q8_K must match exactly.

mod common;

use common::{importance, python_with, rel_rms, run_python, script, weight_matrix, write_f32, Rng};
use quern_quant::{dequantize_row, quantize_matrix, GgmlType};
use std::path::Path;

const COLS: usize = 4096;
const ROWS: usize = 8;

fn llama_quantize(
    py: &Path,
    dir: &Path,
    ty: GgmlType,
    src: &[f32],
    imp: Option<&[f32]>,
) -> Vec<u8> {
    let input = dir.join("in.f32");
    write_f32(&input, src);
    let imatrix = match imp {
        Some(w) => {
            let p = dir.join("imatrix.f32");
            write_f32(&p, w);
            p.to_string_lossy().into_owned()
        }
        None => "-".to_owned(),
    };
    let out = dir.join("out.bin");
    run_python(
        py,
        &script("llama_ref.py"),
        &[
            "quantize",
            &ty.id().to_string(),
            &COLS.to_string(),
            input.to_str().unwrap(),
            &imatrix,
            out.to_str().unwrap(),
        ],
    );
    std::fs::read(out).expect("reading llama.cpp output")
}

fn dequantized(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n];
    dequantize_row(ty, bytes, &mut y).expect("dequantize");
    y
}

#[test]
fn k_and_iq4_quantisers_are_no_worse_than_llama_cpp() {
    let Some(py) = python_with(&["numpy", "llama_cpp"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng::new(11);
    let src = weight_matrix(&mut rng, ROWS, COLS);
    let imp = importance(&mut rng, COLS);
    let mut failures = Vec::new();
    for ty in [
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Iq4Nl,
        GgmlType::Iq4Xs,
    ] {
        for w in [None, Some(imp.as_slice())] {
            let theirs = llama_quantize(&py, dir.path(), ty, &src, w);
            let mut mine = vec![0u8; theirs.len()];
            quantize_matrix(ty, &src, COLS, w, &mut mine).expect("quantize");
            let e_theirs = rel_rms(&src, &dequantized(ty, &theirs, src.len()), w);
            let e_mine = rel_rms(&src, &dequantized(ty, &mine, src.len()), w);
            let label = if w.is_some() { "imatrix" } else { "plain" };
            eprintln!(
                "{ty:7} {label:8} ours {e_mine:.5}  llama.cpp {e_theirs:.5}  ratio {:.4}",
                e_mine / e_theirs
            );
            if e_mine > e_theirs {
                failures.push(format!(
                    "{ty} {label}: ours {e_mine:.5} > llama.cpp {e_theirs:.5}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn q8_k_matches_llama_cpp_bit_for_bit() {
    let Some(py) = python_with(&["numpy", "llama_cpp"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng::new(12);
    let mut src = weight_matrix(&mut rng, 4, 1024);
    src[256..512].iter_mut().for_each(|x| *x = 0.0);
    let input = dir.path().join("in.f32");
    write_f32(&input, &src);
    let out = dir.path().join("out.bin");
    run_python(
        &py,
        &script("llama_ref.py"),
        &["q8k", input.to_str().unwrap(), out.to_str().unwrap()],
    );
    let theirs = std::fs::read(out).expect("reading llama.cpp output");
    let mut mine = vec![0u8; theirs.len()];
    quern_quant::quantize_row(GgmlType::Q8K, &src, None, &mut mine).expect("quantize");
    assert_eq!(mine, theirs);
}

/// Figures for the report, not a gate: relative RMS error of ours and llama.cpp's on
/// random 4096-wide matrices and on real tensors of the reference model, plus our
/// quantisation throughput. Run with
/// `cargo test --release -p quern-quant --test llama_cpp -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; slow in debug builds"]
fn measure_against_llama_cpp() {
    let Some(py) = python_with(&["numpy", "llama_cpp"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng::new(31);
    let mut cases: Vec<(String, usize, Vec<f32>)> = Vec::new();
    for m in 0..3 {
        cases.push((
            format!("random{m} 64x4096"),
            4096,
            weight_matrix(&mut rng, 64, 4096),
        ));
    }
    // The reference model's weights, built by ../shared/tools/make-reference-model.
    let model = std::env::var_os("QUERN_REFERENCE_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../.cache/reference/smollm2-135m/model.safetensors")
        });
    if model.exists() {
        let names = [
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.15.mlp.down_proj.weight",
            "model.layers.29.mlp.down_proj.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.10.mlp.gate_proj.weight",
        ];
        let mut args = vec![model.to_str().unwrap(), dir.path().to_str().unwrap()];
        args.extend(names);
        let listing = run_python(&py, &script("export_tensors.py"), &args);
        for (i, line) in listing.lines().enumerate() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let (rows, cols): (usize, usize) =
                (parts[1].parse().unwrap(), parts[2].parse().unwrap());
            let data = common::read_f32(&dir.path().join(format!("{i}.f32")));
            cases.push((format!("{} {rows}x{cols}", parts[0]), cols, data));
        }
    } else {
        eprintln!(
            "notice: {} not found; random matrices only",
            model.display()
        );
    }
    for (name, cols, src) in &cases {
        let imp = importance(&mut rng, *cols);
        for ty in [
            GgmlType::Q2K,
            GgmlType::Q3K,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
            GgmlType::Iq4Nl,
            GgmlType::Iq4Xs,
        ] {
            if cols % ty.block_size() != 0 {
                continue;
            }
            for w in [None, Some(imp.as_slice())] {
                let sub = dir.path().join("q");
                std::fs::create_dir_all(&sub).unwrap();
                let theirs = {
                    let input = sub.join("in.f32");
                    write_f32(&input, src);
                    let imatrix = match w {
                        Some(w) => {
                            let p = sub.join("imatrix.f32");
                            write_f32(&p, w);
                            p.to_string_lossy().into_owned()
                        }
                        None => "-".to_owned(),
                    };
                    let out = sub.join("out.bin");
                    run_python(
                        &py,
                        &script("llama_ref.py"),
                        &[
                            "quantize",
                            &ty.id().to_string(),
                            &cols.to_string(),
                            input.to_str().unwrap(),
                            &imatrix,
                            out.to_str().unwrap(),
                        ],
                    );
                    std::fs::read(out).unwrap()
                };
                let mut mine = vec![0u8; theirs.len()];
                let t = std::time::Instant::now();
                quantize_matrix(ty, src, *cols, w, &mut mine).expect("quantize");
                let secs = t.elapsed().as_secs_f64();
                let e_theirs = rel_rms(src, &dequantized(ty, &theirs, src.len()), w);
                let e_mine = rel_rms(src, &dequantized(ty, &mine, src.len()), w);
                let label = if w.is_some() { "imatrix" } else { "plain" };
                println!(
                    "{name:48} {ty:7} {label:8} ours {e_mine:.5} llama.cpp {e_theirs:.5} ratio {:.4}  ({:.1} Mvalues/s)",
                    e_mine / e_theirs,
                    src.len() as f64 / secs / 1e6
                );
            }
        }
    }
}

#[test]
fn reference_formats_match_llama_cpp_bit_for_bit() {
    let Some(py) = python_with(&["numpy", "llama_cpp"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng::new(13);
    let src = weight_matrix(&mut rng, 4, COLS);
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
    ] {
        let theirs = llama_quantize(&py, dir.path(), ty, &src, None);
        let mut mine = vec![0u8; theirs.len()];
        quantize_matrix(ty, &src, COLS, None, &mut mine).expect("quantize");
        assert!(
            mine == theirs,
            "{ty}: differs from llama.cpp's reference quantiser"
        );
    }
}

#[test]
fn dequantisers_match_llama_cpp_bit_for_bit() {
    let Some(py) = python_with(&["numpy", "llama_cpp"]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng::new(14);
    let src = weight_matrix(&mut rng, 2, 1024);
    for ty in [
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
        // Random blocks (f16 fields kept finite) followed by our quantiser's output.
        let ts = ty.type_size();
        let mut bytes: Vec<u8> = (0..64 * ts).map(|_| rng.next_u64() as u8).collect();
        for b in bytes.chunks_mut(ts) {
            for &off in common::f16_fields(ty) {
                let v = half::f16::from_f32(rng.normal() * 0.01);
                b[off..off + 2].copy_from_slice(&v.to_bits().to_le_bytes());
            }
        }
        let mut q = vec![0u8; src.len() / ty.block_size() * ts];
        quantize_matrix(ty, &src, 1024, None, &mut q).expect("quantize");
        bytes.extend(q);
        let n = bytes.len() / ts * ty.block_size();
        let (input, output) = (dir.path().join("in.bin"), dir.path().join("out.f32"));
        std::fs::write(&input, &bytes).expect("writing blocks");
        run_python(
            &py,
            &script("llama_ref.py"),
            &[
                "dequantize",
                ty.name(),
                &n.to_string(),
                input.to_str().unwrap(),
                output.to_str().unwrap(),
            ],
        );
        let theirs = common::read_f32(&output);
        let mine = dequantized(ty, &bytes, n);
        let same = mine
            .iter()
            .zip(&theirs)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same && mine.len() == theirs.len(),
            "{ty}: differs from llama.cpp"
        );
    }
}
