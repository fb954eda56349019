//! `quern verify`: an artifact (GGUF file, AWQ folder or safetensors folder)
//! diffed against its reference, weights and outputs, into one [`Report`].
//!
//! Data flows one way: the two inputs' tensors ([`source`]) → pairing and error
//! statistics ([`weights`]) → both models over one token stream ([`text`],
//! [`outputs`], the maths in [`crate::eval`]) → thresholds → report.

pub mod digest;
pub mod error;
pub mod outputs;
pub mod progress;
pub mod report;
pub mod source;
pub mod text;
pub mod thresholds;
pub mod weights;

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use error::VerifyError;
pub use progress::{NoProgress, Progress, Stage};
pub use report::{Report, SCHEMA, SCHEMA_ID};
pub use thresholds::{Thresholds, Violation};

use crate::backend::Backend;
use crate::eval::ChunkPlan;
use crate::model::Model;
use source::TensorSource;
use text::{EvalText, EvalTokenizer};

/// What to verify and how.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub artifact: PathBuf,
    pub reference: PathBuf,
    /// `None`: the built-in text.
    pub text: Option<PathBuf>,
    pub ctx: usize,
    /// `None`: every chunk the text holds.
    pub chunks: Option<usize>,
    pub thresholds: Thresholds,
    /// Compare the weights only (no model is run).
    pub weights_only: bool,
    /// How many of the worst tensors and largest probability drops to list.
    pub worst: usize,
    /// Keep the reference's logits here between runs (see [`outputs::ReferenceCache`]).
    pub reference_cache: Option<PathBuf>,
}

impl VerifyOptions {
    pub fn new(artifact: &Path, reference: &Path) -> VerifyOptions {
        VerifyOptions {
            artifact: artifact.to_path_buf(),
            reference: reference.to_path_buf(),
            text: None,
            ctx: 512,
            chunks: None,
            thresholds: Thresholds::default(),
            weights_only: false,
            worst: 10,
            reference_cache: None,
        }
    }
}

fn input(src: &TensorSource, d: digest::InputDigest) -> report::Input {
    report::Input {
        path: src.path().display().to_string(),
        format: src.format().name(),
        arch: src.arch().to_string(),
        sha256: d.sha256,
        bytes: d.bytes,
        files: d.files,
    }
}

fn open_model(path: &Path, backend: Box<dyn Backend>) -> Result<Model, VerifyError> {
    Model::open(path, backend).map_err(|source| VerifyError::Load {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

/// Which of the two models a backend is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Reference,
    Artifact,
}

/// Runs the whole verification. Every input and setting is checked (thresholds,
/// formats, architectures, shapes, text length) before the long work starts.
/// `backend` makes a compute backend for each of the two models (a model opened
/// on the CUDA backend runs its whole forward pass on the GPU: e.g. the same
/// file as artifact on the GPU and as reference on the CPU compares the two
/// backends).
pub fn verify(
    opts: &VerifyOptions,
    backend: &dyn Fn(Role) -> Box<dyn Backend>,
    progress: &dyn Progress,
) -> Result<Report, VerifyError> {
    let t0 = Instant::now();
    opts.thresholds.validate()?;
    if opts.weights_only {
        for (name, set) in [
            ("--max-kld", opts.thresholds.max_kld.is_some()),
            ("--min-top1", opts.thresholds.min_top1.is_some()),
            ("--max-ppl-ratio", opts.thresholds.max_ppl_ratio.is_some()),
        ] {
            if set {
                return Err(VerifyError::ThresholdNeedsOutputs { name });
            }
        }
    }
    let reference = TensorSource::open(&opts.reference)?;
    let artifact = TensorSource::open(&opts.artifact)?;
    let (pairs, not_compared) = weights::pair(&reference, &artifact)?;

    let text = EvalText::load(opts.text.as_deref())?;
    let tokenizer = EvalTokenizer::for_reference(&opts.reference)?;
    let tokens = tokenizer.encode(&text.text)?;
    let plan = ChunkPlan::new(tokens.len(), opts.ctx, opts.chunks, tokenizer.bos)?;
    // Loaded before the long work so that a model the runtime cannot run fails fast.
    let models = if opts.weights_only {
        None
    } else {
        let reference = open_model(&opts.reference, backend(Role::Reference))?;
        let artifact = open_model(&opts.artifact, backend(Role::Artifact))?;
        outputs::check_models(&reference, &artifact, &plan)?;
        Some((reference, artifact))
    };

    let mut seconds = report::Timing::default();
    let t = Instant::now();
    let hash_bytes = digest::files_of(&opts.artifact)?
        .iter()
        .chain(digest::files_of(&opts.reference)?.iter())
        .map(|f| f.2)
        .sum();
    progress.start(Stage::Hash, hash_bytes);
    let artifact_digest = digest::digest(&opts.artifact, progress)?;
    let reference_digest = digest::digest(&opts.reference, progress)?;
    progress.finish();
    seconds.hash = t.elapsed().as_secs_f64();
    let artifact_input = input(&artifact, artifact_digest);
    let reference_input = input(&reference, reference_digest);

    let t = Instant::now();
    let total_elements = pairs.iter().map(|p| p.reference.n_elements()).sum();
    progress.start(Stage::Weights, total_elements);
    let weights = weights::compare(
        &reference,
        &artifact,
        &pairs,
        not_compared,
        opts.worst,
        progress,
    )?;
    progress.finish();
    seconds.weights = t.elapsed().as_secs_f64();
    drop(pairs);
    drop(reference);
    drop(artifact);

    let t = Instant::now();
    let outputs = if let Some((ref_model, art_model)) = &models {
        let cache = opts
            .reference_cache
            .as_deref()
            .map(|dir| outputs::ReferenceCache {
                dir,
                reference_sha256: &reference_input.sha256,
                act_bits: crate::precision::act_bits(),
            });
        let mut s = outputs::compare_outputs(
            ref_model,
            art_model,
            &tokens,
            &plan,
            opts.worst,
            cache.as_ref(),
            progress,
        )?;
        for d in &mut s.largest_drops {
            d.text = tokenizer.token_text(d.token);
        }
        Some(s)
    } else {
        None
    };
    drop(models);
    seconds.outputs = t.elapsed().as_secs_f64();

    let violations = outputs
        .as_ref()
        .map(|o| opts.thresholds.check(o))
        .unwrap_or_default();
    seconds.total = t0.elapsed().as_secs_f64();
    Ok(Report {
        schema: SCHEMA_ID,
        quern_version: env!("CARGO_PKG_VERSION"),
        artifact: artifact_input,
        reference: reference_input,
        text: report::TextInfo {
            source: text
                .path
                .as_ref()
                .map_or_else(|| "builtin".to_string(), |p| p.display().to_string()),
            sha256: text.sha256,
            bytes: text.text.len(),
            tokens: tokens.len(),
            bos: plan.bos,
        },
        settings: report::Settings {
            ctx: plan.n_ctx,
            chunks: plan.n_chunks,
            chunks_available: plan.available,
            scored_per_chunk: plan.scored_per_chunk(),
            threads: rayon::current_num_threads(),
            weights_only: opts.weights_only,
            act_bits: crate::precision::act_bits().bits(),
        },
        thresholds: opts.thresholds,
        weights,
        outputs,
        passed: violations.is_empty(),
        violations,
        seconds,
    })
}
