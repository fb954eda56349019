//! How finely the integer kernels quantise activations, for both backends.
//!
//! By default the 4- and 5-bit formats (Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K)
//! meet 8-bit activation codes (as llama.cpp's kernels do) and Q8_0 meets
//! 16-bit ones. With [`ActBits::Sixteen`] those six formats meet 16-bit codes
//! too, on the CPU and on the GPU alike. The point is agreement between two
//! implementations: at 8 bits, a last-bit difference in a float sum can move an
//! activation across a rounding boundary, a whole code step, and layer after
//! layer such flips add up (two kernel orders of the same CPU backend differ by
//! a mean KLD of 3–5·10⁻³ on SmolLM2-135M; BENCHMARKS.md); at 16 bits a step is
//! 256 times smaller. The cost is speed: twice the activation bytes and integer
//! products per weight, and no 16-row AVX-512 kernels for those formats.
//!
//! The other integer formats (Q2_K, Q3_K, Q5_K, IQ4_NL, IQ4_XS) stay on 8-bit
//! codes in either setting.

use std::sync::atomic::{AtomicU8, Ordering};

use quern_formats::GgmlType;

/// Activation code width of the 4- and 5-bit formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActBits {
    /// 8-bit codes (the default: fastest).
    #[default]
    Eight,
    /// 16-bit codes (as Q8_0 always has).
    Sixteen,
}

impl ActBits {
    /// 8 or 16.
    pub fn bits(self) -> u32 {
        match self {
            ActBits::Eight => 8,
            ActBits::Sixteen => 16,
        }
    }

    pub fn from_bits(bits: u32) -> Option<ActBits> {
        match bits {
            8 => Some(ActBits::Eight),
            16 => Some(ActBits::Sixteen),
            _ => None,
        }
    }
}

/// 0: not set (read `QUERN_ACT_BITS`), else the bit count.
static OVERRIDE: AtomicU8 = AtomicU8::new(0);

/// The setting: what [`set_act_bits`] chose, else `QUERN_ACT_BITS` (`8` or
/// `16`), else 8. Backends read it when they are made (the CUDA backend also
/// when it compiles a module and launches a product): choose it first.
pub fn act_bits() -> ActBits {
    match OVERRIDE.load(Ordering::Relaxed) {
        16 => ActBits::Sixteen,
        8 => ActBits::Eight,
        _ => match std::env::var("QUERN_ACT_BITS").as_deref().map(str::trim) {
            Ok("16") => ActBits::Sixteen,
            _ => ActBits::Eight,
        },
    }
}

/// Fixes the setting for this process (the CLI's `--act-bits`), over
/// `QUERN_ACT_BITS`.
pub fn set_act_bits(bits: ActBits) {
    OVERRIDE.store(bits.bits() as u8, Ordering::Relaxed);
}

/// Whether `ty`'s products take 16-bit activation codes under `bits`.
pub fn uses_16bit_acts(ty: GgmlType, bits: ActBits) -> bool {
    match ty {
        GgmlType::Q8_0 => true,
        GgmlType::Q4_0
        | GgmlType::Q4_1
        | GgmlType::Q5_0
        | GgmlType::Q5_1
        | GgmlType::Q4K
        | GgmlType::Q6K => bits == ActBits::Sixteen,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_six_formats_follow_the_setting() {
        for ty in [GgmlType::Q4_0, GgmlType::Q5_1, GgmlType::Q4K, GgmlType::Q6K] {
            assert!(!uses_16bit_acts(ty, ActBits::Eight), "{ty}");
            assert!(uses_16bit_acts(ty, ActBits::Sixteen), "{ty}");
        }
        for ty in [GgmlType::Q5K, GgmlType::Q2K, GgmlType::Iq4Nl, GgmlType::F16] {
            assert!(!uses_16bit_acts(ty, ActBits::Sixteen), "{ty}");
        }
        assert!(uses_16bit_acts(GgmlType::Q8_0, ActBits::Eight));
        assert_eq!(ActBits::from_bits(16), Some(ActBits::Sixteen));
        assert_eq!(ActBits::from_bits(4), None);
    }
}
