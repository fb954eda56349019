//! Dense f32 products for the AWQ search (Gram matrices and quadratic forms).
//! The micro-kernels are `matrixmultiply`'s (runtime-detected AVX2/FMA and
//! NEON); this module splits the output rows across rayon's threads, so one
//! product uses every core.

use rayon::prelude::*;

/// Output rows per parallel task, at least: each task packs all of `b`, so
/// tasks are as large as two per thread allows.
const MIN_ROWS_PER_TASK: usize = 64;

/// `a · b` with `a` `m × k` and `b` `k × n`, both row-major; `m × n` row-major.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(a.len(), m * k, "matmul: a is not m × k");
    assert_eq!(b.len(), k * n, "matmul: b is not k × n");
    let mut c = vec![0f32; m * n];
    if n == 0 || k == 0 {
        return c;
    }
    let per_task = m
        .div_ceil(2 * rayon::current_num_threads())
        .max(MIN_ROWS_PER_TASK);
    c.par_chunks_mut(per_task * n)
        .zip(a.par_chunks(per_task * k))
        .for_each(|(c_blk, a_blk)| {
            let rows = c_blk.len() / n;
            // SAFETY: a_blk is rows × k, b is k × n, c_blk is rows × n, all
            // row-major and contiguous (the strides below), checked above.
            unsafe {
                matrixmultiply::sgemm(
                    rows,
                    k,
                    n,
                    1.0,
                    a_blk.as_ptr(),
                    k as isize,
                    1,
                    b.as_ptr(),
                    n as isize,
                    1,
                    0.0,
                    c_blk.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
        });
    c
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
            (130, 70, 33),
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
