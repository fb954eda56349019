//! quern block formats.
//!
//! ggml's block layouts byte for byte, their quantisers and dequantisers, behind one
//! table keyed by [`GgmlType`]: [`quantize_row`], [`dequantize_row`], [`quantize_matrix`].

pub mod awq;
pub mod block;
pub mod error;
mod fit;
pub mod iq4_nl;
pub mod iq4_xs;
mod legacy;
mod legacy_avx2;
pub mod mix;
pub mod pipeline;
mod plain;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_k;
mod superblock;
pub mod table;

pub use block::BlockFormat;
pub use error::QuantError;
pub use quern_formats::GgmlType;
pub use table::{
    can_dequantize, can_quantize, dequantize_row, quantize_matrix, quantize_row, row_bytes,
};
