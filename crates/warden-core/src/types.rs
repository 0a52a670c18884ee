//! The seed types (`WorkloadInfo`, `ReplicationMode`, `RestartPolicy`, `LifecycleTerminalState`,
//! `StandbySlot`) and the other plain types that events carry (`CellExit`, `StopReason`): a leaf
//! module, so the event module and the state machines that emit events can both use them.

use serde::{Deserialize, Serialize};

/// How a workload's state survives the loss of its host (seed: paygress `ReplicationMode`).
///
/// Only `None` is acted on by the single-node engine; `Checkpointed` and `WarmStandby` are
/// accepted and stored, and come alive with the cluster (checkpoints, standbys, failover).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicationMode {
    #[default]
    None,
    Checkpointed,
    WarmStandby,
}

impl ReplicationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicationMode::None => "none",
            ReplicationMode::Checkpointed => "checkpointed",
            ReplicationMode::WarmStandby => "warm-standby",
        }
    }
}

/// When a cell that exited is started again (seed: paygress `RestartPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart; the workload ends `completed` or `failed` with its first exit.
    Never,
    /// Restart after every exit, successful or not, with backoff after failures.
    Always,
    /// Restart after a failed exit, at most `max_attempts` consecutive times.
    OnFailure { max_attempts: u32 },
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy::OnFailure { max_attempts: 3 }
    }
}

impl RestartPolicy {
    pub fn name(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure { .. } => "on-failure",
        }
    }
}

/// How the supervisor learned that a cell ended (seed: cellos `LifecycleTerminalState`).
///
/// `Clean`: an authenticated exit code arrived from inside the cell, and it is the truth.
/// `Forced`: none did and teardown killed the cell; no exit code is reported at all.
/// Omitted (`None`) by backends with no in-cell bridge, such as the plain process backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LifecycleTerminalState {
    Clean,
    Forced,
}

/// The record of one workload (seed: paygress `WorkloadInfo`), with every seed field.
///
/// Times are Unix seconds as in the seed; `owner` is the submitter's Ed25519 public key
/// (`ed25519:<hex>`), the seed's `owner_npub`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadInfo {
    /// The workload's id, chosen by warden (`w-…`).
    pub id: String,
    /// Per-host small integer id, assigned in submission order, never reused.
    pub vmid: u32,
    /// What kind of cell runs it: `process`, `cell` or `oci` (the spec's `cell.isolation`).
    pub workload_type: String,
    /// `sha256:<hex>` of the canonical spec.
    pub spec_id: String,
    pub created_at: u64,
    /// `created_at + ttl`, when the spec sets `ttl`.
    pub expires_at: Option<u64>,
    pub owner: String,
    pub replication: ReplicationMode,
    pub restart_policy: RestartPolicy,
    /// Where the latest checkpoint lives (checkpointed and warm-standby workloads, later).
    pub state_uri: Option<String>,
    /// The id the submitter chose, if any (`warden run --id`).
    pub consumer_workload_id: Option<String>,
}

/// A standby reserved on another host for a warm-standby workload, with every field of the seed
/// (`primary_npub` → `primary`, `owner_npub` → `owner`, `peer_standby_npubs` → `peer_standbys`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbySlot {
    /// The workload's consumer id (what the submitter named it); slots are keyed by it.
    pub workload_id: String,
    /// The host running the primary when the slot was armed.
    pub primary: String,
    pub standby_index: usize,
    pub standby_count: usize,
    pub spec_id: String,
    pub expires_at: Option<u64>,
    pub owner: String,
    /// The silence baseline before any heartbeat of the primary was seen.
    pub created_at: u64,
    /// The hosts holding the other slots, by index.
    pub peer_standbys: Vec<String>,
    /// The host this slot is on.
    pub host: String,
}

/// Why a workload's cell is being stopped (`workload.stopping`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StopReason {
    Requested,
    Expired,
    /// The spec was replaced (a rollout): the cell stops and one of the new spec starts at once.
    Replaced,
}

/// What is known about how a cell ended, as the backend observed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellExit {
    /// The real exit code, only when the process exited normally and the backend saw it.
    pub exit_code: Option<i32>,
    /// The signal that killed the process, if one did.
    pub signal: Option<i32>,
    /// Why the cell ended, in words (`exited with code 3`, `killed by SIGKILL`, `shim lost`).
    pub reason: String,
    pub terminal_state: Option<LifecycleTerminalState>,
}

impl CellExit {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && self.signal.is_none()
    }

    /// The exit as a process backend reports it, from a decoded wait status.
    pub fn from_status(exit_code: Option<i32>, signal: Option<i32>) -> CellExit {
        let reason = match (exit_code, signal) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(sig)) => format!("killed by {}", signal_name(sig)),
            (None, None) => "exit status unknown".to_string(),
        };
        CellExit { exit_code, signal, reason, terminal_state: None }
    }
}

/// `SIGKILL` for 9 and so on, for messages; numbers on Linux x86-64 and aarch64.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}
