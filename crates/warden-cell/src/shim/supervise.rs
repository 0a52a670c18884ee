//! The shim's life after the handshake: one poll loop that copies the workload's output to its
//! log, acts on stop requests (signals from the supervisor), fires the fence, collects an
//! isolated cell's exit report, and — once the child was reaped — records `exit.json` and exits.

use crate::cell::{ExitStatus, TerminalState};
use crate::cgroup::CellCgroups;
use crate::diag::{chain, report, Chain};
use crate::durable::write_json_atomic;
use crate::exit_report::Outcome;
use crate::fence::{FenceFired, FenceWatch};
use crate::logs::LogSink;
use crate::oci;
use crate::shim::isolated::CellWatch;
use crate::shim::oci_cell::{OciCell, RUNTIME_EXIT_GRACE};
use crate::shim::signals::send;
use crate::shim::stack::{release_startup_stack, CopyBuf, COPY_BUF};
use crate::sys;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// After the workload is reaped, at most this much already-buffered output is still copied;
/// a grandchild that keeps the pipe open and writing must not keep the shim alive.
const FINAL_DRAIN_LIMIT: usize = 1024 * 1024;

/// Once the report pipe closed (the init wrote its report or died), how long the shim waits
/// to reap the init before finishing without it. An exiting PID 1 waits until the kernel has
/// killed its whole namespace, which a process stuck in uninterruptible sleep can hold up.
const INIT_EXIT_GRACE: Duration = Duration::from_secs(5);

/// State the shim keeps after the workload was exec'd.
pub(crate) struct Running {
    pub(crate) cell_dir: PathBuf,
    /// The workload (process isolation) or the cell's init (cell isolation).
    pub(crate) child: libc::pid_t,
    pub(crate) log_read: OwnedFd,
    pub(crate) signal_fd: OwnedFd,
    pub(crate) sink: LogSink,
    pub(crate) cgroups: Option<CellCgroups>,
    /// Set for isolated cells only.
    pub(crate) cell: Option<CellWatch>,
    /// Set for OCI cells only; `child` is then the runtime.
    pub(crate) oci: Option<OciCell>,
    /// Set for fenced cells only.
    pub(crate) fence: Option<FenceWatch>,
    /// Held (never read) so the flock lasts until the process exits.
    pub(crate) _lock: File,
}

/// The shim's life after the handshake: copy output, forward signals, wait for the child (and,
/// for an isolated cell, collect the init's exit report as soon as it is written).
pub(crate) fn supervise(mut run: Running, buf: &mut CopyBuf) -> ! {
    release_startup_stack(buf);
    // Start-up allocations (config, env, argv) are gone; give their pages back to the kernel.
    sys::malloc_trim();

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
        if let Err(e) = sys::poll(&mut fds, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                report(format_args!("poll: {e}"));
                // Not fatal: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(100));
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
            if let Some(status) = sys::try_reap(run.child) {
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

/// Copies up to `max_reads` chunks from the log pipe; false once the pipe reached EOF or broke.
fn copy_output(run: &mut Running, buf: &mut CopyBuf, max_reads: usize) -> bool {
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
        let signo = match sys::read_signal(&run.signal_fd) {
            Ok(Some(signo)) => signo,
            Ok(None) => return child_changed,
            Err(e) => {
                // Should never happen; fall back to checking the child now and then rather
                // than spinning on a broken descriptor.
                report(format_args!("read signalfd: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                return true;
            }
        };
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
fn fence_kill(run: &mut Running, why: &FenceFired) {
    report(format_args!("{}: killing the cell", Chain(why)));
    match &mut run.oci {
        Some(oci) => oci.kill_now(),
        None => stop(run, true),
    }
}

/// The workload was reaped (or, isolated, its init was, or failed to exit in time: `status`
/// is `None`): save its last output and its exit status, then exit. Kept out of line so its
/// frame does not enlarge the loop's.
#[cold]
#[inline(never)]
fn finish(run: &mut Running, buf: &mut CopyBuf, pipe_open: bool, status: Option<libc::c_int>) -> ! {
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
                    report(format_args!("OOM count: {}", Chain(&e)));
                    false
                }
            };
            if let Err(e) = oci.delete() {
                // The supervisor's `remove` tries again; say so in the record meanwhile.
                let e = chain(&e);
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
                Err(why) => ExitStatus {
                    exit_code: None,
                    signal: None,
                    finished_at_ms,
                    terminal_state: Some(TerminalState::Forced),
                    oom_killed,
                    detail: Some(chain(&why)),
                    fenced: false,
                },
            }
        }
    };
    let mut exit = exit;
    if let Some(why) = run.fence.as_mut().and_then(|f| f.fired.take()) {
        let why = chain(&why);
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
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    std::process::exit(1)
}
