//! Q4_1: 32 values, f16 scale and minimum, 4-bit codes.

use crate::block::{f16_bytes, f16_value, BlockFormat};
use crate::legacy::{
    inv_or_zero, map_blocks, min_max, pack_nibbles, refine_weighted, trunc_code, unpack_nibbles,
    weighted_affine,
};
use quern_formats::GgmlType;

pub const QK: usize = 32;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::align_of::<BlockQ4_1>() == 1);

pub struct Q4_1;

impl BlockFormat for Q4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    type Block = BlockQ4_1;

    fn quantize_row(src: &[f32], importance: Option<&[f32]>, dst: &mut [BlockQ4_1]) {
        map_blocks(src, dst, |x| {
            let (min, max) = min_max(x);
            let d = (max - min) / 15.0;
            let id = inv_or_zero(d);
            let q: [u8; QK] = std::array::from_fn(|i| trunc_code((x[i] - min) * id + 0.5, 15));
            BlockQ4_1 {
                d: f16_bytes(d),
                m: f16_bytes(min),
                qs: pack_nibbles(&q),
            }
        });
        refine_weighted::<Self>(src, importance, dst, |x, w| {
            let (d, m, q) = weighted_affine(x, w, 15);
            BlockQ4_1 {
                d,
                m,
                qs: pack_nibbles(&q),
            }
        });
    }

    fn dequantize_row(src: &[BlockQ4_1], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
            let d = f16_value(b.d);
            let m = f16_value(b.m);
            for (o, q) in y.iter_mut().zip(unpack_nibbles(&b.qs)) {
                *o = d * q as f32 + m;
            }
        }
    }
}
