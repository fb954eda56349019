//! Registry storage on the filesystem, addressed by digest.
//!
//! ```text
//! ROOT/blobs/sha256/<hex>                       content (blobs and manifests)
//! ROOT/uploads/<id>/data, ROOT/uploads/<id>/repo uploads in progress
//! ROOT/repositories/<name>/_blobs/<hex>           the blob is in this repository
//! ROOT/repositories/<name>/_manifests/<hex>       manifest in this repository (holds its media type)
//! ROOT/repositories/<name>/_tags/<tag>            "sha256:<hex>"
//! ROOT/repositories/<name>/_referrers/<subject hex>/<hex>
//! ```
//! Names and tags are validated before they reach a path, so no `..` or `/`
//! escapes. Every write lands in a temporary file that is fsynced, checked and
//! renamed, so a crash never leaves a corrupt blob under its digest.

use crate::digest::{Digest, WritePipe};
use crate::manifest::{Descriptor, Index, Manifest};
use crate::media;
use crate::reference::{validate_name, validate_tag};
use sha2::Sha256;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Bytes of an upload after which writeback to disk is started, so the
/// fsync that publishes the blob has little left to do.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Ask the kernel to start writing a range to disk without waiting (Linux);
/// elsewhere the final fsync does all the work.
fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: a valid open descriptor; the call only schedules I/O on it.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as i64,
                len as i64,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// An upload's file, starting writeback every [`WRITEBACK_STEP`] bytes.
struct WritebackFile {
    file: File,
    written: u64,
    synced: u64,
}

impl Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.synced >= WRITEBACK_STEP {
            start_writeback(&self.file, self.synced, self.written - self.synced);
            self.synced = self.written;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Largest manifest accepted (the spec asks registries to take at least 4 MiB).
pub const MAX_MANIFEST: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("blob {0} unknown to this repository")]
    BlobUnknown(Digest),
    #[error("upload {0} unknown")]
    UploadUnknown(String),
    #[error("digest mismatch: client said {expected}, content is {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("manifest {0} unknown")]
    ManifestUnknown(String),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest references blob {0}, which is not in this repository")]
    ManifestBlobUnknown(Digest),
    #[error("repository {0} unknown")]
    NameUnknown(String),
    #[error("chunk starts at {got}, upload holds {have} bytes")]
    RangeMismatch { got: u64, have: u64 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.into(),
        source,
    }
}

/// A manifest as stored: bytes, media type, digest.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

pub struct Storage {
    root: PathBuf,
    /// Running hash of each upload, so a chunked upload is not re-read at the end.
    /// Lost on restart; then the upload is hashed from disk.
    hashers: Mutex<HashMap<String, (Sha256, u64)>>,
    /// One writer per upload: a PATCH whose connection broke can still be
    /// appending when the client, resumed, asks the status and sends the next
    /// chunk; the new request waits for the old one, then its Content-Range is
    /// checked against what the old one left.
    writers: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Storage {
    pub fn open(root: &Path) -> Result<Storage, StorageError> {
        for sub in ["blobs/sha256", "uploads", "repositories"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(io_at(&p))?;
        }
        Ok(Storage {
            root: root.to_path_buf(),
            hashers: Mutex::new(HashMap::new()),
            writers: Mutex::new(HashMap::new()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    fn repo(&self, name: &str) -> PathBuf {
        // `name` was validated by the grammar: only [a-z0-9._-] and '/'.
        self.root.join("repositories").join(name)
    }

    fn upload_dir(&self, id: &str) -> Result<PathBuf, StorageError> {
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StorageError::UploadUnknown(id.to_string()));
        }
        Ok(self.root.join("uploads").join(id))
    }

    /// Size of a blob present in repository `name`.
    pub fn blob_in_repo(&self, name: &str, d: &Digest) -> Option<u64> {
        if !self.repo(name).join("_blobs").join(d.hex()).exists() {
            return None;
        }
        std::fs::metadata(self.blob_path(d))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    pub fn open_blob(&self, name: &str, d: &Digest) -> Result<(File, u64), StorageError> {
        let size = self
            .blob_in_repo(name, d)
            .ok_or_else(|| StorageError::BlobUnknown(d.clone()))?;
        let p = self.blob_path(d);
        Ok((File::open(&p).map_err(io_at(&p))?, size))
    }

    fn link(&self, dir: PathBuf, file: &str, content: &[u8]) -> Result<(), StorageError> {
        std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        crate::fsutil::write_atomic(&dir.join(file), content).map_err(io_at(&dir))
    }

    fn link_blob(&self, name: &str, d: &Digest) -> Result<(), StorageError> {
        self.link(self.repo(name).join("_blobs"), d.hex(), b"")
    }

    /// Remove a blob from a repository (the content stays until gc).
    pub fn delete_blob(&self, name: &str, d: &Digest) -> Result<(), StorageError> {
        let p = self.repo(name).join("_blobs").join(d.hex());
        std::fs::remove_file(&p).map_err(|_| StorageError::BlobUnknown(d.clone()))
    }

    /// Mount a blob from another repository; false when `from` lacks it.
    pub fn mount(&self, name: &str, from: &str, d: &Digest) -> Result<bool, StorageError> {
        if validate_name(from).is_err() || self.blob_in_repo(from, d).is_none() {
            return Ok(false);
        }
        self.link_blob(name, d)?;
        Ok(true)
    }

    pub fn start_upload(&self, name: &str) -> Result<String, StorageError> {
        self.forget_vanished_uploads();
        let mut raw = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut raw);
        let id = hex::encode(raw);
        let dir = self.root.join("uploads").join(&id);
        std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        File::create(dir.join("data")).map_err(io_at(&dir))?;
        std::fs::write(dir.join("repo"), name).map_err(io_at(&dir))?;
        Ok(id)
    }

    /// The upload's data file, checking it belongs to `name`.
    fn upload_data(&self, name: &str, id: &str) -> Result<PathBuf, StorageError> {
        let dir = self.upload_dir(id)?;
        match std::fs::read_to_string(dir.join("repo")) {
            Ok(r) if r == name => Ok(dir.join("data")),
            _ => Err(StorageError::UploadUnknown(id.to_string())),
        }
    }

    pub fn upload_size(&self, name: &str, id: &str) -> Result<u64, StorageError> {
        let p = self.upload_data(name, id)?;
        std::fs::metadata(&p)
            .map(|m| m.len())
            .map_err(|_| StorageError::UploadUnknown(id.to_string()))
    }

    /// The lock that makes writers of upload `id` take turns.
    fn writer_lock(&self, id: &str) -> Arc<Mutex<()>> {
        let mut m = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(id.to_string()).or_default().clone()
    }

    /// Append a chunk. `start` (from Content-Range) must equal the bytes held
    /// once any other writer of this upload has finished. Bytes that arrive
    /// before a broken connection are kept: the client asks the upload's status
    /// and continues from there.
    pub fn append(
        &self,
        name: &str,
        id: &str,
        start: Option<u64>,
        body: &mut dyn Read,
    ) -> Result<u64, StorageError> {
        let lock = self.writer_lock(id);
        let _turn = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.append_locked(name, id, start, body)
    }

    /// [`Storage::append`] for a caller holding the upload's writer lock.
    fn append_locked(
        &self,
        name: &str,
        id: &str,
        start: Option<u64>,
        body: &mut dyn Read,
    ) -> Result<u64, StorageError> {
        let p = self.upload_data(name, id)?;
        let have = std::fs::metadata(&p).map(|m| m.len()).map_err(io_at(&p))?;
        if let Some(s) = start {
            if s != have {
                return Err(StorageError::RangeMismatch { got: s, have });
            }
        }
        let cached = self
            .hashers
            .lock()
            .ok()
            .and_then(|mut m| m.remove(id))
            .filter(|(_, n)| *n == have);
        // Without a cached hash of the bytes held, hash only a fresh upload;
        // `finish_upload` re-reads the file otherwise.
        let (hasher, hashing) = match cached {
            Some((h, _)) => (h, true),
            None => (Sha256::default(), have == 0),
        };
        let file = OpenOptions::new()
            .append(true)
            .open(&p)
            .map_err(io_at(&p))?;
        let file = WritebackFile {
            file,
            written: have,
            synced: have,
        };
        // Receive on this thread; write and hash on threads of their own.
        let mut pipe = WritePipe::new(file, hasher, have);
        let received = loop {
            if pipe.failed() {
                break Ok(());
            }
            let mut buf = pipe.buffer();
            match crate::digest::fill(body, &mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    buf.truncate(n);
                    pipe.feed(buf);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    break Err(StorageError::Io {
                        path: p.clone(),
                        source: e,
                    })
                }
            }
        };
        let end = pipe.finish().ok_or_else(|| StorageError::Io {
            path: p.clone(),
            source: io::Error::other("upload writer or hashing thread panicked"),
        })?;
        let written = end.len;
        if let Some(e) = end.error {
            return Err(StorageError::Io {
                path: p.clone(),
                source: e,
            });
        }
        if hashing {
            if let Ok(mut m) = self.hashers.lock() {
                m.insert(id.to_string(), (end.hasher, written));
            }
        }
        received?;
        Ok(written)
    }

    /// Finish an upload: the content must hash to `expected`. On success the
    /// blob is fsynced, renamed under its digest and linked into `name`.
    pub fn finish_upload(
        &self,
        name: &str,
        id: &str,
        expected: &Digest,
        body: &mut dyn Read,
    ) -> Result<(), StorageError> {
        let lock = self.writer_lock(id);
        let _turn = lock.lock().unwrap_or_else(|e| e.into_inner());
        let size = self.append_locked(name, id, None, body)?;
        let p = self.upload_data(name, id)?;
        let cached = self
            .hashers
            .lock()
            .ok()
            .and_then(|mut m| m.remove(id))
            .filter(|(_, n)| *n == size);
        let actual = match cached {
            Some((h, _)) => Digest::from_raw(sha2::Digest::finalize(h).into()),
            None => Digest::of_file(&p).map_err(io_at(&p))?.0,
        };
        if &actual != expected {
            self.cancel_upload(name, id);
            return Err(StorageError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        let f = File::open(&p).map_err(io_at(&p))?;
        f.sync_all().map_err(io_at(&p))?;
        let dst = self.blob_path(expected);
        // Concurrent uploads of one blob rename identical content: either wins.
        std::fs::rename(&p, &dst).map_err(io_at(&dst))?;
        crate::fsutil::sync_dir(crate::fsutil::parent_dir(&dst));
        self.cancel_upload(name, id);
        self.link_blob(name, expected)
    }

    pub fn cancel_upload(&self, name: &str, id: &str) -> bool {
        self.upload_data(name, id).is_ok() && self.drop_abandoned_upload(id)
    }

    /// Store content that is small and already in memory (manifests).
    fn put_bytes(&self, data: &[u8]) -> Result<Digest, StorageError> {
        let d = Digest::of_bytes(data);
        let p = self.blob_path(&d);
        if !p.exists() {
            crate::fsutil::write_atomic(&p, data).map_err(io_at(&p))?;
        }
        Ok(d)
    }

    /// Validate and store a manifest under `reference` (tag or digest).
    /// Returns its digest and its subject, if any.
    pub fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        bytes: &[u8],
        content_type: &str,
    ) -> Result<(Digest, Option<Digest>), StorageError> {
        let invalid = |m: String| StorageError::ManifestInvalid(m);
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let declared = v["mediaType"].as_str().unwrap_or(content_type).to_string();
        if !content_type.is_empty() && v["mediaType"].is_string() && declared != content_type {
            return Err(invalid(format!(
                "Content-Type {content_type} differs from mediaType {declared}"
            )));
        }
        let mut references: Vec<(Digest, bool)> = Vec::new();
        let subject = if v["manifests"].is_array() {
            let idx: Index =
                serde_json::from_value(v.clone()).map_err(|e| invalid(e.to_string()))?;
            references.extend(idx.manifests.iter().map(|m| (m.digest.clone(), true)));
            idx.subject.map(|s| s.digest)
        } else {
            let m: Manifest =
                serde_json::from_value(v.clone()).map_err(|e| invalid(e.to_string()))?;
            if m.schema_version != 2 {
                return Err(invalid("schemaVersion must be 2".into()));
            }
            references.push((m.config.digest.clone(), false));
            references.extend(m.layers.iter().map(|l| (l.digest.clone(), false)));
            m.subject.map(|s| s.digest)
        };
        for (d, is_manifest) in &references {
            let present = if *is_manifest {
                self.repo(name).join("_manifests").join(d.hex()).exists()
            } else {
                self.blob_in_repo(name, d).is_some()
            };
            if !present {
                return Err(StorageError::ManifestBlobUnknown(d.clone()));
            }
        }
        let digest = Digest::of_bytes(bytes);
        if reference.starts_with("sha256:") {
            let want: Digest = reference
                .parse()
                .map_err(|_| invalid(format!("bad digest {reference}")))?;
            if want != digest {
                return Err(StorageError::DigestMismatch {
                    expected: want,
                    actual: digest,
                });
            }
        } else if validate_tag(reference).is_err() {
            return Err(invalid(format!("invalid tag {reference:?}")));
        }
        self.put_bytes(bytes)?;
        let media_type = if declared.is_empty() {
            media::OCI_MANIFEST.to_string()
        } else {
            declared
        };
        self.link(
            self.repo(name).join("_manifests"),
            digest.hex(),
            media_type.as_bytes(),
        )?;
        if !reference.starts_with("sha256:") {
            self.link(
                self.repo(name).join("_tags"),
                reference,
                digest.to_string().as_bytes(),
            )?;
        }
        if let Some(s) = &subject {
            self.link(
                self.repo(name).join("_referrers").join(s.hex()),
                digest.hex(),
                b"",
            )?;
        }
        Ok((digest, subject))
    }

    /// Resolve a tag or digest to its manifest digest in `name`.
    pub fn resolve(&self, name: &str, reference: &str) -> Result<Digest, StorageError> {
        let unknown = || StorageError::ManifestUnknown(reference.to_string());
        let d = if reference.starts_with("sha256:") {
            reference.parse::<Digest>().map_err(|_| unknown())?
        } else {
            validate_tag(reference).map_err(|_| unknown())?;
            let t = std::fs::read_to_string(self.repo(name).join("_tags").join(reference))
                .map_err(|_| unknown())?;
            t.trim().parse::<Digest>().map_err(|_| unknown())?
        };
        if !self.repo(name).join("_manifests").join(d.hex()).exists() {
            return Err(unknown());
        }
        Ok(d)
    }

    pub fn get_manifest(
        &self,
        name: &str,
        reference: &str,
    ) -> Result<StoredManifest, StorageError> {
        let d = self.resolve(name, reference)?;
        let media_type = std::fs::read_to_string(self.repo(name).join("_manifests").join(d.hex()))
            .unwrap_or_default();
        let p = self.blob_path(&d);
        let bytes = std::fs::read(&p).map_err(io_at(&p))?;
        Ok(StoredManifest {
            bytes,
            media_type,
            digest: d,
        })
    }

    /// Delete by digest (the manifest and every tag naming it) or by tag (the tag only).
    pub fn delete_manifest(&self, name: &str, reference: &str) -> Result<(), StorageError> {
        let d = self.resolve(name, reference)?;
        let tags_dir = self.repo(name).join("_tags");
        if !reference.starts_with("sha256:") {
            return std::fs::remove_file(tags_dir.join(reference)).map_err(io_at(&tags_dir));
        }
        for t in self.tags(name).unwrap_or_default() {
            if std::fs::read_to_string(tags_dir.join(&t)).is_ok_and(|c| c.trim() == d.to_string()) {
                let _ = std::fs::remove_file(tags_dir.join(&t));
            }
        }
        if let Ok(m) = self.get_manifest(name, reference) {
            let subject = serde_json::from_slice::<serde_json::Value>(&m.bytes)
                .ok()
                .and_then(|v| v["subject"]["digest"].as_str().map(str::to_string));
            if let Some(s) = subject.and_then(|s| s.parse::<Digest>().ok()) {
                let _ = std::fs::remove_file(
                    self.repo(name)
                        .join("_referrers")
                        .join(s.hex())
                        .join(d.hex()),
                );
            }
        }
        let p = self.repo(name).join("_manifests").join(d.hex());
        std::fs::remove_file(&p).map_err(io_at(&p))
    }

    /// Tags of `name`, sorted; `NameUnknown` when the repository has none.
    pub fn tags(&self, name: &str) -> Result<Vec<String>, StorageError> {
        let dir = self.repo(name).join("_tags");
        let rd =
            std::fs::read_dir(&dir).map_err(|_| StorageError::NameUnknown(name.to_string()))?;
        let mut tags: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|t| !t.starts_with(".tmp"))
            .collect();
        tags.sort();
        Ok(tags)
    }

    /// Manifests whose subject is `subject`, as descriptors, optionally filtered by artifact type.
    pub fn referrers(
        &self,
        name: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Vec<Descriptor> {
        let dir = self.repo(name).join("_referrers").join(subject.hex());
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(d) = Digest::from_hex(&e.file_name().to_string_lossy()) else {
                continue;
            };
            let Ok(m) = self.get_manifest(name, &d.to_string()) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.bytes) else {
                continue;
            };
            let at = v["artifactType"]
                .as_str()
                .or(v["config"]["mediaType"].as_str())
                .map(str::to_string);
            if artifact_type.is_some_and(|f| at.as_deref() != Some(f)) {
                continue;
            }
            let mut desc = Descriptor::new(&m.media_type, d, m.bytes.len() as u64);
            desc.artifact_type = at;
            if let Some(a) = v["annotations"].as_object() {
                desc.annotations = a
                    .iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect();
            }
            out.push(desc);
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        out
    }

    /// Every repository with at least one manifest, sorted.
    pub fn catalog(&self) -> Vec<String> {
        let mut out = Vec::new();
        let base = self.root.join("repositories");
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n == "_manifests" {
                    if let Ok(rel) = dir.strip_prefix(&base) {
                        out.push(rel.to_string_lossy().replace('\\', "/"));
                    }
                } else if !n.starts_with('_') && e.path().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        out.sort();
        out
    }

    /// Every (repository, manifest digest) pair, for gc.
    pub fn all_manifests(&self) -> Vec<(String, Digest)> {
        let mut out = Vec::new();
        for repo in self.catalog() {
            for e in std::fs::read_dir(self.repo(&repo).join("_manifests"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(d) = Digest::from_hex(&e.file_name().to_string_lossy()) {
                    out.push((repo.clone(), d));
                }
            }
        }
        out
    }

    /// Every stored blob digest.
    pub fn all_blobs(&self) -> Vec<Digest> {
        std::fs::read_dir(self.root.join("blobs/sha256"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Digest::from_hex(&e.file_name().to_string_lossy()).ok())
            .collect()
    }

    /// Repositories' blob links, for gc.
    pub fn unlink_blob_everywhere(&self, d: &Digest) {
        for repo in self.catalog() {
            let _ = std::fs::remove_file(self.repo(&repo).join("_blobs").join(d.hex()));
        }
    }

    /// Uploads in progress (ids), for gc.
    pub fn uploads_dir(&self) -> PathBuf {
        self.root.join("uploads")
    }

    /// Removes upload `id` whatever its repository (gc: abandoned uploads;
    /// `cancel_upload` after its repository check), with the hash state and
    /// writer lock the server keeps for it, so a long-running server does not
    /// accumulate them (writers still holding the lock keep their Arc; later
    /// ones find no upload). False when there was no such upload directory.
    pub fn drop_abandoned_upload(&self, id: &str) -> bool {
        let Ok(dir) = self.upload_dir(id) else {
            return false;
        };
        if let Ok(mut m) = self.hashers.lock() {
            m.remove(id);
        }
        self.writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        std::fs::remove_dir_all(dir).is_ok()
    }

    /// Drops the hash state and writer locks of uploads whose directory is
    /// gone: `quern registry gc` runs in its own process and removes abandoned
    /// uploads from the disk only, so the server forgets them here (on each new
    /// upload; the maps hold only uploads in progress, so this is cheap).
    fn forget_vanished_uploads(&self) {
        let gone = |id: &String| self.upload_dir(id).is_ok_and(|d| !d.exists());
        if let Ok(mut m) = self.hashers.lock() {
            m.retain(|id, _| !gone(id));
        }
        self.writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| !gone(id));
    }

    /// Uploads with hash state or a writer lock in memory (tests).
    #[cfg(test)]
    fn tracked_uploads(&self) -> usize {
        let mut ids: std::collections::HashSet<String> = self
            .hashers
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        ids.extend(
            self.writers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned(),
        );
        ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// A request body that yields what the test sends, and ends when the
    /// sender is dropped (a connection that is still delivering).
    struct Trickle(mpsc::Receiver<Vec<u8>>, Vec<u8>);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.1.is_empty() {
                match self.0.recv() {
                    Ok(v) => self.1 = v,
                    Err(_) => return Ok(0),
                }
            }
            let n = buf.len().min(self.1.len());
            buf[..n].copy_from_slice(&self.1[..n]);
            self.1.drain(..n);
            Ok(n)
        }
    }

    /// The resumed client's chunk arrives while the broken request still
    /// appends: it waits, then fails its range check, and the bytes held are
    /// the first request's alone (before, the two appended into one file at
    /// once and the blob's digest came out wrong).
    #[test]
    fn a_second_writer_waits_for_the_first_then_its_range_is_checked() {
        let root = tempfile::tempdir().unwrap();
        let st = Storage::open(root.path()).unwrap();
        let id = st.start_upload("ns/m").unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            let first = s.spawn(|| st.append("ns/m", &id, Some(0), &mut Trickle(rx, Vec::new())));
            tx.send(vec![1u8; 1000]).unwrap();
            let t0 = Instant::now();
            while st.writer_lock(&id).try_lock().is_ok() {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "the first writer never started"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            let second = s.spawn(|| st.append("ns/m", &id, Some(1000), &mut &[2u8; 500][..]));
            std::thread::sleep(Duration::from_millis(200));
            assert!(!second.is_finished(), "the second writer did not wait");
            tx.send(vec![3u8; 24]).unwrap();
            drop(tx);
            assert_eq!(first.join().unwrap().unwrap(), 1024);
            match second.join().unwrap() {
                Err(StorageError::RangeMismatch {
                    got: 1000,
                    have: 1024,
                }) => {}
                other => panic!("second writer: {other:?}"),
            }
        });
        let data = std::fs::read(st.upload_data("ns/m", &id).unwrap()).unwrap();
        assert_eq!(data.len(), 1024);
        assert!(data[..1000].iter().all(|&b| b == 1) && data[1000..].iter().all(|&b| b == 3));
        assert!(st.cancel_upload("ns/m", &id));
    }

    /// gc's removal of an abandoned upload also drops what the server keeps in
    /// memory for it (hash state, writer lock); a live upload keeps both.
    #[test]
    fn dropping_an_abandoned_upload_forgets_its_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = Storage::open(dir.path()).expect("open");
        let (old, live) = (st.start_upload("m").unwrap(), st.start_upload("m").unwrap());
        st.append("m", &old, Some(0), &mut &b"abc"[..]).unwrap();
        st.append("m", &live, Some(0), &mut &b"de"[..]).unwrap();
        assert_eq!(st.tracked_uploads(), 2);
        assert!(st.drop_abandoned_upload(&old));
        assert_eq!(st.tracked_uploads(), 1);
        assert!(st.upload_size("m", &old).is_err());
        assert_eq!(st.upload_size("m", &live).unwrap(), 2);
        assert!(!st.drop_abandoned_upload(&old), "already gone");
        assert!(!st.drop_abandoned_upload("../blobs"), "not an upload id");

        // gc in another process removes only the directory; the server forgets
        // the upload's state when the next upload starts.
        let other = Storage::open(dir.path()).expect("open again");
        assert!(other.drop_abandoned_upload(&live));
        assert_eq!(st.tracked_uploads(), 1);
        let next = st.start_upload("m").unwrap();
        assert_eq!(st.tracked_uploads(), 0);
        st.append("m", &next, Some(0), &mut &b"f"[..]).unwrap();
        assert_eq!(st.tracked_uploads(), 1);
    }
}
