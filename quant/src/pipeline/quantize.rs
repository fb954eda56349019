//! `quern quantize`: an F32/F16/BF16 GGUF or a Hugging Face folder to a GGUF of
//! block-quantised weights, with per-tensor types chosen by a llama.cpp-compatible mix.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use quern_formats::atomic::{AtomicError, AtomicFile};
use quern_formats::gguf::{GgufError, GgufFile, Value};
use quern_formats::imatrix::Imatrix;
use quern_formats::GgmlType;

use super::convert::{prepare_hf, set_file_type, source_bytes, ConvertError, OutType};
use super::encode::{encode, EncodeError};
use super::plan::{TensorPlan, TensorSource};
use super::write::write_gguf;
use super::Progress;
use crate::awq::fold::{FoldError, Folds, TensorFold};
use crate::mix::{plan_with, Mix, PlanOptions, TensorContext};

#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub mix: Mix,
    /// Quantise tensors that are already quantised (dequantised first), as
    /// llama.cpp's `--allow-requantize`.
    pub allow_requantize: bool,
    /// `general.name` for a Hugging Face input (default: the folder's name).
    pub model_name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct QuantizeReport {
    pub output: PathBuf,
    pub architecture: String,
    pub mix: Mix,
    pub tensors: Vec<TensorPlan>,
    pub n_params: u64,
    pub output_bytes: u64,
    /// The sha256 of the file written (computed while writing).
    pub output_sha256: [u8; 32],
    /// Tensors that got an importance vector from the imatrix.
    pub weighted_tensors: usize,
}

impl QuantizeReport {
    /// Bits per weight of the whole file, as llama.cpp reports model size / parameters.
    pub fn bits_per_weight(&self) -> f64 {
        self.output_bytes as f64 * 8.0 / self.n_params.max(1) as f64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Output(#[from] AtomicError),
    #[error("{file}: tensor {tensor} is already {ty}; quantising it again loses accuracy (pass --allow-requantize to do it anyway)")]
    AlreadyQuantized {
        file: PathBuf,
        tensor: String,
        ty: GgmlType,
    },
    #[error("{file}: tensor {tensor} has type {ty}, which quern cannot read")]
    Unreadable {
        file: PathBuf,
        tensor: String,
        ty: GgmlType,
    },
    #[error("{file}: missing or invalid metadata key {key}")]
    Metadata { file: PathBuf, key: String },
    #[error("imatrix: entry {entry} names a tensor the model lacks")]
    ImatrixUnknownTensor { entry: String },
    #[error("imatrix: entry {entry} has {found} columns but the tensor's rows have {expected}")]
    ImatrixLength {
        entry: String,
        expected: usize,
        found: usize,
    },
    #[error(transparent)]
    Fold(#[from] FoldError),
    #[error("{file}: tensor {tensor}: {source}")]
    Encode {
        file: PathBuf,
        tensor: String,
        source: EncodeError,
    },
}

type Metadata = Vec<(String, Value)>;

/// Where the tensors come from.
enum Input {
    Gguf(GgufFile),
    Hf(quern_formats::safetensors::SafetensorsModel),
}

/// Quantises `input` (a GGUF file or a Hugging Face folder, converted on the fly
/// in the same streaming pass) to `output`.
pub fn quantize(
    input: &Path,
    output: &Path,
    options: &QuantizeOptions,
    imatrix: Option<&Imatrix>,
    progress: &dyn Progress,
) -> Result<QuantizeReport, QuantizeError> {
    quantize_folded(input, output, options, imatrix, None, progress)
}

/// The type `quantize` would give each tensor (GGUF name, type), in file order.
pub fn planned_types(
    input: &Path,
    options: &QuantizeOptions,
    has_imatrix: bool,
) -> Result<Vec<(String, GgmlType)>, QuantizeError> {
    let planned = plan_quantize(input, options, has_imatrix)?;
    Ok(planned
        .plans
        .into_iter()
        .map(|p| (p.gguf_name, p.out_type))
        .collect())
}

struct Planned {
    source: Input,
    metadata: Metadata,
    plans: Vec<TensorPlan>,
    arch: String,
}

fn plan_quantize(
    input: &Path,
    options: &QuantizeOptions,
    has_imatrix: bool,
) -> Result<Planned, QuantizeError> {
    let (source, metadata, mut plans) = if input.is_dir() {
        let prepared = prepare_hf(input, OutType::Auto, options.model_name.clone())?;
        (Input::Hf(prepared.model), prepared.metadata, prepared.plans)
    } else {
        let file = GgufFile::open(input)?;
        let (metadata, plans) = gguf_plans(&file, options.allow_requantize)?;
        (Input::Gguf(file), metadata, plans)
    };
    let input_file = input.to_path_buf();
    let arch = metadata_str(&metadata, "general.architecture")
        .ok_or_else(|| QuantizeError::Metadata {
            file: input_file.clone(),
            key: "general.architecture".into(),
        })?
        .to_string();
    let key_u64 = |key: &str| -> Result<usize, QuantizeError> {
        metadata_u64(&metadata, &format!("{arch}.{key}"))
            .map(|v| v as usize)
            .ok_or_else(|| QuantizeError::Metadata {
                file: input_file.clone(),
                key: format!("{arch}.{key}"),
            })
    };
    let n_layers = key_u64("block_count")?;
    let n_heads = key_u64("attention.head_count")?;
    let n_kv_heads = key_u64("attention.head_count_kv").unwrap_or(n_heads);
    let tied = !plans.iter().any(|p| p.gguf_name == "output.weight");

    let contexts: Vec<TensorContext> = plans
        .iter()
        .map(|p| TensorContext {
            name: p.gguf_name.clone(),
            shape: p.shape.clone(),
            n_layers,
            n_heads,
            n_kv_heads,
            arch: arch.clone(),
            n_experts: 0,
            tied_output: tied,
        })
        .collect();
    let choices = plan_with(options.mix, &contexts, PlanOptions { has_imatrix });
    for (p, c) in plans.iter_mut().zip(&choices) {
        p.out_type = c.ty;
        p.fallback_from = c.fallback_from;
    }
    Ok(Planned {
        source,
        metadata,
        plans,
        arch,
    })
}

/// [`quantize`] with AWQ scales (and clipping) folded into the tensors on the
/// way (`folds` by GGUF name; see [`crate::awq::fold`]). The imatrix is
/// rescaled consistently: a column multiplied by `s` sees inputs divided by
/// `s`, so its importance (mean squared input) is divided by `s²`.
pub fn quantize_folded(
    input: &Path,
    output: &Path,
    options: &QuantizeOptions,
    imatrix: Option<&Imatrix>,
    folds: Option<&Folds>,
    progress: &dyn Progress,
) -> Result<QuantizeReport, QuantizeError> {
    let Planned {
        source,
        mut metadata,
        plans,
        arch,
    } = plan_quantize(input, options, imatrix.is_some())?;
    let mut importance = importance_vectors(imatrix, &plans)?;
    if let Some(folds) = folds {
        for (name, v) in importance.iter_mut() {
            if let Some(s) = folds.get(name).and_then(|f| f.col_mul.as_ref()) {
                for (x, sj) in v.iter_mut().zip(s) {
                    *x /= sj * sj;
                }
            }
        }
    }
    set_file_type(&mut metadata, options.mix.file_type());

    let out = AtomicFile::create(output)?;
    let output_sha256 = write_gguf::<QuantizeError, _>(
        out,
        &metadata,
        &plans,
        |plan| {
            let weights = importance.get(plan.gguf_name.as_str()).map(Vec::as_slice);
            let fold = folds.and_then(|f| f.get(&plan.gguf_name));
            produce(&source, input, plan, weights, fold)
        },
        progress,
    )?;

    Ok(QuantizeReport {
        output: output.to_path_buf(),
        architecture: arch,
        mix: options.mix,
        n_params: plans.iter().map(TensorPlan::n_elements).sum(),
        output_bytes: std::fs::metadata(output).map(|m| m.len()).unwrap_or(0),
        output_sha256,
        weighted_tensors: importance.len(),
        tensors: plans,
    })
}

/// The GGUF input's metadata and one plan per tensor (types filled in later).
fn gguf_plans(
    file: &GgufFile,
    allow_requantize: bool,
) -> Result<(Metadata, Vec<TensorPlan>), QuantizeError> {
    let mut plans = Vec::new();
    for (index, t) in file.tensors().iter().enumerate() {
        if !crate::can_dequantize(t.ggml_type) {
            return Err(QuantizeError::Unreadable {
                file: file.path().to_path_buf(),
                tensor: t.name.clone(),
                ty: t.ggml_type,
            });
        }
        let plain = matches!(t.ggml_type, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16);
        if !plain && !allow_requantize {
            return Err(QuantizeError::AlreadyQuantized {
                file: file.path().to_path_buf(),
                tensor: t.name.clone(),
                ty: t.ggml_type,
            });
        }
        plans.push(TensorPlan {
            gguf_name: t.name.clone(),
            shape: t.shape.clone(),
            out_type: t.ggml_type,
            fallback_from: None,
            source: TensorSource::Input {
                index,
                permute_heads: None,
            },
        });
    }
    let metadata = file
        .metadata()
        .iter()
        .filter(|(k, _)| k != "general.quantization_version")
        .cloned()
        .chain(std::iter::once((
            "general.quantization_version".to_string(),
            Value::U32(2),
        )))
        .collect();
    Ok((metadata, plans))
}

/// By tensor name, the importance vector the imatrix gives its rows; every entry of
/// the imatrix must name a tensor of the model with matching row length.
fn importance_vectors<'p>(
    imatrix: Option<&Imatrix>,
    plans: &'p [TensorPlan],
) -> Result<HashMap<&'p str, Vec<f32>>, QuantizeError> {
    let Some(im) = imatrix else {
        return Ok(HashMap::new());
    };
    for e in &im.entries {
        let Some(p) = plans.iter().find(|p| p.gguf_name == e.name) else {
            return Err(QuantizeError::ImatrixUnknownTensor {
                entry: e.name.clone(),
            });
        };
        if e.n_cols() != p.row_len() {
            return Err(QuantizeError::ImatrixLength {
                entry: e.name.clone(),
                expected: p.row_len(),
                found: e.n_cols(),
            });
        }
    }
    Ok(plans
        .iter()
        // Only block types take weights; plain types never do.
        .filter(|p| p.out_type.is_quantized())
        .filter_map(|p| {
            let v = im.importance_for(&p.gguf_name)?;
            (v.len() == p.row_len()).then_some((p.gguf_name.as_str(), v))
        })
        .collect())
}

fn produce<'a>(
    source: &'a Input,
    input: &Path,
    plan: &'a TensorPlan,
    importance: Option<&[f32]>,
    fold: Option<&TensorFold>,
) -> Result<Cow<'a, [u8]>, QuantizeError> {
    let (src, src_type, file, name) = match source {
        Input::Hf(model) => {
            let (src, ty) = source_bytes(model, plan);
            let file = match plan.source {
                TensorSource::Input { index, .. } => {
                    model.file_path(&model.tensors()[index]).to_path_buf()
                }
                TensorSource::Computed(_) => input.to_path_buf(),
            };
            (src, ty, file, plan.gguf_name.clone())
        }
        Input::Gguf(file) => {
            let TensorSource::Input { index, .. } = plan.source else {
                unreachable!("GGUF plans always read the input")
            };
            let t = &file.tensors()[index];
            (
                Cow::Borrowed(file.tensor_data(t)),
                t.ggml_type,
                file.path().to_path_buf(),
                t.name.clone(),
            )
        }
    };
    let (src, src_type) = match fold {
        None => (src, src_type),
        Some(fold) => {
            let permuted = matches!(
                plan.source,
                TensorSource::Input {
                    permute_heads: Some(_),
                    ..
                }
            );
            if permuted && fold.row_div.is_some() {
                return Err(QuantizeError::Fold(FoldError {
                    tensor: name,
                    what: "row scales on a tensor whose rows are permuted".into(),
                }));
            }
            let mut values = vec![0f32; plan.n_elements() as usize];
            crate::dequantize_row(src_type, &src, &mut values).map_err(|e| {
                QuantizeError::Encode {
                    file: file.clone(),
                    tensor: name.clone(),
                    source: e.into(),
                }
            })?;
            // A vector (a norm's weight) is one column of per-row values.
            let cols = if plan.shape.len() == 1 {
                1
            } else {
                plan.row_len()
            };
            fold.apply(&name, &mut values, cols)?;
            let bytes: Vec<u8> = bytemuck::cast_slice(&values).to_vec();
            (Cow::Owned(bytes), GgmlType::F32)
        }
    };
    encode(
        src,
        src_type,
        plan.out_type,
        plan.row_len(),
        importance,
        true,
    )
    .map_err(|source| QuantizeError::Encode {
        file,
        tensor: name,
        source,
    })
}

fn metadata_str<'a>(md: &'a [(String, Value)], key: &str) -> Option<&'a str> {
    md.iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.as_str())
}

fn metadata_u64(md: &[(String, Value)], key: &str) -> Option<u64> {
    md.iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.as_u64())
}
