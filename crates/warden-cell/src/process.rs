//! The `process` cell backend: starts each cell under its own shim, and after a supervisor
//! restart works out from the cell directory alone whether the cell is running, has exited,
//! never started, or was lost — never starting a cell twice and never trusting a bare pid.

use crate::cell::{CellConfig, CellIsolation, CellState, ExitStatus, OciRuntime, StartedCell};
use crate::cgroup::CellCgroups;
use crate::diag::Chain;
use crate::durable::{read_json, write_json_atomic};
use crate::exit_report::MAX_CELL_ID;
use crate::fence::{boottime_ns, write_lease, LeaseRecord};
use crate::oci;
use crate::procfs::{is_alive, process_start_time};
use crate::sys::{self, TryLock};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `inspect` waits for a live shim that is still starting to write `pid.json`. Longer
/// than the shim's own bound on a start ([`oci::START_LIMIT`], the slowest kind), so the shim has
/// always either reported its workload or given up and exited by then: reporting a cell that is
/// merely slow to start as `Lost` would get its workload started a second time.
const MID_START_WAIT: Duration = Duration::from_secs(oci::START_LIMIT.as_secs() + 10);
const MID_START_POLL: Duration = Duration::from_millis(10);

/// Why [`ProcessBackend::start`] failed. The workload is not running after any of these (the
/// shim reaps or kills it before reporting), unless the shim itself was killed between exec and
/// handshake (`Handshake`). The cell dir is left in place for post-mortems (`shim.err`);
/// [`ProcessBackend::inspect`] reports it as `NotStarted`, and [`ProcessBackend::remove`]
/// deletes it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid cell config: {0}")]
    InvalidConfig(String),
    #[error("cell directory {} already exists", .0.display())]
    AlreadyExists(PathBuf),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot spawn shim {}", .path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The workload could not be exec'd (or its workdir entered), e.g. "No such file or directory".
    #[error("cannot exec workload: {0}")]
    Exec(String),
    /// The shim reported a failure of its own before the workload ran.
    #[error("shim failed: {0}")]
    Shim(String),
    /// The OCI runtime could not be found or refused to start the container (e.g. crun on a
    /// host with hybrid cgroups); carries the runtime's own words. Never retried with another
    /// runtime.
    #[error("OCI runtime: {0}")]
    Runtime(String),
    /// A fenced cell's lease had expired (or was missing, unreadable or for another epoch) before
    /// its workload ran: no lease, no cell. Nothing was started.
    #[error("lease expired, cell not started: {0}")]
    LeaseExpired(String),
    /// The shim went away (or spoke nonsense) without reporting success or failure.
    #[error("no handshake from shim: {0}")]
    Handshake(String),
}

/// Why [`ProcessBackend::signal`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("no such cell: {0}")]
    NoSuchCell(String),
    #[error("cell {0} has no running workload yet (pid.json missing)")]
    NotStarted(String),
    #[error("cannot signal cell {cell_id}")]
    Io {
        cell_id: String,
        #[source]
        source: std::io::Error,
    },
}

/// A cell id that cannot name a cell directory.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InvalidCellId {
    #[error("cell id {0:?} is not a plain file name")]
    NotAFileName(String),
    /// Hidden names in the cells dir are warden's own (the OCI runtime's `.oci-state`).
    #[error("cell id {0:?} starts with a dot")]
    Hidden(String),
}

/// How to run the shim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShimExe {
    /// The dedicated `warden-shim` binary: `<path> <cell_dir>`. Smallest memory footprint.
    Standalone(PathBuf),
    /// A multi-call binary: `<path> shim <cell_dir>`.
    Subcommand(PathBuf),
}

impl ShimExe {
    /// `warden-shim` next to the current executable if it exists, else the current
    /// executable's `shim` subcommand.
    pub fn locate() -> ShimExe {
        match std::env::current_exe() {
            Ok(exe) => {
                let standalone = exe.with_file_name("warden-shim");
                if standalone.is_file() {
                    ShimExe::Standalone(standalone)
                } else {
                    ShimExe::Subcommand(exe)
                }
            }
            // exec of /proc/self/exe re-runs whatever binary the spawning process is.
            Err(_) => ShimExe::Subcommand(PathBuf::from("/proc/self/exe")),
        }
    }

    fn command(&self, cell_dir: &Path) -> Command {
        match self {
            ShimExe::Standalone(path) => {
                let mut cmd = Command::new(path);
                cmd.arg(cell_dir);
                cmd
            }
            ShimExe::Subcommand(path) => {
                let mut cmd = Command::new(path);
                cmd.arg("shim").arg(cell_dir);
                cmd
            }
        }
    }

    fn path(&self) -> &Path {
        match self {
            ShimExe::Standalone(p) | ShimExe::Subcommand(p) => p,
        }
    }
}

/// Runs cells — plain processes, isolated cells or OCI containers — each under its own shim;
/// state lives in `<cells_dir>/<cell_id>/` (see the crate docs for the files), and the OCI
/// runtime's in `<cells_dir>/.oci-state/`.
#[derive(Clone, Debug)]
pub struct ProcessBackend {
    cells_dir: PathBuf,
    shim: ShimExe,
}

impl ProcessBackend {
    pub fn new(cells_dir: PathBuf, shim: ShimExe) -> ProcessBackend {
        // Shims get the cell dir as an argument; it must not depend on anybody's cwd.
        let cells_dir = std::path::absolute(&cells_dir).unwrap_or(cells_dir);
        ProcessBackend { cells_dir, shim }
    }

    pub fn cell_dir(&self, cell_id: &str) -> PathBuf {
        self.cells_dir.join(cell_id)
    }

    /// The OCI runtime's state root for this backend's cells (`<cells_dir>/.oci-state`), shared
    /// by all of them; see [`oci::state_root`].
    pub fn oci_state_root(&self) -> PathBuf {
        oci::state_root(&self.cells_dir)
    }

    /// Blocking; returns once the workload has been exec'd (or failed to). Idempotent guard:
    /// error if the cell dir already exists.
    ///
    /// A fenced cell ([`CellConfig::fence`]) gets its first `lease.json` before its shim is
    /// spawned, and is refused with [`StartError::LeaseExpired`] if the fence's initial deadline
    /// has already passed (then not even its directory is created), or if the lease expired
    /// while the shim was starting it (then nothing of the workload is left running).
    pub fn start(&self, config: &CellConfig) -> Result<StartedCell, StartError> {
        validate(config)?;
        if let Some(fence) = &config.fence {
            let now = boottime_ns();
            if fence.initial_deadline_boottime_ns <= now {
                return Err(StartError::LeaseExpired(format!(
                    "lease epoch {} has deadline {} ns, but CLOCK_BOOTTIME already reads {now} ns",
                    fence.epoch, fence.initial_deadline_boottime_ns
                )));
            }
        }
        let dir = self.cell_dir(&config.cell_id);
        std::fs::create_dir_all(&self.cells_dir).map_err(io_err("create cells dir"))?;
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(StartError::AlreadyExists(dir)),
            Err(e) => return Err(io_err("create cell dir")(e)),
        }
        if let Some(fence) = &config.fence {
            // Before config.json: whoever sees a fenced config also sees its lease.
            let lease = LeaseRecord { epoch: fence.epoch, deadline_boottime_ns: fence.initial_deadline_boottime_ns };
            write_lease(&dir, &lease).map_err(io_err("write lease.json"))?;
        }
        write_json_atomic(&dir, "config.json", config).map_err(io_err("write config.json"))?;
        let shim_err = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(dir.join("shim.err"))
            .map_err(io_err("open shim.err"))?;

        let mut cmd = self.shim.command(&dir);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::from(shim_err));
        // No `pre_exec` here: it would force a full fork of this large, multi-threaded process
        // instead of posix_spawn. The shim calls setsid() as its first act instead.
        let mut child = cmd.spawn().map_err(|source| StartError::Spawn { path: self.shim.path().to_path_buf(), source })?;
        let Some(stdout) = child.stdout.take() else {
            return Err(StartError::Handshake("shim stdout not captured".into()));
        };
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let line = line.trim_end_matches('\n');
        if let Some(rest) = line.strip_prefix("ok ") {
            // On success the shim lives on; dropping `child` neither kills nor waits for it.
            return parse_ok(rest).ok_or_else(|| StartError::Handshake(format!("malformed handshake {line:?}")));
        }
        // Every other outcome means the shim is exiting (or has exited): reap it now.
        let _ = child.wait();
        if let Some(msg) = line.strip_prefix("err exec ") {
            Err(StartError::Exec(msg.to_string()))
        } else if let Some(msg) = line.strip_prefix("err runtime ") {
            Err(StartError::Runtime(msg.to_string()))
        } else if let Some(msg) = line.strip_prefix("err fenced ") {
            Err(StartError::LeaseExpired(msg.to_string()))
        } else if let Some(msg) = line.strip_prefix("err ") {
            Err(StartError::Shim(msg.to_string()))
        } else if let Err(e) = read {
            Err(StartError::Handshake(format!("reading handshake: {e}")))
        } else if line.is_empty() {
            Err(StartError::Handshake(format!("shim exited without a word; shim.err: {}", tail(&dir.join("shim.err")))))
        } else {
            Err(StartError::Handshake(format!("malformed handshake {line:?}")))
        }
    }

    /// Extends (or replaces) a fenced cell's lease: atomically rewrites `<cell dir>/lease.json`
    /// with `epoch` and a deadline on `CLOCK_BOOTTIME` in nanoseconds ([`boottime_ns`]). Its shim
    /// looks at the file when the deadline it last read passes: a later deadline of the cell's
    /// own epoch keeps the cell running; anything else (another epoch, a deadline already
    /// passed) ends it at once, fenced. Shortening a deadline takes effect only at the previous
    /// one. Fails with `NotFound` if the cell dir does not exist (a lease is never created for a
    /// cell that is not there); for an unfenced or ended cell the file is written but never read.
    /// Safe to call from several threads: concurrent renewals never tear the file (the last
    /// rename wins, so callers should not race deadlines that go backwards).
    pub fn renew_lease(&self, cell_id: &str, epoch: u64, deadline_boottime_ns: u64) -> io::Result<()> {
        if validate_id(cell_id).is_err() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, InvalidCellId::NotAFileName(cell_id.to_string())));
        }
        write_lease(&self.cell_dir(cell_id), &LeaseRecord { epoch, deadline_boottime_ns })
    }

    /// After a supervisor restart: what is this cell's state?
    ///
    /// The shim's flock on `lock` is the liveness proof and `exit.json` (written before the
    /// lock is released) the only source of exit statuses, so: no dir → `NotStarted`;
    /// `exit.json` → `Exited`; lock held → `Running`; lock free without `pid.json` → the dir
    /// is renamed aside (a shim still starting then finds no lock path) → `NotStarted`; lock
    /// free with `pid.json` → `Lost` (and a still-running workload is killed; for an OCI cell,
    /// a container the runtime still knows is killed and deleted).
    pub fn inspect(&self, cell_id: &str) -> CellState {
        let dir = self.cell_dir(cell_id);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return lost(format!("{} is not a directory", dir.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return CellState::NotStarted,
            Err(e) => return lost(format!("cannot stat {}: {e}", dir.display())),
        }
        let lock = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(dir.join("lock"))
        {
            Ok(lock) => lock,
            // Removed under our feet: nothing of it can be running.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return CellState::NotStarted,
            Err(e) => return lost(format!("cannot open lock: {e}")),
        };
        let deadline = Instant::now() + MID_START_WAIT;
        loop {
            match read_exit(&dir) {
                Ok(Some(exit)) => return CellState::Exited(exit),
                Ok(None) => {}
                Err(e) => return lost(format!("cannot read exit.json: {e}")),
            }
            match sys::try_lock_exclusive(&lock) {
                // We hold the lock until `lock` drops: no shim can start meanwhile.
                Ok(TryLock::Acquired) => return self.inspect_dead(cell_id, &dir),
                Ok(TryLock::WouldBlock) => match read_json::<StartedCell>(&dir.join("pid.json")) {
                    Ok(Some(started)) => return CellState::Running(started),
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(MID_START_POLL),
                    Ok(None) => return lost(format!("shim alive but it reported no workload pid within {MID_START_WAIT:?}")),
                    Err(e) => return lost(format!("cannot read pid.json: {e}")),
                },
                Err(e) => return lost(format!("cannot lock: {e}")),
            }
        }
    }

    /// The shim is gone (we hold its lock). Decide from the files what became of the cell.
    fn inspect_dead(&self, cell_id: &str, dir: &Path) -> CellState {
        // exit.json is written before the lock is released, so under the lock this is final.
        match read_exit(dir) {
            Ok(Some(exit)) => return CellState::Exited(exit),
            Ok(None) => {}
            Err(e) => return lost(format!("cannot read exit.json: {e}")),
        }
        // config.json is written before the shim is spawned, so it is there for every cell.
        let oci_runtime = match read_json::<CellConfig>(&dir.join("config.json")) {
            Ok(Some(CellConfig { isolation: CellIsolation::Oci { runtime, .. }, .. })) => Some(runtime),
            _ => None,
        };
        let started = match read_json::<StartedCell>(&dir.join("pid.json")) {
            Ok(Some(started)) => started,
            Ok(None) => {
                // Never exec'd (or the shim died first). A child it may have forked is in the
                // cell's cgroups, if it got that far: nothing of it may live on.
                CellCgroups::cleanup_recorded(dir);
                // Likewise a container the runtime may have created before the shim died: left
                // alone, it would run unwatched and block the cell id.
                if let Some(runtime) = oci_runtime {
                    if let Err(e) = self.delete_container(runtime, cell_id) {
                        return lost(format!(
                            "shim died while starting its container, which could not be deleted: {}",
                            Chain(&e)
                        ));
                    }
                }
                // Move the dir aside so that a shim which was spawned but has not reached its
                // lock yet cannot start it later.
                return match self.abandon(cell_id, dir) {
                    Ok(()) => CellState::NotStarted,
                    Err(e) => lost(format!("cannot set aside unstarted cell dir: {e}")),
                };
            }
            Err(e) => return lost(format!("cannot read pid.json: {e}")),
        };
        if let Some(runtime) = oci_runtime {
            return self.end_lost_container(runtime, cell_id, &started);
        }
        // Nobody is left to record its end; a workload nobody watches must not live on. The
        // pid is a group leader either way: the workload's, or an isolated cell's init, whose
        // death takes its whole PID namespace along.
        let state = if is_alive(started.pid, started.pid_start_time) {
            let pgid = started.pid as libc::pid_t;
            match sys::kill(-pgid, libc::SIGKILL) {
                Err(e) if e.raw_os_error() != Some(libc::ESRCH) => lost(format!("shim lost; killing the cell failed: {e}")),
                _ => lost("shim lost; cell killed".into()),
            }
        } else {
            lost("shim lost before the cell ended; exit status unknown".into())
        };
        // Whatever escaped the group (or the namespace) is still in the cell's cgroups.
        CellCgroups::cleanup_recorded(dir);
        state
    }

    /// An OCI cell whose shim died after the container started: nobody will record its end, so
    /// the container goes (`delete --force` kills whatever still runs in it, then removes its
    /// cgroups and state). The runtime process itself died with the shim (parent-death signal).
    fn end_lost_container(&self, runtime: OciRuntime, cell_id: &str, started: &StartedCell) -> CellState {
        let id = oci::container_id(cell_id);
        let root = self.oci_state_root();
        let binary = match oci::runtime_binary(runtime) {
            Ok(binary) => binary,
            Err(e) => return lost(format!("shim lost; cannot end its container: {}", Chain(&e))),
        };
        let known = oci::state(&binary, &root, &id);
        let deleted = oci::delete(&binary, &root, &id);
        // Should the runtime have lost track of a container that still runs, its PID 1 goes
        // directly: SIGKILL from the host always reaches a namespace's init and ends it.
        if is_alive(started.pid, started.pid_start_time) {
            let _ = sys::kill(started.pid as libc::pid_t, libc::SIGKILL);
        }
        match (known, deleted) {
            (_, Err(e)) => lost(format!("shim lost; deleting its container failed: {}", Chain(&e))),
            (Ok(Some(state)), Ok(())) if state.status != "stopped" => lost("shim lost; container killed and deleted".into()),
            _ => lost("shim lost before the cell ended; exit status unknown; container deleted".into()),
        }
    }

    /// `delete --force` of the cell's container, if the runtime's state root holds one.
    fn delete_container(&self, runtime: OciRuntime, cell_id: &str) -> Result<(), oci::OciError> {
        let id = oci::container_id(cell_id);
        let root = self.oci_state_root();
        // Both runtimes keep a container's state in `<root>/<id>/`: without it there is nothing
        // to delete, and no runtime process needs to be started to learn that.
        if !root.join(&id).exists() {
            return Ok(());
        }
        oci::delete(&oci::runtime_binary(runtime)?, &root, &id)
    }

    fn abandon(&self, cell_id: &str, dir: &Path) -> io::Result<()> {
        for n in 1..100_000u32 {
            let target = self.cells_dir.join(format!("{cell_id}.abandoned-{n}"));
            match sys::rename_noreplace(dir, &target) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                other => return other,
            }
        }
        Err(io::Error::other("no free abandoned-<n> name"))
    }

    /// SIGTERM (kill=false) or SIGKILL (kill=true) to the workload's whole process group, via
    /// the shim. Ok(()) if the cell already ended.
    pub fn signal(&self, cell_id: &str, kill: bool) -> Result<(), SignalError> {
        let dir = self.cell_dir(cell_id);
        if !dir.is_dir() {
            return Err(SignalError::NoSuchCell(cell_id.to_string()));
        }
        let io_err = |source| SignalError::Io { cell_id: cell_id.to_string(), source };
        if dir.join("exit.json").exists() {
            return Ok(());
        }
        let started = read_json::<StartedCell>(&dir.join("pid.json"))
            .map_err(io_err)?
            .ok_or_else(|| SignalError::NotStarted(cell_id.to_string()))?;
        // The pidfd pins the process; checking the start time *after* opening it proves it is
        // the shim and not a process that recycled its pid.
        let pidfd = match sys::pidfd_open(started.shim_pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
            Err(e) => return Err(io_err(e)),
        };
        if !is_alive(started.shim_pid, started.shim_start_time) {
            return Ok(());
        }
        let sig = if kill { libc::SIGUSR2 } else { libc::SIGTERM };
        match sys::pidfd_send_signal(&pidfd, sig) {
            Err(e) if e.raw_os_error() != Some(libc::ESRCH) => Err(io_err(e)),
            _ => Ok(()),
        }
    }

    /// A descriptor that becomes readable when the shim exits: a pidfd, or — if the shim is
    /// already gone (or its pid now names another process) — an eventfd that is readable at
    /// once. Either way, call [`ProcessBackend::collect_exit`] once it is readable.
    pub fn exit_fd(&self, cell_id: &str, started: &StartedCell) -> io::Result<OwnedFd> {
        let _ = cell_id;
        match sys::pidfd_open(started.shim_pid) {
            Ok(fd) if process_start_time(started.shim_pid) == Some(started.shim_start_time) => Ok(fd),
            Ok(_) => sys::ready_fd(),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => sys::ready_fd(),
            Err(e) => Err(e),
        }
    }

    /// Reads exit.json once the shim is gone; reaps the shim with waitpid(WNOHANG) if it is our
    /// child. Returns `Running` if the shim is in fact still alive.
    pub fn collect_exit(&self, cell_id: &str, started: &StartedCell) -> CellState {
        // Only reap a pid that is still provably the shim: waiting on a recycled pid could
        // steal the exit status of some other child of ours.
        if process_start_time(started.shim_pid) == Some(started.shim_start_time) {
            // Not our child (ECHILD), or still running: nothing to reap.
            let _ = sys::try_reap(started.shim_pid as libc::pid_t);
        }
        self.inspect(cell_id)
    }

    /// Removes the cell dir once its end has been journaled — and, for an OCI cell, whatever
    /// the runtime still holds of its container (its shim deletes it, unless that failed).
    pub fn remove(&self, cell_id: &str) -> io::Result<()> {
        let dir = self.cell_dir(cell_id);
        if let Ok(Some(CellConfig { isolation: CellIsolation::Oci { runtime, .. }, .. })) =
            read_json::<CellConfig>(&dir.join("config.json"))
        {
            self.delete_container(runtime, cell_id).map_err(io::Error::other)?;
        }
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

fn lost(reason: String) -> CellState {
    CellState::Lost { reason }
}

fn read_exit(dir: &Path) -> io::Result<Option<ExitStatus>> {
    read_json(&dir.join("exit.json"))
}

fn io_err(context: &'static str) -> impl Fn(io::Error) -> StartError {
    move |source| StartError::Io { context: context.to_string(), source }
}

/// Rejects what the shim could not exec, before any directory is created.
fn validate(config: &CellConfig) -> Result<(), StartError> {
    let bad = |msg: String| Err(StartError::InvalidConfig(msg));
    validate_id(&config.cell_id).map_err(|e| StartError::InvalidConfig(e.to_string()))?;
    if let CellIsolation::Oci { rootfs, .. } = &config.isolation {
        // The runtime would resolve a relative root against the bundle, not the supervisor.
        if !rootfs.is_absolute() {
            return bad(format!("rootfs {} is not an absolute path", rootfs.display()));
        }
        if !rootfs.is_dir() {
            return bad(format!("rootfs {} is not a directory", rootfs.display()));
        }
    }
    let limits = &config.limits;
    if limits.memory_max_bytes == Some(0) || limits.pids_max == Some(0) {
        return bad("memory and pids limits must be positive".into());
    }
    if limits.cpu_max_millicores.is_some_and(|m| m < 10) {
        // The kernel's smallest CFS quota is 1 ms per 100 ms period.
        return bad("cpu_max_millicores must be at least 10".into());
    }
    if config.argv.is_empty() {
        return bad("argv is empty".into());
    }
    if config.argv.iter().any(|a| a.contains('\0')) {
        return bad("argv contains a NUL byte".into());
    }
    for (k, v) in &config.env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return bad(format!("invalid environment variable {k:?}"));
        }
    }
    Ok(())
}

fn validate_id(id: &str) -> Result<(), InvalidCellId> {
    if id.is_empty() || id == "." || id == ".." || id.contains(['/', '\0']) || id.len() > MAX_CELL_ID {
        return Err(InvalidCellId::NotAFileName(id.to_string()));
    }
    if id.starts_with('.') {
        return Err(InvalidCellId::Hidden(id.to_string()));
    }
    Ok(())
}

fn parse_ok(rest: &str) -> Option<StartedCell> {
    let mut it = rest.split(' ');
    let started = StartedCell {
        pid: it.next()?.parse().ok()?,
        pid_start_time: it.next()?.parse().ok()?,
        shim_pid: it.next()?.parse().ok()?,
        shim_start_time: it.next()?.parse().ok()?,
    };
    it.next().is_none().then_some(started)
}

/// The last few hundred bytes of a diagnostics file, for error messages.
fn tail(path: &Path) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut buf);
    }
    let start = buf.len().saturating_sub(400);
    String::from_utf8_lossy(&buf[start..]).trim().to_string()
}
