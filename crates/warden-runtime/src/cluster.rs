//! The control plane's side of talking to hosts: the per-host command queues agents long-poll,
//! their last heartbeats (for views), and the `warden logs` sessions relayed from agents. The
//! decisions about hosts (liveness, placement, leases) are the core's (`warden_core::cluster`);
//! the engine renders them into commands and pushes them here once they are durable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::proto::{AgentCommand, CommandKind};

pub use warden_core::cluster::{ClusterConfig, HEARTBEAT_INTERVAL_MS, HOST_TTL_MS, PROMOTION_FALLBACK_MS, RESTART_GRACE_MS};

/// Per-host command queues, shared with the API's long-poll handlers.
#[derive(Default)]
pub struct Queues {
    pub incarnation: String,
    hosts: Mutex<HashMap<String, HostQueue>>,
    /// For views only (`warden hosts`); liveness decisions use the engine's own record.
    heartbeats: Mutex<HashMap<String, u64>>,
    /// `warden logs` of cells on agents, by request id: where the agent's chunks go.
    log_sessions: Mutex<HashMap<String, LogSession>>,
}

/// A `warden logs` waiting on an agent's chunks.
#[derive(Clone)]
pub struct LogSession {
    pub host: String,
    pub tx: tokio::sync::mpsc::Sender<crate::logs::Chunk>,
    /// The agent sent something (else the caller is told it did not answer).
    pub answered: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Default)]
struct HostQueue {
    next_seq: u64,
    commands: Vec<AgentCommand>,
    notify: Arc<Notify>,
}

/// Commands kept per host for agents that are slow to poll; older ones are acknowledged by the
/// agent's `after` and dropped.
const MAX_QUEUED: usize = 10_000;

impl Queues {
    pub fn new(incarnation: String) -> Queues {
        Queues {
            incarnation,
            hosts: Mutex::new(HashMap::new()),
            heartbeats: Mutex::new(HashMap::new()),
            log_sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a `warden logs` of a cell on `host`; its request id.
    pub fn open_logs(&self, host: &str, tx: tokio::sync::mpsc::Sender<crate::logs::Chunk>) -> String {
        let id = crate::clock::random_id("l-");
        let session = LogSession { host: host.to_string(), tx, answered: Arc::default() };
        self.log_sessions.lock().expect("log sessions lock").insert(id.clone(), session);
        id
    }

    pub fn log_session(&self, id: &str) -> Option<LogSession> {
        self.log_sessions.lock().expect("log sessions lock").get(id).cloned()
    }

    /// Ends a session: its reader sees the end of the stream.
    pub fn close_logs(&self, id: &str) {
        self.log_sessions.lock().expect("log sessions lock").remove(id);
    }

    pub fn heartbeat_seen(&self, host: &str, now: u64) {
        self.heartbeats.lock().expect("heartbeats lock").insert(host.to_string(), now);
    }

    pub fn last_heartbeat(&self, host: &str) -> Option<u64> {
        self.heartbeats.lock().expect("heartbeats lock").get(host).copied()
    }

    pub fn push(&self, host: &str, kind: CommandKind) {
        let mut hosts = self.hosts.lock().expect("queues lock");
        let queue = hosts.entry(host.to_string()).or_default();
        queue.next_seq += 1;
        queue.commands.push(AgentCommand { seq: queue.next_seq, kind });
        if queue.commands.len() > MAX_QUEUED {
            queue.commands.remove(0);
        }
        queue.notify.notify_waiters();
    }

    /// Commands after `after`, dropping the ones the agent has confirmed by asking past them;
    /// and what to wait on when there are none.
    pub fn after(&self, host: &str, after: u64) -> (Vec<AgentCommand>, Arc<Notify>) {
        let mut hosts = self.hosts.lock().expect("queues lock");
        let queue = hosts.entry(host.to_string()).or_default();
        queue.commands.retain(|c| c.seq > after);
        (queue.commands.clone(), queue.notify.clone())
    }
}
