//! `quern calibrate`: llama.cpp's importance matrix from a calibration text.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quern_runtime::calibrate::{self, CalibrateOptions, CalibrateProgress};
use quern_runtime::Model;

/// Compute an importance matrix (imatrix) for importance-weighted quantisation.
///
/// Runs MODEL over the calibration text as llama.cpp's llama-imatrix does: the
/// text is tokenised once with the model's tokenizer, cut into chunks of --ctx
/// tokens (the first of each replaced by BOS when the model uses one), and for
/// every matrix of every block the squared input activations are summed per
/// input column over every token. The output is llama.cpp's imatrix GGUF
/// (`general.type = imatrix`, `*.in_sum2` and `*.counts` tensors, the text's
/// name and the chunk count and size), which `llama-quantize --imatrix` and
/// `quern quantize --imatrix` both read; --legacy-dat writes the older .dat form.
///
/// Only the last token's logits are computed unless --process-output asks for
/// the output projection's statistics too (as llama-imatrix, nothing is
/// collected for it when the model ties it to the token embeddings).
///
/// Calibrate on text unlike the evaluation text (e.g. Tiny Shakespeare when you
/// evaluate on WikiText-2).
#[derive(Args)]
pub struct CalibrateArgs {
    /// The float model: a Hugging Face safetensors folder (read in place) or an
    /// F32/F16/BF16 GGUF file.
    pub model: PathBuf,
    /// UTF-8 calibration text.
    #[arg(long, short = 'f')]
    pub text: PathBuf,
    /// Output file, e.g. model.imatrix.gguf (written under a temporary name,
    /// renamed when complete).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Tokens per chunk.
    #[arg(long, short = 'c', default_value_t = 512)]
    pub ctx: usize,
    /// Chunks to run (default: all the text holds).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Worker threads (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Also collect output.weight's input (computes every token's logits).
    #[arg(long)]
    pub process_output: bool,
    /// Write llama.cpp's legacy .dat format instead of GGUF.
    #[arg(long)]
    pub legacy_dat: bool,
    /// No progress bar or summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Where the weight products run (the observer reads every product's input
    /// on the host, so the rest of the pass stays there).
    #[arg(long, value_enum, default_value_t = crate::device::Device::Cpu)]
    pub device: crate::device::Device,
    /// Activation codes of the 4- and 5-bit formats' integer products (Q4_0,
    /// Q4_1, Q5_0, Q5_1, Q4_K, Q6_K): 8 bits (fastest) or 16 (as Q8_0 always
    /// has; slower, closer to the float product, and far less sensitive to
    /// the order of float sums, so --device cuda and the CPU agree closely).
    /// Default: QUERN_ACT_BITS, else 8.
    #[arg(long, value_name = "8|16", value_parser = crate::device::parse_act_bits)]
    pub act_bits: Option<quern_runtime::precision::ActBits>,
}

struct Bar(ProgressBar);

impl CalibrateProgress for Bar {
    fn start(&self, chunks: usize) {
        self.0.set_length(chunks as u64);
    }
    fn chunk_done(&self) {
        self.0.inc(1);
    }
}

pub fn run(args: CalibrateArgs) -> Result<()> {
    crate::device::apply_act_bits(args.act_bits);
    crate::threads::init(args.threads)?;
    if args.output.is_dir() {
        anyhow::bail!(
            "{}: is a folder; give a file name for the importance matrix",
            args.output.display()
        );
    }
    let started = Instant::now();
    let model = Model::open(&args.model, crate::device::backend(args.device)?)
        .with_context(|| format!("cannot open {}", args.model.display()))?;
    calibrate::check_model(&model, args.ctx)?;
    let (tokens, bos) = calibrate::tokenize(&args.model, &args.text)?;
    let quiet = args.quiet || args.json;
    let bar = ProgressBar::new(0);
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "calibrating [{bar:30}] chunk {pos}/{len}, {elapsed} elapsed, eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    if args.process_output && model.output_tensor() != calibrate::imatrix::OUTPUT_TENSOR && !quiet {
        eprintln!(
            "note: the output projection is the tied {}; like llama-imatrix, nothing is collected for it",
            model.output_tensor()
        );
    }
    let opts = CalibrateOptions {
        ctx: args.ctx,
        chunks: args.chunks,
        process_output: args.process_output,
        dataset: args.text.display().to_string(),
    };
    let run_started = Instant::now();
    let result = calibrate::importance_matrix(&model, &tokens, bos, &opts, &Bar(bar.clone()));
    bar.finish_and_clear();
    let cal = result?;
    let run_secs = run_started.elapsed().as_secs_f64();
    let write = if args.legacy_dat {
        cal.imatrix.write_legacy(&args.output)
    } else {
        cal.imatrix.write_gguf(&args.output)
    };
    write.with_context(|| format!("cannot write {}", args.output.display()))?;
    let secs = started.elapsed().as_secs_f64();
    let evaluated = cal.plan.n_chunks * cal.plan.n_ctx;
    if args.json {
        let j = serde_json::json!({
            "output": args.output,
            "format": if args.legacy_dat { "dat" } else { "gguf" },
            "model": args.model,
            "dataset": opts.dataset,
            "text_tokens": cal.text_tokens,
            "ctx": cal.plan.n_ctx,
            "chunks": cal.plan.n_chunks,
            "chunks_available": cal.plan.available,
            "tokens_evaluated": evaluated,
            "entries": cal.imatrix.entries.len(),
            "output_collected": cal.output_collected,
            "threads": rayon::current_num_threads(),
            "device": args.device.name(),
            "act_bits": quern_runtime::precision::act_bits().bits(),
            "seconds": secs,
            "seconds_forward": run_secs,
            "tokens_per_second": evaluated as f64 / run_secs.max(1e-9),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else if !args.quiet {
        eprintln!(
            "wrote {} ({}): {} matrices, {} chunks of {} tokens ({} of the text's {} tokens) in {:.1} s ({:.0} tokens/s)",
            args.output.display(),
            if args.legacy_dat { "legacy .dat" } else { "imatrix GGUF" },
            cal.imatrix.entries.len(),
            cal.plan.n_chunks,
            cal.plan.n_ctx,
            evaluated,
            cal.text_tokens,
            secs,
            evaluated as f64 / run_secs.max(1e-9),
        );
    }
    Ok(())
}
