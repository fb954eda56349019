//! Re-encoding one tensor's rows from its source type to its output type, in
//! parallel over row chunks, through f32.

use std::borrow::Cow;

use quern_formats::GgmlType;
use rayon::prelude::*;

use crate::QuantError;

/// Rows per parallel task: big enough to amortise, small enough to spread.
const ROWS_PER_TASK: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error("value {value} at row {row}, column {col}: weights must be finite")]
    NonFinite { row: usize, col: usize, value: f32 },
}

/// `src` (rows of `row_len` values of `src_type`) as `out_type`; borrowed
/// unchanged when the types agree. With `check_finite`, a NaN or infinity is an
/// error rather than a silently poisoned block.
pub(crate) fn encode<'a>(
    src: Cow<'a, [u8]>,
    src_type: GgmlType,
    out_type: GgmlType,
    row_len: usize,
    importance: Option<&[f32]>,
    check_finite: bool,
) -> Result<Cow<'a, [u8]>, EncodeError> {
    if src_type == out_type && !check_finite {
        return Ok(src);
    }
    let src_row = crate::row_bytes(src_type, row_len)?;
    let out_row = crate::row_bytes(out_type, row_len)?;
    let n_rows = src.len().checked_div(src_row).unwrap_or(0);
    if src_type == out_type {
        check_rows(&src, src_type, row_len, src_row)?;
        return Ok(src);
    }
    let mut out = vec![0u8; out_row * n_rows];
    out.par_chunks_mut(out_row * ROWS_PER_TASK)
        .zip(src.par_chunks(src_row * ROWS_PER_TASK))
        .enumerate()
        .try_for_each(|(task, (dst, s))| -> Result<(), EncodeError> {
            let mut row = vec![0f32; row_len];
            for (i, (s, d)) in s.chunks(src_row).zip(dst.chunks_mut(out_row)).enumerate() {
                let values = row_values(src_type, s, &mut row)?;
                if check_finite {
                    first_non_finite(values, task * ROWS_PER_TASK + i)?;
                }
                crate::quantize_row(out_type, values, importance, d)?;
            }
            Ok(())
        })?;
    Ok(Cow::Owned(out))
}

fn check_rows(src: &[u8], ty: GgmlType, row_len: usize, src_row: usize) -> Result<(), EncodeError> {
    src.par_chunks(src_row * ROWS_PER_TASK)
        .enumerate()
        .try_for_each(|(task, s)| -> Result<(), EncodeError> {
            let mut row = vec![0f32; row_len];
            for (i, s) in s.chunks(src_row).enumerate() {
                let values = row_values(ty, s, &mut row)?;
                first_non_finite(values, task * ROWS_PER_TASK + i)?;
            }
            Ok(())
        })
}

/// One source row's values: an F32 row borrowed as it is from the memory map
/// where it can be (little-endian host, 4-byte aligned: GGUF and safetensors
/// data always are; copying it first was an eighth of a Q4_0 run's time),
/// any other row dequantised into `buf`.
fn row_values<'r>(
    ty: GgmlType,
    bytes: &'r [u8],
    buf: &'r mut [f32],
) -> Result<&'r [f32], QuantError> {
    if ty == GgmlType::F32 && cfg!(target_endian = "little") {
        if let Ok(values) = bytemuck::try_cast_slice(bytes) {
            return Ok(values);
        }
    }
    crate::dequantize_row(ty, bytes, buf)?;
    Ok(buf)
}

fn first_non_finite(row: &[f32], row_index: usize) -> Result<(), EncodeError> {
    // A branch-free scan first (all-ones exponent = NaN or infinity), so the
    // common all-finite row costs a vectorised pass, not a compare per value.
    let any = row
        .chunks(16)
        .map(|c| {
            c.iter()
                .fold(0u32, |a, v| a | (!v.to_bits() & 0x7f80_0000 == 0) as u32)
        })
        .fold(0, |a, b| a | b);
    if any == 0 {
        return Ok(());
    }
    match row.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(col) => Err(EncodeError::NonFinite {
            row: row_index,
            col,
            value: row[col],
        }),
    }
}
