//! The architecture table: Hugging Face config keys and tensor names to the GGUF
//! keys and names llama.cpp's `convert_hf_to_gguf.py` writes, for Llama (and
//! Mistral, which llama.cpp converts as Llama), Qwen2 and Qwen3.
//!
//! Facts mirrored from llama.cpp's converter (not its code):
//! - `{arch}.*` keys and their types: counts are u32, `rope.freq_base` and
//!   `attention.layer_norm_rms_epsilon` are f32; `vocab_size` and
//!   `rope.dimension_count` are written for `llama` only.
//! - `llama` stores q/k projection rows (weights and biases) permuted for its rope
//!   layout; `qwen2`/`qwen3` use NeoX rope and keep Hugging Face order.
//! - `*.rotary_emb.inv_freq` buffers are dropped; Llama 3.x `rope_type = llama3`
//!   gets a generated `rope_freqs.weight`.
//! - 1-D tensors (norms, biases) stay F32 whatever the output type.

use std::path::PathBuf;

use crate::gguf::value::Value;
use crate::hf_config::{ConfigError, HfConfig};

/// A GGUF architecture this crate can convert to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
}

/// Largest `vocab_size` accepted (real vocabularies stay under a million).
pub const MAX_VOCAB: u64 = 1 << 24;

/// Hugging Face `architectures` entries we accept, and what they become.
pub const SUPPORTED_HF_ARCHITECTURES: &[(&str, Arch)] = &[
    ("LlamaForCausalLM", Arch::Llama),
    ("MistralForCausalLM", Arch::Llama),
    ("Qwen2ForCausalLM", Arch::Qwen2),
    ("Qwen3ForCausalLM", Arch::Qwen3),
];

impl Arch {
    /// `general.architecture` value and key prefix.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }

    /// The inverse of [`Arch::gguf_name`], for readers of GGUF files.
    pub fn from_gguf_name(name: &str) -> Option<Arch> {
        match name {
            "llama" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
            _ => None,
        }
    }

    pub fn from_hf_architecture(name: &str) -> Option<Arch> {
        SUPPORTED_HF_ARCHITECTURES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
    }

    /// Whether llama.cpp stores q/k rows permuted for this architecture.
    pub fn permutes_qk(self) -> bool {
        matches!(self, Arch::Llama)
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.gguf_name())
    }
}

/// Errors deriving a [`ModelSpec`] or mapping tensors.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{}: unsupported architecture {found}; supported: {}", path.display(), supported_list())]
    Unsupported { path: PathBuf, found: String },
    #[error("{}: inconsistent config: {message}", path.display())]
    Inconsistent { path: PathBuf, message: String },
    #[error("{}: unsupported rope_scaling: {message}", path.display())]
    RopeScaling { path: PathBuf, message: String },
    #[error("tensor `{name}` is not part of a {arch} checkpoint (cannot map it to a GGUF name)")]
    UnknownTensor { name: String, arch: &'static str },
}

fn supported_list() -> String {
    SUPPORTED_HF_ARCHITECTURES
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `rope_scaling` / `rope_parameters` as llama.cpp interprets it.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Written as `rope.scaling.type = "linear"` and `rope.scaling.factor`.
    Linear { factor: f64 },
    /// Written as `rope.scaling.type = "yarn"`, factor, original context length and
    /// the optional YaRN parameters present in the config.
    Yarn {
        factor: f64,
        original_context_length: u64,
        ext_factor: Option<f64>,
        attn_factor: Option<f64>,
        beta_fast: Option<f64>,
        beta_slow: Option<f64>,
    },
    /// Llama 3.1/3.2: no keys; a `rope_freqs.weight` tensor carries the factors.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_context_length: u64,
    },
    /// A type llama.cpp passes over without writing keys (e.g. `default`,
    /// `dynamic`); kept so callers can warn.
    Ignored { rope_type: String },
}

/// Everything about a checkpoint's shape that conversion needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub arch: Arch,
    pub hf_architecture: String,
    pub hidden_size: u64,
    pub n_layers: u64,
    pub n_heads: u64,
    pub n_kv_heads: u64,
    /// Per-head dimension (`head_dim`, or hidden/heads).
    pub head_dim: u64,
    /// Whether `head_dim` was given in the config.
    pub head_dim_explicit: bool,
    pub intermediate_size: u64,
    pub vocab_size: u64,
    pub context_length: u64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tied_embeddings: bool,
    /// q/k/v projections carry biases (always for Qwen2; `attention_bias` for Llama).
    pub qkv_bias: bool,
    /// o_proj carries a bias (Llama `attention_bias`).
    pub o_bias: bool,
    /// gate/up/down carry biases (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// Qwen3's per-head RMS norms on q and k.
    pub qk_norm: bool,
}

/// Where one Hugging Face tensor goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedTensor {
    pub gguf_name: String,
    /// `Some(heads)` when the rows must go through [`permute_qk_rows`] with that
    /// many heads (llama q: n_head, k: n_kv_head).
    pub permute_heads: Option<usize>,
    /// Hugging Face (row-major) shape the config implies.
    pub expected_shape: Vec<u64>,
    /// 1-D tensors (norms, biases) that llama.cpp always stores as F32.
    pub keep_f32: bool,
}

impl ModelSpec {
    pub fn from_config(cfg: &HfConfig) -> Result<ModelSpec, ArchError> {
        let path = cfg.path().to_path_buf();
        let archs = cfg.architectures();
        let (hf_architecture, arch) = archs
            .iter()
            .find_map(|a| Arch::from_hf_architecture(a).map(|arch| (a.clone(), arch)))
            .ok_or_else(|| ArchError::Unsupported {
                path: path.clone(),
                found: if archs.is_empty() {
                    "(config.json has no `architectures`)".to_owned()
                } else {
                    archs.join(", ")
                },
            })?;
        let inconsistent = |message: String| ArchError::Inconsistent {
            path: path.clone(),
            message,
        };

        let hidden_size = cfg.require_u64("hidden_size")?;
        let n_layers = cfg.require_u64("num_hidden_layers")?;
        let n_heads = cfg.require_u64("num_attention_heads")?;
        let n_kv_heads = cfg.get_u64("num_key_value_heads")?.unwrap_or(n_heads);
        let intermediate_size = cfg.require_u64("intermediate_size")?;
        let vocab_size = cfg.require_u64("vocab_size")?;
        let context_length = cfg.require_u64("max_position_embeddings")?;
        let rms_norm_eps = cfg
            .get_f64("rms_norm_eps")?
            .ok_or_else(|| cfg.missing("rms_norm_eps"))?;
        let rope_theta = cfg.get_f64("rope_theta")?.unwrap_or(10000.0);

        for (key, v) in [
            ("hidden_size", hidden_size),
            ("num_hidden_layers", n_layers),
            ("num_attention_heads", n_heads),
            ("num_key_value_heads", n_kv_heads),
            ("intermediate_size", intermediate_size),
            ("vocab_size", vocab_size),
        ] {
            if v == 0 {
                return Err(inconsistent(format!("`{key}` is 0")));
            }
            if v > u32::MAX as u64 {
                return Err(inconsistent(format!("`{key}` = {v} does not fit in u32")));
            }
        }
        // The tokenizer tables are sized by it; real vocabularies are < 1M.
        if vocab_size > MAX_VOCAB {
            return Err(inconsistent(format!(
                "vocab_size ({vocab_size}) is implausibly large (limit {MAX_VOCAB})"
            )));
        }
        if n_heads % n_kv_heads != 0 {
            return Err(inconsistent(format!(
                "num_attention_heads ({n_heads}) is not a multiple of num_key_value_heads ({n_kv_heads})"
            )));
        }
        let head_dim_cfg = cfg.get_u64("head_dim")?;
        let head_dim = match head_dim_cfg {
            Some(0) => return Err(inconsistent("`head_dim` is 0".to_owned())),
            Some(d) => d,
            None => {
                if hidden_size % n_heads != 0 {
                    return Err(inconsistent(format!(
                        "hidden_size ({hidden_size}) is not divisible by num_attention_heads ({n_heads}) and no head_dim is given"
                    )));
                }
                hidden_size / n_heads
            }
        };
        if arch.permutes_qk() && head_dim % 2 != 0 {
            return Err(inconsistent(format!(
                "head_dim ({head_dim}) is odd; rope needs pairs"
            )));
        }
        if !(rms_norm_eps > 0.0 && rms_norm_eps.is_finite()) {
            return Err(inconsistent(format!(
                "rms_norm_eps ({rms_norm_eps}) must be positive"
            )));
        }
        if !(rope_theta > 0.0 && rope_theta.is_finite()) {
            return Err(inconsistent(format!(
                "rope_theta ({rope_theta}) must be positive"
            )));
        }

        let rope_scaling = parse_rope_scaling(cfg)?;
        let tied_embeddings = cfg.get_bool("tie_word_embeddings")?.unwrap_or(false);
        let attention_bias = cfg.get_bool("attention_bias")?.unwrap_or(false);
        let mlp_bias = cfg.get_bool("mlp_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias, mlp_bias, qk_norm) = match arch {
            Arch::Llama => (attention_bias, attention_bias, mlp_bias, false),
            Arch::Qwen2 => (true, false, false, false),
            Arch::Qwen3 => (attention_bias, false, false, true),
        };

        Ok(ModelSpec {
            arch,
            hf_architecture,
            hidden_size,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            head_dim_explicit: head_dim_cfg.is_some(),
            intermediate_size,
            vocab_size,
            context_length,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            tied_embeddings,
            qkv_bias,
            o_bias,
            mlp_bias,
            qk_norm,
        })
    }

    /// `general.architecture`, `general.type`, `general.name` and the `{arch}.*`
    /// hyper-parameters, in the order llama.cpp writes them.
    /// `general.file_type` and `general.quantization_version` are the caller's.
    pub fn gguf_metadata(&self, model_name: &str) -> Vec<(String, Value)> {
        let a = self.arch.gguf_name();
        let k = |s: &str| format!("{a}.{s}");
        let u32v = |v: u64| Value::U32(v as u32);
        let mut out = vec![
            (
                "general.architecture".to_owned(),
                Value::String(a.to_owned()),
            ),
            ("general.type".to_owned(), Value::String("model".to_owned())),
            (
                "general.name".to_owned(),
                Value::String(model_name.to_owned()),
            ),
            (k("block_count"), u32v(self.n_layers)),
            (k("context_length"), u32v(self.context_length)),
            (k("embedding_length"), u32v(self.hidden_size)),
            (k("feed_forward_length"), u32v(self.intermediate_size)),
            (k("attention.head_count"), u32v(self.n_heads)),
            (k("attention.head_count_kv"), u32v(self.n_kv_heads)),
        ];
        match &self.rope_scaling {
            Some(RopeScaling::Linear { factor }) => {
                out.push((k("rope.scaling.type"), Value::String("linear".into())));
                out.push((k("rope.scaling.factor"), Value::F32(*factor as f32)));
            }
            Some(RopeScaling::Yarn {
                factor,
                original_context_length,
                ext_factor,
                attn_factor,
                beta_fast,
                beta_slow,
            }) => {
                out.push((k("rope.scaling.type"), Value::String("yarn".into())));
                out.push((k("rope.scaling.factor"), Value::F32(*factor as f32)));
                out.push((
                    k("rope.scaling.original_context_length"),
                    u32v(*original_context_length),
                ));
                for (key, v) in [
                    ("rope.scaling.yarn_ext_factor", ext_factor),
                    ("rope.scaling.yarn_attn_factor", attn_factor),
                    ("rope.scaling.yarn_beta_fast", beta_fast),
                    ("rope.scaling.yarn_beta_slow", beta_slow),
                ] {
                    if let Some(v) = v {
                        out.push((k(key), Value::F32(*v as f32)));
                    }
                }
            }
            Some(RopeScaling::Llama3 { .. }) | Some(RopeScaling::Ignored { .. }) | None => {}
        }
        out.push((k("rope.freq_base"), Value::F32(self.rope_theta as f32)));
        out.push((
            k("attention.layer_norm_rms_epsilon"),
            Value::F32(self.rms_norm_eps as f32),
        ));
        // llama.cpp writes key/value_length whenever config.json has `head_dim`; we
        // write them only when they differ from hidden/heads, the loader's default,
        // so the result is the same model (and matches files made before
        // llama.cpp started writing them).
        if self.head_dim_explicit && self.head_dim * self.n_heads != self.hidden_size {
            out.push((k("attention.key_length"), u32v(self.head_dim)));
            out.push((k("attention.value_length"), u32v(self.head_dim)));
        }
        if self.arch == Arch::Llama {
            out.push((k("vocab_size"), u32v(self.vocab_size)));
            out.push((k("rope.dimension_count"), u32v(self.head_dim)));
        }
        out
    }

    /// Maps one Hugging Face tensor name. `Ok(None)`: llama.cpp drops it.
    pub fn map_tensor(&self, hf_name: &str) -> Result<Option<MappedTensor>, ArchError> {
        let unknown = || ArchError::UnknownTensor {
            name: hf_name.to_owned(),
            arch: self.arch.gguf_name(),
        };
        // Non-persistent rope buffers some exporters save; llama.cpp skips them.
        if hf_name.ends_with(".rotary_emb.inv_freq") {
            return Ok(None);
        }
        let h = self.hidden_size;
        let top = |gguf: &str, shape: Vec<u64>| {
            Ok(Some(MappedTensor {
                gguf_name: gguf.to_owned(),
                permute_heads: None,
                keep_f32: shape.len() == 1,
                expected_shape: shape,
            }))
        };
        match hf_name {
            "model.embed_tokens.weight" => {
                return top("token_embd.weight", vec![self.vocab_size, h])
            }
            "model.norm.weight" => return top("output_norm.weight", vec![h]),
            // Kept even when embeddings are tied: llama.cpp maps whatever the
            // checkpoint holds (tied checkpoints normally omit it).
            "lm_head.weight" => return top("output.weight", vec![self.vocab_size, h]),
            _ => {}
        }
        let rest = hf_name.strip_prefix("model.layers.").ok_or_else(unknown)?;
        let (layer, local) = rest.split_once('.').ok_or_else(unknown)?;
        // Reject "01" and the like: they would not round-trip.
        let bid: u64 = match layer.parse::<u64>() {
            Ok(b) if layer == b.to_string().as_str() => b,
            _ => return Err(unknown()),
        };
        if bid >= self.n_layers {
            return Err(unknown());
        }
        let (module, suffix) = local.rsplit_once('.').ok_or_else(unknown)?;
        let is_bias = match suffix {
            "weight" => false,
            "bias" => true,
            _ => return Err(unknown()),
        };
        let q_rows = self.n_heads * self.head_dim;
        let kv_rows = self.n_kv_heads * self.head_dim;
        let i = self.intermediate_size;
        let permute = self.arch.permutes_qk();
        // (gguf short name, weight shape, bias allowed, permute heads)
        let (short, weight_shape, bias_ok, heads): (&str, Vec<u64>, bool, Option<u64>) =
            match module {
                "input_layernorm" => ("attn_norm", vec![h], false, None),
                "post_attention_layernorm" => ("ffn_norm", vec![h], false, None),
                "self_attn.q_proj" => (
                    "attn_q",
                    vec![q_rows, h],
                    self.qkv_bias,
                    permute.then_some(self.n_heads),
                ),
                "self_attn.k_proj" => (
                    "attn_k",
                    vec![kv_rows, h],
                    self.qkv_bias,
                    permute.then_some(self.n_kv_heads),
                ),
                "self_attn.v_proj" => ("attn_v", vec![kv_rows, h], self.qkv_bias, None),
                "self_attn.o_proj" => ("attn_output", vec![h, q_rows], self.o_bias, None),
                "self_attn.q_norm" if self.qk_norm => {
                    ("attn_q_norm", vec![self.head_dim], false, None)
                }
                "self_attn.k_norm" if self.qk_norm => {
                    ("attn_k_norm", vec![self.head_dim], false, None)
                }
                "mlp.gate_proj" => ("ffn_gate", vec![i, h], self.mlp_bias, None),
                "mlp.up_proj" => ("ffn_up", vec![i, h], self.mlp_bias, None),
                "mlp.down_proj" => ("ffn_down", vec![h, i], self.mlp_bias, None),
                _ => return Err(unknown()),
            };
        if is_bias && !bias_ok {
            return Err(unknown());
        }
        let expected_shape = if is_bias {
            vec![weight_shape[0]]
        } else {
            weight_shape
        };
        Ok(Some(MappedTensor {
            gguf_name: format!("blk.{bid}.{short}.{suffix}"),
            permute_heads: heads.map(|n| n as usize),
            keep_f32: expected_shape.len() == 1,
            expected_shape,
        }))
    }

    /// Tensors llama.cpp generates that are not in the checkpoint:
    /// `rope_freqs.weight` for `rope_type = llama3`. Shapes are ggml order.
    pub fn extra_tensors(&self) -> Vec<(String, Vec<u64>, Vec<f32>)> {
        match &self.rope_scaling {
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context_length,
            }) => {
                let f = llama3_rope_factors(
                    self.head_dim,
                    self.rope_theta,
                    *factor,
                    *low_freq_factor,
                    *high_freq_factor,
                    *original_context_length,
                );
                vec![("rope_freqs.weight".to_owned(), vec![f.len() as u64], f)]
            }
            _ => Vec::new(),
        }
    }

    /// Records whether the checkpoint holds `lm_head.weight`. Without it the
    /// model is tied whatever `tie_word_embeddings` says (llama.cpp then reuses
    /// `token_embd` as the output), so [`ModelSpec::expected_tensors`] stops
    /// asking for it.
    pub fn set_lm_head_present(&mut self, present: bool) {
        if !present {
            self.tied_embeddings = true;
        }
    }

    /// Every tensor the checkpoint must hold, with its Hugging Face shape, in the
    /// order a llama.cpp-style writer emits them (embeddings, blocks, output).
    /// `lm_head.weight` is listed only when embeddings are not tied.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<u64>)> {
        let mut names = vec!["model.embed_tokens.weight".to_owned()];
        for b in 0..self.n_layers {
            let p = format!("model.layers.{b}");
            names.push(format!("{p}.input_layernorm.weight"));
            for m in ["q_proj", "k_proj", "v_proj"] {
                names.push(format!("{p}.self_attn.{m}.weight"));
                if self.qkv_bias {
                    names.push(format!("{p}.self_attn.{m}.bias"));
                }
            }
            if self.qk_norm {
                names.push(format!("{p}.self_attn.q_norm.weight"));
                names.push(format!("{p}.self_attn.k_norm.weight"));
            }
            names.push(format!("{p}.self_attn.o_proj.weight"));
            if self.o_bias {
                names.push(format!("{p}.self_attn.o_proj.bias"));
            }
            names.push(format!("{p}.post_attention_layernorm.weight"));
            for m in ["gate_proj", "up_proj", "down_proj"] {
                names.push(format!("{p}.mlp.{m}.weight"));
                if self.mlp_bias {
                    names.push(format!("{p}.mlp.{m}.bias"));
                }
            }
        }
        names.push("model.norm.weight".to_owned());
        if !self.tied_embeddings {
            names.push("lm_head.weight".to_owned());
        }
        names
            .into_iter()
            .filter_map(|n| match self.map_tensor(&n) {
                Ok(Some(m)) => Some((n, m.expected_shape)),
                // Every name above is one map_tensor accepts for this spec.
                _ => None,
            })
            .collect()
    }
}

fn parse_rope_scaling(cfg: &HfConfig) -> Result<Option<RopeScaling>, ArchError> {
    // Newer transformers call it `rope_parameters`; llama.cpp reads either.
    let obj = match cfg.get_object("rope_parameters")? {
        Some(o) => Some(o),
        None => cfg.get_object("rope_scaling")?,
    };
    let Some(obj) = obj else {
        return Ok(None);
    };
    let path = cfg.path().to_path_buf();
    let bad = |message: String| ArchError::RopeScaling {
        path: path.clone(),
        message,
    };
    let num = |key: &str| -> Result<Option<f64>, ArchError> {
        match obj.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| bad(format!("`{key}` should be a number, found {v}"))),
        }
    };
    let Some(rope_type) = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(|v| v.as_str())
    else {
        return Ok(None);
    };
    let factor = num("factor")?;
    Ok(Some(match rope_type.to_ascii_lowercase().as_str() {
        "linear" => match factor {
            Some(factor) => RopeScaling::Linear { factor },
            None => RopeScaling::Ignored {
                rope_type: rope_type.to_owned(),
            },
        },
        "yarn" => match factor {
            Some(factor) => {
                let orig = num("original_max_position_embeddings")?
                    .ok_or_else(|| bad("yarn needs `original_max_position_embeddings`".into()))?;
                if orig < 0.0 || orig.fract() != 0.0 {
                    return Err(bad(format!(
                        "`original_max_position_embeddings` ({orig}) is not an integer"
                    )));
                }
                RopeScaling::Yarn {
                    factor,
                    original_context_length: orig as u64,
                    ext_factor: num("extrapolation_factor")?,
                    attn_factor: match num("attention_factor")? {
                        Some(v) => Some(v),
                        None => num("attn_factor")?,
                    },
                    beta_fast: num("beta_fast")?,
                    beta_slow: num("beta_slow")?,
                }
            }
            None => RopeScaling::Ignored {
                rope_type: rope_type.to_owned(),
            },
        },
        "llama3" => {
            // llama.cpp's defaults where a key is absent.
            let orig = match num("original_max_position_embeddings")? {
                Some(v) => v,
                None => cfg
                    .get_f64("original_max_position_embeddings")?
                    .unwrap_or(8192.0),
            };
            let low = num("low_freq_factor")?.unwrap_or(1.0);
            let high = num("high_freq_factor")?.unwrap_or(4.0);
            if low == high {
                return Err(bad(format!(
                    "llama3 low_freq_factor and high_freq_factor are both {low}"
                )));
            }
            if !(orig > 0.0 && orig.fract() == 0.0) {
                return Err(bad(format!(
                    "`original_max_position_embeddings` ({orig}) is not a positive integer"
                )));
            }
            RopeScaling::Llama3 {
                factor: factor.unwrap_or(8.0),
                low_freq_factor: low,
                high_freq_factor: high,
                original_context_length: orig as u64,
            }
        }
        "su" | "longrope" => {
            return Err(bad(format!(
            "rope type `{rope_type}` needs per-dimension factor tensors, which are not supported"
        )))
        }
        _ => RopeScaling::Ignored {
            rope_type: rope_type.to_owned(),
        },
    }))
}

/// Llama 3.x per-dimension rope divisors (`rope_freqs`), one per rotated pair:
/// 1 for short wavelengths, `factor` for long ones, a smooth blend in between.
pub fn llama3_rope_factors(
    head_dim: u64,
    theta: f64,
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    original_context_length: u64,
) -> Vec<f32> {
    let old_ctx = original_context_length as f64;
    let low_wavelen = old_ctx / low_freq_factor;
    let high_wavelen = old_ctx / high_freq_factor;
    (0..head_dim / 2)
        .map(|i| {
            // llama.cpp computes the frequencies in f32; do the same so the
            // band edges fall where its do.
            let exponent = (2 * i) as f32 / head_dim as f32;
            let freq = 1.0f32 / (theta as f32).powf(exponent);
            let wavelen = 2.0 * std::f64::consts::PI / freq as f64;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor as f32
            } else {
                let smooth =
                    (old_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect()
}

/// [`permute_qk_rows`] for a whole tensor of Hugging Face shape `hf_shape`
/// (`[rows, cols]` for a weight, `[rows]` for a bias): rows are `hf_shape[0]`,
/// each `elem_bytes` times the product of the remaining dimensions.
pub fn permute_qk_tensor(
    data: &[u8],
    hf_shape: &[u64],
    elem_bytes: usize,
    n_head: usize,
    out: &mut [u8],
) {
    let (n_rows, row_bytes) = rows_of(hf_shape, elem_bytes);
    permute_qk_rows(data, n_rows, row_bytes, n_head, out)
}

/// The inverse of [`permute_qk_tensor`].
pub fn unpermute_qk_tensor(
    data: &[u8],
    hf_shape: &[u64],
    elem_bytes: usize,
    n_head: usize,
    out: &mut [u8],
) {
    let (n_rows, row_bytes) = rows_of(hf_shape, elem_bytes);
    unpermute_qk_rows(data, n_rows, row_bytes, n_head, out)
}

fn rows_of(hf_shape: &[u64], elem_bytes: usize) -> (usize, usize) {
    let n_rows = hf_shape.first().copied().unwrap_or(0) as usize;
    let per_row: u64 = hf_shape.iter().skip(1).product();
    (n_rows, per_row as usize * elem_bytes)
}

/// Rearranges the rows of a q or k projection (or its bias) from Hugging Face
/// order to llama.cpp's: within each head, row `j*half + i` moves to `2*i + j`
/// (the two rotary halves interleaved). Rows are opaque `row_bytes` byte strings,
/// so any element type works. Panics on inconsistent sizes (a caller bug).
pub fn permute_qk_rows(
    data: &[u8],
    n_rows: usize,
    row_bytes: usize,
    n_head: usize,
    out: &mut [u8],
) {
    reorder_rows(data, n_rows, row_bytes, n_head, out, true)
}

/// The inverse of [`permute_qk_rows`]: llama.cpp order back to Hugging Face order.
pub fn unpermute_qk_rows(
    data: &[u8],
    n_rows: usize,
    row_bytes: usize,
    n_head: usize,
    out: &mut [u8],
) {
    reorder_rows(data, n_rows, row_bytes, n_head, out, false)
}

fn reorder_rows(
    data: &[u8],
    n_rows: usize,
    row_bytes: usize,
    n_head: usize,
    out: &mut [u8],
    forward: bool,
) {
    assert!(
        n_head > 0 && n_rows.is_multiple_of(2 * n_head),
        "{n_rows} rows cannot be split into {n_head} heads of rotary pairs"
    );
    assert_eq!(data.len(), n_rows * row_bytes, "input size");
    assert_eq!(out.len(), n_rows * row_bytes, "output size");
    let head_rows = n_rows / n_head;
    let half = head_rows / 2;
    for h in 0..n_head {
        let base = h * head_rows;
        for i in 0..half {
            for j in 0..2 {
                let hf_row = base + j * half + i;
                let gg_row = base + 2 * i + j;
                let (src, dst) = if forward {
                    (hf_row, gg_row)
                } else {
                    (gg_row, hf_row)
                };
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn spec(json: &str) -> Result<ModelSpec, ArchError> {
        let cfg = HfConfig::from_json_str(json, Path::new("/m/config.json")).unwrap();
        ModelSpec::from_config(&cfg)
    }

    #[test]
    fn permute_matches_definition_on_small_example() {
        // 2 heads of 4 rows: HF rows per head [a0 a1 b0 b1] (halves a, b) become
        // [a0 b0 a1 b1].
        let rows: Vec<u8> = (0..8).collect();
        let mut out = vec![0u8; 8];
        permute_qk_rows(&rows, 8, 1, 2, &mut out);
        assert_eq!(out, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        let mut back = vec![0u8; 8];
        unpermute_qk_rows(&out, 8, 1, 2, &mut back);
        assert_eq!(back, rows);
    }

    #[test]
    fn permute_then_unpermute_is_identity_on_wide_rows() {
        let (n_rows, row_bytes, heads) = (24, 6, 3);
        let data: Vec<u8> = (0..n_rows * row_bytes)
            .map(|x| (x * 7 % 251) as u8)
            .collect();
        let mut p = vec![0; data.len()];
        permute_qk_rows(&data, n_rows, row_bytes, heads, &mut p);
        assert_ne!(p, data);
        let mut u = vec![0; data.len()];
        unpermute_qk_rows(&p, n_rows, row_bytes, heads, &mut u);
        assert_eq!(u, data);
        // Rows move whole.
        assert_eq!(
            &p[row_bytes..2 * row_bytes],
            &data[4 * row_bytes..5 * row_bytes]
        );
    }

    #[test]
    fn unsupported_architecture_lists_supported() {
        let e = spec(r#"{"architectures": ["GPT2LMHeadModel"]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("GPT2LMHeadModel")
                && e.contains("Qwen3ForCausalLM")
                && e.contains("MistralForCausalLM"),
            "{e}"
        );
    }

    #[test]
    fn inconsistent_heads_are_rejected() {
        let e = spec(
            r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 10, "num_hidden_layers": 1,
            "num_attention_heads": 3, "intermediate_size": 4, "vocab_size": 5,
            "max_position_embeddings": 8, "rms_norm_eps": 1e-5}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not divisible"), "{e}");
        let e = spec(r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 12, "num_hidden_layers": 1,
            "num_attention_heads": 4, "num_key_value_heads": 3, "intermediate_size": 4, "vocab_size": 5,
            "max_position_embeddings": 8, "rms_norm_eps": 1e-5}"#)
        .unwrap_err()
        .to_string();
        assert!(e.contains("multiple"), "{e}");
        let e = spec(r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 12, "num_hidden_layers": 1,
            "num_attention_heads": 4, "intermediate_size": 4, "vocab_size": 5, "rms_norm_eps": 1e-5}"#)
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_position_embeddings"), "{e}");
    }
}
