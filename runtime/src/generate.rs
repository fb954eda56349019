//! Prompt → tokens, and the timing loop behind `quern bench`.

use std::time::Instant;

use crate::error::RuntimeError;
use crate::model::{Model, Session};
use crate::sampler::Sampler;

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
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<usize, RuntimeError> {
    if prompt.is_empty() {
        return Err(RuntimeError::ContextFull {
            tokens: 0,
            ctx: session.n_ctx(),
        });
    }
    let mut logits = model.forward(session, prompt, false)?;
    let mut produced = 0;
    while produced < max_tokens {
        let id = sampler.sample(&logits);
        produced += 1;
        if !on_token(id) || is_end(id) || produced == max_tokens {
            break;
        }
        if session.n_past() >= session.n_ctx() {
            break;
        }
        logits = model.forward(session, &[id], false)?;
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
    let vocab = model.config.vocab;
    let mut session = model.session(pp.max(tg).max(1));
    if pp.max(tg) > session.n_ctx() {
        return Err(RuntimeError::ContextFull {
            tokens: pp.max(tg),
            ctx: session.n_ctx(),
        });
    }
    let run_pp = |session: &mut Session| -> Result<f64, RuntimeError> {
        session.clear();
        let toks = bench_tokens(vocab, pp);
        let t = Instant::now();
        model.forward(session, &toks, false)?;
        Ok(pp as f64 / t.elapsed().as_secs_f64())
    };
    let run_tg = |session: &mut Session| -> Result<f64, RuntimeError> {
        session.clear();
        let toks = bench_tokens(vocab, tg);
        let t = Instant::now();
        for &id in &toks {
            model.forward(session, &[id], false)?;
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
        run_pp(&mut session)?;
        let xs = (0..reps)
            .map(|_| run_pp(&mut session))
            .collect::<Result<Vec<_>, _>>()?;
        report.pp = Some(Stats::of(&xs));
    }
    if tg > 0 {
        run_tg(&mut session)?;
        let xs = (0..reps)
            .map(|_| run_tg(&mut session))
            .collect::<Result<Vec<_>, _>>()?;
        report.tg = Some(Stats::of(&xs));
    }
    Ok(report)
}
