//! Durable jobs, the pure part: a manifest (a DAG of states), the kernel events a run journals,
//! and `next_actions`, which reads a run's history and says what the runtime must do now.
//!
//! A run is nothing but its journaled `KernelEvent`s. Whatever the runtime did before a crash,
//! `next_actions(manifest, history, now_ms)` on the surviving prefix of the journal says what to
//! journal and start next, so a resumed run carries on exactly where the journal says it was
//! (invariant 4): completed states are never entered again, attempts are bounded by the retry
//! budget even when every attempt dies with the supervisor, and bases are always the context
//! of completed work, never what a failed attempt left behind.
//!
//! ```text
//! RunStarted ─▶ StateEntered ─┬▶ StateCompleted ─▶ … dependents … ─▶ RunCompleted{completed}
//!                  ▲          └▶ StateFailed ─┬▶ RetryScheduled ─(backoff)─┘
//!                  └──────────────────────────┘  └▶ (no retries left) ─▶ RunCompleted{failed}
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::canonical::content_id;
use crate::spec::{duration, parse_strict, CellSpec, Invalid, RawCell, SpecError};

pub const DEFAULT_RETRY_BACKOFF_MS: u64 = 1_000;
pub const DEFAULT_RETRY_BACKOFF_MAX_MS: u64 = 60_000;
/// A generous cap: a budget above this is almost certainly a typo, and it bounds replay work.
pub const MAX_RETRY_ATTEMPTS: u32 = 1_000;

/// A validated job manifest. Its canonical JSON is what `manifest_id` hashes, so every field is
/// normalized (durations in ms, defaults filled in). States keep the order of the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobManifest {
    pub name: String,
    /// The namespace the job's runs (and their step workloads) belong to (`namespace = "…"`,
    /// default `default`; serialized only when not the default, so old manifest ids stay).
    #[serde(default = "crate::spec::default_namespace", skip_serializing_if = "crate::spec::is_default_namespace")]
    pub namespace: String,
    pub states: Vec<StateSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSpec {
    pub id: String,
    /// How the state's cell runs: the keys of a spec's `[cell]`, written on the state itself.
    pub cell: CellSpec,
    /// In the order written; this is the order of `Enter::base_snapshot_ids`.
    pub depends_on: Vec<String>,
    pub timeout_ms: Option<u64>,
    pub retry: RetrySpec,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetrySpec {
    /// Retries after the first attempt: a state runs at most `1 + max_attempts` times.
    pub max_attempts: u32,
    /// Delay before retry 1; doubles per retry up to `backoff_max_ms`.
    pub backoff_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec { max_attempts: 0, backoff_ms: DEFAULT_RETRY_BACKOFF_MS, backoff_max_ms: DEFAULT_RETRY_BACKOFF_MAX_MS }
    }
}

impl RetrySpec {
    /// The delay before `attempt` (1-based retry number = 0-based attempt number, since attempt 0
    /// is the first run): `backoff × 2^(attempt-1)`, capped at `backoff_max`.
    pub fn backoff_before(&self, attempt: u32) -> u64 {
        let factor = 1u64.checked_shl(attempt.saturating_sub(1)).unwrap_or(u64::MAX);
        self.backoff_ms.saturating_mul(factor).min(self.backoff_max_ms)
    }
}

impl JobManifest {
    /// `sha256:<hex>` of the canonical manifest.
    pub fn manifest_id(&self) -> String {
        content_id(self)
    }

    pub fn state(&self, id: &str) -> Option<&StateSpec> {
        self.states.iter().find(|s| s.id == id)
    }

    /// States no other state depends on, in manifest order: their contexts are the run's result.
    pub fn sinks(&self) -> Vec<&StateSpec> {
        let depended: BTreeSet<&str> = self.states.iter().flat_map(|s| s.depends_on.iter().map(String::as_str)).collect();
        self.states.iter().filter(|s| !depended.contains(s.id.as_str())).collect()
    }

    /// Parses and validates manifest text; `file` is only used to name the source in errors.
    pub fn parse(file: &str, text: &str) -> Result<JobManifest, SpecError> {
        parse_strict(file, text, RawManifest::validate)
    }

    /// Gives every state without a `workdir` this one (the CLI passes the manifest's directory,
    /// so `argv = ["./extract.sh"]` means the script next to the manifest). Part of the
    /// manifest, and so of `manifest_id`: it changes what runs.
    pub fn with_default_workdir(mut self, dir: &str) -> JobManifest {
        for state in &mut self.states {
            state.cell.workdir.get_or_insert_with(|| dir.to_string());
        }
        self
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: Spanned<String>,
    namespace: Option<Spanned<String>>,
    #[serde(default)]
    state: Vec<RawState>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    id: Spanned<String>,
    depends_on: Option<Spanned<Vec<Spanned<String>>>>,
    timeout: Option<Spanned<String>>,
    retry: Option<RawRetry>,
    // The keys of a spec's `[cell]` (serde's `flatten` cannot be combined with
    // `deny_unknown_fields`, so they are listed here and handed to `RawCell::validate`).
    argv: Spanned<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<toml::Value>>,
    workdir: Option<Spanned<String>>,
    isolation: Option<Spanned<String>>,
    graceful_shutdown: Option<Spanned<String>>,
    network: Option<Spanned<String>>,
    rootfs: Option<Spanned<String>>,
    oci_runtime: Option<Spanned<String>>,
    limits: Option<crate::spec::RawLimits>,
    user: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<Spanned<i64>>,
    backoff: Option<Spanned<String>>,
    backoff_max: Option<Spanned<String>>,
}

fn id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 63 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

impl RawManifest {
    fn validate(self) -> Result<JobManifest, Invalid> {
        if !id_ok(self.name.get_ref()) {
            return Err((
                Some(self.name.span()),
                format!("name must be 1-63 characters of a-z, A-Z, 0-9, '-', '_', '.'; got {:?}", self.name.get_ref()),
            ));
        }
        if self.state.is_empty() {
            return Err((Some(self.name.span()), "a job needs at least one [[state]]".into()));
        }
        let mut defined: BTreeSet<String> = BTreeSet::new();
        for raw in &self.state {
            let id = raw.id.get_ref();
            if !id_ok(id) {
                return Err((
                    Some(raw.id.span()),
                    format!("state id must be 1-63 characters of a-z, A-Z, 0-9, '-', '_', '.'; got {id:?}"),
                ));
            }
            if defined.contains(id) {
                return Err((Some(raw.id.span()), format!("duplicate state id {id:?}")));
            }
            defined.insert(id.clone());
        }

        let mut states = Vec::with_capacity(self.state.len());
        // The span of each state's `depends_on` (or its id), so a cycle can name a line.
        let mut dep_spans: Vec<Range<usize>> = Vec::with_capacity(self.state.len());
        for raw in self.state {
            let id = raw.id.get_ref().clone();
            let mut depends_on = Vec::new();
            if let Some(deps) = &raw.depends_on {
                for dep in deps.get_ref() {
                    let name = dep.get_ref();
                    if !defined.contains(name) {
                        return Err((Some(dep.span()), format!("state {id:?} depends on unknown state {name:?}")));
                    }
                    if depends_on.contains(name) {
                        return Err((Some(dep.span()), format!("state {id:?} lists dependency {name:?} twice")));
                    }
                    depends_on.push(name.clone());
                }
            }
            dep_spans.push(raw.depends_on.as_ref().map(|d| d.span()).unwrap_or_else(|| raw.id.span()));
            let timeout_ms = match &raw.timeout {
                None => None,
                Some(_) => match duration("timeout", &raw.timeout, 0)? {
                    0 => {
                        return Err((
                            raw.timeout.as_ref().map(|t| t.span()),
                            format!("state {id:?}: timeout must be longer than 0s"),
                        ))
                    }
                    ms => Some(ms),
                },
            };
            let retry = match raw.retry {
                None => RetrySpec::default(),
                Some(r) => {
                    let max_attempts = match &r.max_attempts {
                        None => 0,
                        Some(n) if (0..=i64::from(MAX_RETRY_ATTEMPTS)).contains(n.get_ref()) => *n.get_ref() as u32,
                        Some(n) => {
                            return Err((
                                Some(n.span()),
                                format!("retry.max_attempts must be between 0 and {MAX_RETRY_ATTEMPTS}, got {}", n.get_ref()),
                            ))
                        }
                    };
                    let backoff_ms = duration("retry.backoff", &r.backoff, DEFAULT_RETRY_BACKOFF_MS)?;
                    let backoff_max_ms = duration("retry.backoff_max", &r.backoff_max, DEFAULT_RETRY_BACKOFF_MAX_MS)?;
                    if backoff_max_ms < backoff_ms {
                        let span = r.backoff_max.as_ref().or(r.backoff.as_ref()).map(|s| s.span());
                        return Err((span, "retry.backoff_max must not be shorter than retry.backoff".into()));
                    }
                    RetrySpec { max_attempts, backoff_ms, backoff_max_ms }
                }
            };
            let cell = RawCell {
                argv: raw.argv,
                env: raw.env,
                workdir: raw.workdir,
                isolation: raw.isolation,
                graceful_shutdown: raw.graceful_shutdown,
                network: raw.network,
                rootfs: raw.rootfs,
                oci_runtime: raw.oci_runtime,
                limits: raw.limits,
                user: raw.user,
            }
            .validate("")?;
            states.push(StateSpec { id, cell, depends_on, timeout_ms, retry });
        }

        if let Some((at, cycle)) = find_cycle(&states) {
            return Err((Some(dep_spans[at].clone()), format!("cycle: {}", cycle.join(" -> "))));
        }
        let namespace = match &self.namespace {
            None => crate::authz::DEFAULT_NAMESPACE.to_string(),
            Some(namespace) => {
                crate::authz::validate_namespace(namespace.get_ref()).map_err(|e| (Some(namespace.span()), e.to_string()))?;
                namespace.get_ref().clone()
            }
        };
        Ok(JobManifest { name: self.name.into_inner(), namespace, states })
    }
}

/// A cycle in the dependency graph, if any: the index of the state whose `depends_on` closes it,
/// and the ids along it, first id repeated at the end (`a -> b -> a`, read "a depends on b").
///
/// Depth-first with an explicit stack, so a long chain cannot overflow the thread's stack (the
/// API parses manifests on a small async worker stack).
fn find_cycle(states: &[StateSpec]) -> Option<(usize, Vec<String>)> {
    let index: BTreeMap<&str, usize> = states.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut color = vec![0u8; states.len()];
    for root in 0..states.len() {
        if color[root] != 0 {
            continue;
        }
        // The current path: (state, how many of its dependencies were looked at).
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        color[root] = 1;
        while let Some(&mut (i, ref mut next)) = path.last_mut() {
            let Some(dep) = states[i].depends_on.get(*next) else {
                color[i] = 2;
                path.pop();
                continue;
            };
            *next += 1;
            let j = index[dep.as_str()];
            match color[j] {
                0 => {
                    color[j] = 1;
                    path.push((j, 0));
                }
                1 => {
                    let from = path.iter().position(|&(k, _)| k == j).expect("a state on the path is in the path");
                    let mut ids: Vec<String> = path[from..].iter().map(|&(k, _)| states[k].id.clone()).collect();
                    ids.push(states[j].id.clone());
                    return Some((i, ids));
                }
                _ => {}
            }
        }
    }
    None
}

/// The events of a job run, exactly as the seed names them, tagged by `"kind"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum KernelEvent {
    RunStarted {
        op_id: String,
        manifest_id: String,
        initial_snapshot_id: String,
    },
    StateEntered {
        state_id: String,
        /// 0-based: attempt 0 is the first run, attempt n the n-th retry.
        attempt: u32,
        base_snapshot_id: String,
    },
    StateCompleted {
        state_id: String,
        context_snapshot_id: String,
    },
    StateFailed {
        state_id: String,
        error: StateError,
        failure_snapshot_id: Option<String>,
    },
    RunCompleted {
        status: RunStatus,
        final_snapshot_id: Option<String>,
    },
    /// warden's addition to the seed: a retry's backoff, journaled when it is decided, so a
    /// restart neither forgets the timer nor restarts it (events carry no clock of their own).
    RetryScheduled {
        state_id: String,
        attempt: u32,
        not_before_ms: u64,
    },
}

/// A kernel event as journaled (CloudEvents type `dev.warden.job.kernel.v1`, subject `run_id`):
/// flat, the seed's fields next to `run_id` and `"kind"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    pub run_id: String,
    /// On `RunStarted` only: the principal that started the run (who may cancel it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(flatten)]
    pub event: KernelEvent,
}

/// One run as the projection knows it: its identity, its fold, and what the runtime needs to
/// supervise its open attempts. Folded from `JobEvent`s alone, so replay rebuilds it exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub op_id: String,
    pub manifest_id: String,
    pub initial_snapshot_id: String,
    pub owner: String,
    pub started_at_ms: u64,
    /// `None` while the run is running.
    pub status: Option<RunStatus>,
    pub final_snapshot_id: Option<String>,
    pub finished_at_ms: Option<u64>,
    pub fold: RunFold,
    /// Kernel events journaled for this run.
    pub n_events: u64,
    /// Each open attempt's base: what its `WARDEN_CONTEXT` file starts from.
    pub open: BTreeMap<String, OpenAttempt>,
    pub updated_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenAttempt {
    pub attempt: u32,
    pub base_snapshot_id: String,
    pub entered_at_ms: u64,
}

impl RunRecord {
    /// The record a `RunStarted` opens; `None` for any other event (a run starts only once).
    pub fn start(event: &JobEvent, at_ms: u64) -> Option<RunRecord> {
        let KernelEvent::RunStarted { op_id, manifest_id, initial_snapshot_id } = &event.event else { return None };
        let mut record = RunRecord {
            run_id: event.run_id.clone(),
            op_id: op_id.clone(),
            manifest_id: manifest_id.clone(),
            initial_snapshot_id: initial_snapshot_id.clone(),
            owner: event.owner.clone().unwrap_or_default(),
            started_at_ms: at_ms,
            status: None,
            final_snapshot_id: None,
            finished_at_ms: None,
            fold: RunFold::default(),
            n_events: 0,
            open: BTreeMap::new(),
            updated_at_ms: at_ms,
        };
        record.apply(&event.event, at_ms);
        Some(record)
    }

    pub fn apply(&mut self, event: &KernelEvent, at_ms: u64) {
        self.fold.apply(event);
        self.n_events += 1;
        self.updated_at_ms = at_ms;
        match event {
            KernelEvent::StateEntered { state_id, attempt, base_snapshot_id } => {
                let open = OpenAttempt { attempt: *attempt, base_snapshot_id: base_snapshot_id.clone(), entered_at_ms: at_ms };
                self.open.insert(state_id.clone(), open);
            }
            KernelEvent::StateCompleted { state_id, .. } | KernelEvent::StateFailed { state_id, .. } => {
                self.open.remove(state_id);
            }
            KernelEvent::RunCompleted { status, final_snapshot_id } if self.status.is_none() => {
                self.status = Some(*status);
                self.final_snapshot_id = final_snapshot_id.clone();
                self.finished_at_ms = Some(at_ms);
                self.open.clear();
            }
            KernelEvent::RunStarted { .. } | KernelEvent::RunCompleted { .. } | KernelEvent::RetryScheduled { .. } => {}
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateError {
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

/// The `code` of the failure the runtime journals for an attempt that died with its supervisor.
pub const ORPHANED: &str = "orphaned";

impl StateError {
    /// An attempt found open on resume: whatever it did is unknown, so it is retryable, and it
    /// still counts against the retry budget (otherwise a crash loop would retry forever).
    pub fn orphaned() -> StateError {
        StateError {
            code: ORPHANED.into(),
            message: "the attempt was in flight when warden stopped; its outcome is unknown".into(),
            retryable: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

/// What the runtime must do now, in this order: close `orphaned`, journal `schedule`, journal a
/// `StateEntered` per `enter` and start it, journal `finish` if any; sleep until `wake_at_ms`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The history already ends in `RunCompleted` (or has no `RunStarted`): nothing to do, ever.
    pub done: bool,
    /// Attempts with a `StateEntered` and no terminal event. On resume each needs a
    /// `StateFailed { error: StateError::orphaned(), failure_snapshot_id: None }`; a live runtime
    /// skips the ones it is itself supervising. Their states get nothing else until closed.
    pub orphaned: Vec<Attempt>,
    /// New `RetryScheduled` events to journal (see `Scheduled::event`).
    pub schedule: Vec<Scheduled>,
    /// Attempts to journal and start now; independent branches come together.
    pub enter: Vec<Enter>,
    /// The earliest journaled retry not yet due, if nothing else is pending on it.
    pub wake_at_ms: Option<u64>,
    /// The `RunCompleted` to journal: every state completed, or one failed with no retries left
    /// and no attempt is open any more.
    pub finish: Option<Finish>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub state_id: String,
    pub attempt: u32,
}

impl Attempt {
    /// The event that closes this attempt as orphaned.
    pub fn orphaned_failure(&self) -> KernelEvent {
        KernelEvent::StateFailed { state_id: self.state_id.clone(), error: StateError::orphaned(), failure_snapshot_id: None }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduled {
    pub state_id: String,
    pub attempt: u32,
    pub not_before_ms: u64,
}

impl Scheduled {
    pub fn event(&self) -> KernelEvent {
        KernelEvent::RetryScheduled { state_id: self.state_id.clone(), attempt: self.attempt, not_before_ms: self.not_before_ms }
    }
}

/// Enter `state_id` as `attempt` on top of `base_snapshot_ids`.
///
/// The base is the initial snapshot for a state without dependencies, else the context snapshots
/// of its dependencies in `depends_on` order. `StateEntered` records one id, so with several the
/// runtime merges them (later ones win on conflicts) into a new snapshot and journals that id;
/// with one, it journals it as is. Never a failure snapshot, even on a retry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enter {
    pub state_id: String,
    pub attempt: u32,
    pub base_snapshot_ids: Vec<String>,
}

/// The run's end. `snapshot_ids`: for `completed`, the contexts of the sink states in manifest
/// order (merged like a base when there are several); for `failed`, the failure snapshot of the
/// state that ran out of retries, if it left one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finish {
    pub status: RunStatus,
    pub snapshot_ids: Vec<String>,
}

/// Where one state stands after folding the history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFold {
    /// `StateEntered` events seen: the number of the next attempt, and what the budget counts.
    pub entered: u32,
    pub open: Option<u32>,
    pub completed: Option<String>,
    /// The last failure since the last entry: (retryable, failure snapshot).
    pub failed: Option<(bool, Option<String>)>,
    /// A retry journaled since the last failure: (attempt, not_before_ms).
    pub scheduled: Option<(u32, u64)>,
}

/// A run's history, folded: all `next_actions` needs. The runtime keeps one per run and applies
/// each event as it is journaled, so deciding costs O(states), not O(history); replaying the
/// journal into a fresh one gives the same fold (it is part of the projection's snapshots).
/// It does not need the manifest: events about states a manifest lacks are kept and ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFold {
    initial: Option<String>,
    done: bool,
    states: BTreeMap<String, StateFold>,
}

impl RunFold {
    pub fn of(history: &[KernelEvent]) -> RunFold {
        let mut fold = RunFold::default();
        for event in history {
            fold.apply(event);
        }
        fold
    }

    pub fn apply(&mut self, event: &KernelEvent) {
        if self.done {
            return;
        }
        match event {
            KernelEvent::RunStarted { initial_snapshot_id, .. } => {
                self.initial.get_or_insert_with(|| initial_snapshot_id.clone());
            }
            KernelEvent::RunCompleted { .. } => self.done = true,
            KernelEvent::StateEntered { state_id, .. } => {
                let s = self.states.entry(state_id.clone()).or_default();
                // The count, not the journaled number, is what the budget trusts.
                s.open = Some(s.entered);
                s.entered += 1;
                s.failed = None;
                s.scheduled = None;
            }
            KernelEvent::StateCompleted { state_id, context_snapshot_id } => {
                let s = self.states.entry(state_id.clone()).or_default();
                s.open = None;
                s.completed = Some(context_snapshot_id.clone());
            }
            KernelEvent::StateFailed { state_id, error, failure_snapshot_id } => {
                let s = self.states.entry(state_id.clone()).or_default();
                if s.completed.is_none() {
                    s.open = None;
                    s.failed = Some((error.retryable, failure_snapshot_id.clone()));
                    s.scheduled = None;
                }
            }
            KernelEvent::RetryScheduled { state_id, attempt, not_before_ms } => {
                let s = self.states.entry(state_id.clone()).or_default();
                if s.failed.is_some() {
                    s.scheduled = Some((*attempt, *not_before_ms));
                }
            }
        }
    }

    /// Whether the run is over (`RunCompleted`), or never started.
    pub fn is_done(&self) -> bool {
        self.done || self.initial.is_none()
    }

    /// Attempts entered and not yet closed, as (state id, 0-based attempt).
    pub fn open_attempts(&self) -> impl Iterator<Item = (&str, u32)> + '_ {
        self.states.iter().filter_map(|(id, s)| s.open.map(|attempt| (id.as_str(), attempt)))
    }

    /// The earliest journaled retry still waiting for its backoff, if any.
    pub fn next_wake_ms(&self) -> Option<u64> {
        if self.is_done() {
            return None;
        }
        self.states
            .values()
            .filter(|s| s.open.is_none() && s.completed.is_none() && s.failed.is_some())
            .filter_map(|s| s.scheduled.map(|(_, not_before_ms)| not_before_ms))
            .min()
    }

    /// Where `state_id` stands; `None` until it was first entered.
    pub fn state(&self, state_id: &str) -> Option<&StateFold> {
        self.states.get(state_id)
    }

    /// What the runtime must do now; see [`next_actions`].
    pub fn next_actions(&self, manifest: &JobManifest, now_ms: u64) -> Resume {
        let (Some(initial), false) = (&self.initial, self.done) else {
            return Resume { done: true, ..Resume::default() };
        };
        let unseen = StateFold::default();
        let state = |id: &str| self.states.get(id).unwrap_or(&unseen);
        let mut resume = Resume::default();

        // A state that failed without retries left fails the run: nothing new starts after that.
        let exhausted = manifest.states.iter().find_map(|spec| {
            let s = state(&spec.id);
            match &s.failed {
                Some((retryable, snapshot)) if !retryable || s.entered > spec.retry.max_attempts => Some(snapshot.clone()),
                _ => None,
            }
        });

        for spec in &manifest.states {
            let s = state(&spec.id);
            if let Some(attempt) = s.open {
                resume.orphaned.push(Attempt { state_id: spec.id.clone(), attempt });
                continue;
            }
            if s.completed.is_some() || exhausted.is_some() {
                continue;
            }
            let base = || -> Option<Vec<String>> {
                if spec.depends_on.is_empty() {
                    return Some(vec![initial.clone()]);
                }
                spec.depends_on.iter().map(|dep| state(dep).completed.clone()).collect()
            };
            let enter = |attempt| base().map(|base_snapshot_ids| Enter { state_id: spec.id.clone(), attempt, base_snapshot_ids });
            match &s.failed {
                None if s.entered == 0 => resume.enter.extend(enter(0)),
                None => {} // unreachable after the fold: an entry is open, completed or failed.
                Some(_) => {
                    // Retryable with budget left (else `exhausted`); the next attempt is `entered`.
                    let not_before_ms = match s.scheduled {
                        Some((_, not_before_ms)) => not_before_ms,
                        None => {
                            let not_before_ms = now_ms.saturating_add(spec.retry.backoff_before(s.entered));
                            resume.schedule.push(Scheduled { state_id: spec.id.clone(), attempt: s.entered, not_before_ms });
                            not_before_ms
                        }
                    };
                    if not_before_ms <= now_ms {
                        resume.enter.extend(enter(s.entered));
                    } else {
                        resume.wake_at_ms = Some(resume.wake_at_ms.map_or(not_before_ms, |w| w.min(not_before_ms)));
                    }
                }
            }
        }

        if resume.orphaned.is_empty() {
            if let Some(snapshot) = exhausted {
                resume.finish = Some(Finish { status: RunStatus::Failed, snapshot_ids: snapshot.into_iter().collect() });
            } else if manifest.states.iter().all(|spec| state(&spec.id).completed.is_some()) {
                let snapshot_ids = manifest.sinks().iter().filter_map(|spec| state(&spec.id).completed.clone()).collect();
                resume.finish = Some(Finish { status: RunStatus::Completed, snapshot_ids });
            }
        }
        resume
    }
}

/// What the runtime must do now for a run of `manifest` whose journal is `history`.
///
/// Pure and idempotent: if the runtime crashes after journaling part of a `Resume`, calling this
/// again on the longer history asks only for the rest.
pub fn next_actions(manifest: &JobManifest, history: &[KernelEvent], now_ms: u64) -> Resume {
    RunFold::of(history).next_actions(manifest, now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> SpecError {
        JobManifest::parse("job.toml", text).unwrap_err()
    }

    #[test]
    fn parses_with_defaults() {
        let m = JobManifest::parse(
            "job.toml",
            "name = \"etl\"\n[[state]]\nid = \"a\"\nargv = [\"x\"]\ntimeout = \"10m\"\n[[state]]\nid = \"b\"\nargv = [\"y\"]\ndepends_on = [\"a\"]\nretry = { max_attempts = 3, backoff = \"2s\" }\n",
        )
        .unwrap();
        assert_eq!(m.states[0].timeout_ms, Some(600_000));
        assert_eq!(m.states[0].retry, RetrySpec::default());
        assert_eq!(m.states[1].retry, RetrySpec { max_attempts: 3, backoff_ms: 2_000, backoff_max_ms: 60_000 });
        assert!(m.manifest_id().starts_with("sha256:"));
    }

    #[test]
    fn cycle_names_line_and_ids() {
        let e = err("name = \"j\"\n[[state]]\nid = \"a\"\nargv = [\"x\"]\ndepends_on = [\"b\"]\n[[state]]\nid = \"b\"\nargv = [\"x\"]\ndepends_on = [\"a\"]\n");
        assert_eq!(e.message, "cycle: a -> b -> a");
        assert_eq!(e.line, Some(9));
        assert_eq!(e.to_string(), "job.toml:9: cycle: a -> b -> a");
    }

    #[test]
    fn a_long_chain_parses_without_deep_recursion() {
        let mut text = String::from("name = \"long\"\n");
        for i in 0..20_000 {
            text.push_str(&format!("[[state]]\nid = \"s{i}\"\nargv = [\"true\"]\n"));
            if i > 0 {
                text.push_str(&format!("depends_on = [\"s{}\"]\n", i - 1));
            }
        }
        // A thread with a small stack, like an async worker's.
        let parsed = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || JobManifest::parse("long.toml", &text).map(|m| m.states.len()))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(parsed, Ok(20_000));
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        let e = err("name = \"j\"\n[[state]]\nid = \"a\"\nargv = [\"x\"]\ndepends_on = [\"a\"]\n");
        assert_eq!((e.line, e.message.as_str()), (Some(5), "cycle: a -> a"));
    }

    #[test]
    fn unknown_dependency_names_its_line() {
        let e = err("name = \"j\"\n[[state]]\nid = \"a\"\nargv = [\"x\"]\ndepends_on = [\"nope\"]\n");
        assert_eq!(e.line, Some(5));
        assert!(e.message.contains("unknown state \"nope\""), "{e}");
    }

    #[test]
    fn duplicate_id_names_the_second() {
        let e = err("name = \"j\"\n[[state]]\nid = \"a\"\nargv = [\"x\"]\n[[state]]\nid = \"a\"\nargv = [\"y\"]\n");
        assert_eq!(e.line, Some(6));
        assert!(e.message.contains("duplicate state id \"a\""), "{e}");
    }

    #[test]
    fn unknown_fields_are_rejected_with_line() {
        let e = err("name = \"j\"\n[[state]]\nid = \"a\"\nargv = [\"x\"]\nretries = 3\n");
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.message.contains("retries"), "{e}");
        let e = err("name = \"j\"\n[[state]]\nid = \"a\"\nargv = [\"x\"]\nretry = { max_attempts = 1, jitter = \"1s\" }\n");
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.message.contains("jitter"), "{e}");
    }

    #[test]
    fn empty_argv_and_bad_durations_are_rejected() {
        assert_eq!(err("name = \"j\"\n[[state]]\nid = \"a\"\nargv = []\n").line, Some(4));
        assert_eq!(err("name = \"j\"\n[[state]]\nid = \"a\"\nargv = [\"x\"]\ntimeout = \"soon\"\n").line, Some(5));
    }

    #[test]
    fn events_are_tagged_by_kind() {
        let e = KernelEvent::RunCompleted { status: RunStatus::Completed, final_snapshot_id: None };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "RunCompleted", "status": "completed", "final_snapshot_id": null}));
    }

    #[test]
    fn independent_branches_enter_together_and_a_join_gets_both_contexts() {
        let m = JobManifest::parse(
            "j",
            "name = \"j\"\n[[state]]\nid = \"a\"\nargv = [\"x\"]\n[[state]]\nid = \"b\"\nargv = [\"x\"]\n[[state]]\nid = \"c\"\nargv = [\"x\"]\ndepends_on = [\"b\", \"a\"]\n",
        )
        .unwrap();
        let mut h = vec![KernelEvent::RunStarted {
            op_id: "op".into(),
            manifest_id: m.manifest_id(),
            initial_snapshot_id: "init".into(),
        }];
        let ids: Vec<String> = next_actions(&m, &h, 0).enter.into_iter().map(|e| e.state_id).collect();
        assert_eq!(ids, ["a", "b"]);
        for (id, ctx) in [("a", "ctx-a"), ("b", "ctx-b")] {
            h.push(KernelEvent::StateEntered { state_id: id.into(), attempt: 0, base_snapshot_id: "init".into() });
            h.push(KernelEvent::StateCompleted { state_id: id.into(), context_snapshot_id: ctx.into() });
        }
        let r = next_actions(&m, &h, 0);
        assert_eq!(
            r.enter,
            vec![Enter { state_id: "c".into(), attempt: 0, base_snapshot_ids: vec!["ctx-b".into(), "ctx-a".into()] }]
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let r = RetrySpec { max_attempts: 10, backoff_ms: 1_000, backoff_max_ms: 5_000 };
        assert_eq!([1, 2, 3, 4, 40].map(|a| r.backoff_before(a)), [1_000, 2_000, 4_000, 5_000, 5_000]);
    }

    #[test]
    fn retry_waits_for_its_backoff_then_enters_on_the_deps_context() {
        let m = JobManifest::parse(
            "j",
            "name = \"j\"\n[[state]]\nid = \"a\"\nargv = [\"x\"]\n[[state]]\nid = \"b\"\nargv = [\"x\"]\ndepends_on = [\"a\"]\nretry = { max_attempts = 1 }\n",
        )
        .unwrap();
        let mut h = vec![
            KernelEvent::RunStarted { op_id: "op".into(), manifest_id: m.manifest_id(), initial_snapshot_id: "init".into() },
            KernelEvent::StateEntered { state_id: "a".into(), attempt: 0, base_snapshot_id: "init".into() },
            KernelEvent::StateCompleted { state_id: "a".into(), context_snapshot_id: "ctx-a".into() },
            KernelEvent::StateEntered { state_id: "b".into(), attempt: 0, base_snapshot_id: "ctx-a".into() },
        ];
        let r = next_actions(&m, &h, 100);
        assert_eq!(r.orphaned, vec![Attempt { state_id: "b".into(), attempt: 0 }]);
        assert!(r.enter.is_empty() && r.finish.is_none());
        h.push(r.orphaned[0].orphaned_failure());
        let r = next_actions(&m, &h, 100);
        assert_eq!(r.schedule, vec![Scheduled { state_id: "b".into(), attempt: 1, not_before_ms: 1_100 }]);
        assert_eq!(r.wake_at_ms, Some(1_100));
        h.push(r.schedule[0].event());
        assert_eq!(next_actions(&m, &h, 1_099).wake_at_ms, Some(1_100));
        let r = next_actions(&m, &h, 1_100);
        assert_eq!(r.enter, vec![Enter { state_id: "b".into(), attempt: 1, base_snapshot_ids: vec!["ctx-a".into()] }]);
        h.push(KernelEvent::StateEntered { state_id: "b".into(), attempt: 1, base_snapshot_id: "ctx-a".into() });
        h.push(KernelEvent::StateFailed {
            state_id: "b".into(),
            error: StateError::orphaned(),
            failure_snapshot_id: Some("f".into()),
        });
        let r = next_actions(&m, &h, 5_000);
        assert_eq!(r.finish, Some(Finish { status: RunStatus::Failed, snapshot_ids: vec!["f".into()] }));
        assert!(r.enter.is_empty() && r.schedule.is_empty());
        h.push(KernelEvent::RunCompleted { status: RunStatus::Failed, final_snapshot_id: Some("f".into()) });
        assert_eq!(next_actions(&m, &h, 9_000), Resume { done: true, ..Resume::default() });
    }
}
