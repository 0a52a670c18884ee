//! Safe wrappers around the few raw system calls the runtime makes (`flock`, `kill`, and handing
//! a pidfd to tokio's reactor): every `unsafe` block of the runtime is here, each with the
//! argument why it is sound, so callers never write one.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Takes an exclusive `flock` on `file` without waiting. `Err` if another open file description
/// holds it (`EWOULDBLOCK`) or the call failed. The lock goes with the file: it is released when
/// `file` is closed, also when the process dies, so a crashed holder never leaves it behind.
pub fn try_lock_exclusive(file: &File) -> io::Result<()> {
    // SAFETY: `flock` takes two integers and touches no memory of ours; the descriptor is
    // `file`'s, borrowed for the whole call, so it is open and cannot be closed (and its
    // number reused) before the call returns.
    let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A signal the runtime sends to processes it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// `SIGKILL`: a command past its timeout (with its process group).
    Kill,
    /// `SIGUSR1`: a hot standby's cell is told it was promoted (its role file says to what).
    User1,
}

impl Signal {
    fn number(self) -> libc::c_int {
        match self {
            Signal::Kill => libc::SIGKILL,
            Signal::User1 => libc::SIGUSR1,
        }
    }
}

/// Sends `signal` to the process `pid`. Pid 0 and pids beyond `pid_t` are refused: `kill` would
/// read 0 as "the caller's own process group" and a wrapped-around negative value as a group.
pub fn signal_process(pid: u32, signal: Signal) -> io::Result<()> {
    let pid = match libc::pid_t::try_from(pid) {
        Ok(pid) if pid > 0 => pid,
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{pid} is not a process id"))),
    };
    // SAFETY: `kill` takes two integers and touches no memory of ours. `pid > 0` names exactly
    // one process, never a group or every process.
    let result = unsafe { libc::kill(pid, signal.number()) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends `signal` to every process in the process group `pgid`. Group ids 0 and 1 and ids
/// beyond `pid_t` are refused: `kill(0)` signals the caller's own group and `kill(-1)` every
/// process the caller may signal.
pub fn signal_process_group(pgid: u32, signal: Signal) -> io::Result<()> {
    let pgid = match libc::pid_t::try_from(pgid) {
        Ok(pgid) if pgid > 1 => pgid,
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{pgid} is not a process group id"))),
    };
    // SAFETY: `kill` takes two integers and touches no memory of ours. With `pgid > 1`, `-pgid`
    // is below -1: it names exactly that process group, never the caller's own (0) or every
    // process (-1).
    let result = unsafe { libc::kill(-pgid, signal.number()) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits until `fd` (a pidfd or an eventfd) turns readable, on tokio's reactor. `Err` only if
/// it cannot be registered with the reactor; the caller then goes on without waiting.
pub async fn wait_readable(fd: OwnedFd) -> io::Result<()> {
    // SAFETY: `register_with_interest` needs a descriptor that stays open, and the same, for as
    // long as the `AsyncFd` owns it. `fd` is an `OwnedFd` moved into the `AsyncFd`: it is open
    // (an `OwnedFd` always is), nothing else can close it, its raw number never changes, and it
    // is closed only when the `AsyncFd` is dropped at the end of this function.
    let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into_parts().1)?;
    // An error here means the reactor is shutting down; either way there is nothing more to
    // wait for, and the caller collects what happened.
    let _ = fd.readable().await;
    Ok(())
}
