//! How a long verification tells its caller where it is (the CLI draws bars).

use crate::eval::Accumulator;

/// The phases of a verification, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Hashing the inputs; units are bytes.
    Hash,
    /// Comparing weights; units are elements.
    Weights,
    /// Evaluating chunks of text; units are chunks.
    Outputs,
}

pub trait Progress: Sync {
    /// A stage begins with `total` units of work.
    fn start(&self, _stage: Stage, _total: u64) {}
    /// `n` more units of the current stage are done.
    fn advance(&self, _n: u64) {}
    /// A chunk was evaluated; `so_far` holds every position scored until now.
    fn chunk_done(&self, _so_far: &Accumulator) {}
    /// The current stage is over.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
