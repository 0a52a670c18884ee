//! End-to-end tests of the process backend with real shims and real workloads, beyond what the
//! conformance suite (`tests/conformance.rs`) checks for every backend: process groups, exec
//! failures, env and workdir, log rotation, and recovery corner cases (lost shims, abandoned
//! dirs, forged pids), and how a fenced cell's shim treats a lease it cannot trust.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{is_dead, pidfd, poll_readable, read_log, wait_until, EXIT_TIMEOUT};
use warden_cell::{
    boottime_ns, process_start_time, CellConfig, CellState, ExitStatus, Fence, ProcessBackend, ShimExe, StartError, StartedCell,
};

fn shim_exe() -> ShimExe {
    ShimExe::Standalone(PathBuf::from(env!("CARGO_BIN_EXE_warden-shim")))
}

fn backend(root: &Path) -> ProcessBackend {
    ProcessBackend::new(root.join("cells"), shim_exe())
}

fn config(root: &Path, cell_id: &str, argv: &[&str]) -> CellConfig {
    CellConfig {
        cell_id: cell_id.to_string(),
        workload_id: "wl".to_string(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
        workdir: None,
        log_path: root.join("logs/wl/output.log"),
        log_max_size_bytes: 1024 * 1024,
        log_max_files: 3,
        isolation: Default::default(),
        limits: Default::default(),
        binds: Vec::new(),
        fence: None,
        user: None,
    }
}

fn sh(root: &Path, cell_id: &str, script: &str) -> CellConfig {
    config(root, cell_id, &["sh", "-c", script])
}

/// Waits (via the exit fd, like the runtime does) for the shim to finish, then collects.
fn wait_exit(b: &ProcessBackend, id: &str, started: &StartedCell) -> CellState {
    let fd = b.exit_fd(id, started).expect("exit fd");
    assert!(poll_readable(&fd, EXIT_TIMEOUT), "cell {id} did not end within {EXIT_TIMEOUT:?}");
    b.collect_exit(id, started)
}

fn exited(state: CellState) -> ExitStatus {
    match state {
        CellState::Exited(e) => e,
        other => panic!("expected Exited, got {other:?}"),
    }
}

#[test]
fn exec_failure_is_a_start_error() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    match b.start(&config(tmp.path(), "exec_failure_is_a_start_error-c1", &["/nonexistent"])) {
        Err(StartError::Exec(msg)) => assert!(msg.contains("No such file"), "{msg}"),
        other => panic!("expected an exec error, got {other:?}"),
    }
    let mut cfg = config(tmp.path(), "exec_failure_is_a_start_error-c2", &["true"]);
    cfg.workdir = Some(tmp.path().join("no-such-dir"));
    match b.start(&cfg) {
        Err(StartError::Exec(msg)) => assert!(msg.contains("chdir"), "{msg}"),
        other => panic!("expected a chdir error, got {other:?}"),
    }
    // The workload never ran, so after a restart it counts as not started.
    assert_eq!(b.inspect("exec_failure_is_a_start_error-c1"), CellState::NotStarted);
}

#[test]
fn starting_the_same_cell_twice_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let cfg = sh(tmp.path(), "starting_the_same_cell_twice_is_refused-c1", "exit 0");
    let started = b.start(&cfg).unwrap();
    assert!(matches!(b.start(&cfg), Err(StartError::AlreadyExists(_))));
    exited(wait_exit(&b, "starting_the_same_cell_twice_is_refused-c1", &started));
    let mut bad = cfg.clone();
    bad.cell_id = "../escape".into();
    assert!(matches!(b.start(&bad), Err(StartError::InvalidConfig(_))));
}

#[test]
fn stop_reaches_the_whole_process_group() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let cfg = sh(tmp.path(), "stop_reaches_the_whole_process_group-c1", "sleep 60 & echo grandchild $!; wait");
    let started = b.start(&cfg).unwrap();
    wait_until("the grandchild pid", EXIT_TIMEOUT, || read_log(&cfg).ends_with('\n'));
    let log = read_log(&cfg);
    let grandchild: u32 = log.trim().strip_prefix("grandchild ").unwrap().parse().unwrap();
    assert!(!is_dead(grandchild));
    b.signal("stop_reaches_the_whole_process_group-c1", false).unwrap();
    let exit = exited(wait_exit(&b, "stop_reaches_the_whole_process_group-c1", &started));
    assert_eq!(exit.signal, Some(libc::SIGTERM));
    wait_until("the grandchild to die", EXIT_TIMEOUT, || is_dead(grandchild));
}

#[test]
fn grandchild_holding_the_log_pipe_neither_delays_the_exit_nor_outlives_the_cell() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let cfg = sh(tmp.path(), "grandchild_holding_the_log_pipe_neither_-c1", "sleep 30 & echo grandchild $!; exit 4");
    let started = b.start(&cfg).unwrap();
    let begun = Instant::now();
    assert_eq!(exited(wait_exit(&b, "grandchild_holding_the_log_pipe_neither_-c1", &started)).exit_code, Some(4));
    assert!(begun.elapsed() < Duration::from_secs(5), "the shim waited for the grandchild");
    // Output written before the exit is not lost.
    let log = read_log(&cfg);
    let grandchild: u32 = log.trim().strip_prefix("grandchild ").unwrap().parse().unwrap();
    wait_until("the leftover grandchild to die with its cell", EXIT_TIMEOUT, || is_dead(grandchild));
}

#[test]
fn shim_and_workload_are_isolated_from_the_supervisor() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let started = b.start(&config(tmp.path(), "shim_and_workload_are_isolated_from_the_-c1", &["sleep", "60"])).unwrap();
    let (shim, pid) = (started.shim_pid as libc::pid_t, started.pid as libc::pid_t);
    // SAFETY: getsid/getpgid only read process attributes.
    let (shim_sid, pgid, sid, my_pgid) = unsafe { (libc::getsid(shim), libc::getpgid(pid), libc::getsid(pid), libc::getpgid(0)) };
    assert_eq!(shim_sid, shim, "the shim leads its own session: the supervisor's Ctrl-C cannot reach it");
    assert_eq!(pgid, pid, "the workload leads its own process group");
    assert_eq!(sid, shim);
    assert_ne!(pgid, my_pgid);
    // The workload inherited nothing but stdin/stdout/stderr. Right after exec the dynamic
    // loader briefly holds its libraries open (as fd 3), so wait for that to pass; an
    // inherited descriptor would never go away.
    let fds = || {
        let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap().parse().unwrap())
            .collect();
        fds.sort();
        fds
    };
    // Generous: on a loaded 2-core machine the loader can go unscheduled for a while. It (and
    // `sleep`'s locale set-up) opens and closes one file after another, so "only stdio" must
    // hold for a while, not at one glance; a descriptor that closes while being looked at was
    // such a file, not an inherited one.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut quiet = 0;
    while quiet < 40 && Instant::now() < deadline {
        quiet = if fds() == [0, 1, 2] { quiet + 1 } else { 0 };
        std::thread::sleep(Duration::from_millis(5));
    }
    let extra: Vec<String> = fds()
        .into_iter()
        .filter(|fd| *fd > 2)
        .filter_map(|fd| match std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) {
            Ok(target) => Some(format!("{fd} -> {}", target.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(format!("{fd} -> {e}")),
        })
        .collect();
    assert!(extra.is_empty(), "the workload holds descriptors beyond stdio: {extra:?}");
    b.signal("shim_and_workload_are_isolated_from_the_-c1", true).unwrap();
    exited(wait_exit(&b, "shim_and_workload_are_isolated_from_the_-c1", &started));
}

#[test]
fn env_and_workdir() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let mut cfg = sh(tmp.path(), "env_and_workdir-c1", "echo \"id=$WARDEN_CELL_ID wl=$WARDEN_WORKLOAD_ID foo=$FOO\"; pwd");
    cfg.env.insert("FOO".into(), "bar baz".into());
    cfg.workdir = Some(tmp.path().to_path_buf());
    let started = b.start(&cfg).unwrap();
    assert_eq!(exited(wait_exit(&b, "env_and_workdir-c1", &started)).exit_code, Some(0));
    let log = read_log(&cfg);
    assert!(log.contains("id=env_and_workdir-c1 wl=wl foo=bar baz\n"), "{log}");
    let cwd = tmp.path().canonicalize().unwrap();
    assert!(log.contains(&format!("{}\n", cwd.display())), "{log}");
}

#[test]
fn logs_rotate_and_keep_at_most_max_files() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let max = 16 * 1024;
    let mut cfg = sh(
        tmp.path(),
        "logs_rotate_and_keep_at_most_max_files-c1",
        "i=0; while [ $i -lt 5000 ]; do echo \"line $i ...............................\"; i=$((i+1)); done",
    );
    cfg.log_max_size_bytes = max;
    cfg.log_max_files = 2;
    let started = b.start(&cfg).unwrap();
    assert_eq!(exited(wait_exit(&b, "logs_rotate_and_keep_at_most_max_files-c1", &started)).exit_code, Some(0));
    let log_dir = cfg.log_path.parent().unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(log_dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["output.log", "output.log.1", "output.log.2"]);
    for name in &names {
        let len = std::fs::metadata(log_dir.join(name)).unwrap().len();
        assert!(len <= max, "{name} has {len} bytes, limit {max}");
    }
    assert!(read_log(&cfg).ends_with("line 4999 ...............................\n"));
}

#[test]
fn exit_while_nobody_watches_is_learned_later() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = sh(tmp.path(), "exit_while_nobody_watches_is_learned_lat-c1", "sleep 0.2; exit 3");
    let started = backend(tmp.path()).start(&cfg).unwrap();
    let b = backend(tmp.path());
    let mut state = b.inspect("exit_while_nobody_watches_is_learned_lat-c1");
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while matches!(state, CellState::Running(_)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        state = b.inspect("exit_while_nobody_watches_is_learned_lat-c1");
    }
    let exit = exited(state);
    assert_eq!(exit.exit_code, Some(3), "{exit:?}");
    b.collect_exit("exit_while_nobody_watches_is_learned_lat-c1", &started); // reap our zombie shim
}

#[test]
fn lost_shim_means_lost_cell_and_dead_workload() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let started = b.start(&config(tmp.path(), "lost_shim_means_lost_cell_and_dead_workl-c1", &["sleep", "60"])).unwrap();
    // SAFETY: plain kill/waitpid on our own child, the shim.
    unsafe {
        libc::kill(started.shim_pid as libc::pid_t, libc::SIGKILL);
        libc::waitpid(started.shim_pid as libc::pid_t, std::ptr::null_mut(), 0);
    }
    match b.inspect("lost_shim_means_lost_cell_and_dead_workl-c1") {
        CellState::Lost { reason } => assert_eq!(reason, "shim lost; cell killed"),
        other => panic!("expected Lost, got {other:?}"),
    }
    wait_until("the orphaned workload to die", EXIT_TIMEOUT, || is_dead(started.pid));
    // Asked again, the cell stays lost (it is never reported as startable).
    assert!(matches!(b.inspect("lost_shim_means_lost_cell_and_dead_workl-c1"), CellState::Lost { .. }));
    b.signal("lost_shim_means_lost_cell_and_dead_workl-c1", false).unwrap();
}

#[test]
fn unstarted_dir_is_set_aside_as_not_started() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    // A supervisor that died between creating the dir and the shim taking its lock.
    let dir = b.cell_dir("unstarted_dir_is_set_aside_as_not_starte-c1");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = config(tmp.path(), "unstarted_dir_is_set_aside_as_not_starte-c1", &["sleep", "60"]);
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    assert_eq!(b.inspect("unstarted_dir_is_set_aside_as_not_starte-c1"), CellState::NotStarted);
    assert!(!dir.exists());
    assert!(tmp.path().join("cells/unstarted_dir_is_set_aside_as_not_starte-c1.abandoned-1/config.json").exists());
    // A shim that only now gets going must not start the workload in the set-aside dir.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden-shim")).arg(&dir).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("err "));
    assert!(!cfg.log_path.exists(), "workload must not have run");
    // The id is free again: the cell can now be started for real.
    let started = b.start(&cfg).unwrap();
    b.signal("unstarted_dir_is_set_aside_as_not_starte-c1", true).unwrap();
    exited(wait_exit(&b, "unstarted_dir_is_set_aside_as_not_starte-c1", &started));
}

#[test]
fn pid_reuse_guard() {
    let tmp = tempfile::tempdir().unwrap();
    let spawn_sleep = || std::process::Command::new("sleep").arg("5").spawn().unwrap();
    let mut a = spawn_sleep();
    std::thread::sleep(Duration::from_millis(50));
    let mut b_proc = spawn_sleep();
    let ta = process_start_time(a.id()).unwrap();
    let tb = process_start_time(b_proc.id()).unwrap();
    assert_ne!(ta, tb, "different processes must have different start times");
    assert_eq!(process_start_time(a.id()), Some(ta), "start time is stable");
    a.kill().unwrap();
    b_proc.kill().unwrap();
    a.wait().unwrap();
    b_proc.wait().unwrap();
    assert_eq!(process_start_time(a.id()), None);

    // A pid.json whose shim start time does not match: the pid "belongs to someone else".
    let b = backend(tmp.path());
    let started = b.start(&config(tmp.path(), "pid_reuse_guard-c1", &["sleep", "60"])).unwrap();
    let pid_json = b.cell_dir("pid_reuse_guard-c1").join("pid.json");
    let mut forged = started.clone();
    forged.shim_start_time += 1;
    std::fs::write(&pid_json, serde_json::to_vec(&forged).unwrap()).unwrap();
    b.signal("pid_reuse_guard-c1", true).unwrap();
    let fd = b.exit_fd("pid_reuse_guard-c1", &forged).unwrap();
    assert!(poll_readable(&fd, Duration::ZERO), "an impostor pid counts as gone");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!is_dead(started.pid), "the forged identity must not be signalled");
    assert!(!is_dead(started.shim_pid));

    std::fs::write(&pid_json, serde_json::to_vec(&started).unwrap()).unwrap();
    b.signal("pid_reuse_guard-c1", true).unwrap();
    assert_eq!(exited(wait_exit(&b, "pid_reuse_guard-c1", &started)).signal, Some(9));
}

#[test]
fn shim_without_a_dir_prints_usage() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden-shim")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: warden-shim <cell_dir>"));
}

#[test]
fn locate_falls_back_to_the_subcommand() {
    // Test binaries live in target/*/deps, where no warden-shim sits next to them.
    let exe = std::env::current_exe().unwrap();
    assert_eq!(ShimExe::locate(), ShimExe::Subcommand(exe));
}

/// Fail safe: when the deadline passes, a lease for another epoch, an unreadable one or none at
/// all is an expired one. None of them extends the cell, however far its deadline lies.
#[test]
fn fence_treats_a_lease_it_cannot_trust_as_expired() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let deadline = boottime_ns() + 300_000_000;
    let far = boottime_ns() + 60_000_000_000;
    let cells = ["foreign", "garbage", "missing"].map(|id| {
        let cfg = CellConfig {
            fence: Some(Fence { epoch: 5, initial_deadline_boottime_ns: deadline }),
            ..sh(tmp.path(), id, "sleep 60")
        };
        let started = b.start(&cfg).unwrap();
        let cell = pidfd(started.pid).unwrap();
        (id, started, cell)
    });
    b.renew_lease("foreign", 6, far).unwrap();
    std::fs::write(b.cell_dir("garbage").join("lease.json"), format!("{{\"epoch\": 5, \"deadline_boottime_ns\": {far}")).unwrap();
    std::fs::remove_file(b.cell_dir("missing").join("lease.json")).unwrap();
    for (id, started, cell) in &cells {
        assert!(poll_readable(cell, EXIT_TIMEOUT), "{id}: not fenced");
        assert!(boottime_ns() >= deadline, "{id}: fenced before its deadline");
        let exit = exited(wait_exit(&b, id, started));
        assert!(exit.fenced, "{id}: {exit:?}");
        assert_eq!(exit.signal, Some(libc::SIGKILL), "{id}: {exit:?}");
        let detail = exit.detail.unwrap_or_default();
        assert!(detail.starts_with("fenced: lease epoch 5 expired ("), "{id}: {detail}");
        let why = match *id {
            "foreign" => "lease.json names epoch 6",
            "garbage" => "lease.json is unreadable",
            _ => "lease.json is missing",
        };
        assert!(detail.contains(why), "{id}: {detail}");
    }
}

/// An unfenced cell has no lease: `lease.json` is never written for it, and renewing a lease for
/// a cell that does not exist fails rather than creating its directory.
#[test]
fn only_fenced_cells_have_a_lease() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let started = b.start(&sh(tmp.path(), "plain", "exit 0")).unwrap();
    let exit = exited(wait_exit(&b, "plain", &started));
    assert!(!exit.fenced && exit.detail.is_none(), "{exit:?}");
    assert!(!b.cell_dir("plain").join("lease.json").exists());
    let err = b.renew_lease("nope", 1, boottime_ns() + 1_000_000_000).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(!b.cell_dir("nope").exists());
    assert_eq!(b.renew_lease("../escape", 1, 0).unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
}

/// The fence is the shim's timer: if the shim itself is SIGKILLed, a fenced workload must not
/// run on unfenced. It gets SIGKILL from the kernel (parent-death signal) with its shim.
#[test]
fn a_fenced_workload_dies_with_its_shim() {
    let tmp = tempfile::tempdir().unwrap();
    let b = backend(tmp.path());
    let cfg = CellConfig {
        fence: Some(Fence { epoch: 1, initial_deadline_boottime_ns: boottime_ns() + 60_000_000_000 }),
        ..sh(tmp.path(), "orphan", "exec sleep 60")
    };
    let started = b.start(&cfg).unwrap();
    let cell = pidfd(started.pid).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", started.pid)).unwrap();
    let shim: i32 = stat.rsplit(')').next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(shim, libc::SIGKILL) };
    assert!(poll_readable(&cell, Duration::from_secs(5)), "the fenced workload outlived its shim");
}
