//! Q4_K: 256 values in 8 sub-blocks of 32; 4-bit codes, 6-bit sub-block scales and
//! minimums under f16 super-block scales (`x = d*sc*q - dmin*m`).

use crate::block::{f16_value, with_importance, BlockFormat};
use crate::fit::block_weights;
use crate::superblock::{quantize_affine, QK_K};
use quern_formats::GgmlType;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
const _: () = assert!(std::mem::align_of::<BlockQ4K>() == 1);

/// Packs eight 6-bit scales and minimums into ggml's 12-byte K-quant layout: the
/// first four of each whole in bytes 0..8, the last four split into a nibble in bytes
/// 8..12 and their top two bits in the spare bits of bytes 0..8.
pub(crate) fn pack_scale_min(ls: &[u8], lm: &[u8]) -> [u8; 12] {
    let mut b = [0u8; 12];
    for j in 0..4 {
        b[j] = ls[j] & 63;
        b[j + 4] = lm[j] & 63;
    }
    for j in 4..8 {
        b[j + 4] = (ls[j] & 0x0F) | ((lm[j] & 0x0F) << 4);
        b[j - 4] |= (ls[j] >> 4) << 6;
        b[j] |= (lm[j] >> 4) << 6;
    }
    b
}

/// Scale and minimum of sub-block `j` from the 12-byte layout.
pub fn scale_min(b: &[u8; 12], j: usize) -> (u8, u8) {
    if j < 4 {
        (b[j] & 63, b[j + 4] & 63)
    } else {
        (
            (b[j + 4] & 0x0F) | ((b[j - 4] >> 6) << 4),
            (b[j + 4] >> 4) | ((b[j] >> 6) << 4),
        )
    }
}

/// Code of element `e` in the nibble layout shared by Q4_K and Q5_K: each group of
/// 64 values takes 32 bytes, the first 32 values in low nibbles, the next in high.
#[inline]
pub(crate) fn nibble_at(qs: &[u8; 128], e: usize) -> u8 {
    let (g, h, l) = (e / 64, (e / 32) % 2, e % 32);
    (qs[g * 32 + l] >> (4 * h)) & 0x0F
}

pub(crate) fn pack_nibbles_k(q: &[u8; QK_K]) -> [u8; 128] {
    std::array::from_fn(|i| {
        let (g, l) = (i / 32, i % 32);
        (q[g * 64 + l] & 0x0F) | ((q[g * 64 + 32 + l] & 0x0F) << 4)
    })
}

impl BlockQ4K {
    /// Super-block scales `(d, dmin)` as f32.
    pub fn scales_f32(&self) -> (f32, f32) {
        (f16_value(self.d), f16_value(self.dmin))
    }

    /// 6-bit scale and minimum of sub-block `j` (0..8).
    pub fn scale_min(&self, j: usize) -> (u8, u8) {
        scale_min(&self.scales, j)
    }
}

pub struct Q4K;

impl BlockFormat for Q4K {
    const TYPE: GgmlType = GgmlType::Q4K;
    type Block = BlockQ4K;

    fn quantize_row(src: &[f32], importance: Option<&[f32]>, dst: &mut [BlockQ4K]) {
        let mut wbuf = [0f32; 256];
        for ((x, imp), b) in with_importance(src, importance, QK_K).zip(dst.iter_mut()) {
            let w = block_weights(imp, QK_K, &mut wbuf);
            let s = quantize_affine::<32>(x, w, 15, 63);
            b.d = s.d;
            b.dmin = s.dmin;
            b.scales = pack_scale_min(&s.ls[..8], &s.lm[..8]);
            b.qs = pack_nibbles_k(&s.q);
        }
    }

    fn dequantize_row(src: &[BlockQ4K], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let (d, dmin) = (f16_value(b.d), f16_value(b.dmin));
            for (j, ys) in y.chunks_exact_mut(32).enumerate() {
                let (sc, m) = scale_min(&b.scales, j);
                let (dl, ml) = (d * sc as f32, dmin * m as f32);
                for (l, o) in ys.iter_mut().enumerate() {
                    *o = dl * nibble_at(&b.qs, j * 32 + l) as f32 - ml;
                }
            }
        }
    }
}
