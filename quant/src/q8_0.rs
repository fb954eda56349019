//! Q8_0: 32 values, one f16 scale, 32 signed bytes. Rounding follows gguf-py / ggml's
//! reference quantiser exactly (scale = amax / 127, round half away from zero).

use crate::block::{f16_bytes, f16_value, BlockFormat};
use crate::legacy::{inv_or_zero, round_code_127};
use quern_formats::GgmlType;

pub const QK: usize = 32;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [i8; QK],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::align_of::<BlockQ8_0>() == 1);

pub struct Q8_0;

impl Q8_0 {
    /// The reference rounding, for every CPU (the AVX2 loop must equal it).
    pub(crate) fn quantize_row_portable(src: &[f32], dst: &mut [BlockQ8_0]) {
        crate::legacy::map_blocks(src, dst, |x| {
            let amax = crate::legacy::absmax(x);
            let d = amax / 127.0;
            let id = inv_or_zero(d);
            BlockQ8_0 {
                d: f16_bytes(d),
                // Half away from zero, like C's roundf; |v * id| <= 127.
                qs: std::array::from_fn(|i| round_code_127(x[i] * id)),
            }
        });
    }
}

impl BlockFormat for Q8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    type Block = BlockQ8_0;

    #[inline(always)]
    fn quantize_row(src: &[f32], _importance: Option<&[f32]>, dst: &mut [BlockQ8_0]) {
        #[cfg(target_arch = "x86_64")]
        if crate::legacy_avx2::available() {
            // SAFETY: the CPU has AVX2.
            return unsafe { crate::legacy_avx2::quantize_q8_0(src, dst) };
        }
        Self::quantize_row_portable(src, dst);
    }

    fn dequantize_row(src: &[BlockQ8_0], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
            let d = f16_value(b.d);
            for (o, &q) in y.iter_mut().zip(&b.qs) {
                *o = q as f32 * d;
            }
        }
    }
}
