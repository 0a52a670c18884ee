//! warden under the bench: a real `warden up` (or `warden server`), its CLI and its signed API.

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;
use warden_runtime::auth::Identity;
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
        let agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(5)).timeout(Duration::from_secs(60)).build();
        Ok(Api { base: format!("http://{}", self.addr()), identity, agent })
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
    let health = format!("http://{addr}/v1/health");
    wait_until(Duration::from_secs(20), "warden server to answer", || {
        server.check_alive("warden server", &server_log)?;
        Ok(ureq::get(&health).call().is_ok().then_some(()))
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

/// Signed requests to warden's HTTP API (what the CLI does, without a process per request).
pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) identity: Identity,
    pub(crate) agent: ureq::Agent,
}

impl Api {
    pub(crate) fn request(&self, method: &str, path: &str, body: &[u8]) -> Result<ureq::Response> {
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

    pub(crate) fn submit(&self, file: &str, spec_toml: &str) -> Result<WorkloadView> {
        let body = serde_json::to_vec(&SubmitRequest {
            file: file.to_string(),
            spec_toml: spec_toml.to_string(),
            consumer_workload_id: None,
        })?;
        Ok(serde_json::from_str(&self.request("POST", "/v1/workloads", &body)?.into_string()?)?)
    }

    /// Live (non-terminal) workloads.
    pub(crate) fn list(&self) -> Result<Vec<WorkloadView>> {
        Ok(serde_json::from_str(&self.request("GET", "/v1/workloads", b"")?.into_string()?)?)
    }

    pub(crate) fn status(&self, id: &str) -> Result<WorkloadView> {
        Ok(serde_json::from_str(&self.request("GET", &format!("/v1/workloads/{id}"), b"")?.into_string()?)?)
    }

    pub(crate) fn stop(&self, id: &str) -> Result<()> {
        self.request("POST", &format!("/v1/workloads/{id}/stop"), b"")?;
        Ok(())
    }

    /// `POST /v1/jobs`: starts a run of the manifest; returns its run view.
    pub(crate) fn job_run(&self, file: &str, manifest_toml: &str) -> Result<serde_json::Value> {
        let body = serde_json::to_vec(&serde_json::json!({ "file": file, "manifest_toml": manifest_toml }))?;
        Ok(serde_json::from_reader(self.request("POST", "/v1/jobs", &body)?.into_reader())?)
    }

    /// A run's view, read as a stream: the view of a run of many states is larger than the
    /// 10 MB that `into_string` accepts.
    pub(crate) fn job(&self, run_id: &str) -> Result<serde_json::Value> {
        Ok(serde_json::from_reader(self.request("GET", &format!("/v1/jobs/{run_id}"), b"")?.into_reader())?)
    }

    /// Every journaled event with seq > `after`, as parsed CloudEvents.
    pub(crate) fn events_after(&self, after: u64) -> Result<Vec<serde_json::Value>> {
        let response = self.request("GET", &format!("/v1/events?after={after}"), b"")?;
        BufReader::new(response.into_reader()).lines().map(|line| Ok(serde_json::from_str(&line?)?)).collect()
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
