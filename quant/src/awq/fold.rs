//! Folding AWQ's scales (and clipping) into the model's tensors.
//!
//! For a group of linears sharing an input with scales `s`: the linears'
//! columns are multiplied by `s`, and whatever produces the input divides its
//! output by `s`: an RMS norm's weight (`x̂·g/s`), or the rows (and bias) of the
//! preceding linear (v before o, up before down: o's input is a mix of v's rows,
//! down's input is `silu(gate)·up`, linear in up's rows). In float the model
//! computes the same function; see the runtime's fold tests.

use std::collections::HashMap;

/// What happens to one tensor (by GGUF name).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TensorFold {
    /// Multiply column `j` of every row by `col_mul[j]` (the linear's input scales).
    pub col_mul: Option<Vec<f32>>,
    /// Divide row `i` (element `i` of a vector: norm weights, biases) by `row_div[i]`.
    pub row_div: Option<Vec<f32>>,
    /// Clamp each `(row, group)` of the scaled weights to `[-max, max]`.
    pub clip: Option<Clip>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    pub group: usize,
    /// Per `(row, group)`, row-major.
    pub max: Vec<f32>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("AWQ fold for tensor {tensor}: {what}")]
pub struct FoldError {
    pub tensor: String,
    pub what: String,
}

/// Every tensor's fold, by GGUF name.
#[derive(Debug, Clone, Default)]
pub struct Folds {
    pub tensors: HashMap<String, TensorFold>,
}

impl Folds {
    pub fn get(&self, name: &str) -> Option<&TensorFold> {
        self.tensors.get(name)
    }

    fn entry(&mut self, name: &str) -> &mut TensorFold {
        self.tensors.entry(name.to_string()).or_default()
    }

    /// Scales `s` on the input of `linears`, divided out of `producers`
    /// (a norm weight, or a linear's rows and its bias).
    pub fn add_scale(&mut self, s: &[f32], linears: &[&str], producers: &[&str]) {
        for l in linears {
            let e = self.entry(l);
            e.col_mul = Some(match e.col_mul.take() {
                Some(prev) => prev.iter().zip(s).map(|(a, b)| a * b).collect(),
                None => s.to_vec(),
            });
        }
        for p in producers {
            let e = self.entry(p);
            e.row_div = Some(match e.row_div.take() {
                Some(prev) => prev.iter().zip(s).map(|(a, b)| a * b).collect(),
                None => s.to_vec(),
            });
        }
    }

    pub fn add_clip(&mut self, linear: &str, clip: Clip) {
        self.entry(linear).clip = Some(clip);
    }

    /// Applies `name`'s fold to `values` (`rows × cols`, row-major; a vector is
    /// one column). Tensors without a fold are left alone.
    pub fn apply(&self, name: &str, values: &mut [f32], cols: usize) -> Result<(), FoldError> {
        let Some(f) = self.get(name) else {
            return Ok(());
        };
        f.apply(name, values, cols)
    }
}

impl TensorFold {
    pub fn apply(&self, name: &str, values: &mut [f32], cols: usize) -> Result<(), FoldError> {
        let err = |what: String| FoldError {
            tensor: name.to_string(),
            what,
        };
        if cols == 0 || !values.len().is_multiple_of(cols) {
            return Err(err(format!(
                "{} values are not rows of {cols}",
                values.len()
            )));
        }
        let rows = values.len() / cols;
        if let Some(d) = &self.row_div {
            if d.len() != rows {
                return Err(err(format!("{} row scales for {rows} rows", d.len())));
            }
            for (row, &di) in values.chunks_exact_mut(cols).zip(d) {
                for v in row.iter_mut() {
                    *v /= di;
                }
            }
        }
        if let Some(m) = &self.col_mul {
            if m.len() != cols {
                return Err(err(format!("{} column scales for {cols} columns", m.len())));
            }
            for row in values.chunks_exact_mut(cols) {
                for (v, &mj) in row.iter_mut().zip(m) {
                    *v *= mj;
                }
            }
        }
        if let Some(c) = &self.clip {
            if c.group == 0
                || !cols.is_multiple_of(c.group)
                || c.max.len() * c.group != values.len()
            {
                return Err(err(format!(
                    "{} clip values of group {} for {rows} × {cols}",
                    c.max.len(),
                    c.group
                )));
            }
            super::clip::apply_clip(values, c.group, &c.max);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_compose_and_shapes_are_checked() {
        let mut f = Folds::default();
        f.add_scale(
            &[2.0, 4.0],
            &["blk.0.ffn_up.weight"],
            &["blk.0.ffn_norm.weight"],
        );
        f.add_scale(
            &[0.5, 0.5, 0.5],
            &["blk.0.ffn_down.weight"],
            &["blk.0.ffn_up.weight"],
        );
        // up: rows ÷ (0.5, 0.5, 0.5), columns × (2, 4).
        let mut up = vec![1.0f32; 6];
        f.apply("blk.0.ffn_up.weight", &mut up, 2).expect("apply");
        assert_eq!(up, vec![4.0, 8.0, 4.0, 8.0, 4.0, 8.0]);
        let mut norm = vec![1.0f32, 1.0];
        f.apply("blk.0.ffn_norm.weight", &mut norm, 1)
            .expect("apply");
        assert_eq!(norm, vec![0.5, 0.25]);
        let mut other = vec![3.0f32; 4];
        f.apply("blk.0.attn_q.weight", &mut other, 2)
            .expect("no fold");
        assert_eq!(other, vec![3.0; 4]);
        assert!(f.apply("blk.0.ffn_up.weight", &mut [0.0; 4], 2).is_err());
        f.add_clip(
            "blk.0.ffn_down.weight",
            Clip {
                group: 3,
                max: vec![1.0, 0.25],
            },
        );
        let mut down = vec![4.0f32, -4.0, 1.0, 4.0, 0.1, -4.0];
        f.apply("blk.0.ffn_down.weight", &mut down, 3)
            .expect("apply");
        assert_eq!(down, vec![1.0, -1.0, 0.5, 0.25, 0.05, -0.25]);
    }
}
