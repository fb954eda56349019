//! `pull`: fetch a model artifact, check its manifest digest, verify its
//! signature against trusted keys before any weight is fetched, download blobs
//! into the content-addressed store (resuming with Range requests), check
//! every digest, and only then give the output files their final names.

use super::error::ClientError;
use super::observer::Observer;
use super::referrers::{self, Via};
use super::registry::Registry;
use crate::artifact::safe_relative_path;
use crate::digest::{Digest, HashingWriter, WritePipe};
use crate::manifest::{Descriptor, Manifest};
use crate::media;
use crate::provenance::{self, ProvenanceSummary};
use crate::reference::Reference;
use crate::signing::model_sig::{ModelSignature, Resource, SIGNATURE_FILE};
use crate::signing::{Bundle, VerifyingKey};
use crate::store::Store;
use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

pub struct PullOptions {
    pub reference: Reference,
    pub out_dir: PathBuf,
    pub trust: Vec<VerifyingKey>,
    /// Skip the signature check (the CLI says so loudly).
    pub insecure_skip_signature: bool,
    pub plain_http: bool,
    pub parallel: usize,
    /// Copy files out of the store instead of hard-linking them.
    pub copy: bool,
    pub store: Store,
}

impl PullOptions {
    pub fn new(reference: Reference, out_dir: &Path) -> PullOptions {
        PullOptions {
            reference,
            out_dir: out_dir.to_path_buf(),
            trust: Vec::new(),
            insecure_skip_signature: false,
            plain_http: false,
            parallel: 4,
            copy: false,
            store: Store::default_location(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PulledFile {
    pub name: String,
    pub size: u64,
    pub sha256: Digest,
    pub path: PathBuf,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ProvenanceInfo {
    pub summary: ProvenanceSummary,
    /// Signed by a trusted key (false: unsigned, or no key to check it with).
    pub verified: bool,
    /// Its subjects include the pulled files' digests.
    pub covers_files: bool,
    pub via: Via,
    pub written_to: Option<PathBuf>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PullReport {
    pub reference: String,
    pub manifest_digest: Digest,
    pub files: Vec<PulledFile>,
    pub bytes_downloaded: u64,
    pub blobs_cached: usize,
    /// Hint of the key that verified the signature; None when skipped.
    pub signed_by: Option<String>,
    pub signature_via: Option<Via>,
    pub provenance: Option<ProvenanceInfo>,
    pub warnings: Vec<String>,
}

/// A layer to fetch and the file it becomes.
struct Want {
    layer: Descriptor,
    name: String,
    rel: PathBuf,
    /// The file's sha256 (the layer digest, or the config's diff_id for zstd).
    file_digest: Digest,
    compressed: bool,
}

pub fn pull(opts: &PullOptions, obs: &dyn Observer) -> Result<PullReport, ClientError> {
    let r = &opts.reference;
    if opts.trust.is_empty() && !opts.insecure_skip_signature {
        return Err(ClientError::Signature {
            reference: r.to_string(),
            msg: "no trusted key given (--trust KEY.pub); refusing to pull unverified weights"
                .into(),
        });
    }
    let reg = Registry::new(&r.host, &r.name, opts.plain_http);
    let (manifest, _, digest) = fetch_manifest(&reg, r)?;
    if manifest.effective_artifact_type() != media::MODEL_ARTIFACT
        && manifest.config.media_type != media::MODEL_CONFIG
    {
        return Err(ClientError::Invalid(format!(
            "{r}: not a model artifact (artifactType {})",
            manifest.effective_artifact_type()
        )));
    }
    let config_bytes = reg.get_small_blob(&manifest.config.digest)?;
    let config: serde_json::Value = serde_json::from_slice(&config_bytes)
        .map_err(|e| ClientError::Invalid(format!("{r}: model config: {e}")))?;
    let wants = plan(r, &manifest, &config)?;
    let mut warnings = Vec::new();

    // Signature first: nothing is downloaded for a model that fails it.
    let mut signed_by = None;
    let mut signature_via = None;
    let mut bundle_json = None;
    if opts.insecure_skip_signature {
        warnings.push("signature NOT verified (--insecure-skip-signature)".into());
    } else {
        let expected: Vec<Resource> = wants
            .iter()
            .map(|w| Resource {
                name: w.name.clone(),
                sha256: w.file_digest.hex().to_string(),
            })
            .collect();
        let (hint, via, json) = verify_signature(&reg, r, &digest, &opts.trust, &expected)?;
        obs.note(&format!("signature verified (key {hint})"));
        signed_by = Some(hint);
        signature_via = Some(via);
        bundle_json = Some(json);
    }

    let (downloaded, cached) = download_all(&reg, opts, &wants, obs)?;

    // Everything is verified: give the files their names.
    let mut files = Vec::new();
    for w in &wants {
        let dst = opts.out_dir.join(&w.rel);
        opts.store.materialize(&w.file_digest, &dst, opts.copy)?;
        let size = std::fs::metadata(&dst).map(|m| m.len()).unwrap_or(0);
        files.push(PulledFile {
            name: w.name.clone(),
            size,
            sha256: w.file_digest.clone(),
            path: dst,
        });
    }
    if let Some(json) = &bundle_json {
        let p = opts.out_dir.join(SIGNATURE_FILE);
        crate::fsutil::write_atomic(&p, json)
            .map_err(|source| ClientError::Io { path: p, source })?;
    }
    let provenance = match fetch_provenance(&reg, &digest, opts, &wants) {
        Ok(p) => p,
        Err(e) => {
            warnings.push(format!("provenance not shown: {e}"));
            None
        }
    };
    Ok(PullReport {
        reference: r.to_string(),
        manifest_digest: digest,
        files,
        bytes_downloaded: downloaded,
        blobs_cached: cached,
        signed_by,
        signature_via,
        provenance,
        warnings,
    })
}

/// Fetch the manifest and check its digest: against the reference when
/// pulling by digest, else against the registry's `Docker-Content-Digest`.
fn fetch_manifest(
    reg: &Registry,
    r: &Reference,
) -> Result<(Manifest, Vec<u8>, Digest), ClientError> {
    let (bytes, _mt, header) = reg
        .get_manifest(&r.manifest_ref())?
        .ok_or_else(|| ClientError::Invalid(format!("{r}: manifest not found")))?;
    let actual = Digest::of_bytes(&bytes);
    if let Some(want) = &r.digest {
        if want != &actual {
            return Err(ClientError::DigestMismatch {
                what: format!("manifest {r}"),
                expected: want.clone(),
                actual,
            });
        }
    } else if let Some(h) = header.and_then(|h| h.parse::<Digest>().ok()) {
        if h != actual {
            return Err(ClientError::DigestMismatch {
                what: format!("manifest {r} (Docker-Content-Digest)"),
                expected: h,
                actual,
            });
        }
    }
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Invalid(format!("{r}: not an OCI image manifest: {e}")))?;
    Ok((m, bytes, actual))
}

/// Map layers to files, rejecting unsafe or duplicate paths.
fn plan(r: &Reference, m: &Manifest, config: &serde_json::Value) -> Result<Vec<Want>, ClientError> {
    let diff_ids: Vec<Option<Digest>> = config["modelfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| d.as_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, l) in m.layers.iter().enumerate() {
        let name = l
            .annotations
            .get(media::ANNOTATION_FILEPATH)
            .or_else(|| l.annotations.get(media::ANNOTATION_TITLE))
            .cloned()
            .ok_or_else(|| {
                ClientError::Invalid(format!(
                    "{r}: layer {} has no {} annotation",
                    l.digest,
                    media::ANNOTATION_FILEPATH
                ))
            })?;
        let rel = safe_relative_path(&name).ok_or_else(|| {
            ClientError::Invalid(format!(
                "{r}: unsafe file path {name:?} in layer {}",
                l.digest
            ))
        })?;
        if name == SIGNATURE_FILE || !seen.insert(name.clone()) {
            return Err(ClientError::Invalid(format!(
                "{r}: file path {name:?} used twice or reserved"
            )));
        }
        let compressed = l.media_type.ends_with(media::ZSTD_SUFFIX);
        let file_digest = if compressed {
            diff_ids.get(i).cloned().flatten().ok_or_else(|| {
                ClientError::Invalid(format!(
                    "{r}: compressed layer {name} has no diff_id in the config"
                ))
            })?
        } else {
            l.digest.clone()
        };
        out.push(Want {
            layer: l.clone(),
            name,
            rel,
            file_digest,
            compressed,
        });
    }
    if out.is_empty() {
        return Err(ClientError::Invalid(format!(
            "{r}: the artifact has no files"
        )));
    }
    Ok(out)
}

/// Find a model-signing bundle that trusted keys verify and whose files match.
fn verify_signature(
    reg: &Registry,
    r: &Reference,
    subject: &Digest,
    trust: &[VerifyingKey],
    expected: &[Resource],
) -> Result<(String, Via, Vec<u8>), ClientError> {
    let fail = |msg: String| ClientError::Signature {
        reference: r.to_string(),
        msg,
    };
    let (descs, via) = referrers::list(reg, subject, Some(media::SIGSTORE_BUNDLE))?;
    if descs.is_empty() {
        return Err(fail("no signature is attached to this artifact; refusing (use --insecure-skip-signature to pull anyway)".into()));
    }
    let mut reasons = Vec::new();
    for d in descs {
        match check_one_signature(reg, &d, trust, expected) {
            Ok((hint, json)) => return Ok((hint, via, json)),
            Err(e) => reasons.push(e),
        }
    }
    Err(fail(reasons.join("; ")))
}

fn check_one_signature(
    reg: &Registry,
    d: &Descriptor,
    trust: &[VerifyingKey],
    expected: &[Resource],
) -> Result<(String, Vec<u8>), String> {
    let (bytes, _, _) = reg
        .get_manifest(&d.digest.to_string())
        .map_err(|e| e.to_string())?
        .ok_or("signature manifest vanished")?;
    if Digest::of_bytes(&bytes) != d.digest {
        return Err(format!(
            "signature manifest {} does not match its digest",
            d.digest
        ));
    }
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let layer = m.layers.first().ok_or("signature manifest has no layer")?;
    let json = reg
        .get_small_blob(&layer.digest)
        .map_err(|e| e.to_string())?;
    let bundle = Bundle::from_json(&json).map_err(|e| e.to_string())?;
    let sig = ModelSignature::verify_bundle(&bundle, trust).map_err(|e| e.to_string())?;
    sig.check(expected).map_err(|e| e.to_string())?;
    Ok((bundle.verification_material.public_key.hint.clone(), json))
}

fn download_all(
    reg: &Registry,
    opts: &PullOptions,
    wants: &[Want],
    obs: &dyn Observer,
) -> Result<(u64, usize), ClientError> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Result<Option<u64>, ClientError>>> = Mutex::new(Vec::new());
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..opts.parallel.clamp(1, 16).min(wants.len()) {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(w) = wants.get(i) else { break };
                let r = fetch_one(reg, &opts.store, w, obs);
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                if let Ok(mut v) = results.lock() {
                    v.push(r);
                }
            });
        }
    });
    let mut bytes = 0;
    let mut cached = 0;
    for r in results
        .into_inner()
        .map_err(|_| ClientError::Invalid("download worker panicked".into()))?
    {
        match r? {
            Some(n) => bytes += n,
            None => cached += 1,
        }
    }
    Ok((bytes, cached))
}

/// Make the file's blob present in the store; Some(bytes fetched) or None when cached.
fn fetch_one(
    reg: &Registry,
    store: &Store,
    w: &Want,
    obs: &dyn Observer,
) -> Result<Option<u64>, ClientError> {
    if store.blob_path(&w.file_digest).is_file() {
        obs.start(&w.layer.digest, &w.name, w.layer.size, w.layer.size);
        obs.finish(&w.layer.digest, "cached");
        return Ok(None);
    }
    let d = &w.layer.digest;
    let mut fetched = 0;
    if !store.has(d, w.layer.size) {
        fetched = download(reg, store, d, w.layer.size, &w.name, obs)?;
    }
    if w.compressed {
        let src = store.blob_path(d);
        store.insert_with(Some(&w.file_digest), &w.name, |out| {
            let f = File::open(&src)?;
            zstd::stream::copy_decode(std::io::BufReader::with_capacity(1 << 20, f), out)
        })?;
    }
    obs.finish(d, "downloaded");
    Ok(Some(fetched))
}

/// GET a blob into `<store>/…/<hex>.partial`, resuming from what an earlier
/// attempt left, then check the digest and rename.
fn download(
    reg: &Registry,
    store: &Store,
    d: &Digest,
    size: u64,
    label: &str,
    obs: &dyn Observer,
) -> Result<u64, ClientError> {
    let mut attempts = 0;
    let mut fetched = 0;
    loop {
        let (mut w, mut have) = store.open_partial(d)?;
        if have > size {
            drop(w);
            let _ = std::fs::remove_file(store.partial_path(d));
            (w, have) = store.open_partial(d)?;
        }
        if attempts == 0 {
            obs.start(d, label, size, have);
        }
        if have < size {
            let (resp, ranged) = reg.get_blob(d, have)?;
            if have > 0 && !ranged {
                // The registry ignored the Range header: start over.
                drop(w);
                let _ = std::fs::remove_file(store.partial_path(d));
                (w, _) = store.open_partial(d)?;
            }
            let mut reader = resp.inner.into_reader();
            // Receive here; write and hash on threads of their own.
            let (file, hasher, held) = w.into_parts();
            let mut pipe = WritePipe::new(file, hasher, held);
            let received: std::io::Result<()> = loop {
                if pipe.failed() {
                    break Ok(());
                }
                let mut buf = pipe.buffer();
                match crate::digest::fill(&mut reader, &mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        buf.truncate(n);
                        pipe.feed(buf);
                        fetched += n as u64;
                        obs.advance(d, n as u64);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            let end = pipe
                .finish()
                .ok_or_else(|| ClientError::Invalid("writer or hashing thread failed".into()))?;
            if let Some(e) = end.error {
                // A local write failed (disk full): not worth retrying.
                return Err(ClientError::Io {
                    path: store.partial_path(d),
                    source: e,
                });
            }
            let result = received;
            w = HashingWriter::resume(end.writer, end.hasher, end.len);
            if let Err(e) = result {
                attempts += 1;
                if attempts > 3 {
                    return Err(ClientError::Transport {
                        method: "GET".into(),
                        url: reg.url(&format!("blobs/{d}")),
                        msg: e.to_string(),
                    });
                }
                obs.note(&format!("resuming {label}: {e}"));
                continue;
            }
        }
        store.commit_partial(d, w, &format!("blob {d} ({label})"))?;
        return Ok(fetched);
    }
}

fn fetch_provenance(
    reg: &Registry,
    subject: &Digest,
    opts: &PullOptions,
    wants: &[Want],
) -> Result<Option<ProvenanceInfo>, ClientError> {
    let (descs, via) = referrers::list(reg, subject, Some(media::PROVENANCE_ARTIFACT))?;
    let Some(d) = descs.first() else {
        return Ok(None);
    };
    let (bytes, _, _) = reg
        .get_manifest(&d.digest.to_string())?
        .ok_or_else(|| ClientError::Invalid("provenance manifest vanished".into()))?;
    if Digest::of_bytes(&bytes) != d.digest {
        return Err(ClientError::DigestMismatch {
            what: "provenance manifest".into(),
            expected: d.digest.clone(),
            actual: Digest::of_bytes(&bytes),
        });
    }
    let m: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Invalid(e.to_string()))?;
    let layer = m
        .layers
        .first()
        .ok_or_else(|| ClientError::Invalid("provenance manifest has no layer".into()))?;
    let blob = reg.get_small_blob(&layer.digest)?;
    let (statement, verified) = if layer.media_type == media::SIGSTORE_BUNDLE {
        let b = Bundle::from_json(&blob).map_err(|e| ClientError::Invalid(e.to_string()))?;
        match b.verify(&opts.trust) {
            Ok((p, _)) => (p, true),
            Err(_) if opts.trust.is_empty() => (
                b.payload_unverified()
                    .map_err(|e| ClientError::Invalid(e.to_string()))?,
                false,
            ),
            Err(e) => return Err(ClientError::Invalid(format!("provenance signature: {e}"))),
        }
    } else {
        (blob, false)
    };
    let summary =
        provenance::summarize(&statement).map_err(|e| ClientError::Invalid(e.to_string()))?;
    let covers_files = summary
        .subjects
        .iter()
        .any(|(_, h)| wants.iter().any(|w| w.file_digest.hex() == h));
    // A single file's provenance goes beside it; a folder carries its own provenance.json.
    let mut written_to = None;
    if let [w] = wants {
        let p = opts.out_dir.join(format!("{}.provenance.json", w.name));
        crate::fsutil::write_atomic(&p, &statement).map_err(|source| ClientError::Io {
            path: p.clone(),
            source,
        })?;
        written_to = Some(p);
    }
    Ok(Some(ProvenanceInfo {
        summary,
        verified,
        covers_files,
        via,
        written_to,
    }))
}
