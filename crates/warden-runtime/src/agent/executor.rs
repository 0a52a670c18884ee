//! The agent's hands: carries out the control plane's commands on this host's cells, re-adopts
//! the cells it finds after a restart, holds the leases of its fenced cells, and turns
//! everything that happens to a cell into a report in the durable queue (`outbox.rs`). The
//! heartbeat loop (`agent.rs`) sends what is queued and hands back the answers to lease claims
//! and renewals, so all of this runs and is tested against real cells without a control plane.
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

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;
use warden_cell::{CellState, Fence, LeaseRecord, ProcessBackend, ShimExe, StartedCell};
use warden_core::lease::{HeldLease, LeaseTiming};
use warden_core::spec::{CellSpec, LogSpec};
use warden_core::CellExit;
use warden_store::queue::{DurableQueue, QueueError};

use super::cell_files::{
    read_checkpoint_plan, read_config, read_lease, read_lease_outage, read_lease_ttl, spec_id_of, write_checkpoint_plan,
    write_lease_terms, EPOCH_ENV, SPEC_ID_ENV,
};
use super::cell_table::{Entry, Tracked};
use super::checkpointing::{self, RestoreError};
use super::context::{AgentContext, ClaimRequest, SpawnCellError};
use super::http::{Http, HttpError};
use super::leases::{self, Renewal};
use super::outbox::pending_reports;
use super::rollout::Rollouts;
use super::standby::Standbys;
use crate::cells::{cell_config, cell_exit, lost_exit};
use crate::error::error_chain;
use crate::proto::{
    CheckpointPlan, CommandKind, InventoryCell, InventoryState, LeaseClaim, ReportEvent, RolloutOrder, StartLease,
};

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

/// Why the cells found at start-up could not be taken on.
#[derive(Debug, thiserror::Error)]
pub enum ReadoptError {
    #[error("cannot scan the cells in {}", .cells_dir.display())]
    Scan {
        cells_dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the report queue")]
    Queue(#[source] QueueError),
    #[error("re-adoption task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Why a `Start` did not start its cell. Its words go into the `start-failed` report.
#[derive(Debug, thiserror::Error)]
enum StartFailure {
    #[error("lease epoch {epoch} could not be claimed")]
    LeaseNotClaimed { epoch: u64 },
    #[error("checkpoint restore failed")]
    Restore(#[source] RestoreError),
    /// The restored `state_dir` could not be given to the cell's user, who must write it.
    #[error("cannot give the state dir {dir} to the cell's user (uid {uid})")]
    HandOver {
        dir: String,
        uid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Spawn(SpawnCellError),
}

/// Carries out commands on this host's cells and queues what happens to them; see the module
/// docs. Cheap to clone (all clones share one state). Needs a tokio runtime: cells are watched
/// by tasks waiting on their shims' pidfds.
#[derive(Clone)]
pub struct Executor {
    context: AgentContext,
    /// Warm-standby slots armed here (see `standby.rs`).
    standbys: Standbys,
    /// The rollout workers running here (see `rollout/`).
    rollouts: Rollouts,
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
        let context = AgentContext::new(cells_dir, logs_dir, shim, queue, timing, claims);
        Executor { standbys: Standbys::load(context.clone()), rollouts: Rollouts::new(context.clone()), context }
    }

    /// Where checkpoints are stored and fetched and standbys bid for leases: the control plane,
    /// and this host's name there. Set once.
    pub fn set_control_plane(&self, http: Arc<Http>, host: &str) {
        self.context.set_control_plane(http, host);
    }

    /// The workloads this host keeps a standby of.
    pub fn armed(&self) -> Vec<String> {
        self.standbys.armed()
    }

    /// The spec (`spec_id`) workload `workload_id`'s running cell here runs: `None` if no cell of
    /// it runs here (cells still starting or already ended do not count), if its `Start` named
    /// no spec, or if several run and do not agree.
    pub fn running_spec(&self, workload_id: &str) -> Option<String> {
        self.context.running_spec(workload_id)
    }

    /// The spec of every running cell of `workload_id` here (normally one; two while a
    /// replacement overlaps the cell it replaces), `None` for a cell whose `Start` named none.
    pub fn running_specs(&self, workload_id: &str) -> Vec<Option<String>> {
        self.context.running_specs(workload_id)
    }

    pub fn backend(&self) -> &Arc<ProcessBackend> {
        self.context.backend()
    }

    pub fn queue(&self) -> &Arc<DurableQueue> {
        self.context.queue()
    }

    pub fn timing(&self) -> &LeaseTiming {
        self.context.timing()
    }

    /// Resolves once a report was queued since the last call (a permit is kept if nobody waits).
    pub async fn report_pushed(&self) {
        self.context.report_pushed().await
    }

    /// Hands `order` (a `Rollout` command, or an order in a heartbeat answer) to the worker of
    /// its rollout on this host, starting one if none runs. Returns at once.
    pub fn follow_rollout(&self, order: RolloutOrder) {
        self.rollouts.follow(order)
    }

    /// The rollouts this host has a worker for (running, or about to end).
    pub fn rollouts_followed(&self) -> Vec<String> {
        self.rollouts.followed()
    }

    /// The leases to renew with the next heartbeat: one per fenced cell that runs (or is being
    /// started) and whose lease was not lost.
    pub fn renewals(&self) -> Vec<Renewal> {
        leases::renewals(&self.context)
    }

    /// Applies a heartbeat's answers to its `renewals` (same order), the heartbeat having been
    /// sent at `sent_at_ms` on `CLOCK_BOOTTIME`: a renewed lease's deadline is extended and
    /// written to the cell's `lease.json`; a refused one is dropped and its cell killed.
    pub async fn apply_renewals(&self, renewals: &[Renewal], answers: &[bool], sent_at_ms: u64) {
        leases::apply_renewals(&self.context, renewals, answers, sent_at_ms).await
    }

    /// The heartbeat carrying `renewals`, sent at `sent_at_ms`, was refused a connection at
    /// `received_at_ms`: see `leases::no_control_plane`. How many fences moved.
    pub async fn no_control_plane(&self, renewals: &[Renewal], sent_at_ms: u64, received_at_ms: u64) -> usize {
        leases::no_control_plane(&self.context, renewals, sent_at_ms, received_at_ms).await
    }

    /// `Arm`: the slot is kept (see `standby.rs`); a hot one's cell is started and watched.
    fn arm(&self, command: CommandKind) {
        let Some(hot) = self.standbys.arm(command) else { return };
        let executor = self.clone();
        tokio::spawn(async move {
            if let Some(started) = executor.standbys.start_hot(&hot).await {
                executor.watch(hot.cell_id.clone(), started);
                executor.standbys.keep_fence(hot.cell_id);
            }
        });
    }

    pub fn held_lease(&self, cell_id: &str) -> Option<HeldLease> {
        self.context.cells().get(cell_id).and_then(|entry| entry.lease)
    }

    /// Re-adopts every cell under the cells dir, once at start-up, before any command: running
    /// cells are watched again (and a fenced one's lease, as its `lease.json` has it, renewed
    /// again), cells that ended while nobody watched are reported — unless a report of their
    /// exit is still in the queue — and dirs of starts that never happened are set aside by the
    /// backend. Never starts anything.
    pub async fn readopt(&self) -> Result<Readoption, ReadoptError> {
        let backend = self.context.backend().clone();
        let cells_dir = self.context.cells_dir().to_path_buf();
        let found = tokio::task::spawn_blocking(move || scan(&backend, &cells_dir))
            .await
            .map_err(ReadoptError::Task)?
            .map_err(|source| ReadoptError::Scan { cells_dir: self.context.cells_dir().to_path_buf(), source })?;
        let queue = self.context.queue().clone();
        let pending = tokio::task::spawn_blocking(move || pending_reports(&queue, usize::MAX))
            .await
            .map_err(ReadoptError::Task)?
            .map_err(ReadoptError::Queue)?;
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
            self.context.cells().insert(cell_id.clone(), Entry::exited(workload_id.clone(), exit.clone()));
            if !already_reported.contains(&cell_id) {
                self.context.report(workload_id, cell_id, ReportEvent::Exited { exit }).await;
            }
        }
        Ok(summary)
    }

    /// Every cell this host has and what is known of it, for the control plane to reconcile
    /// with. Cells still starting are left out: their `Started` (or `StartFailed`) report follows.
    pub fn inventory(&self) -> Vec<InventoryCell> {
        self.context
            .cells()
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

    /// Carries out one command. Commands are idempotent: a `Start` of a cell that exists, a
    /// `Signal` to a cell that ended, a `Remove` of a cell that is gone change nothing.
    pub async fn execute(&self, command: CommandKind) {
        match command {
            CommandKind::Start { workload_id, cell_id, cell, logs, lease, checkpoint, spec_id } => {
                self.start(workload_id, cell_id, cell, logs, lease, checkpoint, spec_id).await
            }
            CommandKind::Checkpoint { cell_id } => {
                let now = self.context.cells().get(&cell_id).and_then(|entry| entry.checkpoint_now.clone());
                match now {
                    Some(now) => now.notify_one(),
                    None => tracing::info!(%cell_id, "checkpoint of a cell that is not a running checkpointed cell here"),
                }
            }
            CommandKind::Signal { cell_id, kill } => {
                let backend = self.context.backend().clone();
                let id = cell_id.clone();
                match tokio::task::spawn_blocking(move || backend.signal(&id, kill)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(warden_cell::SignalError::NoSuchCell(_))) => {
                        tracing::debug!(%cell_id, "signal to a cell this host does not have")
                    }
                    Ok(Err(e)) => tracing::warn!(%cell_id, "signal failed: {}", error_chain(&e)),
                    Err(e) => tracing::warn!(%cell_id, "signal task failed: {e}"),
                }
            }
            CommandKind::Remove { cell_id } => self.remove(cell_id).await,
            arm @ CommandKind::Arm { .. } => self.arm(arm),
            CommandKind::Disarm { workload_id } => self.standbys.disarm(&workload_id),
            CommandKind::Logs { request_id, workload_id, max_files, follow } => {
                self.send_logs(request_id, workload_id, max_files, follow)
            }
            CommandKind::Evict { workload_id, cell_id, epoch, grace_ms } => {
                self.evict(workload_id, cell_id, epoch, grace_ms).await
            }
            CommandKind::Promote { workload_id, cell_id, expected_epoch } => {
                self.standbys.promote(workload_id, cell_id, expected_epoch)
            }
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
        let hot = self.context.cells().get(&cell_id).map(|entry| entry.hot_standby && entry.is_running());
        match (hot, lease) {
            (Some(true), Some(StartLease { epoch, ttl_ms, outage })) => {
                // The hot cell was started by `Arm`, without the spec in its environment: known
                // from here on, but only in memory (a restarted agent does not know it).
                if let Some(entry) = self.context.cells().get_mut(&cell_id) {
                    entry.spec_id = spec_id;
                }
                return self.standbys.promote_hot(workload_id, cell_id, epoch, ttl_ms, outage).await;
            }
            (Some(_), _) => {
                tracing::debug!(%cell_id, "start of a cell this host already has: nothing to do");
                return;
            }
            (None, _) => {}
        }
        let backend = self.context.backend().clone();
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
        let outage = lease.map(|l| l.outage).unwrap_or_default();
        let entry = Entry { spec_id: spec_id.clone(), lease_outage: outage, ..Entry::starting(workload_id.clone(), false, ttl) };
        self.context.cells().insert(cell_id.clone(), entry);

        let mut config = match cell_config(&workload_id, &cell_id, &cell, &logs, self.context.logs_dir()) {
            Ok(config) => config,
            Err(e) => {
                self.context.cells().remove(&cell_id);
                let error = error_chain(&e);
                tracing::warn!(%cell_id, "not started: {error}");
                self.context.report(workload_id, cell_id, ReportEvent::StartFailed { error }).await;
                return;
            }
        };
        if let Some(spec_id) = spec_id {
            config.env.insert(SPEC_ID_ENV.to_string(), spec_id);
        }
        if let Some(StartLease { epoch, ttl_ms, .. }) = lease {
            // The command may be old news: claim the lease now, and count the fence from the
            // claim's send time, not from when the control plane granted it.
            let Some(sent_at) = self.context.claim(LeaseClaim { workload_id: workload_id.clone(), epoch }).await else {
                self.context.cells().remove(&cell_id);
                let error = error_chain(&StartFailure::LeaseNotClaimed { epoch });
                tracing::info!(%cell_id, "not started: {error}");
                self.context.report(workload_id, cell_id, ReportEvent::StartFailed { error }).await;
                return;
            };
            let held = HeldLease::answered(epoch, sent_at, &self.context.timing_for(ttl_ms));
            if let Some(entry) = self.context.cells().get_mut(&cell_id) {
                entry.lease = Some(held);
            }
            config.fence = Some(Fence { epoch, initial_deadline_boottime_ns: held.deadline_ms.saturating_mul(1_000_000) });
            config.env.insert(EPOCH_ENV.to_string(), epoch.to_string());
        }
        // With the lease (if any) won, and before the cell exists: its state, as last checkpointed.
        if let Some(plan) = &checkpoint {
            let user = config.user.unwrap_or(warden_cell::CellUser::ROOT);
            let restored =
                checkpointing::restore(&self.context, &workload_id, plan).await.map_err(StartFailure::Restore).and_then(|()| {
                    crate::cell_user::hand_over(std::path::Path::new(&plan.state_dir), user)
                        .map_err(|source| StartFailure::HandOver { dir: plan.state_dir.clone(), uid: user.uid, source })
                });
            if let Err(error) = restored {
                self.context.cells().remove(&cell_id);
                let error = error_chain(&error);
                tracing::warn!(%cell_id, "not started: {error}");
                self.context.report(workload_id, cell_id, ReportEvent::StartFailed { error }).await;
                return;
            }
        }
        let started = self.context.spawn_cell(config).await;
        match started {
            Ok(started) => {
                let lease_lost = {
                    let mut cells = self.context.cells();
                    match cells.get_mut(&cell_id) {
                        Some(entry) => {
                            entry.state = Tracked::Running(started.clone());
                            entry.lease_lost
                        }
                        None => false,
                    }
                };
                let event = ReportEvent::Started { pid: started.pid, pid_start_time: started.pid_start_time };
                self.context.report(workload_id.clone(), cell_id.clone(), event).await;
                // A standby that was promoted: it is the primary now, its staging is spent.
                if self.standbys.is_armed(&workload_id) {
                    self.standbys.disarm(&workload_id);
                }
                if lease_lost {
                    let backend = self.context.backend().clone();
                    let id = cell_id.clone();
                    let _ = tokio::task::spawn_blocking(move || backend.signal(&id, true)).await;
                }
                self.watch(cell_id.clone(), started);
                if let Err(e) = write_lease_terms(&self.context.backend().cell_dir(&cell_id), ttl, outage) {
                    tracing::warn!(%cell_id, "cannot keep the lease terms in the cell dir (a restarted agent fences it by the cluster's): {e}");
                }
                if let Some(plan) = checkpoint {
                    if let Err(e) = write_checkpoint_plan(&self.context.backend().cell_dir(&cell_id), &plan) {
                        tracing::warn!(%cell_id, "cannot keep the checkpoint plan in the cell dir (a restarted agent will not checkpoint this cell): {e}");
                    }
                    checkpointing::start_checkpoints(&self.context, workload_id, cell_id, plan);
                }
            }
            Err(error) => {
                self.context.cells().remove(&cell_id);
                let error = error_chain(&StartFailure::Spawn(error));
                tracing::info!(%cell_id, "start failed: {error}");
                self.context.report(workload_id, cell_id, ReportEvent::StartFailed { error }).await;
            }
        }
    }

    /// Fills `state_dir` for a start: the checkpoint `plan.restore` names (fetched, checked
    /// against its hash, decrypted, unpacked into the emptied dir), or, with none, the dir as
    /// it is (created if missing). Any failure is the start's failure: never a silently empty state.
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
            lease_ttl_ms: read_lease_ttl(&self.context.backend().cell_dir(&cell_id)),
            lease_outage: read_lease_outage(&self.context.backend().cell_dir(&cell_id)),
            spec_id,
        };
        self.context.cells().insert(cell_id.clone(), entry);
        if hot_standby {
            self.standbys.keep_fence(cell_id.clone());
        }
        self.watch(cell_id.clone(), started);
        if let Some(plan) = read_checkpoint_plan(&self.context.backend().cell_dir(&cell_id)) {
            checkpointing::start_checkpoints(&self.context, self.context.workload_id_of(&cell_id), cell_id, plan);
        }
    }

    /// Takes on a cell found on disk that this agent was not tracking.
    async fn adopt(&self, workload_id: String, cell_id: String, state: CellState) {
        let exit = match state {
            CellState::NotStarted => return,
            CellState::Running(started) => {
                let cell_dir = self.context.backend().cell_dir(&cell_id);
                let lease = read_lease(&cell_dir);
                let spec_id = read_config(&cell_dir).and_then(|config| spec_id_of(&config));
                self.track_running(workload_id, cell_id, started, lease, spec_id);
                return;
            }
            CellState::Exited(status) => cell_exit(&status),
            CellState::Lost { reason } => lost_exit(&reason),
        };
        self.context.cells().insert(cell_id.clone(), Entry::exited(workload_id.clone(), exit.clone()));
        self.context.report(workload_id, cell_id, ReportEvent::Exited { exit }).await;
    }

    async fn remove(&self, cell_id: String) {
        let still_running = {
            let mut cells = self.context.cells();
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
        let backend = self.context.backend().clone();
        let id = cell_id.clone();
        let result = tokio::task::spawn_blocking(move || {
            if still_running {
                // Its end is journaled, yet it runs: it must not outlive that decision.
                tracing::warn!(cell_id = %id, "remove of a cell that still runs: killing it first");
                backend.signal(&id, true).map_err(|e| std::io::Error::other(error_chain(&e)))
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
            let exit = crate::cells::wait_exit(executor.context.backend().clone(), &cell_id, started).await;
            executor.ended(cell_id, exit).await;
        });
    }

    /// Sends a workload's output up for a `warden logs` (see `CommandKind::Logs`), in the
    /// background.
    fn send_logs(&self, request_id: String, workload_id: String, max_files: u32, follow: bool) {
        let Some((http, _)) = self.context.control_plane() else { return };
        let (tx, mut rx) = mpsc::channel::<crate::logs::Chunk>(4);
        let dir = self.context.logs_dir().join(&workload_id);
        let executor = self.clone();
        let running = move || {
            executor
                .context
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
            let mut cells = self.context.cells();
            match cells.get_mut(&cell_id) {
                Some(entry) if matches!(entry.state, Tracked::Running(_)) && entry.lease.is_some_and(|l| l.epoch == epoch) => {
                    entry.evicting = Some(epoch);
                }
                _ => return tracing::info!(%cell_id, "evict of a cell that is not a running primary here"),
            }
        }
        tracing::info!(%workload_id, %cell_id, "evicting (the host is drained)");
        let signal = |kill: bool| {
            let (backend, id) = (self.context.backend().clone(), cell_id.clone());
            tokio::task::spawn_blocking(move || backend.signal(&id, kill))
        };
        let _ = signal(false).await;
        let executor = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(grace_ms)).await;
            if executor.context.is_running(&cell_id) {
                let (backend, id) = (executor.context.backend().clone(), cell_id.clone());
                let _ = tokio::task::spawn_blocking(move || backend.signal(&id, true)).await;
            }
        });
    }

    /// After an evicted primary ended: its final checkpoint, then the `LeaseRevocation`, so the
    /// control plane hands the lease on at once and the next primary starts from that state.
    async fn revoke(&self, workload_id: &str, cell_id: &str, epoch: u64) {
        let state_uri = checkpointing::final_checkpoint(&self.context, workload_id, cell_id).await;
        let Some((http, host)) = self.context.control_plane() else { return };
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
        let evicting = self.context.cells().get(&cell_id).and_then(|entry| entry.evicting);
        if let Some(epoch) = evicting {
            let workload_id = self.context.workload_id_of(&cell_id);
            self.revoke(&workload_id, &cell_id, epoch).await;
        }
        let (workload_id, remove) = {
            let mut cells = self.context.cells();
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
            let backend = self.context.backend().clone();
            let id = cell_id.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || backend.remove(&id)).await {
                tracing::warn!(%cell_id, "remove failed: {e}");
            }
            return;
        }
        tracing::info!(%cell_id, "cell ended: {}", exit.reason);
        self.context.report(workload_id, cell_id, ReportEvent::Exited { exit }).await;
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
