//! Thin, safe wrappers over the few Linux syscalls the backend and the shim need (flock, pidfd,
//! renameat2, pipes, clone, timerfd); each keeps its `unsafe` next to its SAFETY argument.

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
