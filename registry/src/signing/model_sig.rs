//! The model-signing statement: one sha256 per file, a subject digest over them,
//! and the folder hashing and comparison that `sign`, `push` and `pull` share.

use super::dsse::{Bundle, SignError};
use super::keys::{SigningKey, VerifyingKey};
use crate::digest::Digest;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
/// The signature's file name beside the model files.
pub const SIGNATURE_FILE: &str = "model.sig";
/// What model-signing's CLI ignores by default; quern signs with the same list.
pub const DEFAULT_IGNORE: &[&str] = &[
    ".git",
    ".gitattributes",
    SIGNATURE_FILE,
    ".gitignore",
    ".github",
];

#[derive(Debug, thiserror::Error)]
pub enum ModelSigError {
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error("signed statement is malformed: {0}")]
    Statement(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: symbolic links are not allowed in a signed model")]
    Symlink(PathBuf),
    #[error("signature mismatch: {0}")]
    Mismatch(String),
}

/// One signed file: its path relative to the model root (with `/`) and sha256 hex.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Resource {
    pub name: String,
    pub sha256: String,
}

/// The content of a model-signing statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSignature {
    pub model_name: String,
    /// Sorted by name.
    pub resources: Vec<Resource>,
    pub ignore_paths: Vec<String>,
}

impl ModelSignature {
    pub fn new(
        model_name: &str,
        mut resources: Vec<Resource>,
        ignore_paths: Vec<String>,
    ) -> ModelSignature {
        resources.sort();
        ModelSignature {
            model_name: model_name.to_string(),
            resources,
            ignore_paths,
        }
    }

    /// sha256 over the raw resource digests concatenated in name order.
    pub fn subject_digest(&self) -> Result<String, ModelSigError> {
        let mut h = Sha256::new();
        for r in &self.resources {
            let raw = hex::decode(&r.sha256)
                .map_err(|_| ModelSigError::Statement(format!("bad digest for {}", r.name)))?;
            h.update(raw);
        }
        Ok(hex::encode(h.finalize()))
    }

    pub fn statement(&self) -> Result<Vec<u8>, ModelSigError> {
        let resources: Vec<Value> = self
            .resources
            .iter()
            .map(|r| json!({"name": r.name, "digest": r.sha256, "algorithm": "sha256"}))
            .collect();
        let st = json!({
            "_type": STATEMENT_TYPE,
            "subject": [{"name": self.model_name, "digest": {"sha256": self.subject_digest()?}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "serialization": {
                    "ignore_paths": self.ignore_paths,
                    "hash_type": "sha256",
                    "allow_symlinks": false,
                    "method": "files",
                },
                "resources": resources,
            },
        });
        Ok(serde_json::to_vec_pretty(&st).unwrap_or_default())
    }

    pub fn sign(&self, key: &SigningKey) -> Result<Bundle, ModelSigError> {
        Ok(Bundle::sign(key, &self.statement()?))
    }

    /// Parse a statement and check it is self-consistent (subject digest).
    pub fn from_statement(bytes: &[u8]) -> Result<ModelSignature, ModelSigError> {
        let bad = |m: &str| ModelSigError::Statement(m.to_string());
        let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(&e.to_string()))?;
        if v["_type"] != STATEMENT_TYPE {
            return Err(bad("not an in-toto Statement v1"));
        }
        if v["predicateType"] != PREDICATE_TYPE {
            return Err(bad(&format!(
                "predicate type {} is not {PREDICATE_TYPE}",
                v["predicateType"]
            )));
        }
        let ser = &v["predicate"]["serialization"];
        if ser["method"] != "files" || ser["hash_type"] != "sha256" {
            return Err(bad(
                "only the 'files' serialization with sha256 is supported",
            ));
        }
        let subjects = v["subject"].as_array().ok_or_else(|| bad("no subject"))?;
        let [subject] = subjects.as_slice() else {
            return Err(bad("expected exactly one subject"));
        };
        let model_name = subject["name"].as_str().unwrap_or_default();
        let expected = subject["digest"]["sha256"]
            .as_str()
            .ok_or_else(|| bad("subject has no sha256"))?;
        let mut resources = Vec::new();
        for r in v["predicate"]["resources"]
            .as_array()
            .ok_or_else(|| bad("no resources"))?
        {
            let name = r["name"]
                .as_str()
                .ok_or_else(|| bad("resource without name"))?;
            let d = r["digest"]
                .as_str()
                .ok_or_else(|| bad("resource without digest"))?;
            if r["algorithm"].as_str().unwrap_or("sha256") != "sha256"
                || Digest::from_hex(d).is_err()
            {
                return Err(bad(&format!("resource {name} has no valid sha256")));
            }
            resources.push(Resource {
                name: name.to_string(),
                sha256: d.to_string(),
            });
        }
        let ignore_paths = ser["ignore_paths"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let sig = ModelSignature::new(model_name, resources, ignore_paths);
        if sig.subject_digest()? != expected {
            return Err(bad("subject digest does not match the resources"));
        }
        Ok(sig)
    }

    /// Verify a bundle against trusted keys and return the statement it signs.
    pub fn verify_bundle(
        bundle: &Bundle,
        trusted: &[VerifyingKey],
    ) -> Result<ModelSignature, ModelSigError> {
        let (payload, _) = bundle.verify(trusted)?;
        ModelSignature::from_statement(&payload)
    }

    /// Compare signed resources with actual ones; the error names every file that differs.
    pub fn check(&self, actual: &[Resource]) -> Result<(), ModelSigError> {
        let want: BTreeMap<&str, &str> = self
            .resources
            .iter()
            .map(|r| (r.name.as_str(), r.sha256.as_str()))
            .collect();
        let have: BTreeMap<&str, &str> = actual
            .iter()
            .map(|r| (r.name.as_str(), r.sha256.as_str()))
            .collect();
        let mut problems = Vec::new();
        for (name, d) in &want {
            match have.get(name) {
                None => problems.push(format!("{name} is signed but missing")),
                Some(h) if h != d => {
                    problems.push(format!("hash mismatch for {name}: signed {d}, actual {h}"))
                }
                _ => {}
            }
        }
        for name in have.keys().filter(|n| !want.contains_key(*n)) {
            problems.push(format!("{name} is not covered by the signature"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ModelSigError::Mismatch(problems.join("; ")))
        }
    }
}

fn is_ignored(rel: &str, ignore: &[String]) -> bool {
    ignore.iter().any(|i| {
        let i = i.trim_end_matches('/');
        rel == i || rel.strip_prefix(i).is_some_and(|r| r.starts_with('/'))
    })
}

/// Every regular file under `root` not ignored, as (relative name, absolute path), sorted.
pub fn list_files(root: &Path, ignore: &[String]) -> Result<Vec<(String, PathBuf)>, ModelSigError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|source| ModelSigError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in rd {
            let entry = entry.map_err(|source| ModelSigError::Io {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let rel = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            if is_ignored(&rel, ignore) {
                continue;
            }
            let ft = entry.file_type().map_err(|source| ModelSigError::Io {
                path: path.clone(),
                source,
            })?;
            if ft.is_symlink() {
                return Err(ModelSigError::Symlink(path));
            } else if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                out.push((rel, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Hash the files of a model: a folder, or one file (named by its file name).
pub fn hash_model(path: &Path, ignore: &[String]) -> Result<Vec<Resource>, ModelSigError> {
    let files = if path.is_dir() {
        list_files(path, ignore)?
    } else {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        vec![(name, path.to_path_buf())]
    };
    files
        .into_iter()
        .map(|(name, p)| {
            let (d, _) = Digest::of_file(&p).map_err(|source| ModelSigError::Io {
                path: p.clone(),
                source,
            })?;
            Ok(Resource {
                name,
                sha256: d.hex().to_string(),
            })
        })
        .collect()
}

/// The ignore list for signing `path`: defaults, and for a single file every
/// sibling entry, so that verifying the folder covers exactly that file.
pub fn ignore_list_for(path: &Path, extra: &[String]) -> Result<Vec<String>, ModelSigError> {
    let mut ignore: Vec<String> = DEFAULT_IGNORE.iter().map(|s| s.to_string()).collect();
    ignore.extend(extra.iter().cloned());
    if !path.is_dir() {
        let dir = crate::fsutil::parent_dir(path);
        let me = path.file_name();
        let rd = std::fs::read_dir(dir).map_err(|source| ModelSigError::Io {
            path: dir.into(),
            source,
        })?;
        for e in rd.flatten() {
            let n = e.file_name();
            if Some(n.as_os_str()) != me
                && !ignore.iter().any(|i| i.as_str() == n.to_string_lossy())
            {
                ignore.push(n.to_string_lossy().to_string());
            }
        }
    }
    Ok(ignore)
}

/// The name recorded as the statement's subject: the folder or file name.
pub fn model_name(path: &Path) -> String {
    let p = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "model".into())
}

/// Sign a model folder or file; return the bundle and where `model.sig` belongs.
pub fn sign_path(
    path: &Path,
    key: &SigningKey,
    extra_ignore: &[String],
) -> Result<(Bundle, PathBuf), ModelSigError> {
    let ignore = ignore_list_for(path, extra_ignore)?;
    let resources = hash_model(path, &ignore)?;
    let sig = ModelSignature::new(&model_name(path), resources, ignore);
    let out = if path.is_dir() {
        path.join(SIGNATURE_FILE)
    } else {
        crate::fsutil::parent_dir(path).join(SIGNATURE_FILE)
    };
    Ok((sig.sign(key)?, out))
}

/// Verify a folder against its `model.sig` (or `sig`) with trusted keys.
pub fn verify_folder(
    dir: &Path,
    sig_path: &Path,
    trusted: &[VerifyingKey],
) -> Result<ModelSignature, ModelSigError> {
    let bytes = std::fs::read(sig_path).map_err(|source| ModelSigError::Io {
        path: sig_path.into(),
        source,
    })?;
    let bundle = Bundle::from_json(&bytes)?;
    let sig = ModelSignature::verify_bundle(&bundle, trusted)?;
    let actual = hash_model(dir, &sig.ignore_paths)?;
    sig.check(&actual)?;
    Ok(sig)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::keys::Curve;

    #[test]
    fn sign_and_verify_folder_and_detect_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.txt"), "hello\n").unwrap();
        std::fs::write(dir.path().join("sub/b.bin"), "world\n").unwrap();
        let key = SigningKey::generate(Curve::P256);
        let (bundle, out) = sign_path(dir.path(), &key, &[]).unwrap();
        assert_eq!(out, dir.path().join("model.sig"));
        std::fs::write(&out, bundle.to_json()).unwrap();
        let sig = verify_folder(dir.path(), &out, &[key.verifying_key()]).unwrap();
        let names: Vec<_> = sig.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a.txt", "sub/b.bin"]);
        // The digest of "hello\n", as model-signing records it.
        assert_eq!(
            sig.resources[0].sha256,
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        std::fs::write(dir.path().join("sub/b.bin"), "World\n").unwrap();
        let err = verify_folder(dir.path(), &out, &[key.verifying_key()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("hash mismatch for sub/b.bin"), "{err}");
        std::fs::write(dir.path().join("sub/b.bin"), "world\n").unwrap();
        std::fs::write(dir.path().join("extra"), "x").unwrap();
        let err = verify_folder(dir.path(), &out, &[key.verifying_key()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("extra is not covered"), "{err}");
    }

    #[test]
    fn statement_round_trip_rejects_bad_subject() {
        let s = ModelSignature::new(
            "m",
            vec![Resource {
                name: "f".into(),
                sha256: "00".repeat(32),
            }],
            vec![],
        );
        let st = s.statement().unwrap();
        assert_eq!(ModelSignature::from_statement(&st).unwrap(), s);
        let tampered = String::from_utf8(st)
            .unwrap()
            .replace(&"00".repeat(32), &"11".repeat(32));
        assert!(ModelSignature::from_statement(tampered.as_bytes()).is_err());
    }
}
