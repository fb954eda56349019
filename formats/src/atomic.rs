//! Outputs that appear under their final name only when complete: a file or
//! folder is written beside its destination under a temporary name and renamed
//! on `commit`; dropping without commit removes it.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Large writes amortise syscalls when streaming multi-GB tensors.
const BUFFER_BYTES: usize = 8 << 20;

/// After this many new bytes the kernel is asked to start writing them back
/// (Linux `sync_file_range`), so the `fsync` in `commit` finds little left to
/// do and the disk works while the producer still computes.
const WRITEBACK_BYTES: u64 = 32 << 20;

/// Starts (does not wait for) write-back of `len` bytes at `offset`. Only a
/// hint: an error (a file system without support) is ignored, `commit`'s
/// `fsync` is what makes the data durable.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a valid open descriptor; the call only reads its arguments.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

static COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, thiserror::Error)]
pub enum AtomicError {
    #[error("{path}: output folder does not exist")]
    NoFolder { path: PathBuf },
    #[error("{path}: not a folder")]
    NotAFolder { path: PathBuf },
    #[error("{path}: output path has no file name")]
    NoFileName { path: PathBuf },
    #[error("{folder}: cannot create a file in this folder: {source}")]
    NotWritable {
        folder: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: write failed: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: cannot rename {tmp} into place: {source}")]
    Rename {
        path: PathBuf,
        tmp: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `.<name>.tmp-<pid>-<n>` beside `final_path`, after checking the folder.
fn temp_sibling(final_path: &Path, kind: &str) -> Result<(PathBuf, PathBuf), AtomicError> {
    let name = final_path
        .file_name()
        .ok_or_else(|| AtomicError::NoFileName {
            path: final_path.to_path_buf(),
        })?;
    let folder = match final_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match fs::metadata(&folder) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(AtomicError::NotAFolder { path: folder }),
        Err(_) => return Err(AtomicError::NoFolder { path: folder }),
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{kind}-{}-{n}", std::process::id()));
    Ok((folder.join(tmp_name), folder))
}

/// Makes a rename durable: fsync the folder that holds the new entry.
fn sync_dir(folder: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(folder)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = folder;
        Ok(())
    }
}

/// A file written under a temporary name and renamed to its final name on `commit`.
pub struct AtomicFile {
    final_path: PathBuf,
    tmp_path: PathBuf,
    folder: PathBuf,
    out: Option<BufWriter<File>>,
    /// Test hook: writes past this many bytes fail like a full disk.
    fail_after: Option<u64>,
    written: u64,
    /// Bytes whose write-back has been started.
    written_back: u64,
}

impl AtomicFile {
    pub fn create(final_path: &Path) -> Result<AtomicFile, AtomicError> {
        let (tmp_path, folder) = temp_sibling(final_path, "tmp")?;
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .map_err(|source| AtomicError::NotWritable {
                folder: folder.clone(),
                source,
            })?;
        Ok(AtomicFile {
            final_path: final_path.to_path_buf(),
            tmp_path,
            folder,
            out: Some(BufWriter::with_capacity(BUFFER_BYTES, file)),
            fail_after: None,
            written: 0,
            written_back: 0,
        })
    }

    /// The final name (where the file appears on commit).
    pub fn path(&self) -> &Path {
        &self.final_path
    }

    /// Where the bytes are being written until commit.
    pub fn temp_path(&self) -> &Path {
        &self.tmp_path
    }

    /// Makes every write past `bytes` fail with a "no space left" error, so tests can
    /// check that a failed output leaves nothing behind.
    #[doc(hidden)]
    pub fn simulate_full_disk_after(&mut self, bytes: u64) {
        self.fail_after = Some(bytes);
    }

    /// Flushes, fsyncs, renames to the final name (replacing any file there) and fsyncs the folder.
    pub fn commit(mut self) -> Result<(), AtomicError> {
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| AtomicError::Write { path, source }
        };
        let Some(out) = self.out.take() else {
            return Ok(());
        };
        // On error `self` drops and removes the temporary file.
        let file = out
            .into_inner()
            .map_err(|e| write_err(&self.final_path)(e.into_error()))?;
        file.sync_all().map_err(write_err(&self.final_path))?;
        drop(file);
        fs::rename(&self.tmp_path, &self.final_path).map_err(|source| AtomicError::Rename {
            path: self.final_path.clone(),
            tmp: self.tmp_path.clone(),
            source,
        })?;
        // Renamed: nothing left for Drop to remove.
        self.tmp_path = PathBuf::new();
        sync_dir(&self.folder).map_err(write_err(&self.folder))?;
        Ok(())
    }

    fn wrap(&self, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("{}: {e}", self.tmp_path.display()))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut buf = buf;
        if let Some(limit) = self.fail_after {
            let room = limit.saturating_sub(self.written);
            if room == 0 && !buf.is_empty() {
                return Err(self.wrap(io::Error::other("no space left on device (simulated)")));
            }
            buf = &buf[..buf.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
        }
        let Some(out) = self.out.as_mut() else {
            return Err(io::Error::other("write after commit"));
        };
        match out.write(buf) {
            Ok(n) => {
                self.written += n as u64;
                if self.written - self.written_back >= WRITEBACK_BYTES {
                    // What the buffer still holds is not in the file yet.
                    let flushed = self.written - out.buffer().len() as u64;
                    if flushed > self.written_back {
                        start_writeback(
                            out.get_ref(),
                            self.written_back,
                            flushed - self.written_back,
                        );
                        self.written_back = flushed;
                    }
                }
                Ok(n)
            }
            Err(e) => Err(self.wrap(e)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.out.as_mut().map(|o| o.flush()) {
            Some(Err(e)) => Err(self.wrap(e)),
            _ => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some(out) = self.out.take() {
            // Discard the buffer rather than flush it into a file we are deleting.
            let (file, _) = out.into_parts();
            drop(file);
        }
        if !self.tmp_path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

/// A folder built under a temporary name beside its destination and renamed on `commit`.
pub struct AtomicDir {
    final_path: PathBuf,
    tmp_path: PathBuf,
    folder: PathBuf,
}

impl AtomicDir {
    pub fn create(final_path: &Path) -> Result<AtomicDir, AtomicError> {
        let (tmp_path, folder) = temp_sibling(final_path, "tmpdir")?;
        fs::create_dir(&tmp_path).map_err(|source| AtomicError::NotWritable {
            folder: folder.clone(),
            source,
        })?;
        Ok(AtomicDir {
            final_path: final_path.to_path_buf(),
            tmp_path,
            folder,
        })
    }

    /// The final name (where the folder appears on commit).
    pub fn path(&self) -> &Path {
        &self.final_path
    }

    /// The folder to write into until commit.
    pub fn temp_path(&self) -> &Path {
        &self.tmp_path
    }

    /// `temp_path().join(name)`: where to write a file that ends up as `path().join(name)`.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.tmp_path.join(name)
    }

    /// Fsyncs the files in the folder, then renames it to the final name. An existing
    /// folder there is moved aside first and removed once the new one is in place.
    pub fn commit(mut self) -> Result<(), AtomicError> {
        sync_tree(&self.tmp_path).map_err(|source| AtomicError::Write {
            path: self.final_path.clone(),
            source,
        })?;
        let rename_err = |source, tmp: &Path, to: &Path| AtomicError::Rename {
            path: to.to_path_buf(),
            tmp: tmp.to_path_buf(),
            source,
        };
        let old = if fs::symlink_metadata(&self.final_path).is_ok() {
            let (old, _) = temp_sibling(&self.final_path, "old")?;
            fs::rename(&self.final_path, &old)
                .map_err(|e| rename_err(e, &self.final_path, &old))?;
            Some(old)
        } else {
            None
        };
        if let Err(e) = fs::rename(&self.tmp_path, &self.final_path) {
            if let Some(old) = &old {
                // Put the previous output back; the new one is removed by Drop.
                let _ = fs::rename(old, &self.final_path);
            }
            return Err(rename_err(e, &self.tmp_path, &self.final_path));
        }
        self.tmp_path = PathBuf::new();
        if let Some(old) = old {
            let _ = if old.is_dir() {
                fs::remove_dir_all(&old)
            } else {
                fs::remove_file(&old)
            };
        }
        sync_dir(&self.folder).map_err(|source| AtomicError::Write {
            path: self.folder.clone(),
            source,
        })
    }
}

fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            sync_tree(&entry.path())?;
        } else if ty.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.tmp_path.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.tmp_path);
        }
    }
}
