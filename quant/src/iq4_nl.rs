//! IQ4_NL: 32 values, f16 scale, 4-bit indices into a fixed non-linear grid.

use crate::block::{f16_bytes, f16_value, with_importance, BlockFormat};
use crate::fit::{block_weights, fit_grid, sub, GridLookup};
use crate::legacy::{pack_nibbles, unpack_nibbles};
use crate::superblock::grid_codes;
use quern_formats::GgmlType;
use std::sync::OnceLock;

pub const QK: usize = 32;

/// ggml's IQ4 grid (`kvalues_iq4nl`), denser near zero where weights cluster.
pub const GRID: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The grid's nearest-level lookup, built once.
pub(crate) fn lookup() -> &'static GridLookup {
    static LOOKUP: OnceLock<GridLookup> = OnceLock::new();
    LOOKUP.get_or_init(|| GridLookup::new(&GRID))
}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockIq4Nl {
    pub d: [u8; 2],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockIq4Nl>() == 18);
const _: () = assert!(std::mem::align_of::<BlockIq4Nl>() == 1);

pub struct Iq4Nl;

impl BlockFormat for Iq4Nl {
    const TYPE: GgmlType = GgmlType::Iq4Nl;
    type Block = BlockIq4Nl;

    fn quantize_row(src: &[f32], importance: Option<&[f32]>, dst: &mut [BlockIq4Nl]) {
        let grid = lookup();
        let mut wbuf = [0f32; 256];
        for ((x, imp), b) in with_importance(src, importance, QK).zip(dst.iter_mut()) {
            let w = block_weights(imp, QK, &mut wbuf);
            let d = f16_bytes(fit_grid(sub::<QK>(x, 0), sub::<QK>(w, 0), grid));
            let mut q = [0u8; QK];
            // Codes are chosen for the scale as stored, not the float one.
            grid_codes(x, f16_value(d), grid, &mut q);
            b.d = d;
            b.qs = pack_nibbles(&q);
        }
    }

    fn dequantize_row(src: &[BlockIq4Nl], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
            let d = f16_value(b.d);
            for (o, q) in y.iter_mut().zip(unpack_nibbles(&b.qs)) {
                *o = d * GRID[q as usize] as f32;
            }
        }
    }
}
