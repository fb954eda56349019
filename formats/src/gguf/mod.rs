//! GGUF v3: a memory-mapped reader and a streaming writer.

pub mod value;

pub use value::{Value, ValueType};

/// `GGUF` as a little-endian u32.
pub const MAGIC: u32 = 0x4655_4747;
pub const VERSION: u32 = 3;
pub const DEFAULT_ALIGNMENT: u64 = 32;

pub mod error;
pub mod reader;
pub mod tensor;
pub mod writer;

pub use error::GgufError;
pub use reader::GgufFile;
pub use tensor::{TensorInfo, TensorSpec};
pub use writer::Writer;
