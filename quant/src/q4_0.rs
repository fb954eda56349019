//! Q4_0: 32 values, f16 scale, 4-bit codes with an implicit offset of 8.

use crate::block::{f16_bytes, f16_value, BlockFormat};
use crate::legacy::{
    inv_or_zero, map_blocks, pack_nibbles, refine_weighted, signed_absmax, trunc_code,
    unpack_nibbles, weighted_signed,
};
use quern_formats::GgmlType;

pub const QK: usize = 32;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    pub qs: [u8; QK / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::align_of::<BlockQ4_0>() == 1);

pub struct Q4_0;

impl Q4_0 {
    /// The reference rounding, for every CPU (the AVX2 loop must equal it).
    pub(crate) fn quantize_row_portable(src: &[f32], dst: &mut [BlockQ4_0]) {
        map_blocks(src, dst, |x| {
            // The largest magnitude maps to code 0 (-8), using the asymmetric range fully.
            let d = signed_absmax(x) / -8.0;
            let id = inv_or_zero(d);
            let q: [u8; QK] = std::array::from_fn(|i| trunc_code(x[i] * id + 8.5, 15));
            BlockQ4_0 {
                d: f16_bytes(d),
                qs: pack_nibbles(&q),
            }
        });
    }
}

impl BlockFormat for Q4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    type Block = BlockQ4_0;

    fn quantize_row(src: &[f32], importance: Option<&[f32]>, dst: &mut [BlockQ4_0]) {
        #[cfg(target_arch = "x86_64")]
        if crate::legacy_avx2::available() {
            // SAFETY: the CPU has AVX2.
            unsafe { crate::legacy_avx2::quantize_q4_0(src, dst) };
        } else {
            Self::quantize_row_portable(src, dst);
        }
        #[cfg(not(target_arch = "x86_64"))]
        Self::quantize_row_portable(src, dst);
        refine_weighted::<Self>(src, importance, dst, |x, w| {
            let (d, q) = weighted_signed(x, w, 8, 7);
            BlockQ4_0 {
                d,
                qs: pack_nibbles(&q),
            }
        });
    }

    fn dequantize_row(src: &[BlockQ4_0], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
            let d = f16_value(b.d);
            for (o, q) in y.iter_mut().zip(unpack_nibbles(&b.qs)) {
                *o = d * (q as i32 - 8) as f32;
            }
        }
    }
}
