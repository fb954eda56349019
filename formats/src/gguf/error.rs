//! Errors of the GGUF reader and writer. Reader errors name the file; both name
//! the metadata key or tensor concerned.

use std::io;
use std::path::PathBuf;

use crate::ggml::GgmlType;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: cannot open GGUF file: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a GGUF file (magic {found:#010x}, expected 0x46554747 \"GGUF\")")]
    BadMagic { path: PathBuf, found: u32 },
    #[error("{path}: unsupported GGUF version {version} (quern reads versions 2 and 3)")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{path}: truncated: {what} needs {needed} bytes at offset {offset}, but the file is {file_len} bytes long")]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
        needed: u64,
        file_len: u64,
    },
    #[error("{path}: {what} is {count}, more than the remaining {remaining} bytes of the file could hold")]
    AbsurdCount {
        path: PathBuf,
        what: String,
        count: u64,
        remaining: u64,
    },
    #[error("{path}: metadata key {key:?} appears more than once")]
    DuplicateKey { path: PathBuf, key: String },
    #[error("{path}: tensor {name:?} appears more than once")]
    DuplicateTensor { path: PathBuf, name: String },
    #[error("{path}: {what}: unknown metadata value type id {id}")]
    UnknownValueType {
        path: PathBuf,
        what: String,
        id: u32,
    },
    #[error("{path}: {what}: string is not valid UTF-8")]
    BadUtf8 { path: PathBuf, what: String },
    #[error("{path}: {what}: arrays nested more than {max} deep")]
    TooDeep {
        path: PathBuf,
        what: String,
        max: usize,
    },
    #[error("{path}: metadata key {key:?}: {reason}")]
    BadMetadata {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{path}: tensor {name:?}: unknown ggml type id {id}")]
    UnknownGgmlType {
        path: PathBuf,
        name: String,
        id: u32,
    },
    #[error("{path}: tensor {name:?}: {n_dims} dimensions (GGUF allows at most 4)")]
    TooManyDims {
        path: PathBuf,
        name: String,
        n_dims: u32,
    },
    #[error("{path}: tensor {name:?}: shape {shape:?} does not fit type {ggml_type} (block size {}): {reason}", ggml_type.block_size())]
    BadShape {
        path: PathBuf,
        name: String,
        shape: Vec<u64>,
        ggml_type: GgmlType,
        reason: &'static str,
    },
    #[error("{path}: tensor {name:?}: data offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned {
        path: PathBuf,
        name: String,
        offset: u64,
        alignment: u64,
    },
    #[error("{path}: tensor {name:?}: data [{start}, {end}) lies outside the file's data section ({data_len} bytes starting at {data_offset}); is the file truncated?")]
    OutOfFile {
        path: PathBuf,
        name: String,
        start: u64,
        end: u64,
        data_offset: u64,
        data_len: u64,
    },
    #[error("{path}: tensors {first:?} and {second:?} overlap in the data section")]
    Overlap {
        path: PathBuf,
        first: String,
        second: String,
    },

    // Writer errors: the writer does not know a file name (it writes to any `Write`).
    #[error("GGUF writer: I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("GGUF writer: metadata key {key:?}: {reason}")]
    InvalidMetadata { key: String, reason: String },
    #[error("GGUF writer: tensor {name:?}: {reason}")]
    InvalidTensor { name: String, reason: String },
    #[error("GGUF writer: tensor {name:?}: got {got} bytes of data, expected {expected}")]
    WrongDataSize {
        name: String,
        expected: u64,
        got: u64,
    },
    #[error("GGUF writer: got data for tensor {got:?}, expected {expected}")]
    OutOfOrder { expected: String, got: String },
    #[error("GGUF writer: tensor {name:?} was declared but its data was never written")]
    MissingTensor { name: String },
}
