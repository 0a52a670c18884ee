//! The states a host goes through in one rollout, the kinds of input it takes, and which input
//! each state accepts.
//!
//! Legality of input × state ([`LEGAL`]; anything else is
//! [`StepError::Illegal`](crate::rollout::StepError::Illegal) and changes nothing):
//!
//! ```text
//!             dispatch ack started completed act-failed probe tick roll-back rb-started rb-completed rb-failed
//! Pending        ✓      ·     ·        ·         ·        ·    ✓       ·         ·           ·           ·
//! Dispatched     ·      ✓     ·        ·         ·        ·    ✓       ·         ·           ·           ·
//! Acked          ·      ·     ✓        ·         ✓        ·    ✓       ·         ·           ·           ·
//! Activating     ·      ·     ·        ✓         ✓        ·    ✓       ·         ·           ·           ·
//! Soaking        ·      ·     ·        ·         ·        ✓    ✓       ✓         ·           ·           ·
//! Converged      ·      ·     ·        ·         ·        ·    ✓       ✓         ·           ·           ·
//! Failed         ·      ·     ·        ·         ·        ·    ✓       ✓         ·           ·           ·
//! Reverting      ·      ·     ·        ·         ·        ·    ✓       ·         ✓           ✓           ✓
//! Reverted       ·      ·     ·        ·         ·        ·    ✓       ·         ·           ·           ·
//! ```
//!
//! `Reverting` is a state of its own (the issue names only Failed → Reverted) because a rollback is
//! a command run on the host that takes time and can fail: while it runs, the host is neither
//! failed-and-untouched nor back on `previous`, the order must survive an agent restart (the agent

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostRolloutState {
    /// Not dispatched yet: its wave has not come, or the budget is full.
    Pending,
    /// Told to move to `target`; no answer yet.
    Dispatched,
    /// The agent has the order.
    Acked,
    /// The activation command is running.
    Activating,
    /// Activated (`current == target`); probes run until `soak_due_at`.
    Soaking,
    /// Done: healthy on `target` for the whole soak.
    Converged,
    /// Activation failed, or an enforce probe failed `failure_threshold` times in a row.
    Failed,
    /// Ordered back to `previous`; the rollback command is running.
    Reverting,
    /// Back on `previous`.
    Reverted,
}

impl HostRolloutState {
    /// Every state, in the row order of [`LEGAL`].
    pub const ALL: [HostRolloutState; 9] = [
        HostRolloutState::Pending,
        HostRolloutState::Dispatched,
        HostRolloutState::Acked,
        HostRolloutState::Activating,
        HostRolloutState::Soaking,
        HostRolloutState::Converged,
        HostRolloutState::Failed,
        HostRolloutState::Reverting,
        HostRolloutState::Reverted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HostRolloutState::Pending => "pending",
            HostRolloutState::Dispatched => "dispatched",
            HostRolloutState::Acked => "acked",
            HostRolloutState::Activating => "activating",
            HostRolloutState::Soaking => "soaking",
            HostRolloutState::Converged => "converged",
            HostRolloutState::Failed => "failed",
            HostRolloutState::Reverting => "reverting",
            HostRolloutState::Reverted => "reverted",
        }
    }

    /// Between Dispatched and Soaking inclusive: what the disruption budget counts.
    pub fn is_in_flight(self) -> bool {
        match self {
            HostRolloutState::Dispatched | HostRolloutState::Acked | HostRolloutState::Activating | HostRolloutState::Soaking => {
                true
            }
            HostRolloutState::Pending
            | HostRolloutState::Converged
            | HostRolloutState::Failed
            | HostRolloutState::Reverting
            | HostRolloutState::Reverted => false,
        }
    }

    /// The host failed at some point in this rollout (and may have been rolled back since).
    pub fn is_failure(self) -> bool {
        match self {
            HostRolloutState::Failed | HostRolloutState::Reverting | HostRolloutState::Reverted => true,
            HostRolloutState::Pending
            | HostRolloutState::Dispatched
            | HostRolloutState::Acked
            | HostRolloutState::Activating
            | HostRolloutState::Soaking
            | HostRolloutState::Converged => false,
        }
    }

    /// Nothing more happens to the host in this rollout without an operator.
    pub fn is_terminal(self) -> bool {
        match self {
            HostRolloutState::Converged | HostRolloutState::Reverted => true,
            HostRolloutState::Pending
            | HostRolloutState::Dispatched
            | HostRolloutState::Acked
            | HostRolloutState::Activating
            | HostRolloutState::Soaking
            | HostRolloutState::Failed
            | HostRolloutState::Reverting => false,
        }
    }
}

impl fmt::Display for HostRolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kinds of [`HostInput`](crate::rollout::HostInput), in the column order of [`LEGAL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputKind {
    Dispatch,
    Ack,
    ActivationStarted,
    ActivationCompleted,
    ActivationFailed,
    ProbeResult,
    Tick,
    RollBack,
    RollbackStarted,
    RollbackCompleted,
    RollbackFailed,
}

impl InputKind {
    pub const ALL: [InputKind; 11] = [
        InputKind::Dispatch,
        InputKind::Ack,
        InputKind::ActivationStarted,
        InputKind::ActivationCompleted,
        InputKind::ActivationFailed,
        InputKind::ProbeResult,
        InputKind::Tick,
        InputKind::RollBack,
        InputKind::RollbackStarted,
        InputKind::RollbackCompleted,
        InputKind::RollbackFailed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            InputKind::Dispatch => "dispatch",
            InputKind::Ack => "ack",
            InputKind::ActivationStarted => "activation-started",
            InputKind::ActivationCompleted => "activation-completed",
            InputKind::ActivationFailed => "activation-failed",
            InputKind::ProbeResult => "probe-result",
            InputKind::Tick => "tick",
            InputKind::RollBack => "roll-back",
            InputKind::RollbackStarted => "rollback-started",
            InputKind::RollbackCompleted => "rollback-completed",
            InputKind::RollbackFailed => "rollback-failed",
        }
    }
}

impl fmt::Display for InputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which input each state accepts: rows [`HostRolloutState::ALL`], columns [`InputKind::ALL`].
/// `step` is written as its own `match`; a test walks every pair and holds the two to agreement.
#[rustfmt::skip]
pub const LEGAL: [[bool; 11]; 9] = {
    const Y: bool = true;
    const N: bool = false;
    [
        //          dispatch ack started completed act-failed probe tick roll-back rb-started rb-completed rb-failed
        /* Pending    */ [Y, N, N, N, N, N, Y, N, N, N, N],
        /* Dispatched */ [N, Y, N, N, N, N, Y, N, N, N, N],
        /* Acked      */ [N, N, Y, N, Y, N, Y, N, N, N, N],
        /* Activating */ [N, N, N, Y, Y, N, Y, N, N, N, N],
        /* Soaking    */ [N, N, N, N, N, Y, Y, Y, N, N, N],
        /* Converged  */ [N, N, N, N, N, N, Y, Y, N, N, N],
        /* Failed     */ [N, N, N, N, N, N, Y, Y, N, N, N],
        /* Reverting  */ [N, N, N, N, N, N, Y, N, Y, Y, Y],
        /* Reverted   */ [N, N, N, N, N, N, Y, N, N, N, N],
    ]
};

/// Whether `state` accepts an input of `kind` (see [`LEGAL`]).
pub fn legal(state: HostRolloutState, kind: InputKind) -> bool {
    LEGAL[state as usize][kind as usize]
}
