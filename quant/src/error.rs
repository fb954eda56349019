//! Errors of the block-format table.

use quern_formats::GgmlType;

/// What is wrong with a quantise or dequantise request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error("{ty}: {len} values is not a whole number of {block}-value blocks")]
    NotBlockMultiple {
        ty: GgmlType,
        len: usize,
        block: usize,
    },
    #[error("{ty}: {len} bytes is not a whole number of {type_size}-byte blocks")]
    NotWholeBlocks {
        ty: GgmlType,
        len: usize,
        type_size: usize,
    },
    #[error("{ty}: destination holds {got} bytes, {expected} needed")]
    DstBytes {
        ty: GgmlType,
        got: usize,
        expected: usize,
    },
    #[error("{ty}: destination holds {got} values, {expected} needed")]
    DstValues {
        ty: GgmlType,
        got: usize,
        expected: usize,
    },
    #[error("importance vector has {got} values, {expected} expected")]
    ImportanceLen { got: usize, expected: usize },
    #[error("matrix of {len} values does not split into rows of {row_len}")]
    RowLen { len: usize, row_len: usize },
    #[error("quantising to {0} is not supported")]
    QuantizeUnsupported(GgmlType),
    #[error("dequantising {0} is not supported")]
    DequantizeUnsupported(GgmlType),
}
