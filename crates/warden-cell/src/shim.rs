//! The per-cell shim: the workload's parent (or, for `isolation = "cell"`, the parent of the
//! cell's init), which outlives the supervisor, copies the workload's output to its rotated log,
//! forwards stop signals, and records the true exit status durably in `exit.json`.
//!
//! The shim is single-threaded and keeps only a few small heap objects after start-up, so that
//! hundreds of them cost little memory. Its protocol with [`crate::ProcessBackend::start`] is one
//! line on stdout: `ok <pid> <pid_start_time> <shim_pid> <shim_start_time>`, `err exec <msg>`
//! (the workload could not be exec'd) or `err <msg>` (anything else).
//!
//! For an isolated cell, `<pid>` is the host pid of the cell's init (see [`crate::cell_init`]),
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

use crate::cell_init::{self, InitCtx};
use crate::cgroup::CellCgroups;
use crate::durable::{read_json, write_json_atomic};
use crate::exit_report::{self, Key, Outcome, MAX_REPORT};
use crate::fence::FenceWatch;
use crate::logs::LogSink;
use crate::oci::{self, OciError};
use crate::procfs::{is_alive, proc_stat, process_start_time};
use crate::sys::{self, cvt, path_cstring};
use crate::{CellConfig, CellIsolation, ExitStatus, OciRuntime, StartedCell, TerminalState};
use std::ffi::{CStr, CString};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Signals the shim handles through its signalfd; they stay blocked for the shim's whole life
/// so none of them can kill it, and any that arrive during start-up wait until the loop runs.
const HANDLED_SIGNALS: [libc::c_int; 6] =
    [libc::SIGCHLD, libc::SIGTERM, libc::SIGUSR2, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE];

/// Highest signal number on Linux (`_NSIG - 1`), real-time signals included.
const KERNEL_NSIG: libc::c_int = 64;

/// Size of the one buffer that carries workload output; lives on the stack.
const COPY_BUF: usize = 8 * 1024;

/// After the workload is reaped, at most this much already-buffered output is still copied;
/// a grandchild that keeps the pipe open and writing must not keep the shim alive.
const FINAL_DRAIN_LIMIT: usize = 1024 * 1024;

/// Once the report pipe closed (the init wrote its report or died), how long the shim waits
/// to reap the init before finishing without it. An exiting PID 1 waits until the kernel has
/// killed its whole namespace, which a process stuck in uninterruptible sleep can hold up.
const INIT_EXIT_GRACE: Duration = Duration::from_secs(5);

/// How long an OCI runtime may take to start a container. It creates namespaces, mounts and
/// cgroups, which takes well under a second; one that hangs must not hang the start.
pub(crate) const OCI_START_LIMIT: Duration = Duration::from_secs(30);

/// Once its container was sent SIGKILL, how long the OCI runtime gets to report the end before
/// the shim kills it and finishes without its status: a stuck runtime must not keep a cell that
/// is being force-stopped from ever ending. Generous, because killing a runtime that was just
/// about to exit would lose the container's real status.
const RUNTIME_EXIT_GRACE: Duration = Duration::from_secs(10);

/// How much of the runtime's last output is kept to explain a failed start.
const OCI_ERROR_TAIL: usize = 1024;

/// `CAP_SYS_PTRACE` from `<linux/capability.h>`; libc does not export capability numbers.
const CAP_SYS_PTRACE: libc::c_ulong = 19;

/// Where, in a forked child, setting up the workload failed; sent as `(stage, errno)` over the
/// error pipe. An isolated cell's init sends `STAGE_OK` once the workload was exec'd (a plain
/// workload's successful exec is an EOF instead), or one of [`crate::cell_init`]'s stages.
pub(crate) const STAGE_OK: i32 = 0;
const STAGE_STDIO: i32 = 1;
const STAGE_CHDIR: i32 = 2;
const STAGE_EXEC: i32 = 3;
const STAGE_CGROUP: i32 = 4;
const STAGE_CAPS: i32 = 5;
const STAGE_PDEATHSIG: i32 = 6;

/// Why the shim could not start the workload; becomes the `err` handshake line.
enum Failure {
    Exec(String),
    Setup(String),
    /// The OCI runtime is missing or refused to start the container.
    Runtime(String),
    /// A fenced cell's lease expired (or was not valid) before the workload was running.
    Fenced(String),
}

impl Failure {
    fn setup(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Failure {
        Failure::Setup(format!("{what}: {e}"))
    }
}

/// Writes a diagnostic to the shim's stderr (`shim.err`); never fails, never panics.
pub(crate) fn report(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "warden-shim[{}]: {args}", std::process::id());
}

/// Runs the shim for the cell in `cell_dir` and exits the process. Must be called from a
/// single-threaded process (e.g. first thing in `main`): it forks and blocks signals.
pub fn shim_main(cell_dir: &Path) -> ! {
    // The output buffer sits above start-up's deep frames, so while it stays unused its pages
    // are never touched. Left uninitialised: zeroing would dirty 8 KiB even for a silent
    // workload.
    let mut buf = [MaybeUninit::<u8>::uninit(); COPY_BUF];
    match start(cell_dir) {
        Ok(running) => supervise(running, &mut buf),
        Err(failure) => {
            let line = match &failure {
                Failure::Exec(msg) => format!("err exec {}\n", one_line(msg)),
                Failure::Setup(msg) => format!("err {}\n", one_line(msg)),
                Failure::Runtime(msg) => format!("err runtime {}\n", one_line(msg)),
                Failure::Fenced(msg) => format!("err fenced {}\n", one_line(msg)),
            };
            let (Failure::Exec(msg) | Failure::Setup(msg) | Failure::Runtime(msg) | Failure::Fenced(msg)) = &failure;
            report(format_args!("{msg}"));
            // The supervisor may be gone; then nobody needs the line and EPIPE is fine.
            let _ = sys::write_all_fd(libc::STDOUT_FILENO, line.as_bytes());
            std::process::exit(1)
        }
    }
}

fn one_line(msg: &str) -> String {
    msg.replace(['\n', '\r'], " ")
}

/// State the shim keeps after the workload was exec'd.
struct Running {
    cell_dir: PathBuf,
    /// The workload (process isolation) or the cell's init (cell isolation).
    child: libc::pid_t,
    log_read: OwnedFd,
    signal_fd: OwnedFd,
    sink: LogSink,
    cgroups: Option<CellCgroups>,
    /// Set for isolated cells only.
    cell: Option<CellWatch>,
    /// Set for OCI cells only; `child` is then the runtime.
    oci: Option<OciCell>,
    /// Set for fenced cells only.
    fence: Option<FenceWatch>,
    /// Held (never read) so the flock lasts until the process exits.
    _lock: File,
}

/// How a cell is run, as far as the shim's start-up is concerned.
enum Mode {
    Process,
    Cell { cell_id: Box<str>, network_none: bool },
    Oci(OciCell),
}

/// What the shim needs to run, signal and tear down an OCI cell's container.
struct OciCell {
    /// The runtime's executable, absolute.
    runtime: PathBuf,
    /// `runc` or `crun`, for messages.
    name: &'static str,
    state_root: PathBuf,
    id: Box<str>,
    /// The cell's id, which names its cgroups (`warden/<cell_id>`).
    cell_id: Box<str>,
    /// Where the runtime writes the container's PID 1 (`--pid-file`).
    pid_file: PathBuf,
    /// The container's PID 1 and its start time, once the runtime reported it.
    pid: u32,
    pid_start_time: u64,
    /// Set by a SIGKILL request: the runtime must have exited by then.
    exit_deadline: Option<Instant>,
}

impl OciCell {
    /// Resolves the runtime, writes `<cell_dir>/bundle` and returns the argv that runs it:
    /// [`oci::run_argv`] plus `--pid-file` (and `--keep` for runc).
    fn prepare(
        cell_dir: &Path,
        config: &CellConfig,
        rootfs: &Path,
        runtime: OciRuntime,
        network_none: bool,
    ) -> Result<(OciCell, Vec<String>), Failure> {
        let binary = oci::runtime_binary(runtime).map_err(|e| Failure::Runtime(e.to_string()))?;
        let cells_dir = cell_dir.parent().ok_or_else(|| Failure::Setup("the cell dir has no parent".into()))?;
        let state_root = oci::state_root(cells_dir);
        let bundle = cell_dir.join("bundle");
        oci::write_bundle(&bundle, config, rootfs, network_none).map_err(|e| Failure::setup("write the OCI bundle", e))?;
        let id = oci::container_id(&config.cell_id);
        let pid_file = cell_dir.join("container.pid");
        let mut argv = oci::run_argv(&binary, &state_root, &bundle, &id);
        // Options go between `run` and the container id, which run_argv puts last.
        let id_arg = argv.pop();
        argv.extend(["--pid-file".to_string(), pid_file.display().to_string()]);
        // `--keep`, so the container's cgroup (and its OOM count) outlives its exit until the
        // shim deletes it. runc only: crun 1.8 has no `run --keep` (and keeps no `state.json`
        // for `oom_kill_count` to read), so a crun cell's OOM kills go undetected.
        if runtime == OciRuntime::Runc {
            argv.push("--keep".into());
        }
        argv.extend(id_arg);
        let name = match runtime {
            OciRuntime::Runc => "runc",
            OciRuntime::Crun => "crun",
        };
        let cell = OciCell {
            runtime: binary,
            name,
            state_root,
            id: id.into(),
            cell_id: config.cell_id.as_str().into(),
            pid_file,
            pid: 0,
            pid_start_time: 0,
            exit_deadline: None,
        };
        Ok((cell, argv))
    }

    /// Forwards a stop request: `kill TERM` or `kill KILL` through the runtime.
    fn signal(&mut self, kill: bool) {
        if kill {
            self.exit_deadline.get_or_insert(Instant::now() + RUNTIME_EXIT_GRACE);
        }
        match oci::kill(&self.runtime, &self.state_root, &self.id, if kill { "KILL" } else { "TERM" }) {
            // Already over: the runtime's exit is on its way.
            Ok(()) | Err(OciError::NoSuchContainer(_) | OciError::NotRunning(_)) => {}
            Err(e) => {
                report(format_args!("{e}"));
                // A runtime that cannot deliver SIGKILL must not keep the cell alive: from the
                // host SIGKILL always reaches a namespace's PID 1, and its death ends the
                // container.
                if kill && is_alive(self.pid, self.pid_start_time) {
                    send(self.pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
    }

    /// The fence's kill: SIGKILL straight to the container's PID 1, whose death ends every
    /// process in the container — at once, where `runc kill` would first have to start a
    /// runtime. A pidfd opened before the start time is checked makes sure it hits that very
    /// process and not one that recycled its pid. Falls back to [`OciCell::signal`] when PID 1
    /// cannot be identified (e.g. it was already gone when the start was recorded).
    fn kill_now(&mut self) {
        let direct = self.pid_start_time != 0
            && sys::pidfd_open(self.pid).is_ok_and(|pidfd| {
                process_start_time(self.pid) == Some(self.pid_start_time) && sys::pidfd_send_signal(&pidfd, libc::SIGKILL).is_ok()
            });
        if direct {
            self.exit_deadline.get_or_insert(Instant::now() + RUNTIME_EXIT_GRACE);
        } else {
            self.signal(true);
        }
    }

    /// `delete --force`: whatever still runs in the container, its cgroups and its state go.
    fn delete(&self) -> Result<(), OciError> {
        oci::delete(&self.runtime, &self.state_root, &self.id)
    }

    /// The cell's end from the runtime's wait status. The code is kept as the runtime reports
    /// it — 128 + n for a PID 1 killed by signal n, as Docker shows it — because a container
    /// that ran `exit 137` looks the same; `detail` gives the signal reading.
    fn outcome(&self, status: Option<libc::c_int>) -> (Option<i32>, Option<String>) {
        match status {
            Some(s) if libc::WIFEXITED(s) => {
                let code = libc::WEXITSTATUS(s);
                let detail = (code > 128 && code - 128 <= KERNEL_NSIG).then(|| {
                    format!(
                        "{} reported exit status {code} = 128 + {n}: the container's PID 1 was killed by {} \
                         (or exited with {code} itself; the runtime reports both alike)",
                        self.name,
                        signal_name(code - 128),
                        n = code - 128,
                    )
                });
                (Some(code), detail)
            }
            Some(s) if libc::WIFSIGNALED(s) => (
                None,
                Some(format!(
                    "{} itself was killed by {}; the container's exit status is unknown",
                    self.name,
                    signal_name(libc::WTERMSIG(s))
                )),
            ),
            _ => (
                None,
                Some(format!(
                    "{} did not exit after its container was killed; the container's exit status is unknown",
                    self.name
                )),
            ),
        }
    }
}

/// `SIGKILL` for 9 and so on, for messages.
fn signal_name(signal: libc::c_int) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

/// What the shim keeps to judge an isolated cell's end.
struct CellWatch {
    key: Key,
    cell_id: Box<str>,
    /// Non-blocking read end; only the init ever held the write end.
    report_read: OwnedFd,
    report: [u8; MAX_REPORT],
    report_len: usize,
    /// More bytes arrived than a report can have: whatever it is, it is not a report.
    overflow: bool,
    /// The supervisor asked for SIGKILL, so an init dead of SIGKILL was killed on purpose.
    kill_requested: bool,
}

/// Everything up to and including the handshake. Never inlined: its large frame must be gone
/// (not part of `shim_main`'s) while the shim runs for days.
#[inline(never)]
fn start(cell_dir: &Path) -> Result<Running, Failure> {
    // Own session: the supervisor's terminal and process group (Ctrl-C) never reach us.
    // EPERM just means the spawner already made us a session leader.
    // SAFETY: setsid takes no arguments and only changes this process's session.
    unsafe { libc::setsid() };
    // Descriptors leaked by the supervisor (e.g. a listening socket without O_CLOEXEC) would
    // otherwise be pinned open for as long as this shim lives.
    // SAFETY: close_range only closes descriptors >= 3; this function owns none yet.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };

    let lock = take_lock(cell_dir)?;
    block_signals().map_err(|e| Failure::setup("block signals", e))?;

    if cell_dir.join("pid.json").exists() || cell_dir.join("exit.json").exists() {
        // Another shim already ran this cell: starting it again would run it twice.
        return Err(Failure::Setup(format!("cell {} was already started", cell_dir.display())));
    }
    let config: CellConfig = read_json(&cell_dir.join("config.json"))
        .map_err(|e| Failure::setup("read config.json", e))?
        .ok_or_else(|| Failure::Setup("config.json missing".into()))?;
    let (mode, plan) = match &config.isolation {
        CellIsolation::Process => (Mode::Process, ExecPlan::new(&config)?),
        CellIsolation::Cell { network_none } => {
            (Mode::Cell { cell_id: config.cell_id.clone().into(), network_none: *network_none }, ExecPlan::new(&config)?)
        }
        CellIsolation::Oci { rootfs, runtime, network_none } => {
            let (oci, argv) = OciCell::prepare(cell_dir, &config, rootfs, *runtime, *network_none)?;
            // The runtime runs on the host: the cell's env and workdir are the container's (they
            // are in the bundle), and applied to the runtime they could subvert it (LD_PRELOAD).
            let runtime_config = CellConfig { argv, env: Default::default(), workdir: None, ..config.clone() };
            (Mode::Oci(oci), ExecPlan::new(&runtime_config)?)
        }
    };
    let mut sink = LogSink::open(&config.log_path, config.log_max_size_bytes, config.log_max_files)
        .map_err(|e| Failure::setup(format_args!("open log {}", config.log_path.display()), e))?;
    // No lease, no cell: the lease is read (and the timer armed) before anything is started.
    let mut fence = match &config.fence {
        Some(f) => {
            let mut watch = FenceWatch::new(f.epoch).map_err(|e| Failure::setup("timerfd", e))?;
            watch.rearm(cell_dir).map_err(Failure::Fenced)?;
            Some(watch)
        }
        None => None,
    };
    let cgroups = match mode {
        // The runtime makes the container's cgroups (`warden/<cell_id>`) itself.
        Mode::Oci(_) => None,
        _ => CellCgroups::create(cell_dir, &config.cell_id, &config.limits).map_err(|e| Failure::setup("cgroup", e))?,
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
) -> Result<Launched, Failure> {
    let devnull = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/null")
        .map_err(|e| Failure::setup("open /dev/null", e))?;
    let (log_read, log_write) = sys::pipe(libc::O_CLOEXEC | libc::O_NONBLOCK).map_err(|e| Failure::setup("log pipe", e))?;
    // Only the read end is non-blocking; the workload's end must block like a normal pipe.
    clear_nonblock(&log_write).map_err(|e| Failure::setup("log pipe", e))?;
    let (err_read, err_write) = sys::pipe(libc::O_CLOEXEC).map_err(|e| Failure::setup("error pipe", e))?;
    let signal_fd = open_signalfd().map_err(|e| Failure::setup("signalfd", e))?;
    let procs = match cgroups {
        Some(cgroups) => cgroups.open_procs().map_err(|e| Failure::setup("cgroup", e))?,
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
                Err(Failure::setup("fork", io::Error::last_os_error()))
            } else if child == 0 {
                let opts = ChildOpts { cgroup_procs: &procs, drop_ptrace: false, parent_death };
                // SAFETY: we are the freshly forked child; `exec_child` never returns.
                unsafe { exec_child(plan, devnull.as_raw_fd(), log_write.as_raw_fd(), err_write.as_raw_fd(), &opts) }
            } else {
                Ok((child, None))
            }
        }
        Mode::Cell { cell_id, network_none } => {
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
                wait_set: init_wait_set(),
            };
            spawn_init(ctx, cell_id, *network_none).map(|(init, watch)| (init, Some(watch)))
        }
    };
    close_procs(&procs);
    drop(log_write);
    drop(err_write);
    drop(devnull);
    let (child, cell) = spawned?;
    // Also done by the child itself; doing it here too closes the window in which a signal
    // forwarded to the group would miss a child that has not run yet. EACCES after exec is fine.
    // SAFETY: setpgid takes plain integers.
    unsafe { libc::setpgid(child, child) };

    let failure = match (read_child_error(err_read.as_raw_fd()), isolated) {
        (None, false) => None,
        (Some((STAGE_OK, _)), true) => None,
        (None, true) => Some(Failure::Setup("the cell's init died during start-up".into())),
        (Some((stage, errno)), _) => Some(match stage_failure(plan, stage, errno) {
            // Not the workload: the runtime itself could not be run.
            Failure::Exec(msg) if is_oci => Failure::Runtime(format!("cannot run {msg}")),
            other => other,
        }),
    };
    if let Some(failure) = failure {
        if isolated {
            // The init exits by itself after reporting a failure; this only makes sure.
            let _ = sys::kill(child, libc::SIGKILL);
        }
        reap_blocking(child);
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
        Some(Err(why)) => Some(Failure::Fenced(why)),
        _ => write_json_atomic(cell_dir, "pid.json", &started).err().map(|e| Failure::setup("write pid.json", e)),
    };
    if let Some(failure) = failure {
        // Unrecorded, the workload could never be re-adopted: undo the start instead.
        match &oci {
            Some(oci) => undo_oci_start(child, oci),
            None => {
                let _ = sys::kill(-child, libc::SIGKILL);
                reap_blocking(child);
            }
        }
        return Err(failure);
    }

    let line = format!("ok {} {} {} {}\n", started.pid, started.pid_start_time, started.shim_pid, started.shim_start_time);
    let _ = sys::write_all_fd(libc::STDOUT_FILENO, line.as_bytes());
    // Drop the handshake pipe: stdout now goes nowhere, and the supervisor sees EOF.
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        // SAFETY: dup2 onto fd 1 atomically replaces it; `null` is closed afterwards.
        unsafe { libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO) };
    }
    Ok(Launched { child, log_read, signal_fd, cell, oci })
}

/// Waits until the runtime has started the container; returns its PID 1 and that process's
/// start time. Copies the runtime's output (and the container's first output) to the log
/// meanwhile, and keeps its tail to explain a failed start in the runtime's own words. A fenced
/// cell's start fails as soon as its lease expires.
fn wait_for_container(
    cell_dir: &Path,
    runtime: libc::pid_t,
    log_read: &OwnedFd,
    sink: &mut LogSink,
    oci: &OciCell,
    mut fence: Option<&mut FenceWatch>,
) -> Result<(u32, u64), Failure> {
    let deadline = Instant::now() + OCI_START_LIMIT;
    let mut tail = Vec::new();
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(Err(why)) = fence.as_deref_mut().map(|f| f.check(cell_dir)) {
            return Err(Failure::Fenced(why));
        }
        // Looked at before the pid file, so that a pid file read after the runtime ended is
        // complete. WNOWAIT: the supervision loop reaps it, and learns its status then.
        let ended = peek_exit(runtime);
        match read_pid_file(&oci.pid_file) {
            Some(pid) => match descendant_start_time(pid, runtime as u32) {
                Some(start_time) => return Ok((pid, start_time)),
                // Already gone: it did run, but its identity can no longer be checked.
                None if ended.is_some() => return Ok((pid, 0)),
                None => {}
            },
            // The runtime gave up before the container ran: a failed start, in its own words.
            None => {
                if let Some(status) = ended {
                    copy_start_output(log_read, sink, &mut tail);
                    return Err(Failure::Runtime(format!(
                        "{} {} before the container ran: {}",
                        oci.name,
                        describe_status(status),
                        runtime_words(&tail)
                    )));
                }
            }
        }
        if Instant::now() >= deadline {
            copy_start_output(log_read, sink, &mut tail);
            return Err(Failure::Runtime(format!(
                "{} did not start the container within {OCI_START_LIMIT:?}: {}",
                oci.name,
                runtime_words(&tail)
            )));
        }
        let mut pfd = libc::pollfd { fd: log_read.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd. Its result only decides whether to read; errors are moot.
        let ready = unsafe { libc::poll(&mut pfd, 1, pause.as_millis() as libc::c_int) } > 0;
        if ready && !copy_start_output(log_read, sink, &mut tail) {
            // At EOF the pipe stays "readable": wait out the pause instead of spinning.
            std::thread::sleep(pause);
        }
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// The start failed after the runtime ran: it goes (with anything of its own process group,
/// e.g. a half-started `runc init`), then whatever it created of the container — also the
/// cgroups of a container it was killed too early to record.
fn undo_oci_start(runtime: libc::pid_t, oci: &OciCell) {
    let _ = sys::kill(-runtime, libc::SIGKILL);
    reap_blocking(runtime);
    if let Err(e) = oci.delete() {
        report(format_args!("after a failed start: {e}"));
    }
    crate::cgroup::remove_runtime_leftovers(&oci.cell_id);
}

/// The runtime's exit, if it has exited, without reaping it: `(si_code, si_status)`.
fn peek_exit(child: libc::pid_t) -> Option<(libc::c_int, libc::c_int)> {
    // SAFETY: an all-zero siginfo_t is a valid value; waitid writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: `info` is a valid, writable siginfo_t.
    let ret = unsafe { libc::waitid(libc::P_PID, child as libc::id_t, &mut info, flags) };
    // SAFETY: after a successful waitid these union fields are the ones the kernel filled in.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    (ret == 0 && pid != 0).then_some((info.si_code, status))
}

fn describe_status((code, status): (libc::c_int, libc::c_int)) -> String {
    match code {
        libc::CLD_EXITED => format!("exited with status {status}"),
        _ => format!("was killed by {}", signal_name(status)),
    }
}

/// The container's PID 1 from the runtime's `--pid-file`, once it is there.
fn read_pid_file(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok().filter(|&pid| pid > 0)
}

/// The start time of `pid` if it descends from `runtime`: proof that the pid the runtime wrote
/// is the container's and not a recycled one, since the runtime is not reaped yet (so its pid
/// is not reused either) and only the container descends from it. runc and crun start the
/// container's PID 1 as their own child (or re-parent it to themselves as subreapers); a few
/// hops cover an intermediate process that has not exited yet. A zombie counts: its pid is not
/// free yet.
fn descendant_start_time(pid: u32, runtime: u32) -> Option<u64> {
    let stat = proc_stat(pid)?;
    let mut parent = stat.ppid;
    for _ in 0..4 {
        if parent == runtime {
            return Some(stat.start_time);
        }
        parent = proc_stat(parent)?.ppid;
    }
    None
}

/// Copies what the log pipe holds to the log, keeping the last [`OCI_ERROR_TAIL`] bytes; false
/// at EOF.
fn copy_start_output(log_read: &OwnedFd, sink: &mut LogSink, tail: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    // Bounded: a container that already runs may write without pause.
    for _ in 0..64 {
        match sys::read_fd(log_read.as_raw_fd(), &mut buf) {
            Ok(0) => return false,
            Err(e) => return e.kind() == io::ErrorKind::WouldBlock,
            Ok(n) => {
                sink.write(&buf[..n]);
                tail.extend_from_slice(&buf[..n]);
                let excess = tail.len().saturating_sub(OCI_ERROR_TAIL);
                tail.drain(..excess);
            }
        }
    }
    true
}

/// The runtime's last output as one line, for a start error.
fn runtime_words(tail: &[u8]) -> String {
    let text = String::from_utf8_lossy(tail);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.is_empty() {
        "(it said nothing)".into()
    } else {
        lines.join(" / ")
    }
}

/// The signals the cell's init waits for; everything else stays deliverable (and, for PID 1,
/// is dropped by the kernel unless it comes from the host and is SIGKILL or SIGSTOP).
fn init_wait_set() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset only gets valid signal numbers.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2] {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        set.assume_init()
    }
}

/// Clones the cell's init into new namespaces and hands it the report key.
///
/// The key is generated only *after* the clone and reaches the init solely through the key
/// pipe, which the init reads once it is no longer dumpable and then closes: the key is never
/// in argv, the environment, a file, or the memory the workload is forked from before that.
fn spawn_init<'a>(mut ctx: InitCtx<'a>, cell_id: &'a str, network_none: bool) -> Result<(libc::pid_t, CellWatch), Failure> {
    let (key_read, key_write) = sys::pipe(libc::O_CLOEXEC).map_err(|e| Failure::setup("key pipe", e))?;
    let (report_read, report_write) =
        sys::pipe(libc::O_CLOEXEC | libc::O_NONBLOCK).map_err(|e| Failure::setup("report pipe", e))?;
    clear_nonblock(&report_write).map_err(|e| Failure::setup("report pipe", e))?;
    ctx.key_read = key_read.as_raw_fd();
    ctx.report_write = report_write.as_raw_fd();
    // HOST_NAME_MAX is 64; the cell id is at most 255 bytes (a file name).
    ctx.hostname = &cell_id.as_bytes()[..cell_id.len().min(64)];

    let mut flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if network_none {
        // A new network namespace holds nothing but a loopback interface, and that one down.
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: the shim is single-threaded; the child runs only `init_main`, which never returns.
    let init = unsafe { sys::clone_fork(flags as libc::c_ulong | libc::SIGCHLD as libc::c_ulong) }
        .map_err(|e| Failure::setup("clone the cell's init", e))?;
    if init == 0 {
        // SAFETY: we are the clone child; `ctx` was fully built before the clone.
        unsafe { cell_init::init_main(&ctx) }
    }
    drop(key_read);
    drop(report_write);
    // Not dumpable either: the shim holds the key for the cell's whole life.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let key = match exit_report::new_key() {
        Ok(key) => key,
        Err(e) => {
            let _ = sys::kill(init, libc::SIGKILL);
            reap_blocking(init);
            return Err(Failure::setup("getrandom", e));
        }
    };
    // EPIPE (the init died) surfaces as the init's silence on the error pipe.
    let _ = sys::write_all_fd(key_write.as_raw_fd(), &key);
    drop(key_write);
    let watch = CellWatch {
        key,
        cell_id: cell_id.into(),
        report_read,
        report: [0; MAX_REPORT],
        report_len: 0,
        overflow: false,
        kill_requested: false,
    };
    Ok((init, watch))
}

fn stage_failure(plan: &ExecPlan, stage: i32, errno: i32) -> Failure {
    let err = io::Error::from_raw_os_error(errno);
    let what = match stage {
        STAGE_EXEC => return Failure::Exec(format!("{}: {err}", plan.program())),
        STAGE_CHDIR => return Failure::Exec(format!("chdir {}: {err}", plan.workdir_display())),
        STAGE_STDIO => "redirect workload stdio",
        STAGE_CGROUP => "join the cell's cgroup",
        STAGE_CAPS => "drop CAP_SYS_PTRACE from the workload's bounding set",
        STAGE_PDEATHSIG => "set the runtime's parent-death signal",
        cell_init::STAGE_INIT_PRIVATE => "cell init: make mounts private",
        cell_init::STAGE_INIT_PROC => "cell init: mount /proc",
        cell_init::STAGE_INIT_HOSTNAME => "cell init: set the hostname",
        cell_init::STAGE_INIT_CGROUP => "cell init: join the cell's cgroup",
        cell_init::STAGE_INIT_KEY => "cell init: read the report key",
        cell_init::STAGE_INIT_FORK => "cell init: fork the workload",
        cell_init::STAGE_INIT_PRCTL => "cell init: prctl",
        _ => "start-up",
    };
    Failure::setup(what, err)
}

/// supervisor renames abandoned cell dirs (while holding the lock), and a shim that locked a
/// file in a renamed dir must not start anything.
fn take_lock(cell_dir: &Path) -> Result<File, Failure> {
    let path = cell_dir.join("lock");
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| Failure::setup(format_args!("open {}", path.display()), e))?;
    sys::lock_exclusive(&lock).map_err(|e| Failure::setup("flock lock", e))?;
    let held = lock.metadata().map_err(|e| Failure::setup("stat lock", e))?;
    match std::fs::metadata(&path) {
        Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => Ok(lock),
        _ => Err(Failure::Setup(format!("cell dir {} was abandoned by the supervisor", cell_dir.display()))),
    }
}

fn signal_set() -> io::Result<libc::sigset_t> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset only gets valid signal numbers.
    unsafe {
        cvt(libc::sigemptyset(set.as_mut_ptr()))?;
        for sig in HANDLED_SIGNALS {
            cvt(libc::sigaddset(set.as_mut_ptr(), sig))?;
        }
        Ok(set.assume_init())
    }
}

fn block_signals() -> io::Result<()> {
    let set = signal_set()?;
    // SAFETY: `set` is an initialised sigset; the old mask is not needed.
    let ret = unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    cvt(ret).map(drop)
}

fn open_signalfd() -> io::Result<OwnedFd> {
    let set = signal_set()?;
    // SAFETY: -1 asks for a new signalfd; `set` is initialised.
    let fd = cvt(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: freshly created descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn clear_nonblock(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on an open descriptor with integer arguments.
    unsafe {
        let flags = cvt(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        cvt(libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK))?;
    }
    Ok(())
}

/// Everything `exec_child` needs, allocated before `fork` so the child allocates nothing.
pub(crate) struct ExecPlan {
    argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    /// Owns the strings `envp_ptrs` points into.
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    workdir: Option<CString>,
    empty_mask: libc::sigset_t,
}

impl ExecPlan {
    fn new(config: &CellConfig) -> Result<ExecPlan, Failure> {
        if config.argv.is_empty() {
            return Err(Failure::Setup("argv is empty".into()));
        }
        let argv = config
            .argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Failure::Setup("argv contains a NUL byte".into()))?;

        // The cell's own variables, then the shim's (i.e. the supervisor's) environment minus
        // whatever the cell overrides. Inherited entries are used in place: copying them
        // would fragment the heap for the shim's whole life.
        let own = [("WARDEN_CELL_ID", config.cell_id.as_str()), ("WARDEN_WORKLOAD_ID", config.workload_id.as_str())];
        let overrides =
            config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).filter(|(k, _)| !own.iter().any(|(o, _)| o == k)).chain(own);
        let envp = overrides
            .map(|(k, v)| CString::new(format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Failure::Setup("environment contains a NUL byte".into()))?;
        let overridden = |entry: &[u8]| {
            let key = entry.split(|&b| b == b'=').next().unwrap_or_default();
            std::str::from_utf8(key).is_ok_and(|k| config.env.contains_key(k) || own.iter().any(|(o, _)| *o == k))
        };
        let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
        // SAFETY: the shim is single-threaded and never changes its environment, so `environ`
        // is a stable NULL-terminated array of C strings that lives as long as the process.
        unsafe {
            let mut entry = environ;
            while !entry.is_null() && !(*entry).is_null() {
                if !overridden(CStr::from_ptr(*entry).to_bytes()) {
                    envp_ptrs.push(*entry);
                }
                entry = entry.add(1);
            }
        }
        envp_ptrs.push(std::ptr::null());

        let workdir = match &config.workdir {
            Some(dir) => Some(path_cstring(dir).map_err(|e| Failure::setup("workdir", e))?),
            None => None,
        };
        let argv_ptrs = argv.iter().map(|c| c.as_ptr()).chain([std::ptr::null()]).collect();
        let mut empty_mask = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset fully initialises the set.
        let empty_mask = unsafe {
            libc::sigemptyset(empty_mask.as_mut_ptr());
            empty_mask.assume_init()
        };
        Ok(ExecPlan { argv, argv_ptrs, _envp: envp, envp_ptrs, workdir, empty_mask })
    }

    fn program(&self) -> String {
        self.argv[0].to_string_lossy().into_owned()
    }

    fn workdir_display(&self) -> String {
        self.workdir.as_ref().map(|w| w.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

extern "C" {
    /// The C library's environment; `execvp` both searches `PATH` in it and passes it on.
    static mut environ: *const *const libc::c_char;
}

/// What differs between a plain workload and an isolated cell's workload in the forked child.
pub(crate) struct ChildOpts<'a> {
    /// `cgroup.procs` of the cell's cgroups, joined right before exec (isolated cells join
    /// through their init instead, which the workload then inherits).
    pub cgroup_procs: &'a [RawFd],
    /// Drop CAP_SYS_PTRACE from the bounding set, so the exec'd workload can never hold it and
    /// thus never read its init's memory (where the report key lives).
    pub drop_ptrace: bool,
    /// If not 0, the shim's pid: the child gets SIGKILL when the shim dies (an OCI runtime).
    pub parent_death: libc::pid_t,
}

/// The forked child: becomes the workload. Only async-signal-safe calls on pre-built data.
///
/// # Safety
/// Must only be called in the child right after `fork`; `plan` must outlive the call.
pub(crate) unsafe fn exec_child(plan: &ExecPlan, devnull: RawFd, log_write: RawFd, err_write: RawFd, opts: &ChildOpts<'_>) -> ! {
    // SAFETY (whole body): every call below is async-signal-safe and only touches memory
    // allocated before fork; descriptors are open in this process.
    unsafe {
        for &fd in opts.cgroup_procs {
            // "0" moves the writing process itself.
            if libc::write(fd, b"0".as_ptr().cast(), 1) < 0 {
                child_fail(err_write, STAGE_CGROUP);
            }
        }
        // Own process group, so a stop signal reaches the workload and all its descendants.
        libc::setpgid(0, 0);
        // Ignored signals survive exec (Rust ignores SIGPIPE; the shim blocks several): the
        // workload must start with a pristine signal state.
        for sig in 1..=KERNEL_NSIG {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        libc::sigprocmask(libc::SIG_SETMASK, &plan.empty_mask, std::ptr::null_mut());
        if opts.parent_death != 0 {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) < 0 {
                child_fail(err_write, STAGE_PDEATHSIG);
            }
            // The shim died before the prctl: nothing would ever end us now.
            if libc::getppid() != opts.parent_death {
                libc::_exit(127);
            }
        }
        if opts.drop_ptrace && libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0) < 0 {
            child_fail(err_write, STAGE_CAPS);
        }

        if libc::dup2(devnull, libc::STDIN_FILENO) < 0
            || libc::dup2(log_write, libc::STDOUT_FILENO) < 0
            || libc::dup2(log_write, libc::STDERR_FILENO) < 0
        {
            child_fail(err_write, STAGE_STDIO);
        }
        if let Some(dir) = &plan.workdir {
            if libc::chdir(dir.as_ptr()) < 0 {
                child_fail(err_write, STAGE_CHDIR);
            }
        }
        // Every descriptor >= 3 is opened close-on-exec already; this makes sure of it, so the
        // workload starts with exactly stdin, stdout and stderr (Linux 5.11+; else a no-op).
        libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC);
        // Assigning `environ` (rather than execvpe) makes the PATH lookup honour the cell's env.
        std::ptr::addr_of_mut!(environ).write(plan.envp_ptrs.as_ptr());
        libc::execvp(plan.argv_ptrs[0], plan.argv_ptrs.as_ptr());
        child_fail(err_write, STAGE_EXEC)
    }
}

/// Sends (stage, errno) to the parent and exits without running any Rust/atexit cleanup.
///
/// # Safety
/// Only for the forked child.
unsafe fn child_fail(err_write: RawFd, stage: i32) -> ! {
    // SAFETY: errno location is thread-local and always valid; write/_exit are async-signal-safe.
    unsafe {
        let errno = *libc::__errno_location();
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&stage.to_ne_bytes());
        msg[4..].copy_from_slice(&errno.to_ne_bytes());
        libc::write(err_write, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// Reads one `(stage, errno)` message from the error pipe, or EOF: EOF with no message means
/// the child exec'd (close-on-exec closed its end) — or, for an init, that it died.
/// Allocation-free: the cell's init uses it too.
pub(crate) fn read_child_error(err_read: RawFd) -> Option<(i32, i32)> {
    let mut msg = [0u8; 8];
    let mut got = 0;
    while got < msg.len() {
        match sys::read_fd(err_read, &mut msg[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Some((STAGE_EXEC, e.raw_os_error().unwrap_or(libc::EIO))),
        }
    }
    if got == 0 {
        return None;
    }
    let stage = i32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]);
    let errno = i32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]);
    Some((stage, errno))
}

fn reap_blocking(child: libc::pid_t) {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into a valid local.
        let ret = unsafe { libc::waitpid(child, &mut status, 0) };
        if ret >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// The shim's life after the handshake: copy output, forward signals, wait for the child (and,
/// for an isolated cell, collect the init's exit report as soon as it is written).
fn supervise(mut run: Running, buf: &mut [MaybeUninit<u8>; COPY_BUF]) -> ! {
    release_startup_stack(buf);
    // Start-up allocations (config, env, argv) are gone; give their pages back to the kernel.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }

    let report_fd = run.cell.as_ref().map_or(-1, |c| c.report_read.as_raw_fd());
    let fence_fd = run.fence.as_ref().map_or(-1, FenceWatch::fd);
    let mut fds = [
        libc::pollfd { fd: run.log_read.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: run.signal_fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        // Ignored by poll while negative (process isolation, or once the pipe closed).
        libc::pollfd { fd: report_fd, events: libc::POLLIN, revents: 0 },
        // The lease's deadline timer; negative for an unfenced cell, and once the fence fired.
        libc::pollfd { fd: fence_fd, events: libc::POLLIN, revents: 0 },
    ];
    // Set once the report pipe closed: by then the init is exiting, and is not waited for forever.
    let mut init_deadline: Option<Instant> = None;
    loop {
        // Likewise an OCI runtime once its container was killed.
        if let Some(d) = run.oci.as_ref().and_then(|o| o.exit_deadline) {
            init_deadline = Some(init_deadline.map_or(d, |x| x.min(d)));
        }
        let timeout = init_deadline
            .map_or(-1, |d| d.saturating_duration_since(Instant::now()).as_millis().min(i32::MAX as u128) as libc::c_int);
        // SAFETY: `fds` is a valid array of pollfds.
        let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                report(format_args!("poll: {e}"));
                // Not fatal: back off instead of spinning.
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            continue;
        }
        if fds[0].revents != 0 && !copy_output(&mut run, buf, 16) {
            // EOF: every writer (workload and descendants) closed the pipe; stop polling it.
            fds[0].fd = -1;
        }
        if fds[2].revents != 0 && !run.cell.as_mut().is_some_and(CellWatch::read_report) {
            fds[2].fd = -1;
            init_deadline = Some(Instant::now() + INIT_EXIT_GRACE);
        }
        if fds[1].revents != 0 && handle_signals(&mut run) {
            let mut status = 0;
            // SAFETY: waitpid writes the status into a valid local.
            let ret = unsafe { libc::waitpid(run.child, &mut status, libc::WNOHANG) };
            if ret == run.child {
                finish(&mut run, buf, fds[0].fd >= 0, Some(status));
            }
        }
        // After the child's end was looked at: a cell that already ended was not fenced.
        if fds[3].revents != 0 {
            let expired = run.fence.as_mut().and_then(|f| f.rearm(&run.cell_dir).err());
            if let Some(why) = expired {
                fds[3].fd = -1;
                fence_kill(&mut run, &why);
            }
        }
        if init_deadline.is_some_and(|d| Instant::now() >= d) {
            match &run.oci {
                Some(oci) => {
                    report(format_args!("{} did not exit within {RUNTIME_EXIT_GRACE:?} of a SIGKILL to its container", oci.name))
                }
                None => {
                    report(format_args!("the cell's init did not exit within {INIT_EXIT_GRACE:?} of closing its report pipe"))
                }
            }
            send(run.child, libc::SIGKILL);
            finish(&mut run, buf, fds[0].fd >= 0, None);
        }
    }
}

impl CellWatch {
    /// Reads whatever the report pipe holds, without blocking and into a bounded buffer;
    /// false once it is closed (EOF or error) or overflowed.
    fn read_report(&mut self) -> bool {
        loop {
            let Some(room) = self.report.get_mut(self.report_len..).filter(|r| !r.is_empty()) else {
                self.overflow = true;
                return false;
            };
            match sys::read_fd(self.report_read.as_raw_fd(), room) {
                Ok(0) => return false,
                Ok(n) => self.report_len += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) => {
                    report(format_args!("read report pipe: {e}"));
                    return false;
                }
            }
        }
    }

    /// The workload's authenticated outcome, or why there is none.
    fn verdict(&self, init_status: Option<libc::c_int>) -> Result<Outcome, String> {
        if self.report_len == 0 {
            let why = match init_status {
                None => "the cell's init did not exit".to_string(),
                Some(s) if libc::WIFSIGNALED(s) && libc::WTERMSIG(s) == libc::SIGKILL && self.kill_requested => {
                    "the cell was killed".to_string()
                }
                Some(s) if libc::WIFSIGNALED(s) => format!("the cell's init was killed by signal {}", libc::WTERMSIG(s)),
                Some(s) => format!("the cell's init exited with status {}", libc::WEXITSTATUS(s)),
            };
            return Err(format!("no authenticated exit report: {why}"));
        }
        if self.overflow {
            return Err(exit_report::VERIFY_FAILED.to_string());
        }
        exit_report::verify(&self.report[..self.report_len], &self.key, self.cell_id.as_bytes()).map_err(str::to_string)
    }
}

/// Hands back to the kernel the stack pages that start-up (config parsing, file system calls)
/// dirtied below the current frame, and the whole pages inside the still unused output buffer
/// (dirtied by the runtime before `main`): a quiet workload's shim never touches them again,
/// and any that are touched come back zero-filled. Worth 10–20 KiB per shim.
#[inline(never)]
fn release_startup_stack(buf: &mut [MaybeUninit<u8>; COPY_BUF]) {
    /// Pages kept below this frame for the madvise call itself and the loop's shallow calls.
    const HEADROOM_PAGES: usize = 2;
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => return,
    };
    let marker = 0u8;
    let here = std::hint::black_box(&marker) as *const u8 as usize;
    // Never reach below the stack mapping itself: whatever lies there is not ours to zap.
    let Some(stack_start) = mapping_start(here) else {
        return;
    };
    let top = (here & !(page - 1)).saturating_sub(HEADROOM_PAGES * page);
    if top <= stack_start {
        return;
    }
    // SAFETY: [stack_start, top) lies inside this thread's stack mapping and entirely below
    // the current frame, so it holds no live data: signals are blocked and read through a
    // signalfd, so no handler can be running on it, and the headroom covers the madvise call
    // itself. MADV_DONTNEED on private anonymous memory only turns the pages back into
    // zero-fill-on-demand ones.
    unsafe {
        libc::madvise(stack_start as *mut libc::c_void, top - stack_start, libc::MADV_DONTNEED);
    }
    let buf_start = buf.as_mut_ptr() as usize;
    let first = (buf_start + page - 1) & !(page - 1);
    let end = (buf_start + COPY_BUF) & !(page - 1);
    if first < end {
        // SAFETY: [first, end) are whole pages inside `buf`, which we borrow mutably and whose
        // bytes are `MaybeUninit` that are only ever read after `read(2)` wrote them; after
        // MADV_DONTNEED they read as zeros, a valid value for them.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED);
        }
    }
}

/// Start address of the mapping in `/proc/self/maps` that contains `addr`.
fn mapping_start(addr: usize) -> Option<usize> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let range = line.split(' ').next()?;
        let (start, end) = range.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        (start <= addr && addr < end).then_some(start)
    })
}

/// Copies up to `max_reads` chunks from the log pipe; false once the pipe reached EOF or broke.
fn copy_output(run: &mut Running, buf: &mut [MaybeUninit<u8>; COPY_BUF], max_reads: usize) -> bool {
    for _ in 0..max_reads {
        match sys::read_uninit(run.log_read.as_raw_fd(), buf) {
            Ok([]) => return false,
            Ok(data) => run.sink.write(data),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) => {
                report(format_args!("read log pipe: {e}"));
                return false;
            }
        }
    }
    true
}

/// Acts on every pending signal; returns whether a SIGCHLD was among them.
fn handle_signals(run: &mut Running) -> bool {
    let mut child_changed = false;
    loop {
        let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: `info` has room for one signalfd_siginfo, the unit signalfd reads in.
        let n = unsafe { libc::read(run.signal_fd.as_raw_fd(), info.as_mut_ptr().cast(), size) };
        if n != size as isize {
            let e = io::Error::last_os_error();
            if n < 0 && e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                // Should never happen; fall back to checking the child now and then rather
                // than spinning on a broken descriptor.
                report(format_args!("read signalfd: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(100));
                return true;
            }
            return child_changed;
        }
        // SAFETY: the kernel filled the whole struct.
        let signo = unsafe { info.assume_init() }.ssi_signo as libc::c_int;
        match signo {
            libc::SIGTERM => stop(run, false),
            libc::SIGUSR2 => stop(run, true),
            libc::SIGCHLD => child_changed = true,
            // SIGINT/SIGHUP/SIGPIPE: deliberately ignored, the shim only stops with its child.
            _ => {}
        }
    }
}

/// The supervisor's stop request. The child is not reaped before we leave the loop, so
/// neither its pid nor its process group id can have been reused.
fn stop(run: &mut Running, kill: bool) {
    if let Some(oci) = &mut run.oci {
        // The container's processes are in a session of their own: only the runtime reaches
        // them (and PID 1 only, like `docker stop`).
        oci.signal(kill);
        return;
    }
    let signal = if kill { libc::SIGKILL } else { libc::SIGTERM };
    match &mut run.cell {
        // The workload's whole process group.
        None => send(-run.child, signal),
        // The init forwards SIGTERM to the workload's group; SIGKILL to the init takes the
        // whole PID namespace down with it.
        Some(cell) => {
            cell.kill_requested |= kill;
            send(run.child, signal);
        }
    }
}

/// The lease expired: the cell dies now, as in a forced stop (see the module docs).
fn fence_kill(run: &mut Running, why: &str) {
    report(format_args!("{why}: killing the cell"));
    match &mut run.oci {
        Some(oci) => oci.kill_now(),
        None => stop(run, true),
    }
}

/// `kill(target, signal)`, logging anything but "already gone".
fn send(target: libc::pid_t, signal: libc::c_int) {
    if let Err(e) = sys::kill(target, signal) {
        if e.raw_os_error() != Some(libc::ESRCH) {
            report(format_args!("kill -{signal} {target}: {e}"));
        }
    }
}

/// The workload was reaped (or, isolated, its init was, or failed to exit in time: `status`
/// is `None`): save its last output and its exit status, then exit. Kept out of line so its
/// frame does not enlarge the loop's.
#[cold]
#[inline(never)]
fn finish(run: &mut Running, buf: &mut [MaybeUninit<u8>; COPY_BUF], pipe_open: bool, status: Option<libc::c_int>) -> ! {
    if pipe_open {
        // Only what is already buffered; descendants may hold the pipe open indefinitely.
        copy_output(run, buf, FINAL_DRAIN_LIMIT / COPY_BUF);
    }
    let finished_at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let exit = match (&mut run.cell, &run.oci) {
        (_, Some(oci)) => {
            let (exit_code, mut detail) = oci.outcome(status);
            // Read before the delete, which removes the cgroup that holds the count.
            let oom_killed = match oci::oom_kill_count(&oci.state_root, &oci.id) {
                Ok(count) => count.is_some_and(|n| n > 0),
                Err(e) => {
                    report(format_args!("OOM count: {e}"));
                    false
                }
            };
            if let Err(e) = oci.delete() {
                // The supervisor's `remove` tries again; say so in the record meanwhile.
                report(format_args!("{e}"));
                let note = format!("container not deleted: {e}");
                detail = Some(detail.map_or(note.clone(), |d| format!("{d}; {note}")));
            }
            ExitStatus { exit_code, signal: None, finished_at_ms, terminal_state: None, oom_killed, detail, fenced: false }
        }
        (None, None) => {
            // The cell ends with its main process, as a systemd unit does: whatever it left
            // running in its process group (and, below, its cgroup) goes too, so no stray
            // process outlives the cell it belonged to.
            send(-run.child, libc::SIGKILL);
            // A plain workload is only ever finished with the status waitpid gave.
            let signal = status.filter(|&s| libc::WIFSIGNALED(s)).map(|s| libc::WTERMSIG(s));
            let oom_killed = run.cgroups.as_ref().is_some_and(|c| c.teardown(signal == Some(libc::SIGKILL)));
            ExitStatus {
                exit_code: status.filter(|&s| libc::WIFEXITED(s)).map(|s| libc::WEXITSTATUS(s)),
                signal,
                finished_at_ms,
                terminal_state: None,
                oom_killed,
                detail: None,
                fenced: false,
            }
        }
        (Some(cell), None) => {
            // The init is gone, so whatever it wrote is in the pipe, followed by EOF; the read
            // is non-blocking and bounded by the buffer either way.
            cell.read_report();
            let verdict = cell.verdict(status);
            let sigkilled = match verdict {
                Ok(Outcome::Signaled(sig)) => sig == libc::SIGKILL,
                Ok(Outcome::Exited(_)) => false,
                Err(_) => true,
            };
            // The namespace died with its init; the cgroup teardown catches anything that
            // was not in it and tells whether the kernel OOM-killed something.
            let oom_killed = run.cgroups.as_ref().is_some_and(|c| c.teardown(sigkilled));
            match verdict {
                Ok(outcome) => ExitStatus {
                    exit_code: match outcome {
                        Outcome::Exited(code) => Some(code),
                        Outcome::Signaled(_) => None,
                    },
                    signal: match outcome {
                        Outcome::Signaled(sig) => Some(sig),
                        Outcome::Exited(_) => None,
                    },
                    finished_at_ms,
                    terminal_state: Some(TerminalState::Clean),
                    oom_killed,
                    detail: None,
                    fenced: false,
                },
                // Never a made-up code: without an authenticated report there is none.
                Err(detail) => ExitStatus {
                    exit_code: None,
                    signal: None,
                    finished_at_ms,
                    terminal_state: Some(TerminalState::Forced),
                    oom_killed,
                    detail: Some(detail),
                    fenced: false,
                },
            }
        }
    };
    let mut exit = exit;
    if let Some(why) = run.fence.as_mut().and_then(|f| f.fired.take()) {
        exit.fenced = true;
        exit.detail = Some(match exit.detail.take() {
            Some(detail) => format!("{why}; {detail}"),
            None => why,
        });
    }
    for attempt in 1..=5 {
        match write_json_atomic(&run.cell_dir, "exit.json", &exit) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                // e.g. a momentarily full disk; the status is the one thing we must not lose.
                report(format_args!("write exit.json (attempt {attempt}): {e}"));
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
    std::process::exit(1)
}
