//! The report `quern verify` renders and writes as JSON. Its schema is
//! [`SCHEMA`] (`report.schema.json` beside this file); `schema` in every report
//! names the version.

use serde::Serialize;

use super::digest::FileDigest;
use super::thresholds::{Thresholds, Violation};
use super::weights::WeightReport;
use crate::eval::OutputSummary;

/// The JSON Schema (draft 2020-12) every report validates against.
pub const SCHEMA: &str = include_str!("report.schema.json");

/// The value of every report's `schema` field.
pub const SCHEMA_ID: &str = "quern-verify-report/1";

/// An input file or folder.
#[derive(Debug, Clone, Serialize)]
pub struct Input {
    pub path: String,
    /// `gguf`, `awq` or `safetensors`.
    pub format: &'static str,
    /// The GGUF architecture name (`llama`, `qwen2`, `qwen3`).
    pub arch: String,
    /// The file's sha256, or for a folder that of its manifest (see `digest`).
    pub sha256: String,
    pub bytes: u64,
    pub files: Vec<FileDigest>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TextInfo {
    /// The file, or `"builtin"`.
    pub source: String,
    pub sha256: String,
    pub bytes: usize,
    /// Tokens of the whole text (with the leading BOS when one is used).
    pub tokens: usize,
    /// The BOS id written over each chunk's first token, when the tokenizer adds BOS.
    pub bos: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub ctx: usize,
    pub chunks: usize,
    pub chunks_available: usize,
    pub scored_per_chunk: usize,
    pub threads: usize,
    pub weights_only: bool,
    /// Activation code width of the 4- and 5-bit formats (`precision`).
    pub act_bits: u32,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timing {
    pub hash: f64,
    pub weights: f64,
    pub outputs: f64,
    pub total: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub quern_version: &'static str,
    pub artifact: Input,
    pub reference: Input,
    pub text: TextInfo,
    pub settings: Settings,
    pub thresholds: Thresholds,
    pub weights: WeightReport,
    /// `null` with `--weights-only`.
    pub outputs: Option<OutputSummary>,
    pub violations: Vec<Violation>,
    /// No threshold crossed.
    pub passed: bool,
    /// Wall time of each phase, in seconds.
    pub seconds: Timing,
}

impl Report {
    pub fn to_json(&self) -> String {
        // Serialising plain structs of numbers and strings cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
