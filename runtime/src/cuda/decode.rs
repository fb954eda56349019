//! The whole forward pass of a Llama-family [`Model`] on the GPU: weights
//! uploaded once (the backend's upload and repacking), the hidden state and the
//! KV cache (f32) on the device, every op a kernel (`decode.cu` beside the GEMVs
//! of `gemv.cu`/`packed.cu`), nothing on the host between layers.
//!
//! - What crosses the bus per step: the new tokens' embedding rows (looked up on
//!   the host from the file's blocks, `n_embd` floats each) and the position,
//!   in; the logits (or, for greedy decoding, the argmax's 4 bytes), out.
//! - Decode (one token) is captured once as a CUDA graph and replayed for every
//!   later token: the kernels read the position from a small device buffer, and
//!   attention's grid covers the whole context, its blocks past the current
//!   length returning at once. `QUERN_CUDA_GRAPH=0` launches the same kernels
//!   one by one instead (for comparison).
//! - Prefill runs the same kernels over batches of up to
//!   [`DeviceModel::prefill_batch`] tokens (by default [`PREFILL_BATCH`]),
//!   launched directly; its products over the repacked formats run on the int8
//!   tensor-core kernels (`mma.cu`), the others as GEMVs of 16 rows per launch,
//!   and its attention is one flash-style pass (`attn_prefill`) per KV head and
//!   64 query rows.
//! - The activation quantiser of a product runs, where [`Fuse`] says, inside the
//!   kernel that makes its input (RMSNorm, the attention's combine, SwiGLU)
//!   instead of as a launch of its own; the codes are the same bit for bit.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaFunction, CudaGraph, CudaSlice, DevicePtr, LaunchConfig};

use super::launch::Launch;

use super::error::DriverContext;
use super::fold::{Folds, SitePlan};
use super::l2hint::{Cursor, L2Budget, Site};
use super::{
    act_bytes, act_scales_offset, fused_act_mode, ActKind, CudaBackend, CudaError, DeviceWeight,
    Fold, COMMON_SRC, DECODE_SRC,
};
use crate::backend::WeightView;
use crate::error::RuntimeError;
use crate::model::{Model, RopeMode};

/// Tokens per prefill batch by default (bounds the activation buffers); fewer
/// when the attention's partial results for that many would pass
/// [`PART_BUDGET`] bytes (long contexts), never fewer than [`MIN_PREFILL_BATCH`].
/// `QUERN_CUDA_PREFILL_BATCH` overrides it (1..=4096), for tuning runs.
pub const PREFILL_BATCH: usize = 512;
pub const MIN_PREFILL_BATCH: usize = 64;
const PART_BUDGET: usize = 1 << 30;

/// Tokens per prefill batch for a cache of `n_chunks` attention chunks.
fn prefill_batch(nh: usize, n_chunks: usize, hd: usize) -> usize {
    if let Some(b) = std::env::var("QUERN_CUDA_PREFILL_BATCH")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|v| (1..=4096).contains(v))
    {
        return b;
    }
    let per_token = nh * n_chunks * (hd + 2) * 4;
    (PART_BUDGET / per_token.max(1) / 16 * 16).clamp(MIN_PREFILL_BATCH, PREFILL_BATCH)
}
/// Cache positions per attention chunk (`ACH` in decode.cu): 8 for contexts up
/// to 4096 positions (more, shorter blocks: decode's attention is latency-bound;
/// measured +3 % on the 8B shape at 512 positions against 32), 32 beyond (the
/// combine walks every chunk, and `MAXCH` bounds them). `QUERN_CUDA_ATTN_CHUNK`
/// (8, 16 or 32) overrides it, for tuning runs.
const ACH: usize = 32;
const ACH_SHORT: usize = 8;
const SHORT_CTX: usize = 4096;

fn attn_chunk(n_ctx: usize) -> usize {
    std::env::var("QUERN_CUDA_ATTN_CHUNK")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|v| [8, 16, 32].contains(v))
        .unwrap_or(if n_ctx <= SHORT_CTX { ACH_SHORT } else { ACH })
}

// The softmax gives each position of a chunk a lane; short contexts fit MAXCH.
const _: () = assert!(ACH <= 32 && ACH_SHORT <= 32);
const _: () = assert!(SHORT_CTX.div_ceil(ACH_SHORT) <= MAX_CHUNKS);
/// Chunks per context at most (`MAXCH`).
const MAX_CHUNKS: usize = 1024;
/// Blocks of the argmax's first pass.
const ARG_PARTS: usize = 128;
/// Limits of decode.cu's attention (`MAXG`, `MAXHD`).
const MAX_GROUP: usize = 8;
const MAX_HEAD_DIM: usize = 256;

fn cuda_err(source: CudaError) -> RuntimeError {
    RuntimeError::CudaForward(source)
}

fn unsupported(what: String) -> RuntimeError {
    cuda_err(CudaError::Driver {
        what: "device-resident forward pass".into(),
        detail: what,
    })
}

struct Kernels {
    rms_norm: CudaFunction,
    qkv_post: CudaFunction,
    attn_partial: CudaFunction,
    attn_combine: CudaFunction,
    attn_prefill: CudaFunction,
    silu_mul: CudaFunction,
    rms_norm_q: CudaFunction,
    norm_fold_q: CudaFunction,
    silu_mul_q: CudaFunction,
    attn_combine_q: CudaFunction,
    argmax_part: CudaFunction,
    argmax_final: CudaFunction,
}

/// A matrix on the device and its data's address.
struct Mat {
    w: Arc<DeviceWeight>,
    ptr: u64,
}

struct DevLayer {
    attn_norm: CudaSlice<f32>,
    ffn_norm: CudaSlice<f32>,
    bq: Option<CudaSlice<f32>>,
    bk: Option<CudaSlice<f32>>,
    bv: Option<CudaSlice<f32>>,
    q_norm: Option<CudaSlice<f32>>,
    k_norm: Option<CudaSlice<f32>>,
    wq: Mat,
    wk: Mat,
    wv: Mat,
    wo: Mat,
    gate: Mat,
    up: Mat,
    down: Mat,
    /// q and k, with v when it shares their type, stacked in one upload (the
    /// three above are views of it) and how many: a single-token step
    /// multiplies them in one launch, its outputs back to back in `q`.
    qkv: Option<(Mat, usize)>,
    /// gate and up stacked likewise: one launch, outputs back to back in `g`.
    gate_up: Option<Mat>,
    /// `n_ctx × kv_dim` each.
    k_cache: CudaSlice<f32>,
    v_cache: CudaSlice<f32>,
}

impl DevLayer {
    /// The seven weight matrices a layer multiplies (views where stacked).
    fn matrices(&self) -> [&Mat; 7] {
        [
            &self.wq, &self.wk, &self.wv, &self.wo, &self.gate, &self.up, &self.down,
        ]
    }
}

/// Activation buffers, `prefill_batch` rows each.
struct Buffers {
    x: CudaSlice<f32>,
    xn: CudaSlice<f32>,
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
    attn: CudaSlice<f32>,
    /// The attention output projection's and the down projection's output
    /// (added to `x` by the next norm).
    delta: CudaSlice<f32>,
    g: CudaSlice<f32>,
    h: CudaSlice<f32>,
    part: CudaSlice<f32>,
    logits: CudaSlice<f32>,
    act: CudaSlice<u8>,
    /// `[pos0]`: the first new token's position.
    params: CudaSlice<i32>,
    best: CudaSlice<i32>,
    /// The argmax's per-block bests.
    arg_v: CudaSlice<f32>,
    arg_i: CudaSlice<i32>,
}

/// Which activation quantisers run inside the kernel that makes their input
/// (`rms_norm_q`, `attn_combine_q`, `silu_mul_q` in decode.cu) instead of as
/// launches of their own. The codes are the same either way, bit for bit; only
/// the time differs. Measured on the 8B shape (BENCHMARKS.md, call F): fusing
/// everything made prefill faster (Q4_K_M pp512 +3.5 %, Q4_0 +1.1 %) and Q4_0
/// decode slightly faster (+0.9 %), but Q4_K_M decode slower (−2.6 %): with a
/// single token the fused RMSNorm's quantisation to one scale per 256 ran on
/// half the warps of one block, a longer chain than the separate quantiser's
/// launch it saves. With every warp busy (ninth slice, call 5) fusing
/// everything is still slower there: 425.7 against 428.6 tok/s. With the norms
/// folded (tenth slice) the attention's combine and SwiGLU fused in the
/// per-256 layout too made Q4_K_M decode faster (430.2 against 424.8): hence
/// the default, which leaves out only a single-token RMSNorm's per-256
/// quantiser (where no fold replaces the norm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fuse {
    /// Every quantiser a launch of its own (`QUERN_CUDA_FUSE=0`).
    Off,
    /// Every quantiser fused except, in single-token steps, an RMSNorm's in
    /// the per-256 layout (Q4_K, Q6_K inputs) — the default.
    Default,
    /// Every quantiser fused (`QUERN_CUDA_FUSE=1`).
    All,
}

impl Fuse {
    fn from_env() -> Fuse {
        match std::env::var("QUERN_CUDA_FUSE").as_deref().map(str::trim) {
            Ok("0") => Fuse::Off,
            Ok("1") => Fuse::All,
            _ => Fuse::Default,
        }
    }

    /// Whether the quantiser of layout `mode` (decode.cu's) is fused in a pass
    /// over `tokens` tokens, into an RMSNorm (`norm`) or another kernel.
    fn applies(self, mode: i32, tokens: usize, norm: bool) -> bool {
        match self {
            Fuse::Off => false,
            Fuse::All => true,
            Fuse::Default => !(norm && mode == 2 && tokens == 1),
        }
    }
}

/// Kernel groups left out of every pass, for timing what each costs
/// (`QUERN_CUDA_DECODE_SKIP=norm,post,attn,silu`; the results are then wrong:
/// a measurement aid only, as METHOD.md's "time variants that leave one stage
/// out").
#[derive(Debug, Clone, Copy, Default)]
struct Skip {
    norm: bool,
    post: bool,
    attn: bool,
    silu: bool,
}

impl Skip {
    fn from_env() -> Skip {
        let v = std::env::var("QUERN_CUDA_DECODE_SKIP").unwrap_or_default();
        let has = |w: &str| v.split(',').any(|p| p.trim() == w);
        Skip {
            norm: has("norm"),
            post: has("post"),
            attn: has("attn"),
            silu: has("silu"),
        }
    }
}

/// A model's forward pass on the GPU with its own KV cache (one conversation).
pub struct DeviceModel<'m> {
    // Declared first so that it is dropped before the buffers it refers to.
    graph: Option<CudaGraph>,
    use_graph: bool,
    /// Which activation quantisers are fused into the kernels before the
    /// products (`QUERN_CUDA_FUSE`).
    fuse: Fuse,
    /// Whether single-token steps use the stacked q/k/v and gate/up.
    stack: bool,
    /// Whether single-token steps fold the RMSNorms into the products that
    /// read them where those take it (`QUERN_CUDA_FOLD=0` turns it off).
    fold: bool,
    folds: Folds,
    /// Bytes each kernel between single-token products asks L2 for
    /// (`QUERN_CUDA_L2PF`; cuda/l2hint.rs).
    l2: L2Budget,
    /// Bytes the last single-token pass enqueued asked L2 for, and whether
    /// its products ran in the order the hints expected.
    l2_hinted: Cell<(usize, bool)>,
    skip: Skip,
    model: &'m Model,
    be: &'m CudaBackend,
    k: Kernels,
    layers: Vec<DevLayer>,
    output: Mat,
    output_norm: CudaSlice<f32>,
    freq_factors: Option<CudaSlice<f32>>,
    buf: Buffers,
    n_ctx: usize,
    n_chunks: usize,
    /// Tokens per prefill pass at most (every activation buffer holds that many).
    batch: usize,
    n_past: usize,
    embd_host: Vec<f32>,
}

/// The CUDA backend `model` multiplies on, if it is one.
pub fn cuda_backend(model: &Model) -> Option<&CudaBackend> {
    model.backend().as_any()?.downcast_ref::<CudaBackend>()
}

fn ptr_of<T>(be: &CudaBackend, s: &CudaSlice<T>) -> u64 {
    super::device_addr(be, s)
}

fn opt_ptr<T>(be: &CudaBackend, s: &Option<CudaSlice<T>>) -> u64 {
    s.as_ref().map_or(0, |s| ptr_of(be, s))
}

impl<'m> DeviceModel<'m> {
    /// Uploads `model`'s weights (if the backend has not already) and allocates a
    /// KV cache of `n_ctx` positions (capped at the trained context). The model
    /// must have been opened on a [`CudaBackend`].
    pub fn new(model: &'m Model, n_ctx: usize) -> Result<DeviceModel<'m>, RuntimeError> {
        Self::with_batch(model, n_ctx, None)
    }

    /// [`Self::new`] with at most `batch` tokens per prefill pass (None: the
    /// default, [`PREFILL_BATCH`] or what the context leaves room for).
    pub fn with_batch(
        model: &'m Model,
        n_ctx: usize,
        batch: Option<usize>,
    ) -> Result<DeviceModel<'m>, RuntimeError> {
        let be = cuda_backend(model)
            .ok_or_else(|| unsupported("the model was not opened on the CUDA backend".into()))?;
        let c = &model.config;
        let n_ctx = n_ctx.min(c.n_ctx_train).max(1);
        let (hd, nh, nkv) = (c.head_dim, c.n_head, c.n_kv_head);
        let group = nh / nkv;
        if group > MAX_GROUP || hd > MAX_HEAD_DIM || hd % 4 != 0 {
            return Err(unsupported(format!(
                "{nh} query heads over {nkv} KV heads of {hd} (at most {MAX_GROUP} per KV head, {MAX_HEAD_DIM} dimensions, a multiple of 4)"
            )));
        }
        let ach = attn_chunk(n_ctx);
        if n_ctx.div_ceil(ach) > MAX_CHUNKS {
            return Err(unsupported(format!(
                "a context of {n_ctx} positions (at most {})",
                MAX_CHUNKS * ach
            )));
        }
        let st = be.stream().clone();
        let k = load_kernels(be, ach, hd).map_err(cuda_err)?;
        let mut types: Vec<quern_formats::GgmlType> = Vec::new();
        let (out_view, out_norm) = model.output_weights();
        types.push(out_view.ty);
        for i in 0..c.n_layer {
            if let Some(l) = model.layer_weights(i) {
                for w in [l.wq, l.wk, l.wv, l.wo, l.gate, l.up, l.down] {
                    types.push(w.ty);
                }
            }
        }
        types.sort_by_key(|t| t.id());
        types.dedup();
        be.prepare_types(&types).map_err(cuda_err)?;
        let up = |v: &[f32]| -> Result<CudaSlice<f32>, RuntimeError> {
            st.clone_htod(v).ctx("uploading a vector").map_err(cuda_err)
        };
        let mat = |w: &WeightView<'_>| -> Result<Mat, RuntimeError> {
            let d = be.weight(w).map_err(|source| RuntimeError::Cuda {
                tensor: w.name.to_string(),
                source,
            })?;
            if d.k != d.cols {
                return Err(unsupported(format!(
                    "{}: rows of {} values are not a multiple of 8",
                    w.name, d.cols
                )));
            }
            let ptr = be.weight_ptr(&d);
            Ok(Mat { w: d, ptr })
        };
        // Matrices of one type and row length, uploaded as one, and each as a
        // view of it; None when the types differ or stacking is off.
        let stacking = std::env::var("QUERN_CUDA_STACK").as_deref() != Ok("0");
        let stacked = |ws: &[&WeightView<'_>]| -> Result<Option<(Mat, Vec<Mat>)>, RuntimeError> {
            if !stacking || ws.iter().any(|w| w.ty != ws[0].ty || w.cols != ws[0].cols) {
                return Ok(None);
            }
            let views: Vec<WeightView<'_>> = ws.iter().map(|w| **w).collect();
            let d = be
                .upload_stacked(&views)
                .map_err(|source| RuntimeError::Cuda {
                    tensor: ws[0].name.to_string(),
                    source,
                })?;
            if d.k != d.cols {
                return Ok(None);
            }
            let mut parts = Vec::with_capacity(ws.len());
            let mut first = 0;
            for w in ws {
                let v = d
                    .rows_view(first, w.rows)
                    .ok_or_else(|| unsupported(format!("{}: no view of rows {first}..", w.name)))?;
                first += w.rows;
                let ptr = be.weight_ptr(&v);
                parts.push(Mat {
                    w: Arc::new(v),
                    ptr,
                });
            }
            let ptr = be.weight_ptr(&d);
            Ok(Some((
                Mat {
                    w: Arc::new(d),
                    ptr,
                },
                parts,
            )))
        };
        let kv_dim = nkv * hd;
        let poison = be.poisoning();
        let cache = || -> Result<CudaSlice<f32>, RuntimeError> {
            let s: CudaSlice<f32> = st
                .alloc_zeros(n_ctx * kv_dim)
                .ctx("allocating the KV cache")
                .map_err(cuda_err)?;
            if poison {
                // Positions not yet written must never be read: NaN shows it.
                poison_slice(be, &s).map_err(cuda_err)?;
            }
            Ok(s)
        };
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let l = model
                .layer_weights(i)
                .ok_or_else(|| unsupported(format!("block {i} is missing")))?;
            let opt = |v: Option<&[f32]>| v.map(up).transpose();
            // q, k and v share a type in most mixes; Q4_K_M gives some v Q6_K.
            let qkv = match stacked(&[&l.wq, &l.wk, &l.wv])? {
                Some(s) => Some(s),
                None => stacked(&[&l.wq, &l.wk])?,
            };
            // The outputs lie back to back: floats 16 bytes apart at each start.
            let gate_up = if c.n_ff.is_multiple_of(4) {
                stacked(&[&l.gate, &l.up])?
            } else {
                None
            };
            // Each matrix is its stacked view where there is one, else its own.
            let (qkv, views) = match qkv {
                Some((m, v)) => (Some((m, v.len())), v),
                None => (None, Vec::new()),
            };
            let mut views = views.into_iter();
            let wq = views.next().map_or_else(|| mat(&l.wq), Ok)?;
            let wk = views.next().map_or_else(|| mat(&l.wk), Ok)?;
            let wv = views.next().map_or_else(|| mat(&l.wv), Ok)?;
            let (gate_up, views) = match gate_up {
                Some((m, v)) => (Some(m), v),
                None => (None, Vec::new()),
            };
            let mut views = views.into_iter();
            let gate = views.next().map_or_else(|| mat(&l.gate), Ok)?;
            let upm = views.next().map_or_else(|| mat(&l.up), Ok)?;
            layers.push(DevLayer {
                attn_norm: up(l.attn_norm)?,
                ffn_norm: up(l.ffn_norm)?,
                bq: opt(l.bq)?,
                bk: opt(l.bk)?,
                bv: opt(l.bv)?,
                q_norm: opt(l.q_norm)?,
                k_norm: opt(l.k_norm)?,
                wq,
                wk,
                wv,
                wo: mat(&l.wo)?,
                gate,
                up: upm,
                down: mat(&l.down)?,
                qkv,
                gate_up,
                k_cache: cache()?,
                v_cache: cache()?,
            });
        }
        let output = mat(&out_view)?;
        // Layouts with modules of their own (compact Q5_0) compile now, not
        // inside the first step's graph capture.
        for l in &layers {
            let stacked = l.qkv.iter().map(|(m, _)| m).chain(l.gate_up.iter());
            for m in l.matrices().into_iter().chain(stacked) {
                be.prepare_weight(&m.w).map_err(cuda_err)?;
            }
        }
        be.prepare_weight(&output.w).map_err(cuda_err)?;
        let output_norm = up(out_norm)?;
        let freq_factors = model.rope_freq_factors().map(up).transpose()?;
        let n_chunks = n_ctx.div_ceil(ach);
        let b = batch
            .filter(|&b| b > 0)
            .unwrap_or_else(|| prefill_batch(nh, n_chunks, hd));
        let (d, qd, ff) = (c.n_embd, nh * hd, c.n_ff);
        let alloc = |n: usize| -> Result<CudaSlice<f32>, RuntimeError> {
            st.alloc_zeros(n.max(1))
                .ctx("allocating activations")
                .map_err(cuda_err)
        };
        let max_k = d.max(qd).max(ff);
        let buf = Buffers {
            x: alloc(b * d)?,
            xn: alloc(b * d)?,
            // Single-token steps' stacked products write q, k, v (gate, up)
            // back to back.
            q: alloc((b * qd).max(qd + 2 * kv_dim))?,
            k: alloc(b * kv_dim)?,
            v: alloc(b * kv_dim)?,
            attn: alloc(b * qd)?,
            delta: alloc(b * d)?,
            g: alloc((b * ff).max(2 * ff))?,
            h: alloc(b * ff)?,
            part: alloc(b * nh * n_chunks * (hd + 2))?,
            logits: alloc(b * c.vocab)?,
            act: st
                .alloc_zeros(act_bytes(max_k, b))
                .ctx("allocating 8-bit activations")
                .map_err(cuda_err)?,
            params: st
                .alloc_zeros(4)
                .ctx("allocating parameters")
                .map_err(cuda_err)?,
            best: st
                .alloc_zeros(1)
                .ctx("allocating parameters")
                .map_err(cuda_err)?,
            arg_v: alloc(ARG_PARTS)?,
            arg_i: st
                .alloc_zeros(ARG_PARTS)
                .ctx("allocating argmax scratch")
                .map_err(cuda_err)?,
        };
        let mut norms: Vec<(u64, ActKind)> = Vec::with_capacity(2 * layers.len() + 1);
        for l in &layers {
            norms.push((ptr_of(be, &l.attn_norm), l.wq.w.act_kind()));
            norms.push((ptr_of(be, &l.ffn_norm), l.gate.w.act_kind()));
        }
        norms.push((ptr_of(be, &output_norm), output.w.act_kind()));
        let folds = Folds::new(be, d, c.rms_eps, ptr_of(be, &buf.x), &norms).map_err(cuda_err)?;
        st.synchronize()
            .ctx("uploading the model")
            .map_err(cuda_err)?;
        Ok(DeviceModel {
            graph: None,
            use_graph: std::env::var("QUERN_CUDA_GRAPH").as_deref() != Ok("0"),
            fuse: Fuse::from_env(),
            stack: true,
            fold: std::env::var("QUERN_CUDA_FOLD").as_deref() != Ok("0"),
            folds,
            l2: L2Budget::from_env(),
            l2_hinted: Cell::new((0, true)),
            skip: Skip::from_env(),
            model,
            be,
            k,
            layers,
            output,
            output_norm,
            freq_factors,
            buf,
            n_ctx,
            n_chunks,
            batch: b,
            n_past: 0,
            embd_host: Vec::new(),
        })
    }

    /// Tokens per prefill pass at most.
    pub fn prefill_batch(&self) -> usize {
        self.batch
    }

    pub fn n_past(&self) -> usize {
        self.n_past
    }

    pub fn vocab(&self) -> usize {
        self.model.config.vocab
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Forgets every position (the cache is overwritten from position 0).
    pub fn clear(&mut self) {
        self.n_past = 0;
    }

    /// Whether single-token steps replay a CUDA graph (default; `QUERN_CUDA_GRAPH=0`
    /// turns it off).
    pub fn set_graph(&mut self, on: bool) {
        self.use_graph = on;
    }

    pub fn uses_graph(&self) -> bool {
        self.use_graph
    }

    /// Which activation quantisers of the products run inside the kernel that
    /// makes their input (the RMSNorms before q/k/v, gate/up and the output,
    /// the attention's combine before o, SwiGLU before down) instead of as
    /// launches of their own ([`Fuse`]; by default `QUERN_CUDA_FUSE`'s, else
    /// [`Fuse::Default`]). The codes are the same either way, bit for bit.
    pub fn set_fuse(&mut self, fuse: Fuse) {
        if fuse != self.fuse {
            self.fuse = fuse;
            self.graph = None;
        }
    }

    pub fn fuse(&self) -> Fuse {
        self.fuse
    }

    /// Whether single-token steps multiply q/k/v and gate/up as stacked
    /// matrices, one launch each where their types agree (default; the upload
    /// is stacked unless `QUERN_CUDA_STACK=0`), or one launch per matrix over
    /// the same memory. The numbers are the same either way, bit for bit.
    pub fn set_stack(&mut self, on: bool) {
        if on != self.stack {
            self.stack = on;
            self.graph = None;
        }
    }

    /// Whether single-token steps fold each RMSNorm into the products around it
    /// (default where they take it, see cuda/fold.rs), or run the norm and its
    /// quantiser as kernels of their own. The logits differ by float rounding
    /// only (the norm's scale meets the sums after the product, not before the
    /// codes).
    pub fn set_fold(&mut self, on: bool) {
        if on != self.fold {
            self.fold = on;
            self.graph = None;
        }
    }

    /// Each norm site's folds in a pass over `n` tokens (cuda/fold.rs; site
    /// 2·i: layer i's attention norm, 2·i + 1: its FFN norm, 2·L: the output
    /// norm, whose consumer runs only when `logits`).
    fn fold_plans(&self, n: usize, logits: bool) -> Vec<Option<SitePlan>> {
        let nl = self.layers.len();
        let folding = self.fold && n == 1 && !self.skip.norm;
        (0..=2 * nl)
            .map(|s| {
                if !folding || (s == 2 * nl && !logits) {
                    return None;
                }
                let consumers = if s == 2 * nl {
                    vec![&*self.output.w]
                } else if s % 2 == 1 {
                    ffn_consumers(&self.layers[s / 2], self.stack)
                } else {
                    attn_consumers(&self.layers[s / 2], self.stack)
                };
                self.folds.plan(self.be, s, &consumers)
            })
            .collect()
    }

    /// The weight bytes a single-token step reads on the device: every
    /// matrix in its uploaded layout (repacked, compact, rows padded), where
    /// [`Model::weight_bytes`] counts the file's blocks.
    pub fn weight_bytes_read(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                l.matrices()
                    .iter()
                    .map(|m| m.w.device_bytes())
                    .sum::<usize>()
            })
            .sum();
        layers + self.output.w.device_bytes()
    }

    /// How many bytes the kernels between single-token products ask L2 for
    /// ([`L2Budget`]; by default `QUERN_CUDA_L2PF`'s, else none). A hint
    /// changes no value, only when weights leave DRAM.
    pub fn set_l2_hints(&mut self, budget: L2Budget) {
        if budget != self.l2 {
            self.l2 = budget;
            self.graph = None;
        }
    }

    /// Bytes the last single-token pass enqueued (or captured in the graph)
    /// asks L2 for per step: 0 with the hints off.
    pub fn l2_hinted_bytes(&self) -> usize {
        self.l2_hinted.get().0
    }

    /// Whether the last single-token pass launched its products in the order
    /// [`Self::decode_products`] gave the hints (with the hints on).
    pub fn l2_hints_in_order(&self) -> bool {
        self.l2_hinted.get().1
    }

    /// The matrices of a single-token step's products, in launch order
    /// (`enqueue`'s choices at one token), the output's last when `logits`:
    /// the order the L2 hints follow.
    fn decode_products(&self, logits: bool) -> Vec<(u64, usize)> {
        let mut order = Vec::with_capacity(self.layers.len() * 7 + 1);
        let mut push = |m: &Mat| order.push((m.ptr, m.w.device_bytes()));
        for l in &self.layers {
            match &l.qkv {
                Some((m, parts)) if self.stack => {
                    push(m);
                    if *parts != 3 {
                        push(&l.wv);
                    }
                }
                _ => {
                    push(&l.wq);
                    push(&l.wk);
                    push(&l.wv);
                }
            }
            push(&l.wo);
            match &l.gate_up {
                Some(m) if self.stack => push(m),
                _ => {
                    push(&l.gate);
                    push(&l.up);
                }
            }
            push(&l.down);
        }
        if logits {
            push(&self.output);
        }
        order
    }

    /// How many of a single-token step's RMSNorms are folded into the
    /// products around them ([`Self::set_fold`]).
    pub fn folded_norms(&self) -> usize {
        self.fold_plans(1, true).iter().flatten().count()
    }

    /// Runs `tokens` at the next positions; the logits of the last token, or of
    /// every token when `all_logits` (token-major), as [`Model::forward`].
    pub fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>, RuntimeError> {
        let vocab = self.model.config.vocab;
        let mut out = Vec::with_capacity(if all_logits { tokens.len() } else { 1 } * vocab);
        let n_chunks = tokens.len().div_ceil(self.batch);
        for (i, chunk) in tokens.chunks(self.batch).enumerate() {
            let last = i + 1 == n_chunks;
            let rows = if all_logits { chunk.len() } else { 1 };
            if !all_logits && !last {
                self.run(chunk, None)?;
                continue;
            }
            self.run(chunk, Some(rows))?;
            let start = out.len();
            out.resize(start + rows * vocab, 0.0);
            self.be
                .stream()
                .memcpy_dtoh(&self.buf.logits.slice(0..rows * vocab), &mut out[start..])
                .ctx("copying logits to the host")
                .map_err(cuda_err)?;
        }
        self.be
            .stream()
            .synchronize()
            .ctx("running the forward pass")
            .map_err(cuda_err)?;
        Ok(out)
    }

    /// One decode step that returns only the most likely next token (4 bytes
    /// copied back instead of the logits).
    pub fn forward_argmax(&mut self, token: u32) -> Result<u32, RuntimeError> {
        self.run(&[token], Some(1))?;
        let st = self.be.stream();
        let mut best = [0i32];
        st.memcpy_dtoh(&self.buf.best, &mut best[..])
            .ctx("copying the argmax to the host")
            .map_err(cuda_err)?;
        st.synchronize()
            .ctx("running the forward pass")
            .map_err(cuda_err)?;
        Ok(best[0] as u32)
    }

    /// Enqueues the pass over `tokens` (at most [`Self::prefill_batch`]); with
    /// `Some(rows)`, the logits of the last `rows` tokens into `buf.logits` and
    /// the argmax of the last one into `buf.best`.
    fn run(&mut self, tokens: &[u32], logits: Option<usize>) -> Result<(), RuntimeError> {
        let n = tokens.len();
        if n == 0 {
            return Ok(());
        }
        if n > self.batch || logits.is_some_and(|r| r == 0 || r > n) {
            return Err(unsupported(format!(
                "{n} tokens in one pass (at most {}), logits of {logits:?} rows",
                self.batch
            )));
        }
        if self.n_past + n > self.n_ctx {
            return Err(RuntimeError::ContextFull {
                tokens: self.n_past + n,
                ctx: self.n_ctx,
            });
        }
        let d = self.model.config.n_embd;
        self.embd_host.resize(n * d, 0.0);
        for (t, &id) in tokens.iter().enumerate() {
            self.model
                .embed(id, &mut self.embd_host[t * d..(t + 1) * d])?;
        }
        let st = self.be.stream().clone();
        st.memcpy_htod(&self.embd_host, &mut self.buf.x.slice_mut(0..n * d))
            .ctx("copying embeddings to the device")
            .map_err(cuda_err)?;
        let pos = [self.n_past as i32];
        st.memcpy_htod(&pos[..], &mut self.buf.params.slice_mut(0..1))
            .ctx("copying the position to the device")
            .map_err(cuda_err)?;
        if self.be.poisoning() {
            self.poison_outputs().map_err(cuda_err)?;
        }
        let single = n == 1 && logits == Some(1);
        if single && self.use_graph {
            if self.graph.is_none() {
                self.graph = Some(self.capture().map_err(cuda_err)?);
            }
            if let Some(g) = &self.graph {
                g.launch()
                    .ctx("replaying the decode graph")
                    .map_err(cuda_err)?;
            }
        } else {
            // SAFETY: n <= self.batch (forward's chunks, or 1), the position
            // written above plus n fits the context (checked above).
            let run = || unsafe { self.enqueue(n, logits) };
            if n > 1 {
                super::launch::without_pdl(run)
            } else {
                run()
            }
            .map_err(cuda_err)?;
        }
        self.n_past += n;
        Ok(())
    }

    /// The single-token step as a CUDA graph.
    fn capture(&self) -> Result<CudaGraph, CudaError> {
        let st = self.be.stream();
        st.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .ctx("capturing the decode graph")?;
        // SAFETY: run() checked the position against the context before this.
        let captured = unsafe { self.enqueue(1, Some(1)) };
        let graph = st
            .end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH)
            .ctx("instantiating the decode graph")?;
        captured?;
        graph.ok_or_else(|| CudaError::Driver {
            what: "capturing the decode graph".into(),
            detail: "nothing was captured".into(),
        })
    }

    fn poison_outputs(&self) -> Result<(), CudaError> {
        let b = &self.buf;
        for s in [
            &b.xn, &b.q, &b.k, &b.v, &b.attn, &b.delta, &b.g, &b.h, &b.part, &b.logits, &b.arg_v,
        ] {
            poison_slice(self.be, s)?;
        }
        poison_slice(self.be, &b.arg_i)?;
        poison_slice(self.be, &b.best)
    }

    /// Launches every kernel of a pass over `n` tokens whose embeddings are in
    /// `buf.x` and whose first position is in `buf.params`.
    ///
    /// # Safety
    /// `n <= self.batch` (every buffer holds that many rows), `logits <= n`,
    /// and `buf.params` must hold a position `p` with `p + n <= n_ctx`: the
    /// kernels index the cache and buffers by them.
    unsafe fn enqueue(&self, n: usize, logits: Option<usize>) -> Result<(), CudaError> {
        let be = self.be;
        let st = be.stream();
        let c = &self.model.config;
        let (d, hd, nh, nkv, ff) = (c.n_embd, c.head_dim, c.n_head, c.n_kv_head, c.n_ff);
        let b = &self.buf;
        let p = |s: &CudaSlice<f32>| ptr_of(be, s);
        let (x, xn, q, kb, vb, attn, delta, g, h, part) = (
            p(&b.x),
            p(&b.xn),
            p(&b.q),
            p(&b.k),
            p(&b.v),
            p(&b.attn),
            p(&b.delta),
            p(&b.g),
            p(&b.h),
            p(&b.part),
        );
        let act = ptr_of(be, &b.act);
        let params = ptr_of(be, &b.params);
        let (d_i, eps) = (d as i32, c.rms_eps);
        // The kind of quantised activations `act` holds for the current input.
        let held: Cell<Option<ActKind>> = Cell::new(None);
        // The L2 hints of a single-token step (cuda/l2hint.rs): each kernel
        // between products asks L2 for the next weight bytes a product reads.
        let hints = RefCell::new(if n == 1 && !self.l2.is_off() {
            Cursor::new(self.l2, self.decode_products(logits.is_some()))
        } else {
            Cursor::none()
        });
        let hint = |s: Site| hints.borrow_mut().take(s);
        // The fused quantiser for the input of `m`'s product over `rows` tokens
        // (made by an RMSNorm when `norm`), when fusing and `m`'s kernels read
        // a layout decode.cu makes: (mode, codes, scale pairs). Once it ran,
        // `act` holds `m`'s kind.
        let fq = |m: &Mat, rows: usize, norm: bool| -> Option<(i32, u64, u64)> {
            let kind = m.w.act_kind();
            let mode = fused_act_mode(kind)?;
            let k = m.w.k;
            if !self.fuse.applies(mode, n, norm)
                || !k.is_multiple_of(32)
                || (mode == 2 && !k.is_multiple_of(256))
            {
                return None;
            }
            Some((mode, act, act + act_scales_offset(kind, rows, k) as u64))
        };
        let fused = |m: &Mat, q: &Option<(i32, u64, u64)>| {
            if q.is_some() {
                held.set(Some(m.w.act_kind()));
            }
        };
        let norm = |x: u64,
                    dl: u64,
                    w: u64,
                    out: u64,
                    rows: usize,
                    q: Option<(i32, u64, u64)>|
         -> Result<(), CudaError> {
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (norm_threads(d), 1, 1),
                shared_mem_bytes: 0,
            };
            let (hp, hn) = hint(Site::Norm);
            let Some((mode, xq, xa)) = q else {
                return Launch::new(st, &self.k.rms_norm)
                    .arg(&x)
                    .arg(&dl)
                    .arg(&w)
                    .arg(&out)
                    .arg(&d_i)
                    .arg(&eps)
                    .arg(&hp)
                    .arg(&hn)
                    .launch(cfg)
                    .ctx("launching rms_norm")
                    .map(|_| ());
            };
            Launch::new(st, &self.k.rms_norm_q)
                .arg(&x)
                .arg(&dl)
                .arg(&w)
                .arg(&out)
                .arg(&d_i)
                .arg(&eps)
                .arg(&mode)
                .arg(&xq)
                .arg(&xa)
                .arg(&hp)
                .arg(&hn)
                .launch(cfg)
                .ctx("launching rms_norm_q")
                .map(|_| ())
        };
        // `same_input`: x is the previous product's input, unchanged since (q/k/v
        // and gate/up share one input: quantised once per kind; so is a product
        // whose quantiser ran fused into the kernel before it).
        let gemv = |m: &Mat, x: u64, y: u64, rows: usize, same_input: bool| {
            let kind = m.w.act_kind();
            if !same_input {
                held.set(None);
            }
            let quantise = kind != ActKind::Float && held.get() != Some(kind);
            if quantise {
                held.set(Some(kind));
            }
            // x holds rows × m.w.k floats (k == cols, checked at load), y rows ×
            // m.w.rows, act act_bytes(max k, self.batch) bytes.
            hints.borrow_mut().product(m.ptr);
            be.launch_gemv_act(&m.w, m.ptr, x, y, rows, act, quantise, Fold::NONE)
        };
        // A folded norm's consumer: its codes are in the fold's buffer already.
        let fold_act = self.folds.act_ptr(be);
        let consume = |m: &Mat, y: u64, fold: Fold| {
            hints.borrow_mut().product(m.ptr);
            be.launch_gemv_act(&m.w, m.ptr, 0, y, 1, fold_act, false, fold)
        };
        // A product of a norm's output `xn`, or of its fold's codes (`fold`):
        // the first product of an unfolded norm quantises `xn` unless its
        // quantiser ran fused (`quantised`).
        let norm_product =
            |fold: Option<Fold>, quantised: bool, m: &Mat, y: u64, first: bool| match fold {
                Some(c) => consume(m, y, c),
                None => gemv(m, xn, y, n, !first || quantised),
            };
        // Which norms are folded this pass (site 2·i: layer i's attention norm,
        // 2·i + 1: its FFN norm, 2·L: the output norm; see cuda/fold.rs).
        let nl = self.layers.len();
        let plans = self.fold_plans(n, logits.is_some());
        // A folded site's launch, in place of its norm's: y is the residual's
        // update (0: none).
        let fold_kernel = |s: usize, y: u64| -> Result<(), CudaError> {
            let Some(k) = plans[s] else {
                return Ok(());
            };
            let (hp, hn) = hint(Site::Norm);
            Launch::new(st, &self.k.norm_fold_q)
                .arg(&k.out)
                .arg(&y)
                .arg(&hp)
                .arg(&hn)
                .launch(LaunchConfig {
                    grid_dim: (k.groups, 1, 1),
                    block_dim: (k.threads, 1, 1),
                    shared_mem_bytes: 0,
                })
                .ctx("launching norm_fold_q")
                .map(|_| ())
        };
        let (nh_i, nkv_i, hd_i, nrot_i) = (nh as i32, nkv as i32, hd as i32, c.n_rot as i32);
        let neox = (c.rope_mode == RopeMode::Neox) as i32;
        let ratio = c.rope_base.powf(-2.0 / c.n_rot as f32);
        let rope_scale = c.rope_scale;
        let ff_ptr = opt_ptr(be, &self.freq_factors);
        let n_chunks = self.n_chunks as i32;
        let scale = 1.0 / (hd as f32).sqrt();
        let post_threads = (hd.div_ceil(32) * 32) as u32;
        let ffn = (n * ff) as i64;
        for (li, l) in self.layers.iter().enumerate() {
            // The previous block's down projection joins the residual here.
            let dl = if li == 0 { 0 } else { delta };
            let sk = self.skip;
            let attn_fold = plans[2 * li].map(|p| p.consumer);
            fold_kernel(2 * li, dl)?;
            let qf = if sk.norm || attn_fold.is_some() {
                None
            } else {
                fq(&l.wq, n, true)
            };
            if !sk.norm && attn_fold.is_none() {
                norm(x, dl, p(&l.attn_norm), xn, n, qf)?;
            }
            fused(&l.wq, &qf);
            let attn_product =
                |m: &Mat, y: u64, first: bool| norm_product(attn_fold, qf.is_some(), m, y, first);
            // One token: k (and v) right after q, as the stacked product writes.
            let (kb, vb) = match &l.qkv {
                Some((m, parts)) if self.stack && n == 1 => {
                    attn_product(m, q, true)?;
                    let kb = q + (nh * hd * 4) as u64;
                    if *parts == 3 {
                        (kb, kb + (nkv * hd * 4) as u64)
                    } else {
                        attn_product(&l.wv, vb, false)?;
                        (kb, vb)
                    }
                }
                _ => {
                    attn_product(&l.wq, q, true)?;
                    attn_product(&l.wk, kb, false)?;
                    attn_product(&l.wv, vb, false)?;
                    (kb, vb)
                }
            };
            let (kc, vc) = (p(&l.k_cache), p(&l.v_cache));
            if !sk.post {
                let (hp, hn) = hint(Site::Post);
                Launch::new(st, &self.k.qkv_post)
                    .arg(&q)
                    .arg(&kb)
                    .arg(&vb)
                    .arg(&opt_ptr(be, &l.bq))
                    .arg(&opt_ptr(be, &l.bk))
                    .arg(&opt_ptr(be, &l.bv))
                    .arg(&opt_ptr(be, &l.q_norm))
                    .arg(&opt_ptr(be, &l.k_norm))
                    .arg(&ff_ptr)
                    .arg(&kc)
                    .arg(&vc)
                    .arg(&params)
                    .arg(&nh_i)
                    .arg(&nkv_i)
                    .arg(&hd_i)
                    .arg(&nrot_i)
                    .arg(&neox)
                    .arg(&eps)
                    .arg(&ratio)
                    .arg(&rope_scale)
                    .arg(&hp)
                    .arg(&hn)
                    .launch(LaunchConfig {
                        grid_dim: ((nh + nkv) as u32, n as u32, 1),
                        block_dim: (post_threads, 1, 1),
                        shared_mem_bytes: 0,
                    })
                    .ctx("launching qkv_post")?;
            }
            // Several tokens: one flash-style pass (o's quantiser then a launch).
            let flash = n > 1 && !sk.attn && prefill_attention(nh / nkv, hd);
            if flash {
                let n_i = n as i32;
                Launch::new(st, &self.k.attn_prefill)
                    .arg(&q)
                    .arg(&kc)
                    .arg(&vc)
                    .arg(&attn)
                    .arg(&params)
                    .arg(&n_i)
                    .arg(&nh_i)
                    .arg(&nkv_i)
                    .arg(&hd_i)
                    .arg(&scale)
                    .launch(LaunchConfig {
                        grid_dim: (nkv as u32, n.div_ceil(PREFILL_ROWS / (nh / nkv)) as u32, 1),
                        block_dim: (128, 1, 1),
                        shared_mem_bytes: prefill_smem_bytes(hd) as u32,
                    })
                    .ctx("launching attn_prefill")?;
            }
            // The combine with o's quantiser: blocks of 256 outputs, whole heads.
            let cf = if flash || sk.attn || hd < 32 || 256 % hd != 0 {
                None
            } else {
                fq(&l.wo, n, false)
            };
            if !sk.attn && !flash {
                let (hp, hn) = hint(Site::Attn);
                Launch::new(st, &self.k.attn_partial)
                    .arg(&q)
                    .arg(&kc)
                    .arg(&vc)
                    .arg(&part)
                    .arg(&params)
                    .arg(&nh_i)
                    .arg(&nkv_i)
                    .arg(&hd_i)
                    .arg(&n_chunks)
                    .arg(&scale)
                    .arg(&hp)
                    .arg(&hn)
                    .launch(LaunchConfig {
                        grid_dim: (nkv as u32, self.n_chunks as u32, n as u32),
                        block_dim: (128, 1, 1),
                        shared_mem_bytes: 0,
                    })
                    .ctx("launching attn_partial")?;
            }
            if let Some((mode, xq, xa)) = cf {
                let (hp, hn) = hint(Site::Combine);
                Launch::new(st, &self.k.attn_combine_q)
                    .arg(&part)
                    .arg(&attn)
                    .arg(&params)
                    .arg(&nh_i)
                    .arg(&hd_i)
                    .arg(&n_chunks)
                    .arg(&mode)
                    .arg(&xq)
                    .arg(&xa)
                    .arg(&hp)
                    .arg(&hn)
                    .launch(LaunchConfig {
                        grid_dim: ((nh * hd).div_ceil(256) as u32, n as u32, 1),
                        block_dim: (256, 1, 1),
                        shared_mem_bytes: 0,
                    })
                    .ctx("launching attn_combine_q")?;
            } else if !sk.attn && !flash {
                let (hp, hn) = hint(Site::Combine);
                Launch::new(st, &self.k.attn_combine)
                    .arg(&part)
                    .arg(&attn)
                    .arg(&params)
                    .arg(&nh_i)
                    .arg(&hd_i)
                    .arg(&n_chunks)
                    .arg(&hp)
                    .arg(&hn)
                    .launch(LaunchConfig {
                        grid_dim: (nh as u32, n as u32, 1),
                        block_dim: (post_threads.min(256), 1, 1),
                        shared_mem_bytes: 0,
                    })
                    .ctx("launching attn_combine")?;
            }
            fused(&l.wo, &cf);
            gemv(&l.wo, attn, delta, n, cf.is_some())?;
            let ffn_fold = plans[2 * li + 1].map(|p| p.consumer);
            fold_kernel(2 * li + 1, delta)?;
            let gf = if sk.norm || ffn_fold.is_some() {
                None
            } else {
                fq(&l.gate, n, true)
            };
            if !sk.norm && ffn_fold.is_none() {
                norm(x, delta, p(&l.ffn_norm), xn, n, gf)?;
            }
            fused(&l.gate, &gf);
            let ffn_product =
                |m: &Mat, y: u64, first: bool| norm_product(ffn_fold, gf.is_some(), m, y, first);
            let h = match &l.gate_up {
                Some(m) if self.stack && n == 1 => {
                    ffn_product(m, g, true)?;
                    g + (ff * 4) as u64
                }
                _ => {
                    ffn_product(&l.gate, g, true)?;
                    ffn_product(&l.up, h, false)?;
                    h
                }
            };
            let sf = if sk.silu { None } else { fq(&l.down, n, false) };
            if let Some((mode, xq, xa)) = sf {
                let (hp, hn) = hint(Site::Silu);
                Launch::new(st, &self.k.silu_mul_q)
                    .arg(&g)
                    .arg(&h)
                    .arg(&ffn)
                    .arg(&mode)
                    .arg(&xq)
                    .arg(&xa)
                    .arg(&hp)
                    .arg(&hn)
                    .launch(LaunchConfig {
                        grid_dim: ((n * ff).div_ceil(256) as u32, 1, 1),
                        block_dim: (256, 1, 1),
                        shared_mem_bytes: 0,
                    })
                    .ctx("launching silu_mul_q")?;
            } else if !sk.silu {
                let (hp, hn) = hint(Site::Silu);
                Launch::new(st, &self.k.silu_mul)
                    .arg(&g)
                    .arg(&h)
                    .arg(&ffn)
                    .arg(&hp)
                    .arg(&hn)
                    .launch(LaunchConfig {
                        grid_dim: ((n * ff).div_ceil(256) as u32, 1, 1),
                        block_dim: (256, 1, 1),
                        shared_mem_bytes: 0,
                    })
                    .ctx("launching silu_mul")?;
            }
            fused(&l.down, &sf);
            gemv(&l.down, h, delta, n, sf.is_some())?;
        }
        let Some(rows) = logits else {
            // A prefill chunk whose logits nobody reads: the KV cache is all it
            // leaves behind.
            if n == 1 {
                self.l2_hinted
                    .set((hints.borrow().total(), hints.borrow().in_order()));
            }
            return Ok(());
        };
        // The output rows: the last `rows` tokens (their residual add fused in).
        let first = (n - rows) as u64;
        let row_off = first * d as u64 * 4;
        let dl = if self.layers.is_empty() {
            0
        } else {
            delta + row_off
        };
        let lg = p(&b.logits);
        if let Some(p) = plans[2 * nl] {
            fold_kernel(2 * nl, dl)?;
            consume(&self.output, lg, p.consumer)?;
        } else {
            let of = fq(&self.output, rows, true);
            norm(x + row_off, dl, p(&self.output_norm), xn, rows, of)?;
            fused(&self.output, &of);
            gemv(&self.output, xn, lg, rows, of.is_some())?;
        }
        let vocab = c.vocab as i32;
        let best = ptr_of(be, &b.best);
        let last = lg + ((rows - 1) * c.vocab * 4) as u64;
        let (av, ai) = (p(&b.arg_v), ptr_of(be, &b.arg_i));
        let (hp, hn) = hint(Site::Argmax);
        Launch::new(st, &self.k.argmax_part)
            .arg(&last)
            .arg(&vocab)
            .arg(&av)
            .arg(&ai)
            .arg(&hp)
            .arg(&hn)
            .launch(LaunchConfig {
                grid_dim: (ARG_PARTS as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            })
            .ctx("launching argmax_part")?;
        let parts = ARG_PARTS as i32;
        let (hp, hn) = hint(Site::Argmax);
        Launch::new(st, &self.k.argmax_final)
            .arg(&av)
            .arg(&ai)
            .arg(&parts)
            .arg(&best)
            .arg(&hp)
            .arg(&hn)
            .launch(LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            })
            .ctx("launching argmax_final")?;
        if n == 1 {
            self.l2_hinted
                .set((hints.borrow().total(), hints.borrow().in_order()));
        }
        Ok(())
    }
}

/// The products that read layer `l`'s attention norm in a single-token step.
fn attn_consumers(l: &DevLayer, stack: bool) -> Vec<&DeviceWeight> {
    match &l.qkv {
        Some((m, parts)) if stack => {
            let mut v: Vec<&DeviceWeight> = vec![&m.w];
            if *parts == 2 {
                v.push(&l.wv.w);
            }
            v
        }
        _ => vec![&l.wq.w, &l.wk.w, &l.wv.w],
    }
}

/// The products that read layer `l`'s FFN norm in a single-token step.
fn ffn_consumers(l: &DevLayer, stack: bool) -> Vec<&DeviceWeight> {
    match &l.gate_up {
        Some(m) if stack => vec![&m.w],
        _ => vec![&l.gate.w, &l.up.w],
    }
}

/// Threads of an RMSNorm block for rows of `d` values.
fn norm_threads(d: usize) -> u32 {
    (d.div_ceil(4).div_ceil(32) * 32).clamp(32, 1024) as u32
}

/// Fills `s` with NaN bytes (0xFF) on the stream.
fn poison_slice<T>(be: &CudaBackend, s: &CudaSlice<T>) -> Result<(), CudaError> {
    let (ptr, _g) = s.device_ptr(be.stream());
    let bytes = s.len() * std::mem::size_of::<T>();
    // SAFETY: `ptr` holds `bytes` bytes.
    unsafe { cudarc::driver::result::memset_d8_async(ptr, 0xFF, bytes, be.stream().cu_stream()) }
        .ctx("poisoning a buffer")
}

fn load_kernels(be: &CudaBackend, ach: usize, hd: usize) -> Result<Kernels, CudaError> {
    let src = decode_source_with(ach, Some(hd));
    let (cubin, _) = super::compile::cubin("quern_decode", &src, be.toolchain())?;
    let module = be
        .context()
        .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
        .ctx("loading module quern_decode")?;
    let f = |name: &str| {
        module
            .load_function(name)
            .ctx(&format!("finding {name} in quern_decode"))
    };
    Ok(Kernels {
        rms_norm: f("rms_norm")?,
        qkv_post: f("qkv_post")?,
        attn_partial: f("attn_partial")?,
        attn_combine: f("attn_combine")?,
        attn_prefill: {
            let func = f("attn_prefill")?;
            let bytes = prefill_smem_bytes(PREFILL_MAX_HD) as i32;
            func.set_attribute(
                cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes,
            )
            .ctx(&format!("allowing {bytes} bytes of shared memory for attn_prefill"))?;
            func
        },
        silu_mul: f("silu_mul")?,
        rms_norm_q: f("rms_norm_q")?,
        norm_fold_q: f("norm_fold_q")?,
        silu_mul_q: f("silu_mul_q")?,
        attn_combine_q: f("attn_combine_q")?,
        argmax_part: f("argmax_part")?,
        argmax_final: f("argmax_final")?,
    })
}

/// `attn_prefill`'s limits (decode.cu: `PF_ROWS`, `PF_BK`, `PF_HD`): 64 query
/// rows per block (64 / G whole tokens of G query heads each), tiles of 32
/// positions, heads of up to 128 dimensions.
const PREFILL_ROWS: usize = 64;
const PREFILL_BK: usize = 32;
const PREFILL_MAX_HD: usize = 128;

/// Dynamic shared memory of `attn_prefill` for heads of `hd`: Q and K with
/// rows of hd + 1 floats, V with rows of hd, P of 64 × 33.
fn prefill_smem_bytes(hd: usize) -> usize {
    4 * ((PREFILL_ROWS + PREFILL_BK) * (hd + 1) + PREFILL_BK * hd + PREFILL_ROWS * (PREFILL_BK + 1))
}

/// Whether a prefill of several tokens takes `attn_prefill` (one pass over the
/// cache for 64 query rows) rather than the decode kernels per token:
/// `QUERN_CUDA_PREFILL_ATTN=0` keeps the decode kernels (for comparison).
fn prefill_attention(group: usize, hd: usize) -> bool {
    group <= PREFILL_ROWS
        && hd <= PREFILL_MAX_HD
        && std::env::var("QUERN_CUDA_PREFILL_ATTN").as_deref() != Ok("0")
}

/// The source of the decode module, as compiled by default.
pub fn decode_source() -> String {
    decode_source_with(ACH, None)
}

/// With `hd` known, each lane of the attention holds the float4s of a row it
/// needs and no more (`ATT_R`: 1 up to 128 dimensions, else 2).
fn decode_source_with(ach: usize, hd: Option<usize>) -> String {
    let r = match hd {
        Some(h) if h <= 128 => "#define ATT_R 1\n",
        _ => "",
    };
    format!("#define ACH {ach}\n{r}{COMMON_SRC}\n{DECODE_SRC}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decode kernels compile for sm_90 where NVRTC is installed (no GPU is
    /// needed for that); elsewhere says so and passes.
    #[test]
    fn decode_module_compiles_with_nvrtc() {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("skipped: NVRTC not found");
            return;
        }
        let tc = super::super::Toolchain {
            arch: "sm_90".into(),
            driver_version: 0,
            nvrtc_version: super::super::compile::nvrtc_version(),
            include: None,
        };
        let cubin = super::super::compile::compile_uncached("test_decode", &decode_source(), &tc)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(cubin.len() > 1000, "{} bytes of cubin", cubin.len());
        // Every chunk size, with one float4 per lane and row (heads of up to 128).
        for ach in [8, 16, 32] {
            let src = decode_source_with(ach, Some(128));
            super::super::compile::compile_uncached("test_decode_r1", &src, &tc)
                .unwrap_or_else(|e| panic!("ACH {ach}, ATT_R 1: {e}"));
        }
    }

    #[test]
    fn chunk_size_follows_the_context() {
        if std::env::var_os("QUERN_CUDA_ATTN_CHUNK").is_some() {
            return;
        }
        assert_eq!(attn_chunk(512), 8);
        assert_eq!(attn_chunk(SHORT_CTX), 8);
        assert_eq!(attn_chunk(SHORT_CTX + 1), 32);
    }

    #[test]
    fn limits_match_the_kernel_source() {
        assert!(DECODE_SRC.contains(&format!("#define MAXCH {MAX_CHUNKS}")));
        assert!(DECODE_SRC.contains(&format!("#define MAXG {MAX_GROUP}")));
        assert!(DECODE_SRC.contains(&format!("#define MAXHD {MAX_HEAD_DIM}")));
        assert!(DECODE_SRC.contains(&format!("#define PF_ROWS {PREFILL_ROWS}")));
        assert!(DECODE_SRC.contains(&format!("#define PF_BK {PREFILL_BK}")));
        assert!(DECODE_SRC.contains(&format!("#define PF_HD {PREFILL_MAX_HD}")));
    }
}
