//! The architecture table against hand-written configs, and the q/k permutation
//! against an independent numpy implementation.

use std::path::{Path, PathBuf};
use std::process::Command;

use quern_formats::arch::{
    permute_qk_rows, permute_qk_tensor, unpermute_qk_rows, unpermute_qk_tensor, Arch, ArchError,
    ModelSpec, RopeScaling,
};
use quern_formats::gguf::value::Value;
use quern_formats::hf_config::HfConfig;
use serde_json::{json, Value as Json};

fn spec_of(cfg: &Json) -> Result<ModelSpec, ArchError> {
    let c = HfConfig::from_json_str(&cfg.to_string(), Path::new("/x/config.json")).unwrap();
    ModelSpec::from_config(&c)
}

fn llama_cfg() -> Json {
    json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "vocab_size": 300, "tie_word_embeddings": false
    })
}

fn meta_get<'a>(m: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    m.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

#[test]
fn llama_metadata_keys_and_types() {
    let s = spec_of(&llama_cfg()).unwrap();
    assert_eq!(s.arch, Arch::Llama);
    assert_eq!(s.head_dim, 16);
    let m = s.gguf_metadata("tiny");
    let keys: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "general.architecture",
            "general.type",
            "general.name",
            "llama.block_count",
            "llama.context_length",
            "llama.embedding_length",
            "llama.feed_forward_length",
            "llama.attention.head_count",
            "llama.attention.head_count_kv",
            "llama.rope.freq_base",
            "llama.attention.layer_norm_rms_epsilon",
            "llama.vocab_size",
            "llama.rope.dimension_count",
        ]
    );
    assert_eq!(
        meta_get(&m, "general.architecture"),
        Some(&Value::String("llama".into()))
    );
    assert_eq!(
        meta_get(&m, "general.name"),
        Some(&Value::String("tiny".into()))
    );
    assert_eq!(meta_get(&m, "llama.block_count"), Some(&Value::U32(2)));
    assert_eq!(
        meta_get(&m, "llama.context_length"),
        Some(&Value::U32(2048))
    );
    assert_eq!(
        meta_get(&m, "llama.feed_forward_length"),
        Some(&Value::U32(160))
    );
    assert_eq!(
        meta_get(&m, "llama.attention.head_count_kv"),
        Some(&Value::U32(2))
    );
    assert_eq!(
        meta_get(&m, "llama.rope.freq_base"),
        Some(&Value::F32(500000.0))
    );
    assert_eq!(
        meta_get(&m, "llama.attention.layer_norm_rms_epsilon"),
        Some(&Value::F32(1e-5))
    );
    assert_eq!(meta_get(&m, "llama.vocab_size"), Some(&Value::U32(300)));
    assert_eq!(
        meta_get(&m, "llama.rope.dimension_count"),
        Some(&Value::U32(16))
    );
    assert!(s.extra_tensors().is_empty());
}

#[test]
fn llama_tensor_mapping() {
    let s = spec_of(&llama_cfg()).unwrap();
    let q = s
        .map_tensor("model.layers.1.self_attn.q_proj.weight")
        .unwrap()
        .unwrap();
    assert_eq!(q.gguf_name, "blk.1.attn_q.weight");
    assert_eq!(q.permute_heads, Some(4));
    assert_eq!(q.expected_shape, vec![64, 64]);
    assert!(!q.keep_f32);
    let k = s
        .map_tensor("model.layers.0.self_attn.k_proj.weight")
        .unwrap()
        .unwrap();
    assert_eq!(
        (k.gguf_name.as_str(), k.permute_heads),
        ("blk.0.attn_k.weight", Some(2))
    );
    assert_eq!(k.expected_shape, vec![32, 64]);
    let v = s
        .map_tensor("model.layers.0.self_attn.v_proj.weight")
        .unwrap()
        .unwrap();
    assert_eq!(
        (v.gguf_name.as_str(), v.permute_heads),
        ("blk.0.attn_v.weight", None)
    );
    let cases = [
        (
            "model.embed_tokens.weight",
            "token_embd.weight",
            vec![300, 64],
        ),
        ("model.norm.weight", "output_norm.weight", vec![64]),
        ("lm_head.weight", "output.weight", vec![300, 64]),
        (
            "model.layers.0.input_layernorm.weight",
            "blk.0.attn_norm.weight",
            vec![64],
        ),
        (
            "model.layers.0.post_attention_layernorm.weight",
            "blk.0.ffn_norm.weight",
            vec![64],
        ),
        (
            "model.layers.0.self_attn.o_proj.weight",
            "blk.0.attn_output.weight",
            vec![64, 64],
        ),
        (
            "model.layers.1.mlp.gate_proj.weight",
            "blk.1.ffn_gate.weight",
            vec![160, 64],
        ),
        (
            "model.layers.1.mlp.up_proj.weight",
            "blk.1.ffn_up.weight",
            vec![160, 64],
        ),
        (
            "model.layers.1.mlp.down_proj.weight",
            "blk.1.ffn_down.weight",
            vec![64, 160],
        ),
    ];
    for (hf, gguf, shape) in cases {
        let t = s.map_tensor(hf).unwrap().unwrap();
        assert_eq!(t.gguf_name, gguf, "{hf}");
        assert_eq!(t.expected_shape, shape, "{hf}");
        assert_eq!(t.keep_f32, shape.len() == 1, "{hf}");
    }
    assert_eq!(
        s.map_tensor("model.layers.0.self_attn.rotary_emb.inv_freq")
            .unwrap(),
        None
    );
    for bad in [
        "model.layers.2.mlp.up_proj.weight",      // layer out of range
        "model.layers.0.self_attn.q_proj.bias",   // llama without attention_bias
        "model.layers.0.self_attn.q_norm.weight", // not a llama tensor
        "model.layers.01.mlp.up_proj.weight",
        "vision_tower.foo.weight",
    ] {
        let e = s.map_tensor(bad).unwrap_err().to_string();
        assert!(e.contains(bad), "{e}");
    }
    // Every expected tensor maps, and untied checkpoints need lm_head.
    let exp = s.expected_tensors();
    assert_eq!(exp.len(), 1 + 2 * 9 + 2);
    assert!(exp.iter().any(|(n, _)| n == "lm_head.weight"));
    for (n, shape) in &exp {
        assert_eq!(&s.map_tensor(n).unwrap().unwrap().expected_shape, shape);
    }
}

#[test]
fn llama_attention_bias_permutes_q_and_k_biases() {
    let mut cfg = llama_cfg();
    cfg["attention_bias"] = json!(true);
    let s = spec_of(&cfg).unwrap();
    let qb = s
        .map_tensor("model.layers.0.self_attn.q_proj.bias")
        .unwrap()
        .unwrap();
    assert_eq!(
        (qb.permute_heads, qb.expected_shape.clone(), qb.keep_f32),
        (Some(4), vec![64], true)
    );
    let kb = s
        .map_tensor("model.layers.0.self_attn.k_proj.bias")
        .unwrap()
        .unwrap();
    assert_eq!(kb.permute_heads, Some(2));
    assert!(s
        .map_tensor("model.layers.0.self_attn.o_proj.bias")
        .unwrap()
        .is_some());
}

#[test]
fn tied_embeddings_drop_lm_head_from_expected() {
    let mut cfg = llama_cfg();
    cfg["tie_word_embeddings"] = json!(true);
    let s = spec_of(&cfg).unwrap();
    assert!(s.tied_embeddings);
    assert!(!s
        .expected_tensors()
        .iter()
        .any(|(n, _)| n == "lm_head.weight"));
    // A tied checkpoint that still carries lm_head keeps it, as llama.cpp does.
    assert_eq!(
        s.map_tensor("lm_head.weight").unwrap().unwrap().gguf_name,
        "output.weight"
    );
}

#[test]
fn absent_lm_head_means_tied() {
    let mut s = spec_of(&llama_cfg()).unwrap();
    s.set_lm_head_present(true);
    assert!(!s.tied_embeddings);
    s.set_lm_head_present(false);
    assert!(s.tied_embeddings);
    assert!(!s
        .expected_tensors()
        .iter()
        .any(|(n, _)| n == "lm_head.weight"));
}

#[test]
fn permute_tensor_handles_weights_and_biases() {
    // A bias of 8 f16 values, 2 heads: each element is a row.
    let bias: Vec<u8> = (0u8..16).collect();
    let mut out = vec![0u8; 16];
    permute_qk_tensor(&bias, &[8], 2, 2, &mut out);
    let order: Vec<u8> = out.chunks(2).map(|c| c[0] / 2).collect();
    assert_eq!(order, vec![0, 2, 1, 3, 4, 6, 5, 7]);
    let mut back = vec![0u8; 16];
    unpermute_qk_tensor(&out, &[8], 2, 2, &mut back);
    assert_eq!(back, bias);
    // A [4, 3] weight with 4-byte elements, one head: rows 0 1 2 3 -> 0 2 1 3.
    let w: Vec<u8> = (0u8..48).collect();
    let mut out = vec![0u8; 48];
    permute_qk_tensor(&w, &[4, 3], 4, 1, &mut out);
    assert_eq!(&out[12..24], &w[24..36]);
    assert_eq!(&out[24..36], &w[12..24]);
}

#[test]
fn mistral_converts_as_llama() {
    let mut cfg = llama_cfg();
    cfg["architectures"] = json!(["MistralForCausalLM"]);
    cfg["sliding_window"] = json!(4096);
    let s = spec_of(&cfg).unwrap();
    assert_eq!(s.arch, Arch::Llama);
    assert_eq!(s.hf_architecture, "MistralForCausalLM");
    assert_eq!(
        meta_get(&s.gguf_metadata("m"), "general.architecture"),
        Some(&Value::String("llama".into()))
    );
}

/// Llama 3.1's rope factors, computed independently in float64 from the published
/// formula.
fn llama3_reference(dim: usize, theta: f64, factor: f64, lo: f64, hi: f64, old: f64) -> Vec<f64> {
    (0..dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf((2 * i) as f64 / dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < old / hi {
                1.0
            } else if wavelen > old / lo {
                factor
            } else {
                let smooth = (old / wavelen - lo) / (hi - lo);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

#[test]
fn llama31_rope_freqs() {
    let mut cfg = llama_cfg();
    cfg["hidden_size"] = json!(512);
    cfg["num_attention_heads"] = json!(4); // head_dim 128, as in Llama 3.1
    cfg["num_key_value_heads"] = json!(1);
    cfg["rope_scaling"] = json!({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 8192, "rope_type": "llama3"});
    let s = spec_of(&cfg).unwrap();
    assert!(matches!(s.rope_scaling, Some(RopeScaling::Llama3 { .. })));
    // No rope.scaling.* keys for llama3: the tensor carries it.
    assert!(!s
        .gguf_metadata("x")
        .iter()
        .any(|(k, _)| k.contains("scaling")));
    let extra = s.extra_tensors();
    assert_eq!(extra.len(), 1);
    let (name, shape, data) = &extra[0];
    assert_eq!(name, "rope_freqs.weight");
    assert_eq!(shape, &vec![64]);
    let want = llama3_reference(128, 500000.0, 8.0, 1.0, 4.0, 8192.0);
    let mut n_one = 0;
    let mut n_factor = 0;
    for (i, (&got, &w)) in data.iter().zip(&want).enumerate() {
        assert!(
            ((got as f64) - w).abs() <= 1e-5 * w.abs(),
            "dim {i}: {got} vs {w}"
        );
        n_one += (w == 1.0) as usize;
        n_factor += (w == 8.0) as usize;
    }
    // All three regimes occur.
    assert!(
        n_one > 0 && n_factor > 0 && n_one + n_factor < 64,
        "{n_one} {n_factor}"
    );
}

#[test]
fn qwen2_biases_and_no_llama_only_keys() {
    let cfg = json!({
        "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "vocab_size": 400, "tie_word_embeddings": true,
        "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    });
    let s = spec_of(&cfg).unwrap();
    assert_eq!(s.arch, Arch::Qwen2);
    let m = s.gguf_metadata("q");
    assert_eq!(
        meta_get(&m, "general.architecture"),
        Some(&Value::String("qwen2".into()))
    );
    assert!(meta_get(&m, "qwen2.vocab_size").is_none());
    assert!(meta_get(&m, "qwen2.rope.dimension_count").is_none());
    assert_eq!(
        meta_get(&m, "qwen2.rope.scaling.type"),
        Some(&Value::String("yarn".into()))
    );
    assert_eq!(
        meta_get(&m, "qwen2.rope.scaling.factor"),
        Some(&Value::F32(4.0))
    );
    assert_eq!(
        meta_get(&m, "qwen2.rope.scaling.original_context_length"),
        Some(&Value::U32(32768))
    );
    assert_eq!(
        meta_get(&m, "qwen2.rope.freq_base"),
        Some(&Value::F32(1.0e6))
    );
    for (proj, short, rows) in [
        ("q", "attn_q", 64),
        ("k", "attn_k", 32),
        ("v", "attn_v", 32),
    ] {
        let b = s
            .map_tensor(&format!("model.layers.0.self_attn.{proj}_proj.bias"))
            .unwrap()
            .unwrap();
        assert_eq!(b.gguf_name, format!("blk.0.{short}.bias"));
        assert_eq!(b.expected_shape, vec![rows]);
        assert!(b.keep_f32);
        // Qwen2 uses NeoX rope: no permutation.
        assert_eq!(b.permute_heads, None);
    }
    assert_eq!(
        s.map_tensor("model.layers.0.self_attn.q_proj.weight")
            .unwrap()
            .unwrap()
            .permute_heads,
        None
    );
    assert!(s
        .map_tensor("model.layers.0.self_attn.o_proj.bias")
        .is_err());
    let exp = s.expected_tensors();
    assert_eq!(exp.len(), 1 + 12 + 1);
    assert!(exp
        .iter()
        .any(|(n, _)| n == "model.layers.0.self_attn.v_proj.bias"));
}

#[test]
fn qwen3_qk_norms_and_key_length() {
    let cfg = json!({
        "architectures": ["Qwen3ForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "vocab_size": 500, "tie_word_embeddings": true, "attention_bias": false
    });
    let s = spec_of(&cfg).unwrap();
    assert_eq!(s.arch, Arch::Qwen3);
    for (hf, gguf) in [
        (
            "model.layers.0.self_attn.q_norm.weight",
            "blk.0.attn_q_norm.weight",
        ),
        (
            "model.layers.0.self_attn.k_norm.weight",
            "blk.0.attn_k_norm.weight",
        ),
    ] {
        let t = s.map_tensor(hf).unwrap().unwrap();
        assert_eq!(t.gguf_name, gguf);
        assert_eq!(t.expected_shape, vec![32]);
        assert!(t.keep_f32);
    }
    let q = s
        .map_tensor("model.layers.0.self_attn.q_proj.weight")
        .unwrap()
        .unwrap();
    assert_eq!(q.expected_shape, vec![128, 64]);
    let o = s
        .map_tensor("model.layers.0.self_attn.o_proj.weight")
        .unwrap()
        .unwrap();
    assert_eq!(o.expected_shape, vec![64, 128]);
    assert!(s
        .map_tensor("model.layers.0.self_attn.q_proj.bias")
        .is_err());
    let m = s.gguf_metadata("q3");
    assert_eq!(
        meta_get(&m, "qwen3.attention.key_length"),
        Some(&Value::U32(32))
    );
    assert_eq!(
        meta_get(&m, "qwen3.attention.value_length"),
        Some(&Value::U32(32))
    );
    assert!(s
        .expected_tensors()
        .iter()
        .any(|(n, _)| n.ends_with("k_norm.weight")));
}

#[test]
fn config_errors_name_file_and_key() {
    let mut cfg = llama_cfg();
    cfg.as_object_mut().unwrap().remove("num_hidden_layers");
    let e = spec_of(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("/x/config.json") && e.contains("num_hidden_layers"),
        "{e}"
    );
    let mut cfg = llama_cfg();
    cfg["rope_scaling"] = json!({"rope_type": "longrope", "factor": 2.0});
    assert!(spec_of(&cfg).unwrap_err().to_string().contains("longrope"));
    let mut cfg = llama_cfg();
    cfg["vocab_size"] = json!(4_000_000_000u64);
    assert!(spec_of(&cfg)
        .unwrap_err()
        .to_string()
        .contains("vocab_size"));
    let e = spec_of(&json!({"hidden_size": 4})).unwrap_err().to_string();
    assert!(
        e.contains("no `architectures`") && e.contains("LlamaForCausalLM"),
        "{e}"
    );
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The interpreter for cross-checks, or `None` (after a notice) when it or numpy
/// is missing and Python is not required.
fn python_with(module: &str) -> Option<PathBuf> {
    let py = std::env::var_os("QUERN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    let ok = Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Some(py);
    }
    let msg = format!("{} cannot import {module}", py.display());
    if std::env::var("QUERN_REQUIRE_PYTHON").as_deref() == Ok("1") {
        panic!("QUERN_REQUIRE_PYTHON=1 but {msg}");
    }
    eprintln!("notice: skipping Python cross-check: {msg}");
    None
}

#[test]
fn permutation_matches_numpy_definition_and_reference_unpermute() {
    let Some(py) = python_with("numpy") else {
        return;
    };
    let tool = workspace_root().join("../shared/tools/make-reference-model");
    let (n_head, rows, cols) = (3usize, 24usize, 5usize);
    let data: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 7.0).collect();
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut permuted = vec![0u8; bytes.len()];
    permute_qk_rows(&bytes, rows, cols * 4, n_head, &mut permuted);
    let mut back = vec![0u8; bytes.len()];
    unpermute_qk_rows(&permuted, rows, cols * 4, n_head, &mut back);
    assert_eq!(back, bytes);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.bin"), &bytes).unwrap();
    std::fs::write(dir.path().join("permuted.bin"), &permuted).unwrap();
    // numpy: the permutation as llama.cpp defines it (reshape to (heads, 2,
    // half, ...), swap axes 1 and 2), and make-reference-model's own unpermute.
    let script = format!(
        r#"
import importlib.machinery, importlib.util, os, sys
import numpy as np
d = sys.argv[1]
w = np.fromfile(os.path.join(d, "in.bin"), dtype="<f4").reshape({rows}, {cols})
p = w.reshape({n_head}, 2, {rows} // {n_head} // 2, {cols}).swapaxes(1, 2).reshape(w.shape)
ours = np.fromfile(os.path.join(d, "permuted.bin"), dtype="<f4").reshape({rows}, {cols})
assert np.array_equal(p, ours), "permutation differs from the numpy definition"
tool = sys.argv[2]
if os.path.exists(tool):
    loader = importlib.machinery.SourceFileLoader("mrm", tool)
    spec = importlib.util.spec_from_loader("mrm", loader)
    mrm = importlib.util.module_from_spec(spec)
    loader.exec_module(mrm)
    assert np.array_equal(mrm.unpermute(ours, {n_head}), w), "reference unpermute disagrees"
    print("checked-reference")
print("ok")
"#
    );
    let out = Command::new(&py)
        .arg("-c")
        .arg(&script)
        .arg(dir.path())
        .arg(&tool)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok"));
    if !stdout.contains("checked-reference") {
        eprintln!(
            "notice: {} not found; checked the numpy definition only",
            tool.display()
        );
    }
}
