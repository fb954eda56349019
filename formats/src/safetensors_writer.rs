//! A streaming safetensors writer: the header (all tensor extents) first, then
//! tensor data in header order, so no more than one tensor is held at a time.

use std::io::Write;

use serde_json::{json, Map};

use crate::safetensors::Dtype;

#[derive(Debug, thiserror::Error)]
pub enum SafetensorsWriteError {
    #[error("safetensors output: {0}")]
    Io(#[from] std::io::Error),
    #[error("safetensors output: tensor {tensor} written out of order (expected {expected})")]
    Order { tensor: String, expected: String },
    #[error("safetensors output: tensor {tensor} has {found} bytes, its shape needs {expected}")]
    Length {
        tensor: String,
        expected: u64,
        found: u64,
    },
    #[error("safetensors output: tensor {0} was never written")]
    Missing(String),
}

/// One tensor of the file to be.
#[derive(Debug, Clone)]
pub struct StTensorSpec {
    pub name: String,
    pub dtype: Dtype,
    /// Row-major, as safetensors stores it.
    pub shape: Vec<u64>,
}

impl StTensorSpec {
    pub fn n_bytes(&self) -> u64 {
        self.shape.iter().product::<u64>() * self.dtype.size_in_bytes() as u64
    }
}

pub struct SafetensorsWriter<W: Write> {
    out: W,
    specs: Vec<StTensorSpec>,
    next: usize,
}

impl<W: Write> SafetensorsWriter<W> {
    /// Writes the header; tensors are laid out in the order given.
    pub fn new(
        mut out: W,
        specs: Vec<StTensorSpec>,
        metadata: &[(String, String)],
    ) -> Result<Self, SafetensorsWriteError> {
        let mut header = Map::new();
        if !metadata.is_empty() {
            let m: Map<String, serde_json::Value> = metadata
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            header.insert("__metadata__".into(), serde_json::Value::Object(m));
        }
        let mut offset = 0u64;
        for s in &specs {
            let end = offset + s.n_bytes();
            header.insert(
                s.name.clone(),
                json!({"dtype": s.dtype.to_string(), "shape": s.shape, "data_offsets": [offset, end]}),
            );
            offset = end;
        }
        let mut text = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
        // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
        while text.len() % 8 != 0 {
            text.push(b' ');
        }
        out.write_all(&(text.len() as u64).to_le_bytes())?;
        out.write_all(&text)?;
        Ok(SafetensorsWriter {
            out,
            specs,
            next: 0,
        })
    }

    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<(), SafetensorsWriteError> {
        let Some(spec) = self.specs.get(self.next) else {
            return Err(SafetensorsWriteError::Order {
                tensor: name.into(),
                expected: "no more tensors".into(),
            });
        };
        if spec.name != name {
            return Err(SafetensorsWriteError::Order {
                tensor: name.into(),
                expected: spec.name.clone(),
            });
        }
        if spec.n_bytes() != data.len() as u64 {
            return Err(SafetensorsWriteError::Length {
                tensor: name.into(),
                expected: spec.n_bytes(),
                found: data.len() as u64,
            });
        }
        self.out.write_all(data)?;
        self.next += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<W, SafetensorsWriteError> {
        if let Some(s) = self.specs.get(self.next) {
            return Err(SafetensorsWriteError::Missing(s.name.clone()));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safetensors::SafetensorsModel;

    #[test]
    fn round_trips_through_our_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let specs = vec![
            StTensorSpec {
                name: "b.qweight".into(),
                dtype: Dtype::I32,
                shape: vec![2, 3],
            },
            StTensorSpec {
                name: "a.scales".into(),
                dtype: Dtype::F16,
                shape: vec![5],
            },
        ];
        let mut w = SafetensorsWriter::new(
            std::fs::File::create(&path).unwrap(),
            specs,
            &[("format".into(), "pt".into())],
        )
        .unwrap();
        let q: Vec<u8> = (0..24).collect();
        w.write_tensor("b.qweight", &q).unwrap();
        assert!(matches!(
            w.write_tensor("a.scales", &[0; 9]),
            Err(SafetensorsWriteError::Length { .. })
        ));
        w.write_tensor("a.scales", &[7; 10]).unwrap();
        w.finish().unwrap();
        let m = SafetensorsModel::open(&path).unwrap();
        let t = m.get("b.qweight").unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(m.data(t), &q[..]);
        assert_eq!(m.data(m.get("a.scales").unwrap()), &[7u8; 10][..]);
    }

    #[test]
    fn refuses_out_of_order_and_missing_tensors() {
        let specs = vec![
            StTensorSpec {
                name: "x".into(),
                dtype: Dtype::F32,
                shape: vec![1],
            },
            StTensorSpec {
                name: "y".into(),
                dtype: Dtype::F32,
                shape: vec![1],
            },
        ];
        let mut w = SafetensorsWriter::new(Vec::new(), specs.clone(), &[]).unwrap();
        assert!(matches!(
            w.write_tensor("y", &[0; 4]),
            Err(SafetensorsWriteError::Order { .. })
        ));
        w.write_tensor("x", &[0; 4]).unwrap();
        assert!(matches!(w.finish(), Err(SafetensorsWriteError::Missing(n)) if n == "y"));
    }
}
