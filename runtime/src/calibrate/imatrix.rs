//! The importance matrix llama.cpp's `llama-imatrix` accumulates, collected
//! from our forward pass: for each weight matrix, the sum over every token of
//! the squared activation entering each input column, and the number of tokens.
//!
//! Which matrices: every `blk.*` matrix, plus `output.weight` when asked (the
//! output projection of a model with tied embeddings is `token_embd.weight`,
//! which llama-imatrix does not collect either). Matrices that share one input
//! (q/k/v, gate/up) get the same sums; they are accumulated once per group.

use std::collections::HashMap;

use quern_formats::imatrix::{Imatrix, ImatrixEntry};

use crate::observe::Observer;

/// The name llama-imatrix collects for the output projection (`--process-output`).
pub const OUTPUT_TENSOR: &str = "output.weight";

/// Whether llama-imatrix collects statistics for `tensor`.
pub fn collects(tensor: &str, process_output: bool) -> bool {
    tensor.starts_with("blk.") || (process_output && tensor == OUTPUT_TENSOR)
}

/// One input shared by `tensors`.
struct Group {
    tensors: Vec<String>,
    width: usize,
    /// Σ x² per column, in f64 (llama.cpp sums in f32; f64 keeps ten thousand
    /// tokens' sums exact to well below the 1% the two are compared at).
    sums: Vec<f64>,
    tokens: u64,
}

/// An [`Observer`] that accumulates the importance matrix.
pub struct ImatrixCollector {
    process_output: bool,
    groups: Vec<Group>,
    /// First tensor of a group → its index.
    index: HashMap<String, usize>,
    /// The first inconsistency seen (an observer cannot return errors).
    error: Option<String>,
}

impl ImatrixCollector {
    pub fn new(process_output: bool) -> ImatrixCollector {
        ImatrixCollector {
            process_output,
            groups: Vec::new(),
            index: HashMap::new(),
            error: None,
        }
    }

    /// Tokens seen by the busiest matrix (the chunk count is this over the chunk size).
    pub fn max_tokens(&self) -> u64 {
        self.groups.iter().map(|g| g.tokens).max().unwrap_or(0)
    }

    /// The importance matrix so far, entries sorted by name; `Err` if the forward
    /// pass reported inputs inconsistently (a bug, not bad input).
    pub fn to_imatrix(
        &self,
        datasets: Vec<String>,
        chunk_count: u64,
        chunk_size: u64,
    ) -> Result<Imatrix, String> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let mut entries = Vec::new();
        for g in &self.groups {
            let sums: Vec<f32> = g.sums.iter().map(|&s| s as f32).collect();
            for t in &g.tensors {
                entries.push(ImatrixEntry {
                    name: t.clone(),
                    sums: sums.clone(),
                    counts: vec![g.tokens as f32],
                });
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Imatrix {
            entries,
            datasets,
            chunk_count,
            chunk_size,
        })
    }
}

impl Observer for ImatrixCollector {
    fn linear_input(&mut self, tensors: &[&str], x: &[f32], n_tokens: usize) {
        let kept: Vec<&str> = tensors
            .iter()
            .copied()
            .filter(|t| collects(t, self.process_output))
            .collect();
        let (Some(first), true) = (kept.first(), n_tokens > 0) else {
            return;
        };
        let width = x.len() / n_tokens;
        if width * n_tokens != x.len() {
            self.error.get_or_insert_with(|| {
                format!(
                    "{first}: input of {} values is not {n_tokens} rows",
                    x.len()
                )
            });
            return;
        }
        let gi = match self.index.get(*first) {
            Some(&i) => i,
            None => {
                self.groups.push(Group {
                    tensors: kept.iter().map(|s| s.to_string()).collect(),
                    width,
                    sums: vec![0.0; width],
                    tokens: 0,
                });
                self.index.insert(first.to_string(), self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        let g = &mut self.groups[gi];
        if g.width != width {
            self.error.get_or_insert_with(|| {
                format!("{first}: input width changed from {} to {width}", g.width)
            });
            return;
        }
        add_squares(&mut g.sums, x, width);
        g.tokens += n_tokens as u64;
    }
}

/// `sums[j] += Σ_t x[t][j]²` over the rows of `x` (`width` columns each). Rows are
/// summed in f32 in runs of 16 and each run added in f64: the inner loop
/// vectorises and the rounding stays at a few f32 ulps per run.
pub fn add_squares(sums: &mut [f64], x: &[f32], width: usize) {
    const RUN: usize = 16;
    let mut part = vec![0f32; width];
    for rows in x.chunks(RUN * width) {
        part.fill(0.0);
        for row in rows.chunks_exact(width) {
            for (p, &v) in part.iter_mut().zip(row) {
                *p += v * v;
            }
        }
        for (s, &p) in sums.iter_mut().zip(&part) {
            *s += p as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squares_summed_per_column() {
        let width = 3;
        let x: Vec<f32> = (0..40 * width).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut sums = vec![1.0f64; width];
        add_squares(&mut sums, &x, width);
        for (j, &s) in sums.iter().enumerate() {
            let want: f64 = 1.0
                + x.chunks_exact(width)
                    .map(|r| (r[j] as f64).powi(2))
                    .sum::<f64>();
            assert!((s - want).abs() < 1e-5 * want, "{s} vs {want}");
        }
    }

    #[test]
    fn groups_share_sums_and_filter_like_llama_imatrix() {
        let mut c = ImatrixCollector::new(false);
        let x = [1.0f32, 2.0, 3.0, 4.0];
        c.linear_input(&["blk.0.attn_q.weight", "blk.0.attn_k.weight"], &x, 2);
        c.linear_input(&["blk.0.attn_q.weight", "blk.0.attn_k.weight"], &x, 2);
        c.linear_input(&["output.weight"], &x, 2);
        c.linear_input(&["token_embd.weight"], &x, 2);
        let m = c
            .to_imatrix(vec!["t.txt".into()], 1, 4)
            .expect("consistent");
        let names: Vec<&str> = m.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["blk.0.attn_k.weight", "blk.0.attn_q.weight"]);
        for e in &m.entries {
            assert_eq!(e.sums, vec![2.0 * (1.0 + 9.0), 2.0 * (4.0 + 16.0)]);
            assert_eq!(e.counts, vec![4.0]);
        }

        let mut c = ImatrixCollector::new(true);
        c.linear_input(&["output.weight"], &x, 1);
        c.linear_input(&["token_embd.weight"], &x, 1);
        let m = c.to_imatrix(vec![], 1, 1).expect("consistent");
        assert_eq!(m.entries.len(), 1);
        assert_eq!(m.entries[0].name, "output.weight");
        assert_eq!(m.entries[0].sums, vec![1.0, 4.0, 9.0, 16.0]);
    }

    #[test]
    fn a_changed_width_is_reported() {
        let mut c = ImatrixCollector::new(false);
        c.linear_input(&["blk.0.ffn_down.weight"], &[1.0; 4], 2);
        c.linear_input(&["blk.0.ffn_down.weight"], &[1.0; 6], 2);
        let e = c.to_imatrix(vec![], 1, 2).expect_err("inconsistent");
        assert!(e.contains("width changed from 2 to 3"), "{e}");
    }
}
