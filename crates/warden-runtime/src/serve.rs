//! The API's listener: our own accept loop, so no client that has not authenticated can hold
//! enough connections to starve the agents' heartbeats (and get healthy hosts declared down).
//!
//! What it enforces, per connection, before any request is read:
//! - a cap on connections in total (`Limits::total`, kept well below `RLIMIT_NOFILE`, which
//!   `raise_fd_limit` lifts to its hard limit, so the journal, cells and logs always have fds);
//! - a cap per peer IP address (`Limits::per_peer`) for peers that have not authenticated;
//! - capacity reserved for *known* peers (`Limits::reserved`): addresses that made a signed,
//!   verified request recently (`Gate::vouch`, called by the API's authentication). Agents
//!   heartbeat every few seconds, so their addresses stay known, and they keep getting
//!   connections when strangers have used up everything else;
//! - a header-read timeout, which hyper also applies while a kept-alive connection waits for its
//!   next request (so it is the idle timeout too; clients drop pooled connections sooner,
//!   `client::connection`).
//!
//! - with TLS, the handshake happens in the connection's own task, after the caps admitted it
//!   and under the header-read timeout, so a slow or plaintext client holds one slot and never
//!   the loop (a plaintext request fails the handshake: the client gets an alert, no answer).
//!
//! Why by address and not by connection: nothing distinguishes an agent's connection from an
//! attacker's until its first request is read, and reserving slots for connections that merely
//! promise to sign lets an attacker fill those too. The limit of this choice: an attacker on the
//! *same* address as an agent (the same host, or behind the same NAT) shares its standing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

/// How long an address stays known after its last verified request.
const KNOWN_FOR: Duration = Duration::from_secs(10 * 60);

/// The listener's caps and timeouts.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections at once, all peers together (known peers' reserve included).
    pub total: usize,
    /// Of `total`, how many only known peers may use.
    pub reserved: usize,
    /// Connections at once from one address that is not known.
    pub per_peer: usize,
    /// How long a request's headers may take to arrive, and how long a kept-alive connection
    /// may sit idle.
    pub header_read_timeout: Duration,
}

impl Limits {
    /// The defaults given how many file descriptors the process may open: at most a quarter
    /// of them for connections (4,096 at most), a quarter of those reserved for known peers.
    pub fn for_fd_limit(nofile: u64) -> Limits {
        let total = (nofile / 4).clamp(64, 4096) as usize;
        Limits { total, reserved: total / 4, per_peer: (total / 16).max(16), header_read_timeout: Duration::from_secs(30) }
    }
}

/// A listener on `addr` whose accept queue is as long as the kernel allows (`somaxconn`), not
/// tokio's 1,024: while a flood of connections fills the queue faster than the loop below can
/// take and close them, the kernel drops new SYNs, and an agent's or the CLI's connect waits out
/// TCP's one-second retransmission.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    // The kernel caps the backlog at net.core.somaxconn.
    socket.listen(u32::from(u16::MAX))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_peer: HashMap<IpAddr, usize>,
}

/// Who may connect now: the counts of open connections and the known addresses.
pub struct Gate {
    limits: Limits,
    counts: Mutex<Counts>,
    known: Mutex<HashMap<IpAddr, Instant>>,
}

/// One admitted connection; its slot is given back when dropped.
pub struct Admitted {
    gate: Arc<Gate>,
    peer: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self.gate.counts.lock().expect("gate lock");
        counts.total -= 1;
        if let Some(n) = counts.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                counts.by_peer.remove(&self.peer);
            }
        }
    }
}

impl Gate {
    pub fn new(limits: Limits) -> Gate {
        Gate { limits, counts: Mutex::default(), known: Mutex::default() }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Marks `peer` as known: it just made a signed request that verified.
    pub fn vouch(&self, peer: IpAddr, now: Instant) {
        let mut known = self.known.lock().expect("gate lock");
        if known.len() > 4 * self.limits.total {
            known.retain(|_, seen| now.duration_since(*seen) < KNOWN_FOR);
        }
        known.insert(peer, now);
    }

    fn is_known(&self, peer: IpAddr, now: Instant) -> bool {
        self.known.lock().expect("gate lock").get(&peer).is_some_and(|seen| now.duration_since(*seen) < KNOWN_FOR)
    }

    /// A slot for a new connection from `peer`, or `None` if it must be closed at once.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, now: Instant) -> Option<Admitted> {
        let known = self.is_known(peer, now);
        let mut counts = self.counts.lock().expect("gate lock");
        let from_peer = counts.by_peer.get(&peer).copied().unwrap_or(0);
        let admitted = if known {
            counts.total < self.limits.total
        } else {
            counts.total < self.limits.total - self.limits.reserved && from_peer < self.limits.per_peer
        };
        if !admitted {
            return None;
        }
        counts.total += 1;
        *counts.by_peer.entry(peer).or_default() += 1;
        Some(Admitted { gate: self.clone(), peer })
    }
}

/// The peer's address, put into every request's extensions (for `Gate::vouch`).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// Serves `router` on `listener` through `gate` until `stop` completes; over TLS with `tls`,
/// plain HTTP without.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    gate: Arc<Gate>,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(stop);
    let mut refused_since_note = 0u64;
    let mut last_note = Instant::now();
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of fds (EMFILE/ENFILE) or a connection reset before we took it: wait a
                // little rather than spin, and carry on.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Some(slot) = gate.admit(peer.ip(), Instant::now()) else {
            drop(stream);
            refused_since_note += 1;
            if last_note.elapsed() > Duration::from_secs(60) {
                eprintln!(
                    "warden: refused {refused_since_note} connection(s) over the caps in the last minute \
                     (latest from {peer}); known agents keep their reserved share"
                );
                refused_since_note = 0;
                last_note = Instant::now();
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let timeout = gate.limits().header_read_timeout;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match acceptor {
                None => serve_connection(stream, peer, router, timeout).await,
                // The handshake has the time a request's headers have; a failed one (plaintext,
                // a client that does not trust us) just closes the connection.
                Some(acceptor) => {
                    if let Ok(Ok(stream)) = tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        serve_connection(stream, peer, router, timeout).await;
                    }
                }
            }
        });
    }
}

/// Serves HTTP/1.1 requests on one admitted connection (TLS or not) until it closes.
async fn serve_connection<I>(io: I, peer: SocketAddr, router: axum::Router, timeout: Duration)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower_service::Service;
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(Peer(peer));
        let mut router = router.clone();
        async move { router.call(request).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(timeout).keep_alive(true);
    let _ = builder.serve_connection(TokioIo::new(io), service).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(total: usize, reserved: usize, per_peer: usize) -> Arc<Gate> {
        Arc::new(Gate::new(Limits { total, reserved, per_peer, header_read_timeout: Duration::from_secs(1) }))
    }

    #[test]
    fn a_stranger_is_capped_per_address_and_cannot_use_the_reserve() {
        let gate = gate(10, 4, 3);
        let now = Instant::now();
        let stranger: IpAddr = "127.0.0.2".parse().unwrap();
        let other: IpAddr = "127.0.0.3".parse().unwrap();
        let agent: IpAddr = "127.0.0.1".parse().unwrap();
        gate.vouch(agent, now);
        let mut held: Vec<Admitted> = (0..3).map(|_| gate.admit(stranger, now).expect("under the per-peer cap")).collect();
        assert!(gate.admit(stranger, now).is_none(), "over the per-peer cap");
        held.extend((0..3).map(|_| gate.admit(other, now).expect("another address has its own share")));
        assert!(gate.admit(other, now).is_none());
        // 6 of the 6 unreserved slots are taken: a third stranger gets nothing, the agent gets the reserve.
        assert!(gate.admit("127.0.0.4".parse().unwrap(), now).is_none());
        let agent_slots: Vec<Admitted> = (0..4).map(|_| gate.admit(agent, now).expect("reserved for known peers")).collect();
        assert!(gate.admit(agent, now).is_none(), "the total is the total");
        drop(agent_slots);
        drop(held.pop());
        assert!(gate.admit(other, now).is_some(), "a closed connection gives its slot back");
    }
}
