//! An OCI distribution (v2 / OCI 1.1) registry on the filesystem:
//! [`storage`] keeps blobs, uploads, manifests, tags and referrer links;
//! [`http`] serves the API; [`gc`] removes unreferenced blobs.

pub mod errors;
pub mod gc;
pub mod http;
pub mod storage;

pub use http::{Server, ServerConfig};
pub use storage::Storage;
