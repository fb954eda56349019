//! Q5_0: 32 values, f16 scale, 5-bit codes (offset 16) split into nibbles and a bit plane.

use crate::block::{f16_bytes, f16_value, BlockFormat};
use crate::legacy::{
    inv_or_zero, map_blocks, pack_fifth_bits, pack_nibbles, refine_weighted, signed_absmax,
    trunc_code, unpack_five_bit, weighted_signed,
};
use quern_formats::GgmlType;

pub const QK: usize = 32;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(std::mem::align_of::<BlockQ5_0>() == 1);

pub struct Q5_0;

impl BlockQ5_0 {
    /// The block of 5-bit codes `q` (each 0..=31, value `d * (q - 16)`) with the
    /// f16 scale `d` given as its bytes: for callers that carry codes from another
    /// layout (the runtime repacks AWQ groups this way, exactly).
    pub fn from_codes(d: [u8; 2], q: &[u8; QK]) -> BlockQ5_0 {
        BlockQ5_0 {
            d,
            qh: pack_fifth_bits(q),
            qs: pack_nibbles(q),
        }
    }

    /// The block's 5-bit codes, the inverse of [`Self::from_codes`].
    pub fn codes(&self) -> [u8; QK] {
        unpack_five_bit(self.qh, &self.qs)
    }
}

impl BlockFormat for Q5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    type Block = BlockQ5_0;

    fn quantize_row(src: &[f32], importance: Option<&[f32]>, dst: &mut [BlockQ5_0]) {
        map_blocks(src, dst, |x| {
            let d = signed_absmax(x) / -16.0;
            let id = inv_or_zero(d);
            let q: [u8; QK] = std::array::from_fn(|i| trunc_code(x[i] * id + 16.5, 31));
            BlockQ5_0 {
                d: f16_bytes(d),
                qh: pack_fifth_bits(&q),
                qs: pack_nibbles(&q),
            }
        });
        refine_weighted::<Self>(src, importance, dst, |x, w| {
            let (d, q) = weighted_signed(x, w, 16, 15);
            BlockQ5_0::from_codes(d, &q)
        });
    }

    fn dequantize_row(src: &[BlockQ5_0], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
            let d = f16_value(b.d);
            for (o, q) in y.iter_mut().zip(unpack_five_bit(b.qh, &b.qs)) {
                *o = d * (q as i32 - 16) as f32;
            }
        }
    }
}
