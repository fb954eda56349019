//! Prompt → tokens, and the timing loop behind `quern bench`.

use std::time::Instant;

use crate::error::RuntimeError;
use crate::model::{Model, Session};
use crate::sampler::Sampler;

/// A model with its conversation state: what [`generate_with`] and [`bench_with`]
/// drive. [`HostDecoder`] is [`Model::forward`] over a [`Session`];
/// [`crate::cuda::decode::DeviceModel`] runs the whole pass on the GPU.
pub trait Decoder {
    fn vocab(&self) -> usize;
    fn n_past(&self) -> usize;
    fn n_ctx(&self) -> usize;
    /// Forgets every position.
    fn clear(&mut self);
    /// The logits of the last token, or of every token when `all_logits`.
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>, RuntimeError>;
    /// One token in, the most likely next token out (greedy decoding).
    fn forward_argmax(&mut self, token: u32) -> Result<u32, RuntimeError> {
        let logits = self.forward(&[token], false)?;
        Ok(crate::sampler::argmax(&logits))
    }
}

/// [`Model::forward`] on the host-driven path (every op but the weight products
/// on the CPU).
pub struct HostDecoder<'a> {
    pub model: &'a Model,
    pub session: &'a mut Session,
}

impl Decoder for HostDecoder<'_> {
    fn vocab(&self) -> usize {
        self.model.config.vocab
    }
    fn n_past(&self) -> usize {
        self.session.n_past()
    }
    fn n_ctx(&self) -> usize {
        self.session.n_ctx()
    }
    fn clear(&mut self) {
        self.session.clear()
    }
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>, RuntimeError> {
        self.model.forward(self.session, tokens, all_logits)
    }
}

impl Decoder for crate::cuda::decode::DeviceModel<'_> {
    fn vocab(&self) -> usize {
        self.vocab()
    }
    fn n_past(&self) -> usize {
        self.n_past()
    }
    fn n_ctx(&self) -> usize {
        self.n_ctx()
    }
    fn clear(&mut self) {
        self.clear()
    }
    fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>, RuntimeError> {
        self.forward(tokens, all_logits)
    }
    fn forward_argmax(&mut self, token: u32) -> Result<u32, RuntimeError> {
        self.forward_argmax(token)
    }
}

/// Feeds `prompt` (one batched forward pass), then samples up to `max_tokens`,
/// calling `on_token` with each; stops early when `on_token` returns false or
/// `is_end` says so (the end token is still reported). Returns the token count.
pub fn generate(
    model: &Model,
    session: &mut Session,
    prompt: &[u32],
    max_tokens: usize,
    sampler: &mut Sampler,
    is_end: impl Fn(u32) -> bool,
    on_token: impl FnMut(u32) -> bool,
) -> Result<usize, RuntimeError> {
    let mut dec = HostDecoder { model, session };
    generate_with(&mut dec, prompt, max_tokens, sampler, is_end, on_token)
}

/// [`generate`] over any [`Decoder`].
pub fn generate_with(
    dec: &mut dyn Decoder,
    prompt: &[u32],
    max_tokens: usize,
    sampler: &mut Sampler,
    is_end: impl Fn(u32) -> bool,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<usize, RuntimeError> {
    if prompt.is_empty() {
        return Err(RuntimeError::ContextFull {
            tokens: 0,
            ctx: dec.n_ctx(),
        });
    }
    let mut logits = dec.forward(prompt, false)?;
    let mut produced = 0;
    while produced < max_tokens {
        let id = sampler.sample(&logits);
        produced += 1;
        if !on_token(id) || is_end(id) || produced == max_tokens {
            break;
        }
        if dec.n_past() >= dec.n_ctx() {
            break;
        }
        logits = dec.forward(&[id], false)?;
    }
    Ok(produced)
}

/// Mean and sample standard deviation of a series.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub mean: f64,
    pub sd: f64,
    pub samples: usize,
}

impl Stats {
    pub fn of(xs: &[f64]) -> Stats {
        let n = xs.len();
        if n == 0 {
            return Stats {
                mean: 0.0,
                sd: 0.0,
                samples: 0,
            };
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 {
            (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Stats {
            mean,
            sd,
            samples: n,
        }
    }
}

/// Tokens per second of prefill (`pp` tokens in one batch) and of decoding
/// (`tg` tokens one at a time), each from an empty cache, as llama-bench measures.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub pp_tokens: usize,
    pub tg_tokens: usize,
    pub pp: Option<Stats>,
    pub tg: Option<Stats>,
}

/// Token ids for timing: spread over the vocabulary, deterministic.
fn bench_tokens(vocab: usize, n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 7919 + 13) % vocab.max(1)) as u32)
        .collect()
}

pub fn bench(
    model: &Model,
    pp: usize,
    tg: usize,
    reps: usize,
) -> Result<BenchReport, RuntimeError> {
    let mut session = model.session(pp.max(tg).max(1));
    let mut dec = HostDecoder {
        model,
        session: &mut session,
    };
    bench_with(&mut dec, pp, tg, reps)
}

/// [`bench`] over any [`Decoder`] (whose context must hold `max(pp, tg)`).
/// Decoding feeds fixed tokens and asks only for the argmax of each step.
pub fn bench_with(
    dec: &mut dyn Decoder,
    pp: usize,
    tg: usize,
    reps: usize,
) -> Result<BenchReport, RuntimeError> {
    let vocab = dec.vocab();
    if pp.max(tg) > dec.n_ctx() {
        return Err(RuntimeError::ContextFull {
            tokens: pp.max(tg),
            ctx: dec.n_ctx(),
        });
    }
    let run_pp = |dec: &mut dyn Decoder| -> Result<f64, RuntimeError> {
        dec.clear();
        let toks = bench_tokens(vocab, pp);
        let t = Instant::now();
        dec.forward(&toks, false)?;
        Ok(pp as f64 / t.elapsed().as_secs_f64())
    };
    let run_tg = |dec: &mut dyn Decoder| -> Result<f64, RuntimeError> {
        dec.clear();
        let toks = bench_tokens(vocab, tg);
        let t = Instant::now();
        for &id in &toks {
            dec.forward_argmax(id)?;
        }
        Ok(tg as f64 / t.elapsed().as_secs_f64())
    };
    let mut report = BenchReport {
        pp_tokens: pp,
        tg_tokens: tg,
        pp: None,
        tg: None,
    };
    if pp > 0 {
        // One unrecorded run warms the page cache and the allocator.
        run_pp(dec)?;
        let xs = (0..reps)
            .map(|_| run_pp(dec))
            .collect::<Result<Vec<_>, _>>()?;
        report.pp = Some(Stats::of(&xs));
    }
    if tg > 0 {
        run_tg(dec)?;
        let xs = (0..reps)
            .map(|_| run_tg(dec))
            .collect::<Result<Vec<_>, _>>()?;
        report.tg = Some(Stats::of(&xs));
    }
    Ok(report)
}
