//! Q2_K: 256 values in 16 sub-blocks of 16; 2-bit codes, 4-bit sub-block scales and
//! minimums (one byte each: scale low, minimum high) under f16 `d` and `dmin`.

use crate::block::{f16_value, with_importance, BlockFormat};
use crate::fit::block_weights;
use crate::superblock::{quantize_affine, QK_K};
use quern_formats::GgmlType;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);
const _: () = assert!(std::mem::align_of::<BlockQ2K>() == 1);

/// Byte and shift of element `e`'s 2-bit code (Q2_K and Q3_K): each half of 128
/// values takes 32 bytes, four rows of 32 values in successive bit pairs.
#[inline]
pub(crate) fn two_bit_pos(e: usize) -> (usize, u32) {
    let (g, s, l) = (e / 128, (e / 32) % 4, e % 32);
    (g * 32 + l, 2 * s as u32)
}

pub struct Q2K;

impl BlockFormat for Q2K {
    const TYPE: GgmlType = GgmlType::Q2K;
    type Block = BlockQ2K;

    fn quantize_row(src: &[f32], importance: Option<&[f32]>, dst: &mut [BlockQ2K]) {
        let mut wbuf = [0f32; 256];
        for ((x, imp), b) in with_importance(src, importance, QK_K).zip(dst.iter_mut()) {
            let w = block_weights(imp, QK_K, &mut wbuf);
            let s = quantize_affine::<16>(x, w, 3, 15);
            b.d = s.d;
            b.dmin = s.dmin;
            b.scales = std::array::from_fn(|j| (s.ls[j] & 0x0F) | ((s.lm[j] & 0x0F) << 4));
            b.qs = [0; 64];
            for (e, &q) in s.q.iter().enumerate() {
                let (i, shift) = two_bit_pos(e);
                b.qs[i] |= (q & 3) << shift;
            }
        }
    }

    fn dequantize_row(src: &[BlockQ2K], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let (d, dmin) = (f16_value(b.d), f16_value(b.dmin));
            for (e, o) in y.iter_mut().enumerate() {
                let sc = b.scales[e / 16];
                let (dl, ml) = (d * (sc & 0x0F) as f32, dmin * (sc >> 4) as f32);
                let (i, shift) = two_bit_pos(e);
                *o = dl * ((b.qs[i] >> shift) & 3) as f32 - ml;
            }
        }
    }
}
