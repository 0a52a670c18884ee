//! The agent ↔ control plane protocol: JSON over the same signed HTTP API the CLI uses, every
//! request made by the agent (hosts need no open port), signed with the agent's own host key.
//!
//! ```text
//! agent                                           control plane
//!   POST /v1/agents/enroll   {join token, name, channel, tags}  ──▶ authorizes the host key
//!   POST /v1/agents/heartbeat  every heartbeat_interval:
//!        {reports (unacked, oldest first), renewals, inventory?} ──▶ journals reports, renews leases
//!        ◀── {acked_reports_through, renewed, incarnation}
//!   GET  /v1/agents/commands?after=N   (long poll, ≤ 20 s)  ◀── start / signal / remove cells
//! ```
//!
//! Reports (a cell started, failed to start, exited) are the agent's facts; it keeps them in a
//! durable queue until a heartbeat answer acknowledges them (`acked_reports_through`), so none
//! is lost to a crash of either side. Commands are the control plane's decisions, already
//! journaled; they are kept in its memory only, numbered per control-plane *incarnation*, and
//! re-derived after a restart from the journal plus the agent's inventory. Every command is
//! idempotent on the agent (a `Start` of a cell that exists is a no-op).

use serde::{Deserialize, Serialize};
use warden_core::lease::LeaseTiming;
use warden_core::spec::{CellSpec, LogSpec};
use warden_core::CellExit;

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

/// `POST /v1/agents/heartbeat`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    pub host: String,
    /// Reports not yet acknowledged, oldest first.
    #[serde(default)]
    pub reports: Vec<Report>,
    /// Leases this host holds for cells it runs, to renew. The agent counts a renewal's fence
    /// from the moment it *sent* this heartbeat (see `warden_core::lease`).
    #[serde(default)]
    pub renew: Vec<LeaseClaim>,
    /// Every cell the host has: sent on the first heartbeat after a (re)start of either side
    /// (the agent sees a new `incarnation`), so the control plane can reconcile.
    #[serde(default)]
    pub inventory: Option<Vec<InventoryCell>>,
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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseClaim {
    pub workload_id: String,
    pub epoch: u64,
}

/// A fact about a cell on this host, numbered by the agent (`seq` from 1, never reused).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub seq: u64,
    pub workload_id: String,
    pub cell_id: String,
    pub event: ReportEvent,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReportEvent {
    Started { pid: u32, pid_start_time: u64 },
    StartFailed { error: String },
    Exited { exit: CellExit },
}

/// A cell the agent has, and what it knows of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InventoryCell {
    pub workload_id: String,
    pub cell_id: String,
    pub state: InventoryState,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum InventoryState {
    Running {
        pid: u32,
        pid_start_time: u64,
    },
    /// Ended; the exit is also (or was) in a report.
    Exited {
        exit: CellExit,
    },
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum CommandKind {
    /// Start this cell (no-op if it exists). With `lease`, it is a fenced primary: `WARDEN_EPOCH`
    /// is set to its epoch and the shim kills it at the deadline unless renewed.
    Start { workload_id: String, cell_id: String, cell: CellSpec, logs: LogSpec, lease: Option<StartLease> },
    /// SIGTERM (or SIGKILL with `kill`) to the cell.
    Signal { cell_id: String, kill: bool },
    /// The cell's end is journaled: remove what is left of it.
    Remove { cell_id: String },
}

/// The lease a fenced cell starts under. A long poll's answer can be old news, so the agent
/// does not count from it: it claims `(workload_id, epoch)` in a heartbeat sent at once, and
/// starts the cell only if that claim is renewed, with the first fence counted from that
/// heartbeat's send time. A refused claim (the lease moved on or expired) is reported as a
/// failed start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartLease {
    pub epoch: u64,
}
