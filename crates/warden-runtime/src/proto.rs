//! The agent ↔ control plane protocol: JSON over the same signed HTTP API the CLI uses, every
//! request made by the agent (hosts need no open port), signed with the agent's own host key.
//!
//! ```text
//! agent                                           control plane
//!   POST /v1/agents/enroll   {join token, name, channel, tags}  ──▶ authorizes the host key
//!   POST /v1/agents/heartbeat  every heartbeat_interval:
//!        {reports (unacked, oldest first), renewals, inventory?} ──▶ journals reports, renews leases
//!        ◀── {acked_reports_through, renewed, incarnation}
//!   GET  /v1/agents/commands?after=N   (long poll, ≤ 20 s)  ◀── start / signal / remove cells,
//!                                                               arm / disarm / promote standbys
//!   POST /v1/agents/revoke   {workload, cell, epoch, state_uri} ──▶ a drained host gives a lease up
//!   POST /v1/agents/acquire  {workload, cell, expected epoch} ──▶ a standby asks for the lease
//!        ◀── {epoch} (won: a `Start` follows)  |  409 (lost: someone else holds it)
//!   POST /v1/agents/logs/<request>  (a chunk of a cell's output) ──▶ relayed to `warden logs`
//!   POST /v1/agents/rollout  {rollout, input (seq'd)}  ──▶ the host's part in a rollout advances
//!        ◀── {snapshot after it, outcome}
//! ```
//!
//! Warm standbys: the control plane arms a `StandbySlot` on each standby host (`Arm`: the spec,
//! the checkpoint key, the latest checkpoint to fetch ahead of time). When the primary is gone
//! and its lease grantable, every slot host gets `Promote`; standby *i* waits
//! `i × promotion_delay` and asks for the lease with `acquire`, a compare-and-swap on the epoch
//! it was told. One wins; the control plane journals the placement and sends the winner the
//! ordinary `Start` (under the new epoch), which it serves from what it staged.
//!
//! Reports (a cell started, failed to start, exited) are the agent's facts; it keeps them in a
//! durable queue until a heartbeat answer acknowledges them (`acked_reports_through`), so none
//! is lost to a crash of either side. Commands are the control plane's decisions, already
//! journaled; they are kept in its memory only, numbered per control-plane *incarnation*, and
//! re-derived after a restart from the journal plus the agent's inventory. Every command is
//! idempotent on the agent (a `Start` of a cell that exists is a no-op).

use serde::{Deserialize, Serialize};
pub use warden_core::cluster::{
    AcquireRequest, Heartbeat, InventoryCell, InventoryState, LeaseClaim, Report, ReportEvent, RevokeRequest,
};
use warden_core::lease::{LeaseTiming, OutagePolicy};
use warden_core::rollout::{HostInput, HostRolloutSnapshot, ProbeSpec};
use warden_core::spec::{CellSpec, LogSpec};
use warden_core::standby::StandbySlot;

/// `POST /v1/agents/enroll`, signed with the host key being enrolled.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The token `warden server` printed (and wrote to `<data-dir>/join-token`).
    pub join_token: String,
    /// The host's name, unique in the cluster.
    pub name: String,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub host: String,
    /// The principal the control plane now knows this host by.
    pub principal: String,
    pub heartbeat_interval_ms: u64,
    pub host_ttl_ms: u64,
    pub lease: LeaseTiming,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Every report with `seq` ≤ this is journaled; drop them from the queue.
    pub acked_reports_through: u64,
    /// One answer per claim, same order.
    pub renewed: Vec<bool>,
    /// Changes when the control plane restarts: command numbering starts over, and the agent
    /// sends its inventory again.
    pub incarnation: String,
    /// The control plane wants the inventory (it restarted, or lost track).
    pub send_inventory: bool,
    /// Answering a heartbeat that carried the inventory (the first after either side
    /// restarted): this host's part in every rollout that is not over for it, so an agent that
    /// lost its memory resumes activations, probes and rollbacks (and keeps each soak deadline).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<RolloutOrder>,
}

/// This host's part in a rollout: its snapshot (the control plane's view, `last_event_seq`
/// included, so the agent numbers its next report above it), the probes to run while it soaks,
/// and how it activates (or rolls back). Sent as a `Rollout` command whenever the control plane
/// decides something for the host (dispatch, roll back, converged, failed), and in the heartbeat
/// answer after a restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutOrder {
    pub snapshot: HostRolloutSnapshot,
    pub probes: Vec<ProbeSpec>,
    pub activation: Activation,
    /// How long activating or rolling back may take before the agent reports it failed.
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Activation {
    /// A service's instances here move to the spec `target` (a `spec_id`). The control plane
    /// replaces their cells once the agent reports the activation started (and back to
    /// `previous` once it reports a rollback started); the agent's activation completes when each
    /// of `workloads` runs a cell of the wanted spec on this host.
    Service { workloads: Vec<String> },
    /// A host activation (the nixfleet case): the agent runs `activate` (`{target}` replaced by
    /// the target, `{previous}` by what the host ran before), or `rollback` to go back; with
    /// `current`, it asks the host what it runs (first line of output) when it takes the order
    /// and after each.
    Command {
        activate: Vec<String>,
        rollback: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        current: Vec<String>,
    },
}

/// `POST /v1/agents/rollout`: one report of this host's part in a rollout (`input.seq()` is
/// the agent's, one above the snapshot's `last_event_seq`). Answered with the snapshot after it:
/// the agent follows that, so a redelivered report (a duplicate) changes nothing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutReport {
    pub host: String,
    pub rollout_id: String,
    pub input: HostInput,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutReportResponse {
    pub snapshot: HostRolloutSnapshot,
    /// `applied`, `duplicate`, or why the report does not apply (the snapshot says where the
    /// host stands; a stale report is not an error the agent can fix).
    pub outcome: String,
}

/// `GET /v1/agents/commands?after=N&incarnation=I` answers with the commands numbered above
/// `after` if `I` is the current incarnation, else with every queued command (a restarted
/// control plane numbers anew), waiting up to 20 s (`wait_ms`) for one. The agent keeps `after`
/// and `I` on disk, so its own restart does not replay commands it already carried out.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Commands {
    pub incarnation: String,
    pub commands: Vec<AgentCommand>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentCommand {
    pub seq: u64,
    #[serde(flatten)]
    pub kind: CommandKind,
}

// `Start` carries a whole cell spec and is much larger than the rest; commands are built once
// and moved into a queue, so boxing it would buy nothing measurable.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum CommandKind {
    /// Start this cell (no-op if it exists). With `lease`, it is a fenced primary: `WARDEN_EPOCH`
    /// is set to its epoch and the shim kills it at the deadline unless renewed.
    /// With `checkpoint` (`[replication] mode = "checkpointed"`), the latest checkpoint is
    /// restored into `state_dir` before the cell starts, and new ones are taken while it runs.
    Start {
        workload_id: String,
        cell_id: String,
        cell: CellSpec,
        logs: LogSpec,
        lease: Option<StartLease>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkpoint: Option<CheckpointPlan>,
        /// The workload's spec (`spec_id`): set in the cell's environment as `WARDEN_SPEC_ID`,
        /// which is how the agent tells which version a cell runs (service rollouts).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spec_id: Option<String>,
    },
    /// Take a checkpoint of this (checkpointed) cell now (`warden checkpoint ID`).
    Checkpoint { cell_id: String },
    /// Keep a standby of this workload ready here: stage the spec, fetch `checkpoint.restore`.
    /// Replaces an earlier `Arm` of the same workload (new index, new primary, new checkpoint).
    Arm {
        workload_id: String,
        slot: StandbySlot,
        cell: CellSpec,
        logs: LogSpec,
        promotion_delay_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkpoint: Option<CheckpointPlan>,
        /// Run the cell now as a hot standby (`slot.hot_cell_id`), fenced under epoch 0, with
        /// `WARDEN_ROLE=standby`; a promotion then gives it the lease in place.
        #[serde(default)]
        hot: bool,
    },
    /// This host no longer keeps a standby of the workload.
    Disarm { workload_id: String },
    /// Send the workload's output here (`logs::tail`) to `POST /v1/agents/logs/<request_id>`, in
    /// chunks, then once more with `?done=true`; with `follow`, until its cell here has ended or
    /// the control plane answers 410 (nobody reads any more).
    Logs { request_id: String, workload_id: String, max_files: u32, follow: bool },
    /// The host is drained: stop this primary (SIGTERM, SIGKILL after `grace_ms`), take a final
    /// checkpoint if it keeps them, and give the lease up (`revoke`) so a standby or a new
    /// cell elsewhere takes over at once, without waiting for the lease to expire.
    Evict { workload_id: String, cell_id: String, epoch: u64, grace_ms: u64 },
    /// The workload's primary is gone and its lease can be granted at `expected_epoch`: ask for
    /// it (`acquire`) after `standby_index × promotion_delay`, for the new cell `cell_id`.
    Promote { workload_id: String, cell_id: String, expected_epoch: u64 },
    /// SIGTERM (or SIGKILL with `kill`) to the cell.
    Signal { cell_id: String, kill: bool },
    /// This host's part in a rollout changed (see [`RolloutOrder`]).
    Rollout { order: RolloutOrder },
    /// The cell's end is journaled: remove what is left of it.
    Remove { cell_id: String },
}

/// How a checkpointed cell's state is kept (see `checkpoint.rs`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointPlan {
    /// The directory restored before the start and snapshotted while the cell runs: a host
    /// path (isolation `process` and `cell` see the host's filesystem).
    pub state_dir: String,
    pub interval_ms: u64,
    /// The workload's 32-byte key, hex.
    pub key_hex: String,
    /// The latest checkpoint (`blob:sha256:<hex>`) to restore first; none: start from what
    /// `state_dir` holds (created empty if missing).
    #[serde(default)]
    pub restore: Option<String>,
}

/// Never prints the key (commands are logged at debug level).
impl std::fmt::Debug for CheckpointPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointPlan")
            .field("state_dir", &self.state_dir)
            .field("interval_ms", &self.interval_ms)
            .field("key_hex", &"<redacted>")
            .field("restore", &self.restore)
            .finish()
    }
}

/// The lease a fenced cell starts under. A long poll's answer can be old news, so the agent
/// does not count from it: it claims `(workload_id, epoch)` in a heartbeat sent at once, and
/// starts the cell only if that claim is renewed, with the first fence counted from that
/// heartbeat's send time. A refused claim (the lease moved on or expired) is reported as a
/// failed start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartLease {
    pub epoch: u64,
    /// The workload's lease ttl when it is not the cluster's (`placement.lost_after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// Whether the cell rides out a control plane that is down (`placement.control_plane_outage`).
    #[serde(default, skip_serializing_if = "OutagePolicy::is_default")]
    pub outage: OutagePolicy,
}

/// The lease was granted at `epoch`; the `Start` of the cell follows on the command stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AcquireResponse {
    pub epoch: u64,
}
