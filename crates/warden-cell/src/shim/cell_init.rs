//! The init of an isolated cell: PID 1 of the cell's new PID namespace. It is the shim's own
//! code running in the shim's `clone` child (no exec), so it costs only the pages it dirties.
//!
//! It prepares the namespace (private mounts, a fresh `/proc`, the cell id as hostname), joins
//! the cell's cgroups, starts the workload as PID 2, reaps every zombie, forwards SIGTERM,
//! SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 to the workload's process group, and when PID 2 ends writes the authenticated exit
//! report and exits — which makes the kernel kill whatever is left in the namespace.
//!
//! The report key arrives over a pipe and never leaves this process's memory: the init is not
//! dumpable and the workload loses CAP_SYS_PTRACE, so `/proc/1/mem`, `/proc/1/environ`,
//! `/proc/1/fd` and ptrace are all closed to it, and the report pipe is close-on-exec.

use crate::exit_report::{self, Key, Outcome, KEY_LEN, MAX_REPORT};
use crate::shim::exec::{exec_child, read_child_error, ChildOpts, ExecPlan, STAGE_OK};
use crate::sys;
use std::os::fd::RawFd;

/// Stages of the init's own set-up, reported to the shim like the workload's exec stages.
pub(crate) const STAGE_INIT_PRIVATE: i32 = 10;
pub(crate) const STAGE_INIT_PROC: i32 = 11;
pub(crate) const STAGE_INIT_HOSTNAME: i32 = 12;
pub(crate) const STAGE_INIT_CGROUP: i32 = 13;
pub(crate) const STAGE_INIT_KEY: i32 = 14;
pub(crate) const STAGE_INIT_FORK: i32 = 15;
pub(crate) const STAGE_INIT_PRCTL: i32 = 16;
pub(crate) const STAGE_INIT_USER: i32 = 17;

/// Most descriptors the init keeps during set-up: 5 of its own plus one per cgroup hierarchy.
const MAX_KEEP: usize = 12;

/// Everything the init needs, prepared by the shim before `clone` so the init allocates nothing.
pub(crate) struct InitCtx<'a> {
    pub plan: &'a ExecPlan,
    pub devnull: RawFd,
    pub log_write: RawFd,
    /// To the shim: `(stage, errno)`, `STAGE_OK` once the workload was exec'd.
    pub err_write: RawFd,
    pub key_read: RawFd,
    /// Close-on-exec, so the workload never holds it.
    pub report_write: RawFd,
    pub cgroup_procs: &'a [RawFd],
    /// At most 64 bytes (`HOST_NAME_MAX`).
    pub hostname: &'a [u8],
    pub cell_id: &'a [u8],
    /// The signals the init waits for (SIGCHLD, and SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2 to
    /// forward); blocked for its whole life.
    pub wait_set: libc::sigset_t,
    /// The init was cloned into a new user namespace, which the shim maps (root inside = the
    /// cell's user outside) before it sends the key.
    pub userns: bool,
}

/// The init's whole life.
///
/// # Safety
/// Only in the child of [`crate::sys::clone_fork`] from a single-threaded shim; `ctx` and what
/// it points to were built before the clone. Never returns into the shim's code.
pub(crate) unsafe fn init_main(ctx: &InitCtx<'_>) -> ! {
    let mut key: Key = [0; KEY_LEN];
    // SAFETY: forwarded from the caller; `key` is ours.
    match unsafe { set_up(ctx, &mut key) } {
        // SAFETY: as above; `workload` is our child.
        Ok(workload) => unsafe { watch(ctx, &key, workload) },
        Err((stage, errno)) => {
            send_stage(ctx.err_write, stage, errno);
            // SAFETY: _exit ends this process without running the shim's cleanup.
            unsafe { libc::_exit(1) }
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

fn send_stage(fd: RawFd, stage: i32, errno: i32) {
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&stage.to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // 8 bytes < PIPE_BUF, so never torn; a dead shim needs no message.
    let _ = sys::write_all_fd(fd, &msg);
}

/// Set-up as PID 1 up to a running workload; returns the workload's pid (2).
///
/// # Safety
/// As [`init_main`].
unsafe fn set_up(ctx: &InitCtx<'_>, key: &mut Key) -> Result<libc::pid_t, (i32, i32)> {
    let check = |ret: libc::c_int, stage: i32| if ret < 0 { Err((stage, errno())) } else { Ok(()) };
    let stage = |stage: i32| move |e: std::io::Error| (stage, e.raw_os_error().unwrap_or(libc::EIO));
    // The cell must not outlive its shim: nobody would record its end.
    // SAFETY: prctl with integer arguments only; PR_SET_PDEATHSIG reads no memory.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) }, STAGE_INIT_PRCTL)?;
    // Before the key arrives: no /proc/1/mem, /proc/1/environ or ptrace for non-root-
    // equivalent peers, and no core dump that could carry the key.
    sys::set_not_dumpable().map_err(stage(STAGE_INIT_PRCTL))?;
    // A group of its own, so the supervisor's `kill(-pid)` of a lost cell reaches it. (As the
    // new namespace's PID 1 it is not yet a group leader; this cannot fail.)
    let _ = sys::setpgid(0, 0);
    // SAFETY: `wait_set` is an initialised sigset the shim built; the old mask is not asked for.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &ctx.wait_set, std::ptr::null_mut()) };

    // Nothing of the shim's may stay open here: its lock above all (a held flock would
    // make a dead shim look alive), the handshake pipe, the signalfd, the pipes' other ends.
    let mut keep = [-1; MAX_KEEP];
    let mut n = 0;
    for fd in [ctx.devnull, ctx.log_write, ctx.err_write, ctx.key_read, ctx.report_write].iter().chain(ctx.cgroup_procs) {
        if n < MAX_KEEP {
            keep[n] = *fd;
            n += 1;
        }
    }
    close_all_but(&mut keep[..n]);
    let _ = sys::dup2(ctx.devnull, libc::STDIN_FILENO);
    let _ = sys::dup2(ctx.devnull, libc::STDOUT_FILENO);
    // stderr stays the shim's `shim.err`, for the init's own diagnostics.

    // The key: EOF here means the shim died before sending it.
    let mut got = 0;
    while got < KEY_LEN {
        match sys::read_fd(ctx.key_read, &mut key[got..]) {
            Ok(0) => return Err((STAGE_INIT_KEY, libc::EPIPE)),
            Ok(n) => got += n,
            Err(e) => return Err(stage(STAGE_INIT_KEY)(e)),
        }
    }
    // SAFETY: the key pipe's read end, inherited by the clone and owned by no Rust object here;
    // closed once.
    unsafe { libc::close(ctx.key_read) };

    if ctx.userns {
        // The key came after the shim wrote our uid and gid maps. Until now this process kept
        // the shim's host ids (root, unmapped in here); now it becomes the namespace's root,
        // i.e. the cell's unprivileged user on the host, keeping its capabilities inside only.
        sys::drop_to_user(0, 0).map_err(stage(STAGE_INIT_USER))?;
        // Changing ids cleared both: the parent-death signal and (per fs.suid_dumpable) the
        // dumpable flag are set again. (A shim dead in between leaves the init waiting for a
        // workload that ends with the cell; its SIGKILL by the supervisor still ends it.)
        // SAFETY: prctl with integer arguments only.
        check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) }, STAGE_INIT_PRCTL)?;
        sys::set_not_dumpable().map_err(stage(STAGE_INIT_PRCTL))?;
    }

    // Joined first, so everything below (mount, the workload) is charged to the cell.
    for &fd in ctx.cgroup_procs {
        sys::write_all_fd(fd, b"0").map_err(stage(STAGE_INIT_CGROUP))?;
        // SAFETY: the shim's `cgroup.procs` descriptor, inherited by the clone; no Rust object
        // in this process owns it, and it is closed once.
        unsafe { libc::close(fd) };
    }
    // Our mounts must not propagate back to the host (or anywhere else).
    // SAFETY: NULL source, type and data are allowed for a propagation change; the target is a
    // NUL-terminated literal.
    let private = unsafe {
        libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null())
    };
    check(private, STAGE_INIT_PRIVATE)?;
    // A /proc of this PID namespace: the workload sees itself as 2 and nothing of the host.
    // SAFETY: source, target and type are NUL-terminated literals; NULL data is allowed.
    let proc = unsafe {
        libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    check(proc, STAGE_INIT_PROC)?;
    // SAFETY: `hostname` is a valid slice of the length passed (the shim cut it to 64 bytes).
    check(unsafe { libc::sethostname(ctx.hostname.as_ptr().cast(), ctx.hostname.len()) }, STAGE_INIT_HOSTNAME)?;

    let mut exec_err = [0; 2];
    // SAFETY: `exec_err` has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(exec_err.as_mut_ptr(), libc::O_CLOEXEC) }, STAGE_INIT_FORK)?;
    // SAFETY: the init is single-threaded; the child only runs `exec_child`, which is
    // async-signal-safe and never returns.
    let workload = unsafe { libc::fork() };
    if workload < 0 {
        return Err((STAGE_INIT_FORK, errno()));
    }
    if workload == 0 {
        // The workload must not get to the key: no ptrace capability for it, ever.
        let opts = ChildOpts { cgroup_procs: &[], drop_ptrace: true, parent_death: 0 };
        // SAFETY: we are the freshly forked child; `ctx.plan` was built before the clone and the
        // descriptors are open here.
        unsafe { exec_child(ctx.plan, ctx.devnull, ctx.log_write, exec_err[1], &opts) }
    }
    // As in the shim: no window in which a forwarded signal misses the new group.
    let _ = sys::setpgid(workload, workload);
    // SAFETY: our write end of the pipe made above, owned by no Rust object; closed once.
    unsafe { libc::close(exec_err[1]) };
    let failure = read_child_error(exec_err[0]);
    // SAFETY: the read end of that pipe, likewise.
    unsafe { libc::close(exec_err[0]) };
    if let Some(failure) = failure {
        sys::reap_blocking(workload);
        return Err(failure);
    }
    // SAFETY: the shim's descriptors inherited by the clone, owned by no Rust object here and
    // needed no more (the workload has its own copies); each closed once.
    unsafe {
        libc::close(ctx.log_write);
        libc::close(ctx.devnull);
    }
    send_stage(ctx.err_write, STAGE_OK, 0);
    // SAFETY: as above.
    unsafe { libc::close(ctx.err_write) };
    Ok(workload)
}

/// Closes every descriptor >= 3 not in `keep` (which gets sorted).
fn close_all_but(keep: &mut [RawFd]) {
    keep.sort_unstable();
    let mut next: libc::c_uint = 3;
    for &fd in keep.iter() {
        let Ok(fd) = libc::c_uint::try_from(fd) else { continue };
        if fd >= next {
            if fd > next {
                // SAFETY: closes only descriptors this process owns and no longer needs.
                unsafe { libc::syscall(libc::SYS_close_range, next, fd - 1, 0 as libc::c_uint) };
            }
            next = fd + 1;
        }
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, next, libc::c_uint::MAX, 0 as libc::c_uint) };
}

/// PID 1's loop: reap, forward, and report PID 2's end.
///
/// # Safety
/// As [`init_main`]; `workload` is this process's child.
unsafe fn watch(ctx: &InitCtx<'_>, key: &Key, workload: libc::pid_t) -> ! {
    loop {
        // SAFETY: the set is initialised and blocked, so the signals queue up for us here.
        let sig = unsafe { libc::sigwaitinfo(&ctx.wait_set, std::ptr::null_mut()) };
        match sig {
            libc::SIGCHLD => loop {
                let mut status = 0;
                // SAFETY: waitpid writes into a valid local. As PID 1 we reap every orphan.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid <= 0 {
                    break;
                }
                if pid == workload {
                    report_and_exit(ctx, key, status);
                }
            },
            // The workload is unreaped, so its group id cannot have been reused.
            // SAFETY: kill takes plain integers.
            // SIGUSR1 is how a hot standby learns it was promoted; SIGHUP and SIGUSR2 are the
            // usual reload signals.
            libc::SIGTERM | libc::SIGINT | libc::SIGHUP | libc::SIGUSR1 | libc::SIGUSR2 => unsafe {
                libc::kill(-workload, sig);
            },
            _ => {}
        }
    }
}

fn report_and_exit(ctx: &InitCtx<'_>, key: &Key, status: libc::c_int) -> ! {
    let outcome = if libc::WIFSIGNALED(status) {
        Outcome::Signaled(libc::WTERMSIG(status))
    } else {
        Outcome::Exited(libc::WEXITSTATUS(status))
    };
    let mut buf = [0u8; MAX_REPORT];
    if let Some(len) = exit_report::encode(&mut buf, key, ctx.cell_id, outcome) {
        loop {
            // SAFETY: one write of a local buffer; under PIPE_BUF, so all or nothing.
            let n = unsafe { libc::write(ctx.report_write, buf.as_ptr().cast(), len) };
            if n >= 0 || errno() != libc::EINTR {
                break;
            }
        }
    }
    // Exiting as PID 1 makes the kernel SIGKILL everything else in the namespace.
    // SAFETY: _exit never returns and runs none of the shim's cleanup.
    unsafe { libc::_exit(0) }
}
