//! Activation-aware weight quantisation (AWQ, Lin et al. 2023), the maths only:
//! per-input-channel scale search ([`scale`]), per-group clipping search
//! ([`clip`]) and folding the scales into the model ([`fold`]). The runtime
//! captures the activations; the pipelines apply the result.
//!
//! The fake quantiser ([`FakeQuant`]) is the format the weights will be stored
//! in: AutoAWQ's asymmetric 4-bit groups, or any ggml block format (the
//! K-quants weighted by an importance matrix), so the search minimises the
//! error of the quantiser actually used.

pub mod clip;
pub mod fold;
pub mod gemm;
pub mod scale;

use quern_formats::GgmlType;
use rayon::prelude::*;

use crate::QuantError;

/// Rounds weights to the values a storage format keeps ("fake" quantisation:
/// quantise, then dequantise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeQuant {
    /// AutoAWQ's asymmetric 4-bit round-to-nearest with `group` inputs per
    /// scale and zero point (`quern_formats::awq::quantize_rtn`).
    Awq4 { group: usize },
    /// A ggml block format, row by row, weighted by the importance vector when
    /// one is given (what `quern quantize --imatrix` will store).
    Ggml(GgmlType),
}

impl FakeQuant {
    /// Rounds `w` (`rows × cols`, row-major) in place. `importance` (`cols`
    /// weights, shared by every row) steers importance-weighted quantisers.
    pub fn apply(
        &self,
        w: &mut [f32],
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<(), AwqSearchError> {
        if cols == 0 {
            return Ok(());
        }
        match *self {
            FakeQuant::Awq4 { group } => {
                if group == 0 || !cols.is_multiple_of(group) {
                    return Err(AwqSearchError::Shape {
                        what: format!(
                            "{cols} input columns are not a multiple of the group size {group}"
                        ),
                    });
                }
                w.par_chunks_mut(group)
                    .for_each(quern_formats::awq::fake_quantize_group);
                Ok(())
            }
            FakeQuant::Ggml(ty) => {
                let row_bytes = crate::row_bytes(ty, cols)?;
                w.par_chunks_mut(cols).try_for_each_init(
                    || vec![0u8; row_bytes],
                    |buf, row| -> Result<(), QuantError> {
                        crate::quantize_row(ty, row, importance, buf)?;
                        crate::dequantize_row(ty, buf, row)
                    },
                )?;
                Ok(())
            }
        }
    }
}

/// Errors of the search (shapes the caller got wrong, or a quantiser's).
#[derive(Debug, thiserror::Error)]
pub enum AwqSearchError {
    #[error("AWQ search: {what}")]
    Shape { what: String },
    #[error("AWQ search: {0}")]
    Quant(#[from] QuantError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awq4_fake_quant_is_the_stored_rtn() {
        let mut rng = quern_formats::testutil::SplitMix(9);
        let (rows, cols, group) = (16, 128, 64);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.uniform() - 0.5).collect();
        let stored = quern_formats::awq::quantize_rtn(&w, cols, rows, group).expect("rtn");
        let stored = quern_formats::awq::dequantize_linear(&stored).expect("dequant");
        let mut fake = w.clone();
        FakeQuant::Awq4 { group }
            .apply(&mut fake, cols, None)
            .expect("fake");
        assert_eq!(fake, stored);
    }

    #[test]
    fn ggml_fake_quant_is_quantize_then_dequantize() {
        let mut rng = quern_formats::testutil::SplitMix(10);
        let (rows, cols) = (4, 256);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.uniform() - 0.5).collect();
        let mut fake = w.clone();
        FakeQuant::Ggml(GgmlType::Q4K)
            .apply(&mut fake, cols, None)
            .expect("fake");
        let mut buf = vec![0u8; crate::row_bytes(GgmlType::Q4K, cols).expect("bytes")];
        let mut row = vec![0f32; cols];
        crate::quantize_row(GgmlType::Q4K, &w[..cols], None, &mut buf).expect("q");
        crate::dequantize_row(GgmlType::Q4K, &buf, &mut row).expect("dq");
        assert_eq!(&fake[..cols], &row[..]);
        assert_ne!(fake, w);
    }
}
