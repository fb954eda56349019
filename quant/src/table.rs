//! Byte-level dispatch over every block format this crate implements: the one place
//! the rest of quern asks "quantise these values to type T" or "expand these bytes".

use crate::block::BlockFormat;
use crate::error::QuantError;
use crate::plain;
use quern_formats::GgmlType;
use rayon::prelude::*;

/// Calls `$body` with `$F` bound to the [`BlockFormat`] of `$ty`, or evaluates `$none`.
macro_rules! with_format {
    ($ty:expr, $F:ident => $body:expr, _ => $none:expr) => {
        match $ty {
            GgmlType::Q8_0 => {
                type $F = crate::q8_0::Q8_0;
                $body
            }
            GgmlType::Q4_0 => {
                type $F = crate::q4_0::Q4_0;
                $body
            }
            GgmlType::Q4_1 => {
                type $F = crate::q4_1::Q4_1;
                $body
            }
            GgmlType::Q5_0 => {
                type $F = crate::q5_0::Q5_0;
                $body
            }
            GgmlType::Q5_1 => {
                type $F = crate::q5_1::Q5_1;
                $body
            }
            GgmlType::Q2K => {
                type $F = crate::q2_k::Q2K;
                $body
            }
            GgmlType::Q3K => {
                type $F = crate::q3_k::Q3K;
                $body
            }
            GgmlType::Q4K => {
                type $F = crate::q4_k::Q4K;
                $body
            }
            GgmlType::Q5K => {
                type $F = crate::q5_k::Q5K;
                $body
            }
            GgmlType::Q6K => {
                type $F = crate::q6_k::Q6K;
                $body
            }
            GgmlType::Q8K => {
                type $F = crate::q8_k::Q8K;
                $body
            }
            GgmlType::Iq4Nl => {
                type $F = crate::iq4_nl::Iq4Nl;
                $body
            }
            GgmlType::Iq4Xs => {
                type $F = crate::iq4_xs::Iq4Xs;
                $body
            }
            _ => $none,
        }
    };
}

/// Whether [`quantize_row`] supports `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16)
        || with_format!(ty, F => { let _ = F::TYPE; true }, _ => false)
}

/// Whether [`dequantize_row`] supports `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    can_quantize(ty)
}

/// Bytes that `n` values of `ty` take, or an error when they are not whole blocks.
pub fn row_bytes(ty: GgmlType, n: usize) -> Result<usize, QuantError> {
    bytes_for(ty, n)
}

/// Checks that `n` values fill whole blocks of `ty` and returns the bytes they take.
fn bytes_for(ty: GgmlType, n: usize) -> Result<usize, QuantError> {
    let block = ty.block_size();
    if !n.is_multiple_of(block) {
        return Err(QuantError::NotBlockMultiple { ty, len: n, block });
    }
    Ok(n / block * ty.type_size())
}

/// Quantises `src` (a whole number of blocks) into `dst` (exactly the bytes they take).
///
/// `importance`, when given, has one weight per value of `src`; quantisers that take
/// weights (K-quants, IQ4, and Q4_0/Q4_1/Q5_0/Q5_1 block by block) minimise the
/// weighted error; Q8_0 and the float types ignore it. Without it every format's
/// output is bit-identical to ggml's reference.
pub fn quantize_row(
    ty: GgmlType,
    src: &[f32],
    importance: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<(), QuantError> {
    if !can_quantize(ty) {
        return Err(QuantError::QuantizeUnsupported(ty));
    }
    let expected = bytes_for(ty, src.len())?;
    if dst.len() != expected {
        return Err(QuantError::DstBytes {
            ty,
            got: dst.len(),
            expected,
        });
    }
    if let Some(w) = importance {
        if w.len() != src.len() {
            return Err(QuantError::ImportanceLen {
                got: w.len(),
                expected: src.len(),
            });
        }
    }
    match ty {
        GgmlType::F32 => plain::quantize_f32(src, dst),
        GgmlType::F16 => plain::quantize_f16(src, dst),
        GgmlType::Bf16 => plain::quantize_bf16(src, dst),
        _ => with_format!(ty, F => {
            let blocks = as_blocks_mut::<F>(dst)?;
            F::quantize_row(src, importance, blocks)
        }, _ => return Err(QuantError::QuantizeUnsupported(ty))),
    }
    Ok(())
}

/// Expands `src` (whole blocks of `ty`) into `dst` (exactly the values they hold).
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    if !can_dequantize(ty) {
        return Err(QuantError::DequantizeUnsupported(ty));
    }
    let type_size = ty.type_size();
    if !src.len().is_multiple_of(type_size) {
        return Err(QuantError::NotWholeBlocks {
            ty,
            len: src.len(),
            type_size,
        });
    }
    let expected = src.len() / type_size * ty.block_size();
    if dst.len() != expected {
        return Err(QuantError::DstValues {
            ty,
            got: dst.len(),
            expected,
        });
    }
    match ty {
        GgmlType::F32 => plain::dequantize_f32(src, dst),
        GgmlType::F16 => plain::dequantize_f16(src, dst),
        GgmlType::Bf16 => plain::dequantize_bf16(src, dst),
        _ => with_format!(ty, F => {
            let blocks = as_blocks::<F>(src)?;
            F::dequantize_row(blocks, dst)
        }, _ => return Err(QuantError::DequantizeUnsupported(ty))),
    }
    Ok(())
}

/// Quantises a row-major matrix of `src.len() / row_len` rows in parallel over rows.
/// `importance` is per column (`row_len` weights), shared by every row.
pub fn quantize_matrix(
    ty: GgmlType,
    src: &[f32],
    row_len: usize,
    importance: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<(), QuantError> {
    if !can_quantize(ty) {
        return Err(QuantError::QuantizeUnsupported(ty));
    }
    if row_len == 0 || !src.len().is_multiple_of(row_len) {
        return Err(QuantError::RowLen {
            len: src.len(),
            row_len,
        });
    }
    let row_bytes = bytes_for(ty, row_len)?;
    let expected = src.len() / row_len * row_bytes;
    if dst.len() != expected {
        return Err(QuantError::DstBytes {
            ty,
            got: dst.len(),
            expected,
        });
    }
    if let Some(w) = importance {
        if w.len() != row_len {
            return Err(QuantError::ImportanceLen {
                got: w.len(),
                expected: row_len,
            });
        }
    }
    src.par_chunks(row_len)
        .zip(dst.par_chunks_mut(row_bytes))
        .try_for_each(|(row, out)| quantize_row(ty, row, importance, out))
}

/// Views bytes as blocks. Blocks have alignment 1, so only a ragged length can fail,
/// and callers have checked it; the error keeps this panic-free regardless.
fn as_blocks<F: BlockFormat>(bytes: &[u8]) -> Result<&[F::Block], QuantError> {
    bytemuck::try_cast_slice(bytes).map_err(|_| QuantError::NotWholeBlocks {
        ty: F::TYPE,
        len: bytes.len(),
        type_size: F::TYPE.type_size(),
    })
}

fn as_blocks_mut<F: BlockFormat>(bytes: &mut [u8]) -> Result<&mut [F::Block], QuantError> {
    let len = bytes.len();
    bytemuck::try_cast_slice_mut(bytes).map_err(|_| QuantError::NotWholeBlocks {
        ty: F::TYPE,
        len,
        type_size: F::TYPE.type_size(),
    })
}
