//! SentencePiece vocabularies (`tokenizer.ggml.model = "llama"`, as Llama 2,
//! TinyLlama and Mistral ship them) against llama.cpp's own tokenizer: a small
//! BPE model trained by `testdata/fixtures/make-spm-fixture.py` goes through our
//! converter's tokenizer metadata into a vocabulary-only GGUF, which both
//! tokenizers read. Skips when llama-cpp-python is missing.

mod common;

use common::{python, read_u32, run_llama_ref, workspace_root};
use quern_formats::arch::ModelSpec;
use quern_formats::gguf::{Value, Writer};
use quern_formats::hf_config::HfConfig;
use quern_formats::tokenizer::gguf_tokenizer_metadata;
use quern_runtime::Tokenizer;

fn texts() -> Vec<String> {
    let wiki = workspace_root().join("../shared/data/wikitext-2-raw/wiki.test.raw");
    let passage: String = std::fs::read_to_string(wiki)
        .unwrap_or_default()
        .chars()
        .take(3000)
        .collect();
    vec![
        "Hello world".to_string(),
        "  two  spaces, tabs\tand\nnew lines\n\n".to_string(),
        "digits 1234567 and ünïcödé, 日本語 ✓".to_string(),
        "<s>special</s> tokens <s> inside".to_string(),
        passage,
    ]
}

#[test]
fn sentencepiece_matches_llama_cpp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = dir.path().join("hf");
    std::fs::create_dir_all(&folder).expect("mkdir");
    std::fs::copy(
        workspace_root().join("testdata/fixtures/spm-bpe-600.model"),
        folder.join("tokenizer.model"),
    )
    .expect("fixture");
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 4,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "vocab_size": 600,
        "bos_token_id": 1, "eos_token_id": 2
    });
    std::fs::write(folder.join("config.json"), config.to_string()).expect("config");
    let tok_config = serde_json::json!({"add_bos_token": true, "add_eos_token": false,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"});
    std::fs::write(folder.join("tokenizer_config.json"), tok_config.to_string()).expect("tc");
    let spec =
        ModelSpec::from_config(&HfConfig::from_folder(&folder).expect("config")).expect("spec");
    let mut metadata = spec.gguf_metadata("spm-test");
    metadata.extend(gguf_tokenizer_metadata(&folder, &spec).expect("tokenizer metadata"));
    assert_eq!(
        metadata
            .iter()
            .find(|(k, _)| k == "tokenizer.ggml.model")
            .map(|(_, v)| v),
        Some(&Value::String("llama".into()))
    );
    let ours = Tokenizer::from_metadata(&metadata, &folder).expect("our tokenizer");

    let Some(py) = python(&["numpy", "llama_cpp"]) else {
        return;
    };
    let gguf = dir.path().join("vocab.gguf");
    let file = std::io::BufWriter::new(std::fs::File::create(&gguf).expect("create"));
    Writer::new(file, &metadata, &[])
        .expect("writer")
        .finish()
        .expect("finish");
    for (i, text) in texts().iter().enumerate() {
        let tp = dir.path().join(format!("t{i}.txt"));
        std::fs::write(&tp, text).expect("text");
        let ip = dir.path().join(format!("t{i}.u32"));
        run_llama_ref(
            &py,
            &[
                "tokenize",
                gguf.to_str().expect("path"),
                tp.to_str().expect("path"),
                ip.to_str().expect("path"),
            ],
        );
        let theirs = read_u32(&ip);
        let mine = ours.encode(text, false).expect("encode");
        assert_eq!(mine, theirs, "text {i}: {text:?}");
        assert!(!mine.is_empty());
    }
    // Decoding gives the text back, less the "▁" prefix's space.
    let text = "Hello world, 1234";
    let ids = ours.encode(text, false).expect("encode");
    assert_eq!(ours.decode(&ids), format!(" {text}"));
}
