//! Portable fused dequantise-and-dot kernels: one weight row (its file bytes)
//! against one activation row. Each unpacks a block's codes into integers and
//! accumulates integer products, so the compiler can vectorise the inner loops;
//! `avx2.rs` recompiles these same bodies with AVX2 enabled.
//!
//! The caller guarantees the row is a whole number of blocks and the activation
//! row has the same length (checked once per matmul in `backend::check_matmul`).

use quern_quant::block::f16_value;
use quern_quant::iq4_nl::{BlockIq4Nl, GRID as IQ4_GRID};
use quern_quant::iq4_xs::BlockIq4Xs;
use quern_quant::q2_k::BlockQ2K;
use quern_quant::q3_k::BlockQ3K;
use quern_quant::q4_0::BlockQ4_0;
use quern_quant::q4_1::BlockQ4_1;
use quern_quant::q4_k::{scale_min, BlockQ4K};
use quern_quant::q5_0::BlockQ5_0;
use quern_quant::q5_1::BlockQ5_1;
use quern_quant::q5_k::BlockQ5K;
use quern_quant::q6_k::BlockQ6K;
use quern_quant::q8_0::BlockQ8_0;

use super::act::{ActQ16, ActQ8, ActQ8K};

#[inline(always)]
pub fn f32_row(w: &[u8], x: &[f32]) -> f32 {
    // Eight partial sums break the add dependency chain so the loop vectorises.
    let mut acc = [0f32; 8];
    for (wc, xc) in w.chunks_exact(32).zip(x.chunks_exact(8)) {
        for i in 0..8 {
            let v = f32::from_le_bytes([wc[4 * i], wc[4 * i + 1], wc[4 * i + 2], wc[4 * i + 3]]);
            acc[i] += v * xc[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    let done = w.len() / 32 * 8;
    for (wc, &xv) in w[done * 4..].chunks_exact(4).zip(&x[done..]) {
        sum += f32::from_le_bytes([wc[0], wc[1], wc[2], wc[3]]) * xv;
    }
    sum
}

#[inline(always)]
pub fn bf16_row(w: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (wc, xc) in w.chunks_exact(16).zip(x.chunks_exact(8)) {
        for i in 0..8 {
            // bf16 is the top half of an f32.
            let v = f32::from_bits((u16::from_le_bytes([wc[2 * i], wc[2 * i + 1]]) as u32) << 16);
            acc[i] += v * xc[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    let done = w.len() / 16 * 8;
    for (wc, &xv) in w[done * 2..].chunks_exact(2).zip(&x[done..]) {
        sum += f32::from_bits((u16::from_le_bytes([wc[0], wc[1]]) as u32) << 16) * xv;
    }
    sum
}

#[inline(always)]
pub fn f16_row(w: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (wc, xc) in w.chunks_exact(16).zip(x.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += f16_value([wc[2 * i], wc[2 * i + 1]]) * xc[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    let done = w.len() / 16 * 8;
    for (wc, &xv) in w[done * 2..].chunks_exact(2).zip(&x[done..]) {
        sum += f16_value([wc[0], wc[1]]) * xv;
    }
    sum
}

#[inline(always)]
fn idot32(a: &[i8; 32], b: &[i8; 32]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

#[inline(always)]
pub fn q8_0_row(w: &[u8], a: &[ActQ16]) -> f32 {
    let w: &[BlockQ8_0] = bytemuck::cast_slice(w);
    w.iter()
        .zip(a)
        .map(|(b, a)| {
            let dot: i32 =
                b.qs.iter()
                    .zip(&a.qs)
                    .map(|(&x, &y)| x as i32 * y as i32)
                    .sum();
            f16_value(b.d) * a.d * dot as f32
        })
        .sum()
}

/// The 32 four-bit codes of a legacy block: byte j holds code j (low) and j + 16.
#[inline(always)]
fn nibbles(qs: &[u8; 16]) -> [i8; 32] {
    std::array::from_fn(|i| {
        if i < 16 {
            (qs[i] & 15) as i8
        } else {
            (qs[i - 16] >> 4) as i8
        }
    })
}

/// Adds the fifth bit (bit j of the little-endian `qh`) to code j.
#[inline(always)]
fn with_fifth_bit(mut c: [i8; 32], qh: [u8; 4]) -> [i8; 32] {
    let h = u32::from_le_bytes(qh);
    for (j, v) in c.iter_mut().enumerate() {
        *v |= (((h >> j) & 1) << 4) as i8;
    }
    c
}

#[inline(always)]
fn offset(mut c: [i8; 32], by: i8) -> [i8; 32] {
    for v in c.iter_mut() {
        *v -= by;
    }
    c
}

#[inline(always)]
pub fn q4_0_row(w: &[u8], a: &[ActQ8]) -> f32 {
    let w: &[BlockQ4_0] = bytemuck::cast_slice(w);
    w.iter()
        .zip(a)
        .map(|(b, a)| f16_value(b.d) * a.d * idot32(&offset(nibbles(&b.qs), 8), &a.qs) as f32)
        .sum()
}

#[inline(always)]
pub fn q4_1_row(w: &[u8], a: &[ActQ8]) -> f32 {
    let w: &[BlockQ4_1] = bytemuck::cast_slice(w);
    w.iter()
        .zip(a)
        .map(|(b, a)| {
            let s = idot32(&nibbles(&b.qs), &a.qs);
            f16_value(b.d) * a.d * s as f32 + f16_value(b.m) * a.s
        })
        .sum()
}

#[inline(always)]
pub fn q5_0_row(w: &[u8], a: &[ActQ8]) -> f32 {
    let w: &[BlockQ5_0] = bytemuck::cast_slice(w);
    w.iter()
        .zip(a)
        .map(|(b, a)| {
            let c = offset(with_fifth_bit(nibbles(&b.qs), b.qh), 16);
            f16_value(b.d) * a.d * idot32(&c, &a.qs) as f32
        })
        .sum()
}

#[inline(always)]
pub fn q5_1_row(w: &[u8], a: &[ActQ8]) -> f32 {
    let w: &[BlockQ5_1] = bytemuck::cast_slice(w);
    w.iter()
        .zip(a)
        .map(|(b, a)| {
            let c = with_fifth_bit(nibbles(&b.qs), b.qh);
            f16_value(b.d) * a.d * idot32(&c, &a.qs) as f32 + f16_value(b.m) * a.s
        })
        .sum()
}

// The 4- and 5-bit formats against 16-bit activation codes (`precision`):
// the same codes as above, integer sums of i16 products, the offsets of Q4_1 /
// Q5_1 and the K-quant minimums through `ActQ16::s`; K-quant rows meet one
// `ActQ16` per 32 values.

#[inline(always)]
fn idot32_16(c: &[i8; 32], a: &[i16; 32]) -> i32 {
    c.iter().zip(a).map(|(&x, &y)| x as i32 * y as i32).sum()
}

#[inline(always)]
pub fn q4_0_row_a16(w: &[u8], a: &[ActQ16]) -> f32 {
    let w: &[BlockQ4_0] = bytemuck::cast_slice(w);
    w.iter()
        .zip(a)
        .map(|(b, a)| f16_value(b.d) * a.d * idot32_16(&offset(nibbles(&b.qs), 8), &a.qs) as f32)
        .sum()
}

#[inline(always)]
pub fn q4_1_row_a16(w: &[u8], a: &[ActQ16]) -> f32 {
    let w: &[BlockQ4_1] = bytemuck::cast_slice(w);
    w.iter()
        .zip(a)
        .map(|(b, a)| {
            let s = idot32_16(&nibbles(&b.qs), &a.qs);
            f16_value(b.d) * a.d * s as f32 + f16_value(b.m) * a.s
        })
        .sum()
}

#[inline(always)]
pub fn q5_0_row_a16(w: &[u8], a: &[ActQ16]) -> f32 {
    let w: &[BlockQ5_0] = bytemuck::cast_slice(w);
    w.iter()
        .zip(a)
        .map(|(b, a)| {
            let c = offset(with_fifth_bit(nibbles(&b.qs), b.qh), 16);
            f16_value(b.d) * a.d * idot32_16(&c, &a.qs) as f32
        })
        .sum()
}

#[inline(always)]
pub fn q5_1_row_a16(w: &[u8], a: &[ActQ16]) -> f32 {
    let w: &[BlockQ5_1] = bytemuck::cast_slice(w);
    w.iter()
        .zip(a)
        .map(|(b, a)| {
            let c = with_fifth_bit(nibbles(&b.qs), b.qh);
            f16_value(b.d) * a.d * idot32_16(&c, &a.qs) as f32 + f16_value(b.m) * a.s
        })
        .sum()
}

/// Q4_K against 16-bit codes: per sub-block j of 32, `d sc_j d_x S_j − dmin
/// m_j d_x Σq` (the activations have a scale per 32 here, so the scales meet
/// floats, not one integer sum per super-block).
#[inline(always)]
pub fn q4_k_row_a16(w: &[u8], a: &[ActQ16]) -> f32 {
    let w: &[BlockQ4K] = bytemuck::cast_slice(w);
    let mut acc = 0f32;
    for (b, a) in w.iter().zip(a.chunks_exact(8)) {
        let (d, dmin) = (f16_value(b.d), f16_value(b.dmin));
        let (mut dot, mut mins) = (0f32, 0f32);
        for (j, aj) in a.iter().enumerate() {
            let (sc, m) = scale_min(&b.scales, j);
            let (g, shift) = (j / 2, 4 * (j % 2));
            let c: [i8; 32] = std::array::from_fn(|l| ((b.qs[g * 32 + l] >> shift) & 15) as i8);
            dot += sc as f32 * aj.d * idot32_16(&c, &aj.qs) as f32;
            mins += m as f32 * aj.s;
        }
        acc += d * dot - dmin * mins;
    }
    acc
}

/// Q6_K against 16-bit codes: its scales are per 16 values, two per block of
/// activations (the pair's integer sum in i64: 127 · 16 · 32 · 32767 ≈ 2^31).
#[inline(always)]
pub fn q6_k_row_a16(w: &[u8], a: &[ActQ16]) -> f32 {
    let w: &[BlockQ6K] = bytemuck::cast_slice(w);
    let mut acc = 0f32;
    let mut codes = [0i8; 256];
    for (b, a) in w.iter().zip(a.chunks_exact(8)) {
        q6_k_codes(b, &mut codes);
        let mut sum = 0f32;
        for (j, aj) in a.iter().enumerate() {
            let pair: i64 = (0..2)
                .map(|h| {
                    let dot: i32 = (0..16)
                        .map(|l| codes[32 * j + 16 * h + l] as i32 * aj.qs[16 * h + l] as i32)
                        .sum();
                    b.scales[2 * j + h] as i64 * dot as i64
                })
                .sum();
            sum += aj.d * pair as f32;
        }
        acc += f16_value(b.d) * sum;
    }
    acc
}

/// The 256 signed codes (q − 32) of a Q6_K super-block, in value order.
#[inline(always)]
fn q6_k_codes(b: &BlockQ6K, codes: &mut [i8; 256]) {
    // Each half of 128 values: low nibbles in 64 bytes of `ql` (values 0..64 low,
    // 64..128 high), top two bits in 32 bytes of `qh` (four values per byte).
    for g in 0..2 {
        for sub in 0..4 {
            for l in 0..32 {
                let low = (b.ql[g * 64 + (sub % 2) * 32 + l] >> (4 * (sub / 2))) & 15;
                let high = (b.qh[g * 32 + l] >> (2 * sub)) & 3;
                codes[g * 128 + sub * 32 + l] = (low | (high << 4)) as i8 - 32;
            }
        }
    }
}

#[inline(always)]
pub fn q4_k_row(w: &[u8], a: &[ActQ8K]) -> f32 {
    let w: &[BlockQ4K] = bytemuck::cast_slice(w);
    let mut acc = 0f32;
    for (b, a) in w.iter().zip(a) {
        let (d, dmin) = (f16_value(b.d), f16_value(b.dmin));
        let (mut sumi, mut summ) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = scale_min(&b.scales, j);
            let (g, shift) = (j / 2, 4 * (j % 2));
            let qs = &b.qs[g * 32..g * 32 + 32];
            let aq = &a.qs[j * 32..j * 32 + 32];
            let s: i32 = qs
                .iter()
                .zip(aq)
                .map(|(&q, &y)| ((q >> shift) & 15) as i32 * y as i32)
                .sum();
            sumi += sc as i32 * s;
            summ += m as i32 * (a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32);
        }
        acc += a.d * (d * sumi as f32 - dmin * summ as f32);
    }
    acc
}

#[inline(always)]
pub fn q6_k_row(w: &[u8], a: &[ActQ8K]) -> f32 {
    let w: &[BlockQ6K] = bytemuck::cast_slice(w);
    let mut acc = 0f32;
    let mut codes = [0i8; 256];
    for (b, a) in w.iter().zip(a) {
        q6_k_codes(b, &mut codes);
        let mut sumi = 0i32;
        for (s, (c, y)) in codes
            .chunks_exact(16)
            .zip(a.qs.chunks_exact(16))
            .enumerate()
        {
            let dot: i32 = c.iter().zip(y).map(|(&p, &q)| p as i32 * q as i32).sum();
            sumi += b.scales[s] as i32 * dot;
        }
        acc += a.d * f16_value(b.d) * sumi as f32;
    }
    acc
}

#[inline(always)]
pub fn q5_k_row(w: &[u8], a: &[ActQ8K]) -> f32 {
    let w: &[BlockQ5K] = bytemuck::cast_slice(w);
    let mut acc = 0f32;
    for (b, a) in w.iter().zip(a) {
        let (d, dmin) = (f16_value(b.d), f16_value(b.dmin));
        let (mut sumi, mut summ) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = scale_min(&b.scales, j);
            let (g, shift) = (j / 2, 4 * (j % 2));
            let qs = &b.qs[g * 32..g * 32 + 32];
            let aq = &a.qs[j * 32..j * 32 + 32];
            let s: i32 = qs
                .iter()
                .zip(&b.qh)
                .zip(aq)
                .map(|((&q, &h), &y)| {
                    (((q >> shift) & 15) | (((h >> j) & 1) << 4)) as i32 * y as i32
                })
                .sum();
            sumi += sc as i32 * s;
            summ += m as i32 * (a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32);
        }
        acc += a.d * (d * sumi as f32 - dmin * summ as f32);
    }
    acc
}

/// The 32 grid levels of a block of IQ4 nibbles (legacy order).
#[inline(always)]
fn iq4_levels(qs: &[u8; 16]) -> [i8; 32] {
    nibbles(qs).map(|c| IQ4_GRID[c as usize])
}

#[inline(always)]
pub fn iq4_nl_row(w: &[u8], a: &[ActQ8]) -> f32 {
    let w: &[BlockIq4Nl] = bytemuck::cast_slice(w);
    w.iter()
        .zip(a)
        .map(|(b, a)| f16_value(b.d) * a.d * idot32(&iq4_levels(&b.qs), &a.qs) as f32)
        .sum()
}

/// IQ4_XS against 32-value activation blocks (eight per super-block).
#[inline(always)]
pub fn iq4_xs_row(w: &[u8], a: &[ActQ8]) -> f32 {
    let w: &[BlockIq4Xs] = bytemuck::cast_slice(w);
    let mut acc = 0f32;
    for (b, a) in w.iter().zip(a.chunks_exact(8)) {
        let d = f16_value(b.d);
        for (j, aj) in a.iter().enumerate() {
            let mut qs = [0u8; 16];
            qs.copy_from_slice(&b.qs[j * 16..j * 16 + 16]);
            let dot = idot32(&iq4_levels(&qs), &aj.qs);
            acc += d * b.scale(j) as f32 * aj.d * dot as f32;
        }
    }
    acc
}

/// Element `e` of a 256-value 2-bit plane: byte `e / 128 * 32 + e % 32`, bits
/// `2 * (e / 32 % 4)`.
#[inline(always)]
fn two_bits(qs: &[u8; 64], e: usize) -> i32 {
    ((qs[e / 128 * 32 + e % 32] >> (2 * (e / 32 % 4))) & 3) as i32
}

#[inline(always)]
pub fn q2_k_row(w: &[u8], a: &[ActQ8K]) -> f32 {
    let w: &[BlockQ2K] = bytemuck::cast_slice(w);
    let mut acc = 0f32;
    for (b, a) in w.iter().zip(a) {
        let (mut sumi, mut summ) = (0i32, 0i32);
        for j in 0..16 {
            let s: i32 = (j * 16..j * 16 + 16)
                .map(|e| two_bits(&b.qs, e) * a.qs[e] as i32)
                .sum();
            sumi += (b.scales[j] & 15) as i32 * s;
            summ += (b.scales[j] >> 4) as i32 * a.bsums[j] as i32;
        }
        acc += a.d * (f16_value(b.d) * sumi as f32 - f16_value(b.dmin) * summ as f32);
    }
    acc
}

#[inline(always)]
pub fn q3_k_row(w: &[u8], a: &[ActQ8K]) -> f32 {
    let w: &[BlockQ3K] = bytemuck::cast_slice(w);
    let mut acc = 0f32;
    for (b, a) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for j in 0..16 {
            let s: i32 = (j * 16..j * 16 + 16)
                .map(|e| {
                    let high = ((b.hmask[e % 32] >> (e / 32)) & 1) as i32;
                    (two_bits(&b.qs, e) + 4 * high - 4) * a.qs[e] as i32
                })
                .sum();
            sumi += b.scale(j) * s;
        }
        acc += a.d * f16_value(b.d) * sumi as f32;
    }
    acc
}
