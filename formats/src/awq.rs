//! The AutoAWQ "gemm" packed 4-bit layout, as vLLM, transformers and TGI load it.
//!
//! For a linear layer with `in_features` inputs, `out_features` outputs and groups of
//! `group` inputs sharing a scale and zero point:
//! * `qweight`: int32 `[in, out/8]`: word `(i, c)` holds the 4-bit values of outputs
//!   `8c .. 8c+8` for input `i`, nibble `k` (bits `4k..4k+4`) holding output
//!   `8c + ORDER[k]` with `ORDER = (0, 2, 4, 6, 1, 3, 5, 7)`;
//! * `qzeros`: int32 `[in/group, out/8]`, the zero points packed the same way;
//! * `scales`: f16 `[in/group, out]`.
//!
//! The weight is `w[o][i] = (q[o][i] - zero[i/group][o]) × scale[i/group][o]`.

use half::f16;
use serde_json::json;

/// Output `8c + ORDER[k]` sits in nibble `k` of a packed word (AutoAWQ's order,
/// which lets its CUDA kernel unpack pairs with one shift).
pub const ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// AutoAWQ's default group size.
pub const DEFAULT_GROUP: usize = 128;

/// One quantised linear layer in the AutoAWQ GEMM layout.
#[derive(Debug, Clone, PartialEq)]
pub struct AwqTensors {
    /// `[in, out/8]`, row-major.
    pub qweight: Vec<i32>,
    /// `[in/group, out/8]`, row-major.
    pub qzeros: Vec<i32>,
    /// `[in/group, out]`, row-major.
    pub scales: Vec<f16>,
    pub in_features: usize,
    pub out_features: usize,
    pub group: usize,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AwqError {
    #[error(
        "AWQ: out_features {out_features} is not a multiple of 8 (eight 4-bit values per int32)"
    )]
    OutNotMultipleOf8 { out_features: usize },
    #[error("AWQ: in_features {in_features} is not a multiple of the group size {group}")]
    InNotMultipleOfGroup { in_features: usize, group: usize },
    #[error("AWQ: group size must be positive")]
    ZeroGroup,
    #[error("AWQ: {what} has {got} values, expected {expected}")]
    WrongLength {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("AWQ: {what} value {value} at index {index} does not fit in 4 bits")]
    NotFourBit {
        what: &'static str,
        index: usize,
        value: u8,
    },
    #[error("AWQ: {what} at index {index} is {value}, not a finite number")]
    NotFinite {
        what: &'static str,
        index: usize,
        value: f32,
    },
}

fn check_shape(in_features: usize, out_features: usize, group: usize) -> Result<(), AwqError> {
    if group == 0 {
        return Err(AwqError::ZeroGroup);
    }
    if !out_features.is_multiple_of(8) {
        return Err(AwqError::OutNotMultipleOf8 { out_features });
    }
    if !in_features.is_multiple_of(group) {
        return Err(AwqError::InNotMultipleOfGroup { in_features, group });
    }
    Ok(())
}

fn check_len(what: &'static str, got: usize, expected: usize) -> Result<(), AwqError> {
    if got == expected {
        Ok(())
    } else {
        Err(AwqError::WrongLength {
            what,
            expected,
            got,
        })
    }
}

fn check_nibbles(what: &'static str, v: &[u8]) -> Result<(), AwqError> {
    match v.iter().position(|&x| x > 15) {
        Some(index) => Err(AwqError::NotFourBit {
            what,
            index,
            value: v[index],
        }),
        None => Ok(()),
    }
}

fn check_finite(what: &'static str, v: &[f32]) -> Result<(), AwqError> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(AwqError::NotFinite {
            what,
            index,
            value: v[index],
        }),
        None => Ok(()),
    }
}

/// Packs a `[rows][cols]` matrix of 4-bit values into `[rows][cols/8]` words.
fn pack_rows(vals: &[u8], rows: usize, cols: usize) -> Vec<i32> {
    let words = cols / 8;
    let mut out = vec![0i32; rows * words];
    for r in 0..rows {
        for c in 0..words {
            let base = r * cols + 8 * c;
            let mut word = 0u32;
            for (k, &o) in ORDER.iter().enumerate() {
                word |= u32::from(vals[base + o] & 0xF) << (4 * k);
            }
            out[r * words + c] = word as i32;
        }
    }
    out
}

/// The inverse of [`pack_rows`].
fn unpack_rows(words: &[i32], rows: usize, cols: usize) -> Vec<u8> {
    let per_row = cols / 8;
    let mut out = vec![0u8; rows * cols];
    for r in 0..rows {
        for c in 0..per_row {
            let word = words[r * per_row + c] as u32;
            for (k, &o) in ORDER.iter().enumerate() {
                out[r * cols + 8 * c + o] = ((word >> (4 * k)) & 0xF) as u8;
            }
        }
    }
    out
}

/// [`AwqTensors`] unpacked: the inputs of [`pack_linear`].
#[derive(Debug, Clone, PartialEq)]
pub struct AwqUnpacked {
    /// `[out][in]`, values 0..=15.
    pub q: Vec<u8>,
    /// `[in/group][out]`, values 0..=15.
    pub zeros: Vec<u8>,
    /// `[in/group][out]`.
    pub scales: Vec<f32>,
}

impl AwqTensors {
    fn n_groups(&self) -> usize {
        self.in_features / self.group.max(1)
    }

    /// Checks that the shapes agree with each other and with the layout's rules.
    pub fn check(&self) -> Result<(), AwqError> {
        check_shape(self.in_features, self.out_features, self.group)?;
        let words = self.out_features / 8;
        check_len("qweight", self.qweight.len(), self.in_features * words)?;
        check_len("qzeros", self.qzeros.len(), self.n_groups() * words)?;
        check_len(
            "scales",
            self.scales.len(),
            self.n_groups() * self.out_features,
        )?;
        Ok(())
    }

    /// The integers and scales, unpacked.
    pub fn unpack(&self) -> Result<AwqUnpacked, AwqError> {
        self.check()?;
        let (n_in, n_out) = (self.in_features, self.out_features);
        // qweight rows are inputs; transpose back to the HF [out][in] orientation.
        let q_in_out = unpack_rows(&self.qweight, n_in, n_out);
        let mut q = vec![0u8; n_out * n_in];
        for i in 0..n_in {
            for o in 0..n_out {
                q[o * n_in + i] = q_in_out[i * n_out + o];
            }
        }
        let zeros = unpack_rows(&self.qzeros, self.n_groups(), n_out);
        let scales = self.scales.iter().map(|s| s.to_f32()).collect();
        Ok(AwqUnpacked { q, zeros, scales })
    }
}

/// Packs a quantised linear layer: `q` `[out][in]` and `zeros` `[in/group][out]`
/// hold integers 0..=15, `scales` `[in/group][out]` (stored as f16).
pub fn pack_linear(
    q: &[u8],
    zeros: &[u8],
    scales: &[f32],
    in_features: usize,
    out_features: usize,
    group: usize,
) -> Result<AwqTensors, AwqError> {
    check_shape(in_features, out_features, group)?;
    let n_groups = in_features / group;
    check_len("q", q.len(), out_features * in_features)?;
    check_len("zeros", zeros.len(), n_groups * out_features)?;
    check_len("scales", scales.len(), n_groups * out_features)?;
    check_nibbles("q", q)?;
    check_nibbles("zeros", zeros)?;
    check_finite("scales", scales)?;

    // qweight is [in][out]: transpose first.
    let mut q_in_out = vec![0u8; in_features * out_features];
    for o in 0..out_features {
        for i in 0..in_features {
            q_in_out[i * out_features + o] = q[o * in_features + i];
        }
    }
    Ok(AwqTensors {
        qweight: pack_rows(&q_in_out, in_features, out_features),
        qzeros: pack_rows(zeros, n_groups, out_features),
        scales: scales.iter().map(|&s| f16::from_f32(s)).collect(),
        in_features,
        out_features,
        group,
    })
}

/// The weights `[out][in]` (Hugging Face orientation) the layer stands for.
pub fn dequantize_linear(t: &AwqTensors) -> Result<Vec<f32>, AwqError> {
    let AwqUnpacked { q, zeros, scales } = t.unpack()?;
    let (n_in, n_out) = (t.in_features, t.out_features);
    let mut w = vec![0f32; n_out * n_in];
    for o in 0..n_out {
        for i in 0..n_in {
            let g = (i / t.group) * n_out + o;
            let level = f32::from(q[o * n_in + i]) - f32::from(zeros[g]);
            w[o * n_in + i] = level * scales[g];
        }
    }
    Ok(w)
}

/// Asymmetric round-to-nearest 4-bit quantisation per group of `group` inputs,
/// as AutoAWQ's pseudo-quantiser does (before any activation-aware scaling):
/// `scale = max(max - min, 1e-5) / 15`, `zero = clamp(-round(min / scale), 0, 15)`,
/// `q = clamp(round(w / scale) + zero, 0, 15)`, rounding half to even as torch does.
/// The scale is rounded to f16 first, so `q` and `zero` are the best for the scale
/// actually stored.
pub fn quantize_rtn(
    weight: &[f32],
    in_features: usize,
    out_features: usize,
    group: usize,
) -> Result<AwqTensors, AwqError> {
    check_shape(in_features, out_features, group)?;
    check_len("weight", weight.len(), out_features * in_features)?;
    check_finite("weight", weight)?;
    let n_groups = in_features / group;
    let mut q = vec![0u8; out_features * in_features];
    let mut zeros = vec![0u8; n_groups * out_features];
    let mut scales = vec![0f32; n_groups * out_features];
    for o in 0..out_features {
        let row = &weight[o * in_features..(o + 1) * in_features];
        for (g, chunk) in row.chunks_exact(group).enumerate() {
            let (scale, zero) = rtn_group(chunk);
            // A range beyond f16 (|w| ~ 1e6) cannot be stored.
            check_finite("scale (weight range too large for f16)", &[scale])?;
            for (j, &x) in chunk.iter().enumerate() {
                q[o * in_features + g * group + j] = rtn_level(x, scale, zero) as u8;
            }
            zeros[g * out_features + o] = zero as u8;
            scales[g * out_features + o] = scale;
        }
    }
    pack_linear(&q, &zeros, &scales, in_features, out_features, group)
}

/// The f16-rounded scale and the zero point [`quantize_rtn`] gives one group.
pub fn rtn_group(chunk: &[f32]) -> (f32, f32) {
    let (lo, hi) = chunk
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    let scale = f16::from_f32((hi - lo).max(1e-5) / 15.0).to_f32();
    let zero = (-round_even(lo / scale)).clamp(0.0, 15.0);
    (scale, zero)
}

/// `v.round_ties_even()` for the 4-bit grid without a libm call (the AWQ
/// search rounds every weight ~20 times): adding 1.5·2²³ leaves no fraction
/// bits, so the FPU's own ties-to-even rounding does the work. Inputs beyond
/// ±2²² are clamped first; every caller clamps the level to 0..=15 after
/// adding a zero point in 0..=15, so the clamp changes no result.
#[inline]
fn round_even(v: f32) -> f32 {
    const LIMIT: f32 = 4_194_304.0; // 2^22
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    (v.clamp(-LIMIT, LIMIT) + MAGIC) - MAGIC
}

/// The 4-bit level (0..=15, as a float) of `x` in a group with `scale` and `zero`.
#[inline]
pub fn rtn_level(x: f32, scale: f32, zero: f32) -> f32 {
    (round_even(x / scale) + zero).clamp(0.0, 15.0)
}

/// Rounds `chunk` (one group) to the values [`quantize_rtn`] would store:
/// AutoAWQ's pseudo-quantiser, used by the activation-aware search.
pub fn fake_quantize_group(chunk: &mut [f32]) {
    let (scale, zero) = rtn_group(chunk);
    for x in chunk.iter_mut() {
        *x = (rtn_level(*x, scale, zero) - zero) * scale;
    }
}

/// The `quantization_config` a model's `config.json` carries for this layout.
pub fn quantization_config(group: usize) -> serde_json::Value {
    json!({
        "quant_method": "awq",
        "bits": 4,
        "group_size": group,
        "zero_point": true,
        "version": "gemm",
    })
}

/// [`quantization_config`] naming modules left unquantised (e.g. `lm_head`).
pub fn quantization_config_with(
    group: usize,
    modules_to_not_convert: &[String],
) -> serde_json::Value {
    let mut v = quantization_config(group);
    if !modules_to_not_convert.is_empty() {
        v["modules_to_not_convert"] = json!(modules_to_not_convert);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift) so tests need no extra crates.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn nibble(&mut self) -> u8 {
            (self.next() >> 20) as u8 & 0xF
        }
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    #[test]
    fn nibble_order_matches_the_published_layout() {
        // Outputs 0..8 of one input hold values 0..8: word nibbles read 0,2,4,6,1,3,5,7.
        let q: Vec<u8> = (0..8).collect(); // [out=8][in=1]
        let t = pack_linear(&q, &[0; 8], &[1.0; 8], 1, 8, 1).expect("pack");
        assert_eq!(t.qweight, vec![0x7531_6420]);
    }

    #[test]
    fn round_even_is_round_ties_even() {
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        let mut values: Vec<f32> = (-40..=40).map(|i| i as f32 * 0.5).collect();
        values.extend([1e-7, -1e-7, 4_194_303.5, -4_194_302.5, 8e6, -3e9]);
        values.extend((0..10_000).map(|_| (rng.unit() - 0.5) * 64.0));
        for v in values {
            let want = v.clamp(-4_194_304.0, 4_194_304.0).round_ties_even();
            assert_eq!(round_even(v), want, "{v}");
        }
        assert!(round_even(f32::NAN).is_nan());
    }

    #[test]
    fn pack_unpack_is_identity() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (n_in, n_out, group) = (256, 48, 64);
        let q: Vec<u8> = (0..n_in * n_out).map(|_| rng.nibble()).collect();
        let zeros: Vec<u8> = (0..n_in / group * n_out).map(|_| rng.nibble()).collect();
        let scales: Vec<f32> = (0..n_in / group * n_out)
            .map(|_| f16::from_f32(rng.unit() * 0.1).to_f32())
            .collect();
        let t = pack_linear(&q, &zeros, &scales, n_in, n_out, group).expect("pack");
        assert_eq!(t.qweight.len(), n_in * n_out / 8);
        assert_eq!(t.qzeros.len(), n_in / group * n_out / 8);
        let u = t.unpack().expect("unpack");
        assert_eq!(u.q, q);
        assert_eq!(u.zeros, zeros);
        assert_eq!(u.scales, scales);
    }

    #[test]
    fn rtn_error_is_bounded_against_float64() {
        let mut rng = Rng(12345);
        let (n_in, n_out, group) = (512, 32, 128);
        let w: Vec<f32> = (0..n_in * n_out)
            .map(|_| (rng.unit() - 0.5) * 0.2 + if rng.nibble() == 0 { 0.3 } else { 0.0 })
            .collect();
        let t = quantize_rtn(&w, n_in, n_out, group).expect("quantize");
        let d = dequantize_linear(&t).expect("dequantize");
        let AwqUnpacked { zeros, scales, .. } = t.unpack().expect("unpack");
        let mut sq = 0f64;
        for o in 0..n_out {
            for g in 0..n_in / group {
                let chunk = &w[o * n_in + g * group..o * n_in + (g + 1) * group];
                let lo = chunk
                    .iter()
                    .cloned()
                    .fold(f64::INFINITY, |a, b| a.min(b as f64));
                let hi = chunk
                    .iter()
                    .cloned()
                    .fold(f64::NEG_INFINITY, |a, b| a.max(b as f64));
                let step = scales[g * n_out + o] as f64;
                // The f16 scale covers the range to within its rounding.
                assert!(
                    (step * 15.0 - (hi - lo)).abs() <= (hi - lo) * 1e-3,
                    "{o}/{g}"
                );
                // The grid is (k - zero) × step for k in 0..=15.
                let zero = zeros[g * n_out + o] as f64;
                let (grid_lo, grid_hi) = (-zero * step, (15.0 - zero) * step);
                for j in 0..group {
                    let i = g * group + j;
                    let x = w[o * n_in + i] as f64;
                    let err = (d[o * n_in + i] as f64 - x).abs();
                    // Inside the grid: half a step. Outside (the zero point's rounding
                    // moved the grid by up to half a step): clamped, under a step.
                    let bound = if (grid_lo..=grid_hi).contains(&x) {
                        0.5
                    } else {
                        1.0
                    };
                    assert!(
                        err <= bound * step * (1.0 + 1e-5),
                        "w[{o}][{i}] = {x}: error {err}, step {step}, grid [{grid_lo}, {grid_hi}]"
                    );
                    sq += err * err;
                }
            }
        }
        // Mean squared error of uniform rounding is step²/12; allow some slack.
        let mean_step: f64 = scales.iter().map(|&s| s as f64).sum::<f64>() / scales.len() as f64;
        let mse = sq / (n_in * n_out) as f64;
        assert!(
            mse < mean_step * mean_step / 12.0 * 1.5,
            "mse {mse}, step {mean_step}"
        );
    }

    #[test]
    fn rtn_handles_constant_and_all_positive_groups() {
        let (n_in, n_out) = (8, 8);
        // Row 0 constant 0.5 (range clamps to 1e-5), row 1 all positive.
        let mut w = vec![0.0f32; n_in * n_out];
        w[..8].fill(0.5);
        for (i, v) in w[8..16].iter_mut().enumerate() {
            *v = 1.0 + i as f32 * 0.1;
        }
        let t = quantize_rtn(&w, n_in, n_out, 8).expect("quantize");
        let d = dequantize_linear(&t).expect("dequantize");
        // A positive range cannot include 0, the zero point clamps at 0; values clamp at 15.
        let zeros = t.unpack().expect("unpack").zeros;
        assert_eq!(zeros[0], 0);
        assert_eq!(zeros[1], 0);
        // Zero rows stay exactly zero.
        assert!(d[16..].iter().all(|&x| x == 0.0));
        assert!(d.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn shape_errors() {
        assert_eq!(
            quantize_rtn(&[0.0; 12 * 12], 12, 12, 4).unwrap_err(),
            AwqError::OutNotMultipleOf8 { out_features: 12 }
        );
        assert_eq!(
            quantize_rtn(&[0.0; 100 * 8], 100, 8, 128).unwrap_err(),
            AwqError::InNotMultipleOfGroup {
                in_features: 100,
                group: 128
            }
        );
        assert_eq!(
            quantize_rtn(&[0.0; 8], 1, 8, 0).unwrap_err(),
            AwqError::ZeroGroup
        );
        assert!(matches!(
            quantize_rtn(&[0.0; 7], 1, 8, 1).unwrap_err(),
            AwqError::WrongLength { what: "weight", .. }
        ));
        assert!(matches!(
            pack_linear(&[16; 8], &[0; 8], &[1.0; 8], 1, 8, 1).unwrap_err(),
            AwqError::NotFourBit {
                what: "q",
                index: 0,
                value: 16
            }
        ));
        assert!(matches!(
            quantize_rtn(&[f32::NAN; 8], 1, 8, 1).unwrap_err(),
            AwqError::NotFinite { what: "weight", .. }
        ));
        let mut t = pack_linear(&[1; 8], &[0; 8], &[1.0; 8], 1, 8, 1).expect("pack");
        t.scales.pop();
        assert!(matches!(
            dequantize_linear(&t).unwrap_err(),
            AwqError::WrongLength { what: "scales", .. }
        ));
    }

    /// An independent dequantiser in numpy, written from the published layout
    /// (not from our code): it must give exactly our weights.
    const NUMPY_DEQUANT: &str = r#"
import sys, numpy as np
d, n_in, n_out, group = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
qweight = np.fromfile(d + "/qweight", dtype="<i4").reshape(n_in, n_out // 8)
qzeros = np.fromfile(d + "/qzeros", dtype="<i4").reshape(n_in // group, n_out // 8)
scales = np.fromfile(d + "/scales", dtype="<f2").reshape(n_in // group, n_out).astype(np.float32)
def unpack(words):
    w = words.view(np.uint32)
    nib = np.stack([(w >> (4 * k)) & 0xF for k in range(8)], axis=-1)  # [..., word, k]
    out = np.empty_like(nib)
    out[..., [0, 2, 4, 6, 1, 3, 5, 7]] = nib  # nibble k holds column order[k]
    return out.reshape(words.shape[0], -1).astype(np.float32)
q = unpack(qweight)                                  # [in, out]
z = np.repeat(unpack(qzeros), group, axis=0)         # [in, out]
s = np.repeat(scales, group, axis=0)                 # [in, out]
w = ((q - z) * s).T.astype("<f4")                    # HF orientation [out, in]
w.tofile(d + "/w")
"#;

    #[test]
    fn dequantize_matches_independent_numpy() {
        let Some(py) = crate::test_python::python(&["numpy"]) else {
            return;
        };
        let mut rng = Rng(77);
        let (n_in, n_out, group) = (384, 64, 128);
        let w: Vec<f32> = (0..n_in * n_out).map(|_| rng.unit() - 0.5).collect();
        let t = quantize_rtn(&w, n_in, n_out, group).expect("quantize");
        let dir = tempfile::tempdir().expect("tempdir");
        let put = |name: &str, bytes: Vec<u8>| {
            std::fs::write(dir.path().join(name), bytes).expect("write");
        };
        put(
            "qweight",
            t.qweight.iter().flat_map(|v| v.to_le_bytes()).collect(),
        );
        put(
            "qzeros",
            t.qzeros.iter().flat_map(|v| v.to_le_bytes()).collect(),
        );
        put(
            "scales",
            t.scales.iter().flat_map(|v| v.to_le_bytes()).collect(),
        );
        let out = std::process::Command::new(&py)
            .arg("-c")
            .arg(NUMPY_DEQUANT)
            .arg(dir.path())
            .args([n_in, n_out, group].map(|v| v.to_string()))
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "numpy dequantiser failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs: Vec<f32> = std::fs::read(dir.path().join("w"))
            .expect("read numpy output")
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let ours = dequantize_linear(&t).expect("dequantize");
        assert_eq!(theirs.len(), ours.len());
        let differ = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{differ} weights differ from numpy");
        // And the round trip stays close to the input (4-bit RTN).
        let max_err = ours
            .iter()
            .zip(&w)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_err < 1.0 / 15.0, "max error {max_err}");
    }

    #[test]
    fn config_json() {
        let v = quantization_config(128);
        assert_eq!(
            v.to_string(),
            r#"{"quant_method":"awq","bits":4,"group_size":128,"zero_point":true,"version":"gemm"}"#
        );
        let v = quantization_config_with(64, &["lm_head".to_string()]);
        assert_eq!(v["group_size"], 64);
        assert_eq!(v["modules_to_not_convert"][0], "lm_head");
    }
}
