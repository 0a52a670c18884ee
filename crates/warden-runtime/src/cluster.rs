//! The control plane's side of the cluster: which hosts are alive, where a cell goes, the
//! leases of primaries on cluster hosts, and the command queues agents long-poll.
//!
//! All of it lives inside the engine task (one owner), except the command queues, which the
//! API's long-poll handlers read. What must survive a restart is journaled (enrollment, host
//! up/down, placements, lease grants and releases); what need not is kept here in memory and
//! rebuilt conservatively after a restart: every host gets a grace period before it can be
//! declared down, every held lease counts as renewed at start-up (`lease::after_restart`), and
//! every agent is asked for its inventory to reconcile cells whose commands were lost.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use warden_core::lease::{acquire, Lease, LeaseRefused, LeaseTiming};
use warden_core::{EventData, Phase, Projection, Workload};

use crate::proto::{AgentCommand, CommandKind, LeaseClaim};

/// The default heartbeat interval: hosts renew leases and report this often.
pub const HEARTBEAT_INTERVAL_MS: u64 = 300;
/// A host silent this long is down.
pub const HOST_TTL_MS: u64 = 1_500;
/// After the control plane starts, no host is declared down before this much longer than
/// `host_ttl`: agents need time to notice the restart and reconnect.
pub const RESTART_GRACE_MS: u64 = 5_000;

#[derive(Clone, Copy, Debug)]
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

/// Per-host command queues, shared with the API's long-poll handlers.
#[derive(Default)]
pub struct Queues {
    pub incarnation: String,
    hosts: Mutex<HashMap<String, HostQueue>>,
    /// For views only (`warden hosts`); liveness decisions use the engine's own record.
    heartbeats: Mutex<HashMap<String, u64>>,
    /// `warden logs` of cells on agents, by request id: where the agent's chunks go.
    log_sessions: Mutex<HashMap<String, LogSession>>,
}

/// A `warden logs` waiting on an agent's chunks.
#[derive(Clone)]
pub struct LogSession {
    pub host: String,
    pub tx: tokio::sync::mpsc::Sender<crate::logs::Chunk>,
    /// The agent sent something (else the caller is told it did not answer).
    pub answered: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Default)]
struct HostQueue {
    next_seq: u64,
    commands: Vec<AgentCommand>,
    notify: Arc<Notify>,
}

/// Commands kept per host for agents that are slow to poll; older ones are acknowledged by the
/// agent's `after` and dropped.
const MAX_QUEUED: usize = 10_000;

impl Queues {
    pub fn new(incarnation: String) -> Queues {
        Queues {
            incarnation,
            hosts: Mutex::new(HashMap::new()),
            heartbeats: Mutex::new(HashMap::new()),
            log_sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a `warden logs` of a cell on `host`; its request id.
    pub fn open_logs(&self, host: &str, tx: tokio::sync::mpsc::Sender<crate::logs::Chunk>) -> String {
        let id = crate::engine::random_id("l-");
        let session = LogSession { host: host.to_string(), tx, answered: Arc::default() };
        self.log_sessions.lock().expect("log sessions lock").insert(id.clone(), session);
        id
    }

    pub fn log_session(&self, id: &str) -> Option<LogSession> {
        self.log_sessions.lock().expect("log sessions lock").get(id).cloned()
    }

    /// Ends a session: its reader sees the end of the stream.
    pub fn close_logs(&self, id: &str) {
        self.log_sessions.lock().expect("log sessions lock").remove(id);
    }

    pub fn heartbeat_seen(&self, host: &str, now: u64) {
        self.heartbeats.lock().expect("heartbeats lock").insert(host.to_string(), now);
    }

    pub fn last_heartbeat(&self, host: &str) -> Option<u64> {
        self.heartbeats.lock().expect("heartbeats lock").get(host).copied()
    }

    pub fn push(&self, host: &str, kind: CommandKind) {
        let mut hosts = self.hosts.lock().expect("queues lock");
        let queue = hosts.entry(host.to_string()).or_default();
        queue.next_seq += 1;
        queue.commands.push(AgentCommand { seq: queue.next_seq, kind });
        if queue.commands.len() > MAX_QUEUED {
            queue.commands.remove(0);
        }
        queue.notify.notify_waiters();
    }

    /// Commands after `after`, dropping the ones the agent has confirmed by asking past them;
    /// and what to wait on when there are none.
    pub fn after(&self, host: &str, after: u64) -> (Vec<AgentCommand>, Arc<Notify>) {
        let mut hosts = self.hosts.lock().expect("queues lock");
        let queue = hosts.entry(host.to_string()).or_default();
        queue.commands.retain(|c| c.seq > after);
        (queue.commands.clone(), queue.notify.clone())
    }
}

pub struct Cluster {
    pub config: ClusterConfig,
    /// `warden up`'s own node: cells placed here run under this process, with no lease.
    pub local_host: Option<String>,
    pub queues: Arc<Queues>,
    /// Last heartbeat per host, on this process's clock.
    last_seen: HashMap<String, u64>,
    /// Lease expiry per workload, on this process's clock (not journaled; see module docs).
    lease_expiry: HashMap<String, u64>,
    /// When the next cell on a down host reaches its `lost_after` (see the engine).
    pub next_write_off: Option<u64>,
    /// Hosts whose inventory is wanted (all of them after a restart).
    pub want_inventory: HashSet<String>,
    /// Starts waiting for a host or a lease: (workload, cell) → when to try again.
    pub deferred: BTreeMap<(String, String), u64>,
    /// New cells of warm-standby workloads offered to their standbys (`Promote`): (workload,
    /// cell) → when to stop waiting for one to win the lease and place the cell cold instead.
    promoting: HashMap<(String, String), u64>,
}

/// How long past the last standby's turn a promotion may take before the cell is placed cold.
pub const PROMOTION_FALLBACK_MS: u64 = 2_000;

/// Why a standby's `acquire` was refused (409 to the agent).
#[derive(Debug)]
pub struct AcquireRefused(pub String);

impl Cluster {
    pub fn new(config: ClusterConfig, local_host: Option<String>, projection: &Projection, now: u64) -> Cluster {
        let grace_until = now + RESTART_GRACE_MS;
        Cluster {
            config,
            local_host,
            queues: Arc::new(Queues::new(crate::engine::random_id("i-"))),
            last_seen: projection.hosts.keys().map(|h| (h.clone(), grace_until)).collect(),
            lease_expiry: projection
                .leases
                .iter()
                .filter(|(_, l)| l.holder.is_some())
                .map(|(w, _)| {
                    let lost_after = projection.workloads.get(w).and_then(|w| w.spec.placement.as_ref()?.lost_after_ms);
                    (w.clone(), now + config.lease.ttl_ms.max(lost_after.unwrap_or(0)))
                })
                .collect(),
            want_inventory: projection.hosts.keys().cloned().collect(),
            deferred: BTreeMap::new(),
            promoting: HashMap::new(),
            next_write_off: None,
        }
    }

    pub fn is_local(&self, host: &str) -> bool {
        self.local_host.as_deref() == Some(host)
    }

    pub fn seen(&mut self, host: &str, now: u64) {
        let entry = self.last_seen.entry(host.to_string()).or_insert(now);
        *entry = (*entry).max(now);
    }

    /// The last heartbeat from `host` on this process's clock (the end of the restart grace
    /// period for one not heard from since).
    pub fn last_seen(&self, host: &str) -> Option<u64> {
        self.last_seen.get(host).copied()
    }

    /// Hosts that are up in the journal but silent past `host_ttl`.
    pub fn silent_hosts(&self, projection: &Projection, now: u64) -> Vec<String> {
        projection
            .hosts
            .values()
            .filter(|h| h.up && !self.is_local(&h.name))
            .filter(|h| self.last_seen.get(&h.name).is_none_or(|seen| now.saturating_sub(*seen) > self.config.host_ttl_ms))
            .map(|h| h.name.clone())
            .collect()
    }

    /// When the next host could go silent, or a deferred start is due.
    pub fn next_deadline_ms(&self, projection: &Projection) -> Option<u64> {
        let silence = projection
            .hosts
            .values()
            .filter(|h| h.up && !self.is_local(&h.name))
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

    /// The lease as `warden_core::lease` sees it: the journaled epoch and holder plus the
    /// in-memory expiry.
    fn lease(&self, projection: &Projection, workload_id: &str) -> Option<Lease> {
        projection.leases.get(workload_id).map(|l| Lease {
            workload_id: workload_id.to_string(),
            epoch: l.epoch,
            holder: l.holder.clone(),
            expires_at_ms: self.lease_expiry.get(workload_id).copied().unwrap_or(0),
            state_uri: None,
        })
    }

    /// Renews a host's claim if the lease is still its own *and* the workload's current cell is
    /// the one on that host: a host declared down has had its cell written off, so its renewals
    /// are refused even before the lease expires, and its shim fences the cell.
    pub fn renew(&mut self, projection: &Projection, host: &str, claim: &LeaseClaim, now: u64) -> bool {
        let current = projection
            .workloads
            .get(&claim.workload_id)
            .is_some_and(|w| w.current_host() == Some(host) && w.epoch == Some(claim.epoch));
        let Some(lease) = self.lease(projection, &claim.workload_id) else { return false };
        let Some(timing) = projection.workloads.get(&claim.workload_id).map(|w| self.lease_timing(w)) else { return false };
        match (current, warden_core::lease::renew(&lease, host, claim.epoch, now, &timing)) {
            (true, Ok(renewed)) => {
                self.lease_expiry.insert(claim.workload_id.clone(), renewed.expires_at_ms);
                true
            }
            _ => false,
        }
    }

    /// Picks a host for a new cell of `workload` and, on a cluster host, the lease to run it
    /// under. `Ok(events)` to journal with the start; `Err(retry_at)` if it must wait (no host
    /// fits, or the previous holder's lease has not expired yet).
    pub fn place(
        &mut self,
        projection: &Projection,
        workload: &Workload,
        cell_id: &str,
        now: u64,
    ) -> Result<Vec<EventData>, u64> {
        let workload_id = workload.id();
        let key = (workload_id.to_string(), cell_id.to_string());
        match self.promoting.get(&key).copied() {
            Some(fallback_at) if now < fallback_at => return Err(fallback_at),
            // No standby won in time (all partitioned, or their hosts died too): place it cold.
            Some(_) => {
                self.promoting.remove(&key);
            }
            None => {
                if let Some(retry_at) = self.offer_to_standbys(projection, workload, cell_id, now) {
                    return Err(retry_at);
                }
            }
        }
        let host = self.choose_host(projection, workload).ok_or(now + 1_000)?;
        if self.is_local(&host) {
            return Ok(vec![EventData::CellPlaced {
                workload_id: workload_id.to_string(),
                cell_id: cell_id.to_string(),
                host,
                epoch: None,
                adopts: None,
            }]);
        }
        let current = self.lease(projection, workload_id);
        let expected = current.as_ref().map_or(0, |l| l.epoch);
        match acquire(current.as_ref(), workload_id, &host, expected, now, &self.lease_timing(workload)) {
            Ok(lease) => {
                self.lease_expiry.insert(workload_id.to_string(), lease.expires_at_ms);
                Ok(vec![
                    EventData::LeaseGranted { workload_id: workload_id.to_string(), epoch: lease.epoch, host: host.clone() },
                    EventData::CellPlaced {
                        workload_id: workload_id.to_string(),
                        cell_id: cell_id.to_string(),
                        host,
                        epoch: Some(lease.epoch),
                        adopts: None,
                    },
                ])
            }
            Err(LeaseRefused::Held { grantable_at_ms, .. }) => Err(grantable_at_ms),
            Err(_) => Err(now + 100),
        }
    }

    /// A warm-standby workload's new cell goes to one of its standbys: once the lease can be
    /// granted, every standby host is told to `Promote`, and the first to win the lease runs the
    /// cell ([`Cluster::acquire_for_standby`]). `Some(retry_at)` while that is under way; `None`
    /// if there is no live standby to offer it to.
    fn offer_to_standbys(&mut self, projection: &Projection, workload: &Workload, cell_id: &str, now: u64) -> Option<u64> {
        let live: Vec<&str> = workload
            .standbys
            .iter()
            .map(|slot| slot.host.as_str())
            .filter(|host| projection.hosts.get(*host).is_some_and(|h| h.up))
            .collect();
        if live.is_empty() {
            return None;
        }
        let current = self.lease(projection, workload.id());
        if let Some(lease) = current.as_ref().filter(|l| l.holder.is_some()) {
            let grantable_at = lease.expires_at_ms.saturating_add(self.config.lease.margin_ms);
            if now < grantable_at {
                return Some(grantable_at);
            }
        }
        let expected_epoch = current.as_ref().map_or(0, |l| l.epoch);
        for host in &live {
            let promote =
                CommandKind::Promote { workload_id: workload.id().to_string(), cell_id: cell_id.to_string(), expected_epoch };
            self.queues.push(host, promote);
        }
        let turns = workload.spec.replication.promotion_delay().saturating_mul(workload.standbys.len() as u64);
        let fallback_at = now + turns + PROMOTION_FALLBACK_MS;
        self.promoting.insert((workload.id().to_string(), cell_id.to_string()), fallback_at);
        Some(fallback_at)
    }

    /// A standby on `host` asks for the lease to run `cell_id`: granted (compare-and-swap on
    /// `expected_epoch`) only for the cell being offered, to a host holding a slot, while nobody
    /// else may still run the primary. The events to journal: the grant, the placement, and the
    /// slot's release (the standby is the primary now).
    pub fn acquire_for_standby(
        &mut self,
        projection: &Projection,
        host: &str,
        request: &crate::proto::AcquireRequest,
        now: u64,
    ) -> Result<(Vec<EventData>, u64), AcquireRefused> {
        let refuse = |why: String| Err(AcquireRefused(why));
        let Some(workload) = projection.workloads.get(&request.workload_id) else {
            return refuse(format!("no workload {}", request.workload_id));
        };
        let offered = matches!(&workload.phase, Phase::Starting { cell_id, .. } if *cell_id == request.cell_id)
            && workload.placed_cell.as_deref() != Some(request.cell_id.as_str());
        if !offered {
            return refuse(format!("cell {} is not waiting for a standby", request.cell_id));
        }
        let Some(slot) = workload.standbys.iter().find(|slot| slot.host == host) else {
            return refuse(format!("host {host} holds no standby slot of {}", request.workload_id));
        };
        // A hot standby is promoted in place: its running cell becomes the workload's.
        let adopts = match &request.hot_cell {
            Some(cell) if workload.spec.replication.hot && *cell == slot.hot_cell_id(workload.id()) => Some(cell.clone()),
            Some(cell) => return refuse(format!("{cell} is not the hot standby of {} on {host}", request.workload_id)),
            None => None,
        };
        let current = self.lease(projection, &request.workload_id);
        let timing = self.lease_timing(workload);
        let lease = acquire(current.as_ref(), &request.workload_id, host, request.expected_epoch, now, &timing)
            .map_err(|refused| AcquireRefused(refused.to_string()))?;
        self.lease_expiry.insert(request.workload_id.clone(), lease.expires_at_ms);
        let key = (request.workload_id.clone(), request.cell_id.clone());
        self.promoting.remove(&key);
        self.deferred.remove(&key);
        let events = vec![
            EventData::LeaseGranted { workload_id: request.workload_id.clone(), epoch: lease.epoch, host: host.to_string() },
            EventData::CellPlaced {
                workload_id: request.workload_id.clone(),
                cell_id: request.cell_id.clone(),
                host: host.to_string(),
                epoch: Some(lease.epoch),
                adopts,
            },
            EventData::StandbyReleased {
                workload_id: request.workload_id.clone(),
                host: host.to_string(),
                reason: format!("promoted to primary at epoch {}", lease.epoch),
            },
        ];
        Ok((events, lease.epoch))
    }

    /// An admissible host that is up, with the fewest live cells; the local node when the
    /// workload has no placement and no cluster host admits it.
    fn choose_host(&self, projection: &Projection, workload: &Workload) -> Option<String> {
        let placement = workload.spec.placement.as_ref();
        // `warden up` keeps a workload without `[placement]` on its own node, as it always did.
        if let (None, Some(local)) = (placement, &self.local_host) {
            return Some(local.clone());
        }
        // Spread first (fewest instances of the same spec name and owner), then least loaded.
        let mut load: HashMap<&str, (usize, usize)> = HashMap::new();
        for w in projection.workloads.values() {
            if let Some(host) = w.current_host().filter(|_| w.id() != workload.id()) {
                let entry = load.entry(host).or_default();
                if w.spec.name == workload.spec.name && w.info.owner == workload.info.owner {
                    entry.0 += 1;
                }
                entry.1 += 1;
            }
        }
        // A new version goes where the old one ran (`replaced_on`), if that host still may take it.
        projection
            .hosts
            .values()
            .filter(|h| h.up && (!h.draining || workload.pinned_host.is_some()))
            .filter(|h| workload.pinned_host.as_deref().is_none_or(|pin| pin == h.name))
            .filter(|h| placement.is_none_or(|p| p.admits(h.channel.as_deref(), &h.tags)))
            .min_by_key(|h| {
                let elsewhere = workload.replaced_on.as_deref() != Some(h.name.as_str());
                (elsewhere, load.get(h.name.as_str()).copied().unwrap_or_default(), h.name.clone())
            })
            .map(|h| h.name.clone())
    }
}
