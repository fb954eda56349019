//! `quern convert`: a Hugging Face folder to GGUF, as llama.cpp's converter writes it.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use quern_formats::arch::{self, ArchError, ModelSpec};
use quern_formats::atomic::{AtomicError, AtomicFile};
use quern_formats::gguf::{GgufError, Value};
use quern_formats::hf_config::{ConfigError, HfConfig};
use quern_formats::safetensors::{Dtype, SafetensorsError, SafetensorsModel};
use quern_formats::tokenizer::{self, TokenizerError};
use quern_formats::GgmlType;

use super::encode::{encode, EncodeError};
use super::plan::{sort_key, TensorPlan, TensorSource};
use super::write::write_gguf;
use super::Progress;

/// The output type of `quern convert --outtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutType {
    F32,
    F16,
    Bf16,
    Q8_0,
    /// Keep each tensor's source dtype.
    Auto,
}

impl OutType {
    pub const NAMES: &'static [&'static str] = &["f32", "f16", "bf16", "q8_0", "auto"];

    /// The type every 2-D weight gets; `None` for `Auto` (each keeps its source dtype).
    pub fn ggml_type(self) -> Option<GgmlType> {
        Some(match self {
            OutType::F32 => GgmlType::F32,
            OutType::F16 => GgmlType::F16,
            OutType::Bf16 => GgmlType::Bf16,
            OutType::Q8_0 => GgmlType::Q8_0,
            OutType::Auto => return None,
        })
    }

    pub fn parse(s: &str) -> Option<OutType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" => OutType::F32,
            "f16" => OutType::F16,
            "bf16" => OutType::Bf16,
            "q8_0" => OutType::Q8_0,
            "auto" => OutType::Auto,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub outtype: OutType,
    /// `general.name`; defaults to the folder's name.
    pub model_name: Option<String>,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    pub output: PathBuf,
    /// The sha256 of the file written (computed while writing).
    pub output_sha256: [u8; 32],
    pub architecture: String,
    pub file_type: u32,
    pub tensors: Vec<TensorPlan>,
    pub input_bytes: u64,
    pub output_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Arch(#[from] ArchError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Output(#[from] AtomicError),
    #[error("{file}: tensor {tensor}: {source}")]
    Encode {
        file: PathBuf,
        tensor: String,
        source: EncodeError,
    },
    #[error("{file}: tensor {tensor} has shape {found:?} but config.json implies {expected:?}")]
    ShapeMismatch {
        file: PathBuf,
        tensor: String,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error("{folder}: the checkpoint lacks tensor {tensor}, which config.json implies")]
    MissingTensor { folder: PathBuf, tensor: String },
    #[error("{file}: tensor {tensor} has dtype {dtype}; quern converts BF16, F16 and F32 weights")]
    UnsupportedDtype {
        file: PathBuf,
        tensor: String,
        dtype: Dtype,
    },
}

/// Converts the Hugging Face model in `folder` to a GGUF file at `output`.
///
/// `progress` hears the total output bytes, then each tensor's bytes as it lands.
pub fn convert_hf_folder(
    folder: &Path,
    output: &Path,
    options: &ConvertOptions,
    progress: &dyn Progress,
) -> Result<ConvertReport, ConvertError> {
    let HfPrepared {
        spec,
        model,
        mut metadata,
        plans,
    } = prepare_hf(folder, options.outtype, options.model_name.clone())?;
    let file_type = file_type(options.outtype, &plans);
    set_file_type(&mut metadata, file_type);

    // Open the output last: every check that can fail on the input has passed.
    let out = AtomicFile::create(output)?;
    let output_sha256 = write_gguf::<ConvertError, _>(
        out,
        &metadata,
        &plans,
        |plan| produce(&model, plan),
        progress,
    )?;

    let output_bytes = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    Ok(ConvertReport {
        output: output.to_path_buf(),
        architecture: spec.arch.gguf_name().to_string(),
        file_type,
        input_bytes: model.total_bytes(),
        output_bytes,
        output_sha256,
        tensors: plans,
    })
}

/// A Hugging Face model read, checked and mapped: everything but the writing.
pub(crate) struct HfPrepared {
    pub spec: ModelSpec,
    pub model: SafetensorsModel,
    /// Architecture, tokenizer and `general.*` keys; `general.file_type` is set by the caller.
    pub metadata: Vec<(String, Value)>,
    pub plans: Vec<TensorPlan>,
}

pub(crate) fn prepare_hf(
    folder: &Path,
    outtype: OutType,
    model_name: Option<String>,
) -> Result<HfPrepared, ConvertError> {
    let HfModel {
        spec,
        model,
        metadata,
    } = open_hf_model(folder, model_name)?;
    let plans = plan_tensors(folder, &spec, &model, outtype)?;
    Ok(HfPrepared {
        spec,
        model,
        metadata,
        plans,
    })
}

/// A Hugging Face folder opened and described the way a GGUF file of it would be.
pub struct HfModel {
    pub spec: ModelSpec,
    pub model: SafetensorsModel,
    /// Architecture, tokenizer and `general.*` keys as the converter writes them
    /// (no `general.file_type`).
    pub metadata: Vec<(String, Value)>,
}

/// Reads `config.json`, memory-maps the safetensors and builds the GGUF metadata
/// (architecture and tokenizer keys) the converter would write; the tensors
/// themselves are not checked here (an AWQ folder has other tensors).
pub fn open_hf_model(folder: &Path, model_name: Option<String>) -> Result<HfModel, ConvertError> {
    let config = HfConfig::from_folder(folder)?;
    let mut spec = ModelSpec::from_config(&config)?;
    let model = SafetensorsModel::open(folder)?;
    // A checkpoint without lm_head shares the embeddings, whatever config.json says.
    spec.set_lm_head_present(model.get("lm_head.weight").is_some());
    let tokenizer_md = tokenizer::gguf_tokenizer_metadata(folder, &spec)?;
    let name = model_name.unwrap_or_else(|| {
        folder
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".to_string())
    });
    let mut metadata = spec.gguf_metadata(&name);
    metadata.push(("general.quantization_version".into(), Value::U32(2)));
    metadata.extend(tokenizer_md);
    Ok(HfModel {
        spec,
        model,
        metadata,
    })
}

/// Sets (or replaces) `general.file_type`, placed with the other `general.*` keys.
pub(crate) fn set_file_type(metadata: &mut Vec<(String, Value)>, file_type: u32) {
    metadata.retain(|(k, _)| k != "general.file_type");
    let at = metadata
        .iter()
        .position(|(k, _)| k == "general.quantization_version")
        .unwrap_or(metadata.len());
    metadata.insert(at, ("general.file_type".into(), Value::U32(file_type)));
}

/// Maps, validates and orders the checkpoint's tensors and picks each one's output type.
fn plan_tensors(
    folder: &Path,
    spec: &ModelSpec,
    model: &SafetensorsModel,
    outtype: OutType,
) -> Result<Vec<TensorPlan>, ConvertError> {
    for (name, shape) in spec.expected_tensors() {
        match model.get(&name) {
            None => {
                return Err(ConvertError::MissingTensor {
                    folder: folder.to_path_buf(),
                    tensor: name,
                })
            }
            Some(t) if t.shape != shape => {
                return Err(ConvertError::ShapeMismatch {
                    file: model.file_path(t).to_path_buf(),
                    tensor: name,
                    expected: shape,
                    found: t.shape.clone(),
                })
            }
            Some(_) => {}
        }
    }

    let mut plans = Vec::new();
    for (index, t) in model.tensors().iter().enumerate() {
        let Some(mapped) = spec.map_tensor(&t.name)? else {
            continue;
        };
        if t.shape != mapped.expected_shape {
            return Err(ConvertError::ShapeMismatch {
                file: model.file_path(t).to_path_buf(),
                tensor: t.name.clone(),
                expected: mapped.expected_shape,
                found: t.shape.clone(),
            });
        }
        if !matches!(t.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(ConvertError::UnsupportedDtype {
                file: model.file_path(t).to_path_buf(),
                tensor: t.name.clone(),
                dtype: t.dtype,
            });
        }
        let shape: Vec<u64> = t.shape.iter().rev().copied().collect();
        let (out_type, fallback_from) = if mapped.keep_f32 || shape.len() < 2 {
            (GgmlType::F32, None)
        } else {
            out_type_for(outtype, t.dtype, shape[0])
        };
        plans.push(TensorPlan {
            gguf_name: mapped.gguf_name,
            shape,
            out_type,
            fallback_from,
            source: TensorSource::Input {
                index,
                permute_heads: mapped.permute_heads,
            },
        });
    }
    for (name, shape, values) in spec.extra_tensors() {
        plans.push(TensorPlan {
            gguf_name: name,
            shape,
            out_type: GgmlType::F32,
            fallback_from: None,
            source: TensorSource::Computed(values),
        });
    }
    plans.sort_by_key(|p| sort_key(&p.gguf_name));
    Ok(plans)
}

pub(crate) fn source_type(dtype: Dtype) -> GgmlType {
    match dtype {
        Dtype::F16 => GgmlType::F16,
        Dtype::BF16 => GgmlType::Bf16,
        _ => GgmlType::F32,
    }
}

/// The output type of a 2-D tensor; Q8_0 rows that are not whole blocks fall
/// back to F16, as llama.cpp's converter does.
fn out_type_for(outtype: OutType, dtype: Dtype, row_len: u64) -> (GgmlType, Option<GgmlType>) {
    let wanted = outtype.ggml_type().unwrap_or_else(|| source_type(dtype));
    if !row_len.is_multiple_of(wanted.block_size() as u64) {
        (GgmlType::F16, Some(wanted))
    } else {
        (wanted, None)
    }
}

/// `general.file_type` (llama.cpp's `llama_ftype`): the type most 2-D weights have.
fn file_type(outtype: OutType, plans: &[TensorPlan]) -> u32 {
    let t = match outtype.ggml_type() {
        Some(t) => t,
        None => {
            let mut bytes = std::collections::BTreeMap::<GgmlType, u64>::new();
            for p in plans.iter().filter(|p| p.shape.len() >= 2) {
                *bytes.entry(p.out_type).or_default() += p.out_bytes();
            }
            bytes
                .into_iter()
                .max_by_key(|&(_, b)| b)
                .map(|(t, _)| t)
                .unwrap_or(GgmlType::F32)
        }
    };
    match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q8_0 => 7,
        GgmlType::Bf16 => 32,
        _ => 0,
    }
}

/// One tensor's output bytes, borrowed straight from the memory map when no
/// change is needed.
fn produce<'a>(
    model: &'a SafetensorsModel,
    plan: &'a TensorPlan,
) -> Result<Cow<'a, [u8]>, ConvertError> {
    let (src, src_type) = source_bytes(model, plan);
    let entry = match plan.source {
        TensorSource::Input { index, .. } => &model.tensors()[index],
        TensorSource::Computed(_) => return Ok(src),
    };
    encode(src, src_type, plan.out_type, plan.row_len(), None, false).map_err(|source| {
        ConvertError::Encode {
            file: model.file_path(entry).to_path_buf(),
            tensor: entry.name.clone(),
            source,
        }
    })
}

/// A planned tensor's source bytes in GGUF row order (q/k rows permuted for
/// llama), and their type.
pub(crate) fn source_bytes<'a>(
    model: &'a SafetensorsModel,
    plan: &'a TensorPlan,
) -> (Cow<'a, [u8]>, GgmlType) {
    let (index, permute) = match &plan.source {
        TensorSource::Computed(values) => {
            return (
                Cow::Owned(bytemuck::cast_slice(values).to_vec()),
                GgmlType::F32,
            )
        }
        TensorSource::Input {
            index,
            permute_heads,
        } => (*index, *permute_heads),
    };
    let entry = &model.tensors()[index];
    let src = model.data(entry);
    let src_type = source_type(entry.dtype);
    match permute {
        None => (Cow::Borrowed(src), src_type),
        Some(n_head) => {
            let mut permuted = vec![0u8; src.len()];
            // By the HF shape, so 1-D q/k biases permute too.
            arch::permute_qk_tensor(
                src,
                &entry.shape,
                entry.dtype.size_in_bytes(),
                n_head,
                &mut permuted,
            );
            (Cow::Owned(permuted), src_type)
        }
    }
}
