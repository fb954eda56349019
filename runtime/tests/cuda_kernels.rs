//! The CUDA GEMV kernels against a float64 reference and against the CPU backend.
//!
//! Weights are random rows quantised by the quant crate (never zeros); the
//! reference multiplies the values those blocks hold (the quant crate's
//! dequantiser) by the exact activations in f64. The output is poisoned with NaN
//! on the host and on the device before every product, so an output the kernel
//! skips fails. Without a CUDA device the tests print why and pass, unless
//! `QUERN_REQUIRE_CUDA=1`, when they fail.

mod common;

use quern_formats::GgmlType;
use quern_runtime::backend::{Backend, WeightView};
use quern_runtime::cpu::CpuBackend;
use quern_runtime::cuda::bench::Rng;
use quern_runtime::cuda::{
    act_quantisation, packed, quantises_activations, supported_types, CudaBackend,
};
use quern_runtime::precision::uses_16bit_acts;

fn backend() -> Option<CudaBackend> {
    common::cuda_backend()
}

/// Whether the CPU backend quantises the activations to 8 bits for `ty` (then it
/// is only close to the exact product, not equal to it). Q8_0 weights meet 16-bit
/// activation codes there (`cpu/act.rs`), so the GPU's 8-bit ones differ from them.
fn cpu_quantises_acts(ty: GgmlType) -> bool {
    // Blocks of 32 (Q4_0/1, Q5_0/1, IQ4_NL/XS) or of 256 (the K formats), as
    // `CpuBackend`'s kernel table chooses.
    matches!(
        ty,
        GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Iq4Nl
            | GgmlType::Iq4Xs
            | GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
    )
}

struct Case {
    data: Vec<u8>,
    dequant: Vec<f32>,
}

fn make_weights(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Case {
    let mut rng = Rng(seed);
    let rb = cols / ty.block_size() * ty.type_size();
    let mut data = vec![0u8; rows * rb];
    let mut dequant = vec![0f32; rows * cols];
    let mut row = vec![0f32; cols];
    for (r, d) in data.chunks_exact_mut(rb).enumerate() {
        // Rows of different magnitudes, so scales vary between rows.
        let mag = 0.1 + (r % 7) as f32;
        for v in row.iter_mut() {
            *v = rng.next_f32() * mag;
        }
        quern_quant::quantize_row(ty, &row, None, d).expect("quantise");
        quern_quant::dequantize_row(ty, d, &mut dequant[r * cols..(r + 1) * cols])
            .expect("dequantise");
    }
    Case { data, dequant }
}

fn rel_err(a: &[f32], reference: &[f64]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &r) in a.iter().zip(reference) {
        num += (x as f64 - r) * (x as f64 - r);
        den += r * r;
    }
    (num / den.max(1e-300)).sqrt()
}

fn check(be: &CudaBackend, ty: GgmlType, rows: usize, cols: usize, batches: &[usize], seed: u64) {
    let case = make_weights(ty, rows, cols, seed);
    let w = WeightView {
        name: "test",
        ty,
        rows,
        cols,
        data: &case.data,
    };
    let cpu = CpuBackend::new();
    let mut rng = Rng(seed ^ 0xabcdef);
    for &n in batches {
        let x: Vec<f32> = (0..n * cols).map(|_| rng.next_f32()).collect();
        let q8 = quantises_activations(ty);
        let mut reference = vec![0f64; n * rows];
        let mut abs = vec![0f64; n * rows];
        // How far quantised activations may move each output: every activation
        // moves by at most half a step, amax / (2 · largest code) of its block
        // (32 values at 8 bits, or 256 at 8 bits, or 32 at 16 bits).
        let (ablock, amaxq) = act_quantisation(ty).unwrap_or((32, 127));
        let mut act_bound = vec![0f64; n * rows];
        for t in 0..n {
            let xt = &x[t * cols..(t + 1) * cols];
            let half_step: Vec<f64> = xt
                .chunks(ablock)
                .map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / (2.0 * amaxq as f64))
                .collect();
            for r in 0..rows {
                let (mut s, mut a, mut q) = (0f64, 0f64, 0f64);
                for c in 0..cols {
                    let w = case.dequant[r * cols + c] as f64;
                    let p = w * xt[c] as f64;
                    s += p;
                    a += p.abs();
                    q += w.abs() * half_step[c / ablock];
                }
                reference[t * rows + r] = s;
                abs[t * rows + r] = a;
                act_bound[t * rows + r] = if q8 { q * 1.0001 } else { 0.0 };
            }
        }
        let mut out = vec![f32::NAN; n * rows];
        be.matmul(&w, &x, n, &mut out)
            .unwrap_or_else(|e| panic!("{ty} {rows}x{cols} batch {n}: {e}"));
        let what = format!("{ty} {rows}x{cols} batch {n}");
        for (i, &o) in out.iter().enumerate() {
            let (r, a, q) = (reference[i], abs[i], act_bound[i]);
            assert!(o.is_finite(), "{what}: output {i} is {o} (not written?)");
            // f32 accumulation of `cols` products stays far inside 1e-5 · Σ|w x|.
            assert!(
                (o as f64 - r).abs() <= 1e-5 * a + q + 1e-30,
                "{what}: output {i} = {o}, reference {r} (sum |w x| {a}, activation bound {q})"
            );
        }
        let e = rel_err(&out, &reference);
        let bound = if q8 { 1e-2 } else { 1e-5 };
        assert!(e < bound, "{what}: ‖out − ref‖/‖ref‖ = {e:e}");

        let mut cpu_out = vec![f32::NAN; n * rows];
        cpu.matmul(&w, &x, n, &mut cpu_out).expect("cpu matmul");
        let cpu_ref: Vec<f64> = cpu_out.iter().map(|&v| v as f64).collect();
        let e_cpu = rel_err(&out, &cpu_ref);
        // Where both quantise the activations the same way (blocks of 32, the same
        // rounding), only the order of the float sums differs; where one of them
        // does (or the CPU uses blocks of 256), by a fraction of a percent.
        // Where the GPU quantises the activations as the CPU backend does (the
        // repacked formats: 16-bit codes for Q8_0, one scale per 256 for the K
        // formats; 8 bits per 32 otherwise), both form the same integer sums.
        let cpu_scheme = match ty {
            t if uses_16bit_acts(t, cpu.act_bits()) => Some((32, 32767)),
            t if cpu_quantises_acts(t) && t.block_size() == 256 => Some((256, 127)),
            t if cpu_quantises_acts(t) => Some((32, 127)),
            _ => None,
        };
        let gpu_layout = packed::use_packed(ty) && packed::layout(ty, rows, cols).is_some();
        let same_acts = q8
            && cpu_scheme.is_some()
            && act_quantisation(ty) == cpu_scheme
            && (gpu_layout || ty.block_size() == 32);
        let bound = if same_acts {
            1e-5
        } else if q8 || cpu_quantises_acts(ty) {
            2e-2
        } else {
            1e-5
        };
        assert!(
            e_cpu < bound,
            "{what}: vs the CPU backend {e_cpu:e} (bound {bound:e})"
        );
    }
}

const BATCHES: &[usize] = &[1, 2, 3, 5, 8, 13, 16, 17, 40];

#[test]
fn every_format_matches_the_f64_reference_and_the_cpu() {
    let Some(be) = backend() else { return };
    let types: Vec<GgmlType> = supported_types().collect();
    assert_eq!(types.len(), 15);
    // Compile every module at once (one thread each) rather than one by one.
    be.prepare_types(&types).expect("compile the kernels");
    for (i, &ty) in types.iter().enumerate() {
        // A short row, a row of one chunk and a bit, a row of several chunks and a
        // partial one (chunks are 512..2048 elements), odd row counts so the last
        // warp's rows run past the end.
        for (j, &(rows, cols)) in [(37, 512), (300, 2304), (67, 4352)].iter().enumerate() {
            check(&be, ty, rows, cols, BATCHES, 1000 * i as u64 + j as u64);
        }
        if ty.block_size() == 32 {
            check(&be, ty, 19, 96, &[1, 4, 16], 77 + i as u64);
        }
        if !ty.is_quantized() {
            // Rows that are not a multiple of 8 elements: padded on the device.
            check(&be, ty, 5, 100, &[1, 3, 16, 20], 99 + i as u64);
        }
        be.clear_weights();
    }
}

#[test]
fn large_shape_batch_1_and_16() {
    let Some(be) = backend() else { return };
    for ty in [GgmlType::Q4_0, GgmlType::Q4K, GgmlType::Q6K, GgmlType::Q8_0] {
        check(&be, ty, 1024, 4096, &[1, 16], 5 + ty.id() as u64);
        be.clear_weights();
    }
}

/// The repacked formats (all seven) through the three kernel families and
/// every path of the warp kernels: one block per SM and 2 warps per block, so
/// each warp loops over several groups of rows (and the fused kernels' staging
/// serves many of them); the quantiser launch instead of the fused one; the
/// block kernels; and the pipelined ones' paths. SmolLM2-135M's row lengths
/// (576, 1536) and odd row counts.
#[test]
fn repacked_formats_through_every_kernel_path() {
    let packed = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q6K,
    ];
    let settings: [&[(&str, &str)]; 8] = [
        &[
            ("QUERN_CUDA_MMV_KERNEL", "warp"),
            ("QUERN_CUDA_MMW_BPS", "1"),
            ("QUERN_CUDA_MMW_WARPS", "2"),
        ],
        &[
            ("QUERN_CUDA_MMV_KERNEL", "warp"),
            ("QUERN_CUDA_MMW_FUSE", "0"),
            ("QUERN_CUDA_MMW_ROWS", "3"),
            ("QUERN_CUDA_MMW_UNITS", "4"),
        ],
        &[
            ("QUERN_CUDA_MMV_KERNEL", "warp"),
            ("QUERN_CUDA_MMW_ROWS", "4"),
            ("QUERN_CUDA_MMW_UNITS", "1"),
        ],
        &[("QUERN_CUDA_MMV_KERNEL", "block")],
        // The pipelined kernels (`pipe`: batches up to 4 on sm_90):
        // 3 blocks with 1 KiB stages, so each walks many row groups through
        // two reused stages; 8 warps per row (the cross-warp sums) over three
        // stages; the first copies before the wait for the previous kernel.
        &[
            ("QUERN_CUDA_MMV_KERNEL", "pipe"),
            ("QUERN_CUDA_MMP_BLOCKS", "3"),
            ("QUERN_CUDA_MMP_STAGE_KB", "1"),
            ("QUERN_CUDA_MMP_STAGES", "2"),
        ],
        &[
            ("QUERN_CUDA_MMV_KERNEL", "pipe"),
            ("QUERN_CUDA_MMP_BLOCKS", "5"),
            ("QUERN_CUDA_MMP_WPR", "8"),
            ("QUERN_CUDA_MMP_STAGES", "3"),
        ],
        &[
            ("QUERN_CUDA_MMV_KERNEL", "pipe"),
            ("QUERN_CUDA_MMP_EARLY", "1"),
        ],
        // Q8_0 on 8-bit activation codes (read at compile and launch: kept set
        // while this setting's products run).
        &[("QUERN_CUDA_Q8_ACT", "8")],
    ];
    for (si, set) in settings.iter().enumerate() {
        for (k, v) in set.iter() {
            std::env::set_var(k, v);
        }
        let Some(be) = backend() else {
            for (k, _) in set.iter() {
                std::env::remove_var(k);
            }
            return;
        };
        be.prepare_types(&packed).expect("compile the kernels");
        for (i, &ty) in packed.iter().enumerate() {
            let seed = 500 + 10 * si as u64 + i as u64;
            if ty.block_size() == 32 {
                check(&be, ty, 1001, 576, &[1, 2, 3, 4, 5, 16, 17], seed);
                check(&be, ty, 577, 1536, &[1, 4], seed + 1);
            } else {
                check(&be, ty, 1001, 1280, &[1, 2, 3, 4, 5, 16, 17], seed);
            }
            be.clear_weights();
        }
        for (k, _) in set.iter() {
            std::env::remove_var(k);
        }
    }
}

/// The int8 tensor-core kernels (`mmq_*`, mma.cu) of the seven repacked
/// formats: every batch size through them (`QUERN_CUDA_MMA_MIN=1`), each tile
/// width (`QUERN_CUDA_MMA_BN`), Q8_0 on 8-bit activation codes too, K split in
/// three (`QUERN_CUDA_MMA_SPLIT`); odd batch
/// sizes (1, 5, 17, 64, 100: tiles of tokens part-filled), row counts that are
/// not a multiple of the 64-row tile, and rows of 576 and 1536 values (not a
/// multiple of the 256-value step) beside whole steps.
#[test]
fn tensor_core_kernels_match_the_f64_reference_and_the_cpu() {
    let packed = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q6K,
    ];
    let settings: [&[(&str, &str)]; 7] = [
        &[("QUERN_CUDA_MMA_MIN", "1")],
        &[("QUERN_CUDA_MMA_MIN", "1"), ("QUERN_CUDA_MMA_BN", "8")],
        &[("QUERN_CUDA_MMA_MIN", "1"), ("QUERN_CUDA_MMA_BN", "16")],
        &[("QUERN_CUDA_MMA_MIN", "1"), ("QUERN_CUDA_MMA_BN", "32")],
        &[("QUERN_CUDA_MMA_MIN", "1"), ("QUERN_CUDA_MMA_BN", "64")],
        &[("QUERN_CUDA_MMA_MIN", "1"), ("QUERN_CUDA_Q8_ACT", "8")],
        // K split in three (uneven pieces), the partial sums added up.
        &[("QUERN_CUDA_MMA_MIN", "1"), ("QUERN_CUDA_MMA_SPLIT", "3")],
    ];
    // `QUERN_TEST_MMA_SETTINGS=0,4`: only those settings (memcheck runs).
    let only: Option<Vec<usize>> = std::env::var("QUERN_TEST_MMA_SETTINGS")
        .ok()
        .map(|v| v.split(',').filter_map(|p| p.trim().parse().ok()).collect());
    for (si, set) in settings.iter().enumerate() {
        if only.as_ref().is_some_and(|o| !o.contains(&si)) {
            continue;
        }
        for (k, v) in set.iter() {
            std::env::set_var(k, v);
        }
        let Some(be) = backend() else {
            for (k, _) in set.iter() {
                std::env::remove_var(k);
            }
            return;
        };
        assert!(be.use_mma(GgmlType::Q4_0, 1), "setting {set:?}");
        let types: &[GgmlType] = if si == 5 { &[GgmlType::Q8_0] } else { &packed };
        be.prepare_types(types).expect("compile the kernels");
        for (i, &ty) in types.iter().enumerate() {
            let seed = 900 + 10 * si as u64 + i as u64;
            let batches: &[usize] = if si == 0 {
                &[1, 5, 17, 64, 100]
            } else {
                &[3, 17, 64]
            };
            if ty.block_size() == 32 {
                check(&be, ty, 1001, 576, batches, seed);
                check(&be, ty, 77, 1536, batches, seed + 1);
            } else {
                check(&be, ty, 1001, 1280, batches, seed);
            }
            check(&be, ty, 130, 4352, &[9, 33], seed + 2);
            be.clear_weights();
        }
        for (k, _) in set.iter() {
            std::env::remove_var(k);
        }
    }
}

#[test]
fn a_changed_matrix_is_uploaded_again() {
    let Some(be) = backend() else { return };
    let (rows, cols) = (64, 512);
    let mut case = make_weights(GgmlType::Q8_0, rows, cols, 3);
    let x: Vec<f32> = {
        let mut rng = Rng(9);
        (0..cols).map(|_| rng.next_f32()).collect()
    };
    let run = |data: &[u8]| {
        let w = WeightView {
            name: "changing",
            ty: GgmlType::Q8_0,
            rows,
            cols,
            data,
        };
        let mut out = vec![f32::NAN; rows];
        be.matmul(&w, &x, 1, &mut out).expect("matmul");
        out
    };
    let a = run(&case.data);
    assert_eq!(a, run(&case.data), "the cached copy gives the same result");
    // Change the last code of the last row in place (same pointer and length;
    // the key samples the first and last bytes and 30 evenly spread between).
    let last = case.data.len() - 1;
    case.data[last] = case.data[last].wrapping_add(100);
    let b = run(&case.data);
    assert_ne!(a[rows - 1], b[rows - 1], "the change was not seen");
    assert_eq!(a[..rows - 1], b[..rows - 1]);
}

#[test]
fn without_a_device_the_error_is_one_line() {
    match CudaBackend::new(0) {
        Ok(be) => {
            // A device: a missing ordinal is the error to check instead.
            let e = CudaBackend::new(1000).err().expect("no device 1000");
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{msg}");
            eprintln!("device {}: {msg}", be.device_name());
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
        }
    }
}

/// The seven repacked formats on 16-bit activation codes (`QUERN_ACT_BITS=16`,
/// which the CPU backend made inside `check` reads too): the batch-1..16 GEMV
/// kernels and the tensor-core ones (`QUERN_CUDA_MMA_MIN=1`, with K split in
/// three), against the f64 reference within half a 16-bit step and against the
/// CPU within 1e-5 (both form sums of the same 16-bit codes); rows of
/// SmolLM2-135M's lengths.
#[test]
fn sixteen_bit_activations_match_the_f64_reference_and_the_cpu() {
    let packed = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q6K,
    ];
    let settings: [&[(&str, &str)]; 3] = [
        &[("QUERN_ACT_BITS", "16")],
        &[("QUERN_ACT_BITS", "16"), ("QUERN_CUDA_MMA_MIN", "1")],
        &[
            ("QUERN_ACT_BITS", "16"),
            ("QUERN_CUDA_MMA_MIN", "1"),
            ("QUERN_CUDA_MMA_SPLIT", "3"),
        ],
    ];
    for (si, set) in settings.iter().enumerate() {
        for (k, v) in set.iter() {
            std::env::set_var(k, v);
        }
        let Some(be) = backend() else {
            for (k, _) in set.iter() {
                std::env::remove_var(k);
            }
            return;
        };
        be.prepare_types(&packed).expect("compile the kernels");
        for (i, &ty) in packed.iter().enumerate() {
            assert_eq!(act_quantisation(ty), Some((32, 32767)), "{ty}");
            let seed = 900 + 10 * si as u64 + i as u64;
            if ty.block_size() == 32 {
                check(&be, ty, 1001, 576, &[1, 2, 4, 5, 16, 17, 64], seed);
                check(&be, ty, 577, 1536, &[1, 8, 100], seed + 1);
            } else {
                check(&be, ty, 1001, 1536, &[1, 2, 4, 5, 16, 17, 64], seed);
                check(&be, ty, 77, 4096, &[1, 100], seed + 1);
            }
            be.clear_weights();
        }
        for (k, _) in set.iter() {
            std::env::remove_var(k);
        }
    }
}
