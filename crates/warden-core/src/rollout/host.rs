//! One host in one rollout: the seed's `HostRolloutSnapshot` and its machine
//! (`HostRolloutSnapshot::step` decides, `apply` records), judged against the policy's probes and
//! the soak of the host's wave.
//!
//! Agent reports carry a sequence number per (host, rollout), from the agent's own counter; a
//! report with `seq <= last_event_seq` was applied already (a redelivery, or a replay after a
//! restart) and is answered [`Decision::Duplicate`] without changing anything. The control plane's
//! own decisions (dispatch, roll back, converge) and ticks carry none. All times are Unix
//! milliseconds on the control plane's clock (the `now_ms` a step is given); a probe's `at` is the
//! agent's and only informative, since results are ordered by `seq`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rollout::legality::{HostRolloutState, InputKind};
use crate::rollout::policy::{ProbeMode, RolloutPolicy};

/// One probe's results since the host's activation completed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStatus {
    pub mode: ProbeMode,
    /// Failures since the last pass: what `failure_threshold` is compared with. A pass clears it.
    pub consecutive_failures: u32,
    pub n_passes: u32,
    pub n_failures: u32,
    /// When the latest pass was recorded (control-plane time).
    pub last_pass_at: Option<u64>,
    /// When the latest result was taken, by the agent's clock (informative only).
    pub last_run_at: u64,
}

/// The state of one host in one rollout, with every field of the seed (`target_closure` →
/// `target`, `current_closure_at_dispatch` → `previous`, `current_closure` → `current`). The
/// control plane folds it from the journal and hands the non-terminal ones back to an agent that
/// restarted with an empty memory, so its probes and soak resume where they were.
///
/// Unlike the seed, the probe results are carried too: the control plane decides failure and
/// convergence from them, so a restart of the agent (or of the control plane, which replays the
/// journal) resets no failure count. `dispatched_at` is optional because here a host has a
/// snapshot from the rollout's start, while it is still Pending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRolloutSnapshot {
    pub rollout_id: String,
    pub hostname: String,
    pub channel: String,
    pub state: HostRolloutState,
    pub target: String,
    /// What the host ran when it was dispatched: where a rollback returns it. `None`: nothing.
    pub previous: Option<String>,
    /// What the host runs, as last known.
    pub current: Option<String>,
    pub dispatched_at: Option<u64>,
    pub dispatch_acked_at: Option<u64>,
    pub activation_started_at: Option<u64>,
    pub activation_completed_at: Option<u64>,
    /// `activation_completed_at + soak` of the host's wave; set once per activation.
    pub soak_due_at: Option<u64>,
    /// The highest report `seq` applied; reports at or below it are duplicates.
    pub last_event_seq: u64,
    /// The host's wave (index into the policy's waves).
    pub wave: usize,
    /// By probe name; cleared when an activation completes.
    pub probes: BTreeMap<String, ProbeStatus>,
    /// When the agent last reported anything (or the host was dispatched): stall detection.
    pub last_report_at: Option<u64>,
    pub converged_at: Option<u64>,
    /// Why the host failed (kept through Reverting and Reverted).
    pub failure: Option<String>,
    /// Rollbacks ordered; the control plane orders one, a second is an operator's call.
    pub n_rollbacks: u32,
}

/// What happened to a host in a rollout, as the control plane learns it. Agent reports carry
/// their `seq`; the control plane's decisions and ticks do not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "kebab-case")]
pub enum HostInput {
    /// The control plane sends the host to `target` (decided by [`next_actions`](crate::rollout::next_actions)).
    Dispatch,
    /// The host has its order. `current`: what it runs, when it can tell (a host activation with
    /// a `current` command): it replaces the control plane's idea of it, as `current` and as
    /// `previous` (where a rollback returns it).
    Ack {
        seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current: Option<String>,
    },
    ActivationStarted {
        seq: u64,
    },
    /// The activation command finished; `current` is what the host now runs.
    ActivationCompleted {
        seq: u64,
        current: String,
    },
    ActivationFailed {
        seq: u64,
        error: String,
    },
    ProbeResult {
        seq: u64,
        probe: String,
        passed: bool,
        mode: ProbeMode,
        /// When the agent took the result, by its clock.
        at: u64,
    },
    /// Time passed.
    Tick,
    /// The control plane orders the host back to `previous` (decided by [`next_actions`](crate::rollout::next_actions), or an
    /// operator's undo).
    RollBack,
    RollbackStarted {
        seq: u64,
    },
    RollbackCompleted {
        seq: u64,
        current: Option<String>,
    },
    RollbackFailed {
        seq: u64,
        error: String,
    },
}

impl HostInput {
    pub fn kind(&self) -> InputKind {
        match self {
            HostInput::Dispatch => InputKind::Dispatch,
            HostInput::Ack { .. } => InputKind::Ack,
            HostInput::ActivationStarted { .. } => InputKind::ActivationStarted,
            HostInput::ActivationCompleted { .. } => InputKind::ActivationCompleted,
            HostInput::ActivationFailed { .. } => InputKind::ActivationFailed,
            HostInput::ProbeResult { .. } => InputKind::ProbeResult,
            HostInput::Tick => InputKind::Tick,
            HostInput::RollBack => InputKind::RollBack,
            HostInput::RollbackStarted { .. } => InputKind::RollbackStarted,
            HostInput::RollbackCompleted { .. } => InputKind::RollbackCompleted,
            HostInput::RollbackFailed { .. } => InputKind::RollbackFailed,
        }
    }

    /// The agent's sequence number, for the inputs that are agent reports.
    pub fn seq(&self) -> Option<u64> {
        match self {
            HostInput::Ack { seq, .. }
            | HostInput::ActivationStarted { seq }
            | HostInput::ActivationCompleted { seq, .. }
            | HostInput::ActivationFailed { seq, .. }
            | HostInput::ProbeResult { seq, .. }
            | HostInput::RollbackStarted { seq }
            | HostInput::RollbackCompleted { seq, .. }
            | HostInput::RollbackFailed { seq, .. } => Some(*seq),
            HostInput::Dispatch | HostInput::Tick | HostInput::RollBack => None,
        }
    }
}

/// What `step` decided for a host: the facts to journal, which `apply` records. Applied in
/// order, at the step's time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum HostEvent {
    /// `previous` becomes what the host runs now.
    Dispatched,
    Acked {
        seq: u64,
        /// What the host said it runs (see [`HostInput::Ack`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current: Option<String>,
    },
    ActivationStarted {
        seq: u64,
    },
    /// The host reported running `current` (which is not what was expected; a failure follows).
    CurrentReported {
        current: Option<String>,
    },
    ActivationCompleted {
        seq: u64,
        current: String,
        soak_due_at: u64,
    },
    ProbeRecorded {
        seq: u64,
        probe: String,
        mode: ProbeMode,
        passed: bool,
        at: u64,
        /// A failure within the probe's `grace` after the activation: not counted.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        in_grace: bool,
    },
    Converged,
    Failed {
        seq: Option<u64>,
        reason: String,
    },
    RollbackOrdered,
    RollbackStarted {
        seq: u64,
    },
    Reverted {
        seq: u64,
        current: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Journal these, then `apply` them (none: a tick with nothing due).
    Events(Vec<HostEvent>),
    /// A report already applied (a redelivery or a replay): nothing changes.
    Duplicate { seq: u64, last_event_seq: u64 },
}

impl Decision {
    pub fn events(&self) -> &[HostEvent] {
        match self {
            Decision::Events(events) => events,
            Decision::Duplicate { .. } => &[],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("rollout {rollout_id}: host {hostname} is {state}; {input} does not apply")]
    Illegal { rollout_id: String, hostname: String, state: HostRolloutState, input: InputKind },
    #[error("rollout {rollout_id}: host {hostname} reported probe {probe:?} ({mode:?}), but the policy has no such probe")]
    UnknownProbe { rollout_id: String, hostname: String, probe: String, mode: ProbeMode },
}

/// An invariant of one host that does not hold: a bug in `step` or `apply`, or a snapshot that
/// was not made by them (see [`HostRolloutSnapshot::validate`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostInvariantError {
    #[error("{hostname} is {state} but has no timestamp for {reached}")]
    MissingTimestamp { hostname: String, state: HostRolloutState, reached: HostRolloutState },
    #[error("{hostname}: timestamps out of order: {times:?}")]
    TimestampsOutOfOrder { hostname: String, times: [Option<u64>; 4] },
    #[error("{hostname}: soak due at {soak_due_at}, before the activation completed at {activation_completed_at}")]
    SoakDueBeforeActivation { hostname: String, soak_due_at: u64, activation_completed_at: u64 },
    #[error("{hostname} is {state} on {current:?}, not the target {target}")]
    NotOnTarget { hostname: String, state: HostRolloutState, current: Option<String>, target: String },
    #[error("{hostname} converged at {converged_at:?}, before its soak was due at {soak_due_at:?}")]
    ConvergedBeforeSoak { hostname: String, converged_at: Option<u64>, soak_due_at: Option<u64> },
    #[error("{hostname} is {state} with no failure recorded")]
    NoFailureRecorded { hostname: String, state: HostRolloutState },
    #[error("{hostname} is reverted to {current:?}, not its previous {previous:?}")]
    NotRevertedToPrevious { hostname: String, current: Option<String>, previous: Option<String> },
}

impl HostRolloutSnapshot {
    /// A host at the start of a rollout, running `current`.
    pub fn pending(
        rollout_id: &str,
        hostname: &str,
        channel: &str,
        target: &str,
        current: Option<String>,
        wave: usize,
    ) -> HostRolloutSnapshot {
        HostRolloutSnapshot {
            rollout_id: rollout_id.into(),
            hostname: hostname.into(),
            channel: channel.into(),
            state: HostRolloutState::Pending,
            target: target.into(),
            previous: None,
            current,
            dispatched_at: None,
            dispatch_acked_at: None,
            activation_started_at: None,
            activation_completed_at: None,
            soak_due_at: None,
            last_event_seq: 0,
            wave,
            probes: BTreeMap::new(),
            last_report_at: None,
            converged_at: None,
            failure: None,
            n_rollbacks: 0,
        }
    }

    /// Decides what `input` at `now_ms` means for this host under `policy`, without changing it.
    /// Duplicates are recognised before legality: a report applied once stays answered the same.
    pub fn step(&self, input: &HostInput, now_ms: u64, policy: &RolloutPolicy) -> Result<Decision, StepError> {
        use HostRolloutState as S;
        if let Some(seq) = input.seq().filter(|seq| *seq <= self.last_event_seq) {
            return Ok(Decision::Duplicate { seq, last_event_seq: self.last_event_seq });
        }
        let mut events = match (self.state, input) {
            (S::Pending, HostInput::Dispatch) => vec![HostEvent::Dispatched],
            (S::Dispatched, HostInput::Ack { seq, current }) => {
                vec![HostEvent::Acked { seq: *seq, current: current.clone() }]
            }
            (S::Acked, HostInput::ActivationStarted { seq }) => vec![HostEvent::ActivationStarted { seq: *seq }],
            (S::Acked | S::Activating, HostInput::ActivationFailed { seq, error }) => {
                vec![HostEvent::Failed { seq: Some(*seq), reason: format!("activation failed: {error}") }]
            }
            (S::Activating, HostInput::ActivationCompleted { seq, current }) if *current == self.target => {
                let soak_due_at = now_ms.saturating_add(policy.soak_ms(self.wave));
                vec![HostEvent::ActivationCompleted { seq: *seq, current: current.clone(), soak_due_at }]
            }
            (S::Activating, HostInput::ActivationCompleted { seq, current }) => vec![
                HostEvent::CurrentReported { current: Some(current.clone()) },
                HostEvent::Failed {
                    seq: Some(*seq),
                    reason: format!("activation completed but the host runs {current}, not the target {}", self.target),
                },
            ],
            (S::Soaking, HostInput::ProbeResult { seq, probe, passed, mode, at }) => {
                let spec = policy.probe(probe).filter(|spec| spec.mode == *mode).ok_or_else(|| StepError::UnknownProbe {
                    rollout_id: self.rollout_id.clone(),
                    hostname: self.hostname.clone(),
                    probe: probe.clone(),
                    mode: *mode,
                })?;
                let activated_at = self.activation_completed_at.unwrap_or(now_ms);
                let in_grace = !*passed && now_ms < activated_at.saturating_add(spec.grace_ms);
                let recorded =
                    HostEvent::ProbeRecorded { seq: *seq, probe: probe.clone(), mode: *mode, passed: *passed, at: *at, in_grace };
                let before = self.probes.get(probe).map_or(0, |s| s.consecutive_failures);
                let consecutive_failures = match (*passed, in_grace) {
                    (true, _) => 0,
                    (false, true) => before,
                    (false, false) => before + 1,
                };
                if *mode == ProbeMode::Enforce && consecutive_failures >= spec.failure_threshold {
                    let reason = format!(
                        "enforce probe {probe} failed {consecutive_failures} times in a row (failure_threshold = {})",
                        spec.failure_threshold
                    );
                    vec![recorded, HostEvent::Failed { seq: None, reason }]
                } else {
                    vec![recorded]
                }
            }
            (_, HostInput::Tick) => Vec::new(),
            // Failed: decided by `next_actions`; Soaking or Converged: an operator's undo.
            (S::Failed | S::Soaking | S::Converged, HostInput::RollBack) => vec![HostEvent::RollbackOrdered],
            (S::Reverting, HostInput::RollbackStarted { seq }) => vec![HostEvent::RollbackStarted { seq: *seq }],
            (S::Reverting, HostInput::RollbackCompleted { seq, current }) if *current == self.previous => {
                vec![HostEvent::Reverted { seq: *seq, current: current.clone() }]
            }
            (S::Reverting, HostInput::RollbackCompleted { seq, current }) => vec![
                HostEvent::CurrentReported { current: current.clone() },
                HostEvent::Failed {
                    seq: Some(*seq),
                    reason: format!("rollback left the host on {}, not {}", describe(current), describe(&self.previous)),
                },
            ],
            (S::Reverting, HostInput::RollbackFailed { seq, error }) => {
                vec![HostEvent::Failed { seq: Some(*seq), reason: format!("rollback failed: {error}") }]
            }
            (state, input) => {
                return Err(StepError::Illegal {
                    rollout_id: self.rollout_id.clone(),
                    hostname: self.hostname.clone(),
                    state,
                    input: input.kind(),
                })
            }
        };
        // Convergence is checked on the state the events lead to, whatever the input was: a
        // probe that passes after the soak ended converges at once, without waiting for a tick.
        let converges = if events.is_empty() {
            self.ready_to_converge(now_ms, policy)
        } else {
            let mut after = self.clone();
            events.iter().for_each(|event| after.apply(event, now_ms));
            after.ready_to_converge(now_ms, policy)
        };
        if converges {
            events.push(HostEvent::Converged);
        }
        Ok(Decision::Events(events))
    }

    /// Whether the host may converge at `now_ms`: Soaking on `target`, the soak over, and every
    /// enforce probe passing with a pass recorded at or after `soak_due_at`.
    pub fn ready_to_converge(&self, now_ms: u64, policy: &RolloutPolicy) -> bool {
        let Some(soak_due_at) = self.soak_due_at else { return false };
        self.state == HostRolloutState::Soaking
            && self.current.as_deref() == Some(self.target.as_str())
            && now_ms >= soak_due_at
            && self.enforce_probes_passing(policy)
            && policy
                .enforce_probes()
                .all(|spec| self.probes.get(&spec.name).and_then(|s| s.last_pass_at).is_some_and(|at| at >= soak_due_at))
    }

    /// Every enforce probe has passed since the activation and its latest result is a pass. With
    /// no enforce probe this holds only if the policy says `require_probes = false`.
    pub fn enforce_probes_passing(&self, policy: &RolloutPolicy) -> bool {
        let mut enforce = policy.enforce_probes().peekable();
        if enforce.peek().is_none() {
            return !policy.require_probes;
        }
        enforce.all(|spec| self.probes.get(&spec.name).is_some_and(|s| s.consecutive_failures == 0 && s.n_passes > 0))
    }

    /// Records one event at `at_ms`. Called for live decisions and for replay alike.
    pub fn apply(&mut self, event: &HostEvent, at_ms: u64) {
        match event {
            HostEvent::Dispatched => {
                self.state = HostRolloutState::Dispatched;
                self.previous = self.current.clone();
                self.dispatched_at = Some(at_ms);
                self.last_report_at = Some(at_ms);
            }
            HostEvent::Acked { seq, current } => {
                self.reported(*seq, at_ms);
                if let Some(current) = current {
                    self.current = Some(current.clone());
                    self.previous = Some(current.clone());
                }
                self.state = HostRolloutState::Acked;
                self.dispatch_acked_at = Some(at_ms);
            }
            HostEvent::ActivationStarted { seq } => {
                self.reported(*seq, at_ms);
                self.state = HostRolloutState::Activating;
                self.activation_started_at = Some(at_ms);
            }
            HostEvent::CurrentReported { current } => self.current = current.clone(),
            HostEvent::ActivationCompleted { seq, current, soak_due_at } => {
                self.reported(*seq, at_ms);
                self.state = HostRolloutState::Soaking;
                self.current = Some(current.clone());
                self.activation_completed_at = Some(at_ms);
                self.soak_due_at = Some(*soak_due_at);
                self.probes.clear();
            }
            HostEvent::ProbeRecorded { seq, probe, mode, passed, at, in_grace } => {
                self.reported(*seq, at_ms);
                let status = self.probes.entry(probe.clone()).or_insert(ProbeStatus {
                    mode: *mode,
                    consecutive_failures: 0,
                    n_passes: 0,
                    n_failures: 0,
                    last_pass_at: None,
                    last_run_at: *at,
                });
                status.last_run_at = *at;
                if *passed {
                    status.n_passes += 1;
                    status.consecutive_failures = 0;
                    status.last_pass_at = Some(at_ms);
                } else {
                    status.n_failures += 1;
                    if !*in_grace {
                        status.consecutive_failures += 1;
                    }
                }
            }
            HostEvent::Converged => {
                self.state = HostRolloutState::Converged;
                self.converged_at = Some(at_ms);
            }
            HostEvent::Failed { seq, reason } => {
                if let Some(seq) = seq {
                    self.reported(*seq, at_ms);
                }
                self.state = HostRolloutState::Failed;
                self.failure = Some(reason.clone());
            }
            HostEvent::RollbackOrdered => {
                self.state = HostRolloutState::Reverting;
                self.n_rollbacks += 1;
                // Only a failed host is rolled back on the rollout's own decision.
                self.failure.get_or_insert_with(|| "rolled back by an operator (warden rollout undo)".into());
            }
            HostEvent::RollbackStarted { seq } => self.reported(*seq, at_ms),
            HostEvent::Reverted { seq, current } => {
                self.reported(*seq, at_ms);
                self.state = HostRolloutState::Reverted;
                self.current = current.clone();
            }
        }
        debug_assert_eq!(self.validate(), Ok(()));
    }

    fn reported(&mut self, seq: u64, at_ms: u64) {
        self.last_event_seq = self.last_event_seq.max(seq);
        self.last_report_at = Some(at_ms);
    }

    /// Invariants of one host that hold after every event, whatever the policy.
    pub fn validate(&self) -> Result<(), HostInvariantError> {
        use HostInvariantError as E;
        use HostRolloutState as S;
        let hostname = || self.hostname.clone();
        let reached = |field: Option<u64>, reached: S| match (field.is_some(), self.state >= reached && !self.state.is_failure())
        {
            (false, true) => Err(E::MissingTimestamp { hostname: hostname(), state: self.state, reached }),
            _ => Ok(()),
        };
        reached(self.dispatched_at, S::Dispatched)?;
        reached(self.dispatch_acked_at, S::Acked)?;
        reached(self.activation_started_at, S::Activating)?;
        reached(self.activation_completed_at, S::Soaking)?;
        reached(self.soak_due_at, S::Soaking)?;
        reached(self.converged_at, S::Converged)?;
        let times = [self.dispatched_at, self.dispatch_acked_at, self.activation_started_at, self.activation_completed_at];
        let mut latest = 0;
        for at in times.into_iter().flatten() {
            if at < latest {
                return Err(E::TimestampsOutOfOrder { hostname: hostname(), times });
            }
            latest = at;
        }
        if let (Some(activation_completed_at), Some(soak_due_at)) = (self.activation_completed_at, self.soak_due_at) {
            if soak_due_at < activation_completed_at {
                return Err(E::SoakDueBeforeActivation { hostname: hostname(), soak_due_at, activation_completed_at });
            }
        }
        match self.state {
            S::Soaking | S::Converged if self.current.as_deref() != Some(self.target.as_str()) => Err(E::NotOnTarget {
                hostname: hostname(),
                state: self.state,
                current: self.current.clone(),
                target: self.target.clone(),
            }),
            S::Converged if self.converged_at < self.soak_due_at => Err(E::ConvergedBeforeSoak {
                hostname: hostname(),
                converged_at: self.converged_at,
                soak_due_at: self.soak_due_at,
            }),
            S::Failed | S::Reverting | S::Reverted if self.failure.is_none() => {
                Err(E::NoFailureRecorded { hostname: hostname(), state: self.state })
            }
            S::Reverted if self.current != self.previous => Err(E::NotRevertedToPrevious {
                hostname: hostname(),
                current: self.current.clone(),
                previous: self.previous.clone(),
            }),
            _ => Ok(()),
        }
    }
}

fn describe(version: &Option<String>) -> &str {
    version.as_deref().unwrap_or("nothing")
}
