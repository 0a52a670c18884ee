//! The faults a world's schedule injects, and their undoing: what they are and how they are
//! drawn; the runner (`lease`) applies them to the simulated network and the world.

use crate::rng::Rng;

/// A fault. Host indexes are into `HOSTS`; `HOLDER` in a script means the lease holder at that
/// moment.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// The agent process dies (SIGKILL); its shims and cells live on.
    AgentCrash(usize),
    /// The whole host dies: agent, shims and cells.
    HostCrash(usize),
    /// `warden server` dies (kill -9, an upgrade); its machine stays up, so connections to its
    /// address are refused until it serves again.
    ControlPlaneCrash,
    /// The control plane's whole machine dies: connections go unanswered until it is back.
    ControlPlaneMachineCrash,
    /// The host's link to the control plane drops, both ways.
    Partition(usize),
    /// Only the control plane's answers to the host are lost.
    OneWay(usize),
    /// The host's link gets slow: one-way latency of this many ms (a round trip near the
    /// fence's length is the interesting range).
    Slow(usize, u64),
    /// Slow first, then the host's way *to* the control plane is cut while answers already on
    /// their way back still arrive, late: the case where a holder that counted its fence from an
    /// answer's arrival instead of its request would outlive its lease.
    SlowThenCut(usize, u64),
}

/// A fault's undoing (or, for `Cut`, its second half), due at a later time.
pub enum Heal {
    Bounce(&'static str),
    Repair(&'static str),
    Latency(&'static str),
    /// Not a heal: the second half of `SlowThenCut`.
    Cut(&'static str),
}

pub const HOLDER: usize = usize::MAX;

impl Fault {
    /// The fault with `HOLDER` replaced by the holder's index (host 0 if nobody holds the lease).
    pub fn resolve(self, holder: Option<usize>) -> Fault {
        let pick = |h: usize| if h == HOLDER { holder.unwrap_or(0) } else { h };
        match self {
            Fault::AgentCrash(h) => Fault::AgentCrash(pick(h)),
            Fault::HostCrash(h) => Fault::HostCrash(pick(h)),
            Fault::ControlPlaneCrash => Fault::ControlPlaneCrash,
            Fault::ControlPlaneMachineCrash => Fault::ControlPlaneMachineCrash,
            Fault::Partition(h) => Fault::Partition(pick(h)),
            Fault::OneWay(h) => Fault::OneWay(pick(h)),
            Fault::Slow(h, ms) => Fault::Slow(pick(h), ms),
            Fault::SlowThenCut(h, ms) => Fault::SlowThenCut(pick(h), ms),
        }
    }

    pub fn draw(rng: &mut Rng, host: usize) -> Fault {
        match rng.below(14) {
            0 | 1 => Fault::AgentCrash(host),
            2 | 3 => Fault::HostCrash(host),
            4 | 5 => Fault::ControlPlaneCrash,
            6 => Fault::ControlPlaneMachineCrash,
            7..=9 => Fault::Partition(host),
            10 => Fault::OneWay(host),
            11 => Fault::Slow(host, 100 + rng.below(600)),
            _ => Fault::SlowThenCut(host, 100 + rng.below(600)),
        }
    }

    /// How long a drawn fault lasts: up to 4 s, and a control plane may stay down far longer
    /// (an upgrade, a crash nobody noticed) while hosts fail around it.
    pub fn draw_duration(self, rng: &mut Rng) -> u64 {
        match self {
            Fault::ControlPlaneCrash | Fault::ControlPlaneMachineCrash if rng.below(2) == 0 => 4_000 + rng.below(10_000),
            _ => 200 + rng.below(4_000),
        }
    }
}
