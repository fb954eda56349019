//! GGUF v3: a memory-mapped reader and a streaming writer.

pub mod value;

pub use value::{Value, ValueType};

/// `GGUF` as a little-endian u32.
pub const MAGIC: u32 = 0x4655_4747;
pub const VERSION: u32 = 3;
pub const DEFAULT_ALIGNMENT: u64 = 32;
