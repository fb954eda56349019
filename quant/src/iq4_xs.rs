//! IQ4_XS: 256 values in 8 sub-blocks of 32 on the IQ4 grid, 6-bit signed sub-block
//! scales (low nibbles in `scales_l`, high bit pairs in the u16 `scales_h`).

use crate::block::{f16_value, with_importance, BlockFormat};
use crate::fit::block_weights;
use crate::iq4_nl::{lookup, GRID};
use crate::superblock::{quantize_grid_super, QK_K};
use quern_formats::GgmlType;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockIq4Xs {
    pub d: [u8; 2],
    pub scales_h: [u8; 2],
    pub scales_l: [u8; QK_K / 64],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockIq4Xs>() == 136);
const _: () = assert!(std::mem::align_of::<BlockIq4Xs>() == 1);

impl BlockIq4Xs {
    /// Signed 6-bit scale of sub-block `j` (0..8), in `-32..=31`.
    pub fn scale(&self, j: usize) -> i32 {
        let j = j % 8;
        let high = u16::from_le_bytes(self.scales_h);
        let low = (self.scales_l[j / 2] >> (4 * (j % 2))) & 0x0F;
        (low | ((((high >> (2 * j)) & 3) as u8) << 4)) as i32 - 32
    }
}

pub struct Iq4Xs;

impl BlockFormat for Iq4Xs {
    const TYPE: GgmlType = GgmlType::Iq4Xs;
    type Block = BlockIq4Xs;

    fn quantize_row(src: &[f32], importance: Option<&[f32]>, dst: &mut [BlockIq4Xs]) {
        let grid = lookup();
        let mut wbuf = [0f32; 256];
        for ((x, imp), b) in with_importance(src, importance, QK_K).zip(dst.iter_mut()) {
            let w = block_weights(imp, QK_K, &mut wbuf);
            let s = quantize_grid_super(x, w, grid);
            b.d = s.d;
            let mut high = 0u16;
            b.scales_l = [0; 4];
            for (j, &ls) in s.ls.iter().enumerate() {
                let u = (ls as i32 + 32) as u8;
                b.scales_l[j / 2] |= (u & 0x0F) << (4 * (j % 2));
                high |= (((u >> 4) & 3) as u16) << (2 * j);
            }
            b.scales_h = high.to_le_bytes();
            // Sub-block j: 16 bytes, values 0..16 in low nibbles, 16..32 in high.
            b.qs = std::array::from_fn(|i| {
                let (j, l) = (i / 16, i % 16);
                (s.q[j * 32 + l] & 0x0F) | ((s.q[j * 32 + 16 + l] & 0x0F) << 4)
            });
        }
    }

    fn dequantize_row(src: &[BlockIq4Xs], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let d = f16_value(b.d);
            for (j, ys) in y.chunks_exact_mut(32).enumerate() {
                let dl = d * b.scale(j) as f32;
                for (l, o) in ys.iter_mut().enumerate() {
                    let q = (b.qs[j * 16 + l % 16] >> (4 * (l / 16))) & 0x0F;
                    *o = dl * GRID[q as usize] as f32;
                }
            }
        }
    }
}
