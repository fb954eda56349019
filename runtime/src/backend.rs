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

    /// Several products of the same activations (q/k/v, gate/up): `outs[i]` gets
    /// `ws[i] · x` as [`Backend::matmul`] would write it. A backend can share the
    /// activations' preparation and one parallel pass; the default runs them in turn.
    fn matmul_many(
        &self,
        ws: &[WeightView<'_>],
        x: &[f32],
        n_tokens: usize,
        outs: &mut [&mut [f32]],
    ) -> Result<(), RuntimeError> {
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            self.matmul(w, x, n_tokens, out)?;
        }
        Ok(())
    }

    /// The backend as `Any`, for callers that can use a concrete backend's own
    /// interface (the CUDA backend's device-resident forward pass); `None` by default.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }

    /// Runs `f(i)` for every `i` in `0..n`, in parallel where the backend has
    /// host threads (the model's attention uses it); the default uses rayon.
    fn parallel_for(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(f);
    }
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
