//! Progress reporting hooks (the CLI draws indicatif bars from them).

use crate::digest::Digest;

pub trait Observer: Send + Sync {
    /// A blob transfer starts; `done` bytes are already there (resumed or cached).
    fn start(&self, _digest: &Digest, _label: &str, _total: u64, _done: u64) {}
    fn advance(&self, _digest: &Digest, _bytes: u64) {}
    fn finish(&self, _digest: &Digest, _how: &str) {}
    /// A one-line status message.
    fn note(&self, _msg: &str) {}
}

/// Reports nothing.
pub struct NoProgress;
impl Observer for NoProgress {}
