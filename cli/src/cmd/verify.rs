//! `quern verify`: an artifact diffed against its reference, weights and outputs.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quern_formats::atomic::AtomicFile;
use quern_runtime::eval::Accumulator;
use quern_runtime::verify::{self, Progress, Report, Stage, Thresholds, VerifyOptions};
use quern_runtime::CpuBackend;

use crate::device::Device;

/// Verify a quantised artifact against the model it was made from.
///
/// 1. Weights: every tensor of the artifact is dequantised and compared with the
///    reference's (after name mapping and the llama q/k permutation): relative RMS
///    error, max |error|, cosine similarity, SNR; per storage type and worst first.
///
/// 2. Outputs: both models run over the same tokens of the text (tokenised once
///    with the reference's tokenizer) in non-overlapping chunks of --ctx tokens,
///    the second half of each chunk scored, as llama.cpp's perplexity tool does:
///    both perplexities and their ratio, the KL divergence of the artifact's
///    next-token distribution from the reference's (mean ± standard error, median,
///    99th and 99.9th percentile, max), top-1 agreement ("same top p") and the
///    largest drops in the probability of the right token.
///
/// Exit status: 0 when every threshold holds, 1 when one is crossed, 2 on error.
/// The JSON report (--json) follows runtime/src/verify/report.schema.json.
#[derive(Args)]
pub struct VerifyArgs {
    /// The artifact: a GGUF file (ours or llama.cpp's), an AWQ folder or a
    /// Hugging Face safetensors folder.
    pub artifact: PathBuf,
    /// The reference: the Hugging Face folder the artifact was made from (a GGUF
    /// file also works, e.g. a BF16 conversion).
    #[arg(long, short = 'r')]
    pub reference: PathBuf,
    /// UTF-8 text to score (default: a built-in English text of about 1,200
    /// tokens); use e.g. wiki.test.raw for a real evaluation.
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Chunks to evaluate (default: all the text holds).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write the JSON report to FILE ("-": stdout, instead of the table).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Fail (exit 1) when the mean KL divergence exceeds X.
    #[arg(long, value_name = "X", allow_hyphen_values = true)]
    pub max_kld: Option<f64>,
    /// Fail (exit 1) when the top-1 agreement is below Y (0..1).
    #[arg(long, value_name = "Y", allow_hyphen_values = true)]
    pub min_top1: Option<f64>,
    /// Fail (exit 1) when PPL(artifact) / PPL(reference) exceeds Z.
    #[arg(long, value_name = "Z", allow_hyphen_values = true)]
    pub max_ppl_ratio: Option<f64>,
    /// Compare the weights only; run neither model.
    #[arg(long)]
    pub weights_only: bool,
    /// How many of the worst tensors and largest probability drops to list.
    #[arg(long, default_value_t = 10)]
    pub worst: usize,
    /// Keep the reference's logits in DIR and reuse them on later runs with the
    /// same reference, text, context and chunks (e.g. verifying several
    /// quantisations of one model): the reference then runs once. Entries are
    /// keyed by the reference's sha256 and the chunk's tokens; about 50 MB per
    /// 512-token chunk for a 49k vocabulary.
    #[arg(long, value_name = "DIR")]
    pub reference_cache: Option<PathBuf>,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
    /// Where the artifact runs (cuda: its whole forward pass on the first GPU;
    /// with the same file as --reference on the CPU this compares the backends).
    #[arg(long, value_enum, default_value_t = crate::device::Device::Cpu)]
    pub device: crate::device::Device,
    /// Where the reference runs.
    #[arg(long, value_enum, default_value_t = crate::device::Device::Cpu)]
    pub reference_device: crate::device::Device,
    /// Activation codes of the 4- and 5-bit formats' integer products (Q4_0,
    /// Q4_1, Q5_0, Q5_1, Q4_K, Q6_K): 8 bits (fastest) or 16 (as Q8_0 always
    /// has; slower, closer to the float product, and far less sensitive to
    /// the order of float sums, so --device cuda and the CPU agree closely).
    /// Default: QUERN_ACT_BITS, else 8.
    #[arg(long, value_name = "8|16", value_parser = crate::device::parse_act_bits)]
    pub act_bits: Option<quern_runtime::precision::ActBits>,
}

/// One bar per stage, restyled as the stages change.
struct Bars {
    quiet: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    fn with_bar(&self, f: impl FnOnce(&ProgressBar)) {
        if let Ok(guard) = self.bar.lock() {
            if let Some(b) = guard.as_ref() {
                f(b)
            }
        }
    }
}

impl Progress for Bars {
    fn start(&self, stage: Stage, total: u64) {
        let (msg, template) = match stage {
            Stage::Hash => (
                "sha256",
                "{msg:10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            ),
            Stage::Weights => (
                "weights",
                "{msg:10} [{bar:30}] {human_pos}/{human_len} weights, eta {eta}",
            ),
            Stage::Outputs => (
                "outputs",
                "{prefix:10} [{bar:30}] chunk {pos}/{len}, {elapsed} elapsed, eta {eta} {msg}",
            ),
        };
        let bar = ProgressBar::new(total);
        if self.quiet {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix(msg);
        if stage != Stage::Outputs {
            bar.set_message(msg);
        }
        if let Ok(mut guard) = self.bar.lock() {
            *guard = Some(bar);
        }
    }

    fn advance(&self, n: u64) {
        self.with_bar(|b| b.inc(n));
    }

    fn chunk_done(&self, acc: &Accumulator) {
        self.with_bar(|b| {
            b.set_message(format!(
                "PPL {:.3} / {:.3}, KLD {:.4}, top-1 {:.1}%",
                acc.ppl_reference(),
                acc.ppl_artifact(),
                acc.mean_kld(),
                100.0 * acc.top1_agreement()
            ))
        });
    }

    fn finish(&self) {
        if let Ok(mut guard) = self.bar.lock() {
            if let Some(b) = guard.take() {
                b.finish_and_clear();
            }
        }
    }
}

pub fn run(args: VerifyArgs) -> Result<()> {
    crate::device::apply_act_bits(args.act_bits);
    crate::threads::init(args.threads)?;
    let opts = VerifyOptions {
        text: args.text.clone(),
        ctx: args.ctx,
        chunks: args.chunks,
        thresholds: Thresholds {
            max_kld: args.max_kld,
            min_top1: args.min_top1,
            max_ppl_ratio: args.max_ppl_ratio,
        },
        weights_only: args.weights_only,
        worst: args.worst,
        reference_cache: args.reference_cache.clone(),
        ..VerifyOptions::new(&args.artifact, &args.reference)
    };
    let bars = Bars {
        quiet: args.quiet,
        bar: Mutex::new(None),
    };
    // Each device's backend is made before the long work, so a missing GPU fails
    // fast; a model takes its backend when it is opened.
    let make =
        |d: crate::device::Device| -> Result<Mutex<Option<Box<dyn quern_runtime::Backend>>>> {
            Ok(Mutex::new(Some(crate::device::backend(d)?)))
        };
    let (art_be, ref_be) = (make(args.device)?, make(args.reference_device)?);
    if !args.quiet && (args.device, args.reference_device) != (Device::Cpu, Device::Cpu) {
        eprintln!(
            "artifact on {}, reference on {}",
            args.device.name(),
            args.reference_device.name()
        );
    }
    let backend = |role: verify::Role| -> Box<dyn quern_runtime::Backend> {
        let slot = match role {
            verify::Role::Artifact => &art_be,
            verify::Role::Reference => &ref_be,
        };
        slot.lock()
            .ok()
            .and_then(|mut s| s.take())
            .unwrap_or_else(|| Box::new(CpuBackend::new()))
    };
    let report = verify::verify(&opts, &backend, &bars).with_context(|| {
        format!(
            "cannot verify {} against {}",
            args.artifact.display(),
            args.reference.display()
        )
    })?;
    let json_to_stdout = args.json.as_deref() == Some(std::path::Path::new("-"));
    match &args.json {
        Some(_) if json_to_stdout => println!("{}", report.to_json()),
        Some(path) => write_json(path, &report)?,
        None => {}
    }
    if !json_to_stdout {
        print!("{}", crate::cmd::verify_render::render(&report));
    }
    std::io::stdout().flush().ok();
    if !report.passed {
        // Distinct from errors (2), so CI can tell a failed gate from a broken run.
        std::process::exit(1);
    }
    Ok(())
}

fn write_json(path: &std::path::Path, report: &Report) -> Result<()> {
    let mut f =
        AtomicFile::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(report.to_json().as_bytes())
        .and_then(|_| f.write_all(b"\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.commit()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
