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
                crate::dequantize_row(src_type, s, &mut row)?;
                if check_finite {
                    first_non_finite(&row, task * ROWS_PER_TASK + i)?;
                }
                crate::quantize_row(out_type, &row, importance, d)?;
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
                crate::dequantize_row(ty, s, &mut row)?;
                first_non_finite(&row, task * ROWS_PER_TASK + i)?;
            }
            Ok(())
        })
}

fn first_non_finite(row: &[f32], row_index: usize) -> Result<(), EncodeError> {
    match row.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(col) => Err(EncodeError::NonFinite {
            row: row_index,
            col,
            value: row[col],
        }),
    }
}
