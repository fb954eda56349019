//! A cache of file digests keyed by the file's identity and change times, so a
//! model hashed once (when `convert` wrote it, say) is not read again in full by
//! the next `quantize`'s provenance.
//!
//! An entry is trusted only while the file's device, inode, size, modification
//! and status-change times (nanoseconds) are all unchanged: any write, truncate,
//! rename over it or `touch` changes the ctime. As git does with its index, a
//! file changed within the last two seconds is not cached ("racy": a write in
//! the same clock tick as our read could leave the times unchanged).
//!
//! Entries live in `$QUERN_DIGEST_CACHE`, else `$XDG_CACHE_HOME/quern/digests`,
//! else `~/.cache/quern/digests`, one small file each; `QUERN_DIGEST_CACHE=off`
//! disables the cache. Failing to read or write the cache is never an error: the
//! file is hashed as if there were none.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::digest::Digest;

/// A file's identity and times, as the cache compares them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    #[cfg(unix)]
    fn of(path: &Path) -> io::Result<(Stamp, SystemTime)> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
        Ok((
            Stamp {
                dev: m.dev(),
                ino: m.ino(),
                size: m.size(),
                mtime_ns: ns(m.mtime(), m.mtime_nsec()),
                ctime_ns: ns(m.ctime(), m.ctime_nsec()),
            },
            m.modified()?,
        ))
    }

    #[cfg(not(unix))]
    fn of(_path: &Path) -> io::Result<(Stamp, SystemTime)> {
        Err(io::Error::other("digest cache: unix only"))
    }

    fn line(&self, path: &Path, digest: &Digest) -> String {
        format!(
            "{} {} {} {} {} {} {}\n",
            self.dev,
            self.ino,
            self.size,
            self.mtime_ns,
            self.ctime_ns,
            digest.hex(),
            path.display()
        )
    }
}

/// Where the cache lives, or `None` when it is off.
fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("QUERN_DIGEST_CACHE") {
        Some(v) if v == "off" || v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
            .map(|c| c.join("quern").join("digests")),
    }
}

/// The entry file for `path` (by the digest of its canonical path).
fn entry_path(dir: &Path, path: &Path) -> Option<PathBuf> {
    let canon = std::fs::canonicalize(path).ok()?;
    let key = Digest::of_bytes(canon.as_os_str().as_encoded_bytes());
    Some(dir.join(&key.hex()[..32]))
}

/// A file whose modification is this recent is not cached (see the module docs).
const RACY: Duration = Duration::from_secs(2);

fn lookup(dir: &Path, path: &Path, stamp: &Stamp) -> Option<Digest> {
    let text = std::fs::read_to_string(entry_path(dir, path)?).ok()?;
    let mut f = text.trim_end().splitn(7, ' ');
    let mut num = || f.next().and_then(|s| s.parse::<i128>().ok());
    let found = Stamp {
        dev: num()? as u64,
        ino: num()? as u64,
        size: num()? as u64,
        mtime_ns: num()?,
        ctime_ns: num()?,
    };
    let hex = f.next()?;
    (found == *stamp)
        .then(|| Digest::from_hex(hex).ok())
        .flatten()
}

/// Records `digest` as the content of `path`, if the file is old enough to trust
/// its times and the cache is writable.
pub fn remember(path: &Path, digest: &Digest) {
    let Some(dir) = cache_dir() else { return };
    let Ok((stamp, modified)) = Stamp::of(path) else {
        return;
    };
    store(&dir, path, &stamp, modified, digest);
}

/// Records the digest of a file this process has just written and committed
/// (created under a unique temporary name, renamed into place). The racy-window
/// rule is skipped: no other writer had the file open before the rename, so its
/// times changed last when we wrote it.
pub fn remember_written(path: &Path, digest: &Digest) {
    let Some(dir) = cache_dir() else { return };
    let Ok((stamp, _)) = Stamp::of(path) else {
        return;
    };
    write_entry(&dir, path, &stamp, digest);
}

fn store(dir: &Path, path: &Path, stamp: &Stamp, modified: SystemTime, digest: &Digest) {
    let recent = SystemTime::now()
        .duration_since(modified)
        .map(|age| age < RACY)
        .unwrap_or(true);
    if !recent {
        write_entry(dir, path, stamp, digest);
    }
}

fn write_entry(dir: &Path, path: &Path, stamp: &Stamp, digest: &Digest) {
    let Some(entry) = entry_path(dir, path) else {
        return;
    };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    // Written under a unique name and renamed, so readers never see half an entry.
    let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, stamp.line(path, digest)).is_ok()
        && std::fs::rename(&tmp, &entry).is_err()
    {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// The sha256 of `path`'s contents and its length: from the cache when the file
/// is unchanged since it was recorded, else hashed (and recorded).
pub fn of_file(path: &Path) -> io::Result<(Digest, u64)> {
    let dir = cache_dir();
    let stamp = Stamp::of(path).ok();
    if let (Some(dir), Some((stamp, _))) = (&dir, &stamp) {
        if let Some(d) = lookup(dir, path, stamp) {
            return Ok((d, stamp.size));
        }
    }
    let (digest, len) = Digest::of_file(path)?;
    if let (Some(dir), Some((before, modified))) = (&dir, stamp) {
        // Only when nothing changed while we read.
        if Stamp::of(path).ok().map(|(s, _)| s) == Some(before.clone()) && before.size == len {
            store(dir, path, &before, modified, &digest);
        }
    }
    Ok((digest, len))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// Makes `path` look older than the racy window.
    fn age(path: &Path) {
        let old = SystemTime::now() - Duration::from_secs(60);
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(old).unwrap();
    }

    #[test]
    fn hit_miss_and_invalidation() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let file = dir.path().join("model.gguf");
        std::fs::write(&file, b"first contents").unwrap();
        age(&file);
        let (stamp, modified) = Stamp::of(&file).unwrap();
        assert_eq!(lookup(&cache, &file, &stamp), None);

        let want = Digest::of_bytes(b"first contents");
        store(&cache, &file, &stamp, modified, &want);
        assert_eq!(lookup(&cache, &file, &stamp), Some(want.clone()));

        // A different digest recorded for the same stamp is what the cache returns:
        // proof that a hit does not read the file.
        let fake = Digest::of_bytes(b"not the contents");
        store(&cache, &file, &stamp, modified, &fake);
        assert_eq!(lookup(&cache, &file, &stamp), Some(fake));

        // Any rewrite (even to the same size, with the old mtime restored) changes
        // the ctime: the entry no longer matches.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&file, b"other contents").unwrap();
        age(&file);
        let (now, _) = Stamp::of(&file).unwrap();
        assert_ne!(now, stamp);
        assert_eq!(lookup(&cache, &file, &now), None);
    }

    #[test]
    fn recent_files_are_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let file = dir.path().join("fresh.bin");
        std::fs::write(&file, b"just written").unwrap();
        let (stamp, modified) = Stamp::of(&file).unwrap();
        store(
            &cache,
            &file,
            &stamp,
            modified,
            &Digest::of_bytes(b"just written"),
        );
        assert_eq!(lookup(&cache, &file, &stamp), None);
    }

    #[test]
    fn corrupt_entries_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let file = dir.path().join("m.bin");
        std::fs::write(&file, b"abc").unwrap();
        age(&file);
        let (stamp, _) = Stamp::of(&file).unwrap();
        std::fs::create_dir_all(&cache).unwrap();
        std::fs::write(entry_path(&cache, &file).unwrap(), "garbage line").unwrap();
        assert_eq!(lookup(&cache, &file, &stamp), None);
    }
}
