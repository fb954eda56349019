//! Streaming GGUF v3 writer: the header (metadata and tensor infos with their
//! offsets) is written up front from the specs, then each tensor's data in order.
//! Tensor data is never held beyond the slice passed in.

use std::collections::HashSet;
use std::io::Write;

use super::error::GgufError;
use super::tensor::{align_up, checked_n_bytes, TensorSpec, MAX_DIMS, MAX_TENSOR_NAME_LEN};
use super::value::Value;
use super::{DEFAULT_ALIGNMENT, MAGIC, VERSION};

pub struct Writer<W: Write> {
    out: W,
    alignment: u64,
    /// (name, byte size) of every tensor, in the order data must arrive.
    tensors: Vec<(String, u64)>,
    next: usize,
    /// Bytes written so far (for padding).
    pos: u64,
    data_offset: u64,
}

impl<W: Write> Writer<W> {
    /// Writes header, all metadata and all tensor infos (offsets computed from the specs, aligned),
    /// then padding up to the data section.
    /// Alignment = `general.alignment` (u32) if present in `metadata`, else 32.
    ///
    /// Arrays of arrays are valid GGUF and are written, but llama.cpp's loader (as of
    /// llama-cpp-python 0.3.36) rejects files that contain them.
    pub fn new(
        mut out: W,
        metadata: &[(String, Value)],
        tensors: &[TensorSpec],
    ) -> Result<Self, GgufError> {
        let alignment = alignment_of(metadata)?;
        let mut keys = HashSet::with_capacity(metadata.len());
        for (key, value) in metadata {
            if !keys.insert(key.as_str()) {
                return Err(GgufError::InvalidMetadata {
                    key: key.clone(),
                    reason: "appears more than once".into(),
                });
            }
            check_value(key, value)?;
        }

        // The header is built in memory (it is small next to the data) so any `W` gets one large write.
        let mut h = Vec::with_capacity(4096);
        h.extend_from_slice(&MAGIC.to_le_bytes());
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            put_string(&mut h, key);
            h.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            put_value(&mut h, value);
        }

        let mut names = HashSet::with_capacity(tensors.len());
        let mut order = Vec::with_capacity(tensors.len());
        let mut offset = 0u64;
        for t in tensors {
            let invalid = |reason: String| GgufError::InvalidTensor {
                name: t.name.clone(),
                reason,
            };
            if !names.insert(t.name.as_str()) {
                return Err(invalid("appears more than once".into()));
            }
            if t.name.len() > MAX_TENSOR_NAME_LEN {
                return Err(invalid(format!(
                    "name is {} bytes; llama.cpp allows at most {MAX_TENSOR_NAME_LEN}",
                    t.name.len()
                )));
            }
            if t.shape.len() > MAX_DIMS {
                return Err(invalid(format!(
                    "{} dimensions (at most {MAX_DIMS})",
                    t.shape.len()
                )));
            }
            let n_bytes = checked_n_bytes(&t.shape, t.ggml_type).map_err(|r| {
                invalid(format!(
                    "shape {:?} does not fit type {} (block size {}): {r}",
                    t.shape,
                    t.ggml_type,
                    t.ggml_type.block_size()
                ))
            })?;
            put_string(&mut h, &t.name);
            h.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in &t.shape {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
            order.push((t.name.clone(), n_bytes));
            offset = offset
                .checked_add(n_bytes)
                .and_then(|o| align_up(o, alignment))
                .ok_or_else(|| invalid("data section size overflows u64".into()))?;
        }
        let data_offset = align_up(h.len() as u64, alignment).unwrap_or(u64::MAX);
        h.resize(data_offset as usize, 0);
        out.write_all(&h)?;
        Ok(Writer {
            out,
            alignment,
            tensors: order,
            next: 0,
            pos: data_offset,
            data_offset,
        })
    }

    /// Tensor data must come in the order of the specs; `data.len()` must equal the spec's byte size.
    /// Pads to alignment after.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<(), GgufError> {
        let Some((expected, n_bytes)) = self.tensors.get(self.next) else {
            return Err(GgufError::OutOfOrder {
                expected: "no more tensors (all declared tensors were written)".into(),
                got: name.to_string(),
            });
        };
        if expected != name {
            return Err(GgufError::OutOfOrder {
                expected: format!("{expected:?}"),
                got: name.to_string(),
            });
        }
        if data.len() as u64 != *n_bytes {
            return Err(GgufError::WrongDataSize {
                name: name.to_string(),
                expected: *n_bytes,
                got: data.len() as u64,
            });
        }
        self.out.write_all(data)?;
        self.pos += *n_bytes;
        self.pad()?;
        self.next += 1;
        Ok(())
    }

    /// Errors (naming the first missing tensor) if not every tensor was written;
    /// flushes and returns the inner writer.
    pub fn finish(mut self) -> Result<W, GgufError> {
        if let Some((name, _)) = self.tensors.get(self.next) {
            return Err(GgufError::MissingTensor { name: name.clone() });
        }
        self.out.flush()?;
        Ok(self.out)
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Total bytes the finished file will have.
    pub fn file_len(&self) -> u64 {
        self.tensors.iter().fold(self.data_offset, |acc, (_, n)| {
            align_up(acc + n, self.alignment).unwrap_or(u64::MAX)
        })
    }

    fn pad(&mut self) -> Result<(), GgufError> {
        const ZEROS: [u8; 256] = [0; 256];
        let target = align_up(self.pos, self.alignment).unwrap_or(self.pos);
        let mut left = target - self.pos;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64);
            self.out.write_all(&ZEROS[..n as usize])?;
            left -= n;
        }
        self.pos = target;
        Ok(())
    }
}

fn alignment_of(metadata: &[(String, Value)]) -> Result<u64, GgufError> {
    match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some((_, Value::U32(a))) if *a > 0 && a.is_power_of_two() => Ok(u64::from(*a)),
        Some((key, v)) => Err(GgufError::InvalidMetadata {
            key: key.clone(),
            reason: format!("must be a non-zero power of two of type u32, found {v}"),
        }),
    }
}

/// Arrays must be homogeneous: a mismatched element would make the file unreadable.
fn check_value(key: &str, value: &Value) -> Result<(), GgufError> {
    if let Value::Array(elem, items) = value {
        for (i, item) in items.iter().enumerate() {
            if item.value_type() != *elem {
                return Err(GgufError::InvalidMetadata {
                    key: key.to_string(),
                    reason: format!(
                        "array of {elem:?} has an element {i} of type {:?}",
                        item.value_type()
                    ),
                });
            }
            check_value(key, item)?;
        }
    }
    Ok(())
}

fn put_string(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

fn put_value(h: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => h.push(*v),
        Value::I8(v) => h.push(*v as u8),
        Value::U16(v) => h.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => h.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => h.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => h.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => h.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => h.push(u8::from(*v)),
        Value::String(s) => put_string(h, s),
        Value::U64(v) => h.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => h.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => h.extend_from_slice(&v.to_le_bytes()),
        Value::Array(elem, items) => {
            h.extend_from_slice(&(*elem as u32).to_le_bytes());
            h.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(h, item);
            }
        }
    }
}
