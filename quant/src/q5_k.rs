//! Q5_K: Q4_K's layout plus a bit plane for the fifth bit of each code.

use crate::block::{f16_value, with_importance, BlockFormat};
use crate::fit::block_weights;
use crate::q4_k::{nibble_at, pack_nibbles_k, pack_scale_min, scale_min};
use crate::superblock::{quantize_affine, QK_K};
use quern_formats::GgmlType;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);
const _: () = assert!(std::mem::align_of::<BlockQ5K>() == 1);

impl BlockQ5K {
    /// Super-block scales `(d, dmin)` as f32.
    pub fn scales_f32(&self) -> (f32, f32) {
        (f16_value(self.d), f16_value(self.dmin))
    }

    /// 6-bit scale and minimum of sub-block `j` (0..8).
    pub fn scale_min(&self, j: usize) -> (u8, u8) {
        scale_min(&self.scales, j)
    }
}

pub struct Q5K;

impl BlockFormat for Q5K {
    const TYPE: GgmlType = GgmlType::Q5K;
    type Block = BlockQ5K;

    fn quantize_row(src: &[f32], importance: Option<&[f32]>, dst: &mut [BlockQ5K]) {
        let mut wbuf = [0f32; 256];
        for ((x, imp), b) in with_importance(src, importance, QK_K).zip(dst.iter_mut()) {
            let w = block_weights(imp, QK_K, &mut wbuf);
            let s = quantize_affine::<32>(x, w, 31, 63);
            b.d = s.d;
            b.dmin = s.dmin;
            b.scales = pack_scale_min(&s.ls[..8], &s.lm[..8]);
            b.qs = pack_nibbles_k(&s.q);
            // Element e's fifth bit is bit e / 32 of byte e % 32.
            b.qh = [0; 32];
            for (e, &q) in s.q.iter().enumerate() {
                b.qh[e % 32] |= ((q >> 4) & 1) << (e / 32);
            }
        }
    }

    fn dequantize_row(src: &[BlockQ5K], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let (d, dmin) = (f16_value(b.d), f16_value(b.dmin));
            for (j, ys) in y.chunks_exact_mut(32).enumerate() {
                let (sc, m) = scale_min(&b.scales, j);
                let (dl, ml) = (d * sc as f32, dmin * m as f32);
                for (l, o) in ys.iter_mut().enumerate() {
                    let e = j * 32 + l;
                    let q = nibble_at(&b.qs, e) | (((b.qh[l] >> j) & 1) << 4);
                    *o = dl * q as f32 - ml;
                }
            }
        }
    }
}
