//! Rollouts, the pure part: a new version (`target`) host by host, wave by wave, each host proven
//! by probes over a soak before the next wave starts — the seed's `HostRolloutSnapshot`, the
//! per-host state machine, and the rollout's own machine over its waves.
//!
//! One host, for one rollout (`HostRolloutSnapshot::step` decides, `apply` records):
//!
//! ```text
//! Pending ─dispatch─▶ Dispatched ─ack─▶ Acked ─started─▶ Activating ─completed─▶ Soaking ─soak over, probes pass─▶ Converged
//!                                         │                  │                      │
//!                                         │ activation       │ activation failed,   │ an enforce probe failed
//!                                         │ failed           │ or completed with    │ failure_threshold times
//!                                         │                  │ current ≠ target     │ in a row
//!                                         └──────────────────┴───────▶ Failed ◀─────┘
//!                                                                     │    ▲
//!                                                           roll back │    │ rollback failed (not ordered again:
//!                                                                     ▼    │ that is for an operator)
//!                                              Reverted ◀─completed─ Reverting
//! ```
//!
//! The rollout (`next_actions` decides, `Rollout::apply` records):
//!
//! ```text
//! wave 0 (canary) ──every host converged──▶ wave 1 ──…──▶ last wave converged ──▶ completed
//!       └────────── any host failed ──────────┴──▶ halted: no more dispatches; with on_failure = rollback
//!                                                  the failed hosts go back to `previous`, the target is quarantined
//! ```
//!
//! Where this does better than the origin (nixfleet):
//! - **The soak clock starts at the host's own activation**: `soak_due_at` is
//!   `activation_completed_at` plus the soak of the host's wave, set once per activation and
//!   carried in the snapshot, so an agent that restarts mid-soak resumes with the same deadline.
//! - **A flapping probe does not fail a host early**: a pass clears its consecutive-failure count;
//!   only `failure_threshold` failures *in a row* of an enforce probe fail the host. Observe probes
//!   are recorded and never fail anything.
//! - **No vacuous convergence**: a policy without an enforce probe is refused unless it says
//!   `require_probes = false`; and convergence needs, for every enforce probe, a latest result that
//!   passed and a pass recorded at or after `soak_due_at` — evidence from the end of the soak, so a
//!   host that fell silent mid-soak waits (and is reported as blocked) instead of converging on
//!   old news.
//!
//! The rooms, one idea each; every public item is re-exported here, so `warden_core::rollout::X`
//! is the one path other crates use:
//!
//! - `policy`: the strict TOML policy (waves, soak, budget, probes), parsed and validated.
//! - `legality`: the host states, the input kinds, and the state × input table [`LEGAL`].
//! - `host`: one host's machine, [`HostRolloutSnapshot`]: `step` decides, `apply` records;
//!   agent reports are deduplicated by their sequence numbers.
//! - `fleet`: the rollout over its waves, [`Rollout`], and what it asks of the runtime now,
//!   [`next_actions`] (dispatch, converge, halt, quarantine, roll back, undo).
//! - `record`: what the journal and the projection keep around a rollout: [`RolloutStart`],
//!   [`ServiceRollout`], [`RolloutRecord`] (pause, settled, state name).

mod fleet;
mod host;
mod legality;
mod policy;
mod record;

pub use fleet::{
    next_actions, Action, BlockedReason, NewRolloutError, Rollout, RolloutEvent, RolloutInvariantError, RolloutStepError,
};
pub use host::{Decision, HostEvent, HostInput, HostInvariantError, HostRolloutSnapshot, ProbeStatus, StepError};
pub use legality::{legal, HostRolloutState, InputKind, LEGAL};
pub use policy::{
    InvalidPolicy, OnFailure, ProbeKind, ProbeMode, ProbeSpec, RolloutPolicy, WaveSize, WaveSizeError, WaveSpec,
    DEFAULT_ACTIVATION_TIMEOUT_MS, DEFAULT_FAILURE_THRESHOLD, DEFAULT_MAX_IN_FLIGHT, DEFAULT_PROBE_INTERVAL_MS,
    DEFAULT_PROBE_TIMEOUT_MS, DEFAULT_SOAK_MS, DEFAULT_STALL_AFTER_MS, MAX_WAVES,
};
pub use record::{RolloutRecord, RolloutStart, ServiceRollout};

#[cfg(test)]
mod tests;
