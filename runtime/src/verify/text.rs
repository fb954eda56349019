//! The text a verification scores and the token ids both models see: one
//! tokenisation, with the reference's tokenizer, shared by both sides.

use std::path::{Path, PathBuf};

use quern_formats::gguf::GgufFile;
use sha2::{Digest, Sha256};

use super::error::VerifyError;

/// About 1,200 tokens of plain English prose (two chunks of 512), written for
/// this check; pass `--text` for a real evaluation.
pub const BUILTIN_TEXT: &str = include_str!("builtin_text.txt");

/// The text to score.
#[derive(Debug, Clone)]
pub struct EvalText {
    /// The file it came from; `None` for [`BUILTIN_TEXT`].
    pub path: Option<PathBuf>,
    pub text: String,
    pub sha256: String,
}

impl EvalText {
    pub fn load(path: Option<&Path>) -> Result<EvalText, VerifyError> {
        let text = match path {
            None => BUILTIN_TEXT.to_string(),
            Some(p) => {
                let bytes = std::fs::read(p).map_err(|source| VerifyError::Io {
                    path: p.to_path_buf(),
                    source,
                })?;
                String::from_utf8(bytes).map_err(|_| VerifyError::TextNotUtf8 {
                    path: p.to_path_buf(),
                })?
            }
        };
        Ok(EvalText {
            path: path.map(Path::to_path_buf),
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
            text,
        })
    }
}

enum Inner {
    Hf(Box<tokenizers::Tokenizer>),
    Gguf(Box<crate::tokenizer::Tokenizer>),
}

/// The reference's tokenizer: `tokenizer.json` of a Hugging Face folder, or the
/// vocabulary a GGUF reference carries.
pub struct EvalTokenizer {
    path: PathBuf,
    inner: Inner,
    /// The BOS id when the tokenizer adds one at the start of a text.
    pub bos: Option<u32>,
}

impl EvalTokenizer {
    pub fn for_reference(reference: &Path) -> Result<EvalTokenizer, VerifyError> {
        if reference.is_file() {
            let file = GgufFile::open(reference)?;
            let t = crate::tokenizer::Tokenizer::from_gguf(&file).map_err(|e| {
                VerifyError::Tokenizer {
                    path: reference.to_path_buf(),
                    what: e.to_string(),
                }
            })?;
            let bos = if t.add_bos { t.bos } else { None };
            return Ok(EvalTokenizer {
                path: reference.to_path_buf(),
                inner: Inner::Gguf(Box::new(t)),
                bos,
            });
        }
        let path = reference.join("tokenizer.json");
        let err = |what: String| VerifyError::Tokenizer {
            path: path.clone(),
            what,
        };
        if !path.is_file() {
            return Err(err(
                "missing (the reference folder needs its tokenizer.json)".into(),
            ));
        }
        let tok = tokenizers::Tokenizer::from_file(&path).map_err(|e| err(e.to_string()))?;
        let bos = bos_added(&tok, &reference.join("tokenizer_config.json")).map_err(err)?;
        Ok(EvalTokenizer {
            path,
            inner: Inner::Hf(Box::new(tok)),
            bos,
        })
    }

    /// The ids of `text`, BOS first when the tokenizer adds one (as
    /// llama-perplexity tokenises the whole text).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, VerifyError> {
        let err = |what: String| VerifyError::Tokenizer {
            path: self.path.clone(),
            what,
        };
        let mut ids: Vec<u32> = self.bos.into_iter().collect();
        match &self.inner {
            Inner::Hf(t) => {
                let enc = t
                    .encode_fast(text, false)
                    .map_err(|e| err(format!("cannot encode the text: {e}")))?;
                ids.extend_from_slice(enc.get_ids());
            }
            Inner::Gguf(t) => {
                ids.extend(t.encode(text, false).map_err(|e| err(e.to_string()))?);
            }
        }
        Ok(ids)
    }

    /// A token's text, for the report.
    pub fn token_text(&self, id: u32) -> String {
        match &self.inner {
            Inner::Hf(t) => t.decode(&[id], false).unwrap_or_default(),
            Inner::Gguf(t) => t.token_text(id),
        }
    }
}

/// The BOS id if the tokenizer puts one in front of a text: `add_bos_token` in
/// `tokenizer_config.json` when it says, else whether the post-processor does.
fn bos_added(tok: &tokenizers::Tokenizer, config: &Path) -> Result<Option<u32>, String> {
    let cfg: Option<serde_json::Value> = match std::fs::read(config) {
        Ok(b) => Some(
            serde_json::from_slice(&b)
                .map_err(|e| format!("{}: malformed JSON: {e}", config.display()))?,
        ),
        Err(_) => None,
    };
    let flag = cfg
        .as_ref()
        .and_then(|c| c.get("add_bos_token"))
        .and_then(|v| v.as_bool());
    let bos_text = cfg.as_ref().and_then(|c| c.get("bos_token")).and_then(|v| {
        v.as_str().map(str::to_string).or_else(|| {
            v.get("content")
                .and_then(|c| c.as_str())
                .map(str::to_string)
        })
    });
    match flag {
        Some(false) => Ok(None),
        Some(true) => {
            let text = bos_text.ok_or("add_bos_token is true but bos_token is not set")?;
            tok.token_to_id(&text)
                .map(Some)
                .ok_or_else(|| format!("bos_token {text:?} is not in the vocabulary"))
        }
        None => {
            let with = tok.encode("a", true).map_err(|e| e.to_string())?;
            let without = tok.encode("a", false).map_err(|e| e.to_string())?;
            let (w, wo) = (with.get_ids(), without.get_ids());
            Ok((w.len() > wo.len() && w[1..].starts_with(wo)).then(|| w[0]))
        }
    }
}
