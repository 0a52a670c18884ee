//! The cluster's memory that is not journaled, its configuration and its errors: what every
//! room of `cluster` decides with.

use std::collections::{BTreeMap, BTreeSet};

use crate::lease::{Lease, LeaseTiming};
use crate::projection::{HostRecord, Projection};
use crate::Workload;

use crate::lease::LeaseRefused;

/// The default heartbeat interval: hosts renew leases and report this often.
pub const HEARTBEAT_INTERVAL_MS: u64 = 300;
/// A host silent this long is down.
pub const HOST_TTL_MS: u64 = 1_500;
/// After the control plane starts, no host is declared down before this much longer than
/// `host_ttl`: agents need time to notice the restart and reconnect.
pub const RESTART_GRACE_MS: u64 = 5_000;
/// How long past the last standby's turn a promotion may take before the cell is placed cold.
pub const PROMOTION_FALLBACK_MS: u64 = 2_000;
/// When nothing fits a new cell, placement is tried again this much later.
pub const PLACEMENT_RETRY_MS: u64 = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub heartbeat_interval_ms: u64,
    pub host_ttl_ms: u64,
    pub lease: LeaseTiming,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
            host_ttl_ms: HOST_TTL_MS,
            lease: LeaseTiming { ttl_ms: HOST_TTL_MS, renew_every_ms: HEARTBEAT_INTERVAL_MS, ..LeaseTiming::default() },
        }
    }
}

/// Why a host's request was refused; each says which host and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("host {host:?} is not enrolled")]
    UnknownHost { host: String },
    #[error("host {host:?} is enrolled with another key")]
    WrongKey { host: String },
    #[error("host {host:?} was removed (`warden hosts remove`): its key is refused for good; enroll it again with a new data dir and a new join token")]
    KeyRemoved { host: String },
    #[error(transparent)]
    JoinToken(#[from] JoinTokenRefused),
    #[error("cannot enroll: {reason}")]
    BadHostLabel { reason: String },
    #[error("{host:?} is this control plane's own node")]
    LocalNode { host: String },
    #[error("host {host:?} is down; it may not take a lease")]
    HostDown { host: String },
    #[error("host {host} does not hold lease epoch {epoch} of {workload_id} for cell {cell_id}")]
    NotHolder { host: String, workload_id: String, cell_id: String, epoch: u64 },
    #[error("state_uri {uri:?} is not blob:sha256:<hex>")]
    BadStateUri { uri: String },
    #[error("lease of {workload_id} refused to {host}: {refused}")]
    AcquireRefused { host: String, workload_id: String, refused: AcquireRefused },
}

/// The cluster's memory that is not journaled (see the module docs), and the decisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterState {
    pub config: ClusterConfig,
    /// `warden up`'s own node: cells placed here run under the control plane, with no lease.
    pub local_host: Option<String>,
    /// Last heartbeat per host, on the control plane's clock.
    pub(super) last_seen: BTreeMap<String, u64>,
    /// Lease expiry per workload, on the control plane's clock.
    pub(super) lease_expiry: BTreeMap<String, u64>,
    /// When the next cell on a down host reaches its tolerance and is written off.
    pub(super) next_write_off: Option<u64>,
    /// Hosts whose inventory is wanted (all of them after a restart).
    pub(super) want_inventory: BTreeSet<String>,
    /// Starts waiting for a host or a lease: (workload, cell) → when to try again.
    pub(super) deferred: BTreeMap<(String, String), u64>,
    /// New cells of warm-standby workloads offered to their standbys: (workload, cell) → when to
    /// stop waiting for one to win the lease and place the cell cold instead.
    pub(super) promoting: BTreeMap<(String, String), u64>,
}

impl ClusterState {
    /// The state of a control plane that starts (or restarts) now over `projection`: every host
    /// gets `RESTART_GRACE_MS` before it can be declared down, every held lease counts as renewed
    /// now, every host is asked for its inventory.
    ///
    /// A server that is not yet reachable when it is built (it loads first, then listens) calls
    /// [`ClusterState::serving`] once it listens: that is the moment the grace counts from.
    pub fn after_restart(config: ClusterConfig, local_host: Option<String>, projection: &Projection, now_ms: u64) -> Self {
        let mut state = ClusterState {
            config,
            local_host,
            last_seen: BTreeMap::new(),
            lease_expiry: BTreeMap::new(),
            next_write_off: None,
            want_inventory: projection.hosts.keys().cloned().collect(),
            deferred: BTreeMap::new(),
            promoting: BTreeMap::new(),
        };
        state.serving(projection, now_ms);
        state
    }

    /// The control plane is reachable from `now_ms` on: every held lease counts as renewed then
    /// (`lease::after_restart`, never shortened) and every host gets `RESTART_GRACE_MS` from then
    /// before it can be declared down. Holders that found no control plane while it was loading
    /// (their connections refused) renewed their fences by that evidence, which is safe only if
    /// the grace counts from when it listens (`lease.rs`, assumption A5).
    pub fn serving(&mut self, projection: &Projection, now_ms: u64) {
        let grace_until = now_ms + RESTART_GRACE_MS;
        for host in projection.hosts.keys() {
            self.seen(host, grace_until);
        }
        for (workload_id, workload) in &projection.workloads {
            let Some(current) = self.lease(projection, workload_id).filter(|l| l.holder.is_some()) else { continue };
            let renewed = crate::lease::after_restart(&current, now_ms, &self.lease_timing(workload));
            self.lease_expiry.insert(workload_id.clone(), renewed.expires_at_ms);
        }
    }

    pub fn is_local(&self, host: &str) -> bool {
        self.local_host.as_deref() == Some(host)
    }

    /// `host` was heard from at `now_ms` (a heartbeat, a rollout report, a bid).
    pub fn seen(&mut self, host: &str, now_ms: u64) {
        let entry = self.last_seen.entry(host.to_string()).or_insert(now_ms);
        *entry = (*entry).max(now_ms);
    }

    /// The last time `host` was heard from (the end of the restart grace for one not heard from
    /// since).
    pub fn last_seen(&self, host: &str) -> Option<u64> {
        self.last_seen.get(host).copied()
    }

    /// Whether the next heartbeat answer should ask `host` for its inventory.
    pub fn wants_inventory(&self, host: &str) -> bool {
        self.want_inventory.contains(host)
    }

    /// Starts `(workload, cell)` no earlier than `at_ms` (e.g. a start recovered at start-up
    /// that waits for its host to come back).
    pub fn defer(&mut self, workload_id: &str, cell_id: &str, at_ms: u64) {
        self.deferred.insert((workload_id.to_string(), cell_id.to_string()), at_ms);
    }

    /// When the cluster next needs a look without any input: a host may go silent, a deferred
    /// start is due, a cell on a down host reaches its tolerance.
    pub fn next_wake_ms(&self, projection: &Projection) -> Option<u64> {
        let silence = self
            .cluster_hosts(projection)
            .filter(|h| h.up)
            .filter_map(|h| self.last_seen.get(&h.name).map(|seen| seen + self.config.host_ttl_ms + 1))
            .min();
        [silence, self.deferred.values().min().copied(), self.next_write_off].into_iter().flatten().min()
    }

    /// A workload's lease timing: the cluster's, with the ttl stretched to its `lost_after`.
    pub fn lease_timing(&self, workload: &Workload) -> LeaseTiming {
        let mut timing = self.config.lease;
        if let Some(lost_after) = workload.spec.placement.as_ref().and_then(|p| p.lost_after_ms) {
            timing.ttl_ms = timing.ttl_ms.max(lost_after);
        }
        timing
    }

    /// How long `workload`'s host may be silent before its cell is written off.
    pub fn tolerance_ms(&self, workload: &Workload) -> u64 {
        self.lease_timing(workload).ttl_ms.max(self.config.host_ttl_ms)
    }

    /// The lease as `crate::lease` sees it: the journaled epoch and holder plus the in-memory
    /// expiry.
    pub(super) fn lease(&self, projection: &Projection, workload_id: &str) -> Option<Lease> {
        projection.leases.get(workload_id).map(|l| Lease {
            workload_id: workload_id.to_string(),
            epoch: l.epoch,
            holder: l.holder.clone(),
            expires_at_ms: self.lease_expiry.get(workload_id).copied().unwrap_or(0),
            state_uri: None,
        })
    }

    /// Hosts other than the local node.
    pub(super) fn cluster_hosts<'a>(&'a self, projection: &'a Projection) -> impl Iterator<Item = &'a HostRecord> + 'a {
        projection.hosts.values().filter(move |h| !self.is_local(&h.name))
    }

    /// The enrolled host `host`, if `principal` is its key.
    pub(super) fn authenticate<'a>(
        &self,
        projection: &'a Projection,
        host: &str,
        principal: &str,
    ) -> Result<&'a HostRecord, ClusterError> {
        match projection.hosts.get(host) {
            None => Err(ClusterError::UnknownHost { host: host.to_string() }),
            Some(record) if record.principal != principal => Err(ClusterError::WrongKey { host: host.to_string() }),
            Some(record) => Ok(record),
        }
    }

    /// Checks that `principal` is the key `host` enrolled with (for requests decided outside
    /// this module, such as rollout reports).
    pub fn check_host(&self, projection: &Projection, host: &str, principal: &str) -> Result<(), ClusterError> {
        self.authenticate(projection, host, principal).map(|_| ())
    }
}

/// Why a standby's bid for a lease was refused (a 409 to the agent: someone else promoted, or
/// the cell is no longer waiting).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AcquireRefused {
    #[error("no workload {0}")]
    UnknownWorkload(String),
    #[error("cell {0} is not waiting for a standby")]
    NotOffered(String),
    #[error("the host holds no standby slot of the workload")]
    NoSlot,
    #[error("the host is drained: it takes no new primary")]
    Drained,
    #[error("{0} is not the workload's hot standby on the host")]
    NotHotStandby(String),
    #[error(transparent)]
    Lease(#[from] LeaseRefused),
}

/// Why a join token was refused. None of these carries the secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenRefused {
    #[error("this is not a join token (they read wjt_<id>_<secret>; `warden tokens create` makes one)")]
    Malformed,
    #[error("wrong join token: ask an admin for a new one (`warden tokens create`)")]
    Wrong,
    #[error("join token {token_id} has expired: ask an admin for a new one (`warden tokens create`)")]
    Expired { token_id: String },
    #[error("join token {token_id} is used up ({max_uses} use(s)): ask an admin for a new one (`warden tokens create`)")]
    UsedUp { token_id: String, max_uses: u32 },
    #[error("join token {token_id} was revoked: ask an admin for a new one (`warden tokens create`)")]
    Revoked { token_id: String },
}

/// Why a token could not be created or revoked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenAdminError {
    #[error("join token {0} already exists")]
    Duplicate(String),
    #[error("no join token {0}")]
    Unknown(String),
    #[error("a join token's ttl must be between 1 s and 365 days, got {ttl_ms} ms")]
    BadTtl { ttl_ms: u64 },
    #[error("a join token's uses must be at least 1 (leave --uses out for any number)")]
    NoUses,
}
