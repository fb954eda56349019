//! `quern run`: generate text from a model on the CPU or the GPU, streaming tokens.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use quern_runtime::chat::render_user_prompt;
use quern_runtime::cuda::decode::DeviceModel;
use quern_runtime::generate::{generate_with, Decoder, HostDecoder};
use quern_runtime::{Model, Sampler, SamplerConfig};

/// Generate text from a model, printing tokens as they come.
///
/// Greedy by default; --temp above 0 samples with top-k and top-p from a
/// seeded generator (the same seed gives the same text). --chat wraps the
/// prompt in the model's chat template as a single user message.
#[derive(Args)]
pub struct RunArgs {
    /// A GGUF file, a Hugging Face safetensors folder (bf16/f16/f32) or an AutoAWQ
    /// folder, of the llama, mistral, qwen2 or qwen3 architecture.
    pub artifact: PathBuf,
    /// The prompt.
    #[arg(short, long)]
    pub prompt: String,
    /// Tokens to generate at most.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    pub n_predict: usize,
    /// Sampling temperature; 0 picks the most likely token.
    #[arg(long, default_value_t = 0.0)]
    pub temp: f32,
    /// Keep the K most likely tokens when sampling (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Wrap the prompt in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print prompt and generation speed to stderr at the end.
    #[arg(long)]
    pub stats: bool,
    /// Where the model runs (cuda: the whole forward pass on the first GPU).
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

pub fn run(args: RunArgs) -> Result<()> {
    crate::device::apply_act_bits(args.act_bits);
    crate::threads::init(args.threads)?;
    if !(args.temp.is_finite() && args.temp >= 0.0) {
        bail!("--temp must be a number ≥ 0");
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1]");
    }
    let model = Model::open(&args.artifact, crate::device::backend(args.device)?)
        .with_context(|| format!("cannot load {}", args.artifact.display()))?;
    let tokenizer = model.tokenizer()?;
    let text = if args.chat {
        let template = tokenizer.chat_template.as_deref().with_context(|| {
            format!(
                "{} has no chat template (tokenizer.chat_template)",
                args.artifact.display()
            )
        })?;
        let name = |id: Option<u32>| id.map(|i| tokenizer.token_text(i)).unwrap_or_default();
        render_user_prompt(
            template,
            &args.prompt,
            &name(tokenizer.bos),
            &name(tokenizer.eos),
        )?
    } else {
        args.prompt.clone()
    };
    // A chat template writes its own BOS where it wants one.
    let prompt = tokenizer.encode(&text, !args.chat)?;
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let n_ctx = args.ctx.unwrap_or(4096).min(model.config.n_ctx_train);
    if args.ctx == Some(0) {
        bail!("--ctx must be at least 1");
    }
    if prompt.len() >= n_ctx {
        bail!(
            "the prompt is {} tokens, longer than the context of {} tokens (--ctx, at most {})",
            prompt.len(),
            n_ctx,
            model.config.n_ctx_train
        );
    }
    let mut session = model.session(n_ctx);
    // On the GPU the whole forward pass stays on the device (its own KV cache).
    let mut dec: Box<dyn Decoder + '_> = match args.device {
        crate::device::Device::Cuda => Box::new(DeviceModel::new(&model, n_ctx)?),
        crate::device::Device::Cpu => Box::new(HostDecoder {
            model: &model,
            session: &mut session,
        }),
    };
    let mut sampler = Sampler::new(SamplerConfig {
        temperature: args.temp,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    });
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !args.chat {
        out.write_all(text.as_bytes())?;
        out.flush()?;
    }
    let start = std::time::Instant::now();
    let mut first_token = None;
    let mut write_err = None;
    let n = generate_with(
        dec.as_mut(),
        &prompt,
        args.n_predict,
        &mut sampler,
        |id| tokenizer.is_end(id),
        |id| {
            first_token.get_or_insert_with(|| start.elapsed());
            if tokenizer.is_end(id) {
                return false;
            }
            // Raw bytes: a character split across tokens is completed by the next write.
            let r = out.write_all(tokenizer.piece(id)).and_then(|_| out.flush());
            match r {
                Ok(()) => true,
                Err(e) => {
                    write_err = Some(e);
                    false
                }
            }
        },
    )?;
    if let Some(e) = write_err {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("cannot write to stdout");
        }
    }
    let _ = writeln!(out);
    if args.stats {
        let total = start.elapsed().as_secs_f64();
        let pp = first_token.map_or(total, |d| d.as_secs_f64());
        eprintln!(
            "prompt: {} tokens, {:.1} tokens/s; generated: {} tokens, {:.1} tokens/s",
            prompt.len(),
            prompt.len() as f64 / pp,
            n,
            (n.saturating_sub(1)) as f64 / (total - pp).max(1e-9)
        );
    }
    Ok(())
}
