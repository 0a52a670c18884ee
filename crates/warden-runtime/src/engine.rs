//! The engine: one task owns the projection. Inputs come in, the core decides, the decisions are
//! journaled (one fsync per batch: group commit), and only then are effects carried out and
//! callers answered.
//!
//! Architecture invariant: nothing is acted on or acknowledged before its event is durable. The
//! engine's `live` projection runs ahead of the journal while a batch is being decided; readers
//! only ever see `shared`, which is folded from sealed, durable events — exactly what a replay
//! after a crash would rebuild. Debug builds assert `shared == live` after every batch.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc, oneshot};
use warden_cell::{BindMount, CellState, ProcessBackend, StartedCell};
use warden_core::workload::{Effect, Input, StopSignal};
use warden_core::{CloudEvent, EventData, NewEvent, Phase, Projection, ReplicationMode, Spec, Workload, WorkloadInfo};
use warden_store::Store;

use warden_core::canonical::Artifact;
use warden_core::job::JobManifest;
use warden_core::spec::PlacementCount;

use crate::cells::{cell_config, cell_exit, lost_exit, wait_exit};
use crate::checkpoint::Keys;
use crate::cluster::{Cluster, ClusterConfig, Queues};
use crate::jobs::{Jobs, Produced, StepContext};
use crate::proto::{
    AcquireRequest, AcquireResponse, CheckpointPlan, CommandKind, EnrollRequest, EnrollResponse, Heartbeat, HeartbeatResponse,
    InventoryCell, InventoryState, ReportEvent, RevokeRequest, StartLease,
};
use crate::proto::{RolloutReport, RolloutReportResponse};
use crate::rollouts;
use crate::view::{RolloutRequest, RolloutView, RunView, WorkloadView};

/// Snapshot the projection every this many events by default, so start-up replays only the tail.
pub const DEFAULT_SNAPSHOT_EVERY_N_EVENTS: u64 = 10_000;
const MAX_BATCH: usize = 1024;

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A random id: `prefix` + 12 hex digits.
pub fn random_id(prefix: &str) -> String {
    format!("{prefix}{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

fn event_id() -> String {
    let bits: u128 = rand::random();
    let hex = format!("{bits:032x}");
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    /// What was asked for is over (a `warden logs` nobody reads any more): a 410.
    #[error("{0}")]
    Gone(String),
    /// warden's own fault (e.g. a corrupt artifact): a 500.
    #[error("{0}")]
    Internal(String),
}

pub type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

/// Everything the engine task handles: one closed enum. (Each command is built once and moved
/// through the channel, so the spread of variant sizes costs nothing worth boxing for.)
#[allow(clippy::large_enum_variant)]
pub enum Command {
    Submit {
        spec: Spec,
        owner: String,
        consumer_workload_id: Option<String>,
        reply: Reply<WorkloadView>,
    },
    Stop {
        id: String,
        caller: String,
        reply: Reply<WorkloadView>,
    },
    Cell {
        workload_id: String,
        input: Input,
    },
    /// Start a job run: `input` is its initial context.
    JobRun {
        manifest: JobManifest,
        input: serde_json::Value,
        owner: String,
        reply: Reply<RunView>,
    },
    /// Cancel a run: its running steps are stopped, and it ends `cancelled`.
    JobCancel {
        run_id: String,
        caller: String,
        reply: Reply<RunView>,
    },
    /// A host enrolls with a join token (already checked) and its host key `principal`.
    Enroll {
        request: EnrollRequest,
        principal: String,
        reply: Reply<EnrollResponse>,
    },
    /// An agent's heartbeat, signed by `principal`.
    Heartbeat {
        principal: String,
        heartbeat: Heartbeat,
        reply: Reply<HeartbeatResponse>,
    },
    /// An operator drains a host (or takes it back into service).
    Drain {
        host: String,
        drain: bool,
        reply: Reply<()>,
    },
    /// A host signed by `principal` evicted a primary and gives its lease up.
    Revoke {
        principal: String,
        request: RevokeRequest,
        reply: Reply<()>,
    },
    /// A standby on a host signed by `principal` asks for a workload's lease.
    Acquire {
        principal: String,
        request: AcquireRequest,
        reply: Reply<AcquireResponse>,
    },
    /// Start a rollout (`warden rollout start`).
    RolloutStart {
        request: RolloutRequest,
        caller: String,
        reply: Reply<RolloutView>,
    },
    /// Pause, resume or undo a rollout.
    RolloutControl {
        id: String,
        control: rollouts::Control,
        caller: String,
        reply: Reply<RolloutView>,
    },
    /// A host signed by `principal` reports on its part in a rollout.
    RolloutReport {
        principal: String,
        report: RolloutReport,
        reply: Reply<RolloutReportResponse>,
    },
}

/// Every job manifest the engine knows, by `manifest_id`: written by the engine, read by the
/// API's views (manifests are immutable artifacts, so a cached one is never stale).
pub type Manifests = Arc<RwLock<BTreeMap<String, Arc<JobManifest>>>>;

enum PendingReply {
    Workload {
        id: String,
        /// Every workload one submission created (`instances = N`); empty otherwise.
        instances: Vec<String>,
        reply: Reply<WorkloadView>,
    },
    Failed {
        error: ApiError,
        reply: Reply<WorkloadView>,
    },
    Run {
        run_id: String,
        reply: Reply<RunView>,
    },
    RunFailed {
        error: ApiError,
        reply: Reply<RunView>,
    },
    /// Answered after the batch is durable: the reports it acknowledges are journaled.
    Heartbeat {
        reply: Reply<HeartbeatResponse>,
        response: HeartbeatResponse,
    },
    Enrolled {
        reply: Reply<EnrollResponse>,
        response: EnrollResponse,
    },
    /// Answered once the batch is durable.
    Done {
        reply: Reply<()>,
    },
    /// Answered once the grant is durable: the standby starts serving on it.
    Acquired {
        reply: Reply<AcquireResponse>,
        epoch: u64,
    },
    Rollout {
        id: String,
        reply: Reply<RolloutView>,
    },
    /// Answered with the host's snapshot once the report's events are durable.
    RolloutReported {
        rollout_id: String,
        host: String,
        outcome: String,
        reply: Reply<RolloutReportResponse>,
    },
}

pub struct EngineHandle {
    pub commands: mpsc::UnboundedSender<Command>,
    pub shared: Arc<RwLock<Projection>>,
    pub events: broadcast::Sender<Arc<CloudEvent>>,
    pub manifests: Manifests,
    pub queues: Arc<Queues>,
}

pub struct Engine {
    live: Projection,
    shared: Arc<RwLock<Projection>>,
    store: Arc<dyn Store>,
    backend: Arc<ProcessBackend>,
    events: broadcast::Sender<Arc<CloudEvent>>,
    commands_tx: mpsc::UnboundedSender<Command>,
    commands_rx: mpsc::UnboundedReceiver<Command>,
    source: String,
    host: String,
    logs_dir: PathBuf,
    last_snapshot_seq: u64,
    snapshot_every_n_events: u64,
    jobs: Jobs,
    manifests: Manifests,
    cluster: Cluster,
    /// Checkpointed workloads' keys (`<data-dir>/keys`, see `checkpoint.rs`).
    keys: Keys,
    /// Checkpoint blobs superseded in this batch (`sha256:<hex>`), deleted once it is durable.
    superseded: Vec<String>,
}

impl Engine {
    /// Rebuilds the projection from the latest snapshot plus the journal tail.
    pub fn load(
        store: Arc<dyn Store>,
        backend: Arc<ProcessBackend>,
        host: &str,
        logs_dir: PathBuf,
        jobs_dir: PathBuf,
        snapshot_every_n_events: u64,
        cluster: ClusterConfig,
        local_host: Option<String>,
        keys_dir: PathBuf,
    ) -> Result<(Engine, EngineHandle), LoadError> {
        let mut projection = match store.latest_snapshot()? {
            Some((seq, body)) => {
                let projection: Projection =
                    serde_json::from_slice(&body).map_err(|e| LoadError::Snapshot { seq, reason: e.to_string() })?;
                if projection.last_seq != seq {
                    return Err(LoadError::Snapshot { seq, reason: format!("snapshot says seq {}", projection.last_seq) });
                }
                projection
            }
            None => Projection::default(),
        };
        let last_snapshot_seq = projection.last_seq;
        replay_tail(store.as_ref(), &mut projection)?;
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(RwLock::new(projection.clone()));
        let (jobs, manifests) = Jobs::load(&projection, store.clone(), jobs_dir);
        let cluster = Cluster::new(cluster, local_host, &projection, now_ms());
        let handle = EngineHandle {
            commands: commands_tx.clone(),
            shared: shared.clone(),
            events: events.clone(),
            manifests: manifests.clone(),
            queues: cluster.queues.clone(),
        };
        let engine = Engine {
            live: projection,
            shared,
            store,
            backend,
            events,
            commands_tx,
            commands_rx,
            source: format!("/warden/{host}"),
            host: host.to_string(),
            logs_dir,
            last_snapshot_seq,
            snapshot_every_n_events: snapshot_every_n_events.max(1),
            jobs,
            manifests,
            cluster,
            keys: Keys::new(keys_dir),
            superseded: Vec::new(),
        };
        Ok((engine, handle))
    }

    /// The seq of the snapshot the projection was loaded from (0: replayed from the start).
    pub fn loaded_snapshot_seq(&self) -> u64 {
        self.last_snapshot_seq
    }

    /// Journals a fact found at start-up that is not a workload's decision (e.g. a tail repair).
    pub async fn record(&mut self, data: EventData) {
        self.commit(vec![data], Vec::new(), now_ms()).await;
    }

    /// Re-adopts every cell the journal says exists: live cells are watched again, cells that
    /// ended while nobody watched report their exit, starts that never happened happen now.
    /// Never starts a cell whose shim is alive.
    pub fn recover_cells(&mut self) -> RecoverySummary {
        let mut summary = RecoverySummary::default();
        let mut start_effects = Vec::new();
        for workload in self.live.workloads.values() {
            let workload_id = workload.id().to_string();
            // Cells on cluster hosts are reconciled from their agents' inventories.
            if workload.current_host().is_some_and(|host| !self.cluster.is_local(host)) {
                continue;
            }
            if let (Phase::Starting { cell_id, .. }, None, None) =
                (&workload.phase, workload.current_host(), &self.cluster.local_host)
            {
                self.cluster.deferred.insert((workload_id.clone(), cell_id.clone()), 0);
                continue;
            }
            let send = |input: Input| {
                let _ = self.commands_tx.send(Command::Cell { workload_id: workload_id.clone(), input });
            };
            let (cell_id, known_cell) = match &workload.phase {
                Phase::Starting { cell_id, .. } => (cell_id.clone(), None),
                Phase::Running { cell } => (cell.cell_id.clone(), Some(cell.clone())),
                Phase::Stopping { cell_id, cell, .. } => (cell_id.clone(), cell.clone()),
                _ => continue,
            };
            match self.backend.inspect(&cell_id) {
                CellState::NotStarted => match (&workload.phase, known_cell) {
                    (Phase::Starting { .. }, _) => {
                        summary.started_again += 1;
                        start_effects.push(Effect::StartCell { workload_id: workload_id.clone(), cell_id });
                    }
                    (Phase::Stopping { .. }, None) => {
                        send(Input::CellStartFailed { cell_id, error: "supervisor restarted before the cell started".into() })
                    }
                    _ => {
                        summary.lost += 1;
                        self.jobs.ended_while_down(&workload_id);
                        send(Input::CellExited { cell_id, exit: lost_exit("cell vanished while the supervisor was down") })
                    }
                },
                CellState::Running(started) => {
                    if let Some(cell) = &known_cell {
                        if (cell.pid, cell.pid_start_time) != (started.pid, started.pid_start_time) {
                            tracing::warn!(%cell_id, "cell pid {} differs from the journal's {}; adopting the live one", started.pid, cell.pid);
                        }
                    } else {
                        send(Input::CellStarted {
                            cell_id: cell_id.clone(),
                            pid: started.pid,
                            pid_start_time: started.pid_start_time,
                        });
                    }
                    if let Phase::Stopping { escalated, cell: Some(_), .. } = &workload.phase {
                        let signal = if *escalated { StopSignal::Kill } else { StopSignal::Term };
                        self.signal_cell(cell_id.clone(), signal);
                    }
                    summary.adopted += 1;
                    self.watch_cell(workload_id.clone(), cell_id, started);
                }
                CellState::Exited(status) => {
                    summary.exited_while_down += 1;
                    self.jobs.ended_while_down(&workload_id);
                    send(Input::CellExited { cell_id, exit: cell_exit(&status) });
                }
                CellState::Lost { reason } => {
                    summary.lost += 1;
                    self.jobs.ended_while_down(&workload_id);
                    send(Input::CellExited { cell_id, exit: lost_exit(&reason) });
                }
            }
        }
        for effect in start_effects {
            self.carry_out(effect);
        }
        summary
    }

    pub async fn run(mut self) {
        loop {
            let mut batch = Vec::new();
            let deadline = [
                self.live.next_deadline_ms(),
                self.jobs.next_wake_ms(&self.live),
                self.cluster.next_deadline_ms(&self.live),
                rollouts::next_wake_ms(&self.live, now_ms()),
            ]
            .into_iter()
            .flatten()
            .min();
            let sleep = match deadline {
                // Capped, so a deadline centuries away cannot overflow the timer.
                Some(at_ms) => Duration::from_millis(at_ms.saturating_sub(now_ms()).min(3_600_000)),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                command = self.commands_rx.recv() => match command {
                    Some(command) => batch.push(command),
                    None => return,
                },
                _ = tokio::time::sleep(sleep) => {}
            }
            while batch.len() < MAX_BATCH {
                match self.commands_rx.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            self.handle_batch(batch).await;
        }
    }

    async fn handle_batch(&mut self, batch: Vec<Command>) {
        let now = now_ms();
        let mut events = Vec::new();
        let mut effects = Vec::new();
        let mut replies = Vec::new();
        let mut jobs = Produced::default();
        let mut rollout = rollouts::Produced::default();
        for command in batch {
            match command {
                Command::Submit { spec, owner, consumer_workload_id, reply } => {
                    if let Some(wanted) = &consumer_workload_id {
                        let taken = self.live.workloads.values().any(|w| {
                            let consumer = w.info.consumer_workload_id.as_deref();
                            (consumer == Some(wanted.as_str()) || consumer.and_then(each_host_group) == Some(wanted.as_str()))
                                && !w.phase.is_terminal()
                        });
                        if taken {
                            let error = ApiError::Conflict(format!("a live workload already has id {wanted:?}"));
                            replies.push(PendingReply::Failed { error, reply });
                            continue;
                        }
                    }
                    // `instances = N`: N workloads, each its own restart policy and lease,
                    // spread over the hosts by placement; their consumer ids get `.i`.
                    // `each-host`: one per matching host, pinned to it, consumer id `ID@HOST`
                    // (hosts that match later get theirs from `maintain_each_host`).
                    let targets: Vec<(Option<String>, Option<String>)> = match spec.placement.as_ref().map(|p| p.count) {
                        Some(PlacementCount::Instances(n)) if n > 1 => {
                            (0..n).map(|i| (consumer_workload_id.as_ref().map(|wanted| format!("{wanted}.{i}")), None)).collect()
                        }
                        Some(PlacementCount::EachHost) => {
                            let group = consumer_workload_id.clone().unwrap_or_else(|| random_id("s-"));
                            let placement = spec.placement.as_ref().expect("each-host has a placement");
                            let hosts: Vec<(Option<String>, Option<String>)> = self
                                .live
                                .hosts
                                .values()
                                .filter(|h| h.up && placement.admits(h.channel.as_deref(), &h.tags))
                                .map(|h| (Some(format!("{group}@{}", h.name)), Some(h.name.clone())))
                                .collect();
                            if hosts.is_empty() {
                                let error = ApiError::Conflict(
                                    "placement mode = \"each-host\": no host that is up matches the placement (see warden hosts)"
                                        .into(),
                                );
                                replies.push(PendingReply::Failed { error, reply });
                                continue;
                            }
                            hosts
                        }
                        _ => vec![(consumer_workload_id.clone(), None)],
                    };
                    let n = targets.len();
                    let mut ids = Vec::new();
                    for (consumer, pinned) in targets {
                        let Some(decision) = self.submit_one(&spec, &owner, consumer, pinned, now) else { break };
                        ids.push(decision.0);
                        events.extend(decision.1.events);
                        effects.extend(decision.1.effects);
                    }
                    if ids.len() < n {
                        // Every workload decided so far still goes into the journal (its key
                        // exists); the caller learns that the submission did not complete.
                        let error = ApiError::Internal("cannot create a checkpoint key (see the server's log)".into());
                        replies.push(PendingReply::Failed { error, reply });
                        continue;
                    }
                    let instances = if n > 1 || matches!(spec.placement.as_ref().map(|p| p.count), Some(PlacementCount::EachHost))
                    {
                        ids.clone()
                    } else {
                        Vec::new()
                    };
                    replies.push(PendingReply::Workload { id: ids[0].clone(), instances, reply });
                }
                Command::Stop { id, caller, reply } => {
                    let Some(workload) = self.live.workloads.get(&id) else {
                        replies.push(PendingReply::Failed { error: ApiError::NotFound(format!("no workload {id}")), reply });
                        continue;
                    };
                    if workload.info.owner != caller {
                        let error = ApiError::Forbidden(format!("workload {id} belongs to {}", workload.info.owner));
                        replies.push(PendingReply::Failed { error, reply });
                        continue;
                    }
                    match self.live.advance(&id, &Input::Stop, now) {
                        Ok(decision) => {
                            events.extend(decision.events);
                            effects.extend(decision.effects);
                            replies.push(PendingReply::Workload { id, instances: Vec::new(), reply });
                        }
                        Err(e) => replies.push(PendingReply::Failed { error: ApiError::Conflict(e.to_string()), reply }),
                    }
                }
                Command::Cell { workload_id, input } => match self.live.advance(&workload_id, &input, now) {
                    Ok(decision) => {
                        events.extend(decision.events);
                        effects.extend(decision.effects);
                    }
                    Err(e) => tracing::warn!("ignoring cell report: {e}"),
                },
                Command::JobRun { manifest, input, owner, reply } => {
                    let run_id = self.jobs.start(&mut self.live, manifest, input, owner, now, &mut jobs);
                    replies.push(PendingReply::Run { run_id, reply });
                }
                Command::JobCancel { run_id, caller, reply } => {
                    match self.jobs.cancel(&mut self.live, &run_id, &caller, now, &mut jobs) {
                        Ok(()) => replies.push(PendingReply::Run { run_id, reply }),
                        Err(error) => replies.push(PendingReply::RunFailed { error, reply }),
                    }
                }
                Command::Enroll { request, principal, reply } => match self.enroll(request, principal, now, &mut events) {
                    Ok(response) => replies.push(PendingReply::Enrolled { reply, response }),
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                },
                Command::Drain { host, drain, reply } => match self.drain(&host, drain, now, &mut events) {
                    Ok(()) => replies.push(PendingReply::Done { reply }),
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                },
                Command::Revoke { principal, request, reply } => {
                    match self.revoke(&principal, &request, now, &mut events, &mut effects) {
                        Ok(()) => replies.push(PendingReply::Done { reply }),
                        Err(error) => {
                            let _ = reply.send(Err(error));
                        }
                    }
                }
                Command::Acquire { principal, request, reply } => {
                    match self.acquire(&principal, &request, now, &mut events, &mut effects) {
                        Ok(epoch) => replies.push(PendingReply::Acquired { reply, epoch }),
                        Err(error) => {
                            let _ = reply.send(Err(error));
                        }
                    }
                }
                Command::RolloutStart { request, caller, reply } => {
                    match rollouts::start(&mut self.live, &request, &caller, now, &mut rollout) {
                        Ok(id) => replies.push(PendingReply::Rollout { id, reply }),
                        Err(error) => {
                            let _ = reply.send(Err(error));
                        }
                    }
                }
                Command::RolloutControl { id, control, caller, reply } => {
                    match rollouts::control(&mut self.live, &id, control, &caller, now, &mut rollout) {
                        Ok(()) => replies.push(PendingReply::Rollout { id, reply }),
                        Err(error) => {
                            let _ = reply.send(Err(error));
                        }
                    }
                }
                Command::RolloutReport { principal, report, reply } => {
                    let host = report.host.clone();
                    let outcome = match self.live.hosts.get(&host) {
                        None => Err(ApiError::NotFound(format!("host {host:?} is not enrolled"))),
                        Some(record) if record.principal != principal => {
                            Err(ApiError::Forbidden(format!("host {host:?} is enrolled with another key")))
                        }
                        Some(_) => rollouts::report(&mut self.live, &report, now, &mut rollout),
                    };
                    match outcome {
                        Ok(outcome) => {
                            self.cluster.seen(&host, now);
                            replies.push(PendingReply::RolloutReported { rollout_id: report.rollout_id, host, outcome, reply })
                        }
                        Err(error) => {
                            let _ = reply.send(Err(error));
                        }
                    }
                }
                Command::Heartbeat { principal, heartbeat, reply } => {
                    match self.heartbeat(&principal, heartbeat, now, &mut events, &mut effects) {
                        Ok(response) => replies.push(PendingReply::Heartbeat { reply, response }),
                        Err(error) => {
                            let _ = reply.send(Err(error));
                        }
                    }
                }
            }
            // In the order they were applied to `live`: replay must rebuild it exactly.
            events.append(&mut rollout.events);
            effects.append(&mut rollout.effects);
        }
        self.hosts_gone_silent(now, &mut events, &mut effects);
        self.maintain_each_host(now, &mut events, &mut effects);
        rollouts::maintain(&mut self.live, now, &mut rollout);
        events.append(&mut rollout.events);
        effects.append(&mut rollout.effects);
        for id in self.live.due(now) {
            match self.live.advance(&id, &Input::Tick, now) {
                Ok(decision) => {
                    events.extend(decision.events);
                    effects.extend(decision.effects);
                }
                Err(e) => tracing::warn!("tick: {e}"),
            }
        }
        // Job steps last: they read the outcome of every workload event decided above.
        self.jobs.touch(&events);
        self.jobs.touch(&jobs.events);
        self.jobs.touch_due(&self.live, now);
        self.jobs.step(&mut self.live, now, &mut jobs);
        events.extend(jobs.events);
        effects.extend(jobs.effects);
        // Every new cell gets its host (and, on a cluster host, its lease) in this same append.
        self.place(now, &mut events, &mut effects);
        self.maintain_standbys(now, &mut events);
        if !events.is_empty() || !jobs.artifacts.is_empty() {
            self.commit(events, jobs.artifacts, now).await;
        }
        // Superseded checkpoints: the new one is durable, nothing will restore the old one (only
        // the current cell's reports move `state_uri`, and it already started).
        let superseded = std::mem::take(&mut self.superseded);
        if !superseded.is_empty() {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = store.delete_artifacts(superseded) {
                    tracing::warn!("cannot delete superseded checkpoints: {e}");
                }
            });
        }
        for run_id in jobs.finished {
            let dir = self.jobs.run_dir(&run_id);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!("cannot remove {}: {e}", dir.display());
                    }
                }
            });
        }
        for effect in effects {
            self.carry_out(effect);
        }
        for (host, rollout_id) in rollout.orders {
            if let Some(order) = rollouts::order(&self.live, &rollout_id, &host) {
                self.cluster.queues.push(&host, CommandKind::Rollout { order });
            }
        }
        let shared = self.shared.read().expect("projection lock");
        for pending in replies {
            match pending {
                PendingReply::Workload { id, instances, reply } => {
                    let view = shared.workloads.get(&id).map(|w| WorkloadView { instances, ..WorkloadView::of(w, &self.host) });
                    let _ = reply.send(view.ok_or_else(|| ApiError::NotFound(format!("no workload {id}"))));
                }
                PendingReply::Failed { error, reply } => {
                    let _ = reply.send(Err(error));
                }
                PendingReply::Run { run_id, reply } => {
                    let view = shared.runs.get(&run_id).map(|run| {
                        let manifest = self.manifests.read().expect("manifests lock").get(&run.manifest_id).cloned();
                        RunView::of(run, manifest.as_deref())
                    });
                    let _ = reply.send(view.ok_or_else(|| ApiError::NotFound(format!("no job run {run_id}"))));
                }
                PendingReply::RunFailed { error, reply } => {
                    let _ = reply.send(Err(error));
                }
                PendingReply::Heartbeat { reply, response } => {
                    let _ = reply.send(Ok(response));
                }
                PendingReply::Enrolled { reply, response } => {
                    let _ = reply.send(Ok(response));
                }
                PendingReply::Done { reply } => {
                    let _ = reply.send(Ok(()));
                }
                PendingReply::Acquired { reply, epoch } => {
                    let _ = reply.send(Ok(AcquireResponse { epoch }));
                }
                PendingReply::Rollout { id, reply } => {
                    let view = shared.rollouts.get(&id).map(|r| rollouts::view(r, now_ms()));
                    let _ = reply.send(view.ok_or_else(|| ApiError::NotFound(format!("no rollout {id}"))));
                }
                PendingReply::RolloutReported { rollout_id, host, outcome, reply } => {
                    let snapshot = shared.rollouts.get(&rollout_id).and_then(|r| r.rollout.hosts.get(&host)).cloned();
                    let answer = snapshot.map(|snapshot| RolloutReportResponse { snapshot, outcome });
                    let _ = reply.send(answer.ok_or_else(|| ApiError::NotFound(format!("no rollout {rollout_id}"))));
                }
            }
        }
    }

    /// Journals `events` durably, folds them into the readers' projection and publishes them.
    /// A journal failure is fatal: the process exits and the next start replays the journal,
    /// because continuing would act on decisions that are not durable.
    async fn commit(&mut self, events: Vec<EventData>, artifacts: Vec<Artifact>, now: u64) {
        let new_events: Vec<NewEvent> = events
            .into_iter()
            .map(|data| NewEvent {
                id: event_id(),
                source: self.source.clone(),
                time_ms: now,
                subject: data.subject().map(str::to_owned),
                data,
            })
            .collect();
        let store = self.store.clone();
        let sealed = match tokio::task::spawn_blocking(move || store.append_with_artifacts(artifacts, new_events)).await {
            Ok(Ok(sealed)) => sealed,
            Ok(Err(e)) => fatal(&format!("journal append failed: {e}")),
            Err(e) => fatal(&format!("journal writer panicked: {e}")),
        };
        let mut finished_cells = Vec::new();
        {
            let mut shared = self.shared.write().expect("projection lock");
            for event in &sealed {
                if let Err(e) = shared.apply_event(event) {
                    fatal(&format!("a sealed event does not replay: {e}"));
                }
                if event.event_type == "dev.warden.lifecycle.destroyed.v1" {
                    if let (Some(cell_id), Some(workload_id)) = (
                        event.data.get("cell_id").and_then(|c| c.as_str()),
                        event.data.get("workload_id").and_then(|c| c.as_str()),
                    ) {
                        let host = shared
                            .workloads
                            .get(workload_id)
                            .and_then(|w| (w.placed_cell.as_deref() == Some(cell_id)).then(|| w.host.clone()).flatten());
                        finished_cells.push((cell_id.to_string(), host));
                    }
                }
            }
            self.live.last_seq = shared.last_seq;
            debug_assert!(*shared == self.live, "replayed projection diverged from the live one");
        }
        for event in sealed {
            let _ = self.events.send(Arc::new(event));
        }
        for (cell_id, host) in finished_cells {
            match host.filter(|h| !self.cluster.is_local(h)) {
                Some(host) => self.cluster.queues.push(&host, CommandKind::Remove { cell_id }),
                None => {
                    let backend = self.backend.clone();
                    tokio::task::spawn_blocking(move || backend.remove(&cell_id));
                }
            }
        }
        if self.live.last_seq >= self.last_snapshot_seq + self.snapshot_every_n_events {
            self.snapshot();
        }
    }

    fn snapshot(&mut self) {
        let seq = self.live.last_seq;
        let body = serde_json::to_vec(&self.live).expect("projection serializes");
        let store = self.store.clone();
        self.last_snapshot_seq = seq;
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.put_snapshot(seq, &body) {
                tracing::warn!("snapshot at seq {seq} failed (start-up will replay more): {e}");
            }
        });
    }

    fn carry_out(&self, effect: Effect) {
        let remote = |workload_id: &str| {
            let host = self.live.workloads.get(workload_id)?.current_host()?;
            (!self.cluster.is_local(host)).then(|| host.to_string())
        };
        match effect {
            Effect::StartCell { workload_id, cell_id } => match remote(&workload_id) {
                Some(host) => {
                    let workload = &self.live.workloads[&workload_id];
                    // The cell learns its host, e.g. to bind its address or name its metrics.
                    let mut cell = workload.spec.cell.clone();
                    cell.env.insert("WARDEN_HOST".into(), host.clone());
                    let start = CommandKind::Start {
                        workload_id: workload_id.clone(),
                        cell_id,
                        cell,
                        logs: workload.spec.logs,
                        lease: workload.epoch.map(|epoch| {
                            let ttl_ms = self.cluster.lease_timing(workload).ttl_ms;
                            StartLease { epoch, ttl_ms: (ttl_ms != self.cluster.config.lease.ttl_ms).then_some(ttl_ms) }
                        }),
                        checkpoint: self.checkpoint_plan(workload),
                        spec_id: Some(workload.info.spec_id.clone()),
                    };
                    self.cluster.queues.push(&host, start);
                }
                None => self.start_cell(workload_id, cell_id),
            },
            Effect::SignalCell { workload_id, cell_id, signal } => match remote(&workload_id) {
                Some(host) => {
                    self.cluster.queues.push(&host, CommandKind::Signal { cell_id, kill: matches!(signal, StopSignal::Kill) })
                }
                None => self.signal_cell(cell_id, signal),
            },
        }
    }

    /// What a `Start` of a checkpointed workload carries: where its state lives, its key, and
    /// the latest checkpoint to restore, so any respawn (here or elsewhere) starts from it.
    fn checkpoint_plan(&self, workload: &Workload) -> Option<CheckpointPlan> {
        let replication = &workload.spec.replication;
        if !replication.checkpoints() {
            return None;
        }
        let state_dir = replication.state_dir.clone()?;
        let key_hex = match self.keys.load_or_create(workload.id()) {
            Ok(key) => hex::encode(key),
            Err(e) => {
                // An empty key makes the agent refuse the start (a failed start, with a reason)
                // rather than run the cell from an empty state or without checkpoints.
                tracing::error!(workload_id = %workload.id(), "cannot read the checkpoint key: {e}");
                String::new()
            }
        };
        Some(CheckpointPlan {
            state_dir,
            interval_ms: replication.checkpoint_interval_ms.unwrap_or(warden_core::spec::DEFAULT_CHECKPOINT_INTERVAL_MS),
            key_hex,
            restore: workload.info.state_uri.clone(),
        })
    }

    /// Places every cell the batch decided to start, and retries the deferred ones that are due.
    fn place(&mut self, now: u64, events: &mut Vec<EventData>, effects: &mut Vec<Effect>) {
        let due: Vec<(String, String)> =
            self.cluster.deferred.iter().filter(|(_, at)| **at <= now).map(|(key, _)| key.clone()).collect();
        for (workload_id, cell_id) in due {
            self.cluster.deferred.remove(&(workload_id.clone(), cell_id.clone()));
            let still_starting = self
                .live
                .workloads
                .get(&workload_id)
                .is_some_and(|w| matches!(&w.phase, Phase::Starting { cell_id: c, .. } if *c == cell_id));
            if still_starting {
                effects.push(Effect::StartCell { workload_id, cell_id });
            }
        }
        let mut kept = Vec::with_capacity(effects.len());
        for effect in effects.drain(..) {
            let Effect::StartCell { workload_id, cell_id } = &effect else {
                kept.push(effect);
                continue;
            };
            let Some(workload) = self.live.workloads.get(workload_id) else { continue };
            if workload.placed_cell.as_deref() == Some(cell_id.as_str()) {
                kept.push(effect); // placed before a restart; starting it again
                continue;
            }
            match self.cluster.place(&self.live, workload, cell_id, now) {
                Ok(placed) => {
                    for data in &placed {
                        self.live.apply_data(data, now);
                    }
                    events.extend(placed);
                    kept.push(effect);
                }
                Err(retry_at) => {
                    self.cluster.deferred.insert((workload_id.clone(), cell_id.clone()), retry_at);
                }
            }
        }
        *effects = kept;
    }

    fn enroll(
        &mut self,
        request: EnrollRequest,
        principal: String,
        now: u64,
        events: &mut Vec<EventData>,
    ) -> Result<EnrollResponse, ApiError> {
        match self.live.hosts.get(&request.name) {
            Some(host) if host.principal != principal => {
                return Err(ApiError::Conflict(format!("host {:?} is enrolled with another key", request.name)))
            }
            Some(_) => {}
            None => {
                if self.cluster.is_local(&request.name) {
                    return Err(ApiError::Conflict(format!("{:?} is this control plane's own node", request.name)));
                }
                let data = EventData::HostEnrolled {
                    host: request.name.clone(),
                    principal: principal.clone(),
                    channel: request.channel.clone(),
                    tags: request.tags.clone(),
                };
                self.live.apply_data(&data, now);
                events.push(data);
            }
        }
        self.cluster.seen(&request.name, now);
        let config = self.cluster.config;
        Ok(EnrollResponse {
            host: request.name,
            principal,
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            host_ttl_ms: config.host_ttl_ms,
            lease: config.lease,
        })
    }

    /// An agent's heartbeat: the host is alive; its reports become inputs; its lease claims are
    /// renewed or refused; its inventory is reconciled with what the journal says it runs.
    fn heartbeat(
        &mut self,
        principal: &str,
        heartbeat: Heartbeat,
        now: u64,
        events: &mut Vec<EventData>,
        effects: &mut Vec<Effect>,
    ) -> Result<HeartbeatResponse, ApiError> {
        let host = heartbeat.host.clone();
        match self.live.hosts.get(&host) {
            None => return Err(ApiError::NotFound(format!("host {host:?} is not enrolled"))),
            Some(record) if record.principal != principal => {
                return Err(ApiError::Forbidden(format!("host {host:?} is enrolled with another key")))
            }
            Some(record) => {
                if !record.up {
                    let data = EventData::HostUp { host: host.clone() };
                    self.live.apply_data(&data, now);
                    events.push(data);
                }
            }
        }
        self.cluster.seen(&host, now);
        let mut acked = 0;
        for report in &heartbeat.reports {
            acked = acked.max(report.seq);
            let Some(workload) = self.live.workloads.get(&report.workload_id) else { continue };
            // Only the current cell, on this host, counts; anything else is history.
            if workload.phase.cell_id() != Some(report.cell_id.as_str()) || workload.current_host() != Some(host.as_str()) {
                continue;
            }
            let epoch = workload.epoch;
            if let ReportEvent::Checkpointed { state_uri, size_bytes } = &report.event {
                if crate::checkpoint::blob_hex(state_uri).is_some() && workload.info.state_uri.as_deref() != Some(state_uri) {
                    self.superseded.extend(workload.info.state_uri.as_deref().and_then(blob_artifact_id));
                    let data = EventData::CheckpointTaken {
                        workload_id: report.workload_id.clone(),
                        cell_id: report.cell_id.clone(),
                        state_uri: state_uri.clone(),
                        size_bytes: *size_bytes,
                    };
                    self.live.apply_data(&data, now);
                    events.push(data);
                    // The standbys fetch the newest checkpoint ahead of a failover.
                    let workload = &self.live.workloads[&report.workload_id];
                    for slot in &workload.standbys {
                        self.cluster.queues.push(&slot.host, self.arm_command(workload, slot.clone()));
                    }
                }
                continue;
            }
            let input = match &report.event {
                ReportEvent::Started { pid, pid_start_time } => {
                    Input::CellStarted { cell_id: report.cell_id.clone(), pid: *pid, pid_start_time: *pid_start_time }
                }
                ReportEvent::StartFailed { error } => {
                    Input::CellStartFailed { cell_id: report.cell_id.clone(), error: error.clone() }
                }
                ReportEvent::Exited { exit } => Input::CellExited { cell_id: report.cell_id.clone(), exit: exit.clone() },
                ReportEvent::Checkpointed { .. } => unreachable!("handled above"),
            };
            let ended = !matches!(report.event, ReportEvent::Started { .. });
            self.advance_into(&report.workload_id, &input, now, events, effects);
            // The holder says its cell is gone: the lease may go to the next cell at once.
            if let (true, Some(epoch)) = (ended, epoch) {
                let held = self
                    .live
                    .leases
                    .get(&report.workload_id)
                    .is_some_and(|l| l.epoch == epoch && l.holder.as_deref() == Some(host.as_str()));
                if held {
                    let data = EventData::LeaseReleased { workload_id: report.workload_id.clone(), epoch };
                    self.live.apply_data(&data, now);
                    events.push(data);
                }
            }
        }
        let renewed = heartbeat.renew.iter().map(|claim| self.cluster.renew(&self.live, &host, claim, now)).collect();
        if let Some(inventory) = &heartbeat.inventory {
            self.cluster.want_inventory.remove(&host);
            self.reconcile(&host, inventory, now, events, effects);
        }
        if let Some(armed) = &heartbeat.standbys {
            self.reconcile_standbys(&host, armed);
        }
        Ok(HeartbeatResponse {
            acked_reports_through: acked,
            renewed,
            incarnation: self.cluster.queues.incarnation.clone(),
            send_inventory: self.cluster.want_inventory.contains(&host),
            rollouts: if heartbeat.inventory.is_some() { rollouts::orders_for_host(&self.live, &host) } else { Vec::new() },
        })
    }

    fn advance_into(
        &mut self,
        workload_id: &str,
        input: &Input,
        now: u64,
        events: &mut Vec<EventData>,
        effects: &mut Vec<Effect>,
    ) {
        match self.live.advance(workload_id, input, now) {
            Ok(decision) => {
                events.extend(decision.events);
                effects.extend(decision.effects);
            }
            Err(e) => tracing::debug!(%workload_id, "ignoring a report: {e}"),
        }
    }

    /// What the agent has against what the journal says it should have.
    fn reconcile(
        &mut self,
        host: &str,
        inventory: &[InventoryCell],
        now: u64,
        events: &mut Vec<EventData>,
        effects: &mut Vec<Effect>,
    ) {
        let on_host: Vec<(String, String)> = self
            .live
            .workloads
            .values()
            .filter(|w| w.current_host() == Some(host))
            .filter_map(|w| w.phase.cell_id().map(|cell| (w.id().to_string(), cell.to_string())))
            .collect();
        for (workload_id, cell_id) in &on_host {
            let found = inventory.iter().find(|c| c.cell_id == *cell_id);
            let phase = self.live.workloads[workload_id].phase.clone();
            match (found.map(|c| &c.state), &phase) {
                (Some(InventoryState::Running { pid, pid_start_time }), Phase::Starting { .. }) => {
                    let input = Input::CellStarted { cell_id: cell_id.clone(), pid: *pid, pid_start_time: *pid_start_time };
                    self.advance_into(workload_id, &input, now, events, effects);
                }
                (Some(InventoryState::Running { .. }), Phase::Stopping { escalated, .. }) => {
                    let kill = *escalated;
                    self.cluster.queues.push(host, CommandKind::Signal { cell_id: cell_id.clone(), kill });
                }
                (Some(InventoryState::Running { .. }), _) => {}
                (Some(InventoryState::Exited { exit }), _) => {
                    let input = Input::CellExited { cell_id: cell_id.clone(), exit: exit.clone() };
                    self.advance_into(workload_id, &input, now, events, effects);
                }
                (None, Phase::Starting { .. }) => {
                    effects.push(Effect::StartCell { workload_id: workload_id.clone(), cell_id: cell_id.clone() })
                }
                (None, _) => {
                    let input = Input::CellExited {
                        cell_id: cell_id.clone(),
                        exit: lost_exit(&format!("host {host} no longer has the cell")),
                    };
                    self.advance_into(workload_id, &input, now, events, effects);
                }
            }
        }
        // Cells the journal does not expect there (a host back from a partition after its
        // workload moved on): kill them and clean up. Hot standbys of slots armed there are
        // expected.
        let hot: Vec<String> = self
            .live
            .workloads
            .values()
            .filter(|w| w.spec.replication.hot)
            .flat_map(|w| w.standbys.iter().filter(|s| s.host == host).map(|s| s.hot_cell_id(w.id())))
            .collect();
        for cell in inventory {
            if !on_host.iter().any(|(_, c)| *c == cell.cell_id) && !hot.contains(&cell.cell_id) {
                if matches!(cell.state, InventoryState::Running { .. }) {
                    self.cluster.queues.push(host, CommandKind::Signal { cell_id: cell.cell_id.clone(), kill: true });
                }
                self.cluster.queues.push(host, CommandKind::Remove { cell_id: cell.cell_id.clone() });
            }
        }
    }

    /// The slots a host keeps against the journal's: `Arm` what it lacks, `Disarm` what it keeps
    /// but should not.
    fn reconcile_standbys(&self, host: &str, armed: &[String]) {
        for w in self.live.workloads.values() {
            if let Some(slot) = w.standbys.iter().find(|s| s.host == host) {
                if !armed.iter().any(|a| a == w.id()) {
                    self.cluster.queues.push(host, self.arm_command(w, slot.clone()));
                }
            }
        }
        for workload_id in armed {
            let kept = self.live.workloads.get(workload_id).is_some_and(|w| w.standbys.iter().any(|s| s.host == host));
            if !kept {
                self.cluster.queues.push(host, CommandKind::Disarm { workload_id: workload_id.clone() });
            }
        }
    }

    /// Hosts silent past `host_ttl` are down. Their cells are written off once the host has been
    /// silent for the workload's tolerance (`host_ttl`, or its `placement.lost_after`), which is
    /// also how long its lease lasts: the lease is not released, and the shim fences the cell
    /// before it expires.
    fn hosts_gone_silent(&mut self, now: u64, events: &mut Vec<EventData>, effects: &mut Vec<Effect>) {
        for host in self.cluster.silent_hosts(&self.live, now) {
            let ttl = self.cluster.config.host_ttl_ms;
            let data = EventData::HostDown { host: host.clone(), reason: format!("no heartbeat for {ttl} ms") };
            self.live.apply_data(&data, now);
            events.push(data);
            self.cluster.want_inventory.insert(host.clone());
        }
        self.cluster.next_write_off = None;
        if self.live.hosts.values().all(|h| h.up) {
            return;
        }
        let mut lost = Vec::new();
        for w in self.live.workloads.values() {
            let Some(host) = w.current_host().filter(|h| self.live.hosts.get(*h).is_some_and(|r| !r.up)) else { continue };
            let Some(cell_id) = w.phase.cell_id() else { continue };
            let silent_since = self.cluster.last_seen(host).unwrap_or(0);
            let write_off_at = silent_since.saturating_add(self.cluster.tolerance_ms(w));
            if now > write_off_at {
                lost.push((w.id().to_string(), cell_id.to_string(), host.to_string()));
            } else {
                let next = self.cluster.next_write_off.map_or(write_off_at + 1, |at| at.min(write_off_at + 1));
                self.cluster.next_write_off = Some(next);
            }
        }
        for (workload_id, cell_id, host) in lost {
            let input = Input::HostLost { cell_id, host: Some(host.clone()), reason: format!("host {host} is down") };
            self.advance_into(&workload_id, &input, now, events, effects);
        }
    }

    /// Decides one new workload: its checkpoint key first (durably, if it checkpoints), then its
    /// submission. `None` if the key cannot be written.
    fn submit_one(
        &mut self,
        spec: &Spec,
        owner: &str,
        consumer: Option<String>,
        pinned: Option<String>,
        now: u64,
    ) -> Option<(String, warden_core::workload::Decision)> {
        let info = new_workload_info(random_id("w-"), spec, owner.to_string(), consumer, now);
        if spec.replication.checkpoints() {
            if let Err(e) = self.keys.load_or_create(&info.id) {
                tracing::error!("cannot create the checkpoint key of {}: {e}", info.id);
                return None;
            }
        }
        let id = info.id.clone();
        Some((id, self.live.submit_pinned(info, spec.clone(), pinned, now)))
    }

    /// `each-host` services follow the hosts: a host that is up and matches, and never had an
    /// instance of a service that still runs somewhere, gets one. (A host that leaves keeps its
    /// instance, which waits for it: it may run nowhere else.)
    fn maintain_each_host(&mut self, now: u64, events: &mut Vec<EventData>, effects: &mut Vec<Effect>) {
        if self.live.hosts.is_empty() {
            return;
        }
        // group → (a live instance's spec and owner, the hosts that ever had an instance)
        let mut groups: BTreeMap<&str, (Option<&Workload>, Vec<&str>)> = BTreeMap::new();
        for w in self.live.workloads.values() {
            let (Some(pin), Some(group)) =
                (w.pinned_host.as_deref(), w.info.consumer_workload_id.as_deref().and_then(each_host_group))
            else {
                continue;
            };
            let entry = groups.entry(group).or_default();
            entry.1.push(pin);
            if !w.phase.is_terminal() && entry.0.is_none_or(|live| live.info.created_at <= w.info.created_at) {
                entry.0 = Some(w);
            }
        }
        let mut new = Vec::new();
        for (group, (live, covered)) in groups {
            let Some(live) = live else { continue };
            let Some(placement) = live.spec.placement.as_ref() else { continue };
            for host in self.live.hosts.values() {
                if host.up && placement.admits(host.channel.as_deref(), &host.tags) && !covered.contains(&host.name.as_str()) {
                    let consumer = format!("{group}@{}", host.name);
                    new.push((live.spec.clone(), live.info.owner.clone(), consumer, host.name.clone()));
                }
            }
        }
        for (spec, owner, consumer, host) in new {
            tracing::info!(%consumer, "each-host: a new instance for host {host}");
            if let Some((_, decision)) = self.submit_one(&spec, &owner, Some(consumer), Some(host), now) {
                events.extend(decision.events);
                effects.extend(decision.effects);
            }
        }
    }

    /// Drains a host: it takes no new cells or standbys, and each primary on it (but `each-host`
    /// instances, which may run nowhere else) is evicted by its agent, which gives the lease
    /// up with a final checkpoint (`revoke`), so the failover needs no timeout.
    fn drain(&mut self, host: &str, drain: bool, now: u64, events: &mut Vec<EventData>) -> Result<(), ApiError> {
        let Some(record) = self.live.hosts.get(host) else {
            return Err(ApiError::NotFound(format!("no host {host:?}")));
        };
        if record.draining != drain {
            let data = EventData::HostDrain { host: host.to_string(), drain };
            self.live.apply_data(&data, now);
            events.push(data);
        }
        if !drain {
            return Ok(());
        }
        for w in self.live.workloads.values() {
            if w.current_host() != Some(host) || w.pinned_host.is_some() {
                continue;
            }
            let (Some(cell), Some(epoch)) = (w.phase.running_cell(), w.epoch) else { continue };
            if matches!(w.phase, Phase::Stopping { .. }) {
                continue;
            }
            let evict = CommandKind::Evict {
                workload_id: w.id().to_string(),
                cell_id: cell.cell_id.clone(),
                epoch,
                grace_ms: w.spec.cell.graceful_shutdown_ms,
            };
            self.cluster.queues.push(host, evict);
        }
        Ok(())
    }

    /// A `LeaseRevocation`: the holder evicted its primary and gives the lease up (checked:
    /// signed by the host holding that epoch, for the workload's current cell there). The
    /// workload treats it as the loss of the host: a warm-standby workload fails over at once.
    fn revoke(
        &mut self,
        principal: &str,
        request: &RevokeRequest,
        now: u64,
        events: &mut Vec<EventData>,
        effects: &mut Vec<Effect>,
    ) -> Result<(), ApiError> {
        match self.live.hosts.get(&request.host) {
            None => return Err(ApiError::NotFound(format!("host {:?} is not enrolled", request.host))),
            Some(record) if record.principal != principal => {
                return Err(ApiError::Forbidden(format!("host {:?} is enrolled with another key", request.host)))
            }
            Some(_) => {}
        }
        let holds = self
            .live
            .leases
            .get(&request.workload_id)
            .is_some_and(|l| l.epoch == request.epoch && l.holder.as_deref() == Some(request.host.as_str()));
        let current = self.live.workloads.get(&request.workload_id).is_some_and(|w| {
            w.phase.cell_id() == Some(request.cell_id.as_str()) && w.current_host() == Some(request.host.as_str())
        });
        if !holds || !current {
            return Err(ApiError::Conflict(format!(
                "host {} does not hold lease epoch {} of {} for cell {}",
                request.host, request.epoch, request.workload_id, request.cell_id
            )));
        }
        if let Some(uri) = &request.state_uri {
            if crate::checkpoint::blob_hex(uri).is_none() {
                return Err(ApiError::BadRequest(format!("state_uri {uri:?} is not blob:sha256:<hex>")));
            }
        }
        // The final checkpoint's own report may have come first: then it is the current one.
        let previous = self.live.workloads[&request.workload_id].info.state_uri.as_deref();
        if let (Some(new), Some(previous)) = (&request.state_uri, previous) {
            if new != previous {
                self.superseded.extend(blob_artifact_id(previous));
            }
        }
        let data = EventData::LeaseRevoked {
            workload_id: request.workload_id.clone(),
            epoch: request.epoch,
            host: request.host.clone(),
            state_uri: request.state_uri.clone(),
            reason: format!("evicted from drained host {}", request.host),
        };
        self.live.apply_data(&data, now);
        events.push(data);
        let input = Input::HostLost {
            cell_id: request.cell_id.clone(),
            host: Some(request.host.clone()),
            reason: format!("evicted from drained host {}", request.host),
        };
        self.advance_into(&request.workload_id, &input, now, events, effects);
        Ok(())
    }

    /// A standby's bid for a lease (see `Cluster::acquire_for_standby`): on a win, the grant and
    /// the placement go into this batch and the `Start` follows once they are durable.
    fn acquire(
        &mut self,
        principal: &str,
        request: &AcquireRequest,
        now: u64,
        events: &mut Vec<EventData>,
        effects: &mut Vec<Effect>,
    ) -> Result<u64, ApiError> {
        match self.live.hosts.get(&request.host) {
            None => return Err(ApiError::NotFound(format!("host {:?} is not enrolled", request.host))),
            Some(record) if record.principal != principal => {
                return Err(ApiError::Forbidden(format!("host {:?} is enrolled with another key", request.host)))
            }
            Some(record) if !record.up => {
                return Err(ApiError::Conflict(format!("host {:?} is down; it may not take a lease", request.host)))
            }
            Some(_) => {}
        }
        self.cluster.seen(&request.host, now);
        let (placed, epoch) = self
            .cluster
            .acquire_for_standby(&self.live, &request.host, request, now)
            .map_err(|refused| ApiError::Conflict(refused.0))?;
        for data in &placed {
            self.live.apply_data(data, now);
        }
        events.extend(placed);
        let cell_id = self.live.workloads[&request.workload_id].phase.cell_id().unwrap_or(&request.cell_id).to_string();
        effects.push(Effect::StartCell { workload_id: request.workload_id.clone(), cell_id });
        tracing::info!(workload_id = %request.workload_id, host = %request.host, epoch, "a standby won the lease");
        Ok(epoch)
    }

    /// Arms and releases standby slots (`standby::plan`) for every warm-standby workload, and
    /// tells the hosts concerned.
    fn maintain_standbys(&mut self, now: u64, events: &mut Vec<EventData>) {
        if self.live.hosts.is_empty() {
            return;
        }
        let planned: Vec<EventData> = self
            .live
            .workloads
            .values()
            .filter(|w| w.spec.replication.mode == ReplicationMode::WarmStandby)
            .filter(|w| !w.standbys.is_empty() || !w.phase.is_terminal())
            .flat_map(|w| warden_core::standby::plan(w, &self.live.hosts, now))
            .collect();
        for data in planned {
            self.live.apply_data(&data, now);
            match &data {
                EventData::StandbyArmed { workload_id, slot } => {
                    let arm = self.arm_command(&self.live.workloads[workload_id], slot.clone());
                    self.cluster.queues.push(&slot.host, arm);
                }
                EventData::StandbyReleased { workload_id, host, .. } => {
                    self.cluster.queues.push(host, CommandKind::Disarm { workload_id: workload_id.clone() });
                }
                _ => {}
            }
            events.push(data);
        }
    }

    /// What a standby host stages: the cell, its logs, the checkpoint to fetch ahead of time.
    fn arm_command(&self, workload: &Workload, slot: warden_core::standby::StandbySlot) -> CommandKind {
        CommandKind::Arm {
            workload_id: workload.id().to_string(),
            slot,
            cell: workload.spec.cell.clone(),
            logs: workload.spec.logs,
            promotion_delay_ms: workload.spec.replication.promotion_delay(),
            checkpoint: self.checkpoint_plan(workload),
            hot: workload.spec.replication.hot,
        }
    }

    fn start_cell(&self, workload_id: String, cell_id: String) {
        let Some(workload) = self.live.workloads.get(&workload_id) else { return };
        let mut config = cell_config(&workload_id, &cell_id, &workload.spec.cell, &workload.spec.logs, &self.logs_dir);
        // A job step starts from its base context, written just before its cell (also when a
        // start is resumed after a crash: the cell never ran, so the file is rewritten whole).
        let step = self.jobs.step_context(&self.live, &workload_id);
        if let Some(step) = step.as_ref().filter(|step| step.oci_bind) {
            config.binds.push(BindMount { source: step.dir.clone(), destination: StepContext::oci_destination().into() });
        }
        let backend = self.backend.clone();
        let commands = self.commands_tx.clone();
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Some(dir) = config.log_path.parent() {
                let _ = tokio::fs::create_dir_all(dir).await;
            }
            let starter = backend.clone();
            let started = tokio::task::spawn_blocking(move || {
                if let Some(step) = step {
                    step.materialize(store.as_ref()).map_err(|e| format!("cannot write the step's context: {e}"))?;
                }
                starter.start(&config).map_err(|e| e.to_string())
            })
            .await;
            let input = match started {
                Ok(Ok(started)) => {
                    let input =
                        Input::CellStarted { cell_id: cell_id.clone(), pid: started.pid, pid_start_time: started.pid_start_time };
                    let _ = commands.send(Command::Cell { workload_id: workload_id.clone(), input });
                    watch(backend, commands, workload_id, cell_id, started).await;
                    return;
                }
                Ok(Err(e)) => Input::CellStartFailed { cell_id, error: e },
                Err(e) => Input::CellStartFailed { cell_id, error: format!("start task failed: {e}") },
            };
            let _ = commands.send(Command::Cell { workload_id, input });
        });
    }

    fn watch_cell(&self, workload_id: String, cell_id: String, started: StartedCell) {
        tokio::spawn(watch(self.backend.clone(), self.commands_tx.clone(), workload_id, cell_id, started));
    }

    fn signal_cell(&self, cell_id: String, signal: StopSignal) {
        let backend = self.backend.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = backend.signal(&cell_id, matches!(signal, StopSignal::Kill)) {
                tracing::warn!(%cell_id, "signal failed: {e}");
            }
        });
    }
}

/// The blob store's artifact id of a `blob:sha256:<hex>` state uri.
fn blob_artifact_id(state_uri: &str) -> Option<String> {
    crate::checkpoint::blob_hex(state_uri).map(|hex| format!("sha256:{hex}"))
}

/// The service an `each-host` instance belongs to: `ID` of its consumer id `ID@HOST`.
fn each_host_group(consumer_workload_id: &str) -> Option<&str> {
    consumer_workload_id.rsplit_once('@').map(|(group, _)| group)
}

/// Folds every journaled event after `projection.last_seq` into it, a page at a time.
pub fn replay_tail(store: &dyn Store, projection: &mut Projection) -> Result<(), LoadError> {
    loop {
        let page = store.read_after(projection.last_seq, 10_000, None)?;
        if page.is_empty() {
            return Ok(());
        }
        for event in &page {
            projection.apply_event(event)?;
        }
    }
}

/// A new workload's `WorkloadInfo` (its `vmid` is assigned by `Projection::submit`).
pub(crate) fn new_workload_info(
    id: String,
    spec: &Spec,
    owner: String,
    consumer_workload_id: Option<String>,
    now: u64,
) -> WorkloadInfo {
    WorkloadInfo {
        id,
        vmid: 0,
        workload_type: spec.cell.isolation.as_str().to_string(),
        spec_id: spec.spec_id(),
        created_at: now / 1000,
        expires_at: spec.ttl_ms.map(|ttl| now.saturating_add(ttl).div_ceil(1000)),
        owner,
        replication: spec.replication.mode,
        restart_policy: spec.restart.policy,
        state_uri: None,
        consumer_workload_id,
    }
}

/// Waits for a cell's shim to exit (its pidfd turns readable), then reports how the cell ended.
async fn watch(
    backend: Arc<ProcessBackend>,
    commands: mpsc::UnboundedSender<Command>,
    workload_id: String,
    cell_id: String,
    started: StartedCell,
) {
    let exit = wait_exit(backend, &cell_id, started).await;
    let _ = commands.send(Command::Cell { workload_id, input: Input::CellExited { cell_id, exit } });
}

fn fatal(message: &str) -> ! {
    tracing::error!("fatal: {message}");
    eprintln!("warden: fatal: {message}; exiting so the next start replays the journal");
    std::process::exit(70)
}

#[derive(Debug, Default, Clone, Copy)]
pub struct RecoverySummary {
    pub adopted: usize,
    pub exited_while_down: usize,
    pub lost: usize,
    pub started_again: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] warden_store::StoreError),
    #[error("snapshot at seq {seq} is unreadable: {reason}")]
    Snapshot { seq: u64, reason: String },
    #[error("journal replay failed: {0}")]
    Replay(#[from] warden_core::projection::ReplayError),
}
