//! A host's agent, speaking the agent protocol as `warden agent` does: a heartbeat loop (one
//! heartbeat at a time, the durable report queue, a renewal per held lease counted from the
//! heartbeat's send time, lease claims for new fenced cells, the inventory after either side
//! restarts) and the commands the control plane sends (`Start`, `Promote`, `Arm`, `Disarm`,
//! `Signal`, `Remove`), carried out in order past a durable cursor. Its role for the workload is
//! the core's `warden_core::standby::Role`: the slot's index from `Arm`, the bid on `Promote`, the
//! fence on a refused renewal or a passed deadline. Its memory is lost when it crashes; its
//! disk and the cells under their shims are not.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::timeout;
use turmoil::net::UdpSocket;
use warden_core::cluster::{AcquireRequest, Heartbeat, InventoryCell, InventoryState, LeaseClaim, ReportEvent, HOST_TTL_MS};
use warden_core::lease::{HeldLease, LeaseTiming, OutagePolicy};
use warden_core::spec::DEFAULT_PROMOTION_DELAY_MS;
use warden_core::standby::{Role, RoleEffect, RoleInput};
use warden_core::CellExit;

use crate::wire::{any_addr, send, server_addr, Command, Cursor, HeartbeatReply, Msg, MAX_DATAGRAM};
use crate::world::{Cell, Shared, World};

/// Reports per heartbeat, as the real agent sends at most.
const MAX_REPORTS_PER_HEARTBEAT: usize = 256;
/// A bid unanswered this long is forgotten (its lease, if granted, simply expires unrenewed).
const ACQUIRE_TIMEOUT_MS: u64 = 10_000;

/// A heartbeat awaiting its answer.
struct InFlight {
    request: u64,
    sent_at_ms: u64,
    /// The role's renewals it carries, then the first `n_claims` of the waiting claims.
    renewals: Vec<LeaseClaim>,
    n_claims: usize,
    carried_inventory: bool,
}

/// A heartbeat's connection attempt, followed outside turmoil's datagrams: when it reaches the
/// control plane's machine (real time) a dead process there refuses it, and the refusal comes
/// back one latency later, if the way back is open — the evidence `lease.rs` argues from.
struct Probe {
    request: u64,
    /// Local time the heartbeat was sent.
    sent_at_ms: u64,
    /// Real time it reaches the control plane's machine.
    arrives_at_ms: u64,
    /// Real time a refusal is back, once it was refused.
    refused_back_at_ms: Option<u64>,
}

/// A `Start` waiting for its lease claim's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Claim {
    workload_id: String,
    cell_id: String,
    epoch: u64,
}

/// The agent's memory.
struct Agent {
    host: &'static str,
    timing: LeaseTiming,
    role: Option<Role>,
    /// The cell the last `Promote` offered (workload, cell), for the bid.
    offer: Option<(String, String)>,
    heartbeat: Option<InFlight>,
    next_heartbeat_ms: u64,
    /// Send the next heartbeat without waiting for the interval (a report or a claim waits).
    hurry: bool,
    claims: Vec<Claim>,
    /// Bids in flight: request → local send time.
    acquires: BTreeMap<u64, u64>,
    incarnation: Option<u64>,
    send_inventory: bool,
    probe: Option<Probe>,
}

/// The node: a tick every few ms, and each datagram as it arrives.
pub async fn agent(host: &'static str, world: Shared) -> turmoil::Result {
    let socket = UdpSocket::bind(any_addr()).await?;
    let mut agent = Agent::start(host, &mut world.borrow_mut());
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let outgoing = agent.tick(&mut world.borrow_mut());
        for msg in &outgoing {
            send(&socket, server_addr(), msg).await;
        }
        let Ok(received) = timeout(Duration::from_millis(5), socket.recv_from(&mut buf)).await else { continue };
        let (n, _) = received?;
        let Ok(msg) = serde_json::from_slice::<Msg>(&buf[..n]) else { continue };
        let outgoing = agent.receive(&mut world.borrow_mut(), msg);
        for msg in &outgoing {
            send(&socket, server_addr(), msg).await;
        }
    }
}

impl Agent {
    /// A (re)start: a live cell under our shim means we are (still) the primary of its epoch,
    /// under the fence its shim has.
    fn start(host: &'static str, world: &mut World) -> Agent {
        let now = world.now_ms;
        let role = world
            .cells
            .get(host)
            .and_then(|cells| cells.iter().rev().find(|c| c.alive_at(now)))
            .map(|cell| Role::Primary { held: HeldLease { epoch: cell.epoch, deadline_ms: cell.deadline_ms } });
        Agent {
            host,
            timing: world.config.timing,
            role,
            offer: None,
            heartbeat: None,
            next_heartbeat_ms: 0,
            hurry: false,
            claims: Vec::new(),
            acquires: BTreeMap::new(),
            incarnation: None,
            send_inventory: true,
            probe: None,
        }
    }

    fn promotion_delay_ms(&self, world: &World) -> u64 {
        world.disks[self.host].armed.values().next().map_or(DEFAULT_PROMOTION_DELAY_MS, |a| a.promotion_delay_ms)
    }

    fn step_role(&mut self, world: &mut World, input: RoleInput) -> Vec<Msg> {
        let now = world.local_ms(self.host);
        let delay = self.promotion_delay_ms(world);
        let Some(role) = self.role.as_mut() else { return Vec::new() };
        let effects = role.step(input, now, delay, &self.timing);
        self.carry_out(world, effects)
    }

    fn tick(&mut self, world: &mut World) -> Vec<Msg> {
        let now = world.local_ms(self.host);
        self.queue_exits(world);
        // A slot on disk and no primary here: this host is that slot's standby.
        if matches!(self.role, None | Some(Role::Fenced { .. })) {
            if let Some(armed) = world.disks[self.host].armed.values().next() {
                self.role = Some(Role::standby(armed.standby_index));
            }
        }
        let mut outgoing = self.refused(world);
        outgoing.extend(self.step_role(world, RoleInput::Tick));
        self.acquires.retain(|_, sent_at| now.saturating_sub(*sent_at) < ACQUIRE_TIMEOUT_MS);
        // One heartbeat at a time; one that hangs is given up on (the real agent's timeout).
        let give_up_after_ms = (HOST_TTL_MS / 2).max(2 * self.timing.renew_every_ms);
        if self.heartbeat.as_ref().is_some_and(|hb| now.saturating_sub(hb.sent_at_ms) > give_up_after_ms) {
            self.heartbeat = None;
        }
        if self.heartbeat.is_none() && (now >= self.next_heartbeat_ms || self.hurry) {
            outgoing.push(self.send_heartbeat(world, now));
        }
        outgoing
    }

    /// The heartbeat in flight met no control plane: its connection was refused. The real agent
    /// gives up on that heartbeat and, for a workload that rides outages out, counts the refusal
    /// as a renewal sent when the heartbeat was (`HeldLease::no_control_plane`).
    fn refused(&mut self, world: &mut World) -> Vec<Msg> {
        let Some(probe) = self.probe.as_mut() else { return Vec::new() };
        let now = world.now_ms;
        if probe.refused_back_at_ms.is_none() && now >= probe.arrives_at_ms {
            if !world.refuses(self.host) {
                // Accepted (turmoil carries the heartbeat) or unanswered: no evidence.
                self.probe = None;
                return Vec::new();
            }
            probe.refused_back_at_ms = Some(now + world.latency_ms(self.host));
        }
        if probe.refused_back_at_ms.is_none_or(|back| now < back) {
            return Vec::new();
        }
        let Some(probe) = self.probe.take() else { return Vec::new() };
        let ours = self.heartbeat.as_ref().is_some_and(|hb| hb.request == probe.request);
        if !ours || world.cut_from_server.contains(self.host) {
            return Vec::new();
        }
        self.heartbeat = None;
        if world.config.outage == OutagePolicy::Stop {
            return Vec::new();
        }
        world.log(format!("{} found no control plane (connection refused)", self.host));
        self.step_role(world, RoleInput::NoControlPlane { sent_at_ms: probe.sent_at_ms })
    }

    /// Cells that ended (killed, fenced, their host crashed) are reported once, durably.
    fn queue_exits(&mut self, world: &mut World) {
        let now = world.now_ms;
        let ended: Vec<(String, String)> = world
            .cells
            .entry(self.host.to_string())
            .or_default()
            .iter_mut()
            .filter(|c| !c.exit_queued && c.gone_at_ms.is_some_and(|gone| gone <= now))
            .map(|c| {
                c.exit_queued = true;
                (c.workload_id.clone(), c.cell_id.clone())
            })
            .collect();
        for (workload_id, cell_id) in ended {
            world.queue_report(self.host, &workload_id, &cell_id, ReportEvent::Exited { exit: killed() });
            self.hurry = true;
        }
    }

    fn send_heartbeat(&mut self, world: &mut World, now: u64) -> Msg {
        // A renewal for the primary cell this host runs under the role's lease (as the real
        // agent renews per fenced cell): none while a won lease waits for its `Start`.
        let renewals: Vec<LeaseClaim> = match &self.role {
            Some(Role::Primary { held }) => world
                .cells
                .get(self.host)
                .into_iter()
                .flatten()
                .filter(|c| c.epoch == held.epoch && !c.exit_queued)
                .map(|c| LeaseClaim { workload_id: c.workload_id.clone(), epoch: c.epoch })
                .take(1)
                .collect(),
            _ => Vec::new(),
        };
        let mut renew = renewals.clone();
        renew.extend(self.claims.iter().map(|c| LeaseClaim { workload_id: c.workload_id.clone(), epoch: c.epoch }));
        let inventory = self.send_inventory.then(|| inventory(world, self.host));
        let disk = &world.disks[self.host];
        let standbys = inventory.is_some().then(|| disk.armed.keys().cloned().collect());
        let reports = disk.reports.iter().take(MAX_REPORTS_PER_HEARTBEAT).cloned().collect();
        let cursor = disk.cursor.unwrap_or_default();
        let request = world.next_request_id();
        self.probe = Some(Probe {
            request,
            sent_at_ms: now,
            arrives_at_ms: world.now_ms + world.latency_ms(self.host),
            refused_back_at_ms: None,
        });
        self.heartbeat = Some(InFlight {
            request,
            sent_at_ms: now,
            renewals,
            n_claims: self.claims.len(),
            carried_inventory: inventory.is_some(),
        });
        self.next_heartbeat_ms = now + self.timing.renew_every_ms;
        self.hurry = false;
        let heartbeat = Heartbeat { host: self.host.to_string(), reports, renew, inventory, standbys };
        Msg::Heartbeat { request, cursor, heartbeat }
    }

    fn receive(&mut self, world: &mut World, msg: Msg) -> Vec<Msg> {
        match msg {
            Msg::HeartbeatAnswer { request, answer } => {
                match self.heartbeat.take() {
                    Some(sent) if sent.request == request => self.answered(world, sent, answer),
                    // An answer to a heartbeat given up on: its connection is closed.
                    other => {
                        self.heartbeat = other;
                        Vec::new()
                    }
                }
            }
            Msg::AcquireAnswer { request, granted } => {
                let Some(sent_at_ms) = self.acquires.remove(&request) else { return Vec::new() };
                let input = match granted {
                    Ok(epoch) => RoleInput::Acquired { epoch, sent_at_ms },
                    Err(current_epoch) => RoleInput::AcquireRefused { current_epoch },
                };
                self.step_role(world, input)
            }
            Msg::Heartbeat { .. } | Msg::Acquire { .. } => Vec::new(),
        }
    }

    fn answered(&mut self, world: &mut World, sent: InFlight, answer: HeartbeatReply) -> Vec<Msg> {
        if answer.renewed.len() != sent.renewals.len() + sent.n_claims {
            return Vec::new(); // as the real agent: a malformed answer renews nothing
        }
        let disk = world.disk(self.host);
        disk.reports.retain(|r| r.seq > answer.acked_reports_through);
        let mut outgoing = Vec::new();
        let (renewed, claimed) = answer.renewed.split_at(sent.renewals.len());
        for (claim, &yes) in sent.renewals.iter().zip(renewed) {
            let epoch = claim.epoch;
            let input =
                if yes { RoleInput::Renewed { epoch, sent_at_ms: sent.sent_at_ms } } else { RoleInput::RenewRefused { epoch } };
            outgoing.extend(self.step_role(world, input));
        }
        let claims: Vec<Claim> = self.claims.drain(..sent.n_claims).collect();
        for (claim, &yes) in claims.into_iter().zip(claimed) {
            if yes {
                let held = HeldLease::answered(claim.epoch, sent.sent_at_ms, &self.timing);
                self.run_cell(world, &claim.workload_id, &claim.cell_id, held);
            } else {
                world.log(format!("{} could not claim lease epoch {} for {}", self.host, claim.epoch, claim.cell_id));
                let error = format!("lease epoch {} could not be claimed", claim.epoch);
                world.queue_report(self.host, &claim.workload_id, &claim.cell_id, ReportEvent::StartFailed { error });
                self.hurry = true;
            }
        }
        let restarted = self.incarnation.is_some_and(|known| known != answer.incarnation);
        let first = self.incarnation.is_none();
        self.send_inventory = answer.send_inventory || ((restarted || first) && !sent.carried_inventory);
        self.incarnation = Some(answer.incarnation);
        self.hurry |= self.send_inventory;

        // The command loop's part: in order, past the durable cursor.
        let mut cursor = world.disks[self.host].cursor.filter(|c| c.incarnation == answer.incarnation);
        let mut commands = answer.commands;
        commands.sort_by_key(|(seq, _)| *seq);
        for (seq, command) in commands {
            let after = cursor.map_or(0, |c| c.after);
            if seq <= after {
                continue;
            }
            outgoing.extend(self.execute(world, command));
            cursor = Some(Cursor { incarnation: answer.incarnation, after: seq });
            world.disk(self.host).cursor = cursor;
        }
        outgoing
    }

    /// Carries out one command; like the real agent's, each is idempotent.
    fn execute(&mut self, world: &mut World, command: Command) -> Vec<Msg> {
        let host = self.host;
        match command {
            Command::Start { workload_id, cell_id, epoch } => self.start_cell(world, workload_id, cell_id, epoch),
            Command::Promote { workload_id, cell_id, expected_epoch } => {
                if !matches!(self.role, Some(Role::Standby { .. })) {
                    world.log(format!("{host} ignores a promotion: it keeps no standby of {workload_id}"));
                    return Vec::new();
                }
                self.offer = Some((workload_id, cell_id));
                return self.step_role(world, RoleInput::Observed { epoch: expected_epoch, grantable: true });
            }
            Command::Arm { workload_id, standby_index, promotion_delay_ms } => {
                let armed = crate::world::Armed { standby_index, promotion_delay_ms };
                world.disk(host).armed.insert(workload_id, armed);
                match &mut self.role {
                    Some(Role::Standby { index, .. }) => *index = standby_index,
                    // Armed while it still runs a primary: the slot waits for that to end.
                    Some(Role::Primary { .. }) => {}
                    None | Some(Role::Fenced { .. }) => self.role = Some(Role::standby(standby_index)),
                }
            }
            Command::Disarm { workload_id } => {
                world.disk(host).armed.remove(&workload_id);
                if matches!(self.role, Some(Role::Standby { .. })) {
                    self.role = None;
                    self.offer = None;
                }
            }
            Command::Signal { cell_id, kill } => {
                let why = if kill { "SIGKILL from the control plane" } else { "SIGTERM from the control plane" };
                world.kill_cells(host, |c| c.cell_id == cell_id, why);
            }
            Command::Remove { cell_id } => {
                world.kill_cells(host, |c| c.cell_id == cell_id, "removed by the control plane");
                for cell in world.cells.entry(host.to_string()).or_default().iter_mut().filter(|c| c.cell_id == cell_id) {
                    cell.removed = true;
                    cell.exit_queued = true;
                }
            }
            Command::Evict { cell_id, .. } => {
                // Nothing drains hosts here; an eviction would stop the cell and revoke.
                world.kill_cells(host, |c| c.cell_id == cell_id, "evicted");
            }
        }
        Vec::new()
    }

    /// `Start`: a cell this host has is not started again; any other claims its lease first, in
    /// the next heartbeat, and starts under the fence counted from that heartbeat's send (the
    /// command may be old news), whether or not this host's role won the bid for it.
    fn start_cell(&mut self, world: &mut World, workload_id: String, cell_id: String, epoch: Option<u64>) {
        let exists = world.cells.get(self.host).is_some_and(|cells| cells.iter().any(|c| c.cell_id == cell_id));
        if exists || self.claims.iter().any(|c| c.cell_id == cell_id) {
            return;
        }
        let Some(epoch) = epoch else {
            world.log(format!("{} refuses to start {cell_id} without a lease", self.host));
            return;
        };
        self.claims.push(Claim { workload_id, cell_id, epoch });
        self.hurry = true;
    }

    fn run_cell(&mut self, world: &mut World, workload_id: &str, cell_id: &str, held: HeldLease) {
        if world.cells.get(self.host).is_some_and(|cells| cells.iter().any(|c| c.cell_id == cell_id)) {
            return;
        }
        world.start_cell(self.host, workload_id, cell_id, held);
        let pid = pid_of(world.cells[self.host].len() - 1);
        world.queue_report(self.host, workload_id, cell_id, ReportEvent::Started { pid, pid_start_time: u64::from(pid) });
        self.role = Some(Role::Primary { held });
        self.offer = None;
        // A standby that was promoted: its slot is spent.
        world.disk(self.host).armed.remove(workload_id);
        self.hurry = true;
    }

    fn carry_out(&mut self, world: &mut World, effects: Vec<RoleEffect>) -> Vec<Msg> {
        let host = self.host;
        let mut outgoing = Vec::new();
        for effect in effects {
            match effect {
                RoleEffect::SendAcquire { expected_epoch } => {
                    let Some((workload_id, cell_id)) = self.offer.clone() else { continue };
                    // The role recorded its own send time as `now`; the same reading goes here.
                    let now = world.local_ms(host);
                    let request = world.next_request_id();
                    self.acquires.insert(request, now);
                    world.log(format!("{host} bids for {cell_id} at epoch {expected_epoch}"));
                    let acquire = AcquireRequest { host: host.into(), workload_id, cell_id, expected_epoch, hot_cell: None };
                    outgoing.push(Msg::Acquire { request, acquire });
                }
                // The control plane sends the `Start` once the grant is durable.
                RoleEffect::StartPrimary { held } => world.log(format!("{host} won lease epoch {}", held.epoch)),
                RoleEffect::ExtendFence { held } => {
                    for cell in world.cells.entry(host.to_string()).or_default() {
                        if cell.epoch == held.epoch && cell.gone_at_ms.is_none() {
                            cell.deadline_ms = cell.deadline_ms.max(held.deadline_ms);
                        }
                    }
                }
                RoleEffect::KillPrimary { epoch, reason } => world.kill_cells(host, |c| c.epoch == epoch, &reason),
            }
        }
        outgoing
    }
}

/// Every cell on the host's disk, as the agent finds it.
fn inventory(world: &World, host: &str) -> Vec<InventoryCell> {
    let cells: &[Cell] = world.cells.get(host).map_or(&[], Vec::as_slice);
    cells
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.removed)
        .map(|(i, c)| {
            let state = if c.alive_at(world.now_ms) {
                InventoryState::Running { pid: pid_of(i), pid_start_time: u64::from(pid_of(i)) }
            } else {
                InventoryState::Exited { exit: killed() }
            };
            InventoryCell { workload_id: c.workload_id.clone(), cell_id: c.cell_id.clone(), state }
        })
        .collect()
}

fn pid_of(index: usize) -> u32 {
    1_000 + index as u32
}

fn killed() -> CellExit {
    CellExit::from_status(None, Some(9))
}
