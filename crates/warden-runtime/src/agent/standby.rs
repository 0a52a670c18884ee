//! The agent's warm standbys: slots armed here by the control plane (`Arm`), each with its
//! spec staged and its workload's latest checkpoint already fetched, and the bid for the lease
//! when the control plane says the primary is gone (`Promote`).
//!
//! A slot is kept in `<data-dir>/standbys/<workload>.json` (0600: it holds the checkpoint key)
//! and its checkpoint in `<workload>.<sha256>.blob` next to it, so an agent restart keeps both.
//! A promotion is a bid, not a decision: standby *i* waits `i × promotion_delay`, then asks for
//! the lease with the epoch it was told; the control plane's compare-and-swap admits one winner,
//! which gets the ordinary `Start` and restores from the blob fetched here instead of
//! downloading it. The cached blob is checked against its hash when it is restored, like any.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::executor::Executor;
use super::http::HttpError;
use crate::checkpoint;
use crate::proto::{AcquireRequest, AcquireResponse, CheckpointPlan, CommandKind};

/// One armed slot, as `Arm` described it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Armed {
    pub workload_id: String,
    pub standby_index: usize,
    #[serde(default)]
    pub standby_count: usize,
    pub promotion_delay_ms: u64,
    #[serde(default)]
    pub checkpoint: Option<CheckpointPlan>,
}

/// How long a bid may take before it counts as lost (the control plane then falls back).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

impl Executor {
    fn standby_dir(&self) -> PathBuf {
        self.cells_dir().with_file_name("standbys")
    }

    /// Loads the slots armed before a restart.
    pub(super) fn load_standbys(&self) {
        let Ok(entries) = std::fs::read_dir(self.standby_dir()) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Armed>(&b).map_err(|e| e.to_string()))
            {
                Ok(armed) => {
                    self.standbys().insert(armed.workload_id.clone(), armed);
                }
                Err(e) => tracing::warn!("ignoring standby slot {}: {e}", path.display()),
            }
        }
    }

    /// `Arm`: keeps the slot (durably) and fetches its checkpoint ahead of a failover, in the
    /// background (a large checkpoint must not hold up the commands after it).
    pub(super) fn arm(&self, command: CommandKind) {
        let CommandKind::Arm { workload_id, slot, promotion_delay_ms, checkpoint, .. } = command else { return };
        let armed = Armed {
            workload_id: workload_id.clone(),
            standby_index: slot.standby_index,
            standby_count: slot.standby_count,
            promotion_delay_ms,
            checkpoint,
        };
        let dir = self.standby_dir();
        let path = dir.join(format!("{workload_id}.json"));
        let body = serde_json::to_vec_pretty(&armed).expect("serializes");
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| write_private(&path, &body)) {
            tracing::warn!(%workload_id, "cannot keep the standby slot on disk (an agent restart forgets it): {e}");
        }
        let wanted = armed.checkpoint.as_ref().and_then(|plan| plan.restore.as_deref()).and_then(checkpoint::blob_hex);
        let wanted = wanted.map(str::to_owned);
        self.standbys().insert(workload_id.clone(), armed);
        tracing::info!(%workload_id, index = slot.standby_index, primary = %slot.primary, "standby armed");
        remove_blobs(&dir, &workload_id, wanted.as_deref());
        let Some(hex) = wanted else { return };
        let blob_path = blob_path(&dir, &workload_id, &hex);
        if blob_path.exists() {
            return;
        }
        let executor = self.clone();
        tokio::spawn(async move {
            match executor.fetch_blob(&hex).await {
                Ok(blob) => {
                    // Disarmed or re-armed meanwhile: this blob is no longer wanted.
                    if !executor.standbys().contains_key(&workload_id) {
                        return;
                    }
                    if let Err(e) = write_private(&blob_path, &blob) {
                        tracing::warn!(%workload_id, "cannot keep checkpoint {hex} for a failover: {e}");
                    }
                }
                Err(e) => tracing::warn!(%workload_id, "cannot fetch checkpoint {hex} ahead of a failover: {e}"),
            }
        });
    }

    /// `Disarm`, or this host became the primary: forgets the slot and its checkpoint.
    pub(super) fn disarm(&self, workload_id: &str) {
        if self.standbys().remove(workload_id).is_some() {
            tracing::info!(%workload_id, "standby disarmed");
        }
        let dir = self.standby_dir();
        let _ = std::fs::remove_file(dir.join(format!("{workload_id}.json")));
        remove_blobs(&dir, workload_id, None);
    }

    /// `Promote`: bids for the lease after this slot's turn. Winning needs nothing more here: the
    /// control plane sends the `Start`. A standby that could not fetch its checkpoint is not
    /// warm: it lets every standby that is take its turn first.
    pub(super) fn promote(&self, workload_id: String, cell_id: String, expected_epoch: u64) {
        let Some(armed) = self.standbys().get(&workload_id).cloned() else {
            return tracing::info!(%workload_id, "promotion for a workload this host keeps no standby of");
        };
        let executor = self.clone();
        tokio::spawn(async move {
            let staged = match armed.checkpoint.as_ref().and_then(|p| p.restore.as_deref()).and_then(checkpoint::blob_hex) {
                Some(hex) => blob_path(&executor.standby_dir(), &workload_id, hex).exists(),
                None => true,
            };
            let place = if staged { armed.standby_index } else { armed.standby_count + armed.standby_index };
            let turn = armed.promotion_delay_ms.saturating_mul(place as u64);
            tokio::time::sleep(Duration::from_millis(turn)).await;
            let Some((http, host)) = executor.control_plane() else { return };
            let request = AcquireRequest { host, workload_id: workload_id.clone(), cell_id, expected_epoch };
            let result: Result<AcquireResponse, HttpError> =
                http.json("POST", "/v1/agents/acquire", Some(&request), ACQUIRE_TIMEOUT).await;
            match result {
                Ok(won) => tracing::info!(%workload_id, epoch = won.epoch, "won the lease: promoting this standby"),
                Err(e) => tracing::info!(%workload_id, "did not win the lease: {e}"),
            }
        });
    }

    /// The checkpoint `hex` of `workload_id` if a standby slot fetched it, for a restore.
    pub(super) fn cached_blob(&self, workload_id: &str, hex: &str) -> Option<Vec<u8>> {
        std::fs::read(blob_path(&self.standby_dir(), workload_id, hex)).ok()
    }

    async fn fetch_blob(&self, hex: &str) -> Result<Vec<u8>, String> {
        let (http, _) = self.control_plane().ok_or("no control plane to fetch checkpoints from")?;
        let (_, blob) =
            http.call("GET", &format!("/v1/blobs/{hex}"), b"", super::executor::BLOB_TIMEOUT).await.map_err(|e| e.to_string())?;
        Ok(blob)
    }
}

fn blob_path(dir: &Path, workload_id: &str, hex: &str) -> PathBuf {
    dir.join(format!("{workload_id}.{hex}.blob"))
}

/// Removes the workload's cached checkpoints but `keep`.
fn remove_blobs(dir: &Path, workload_id: &str, keep: Option<&str>) {
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

/// Writes a file only this user can read (it may hold a key), replacing it atomically.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
