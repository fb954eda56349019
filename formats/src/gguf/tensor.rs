//! Tensor descriptions shared by the GGUF reader and writer.

use crate::ggml::GgmlType;

/// One tensor info of a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `shape[0]` is `ne0`, the row length (the fastest-varying dimension).
    pub shape: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        n_elements(&self.shape).unwrap_or(u64::MAX)
    }

    /// Bytes of data. The reader checked at open that this is a whole number of blocks.
    pub fn n_bytes(&self) -> u64 {
        self.ggml_type.bytes_for(self.n_elements()).unwrap_or(0)
    }

    /// Elements per row (`ne0`); 1 for a 0-dimensional tensor.
    pub fn row_len(&self) -> u64 {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Number of rows: the product of every dimension but the first.
    pub fn n_rows(&self) -> u64 {
        self.shape
            .iter()
            .skip(1)
            .fold(1u64, |acc, &d| acc.saturating_mul(d))
    }
}

/// A tensor the writer is told about before any data is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    /// ggml order: `shape[0]` is `ne0`, the row length.
    pub shape: Vec<u64>,
    pub ggml_type: GgmlType,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, shape: Vec<u64>, ggml_type: GgmlType) -> Self {
        TensorSpec {
            name: name.into(),
            shape,
            ggml_type,
        }
    }

    /// Bytes of data, or `None` when the shape is not a whole number of rows of blocks.
    pub fn n_bytes(&self) -> Option<u64> {
        checked_n_bytes(&self.shape, self.ggml_type).ok()
    }
}

/// Product of the dimensions, `None` on overflow.
pub(crate) fn n_elements(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

/// Byte size of a tensor, or why the shape does not fit the type.
/// Rows are quantised independently, so the row length must be a whole number of blocks.
pub(crate) fn checked_n_bytes(shape: &[u64], ggml_type: GgmlType) -> Result<u64, &'static str> {
    let n = n_elements(shape).ok_or("the element count overflows u64")?;
    let row = shape.first().copied().unwrap_or(1);
    if row % ggml_type.block_size() as u64 != 0 {
        return Err("the row length (first dimension) is not a multiple of the type's block size");
    }
    ggml_type.bytes_for(n).ok_or("the byte size overflows u64")
}

pub(crate) fn align_up(x: u64, alignment: u64) -> Option<u64> {
    let rem = x % alignment;
    if rem == 0 {
        Some(x)
    } else {
        x.checked_add(alignment - rem)
    }
}

/// GGUF tensor names must fit ggml's fixed name buffer (64 bytes with the NUL).
pub const MAX_TENSOR_NAME_LEN: usize = 63;
/// ggml tensors have at most 4 dimensions.
pub const MAX_DIMS: usize = 4;
