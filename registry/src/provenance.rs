//! Provenance statements for `convert` and `quantize`: an in-toto Statement v1
//! with a SLSA provenance v1 predicate naming the quern version, the command and
//! its parameters, and the sha256 of every input (source files, imatrix,
//! calibration data).

use crate::digest::Digest;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const SLSA_PREDICATE: &str = "https://slsa.dev/provenance/v1";
pub const BUILDER_ID: &str = "https://github.com/quern/quern";
/// File name of a folder artifact's provenance.
pub const FOLDER_FILE: &str = "provenance.json";

#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("provenance is malformed: {0}")]
    Malformed(String),
}

/// Where the provenance of `output` lives: `OUT.gguf.provenance.json` for a
/// file, `OUT_DIR/provenance.json` for a folder.
pub fn sidecar_path(output: &Path) -> PathBuf {
    if output.is_dir() {
        output.join(FOLDER_FILE)
    } else {
        let mut s = output.as_os_str().to_owned();
        s.push(".provenance.json");
        PathBuf::from(s)
    }
}

/// Collects what a build used and made; [`ProvenanceBuilder::build`] gives the statement.
#[derive(Debug, Clone)]
pub struct ProvenanceBuilder {
    build_type: String,
    external: Map<String, Value>,
    internal: Map<String, Value>,
    deps: Vec<Value>,
    byproducts: Vec<Value>,
    subjects: Vec<Value>,
    started: SystemTime,
    builder_version: String,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ProvenanceError + '_ {
    move |source| ProvenanceError::Io {
        path: path.into(),
        source,
    }
}

impl ProvenanceBuilder {
    /// `command` is the quern subcommand (`convert`, `quantize`); the clock starts now.
    pub fn new(command: &str) -> ProvenanceBuilder {
        let mut external = Map::new();
        external.insert("command".into(), json!(command));
        ProvenanceBuilder {
            build_type: format!("https://github.com/quern/quern/{command}/v1"),
            external,
            internal: Map::new(),
            deps: Vec::new(),
            byproducts: Vec::new(),
            subjects: Vec::new(),
            started: SystemTime::now(),
            builder_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// The version recorded for the builder (defaults to this crate's, the workspace version).
    pub fn builder_version(mut self, v: &str) -> Self {
        self.builder_version = v.to_string();
        self
    }

    /// The full command line as typed.
    pub fn argv<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, argv: I) -> Self {
        let a: Vec<String> = argv.into_iter().map(|s| s.as_ref().to_string()).collect();
        self.external.insert("argv".into(), json!(a));
        self
    }

    /// A user-facing parameter (`type`, `imatrix`, `outtype`, ...).
    pub fn parameter(mut self, key: &str, value: impl Into<Value>) -> Self {
        let params = self
            .external
            .entry("parameters")
            .or_insert_with(|| json!({}));
        if let Some(m) = params.as_object_mut() {
            m.insert(key.to_string(), value.into());
        }
        self
    }

    /// An internal setting that does not change meaning (threads, block size).
    pub fn internal(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.internal.insert(key.to_string(), value.into());
        self
    }

    /// The source model: a hub repo id or a local path, and its revision when known.
    pub fn source(mut self, repo: &str, revision: Option<&str>) -> Self {
        let mut s = json!({"repo": repo});
        if let Some(r) = revision {
            s["revision"] = json!(r);
        }
        self.external.insert("source".into(), s);
        self
    }

    /// A dependency whose digest is already known.
    pub fn dependency(mut self, name: &str, uri: Option<&str>, digest: &Digest) -> Self {
        let mut d = json!({"name": name, "digest": {"sha256": digest.hex()}});
        if let Some(u) = uri {
            d["uri"] = json!(u);
        }
        self.deps.push(d);
        self
    }

    /// Hash a source file and record it under `name` (its path in the source repo).
    pub fn source_file(self, name: &str, path: &Path) -> Result<Self, ProvenanceError> {
        let (d, _) = crate::digest_cache::of_file(path).map_err(io_err(path))?;
        let uri = format!(
            "file://{}",
            std::fs::canonicalize(path)
                .unwrap_or_else(|_| path.into())
                .display()
        );
        Ok(self.dependency(name, Some(&uri), &d))
    }

    /// Hash every regular file of a source folder (recursively, sorted).
    pub fn source_folder(mut self, dir: &Path) -> Result<Self, ProvenanceError> {
        let files = crate::signing::model_sig::list_files(dir, &[".git".into()])
            .map_err(|e| ProvenanceError::Malformed(e.to_string()))?;
        for (name, path) in files {
            self = self.source_file(&name, &path)?;
        }
        Ok(self)
    }

    /// Calibration text, an imatrix, or any other input, by role.
    pub fn input_file(mut self, role: &str, path: &Path) -> Result<Self, ProvenanceError> {
        let (d, _) = crate::digest_cache::of_file(path).map_err(io_err(path))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        self.deps.push(json!({"name": name, "uri": format!("file://{}", path.display()), "digest": {"sha256": d.hex()}, "annotations": {"role": role}}));
        Ok(self)
    }

    /// Something the build produced besides the output (a report, an imatrix).
    pub fn byproduct(mut self, name: &str, digest: &Digest, media_type: Option<&str>) -> Self {
        let mut b = json!({"name": name, "digest": {"sha256": digest.hex()}});
        if let Some(m) = media_type {
            b["mediaType"] = json!(m);
        }
        self.byproducts.push(b);
        self
    }

    /// Record an output file as a subject (hashes it, unless the digest cache
    /// knows it).
    pub fn subject_file(self, name: &str, path: &Path) -> Result<Self, ProvenanceError> {
        let (d, _) = crate::digest_cache::of_file(path).map_err(io_err(path))?;
        Ok(self.subject_digest(name, &d))
    }

    /// Record an output whose digest is already known (computed while writing it).
    pub fn subject_digest(mut self, name: &str, digest: &Digest) -> Self {
        self.subjects
            .push(json!({"name": name, "digest": {"sha256": digest.hex()}}));
        self
    }

    /// Record every file of an output folder as subjects, skipping `provenance.json` itself.
    pub fn subject_folder(mut self, dir: &Path) -> Result<Self, ProvenanceError> {
        let ignore: Vec<String> = vec![FOLDER_FILE.into(), "model.sig".into()];
        let files = crate::signing::model_sig::list_files(dir, &ignore)
            .map_err(|e| ProvenanceError::Malformed(e.to_string()))?;
        for (name, path) in files {
            self = self.subject_file(&name, &path)?;
        }
        Ok(self)
    }

    /// The statement; finish time is now.
    pub fn build(&self) -> Value {
        json!({
            "_type": STATEMENT_TYPE,
            "subject": self.subjects,
            "predicateType": SLSA_PREDICATE,
            "predicate": {
                "buildDefinition": {
                    "buildType": self.build_type,
                    "externalParameters": self.external,
                    "internalParameters": self.internal,
                    "resolvedDependencies": self.deps,
                },
                "runDetails": {
                    "builder": {"id": BUILDER_ID, "version": {"quern": self.builder_version}},
                    "metadata": {"startedOn": rfc3339(self.started), "finishedOn": rfc3339(SystemTime::now())},
                    "byproducts": self.byproducts,
                },
            },
        })
    }

    /// Write the statement to `path` (atomically).
    pub fn write(&self, path: &Path) -> Result<(), ProvenanceError> {
        let bytes = serde_json::to_vec_pretty(&self.build()).unwrap_or_default();
        crate::fsutil::write_atomic(path, &bytes).map_err(io_err(path))
    }
}

/// What `pull` shows of a provenance statement.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProvenanceSummary {
    pub builder: String,
    pub builder_version: String,
    pub command: String,
    pub argv: Vec<String>,
    pub source: Option<String>,
    pub dependencies: usize,
    pub subjects: Vec<(String, String)>,
}

pub fn summarize(statement: &[u8]) -> Result<ProvenanceSummary, ProvenanceError> {
    let v: Value =
        serde_json::from_slice(statement).map_err(|e| ProvenanceError::Malformed(e.to_string()))?;
    if v["predicateType"] != SLSA_PREDICATE {
        return Err(ProvenanceError::Malformed(format!(
            "predicate type {} is not {SLSA_PREDICATE}",
            v["predicateType"]
        )));
    }
    let p = &v["predicate"];
    let ext = &p["buildDefinition"]["externalParameters"];
    let source = ext["source"]["repo"]
        .as_str()
        .map(|r| match ext["source"]["revision"].as_str() {
            Some(rev) => format!("{r}@{rev}"),
            None => r.to_string(),
        });
    Ok(ProvenanceSummary {
        builder: p["runDetails"]["builder"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        builder_version: p["runDetails"]["builder"]["version"]["quern"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        command: ext["command"].as_str().unwrap_or_default().to_string(),
        argv: ext["argv"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        source,
        dependencies: p["buildDefinition"]["resolvedDependencies"]
            .as_array()
            .map_or(0, |a| a.len()),
        subjects: v["subject"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        (
                            s["name"].as_str().unwrap_or_default().to_string(),
                            s["digest"]["sha256"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// RFC 3339 UTC timestamp without a date-time dependency.
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn builds_statement_with_hashed_inputs() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("model.safetensors"), b"weights").unwrap();
        std::fs::write(d.path().join("config.json"), b"{}").unwrap();
        let o = tempfile::tempdir().unwrap();
        let out = o.path().join("out.gguf");
        std::fs::write(&out, b"gguf").unwrap();
        let b = ProvenanceBuilder::new("convert")
            .argv(["quern", "convert", "src", "-o", "out.gguf"])
            .parameter("outtype", "f16")
            .source("HuggingFaceTB/SmolLM2-135M-Instruct", Some("abc123"))
            .source_folder(d.path())
            .unwrap()
            .subject_file("out.gguf", &out)
            .unwrap();
        let side = sidecar_path(&out);
        assert!(side.to_string_lossy().ends_with("out.gguf.provenance.json"));
        b.write(&side).unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&side).unwrap()).unwrap();
        let deps = v["predicate"]["buildDefinition"]["resolvedDependencies"]
            .as_array()
            .unwrap();
        let w = deps
            .iter()
            .find(|x| x["name"] == "model.safetensors")
            .unwrap();
        assert_eq!(w["digest"]["sha256"], Digest::of_bytes(b"weights").hex());
        assert_eq!(
            v["subject"][0]["digest"]["sha256"],
            Digest::of_bytes(b"gguf").hex()
        );
        let s = summarize(&std::fs::read(&side).unwrap()).unwrap();
        assert_eq!(s.command, "convert");
        assert_eq!(
            s.source.as_deref(),
            Some("HuggingFaceTB/SmolLM2-135M-Instruct@abc123")
        );
        assert_eq!(s.dependencies, 2);
    }
}
