//! An OCI cell from the shim's side: preparing the bundle and the runtime's command line,
//! waiting until the runtime (`runc run` in the foreground, the shim's child) has started the
//! container, forwarding stop requests through the runtime, and reading the cell's end from the
//! runtime's exit status.

use crate::cell::{CellConfig, OciRuntime};
use crate::cgroup::remove_runtime_leftovers;
use crate::diag::{report, Chain};
use crate::fence::FenceWatch;
use crate::logs::LogSink;
use crate::oci::{self, OciError};
use crate::procfs::{is_alive, proc_stat, process_start_time};
use crate::shim::failure::{RuntimeFailure, StartFailure};
use crate::shim::signals::{send, signal_name, KERNEL_NSIG};
use crate::sys;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Once its container was sent SIGKILL, how long the OCI runtime gets to report the end before
/// the shim kills it and finishes without its status: a stuck runtime must not keep a cell that
/// is being force-stopped from ever ending. Generous, because killing a runtime that was just
/// about to exit would lose the container's real status.
pub(crate) const RUNTIME_EXIT_GRACE: Duration = Duration::from_secs(10);

/// How much of the runtime's last output is kept to explain a failed start.
const OCI_ERROR_TAIL: usize = 1024;

/// What the shim needs to run, signal and tear down an OCI cell's container.
pub(crate) struct OciCell {
    /// The runtime's executable, absolute.
    runtime: PathBuf,
    /// `runc` or `crun`, for messages.
    pub(crate) name: &'static str,
    pub(crate) state_root: PathBuf,
    pub(crate) id: Box<str>,
    /// The cell's id, which names its cgroups (`warden/<cell_id>`).
    cell_id: Box<str>,
    /// Where the runtime writes the container's PID 1 (`--pid-file`).
    pid_file: PathBuf,
    /// The container's PID 1 and its start time, once the runtime reported it.
    pub(crate) pid: u32,
    pub(crate) pid_start_time: u64,
    /// Set by a SIGKILL request: the runtime must have exited by then.
    pub(crate) exit_deadline: Option<Instant>,
}

impl OciCell {
    /// Resolves the runtime, writes `<cell_dir>/bundle` and returns the argv that runs it:
    /// [`oci::run_argv`] plus `--pid-file` (and `--keep` for runc).
    pub(crate) fn prepare(
        cell_dir: &Path,
        config: &CellConfig,
        rootfs: &Path,
        runtime: OciRuntime,
        network_none: bool,
    ) -> Result<(OciCell, Vec<String>), StartFailure> {
        let binary = oci::runtime_binary(runtime).map_err(|e| StartFailure::Runtime(RuntimeFailure::Unavailable(e)))?;
        let cells_dir = cell_dir.parent().ok_or_else(|| StartFailure::NoCellsDir { cell_dir: cell_dir.to_path_buf() })?;
        let state_root = oci::state_root(cells_dir);
        let bundle = cell_dir.join("bundle");
        if let Err(source) = oci::write_bundle(&bundle, config, rootfs, network_none) {
            return Err(StartFailure::Bundle { path: bundle, source });
        }
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
    pub(crate) fn signal(&mut self, kill: bool) {
        if kill {
            self.exit_deadline.get_or_insert(Instant::now() + RUNTIME_EXIT_GRACE);
        }
        match oci::kill(&self.runtime, &self.state_root, &self.id, if kill { "KILL" } else { "TERM" }) {
            // Already over: the runtime's exit is on its way.
            Ok(()) | Err(OciError::NoSuchContainer(_) | OciError::NotRunning(_)) => {}
            Err(e) => {
                report(format_args!("{}", Chain(&e)));
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
    pub(crate) fn kill_now(&mut self) {
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
    pub(crate) fn delete(&self) -> Result<(), OciError> {
        oci::delete(&self.runtime, &self.state_root, &self.id)
    }

    /// The cell's end from the runtime's wait status. The code is kept as the runtime reports
    /// it — 128 + n for a PID 1 killed by signal n, as Docker shows it — because a container
    /// that ran `exit 137` looks the same; `detail` gives the signal reading.
    pub(crate) fn outcome(&self, status: Option<libc::c_int>) -> (Option<i32>, Option<String>) {
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

/// Waits until the runtime has started the container; returns its PID 1 and that process's
/// start time. Copies the runtime's output (and the container's first output) to the log
/// meanwhile, and keeps its tail to explain a failed start in the runtime's own words. A fenced
/// cell's start fails as soon as its lease expires.
pub(crate) fn wait_for_container(
    cell_dir: &Path,
    runtime: libc::pid_t,
    log_read: &OwnedFd,
    sink: &mut LogSink,
    oci: &OciCell,
    mut fence: Option<&mut FenceWatch>,
) -> Result<(u32, u64), StartFailure> {
    let deadline = Instant::now() + oci::START_LIMIT;
    let mut tail = Vec::new();
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(Err(why)) = fence.as_deref_mut().map(|f| f.check(cell_dir)) {
            return Err(StartFailure::Fenced(why));
        }
        // Looked at before the pid file, so that a pid file read after the runtime ended is
        // complete. WNOWAIT: the supervision loop reaps it, and learns its status then.
        let ended = sys::peek_exit(runtime);
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
                    return Err(StartFailure::Runtime(RuntimeFailure::GaveUp {
                        runtime: oci.name,
                        how: describe_status(status),
                        words: runtime_words(&tail),
                    }));
                }
            }
        }
        if Instant::now() >= deadline {
            copy_start_output(log_read, sink, &mut tail);
            return Err(StartFailure::Runtime(RuntimeFailure::TimedOut {
                runtime: oci.name,
                limit: oci::START_LIMIT,
                words: runtime_words(&tail),
            }));
        }
        let mut pfd = [libc::pollfd { fd: log_read.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        // Its result only decides whether to read; errors are moot.
        let ready = sys::poll(&mut pfd, pause.as_millis() as libc::c_int).is_ok_and(|n| n > 0);
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
pub(crate) fn undo_oci_start(runtime: libc::pid_t, oci: &OciCell) {
    let _ = sys::kill(-runtime, libc::SIGKILL);
    sys::reap_blocking(runtime);
    if let Err(e) = oci.delete() {
        report(format_args!("after a failed start: {}", Chain(&e)));
    }
    remove_runtime_leftovers(&oci.cell_id);
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
