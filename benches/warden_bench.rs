//! The benchmark table behind `cargo xtask bench`: warden's restart latency, journal throughput,
//! cell start rate, memory per cell, start latency and memory per isolation backend, and the cost
//! of durable jobs, each measured side by side with supervisord, runit, s6, bare process spawns
//! or raw SQLite in the same run and reported as a ratio; failover times on a cluster; and the
//! control plane's cost per host of a rollout.
//!
//! Sections: `restart`, `journal`, `cells`, `memory`, `isolation`, `jobs`, `failover` and
//! `rollout`. The `jobs` figures are:
//!
//! * overhead per state: a job of 1,000 `true` states in one dependency chain on a fresh
//!   `warden up`; (wall − Σ ran_ms) ÷ 1,000, where wall is the run's `RunStarted` →
//!   `RunCompleted` from its view (`finished_at_ms − started_at_ms`, server clock) and Σ ran_ms
//!   sums the step cells' `lifecycle.destroyed` `ran_ms`, i.e. what warden spends per state
//!   outside the state's own process (journal commits, shim, cgroup, scheduling). Beside it,
//!   1,000 sequential `/bin/true` spawns from Rust (`Command::status`), per spawn and in all;
//! * resume time: a run with 100,000 kernel events (50,000 states in a chain, the last one
//!   entered and never closed) written straight into a fresh journal with `SqliteStore`, no cells
//!   run and no projection snapshot taken, then `warden up` on it: spawn → `/v1/health` answers
//!   (open with the hash-chain check, full replay), and spawn → the run has ended (the open
//!   attempt closed as orphaned, and the run `failed` since its retry budget is 0). Beside them,
//!   raw SQLite reading every event body in order and parsing it as JSON, the floor of any replay.
//!
//! `failover` prints a table of its own (see [`failover`]): a `warden server` and three agents on
//! loopback, the primary's whole host SIGKILLed `WARDEN_BENCH_FAILOVER_RUNS` times (default 20)
//! per replication mode (`none`, `warm-standby`, `hot`); p50 / p95 / max of host killed → the
//! new primary's first line, next to the lease TTL, and the runs in which two epochs overlapped.
//! Two more rows (`warm-standby, drain`, `hot, drain`) hand over on purpose instead: `warden
//! hosts drain` of the primary's host → the new primary's first line (the lease is revoked).
//!
//! `rollout` prints a table of its own too (see [`rollout`]): a `warden server` and 1,000 (then
//! 100) hosts the bench simulates itself (enrolled keys, no agent processes), one host activation
//! with `soak = "0s"` driven to `completed` by signed agent reports; wall time and server CPU per
//! host, beside raw SQLite writing the rollout's own events one transaction per report.
//! `WARDEN_BENCH_ROLLOUT_HOSTS=1000,100` sets the fleet sizes.
//!
//! The machine is shared and small, so absolute figures drift from run to run; the ratios between
//! figures taken in one run are what to compare. Progress goes to stderr, the markdown table to
//! stdout. Nothing is asserted: the targets are printed for context only.
//!
//! Needs `target/release/warden-shim` next to `warden` (`cargo xtask bench` builds both first) and
//! `supervisord`, `runsv`/`runsvdir`, `s6-supervise`/`s6-svscan` on the PATH (it installs them).
//! `WARDEN_BENCH_ONLY=restart,journal,cells,memory,isolation,jobs,failover,rollout` runs a
//! subset while developing.
//! The `isolation` section also needs `runc` and a static `/bin/busybox` (Debian's
//! `busybox-static`) for its `isolation = "oci"` rows, and root for `cell` and `oci`.
//!
//! The same binary doubles as the crash-looping workload of the restart test: started with
//! `WARDEN_BENCH_WORKLOAD=<file>` in its environment, it appends `<CLOCK_REALTIME ns> start` and
//! `<ns> exit` to that file and exits with code 1. With `WARDEN_BENCH_TRUTH=<file>` it is the
//! failover test's workload instead, appending `<WARDEN_EPOCH> <CLOCK_MONOTONIC ns>` every 20 ms.

mod failover;
mod rollout;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;
use warden_core::canonical::{sha256_hex, Artifact};
use warden_core::event::GENESIS_HASH;
use warden_core::job::{JobEvent, JobManifest, KernelEvent, RetrySpec, StateSpec};
use warden_core::{CloudEvent, EventData, NewEvent, Projection, Spec};
use warden_runtime::auth::Identity;
use warden_runtime::view::{SubmitRequest, WorkloadView};
use warden_store::conformance::sample_event;
use warden_store::{SqliteStore, Store};

/// Set (to the log file's path) only in the environment of the crash-looping workload.
const WORKLOAD_ENV: &str = "WARDEN_BENCH_WORKLOAD";

/// Restarts sampled from warden: enough for a meaningful p99, in a few seconds.
const FAST_RESTARTS: usize = 200;
/// Restarts sampled from supervisord, runsv and s6-supervise, which each take about a second
/// per restart; the three run at the same time, so this costs ~100 s, not 300.
const SLOW_RESTARTS: usize = 100;
/// Journal throughput cases take turns: this many rounds of one slice each.
const JOURNAL_ROUNDS: u32 = 10;
const JOURNAL_SLICE: Duration = Duration::from_millis(300);
/// Concurrent appenders in the group-commit case.
const JOURNAL_THREADS: usize = 64;
/// Events per append in the batch case.
const JOURNAL_BATCH: usize = 1000;
/// The subject every journal row carries, shaped like a real workload id.
const JOURNAL_SUBJECT: &str = "w-0123456789ab";
/// Cells submitted in the start-rate test.
const RATE_CELLS: usize = 1000;
/// Threads submitting (and stopping) cells over the API.
const API_THREADS: usize = 8;
/// Cells (or services, or programs) per system in the memory test.
const MEMORY_CELLS: usize = 100;
/// Pause after the last memory-test process is up, so every system's lazily touched pages (and
/// supervisord's first state transitions) are in before PSS is read.
const MEMORY_SETTLE: Duration = Duration::from_secs(2);

fn main() {
    // Workload mode first: the restart test measures from this process's first instructions.
    if let Some(log) = std::env::var_os(WORKLOAD_ENV) {
        workload_main(&log);
    }
    if let Some(truth) = std::env::var_os(failover::TRUTH_ENV) {
        failover::truth_writer_main(&truth);
    }
    let only = std::env::var("WARDEN_BENCH_ONLY").unwrap_or_default();
    let wanted = |section: &str| only.is_empty() || only.split(',').any(|s| s.trim() == section);
    check_prerequisites();
    let started = Instant::now();

    let mut rows = Vec::new();
    if wanted("restart") {
        rows.extend(restart_section());
    }
    if wanted("journal") {
        rows.extend(journal_section());
    }
    if wanted("cells") {
        rows.extend(cells_section());
    }
    if wanted("memory") {
        rows.extend(memory_section());
    }
    if wanted("isolation") {
        rows.extend(isolation_section());
    }
    if wanted("jobs") {
        rows.extend(jobs_section());
    }
    let failover = wanted("failover").then(failover::failover_section);
    let rollout = wanted("rollout").then(rollout::rollout_section);
    progress(format_args!("done in {:.0} s", started.elapsed().as_secs_f64()));
    if !rows.is_empty() {
        print_table(&rows);
    }
    for (i, table) in failover.into_iter().chain(rollout).enumerate() {
        print!("{}{table}", if rows.is_empty() && i == 0 { "" } else { "\n" });
    }
}

fn progress(args: std::fmt::Arguments<'_>) {
    eprintln!("[warden_bench] {args}");
}

// ---------------------------------------------------------------------------------------------
// The crash-looping workload
// ---------------------------------------------------------------------------------------------

/// Appends `<ns> start`, then `<ns> exit`, and exits with code 1. Each line is one `write` on an
/// `O_APPEND` descriptor, so lines of successive runs never interleave or tear.
fn workload_main(log: &OsStr) -> ! {
    let started = realtime_ns();
    let mut file = match fs::OpenOptions::new().create(true).append(true).open(log) {
        Ok(file) => file,
        Err(_) => std::process::exit(2),
    };
    let _ = file.write_all(format!("{started} start\n").as_bytes());
    let _ = file.write_all(format!("{} exit\n", realtime_ns()).as_bytes());
    std::process::exit(1)
}

fn realtime_ns() -> u64 {
    // CLOCK_REALTIME: one clock for every process, so stamps written by successive runs compare.
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Waits until `log` holds `want` start lines (or `timeout` passes); returns how many it holds.
fn wait_for_starts(log: &Path, want: usize, timeout: Duration, who: &str) -> usize {
    let deadline = Instant::now() + timeout;
    let mut last_report = Instant::now();
    loop {
        let starts = fs::read_to_string(log).unwrap_or_default().lines().filter(|l| l.ends_with(" start")).count();
        if starts >= want || Instant::now() >= deadline {
            return starts;
        }
        if last_report.elapsed() >= Duration::from_secs(15) {
            progress(format_args!("  {who}: {starts}/{want} starts"));
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Restart latencies in ns: for each `exit` line directly followed by a `start` line, the gap.
fn restart_latencies(log: &Path, max: usize) -> Vec<u64> {
    let text = fs::read_to_string(log).unwrap_or_default();
    let entries: Vec<(u64, bool)> = text
        .lines()
        .filter_map(|line| {
            let (ns, what) = line.split_once(' ')?;
            Some((ns.parse().ok()?, what == "start"))
        })
        .collect();
    entries.windows(2).filter(|w| !w[0].1 && w[1].1).map(|w| w[1].0.saturating_sub(w[0].0)).take(max).collect()
}

// ---------------------------------------------------------------------------------------------
// Processes: start, find, measure, kill
// ---------------------------------------------------------------------------------------------

/// A process this bench started. Dropping it (also while unwinding from a panic) kills it and
/// everything below it.
struct Proc {
    child: Child,
}

impl Proc {
    fn spawn(what: &str, command: &mut Command) -> Result<Proc> {
        let child = command.spawn().with_context(|| format!("cannot start {what}"))?;
        Ok(Proc { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has already exited (e.g. a supervisor that rejected its config).
    fn check_alive(&mut self, what: &str, log: &Path) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{what} exited with {status}: {}", tail(&fs::read_to_string(log).unwrap_or_default(), 800));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill_tree(self.child.id());
        let _ = self.child.wait();
    }
}

/// A stderr log file for a spawned process.
fn log_file(path: &Path) -> Stdio {
    fs::File::create(path).map(Stdio::from).unwrap_or_else(|_| Stdio::null())
}

fn tail(text: &str, max: usize) -> &str {
    let start = text.len().saturating_sub(max);
    let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    &text[start..]
}

/// `(pid, ppid, comm)` of every process on the machine.
fn process_table() -> Vec<(u32, u32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_string();
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid, comm))
        })
        .collect()
}

/// `root` and all its descendants, parents before children.
fn process_tree(root: u32) -> Vec<u32> {
    let table = process_table();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(table.iter().filter(|(_, ppid, _)| *ppid == parent).map(|(pid, _, _)| *pid));
        i += 1;
    }
    tree
}

/// Direct children of `parent` whose command name is `comm`.
fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    process_table().into_iter().filter(|(_, ppid, c)| *ppid == parent && c == comm).map(|(pid, _, _)| pid).collect()
}

fn has_children(pid: u32) -> bool {
    process_table().iter().any(|(_, ppid, _)| *ppid == pid)
}

/// Kills `root` and every descendant. Each process is stopped first, parents before children
/// and until no new one appears, so no supervisor in the tree can restart what is killed.
fn kill_tree(root: u32) {
    let mut stopped: Vec<u32> = Vec::new();
    for _ in 0..50 {
        let fresh: Vec<u32> = process_tree(root).into_iter().filter(|pid| !stopped.contains(pid)).collect();
        if fresh.is_empty() {
            break;
        }
        for pid in fresh {
            signal(pid, libc::SIGSTOP);
            stopped.push(pid);
        }
    }
    for pid in stopped {
        signal(pid, libc::SIGKILL);
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        unsafe { libc::kill(pid, signal) };
    }
}

fn signal_group(pgid: u32, signal: libc::c_int) {
    if let Ok(pgid) = i32::try_from(pgid) {
        // SAFETY: as above; a negative pid names the process group.
        unsafe { libc::kill(-pgid, signal) };
    }
}

/// Field 22 of `/proc/PID/stat` (start time in clock ticks): tells a pid from its reuse.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the same process (same start time) and not a zombie.
fn still_running(pid: u32, started_at: u64) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let mut fields = rest.split_whitespace();
    let state = fields.next().unwrap_or("Z");
    state != "Z" && fields.nth(18).and_then(|t| t.parse().ok()) == Some(started_at)
}

/// Proportional set size in KiB: the process's private pages plus its share of shared ones.
fn pss_kib(pid: u32) -> Result<u64> {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).with_context(|| format!("pid {pid} is gone"))?;
    rollup
        .lines()
        .find_map(|line| line.strip_prefix("Pss:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or_else(|| anyhow!("no Pss line for pid {pid}"))
}

/// Polls `ready` every 50 ms until it returns `Some` or `timeout` passes.
fn wait_until<T>(timeout: Duration, what: &str, ready: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    wait_every(timeout, Duration::from_millis(50), what, ready)
}

/// Polls `ready` every `interval` until it returns `Some` or `timeout` passes.
fn wait_every<T>(timeout: Duration, interval: Duration, what: &str, mut ready: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = ready()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {:.0} s waiting for {what}", timeout.as_secs_f64());
        }
        std::thread::sleep(interval);
    }
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn bench_exe() -> PathBuf {
    std::env::current_exe().expect("the bench knows its own path")
}

// ---------------------------------------------------------------------------------------------
// warden: a real `warden up` and its API
// ---------------------------------------------------------------------------------------------

fn warden_bin() -> &'static str {
    env!("CARGO_BIN_EXE_warden")
}

/// A `warden up` on its own port, data dir and config dir. Dropping it kills the server and
/// every cell it started.
struct WardenServer {
    root: TempDir,
    port: u16,
    server: Option<Proc>,
}

impl WardenServer {
    fn start() -> Result<WardenServer> {
        let mut warden = WardenServer::new()?;
        warden.launch(Duration::from_millis(20), Duration::from_secs(20))?;
        Ok(warden)
    }

    /// Its directories and port, with no server yet: the caller may seed the data dir first.
    fn new() -> Result<WardenServer> {
        let root = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Ok(WardenServer { root, port, server: None })
    }

    /// Starts `warden up` and waits until `/v1/health` answers, polling every `poll`. Returns the
    /// instant just before the spawn and how long after it the health check first answered.
    fn launch(&mut self, poll: Duration, timeout: Duration) -> Result<(Instant, Duration)> {
        let log = self.root.path().join("up.log");
        let spawned = Instant::now();
        let server = Proc::spawn(
            "warden up",
            Command::new(warden_bin())
                .args(["up", "--listen", &self.addr(), "--data-dir"])
                .arg(self.data_dir())
                .env("XDG_CONFIG_HOME", self.config_home())
                .stdout(Stdio::null())
                .stderr(log_file(&log)),
        )?;
        self.server = Some(server);
        let health = format!("http://{}/v1/health", self.addr());
        let deadline = spawned + timeout;
        while ureq::get(&health).call().is_err() {
            if let Some(server) = self.server.as_mut() {
                server.check_alive("warden up", &log)?;
            }
            if Instant::now() >= deadline {
                bail!("warden up did not answer within {:.0} s: {}", timeout.as_secs_f64(), tail(&self.up_log(), 800));
            }
            std::thread::sleep(poll);
        }
        Ok((spawned, spawned.elapsed()))
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn config_home(&self) -> PathBuf {
        self.root.path().join("config")
    }

    fn up_log(&self) -> String {
        fs::read_to_string(self.root.path().join("up.log")).unwrap_or_default()
    }

    fn server_pid(&self) -> u32 {
        self.server.as_ref().map(Proc::pid).unwrap_or(0)
    }

    /// The `warden` CLI against this server, as a user would run it.
    fn cli(&self, args: &[&OsStr]) -> Result<String> {
        warden_cli(&self.addr(), &self.config_home(), args)
    }

    fn api(&self) -> Result<Api> {
        let identity = Identity::load(&self.config_home().join("warden/admin.key"))?;
        let agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(5)).timeout(Duration::from_secs(60)).build();
        Ok(Api { base: format!("http://{}", self.addr()), identity, agent })
    }

    /// `shim_pid` of every cell that has written its `pid.json`.
    fn shim_pids(&self) -> Vec<u32> {
        cell_pid_files(&self.data_dir())
            .iter()
            .filter_map(|json| json["shim_pid"].as_u64().and_then(|pid| u32::try_from(pid).ok()))
            .collect()
    }
}

impl Drop for WardenServer {
    fn drop(&mut self) {
        // The server's process tree holds its shims and their workloads...
        drop(self.server.take());
        // ...but a shim whose server died earlier has been re-parented away: find it by pid.json.
        for json in cell_pid_files(&self.data_dir()) {
            if let Some(pid) = json["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) {
                signal_group(pid, libc::SIGKILL); // the workload leads its own process group
            }
            if let Some(pid) = json["shim_pid"].as_u64().and_then(|p| u32::try_from(p).ok()) {
                signal(pid, libc::SIGKILL);
            }
        }
    }
}

/// The `warden` CLI against the server at `addr`, signing with the admin key under
/// `config_home`, as a user would run it; its stdout.
/// A `warden server` (control plane only) on a free loopback port, its data dir and config
/// home under `root`, answering; with its port, data dir, config home and join token.
fn start_control_plane(root: &Path) -> Result<(Proc, u16, PathBuf, PathBuf, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let (data_dir, config_home) = (root.join("data"), root.join("config"));
    let server_log = root.join("server.log");
    let mut server = Proc::spawn(
        "warden server",
        Command::new(warden_bin())
            .args(["server", "--listen", &addr, "--data-dir"])
            .arg(&data_dir)
            .env("XDG_CONFIG_HOME", &config_home)
            .stdout(Stdio::null())
            .stderr(log_file(&server_log)),
    )?;
    let health = format!("http://{addr}/v1/health");
    wait_until(Duration::from_secs(20), "warden server to answer", || {
        server.check_alive("warden server", &server_log)?;
        Ok(ureq::get(&health).call().is_ok().then_some(()))
    })?;
    let join_token = std::fs::read_to_string(data_dir.join("join-token")).context("warden server wrote no join-token")?;
    Ok((server, port, data_dir, config_home, join_token.trim().to_string()))
}

fn warden_cli(addr: &str, config_home: &Path, args: &[&OsStr]) -> Result<String> {
    let Output { status, stdout, stderr } =
        Command::new(warden_bin()).args(args).env("WARDEN_ADDR", addr).env("XDG_CONFIG_HOME", config_home).output()?;
    if !status.success() {
        bail!("warden {args:?} failed: {}", String::from_utf8_lossy(&stderr));
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

fn cell_pid_files(data_dir: &Path) -> Vec<serde_json::Value> {
    let Ok(entries) = fs::read_dir(data_dir.join("cells")) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| serde_json::from_str(&fs::read_to_string(entry.path().join("pid.json")).ok()?).ok())
        .collect()
}

/// Signed requests to warden's HTTP API (what the CLI does, without a process per request).
struct Api {
    base: String,
    identity: Identity,
    agent: ureq::Agent,
}

impl Api {
    fn request(&self, method: &str, path: &str, body: &[u8]) -> Result<ureq::Response> {
        let authorization = self.identity.authorization(method, path, body, warden_runtime::engine::now_ms());
        let request = self.agent.request(method, &format!("{}{path}", self.base)).set("Authorization", &authorization);
        let result =
            if body.is_empty() { request.call() } else { request.set("Content-Type", "application/json").send_bytes(body) };
        match result {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(code, response)) => bail!("{method} {path}: HTTP {code}: {}", response.into_string()?),
            Err(e) => bail!("{method} {path}: {e}"),
        }
    }

    fn submit(&self, file: &str, spec_toml: &str) -> Result<WorkloadView> {
        let body = serde_json::to_vec(&SubmitRequest {
            file: file.to_string(),
            spec_toml: spec_toml.to_string(),
            consumer_workload_id: None,
        })?;
        Ok(serde_json::from_str(&self.request("POST", "/v1/workloads", &body)?.into_string()?)?)
    }

    /// Live (non-terminal) workloads.
    fn list(&self) -> Result<Vec<WorkloadView>> {
        Ok(serde_json::from_str(&self.request("GET", "/v1/workloads", b"")?.into_string()?)?)
    }

    fn status(&self, id: &str) -> Result<WorkloadView> {
        Ok(serde_json::from_str(&self.request("GET", &format!("/v1/workloads/{id}"), b"")?.into_string()?)?)
    }

    fn stop(&self, id: &str) -> Result<()> {
        self.request("POST", &format!("/v1/workloads/{id}/stop"), b"")?;
        Ok(())
    }

    /// `POST /v1/jobs`: starts a run of the manifest; returns its run view.
    fn job_run(&self, file: &str, manifest_toml: &str) -> Result<serde_json::Value> {
        let body = serde_json::to_vec(&serde_json::json!({ "file": file, "manifest_toml": manifest_toml }))?;
        Ok(serde_json::from_reader(self.request("POST", "/v1/jobs", &body)?.into_reader())?)
    }

    /// A run's view, read as a stream: the view of a run of many states is larger than the
    /// 10 MB that `into_string` accepts.
    fn job(&self, run_id: &str) -> Result<serde_json::Value> {
        Ok(serde_json::from_reader(self.request("GET", &format!("/v1/jobs/{run_id}"), b"")?.into_reader())?)
    }

    /// Every journaled event with seq > `after`, as parsed CloudEvents.
    fn events_after(&self, after: u64) -> Result<Vec<serde_json::Value>> {
        let response = self.request("GET", &format!("/v1/events?after={after}"), b"")?;
        BufReader::new(response.into_reader()).lines().map(|line| Ok(serde_json::from_str(&line?)?)).collect()
    }
}

/// A spec for a cell that just sleeps and is never restarted.
fn sleeper_spec(n: usize) -> String {
    format!("name = \"sleep-{n}\"\n[cell]\nargv = [\"sleep\", \"1000\"]\n[restart]\npolicy = \"never\"\n")
}

/// Runs `work(i)` for every `i < n` on `threads` threads; returns the results in index order.
fn parallel<T: Send>(n: usize, threads: usize, work: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
    let next = AtomicUsize::new(0);
    let mut results: Vec<(usize, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> Result<Vec<(usize, T)>> {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(mine);
                        }
                        mine.push((i, work(i)?));
                    }
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for worker in workers {
            all.extend(worker.join().map_err(|_| anyhow!("a worker thread panicked"))??);
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    results.sort_by_key(|(i, _)| *i);
    Ok(results.into_iter().map(|(_, t)| t).collect())
}

/// Stops every live workload and waits until none is left.
fn stop_all(api: &Api, ids: &[String]) -> Result<()> {
    parallel(ids.len(), API_THREADS, |i| api.stop(&ids[i]))?;
    wait_until(Duration::from_secs(120), "every workload to stop", || Ok(api.list()?.is_empty().then_some(())))
}

// ---------------------------------------------------------------------------------------------
// 1. Restart latency
// ---------------------------------------------------------------------------------------------

struct Restarts {
    /// Latencies in ns, in the order they happened.
    samples: Vec<u64>,
}

fn restart_section() -> Vec<Row> {
    progress(format_args!("restart latency: warden ({FAST_RESTARTS} restarts)"));
    let warden = restart_warden(FAST_RESTARTS);
    progress(format_args!(
        "restart latency: supervisord, runsv and s6-supervise at once ({SLOW_RESTARTS} restarts each, ~1 s apart: ~{} s)",
        SLOW_RESTARTS + 10
    ));
    // All three wait about a second between restarts (runsv and s6-supervise on purpose,
    // supervisord because it restarts on the poll tick after it reaped), so they run side by
    // side in time: asleep almost always, none of them disturbs the others.
    let (supervisord, runit, s6) = std::thread::scope(|scope| {
        let supervisord = scope.spawn(|| restart_supervisord(SLOW_RESTARTS));
        let runit = scope.spawn(|| restart_runit(SLOW_RESTARTS));
        let s6 = scope.spawn(|| restart_s6(SLOW_RESTARTS));
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<Restarts>>| h.join().unwrap_or_else(|_| Err(anyhow!("panicked")));
        (join(supervisord), join(runit), join(s6))
    });

    let alternatives = [("supervisord", &supervisord), ("runsv", &runit), ("s6-supervise", &s6)];
    let row = |what: &str, stat: fn(&[u64]) -> f64, note: String| Row {
        metric: what.to_string(),
        warden: figure(&warden, |r| fmt_ms(stat(&r.samples))),
        alternatives: alternatives
            .iter()
            .map(|(who, result)| Alt {
                who: who.to_string(),
                figure: figure(result, |r| fmt_ms(stat(&r.samples))),
                ratio: ratio_of(&warden, |r| stat(&r.samples), result, |r| stat(&r.samples)),
            })
            .collect(),
        note,
    };
    let counts = |r: &Result<Restarts>| r.as_ref().map(|r| r.samples.len().to_string()).unwrap_or_else(|_| "-".into());
    vec![
        row(
            "Restart latency, median (exit → next exec; lower is better)",
            median_ms,
            format!(
                "n = {} warden, {} supervisord, {} runsv, {} s6. Target: first restart < 5 ms median",
                counts(&warden),
                counts(&supervisord),
                counts(&runit),
                counts(&s6)
            ),
        ),
        row(
            "Restart latency, p99",
            p99_ms,
            "runsv and s6-supervise deliberately wait ~1 s before restarting a program that ran < 1 s; supervisord \
             restarts on its next 1 s poll tick after reaping"
                .into(),
        ),
    ]
}

/// warden with `policy = "always"`, no backoff; every decision is fsynced before it is acted on.
fn restart_warden(n: usize) -> Result<Restarts> {
    let warden = WardenServer::start()?;
    let log = warden.root.path().join("restarts.log");
    let spec = format!(
        "name = \"crashloop\"\n[cell]\nargv = [{exe}]\nenv = {{ {WORKLOAD_ENV} = {log} }}\n\
         [restart]\npolicy = \"always\"\nbackoff = \"0s\"\nbackoff_max = \"0s\"\n",
        exe = toml_string(&bench_exe()),
        log = toml_string(&log),
    );
    let spec_path = warden.root.path().join("crashloop.toml");
    fs::write(&spec_path, spec)?;
    let out = warden.cli(&[OsStr::new("run"), spec_path.as_os_str()])?;
    let id = out.lines().last().ok_or_else(|| anyhow!("warden run printed no id"))?.trim().to_string();
    let got = wait_for_starts(&log, n + 1, Duration::from_secs(120), "warden");
    let _ = warden.cli(&[OsStr::new("stop"), OsStr::new(&id)]);
    collect_restarts(&log, n, got, "warden", || tail(&warden.up_log(), 800).to_string())
}

/// supervisord 4 with one changed setting: `startsecs=0`. With the default (1 s) a program that
/// exits at once never counts as started: it goes to BACKOFF and, after `startretries`, FATAL.
fn restart_supervisord(n: usize) -> Result<Restarts> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("restarts.log");
    let program = format!(
        "[program:crashloop]\ncommand={exe}\nenvironment={WORKLOAD_ENV}=\"{log}\"\nstartsecs=0\n",
        exe = bench_exe().display(),
        log = log.display()
    );
    let (mut supervisord, conf_log) = start_supervisord(dir.path(), &program)?;
    let got = wait_for_starts(&log, n + 1, slow_timeout(n), "supervisord");
    supervisord.check_alive("supervisord", &conf_log)?;
    drop(supervisord);
    collect_restarts(&log, n, got, "supervisord", || tail(&fs::read_to_string(&conf_log).unwrap_or_default(), 800).into())
}

/// `supervisord -n -c CONF` with `programs` (config sections) and its logs in `dir`.
fn start_supervisord(dir: &Path, programs: &str) -> Result<(Proc, PathBuf)> {
    let conf = dir.join("supervisord.conf");
    let stderr_log = dir.join("supervisord.stderr");
    fs::write(
        &conf,
        format!(
            "[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\nchildlogdir={d}\n\n{programs}",
            d = dir.display()
        ),
    )?;
    let proc = Proc::spawn(
        "supervisord",
        Command::new("supervisord").arg("-n").arg("-c").arg(&conf).stdout(Stdio::null()).stderr(log_file(&stderr_log)),
    )?;
    Ok((proc, stderr_log))
}

/// runit's `runsv DIR`, defaults untouched.
fn restart_runit(n: usize) -> Result<Restarts> {
    restart_daemontools_style("runsv", n)
}

/// s6's `s6-supervise DIR`, defaults untouched.
fn restart_s6(n: usize) -> Result<Restarts> {
    restart_daemontools_style("s6-supervise", n)
}

/// runsv and s6-supervise share the daemontools layout: a directory with an executable `run`.
/// `run` is a symlink to this binary rather than the usual `#!/bin/sh` + `exec` script, so no
/// shell sits between the supervisor and the workload (as with warden and supervisord); the
/// workload's log path reaches it through the supervisor's own environment, which it inherits.
fn restart_daemontools_style(supervisor: &str, n: usize) -> Result<Restarts> {
    let dir = tempfile::tempdir()?;
    let service = dir.path().join("crashloop");
    fs::create_dir(&service)?;
    std::os::unix::fs::symlink(bench_exe(), service.join("run"))?;
    let log = dir.path().join("restarts.log");
    let stderr_log = dir.path().join("supervisor.stderr");
    let mut proc = Proc::spawn(
        supervisor,
        Command::new(supervisor)
            .arg(&service)
            .env(WORKLOAD_ENV, &log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&stderr_log)),
    )?;
    let got = wait_for_starts(&log, n + 1, slow_timeout(n), supervisor);
    proc.check_alive(supervisor, &stderr_log)?;
    drop(proc);
    collect_restarts(&log, n, got, supervisor, || tail(&fs::read_to_string(&stderr_log).unwrap_or_default(), 800).into())
}

/// How long `n` restarts about a second apart may take before the bench reports what it has.
fn slow_timeout(n: usize) -> Duration {
    Duration::from_millis(1500) * (n as u32 + 1) + Duration::from_secs(10)
}

fn collect_restarts(log: &Path, n: usize, starts: usize, who: &str, diagnostics: impl FnOnce() -> String) -> Result<Restarts> {
    let samples = restart_latencies(log, n);
    if samples.is_empty() {
        bail!("{who} restarted nothing ({starts} starts): {}", diagnostics());
    }
    if samples.len() < n {
        progress(format_args!("  {who}: only {} of {n} restarts before the timeout", samples.len()));
    }
    Ok(Restarts { samples })
}

fn toml_string(path: &Path) -> String {
    // A JSON string literal is a valid TOML basic string for any path this bench creates.
    serde_json::to_string(&path.display().to_string()).expect("a string serializes")
}

fn sorted(samples: &[u64]) -> Vec<u64> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    sorted
}

fn median(samples: &[u64]) -> f64 {
    let s = sorted(samples);
    let mid = s.len() / 2;
    if s.len().is_multiple_of(2) {
        (s[mid - 1] + s[mid]) as f64 / 2.0
    } else {
        s[mid] as f64
    }
}

/// Median of ns samples, in ms.
fn median_ms(samples: &[u64]) -> f64 {
    median(samples) / 1e6
}

/// 99th percentile (nearest rank) of ns samples, in ms.
fn p99_ms(samples: &[u64]) -> f64 {
    let s = sorted(samples);
    let rank = ((s.len() as f64) * 0.99).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1] as f64 / 1e6
}

// ---------------------------------------------------------------------------------------------
// 2. Journal throughput
// ---------------------------------------------------------------------------------------------

fn journal_section() -> Vec<Row> {
    progress(format_args!("journal: {JOURNAL_ROUNDS} rounds of {} ms per case, cases interleaved", JOURNAL_SLICE.as_millis()));
    let mut cases: Vec<(String, Result<JournalCase>)> = vec![
        ("warden, 1 appender".into(), warden_case(1, 1)),
        (format!("warden, {JOURNAL_THREADS} appenders"), warden_case(JOURNAL_THREADS, 1)),
        (format!("warden, batches of {JOURNAL_BATCH}"), warden_case(1, JOURNAL_BATCH)),
        ("rusqlite, 1 row per transaction".into(), raw_case(1)),
        (format!("rusqlite, {JOURNAL_BATCH} rows per transaction"), raw_case(JOURNAL_BATCH)),
    ];
    // fsync latency on a shared disk swings by 10× within seconds (other builds, other tests),
    // so the cases take turns in short slices: each one sees the same mix of good and bad moments.
    let mut tallies = vec![(0u64, Duration::ZERO); cases.len()];
    for _ in 0..JOURNAL_ROUNDS {
        for ((_, case), tally) in cases.iter_mut().zip(&mut tallies) {
            if let Ok(run) = case {
                let started = Instant::now();
                match run(JOURNAL_SLICE) {
                    Ok(events) => {
                        tally.0 += events;
                        tally.1 += started.elapsed();
                    }
                    Err(e) => *case = Err(e),
                }
            }
        }
    }
    let rates: Vec<Result<f64>> = cases
        .into_iter()
        .zip(tallies)
        .map(|((name, case), (events, elapsed))| {
            let rate = case.map(|_| events as f64 / elapsed.as_secs_f64());
            progress(format_args!("  {name}: {}", figure(&rate, |r| fmt_rate(*r))));
            rate
        })
        .collect();
    let [single, group, batch, raw_single, raw_batch]: [Result<f64>; 5] = rates.try_into().expect("five cases");

    let row = |metric: String, warden: &Result<f64>, who: &str, raw: &Result<f64>, note: &str| Row {
        metric,
        warden: figure(warden, |r| fmt_rate(*r)),
        alternatives: vec![Alt {
            who: who.to_string(),
            figure: figure(raw, |r| fmt_rate(*r)),
            ratio: ratio_of(warden, |r| *r, raw, |r| *r),
        }],
        note: note.to_string(),
    };
    let raw_one = "raw rusqlite, 1 row/tx";
    vec![
        row(
            "Journal, 1 appender, 1 event/append (durable events/s; higher is better)".into(),
            &single,
            raw_one,
            &raw_single,
            "every append waits for its own fsync",
        ),
        row(
            format!("Journal, {JOURNAL_THREADS} concurrent appenders, 1 event/append (group commit)"),
            &group,
            raw_one,
            &raw_single,
            "baseline: what one transaction per event gets; target ≥ 50,000 durable events/s",
        ),
        row(
            format!("Journal, batches of {JOURNAL_BATCH} events/append"),
            &batch,
            &format!("raw rusqlite, {JOURNAL_BATCH} rows/tx"),
            &raw_batch,
            "warden also seals, hashes and chains each event",
        ),
    ]
}

/// One journal throughput case: runs for about the given time and returns how many events it
/// made durable.
type JournalCase = Box<dyn FnMut(Duration) -> Result<u64>>;

/// `SqliteStore::append` from `threads` appenders, `per_append` events per call.
fn warden_case(threads: usize, per_append: usize) -> Result<JournalCase> {
    let dir = tempfile::tempdir()?;
    let (store, _) = SqliteStore::open(&dir.path().join("journal.db"))?;
    let mut next_n = 0u64;
    Ok(Box::new(move |slice| {
        let _keep = &dir;
        let appended = AtomicU64::new(0);
        let deadline = Instant::now() + slice;
        let first_n = next_n;
        next_n += 1 << 40;
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads as u64)
                .map(|t| {
                    let (store, appended) = (&store, &appended);
                    scope.spawn(move || -> Result<()> {
                        let mut n = first_n + (t << 32);
                        while Instant::now() < deadline {
                            let events = (0..per_append)
                                .map(|_| {
                                    n += 1;
                                    sample_event(n, Some(JOURNAL_SUBJECT))
                                })
                                .collect();
                            appended.fetch_add(store.append(events)?.len() as u64, Ordering::Relaxed);
                        }
                        Ok(())
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| w.join().map_err(|_| anyhow!("an appender panicked"))?)
        })?;
        Ok(appended.into_inner())
    }))
}

/// A bare SQLite file with warden's durability (`journal_mode=WAL`, `synchronous=FULL`): the
/// reference every journal figure is compared with.
fn open_raw_sqlite(path: &Path) -> Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!("raw SQLite file is not in WAL mode ({mode})");
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Rows into a bare SQLite file with warden's durability (`journal_mode=WAL`,
/// `synchronous=FULL`) and warden's `events` table, one thread, `per_tx` rows per transaction.
/// Every row has exactly the bytes of a sealed sample event, so the ratio is warden's own cost.
fn raw_case(per_tx: usize) -> Result<JournalCase> {
    let dir = tempfile::tempdir()?;
    let mut conn = open_raw_sqlite(&dir.path().join("raw.db"))?;
    conn.execute_batch(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, subject TEXT, hash TEXT NOT NULL, body BLOB NOT NULL);
         CREATE INDEX events_subject_seq ON events (subject, seq);",
    )?;
    let sealed = CloudEvent::seal(&sample_event(1, Some(JOURNAL_SUBJECT)), 1, GENESIS_HASH);
    let body = sealed.canonical_bytes();
    let hash = sha256_hex(&body);
    let mut seq: i64 = 0;
    Ok(Box::new(move |slice| {
        let _keep = &dir;
        let first = seq;
        let deadline = Instant::now() + slice;
        while Instant::now() < deadline {
            // IMMEDIATE, as warden's writer does: take the write lock up front.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut insert = tx.prepare_cached("INSERT INTO events (seq, subject, hash, body) VALUES (?1, ?2, ?3, ?4)")?;
                for _ in 0..per_tx {
                    seq += 1;
                    insert.execute(rusqlite::params![seq, JOURNAL_SUBJECT, hash, body])?;
                }
            }
            tx.commit()?;
        }
        Ok((seq - first) as u64)
    }))
}

// ---------------------------------------------------------------------------------------------
// 3. Cells started per second
// ---------------------------------------------------------------------------------------------

struct CellRate {
    per_sec: f64,
    to_running: Duration,
    to_stopped: Duration,
    left_behind: usize,
}

fn cells_section() -> Vec<Row> {
    progress(format_args!("cells: {RATE_CELLS} `sleep 1000` cells from {API_THREADS} API threads"));
    let rate = cell_rate(RATE_CELLS);
    let note = match &rate {
        Ok(r) => format!(
            "all running {:.2} s after the first submit; stopping all took {:.2} s; `sleep 1000` left behind: {}. Target ≥ 500 cells/s",
            r.to_running.as_secs_f64(),
            r.to_stopped.as_secs_f64(),
            r.left_behind
        ),
        Err(_) => "Target ≥ 500 cells/s".into(),
    };
    vec![Row {
        metric: format!("Cells started per second, {RATE_CELLS} cells over the HTTP API (higher is better)"),
        warden: figure(&rate, |r| format!("{:.0} cells/s", r.per_sec)),
        alternatives: Vec::new(),
        note,
    }]
}

/// Submits `n` sleepers from several threads and times first submit → n-th
/// `dev.warden.lifecycle.started.v1` on the event stream; then stops them all and checks that
/// every `sleep` it started is gone.
fn cell_rate(n: usize) -> Result<CellRate> {
    let warden = WardenServer::start()?;
    let api = warden.api()?;

    // Follow the event stream from a thread of its own; it reports when it is connected (so no
    // started event can be missed: the server subscribes before it answers) and when it has
    // seen the n-th started event.
    let (connected_tx, connected) = mpsc::channel::<Result<()>>();
    let (all_started_tx, all_started) = mpsc::channel::<Instant>();
    let follow_api = warden.api()?;
    std::thread::spawn(move || {
        let response = match follow_api.request("GET", "/v1/events?follow=true", b"") {
            Ok(response) => response,
            Err(e) => {
                let _ = connected_tx.send(Err(e));
                return;
            }
        };
        let _ = connected_tx.send(Ok(()));
        let mut started = 0;
        for line in BufReader::new(response.into_reader()).lines() {
            let Ok(line) = line else { return };
            if line.contains("\"dev.warden.lifecycle.started.v1\"") {
                started += 1;
                if started == n {
                    let _ = all_started_tx.send(Instant::now());
                    return;
                }
            }
        }
    });
    connected.recv_timeout(Duration::from_secs(10)).context("the event stream did not connect")??;

    let first_submit = Instant::now();
    let ids = parallel(n, API_THREADS, |i| Ok(api.submit(&format!("sleep-{i}.toml"), &sleeper_spec(i))?.info.id))?;
    let all_running =
        all_started.recv_timeout(Duration::from_secs(300)).map_err(|_| anyhow!("not all {n} cells started within 300 s"))?;
    let to_running = all_running - first_submit;
    progress(format_args!("  {n} cells running after {:.2} s", to_running.as_secs_f64()));

    // The workloads' pids, with start times, to check afterwards that stopping left none behind.
    let running: Vec<(u32, u64)> = api
        .list()?
        .iter()
        .filter(|v| v.state == "running")
        .filter_map(|v| v.pid)
        .filter_map(|pid| Some((pid, start_time(pid)?)))
        .collect();
    if running.len() != n {
        progress(format_args!("  warning: {} of {n} cells listed as running", running.len()));
    }

    let stop_started = Instant::now();
    stop_all(&api, &ids)?;
    let to_stopped = stop_started.elapsed();
    progress(format_args!("  all stopped after {:.2} s", to_stopped.as_secs_f64()));
    // A workload is `stopped` once its exit is journaled, i.e. after its process was reaped.
    let left: Vec<u32> = running.iter().filter(|(pid, t)| still_running(*pid, *t)).map(|(pid, _)| *pid).collect();
    for pid in &left {
        signal(*pid, libc::SIGKILL);
    }
    Ok(CellRate { per_sec: n as f64 / to_running.as_secs_f64(), to_running, to_stopped, left_behind: left.len() })
}

// ---------------------------------------------------------------------------------------------
// 4. Memory per supervised cell
// ---------------------------------------------------------------------------------------------

/// PSS in KiB: per supervising process (median), and of the one parent over all of them.
struct Memory {
    per_cell_kib: f64,
    parent_kib: u64,
    processes: usize,
}

fn memory_section() -> Vec<Row> {
    progress(format_args!("memory: {MEMORY_CELLS} `sleep 1000` cells per system"));
    let warden = memory_warden(MEMORY_CELLS);
    progress(format_args!("  warden: {}", figure(&warden, |m| fmt_kib(m.per_cell_kib))));
    let runit = memory_runit(MEMORY_CELLS);
    progress(format_args!("  runit: {}", figure(&runit, |m| fmt_kib(m.per_cell_kib))));
    let s6 = memory_s6(MEMORY_CELLS);
    progress(format_args!("  s6: {}", figure(&s6, |m| fmt_kib(m.per_cell_kib))));
    let supervisord = memory_supervisord(MEMORY_CELLS);
    progress(format_args!("  supervisord: {}", figure(&supervisord, |m| fmt_kib(m.per_cell_kib))));

    let per_cell = |m: &Memory| m.per_cell_kib;
    let parent_share = |m: &Memory| m.parent_kib as f64 / MEMORY_CELLS as f64;
    let total = |m: &Memory| m.per_cell_kib + m.parent_kib as f64 / MEMORY_CELLS as f64;
    let alt = |who: &str, result: &Result<Memory>, of: &dyn Fn(&Memory) -> f64| Alt {
        who: who.to_string(),
        figure: figure(result, |m| fmt_kib(of(m))),
        ratio: ratio_of(&warden, of, result, of),
    };
    let counts =
        [&warden, &runit, &s6].map(|r| r.as_ref().map(|m| m.processes.to_string()).unwrap_or_else(|_| "-".into())).join("/");
    vec![
        Row {
            metric: format!("Memory per supervised cell, {MEMORY_CELLS} cells (PSS; lower is better)"),
            warden: figure(&warden, |m| fmt_kib(per_cell(m))),
            alternatives: vec![
                alt("runsv", &runit, &per_cell),
                alt("s6-supervise", &s6, &per_cell),
                alt("supervisord ÷ 100", &supervisord, &per_cell),
            ],
            note: format!(
                "warden: median over its shims; runit, s6: median per runsv / s6-supervise (processes measured: {counts}). \
                 Target ≤ 150 KB per cell"
            ),
        },
        Row {
            metric: format!("Supervisor process ÷ {MEMORY_CELLS} (PSS)"),
            warden: figure(&warden, |m| fmt_kib(parent_share(m))),
            alternatives: vec![alt("runsvdir", &runit, &parent_share), alt("s6-svscan", &s6, &parent_share)],
            note: "`warden up` (API, engine, journal) spread over the cells; supervisord's single process is the row above"
                .into(),
        },
        Row {
            metric: "Total per cell (the two rows above)".into(),
            warden: figure(&warden, |m| fmt_kib(total(m))),
            alternatives: vec![alt("runit", &runit, &total), alt("s6", &s6, &total), alt("supervisord", &supervisord, &per_cell)],
            note: String::new(),
        },
    ]
}

fn memory_warden(n: usize) -> Result<Memory> {
    let warden = WardenServer::start()?;
    let api = warden.api()?;
    let ids = parallel(n, API_THREADS.min(4), |i| Ok(api.submit(&format!("sleep-{i}.toml"), &sleeper_spec(i))?.info.id))?;
    wait_until(Duration::from_secs(60), "every cell to run", || {
        Ok((api.list()?.iter().filter(|v| v.state == "running").count() == n).then_some(()))
    })?;
    std::thread::sleep(MEMORY_SETTLE);
    let shims = warden.shim_pids();
    if shims.len() != n {
        bail!("found {} shim pids for {n} cells", shims.len());
    }
    let memory = measure(&shims, warden.server_pid())?;
    stop_all(&api, &ids)?;
    Ok(memory)
}

/// `runsvdir DIR` over `n` services, each `exec sleep 1000`: one runsv per service.
fn memory_runit(n: usize) -> Result<Memory> {
    memory_svscan_style("runsvdir", "runsv", n)
}

/// `s6-svscan DIR` over `n` services, each `exec sleep 1000`: one s6-supervise per service.
fn memory_s6(n: usize) -> Result<Memory> {
    memory_svscan_style("s6-svscan", "s6-supervise", n)
}

fn memory_svscan_style(scanner: &str, supervisor: &str, n: usize) -> Result<Memory> {
    let dir = tempfile::tempdir()?;
    let services = dir.path().join("services");
    for i in 0..n {
        let service = services.join(format!("sleep-{i}"));
        fs::create_dir_all(&service)?;
        write_executable(&service.join("run"), "#!/bin/sh\nexec sleep 1000\n")?;
    }
    let stderr_log = dir.path().join("scanner.stderr");
    let mut scan = Proc::spawn(
        scanner,
        Command::new(scanner).arg(&services).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log_file(&stderr_log)),
    )?;
    let supervisors = wait_until(Duration::from_secs(60), &format!("{n} {supervisor} with a running service"), || {
        scan.check_alive(scanner, &stderr_log)?;
        let supervisors = children_named(scan.pid(), supervisor);
        Ok((supervisors.len() == n && supervisors.iter().all(|&pid| has_children(pid))).then_some(supervisors))
    })?;
    std::thread::sleep(MEMORY_SETTLE);
    measure(&supervisors, scan.pid())
}

/// One supervisord with `n` programs, each `sleep 1000`: its PSS ÷ n per program.
fn memory_supervisord(n: usize) -> Result<Memory> {
    let dir = tempfile::tempdir()?;
    let mut programs = String::new();
    for i in 0..n {
        let _ = writeln!(programs, "[program:sleep-{i}]\ncommand=sleep 1000\n");
    }
    let (mut supervisord, stderr_log) = start_supervisord(dir.path(), &programs)?;
    wait_until(Duration::from_secs(60), &format!("{n} programs under supervisord"), || {
        supervisord.check_alive("supervisord", &stderr_log)?;
        Ok((children_named(supervisord.pid(), "sleep").len() == n).then_some(()))
    })?;
    std::thread::sleep(MEMORY_SETTLE);
    let pss = pss_kib(supervisord.pid())?;
    Ok(Memory { per_cell_kib: pss as f64 / n as f64, parent_kib: 0, processes: 1 })
}

fn measure(per_cell: &[u32], parent: u32) -> Result<Memory> {
    let pss = per_cell.iter().map(|&pid| pss_kib(pid)).collect::<Result<Vec<u64>>>()?;
    Ok(Memory { per_cell_kib: median(&pss), parent_kib: pss_kib(parent)?, processes: pss.len() })
}

// ---------------------------------------------------------------------------------------------
// 5. Isolation backends: start latency and memory per cell
// ---------------------------------------------------------------------------------------------

/// Timed starts per isolation backend and condition (idle, warm), after one discarded warm-up
/// start each.
const START_SAMPLES: usize = 50;
/// Quiet time before an "idle" start. On the small VMs this was written on, a start right after
/// other activity ("warm") took about half as long as one into a quiet machine, for `process`
/// and `cell` alike (the extra time falls after the POST returned, around the shim's cgroup
/// joins), so both are measured, alternately.
const START_IDLE: Duration = Duration::from_millis(100);
/// The order of the backends in successive rounds: every order once per six rounds, so each
/// backend follows each other one equally often (a start right after an OCI cell ended was
/// measurably slower, and with a fixed order that was charged to one backend).
const START_ORDERS: [[usize; 3]; 6] = [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 2, 1], [2, 1, 0], [1, 0, 2]];
/// `sleep 1000` cells per backend (and services or programs per alternative) in the isolation
/// memory test.
const ISOLATION_CELLS: usize = 50;
/// The directory, inside the OCI cells' root filesystem, that holds this bench binary and the
/// start stamps it writes there.
const OCI_BENCH_DIR: &str = "bench";
/// Workload states that no longer change.
const TERMINAL: [&str; 4] = ["completed", "failed", "stopped", "expired"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isolation {
    Process,
    Cell,
    Oci,
}

const ISOLATIONS: [Isolation; 3] = [Isolation::Process, Isolation::Cell, Isolation::Oci];

impl Isolation {
    fn name(self) -> &'static str {
        match self {
            Isolation::Process => "process",
            Isolation::Cell => "cell",
            Isolation::Oci => "oci",
        }
    }
}

/// One `warden up` for the whole section, and the root filesystem of its OCI cells.
struct IsolationBench {
    warden: WardenServer,
    api: Api,
    /// Start stamps of `process` and `cell` workloads (they see the host's file system).
    stamps: PathBuf,
    /// Debian's static busybox plus this bench binary and its shared libraries.
    rootfs: Result<PathBuf>,
    /// Every workload id submitted, for the leftover check (cell ids and runc's container ids
    /// contain it).
    submitted: std::sync::Mutex<Vec<String>>,
}

impl IsolationBench {
    fn submit(&self, file: &str, spec: &str) -> Result<String> {
        let id = self.api.submit(file, spec)?.info.id;
        self.submitted.lock().map_err(|_| anyhow!("a submitter panicked"))?.push(id.clone());
        Ok(id)
    }

    fn rootfs(&self) -> Result<&Path> {
        self.rootfs.as_deref().map_err(|e| anyhow!("no OCI root filesystem: {e:#}"))
    }

    /// The `[cell]` lines that select `isolation`.
    fn isolation_lines(&self, isolation: Isolation) -> Result<String> {
        Ok(match isolation {
            Isolation::Oci => format!("isolation = \"oci\"\nrootfs = {}\noci_runtime = \"runc\"\n", toml_string(self.rootfs()?)),
            other => format!("isolation = \"{}\"\n", other.name()),
        })
    }

    /// The spec of a workload that is this bench binary in workload mode (it stamps its start
    /// and exits), and where its stamp shows up on the host. An OCI cell runs the copy inside
    /// its root filesystem and writes there.
    fn stamping_spec(&self, isolation: Isolation, name: &str) -> Result<(String, PathBuf)> {
        let (exe, stamp, host_stamp) = match isolation {
            Isolation::Oci => {
                let inside = format!("{OCI_BENCH_DIR}/stamps/{name}.log");
                (format!("/{OCI_BENCH_DIR}/warden_bench"), format!("/{inside}"), self.rootfs()?.join(inside))
            }
            _ => {
                let host = self.stamps.join(format!("{name}.log"));
                (bench_exe().display().to_string(), host.display().to_string(), host)
            }
        };
        let spec = format!(
            "name = \"{name}\"\n[cell]\nargv = [{exe}]\nenv = {{ {WORKLOAD_ENV} = {stamp} }}\n{lines}[restart]\npolicy = \"never\"\n",
            exe = json_string(&exe),
            stamp = json_string(&stamp),
            lines = self.isolation_lines(isolation)?,
        );
        Ok((spec, host_stamp))
    }
}

/// A TOML basic string (a JSON string literal is one).
fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// Per-cell memory of one backend.
struct CellMemory {
    /// Median over the cells of the summed PSS of everything warden runs for the cell.
    per_cell_kib: f64,
    /// What was counted per cell, e.g. `warden-shim ×2`.
    processes: String,
}

/// What the section's clean-up found still there after every workload was stopped.
struct Leftovers {
    processes: usize,
    cgroups: usize,
    cgroups_not_removed: usize,
}

/// Submit → exec latencies in ns of one backend.
#[derive(Default)]
struct StartSamples {
    /// Each after START_IDLE with nothing happening.
    idle: Vec<u64>,
    /// Each right after the previous start's workload ended.
    warm: Vec<u64>,
}

struct IsolationResults {
    starts: [Result<StartSamples>; 3],
    memory: [Result<CellMemory>; 3],
    leftovers: Leftovers,
}

fn isolation_section() -> Vec<Row> {
    progress(format_args!(
        "isolation: {START_SAMPLES} idle and {START_SAMPLES} warm starts per backend (process, cell, oci; taking \
         turns), then {ISOLATION_CELLS} `sleep 1000` cells per backend and per alternative"
    ));
    let warden = isolation_warden();
    progress(format_args!("  runit, s6, supervisord with {ISOLATION_CELLS} services each"));
    let runit = memory_runit(ISOLATION_CELLS);
    let s6 = memory_s6(ISOLATION_CELLS);
    let supervisord = memory_supervisord(ISOLATION_CELLS);

    let (starts, memory, leftovers) = match warden {
        Ok(IsolationResults { starts, memory, leftovers }) => (starts, memory, Some(leftovers)),
        Err(e) => {
            let e = format!("{e:#}");
            (ISOLATIONS.map(|_| Err(anyhow!("{e}"))), ISOLATIONS.map(|_| Err(anyhow!("{e}"))), None)
        }
    };
    let [process_starts, cell_starts, _] = &starts;
    let both = |s: &StartSamples| {
        let stat = |v: &[u64]| format!("{} / {}", fmt_ms(median_ms(v)), fmt_ms(p99_ms(v)));
        format!("idle {}; warm {}", stat(&s.idle), stat(&s.warm))
    };
    let start_alt = |who: &str, of: &Result<StartSamples>, base: &Result<StartSamples>| Alt {
        who: who.to_string(),
        figure: figure(base, both),
        ratio: match (of, base) {
            (Ok(of), Ok(base)) => {
                let ratio = |a: &[u64], b: &[u64]| {
                    format!("{} / {}", fmt_ratio(median_ms(a) / median_ms(b)), fmt_ratio(p99_ms(a) / p99_ms(b)))
                };
                format!("idle {}; warm {}", ratio(&of.idle, &base.idle), ratio(&of.warm, &base.warm))
            }
            _ => "-".into(),
        },
    };
    let mut rows = Vec::new();
    for (isolation, result) in ISOLATIONS.iter().zip(&starts) {
        let (alternatives, note) = match isolation {
            Isolation::Process => (
                Vec::new(),
                format!(
                    "From CLOCK_REALTIME just before POST /v1/workloads to the CLOCK_REALTIME the workload (this bench \
                     binary) writes first thing in main(), i.e. just after its exec; includes the fsynced journal \
                     append of the submit. One start at a time, the backends taking turns in every order; n = {} \
                     idle + {} warm per backend after a discarded warm-up. idle: after {} ms with nothing happening; \
                     warm: right after the previous start's workload ended",
                    figure(result, |s| s.idle.len().to_string()),
                    figure(result, |s| s.warm.len().to_string()),
                    START_IDLE.as_millis()
                ),
            ),
            Isolation::Cell => (
                vec![start_alt("process", result, process_starts)],
                "PID/mount/UTS/IPC namespaces under warden's init; ratios median / p99. Target: cell start < 10 ms".into(),
            ),
            Isolation::Oci => (
                vec![start_alt("process", result, process_starts), start_alt("cell", result, cell_starts)],
                "`runc run` under the shim; busybox-static rootfs with the same bench binary and its shared libraries \
                 copied in, so the stamp is the same exec-time stamp"
                    .into(),
            ),
        };
        rows.push(Row {
            metric: format!(
                "Cell start, isolation = {} (submit → workload exec, median / p99; lower is better)",
                isolation.name()
            ),
            warden: figure(result, both),
            alternatives,
            note,
        });
    }
    let mem_alt = |who: &str, of: &Result<CellMemory>, other: &Result<Memory>| Alt {
        who: who.to_string(),
        figure: figure(other, |m| fmt_kib(m.per_cell_kib)),
        ratio: ratio_of(of, |m| m.per_cell_kib, other, |m| m.per_cell_kib),
    };
    for (isolation, result) in ISOLATIONS.iter().zip(&memory) {
        let counted = result.as_ref().map(|m| m.processes.as_str()).unwrap_or("-");
        let mut note = format!("counted per cell: {counted}; the workload itself is not counted. Target ≤ 300 KB per cell");
        if let (Isolation::Oci, Some(left)) = (isolation, &leftovers) {
            let _ = write!(
                note,
                ". Clean-up after stopping every cell: {} processes and {} cell cgroups left behind ({} not removable)",
                left.processes, left.cgroups, left.cgroups_not_removed
            );
        }
        rows.push(Row {
            metric: format!(
                "Memory per cell, isolation = {}, {ISOLATION_CELLS} `sleep 1000` cells (PSS, median; lower is better)",
                isolation.name()
            ),
            warden: figure(result, |m| fmt_kib(m.per_cell_kib)),
            alternatives: vec![
                mem_alt("runsv", result, &runit),
                mem_alt("s6-supervise", result, &s6),
                mem_alt(&format!("supervisord ÷ {ISOLATION_CELLS}"), result, &supervisord),
            ],
            note,
        });
    }
    rows
}

/// Everything warden-side of the section on one server: the timed starts, the memory per cell
/// of each backend, and a check that nothing outlived it.
fn isolation_warden() -> Result<IsolationResults> {
    let dir = tempfile::tempdir()?;
    let stamps = dir.path().join("stamps");
    fs::create_dir(&stamps)?;
    let rootfs = oci_rootfs(dir.path());
    if let Err(e) = &rootfs {
        progress(format_args!("  no OCI root filesystem, the oci rows will say why: {e:#}"));
    }
    let warden = WardenServer::start()?;
    let api = warden.api()?;
    let bench = IsolationBench { warden, api, stamps, rootfs, submitted: Default::default() };

    let starts = start_latencies(&bench);
    let mut seen = Vec::new();
    let memory = ISOLATIONS.map(|isolation| {
        let memory = cell_memory(&bench, isolation, ISOLATION_CELLS, &mut seen);
        progress(format_args!("  memory, {}: {}", isolation.name(), figure(&memory, |m| fmt_kib(m.per_cell_kib))));
        memory
    });

    // Clean-up: stop whatever still runs, end the server, then look for anything left over.
    if let Err(e) = stop_everything(&bench.api) {
        progress(format_args!("  warning: stopping the last workloads failed: {e:#}"));
    }
    let workload_ids = std::mem::take(&mut *bench.submitted.lock().map_err(|_| anyhow!("a submitter panicked"))?);
    // Shims (and a cell's init, a clone of its shim) have their cell dir in their argv, runc its
    // bundle there, and stamping workloads their stamp path in their environment.
    let ours = [bench.warden.root.path().to_path_buf(), dir.path().to_path_buf()];
    drop(bench);
    let mut left: Vec<u32> = seen.iter().filter(|(pid, time)| still_running(*pid, *time)).map(|(pid, _)| *pid).collect();
    left.extend(processes_mentioning(&ours));
    left.sort_unstable();
    left.dedup();
    for &pid in &left {
        signal(pid, libc::SIGKILL);
    }
    let cgroups = cell_cgroups(&workload_ids);
    let mut not_removed = 0;
    for cgroup in &cgroups {
        // A cgroup can be removed only once its last process is gone (after a SIGKILL above).
        if wait_until(Duration::from_secs(2), "an empty cgroup", || Ok(fs::remove_dir(cgroup).is_ok().then_some(()))).is_err() {
            not_removed += 1;
        }
    }
    if !left.is_empty() || !cgroups.is_empty() {
        progress(format_args!(
            "  warning: left behind: processes {left:?}, cgroups {:?}",
            cgroups.iter().map(|c| c.display().to_string()).collect::<Vec<_>>()
        ));
    }
    Ok(IsolationResults {
        starts,
        memory,
        leftovers: Leftovers { processes: left.len(), cgroups: cgroups.len(), cgroups_not_removed: not_removed },
    })
}

/// Submit → exec latencies per backend: one start at a time, the backends taking turns (in
/// every order, see [`START_ORDERS`]) so all see the same machine, rounds alternating between
/// idle and warm starts. A backend whose start fails is dropped with that error.
fn start_latencies(bench: &IsolationBench) -> [Result<StartSamples>; 3] {
    let mut results: [Result<StartSamples>; 3] = ISOLATIONS.map(|_| Ok(StartSamples::default()));
    // Round 0 is the warm-up (first exec of each binary, first runc run, cold caches); then odd
    // rounds are idle, even ones warm.
    for round in 0..=2 * START_SAMPLES {
        let idle = round % 2 == 1;
        for i in START_ORDERS[(round / 2) % START_ORDERS.len()] {
            let isolation = ISOLATIONS[i];
            if results[i].is_err() {
                continue;
            }
            if idle {
                std::thread::sleep(START_IDLE);
            }
            match time_start(bench, isolation, &format!("start-{}-{round}", isolation.name())) {
                Ok(ns) => {
                    if let (Ok(samples), true) = (&mut results[i], round > 0) {
                        if idle { &mut samples.idle } else { &mut samples.warm }.push(ns);
                    }
                }
                Err(e) => {
                    progress(format_args!("  start, {}: {e:#}", isolation.name()));
                    results[i] = Err(e);
                }
            }
        }
        if round % 20 == 0 && round > 0 {
            let show = |r: &Result<StartSamples>| {
                figure(r, |s| format!("idle {} warm {}", fmt_ms(median_ms(&s.idle)), fmt_ms(median_ms(&s.warm))))
            };
            progress(format_args!(
                "  {}/{START_SAMPLES} starts per condition; medians so far: process {}, cell {}, oci {}",
                round / 2,
                show(&results[0]),
                show(&results[1]),
                show(&results[2])
            ));
        }
    }
    results
}

/// One start: submit → the workload's own start stamp. Waits until the workload (which exits
/// at once) has ended, so that starts never overlap.
fn time_start(bench: &IsolationBench, isolation: Isolation, name: &str) -> Result<u64> {
    let (spec, stamp) = bench.stamping_spec(isolation, name)?;
    let submitted = realtime_ns();
    let id = bench.submit(&format!("{name}.toml"), &spec)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut polls = 0u32;
    let started = loop {
        if let Some(ns) = start_stamp(&stamp) {
            break ns;
        }
        polls += 1;
        if polls.is_multiple_of(25) || Instant::now() >= deadline {
            let view = bench.api.status(&id)?;
            if TERMINAL.contains(&view.state.as_str()) {
                if let Some(ns) = start_stamp(&stamp) {
                    break ns;
                }
                bail!("{name} ended without running: {}", why(&view));
            }
            if Instant::now() >= deadline {
                bail!("{name} did not start within 60 s (state {})", view.state);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    wait_every(Duration::from_secs(60), Duration::from_millis(5), &format!("{name} to end"), || {
        Ok(TERMINAL.contains(&bench.api.status(&id)?.state.as_str()).then_some(()))
    })?;
    Ok(started.saturating_sub(submitted))
}

/// The `<ns> start` line the workload wrote, once it is there.
fn start_stamp(log: &Path) -> Option<u64> {
    fs::read_to_string(log).ok()?.lines().find_map(|line| line.strip_suffix(" start")?.parse().ok())
}

/// Why a workload ended, in words.
fn why(view: &WorkloadView) -> String {
    let reason = view.reason.clone().unwrap_or_else(|| {
        view.last_exit.as_ref().map(|e| serde_json::to_string(e).unwrap_or_default()).unwrap_or_else(|| "-".into())
    });
    format!("{}: {reason}", view.state)
}

/// `n` `sleep 1000` cells of one backend: once all run, the summed PSS per cell of every process
/// in the shim's tree except the workload itself (shim; shim + init; shim + runc ...). Stops
/// every workload before returning, also on failure. Every process seen goes into `seen`.
fn cell_memory(bench: &IsolationBench, isolation: Isolation, n: usize, seen: &mut Vec<(u32, u64)>) -> Result<CellMemory> {
    let memory = measure_cells(bench, isolation, n, seen);
    let stopped = stop_everything(&bench.api);
    let memory = memory?;
    stopped?;
    Ok(memory)
}

fn measure_cells(bench: &IsolationBench, isolation: Isolation, n: usize, seen: &mut Vec<(u32, u64)>) -> Result<CellMemory> {
    let lines = bench.isolation_lines(isolation)?;
    let name = isolation.name();
    // `graceful_shutdown`: an OCI cell's `sleep` is its PID 1 and ignores SIGTERM.
    let ids = parallel(n, API_THREADS.min(4), |i| {
        let spec = format!(
            "name = \"mem-{name}-{i}\"\n[cell]\nargv = [\"sleep\", \"1000\"]\ngraceful_shutdown = \"1s\"\n{lines}\
             [restart]\npolicy = \"never\"\n"
        );
        bench.submit(&format!("mem-{name}-{i}.toml"), &spec)
    })?;
    let cell_ids = wait_until(Duration::from_secs(120), &format!("{n} {name} cells to run"), || {
        let live: HashMap<String, WorkloadView> = bench.api.list()?.into_iter().map(|v| (v.info.id.clone(), v)).collect();
        if let Some(gone) = ids.iter().find(|id| !live.contains_key(*id)) {
            bail!("{gone} ended: {}", why(&bench.api.status(gone)?));
        }
        Ok(ids.iter().map(|id| live[id].cell_id.clone().filter(|_| live[id].state == "running")).collect::<Option<Vec<_>>>())
    })?;
    std::thread::sleep(MEMORY_SETTLE);

    let comms: HashMap<u32, String> = process_table().into_iter().map(|(pid, _, comm)| (pid, comm)).collect();
    let mut per_cell = Vec::with_capacity(n);
    let mut counted: BTreeMap<String, usize> = BTreeMap::new();
    for cell_id in &cell_ids {
        let pid_json = bench.warden.data_dir().join("cells").join(cell_id).join("pid.json");
        let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&pid_json)?)?;
        let shim =
            json["shim_pid"].as_u64().and_then(|p| u32::try_from(p).ok()).ok_or_else(|| anyhow!("no shim_pid in {json}"))?;
        let mut kib = 0;
        for pid in process_tree(shim) {
            seen.extend(start_time(pid).map(|t| (pid, t)));
            let comm = comms.get(&pid).cloned().unwrap_or_else(|| "?".into());
            if comm != "sleep" {
                kib += pss_kib(pid)?;
                *counted.entry(comm).or_default() += 1;
            }
        }
        per_cell.push(kib);
    }
    let processes = counted
        .iter()
        .map(|(comm, count)| {
            let each = *count as f64 / n as f64;
            if each.fract() == 0.0 {
                format!("{comm} ×{each:.0}")
            } else {
                format!("{comm} ×{each:.2}")
            }
        })
        .collect::<Vec<_>>()
        .join(" + ");
    Ok(CellMemory { per_cell_kib: median(&per_cell), processes })
}

/// Stops every live workload (one that ends meanwhile refuses the stop: fine) and waits until
/// none is left.
fn stop_everything(api: &Api) -> Result<()> {
    let live: Vec<String> = api.list()?.into_iter().map(|v| v.info.id).collect();
    parallel(live.len(), API_THREADS, |i| {
        let _ = api.stop(&live[i]);
        Ok(())
    })?;
    wait_until(Duration::from_secs(120), "every workload to stop", || Ok(api.list()?.is_empty().then_some(())))
}

/// Processes other than this one whose command line or environment mentions one of `paths`.
fn processes_mentioning(paths: &[PathBuf]) -> Vec<u32> {
    let needles: Vec<Vec<u8>> = paths.iter().map(|p| p.as_os_str().as_encoded_bytes().to_vec()).collect();
    let me = std::process::id();
    process_table()
        .into_iter()
        .map(|(pid, _, _)| pid)
        .filter(|&pid| pid != me)
        .filter(|pid| {
            ["cmdline", "environ"].iter().any(|file| {
                let bytes = fs::read(format!("/proc/{pid}/{file}")).unwrap_or_default();
                needles.iter().any(|n| bytes.windows(n.len()).any(|w| w == n.as_slice()))
            })
        })
        .collect()
}

/// Cgroup directories anywhere under /sys/fs/cgroup whose name contains one of `ids` (warden's
/// `<workload_id>.<n>`, runc's `warden-<workload_id>.<n>`), deepest first.
fn cell_cgroups(ids: &[String]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if ids.iter().any(|id| name.contains(id.as_str())) {
                found.push(entry.path());
            }
            if depth < 12 {
                dirs.push((entry.path(), depth + 1));
            }
        }
    }
    found.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
    found
}

/// The OCI cells' root filesystem under `dir`: busybox with `sh` and `sleep`, and this bench
/// binary, each with the shared libraries `ldd` lists (none for Debian's busybox-static) at
/// their host paths, so the same workload stamps its start in all three backends.
fn oci_rootfs(dir: &Path) -> Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "proc", "dev", "sys", "tmp", "etc", "root", &format!("{OCI_BENCH_DIR}/stamps")] {
        fs::create_dir_all(rootfs.join(sub))?;
    }
    copy_with_libraries(Path::new("/bin/busybox"), &rootfs, &rootfs.join("bin/busybox"))
        .context("busybox for the OCI rootfs (apt-get install busybox-static)")?;
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(rootfs.join("etc/group"), "root:x:0:\n")?;
    copy_with_libraries(&bench_exe(), &rootfs, &rootfs.join(OCI_BENCH_DIR).join("warden_bench"))?;
    Ok(rootfs)
}

/// Copies `binary` to `to` and every shared library it loads to the same path under `rootfs`.
fn copy_with_libraries(binary: &Path, rootfs: &Path, to: &Path) -> Result<()> {
    fs::copy(binary, to).with_context(|| format!("cannot copy {}", binary.display()))?;
    // `ldd` fails on a static executable ("not a dynamic executable"): nothing to copy then.
    let ldd = Command::new("ldd").arg(binary).output().context("cannot run ldd")?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        if line.contains("not found") {
            bail!("{}: {}", binary.display(), line.trim());
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`.
        let path = line.rsplit("=>").next().unwrap_or("").split(" (").next().unwrap_or("").trim();
        if let Some(relative) = path.strip_prefix('/') {
            let target = rootfs.join(relative);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::copy(path, &target).with_context(|| format!("cannot copy {path}"))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Durable jobs: overhead per state, resume of a long history
// ---------------------------------------------------------------------------------------------

/// States in the chain of the overhead test, and `/bin/true` spawns in its baseline.
const JOB_CHAIN_STATES: usize = 1000;
/// Kernel events in the resume test's history: `RunStarted`, then `StateEntered` +
/// `StateCompleted` per state, and a last `StateEntered` left open; so (N − 2) ÷ 2 completed
/// states plus the open one. Even.
const RESUME_EVENTS: usize = 100_000;
/// Events per append while the resume test writes its journal.
const RESUME_APPEND: usize = 10_000;
/// The resume test's run (a run id is `r-` and no `.`).
const RESUME_RUN_ID: &str = "r-resumebench";
const DESTROYED_EVENT: &str = "dev.warden.lifecycle.destroyed.v1";
const KERNEL_EVENT: &str = "dev.warden.job.kernel.v1";

/// One run of the chain, as warden's own records tell it.
struct JobChain {
    /// `RunStarted` → `RunCompleted`: the run view's `finished_at_ms − started_at_ms` (server ms).
    wall_ms: u64,
    /// Σ `ran_ms` of the step cells' `lifecycle.destroyed` events.
    ran_ms: u64,
    /// POST → the first poll that saw `completed`, on the bench's clock.
    client: Duration,
    /// Step cells with a `destroyed` event, and how many of those carried no `ran_ms`.
    cells: usize,
    cells_without_ran_ms: usize,
    /// Journal events of the whole server (it ran nothing else), and the run's kernel events.
    journal_events: usize,
    kernel_events: usize,
}

impl JobChain {
    fn overhead_ms(&self) -> f64 {
        self.wall_ms.saturating_sub(self.ran_ms) as f64 / JOB_CHAIN_STATES as f64
    }
}

/// `n` sequential `/bin/true` spawns from this process.
struct BareSpawns {
    total: Duration,
    n: usize,
}

impl BareSpawns {
    fn per_spawn_ms(&self) -> f64 {
        self.total.as_secs_f64() * 1e3 / self.n as f64
    }
}

/// The history the resume test wrote, straight into the journal.
struct ResumeJournal {
    run_id: String,
    states: usize,
    events: usize,
    manifest_bytes: usize,
}

/// What `warden up` on that history took, from just before its spawn.
struct JobResume {
    to_health: Duration,
    to_ended: Duration,
    /// The run view afterwards: `failed` expected (the open attempt is orphaned, budget 0).
    status: String,
    kernel_events: u64,
    /// The `journal` line of the up log (events, snapshot used, chain verified from).
    journal_line: String,
    /// The same start-up steps, timed inside this process.
    in_process: Result<InProcessReplay>,
    journal: ResumeJournal,
}

/// `SqliteStore::open` (which verifies the hash chain) and the replay into a `Projection`:
/// what `warden up` does before it listens, timed here because the up log prints no timings.
struct InProcessReplay {
    open: Duration,
    replay: Duration,
    verified_from_seq: u64,
}

/// Raw SQLite: `SELECT body FROM events ORDER BY seq`, every row parsed as JSON.
struct ReplayFloor {
    elapsed: Duration,
    rows: usize,
}

fn jobs_section() -> Vec<Row> {
    progress(format_args!(
        "jobs: a chain of {JOB_CHAIN_STATES} `true` states, then {JOB_CHAIN_STATES} sequential spawns of /bin/true"
    ));
    let chain = job_chain();
    progress(format_args!(
        "  warden: {}",
        figure(&chain, |c| format!(
            "wall {}, Σ ran_ms {} ms, overhead {} per state",
            fmt_s(Duration::from_millis(c.wall_ms)),
            c.ran_ms,
            fmt_ms(c.overhead_ms())
        ))
    ));
    let spawns = bare_spawns(JOB_CHAIN_STATES);
    progress(format_args!(
        "  /bin/true: {}",
        figure(&spawns, |s| format!("{} per spawn, {} in all", fmt_ms(s.per_spawn_ms()), fmt_s(s.total)))
    ));
    progress(format_args!(
        "jobs: resume of a run with {} kernel events in its history (journal written directly, no cells)",
        group_thousands(RESUME_EVENTS as u64)
    ));
    let (resume, floor) = job_resume();
    progress(format_args!(
        "  warden: {}; raw SQLite: {}",
        figure(&resume, |r| format!("health after {}, run ended after {}", fmt_s(r.to_health), fmt_s(r.to_ended))),
        figure(&floor, |f| fmt_s(f.elapsed))
    ));

    let secs = |d: &Duration| d.as_secs_f64();
    let floor_alt = |of: &dyn Fn(&JobResume) -> f64| Alt {
        who: "raw SQLite read + JSON parse".into(),
        figure: figure(&floor, |f| fmt_s(f.elapsed)),
        ratio: ratio_of(&resume, of, &floor, |f| secs(&f.elapsed)),
    };
    let n_chain = group_thousands(JOB_CHAIN_STATES as u64);
    let n_resume = group_thousands(RESUME_EVENTS as u64);
    vec![
        Row {
            metric: format!(
                "Job overhead per state, {n_chain} `true` states in one dependency chain ((wall − Σ ran_ms) ÷ {n_chain}; \
                 lower is better)"
            ),
            warden: figure(&chain, |c| fmt_ms(c.overhead_ms())),
            alternatives: vec![Alt {
                who: "bare spawn of /bin/true from Rust".into(),
                figure: figure(&spawns, |s| format!("{} per spawn", fmt_ms(s.per_spawn_ms()))),
                ratio: ratio_of(&chain, JobChain::overhead_ms, &spawns, BareSpawns::per_spawn_ms),
            }],
            note: format!(
                "`POST /v1/jobs` of s0000 → s0001 → … each `argv = [\"true\"]`. wall = the run view's finished_at_ms − \
                 started_at_ms (server clock) = {}; Σ ran_ms = {} over {} step cells' lifecycle.destroyed events (ms \
                 resolution, started → exit as the engine saw it{}); {} journal events per state ({} kernel events in all). \
                 Each state is a workload `<run>.<state>.0` with its own shim and cell cgroup, and costs two \
                 fsynced journal commits: its cell's start, then its exit together with StateCompleted and the next \
                 state's StateEntered + submit (one engine batch). That is the price of a durable, re-adoptable \
                 step. The alternative is `Command::new(\"/bin/true\").status()` {n_chain} times in a row with no \
                 record of anything: the floor any supervisor pays per process",
                figure(&chain, |c| fmt_s(Duration::from_millis(c.wall_ms))),
                figure(&chain, |c| format!("{} ms", group_thousands(c.ran_ms))),
                figure(&chain, |c| group_thousands(c.cells as u64)),
                match &chain {
                    Ok(c) if c.cells_without_ran_ms > 0 => format!("; {} had no ran_ms", c.cells_without_ran_ms),
                    _ => String::new(),
                },
                figure(&chain, |c| format!("{:.1}", c.journal_events as f64 / JOB_CHAIN_STATES as f64)),
                figure(&chain, |c| group_thousands(c.kernel_events as u64)),
            ),
        },
        Row {
            metric: format!("Job wall time, the same {n_chain}-state chain (RunStarted → RunCompleted; lower is better)"),
            warden: figure(&chain, |c| fmt_s(Duration::from_millis(c.wall_ms))),
            alternatives: vec![Alt {
                who: format!("{n_chain} sequential /bin/true spawns"),
                figure: figure(&spawns, |s| fmt_s(s.total)),
                ratio: ratio_of(&chain, |c| c.wall_ms as f64 / 1e3, &spawns, |s| secs(&s.total)),
            }],
            note: format!(
                "POST → the first poll of GET /v1/jobs/<run> (every 50 ms) that saw `completed`: {} on the bench's clock",
                figure(&chain, |c| fmt_s(c.client))
            ),
        },
        Row {
            metric: format!(
                "Job resume, one run with {n_resume} kernel events and its last state open (spawn of `warden up` → run \
                 ended; lower is better)"
            ),
            warden: figure(&resume, |r| fmt_s(r.to_ended)),
            alternatives: vec![floor_alt(&|r| secs(&r.to_ended))],
            note: format!(
                "The history is written with SqliteStore::append_with_artifacts ({} events per append), no cells run: \
                 RunStarted, StateEntered + StateCompleted for {} states in one chain, then the last state's \
                 StateEntered left open; manifest artifact {} ({} states). No projection snapshot is in that journal, \
                 so warden replays all {n_resume} events (it snapshots every 10,000 events by default, \
                 `--snapshot-every`, but only of what it journals itself). On start it verifies the hash chain, \
                 replays, loads the manifest, finds the open attempt without a workload, journals \
                 StateFailed{{orphaned}} and, the retry budget being 0, RunCompleted{{failed}}: the run ended `{}` \
                 with {} kernel events. Ended = `/metrics` shows no running run (polled every 2 ms; the run view \
                 of {} states is ~10 MB, so it is read once, afterwards). The raw SQLite floor reads {} rows and \
                 checks no hashes: `SELECT body FROM events ORDER BY seq` on the same file, each row \
                 parsed into a serde_json::Value. Page cache warm (the journal was just written); n = 1",
                group_thousands(RESUME_APPEND as u64),
                figure(&resume, |r| group_thousands(r.journal.states as u64 - 1)),
                figure(&resume, |r| format!("{:.1} MB", r.journal.manifest_bytes as f64 / 1e6)),
                figure(&resume, |r| group_thousands(r.journal.states as u64)),
                figure(&resume, |r| r.status.clone()),
                figure(&resume, |r| group_thousands(r.kernel_events)),
                figure(&resume, |r| group_thousands(r.journal.states as u64)),
                figure(&floor, |f| group_thousands(f.rows as u64)),
            ),
        },
        Row {
            metric: format!("Job resume, {n_resume} events: spawn of `warden up` → /v1/health answers (lower is better)"),
            warden: figure(&resume, |r| fmt_s(r.to_health)),
            alternatives: vec![floor_alt(&|r| secs(&r.to_health))],
            note: match &resume {
                Ok(r) => format!(
                    "`warden up` listens only once the journal is replayed. The same steps inside the bench process: \
                     SqliteStore::open with the chain check (verified from seq {}) {}, then read_after in pages of \
                     10,000 + Projection::apply_event {}. The up log prints no timings; its journal line: “{}”",
                    figure(&r.in_process, |p| p.verified_from_seq.to_string()),
                    figure(&r.in_process, |p| fmt_s(p.open)),
                    figure(&r.in_process, |p| fmt_s(p.replay)),
                    r.journal_line
                ),
                Err(_) => String::new(),
            },
        },
    ]
}

/// A chain of `JOB_CHAIN_STATES` `true` states on a fresh `warden up`: runs it to its end and
/// reads the timings back from the run view and the journal.
fn job_chain() -> Result<JobChain> {
    let warden = WardenServer::start()?;
    let api = warden.api()?;
    let mut manifest = String::from("name = \"chain\"\n");
    for i in 0..JOB_CHAIN_STATES {
        let _ = writeln!(manifest, "[[state]]\nid = \"s{i:04}\"");
        if i > 0 {
            let _ = writeln!(manifest, "depends_on = [\"s{:04}\"]", i - 1);
        }
        manifest.push_str("argv = [\"true\"]\n");
    }
    let posted = Instant::now();
    let run = api.job_run("chain.toml", &manifest)?;
    let run_id = run["run_id"].as_str().ok_or_else(|| anyhow!("no run_id in {run}"))?.to_string();
    let mut last_report = Instant::now();
    let view = wait_every(Duration::from_secs(600), Duration::from_millis(50), &format!("run {run_id} to end"), || {
        let view = api.job(&run_id)?;
        if view["status"] != "running" {
            return Ok(Some(view));
        }
        if last_report.elapsed() >= Duration::from_secs(15) {
            let done = view["states"].as_array().map_or(0, |s| s.iter().filter(|s| s["status"] == "completed").count());
            progress(format_args!("  {done}/{JOB_CHAIN_STATES} states completed"));
            last_report = Instant::now();
        }
        Ok(None)
    })?;
    let client = posted.elapsed();
    if view["status"] != "completed" {
        let failed = view["states"].as_array().and_then(|s| s.iter().find(|s| s["status"] == "failed")).cloned();
        let why = failed
            .as_ref()
            .and_then(|s| s["workload_id"].as_str())
            .map(|id| api.status(id).map(|v| why(&v)).unwrap_or_else(|e| format!("{e:#}")))
            .unwrap_or_default();
        bail!("run {run_id} ended {}: state {} {why}", view["status"], failed.map(|s| s["state_id"].clone()).unwrap_or_default());
    }
    let (Some(started), Some(finished)) = (view["started_at_ms"].as_u64(), view["finished_at_ms"].as_u64()) else {
        bail!("run {run_id} has no started_at_ms / finished_at_ms");
    };

    let events = api.events_after(0)?;
    let step_prefix = format!("{run_id}.");
    let destroyed: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["type"] == DESTROYED_EVENT && e["subject"].as_str().is_some_and(|s| s.starts_with(&step_prefix)))
        .collect();
    if destroyed.len() != JOB_CHAIN_STATES {
        progress(format_args!("  warning: {} step cells ended for {JOB_CHAIN_STATES} states", destroyed.len()));
    }
    let ran: Vec<u64> = destroyed.iter().filter_map(|e| e["data"]["ran_ms"].as_u64()).collect();
    let kernel_events = events.iter().filter(|e| e["type"] == KERNEL_EVENT && e["subject"] == run_id.as_str()).count();
    Ok(JobChain {
        wall_ms: finished.saturating_sub(started),
        ran_ms: ran.iter().sum(),
        client,
        cells: destroyed.len(),
        cells_without_ran_ms: destroyed.len() - ran.len(),
        journal_events: events.len(),
        kernel_events,
    })
}

/// `n` sequential `/bin/true` runs from this process after one warm-up: fork/exec/wait and
/// nothing else, the floor of any supervisor.
fn bare_spawns(n: usize) -> Result<BareSpawns> {
    let spawn = || -> Result<()> {
        let status = Command::new("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("cannot spawn /bin/true")?;
        if !status.success() {
            bail!("/bin/true exited with {status}");
        }
        Ok(())
    };
    spawn()?;
    let started = Instant::now();
    for _ in 0..n {
        spawn()?;
    }
    Ok(BareSpawns { total: started.elapsed(), n })
}

/// Writes the long history into a fresh data dir, times the raw SQLite floor and warden's replay
/// in this process on it, then starts `warden up` there and times the resume.
fn job_resume() -> (Result<JobResume>, Result<ReplayFloor>) {
    let prepared = (|| -> Result<(WardenServer, ResumeJournal)> {
        let warden = WardenServer::new()?;
        fs::create_dir_all(warden.data_dir())?;
        let started = Instant::now();
        let journal = write_resume_journal(&warden.data_dir().join("journal.db"))?;
        progress(format_args!(
            "  {} events ({} states, manifest {:.1} MB) written in {}",
            group_thousands(journal.events as u64),
            group_thousands(journal.states as u64),
            journal.manifest_bytes as f64 / 1e6,
            fmt_s(started.elapsed())
        ));
        Ok((warden, journal))
    })();
    let (mut warden, journal) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            let e = format!("{e:#}");
            return (Err(anyhow!("{e}")), Err(anyhow!("{e}")));
        }
    };
    let db = warden.data_dir().join("journal.db");
    let floor = replay_floor(&db);
    let in_process = replay_in_process(&db, &journal);
    (resume_warden(&mut warden, journal, in_process), floor)
}

/// The resume test's history, appended with warden's own store so it is sealed and chained
/// exactly as warden writes it. The manifest is built as a struct: parsing 50,000 states of
/// TOML would only slow the bench down.
fn write_resume_journal(db: &Path) -> Result<ResumeJournal> {
    const { assert!(RESUME_EVENTS >= 2 && RESUME_EVENTS.is_multiple_of(2)) };
    let completed = (RESUME_EVENTS - 2) / 2;
    let cell = Spec::parse("x", "name='x'\n[cell]\nargv=['true']").map_err(|e| anyhow!("{e}"))?.cell;
    let state_id = |i: usize| format!("s{i:05}");
    let states: Vec<StateSpec> = (0..=completed)
        .map(|i| StateSpec {
            id: state_id(i),
            cell: cell.clone(),
            depends_on: if i == 0 { Vec::new() } else { vec![state_id(i - 1)] },
            timeout_ms: None,
            retry: RetrySpec::default(),
        })
        .collect();
    let manifest = JobManifest { name: "resume".into(), states };
    let manifest_artifact = Artifact::of_json(&manifest);
    let empty = Artifact::of_json(&serde_json::json!({}));
    let (manifest_id, context_id) = (manifest_artifact.id.clone(), empty.id.clone());
    let manifest_bytes = manifest_artifact.bytes.len();

    let run_id = RESUME_RUN_ID.to_string();
    let mut kernel = Vec::with_capacity(RESUME_EVENTS);
    kernel.push(KernelEvent::RunStarted { op_id: run_id.clone(), manifest_id, initial_snapshot_id: context_id.clone() });
    for i in 0..=completed {
        kernel.push(KernelEvent::StateEntered { state_id: state_id(i), attempt: 0, base_snapshot_id: context_id.clone() });
        if i < completed {
            kernel.push(KernelEvent::StateCompleted { state_id: state_id(i), context_snapshot_id: context_id.clone() });
        }
    }
    if kernel.len() != RESUME_EVENTS {
        bail!("built {} kernel events, not {RESUME_EVENTS}", kernel.len());
    }

    let (store, _) = SqliteStore::open(db)?;
    let now = warden_runtime::engine::now_ms();
    let mut events = kernel.into_iter().enumerate().map(|(i, event)| NewEvent {
        id: format!("00000000-0000-4000-8000-{i:012x}"),
        source: "/warden/bench".into(),
        time_ms: now,
        subject: Some(run_id.clone()),
        data: EventData::Job(JobEvent { run_id: run_id.clone(), owner: (i == 0).then(|| "bench".to_string()), event }),
    });
    // The artifacts go with the first append, as warden stores them with the `RunStarted`.
    let mut artifacts = vec![manifest_artifact, empty];
    loop {
        let batch: Vec<NewEvent> = events.by_ref().take(RESUME_APPEND).collect();
        if batch.is_empty() {
            break;
        }
        store.append_with_artifacts(std::mem::take(&mut artifacts), batch)?;
    }
    Ok(ResumeJournal { run_id, states: completed + 1, events: RESUME_EVENTS, manifest_bytes })
}

/// The floor of any replay: every row's body read in order and parsed as JSON; no hash checks,
/// no typed events, no projection.
fn replay_floor(db: &Path) -> Result<ReplayFloor> {
    let started = Instant::now();
    let conn = rusqlite::Connection::open(db)?;
    let mut select = conn.prepare("SELECT body FROM events ORDER BY seq")?;
    let mut rows = select.query([])?;
    let mut n = 0;
    while let Some(row) = rows.next()? {
        let body: serde_json::Value = serde_json::from_slice(row.get_ref(0)?.as_bytes()?)?;
        std::hint::black_box(body);
        n += 1;
    }
    Ok(ReplayFloor { elapsed: started.elapsed(), rows: n })
}

/// What `warden up` does with the journal before it listens (`Engine::load` with no snapshot):
/// open the store (verifying the hash chain), then fold every event into a `Projection`.
fn replay_in_process(db: &Path, journal: &ResumeJournal) -> Result<InProcessReplay> {
    let started = Instant::now();
    let (store, report) = SqliteStore::open(db)?;
    let open = started.elapsed();
    let mut projection = Projection::default();
    warden_runtime::engine::replay_tail(&store, &mut projection)?;
    let replay = started.elapsed() - open;
    let run = projection.runs.get(&journal.run_id).ok_or_else(|| anyhow!("the replay has no run {}", journal.run_id))?;
    if run.n_events != journal.events as u64 || run.open.len() != 1 {
        bail!("the replayed run has {} events and {} open attempts", run.n_events, run.open.len());
    }
    Ok(InProcessReplay { open, replay, verified_from_seq: report.verified_from_seq })
}

/// Starts `warden up` on the written history and times it until `/v1/health` answers and until
/// the run has ended.
fn resume_warden(warden: &mut WardenServer, journal: ResumeJournal, in_process: Result<InProcessReplay>) -> Result<JobResume> {
    let (spawned, to_health) = warden.launch(Duration::from_millis(5), Duration::from_secs(300))?;
    let api = warden.api()?;
    let metrics = format!("http://{}/metrics", warden.addr());
    let run_id = journal.run_id.clone();
    let to_ended = wait_every(Duration::from_secs(600), Duration::from_millis(2), "the resumed run to end", || {
        let text = ureq::get(&metrics).call().map_err(|e| anyhow!("GET /metrics: {e}"))?.into_string()?;
        let runs: HashMap<&str, u64> = text
            .lines()
            .filter_map(|line| {
                let (status, count) = line.strip_prefix("warden_job_runs{status=\"")?.split_once("\"} ")?;
                Some((status, count.trim().parse().ok()?))
            })
            .collect();
        let ended = match runs.get("running") {
            Some(&running) => running == 0 && runs.values().sum::<u64>() > 0,
            None => api.job(&run_id)?["status"] != "running", // no job metrics: ask the run view
        };
        Ok(ended.then(|| spawned.elapsed()))
    })?;
    let view = api.job(&run_id)?;
    let status = view["status"].as_str().unwrap_or("?").to_string();
    if status != "failed" {
        bail!("the resumed run ended {status}, not failed (its open attempt is orphaned and has no retries left)");
    }
    let journal_line = warden
        .up_log()
        .lines()
        .find(|line| line.trim_start().starts_with("journal "))
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "-".into());
    Ok(JobResume {
        to_health,
        to_ended,
        status,
        kernel_events: view["n_events"].as_u64().unwrap_or(0),
        journal_line,
        in_process,
        journal,
    })
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

struct Row {
    metric: String,
    warden: String,
    alternatives: Vec<Alt>,
    note: String,
}

struct Alt {
    who: String,
    figure: String,
    /// warden's figure ÷ this one's.
    ratio: String,
}

fn figure<T>(result: &Result<T>, show: impl Fn(&T) -> String) -> String {
    match result {
        Ok(value) => show(value),
        Err(e) => format!("error: {}", one_line(&format!("{e:#}"))),
    }
}

/// warden's value ÷ the alternative's, when both were measured.
fn ratio_of<T, U>(warden: &Result<T>, warden_value: impl Fn(&T) -> f64, other: &Result<U>, value: impl Fn(&U) -> f64) -> String {
    match (warden.as_ref().ok().map(warden_value), other.as_ref().ok().map(value)) {
        (Some(w), Some(o)) if o > 0.0 => fmt_ratio(w / o),
        _ => "-".into(),
    }
}

fn one_line(text: &str) -> String {
    let flat = text.replace(['\n', '\r', '|'], " ");
    if flat.chars().count() > 160 {
        format!("{}…", flat.chars().take(160).collect::<String>())
    } else {
        flat
    }
}

fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn fmt_s(elapsed: Duration) -> String {
    let s = elapsed.as_secs_f64();
    if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
}

fn fmt_rate(per_sec: f64) -> String {
    format!("{} events/s", group_thousands(per_sec.round() as u64))
}

fn fmt_kib(kib: f64) -> String {
    format!("{kib:.0} KB")
}

fn fmt_ratio(ratio: f64) -> String {
    if ratio >= 100.0 {
        format!("{ratio:.0}×")
    } else if ratio >= 10.0 {
        format!("{ratio:.1}×")
    } else if ratio >= 1.0 {
        format!("{ratio:.2}×")
    } else {
        // Two significant digits, however small.
        let decimals = (1 - ratio.log10().floor() as i32).max(2) as usize;
        format!("{ratio:.decimals$}×")
    }
}

fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_table(rows: &[Row]) {
    let mut out = String::new();
    let _ = writeln!(out, "## warden benchmark\n");
    let _ = writeln!(out, "Reproduce with `cargo xtask bench`. {}\n", machine_summary());
    let _ = writeln!(out, "| Metric | warden | Alternatives | warden ÷ alternative | Notes |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for row in rows {
        let (alternatives, ratios) = if row.alternatives.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            (
                row.alternatives.iter().map(|a| format!("{}: {}", a.who, a.figure)).collect::<Vec<_>>().join("; "),
                row.alternatives.iter().map(|a| format!("{}: {}", a.who, a.ratio)).collect::<Vec<_>>().join("; "),
            )
        };
        let _ = writeln!(out, "| {} | {} | {alternatives} | {ratios} | {} |", row.metric, row.warden, row.note);
    }
    let _ = writeln!(
        out,
        "\nSettings: warden `policy = \"always\"`, `backoff = \"0s\"`, `backoff_max = \"0s\"`, every event fsynced \
         (journal_mode=WAL, synchronous=FULL); supervisord defaults except `startsecs=0` (otherwise a program that \
         exits at once goes BACKOFF → FATAL); runsv and s6-supervise at their defaults, `run` a symlink to the workload \
         binary (no shell). Restart latency = CLOCK_REALTIME of a run's `exit` line → the next run's `start` line, \
         written by the workload itself. Memory: PSS from /proc/PID/smaps_rollup with {MEMORY_CELLS} `sleep 1000` \
         cells per system; warden's figure is its per-cell `warden-shim`. Ratios compare figures from this one run; \
         absolute numbers drift on a shared machine."
    );
    print!("{out}");
}

fn machine_summary() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let versions: Vec<String> = ["supervisor", "runit", "s6"]
        .iter()
        .map(|package| {
            let version = Command::new("dpkg-query")
                .args(["-W", "-f=${Version}", package])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|| "?".into());
            format!("{package} {version}")
        })
        .collect();
    format!(
        "{cpus} CPUs, Linux {}, temp dirs on {}; {}.",
        kernel.trim(),
        filesystem_of(&std::env::temp_dir()),
        versions.join(", ")
    )
}

/// The file system type under `path`: on tmpfs an fsync costs nothing and durability figures
/// would be meaningless, so the table says where it ran.
fn filesystem_of(path: &Path) -> String {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return "?".into() };
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c_path` is NUL-terminated and `stat` is a properly sized out-parameter.
    if unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return "?".into();
    }
    // SAFETY: statfs succeeded, so it filled `stat`.
    let magic = unsafe { stat.assume_init() }.f_type as u64;
    let names: HashMap<u64, &str> = [
        (0xEF53, "ext4"),
        (0x0102_1994, "tmpfs (fsync is free: durable figures are not comparable)"),
        (0x5846_5342, "xfs"),
        (0x9123_683E, "btrfs"),
        (0x794C_7630, "overlayfs"),
    ]
    .into();
    names.get(&magic).map(|n| n.to_string()).unwrap_or_else(|| format!("fs 0x{magic:x}"))
}

/// Fails early, with the fix, when the build or the alternatives are missing.
fn check_prerequisites() {
    let shim = Path::new(warden_bin()).with_file_name("warden-shim");
    if !shim.is_file() {
        progress(format_args!(
            "warning: {} is missing, so warden falls back to `warden shim` (a much larger process per cell); \
             run `cargo build --release --workspace --bins` first (`cargo xtask bench` does)",
            shim.display()
        ));
    }
    let missing: HashSet<&str> = ["supervisord", "runsv", "runsvdir", "s6-supervise", "s6-svscan"]
        .into_iter()
        .filter(|binary| {
            Command::new("sh").arg("-c").arg(format!("command -v {binary}")).output().map_or(true, |o| !o.status.success())
        })
        .collect();
    if !missing.is_empty() {
        progress(format_args!("warning: not on PATH: {missing:?} (`cargo xtask bench` installs supervisor, runit and s6)"));
    }
    // The `isolation` section's oci rows: warden finds runc in /usr/sbin even off the PATH.
    let runc =
        ["/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc", "/usr/local/bin/runc"].iter().any(|p| Path::new(p).is_file());
    if !runc || !Path::new("/bin/busybox").is_file() {
        progress(format_args!(
            "warning: the isolation section's oci rows need runc and /bin/busybox (apt-get install runc busybox-static)"
        ));
    }
}
