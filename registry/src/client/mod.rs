//! Push and pull over the OCI distribution API.

pub mod auth;
pub mod error;
pub mod observer;
pub mod pull;
pub mod push;
pub mod referrers;
pub mod registry;

pub use error::ClientError;
pub use observer::{NoProgress, Observer};
pub use pull::{pull, PullOptions, PullReport};
pub use push::{push, Compress, PushOptions, PushReport};
pub use registry::Registry;
