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
//!
//! A *hot* standby (`hot = true`) runs its cell already, with `WARDEN_ROLE=standby` and
//! `WARDEN_ROLE_FILE` (holding `standby`), fenced under epoch 0 ([`STANDBY_EPOCH`]), which
//! this agent extends on its own: a standby without its agent dies like a primary without one.
//! It bids with its cell's id; the winner's `Start` names that cell, which is promoted in place:
//! the lease is claimed like any start's, written to `lease.json` (its shim adopts the epoch and
//! enforces that lease from then on), `primary <epoch>` goes into the role file, and the cell
//! gets SIGUSR1.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::executor::{write_private, Entry, Executor, Tracked, EPOCH_ENV};
use super::http::HttpError;
use crate::checkpoint;
use crate::proto::{AcquireRequest, AcquireResponse, CheckpointPlan, CommandKind, LeaseClaim, ReportEvent};
use warden_cell::{Fence, STANDBY_EPOCH};
use warden_core::lease::HeldLease;

/// What a hot standby's cell is told of its role.
pub const ROLE_ENV: &str = "WARDEN_ROLE";
/// The file a hot standby's role is in: `standby`, then `primary <epoch>` once promoted.
pub const ROLE_FILE_ENV: &str = "WARDEN_ROLE_FILE";
const ROLE_FILE: &str = "role";

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
    /// A hot standby's cell.
    #[serde(default)]
    pub hot_cell: Option<String>,
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
        let CommandKind::Arm { workload_id, slot, promotion_delay_ms, checkpoint, hot, cell, logs } = command else { return };
        let hot_cell = hot.then(|| slot.hot_cell_id(&workload_id));
        let armed = Armed {
            workload_id: workload_id.clone(),
            standby_index: slot.standby_index,
            standby_count: slot.standby_count,
            promotion_delay_ms,
            checkpoint,
            hot_cell: hot_cell.clone(),
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
        // The entry is claimed here, under the lock, so an `Arm` sent twice (a reconciliation
        // racing the first) starts the hot cell once.
        let claimed = hot_cell.filter(|id| {
            let mut cells = self.cells();
            !cells.contains_key(id) && cells.insert(id.clone(), Entry::starting(workload_id.clone(), true, None)).is_none()
        });
        if let Some(cell_id) = claimed {
            let executor = self.clone();
            let workload_id = workload_id.clone();
            tokio::spawn(async move { executor.start_hot(workload_id, cell_id, cell, logs).await });
        }
        let Some(hex) = wanted else { return };
        let blob_path = blob_path(&dir, &workload_id, &hex);
        if blob_path.exists() {
            return;
        }
        let executor = self.clone();
        tokio::spawn(async move {
            match executor.fetch_blob(&hex).await {
                Ok(blob) => {
                    // Disarmed, or re-armed with a newer checkpoint meanwhile: not wanted.
                    let still_wanted = executor.standbys().get(&workload_id).is_some_and(|armed| {
                        armed.checkpoint.as_ref().and_then(|p| p.restore.as_deref()).and_then(checkpoint::blob_hex)
                            == Some(hex.as_str())
                    });
                    if !still_wanted {
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
        let Some(armed) = self.standbys().remove(workload_id) else { return };
        tracing::info!(%workload_id, "standby disarmed");
        // A hot standby that was not promoted goes with its slot, without a report.
        if let Some(cell_id) = armed.hot_cell {
            let still_standby = match self.cells().get_mut(&cell_id) {
                Some(entry) if entry.hot_standby => {
                    entry.remove_when_exited = true;
                    true
                }
                _ => false,
            };
            if still_standby {
                let backend = self.backend().clone();
                tokio::task::spawn_blocking(move || backend.signal(&cell_id, true));
            }
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
            let hot_cell = armed
                .hot_cell
                .filter(|id| executor.cells().get(id).is_some_and(|e| e.hot_standby && matches!(e.state, Tracked::Running(_))));
            let request = AcquireRequest { host, workload_id: workload_id.clone(), cell_id, expected_epoch, hot_cell };
            let result: Result<AcquireResponse, HttpError> =
                http.json("POST", "/v1/agents/acquire", Some(&request), ACQUIRE_TIMEOUT).await;
            match result {
                Ok(won) => tracing::info!(%workload_id, epoch = won.epoch, "won the lease: promoting this standby"),
                Err(e) => tracing::info!(%workload_id, "did not win the lease: {e}"),
            }
        });
    }

    /// Starts a hot standby's cell, fenced under epoch 0 (see the module docs); its entry was
    /// claimed by `arm`.
    async fn start_hot(
        &self,
        workload_id: String,
        cell_id: String,
        cell: warden_core::spec::CellSpec,
        logs: warden_core::spec::LogSpec,
    ) {
        let mut config = crate::cells::cell_config(&workload_id, &cell_id, &cell, &logs, self.logs_dir());
        let validity_ns = self.timing().holder_validity_ms().saturating_mul(1_000_000);
        config.fence = Some(Fence {
            epoch: STANDBY_EPOCH,
            initial_deadline_boottime_ns: warden_cell::boottime_ns().saturating_add(validity_ns),
        });
        config.env.insert(ROLE_ENV.into(), "standby".into());
        let role_file = self.backend().cell_dir(&cell_id).join(ROLE_FILE);
        config.env.insert(ROLE_FILE_ENV.into(), role_file.display().to_string());
        config.env.remove(EPOCH_ENV);
        match self.spawn_cell(config).await {
            Ok(started) => {
                // Written after the start (the shim makes the dir): a cell that finds no file yet
                // is a standby, as WARDEN_ROLE says.
                if let Err(e) = write_private(&role_file, b"standby\n") {
                    tracing::warn!(%cell_id, "cannot write the role file: {e}");
                }
                if let Some(entry) = self.cells().get_mut(&cell_id) {
                    entry.state = Tracked::Running(started.clone());
                }
                tracing::info!(%workload_id, %cell_id, "hot standby running");
                self.watch(cell_id.clone(), started);
                self.keep_standby_fence(cell_id);
            }
            Err(error) => {
                self.cells().remove(&cell_id);
                tracing::warn!(%cell_id, "hot standby did not start: {error}");
            }
        }
    }

    /// Extends a hot standby's epoch-0 fence every renewal interval while it is one. The write
    /// happens under the cells lock, so it can never land after a promotion's.
    pub(super) fn keep_standby_fence(&self, cell_id: String) {
        let executor = self.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis(executor.timing().renew_every_ms.max(50));
            loop {
                tokio::time::sleep(every).await;
                let cells = executor.cells();
                match cells.get(&cell_id) {
                    Some(entry) if entry.hot_standby && matches!(entry.state, Tracked::Running(_)) => {
                        let validity_ns = executor.timing().holder_validity_ms().saturating_mul(1_000_000);
                        let deadline = warden_cell::boottime_ns().saturating_add(validity_ns);
                        if let Err(e) = executor.backend().renew_lease(&cell_id, STANDBY_EPOCH, deadline) {
                            tracing::warn!(%cell_id, "cannot extend the hot standby's fence: {e}");
                        }
                    }
                    _ => return,
                }
            }
        });
    }

    /// The `Start` after this hot standby won: claims the lease like any start, hands it to the
    /// running cell's shim, and tells the cell (role file, SIGUSR1).
    pub(super) async fn promote_hot(&self, workload_id: String, cell_id: String, epoch: u64, ttl_ms: Option<u64>) {
        let Some(sent_at) = self.claim(LeaseClaim { workload_id: workload_id.clone(), epoch }).await else {
            let error = format!("lease epoch {epoch} could not be claimed");
            tracing::info!(%cell_id, "hot standby not promoted: {error}");
            self.disarm(&workload_id);
            self.report(workload_id, cell_id, ReportEvent::StartFailed { error }).await;
            return;
        };
        let held = HeldLease::answered(epoch, sent_at, &self.timing_for(ttl_ms));
        let started = {
            let mut cells = self.cells();
            let Some(entry) = cells.get_mut(&cell_id) else { return };
            let Tracked::Running(started) = entry.state.clone() else { return };
            entry.hot_standby = false;
            entry.lease = Some(held);
            entry.lease_ttl_ms = ttl_ms;
            // Under the lock: no standby extension can follow this write.
            if let Err(e) = self.backend().renew_lease(&cell_id, epoch, held.deadline_ms.saturating_mul(1_000_000)) {
                tracing::warn!(%cell_id, "cannot hand lease epoch {epoch} to the shim: {e}");
            }
            started
        };
        let role_file = self.backend().cell_dir(&cell_id).join(ROLE_FILE);
        if let Err(e) = write_private(&role_file, format!("primary {epoch}\n").as_bytes()) {
            tracing::warn!(%cell_id, "cannot write the role file: {e}");
        }
        // SAFETY: a signal to the cell's process, which this agent watches (its pidfd is open).
        unsafe { libc::kill(started.pid as libc::pid_t, libc::SIGUSR1) };
        tracing::info!(%workload_id, %cell_id, epoch, "hot standby promoted in place");
        // The cell is no standby any more, so this only forgets the slot.
        self.disarm(&workload_id);
        let event = ReportEvent::Started { pid: started.pid, pid_start_time: started.pid_start_time };
        self.report(workload_id, cell_id, event).await;
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
