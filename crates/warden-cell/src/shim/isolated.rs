//! An isolated cell (`isolation = "cell"`) from the shim's side: cloning the cell's init
//! ([`crate::shim::cell_init`]) into new namespaces, handing it the report key, and judging the
//! cell's end by the init's authenticated exit report.

use crate::cell::CellUser;
use crate::diag::report;
use crate::exit_report::{self, Key, Outcome, VerifyError, MAX_REPORT};
use crate::shim::cell_init::{self, InitCtx};
use crate::shim::failure::StartFailure;
use crate::sys;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// Why an isolated cell's end has no authenticated outcome; becomes the exit's `detail`, and
/// the cell's terminal state is then `Forced`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NoOutcome {
    #[error("no authenticated exit report: the cell's init did not exit")]
    InitHung,
    /// The supervisor asked for SIGKILL, and the init died of it.
    #[error("no authenticated exit report: the cell was killed")]
    Killed,
    #[error("no authenticated exit report: the cell's init was killed by signal {signal}")]
    InitKilled { signal: libc::c_int },
    #[error("no authenticated exit report: the cell's init exited with status {status}")]
    InitExited { status: libc::c_int },
    /// Something arrived, but it is not a report of this cell's init.
    #[error(transparent)]
    Rejected(VerifyError),
}

/// What the shim keeps to judge an isolated cell's end.
pub(crate) struct CellWatch {
    key: Key,
    cell_id: Box<str>,
    /// Non-blocking read end; only the init ever held the write end.
    pub(crate) report_read: OwnedFd,
    report: [u8; MAX_REPORT],
    report_len: usize,
    /// More bytes arrived than a report can have: whatever it is, it is not a report.
    overflow: bool,
    /// The supervisor asked for SIGKILL, so an init dead of SIGKILL was killed on purpose.
    pub(crate) kill_requested: bool,
}

/// The signals the cell's init waits for; everything else stays deliverable (and, for PID 1,
/// is dropped by the kernel unless it comes from the host and is SIGKILL or SIGSTOP).
pub(crate) fn init_wait_set() -> io::Result<libc::sigset_t> {
    sys::sigset(&[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2])
}

/// Clones the cell's init into new namespaces and hands it the report key.
///
/// The key is generated only *after* the clone and reaches the init solely through the key
/// pipe, which the init reads once it is no longer dumpable and then closes: the key is never
/// in argv, the environment, a file, or the memory the workload is forked from before that.
pub(crate) fn spawn_init<'a>(
    mut ctx: InitCtx<'a>,
    cell_id: &'a str,
    network_none: bool,
    userns: Option<CellUser>,
) -> Result<(libc::pid_t, CellWatch), StartFailure> {
    let (key_read, key_write) = sys::pipe(libc::O_CLOEXEC).map_err(StartFailure::sys("key pipe"))?;
    let (report_read, report_write) = sys::pipe(libc::O_CLOEXEC | libc::O_NONBLOCK).map_err(StartFailure::sys("report pipe"))?;
    // Only the shim's end is non-blocking; the init's must block like a normal pipe.
    sys::set_nonblocking(report_write.as_raw_fd(), false).map_err(StartFailure::sys("report pipe"))?;
    ctx.key_read = key_read.as_raw_fd();
    ctx.report_write = report_write.as_raw_fd();
    // HOST_NAME_MAX is 64; the cell id is at most 255 bytes (a file name).
    ctx.hostname = &cell_id.as_bytes()[..cell_id.len().min(64)];

    let mut flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if network_none {
        // A new network namespace holds nothing but a loopback interface, and that one down.
        flags |= libc::CLONE_NEWNET;
    }
    if userns.is_some() {
        // Created with the others in one clone, so the user namespace owns them all: root in
        // the cell may mount its /proc and set its hostname, and is nobody on the host.
        flags |= libc::CLONE_NEWUSER;
        ctx.userns = true;
    }
    // SAFETY: the shim is single-threaded; the child runs only `init_main`, which never returns.
    let init = unsafe { sys::clone_fork(flags as libc::c_ulong | libc::SIGCHLD as libc::c_ulong) }
        .map_err(StartFailure::sys("clone the cell's init"))?;
    if init == 0 {
        // SAFETY: we are the clone child; `ctx` was fully built before the clone.
        unsafe { cell_init::init_main(&ctx) }
    }
    drop(key_read);
    drop(report_write);
    // The maps before the key: the init switches to the namespace's root once the key arrived.
    if let Some(user) = userns {
        if let Err(source) = map_user_namespace(init, user) {
            let _ = sys::kill(init, libc::SIGKILL);
            sys::reap_blocking(init);
            return Err(StartFailure::UserNamespace { ids: format!("uid {} gid {}", user.uid, user.gid), source });
        }
    }
    // Not dumpable either: the shim holds the key for the cell's whole life. (It cannot fail:
    // 0 is a valid setting.)
    let _ = sys::set_not_dumpable();
    let key = match exit_report::new_key() {
        Ok(key) => key,
        Err(e) => {
            let _ = sys::kill(init, libc::SIGKILL);
            sys::reap_blocking(init);
            return Err(StartFailure::Sys { step: "getrandom", source: e });
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

/// Maps root (0) inside `init`'s user namespace to `user` outside, one id each. Written by the
/// shim (root in the parent namespace), so `setgroups` stays allowed inside: the init drops the
/// supplementary groups it inherited, which would otherwise still count on the host.
fn map_user_namespace(init: libc::pid_t, user: CellUser) -> io::Result<()> {
    std::fs::write(format!("/proc/{init}/uid_map"), format!("0 {} 1\n", user.uid))?;
    std::fs::write(format!("/proc/{init}/gid_map"), format!("0 {} 1\n", user.gid))
}

impl CellWatch {
    /// Reads whatever the report pipe holds, without blocking and into a bounded buffer;
    /// false once it is closed (EOF or error) or overflowed.
    pub(crate) fn read_report(&mut self) -> bool {
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
    pub(crate) fn verdict(&self, init_status: Option<libc::c_int>) -> Result<Outcome, NoOutcome> {
        if self.report_len == 0 {
            return Err(match init_status {
                None => NoOutcome::InitHung,
                Some(s) if libc::WIFSIGNALED(s) && libc::WTERMSIG(s) == libc::SIGKILL && self.kill_requested => NoOutcome::Killed,
                Some(s) if libc::WIFSIGNALED(s) => NoOutcome::InitKilled { signal: libc::WTERMSIG(s) },
                Some(s) => NoOutcome::InitExited { status: libc::WEXITSTATUS(s) },
            });
        }
        if self.overflow {
            return Err(NoOutcome::Rejected(VerifyError::BadTag));
        }
        exit_report::verify(&self.report[..self.report_len], &self.key, self.cell_id.as_bytes()).map_err(NoOutcome::Rejected)
    }
}
