//! Checkpoint blobs on the agent's side: moving them to and from the control plane's blob store
//! (`/v1/blobs/<sha256>`), and the copies a standby slot keeps ahead of a failover in
//! `<data-dir>/standbys/<workload>.<sha256>.blob`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::http::{Http, HttpError};

/// A checkpoint's upload or download may take a while (up to `MAX_BLOB_BYTES`).
pub(super) const BLOB_TIMEOUT: Duration = Duration::from_secs(120);

/// Downloads blob `hex` (one attempt).
pub(super) async fn fetch(http: &Http, hex: &str) -> Result<Vec<u8>, HttpError> {
    let (_, blob) = http.call("GET", &format!("/v1/blobs/{hex}"), b"", BLOB_TIMEOUT).await?;
    Ok(blob)
}

/// Uploads `blob` as blob `hex` (its sha256).
pub(super) async fn upload(http: &Http, hex: &str, blob: &[u8]) -> Result<(), HttpError> {
    http.call("PUT", &format!("/v1/blobs/{hex}"), blob, BLOB_TIMEOUT).await?;
    Ok(())
}

/// Where a standby slot keeps checkpoint `hex` of `workload_id`, in the standby dir `dir`.
pub(super) fn cached_path(dir: &Path, workload_id: &str, hex: &str) -> PathBuf {
    dir.join(format!("{workload_id}.{hex}.blob"))
}

/// The cached checkpoint `hex` of `workload_id`, if a standby slot fetched it.
pub(super) fn cached(dir: &Path, workload_id: &str, hex: &str) -> Option<Vec<u8>> {
    std::fs::read(cached_path(dir, workload_id, hex)).ok()
}

/// Removes the workload's cached checkpoints but `keep`.
pub(super) fn remove_cached(dir: &Path, workload_id: &str, keep: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let prefix = format!("{workload_id}.");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(hex) = name.strip_prefix(&prefix).and_then(|rest| rest.strip_suffix(".blob")) else { continue };
        if Some(hex) != keep {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
