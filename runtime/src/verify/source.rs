//! The tensors of a model file or folder, named and ordered as in GGUF, so that
//! any two sources can be compared tensor by tensor.
//!
//! A GGUF file is read as it is. A Hugging Face folder (plain safetensors, or an
//! AutoAWQ GEMM folder) goes through the architecture table: each tensor gets its
//! GGUF name, and the llama q/k projections are permuted into llama.cpp's row
//! order (the permutation only reorders rows, so no statistic depends on it,
//! but both sides must agree row for row). AWQ linears (`L.qweight`, `L.qzeros`,
//! `L.scales`) are dequantised into `L.weight`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use quern_formats::arch::{permute_qk_rows, Arch, ModelSpec};
use quern_formats::awq::{dequantize_linear, AwqTensors};
use quern_formats::gguf::GgufFile;
use quern_formats::hf_config::HfConfig;
use quern_formats::safetensors::{Dtype, SafetensorsModel, TensorEntry};
use rayon::prelude::*;

use super::error::VerifyError;

/// What kind of thing a path holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gguf,
    Awq,
    Safetensors,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Gguf => "gguf",
            Format::Awq => "awq",
            Format::Safetensors => "safetensors",
        }
    }
}

/// Where a tensor's values come from.
#[derive(Debug, Clone)]
enum Loc {
    Gguf(usize),
    /// A safetensors tensor, permuted with this many heads when `Some`.
    Plain(usize, Option<usize>),
    Awq {
        qweight: usize,
        qzeros: usize,
        scales: usize,
        group: usize,
        permute: Option<usize>,
    },
}

/// One tensor of a source.
#[derive(Debug, Clone)]
pub struct TensorMeta {
    /// The GGUF name, the key both sides are matched on.
    pub key: String,
    /// The name in its own file (for AWQ, the linear's `…qweight`).
    pub name: String,
    /// Row-major (Hugging Face orientation): `[rows, cols]`, or `[n]`.
    pub shape: Vec<u64>,
    /// The storage type: a ggml type name, a safetensors dtype, or `AWQ4_G<group>`.
    pub storage: String,
    /// Bytes it takes in the file (for AWQ: qweight, qzeros and scales).
    pub bytes: u64,
    loc: Loc,
}

impl TensorMeta {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

enum Inner {
    Gguf(GgufFile),
    Hf(SafetensorsModel),
}

/// An opened model whose tensors can be listed and expanded to f32.
pub struct TensorSource {
    path: PathBuf,
    format: Format,
    arch: Arch,
    inner: Inner,
    tensors: Vec<TensorMeta>,
    by_key: HashMap<String, usize>,
    /// Tensors that have no GGUF name (kept for the report).
    unmapped: Vec<String>,
}

/// Whether `path` starts with the GGUF magic.
fn is_gguf_file(path: &Path) -> Result<bool, VerifyError> {
    use std::io::Read;
    let io = |source| VerifyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut magic = [0u8; 4];
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"GGUF"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(io(e)),
    }
}

fn has_safetensors(dir: &Path) -> Result<bool, VerifyError> {
    let rd = std::fs::read_dir(dir).map_err(|source| VerifyError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".safetensors") || name == "model.safetensors.index.json" {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The format of `path`: a GGUF file, or a folder with `config.json` and
/// safetensors weights (AWQ when its `quantization_config` says so).
pub fn detect(path: &Path) -> Result<Format, VerifyError> {
    let meta = std::fs::metadata(path).map_err(|source| VerifyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_file() {
        return if is_gguf_file(path)? {
            Ok(Format::Gguf)
        } else {
            Err(VerifyError::UnknownFormat {
                path: path.to_path_buf(),
            })
        };
    }
    let cfg = HfConfig::from_folder(path)?;
    if !has_safetensors(path)? {
        return Err(VerifyError::NoWeights {
            path: path.to_path_buf(),
        });
    }
    let awq = cfg
        .raw()
        .get("quantization_config")
        .and_then(|q| q.get("quant_method"))
        .and_then(|m| m.as_str())
        == Some("awq");
    Ok(if awq {
        Format::Awq
    } else {
        Format::Safetensors
    })
}

impl TensorSource {
    pub fn open(path: &Path) -> Result<TensorSource, VerifyError> {
        match detect(path)? {
            Format::Gguf => Self::open_gguf(path),
            f => Self::open_hf(path, f),
        }
    }

    fn open_gguf(path: &Path) -> Result<TensorSource, VerifyError> {
        let file = GgufFile::open(path)?;
        let arch_name = file
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("(none)")
            .to_string();
        let arch = Arch::from_gguf_name(&arch_name).ok_or(VerifyError::UnsupportedArch {
            path: path.to_path_buf(),
            arch: arch_name,
        })?;
        let tensors = file
            .tensors()
            .iter()
            .enumerate()
            .map(|(i, t)| TensorMeta {
                key: t.name.clone(),
                name: t.name.clone(),
                // ggml lists the row length first.
                shape: t.shape.iter().rev().copied().collect(),
                storage: t.ggml_type.name().to_string(),
                bytes: t.n_bytes(),
                loc: Loc::Gguf(i),
            })
            .collect();
        Ok(Self::build(
            path,
            Format::Gguf,
            arch,
            Inner::Gguf(file),
            tensors,
            Vec::new(),
        ))
    }

    fn open_hf(path: &Path, format: Format) -> Result<TensorSource, VerifyError> {
        let cfg = HfConfig::from_folder(path)?;
        let spec = ModelSpec::from_config(&cfg)?;
        let st = SafetensorsModel::open(path)?;
        let index: HashMap<&str, usize> = st
            .tensors()
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        let mut tensors = Vec::new();
        let mut unmapped = Vec::new();
        for (i, t) in st.tensors().iter().enumerate() {
            if format == Format::Awq {
                if t.name.ends_with(".qzeros") || t.name.ends_with(".scales") {
                    continue;
                }
                if let Some(base) = t.name.strip_suffix(".qweight") {
                    tensors.push(awq_meta(path, &st, &index, &spec, base, i)?);
                    continue;
                }
            }
            match spec.map_tensor(&t.name) {
                Ok(Some(m)) => tensors.push(TensorMeta {
                    key: m.gguf_name,
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    storage: t.dtype.name().to_string(),
                    bytes: t.n_bytes() as u64,
                    loc: Loc::Plain(i, m.permute_heads),
                }),
                Ok(None) => {}
                Err(_) => unmapped.push(t.name.clone()),
            }
        }
        Ok(Self::build(
            path,
            format,
            spec.arch,
            Inner::Hf(st),
            tensors,
            unmapped,
        ))
    }

    fn build(
        path: &Path,
        format: Format,
        arch: Arch,
        inner: Inner,
        tensors: Vec<TensorMeta>,
        unmapped: Vec<String>,
    ) -> TensorSource {
        let by_key = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.key.clone(), i))
            .collect();
        TensorSource {
            path: path.to_path_buf(),
            format,
            arch,
            inner,
            tensors,
            by_key,
            unmapped,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    pub fn tensors(&self) -> &[TensorMeta] {
        &self.tensors
    }

    pub fn get(&self, key: &str) -> Option<&TensorMeta> {
        self.by_key.get(key).map(|&i| &self.tensors[i])
    }

    /// Names in the files that map to no GGUF tensor.
    pub fn unmapped(&self) -> &[String] {
        &self.unmapped
    }

    fn bad(&self, tensor: &str, what: String) -> VerifyError {
        VerifyError::BadTensor {
            path: self.path.clone(),
            tensor: tensor.to_string(),
            what,
        }
    }

    /// The tensor's values as f32, row-major in GGUF row order.
    pub fn load(&self, t: &TensorMeta) -> Result<Vec<f32>, VerifyError> {
        match (&self.inner, &t.loc) {
            (Inner::Gguf(file), Loc::Gguf(i)) => self.load_gguf(file, *i, t),
            (Inner::Hf(st), Loc::Plain(i, permute)) => {
                let e = &st.tensors()[*i];
                let mut out = vec![0f32; e.n_elements() as usize];
                quern_formats::dtype::to_f32(e.dtype, st.data(e), &mut out).map_err(|source| {
                    VerifyError::Dtype {
                        path: self.path.clone(),
                        tensor: e.name.clone(),
                        source,
                    }
                })?;
                self.permuted(out, t, *permute)
            }
            (
                Inner::Hf(st),
                Loc::Awq {
                    qweight,
                    qzeros,
                    scales,
                    group,
                    permute,
                },
            ) => {
                let ts = st.tensors();
                let (qw, qz, sc) = (&ts[*qweight], &ts[*qzeros], &ts[*scales]);
                let f16s: Vec<half::f16> = st
                    .data(sc)
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
                    .collect();
                let awq = AwqTensors {
                    qweight: i32s(st.data(qw)),
                    qzeros: i32s(st.data(qz)),
                    scales: f16s,
                    in_features: qw.shape[0] as usize,
                    out_features: qw.shape[1] as usize * 8,
                    group: *group,
                };
                let w = dequantize_linear(&awq).map_err(|source| VerifyError::Awq {
                    path: self.path.clone(),
                    tensor: t.name.clone(),
                    source,
                })?;
                self.permuted(w, t, *permute)
            }
            _ => Err(self.bad(&t.name, "tensor does not belong to this source".into())),
        }
    }

    fn load_gguf(
        &self,
        file: &GgufFile,
        i: usize,
        t: &TensorMeta,
    ) -> Result<Vec<f32>, VerifyError> {
        let info = &file.tensors()[i];
        let data = file.tensor_data(info);
        let row_len = info.row_len() as usize;
        let n_rows = info.n_rows() as usize;
        let ty = info.ggml_type;
        let row_bytes =
            quern_quant::row_bytes(ty, row_len).map_err(|source| VerifyError::Quant {
                path: self.path.clone(),
                tensor: t.name.clone(),
                source,
            })?;
        if data.len() != row_bytes * n_rows {
            return Err(self.bad(
                &t.name,
                format!(
                    "{} bytes of data for {n_rows} rows of {row_bytes}",
                    data.len()
                ),
            ));
        }
        let mut out = vec![0f32; row_len * n_rows];
        out.par_chunks_mut(row_len)
            .zip(data.par_chunks(row_bytes.max(1)))
            .try_for_each(|(dst, src)| quern_quant::dequantize_row(ty, src, dst))
            .map_err(|source| VerifyError::Quant {
                path: self.path.clone(),
                tensor: t.name.clone(),
                source,
            })?;
        Ok(out)
    }

    /// Hugging Face row order to GGUF's for the llama q/k projections.
    fn permuted(
        &self,
        values: Vec<f32>,
        t: &TensorMeta,
        heads: Option<usize>,
    ) -> Result<Vec<f32>, VerifyError> {
        let Some(n_head) = heads else {
            return Ok(values);
        };
        let n_rows = t.shape.first().copied().unwrap_or(0) as usize;
        if n_head == 0
            || n_rows == 0
            || !n_rows.is_multiple_of(2 * n_head)
            || !values.len().is_multiple_of(n_rows)
        {
            return Err(self.bad(
                &t.name,
                format!("{n_rows} rows cannot be split into {n_head} heads of rotary pairs"),
            ));
        }
        let row_bytes = values.len() / n_rows * 4;
        let mut out = vec![0f32; values.len()];
        permute_qk_rows(
            bytemuck::cast_slice(&values),
            n_rows,
            row_bytes,
            n_head,
            bytemuck::cast_slice_mut(&mut out),
        );
        Ok(out)
    }
}

fn i32s(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The `L.weight` an AWQ linear `L` stands for.
fn awq_meta(
    path: &Path,
    st: &SafetensorsModel,
    index: &HashMap<&str, usize>,
    spec: &ModelSpec,
    base: &str,
    qweight: usize,
) -> Result<TensorMeta, VerifyError> {
    let bad = |what: String| VerifyError::BadTensor {
        path: path.to_path_buf(),
        tensor: format!("{base}.qweight"),
        what,
    };
    let find = |suffix: &str| {
        index
            .get(format!("{base}.{suffix}").as_str())
            .copied()
            .ok_or_else(|| bad(format!("{base}.{suffix} is missing")))
    };
    let (qzeros, scales) = (find("qzeros")?, find("scales")?);
    let ts = st.tensors();
    let (qw, qz, sc): (&TensorEntry, &TensorEntry, &TensorEntry) =
        (&ts[qweight], &ts[qzeros], &ts[scales]);
    if qw.dtype != Dtype::I32 || qz.dtype != Dtype::I32 || sc.dtype != Dtype::F16 {
        return Err(bad(format!(
            "dtypes {}/{}/{} (qweight/qzeros/scales), expected I32/I32/F16",
            qw.dtype, qz.dtype, sc.dtype
        )));
    }
    if qw.shape.len() != 2 || sc.shape.len() != 2 || sc.shape[0] == 0 {
        return Err(bad(format!(
            "shapes {:?} / {:?} (qweight / scales) are not 2-D",
            qw.shape, sc.shape
        )));
    }
    let (n_in, n_out) = (qw.shape[0], qw.shape[1] * 8);
    if sc.shape[1] != n_out || n_in % sc.shape[0] != 0 {
        return Err(bad(format!(
            "scales {:?} do not fit qweight {:?}",
            sc.shape, qw.shape
        )));
    }
    let group = (n_in / sc.shape[0]) as usize;
    let weight = format!("{base}.weight");
    let mapped = spec.map_tensor(&weight).ok().flatten().ok_or_else(|| {
        bad(format!(
            "{weight} is not part of a {} checkpoint",
            spec.arch
        ))
    })?;
    Ok(TensorMeta {
        key: mapped.gguf_name,
        name: weight,
        shape: vec![n_out, n_in],
        storage: format!("AWQ4_G{group}"),
        bytes: (qw.n_bytes() + qz.n_bytes() + sc.n_bytes()) as u64,
        loc: Loc::Awq {
            qweight,
            qzeros,
            scales,
            group,
            permute: mapped.permute_heads,
        },
    })
}
