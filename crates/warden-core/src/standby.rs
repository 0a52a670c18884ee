//! Warm standbys: where a workload's `StandbySlot`s go (`plan`; the slot itself is a leaf type in
//! `types`), and the pure state machine of one host's role for one
//! workload — the primary, running under a fenced lease, or standby *i*, armed and waiting its
//! turn to promote.
//!
//! ```text
//!   Standby{i} ──lease grantable (epoch e)──▶ waits i × promotion_delay ──▶ asks acquire(e)
//!      ▲                                                                       │
//!      ├──────────── refused (someone promoted first: epoch moved on) ◀────────┤
//!      │                                                                       ▼ granted e+1
//!   Fenced ◀── renewal refused / fence deadline passed ── Primary{epoch} ◀─────┘ (StartPrimary)
//! ```
//!
//! Promotion never relies on timing for safety: the store's compare-and-swap on the epoch admits
//! one winner per epoch, and the loser of a race sees `Stale`. The delays only make the lowest
//! index that is alive and connected the usual winner, and keep standbys from stampeding.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::EventData;
use crate::lease::{HeldLease, LeaseTiming};
use crate::projection::HostRecord;
use crate::workload::{Phase, Workload};
// Defined in the leaf `types` (events carry it too); kept at its old path for other crates.
pub use crate::types::StandbySlot;

/// The slot changes that bring `workload`'s standbys to what its spec asks for, given the hosts:
/// `standbys` slots on up, admissible hosts other than the primary's, each naming the current
/// primary and its peers. A slot whose host is down, or is the primary's now, is released (and
/// armed elsewhere); a workload that ended, or is being stopped, releases every slot. While a
/// failover is under way (the new cell has no host yet) the slots are left alone: they are what
/// the failover is waiting on.
///
/// Hosts are chosen by rendezvous hashing on (workload, host), so standbys of many workloads
/// spread over the hosts and a host joining or leaving moves few of them.
pub fn plan(workload: &Workload, hosts: &BTreeMap<String, HostRecord>, now_ms: u64) -> Vec<EventData> {
    let id = workload.id();
    let release = |host: &str, reason: &str| EventData::StandbyReleased {
        workload_id: id.to_string(),
        host: host.to_string(),
        reason: reason.to_string(),
    };
    let ending = workload.phase.is_terminal() || matches!(workload.phase, Phase::Stopping { .. });
    if ending || workload.spec.replication.standby_count() == 0 {
        return workload.standbys.iter().map(|slot| release(&slot.host, "the workload is ending")).collect();
    }
    let Some(primary) = workload.current_host() else { return Vec::new() };
    let placement = workload.spec.placement.as_ref();
    let admissible = |h: &HostRecord| {
        h.up && !h.draining && h.name != primary && placement.is_none_or(|p| p.admits(h.channel.as_deref(), &h.tags))
    };
    let mut events = Vec::new();
    let mut kept: Vec<&StandbySlot> = Vec::new();
    for slot in &workload.standbys {
        match hosts.get(&slot.host) {
            Some(h) if admissible(h) => kept.push(slot),
            Some(h) if h.name == primary => events.push(release(&slot.host, "its host runs the primary")),
            Some(h) if !h.up => events.push(release(&slot.host, "its host is down")),
            Some(h) if h.draining => events.push(release(&slot.host, "its host is drained")),
            _ => events.push(release(&slot.host, "its host no longer matches the placement")),
        }
    }
    let wanted = workload.spec.replication.standby_count();
    let mut candidates: Vec<&HostRecord> =
        hosts.values().filter(|h| admissible(h) && !kept.iter().any(|slot| slot.host == h.name)).collect();
    candidates.sort_by_key(|h| (rendezvous(id, &h.name), h.name.clone()));
    let mut taken: Vec<usize> = kept.iter().map(|slot| slot.standby_index).collect();
    let mut slots: Vec<(usize, String, Option<&StandbySlot>)> =
        kept.iter().map(|slot| (slot.standby_index, slot.host.clone(), Some(*slot))).collect();
    for host in candidates.into_iter().take(wanted.saturating_sub(kept.len())) {
        let index = (0..).find(|i| !taken.contains(i)).expect("a free index");
        taken.push(index);
        slots.push((index, host.name.clone(), None));
    }
    slots.sort_by_key(|(index, ..)| *index);
    let peers: Vec<String> = slots.iter().map(|(_, host, _)| host.clone()).collect();
    for (index, host, existing) in &slots {
        let slot = StandbySlot {
            workload_id: workload.info.consumer_workload_id.clone().unwrap_or_else(|| id.to_string()),
            primary: primary.to_string(),
            standby_index: *index,
            standby_count: slots.len(),
            spec_id: workload.info.spec_id.clone(),
            expires_at: workload.info.expires_at,
            owner: workload.info.owner.clone(),
            created_at: existing.map_or(now_ms, |s| s.created_at),
            peer_standbys: peers.iter().filter(|p| *p != host).cloned().collect(),
            host: host.clone(),
        };
        if existing.is_none_or(|s| *s != slot) {
            events.push(EventData::StandbyArmed { workload_id: id.to_string(), slot });
        }
    }
    events
}

/// FNV-1a of `workload/host`: a stable, well-spread order of hosts per workload.
fn rendezvous(workload_id: &str, host: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in workload_id.bytes().chain(std::iter::once(b'/')).chain(host.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl StandbySlot {
    /// The cell a hot standby runs in this slot: named by the slot's arming, so a slot armed
    /// anew gets a new cell, and the control plane and the agent agree on it without asking.
    pub fn hot_cell_id(&self, workload_id: &str) -> String {
        format!("{workload_id}.hot-{}", self.created_at)
    }
}

/// One host's role for one workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Armed, not running. `seen_epoch` is the newest lease epoch this host knows of.
    Standby { index: usize, seen_epoch: u64, promotion: Option<Promotion> },
    /// Running the primary; the cell must be gone by `held.deadline_ms` unless renewed.
    Primary { held: HeldLease },
    /// Was primary, lost the lease (fenced or refused); its cell is gone or being killed.
    Fenced { epoch: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Promotion {
    /// The lease became grantable at `expected_epoch`; ask at `at_ms` (local clock).
    Waiting { expected_epoch: u64, at_ms: u64 },
    /// Asked at `sent_at_ms`; the answer decides.
    Asking { expected_epoch: u64, sent_at_ms: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoleInput {
    /// From the control plane: the lease is at `epoch`, and may be granted now (`grantable`:
    /// released, or past expiry plus margin) or not.
    Observed { epoch: u64, grantable: bool },
    /// The local clock moved.
    Tick,
    /// Our `acquire` (sent at `sent_at_ms`) was granted `epoch`.
    Acquired { epoch: u64, sent_at_ms: u64 },
    /// Our `acquire` lost: the lease is at `current_epoch` (or held and not yet grantable).
    AcquireRefused { current_epoch: u64 },
    /// A renewal of `epoch` sent at `sent_at_ms` was answered yes.
    Renewed { epoch: u64, sent_at_ms: u64 },
    /// A renewal of `epoch` was refused: the lease is gone.
    RenewRefused { epoch: u64 },
    /// A renewal sent at `sent_at_ms` found no control plane at all (its connection was refused,
    /// now): evidence that renews the primary's lease if its fence has not passed
    /// (`HeldLease::no_control_plane`). Fed only for workloads that ride outages out.
    NoControlPlane { sent_at_ms: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoleEffect {
    /// Ask the control plane for the lease, expecting it at `expected_epoch`.
    SendAcquire { expected_epoch: u64 },
    /// Start the primary cell with `WARDEN_EPOCH = epoch` under `held`'s fence.
    StartPrimary { held: HeldLease },
    /// Extend the running cell's fence (the shim's lease file).
    ExtendFence { held: HeldLease },
    /// Kill the primary cell of `epoch` now (the shim also does this on its own at the deadline).
    KillPrimary { epoch: u64, reason: String },
}

impl Role {
    pub fn standby(index: usize) -> Role {
        Role::Standby { index, seen_epoch: 0, promotion: None }
    }

    /// Applies one input at local time `now_ms`; returns what the host must do.
    pub fn step(&mut self, input: RoleInput, now_ms: u64, promotion_delay_ms: u64, timing: &LeaseTiming) -> Vec<RoleEffect> {
        let mut effects = Vec::new();
        match (&mut *self, input) {
            (Role::Standby { index, seen_epoch, promotion }, RoleInput::Observed { epoch, grantable }) => {
                *seen_epoch = (*seen_epoch).max(epoch);
                match (grantable, *promotion) {
                    (false, Some(Promotion::Waiting { .. })) => *promotion = None,
                    (true, None) => {
                        let at_ms = now_ms.saturating_add(promotion_delay_ms.saturating_mul(*index as u64));
                        *promotion = Some(Promotion::Waiting { expected_epoch: epoch, at_ms });
                    }
                    // A newer grantable epoch restarts the wait from it.
                    (true, Some(Promotion::Waiting { expected_epoch, .. })) if epoch > expected_epoch => {
                        let at_ms = now_ms.saturating_add(promotion_delay_ms.saturating_mul(*index as u64));
                        *promotion = Some(Promotion::Waiting { expected_epoch: epoch, at_ms });
                    }
                    _ => {}
                }
            }
            (Role::Standby { promotion, .. }, RoleInput::Tick) => {
                if let Some(Promotion::Waiting { expected_epoch, at_ms }) = *promotion {
                    if now_ms >= at_ms {
                        *promotion = Some(Promotion::Asking { expected_epoch, sent_at_ms: now_ms });
                        effects.push(RoleEffect::SendAcquire { expected_epoch });
                    }
                }
            }
            // Only an answer to the request in flight counts; a stray one is ignored (and the
            // lease it names simply expires, since nobody renews it).
            (Role::Standby { promotion, seen_epoch, .. }, RoleInput::Acquired { epoch, sent_at_ms })
                if matches!(*promotion, Some(Promotion::Asking { sent_at_ms: s, .. }) if s == sent_at_ms)
                    && epoch > *seen_epoch =>
            {
                let held = HeldLease::answered(epoch, sent_at_ms, timing);
                if !held.expired(now_ms) {
                    *self = Role::Primary { held };
                    effects.push(RoleEffect::StartPrimary { held });
                }
            }
            (Role::Standby { promotion, seen_epoch, .. }, RoleInput::AcquireRefused { current_epoch }) => {
                *seen_epoch = (*seen_epoch).max(current_epoch);
                if matches!(*promotion, Some(Promotion::Asking { .. })) {
                    *promotion = None;
                }
            }
            (Role::Primary { held }, RoleInput::Renewed { epoch, sent_at_ms })
                if epoch == held.epoch && !held.expired(now_ms) =>
            {
                held.extend(sent_at_ms, timing);
                effects.push(RoleEffect::ExtendFence { held: *held });
            }
            (Role::Primary { held }, RoleInput::NoControlPlane { sent_at_ms }) => {
                let moved = held.no_control_plane(sent_at_ms, now_ms, timing);
                effects.extend(moved.then_some(RoleEffect::ExtendFence { held: *held }));
            }
            (Role::Primary { held }, RoleInput::RenewRefused { epoch }) if epoch == held.epoch => {
                let epoch = held.epoch;
                *self = Role::Fenced { epoch };
                effects.push(RoleEffect::KillPrimary { epoch, reason: "lease renewal refused".into() });
            }
            (Role::Primary { held }, RoleInput::Tick) if held.expired(now_ms) => {
                let epoch = held.epoch;
                *self = Role::Fenced { epoch };
                effects.push(RoleEffect::KillPrimary { epoch, reason: "lease not renewed in time".into() });
            }
            (Role::Primary { held }, RoleInput::Observed { epoch, .. }) if epoch > held.epoch => {
                // Someone else holds a newer epoch: ours is over, whatever our clock says.
                let epoch = held.epoch;
                *self = Role::Fenced { epoch };
                effects.push(RoleEffect::KillPrimary { epoch, reason: "a newer lease epoch exists".into() });
            }
            _ => {}
        }
        effects
    }

    pub fn is_primary(&self) -> bool {
        matches!(self, Role::Primary { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_waits_its_turn_then_promotes_and_renews() {
        let t = LeaseTiming::default();
        let mut role = Role::standby(2);
        assert!(role.step(RoleInput::Observed { epoch: 4, grantable: true }, 1_000, 500, &t).is_empty());
        assert!(role.step(RoleInput::Tick, 1_999, 500, &t).is_empty(), "index 2 waits 2 × 500 ms");
        assert_eq!(role.step(RoleInput::Tick, 2_000, 500, &t), [RoleEffect::SendAcquire { expected_epoch: 4 }]);
        let effects = role.step(RoleInput::Acquired { epoch: 5, sent_at_ms: 2_000 }, 2_010, 500, &t);
        let held = HeldLease::answered(5, 2_000, &t);
        assert_eq!(effects, [RoleEffect::StartPrimary { held }]);
        assert_eq!(role.step(RoleInput::Renewed { epoch: 5, sent_at_ms: 2_300 }, 2_320, 500, &t).len(), 1);
        let deadline = 2_300 + t.holder_validity_ms();
        assert_eq!(role.step(RoleInput::Tick, deadline - 1, 500, &t), []);
        assert!(matches!(role.step(RoleInput::Tick, deadline, 500, &t)[..], [RoleEffect::KillPrimary { epoch: 5, .. }]));
        assert_eq!(role, Role::Fenced { epoch: 5 });
    }

    #[test]
    fn a_lost_race_or_a_lease_that_came_back_cancels_the_promotion() {
        let t = LeaseTiming::default();
        let mut role = Role::standby(1);
        role.step(RoleInput::Observed { epoch: 1, grantable: true }, 0, 100, &t);
        role.step(RoleInput::Observed { epoch: 1, grantable: false }, 50, 100, &t);
        assert!(role.step(RoleInput::Tick, 500, 100, &t).is_empty(), "the primary renewed in time: no promotion");
        role.step(RoleInput::Observed { epoch: 1, grantable: true }, 600, 100, &t);
        assert_eq!(role.step(RoleInput::Tick, 700, 100, &t), [RoleEffect::SendAcquire { expected_epoch: 1 }]);
        role.step(RoleInput::AcquireRefused { current_epoch: 2 }, 710, 100, &t);
        assert_eq!(role, Role::Standby { index: 1, seen_epoch: 2, promotion: None });
        // A late grant for a request no longer in flight is not acted on.
        assert!(role.step(RoleInput::Acquired { epoch: 2, sent_at_ms: 700 }, 720, 100, &t).is_empty());
    }

    #[test]
    fn a_primary_that_sees_a_newer_epoch_kills_its_cell() {
        let t = LeaseTiming::default();
        let mut role = Role::Primary { held: HeldLease::answered(3, 0, &t) };
        assert!(matches!(
            role.step(RoleInput::Observed { epoch: 4, grantable: false }, 10, 100, &t)[..],
            [RoleEffect::KillPrimary { epoch: 3, .. }]
        ));
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use crate::projection::Projection;
    use crate::spec::Spec;
    use crate::types::WorkloadInfo;
    use crate::workload::{Effect, Input};

    fn host(name: &str, up: bool) -> (String, HostRecord) {
        let record = HostRecord {
            name: name.into(),
            principal: format!("key-{name}"),
            channel: None,
            tags: Vec::new(),
            up,
            enrolled_at_ms: 0,
            since_ms: 0,
            draining: false,
        };
        (name.to_string(), record)
    }

    /// A running warm-standby workload whose primary is on `a`.
    fn running_on_a(standbys: u32) -> (Projection, String) {
        let text = format!(
            "name='kv'\n[cell]\nargv=['sleep','9']\n[replication]\nmode='warm-standby'\nstandbys={standbys}\n[placement]\ninstances=1\n"
        );
        let spec = Spec::parse("kv.toml", &text).unwrap();
        let info = WorkloadInfo {
            id: "w-1".into(),
            vmid: 0,
            workload_type: "process".into(),
            spec_id: "sha256:s".into(),
            created_at: 0,
            expires_at: None,
            owner: "ed25519:o".into(),
            replication: spec.replication.mode,
            restart_policy: spec.restart.policy,
            state_uri: None,
            consumer_workload_id: None,
        };
        let mut projection = Projection::default();
        let decision = projection.submit(info, spec, 0);
        let cell_id = match &decision.effects[..] {
            [Effect::StartCell { cell_id, .. }] => cell_id.clone(),
            other => panic!("{other:?}"),
        };
        let placed = EventData::CellPlaced {
            workload_id: "w-1".into(),
            cell_id: cell_id.clone(),
            host: "a".into(),
            epoch: Some(1),
            adopts: None,
        };
        projection.apply_data(&placed, 0);
        projection.advance("w-1", &Input::CellStarted { cell_id: cell_id.clone(), pid: 7, pid_start_time: 1 }, 1).unwrap();
        (projection, cell_id)
    }

    fn apply(projection: &mut Projection, events: &[EventData]) {
        for event in events {
            projection.apply_data(event, 5);
        }
    }

    #[test]
    fn slots_go_to_other_up_hosts_and_follow_the_primary() {
        let (mut projection, cell_id) = running_on_a(2);
        let hosts: BTreeMap<_, _> = [host("a", true), host("b", true), host("c", true), host("d", false)].into_iter().collect();
        let armed = plan(&projection.workloads["w-1"], &hosts, 5);
        assert_eq!(armed.len(), 2, "{armed:?}");
        apply(&mut projection, &armed);
        let w = &projection.workloads["w-1"];
        let slot_hosts: Vec<&str> = w.standbys.iter().map(|s| s.host.as_str()).collect();
        assert!(slot_hosts.contains(&"b") && slot_hosts.contains(&"c"), "never the primary's or a down host: {slot_hosts:?}");
        assert_eq!(w.standbys.iter().map(|s| s.standby_index).collect::<Vec<_>>(), [0, 1]);
        assert!(w.standbys.iter().all(|s| s.primary == "a" && s.standby_count == 2 && s.peer_standbys.len() == 1));
        assert!(plan(w, &hosts, 6).is_empty(), "a plan that is carried out is stable");

        // The primary's host is lost: a failover, not a restart; the slots wait for it.
        let lost = Input::HostLost { cell_id, host: Some("a".into()), reason: "host a is down".into() };
        let decision = projection.advance("w-1", &lost, 10).unwrap();
        assert!(decision.events.iter().any(|e| matches!(e, EventData::WorkloadFailover { .. })), "{decision:?}");
        let w = &projection.workloads["w-1"];
        assert_eq!((w.failovers, w.restarts(), w.consecutive_failures), (1, 0, 0));
        let hosts: BTreeMap<_, _> = [host("a", false), host("b", true), host("c", true)].into_iter().collect();
        assert!(plan(w, &hosts, 11).is_empty(), "slots stay put while the failover is under way");

        // b won: its slot is released, c's names the new primary, a is down so none is added.
        let new_cell = w.phase.cell_id().unwrap().to_string();
        apply(
            &mut projection,
            &[
                EventData::CellPlaced {
                    workload_id: "w-1".into(),
                    cell_id: new_cell,
                    host: "b".into(),
                    epoch: Some(2),
                    adopts: None,
                },
                EventData::StandbyReleased { workload_id: "w-1".into(), host: "b".into(), reason: "promoted".into() },
            ],
        );
        let rearmed = plan(&projection.workloads["w-1"], &hosts, 12);
        apply(&mut projection, &rearmed);
        let w = &projection.workloads["w-1"];
        assert_eq!(w.standbys.len(), 1, "{rearmed:?}");
        assert_eq!((w.standbys[0].host.as_str(), w.standbys[0].primary.as_str()), ("c", "b"));
        assert!(w.standbys[0].peer_standbys.is_empty());
    }

    #[test]
    fn a_workload_without_standbys_takes_a_lost_host_as_an_exit() {
        let (mut projection, cell_id) = running_on_a(1);
        projection.workloads.get_mut("w-1").unwrap().spec.replication = crate::spec::ReplicationSpec::none();
        let lost = Input::HostLost { cell_id, host: Some("a".into()), reason: "host a is down".into() };
        let decision = projection.advance("w-1", &lost, 10).unwrap();
        assert!(!decision.events.iter().any(|e| matches!(e, EventData::WorkloadFailover { .. })), "{decision:?}");
        assert!(decision.events.iter().any(|e| matches!(e, EventData::WorkloadBackoff { .. })), "{decision:?}");
    }
}
