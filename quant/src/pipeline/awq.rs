//! `quern quantize --format awq`: a Hugging Face folder to AutoAWQ "gemm" 4-bit
//! safetensors (round-to-nearest, asymmetric, per input group) that vLLM and
//! transformers load.

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use half::f16;
use quern_formats::atomic::{AtomicDir, AtomicError};
use quern_formats::awq::{self, AwqError};
use quern_formats::dtype::{self, DtypeError};
use quern_formats::hf_config::HfConfig;
use quern_formats::safetensors::{Dtype, SafetensorsModel, TensorEntry};
use quern_formats::safetensors_writer::{SafetensorsWriteError, SafetensorsWriter, StTensorSpec};
use rayon::prelude::*;

use crate::awq::fold::{FoldError, Folds};
use quern_formats::arch::ModelSpec;

use super::convert::{prepare_hf, ConvertError, OutType};
use super::Progress;

/// Files copied unchanged beside the weights.
const COPIED: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "tokenizer.model",
    "chat_template.jinja",
];

/// The projections AWQ quantises (attention and MLP); embeddings, norms and
/// lm_head stay in f16, as AutoAWQ leaves them.
const LINEARS: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

#[derive(Debug, Clone)]
pub struct AwqOptions {
    /// Input columns per quantisation group (AutoAWQ default 128).
    pub group_size: usize,
}

#[derive(Debug, Clone)]
pub struct AwqReport {
    pub output: PathBuf,
    pub quantized_linears: usize,
    pub kept_tensors: usize,
    pub weights_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AwqPipelineError {
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error(transparent)]
    Output(#[from] AtomicError),
    #[error(transparent)]
    Write(#[from] SafetensorsWriteError),
    #[error("{file}: tensor {tensor}: {source}")]
    Dtype {
        file: PathBuf,
        tensor: String,
        source: DtypeError,
    },
    #[error("{file}: tensor {tensor}: {source}")]
    Awq {
        file: PathBuf,
        tensor: String,
        source: AwqError,
    },
    #[error("tensor {tensor}: {in_features} input columns are not a multiple of the group size {group}; pass a --group-size that divides {in_features} (e.g. {hint})")]
    Group {
        tensor: String,
        in_features: u64,
        group: usize,
        hint: usize,
    },
    #[error(transparent)]
    Fold(#[from] FoldError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The output tensors one input tensor becomes.
enum Job<'a> {
    Linear {
        entry: &'a TensorEntry,
        prefix: String,
        out_features: usize,
        in_features: usize,
    },
    Keep(&'a TensorEntry),
}

pub fn quantize_awq(
    folder: &Path,
    output: &Path,
    options: &AwqOptions,
    progress: &dyn Progress,
) -> Result<AwqReport, AwqPipelineError> {
    quantize_awq_folded(folder, output, options, None, progress)
}

/// [`quantize_awq`] with activation-aware scales and clipping (`folds`, by GGUF
/// name, from the runtime's AWQ calibration) applied to the float weights
/// before rounding: norms and preceding linears divided by the scales, the
/// linears' columns multiplied by them, then clamped to the searched ranges.
pub fn quantize_awq_folded(
    folder: &Path,
    output: &Path,
    options: &AwqOptions,
    folds: Option<&Folds>,
    progress: &dyn Progress,
) -> Result<AwqReport, AwqPipelineError> {
    // The same checks as convert: supported architecture, every tensor present
    // with the shape config.json implies, a tokenizer.
    let spec = prepare_hf(folder, OutType::Auto, None)?.spec;
    let config = HfConfig::from_folder(folder).map_err(ConvertError::from)?;
    let model = SafetensorsModel::open(folder).map_err(ConvertError::from)?;
    let group = options.group_size;

    let mut jobs = Vec::new();
    for t in model.tensors() {
        let linear = t
            .name
            .strip_suffix(".weight")
            .filter(|p| {
                p.starts_with("model.layers.")
                    && LINEARS.iter().any(|l| p.ends_with(&format!(".{l}")))
            })
            .filter(|_| t.shape.len() == 2);
        match linear {
            Some(prefix) => {
                let (out_f, in_f) = (t.shape[0], t.shape[1]);
                if group == 0 || in_f % group as u64 != 0 {
                    let hint = [128, 64, 32]
                        .into_iter()
                        .find(|g| in_f % g == 0)
                        .unwrap_or(32);
                    return Err(AwqPipelineError::Group {
                        tensor: t.name.clone(),
                        in_features: in_f,
                        group,
                        hint: hint as usize,
                    });
                }
                jobs.push(Job::Linear {
                    entry: t,
                    prefix: prefix.to_string(),
                    out_features: out_f as usize,
                    in_features: in_f as usize,
                });
            }
            None => jobs.push(Job::Keep(t)),
        }
    }

    let specs: Vec<StTensorSpec> = jobs.iter().flat_map(|j| specs_of(j, group)).collect();
    let total: u64 = specs.iter().map(StTensorSpec::n_bytes).sum();
    progress.start(total);

    let dir = AtomicDir::create(output)?;
    let weights_path = dir.join("model.safetensors");
    let file = std::fs::File::create(&weights_path).map_err(|source| AwqPipelineError::Io {
        path: weights_path.clone(),
        source,
    })?;
    let mut writer = SafetensorsWriter::new(
        BufWriter::with_capacity(8 << 20, file),
        specs,
        &[("format".into(), "pt".into())],
    )?;
    // Bounded batches: quantised in parallel, then written in order.
    for batch in jobs.chunks(16) {
        let produced: Vec<Vec<(String, Vec<u8>)>> = batch
            .par_iter()
            .map(|job| produce(&model, &spec, folds, job, group))
            .collect::<Result<_, _>>()?;
        for (name, bytes) in produced.into_iter().flatten() {
            writer.write_tensor(&name, &bytes)?;
            progress.advance(bytes.len() as u64);
        }
    }
    let file = writer.finish()?;
    file.into_inner()
        .map_err(|e| AwqPipelineError::Io {
            path: weights_path.clone(),
            source: e.into_error(),
        })?
        .sync_all()
        .map_err(|source| AwqPipelineError::Io {
            path: weights_path.clone(),
            source,
        })?;

    let mut cfg = config.raw().clone();
    cfg["quantization_config"] = awq::quantization_config(group);
    cfg["torch_dtype"] = serde_json::json!("float16");
    let cfg_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| AwqPipelineError::Io {
        path: cfg_path.clone(),
        source: e.into(),
    })?;
    std::fs::write(&cfg_path, text + "\n").map_err(|source| AwqPipelineError::Io {
        path: cfg_path,
        source,
    })?;
    for name in COPIED {
        let src = folder.join(name);
        if src.exists() {
            std::fs::copy(&src, dir.join(name))
                .map_err(|source| AwqPipelineError::Io { path: src, source })?;
        }
    }
    dir.commit()?;

    Ok(AwqReport {
        output: output.to_path_buf(),
        quantized_linears: jobs
            .iter()
            .filter(|j| matches!(j, Job::Linear { .. }))
            .count(),
        kept_tensors: jobs.iter().filter(|j| matches!(j, Job::Keep(_))).count(),
        weights_bytes: total,
    })
}

fn specs_of(job: &Job, group: usize) -> Vec<StTensorSpec> {
    match job {
        Job::Keep(t) => vec![StTensorSpec {
            name: t.name.clone(),
            dtype: Dtype::F16,
            shape: t.shape.clone(),
        }],
        Job::Linear {
            prefix,
            out_features,
            in_features,
            ..
        } => {
            let (o, i, g) = (*out_features as u64, *in_features as u64, group as u64);
            vec![
                StTensorSpec {
                    name: format!("{prefix}.qweight"),
                    dtype: Dtype::I32,
                    shape: vec![i, o / 8],
                },
                StTensorSpec {
                    name: format!("{prefix}.qzeros"),
                    dtype: Dtype::I32,
                    shape: vec![i / g, o / 8],
                },
                StTensorSpec {
                    name: format!("{prefix}.scales"),
                    dtype: Dtype::F16,
                    shape: vec![i / g, o],
                },
            ]
        }
    }
}

fn produce(
    model: &SafetensorsModel,
    spec: &ModelSpec,
    folds: Option<&Folds>,
    job: &Job,
    group: usize,
) -> Result<Vec<(String, Vec<u8>)>, AwqPipelineError> {
    let entry = match job {
        Job::Keep(t) | Job::Linear { entry: t, .. } => *t,
    };
    let file = || model.file_path(entry).to_path_buf();
    let mut values = vec![0f32; entry.n_elements() as usize];
    dtype::to_f32(entry.dtype, model.data(entry), &mut values).map_err(|source| {
        AwqPipelineError::Dtype {
            file: file(),
            tensor: entry.name.clone(),
            source,
        }
    })?;
    if let Some(folds) = folds {
        let mapped = spec
            .map_tensor(&entry.name)
            .map_err(|e| AwqPipelineError::Convert(e.into()))?;
        if let Some(m) = mapped {
            let cols = if entry.shape.len() == 2 {
                entry.shape[1] as usize
            } else {
                1
            };
            folds.apply(&m.gguf_name, &mut values, cols)?;
        }
    }
    match job {
        Job::Keep(t) => {
            let bytes = values
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect();
            Ok(vec![(t.name.clone(), bytes)])
        }
        Job::Linear {
            prefix,
            out_features,
            in_features,
            ..
        } => {
            let q = awq::quantize_rtn(&values, *in_features, *out_features, group).map_err(
                |source| AwqPipelineError::Awq {
                    file: file(),
                    tensor: entry.name.clone(),
                    source,
                },
            )?;
            Ok(vec![
                (
                    format!("{prefix}.qweight"),
                    bytemuck::cast_slice(&q.qweight).to_vec(),
                ),
                (
                    format!("{prefix}.qzeros"),
                    bytemuck::cast_slice(&q.qzeros).to_vec(),
                ),
                (
                    format!("{prefix}.scales"),
                    q.scales.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ),
            ])
        }
    }
}
