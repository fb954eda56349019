//! sha256 of the inputs, so a report says exactly what was compared. A folder's
//! digest is that of its manifest: one `"<sha256 hex>  <name>\n"` line per regular
//! file at its top level (names not starting with a dot), sorted by name; the
//! same text `sha256sum` prints for those files.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::error::VerifyError;
use super::progress::Progress;

#[derive(Debug, Clone, Serialize)]
pub struct FileDigest {
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
}

/// The digest of a file or folder and of each file in it.
#[derive(Debug, Clone, Serialize)]
pub struct InputDigest {
    pub sha256: String,
    pub bytes: u64,
    pub files: Vec<FileDigest>,
}

/// The files [`digest`] reads for `path`, with their sizes.
pub fn files_of(path: &Path) -> Result<Vec<(String, PathBuf, u64)>, VerifyError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| VerifyError::Io { path: p, source }
    };
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.is_file() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(vec![(name, path.to_path_buf(), meta.len())]);
    }
    let mut files = Vec::new();
    for e in std::fs::read_dir(path).map_err(io(path))? {
        let e = e.map_err(io(path))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        let m = std::fs::metadata(&p).map_err(io(&p))?;
        if m.is_file() && !name.starts_with('.') {
            files.push((name, p, m.len()));
        }
    }
    files.sort();
    Ok(files)
}

fn hash_file(path: &Path, progress: &dyn Progress) -> Result<String, VerifyError> {
    let io = |source| VerifyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        progress.advance(n as u64);
    }
    Ok(hex::encode(h.finalize()))
}

/// Hashes `path` (a file, or a folder's files).
pub fn digest(path: &Path, progress: &dyn Progress) -> Result<InputDigest, VerifyError> {
    let files = files_of(path)?;
    let mut out = Vec::with_capacity(files.len());
    for (name, p, bytes) in &files {
        out.push(FileDigest {
            name: name.clone(),
            sha256: hash_file(p, progress)?,
            bytes: *bytes,
        });
    }
    let bytes = out.iter().map(|f| f.bytes).sum();
    let sha256 = if path.is_file() {
        out[0].sha256.clone()
    } else {
        let manifest: String = out
            .iter()
            .map(|f| format!("{}  {}\n", f.sha256, f.name))
            .collect();
        hex::encode(Sha256::digest(manifest.as_bytes()))
    };
    Ok(InputDigest {
        sha256,
        bytes,
        files: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::progress::NoProgress;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn file_and_folder_digests() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), "abc").unwrap();
        std::fs::write(dir.path().join("a.txt"), "").unwrap();
        std::fs::write(dir.path().join(".hidden"), "x").unwrap();
        let f = digest(&dir.path().join("b.txt"), &NoProgress).unwrap();
        assert_eq!(f.sha256, ABC);
        let d = digest(dir.path(), &NoProgress).unwrap();
        assert_eq!(d.files.len(), 2);
        assert_eq!(d.files[0].name, "a.txt");
        let manifest = format!(
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  a.txt\n{ABC}  b.txt\n"
        );
        assert_eq!(d.sha256, hex::encode(Sha256::digest(manifest.as_bytes())));
        assert_eq!(d.bytes, 3);
    }
}
