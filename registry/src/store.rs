//! The local content-addressed blob store (`~/.cache/quern/blobs/sha256/<hex>`),
//! shared by every pulled model, plus the client's small state files
//! (resumable uploads, where blobs were last seen for mounts).

use crate::digest::{Digest, HashingWriter};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.into(),
        source,
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// `$QUERN_CACHE_DIR`, else `$XDG_CACHE_HOME/quern`, else `~/.cache/quern`.
    pub fn default_location() -> Store {
        if let Some(d) = std::env::var_os("QUERN_CACHE_DIR") {
            return Store::new(d);
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
            return Store::new(PathBuf::from(d).join("quern"));
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        Store::new(home.join(".cache").join("quern"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(d.hex())
    }

    /// Where a download in progress accumulates (resumed with a Range request).
    pub fn partial_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join("sha256")
            .join(format!("{}.partial", d.hex()))
    }

    pub fn state_dir(&self, kind: &str) -> PathBuf {
        self.root.join("state").join(kind)
    }

    /// True when the blob is stored with the expected size (its digest was
    /// checked before it took its name).
    pub fn has(&self, d: &Digest, size: u64) -> bool {
        std::fs::metadata(self.blob_path(d)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Open the partial file for appending; returns it, the hash state of what it
    /// already holds, and its length.
    pub fn open_partial(&self, d: &Digest) -> Result<(HashingWriter<File>, u64), StoreError> {
        let p = self.partial_path(d);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&p)
            .map_err(io_at(&p))?;
        // Re-hash what an interrupted download left, so the final digest covers it.
        let mut w = HashingWriter::new(io::sink());
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(io_at(&p))?;
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n]).map_err(io_at(&p))?;
        }
        let len = w.len();
        let hasher = w.hasher().clone();
        Ok((HashingWriter::resume(f, hasher, len), len))
    }

    /// Check a finished partial download and give it its final name.
    pub fn commit_partial(
        &self,
        d: &Digest,
        w: HashingWriter<File>,
        what: &str,
    ) -> Result<PathBuf, StoreError> {
        let p = self.partial_path(d);
        let (f, (actual, _)) = w.finish();
        drop(f);
        if &actual != d {
            let _ = std::fs::remove_file(&p);
            return Err(StoreError::DigestMismatch {
                what: what.to_string(),
                expected: d.clone(),
                actual,
            });
        }
        self.finalize(&p, d)
    }

    /// Store the output of `write` under its digest, which must equal `expected` when given.
    pub fn insert_with(
        &self,
        expected: Option<&Digest>,
        what: &str,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(Digest, u64), StoreError> {
        let dir = self.root.join("blobs").join("sha256");
        std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .map_err(io_at(&dir))?;
        let mut w = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, tmp));
        write(&mut w).map_err(io_at(&dir))?;
        let (buf, (actual, len)) = w.finish();
        let tmp = buf.into_inner().map_err(|e| StoreError::Io {
            path: dir.clone(),
            source: e.into_error(),
        })?;
        if let Some(exp) = expected {
            if exp != &actual {
                return Err(StoreError::DigestMismatch {
                    what: what.to_string(),
                    expected: exp.clone(),
                    actual,
                });
            }
        }
        let (_, tmp_path) = tmp.keep().map_err(|e| StoreError::Io {
            path: dir.clone(),
            source: e.error,
        })?;
        self.finalize(&tmp_path, &actual)?;
        Ok((actual, len))
    }

    /// Rename into place, read-only: pulled files are hard links to these blobs.
    fn finalize(&self, from: &Path, d: &Digest) -> Result<PathBuf, StoreError> {
        let to = self.blob_path(d);
        if let Ok(meta) = std::fs::metadata(from) {
            let mut perm = meta.permissions();
            perm.set_readonly(true);
            let _ = std::fs::set_permissions(from, perm);
        }
        std::fs::rename(from, &to).map_err(io_at(&to))?;
        Ok(to)
    }

    /// Put `src` at `dst` with the content of blob `d`: a hard link when the
    /// store and `dst` share a filesystem, else a copy; via a temporary name so
    /// `dst` never holds a partial file.
    pub fn materialize(&self, d: &Digest, dst: &Path, copy: bool) -> Result<(), StoreError> {
        let src = self.blob_path(d);
        let dir = crate::fsutil::parent_dir(dst);
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        let name = dst
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.quern-tmp"));
        let _ = std::fs::remove_file(&tmp);
        let linked = !copy && std::fs::hard_link(&src, &tmp).is_ok();
        if !linked {
            std::fs::copy(&src, &tmp).map_err(io_at(&tmp))?;
            let f = File::open(&tmp).map_err(io_at(&tmp))?;
            let mut perm = f.metadata().map_err(io_at(&tmp))?.permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perm.set_readonly(false);
            let _ = std::fs::set_permissions(&tmp, perm);
        }
        // A file already there under the final name is replaced in one step.
        std::fs::rename(&tmp, dst).map_err(io_at(dst))?;
        Ok(())
    }

    /// Read a small JSON state file (None when absent or unreadable).
    pub fn read_state(&self, kind: &str, key: &str) -> Option<serde_json::Value> {
        let p = self
            .state_dir(kind)
            .join(format!("{}.json", Digest::of_bytes(key.as_bytes()).hex()));
        serde_json::from_slice(&std::fs::read(p).ok()?).ok()
    }

    pub fn write_state(&self, kind: &str, key: &str, v: &serde_json::Value) {
        let p = self
            .state_dir(kind)
            .join(format!("{}.json", Digest::of_bytes(key.as_bytes()).hex()));
        // State only saves work; failing to record it must not fail the transfer.
        let _ = crate::fsutil::write_atomic(&p, &serde_json::to_vec(v).unwrap_or_default());
    }

    pub fn remove_state(&self, kind: &str, key: &str) {
        let p = self
            .state_dir(kind)
            .join(format!("{}.json", Digest::of_bytes(key.as_bytes()).hex()));
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_resume_and_mismatch() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path());
        let data = b"hello world, content addressed";
        let dg = Digest::of_bytes(data);
        let (mut w, n) = s.open_partial(&dg).unwrap();
        assert_eq!(n, 0);
        w.write_all(&data[..10]).unwrap();
        drop(w);
        let (mut w, n) = s.open_partial(&dg).unwrap();
        assert_eq!(n, 10);
        w.write_all(&data[10..]).unwrap();
        let p = s.commit_partial(&dg, w, "blob").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), data);
        assert!(s.has(&dg, data.len() as u64));
        let out = d.path().join("out/x.bin");
        s.materialize(&dg, &out, false).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data);

        let wrong = Digest::of_bytes(b"other");
        let (mut w, _) = s.open_partial(&wrong).unwrap();
        w.write_all(data).unwrap();
        assert!(matches!(
            s.commit_partial(&wrong, w, "blob"),
            Err(StoreError::DigestMismatch { .. })
        ));
        assert!(!s.blob_path(&wrong).exists() && !s.partial_path(&wrong).exists());
    }
}
