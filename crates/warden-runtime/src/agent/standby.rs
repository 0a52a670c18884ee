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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_cell::{Fence, StartedCell, STANDBY_EPOCH};
use warden_core::lease::{HeldLease, OutagePolicy};
use warden_core::spec::{CellSpec, LogSpec};

use super::blobs;
use super::cell_files::{write_lease_terms, write_private, write_role_file, EPOCH_ENV, ROLE_FILE};
use super::cell_table::{Entry, Tracked};
use super::context::AgentContext;
use super::http::HttpError;
use crate::checkpoint;
use crate::error::error_chain;
use crate::proto::{AcquireRequest, AcquireResponse, CheckpointPlan, CommandKind, LeaseClaim, ReportEvent};
use crate::sys::{signal_process, Signal};

/// What a hot standby's cell is told of its role.
pub const ROLE_ENV: &str = "WARDEN_ROLE";
/// The file a hot standby's role is in: `standby`, then `primary <epoch>` once promoted.
pub const ROLE_FILE_ENV: &str = "WARDEN_ROLE_FILE";

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

/// A hot standby's cell to start, as `Arm` described it; its entry is already in the table.
pub(super) struct HotStart {
    pub(super) workload_id: String,
    pub(super) cell_id: String,
    cell: CellSpec,
    logs: LogSpec,
}

/// Why a slot's checkpoint could not be fetched ahead of a failover.
#[derive(Debug, thiserror::Error)]
enum PrefetchError {
    #[error("no control plane to fetch checkpoints from")]
    NoControlPlane,
    #[error(transparent)]
    Fetch(HttpError),
}

/// Why a slot kept on disk was not loaded.
#[derive(Debug, thiserror::Error)]
enum LoadSlotError {
    #[error("cannot read it")]
    Read(#[source] std::io::Error),
    #[error("cannot decode it")]
    Decode(#[source] serde_json::Error),
}

/// The standby slots armed on this host, by workload. Cheap to clone: all clones share them.
#[derive(Clone)]
pub(super) struct Standbys {
    context: AgentContext,
    slots: Arc<Mutex<BTreeMap<String, Armed>>>,
}

impl Standbys {
    /// The slots armed before a restart, loaded from the standby dir.
    pub(super) fn load(context: AgentContext) -> Standbys {
        let standbys = Standbys { context, slots: Arc::new(Mutex::new(BTreeMap::new())) };
        let Ok(entries) = std::fs::read_dir(standbys.context.standby_dir()) else { return standbys };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let armed = std::fs::read(&path)
                .map_err(LoadSlotError::Read)
                .and_then(|b| serde_json::from_slice::<Armed>(&b).map_err(LoadSlotError::Decode));
            match armed {
                Ok(armed) => {
                    standbys.slots().insert(armed.workload_id.clone(), armed);
                }
                Err(e) => tracing::warn!("ignoring standby slot {}: {}", path.display(), error_chain(&e)),
            }
        }
        standbys
    }

    fn slots(&self) -> MutexGuard<'_, BTreeMap<String, Armed>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The workloads this host keeps a standby of.
    pub(super) fn armed(&self) -> Vec<String> {
        self.slots().keys().cloned().collect()
    }

    pub(super) fn is_armed(&self, workload_id: &str) -> bool {
        self.slots().contains_key(workload_id)
    }

    /// `Arm`: keeps the slot (durably) and fetches its checkpoint ahead of a failover, in the
    /// background (a large checkpoint must not hold up the commands after it). A hot slot's
    /// cell is claimed in the table here and returned, for the caller to start
    /// ([`Standbys::start_hot`]).
    pub(super) fn arm(&self, command: CommandKind) -> Option<HotStart> {
        let CommandKind::Arm { workload_id, slot, promotion_delay_ms, checkpoint, hot, cell, logs } = command else {
            return None;
        };
        let hot_cell = hot.then(|| slot.hot_cell_id(&workload_id));
        let armed = Armed {
            workload_id: workload_id.clone(),
            standby_index: slot.standby_index,
            standby_count: slot.standby_count,
            promotion_delay_ms,
            checkpoint,
            hot_cell: hot_cell.clone(),
        };
        let dir = self.context.standby_dir();
        let path = dir.join(format!("{workload_id}.json"));
        let body = serde_json::to_vec_pretty(&armed).expect("serializes");
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| write_private(&path, &body)) {
            tracing::warn!(%workload_id, "cannot keep the standby slot on disk (an agent restart forgets it): {e}");
        }
        let wanted = armed.checkpoint.as_ref().and_then(|plan| plan.restore.as_deref()).and_then(checkpoint::blob_hex);
        let wanted = wanted.map(str::to_owned);
        self.slots().insert(workload_id.clone(), armed);
        tracing::info!(%workload_id, index = slot.standby_index, primary = %slot.primary, "standby armed");
        blobs::remove_cached(&dir, &workload_id, wanted.as_deref());
        // The entry is claimed here, under the lock, so an `Arm` sent twice (a reconciliation
        // racing the first) starts the hot cell once.
        let claimed = hot_cell.filter(|id| {
            let mut cells = self.context.cells();
            !cells.contains_key(id) && cells.insert(id.clone(), Entry::starting(workload_id.clone(), true, None)).is_none()
        });
        let hot_start = claimed.map(|cell_id| HotStart { workload_id: workload_id.clone(), cell_id, cell, logs });
        if let Some(hex) = wanted {
            self.prefetch(workload_id, hex, &dir);
        }
        hot_start
    }

    /// Fetches checkpoint `hex` of a slot into the standby dir, in the background, unless it is
    /// there already.
    fn prefetch(&self, workload_id: String, hex: String, dir: &std::path::Path) {
        let blob_path = blobs::cached_path(dir, &workload_id, &hex);
        if blob_path.exists() {
            return;
        }
        let standbys = self.clone();
        tokio::spawn(async move {
            let fetched = match standbys.context.control_plane() {
                Some((http, _)) => blobs::fetch(&http, &hex).await.map_err(PrefetchError::Fetch),
                None => Err(PrefetchError::NoControlPlane),
            };
            match fetched {
                Ok(blob) => {
                    // Disarmed, or re-armed with a newer checkpoint meanwhile: not wanted.
                    let still_wanted = standbys.slots().get(&workload_id).is_some_and(|armed| {
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
        let Some(armed) = self.slots().remove(workload_id) else { return };
        tracing::info!(%workload_id, "standby disarmed");
        // A hot standby that was not promoted goes with its slot, without a report.
        if let Some(cell_id) = armed.hot_cell {
            let still_standby = match self.context.cells().get_mut(&cell_id) {
                Some(entry) if entry.hot_standby => {
                    entry.remove_when_exited = true;
                    true
                }
                _ => false,
            };
            if still_standby {
                let backend = self.context.backend().clone();
                tokio::task::spawn_blocking(move || backend.signal(&cell_id, true));
            }
        }
        let dir = self.context.standby_dir();
        let _ = std::fs::remove_file(dir.join(format!("{workload_id}.json")));
        blobs::remove_cached(&dir, workload_id, None);
    }

    /// `Promote`: bids for the lease after this slot's turn. Winning needs nothing more here: the
    /// control plane sends the `Start`. A standby that could not fetch its checkpoint is not
    /// warm: it lets every standby that is take its turn first.
    pub(super) fn promote(&self, workload_id: String, cell_id: String, expected_epoch: u64) {
        let Some(armed) = self.slots().get(&workload_id).cloned() else {
            return tracing::info!(%workload_id, "promotion for a workload this host keeps no standby of");
        };
        let context = self.context.clone();
        tokio::spawn(async move {
            let staged = match armed.checkpoint.as_ref().and_then(|p| p.restore.as_deref()).and_then(checkpoint::blob_hex) {
                Some(hex) => blobs::cached_path(&context.standby_dir(), &workload_id, hex).exists(),
                None => true,
            };
            let place = if staged { armed.standby_index } else { armed.standby_count + armed.standby_index };
            let turn = armed.promotion_delay_ms.saturating_mul(place as u64);
            tokio::time::sleep(Duration::from_millis(turn)).await;
            let Some((http, host)) = context.control_plane() else { return };
            let hot_cell = armed.hot_cell.filter(|id| context.cells().get(id).is_some_and(|e| e.hot_standby && e.is_running()));
            let request = AcquireRequest { host, workload_id: workload_id.clone(), cell_id, expected_epoch, hot_cell };
            let result: Result<AcquireResponse, HttpError> =
                http.json("POST", "/v1/agents/acquire", Some(&request), ACQUIRE_TIMEOUT).await;
            match result {
                Ok(won) => tracing::info!(%workload_id, epoch = won.epoch, "won the lease: promoting this standby"),
                Err(e) => tracing::info!(%workload_id, "did not win the lease: {e}"),
            }
        });
    }

    /// Starts a hot standby's cell, fenced under epoch 0 (see the module docs), whose entry
    /// `arm` claimed. The started cell, for the caller to watch (then [`Standbys::keep_fence`]);
    /// `None` if it did not start (its entry is gone).
    pub(super) async fn start_hot(&self, hot: &HotStart) -> Option<StartedCell> {
        let HotStart { workload_id, cell_id, cell, logs } = hot;
        let context = &self.context;
        let mut config = match crate::cells::cell_config(workload_id, cell_id, cell, logs, context.logs_dir()) {
            Ok(config) => config,
            Err(error) => {
                context.cells().remove(cell_id);
                tracing::warn!(%cell_id, "hot standby did not start: {}", error_chain(&error));
                return None;
            }
        };
        let validity_ns = context.timing().holder_validity_ms().saturating_mul(1_000_000);
        config.fence = Some(Fence {
            epoch: STANDBY_EPOCH,
            initial_deadline_boottime_ns: warden_cell::boottime_ns().saturating_add(validity_ns),
        });
        config.env.insert(ROLE_ENV.into(), "standby".into());
        let role_file = context.backend().cell_dir(cell_id).join(ROLE_FILE);
        config.env.insert(ROLE_FILE_ENV.into(), role_file.display().to_string());
        config.env.remove(EPOCH_ENV);
        match context.spawn_cell(config).await {
            Ok(started) => {
                // Written after the start (the shim makes the dir): a cell that finds no file yet
                // is a standby, as WARDEN_ROLE says.
                if let Err(e) = write_role_file(&role_file, b"standby\n") {
                    tracing::warn!(%cell_id, "cannot write the role file: {e}");
                }
                if let Some(entry) = context.cells().get_mut(cell_id) {
                    entry.state = Tracked::Running(started.clone());
                }
                tracing::info!(%workload_id, %cell_id, "hot standby running");
                Some(started)
            }
            Err(error) => {
                context.cells().remove(cell_id);
                tracing::warn!(%cell_id, "hot standby did not start: {}", error_chain(&error));
                None
            }
        }
    }

    /// Extends a hot standby's epoch-0 fence every renewal interval while it is one. The write
    /// happens under the cells lock, so it can never land after a promotion's.
    pub(super) fn keep_fence(&self, cell_id: String) {
        let context = self.context.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis(context.timing().renew_every_ms.max(50));
            loop {
                tokio::time::sleep(every).await;
                let cells = context.cells();
                match cells.get(&cell_id) {
                    Some(entry) if entry.hot_standby && entry.is_running() => {
                        let validity_ns = context.timing().holder_validity_ms().saturating_mul(1_000_000);
                        let deadline = warden_cell::boottime_ns().saturating_add(validity_ns);
                        if let Err(e) = context.backend().renew_lease(&cell_id, STANDBY_EPOCH, deadline) {
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
    pub(super) async fn promote_hot(
        &self,
        workload_id: String,
        cell_id: String,
        epoch: u64,
        ttl_ms: Option<u64>,
        outage: OutagePolicy,
    ) {
        let context = &self.context;
        let Some(sent_at) = context.claim(LeaseClaim { workload_id: workload_id.clone(), epoch }).await else {
            let error = format!("lease epoch {epoch} could not be claimed");
            tracing::info!(%cell_id, "hot standby not promoted: {error}");
            self.disarm(&workload_id);
            context.report(workload_id, cell_id, ReportEvent::StartFailed { error }).await;
            return;
        };
        let held = HeldLease::answered(epoch, sent_at, &context.timing_for(ttl_ms));
        let started = {
            let mut cells = context.cells();
            let Some(entry) = cells.get_mut(&cell_id) else { return };
            let Tracked::Running(started) = entry.state.clone() else { return };
            entry.hot_standby = false;
            entry.lease = Some(held);
            entry.lease_ttl_ms = ttl_ms;
            entry.lease_outage = outage;
            // Under the lock: no standby extension can follow this write.
            if let Err(e) = context.backend().renew_lease(&cell_id, epoch, held.deadline_ms.saturating_mul(1_000_000)) {
                tracing::warn!(%cell_id, "cannot hand lease epoch {epoch} to the shim: {e}");
            }
            started
        };
        let cell_dir = context.backend().cell_dir(&cell_id);
        if let Err(e) = write_lease_terms(&cell_dir, ttl_ms, outage) {
            tracing::warn!(%cell_id, "cannot keep the lease terms in the cell dir (a restarted agent fences it by the cluster's): {e}");
        }
        if let Err(e) = write_role_file(&cell_dir.join(ROLE_FILE), format!("primary {epoch}\n").as_bytes()) {
            tracing::warn!(%cell_id, "cannot write the role file: {e}");
        }
        // The cell's process is the one this agent watches (its shim's pidfd is open), so the
        // pid is still the cell's.
        if let Err(e) = signal_process(started.pid, Signal::User1) {
            tracing::warn!(%cell_id, "cannot tell the cell it was promoted (SIGUSR1): {e}");
        }
        tracing::info!(%workload_id, %cell_id, epoch, "hot standby promoted in place");
        // The cell is no standby any more, so this only forgets the slot.
        self.disarm(&workload_id);
        let event = ReportEvent::Started { pid: started.pid, pid_start_time: started.pid_start_time };
        context.report(workload_id, cell_id, event).await;
    }
}
