//! Q8_K: the activation format K-quant dot products pair with: f32 scale, 256 signed
//! bytes and the sums of each group of 16 (so a kernel can fold in sub-block minimums).

use crate::block::{nearest_int, BlockFormat};
use crate::fit::signed_absmax;
use crate::superblock::QK_K;
use quern_formats::GgmlType;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8K {
    pub d: [u8; 4],
    pub qs: [i8; QK_K],
    pub bsums: [[u8; 2]; QK_K / 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);
const _: () = assert!(std::mem::align_of::<BlockQ8K>() == 1);

impl BlockQ8K {
    pub fn scale(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }

    pub fn bsum(&self, j: usize) -> i16 {
        self.bsums.get(j).map_or(0, |b| i16::from_le_bytes(*b))
    }
}

pub struct Q8K;

impl BlockFormat for Q8K {
    const TYPE: GgmlType = GgmlType::Q8K;
    type Block = BlockQ8K;

    fn quantize_row(src: &[f32], _importance: Option<&[f32]>, dst: &mut [BlockQ8K]) {
        for (x, b) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
            let max = signed_absmax(x);
            if max == 0.0 {
                *b = bytemuck::Zeroable::zeroed();
                continue;
            }
            // As ggml: the extreme maps to -127 and +127 is clamped (only it could exceed).
            let iscale = -127.0 / max;
            for (q, &v) in b.qs.iter_mut().zip(x) {
                *q = nearest_int(iscale * v).min(127) as i8;
            }
            for (j, s) in b.bsums.iter_mut().enumerate() {
                let sum: i32 = b.qs[j * 16..(j + 1) * 16].iter().map(|&q| q as i32).sum();
                *s = (sum as i16).to_le_bytes();
            }
            b.d = (1.0 / iscale).to_le_bytes();
        }
    }

    fn dequantize_row(src: &[BlockQ8K], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let d = b.scale();
            for (o, &q) in y.iter_mut().zip(&b.qs) {
                *o = d * q as f32;
            }
        }
    }
}
