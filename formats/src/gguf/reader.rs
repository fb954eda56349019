//! Memory-mapped GGUF reader. Everything is validated at `open`, so the accessors
//! cannot fail or read out of bounds afterwards.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::GgufError;
use super::tensor::{align_up, checked_n_bytes, TensorInfo, MAX_DIMS};
use super::value::{Value, ValueType};
use super::{DEFAULT_ALIGNMENT, MAGIC};
use crate::ggml::GgmlType;

/// Arrays of arrays deeper than this are rejected: real files nest at most once,
/// and unbounded recursion on hostile input would overflow the stack.
const MAX_ARRAY_DEPTH: usize = 16;

/// An open GGUF file: parsed header plus a read-only mapping of the whole file.
pub struct GgufFile {
    path: PathBuf,
    map: Option<Mmap>,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let open_err = |source| GgufError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_err)?;
        let len = file.metadata().map_err(open_err)?.len();
        // mmap of an empty file fails on some systems; an empty file is simply truncated.
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the mapping is read-only; like every mmap-based reader we rely on
            // the file not being modified while it is open.
            Some(unsafe { Mmap::map(&file) }.map_err(open_err)?)
        };
        let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
        let header = parse(path, bytes)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            version: header.version,
            alignment: header.alignment,
            data_offset: header.data_offset,
            key_index: header.key_index,
            metadata: header.metadata,
            tensor_index: header.tensor_index,
            tensors: header.tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor of this file. Extents were checked at open; a
    /// `TensorInfo` from another file that does not fit gives an empty slice.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let bytes: &[u8] = self.map.as_deref().unwrap_or(&[]);
        let n = t.n_bytes();
        if n == 0 {
            return &[];
        }
        let start = self.data_offset.saturating_add(t.offset);
        let end = start.saturating_add(n);
        match (usize::try_from(start), usize::try_from(end)) {
            (Ok(s), Ok(e)) => bytes.get(s..e).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// The whole mapped file.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

// The runtime shares open files across threads.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GgufFile>();
};

struct Header {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

/// A bounds-checked little-endian cursor; every read names what it was reading
/// so a truncated file gives a useful error.
struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                offset: self.pos as u64,
                needed: n,
                file_len: self.bytes.len() as u64,
            });
        }
        let n = n as usize; // fits: n <= remaining
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Rejects a count whose items (at least `min_item` bytes each) cannot fit in the rest of the file,
    /// so a corrupt length never makes us allocate.
    fn check_count(
        &self,
        count: u64,
        min_item: u64,
        what: &dyn Fn() -> String,
    ) -> Result<usize, GgufError> {
        let fits = count
            .checked_mul(min_item)
            .is_some_and(|b| b <= self.remaining());
        if !fits {
            return Err(GgufError::AbsurdCount {
                path: self.path.to_path_buf(),
                what: what(),
                count,
                remaining: self.remaining(),
            });
        }
        Ok(count as usize) // fits: count <= remaining (min_item >= 1)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        let len = self.check_count(len, 1, &|| format!("string length of {}", what()))?;
        let raw = self.take(len as u64, what)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GgufError::BadUtf8 {
                path: self.path.to_path_buf(),
                what: what(),
            }),
        }
    }

    fn value_type(&mut self, what: &dyn Fn() -> String) -> Result<ValueType, GgufError> {
        let id = self.u32(&|| format!("value type of {}", what()))?;
        ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
            path: self.path.to_path_buf(),
            what: what(),
            id,
        })
    }

    fn value(
        &mut self,
        ty: ValueType,
        depth: usize,
        what: &dyn Fn() -> String,
    ) -> Result<Value, GgufError> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            // gguf-py and llama.cpp treat any non-zero byte as true.
            ValueType::Bool => Value::Bool(self.array::<1>(what)?[0] != 0),
            ValueType::String => Value::String(self.string(what)?),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::TooDeep {
                        path: self.path.to_path_buf(),
                        what: what(),
                        max: MAX_ARRAY_DEPTH,
                    });
                }
                let elem = self.value_type(&|| format!("array element type of {}", what()))?;
                let n = self.u64(&|| format!("array length of {}", what()))?;
                let n = self.check_count(n, min_value_size(elem), &|| {
                    format!("array length of {}", what())
                })?;
                let mut items = Vec::with_capacity(n);
                for i in 0..n {
                    items.push(self.value(elem, depth + 1, &|| format!("{}[{i}]", what()))?);
                }
                Value::Array(elem, items)
            }
        })
    }
}

/// Smallest encoding of one value of a type (used to bound counts).
fn min_value_size(ty: ValueType) -> u64 {
    match ty {
        ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
        ValueType::U16 | ValueType::I16 => 2,
        ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
        ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
        ValueType::Array => 12,
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Header, GgufError> {
    let mut c = Cursor {
        path,
        bytes,
        pos: 0,
    };
    let magic = c.u32(&|| "magic".into())?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic {
            path: path.to_path_buf(),
            found: magic,
        });
    }
    let version = c.u32(&|| "version".into())?;
    // v2 and v3 share the little-endian layout (v3 only added big-endian files,
    // which announce themselves as a byte-swapped version and land here too).
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    let n_tensors = c.u64(&|| "tensor count".into())?;
    let n_kv = c.u64(&|| "metadata count".into())?;
    // A key/value pair takes at least 13 bytes (key length, type, one byte of value).
    let n_kv = c.check_count(n_kv, 13, &|| "metadata count".into())?;

    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv);
    let mut key_index: HashMap<String, usize> = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = c.string(&|| format!("key of metadata entry {i}"))?;
        let what = || format!("metadata key {key:?}");
        let ty = c.value_type(&what)?;
        let value = c.value(ty, 0, &what)?;
        if key_index.insert(key.clone(), i).is_some() {
            return Err(GgufError::DuplicateKey {
                path: path.to_path_buf(),
                key,
            });
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if *a > 0 && a.is_power_of_two() => u64::from(*a),
        Some((key, v)) => {
            return Err(GgufError::BadMetadata {
                path: path.to_path_buf(),
                key: key.clone(),
                reason: format!(
                    "must be a non-zero power of two of type u32, found {v} ({:?})",
                    v.value_type()
                ),
            })
        }
    };

    // A tensor info takes at least 24 bytes (name length, n_dims, type, offset).
    let n_tensors = c.check_count(n_tensors, 24, &|| "tensor count".into())?;
    let mut tensors = Vec::with_capacity(n_tensors);
    let mut tensor_index: HashMap<String, usize> = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.string(&|| format!("name of tensor info {i}"))?;
        let what = || format!("tensor info {name:?}");
        let n_dims = c.u32(&what)?;
        if n_dims as usize > MAX_DIMS {
            return Err(GgufError::TooManyDims {
                path: path.to_path_buf(),
                name,
                n_dims,
            });
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            shape.push(c.u64(&what)?);
        }
        let type_id = c.u32(&what)?;
        let offset = c.u64(&what)?;
        let Some(ggml_type) = GgmlType::from_id(type_id) else {
            return Err(GgufError::UnknownGgmlType {
                path: path.to_path_buf(),
                name,
                id: type_id,
            });
        };
        if let Err(reason) = checked_n_bytes(&shape, ggml_type) {
            return Err(GgufError::BadShape {
                path: path.to_path_buf(),
                name,
                shape,
                ggml_type,
                reason,
            });
        }
        if offset % alignment != 0 {
            return Err(GgufError::Misaligned {
                path: path.to_path_buf(),
                name,
                offset,
                alignment,
            });
        }
        if tensor_index.insert(name.clone(), i).is_some() {
            return Err(GgufError::DuplicateTensor {
                path: path.to_path_buf(),
                name,
            });
        }
        tensors.push(TensorInfo {
            name,
            shape,
            ggml_type,
            offset,
        });
    }

    let file_len = bytes.len() as u64;
    let data_offset = align_up(c.pos as u64, alignment).unwrap_or(u64::MAX);
    let data_len = file_len.saturating_sub(data_offset);
    check_extents(path, &tensors, data_offset, data_len)?;
    Ok(Header {
        version,
        alignment,
        data_offset,
        metadata,
        key_index,
        tensors,
        tensor_index,
    })
}

/// Every tensor's bytes lie inside the data section and no two tensors share a byte.
fn check_extents(
    path: &Path,
    tensors: &[TensorInfo],
    data_offset: u64,
    data_len: u64,
) -> Result<(), GgufError> {
    let mut spans: Vec<(u64, u64, usize)> = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        let n = t.n_bytes();
        let end = t.offset.checked_add(n);
        match end {
            Some(end) if n == 0 || end <= data_len => {
                if n > 0 {
                    spans.push((t.offset, end, i));
                }
            }
            _ => {
                return Err(GgufError::OutOfFile {
                    path: path.to_path_buf(),
                    name: t.name.clone(),
                    start: t.offset,
                    end: end.unwrap_or(u64::MAX),
                    data_offset,
                    data_len,
                })
            }
        }
    }
    spans.sort_unstable();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(GgufError::Overlap {
                path: path.to_path_buf(),
                first: tensors[w[0].2].name.clone(),
                second: tensors[w[1].2].name.clone(),
            });
        }
    }
    Ok(())
}
