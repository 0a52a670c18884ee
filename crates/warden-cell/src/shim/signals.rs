//! The shim's signals: the ones it takes through a signalfd (blocked for its whole life, so none
//! can kill it), and the ones it sends, with their names for messages.

use crate::diag::report;
use crate::sys;
use std::io;
use std::os::fd::OwnedFd;

/// Signals the shim handles through its signalfd; they stay blocked for the shim's whole life
/// so none of them can kill it, and any that arrive during start-up wait until the loop runs.
const HANDLED_SIGNALS: [libc::c_int; 6] =
    [libc::SIGCHLD, libc::SIGTERM, libc::SIGUSR2, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE];

/// Highest signal number on Linux (`_NSIG - 1`), real-time signals included.
pub(crate) const KERNEL_NSIG: libc::c_int = 64;

/// Blocks [`HANDLED_SIGNALS`] for the rest of the shim's life.
pub(crate) fn block_handled_signals() -> io::Result<()> {
    sys::block_signals(&sys::sigset(&HANDLED_SIGNALS)?)
}

/// A non-blocking signalfd that reads [`HANDLED_SIGNALS`].
pub(crate) fn open_signalfd() -> io::Result<OwnedFd> {
    sys::signalfd(&sys::sigset(&HANDLED_SIGNALS)?)
}

/// `kill(target, signal)`, logging anything but "already gone".
pub(crate) fn send(target: libc::pid_t, signal: libc::c_int) {
    if let Err(e) = sys::kill(target, signal) {
        if e.raw_os_error() != Some(libc::ESRCH) {
            report(format_args!("kill -{signal} {target}: {e}"));
        }
    }
}

/// `SIGKILL` for 9 and so on, for messages.
pub(crate) fn signal_name(signal: libc::c_int) -> String {
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
