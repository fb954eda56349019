//! Garbage collection: delete blobs no manifest of any repository references.
//! Run it while no push is in flight (a blob uploaded but not yet referenced
//! by a manifest would be collected).

use super::storage::Storage;
use crate::digest::Digest;
use std::collections::HashSet;
use std::time::Duration;

/// Uploads idle this long are removed by gc.
pub const STALE_UPLOAD: Duration = Duration::from_secs(3600);

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub blobs_kept: usize,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    pub uploads_removed: usize,
}

/// Mark every manifest and what it references, sweep the rest.
/// `dry_run` reports without deleting.
pub fn collect(storage: &Storage, dry_run: bool) -> GcReport {
    let mut marked: HashSet<Digest> = HashSet::new();
    for (_, m) in storage.all_manifests() {
        marked.insert(m.clone());
        let Ok(bytes) = std::fs::read(storage.blob_path(&m)) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        let mut refs = vec![v["config"]["digest"].clone()];
        refs.extend(
            v["layers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|l| l["digest"].clone()),
        );
        refs.extend(
            v["manifests"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|l| l["digest"].clone()),
        );
        for r in refs {
            if let Some(d) = r.as_str().and_then(|s| s.parse::<Digest>().ok()) {
                marked.insert(d);
            }
        }
    }
    let mut report = GcReport::default();
    for d in storage.all_blobs() {
        if marked.contains(&d) {
            report.blobs_kept += 1;
            continue;
        }
        report.blobs_removed += 1;
        let p = storage.blob_path(&d);
        report.bytes_freed += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        if !dry_run {
            storage.unlink_blob_everywhere(&d);
            let _ = std::fs::remove_file(&p);
        }
    }
    // Abandoned uploads: untouched for an hour (a resumable push may come back sooner).
    for e in std::fs::read_dir(storage.uploads_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let age = std::fs::metadata(e.path().join("data"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if age.is_some_and(|a| a < STALE_UPLOAD) {
            continue;
        }
        report.uploads_removed += 1;
        if !dry_run {
            // With the server's in-memory state for it (hash, writer lock).
            let id = e.file_name().to_string_lossy().into_owned();
            if !storage.drop_abandoned_upload(&id) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    report
}
