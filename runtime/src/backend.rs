//! The interface every compute backend implements for the matrix-heavy operations.
//!
//! The model keeps the cheap element-wise work (norms, rope, softmax) on the host
//! and hands each weight product to a [`Backend`]; a CUDA backend implements the
//! same trait over device copies of the weights.

use quern_formats::GgmlType;

use crate::error::RuntimeError;

/// A weight matrix as it lies in the file: `rows` rows of `cols` values of `ty`,
/// row-major, each row a whole number of blocks.
#[derive(Debug, Clone, Copy)]
pub struct WeightView<'a> {
    pub name: &'a str,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl WeightView<'_> {
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_size() * self.ty.type_size()
    }

    /// Row `r`'s bytes.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }
}

pub trait Backend: Send + Sync {
    /// A short name for messages ("cpu", "cuda").
    fn name(&self) -> &'static str;

    /// Whether [`Backend::matmul`] accepts weights of `ty`.
    fn supports(&self, ty: GgmlType) -> bool;

    /// `out[t * w.rows + r] = dot(w row r, x[t * w.cols ..][.. w.cols])` for each of
    /// `n_tokens` activation rows.
    fn matmul(
        &self,
        w: &WeightView<'_>,
        x: &[f32],
        n_tokens: usize,
        out: &mut [f32],
    ) -> Result<(), RuntimeError>;
}

/// Checks the slice lengths a matmul call is given, so backends can index freely.
pub fn check_matmul(
    w: &WeightView<'_>,
    x: &[f32],
    n_tokens: usize,
    out: &[f32],
) -> Result<(), RuntimeError> {
    let err = |what: String| RuntimeError::Shape {
        tensor: w.name.to_string(),
        what,
    };
    if !w.cols.is_multiple_of(w.ty.block_size()) {
        return Err(err(format!(
            "row length {} is not a multiple of the {} block size {}",
            w.cols,
            w.ty,
            w.ty.block_size()
        )));
    }
    if w.data.len() != w.rows * w.row_bytes() {
        return Err(err(format!(
            "{} bytes of data for {}x{} {}",
            w.data.len(),
            w.rows,
            w.cols,
            w.ty
        )));
    }
    if x.len() != n_tokens * w.cols || out.len() != n_tokens * w.rows {
        return Err(err(format!(
            "activations {} / output {} for {} tokens of {}x{}",
            x.len(),
            out.len(),
            n_tokens,
            w.rows,
            w.cols
        )));
    }
    Ok(())
}
