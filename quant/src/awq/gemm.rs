//! A small dense f32 matrix product for the AWQ search (Gram matrices and
//! quadratic forms), parallel over row blocks; recompiled with AVX2+FMA when
//! the CPU has them (checked at run time), so the fixed-size inner loops
//! vectorise eight lanes wide.

use rayon::prelude::*;

/// Rows of `a` per register block.
const MR: usize = 4;
/// Columns of `b` per register block.
const NR: usize = 16;

/// `a · b` with `a` `m × k` and `b` `k × n`, both row-major; `m × n` row-major.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(a.len(), m * k, "matmul: a is not m × k");
    assert_eq!(b.len(), k * n, "matmul: b is not k × n");
    let mut c = vec![0f32; m * n];
    if n == 0 {
        return c;
    }
    c.par_chunks_mut(MR * n)
        .zip(a.par_chunks(MR * k))
        .for_each(|(c_blk, a_blk)| block(a_blk, b, k, n, c_blk));
    c
}

fn block(a: &[f32], b: &[f32], k: usize, n: usize, c: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just checked.
            unsafe { block_avx2(a, b, k, n, c) };
            return;
        }
    }
    block_portable(a, b, k, n, c);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(a: &[f32], b: &[f32], k: usize, n: usize, c: &mut [f32]) {
    block_portable(a, b, k, n, c)
}

/// Up to `MR` rows of `a` (`rows × k`) times `b`, into `c` (`rows × n`).
#[inline(always)]
fn block_portable(a: &[f32], b: &[f32], k: usize, n: usize, c: &mut [f32]) {
    let rows = c.len() / n;
    let mut j0 = 0;
    while j0 < n {
        let nc = NR.min(n - j0);
        if rows == MR && nc == NR {
            let mut acc = [[0f32; NR]; MR];
            for p in 0..k {
                let bp: &[f32; NR] = b[p * n + j0..p * n + j0 + NR]
                    .try_into()
                    .expect("NR columns");
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let av = a[r * k + p];
                    for (x, &y) in acc_r.iter_mut().zip(bp) {
                        *x += av * y;
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                c[r * n + j0..r * n + j0 + NR].copy_from_slice(acc_r);
            }
        } else {
            for r in 0..rows {
                for j in j0..j0 + nc {
                    let mut s = 0f32;
                    for p in 0..k {
                        s += a[r * k + p] * b[p * n + j];
                    }
                    c[r * n + j] = s;
                }
            }
        }
        j0 += nc;
    }
}

/// `xᵀ x` for `x` `t × n` (row-major): the `n × n` Gram matrix of its rows.
pub fn gram(x: &[f32], t: usize, n: usize) -> Vec<f32> {
    let xt = transpose(x, t, n);
    matmul(&xt, x, n, t, n)
}

/// `m × n` row-major to `n × m` row-major.
pub fn transpose(x: &[f32], m: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            out[j * m + i] = x[i * n + j];
        }
    }
    out
}

/// `Σ_r d_rᵀ G d_r` over the rows `d_r` of `d` (`rows × n`), `G` `n × n`:
/// the summed squared output error `‖X dᵀ‖²` when `G = XᵀX`.
pub fn quadratic_form_sum(d: &[f32], g: &[f32], rows: usize, n: usize) -> f64 {
    let dg = matmul(d, g, rows, n, n);
    dg.par_chunks(n.max(1))
        .zip(d.par_chunks(n.max(1)))
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (*x as f64) * (*y as f64))
                .sum::<f64>()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    c[i * n + j] += a[i * k + p] as f64 * b[p * n + j] as f64;
                }
            }
        }
        c
    }

    #[test]
    fn matmul_matches_naive_on_ragged_shapes() {
        let mut rng = quern_formats::testutil::SplitMix(5);
        for &(m, k, n) in &[
            (1, 1, 1),
            (4, 16, 16),
            (7, 33, 19),
            (9, 64, 50),
            (13, 5, 48),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.uniform() - 0.5).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.uniform() - 0.5).collect();
            let c = matmul(&a, &b, m, k, n);
            let r = naive(&a, &b, m, k, n);
            for (x, y) in c.iter().zip(&r) {
                assert!((*x as f64 - y).abs() < 1e-4, "{m}x{k}x{n}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn quadratic_form_is_the_output_error() {
        let mut rng = quern_formats::testutil::SplitMix(6);
        let (t, n, rows) = (37, 24, 9);
        let x: Vec<f32> = (0..t * n).map(|_| rng.uniform() - 0.5).collect();
        let d: Vec<f32> = (0..rows * n).map(|_| rng.uniform() - 0.5).collect();
        let direct: f64 = naive(&x, &transpose(&d, rows, n), t, n, rows)
            .iter()
            .map(|v| v * v)
            .sum();
        let via_gram = quadratic_form_sum(&d, &gram(&x, t, n), rows, n);
        assert!(
            (direct - via_gram).abs() < 1e-3 * direct,
            "{direct} vs {via_gram}"
        );
    }
}
