//! What the API takes and returns: workloads (every `WorkloadInfo` field plus live state) and job runs.

use serde::{Deserialize, Serialize};
use warden_core::job::{JobManifest, RunRecord};
use warden_core::standby::StandbySlot;
use warden_core::workload::ExitRecord;
use warden_core::{Phase, Workload, WorkloadInfo};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadView {
    #[serde(flatten)]
    pub info: WorkloadInfo,
    pub name: String,
    /// The spec's namespace (`default` unless it names one).
    #[serde(default)]
    pub namespace: String,
    /// `pending|starting|running|exited|backoff|stopping|completed|failed|stopped|expired`.
    pub state: String,
    pub restarts: u32,
    pub runs: u32,
    pub consecutive_failures: u32,
    pub pid: Option<u32>,
    pub cell_id: Option<String>,
    /// Where the current (or last) cell runs: this node for `warden up`, else the agent's host.
    pub host: String,
    /// The lease epoch the cell runs under on a cluster host (its `WARDEN_EPOCH`).
    pub epoch: Option<u64>,
    /// Why a terminal workload ended.
    pub reason: Option<String>,
    pub last_exit: Option<ExitRecord>,
    /// When a workload in backoff starts its next cell.
    pub next_start_at_ms: Option<u64>,
    pub argv: Vec<String>,
    pub updated_at_ms: u64,
    /// `warm-standby`: the armed standby slots, by index (seed `StandbySlot`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standbys: Vec<StandbySlot>,
    /// Failovers to a standby so far (not counted in `restarts`).
    #[serde(default)]
    pub failovers: u32,
    /// In a submission's answer: every workload it created when `instances` > 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
}

impl WorkloadView {
    pub fn of(workload: &Workload, host: &str) -> WorkloadView {
        let reason = match &workload.phase {
            Phase::Failed { reason } | Phase::Stopped { reason } => Some(reason.clone()),
            Phase::Expired => Some("ttl expired".into()),
            Phase::Completed => Some("exited with code 0".into()),
            _ => None,
        };
        WorkloadView {
            info: workload.info.clone(),
            name: workload.spec.name.clone(),
            namespace: workload.spec.namespace.clone(),
            state: workload.phase.name().to_string(),
            restarts: workload.restarts(),
            runs: workload.runs,
            consecutive_failures: workload.consecutive_failures,
            pid: workload.phase.running_cell().map(|cell| cell.pid),
            cell_id: workload.phase.cell_id().map(str::to_owned),
            host: workload.host.clone().unwrap_or_else(|| host.to_string()),
            epoch: workload.epoch,
            reason,
            last_exit: workload.last_exit.clone(),
            next_start_at_ms: match &workload.phase {
                Phase::Backoff { until_ms } => Some(*until_ms),
                _ => None,
            },
            argv: workload.spec.cell.argv.clone(),
            updated_at_ms: workload.updated_at_ms,
            standbys: workload.standbys.clone(),
            failovers: workload.failovers,
            instances: Vec::new(),
        }
    }
}

/// The body of `POST /v1/workloads`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// The spec's file name, used in error messages.
    pub file: String,
    pub spec_toml: String,
    #[serde(default)]
    pub consumer_workload_id: Option<String>,
}

/// Every API error body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// The body of `POST /v1/jobs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRunRequest {
    /// The manifest's file name, used in error messages.
    pub file: String,
    pub manifest_toml: String,
    /// The workdir of states that set none: the CLI sends the manifest's directory. Absolute.
    #[serde(default)]
    pub workdir: Option<String>,
    /// The run's initial context (`--input`); `{}` when absent.
    #[serde(default)]
    pub input: Option<serde_json::Value>,
}

/// What the API returns about a job run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunView {
    pub run_id: String,
    pub op_id: String,
    /// The manifest's `name`.
    pub name: String,
    /// The manifest's namespace.
    #[serde(default)]
    pub namespace: String,
    pub manifest_id: String,
    /// `running|completed|failed|cancelled`.
    pub status: String,
    pub owner: String,
    pub initial_snapshot_id: String,
    pub final_snapshot_id: Option<String>,
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    /// Kernel events journaled for the run.
    pub n_events: u64,
    /// In manifest order.
    pub states: Vec<StateView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateView {
    pub state_id: String,
    /// `pending|running|retrying|completed|failed`: `retrying` is a failure waiting out its
    /// backoff, `failed` one with no retries left.
    pub status: String,
    /// Attempts entered so far (the next attempt's number).
    pub attempts: u32,
    /// The workload running (or that last ran) this state: `<run_id>.<state_id>.<attempt>`.
    pub workload_id: Option<String>,
    pub context_snapshot_id: Option<String>,
    /// When a `retrying` state is entered again.
    pub retry_at_ms: Option<u64>,
    pub depends_on: Vec<String>,
}

impl RunView {
    pub fn of(run: &RunRecord, manifest: Option<&JobManifest>) -> RunView {
        let states = manifest
            .map(|manifest| {
                manifest
                    .states
                    .iter()
                    .map(|spec| {
                        let fold = run.fold.state(&spec.id);
                        let attempts = fold.map_or(0, |s| s.entered);
                        let status = match fold {
                            None => "pending",
                            Some(s) if s.completed.is_some() => "completed",
                            Some(s) if s.open.is_some() => "running",
                            Some(s) => match s.failed {
                                Some((true, _)) if s.entered <= spec.retry.max_attempts && run.status.is_none() => "retrying",
                                _ => "failed",
                            },
                        };
                        StateView {
                            state_id: spec.id.clone(),
                            status: status.to_string(),
                            attempts,
                            workload_id: attempts.checked_sub(1).map(|last| step_workload_id(&run.run_id, &spec.id, last)),
                            context_snapshot_id: fold.and_then(|s| s.completed.clone()),
                            retry_at_ms: fold.and_then(|s| s.scheduled.filter(|_| status == "retrying").map(|(_, at)| at)),
                            depends_on: spec.depends_on.clone(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        RunView {
            run_id: run.run_id.clone(),
            op_id: run.op_id.clone(),
            name: manifest.map(|m| m.name.clone()).unwrap_or_default(),
            namespace: manifest.map(|m| m.namespace.clone()).unwrap_or_default(),
            manifest_id: run.manifest_id.clone(),
            status: run.status.map_or("running", |s| s.as_str()).to_string(),
            owner: run.owner.clone(),
            initial_snapshot_id: run.initial_snapshot_id.clone(),
            final_snapshot_id: run.final_snapshot_id.clone(),
            started_at_ms: run.started_at_ms,
            finished_at_ms: run.finished_at_ms,
            n_events: run.n_events,
            states,
        }
    }
}

/// The id of the workload that runs `attempt` of `state_id` in run `run_id`. Run ids contain no
/// `.`, so the run is everything before the first one.
pub fn step_workload_id(run_id: &str, state_id: &str, attempt: u32) -> String {
    format!("{run_id}.{state_id}.{attempt}")
}

/// The run a step workload belongs to, if `workload_id` is one.
pub fn run_of_step_workload(workload_id: &str) -> Option<&str> {
    workload_id.strip_prefix("r-")?;
    workload_id.split_once('.').map(|(run, _)| run)
}

/// What `GET /v1/hosts` says about one host.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostView {
    pub name: String,
    /// `up|draining|down`.
    pub state: String,
    pub channel: Option<String>,
    pub tags: Vec<String>,
    pub principal: String,
    /// On the control plane's clock; `None` if none arrived since it started.
    pub last_heartbeat_ms: Option<u64>,
    /// When `state` last changed.
    pub since_ms: u64,
    /// Workloads whose current cell is on this host.
    pub cells: Vec<String>,
}

/// `POST /v1/tokens`: a new join token; defaults: ttl 1 h, any number of uses.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TokenRequest {
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    #[serde(default)]
    pub max_uses: Option<u32>,
}

/// A join token as `warden tokens ls` shows it: never its secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenView {
    pub token_id: String,
    /// `live|expired|used-up|revoked`, on the control plane's clock.
    pub state: String,
    pub created_at_ms: u64,
    pub created_by: String,
    pub expires_at_ms: u64,
    pub max_uses: Option<u32>,
    pub n_used: u32,
}

impl TokenView {
    pub fn of(record: &warden_core::projection::JoinTokenRecord, now_ms: u64) -> TokenView {
        TokenView {
            token_id: record.token_id.clone(),
            state: record.state(now_ms).as_str().to_string(),
            created_at_ms: record.created_at_ms,
            created_by: record.created_by.clone(),
            expires_at_ms: record.expires_at_ms,
            max_uses: record.max_uses,
            n_used: record.n_used,
        }
    }
}

/// `POST /v1/keys`: a new API key (`warden keys add`); only its public half is ever sent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyAddRequest {
    pub name: String,
    /// `admin`, `operator` or `viewer`.
    pub role: String,
    /// Where a viewer or operator holds its role (default: `default`); none for an admin.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// `ed25519:<64 hex digits>`.
    pub public_key: String,
}

/// A secret as `GET /v1/secrets` and a put answer it: never its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretView {
    pub namespace: String,
    pub name: String,
    pub version: u64,
    pub put_at_ms: u64,
    pub put_by: String,
}

impl SecretView {
    pub fn of(namespace: &str, name: &str, record: &warden_core::secrets::SecretRecord) -> SecretView {
        SecretView {
            namespace: namespace.to_string(),
            name: name.to_string(),
            version: record.version,
            put_at_ms: record.put_at_ms,
            put_by: record.put_by.clone(),
        }
    }
}

/// An API key as `GET /v1/keys` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyView {
    pub name: String,
    pub role: String,
    pub namespaces: Vec<String>,
    pub public_key: String,
    /// `journal` (added with `warden keys add`) or `authorized_keys` (the data dir's file, read
    /// at start: the admin credential and legacy keys, all admins, not revocable at runtime).
    pub source: String,
    pub added_at_ms: Option<u64>,
}

impl KeyView {
    pub fn of(record: &warden_core::keys::KeyRecord) -> KeyView {
        KeyView {
            name: record.name.clone(),
            role: record.role.as_str().to_string(),
            namespaces: record.namespaces.clone(),
            public_key: record.principal.clone(),
            source: "journal".into(),
            added_at_ms: Some(record.added_at_ms),
        }
    }
}

/// The answer to `POST /v1/tokens`: the token itself, shown this once and never again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token: String,
    #[serde(flatten)]
    pub view: TokenView,
}

/// `POST /v1/rollouts`: a service (`service` + a new spec) or a host activation (`channel` +
/// `target`, with `activate`/`rollback` in the policy) rolled out under `policy_toml`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RolloutRequest {
    /// The service: the id it was submitted with (`warden run --id`), e.g. an `each-host` group.
    #[serde(default)]
    pub service: Option<String>,
    /// The new spec, for a service rollout; `spec_file` names it in errors.
    #[serde(default)]
    pub spec_file: Option<String>,
    #[serde(default)]
    pub spec_toml: Option<String>,
    /// A host activation: the artifact every host of `channel` (all hosts if none) switches to.
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub channel: Option<String>,
    /// The policy; `policy_file` names it in errors. Empty: the defaults (which need probes, so
    /// an empty policy is refused unless it says `require_probes = false`).
    pub policy_file: String,
    pub policy_toml: String,
}

/// A rollout as the API shows it: the rollout, every host's `HostRolloutSnapshot`, and what
/// holds it up.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutView {
    pub id: String,
    /// `running|paused|halted|completed|undone`.
    pub state: String,
    /// The service rolled out, or none for a host activation.
    pub service: Option<String>,
    pub channel: String,
    pub target: String,
    pub policy: warden_core::rollout::RolloutPolicy,
    /// The current wave (0 is the canary).
    pub wave: usize,
    pub waves: Vec<WaveView>,
    pub halted: Option<String>,
    pub quarantined: bool,
    pub hosts: Vec<warden_core::rollout::HostRolloutSnapshot>,
    /// Hosts of the current wave holding it up (silent, or soaked but not passing).
    pub blocked: Vec<BlockedView>,
    pub started_by: String,
    pub started_at_ms: u64,
    pub updated_at_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WaveView {
    /// As written in the policy: `1`, `"25%"`.
    pub size: String,
    pub soak_ms: u64,
    /// In dispatch order.
    pub hosts: Vec<String>,
    pub n_converged: usize,
    pub n_failed: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlockedView {
    pub host: String,
    pub state: String,
    pub since_ms: u64,
    /// `silent` or `not-passing`.
    pub reason: String,
}
