//! The per-format trait and the little helpers every block layout shares.

use quern_formats::GgmlType;

/// One ggml block format: its block struct and row quantiser/dequantiser.
///
/// Callers pass `src.len() == dst.len() * TYPE.block_size()` (the byte-level table in
/// [`crate::table`] checks this and reports a [`crate::QuantError`]); extra values on either
/// side are ignored rather than panicking.
pub trait BlockFormat {
    const TYPE: GgmlType;
    /// `#[repr(C)]`, alignment 1 (fields are byte arrays) so any byte slice can be viewed
    /// as blocks, whatever the alignment of the memory map it comes from.
    type Block: bytemuck::Pod;

    /// Quantises `src` into `dst`. `importance` (same length as `src`) weights the error
    /// of each value; formats whose reference quantiser takes no weights ignore it.
    fn quantize_row(src: &[f32], importance: Option<&[f32]>, dst: &mut [Self::Block]);

    /// Expands `src` into `dst` (`dst.len() == src.len() * TYPE.block_size()`).
    fn dequantize_row(src: &[Self::Block], dst: &mut [f32]);
}

/// Little-endian IEEE half bits of `x`, rounded to nearest even (as numpy and ggml do).
#[inline]
pub fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

/// The value of little-endian IEEE half bits.
#[inline]
pub fn f16_value(b: [u8; 2]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes(b)).to_f32()
}

/// Rounds a float to the nearest integer, ties to even, as ggml's `nearest_int` does.
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// Blocks in a row of values, paired with their importance chunks (if any).
pub(crate) fn with_importance<'a>(
    src: &'a [f32],
    importance: Option<&'a [f32]>,
    block: usize,
) -> impl Iterator<Item = (&'a [f32], Option<&'a [f32]>)> + 'a {
    let imp = importance.filter(|w| w.len() == src.len());
    src.chunks_exact(block)
        .enumerate()
        .map(move |(i, x)| (x, imp.map(|w| &w[i * block..(i + 1) * block])))
}
