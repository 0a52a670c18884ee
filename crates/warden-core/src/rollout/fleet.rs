//! The rollout itself: `target` to a set of hosts wave by wave under one policy ([`Rollout`],
//! folded from [`RolloutEvent`]s), and [`next_actions`], what the runtime must do for it now —
//! dispatch within the budget, converge, advance a wave, halt, quarantine, roll back, undo.
//!
//! ```text
//! wave 0 (canary) ──every host converged──▶ wave 1 ──…──▶ last wave converged ──▶ completed
//!       └────────── any host failed ──────────┴──▶ halted: no more dispatches; with on_failure = rollback
//!                                                  the failed hosts go back to `previous`, the target is quarantined
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::rollout::host::{Decision, HostEvent, HostInput, HostInvariantError, HostRolloutSnapshot, ProbeStatus, StepError};
use crate::rollout::legality::HostRolloutState;
use crate::rollout::policy::{InvalidPolicy, OnFailure, RolloutPolicy};

/// One rollout of `target` to a set of hosts, under `policy`. Folded from [`RolloutEvent`]s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub rollout_id: String,
    pub channel: String,
    pub target: String,
    pub policy: RolloutPolicy,
    pub hosts: BTreeMap<String, HostRolloutSnapshot>,
    /// The hosts of each wave, in dispatch order (resolved at the start, then fixed).
    pub waves: Vec<Vec<String>>,
    /// The current wave; only grows.
    pub wave: usize,
    /// Why dispatching stopped, once a host failed.
    pub halted: Option<String>,
    /// The target is quarantined for this service/channel (`on_failure = rollback`).
    pub quarantined: bool,
    /// Every host converged.
    pub completed: bool,
    /// An operator undid the rollout: it is halted, and every host that reached the target (or
    /// failed on it) is rolled back to `previous`.
    #[serde(default)]
    pub undone: bool,
    pub updated_at_ms: u64,
}

/// What a rollout journals: a host's event, or a decision of the rollout itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RolloutEvent {
    Host {
        hostname: String,
        event: HostEvent,
    },
    WaveAdvanced {
        wave: usize,
    },
    Halted {
        reason: String,
    },
    Quarantined {
        target: String,
    },
    Completed,
    /// An operator's undo (`warden rollout undo`): halts, and rolls back every host on the target.
    Undone {
        reason: String,
    },
}

/// What [`next_actions`] asks of the runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Journal the dispatch, then send the host its snapshot.
    Dispatch {
        hostname: String,
    },
    /// Journal the host's convergence.
    Converge {
        hostname: String,
    },
    /// Journal the order, then send the host its snapshot (it rolls back to `to`).
    RollBack {
        hostname: String,
        to: Option<String>,
    },
    AdvanceWave {
        wave: usize,
    },
    Halt {
        reason: String,
    },
    /// Journal it, and refuse `target` for this service/channel until a new rollout replaces it.
    Quarantine {
        channel: String,
        target: String,
    },
    Complete,
    /// Not a decision, a report: `hostname`, in the current wave, has been holding the wave up
    /// since `since` for `reason`. The wave waits for it; it is never skipped.
    Blocked {
        hostname: String,
        state: HostRolloutState,
        since: u64,
        reason: BlockedReason,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockedReason {
    /// No report since `since` (the last one, or the dispatch): the host is likely down.
    Silent,
    /// Soaked since `since`, still reporting, but its enforce probes have not all passed together
    /// (a probe flapping below its threshold, out of step with another).
    NotPassing,
}

impl Action {
    /// The event that records this decision; `None` for a report.
    pub fn event(&self) -> Option<RolloutEvent> {
        let host = |hostname: &String, event| Some(RolloutEvent::Host { hostname: hostname.clone(), event });
        match self {
            Action::Dispatch { hostname } => host(hostname, HostEvent::Dispatched),
            Action::Converge { hostname } => host(hostname, HostEvent::Converged),
            Action::RollBack { hostname, .. } => host(hostname, HostEvent::RollbackOrdered),
            Action::AdvanceWave { wave } => Some(RolloutEvent::WaveAdvanced { wave: *wave }),
            Action::Halt { reason } => Some(RolloutEvent::Halted { reason: reason.clone() }),
            Action::Quarantine { target, .. } => Some(RolloutEvent::Quarantined { target: target.clone() }),
            Action::Complete => Some(RolloutEvent::Completed),
            Action::Blocked { .. } => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NewRolloutError {
    #[error(transparent)]
    Policy(#[from] InvalidPolicy),
    #[error("rollout {0}: no hosts to roll out to")]
    NoHosts(String),
    #[error("rollout {rollout_id}: host {hostname} is listed twice")]
    DuplicateHost { rollout_id: String, hostname: String },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RolloutStepError {
    #[error("rollout {rollout_id} has no host {hostname}")]
    UnknownHost { rollout_id: String, hostname: String },
    #[error(transparent)]
    Host(#[from] StepError),
    #[error("rollout {rollout_id}: dispatching {hostname} would put {} hosts in flight; max_in_flight is {max_in_flight}", n_in_flight + 1)]
    OverBudget { rollout_id: String, hostname: String, n_in_flight: usize, max_in_flight: usize },
    #[error("rollout {rollout_id}: {hostname} is in wave {host_wave}, the rollout is at wave {wave}")]
    NotCurrentWave { rollout_id: String, hostname: String, host_wave: usize, wave: usize },
    #[error("rollout {rollout_id} is halted ({reason}); {hostname} is not dispatched")]
    Halted { rollout_id: String, hostname: String, reason: String },
}

/// An invariant of a rollout that does not hold: a bug in `next_actions`, `step_host` or
/// `apply` (see [`Rollout::validate`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RolloutInvariantError {
    #[error("{n_in_flight} hosts in flight, max_in_flight is {max_in_flight}")]
    OverBudget { n_in_flight: usize, max_in_flight: usize },
    #[error("at wave {wave}, of {n_waves} waves")]
    WaveOutOfRange { wave: usize, n_waves: usize },
    #[error(transparent)]
    Host(#[from] HostInvariantError),
    #[error("{hostname} of wave {host_wave} is {state} while the rollout is at wave {wave}")]
    AheadOfWave { hostname: String, host_wave: usize, state: HostRolloutState, wave: usize },
    #[error("{hostname} of wave {host_wave} is {state}, yet the rollout moved on to wave {wave}")]
    LeftBehind { hostname: String, host_wave: usize, state: HostRolloutState, wave: usize },
    #[error("{hostname}: soak due at {soak_due_at}, not activation ({activation_completed_at}) + soak ({soak_ms}ms)")]
    WrongSoakDue { hostname: String, soak_due_at: u64, activation_completed_at: u64, soak_ms: u64 },
    #[error("{hostname} converged without every enforce probe passing: {probes:?}")]
    ConvergedWithoutProbes { hostname: String, probes: BTreeMap<String, ProbeStatus> },
    #[error("completed, but not every host converged")]
    CompletedUnconverged,
    #[error("the target is quarantined but the rollout is not halted")]
    QuarantinedNotHalted,
}

impl Rollout {
    /// A rollout of `target` to `hosts` (in dispatch order, each with what it runs now).
    pub fn new(
        rollout_id: &str,
        channel: &str,
        target: &str,
        policy: RolloutPolicy,
        hosts: &[(String, Option<String>)],
        at_ms: u64,
    ) -> Result<Rollout, NewRolloutError> {
        policy.check()?;
        if hosts.is_empty() {
            return Err(NewRolloutError::NoHosts(rollout_id.into()));
        }
        let ranges = policy.resolve_waves(hosts.len());
        let mut snapshots = BTreeMap::new();
        let mut waves = Vec::with_capacity(ranges.len());
        for (wave, range) in ranges.into_iter().enumerate() {
            let mut names = Vec::with_capacity(range.len());
            for (hostname, current) in &hosts[range] {
                let snapshot = HostRolloutSnapshot::pending(rollout_id, hostname, channel, target, current.clone(), wave);
                if snapshots.insert(hostname.clone(), snapshot).is_some() {
                    return Err(NewRolloutError::DuplicateHost { rollout_id: rollout_id.into(), hostname: hostname.clone() });
                }
                names.push(hostname.clone());
            }
            waves.push(names);
        }
        Ok(Rollout {
            rollout_id: rollout_id.into(),
            channel: channel.into(),
            target: target.into(),
            policy,
            hosts: snapshots,
            waves,
            wave: 0,
            halted: None,
            quarantined: false,
            completed: false,
            undone: false,
            updated_at_ms: at_ms,
        })
    }

    /// Hosts between Dispatched and Soaking: what `max_in_flight` bounds.
    pub fn n_in_flight(&self) -> usize {
        self.hosts.values().filter(|h| h.state.is_in_flight()).count()
    }

    /// Decides what `input` means for `hostname`. Besides the host's own legality, a dispatch
    /// must be of the current wave, within the budget, and not after a halt: the budget is held
    /// here and not only by [`next_actions`]'s arithmetic.
    pub fn step_host(&self, hostname: &str, input: &HostInput, now_ms: u64) -> Result<Decision, RolloutStepError> {
        let rollout_id = || self.rollout_id.clone();
        let host = self
            .hosts
            .get(hostname)
            .ok_or_else(|| RolloutStepError::UnknownHost { rollout_id: rollout_id(), hostname: hostname.into() })?;
        if *input == HostInput::Dispatch && host.state == HostRolloutState::Pending {
            if let Some(reason) = &self.halted {
                return Err(RolloutStepError::Halted {
                    rollout_id: rollout_id(),
                    hostname: hostname.into(),
                    reason: reason.clone(),
                });
            }
            if host.wave != self.wave {
                let (host_wave, wave) = (host.wave, self.wave);
                return Err(RolloutStepError::NotCurrentWave {
                    rollout_id: rollout_id(),
                    hostname: hostname.into(),
                    host_wave,
                    wave,
                });
            }
            let n_in_flight = self.n_in_flight();
            if n_in_flight >= self.policy.max_in_flight {
                let max_in_flight = self.policy.max_in_flight;
                return Err(RolloutStepError::OverBudget {
                    rollout_id: rollout_id(),
                    hostname: hostname.into(),
                    n_in_flight,
                    max_in_flight,
                });
            }
        }
        Ok(host.step(input, now_ms, &self.policy)?)
    }

    /// Records one event. Called for live decisions and for replay alike.
    pub fn apply(&mut self, event: &RolloutEvent, at_ms: u64) {
        self.updated_at_ms = at_ms;
        match event {
            RolloutEvent::Host { hostname, event } => {
                if let Some(host) = self.hosts.get_mut(hostname) {
                    host.apply(event, at_ms);
                }
            }
            RolloutEvent::WaveAdvanced { wave } => self.wave = self.wave.max(*wave),
            RolloutEvent::Halted { reason } => {
                self.halted.get_or_insert_with(|| reason.clone());
            }
            RolloutEvent::Quarantined { .. } => self.quarantined = true,
            RolloutEvent::Completed => self.completed = true,
            RolloutEvent::Undone { reason } => {
                self.undone = true;
                self.halted.get_or_insert_with(|| reason.clone());
            }
        }
        debug_assert_eq!(self.validate(), Ok(()));
    }

    /// Invariants of the rollout that hold after every event.
    pub fn validate(&self) -> Result<(), RolloutInvariantError> {
        use RolloutInvariantError as E;
        let n_in_flight = self.n_in_flight();
        if n_in_flight > self.policy.max_in_flight {
            return Err(E::OverBudget { n_in_flight, max_in_flight: self.policy.max_in_flight });
        }
        if self.wave >= self.waves.len() {
            return Err(E::WaveOutOfRange { wave: self.wave, n_waves: self.waves.len() });
        }
        for host in self.hosts.values() {
            host.validate()?;
            let hostname = || host.hostname.clone();
            if host.wave > self.wave && host.state != HostRolloutState::Pending {
                return Err(E::AheadOfWave { hostname: hostname(), host_wave: host.wave, state: host.state, wave: self.wave });
            }
            if host.wave < self.wave && host.state != HostRolloutState::Converged && !self.undone {
                return Err(E::LeftBehind { hostname: hostname(), host_wave: host.wave, state: host.state, wave: self.wave });
            }
            if let (Some(activation_completed_at), Some(soak_due_at)) = (host.activation_completed_at, host.soak_due_at) {
                let soak_ms = self.policy.soak_ms(host.wave);
                if soak_due_at != activation_completed_at.saturating_add(soak_ms) {
                    return Err(E::WrongSoakDue { hostname: hostname(), soak_due_at, activation_completed_at, soak_ms });
                }
            }
            if host.state == HostRolloutState::Converged && !host.enforce_probes_passing(&self.policy) {
                return Err(E::ConvergedWithoutProbes { hostname: hostname(), probes: host.probes.clone() });
            }
        }
        if self.completed
            && !self.undone
            && (self.wave + 1 != self.waves.len() || self.hosts.values().any(|h| h.state != HostRolloutState::Converged))
        {
            return Err(E::CompletedUnconverged);
        }
        if (self.quarantined || self.undone) && self.halted.is_none() {
            return Err(E::QuarantinedNotHalted);
        }
        Ok(())
    }
}

/// What the runtime must do now for `rollout`, in order: journal each action's
/// [`Action::event`] and apply it before the next (the runtime then sends dispatched and
/// rolled-back hosts their snapshots). Pure and idempotent: once a batch is carried out, a call
/// at the same `now_ms` asks for nothing more than the [`Action::Blocked`] reports.
///
/// - Soaking hosts that are ready converge.
/// - A failed host halts the rollout; with `on_failure = rollback` the target is quarantined and
///   each failed host not yet ordered back is rolled back (once: a rollback that fails is left
///   to an operator).
/// - Unless halted: while every host of the current wave has converged, the rollout moves to the
///   next wave (an empty wave at once); after the last, it is complete. Then Pending hosts of the
///   current wave are dispatched, in order, while fewer than `max_in_flight` are in flight.
/// - Hosts of the current wave in flight that have been silent for `stall_after`, or soaking
///   that long past their soak without passing, are reported.
pub fn next_actions(rollout: &Rollout, now_ms: u64) -> Vec<Action> {
    use HostRolloutState as S;
    let policy = &rollout.policy;
    let mut actions = Vec::new();
    if rollout.undone {
        // Every host that reached the target, or failed on it, goes back once; hosts still on
        // their way are rolled back when they get there.
        for hostname in rollout.waves.iter().flatten() {
            let host = &rollout.hosts[hostname];
            if matches!(host.state, S::Soaking | S::Converged | S::Failed) && host.n_rollbacks == 0 {
                actions.push(Action::RollBack { hostname: hostname.clone(), to: host.previous.clone() });
            }
        }
        return actions;
    }
    if rollout.completed {
        return actions;
    }

    // A set: a wave can have thousands of hosts, and each is looked up here below.
    let mut converging = BTreeSet::new();
    for hostname in &rollout.waves[rollout.wave] {
        let host = &rollout.hosts[hostname];
        let decided = host.step(&HostInput::Tick, now_ms, policy).ok();
        if decided.is_some_and(|d| d.events().contains(&HostEvent::Converged)) {
            converging.insert(hostname.as_str());
            actions.push(Action::Converge { hostname: hostname.clone() });
        }
    }

    let failed: Vec<&HostRolloutSnapshot> = rollout.hosts.values().filter(|h| h.state.is_failure()).collect();
    let halted = rollout.halted.is_some() || !failed.is_empty();
    if let (None, Some(first)) = (&rollout.halted, failed.first()) {
        let why = first.failure.as_deref().unwrap_or("failed");
        actions.push(Action::Halt { reason: format!("host {} failed: {why}", first.hostname) });
    }
    if policy.on_failure == OnFailure::Rollback && !failed.is_empty() {
        if !rollout.quarantined {
            actions.push(Action::Quarantine { channel: rollout.channel.clone(), target: rollout.target.clone() });
        }
        for host in failed.iter().filter(|h| h.state == S::Failed && h.n_rollbacks == 0) {
            actions.push(Action::RollBack { hostname: host.hostname.clone(), to: host.previous.clone() });
        }
    }

    let mut wave = rollout.wave;
    if !halted {
        let converged = |name: &String| rollout.hosts[name].state == S::Converged || converging.contains(name.as_str());
        while rollout.waves[wave].iter().all(converged) {
            if wave + 1 == rollout.waves.len() {
                actions.push(Action::Complete);
                return actions;
            }
            wave += 1;
            actions.push(Action::AdvanceWave { wave });
        }
        let n_in_flight = rollout.n_in_flight() - converging.len();
        let free = policy.max_in_flight.saturating_sub(n_in_flight);
        let pending = rollout.waves[wave].iter().filter(|name| rollout.hosts[*name].state == S::Pending);
        actions.extend(pending.take(free).map(|name| Action::Dispatch { hostname: name.clone() }));
    }

    let stalled = |since: u64| now_ms >= since.saturating_add(policy.stall_after_ms);
    for hostname in &rollout.waves[wave] {
        let host = &rollout.hosts[hostname];
        if !host.state.is_in_flight() || converging.contains(hostname.as_str()) {
            continue;
        }
        let last_report_at = host.last_report_at.unwrap_or(rollout.updated_at_ms);
        let blocked = match host.soak_due_at {
            _ if stalled(last_report_at) => Some((last_report_at, BlockedReason::Silent)),
            Some(soak_due_at) if stalled(soak_due_at) => Some((soak_due_at, BlockedReason::NotPassing)),
            _ => None,
        };
        if let Some((since, reason)) = blocked {
            actions.push(Action::Blocked { hostname: hostname.clone(), state: host.state, since, reason });
        }
    }
    actions
}
