//! Q3_K: 256 values in 16 sub-blocks of 16; 3-bit signed codes (2 low bits plus a
//! bit plane whose *clear* bit subtracts 4) and 6-bit signed scales under f16 `d`.

use crate::block::{f16_value, with_importance, BlockFormat};
use crate::fit::block_weights;
use crate::q2_k::two_bit_pos;
use crate::superblock::{quantize_symmetric, QK_K};
use quern_formats::GgmlType;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);
const _: () = assert!(std::mem::align_of::<BlockQ3K>() == 1);

/// Packs sixteen 6-bit values: low nibbles in bytes 0..8 (j < 8 low, j >= 8 high
/// nibble of byte j - 8), top two bits in bytes 8..12 (byte 8 + j % 4, pair j / 4).
fn pack_scales(l: &[u8; 16]) -> [u8; 12] {
    let mut b = [0u8; 12];
    for (j, &v) in l.iter().enumerate() {
        b[j % 8] |= (v & 0x0F) << (4 * (j / 8));
        b[8 + j % 4] |= ((v >> 4) & 3) << (2 * (j / 4));
    }
    b
}

fn unpack_scale(b: &[u8; 12], j: usize) -> i32 {
    let low = (b[j % 8] >> (4 * (j / 8))) & 0x0F;
    let high = (b[8 + j % 4] >> (2 * (j / 4))) & 3;
    (low | (high << 4)) as i32 - 32
}

impl BlockQ3K {
    /// Signed 6-bit scale of sub-block `j` (0..16), in `-32..=31`.
    pub fn scale(&self, j: usize) -> i32 {
        unpack_scale(&self.scales, j % 16)
    }
}

pub struct Q3K;

impl BlockFormat for Q3K {
    const TYPE: GgmlType = GgmlType::Q3K;
    type Block = BlockQ3K;

    fn quantize_row(src: &[f32], importance: Option<&[f32]>, dst: &mut [BlockQ3K]) {
        let mut wbuf = [0f32; 256];
        for ((x, imp), b) in with_importance(src, importance, QK_K).zip(dst.iter_mut()) {
            let w = block_weights(imp, QK_K, &mut wbuf);
            let s = quantize_symmetric(x, w, 4, 3, 32, 31);
            b.d = s.d;
            b.scales = pack_scales(&std::array::from_fn(|j| (s.ls[j] as i32 + 32) as u8));
            b.qs = [0; 64];
            b.hmask = [0; 32];
            for (e, &q) in s.q.iter().enumerate() {
                let u = (q as i32 + 4) as u8;
                let (i, shift) = two_bit_pos(e);
                b.qs[i] |= (u & 3) << shift;
                b.hmask[e % 32] |= (u >> 2) << (e / 32);
            }
        }
    }

    fn dequantize_row(src: &[BlockQ3K], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let d = f16_value(b.d);
            for (e, o) in y.iter_mut().enumerate() {
                let dl = d * unpack_scale(&b.scales, e / 16) as f32;
                let (i, shift) = two_bit_pos(e);
                let low = ((b.qs[i] >> shift) & 3) as i32;
                let high_clear = ((b.hmask[e % 32] >> (e / 32)) & 1) == 0;
                *o = dl * (low - if high_clear { 4 } else { 0 }) as f32;
            }
        }
    }
}
