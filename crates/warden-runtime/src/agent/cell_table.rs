//! What the agent knows of each cell it has, in memory: where the cell is in its life, the lease
//! it holds, and what is still to be done to it (kill it once it runs, remove it once it ended).

use std::sync::Arc;

use tokio::sync::Notify;
use warden_cell::StartedCell;
use warden_core::lease::{HeldLease, OutagePolicy};
use warden_core::CellExit;

#[derive(Clone, Debug)]
pub(super) enum Tracked {
    /// Being started by a `Start` command (possibly still claiming its lease).
    Starting,
    Running(StartedCell),
    Exited(CellExit),
}

/// One cell of this host, by cell id in the table.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub(super) workload_id: String,
    pub(super) state: Tracked,
    /// Fenced cells only, while the lease is held: renewed with every heartbeat.
    pub(super) lease: Option<HeldLease>,
    /// The control plane refused the lease while the cell was starting: kill it once it runs.
    pub(super) lease_lost: bool,
    /// A `Remove` came while the cell still ran: it was killed; remove it once it has exited,
    /// without a report (its end is already journaled).
    pub(super) remove_when_exited: bool,
    /// Checkpointed cells: wakes the checkpoint task to take one now.
    pub(super) checkpoint_now: Option<Arc<Notify>>,
    /// Being evicted (a drain) under this lease epoch: once it has ended, a final checkpoint and
    /// the lease given up before its exit is reported.
    pub(super) evicting: Option<u64>,
    /// A hot standby: fenced under epoch 0, which this agent extends on its own until a
    /// promotion gives the cell a lease (see `standby.rs`).
    pub(super) hot_standby: bool,
    /// The lease ttl of the cell's workload when it is not the cluster's (`lost_after`).
    pub(super) lease_ttl_ms: Option<u64>,
    /// Whether the cell rides out a control plane that is down (`control_plane_outage`).
    pub(super) lease_outage: OutagePolicy,
    /// The spec the cell runs (`WARDEN_SPEC_ID`), if its `Start` said: what a service rollout
    /// waits for.
    pub(super) spec_id: Option<String>,
}

impl Entry {
    /// A cell found already ended: nothing to renew, watch or checkpoint.
    pub(super) fn exited(workload_id: String, exit: CellExit) -> Entry {
        Entry { state: Tracked::Exited(exit), ..Entry::starting(workload_id, false, None) }
    }

    /// A cell being started here (a hot standby's, or one with its own lease ttl).
    pub(super) fn starting(workload_id: String, hot_standby: bool, lease_ttl_ms: Option<u64>) -> Entry {
        Entry {
            workload_id,
            state: Tracked::Starting,
            lease: None,
            lease_lost: false,
            remove_when_exited: false,
            checkpoint_now: None,
            evicting: None,
            hot_standby,
            lease_ttl_ms,
            lease_outage: OutagePolicy::RideOut,
            spec_id: None,
        }
    }

    /// Whether the cell runs (not starting, not ended).
    pub(super) fn is_running(&self) -> bool {
        matches!(self.state, Tracked::Running(_))
    }
}
