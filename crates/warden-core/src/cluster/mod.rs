//! The control plane's cluster decisions, pure: which hosts are alive, where a new cell goes,
//! who holds a workload's lease, which standbys are armed, what a host's reports and inventory
//! mean. Every decision is a method of [`ClusterState`] that takes the [`Batch`] being decided
//! (the live projection, and where its events, effects and host orders go) and the input; time is
//! `batch.now_ms`. No clock, no I/O: the runtime feeds it heartbeats and API calls, journals what
//! it records, and sends the [`Order`]s; the simulation (`warden-sim`) drives this same code.
//!
//! What must survive a restart is journaled (enrollment, host up/down/drain, placements, lease
//! grants and releases, standby slots). What need not is kept here, in memory, and rebuilt
//! conservatively by [`ClusterState::after_restart`]: every host gets a grace period before it can
//! be declared down, every held lease counts as renewed at start-up (`lease::after_restart`), and
//! every host is asked for its inventory.
//!
//! Rooms: `hosts` (enrollment, liveness, drain, removal, the write-off of cells on a lost host),
//! `tokens` (join tokens: creation, revocation, the check at enrollment),
//! `reports` (a heartbeat: reports, checkpoints, renewals, inventory and standby reconciliation),
//! `leases` (renewal, revocation, a standby's bid), `placement` (where a new cell goes, standby
//! slots, `each-host` services).

mod hosts;
pub use hosts::check_host_labels;
mod leases;
mod messages;
mod placement;
mod reports;
mod state;
mod tokens;

pub use crate::batch::{Batch, Order};
pub use messages::{AcquireRequest, Heartbeat, InventoryCell, InventoryState, LeaseClaim, Report, ReportEvent, RevokeRequest};
pub use placement::{each_host_group, each_host_missing, submit_targets, EachHostInstance, SubmitRefused, SubmitTargets};
pub use reports::{blob_hex, host_may_fetch_blob, HeartbeatAnswer};
pub use state::{
    AcquireRefused, ClusterConfig, ClusterError, ClusterState, JoinTokenRefused, TokenAdminError, HEARTBEAT_INTERVAL_MS,
    HOST_TTL_MS, PLACEMENT_RETRY_MS, PROMOTION_FALLBACK_MS, RESTART_GRACE_MS,
};
pub use tokens::{
    check_join_token, format_join_token, join_token_pin, parse_join_token, DEFAULT_JOIN_TOKEN_TTL_MS, JOIN_TOKEN_PREFIX,
    MAX_JOIN_TOKEN_TTL_MS,
};

#[cfg(test)]
mod tests;
