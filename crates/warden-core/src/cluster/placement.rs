//! Placement: which host a new cell goes to (and the lease it runs under there), a warm-standby
//! workload's new cell offered to its standbys first, standby slots kept to what each workload
//! asks for, and the hosts `instances = N` and `each-host` services expand to.

use crate::batch::{Batch, Order};
use crate::event::EventData;
use crate::lease::{acquire, LeaseRefused};
use crate::projection::Projection;
use crate::spec::{PlacementCount, PlacementSpec, Spec};
use crate::types::ReplicationMode;
use crate::workload::{Effect, Phase, Workload};

use super::state::{ClusterState, PLACEMENT_RETRY_MS, PROMOTION_FALLBACK_MS};

/// The service an `each-host` instance belongs to: `ID` of its consumer id `ID@HOST`.
pub fn each_host_group(consumer_workload_id: &str) -> Option<&str> {
    consumer_workload_id.rsplit_once('@').map(|(group, _)| group)
}

/// The workloads one submission becomes: (consumer id, pinned host) each.
pub type SubmitTargets = Vec<(Option<String>, Option<String>)>;

/// An `each-host` instance a host that joined (or came to match) should get.
#[derive(Clone, Debug, PartialEq)]
pub struct EachHostInstance {
    pub spec: Spec,
    pub owner: String,
    pub consumer_workload_id: String,
    pub host: String,
}

/// Why a submission cannot be accepted as it stands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitRefused {
    #[error("a live workload already has id {0:?}")]
    IdTaken(String),
    #[error("placement mode = \"each-host\": no host that is up matches the placement (see warden hosts)")]
    NoHostForEachHost,
}

/// The workloads a submission of `spec` under `consumer` becomes: one; `instances = N` of them
/// (consumer ids `ID.i`), spread by placement; or one per matching host that is up, pinned to it
/// (`each-host`, consumer ids `ID@HOST`; `group` names the service when the caller gave no id).
pub fn submit_targets(
    projection: &Projection,
    spec: &Spec,
    consumer: Option<&str>,
    group: impl FnOnce() -> String,
) -> Result<SubmitTargets, SubmitRefused> {
    if let Some(wanted) = consumer {
        let taken = projection.workloads.values().any(|w| {
            let other = w.info.consumer_workload_id.as_deref();
            (other == Some(wanted) || other.and_then(each_host_group) == Some(wanted)) && !w.phase.is_terminal()
        });
        if taken {
            return Err(SubmitRefused::IdTaken(wanted.to_string()));
        }
    }
    match spec.placement.as_ref().map(|p| (p, p.count)) {
        Some((_, PlacementCount::Instances(n))) if n > 1 => {
            Ok((0..n).map(|i| (consumer.map(|wanted| format!("{wanted}.{i}")), None)).collect())
        }
        Some((placement, PlacementCount::EachHost)) => {
            let group = consumer.map_or_else(group, str::to_string);
            let hosts: SubmitTargets = projection
                .hosts
                .values()
                .filter(|h| h.up && placement.admits(h.channel.as_deref(), &h.tags))
                .map(|h| (Some(format!("{group}@{}", h.name)), Some(h.name.clone())))
                .collect();
            if hosts.is_empty() {
                return Err(SubmitRefused::NoHostForEachHost);
            }
            Ok(hosts)
        }
        _ => Ok(vec![(consumer.map(str::to_string), None)]),
    }
}

/// `each-host` services follow the hosts: a host that is up and matches, and never had an
/// instance of a service that still runs somewhere, gets one. (A host that leaves keeps its
/// instance, which waits for it: it may run nowhere else.)
pub fn each_host_missing(projection: &Projection) -> Vec<EachHostInstance> {
    if projection.hosts.is_empty() {
        return Vec::new();
    }
    // group → (a live instance, the hosts that ever had an instance)
    let mut groups: std::collections::BTreeMap<&str, (Option<&Workload>, Vec<&str>)> = Default::default();
    for w in projection.workloads.values() {
        let (Some(pin), Some(group)) =
            (w.pinned_host.as_deref(), w.info.consumer_workload_id.as_deref().and_then(each_host_group))
        else {
            continue;
        };
        let entry = groups.entry(group).or_default();
        entry.1.push(pin);
        if !w.phase.is_terminal() && entry.0.is_none_or(|live| live.info.created_at <= w.info.created_at) {
            entry.0 = Some(w);
        }
    }
    let mut missing = Vec::new();
    for (group, (live, covered)) in groups {
        let Some(live) = live else { continue };
        let Some(placement) = live.spec.placement.as_ref() else { continue };
        for host in projection.hosts.values() {
            if host.up && placement.admits(host.channel.as_deref(), &host.tags) && !covered.contains(&host.name.as_str()) {
                missing.push(EachHostInstance {
                    spec: live.spec.clone(),
                    owner: live.info.owner.clone(),
                    consumer_workload_id: format!("{group}@{}", host.name),
                    host: host.name.clone(),
                });
            }
        }
    }
    missing
}

impl ClusterState {
    /// Places every cell the batch decided to start, and retries the deferred ones that are
    /// due: each `StartCell` effect either gets its host (and lease) recorded in this batch, or
    /// is held back until it can.
    pub fn place(&mut self, batch: &mut Batch) {
        let now = batch.now_ms;
        let due: Vec<(String, String)> = self.deferred.iter().filter(|(_, at)| **at <= now).map(|(key, _)| key.clone()).collect();
        for (workload_id, cell_id) in due {
            self.deferred.remove(&(workload_id.clone(), cell_id.clone()));
            let still_starting = batch
                .live()
                .workloads
                .get(&workload_id)
                .is_some_and(|w| matches!(&w.phase, Phase::Starting { cell_id: c, .. } if *c == cell_id));
            if still_starting {
                batch.effects.push(Effect::StartCell { workload_id, cell_id });
            }
        }
        let effects = std::mem::take(&mut batch.effects);
        let mut kept = Vec::with_capacity(effects.len());
        for effect in effects {
            let Effect::StartCell { workload_id, cell_id } = &effect else {
                kept.push(effect);
                continue;
            };
            let Some(workload) = batch.live().workloads.get(workload_id) else { continue };
            if workload.placed_cell.as_deref() == Some(cell_id.as_str()) {
                kept.push(effect); // placed before a restart; starting it again
                continue;
            }
            match self.place_cell(batch.live(), workload, cell_id, now) {
                Ok((placed, orders)) => {
                    batch.orders.extend(orders);
                    for data in placed {
                        batch.record(data);
                    }
                    kept.push(effect);
                }
                Err((retry_at, orders)) => {
                    batch.orders.extend(orders);
                    self.defer(workload_id, cell_id, retry_at);
                }
            }
        }
        batch.effects.extend(kept);
    }

    /// Picks a host for a new cell of `workload` and, on a cluster host, the lease to run it
    /// under: `Ok(events)` to record with the start, or `Err(retry_at)` if it must wait (no
    /// host fits, the previous holder's lease has not expired yet, or its standbys are bidding).
    /// Either way, the orders to send (a promotion offer).
    #[allow(clippy::type_complexity)]
    fn place_cell(
        &mut self,
        projection: &Projection,
        workload: &Workload,
        cell_id: &str,
        now: u64,
    ) -> Result<(Vec<EventData>, Vec<Order>), (u64, Vec<Order>)> {
        let workload_id = workload.id();
        let key = (workload_id.to_string(), cell_id.to_string());
        match self.promoting.get(&key).copied() {
            Some(fallback_at) if now < fallback_at => return Err((fallback_at, Vec::new())),
            // No standby won in time (all partitioned, or their hosts died too): place it cold.
            Some(_) => {
                self.promoting.remove(&key);
            }
            None => {
                if let Some((retry_at, offers)) = self.offer_to_standbys(projection, workload, cell_id, now) {
                    return Err((retry_at, offers));
                }
            }
        }
        let Some(host) = self.choose_host(projection, workload) else { return Err((now + PLACEMENT_RETRY_MS, Vec::new())) };
        let placed = |host: String, epoch| EventData::CellPlaced {
            workload_id: workload_id.to_string(),
            cell_id: cell_id.to_string(),
            host,
            epoch,
            adopts: None,
        };
        if self.is_local(&host) {
            return Ok((vec![placed(host, None)], Vec::new()));
        }
        let current = self.lease(projection, workload_id);
        let expected = current.as_ref().map_or(0, |l| l.epoch);
        match acquire(current.as_ref(), workload_id, &host, expected, now, &self.lease_timing(workload)) {
            Ok(lease) => {
                self.lease_expiry.insert(workload_id.to_string(), lease.expires_at_ms);
                let granted =
                    EventData::LeaseGranted { workload_id: workload_id.to_string(), epoch: lease.epoch, host: host.clone() };
                Ok((vec![granted, placed(host, Some(lease.epoch))], Vec::new()))
            }
            Err(LeaseRefused::Held { grantable_at_ms, .. }) => Err((grantable_at_ms, Vec::new())),
            Err(_) => Err((now + 100, Vec::new())),
        }
    }

    /// A warm-standby workload's new cell goes to one of its standbys: once the lease can be
    /// granted, every standby host is told to `Promote`, and the first to win the lease runs the
    /// cell ([`ClusterState::acquire`]). `Some((retry_at, offers))` while that is under way;
    /// `None` if there is no live standby to offer it to.
    fn offer_to_standbys(
        &mut self,
        projection: &Projection,
        workload: &Workload,
        cell_id: &str,
        now: u64,
    ) -> Option<(u64, Vec<Order>)> {
        let live: Vec<&str> = workload
            .standbys
            .iter()
            .map(|slot| slot.host.as_str())
            .filter(|host| projection.hosts.get(*host).is_some_and(|h| h.up && !h.draining))
            .collect();
        if live.is_empty() {
            return None;
        }
        let current = self.lease(projection, workload.id());
        if let Some(lease) = current.as_ref().filter(|l| l.holder.is_some()) {
            let grantable_at = lease.expires_at_ms.saturating_add(self.config.lease.margin_ms);
            if now < grantable_at {
                return Some((grantable_at, Vec::new()));
            }
        }
        let expected_epoch = current.as_ref().map_or(0, |l| l.epoch);
        let offers = live
            .iter()
            .map(|host| Order::Promote {
                host: host.to_string(),
                workload_id: workload.id().to_string(),
                cell_id: cell_id.to_string(),
                expected_epoch,
            })
            .collect();
        let turns = workload.spec.replication.promotion_delay().saturating_mul(workload.standbys.len() as u64);
        let fallback_at = now + turns + PROMOTION_FALLBACK_MS;
        self.promoting.insert((workload.id().to_string(), cell_id.to_string()), fallback_at);
        Some((fallback_at, offers))
    }

    /// An admissible host that is up, with the fewest live cells; the local node when the
    /// workload has no placement and no cluster host admits it.
    fn choose_host(&self, projection: &Projection, workload: &Workload) -> Option<String> {
        let placement: Option<&PlacementSpec> = workload.spec.placement.as_ref();
        // `warden up` keeps a workload without `[placement]` on its own node, as it always did.
        if let (None, Some(local)) = (placement, &self.local_host) {
            return Some(local.clone());
        }
        // Spread first (fewest instances of the same spec name and owner), then least loaded.
        let mut load: std::collections::HashMap<&str, (usize, usize)> = std::collections::HashMap::new();
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

    /// Arms and releases standby slots (`standby::plan`) for every warm-standby workload, and
    /// tells the hosts concerned.
    pub fn maintain_standbys(&mut self, batch: &mut Batch) {
        if batch.live().hosts.is_empty() {
            return;
        }
        let planned: Vec<EventData> = batch
            .live()
            .workloads
            .values()
            .filter(|w| w.spec.replication.mode == ReplicationMode::WarmStandby)
            .filter(|w| !w.standbys.is_empty() || !w.phase.is_terminal())
            .flat_map(|w| crate::standby::plan(w, &batch.live().hosts, batch.now_ms))
            .collect();
        for data in planned {
            let order = match &data {
                EventData::StandbyArmed { workload_id, slot } => {
                    Some(Order::Arm { host: slot.host.clone(), workload_id: workload_id.clone(), slot: slot.clone() })
                }
                EventData::StandbyReleased { workload_id, host, .. } => {
                    Some(Order::Disarm { host: host.clone(), workload_id: workload_id.clone() })
                }
                _ => None,
            };
            batch.record(data);
            batch.orders.extend(order);
        }
    }
}
