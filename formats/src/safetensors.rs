//! Memory-mapped safetensors models: one file, a folder of shards with
//! `model.safetensors.index.json`, or a folder of `*.safetensors` files.
//!
//! Every header is validated here (not by the `safetensors` crate) so errors name
//! the file and tensor concerned: header inside the file, valid JSON, offsets inside
//! the data section, no overlaps, shape × dtype size = byte length.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Element types of safetensors files (the whole-byte ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U64,
    U32,
    U16,
    U8,
    Bool,
    F8E4M3,
    F8E5M2,
    F8E8M0,
}

impl Dtype {
    const ALL: [(Dtype, &'static str, usize); 16] = [
        (Dtype::F64, "F64", 8),
        (Dtype::F32, "F32", 4),
        (Dtype::F16, "F16", 2),
        (Dtype::BF16, "BF16", 2),
        (Dtype::I64, "I64", 8),
        (Dtype::I32, "I32", 4),
        (Dtype::I16, "I16", 2),
        (Dtype::I8, "I8", 1),
        (Dtype::U64, "U64", 8),
        (Dtype::U32, "U32", 4),
        (Dtype::U16, "U16", 2),
        (Dtype::U8, "U8", 1),
        (Dtype::Bool, "BOOL", 1),
        (Dtype::F8E4M3, "F8_E4M3", 1),
        (Dtype::F8E5M2, "F8_E5M2", 1),
        (Dtype::F8E8M0, "F8_E8M0", 1),
    ];

    fn row(self) -> (Dtype, &'static str, usize) {
        // Every variant is in ALL; the fallback is unreachable but keeps this panic-free.
        Self::ALL
            .iter()
            .copied()
            .find(|r| r.0 == self)
            .unwrap_or((self, "?", 1))
    }

    pub fn size_in_bytes(self) -> usize {
        self.row().2
    }

    /// The name used in safetensors headers (`BF16`, `F8_E4M3`, …).
    pub fn name(self) -> &'static str {
        self.row().1
    }

    pub fn from_name(name: &str) -> Option<Dtype> {
        Self::ALL.iter().find(|r| r.1 == name).map(|r| r.0)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{dir}: no model.safetensors.index.json, model.safetensors or *.safetensors files")]
    NoFiles { dir: PathBuf },
    #[error("{path}: file is {file_len} bytes, too short for the 8-byte header length")]
    TooShort { path: PathBuf, file_len: u64 },
    #[error("{path}: header length {header_len} does not fit in the {file_len}-byte file")]
    HeaderTooLong {
        path: PathBuf,
        header_len: u64,
        file_len: u64,
    },
    #[error("{path}: header is not valid JSON: {source}")]
    BadJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: header key {key:?} appears more than once")]
    DuplicateKey { path: PathBuf, key: String },
    #[error("{path}: tensor {name:?}: {reason}")]
    BadEntry {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("{path}: tensor {name:?}: unknown dtype {dtype:?}")]
    UnknownDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: tensor {name:?}: shape {shape:?} of {dtype} needs {expected} bytes, but data_offsets span {got}")]
    SizeMismatch {
        path: PathBuf,
        name: String,
        shape: Vec<u64>,
        dtype: Dtype,
        /// `u64::MAX` when the size overflows.
        expected: u64,
        got: u64,
    },
    #[error("{path}: tensor {name:?}: data ends at byte {end} of the data section, which is only {data_len} bytes; is the file truncated?")]
    OutOfFile {
        path: PathBuf,
        name: String,
        end: u64,
        data_len: u64,
    },
    #[error("{path}: tensors {first:?} and {second:?} overlap")]
    Overlap {
        path: PathBuf,
        first: String,
        second: String,
    },
    #[error("{index}: not a valid index: {reason}")]
    BadIndex { index: PathBuf, reason: String },
    #[error("{index}: tensor {name:?} is mapped to shard {shard:?}, which does not exist")]
    MissingShard {
        index: PathBuf,
        name: String,
        shard: PathBuf,
    },
    #[error("{index}: tensor {name:?} is mapped to {shard}, which does not contain it")]
    MissingTensor {
        index: PathBuf,
        name: String,
        shard: PathBuf,
    },
    #[error("tensor {name:?} is in both {first} and {second}")]
    DuplicateTensor {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
}

/// One tensor of a (possibly sharded) model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: Dtype,
    /// Row-major, as in the file.
    pub shape: Vec<u64>,
    /// Index into [`SafetensorsModel::files`].
    pub file: usize,
    /// Absolute byte offsets in that file.
    pub start: usize,
    pub end: usize,
}

impl TensorEntry {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    pub fn n_bytes(&self) -> usize {
        self.end - self.start
    }
}

/// A safetensors model: every file memory-mapped, every tensor validated.
pub struct SafetensorsModel {
    files: Vec<PathBuf>,
    maps: Vec<Option<Mmap>>,
    metadata: Vec<BTreeMap<String, String>>,
    tensors: Vec<TensorEntry>,
}

impl fmt::Debug for SafetensorsModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetensorsModel")
            .field("files", &self.files)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

// The runtime shares open models across threads.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SafetensorsModel>();
};

pub const INDEX_NAME: &str = "model.safetensors.index.json";
pub const SINGLE_NAME: &str = "model.safetensors";

impl SafetensorsModel {
    /// `path` is a folder (uses `model.safetensors.index.json` if present, else
    /// `model.safetensors`, else every `*.safetensors` in it, sorted) or a single `.safetensors` file.
    pub fn open(path: &Path) -> Result<Self, SafetensorsError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| SafetensorsError::Io { path: p, source }
        };
        let meta = std::fs::metadata(path).map_err(io(path))?;
        if !meta.is_dir() {
            return Self::from_files(vec![path.to_path_buf()], None);
        }
        let index = path.join(INDEX_NAME);
        if index.is_file() {
            return Self::open_index(path, &index);
        }
        let single = path.join(SINGLE_NAME);
        if single.is_file() {
            return Self::from_files(vec![single], None);
        }
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(io(path))? {
            let p = entry.map_err(io(path))?.path();
            if p.extension().is_some_and(|e| e == "safetensors") && p.is_file() {
                files.push(p);
            }
        }
        if files.is_empty() {
            return Err(SafetensorsError::NoFiles {
                dir: path.to_path_buf(),
            });
        }
        files.sort();
        Self::from_files(files, None)
    }

    fn open_index(dir: &Path, index: &Path) -> Result<Self, SafetensorsError> {
        #[derive(Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let text = std::fs::read(index).map_err(|source| SafetensorsError::Io {
            path: index.to_path_buf(),
            source,
        })?;
        let parsed: Index =
            serde_json::from_slice(&text).map_err(|e| SafetensorsError::BadIndex {
                index: index.to_path_buf(),
                reason: e.to_string(),
            })?;
        // Shards in first-seen (sorted) order; names are plain file names in the folder.
        let mut shard_names: Vec<&str> = parsed.weight_map.values().map(String::as_str).collect();
        shard_names.sort_unstable();
        shard_names.dedup();
        if shard_names.is_empty() {
            return Err(SafetensorsError::BadIndex {
                index: index.to_path_buf(),
                reason: "weight_map is empty".into(),
            });
        }
        let mut files = Vec::with_capacity(shard_names.len());
        for shard in &shard_names {
            let p = Path::new(shard);
            let plain = p.components().count() == 1 && p.file_name().is_some();
            let first_tensor = || {
                parsed
                    .weight_map
                    .iter()
                    .find(|(_, s)| s == shard)
                    .map(|(n, _)| n.clone())
                    .unwrap_or_default()
            };
            if !plain {
                return Err(SafetensorsError::BadIndex {
                    index: index.to_path_buf(),
                    reason: format!(
                        "shard name {shard:?} (for tensor {:?}) is not a plain file name",
                        first_tensor()
                    ),
                });
            }
            let full = dir.join(p);
            if !full.is_file() {
                return Err(SafetensorsError::MissingShard {
                    index: index.to_path_buf(),
                    name: first_tensor(),
                    shard: full,
                });
            }
            files.push(full);
        }
        let expected: Vec<(String, usize)> = parsed
            .weight_map
            .iter()
            .map(|(name, shard)| {
                let i = shard_names.binary_search(&shard.as_str()).unwrap_or(0);
                (name.clone(), i)
            })
            .collect();
        Self::from_files(files, Some((index, expected)))
    }

    fn from_files(
        files: Vec<PathBuf>,
        index: Option<(&Path, Vec<(String, usize)>)>,
    ) -> Result<Self, SafetensorsError> {
        let mut maps = Vec::with_capacity(files.len());
        let mut metadata = Vec::with_capacity(files.len());
        let mut tensors = Vec::new();
        for (i, path) in files.iter().enumerate() {
            let map = open_file(path)?;
            let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
            let (meta, entries) = parse_header(path, bytes, i)?;
            maps.push(map);
            metadata.push(meta);
            tensors.extend(entries);
        }
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        for w in tensors.windows(2) {
            if w[0].name == w[1].name {
                return Err(SafetensorsError::DuplicateTensor {
                    name: w[0].name.clone(),
                    first: files[w[0].file].clone(),
                    second: files[w[1].file].clone(),
                });
            }
        }
        let model = SafetensorsModel {
            files,
            maps,
            metadata,
            tensors,
        };
        if let Some((index, expected)) = index {
            for (name, shard) in expected {
                let found = model.get(&name).map(|t| t.file);
                if found != Some(shard) {
                    return Err(SafetensorsError::MissingTensor {
                        index: index.to_path_buf(),
                        name,
                        shard: model.files[shard].clone(),
                    });
                }
            }
        }
        Ok(model)
    }

    /// All tensors, sorted by name.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.tensors[i])
    }

    /// The tensor's bytes (little-endian, row-major). Extents were checked at open;
    /// an entry from another model that does not fit gives an empty slice.
    pub fn data(&self, t: &TensorEntry) -> &[u8] {
        self.maps
            .get(t.file)
            .and_then(|m| m.as_deref())
            .and_then(|b| b.get(t.start..t.end))
            .unwrap_or(&[])
    }

    pub fn file_path(&self, t: &TensorEntry) -> &Path {
        self.files
            .get(t.file)
            .map(PathBuf::as_path)
            .unwrap_or(Path::new(""))
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The `__metadata__` map of one file (empty when it has none).
    pub fn file_metadata(&self, file: usize) -> Option<&BTreeMap<String, String>> {
        self.metadata.get(file)
    }

    /// Sum of tensor data bytes.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.n_bytes() as u64).sum()
    }
}

fn open_file(path: &Path) -> Result<Option<Mmap>, SafetensorsError> {
    let io = |source| SafetensorsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: read-only mapping; we rely on the file not changing while the model is open.
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    Ok(Some(map))
}

/// Header keys in file order, keeping duplicates (serde_json's maps would silently keep the last).
struct RawHeader(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeader;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<RawHeader, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = m.next_entry::<String, serde_json::Value>()? {
                    v.push((k, val));
                }
                Ok(RawHeader(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

type Parsed = (BTreeMap<String, String>, Vec<TensorEntry>);

fn parse_header(path: &Path, bytes: &[u8], file: usize) -> Result<Parsed, SafetensorsError> {
    let file_len = bytes.len() as u64;
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(SafetensorsError::TooShort {
            path: path.to_path_buf(),
            file_len,
        });
    };
    let mut n = [0u8; 8];
    n.copy_from_slice(len_bytes);
    let header_len = u64::from_le_bytes(n);
    if header_len > file_len - 8 {
        return Err(SafetensorsError::HeaderTooLong {
            path: path.to_path_buf(),
            header_len,
            file_len,
        });
    }
    let data_start = 8 + header_len as usize; // fits: <= file_len
    let json = &bytes[8..data_start];
    let raw: RawHeader =
        serde_json::from_slice(json).map_err(|source| SafetensorsError::BadJson {
            path: path.to_path_buf(),
            source,
        })?;
    let data_len = file_len - data_start as u64;

    let mut metadata = BTreeMap::new();
    let mut seen = HashSet::with_capacity(raw.0.len());
    let mut entries = Vec::with_capacity(raw.0.len());
    for (name, value) in raw.0 {
        if !seen.insert(name.clone()) {
            return Err(SafetensorsError::DuplicateKey {
                path: path.to_path_buf(),
                key: name,
            });
        }
        let bad = |reason: String| SafetensorsError::BadEntry {
            path: path.to_path_buf(),
            name: name.clone(),
            reason,
        };
        if name == "__metadata__" {
            metadata = serde_json::from_value(value)
                .map_err(|e| bad(format!("not a map of strings: {e}")))?;
            continue;
        }
        let e: RawEntry = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        let Some(dtype) = Dtype::from_name(&e.dtype) else {
            return Err(SafetensorsError::UnknownDtype {
                path: path.to_path_buf(),
                name,
                dtype: e.dtype,
            });
        };
        let [begin, end] = e.data_offsets;
        if begin > end {
            return Err(bad(format!("data_offsets [{begin}, {end}] run backwards")));
        }
        if end > data_len {
            return Err(SafetensorsError::OutOfFile {
                path: path.to_path_buf(),
                name,
                end,
                data_len,
            });
        }
        let expected = e
            .shape
            .iter()
            .try_fold(dtype.size_in_bytes() as u64, |acc, &d| acc.checked_mul(d))
            .unwrap_or(u64::MAX);
        if expected != end - begin {
            return Err(SafetensorsError::SizeMismatch {
                path: path.to_path_buf(),
                name,
                shape: e.shape,
                dtype,
                expected,
                got: end - begin,
            });
        }
        entries.push(TensorEntry {
            name,
            dtype,
            shape: e.shape,
            file,
            // fit in usize: bounded by the mapped file's length
            start: data_start + begin as usize,
            end: data_start + end as usize,
        });
    }

    let mut spans: Vec<(usize, usize, usize)> = entries
        .iter()
        .enumerate()
        .filter(|(_, t)| t.end > t.start)
        .map(|(i, t)| (t.start, t.end, i))
        .collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(SafetensorsError::Overlap {
                path: path.to_path_buf(),
                first: entries[w[0].2].name.clone(),
                second: entries[w[1].2].name.clone(),
            });
        }
    }
    Ok((metadata, entries))
}
