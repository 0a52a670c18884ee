//! The lease and warm-standby protocol under fire: one control plane and four hosts exchange the
//! real protocol messages over turmoil's simulated network, every decision made by the pure core
//! (`warden_core::lease`, `warden_core::standby`), while a seeded schedule crashes agents, whole
//! hosts and the control plane, partitions links, delays messages and skews every clock's rate to
//! the configured drift bound.
//!
//! Ground truth is kept outside the protocol: each host's primary cell is an interval of real
//! (simulated) time from its start to the moment it is gone, and a host's shim — which survives
//! its agent — fences the cell on the host's own drifting clock, then takes up to `kill_budget`
//! to make it gone. After every simulation step the checker asserts that at most one primary cell
//! is alive (invariant 3). After the faults stop, every host is healed and the checker asserts a
//! primary runs again, holding the newest epoch (liveness).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::timeout;
use turmoil::net::UdpSocket;
use warden_core::lease::{acquire, after_restart, renew, HeldLease, Lease, LeaseRefused, LeaseTiming};
use warden_core::standby::{Role, RoleEffect, RoleInput};

pub const HOSTS: [&str; 4] = ["h0", "h1", "h2", "h3"];
const SERVER: &str = "server";
const PORT: u16 = 7470;
const WORKLOAD: &str = "web";

/// One seeded world's settings.
#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub timing: LeaseTiming,
    pub promotion_delay_ms: u64,
    /// Faults are injected until this real time, then everything is healed.
    pub faults_until_ms: u64,
    /// The run ends here; a primary must be running by then.
    pub end_ms: u64,
    pub max_latency_ms: u64,
    /// A deliberate bug for the suite's own test: shims fence this much later than the lease
    /// allows. Always 0 except to prove the checker catches an unsafe fence.
    pub late_fence_ms: u64,
    /// Faults at fixed times instead of drawn ones: (at ms, fault, for ms). A `Target::Holder`
    /// is resolved to whoever holds the lease at that moment.
    pub script: Option<&'static [(u64, Fault, u64)]>,
}

impl SimConfig {
    /// A world drawn from `seed`: the drift bound and kill budget vary too, so the arithmetic is
    /// exercised away from the defaults (each timing still passes `validate`).
    pub fn from_seed(seed: u64) -> SimConfig {
        let mut rng = Rng::new(seed ^ 0x5eed);
        let drift_ppm = [100, 1_000, 20_000, 50_000][rng.below(4) as usize];
        let timing = LeaseTiming { drift_ppm, kill_budget_ms: 50 + rng.below(200), ..LeaseTiming::default() };
        SimConfig {
            seed,
            timing,
            promotion_delay_ms: 100 + rng.below(400),
            faults_until_ms: 8_000,
            end_ms: 14_000,
            max_latency_ms: 1 + rng.below(60),
            late_fence_ms: 0,
            script: None,
        }
    }
}

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
        for line in self.trace.iter().rev().take(40).rev() {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// What a world did, for the suite's totals.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    pub grants: u64,
    pub fenced: u64,
    pub faults: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Msg {
    Heartbeat { host: String, seq: u64, renew: Option<u64> },
    HeartbeatAck { seq: u64, renewed: Option<bool>, epoch: u64, grantable: bool, standby_index: Option<usize> },
    Acquire { host: String, seq: u64, expected_epoch: u64 },
    AcquireAck { seq: u64, granted: Result<u64, u64> },
}

/// A primary cell as the world (not the protocol) sees it.
#[derive(Clone, Debug)]
struct Cell {
    epoch: u64,
    /// The shim's fence, on the host's clock.
    deadline_ms: u64,
    started_at_ms: u64,
    /// Set once killed: the real time it is gone.
    gone_at_ms: Option<u64>,
}

/// Everything outside the protocol: clocks, the store, the shims and their cells, the checker.
struct World {
    config: SimConfig,
    rng: Rng,
    /// Per node: (offset ms, rate in ppm off real: within ±drift).
    clocks: BTreeMap<String, (u64, i64)>,
    /// The control plane's store: survives its crashes.
    lease: Option<Lease>,
    /// Cells under shims, per host: survive agent crashes, not host crashes.
    cells: BTreeMap<String, Vec<Cell>>,
    trace: Vec<String>,
    outcome: Outcome,
    now_ms: u64,
}

impl World {
    fn local_ms(&self, node: &str) -> u64 {
        let (offset, rate_ppm) = self.clocks[node];
        let real = self.now_ms as i128;
        (offset as i128 + real + real * rate_ppm as i128 / 1_000_000) as u64
    }

    fn log(&mut self, line: String) {
        self.trace.push(format!("{:>6} {line}", self.now_ms));
    }

    fn start_cell(&mut self, host: &str, held: HeldLease) {
        let now = self.now_ms;
        // (A4) a host stops its older cells before a newer epoch starts.
        let kill = self.kill_latency();
        for cell in self.cells.entry(host.to_string()).or_default() {
            if cell.gone_at_ms.is_none() {
                cell.gone_at_ms = Some(now + kill);
            }
        }
        self.cells.get_mut(host).unwrap().push(Cell {
            epoch: held.epoch,
            deadline_ms: held.deadline_ms,
            started_at_ms: now,
            gone_at_ms: None,
        });
        self.log(format!("{host} starts primary epoch {} (fence at local {})", held.epoch, held.deadline_ms));
    }

    fn kill_latency(&mut self) -> u64 {
        self.rng.below(self.config.timing.kill_budget_ms + 1)
    }

    fn kill_cell(&mut self, host: &str, epoch: u64, why: &str) {
        let now = self.now_ms;
        let latency = self.kill_latency();
        let mut killed = false;
        for cell in self.cells.entry(host.to_string()).or_default() {
            if cell.epoch == epoch && cell.gone_at_ms.is_none() {
                cell.gone_at_ms = Some(now + latency);
                killed = true;
            }
        }
        if killed {
            self.outcome.fenced += 1;
            self.log(format!("{host} kills epoch {epoch}: {why} (gone in {latency} ms)"));
        }
    }

    /// The shims: each fences its cell on its host's clock, whatever the agent is doing.
    fn run_shims(&mut self) {
        let hosts: Vec<String> = self.cells.keys().cloned().collect();
        for host in hosts {
            let local = self.local_ms(&host);
            let late = self.config.late_fence_ms;
            let due: Vec<u64> = self.cells[&host]
                .iter()
                .filter(|c| c.gone_at_ms.is_none() && local >= c.deadline_ms + late)
                .map(|c| c.epoch)
                .collect();
            for epoch in due {
                self.kill_cell(&host, epoch, "shim fence: lease not renewed");
            }
        }
    }

    /// Invariant 3 at this instant.
    fn alive(&self) -> Vec<(String, u64)> {
        let now = self.now_ms;
        let mut alive = Vec::new();
        for (host, cells) in &self.cells {
            for cell in cells {
                if cell.started_at_ms <= now && cell.gone_at_ms.is_none_or(|gone| gone > now) {
                    alive.push((host.clone(), cell.epoch));
                }
            }
        }
        alive
    }
}

type Shared = Rc<RefCell<World>>;

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
    let world: Shared = Rc::new(RefCell::new(World {
        config,
        rng: Rng::new(config.seed ^ 0xfeed),
        clocks,
        lease: None,
        cells: BTreeMap::new(),
        trace: Vec::new(),
        outcome: Outcome::default(),
        now_ms: 0,
    }));

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
            if let Some(follow_up) = action.apply(&mut sim, &world) {
                heal.push((now_ms + 500 + rng.below(3_000), follow_up));
            }
        }
        let holder =
            world.borrow().lease.as_ref().and_then(|l| l.holder.clone()).and_then(|h| HOSTS.iter().position(|x| *x == h));
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
                    (Fault::draw(&mut rng, target), 200 + rng.below(4_000))
                }
            };
            world.borrow_mut().log(format!("FAULT {fault:?} for {duration} ms"));
            world.borrow_mut().outcome.faults += 1;
            heal.push((now_ms + duration, fault.apply(&mut sim, &world)));
            next_fault_ms = now_ms + 800 + rng.below(2_500);
        }
        if now_ms >= config.faults_until_ms && !heal.is_empty() {
            while let Some((_, action)) = heal.pop() {
                if let Some(follow_up) = action.apply(&mut sim, &world) {
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
    let newest = w.lease.as_ref().map_or(0, |l| l.epoch);
    match alive.as_slice() {
        [(_, epoch)] if *epoch == newest => Ok(w.outcome),
        _ => Err(fail(
            &w,
            format!(
                "no live primary {} s after healing: alive {alive:?}, lease epoch {newest}",
                (config.end_ms - config.faults_until_ms) / 1000
            ),
        )),
    }
}

/// What the schedule does to the world. Host indexes are into `HOSTS`; `HOLDER` in a script
/// means the lease holder at that moment.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// The agent process dies (SIGKILL); its shims and cells live on.
    AgentCrash(usize),
    /// The whole host dies: agent, shims and cells.
    HostCrash(usize),
    ControlPlaneCrash,
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
    fn resolve(self, holder: Option<usize>) -> Fault {
        let pick = |h: usize| if h == HOLDER { holder.unwrap_or(0) } else { h };
        match self {
            Fault::AgentCrash(h) => Fault::AgentCrash(pick(h)),
            Fault::HostCrash(h) => Fault::HostCrash(pick(h)),
            Fault::ControlPlaneCrash => Fault::ControlPlaneCrash,
            Fault::Partition(h) => Fault::Partition(pick(h)),
            Fault::OneWay(h) => Fault::OneWay(pick(h)),
            Fault::Slow(h, ms) => Fault::Slow(pick(h), ms),
            Fault::SlowThenCut(h, ms) => Fault::SlowThenCut(pick(h), ms),
        }
    }

    fn draw(rng: &mut Rng, host: usize) -> Fault {
        match rng.below(12) {
            0 | 1 => Fault::AgentCrash(host),
            2 | 3 => Fault::HostCrash(host),
            4 => Fault::ControlPlaneCrash,
            5..=7 => Fault::Partition(host),
            8 => Fault::OneWay(host),
            9 => Fault::Slow(host, 100 + rng.below(600)),
            _ => Fault::SlowThenCut(host, 100 + rng.below(600)),
        }
    }

    fn apply(self, sim: &mut turmoil::Sim<'_>, world: &Shared) -> Heal {
        match self {
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
            Fault::ControlPlaneCrash => {
                sim.crash(SERVER);
                Heal::Bounce(SERVER)
            }
            Fault::Partition(h) => {
                sim.partition(HOSTS[h], SERVER);
                Heal::Repair(HOSTS[h])
            }
            Fault::OneWay(h) => {
                sim.partition_oneway(SERVER, HOSTS[h]);
                Heal::Repair(HOSTS[h])
            }
            Fault::Slow(h, ms) => {
                sim.set_link_latency(HOSTS[h], SERVER, Duration::from_millis(ms));
                Heal::Latency(HOSTS[h])
            }
            Fault::SlowThenCut(h, ms) => {
                sim.set_link_latency(HOSTS[h], SERVER, Duration::from_millis(ms));
                Heal::Cut(HOSTS[h])
            }
        }
    }
}

impl Heal {
    /// Applies the action; a follow-up to schedule, if any.
    fn apply(&self, sim: &mut turmoil::Sim<'_>, world: &Shared) -> Option<Heal> {
        match *self {
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
                None
            }
            Heal::Latency(host) => {
                sim.set_link_latency(host, SERVER, Duration::from_millis(1));
                None
            }
            Heal::Cut(host) => {
                sim.partition_oneway(host, SERVER);
                world.borrow_mut().log(format!("{host} cut off after its slow spell"));
                Some(Heal::Repair(host))
            }
        }
    }
}

fn server_addr() -> SocketAddr {
    SocketAddr::new(turmoil::lookup(SERVER), PORT)
}

fn any_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT)
}

async fn send(socket: &UdpSocket, to: SocketAddr, msg: &Msg) {
    let _ = socket.send_to(&serde_json::to_vec(msg).expect("messages serialize"), to).await;
}

/// The control plane: the lease table in its store, decided by `warden_core::lease`.
async fn server(world: Shared) -> turmoil::Result {
    let socket = UdpSocket::bind(any_addr()).await?;
    {
        let mut w = world.borrow_mut();
        let now = w.local_ms(SERVER);
        let timing = w.config.timing;
        if let Some(lease) = w.lease.take() {
            w.lease = Some(after_restart(&lease, now, &timing));
        }
        w.log("control plane up; every lease counts as renewed now".into());
    }
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = socket.recv_from(&mut buf).await?;
        let Ok(msg) = serde_json::from_slice::<Msg>(&buf[..n]) else { continue };
        let reply = {
            let mut w = world.borrow_mut();
            let now = w.local_ms(SERVER);
            let timing = w.config.timing;
            match msg {
                Msg::Heartbeat { host, seq, renew: wanted } => {
                    let renewed = wanted.map(|epoch| match w.lease.as_ref().map(|l| renew(l, &host, epoch, now, &timing)) {
                        Some(Ok(lease)) => {
                            w.lease = Some(lease);
                            true
                        }
                        _ => false,
                    });
                    let (epoch, grantable, holder) = match &w.lease {
                        None => (0, true, None),
                        Some(l) => (l.epoch, l.holder.is_none() || now >= l.expires_at_ms + timing.margin_ms, l.holder.clone()),
                    };
                    // Slots: every host but the holder, in order, is a standby.
                    let standby_index = (holder.as_deref() != Some(host.as_str()))
                        .then(|| HOSTS.iter().filter(|h| Some(**h) != holder.as_deref()).position(|h| *h == host))
                        .flatten();
                    Msg::HeartbeatAck { seq, renewed, epoch, grantable, standby_index }
                }
                Msg::Acquire { host, seq, expected_epoch } => {
                    let granted = match acquire(w.lease.as_ref(), WORKLOAD, &host, expected_epoch, now, &timing) {
                        Ok(lease) => {
                            let epoch = lease.epoch;
                            w.outcome.grants += 1;
                            w.log(format!("grant epoch {epoch} to {host} (expires at server {})", lease.expires_at_ms));
                            w.lease = Some(lease);
                            Ok(epoch)
                        }
                        Err(LeaseRefused::Stale { current, .. }) => Err(current),
                        Err(_) => Err(w.lease.as_ref().map_or(0, |l| l.epoch)),
                    };
                    Msg::AcquireAck { seq, granted }
                }
                Msg::HeartbeatAck { .. } | Msg::AcquireAck { .. } => continue,
            }
        };
        send(&socket, from, &reply).await;
    }
}

/// A host's agent: heartbeats, renewals, and its role for the workload, decided by
/// `warden_core::standby`. Its memory is lost when it crashes; the shim's cell is not.
async fn agent(host: &'static str, world: Shared) -> turmoil::Result {
    let socket = UdpSocket::bind(any_addr()).await?;
    let (timing, delay) = {
        let w = world.borrow();
        (w.config.timing, w.config.promotion_delay_ms)
    };
    // Re-adoption: a live cell under our shim means we are (still) the primary of its epoch.
    let mut role: Option<Role> = {
        let w = world.borrow();
        w.cells
            .get(host)
            .and_then(|cells| cells.iter().rev().find(|c| c.gone_at_ms.is_none()))
            .map(|cell| Role::Primary { held: HeldLease { epoch: cell.epoch, deadline_ms: cell.deadline_ms } })
    };
    let mut seq = 0u64;
    // seq → (local send time, what was asked)
    let mut in_flight: BTreeMap<u64, u64> = BTreeMap::new();
    let mut next_heartbeat = 0u64;
    let mut buf = vec![0u8; 4096];
    loop {
        let now = world.borrow().local_ms(host);
        let mut effects = Vec::new();
        if let Some(r) = role.as_mut() {
            effects.extend(r.step(RoleInput::Tick, now, delay, &timing));
        }
        if now >= next_heartbeat {
            seq += 1;
            in_flight.insert(seq, now);
            let renew = match &role {
                Some(Role::Primary { held }) => Some(held.epoch),
                _ => None,
            };
            send(&socket, server_addr(), &Msg::Heartbeat { host: host.into(), seq, renew }).await;
            next_heartbeat = now + timing.renew_every_ms;
        }
        carry_out(host, &world, &socket, &mut seq, &mut in_flight, effects).await;

        let Ok(received) = timeout(Duration::from_millis(5), socket.recv_from(&mut buf)).await else { continue };
        let (n, _) = received?;
        let Ok(msg) = serde_json::from_slice::<Msg>(&buf[..n]) else { continue };
        let now = world.borrow().local_ms(host);
        let mut effects = Vec::new();
        match msg {
            Msg::HeartbeatAck { seq: answered, renewed, epoch, grantable, standby_index } => {
                let Some(sent_at_ms) = in_flight.remove(&answered) else { continue };
                if let (Some(r), Some(ok)) = (role.as_mut(), renewed) {
                    if let Role::Primary { held } = r {
                        let epoch = held.epoch;
                        let input = if ok { RoleInput::Renewed { epoch, sent_at_ms } } else { RoleInput::RenewRefused { epoch } };
                        effects.extend(r.step(input, now, delay, &timing));
                    }
                }
                // Re-armed by the control plane after a fence, a restart, or a new index.
                match (&mut role, standby_index) {
                    (None | Some(Role::Fenced { .. }), Some(index)) => role = Some(Role::standby(index)),
                    (Some(Role::Standby { index, .. }), Some(new)) if *index != new => *index = new,
                    _ => {}
                }
                if let Some(r) = role.as_mut() {
                    effects.extend(r.step(RoleInput::Observed { epoch, grantable }, now, delay, &timing));
                }
            }
            Msg::AcquireAck { seq: answered, granted } => {
                let Some(sent_at_ms) = in_flight.remove(&answered) else { continue };
                if let Some(r) = role.as_mut() {
                    let input = match granted {
                        Ok(epoch) => RoleInput::Acquired { epoch, sent_at_ms },
                        Err(current_epoch) => RoleInput::AcquireRefused { current_epoch },
                    };
                    effects.extend(r.step(input, now, delay, &timing));
                }
            }
            Msg::Heartbeat { .. } | Msg::Acquire { .. } => {}
        }
        carry_out(host, &world, &socket, &mut seq, &mut in_flight, effects).await;
        in_flight.retain(|_, sent| now.saturating_sub(*sent) < 10_000);
    }
}

async fn carry_out(
    host: &str,
    world: &Shared,
    socket: &UdpSocket,
    seq: &mut u64,
    in_flight: &mut BTreeMap<u64, u64>,
    effects: Vec<RoleEffect>,
) {
    for effect in effects {
        match effect {
            RoleEffect::SendAcquire { expected_epoch } => {
                *seq += 1;
                // The role recorded its own send time as `now`; the same reading goes here.
                let now = world.borrow().local_ms(host);
                in_flight.insert(*seq, now);
                send(socket, server_addr(), &Msg::Acquire { host: host.into(), seq: *seq, expected_epoch }).await;
            }
            RoleEffect::StartPrimary { held } => world.borrow_mut().start_cell(host, held),
            RoleEffect::ExtendFence { held } => {
                let mut w = world.borrow_mut();
                for cell in w.cells.entry(host.to_string()).or_default() {
                    if cell.epoch == held.epoch && cell.gone_at_ms.is_none() {
                        cell.deadline_ms = cell.deadline_ms.max(held.deadline_ms);
                    }
                }
            }
            RoleEffect::KillPrimary { epoch, reason } => world.borrow_mut().kill_cell(host, epoch, &reason),
        }
    }
}

/// xorshift64*: small, seeded, and the same everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}
