//! Where a model's weights come from: a GGUF file, a Hugging Face safetensors
//! folder (bf16 / f16 / f32, used in place from the memory map) or an AutoAWQ
//! "gemm" folder. Every source is seen the same way: GGUF tensor names and shapes
//! (ggml order, `[cols, rows]`), GGUF metadata keys, and bytes in a ggml layout.
//!
//! AWQ linears are repacked at load into Q5_0 blocks, which hold AWQ's values
//! exactly: a group's `(q - zero) * scale` is `d * (c - 16)` with `d = scale` (the
//! same f16) and `c = q - zero + 16` in 1..=31. Q5_0 needs 32-value blocks, so the
//! group size must be a multiple of 32 (AutoAWQ's are 64 or 128).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::f16;
use quern_formats::awq::AwqTensors;
use quern_formats::gguf::{GgufFile, Value};
use quern_formats::safetensors::{Dtype, SafetensorsModel, TensorEntry};
use quern_formats::GgmlType;
use quern_quant::q5_0::BlockQ5_0;

use crate::error::RuntimeError;

/// Where a tensor's bytes lie inside its [`Source`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Loc {
    /// A byte range of the GGUF memory map.
    Gguf { start: usize, len: usize },
    /// A tensor of the safetensors model, by index.
    Safetensors(usize),
    /// Bytes the loader produced (repacked AWQ), by index.
    Owned(usize),
}

/// One tensor as the model loader sees it.
#[derive(Debug, Clone)]
pub struct TensorRef {
    pub ty: GgmlType,
    /// ggml order: `[cols, rows]` for a matrix.
    pub shape: Vec<u64>,
    pub(crate) loc: Loc,
}

/// What a Hugging Face folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfKind {
    /// Plain bf16 / f16 / f32 weights.
    Plain,
    /// AutoAWQ "gemm" 4-bit linears with this group size.
    Awq { group: usize },
}

pub struct HfSource {
    path: PathBuf,
    model: SafetensorsModel,
    metadata: Vec<(String, Value)>,
    tensors: HashMap<String, TensorRef>,
    owned: Vec<Vec<u8>>,
    kind: HfKind,
}

pub enum Source {
    Gguf(GgufFile),
    Hf(HfSource),
}

impl Source {
    /// A GGUF file, or a folder holding `config.json` and safetensors.
    pub fn open(path: &Path) -> Result<Source, RuntimeError> {
        if path.is_dir() {
            HfSource::open(path).map(Source::Hf)
        } else {
            Ok(Source::Gguf(GgufFile::open(path)?))
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Source::Gguf(f) => f.path(),
            Source::Hf(h) => &h.path,
        }
    }

    /// GGUF metadata (for a folder: the keys our converter would write).
    pub fn metadata(&self) -> &[(String, Value)] {
        match self {
            Source::Gguf(f) => f.metadata(),
            Source::Hf(h) => &h.metadata,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Source::Gguf(f) => f.get(key),
            Source::Hf(h) => h.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v),
        }
    }

    /// The tensor stored under GGUF name `name`.
    pub fn tensor(&self, name: &str) -> Option<TensorRef> {
        match self {
            Source::Gguf(f) => {
                let t = f.tensor(name)?;
                let data = f.tensor_data(t);
                let start = data.as_ptr() as usize - f.bytes().as_ptr() as usize;
                Some(TensorRef {
                    ty: t.ggml_type,
                    shape: t.shape.clone(),
                    loc: Loc::Gguf {
                        start,
                        len: data.len(),
                    },
                })
            }
            Source::Hf(h) => h.tensors.get(name).cloned(),
        }
    }

    pub(crate) fn bytes(&self, loc: Loc) -> &[u8] {
        match (self, loc) {
            (Source::Gguf(f), Loc::Gguf { start, len }) => &f.bytes()[start..start + len],
            (Source::Hf(h), Loc::Safetensors(i)) => h.model.data(&h.model.tensors()[i]),
            (Source::Hf(h), Loc::Owned(i)) => &h.owned[i],
            _ => &[],
        }
    }

    /// Whether llama q/k rows are in llama.cpp's permuted order (GGUF) rather
    /// than Hugging Face's (a folder): it decides which elements rope pairs.
    pub fn qk_permuted(&self) -> bool {
        matches!(self, Source::Gguf(_))
    }

    /// "gguf", "safetensors" or "awq".
    pub fn format(&self) -> &'static str {
        match self {
            Source::Gguf(_) => "gguf",
            Source::Hf(h) => match h.kind {
                HfKind::Plain => "safetensors",
                HfKind::Awq { .. } => "awq",
            },
        }
    }

    /// The GGUF file, when the model is one.
    pub fn gguf(&self) -> Option<&GgufFile> {
        match self {
            Source::Gguf(f) => Some(f),
            Source::Hf(_) => None,
        }
    }
}

fn ggml_type_of(dtype: Dtype) -> Option<GgmlType> {
    match dtype {
        Dtype::BF16 => Some(GgmlType::Bf16),
        Dtype::F16 => Some(GgmlType::F16),
        Dtype::F32 => Some(GgmlType::F32),
        _ => None,
    }
}

impl HfSource {
    fn open(folder: &Path) -> Result<HfSource, RuntimeError> {
        let hf = quern_quant::pipeline::open_hf_model(folder, None)?;
        let path = folder.to_path_buf();
        let kind = awq_kind(&path)?;
        let bad = |what: String| RuntimeError::BadModel {
            file: path.clone(),
            what,
        };
        let mut tensors = HashMap::new();
        let mut owned = Vec::new();
        for (i, t) in hf.model.tensors().iter().enumerate() {
            let (hf_name, awq_base) = match t.name.strip_suffix(".qweight") {
                Some(base) if matches!(kind, HfKind::Awq { .. }) => {
                    (format!("{base}.weight"), Some(base))
                }
                _ => (t.name.clone(), None),
            };
            if matches!(kind, HfKind::Awq { .. })
                && (t.name.ends_with(".qzeros") || t.name.ends_with(".scales"))
            {
                continue; // read with their .qweight
            }
            let mapped = hf
                .spec
                .map_tensor(&hf_name)
                .map_err(|e| bad(e.to_string()))?;
            let Some(mapped) = mapped else { continue };
            let r = if let (Some(base), HfKind::Awq { group }) = (awq_base, kind) {
                let linear = read_awq(&hf.model, base, group).map_err(bad)?;
                let expected = &mapped.expected_shape;
                if expected != &[linear.out_features as u64, linear.in_features as u64] {
                    return Err(bad(format!(
                        "{base}: AWQ linear is {}x{}, config implies {expected:?}",
                        linear.out_features, linear.in_features
                    )));
                }
                let bytes = repack_awq_q5_0(&linear).map_err(bad)?;
                owned.push(bytes);
                TensorRef {
                    ty: GgmlType::Q5_0,
                    shape: vec![linear.in_features as u64, linear.out_features as u64],
                    loc: Loc::Owned(owned.len() - 1),
                }
            } else {
                let ty = ggml_type_of(t.dtype).ok_or_else(|| {
                    bad(format!(
                        "tensor {} has dtype {}, the runtime reads BF16, F16 and F32",
                        t.name,
                        t.dtype.name()
                    ))
                })?;
                if t.shape != mapped.expected_shape {
                    return Err(RuntimeError::BadShape {
                        file: hf.model.file_path(t).to_path_buf(),
                        tensor: t.name.clone(),
                        expected: mapped.expected_shape.clone(),
                        found: t.shape.clone(),
                    });
                }
                TensorRef {
                    ty,
                    shape: t.shape.iter().rev().copied().collect(),
                    loc: Loc::Safetensors(i),
                }
            };
            tensors.insert(mapped.gguf_name, r);
        }
        // Llama 3 rope factors: generated, as the converter does.
        for (name, shape, values) in hf.spec.extra_tensors() {
            owned.push(bytemuck::cast_slice(&values).to_vec());
            tensors.insert(
                name,
                TensorRef {
                    ty: GgmlType::F32,
                    shape,
                    loc: Loc::Owned(owned.len() - 1),
                },
            );
        }
        Ok(HfSource {
            path,
            model: hf.model,
            metadata: hf.metadata,
            tensors,
            owned,
            kind,
        })
    }
}

/// `quantization_config` of `config.json`: AWQ "gemm" 4-bit with zero points,
/// or none.
fn awq_kind(folder: &Path) -> Result<HfKind, RuntimeError> {
    let cfg = quern_formats::hf_config::HfConfig::from_folder(folder)
        .map_err(quern_quant::pipeline::ConvertError::from)?;
    let Some(q) = cfg.get("quantization_config") else {
        return Ok(HfKind::Plain);
    };
    let bad = |what: String| RuntimeError::BadModel {
        file: folder.join("config.json"),
        what: format!("quantization_config: {what}"),
    };
    let method = q.get("quant_method").and_then(|v| v.as_str()).unwrap_or("");
    if method != "awq" {
        return Err(bad(format!(
            "quant_method {method:?} is not supported (supported: awq)"
        )));
    }
    let bits = q
        .get("bits")
        .or_else(|| q.get("w_bit"))
        .and_then(|v| v.as_u64());
    let group = q
        .get("group_size")
        .or_else(|| q.get("q_group_size"))
        .and_then(|v| v.as_u64());
    let version = q.get("version").and_then(|v| v.as_str()).unwrap_or("gemm");
    let zero = q
        .get("zero_point")
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    if bits != Some(4) || !version.eq_ignore_ascii_case("gemm") || !zero {
        return Err(bad(format!(
            "bits {bits:?}, version {version:?}, zero_point {zero}: only 4-bit GEMM with zero points is supported"
        )));
    }
    match group {
        Some(g) if g > 0 && g.is_multiple_of(32) => Ok(HfKind::Awq { group: g as usize }),
        other => Err(bad(format!(
            "group_size {other:?}: the runtime needs a positive multiple of 32"
        ))),
    }
}

fn entry<'a>(model: &'a SafetensorsModel, name: &str) -> Result<&'a TensorEntry, String> {
    model
        .get(name)
        .ok_or_else(|| format!("AWQ tensor {name} is missing"))
}

fn read_awq(model: &SafetensorsModel, base: &str, group: usize) -> Result<AwqTensors, String> {
    let (qw, qz, sc) = (
        entry(model, &format!("{base}.qweight"))?,
        entry(model, &format!("{base}.qzeros"))?,
        entry(model, &format!("{base}.scales"))?,
    );
    let want = |t: &TensorEntry, dtype: Dtype| {
        if t.dtype != dtype || t.shape.len() != 2 {
            Err(format!(
                "{}: {} {:?}, expected a 2-D {} tensor",
                t.name,
                t.dtype.name(),
                t.shape,
                dtype.name()
            ))
        } else {
            Ok(())
        }
    };
    want(qw, Dtype::I32)?;
    want(qz, Dtype::I32)?;
    want(sc, Dtype::F16)?;
    let ints = |t: &TensorEntry| -> Vec<i32> {
        model
            .data(t)
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let linear = AwqTensors {
        qweight: ints(qw),
        qzeros: ints(qz),
        scales: model
            .data(sc)
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]))
            .collect(),
        in_features: qw.shape[0] as usize,
        out_features: sc.shape[1] as usize,
        group,
    };
    linear.check().map_err(|e| format!("{base}: {e}"))?;
    Ok(linear)
}

/// The linear as rows of Q5_0 blocks (`out` rows of `in / 32` blocks).
pub fn repack_awq_q5_0(t: &AwqTensors) -> Result<Vec<u8>, String> {
    if !t.group.is_multiple_of(32) {
        return Err(format!("group size {} is not a multiple of 32", t.group));
    }
    let u = t.unpack().map_err(|e| e.to_string())?;
    let (n_in, n_out) = (t.in_features, t.out_features);
    let mut out = Vec::with_capacity(n_out * n_in / 32 * std::mem::size_of::<BlockQ5_0>());
    for o in 0..n_out {
        for b in 0..n_in / 32 {
            let g = (b * 32 / t.group) * n_out + o;
            let zero = u.zeros[g] as i32;
            let codes: [u8; 32] =
                std::array::from_fn(|j| (u.q[o * n_in + b * 32 + j] as i32 - zero + 16) as u8);
            let block = BlockQ5_0::from_codes(t.scales[g].to_bits().to_le_bytes(), &codes);
            out.extend_from_slice(bytemuck::bytes_of(&block));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (the tests need no crate for it).
    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    #[test]
    fn awq_repack_is_exact() {
        let (n_in, n_out) = (256, 24);
        for group in [32, 64, 128] {
            let mut seed = group as u64;
            let q: Vec<u8> = (0..n_in * n_out)
                .map(|_| (lcg(&mut seed) % 16) as u8)
                .collect();
            let n_groups = n_in / group;
            let zeros: Vec<u8> = (0..n_groups * n_out)
                .map(|_| (lcg(&mut seed) % 16) as u8)
                .collect();
            let scales: Vec<f32> = (0..n_groups * n_out)
                .map(|_| 1e-3 + (lcg(&mut seed) % 1000) as f32 * 1e-4)
                .collect();
            let t = quern_formats::awq::pack_linear(&q, &zeros, &scales, n_in, n_out, group)
                .expect("pack");
            let want = quern_formats::awq::dequantize_linear(&t).expect("dequantize");
            let bytes = repack_awq_q5_0(&t).expect("repack");
            let mut got = vec![0f32; n_in * n_out];
            quern_quant::dequantize_row(GgmlType::Q5_0, &bytes, &mut got).expect("q5_0");
            assert_eq!(got, want, "group {group}");
        }
        let odd = quern_formats::awq::pack_linear(&[0; 16 * 8], &[0; 8], &[1.0; 8], 16, 8, 16)
            .expect("pack");
        assert!(repack_awq_q5_0(&odd).is_err());
    }
}
