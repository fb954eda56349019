//! Quantisation mixes (`quern quantize --type Q4_K_M`): one ggml type per tensor.
//!
//! A mix names a base block type and a recipe that gives some tensors more bits
//! (the output/tied embedding, `attn_v` and `ffn_down` in chosen layers, …). The
//! recipe reproduces the choices of llama.cpp's quantizer (`llama_tensor_get_type`
//! in `src/llama-quant.cpp`, as vendored by llama-cpp-python 0.3.36) so that our
//! files are the same size as llama.cpp's; `quant/tests/mix.rs` checks every mix
//! against types recorded from llama.cpp itself.
//!
//! llama.cpp decides some tensors by their position among tensors of the same kind
//! (the n-th `attn_v`), counting in its loader's order: by layer number, then by
//! name. [`plan`] therefore looks at the whole model at once.

use std::cmp::Ordering;
use std::fmt;

use quern_formats::GgmlType;

/// A `--type` of `quern quantize`: a llama.cpp file type (`LLAMA_FTYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mix {
    Q2K,
    Q3KS,
    Q3KM,
    Q3KL,
    Q4KS,
    Q4KM,
    Q5KS,
    Q5KM,
    Q6K,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Iq4Nl,
    Iq4Xs,
    F16,
    Bf16,
    F32,
}

/// (mix, name, `general.file_type` = llama.h's `LLAMA_FTYPE_*`, base type)
const MIXES: &[(Mix, &str, u32, GgmlType)] = &[
    (Mix::Q2K, "Q2_K", 10, GgmlType::Q2K),
    (Mix::Q3KS, "Q3_K_S", 11, GgmlType::Q3K),
    (Mix::Q3KM, "Q3_K_M", 12, GgmlType::Q3K),
    (Mix::Q3KL, "Q3_K_L", 13, GgmlType::Q3K),
    (Mix::Q4KS, "Q4_K_S", 14, GgmlType::Q4K),
    (Mix::Q4KM, "Q4_K_M", 15, GgmlType::Q4K),
    (Mix::Q5KS, "Q5_K_S", 16, GgmlType::Q5K),
    (Mix::Q5KM, "Q5_K_M", 17, GgmlType::Q5K),
    (Mix::Q6K, "Q6_K", 18, GgmlType::Q6K),
    (Mix::Q8_0, "Q8_0", 7, GgmlType::Q8_0),
    (Mix::Q4_0, "Q4_0", 2, GgmlType::Q4_0),
    (Mix::Q4_1, "Q4_1", 3, GgmlType::Q4_1),
    (Mix::Q5_0, "Q5_0", 8, GgmlType::Q5_0),
    (Mix::Q5_1, "Q5_1", 9, GgmlType::Q5_1),
    (Mix::Iq4Nl, "IQ4_NL", 25, GgmlType::Iq4Nl),
    (Mix::Iq4Xs, "IQ4_XS", 30, GgmlType::Iq4Xs),
    (Mix::F16, "F16", 1, GgmlType::F16),
    (Mix::Bf16, "BF16", 32, GgmlType::Bf16),
    (Mix::F32, "F32", 0, GgmlType::F32),
];

/// Names llama.cpp's `llama-quantize` also accepts for the medium K mixes.
const ALIASES: &[(&str, Mix)] = &[
    ("Q3_K", Mix::Q3KM),
    ("Q4_K", Mix::Q4KM),
    ("Q5_K", Mix::Q5KM),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MixError {
    #[error("unknown quantisation type `{given}`; valid types: {valid}")]
    Unknown { given: String, valid: String },
}

impl Mix {
    fn row(self) -> &'static (Mix, &'static str, u32, GgmlType) {
        // Every variant has exactly one row; the unit test `table_is_complete` pins it.
        MIXES.iter().find(|r| r.0 == self).unwrap_or(&MIXES[0])
    }

    /// Parses a mix name case-insensitively (`q4_k_m`, `Q4_K_M`; `Q4_K` means `Q4_K_M`).
    pub fn parse(s: &str) -> Result<Mix, MixError> {
        let t = s.trim();
        if let Some(r) = MIXES.iter().find(|r| r.1.eq_ignore_ascii_case(t)) {
            return Ok(r.0);
        }
        if let Some(a) = ALIASES.iter().find(|a| a.0.eq_ignore_ascii_case(t)) {
            return Ok(a.1);
        }
        Err(MixError::Unknown {
            given: s.to_string(),
            valid: MIXES.iter().map(|r| r.1).collect::<Vec<_>>().join(", "),
        })
    }

    pub fn name(&self) -> &str {
        self.row().1
    }

    /// The `general.file_type` value llama.cpp writes for this mix.
    pub fn file_type(&self) -> u32 {
        self.row().2
    }

    /// The type most tensors get.
    pub fn base_type(&self) -> GgmlType {
        self.row().3
    }

    /// One line for `--help`: what the mix does, and its size on Llama-3-8B
    /// (bits per weight from llama.cpp's own choices, see `quant/tests/mix.rs`).
    pub fn describe(&self) -> &'static str {
        match self {
            Mix::Q2K => "3.16 bpw: Q2_K; Q3_K ffn_down, attn_output; Q3_K/Q4_K attn_v; Q6_K output",
            Mix::Q3KS => "3.64 bpw: Q3_K; Q6_K output",
            Mix::Q3KM => "4.00 bpw: Q3_K; Q4_K attn_output; Q4_K/Q5_K attn_v, ffn_down; Q6_K output",
            Mix::Q3KL => "4.30 bpw: Q3_K; Q5_K attn_v, ffn_down, attn_output; Q6_K output",
            Mix::Q4KS => "4.67 bpw: Q4_K; Q5_K first attn_v and ffn_down layers; Q6_K output",
            Mix::Q4KM => "4.89 bpw: Q4_K; Q6_K half of attn_v and ffn_down, and output",
            Mix::Q5KS => "5.57 bpw: Q5_K; Q6_K output",
            Mix::Q5KM => "5.70 bpw: Q5_K; Q6_K half of attn_v and ffn_down, and output",
            Mix::Q6K => "6.56 bpw: Q6_K",
            Mix::Q8_0 => "8.50 bpw: Q8_0",
            Mix::Q4_0 => "4.64 bpw: Q4_0; Q6_K output",
            Mix::Q4_1 => "5.10 bpw: Q4_1; Q6_K output",
            Mix::Q5_0 => "5.57 bpw: Q5_0; Q6_K output",
            Mix::Q5_1 => "6.04 bpw: Q5_1; Q6_K output",
            Mix::Iq4Nl => "4.68 bpw: IQ4_NL (non-linear, 32-blocks); Q5_K attn_v, first ffn_down; Q6_K output",
            Mix::Iq4Xs => "4.46 bpw: IQ4_XS (non-linear, 256-blocks); Q5_K attn_v, first ffn_down; Q6_K output",
            Mix::F16 => "16.00 bpw: F16",
            Mix::Bf16 => "16.00 bpw: BF16",
            Mix::F32 => "32.00 bpw: F32 (no quantisation)",
        }
    }

    pub fn all() -> &'static [Mix] {
        const ALL: &[Mix] = &[
            Mix::Q2K,
            Mix::Q3KS,
            Mix::Q3KM,
            Mix::Q3KL,
            Mix::Q4KS,
            Mix::Q4KM,
            Mix::Q5KS,
            Mix::Q5KM,
            Mix::Q6K,
            Mix::Q8_0,
            Mix::Q4_0,
            Mix::Q4_1,
            Mix::Q5_0,
            Mix::Q5_1,
            Mix::Iq4Nl,
            Mix::Iq4Xs,
            Mix::F16,
            Mix::Bf16,
            Mix::F32,
        ];
        ALL
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Mix {
    type Err = MixError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mix::parse(s)
    }
}

/// What the recipe needs to know about one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorContext {
    /// GGUF name, e.g. `blk.3.ffn_down.weight`.
    pub name: String,
    /// ggml order: `shape[0]` is the row length.
    pub shape: Vec<u64>,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// GGUF `general.architecture` (`llama`, `qwen2`, `falcon`, …).
    pub arch: String,
    /// Experts per MoE layer; 0 for dense models.
    pub n_experts: usize,
    /// `token_embd` also serves as the output projection.
    pub tied_output: bool,
}

/// The type chosen for one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub ty: GgmlType,
    /// The type the recipe wanted when the row length did not fit its blocks.
    pub fallback_from: Option<GgmlType>,
}

/// Options that change the recipe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// An importance matrix will be used (llama.cpp then trusts low-bit types more
    /// in the first `ffn_down` layers of IQ4 mixes and guards Q4_0/Q5_0 there).
    pub has_imatrix: bool,
}

/// The recipe: one type per tensor, in the order given, without an importance matrix.
pub fn plan(mix: Mix, tensors: &[TensorContext]) -> Vec<Choice> {
    plan_with(mix, tensors, PlanOptions::default())
}

/// [`plan`] with options.
pub fn plan_with(mix: Mix, tensors: &[TensorContext], opts: PlanOptions) -> Vec<Choice> {
    let model = ModelFacts::of(tensors);
    let base = mix.base_type();
    let mut out = vec![
        Choice {
            ty: GgmlType::F32,
            fallback_from: None,
        };
        tensors.len()
    ];

    // Visit in llama.cpp's loader order so the per-kind counters match its own.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| loader_order(&tensors[a].name, &tensors[b].name));

    let mut seen = Counters::default();
    for i in order {
        let t = &tensors[i];
        if !is_quantizable(t) {
            continue; // 1-D tensors, norms, routers: kept in F32
        }
        if !base.is_quantized() {
            out[i].ty = base;
            continue;
        }
        let role = Role::of(&t.name);
        let wanted = recipe_type(mix, role, t, &model, &mut seen, opts);
        out[i] = fit_row_length(wanted, row_len(t));
    }
    out
}

/// Bytes of tensor data the choices give (no metadata, no alignment padding);
/// `None` if a shape does not fit its chosen type.
pub fn planned_bytes(tensors: &[TensorContext], choices: &[Choice]) -> Option<u64> {
    tensors.iter().zip(choices).try_fold(0u64, |acc, (t, c)| {
        let n = t.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))?;
        acc.checked_add(c.ty.bytes_for(n)?)
    })
}

// ---------------------------------------------------------------------------
// Tensor roles and model-wide facts

/// The kinds of tensor the recipe treats differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    TokenEmbd,
    Output,
    /// `attn_v`, and the fused `attn_qkv` / `attn_kv_b` which carry V.
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

impl Role {
    fn of(name: &str) -> Role {
        if name == "output.weight" {
            Role::Output
        } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
            Role::TokenEmbd
        } else if ["attn_qkv.weight", "attn_kv_b.weight", "attn_v.weight"]
            .iter()
            .any(|s| name.contains(s))
        {
            Role::AttnV
        } else if name.contains("attn_k.weight") {
            Role::AttnK
        } else if name.contains("attn_q.weight") {
            Role::AttnQ
        } else if name.contains("attn_output.weight") {
            Role::AttnOutput
        } else if name.contains("ffn_up") {
            Role::FfnUp
        } else if name.contains("ffn_gate") {
            Role::FfnGate
        } else if name.contains("ffn_down") {
            Role::FfnDown
        } else {
            Role::Other
        }
    }
}

struct ModelFacts {
    n_layers: usize,
    /// Query heads per KV head (0 when unknown).
    n_gqa: usize,
    n_experts: usize,
    falcon: bool,
    /// llama.cpp's `LLM_TYPE_70B`: a Llama with 80 layers and grouped-query attention.
    llama_70b: bool,
    /// `token_embd` is quantised as the output projection.
    tied: bool,
    n_attn_v: usize,
}

impl ModelFacts {
    fn of(tensors: &[TensorContext]) -> ModelFacts {
        let first = tensors.first();
        let get = |f: fn(&TensorContext) -> usize| first.map(f).unwrap_or(0);
        let arch = first.map(|t| t.arch.as_str()).unwrap_or("");
        let (n_heads, n_kv) = (get(|t| t.n_heads), get(|t| t.n_kv_heads));
        let n_layers = get(|t| t.n_layers);
        ModelFacts {
            n_layers,
            n_gqa: n_heads.checked_div(n_kv).unwrap_or(0),
            n_experts: get(|t| t.n_experts),
            falcon: arch == "falcon",
            llama_70b: arch == "llama" && n_layers == 80 && n_heads != n_kv,
            // llama.cpp infers tying from the absence of `output.weight`.
            tied: first.is_some_and(|t| t.tied_output)
                || !tensors.iter().any(|t| t.name == "output.weight"),
            n_attn_v: tensors
                .iter()
                .filter(|t| Role::of(&t.name) == Role::AttnV)
                .count(),
        }
    }
}

/// How many tensors of each counted kind the recipe has already placed.
#[derive(Default)]
struct Counters {
    attn_v: usize,
    ffn_down: usize,
}

/// llama.cpp's loader order: tensors outside `blk.N.` first, then by layer, then by name.
fn loader_order(a: &str, b: &str) -> Ordering {
    layer_of(a).cmp(&layer_of(b)).then_with(|| a.cmp(b))
}

/// The N of `blk.N.`, or -1.
fn layer_of(name: &str) -> i64 {
    name.strip_prefix("blk.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|n| n.parse::<i64>().ok())
        .unwrap_or(-1)
}

fn row_len(t: &TensorContext) -> u64 {
    t.shape.first().copied().unwrap_or(0)
}

/// Dimensions not counting trailing 1s (ggml's `ggml_n_dims`).
fn n_dims(shape: &[u64]) -> usize {
    shape.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1)
}

/// Whether llama.cpp would quantise this tensor at all.
fn is_quantizable(t: &TensorContext) -> bool {
    // Small or index-like 2-D tensors llama.cpp keeps as they are.
    const KEEP: &[&str] = &[
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "attn_rel_b.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
    ];
    let name = t.name.as_str();
    n_dims(&t.shape) >= 2
        && name.ends_with("weight")
        && !KEEP.iter().any(|k| name.contains(k))
        && name != "position_embd.weight"
        && name != "token_types.weight"
}

// ---------------------------------------------------------------------------
// The recipe

/// llama.cpp's "more bits here" layers for the _M mixes: the first and last eighth,
/// and every third layer in between.
fn use_more_bits(i: usize, n: usize) -> bool {
    let (i, n) = (i as i64, n as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

fn recipe_type(
    mix: Mix,
    role: Role,
    t: &TensorContext,
    m: &ModelFacts,
    seen: &mut Counters,
    opts: PlanOptions,
) -> GgmlType {
    use GgmlType as G;
    use Mix::*;
    let base = mix.base_type();

    match role {
        Role::Output => output_type(base, t, m),
        Role::TokenEmbd if m.tied => output_type(base, t, m),
        Role::TokenEmbd => base,
        Role::AttnV => {
            let i = seen.attn_v;
            seen.attn_v += 1;
            let mut ty = match mix {
                Q2K if m.n_gqa >= 4 => G::Q4K,
                Q2K => G::Q3K,
                Q3KM if i < 2 => G::Q5K,
                Q3KM => G::Q4K,
                Q3KL => G::Q5K,
                Iq4Nl | Iq4Xs if m.n_gqa >= 4 => G::Q5K,
                Q4KM | Q5KM if use_more_bits(i, m.n_attn_v) => G::Q6K,
                Q4KS if i < 4 => G::Q5K,
                _ => base,
            };
            // A 70B's V projection is 8× smaller than Q: more bits cost little.
            if m.llama_70b && matches!(ty, G::Q3K | G::Q4K) {
                ty = G::Q5K;
            }
            if m.n_experts == 8 {
                ty = G::Q8_0;
            }
            ty
        }
        Role::AttnK if m.n_experts == 8 => G::Q8_0,
        Role::FfnDown => {
            // Dense models: the running count is the layer. MoE: experts of one layer
            // need not be adjacent, so llama.cpp reads the layer from the name.
            let i = if m.n_experts > 1 {
                usize::try_from(layer_of(&t.name)).unwrap_or(0)
            } else {
                seen.ffn_down
            };
            seen.ffn_down += 1;
            let n = m.n_layers;
            match mix {
                Q2K => G::Q3K,
                Q3KM if i < n / 16 => G::Q5K,
                Q3KM if !m.falcon || use_more_bits(i, n) => G::Q4K,
                Q3KM => G::Q3K,
                Q3KL if m.falcon => G::Q4K,
                Q3KL => G::Q5K,
                Q4KM if m.falcon && i < n / 16 => G::Q6K,
                Q4KM if m.falcon && use_more_bits(i, n) => G::Q5K,
                Q4KM if !m.falcon && use_more_bits(i, n) => G::Q6K,
                Iq4Nl | Iq4Xs if i < n / 8 && !opts.has_imatrix => G::Q5K,
                Q5KM if use_more_bits(i, n) => G::Q6K,
                Q4KS if !m.falcon && i < n / 8 => G::Q5K,
                // With an imatrix, guard the first layers against Q4_0/Q5_0 outliers.
                Q4_0 if opts.has_imatrix && i < n / 8 => G::Q4_1,
                Q5_0 if opts.has_imatrix && i < n / 8 => G::Q5_1,
                _ => base,
            }
        }
        Role::AttnOutput => {
            if m.falcon {
                if mix == Q3KL {
                    G::Q4K
                } else {
                    base
                }
            } else if m.n_experts == 8 {
                match mix {
                    Q2K | Q3KS | Q3KM | Iq4Nl | Q4KS | Q4KM | Iq4Xs => G::Q5K,
                    _ => base,
                }
            } else {
                match mix {
                    Q2K => G::Q3K,
                    Q3KM => G::Q4K,
                    Q3KL => G::Q5K,
                    _ => base,
                }
            }
        }
        Role::AttnK | Role::AttnQ | Role::FfnUp | Role::FfnGate | Role::Other => base,
    }
}

/// The output projection gets 6 bits unless the mix is already Q8_0; Q8_0 when
/// its rows do not fit the base type's blocks (and always for Falcon).
fn output_type(base: GgmlType, t: &TensorContext, m: &ModelFacts) -> GgmlType {
    if m.falcon || !row_len(t).is_multiple_of(base.block_size() as u64) || base == GgmlType::Q8_0 {
        GgmlType::Q8_0
    } else {
        GgmlType::Q6K
    }
}

/// The type to use when `wanted`'s blocks do not divide the row length: the
/// nearest-size type with 32-element blocks, as llama.cpp falls back, else F16.
fn fit_row_length(wanted: GgmlType, row: u64) -> Choice {
    use GgmlType as G;
    let fits = |ty: GgmlType| row.is_multiple_of(ty.block_size() as u64);
    if fits(wanted) {
        return Choice {
            ty: wanted,
            fallback_from: None,
        };
    }
    let smaller = match wanted {
        G::Iq4Xs | G::Iq1S | G::Iq1M | G::Iq2Xxs | G::Iq2Xs | G::Iq2S | G::Iq3Xxs | G::Iq3S => {
            G::Iq4Nl
        }
        G::Q2K | G::Q3K | G::Tq1_0 | G::Tq2_0 => G::Q4_0,
        G::Q4K => G::Q5_0,
        G::Q5K => G::Q5_1,
        G::Q6K => G::Q8_0,
        // Rows not even a multiple of 32 (llama.cpp aborts for these): keep 16 bits.
        _ => G::F16,
    };
    Choice {
        ty: if fits(smaller) { smaller } else { G::F16 },
        fallback_from: Some(wanted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_complete() {
        assert_eq!(Mix::all().len(), MIXES.len());
        for (i, m) in Mix::all().iter().enumerate() {
            assert_eq!(MIXES.iter().filter(|r| r.0 == *m).count(), 1, "{m:?}");
            assert_eq!(MIXES[i].0, *m);
            assert_eq!(Mix::parse(m.name()), Ok(*m));
        }
    }

    #[test]
    fn parse_is_case_insensitive_and_knows_aliases() {
        assert_eq!(Mix::parse("q4_k_m"), Ok(Mix::Q4KM));
        assert_eq!(Mix::parse("Q4_K"), Ok(Mix::Q4KM));
        assert_eq!(Mix::parse("iq4_xs"), Ok(Mix::Iq4Xs));
        let err = Mix::parse("Q4_K_X").unwrap_err().to_string();
        assert!(err.contains("Q4_K_X") && err.contains("Q5_K_M") && err.contains("IQ4_NL"));
    }

    #[test]
    fn more_bits_layers_for_32() {
        let picked: Vec<usize> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(
            picked,
            vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
    }

    #[test]
    fn loader_order_sorts_layers_numerically() {
        let mut v = vec![
            "blk.10.a",
            "output.weight",
            "blk.2.b",
            "blk.2.a",
            "token_embd.weight",
        ];
        v.sort_by(|a, b| loader_order(a, b));
        assert_eq!(
            v,
            vec![
                "output.weight",
                "token_embd.weight",
                "blk.2.a",
                "blk.2.b",
                "blk.10.a"
            ]
        );
    }

    #[test]
    fn fallbacks_follow_block_sizes() {
        let c = fit_row_length(GgmlType::Q4K, 576);
        assert_eq!(
            (c.ty, c.fallback_from),
            (GgmlType::Q5_0, Some(GgmlType::Q4K))
        );
        assert_eq!(fit_row_length(GgmlType::Iq4Xs, 576).ty, GgmlType::Iq4Nl);
        assert_eq!(fit_row_length(GgmlType::Q6K, 100).ty, GgmlType::F16);
        assert_eq!(fit_row_length(GgmlType::Q4_0, 100).ty, GgmlType::F16);
        assert_eq!(fit_row_length(GgmlType::Q4K, 512).fallback_from, None);
    }
}
