//! `push`: lay a model out as a ModelPack artifact and upload it, resumably,
//! skipping blobs the registry has and mounting those another repository has;
//! then sign it and attach the signature and provenance as referrers.

use super::error::ClientError;
use super::observer::Observer;
use super::referrers::{self, Via};
use super::registry::Registry;
use crate::artifact::{self, Model};
use crate::digest::Digest;
use crate::manifest::{Descriptor, Manifest};
use crate::media;
use crate::reference::Reference;
use crate::signing::model_sig::{self, ModelSignature, Resource};
use crate::signing::{Bundle, SigningKey};
use crate::store::Store;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    /// Raw files: layer digest = file sha256.
    None,
    /// zstd for every file.
    Zstd,
    /// zstd where it saves at least 10%.
    Auto,
}

pub struct PushOptions {
    pub path: PathBuf,
    pub reference: Reference,
    pub key: Option<SigningKey>,
    pub plain_http: bool,
    pub compress: Compress,
    /// Bytes per PATCH request.
    pub chunk_size: u64,
    /// Blobs transferred at once.
    pub parallel: usize,
    pub store: Store,
}

impl PushOptions {
    pub fn new(path: &Path, reference: Reference) -> PushOptions {
        PushOptions {
            path: path.to_path_buf(),
            reference,
            key: None,
            plain_http: false,
            compress: Compress::None,
            chunk_size: 64 << 20,
            parallel: 4,
            store: Store::default_location(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PushReport {
    pub reference: String,
    pub manifest_digest: Digest,
    pub layers: Vec<Descriptor>,
    pub uploaded: usize,
    pub existing: usize,
    pub mounted: usize,
    pub bytes_sent: u64,
    pub signature: Option<(Digest, Via)>,
    pub provenance: Option<(Digest, Via)>,
}

/// A blob to make present in the repository.
struct Upload {
    /// None: a large file hashed while it uploads.
    digest: Option<Digest>,
    size: u64,
    source: PathBuf,
    label: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Uploaded(u64),
    Existing,
    Mounted,
}

pub fn push(opts: &PushOptions, obs: &dyn Observer) -> Result<PushReport, ClientError> {
    let r = &opts.reference;
    if r.digest.is_some() {
        return Err(ClientError::Invalid(format!(
            "{r}: push to a tag (HOST/NAME:TAG), not a digest"
        )));
    }
    let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
    let listing = artifact::list(&opts.path)?;
    let reg = Registry::new(&r.host, &r.name, opts.plain_http);
    reg.ping()?;

    // Large raw files are hashed while they upload (the existence check runs
    // as soon as the hash is known); the rest are hashed first.
    let stream = |path: &PathBuf| {
        opts.compress == Compress::None
            && std::fs::metadata(path).is_ok_and(|m| m.len() >= STREAM_MIN)
    };
    let (big, small): (Vec<_>, Vec<_>) =
        listing.files.iter().cloned().partition(|(_, p)| stream(p));
    obs.note(&format!("hashing {}", opts.path.display()));
    let mut hashed = artifact::hash_files(small)?;
    // A large file hashed by an earlier push and unchanged since (same path,
    // size, mtime, inode) reuses that digest, so the existence check comes
    // first. A stale entry cannot slip through: the registry checks the digest.
    let mut big_unknown = Vec::new();
    for (name, path) in big {
        let known = file_identity(&path)
            .and_then(|id| opts.store.read_state("filedigest", &id))
            .and_then(|v| v["digest"].as_str()?.parse::<Digest>().ok());
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match known {
            Some(digest) => hashed.push(artifact::ModelFile {
                media_type: artifact::media_type_for(&name),
                name,
                path,
                digest,
                size,
            }),
            None => big_unknown.push((name, path)),
        }
    }
    let big = big_unknown;
    let mut uploads = Vec::new();
    for (name, path) in &big {
        let size = std::fs::metadata(path)
            .map(|m| m.len())
            .map_err(|source| ClientError::Io {
                path: path.clone(),
                source,
            })?;
        uploads.push(Upload {
            digest: None,
            size,
            source: path.clone(),
            label: name.clone(),
        });
    }
    let mut small_layers = Vec::new();
    for f in &hashed {
        let (media_type, digest, size, source) =
            match compressed(&opts.store, opts.compress, &f.path, &f.digest, f.size)? {
                Some((d, n)) => (
                    format!("{}{}", f.media_type, media::ZSTD_SUFFIX),
                    d.clone(),
                    n,
                    opts.store.blob_path(&d),
                ),
                None => (
                    f.media_type.to_string(),
                    f.digest.clone(),
                    f.size,
                    f.path.clone(),
                ),
            };
        small_layers.push((
            f.name.clone(),
            Descriptor::new(&media_type, digest.clone(), size),
        ));
        if !uploads
            .iter()
            .any(|u: &Upload| u.digest.as_ref() == Some(&digest))
        {
            uploads.push(Upload {
                digest: Some(digest),
                size,
                source,
                label: f.name.clone(),
            });
        }
    }

    let results = transfer_all(&reg, opts, &uploads, obs)?;
    let mut report = PushReport {
        reference: r.to_string(),
        manifest_digest: Descriptor::empty_config().digest,
        layers: Vec::new(),
        uploaded: 0,
        existing: 0,
        mounted: 0,
        bytes_sent: 0,
        signature: None,
        provenance: None,
    };
    let mut streamed = std::collections::HashMap::new();
    for (u, (digest, how)) in uploads.iter().zip(results) {
        if u.digest.is_none() {
            streamed.insert(u.label.clone(), digest);
        }
        match how {
            How::Uploaded(n) => {
                report.uploaded += 1;
                report.bytes_sent += n;
            }
            How::Existing => report.existing += 1,
            How::Mounted => report.mounted += 1,
        }
    }

    // Every digest is known now: the model, its layers in listing order, its config.
    let mut files = Vec::new();
    let mut layers = Vec::new();
    for (name, path) in &listing.files {
        let (file, layer) = match (hashed.iter().find(|f| &f.name == name), streamed.get(name)) {
            (Some(f), _) => {
                let l = small_layers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, l)| l.clone());
                (f.clone(), l)
            }
            (None, Some(d)) => {
                let size = uploads
                    .iter()
                    .find(|u| &u.label == name)
                    .map_or(0, |u| u.size);
                let f = artifact::ModelFile {
                    name: name.clone(),
                    path: path.clone(),
                    media_type: artifact::media_type_for(name),
                    digest: d.clone(),
                    size,
                };
                let l = Descriptor::new(f.media_type, d.clone(), size);
                (f, Some(l))
            }
            _ => {
                return Err(ClientError::Invalid(format!(
                    "{name}: neither hashed nor uploaded"
                )))
            }
        };
        let mut layer =
            layer.ok_or_else(|| ClientError::Invalid(format!("no layer for {name}")))?;
        layer
            .annotations
            .insert(media::ANNOTATION_FILEPATH.into(), name.clone());
        layer
            .annotations
            .insert(media::ANNOTATION_TITLE.into(), name.clone());
        layers.push(layer);
        files.push(file);
    }
    let model = Model {
        name: listing.name.clone(),
        files,
        info: listing.info.clone(),
        provenance: listing.provenance.clone(),
        single_file: listing.single_file,
    };
    report.layers = layers.clone();
    let diff_ids: Vec<Digest> = model.files.iter().map(|f| f.digest.clone()).collect();
    let config = artifact::config_json(&model.info, &diff_ids);
    let config_digest = reg.put_small_blob(&config)?;

    let mut manifest = Manifest::new(
        Some(media::MODEL_ARTIFACT),
        Descriptor::new(media::MODEL_CONFIG, config_digest, config.len() as u64),
        layers,
    );
    manifest
        .annotations
        .insert("org.opencontainers.image.title".into(), model.name.clone());
    let bytes = manifest.to_bytes();
    let (digest, _) = reg.put_manifest(&tag, &bytes, media::OCI_MANIFEST)?;
    report.manifest_digest = digest.clone();
    let subject = Descriptor::new(media::OCI_MANIFEST, digest, bytes.len() as u64);

    if let Some(key) = &opts.key {
        let bundle = signature_bundle(&model, key)?;
        let ann = BTreeMap::from([(
            media::ANNOTATION_PREDICATE_TYPE.to_string(),
            model_sig::PREDICATE_TYPE.to_string(),
        )]);
        report.signature = Some(referrers::attach(
            &reg,
            &subject,
            media::SIGSTORE_BUNDLE,
            media::SIGSTORE_BUNDLE,
            &bundle.to_json(),
            ann,
        )?);
        obs.note("signature attached");
    }
    if let Some(p) = &model.provenance {
        let statement = std::fs::read(p).map_err(|source| ClientError::Io {
            path: p.clone(),
            source,
        })?;
        check_provenance_subject(&model, &statement, obs);
        let ann = BTreeMap::from([(
            media::ANNOTATION_PREDICATE_TYPE.to_string(),
            crate::provenance::SLSA_PREDICATE.to_string(),
        )]);
        let attached = match &opts.key {
            Some(key) => referrers::attach(
                &reg,
                &subject,
                media::PROVENANCE_ARTIFACT,
                media::SIGSTORE_BUNDLE,
                &Bundle::sign(key, &statement).to_json(),
                ann,
            )?,
            None => referrers::attach(
                &reg,
                &subject,
                media::PROVENANCE_ARTIFACT,
                media::IN_TOTO,
                &statement,
                ann,
            )?,
        };
        report.provenance = Some(attached);
        obs.note("provenance attached");
    }
    Ok(report)
}

/// The model-signing bundle for the pushed files. A single file's provenance
/// sidecar is listed as ignored, since pull writes it beside the file.
pub fn signature_bundle(model: &Model, key: &SigningKey) -> Result<Bundle, ClientError> {
    let resources: Vec<Resource> = model
        .files
        .iter()
        .map(|f| Resource {
            name: f.name.clone(),
            sha256: f.digest.hex().to_string(),
        })
        .collect();
    let mut ignore: Vec<String> = model_sig::DEFAULT_IGNORE
        .iter()
        .map(|s| s.to_string())
        .collect();
    if model.single_file {
        if let Some(f) = model.files.first() {
            ignore.push(format!("{}.provenance.json", f.name));
        }
    }
    Ok(ModelSignature::new(&model.name, resources, ignore).sign(key)?)
}

fn check_provenance_subject(model: &Model, statement: &[u8], obs: &dyn Observer) {
    match crate::provenance::summarize(statement) {
        Ok(s) => {
            let covers = s
                .subjects
                .iter()
                .any(|(_, d)| model.files.iter().any(|f| f.digest.hex() == d));
            if !covers {
                obs.note(
                    "warning: the provenance statement's subjects do not include any pushed file",
                );
            }
        }
        Err(e) => obs.note(&format!("warning: {e}")),
    }
}

/// zstd-compress a file into the store when asked (and, for `Auto`, when it
/// saves ≥ 10%). Remembered per file digest so a rerun does not recompress.
fn compressed(
    store: &Store,
    mode: Compress,
    path: &Path,
    digest: &Digest,
    size: u64,
) -> Result<Option<(Digest, u64)>, ClientError> {
    if mode == Compress::None {
        return Ok(None);
    }
    let key = format!("zstd|{digest}");
    if let Some(v) = store.read_state("zstd", &key) {
        if v["worth"] == false && mode == Compress::Auto {
            return Ok(None);
        }
        if let (Some(d), Some(n)) = (
            v["digest"].as_str().and_then(|d| d.parse::<Digest>().ok()),
            v["size"].as_u64(),
        ) {
            if store.has(&d, n) {
                return Ok(Some((d, n)));
            }
        }
    }
    let (d, n) = store.insert_with(None, &path.display().to_string(), |w| {
        let f = File::open(path)?;
        zstd::stream::copy_encode(std::io::BufReader::with_capacity(1 << 20, f), w, 3)
    })?;
    let worth = (n as f64) <= 0.9 * size as f64;
    store.write_state(
        "zstd",
        &key,
        &serde_json::json!({"digest": d.to_string(), "size": n, "worth": worth}),
    );
    if mode == Compress::Auto && !worth {
        return Ok(None);
    }
    Ok(Some((d, n)))
}

/// One upload's outcome, filled in by whichever worker took it.
type Slot = Option<Result<(Digest, How), ClientError>>;

/// Transfer blobs on `opts.parallel` threads; the first error wins.
fn transfer_all(
    reg: &Registry,
    opts: &PushOptions,
    uploads: &[Upload],
    obs: &dyn Observer,
) -> Result<Vec<(Digest, How)>, ClientError> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Slot>> = Mutex::new((0..uploads.len()).map(|_| None).collect());
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..opts.parallel.clamp(1, 16).min(uploads.len().max(1)) {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(u) = uploads.get(i) else { break };
                let r = upload_one(reg, opts, u, obs);
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                if let Ok(mut v) = results.lock() {
                    v[i] = Some(r);
                }
            });
        }
    });
    let v = results
        .into_inner()
        .map_err(|_| ClientError::Invalid("upload worker panicked".into()))?;
    let mut out = Vec::new();
    for r in v.into_iter().flatten() {
        out.push(r?);
    }
    if out.len() != uploads.len() {
        return Err(ClientError::Invalid("an upload did not complete".into()));
    }
    Ok(out)
}

/// Counts bytes read into the progress observer.
struct Counting<'a, R> {
    inner: R,
    obs: &'a dyn Observer,
    digest: &'a Digest,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.obs.advance(self.digest, n as u64);
        Ok(n)
    }
}

fn upload_one(
    reg: &Registry,
    opts: &PushOptions,
    u: &Upload,
    obs: &dyn Observer,
) -> Result<(Digest, How), ClientError> {
    match &u.digest {
        Some(d) => upload_known(reg, opts, u, d, obs).map(|h| (d.clone(), h)),
        None => upload_streaming(reg, opts, u, obs),
    }
}

/// What identifies a file's content without reading it: canonical path,
/// size, modification time and inode.
fn file_identity(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    let mtime = m
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0u64;
    let canonical = std::fs::canonicalize(path).ok()?;
    Some(format!("{}|{}|{mtime}|{ino}", canonical.display(), m.len()))
}

/// Files at least this large are hashed while they upload.
pub const STREAM_MIN: u64 = 32 << 20;

/// Send chunks from `offset` to the end of the file, resuming after transport
/// errors from the registry's view of the upload. `stop` is asked between
/// chunks whether to give up (the blob turned out to exist).
#[allow(clippy::too_many_arguments)]
fn send_chunks(
    reg: &Registry,
    opts: &PushOptions,
    u: &Upload,
    progress: &Digest,
    state_key: &str,
    location: &mut String,
    offset: &mut u64,
    obs: &dyn Observer,
    stop: &mut dyn FnMut() -> Result<bool, ClientError>,
) -> Result<bool, ClientError> {
    let io = |source| ClientError::Io {
        path: u.source.clone(),
        source,
    };
    let mut file = File::open(&u.source).map_err(io)?;
    let mut failures = 0;
    while *offset < u.size {
        if stop()? {
            return Ok(false);
        }
        let n = opts.chunk_size.max(1).min(u.size - *offset);
        file.seek(SeekFrom::Start(*offset)).map_err(io)?;
        let mut body = Counting {
            inner: std::io::BufReader::with_capacity(1 << 20, (&mut file).take(n)),
            obs,
            digest: progress,
        };
        match reg.patch(location, *offset, &mut body, n) {
            Ok((loc, held)) => {
                *location = loc;
                *offset = held;
                opts.store.write_state(
                    "uploads",
                    state_key,
                    &serde_json::json!({"location": location}),
                );
            }
            Err(e) if failures < 3 => {
                // Ask what arrived and continue from there; a lost upload starts over.
                failures += 1;
                obs.note(&format!("retrying {}: {e}", u.label));
                match reg.upload_status(location)? {
                    Some((loc, held)) if held <= u.size => {
                        *location = loc;
                        *offset = held;
                    }
                    _ => {
                        *location = reg.start_upload(None)?.ok_or_else(|| {
                            ClientError::Invalid("registry mounted a blob it said it lacked".into())
                        })?;
                        *offset = 0;
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Upload a large file while another thread hashes it; as soon as the digest
/// is known, a registry that already has the blob stops the upload.
fn upload_streaming(
    reg: &Registry,
    opts: &PushOptions,
    u: &Upload,
    obs: &dyn Observer,
) -> Result<(Digest, How), ClientError> {
    let store = &opts.store;
    let meta = std::fs::metadata(&u.source).map_err(|source| ClientError::Io {
        path: u.source.clone(),
        source,
    })?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let canonical = std::fs::canonicalize(&u.source).unwrap_or_else(|_| u.source.clone());
    // Before the digest is known, an upload is identified by the file itself.
    let state_key = format!(
        "{}|{}|{}|{}|{mtime}",
        reg.host,
        reg.name,
        canonical.display(),
        u.size
    );
    let progress = Digest::of_bytes(state_key.as_bytes());
    let mut resumed = None;
    if let Some(loc) = store
        .read_state("uploads", &state_key)
        .and_then(|v| v["location"].as_str().map(str::to_string))
    {
        resumed = reg.upload_status(&loc)?;
    }
    let (mut location, mut offset) = match resumed {
        Some((loc, held)) if held <= u.size => (loc, held),
        _ => {
            let loc = reg.start_upload(None)?.ok_or_else(|| {
                ClientError::Invalid("registry answered a plain upload with a mount".into())
            })?;
            (loc, 0)
        }
    };
    store.write_state(
        "uploads",
        &state_key,
        &serde_json::json!({"location": location}),
    );
    obs.start(&progress, &u.label, u.size, offset);
    let start_offset = offset;
    std::thread::scope(|s| {
        let hasher = s.spawn(|| Digest::of_file(&u.source));
        let mut hasher = Some(hasher);
        let mut digest: Option<Digest> = None;
        let mut exists = false;
        let mut take_digest =
            |wait: bool, digest: &mut Option<Digest>| -> Result<(), ClientError> {
                if digest.is_some() {
                    return Ok(());
                }
                if let Some(h) = hasher.take_if(|h| wait || h.is_finished()) {
                    let (d, _) = h
                        .join()
                        .map_err(|_| ClientError::Invalid("hashing thread panicked".into()))?
                        .map_err(|source| ClientError::Io {
                            path: u.source.clone(),
                            source,
                        })?;
                    *digest = Some(d);
                }
                Ok(())
            };
        let mut checked = false;
        let mut stop = || -> Result<bool, ClientError> {
            take_digest(false, &mut digest)?;
            if let (Some(d), false) = (&digest, checked) {
                checked = true;
                exists = reg.blob_exists(d)?.is_some();
            }
            Ok(exists)
        };
        let finished = send_chunks(
            reg,
            opts,
            u,
            &progress,
            &state_key,
            &mut location,
            &mut offset,
            obs,
            &mut stop,
        )?;
        if !finished {
            reg.cancel_upload(&location);
        }
        take_digest(true, &mut digest)?;
        let d = digest.ok_or_else(|| ClientError::Invalid("no digest".into()))?;
        let how = if finished {
            reg.finish_upload(&location, &d)?;
            How::Uploaded(u.size - start_offset)
        } else {
            How::Existing
        };
        store.remove_state("uploads", &state_key);
        store.write_state(
            "seen",
            &format!("{}|{}", reg.host, d),
            &serde_json::json!({"repo": reg.name}),
        );
        if let Some(id) = file_identity(&u.source) {
            store.write_state(
                "filedigest",
                &id,
                &serde_json::json!({"digest": d.to_string()}),
            );
        }
        obs.finish(&progress, "uploaded");
        Ok((d, how))
    })
}

fn upload_known(
    reg: &Registry,
    opts: &PushOptions,
    u: &Upload,
    digest: &Digest,
    obs: &dyn Observer,
) -> Result<How, ClientError> {
    let store = &opts.store;
    let seen_key = format!("{}|{}", reg.host, digest);
    let record_seen =
        || store.write_state("seen", &seen_key, &serde_json::json!({"repo": reg.name}));
    if reg.blob_exists(digest)?.is_some() {
        obs.start(digest, &u.label, u.size, u.size);
        obs.finish(digest, "exists");
        record_seen();
        return Ok(How::Existing);
    }
    let state_key = format!("{}|{}|{}", reg.host, reg.name, digest);
    // Resume an interrupted upload where the registry still has it.
    let mut resumed = None;
    if let Some(loc) = store
        .read_state("uploads", &state_key)
        .and_then(|v| v["location"].as_str().map(str::to_string))
    {
        resumed = reg.upload_status(&loc)?;
    }
    let (mut location, mut offset) = match resumed {
        Some((loc, held)) if held <= u.size => (loc, held),
        _ => {
            let from = store
                .read_state("seen", &seen_key)
                .and_then(|v| v["repo"].as_str().map(str::to_string))
                .filter(|r| r != &reg.name);
            match reg.start_upload(from.as_deref().map(|f| (digest, f)))? {
                None => {
                    obs.start(digest, &u.label, u.size, u.size);
                    obs.finish(digest, "mounted");
                    record_seen();
                    return Ok(How::Mounted);
                }
                Some(loc) => (loc, 0),
            }
        }
    };
    store.write_state(
        "uploads",
        &state_key,
        &serde_json::json!({"location": location}),
    );
    obs.start(digest, &u.label, u.size, offset);
    let start_offset = offset;
    send_chunks(
        reg,
        opts,
        u,
        digest,
        &state_key,
        &mut location,
        &mut offset,
        obs,
        &mut || Ok(false),
    )?;
    reg.finish_upload(&location, digest)?;
    store.remove_state("uploads", &state_key);
    record_seen();
    obs.finish(digest, "uploaded");
    Ok(How::Uploaded(u.size - start_offset))
}
