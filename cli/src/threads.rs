//! The `--threads` option shared by the compute commands.

use anyhow::{bail, Context, Result};

/// Sizes rayon's global pool; `None` keeps rayon's default (all cores).
pub fn init(threads: Option<usize>) -> Result<()> {
    match threads {
        None => Ok(()),
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("cannot start the worker threads"),
    }
}
