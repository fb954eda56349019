//! `quern convert` end to end on tiny generated models: round trips for each
//! architecture and output type, and every bad input the issue lists.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use half::{bf16, f16};
use quern_formats::gguf::GgufFile;
use quern_formats::testutil::TinyModel;
use quern_formats::GgmlType;

fn quern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quern"))
}

fn convert(model: &Path, out: &Path, outtype: &str) -> Output {
    quern()
        .arg("convert")
        .arg(model)
        .arg("-o")
        .arg(out)
        .args(["--outtype", outtype, "--quiet"])
        .output()
        .expect("run quern")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Nothing but the given files in `dir` (no temporary leftovers).
fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A failed conversion: non-zero exit, a one-line error naming `needle`, no output left.
fn assert_fails(o: &Output, out: &Path, needle: &str) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(
        err.contains(needle),
        "error should mention {needle:?}: {err}"
    );
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one-line error expected: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !out.exists(),
        "{} must not exist after a failure",
        out.display()
    );
    if let Some(dir) = out.parent().filter(|d| d.exists()) {
        let left: Vec<_> = files_in(dir)
            .into_iter()
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left behind: {left:?}");
    }
}

fn tiny(model: &TinyModel) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("tiny");
    model.write(&folder).unwrap();
    (dir, folder)
}

/// llama.cpp's q/k row order: within each head, the two rope halves interleaved.
fn permuted_row(row: usize, rows: usize, n_head: usize) -> usize {
    let per_head = rows / n_head;
    let half = per_head / 2;
    let (head, r) = (row / per_head, row % per_head);
    // GGUF row `r` of a head holds HF row (r % 2) * half + r / 2.
    head * per_head + (r % 2) * half + r / 2
}

fn check_round_trip(model: &TinyModel, outtype: &str) {
    let (dir, folder) = tiny(model);
    let out = dir.path().join("out.gguf");
    let o = convert(&folder, &out, outtype);
    assert!(o.status.success(), "{}", stderr(&o));
    let gguf = GgufFile::open(&out).unwrap();
    let arch = gguf
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap()
        .to_string();
    let expect_arch = match model.architecture {
        "Qwen2ForCausalLM" => "qwen2",
        "Qwen3ForCausalLM" => "qwen3",
        _ => "llama",
    };
    assert_eq!(arch, expect_arch);
    assert_eq!(
        gguf.get(&format!("{arch}.block_count"))
            .and_then(|v| v.as_u64()),
        Some(model.layers as u64)
    );
    assert!(gguf.get("tokenizer.ggml.tokens").is_some());
    assert_eq!(
        gguf.get("tokenizer.ggml.model").and_then(|v| v.as_str()),
        Some("gpt2")
    );

    for (hf_name, shape, values) in model.weights() {
        let gguf_name = gguf_name(&hf_name);
        let t = gguf
            .tensor(&gguf_name)
            .unwrap_or_else(|| panic!("{gguf_name} missing"));
        let want_shape: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        assert_eq!(t.shape, want_shape, "{gguf_name}");
        let data = gguf.tensor_data(t);
        let mut got = vec![0f32; values.len()];
        quern_quant::dequantize_row(t.ggml_type, data, &mut got).unwrap();
        if shape.len() == 1 {
            assert_eq!(
                t.ggml_type,
                GgmlType::F32,
                "{gguf_name}: 1-D tensors stay F32"
            );
        } else {
            let want_type = match outtype {
                "f32" => GgmlType::F32,
                "f16" => GgmlType::F16,
                "q8_0" => GgmlType::Q8_0,
                _ => GgmlType::Bf16,
            };
            assert_eq!(t.ggml_type, want_type, "{gguf_name}");
        }
        // The source is bf16: round the generated values the way the file holds them.
        let src: Vec<f32> = values.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
        let permute = match (
            expect_arch,
            hf_name.contains("q_proj.weight"),
            hf_name.contains("k_proj.weight"),
        ) {
            ("llama", true, _) => Some(model.heads),
            ("llama", _, true) => Some(model.kv_heads),
            _ => None,
        };
        let cols = if shape.len() == 2 { shape[1] } else { shape[0] };
        let rows = values.len() / cols;
        for r in 0..rows {
            let hf_row = permute.map_or(r, |h| permuted_row(r, rows, h));
            for c in 0..cols {
                let want = src[hf_row * cols + c];
                let have = got[r * cols + c];
                let ok = match (shape.len(), outtype) {
                    (1, _) | (_, "f32") | (_, "bf16") | (_, "auto") => have == want,
                    (_, "f16") => have == f16::from_f32(want).to_f32(),
                    _ => (have - want).abs() <= 0.05 / 127.0 * 1.01,
                };
                assert!(ok, "{gguf_name}[{r},{c}]: {have} vs {want} ({outtype})");
            }
        }
    }
    if model.tied {
        assert!(
            gguf.tensor("output.weight").is_none(),
            "tied embeddings: no output.weight"
        );
    } else {
        assert!(gguf.tensor("output.weight").is_some());
    }
}

fn gguf_name(hf: &str) -> String {
    let map = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = map.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, name) = rest.split_once('.').unwrap();
    let suffix = [
        ("input_layernorm.weight", "attn_norm.weight"),
        ("post_attention_layernorm.weight", "ffn_norm.weight"),
        ("self_attn.q_proj.weight", "attn_q.weight"),
        ("self_attn.k_proj.weight", "attn_k.weight"),
        ("self_attn.v_proj.weight", "attn_v.weight"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        ("self_attn.q_proj.bias", "attn_q.bias"),
        ("self_attn.k_proj.bias", "attn_k.bias"),
        ("self_attn.v_proj.bias", "attn_v.bias"),
        ("self_attn.q_norm.weight", "attn_q_norm.weight"),
        ("self_attn.k_norm.weight", "attn_k_norm.weight"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"),
        ("mlp.up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
    ]
    .iter()
    .find(|(h, _)| *h == name)
    .map(|(_, g)| *g)
    .unwrap_or_else(|| panic!("unmapped {hf}"));
    format!("blk.{layer}.{suffix}")
}

#[test]
fn llama_round_trips_in_every_outtype() {
    for t in ["auto", "bf16", "f16", "f32", "q8_0"] {
        check_round_trip(&TinyModel::llama(), t);
    }
}

#[test]
fn qwen2_and_qwen3_round_trip() {
    check_round_trip(&TinyModel::qwen2(), "bf16");
    check_round_trip(&TinyModel::qwen3(), "f16");
}

#[test]
fn llama3_rope_scaling_adds_rope_freqs() {
    let model = TinyModel {
        llama3_rope: true,
        ..TinyModel::llama()
    };
    let (dir, folder) = tiny(&model);
    let out = dir.path().join("out.gguf");
    let o = convert(&folder, &out, "auto");
    assert!(o.status.success(), "{}", stderr(&o));
    let gguf = GgufFile::open(&out).unwrap();
    let t = gguf.tensor("rope_freqs.weight").expect("rope_freqs");
    assert_eq!(t.shape, vec![(model.head_dim / 2) as u64]);
    assert_eq!(t.ggml_type, GgmlType::F32);
}

#[test]
fn missing_config() {
    let (dir, folder) = tiny(&TinyModel::llama());
    std::fs::remove_file(folder.join("config.json")).unwrap();
    let out = dir.path().join("out.gguf");
    assert_fails(&convert(&folder, &out, "bf16"), &out, "config.json");
}

#[test]
fn malformed_config() {
    let (dir, folder) = tiny(&TinyModel::llama());
    std::fs::write(folder.join("config.json"), "{\"hidden_size\": 64,").unwrap();
    let out = dir.path().join("out.gguf");
    assert_fails(&convert(&folder, &out, "bf16"), &out, "config.json");
}

#[test]
fn unsupported_architecture_lists_the_supported_ones() {
    let (dir, folder) = tiny(&TinyModel::llama());
    let mut c = TinyModel::llama().config();
    c["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
    std::fs::write(folder.join("config.json"), c.to_string()).unwrap();
    let out = dir.path().join("out.gguf");
    let o = convert(&folder, &out, "bf16");
    assert_fails(&o, &out, "GPTNeoXForCausalLM");
    for a in [
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
    ] {
        assert!(stderr(&o).contains(a), "should list {a}: {}", stderr(&o));
    }
}

#[test]
fn truncated_safetensors() {
    let (dir, folder) = tiny(&TinyModel::llama());
    let st = folder.join("model.safetensors");
    let len = std::fs::metadata(&st).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&st).unwrap();
    f.set_len(len - 100).unwrap();
    let out = dir.path().join("out.gguf");
    assert_fails(&convert(&folder, &out, "bf16"), &out, "model.safetensors");
}

/// Rewrites the safetensors header with `edit` applied to its JSON.
fn edit_header(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let mut text = serde_json::to_vec(&header).unwrap();
    while text.len() < n {
        text.push(b' ');
    }
    assert_eq!(text.len(), n, "edited header must keep its length");
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn header_offsets_outside_the_file() {
    let (dir, folder) = tiny(&TinyModel::llama());
    let st = folder.join("model.safetensors");
    edit_header(&st, |h| {
        let t = &mut h["model.norm.weight"]["data_offsets"];
        let start = t[0].as_u64().unwrap();
        *t = serde_json::json!([start + 10_000_000, start + 10_000_128]);
    });
    let out = dir.path().join("out.gguf");
    let o = convert(&folder, &out, "bf16");
    assert_fails(&o, &out, "model.norm.weight");
}

#[test]
fn header_offsets_overlap() {
    let (dir, folder) = tiny(&TinyModel::llama());
    let st = folder.join("model.safetensors");
    edit_header(&st, |h| {
        let a = h["model.layers.0.self_attn.k_proj.weight"]["data_offsets"].clone();
        h["model.layers.0.self_attn.v_proj.weight"]["data_offsets"] = a;
    });
    let out = dir.path().join("out.gguf");
    let o = convert(&folder, &out, "bf16");
    assert_fails(&o, &out, "proj.weight");
}

#[test]
fn tensor_shape_disagrees_with_config() {
    let (dir, folder) = tiny(&TinyModel::llama());
    let mut c = TinyModel::llama().config();
    c["intermediate_size"] = serde_json::json!(128);
    std::fs::write(folder.join("config.json"), c.to_string()).unwrap();
    let out = dir.path().join("out.gguf");
    assert_fails(&convert(&folder, &out, "bf16"), &out, "mlp");
}

#[test]
fn missing_tokenizer() {
    let (dir, folder) = tiny(&TinyModel::llama());
    std::fs::remove_file(folder.join("tokenizer.json")).unwrap();
    let out = dir.path().join("out.gguf");
    assert_fails(&convert(&folder, &out, "bf16"), &out, "tokenizer");
}

#[test]
fn output_in_a_missing_folder() {
    let (dir, folder) = tiny(&TinyModel::llama());
    let out = dir.path().join("no/such/folder/out.gguf");
    assert_fails(&convert(&folder, &out, "bf16"), &out, "no/such/folder");
}

#[test]
fn unknown_outtype_lists_valid_ones() {
    let (dir, folder) = tiny(&TinyModel::llama());
    let out = dir.path().join("out.gguf");
    let o = convert(&folder, &out, "q3_x");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("q8_0"), "{}", stderr(&o));
    assert!(!out.exists());
}

/// A full disk, simulated with a file-size limit: writes past it fail with EFBIG
/// (SIGXFSZ ignored so the process sees the error instead of dying).
#[test]
fn full_disk_leaves_no_output() {
    use std::os::unix::process::CommandExt;
    let (dir, folder) = tiny(&TinyModel::llama());
    let out = dir.path().join("out.gguf");
    let mut cmd = quern();
    cmd.arg("convert")
        .arg(&folder)
        .arg("-o")
        .arg(&out)
        .args(["--outtype", "f32", "--quiet"]);
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 16 * 1024,
                rlim_max: 16 * 1024,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    assert_fails(&o, &out, "out.gguf");
}

#[test]
fn inspect_lists_the_tensors_as_json() {
    let (dir, folder) = tiny(&TinyModel::llama());
    let out = dir.path().join("out.gguf");
    assert!(convert(&folder, &out, "q8_0").status.success());
    let o = quern()
        .arg("inspect")
        .arg(&out)
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let gguf = GgufFile::open(&out).unwrap();
    let tensors = j["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), gguf.tensors().len());
    for (a, b) in tensors.iter().zip(gguf.tensors()) {
        assert_eq!(a["name"], b.name.as_str());
        assert_eq!(a["type"], b.ggml_type.name());
        assert_eq!(a["bytes"], b.n_bytes());
    }
    assert_eq!(j["metadata"]["general.architecture"], "llama");

    let o = quern()
        .arg("inspect")
        .arg(&folder)
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["format"], "safetensors");
    assert_eq!(
        j["tensors"].as_array().unwrap().len(),
        TinyModel::llama().tensor_shapes().len()
    );
}

#[test]
fn provenance_names_the_sources_and_the_output() {
    use sha2::{Digest, Sha256};
    let (dir, folder) = tiny(&TinyModel::llama());
    let out = dir.path().join("out.gguf");
    assert!(convert(&folder, &out, "q8_0").status.success());
    let side = dir.path().join("out.gguf.provenance.json");
    let p: serde_json::Value = serde_json::from_slice(&std::fs::read(&side).unwrap()).unwrap();
    let hex = |b: &[u8]| format!("{:x}", Sha256::digest(b));
    assert_eq!(p["subject"][0]["digest"]["sha256"], hex(&std::fs::read(&out).unwrap()).as_str());
    let deps = p["predicate"]["buildDefinition"]["resolvedDependencies"].as_array().unwrap();
    let st = deps.iter().find(|d| d["name"] == "model.safetensors").expect("weights listed");
    let weights = std::fs::read(folder.join("model.safetensors")).unwrap();
    assert_eq!(st["digest"]["sha256"], hex(&weights).as_str());
    assert_eq!(p["predicate"]["buildDefinition"]["externalParameters"]["parameters"]["outtype"], "q8_0");

    let out2 = dir.path().join("bare.gguf");
    let o = quern()
        .arg("convert")
        .arg(&folder)
        .arg("-o")
        .arg(&out2)
        .args(["--quiet", "--no-provenance"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(!dir.path().join("bare.gguf.provenance.json").exists());
}
