//! Thin, safe wrappers over the few Linux syscalls the backend and the shim need (flock, pidfd,
//! renameat2, pipes, clone, timerfd, signalfd, waitpid, poll, ...); each keeps its `unsafe` next
//! to its SAFETY argument, so that callers need none.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Turns a `-1` return into the thread's `errno`.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(crate) fn path_cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Outcome of a non-blocking exclusive lock attempt.
pub(crate) enum TryLock {
    Acquired,
    WouldBlock,
}

/// `flock(LOCK_EX | LOCK_NB)`: a held lock means its holder (a shim) is alive.
pub(crate) fn try_lock_exclusive(fd: &impl AsRawFd) -> io::Result<TryLock> {
    loop {
        // SAFETY: flock only reads the descriptor number; `fd` is borrowed and open.
        let ret = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        match cvt(ret) {
            Ok(_) => return Ok(TryLock::Acquired),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => return Ok(TryLock::WouldBlock),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Blocking `flock(LOCK_EX)`.
pub(crate) fn lock_exclusive(fd: &impl AsRawFd) -> io::Result<()> {
    loop {
        // SAFETY: as in `try_lock_exclusive`.
        let ret = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX) };
        match cvt(ret) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `pidfd_open(pid, 0)`; the returned descriptor is always close-on-exec.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new descriptor or -1.
    let fd = cvt_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel just handed us this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal`: signals exactly the process the pidfd was opened for, so a recycled
/// pid can never receive the signal.
pub(crate) fn pidfd_send_signal(pidfd: &OwnedFd, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: the pidfd is open for the duration of the call; a NULL siginfo is allowed.
    let ret =
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<libc::siginfo_t>(), 0) };
    cvt_long(ret).map(drop)
}

/// An eventfd that is readable right away; stands in for a pidfd of a process that is
/// already gone, so callers waiting for "the shim exited" wake up at once.
pub(crate) fn ready_fd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes plain integers and returns a new descriptor or -1.
    let fd = cvt(unsafe { libc::eventfd(1, libc::EFD_CLOEXEC) })?;
    // SAFETY: freshly created descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A non-blocking, close-on-exec timerfd on `CLOCK_BOOTTIME` (which counts through suspend).
pub(crate) fn timerfd_boottime() -> io::Result<OwnedFd> {
    // SAFETY: timerfd_create takes plain integers and returns a new descriptor or -1.
    let fd = cvt(unsafe { libc::timerfd_create(libc::CLOCK_BOOTTIME, libc::TFD_CLOEXEC | libc::TFD_NONBLOCK) })?;
    // SAFETY: freshly created descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Arms `timer` to expire once, when its clock reads `deadline_ns` (at once if that has passed).
pub(crate) fn timerfd_set_absolute(timer: &OwnedFd, deadline_ns: u64) -> io::Result<()> {
    // An all-zero `it_value` would disarm the timer instead; no clock reads 0 ns after boot.
    let deadline_ns = deadline_ns.max(1);
    let spec = libc::itimerspec {
        it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
        it_value: libc::timespec {
            tv_sec: (deadline_ns / 1_000_000_000).min(libc::time_t::MAX as u64) as libc::time_t,
            tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
        },
    };
    // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
    let ret = unsafe { libc::timerfd_settime(timer.as_raw_fd(), libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
    cvt(ret).map(drop)
}

/// Consumes a pending expiry of a non-blocking timerfd, if any.
pub(crate) fn timerfd_drain(timer: &OwnedFd) {
    let mut expirations = [0u8; 8];
    // EAGAIN (nothing pending) is the common case; nothing else can go wrong that matters here.
    let _ = read_fd(timer.as_raw_fd(), &mut expirations);
}

/// `renameat2(RENAME_NOREPLACE)`: never clobbers an existing target, even an empty directory.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let from = path_cstring(from)?;
    let to = path_cstring(to)?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let ret = unsafe {
        libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE)
    };
    cvt_long(ret).map(drop)
}

/// `pipe2(flags)`: returns (read end, write end).
pub(crate) fn pipe(flags: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), flags) })?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `kill(pid, sig)`; `pid` may be negative to address a process group.
pub(crate) fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes plain integers.
    cvt(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// `write(2)` of the whole buffer, retrying on EINTR and short writes.
pub(crate) fn write_all_fd(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid readable slice of the given length.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// `read(2)` into `buf`, retrying on EINTR; Ok(0) is end of file.
pub(crate) fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a valid writable slice of the given length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `read(2)` into possibly uninitialised memory, retrying on EINTR; returns the bytes read
/// (empty at end of file).
pub(crate) fn read_uninit(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<&[u8]> {
    loop {
        // SAFETY: `buf` is valid for writes of its length; read never reads from it.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            // SAFETY: the kernel initialised the first `n` (<= len) bytes.
            return Ok(unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A raw `clone(flags, NULL, NULL, NULL, 0)`: like `fork` (the child runs on a copy of the
/// caller's stack and returns 0 here), but `flags` can ask for new namespaces, which glibc's
/// `fork` cannot. Returns the child's pid (in the caller's PID namespace) to the parent.
///
/// # Safety
/// As for `fork` in a single-threaded process. In addition glibc's fork hooks do not run, so
/// the child's thread descriptor still carries the parent's tid: the child must not use
/// anything that relies on it (`raise`/`abort`, `pthread_kill`, error-checking or recursive
/// pthread mutexes) — it should do plain syscalls and leave with `_exit`.
pub(crate) unsafe fn clone_fork(flags: libc::c_ulong) -> io::Result<libc::pid_t> {
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: a NULL stack makes the child continue on a copy-on-write copy of ours, exactly
    // like fork; no tid pointers or TLS are passed. The caller vouches for the rest.
    let ret = unsafe { libc::syscall(libc::SYS_clone, flags, null, null, null, 0 as libc::c_ulong) };
    cvt_long(ret).map(|pid| pid as libc::pid_t)
}

/// `fcntl(F_SETFL)`: sets or clears `O_NONBLOCK` on an open descriptor.
pub(crate) fn set_nonblocking(fd: RawFd, nonblocking: bool) -> io::Result<()> {
    // SAFETY: F_GETFL takes no third argument and only reads the descriptor's flags; an invalid
    // descriptor is reported as EBADF.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let flags = if nonblocking { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
    // SAFETY: F_SETFL takes an integer flag set; no memory is passed.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }).map(drop)
}

/// `poll(2)` on `fds` (entries with a negative fd are ignored); returns how many are ready, 0
/// on timeout. `timeout_ms < 0` waits forever.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, writable array of exactly `fds.len()` pollfds for the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    cvt(n).map(|n| n as usize)
}

/// `waitpid(pid, WNOHANG)`: the wait status if `pid` (a child of ours) has ended and was reaped
/// now, `None` if it still runs (or is not our child).
pub(crate) fn try_reap(pid: libc::pid_t) -> Option<libc::c_int> {
    let mut status = 0;
    // SAFETY: waitpid writes the status into a valid local; no other memory is involved.
    let ret = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    (ret == pid && pid > 0).then_some(status)
}

/// Blocking `waitpid(pid)`, retried on EINTR; the status is not needed.
pub(crate) fn reap_blocking(pid: libc::pid_t) {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into a valid local; no other memory is involved.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// A child's exit, if it has exited, without reaping it (`waitid(WNOWAIT)`): `(si_code,
/// si_status)`.
pub(crate) fn peek_exit(pid: libc::pid_t) -> Option<(libc::c_int, libc::c_int)> {
    // SAFETY: siginfo_t is a plain C struct (integers and a union of integers and pointers), for
    // which all-zero bytes are a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: `info` is a valid, writable siginfo_t for the duration of the call.
    let ret = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) };
    // SAFETY: si_pid and si_status read the SIGCHLD members of the union, which waitid fills in
    // on success; after WNOHANG found nothing they are still the zeros written above.
    let (child, status) = unsafe { (info.si_pid(), info.si_status()) };
    (ret == 0 && child != 0).then_some((info.si_code, status))
}

/// `setpgid(pid, pgid)`; `(0, 0)` makes the caller a group leader.
pub(crate) fn setpgid(pid: libc::pid_t, pgid: libc::pid_t) -> io::Result<()> {
    // SAFETY: setpgid takes plain integers and touches no memory of ours.
    cvt(unsafe { libc::setpgid(pid, pgid) }).map(drop)
}

/// `setsid()`: a session (and process group) of the caller's own.
pub(crate) fn setsid() -> io::Result<()> {
    // SAFETY: setsid takes no arguments and only changes this process's session.
    cvt(unsafe { libc::setsid() }).map(drop)
}

/// `close_range(first, ~0, 0)`: closes every descriptor from `first` on. The caller must own
/// none of them any more (an `OwnedFd` among them would later close a recycled number).
pub(crate) fn close_from(first: libc::c_uint) -> io::Result<()> {
    // SAFETY: close_range takes integers and only closes descriptors; the caller vouches that no
    // live Rust object owns one of them.
    cvt_long(unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0 as libc::c_uint) }).map(drop)
}

/// `dup2(from, to)`: `to` atomically becomes a copy of `from`.
pub(crate) fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 takes plain descriptor numbers; it closes `to` first, which the caller owns.
    cvt(unsafe { libc::dup2(from, to) }).map(drop)
}

/// Becomes `uid`:`gid` with no supplementary groups: `setgroups(0)`, `setresgid`, `setresuid`,
/// in that order (after the uid switch no group change is allowed), each checked. Raw system
/// calls, which change only the calling thread: glibc's wrappers would broadcast to every
/// thread, which a fork or clone child (the only callers, single-threaded) must not attempt.
/// Async-signal-safe and allocation-free.
pub(crate) fn drop_to_user(uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: setgroups with a count of 0 reads no memory; setresgid and setresuid take plain
    // integers.
    unsafe {
        cvt_long(libc::syscall(libc::SYS_setgroups, 0 as libc::c_long, std::ptr::null::<libc::gid_t>()))?;
        cvt_long(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
        cvt_long(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
    }
    Ok(())
}

/// `prctl(PR_SET_DUMPABLE, 0)`: no core dumps, and no `/proc/<pid>/mem` or ptrace for peers.
pub(crate) fn set_not_dumpable() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; PR_SET_DUMPABLE reads no memory.
    cvt(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }).map(drop)
}

/// A signal set holding exactly `signals`.
pub(crate) fn sigset(signals: &[libc::c_int]) -> io::Result<libc::sigset_t> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the whole set it is pointed at.
    cvt(unsafe { libc::sigemptyset(set.as_mut_ptr()) })?;
    for &sig in signals {
        // SAFETY: the set was initialised above; an invalid signal number is reported as EINVAL.
        cvt(unsafe { libc::sigaddset(set.as_mut_ptr(), sig) })?;
    }
    // SAFETY: sigemptyset succeeded, so the set is initialised.
    Ok(unsafe { set.assume_init() })
}

/// `sigprocmask(SIG_BLOCK, set)`.
pub(crate) fn block_signals(set: &libc::sigset_t) -> io::Result<()> {
    // SAFETY: `set` is an initialised sigset; the old mask is not asked for (NULL).
    cvt(unsafe { libc::sigprocmask(libc::SIG_BLOCK, set, std::ptr::null_mut()) }).map(drop)
}

/// A new non-blocking, close-on-exec signalfd for `set` (which must be blocked to be read).
pub(crate) fn signalfd(set: &libc::sigset_t) -> io::Result<OwnedFd> {
    // SAFETY: -1 asks for a new descriptor; `set` is an initialised sigset read during the call.
    let fd = cvt(unsafe { libc::signalfd(-1, set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: freshly created descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads one pending signal from a non-blocking signalfd: its number, or `Ok(None)` if none is
/// pending.
pub(crate) fn read_signal(signal_fd: &OwnedFd) -> io::Result<Option<libc::c_int>> {
    let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    loop {
        // SAFETY: `info` has room for one signalfd_siginfo, the unit a signalfd is read in.
        let n = unsafe { libc::read(signal_fd.as_raw_fd(), info.as_mut_ptr().cast(), size) };
        if n == size as isize {
            // SAFETY: the kernel filled in the whole struct (a signalfd never reads short).
            return Ok(Some(unsafe { info.assume_init() }.ssi_signo as libc::c_int));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted if n < 0 => continue,
            io::ErrorKind::WouldBlock if n < 0 => return Ok(None),
            _ if n < 0 => return Err(e),
            _ => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read from a signalfd")),
        }
    }
}

/// Fills `buf` from the kernel's random pool (`getrandom`, blocking only until it is seeded).
pub(crate) fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        // SAFETY: `rest` is a valid, writable slice of exactly the length passed.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += n as usize;
    }
    Ok(())
}

/// The size of a memory page, if the system says.
pub(crate) fn page_size() -> Option<usize> {
    // SAFETY: sysconf takes an integer and has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => Some(n as usize),
        _ => None,
    }
}

/// Gives free heap memory back to the kernel (glibc only; elsewhere a no-op).
pub(crate) fn malloc_trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases memory the allocator holds as free; no live allocation
    // is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}
