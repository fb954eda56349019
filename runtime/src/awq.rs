//! AWQ calibration: runs a float model on calibration text with an observer on
//! every block's matrix inputs, then searches each block's activation-aware
//! scales and clipping ([`quern_quant::awq`]) and returns them as [`Folds`] for
//! the AWQ or GGUF writer.
//!
//! One float forward pass over the calibration samples serves every block:
//! AutoAWQ feeds block `i + 1` the output of block `i` after its scales are
//! applied, and scaling is exact in float, so the unscaled model's activations
//! are the same (only the clipping of earlier blocks, a small change, is not
//! seen by later ones). Memory stays bounded: per block and per shared input
//! the observer keeps the running sum of |x| over all tokens and a strided
//! subsample of `loss_tokens` tokens in f16, from which the search builds the
//! Gram matrix its loss needs. An 8B Llama (hidden 4096, ffn 14336, 32 blocks)
//! with the default 4096 loss tokens keeps 4096 × (3·4096 + 14336) × 2 bytes ≈
//! 218 MB per block, 7 GB in all, plus one 14336² f32 Gram matrix (0.8 GB) at a
//! time during the search.

use half::f16;
use quern_quant::awq::clip::{group_blocks, search_clip, ClipOptions};
use quern_quant::awq::fold::{Clip, Folds};
use quern_quant::awq::gemm::gram;
use quern_quant::awq::scale::{search_scale, InputStats, Linear, ScaleOptions, ScaleResult};
use quern_quant::awq::{AwqSearchError, FakeQuant};

use crate::error::RuntimeError;
use crate::model::Model;
use crate::observe::Observer;

#[derive(Debug, Clone)]
pub struct AwqCalibOptions {
    /// Calibration samples of `seq_len` tokens (AutoAWQ: 128 × 512).
    pub samples: usize,
    pub seq_len: usize,
    /// Tokens (strided over all samples) the search's loss is measured on.
    pub loss_tokens: usize,
    pub scale: ScaleOptions,
    /// Search per-group clipping (AWQ 4-bit output only).
    pub clip: bool,
}

impl Default for AwqCalibOptions {
    fn default() -> Self {
        AwqCalibOptions {
            samples: 128,
            seq_len: 512,
            loss_tokens: 4096,
            scale: ScaleOptions::default(),
            clip: true,
        }
    }
}

/// How the search will quantise one linear (GGUF name).
#[derive(Debug, Clone)]
pub struct Target {
    pub fake_quant: FakeQuant,
    /// Importance per input column (an imatrix), for weighted quantisers.
    pub importance: Option<Vec<f32>>,
}

/// What the search did for one group of linears sharing an input.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupReport {
    pub layer: usize,
    /// "qkv", "o", "gate_up" or "down".
    pub group: &'static str,
    pub alpha: Option<f32>,
    pub loss_unscaled: f64,
    pub loss: f64,
    /// Summed clip-search error before and after clipping, over the group's
    /// clipped linears (0 when not clipped).
    pub clip_err_unclipped: f64,
    pub clip_err: f64,
}

#[derive(Debug, Clone)]
pub struct AwqCalibration {
    pub folds: Folds,
    pub groups: Vec<GroupReport>,
    pub tokens: usize,
}

/// The four shared inputs of a block.
const QKV: usize = 0;
const O: usize = 1;
const GATE_UP: usize = 2;
const DOWN: usize = 3;

struct InputCapture {
    width: usize,
    abs_sum: Vec<f64>,
    count: usize,
    /// Subsampled tokens, f16, token-major.
    rows: Vec<f16>,
}

struct Capture {
    layers: Vec<[Option<InputCapture>; 4]>,
    stride: usize,
    /// Tokens seen so far in the current forward call's sample (global index base).
    base: usize,
    /// Whether o's input is needed (o is folded into v only without GQA).
    want_o: bool,
}

impl Capture {
    fn record(&mut self, layer: usize, which: usize, x: &[f32], n: usize) {
        let Some(slot) = self.layers.get_mut(layer) else {
            return;
        };
        let width = x.len() / n.max(1);
        let cap = slot[which].get_or_insert_with(|| InputCapture {
            width,
            abs_sum: vec![0.0; width],
            count: 0,
            rows: Vec::new(),
        });
        if cap.width != width {
            return;
        }
        for (t, row) in x.chunks_exact(width).enumerate() {
            for (s, v) in cap.abs_sum.iter_mut().zip(row) {
                *s += v.abs() as f64;
            }
            if (self.base + t).is_multiple_of(self.stride) {
                cap.rows.extend(row.iter().map(|&v| f16::from_f32(v)));
            }
        }
        cap.count += n;
    }
}

fn parse_name(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("blk.")?;
    let (layer, local) = rest.split_once('.')?;
    Some((layer.parse().ok()?, local))
}

impl Observer for Capture {
    fn linear_input(&mut self, tensors: &[&str], x: &[f32], n_tokens: usize) {
        let Some((layer, local)) = tensors.first().and_then(|t| parse_name(t)) else {
            return;
        };
        let which = match local {
            "attn_q.weight" => QKV,
            "attn_output.weight" if self.want_o => O,
            "ffn_gate.weight" => GATE_UP,
            "ffn_down.weight" => DOWN,
            _ => return,
        };
        self.record(layer, which, x, n_tokens);
    }
}

fn search_err(tensor: &str, e: AwqSearchError) -> RuntimeError {
    RuntimeError::Shape {
        tensor: tensor.to_string(),
        what: e.to_string(),
    }
}

/// Calibration tokens: `samples` consecutive windows of `seq_len` tokens.
pub fn calibration_tokens(
    model: &Model,
    text: &str,
    samples: usize,
    seq_len: usize,
) -> Result<Vec<Vec<u32>>, RuntimeError> {
    if samples == 0 || seq_len == 0 {
        return Err(RuntimeError::BadModel {
            file: model.path().to_path_buf(),
            what: "AWQ calibration needs at least one sample of at least one token".into(),
        });
    }
    let tokens = model.tokenizer()?.encode(text, false)?;
    let need = samples * seq_len;
    if tokens.len() < need {
        return Err(RuntimeError::CalibrationTooShort {
            tokens: tokens.len(),
            samples,
            seq_len,
        });
    }
    Ok(tokens[..need]
        .chunks_exact(seq_len)
        .map(<[u32]>::to_vec)
        .collect())
}

/// Runs the calibration samples through `model` and searches every block.
/// `target(name)` says how each linear (GGUF name) will be stored; `progress`
/// is told `(stage, done, total)` with stage "forward" then "search".
pub fn calibrate_awq(
    model: &Model,
    samples: &[Vec<u32>],
    opts: &AwqCalibOptions,
    target: &dyn Fn(&str) -> Target,
    progress: &dyn Fn(&str, usize, usize),
) -> Result<AwqCalibration, RuntimeError> {
    let c = &model.config;
    let total: usize = samples.iter().map(Vec::len).sum();
    let stride = total.div_ceil(opts.loss_tokens.max(1)).max(1);
    let mut cap = Capture {
        layers: (0..c.n_layer).map(|_| [None, None, None, None]).collect(),
        stride,
        base: 0,
        want_o: c.n_kv_head == c.n_head,
    };
    for (i, s) in samples.iter().enumerate() {
        let mut session = model.session(s.len());
        model.forward_observed(&mut session, s, false, &mut cap)?;
        cap.base += s.len();
        progress("forward", i + 1, samples.len());
    }

    let mut folds = Folds::default();
    let mut groups = Vec::new();
    for layer in 0..c.n_layer {
        let inputs = std::mem::take(&mut cap.layers[layer]);
        groups.extend(search_block(
            model, layer, inputs, opts, target, &mut folds,
        )?);
        progress("search", layer + 1, c.n_layer);
    }
    Ok(AwqCalibration {
        folds,
        groups,
        tokens: total,
    })
}

struct Prepared {
    mean_abs: Vec<f32>,
    gram: Vec<f32>,
    tokens: usize,
}

fn prepare(cap: InputCapture) -> Prepared {
    let n = cap.width;
    let tokens = cap.rows.len() / n.max(1);
    let x: Vec<f32> = cap.rows.iter().map(|v| v.to_f32()).collect();
    Prepared {
        mean_abs: cap
            .abs_sum
            .iter()
            .map(|s| (s / cap.count.max(1) as f64) as f32)
            .collect(),
        gram: gram(&x, tokens, n),
        tokens,
    }
}

fn search_block(
    model: &Model,
    layer: usize,
    inputs: [Option<InputCapture>; 4],
    opts: &AwqCalibOptions,
    target: &dyn Fn(&str) -> Target,
    folds: &mut Folds,
) -> Result<Vec<GroupReport>, RuntimeError> {
    let c = &model.config;
    let n = |s: &str| format!("blk.{layer}.{s}");
    let has = |s: &str| model.source().tensor(&n(s)).is_some();
    // (group, input, linears, producers of the input)
    let mut plan: Vec<(&'static str, usize, Vec<String>, Vec<String>)> = vec![(
        "qkv",
        QKV,
        vec![n("attn_q.weight"), n("attn_k.weight"), n("attn_v.weight")],
        vec![n("attn_norm.weight")],
    )];
    // o after v only when v's rows are o's columns (no grouped-query attention).
    if c.n_kv_head == c.n_head {
        let mut prod = vec![n("attn_v.weight")];
        if has("attn_v.bias") {
            prod.push(n("attn_v.bias"));
        }
        plan.push(("o", O, vec![n("attn_output.weight")], prod));
    }
    plan.push((
        "gate_up",
        GATE_UP,
        vec![n("ffn_gate.weight"), n("ffn_up.weight")],
        vec![n("ffn_norm.weight")],
    ));
    let mut prod = vec![n("ffn_up.weight")];
    if has("ffn_up.bias") {
        prod.push(n("ffn_up.bias"));
    }
    plan.push(("down", DOWN, vec![n("ffn_down.weight")], prod));

    let mut inputs = inputs.map(|i| i.map(prepare));
    let mut reports = Vec::new();
    let mut clip_jobs = Vec::new();
    for (group, which, linears, producers) in plan {
        let Some(stats) = inputs[which].as_ref() else {
            continue;
        };
        let n_in = stats.mean_abs.len();
        let weights: Vec<(Vec<f32>, usize)> = linears
            .iter()
            .map(|l| model.matrix_f32(l))
            .collect::<Result<_, _>>()?;
        let targets: Vec<Target> = linears.iter().map(|l| target(l)).collect();
        let lin: Vec<Linear> = weights
            .iter()
            .zip(&targets)
            .map(|((w, rows), t)| Linear {
                weight: w,
                rows: *rows,
                importance: t.importance.as_deref(),
                fake_quant: t.fake_quant,
            })
            .collect();
        let istats = InputStats {
            mean_abs: &stats.mean_abs,
            gram: &stats.gram,
            tokens: stats.tokens,
        };
        let r: ScaleResult = search_scale(&lin, n_in, &istats, &opts.scale)
            .map_err(|e| search_err(&linears[0], e))?;
        let lrefs: Vec<&str> = linears.iter().map(String::as_str).collect();
        let prefs: Vec<&str> = producers.iter().map(String::as_str).collect();
        if r.alpha.is_some() {
            folds.add_scale(&r.scales, &lrefs, &prefs);
        }
        reports.push(GroupReport {
            layer,
            group,
            alpha: r.alpha,
            loss_unscaled: r.loss_unscaled,
            loss: r.loss,
            clip_err_unclipped: 0.0,
            clip_err: 0.0,
        });
        clip_jobs.push((reports.len() - 1, which, linears, targets));
    }

    // Clipping, on the weights as they will be stored (all of the block's scales
    // folded in); AutoAWQ leaves q and k unclipped.
    if opts.clip {
        for (report, which, linears, targets) in clip_jobs {
            let Some(stats) = inputs[which].as_ref() else {
                continue;
            };
            let n_in = stats.mean_abs.len();
            for (l, t) in linears.iter().zip(&targets) {
                let FakeQuant::Awq4 { group } = t.fake_quant else {
                    continue;
                };
                if l.ends_with("attn_q.weight") || l.ends_with("attn_k.weight") {
                    continue;
                }
                let (mut w, _) = model.matrix_f32(l)?;
                folds
                    .apply(l, &mut w, n_in)
                    .map_err(|e| RuntimeError::Shape {
                        tensor: l.clone(),
                        what: e.to_string(),
                    })?;
                let s = folds
                    .get(l)
                    .and_then(|f| f.col_mul.clone())
                    .unwrap_or_else(|| vec![1.0; n_in]);
                let blocks = group_blocks(&stats.gram, n_in, group, &s);
                let r = search_clip(&w, n_in, group, &blocks, &ClipOptions::default())
                    .map_err(|e| search_err(l, e))?;
                reports[report].clip_err_unclipped += r.err_unclipped;
                reports[report].clip_err += r.err;
                folds.add_clip(l, Clip { group, max: r.max });
            }
        }
    }
    inputs.iter_mut().for_each(|i| *i = None);
    Ok(reports)
}
