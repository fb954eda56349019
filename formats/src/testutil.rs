//! Tiny Hugging Face model folders with random weights, for tests across the
//! workspace (enabled in this crate's tests and by the `testutil` feature).

use std::collections::HashMap;
use std::path::Path;

use half::{bf16, f16};
use safetensors::tensor::{Dtype as StDtype, TensorView};
use serde_json::json;

/// The shape of a tiny model.
#[derive(Debug, Clone)]
pub struct TinyModel {
    /// `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM` or `Qwen3ForCausalLM`.
    pub architecture: &'static str,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub tied: bool,
    /// `"bf16"`, `"f16"` or `"f32"`.
    pub dtype: &'static str,
    pub seed: u64,
    /// Llama 3.1-style `rope_scaling` of type llama3.
    pub llama3_rope: bool,
}

impl TinyModel {
    pub fn llama() -> Self {
        TinyModel {
            architecture: "LlamaForCausalLM",
            hidden: 64,
            intermediate: 96,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            tied: true,
            dtype: "bf16",
            seed: 1,
            llama3_rope: false,
        }
    }

    pub fn qwen2() -> Self {
        TinyModel {
            architecture: "Qwen2ForCausalLM",
            tied: false,
            seed: 2,
            ..Self::llama()
        }
    }

    pub fn qwen3() -> Self {
        TinyModel {
            architecture: "Qwen3ForCausalLM",
            seed: 3,
            ..Self::llama()
        }
    }

    pub fn vocab_size(&self) -> usize {
        tokenizer_vocab().len()
    }

    fn model_type(&self) -> &'static str {
        match self.architecture {
            "Qwen2ForCausalLM" => "qwen2",
            "Qwen3ForCausalLM" => "qwen3",
            "MistralForCausalLM" => "mistral",
            _ => "llama",
        }
    }

    pub fn config(&self) -> serde_json::Value {
        let mut c = json!({
            "architectures": [self.architecture],
            "model_type": self.model_type(),
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": 256,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "vocab_size": self.vocab_size(),
            "tie_word_embeddings": self.tied,
            "hidden_act": "silu",
            "bos_token_id": 0,
            "eos_token_id": 1,
            "torch_dtype": match self.dtype { "f16" => "float16", "f32" => "float32", _ => "bfloat16" },
        });
        if self.llama3_rope {
            c["rope_scaling"] = json!({
                "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64
            });
        }
        c
    }

    /// HF tensor names and shapes (row-major) of this model.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, f, v) = (self.hidden, self.intermediate, self.vocab_size());
        let q = self.heads * self.head_dim;
        let kv = self.kv_heads * self.head_dim;
        let mut t = vec![
            ("model.embed_tokens.weight".to_string(), vec![v, h]),
            ("model.norm.weight".to_string(), vec![h]),
        ];
        if !self.tied {
            t.push(("lm_head.weight".to_string(), vec![v, h]));
        }
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            t.push((format!("{p}.input_layernorm.weight"), vec![h]));
            t.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            t.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
            t.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            t.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            t.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
            t.push((format!("{p}.mlp.gate_proj.weight"), vec![f, h]));
            t.push((format!("{p}.mlp.up_proj.weight"), vec![f, h]));
            t.push((format!("{p}.mlp.down_proj.weight"), vec![h, f]));
            if self.architecture == "Qwen2ForCausalLM" {
                t.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
                t.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
                t.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
            }
            if self.architecture == "Qwen3ForCausalLM" {
                t.push((format!("{p}.self_attn.q_norm.weight"), vec![self.head_dim]));
                t.push((format!("{p}.self_attn.k_norm.weight"), vec![self.head_dim]));
            }
        }
        t
    }

    /// Random f32 values of every tensor (norm weights near 1), deterministic in `seed`.
    pub fn weights(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut rng = SplitMix(self.seed);
        self.tensor_shapes()
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let is_norm = name.contains("norm");
                let values = (0..n)
                    .map(|_| {
                        let u = rng.uniform();
                        if is_norm {
                            1.0 + 0.1 * u
                        } else {
                            0.05 * u
                        }
                    })
                    .collect();
                (name, shape, values)
            })
            .collect()
    }

    /// Writes config.json, model.safetensors, tokenizer.json and tokenizer_config.json.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        write_json(&dir.join("config.json"), &self.config())?;
        let weights = self.weights();
        write_safetensors(&dir.join("model.safetensors"), &weights, self.dtype)?;
        write_json(&dir.join("tokenizer.json"), &tokenizer_json())?;
        write_json(
            &dir.join("tokenizer_config.json"),
            &json!({
                "add_bos_token": false,
                "bos_token": "<|endoftext|>",
                "eos_token": "<|im_end|>",
                "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
                "tokenizer_class": "GPT2Tokenizer"
            }),
        )?;
        Ok(())
    }
}

/// Writes tensors (row-major f32 values) as a safetensors file in `dtype`.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    dtype: &str,
) -> std::io::Result<()> {
    let (st, bytes): (StDtype, Vec<Vec<u8>>) = match dtype {
        "f32" => (
            StDtype::F32,
            tensors
                .iter()
                .map(|t| bytemuck::cast_slice(&t.2).to_vec())
                .collect(),
        ),
        "f16" => (
            StDtype::F16,
            tensors
                .iter()
                .map(|t| {
                    t.2.iter()
                        .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                        .collect()
                })
                .collect(),
        ),
        _ => (
            StDtype::BF16,
            tensors
                .iter()
                .map(|t| {
                    t.2.iter()
                        .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                        .collect()
                })
                .collect(),
        ),
    };
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            TensorView::new(st, t.1.clone(), b)
                .map(|v| (t.0.clone(), v))
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    safetensors::serialize_to_file(views, None::<HashMap<String, String>>, path)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

fn write_json(path: &Path, value: &serde_json::Value) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    std::fs::write(path, text)
}

/// GPT-2's byte → printable character map used by byte-level BPE vocabularies.
pub fn byte_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    let mut map = vec![' '; 256];
    for (b, c) in printable.iter().zip(chars) {
        map[*b as usize] = char::from_u32(c).unwrap_or('?');
    }
    map
}

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_end|>", "<|im_start|>"];
const MERGES: [(&str, &str); 6] = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("Ġ", "a"),
    ("e", "r"),
];

/// The tiny vocabulary: three special tokens, the 256 byte symbols, then one token per merge.
pub fn tokenizer_vocab() -> Vec<String> {
    let mut v: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    v.extend(byte_to_unicode().into_iter().map(String::from));
    v.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    v
}

/// A byte-level BPE tokenizer.json in the shape SmolLM2's has.
pub fn tokenizer_json() -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = tokenizer_vocab()
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, json!(i)))
        .collect();
    let added: Vec<_> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "vocab": vocab,
            "merges": MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect::<Vec<_>>()
        }
    })
}

/// A small deterministic generator (SplitMix64), so fixtures need no RNG crate.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}
