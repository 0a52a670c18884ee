//! Rollouts inside the engine: starting one, taking agents' reports, and carrying out what the
//! pure core (`warden_core::rollout`) decides — journaled like everything else, then sent to the
//! hosts as `Rollout` orders.
//!
//! ```text
//! warden rollout start ──▶ start(): hosts in order, each with what it runs ──▶ rollout.started
//! every batch ──▶ maintain(): RolloutRecord::next_actions ──▶ rollout.progressed (dispatch,
//!                 converge, wave, halt, quarantine, roll back) ──▶ orders to the hosts concerned
//! POST /v1/agents/rollout ──▶ report(): Rollout::step_host (duplicates answered as such)
//!                 ──▶ rollout.progressed ──▶ the snapshot after it, in the answer
//! ```
//!
//! A service rollout has one more step the agent cannot take itself: when a host reports its
//! activation started, the engine replaces the spec of the service's workloads there (the
//! workload machine's `Replace`: the old cell stops, the new spec's cell starts on the same
//! host); a rollback started puts the previous spec back the same way. The agent sees the cells
//! change (`WARDEN_SPEC_ID`) and reports the activation, or the rollback, completed.
//!
//! Recovery needs nothing of its own: the rollout is in the journal, so a restarted control
//! plane folds it back and its next `maintain` carries on; an agent that restarted gets its
//! orders in the answer to its first heartbeat (the one with the inventory).

use std::collections::BTreeMap;

use warden_core::batch::{Batch, Order};
use warden_core::rollout::{
    Action, HostEvent, HostInput, HostRolloutState, RolloutEvent, RolloutPolicy, RolloutRecord, RolloutStart, ServiceRollout,
};
use warden_core::spec::Spec;
use warden_core::workload::Input;
use warden_core::{EventData, Projection};

use crate::clock::random_id;
use crate::error::ApiError;
use crate::proto::{Activation, RolloutOrder, RolloutReport};
use crate::view::{BlockedView, RolloutRequest, RolloutView, WaveView};

/// How often the engine looks at an unsettled rollout when nothing else wakes it: soaks end
/// and hosts stall on the clock, not on a report.
pub const ROLLOUT_TICK_MS: u64 = 250;

/// An operator's control of a running rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Undo,
}

/// A request to roll out, parsed and checked; `start` turns it into `rollout.started`.
pub fn start(batch: &mut Batch, request: &RolloutRequest, caller: &str) -> Result<String, ApiError> {
    let now = batch.now_ms;
    let live = batch.live();
    let policy =
        RolloutPolicy::parse(&request.policy_file, &request.policy_toml).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let rollout_id = random_id("r-");
    let start = match (&request.service, &request.target) {
        (Some(service), None) => service_start(live, request, service, policy, caller, &rollout_id)?,
        (None, Some(target)) => host_start(live, request.channel.as_deref(), target, policy, caller, &rollout_id)?,
        _ => {
            return Err(ApiError::BadRequest(
                "name a service (with its new spec) or a target (a host activation), not both".into(),
            ))
        }
    };
    if let Some(quarantined) = quarantine_of(live, &start.channel).filter(|(_, target)| *target == start.target) {
        return Err(ApiError::Conflict(format!(
            "{} is quarantined for {} since rollout {} failed on it; roll out another version (which lifts it)",
            start.target, start.channel, quarantined.0
        )));
    }
    // One at a time: an undone rollout still reverting counts too (two rollouts' workers on
    // one host would fight over it).
    if let Some(running) = live.rollouts.values().find(|r| r.rollout.channel == start.channel && !r.is_settled()) {
        return Err(ApiError::Conflict(format!(
            "rollout {} of {} is still {} (hosts in flight or reverting); wait for it, or undo it and let it revert",
            running.rollout.rollout_id,
            start.channel,
            running.state_name()
        )));
    }
    warden_core::rollout::Rollout::new(&rollout_id, &start.channel, &start.target, start.policy.clone(), &start.hosts, now)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    batch.record(EventData::RolloutStarted(start));
    // The first wave goes out in the same batch.
    maintain_one(batch, &rollout_id);
    Ok(rollout_id)
}

fn service_start(
    live: &Projection,
    request: &RolloutRequest,
    service: &str,
    policy: RolloutPolicy,
    caller: &str,
    rollout_id: &str,
) -> Result<RolloutStart, ApiError> {
    if !policy.activate.is_empty() {
        return Err(ApiError::BadRequest(
            "policy: activate/rollback are for a host activation (--target); a service rolls out its spec".into(),
        ));
    }
    let (Some(file), Some(toml)) = (&request.spec_file, &request.spec_toml) else {
        return Err(ApiError::BadRequest(format!("rolling out service {service} needs its new spec")));
    };
    let spec = Spec::parse(file, toml).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if let Some(refused) = crate::secrets::missing_secret(live, &spec.namespace, &spec.cell, &format!("{file}: cell.")) {
        return Err(refused);
    }
    let target = spec.spec_id();
    let members: Vec<&warden_core::Workload> = live
        .workloads
        .values()
        .filter(|w| !w.phase.is_terminal() || matches!(w.phase, warden_core::Phase::Failed { .. }))
        .filter(|w| w.info.consumer_workload_id.as_deref().is_some_and(|id| belongs_to(id, service)))
        .collect();
    if members.is_empty() {
        return Err(ApiError::NotFound(format!("no live service {service:?} (the id it was submitted with)")));
    }
    // Who may roll it out is `authz`'s decision (an operator of the service's namespace); the
    // new spec may not move it to another namespace.
    if let Some(other) = members.iter().find(|w| w.spec.namespace != spec.namespace) {
        return Err(ApiError::BadRequest(format!(
            "{file}: the new spec's namespace {:?} is not the service's ({:?}); a rollout cannot move a service",
            spec.namespace, other.spec.namespace
        )));
    }
    let old = &members[0].spec;
    if old.placement.as_ref().map(|p| p.count) != spec.placement.as_ref().map(|p| p.count) {
        return Err(ApiError::BadRequest(format!(
            "{file}: the new spec must keep the service's placement (instances or mode); a rollout changes versions, not the shape"
        )));
    }
    if members.iter().any(|w| w.spec.replication.mode == warden_core::ReplicationMode::WarmStandby) {
        return Err(ApiError::BadRequest(format!(
            "service {service} has warm standbys; rolling it out is not supported yet (stop and submit the new version)"
        )));
    }
    let mut workloads: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut previous = BTreeMap::new();
    let mut current: BTreeMap<String, String> = BTreeMap::new();
    for w in &members {
        let Some(host) = w.current_host().or(w.pinned_host.as_deref()).or(w.host.as_deref()) else {
            return Err(ApiError::Conflict(format!("{} is not placed on a host yet; try again once it is", w.id())));
        };
        if !live.hosts.contains_key(host) {
            return Err(ApiError::BadRequest(format!(
                "service {service} runs on this node, not on cluster hosts; rollouts need agents (warden agent) to probe"
            )));
        }
        workloads.entry(host.to_string()).or_default().push(w.id().to_string());
        previous.entry(w.info.spec_id.clone()).or_insert_with(|| w.spec.clone());
        current.entry(host.to_string()).or_insert_with(|| w.info.spec_id.clone());
    }
    if current.values().all(|id| *id == target) {
        return Err(ApiError::Conflict(format!("every instance of {service} already runs {target}")));
    }
    let hosts = current.into_iter().map(|(host, spec_id)| (host, Some(spec_id))).collect();
    Ok(RolloutStart {
        rollout_id: rollout_id.into(),
        channel: service.into(),
        target,
        policy,
        hosts,
        service: Some(ServiceRollout { name: service.into(), spec, previous, workloads }),
        started_by: caller.into(),
    })
}

fn host_start(
    live: &Projection,
    channel: Option<&str>,
    target: &str,
    policy: RolloutPolicy,
    caller: &str,
    rollout_id: &str,
) -> Result<RolloutStart, ApiError> {
    if policy.activate.is_empty() {
        return Err(ApiError::BadRequest(
            "a host activation needs activate = [...] and rollback = [...] in its policy ({target} is replaced)".into(),
        ));
    }
    if target.is_empty() {
        return Err(ApiError::BadRequest("target: an artifact id, got nothing".into()));
    }
    let key = channel.unwrap_or("*");
    let hosts: Vec<(String, Option<String>)> = live
        .hosts
        .values()
        .filter(|h| channel.is_none() || h.channel.as_deref() == channel)
        .map(|h| (h.name.clone(), activated(live, key, &h.name)))
        .collect();
    if hosts.is_empty() {
        return Err(ApiError::NotFound(format!("no enrolled host in channel {key}")));
    }
    Ok(RolloutStart {
        rollout_id: rollout_id.into(),
        channel: key.into(),
        target: target.into(),
        policy,
        hosts,
        service: None,
        started_by: caller.into(),
    })
}

/// `service`, `service.i` (`instances = N`) and `service@host` (`each-host`) belong to `service`.
pub(crate) fn belongs_to(consumer_id: &str, service: &str) -> bool {
    consumer_id == service
        || consumer_id.strip_prefix(service).is_some_and(|rest| {
            rest.strip_prefix('@').is_some_and(|host| !host.is_empty())
                || rest.strip_prefix('.').is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// What the latest rollout of `channel` left `host` on: its target if it converged there, what
/// it went back to if it was reverted; `None` if no rollout reached it.
fn activated(live: &Projection, channel: &str, host: &str) -> Option<String> {
    let mut rollouts: Vec<&RolloutRecord> = live.rollouts.values().filter(|r| r.rollout.channel == channel).collect();
    rollouts.sort_by_key(|r| r.started_at_ms);
    rollouts.iter().rev().find_map(|r| {
        let snapshot = r.rollout.hosts.get(host)?;
        (snapshot.state != HostRolloutState::Pending).then(|| snapshot.current.clone()).flatten()
    })
}

/// The quarantine of `channel`, if its latest rollout left one: (rollout id, target).
fn quarantine_of<'a>(live: &'a Projection, channel: &str) -> Option<(&'a str, &'a str)> {
    let latest = live.rollouts.values().filter(|r| r.rollout.channel == channel).max_by_key(|r| r.started_at_ms)?;
    latest.rollout.quarantined.then_some((latest.rollout.rollout_id.as_str(), latest.rollout.target.as_str()))
}

/// Pause, resume or undo `rollout_id`.
pub fn control(batch: &mut Batch, rollout_id: &str, control: Control, caller: &str) -> Result<(), ApiError> {
    let record = batch.live().rollouts.get(rollout_id).ok_or_else(|| ApiError::NotFound(format!("no rollout {rollout_id}")))?;
    let over = record.rollout.undone || (record.rollout.completed && control != Control::Undo);
    if over {
        return Err(ApiError::Conflict(format!("rollout {rollout_id} is {}", record.state_name())));
    }
    let data = match control {
        Control::Pause | Control::Resume => {
            let paused = control == Control::Pause;
            if record.paused == paused {
                return Ok(());
            }
            EventData::RolloutPaused { rollout_id: rollout_id.into(), paused }
        }
        Control::Undo => EventData::RolloutProgressed {
            rollout_id: rollout_id.into(),
            event: RolloutEvent::Undone { reason: format!("undone by {caller}") },
        },
    };
    batch.record(data);
    maintain_one(batch, rollout_id);
    Ok(())
}

/// An agent's report. `Ok(outcome)`: `applied`, `duplicate`, or why it does not apply (the
/// agent then follows the snapshot it gets back).
pub fn report(batch: &mut Batch, report: &RolloutReport) -> Result<String, ApiError> {
    let now = batch.now_ms;
    let record = batch
        .live()
        .rollouts
        .get(&report.rollout_id)
        .ok_or_else(|| ApiError::NotFound(format!("no rollout {}", report.rollout_id)))?;
    if matches!(report.input, HostInput::Dispatch | HostInput::Tick | HostInput::RollBack) {
        return Err(ApiError::BadRequest(format!("{} is the control plane's decision, not a report", report.input.kind())));
    }
    let decision = match record.rollout.step_host(&report.host, &report.input, now) {
        Ok(decision) => decision,
        Err(warden_core::rollout::RolloutStepError::UnknownHost { .. }) => {
            return Err(ApiError::NotFound(format!("host {} has no part in rollout {}", report.host, report.rollout_id)))
        }
        Err(refused) => return Ok(refused.to_string()),
    };
    let events = match decision {
        warden_core::rollout::Decision::Duplicate { .. } => return Ok("duplicate".into()),
        warden_core::rollout::Decision::Events(events) => events,
    };
    for event in events {
        host_event(batch, &report.rollout_id, &report.host, event);
    }
    // What follows from it (the next dispatch, a halt) is decided by `maintain` at the end of
    // this same batch, once for all the reports in it.
    Ok("applied".into())
}

/// Every unsettled rollout takes the steps that are due (called once per engine batch).
pub fn maintain(batch: &mut Batch) {
    let ids: Vec<String> = batch.live().rollouts.iter().filter(|(_, r)| !r.is_settled()).map(|(id, _)| id.clone()).collect();
    for id in ids {
        maintain_one(batch, &id);
    }
}

fn maintain_one(batch: &mut Batch, rollout_id: &str) {
    let Some(record) = batch.live().rollouts.get(rollout_id) else { return };
    for action in record.next_actions(batch.now_ms) {
        let Some(event) = action.event() else { continue };
        if let Action::Halt { reason } = &action {
            tracing::warn!(rollout = %rollout_id, "rollout halted: {reason}");
        }
        match event {
            RolloutEvent::Host { hostname, event } => host_event(batch, rollout_id, &hostname, event),
            event => batch.record(EventData::RolloutProgressed { rollout_id: rollout_id.into(), event }),
        }
    }
}

/// Journals (and applies) one host event, and does what follows from it: the order goes to
/// the host again when the control plane decided something it must act on or stop acting on,
/// and a service's workloads there change spec when its activation (or rollback) starts.
fn host_event(batch: &mut Batch, rollout_id: &str, hostname: &str, event: HostEvent) {
    let notify =
        matches!(event, HostEvent::Dispatched | HostEvent::RollbackOrdered | HostEvent::Converged | HostEvent::Failed { .. });
    let replace = match &event {
        HostEvent::ActivationStarted { .. } => Some(true),
        HostEvent::RollbackStarted { .. } => Some(false),
        _ => None,
    };
    let data = EventData::RolloutProgressed {
        rollout_id: rollout_id.into(),
        event: RolloutEvent::Host { hostname: hostname.into(), event },
    };
    batch.record(data);
    if notify {
        batch.order(Order::Rollout { host: hostname.to_string(), rollout_id: rollout_id.to_string() });
    }
    if let Some(forward) = replace {
        replace_service(batch, rollout_id, hostname, forward);
    }
}

/// A service's workloads on `hostname` move to the target (`forward`) or back to what the host
/// ran before.
fn replace_service(batch: &mut Batch, rollout_id: &str, hostname: &str, forward: bool) {
    let Some(record) = batch.live().rollouts.get(rollout_id) else { return };
    let Some(service) = &record.service else { return };
    let snapshot = &record.rollout.hosts[hostname];
    let (spec_id, spec) = if forward {
        (record.rollout.target.clone(), service.spec.clone())
    } else {
        let Some(previous) = snapshot.previous.clone() else { return };
        let Some(spec) = service.previous.get(&previous) else { return };
        (previous, spec.clone())
    };
    let workloads = service.workloads.get(hostname).cloned().unwrap_or_default();
    let reason = format!("rollout {rollout_id}: {}", if forward { "new version" } else { "rolled back" });
    for workload_id in workloads {
        if batch.live().workloads.get(&workload_id).is_some_and(|w| w.info.spec_id == spec_id) {
            continue;
        }
        let input = Input::Replace { spec: Box::new(spec.clone()), spec_id: spec_id.clone(), reason: reason.clone() };
        if let Err(e) = batch.advance(&workload_id, &input) {
            tracing::warn!(rollout = %rollout_id, %workload_id, "cannot move to {spec_id}: {e}");
        }
    }
}

/// The order for `hostname` in `rollout_id`, as it stands.
pub fn order(live: &Projection, rollout_id: &str, hostname: &str) -> Option<RolloutOrder> {
    let record = live.rollouts.get(rollout_id)?;
    let snapshot = record.rollout.hosts.get(hostname)?.clone();
    let policy = &record.rollout.policy;
    let activation = match &record.service {
        Some(service) => Activation::Service { workloads: service.workloads.get(hostname).cloned().unwrap_or_default() },
        None => Activation::Command {
            activate: policy.activate.clone(),
            rollback: policy.rollback.clone(),
            current: policy.current.clone(),
        },
    };
    Some(RolloutOrder { snapshot, probes: policy.probes.clone(), activation, timeout_ms: policy.activation_timeout_ms })
}

/// Every order `hostname` has work in: what an agent that restarted needs to resume.
pub fn orders_for_host(live: &Projection, hostname: &str) -> Vec<RolloutOrder> {
    let busy = |state: HostRolloutState| state.is_in_flight() || state == HostRolloutState::Reverting;
    live.rollouts
        .iter()
        .filter(|(_, r)| r.rollout.hosts.get(hostname).is_some_and(|h| busy(h.state)))
        .filter_map(|(id, _)| order(live, id, hostname))
        .collect()
}

/// When an unsettled rollout next needs a look, if any.
pub fn next_wake_ms(live: &Projection, now: u64) -> Option<u64> {
    live.rollouts.values().any(|r| !r.is_settled()).then_some(now + ROLLOUT_TICK_MS)
}

/// Resolves a full rollout id or a unique prefix of one.
pub fn resolve(live: &Projection, wanted: &str) -> Result<String, ApiError> {
    if live.rollouts.contains_key(wanted) {
        return Ok(wanted.into());
    }
    let matches: Vec<&String> = live.rollouts.keys().filter(|id| id.starts_with(wanted)).collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(ApiError::NotFound(format!("no rollout {wanted}"))),
        _ => Err(ApiError::BadRequest(format!("{wanted} names {} rollouts; give more of the id", matches.len()))),
    }
}

pub fn view(record: &RolloutRecord, now: u64) -> RolloutView {
    let rollout = &record.rollout;
    let waves = rollout
        .waves
        .iter()
        .enumerate()
        .map(|(i, hosts)| {
            let spec = rollout.policy.waves.get(i).or(rollout.policy.waves.last());
            let count = |f: fn(HostRolloutState) -> bool| hosts.iter().filter(|h| f(rollout.hosts[*h].state)).count();
            WaveView {
                size: spec.map_or_else(String::new, |w| w.size.to_string()),
                soak_ms: rollout.policy.soak_ms(i),
                hosts: hosts.clone(),
                n_converged: count(|s| s == HostRolloutState::Converged),
                n_failed: count(HostRolloutState::is_failure),
            }
        })
        .collect();
    let blocked = warden_core::rollout::next_actions(rollout, now)
        .into_iter()
        .filter_map(|action| match action {
            Action::Blocked { hostname, state, since, reason } => Some(BlockedView {
                host: hostname,
                state: state.name().into(),
                since_ms: since,
                reason: match reason {
                    warden_core::rollout::BlockedReason::Silent => "silent".into(),
                    warden_core::rollout::BlockedReason::NotPassing => "not-passing".into(),
                },
            }),
            _ => None,
        })
        .collect();
    // Every host is in exactly one wave (`Rollout::new`): dispatch order.
    let hosts = rollout.waves.iter().flatten().map(|h| rollout.hosts[h].clone()).collect();
    RolloutView {
        id: rollout.rollout_id.clone(),
        state: record.state_name().into(),
        service: record.service.as_ref().map(|s| s.name.clone()),
        channel: rollout.channel.clone(),
        target: rollout.target.clone(),
        policy: rollout.policy.clone(),
        wave: rollout.wave,
        waves,
        halted: rollout.halted.clone(),
        quarantined: rollout.quarantined,
        hosts,
        blocked,
        started_by: record.started_by.clone(),
        started_at_ms: record.started_at_ms,
        updated_at_ms: rollout.updated_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_is_its_id_its_instances_and_its_hosts_instances() {
        assert!(belongs_to("web", "web"));
        assert!(belongs_to("web.0", "web"));
        assert!(belongs_to("web.12", "web"));
        assert!(belongs_to("web@h1", "web"));
        assert!(!belongs_to("web2", "web"));
        assert!(!belongs_to("web.x", "web"));
        assert!(!belongs_to("web@", "web"));
        assert!(!belongs_to("web.", "web"));
        assert!(!belongs_to("we", "web"));
    }
}
