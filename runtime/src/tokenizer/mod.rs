//! The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata.
//!
//! SentencePiece vocabularies (`tokenizer.ggml.model = "llama"`: tokens and
//! scores) are tokenised by [`spm`].
//!
//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`) is rebuilt with the
//! `tokenizers` library from the stored tokens and merges; the pre-tokenizer is
//! chosen from `tokenizer.ggml.pre`, which names how the original tokenizer split
//! text before BPE. Control and user-defined tokens are matched whole in the
//! input, as llama.cpp does when it parses special tokens.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use quern_formats::gguf::{GgufFile, Value};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::RuntimeError;

/// GGUF token types that are matched whole rather than through BPE.
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// Llama 3's split regex (numbers in runs of up to three digits).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: as Llama 3's, one digit at a time.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Metadata by key.
struct MetadataLookup<'a>(HashMap<&'a str, &'a Value>);

impl<'a> MetadataLookup<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key).copied()
    }

    /// An array of strings; `err` words the failure.
    fn strings(
        &self,
        key: &str,
        err: &dyn Fn(String) -> RuntimeError,
    ) -> Result<Vec<String>, RuntimeError> {
        let arr = self
            .get(key)
            .and_then(|v| v.as_array())
            .ok_or_else(|| err(format!("{key} is missing")))?;
        arr.iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| err(format!("{key} holds a non-string")))
            })
            .collect()
    }
}

pub mod spm;

/// How text becomes token ids.
enum Engine {
    /// Byte-level BPE through the `tokenizers` library (special tokens added).
    Bpe(Box<tokenizers::Tokenizer>),
    /// SentencePiece BPE; `specials` are matched whole in the text first,
    /// longest first.
    Spm {
        spm: Box<spm::Spm>,
        specials: Vec<(String, u32)>,
    },
}

pub struct Tokenizer {
    engine: Engine,
    /// The bytes each token stands for (special tokens: their text).
    pieces: Vec<Vec<u8>>,
    special: Vec<bool>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

/// The printable character GPT-2's byte-level BPE uses for each byte.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        *slot = if printable {
            char::from_u32(b as u32).unwrap_or('\0')
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\0')
        };
    }
    table
}

impl Tokenizer {
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer, RuntimeError> {
        Self::from_metadata(file.metadata(), file.path())
    }

    /// From `tokenizer.ggml.*` keys (a GGUF file's, or those our converter makes
    /// for a Hugging Face folder); `path` names the model in errors.
    pub fn from_metadata(
        metadata: &[(String, Value)],
        path: &Path,
    ) -> Result<Tokenizer, RuntimeError> {
        let index: HashMap<&str, &Value> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let file = MetadataLookup(index);
        let path: PathBuf = path.to_path_buf();
        let err = |what: String| RuntimeError::Tokenizer {
            file: path.clone(),
            what,
        };
        let model = file
            .get("tokenizer.ggml.model")
            .and_then(|v| v.as_str())
            .ok_or_else(|| err("tokenizer.ggml.model is missing".into()))?;
        if model != "gpt2" && model != "llama" {
            return Err(err(format!(
                "vocabulary type {model:?} is not supported (supported: gpt2 byte-level BPE, llama SentencePiece)"
            )));
        }
        let tokens = file.strings("tokenizer.ggml.tokens", &err)?;
        let types: Vec<i64> = match file
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array())
        {
            Some(a) => a
                .iter()
                .map(|v| v.as_f64().map_or(1, |x| x as i64))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let special: Vec<bool> = (0..tokens.len())
            .map(|i| {
                matches!(
                    types.get(i),
                    Some(&TOKEN_CONTROL) | Some(&TOKEN_USER_DEFINED)
                )
            })
            .collect();
        let id = |key: &str| {
            file.get(key)
                .and_then(|v| v.as_u64())
                .map(|v| v as u32)
                .filter(|&v| (v as usize) < tokens.len())
        };
        let engine = if model == "llama" {
            let scores: Vec<f32> =
                match file.get("tokenizer.ggml.scores").and_then(|v| v.as_array()) {
                    Some(a) => a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
                    None => return Err(err("tokenizer.ggml.scores is missing".into())),
                };
            let add_space_prefix = file
                .get("tokenizer.ggml.add_space_prefix")
                .and_then(|v| v.as_bool())
                .unwrap_or(true);
            let mut specials: Vec<(String, u32)> = tokens
                .iter()
                .zip(&special)
                .enumerate()
                .filter(|(_, (t, &s))| s && !t.is_empty())
                .map(|(i, (t, _))| (t.clone(), i as u32))
                .collect();
            specials.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
            Engine::Spm {
                spm: Box::new(spm::Spm::new(
                    &tokens,
                    scores,
                    id("tokenizer.ggml.unknown_token_id"),
                    add_space_prefix,
                )),
                specials,
            }
        } else {
            Engine::Bpe(Box::new(Self::bpe(&file, &tokens, &special, &err)?))
        };

        let chars = byte_chars();
        let is_spm = matches!(engine, Engine::Spm { .. });
        let byte_of: HashMap<char, u8> = chars
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let pieces = tokens
            .iter()
            .zip(&special)
            .map(|(t, &s)| {
                if s {
                    t.as_bytes().to_vec()
                } else if is_spm {
                    spm::piece_bytes(t)
                } else {
                    // A character outside the byte alphabet stands for itself.
                    let mut out = Vec::with_capacity(t.len());
                    for ch in t.chars() {
                        match byte_of.get(&ch) {
                            Some(&b) => out.push(b),
                            None => out.extend_from_slice(ch.to_string().as_bytes()),
                        }
                    }
                    out
                }
            })
            .collect();
        Ok(Tokenizer {
            engine,
            pieces,
            special,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            eot: id("tokenizer.ggml.eot_token_id"),
            add_bos: file
                .get("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            chat_template: file
                .get("tokenizer.chat_template")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        })
    }

    /// The byte-level BPE model for a `gpt2` vocabulary.
    fn bpe(
        file: &MetadataLookup<'_>,
        tokens: &[String],
        special: &[bool],
        err: &dyn Fn(String) -> RuntimeError,
    ) -> Result<tokenizers::Tokenizer, RuntimeError> {
        let merges_raw = file.strings("tokenizer.ggml.merges", err)?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut merges = Vec::with_capacity(merges_raw.len());
        for m in &merges_raw {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| err(format!("merge {m:?} is not two tokens")))?;
            merges.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| err(format!("cannot build BPE: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = file
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let split = |re: &str| -> Result<PreTokenizerWrapper, RuntimeError> {
            Split::new(
                SplitPattern::Regex(re.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map(PreTokenizerWrapper::Split)
            .map_err(|e| err(format!("split regex: {e}")))
        };
        let bytes_only = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false));
        let gpt2 = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, true));
        let steps: Vec<PreTokenizerWrapper> = match pre {
            "gpt-2" | "default" => vec![gpt2],
            "smollm" => vec![PreTokenizerWrapper::Digits(Digits::new(true)), gpt2],
            "llama-bpe" | "llama3" => vec![split(LLAMA3_REGEX)?, bytes_only],
            "qwen2" => vec![split(QWEN2_REGEX)?, bytes_only],
            other => {
                return Err(err(format!(
                    "pre-tokenizer {other:?} is not supported (supported: gpt-2, smollm, llama-bpe, qwen2)"
                )))
            }
        };
        inner.with_pre_tokenizer(Some(Sequence::new(steps)));
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(special)
            .filter(|(_, &s)| s)
            .map(|(t, _)| AddedToken::from(t.clone(), true))
            .collect();
        inner.add_special_tokens(&added);
        Ok(inner)
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Token ids of `text`, with BOS first when the model asks for it and `add_bos`.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, RuntimeError> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos && self.add_bos {
            ids.extend(self.bos);
        }
        match &self.engine {
            Engine::Bpe(inner) => {
                let enc = inner
                    .encode_fast(text, false)
                    .map_err(|e| RuntimeError::Tokenizer {
                        file: PathBuf::new(),
                        what: format!("cannot encode: {e}"),
                    })?;
                ids.extend_from_slice(enc.get_ids());
            }
            Engine::Spm { spm, specials } => {
                // Text comes in fragments between special tokens; like llama.cpp,
                // each fragment is tokenised on its own (with its "▁" prefix).
                let mut rest = text;
                while !rest.is_empty() {
                    // The earliest special token in the rest (longest at a tie).
                    let found = specials
                        .iter()
                        .filter_map(|(t, id)| rest.find(t.as_str()).map(|at| (at, t.len(), *id)))
                        .min_by_key(|&(at, len, _)| (at, std::cmp::Reverse(len)));
                    let (plain, next) = match found {
                        Some((at, len, id)) => (&rest[..at], Some((id, &rest[at + len..]))),
                        None => (rest, None),
                    };
                    if !plain.is_empty() {
                        spm.encode_into(plain, &mut ids);
                    }
                    match next {
                        Some((id, tail)) => {
                            ids.push(id);
                            rest = tail;
                        }
                        None => break,
                    }
                }
            }
        }
        Ok(ids)
    }

    /// The bytes of one token (possibly part of a UTF-8 character).
    pub fn piece(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], |p| p.as_slice())
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// Whether generation stops at `id` (end of sequence or of turn).
    pub fn is_end(&self, id: u32) -> bool {
        Some(id) == self.eos || Some(id) == self.eot
    }

    /// The text of `ids` (invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| self.piece(i).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The text of a token id, for messages.
    pub fn token_text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.piece(id)).into_owned()
    }
}
