//! Running a cell under an OCI runtime (runc, or crun where the host allows): the bundle's
//! `config.json` generated from a [`CellConfig`], and the runtime's command lines.
//!
//! Everything here is synchronous and stateless. The shim runs [`run_argv`] (plus `--pid-file`,
//! and `--keep` for runc) as its child in place of the workload: `runc run` in the foreground
//! exits with the container's status — the code, or 128 + the signal that killed PID 1. It
//! forwards stop requests with [`kill`], reads [`oom_kill_count`] once the container is gone and
//! tears down with [`delete`]. The runtime's own state lives under a `state_root` that belongs to
//! warden (`<cells_dir>/.oci-state`, see [`state_root`]; not the runtime's default `/run/runc`),
//! so after a supervisor crash [`state`] finds exactly warden's containers, and nobody else's.
//! Every runtime command is bounded by [`COMMAND_TIMEOUT`], and a container's start by
//! [`START_LIMIT`]: a hung runtime must not hang the shim or the supervisor's recovery.
//!
//! cgroups: the bundle asks for the relative cgroup path `warden/<cell_id>`. runc's cgroupfs
//! driver (runc 1.1, cgroup v1, hybrid or v2 alike) resolves a relative path under the cgroup of
//! the runc process itself, per hierarchy, so a cell nests under its supervisor's cgroups and is
//! counted against whatever limits the supervisor itself runs under (a systemd unit, a sandbox).
//! An absolute `/warden/<cell_id>` also works with runc, but escapes those limits.

use crate::cell::{CellConfig, CellLimits, OciRuntime};
use crate::durable::write_atomic;
use crate::sys;
use serde_json::{json, Value};
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Name of the runtime state root inside the cells directory. Hidden (cell ids may not start
/// with a dot), so it can never collide with a cell's directory.
pub const STATE_DIR: &str = ".oci-state";

/// How long one runtime command (`state`, `kill`, `delete`) may run before it is killed. They
/// take tens of milliseconds; one stuck on, say, a process in uninterruptible sleep must not keep
/// a shim from recording its cell's end, or the supervisor's recovery from finishing.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an OCI runtime may take to start a container. It creates namespaces, mounts and
/// cgroups, which takes well under a second; one that hangs must not hang the start. The
/// supervisor waits for a starting shim a little longer than this.
pub const START_LIMIT: Duration = Duration::from_secs(30);

/// The runtime state root of the cells in `cells_dir`: `<cells_dir>/.oci-state`. Part of what
/// warden recovers after a crash: a container the runtime still knows there whose shim is gone
/// is killed and deleted.
pub fn state_root(cells_dir: &Path) -> PathBuf {
    cells_dir.join(STATE_DIR)
}

/// What the runtime reports about one container (`runc state`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerState {
    /// `creating`, `created`, `running`, `paused` or `stopped`, as the runtime says it.
    pub status: String,
    /// The container's PID 1, as a host pid; `None` once it is stopped (the runtime says 0).
    pub pid: Option<u32>,
}

/// Why talking to the OCI runtime failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(
        "OCI runtime `{name}` not found (searched PATH and {searched}): install the {name} package (apt-get install -y {name})"
    )]
    NotInstalled { name: &'static str, searched: String },
    #[error("cannot run {}", .runtime.display())]
    Spawn {
        runtime: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The runtime ran and said no; `stderr` is its own explanation (e.g. crun's "cgroups in
    /// hybrid mode not supported").
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed { command: String, status: std::process::ExitStatus, stderr: String },
    #[error("no container {0:?} in this runtime state root")]
    NoSuchContainer(String),
    #[error("container {0:?} is not running")]
    NotRunning(String),
    /// The runtime did not finish within [`COMMAND_TIMEOUT`] and was killed.
    #[error("`{command}` did not finish within {limit:?} and was killed")]
    Timeout { command: String, limit: Duration },
    #[error("cannot parse the output of `{command}`")]
    BadOutput {
        command: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("read {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The environment a container starts with before the cell's own `env` is applied. Unlike a
/// process cell, a container does not inherit the supervisor's environment: the host's paths
/// mean nothing inside another root filesystem. (runc adds `HOME` from the rootfs's
/// `/etc/passwd` when it is not set.)
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set: enough for ordinary root-in-a-container workloads (chown,
/// binding low ports, setuid helpers) without the ones that reach the host (SYS_ADMIN, NET_ADMIN,
/// SYS_MODULE, SYS_PTRACE, ...). Deliberately not in `inheritable`/`ambient`, so an exec'd
/// non-root program does not pick them up (CVE-2022-24769).
const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// runc's spec template, plus powercap (RAPL energy counters leak what other tenants compute,
/// CVE-2020-8694; Docker masks it too). Paths missing on a host are skipped by the runtime.
const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The CFS period the CPU quota is expressed in (the kernel's default, 100 ms).
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel rejects a CFS quota below 1 ms (EINVAL), which would fail the whole start.
const CPU_MIN_QUOTA_US: u64 = 1_000;
/// `sethostname(2)` rejects longer names, which would fail the whole start.
const HOST_NAME_MAX: usize = 64;

/// The OCI runtime-spec 1.0 `config.json` for this cell.
///
/// PID 1 is the workload itself (`args` = the cell's argv, looked up in the container's `PATH`);
/// it runs as root in new pid, mount, ipc and uts namespaces, and in a new, empty network
/// namespace (just `lo`) when `network_none`, otherwise in the host's. The root filesystem is
/// `rootfs`, writable, with `/proc`, a tmpfs `/dev`, `/dev/pts`, `/dev/shm`, `/dev/mqueue`, a
/// read-only `/sys` and the config's `binds` mounted on it. The limits become `linux.resources` in the cgroup
/// `warden/<cell_id>` (see the module docs). rlimits are not set, so the workload inherits the
/// supervisor's, as a process cell does.
pub fn bundle_config(config: &CellConfig, rootfs: &Path, network_none: bool) -> Value {
    let mut namespaces = vec![json!({"type": "pid"}), json!({"type": "mount"}), json!({"type": "ipc"}), json!({"type": "uts"})];
    if network_none {
        // A namespace without a path is a new one; runc brings its `lo` up.
        namespaces.push(json!({"type": "network"}));
    }
    let caps = DEFAULT_CAPABILITIES.to_vec();
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    for bind in &config.binds {
        mounts.push(json!({"destination": bind.destination, "type": "bind", "source": bind.source, "options": ["rbind", "rw"]}));
    }
    // The cell's user (root for a config from before users); no supplementary groups.
    let user = config.user.unwrap_or(crate::cell::CellUser::ROOT);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": user.uid, "gid": user.gid, "additionalGids": []},
            "args": config.argv,
            "env": container_env(config),
            "cwd": container_cwd(config.workdir.as_deref()),
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true,
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": hostname(&config.cell_id),
        "mounts": mounts,
        "linux": {
            "cgroupsPath": cgroups_path(&config.cell_id),
            "resources": resources(&config.limits),
            "namespaces": namespaces,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    })
}

/// `warden/<cell_id>`, relative on purpose (see the module docs).
fn cgroups_path(cell_id: &str) -> String {
    format!("warden/{cell_id}")
}

fn container_env(config: &CellConfig) -> Vec<String> {
    let mut env = std::collections::BTreeMap::new();
    env.insert("PATH", DEFAULT_PATH);
    for (k, v) in &config.env {
        env.insert(k.as_str(), v.as_str());
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The spec requires an absolute `cwd`. A relative workdir can only mean "from the container's
/// root": the supervisor's own working directory does not exist in the container.
fn container_cwd(workdir: Option<&Path>) -> PathBuf {
    match workdir {
        Some(dir) => Path::new("/").join(dir),
        None => PathBuf::from("/"),
    }
}

fn hostname(cell_id: &str) -> &str {
    let mut end = cell_id.len().min(HOST_NAME_MAX);
    while !cell_id.is_char_boundary(end) {
        end -= 1;
    }
    &cell_id[..end]
}

fn resources(limits: &CellLimits) -> Value {
    // Deny every device, then runc allows its default set (null, zero, full, random, urandom,
    // tty, console, pts, ptmx), as in runc's own template.
    let mut r = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(bytes) = limits.memory_max_bytes {
        // No `swap`: on cgroup v1 that is memory.memsw.*, which exists only where swap accounting
        // is enabled, so the same bundle would not start everywhere. The limit bounds RAM, like
        // v2's memory.max; a host with swap lets a cell swap past it.
        r["memory"] = json!({"limit": clamp_i64(bytes)});
    }
    if let Some(millicores) = limits.cpu_max_millicores {
        let quota = (u64::from(millicores) * CPU_PERIOD_US / 1000).max(CPU_MIN_QUOTA_US);
        r["cpu"] = json!({"quota": quota, "period": CPU_PERIOD_US});
    }
    if let Some(pids) = limits.pids_max {
        r["pids"] = json!({"limit": i64::from(pids)});
    }
    r
}

/// The spec's limits are int64; anything past that is "unlimited" anyway.
fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Writes `<bundle_dir>/config.json` (creating `bundle_dir`), atomically, so a shim restarted
/// mid-write never hands the runtime half a spec.
pub fn write_bundle(bundle_dir: &Path, config: &CellConfig, rootfs: &Path, network_none: bool) -> io::Result<()> {
    if config.argv.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "cell argv is empty: an OCI container needs a process to run"));
    }
    std::fs::create_dir_all(bundle_dir)?;
    let mut bytes = serde_json::to_vec_pretty(&bundle_config(config, rootfs, network_none)).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(bundle_dir, "config.json", &bytes)
}

/// Where Debian and most distributions install runtimes; searched after `PATH` because a
/// supervisor started by a non-login shell or a minimal unit often has no `sbin` in its `PATH`,
/// and `runc` lives in `/usr/sbin` on Debian.
const FALLBACK_DIRS: [&str; 6] = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// The runtime's executable, as an absolute path (so the shim does not depend on its `PATH`).
pub fn runtime_binary(runtime: OciRuntime) -> Result<PathBuf, OciError> {
    let name = match runtime {
        OciRuntime::Runc => "runc",
        OciRuntime::Crun => "crun",
    };
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path_var).chain(FALLBACK_DIRS.iter().map(PathBuf::from));
    dirs.filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| OciError::NotInstalled { name, searched: FALLBACK_DIRS.join(", ") })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// argv that runs the container in the foreground: `runc --root <state_root> run --bundle
/// <bundle_dir> <container_id>`. Its exit status is the container's (128 + n for a signal n).
/// Without a terminal the container's stdio is the runtime's own, so the shim's pipes reach it.
pub fn run_argv(runtime: &Path, state_root: &Path, bundle_dir: &Path, container_id: &str) -> Vec<String> {
    vec![
        runtime.display().to_string(),
        "--root".into(),
        state_root.display().to_string(),
        "run".into(),
        "--bundle".into(),
        bundle_dir.display().to_string(),
        container_id.into(),
    ]
}

/// `runc --root R kill ID SIGNAL` (`"TERM"`, `"KILL"`, ...). The signal goes to the container's
/// PID 1; note that PID 1 of a namespace ignores every signal it has no handler for, except KILL.
/// A container that is gone or already stopped is reported as such ([`OciError::NoSuchContainer`],
/// [`OciError::NotRunning`]), so a caller can tell the benign race from a real failure.
pub fn kill(runtime: &Path, state_root: &Path, container_id: &str, signal: &str) -> Result<(), OciError> {
    let (command, out) = runtime_output(runtime, state_root, &["kill", container_id, signal])?;
    if out.status.success() {
        return Ok(());
    }
    // Ask rather than parse the error text: the wording differs between runtimes and versions.
    match state(runtime, state_root, container_id) {
        Ok(None) => Err(OciError::NoSuchContainer(container_id.into())),
        Ok(Some(s)) if s.status == "stopped" => Err(OciError::NotRunning(container_id.into())),
        _ => Err(failed(command, &out)),
    }
}

/// `runc --root R delete --force ID`: kills whatever still runs in the container, then removes
/// its cgroups and its state. Idempotent: a container the runtime does not know is `Ok`, because
/// after a crash warden cannot know whether it got this far last time.
pub fn delete(runtime: &Path, state_root: &Path, container_id: &str) -> Result<(), OciError> {
    let (command, out) = runtime_output(runtime, state_root, &["delete", "--force", container_id])?;
    if out.status.success() {
        return Ok(());
    }
    match state(runtime, state_root, container_id) {
        Ok(None) => Ok(()),
        _ => Err(failed(command, &out)),
    }
}

/// `runc --root R state ID`, parsed. `None` if the runtime does not know the container (never
/// created, already deleted, or `runc run` already cleaned up after it exited).
pub fn state(runtime: &Path, state_root: &Path, container_id: &str) -> Result<Option<ContainerState>, OciError> {
    let (command, out) = runtime_output(runtime, state_root, &["state", container_id])?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // runc and crun both keep a container's state in `<root>/<id>/`; runc also says "does
        // not exist" for a directory left by an aborted create (no state.json yet).
        if !state_root.join(container_id).exists() || stderr.contains("does not exist") {
            return Ok(None);
        }
        return Err(failed(command, &out));
    }
    let bad = |source: Box<dyn std::error::Error + Send + Sync>| OciError::BadOutput { command: command.clone(), source };
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| bad(e.into()))?;
    let status = v.get("status").and_then(Value::as_str).ok_or_else(|| bad("no \"status\"".into()))?;
    let pid = match v.get("pid").and_then(Value::as_u64) {
        None | Some(0) => None,
        Some(pid) => Some(u32::try_from(pid).map_err(|_| bad(format!("pid {pid} out of range").into()))?),
    };
    Ok(Some(ContainerState { status: status.to_string(), pid }))
}

/// How many times the kernel OOM-killed a process in the container's memory cgroup, read from
/// the cgroup itself (v1 `memory.oom_control`, v2 `memory.events`), whose path comes from runc's
/// `<state_root>/<id>/state.json`.
///
/// Only while the container exists: `runc run` removes the cgroup as soon as the container
/// exits, so to learn whether an exit (137) was an OOM kill, run with `--keep` and read this
/// before [`delete`] (or watch `runc events`, which prints `{"type":"oom"}`). `Ok(None)` when
/// the container, its cgroup or the counter is not there (and for crun, whose state is kept
/// elsewhere).
pub fn oom_kill_count(state_root: &Path, container_id: &str) -> Result<Option<u64>, OciError> {
    let state_file = state_root.join(container_id).join("state.json");
    let Some(bytes) = read_if_exists(&state_file)? else { return Ok(None) };
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| OciError::Io { path: state_file.clone(), source: io::Error::new(io::ErrorKind::InvalidData, e) })?;
    let paths = &v["cgroup_paths"];
    let candidates = [(&paths["memory"], "memory.oom_control"), (&paths[""], "memory.events")];
    for (dir, file) in candidates {
        let Some(dir) = dir.as_str() else { continue };
        let path = Path::new(dir).join(file);
        let Some(text) = read_if_exists(&path)? else { continue };
        let text = String::from_utf8_lossy(&text);
        if let Some(n) = text.lines().find_map(|l| l.strip_prefix("oom_kill ")) {
            let n = n.trim().parse().map_err(|e| OciError::Io {
                path: path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, format!("oom_kill {n:?}: {e}")),
            })?;
            return Ok(Some(n));
        }
    }
    Ok(None)
}

fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, OciError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(OciError::Io { path: path.to_path_buf(), source }),
    }
}

/// A runtime container id for a cell: `warden-` + the cell id, with every byte outside
/// `[A-Za-z0-9.-]` written as `_xx` (hex). runc accepts only `[A-Za-z0-9_+,.-]` in ids; escaping
/// (rather than replacing) keeps distinct cells distinct, and cell ids (`<workload>.<n>`) pass
/// through unchanged and readable.
pub fn container_id(cell_id: &str) -> String {
    let mut id = String::from("warden-");
    for b in cell_id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
            id.push(char::from(b));
        } else {
            id.push_str(&format!("_{b:02x}"));
        }
    }
    id
}

fn runtime_output(runtime: &Path, state_root: &Path, args: &[&str]) -> Result<(String, Output), OciError> {
    let mut argv: Vec<OsString> = vec!["--root".into(), state_root.into()];
    argv.extend(args.iter().map(OsString::from));
    let command = std::iter::once(runtime.as_os_str())
        .chain(argv.iter().map(OsString::as_os_str))
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let child = Command::new(runtime)
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| OciError::Spawn { runtime: runtime.to_path_buf(), source })?;
    match output_within(child, COMMAND_TIMEOUT) {
        Ok(out) => Ok((command, out)),
        Err(None) => Err(OciError::Timeout { command, limit: COMMAND_TIMEOUT }),
        Err(Some(source)) => Err(OciError::Spawn { runtime: runtime.to_path_buf(), source }),
    }
}

/// `Child::wait_with_output`, but bounded: once `limit` has passed the child is killed and
/// `Err(None)` returned. Single-threaded (poll on both pipes), because the shim that calls it
/// must stay single-threaded.
fn output_within(mut child: Child, limit: Duration) -> Result<Output, Option<io::Error>> {
    let deadline = Instant::now() + limit;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut result = (|| {
        for fd in [stdout.as_ref().map(AsRawFd::as_raw_fd), stderr.as_ref().map(AsRawFd::as_raw_fd)].into_iter().flatten() {
            sys::set_nonblocking(fd, true).map_err(Some)?;
        }
        while stdout.is_some() || stderr.is_some() {
            let left = deadline.checked_duration_since(Instant::now()).ok_or(None)?;
            let mut fds = [
                libc::pollfd { fd: stdout.as_ref().map_or(-1, AsRawFd::as_raw_fd), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: stderr.as_ref().map_or(-1, AsRawFd::as_raw_fd), events: libc::POLLIN, revents: 0 },
            ];
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
            match sys::poll(&mut fds, ms) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Some(e)),
                Ok(_) => {}
            }
            if fds[0].revents != 0 && stdout.as_mut().is_none_or(|p| drain(p, &mut out)) {
                stdout = None;
            }
            if fds[1].revents != 0 && stderr.as_mut().is_none_or(|p| drain(p, &mut err)) {
                stderr = None;
            }
        }
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = child.try_wait().map_err(Some)? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(None);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    })();
    if result.is_err() {
        // Never leave a runtime process behind, nor its zombie.
        let _ = child.kill();
        if let Err(e) = child.wait() {
            result = Err(Some(e));
        }
    }
    result.map(|status| Output { status, stdout: out, stderr: err })
}

/// Reads whatever a non-blocking pipe holds; true once it reached EOF (or broke).
fn drain(pipe: &mut impl Read, into: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

fn failed(command: String, out: &Output) -> OciError {
    OciError::Failed { command, status: out.status, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() }
}
