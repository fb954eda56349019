//! Shared pieces of the 32-value "legacy" formats (Q4_0, Q4_1, Q5_0, Q5_1), whose
//! quantisers must match gguf-py's numpy code bit for bit.

/// The signed value of largest magnitude (the first one on ties, like numpy's argmax).
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let mut best = x.first().copied().unwrap_or(0.0);
    for &v in x {
        if v.abs() > best.abs() {
            best = v;
        }
    }
    best
}

/// Minimum and maximum of a block.
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    let first = x.first().copied().unwrap_or(0.0);
    x.iter()
        .fold((first, first), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// `trunc(v)` as an unsigned code clamped to `max` (numpy: `trunc(...).astype(uint8).clip(0, max)`).
#[inline]
pub(crate) fn trunc_code(v: f32, max: u8) -> u8 {
    (v.trunc() as u8).min(max)
}

/// Reciprocal that maps a zero scale to zero.
#[inline]
pub(crate) fn inv_or_zero(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// Packs 32 four-bit codes: byte j holds code j (low nibble) and code j + 16 (high).
pub(crate) fn pack_nibbles(q: &[u8; 32]) -> [u8; 16] {
    std::array::from_fn(|j| (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4))
}

/// Inverse of [`pack_nibbles`].
pub(crate) fn unpack_nibbles(qs: &[u8; 16]) -> [u8; 32] {
    std::array::from_fn(|i| {
        if i < 16 {
            qs[i] & 0x0F
        } else {
            qs[i - 16] >> 4
        }
    })
}

/// Bit 4 of each of 32 codes, bit j of a little-endian u32.
pub(crate) fn pack_fifth_bits(q: &[u8; 32]) -> [u8; 4] {
    let bits = q
        .iter()
        .enumerate()
        .fold(0u32, |acc, (j, &c)| acc | (((c >> 4) as u32 & 1) << j));
    bits.to_le_bytes()
}

/// Inverse of [`pack_fifth_bits`] merged with the low nibbles.
pub(crate) fn unpack_five_bit(qh: [u8; 4], qs: &[u8; 16]) -> [u8; 32] {
    let bits = u32::from_le_bytes(qh);
    let lo = unpack_nibbles(qs);
    std::array::from_fn(|j| lo[j] | ((((bits >> j) & 1) as u8) << 4))
}
