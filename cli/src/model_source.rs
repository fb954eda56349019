//! Resolving a MODEL argument: a local folder, or a Hugging Face hub id
//! (`ORG/NAME[@REV]`) through the standard HF cache.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

/// Files a model folder may have besides the weights.
const METADATA_FILES: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
];

/// The folder holding the model: `arg` itself if it exists, else the snapshot
/// folder of a hub repo (downloaded unless `HF_HUB_OFFLINE` is set).
pub fn resolve(arg: &str) -> Result<PathBuf> {
    let path = Path::new(arg);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let Some((repo_id, revision)) = parse_hub_id(arg) else {
        bail!("{arg}: no such file or folder (and not a hub id of the form ORG/NAME[@REV])");
    };
    let repo = Repo::with_revision(repo_id.clone(), RepoType::Model, revision.clone());
    let cache = Cache::new(hub_cache_dir());
    if offline() {
        let cached = cache.repo(repo.clone());
        let config = cached
            .get("config.json")
            .or_else(|| snapshot_file(&cache, &repo_id, &revision, "config.json"))
            .with_context(|| {
                format!(
                    "{arg}: not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set",
                    cache.path().display()
                )
            })?;
        return parent(&config);
    }

    let token = std::env::var("HF_TOKEN").ok().or_else(|| cache.token());
    let api = ApiBuilder::from_cache(cache)
        .with_token(token)
        .with_progress(true)
        .build()
        .with_context(|| format!("{arg}: cannot set up the Hugging Face client"))?;
    let remote = api.repo(repo);
    let config = remote
        .get("config.json")
        .with_context(|| format!("{arg}: cannot fetch config.json from the hub"))?;
    for name in &METADATA_FILES[1..] {
        // Optional files: a repo may lack them; convert reports what is missing.
        let _ = remote.get(name);
    }
    match remote.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index)
                .with_context(|| format!("{}: cannot read", index.display()))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: malformed JSON", index.display()))?;
            let mut shards: Vec<String> = json["weight_map"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for shard in shards {
                remote
                    .get(&shard)
                    .with_context(|| format!("{arg}: cannot fetch {shard}"))?;
            }
        }
        Err(_) => {
            remote
                .get("model.safetensors")
                .with_context(|| format!("{arg}: cannot fetch model.safetensors"))?;
        }
    }
    parent(&config)
}

fn parent(file: &Path) -> Result<PathBuf> {
    file.parent()
        .map(Path::to_path_buf)
        .with_context(|| format!("{}: has no parent folder", file.display()))
}

/// `ORG/NAME` or `ORG/NAME@REV` (REV defaults to `main`).
fn parse_hub_id(arg: &str) -> Option<(String, String)> {
    let (id, rev) = match arg.split_once('@') {
        Some((id, rev)) if !rev.is_empty() => (id, rev),
        Some(_) => return None,
        None => (arg, "main"),
    };
    let (org, name) = id.split_once('/')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && s != "."
            && s != ".."
    };
    (ok(org) && ok(name)).then(|| (id.to_string(), rev.to_string()))
}

/// HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub.
fn hub_cache_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Ok(home) = std::env::var("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    Cache::from_env().path().clone()
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// A revision given as a commit hash has no `refs/` entry: look in `snapshots/` directly.
fn snapshot_file(cache: &Cache, repo_id: &str, revision: &str, file: &str) -> Option<PathBuf> {
    let folder = format!("models--{}", repo_id.replace('/', "--"));
    let p = cache
        .path()
        .join(folder)
        .join("snapshots")
        .join(revision)
        .join(file);
    p.exists().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids() {
        assert_eq!(
            parse_hub_id("HuggingFaceTB/SmolLM2-135M"),
            Some(("HuggingFaceTB/SmolLM2-135M".into(), "main".into()))
        );
        assert_eq!(
            parse_hub_id("a/b@v1.0"),
            Some(("a/b".into(), "v1.0".into()))
        );
        assert_eq!(parse_hub_id("a/b@"), None);
        assert_eq!(parse_hub_id("nofolder"), None);
        assert_eq!(parse_hub_id("a/../b"), None);
        assert_eq!(parse_hub_id("./x"), None);
    }

    #[test]
    fn offline_lookup_uses_the_snapshot_layout() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("models--org--m/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::create_dir_all(dir.path().join("models--org--m/refs")).unwrap();
        std::fs::write(dir.path().join("models--org--m/refs/main"), "abc123").unwrap();
        let cache = Cache::new(dir.path().to_path_buf());
        let repo = Repo::with_revision("org/m".into(), RepoType::Model, "main".into());
        assert_eq!(
            cache.repo(repo).get("config.json"),
            Some(snap.join("config.json"))
        );
        assert_eq!(
            snapshot_file(&cache, "org/m", "abc123", "config.json"),
            Some(snap.join("config.json"))
        );
    }
}
