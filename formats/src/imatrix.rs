//! llama.cpp importance matrices (`llama-imatrix` output): per weight matrix, the
//! sum of squared input activations of each input column, and how many tokens
//! contributed. The quantizers weight their rounding error by the mean.
//!
//! Two file forms, both read and written:
//! * GGUF (current): `general.type = "imatrix"`, `imatrix.datasets` (string array),
//!   `imatrix.chunk_count`, `imatrix.chunk_size` (u32); per matrix `NAME.in_sum2`
//!   (F32, ggml shape `[n_cols, n_experts]`) and `NAME.counts` (F32 `[1, n_experts]`),
//!   trailing 1-dimensions dropped as ggml does. Other tensors (`NAME.in_sum`, the
//!   plain sums newer versions add) are ignored.
//! * legacy `.dat`, little-endian: `i32 n_entries`, then per entry `i32 name_len`,
//!   name bytes, `i32 ncall`, `i32 nval`, `nval × f32` (mean square × ncall); then
//!   optionally `i32 chunk_count`, `i32 dataset_len`, dataset bytes.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::atomic::{AtomicError, AtomicFile};
use crate::ggml::GgmlType;
use crate::gguf::{GgufError, GgufFile, TensorInfo, TensorSpec, Value, ValueType, Writer};

/// The chunk size llama.cpp assumes for legacy files, which do not record it
/// (`llama-imatrix`'s default context of 512 tokens).
pub const LEGACY_CHUNK_SIZE: u64 = 512;

const KEY_TYPE: &str = "general.type";
const KEY_DATASETS: &str = "imatrix.datasets";
const KEY_CHUNK_COUNT: &str = "imatrix.chunk_count";
const KEY_CHUNK_SIZE: &str = "imatrix.chunk_size";
const SUFFIX_SUMS: &str = ".in_sum2";
const SUFFIX_COUNTS: &str = ".counts";

/// One weight matrix's statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct ImatrixEntry {
    /// The weight's GGUF name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Sum of squared activations per input column; for expert tensors
    /// `n_experts × n_cols`, expert-major.
    pub sums: Vec<f32>,
    /// Tokens seen, per expert (one value for dense weights).
    pub counts: Vec<f32>,
}

impl ImatrixEntry {
    /// Input columns per matrix (0 if the entry is malformed).
    pub fn n_cols(&self) -> usize {
        if self.counts.is_empty() {
            0
        } else {
            self.sums.len() / self.counts.len()
        }
    }

    /// Mean squared activation per column; a matrix that saw no tokens gets 1
    /// everywhere (no preference), as llama.cpp's quantizer does.
    pub fn importance(&self) -> Vec<f32> {
        let n = self.n_cols();
        let mut out = Vec::with_capacity(self.sums.len());
        for (e, &count) in self.counts.iter().enumerate() {
            let row = &self.sums[e * n..(e + 1) * n];
            if count > 0.0 {
                out.extend(row.iter().map(|s| s / count));
            } else {
                out.extend(std::iter::repeat_n(1.0, n));
            }
        }
        out
    }

    fn check(&self) -> Result<(), String> {
        if self.counts.is_empty() {
            return Err("no counts".into());
        }
        if self.sums.is_empty() || !self.sums.len().is_multiple_of(self.counts.len()) {
            return Err(format!(
                "{} sums are not a whole number of rows for {} counts",
                self.sums.len(),
                self.counts.len()
            ));
        }
        if let Some(v) = self
            .sums
            .iter()
            .chain(&self.counts)
            .find(|v| !v.is_finite())
        {
            return Err(format!("non-finite value {v}"));
        }
        Ok(())
    }
}

/// An importance matrix: entries in file order plus provenance.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Imatrix {
    pub entries: Vec<ImatrixEntry>,
    /// Calibration text files the statistics came from.
    pub datasets: Vec<String>,
    /// Chunks of `chunk_size` tokens processed.
    pub chunk_count: u64,
    pub chunk_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImatrixError {
    #[error("{path}: cannot read importance matrix: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: truncated legacy importance matrix: {what} at byte {offset} needs {needed} bytes, {left} left")]
    Truncated {
        path: PathBuf,
        what: String,
        offset: usize,
        needed: usize,
        left: usize,
    },
    #[error("{path}: entry {entry:?}: {reason}")]
    BadEntry {
        path: PathBuf,
        entry: String,
        reason: String,
    },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("{path}: the importance matrix has no data (no entry saw any tokens)")]
    Empty { path: PathBuf },
    #[error("{path}: metadata key {key}: {reason}")]
    BadMetadata {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: GgufError,
    },
    #[error(transparent)]
    Output(#[from] AtomicError),
}

impl Imatrix {
    /// Reads either form; GGUF files are recognised by their magic.
    pub fn read(path: &Path) -> Result<Imatrix, ImatrixError> {
        let read_err = |source| ImatrixError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut magic = [0u8; 4];
        let n = std::fs::File::open(path)
            .and_then(|mut f| read_up_to(&mut f, &mut magic))
            .map_err(read_err)?;
        if &magic[..n] == b"GGUF" {
            Self::read_gguf(path)
        } else {
            let bytes = std::fs::read(path).map_err(read_err)?;
            parse_legacy(path, &bytes)
        }
    }

    /// The entry for a weight, if calibration saw it.
    pub fn get(&self, tensor_name: &str) -> Option<&ImatrixEntry> {
        self.entries.iter().find(|e| e.name == tensor_name)
    }

    /// Mean squared activation per input column (per expert, expert-major): the
    /// importance weights llama.cpp's quantizer uses for this tensor.
    pub fn importance_for(&self, tensor_name: &str) -> Option<Vec<f32>> {
        self.get(tensor_name).map(ImatrixEntry::importance)
    }

    fn read_gguf(path: &Path) -> Result<Imatrix, ImatrixError> {
        let file = GgufFile::open(path)?;
        let meta_err = |key: &str, reason: &str| ImatrixError::BadMetadata {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason: reason.to_string(),
        };

        let mut sums: BTreeMap<&str, &TensorInfo> = BTreeMap::new();
        let mut counts: BTreeMap<&str, &TensorInfo> = BTreeMap::new();
        for t in file.tensors() {
            if let Some(base) = t.name.strip_suffix(SUFFIX_SUMS) {
                sums.insert(base, t);
            } else if let Some(base) = t.name.strip_suffix(SUFFIX_COUNTS) {
                counts.insert(base, t);
            }
        }
        let is_imatrix = matches!(file.get(KEY_TYPE), Some(Value::String(s)) if s == "imatrix");
        if !is_imatrix && sums.is_empty() {
            return Err(ImatrixError::BadFile {
                path: path.to_path_buf(),
                reason: "a GGUF file without importance-matrix data (no `general.type = imatrix`, \
                         no `*.in_sum2` tensors); is this a model?"
                    .into(),
            });
        }

        let datasets = match file.get(KEY_DATASETS) {
            None => Vec::new(),
            Some(Value::Array(_, items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(meta_err(KEY_DATASETS, "not an array of strings")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(meta_err(KEY_DATASETS, "not an array of strings")),
        };
        let int_key = |key: &str| -> Result<u64, ImatrixError> {
            match file.get(key) {
                None => Ok(0),
                Some(v) => as_u64(v).ok_or_else(|| meta_err(key, "not a non-negative integer")),
            }
        };
        let chunk_count = int_key(KEY_CHUNK_COUNT)?;
        let chunk_size = int_key(KEY_CHUNK_SIZE)?;

        if let Some(name) = counts.keys().find(|k| !sums.contains_key(*k)) {
            return Err(entry_err(path, name, "has counts but no in_sum2 tensor"));
        }
        let mut entries = Vec::with_capacity(sums.len());
        for (name, s) in sums {
            let c = counts
                .get(name)
                .ok_or_else(|| entry_err(path, name, "has in_sum2 but no counts tensor"))?;
            let sums = f32_tensor(path, name, &file, s)?;
            let counts = f32_tensor(path, name, &file, c)?;
            // in_sum2 is [n_cols, n_experts]; counts holds one value per expert.
            let n_mat = s.shape.get(1).copied().unwrap_or(1);
            if s.shape.len() > 2 || counts.len() as u64 != n_mat {
                return Err(entry_err(
                    path,
                    name,
                    &format!(
                        "in_sum2 shape {:?} needs {n_mat} counts, the counts tensor has {}",
                        s.shape,
                        counts.len()
                    ),
                ));
            }
            let entry = ImatrixEntry {
                name: name.to_string(),
                sums,
                counts,
            };
            entry.check().map_err(|r| entry_err(path, name, &r))?;
            entries.push(entry);
        }
        let m = Imatrix {
            entries,
            datasets,
            chunk_count,
            chunk_size,
        };
        m.check(path)?;
        Ok(m)
    }

    /// Writes the GGUF form, as `llama-imatrix` does now (entries sorted by name).
    pub fn write_gguf(&self, path: &Path) -> Result<(), ImatrixError> {
        self.check(path)?;
        let too_big = |key: &str| ImatrixError::BadMetadata {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason: "does not fit the u32 llama.cpp stores".into(),
        };
        let chunk_count = u32::try_from(self.chunk_count).map_err(|_| too_big(KEY_CHUNK_COUNT))?;
        let chunk_size = u32::try_from(self.chunk_size).map_err(|_| too_big(KEY_CHUNK_SIZE))?;
        let metadata = vec![
            (KEY_TYPE.to_string(), Value::String("imatrix".into())),
            (
                KEY_DATASETS.to_string(),
                Value::Array(
                    ValueType::String,
                    self.datasets.iter().cloned().map(Value::String).collect(),
                ),
            ),
            (KEY_CHUNK_COUNT.to_string(), Value::U32(chunk_count)),
            (KEY_CHUNK_SIZE.to_string(), Value::U32(chunk_size)),
        ];

        let mut sorted: Vec<&ImatrixEntry> = self.entries.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let mut specs = Vec::with_capacity(2 * sorted.len());
        for e in &sorted {
            let n_mat = e.counts.len() as u64;
            specs.push(TensorSpec::new(
                format!("{}{SUFFIX_SUMS}", e.name),
                ggml_shape(&[e.n_cols() as u64, n_mat]),
                GgmlType::F32,
            ));
            specs.push(TensorSpec::new(
                format!("{}{SUFFIX_COUNTS}", e.name),
                ggml_shape(&[1, n_mat]),
                GgmlType::F32,
            ));
        }

        let gguf_err = |source| ImatrixError::Write {
            path: path.to_path_buf(),
            source,
        };
        let out = AtomicFile::create(path)?;
        let mut w = Writer::new(out, &metadata, &specs).map_err(gguf_err)?;
        for (e, pair) in sorted.iter().zip(specs.chunks(2)) {
            w.write_tensor(&pair[0].name, f32_bytes(&e.sums))
                .map_err(gguf_err)?;
            w.write_tensor(&pair[1].name, f32_bytes(&e.counts))
                .map_err(gguf_err)?;
        }
        w.finish().map_err(gguf_err)?.commit()?;
        Ok(())
    }

    /// Writes the legacy `.dat` form. Entries that saw no tokens are left out, and
    /// per-expert counts collapse into one call count, as `llama-imatrix` does;
    /// the last dataset is recorded.
    pub fn write_legacy(&self, path: &Path) -> Result<(), ImatrixError> {
        self.check(path)?;
        let bytes = self.legacy_bytes(path)?;
        let mut out = AtomicFile::create(path)?;
        out.write_all(&bytes).map_err(|source| ImatrixError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        out.commit()?;
        Ok(())
    }

    fn legacy_bytes(&self, path: &Path) -> Result<Vec<u8>, ImatrixError> {
        let i32_of = |what: &str, v: u64| {
            i32::try_from(v).map_err(|_| ImatrixError::BadFile {
                path: path.to_path_buf(),
                reason: format!("{what} {v} does not fit the legacy format's i32"),
            })
        };
        let stored: Vec<&ImatrixEntry> = self
            .entries
            .iter()
            .filter(|e| e.counts.iter().any(|&c| c > 0.0))
            .collect();
        let chunk = self.chunk_size.max(1) as f64;
        let mut b = Vec::new();
        b.extend_from_slice(&i32_of("entry count", stored.len() as u64)?.to_le_bytes());
        for e in stored {
            b.extend_from_slice(&i32_of("name length", e.name.len() as u64)?.to_le_bytes());
            b.extend_from_slice(e.name.as_bytes());
            let max_count = e.counts.iter().fold(0f32, |m, &c| m.max(c)) as f64;
            let ncall = (max_count / chunk).ceil();
            b.extend_from_slice(&i32_of("call count", ncall as u64)?.to_le_bytes());
            b.extend_from_slice(&i32_of("value count", e.sums.len() as u64)?.to_le_bytes());
            let n = e.n_cols();
            for (i, &s) in e.sums.iter().enumerate() {
                let count = e.counts[i / n] as f64;
                // An expert that saw no tokens is stored as mean 1 (no preference).
                let mean = if count > 0.0 { s as f64 / count } else { 1.0 };
                b.extend_from_slice(&((mean * ncall) as f32).to_le_bytes());
            }
        }
        b.extend_from_slice(&i32_of("chunk count", self.chunk_count)?.to_le_bytes());
        let dataset = self.datasets.last().map(String::as_str).unwrap_or("");
        b.extend_from_slice(&i32_of("dataset length", dataset.len() as u64)?.to_le_bytes());
        b.extend_from_slice(dataset.as_bytes());
        Ok(b)
    }

    /// llama.cpp refuses files without entries, so we neither write nor accept them.
    fn check(&self, path: &Path) -> Result<(), ImatrixError> {
        if !self
            .entries
            .iter()
            .any(|e| e.counts.iter().any(|&c| c > 0.0))
        {
            return Err(ImatrixError::Empty {
                path: path.to_path_buf(),
            });
        }
        for e in &self.entries {
            e.check().map_err(|r| entry_err(path, &e.name, &r))?;
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn entry_err(path: &Path, entry: &str, reason: &str) -> ImatrixError {
    ImatrixError::BadEntry {
        path: path.to_path_buf(),
        entry: entry.to_string(),
        reason: reason.to_string(),
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

/// ggml drops trailing 1-dimensions when it writes a tensor's shape.
fn ggml_shape(dims: &[u64]) -> Vec<u64> {
    let keep = dims.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1);
    dims[..keep].to_vec()
}

fn f32_tensor(
    path: &Path,
    entry: &str,
    file: &GgufFile,
    t: &TensorInfo,
) -> Result<Vec<f32>, ImatrixError> {
    if t.ggml_type != GgmlType::F32 {
        return Err(entry_err(
            path,
            entry,
            &format!("tensor {} is {}, expected F32", t.name, t.ggml_type),
        ));
    }
    Ok(file
        .tensor_data(t)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// GGUF is little-endian; so is every target quern builds for.
fn f32_bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

/// A little-endian reader over the legacy file that reports where it ran out.
struct Legacy<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Legacy<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], ImatrixError> {
        if self.left() < n {
            return Err(ImatrixError::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                offset: self.pos,
                needed: n,
                left: self.left(),
            });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn i32(&mut self, what: &dyn Fn() -> String) -> Result<i32, ImatrixError> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A length field: non-negative, and no more than the bytes left at `unit` bytes
    /// each (`data` names what it counts, for the error).
    fn len(
        &mut self,
        unit: usize,
        what: &dyn Fn() -> String,
        data: &dyn Fn() -> String,
    ) -> Result<usize, ImatrixError> {
        let at = self.pos;
        let v = self.i32(what)?;
        let n = usize::try_from(v).map_err(|_| ImatrixError::BadFile {
            path: self.path.to_path_buf(),
            reason: format!("{} at byte {at} is negative ({v})", what()),
        })?;
        if n.saturating_mul(unit) > self.left() {
            return Err(ImatrixError::Truncated {
                path: self.path.to_path_buf(),
                what: data(),
                offset: self.pos,
                needed: n.saturating_mul(unit),
                left: self.left(),
            });
        }
        Ok(n)
    }
}

fn parse_legacy(path: &Path, bytes: &[u8]) -> Result<Imatrix, ImatrixError> {
    let mut r = Legacy {
        path,
        bytes,
        pos: 0,
    };
    let n_entries = r.i32(&|| "entry count".into())?;
    let n_entries = usize::try_from(n_entries).map_err(|_| ImatrixError::BadFile {
        path: path.to_path_buf(),
        reason: format!("negative entry count {n_entries}; not a legacy importance matrix?"),
    })?;
    // Each entry needs at least 16 bytes: a bad count fails here, not in an allocation.
    if n_entries.saturating_mul(16) > r.left() {
        return Err(ImatrixError::BadFile {
            path: path.to_path_buf(),
            reason: format!(
                "entry count {n_entries} needs at least {} more bytes, {} left: \
                 truncated, or not a legacy importance matrix",
                n_entries.saturating_mul(16),
                r.left()
            ),
        });
    }
    let mut entries = Vec::with_capacity(n_entries);
    let mut max_ncall = 0u64;
    for i in 0..n_entries {
        let name_len = r.len(1, &|| format!("name length of entry {i}"), &|| {
            format!("name of entry {i}")
        })?;
        let name_bytes = r.take(name_len, &|| format!("name of entry {i}"))?;
        let name = String::from_utf8(name_bytes.to_vec()).map_err(|_| ImatrixError::BadFile {
            path: path.to_path_buf(),
            reason: format!("name of entry {i} is not UTF-8"),
        })?;
        let ncall = r.i32(&|| format!("call count of {name}"))?;
        let ncall = u64::try_from(ncall)
            .map_err(|_| entry_err(path, &name, &format!("negative call count {ncall}")))?;
        let nval = r.len(4, &|| format!("value count of {name}"), &|| {
            format!("values of {name}")
        })?;
        if nval == 0 {
            return Err(entry_err(path, &name, "has no values"));
        }
        let raw = r.take(4 * nval, &|| format!("values of {name}"))?;
        // Stored: mean square × ncall. Rebuild token sums and counts as
        // llama-imatrix does, assuming its default chunk size.
        let (scale, count) = if ncall > 0 {
            (LEGACY_CHUNK_SIZE as f64, (ncall * LEGACY_CHUNK_SIZE) as f32)
        } else {
            (1.0, 1.0)
        };
        let sums = raw
            .chunks_exact(4)
            .map(|c| (f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64 * scale) as f32)
            .collect();
        max_ncall = max_ncall.max(ncall);
        let entry = ImatrixEntry {
            name,
            sums,
            counts: vec![count],
        };
        entry
            .check()
            .map_err(|why| entry_err(path, &entry.name, &why))?;
        entries.push(entry);
    }

    // Optional trailer (newer legacy files): chunk count and dataset name.
    let mut chunk_count = max_ncall;
    let mut datasets = Vec::new();
    if r.left() > 0 {
        let c = r.i32(&|| "chunk count".into())?;
        chunk_count = u64::try_from(c).map_err(|_| ImatrixError::BadFile {
            path: path.to_path_buf(),
            reason: format!("negative chunk count {c}"),
        })?;
        let n = r.len(1, &|| "dataset name length".into(), &|| {
            "dataset name".into()
        })?;
        let name = r.take(n, &|| "dataset name".into())?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| ImatrixError::BadFile {
            path: path.to_path_buf(),
            reason: "dataset name is not UTF-8".into(),
        })?;
        if !name.is_empty() {
            datasets.push(name);
        }
    }
    if r.left() > 0 {
        return Err(ImatrixError::BadFile {
            path: path.to_path_buf(),
            reason: format!(
                "{} unexpected bytes after the data at byte {}",
                r.left(),
                r.pos
            ),
        });
    }
    let m = Imatrix {
        entries,
        datasets,
        chunk_count,
        chunk_size: LEGACY_CHUNK_SIZE,
    };
    m.check(path)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Imatrix {
        Imatrix {
            entries: vec![
                ImatrixEntry {
                    name: "blk.0.attn_q.weight".into(),
                    sums: vec![1024.0, 2048.0, 512.0, 0.0],
                    counts: vec![1024.0],
                },
                ImatrixEntry {
                    name: "blk.0.ffn_down_exps.weight".into(),
                    sums: vec![10.0, 20.0, 30.0, 40.0, 0.0, 0.0],
                    counts: vec![512.0, 1024.0, 0.0],
                },
            ],
            datasets: vec!["calib.txt".into()],
            chunk_count: 2,
            chunk_size: 512,
        }
    }

    #[test]
    fn importance_is_mean_square_and_one_for_unseen_experts() {
        let m = sample();
        assert_eq!(
            m.importance_for("blk.0.attn_q.weight"),
            Some(vec![1.0, 2.0, 0.5, 0.0])
        );
        let e = m.importance_for("blk.0.ffn_down_exps.weight");
        assert_eq!(
            e,
            Some(vec![
                10.0 / 512.0,
                20.0 / 512.0,
                30.0 / 1024.0,
                40.0 / 1024.0,
                1.0,
                1.0
            ])
        );
        assert_eq!(m.importance_for("output.weight"), None);
    }

    /// gguf-py (llama.cpp's own package) writes an imatrix the way `llama-imatrix`
    /// lays it out; we read it, write it back, and gguf-py reads ours.
    const GGUF_PY: &str = r#"
import sys, numpy as np
from gguf import GGUFReader, GGUFWriter, GGUFValueType
mode, path = sys.argv[1], sys.argv[2]
if mode == "write":
    w = GGUFWriter(path, arch="unused")
    # GGUFWriter always adds general.architecture; llama.cpp ignores extra keys.
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["tiny.txt"])
    w.add_uint32("imatrix.chunk_count", 7)
    w.add_uint32("imatrix.chunk_size", 256)
    sums = np.arange(2 * 32, dtype=np.float32).reshape(2, 32) * 0.5   # [n_mat, n_cols]
    w.add_tensor("blk.0.ffn_up_exps.weight.in_sum2", sums)
    w.add_tensor("blk.0.ffn_up_exps.weight.counts", np.array([[256.0], [0.0]], dtype=np.float32))
    w.add_tensor("blk.0.attn_k.weight.in_sum2", np.full(64, 3.0, dtype=np.float32))
    w.add_tensor("blk.0.attn_k.weight.counts", np.array([1792.0], dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
else:
    r = GGUFReader(path)
    f = r.fields
    assert f["general.type"].contents() == "imatrix"
    assert f["imatrix.datasets"].contents() == ["tiny.txt"], f["imatrix.datasets"].contents()
    assert f["imatrix.chunk_count"].types[0] == GGUFValueType.UINT32
    assert f["imatrix.chunk_count"].contents() == 7 and f["imatrix.chunk_size"].contents() == 256
    t = {x.name: x for x in r.tensors}
    assert sorted(t) == ["blk.0.attn_k.weight.counts", "blk.0.attn_k.weight.in_sum2",
                         "blk.0.ffn_up_exps.weight.counts", "blk.0.ffn_up_exps.weight.in_sum2"], sorted(t)
    assert list(t["blk.0.ffn_up_exps.weight.in_sum2"].shape) == [32, 2]
    assert list(t["blk.0.ffn_up_exps.weight.counts"].shape) == [1, 2]
    assert list(t["blk.0.attn_k.weight.in_sum2"].shape) == [64]
    assert np.array_equal(np.asarray(t["blk.0.ffn_up_exps.weight.in_sum2"].data).reshape(-1),
                          np.arange(64, dtype=np.float32) * 0.5)
    assert np.array_equal(np.asarray(t["blk.0.attn_k.weight.counts"].data).reshape(-1), [1792.0])
    print("ok")
"#;

    #[test]
    fn gguf_py_reads_ours_and_we_read_theirs() {
        let Some(py) = crate::test_python::python(&["gguf", "numpy"]) else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let run = |mode: &str, path: &Path| {
            let out = std::process::Command::new(&py)
                .args(["-c", GGUF_PY, mode])
                .arg(path)
                .output()
                .expect("run python");
            assert!(
                out.status.success(),
                "gguf-py {mode} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let theirs = dir.path().join("theirs.gguf");
        run("write", &theirs);
        let m = Imatrix::read(&theirs).expect("read gguf-py's imatrix");
        assert_eq!(m.datasets, vec!["tiny.txt".to_string()]);
        assert_eq!((m.chunk_count, m.chunk_size), (7, 256));
        assert_eq!(m.entries.len(), 2);
        let experts = m.importance_for("blk.0.ffn_up_exps.weight").expect("entry");
        assert_eq!(experts[1], 0.5 / 256.0);
        assert_eq!(experts[32..], [1.0; 32], "an expert without tokens gets 1");
        assert_eq!(
            m.importance_for("blk.0.attn_k.weight"),
            Some(vec![3.0 / 1792.0; 64])
        );
        let ours = dir.path().join("ours.gguf");
        m.write_gguf(&ours).expect("write");
        run("check", &ours);
    }

    #[test]
    fn ggml_shape_drops_trailing_ones() {
        assert_eq!(ggml_shape(&[576, 1]), vec![576]);
        assert_eq!(ggml_shape(&[1, 1]), vec![1]);
        assert_eq!(ggml_shape(&[1, 8]), vec![1, 8]);
    }

    #[test]
    fn legacy_bytes_follow_the_layout() {
        let m = Imatrix {
            entries: vec![ImatrixEntry {
                name: "ab".into(),
                sums: vec![512.0, 1536.0],
                counts: vec![1024.0],
            }],
            datasets: vec!["x".into(), "d.txt".into()],
            chunk_count: 2,
            chunk_size: 512,
        };
        let got = m.legacy_bytes(Path::new("t.dat")).expect("bytes");
        let mut want = Vec::new();
        want.extend_from_slice(&1i32.to_le_bytes()); // entries
        want.extend_from_slice(&2i32.to_le_bytes()); // name length
        want.extend_from_slice(b"ab");
        want.extend_from_slice(&2i32.to_le_bytes()); // ncall = ceil(1024 / 512)
        want.extend_from_slice(&2i32.to_le_bytes()); // nval
        want.extend_from_slice(&1.0f32.to_le_bytes()); // 512 / 1024 × 2
        want.extend_from_slice(&3.0f32.to_le_bytes()); // 1536 / 1024 × 2
        want.extend_from_slice(&2i32.to_le_bytes()); // chunk count
        want.extend_from_slice(&5i32.to_le_bytes()); // last dataset
        want.extend_from_slice(b"d.txt");
        assert_eq!(got, want);
    }
}
