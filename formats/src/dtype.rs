//! Bulk conversions between safetensors/GGUF float encodings and f32, on
//! little-endian byte slices that may be unaligned (straight out of a mmap).
//!
//! These loops are the hot path of `quern convert`: each element is converted with
//! branch-free bit arithmetic (so the compiler vectorises the loop) and nothing is
//! allocated.

use crate::safetensors::Dtype;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DtypeError {
    #[error("cannot convert {dtype} to f32 (supported: F32, F16, BF16)")]
    Unsupported { dtype: Dtype },
    #[error("{dtype}: {bytes} bytes do not hold {elements} elements of {size} bytes")]
    LengthMismatch {
        dtype: Dtype,
        bytes: usize,
        elements: usize,
        size: usize,
    },
}

/// Decodes `bytes` (little-endian `dtype` values) into `out`; `bytes.len()` must be
/// `out.len() * dtype.size_in_bytes()`.
pub fn to_f32(dtype: Dtype, bytes: &[u8], out: &mut [f32]) -> Result<(), DtypeError> {
    let size = dtype.size_in_bytes();
    let convert: fn(&[u8], &mut [f32]) = match dtype {
        Dtype::F32 => f32_bytes_to_f32,
        Dtype::F16 => f16_bytes_to_f32,
        Dtype::BF16 => bf16_bytes_to_f32,
        _ => return Err(DtypeError::Unsupported { dtype }),
    };
    if Some(bytes.len()) != out.len().checked_mul(size) {
        return Err(DtypeError::LengthMismatch {
            dtype,
            bytes: bytes.len(),
            elements: out.len(),
            size,
        });
    }
    convert(bytes, out);
    Ok(())
}

/// Decodes little-endian `N`-byte values with `f`. Viewing the bytes as `[u8; N]`
/// items (alignment 1, so any slice qualifies) gives the compiler a plain zip to vectorise.
#[inline(always)]
fn decode<const N: usize>(bytes: &[u8], out: &mut [f32], f: impl Fn([u8; N]) -> f32)
where
    [u8; N]: bytemuck::Pod,
{
    let items: &[[u8; N]] = bytemuck::cast_slice(bytes);
    for (o, &b) in out.iter_mut().zip(items) {
        *o = f(b);
    }
}

/// Encodes f32 values as little-endian `N`-byte values with `f` (see [`decode`]).
#[inline(always)]
fn encode<const N: usize>(src: &[f32], out: &mut [u8], f: impl Fn(f32) -> [u8; N])
where
    [u8; N]: bytemuck::Pod,
{
    let items: &mut [[u8; N]] = bytemuck::cast_slice_mut(out);
    for (o, &x) in items.iter_mut().zip(src) {
        *o = f(x);
    }
}

/// Little-endian f32 bytes to f32. Panics if `bytes.len() != 4 * out.len()`.
pub fn f32_bytes_to_f32(bytes: &[u8], out: &mut [f32]) {
    assert_eq!(
        bytes.len(),
        out.len() * 4,
        "f32_bytes_to_f32: length mismatch"
    );
    decode(bytes, out, f32::from_le_bytes);
}

/// Little-endian bf16 bytes to f32 (exact). Panics if `bytes.len() != 2 * out.len()`.
pub fn bf16_bytes_to_f32(bytes: &[u8], out: &mut [f32]) {
    assert_eq!(
        bytes.len(),
        out.len() * 2,
        "bf16_bytes_to_f32: length mismatch"
    );
    decode(bytes, out, |b| bf16_bits_to_f32(u16::from_le_bytes(b)));
}

/// Little-endian f16 bytes to f32 (exact). Panics if `bytes.len() != 2 * out.len()`.
pub fn f16_bytes_to_f32(bytes: &[u8], out: &mut [f32]) {
    assert_eq!(
        bytes.len(),
        out.len() * 2,
        "f16_bytes_to_f32: length mismatch"
    );
    decode(bytes, out, |b| f16_bits_to_f32(u16::from_le_bytes(b)));
}

/// f32 to little-endian f16 bytes, rounding to nearest even exactly as numpy's
/// `astype(np.float16)`: overflow gives ±inf, tiny values become f16 subnormals or ±0,
/// NaN keeps its sign and top payload bits. Panics if `out.len() != 2 * src.len()`.
pub fn f32_to_f16_bytes(src: &[f32], out: &mut [u8]) {
    assert_eq!(
        out.len(),
        src.len() * 2,
        "f32_to_f16_bytes: length mismatch"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx") && std::is_x86_feature_detected!("f16c") {
            // SAFETY: the CPU features were checked just above and the lengths asserted.
            unsafe { x86::f32_to_f16_f16c(src, out) };
            return;
        }
    }
    f32_to_f16_bytes_portable(src, out);
}

/// The portable (non-SIMD-intrinsic) path of [`f32_to_f16_bytes`].
pub(crate) fn f32_to_f16_bytes_portable(src: &[f32], out: &mut [u8]) {
    encode(src, out, |x| f32_to_f16_bits(x).to_le_bytes());
}

/// The F16C instruction rounds to nearest even like numpy but quiets NaNs differently,
/// so NaN lanes (rare) are redone with the scalar rule.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX and F16C, and `out.len() == 2 * src.len()`.
    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn f32_to_f16_f16c(src: &[f32], out: &mut [u8]) {
        let mut blocks_in = src.chunks_exact(8);
        let mut blocks_out = out.chunks_exact_mut(16);
        for (bi, bo) in (&mut blocks_in).zip(&mut blocks_out) {
            // SAFETY: `bi` holds 8 f32 and `bo` 16 bytes; both accesses are unaligned loads/stores.
            unsafe {
                let v = _mm256_loadu_ps(bi.as_ptr());
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm_storeu_si128(bo.as_mut_ptr().cast::<__m128i>(), h);
                if _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v)) != 0 {
                    super::f32_to_f16_bytes_portable(bi, bo);
                }
            }
        }
        super::f32_to_f16_bytes_portable(blocks_in.remainder(), blocks_out.into_remainder());
    }
}

/// f32 to little-endian bf16 bytes, rounding to nearest even; NaN stays NaN.
/// Panics if `out.len() != 2 * src.len()`.
pub fn f32_to_bf16_bytes(src: &[f32], out: &mut [u8]) {
    assert_eq!(
        out.len(),
        src.len() * 2,
        "f32_to_bf16_bytes: length mismatch"
    );
    encode(src, out, |x| f32_to_bf16_bits(x).to_le_bytes());
}

/// f32 to little-endian f32 bytes. Panics if `out.len() != 4 * src.len()`.
pub fn f32_to_f32_bytes(src: &[f32], out: &mut [u8]) {
    assert_eq!(
        out.len(),
        src.len() * 4,
        "f32_to_f32_bytes: length mismatch"
    );
    encode(src, out, f32::to_le_bytes);
}

/// Exact f16 → f32 without branches: the f16 exponent/mantissa shifted into f32
/// position is the value × 2^-112 (subnormals included), so one exact multiply fixes
/// the exponent; inf/NaN are selected separately.
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    const TWO_POW_112: f32 = f32::from_bits((127 + 112) << 23);
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    let finite = (f32::from_bits(em << 13) * TWO_POW_112).to_bits();
    let special = 0x7f80_0000 | ((em & 0x3ff) << 13);
    let bits = if em >= 0x7c00 { special } else { finite };
    f32::from_bits(bits | sign)
}

/// f32 → f16 bits, round to nearest even (see [`f32_to_f16_bytes`]).
#[inline(always)]
pub fn f32_to_f16_bits(x: f32) -> u16 {
    const INF32: i32 = 0x7f80_0000;
    // Smallest f32 that rounds to f16 infinity: 65520 = 65504 + half an ulp (ties go to even = inf).
    const F16_OVERFLOW: i32 = 0x477f_f000;
    // Below 2^-14 the result is an f16 subnormal.
    const F16_MIN_NORMAL: i32 = 113 << 23;
    // 0.5: adding it leaves an f32 whose ulp is 2^-24, the f16 subnormal step, so the
    // FPU's own round-to-nearest-even does the rounding.
    const SUBNORMAL_MAGIC: u32 = 126 << 23;

    // All lanes compute every case and select (branch-free, so the loop vectorises);
    // the magnitude fits in i32, so the comparisons are plain signed SIMD compares.
    let b = x.to_bits();
    let sign = (b >> 16) & 0x8000;
    let a = (b & 0x7fff_ffff) as i32;

    let payload = (a >> 13) & 0x3ff;
    // numpy keeps the top payload bits and forces a non-zero mantissa so NaN stays NaN.
    let nan = 0x7c00 | payload | i32::from(payload == 0);

    let sub = (f32::from_bits(a as u32) + f32::from_bits(SUBNORMAL_MAGIC))
        .to_bits()
        .wrapping_sub(SUBNORMAL_MAGIC) as i32;

    // Rebias the exponent (127 → 15) and add just under half an ulp plus the odd bit: ties go to even.
    let odd = (a >> 13) & 1;
    let normal = a.wrapping_sub(112 << 23).wrapping_add(0xfff + odd) >> 13;

    let mut r = if a < F16_MIN_NORMAL { sub } else { normal };
    r = if a >= F16_OVERFLOW { 0x7c00 } else { r };
    r = if a > INF32 { nan } else { r };
    (r as u32 | sign) as u16
}

/// f32 → bf16 bits, round to nearest even; NaN is kept (sign, top payload, quiet bit set).
#[inline(always)]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let nan = ((b >> 16) | 0x0040) as u16;
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    if (b & 0x7fff_ffff) > 0x7f80_0000 {
        nan
    } else {
        rounded
    }
}

/// bf16 bits → f32 (exact).
#[inline(always)]
pub fn bf16_bits_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    /// xorshift64*: deterministic bit patterns without a rand dependency.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed | 1;
        move || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            s.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// (f32 bits, f16 bits) computed with numpy 2.4 `astype(np.float16)`.
    const NUMPY_F16: &[(u32, u16)] = &[
        (0x00000000, 0x0000),
        (0x80000000, 0x8000),
        (0x3f800000, 0x3c00),
        (0x477fe000, 0x7bff),
        (0x477fefff, 0x7bff),
        (0x477ff000, 0x7c00),
        (0x477ff001, 0x7c00),
        (0x47800000, 0x7c00),
        (0x7f7fffff, 0x7c00),
        (0x7f800000, 0x7c00),
        (0xff800000, 0xfc00),
        (0x7f800001, 0x7c01),
        (0x7fc00000, 0x7e00),
        (0xffc00001, 0xfe00),
        (0x7f802000, 0x7c01),
        (0x7fa00000, 0x7d00),
        (0x38800000, 0x0400),
        (0x387fe000, 0x0400),
        (0x387ff000, 0x0400),
        (0x33800000, 0x0001),
        (0x33000000, 0x0000),
        (0x33000001, 0x0001),
        (0x32ffffff, 0x0000),
        (0x33c00000, 0x0002),
        (0x34200000, 0x0002),
        (0x00000001, 0x0000),
        (0x807fffff, 0x8000),
        (0x3f801000, 0x3c00),
        (0x3f803000, 0x3c02),
        (0x3f801001, 0x3c01),
        (0x3f800fff, 0x3c00),
        (0xc7ffefff, 0xfc00),
        (0x38000000, 0x0200),
        (0x37ffffff, 0x0200),
        (0x38001000, 0x0200),
        (0x38003000, 0x0201),
        (0x38801000, 0x0400),
        (0x38803000, 0x0402),
    ];

    #[test]
    fn f16_rounding_matches_numpy_edge_cases() {
        let src: Vec<f32> = NUMPY_F16.iter().map(|&(b, _)| f32::from_bits(b)).collect();
        let mut out = vec![0u8; src.len() * 2];
        let mut portable = vec![0u8; src.len() * 2];
        f32_to_f16_bytes(&src, &mut out);
        f32_to_f16_bytes_portable(&src, &mut portable);
        assert_eq!(out, portable);
        for (i, &(b, want)) in NUMPY_F16.iter().enumerate() {
            let got = u16::from_le_bytes([out[2 * i], out[2 * i + 1]]);
            assert_eq!(
                got, want,
                "f32 {b:#010x}: got {got:#06x}, numpy gives {want:#06x}"
            );
        }
    }

    #[test]
    fn f16_fast_path_equals_portable_path_including_nans() {
        let mut next = rng(5);
        // Mostly random bits (NaNs included), odd length to exercise the tail.
        let src: Vec<f32> = (0..100_003)
            .map(|_| f32::from_bits(next() as u32))
            .collect();
        let mut fast = vec![0u8; src.len() * 2];
        let mut portable = vec![0u8; src.len() * 2];
        f32_to_f16_bytes(&src, &mut fast);
        f32_to_f16_bytes_portable(&src, &mut portable);
        for (i, (a, b)) in fast.chunks(2).zip(portable.chunks(2)).enumerate() {
            assert_eq!(a, b, "f32 {:#010x}", src[i].to_bits());
        }
    }

    #[test]
    fn f16_rounding_matches_half_on_random_finite_values() {
        let mut next = rng(1);
        for _ in 0..200_000 {
            let x = f32::from_bits(next() as u32);
            if x.is_nan() {
                continue;
            }
            let want = f16::from_f32(x).to_bits();
            assert_eq!(f32_to_f16_bits(x), want, "f32 {:#010x}", x.to_bits());
        }
    }

    #[test]
    fn f16_to_f32_is_exact_for_every_f16() {
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
        let mut out = vec![0f32; 65536];
        f16_bytes_to_f32(&bytes, &mut out);
        for (h, &got) in (0..=u16::MAX).zip(&out) {
            let want = f64::from(f16::from_bits(h).to_f32());
            if want.is_nan() {
                assert!(got.is_nan(), "f16 {h:#06x} must decode to NaN");
                // and it must round-trip to the same bits (payload kept)
                assert_eq!(f32_to_f16_bits(got), h, "NaN payload of {h:#06x}");
            } else {
                assert_eq!(f64::from(got), want, "f16 {h:#06x}");
                assert_eq!(f32_to_f16_bits(got), h, "round trip of {h:#06x}");
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // (f32 bits, bf16 bits): exact, below half, tie to even (down), tie to even (up), above half.
        let cases: &[(u32, u16)] = &[
            (0x3f80_0000, 0x3f80),
            (0x3f80_7fff, 0x3f80),
            (0x3f80_8000, 0x3f80),
            (0x3f81_8000, 0x3f82),
            (0x3f80_8001, 0x3f81),
            (0x7f7f_ffff, 0x7f80), // max f32 rounds to inf, as IEEE RNE says
            (0xff80_0000, 0xff80),
            (0x0000_8000, 0x0000),
            (0x8001_8000, 0x8002),
        ];
        for &(b, want) in cases {
            assert_eq!(f32_to_bf16_bits(f32::from_bits(b)), want, "f32 {b:#010x}");
        }
        let mut next = rng(2);
        for _ in 0..200_000 {
            let x = f32::from_bits(next() as u32);
            let got = f32_to_bf16_bits(x);
            if x.is_nan() {
                assert!(
                    bf16_bits_to_f32(got).is_nan(),
                    "NaN {:#010x} must stay NaN",
                    x.to_bits()
                );
                assert_eq!(
                    got & 0x8000,
                    ((x.to_bits() >> 16) & 0x8000) as u16,
                    "NaN sign"
                );
            } else {
                assert_eq!(
                    got,
                    bf16::from_f32(x).to_bits(),
                    "f32 {:#010x}",
                    x.to_bits()
                );
            }
        }
        // A NaN whose payload lies only in the low 16 bits must not become inf.
        assert!(bf16_bits_to_f32(f32_to_bf16_bits(f32::from_bits(0x7f80_0001))).is_nan());
    }

    #[test]
    fn to_f32_decodes_each_supported_dtype_against_f64_reference() {
        let mut next = rng(3);
        let vals: Vec<f32> = (0..1000)
            .map(|_| ((next() >> 11) as f64 / (1u64 << 53) as f64 * 20.0 - 10.0) as f32 + 1e-3)
            .collect();
        // Unaligned input: start one byte into the buffer.
        let mut buf = vec![0u8; 1 + vals.len() * 4];
        f32_to_f32_bytes(&vals, &mut buf[1..]);
        let mut out = vec![0f32; vals.len()];
        to_f32(Dtype::F32, &buf[1..], &mut out).unwrap();
        assert_eq!(out, vals);

        let mut b16 = vec![0u8; 1 + vals.len() * 2];
        f32_to_bf16_bytes(&vals, &mut b16[1..]);
        to_f32(Dtype::BF16, &b16[1..], &mut out).unwrap();
        for (&v, &o) in vals.iter().zip(&out) {
            // RNE to 8 bits of mantissa: error at most half an ulp = 2^-8 relative.
            assert!(
                (f64::from(v) - f64::from(o)).abs() <= f64::from(v).abs() * 2f64.powi(-8),
                "{v} -> {o}"
            );
        }

        f32_to_f16_bytes(&vals, &mut b16[1..]);
        to_f32(Dtype::F16, &b16[1..], &mut out).unwrap();
        for (&v, &o) in vals.iter().zip(&out) {
            assert!(
                (f64::from(v) - f64::from(o)).abs() <= f64::from(v).abs() * 2f64.powi(-11),
                "{v} -> {o}"
            );
        }
    }

    #[test]
    fn to_f32_rejects_other_dtypes_and_bad_lengths() {
        let mut out = [0f32; 2];
        let e = to_f32(Dtype::I32, &[0; 8], &mut out).unwrap_err();
        assert_eq!(e, DtypeError::Unsupported { dtype: Dtype::I32 });
        assert!(e.to_string().contains("I32"), "{e}");
        let e = to_f32(Dtype::BF16, &[0; 5], &mut out).unwrap_err();
        assert!(
            matches!(
                e,
                DtypeError::LengthMismatch {
                    bytes: 5,
                    elements: 2,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = to_f32(Dtype::F8E4M3, &[0; 2], &mut out).unwrap_err();
        assert!(e.to_string().contains("F8_E4M3"), "{e}");
    }

    /// Many random values (every exponent range) against numpy itself, when the venv is there.
    #[test]
    fn f16_matches_numpy_on_random_values() {
        let Some(py) = crate::test_python::python(&["numpy"]) else {
            return;
        };
        let mut next = rng(4);
        let src: Vec<f32> = (0..100_000)
            .map(|_| f32::from_bits(next() as u32))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.f32");
        let output = dir.path().join("out.f16");
        let mut raw = vec![0u8; src.len() * 4];
        f32_to_f32_bytes(&src, &mut raw);
        std::fs::write(&input, raw).unwrap();
        let script = "import numpy as np, sys, warnings\nwarnings.simplefilter('ignore')\n\
             x = np.fromfile(sys.argv[1], dtype='<f4')\n\
             x.astype('<f2').tofile(sys.argv[2])\n";
        let status = std::process::Command::new(py)
            .args(["-c", script])
            .arg(&input)
            .arg(&output)
            .status()
            .unwrap();
        assert!(status.success(), "numpy conversion failed");
        let want = std::fs::read(&output).unwrap();
        let mut got = vec![0u8; src.len() * 2];
        f32_to_f16_bytes(&src, &mut got);
        for (i, (g, w)) in got.chunks(2).zip(want.chunks(2)).enumerate() {
            assert_eq!(g, w, "f32 {:#010x}", src[i].to_bits());
        }
    }
}
