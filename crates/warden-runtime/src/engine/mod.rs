//! The engine: one task owns the projection. Inputs come in, the core decides, the decisions are
//! journaled (one fsync per batch: group commit), and only then are effects carried out and
//! callers answered.
//!
//! Architecture invariant: nothing is acted on or acknowledged before its event is durable. The
//! engine's `live` projection runs ahead of the journal while a batch is being decided; readers
//! only ever see `shared`, which is folded from sealed, durable events — exactly what a replay
//! after a crash would rebuild. Debug builds assert `shared == live` after every batch.
//!
//! Rooms: this file is the command loop, batching and the commit; `command` the inputs and how
//! callers are answered; `workloads` submissions and stops; `hosts` agents' requests (decided by
//! `warden_core::cluster`) and the commands they are sent; `local` the control plane's own
//! cells; `jobs` and `rollouts` the glue of durable jobs and rollouts. Every decision records its
//! events through one `warden_core::batch::Batch`.

mod command;
mod hosts;
pub mod jobs;
mod local;
pub mod rollouts;
mod workloads;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use warden_cell::ProcessBackend;
use warden_core::batch::{Batch, Order};
use warden_core::cluster::{ClusterConfig, ClusterState};
use warden_core::workload::{Effect, Input, StopSignal};
use warden_core::{CloudEvent, EventData, NewEvent, Projection};
use warden_store::Store;

use crate::checkpoint::Keys;
use crate::cluster::Queues;
use crate::proto::CommandKind;
use crate::secrets::SecretKey;

pub use crate::clock::{now_ms, random_id};
use crate::error::error_chain;
pub use crate::error::ApiError;
pub use command::{Command, Manifests, Reply};
pub use local::RecoverySummary;

use command::{send, AnswerContext, Pending};
use hosts::Dispatch;
use jobs::Jobs;
use local::LocalCells;

/// Snapshot the projection every this many events by default, so start-up replays only the tail.
pub const DEFAULT_SNAPSHOT_EVERY_N_EVENTS: u64 = 10_000;
const MAX_BATCH: usize = 1024;

pub struct EngineHandle {
    pub commands: mpsc::UnboundedSender<Command>,
    pub shared: Arc<RwLock<Projection>>,
    pub events: broadcast::Sender<Arc<CloudEvent>>,
    pub manifests: Manifests,
    pub queues: Arc<Queues>,
}

/// Where the engine's inputs come from and its durable state goes.
pub struct EngineConfig {
    /// The control plane's node name (CloudEvents `source`, workload views).
    pub host: String,
    pub logs_dir: PathBuf,
    pub jobs_dir: PathBuf,
    pub keys_dir: PathBuf,
    /// Opens secrets when a cell that refers to one starts (`<data-dir>/secrets.key`).
    pub secrets: Arc<SecretKey>,
    pub snapshot_every_n_events: u64,
    pub cluster: ClusterConfig,
    /// `warden up`'s own node, which runs cells without a lease; `None` for `warden server`.
    pub local_host: Option<String>,
}

pub struct Engine {
    /// The projection as decided so far; ahead of `shared` only while a batch is decided.
    live: Projection,
    /// The projection of durable events, which readers see.
    shared: Arc<RwLock<Projection>>,
    store: Arc<dyn Store>,
    events: broadcast::Sender<Arc<CloudEvent>>,
    commands: mpsc::UnboundedReceiver<Command>,
    source: String,
    host: String,
    last_snapshot_seq: u64,
    snapshot_every_n_events: u64,
    cluster: ClusterState,
    queues: Arc<Queues>,
    jobs: Jobs,
    manifests: Manifests,
    local: LocalCells,
    /// Checkpointed workloads' keys (`<data-dir>/keys`, see `checkpoint.rs`).
    keys: Keys,
    /// Opens secrets for the cells that start (`secrets.rs`).
    secrets: Arc<SecretKey>,
}

/// What one batch decided, taken out of its `Batch` to be journaled and carried out.
struct Decided {
    events: Vec<EventData>,
    effects: Vec<Effect>,
    orders: Vec<Order>,
    artifacts: Vec<warden_core::canonical::Artifact>,
    superseded_blobs: Vec<String>,
    finished_runs: Vec<String>,
}

impl Engine {
    /// Rebuilds the projection from the latest snapshot plus the journal tail.
    pub fn load(
        store: Arc<dyn Store>,
        backend: Arc<ProcessBackend>,
        config: EngineConfig,
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
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(RwLock::new(projection.clone()));
        let (jobs, manifests) = Jobs::load(&projection, store.clone(), config.jobs_dir);
        let cluster = ClusterState::after_restart(config.cluster, config.local_host, &projection, now_ms());
        let queues = Arc::new(Queues::new(random_id("i-")));
        let handle = EngineHandle {
            commands: commands_tx.clone(),
            shared: shared.clone(),
            events: events.clone(),
            manifests: manifests.clone(),
            queues: queues.clone(),
        };
        let engine = Engine {
            live: projection,
            shared,
            store: store.clone(),
            events,
            commands,
            source: format!("/warden/{}", config.host),
            host: config.host,
            last_snapshot_seq,
            snapshot_every_n_events: config.snapshot_every_n_events.max(1),
            cluster,
            queues,
            jobs,
            manifests,
            local: LocalCells {
                backend,
                logs_dir: config.logs_dir,
                commands: commands_tx,
                store,
                secrets: config.secrets.clone(),
            },
            keys: Keys::new(config.keys_dir),
            secrets: config.secrets,
        };
        Ok((engine, handle))
    }

    /// The control plane listens from now on: the restart grace of hosts and leases counts from
    /// here, not from the load (see `ClusterState::serving`).
    pub fn serving(&mut self) {
        self.cluster.serving(&self.live, now_ms());
    }

    /// The seq of the snapshot the projection was loaded from (0: replayed from the start).
    pub fn loaded_snapshot_seq(&self) -> u64 {
        self.last_snapshot_seq
    }

    /// Re-adopts every cell the journal says exists: live cells are watched again, cells that
    /// ended while nobody watched report their exit, starts that never happened happen now.
    /// Never starts a cell whose shim is alive.
    pub fn recover_cells(&mut self) -> RecoverySummary {
        let (summary, starts) = self.local.recover(&self.live, &mut self.cluster, &mut self.jobs);
        for effect in starts {
            self.carry_out(effect);
        }
        summary
    }

    pub async fn run(mut self) {
        loop {
            let now = now_ms();
            let deadline = [
                self.live.next_deadline_ms(),
                self.jobs.next_wake_ms(&self.live),
                self.cluster.next_wake_ms(&self.live),
                rollouts::next_wake_ms(&self.live, now),
            ]
            .into_iter()
            .flatten()
            .min();
            let sleep = match deadline {
                // Capped, so a deadline centuries away cannot overflow the timer.
                Some(at_ms) => Duration::from_millis(at_ms.saturating_sub(now).min(3_600_000)),
                None => Duration::from_secs(3600),
            };
            let mut commands = Vec::new();
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => commands.push(command),
                    None => return,
                },
                _ = tokio::time::sleep(sleep) => {}
            }
            while commands.len() < MAX_BATCH {
                match self.commands.try_recv() {
                    Ok(command) => commands.push(command),
                    Err(_) => break,
                }
            }
            self.handle_batch(commands).await;
        }
    }

    /// Decides a batch of commands and whatever is due, journals it in one append, then acts
    /// and answers.
    async fn handle_batch(&mut self, commands: Vec<Command>) {
        let now = now_ms();
        let mut pending = Vec::new();
        let decided = self.decide(commands, now, &mut pending);
        if !decided.events.is_empty() || !decided.artifacts.is_empty() {
            self.commit(decided.events, decided.artifacts, now).await;
        }
        self.after_commit(decided.superseded_blobs, decided.finished_runs);
        // Hosts get their orders in the order they were decided, before the cells the batch
        // starts (a promoted standby's `Disarm` before its `Start`), and rollout orders last.
        let rollout_orders = self.dispatch(decided.orders);
        for effect in decided.effects {
            self.carry_out(effect);
        }
        let dispatch = self.to_hosts();
        for order in rollout_orders {
            dispatch.order(order);
        }
        let shared = self.shared.read().expect("projection lock");
        let context = AnswerContext { host: &self.host, manifests: &self.manifests, now_ms: now_ms() };
        for waiting in pending {
            waiting.answer(&shared, &context);
        }
    }

    /// Everything a batch decides, in the order replay will apply it: each command, then what
    /// is due (hosts gone silent, `each-host` followers, rollouts, workload timers, job steps),
    /// then where every new cell goes and which standbys are armed.
    fn decide(&mut self, commands: Vec<Command>, now: u64, pending: &mut Vec<Pending>) -> Decided {
        let Engine { live, cluster, queues, jobs, keys, .. } = self;
        let mut batch = Batch::new(live, now);
        for command in commands {
            match command {
                Command::Submit { spec, owner, consumer_workload_id, reply } => {
                    workloads::submit(&mut batch, keys, spec, owner, consumer_workload_id, reply, pending)
                }
                Command::Stop { id, caller, reply } => workloads::stop(&mut batch, id, &caller, reply, pending),
                Command::Cell { workload_id, input } => {
                    if let Err(e) = batch.advance(&workload_id, &input) {
                        tracing::warn!("ignoring cell report: {e}");
                    }
                }
                Command::JobRun { manifest, input, owner, reply } => {
                    if let Some(error) = jobs::missing_secret(batch.live(), &manifest) {
                        send(reply, Err(error));
                        continue;
                    }
                    let run_id = jobs.start(&mut batch, manifest, input, owner);
                    pending.push(Pending::Run { run_id, reply });
                }
                Command::JobCancel { run_id, caller, reply } => match jobs.cancel(&mut batch, &run_id, &caller) {
                    Ok(()) => pending.push(Pending::Run { run_id, reply }),
                    Err(error) => send(reply, Err(error)),
                },
                Command::Enroll { request, principal, reply } => {
                    hosts::enroll(cluster, &mut batch, request, principal, reply, pending)
                }
                Command::Heartbeat { principal, heartbeat, reply } => {
                    hosts::heartbeat(cluster, &mut batch, queues, &principal, heartbeat, reply, pending)
                }
                Command::Drain { host, drain, reply } => hosts::drain(cluster, &mut batch, &host, drain, reply, pending),
                Command::HostRemove { host, caller, reply } => hosts::remove(cluster, &mut batch, &host, &caller, reply, pending),
                Command::TokenCreate { token_id, secret_sha256, ttl_ms, max_uses, caller, reply } => {
                    match cluster.create_join_token(&mut batch, &token_id, &secret_sha256, ttl_ms, max_uses, &caller) {
                        Ok(()) => pending.push(Pending::Token { token_id, reply }),
                        Err(error) => send(reply, Err(error.into())),
                    }
                }
                Command::TokenRevoke { token_id, reply } => match cluster.revoke_join_token(&mut batch, &token_id) {
                    Ok(()) => pending.push(Pending::Token { token_id, reply }),
                    Err(error) => send(reply, Err(error.into())),
                },
                Command::Revoke { principal, request, reply } => {
                    hosts::revoke(cluster, &mut batch, &principal, &request, reply, pending)
                }
                Command::Acquire { principal, request, reply } => {
                    hosts::acquire(cluster, &mut batch, &principal, &request, reply, pending)
                }
                Command::RolloutStart { request, caller, reply } => match rollouts::start(&mut batch, &request, &caller) {
                    Ok(id) => pending.push(Pending::Rollout { id, reply }),
                    Err(error) => send(reply, Err(error)),
                },
                Command::RolloutControl { id, control, caller, reply } => {
                    match rollouts::control(&mut batch, &id, control, &caller) {
                        Ok(()) => pending.push(Pending::Rollout { id, reply }),
                        Err(error) => send(reply, Err(error)),
                    }
                }
                Command::KeyAdd { request, reply } => {
                    let name = request.name.clone();
                    match warden_core::keys::add(&batch.live().keys, request) {
                        Ok(added) => {
                            batch.record(added);
                            pending.push(Pending::Key { name, reply });
                        }
                        Err(error) => send(reply, Err(error.into())),
                    }
                }
                Command::KeyRevoke { name, reply } => match warden_core::keys::revoke(&batch.live().keys, &name) {
                    Ok(revoked) => {
                        batch.record(revoked);
                        pending.push(Pending::Done { reply });
                    }
                    Err(error) => send(reply, Err(error.into())),
                },
                Command::SecretPut { namespace, name, version, sealed, put_by, reply } => {
                    match warden_core::secrets::put(&batch.live().secrets, &namespace, &name, version, sealed, &put_by) {
                        Ok(put) => {
                            batch.record(put);
                            pending.push(Pending::Secret { namespace, name, reply });
                        }
                        Err(error) => send(reply, Err(error.into())),
                    }
                }
                Command::SecretRemove { namespace, name, removed_by, reply } => {
                    match warden_core::secrets::remove(&batch.live().secrets, &namespace, &name, &removed_by) {
                        Ok(removed) => {
                            tracing::info!(%namespace, secret = %name, "secret removed by {removed_by}");
                            batch.record(removed);
                            pending.push(Pending::Done { reply });
                        }
                        Err(error) => send(reply, Err(error.into())),
                    }
                }
                Command::RolloutReport { principal, report, reply } => {
                    hosts::rollout_report(cluster, &mut batch, &principal, report, reply, pending)
                }
            }
        }
        cluster.check_hosts(&mut batch);
        workloads::follow_each_host(&mut batch, keys);
        rollouts::maintain(&mut batch);
        for id in batch.live().due(now) {
            if let Err(e) = batch.advance(&id, &Input::Tick) {
                tracing::warn!("tick: {e}");
            }
        }
        // Job steps last: they read the outcome of every workload event decided above.
        jobs.touch(&batch.events);
        jobs.touch_due(batch.live(), now);
        jobs.step(&mut batch);
        // Every new cell gets its host (and, on a cluster host, its lease) in this same append.
        cluster.place(&mut batch);
        cluster.maintain_standbys(&mut batch);
        for ignored in &batch.ignored {
            tracing::debug!(workload_id = %ignored.workload_id, "ignoring a report: {}", ignored.error);
        }
        let Batch { events, effects, orders, artifacts, superseded_blobs, finished_runs, .. } = batch;
        Decided { events, effects, orders, artifacts, superseded_blobs, finished_runs }
    }

    /// Clean-up a durable batch allows: checkpoints a newer one superseded (nothing will restore
    /// them: only the current cell's reports move `state_uri`, and it already started), and the
    /// attempt directories of runs that ended.
    fn after_commit(&self, superseded_blobs: Vec<String>, finished_runs: Vec<String>) {
        if !superseded_blobs.is_empty() {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = store.delete_artifacts(superseded_blobs) {
                    tracing::warn!("cannot delete superseded checkpoints: {}", error_chain(&e));
                }
            });
        }
        for run_id in finished_runs {
            let dir = self.jobs.run_dir(&run_id);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!("cannot remove {}: {e}", dir.display());
                    }
                }
            });
        }
    }

    /// Sends the batch's orders to their hosts; rollout orders are held back (each once per
    /// host) and returned, to be sent after the batch's cells.
    fn dispatch(&self, orders: Vec<Order>) -> Vec<Order> {
        let dispatch = self.to_hosts();
        let mut rollout_orders = BTreeSet::new();
        for order in orders {
            match order {
                Order::Rollout { host, rollout_id } => {
                    rollout_orders.insert((host, rollout_id));
                }
                order => dispatch.order(order),
            }
        }
        rollout_orders.into_iter().map(|(host, rollout_id)| Order::Rollout { host, rollout_id }).collect()
    }

    /// Journals `events` durably, folds them into the readers' projection and publishes them.
    /// A journal failure is fatal: the process exits and the next start replays the journal,
    /// because continuing would act on decisions that are not durable.
    async fn commit(&mut self, events: Vec<EventData>, artifacts: Vec<warden_core::canonical::Artifact>, now: u64) {
        let new_events: Vec<NewEvent> = events
            .into_iter()
            .map(|data| NewEvent {
                id: crate::clock::event_id(),
                source: self.source.clone(),
                time_ms: now,
                subject: data.subject().map(str::to_owned),
                data,
            })
            .collect();
        let store = self.store.clone();
        let sealed = match tokio::task::spawn_blocking(move || store.append_with_artifacts(artifacts, new_events)).await {
            Ok(Ok(sealed)) => sealed,
            Ok(Err(e)) => fatal(&format!("journal append failed: {}", error_chain(&e))),
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
                Some(host) => self.queues.push(&host, CommandKind::Remove { cell_id }),
                None => self.local.remove(cell_id),
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
                tracing::warn!("snapshot at seq {seq} failed (start-up will replay more): {}", error_chain(&e));
            }
        });
    }

    /// What renders decisions into agents' commands and queues them.
    fn to_hosts(&self) -> Dispatch<'_> {
        Dispatch { live: &self.live, cluster: &self.cluster, queues: &self.queues, keys: &self.keys, secrets: &self.secrets }
    }

    /// Starts or signals a cell: here, or through its host's agent.
    fn carry_out(&self, effect: Effect) {
        let remote = |workload_id: &str| {
            let host = self.live.workloads.get(workload_id)?.current_host()?;
            (!self.cluster.is_local(host)).then(|| host.to_string())
        };
        let dispatch = self.to_hosts();
        match effect {
            Effect::StartCell { workload_id, cell_id } => match remote(&workload_id) {
                Some(host) => {
                    if let Err(error) = dispatch.start(&host, &self.live.workloads[&workload_id], cell_id.clone()) {
                        // Like Kubernetes' CreateContainerConfigError: the start fails, naming
                        // the secret (never a value); the restart policy decides what follows.
                        let input = Input::CellStartFailed { cell_id, error: error_chain(&error) };
                        let _ = self.local.commands.send(Command::Cell { workload_id, input });
                    }
                }
                None => self.local.start(&self.live, &self.jobs, workload_id, cell_id),
            },
            Effect::SignalCell { workload_id, cell_id, signal } => match remote(&workload_id) {
                Some(host) => dispatch.order(Order::Signal { host, cell_id, kill: matches!(signal, StopSignal::Kill) }),
                None => self.local.signal(cell_id, signal),
            },
        }
    }
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

fn fatal(message: &str) -> ! {
    tracing::error!("fatal: {message}");
    eprintln!("warden: fatal: {message}; exiting so the next start replays the journal");
    std::process::exit(70)
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] warden_store::StoreError),
    #[error("snapshot at seq {seq} is unreadable: {reason}")]
    Snapshot { seq: u64, reason: String },
    #[error("journal replay failed")]
    Replay(#[from] warden_core::projection::ReplayError),
}
