//! The workload lifecycle as a pure state machine: `step(workload, input, now) -> events + effects`.
//!
//! ```text
//! pending → starting → running → exited ─┬→ backoff → starting → …
//!              │          │               └→ completed | failed | expired
//!              └──────────┴→ stopping → exited → stopped | expired
//! ```
//! `step` decides and never mutates; `Workload::apply` is the only thing that changes a workload,
//! and it is driven by the same events whether they were just decided or are being replayed.
//! That is what makes replay rebuild exactly the live state (invariant 2).

use serde::{Deserialize, Serialize};

use crate::event::{EventData, Outcome};
use crate::spec::Spec;
use crate::types::{CellExit, ReplicationMode, RestartPolicy, StandbySlot, WorkloadInfo};
// Defined in the leaf `types` (events carry it too); kept at its old path for other crates.
pub use crate::types::StopReason;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub info: WorkloadInfo,
    pub spec: Spec,
    pub phase: Phase,
    /// Cells that reached `lifecycle.started`.
    pub runs: u32,
    /// Cells decided (`workload.starting`); numbers the cell ids.
    pub cells_created: u32,
    /// Failed exits since the last success or the last run that outlived `backoff_reset`.
    pub consecutive_failures: u32,
    pub last_exit: Option<ExitRecord>,
    /// Set once a stop was decided; the cell's exit then ends the workload instead of restarting it.
    pub stop_reason: Option<StopReason>,
    /// The host of the latest cell (`workload.placed`), and the lease epoch it runs under.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub epoch: Option<u64>,
    /// The cell `host` and `epoch` are about: a cell decided but not placed yet differs.
    #[serde(default)]
    pub placed_cell: Option<String>,
    /// An `each-host` instance's host: it runs there or nowhere.
    #[serde(default)]
    pub pinned_host: Option<String>,
    /// `warm-standby`: the armed standby slots, by index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standbys: Vec<StandbySlot>,
    /// Failovers to a standby (`workload.failover`): new cells that are not restarts.
    #[serde(default)]
    pub failovers: u32,
    /// Of those, the ones whose cell ran and was not the workload's first run (what `restarts`
    /// leaves out).
    #[serde(default)]
    pub failovers_ran: u32,
    /// The cell the latest failover decided, until it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_cell: Option<String>,
    /// Cells started because the spec was replaced (a rollout): new versions, not restarts.
    #[serde(default)]
    pub replacements: u32,
    /// A replaced workload's host: the new version's cell goes there if it still can (a
    /// rollout replaces a host's cells; the new ones must not land elsewhere). Cleared once
    /// the next cell is placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_on: Option<String>,
    pub updated_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub cell_id: String,
    pub exit: CellExit,
    pub ran_ms: Option<u64>,
    pub at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningCell {
    pub cell_id: String,
    pub pid: u32,
    pub pid_start_time: u64,
    pub started_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Phase {
    Pending,
    /// A cell was decided on and is being created.
    Starting {
        cell_id: String,
        attempt: u32,
    },
    Running {
        cell: RunningCell,
    },
    /// The cell ended; the next event decides what follows.
    Exited {
        cell_id: String,
    },
    Backoff {
        until_ms: u64,
    },
    /// SIGTERM sent (or to be sent once the pid is known); SIGKILL at `kill_at_ms`.
    Stopping {
        cell_id: String,
        cell: Option<RunningCell>,
        reason: StopReason,
        kill_at_ms: u64,
        escalated: bool,
    },
    Completed,
    Failed {
        reason: String,
    },
    Stopped {
        reason: String,
    },
    Expired,
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Starting { .. } => "starting",
            Phase::Running { .. } => "running",
            Phase::Exited { .. } => "exited",
            Phase::Backoff { .. } => "backoff",
            Phase::Stopping { .. } => "stopping",
            Phase::Completed => "completed",
            Phase::Failed { .. } => "failed",
            Phase::Stopped { .. } => "stopped",
            Phase::Expired => "expired",
        }
    }

    pub fn is_terminal(&self) -> bool {
        match self {
            Phase::Completed | Phase::Failed { .. } | Phase::Stopped { .. } | Phase::Expired => true,
            Phase::Pending
            | Phase::Starting { .. }
            | Phase::Running { .. }
            | Phase::Exited { .. }
            | Phase::Backoff { .. }
            | Phase::Stopping { .. } => false,
        }
    }

    /// The cell this phase has, or is creating, if any.
    pub fn cell_id(&self) -> Option<&str> {
        match self {
            Phase::Starting { cell_id, .. } | Phase::Stopping { cell_id, .. } => Some(cell_id),
            Phase::Running { cell } => Some(&cell.cell_id),
            Phase::Pending
            | Phase::Exited { .. }
            | Phase::Backoff { .. }
            | Phase::Completed
            | Phase::Failed { .. }
            | Phase::Stopped { .. }
            | Phase::Expired => None,
        }
    }

    pub fn running_cell(&self) -> Option<&RunningCell> {
        match self {
            Phase::Running { cell } => Some(cell),
            Phase::Stopping { cell, .. } => cell.as_ref(),
            _ => None,
        }
    }
}

/// What the runtime tells a workload. Time comes with it, as `now_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Time passed; deadlines (backoff, stop grace, ttl) may be due.
    Tick,
    /// A user asked to stop the workload.
    Stop,
    CellStarted {
        cell_id: String,
        pid: u32,
        pid_start_time: u64,
    },
    CellStartFailed {
        cell_id: String,
        error: String,
    },
    CellExited {
        cell_id: String,
        exit: CellExit,
    },
    /// The cell's host is gone (declared down, or it evicted the cell): the cell is written
    /// off. A `warm-standby` workload fails over at once; any other takes it as an exit.
    HostLost {
        cell_id: String,
        host: Option<String>,
        reason: String,
    },
    /// Run `spec` (`spec_id`) from now on (a rollout moving the workload to a new version, or
    /// back): a running cell is stopped (SIGTERM, SIGKILL after its grace) and a cell of the new
    /// spec starts as soon as it is gone, without backoff; a workload that failed or completed
    /// starts again. Refused once the workload was stopped or expired.
    Replace {
        spec: Box<Spec>,
        spec_id: String,
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopSignal {
    /// SIGTERM to the process group.
    Term,
    /// SIGKILL to the process group.
    Kill,
}

/// What the runtime must do once the step's events are durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    StartCell { workload_id: String, cell_id: String },
    SignalCell { workload_id: String, cell_id: String, signal: StopSignal },
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub events: Vec<EventData>,
    pub effects: Vec<Effect>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("cell {cell_id} is not the current cell of workload {workload_id}")]
    StaleCell { workload_id: String, cell_id: String },
    #[error("workload {workload_id} is {phase}; {input} does not apply")]
    WrongPhase { workload_id: String, phase: &'static str, input: &'static str },
}

impl Input {
    fn name(&self) -> &'static str {
        match self {
            Input::Tick => "tick",
            Input::Stop => "stop",
            Input::CellStarted { .. } => "cell-started",
            Input::CellStartFailed { .. } => "cell-start-failed",
            Input::CellExited { .. } => "cell-exited",
            Input::HostLost { .. } => "host-lost",
            Input::Replace { .. } => "replace",
        }
    }

    fn cell_id(&self) -> Option<&str> {
        match self {
            Input::CellStarted { cell_id, .. }
            | Input::CellStartFailed { cell_id, .. }
            | Input::CellExited { cell_id, .. }
            | Input::HostLost { cell_id, .. } => Some(cell_id),
            Input::Tick | Input::Stop | Input::Replace { .. } => None,
        }
    }
}

impl Workload {
    pub fn new(info: WorkloadInfo, spec: Spec, at_ms: u64) -> Workload {
        Workload {
            info,
            spec,
            phase: Phase::Pending,
            runs: 0,
            cells_created: 0,
            consecutive_failures: 0,
            last_exit: None,
            stop_reason: None,
            host: None,
            epoch: None,
            placed_cell: None,
            pinned_host: None,
            standbys: Vec::new(),
            failovers: 0,
            failovers_ran: 0,
            failover_cell: None,
            replacements: 0,
            replaced_on: None,
            updated_at_ms: at_ms,
        }
    }

    /// The host of the current cell, once it was placed.
    pub fn current_host(&self) -> Option<&str> {
        let cell = self.phase.cell_id()?;
        (self.placed_cell.as_deref() == Some(cell)).then_some(self.host.as_deref()).flatten()
    }

    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// Restarts so far: every run after the first that was not a failover's or a new version's.
    pub fn restarts(&self) -> u32 {
        self.runs.saturating_sub(1).saturating_sub(self.failovers_ran).saturating_sub(self.replacements)
    }

    fn expires_at_ms(&self) -> Option<u64> {
        self.info.expires_at.map(|secs| secs.saturating_mul(1000))
    }

    fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms().is_some_and(|at| now_ms >= at)
    }

    /// The earliest time at which a `Tick` would do something, if any.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let phase_deadline = match &self.phase {
            Phase::Pending | Phase::Exited { .. } => Some(0),
            Phase::Backoff { until_ms } => Some(*until_ms),
            Phase::Stopping { escalated: false, kill_at_ms, .. } => Some(*kill_at_ms),
            _ => None,
        };
        let expiry = match &self.phase {
            Phase::Stopping { .. } => None,
            phase if phase.is_terminal() => None,
            _ => self.expires_at_ms(),
        };
        match (phase_deadline, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Decides what `input` at `now_ms` means for this workload, without changing it.
    pub fn step(&self, input: &Input, now_ms: u64) -> Result<Decision, StepError> {
        if let Some(cell_id) = input.cell_id() {
            if self.phase.cell_id() != Some(cell_id) {
                return Err(StepError::StaleCell { workload_id: self.id().into(), cell_id: cell_id.into() });
            }
        }
        let id = self.id().to_string();
        let mut decision = Decision::default();
        if let Input::Replace { spec, spec_id, reason } = input {
            self.decide_replace(spec, spec_id, reason, now_ms, &mut decision)?;
            return Ok(decision);
        }
        match (&self.phase, input) {
            (Phase::Pending | Phase::Backoff { .. }, Input::Tick) if self.is_expired(now_ms) => {
                decision.events.push(EventData::WorkloadExpired { workload_id: id });
            }
            (Phase::Pending, Input::Tick) => self.decide_start(&mut decision),
            (Phase::Backoff { until_ms }, Input::Tick) if now_ms >= *until_ms => self.decide_start(&mut decision),
            (Phase::Pending | Phase::Backoff { .. }, Input::Stop) => {
                decision.events.push(EventData::WorkloadStopped { workload_id: id, reason: "stopped on request".into() });
            }
            (Phase::Starting { .. } | Phase::Running { .. }, Input::Tick) if self.is_expired(now_ms) => {
                self.decide_stop(StopReason::Expired, now_ms, &mut decision);
            }
            (Phase::Starting { .. } | Phase::Running { .. }, Input::Stop) => {
                self.decide_stop(StopReason::Requested, now_ms, &mut decision);
            }
            (
                Phase::Starting { cell_id, .. } | Phase::Stopping { cell_id, cell: None, .. },
                Input::CellStarted { pid, pid_start_time, .. },
            ) => {
                decision.events.push(EventData::LifecycleStarted {
                    workload_id: id.clone(),
                    cell_id: cell_id.clone(),
                    vmid: self.info.vmid,
                    pid: *pid,
                    pid_start_time: *pid_start_time,
                    spec_id: self.info.spec_id.clone(),
                });
                if let Phase::Stopping { escalated, .. } = &self.phase {
                    // The stop was decided before the pid was known; deliver it now.
                    let signal = if *escalated { StopSignal::Kill } else { StopSignal::Term };
                    decision.effects.push(Effect::SignalCell { workload_id: id, cell_id: cell_id.clone(), signal });
                }
            }
            (
                Phase::Starting { cell_id, .. } | Phase::Stopping { cell_id, cell: None, .. },
                Input::CellStartFailed { error, .. },
            ) => {
                decision.events.push(EventData::LifecycleDestroyed {
                    workload_id: id,
                    cell_id: cell_id.clone(),
                    outcome: Outcome::Failed,
                    exit_code: None,
                    signal: None,
                    reason: format!("start failed: {error}"),
                    terminal_state: None,
                    ran_ms: None,
                });
            }
            (
                Phase::Starting { cell_id, .. } | Phase::Running { cell: RunningCell { cell_id, .. } },
                Input::HostLost { host, reason, .. },
            ) if self.spec.replication.mode == ReplicationMode::WarmStandby && !self.is_expired(now_ms) => {
                let ran_ms = self.phase.running_cell().map(|cell| now_ms.saturating_sub(cell.started_at_ms));
                decision.events.push(EventData::LifecycleDestroyed {
                    workload_id: id.clone(),
                    cell_id: cell_id.clone(),
                    outcome: Outcome::Failed,
                    exit_code: None,
                    signal: None,
                    reason: reason.clone(),
                    terminal_state: None,
                    ran_ms,
                });
                let next = format!("{}.{}", self.id(), self.cells_created + 1);
                decision.events.push(EventData::WorkloadFailover {
                    workload_id: id.clone(),
                    from_cell: cell_id.clone(),
                    from_host: host.clone(),
                    cell_id: next.clone(),
                    reason: reason.clone(),
                });
                decision.effects.push(Effect::StartCell { workload_id: id, cell_id: next });
            }
            (
                Phase::Starting { cell_id, .. }
                | Phase::Running { cell: RunningCell { cell_id, .. } }
                | Phase::Stopping { cell_id, .. },
                Input::CellExited { .. } | Input::HostLost { .. },
            ) => {
                let lost;
                let exit = match input {
                    Input::CellExited { exit, .. } => exit,
                    Input::HostLost { reason, .. } => {
                        lost = CellExit { exit_code: None, signal: None, reason: reason.clone(), terminal_state: None };
                        &lost
                    }
                    _ => unreachable!("matched above"),
                };
                let ran_ms = self.phase.running_cell().map(|cell| now_ms.saturating_sub(cell.started_at_ms));
                decision.events.push(EventData::LifecycleDestroyed {
                    workload_id: id,
                    cell_id: cell_id.clone(),
                    outcome: if exit.succeeded() { Outcome::Succeeded } else { Outcome::Failed },
                    exit_code: exit.exit_code,
                    signal: exit.signal,
                    reason: exit.reason.clone(),
                    terminal_state: exit.terminal_state,
                    ran_ms,
                });
            }
            (Phase::Stopping { escalated: false, kill_at_ms, cell, cell_id, .. }, Input::Tick) if now_ms >= *kill_at_ms => {
                decision.events.push(EventData::WorkloadStopEscalated { workload_id: id.clone() });
                if cell.is_some() {
                    decision.effects.push(Effect::SignalCell {
                        workload_id: id,
                        cell_id: cell_id.clone(),
                        signal: StopSignal::Kill,
                    });
                }
            }
            (Phase::Exited { .. }, Input::Tick) => self.decide_after_exit(now_ms, &mut decision),
            (Phase::Exited { .. }, Input::Stop) => {
                decision.events.push(EventData::WorkloadStopped { workload_id: id, reason: "stopped on request".into() });
            }
            (Phase::Stopping { .. }, Input::Stop) | (_, Input::Tick) => {}
            (phase, Input::Stop) if phase.is_terminal() => {}
            (phase, input) => {
                return Err(StepError::WrongPhase { workload_id: id, phase: phase.name(), input: input.name() });
            }
        }
        Ok(decision)
    }

    fn decide_replace(
        &self,
        spec: &Spec,
        spec_id: &str,
        reason: &str,
        now_ms: u64,
        decision: &mut Decision,
    ) -> Result<(), StepError> {
        let id = self.id().to_string();
        let refused = || StepError::WrongPhase { workload_id: id.clone(), phase: self.phase.name(), input: "replace" };
        let replaced = EventData::WorkloadReplaced {
            workload_id: id.clone(),
            spec_id: spec_id.into(),
            spec: spec.clone(),
            reason: reason.into(),
        };
        match &self.phase {
            Phase::Stopped { .. } | Phase::Expired => return Err(refused()),
            Phase::Stopping { reason: StopReason::Replaced, .. } => decision.events.push(replaced),
            Phase::Stopping { .. } => return Err(refused()),
            Phase::Starting { .. } | Phase::Running { .. } => {
                decision.events.push(replaced);
                // The old version's grace, not the new one's: it is the old cell that stops.
                let kill_at_ms = now_ms.saturating_add(self.spec.cell.graceful_shutdown_ms);
                decision.events.push(EventData::WorkloadStopping {
                    workload_id: id.clone(),
                    reason: StopReason::Replaced,
                    kill_at_ms,
                });
                if let Phase::Running { cell } = &self.phase {
                    decision.effects.push(Effect::SignalCell {
                        workload_id: id,
                        cell_id: cell.cell_id.clone(),
                        signal: StopSignal::Term,
                    });
                }
            }
            // No cell: the replaced workload is pending again, and its next tick starts the new spec.
            Phase::Pending | Phase::Exited { .. } | Phase::Backoff { .. } | Phase::Completed | Phase::Failed { .. } => {
                decision.events.push(replaced)
            }
        }
        Ok(())
    }

    fn decide_start(&self, decision: &mut Decision) {
        let cell_id = format!("{}.{}", self.id(), self.cells_created + 1);
        decision.events.push(EventData::WorkloadStarting {
            workload_id: self.id().into(),
            cell_id: cell_id.clone(),
            attempt: self.runs,
        });
        decision.effects.push(Effect::StartCell { workload_id: self.id().into(), cell_id });
    }

    fn decide_stop(&self, reason: StopReason, now_ms: u64, decision: &mut Decision) {
        let kill_at_ms = now_ms.saturating_add(self.spec.cell.graceful_shutdown_ms);
        decision.events.push(EventData::WorkloadStopping { workload_id: self.id().into(), reason, kill_at_ms });
        if let Phase::Running { cell } = &self.phase {
            decision.effects.push(Effect::SignalCell {
                workload_id: self.id().into(),
                cell_id: cell.cell_id.clone(),
                signal: StopSignal::Term,
            });
        }
    }

    /// After a cell ended on its own: restart by policy, or finish.
    fn decide_after_exit(&self, now_ms: u64, decision: &mut Decision) {
        let id = self.id().to_string();
        let Some(last) = &self.last_exit else {
            unreachable!("Exited is only entered through lifecycle.destroyed, which records last_exit")
        };
        match self.stop_reason {
            Some(StopReason::Requested) => {
                decision.events.push(EventData::WorkloadStopped { workload_id: id, reason: "stopped on request".into() });
                return;
            }
            Some(StopReason::Expired) => {
                decision.events.push(EventData::WorkloadExpired { workload_id: id });
                return;
            }
            Some(StopReason::Replaced) if !self.is_expired(now_ms) => {
                self.decide_start(decision);
                return;
            }
            Some(StopReason::Replaced) => {
                decision.events.push(EventData::WorkloadExpired { workload_id: id });
                return;
            }
            None if self.is_expired(now_ms) => {
                decision.events.push(EventData::WorkloadExpired { workload_id: id });
                return;
            }
            None => {}
        }
        let restart = &self.spec.restart;
        let outlived_reset = last.ran_ms.is_some_and(|ran| ran >= restart.backoff_reset_ms);
        let failures_before = if outlived_reset { 0 } else { self.consecutive_failures };
        let succeeded = last.exit.succeeded();
        let consecutive_failures = if succeeded { 0 } else { failures_before + 1 };
        let gives_up = match restart.policy {
            RestartPolicy::Never => true,
            RestartPolicy::Always => false,
            RestartPolicy::OnFailure { max_attempts } => succeeded || consecutive_failures > max_attempts,
        };
        if gives_up {
            decision.events.push(if succeeded {
                EventData::WorkloadCompleted { workload_id: id }
            } else {
                let reason = match restart.policy {
                    RestartPolicy::OnFailure { max_attempts } => format!(
                        "{}; gave up after {consecutive_failures} consecutive failures (max_attempts = {max_attempts})",
                        last.exit.reason
                    ),
                    _ => format!("{}; restart policy is never", last.exit.reason),
                };
                EventData::WorkloadFailed { workload_id: id, consecutive_failures, reason }
            });
            return;
        }
        let delay_ms = backoff_delay_ms(restart.backoff_ms, restart.backoff_max_ms, consecutive_failures);
        decision.events.push(EventData::WorkloadBackoff {
            workload_id: id,
            consecutive_failures,
            delay_ms,
            until_ms: now_ms.saturating_add(delay_ms),
        });
    }

    /// Records one event. Called for live decisions and for replay alike.
    pub fn apply(&mut self, data: &EventData, at_ms: u64) {
        self.updated_at_ms = at_ms;
        match data {
            EventData::WorkloadSubmitted { .. }
            | EventData::Job(_)
            | EventData::JournalRecovered { .. }
            | EventData::JournalRepaired { .. }
            | EventData::JournalRestored { .. }
            | EventData::LeaseGranted { .. }
            | EventData::LeaseReleased { .. }
            | EventData::HostTokenCreated { .. }
            | EventData::HostTokenUsed { .. }
            | EventData::HostTokenRevoked { .. }
            | EventData::HostRemoved { .. }
            | EventData::HostEnrolled { .. }
            | EventData::HostDown { .. }
            | EventData::HostDrain { .. }
            | EventData::LeaseRevoked { .. }
            | EventData::HostUp { .. }
            | EventData::RolloutStarted(_)
            | EventData::RolloutProgressed { .. }
            | EventData::RolloutPaused { .. }
            | EventData::KeyAdded { .. }
            | EventData::KeyRevoked { .. }
            | EventData::SecretPut { .. }
            | EventData::SecretRemoved { .. } => {}
            EventData::CellPlaced { cell_id, host, epoch, adopts, .. } => {
                self.replaced_on = None;
                self.host = Some(host.clone());
                self.epoch = *epoch;
                self.placed_cell = Some(adopts.as_ref().unwrap_or(cell_id).clone());
                if let (Some(adopted), Some(failover)) = (adopts, &mut self.failover_cell) {
                    if failover == cell_id {
                        *failover = adopted.clone();
                    }
                }
                if let (Some(adopted), Phase::Starting { cell_id: starting, .. }) = (adopts, &mut self.phase) {
                    if starting == cell_id {
                        *starting = adopted.clone();
                    }
                }
            }
            EventData::WorkloadStarting { cell_id, attempt, .. } => {
                if self.stop_reason == Some(StopReason::Replaced) {
                    self.stop_reason = None;
                    self.replacements += 1;
                }
                self.cells_created += 1;
                self.phase = Phase::Starting { cell_id: cell_id.clone(), attempt: *attempt };
            }
            EventData::WorkloadFailover { cell_id, .. } => {
                self.cells_created += 1;
                self.failovers += 1;
                self.failover_cell = Some(cell_id.clone());
                self.phase = Phase::Starting { cell_id: cell_id.clone(), attempt: self.runs };
            }
            EventData::StandbyArmed { slot, .. } => {
                self.standbys.retain(|s| s.host != slot.host && s.standby_index != slot.standby_index);
                self.standbys.push(slot.clone());
                self.standbys.sort_by_key(|s| s.standby_index);
            }
            EventData::StandbyReleased { host, .. } => self.standbys.retain(|s| s.host != *host),
            EventData::LifecycleStarted { cell_id, pid, pid_start_time, .. } => {
                if self.failover_cell.as_deref() == Some(cell_id.as_str()) {
                    if self.runs > 0 {
                        self.failovers_ran += 1;
                    }
                    self.failover_cell = None;
                }
                self.runs += 1;
                let cell =
                    RunningCell { cell_id: cell_id.clone(), pid: *pid, pid_start_time: *pid_start_time, started_at_ms: at_ms };
                match &mut self.phase {
                    Phase::Stopping { cell: slot, .. } => *slot = Some(cell),
                    phase => *phase = Phase::Running { cell },
                }
            }
            EventData::LifecycleDestroyed { cell_id, exit_code, signal, reason, terminal_state, ran_ms, .. } => {
                let exit =
                    CellExit { exit_code: *exit_code, signal: *signal, reason: reason.clone(), terminal_state: *terminal_state };
                self.last_exit = Some(ExitRecord { cell_id: cell_id.clone(), exit, ran_ms: *ran_ms, at_ms });
                self.phase = Phase::Exited { cell_id: cell_id.clone() };
            }
            EventData::WorkloadBackoff { consecutive_failures, until_ms, .. } => {
                self.consecutive_failures = *consecutive_failures;
                self.phase = Phase::Backoff { until_ms: *until_ms };
            }
            EventData::WorkloadStopping { reason, kill_at_ms, .. } => {
                let cell_id = self.phase.cell_id().expect("stopping is only decided for a phase with a cell").to_string();
                let cell = self.phase.running_cell().cloned();
                self.stop_reason = Some(*reason);
                self.phase = Phase::Stopping { cell_id, cell, reason: *reason, kill_at_ms: *kill_at_ms, escalated: false };
            }
            EventData::WorkloadStopEscalated { .. } => {
                if let Phase::Stopping { escalated, .. } = &mut self.phase {
                    *escalated = true;
                }
            }
            EventData::WorkloadCompleted { .. } => {
                self.consecutive_failures = 0;
                self.phase = Phase::Completed;
            }
            EventData::WorkloadFailed { consecutive_failures, reason, .. } => {
                self.consecutive_failures = *consecutive_failures;
                self.phase = Phase::Failed { reason: reason.clone() };
            }
            EventData::WorkloadStopped { reason, .. } => self.phase = Phase::Stopped { reason: reason.clone() },
            EventData::WorkloadExpired { .. } => self.phase = Phase::Expired,
            EventData::WorkloadReplaced { spec, spec_id, .. } => {
                if self.replaced_on.is_none() {
                    self.replaced_on = self.host.clone();
                }
                self.spec = spec.clone();
                self.info.spec_id = spec_id.clone();
                self.consecutive_failures = 0;
                if matches!(self.phase, Phase::Exited { .. } | Phase::Backoff { .. } | Phase::Completed | Phase::Failed { .. }) {
                    self.phase = Phase::Pending;
                    self.stop_reason = Some(StopReason::Replaced);
                }
            }
            EventData::CheckpointTaken { state_uri, .. } => self.info.state_uri = Some(state_uri.clone()),
        }
        debug_assert_eq!(self.validate(), Ok(()));
    }

    /// Invariants that hold after every event.
    pub fn validate(&self) -> Result<(), WorkloadInvariantError> {
        if self.runs > self.cells_created {
            return Err(WorkloadInvariantError::MoreRunsThanCells { runs: self.runs, cells_created: self.cells_created });
        }
        if let RestartPolicy::Never = self.spec.restart.policy {
            if self.runs > 1 + self.failovers_ran + self.replacements {
                return Err(WorkloadInvariantError::RestartedUnderNever { runs: self.runs, failovers_ran: self.failovers_ran });
            }
        }
        Ok(())
    }
}

/// An invariant of a workload that does not hold: a bug in `step` or `apply` (see
/// [`Workload::validate`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadInvariantError {
    #[error("{runs} runs but only {cells_created} cells created")]
    MoreRunsThanCells { runs: u32, cells_created: u32 },
    #[error("restart policy never, but {runs} runs and {failovers_ran} failovers")]
    RestartedUnderNever { runs: u32, failovers_ran: u32 },
}

/// `backoff` for the first consecutive failure (and after a success, policy `always`), then
/// `max(backoff, MIN_BACKOFF_MS) × 2^(n-1)` for the n-th, capped at `backoff_max`. The floor is
/// what keeps `backoff = "0ms"` from a crash loop of dozens of restarts (and journal writes) a
/// second forever: doubling 0 stays 0. Only an explicit `backoff_max = "0ms"` asks for that.
pub fn backoff_delay_ms(backoff_ms: u64, backoff_max_ms: u64, consecutive_failures: u32) -> u64 {
    if consecutive_failures <= 1 {
        return backoff_ms.min(backoff_max_ms);
    }
    let doublings = (consecutive_failures - 1).min(63);
    backoff_ms.max(crate::spec::MIN_BACKOFF_MS).saturating_mul(1u64 << doublings).min(backoff_max_ms)
}

#[cfg(test)]
mod tests {
    use super::backoff_delay_ms;

    #[test]
    fn a_zero_backoff_restarts_once_at_once_then_doubles_from_the_floor() {
        let delays: Vec<u64> = (1..=6).map(|n| backoff_delay_ms(0, 30_000, n)).collect();
        assert_eq!(delays, [0, 20, 40, 80, 160, 320], "a crash loop slows down instead of spinning");
        assert_eq!(backoff_delay_ms(0, 30_000, 20), 30_000, "up to backoff_max");
        assert_eq!(backoff_delay_ms(100, 30_000, 3), 400, "a backoff above the floor doubles from itself");
        assert_eq!(backoff_delay_ms(0, 0, 9), 0, "only an explicit backoff_max of 0 never waits");
    }
}
