//! Leases with fencing: the right to run a workload's primary, and the arithmetic that makes two
//! live primaries impossible under crashes, partitions and bounded clock drift.
//!
//! # The protocol
//!
//! The control plane keeps one [`Lease`] per workload in its store and changes it only by
//! compare-and-swap on `epoch`, which only ever grows. A host gets the lease with [`acquire`]
//! (expected epoch = the one it last saw), keeps it with [`renew`] (piggybacked on heartbeats), and
//! gives it back with [`release`] once its cell is gone (a `LeaseRevocation`). The host never
//! trusts the server's clock: it fences itself by its own monotonic clock, killing the cell at
//! [`HeldLease::deadline_ms`], which counts from the moment it *sent* the renewal the server
//! answered. The fence is held by the per-cell shim, so it fires even when the agent was SIGKILLed.
//!
//! # Why there is at most one primary
//!
//! Assumptions: (A1) every clock measures an interval of real length `d` as between `d·(1−ρ)` and
//! `d·(1+ρ)` (bounded drift *rate*; offsets are irrelevant, no two clocks are ever compared);
//! (A2) once a fence fires, the cell is gone within `kill_budget` of real time (SIGKILL of its
//! process group or namespace init, plus the reap); (A3) the store's compare-and-swap is
//! linearizable; (A4) a host starts a primary cell only after the store holds a lease naming it
//! with that epoch, and stops all its older-epoch cells first.
//!
//! Take a holder's last answered renewal, sent at real time `s` (local reading `S`) and received
//! by the server at real time `r ≥ s` (server reading `R`); the server then stores
//! `expires_at = R + ttl`. Nothing later extends it (a renewal after `expires_at` is refused).
//!
//! * The server grants the lease to anyone else only when its clock reads at least
//!   `expires_at + margin`, i.e. after `ttl + margin` server-time since `R`, which by (A1) is real
//!   time `≥ r + (ttl + margin)/(1+ρ)`. A release moves nothing earlier: it is only sent by the
//!   holder after its cell is gone.
//! * The holder fences at local reading `S + L`, with `L = holder_validity_ms()`; by (A1) that is
//!   real time `≤ s + L/(1−ρ)`, and by (A2) the cell is gone by `s + L/(1−ρ) + kill_budget`.
//! * `L` is chosen as `(1−ρ)·((ttl + margin)/(1+ρ) − kill_budget)`, so the cell is gone by
//!   `s + (ttl + margin)/(1+ρ) ≤ r + (ttl + margin)/(1+ρ)`: before any other grant. Epochs make the
//!   grants a total order (A3), and a new primary starts only after its grant (A4), so primaries'
//!   lifetimes never overlap. [`LeaseTiming::validate`] refuses timings where `L` is too short to
//!   be renewed in time (a liveness, not a safety, concern) or not positive.
//!
//! After the server restarts it cannot know how long it was down by its own clock, so it treats
//! every lease as renewed at start-up ([`after_restart`]): extending a lease is always safe, and
//! it is also the grace period hosts need to reconnect before anything is declared lost.
//!
//! # While the control plane is down
//!
//! A fence that fires whenever renewals stop turns every control-plane outage longer than `L`
//! (1.6 s by default) into a restart of every leased cell in the fleet: an upgrade of
//! `warden server` would fail over every warm standby. Silence is no evidence either way — the
//! holder may be partitioned from a control plane that is granting its lease elsewhere — but a
//! *refused connection* is: positive evidence that, at that instant, no control plane listened
//! at its address. Such an answer ([`HeldLease::no_control_plane`]) counts as a renewal sent at
//! the same moment, under two more assumptions:
//!
//! (A5) the control plane is one process at one address, serving from a listener it binds
//! before it takes its first lease decision and drops only after its last (`warden server`
//! binds, then starts counting leases as renewed ([`after_restart`]); on SIGTERM it stops
//! deciding before it stops listening), so a connection refused at real time `t` means no
//! control plane decides at `t`, and any that decides later started after `t`; (A6) a refusal
//! is sent by the control plane's own kernel, not forged on the way (no middlebox answering for
//! it). With several control-plane servers (etcd, a leader and standbys) a refusal from one is
//! evidence of nothing, and A5 does not hold: there a new leader counts every lease as renewed at
//! its election (as [`after_restart`] does), so a leader change shorter than `L` restarts nothing.
//!
//! Why that keeps one primary. Take the holder's fence at local reading `D` (real time at most
//! `s₀ + L/(1−ρ)` for its last answered renewal sent at `s₀`), and a refusal of a request sent at
//! local `S` (real `s`), received at local `Q < D` (real `q`): the refusal happened at some real
//! `t` with `s ≤ t ≤ q`.
//! * No grant elsewhere happened before `t`: one needs the server's clock past the last renewal's
//!   expiry plus margin, real time `≥ r₀ + (ttl + margin)/(1+ρ)`, which is after the fence fired
//!   and the cell was gone (the argument above) — and `t ≤ q` is before the fence fired, since
//!   `Q < D`. This is why a refusal received after the fence passed counts for nothing: the lease
//!   may already have moved.
//! * None happens later from a control plane that was running before `t` (A5: it no longer
//!   decides). One that starts after `t` counts the lease as renewed when it starts serving, at
//!   real `b > t ≥ s`, and grants elsewhere at real `≥ b + (ttl + margin)/(1+ρ)`.
//! * The holder's new fence, counted from the send `S` exactly as an answered renewal is, is gone
//!   by `s + (ttl + margin)/(1+ρ) < b + (ttl + margin)/(1+ρ)`. Primaries still never overlap.
//!
//! So by default a leased cell rides out a control plane that is restarting, upgrading or
//! crashed-and-not-yet-restarted for as long as that lasts, and the fleet's failover resumes
//! when it is back (every host gets a grace to reconnect; a host that died meanwhile is replaced
//! once it has been silent past its tolerance). What a workload trades is then explicit per
//! workload, in `[placement]`:
//! * `lost_after` — the lease's ttl, i.e. how long a *silent* holder is presumed alive. Short (the
//!   cluster's 1.5 s) fails over fast when a host dies or is cut off, but a partition from the
//!   control plane, or losing the control plane's machine (no kernel left to refuse), longer than
//!   that stops the cell. Long rides those out too, and a dead host is replaced that much later.
//! * `control_plane_outage = "stop"` — refuse the evidence: the cell stops when renewals stop,
//!   whatever the reason, and is placed again once the control plane is back. For deployments
//!   where A5 or A6 does not hold (the address is a load balancer or a proxy that refuses on
//!   behalf of a backend), or for a workload that must not run unsupervised.

use serde::{Deserialize, Serialize};

const PPM: u128 = 1_000_000;

/// The timing of leases; the same on the server and every host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTiming {
    /// How long a grant or renewal is valid, on the server's clock.
    pub ttl_ms: u64,
    /// Extra wait after expiry, on the server's clock, before granting the lease elsewhere.
    pub margin_ms: u64,
    /// The bound `ρ` on any clock's rate error, in parts per million (A1).
    pub drift_ppm: u32,
    /// How long a fenced cell may take to be gone (A2).
    pub kill_budget_ms: u64,
    /// How often holders renew (the heartbeat interval).
    pub renew_every_ms: u64,
}

impl Default for LeaseTiming {
    /// The defaults behind "failover in about 2 s": heartbeats every 300 ms, a host silent for
    /// 1.5 s is down, 300 ms of margin, 0.1 % drift (NTP-less crystals do ~0.01 %), 200 ms to kill.
    fn default() -> Self {
        LeaseTiming { ttl_ms: 1_500, margin_ms: 300, drift_ppm: 1_000, kill_budget_ms: 200, renew_every_ms: 300 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    #[error("drift bound {0} ppm is not below 1,000,000")]
    Drift(u32),
    #[error("a holder's lease would be valid for {validity_ms} ms, less than two renewals ({renew_every_ms} ms apart): raise ttl or margin, or lower kill_budget or drift")]
    TooShort { validity_ms: u64, renew_every_ms: u64 },
}

impl LeaseTiming {
    /// `L`: how long after *sending* an answered renewal a holder may keep its cell, on its own
    /// clock. See the module docs for why this can never outlast the server's grant elsewhere.
    pub fn holder_validity_ms(&self) -> u64 {
        let rho = u128::from(self.drift_ppm.min(999_999));
        // Server-side wait in real time, rounded down: (ttl + margin) / (1 + ρ).
        let server_real = u128::from(self.ttl_ms + self.margin_ms) * PPM / (PPM + rho);
        let Some(budget) = server_real.checked_sub(u128::from(self.kill_budget_ms)) else { return 0 };
        // Rounded down again: (1 − ρ) · budget.
        (budget * (PPM - rho) / PPM) as u64
    }

    pub fn validate(&self) -> Result<(), TimingError> {
        if self.drift_ppm >= 1_000_000 {
            return Err(TimingError::Drift(self.drift_ppm));
        }
        let validity_ms = self.holder_validity_ms();
        if validity_ms < 2 * self.renew_every_ms {
            return Err(TimingError::TooShort { validity_ms, renew_every_ms: self.renew_every_ms });
        }
        Ok(())
    }
}

/// The store's record of who may run a workload's primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub workload_id: String,
    /// Grows by one with every grant to a new holder; the CAS version.
    pub epoch: u64,
    /// `None` once released.
    pub holder: Option<String>,
    /// On the server's clock; meaningless once released.
    pub expires_at_ms: u64,
    /// The latest checkpoint, carried over by a release (`LeaseRevocation`).
    pub state_uri: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum LeaseRefused {
    /// The CAS lost: someone else changed the lease since the caller looked.
    #[error("lease epoch is {current}, not {expected}")]
    Stale { expected: u64, current: u64 },
    /// Held by another host, and not yet past expiry plus margin.
    #[error("held by {holder} until {grantable_at_ms} (server clock)")]
    Held { holder: String, grantable_at_ms: u64 },
    /// Renewal or release by a host that does not hold this epoch (any more).
    #[error("{host} does not hold epoch {epoch}")]
    NotHolder { host: String, epoch: u64 },
    /// Renewal after expiry: the holder must already have fenced itself.
    #[error("lease expired at {expires_at_ms} (server clock)")]
    Expired { expires_at_ms: u64 },
}

/// Grants the lease to `host` if the caller's view (`expected_epoch`, 0 for none) is current and
/// nobody else may still be running: no lease yet, released, or past expiry plus margin. A
/// holder re-acquiring its own live lease gets a new epoch too (it restarts its cell).
pub fn acquire(
    current: Option<&Lease>,
    workload_id: &str,
    host: &str,
    expected_epoch: u64,
    now_ms: u64,
    timing: &LeaseTiming,
) -> Result<Lease, LeaseRefused> {
    let epoch = current.map_or(0, |l| l.epoch);
    if epoch != expected_epoch {
        return Err(LeaseRefused::Stale { expected: expected_epoch, current: epoch });
    }
    if let Some(lease) = current {
        if let Some(holder) = &lease.holder {
            let grantable_at_ms = lease.expires_at_ms.saturating_add(timing.margin_ms);
            if holder != host && now_ms < grantable_at_ms {
                return Err(LeaseRefused::Held { holder: holder.clone(), grantable_at_ms });
            }
        }
    }
    Ok(Lease {
        workload_id: workload_id.to_string(),
        epoch: epoch + 1,
        holder: Some(host.to_string()),
        expires_at_ms: now_ms.saturating_add(timing.ttl_ms),
        state_uri: current.and_then(|l| l.state_uri.clone()),
    })
}

/// Extends the holder's lease by `ttl` from now, if it still holds `epoch` and it has not expired.
pub fn renew(current: &Lease, host: &str, epoch: u64, now_ms: u64, timing: &LeaseTiming) -> Result<Lease, LeaseRefused> {
    if current.epoch != epoch || current.holder.as_deref() != Some(host) {
        return Err(LeaseRefused::NotHolder { host: host.to_string(), epoch });
    }
    if now_ms >= current.expires_at_ms {
        return Err(LeaseRefused::Expired { expires_at_ms: current.expires_at_ms });
    }
    Ok(Lease { expires_at_ms: now_ms.saturating_add(timing.ttl_ms), ..current.clone() })
}

/// The holder gives the lease back after its cell is gone (a `LeaseRevocation`), with the latest
/// checkpoint if it has one: the next holder may be granted at once.
pub fn release(current: &Lease, host: &str, epoch: u64, state_uri: Option<String>) -> Result<Lease, LeaseRefused> {
    if current.epoch != epoch || current.holder.as_deref() != Some(host) {
        return Err(LeaseRefused::NotHolder { host: host.to_string(), epoch });
    }
    Ok(Lease { holder: None, state_uri: state_uri.or_else(|| current.state_uri.clone()), ..current.clone() })
}

/// At server start-up: every held lease counts as renewed now (safe, and the hosts' grace period).
pub fn after_restart(current: &Lease, now_ms: u64, timing: &LeaseTiming) -> Lease {
    match current.holder {
        Some(_) => Lease { expires_at_ms: current.expires_at_ms.max(now_ms.saturating_add(timing.ttl_ms)), ..current.clone() },
        None => current.clone(),
    }
}

/// A host's side of a lease it holds: the fence, on the host's own monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLease {
    pub epoch: u64,
    /// Past this local reading the cell must be gone; the shim kills it when it arrives.
    pub deadline_ms: u64,
}

impl HeldLease {
    /// The fence after a grant or renewal the server answered, for a request *sent* at local
    /// reading `sent_at_ms` (never the time the answer came: it may have been delayed).
    pub fn answered(epoch: u64, sent_at_ms: u64, timing: &LeaseTiming) -> HeldLease {
        HeldLease { epoch, deadline_ms: sent_at_ms.saturating_add(timing.holder_validity_ms()) }
    }

    /// A later answer extends the fence; an earlier request's late answer never shortens it.
    pub fn extend(&mut self, sent_at_ms: u64, timing: &LeaseTiming) {
        self.deadline_ms = self.deadline_ms.max(sent_at_ms.saturating_add(timing.holder_validity_ms()));
    }

    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms >= self.deadline_ms
    }

    /// A request sent at local reading `sent_at_ms` found no control plane (its connection was
    /// refused) at `received_at_ms`: if the fence had not passed by then, it counts as a renewal
    /// answered for that send (module docs, "While the control plane is down"). Whether it moved
    /// the fence.
    pub fn no_control_plane(&mut self, sent_at_ms: u64, received_at_ms: u64, timing: &LeaseTiming) -> bool {
        if self.expired(received_at_ms) || received_at_ms < sent_at_ms {
            return false;
        }
        let before = self.deadline_ms;
        self.extend(sent_at_ms, timing);
        self.deadline_ms > before
    }
}

/// What a leased cell does when it finds no control plane at all (`[placement]
/// control_plane_outage`); see the module docs, "While the control plane is down".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutagePolicy {
    /// Keep running while the control plane is known to be down (a refused connection counts as
    /// a renewal), however long that lasts.
    #[default]
    RideOut,
    /// Stop when renewals stop, as when cut off from a running control plane.
    Stop,
}

impl OutagePolicy {
    pub fn is_default(&self) -> bool {
        *self == OutagePolicy::RideOut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_timing_is_valid_and_the_holder_fences_before_any_other_grant() {
        let t = LeaseTiming::default();
        t.validate().unwrap();
        let l = t.holder_validity_ms();
        // (ttl + margin)/(1+ρ) − kill = 1798.2 − 200 → ·(1−ρ) = 1596.6
        assert_eq!(l, 1_596);
        // Worst case: holder's clock slow, server's fast, kill takes the whole budget.
        let rho = f64::from(t.drift_ppm) / 1e6;
        let holder_gone_real = l as f64 / (1.0 - rho) + t.kill_budget_ms as f64;
        let server_grants_real = (t.ttl_ms + t.margin_ms) as f64 / (1.0 + rho);
        assert!(holder_gone_real <= server_grants_real, "{holder_gone_real} > {server_grants_real}");
    }

    #[test]
    fn timing_too_tight_to_renew_is_refused() {
        let t = LeaseTiming { ttl_ms: 500, margin_ms: 0, kill_budget_ms: 300, ..LeaseTiming::default() };
        assert!(matches!(t.validate(), Err(TimingError::TooShort { .. })));
        let t = LeaseTiming { kill_budget_ms: 10_000, ..LeaseTiming::default() };
        assert_eq!(t.holder_validity_ms(), 0);
    }

    #[test]
    fn grant_cas_expiry_and_release() {
        let t = LeaseTiming::default();
        let a = acquire(None, "w", "h1", 0, 1_000, &t).unwrap();
        assert_eq!((a.epoch, a.holder.as_deref(), a.expires_at_ms), (1, Some("h1"), 2_500));
        // Another host: refused while held, and until expiry + margin.
        assert!(matches!(acquire(Some(&a), "w", "h2", 1, 2_799, &t), Err(LeaseRefused::Held { .. })));
        assert!(matches!(acquire(Some(&a), "w", "h2", 0, 9_999, &t), Err(LeaseRefused::Stale { .. })));
        let b = acquire(Some(&a), "w", "h2", 1, 2_800, &t).unwrap();
        assert_eq!(b.epoch, 2);
        // The old holder can neither renew nor release any more.
        assert!(renew(&b, "h1", 1, 2_800, &t).is_err());
        assert!(release(&b, "h1", 1, None).is_err());
        // Renewal extends; after expiry it is refused.
        assert_eq!(renew(&b, "h2", 2, 3_000, &t).unwrap().expires_at_ms, 4_500);
        assert!(matches!(renew(&b, "h2", 2, 4_300, &t), Err(LeaseRefused::Expired { .. })));
        // A release hands over at once, with the checkpoint.
        let released = release(&b, "h2", 2, Some("blob:1".into())).unwrap();
        let c = acquire(Some(&released), "w", "h3", 2, 3_001, &t).unwrap();
        assert_eq!((c.epoch, c.state_uri.as_deref()), (3, Some("blob:1")));
    }

    #[test]
    fn restart_extends_never_shortens() {
        let t = LeaseTiming::default();
        let a = acquire(None, "w", "h1", 0, 1_000, &t).unwrap();
        assert_eq!(after_restart(&a, 500, &t).expires_at_ms, 2_500);
        assert_eq!(after_restart(&a, 5_000, &t).expires_at_ms, 6_500);
    }

    #[test]
    fn a_refusal_before_the_fence_renews_and_one_after_it_never_does() {
        let t = LeaseTiming::default();
        let l = t.holder_validity_ms();
        let mut held = HeldLease::answered(1, 10_000, &t);
        // The control plane went away; a request sent at 11,000 is refused at 11,002.
        assert!(held.no_control_plane(11_000, 11_002, &t));
        assert_eq!(held.deadline_ms, 11_000 + l);
        // Refusals keep it alive for as long as they keep coming before the fence.
        assert!(held.no_control_plane(11_000 + l - 10, 11_000 + l - 1, &t));
        let deadline = held.deadline_ms;
        // Received after the fence passed: the lease may have moved on; nothing changes.
        let mut lapsed = HeldLease::answered(1, 10_000, &t);
        assert!(!lapsed.no_control_plane(10_000 + l - 5, 10_000 + l, &t));
        assert_eq!(lapsed.deadline_ms, 10_000 + l);
        // An old refusal never shortens it, and a clock read out of order counts for nothing.
        assert!(!held.no_control_plane(12_000, 12_001, &t));
        assert!(!held.no_control_plane(13_000, 12_999, &t));
        assert_eq!(held.deadline_ms, deadline);
    }

    #[test]
    fn a_late_answer_never_shortens_the_fence() {
        let t = LeaseTiming::default();
        let mut held = HeldLease::answered(1, 10_000, &t);
        held.extend(9_000, &t);
        assert_eq!(held.deadline_ms, 10_000 + t.holder_validity_ms());
        held.extend(10_300, &t);
        assert_eq!(held.deadline_ms, 10_300 + t.holder_validity_ms());
    }
}
