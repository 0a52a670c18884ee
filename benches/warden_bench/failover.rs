//! The `failover` section: how long a workload is without a primary when its host dies, for each
//! replication mode, measured by the workload itself.
//!
//! A `warden server` and three `warden agent` hosts on loopback run one workload (`instances =
//! 1`) whose cell is this bench binary again ([`TRUTH_ENV`]): it appends `<WARDEN_EPOCH>
//! <CLOCK_MONOTONIC ns>` to one file every 20 ms. A run reads the primary's host and epoch from
//! the workload's status, takes `t0` from the same clock, and SIGKILLs that host at once (agent,
//! shims, cells); the failover time is `t0` → the first line of a higher epoch. The host is then
//! restarted (same name and data dir: it re-joins) and the workload left to settle (a running
//! primary and, in the standby modes, a standby armed for it again, as the journal's
//! `standby.armed` / `standby.released` events tell) before the next run. Over the whole file,
//! each epoch's lines span `[first, last]`; two epochs' spans overlapping means two primaries
//! ran at once, and the run that made it is counted.
//!
//! The modes differ only in the spec's `[replication]`: `none`, `warm-standby` with one standby,
//! and the same with `hot = true`. A mode the server rejects (4xx on submit) or that never arms a
//! standby (for `hot`: one whose host runs the cell already) is printed as `unsupported: <why>`;
//! the other rows still run.
//!
//! The `, drain` rows measure a planned handover the same way: instead of the SIGKILL, `t0` is
//! taken just before `warden hosts drain <primary's host>` runs (the CLI, signed with the admin
//! key). The host's agent stops the primary (SIGTERM), takes a final checkpoint if the workload
//! keeps one (this one does not) and gives its lease up with a signed revocation, so the standby
//! takes over without waiting for the lease to expire. The run ends with `warden hosts undrain`
//! and the same settling.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;
use warden_runtime::client::HttpError;
use warden_runtime::view::{HostView, SubmitRequest};

use crate::common::control_plane::{cell_pid_files, start_control_plane, toml_string, warden_bin, warden_cli, Api};
use crate::common::process::{
    bench_exe, process_tree, progress, signal, signal_group, still_running, tail, wait_every, wait_until, Proc,
};
use crate::common::stats::{median, sorted};
use crate::common::table::{machine_summary, one_line};

/// Set (to the ground-truth file's path) only in the environment of the failover workload.
pub(crate) const TRUTH_ENV: &str = "WARDEN_BENCH_TRUTH";
/// Runs per mode unless `WARDEN_BENCH_FAILOVER_RUNS` says otherwise.
const DEFAULT_RUNS: usize = 20;
const N_HOSTS: usize = 3;
/// How often the workload appends a line: the resolution of every figure here.
const LINE_EVERY: Duration = Duration::from_millis(20);
/// Generous bounds for one step of a run; a healthy failover takes about two seconds.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// A standby is armed in the same decision that places the primary, or a heartbeat later.
const STANDBY_TIMEOUT: Duration = Duration::from_secs(10);

const WARM: &str = "[replication]\nmode = \"warm-standby\"\nstandbys = 1\n";
const HOT: &str = "[replication]\nmode = \"warm-standby\"\nstandbys = 1\nhot = true\n";

/// The table's rows, in order.
const ROWS: [Row; 5] = [
    Row { mode: "none", replication: "", standby: Standby::None, trigger: Trigger::Kill },
    Row { mode: "warm-standby", replication: WARM, standby: Standby::Armed, trigger: Trigger::Kill },
    Row { mode: "hot", replication: HOT, standby: Standby::Running, trigger: Trigger::Kill },
    Row { mode: "warm-standby", replication: WARM, standby: Standby::Armed, trigger: Trigger::Drain },
    Row { mode: "hot", replication: HOT, standby: Standby::Running, trigger: Trigger::Drain },
];

/// One row of the table: a replication mode and how each run takes its primary away.
#[derive(Clone, Copy)]
struct Row {
    mode: &'static str,
    /// The spec's `[replication]` section.
    replication: &'static str,
    /// What must be ready before each run.
    standby: Standby,
    trigger: Trigger,
}

impl Row {
    /// The row's name in the table: the mode, then `, drain` for a planned handover.
    fn name(&self) -> String {
        match self.trigger {
            Trigger::Kill => self.mode.to_string(),
            Trigger::Drain => format!("{}, drain", self.mode),
        }
    }

    /// About how long the row takes: a kill waits out the lease and the host's re-join, a drain
    /// hands over in tens of ms.
    fn seconds(&self, runs: usize) -> usize {
        match self.trigger {
            Trigger::Kill => runs * 2 + 2,
            Trigger::Drain => runs / 4 + 2,
        }
    }

    /// The workload's name: one per row, each on a cluster of its own.
    fn workload(&self) -> String {
        match self.trigger {
            Trigger::Kill => format!("failover-{}", self.mode),
            Trigger::Drain => format!("failover-{}-drain", self.mode),
        }
    }
}

/// How a run takes the primary away from its host.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// SIGKILL the host whole; the new primary waits out the lease. The host is restarted after.
    Kill,
    /// `warden hosts drain` the host: its lease is revoked. The host is undrained after.
    Drain,
}

/// What must be ready on another host before a primary's host may be killed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Standby {
    None,
    /// A standby slot armed for the current primary.
    Armed,
    /// Such a slot whose host already runs the workload's cell (a hot standby).
    Running,
}

// ---------------------------------------------------------------------------------------------
// The workload: the ground truth
// ---------------------------------------------------------------------------------------------

/// Appends `<epoch> <CLOCK_MONOTONIC ns>` to `truth` every 20 ms, forever. Each line is one
/// `write` on an `O_APPEND` descriptor, so lines of two writers never tear or interleave.
///
/// A hot standby (`WARDEN_ROLE=standby`) writes nothing until it is promoted (SIGUSR1), then
/// takes its epoch from the first number in its role file (`WARDEN_ROLE_FILE`).
pub(crate) fn truth_writer_main(truth: &OsStr) -> ! {
    let epoch = if std::env::var_os("WARDEN_ROLE").is_some_and(|role| role == "standby") {
        wait_for_promotion();
        std::env::var_os("WARDEN_ROLE_FILE").and_then(|path| first_number(&fs::read_to_string(path).ok()?))
    } else {
        std::env::var("WARDEN_EPOCH").ok()
    };
    // A cell without an epoch is a primary that ran outside any lease: its lines say so.
    let epoch = epoch.unwrap_or_else(|| "none".into());
    let Ok(mut file) = fs::OpenOptions::new().create(true).append(true).open(truth) else { std::process::exit(2) };
    loop {
        if file.write_all(format!("{epoch} {}\n", monotonic_ns()).as_bytes()).is_err() {
            std::process::exit(3);
        }
        std::thread::sleep(LINE_EVERY);
    }
}

/// Blocks until SIGUSR1 arrives (blocked first, so it is taken, not fatal).
fn wait_for_promotion() {
    // SAFETY: `set` is a local that sigemptyset initializes before anything reads it; the calls
    // touch only it, this thread's signal mask and `signal`.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut signal = 0;
        libc::sigwait(&set, &mut signal);
    }
}

fn first_number(text: &str) -> Option<String> {
    text.split(|c: char| !c.is_ascii_digit()).find(|digits| !digits.is_empty()).map(str::to_string)
}

/// CLOCK_MONOTONIC in ns: one clock for the bench and every cell on this machine.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid out-parameter; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// One epoch's lines: the first and the last timestamp.
#[derive(Clone, Copy, Debug)]
struct Span {
    first_ns: u64,
    last_ns: u64,
}

/// Every complete line of the ground truth as `(epoch, ns)`, in file order. The file is read
/// while cells append to it: an unterminated last line may be cut short, so it is left out.
fn read_truth(truth: &Path) -> Result<Vec<(u64, u64)>> {
    let text = match fs::read_to_string(truth) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", truth.display())),
    };
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    complete
        .lines()
        .map(|line| {
            let (epoch, ns) = line.split_once(' ').ok_or_else(|| anyhow!("malformed ground-truth line {line:?}"))?;
            let epoch = epoch.parse().map_err(|_| anyhow!("a primary ran without a lease epoch: {line:?}"))?;
            Ok((epoch, ns.parse().with_context(|| format!("malformed ground-truth line {line:?}"))?))
        })
        .collect()
}

fn spans(lines: &[(u64, u64)]) -> BTreeMap<u64, Span> {
    let mut spans = BTreeMap::new();
    for &(epoch, ns) in lines {
        let span = spans.entry(epoch).or_insert(Span { first_ns: ns, last_ns: ns });
        span.first_ns = span.first_ns.min(ns);
        span.last_ns = span.last_ns.max(ns);
    }
    spans
}

/// Every pair of epochs `(older, newer)` whose spans overlap: the older one wrote a line after
/// the newer one's first, so two primaries ran at once.
fn overlapping_epochs(spans: &BTreeMap<u64, Span>) -> BTreeSet<(u64, u64)> {
    let mut pairs = BTreeSet::new();
    for (&older, old) in spans {
        for (&newer, new) in spans.range(older + 1..) {
            if old.last_ns >= new.first_ns {
                pairs.insert((older, newer));
            }
        }
    }
    pairs
}

// ---------------------------------------------------------------------------------------------
// The cluster: a control plane and three hosts, each a process group of its own
// ---------------------------------------------------------------------------------------------

/// One `warden agent` and its data dir: a host that can be killed whole and started again.
struct Host {
    name: String,
    data_dir: PathBuf,
    agent: Option<Child>,
}

impl Host {
    /// Starts (or restarts, on the same data dir) the agent in a process group of its own, its
    /// stderr appended to `<data-dir>/agent.log`.
    fn start(&mut self, server_url: &str, join_token: &str, config_home: &Path) -> Result<()> {
        fs::create_dir_all(&self.data_dir)?;
        let log = fs::OpenOptions::new().create(true).append(true).open(self.data_dir.join("agent.log"))?;
        let agent = Command::new(warden_bin())
            .args(["agent", "--server", server_url, "--name", &self.name, "--data-dir"])
            .arg(&self.data_dir)
            .env("WARDEN_JOIN_TOKEN", join_token)
            .env("XDG_CONFIG_HOME", config_home)
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start the agent of {}", self.name))?;
        self.agent = Some(agent);
        Ok(())
    }

    /// The host dies: SIGKILL to the agent, every shim and every cell in one go, none of them
    /// warned before another. Returns CLOCK_MONOTONIC just before the first signal.
    fn kill(&mut self) -> u64 {
        let agent_pid = self.agent.as_ref().map(Child::id);
        let (mut pids, cell_pids) = self.processes();
        pids.extend(agent_pid.map(process_tree).unwrap_or_default());
        let killed_at_ns = monotonic_ns();
        if let Some(agent_pid) = agent_pid {
            signal_group(agent_pid, libc::SIGKILL);
        }
        for &pid in &cell_pids {
            signal_group(pid, libc::SIGKILL); // a workload leads its own process group
        }
        for &pid in &pids {
            signal(pid, libc::SIGKILL);
        }
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.wait();
        }
        // Anything that slipped through (a shim spawned while the list was taken) goes now.
        for _ in 0..50 {
            let (stragglers, cell_pids) = self.processes();
            if stragglers.is_empty() {
                break;
            }
            for pid in cell_pids {
                signal_group(pid, libc::SIGKILL);
            }
            for pid in stragglers {
                signal(pid, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        killed_at_ns
    }

    /// Live processes of this host found outside the agent's process tree, and which of them are
    /// cells: shims and workloads named by the cells' `pid.json` (checked against their start
    /// times, so a reused pid is never hit), and whatever holds a file under the data dir (a
    /// live shim holds its cell's `lock`).
    fn processes(&self) -> (Vec<u32>, Vec<u32>) {
        let (mut pids, mut cell_pids) = (Vec::new(), Vec::new());
        for json in cell_pid_files(&self.data_dir) {
            let live = |pid: &str, start: &str| {
                let pid = u32::try_from(json[pid].as_u64()?).ok()?;
                still_running(pid, json[start].as_u64()?).then_some(pid)
            };
            cell_pids.extend(live("pid", "pid_start_time"));
            pids.extend(live("shim_pid", "shim_start_time"));
        }
        pids.extend(&cell_pids);
        pids.extend(pids_holding_files_under(&self.data_dir));
        (pids, cell_pids)
    }

    /// Whether a cell's workload runs here (this bench's cluster runs one workload).
    fn runs_a_cell(&self) -> bool {
        cell_pid_files(&self.data_dir).iter().any(|json| {
            let (pid, start) = (json["pid"].as_u64().and_then(|p| u32::try_from(p).ok()), json["pid_start_time"].as_u64());
            pid.zip(start).is_some_and(|(pid, start)| still_running(pid, start))
        })
    }

    fn log_tail(&self) -> String {
        tail(&fs::read_to_string(self.data_dir.join("agent.log")).unwrap_or_default(), 600).to_string()
    }
}

/// Every process but this one with an open file under `dir`.
fn pids_holding_files_under(dir: &Path) -> Vec<u32> {
    let Ok(procs) = fs::read_dir("/proc") else { return Vec::new() };
    procs
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok().map(|pid| (pid, entry.path())))
        .filter(|&(pid, _)| pid != std::process::id())
        .filter(|(_, path)| {
            fs::read_dir(path.join("fd"))
                .map(|fds| fds.flatten().any(|fd| fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(dir))))
                .unwrap_or(false)
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// `warden server` and its hosts in one temp dir. Dropping it kills every host whole, then the
/// server, then removes the directory.
struct Cluster {
    root: TempDir,
    port: u16,
    server: Option<Proc>,
    hosts: Vec<Host>,
    api: Api,
    join_token: String,
}

impl Cluster {
    fn start() -> Result<Cluster> {
        let root = tempfile::tempdir()?;
        let (server, port, _, config_home, join_token) = start_control_plane(root.path())?;
        let addr = format!("127.0.0.1:{port}");
        let identity = warden_runtime::auth::Identity::load(&config_home.join("warden/admin.key"))?;
        let api = Api::new(&addr, identity, Duration::from_secs(10))?;
        let hosts = (1..=N_HOSTS)
            .map(|i| Host { name: format!("h{i}"), data_dir: root.path().join(format!("agent-h{i}")), agent: None })
            .collect();
        let mut cluster = Cluster { root, port, server: Some(server), hosts, api, join_token };
        for i in 0..N_HOSTS {
            cluster.start_host(i)?;
        }
        wait_until(STEP_TIMEOUT, "every host to be up", || Ok((cluster.hosts_up()?.len() == N_HOSTS).then_some(())))
            .inspect_err(|_| cluster.print_logs())?;
        Ok(cluster)
    }

    fn start_host(&mut self, i: usize) -> Result<()> {
        let url = format!("https://127.0.0.1:{}", self.port);
        let config_home = self.config_home();
        self.hosts[i].start(&url, &self.join_token, &config_home)
    }

    fn host_index(&self, name: &str) -> Result<usize> {
        self.hosts
            .iter()
            .position(|h| h.name == name)
            .ok_or_else(|| anyhow!("the primary runs on {name:?}, not one of our hosts"))
    }

    /// The `warden` CLI against this cluster's server, signed with its admin key.
    fn cli(&self, args: &[&str]) -> Result<String> {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        warden_cli(&format!("127.0.0.1:{}", self.port), &self.config_home(), &args)
    }

    /// `XDG_CONFIG_HOME` of the server, its agents and the CLI: where the admin key lives.
    fn config_home(&self) -> PathBuf {
        self.root.path().join("config")
    }

    fn hosts(&self) -> Result<Vec<HostView>> {
        Ok(serde_json::from_slice(&self.api.request("GET", "/v1/hosts", b"")?)?)
    }

    fn hosts_up(&self) -> Result<BTreeSet<String>> {
        Ok(self.hosts()?.into_iter().filter(|h| h.state == "up").map(|h| h.name).collect())
    }

    fn status(&self, id: &str) -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(&self.api.request("GET", &format!("/v1/workloads/{id}"), b"")?)?)
    }

    /// The workload's standby slots armed now, host → the primary's host they were armed for:
    /// the journal's `standby.armed` events minus its `standby.released` ones.
    fn armed_standbys(&self, id: &str) -> Result<BTreeMap<String, String>> {
        let mut slots = BTreeMap::new();
        for event in self.api.events_after(0)?.iter().filter(|event| event["data"]["workload_id"] == id) {
            let data = &event["data"];
            match event["type"].as_str() {
                Some("dev.warden.standby.armed.v1") => {
                    let (host, primary) = (data["slot"]["host"].as_str(), data["slot"]["primary"].as_str());
                    slots.insert(host.unwrap_or_default().to_string(), primary.unwrap_or_default().to_string());
                }
                Some("dev.warden.standby.released.v1") => {
                    slots.remove(data["host"].as_str().unwrap_or_default());
                }
                _ => {}
            }
        }
        Ok(slots)
    }

    /// `POST /v1/workloads`; a 4xx answer is the server's verdict on the spec, not an error.
    fn submit(&self, spec_toml: &str) -> Result<Submitted> {
        let path = "/v1/workloads";
        let body = serde_json::to_vec(&SubmitRequest {
            file: "failover.toml".into(),
            spec_toml: spec_toml.to_string(),
            consumer_workload_id: None,
        })?;
        match self.api.http.call("POST", path, &body, Some(self.api.timeout)) {
            Ok((_, answer)) => {
                let view: serde_json::Value = serde_json::from_slice(&answer)?;
                let id = view["id"].as_str().ok_or_else(|| anyhow!("the submission's answer has no id: {view}"))?;
                Ok(Submitted::Accepted(id.to_string()))
            }
            Err(HttpError::Status { code: code @ 400..=499, message }) => {
                Ok(Submitted::Rejected(format!("HTTP {code}: {message}")))
            }
            Err(e) => Err(e).context(format!("POST {path}")),
        }
    }

    /// The tails of the server's and every agent's log, to stderr: why a step failed.
    fn print_logs(&self) {
        let server_log = fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default();
        let mut text = format!("  logs:\n--- server\n{}", tail(&server_log, 600));
        for host in &self.hosts {
            let _ = write!(text, "\n--- {}\n{}", host.name, host.log_tail());
        }
        progress(format_args!("{text}"));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            host.kill();
        }
        drop(self.server.take());
    }
}

enum Submitted {
    Accepted(String),
    /// The server refused the spec; its message.
    Rejected(String),
}

/// What the workload's status says about its primary, once one runs.
struct Primary {
    host: String,
    epoch: u64,
}

/// The running primary in a status view, if there is one (running, with a pid and an epoch).
fn running_primary(view: &serde_json::Value) -> Option<Primary> {
    let running = view["state"] == "running" && view["pid"].is_u64();
    let primary = Primary { host: view["host"].as_str()?.to_string(), epoch: view["epoch"].as_u64()? };
    running.then_some(primary)
}

// ---------------------------------------------------------------------------------------------
// The runs
// ---------------------------------------------------------------------------------------------

enum ModeOutcome {
    Measured(Measured),
    Unsupported(String),
    Failed(anyhow::Error),
}

struct Measured {
    /// Host killed (or drain invoked) → the new primary's first line, in ns, one per completed run.
    failovers_ns: Vec<u64>,
    /// Runs after which two epochs' spans overlapped that had not before.
    runs_with_overlap: usize,
    /// Why the runs stopped early, if they did.
    stopped: Option<String>,
}

/// Measures every row on a fresh cluster of its own; returns the section's table (markdown).
pub(crate) fn failover_section() -> String {
    let runs = runs_per_mode();
    let timing = warden_runtime::cluster::ClusterConfig::default().lease;
    progress(format_args!(
        "failover: {} rows × {runs} runs on {N_HOSTS} hosts (~{} s if every row runs)",
        ROWS.len(),
        ROWS.iter().map(|row| row.seconds(runs)).sum::<usize>()
    ));
    let outcomes: Vec<(String, ModeOutcome)> = ROWS
        .iter()
        .map(|row| {
            let name = row.name();
            progress(format_args!("failover: {name}"));
            let outcome = measure_row(row, runs);
            match &outcome {
                ModeOutcome::Unsupported(why) => progress(format_args!("  {name}: unsupported: {why}")),
                ModeOutcome::Failed(e) => progress(format_args!("  {name}: failed: {e:#}")),
                ModeOutcome::Measured(m) => {
                    if let Some(why) = &m.stopped {
                        progress(format_args!("  {name}: stopped after {} runs: {why}", m.failovers_ns.len()));
                    }
                }
            }
            (name, outcome)
        })
        .collect();
    failover_table(&outcomes, runs, timing.ttl_ms, timing.margin_ms)
}

fn runs_per_mode() -> usize {
    match std::env::var("WARDEN_BENCH_FAILOVER_RUNS") {
        Err(_) => DEFAULT_RUNS,
        Ok(text) => text.trim().parse().ok().filter(|&n| n > 0).unwrap_or_else(|| {
            progress(format_args!("warning: WARDEN_BENCH_FAILOVER_RUNS={text:?} is not a positive count; using {DEFAULT_RUNS}"));
            DEFAULT_RUNS
        }),
    }
}

fn measure_row(row: &Row, runs: usize) -> ModeOutcome {
    let mut cluster = match Cluster::start() {
        Ok(cluster) => cluster,
        Err(e) => return ModeOutcome::Failed(e),
    };
    // The cell runs as the `warden` user: its ground truth goes where it may write.
    let truth = match crate::common::shared_dir(cluster.root.path(), "truth") {
        Ok(dir) => dir.join("truth.log"),
        Err(e) => return ModeOutcome::Failed(e.into()),
    };
    // No restart backoff: warden counts a lost host as a failure of the workload's cell, so
    // with one each run would wait a longer backoff than the last (backoff_reset is 10 min).
    let spec = format!(
        "name = \"{name}\"\n[cell]\nargv = [{exe}]\nenv = {{ {TRUTH_ENV} = {truth} }}\n\
         [restart]\npolicy = \"always\"\nbackoff = \"0s\"\nbackoff_max = \"0s\"\n[placement]\ninstances = 1\n{replication}",
        name = row.workload(),
        replication = row.replication,
        exe = toml_string(&bench_exe()),
        truth = toml_string(&truth),
    );
    let id = match cluster.submit(&spec) {
        Ok(Submitted::Accepted(id)) => id,
        Ok(Submitted::Rejected(why)) => return ModeOutcome::Unsupported(why),
        Err(e) => return ModeOutcome::Failed(e),
    };
    match run_row(&mut cluster, &id, &truth, row, runs) {
        Ok(outcome) => outcome,
        Err(e) => {
            cluster.print_logs();
            ModeOutcome::Failed(e)
        }
    }
}

/// Waits for the first primary (and standby), then does `runs` failovers the row's way; a run
/// that fails ends the row with what was measured so far.
fn run_row(cluster: &mut Cluster, id: &str, truth: &Path, row: &Row, runs: usize) -> Result<ModeOutcome> {
    if let Settled::NoStandby(why) = settle(cluster, id, None, row.standby)? {
        return Ok(ModeOutcome::Unsupported(why));
    }
    let mut measured = Measured { failovers_ns: Vec::new(), runs_with_overlap: 0, stopped: None };
    let mut overlaps_seen = BTreeSet::new();
    for run in 1..=runs {
        let result = one_failover(cluster, id, truth, row.standby, row.trigger).and_then(|failover_ns| {
            let overlaps = overlapping_epochs(&spans(&read_truth(truth)?));
            let new_overlap = overlaps.difference(&overlaps_seen).count() > 0;
            overlaps_seen = overlaps;
            Ok((failover_ns, new_overlap))
        });
        match result {
            Ok((failover_ns, new_overlap)) => {
                progress(format_args!(
                    "  run {run}/{runs}: {:.0} ms{}",
                    failover_ns as f64 / 1e6,
                    if new_overlap { ", OVERLAP" } else { "" }
                ));
                measured.failovers_ns.push(failover_ns);
                measured.runs_with_overlap += usize::from(new_overlap);
            }
            Err(e) => {
                cluster.print_logs();
                measured.stopped = Some(format!("{e:#}"));
                break;
            }
        }
    }
    // A primary that outlived its lease would write after the last check: one more look.
    std::thread::sleep(Duration::from_millis(500));
    let overlaps = overlapping_epochs(&spans(&read_truth(truth)?));
    if measured.failovers_ns.len() == runs && overlaps.difference(&overlaps_seen).count() > 0 {
        measured.runs_with_overlap += 1;
    }
    Ok(ModeOutcome::Measured(measured))
}

enum Settled {
    /// A primary runs (and, where one is wanted, a standby is armed for it).
    Ready,
    /// No standby was armed in time; why, for the table.
    NoStandby(String),
}

/// Waits until the workload runs a primary whose epoch is newer than `after_epoch` and its
/// `standby` is ready on another host.
fn settle(cluster: &Cluster, id: &str, after_epoch: Option<u64>, standby: Standby) -> Result<Settled> {
    let primary = wait_until(STEP_TIMEOUT, "a running primary", || {
        Ok(running_primary(&cluster.status(id)?).filter(|p| after_epoch.is_none_or(|old| p.epoch > old)))
    })?;
    if standby == Standby::None {
        return Ok(Settled::Ready);
    }
    let ready = |host: &str, for_primary: &str| {
        host != primary.host
            && for_primary == primary.host
            && (standby == Standby::Armed || cluster.hosts.iter().any(|h| h.name == host && h.runs_a_cell()))
    };
    let armed = wait_until(STANDBY_TIMEOUT, "a standby to be ready", || {
        Ok(cluster.armed_standbys(id)?.iter().any(|(host, for_primary)| ready(host, for_primary)).then_some(()))
    });
    let what = if standby == Standby::Running { "hot standby (its cell running)" } else { "armed standby" };
    match armed {
        Ok(()) => Ok(Settled::Ready),
        Err(_) => Ok(Settled::NoStandby(format!(
            "no {what} for the primary on {} within {} s (armed, host → primary: {:?})",
            primary.host,
            STANDBY_TIMEOUT.as_secs(),
            cluster.armed_standbys(id)?
        ))),
    }
}

/// One failover: kill (or drain) the primary's host, wait for the first line of a newer epoch,
/// restart (or undrain) the host and let the workload settle. Returns host killed (drain
/// invoked) → that line, in ns.
fn one_failover(cluster: &mut Cluster, id: &str, truth: &Path, standby: Standby, trigger: Trigger) -> Result<u64> {
    // The primary to take away is the one the status names *and* the one writing now.
    let primary = wait_until(STEP_TIMEOUT, "the primary to be writing the ground truth", || {
        let Some(primary) = running_primary(&cluster.status(id)?) else { return Ok(None) };
        let lines = read_truth(truth)?;
        let writing = lines.last().is_some_and(|&(epoch, ns)| {
            epoch == primary.epoch && monotonic_ns().saturating_sub(ns) < 5 * LINE_EVERY.as_nanos() as u64
        });
        Ok(writing.then_some(primary))
    })?;
    let (i, host) = (cluster.host_index(&primary.host)?, primary.host.as_str());
    let started_ns = match trigger {
        Trigger::Kill => cluster.hosts[i].kill(),
        Trigger::Drain => {
            let started_ns = monotonic_ns();
            cluster.cli(&["hosts", "drain", host])?;
            started_ns
        }
    };

    let first_ns = wait_every(STEP_TIMEOUT, Duration::from_millis(10), "a line of a newer epoch", || {
        Ok(read_truth(truth)?.into_iter().filter(|&(epoch, _)| epoch > primary.epoch).map(|(_, ns)| ns).min())
    })?;

    match trigger {
        Trigger::Kill => {
            // The host comes back only once the server has seen it go, so "up" below is its re-join.
            wait_until(STEP_TIMEOUT, "the killed host to be down", || {
                Ok(cluster.hosts()?.iter().any(|h| h.name == host && h.state == "down").then_some(()))
            })?;
            cluster.start_host(i)?;
        }
        Trigger::Drain => {
            cluster.cli(&["hosts", "undrain", host])?;
        }
    }
    wait_until(STEP_TIMEOUT, "the host to be back in service", || Ok((cluster.hosts_up()?.len() == N_HOSTS).then_some(())))?;
    if let Settled::NoStandby(why) = settle(cluster, id, Some(primary.epoch), standby)? {
        bail!("the standby was not re-armed after the host came back: {why}");
    }
    Ok(first_ns.saturating_sub(started_ns))
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

fn failover_table(outcomes: &[(String, ModeOutcome)], runs: usize, ttl_ms: u64, margin_ms: u64) -> String {
    let lease = format!("lease ttl {ttl_ms} ms + margin {margin_ms} ms");
    let mut out = String::new();
    let _ = writeln!(out, "## warden failover\n");
    let _ = writeln!(
        out,
        "Reproduce with `cargo build --release --workspace --bins && WARDEN_BENCH_ONLY=failover \
         WARDEN_BENCH_FAILOVER_RUNS={runs} cargo bench --bench warden_bench`. {}\n",
        machine_summary()
    );
    let _ = writeln!(out, "| Mode | Runs | Failover p50 | p95 | max | Lease | Runs with overlap (must be 0) |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for (mode, outcome) in outcomes {
        match outcome {
            ModeOutcome::Measured(m) if !m.failovers_ns.is_empty() => {
                let s = sorted(&m.failovers_ns);
                let runs = match &m.stopped {
                    None => s.len().to_string(),
                    Some(why) => format!("{} (stopped early: {})", s.len(), one_line(why)),
                };
                let _ = writeln!(
                    out,
                    "| {mode} | {runs} | {} | {} | {} | {lease} | {} |",
                    fmt_failover(median(&s)),
                    fmt_failover(nearest_rank(&s, 0.95) as f64),
                    fmt_failover(s[s.len() - 1] as f64),
                    m.runs_with_overlap
                );
            }
            ModeOutcome::Measured(m) => {
                let why = m.stopped.as_deref().unwrap_or("no run completed");
                let _ = writeln!(out, "| {mode} | 0 | error: {} | - | - | {lease} | - |", one_line(why));
            }
            ModeOutcome::Unsupported(why) => {
                let _ = writeln!(out, "| {mode} | - | unsupported: {} | - | - | {lease} | - |", one_line(why));
            }
            ModeOutcome::Failed(e) => {
                let _ = writeln!(out, "| {mode} | - | error: {} | - | - | {lease} | - |", one_line(&format!("{e:#}")));
            }
        }
    }
    let _ = writeln!(
        out,
        "\nFailover = CLOCK_MONOTONIC just before the SIGKILL of the primary's whole host (agent, shims, cells) → \
         the first line the workload wrote under a higher lease epoch (it appends `<WARDEN_EPOCH> <CLOCK_MONOTONIC ns>` \
         every {} ms). {N_HOSTS} agents and a `warden server` on loopback; the killed host is restarted and the workload \
         settles before the next run. `backoff = \"0s\"`: a lost host counts as a failure of the workload, so with \
         a restart backoff every run would add a doubling delay. Overlap: a run after which some older epoch's last \
         line follows a newer epoch's first one.",
        LINE_EVERY.as_millis()
    );
    let _ = writeln!(
        out,
        "\ndrain: `warden hosts drain` of the primary's host → first line under the new epoch; the lease is revoked, \
         not waited out. The clock starts just before the CLI process is spawned; the host is undrained and the \
         workload settles before the next run."
    );
    out
}

/// Nearest-rank percentile of sorted samples.
fn nearest_rank(sorted: &[u64], quantile: f64) -> u64 {
    let rank = (sorted.len() as f64 * quantile).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn fmt_failover(ns: f64) -> String {
    format!("{:.0} ms", ns / 1e6)
}
