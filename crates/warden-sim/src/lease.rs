//! The lease and warm-standby protocol under fire, against the code that ships: one control
//! plane and four hosts exchange the agent protocol's real messages over turmoil's simulated
//! network. The control plane is the core's cluster module (`warden_core::cluster`) and
//! workload machine, batched, journaled and sequenced as the runtime's engine does
//! (`control_plane`); each agent follows the real agent's heartbeat and command loops with the
//! core's standby role (`agent`). A seeded schedule crashes agents, whole hosts and the control
//! plane, partitions links, delays messages and skews every clock's rate to the configured
//! drift bound.
//!
//! The world starts as a fresh control plane would: it enrolls the four hosts and submits one
//! `warm-standby` service (`standbys` and `promotion_delay` drawn from the seed), which it
//! places on a host under lease epoch 1 and arms standbys for on the others.
//!
//! Ground truth is kept outside the protocol: each host's primary cell is an interval of real
//! (simulated) time from its start to the moment it is gone, and a host's shim — which survives
//! its agent — fences the cell on the host's own drifting clock, then takes up to `kill_budget`
//! to make it gone. After every simulation step the checker asserts that at most one primary cell
//! is alive (invariant 3), and that a restarted control plane's replay of its journal rebuilt the
//! projection it had committed. After the faults stop, every host is healed and the checker
//! asserts a primary runs again, holding the newest epoch in the journal (liveness).

use std::collections::BTreeMap;
use std::time::Duration;

use std::cell::RefCell;
use std::rc::Rc;

use crate::agent::agent;
use crate::control_plane::server;
use crate::faults::Heal;
use crate::wire::SERVER;
use crate::world::{ControlPlaneNode, Shared, World};

pub use crate::faults::{Fault, HOLDER};
pub use crate::rng::Rng;
pub use crate::world::{Outcome, SimConfig, HOSTS};

/// What went wrong in a world, with the seed that reproduces it.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub at_ms: u64,
    pub what: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {} at {} ms: {}", self.seed, self.at_ms, self.what)?;
        for line in self.trace.iter().rev().take(60).rev() {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Runs one seeded world to its end; `Err` names the first violation.
pub fn run(config: SimConfig) -> Result<Outcome, Failure> {
    config.timing.validate().expect("the simulation only draws valid timings");
    let mut rng = Rng::new(config.seed);
    let mut clocks = BTreeMap::new();
    let drift = i64::from(config.timing.drift_ppm);
    for node in std::iter::once(SERVER).chain(HOSTS) {
        // The extremes of the bound are the interesting places.
        let rate = match rng.below(3) {
            0 => -drift,
            1 => drift,
            _ => rng.below(2 * drift as u64 + 1) as i64 - drift,
        };
        clocks.insert(node.to_string(), (rng.below(1_000_000), rate));
    }
    let world: Shared = Rc::new(RefCell::new(World::new(config, clocks)));

    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_millis(config.end_ms + 1_000))
        .tick_duration(Duration::from_millis(2))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(config.max_latency_ms))
        .rng_seed(config.seed)
        .build();
    {
        let world = world.clone();
        sim.host(SERVER, move || server(world.clone()));
    }
    for host in HOSTS {
        let world = world.clone();
        sim.host(host, move || agent(host, world.clone()));
    }

    let fail = |world: &World, what: String| Failure { seed: config.seed, at_ms: world.now_ms, what, trace: world.trace.clone() };
    let mut next_fault_ms = 1_000 + rng.below(1_500);
    let mut heal: Vec<(u64, Heal)> = Vec::new();
    loop {
        let now_ms = sim.elapsed().as_millis() as u64;
        world.borrow_mut().now_ms = now_ms;
        world.borrow_mut().run_shims();
        {
            let w = world.borrow();
            if let Some(violation) = &w.violation {
                return Err(fail(&w, violation.clone()));
            }
            let alive = w.alive();
            if alive.len() > 1 {
                return Err(fail(&w, format!("two primaries alive at once: {alive:?}")));
            }
        }
        if now_ms >= config.end_ms {
            break;
        }

        // Faults, and their healing.
        let due: Vec<Heal> = {
            let (due, later): (Vec<_>, Vec<_>) = heal.drain(..).partition(|(at, _)| *at <= now_ms);
            heal = later;
            due.into_iter().map(|(_, action)| action).collect()
        };
        for action in due {
            if let Some(follow_up) = apply_heal(&action, &mut sim, &world) {
                heal.push((now_ms + 500 + rng.below(3_000), follow_up));
            }
        }
        let holder = world.borrow().holder();
        let scripted = config.script.and_then(|script| script.iter().find(|(at, _, _)| *at == now_ms)).copied();
        let drawn = config.script.is_none() && now_ms >= next_fault_ms && now_ms < config.faults_until_ms;
        if scripted.is_some() || drawn {
            let (fault, duration) = match scripted {
                Some((_, fault, duration)) => (fault.resolve(holder), duration),
                None => {
                    // Half the faults hit the lease holder: failover is what is under test.
                    let target = match holder {
                        Some(h) if rng.below(2) == 0 => h,
                        _ => rng.below(HOSTS.len() as u64) as usize,
                    };
                    let fault = Fault::draw(&mut rng, target);
                    (fault, fault.draw_duration(&mut rng))
                }
            };
            world.borrow_mut().log(format!("FAULT {fault:?} for {duration} ms"));
            world.borrow_mut().outcome.faults += 1;
            heal.push((now_ms + duration, apply_fault(fault, &mut sim, &world)));
            next_fault_ms = now_ms + 800 + rng.below(2_500);
        }
        if now_ms >= config.faults_until_ms && !heal.is_empty() {
            while let Some((_, action)) = heal.pop() {
                if let Some(follow_up) = apply_heal(&action, &mut sim, &world) {
                    heal.push((0, follow_up));
                }
            }
            world.borrow_mut().log("healed everything".into());
        }
        if let Err(e) = sim.step() {
            return Err(fail(&world.borrow(), format!("simulation error: {e}")));
        }
    }

    let w = world.borrow();
    if std::env::var_os("WARDEN_SIM_TRACE").is_some() {
        eprintln!("{}", w.trace.join("\n"));
    }
    let alive = w.alive();
    let newest = w.newest_epoch();
    match alive.as_slice() {
        [(_, epoch)] if *epoch == newest => Ok(w.outcome),
        _ => Err(fail(
            &w,
            format!(
                "no live primary {} s after healing: alive {alive:?}, the journal's lease epoch {newest}",
                (config.end_ms - config.faults_until_ms) / 1000
            ),
        )),
    }
}

/// Does `fault` to the network and the world; its undoing.
fn apply_fault(fault: Fault, sim: &mut turmoil::Sim<'_>, world: &Shared) -> Heal {
    match fault {
        Fault::AgentCrash(h) => {
            sim.crash(HOSTS[h]);
            Heal::Bounce(HOSTS[h])
        }
        Fault::HostCrash(h) => {
            sim.crash(HOSTS[h]);
            let mut w = world.borrow_mut();
            let now = w.now_ms;
            for cell in w.cells.entry(HOSTS[h].to_string()).or_default() {
                if cell.gone_at_ms.is_none() {
                    cell.gone_at_ms = Some(now);
                }
            }
            Heal::Bounce(HOSTS[h])
        }
        Fault::ControlPlaneCrash | Fault::ControlPlaneMachineCrash => {
            sim.crash(SERVER);
            world.borrow_mut().control_plane = if matches!(fault, Fault::ControlPlaneCrash) {
                ControlPlaneNode::ProcessDown
            } else {
                ControlPlaneNode::MachineDown
            };
            Heal::Bounce(SERVER)
        }
        Fault::Partition(h) => {
            sim.partition(HOSTS[h], SERVER);
            let mut w = world.borrow_mut();
            w.cut_to_server.insert(HOSTS[h].to_string());
            w.cut_from_server.insert(HOSTS[h].to_string());
            Heal::Repair(HOSTS[h])
        }
        Fault::OneWay(h) => {
            sim.partition_oneway(SERVER, HOSTS[h]);
            world.borrow_mut().cut_from_server.insert(HOSTS[h].to_string());
            Heal::Repair(HOSTS[h])
        }
        Fault::Slow(h, ms) => {
            sim.set_link_latency(HOSTS[h], SERVER, Duration::from_millis(ms));
            world.borrow_mut().slow.insert(HOSTS[h].to_string(), ms);
            Heal::Latency(HOSTS[h])
        }
        Fault::SlowThenCut(h, ms) => {
            sim.set_link_latency(HOSTS[h], SERVER, Duration::from_millis(ms));
            world.borrow_mut().slow.insert(HOSTS[h].to_string(), ms);
            Heal::Cut(HOSTS[h])
        }
    }
}

/// Applies a heal (or a fault's second half); a follow-up to schedule, if any.
fn apply_heal(heal: &Heal, sim: &mut turmoil::Sim<'_>, world: &Shared) -> Option<Heal> {
    match *heal {
        Heal::Bounce(node) => {
            if !sim.is_host_running(node) {
                sim.bounce(node);
                world.borrow_mut().log(format!("{node} restarts"));
            }
            None
        }
        Heal::Repair(host) => {
            sim.repair(host, SERVER);
            sim.set_link_latency(host, SERVER, Duration::from_millis(1));
            let mut w = world.borrow_mut();
            w.cut_to_server.remove(host);
            w.cut_from_server.remove(host);
            w.slow.remove(host);
            None
        }
        Heal::Latency(host) => {
            sim.set_link_latency(host, SERVER, Duration::from_millis(1));
            world.borrow_mut().slow.remove(host);
            None
        }
        Heal::Cut(host) => {
            sim.partition_oneway(host, SERVER);
            world.borrow_mut().cut_to_server.insert(host.to_string());
            world.borrow_mut().log(format!("{host} cut off after its slow spell"));
            Some(Heal::Repair(host))
        }
    }
}
