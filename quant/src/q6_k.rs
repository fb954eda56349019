//! Q6_K: 256 values in 16 sub-blocks of 16; 6-bit codes (offset 32) split into a low
//! nibble and two high bits, 8-bit signed sub-block scales under an f16 `d`.

use crate::block::{f16_value, with_importance, BlockFormat};
use crate::fit::block_weights;
use crate::superblock::{quantize_symmetric, QK_K};
use quern_formats::GgmlType;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);
const _: () = assert!(std::mem::align_of::<BlockQ6K>() == 1);

/// Byte and shift of element `e`'s low nibble: each half of 128 values takes 64
/// bytes, the first 64 values in low nibbles, the next 64 in high ones.
#[inline]
fn low_pos(e: usize) -> (usize, u32) {
    let (g, h, l) = (e / 128, (e / 64) % 2, e % 64);
    (g * 64 + l, 4 * h as u32)
}

pub struct Q6K;

impl BlockFormat for Q6K {
    const TYPE: GgmlType = GgmlType::Q6K;
    type Block = BlockQ6K;

    fn quantize_row(src: &[f32], importance: Option<&[f32]>, dst: &mut [BlockQ6K]) {
        let mut wbuf = [0f32; 256];
        for ((x, imp), b) in with_importance(src, importance, QK_K).zip(dst.iter_mut()) {
            let w = block_weights(imp, QK_K, &mut wbuf);
            let s = quantize_symmetric(x, w, 32, 31, 128, 127);
            b.d = s.d;
            b.scales = s.ls;
            // The layout of `low_pos` and `two_bit_pos`, written byte by byte (a
            // read-modify-write per value cost a tenth of the quantiser's time).
            let u: [u8; QK_K] = s.q.map(|q| (q as i32 + 32) as u8);
            for g in 0..2 {
                let u = &u[g * 128..(g + 1) * 128];
                for l in 0..64 {
                    b.ql[g * 64 + l] = (u[l] & 0x0F) | ((u[64 + l] & 0x0F) << 4);
                }
                for l in 0..32 {
                    b.qh[g * 32 + l] = (u[l] >> 4)
                        | ((u[32 + l] >> 4) << 2)
                        | ((u[64 + l] >> 4) << 4)
                        | ((u[96 + l] >> 4) << 6);
                }
            }
        }
    }

    fn dequantize_row(src: &[BlockQ6K], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let d = f16_value(b.d);
            for (e, o) in y.iter_mut().enumerate() {
                let dl = d * b.scales[e / 16] as f32;
                let (i, shift) = low_pos(e);
                let low = (b.ql[i] >> shift) & 0x0F;
                let (i, shift) = crate::q2_k::two_bit_pos(e);
                let high = (b.qh[i] >> shift) & 3;
                *o = dl * ((low | (high << 4)) as i32 - 32) as f32;
            }
        }
    }
}
