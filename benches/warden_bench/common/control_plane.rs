//! warden under the bench: a real `warden up` (or `warden server`), its CLI and its signed API.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;
use warden_core::fingerprint::Fingerprint;
use warden_runtime::auth::Identity;
use warden_runtime::client::{BlockingClient, BlockingResponse, ClientConfig, ServerTrust};
use warden_runtime::view::{SubmitRequest, WorkloadView};

use crate::common::process::{log_file, signal, signal_group, tail, wait_until, Proc};

/// Threads submitting (and stopping) cells over the API.
pub(crate) const API_THREADS: usize = 8;

pub(crate) fn warden_bin() -> &'static str {
    env!("CARGO_BIN_EXE_warden")
}

/// A `warden up` on its own port, data dir and config dir. Dropping it kills the server and
/// every cell it started.
pub(crate) struct WardenServer {
    pub(crate) root: TempDir,
    pub(crate) port: u16,
    pub(crate) server: Option<Proc>,
}

impl WardenServer {
    pub(crate) fn start() -> Result<WardenServer> {
        let mut warden = WardenServer::new()?;
        warden.launch(Duration::from_millis(20), Duration::from_secs(20))?;
        Ok(warden)
    }

    /// Its directories and port, with no server yet: the caller may seed the data dir first.
    pub(crate) fn new() -> Result<WardenServer> {
        let root = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Ok(WardenServer { root, port, server: None })
    }

    /// Starts `warden up` and waits until `/v1/health` answers, polling every `poll`. Returns the
    /// instant just before the spawn and how long after it the health check first answered.
    pub(crate) fn launch(&mut self, poll: Duration, timeout: Duration) -> Result<(Instant, Duration)> {
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
        let deadline = spawned + timeout;
        let mut health = None;
        while !answers_health_once_pinned(&self.addr(), &self.data_dir(), &mut health)? {
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

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub(crate) fn config_home(&self) -> PathBuf {
        self.root.path().join("config")
    }

    pub(crate) fn up_log(&self) -> String {
        fs::read_to_string(self.root.path().join("up.log")).unwrap_or_default()
    }

    pub(crate) fn server_pid(&self) -> u32 {
        self.server.as_ref().map(Proc::pid).unwrap_or(0)
    }

    /// The `warden` CLI against this server, as a user would run it.
    pub(crate) fn cli(&self, args: &[&OsStr]) -> Result<String> {
        warden_cli(&self.addr(), &self.config_home(), args)
    }

    pub(crate) fn api(&self) -> Result<Api> {
        let identity = Identity::load(&self.config_home().join("warden/admin.key"))?;
        Api::new(&self.addr(), identity, Duration::from_secs(60))
    }

    /// `shim_pid` of every cell that has written its `pid.json`.
    pub(crate) fn shim_pids(&self) -> Vec<u32> {
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
pub(crate) fn start_control_plane(root: &Path) -> Result<(Proc, u16, PathBuf, PathBuf, String)> {
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
    let mut health = None;
    wait_until(Duration::from_secs(20), "warden server to answer", || {
        server.check_alive("warden server", &server_log)?;
        Ok(answers_health_once_pinned(&addr, &data_dir, &mut health)?.then_some(()))
    })?;
    let join_token = std::fs::read_to_string(data_dir.join("join-token")).context("warden server wrote no join-token")?;
    Ok((server, port, data_dir, config_home, join_token.trim().to_string()))
}

pub(crate) fn warden_cli(addr: &str, config_home: &Path, args: &[&OsStr]) -> Result<String> {
    let Output { status, stdout, stderr } =
        Command::new(warden_bin()).args(args).env("WARDEN_ADDR", addr).env("XDG_CONFIG_HOME", config_home).output()?;
    if !status.success() {
        bail!("warden {args:?} failed: {}", String::from_utf8_lossy(&stderr));
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

pub(crate) fn cell_pid_files(data_dir: &Path) -> Vec<serde_json::Value> {
    let Ok(entries) = fs::read_dir(data_dir.join("cells")) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| serde_json::from_str(&fs::read_to_string(entry.path().join("pid.json")).ok()?).ok())
        .collect()
}

/// The certificate fingerprints of the servers the bench started, by `host:port`.
static PINS: Mutex<BTreeMap<String, Fingerprint>> = Mutex::new(BTreeMap::new());

/// How the bench's clients connect to `addr`: trusting the certificate pinned for it when its
/// server started (`answers_health_once_pinned`), or in plain HTTP for an explicit `http://`.
pub(crate) fn client_config(addr: &str) -> Result<ClientConfig> {
    if addr.starts_with("http://") {
        return Ok(ClientConfig::default());
    }
    let authority = addr.trim_start_matches("https://");
    let pin = PINS.lock().unwrap_or_else(|e| e.into_inner()).get(authority).cloned();
    let pin = pin.ok_or_else(|| anyhow!("no certificate pinned for {addr}: no server the bench started listens there"))?;
    Ok(ClientConfig { trust: ServerTrust::Pinned(pin), ..ClientConfig::default() })
}

/// Whether the server at `addr` answers its health check, once it wrote its certificate's
/// fingerprint to `<data_dir>/tls/fingerprint` (then pinned for `addr`).
fn answers_health_once_pinned(addr: &str, data_dir: &Path, health: &mut Option<BlockingClient>) -> Result<bool> {
    if health.is_none() {
        let Some(pin) = fs::read_to_string(data_dir.join("tls/fingerprint")).ok().and_then(|t| Fingerprint::parse(&t)) else {
            return Ok(false);
        };
        PINS.lock().unwrap_or_else(|e| e.into_inner()).insert(addr.to_string(), pin);
        *health = Some(unsigned_client(addr)?);
    }
    Ok(health.as_ref().is_some_and(answers_health))
}

/// The workspace's client for `addr`, signing nothing: health and metrics.
pub(crate) fn unsigned_client(addr: &str) -> Result<BlockingClient> {
    Ok(BlockingClient::unsigned(addr, &client_config(addr)?)?)
}

/// Whether the server behind `client` answers `GET /v1/health` (within a second).
pub(crate) fn answers_health(client: &BlockingClient) -> bool {
    client.call("GET", "/v1/health", b"", Some(Duration::from_secs(1))).is_ok()
}

/// Signed requests to warden's HTTP API (what the CLI does, without a process per request),
/// through the workspace's one client.
pub(crate) struct Api {
    pub(crate) http: BlockingClient,
    /// The longest any one request may take, its answer read.
    pub(crate) timeout: Duration,
}

impl Api {
    /// Requests to the server at `addr`, signed with `identity`, each within `timeout`.
    pub(crate) fn new(addr: &str, identity: Identity, timeout: Duration) -> Result<Api> {
        let http = BlockingClient::new(addr, Arc::new(identity), &client_config(addr)?)?;
        Ok(Api { http, timeout })
    }

    /// A signed request; a 2xx answer's body, or an error naming the request and what the
    /// server said.
    pub(crate) fn request(&self, method: &str, path: &str, body: &[u8]) -> Result<Vec<u8>> {
        let (_, answer) = self.http.call(method, path, body, Some(self.timeout)).with_context(|| format!("{method} {path}"))?;
        Ok(answer)
    }

    /// A signed `GET` whose answer is read as it comes (a follow), with no time limit.
    pub(crate) fn stream(&self, path: &str) -> Result<BlockingResponse> {
        self.http.stream("GET", path, b"").with_context(|| format!("GET {path}"))
    }

    pub(crate) fn submit(&self, file: &str, spec_toml: &str) -> Result<WorkloadView> {
        let body = serde_json::to_vec(&SubmitRequest {
            file: file.to_string(),
            spec_toml: spec_toml.to_string(),
            consumer_workload_id: None,
        })?;
        Ok(serde_json::from_slice(&self.request("POST", "/v1/workloads", &body)?)?)
    }

    /// Live (non-terminal) workloads.
    pub(crate) fn list(&self) -> Result<Vec<WorkloadView>> {
        Ok(serde_json::from_slice(&self.request("GET", "/v1/workloads", b"")?)?)
    }

    pub(crate) fn status(&self, id: &str) -> Result<WorkloadView> {
        Ok(serde_json::from_slice(&self.request("GET", &format!("/v1/workloads/{id}"), b"")?)?)
    }

    pub(crate) fn stop(&self, id: &str) -> Result<()> {
        self.request("POST", &format!("/v1/workloads/{id}/stop"), b"")?;
        Ok(())
    }

    /// `POST /v1/jobs`: starts a run of the manifest; returns its run view.
    pub(crate) fn job_run(&self, file: &str, manifest_toml: &str) -> Result<serde_json::Value> {
        let body = serde_json::to_vec(&serde_json::json!({ "file": file, "manifest_toml": manifest_toml }))?;
        Ok(serde_json::from_slice(&self.request("POST", "/v1/jobs", &body)?)?)
    }

    /// A run's view (of a run of many states, more than 10 MB: the client sets no limit).
    pub(crate) fn job(&self, run_id: &str) -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(&self.request("GET", &format!("/v1/jobs/{run_id}"), b"")?)?)
    }

    /// Every journaled event with seq > `after`, as parsed CloudEvents.
    pub(crate) fn events_after(&self, after: u64) -> Result<Vec<serde_json::Value>> {
        let answer = self.request("GET", &format!("/v1/events?after={after}"), b"")?;
        answer.lines().map(|line| Ok(serde_json::from_str(&line?)?)).collect()
    }
}

/// A spec for a cell that just sleeps and is never restarted.
pub(crate) fn sleeper_spec(n: usize) -> String {
    format!("name = \"sleep-{n}\"\n[cell]\nargv = [\"sleep\", \"1000\"]\n[restart]\npolicy = \"never\"\n")
}

/// Runs `work(i)` for every `i < n` on `threads` threads; returns the results in index order.
pub(crate) fn parallel<T: Send>(n: usize, threads: usize, work: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
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
pub(crate) fn stop_all(api: &Api, ids: &[String]) -> Result<()> {
    parallel(ids.len(), API_THREADS, |i| api.stop(&ids[i]))?;
    wait_until(Duration::from_secs(120), "every workload to stop", || Ok(api.list()?.is_empty().then_some(())))
}

pub(crate) fn toml_string(path: &Path) -> String {
    // A JSON string literal is a valid TOML basic string for any path this bench creates.
    serde_json::to_string(&path.display().to_string()).expect("a string serializes")
}

/// Why a workload ended, in words.
pub(crate) fn why(view: &WorkloadView) -> String {
    let reason = view.reason.clone().unwrap_or_else(|| {
        view.last_exit.as_ref().map(|e| serde_json::to_string(e).unwrap_or_default()).unwrap_or_else(|| "-".into())
    });
    format!("{}: {reason}", view.state)
}
