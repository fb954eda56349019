//! Every weight format's matmul against a float64 reference on random rows.
//!
//! The reference multiplies the weights as the format stores them (quantised, then
//! expanded by the quant crate) by the exact activations in f64. Formats whose
//! kernels quantise the activations to 8 bits get a bound derived from that
//! rounding: each activation moves by at most half a step (`amax / 254` of its
//! block), so the dot product moves by at most `Σ|w| · amax / 254` per block.

use quern_formats::GgmlType;
use quern_runtime::backend::{Backend, WeightView};
use quern_runtime::cpu::{CpuBackend, Isa};
use quern_runtime::precision::{uses_16bit_acts, ActBits};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // Uniform in [-1, 1), never exactly zero.
        let u = (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        if u == 0.0 {
            0.5
        } else {
            u
        }
    }
}

/// Block size of the activations the AVX2 kernel for `ty` uses (0: float
/// activations); the portable path rounds no more than that. 16-bit codes
/// (`bits`) come in blocks of 32 for every format.
fn act_block(ty: GgmlType, bits: ActBits) -> usize {
    if uses_16bit_acts(ty, bits) {
        return 32;
    }
    match ty {
        GgmlType::Q8_0 => 32,
        GgmlType::Q4_0
        | GgmlType::Q4_1
        | GgmlType::Q5_0
        | GgmlType::Q5_1
        | GgmlType::Iq4Nl
        | GgmlType::Iq4Xs => 32,
        GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => 256,
        _ => 0,
    }
}

const TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4K,
    GgmlType::Q6K,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q5K,
    GgmlType::Iq4Nl,
    GgmlType::Iq4Xs,
];

/// Rows of `cols` values of `w` quantised to `ty`, as the file stores them.
fn quantized(ty: GgmlType, w: &[f32], cols: usize) -> Vec<u8> {
    let rb = quern_quant::row_bytes(ty, cols).expect("whole blocks");
    let mut data = vec![0u8; w.len() / cols * rb];
    for (s, d) in w.chunks_exact(cols).zip(data.chunks_exact_mut(rb)) {
        quern_quant::quantize_row(ty, s, None, d).expect("quantize");
    }
    data
}

fn check(ty: GgmlType, backend: &CpuBackend, cols: usize, rows: usize, n_tokens: usize, seed: u64) {
    let mut rng = Rng(seed);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.next()).collect();
    // Activations with a few large values, as real hidden states have.
    let x: Vec<f32> = (0..n_tokens * cols)
        .map(|i| rng.next() * if i % 37 == 0 { 8.0 } else { 1.0 })
        .collect();
    let row_bytes = quern_quant::row_bytes(ty, cols).expect("whole blocks");
    let mut data = vec![0u8; rows * row_bytes];
    for (src, dst) in w.chunks_exact(cols).zip(data.chunks_exact_mut(row_bytes)) {
        quern_quant::quantize_row(ty, src, None, dst).expect("quantize");
    }
    let mut wq = vec![0f32; rows * cols];
    for (src, dst) in data.chunks_exact(row_bytes).zip(wq.chunks_exact_mut(cols)) {
        quern_quant::dequantize_row(ty, src, dst).expect("dequantize");
    }
    let view = WeightView {
        name: "test",
        ty,
        rows,
        cols,
        data: &data,
    };
    // Poisoned: an element no work item writes stays NaN and fails below.
    let mut out = vec![f32::NAN; n_tokens * rows];
    backend
        .matmul(&view, &x, n_tokens, &mut out)
        .expect("matmul");
    let ab = act_block(ty, backend.act_bits());
    let sixteen = uses_16bit_acts(ty, backend.act_bits());
    for t in 0..n_tokens {
        let xt = &x[t * cols..(t + 1) * cols];
        for r in 0..rows {
            let wr = &wq[r * cols..(r + 1) * cols];
            let exact: f64 = wr.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
            let magnitude: f64 = wr
                .iter()
                .zip(xt)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
            let mut bound = 2e-6 * magnitude;
            if ab > 0 {
                // Half a step of the activation codes: 8-bit, or 16-bit for Q8_0
                // (and for the 4- and 5-bit formats under 16-bit activations).
                let steps = if sixteen { 65534.0 } else { 254.0 };
                for (wb, xb) in wr.chunks(ab).zip(xt.chunks(ab)) {
                    let amax = xb.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
                    let wsum: f64 = wb.iter().map(|&v| (v as f64).abs()).sum();
                    bound += wsum * amax / steps * 1.001;
                }
            }
            let got = out[t * rows + r] as f64;
            assert!(
                (got - exact).abs() <= bound,
                "{ty} {:?} cols {cols} token {t} row {r}: got {got}, exact {exact}, bound {bound}",
                backend.isa()
            );
            // The bound is meaningful: far below the size of the terms.
            assert!(
                bound < 0.1 * magnitude,
                "{ty}: bound {bound} vs {magnitude}"
            );
        }
    }
}

/// The levels to test: each one this CPU has (a missing one is reported, not
/// silently replaced by the level below).
fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Portable];
    for isa in [Isa::Avx2, Isa::Avx512Vnni] {
        if CpuBackend::with_isa(isa).isa() == isa {
            v.push(isa);
        } else {
            eprintln!("notice: this CPU lacks {isa:?}; its kernels were not tested");
        }
    }
    v
}

#[test]
fn every_format_matches_float64_reference() {
    let mut seed = 1;
    for isa in isas() {
        let backend = CpuBackend::with_isa(isa);
        for &ty in TYPES {
            for cols in [256, 512, 1536] {
                for (rows, n_tokens) in [(3, 1), (37, 3), (20, 6)] {
                    seed += 1;
                    check(ty, &backend, cols, rows, n_tokens, seed);
                }
            }
            // Prefill: several token blocks, four-token tiles and a remainder,
            // more rows than one work item holds.
            seed += 1;
            check(ty, &backend, 256, 300, 71, seed);
        }
    }
}

/// The four-row kernels (groups of four rows, four tokens at a time, the rest
/// one by one) on row counts that are not multiples of four, token counts that
/// are not multiples of four, and rows split across work items; and the same
/// products from the one-row kernels agree with them.
#[test]
fn four_row_kernels_on_ragged_shapes() {
    for isa in isas() {
        if isa != Isa::Portable {
            four_row_kernels_on_ragged_shapes_with(isa);
        }
    }
}

fn four_row_kernels_on_ragged_shapes_with(isa: Isa) {
    let tiled = CpuBackend::with_isa(isa);
    let mut seed = 1000;
    for &ty in TYPES {
        for cols in [256, 768] {
            for (rows, n_tokens) in [(4, 1), (5, 2), (7, 4), (8, 5), (11, 9), (13, 1), (70, 67)] {
                seed += 1;
                check(ty, &tiled, cols, rows, n_tokens, seed);
            }
        }
    }
    let single = CpuBackend::with_isa(isa).with_tiles(false);
    let mut rng = Rng(5);
    let (cols, rows, n) = (512, 22, 7);
    let x: Vec<f32> = (0..n * cols).map(|_| rng.next()).collect();
    for &ty in TYPES {
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.next()).collect();
        let data = quantized(ty, &w, cols);
        let view = WeightView {
            name: "t",
            ty,
            rows,
            cols,
            data: &data,
        };
        let (mut o1, mut o2) = (vec![f32::NAN; n * rows], vec![f32::NAN; n * rows]);
        single.matmul(&view, &x, n, &mut o1).expect("one-row");
        tiled.matmul(&view, &x, n, &mut o2).expect("four-row");
        for (u, v) in o1.iter().zip(&o2) {
            assert!((u - v).abs() <= 1e-4 * u.abs().max(1.0), "{ty}: {u} vs {v}");
        }
    }
}

#[test]
fn short_rows_of_32_value_formats() {
    for isa in isas() {
        short_rows_with(isa);
    }
}

fn short_rows_with(isa: Isa) {
    let backend = CpuBackend::with_isa(isa);
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::F16,
    ] {
        // One block, an odd count (the two-block kernels' tail), a count
        // that leaves two blocks after the four-block loop, and counts with
        // whole chunks of sixteen blocks and a tail (SmolLM2's 576; 33).
        for cols in [32, 96, 160, 192, 224, 576, 1056] {
            check(ty, &backend, cols, 5, 2, cols as u64);
            check(ty, &backend, cols, 9, 5, cols as u64 + 1);
        }
    }
}

#[test]
fn avx2_and_portable_agree() {
    let (p, a) = (
        CpuBackend::with_isa(Isa::Portable),
        CpuBackend::with_isa(Isa::Avx2),
    );
    if a.isa() != Isa::Avx2 {
        eprintln!("notice: this CPU lacks AVX2; only the portable path was tested");
        return;
    }
    let mut rng = Rng(99);
    let cols = 1024;
    let x: Vec<f32> = (0..cols).map(|_| rng.next()).collect();
    for &ty in TYPES {
        let w: Vec<f32> = (0..4 * cols).map(|_| rng.next()).collect();
        let data = quantized(ty, &w, cols);
        let view = WeightView {
            name: "t",
            ty,
            rows: 4,
            cols,
            data: &data,
        };
        let (mut o1, mut o2) = (vec![0f32; 4], vec![0f32; 4]);
        p.matmul(&view, &x, 1, &mut o1).expect("portable");
        a.matmul(&view, &x, 1, &mut o2).expect("avx2");
        for (u, v) in o1.iter().zip(&o2) {
            assert!((u - v).abs() <= 1e-4 * u.abs().max(1.0), "{ty}: {u} vs {v}");
        }
    }
}

/// The AVX-512 VNNI kernels against the AVX2 ones on the same products: decode
/// (one token) and prefill (tiles and leftovers), rows of many lengths
/// including SmolLM2's 576 (18 blocks of 32, 2.25 of 256: not a K-quant).
#[test]
fn vnni_and_avx2_agree() {
    let (a, v) = (
        CpuBackend::with_isa(Isa::Avx2),
        CpuBackend::with_isa(Isa::Avx512Vnni),
    );
    if v.isa() != Isa::Avx512Vnni {
        eprintln!("notice: this CPU lacks AVX-512 VNNI; its kernels were not compared");
        return;
    }
    let mut rng = Rng(4242);
    for &ty in TYPES {
        for cols in [256, 512, 576, 768, 1280, 1536, 2816] {
            if cols % ty.block_size() != 0 {
                continue;
            }
            for (rows, n) in [(9, 1), (6, 5), (13, 16), (40, 1), (35, 9), (48, 17)] {
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| rng.next() * if i % 29 == 0 { 6.0 } else { 1.0 })
                    .collect();
                let w: Vec<f32> = (0..rows * cols).map(|_| rng.next()).collect();
                let data = quantized(ty, &w, cols);
                let view = WeightView {
                    name: "t",
                    ty,
                    rows,
                    cols,
                    data: &data,
                };
                let (mut o1, mut o2) = (vec![f32::NAN; n * rows], vec![f32::NAN; n * rows]);
                a.matmul(&view, &x, n, &mut o1).expect("avx2");
                v.matmul(&view, &x, n, &mut o2).expect("vnni");
                // Same integer products and scales; only the order of the float
                // additions differs.
                let scale: f32 = o1.iter().fold(0f32, |m, u| m.max(u.abs()));
                for (u, w) in o1.iter().zip(&o2) {
                    assert!(
                        (u - w).abs() <= 1e-4 * scale.max(1.0),
                        "{ty} cols {cols} rows {rows} tokens {n}: avx2 {u} vs vnni {w}"
                    );
                }
            }
        }
    }
}

/// The 4- and 5-bit formats on 16-bit activation codes (`precision`), every
/// instruction set: within half a 16-bit step of the exact product (a bound
/// 258 times tighter than the 8-bit one, which 8-bit codes would break), on
/// SmolLM2's row lengths, in decode and prefill; and the AVX2 kernels agree
/// with the portable ones.
#[test]
fn sixteen_bit_activation_kernels() {
    let six = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q4K,
        GgmlType::Q6K,
    ];
    let mut seed = 7000;
    for isa in isas() {
        let backend = CpuBackend::with_isa(isa).with_act_bits(ActBits::Sixteen);
        for ty in six {
            for cols in [256, 576, 1536] {
                if cols % ty.block_size() != 0 {
                    continue;
                }
                for (rows, n_tokens) in [(3, 1), (37, 3), (9, 70)] {
                    seed += 1;
                    check(ty, &backend, cols, rows, n_tokens, seed);
                }
            }
        }
    }
    let (p, a) = (
        CpuBackend::with_isa(Isa::Portable).with_act_bits(ActBits::Sixteen),
        CpuBackend::with_isa(Isa::Avx512Vnni).with_act_bits(ActBits::Sixteen),
    );
    if a.isa() == Isa::Portable {
        return;
    }
    let mut rng = Rng(123);
    let (cols, rows, n) = (1536, 6, 5);
    let x: Vec<f32> = (0..n * cols).map(|_| rng.next()).collect();
    for ty in six {
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.next()).collect();
        let data = quantized(ty, &w, cols);
        let view = WeightView {
            name: "t",
            ty,
            rows,
            cols,
            data: &data,
        };
        let (mut o1, mut o2) = (vec![f32::NAN; n * rows], vec![f32::NAN; n * rows]);
        p.matmul(&view, &x, n, &mut o1).expect("portable");
        a.matmul(&view, &x, n, &mut o2).expect("simd");
        // The same integer sums; the float order differs.
        let scale: f32 = o1.iter().fold(0f32, |m, u| m.max(u.abs()));
        for (u, v) in o1.iter().zip(&o2) {
            assert!((u - v).abs() <= 1e-5 * scale.max(1.0), "{ty}: {u} vs {v}");
        }
    }
}

#[test]
fn isa_names() {
    assert_eq!(Isa::from_name("avx2"), Some(Isa::Avx2));
    assert_eq!(Isa::from_name("AVX512VNNI"), Some(Isa::Avx512Vnni));
    assert_eq!(Isa::from_name("portable"), Some(Isa::Portable));
    assert_eq!(Isa::from_name("sse9"), None);
    assert!(Isa::Portable < Isa::Avx2 && Isa::Avx2 < Isa::Avx512Vnni);
}

#[test]
fn bad_shapes_are_errors() {
    let backend = CpuBackend::new();
    let data = vec![0u8; 34];
    let view = WeightView {
        name: "blk.0.attn_q.weight",
        ty: GgmlType::Q8_0,
        rows: 2,
        cols: 32,
        data: &data,
    };
    let mut out = vec![0f32; 2];
    let err = backend
        .matmul(&view, &[1.0; 32], 1, &mut out)
        .expect_err("short data");
    assert!(err.to_string().contains("blk.0.attn_q.weight"), "{err}");
}
