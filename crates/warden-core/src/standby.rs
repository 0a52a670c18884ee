//! Warm standbys: the seed's `StandbySlot`, and the pure state machine of one host's role for one
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

use serde::{Deserialize, Serialize};

use crate::lease::{HeldLease, LeaseTiming};

/// A standby reserved on another host for a warm-standby workload, with every field of the seed
/// (`primary_npub` → `primary`, `owner_npub` → `owner`, `peer_standby_npubs` → `peer_standbys`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbySlot {
    /// The workload's consumer id (what the submitter named it); slots are keyed by it.
    pub workload_id: String,
    /// The host running the primary when the slot was armed.
    pub primary: String,
    pub standby_index: usize,
    pub standby_count: usize,
    pub spec_id: String,
    pub expires_at: Option<u64>,
    pub owner: String,
    /// The silence baseline before any heartbeat of the primary was seen.
    pub created_at: u64,
    /// The hosts holding the other slots, by index.
    pub peer_standbys: Vec<String>,
    /// The host this slot is on.
    pub host: String,
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
