//! What hosts tell the control plane, as the cluster's decisions take it: a heartbeat (reports,
//! lease claims, inventory), a revocation, a standby's bid. These are also the agent protocol's
//! JSON bodies (`warden-runtime`'s `proto.rs` re-exports them), so their serde shape is the wire.

use serde::{Deserialize, Serialize};

use crate::types::CellExit;

/// `POST /v1/agents/heartbeat`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub host: String,
    /// Reports not yet acknowledged, oldest first.
    #[serde(default)]
    pub reports: Vec<Report>,
    /// Leases this host holds for cells it runs, to renew. The agent counts a renewal's fence
    /// from the moment it *sent* this heartbeat (see `crate::lease`).
    #[serde(default)]
    pub renew: Vec<LeaseClaim>,
    /// Every cell the host has: sent on the first heartbeat after a (re)start of either side
    /// (the agent sees a new `incarnation`), so the control plane can reconcile.
    #[serde(default)]
    pub inventory: Option<Vec<InventoryCell>>,
    /// With the inventory: the workloads this host keeps a standby slot of, so slots whose
    /// `Arm` or `Disarm` was lost (a control-plane restart) are sent again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standbys: Option<Vec<String>>,
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
    Started {
        pid: u32,
        pid_start_time: u64,
    },
    StartFailed {
        error: String,
    },
    Exited {
        exit: CellExit,
    },
    /// A checkpoint of the cell's `state_dir` is in the control plane's blob store
    /// (`state_uri` = `blob:sha256:<hex>`).
    Checkpointed {
        state_uri: String,
        size_bytes: u64,
    },
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

/// `POST /v1/agents/revoke`: the holder of `epoch` evicted `cell_id` and gives the lease up;
/// `state_uri` is its final checkpoint, if it keeps them (a `LeaseRevocation`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeRequest {
    pub host: String,
    pub workload_id: String,
    pub cell_id: String,
    pub epoch: u64,
    #[serde(default)]
    pub state_uri: Option<String>,
}

/// `POST /v1/agents/acquire`: a standby asks for the lease of `workload_id`, to run `cell_id`,
/// expecting it at `expected_epoch` (the compare in compare-and-swap).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireRequest {
    pub host: String,
    pub workload_id: String,
    pub cell_id: String,
    pub expected_epoch: u64,
    /// A hot standby's running cell, to be promoted in place instead of starting `cell_id`.
    #[serde(default)]
    pub hot_cell: Option<String>,
}
