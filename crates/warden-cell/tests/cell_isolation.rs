//! End-to-end tests of `isolation = "cell"` and of cgroup limits, with real shims, real
//! namespaces and real cgroups: what the workload sees, how its end is reported (and that it
//! cannot forge that report), that limits bite, and that nothing — process, mount or cgroup —
//! outlives a cell, also at scale. What every backend must do alike (exit codes, stops, OOM,
//! logs, re-adoption, teardown) is the conformance suite's (`tests/conformance.rs`). They need
//! root and cgroups, as warden itself does for these features.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{is_dead, poll_readable, read_log, wait_until, EXIT_TIMEOUT};
use warden_cell::{
    cgroup_layout, CellConfig, CellIsolation, CellLimits, CellState, CgroupLayout, ExitStatus, ProcessBackend, ShimExe,
    StartError, StartedCell, TerminalState,
};

const PYTHON: &str = "/usr/bin/python3";

fn backend(root: &Path) -> ProcessBackend {
    ProcessBackend::new(root.join("cells"), ShimExe::Standalone(PathBuf::from(env!("CARGO_BIN_EXE_warden-shim"))))
}

const CELL: CellIsolation = CellIsolation::Cell { network_none: false };

fn config(root: &Path, cell_id: &str, isolation: CellIsolation, argv: &[&str]) -> CellConfig {
    CellConfig {
        cell_id: cell_id.to_string(),
        workload_id: "wl".to_string(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
        workdir: Some(root.to_path_buf()),
        log_path: root.join(format!("logs/{cell_id}.log")),
        log_max_size_bytes: 1024 * 1024,
        log_max_files: 1,
        isolation,
        limits: CellLimits::default(),
        binds: Vec::new(),
        fence: None,
        user: None,
    }
}

fn sh(root: &Path, cell_id: &str, isolation: CellIsolation, script: &str) -> CellConfig {
    config(root, cell_id, isolation, &["sh", "-c", script])
}

fn python(root: &Path, cell_id: &str, isolation: CellIsolation, script: &str) -> CellConfig {
    config(root, cell_id, isolation, &[PYTHON, "-c", script])
}

fn wait_exit(b: &ProcessBackend, id: &str, started: &StartedCell) -> ExitStatus {
    let fd = b.exit_fd(id, started).expect("exit fd");
    assert!(poll_readable(&fd, EXIT_TIMEOUT), "cell {id} did not end within {EXIT_TIMEOUT:?}");
    match b.collect_exit(id, started) {
        CellState::Exited(e) => e,
        other => panic!("expected Exited, got {other:?}"),
    }
}

/// The cell's cgroup directories, as its shim recorded them.
fn cgroup_dirs(b: &ProcessBackend, id: &str) -> Vec<PathBuf> {
    let raw = std::fs::read(b.cell_dir(id).join("cgroups.json")).expect("cgroups.json");
    let json: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    json["dirs"].as_array().unwrap().iter().map(|d| PathBuf::from(d["path"].as_str().unwrap())).collect()
}

fn cgroup_dir_with(b: &ProcessBackend, id: &str, file: &str) -> PathBuf {
    cgroup_dirs(b, id).into_iter().find(|d| d.join(file).exists()).unwrap_or_else(|| panic!("no cgroup of {id} has {file}"))
}

/// Host pids of processes whose environment says they belong to `cell_id`.
fn processes_of(cell_id: &str) -> Vec<u32> {
    let needle = format!("WARDEN_CELL_ID={cell_id}\0");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if env.windows(needle.len()).any(|w| w == needle.as_bytes()) && !is_dead(pid) {
            found.push(pid);
        }
    }
    found
}

/// The host's proc mounts: a cell's private /proc must never show up here.
fn host_proc_mounts() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().filter(|l| l.contains(" - proc ")).map(|l| l.split(' ').nth(4).unwrap().to_string()).collect()
}

/// Checks the cell left nothing behind: no process, no cgroup directory, no host mount.
fn assert_torn_down(b: &ProcessBackend, id: &str, started: &StartedCell, cgroups: &[PathBuf], mounts_before: &[String]) {
    wait_until("the cell's init/workload to be gone", EXIT_TIMEOUT, || is_dead(started.pid));
    wait_until("the shim to be gone", EXIT_TIMEOUT, || is_dead(started.shim_pid));
    assert_eq!(processes_of(id), Vec::<u32>::new(), "processes of {id} outlived it");
    for dir in cgroups {
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
    assert_eq!(host_proc_mounts(), mounts_before, "a cell's mount leaked to the host");
    let _ = b;
}

/// Host pid of the cell's workload (PID 2 inside): the init's only child.
fn workload_host_pid(init: u32) -> u32 {
    let mut children = String::new();
    wait_until("the workload to appear", EXIT_TIMEOUT, || {
        children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap_or_default();
        !children.trim().is_empty()
    });
    children.split_whitespace().next().unwrap().parse().unwrap()
}

fn fds_of(pid: u32) -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap().parse().unwrap())
        .collect();
    fds.sort();
    fds
}

fn result_line(log: &str) -> serde_json::Value {
    let line = log.lines().find_map(|l| l.strip_prefix("RESULT ")).unwrap_or_else(|| panic!("no RESULT line in log:\n{log}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn workload_is_pid_2_in_its_own_namespaces_and_its_exit_code_is_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let mounts = host_proc_mounts();
    let id = "ci-pid2";
    let cfg = sh(tmp.path(), id, CELL, "echo $$; cat /proc/sys/kernel/hostname; echo /proc/[0-9]*; exit 7");
    let started = b.start(&cfg).unwrap();
    let cgroups = cgroup_dirs(&b, id);
    assert!(!cgroups.is_empty());
    let exit = wait_exit(&b, id, &started);
    assert_eq!(exit.terminal_state, Some(TerminalState::Clean));
    assert_eq!((exit.exit_code, exit.signal), (Some(7), None));
    assert!(!exit.oom_killed);
    assert_eq!(exit.detail, None);
    // It sees itself as PID 2 under PID 1, nothing of the host, and its cell id as hostname.
    assert_eq!(read_log(&cfg), format!("2\n{id}\n/proc/1 /proc/2\n"));
    assert_torn_down(&b, id, &started, &cgroups, &mounts);
    // The host's hostname is untouched.
    assert_ne!(std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim(), id);
}

#[test]
fn death_by_signal_inside_the_cell_is_clean_with_that_signal() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let id = "ci-segv";
    let started = b.start(&sh(tmp.path(), id, CELL, "kill -SEGV $$")).unwrap();
    let exit = wait_exit(&b, id, &started);
    assert_eq!(exit.terminal_state, Some(TerminalState::Clean));
    assert_eq!((exit.exit_code, exit.signal), (None, Some(libc::SIGSEGV)));
}

#[test]
fn stop_with_grace_reaches_the_workload_and_its_children() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let mounts = host_proc_mounts();
    let id = "ci-term";
    let cfg = sh(tmp.path(), id, CELL, "sleep 60 & echo started; wait");
    let started = b.start(&cfg).unwrap();
    let cgroups = cgroup_dirs(&b, id);
    wait_until("the workload to start", EXIT_TIMEOUT, || read_log(&cfg).contains("started"));
    assert!(matches!(b.inspect(id), CellState::Running(s) if s == started));
    b.signal(id, false).unwrap();
    let exit = wait_exit(&b, id, &started);
    assert_eq!(exit.terminal_state, Some(TerminalState::Clean));
    assert_eq!((exit.exit_code, exit.signal), (None, Some(libc::SIGTERM)));
    assert_torn_down(&b, id, &started, &cgroups, &mounts);
}

/// Everything a root workload without CAP_SYS_PTRACE can try in order to get at the report key.
const KEY_HUNT: &str = r#"
import ctypes, json, os
res = {}
def attempt(name, f):
    try:
        res[name] = f()
    except OSError as e:
        res[name] = "denied:%d" % e.errno
attempt("mem", lambda: open("/proc/1/mem", "rb").read(1).hex())
attempt("task_mem", lambda: open("/proc/1/task/1/mem", "rb").read(1).hex())
attempt("maps", lambda: open("/proc/1/maps").read()[:40])
attempt("environ", lambda: open("/proc/1/environ", "rb").read().hex())
attempt("cmdline", lambda: open("/proc/1/cmdline", "rb").read().decode(errors="replace"))
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
def init_fds():
    out = {}
    for fd in os.listdir("/proc/1/fd"):
        try:
            out[fd] = os.readlink("/proc/1/fd/" + fd)
            os.close(os.open("/proc/1/fd/" + fd, os.O_RDONLY | os.O_NONBLOCK))
            out[fd] += " OPENED"
        except OSError as e:
            out[fd] = "denied:%d" % e.errno
    return out
attempt("init_fds", init_fds)
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
rc = libc.ptrace(16, 1, None, None)  # PTRACE_ATTACH
res["ptrace_attach"] = "ok" if rc == 0 else "denied:%d" % ctypes.get_errno()
# process_vm_readv of the init's stack (from /proc/1/stat's startstack, if readable at all).
buf = ctypes.create_string_buffer(64)
local = iovec(ctypes.cast(buf, ctypes.c_void_p), 64)
try:
    stack = int(open("/proc/1/stat").read().rsplit(")", 1)[1].split()[25])
except (OSError, ValueError, IndexError):
    stack = 0x7ff000000000
remote = iovec(stack - 64, 64)
rc = libc.process_vm_readv(1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
res["process_vm_readv"] = "ok" if rc >= 0 else "denied:%d" % ctypes.get_errno()
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
res["cap_sys_ptrace"] = any(int(status[k], 16) >> 19 & 1 for k in ("CapBnd", "CapEff", "CapPrm"))
res["env_names"] = sorted(os.environ)
res["own_fds"] = sorted(int(f) for f in os.listdir("/proc/self/fd"))
# A root workload can take the cell's /proc away and look at the host's: the shim and the
# init are there too, and must be just as closed.
res["umount_proc"] = libc.umount2(b"/proc", 2)  # MNT_DETACH
host = {}
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        cmd = open("/proc/%s/cmdline" % pid, "rb").read()
    except OSError:
        continue
    if b"warden-shim" in cmd:
        for what in ("mem", "environ"):
            try:
                open("/proc/%s/%s" % (pid, what), "rb").read(1)
                host[pid + "/" + what] = "read"
            except OSError as e:
                host[pid + "/" + what] = "denied:%d" % e.errno
res["host_shim_procs"] = host
print("RESULT " + json.dumps(res), flush=True)
"#;

#[test]
fn the_workload_cannot_get_at_the_report_key() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let id = "ci-keyhunt";
    let cfg = python(tmp.path(), id, CELL, &format!("{KEY_HUNT}\nimport time; time.sleep(30)"));
    let started = b.start(&cfg).unwrap();
    wait_until("the hunt", EXIT_TIMEOUT, || read_log(&cfg).contains("RESULT "));
    // From the host: the workload holds exactly stdin, stdout and stderr (no key pipe, no
    // report pipe).
    assert_eq!(fds_of(workload_host_pid(started.pid)), [0, 1, 2]);
    b.signal(id, true).unwrap();
    wait_exit(&b, id, &started);

    let res = result_line(&read_log(&cfg));
    let denied = |v: &serde_json::Value| v.as_str().is_some_and(|s| s.starts_with("denied:"));
    for what in ["mem", "task_mem"] {
        assert!(denied(&res[what]), "/proc/1/{what} must be closed to the workload: {res}");
    }
    // Some kernels (this host's 6.18 among them) let a root caller open PTRACE_MODE_READ files
    // like /proc/1/environ even without CAP_SYS_PTRACE. If so, it must hold nothing but the
    // environment the shim inherited from the supervisor: no key material.
    if let Some(hex) = res["environ"].as_str().filter(|s| !s.starts_with("denied:")) {
        let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let mut seen: Vec<String> =
            bytes.split(|&b| b == 0).filter(|e| !e.is_empty()).map(|e| String::from_utf8_lossy(e).into_owned()).collect();
        let mut ours: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
        seen.sort();
        ours.sort();
        assert_eq!(seen, ours, "/proc/1/environ holds more than the supervisor's environment");
    }
    for (fd, how) in res["init_fds"].as_object().cloned().unwrap_or_default() {
        assert!(denied(&how), "the init's fd {fd} must not be reachable: {res}");
    }
    assert!(denied(&res["ptrace_attach"]), "{res}");
    assert!(denied(&res["process_vm_readv"]), "{res}");
    assert_eq!(res["cap_sys_ptrace"], false, "{res}");
    // The init's argv is the shim's: the cell dir, no secret.
    let cmdline = res["cmdline"].as_str().unwrap();
    assert!(cmdline.contains("warden-shim") && cmdline.contains(id), "{cmdline}");
    let names: Vec<&str> = res["env_names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(!names.iter().any(|n| n.to_ascii_lowercase().contains("key")), "{names:?}");
    // Python's listdir holds one extra descriptor (3) while it lists.
    assert_eq!(res["own_fds"], serde_json::json!([0, 1, 2, 3]), "{res}");
    assert_eq!(res["umount_proc"], 0, "{res}");
    let host = res["host_shim_procs"].as_object().unwrap();
    assert!(!host.is_empty(), "with /proc unmounted the host's shims should be visible: {res}");
    // Their memory is as closed as the init's (their environment is just the supervisor's).
    let mems: Vec<_> = host.iter().filter(|(k, _)| k.ends_with("/mem")).collect();
    assert!(!mems.is_empty() && mems.iter().all(|(_, v)| denied(v)), "{res}");
}

#[test]
fn forged_exit_reports_do_not_count() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let mounts = host_proc_mounts();
    let id = "ci-forge";
    let script = format!(
        r#"
import os, signal, sys
record = b"warden-exit-v1 {id} exit 0\n"
forged = [record + os.urandom(32), record + bytes(32), os.urandom(64), record]
wrote = 0
for fd in range(1024):
    for f in forged:
        try:
            os.write(fd, f)
            wrote += 1
        except OSError:
            pass
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        fds = os.listdir("/proc/%s/fd" % pid)
    except OSError:
        continue
    for fd in fds:
        try:
            w = os.open("/proc/%s/fd/%s" % (pid, fd), os.O_WRONLY | os.O_NONBLOCK)
            for f in forged:
                os.write(w, f)
            os.close(w)
            wrote += 1
        except OSError:
            pass
# PID 1 ignores what it has no use for (SIGHUP/SIGUSR1/SIGUSR2 it would forward: back to us).
for sig in (signal.SIGKILL, signal.SIGPIPE, signal.SIGCHLD):
    os.kill(1, sig)
print("\nforged into", wrote, "places", flush=True)
sys.exit(3)
"#
    );
    let cfg = python(tmp.path(), id, CELL, &script);
    let started = b.start(&cfg).unwrap();
    let cgroups = cgroup_dirs(&b, id);
    let exit = wait_exit(&b, id, &started);
    assert!(read_log(&cfg).contains("forged into"), "{}", read_log(&cfg));
    assert_eq!(exit.terminal_state, Some(TerminalState::Clean), "{exit:?}");
    assert_eq!((exit.exit_code, exit.signal), (Some(3), None), "only the real exit code may be reported");
    assert_torn_down(&b, id, &started, &cgroups, &mounts);
}

fn interfaces(dev: &str) -> Vec<String> {
    let mut names: Vec<String> = dev.lines().skip(2).filter_map(|l| Some(l.split(':').next()?.trim().to_string())).collect();
    names.sort();
    names
}

#[test]
fn network_none_leaves_only_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let cfg = sh(tmp.path(), "ci-netnone", CellIsolation::Cell { network_none: true }, "cat /proc/net/dev");
    let started = b.start(&cfg).unwrap();
    assert_eq!(wait_exit(&b, "ci-netnone", &started).exit_code, Some(0));
    assert_eq!(interfaces(&read_log(&cfg)), ["lo"]);

    // Without it the cell shares the host's network.
    let cfg = sh(tmp.path(), "ci-net", CELL, "cat /proc/net/dev");
    let started = b.start(&cfg).unwrap();
    assert_eq!(wait_exit(&b, "ci-net", &started).exit_code, Some(0));
    assert_eq!(interfaces(&read_log(&cfg)), interfaces(&std::fs::read_to_string("/proc/net/dev").unwrap()));
}

#[test]
fn exec_failure_in_a_cell_is_a_start_error_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let id = "ci-noexec";
    match b.start(&config(tmp.path(), id, CELL, &["/nonexistent"])) {
        Err(StartError::Exec(msg)) => assert!(msg.contains("No such file"), "{msg}"),
        other => panic!("expected an exec error, got {other:?}"),
    }
    for dir in cgroup_dirs(&b, id) {
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
    assert_eq!(b.inspect(id), CellState::NotStarted);
}

#[test]
fn a_lost_shim_takes_its_cell_and_cgroups_along() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let mounts = host_proc_mounts();
    let id = "ci-lost";
    let started = b.start(&sh(tmp.path(), id, CELL, "sleep 60")).unwrap();
    let cgroups = cgroup_dirs(&b, id);
    let workload = workload_host_pid(started.pid);
    // SAFETY: plain kill/waitpid on our own child, the shim.
    unsafe {
        libc::kill(started.shim_pid as libc::pid_t, libc::SIGKILL);
        libc::waitpid(started.shim_pid as libc::pid_t, std::ptr::null_mut(), 0);
    }
    assert!(matches!(b.inspect(id), CellState::Lost { .. }));
    wait_until("the orphaned workload to die", EXIT_TIMEOUT, || is_dead(workload));
    assert_torn_down(&b, id, &started, &cgroups, &mounts);
}

#[test]
fn cgroup_layout_describes_this_host() {
    let layout = cgroup_layout();
    let shown = layout.to_string();
    match &layout {
        CgroupLayout::V2 { root } => assert!(shown.contains(&root.display().to_string())),
        CgroupLayout::V1 { memory, .. } => {
            assert!(shown.starts_with("cgroup v1: memory "), "{shown}");
            if let Some(m) = memory {
                assert!(m.join("memory.limit_in_bytes").exists(), "{}", m.display());
            }
        }
    }
    // Whichever it is, the cell's memory cgroup sits under this process's own.
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    // The cell stays up until the test has looked: its cgroup is removed when it ends.
    let cfg = sh(tmp.path(), "ci-layout", CellIsolation::Process, "cat /proc/self/cgroup; exec sleep 60");
    let started = b.start(&cfg).unwrap();
    let memory = cgroup_dir_with(&b, "ci-layout", "memory.stat");
    wait_until("the cell's cgroup listing", Duration::from_secs(10), || read_log(&cfg).contains("memory"));
    b.signal("ci-layout", true).unwrap();
    wait_exit(&b, "ci-layout", &started);
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own_memory = own.lines().find_map(|l| {
        let mut p = l.splitn(3, ':');
        let (_, c, path) = (p.next()?, p.next()?, p.next()?);
        (c.split(',').any(|c| c == "memory") || c.is_empty()).then(|| path.to_string())
    });
    let own_memory = own_memory.unwrap();
    let expected = format!("{}/warden/ci-layout", own_memory.trim_end_matches('/'));
    assert!(read_log(&cfg).lines().any(|l| l.ends_with(&expected) || l.contains(&format!("{expected}~"))), "{}", read_log(&cfg));
    assert!(memory.to_string_lossy().contains(&expected), "{}", memory.display());
}

// ---- limits ---------------------------------------------------------------------------------

#[test]
fn without_pressure_no_oom_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let mut cfg = python(tmp.path(), "ci-nooom", CELL, "x = b'x' * (16 << 20); print('ok', len(x))");
    cfg.limits.memory_max_bytes = Some(128 << 20);
    let started = b.start(&cfg).unwrap();
    let exit = wait_exit(&b, "ci-nooom", &started);
    assert_eq!((exit.exit_code, exit.oom_killed), (Some(0), false), "{exit:?}");
}

#[test]
fn pids_limit_caps_a_fork_bomb() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let mounts = host_proc_mounts();
    let id = "ci-pids";
    let script = r#"
import os, time
forked = failed = 0
for i in range(100):
    try:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        forked += 1
    except OSError:
        failed += 1
print("forked", forked, "failed", failed, flush=True)
time.sleep(30)
"#;
    let mut cfg = python(tmp.path(), id, CELL, script);
    cfg.limits.pids_max = Some(20);
    let started = b.start(&cfg).unwrap();
    let cgroups = cgroup_dirs(&b, id);
    let pids = cgroup_dir_with(&b, id, "pids.max");
    // The whole line: the log is read while the shim may still be writing it.
    let whole_line = |log: &str| log.lines().any(|l| l.starts_with("forked") && l.split_whitespace().count() == 4);
    wait_until("the fork loop", EXIT_TIMEOUT, || whole_line(&read_log(&cfg)));
    let current: u32 = std::fs::read_to_string(pids.join("pids.current")).unwrap().trim().parse().unwrap();
    let members = std::fs::read_to_string(pids.join("cgroup.procs")).unwrap().lines().count();
    assert!(current <= 20 && members <= 20, "pids.current {current}, {members} processes");
    let log = read_log(&cfg);
    let line = log.lines().find(|l| l.starts_with("forked")).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    let forked: usize = words[1].parse().unwrap();
    let failed: usize = words[3].parse().unwrap();
    // init + python + 18 children = 20.
    assert!((10..=18).contains(&forked) && failed >= 82, "{log}");
    b.signal(id, false).unwrap();
    let exit = wait_exit(&b, id, &started);
    assert_eq!(exit.signal, Some(libc::SIGTERM));
    assert_torn_down(&b, id, &started, &cgroups, &mounts);
}

#[test]
fn cpu_limit_throttles_a_busy_loop() {
    for (id, isolation) in [("ci-cpu-proc", CellIsolation::Process), ("ci-cpu-cell", CELL)] {
        let tmp = tempfile::tempdir().unwrap();
        let b = backend(tmp.path());
        let wall = 2.0;
        let script = format!(
            "import time\nt = time.monotonic()\nwhile time.monotonic() - t < {wall}: pass\nprint('cpu', time.process_time(), flush=True)"
        );
        let mut cfg = python(tmp.path(), id, isolation, &script);
        cfg.limits.cpu_max_millicores = Some(200);
        let started = b.start(&cfg).unwrap();
        let cpu = cgroup_dir_with(&b, id, "cpu.cfs_quota_us");
        assert_eq!(std::fs::read_to_string(cpu.join("cpu.cfs_quota_us")).unwrap().trim(), "20000");
        assert_eq!(std::fs::read_to_string(cpu.join("cpu.cfs_period_us")).unwrap().trim(), "100000");
        std::thread::sleep(Duration::from_millis(1200));
        let stat = std::fs::read_to_string(cpu.join("cpu.stat")).unwrap();
        let throttled: u64 = stat.lines().find_map(|l| l.strip_prefix("nr_throttled ")).unwrap().parse().unwrap();
        assert!(throttled > 0, "{id}: never throttled: {stat}");
        assert_eq!(wait_exit(&b, id, &started).exit_code, Some(0));
        let log = read_log(&cfg);
        let used: f64 = log.trim().strip_prefix("cpu ").unwrap().parse().unwrap();
        // 0.2 of a core over 2 s is 0.4 s; unthrottled it would be ~2 s. Load on the machine
        // can only lower it.
        assert!(used <= 0.2 * wall + 0.25, "{id}: used {used} s of CPU in {wall} s");
    }
}

#[test]
fn a_thousand_cells_with_limits_leave_no_cgroups_and_no_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let mounts = host_proc_mounts();
    let prefix = format!("leak{}-", std::process::id());
    let limits = CellLimits { memory_max_bytes: Some(64 << 20), cpu_max_millicores: Some(500), pids_max: Some(16) };
    let mut parents = Vec::new();
    let total = 1000;
    let batch = 20;
    for round in 0..total / batch {
        let mut running = Vec::new();
        for i in 0..batch {
            let n = round * batch + i;
            let id = format!("{prefix}{n}");
            let isolation = if n % 2 == 0 { CELL } else { CellIsolation::Process };
            // Each leaves a straggler behind for the teardown to find.
            let mut cfg = sh(tmp.path(), &id, isolation, "sleep 30 & exit 0");
            cfg.limits = limits;
            let started = b.start(&cfg).unwrap();
            if parents.is_empty() {
                parents = cgroup_dirs(&b, &id).iter().map(|d| d.parent().unwrap().to_path_buf()).collect();
            }
            running.push((id, started));
        }
        for (id, started) in running {
            let exit = wait_exit(&b, &id, &started);
            assert_eq!(exit.exit_code, Some(0), "{id}: {exit:?}");
            b.remove(&id).unwrap();
        }
    }
    assert!(!parents.is_empty());
    for parent in &parents {
        let leftovers: Vec<String> = std::fs::read_dir(parent)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert_eq!(leftovers, Vec::<String>::new(), "cgroups left in {}", parent.display());
    }
    let strays: Vec<u32> = (0..total).flat_map(|n| processes_of(&format!("{prefix}{n}"))).collect();
    assert_eq!(strays, Vec::<u32>::new(), "processes outlived their cells");
    assert_eq!(host_proc_mounts(), mounts);
}

#[test]
fn invalid_limits_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    for limits in [
        CellLimits { memory_max_bytes: Some(0), ..Default::default() },
        CellLimits { pids_max: Some(0), ..Default::default() },
        CellLimits { cpu_max_millicores: Some(5), ..Default::default() },
    ] {
        let mut cfg = sh(tmp.path(), "ci-badlimits", CELL, "true");
        cfg.limits = limits;
        assert!(matches!(b.start(&cfg), Err(StartError::InvalidConfig(_))), "{limits:?}");
    }
}

/// The real uid of `/proc/<pid>/status`: who the host thinks the process is.
fn host_uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with("Uid:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A cell with a user that is not root: a process cell runs as it with no other groups and
/// `no_new_privs`; an isolated cell is root in a user namespace that maps 0 to it, and its
/// authenticated exit report, private /proc and teardown work as ever.
#[test]
fn a_cell_with_a_user_runs_as_it_and_an_isolated_one_is_root_only_in_its_user_namespace() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    // The workdir must be the user's to enter.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let b = backend(tmp.path());
    let nobody = warden_cell::CellUser { uid: 65534, gid: 65534 };
    let script =
        "echo uid=$(id -u) groups=$(id -G); cat /proc/self/uid_map; grep NoNewPrivs /proc/self/status; sleep 0.3; exit 3";

    let plain = CellConfig { user: Some(nobody), ..sh(tmp.path(), "plain-user", CellIsolation::Process, script) };
    let started = b.start(&plain).unwrap();
    assert_eq!(host_uid(started.pid), 65534);
    let exit = wait_exit(&b, "plain-user", &started);
    assert_eq!(exit.exit_code, Some(3));
    let log = read_log(&plain);
    assert!(log.contains("uid=65534 groups=65534\n"), "{log}");
    assert!(log.contains("NoNewPrivs:\t1"), "{log}");

    let mounts_before = host_proc_mounts();
    let isolated = CellConfig { user: Some(nobody), ..sh(tmp.path(), "iso-user", CELL, script) };
    let started = b.start(&isolated).unwrap();
    let cgroups = cgroup_dirs(&b, "iso-user");
    assert_eq!(host_uid(started.pid), 65534, "the init is the user on the host");
    let workload = workload_host_pid(started.pid);
    assert_eq!(host_uid(workload), 65534, "so is the workload");
    let exit = wait_exit(&b, "iso-user", &started);
    assert_eq!((exit.exit_code, exit.terminal_state), (Some(3), Some(TerminalState::Clean)), "{exit:?}");
    let log = read_log(&isolated);
    assert!(log.contains("uid=0 groups=0\n"), "root inside: {log}");
    let map: Vec<&str> = log.lines().find(|l| l.trim_start().starts_with('0')).unwrap().split_whitespace().collect();
    assert_eq!(map, ["0", "65534", "1"], "{log}");
    assert!(log.contains("NoNewPrivs:\t1"), "{log}");
    assert_torn_down(&b, "iso-user", &started, &cgroups, &mounts_before);
}
