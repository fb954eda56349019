//! Writing planned tensors to a GGUF file: tensors are produced in parallel in
//! bounded batches while a writer thread streams the previous batch to disk.

use std::borrow::Cow;
use std::io::{self, Write};
use std::sync::mpsc;

use sha2::{Digest as _, Sha256};

use quern_formats::atomic::{AtomicError, AtomicFile};
use quern_formats::gguf::{GgufError, TensorSpec, Value, Writer};
use rayon::prelude::*;

use super::plan::TensorPlan;
use super::Progress;

/// Batches never hold more than this much output, unless one tensor alone is
/// larger: small enough that even a small model's output streams to disk
/// while the next batch is produced (each tensor is itself split across the
/// threads by rows), large enough to amortise the hand-off.
const BATCH_BYTES: u64 = 16 << 20;

/// Hashes everything written through it: the writer thread digests the file
/// as it streams out, instead of a second read of the whole output afterwards
/// (the provenance statement records the output's sha256).
struct HashingFile {
    file: AtomicFile,
    hasher: Sha256,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Writes `plans` to `out` (committed only on success) and returns the sha256
/// of the file's bytes. `produce` makes one tensor's output bytes; `progress`
/// is told how many output bytes were written.
pub(crate) fn write_gguf<'a, E, P>(
    out: AtomicFile,
    metadata: &[(String, Value)],
    plans: &'a [TensorPlan],
    produce: P,
    progress: &dyn Progress,
) -> Result<[u8; 32], E>
where
    E: From<GgufError> + From<AtomicError> + Send,
    P: Fn(&'a TensorPlan) -> Result<Cow<'a, [u8]>, E> + Sync,
{
    let specs: Vec<TensorSpec> = plans
        .iter()
        .map(|p| TensorSpec {
            name: p.gguf_name.clone(),
            shape: p.shape.clone(),
            ggml_type: p.out_type,
        })
        .collect();
    let out = HashingFile {
        file: out,
        hasher: Sha256::new(),
    };
    let mut writer = Writer::new(out, metadata, &specs)?;
    progress.start(plans.iter().map(TensorPlan::out_bytes).sum());

    let batches = batches(plans);
    std::thread::scope(|scope| {
        // Capacity 1: one batch being written, one queued, one being produced.
        let (tx, rx) = mpsc::sync_channel::<Vec<(&'a str, Cow<'a, [u8]>)>>(1);
        let handle = scope.spawn(move || -> Result<Writer<HashingFile>, GgufError> {
            for batch in rx {
                for (name, data) in batch {
                    writer.write_tensor(name, &data)?;
                    progress.advance(data.len() as u64);
                }
            }
            Ok(writer)
        });

        let mut produced: Result<(), E> = Ok(());
        for range in batches {
            let batch: Result<Vec<_>, E> = plans[range]
                .par_iter()
                .map(|p| produce(p).map(|data| (p.gguf_name.as_str(), data)))
                .collect();
            match batch {
                Ok(batch) => {
                    if tx.send(batch).is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
                Err(e) => {
                    produced = Err(e);
                    break;
                }
            }
        }
        drop(tx);
        let written = handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        produced?;
        let writer = written?;
        let HashingFile { file, hasher } = writer.finish()?;
        file.commit()?;
        Ok(hasher.finalize().into())
    })
}

/// Consecutive runs of plans whose output fits the batch budget.
fn batches(plans: &[TensorPlan]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, p) in plans.iter().enumerate() {
        let b = p.out_bytes();
        if i > start && bytes + b > BATCH_BYTES {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += b;
    }
    if start < plans.len() {
        out.push(start..plans.len());
    }
    out
}
