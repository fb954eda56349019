//! Round trips through every format against float64 references: error bounds on many
//! row lengths and row kinds, importance weighting, and typed errors for bad lengths.

mod common;

use common::{importance, rel_rms, row, weight_matrix, Rng, RowKind, ROW_KINDS};
use quern_quant::{
    can_dequantize, can_quantize, dequantize_row, quantize_matrix, quantize_row, GgmlType,
    QuantError,
};

/// Every type the table quantises, with the relative RMS error it must stay under on
/// Gaussian rows (set from measurement with some headroom; ggml-level quality).
const BOUNDS: &[(GgmlType, f64)] = &[
    (GgmlType::F32, 0.0),
    (GgmlType::F16, 4e-4),
    (GgmlType::Bf16, 3.5e-3),
    (GgmlType::Q8_0, 7.5e-3),
    (GgmlType::Q4_0, 0.115),
    (GgmlType::Q4_1, 0.105),
    (GgmlType::Q5_0, 0.057),
    (GgmlType::Q5_1, 0.05),
    (GgmlType::Q2K, 0.29),
    (GgmlType::Q3K, 0.165),
    (GgmlType::Q4K, 0.08),
    (GgmlType::Q5K, 0.04),
    (GgmlType::Q6K, 0.02),
    (GgmlType::Q8K, 9e-3),
    (GgmlType::Iq4Nl, 0.085),
    (GgmlType::Iq4Xs, 0.087),
];

fn round_trip(ty: GgmlType, x: &[f32], w: Option<&[f32]>) -> Vec<f32> {
    let mut q = vec![0u8; x.len() / ty.block_size() * ty.type_size()];
    quantize_row(ty, x, w, &mut q).expect("quantize");
    let mut y = vec![0f32; x.len()];
    dequantize_row(ty, &q, &mut y).expect("dequantize");
    y
}

#[test]
fn relative_error_is_within_bounds_for_many_lengths() {
    let mut rng = Rng::new(21);
    let mut failures = Vec::new();
    for &(ty, bound) in BOUNDS {
        let bs = ty.block_size().max(32);
        let mut worst = 0f64;
        for blocks in [1, 2, 3, 5, 16] {
            let x: Vec<f32> = (0..blocks * bs).map(|_| rng.normal() * 0.05).collect();
            let e = rel_rms(&x, &round_trip(ty, &x, None), None);
            worst = worst.max(e);
        }
        eprintln!("{ty:7} worst relative RMS {worst:.5} (bound {bound})");
        if worst > bound {
            failures.push(format!("{ty}: relative RMS {worst} > {bound}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn every_row_kind_round_trips_finitely_with_bounded_error() {
    let mut rng = Rng::new(22);
    for &(ty, bound) in BOUNDS {
        for kind in ROW_KINDS {
            let x = row(&mut rng, kind, 512);
            let y = round_trip(ty, &x, None);
            assert!(
                y.iter().all(|v| v.is_finite()),
                "{ty} {kind:?}: non-finite output"
            );
            let e = rel_rms(&x, &y, None);
            // Outliers and mixed zeros are harder than Gaussian rows; all-equal and
            // one-signed rows are easy for the formats with a minimum.
            let limit = match kind {
                // Values near 1e-6 sit in f16's subnormal range (scales included):
                // only finiteness is asked of them here.
                RowKind::Tiny => continue,
                RowKind::Outliers => 5.0 * bound + 1e-6,
                RowKind::ZerosMixed => 2.5 * bound + 1e-6,
                _ => 1.6 * bound + 1e-6,
            };
            assert!(e <= limit, "{ty} {kind:?}: relative RMS {e} > {limit}");
        }
        let zeros = vec![0f32; 512];
        assert_eq!(
            round_trip(ty, &zeros, None),
            zeros,
            "{ty}: zeros must stay zeros"
        );
    }
}

/// For the 32-value formats each value's error is bounded by its block's step.
#[test]
fn legacy_formats_bound_every_value_by_the_block_step() {
    let mut rng = Rng::new(23);
    let x: Vec<f32> = (0..32 * 64).map(|_| rng.normal() * 0.1 + 0.01).collect();
    for (ty, levels, signed) in [
        (GgmlType::Q8_0, 127.0, true),
        (GgmlType::Q4_0, 8.0, true),
        (GgmlType::Q5_0, 16.0, true),
        (GgmlType::Q4_1, 15.0, false),
        (GgmlType::Q5_1, 31.0, false),
    ] {
        let y = round_trip(ty, &x, None);
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let (lo, hi) = xb.iter().fold((f64::MAX, f64::MIN), |(l, h), &v| {
                (l.min(v as f64), h.max(v as f64))
            });
            let amax = lo.abs().max(hi.abs());
            let step = if signed {
                amax / levels
            } else {
                (hi - lo) / levels
            };
            // Half a step for rounding; the symmetric 4/5-bit formats clip the far end
            // by up to one more step; f16 scales add a relative 2^-11 per code.
            let slack = if signed && levels < 100.0 { 1.0 } else { 0.5 };
            let limit = step * slack + amax * 2f64.powi(-10);
            for (&a, &b) in xb.iter().zip(yb) {
                let err = (a as f64 - b as f64).abs();
                assert!(err <= limit, "{ty}: |{a} - {b}| = {err} > {limit}");
            }
        }
    }
}

#[test]
fn importance_lowers_the_weighted_error() {
    let mut rng = Rng::new(24);
    let cols = 1024;
    let x = weight_matrix(&mut rng, 8, cols);
    let w = importance(&mut rng, cols);
    for ty in [
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Iq4Nl,
        GgmlType::Iq4Xs,
    ] {
        let n_bytes = x.len() / ty.block_size() * ty.type_size();
        let (mut plain, mut weighted) = (vec![0u8; n_bytes], vec![0u8; n_bytes]);
        quantize_matrix(ty, &x, cols, None, &mut plain).expect("quantize");
        quantize_matrix(ty, &x, cols, Some(&w), &mut weighted).expect("quantize");
        let back = |q: &[u8]| {
            let mut y = vec![0f32; x.len()];
            dequantize_row(ty, q, &mut y).expect("dequantize");
            y
        };
        let e_plain = rel_rms(&x, &back(&plain), Some(&w));
        let e_weighted = rel_rms(&x, &back(&weighted), Some(&w));
        eprintln!("{ty:7} weighted error: without importance {e_plain:.5}, with {e_weighted:.5}");
        assert!(
            e_weighted < 0.97 * e_plain,
            "{ty}: importance did not help: {e_weighted} vs {e_plain}"
        );
    }
}

/// Q8_0 has no weighted quantiser (nor does llama.cpp's); the 4- and 5-bit
/// 32-value formats refit blocks with an imatrix (`legacy.rs` tests that).
#[test]
fn q8_0_ignores_importance_and_the_others_use_it() {
    let mut rng = Rng::new(25);
    let x = weight_matrix(&mut rng, 1, 256);
    let w = importance(&mut rng, 256);
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
    ] {
        let n = 256 / 32 * ty.type_size();
        let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
        quantize_row(ty, &x, None, &mut a).expect("quantize");
        quantize_row(ty, &x, Some(&w), &mut b).expect("quantize");
        assert_ne!(a, b, "{ty}: the imatrix changed no block");
    }
    let ty = GgmlType::Q8_0;
    let n = 256 / 32 * ty.type_size();
    let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
    quantize_row(ty, &x, None, &mut a).expect("quantize");
    quantize_row(ty, &x, Some(&w), &mut b).expect("quantize");
    assert_eq!(a, b, "{ty}");
}

#[test]
fn quantize_matrix_equals_row_by_row() {
    let mut rng = Rng::new(26);
    let cols = 512;
    let x = weight_matrix(&mut rng, 7, cols);
    let w = importance(&mut rng, cols);
    for ty in [GgmlType::Q4K, GgmlType::Q8_0, GgmlType::Iq4Xs] {
        let row_bytes = cols / ty.block_size() * ty.type_size();
        let mut whole = vec![0u8; 7 * row_bytes];
        quantize_matrix(ty, &x, cols, Some(&w), &mut whole).expect("quantize");
        for (r, xr) in x.chunks(cols).enumerate() {
            let mut one = vec![0u8; row_bytes];
            quantize_row(ty, xr, Some(&w), &mut one).expect("quantize");
            assert_eq!(
                &whole[r * row_bytes..(r + 1) * row_bytes],
                &one[..],
                "{ty} row {r}"
            );
        }
    }
}

#[test]
fn malformed_lengths_are_typed_errors() {
    let x = vec![0.5f32; 33];
    let mut dst = vec![0u8; 34];
    assert!(matches!(
        quantize_row(GgmlType::Q8_0, &x, None, &mut dst),
        Err(QuantError::NotBlockMultiple {
            len: 33,
            block: 32,
            ..
        })
    ));
    assert!(matches!(
        quantize_row(GgmlType::Q8_0, &x[..32], None, &mut dst[..33]),
        Err(QuantError::DstBytes {
            got: 33,
            expected: 34,
            ..
        })
    ));
    assert!(matches!(
        quantize_row(GgmlType::Q8_0, &x[..32], Some(&x[..31]), &mut dst),
        Err(QuantError::ImportanceLen {
            got: 31,
            expected: 32
        })
    ));
    let mut y = vec![0f32; 32];
    assert!(matches!(
        dequantize_row(GgmlType::Q8_0, &dst[..33], &mut y),
        Err(QuantError::NotWholeBlocks { len: 33, .. })
    ));
    assert!(matches!(
        dequantize_row(GgmlType::Q8_0, &dst, &mut y[..31]),
        Err(QuantError::DstValues {
            got: 31,
            expected: 32,
            ..
        })
    ));
    let mut big = vec![0u8; 144];
    assert!(matches!(
        quantize_row(GgmlType::Q4K, &vec![1.0; 128], None, &mut big),
        Err(QuantError::NotBlockMultiple {
            len: 128,
            block: 256,
            ..
        })
    ));
    assert!(matches!(
        quantize_matrix(GgmlType::Q4K, &vec![1.0; 512], 0, None, &mut big),
        Err(QuantError::RowLen { .. })
    ));
    assert!(matches!(
        quantize_matrix(GgmlType::Q4K, &vec![1.0; 500], 256, None, &mut big),
        Err(QuantError::RowLen { .. })
    ));
    assert!(matches!(
        quantize_matrix(
            GgmlType::Q4K,
            &vec![1.0; 512],
            256,
            Some(&[1.0; 512]),
            &mut vec![0u8; 288]
        ),
        Err(QuantError::ImportanceLen {
            got: 512,
            expected: 256
        })
    ));
    assert!(matches!(
        quantize_row(GgmlType::Iq2Xxs, &vec![1.0; 256], None, &mut [0u8; 66]),
        Err(QuantError::QuantizeUnsupported(GgmlType::Iq2Xxs))
    ));
    assert!(!can_quantize(GgmlType::Iq2Xxs) && !can_dequantize(GgmlType::Tq1_0));
}

#[test]
fn non_finite_values_and_degenerate_importance_do_not_panic() {
    let mut rng = Rng::new(29);
    let mut x: Vec<f32> = (0..512).map(|_| rng.normal()).collect();
    x[3] = f32::NAN;
    x[300] = f32::INFINITY;
    x[301] = f32::NEG_INFINITY;
    let zeros = vec![0f32; 512];
    let mut odd = importance(&mut rng, 512);
    odd[5] = f32::NAN;
    odd[6] = -1.0;
    odd[7] = f32::INFINITY;
    for &(ty, _) in BOUNDS {
        for w in [None, Some(zeros.as_slice()), Some(odd.as_slice())] {
            let mut q = vec![0u8; 512 / ty.block_size() * ty.type_size()];
            quantize_row(ty, &x, w, &mut q).expect("quantize");
            let mut y = vec![0f32; 512];
            dequantize_row(ty, &q, &mut y).expect("dequantize");
            // Blocks without non-finite values must still round-trip sensibly.
            let clean = &x[32..256];
            if ty.block_size() <= 32 {
                let e = rel_rms(clean, &y[32..256], None);
                assert!(e < 0.3, "{ty}: clean blocks degraded to {e}");
            }
        }
    }
}

#[test]
fn blocks_are_read_from_any_byte_offset() {
    // GGUF data in a memory map need not be aligned for the block structs; blocks are
    // byte arrays, so an odd offset must work and give the same values.
    let mut rng = Rng::new(27);
    let x: Vec<f32> = (0..512).map(|_| rng.normal()).collect();
    for &(ty, _) in BOUNDS {
        let n = 512 / ty.block_size() * ty.type_size();
        let mut q = vec![0u8; n + 1];
        quantize_row(ty, &x, None, &mut q[1..]).expect("quantize at odd offset");
        let mut aligned = vec![0u8; n];
        quantize_row(ty, &x, None, &mut aligned).expect("quantize");
        assert_eq!(&q[1..], &aligned[..], "{ty}");
        let mut y = vec![0f32; 512];
        dequantize_row(ty, &q[1..], &mut y).expect("dequantize at odd offset");
    }
}

/// CPU time of the calling thread in seconds, so figures stay meaningful on a loaded
/// machine (Linux); `None` elsewhere.
#[cfg(target_os = "linux")]
fn thread_cpu_seconds() -> Option<f64> {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then_some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_seconds() -> Option<f64> {
    None
}

/// Single-thread throughput figures, not a gate (speed is shown by measurement, never
/// by timed asserts). Run with
/// `cargo test --release -p quern-quant --test roundtrip -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; meaningful in release builds only"]
fn measure_throughput() {
    let mut rng = Rng::new(28);
    let cols = 4096;
    let rows = 64;
    let x = weight_matrix(&mut rng, rows, cols);
    let w = importance(&mut rng, cols);
    let rate = |f: &mut dyn FnMut()| {
        let (wall, cpu) = (std::time::Instant::now(), thread_cpu_seconds());
        f();
        let secs = match (cpu, thread_cpu_seconds()) {
            (Some(a), Some(b)) => b - a,
            _ => wall.elapsed().as_secs_f64(),
        };
        x.len() as f64 / secs / 1e6
    };
    for &(ty, _) in BOUNDS {
        let row_bytes = cols / ty.block_size() * ty.type_size();
        let mut q = vec![0u8; rows * row_bytes];
        let mut line = format!("{ty:7}");
        for imp in [None, Some(w.as_slice())] {
            let r = rate(&mut || {
                for (xr, qr) in x.chunks(cols).zip(q.chunks_mut(row_bytes)) {
                    quantize_row(ty, xr, imp, qr).expect("quantize");
                }
            });
            let label = if imp.is_some() {
                "with importance"
            } else {
                "plain"
            };
            line += &format!("  quantize {label} {r:7.1}");
        }
        let mut y = vec![0f32; x.len()];
        let r = rate(&mut || dequantize_row(ty, &q, &mut y).expect("dequantize"));
        println!("{line}  dequantize {r:7.1}  (Mvalues/s per thread, CPU time)");
    }
}
