//! The RMSNorms of a single-token step folded into the products that read them
//! (common.cu's `FoldOut` and `fold_group`, decode.cu's `norm_fold_q`).
//!
//! A norm's quantised output is `x · w / rms(x)` in codes per block: one scalar
//! scales a block and its maximum alike, so the codes of `x · w` are those of
//! the norm's output, and the scalar can wait until after the product. One
//! launch of many short blocks adds the residual's update into `x` and
//! quantises `x · w` group by group (32 rows, 256 for the K formats' one scale
//! per 256), storing each group's `Σx²`; the products that read the norm (the
//! *consumers*: q/k/v, gate/up, the output) sum those slots in a fixed order
//! and scale their outputs by `1 / sqrt(Σ / k + eps)`. That replaces the
//! norm's single block, a chain of two block-wide reductions, and in the
//! per-256 layout also its quantiser's launch. Only products on the
//! single-token block kernels read a fold ([`CudaBackend::can_fold`]);
//! elsewhere the norm keeps its kernels.

use cudarc::driver::CudaSlice;

use super::error::DriverContext;
use super::{
    act_bytes, act_scales_offset, device_addr, fused_act_mode, ActKind, CudaBackend, CudaError,
    DeviceWeight, Fold, FoldOut,
};

/// Rows per group for a layout (`fused_act_mode`): a quantiser block, or the
/// K formats' 256 values under one scale.
fn group_rows(mode: i32) -> usize {
    if mode == 2 {
        256
    } else {
        32
    }
}

/// One norm a fold may replace: the layout its consumers read.
#[derive(Debug, Clone, Copy)]
struct Site {
    kind: ActKind,
    group: usize,
}

/// Every norm of a model's step and the device memory their folds use.
pub(crate) struct Folds {
    /// One per norm: `2·i` layer i's attention norm, `2·i + 1` its FFN norm,
    /// the last the output norm. None where no fold can replace it (layouts
    /// without a fused quantiser, rows that are not whole groups).
    sites: Vec<Option<Site>>,
    /// A `FoldOut` per site.
    outs: CudaSlice<u8>,
    /// The consumers' activation codes (apart from the step's own buffer).
    act: CudaSlice<u8>,
    parts: CudaSlice<f64>,
    d: usize,
    eps: f32,
}

/// What folding a site changes in a step: `norm_fold_q`'s launch (a block of
/// `threads` for each of `groups`, over the `FoldOut` at `out`) in place of
/// the norm's, and every consumer's [`Fold`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct SitePlan {
    pub out: u64,
    pub groups: u32,
    pub threads: u32,
    pub consumer: Fold,
}

impl Folds {
    /// `x`: the residual's device address (one token's `d` floats); `norms`:
    /// each site's weights and the kind of activations its first consumer
    /// reads.
    pub(crate) fn new(
        be: &CudaBackend,
        d: usize,
        eps: f32,
        x: u64,
        norms: &[(u64, ActKind)],
    ) -> Result<Folds, CudaError> {
        let st = be.stream();
        let act: CudaSlice<u8> = st
            .alloc_zeros(act_bytes(d, 1).max(16))
            .ctx("allocating folded-norm activations")?;
        let parts: CudaSlice<f64> = st
            .alloc_zeros(d.div_ceil(32).max(1))
            .ctx("allocating folded-norm sums")?;
        let (act_p, parts_p) = (device_addr(be, &act), device_addr(be, &parts));
        let mut sites = Vec::with_capacity(norms.len());
        let mut bytes = Vec::with_capacity(norms.len() * std::mem::size_of::<FoldOut>());
        for &(w, kind) in norms {
            let site = fused_act_mode(kind).and_then(|mode| {
                let group = group_rows(mode);
                (d > 0 && d.is_multiple_of(group)).then_some((mode, group))
            });
            let out = match site {
                Some((mode, group)) => FoldOut {
                    x,
                    w,
                    xq: act_p,
                    xa: act_p + act_scales_offset(kind, 1, d) as u64,
                    parts: parts_p,
                    mode,
                    group: group as i32,
                },
                None => FoldOut::default(),
            };
            sites.push(site.map(|(_, group)| Site { kind, group }));
            bytes.extend_from_slice(&out.to_bytes());
        }
        let outs = st
            .clone_htod(&bytes)
            .ctx("uploading folded-norm descriptors")?;
        Ok(Folds {
            sites,
            outs,
            act,
            parts,
            d,
            eps,
        })
    }

    /// The device address of the consumers' activations.
    pub(crate) fn act_ptr(&self, be: &CudaBackend) -> u64 {
        device_addr(be, &self.act)
    }

    /// Site `s`'s fold when every product that reads the norm (`consumers`)
    /// runs on kernels that take one, in the site's layout.
    pub(crate) fn plan(
        &self,
        be: &CudaBackend,
        s: usize,
        consumers: &[&DeviceWeight],
    ) -> Option<SitePlan> {
        let site = (*self.sites.get(s)?)?;
        let ok = !consumers.is_empty()
            && consumers
                .iter()
                .all(|c| c.k == self.d && c.act_kind() == site.kind && be.can_fold(c, 1));
        if !ok {
            return None;
        }
        Some(SitePlan {
            out: device_addr(be, &self.outs) + (s * std::mem::size_of::<FoldOut>()) as u64,
            groups: (self.d / site.group) as u32,
            threads: site.group.min(256) as u32,
            consumer: Fold {
                parts: device_addr(be, &self.parts),
                n_parts: (self.d / site.group) as i32,
                eps: self.eps,
            },
        })
    }
}

impl FoldOut {
    /// The struct as the device reads it (little-endian, no padding: five
    /// addresses, then two ints).
    fn to_bytes(self) -> [u8; 48] {
        let mut b = [0u8; 48];
        for (i, v) in [self.x, self.w, self.xq, self.xa, self.parts]
            .into_iter()
            .enumerate()
        {
            b[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
        }
        b[40..44].copy_from_slice(&self.mode.to_le_bytes());
        b[44..48].copy_from_slice(&self.group.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_bytes_follow_the_device_struct() {
        let f = FoldOut {
            x: 1,
            w: 2,
            xq: 3,
            xa: 4,
            parts: 0x0102_0304_0506_0708,
            mode: 2,
            group: 256,
        };
        let b = f.to_bytes();
        assert_eq!(&b[0..8], &1u64.to_le_bytes());
        assert_eq!(&b[32..40], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[40..44], &2i32.to_le_bytes());
        assert_eq!(&b[44..48], &256i32.to_le_bytes());
    }

    #[test]
    fn groups_are_a_quantiser_block_or_a_k_super_block() {
        assert_eq!(group_rows(1), 32);
        assert_eq!(group_rows(2), 256);
        assert_eq!(group_rows(3), 32);
    }
}
