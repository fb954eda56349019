//! Llama-family models (`llama`, `qwen2`, `qwen3`) read from a GGUF file, a
//! Hugging Face safetensors folder or an AWQ folder (see [`crate::source`]).
//!
//! Weights stay in the memory map: each matrix is a [`WeightView`] over the
//! file's bytes, handed to the backend as it is. Only the small vectors (norms,
//! biases, rope frequency factors) are expanded to f32 at load.
//!
//! Rope: llama.cpp's converter permutes the q/k rows of Llama checkpoints so that
//! rotated pairs are adjacent ("normal" mode); Qwen2 and Qwen3 GGUFs, and every
//! Hugging Face folder, keep Hugging Face's order and rotate the two halves of
//! each head ("NeoX" mode).

use std::path::{Path, PathBuf};

use quern_formats::gguf::{GgufFile, Value};
use quern_formats::GgmlType;

use crate::backend::{Backend, WeightView};
use crate::error::RuntimeError;
use crate::observe::{NoObserver, Observer};
use crate::source::{Loc, Source, TensorRef};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }
}

/// Which elements of a head rope rotates together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeMode {
    /// Pairs `(2i, 2i + 1)`.
    Adjacent,
    /// Pairs `(i, i + n_rot / 2)`.
    Neox,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub arch: Arch,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub n_rot: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// Positions are divided by this (linear rope scaling; 1 when absent).
    pub rope_scale: f32,
    pub rope_mode: RopeMode,
    pub n_ctx_train: usize,
    pub vocab: usize,
}

/// A matrix in the file, located by byte range so the model need not borrow the map.
#[derive(Debug, Clone)]
struct Matrix {
    name: String,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    loc: Loc,
    len: usize,
}

struct Layer {
    /// GGUF names of the matrices sharing each input, for observers.
    names: LayerNames,
    attn_norm: Vec<f32>,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    wo: Matrix,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

/// One block's weights, borrowed from the model ([`Model::layer_weights`]).
pub struct LayerWeights<'a> {
    pub attn_norm: &'a [f32],
    pub wq: WeightView<'a>,
    pub wk: WeightView<'a>,
    pub wv: WeightView<'a>,
    pub wo: WeightView<'a>,
    pub bq: Option<&'a [f32]>,
    pub bk: Option<&'a [f32]>,
    pub bv: Option<&'a [f32]>,
    pub q_norm: Option<&'a [f32]>,
    pub k_norm: Option<&'a [f32]>,
    pub ffn_norm: &'a [f32],
    pub gate: WeightView<'a>,
    pub up: WeightView<'a>,
    pub down: WeightView<'a>,
}

pub struct Model {
    source: Source,
    path: PathBuf,
    pub config: Config,
    embd: Matrix,
    output: Matrix,
    output_norm: Vec<f32>,
    /// Per-frequency divisors of the rope angle (Llama 3 scaling).
    rope_freqs: Option<Vec<f32>>,
    layers: Vec<Layer>,
    backend: Box<dyn Backend>,
}

/// The per-conversation state: the KV cache and how many positions it holds.
pub struct Session {
    /// Per layer: keys and values, `n_past * kv_dim` each, grown as tokens arrive.
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    n_past: usize,
    n_ctx: usize,
}

impl Session {
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Forgets every position (the next forward starts at position 0).
    pub fn clear(&mut self) {
        self.n_past = 0;
        for l in self.k.iter_mut().chain(self.v.iter_mut()) {
            l.clear();
        }
    }
}

fn u(file: &Source, key: &str) -> Result<usize, RuntimeError> {
    file.get(key)
        .and_then(|v| v.as_u64())
        .map(|v| v as usize)
        .ok_or_else(|| RuntimeError::MissingKey {
            file: file.path().to_path_buf(),
            key: key.to_string(),
        })
}

fn f(file: &Source, key: &str) -> Option<f32> {
    file.get(key).and_then(|v| v.as_f64()).map(|v| v as f32)
}

impl Config {
    /// The shape and hyper-parameters from the source's (GGUF-named) metadata.
    pub fn from_source(file: &Source) -> Result<Config, RuntimeError> {
        let path = file.path().to_path_buf();
        let arch_name = file
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| RuntimeError::MissingKey {
                file: path.clone(),
                key: "general.architecture".into(),
            })?;
        let (arch, rope_mode) = match arch_name {
            "llama" if file.qk_permuted() => (Arch::Llama, RopeMode::Adjacent),
            "llama" => (Arch::Llama, RopeMode::Neox),
            "qwen2" => (Arch::Qwen2, RopeMode::Neox),
            "qwen3" => (Arch::Qwen3, RopeMode::Neox),
            other => {
                return Err(RuntimeError::UnsupportedArch {
                    file: path,
                    arch: other.to_string(),
                })
            }
        };
        let a = arch_name;
        let n_embd = u(file, &format!("{a}.embedding_length"))?;
        let n_head = u(file, &format!("{a}.attention.head_count"))?;
        let n_kv_head = u(file, &format!("{a}.attention.head_count_kv")).unwrap_or(n_head);
        let head_dim = u(file, &format!("{a}.attention.key_length"))
            .ok()
            .unwrap_or(n_embd.checked_div(n_head).unwrap_or(0));
        let n_rot = u(file, &format!("{a}.rope.dimension_count")).unwrap_or(head_dim);
        let vocab = file
            .tensor("token_embd.weight")
            .and_then(|t| t.shape.get(1).copied())
            .ok_or_else(|| RuntimeError::MissingTensor {
                file: path.clone(),
                tensor: "token_embd.weight".into(),
            })? as usize;
        let rope_scale = match file
            .get(&format!("{a}.rope.scaling.type"))
            .and_then(|v| v.as_str())
        {
            Some("linear") => f(file, &format!("{a}.rope.scaling.factor")).unwrap_or(1.0),
            _ => 1.0,
        };
        let config = Config {
            arch,
            n_embd,
            n_layer: u(file, &format!("{a}.block_count"))?,
            n_ff: u(file, &format!("{a}.feed_forward_length"))?,
            n_head,
            n_kv_head,
            head_dim,
            n_rot,
            rms_eps: f(file, &format!("{a}.attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
            rope_base: f(file, &format!("{a}.rope.freq_base")).unwrap_or(10000.0),
            rope_scale: if rope_scale > 0.0 { rope_scale } else { 1.0 },
            rope_mode,
            n_ctx_train: u(file, &format!("{a}.context_length")).unwrap_or(2048),
            vocab,
        };
        let bad = |what: String| RuntimeError::BadModel {
            file: path.clone(),
            what,
        };
        if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 {
            return Err(bad(format!(
                "{n_head} attention heads cannot share {n_kv_head} KV heads"
            )));
        }
        if head_dim == 0 || n_rot > head_dim || !n_rot.is_multiple_of(2) {
            return Err(bad(format!(
                "rope over {n_rot} of {head_dim} head dimensions"
            )));
        }
        Ok(config)
    }
}

impl Model {
    /// Opens `path` and checks every tensor the forward pass reads against the
    /// metadata and the backend's kernels.
    pub fn open(path: &Path, backend: Box<dyn Backend>) -> Result<Model, RuntimeError> {
        let file = Source::open(path)?;
        let config = Config::from_source(&file)?;
        let path = path.to_path_buf();
        let c = &config;
        let (q_dim, kv_dim) = (c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
        let loader = Loader {
            file: &file,
            path: &path,
            backend: backend.as_ref(),
        };
        let embd = loader.matrix("token_embd.weight", c.n_embd, c.vocab, false)?;
        let output = if file.tensor("output.weight").is_some() {
            loader.matrix("output.weight", c.n_embd, c.vocab, true)?
        } else {
            // Tied embeddings: the output projection is the embedding matrix.
            loader.matrix("token_embd.weight", c.n_embd, c.vocab, true)?
        };
        let output_norm = loader.vector("output_norm.weight", c.n_embd)?;
        let rope_freqs = match file.tensor("rope_freqs.weight") {
            Some(_) => Some(loader.vector("rope_freqs.weight", c.n_rot / 2)?),
            None => None,
        };
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            let opt_vec = |s: &str, len: usize| -> Result<Option<Vec<f32>>, RuntimeError> {
                let name = n(s);
                match file.tensor(&name) {
                    Some(_) => loader.vector(&name, len).map(Some),
                    None => Ok(None),
                }
            };
            let layer = Layer {
                names: LayerNames::new(i),
                attn_norm: loader.vector(&n("attn_norm.weight"), c.n_embd)?,
                wq: loader.matrix(&n("attn_q.weight"), c.n_embd, q_dim, true)?,
                wk: loader.matrix(&n("attn_k.weight"), c.n_embd, kv_dim, true)?,
                wv: loader.matrix(&n("attn_v.weight"), c.n_embd, kv_dim, true)?,
                wo: loader.matrix(&n("attn_output.weight"), q_dim, c.n_embd, true)?,
                bq: opt_vec("attn_q.bias", q_dim)?,
                bk: opt_vec("attn_k.bias", kv_dim)?,
                bv: opt_vec("attn_v.bias", kv_dim)?,
                q_norm: opt_vec("attn_q_norm.weight", c.head_dim)?,
                k_norm: opt_vec("attn_k_norm.weight", c.head_dim)?,
                ffn_norm: loader.vector(&n("ffn_norm.weight"), c.n_embd)?,
                gate: loader.matrix(&n("ffn_gate.weight"), c.n_embd, c.n_ff, true)?,
                up: loader.matrix(&n("ffn_up.weight"), c.n_embd, c.n_ff, true)?,
                down: loader.matrix(&n("ffn_down.weight"), c.n_ff, c.n_embd, true)?,
            };
            if c.arch == Arch::Qwen3 && (layer.q_norm.is_none() || layer.k_norm.is_none()) {
                return Err(RuntimeError::MissingTensor {
                    file: path.clone(),
                    tensor: n("attn_q_norm.weight / attn_k_norm.weight"),
                });
            }
            layers.push(layer);
        }
        Ok(Model {
            source: file,
            path,
            config,
            embd,
            output,
            output_norm,
            rope_freqs,
            layers,
            backend,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF file, when the model is one.
    pub fn gguf(&self) -> Option<&GgufFile> {
        self.source.gguf()
    }

    /// Where the weights come from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// GGUF metadata (for a folder: the keys our converter would write).
    pub fn metadata(&self) -> &[(String, Value)] {
        self.source.metadata()
    }

    /// The tokenizer the model's metadata describes.
    pub fn tokenizer(&self) -> Result<Tokenizer, RuntimeError> {
        Tokenizer::from_metadata(self.source.metadata(), self.source.path())
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Every matrix the forward pass multiplies by, with its storage type: each
    /// block's q, k, v, output, gate, up and down, then the output projection
    /// ([`Model::output_tensor`]). These are the names observers report.
    pub fn matrices(&self) -> Vec<(&str, GgmlType)> {
        let mut v = Vec::with_capacity(7 * self.layers.len() + 1);
        for l in &self.layers {
            for m in [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down] {
                v.push((m.name.as_str(), m.ty));
            }
        }
        v.push((self.output.name.as_str(), self.output.ty));
        v
    }

    /// The output projection's tensor: `output.weight`, or `token_embd.weight`
    /// when the model ties it to the embeddings.
    pub fn output_tensor(&self) -> &str {
        &self.output.name
    }

    /// Bytes of weights one token's forward pass reads (every matrix once).
    pub fn weight_bytes(&self) -> usize {
        let mut n = self.output.len;
        for l in &self.layers {
            for m in [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down] {
                n += m.len;
            }
        }
        n
    }

    /// The bytes of every weight matrix a decode step reads (as
    /// [`Model::weight_bytes`] counts them), in the model's order.
    pub fn weight_slices(&self) -> Vec<&[u8]> {
        let mut v = Vec::with_capacity(1 + 7 * self.layers.len());
        for l in &self.layers {
            for m in [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down] {
                v.push(self.source.bytes(m.loc));
            }
        }
        v.push(self.source.bytes(self.output.loc));
        v
    }

    /// The matrix stored under GGUF name `name` as f32 rows (`rows × cols`,
    /// row-major, in the order the source stores them), and its row count.
    pub fn matrix_f32(&self, name: &str) -> Result<(Vec<f32>, usize), RuntimeError> {
        let t = self
            .source
            .tensor(name)
            .ok_or_else(|| RuntimeError::MissingTensor {
                file: self.path.clone(),
                tensor: name.to_string(),
            })?;
        let n: u64 = t.shape.iter().product();
        let rows = t.shape.get(1).copied().unwrap_or(1) as usize;
        let mut out = vec![0f32; n as usize];
        quern_quant::dequantize_row(t.ty, self.source.bytes(t.loc), &mut out).map_err(
            |source| RuntimeError::Quant {
                tensor: name.to_string(),
                source,
            },
        )?;
        Ok((out, rows))
    }

    /// A fresh session holding up to `n_ctx` positions (capped at the context the
    /// model was trained for).
    pub fn session(&self, n_ctx: usize) -> Session {
        let n_ctx = n_ctx.min(self.config.n_ctx_train).max(1);
        Session {
            k: vec![Vec::new(); self.config.n_layer],
            v: vec![Vec::new(); self.config.n_layer],
            n_past: 0,
            n_ctx,
        }
    }

    fn view<'a>(&'a self, m: &'a Matrix) -> WeightView<'a> {
        WeightView {
            name: &m.name,
            ty: m.ty,
            rows: m.rows,
            cols: m.cols,
            data: self.source.bytes(m.loc),
        }
    }

    fn matmul(&self, m: &Matrix, x: &[f32], n: usize) -> Result<Vec<f32>, RuntimeError> {
        let mut out = vec![0f32; n * m.rows];
        self.backend.matmul(&self.view(m), x, n, &mut out)?;
        Ok(out)
    }

    /// Runs `tokens` through the model at the session's next positions and returns
    /// the logits of the last token, or of every token when `all_logits`
    /// (`tokens.len() * vocab`, token-major).
    pub fn forward(
        &self,
        session: &mut Session,
        tokens: &[u32],
        all_logits: bool,
    ) -> Result<Vec<f32>, RuntimeError> {
        self.forward_observed(session, tokens, all_logits, &mut NoObserver)
    }

    /// [`Model::forward`], reporting activations to `observer` on the way.
    pub fn forward_observed(
        &self,
        session: &mut Session,
        tokens: &[u32],
        all_logits: bool,
        observer: &mut dyn Observer,
    ) -> Result<Vec<f32>, RuntimeError> {
        let c = &self.config;
        let n = tokens.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        if session.n_past + n > session.n_ctx {
            return Err(RuntimeError::ContextFull {
                tokens: session.n_past + n,
                ctx: session.n_ctx,
            });
        }
        let d = c.n_embd;
        let q_dim = c.n_head * c.head_dim;
        let mut x = vec![0f32; n * d];
        let embd = self.view(&self.embd);
        for (t, &id) in tokens.iter().enumerate() {
            if id as usize >= c.vocab {
                return Err(RuntimeError::BadToken { id, vocab: c.vocab });
            }
            quern_quant::dequantize_row(embd.ty, embd.row(id as usize), &mut x[t * d..(t + 1) * d])
                .map_err(|source| RuntimeError::Quant {
                    tensor: self.embd.name.clone(),
                    source,
                })?;
        }
        let pos0 = session.n_past;
        let rope = self.rope_table(pos0, n);
        let mut xn = vec![0f32; n * d];
        for (li, layer) in self.layers.iter().enumerate() {
            let names = &layer.names;
            observer.block_input(li, &x, n);
            rms_norm(&x, &layer.attn_norm, c.rms_eps, &mut xn);
            observer.linear_input(&names.qkv(), &xn, n);
            let (mut q, mut k, mut v) = (
                vec![0f32; n * layer.wq.rows],
                vec![0f32; n * layer.wk.rows],
                vec![0f32; n * layer.wv.rows],
            );
            self.backend.matmul_many(
                &[
                    self.view(&layer.wq),
                    self.view(&layer.wk),
                    self.view(&layer.wv),
                ],
                &xn,
                n,
                &mut [&mut q, &mut k, &mut v],
            )?;
            add_bias(&mut q, layer.bq.as_deref());
            add_bias(&mut k, layer.bk.as_deref());
            add_bias(&mut v, layer.bv.as_deref());
            if let Some(w) = &layer.q_norm {
                head_norm(&mut q, w, c.rms_eps);
            }
            if let Some(w) = &layer.k_norm {
                head_norm(&mut k, w, c.rms_eps);
            }
            self.apply_rope(&mut q, &rope, n);
            self.apply_rope(&mut k, &rope, n);
            session.k[li].extend_from_slice(&k);
            session.v[li].extend_from_slice(&v);
            let attn = attention(
                self.backend.as_ref(),
                c,
                &q,
                &session.k[li],
                &session.v[li],
                pos0,
                n,
            );
            debug_assert_eq!(attn.len(), n * q_dim);
            observer.linear_input(&[&names.o], &attn, n);
            let o = self.matmul(&layer.wo, &attn, n)?;
            for (a, b) in x.iter_mut().zip(&o) {
                *a += b;
            }
            rms_norm(&x, &layer.ffn_norm, c.rms_eps, &mut xn);
            observer.linear_input(&[&names.gate, &names.up], &xn, n);
            let (mut g, mut h) = (vec![0f32; n * c.n_ff], vec![0f32; n * c.n_ff]);
            self.backend.matmul_many(
                &[self.view(&layer.gate), self.view(&layer.up)],
                &xn,
                n,
                &mut [&mut g, &mut h],
            )?;
            silu_mul(self.backend.as_ref(), &g, &mut h, c.n_ff);
            observer.linear_input(&[&names.down], &h, n);
            let down = self.matmul(&layer.down, &h, n)?;
            for (a, b) in x.iter_mut().zip(&down) {
                *a += b;
            }
        }
        observer.block_input(self.layers.len(), &x, n);
        session.n_past += n;
        let (rows, first) = if all_logits { (n, 0) } else { (1, n - 1) };
        let last = &x[first * d..];
        let mut normed = vec![0f32; rows * d];
        rms_norm(last, &self.output_norm, c.rms_eps, &mut normed);
        if all_logits {
            observer.linear_input(&[&self.output.name], &normed, rows);
        }
        self.matmul(&self.output, &normed, rows)
    }

    /// Block `i`'s weights as the forward pass reads them (for backends that run
    /// the whole pass themselves, such as [`crate::cuda::decode`]).
    pub fn layer_weights(&self, i: usize) -> Option<LayerWeights<'_>> {
        let l = self.layers.get(i)?;
        Some(LayerWeights {
            attn_norm: &l.attn_norm,
            wq: self.view(&l.wq),
            wk: self.view(&l.wk),
            wv: self.view(&l.wv),
            wo: self.view(&l.wo),
            bq: l.bq.as_deref(),
            bk: l.bk.as_deref(),
            bv: l.bv.as_deref(),
            q_norm: l.q_norm.as_deref(),
            k_norm: l.k_norm.as_deref(),
            ffn_norm: &l.ffn_norm,
            gate: self.view(&l.gate),
            up: self.view(&l.up),
            down: self.view(&l.down),
        })
    }

    /// The output projection and the norm before it.
    pub fn output_weights(&self) -> (WeightView<'_>, &[f32]) {
        (self.view(&self.output), &self.output_norm)
    }

    /// Rope's per-pair frequency divisors (Llama 3 scaling), when the model has them.
    pub fn rope_freq_factors(&self) -> Option<&[f32]> {
        self.rope_freqs.as_deref()
    }

    /// Token `id`'s embedding row as f32 (`out.len() == n_embd`).
    pub fn embed(&self, id: u32, out: &mut [f32]) -> Result<(), RuntimeError> {
        let c = &self.config;
        if id as usize >= c.vocab {
            return Err(RuntimeError::BadToken { id, vocab: c.vocab });
        }
        let embd = self.view(&self.embd);
        quern_quant::dequantize_row(embd.ty, embd.row(id as usize), out).map_err(|source| {
            RuntimeError::Quant {
                tensor: self.embd.name.clone(),
                source,
            }
        })
    }

    /// cos/sin of every rotated pair at positions `pos0..pos0 + n`.
    fn rope_table(&self, pos0: usize, n: usize) -> Vec<(f32, f32)> {
        let c = &self.config;
        let half = c.n_rot / 2;
        let mut table = Vec::with_capacity(n * half);
        // Angles in f32, each frequency the previous one times the same ratio, as
        // llama.cpp computes them: the two runtimes then rotate by the very same
        // angles, so comparisons with llama.cpp's logits see only the weights'
        // and activations' rounding (the angle's own error at position 500 is
        // ~1e-4 rad, far below the quantisation's effect).
        let ratio = c.rope_base.powf(-2.0 / c.n_rot as f32);
        for t in 0..n {
            let p = (pos0 + t) as f32 / c.rope_scale;
            let mut theta = p;
            for i in 0..half {
                let angle = match &self.rope_freqs {
                    Some(ff) => theta / ff[i],
                    None => theta,
                };
                table.push((angle.cos(), angle.sin()));
                theta *= ratio;
            }
        }
        table
    }

    fn apply_rope(&self, x: &mut [f32], table: &[(f32, f32)], n: usize) {
        let c = &self.config;
        let (hd, half) = (c.head_dim, c.n_rot / 2);
        let per_token = x.len() / n;
        for (t, tok) in x.chunks_exact_mut(per_token).enumerate() {
            let cs = &table[t * half..(t + 1) * half];
            for head in tok.chunks_exact_mut(hd) {
                for (i, &(co, s)) in cs.iter().enumerate() {
                    let (a, b) = match c.rope_mode {
                        RopeMode::Adjacent => (2 * i, 2 * i + 1),
                        RopeMode::Neox => (i, i + half),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * co - x1 * s;
                    head[b] = x0 * s + x1 * co;
                }
            }
        }
    }
}

/// The GGUF names of one block's matrices.
struct LayerNames {
    q: String,
    k: String,
    v: String,
    o: String,
    gate: String,
    up: String,
    down: String,
}

impl LayerNames {
    fn new(i: usize) -> LayerNames {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        LayerNames {
            q: n("attn_q"),
            k: n("attn_k"),
            v: n("attn_v"),
            o: n("attn_output"),
            gate: n("ffn_gate"),
            up: n("ffn_up"),
            down: n("ffn_down"),
        }
    }

    fn qkv(&self) -> [&str; 3] {
        [&self.q, &self.k, &self.v]
    }
}

/// Causal attention of `n` new queries (positions `pos0..`) over the cache.
fn attention(
    backend: &dyn Backend,
    c: &Config,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos0: usize,
    n: usize,
) -> Vec<f32> {
    let (hd, nh, nkv) = (c.head_dim, c.n_head, c.n_kv_head);
    let kv_dim = nkv * hd;
    let group = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; n * nh * hd];
    let out_ptr = HeadsOut(out.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    // One task per (token, head): each writes its own `hd` outputs.
    backend.parallel_for(n * nh, &|idx| {
        let (t, h) = (idx / nh, idx % nh);
        let head = Head {
            q: &q[t * nh * hd + h * hd..][..hd],
            k,
            v,
            stride: kv_dim,
            offset: (h / group) * hd,
            len: pos0 + t + 1,
            scale,
        };
        // SAFETY: task `idx` alone writes elements `idx * hd .. (idx + 1) * hd`.
        let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(idx * hd), hd) };
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the features were checked above.
            unsafe { attend_avx2(&head, o) };
            return;
        }
        attend(&head, o);
    });
    out
}

/// One query head against the cached keys and values of its KV head.
struct Head<'a> {
    q: &'a [f32],
    /// Position-major keys and values, `stride` values per position, this
    /// head's `q.len()` from `offset`.
    k: &'a [f32],
    v: &'a [f32],
    stride: usize,
    offset: usize,
    /// Positions attended (causal: up to and including the token's own).
    len: usize,
    scale: f32,
}

/// Softmax-weighted sum of the values into `o` (zeroed).
#[inline(always)]
fn attend(h: &Head<'_>, o: &mut [f32]) {
    let hd = h.q.len();
    let mut scores = Vec::with_capacity(h.len);
    let mut max = f32::NEG_INFINITY;
    for j in 0..h.len {
        let s = dot(h.q, &h.k[j * h.stride + h.offset..][..hd]) * h.scale;
        max = max.max(s);
        scores.push(s);
    }
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    for (j, &s) in scores.iter().enumerate() {
        let vj = &h.v[j * h.stride + h.offset..][..hd];
        let w = s * inv;
        for (a, b) in o.iter_mut().zip(vj) {
            *a += w * b;
        }
    }
}

/// [`attend`] compiled for AVX2 and FMA, so its dot products and value sums
/// run eight lanes wide (a visible share of a long prefill).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(h: &Head<'_>, o: &mut [f32]) {
    attend(h, o)
}

/// `h *= silu(g)`, token rows of `ff` values shared among the backend's threads
/// in prefill (the exponentials are a visible share of a small model's prefill).
fn silu_mul(backend: &dyn Backend, g: &[f32], h: &mut [f32], ff: usize) {
    let rows = h.len() / ff;
    let one = |g: &[f32], h: &mut [f32]| {
        for (hv, &gv) in h.iter_mut().zip(g) {
            *hv *= gv / (1.0 + (-gv).exp());
        }
    };
    if rows < 4 {
        one(g, h);
        return;
    }
    let out = HeadsOut(h.as_mut_ptr());
    backend.parallel_for(rows, &|t| {
        // SAFETY: task `t` alone writes row `t` of `h`, which has `rows * ff` values.
        let hr = unsafe { std::slice::from_raw_parts_mut(out.get().add(t * ff), ff) };
        one(&g[t * ff..(t + 1) * ff], hr);
    });
}

/// An output written in disjoint pieces by parallel tasks (attention heads,
/// token rows).
#[derive(Clone, Copy)]
struct HeadsOut(*mut f32);
// SAFETY: tasks write disjoint pieces (see `attention`, `silu_mul`).
unsafe impl Send for HeadsOut {}
unsafe impl Sync for HeadsOut {}

impl HeadsOut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A dot product with eight partial sums, so the loop vectorises.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = xr.iter().map(|v| (v * v) as f64).sum::<f64>() / d as f64;
        let inv = 1.0 / (ms as f32 + eps).sqrt();
        for ((o, &a), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = a * inv * g;
        }
    }
}

/// RMS norm of each head separately (Qwen3's q/k norms).
fn head_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let hd = w.len();
    for head in x.chunks_exact_mut(hd) {
        let ms = head.iter().map(|v| (v * v) as f64).sum::<f64>() / hd as f64;
        let inv = 1.0 / (ms as f32 + eps).sqrt();
        for (a, &g) in head.iter_mut().zip(w) {
            *a *= inv * g;
        }
    }
}

fn add_bias(x: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        for row in x.chunks_exact_mut(b.len()) {
            for (a, c) in row.iter_mut().zip(b) {
                *a += c;
            }
        }
    }
}

struct Loader<'a> {
    file: &'a Source,
    path: &'a Path,
    backend: &'a dyn Backend,
}

impl Loader<'_> {
    fn info(&self, name: &str) -> Result<TensorRef, RuntimeError> {
        self.file
            .tensor(name)
            .ok_or_else(|| RuntimeError::MissingTensor {
                file: self.path.to_path_buf(),
                tensor: name.to_string(),
            })
    }

    /// A `rows x cols` matrix (ggml shape `[cols, rows]`); `product` when the
    /// backend multiplies by it (the embedding is only looked up by row).
    fn matrix(
        &self,
        name: &str,
        cols: usize,
        rows: usize,
        product: bool,
    ) -> Result<Matrix, RuntimeError> {
        let t = self.info(name)?;
        if t.shape != [cols as u64, rows as u64] {
            return Err(RuntimeError::BadShape {
                file: self.path.to_path_buf(),
                tensor: name.to_string(),
                expected: vec![cols as u64, rows as u64],
                found: t.shape.clone(),
            });
        }
        let supported = if product {
            self.backend.supports(t.ty)
        } else {
            quern_quant::can_dequantize(t.ty)
        };
        if !supported {
            return Err(RuntimeError::UnsupportedType {
                file: self.path.to_path_buf(),
                tensor: name.to_string(),
                ty: t.ty,
                backend: self.backend.name(),
            });
        }
        let len = self.file.bytes(t.loc).len();
        Ok(Matrix {
            name: name.to_string(),
            ty: t.ty,
            rows,
            cols,
            loc: t.loc,
            len,
        })
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, RuntimeError> {
        let t = self.info(name)?;
        if t.shape.iter().product::<u64>() != len as u64 {
            return Err(RuntimeError::BadShape {
                file: self.path.to_path_buf(),
                tensor: name.to_string(),
                expected: vec![len as u64],
                found: t.shape.clone(),
            });
        }
        let mut out = vec![0f32; len];
        quern_quant::dequantize_row(t.ty, self.file.bytes(t.loc), &mut out).map_err(|source| {
            RuntimeError::Quant {
                tensor: name.to_string(),
                source,
            }
        })?;
        Ok(out)
    }
}
