//! The CNCF ModelPack layout of a model: which files become layers, with which
//! media types and file-path annotations, and the model config document.

use crate::describe::{self, ModelInfo};
use crate::digest::Digest;
use crate::media;
use crate::signing::model_sig;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no files to push")]
    Empty(PathBuf),
    #[error(transparent)]
    Files(#[from] model_sig::ModelSigError),
}

/// One file of the model.
#[derive(Debug, Clone)]
pub struct ModelFile {
    /// Path relative to the model root, `/`-separated: the `org.cncf.model.filepath`.
    pub name: String,
    pub path: PathBuf,
    pub media_type: &'static str,
    pub digest: Digest,
    pub size: u64,
}

/// A model ready to be laid out as an OCI artifact.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub files: Vec<ModelFile>,
    pub info: ModelInfo,
    /// Provenance statement to attach (`OUT.gguf.provenance.json` or `DIR/provenance.json`).
    pub provenance: Option<PathBuf>,
    /// True when the model is a single file, not a folder.
    pub single_file: bool,
}

/// The ModelPack media type for a file, by its name.
pub fn media_type_for(name: &str) -> &'static str {
    let base = name.rsplit('/').next().unwrap_or(name).to_ascii_lowercase();
    let ext = base.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext {
        "gguf" | "safetensors" | "bin" | "pt" | "pth" | "onnx" | "ckpt" | "h5" | "msgpack" => {
            media::MODEL_WEIGHT_RAW
        }
        "py" | "sh" => media::MODEL_CODE_RAW,
        "md" | "txt" | "rst" if base != "merges.txt" && base != "vocab.txt" => media::MODEL_DOC_RAW,
        _ if base.starts_with("license")
            || base.starts_with("readme")
            || base.starts_with("notice") =>
        {
            media::MODEL_DOC_RAW
        }
        // config.json, tokenizer files, generation config, vocabularies, chat templates
        _ => media::MODEL_WEIGHT_CONFIG_RAW,
    }
}

/// Hash the files of a GGUF file or a model folder and describe the model.
pub fn scan(path: &Path) -> Result<Model, ArtifactError> {
    let l = list(path)?;
    let files = hash_files(l.files)?;
    Ok(Model {
        name: l.name,
        files,
        info: l.info,
        provenance: l.provenance,
        single_file: l.single_file,
    })
}

/// A model's files before hashing (push hashes large files while uploading them).
#[derive(Debug, Clone)]
pub struct Listing {
    pub name: String,
    /// (file path relative to the model root, path on disk), sorted.
    pub files: Vec<(String, PathBuf)>,
    pub info: ModelInfo,
    pub provenance: Option<PathBuf>,
    pub single_file: bool,
}

/// List a GGUF file or a model folder and describe the model.
pub fn list(path: &Path) -> Result<Listing, ArtifactError> {
    let meta = std::fs::metadata(path).map_err(|source| ArtifactError::Io {
        path: path.into(),
        source,
    })?;
    let name = model_sig::model_name(path);
    let (files, info, provenance, single) = if meta.is_dir() {
        let ignore: Vec<String> = model_sig::DEFAULT_IGNORE
            .iter()
            .map(|s| s.to_string())
            .collect();
        let listed = model_sig::list_files(path, &ignore)?;
        let names: Vec<String> = listed.iter().map(|(n, _)| n.clone()).collect();
        let info = describe::describe_folder(path, &name, &names);
        let prov = path.join("provenance.json");
        (listed, info, prov.is_file().then_some(prov), false)
    } else {
        let fname = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "model".into());
        let info = if fname.ends_with(".gguf") {
            describe::describe_gguf(path, &name)
        } else {
            ModelInfo {
                name: name.clone(),
                ..Default::default()
            }
        };
        let mut side = path.as_os_str().to_owned();
        side.push(".provenance.json");
        let side = PathBuf::from(side);
        (
            vec![(fname, path.to_path_buf())],
            info,
            side.is_file().then_some(side),
            true,
        )
    };
    if files.is_empty() {
        return Err(ArtifactError::Empty(path.into()));
    }
    Ok(Listing {
        name,
        files,
        info,
        provenance,
        single_file: single,
    })
}

/// Hash files on a few threads: a folder of shards hashes in parallel.
pub fn hash_files(files: Vec<(String, PathBuf)>) -> Result<Vec<ModelFile>, ArtifactError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<ModelFile, ArtifactError>>>> =
        files.iter().map(|_| Default::default()).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((name, path)) = files.get(i) else {
                    break;
                };
                let r = Digest::of_file(path)
                    .map(|(digest, size)| ModelFile {
                        name: name.clone(),
                        path: path.clone(),
                        media_type: media_type_for(name),
                        digest,
                        size,
                    })
                    .map_err(|source| ArtifactError::Io {
                        path: path.clone(),
                        source,
                    });
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| Err(ArtifactError::Empty(PathBuf::new())))
        })
        .collect()
}

/// The ModelPack config document (`application/vnd.cncf.model.config.v1+json`).
/// `diff_ids` are the uncompressed file digests in layer order.
pub fn config_json(info: &ModelInfo, diff_ids: &[Digest]) -> Vec<u8> {
    let mut config = serde_json::Map::new();
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            config.insert(k.to_string(), json!(v));
        }
    };
    put("architecture", &info.architecture);
    put("format", &info.format);
    put("paramSize", &info.parameters.map(describe::param_size));
    put("precision", &info.precision);
    put("quantization", &info.quantization);
    let mut descriptor = json!({"name": info.name});
    if let Some(f) = &info.family {
        descriptor["family"] = json!(f);
    }
    let doc = json!({
        "descriptor": descriptor,
        "config": config,
        "modelfs": {"type": "layers", "diff_ids": diff_ids},
    });
    serde_json::to_vec_pretty(&doc).unwrap_or_default()
}

/// A file path from a pulled manifest, safe to join under the output folder.
pub fn safe_relative_path(name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.starts_with('/') || name.contains('\\') || name.contains('\0') {
        return None;
    }
    let mut p = PathBuf::new();
    for comp in name.split('/') {
        if comp.is_empty() || comp == "." || comp == ".." {
            return None;
        }
        p.push(comp);
    }
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        assert_eq!(media_type_for("model-q4.gguf"), media::MODEL_WEIGHT_RAW);
        assert_eq!(
            media_type_for("shards/model-00001-of-00002.safetensors"),
            media::MODEL_WEIGHT_RAW
        );
        assert_eq!(
            media_type_for("config.json"),
            media::MODEL_WEIGHT_CONFIG_RAW
        );
        assert_eq!(
            media_type_for("tokenizer.json"),
            media::MODEL_WEIGHT_CONFIG_RAW
        );
        assert_eq!(media_type_for("merges.txt"), media::MODEL_WEIGHT_CONFIG_RAW);
        assert_eq!(media_type_for("README.md"), media::MODEL_DOC_RAW);
        assert_eq!(media_type_for("LICENSE"), media::MODEL_DOC_RAW);
    }

    #[test]
    fn unsafe_paths_rejected() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\b",
        ] {
            assert!(safe_relative_path(bad).is_none(), "{bad}");
        }
        assert_eq!(
            safe_relative_path("a/b.gguf"),
            Some(PathBuf::from("a/b.gguf"))
        );
    }

    #[test]
    fn scan_folder() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.json"), r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","torch_dtype":"bfloat16"}"#).unwrap();
        std::fs::write(
            d.path().join("model.safetensors"),
            b"\x02\x00\x00\x00\x00\x00\x00\x00{}",
        )
        .unwrap();
        std::fs::write(d.path().join("model.sig"), b"ignored").unwrap();
        let m = scan(d.path()).unwrap();
        let names: Vec<_> = m.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["config.json", "model.safetensors"]);
        assert_eq!(m.info.architecture.as_deref(), Some("LlamaForCausalLM"));
        assert_eq!(m.info.precision.as_deref(), Some("bf16"));
        assert_eq!(m.info.format.as_deref(), Some("safetensors"));
        let cfg: serde_json::Value =
            serde_json::from_slice(&config_json(&m.info, &[m.files[0].digest.clone()])).unwrap();
        assert_eq!(cfg["modelfs"]["diff_ids"][0], m.files[0].digest.to_string());
        assert_eq!(cfg["config"]["format"], "safetensors");
    }
}
