//! The OCI module against a real runc running real containers on a busybox rootfs: first directly,
//! started as the shim starts them (`run_argv` as a child process) — the bundle, exit statuses,
//! memory and pids limits, network isolation, and that teardown leaves no state, cgroup or mount
//! — then through the backend and its shim: the recorded pid, start failures in the runtime's
//! words, lost shims and orphaned containers. crun must either work or refuse this host's hybrid
//! cgroups clearly. What every backend does alike is the conformance suite's.

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use support::{cgroup_dirs, rootfs, wait_for};
use warden_cell::oci::{self, ContainerState, OciError};
use warden_cell::{
    CellConfig, CellIsolation, CellLimits, CellState, OciRuntime, ProcessBackend, ShimExe, StartError, StartedCell,
};

const TIMEOUT: Duration = Duration::from_secs(30);
const MIB: u64 = 1024 * 1024;

/// One test's world: a temp dir holding the rootfs, the cells' bundles and runc's state root.
struct Fixture {
    dir: tempfile::TempDir,
    rootfs: PathBuf,
    state_root: PathBuf,
    runtime: PathBuf,
}

impl Drop for Fixture {
    /// A failed check must not leave containers running once their state root is deleted with
    /// the temp dir: whatever the runtime still knows goes first.
    fn drop(&mut self) {
        rootfs::delete_all_containers(&self.runtime, &self.state_root);
        rootfs::delete_all_containers(&self.runtime, &oci::state_root(&self.dir.path().join("cells")));
    }
}

fn fixture() -> Fixture {
    fixture_with(OciRuntime::Runc)
}

fn fixture_with(runtime: OciRuntime) -> Fixture {
    rootfs::ensure_packages();
    if runtime == OciRuntime::Crun {
        rootfs::ensure_crun();
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let rootfs = rootfs::build(dir.path());
    let state_root = dir.path().join("data/runc");
    let runtime = oci::runtime_binary(runtime).expect("runtime installed");
    Fixture { dir, rootfs, state_root, runtime }
}

/// Cell ids like the engine's (`<workload>.<n>`), made unique per process because the cgroup
/// `warden/<cell_id>` is shared by every test binary running as this user.
fn cell_id(name: &str) -> String {
    format!("{name}-{}.1", std::process::id())
}

fn cell(fx: &Fixture, name: &str, script: &str) -> CellConfig {
    CellConfig {
        cell_id: cell_id(name),
        workload_id: name.to_string(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        workdir: None,
        log_path: fx.dir.path().join("logs/output.log"),
        log_max_size_bytes: 0,
        log_max_files: 0,
        isolation: CellIsolation::Oci { rootfs: fx.rootfs.clone(), runtime: OciRuntime::Runc, network_none: false },
        limits: CellLimits::default(),
        binds: Vec::new(),
        fence: None,
        user: None,
    }
}

/// A `runc run` in the foreground, as the shim will run it. Dropping it tears the container
/// down, so a failing test leaves nothing running.
struct Running {
    id: String,
    runtime: PathBuf,
    state_root: PathBuf,
    child: Option<Child>,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Fixture {
    fn bundle_dir(&self, cell: &CellConfig) -> PathBuf {
        self.dir.path().join("data/cells").join(&cell.cell_id).join("bundle")
    }

    fn start(&self, cell: &CellConfig) -> Running {
        let network_none = match &cell.isolation {
            CellIsolation::Oci { network_none, .. } => *network_none,
            other => panic!("not an OCI cell: {other:?}"),
        };
        let bundle = self.bundle_dir(cell);
        oci::write_bundle(&bundle, cell, &self.rootfs, network_none).expect("write bundle");
        let id = oci::container_id(&cell.cell_id);
        let argv = oci::run_argv(&self.runtime, &self.state_root, &bundle, &id);
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn runtime");
        let stdout = child.stdout.take().map(read_all);
        let stderr = child.stderr.take().map(read_all);
        Running { id, runtime: self.runtime.clone(), state_root: self.state_root.clone(), child: Some(child), stdout, stderr }
    }

    fn run(&self, cell: &CellConfig) -> Finished {
        self.start(cell).wait()
    }

    fn path_in_rootfs(&self, path: &str) -> PathBuf {
        self.rootfs.join(path.trim_start_matches('/'))
    }

    /// Waits for a file the container creates to say it is ready (e.g. after installing a trap).
    fn wait_for_file(&self, path: &str) {
        let path = self.path_in_rootfs(path);
        wait_for(&format!("{} to appear", path.display()), || path.exists());
    }
}

fn read_all(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

impl Running {
    fn state(&self) -> Option<ContainerState> {
        oci::state(&self.runtime, &self.state_root, &self.id).expect("runc state")
    }

    /// Waits for the container's PID 1 to run the workload; returns its host pid.
    fn wait_running(&self) -> u32 {
        let mut pid = None;
        wait_for(&format!("container {} to run", self.id), || {
            pid = self.state().filter(|s| s.status == "running").and_then(|s| s.pid);
            pid.is_some()
        });
        pid.expect("pid")
    }

    fn kill(&self, signal: &str) -> Result<(), OciError> {
        oci::kill(&self.runtime, &self.state_root, &self.id, signal)
    }

    fn wait(mut self) -> Finished {
        let child = self.child.as_mut().expect("child");
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "container {} did not end within {TIMEOUT:?}", self.id);
            std::thread::sleep(Duration::from_millis(20));
        };
        self.child = None;
        let stdout = self.stdout.take().expect("stdout").join().expect("stdout reader");
        let stderr = self.stderr.take().expect("stderr").join().expect("stderr reader");
        Finished { status, stdout, stderr }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = oci::delete(&self.runtime, &self.state_root, &self.id);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn cgroup_dir_with(pid: u32, file: &str) -> Option<PathBuf> {
    cgroup_dirs(pid).into_iter().find(|d| d.join(file).exists())
}

fn interfaces(net_dev: &str) -> Vec<String> {
    // Two header lines, then "  name: counters...".
    let mut names: Vec<String> = net_dev.lines().skip(2).filter_map(|l| Some(l.split_once(':')?.0.trim().to_string())).collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------------
// The bundle and the command lines, without running anything.

#[test]
fn bundle_config_follows_the_cell() {
    let mut config = CellConfig {
        cell_id: "web.3".into(),
        workload_id: "web".into(),
        argv: vec!["server".into(), "--port=80".into()],
        env: BTreeMap::from([("GREETING".to_string(), "hi".to_string()), ("PATH".to_string(), "/app/bin".to_string())]),
        workdir: Some("srv".into()),
        log_path: "/tmp/unused".into(),
        log_max_size_bytes: 0,
        log_max_files: 0,
        isolation: CellIsolation::Oci { rootfs: "/images/web".into(), runtime: OciRuntime::Runc, network_none: true },
        limits: CellLimits { memory_max_bytes: Some(64 * MIB), cpu_max_millicores: Some(500), pids_max: Some(20) },
        binds: Vec::new(),
        fence: None,
        user: None,
    };
    let c = oci::bundle_config(&config, Path::new("/images/web"), true);
    assert_eq!(c["process"]["args"], serde_json::json!(["server", "--port=80"]));
    assert_eq!(c["process"]["terminal"], false);
    assert_eq!(c["process"]["env"], serde_json::json!(["GREETING=hi", "PATH=/app/bin"]), "cell env overrides the default PATH");
    assert_eq!(c["process"]["cwd"], "/srv", "a relative workdir is taken from the container's root");
    assert_eq!(c["process"]["noNewPrivileges"], true);
    // A config from before users: root, as then; never any supplementary group.
    assert_eq!(c["process"]["user"], serde_json::json!({"uid": 0, "gid": 0, "additionalGids": []}));
    let with_user = CellConfig { user: Some(warden_cell::CellUser { uid: 4321, gid: 1234 }), ..config.clone() };
    let user = &oci::bundle_config(&with_user, Path::new("/images/web"), true)["process"]["user"];
    assert_eq!(user, &serde_json::json!({"uid": 4321, "gid": 1234, "additionalGids": []}));
    let caps = &c["process"]["capabilities"];
    assert_eq!(caps["bounding"].as_array().expect("bounding").len(), 14, "Docker's default set");
    assert!(caps["bounding"].as_array().unwrap().contains(&"CAP_NET_BIND_SERVICE".into()));
    assert!(!caps["bounding"].as_array().unwrap().contains(&"CAP_SYS_ADMIN".into()));
    assert_eq!(caps["effective"], caps["bounding"]);
    assert_eq!(caps["permitted"], caps["bounding"]);
    assert!(caps.get("ambient").is_none() && caps.get("inheritable").is_none());
    assert_eq!(c["root"], serde_json::json!({"path": "/images/web", "readonly": false}));
    assert_eq!(c["hostname"], "web.3");
    let dests: Vec<&str> = c["mounts"].as_array().unwrap().iter().map(|m| m["destination"].as_str().unwrap()).collect();
    assert_eq!(dests, ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"]);
    let sys = &c["mounts"][5];
    assert!(sys["options"].as_array().unwrap().contains(&"ro".into()), "/sys is read-only");
    let linux = &c["linux"];
    assert_eq!(linux["cgroupsPath"], "warden/web.3");
    assert_eq!(linux["resources"]["memory"], serde_json::json!({"limit": 64 * MIB}));
    assert_eq!(linux["resources"]["cpu"], serde_json::json!({"quota": 50_000, "period": 100_000}));
    assert_eq!(linux["resources"]["pids"], serde_json::json!({"limit": 20}));
    let ns = |c: &Value| -> Vec<String> {
        c["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ns(&c), ["pid", "mount", "ipc", "uts", "network"]);
    assert!(linux["maskedPaths"].as_array().unwrap().contains(&"/proc/kcore".into()));
    assert!(linux["readonlyPaths"].as_array().unwrap().contains(&"/proc/sys".into()));

    // Sharing the host's network: no network namespace at all. No limits: no resources for them.
    // A tiny CPU share is raised to the kernel's 1 ms minimum quota instead of failing the start.
    config.limits = CellLimits { cpu_max_millicores: Some(1), ..CellLimits::default() };
    config.env.clear();
    config.workdir = None;
    config.cell_id = "x".repeat(100);
    let c = oci::bundle_config(&config, Path::new("/images/web"), false);
    assert_eq!(ns(&c), ["pid", "mount", "ipc", "uts"]);
    assert_eq!(c["process"]["env"], serde_json::json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]));
    assert_eq!(c["process"]["cwd"], "/");
    assert_eq!(c["hostname"].as_str().unwrap().len(), 64, "sethostname(2) takes at most 64 bytes");
    assert!(c["linux"]["resources"].get("memory").is_none() && c["linux"]["resources"].get("pids").is_none());
    assert_eq!(c["linux"]["resources"]["cpu"]["quota"], 1_000);

    // write_bundle writes exactly that, and refuses a cell with nothing to run.
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("cell/bundle");
    oci::write_bundle(&bundle, &config, Path::new("/images/web"), false).expect("write bundle");
    let written: Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(written, c);
    config.argv.clear();
    let err = oci::write_bundle(&bundle, &config, Path::new("/images/web"), false).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn container_ids_are_valid_for_runc_and_distinct() {
    assert_eq!(oci::container_id("web.3"), "warden-web.3");
    let ids: Vec<String> = ["a-b.1", "a_b.1", "a/b.1", "a b.1", "a.b-1", "é.1"].iter().map(|c| oci::container_id(c)).collect();
    for id in &ids {
        assert!(id.starts_with("warden-"));
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)), "{id}");
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "distinct cells must not share a container: {ids:?}");
}

#[test]
fn run_argv_runs_in_the_foreground_under_warden_state_root() {
    let argv = oci::run_argv(
        Path::new("/usr/sbin/runc"),
        Path::new("/data/runc"),
        Path::new("/data/cells/web.3/bundle"),
        "warden-web.3",
    );
    assert_eq!(argv, ["/usr/sbin/runc", "--root", "/data/runc", "run", "--bundle", "/data/cells/web.3/bundle", "warden-web.3"]);
}

#[test]
fn runtime_binary_finds_runc_as_an_absolute_path() {
    rootfs::ensure_packages();
    let runc = oci::runtime_binary(OciRuntime::Runc).expect("runc");
    assert!(runc.is_absolute() && runc.ends_with("runc"), "{}", runc.display());
    let version = Command::new(&runc).arg("--version").output().expect("runc --version");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("runc version"));
    let missing = OciError::NotInstalled { name: "runc", searched: "/usr/sbin".into() };
    assert!(missing.to_string().contains("install the runc package"), "{missing}");
}

// ---------------------------------------------------------------------------------------------
// Real containers.

#[test]
fn exit_code_pid1_hostname_env_and_workdir() {
    let fx = fixture();
    let mut c = cell(&fx, "exit7", "echo $$; hostname; echo \"$GREETING\"; pwd; exit 7");
    c.env.insert("GREETING".into(), "hello from the cell".into());
    c.workdir = Some("/tmp".into());
    let out = fx.run(&c);
    assert_eq!(out.status.code(), Some(7), "runc run exits with the container's code; stderr: {}", out.stderr);
    let expected = format!("1\n{}\nhello from the cell\n/tmp\n", c.cell_id);
    assert_eq!(out.stdout, expected, "the workload is PID 1 of its own pid namespace, hostname = cell id");
}

#[test]
fn memory_limit_ends_in_an_oom_kill_the_host_can_see() {
    let fx = fixture();
    let limits = CellLimits { memory_max_bytes: Some(64 * MIB), ..CellLimits::default() };
    // Command substitution keeps all 400 MB in the shell's memory, unlike a pipe to /dev/null.
    let hog = "x=$(head -c 400000000 /dev/zero | tr '\\0' x)";

    // A child is OOM-killed while PID 1 lives on: the host reads the count from the cgroup.
    let mut c = cell(&fx, "oom-child", &format!("({hog}); echo child=$?; : > /tmp/ready; exec sleep 60"));
    c.limits = limits;
    let running = fx.start(&c);
    let pid = running.wait_running();
    fx.wait_for_file("/tmp/ready");
    let memcg = cgroup_dir_with(pid, "memory.limit_in_bytes")
        .map(|d| d.join("memory.limit_in_bytes"))
        .or_else(|| cgroup_dir_with(pid, "memory.max").map(|d| d.join("memory.max")))
        .expect("the container has a memory cgroup");
    let limit = std::fs::read_to_string(&memcg).unwrap();
    assert_eq!(limit.trim(), (64 * MIB).to_string(), "{}", memcg.display());
    let kills = oci::oom_kill_count(&fx.state_root, &running.id).expect("oom_kill_count");
    assert!(kills.is_some_and(|n| n >= 1), "oom_kill count {kills:?}");
    running.kill("KILL").unwrap();
    let out = running.wait();
    assert_eq!(out.stdout, "child=137\n", "the hog was SIGKILLed; stderr: {}", out.stderr);
    assert_eq!(oci::oom_kill_count(&fx.state_root, &oci::container_id(&c.cell_id)).unwrap(), None, "gone with the container");

    // (PID 1 itself OOM-killed, through the shim, is the conformance suite's `oci::memory_limit`.)
}

#[test]
fn pids_limit_caps_a_fork_loop() {
    let fx = fixture();
    let mut c = cell(&fx, "forks", "i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); echo $i; done; echo done");
    c.limits.pids_max = Some(20);
    let out = fx.run(&c);
    let started: Vec<u32> = out.stdout.lines().filter_map(|l| l.parse().ok()).collect();
    let last = started.last().copied().unwrap_or(0);
    assert!(!out.stdout.contains("done"), "100 forks succeeded under pids.max = 20");
    assert!((5..20).contains(&last), "{last} background sleeps started; stdout: {}", out.stdout);
    assert!(
        out.stderr.contains("can't fork") || out.stderr.contains("Resource temporarily unavailable"),
        "stderr: {}",
        out.stderr
    );
    assert_ne!(out.status.code(), Some(0));
    println!("pids.max = 20: {last} background sleeps started, then: {}", out.stderr.trim());
}

#[test]
fn network_none_leaves_only_loopback() {
    let fx = fixture();
    let mut c = cell(&fx, "netnone", "cat /proc/net/dev");
    c.isolation = CellIsolation::Oci { rootfs: fx.rootfs.clone(), runtime: OciRuntime::Runc, network_none: true };
    let out = fx.run(&c);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
    assert_eq!(interfaces(&out.stdout), ["lo"]);

    // Without it, the cell shares the host's network namespace.
    let out = fx.run(&cell(&fx, "nethost", "cat /proc/net/dev"));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", out.stderr);
    let host = interfaces(&std::fs::read_to_string("/proc/net/dev").unwrap());
    assert_eq!(interfaces(&out.stdout), host);
}

#[test]
fn state_kill_delete_round_trip_leaves_nothing_behind() {
    let fx = fixture();
    let mut c = cell(&fx, "roundtrip", "exec sleep 60");
    c.limits.cpu_max_millicores = Some(250);
    let id = oci::container_id(&c.cell_id);
    assert_eq!(oci::state(&fx.runtime, &fx.state_root, &id).unwrap(), None, "unknown before it runs");

    let running = fx.start(&c);
    let pid = running.wait_running();
    let state = running.state().expect("known while running");
    assert_eq!(state, ContainerState { status: "running".into(), pid: Some(pid) });
    // What must be gone afterwards: the state dir, one cgroup per hierarchy, the rootfs mount.
    let state_dir = fx.state_root.join(&id);
    assert!(state_dir.is_dir());
    let cgroups = cgroup_dirs(pid);
    assert!(!cgroups.is_empty());
    // A quarter of a core: 25 ms per 100 ms period (v1 cpu.cfs_quota_us, or v2 cpu.max).
    let quota = match cgroup_dir_with(pid, "cpu.cfs_quota_us") {
        Some(dir) => std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).unwrap(),
        None => std::fs::read_to_string(cgroup_dir_with(pid, "cpu.max").expect("a cpu cgroup").join("cpu.max")).unwrap(),
    };
    assert!(quota.trim() == "25000" || quota.trim() == "25000 100000", "cpu quota {quota:?}");
    let suffix = format!("warden/{}", c.cell_id);
    for dir in &cgroups {
        assert!(dir.ends_with(&suffix), "cgroup {} is not under warden/<cell_id>", dir.display());
        assert!(dir.is_dir(), "{}", dir.display());
    }
    // Mountinfo shows a bind mount's root relative to its filesystem, so look for the tail of
    // the path that is the same whatever filesystem the temp dir is on.
    let rootfs = format!("{}/rootfs", fx.dir.path().file_name().unwrap().to_string_lossy());
    let inside = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert!(inside.contains(&rootfs), "the container's root is a mount of the rootfs (so the check below means something)");

    running.kill("TERM").expect("TERM to a running container is accepted");
    oci::delete(&fx.runtime, &fx.state_root, &id).expect("delete --force");
    let out = running.wait();
    assert_eq!(out.status.code(), Some(137), "delete --force SIGKILLs; stderr: {}", out.stderr);

    assert_eq!(oci::state(&fx.runtime, &fx.state_root, &id).unwrap(), None);
    assert!(!state_dir.exists(), "{} remains", state_dir.display());
    for dir in &cgroups {
        assert!(!dir.exists(), "cgroup {} remains", dir.display());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&rootfs), "a mount of the rootfs remains: {mountinfo}");

    // Once gone: kill says so, delete is idempotent (what crash recovery relies on).
    assert!(matches!(oci::kill(&fx.runtime, &fx.state_root, &id, "KILL"), Err(OciError::NoSuchContainer(_))));
    oci::delete(&fx.runtime, &fx.state_root, &id).expect("delete of a deleted container");
    assert!(matches!(oci::state(&fx.runtime, &fx.state_root, "warden-never-was"), Ok(None)));
}

// ---------------------------------------------------------------------------------------------
// Through the backend: the shim runs the runtime. What every backend must do is the conformance
// suite's (tests/conformance.rs); these are the OCI-specific parts.

fn backend(fx: &Fixture) -> ProcessBackend {
    ProcessBackend::new(fx.dir.path().join("cells"), ShimExe::Standalone(PathBuf::from(env!("CARGO_BIN_EXE_warden-shim"))))
}

fn wait_exit(b: &ProcessBackend, id: &str, started: &StartedCell) -> warden_cell::ExitStatus {
    let fd = b.exit_fd(id, started).expect("exit fd");
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, TIMEOUT.as_millis() as libc::c_int) }, 1, "{id} did not end");
    match b.collect_exit(id, started) {
        CellState::Exited(exit) => exit,
        other => panic!("expected Exited, got {other:?}"),
    }
}

/// Gone, or a zombie nobody reaped yet: either way no longer running.
fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 1..].trim_start();
            state.starts_with('Z') || state.starts_with('X')
        }
    }
}

/// Live processes whose command line names the container (the runtime's `run`, `kill`, ...).
fn runtime_processes(container_id: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        if cmdline.split(|&b| b == 0).any(|arg| arg == container_id.as_bytes()) && !is_dead(pid) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn the_shim_runs_its_bundle_and_records_the_containers_pid_1() {
    let fx = fixture();
    let b = backend(&fx);
    let mut c = cell(&fx, "shim-bundle", "echo pid=$$; cat /proc/net/dev; exec sleep 60");
    c.isolation = CellIsolation::Oci { rootfs: fx.rootfs.clone(), runtime: OciRuntime::Runc, network_none: true };
    c.env.insert("GREETING".into(), "for the container only".into());
    let started = b.start(&c).expect("start");
    let dir = b.cell_dir(&c.cell_id);
    let bundle: Value = serde_json::from_slice(&std::fs::read(dir.join("bundle/config.json")).unwrap()).unwrap();
    assert_eq!(bundle, oci::bundle_config(&c, &fx.rootfs, true), "the bundle is generated from the cell");
    // pid.json names the container's PID 1 — as the runtime knows it, and PID 1 in its namespace.
    let recorded: StartedCell = serde_json::from_slice(&std::fs::read(dir.join("pid.json")).unwrap()).unwrap();
    assert_eq!(recorded, started);
    let runc = oci::runtime_binary(OciRuntime::Runc).unwrap();
    let id = oci::container_id(&c.cell_id);
    let state = oci::state(&runc, &b.oci_state_root(), &id).unwrap().expect("runc knows the container");
    assert_eq!(state, ContainerState { status: "running".into(), pid: Some(started.pid) });
    let status = std::fs::read_to_string(format!("/proc/{}/status", started.pid)).unwrap();
    let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:")).unwrap();
    assert_eq!(nspid.split_whitespace().last(), Some("1"), "{nspid}");
    wait_for("the workload's output", || std::fs::read_to_string(&c.log_path).unwrap_or_default().contains("lo:"));
    let log = std::fs::read_to_string(&c.log_path).unwrap();
    assert!(log.starts_with("pid=1\n"), "{log}");
    assert_eq!(interfaces(log.strip_prefix("pid=1\n").unwrap()), ["lo"], "network_none reaches the bundle");
    // The runtime runs on the host with the shim's environment, not the container's.
    let runtime_pid = runtime_processes(&id).into_iter().find(|&p| p != started.pid).expect("the runtime process");
    let env = std::fs::read(format!("/proc/{runtime_pid}/environ")).unwrap();
    assert!(!String::from_utf8_lossy(&env).contains("GREETING"), "the cell's env leaked to the runtime");

    b.signal(&c.cell_id, true).unwrap();
    let exit = wait_exit(&b, &c.cell_id, &started);
    assert_eq!(exit.exit_code, Some(137));
    assert_eq!(oci::state(&runc, &b.oci_state_root(), &id).unwrap(), None, "the shim deleted the container");
    assert_eq!(runtime_processes(&id), Vec::<u32>::new());
}

#[test]
fn a_start_the_runtime_refuses_is_a_start_error_in_its_words() {
    let fx = fixture();
    let b = backend(&fx);
    let mut c = cell(&fx, "shim-noexec", "unused");
    c.argv = vec!["/no/such/program".into()];
    match b.start(&c) {
        Err(StartError::Runtime(msg)) => {
            assert!(msg.starts_with("runc exited with status"), "{msg}");
            assert!(msg.contains("/no/such/program") && msg.contains("no such file"), "{msg}");
        }
        other => panic!("expected a runtime error, got {other:?}"),
    }
    let id = oci::container_id(&c.cell_id);
    let runc = oci::runtime_binary(OciRuntime::Runc).unwrap();
    assert_eq!(oci::state(&runc, &b.oci_state_root(), &id).unwrap(), None, "nothing of the container is left");
    assert_eq!(runtime_processes(&id), Vec::<u32>::new());
    assert_eq!(b.inspect(&c.cell_id), CellState::NotStarted);
}

#[test]
fn crun_runs_the_cell_or_refuses_hybrid_cgroups_clearly() {
    let fx = fixture_with(OciRuntime::Crun);
    let b = backend(&fx);
    let mut c = cell(&fx, "crun", "echo $$; exit 7");
    c.isolation = CellIsolation::Oci { rootfs: fx.rootfs.clone(), runtime: OciRuntime::Crun, network_none: false };
    match b.start(&c) {
        Ok(started) => {
            let exit = wait_exit(&b, &c.cell_id, &started);
            assert_eq!(exit.exit_code, Some(7), "{exit:?}");
            assert_eq!(std::fs::read_to_string(&c.log_path).unwrap(), "1\n");
            println!("crun ran the container: exit 7, PID 1");
        }
        // Never a silent fallback to another runtime: the start fails, in crun's own words.
        Err(StartError::Runtime(msg)) => {
            assert!(msg.starts_with("crun exited with status") && msg.contains("hybrid"), "{msg}");
            assert_eq!(b.inspect(&c.cell_id), CellState::NotStarted);
            println!("crun refused this host: {msg}");
        }
        Err(other) => panic!("expected a start or a runtime error, got {other:?}"),
    }
    let crun = oci::runtime_binary(OciRuntime::Crun).unwrap();
    let id = oci::container_id(&c.cell_id);
    assert_eq!(oci::state(&crun, &b.oci_state_root(), &id).unwrap(), None);
    assert_eq!(runtime_processes(&id), Vec::<u32>::new());
}

#[test]
fn a_lost_shim_takes_its_container_along() {
    let fx = fixture();
    let b = backend(&fx);
    let mut c = cell(&fx, "shim-lost", "exec sleep 60");
    c.limits.pids_max = Some(10);
    let started = b.start(&c).expect("start");
    let id = oci::container_id(&c.cell_id);
    let cgroups = cgroup_dirs(started.pid);
    assert!(cgroups.iter().any(|d| d.ends_with(format!("warden/{}", c.cell_id))), "{cgroups:?}");
    // SAFETY: plain kill/waitpid on our own child, the shim.
    unsafe {
        libc::kill(started.shim_pid as libc::pid_t, libc::SIGKILL);
        libc::waitpid(started.shim_pid as libc::pid_t, std::ptr::null_mut(), 0);
    }
    // The runtime dies with its shim (parent-death signal); the container does not, until the
    // next supervisor's inspect.
    wait_for("the runtime to die with its shim", || runtime_processes(&id).is_empty());
    assert!(!is_dead(started.pid));
    match b.inspect(&c.cell_id) {
        CellState::Lost { reason } => assert_eq!(reason, "shim lost; container killed and deleted"),
        other => panic!("expected Lost, got {other:?}"),
    }
    wait_for("the container to die", || is_dead(started.pid));
    let runc = oci::runtime_binary(OciRuntime::Runc).unwrap();
    assert_eq!(oci::state(&runc, &b.oci_state_root(), &id).unwrap(), None);
    for dir in &cgroups {
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
    // Asked again, the cell stays lost: it is never reported as startable.
    assert!(matches!(b.inspect(&c.cell_id), CellState::Lost { .. }));
    b.remove(&c.cell_id).unwrap();
}

#[test]
fn a_stuck_runtime_does_not_keep_a_killed_cell_alive() {
    let fx = fixture();
    let b = backend(&fx);
    let c = cell(&fx, "shim-stuck", "exec sleep 60");
    let started = b.start(&c).expect("start");
    let id = oci::container_id(&c.cell_id);
    let runtime = runtime_processes(&id).into_iter().find(|&p| p != started.pid).expect("the runtime process");
    // A runtime that can no longer report anything (stopped, as if wedged).
    // SAFETY: kill with plain integers.
    assert_eq!(unsafe { libc::kill(runtime as libc::pid_t, libc::SIGSTOP) }, 0);
    let sent = Instant::now();
    b.signal(&c.cell_id, true).unwrap();
    let exit = wait_exit(&b, &c.cell_id, &started);
    let took = sent.elapsed();
    assert!(took >= Duration::from_secs(9) && took < Duration::from_secs(20), "took {took:?}");
    // Its status died with it: unknown, never made up.
    assert_eq!((exit.exit_code, exit.signal), (None, None), "{exit:?}");
    assert!(exit.detail.as_deref().unwrap_or_default().contains("runc did not exit"), "{exit:?}");
    assert!(is_dead(started.pid));
    wait_for("the stuck runtime to be gone", || is_dead(runtime));
    let runc = oci::runtime_binary(OciRuntime::Runc).unwrap();
    assert_eq!(oci::state(&runc, &b.oci_state_root(), &id).unwrap(), None);
}

#[test]
fn recovery_deletes_containers_that_no_shim_watches() {
    // Containers the runtime knows in the backend's state root, but without a live shim: as if
    // the shim died between creating the container and writing pid.json, or after its cell's
    // exit was recorded but before its delete went through.
    let mut fx = fixture();
    let b = backend(&fx);
    fx.state_root = b.oci_state_root();
    for (name, with_exit) in [("orphan-mid-start", false), ("orphan-after-exit", true)] {
        let c = cell(&fx, name, "exec sleep 60");
        let running = fx.start(&c);
        let pid = running.wait_running();
        let dir = b.cell_dir(&c.cell_id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), serde_json::to_vec(&c).unwrap()).unwrap();
        if with_exit {
            let exit = serde_json::json!({"exit_code": 0, "signal": null, "finished_at_ms": 1});
            std::fs::write(dir.join("exit.json"), serde_json::to_vec(&exit).unwrap()).unwrap();
            assert!(matches!(b.inspect(&c.cell_id), CellState::Exited(_)));
            b.remove(&c.cell_id).expect("remove deletes the container");
            assert!(!dir.exists());
        } else {
            assert_eq!(b.inspect(&c.cell_id), CellState::NotStarted);
            assert!(!dir.exists(), "the unstarted dir is set aside");
        }
        let out = running.wait();
        assert_eq!(out.status.code(), Some(137), "{name}: the container was killed");
        assert!(is_dead(pid));
        assert_eq!(oci::state(&fx.runtime, &fx.state_root, &oci::container_id(&c.cell_id)).unwrap(), None, "{name}");
    }
}

#[test]
fn oci_cells_need_an_absolute_existing_rootfs() {
    let fx = fixture();
    let b = backend(&fx);
    for (rootfs, why) in [("relative/rootfs", "not an absolute path"), ("/no/such/rootfs", "not a directory")] {
        let mut c = cell(&fx, "bad-rootfs", "true");
        c.isolation = CellIsolation::Oci { rootfs: rootfs.into(), runtime: OciRuntime::Runc, network_none: false };
        match b.start(&c) {
            Err(StartError::InvalidConfig(msg)) => assert!(msg.contains(why), "{msg}"),
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }
    // Hidden names in the cells dir are warden's own (the runtime's state root among them).
    let mut c = cell(&fx, "dot", "true");
    c.cell_id = ".oci-state".into();
    assert!(matches!(b.start(&c), Err(StartError::InvalidConfig(_))));
}
