//! Durable jobs in the engine: turns each run's `next_actions` into journaled kernel events and
//! step workloads, and a step workload's end into its state's outcome.
//!
//! Every attempt of a state runs as an ordinary workload (restart policy `never`, the state's
//! `timeout` as its `ttl`) with the id `<run_id>.<state_id>.<attempt>`, so steps get everything
//! workloads have: every isolation mode, logs, re-adoption after a crash. An attempt's
//! `StateEntered` and its workload's `WorkloadSubmitted` are journaled in the same append, so
//! after any crash an open attempt has a workload, and its outcome is read from that workload:
//!
//! * still running (re-adopted) → nothing to do, it is supervised as before;
//! * exited 0 → `StateCompleted` with what it left in its `WARDEN_CONTEXT` file;
//! * anything else → `StateFailed`, retried within the state's budget. An attempt whose cell
//!   ended while warden was down, or vanished, is `orphaned` (the seed's rule), with what is known
//!   in the message.
//!
//! Artifacts (the manifest, every context snapshot) go into the store in the same transaction as
//! the event that names them, so no event ever refers to an artifact that was not kept.

use std::collections::{BTreeSet, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use warden_core::batch::Batch;
use warden_core::canonical::Artifact;
use warden_core::job::{JobEvent, JobManifest, KernelEvent, RunStatus, StateError, StateSpec, ORPHANED};
use warden_core::spec::{Isolation, RestartSpec};
use warden_core::workload::Input;
use warden_core::{EventData, Phase, Projection, RestartPolicy, Spec, Workload};
use warden_store::Store;

use super::Manifests;
use crate::clock::random_id;
use crate::error::ApiError;
use crate::view::{run_of_step_workload, step_workload_id};

/// A step leaving more than this in its context file fails with `bad_context`.
pub const MAX_CONTEXT_BYTES: u64 = 16 << 20;
/// Where an OCI step's attempt directory is bound inside its container.
const OCI_JOB_DIR: &str = "/run/warden/job";
/// Decide → journal rounds per run per batch (close, then schedule/enter/finish).
const MAX_ROUNDS: usize = 8;

pub struct Jobs {
    manifests: Manifests,
    store: Arc<dyn Store>,
    jobs_dir: PathBuf,
    /// Runs that must be looked at in the current batch.
    dirty: BTreeSet<String>,
    /// Runs not finished yet.
    active: BTreeSet<String>,
    /// Step workloads whose cells ended (or vanished) while warden was down.
    ended_while_down: HashSet<String>,
}

impl Jobs {
    /// Picks up every unfinished run of `projection`; all of them are looked at in the first batch,
    /// which is what resumes them after a restart.
    pub fn load(projection: &Projection, store: Arc<dyn Store>, jobs_dir: PathBuf) -> (Jobs, Manifests) {
        let manifests: Manifests = Default::default();
        let active: BTreeSet<String> =
            projection.runs.values().filter(|run| run.status.is_none()).map(|run| run.run_id.clone()).collect();
        let jobs = Jobs {
            manifests: manifests.clone(),
            store,
            jobs_dir,
            dirty: active.clone(),
            active,
            ended_while_down: HashSet::new(),
        };
        // A crash between a run's end and the removal of its attempt directories leaves them
        // behind; a run that is not active has no use for them.
        if let Ok(entries) = std::fs::read_dir(&jobs.jobs_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !jobs.active.contains(&name) {
                    if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                        tracing::warn!("cannot remove {}: {e}", entry.path().display());
                    }
                }
            }
        }
        let wanted: BTreeSet<&str> = projection.runs.values().map(|run| run.manifest_id.as_str()).collect();
        for id in wanted {
            if let Err(e) = jobs.manifest(id) {
                tracing::error!("job manifest {id}: {}", crate::error::error_chain(&e));
            }
        }
        (jobs, manifests)
    }

    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Notes that `workload_id`'s cell ended while nobody watched it.
    pub fn ended_while_down(&mut self, workload_id: &str) {
        self.ended_while_down.insert(workload_id.to_string());
    }

    /// A manifest by id: from the cache, else read (verified) from the store and cached.
    fn manifest(&self, id: &str) -> Result<Arc<JobManifest>, ContextError> {
        if let Some(manifest) = self.manifests.read().expect("manifests lock").get(id) {
            return Ok(manifest.clone());
        }
        let bytes = self
            .store
            .get_artifact(id)
            .map_err(|source| ContextError::Read { id: id.to_string(), source })?
            .ok_or_else(|| ContextError::Missing { id: id.to_string() })?;
        let manifest: JobManifest =
            serde_json::from_slice(&bytes).map_err(|source| ContextError::NotJson { id: id.to_string(), source })?;
        let manifest = Arc::new(manifest);
        self.manifests.write().expect("manifests lock").insert(id.to_string(), manifest.clone());
        Ok(manifest)
    }

    /// Journals a new run of `manifest` on `input`; returns its id.
    pub fn start(&mut self, batch: &mut Batch, manifest: JobManifest, input: Value, owner: String) -> String {
        let run_id = random_id("r-");
        let manifest_artifact = Artifact::of_json(&manifest);
        let manifest_id = batch.artifact(manifest_artifact);
        let initial_snapshot_id = batch.artifact(Artifact::of_json(&input));
        self.manifests.write().expect("manifests lock").entry(manifest_id.clone()).or_insert_with(|| Arc::new(manifest));
        let event = KernelEvent::RunStarted { op_id: run_id.clone(), manifest_id, initial_snapshot_id };
        record(batch, &run_id, Some(owner), event);
        self.active.insert(run_id.clone());
        self.dirty.insert(run_id.clone());
        run_id
    }

    /// Stops the run's running steps and ends it `cancelled`.
    pub fn cancel(&mut self, batch: &mut Batch, run_id: &str, caller: &str) -> Result<(), ApiError> {
        let run = batch.live().runs.get(run_id).ok_or_else(|| ApiError::NotFound(format!("no job run {run_id}")))?;
        if let Some(status) = run.status {
            return Err(ApiError::Conflict(format!("run {run_id} already ended: {}", status.as_str())));
        }
        let open: Vec<(String, u32)> = run.fold.open_attempts().map(|(state, attempt)| (state.to_string(), attempt)).collect();
        for (state_id, attempt) in open {
            let workload_id = step_workload_id(run_id, &state_id, attempt);
            if batch.live().workloads.get(&workload_id).is_some_and(|w| !w.phase.is_terminal()) {
                if let Err(e) = batch.advance(&workload_id, &Input::Stop) {
                    tracing::warn!(%workload_id, "cancel: {e}");
                }
            }
            let error = StateError { code: "cancelled".into(), message: format!("run cancelled by {caller}"), retryable: false };
            record(batch, run_id, None, KernelEvent::StateFailed { state_id, error, failure_snapshot_id: None });
        }
        let end = KernelEvent::RunCompleted { status: RunStatus::Cancelled, final_snapshot_id: None };
        record(batch, run_id, None, end);
        self.finish(run_id, batch);
        Ok(())
    }

    fn finish(&mut self, run_id: &str, batch: &mut Batch) {
        self.active.remove(run_id);
        self.dirty.remove(run_id);
        batch.finished_runs.push(run_id.to_string());
    }

    /// Marks the runs whose step workloads these events are about.
    pub fn touch(&mut self, events: &[EventData]) {
        for event in events {
            if let Some(run_id) = event.workload_id().and_then(run_of_step_workload) {
                if self.active.contains(run_id) {
                    self.dirty.insert(run_id.to_string());
                }
            }
        }
    }

    /// Marks the runs with a retry due.
    pub fn touch_due(&mut self, live: &Projection, now: u64) {
        for run_id in &self.active {
            if live.runs.get(run_id).and_then(|run| run.fold.next_wake_ms()).is_some_and(|at| at <= now) {
                self.dirty.insert(run_id.clone());
            }
        }
    }

    /// When a run next has something to do on its own (a retry's backoff ends).
    pub fn next_wake_ms(&self, live: &Projection) -> Option<u64> {
        if self.is_dirty() {
            return Some(0);
        }
        self.active.iter().filter_map(|run_id| live.runs.get(run_id)?.fold.next_wake_ms()).min()
    }

    /// Brings every marked run up to date: closes attempts whose workloads ended, schedules
    /// retries, enters what is ready, finishes what is done.
    pub fn step(&mut self, batch: &mut Batch) {
        while let Some(run_id) = self.dirty.pop_first() {
            let Some(run) = batch.live().runs.get(&run_id) else { continue };
            if run.status.is_some() {
                self.active.remove(&run_id);
                continue;
            }
            let manifest = match self.manifest(&run.manifest_id) {
                Ok(manifest) => manifest,
                Err(e) => {
                    tracing::error!(%run_id, "cannot resume: manifest {}: {}", run.manifest_id, crate::error::error_chain(&e));
                    continue;
                }
            };
            for _ in 0..MAX_ROUNDS {
                if !self.step_run(batch, &manifest, &run_id) {
                    break;
                }
            }
        }
    }

    /// One round for one run; whether it journaled anything.
    fn step_run(&mut self, batch: &mut Batch, manifest: &JobManifest, run_id: &str) -> bool {
        let Some(run) = batch.live().runs.get(run_id) else { return false };
        let resume = run.fold.next_actions(manifest, batch.now_ms);
        if resume.done {
            return false;
        }
        let mut decided = Vec::new();
        for open in &resume.orphaned {
            let workload_id = step_workload_id(run_id, &open.state_id, open.attempt);
            match batch.live().workloads.get(&workload_id) {
                None => decided.push(open.orphaned_failure()),
                Some(workload) if !workload.phase.is_terminal() => {} // still ours: supervised as usual
                Some(workload) => {
                    let workload = workload.clone();
                    let path = self.context_path(run_id, &open.state_id, open.attempt);
                    let ended_while_down = self.ended_while_down.contains(&workload_id);
                    decided.push(outcome(&open.state_id, &workload, &path, ended_while_down, batch));
                }
            }
        }
        if !decided.is_empty() {
            for event in decided {
                record(batch, run_id, None, event);
            }
            return true;
        }

        for scheduled in &resume.schedule {
            decided.push(scheduled.event());
        }
        for event in decided.drain(..) {
            record(batch, run_id, None, event);
        }
        let mut progressed = !resume.schedule.is_empty();
        for enter in &resume.enter {
            let Some(spec) = manifest.state(&enter.state_id) else { continue };
            let base_snapshot_id = match self.base(&enter.base_snapshot_ids, batch) {
                Ok(id) => id,
                Err(e) => {
                    tracing::error!(%run_id, state = %enter.state_id, "cannot build the base context: {}", crate::error::error_chain(&e));
                    continue;
                }
            };
            let event = KernelEvent::StateEntered { state_id: enter.state_id.clone(), attempt: enter.attempt, base_snapshot_id };
            record(batch, run_id, None, event);
            let owner = batch.live().runs[run_id].owner.clone();
            let workload_id = step_workload_id(run_id, &enter.state_id, enter.attempt);
            let step = self.step_spec(manifest, spec, run_id, enter.attempt);
            batch.submit(step.workload_info(workload_id, owner, None, batch.now_ms), step, None);
            progressed = true;
        }
        if let Some(finish) = resume.finish {
            let final_snapshot_id = match (finish.status, finish.snapshot_ids.as_slice()) {
                (_, []) => None,
                (RunStatus::Completed, ids) => match self.base(ids, batch) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        tracing::error!(%run_id, "cannot build the final context: {}", crate::error::error_chain(&e));
                        return progressed;
                    }
                },
                (_, [first, ..]) => Some(first.clone()),
            };
            record(batch, run_id, None, KernelEvent::RunCompleted { status: finish.status, final_snapshot_id });
            self.finish(run_id, batch);
            return false;
        }
        progressed
    }

    /// One snapshot id for a list of them: itself, or their merge (a new artifact).
    fn base(&self, ids: &[String], batch: &mut Batch) -> Result<String, ContextError> {
        if let [one] = ids {
            return Ok(one.clone());
        }
        let mut merged = Value::Object(Default::default());
        for id in ids {
            let pending = batch.artifacts.iter().find(|a| a.id == *id).map(|a| a.bytes.clone());
            let bytes = match pending {
                Some(bytes) => bytes,
                None => self
                    .store
                    .get_artifact(id)
                    .map_err(|source| ContextError::Read { id: id.clone(), source })?
                    .ok_or_else(|| ContextError::Missing { id: id.clone() })?,
            };
            let value: Value =
                serde_json::from_slice(&bytes).map_err(|source| ContextError::NotJson { id: id.clone(), source })?;
            merge(&mut merged, value);
        }
        Ok(batch.artifact(Artifact::of_json(&merged)))
    }

    /// The workload spec of one attempt: the state's cell, never restarted, its timeout as ttl.
    fn step_spec(&self, manifest: &JobManifest, spec: &StateSpec, run_id: &str, attempt: u32) -> Spec {
        let mut cell = spec.cell.clone();
        let context = match cell.isolation {
            Isolation::Oci => format!("{OCI_JOB_DIR}/context.json"),
            Isolation::Process | Isolation::Cell => self.context_path(run_id, &spec.id, attempt).display().to_string(),
        };
        cell.env.insert("WARDEN_CONTEXT".into(), context);
        cell.env.insert("WARDEN_RUN_ID".into(), run_id.to_string());
        cell.env.insert("WARDEN_STATE_ID".into(), spec.id.clone());
        cell.env.insert("WARDEN_ATTEMPT".into(), attempt.to_string());
        Spec {
            name: format!("{}.{}", manifest.name, spec.id),
            namespace: manifest.namespace.clone(),
            ttl_ms: spec.timeout_ms,
            cell,
            restart: RestartSpec {
                policy: RestartPolicy::Never,
                backoff_ms: warden_core::spec::DEFAULT_BACKOFF_MS,
                backoff_max_ms: warden_core::spec::DEFAULT_BACKOFF_MAX_MS,
                backoff_reset_ms: warden_core::spec::DEFAULT_BACKOFF_RESET_MS,
            },
            replication: warden_core::spec::ReplicationSpec::none(),
            logs: warden_core::spec::LogSpec {
                max_size_bytes: warden_core::spec::DEFAULT_LOG_MAX_SIZE_BYTES,
                max_files: warden_core::spec::DEFAULT_LOG_MAX_FILES,
            },
            placement: None,
        }
    }

    fn attempt_dir(&self, run_id: &str, state_id: &str, attempt: u32) -> PathBuf {
        self.jobs_dir.join(run_id).join(format!("{state_id}.{attempt}"))
    }

    fn context_path(&self, run_id: &str, state_id: &str, attempt: u32) -> PathBuf {
        self.attempt_dir(run_id, state_id, attempt).join("context.json")
    }

    /// For a step workload about to start: its attempt directory, where its base context must
    /// be written first, and that base's snapshot id. `None` for any other workload.
    pub fn step_context(&self, live: &Projection, workload_id: &str) -> Option<StepContext> {
        let run_id = run_of_step_workload(workload_id)?;
        let run = live.runs.get(run_id)?;
        let rest = &workload_id[run_id.len() + 1..];
        let (state_id, attempt) = rest.rsplit_once('.')?;
        let open = run.open.get(state_id).filter(|open| open.attempt.to_string() == attempt)?;
        let dir = self.attempt_dir(run_id, state_id, open.attempt);
        let oci_bind = live.workloads.get(workload_id).is_some_and(|w| w.spec.cell.isolation == Isolation::Oci);
        Some(StepContext { dir, base_snapshot_id: open.base_snapshot_id.clone(), oci_bind })
    }

    /// Where a finished run's attempt directories are.
    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.jobs_dir.join(run_id)
    }
}

pub struct StepContext {
    pub dir: PathBuf,
    pub base_snapshot_id: String,
    /// Bind `dir` at `/run/warden/job` (OCI cells, whose root is their own).
    pub oci_bind: bool,
}

impl StepContext {
    pub fn oci_destination() -> &'static str {
        OCI_JOB_DIR
    }

    /// Writes the base context into `dir/context.json` (atomically: a half-written file is never
    /// what a step reads), and gives the attempt dir (0700) to the step's `user`, who must write
    /// the context; the dirs above it are 0711, so other cells can pass but not list them.
    pub fn materialize(&self, store: &dyn Store, user: warden_cell::CellUser) -> Result<(), ContextError> {
        let id = &self.base_snapshot_id;
        let bytes = store
            .get_artifact(id)
            .map_err(|source| ContextError::Read { id: id.clone(), source })?
            .ok_or_else(|| ContextError::Missing { id: id.clone() })?;
        let write = |path: &Path, result: std::io::Result<()>| {
            result.map_err(|source| ContextError::Write { path: path.to_path_buf(), source })
        };
        write(&self.dir, std::fs::create_dir_all(&self.dir))?;
        let mode = |path: &Path, mode: u32| write(path, std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)));
        for passable in self.dir.ancestors().skip(1).take(2) {
            mode(passable, 0o711)?;
        }
        mode(&self.dir, 0o700)?;
        let tmp = self.dir.join(".context.json.tmp");
        write(&tmp, std::fs::write(&tmp, &bytes))?;
        write(&self.dir, std::fs::rename(&tmp, self.dir.join("context.json")))?;
        write(&self.dir, crate::cell_user::hand_over(&self.dir, user))
    }
}

/// Why a run's context (a snapshot, a manifest, an attempt's context file) could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot read artifact {id} from the journal")]
    Read {
        id: String,
        #[source]
        source: warden_store::StoreError,
    },
    #[error("artifact {id} is missing from the journal")]
    Missing { id: String },
    #[error("artifact {id} is not the JSON expected")]
    NotJson {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Records a kernel event of `run_id` in the batch.
fn record(batch: &mut Batch, run_id: &str, owner: Option<String>, event: KernelEvent) {
    batch.record(EventData::Job(JobEvent { run_id: run_id.to_string(), owner, event }));
}

/// How an attempt whose workload ended turned out.
fn outcome(state_id: &str, workload: &Workload, context: &Path, ended_while_down: bool, batch: &mut Batch) -> KernelEvent {
    let state_id = state_id.to_string();
    if workload.phase == Phase::Completed {
        return match read_context(context) {
            Ok(value) => KernelEvent::StateCompleted { state_id, context_snapshot_id: batch.artifact(Artifact::of_json(&value)) },
            Err(why) => KernelEvent::StateFailed {
                state_id,
                error: StateError { code: "bad_context".into(), message: why.to_string(), retryable: false },
                failure_snapshot_id: None,
            },
        };
    }
    let exit = workload.last_exit.as_ref().map(|record| &record.exit);
    let reason = exit.map_or("no cell ran".to_string(), |exit| exit.reason.clone());
    let (code, message, retryable) = match &workload.phase {
        Phase::Expired => {
            let limit = workload.spec.ttl_ms.map(warden_core::units::format_duration_ms).unwrap_or_default();
            ("timeout", format!("the attempt ran past its timeout of {limit} and was stopped"), true)
        }
        Phase::Stopped { reason } => ("stopped", format!("the step's workload was stopped: {reason}"), false),
        _ if ended_while_down => (ORPHANED, format!("the attempt ended while warden was down: {reason}"), true),
        _ => match exit {
            Some(exit) if exit.reason.starts_with("oom") => ("oom", reason, true),
            Some(exit) if exit.terminal_state == Some(warden_core::LifecycleTerminalState::Forced) => ("forced", reason, true),
            Some(exit) if exit.exit_code.is_some() => ("exit", reason, true),
            Some(exit) if exit.signal.is_some() => ("signal", reason, true),
            _ if workload.runs == 0 => ("start_failed", reason, true),
            _ => (ORPHANED, format!("the attempt's outcome is unknown: {reason}"), true),
        },
    };
    let failure_snapshot_id = read_context(context).ok().map(|value| batch.artifact(Artifact::of_json(&value)));
    KernelEvent::StateFailed { state_id, error: StateError { code: code.into(), message, retryable }, failure_snapshot_id }
}

/// What a step left in its context file: JSON, at most `MAX_CONTEXT_BYTES`.
fn read_context(path: &Path) -> Result<Value, StepContextError> {
    let unreadable = |source| StepContextError::Unreadable { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if meta.len() > MAX_CONTEXT_BYTES {
        return Err(StepContextError::TooLarge { bytes: meta.len() });
    }
    let bytes = std::fs::read(path).map_err(unreadable)?;
    serde_json::from_slice(&bytes).map_err(StepContextError::NotJson)
}

/// Why what a step left in `WARDEN_CONTEXT` is not its new context: the state's failure
/// message, shown to the user whole (its source is part of it).
#[derive(Debug, thiserror::Error)]
enum StepContextError {
    #[error("the step's WARDEN_CONTEXT file {} is unreadable: {source}", path.display())]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("the step left {bytes} bytes in WARDEN_CONTEXT; the limit is {MAX_CONTEXT_BYTES}")]
    TooLarge { bytes: u64 },
    #[error("the step left something that is not JSON in WARDEN_CONTEXT: {0}")]
    NotJson(serde_json::Error),
}

/// Merges `next` into `into`: objects key by key (later wins), anything else replaces.
fn merge(into: &mut Value, next: Value) {
    match (into, next) {
        (Value::Object(into), Value::Object(next)) => {
            for (key, value) in next {
                into.insert(key, value);
            }
        }
        (into, next) => *into = next,
    }
}

/// A refusal if a state of `manifest` refers to a secret that does not exist in its namespace.
pub fn missing_secret(live: &Projection, manifest: &JobManifest) -> Option<ApiError> {
    manifest.states.iter().find_map(|state| {
        crate::secrets::missing_secret(live, &manifest.namespace, &state.cell, &format!("state {:?}: ", state.id))
    })
}
