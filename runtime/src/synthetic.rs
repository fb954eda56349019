//! Models of a real shape with random weights, for speed measurements where the
//! real weights cannot go (`quern bench --synthetic llama-8b`).
//!
//! Each matrix gets the type llama.cpp's recipe for the mix gives it
//! (`quern_quant::mix`). Its rows are 16 distinct rows of random values
//! (uniform, scaled by 1/√row length so activations stay in range) quantised by
//! our quantisers, repeated down the matrix: quantising all 8 B weights would
//! take minutes, and a GEMV's speed does not depend on which rows repeat (every
//! row is still read from its own place in memory). Norm weights are 1; the
//! Llama 3.1 rope scaling factors are written as llama.cpp's converter does.
//!
//! `AWQ` models stand for an AutoAWQ GEMM folder as the runtime loads it: each
//! block linear is quantised by our AutoAWQ-style round-to-nearest quantiser
//! (4 bits, a scale and zero point per group) and stored as the Q5_0 blocks the
//! AWQ loader repacks such a linear into (`source::repack_awq_q5_0`, the same
//! function); embeddings and the output projection stay F16, as AutoAWQ leaves
//! them. The device therefore holds what it holds for a real AWQ folder.

use std::io::{BufWriter, Write};
use std::path::Path;

use quern_formats::gguf::{TensorSpec, Value, Writer};
use quern_formats::GgmlType;
use quern_quant::mix::{plan, Mix, TensorContext};

use crate::error::RuntimeError;

/// How a synthetic model's matrices are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// A GGUF quantisation mix, each matrix typed by llama.cpp's recipe.
    Mix(Mix),
    /// An AutoAWQ GEMM model with this group size, as the runtime loads it.
    Awq { group: usize },
}

impl Weights {
    /// A mix name (`Q4_K_M`, `Q8_0`, `F16`, …), `AWQ` (group 128, AutoAWQ's
    /// default) or `AWQ-G<n>` for another group size (a multiple of 32).
    pub fn parse(s: &str) -> Result<Weights, String> {
        let t = s.trim().to_ascii_uppercase();
        if t == "AWQ" {
            return Ok(Weights::Awq { group: 128 });
        }
        if let Some(g) = t.strip_prefix("AWQ-G") {
            return match g.parse::<usize>() {
                Ok(group) if group > 0 && group.is_multiple_of(32) => Ok(Weights::Awq { group }),
                _ => Err(format!(
                    "{s:?}: the AWQ group size must be a positive multiple of 32"
                )),
            };
        }
        Mix::parse(s)
            .map(Weights::Mix)
            .map_err(|e| format!("{e}, AWQ, AWQ-G<group>"))
    }

    pub fn name(&self) -> String {
        match self {
            Weights::Mix(m) => m.name().to_string(),
            Weights::Awq { group: 128 } => "AWQ".to_string(),
            Weights::Awq { group } => format!("AWQ-G{group}"),
        }
    }
}

/// The shape of a Llama-family model.
#[derive(Debug, Clone)]
pub struct Shape {
    pub name: &'static str,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub n_ff: usize,
    pub vocab: usize,
    pub rope_base: f32,
    pub n_ctx: usize,
}

impl Shape {
    /// Shapes by name: `llama-8b` (Llama-3-8B: 4096 wide, 32 layers, 32 query
    /// and 8 KV heads of 128, 14336 feed-forward, 128256 tokens).
    pub fn named(name: &str) -> Option<Shape> {
        match name {
            "llama-8b" => Some(Shape {
                name: "llama-8b",
                n_embd: 4096,
                n_layer: 32,
                n_head: 32,
                n_kv_head: 8,
                n_ff: 14336,
                vocab: 128256,
                rope_base: 500000.0,
                n_ctx: 8192,
            }),
            _ => None,
        }
    }

    pub fn names() -> &'static [&'static str] {
        &["llama-8b"]
    }
}

/// A splitmix64 stream of floats in [-1, 1).
struct Rng(u64);
impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

const DISTINCT_ROWS: usize = 16;

/// `uniq` repeated (the last copy cut short) to `len` bytes.
fn repeated(uniq: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let take = (len - out.len()).min(uniq.len());
        out.extend_from_slice(&uniq[..take]);
    }
    out
}

/// `rows × cols` of `ty`: [`DISTINCT_ROWS`] quantised random rows, repeated.
fn matrix(
    name: &str,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    seed: u64,
) -> Result<Vec<u8>, RuntimeError> {
    let rb = cols / ty.block_size() * ty.type_size();
    let mut rng = Rng(seed);
    let scale = 1.0 / (cols as f32).sqrt();
    let distinct = DISTINCT_ROWS.min(rows);
    let mut uniq = vec![0u8; rb * distinct];
    let mut row = vec![0f32; cols];
    for d in uniq.chunks_exact_mut(rb) {
        for v in row.iter_mut() {
            *v = rng.next_f32() * scale;
        }
        quern_quant::quantize_row(ty, &row, None, d).map_err(|source| RuntimeError::Quant {
            tensor: name.to_string(),
            source,
        })?;
    }
    Ok(repeated(&uniq, rb * rows))
}

/// `rows × cols` of Q5_0 blocks holding an AWQ linear: [`DISTINCT_ROWS`]
/// random rows quantised as AutoAWQ does, repacked by the AWQ loader's own
/// function, repeated.
fn awq_matrix(
    name: &str,
    rows: usize,
    cols: usize,
    group: usize,
    seed: u64,
) -> Result<Vec<u8>, RuntimeError> {
    let bad = |what: String| RuntimeError::Synthetic {
        tensor: name.to_string(),
        what,
    };
    let mut rng = Rng(seed);
    let scale = 1.0 / (cols as f32).sqrt();
    let distinct = DISTINCT_ROWS.min(rows);
    let weight: Vec<f32> = (0..distinct * cols)
        .map(|_| rng.next_f32() * scale)
        .collect();
    let linear = quern_formats::awq::quantize_rtn(&weight, cols, distinct, group)
        .map_err(|e| bad(e.to_string()))?;
    let uniq = crate::source::repack_awq_q5_0(&linear).map_err(bad)?;
    let rb = uniq.len() / distinct;
    Ok(repeated(&uniq, rb * rows))
}

/// Llama 3.1's rope frequency divisors (factor 8, low/high frequency factors 1
/// and 4, 8192 original positions), one per rotated pair.
fn llama3_freq_factors(head_dim: usize, base: f32) -> Vec<f32> {
    let (factor, low, high, orig) = (8.0f64, 1.0f64, 4.0f64, 8192.0f64);
    (0..head_dim / 2)
        .map(|i| {
            let freq = (base as f64).powf(-2.0 * i as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < orig / high {
                1.0
            } else if wavelen > orig / low {
                factor
            } else {
                let smooth = (orig / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

/// Writes a GGUF file of `shape` stored as `weights` say to `path`; returns
/// its size.
pub fn write_model(shape: &Shape, weights: Weights, path: &Path) -> Result<u64, RuntimeError> {
    let s = shape;
    let hd = s.n_embd / s.n_head;
    let kv = s.n_kv_head * hd;
    // (name, row length, rows); rows 0 marks a vector of `row length`.
    let mut tensors: Vec<(String, usize, usize)> = vec![
        ("token_embd.weight".into(), s.n_embd, s.vocab),
        ("rope_freqs.weight".into(), hd / 2, 0),
    ];
    for i in 0..s.n_layer {
        for (n, k, o) in [
            ("attn_norm", s.n_embd, 0),
            ("attn_q", s.n_embd, s.n_embd),
            ("attn_k", s.n_embd, kv),
            ("attn_v", s.n_embd, kv),
            ("attn_output", s.n_embd, s.n_embd),
            ("ffn_norm", s.n_embd, 0),
            ("ffn_gate", s.n_embd, s.n_ff),
            ("ffn_up", s.n_embd, s.n_ff),
            ("ffn_down", s.n_ff, s.n_embd),
        ] {
            tensors.push((format!("blk.{i}.{n}.weight"), k, o));
        }
    }
    tensors.push(("output_norm.weight".into(), s.n_embd, 0));
    tensors.push(("output.weight".into(), s.n_embd, s.vocab));
    let ctx: Vec<TensorContext> = tensors
        .iter()
        .map(|(name, k, o)| TensorContext {
            name: name.clone(),
            shape: if *o == 0 {
                vec![*k as u64]
            } else {
                vec![*k as u64, *o as u64]
            },
            n_layers: s.n_layer,
            n_heads: s.n_head,
            n_kv_heads: s.n_kv_head,
            arch: "llama".into(),
            n_experts: 0,
            tied_output: false,
        })
        .collect();
    let types: Vec<GgmlType> = match weights {
        Weights::Mix(mix) => plan(mix, &ctx)
            .into_iter()
            .zip(&tensors)
            .map(|(c, (_, _, o))| if *o == 0 { GgmlType::F32 } else { c.ty })
            .collect(),
        Weights::Awq { group } => {
            if !s.n_embd.is_multiple_of(group) || !s.n_ff.is_multiple_of(group) {
                return Err(RuntimeError::Synthetic {
                    tensor: "blk.0".into(),
                    what: format!(
                        "AWQ group {group} does not divide the widths {} and {}",
                        s.n_embd, s.n_ff
                    ),
                });
            }
            tensors
                .iter()
                .map(|(name, _, o)| match (*o, name.starts_with("blk.")) {
                    (0, _) => GgmlType::F32,
                    (_, true) => GgmlType::Q5_0,
                    (_, false) => GgmlType::F16,
                })
                .collect()
        }
    };
    let specs: Vec<TensorSpec> = ctx
        .iter()
        .zip(&types)
        .map(|(c, &ty)| TensorSpec::new(c.name.clone(), c.shape.clone(), ty))
        .collect();
    let a = "llama";
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        (
            "general.name".into(),
            Value::String(format!("synthetic {} {}", s.name, weights.name())),
        ),
        (format!("{a}.context_length"), Value::U32(s.n_ctx as u32)),
        (format!("{a}.embedding_length"), Value::U32(s.n_embd as u32)),
        (format!("{a}.block_count"), Value::U32(s.n_layer as u32)),
        (
            format!("{a}.feed_forward_length"),
            Value::U32(s.n_ff as u32),
        ),
        (
            format!("{a}.attention.head_count"),
            Value::U32(s.n_head as u32),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            Value::U32(s.n_kv_head as u32),
        ),
        (format!("{a}.rope.dimension_count"), Value::U32(hd as u32)),
        (format!("{a}.rope.freq_base"), Value::F32(s.rope_base)),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
    ];
    let io = |e: std::io::Error| RuntimeError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let gguf = RuntimeError::Gguf;
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w =
        Writer::new(BufWriter::with_capacity(8 << 20, file), &meta, &specs).map_err(gguf)?;
    // Matrices of one (type, shape) share their distinct rows' seed: only the
    // bytes' positions matter for speed.
    for (i, ((name, k, o), &ty)) in tensors.iter().zip(&types).enumerate() {
        let data: Vec<u8> = if name == "rope_freqs.weight" {
            llama3_freq_factors(hd, s.rope_base)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect()
        } else if *o == 0 {
            1f32.to_le_bytes().repeat(*k)
        } else {
            match weights {
                Weights::Awq { group } if ty == GgmlType::Q5_0 => {
                    awq_matrix(name, *o, *k, group, 0x5eed + i as u64)?
                }
                _ => matrix(name, ty, *o, *k, 0x5eed + i as u64)?,
            }
        };
        w.write_tensor(name, &data).map_err(gguf)?;
    }
    let mut out = w.finish().map_err(gguf)?;
    out.flush().map_err(io)?;
    let len = out.get_ref().metadata().map_err(io)?.len();
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CpuBackend, Model};

    /// Weight names parse to what they say; bad AWQ groups are refused.
    #[test]
    fn weights_parse() {
        assert_eq!(Weights::parse("awq"), Ok(Weights::Awq { group: 128 }));
        assert_eq!(Weights::parse("AWQ-G64"), Ok(Weights::Awq { group: 64 }));
        assert_eq!(
            Weights::parse("q4_k_m"),
            Ok(Weights::Mix(Mix::parse("Q4_K_M").expect("mix")))
        );
        assert!(Weights::parse("AWQ-G48").is_err());
        assert!(Weights::parse("AWQ-G0").is_err());
        let e = Weights::parse("Q9").expect_err("unknown");
        assert!(e.contains("AWQ"), "{e}");
    }

    /// A small shape written for each of four kinds opens as a model whose
    /// matrices have the mix's types, and runs to finite logits.
    #[test]
    fn synthetic_models_open_and_run() {
        let shape = Shape {
            name: "tiny",
            n_embd: 256,
            n_layer: 2,
            n_head: 4,
            n_kv_head: 2,
            n_ff: 512,
            vocab: 300,
            rope_base: 500000.0,
            n_ctx: 64,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        for (mix, ty) in [
            ("Q4_K_M", GgmlType::Q4K),
            ("Q8_0", GgmlType::Q8_0),
            ("F16", GgmlType::F16),
            ("AWQ-G64", GgmlType::Q5_0),
        ] {
            let path = dir.path().join(format!("{mix}.gguf"));
            let weights = Weights::parse(mix).expect("weights");
            assert_eq!(weights.name(), mix);
            let len = write_model(&shape, weights, &path).expect("write");
            assert_eq!(len, std::fs::metadata(&path).expect("stat").len());
            let model = Model::open(&path, Box::new(CpuBackend::new())).expect("open");
            assert_eq!(model.config.vocab, 300);
            assert_eq!(model.config.n_kv_head, 2);
            assert!(model.rope_freq_factors().is_some());
            let types = model.matrices();
            assert!(types
                .iter()
                .any(|(n, t)| n.ends_with("attn_q.weight") && *t == ty));
            if matches!(weights, Weights::Awq { .. }) {
                // AutoAWQ leaves the output projection in f16.
                assert!(types
                    .iter()
                    .any(|(n, t)| *n == "output.weight" && *t == GgmlType::F16));
                // Each 64-wide group of a row holds at most 16 levels of one
                // scale: (q - zero) · scale with q in 0..=15.
                let (w, _) = model.matrix_f32("blk.1.ffn_down.weight").expect("matrix");
                for g in w[..512].chunks_exact(64) {
                    let mut levels: Vec<f32> = g.to_vec();
                    levels.sort_by(f32::total_cmp);
                    levels.dedup();
                    assert!(levels.len() <= 16 && levels.len() > 2, "{levels:?}");
                }
            }
            let mut s = model.session(16);
            let logits = model
                .forward(&mut s, &[1, 77, 299], false)
                .expect("forward");
            assert_eq!(logits.len(), 300);
            assert!(logits.iter().all(|v| v.is_finite()));
            // Random weights: the logits are not all equal.
            let (lo, hi) = logits
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            assert!(hi - lo > 1e-3, "logits span {lo}..{hi}");
        }
    }
}
