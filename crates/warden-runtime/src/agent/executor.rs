//! The agent's hands: carries out the control plane's commands on this host's cells, re-adopts
//! the cells it finds after a restart, holds the leases of its fenced cells, and turns everything
//! that happens to a cell into a report in the durable queue. No HTTP here: the heartbeat loop
//! (`agent.rs`) sends what is queued and hands back the answers to lease claims and renewals,
//! so all of this runs and is tested against real cells without a control plane.
//!
//! # Leases
//!
//! A fenced cell may only run while this host holds its workload's lease. The executor keeps a
//! [`HeldLease`] per fenced cell: its deadline on this host's `CLOCK_BOOTTIME` (in ms), which is
//! also what `lease.json` in the cell dir tells its shim (in ns). The deadline only ever moves by
//! an *answered* claim: [`HeldLease::answered`] / [`HeldLease::extend`] from the time the claim
//! was *sent*, never from when the answer came (see `warden_core::lease` for why that keeps two
//! primaries apart). A claim the server refuses ends the cell at once (SIGKILL through its
//! shim); a claim that is never answered ends it at the deadline, by its shim's own timer, even if
//! this process is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify};
use warden_cell::{CellConfig, CellState, Fence, LeaseRecord, ProcessBackend, ShimExe, StartedCell};
use warden_core::lease::{HeldLease, LeaseTiming};
use warden_core::spec::{CellSpec, LogSpec};
use warden_core::CellExit;
use warden_store::queue::DurableQueue;

use super::http::{Http, HttpError};
use super::rollout::RolloutWorker;
use super::standby::Armed;
use crate::cells::{cell_config, cell_exit, lost_exit};
use crate::checkpoint;
use crate::proto::{CheckpointPlan, CommandKind, InventoryCell, InventoryState, LeaseClaim, Report, ReportEvent, StartLease};

/// A checkpoint's upload or download may take a while (up to `MAX_BLOB_BYTES`).
pub(super) const BLOB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// `<cell dir>/checkpoint.json` (0600): the cell's `CheckpointPlan`, so a restarted agent keeps
/// checkpointing the cells it re-adopts.
const CHECKPOINT_FILE: &str = "checkpoint.json";

/// `<cell dir>/lease_ttl_ms`: a workload's own lease ttl (`lost_after`), for re-adoption.
const LEASE_TTL_FILE: &str = "lease_ttl_ms";

/// The environment variable a fenced cell finds its lease epoch in.
pub const EPOCH_ENV: &str = "WARDEN_EPOCH";

/// The environment variable a cell finds its workload's spec (`spec_id`) in. It is also how a
/// restarted agent tells which version a re-adopted cell runs (service rollouts): it is read
/// back from the cell's `config.json`.
pub const SPEC_ID_ENV: &str = "WARDEN_SPEC_ID";

/// `CLOCK_BOOTTIME` in milliseconds: the agent's clock for leases (see `warden_cell::Fence`).
pub fn boottime_ms() -> u64 {
    warden_cell::boottime_ns() / 1_000_000
}

/// A lease claim for the heartbeat loop to send at once. The answer is `Some(sent_at_ms)`, the
/// `CLOCK_BOOTTIME` reading when the heartbeat that carried the claim was sent, if the control
/// plane renewed it; `None` if it refused (or the agent is shutting down).
pub struct ClaimRequest {
    pub claim: LeaseClaim,
    pub reply: oneshot::Sender<Option<u64>>,
}

/// A renewal to send with a heartbeat: the claim, and the cell it keeps alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renewal {
    pub cell_id: String,
    pub claim: LeaseClaim,
}

/// What [`Executor::readopt`] found under the cells dir.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readoption {
    /// Running cells watched again.
    pub running: usize,
    /// … of which fenced, whose leases are renewed again.
    pub fenced: usize,
    /// Cells that ended while the agent was down (reported unless a report was already queued).
    pub exited: usize,
    /// Cells whose shim died without recording an exit (reported as lost).
    pub lost: usize,
}

/// A report as queued: `Report` without its `seq`, which the queue assigns.
#[derive(Serialize, Deserialize)]
struct Queued {
    workload_id: String,
    cell_id: String,
    event: ReportEvent,
}

/// Up to `limit` queued reports, oldest first, numbered by the queue. A body that no longer
/// decodes is skipped (and acknowledged with the ones after it).
pub fn pending_reports(queue: &DurableQueue, limit: usize) -> Result<Vec<Report>, warden_store::queue::QueueError> {
    Ok(queue
        .pending(limit)?
        .into_iter()
        .filter_map(|(seq, body)| match serde_json::from_slice::<Queued>(&body) {
            Ok(q) => Some(Report { seq, workload_id: q.workload_id, cell_id: q.cell_id, event: q.event }),
            Err(e) => {
                tracing::warn!("report {seq} in the queue is unreadable and is skipped: {e}");
                None
            }
        })
        .collect())
}

#[derive(Clone, Debug)]
pub(super) enum Tracked {
    /// Being started by a `Start` command (possibly still claiming its lease).
    Starting,
    Running(StartedCell),
    Exited(CellExit),
}

#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub(super) workload_id: String,
    pub(super) state: Tracked,
    /// Fenced cells only, while the lease is held: renewed with every heartbeat.
    pub(super) lease: Option<HeldLease>,
    /// The control plane refused the lease while the cell was starting: kill it once it runs.
    pub(super) lease_lost: bool,
    /// A `Remove` came while the cell still ran: it was killed; remove it once it has exited,
    /// without a report (its end is already journaled).
    pub(super) remove_when_exited: bool,
    /// Checkpointed cells: wakes the checkpoint task to take one now.
    pub(super) checkpoint_now: Option<Arc<Notify>>,
    /// Being evicted (a drain) under this lease epoch: once it has ended, a final checkpoint and
    /// the lease given up before its exit is reported.
    pub(super) evicting: Option<u64>,
    /// A hot standby: fenced under epoch 0, which this agent extends on its own until a
    /// promotion gives the cell a lease (see `standby.rs`).
    pub(super) hot_standby: bool,
    /// The lease ttl of the cell's workload when it is not the cluster's (`lost_after`).
    pub(super) lease_ttl_ms: Option<u64>,
    /// The spec the cell runs (`WARDEN_SPEC_ID`), if its `Start` said: what a service rollout
    /// waits for.
    pub(super) spec_id: Option<String>,
}

impl Entry {
    /// A cell found already ended: nothing to renew, watch or checkpoint.
    fn exited(workload_id: String, exit: CellExit) -> Entry {
        Entry { state: Tracked::Exited(exit), ..Entry::starting(workload_id, false, None) }
    }

    /// A cell being started here (a hot standby's, or one with its own lease ttl).
    pub(super) fn starting(workload_id: String, hot_standby: bool, lease_ttl_ms: Option<u64>) -> Entry {
        Entry {
            workload_id,
            state: Tracked::Starting,
            lease: None,
            lease_lost: false,
            remove_when_exited: false,
            checkpoint_now: None,
            evicting: None,
            hot_standby,
            lease_ttl_ms,
            spec_id: None,
        }
    }
}

struct Inner {
    backend: Arc<ProcessBackend>,
    cells_dir: PathBuf,
    logs_dir: PathBuf,
    queue: Arc<DurableQueue>,
    timing: LeaseTiming,
    claims: mpsc::UnboundedSender<ClaimRequest>,
    cells: Mutex<BTreeMap<String, Entry>>,
    /// Notified whenever a report was queued, so it can be sent at once.
    pushed: Notify,
    /// The control plane's blob store, for checkpoints (set by the agent; absent in tests that
    /// run without a control plane, where checkpointed starts fail).
    blobs: std::sync::OnceLock<Arc<Http>>,
    /// This host's name, for requests that carry it.
    host: std::sync::OnceLock<String>,
    /// Warm-standby slots armed here, by workload (see `standby.rs`).
    standbys: Mutex<BTreeMap<String, Armed>>,
    /// The rollout workers running here, by rollout id: each follows the newest order sent on
    /// its channel (see `rollout.rs`).
    rollouts: Mutex<BTreeMap<String, RolloutWorker>>,
}

/// Carries out commands on this host's cells and queues what happens to them; see the module
/// docs. Cheap to clone (all clones share one state). Needs a tokio runtime: cells are watched
/// by tasks waiting on their shims' pidfds.
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

impl Executor {
    /// Cells live in `cells_dir`, their output in `<logs_dir>/<workload-id>/`, reports go to
    /// `queue`, lease claims for new fenced cells to `claims` (see [`ClaimRequest`]).
    pub fn new(
        cells_dir: PathBuf,
        logs_dir: PathBuf,
        shim: ShimExe,
        queue: Arc<DurableQueue>,
        timing: LeaseTiming,
        claims: mpsc::UnboundedSender<ClaimRequest>,
    ) -> Executor {
        let backend = Arc::new(ProcessBackend::new(cells_dir.clone(), shim));
        let executor = Executor {
            inner: Arc::new(Inner {
                backend,
                cells_dir,
                logs_dir,
                queue,
                timing,
                claims,
                cells: Mutex::new(BTreeMap::new()),
                pushed: Notify::new(),
                blobs: std::sync::OnceLock::new(),
                host: std::sync::OnceLock::new(),
                standbys: Mutex::new(BTreeMap::new()),
                rollouts: Mutex::new(BTreeMap::new()),
            }),
        };
        executor.load_standbys();
        executor
    }

    /// Where checkpoints are stored and fetched and standbys bid for leases: the control plane,
    /// and this host's name there. Set once.
    pub fn set_control_plane(&self, http: Arc<Http>, host: &str) {
        let _ = self.inner.blobs.set(http);
        let _ = self.inner.host.set(host.to_string());
    }

    pub(super) fn control_plane(&self) -> Option<(Arc<Http>, String)> {
        Some((self.inner.blobs.get()?.clone(), self.inner.host.get()?.clone()))
    }

    pub(super) fn cells_dir(&self) -> &Path {
        &self.inner.cells_dir
    }

    pub(super) fn logs_dir(&self) -> &Path {
        &self.inner.logs_dir
    }

    pub(super) fn standbys(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Armed>> {
        self.inner.standbys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The workloads this host keeps a standby of.
    pub fn armed(&self) -> Vec<String> {
        self.standbys().keys().cloned().collect()
    }

    pub(super) fn rollout_workers(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RolloutWorker>> {
        self.inner.rollouts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The spec (`spec_id`) workload `workload_id`'s running cell here runs: `None` if no cell of
    /// it runs here (cells still starting or already ended do not count), if its `Start` named
    /// no spec, or if several run and do not agree.
    pub fn running_spec(&self, workload_id: &str) -> Option<String> {
        let specs = self.running_specs(workload_id);
        let first = specs.first()?.clone()?;
        specs.iter().all(|spec| spec.as_deref() == Some(first.as_str())).then_some(first)
    }

    /// The spec of every running cell of `workload_id` here (normally one; two while a
    /// replacement overlaps the cell it replaces), `None` for a cell whose `Start` named none.
    pub fn running_specs(&self, workload_id: &str) -> Vec<Option<String>> {
        self.cells()
            .values()
            .filter(|entry| entry.workload_id == workload_id && matches!(entry.state, Tracked::Running(_)))
            .map(|entry| entry.spec_id.clone())
            .collect()
    }

    pub fn backend(&self) -> &Arc<ProcessBackend> {
        &self.inner.backend
    }

    pub fn queue(&self) -> &Arc<DurableQueue> {
        &self.inner.queue
    }

    pub fn timing(&self) -> &LeaseTiming {
        &self.inner.timing
    }

    /// The lease timing of a cell whose workload has its own ttl (`lost_after`), if it has.
    pub(super) fn timing_for(&self, ttl_ms: Option<u64>) -> LeaseTiming {
        let mut timing = self.inner.timing;
        if let Some(ttl) = ttl_ms {
            timing.ttl_ms = timing.ttl_ms.max(ttl);
        }
        timing
    }

    /// Resolves once a report was queued since the last call (a permit is kept if nobody waits).
    pub async fn report_pushed(&self) {
        self.inner.pushed.notified().await
    }

    pub(super) fn cells(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.inner.cells.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lease this host holds for a cell, if it is fenced and the lease was not lost.
    pub fn held_lease(&self, cell_id: &str) -> Option<HeldLease> {
        self.cells().get(cell_id).and_then(|entry| entry.lease)
    }

    /// Re-adopts every cell under the cells dir, once at start-up, before any command: running
    /// cells are watched again (and a fenced one's lease, as its `lease.json` has it, renewed
    /// again), cells that ended while nobody watched are reported — unless a report of their
    /// exit is still in the queue — and dirs of starts that never happened are set aside by the
    /// backend. Never starts anything.
    pub async fn readopt(&self) -> std::io::Result<Readoption> {
        let backend = self.inner.backend.clone();
        let cells_dir = self.inner.cells_dir.clone();
        let found = tokio::task::spawn_blocking(move || scan(&backend, &cells_dir))
            .await
            .map_err(|e| std::io::Error::other(format!("re-adoption task failed: {e}")))??;
        let queue = self.inner.queue.clone();
        let pending = tokio::task::spawn_blocking(move || pending_reports(&queue, usize::MAX))
            .await
            .map_err(|e| std::io::Error::other(format!("queue task failed: {e}")))?
            .map_err(std::io::Error::other)?;
        let already_reported: BTreeSet<String> = pending
            .into_iter()
            .filter(|report| matches!(report.event, ReportEvent::Exited { .. }))
            .map(|report| report.cell_id)
            .collect();

        let mut summary = Readoption::default();
        for Found { cell_id, workload_id, state, lease, spec_id } in found {
            let exit = match state {
                CellState::NotStarted => continue,
                CellState::Running(started) => {
                    summary.running += 1;
                    summary.fenced += usize::from(lease.is_some());
                    self.track_running(workload_id, cell_id, started, lease, spec_id);
                    continue;
                }
                CellState::Exited(status) => {
                    summary.exited += 1;
                    cell_exit(&status)
                }
                CellState::Lost { reason } => {
                    summary.lost += 1;
                    lost_exit(&reason)
                }
            };
            self.cells().insert(cell_id.clone(), Entry::exited(workload_id.clone(), exit.clone()));
            if !already_reported.contains(&cell_id) {
                self.report(workload_id, cell_id, ReportEvent::Exited { exit }).await;
            }
        }
        Ok(summary)
    }

    /// Every cell this host has and what is known of it, for the control plane to reconcile
    /// with. Cells still starting are left out: their `Started` (or `StartFailed`) report follows.
    pub fn inventory(&self) -> Vec<InventoryCell> {
        self.cells()
            .iter()
            .filter_map(|(cell_id, entry)| {
                let state = match &entry.state {
                    Tracked::Starting => return None,
                    Tracked::Running(started) => {
                        InventoryState::Running { pid: started.pid, pid_start_time: started.pid_start_time }
                    }
                    Tracked::Exited(exit) => InventoryState::Exited { exit: exit.clone() },
                };
                Some(InventoryCell { workload_id: entry.workload_id.clone(), cell_id: cell_id.clone(), state })
            })
            .collect()
    }

    /// The leases to renew with the next heartbeat: one per fenced cell that runs (or is being
    /// started) and whose lease was not lost.
    pub fn renewals(&self) -> Vec<Renewal> {
        self.cells()
            .iter()
            .filter(|(_, entry)| !matches!(entry.state, Tracked::Exited(_)))
            .filter_map(|(cell_id, entry)| {
                let held = entry.lease?;
                Some(Renewal {
                    cell_id: cell_id.clone(),
                    claim: LeaseClaim { workload_id: entry.workload_id.clone(), epoch: held.epoch },
                })
            })
            .collect()
    }

    /// Applies a heartbeat's answers to its `renewals` (same order), the heartbeat having been
    /// sent at `sent_at_ms` on `CLOCK_BOOTTIME`: a renewed lease's deadline is extended and
    /// written to the cell's `lease.json`; a refused one is dropped and its cell killed.
    pub async fn apply_renewals(&self, renewals: &[Renewal], answers: &[bool], sent_at_ms: u64) {
        let mut extend = Vec::new();
        let mut kill = Vec::new();
        {
            let mut cells = self.cells();
            for (renewal, &renewed) in renewals.iter().zip(answers) {
                let Some(entry) = cells.get_mut(&renewal.cell_id) else { continue };
                let timing = self.timing_for(entry.lease_ttl_ms);
                let Some(held) = entry.lease.as_mut().filter(|held| held.epoch == renewal.claim.epoch) else { continue };
                if renewed {
                    held.extend(sent_at_ms, &timing);
                    extend.push((renewal.cell_id.clone(), *held));
                } else {
                    tracing::warn!(
                        cell_id = %renewal.cell_id,
                        "the control plane refused lease epoch {} of {}: killing the cell",
                        held.epoch,
                        renewal.claim.workload_id
                    );
                    entry.lease = None;
                    match entry.state {
                        Tracked::Running(_) => kill.push(renewal.cell_id.clone()),
                        Tracked::Starting => entry.lease_lost = true,
                        Tracked::Exited(_) => {}
                    }
                }
            }
        }
        if extend.is_empty() && kill.is_empty() {
            return;
        }
        let backend = self.inner.backend.clone();
        let done = tokio::task::spawn_blocking(move || {
            for (cell_id, held) in extend {
                match backend.renew_lease(&cell_id, held.epoch, held.deadline_ms.saturating_mul(1_000_000)) {
                    // Not created yet (the start is writing its first lease) or already removed.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(%cell_id, "cannot renew the lease file: {e}"),
                    Ok(()) => {}
                }
            }
            for cell_id in kill {
                if let Err(e) = backend.signal(&cell_id, true) {
                    tracing::warn!(%cell_id, "cannot kill the cell that lost its lease: {e}");
                }
            }
        });
        let _ = done.await;
    }

    /// Carries out one command. Commands are idempotent: a `Start` of a cell that exists, a
    /// `Signal` to a cell that ended, a `Remove` of a cell that is gone change nothing.
    pub async fn execute(&self, command: CommandKind) {
        match command {
            CommandKind::Start { workload_id, cell_id, cell, logs, lease, checkpoint, spec_id } => {
                self.start(workload_id, cell_id, cell, logs, lease, checkpoint, spec_id).await
            }
            CommandKind::Checkpoint { cell_id } => {
                let now = self.cells().get(&cell_id).and_then(|entry| entry.checkpoint_now.clone());
                match now {
                    Some(now) => now.notify_one(),
                    None => tracing::info!(%cell_id, "checkpoint of a cell that is not a running checkpointed cell here"),
                }
            }
            CommandKind::Signal { cell_id, kill } => {
                let backend = self.inner.backend.clone();
                let id = cell_id.clone();
                match tokio::task::spawn_blocking(move || backend.signal(&id, kill)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(warden_cell::SignalError::NoSuchCell(_))) => {
                        tracing::debug!(%cell_id, "signal to a cell this host does not have")
                    }
                    Ok(Err(e)) => tracing::warn!(%cell_id, "signal failed: {e}"),
                    Err(e) => tracing::warn!(%cell_id, "signal task failed: {e}"),
                }
            }
            CommandKind::Remove { cell_id } => self.remove(cell_id).await,
            arm @ CommandKind::Arm { .. } => self.arm(arm),
            CommandKind::Disarm { workload_id } => self.disarm(&workload_id),
            CommandKind::Logs { request_id, workload_id, max_files, follow } => {
                self.send_logs(request_id, workload_id, max_files, follow)
            }
            CommandKind::Evict { workload_id, cell_id, epoch, grace_ms } => {
                self.evict(workload_id, cell_id, epoch, grace_ms).await
            }
            CommandKind::Promote { workload_id, cell_id, expected_epoch } => self.promote(workload_id, cell_id, expected_epoch),
            CommandKind::Rollout { order } => self.follow_rollout(order),
        }
    }

    async fn start(
        &self,
        workload_id: String,
        cell_id: String,
        cell: CellSpec,
        logs: LogSpec,
        lease: Option<StartLease>,
        checkpoint: Option<CheckpointPlan>,
        spec_id: Option<String>,
    ) {
        let hot = self.cells().get(&cell_id).map(|entry| entry.hot_standby && matches!(entry.state, Tracked::Running(_)));
        match (hot, lease) {
            (Some(true), Some(StartLease { epoch, ttl_ms })) => {
                // The hot cell was started by `Arm`, without the spec in its environment: known
                // from here on, but only in memory (a restarted agent does not know it).
                if let Some(entry) = self.cells().get_mut(&cell_id) {
                    entry.spec_id = spec_id;
                }
                return self.promote_hot(workload_id, cell_id, epoch, ttl_ms).await;
            }
            (Some(_), _) => {
                tracing::debug!(%cell_id, "start of a cell this host already has: nothing to do");
                return;
            }
            (None, _) => {}
        }
        let backend = self.inner.backend.clone();
        let id = cell_id.clone();
        let state = match tokio::task::spawn_blocking(move || backend.inspect(&id)).await {
            Ok(state) => state,
            Err(e) => CellState::Lost { reason: format!("inspect task failed: {e}") },
        };
        if !matches!(state, CellState::NotStarted) {
            // Not one this agent knows of (they were all re-adopted): take it on as it is.
            tracing::warn!(%cell_id, "start of a cell that already exists on disk: adopting it instead");
            self.adopt(workload_id, cell_id, state).await;
            return;
        }
        let ttl = lease.and_then(|l| l.ttl_ms);
        let entry = Entry { spec_id: spec_id.clone(), ..Entry::starting(workload_id.clone(), false, ttl) };
        self.cells().insert(cell_id.clone(), entry);

        let mut config = cell_config(&workload_id, &cell_id, &cell, &logs, &self.inner.logs_dir);
        if let Some(spec_id) = spec_id {
            config.env.insert(SPEC_ID_ENV.to_string(), spec_id);
        }
        if let Some(StartLease { epoch, ttl_ms }) = lease {
            // The command may be old news: claim the lease now, and count the fence from the
            // claim's send time, not from when the control plane granted it.
            let Some(sent_at) = self.claim(LeaseClaim { workload_id: workload_id.clone(), epoch }).await else {
                self.cells().remove(&cell_id);
                let error = format!("lease epoch {epoch} could not be claimed");
                tracing::info!(%cell_id, "not started: {error}");
                self.report(workload_id, cell_id, ReportEvent::StartFailed { error }).await;
                return;
            };
            let held = HeldLease::answered(epoch, sent_at, &self.timing_for(ttl_ms));
            if let Some(entry) = self.cells().get_mut(&cell_id) {
                entry.lease = Some(held);
            }
            config.fence = Some(Fence { epoch, initial_deadline_boottime_ns: held.deadline_ms.saturating_mul(1_000_000) });
            config.env.insert(EPOCH_ENV.to_string(), epoch.to_string());
        }
        // With the lease (if any) won, and before the cell exists: its state, as last checkpointed.
        if let Some(plan) = &checkpoint {
            if let Err(error) = self.restore(&workload_id, plan).await {
                self.cells().remove(&cell_id);
                let error = format!("checkpoint restore failed: {error}");
                tracing::warn!(%cell_id, "not started: {error}");
                self.report(workload_id, cell_id, ReportEvent::StartFailed { error }).await;
                return;
            }
        }
        let started = self.spawn_cell(config).await;
        match started {
            Ok(started) => {
                let lease_lost = {
                    let mut cells = self.cells();
                    match cells.get_mut(&cell_id) {
                        Some(entry) => {
                            entry.state = Tracked::Running(started.clone());
                            entry.lease_lost
                        }
                        None => false,
                    }
                };
                let event = ReportEvent::Started { pid: started.pid, pid_start_time: started.pid_start_time };
                self.report(workload_id.clone(), cell_id.clone(), event).await;
                // A standby that was promoted: it is the primary now, its staging is spent.
                if self.standbys().contains_key(&workload_id) {
                    self.disarm(&workload_id);
                }
                if lease_lost {
                    let backend = self.inner.backend.clone();
                    let id = cell_id.clone();
                    let _ = tokio::task::spawn_blocking(move || backend.signal(&id, true)).await;
                }
                self.watch(cell_id.clone(), started);
                if let Some(ttl) = ttl {
                    if let Err(e) = std::fs::write(self.inner.backend.cell_dir(&cell_id).join(LEASE_TTL_FILE), ttl.to_string()) {
                        tracing::warn!(%cell_id, "cannot keep the lease ttl in the cell dir (a restarted agent fences it sooner): {e}");
                    }
                }
                if let Some(plan) = checkpoint {
                    if let Err(e) = write_checkpoint_plan(&self.inner.backend.cell_dir(&cell_id), &plan) {
                        tracing::warn!(%cell_id, "cannot keep the checkpoint plan in the cell dir (a restarted agent will not checkpoint this cell): {e}");
                    }
                    self.checkpointer(workload_id, cell_id, plan);
                }
            }
            Err(error) => {
                self.cells().remove(&cell_id);
                tracing::info!(%cell_id, "start failed: {error}");
                self.report(workload_id, cell_id, ReportEvent::StartFailed { error }).await;
            }
        }
    }

    /// Fills `state_dir` for a start: the checkpoint `plan.restore` names (fetched, checked
    /// against its hash, decrypted, unpacked into the emptied dir), or, with none, the dir as
    /// it is (created if missing). Any failure is the start's failure: never a silently empty state.
    async fn restore(&self, workload_id: &str, plan: &CheckpointPlan) -> Result<(), String> {
        let key = checkpoint::parse_key(&plan.key_hex)?;
        let dir = PathBuf::from(&plan.state_dir);
        let Some(uri) = &plan.restore else {
            return std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()));
        };
        let hex = checkpoint::blob_hex(uri).ok_or_else(|| format!("{uri:?} is not a blob this agent can fetch"))?.to_string();
        if let Some(blob) = self.cached_blob(workload_id, &hex) {
            let (workload_id, dir, hex) = (workload_id.to_string(), dir.clone(), hex.clone());
            let restored = tokio::task::spawn_blocking(move || checkpoint::restore(&dir, &key, &workload_id, &hex, &blob))
                .await
                .map_err(|e| format!("restore task failed: {e}"))?;
            match restored {
                Ok(()) => return Ok(()),
                Err(e) => tracing::warn!("the standby's copy of checkpoint {uri} is unusable ({e}); fetching it again"),
            }
        }
        let http = self.inner.blobs.get().ok_or("no control plane to fetch checkpoints from")?;
        let path = format!("/v1/blobs/{hex}");
        let mut attempt = 0;
        let blob = loop {
            attempt += 1;
            match http.call("GET", &path, b"", BLOB_TIMEOUT).await {
                Ok((_, blob)) => break blob,
                Err(HttpError::Transport(e)) if attempt < 3 => {
                    tracing::info!("fetching checkpoint {uri}: {e}; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(e) => return Err(format!("cannot fetch checkpoint {uri}: {e}")),
            }
        };
        let workload_id = workload_id.to_string();
        tokio::task::spawn_blocking(move || checkpoint::restore(&dir, &key, &workload_id, &hex, &blob))
            .await
            .map_err(|e| format!("restore task failed: {e}"))?
    }

    /// Takes a checkpoint of a running cell every `interval_ms`, and whenever a `Checkpoint`
    /// command asks, until the cell is no longer running here.
    fn checkpointer(&self, workload_id: String, cell_id: String, plan: CheckpointPlan) {
        let now = Arc::new(Notify::new());
        match self.cells().get_mut(&cell_id) {
            Some(entry) => entry.checkpoint_now = Some(now.clone()),
            None => return,
        }
        let executor = self.clone();
        tokio::spawn(async move {
            let key = match checkpoint::parse_key(&plan.key_hex) {
                Ok(key) => key,
                Err(e) => return tracing::warn!(%cell_id, "no checkpoints: {e}"),
            };
            let interval = std::time::Duration::from_millis(plan.interval_ms.max(1_000));
            loop {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = now.notified() => {}
                }
                let running = matches!(executor.cells().get(&cell_id).map(|e| &e.state), Some(Tracked::Running(_)));
                if !running {
                    return;
                }
                if let Err(e) = executor.take_checkpoint(&workload_id, &cell_id, &plan, &key).await {
                    tracing::warn!(%cell_id, "checkpoint failed: {e}");
                }
            }
        });
    }

    /// tar + encrypt `state_dir`, upload it as `/v1/blobs/<sha256>`, and report it (durably:
    /// through the report queue, so the control plane journals it even across restarts).
    async fn take_checkpoint(
        &self,
        workload_id: &str,
        cell_id: &str,
        plan: &CheckpointPlan,
        key: &[u8; 32],
    ) -> Result<String, String> {
        let http = self.inner.blobs.get().ok_or("no control plane to store checkpoints in")?.clone();
        let (dir, key_copy, id) = (PathBuf::from(&plan.state_dir), *key, workload_id.to_string());
        let (blob, hex) = tokio::task::spawn_blocking(move || checkpoint::take(&dir, &key_copy, &id))
            .await
            .map_err(|e| format!("checkpoint task failed: {e}"))?
            .map_err(|e| format!("cannot snapshot {}: {e}", plan.state_dir))?;
        http.call("PUT", &format!("/v1/blobs/{hex}"), &blob, BLOB_TIMEOUT)
            .await
            .map_err(|e| format!("cannot upload the checkpoint: {e}"))?;
        let state_uri = checkpoint::state_uri(&hex);
        let event = ReportEvent::Checkpointed { state_uri: state_uri.clone(), size_bytes: blob.len() as u64 };
        tracing::debug!(%cell_id, "checkpoint {hex} ({} bytes)", blob.len());
        self.report(workload_id.to_string(), cell_id.to_string(), event).await;
        Ok(state_uri)
    }

    pub(super) async fn spawn_cell(&self, config: CellConfig) -> Result<StartedCell, String> {
        if let Some(dir) = config.log_path.parent() {
            let _ = tokio::fs::create_dir_all(dir).await;
        }
        let backend = self.inner.backend.clone();
        match tokio::task::spawn_blocking(move || backend.start(&config)).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(e) => Err(format!("start task failed: {e}")),
        }
    }

    /// Sends a claim to the heartbeat loop and waits for its answer: the send time if renewed.
    pub(super) async fn claim(&self, claim: LeaseClaim) -> Option<u64> {
        let (reply, answer) = oneshot::channel();
        self.inner.claims.send(ClaimRequest { claim, reply }).ok()?;
        answer.await.ok().flatten()
    }

    /// Tracks a running cell found on disk: watches it, renews its lease (as `lease.json` left
    /// it), and resumes its checkpoints. `spec_id` is its `WARDEN_SPEC_ID`, from `config.json`.
    fn track_running(
        &self,
        workload_id: String,
        cell_id: String,
        started: StartedCell,
        lease: Option<LeaseRecord>,
        spec_id: Option<String>,
    ) {
        let hot_standby = lease.is_some_and(|record| record.epoch == warden_cell::STANDBY_EPOCH);
        let lease = lease
            .filter(|_| !hot_standby)
            .map(|record| HeldLease { epoch: record.epoch, deadline_ms: record.deadline_boottime_ns / 1_000_000 });
        let entry = Entry {
            workload_id,
            state: Tracked::Running(started.clone()),
            lease,
            lease_lost: false,
            remove_when_exited: false,
            checkpoint_now: None,
            evicting: None,
            hot_standby,
            lease_ttl_ms: std::fs::read_to_string(self.inner.backend.cell_dir(&cell_id).join(LEASE_TTL_FILE))
                .ok()
                .and_then(|t| t.trim().parse().ok()),
            spec_id,
        };
        self.cells().insert(cell_id.clone(), entry);
        if hot_standby {
            self.keep_standby_fence(cell_id.clone());
        }
        self.watch(cell_id.clone(), started);
        if let Some(plan) = read_checkpoint_plan(&self.inner.backend.cell_dir(&cell_id)) {
            self.checkpointer(workload_id_of(self, &cell_id), cell_id, plan);
        }
    }

    /// Takes on a cell found on disk that this agent was not tracking.
    async fn adopt(&self, workload_id: String, cell_id: String, state: CellState) {
        let exit = match state {
            CellState::NotStarted => return,
            CellState::Running(started) => {
                let cell_dir = self.inner.backend.cell_dir(&cell_id);
                let lease = read_lease(&cell_dir);
                let spec_id = read_config(&cell_dir).and_then(|config| spec_id_of(&config));
                self.track_running(workload_id, cell_id, started, lease, spec_id);
                return;
            }
            CellState::Exited(status) => cell_exit(&status),
            CellState::Lost { reason } => lost_exit(&reason),
        };
        self.cells().insert(cell_id.clone(), Entry::exited(workload_id.clone(), exit.clone()));
        self.report(workload_id, cell_id, ReportEvent::Exited { exit }).await;
    }

    async fn remove(&self, cell_id: String) {
        let still_running = {
            let mut cells = self.cells();
            match cells.get_mut(&cell_id) {
                Some(entry) if matches!(entry.state, Tracked::Running(_) | Tracked::Starting) => {
                    entry.remove_when_exited = true;
                    entry.lease = None;
                    true
                }
                _ => {
                    cells.remove(&cell_id);
                    false
                }
            }
        };
        let backend = self.inner.backend.clone();
        let id = cell_id.clone();
        let result = tokio::task::spawn_blocking(move || {
            if still_running {
                // Its end is journaled, yet it runs: it must not outlive that decision.
                tracing::warn!(cell_id = %id, "remove of a cell that still runs: killing it first");
                backend.signal(&id, true).map_err(|e| std::io::Error::other(e.to_string()))
            } else {
                backend.remove(&id)
            }
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(%cell_id, "remove failed: {e}"),
            Err(e) => tracing::warn!(%cell_id, "remove task failed: {e}"),
        }
    }

    /// Waits for a cell's shim to exit (its pidfd turns readable), then records and reports how
    /// the cell ended.
    pub(super) fn watch(&self, cell_id: String, started: StartedCell) {
        let executor = self.clone();
        tokio::spawn(async move {
            let exit = crate::cells::wait_exit(executor.inner.backend.clone(), &cell_id, started).await;
            executor.ended(cell_id, exit).await;
        });
    }

    /// Sends a workload's output up for a `warden logs` (see `CommandKind::Logs`), in the
    /// background.
    fn send_logs(&self, request_id: String, workload_id: String, max_files: u32, follow: bool) {
        let Some((http, _)) = self.control_plane() else { return };
        let (tx, mut rx) = mpsc::channel::<crate::logs::Chunk>(4);
        let dir = self.inner.logs_dir.join(&workload_id);
        let executor = self.clone();
        let running = move || {
            executor
                .cells()
                .values()
                .any(|e| e.workload_id == workload_id && matches!(e.state, Tracked::Running(_) | Tracked::Starting))
        };
        tokio::spawn(crate::logs::tail(dir, max_files, follow, move || !running(), tx));
        tokio::spawn(async move {
            let path = format!("/v1/agents/logs/{request_id}");
            while let Some(chunk) = rx.recv().await {
                let bytes = match chunk {
                    Ok(bytes) => bytes,
                    Err(e) => axum::body::Bytes::from(format!("\n[warden agent: cannot read the log: {e}]\n")),
                };
                // A refusal (410: nobody reads any more) or a broken link ends it; dropping
                // `rx` stops the tail.
                if http.call("POST", &path, &bytes, std::time::Duration::from_secs(10)).await.is_err() {
                    return;
                }
            }
            let _ = http.call("POST", &format!("{path}?done=true"), b"", std::time::Duration::from_secs(10)).await;
        });
    }

    /// Stops a primary for a drain: SIGTERM, SIGKILL after `grace_ms`; `ended` gives the lease
    /// up once it is gone.
    async fn evict(&self, workload_id: String, cell_id: String, epoch: u64, grace_ms: u64) {
        {
            let mut cells = self.cells();
            match cells.get_mut(&cell_id) {
                Some(entry) if matches!(entry.state, Tracked::Running(_)) && entry.lease.is_some_and(|l| l.epoch == epoch) => {
                    entry.evicting = Some(epoch);
                }
                _ => return tracing::info!(%cell_id, "evict of a cell that is not a running primary here"),
            }
        }
        tracing::info!(%workload_id, %cell_id, "evicting (the host is drained)");
        let signal = |kill: bool| {
            let (backend, id) = (self.inner.backend.clone(), cell_id.clone());
            tokio::task::spawn_blocking(move || backend.signal(&id, kill))
        };
        let _ = signal(false).await;
        let executor = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(grace_ms)).await;
            let running = matches!(executor.cells().get(&cell_id).map(|e| &e.state), Some(Tracked::Running(_)));
            if running {
                let (backend, id) = (executor.inner.backend.clone(), cell_id.clone());
                let _ = tokio::task::spawn_blocking(move || backend.signal(&id, true)).await;
            }
        });
    }

    /// After an evicted primary ended: its final checkpoint, then the `LeaseRevocation`, so the
    /// control plane hands the lease on at once and the next primary starts from that state.
    async fn revoke(&self, workload_id: &str, cell_id: &str, epoch: u64) {
        let mut state_uri = None;
        if let Some(plan) = read_checkpoint_plan(&self.inner.backend.cell_dir(cell_id)) {
            match checkpoint::parse_key(&plan.key_hex) {
                Ok(key) => match self.take_checkpoint(workload_id, cell_id, &plan, &key).await {
                    Ok(uri) => state_uri = Some(uri),
                    Err(e) => tracing::warn!(%cell_id, "no final checkpoint: {e}"),
                },
                Err(e) => tracing::warn!(%cell_id, "no final checkpoint: {e}"),
            }
        }
        let Some((http, host)) = self.control_plane() else { return };
        let request = crate::proto::RevokeRequest {
            host,
            workload_id: workload_id.to_string(),
            cell_id: cell_id.to_string(),
            epoch,
            state_uri,
        };
        let body = serde_json::to_vec(&request).expect("serializes");
        for attempt in 1..=10 {
            match http.call("POST", "/v1/agents/revoke", &body, std::time::Duration::from_secs(5)).await {
                Ok(_) => return tracing::info!(%cell_id, "lease epoch {epoch} given up"),
                // Refused: the lease moved on already (it expired, or the host was declared down).
                Err(HttpError::Status { code, message }) if code < 500 => {
                    return tracing::info!(%cell_id, "lease epoch {epoch} not given up: {message}")
                }
                Err(e) => {
                    tracing::info!(%cell_id, "giving lease epoch {epoch} up (attempt {attempt}): {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                }
            }
        }
    }

    async fn ended(&self, cell_id: String, exit: CellExit) {
        let evicting = self.cells().get(&cell_id).and_then(|entry| entry.evicting);
        if let Some(epoch) = evicting {
            let workload_id = workload_id_of(self, &cell_id);
            self.revoke(&workload_id, &cell_id, epoch).await;
        }
        let (workload_id, remove) = {
            let mut cells = self.cells();
            let Some(entry) = cells.get_mut(&cell_id) else { return };
            entry.lease = None;
            if entry.remove_when_exited {
                let entry = cells.remove(&cell_id).expect("present");
                (entry.workload_id, true)
            } else {
                entry.state = Tracked::Exited(exit.clone());
                (entry.workload_id.clone(), false)
            }
        };
        if remove {
            let backend = self.inner.backend.clone();
            let id = cell_id.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || backend.remove(&id)).await {
                tracing::warn!(%cell_id, "remove failed: {e}");
            }
            return;
        }
        tracing::info!(%cell_id, "cell ended: {}", exit.reason);
        self.report(workload_id, cell_id, ReportEvent::Exited { exit }).await;
    }

    /// Queues a report durably, then wakes the heartbeat loop to send it. A queue that cannot
    /// be written is fatal: the fact would be lost, and a restart re-derives it from the cells.
    pub(super) async fn report(&self, workload_id: String, cell_id: String, event: ReportEvent) {
        let body = serde_json::to_vec(&Queued { workload_id, cell_id: cell_id.clone(), event }).expect("report serializes");
        let queue = self.inner.queue.clone();
        match tokio::task::spawn_blocking(move || queue.push(&body)).await {
            Ok(Ok(_seq)) => self.inner.pushed.notify_one(),
            Ok(Err(e)) => super::fatal(&format!("cannot queue a report about cell {cell_id}: {e}")),
            Err(e) => super::fatal(&format!("the task queueing a report about cell {cell_id} failed: {e}")),
        }
    }
}

/// One cell dir as found at start-up.
struct Found {
    cell_id: String,
    workload_id: String,
    state: CellState,
    /// `lease.json`, for a running fenced cell.
    lease: Option<LeaseRecord>,
    /// `WARDEN_SPEC_ID` in its `config.json`.
    spec_id: Option<String>,
}

/// Inspects every cell dir (blocking: `inspect` may wait for a shim that is still starting).
fn scan(backend: &ProcessBackend, cells_dir: &Path) -> std::io::Result<Vec<Found>> {
    let entries = match std::fs::read_dir(cells_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        // `.oci-state` is the runtime's; `<id>.abandoned-<n>` are starts that never happened.
        if name.starts_with('.') || name.contains(".abandoned-") {
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names
        .into_iter()
        .map(|cell_id| {
            let dir = backend.cell_dir(&cell_id);
            let config = read_config(&dir);
            // Cell ids are `<workload-id>.<n>`: the fallback when config.json is unreadable.
            let workload_id = config.as_ref().map(|c| c.workload_id.clone()).unwrap_or_else(|| {
                cell_id.rsplit_once('.').map(|(workload, _)| workload.to_string()).unwrap_or_else(|| cell_id.clone())
            });
            let state = backend.inspect(&cell_id);
            let fenced = config.as_ref().is_some_and(|c| c.fence.is_some());
            let lease = match &state {
                CellState::Running(_) if fenced => {
                    let lease = read_lease(&dir);
                    if lease.is_none() {
                        tracing::warn!(%cell_id, "fenced cell without a readable lease.json: its shim ends it");
                    }
                    lease
                }
                _ => None,
            };
            let spec_id = config.as_ref().and_then(spec_id_of);
            Found { cell_id, workload_id, state, lease, spec_id }
        })
        .collect())
}

fn workload_id_of(executor: &Executor, cell_id: &str) -> String {
    executor.cells().get(cell_id).map(|entry| entry.workload_id.clone()).unwrap_or_default()
}

fn write_checkpoint_plan(cell_dir: &Path, plan: &CheckpointPlan) -> std::io::Result<()> {
    write_private(&cell_dir.join(CHECKPOINT_FILE), &serde_json::to_vec(plan).expect("serializes"))
}

/// Writes a file only this user can read (it may hold a key), replacing it atomically. Not
/// fsynced: like the cells' own records it must survive the agent, not the host (see
/// ARCHITECTURE, "Durability lives in the journal").
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

fn read_checkpoint_plan(cell_dir: &Path) -> Option<CheckpointPlan> {
    let bytes = std::fs::read(cell_dir.join(CHECKPOINT_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn read_config(cell_dir: &Path) -> Option<CellConfig> {
    let bytes = std::fs::read(cell_dir.join("config.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The spec a cell was started with, as its environment says.
fn spec_id_of(config: &CellConfig) -> Option<String> {
    config.env.get(SPEC_ID_ENV).cloned()
}

fn read_lease(cell_dir: &Path) -> Option<LeaseRecord> {
    let bytes = std::fs::read(cell_dir.join("lease.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}
