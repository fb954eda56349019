//! L2 prefetch hints for single-token steps (common.cu's `l2_hint`).
//!
//! Between a decode step's weight products run kernels that read little from
//! DRAM: the norms (or their folds), the per-head work after q/k/v, the two
//! attention passes, SwiGLU and the argmax. On the 8B shape they take about a
//! quarter of the step (BENCHMARKS.md, tenth slice), during which the memory
//! that the products are bound by sits idle. Each of those kernels now asks L2
//! for the next bytes a later product will read: a budget of bytes per kernel
//! kind, taken in the order the products run from the weights not yet asked
//! for. The product then finds the first part of its matrix in L2. A hint
//! changes no value anywhere (the kernels' results are the same bit for bit,
//! `cuda_decode` checks it): it only moves when bytes leave DRAM.
//!
//! Off by default: whether it pays has not been measured on a GPU yet (the
//! products' own prefetch before their wait was slower, BENCHMARKS.md, ninth
//! slice; this one runs in kernels that leave DRAM idle, with bulk requests
//! that hold no thread up). `QUERN_CUDA_L2PF=1` turns it on with
//! [`L2Budget::ON`]; `testdata/gpu/calls/l2pf1.sh` measures it.

/// The kernels that carry a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// An RMSNorm, or the launch of its fold.
    Norm,
    /// qkv_post: biases, head norms, rope, the KV-cache write.
    Post,
    /// The attention's first pass.
    Attn,
    /// The attention's combine.
    Combine,
    /// SwiGLU.
    Silu,
    /// Each of the two argmax launches.
    Argmax,
}

const SITES: usize = 6;

impl Site {
    fn index(self) -> usize {
        match self {
            Site::Norm => 0,
            Site::Post => 1,
            Site::Attn => 2,
            Site::Combine => 3,
            Site::Silu => 4,
            Site::Argmax => 5,
        }
    }
}

/// Bytes each kind of kernel asks L2 for (one value per [`Site`], in its
/// order). `QUERN_CUDA_L2PF=1` turns the hints on with [`Self::ON`], `0` (or
/// unset) leaves them off; six comma-separated numbers set the budgets in MiB
/// (fractions allowed), for tuning runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Budget {
    bytes: [usize; SITES],
}

const MIB: f64 = 1024.0 * 1024.0;

impl L2Budget {
    /// No hints.
    pub const OFF: L2Budget = L2Budget { bytes: [0; SITES] };

    /// The budgets of `QUERN_CUDA_L2PF=1`: about what the H200's memory
    /// delivers while each kernel runs on the 8B shape (1.5-4 µs at 4 TB/s),
    /// the attention's first pass more.
    pub const ON: L2Budget = L2Budget {
        bytes: [
            12 << 20, // norm
            8 << 20,  // qkv_post
            16 << 20, // attention, first pass
            4 << 20,  // attention, combine
            6 << 20,  // SwiGLU
            4 << 20,  // argmax
        ],
    };

    /// Budgets in MiB, one per [`Site`].
    pub fn from_mib(mib: [f64; SITES]) -> L2Budget {
        L2Budget {
            bytes: mib.map(|m| (m.max(0.0) * MIB) as usize),
        }
    }

    /// `QUERN_CUDA_L2PF`'s budgets, else none (an unreadable value also
    /// gives none).
    pub fn from_env() -> L2Budget {
        std::env::var("QUERN_CUDA_L2PF")
            .ok()
            .and_then(|v| Self::parse(&v))
            .unwrap_or(Self::OFF)
    }

    /// "0" or "off": none; "1" or "on": [`Self::ON`]; six numbers (MiB):
    /// those.
    fn parse(v: &str) -> Option<L2Budget> {
        let v = v.trim();
        if v == "0" || v.eq_ignore_ascii_case("off") {
            return Some(Self::OFF);
        }
        if v == "1" || v.eq_ignore_ascii_case("on") {
            return Some(Self::ON);
        }
        let vals: Vec<f64> = v
            .split(',')
            .map(|p| p.trim().parse::<f64>().ok().filter(|x| x.is_finite()))
            .collect::<Option<_>>()?;
        let mib: [f64; SITES] = vals.try_into().ok()?;
        Some(Self::from_mib(mib))
    }

    pub fn is_off(&self) -> bool {
        self.bytes.iter().all(|&b| b == 0)
    }

    fn of(&self, site: Site) -> usize {
        self.bytes[site.index()]
    }
}

/// A step's hints as its launches are enqueued: the products' weight ranges
/// in the order they run, the first one again at the end (the next step's
/// first product, for the argmax's hints), and how far they have been asked
/// for.
#[derive(Debug, Clone)]
pub struct Cursor {
    budget: L2Budget,
    /// (device address, bytes) of each product's matrix.
    order: Vec<(u64, usize)>,
    /// The matrix hints take bytes from, and how many of its bytes are taken.
    at: usize,
    taken: usize,
    /// Products launched so far this step.
    launched: usize,
    /// Whether every product launched was the matrix `order` expected there.
    in_order: bool,
    /// Bytes handed out this step.
    total: usize,
}

/// The 16-byte aligned part of `[addr, addr + len)` (the bulk prefetch's
/// terms): its start and length.
fn aligned(addr: u64, len: usize) -> (u64, usize) {
    let start = addr.next_multiple_of(16);
    let end = (addr + len as u64) & !15;
    (start, end.saturating_sub(start) as usize)
}

impl Cursor {
    /// `order`: every product of the step, in launch order.
    pub fn new(budget: L2Budget, mut order: Vec<(u64, usize)>) -> Cursor {
        if let Some(&first) = order.first() {
            order.push(first);
        }
        Cursor {
            budget,
            order,
            at: 0,
            taken: 0,
            launched: 0,
            in_order: true,
            total: 0,
        }
    }

    /// No hints at all (prefill passes, hints off).
    pub fn none() -> Cursor {
        Cursor::new(L2Budget::OFF, Vec::new())
    }

    /// The hint for a kernel of kind `site`: the address and length of the
    /// next bytes to ask L2 for, from one matrix (0, 0: none).
    pub fn take(&mut self, site: Site) -> (u64, i64) {
        let budget = self.budget.of(site) & !15;
        if budget == 0 {
            return (0, 0);
        }
        while let Some(&(addr, len)) = self.order.get(self.at) {
            let (start, n) = aligned(addr, len);
            let left = n.saturating_sub(self.taken);
            if left < 16 {
                self.at += 1;
                self.taken = 0;
                continue;
            }
            let take = budget.min(left) & !15;
            let r = (start + self.taken as u64, take as i64);
            self.taken += take;
            self.total += take;
            return r;
        }
        (0, 0)
    }

    /// A product over the matrix at `addr` was launched: hints after it start
    /// at the next product's matrix at the earliest (the product itself read
    /// the rest of its own).
    pub fn product(&mut self, addr: u64) {
        if !self.order.is_empty() && self.order.get(self.launched).map(|o| o.0) != Some(addr) {
            self.in_order = false;
        }
        self.launched += 1;
        if self.at < self.launched {
            self.at = self.launched;
            self.taken = 0;
        }
    }

    /// Bytes handed out so far.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Whether the products launched so far were those of `order`, in its
    /// order (a hint for a matrix read out of turn is wasted, not wrong).
    pub fn in_order(&self) -> bool {
        self.in_order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mib(v: usize) -> usize {
        v << 20
    }

    #[test]
    fn budgets_parse_from_the_environment_form() {
        assert_eq!(L2Budget::parse("0"), Some(L2Budget::OFF));
        assert_eq!(L2Budget::parse(" off "), Some(L2Budget::OFF));
        assert_eq!(L2Budget::parse("1"), Some(L2Budget::ON));
        assert_eq!(L2Budget::parse("On"), Some(L2Budget::ON));
        assert!(!L2Budget::ON.is_off());
        let b = L2Budget::parse("1, 2, 0.5, 0, 4, 8").unwrap();
        assert_eq!(b.of(Site::Norm), mib(1));
        assert_eq!(b.of(Site::Post), mib(2));
        assert_eq!(b.of(Site::Attn), mib(1) / 2);
        assert_eq!(b.of(Site::Combine), 0);
        assert_eq!(b.of(Site::Argmax), mib(8));
        assert!(!b.is_off());
        assert_eq!(L2Budget::parse("1,2,3"), None);
        assert_eq!(L2Budget::parse("1,2,3,4,5,x"), None);
        assert!(L2Budget::OFF.is_off());
    }

    #[test]
    fn hints_walk_the_products_in_order_and_skip_launched_ones() {
        let budget = L2Budget::from_mib([1.0, 0.5, 2.0, 0.0, 1.0, 1.0]);
        // Three matrices: 1.5 MiB at 0x1000, 3 MiB at 0x10_0000_0000, 64 bytes
        // at an odd address.
        let order = vec![
            (0x1000, mib(3) / 2),
            (0x10_0000_0000, mib(3)),
            (0x2000_0003, 64),
        ];
        let mut c = Cursor::new(budget, order);
        // Norm: the first MiB of matrix 0; qkv_post: its last half MiB.
        assert_eq!(c.take(Site::Norm), (0x1000, mib(1) as i64));
        assert_eq!(
            c.take(Site::Post),
            (0x1000 + mib(1) as u64, mib(1) as i64 / 2)
        );
        // Matrix 0 is exhausted: the attention's 2 MiB come from matrix 1.
        assert_eq!(c.take(Site::Attn), (0x10_0000_0000, mib(2) as i64));
        // A zero budget takes nothing and moves nothing.
        assert_eq!(c.take(Site::Combine), (0, 0));
        // Product 0 runs; matrix 1 keeps its place.
        c.product(0x1000);
        assert_eq!(
            c.take(Site::Silu),
            (0x10_0000_0000 + mib(2) as u64, mib(1) as i64)
        );
        // Product 1 runs before its last bytes were asked for: hints move on
        // to matrix 2, whose aligned part is 0x2000_0010 .. 0x2000_0040.
        c.product(0x10_0000_0000);
        assert_eq!(c.take(Site::Norm), (0x2000_0010, 48));
        // Then the first matrix again (the next step's first product).
        c.product(0x2000_0003);
        assert_eq!(c.take(Site::Argmax), (0x1000, mib(1) as i64));
        assert_eq!(
            c.take(Site::Argmax),
            (0x1000 + mib(1) as u64, mib(1) as i64 / 2)
        );
        assert_eq!(c.take(Site::Argmax), (0, 0));
        assert_eq!(c.total(), mib(3) / 2 * 2 + mib(3) + 48);
        assert!(c.in_order());
        // A product other than the next in the order (the first matrix
        // again, for the next step) is noticed.
        c.product(0x5000);
        assert!(!c.in_order());
    }

    #[test]
    fn no_products_or_no_budget_give_no_hints() {
        let mut c = Cursor::none();
        assert_eq!(c.take(Site::Attn), (0, 0));
        let mut c = Cursor::new(L2Budget::OFF, vec![(0x1000, mib(4))]);
        for s in [Site::Norm, Site::Post, Site::Attn, Site::Silu] {
            assert_eq!(c.take(s), (0, 0));
        }
        assert_eq!(c.total(), 0);
    }
}
