//! The device layout of the formats with their own GEMV kernels (`packed.cu`):
//! each matrix is rewritten at upload into regions of codes and of scales, so a
//! thread reads a unit of weights with 16-byte loads. The values are the file's
//! bit for bit; only where the bytes lie changes.

use quern_formats::GgmlType;
use quern_quant::q5_0::BlockQ5_0;

/// Where the regions of a repacked matrix lie in its device buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedLayout {
    /// Weights per unit (a thread's piece of a row).
    pub unit_elems: usize,
    /// Units per row.
    pub units: usize,
    /// Row stride of the code region (starts at 0).
    pub q_stride: usize,
    pub s_offset: usize,
    pub s_stride: usize,
    /// Q6_K's super-block scales; 0 and unused otherwise.
    pub d_offset: usize,
    pub d_stride: usize,
    /// Q5_0 in the compact layout ([`compact_q5_0`]): log2 of the blocks of 32
    /// that share one scale and zero point. None: the format's own layout.
    pub compact: Option<u32>,
}

/// Whether `ty` has a repacked layout and kernels.
pub fn has_packed(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q4K
            | GgmlType::Q6K
    )
}

/// Whether uploads of `ty` use the repacked layout: [`has_packed`] unless
/// `QUERN_CUDA_PACKED=0` (the older kernels over the file layout, for comparison)
/// or `QUERN_CUDA_FLOAT_ACTS=1` (float activations: the older kernels too).
pub fn use_packed(ty: GgmlType) -> bool {
    has_packed(ty)
        && std::env::var("QUERN_CUDA_PACKED").as_deref() != Ok("0")
        && super::quantises_activations(ty)
}

/// (weights per unit, code bytes per unit).
fn unit_shape(ty: GgmlType) -> Option<(usize, usize)> {
    Some(match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => (32, 16),
        GgmlType::Q8_0 => (32, 32),
        GgmlType::Q4K => (64, 32),
        GgmlType::Q6K => (64, 48),
        _ => return None,
    })
}

fn align16(n: usize) -> usize {
    n.div_ceil(16) * 16
}

/// The layout of a `rows × cols` matrix of `ty`, or None when `ty` has none.
pub fn layout(ty: GgmlType, rows: usize, cols: usize) -> Option<PackedLayout> {
    let (ue, ub) = unit_shape(ty)?;
    if rows == 0 || cols == 0 || !cols.is_multiple_of(ty.block_size()) || !cols.is_multiple_of(ue) {
        return None;
    }
    let units = cols / ue;
    let blocks = cols / ty.block_size();
    let q_stride = align16(units * ub);
    // Scales: Q4_0/Q8_0 the f16 d of each block; Q4_1 d and m; Q5_0/Q5_1 the
    // block's high bits (reordered) and d (and m), 8 bytes; Q4_K the 16-byte
    // header of each super-block; Q6_K the 16 scales of each super-block, and its
    // d apart.
    let (s_row, d_row) = match ty {
        GgmlType::Q4_0 | GgmlType::Q8_0 => (blocks * 2, 0),
        GgmlType::Q4_1 => (blocks * 4, 0),
        GgmlType::Q5_0 | GgmlType::Q5_1 => (blocks * 8, 0),
        GgmlType::Q4K => (blocks * 16, 0),
        _ => (blocks * 16, blocks * 2),
    };
    let s_stride = align16(s_row);
    let d_stride = align16(d_row);
    let s_offset = rows * q_stride;
    let d_offset = s_offset + rows * s_stride;
    Some(PackedLayout {
        unit_elems: ue,
        units,
        q_stride,
        s_offset,
        s_stride,
        d_offset,
        d_stride,
        compact: None,
    })
}

impl PackedLayout {
    pub fn total_bytes(&self, rows: usize) -> usize {
        self.d_offset + rows * self.d_stride
    }

    /// The layout of the rows from `first` on, addressed from their first code
    /// row, and how far that row lies from this layout's start: every region
    /// is row by row, so each moves by `first` of its strides, and the offsets
    /// count from the moved code pointer.
    pub fn from_row(&self, first: usize) -> (PackedLayout, usize) {
        let moved = first * self.q_stride;
        (
            PackedLayout {
                s_offset: self.s_offset + first * self.s_stride - moved,
                d_offset: self.d_offset + first * self.d_stride - moved,
                ..*self
            },
            moved,
        )
    }
}

/// Whether Q5_0 uploads try the compact layout ([`compact_q5_0`]) by default:
/// yes unless `QUERN_CUDA_Q5C=0` (the backend's `set_compact_q5_0` overrides
/// it). It reads 23 % fewer bytes than the Q5_0 repack; synthetic 8B AWQ
/// decode on an H200 went from 408 to 465 tokens/s with it (BENCHMARKS.md).
pub fn use_compact_q5_0() -> bool {
    std::env::var("QUERN_CUDA_Q5C").as_deref() != Ok("0")
}

/// The 5-bit codes of the Q5_0 block `b` (its 22 bytes).
fn q5_0_codes(b: &[u8]) -> [u8; 32] {
    bytemuck::from_bytes::<BlockQ5_0>(b).codes()
}

/// A Q5_0 matrix whose blocks come in groups of `2^shift` sharing one `d` and
/// spanning at most 16 codes each (what the loader makes of AutoAWQ's 4-bit
/// codes with a zero point per group, `source.rs`) in a layout of 4.25 bits
/// per weight at groups of 128 instead of 5.5: per unit of 32 weights 16
/// bytes of 4-bit codes `q = c − 16 + z` (byte i: weights i and i + 16), and
/// per group 4 bytes, the group's `d` and its zero point `z`, so that each
/// value `d·(c − 16) = d·(q − z)` stays the file's, bit for bit. The largest of
/// groups of 4, 2 and 1 blocks that every group of the matrix fits; None when
/// none does (a Q5_0 file of the full 32-code range).
pub fn compact_q5_0(rows: usize, cols: usize, data: &[u8]) -> Option<(Vec<u8>, PackedLayout)> {
    if rows == 0
        || cols == 0
        || !cols.is_multiple_of(32)
        || data.len() != rows * cols / 32 * Q5_0_BYTES
    {
        return None;
    }
    let per_row = cols / 32;
    (0..=2u32)
        .rev()
        .filter(|&shift| per_row.is_multiple_of(1 << shift))
        .find_map(|shift| compact_with(rows, per_row, data, shift))
}

/// [`compact_q5_0`] with groups of `2^shift` blocks; None when one does not fit.
fn compact_with(
    rows: usize,
    per_row: usize,
    data: &[u8],
    shift: u32,
) -> Option<(Vec<u8>, PackedLayout)> {
    // In parallel: an 8B model's matrices are gigabytes.
    use rayon::prelude::*;
    let g = 1usize << shift;
    let q_stride = align16(per_row * 16);
    let s_stride = align16(per_row / g * 4);
    let s_offset = rows * q_stride;
    let l = PackedLayout {
        unit_elems: 32,
        units: per_row,
        q_stride,
        s_offset,
        s_stride,
        d_offset: s_offset + rows * s_stride,
        d_stride: 0,
        compact: Some(shift),
    };
    let mut out = vec![0u8; l.total_bytes(rows)];
    let (qreg, sreg) = out.split_at_mut(s_offset);
    let fits = qreg
        .par_chunks_exact_mut(q_stride)
        .zip(sreg.par_chunks_exact_mut(s_stride))
        .zip(data.par_chunks_exact(per_row * Q5_0_BYTES))
        .all(|((q, s), src)| compact_row(src, g, q, s).is_some());
    fits.then_some((out, l))
}

/// One row of [`compact_q5_0`]: its blocks `src` in groups of `g` into code
/// row `q` and scale row `s`; None at the first group that does not fit.
fn compact_row(src: &[u8], g: usize, q: &mut [u8], s: &mut [u8]) -> Option<()> {
    for (gi, grp) in src.chunks_exact(g * Q5_0_BYTES).enumerate() {
        let z = group_zero(grp)?;
        s[gi * 4..gi * 4 + 2].copy_from_slice(&grp[..2]);
        s[gi * 4 + 2..gi * 4 + 4].copy_from_slice(&u16::from(z).to_le_bytes());
        for (k, b) in grp.chunks_exact(Q5_0_BYTES).enumerate() {
            let u = gi * g + k;
            let c = q5_0_codes(b);
            for j in 0..16 {
                q[u * 16 + j] = (c[j] + z - 16) | ((c[j + 16] + z - 16) << 4);
            }
        }
    }
    Some(())
}

/// Bytes of a Q5_0 block: d, qh[4], qs[16].
const Q5_0_BYTES: usize = std::mem::size_of::<BlockQ5_0>();

/// The zero point `z` of a run of Q5_0 blocks that share one `d` and whose
/// codes `c` all give `c − 16 + z` in 0..=15; None when they do not.
fn group_zero(blocks: &[u8]) -> Option<u8> {
    let d = blocks.get(..2)?;
    let (mut lo, mut hi) = (u8::MAX, 0u8);
    for b in blocks.chunks_exact(Q5_0_BYTES) {
        if &b[..2] != d {
            return None;
        }
        for c in q5_0_codes(b) {
            lo = lo.min(c);
            hi = hi.max(c);
        }
    }
    let z = 16u8.saturating_sub(lo);
    (z <= 15 && hi + z <= 31).then_some(z)
}

/// The value of weight `e` of row `r` in [`compact_q5_0`]'s layout (tests).
#[cfg(test)]
fn compact_value(l: &PackedLayout, bytes: &[u8], r: usize, e: usize) -> f32 {
    let shift = l.compact.unwrap_or(0);
    let (u, j) = (e / 32, e % 32);
    let code = bytes[r * l.q_stride + u * 16 + (j & 15)] >> (4 * (j >> 4)) & 15;
    let s = &bytes[l.s_offset + r * l.s_stride + (u >> shift) * 4..];
    let d = half::f16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32();
    let z = u16::from_le_bytes([s[2], s[3]]);
    d * (f32::from(code) - f32::from(z))
}

/// The 6-bit code of weight `e` (0..256) of a Q6_K super-block (`ql[128]`,
/// `qh[64]`, scales, d), as the format defines it (value = d · scale · (code − 32)).
fn q6k_code(b: &[u8], e: usize) -> u8 {
    let low = (b[(e >> 7) * 64 + (e & 63)] >> (((e >> 6) & 1) * 4)) & 15;
    let high = (b[128 + (e >> 7) * 32 + (e & 31)] >> (((e >> 5) & 3) * 2)) & 3;
    low | (high << 4)
}

/// Q5_0/Q5_1's 32 high bits (bit j: weight j) in the order the kernel reads
/// them: bit 8j + k holds weight 4k + j's and bit 8j + 4 + k weight 16 + 4k + j's
/// (j, k < 4), so that the 4 high bits of each word of 4 codes are one shift and
/// one mask away.
pub fn reorder_q5_high(qh: u32) -> u32 {
    let mut out = 0u32;
    for j in 0..4 {
        for k in 0..4 {
            out |= ((qh >> (4 * k + j)) & 1) << (8 * j + k);
            out |= ((qh >> (16 + 4 * k + j)) & 1) << (8 * j + 4 + k);
        }
    }
    out
}

/// Rewrites `data` (`rows` rows of `cols` weights of `ty`, the file layout) into the
/// device layout. None when `ty` has none.
pub fn repack(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: &[u8],
) -> Option<(Vec<u8>, PackedLayout)> {
    let l = layout(ty, rows, cols)?;
    let row_bytes = cols / ty.block_size() * ty.type_size();
    if data.len() != rows * row_bytes {
        return None;
    }
    let mut out = vec![0u8; l.total_bytes(rows)];
    let slabs = use_slabs();
    let (qreg, rest) = out.split_at_mut(l.s_offset);
    let (sreg, dreg) = rest.split_at_mut(l.d_offset - l.s_offset);
    let drows: Vec<&mut [u8]> = if l.d_stride > 0 {
        dreg.chunks_exact_mut(l.d_stride).collect()
    } else {
        (0..rows).map(|_| <&mut [u8]>::default()).collect()
    };
    // Rows in parallel: an 8B model's output matrix is half a gigabyte.
    use rayon::prelude::*;
    qreg.par_chunks_exact_mut(l.q_stride)
        .zip(sreg.par_chunks_exact_mut(l.s_stride))
        .zip(drows.into_par_iter())
        .zip(data.par_chunks_exact(row_bytes))
        .for_each(|(((q, s), d), src)| repack_row(ty, src, q, s, d, slabs));
    Some((out, l))
}

/// Where the `i`-th 16 bytes of unit `u` (of `units` per row, `ub` code bytes
/// each) lie in a row of the code region: units in groups of 32, each group as
/// `ub / 16` slabs holding the `i`-th 16 bytes of each of its units (packed.cu's
/// `load_unit`).
pub fn slab_offset(u: usize, i: usize, units: usize, ub: usize) -> usize {
    let (g, j) = (u / 32, u % 32);
    let m = (units - g * 32).min(32);
    g * 32 * ub + i * m * 16 + j * 16
}

/// Whether codes lie in slabs ([`slab_offset`]); `QUERN_CUDA_SLAB=0`: units back
/// to back (the earlier layout, for comparison runs).
pub fn use_slabs() -> bool {
    std::env::var("QUERN_CUDA_SLAB").as_deref() != Ok("0")
}

/// Writes unit `u`'s code bytes into the code row `q`.
fn put_unit(q: &mut [u8], u: usize, units: usize, bytes: &[u8], slabs: bool) {
    if !slabs {
        let n = bytes.len();
        q[u * n..(u + 1) * n].copy_from_slice(bytes);
        return;
    }
    for (i, part) in bytes.chunks_exact(16).enumerate() {
        let at = slab_offset(u, i, units, bytes.len());
        q[at..at + 16].copy_from_slice(part);
    }
}

/// One row of [`repack`]: `src` in the file layout into its code, scale and d rows.
fn repack_row(ty: GgmlType, src: &[u8], q: &mut [u8], s: &mut [u8], d: &mut [u8], slabs: bool) {
    let units = src.len() / ty.type_size() * ty.block_size() / unit_shape(ty).map_or(32, |u| u.0);
    for (i, b) in src.chunks_exact(ty.type_size()).enumerate() {
        match ty {
            GgmlType::Q4_0 => {
                s[i * 2..i * 2 + 2].copy_from_slice(&b[..2]);
                q[i * 16..i * 16 + 16].copy_from_slice(&b[2..18]);
            }
            GgmlType::Q4_1 => {
                s[i * 4..i * 4 + 4].copy_from_slice(&b[..4]);
                q[i * 16..i * 16 + 16].copy_from_slice(&b[4..20]);
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                // Q5_0: d, qh[4], qs[16]; Q5_1: d, m, qh[4], qs[16].
                let sc = if ty == GgmlType::Q5_0 { 2 } else { 4 };
                let qh = u32::from_le_bytes([b[sc], b[sc + 1], b[sc + 2], b[sc + 3]]);
                let e = &mut s[i * 8..i * 8 + 8];
                e[..4].copy_from_slice(&reorder_q5_high(qh).to_le_bytes());
                e[4..4 + sc].copy_from_slice(&b[..sc]);
                q[i * 16..i * 16 + 16].copy_from_slice(&b[sc + 4..sc + 20]);
            }
            GgmlType::Q8_0 => {
                s[i * 2..i * 2 + 2].copy_from_slice(&b[..2]);
                put_unit(q, i, units, &b[2..34], slabs);
            }
            GgmlType::Q4K => {
                // The file's code bytes are already four units of 32.
                s[i * 16..i * 16 + 16].copy_from_slice(&b[..16]);
                for k in 0..4 {
                    put_unit(q, i * 4 + k, units, &b[16 + 32 * k..48 + 32 * k], slabs);
                }
            }
            _ => {
                s[i * 16..i * 16 + 16].copy_from_slice(&b[192..208]);
                d[i * 2..i * 2 + 2].copy_from_slice(&b[208..210]);
                for u in 0..4 {
                    let mut unit = [0u8; 48];
                    let e0 = 64 * u;
                    let (lo, hi) = unit.split_at_mut(32);
                    for (j, v) in lo.iter_mut().enumerate() {
                        *v = (q6k_code(b, e0 + j) & 15) | ((q6k_code(b, e0 + 32 + j) & 15) << 4);
                    }
                    for (j, v) in hi.iter_mut().enumerate() {
                        *v = (0..4).fold(0u8, |h, g| {
                            h | ((q6k_code(b, e0 + 16 * g + j) >> 4) << (2 * g))
                        });
                    }
                    put_unit(q, i * 4 + u, units, &unit, slabs);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Q5_0 blocks as the loader makes them of 4-bit codes with a zero point
    /// per group of `g` blocks (source.rs): random q, z and d per group, codes
    /// c = q − z + 16.
    fn awq_like_q5_0(rows: usize, cols: usize, g: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut out = Vec::new();
        for _ in 0..rows * cols / 32 / g {
            let d = half::f16::from_f32(0.001 + (next() % 1000) as f32 * 1e-5).to_bits();
            let z = (next() % 16) as u8;
            for _ in 0..g {
                let codes: [u8; 32] = std::array::from_fn(|_| (next() % 16) as u8 + 16 - z);
                let block = BlockQ5_0::from_codes(d.to_le_bytes(), &codes);
                out.extend_from_slice(bytemuck::bytes_of(&block));
            }
        }
        out
    }

    /// Row `r` of `data` as the CPU dequantises Q5_0.
    fn q5_0_row(data: &[u8], cols: usize, r: usize) -> Vec<f32> {
        use quern_quant::BlockFormat;
        let row = &data[r * cols / 32 * Q5_0_BYTES..(r + 1) * cols / 32 * Q5_0_BYTES];
        let mut out = vec![0.0f32; cols];
        quern_quant::q5_0::Q5_0::dequantize_row(bytemuck::cast_slice(row), &mut out);
        out
    }

    #[test]
    fn compact_q5_0_keeps_every_value_and_finds_the_group() {
        for (g, shift) in [(4, 2), (2, 1), (1, 0)] {
            let (rows, cols) = (3, 512);
            let data = awq_like_q5_0(rows, cols, g, 7 + g as u64);
            let (bytes, l) = compact_q5_0(rows, cols, &data).expect("AWQ-like rows fit");
            assert_eq!(l.compact, Some(shift), "groups of {g} blocks");
            assert_eq!(bytes.len(), l.total_bytes(rows));
            for r in 0..rows {
                let want_row = q5_0_row(&data, cols, r);
                for (e, want) in want_row.into_iter().enumerate() {
                    let got = compact_value(&l, &bytes, r, e);
                    assert_eq!(got.to_bits(), want.to_bits(), "g {g} row {r} weight {e}");
                }
            }
        }
        // Groups of 128: 16 code bytes per 32 weights and 4 bytes per group,
        // 4.25 bits per weight against Q5_0's 5.5.
        let data = awq_like_q5_0(2, 4096, 4, 3);
        let (bytes, _) = compact_q5_0(2, 4096, &data).expect("fits");
        assert_eq!(bytes.len() * 8 * 100 / (2 * 4096), 425);
    }

    #[test]
    fn compact_q5_0_refuses_codes_it_cannot_hold() {
        // One block spanning all 32 codes (a Q5_0 file's own quantiser can).
        let mut data = awq_like_q5_0(1, 64, 1, 5);
        data[6] = 0x00; // weights 0 and 16: low nibbles 0
        data[2..6].copy_from_slice(&0u32.to_le_bytes()); // no high bits: codes 0..15
        data[7] = 0xFF;
        data[2] = 0b10; // weight 1 gets its high bit: code 31
        assert!(group_zero(&data[..Q5_0_BYTES]).is_none());
        assert!(compact_q5_0(1, 64, &data).is_none());
        // Blocks of one group with different scales do not share one.
        let mut two = awq_like_q5_0(1, 128, 4, 9);
        two[0] ^= 1;
        let (_, l) = compact_q5_0(1, 128, &two).expect("smaller groups still fit");
        assert_ne!(l.compact, Some(2));
        assert!(compact_q5_0(1, 100, &two).is_none());
    }

    /// Decodes weight `e` of row `r` from the packed layout the way packed.cu
    /// does, as (code, scale words), to check the rewrite against the file layout.
    fn q6k_from_packed(buf: &[u8], l: &PackedLayout, r: usize, e: usize) -> (u8, i8, [u8; 2]) {
        let q = &buf[r * l.q_stride..];
        let (u, k) = (e / 64, e % 64);
        let mut unit = [0u8; 48];
        for (i, part) in unit.chunks_exact_mut(16).enumerate() {
            let at = slab_offset(u, i, l.units, 48);
            part.copy_from_slice(&q[at..at + 16]);
        }
        let low = if k < 32 {
            unit[k] & 15
        } else {
            unit[k - 32] >> 4
        };
        let high = (unit[32 + (k % 16)] >> (2 * (k / 16))) & 3;
        let s = &buf[l.s_offset + r * l.s_stride..];
        let sc = s[(e / 256) * 16 + (e % 256) / 16] as i8;
        let d = &buf[l.d_offset + r * l.d_stride..];
        let dd = [d[(e / 256) * 2], d[(e / 256) * 2 + 1]];
        (low | (high << 4), sc, dd)
    }

    /// Two matrices repacked as one stacked matrix: the second's view
    /// (`from_row`) reads, region by region and row by row, exactly the bytes
    /// of the second repacked alone, for every repacked format (Q6_K has all
    /// three regions).
    #[test]
    fn views_of_a_stacked_matrix_read_each_part() {
        let (top, bottom, cols) = (5, 3, 512);
        for ty in [GgmlType::Q4_0, GgmlType::Q5_1, GgmlType::Q4K, GgmlType::Q6K] {
            let rb = cols / ty.block_size() * ty.type_size();
            // Bytes of random value: only their places matter.
            let mut x = 0x9e37_79b9u32;
            let data: Vec<u8> = (0..(top + bottom) * rb)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let (all, l) = repack(ty, top + bottom, cols, &data).expect("stacked");
            let (alone, la) = repack(ty, bottom, cols, &data[top * rb..]).expect("alone");
            let (v, at) = l.from_row(top);
            let view = &all[at..];
            for r in 0..bottom {
                for (off, stride, a_off) in [
                    (0, v.q_stride, 0),
                    (v.s_offset, v.s_stride, la.s_offset),
                    (v.d_offset, v.d_stride, la.d_offset),
                ] {
                    assert_eq!(
                        &view[off + r * stride..off + (r + 1) * stride],
                        &alone[a_off + r * stride..a_off + (r + 1) * stride],
                        "{ty} row {r}, region at {off}"
                    );
                }
            }
            assert_eq!(l.from_row(0), (l, 0));
        }
    }

    #[test]
    fn q6k_repack_keeps_every_code_and_scale() {
        let (rows, cols) = (3, 512);
        let ts = GgmlType::Q6K.type_size();
        // Arbitrary bytes (not zeros): every code and scale is checked.
        let data: Vec<u8> = (0..rows * cols / 256 * ts)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8)
            .collect();
        let (buf, l) = repack(GgmlType::Q6K, rows, cols, &data).expect("packed");
        for r in 0..rows {
            for e in 0..cols {
                let b = &data[(r * cols + e) / 256 * ts..][..ts];
                let (code, sc, d) = q6k_from_packed(&buf, &l, r, e);
                assert_eq!(code, q6k_code(b, e % 256), "row {r} weight {e}");
                assert_eq!(sc, b[192 + (e % 256) / 16] as i8);
                assert_eq!(d, [b[208], b[209]]);
            }
        }
    }

    /// The reordered high bits, read the way packed.cu reads them, give every
    /// weight its own bit back.
    #[test]
    fn q5_high_bits_reorder_is_what_the_kernel_reads() {
        for seed in [0x1234_5678u32, 0x8000_0001, 0xFFFF_0000, 0xA5A5_5A5A, 1] {
            let h = reorder_q5_high(seed);
            for k in 0..4u32 {
                let lo = (h << (4 - k)) & 0x1010_1010;
                let hi = (h >> k) & 0x1010_1010;
                for j in 0..4u32 {
                    let w_lo = 4 * k + j;
                    let w_hi = 16 + 4 * k + j;
                    assert_eq!((lo >> (8 * j + 4)) & 1, (seed >> w_lo) & 1, "weight {w_lo}");
                    assert_eq!((hi >> (8 * j + 4)) & 1, (seed >> w_hi) & 1, "weight {w_hi}");
                }
            }
        }
    }

    /// Every byte of a row's code region belongs to exactly one (unit, slab) place,
    /// for full and partial groups of 32 units.
    #[test]
    fn slabs_tile_the_code_row() {
        for ub in [16, 32, 48] {
            for units in [1, 18, 32, 33, 64, 70, 136] {
                let mut seen = vec![0u8; units * ub];
                for u in 0..units {
                    for i in 0..ub / 16 {
                        let at = slab_offset(u, i, units, ub);
                        for b in &mut seen[at..at + 16] {
                            *b += 1;
                        }
                    }
                }
                assert!(seen.iter().all(|&c| c == 1), "ub {ub} units {units}");
            }
        }
    }

    #[test]
    fn regions_are_aligned_and_disjoint() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::Q6K,
        ] {
            for (rows, cols) in [(37, 512), (5, 4352), (1, 256)] {
                let l = layout(ty, rows, cols).expect("layout");
                assert_eq!(l.q_stride % 16, 0);
                assert_eq!(l.s_offset % 16, 0);
                assert_eq!(l.d_offset % 16, 0);
                assert_eq!(l.s_offset, rows * l.q_stride);
                assert!(l.d_offset >= l.s_offset + rows * l.s_stride);
                assert_eq!(l.units * l.unit_elems, cols);
            }
        }
        // Rows the units do not divide have no packed layout.
        assert!(layout(GgmlType::Q4K, 2, 96).is_none());
        assert!(layout(GgmlType::Q5K, 2, 256).is_none());
    }
}
