//! Hugging Face tokenizer files to GGUF `tokenizer.*` metadata, as llama.cpp's
//! converter writes it.
//!
//! Two vocabulary kinds:
//! - byte-level BPE (`tokenizer.ggml.model = "gpt2"`): tokens, token types,
//!   merges (`"a b"`), and a `pre` name (see [`pre`]);
//! - SentencePiece (`"llama"`, `pre = "default"`): tokens, scores, token types,
//!   read from `tokenizer.model` when present (what llama.cpp reads) and otherwise
//!   from a SentencePiece-style `tokenizer.json` (BPE with byte fallback, or
//!   Unigram).
//!
//! Both pad the vocabulary to `config.json`'s `vocab_size` with `[PAD{id}]`
//! tokens of type UNUSED, and add special ids, add-BOS/EOS flags and the chat
//! template (see [`special`]).

pub mod pre;
pub mod sentencepiece;
mod special;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::arch::{Arch, ModelSpec};
use crate::gguf::value::{Value, ValueType};

/// GGUF token types (`llama_token_type`).
pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_UNKNOWN: i32 = 2;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;
pub const TOKEN_UNUSED: i32 = 5;
pub const TOKEN_BYTE: i32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{}: no tokenizer.json (nor a SentencePiece tokenizer.model) in this folder", dir.display())]
    Missing { dir: PathBuf },
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: malformed JSON: {message}", path.display())]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    Malformed { path: PathBuf, message: String },
    #[error(
        "{}: cannot tell which llama.cpp pre-tokenizer matches this byte-level BPE tokenizer \
         (pre_tokenizer {found}); known: smollm, gpt-2, llama-bpe, qwen2. \
         Name one explicitly if you know it (a wrong name makes llama.cpp split text differently)",
        path.display()
    )]
    UnknownPreTokenizer { path: PathBuf, found: String },
    #[error("{}: token id {id} is not below config.json vocab_size {vocab_size}", path.display())]
    VocabTooLarge {
        path: PathBuf,
        id: u64,
        vocab_size: u64,
    },
}

/// Choices the caller can make.
#[derive(Debug, Clone, Default)]
pub struct TokenizerOptions {
    /// Use this `tokenizer.ggml.pre` instead of detecting it (byte-level BPE only).
    pub pre_tokenizer: Option<String>,
}

/// `tokenizer.ggml.*` and `tokenizer.chat_template*` keys for the model in `folder`.
pub fn gguf_tokenizer_metadata(
    folder: &Path,
    spec: &ModelSpec,
) -> Result<Vec<(String, Value)>, TokenizerError> {
    gguf_tokenizer_metadata_with(folder, spec, &TokenizerOptions::default())
}

pub fn gguf_tokenizer_metadata_with(
    folder: &Path,
    spec: &ModelSpec,
    opts: &TokenizerOptions,
) -> Result<Vec<(String, Value)>, TokenizerError> {
    let tok_path = folder.join("tokenizer.json");
    let spm_path = folder.join("tokenizer.model");
    let tokenizer_json = read_json_opt(&tok_path)?;
    let tokenizer_config = read_json_opt(&folder.join("tokenizer_config.json"))?;
    let config = read_json_opt(&folder.join("config.json"))?;
    let chat_template_alt = chat_template_alt(folder)?;

    let mut out = Vec::new();
    // LlamaModel.set_vocab copies add_prefix_space before the vocabulary.
    if spec.arch == Arch::Llama {
        if let Some(b) = tokenizer_config
            .as_ref()
            .and_then(|t| t.get("add_prefix_space"))
            .and_then(Json::as_bool)
        {
            out.push(("tokenizer.ggml.add_space_prefix".to_owned(), Value::Bool(b)));
        }
    }

    let vocab = if spm_path.is_file() {
        let bytes = std::fs::read(&spm_path).map_err(|source| TokenizerError::Io {
            path: spm_path.clone(),
            source,
        })?;
        let pieces =
            sentencepiece::parse_pieces(&bytes).map_err(|message| TokenizerError::Malformed {
                path: spm_path.clone(),
                message: format!("not a SentencePiece model: {message}"),
            })?;
        let added_json = read_json_opt(&folder.join("added_tokens.json"))?;
        spm_from_model(
            &pieces,
            spec,
            added_json.as_ref(),
            tokenizer_config.as_ref(),
        )
    } else {
        let Some(tj) = tokenizer_json.as_ref() else {
            return Err(TokenizerError::Missing {
                dir: folder.to_path_buf(),
            });
        };
        let model = tj.get("model").ok_or_else(|| TokenizerError::Malformed {
            path: tok_path.clone(),
            message: "no `model` object".to_owned(),
        })?;
        match model.get("type").and_then(Json::as_str) {
            Some("Unigram") => spm_from_json(tj, spec, &tok_path)?,
            Some("BPE") if is_sentencepiece_bpe(tj, spec) => spm_from_json(tj, spec, &tok_path)?,
            Some("BPE") => gpt2_from_json(tj, spec, &tok_path, opts)?,
            other => {
                return Err(TokenizerError::Malformed {
                    path: tok_path,
                    message: format!(
                        "tokenizer model type {} is not supported (BPE or Unigram)",
                        other.unwrap_or("(missing)")
                    ),
                })
            }
        }
    };

    let n_vocab = vocab.tokens.len();
    vocab.to_metadata(&mut out);
    // SpecialVocab bounds ids by the vocabulary only for SentencePiece vocabs.
    let bound = vocab.scores.is_some().then_some(n_vocab);
    let sv = special::SpecialVocab::resolve(
        tokenizer_json.as_ref(),
        tokenizer_config.as_ref(),
        config.as_ref(),
        chat_template_alt,
        bound,
    );
    sv.to_metadata(&mut out);
    // llama.cpp's LlamaModel forces add_bos_token = false for 49152-token
    // vocabularies (the SmolLM / Granite family).
    if spec.arch == Arch::Llama && spec.vocab_size == 49152 {
        set_key(&mut out, "tokenizer.ggml.add_bos_token", Value::Bool(false));
    }
    Ok(out)
}

fn set_key(out: &mut Vec<(String, Value)>, key: &str, v: Value) {
    match out.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = v,
        None => out.push((key.to_owned(), v)),
    }
}

/// A vocabulary ready to write.
struct Vocab {
    model: &'static str,
    pre: String,
    tokens: Vec<String>,
    scores: Option<Vec<f32>>,
    types: Vec<i32>,
    merges: Option<Vec<String>>,
}

impl Vocab {
    fn to_metadata(&self, out: &mut Vec<(String, Value)>) {
        out.push((
            "tokenizer.ggml.model".into(),
            Value::String(self.model.into()),
        ));
        out.push(("tokenizer.ggml.pre".into(), Value::String(self.pre.clone())));
        out.push((
            "tokenizer.ggml.tokens".into(),
            Value::strings(self.tokens.iter().cloned()),
        ));
        if let Some(scores) = &self.scores {
            out.push((
                "tokenizer.ggml.scores".into(),
                Value::Array(
                    ValueType::F32,
                    scores.iter().map(|&s| Value::F32(s)).collect(),
                ),
            ));
        }
        out.push((
            "tokenizer.ggml.token_type".into(),
            Value::Array(
                ValueType::I32,
                self.types.iter().map(|&t| Value::I32(t)).collect(),
            ),
        ));
        if let Some(merges) = &self.merges {
            out.push((
                "tokenizer.ggml.merges".into(),
                Value::strings(merges.iter().cloned()),
            ));
        }
    }
}

fn read_json_opt(path: &Path) -> Result<Option<Json>, TokenizerError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| TokenizerError::Json {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })
}

/// `chat_template.jinja` (with `additional_chat_templates/*.jinja` as the list
/// form) or `chat_template.json`'s `chat_template`; used when
/// `tokenizer_config.json` has none.
fn chat_template_alt(folder: &Path) -> Result<Option<Json>, TokenizerError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| TokenizerError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    let jinja = folder.join("chat_template.jinja");
    if jinja.is_file() {
        let main = read(&jinja)?;
        let extra_dir = folder.join("additional_chat_templates");
        let mut extra: Vec<PathBuf> = match std::fs::read_dir(&extra_dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
                .collect(),
            Err(_) => Vec::new(),
        };
        if extra.is_empty() {
            return Ok(Some(Json::String(main)));
        }
        extra.sort();
        let mut list = vec![serde_json::json!({"name": "default", "template": main})];
        for p in extra {
            let name = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            list.push(serde_json::json!({"name": name, "template": read(&p)?}));
        }
        return Ok(Some(Json::Array(list)));
    }
    let json_path = folder.join("chat_template.json");
    Ok(read_json_opt(&json_path)?.and_then(|j| j.get("chat_template").cloned()))
}

/// llama.cpp's heuristic for added tokens that should be control tokens even
/// when not flagged special.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Type and text of an added token, as llama.cpp assigns them.
fn added_token_type(tok: &Json) -> Option<(String, i32)> {
    let content = tok.get("content")?.as_str()?;
    let special = tok.get("special").and_then(Json::as_bool).unwrap_or(false);
    if special || looks_special(content) {
        Some((content.to_owned(), TOKEN_CONTROL))
    } else {
        // User-defined tokens are stored pre-normalised: SentencePiece's ▁ as a space.
        Some((content.replace('\u{2581}', " "), TOKEN_USER_DEFINED))
    }
}

fn added_tokens(tj: &Json) -> Vec<(u64, &Json)> {
    tj.get("added_tokens")
        .and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| Some((t.get("id")?.as_u64()?, t)))
                .collect()
        })
        .unwrap_or_default()
}

/// llama.cpp converts a BPE `tokenizer.json` as SentencePiece (LlamaHfVocab) when
/// it has byte fallback and a `Sequence` decoder, for the `llama` architecture;
/// Llama 3's (ignore_merges, no byte fallback) is byte-level.
fn is_sentencepiece_bpe(tj: &Json, spec: &ModelSpec) -> bool {
    let model = &tj["model"];
    spec.arch == Arch::Llama
        && model.get("byte_fallback").and_then(Json::as_bool) == Some(true)
        && tj
            .get("decoder")
            .and_then(|d| d.get("type"))
            .and_then(Json::as_str)
            == Some("Sequence")
}

/// Merge list entries in GGUF form (`"a b"`); the pair form `["a", "b"]` has
/// spaces inside parts re-encoded as U+0120 as llama.cpp does.
fn merges_of(model: &Json, path: &Path) -> Result<Vec<String>, TokenizerError> {
    let Some(list) = model.get("merges").and_then(Json::as_array) else {
        return Ok(Vec::new());
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            match m {
                Json::String(s) => Ok(s.clone()),
                Json::Array(pair) if pair.len() == 2 => {
                    let part = |v: &Json| v.as_str().map(|s| s.replace(' ', "\u{0120}")).ok_or(());
                    match (part(&pair[0]), part(&pair[1])) {
                        (Ok(a), Ok(b)) => Ok(format!("{a} {b}")),
                        _ => Err(()),
                    }
                }
                _ => Err(()),
            }
            .map_err(|()| TokenizerError::Malformed {
                path: path.to_path_buf(),
                message: format!("merge #{i} is neither \"a b\" nor [\"a\", \"b\"]"),
            })
        })
        .collect()
}

fn gpt2_from_json(
    tj: &Json,
    spec: &ModelSpec,
    path: &Path,
    opts: &TokenizerOptions,
) -> Result<Vocab, TokenizerError> {
    let pre = match &opts.pre_tokenizer {
        Some(p) => p.clone(),
        None => pre::detect(tj)
            .map_err(|found| TokenizerError::UnknownPreTokenizer {
                path: path.to_path_buf(),
                found,
            })?
            .to_owned(),
    };
    let model = &tj["model"];
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| TokenizerError::Malformed {
            path: path.to_path_buf(),
            message: "BPE model has no `vocab` object".to_owned(),
        })?;
    let n = spec.vocab_size;
    let mut slots: Vec<Option<(String, i32)>> = vec![None; n as usize];
    let mut place = |id: u64, entry: (String, i32)| -> Result<(), TokenizerError> {
        let slot = slots
            .get_mut(id as usize)
            .filter(|_| id < n)
            .ok_or_else(|| TokenizerError::VocabTooLarge {
                path: path.to_path_buf(),
                id,
                vocab_size: n,
            })?;
        *slot = Some(entry);
        Ok(())
    };
    for (text, id) in vocab {
        let id = id.as_u64().ok_or_else(|| TokenizerError::Malformed {
            path: path.to_path_buf(),
            message: format!("vocab entry {text:?} has a non-integer id"),
        })?;
        place(id, (text.clone(), TOKEN_NORMAL))?;
    }
    // Added tokens win over the model vocabulary at the same id (as in
    // transformers' merged vocabulary).
    for (id, tok) in added_tokens(tj) {
        if let Some(entry) = added_token_type(tok) {
            place(id, entry)?;
        }
    }
    let (tokens, types) = slots
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.unwrap_or_else(|| (format!("[PAD{i}]"), TOKEN_UNUSED)))
        .unzip();
    Ok(Vocab {
        model: "gpt2",
        pre,
        tokens,
        scores: None,
        types,
        merges: Some(merges_of(model, path)?),
    })
}

/// The vocabulary size llama.cpp uses for SentencePiece: config.json's.
fn spm_tables(n: usize) -> (Vec<String>, Vec<f32>, Vec<i32>) {
    (
        (0..n).map(|i| format!("[PAD{i}]")).collect(),
        vec![-10000.0; n],
        vec![TOKEN_UNUSED; n],
    )
}

fn spm_from_model(
    pieces: &[sentencepiece::Piece],
    spec: &ModelSpec,
    added_tokens_json: Option<&Json>,
    tokenizer_config: Option<&Json>,
) -> Vocab {
    let n = spec.vocab_size as usize;
    let (mut tokens, mut scores, mut types) = spm_tables(n);
    for (id, p) in pieces.iter().enumerate().take(n) {
        tokens[id] = p.text.clone();
        scores[id] = p.score;
        types[id] = match p.kind {
            sentencepiece::UNKNOWN => TOKEN_UNKNOWN,
            sentencepiece::CONTROL => TOKEN_CONTROL,
            sentencepiece::UNUSED => TOKEN_UNUSED,
            sentencepiece::BYTE => TOKEN_BYTE,
            // llama.cpp writes user-defined pieces of the model as normal.
            _ => TOKEN_NORMAL,
        };
    }
    if let Some(obj) = added_tokens_json.and_then(Json::as_object) {
        for (text, id) in obj {
            if let Some(id) = id.as_u64().map(|i| i as usize).filter(|&i| i < n) {
                tokens[id] = text.clone();
                scores[id] = -1000.0;
                types[id] = TOKEN_USER_DEFINED;
            }
        }
    }
    if let Some(dec) = tokenizer_config
        .and_then(|t| t.get("added_tokens_decoder"))
        .and_then(Json::as_object)
    {
        for (id, tok) in dec {
            let Some(id) = id.parse::<usize>().ok().filter(|&i| i < n) else {
                continue;
            };
            if let Some((text, ty)) = added_token_type(tok) {
                tokens[id] = text;
                types[id] = ty;
                scores[id] = -1000.0;
            }
        }
    }
    Vocab {
        model: "llama",
        pre: "default".to_owned(),
        tokens,
        scores: Some(scores),
        types,
        merges: None,
    }
}

fn is_byte_token(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && b[3].is_ascii_hexdigit()
        && b[4].is_ascii_hexdigit()
}

/// A SentencePiece-style `tokenizer.json` without `tokenizer.model`.
///
/// Unigram pieces keep their scores. BPE pieces get `-(rank of the first merge
/// producing them)` (0 for pieces no merge produces): llama.cpp's SentencePiece
/// tokenizer merges the highest-scoring pair first, so this reproduces the merge
/// order. (llama.cpp's own LlamaHfVocab path writes -1000 for every piece, which
/// loses that order.)
fn spm_from_json(tj: &Json, spec: &ModelSpec, path: &Path) -> Result<Vocab, TokenizerError> {
    let model = &tj["model"];
    let malformed = |message: String| TokenizerError::Malformed {
        path: path.to_path_buf(),
        message,
    };
    let n = spec.vocab_size as usize;
    let (mut tokens, mut scores, mut types) = spm_tables(n);
    let byte_fallback = model
        .get("byte_fallback")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    let mut entries: Vec<(u64, String, f32)> = Vec::new();
    let unk_text: Option<String> = if model.get("type").and_then(Json::as_str) == Some("Unigram") {
        let list = model
            .get("vocab")
            .and_then(Json::as_array)
            .ok_or_else(|| malformed("Unigram model has no `vocab` list".into()))?;
        for (id, e) in list.iter().enumerate() {
            let piece = e.get(0).and_then(Json::as_str);
            let score = e.get(1).and_then(Json::as_f64);
            match (piece, score) {
                (Some(p), Some(s)) => entries.push((id as u64, p.to_owned(), s as f32)),
                _ => {
                    return Err(malformed(format!(
                        "Unigram vocab entry #{id} is not [piece, score]"
                    )))
                }
            }
        }
        model
            .get("unk_id")
            .and_then(Json::as_u64)
            .and_then(|i| entries.get(i as usize).map(|e| e.1.clone()))
    } else {
        let vocab = model
            .get("vocab")
            .and_then(Json::as_object)
            .ok_or_else(|| malformed("BPE model has no `vocab` object".into()))?;
        let mut rank: HashMap<String, usize> = HashMap::new();
        for (r, m) in merges_of(model, path)?.iter().enumerate() {
            if let Some((a, b)) = m.split_once(' ') {
                rank.entry(format!("{a}{b}")).or_insert(r);
            }
        }
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| malformed(format!("vocab entry {text:?} has a non-integer id")))?;
            let score = rank.get(text).map_or(0.0, |&r| 0.0 - r as f32);
            entries.push((id, text.clone(), score));
        }
        model
            .get("unk_token")
            .and_then(Json::as_str)
            .map(str::to_owned)
    };
    for (id, text, score) in entries {
        let slot = id as usize;
        if id >= n as u64 {
            return Err(TokenizerError::VocabTooLarge {
                path: path.to_path_buf(),
                id,
                vocab_size: n as u64,
            });
        }
        types[slot] = if unk_text.as_deref() == Some(text.as_str()) {
            TOKEN_UNKNOWN
        } else if byte_fallback && is_byte_token(&text) {
            TOKEN_BYTE
        } else {
            TOKEN_NORMAL
        };
        tokens[slot] = text;
        scores[slot] = score;
    }
    for (id, tok) in added_tokens(tj) {
        if id >= n as u64 {
            return Err(TokenizerError::VocabTooLarge {
                path: path.to_path_buf(),
                id,
                vocab_size: n as u64,
            });
        }
        if let Some((text, ty)) = added_token_type(tok) {
            tokens[id as usize] = text;
            types[id as usize] = ty;
            scores[id as usize] = -1000.0;
        }
    }
    Ok(Vocab {
        model: "llama",
        pre: "default".to_owned(),
        tokens,
        scores: Some(scores),
        types,
        merges: None,
    })
}
