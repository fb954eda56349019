//! quern registry: model artifacts as OCI artifacts.
//!
//! - [`artifact`]: the CNCF ModelPack layout of a GGUF file or a model folder.
//! - [`signing`]: OpenSSF model-signing compatible signatures (sigstore bundle + DSSE).
//! - [`provenance`]: in-toto / SLSA provenance statements for `convert` and `quantize`.
//! - [`client`]: push and pull over the OCI distribution API, with a local
//!   content-addressed [`store`].
//! - [`server`]: an OCI distribution registry on the filesystem.

pub mod artifact;
pub mod client;
pub mod describe;
pub mod digest;
pub mod digest_cache;
pub mod fsutil;
pub mod manifest;
pub mod media;
pub mod provenance;
pub mod reference;
pub mod server;
pub mod signing;
pub mod store;
pub mod testing;

pub use digest::Digest;
pub use reference::Reference;
