//! The simulation's datagrams: the agent protocol's real bodies (`warden_core::cluster`'s
//! `Heartbeat` and `AcquireRequest`) in an envelope, and the control plane's answers.
//!
//! One liberty is taken with the real protocol: the agent long-polls
//! `GET /v1/agents/commands?after=N` for its commands, while here the commands ride on the
//! answer to every heartbeat, numbered per control-plane incarnation exactly as the long-poll
//! numbers them, and the heartbeat carries the agent's cursor (`after`) in their place. Commands
//! therefore arrive up to one heartbeat interval later than a long-poll would bring them, and
//! are lost, then sent again, with the heartbeat answers that carry them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use turmoil::net::UdpSocket;
use warden_core::cluster::{AcquireRequest, Heartbeat};

pub const SERVER: &str = "server";
const PORT: u16 = 7470;
/// Large enough for a heartbeat with its inventory and an answer with its commands.
pub const MAX_DATAGRAM: usize = 64 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Msg {
    /// `POST /v1/agents/heartbeat`, with the command cursor of the long-poll.
    Heartbeat {
        request: u64,
        cursor: Cursor,
        heartbeat: Heartbeat,
    },
    HeartbeatAnswer {
        request: u64,
        answer: HeartbeatReply,
    },
    /// `POST /v1/agents/acquire`.
    Acquire {
        request: u64,
        acquire: AcquireRequest,
    },
    /// The new epoch, or the refusal with the lease's current epoch.
    AcquireAnswer {
        request: u64,
        granted: Result<u64, u64>,
    },
}

/// Where an agent's command loop is: the last command carried out, numbered in `incarnation`.
/// Kept on the agent's disk, as `commands.json` is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub incarnation: u64,
    pub after: u64,
}

/// `HeartbeatResponse`: the core's `HeartbeatAnswer`, the control plane's incarnation, and (the
/// simulation's liberty, see the module docs) the host's commands after its cursor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub incarnation: u64,
    pub acked_reports_through: u64,
    pub renewed: Vec<bool>,
    pub send_inventory: bool,
    pub commands: Vec<(u64, Command)>,
}

/// The agent commands the control plane renders from the core's effects and orders (the real
/// ones also carry the cell spec, logs and checkpoint plans, which nothing here needs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Start `cell_id`, fenced under lease `epoch`.
    Start {
        workload_id: String,
        cell_id: String,
        epoch: Option<u64>,
    },
    /// Bid for the lease after this slot's turn, to run `cell_id`.
    Promote {
        workload_id: String,
        cell_id: String,
        expected_epoch: u64,
    },
    /// Keep a standby slot of `workload_id`; its turn is `standby_index × promotion_delay_ms`.
    Arm {
        workload_id: String,
        standby_index: usize,
        promotion_delay_ms: u64,
    },
    Disarm {
        workload_id: String,
    },
    Signal {
        cell_id: String,
        kill: bool,
    },
    Remove {
        cell_id: String,
    },
    /// Evict the primary and give the lease up (a drain; the simulation drains nothing).
    Evict {
        workload_id: String,
        cell_id: String,
        epoch: u64,
    },
}

pub fn server_addr() -> SocketAddr {
    SocketAddr::new(turmoil::lookup(SERVER), PORT)
}

pub fn any_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT)
}

/// Sends `msg`; a datagram that cannot be sent is lost, as on a real network.
pub async fn send(socket: &UdpSocket, to: SocketAddr, msg: &Msg) {
    let _ = socket.send_to(&serde_json::to_vec(msg).expect("messages serialize"), to).await;
}
