//! The per-cell shim: the workload's parent (or, for `isolation = "cell"`, the parent of the
//! cell's init), which outlives the supervisor, copies the workload's output to its rotated log,
//! forwards stop signals, and records the true exit status durably in `exit.json`.
//!
//! The shim is single-threaded and keeps only a few small heap objects after start-up, so that
//! hundreds of them cost little memory. Its protocol with [`crate::ProcessBackend::start`] is one
//! line on stdout: `ok <pid> <pid_start_time> <shim_pid> <shim_start_time>`, `err exec <msg>`
//! (the workload could not be exec'd) or `err <msg>` (anything else).
//!
//! For an isolated cell, `<pid>` is the host pid of the cell's init (see [`cell_init`]),
//! not of the workload: the init *is* the cell — SIGKILL to it ends every process in the cell's
//! PID namespace, it lives exactly as long as the workload does, and as a process group leader
//! it is what the supervisor's `kill(-pid)` of a lost cell must hit. Its exit status is
//! meaningless; the workload's comes from the init's authenticated exit report.
//!
//! For an OCI cell the shim's child is the runtime (`runc run` in the foreground, see
//! [`crate::oci`]), and the handshake waits until the runtime has started the container:
//! `<pid>` is the container's PID 1 (the workload), read from the runtime's `--pid-file`. A
//! runtime that gives up before that (crun refusing hybrid cgroups, a bad rootfs) is a failed
//! start, `err runtime <its own words>`. Stop requests become `runc kill`; once the runtime has
//! exited the shim reads the container's OOM count and deletes it.
//!
//! For a fenced cell ([`crate::Fence`], see [`crate::fence`]) the loop also polls a timerfd on
//! `CLOCK_BOOTTIME` armed for the lease's deadline. When it fires, the shim re-reads
//! `lease.json`: a later deadline of the same epoch re-arms it; anything else kills the cell at
//! once — as a forced stop does, except that an OCI container's PID 1 is SIGKILLed directly
//! (through a pidfd) rather than through `runc kill`, which would first have to start — and
//! `exit.json` records `fenced`. All of it is the shim's own doing: it holds with the supervisor
//! dead. A lease that expires while the shim is still starting the cell fails the start
//! (`err fenced <why>`) and leaves nothing running.
//!
//! This module is the shim's life up to the handshake: the lock, the config, the start of the
//! cell in whichever mode, `pid.json`, the handshake line. Its rooms:
//! * [`exec`] – the forked child that becomes the workload, and the error pipe's stages;
//! * [`cell_init`] – PID 1 of an isolated cell (shim code in the clone child, no exec);
//! * [`isolated`] – the shim's side of an isolated cell: the clone, the key, the exit report;
//! * [`oci_cell`] – the shim's side of an OCI cell: bundle, runtime, container start and end;
//! * [`supervise`](mod@supervise) – the loop after the handshake, and `exit.json`;
//! * [`signals`] – the signals the shim takes (signalfd) and sends;
//! * [`stack`] – the output buffer, and handing start-up's stack pages back to the kernel;
//! * [`failure`] – why a start failed, and the `err` line that says so.
//!
//! The children never import this module; it imports them.

mod cell_init;
mod exec;
mod failure;
mod isolated;
mod oci_cell;
mod signals;
mod stack;
mod supervise;

use crate::cell::{CellConfig, CellIsolation, CellUser, StartedCell};
use crate::cgroup::CellCgroups;
use crate::diag::{report, Chain};
use crate::durable::{read_json, write_json_atomic};
use crate::fence::FenceWatch;
use crate::logs::LogSink;
use crate::procfs::process_start_time;
use crate::sys;
use cell_init::InitCtx;
use exec::{exec_child, read_child_error, ChildOpts, Credentials, ExecPlan};
use exec::{
    STAGE_CAPS, STAGE_CGROUP, STAGE_CHDIR, STAGE_EXEC, STAGE_NO_NEW_PRIVS, STAGE_OK, STAGE_PDEATHSIG, STAGE_SETUID, STAGE_STDIO,
};
use failure::{RuntimeFailure, StartFailure};
use isolated::{init_wait_set, spawn_init, CellWatch};
use oci_cell::{undo_oci_start, wait_for_container, OciCell};
use signals::{block_handled_signals, open_signalfd};
use stack::{CopyBuf, COPY_BUF};
use std::fs::{File, OpenOptions};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use supervise::{supervise, Running};

/// Runs the shim for the cell in `cell_dir` and exits the process. Must be called from a
/// single-threaded process (e.g. first thing in `main`): it forks and blocks signals.
pub fn shim_main(cell_dir: &Path) -> ! {
    // The output buffer sits above start-up's deep frames, so while it stays unused its pages
    // are never touched. Left uninitialised: zeroing would dirty 8 KiB even for a silent
    // workload.
    let mut buf: CopyBuf = [MaybeUninit::<u8>::uninit(); COPY_BUF];
    match start(cell_dir) {
        Ok(running) => supervise(running, &mut buf),
        Err(failure) => {
            let line = failure.handshake_line();
            report(format_args!("{}", Chain(&failure)));
            // The supervisor may be gone; then nobody needs the line and EPIPE is fine.
            let _ = sys::write_all_fd(libc::STDOUT_FILENO, line.as_bytes());
            std::process::exit(1)
        }
    }
}

/// How a cell is run, as far as the shim's start-up is concerned.
enum Mode {
    Process,
    /// `userns`: the ids root inside the cell's user namespace maps to (a cell that is not
    /// root); `None`: no user namespace (a root cell).
    Cell {
        cell_id: Box<str>,
        network_none: bool,
        userns: Option<CellUser>,
    },
    Oci(OciCell),
}

/// Everything up to and including the handshake. Never inlined: its large frame must be gone
/// (not part of `shim_main`'s) while the shim runs for days.
#[inline(never)]
fn start(cell_dir: &Path) -> Result<Running, StartFailure> {
    // Own session: the supervisor's terminal and process group (Ctrl-C) never reach us.
    // EPERM just means the spawner already made us a session leader.
    let _ = sys::setsid();
    // Descriptors leaked by the supervisor (e.g. a listening socket without O_CLOEXEC) would
    // otherwise be pinned open for as long as this shim lives. None of them is ours yet. (Before
    // Linux 5.9 this fails, and the leak stays.)
    let _ = sys::close_from(3);

    let lock = take_lock(cell_dir)?;
    block_handled_signals().map_err(StartFailure::BlockSignals)?;

    if cell_dir.join("pid.json").exists() || cell_dir.join("exit.json").exists() {
        return Err(StartFailure::AlreadyStarted { cell_dir: cell_dir.to_path_buf() });
    }
    let config_path = cell_dir.join("config.json");
    let config: CellConfig = match read_json(&config_path) {
        Ok(Some(config)) => config,
        Ok(None) => return Err(StartFailure::ConfigMissing { path: config_path }),
        Err(source) => return Err(StartFailure::ReadConfig { path: config_path, source }),
    };
    // Who the workload runs as: the config's user (a config from before users: the shim's own).
    // SAFETY: geteuid/getegid take no arguments and cannot fail.
    let user = config.user.unwrap_or_else(|| unsafe { CellUser { uid: libc::geteuid(), gid: libc::getegid() } });
    let (mode, plan) = match &config.isolation {
        CellIsolation::Process => (
            Mode::Process,
            ExecPlan::new(&config, Credentials::workload(user.uid, user.gid).map_err(StartFailure::Plan)?)
                .map_err(StartFailure::Plan)?,
        ),
        CellIsolation::Cell { network_none } => {
            // A cell that is not root gets a user namespace whose root is its user outside: root
            // in the cell (mounts, hostname, its own PID 1), an unprivileged uid on the host. The
            // workload then runs as that namespace's root.
            let userns = (!user.is_root()).then_some(user);
            let inside = if userns.is_some() { CellUser::ROOT } else { user };
            let creds = Credentials::workload(inside.uid, inside.gid).map_err(StartFailure::Plan)?;
            (
                Mode::Cell { cell_id: config.cell_id.clone().into(), network_none: *network_none, userns },
                ExecPlan::new(&config, creds).map_err(StartFailure::Plan)?,
            )
        }
        CellIsolation::Oci { rootfs, runtime, network_none } => {
            let (oci, argv) = OciCell::prepare(cell_dir, &config, rootfs, *runtime, *network_none)?;
            // The runtime runs on the host: the cell's env and workdir are the container's (they
            // are in the bundle), and applied to the runtime they could subvert it (LD_PRELOAD).
            // The runtime itself stays root; the container's user is in the bundle.
            let runtime_config = CellConfig { argv, env: Default::default(), workdir: None, ..config.clone() };
            (Mode::Oci(oci), ExecPlan::new(&runtime_config, Credentials::UNCHANGED).map_err(StartFailure::Plan)?)
        }
    };
    let mut sink = LogSink::open(&config.log_path, config.log_max_size_bytes, config.log_max_files)
        .map_err(|source| StartFailure::OpenLog { path: config.log_path.clone(), source })?;
    // No lease, no cell: the lease is read (and the timer armed) before anything is started.
    let mut fence = match &config.fence {
        Some(f) => {
            let mut watch = FenceWatch::new(f.epoch).map_err(StartFailure::sys("timerfd"))?;
            watch.rearm(cell_dir).map_err(StartFailure::Fenced)?;
            Some(watch)
        }
        None => None,
    };
    let cgroups = match mode {
        // The runtime makes the container's cgroups (`warden/<cell_id>`) itself.
        Mode::Oci(_) => None,
        _ => CellCgroups::create(cell_dir, &config.cell_id, &config.limits).map_err(StartFailure::Cgroup)?,
    };
    drop(config);

    match launch(cell_dir, &plan, cgroups.as_ref(), mode, &mut sink, fence.as_mut()) {
        Ok(Launched { child, log_read, signal_fd, cell, oci }) => Ok(Running {
            cell_dir: cell_dir.to_path_buf(),
            child,
            log_read,
            signal_fd,
            sink,
            cgroups,
            cell,
            oci,
            fence,
            _lock: lock,
        }),
        Err(failure) => {
            // Whatever joined the cgroups (a half-started workload) goes with them.
            if let Some(cgroups) = &cgroups {
                cgroups.teardown(false);
            }
            Err(failure)
        }
    }
}

/// What `launch` hands to the supervision loop.
struct Launched {
    child: libc::pid_t,
    log_read: OwnedFd,
    signal_fd: OwnedFd,
    cell: Option<CellWatch>,
    oci: Option<OciCell>,
}

/// Starts the workload — directly, under a new init in new namespaces, or as an OCI runtime's
/// container — waits until it was exec'd (or the container runs), records `pid.json` and sends
/// the handshake. A fenced cell whose lease expired by then is undone instead.
fn launch(
    cell_dir: &Path,
    plan: &ExecPlan,
    cgroups: Option<&CellCgroups>,
    mode: Mode,
    sink: &mut LogSink,
    mut fence: Option<&mut FenceWatch>,
) -> Result<Launched, StartFailure> {
    let devnull = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/null")
        .map_err(StartFailure::sys("open /dev/null"))?;
    let (log_read, log_write) = sys::pipe(libc::O_CLOEXEC | libc::O_NONBLOCK).map_err(StartFailure::sys("log pipe"))?;
    // Only the read end is non-blocking; the workload's end must block like a normal pipe.
    sys::set_nonblocking(log_write.as_raw_fd(), false).map_err(StartFailure::sys("log pipe"))?;
    let (err_read, err_write) = sys::pipe(libc::O_CLOEXEC).map_err(StartFailure::sys("error pipe"))?;
    let signal_fd = open_signalfd().map_err(StartFailure::sys("signalfd"))?;
    let wait_set = init_wait_set().map_err(StartFailure::sys("the init's signal set"))?;
    let procs = match cgroups {
        Some(cgroups) => cgroups.open_procs().map_err(StartFailure::Cgroup)?,
        None => Vec::new(),
    };
    let procs: Vec<RawFd> = procs.into_iter().map(std::os::fd::IntoRawFd::into_raw_fd).collect();
    let close_procs = |procs: &[RawFd]| {
        for &fd in procs {
            // SAFETY: these descriptors were converted from OwnedFds above and are closed once.
            unsafe { libc::close(fd) };
        }
    };

    let isolated = matches!(mode, Mode::Cell { .. });
    let is_oci = matches!(mode, Mode::Oci(_));
    let spawned = match &mode {
        Mode::Process | Mode::Oci(_) => {
            // The runtime must not outlive the shim: without it nobody would record the end,
            // and a runtime still creating the container could finish after the supervisor
            // concluded that the cell never started.
            // A fenced workload must not outlive the shim either: the shim's timer is its fence.
            // (Only the process itself gets the signal; a dead shim also leaves its cgroup to
            // the supervisor's teardown.)
            let parent_death = if is_oci || fence.is_some() { std::process::id() as libc::pid_t } else { 0 };
            // SAFETY: the shim is single-threaded (see `shim_main`), so the child may run any
            // code; it still only uses async-signal-safe calls on data prepared above.
            let child = unsafe { libc::fork() };
            if child < 0 {
                Err(StartFailure::Sys { step: "fork", source: io::Error::last_os_error() })
            } else if child == 0 {
                let opts = ChildOpts { cgroup_procs: &procs, drop_ptrace: false, parent_death };
                // SAFETY: we are the freshly forked child; `exec_child` never returns.
                unsafe { exec_child(plan, devnull.as_raw_fd(), log_write.as_raw_fd(), err_write.as_raw_fd(), &opts) }
            } else {
                Ok((child, None))
            }
        }
        Mode::Cell { cell_id, network_none, userns } => {
            let ctx = InitCtx {
                plan,
                devnull: devnull.as_raw_fd(),
                log_write: log_write.as_raw_fd(),
                err_write: err_write.as_raw_fd(),
                key_read: -1,
                report_write: -1,
                cgroup_procs: &procs,
                hostname: &[],
                cell_id: cell_id.as_bytes(),
                wait_set,
                userns: false,
            };
            spawn_init(ctx, cell_id, *network_none, *userns).map(|(init, watch)| (init, Some(watch)))
        }
    };
    close_procs(&procs);
    drop(log_write);
    drop(err_write);
    drop(devnull);
    let (child, cell) = spawned?;
    // Also done by the child itself; doing it here too closes the window in which a signal
    // forwarded to the group would miss a child that has not run yet. EACCES after exec is fine.
    let _ = sys::setpgid(child, child);

    let failure = match (read_child_error(err_read.as_raw_fd()), isolated) {
        (None, false) => None,
        (Some((STAGE_OK, _)), true) => None,
        (None, true) => Some(StartFailure::InitDied),
        (Some((stage, errno)), _) => Some(match stage_failure(plan, stage, errno) {
            // Not the workload: the runtime itself could not be run.
            StartFailure::Exec { program, source } if is_oci => StartFailure::Runtime(RuntimeFailure::Exec { program, source }),
            other => other,
        }),
    };
    if let Some(failure) = failure {
        if isolated {
            // The init exits by itself after reporting a failure; this only makes sure.
            let _ = sys::kill(child, libc::SIGKILL);
        }
        sys::reap_blocking(child);
        return Err(failure);
    }
    drop(err_read);

    let (pid, pid_start_time, oci) = match mode {
        Mode::Oci(mut oci) => match wait_for_container(cell_dir, child, &log_read, sink, &oci, fence.as_deref_mut()) {
            Ok((pid, start_time)) => {
                oci.pid = pid;
                oci.pid_start_time = start_time;
                (pid, start_time, Some(oci))
            }
            Err(failure) => {
                undo_oci_start(child, &oci);
                return Err(failure);
            }
        },
        // The child is exec'd (or, isolated, the init runs) and not reaped, so its /proc entry
        // is certainly ours to read.
        _ => (child as u32, process_start_time(child as u32).unwrap_or(0), None),
    };
    let shim_pid = std::process::id();
    let started = StartedCell { pid, pid_start_time, shim_pid, shim_start_time: process_start_time(shim_pid).unwrap_or(0) };
    // A lease that ran out while the cell was being started: no lease, no cell. Once recorded,
    // the cell is the loop's to fence.
    let failure = match fence.map(|f| f.check(cell_dir)) {
        Some(Err(why)) => Some(StartFailure::Fenced(why)),
        _ => write_json_atomic(cell_dir, "pid.json", &started)
            .err()
            .map(|source| StartFailure::WritePid { cell_dir: cell_dir.to_path_buf(), source }),
    };
    if let Some(failure) = failure {
        // Unrecorded, the workload could never be re-adopted: undo the start instead.
        match &oci {
            Some(oci) => undo_oci_start(child, oci),
            None => {
                let _ = sys::kill(-child, libc::SIGKILL);
                sys::reap_blocking(child);
            }
        }
        return Err(failure);
    }

    let line = format!("ok {} {} {} {}\n", started.pid, started.pid_start_time, started.shim_pid, started.shim_start_time);
    let _ = sys::write_all_fd(libc::STDOUT_FILENO, line.as_bytes());
    // Drop the handshake pipe: stdout now goes nowhere, and the supervisor sees EOF.
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        // Atomically replaces fd 1; `null` itself is closed afterwards.
        let _ = sys::dup2(null.as_raw_fd(), libc::STDOUT_FILENO);
    }
    Ok(Launched { child, log_read, signal_fd, cell, oci })
}

/// What a `(stage, errno)` from the error pipe means.
fn stage_failure(plan: &ExecPlan, stage: i32, errno: i32) -> StartFailure {
    let source = io::Error::from_raw_os_error(errno);
    let step = match stage {
        STAGE_EXEC => return StartFailure::Exec { program: plan.program(), source },
        STAGE_CHDIR => return StartFailure::Chdir { workdir: plan.workdir_display(), source },
        STAGE_STDIO => "redirect workload stdio",
        STAGE_CGROUP => "join the cell's cgroup",
        STAGE_CAPS => "drop CAP_SYS_PTRACE from the workload's bounding set",
        STAGE_PDEATHSIG => "set the runtime's parent-death signal",
        STAGE_SETUID => return StartFailure::SwitchUser { ids: plan.target_ids(), source },
        STAGE_NO_NEW_PRIVS => "set no_new_privs",
        cell_init::STAGE_INIT_USER => "cell init: become root of the cell's user namespace",
        cell_init::STAGE_INIT_PRIVATE => "cell init: make mounts private",
        cell_init::STAGE_INIT_PROC => "cell init: mount /proc",
        cell_init::STAGE_INIT_HOSTNAME => "cell init: set the hostname",
        cell_init::STAGE_INIT_CGROUP => "cell init: join the cell's cgroup",
        cell_init::STAGE_INIT_KEY => "cell init: read the report key",
        cell_init::STAGE_INIT_FORK => "cell init: fork the workload",
        cell_init::STAGE_INIT_PRCTL => "cell init: prctl",
        _ => "start-up",
    };
    StartFailure::Child { step, source }
}

/// Takes the cell's `lock` for the shim's whole life, and checks that the file locked is still
/// the cell dir's `lock`: the supervisor renames abandoned cell dirs (while holding the lock),
/// and a shim that locked a file in a renamed dir must not start anything.
fn take_lock(cell_dir: &Path) -> Result<File, StartFailure> {
    let path = cell_dir.join("lock");
    let lock = OpenOptions::new().read(true).write(true).create(true).mode(0o644).custom_flags(libc::O_CLOEXEC).open(&path);
    let lock = match lock {
        Ok(lock) => lock,
        Err(source) => return Err(StartFailure::OpenLock { path, source }),
    };
    if let Err(source) = sys::lock_exclusive(&lock) {
        return Err(StartFailure::Lock { path, source });
    }
    let held = match lock.metadata() {
        Ok(held) => held,
        Err(source) => return Err(StartFailure::StatLock { path, source }),
    };
    match std::fs::metadata(&path) {
        Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => Ok(lock),
        _ => Err(StartFailure::Abandoned { cell_dir: cell_dir.to_path_buf() }),
    }
}
