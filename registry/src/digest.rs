//! `sha256:<hex>` content digests and streaming hashing.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;
use std::str::FromStr;

/// A sha256 content digest (the only algorithm quern produces or accepts).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    Invalid(String),
    #[error("unsupported digest algorithm in {0:?}: only sha256 is supported")]
    Unsupported(String),
}

impl Digest {
    /// From 64 lowercase hex digits.
    pub fn from_hex(hex: &str) -> Result<Digest, DigestError> {
        if hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Digest {
                hex: hex.to_string(),
            })
        } else {
            Err(DigestError::Invalid(hex.to_string()))
        }
    }

    pub fn from_raw(bytes: [u8; 32]) -> Digest {
        Digest {
            hex: hex::encode(bytes),
        }
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    pub fn of_bytes(data: &[u8]) -> Digest {
        Digest::from_raw(Sha256::digest(data).into())
    }

    /// Digest and length of everything `r` yields.
    pub fn of_reader(mut r: impl Read) -> io::Result<(Digest, u64)> {
        let mut w = HashingWriter::new(io::sink());
        io::copy(&mut r, &mut w)?;
        Ok(w.finish().1)
    }

    /// Digest and length of a file. Large files are read on this thread and
    /// hashed on another, so the hashing core does nothing but hash.
    pub fn of_file(path: &Path) -> io::Result<(Digest, u64)> {
        let mut f = std::fs::File::open(path)?;
        if f.metadata()?.len() < 4 * PIPE_BUF as u64 {
            return Digest::of_reader(io::BufReader::with_capacity(PIPE_BUF, f));
        }
        let mut pipe = WritePipe::new(io::sink(), Sha256::new(), 0);
        loop {
            let mut buf = pipe.buffer();
            let n = fill(&mut f, &mut buf)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            pipe.feed(buf);
        }
        let end = pipe
            .finish()
            .ok_or_else(|| io::Error::other("hashing thread panicked"))?;
        Ok((finalize(end.hasher), end.len))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Digest, DigestError> {
        match s.split_once(':') {
            Some(("sha256", hex)) => {
                Digest::from_hex(hex).map_err(|_| DigestError::Invalid(s.to_string()))
            }
            Some((alg, _)) if !alg.is_empty() => Err(DigestError::Unsupported(s.to_string())),
            _ => Err(DigestError::Invalid(s.to_string())),
        }
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Continue a hash over bytes already seen (`len` of them).
    pub fn resume(inner: W, hasher: Sha256, len: u64) -> Self {
        HashingWriter { inner, hasher, len }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    pub fn hasher(&self) -> &Sha256 {
        &self.hasher
    }

    /// The inner writer, hash state and count, to continue elsewhere (see [`HashPipe`]).
    pub fn into_parts(self) -> (W, Sha256, u64) {
        (self.inner, self.hasher, self.len)
    }

    pub fn finish(self) -> (W, (Digest, u64)) {
        let d = Digest::from_raw(self.hasher.finalize().into());
        (self.inner, (d, self.len))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writing and hashing on threads of their own: the caller only fills buffers
/// (socket reads) while a writer thread writes the previous ones and a hasher
/// thread hashes what was written, so a transfer costs the slowest of
/// receiving, writing and hashing instead of their sum. Buffers are bounded
/// ([`PIPE_DEPTH`] of [`PIPE_BUF`] bytes in flight) and recycled. The hash
/// covers exactly the bytes written: after a write error nothing more is hashed.
pub struct WritePipe<W: Write + Send + 'static> {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    back: std::sync::mpsc::Receiver<Vec<u8>>,
    writer: Option<std::thread::JoinHandle<(W, u64, Option<io::Error>)>>,
    hasher: Option<std::thread::JoinHandle<Sha256>>,
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    fed: u64,
}

/// Size of the buffers handed out by [`WritePipe::buffer`].
pub const PIPE_BUF: usize = 1 << 20;
/// Buffers queued at each stage of a [`WritePipe`].
pub const PIPE_DEPTH: usize = 4;

/// What a [`WritePipe`] leaves: the writer, the hash state of everything it
/// wrote, the bytes written (including what the state had seen before), and
/// the first write error.
pub struct PipeEnd<W> {
    pub writer: W,
    pub hasher: Sha256,
    pub len: u64,
    pub error: Option<io::Error>,
}

impl<W: Write + Send + 'static> WritePipe<W> {
    /// Write into `writer`, continuing hash `state`, which has seen `len` bytes.
    pub fn new(mut writer: W, state: Sha256, len: u64) -> WritePipe<W> {
        use std::sync::atomic::Ordering;
        use std::sync::mpsc::{channel, sync_channel};
        let (tx, rx) = sync_channel::<Vec<u8>>(PIPE_DEPTH);
        let (hash_tx, hash_rx) = sync_channel::<Vec<u8>>(PIPE_DEPTH);
        let (back_tx, back) = channel();
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failed_w = failed.clone();
        let writer = std::thread::spawn(move || {
            let mut written = len;
            let mut error = None;
            for buf in rx {
                if error.is_some() {
                    continue;
                }
                match writer.write_all(&buf) {
                    Ok(()) => {
                        written += buf.len() as u64;
                        // Fails only if the hasher died, which `finish` reports.
                        let _ = hash_tx.send(buf);
                    }
                    Err(e) => {
                        failed_w.store(true, Ordering::Relaxed);
                        error = Some(e);
                    }
                }
            }
            (writer, written, error)
        });
        let hasher = std::thread::spawn(move || {
            let mut h = state;
            for buf in hash_rx {
                h.update(&buf);
                // The caller may have stopped taking buffers back.
                let _ = back_tx.send(buf);
            }
            h
        });
        WritePipe {
            tx: Some(tx),
            back,
            writer: Some(writer),
            hasher: Some(hasher),
            failed,
            fed: len,
        }
    }

    /// A `PIPE_BUF`-byte buffer, recycled when one is free.
    pub fn buffer(&mut self) -> Vec<u8> {
        match self.back.try_recv() {
            Ok(mut b) => {
                b.resize(PIPE_BUF, 0);
                b
            }
            Err(_) => vec![0u8; PIPE_BUF],
        }
    }

    /// Write and hash `buf` (its length is what was filled).
    pub fn feed(&mut self, buf: Vec<u8>) {
        self.fed += buf.len() as u64;
        if let Some(tx) = &self.tx {
            // Fails only if the writer died, which `finish` reports.
            let _ = tx.send(buf);
        }
    }

    /// True once a write has failed (stop feeding; `finish` has the error).
    pub fn failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes fed so far, including those the initial state had seen.
    pub fn fed(&self) -> u64 {
        self.fed
    }

    /// Wait for both stages; None if a thread panicked.
    pub fn finish(mut self) -> Option<PipeEnd<W>> {
        drop(self.tx.take());
        let (writer, len, error) = self.writer.take()?.join().ok()?;
        let hasher = self.hasher.take()?.join().ok()?;
        Some(PipeEnd {
            writer,
            hasher,
            len,
            error,
        })
    }
}

impl<W: Write + Send + 'static> Drop for WritePipe<W> {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        if let Some(h) = self.hasher.take() {
            let _ = h.join();
        }
    }
}

/// Read until `buf` is full or the reader ends; returns the bytes read.
/// (Socket reads return a few KiB at a time; the pipe wants whole buffers.)
pub fn fill(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Keep what arrived: the caller writes it, then sees the error on the next call.
            Err(e) if filled > 0 => {
                let _ = e;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Finish a hash state into a digest.
pub fn finalize(h: Sha256) -> Digest {
    Digest::from_raw(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_writes_and_hashes_in_order() {
        let data: Vec<u8> = (0..9_000_000u32).map(|i| (i * 7) as u8).collect();
        // Continue a state that has seen the first 1000 bytes.
        let mut h = Sha256::new();
        h.update(&data[..1000]);
        let mut p = WritePipe::new(Vec::new(), h, 1000);
        for chunk in data[1000..].chunks(700_001) {
            let mut b = p.buffer();
            b.truncate(chunk.len());
            b.copy_from_slice(chunk);
            p.feed(b);
        }
        assert_eq!(p.fed(), data.len() as u64);
        let end = p.finish().unwrap();
        assert!(end.error.is_none());
        assert_eq!(end.len, data.len() as u64);
        assert_eq!(end.writer, &data[1000..]);
        assert_eq!(finalize(end.hasher), Digest::of_bytes(&data));
    }

    /// Accepts `room` bytes, then fails.
    struct Full {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.got.len() + buf.len() > self.room {
                return Err(io::Error::other("disk full"));
            }
            self.got.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn pipe_hashes_only_what_was_written() {
        let data = vec![5u8; 3 * PIPE_BUF];
        let w = Full {
            got: Vec::new(),
            room: PIPE_BUF + 10,
        };
        let mut p = WritePipe::new(w, Sha256::new(), 0);
        for chunk in data.chunks(PIPE_BUF) {
            let mut b = p.buffer();
            b.truncate(chunk.len());
            b.copy_from_slice(chunk);
            p.feed(b);
        }
        let end = p.finish().unwrap();
        assert_eq!(
            end.error.map(|e| e.to_string()).as_deref(),
            Some("disk full")
        );
        assert_eq!(end.len, PIPE_BUF as u64);
        assert_eq!(end.writer.got.len(), PIPE_BUF);
        assert_eq!(finalize(end.hasher), Digest::of_bytes(&data[..PIPE_BUF]));
    }

    #[test]
    fn large_files_hash_alike_on_two_threads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..(5 * PIPE_BUF + 123) as u32)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&p, &data).unwrap();
        assert_eq!(
            Digest::of_file(&p).unwrap(),
            (Digest::of_bytes(&data), data.len() as u64)
        );
    }

    #[test]
    fn parses_and_rejects() {
        let d = Digest::of_bytes(b"{}");
        assert_eq!(
            d.to_string(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_eq!(d.to_string().parse::<Digest>(), Ok(d.clone()));
        assert!(matches!(
            "sha512:00".parse::<Digest>(),
            Err(DigestError::Unsupported(_))
        ));
        assert!("sha256:ABC".parse::<Digest>().is_err());
        assert!("sha256:../../etc/passwd".parse::<Digest>().is_err());
        let upper = d.to_string().to_uppercase().replace("SHA256", "sha256");
        assert!(upper.parse::<Digest>().is_err());
    }
}
