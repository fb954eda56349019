//! Evaluation maths shared by `quern verify`: llama.cpp's perplexity protocol and
//! its KL-divergence statistics, as pure functions over logits.
//!
//! - [`chunks`]: which tokens form each chunk and which positions are scored
//!   (non-overlapping chunks of `ctx` tokens, the second half of each scored);
//! - [`logits`]: one scored position compared between two models (NLL, KL
//!   divergence, top token, probability of the right token);
//! - [`stats`]: means with standard errors and interpolated percentiles;
//! - [`summary`]: the running accumulation of scored positions into the figures
//!   the report shows.

pub mod chunks;
pub mod logits;
pub mod stats;
pub mod summary;

pub use chunks::{ChunkPlan, EvalError};
pub use logits::{compare_position, PositionScore};
pub use summary::{Accumulator, Drop, OutputSummary};
