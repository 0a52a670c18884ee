//! The control-plane node: the cluster core that ships (`warden_core::cluster::ClusterState`)
//! and the workload machine (through `warden_core::batch::Batch`), driven the way the runtime's
//! engine drives them. Each heartbeat, bid and timer is one batch, decided in the engine's order
//! — the input's handler, `check_hosts`, the `each-host` services, the workloads' due ticks,
//! (jobs and rollouts: none here), `place`, `maintain_standbys` — then committed to the journal,
//! and only then are its effects and orders queued for the hosts and the answer sent.
//!
//! The journal lives in the world and survives a crash of this node; `ClusterState` and the
//! command queues are memory and do not: a restarted control plane replays the journal and
//! starts from `ClusterState::after_restart`, as `warden server` does.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::timeout;
use turmoil::net::UdpSocket;
use warden_core::batch::{Batch, Order};
use warden_core::cluster::{each_host_missing, ClusterConfig, ClusterState, Heartbeat, HeartbeatAnswer, HOST_TTL_MS};
use warden_core::lease::OutagePolicy;
use warden_core::workload::StopSignal;
use warden_core::{Effect, Input, Phase, Projection, Spec};

use crate::wire::{any_addr, send, Command, Cursor, HeartbeatReply, Msg, MAX_DATAGRAM, SERVER};
use crate::world::{ControlPlaneNode, Shared, SimConfig, World, HOSTS, WORKLOAD};

/// The key a host enrolled with (the simulation signs nothing; the core still checks it).
pub fn principal(host: &str) -> String {
    format!("ed25519:{host}")
}

/// The workload under test: a warm-standby service on the cluster's hosts that always restarts.
/// Its backoff is capped at 1 s so that a world that fenced it many times can still show a
/// primary again within the seconds it has after healing.
fn spec(config: &SimConfig) -> Spec {
    let text = format!(
        "name = 'web'\n\
         [cell]\nargv = ['web-server']\n\
         [restart]\npolicy = 'always'\nbackoff_max = '1s'\n\
         [replication]\nmode = 'warm-standby'\nstandbys = {}\npromotion_delay = '{}ms'\n\
         [placement]\ninstances = 1\ncontrol_plane_outage = '{}'\n",
        config.standbys,
        config.promotion_delay_ms,
        if config.outage == OutagePolicy::Stop { "stop" } else { "ride-out" }
    );
    Spec::parse("web.toml", &text).expect("the simulation's spec is valid")
}

/// What one batch is about.
enum Request {
    /// The first start: enroll the hosts, submit the workload.
    Boot,
    /// Nothing arrived before the next wake-up.
    Timer,
    Heartbeat {
        request: u64,
        cursor: Cursor,
        heartbeat: Heartbeat,
    },
    Acquire {
        request: u64,
        acquire: warden_core::cluster::AcquireRequest,
    },
}

/// An answer decided in the handler, sent once the batch is committed.
enum Pending {
    Heartbeat { request: u64, host: String, cursor: Cursor, answer: HeartbeatAnswer },
    Acquire { request: u64, granted: Result<u64, u64> },
}

/// Commands for one host, numbered in this incarnation (the long-poll's queue).
#[derive(Default)]
struct HostQueue {
    last_seq: u64,
    commands: Vec<(u64, Command)>,
}

struct ControlPlane {
    live: Projection,
    cluster: ClusterState,
    incarnation: u64,
    queues: BTreeMap<String, HostQueue>,
}

/// The node: one batch per datagram, and one whenever the core's next wake-up comes first.
pub async fn server(world: Shared) -> turmoil::Result {
    let socket = UdpSocket::bind(any_addr()).await?;
    let mut plane = ControlPlane::start(&mut world.borrow_mut());
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let wait_ms = plane.wait_ms(&world.borrow());
        let (request, from) = match timeout(Duration::from_millis(wait_ms), socket.recv_from(&mut buf)).await {
            Err(_) => (Request::Timer, None),
            Ok(received) => {
                let (n, from) = received?;
                match serde_json::from_slice::<Msg>(&buf[..n]) {
                    Ok(Msg::Heartbeat { request, cursor, heartbeat }) => {
                        (Request::Heartbeat { request, cursor, heartbeat }, Some(from))
                    }
                    Ok(Msg::Acquire { request, acquire }) => (Request::Acquire { request, acquire }, Some(from)),
                    _ => continue,
                }
            }
        };
        let reply = plane.decide(&mut world.borrow_mut(), request);
        if let (Some(reply), Some(to)) = (reply, from) {
            send(&socket, to, &reply).await;
        }
    }
}

impl ControlPlane {
    /// A (re)start: the projection replayed from the journal, the cluster's memory rebuilt
    /// conservatively, a new incarnation; on the very first start, the hosts and the workload.
    fn start(world: &mut World) -> ControlPlane {
        let now = world.local_ms(SERVER);
        let mut live = Projection::default();
        for (at_ms, data) in &world.journal {
            live.apply_data(data, *at_ms);
        }
        // The pair of the batch's assertion: what the journal replays to is what was committed.
        if live != world.committed {
            world.violation = Some("replaying the journal does not rebuild the projection that was committed".into());
        }
        world.incarnation += 1;
        let config = ClusterConfig {
            heartbeat_interval_ms: world.config.timing.renew_every_ms,
            host_ttl_ms: HOST_TTL_MS,
            lease: world.config.timing,
        };
        // Serving from now (A5): connections are accepted from here on, and the grace counts
        // from here — or, with the suite's deliberate bug, from a moment before it listened.
        world.control_plane = ControlPlaneNode::Listening;
        let grace_from = now.saturating_sub(world.config.grace_before_listening_ms);
        let mut cluster = ClusterState::after_restart(config, None, &live, grace_from);
        // As the engine's start-up recovery does: a new cell that had no host yet is placed
        // again at once; cells on hosts are reconciled from the hosts' inventories.
        for workload in live.workloads.values() {
            if let (Phase::Starting { cell_id, .. }, None) = (&workload.phase, workload.current_host()) {
                cluster.defer(workload.id(), cell_id, 0);
            }
        }
        world.log(format!("control plane up (incarnation {}); every held lease counts as renewed now", world.incarnation));
        let mut plane = ControlPlane { live, cluster, incarnation: world.incarnation, queues: BTreeMap::new() };
        let request = if plane.live.hosts.is_empty() { Request::Boot } else { Request::Timer };
        plane.decide(world, request);
        plane
    }

    /// How long to wait for a datagram before the core wants a look anyway (server clock ms,
    /// close enough to real ms: waking a little early only runs an empty batch).
    fn wait_ms(&self, world: &World) -> u64 {
        let now = world.local_ms(SERVER);
        let next = [self.cluster.next_wake_ms(&self.live), self.live.next_deadline_ms()].into_iter().flatten().min();
        next.map_or(1_000, |at| at.saturating_sub(now)).clamp(1, 1_000)
    }

    /// One batch, in the engine's order; the answer to send, if the request wants one.
    fn decide(&mut self, world: &mut World, request: Request) -> Option<Msg> {
        let now = world.local_ms(SERVER);
        let mut batch = Batch::new(&mut self.live, now);
        let pending = match request {
            Request::Boot => {
                for host in HOSTS {
                    self.cluster.enroll(&mut batch, host, &principal(host), None, Vec::new()).expect("a new host enrolls");
                }
                let spec = spec(&world.config);
                batch.submit(spec.workload_info(WORKLOAD.into(), "ed25519:sim".into(), Some("web".into()), now), spec, None);
                None
            }
            Request::Timer => None,
            Request::Heartbeat { request, cursor, heartbeat } => {
                match self.cluster.heartbeat(&mut batch, &principal(&heartbeat.host), &heartbeat) {
                    Ok(answer) => Some(Pending::Heartbeat { request, host: heartbeat.host, cursor, answer }),
                    Err(e) => {
                        world.log(format!("server refuses a heartbeat: {e}"));
                        None
                    }
                }
            }
            Request::Acquire { request, acquire } => {
                let granted = match self.cluster.acquire(&mut batch, &principal(&acquire.host), &acquire) {
                    Ok(epoch) => Ok(epoch),
                    Err(e) => {
                        world.log(format!("server refuses {}'s bid at epoch {}: {e}", acquire.host, acquire.expected_epoch));
                        Err(batch.live().leases.get(&acquire.workload_id).map_or(0, |l| l.epoch))
                    }
                };
                Some(Pending::Acquire { request, granted })
            }
        };
        self.cluster.check_hosts(&mut batch);
        for missing in each_host_missing(batch.live()) {
            let id = format!("w-{}", missing.consumer_workload_id);
            let info =
                missing.spec.workload_info(id.clone(), missing.owner.clone(), Some(missing.consumer_workload_id.clone()), now);
            batch.submit(info, missing.spec, Some(missing.host));
        }
        for workload_id in batch.live().due(now) {
            batch.advance_report(&workload_id, &Input::Tick);
        }
        self.cluster.place(&mut batch);
        self.cluster.maintain_standbys(&mut batch);
        let events = std::mem::take(&mut batch.events);
        let effects = std::mem::take(&mut batch.effects);
        let orders = std::mem::take(&mut batch.orders);
        drop(batch);
        // Durable first; only then does anything leave this node.
        world.commit(now, events);
        // What the batch decided on is exactly what its journaled events fold to.
        if self.live != world.committed && world.violation.is_none() {
            world.violation = Some("the live projection differs from the fold of the events it journaled".into());
        }
        self.carry_out(world, effects, orders);
        pending.map(|pending| match pending {
            Pending::Heartbeat { request, host, cursor, answer } => {
                let commands = self.commands_after(&host, cursor);
                let answer = HeartbeatReply {
                    incarnation: self.incarnation,
                    acked_reports_through: answer.acked_reports_through,
                    renewed: answer.renewed,
                    send_inventory: answer.send_inventory,
                    commands,
                };
                Msg::HeartbeatAnswer { request, answer }
            }
            Pending::Acquire { request, granted } => Msg::AcquireAnswer { request, granted },
        })
    }

    /// Renders the batch's effects and orders into host commands, as the engine does.
    fn carry_out(&mut self, world: &mut World, effects: Vec<Effect>, orders: Vec<Order>) {
        for effect in effects {
            let (Effect::StartCell { workload_id, .. } | Effect::SignalCell { workload_id, .. }) = &effect;
            let Some(workload) = self.live.workloads.get(workload_id) else { continue };
            // Every start `place` kept has its host; a signal goes where the cell runs.
            let Some(host) = workload.current_host().map(str::to_string) else { continue };
            let command = match effect {
                Effect::StartCell { workload_id, cell_id } => Command::Start { workload_id, cell_id, epoch: workload.epoch },
                Effect::SignalCell { cell_id, signal, .. } => Command::Signal { cell_id, kill: signal == StopSignal::Kill },
            };
            self.push(world, host, command);
        }
        for order in orders {
            let (host, command) = match order {
                Order::Promote { host, workload_id, cell_id, expected_epoch } => {
                    (host, Command::Promote { workload_id, cell_id, expected_epoch })
                }
                Order::Evict { host, workload_id, cell_id, epoch, .. } => (host, Command::Evict { workload_id, cell_id, epoch }),
                Order::Signal { host, cell_id, kill } => (host, Command::Signal { cell_id, kill }),
                Order::Remove { host, cell_id } => (host, Command::Remove { cell_id }),
                Order::Arm { host, workload_id, slot } => {
                    let promotion_delay_ms =
                        self.live.workloads.get(&workload_id).map_or(0, |w| w.spec.replication.promotion_delay());
                    (host, Command::Arm { workload_id, standby_index: slot.standby_index, promotion_delay_ms })
                }
                Order::Disarm { host, workload_id } => (host, Command::Disarm { workload_id }),
                // The simulation runs no rollouts.
                Order::Rollout { .. } => continue,
            };
            self.push(world, host, command);
        }
    }

    fn push(&mut self, world: &mut World, host: String, command: Command) {
        world.log(format!("server queues for {host}: {command:?}"));
        let queue = self.queues.entry(host).or_default();
        queue.last_seq += 1;
        queue.commands.push((queue.last_seq, command));
    }

    /// The long-poll's answer: the commands after the agent's cursor, dropping the ones it has
    /// confirmed by asking past them; all of them for a cursor of another incarnation.
    fn commands_after(&mut self, host: &str, cursor: Cursor) -> Vec<(u64, Command)> {
        let queue = self.queues.entry(host.to_string()).or_default();
        if cursor.incarnation == self.incarnation {
            queue.commands.retain(|(seq, _)| *seq > cursor.after);
        }
        queue.commands.clone()
    }
}
