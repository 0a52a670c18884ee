//! The `rollout` section: what the control plane spends to carry a host activation across a
//! fleet, per host, next to raw SQLite journaling the same rows.
//!
//! A real `warden server` (release binary, fresh data dir) and no agents: the bench simulates
//! the hosts itself, [`FLEET_SIZES`] of them per row (`sim-0000`, …), each enrolled with a key of
//! its own and the join token, in channel `bench`; enrollment is setup. Nothing heartbeats for them, so
//! the server marks them down after its host TTL: the bench waits for that too, so those
//! `host.down` events fall before the measured window, not in it. (A rollout does not look at
//! liveness; a real fleet's heartbeats are a load of their own, not measured here.)
//!
//! Measured: `POST /v1/rollouts` of a host activation (`target = "system-2"`, [`POLICY`]: waves
//! `[1, "10%", "100%"]`, `max_in_flight = 100`, `soak = "0s"`, one enforce probe) → the
//! rollout's view says `completed`. The bench plays the agents: it reads the rollout (`GET
//! /v1/rollouts/<id>`, admin-signed), and [`DRIVERS`] threads, each with its own keep-alive
//! connection, take every host whose snapshot waits on it through its steps with one `POST
//! /v1/agents/rollout` each, signed with that host's key, `seq` one above the snapshot's
//! `last_event_seq`: Dispatched → `Ack`, Acked → `ActivationStarted`, Activating →
//! `ActivationCompleted`, Soaking → a passing `ProbeResult`. The answer's snapshot is the next
//! step's, so a host needs no read of the rollout between its steps; the bench reads the
//! rollout again when half the hosts in hand are through, to find the hosts the server
//! dispatched meanwhile (a host that read shows behind its last answer is left alone: the read
//! began before that answer). Any outcome but `applied`, any HTTP error, a halted rollout or
//! [`ROW_TIMEOUT`] fails the row with what the server said.
//!
//! Figures: wall time; the server's CPU (utime + stime of `/proc/<pid>/stat`, before the start
//! request and after `completed` was seen), both per host; the journal's events of the rollout
//! (from `GET /v1/events`); requests per second; the bench's own CPU (`getrusage`), to show the
//! client was not the limit; the server's RSS. Beside them, in the same run, the floor of any
//! durable journal: the rollout's own event bodies (the same bytes, the same count) written to a
//! bare SQLite file (`events(seq INTEGER PRIMARY KEY, body BLOB)`, WAL, `synchronous=FULL`) in
//! one transaction per request that journaled (the start and each report), one thread.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;
use warden_core::rollout::{HostInput, HostRolloutSnapshot, HostRolloutState, ProbeMode};
use warden_core::CloudEvent;
use warden_runtime::auth::Identity;
use warden_runtime::client::{BlockingClient, ClientConfig};
use warden_runtime::engine::now_ms;
use warden_runtime::proto::{EnrollRequest, RolloutReport, RolloutReportResponse};
use warden_runtime::view::{HostView, RolloutRequest, RolloutView};

use crate::common::control_plane::{client_config, parallel, start_control_plane, Api};
use crate::common::process::{progress, tail, wait_until, Proc};
use crate::common::stats::sorted;
use crate::common::table::{fmt_ms, fmt_ratio, fmt_s, group_thousands, machine_summary, one_line};
use crate::journal::open_raw_sqlite;

/// The table's rows: hosts per fleet, each on a control plane of its own, unless
/// `WARDEN_BENCH_ROLLOUT_HOSTS` (e.g. `10,3`) says otherwise.
const FLEET_SIZES: [usize; 2] = [1000, 100];
/// Threads posting the hosts' reports, each with its own HTTP connection.
const DRIVERS: usize = 8;
/// A row that has not finished in this time (enrollment included) fails.
const ROW_TIMEOUT: Duration = Duration::from_secs(300);
/// One request that takes this long is an error, not a slow figure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A Soaking host whose passing probe did not converge it is probed again on a later read; more
/// probes than this per host means the server does not converge hosts at all.
const MAX_PROBES_PER_HOST: u64 = 3;

const CHANNEL: &str = "bench";
const TARGET: &str = "system-2";
const PROBE: &str = "health";
const POLICY: &str = r#"waves = [1, "10%", "100%"]
max_in_flight = 100
soak = "0s"
activate = ["true"]
rollback = ["true"]

[[probes]]
name = "health"
exec = ["true"]
interval = "1s"
timeout = "1s"
"#;

// ---------------------------------------------------------------------------------------------
// The control plane and the simulated fleet
// ---------------------------------------------------------------------------------------------

/// A `warden server` on its own port, data dir and config dir; dropping it kills the server,
/// then removes the directory.
struct ControlPlane {
    server: Proc,
    root: TempDir,
    /// The server's `host:port`.
    addr: String,
    /// Signed with the admin key the server created.
    admin: Api,
    join_token: String,
}

impl ControlPlane {
    fn start() -> Result<ControlPlane> {
        let root = tempfile::tempdir()?;
        let (server, port, _, config_home, join_token) = start_control_plane(root.path())?;
        let addr = format!("127.0.0.1:{port}");
        let identity = Identity::load(&config_home.join("warden/admin.key"))?;
        let admin = Api::new(&addr, identity, REQUEST_TIMEOUT)?;
        Ok(ControlPlane { server, root, addr, admin, join_token })
    }

    fn log_tail(&self) -> String {
        tail(&std::fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default(), 800).to_string()
    }

    fn hosts(&self) -> Result<Vec<HostView>> {
        Ok(serde_json::from_slice(&self.admin.request("GET", "/v1/hosts", b"")?)?)
    }

    fn rollout(&self, rollout_id: &str) -> Result<RolloutView> {
        // A thousand snapshots can pass 10 MB: the client sets no limit.
        Ok(serde_json::from_slice(&self.admin.request("GET", &format!("/v1/rollouts/{rollout_id}"), b"")?)?)
    }

    /// Every journaled event with seq > `after`.
    fn events_after(&self, after: u64) -> Result<Vec<CloudEvent>> {
        let answer = self.admin.request("GET", &format!("/v1/events?after={after}"), b"")?;
        answer.lines().map(|line| Ok(serde_json::from_str(&line?)?)).collect()
    }
}

/// A host the bench plays: a name and the key it enrolled with.
struct SimulatedHost {
    name: String,
    identity: Arc<Identity>,
}

/// A client of the control plane keeping up to `idle_connections` keep-alive connections; it
/// signs as each host in turn (`post_signed`).
fn http_client(plane: &ControlPlane, idle_connections: usize) -> Result<BlockingClient> {
    let config = ClientConfig { idle_connections_per_host: idle_connections, ..client_config(&plane.addr)? };
    Ok(BlockingClient::unsigned(&plane.addr, &config)?)
}

/// `POST path` signed by `identity`, through `client`'s connections; the answer's body. A
/// refusal is an error naming the request, the status and the server's message.
fn post_signed(client: &BlockingClient, identity: &Arc<Identity>, path: &str, body: &[u8]) -> Result<Vec<u8>> {
    let (_, answer) = client
        .with_identity(identity.clone())
        .call("POST", path, body, Some(REQUEST_TIMEOUT))
        .with_context(|| format!("POST {path}"))?;
    Ok(answer)
}

/// Enrolls `n_hosts` fresh keys in channel `bench`, [`DRIVERS`] at a time.
fn enroll_fleet(plane: &ControlPlane, n_hosts: usize) -> Result<Vec<SimulatedHost>> {
    let client = http_client(plane, DRIVERS)?;
    parallel(n_hosts, DRIVERS, |i| {
        let name = format!("sim-{i:04}");
        let host = SimulatedHost { identity: Arc::new(Identity::generate(&name)), name };
        let request = EnrollRequest {
            join_token: plane.join_token.clone(),
            name: host.name.clone(),
            channel: Some(CHANNEL.into()),
            tags: vec![],
        };
        post_signed(&client, &host.identity, "/v1/agents/enroll", &serde_json::to_vec(&request)?)
            .with_context(|| format!("enrolling {}", host.name))?;
        Ok(host)
    })
}

// ---------------------------------------------------------------------------------------------
// Playing the agents
// ---------------------------------------------------------------------------------------------

/// What the drive did, besides completing the rollout.
#[derive(Default)]
struct Drive {
    /// Reports answered `applied`.
    n_reports: u64,
    /// Passing probes posted (one per host when each converges on its first).
    n_probes: u64,
    report_latencies_ns: Vec<u64>,
    view_latencies_ns: Vec<u64>,
    /// Instant the read that saw `completed` was answered.
    completed_at: Option<Instant>,
}

/// Shared by the reading thread and the drivers.
struct DriveState<'a> {
    plane: &'a ControlPlane,
    hosts: &'a [SimulatedHost],
    rollout_id: &'a str,
    /// Hosts handed to a driver and not yet through.
    in_hand: Mutex<HashSet<usize>>,
    /// Each host's `last_event_seq` in the latest answer to its reports: a read of the rollout
    /// begun before that answer shows the host a step behind, and must not send it round again.
    answered_seq: Vec<AtomicU64>,
    /// The first error any driver met; the others stop.
    failure: Mutex<Option<anyhow::Error>>,
    stop: AtomicBool,
    n_reports: AtomicU64,
    n_probes: AtomicU64,
}

impl DriveState<'_> {
    fn fail(&self, error: anyhow::Error) {
        self.failure.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(error);
        self.stop.store(true, Ordering::Relaxed);
    }

    fn n_in_hand(&self) -> usize {
        self.in_hand.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// Whether the host's next step is the agent's (a report), not the control plane's.
fn waits_on_agent(state: HostRolloutState) -> bool {
    match state {
        HostRolloutState::Dispatched | HostRolloutState::Acked | HostRolloutState::Activating | HostRolloutState::Soaking => true,
        HostRolloutState::Pending
        | HostRolloutState::Converged
        | HostRolloutState::Failed
        | HostRolloutState::Reverting
        | HostRolloutState::Reverted => false,
    }
}

/// Reads the rollout and hands every host that waits on its agent to a driver, until the view
/// says `completed` (or the deadline passes, or a driver fails).
fn drive_rollout(plane: &ControlPlane, hosts: &[SimulatedHost], rollout_id: &str, deadline: Instant) -> Result<Drive> {
    let index: HashMap<&str, usize> = hosts.iter().enumerate().map(|(i, h)| (h.name.as_str(), i)).collect();
    let state = DriveState {
        plane,
        hosts,
        rollout_id,
        in_hand: Mutex::new(HashSet::new()),
        answered_seq: hosts.iter().map(|_| AtomicU64::new(0)).collect(),
        failure: Mutex::new(None),
        stop: AtomicBool::new(false),
        n_reports: AtomicU64::new(0),
        n_probes: AtomicU64::new(0),
    };
    let (jobs, queue) = mpsc::channel::<(usize, HostRolloutSnapshot)>();
    let queue = Mutex::new(queue);
    let mut drive = Drive::default();
    let read = std::thread::scope(|scope| {
        let drivers: Vec<_> = (0..DRIVERS).map(|_| scope.spawn(|| driver(&state, &queue))).collect();
        let read = read_until_completed(&state, &index, &jobs, deadline, &mut drive);
        state.stop.store(true, Ordering::Relaxed);
        drop(jobs);
        for handle in drivers {
            match handle.join() {
                Ok(latencies) => drive.report_latencies_ns.extend(latencies),
                Err(_) => state.fail(anyhow!("a driver thread panicked")),
            }
        }
        read
    });
    if let Some(error) = state.failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
        return Err(error);
    }
    read?;
    drive.n_reports = state.n_reports.into_inner();
    drive.n_probes = state.n_probes.into_inner();
    Ok(drive)
}

fn read_until_completed(
    state: &DriveState<'_>,
    index: &HashMap<&str, usize>,
    jobs: &mpsc::Sender<(usize, HostRolloutSnapshot)>,
    deadline: Instant,
    drive: &mut Drive,
) -> Result<()> {
    loop {
        if state.stop.load(Ordering::Relaxed) {
            return Ok(()); // a driver failed; its error is the row's
        }
        let asked = Instant::now();
        let view = state.plane.rollout(state.rollout_id)?;
        drive.view_latencies_ns.push(asked.elapsed().as_nanos() as u64);
        match view.state.as_str() {
            "completed" => {
                drive.completed_at = Some(Instant::now());
                return Ok(());
            }
            "running" => {}
            other => bail!(
                "rollout {} is {other} (halted: {:?}; blocked: {}; hosts by state: {})",
                state.rollout_id,
                view.halted,
                serde_json::to_string(&view.blocked)?,
                hosts_by_state(&view)
            ),
        }
        if Instant::now() >= deadline {
            bail!(
                "rollout {} not completed within {} s (wave {}, blocked: {}; hosts by state: {})",
                state.rollout_id,
                ROW_TIMEOUT.as_secs(),
                view.wave,
                serde_json::to_string(&view.blocked)?,
                hosts_by_state(&view)
            );
        }
        let n_in_hand = {
            let mut in_hand = state.in_hand.lock().unwrap_or_else(PoisonError::into_inner);
            for snapshot in view.hosts.into_iter().filter(|s| waits_on_agent(s.state)) {
                let i = *index
                    .get(snapshot.hostname.as_str())
                    .ok_or_else(|| anyhow!("the rollout names a host the bench did not enroll: {}", snapshot.hostname))?;
                let stale = snapshot.last_event_seq < state.answered_seq[i].load(Ordering::Relaxed);
                if !stale && in_hand.insert(i) {
                    jobs.send((i, snapshot)).map_err(|_| anyhow!("every driver has stopped"))?;
                }
            }
            in_hand.len()
        };
        // The server dispatches the next hosts as these converge: read again once half are
        // through, so the drivers keep busy without a read per report.
        if n_in_hand == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        while n_in_hand > 0 && state.n_in_hand() > n_in_hand / 2 && !state.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn hosts_by_state(view: &RolloutView) -> String {
    let mut counts = BTreeMap::new();
    for snapshot in &view.hosts {
        *counts.entry(snapshot.state.name()).or_insert(0usize) += 1;
    }
    counts.iter().map(|(state, n)| format!("{state} {n}")).collect::<Vec<_>>().join(", ")
}

/// One driver thread: takes hosts off the queue and reports each through its steps. Returns the
/// latencies of its reports, in ns.
fn driver(state: &DriveState<'_>, queue: &Mutex<mpsc::Receiver<(usize, HostRolloutSnapshot)>>) -> Vec<u64> {
    let client = match http_client(state.plane, 1) {
        Ok(client) => client,
        Err(error) => {
            state.fail(error);
            return Vec::new();
        }
    };
    let mut latencies_ns = Vec::new();
    loop {
        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok((i, snapshot)) = job else { return latencies_ns };
        if !state.stop.load(Ordering::Relaxed) {
            if let Err(error) = drive_host(state, &client, i, snapshot, &mut latencies_ns) {
                state.fail(error);
            }
        }
        state.in_hand.lock().unwrap_or_else(PoisonError::into_inner).remove(&i);
    }
}

/// Posts `host`'s reports one after the other, each the step its last snapshot waits for, until
/// it waits on nothing of the agent's (converged, or pending again) or has been probed once.
fn drive_host(
    state: &DriveState<'_>,
    client: &BlockingClient,
    i: usize,
    mut snapshot: HostRolloutSnapshot,
    latencies_ns: &mut Vec<u64>,
) -> Result<()> {
    let host = &state.hosts[i];
    let mut probed = false;
    loop {
        let seq = snapshot.last_event_seq + 1;
        let input = match snapshot.state {
            HostRolloutState::Dispatched => HostInput::Ack { seq, current: None },
            HostRolloutState::Acked => HostInput::ActivationStarted { seq },
            HostRolloutState::Activating => HostInput::ActivationCompleted { seq, current: TARGET.into() },
            HostRolloutState::Soaking if !probed => {
                probed = true;
                if state.n_probes.fetch_add(1, Ordering::Relaxed) >= MAX_PROBES_PER_HOST * state.hosts.len() as u64 {
                    bail!(
                        "{} passing probes posted for {} hosts and the rollout is not complete: {} stays soaking ({})",
                        state.n_probes.load(Ordering::Relaxed),
                        state.hosts.len(),
                        host.name,
                        serde_json::to_string(&snapshot)?
                    );
                }
                HostInput::ProbeResult { seq, probe: PROBE.into(), passed: true, mode: ProbeMode::Enforce, at: now_ms() }
            }
            // Soaking still after a passing probe: the next read of the rollout decides.
            HostRolloutState::Soaking | HostRolloutState::Pending | HostRolloutState::Converged => return Ok(()),
            HostRolloutState::Failed | HostRolloutState::Reverting | HostRolloutState::Reverted => {
                bail!(
                    "host {} is {} in rollout {}: {}",
                    host.name,
                    snapshot.state.name(),
                    state.rollout_id,
                    serde_json::to_string(&snapshot)?
                )
            }
        };
        if state.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let report = RolloutReport { host: host.name.clone(), rollout_id: state.rollout_id.to_string(), input };
        let body = serde_json::to_vec(&report)?;
        let sent = Instant::now();
        let answer = post_signed(client, &host.identity, "/v1/agents/rollout", &body)
            .with_context(|| format!("report {}", String::from_utf8_lossy(&body)))?;
        latencies_ns.push(sent.elapsed().as_nanos() as u64);
        let answer: RolloutReportResponse = serde_json::from_slice(&answer).with_context(|| {
            format!("the answer to report {}: {}", String::from_utf8_lossy(&body), String::from_utf8_lossy(&answer))
        })?;
        if answer.outcome != "applied" {
            bail!(
                "POST /v1/agents/rollout {} was answered with outcome {:?}, snapshot {}",
                String::from_utf8_lossy(&body),
                answer.outcome,
                serde_json::to_string(&answer.snapshot)?
            );
        }
        state.n_reports.fetch_add(1, Ordering::Relaxed);
        state.answered_seq[i].store(answer.snapshot.last_event_seq, Ordering::Relaxed);
        snapshot = answer.snapshot;
    }
}

// ---------------------------------------------------------------------------------------------
// One row: warden, then raw SQLite with the same rows
// ---------------------------------------------------------------------------------------------

struct Measured {
    n_hosts: usize,
    wall: Duration,
    server_cpu_ms: f64,
    client_cpu_ms: f64,
    drive: Drive,
    /// The rollout's events (`rollout.started` and every `rollout.progressed`), canonical bytes.
    rollout_event_bodies: Vec<Vec<u8>>,
    n_progressed: usize,
    /// Anything else journaled while the rollout ran, by type.
    other_events: BTreeMap<String, usize>,
    /// The server's VmRSS before the start request and after completion, and its VmHWM then.
    rss_before_kib: u64,
    rss_after_kib: u64,
    rss_peak_kib: u64,
    raw: Result<RawJournal>,
}

impl Measured {
    fn per_host_ms(&self, ms: f64) -> f64 {
        ms / self.n_hosts as f64
    }

    fn n_requests(&self) -> usize {
        // The start request, every report, every read of the rollout.
        1 + self.drive.n_reports as usize + self.drive.view_latencies_ns.len()
    }
}

struct RawJournal {
    wall: Duration,
    cpu_ms: f64,
    n_transactions: usize,
}

fn measure_fleet(n_hosts: usize) -> Result<Measured> {
    let deadline = Instant::now() + ROW_TIMEOUT;
    let plane = ControlPlane::start()?;
    let result = measure_on(&plane, n_hosts, deadline);
    if result.is_err() {
        progress(format_args!("  server log:\n{}", plane.log_tail()));
    }
    result
}

fn measure_on(plane: &ControlPlane, n_hosts: usize, deadline: Instant) -> Result<Measured> {
    let enrolling = Instant::now();
    let hosts = enroll_fleet(plane, n_hosts)?;
    progress(format_args!("  {n_hosts} hosts enrolled in {}", fmt_s(enrolling.elapsed())));
    // Silent hosts go down after the host TTL; that is setup too, and its events are journaled
    // before the measured window, not in it.
    let left = deadline.saturating_duration_since(Instant::now());
    wait_until(left, "every simulated host to be marked down", || {
        let n_down = plane.hosts()?.iter().filter(|h| h.state == "down").count();
        Ok((n_down == n_hosts).then_some(()))
    })?;
    let seq_before = plane.events_after(0)?.last().map_or(0, |e| e.seq);

    let server_pid = plane.server.pid();
    let rss_before_kib = status_kib(server_pid, "VmRSS")?;
    let policy_toml = POLICY.to_string();
    let request = RolloutRequest {
        target: Some(TARGET.into()),
        channel: Some(CHANNEL.into()),
        policy_file: "bench.toml".into(),
        policy_toml,
        ..RolloutRequest::default()
    };
    let body = serde_json::to_vec(&request)?;
    let (server_cpu_before, client_cpu_before) = (cpu_ms_of(server_pid)?, own_cpu_ms(libc::RUSAGE_SELF));
    let started = Instant::now();
    let view: RolloutView =
        serde_json::from_slice(&plane.admin.request("POST", "/v1/rollouts", &body).context("starting the rollout")?)?;
    let drive = drive_rollout(plane, &hosts, &view.id, deadline)?;
    let completed_at = drive.completed_at.ok_or_else(|| anyhow!("the drive ended without seeing the rollout completed"))?;
    let (server_cpu_after, client_cpu_after) = (cpu_ms_of(server_pid)?, own_cpu_ms(libc::RUSAGE_SELF));
    let (rss_after_kib, rss_peak_kib) = (status_kib(server_pid, "VmRSS")?, status_kib(server_pid, "VmHWM")?);
    let wall = completed_at - started;

    let mut rollout_event_bodies = Vec::new();
    let (mut n_progressed, mut other_events) = (0, BTreeMap::new());
    for event in plane.events_after(seq_before)? {
        let of_rollout = event.data["rollout_id"] == view.id.as_str();
        match event.event_type.as_str() {
            "dev.warden.rollout.progressed.v1" if of_rollout => n_progressed += 1,
            "dev.warden.rollout.started.v1" if of_rollout => {}
            other => {
                *other_events.entry(other.to_string()).or_insert(0) += 1;
                continue;
            }
        }
        rollout_event_bodies.push(event.canonical_bytes());
    }
    progress(format_args!(
        "  warden: {} for {n_hosts} hosts, {} reports, {} rollout events; raw SQLite with the same rows",
        fmt_s(wall),
        drive.n_reports,
        rollout_event_bodies.len()
    ));
    // One transaction per request that journaled: the start and each report.
    let raw = raw_sqlite_journal(&rollout_event_bodies, 1 + drive.n_reports as usize);
    Ok(Measured {
        n_hosts,
        wall,
        server_cpu_ms: server_cpu_after - server_cpu_before,
        client_cpu_ms: client_cpu_after - client_cpu_before,
        drive,
        rollout_event_bodies,
        n_progressed,
        other_events,
        rss_before_kib,
        rss_after_kib,
        rss_peak_kib,
        raw,
    })
}

/// `bodies` in order into a bare SQLite file with warden's durability (WAL,
/// `synchronous=FULL`), spread evenly over `n_transactions` transactions, one thread: what any
/// journal of these rows has to pay.
fn raw_sqlite_journal(bodies: &[Vec<u8>], n_transactions: usize) -> Result<RawJournal> {
    let dir = tempfile::tempdir()?;
    let mut conn = open_raw_sqlite(&dir.path().join("raw.db"))?;
    conn.execute_batch("CREATE TABLE events (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);")?;
    let n_transactions = n_transactions.clamp(1, bodies.len().max(1));
    let cpu_before = own_cpu_ms(libc::RUSAGE_THREAD);
    let started = Instant::now();
    for t in 0..n_transactions {
        let rows = bodies.len() * t / n_transactions..bodies.len() * (t + 1) / n_transactions;
        // IMMEDIATE, as warden's writer does: take the write lock up front.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached("INSERT INTO events (seq, body) VALUES (?1, ?2)")?;
            for seq in rows {
                insert.execute(rusqlite::params![seq as i64 + 1, bodies[seq]])?;
            }
        }
        tx.commit()?;
    }
    Ok(RawJournal { wall: started.elapsed(), cpu_ms: own_cpu_ms(libc::RUSAGE_THREAD) - cpu_before, n_transactions })
}

/// utime + stime of `pid` (all its threads), in ms.
fn cpu_ms_of(pid: u32) -> Result<f64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("warden server (pid {pid}) is gone"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    // After the command name: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    let ticks =
        |n: usize| fields.get(n - 3).and_then(|t| t.parse::<u64>().ok()).ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"));
    // SAFETY: sysconf takes and returns plain integers.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(14)? + ticks(15)?) as f64 * 1000.0 / ticks_per_s)
}

/// User + system CPU of this process (`RUSAGE_SELF`) or this thread (`RUSAGE_THREAD`), in ms.
fn own_cpu_ms(who: libc::c_int) -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a properly sized out-parameter; `who` is one of the two constants.
    if unsafe { libc::getrusage(who, usage.as_mut_ptr()) } != 0 {
        return f64::NAN;
    }
    // SAFETY: getrusage succeeded, so it filled `usage` (and it was zeroed before).
    let usage = unsafe { usage.assume_init() };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("pid {pid} is gone"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or_else(|| anyhow!("no {field} line for pid {pid}"))
}

// ---------------------------------------------------------------------------------------------
// The section and its table
// ---------------------------------------------------------------------------------------------

/// Measures every fleet size on a control plane of its own; returns the section's table.
pub(crate) fn rollout_section() -> String {
    let sizes = fleet_sizes();
    let rows: Vec<(usize, Result<Measured>)> = sizes
        .iter()
        .map(|&n_hosts| {
            progress(format_args!("rollout: {n_hosts} simulated hosts"));
            let measured = measure_fleet(n_hosts);
            if let Err(e) = &measured {
                progress(format_args!("  {n_hosts} hosts: failed: {e:#}"));
            }
            (n_hosts, measured)
        })
        .collect();
    rollout_table(&rows, &sizes)
}

fn fleet_sizes() -> Vec<usize> {
    let Ok(text) = std::env::var("WARDEN_BENCH_ROLLOUT_HOSTS") else { return FLEET_SIZES.to_vec() };
    let sizes: Option<Vec<usize>> = text.split(',').map(|n| n.trim().parse().ok().filter(|&n| n > 0)).collect();
    sizes.filter(|s| !s.is_empty()).unwrap_or_else(|| {
        progress(format_args!(
            "warning: WARDEN_BENCH_ROLLOUT_HOSTS={text:?} is not a list of host counts; using {FLEET_SIZES:?}"
        ));
        FLEET_SIZES.to_vec()
    })
}

fn rollout_table(rows: &[(usize, Result<Measured>)], sizes: &[usize]) -> String {
    let hosts_env = if sizes == FLEET_SIZES {
        String::new()
    } else {
        format!("WARDEN_BENCH_ROLLOUT_HOSTS={} ", sizes.iter().map(usize::to_string).collect::<Vec<_>>().join(","))
    };
    let mut out = String::new();
    let _ = writeln!(out, "## warden rollout\n");
    let _ = writeln!(
        out,
        "Reproduce with `cargo build --release --workspace --bins && {hosts_env}WARDEN_BENCH_ONLY=rollout cargo bench \
         --bench warden_bench`. {}\n",
        machine_summary()
    );
    let _ = writeln!(
        out,
        "| Hosts | Wall, start → completed | Wall / host | warden server CPU / host | raw SQLite wall / host | \
         raw SQLite CPU / host | warden ÷ raw SQLite, wall / CPU | Events journaled (rollout.progressed) | \
         Requests/s (reports + reads) | Bench client CPU / host |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for (n_hosts, measured) in rows {
        let m = match measured {
            Ok(m) => m,
            Err(e) => {
                let _ = writeln!(out, "| {n_hosts} | error: {} | - | - | - | - | - | - | - | - |", one_line(&format!("{e:#}")));
                continue;
            }
        };
        let wall_ms = m.wall.as_secs_f64() * 1000.0;
        let (raw_wall, raw_cpu, ratios) = match &m.raw {
            Ok(raw) => {
                let raw_wall_ms = raw.wall.as_secs_f64() * 1000.0;
                (
                    fmt_ms(m.per_host_ms(raw_wall_ms)),
                    fmt_ms(m.per_host_ms(raw.cpu_ms)),
                    format!("{} / {}", ratio(wall_ms, raw_wall_ms), ratio(m.server_cpu_ms, raw.cpu_ms)),
                )
            }
            Err(e) => (format!("error: {}", one_line(&format!("{e:#}"))), "-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "| {n_hosts} | {} | {} | {} | {raw_wall} | {raw_cpu} | {ratios} | {} ({}) | {} ({} + {}) | {} |",
            fmt_s(m.wall),
            fmt_ms(m.per_host_ms(wall_ms)),
            fmt_ms(m.per_host_ms(m.server_cpu_ms)),
            group_thousands(m.rollout_event_bodies.len() as u64),
            group_thousands(m.n_progressed as u64),
            group_thousands((m.n_requests() as f64 / m.wall.as_secs_f64()).round() as u64),
            group_thousands(m.drive.n_reports),
            group_thousands(m.drive.view_latencies_ns.len() as u64),
            fmt_ms(m.per_host_ms(m.client_cpu_ms)),
        );
    }
    let _ = writeln!(
        out,
        "\nA `warden server` with a fresh data dir and no agents: the bench enrolls the hosts (keys of their own, channel \
         `{CHANNEL}`; setup, as is waiting until the silent hosts are marked down) and plays their agents, {DRIVERS} \
         threads with keep-alive connections posting `/v1/agents/rollout` reports signed with each host's key (`ack`, \
         `activation-started`, `activation-completed`, a passing `health` probe), taking each host's next step from the \
         answer's snapshot and reading `GET /v1/rollouts/<id>` for newly dispatched hosts. Policy: `waves = [1, \"10%\", \
         \"100%\"]`, `max_in_flight = 100`, `soak = \"0s\"`, `activate`/`rollback` = `[\"true\"]` (not run: no agent), one \
         enforce probe. Wall: the start request sent → the read that saw `completed`. Server CPU: utime + stime of \
         /proc/<pid>/stat over the same window, the bench's reads of the rollout included. raw SQLite: the rollout's own \
         events (their canonical bytes, same count) into `events(seq INTEGER PRIMARY KEY, body BLOB)`, WAL, \
         synchronous=FULL, one transaction per request that journaled (the start and each report), one thread, CPU of \
         that thread; warden may commit concurrent reports together (group commit), the raw writer never does."
    );
    for (n_hosts, measured) in rows {
        let Ok(m) = measured else { continue };
        let reports = sorted(&m.drive.report_latencies_ns);
        let reads = sorted(&m.drive.view_latencies_ns);
        let mean_body = m.rollout_event_bodies.iter().map(Vec::len).sum::<usize>() / m.rollout_event_bodies.len().max(1);
        let others = if m.other_events.is_empty() {
            "none".to_string()
        } else {
            m.other_events.iter().map(|(t, n)| format!("{n} × {t}")).collect::<Vec<_>>().join(", ")
        };
        let _ = writeln!(
            out,
            "\n{n_hosts} hosts: report latency p50 {} / p99 {} / max {}; {} reads of the rollout, p50 {} / max {}; {} probes \
             for {n_hosts} hosts; mean event body {mean_body} B; raw SQLite {} transactions; server RSS {} → {} (peak {}); \
             other events journaled meanwhile: {others}.",
            fmt_ns(quantile(&reports, 0.5)),
            fmt_ns(quantile(&reports, 0.99)),
            fmt_ns(reports.last().copied().unwrap_or(0)),
            reads.len(),
            fmt_ns(quantile(&reads, 0.5)),
            fmt_ns(reads.last().copied().unwrap_or(0)),
            m.drive.n_probes,
            m.raw.as_ref().map_or("-".into(), |r| group_thousands(r.n_transactions as u64)),
            fmt_mib(m.rss_before_kib),
            fmt_mib(m.rss_after_kib),
            fmt_mib(m.rss_peak_kib),
        );
    }
    out
}

fn ratio(warden: f64, raw: f64) -> String {
    if raw > 0.0 && warden.is_finite() {
        fmt_ratio(warden / raw)
    } else {
        "-".into()
    }
}

/// Nearest-rank quantile of sorted samples (0 when there are none).
fn quantile(sorted: &[u64], q: f64) -> u64 {
    let rank = (sorted.len() as f64 * q).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied().unwrap_or(0)
}

fn fmt_ns(ns: u64) -> String {
    fmt_ms(ns as f64 / 1e6)
}

fn fmt_mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}
