//! Hugging Face `config.json`: parsed once, kept raw, read through typed accessors
//! whose errors name the file and the key.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

/// Errors reading or interpreting a `config.json`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: no config.json in this folder (a Hugging Face model folder needs one)", dir.display())]
    MissingFile { dir: PathBuf },
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
    #[error("{}: the top level is not a JSON object", path.display())]
    NotAnObject { path: PathBuf },
    #[error("{}: required key `{key}` is missing", path.display())]
    MissingKey { path: PathBuf, key: String },
    #[error("{}: key `{key}` should be {expected}, found {found}", path.display())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
}

/// A parsed `config.json`. Keys are looked up at the top level first and then in
/// `text_config` (multimodal wrappers keep the language model's keys there, and
/// llama.cpp's converter merges them the same way).
#[derive(Debug, Clone)]
pub struct HfConfig {
    path: PathBuf,
    raw: Json,
}

impl HfConfig {
    /// Reads `dir/config.json`.
    pub fn from_folder(dir: &Path) -> Result<HfConfig, ConfigError> {
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(ConfigError::MissingFile {
                dir: dir.to_path_buf(),
            });
        }
        Self::from_file(&path)
    }

    pub fn from_file(path: &Path) -> Result<HfConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses JSON text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<HfConfig, ConfigError> {
        let raw: Json = serde_json::from_str(text).map_err(|e| ConfigError::Json {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        if !raw.is_object() {
            return Err(ConfigError::NotAnObject {
                path: path.to_path_buf(),
            });
        }
        Ok(HfConfig {
            path: path.to_path_buf(),
            raw,
        })
    }

    /// The whole JSON document as read.
    pub fn raw(&self) -> &Json {
        &self.raw
    }

    /// The file this config came from (for error messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value of `key`, or `None` when absent or JSON `null`.
    pub fn get(&self, key: &str) -> Option<&Json> {
        let found = self
            .raw
            .get(key)
            .or_else(|| self.raw.get("text_config").and_then(|t| t.get(key)));
        found.filter(|v| !v.is_null())
    }

    /// `architectures` (e.g. `["LlamaForCausalLM"]`); empty when absent.
    pub fn architectures(&self) -> Vec<String> {
        self.get("architectures")
            .and_then(Json::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &Json) -> ConfigError {
        let mut shown = found.to_string();
        if shown.len() > 60 {
            shown.truncate(60);
            shown.push('…');
        }
        ConfigError::WrongType {
            path: self.path.clone(),
            key: key.to_owned(),
            expected,
            found: shown,
        }
    }

    pub fn missing(&self, key: &str) -> ConfigError {
        ConfigError::MissingKey {
            path: self.path.clone(),
            key: key.to_owned(),
        }
    }

    /// A non-negative integer. Integral floats (`4096.0`) are accepted because some
    /// exporters write them.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        if let Some(n) = v.as_u64() {
            return Ok(Some(n));
        }
        match v.as_f64() {
            Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 9.0e15 => Ok(Some(f as u64)),
            _ => Err(self.wrong_type(key, "a non-negative integer", v)),
        }
    }

    pub fn require_u64(&self, key: &str) -> Result<u64, ConfigError> {
        self.get_u64(key)?.ok_or_else(|| self.missing(key))
    }

    /// The first of `keys` present (llama.cpp's `find_hparam`).
    pub fn find_u64(&self, keys: &[&str]) -> Result<Option<u64>, ConfigError> {
        for k in keys {
            if let Some(v) = self.get_u64(k)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    pub fn get_f64(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "a number", v)),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "true or false", v)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "a string", v)),
        }
    }

    /// An object-valued key such as `rope_scaling`.
    pub fn get_object(
        &self,
        key: &str,
    ) -> Result<Option<&serde_json::Map<String, Json>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_object()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "an object", v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Result<HfConfig, ConfigError> {
        HfConfig::from_json_str(text, Path::new("/m/config.json"))
    }

    #[test]
    fn malformed_json_reports_line_and_column() {
        let err = cfg("{\n  \"a\": 1,\n  \"b\": }").unwrap_err();
        match &err {
            ConfigError::Json { line, column, .. } => {
                assert_eq!(*line, 3);
                assert!(*column > 0);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().starts_with("/m/config.json:3:"));
    }

    #[test]
    fn missing_folder_file_names_folder() {
        let dir = tempfile::tempdir().unwrap();
        let err = HfConfig::from_folder(dir.path()).unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile { .. }));
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }

    #[test]
    fn typed_accessors() {
        let c = cfg(r#"{"a": 3, "f": 4096.0, "neg": -1, "s": "x", "n": null,
                       "text_config": {"inner": 7}}"#)
        .unwrap();
        assert_eq!(c.get_u64("a").unwrap(), Some(3));
        assert_eq!(c.get_u64("f").unwrap(), Some(4096));
        assert_eq!(c.get_u64("inner").unwrap(), Some(7));
        assert_eq!(c.get_u64("n").unwrap(), None);
        assert!(c.get_u64("neg").is_err());
        let e = c.get_u64("s").unwrap_err().to_string();
        assert!(e.contains("`s`") && e.contains("integer"), "{e}");
        assert!(c
            .require_u64("zzz")
            .unwrap_err()
            .to_string()
            .contains("`zzz`"));
        assert_eq!(c.find_u64(&["zzz", "a"]).unwrap(), Some(3));
        assert!(cfg("[1]").is_err());
    }
}
