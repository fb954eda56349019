//! AWQ's clipping search: per output row and quantisation group, the largest
//! |w| kept (weights beyond it are clamped) that minimises the group's share of
//! the output error, `δᵀ G_g δ` with `δ` the group's weight error and `G_g` the
//! group's diagonal block of the inputs' Gram matrix. As AutoAWQ does, the
//! candidates shrink the group's max |w| by 0, 5, …, 45 % (`max_shrink` 0.5 over
//! a 20-step grid); 0 % (no clipping) is one of them, so clipping never raises
//! the error it measures.

use super::AwqSearchError;
use rayon::prelude::*;

#[derive(Debug, Clone, Copy)]
pub struct ClipOptions {
    pub grid: usize,
    pub max_shrink: f32,
}

impl Default for ClipOptions {
    fn default() -> Self {
        ClipOptions {
            grid: 20,
            max_shrink: 0.5,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClipResult {
    /// Per `(row, group)`, row-major: weights are clamped to `[-max, max]`.
    pub max: Vec<f32>,
    /// Summed `δᵀ G_g δ` before and after clipping.
    pub err_unclipped: f64,
    pub err: f64,
}

/// Clamps each group of `group` consecutive weights of `w` to `[-max, max]`.
pub fn apply_clip(w: &mut [f32], group: usize, max: &[f32]) {
    for (chunk, &m) in w.chunks_exact_mut(group).zip(max) {
        for v in chunk.iter_mut() {
            *v = v.clamp(-m, m);
        }
    }
}

/// The diagonal `group × group` blocks of an `n × n` Gram matrix, with the
/// inputs divided by `s` (the weights' columns having been multiplied by it).
pub fn group_blocks(gram: &[f32], n: usize, group: usize, s: &[f32]) -> Vec<f32> {
    let n_groups = n / group;
    let mut out = vec![0f32; n_groups * group * group];
    for g in 0..n_groups {
        for i in 0..group {
            for j in 0..group {
                let (a, b) = (g * group + i, g * group + j);
                out[(g * group + i) * group + j] = gram[a * n + b] / (s[a] * s[b]);
            }
        }
    }
    out
}

/// Searches the clipping of `w` (`rows × n_in`, already scaled) quantised by
/// `Awq4 { group }`; `blocks` from [`group_blocks`].
pub fn search_clip(
    w: &[f32],
    n_in: usize,
    group: usize,
    blocks: &[f32],
    opts: &ClipOptions,
) -> Result<ClipResult, AwqSearchError> {
    if group == 0 || !n_in.is_multiple_of(group) || !w.len().is_multiple_of(n_in) {
        return Err(AwqSearchError::Shape {
            what: format!("clip: {} weights, {n_in} inputs, group {group}", w.len()),
        });
    }
    if blocks.len() != n_in * group {
        return Err(AwqSearchError::Shape {
            what: format!(
                "clip: {} Gram values for {n_in} inputs of group {group}",
                blocks.len()
            ),
        });
    }
    let n_groups = n_in / group;
    let steps = (opts.max_shrink * opts.grid as f32) as usize;
    let per_group: Vec<(f32, f64, f64)> = w
        .par_chunks_exact(group)
        .enumerate()
        .map(|(k, orig)| {
            let g = k % n_groups;
            let gb = &blocks[g * group * group..(g + 1) * group * group];
            let org_max = orig.iter().fold(0f32, |m, v| m.max(v.abs()));
            let mut cur = vec![0f32; group];
            let mut delta = vec![0f64; group];
            let (mut best_max, mut best_err, mut err0) = (org_max, f64::INFINITY, 0f64);
            for i in 0..steps.max(1) {
                let m = org_max * (1.0 - i as f32 / opts.grid as f32);
                for (c, &v) in cur.iter_mut().zip(orig) {
                    *c = v.clamp(-m, m);
                }
                quern_formats::awq::fake_quantize_group(&mut cur);
                for ((d, &c), &v) in delta.iter_mut().zip(&cur).zip(orig) {
                    *d = (c - v) as f64;
                }
                let mut err = 0f64;
                for (a, row) in delta.iter().zip(gb.chunks_exact(group)) {
                    let r: f64 = row.iter().zip(&delta).map(|(x, y)| *x as f64 * y).sum();
                    err += a * r;
                }
                if i == 0 {
                    err0 = err;
                }
                if err < best_err {
                    (best_max, best_err) = (m, err);
                }
            }
            (best_max, best_err, err0)
        })
        .collect();
    Ok(ClipResult {
        max: per_group.iter().map(|p| p.0).collect(),
        err: per_group.iter().map(|p| p.1).sum(),
        err_unclipped: per_group.iter().map(|p| p.2).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::gemm::gram;
    use super::super::FakeQuant;
    use super::*;

    #[test]
    fn clipping_never_increases_the_error_and_helps_heavy_tails() {
        let mut rng = quern_formats::testutil::SplitMix(31);
        let (t, n_in, rows, group) = (200, 128, 16, 64);
        let x: Vec<f32> = (0..t * n_in).map(|_| rng.uniform() - 0.5).collect();
        // Heavy-tailed weights: a few large values stretch each group's range.
        let w: Vec<f32> = (0..rows * n_in)
            .map(|i| {
                let v = rng.uniform() - 0.5;
                if i % 29 == 0 {
                    v * 8.0
                } else {
                    v
                }
            })
            .collect();
        let s = vec![1f32; n_in];
        let blocks = group_blocks(&gram(&x, t, n_in), n_in, group, &s);
        let r = search_clip(&w, n_in, group, &blocks, &ClipOptions::default()).expect("clip");
        assert!(r.err <= r.err_unclipped);
        assert!(
            r.err < 0.95 * r.err_unclipped,
            "{} vs {}",
            r.err,
            r.err_unclipped
        );
        // Every group's own error: clipped no worse than unclipped.
        let mut clipped = w.clone();
        apply_clip(&mut clipped, group, &r.max);
        let fq = FakeQuant::Awq4 { group };
        let (mut a, mut b) = (clipped.clone(), w.clone());
        fq.apply(&mut a, n_in, None).expect("fq");
        fq.apply(&mut b, n_in, None).expect("fq");
        let out_err = |q: &[f32]| -> f64 {
            let mut e = 0f64;
            for xt in x.chunks_exact(n_in) {
                for (qr, wr) in q.chunks_exact(n_in).zip(w.chunks_exact(n_in)) {
                    for g in 0..n_in / group {
                        let r = g * group..(g + 1) * group;
                        let d: f64 = xt[r.clone()]
                            .iter()
                            .zip(qr[r.clone()].iter().zip(&wr[r]))
                            .map(|(x, (q, w))| *x as f64 * (*q as f64 - *w as f64))
                            .sum();
                        e += d * d;
                    }
                }
            }
            e
        };
        let (ea, eb) = (out_err(&a), out_err(&b));
        assert!((ea - r.err).abs() < 1e-3 * ea, "{ea} vs {}", r.err);
        assert!((eb - r.err_unclipped).abs() < 1e-3 * eb);
    }
}
