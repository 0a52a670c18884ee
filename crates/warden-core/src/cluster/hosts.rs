//! Hosts: enrollment, liveness (a host silent past `host_ttl` is down), the write-off of cells on
//! a host that stays down past their tolerance, drain, and removal (its cells written off at
//! once, its key refused for good).

use crate::batch::{Batch, Order};
use crate::event::EventData;
use crate::spec::is_tag;
use crate::workload::{Input, Phase};

use super::state::{ClusterError, ClusterState};

/// Why a host's name, channel or tags cannot be enrolled: they are shown on operators' terminals,
/// matched by specs and written into paths and URLs, so a name is what DNS allows (letters,
/// digits, `.`, `-`, `_`; at most 253 characters, starting with a letter or digit), a channel the
/// same in at most 63, and a tag any printable text without spaces or commas in at most 128.
pub fn check_host_labels(host: &str, channel: Option<&str>, tags: &[String]) -> Result<(), String> {
    let dns_like = |text: &str, max: usize| {
        !text.is_empty()
            && text.len() <= max
            && text.starts_with(|c: char| c.is_ascii_alphanumeric())
            && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    if !dns_like(host, 253) {
        return Err(format!(
            "host name {host:?}: letters, digits, '.', '-' and '_' only, at most 253, starting with a letter or digit"
        ));
    }
    if let Some(channel) = channel.filter(|channel| !dns_like(channel, 63)) {
        return Err(format!(
            "channel {channel:?}: letters, digits, '.', '-' and '_' only, at most 63, starting with a letter or digit"
        ));
    }
    if let Some(tag) = tags.iter().find(|tag| !is_tag(tag)) {
        return Err(format!("tag {tag:?}: printable, no spaces or commas, 1 to 128 characters"));
    }
    Ok(())
}

impl ClusterState {
    /// A host enrolls (its join token already checked) with its host key `principal`. A known
    /// host may enroll again with the same key (an agent that lost its state); another key for
    /// the same name is refused.
    pub fn enroll(
        &mut self,
        batch: &mut Batch,
        host: &str,
        principal: &str,
        channel: Option<String>,
        tags: Vec<String>,
    ) -> Result<(), ClusterError> {
        check_host_labels(host, channel.as_deref(), &tags).map_err(|reason| ClusterError::BadHostLabel { reason })?;
        if batch.live().removed_host_keys.contains(principal) {
            return Err(ClusterError::KeyRemoved { host: host.to_string() });
        }
        match batch.live().hosts.get(host) {
            Some(record) if record.principal != principal => return Err(ClusterError::WrongKey { host: host.to_string() }),
            Some(_) => {}
            None => {
                if self.is_local(host) {
                    return Err(ClusterError::LocalNode { host: host.to_string() });
                }
                batch.record(EventData::HostEnrolled { host: host.to_string(), principal: principal.to_string(), channel, tags });
            }
        }
        self.seen(host, batch.now_ms);
        Ok(())
    }

    /// Hosts silent past `host_ttl` are down. Their cells are written off once the host has been
    /// silent for the workload's tolerance (`host_ttl`, or its `placement.lost_after`), which is
    /// also how long its lease lasts: the lease is not released, and the shim fences the cell
    /// before it expires.
    pub fn check_hosts(&mut self, batch: &mut Batch) {
        let now = batch.now_ms;
        let ttl = self.config.host_ttl_ms;
        let silent: Vec<String> = self
            .cluster_hosts(batch.live())
            .filter(|h| h.up)
            .filter(|h| self.last_seen.get(&h.name).is_none_or(|seen| now.saturating_sub(*seen) > ttl))
            .map(|h| h.name.clone())
            .collect();
        for host in silent {
            batch.record(EventData::HostDown { host: host.clone(), reason: format!("no heartbeat for {ttl} ms") });
            self.want_inventory.insert(host);
        }
        self.next_write_off = None;
        if batch.live().hosts.values().all(|h| h.up) {
            return;
        }
        let mut lost = Vec::new();
        for w in batch.live().workloads.values() {
            let Some(host) = w.current_host().filter(|h| batch.live().hosts.get(*h).is_some_and(|r| !r.up)) else { continue };
            let Some(cell_id) = w.phase.cell_id() else { continue };
            let silent_since = self.last_seen(host).unwrap_or(0);
            let write_off_at = silent_since.saturating_add(self.tolerance_ms(w));
            if now > write_off_at {
                lost.push((w.id().to_string(), cell_id.to_string(), host.to_string()));
            } else {
                self.next_write_off = Some(self.next_write_off.map_or(write_off_at + 1, |at| at.min(write_off_at + 1)));
            }
        }
        for (workload_id, cell_id, host) in lost {
            let input = Input::HostLost { cell_id, host: Some(host.clone()), reason: format!("host {host} is down") };
            batch.advance_report(&workload_id, &input);
        }
    }

    /// Drains a host (or takes it back into service): it takes no new cells or standbys, and
    /// each primary on it (but `each-host` instances, which may run nowhere else) is evicted by
    /// its agent, which gives the lease up with a final checkpoint (`revoke`), so the failover
    /// needs no timeout.
    pub fn drain(&mut self, batch: &mut Batch, host: &str, drain: bool) -> Result<(), ClusterError> {
        let Some(record) = batch.live().hosts.get(host) else {
            return Err(ClusterError::UnknownHost { host: host.to_string() });
        };
        if record.draining != drain {
            batch.record(EventData::HostDrain { host: host.to_string(), drain });
        }
        if !drain {
            return Ok(());
        }
        let mut evictions = Vec::new();
        for w in batch.live().workloads.values() {
            if w.current_host() != Some(host) || w.pinned_host.is_some() {
                continue;
            }
            let (Some(cell), Some(epoch)) = (w.phase.running_cell(), w.epoch) else { continue };
            if matches!(w.phase, Phase::Stopping { .. }) {
                continue;
            }
            evictions.push(Order::Evict {
                host: host.to_string(),
                workload_id: w.id().to_string(),
                cell_id: cell.cell_id.clone(),
                epoch,
                grace_ms: w.spec.cell.graceful_shutdown_ms,
            });
        }
        batch.orders.extend(evictions);
        Ok(())
    }

    /// An admin removes `host`: every cell on it is written off at once (as if it had been down
    /// past its tolerance: the workloads restart or fail over elsewhere, under a new lease once
    /// the old one has expired, since the host can no longer renew it), `each-host` instances
    /// pinned to it stop, and its key is refused from then on, on every route and at enrollment.
    pub fn remove_host(&mut self, batch: &mut Batch, host: &str, caller: &str) -> Result<(), ClusterError> {
        if self.is_local(host) {
            return Err(ClusterError::LocalNode { host: host.to_string() });
        }
        let Some(record) = batch.live().hosts.get(host) else {
            return Err(ClusterError::UnknownHost { host: host.to_string() });
        };
        let principal = record.principal.clone();
        let reason = format!("host {host} was removed by {caller}");
        let mut lost = Vec::new();
        let mut pinned = Vec::new();
        for w in batch.live().workloads.values() {
            if w.phase.is_terminal() {
                continue;
            }
            if let (Some(cell_id), Some(true)) = (w.phase.cell_id(), w.current_host().map(|h| h == host)) {
                lost.push((w.id().to_string(), cell_id.to_string()));
            }
            if w.pinned_host.as_deref() == Some(host) {
                pinned.push(w.id().to_string());
            }
        }
        for (workload_id, cell_id) in lost {
            let input = Input::HostLost { cell_id, host: Some(host.to_string()), reason: reason.clone() };
            batch.advance_report(&workload_id, &input);
        }
        for workload_id in pinned {
            batch.advance_report(&workload_id, &Input::Stop);
        }
        batch.record(EventData::HostRemoved { host: host.to_string(), principal, reason });
        self.last_seen.remove(host);
        self.want_inventory.remove(host);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterConfig;
    use crate::projection::Projection;
    use crate::Spec;

    #[test]
    fn removing_a_host_writes_its_cell_off_at_once_and_the_new_cell_waits_for_the_old_lease() {
        let mut projection = Projection::default();
        let mut cluster = ClusterState::after_restart(ClusterConfig::default(), None, &projection, 0);
        let mut batch = Batch::new(&mut projection, 0);
        for host in ["a", "b"] {
            cluster.enroll(&mut batch, host, &format!("key-{host}"), None, Vec::new()).unwrap();
        }
        let text =
            "name = \"w\"\n[cell]\nargv = [\"sleep\", \"9\"]\n[restart]\npolicy = \"always\"\nbackoff = \"0ms\"\n[placement]\n";
        let spec = Spec::parse("w.toml", text).unwrap();
        batch.submit(spec.workload_info("w-1".into(), "owner".into(), None, 0), spec, None);
        cluster.place(&mut batch);
        let host = batch.live().workloads["w-1"].current_host().unwrap().to_string();
        let epoch = batch.live().leases["w-1"].epoch;
        let other = if host == "a" { "b" } else { "a" };

        let mut batch = Batch::new(&mut projection, 10);
        cluster.remove_host(&mut batch, &host, "admin").unwrap();
        for id in batch.live().due(10) {
            batch.advance(&id, &crate::workload::Input::Tick).unwrap();
        }
        cluster.place(&mut batch);
        let destroyed = batch.events.iter().position(|e| matches!(e, EventData::LifecycleDestroyed { .. }));
        let removed = batch.events.iter().position(|e| matches!(e, EventData::HostRemoved { .. }));
        assert!(destroyed.is_some() && destroyed < removed, "written off before the removal: {:?}", batch.events);
        assert!(!batch.events.iter().any(|e| matches!(e, EventData::CellPlaced { .. })), "{:?}", batch.events);

        // Once the old lease has run out, the new cell goes to the other host at a higher epoch.
        let later = ClusterConfig::default().lease.ttl_ms * 2 + 10;
        let mut batch = Batch::new(&mut projection, later);
        cluster.place(&mut batch);
        let w = &batch.live().workloads["w-1"];
        assert_eq!(w.current_host(), Some(other), "{:?}", batch.events);
        assert!(batch.live().leases["w-1"].epoch > epoch);
        assert!(projection.removed_host_keys.contains(&format!("key-{host}")));
    }
}
