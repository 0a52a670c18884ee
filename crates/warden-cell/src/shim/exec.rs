//! Exec'ing a workload: the [`ExecPlan`] built before `fork` (so that the child allocates
//! nothing), the forked child's side ([`exec_child`]: cgroups, process group, signal state,
//! stdio, workdir, then `execvp`), and the error pipe on which a child that failed reports
//! `(stage, errno)`. The cell's init uses all of it too, for its PID 2.

use crate::cell::CellConfig;
use crate::shim::signals::KERNEL_NSIG;
use crate::sys::{self, path_cstring};
use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

/// `CAP_SYS_PTRACE` from `<linux/capability.h>`; libc does not export capability numbers.
const CAP_SYS_PTRACE: libc::c_ulong = 19;

/// Where, in a forked child, setting up the workload failed; sent as `(stage, errno)` over the
/// error pipe. An isolated cell's init sends `STAGE_OK` once the workload was exec'd (a plain
/// workload's successful exec is an EOF instead), or one of [`crate::shim::cell_init`]'s stages.
pub(crate) const STAGE_OK: i32 = 0;
pub(crate) const STAGE_STDIO: i32 = 1;
pub(crate) const STAGE_CHDIR: i32 = 2;
pub(crate) const STAGE_EXEC: i32 = 3;
pub(crate) const STAGE_CGROUP: i32 = 4;
pub(crate) const STAGE_CAPS: i32 = 5;
pub(crate) const STAGE_PDEATHSIG: i32 = 6;
pub(crate) const STAGE_SETUID: i32 = 7;
pub(crate) const STAGE_NO_NEW_PRIVS: i32 = 20;

/// Why a cell's config cannot be turned into an [`ExecPlan`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExecPlanError {
    #[error("argv is empty")]
    EmptyArgv,
    #[error("argv contains a NUL byte")]
    NulInArgv,
    #[error("environment contains a NUL byte")]
    NulInEnv,
    #[error("workdir")]
    Workdir(#[source] io::Error),
    /// A shim that is not root cannot become another user; it runs cells as itself only.
    #[error("the cell asks for uid {uid} gid {gid}, but warden runs as uid {own_uid} gid {own_gid} and cannot switch users (run warden as root, or leave `user` out)")]
    CannotSwitchUser { uid: u32, gid: u32, own_uid: u32, own_gid: u32 },
}

/// Who the forked child becomes before exec, and whether it sets `no_new_privs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Credentials {
    /// `setgroups(0)`, `setgid`, `setuid` to these ids; `None` keeps the shim's (an OCI
    /// runtime, which must stay root; a shim that is not root and runs cells as itself).
    pub switch_to: Option<(libc::uid_t, libc::gid_t)>,
    pub no_new_privs: bool,
}

impl Credentials {
    /// The runtime of an OCI cell: runs as the shim does (the container's user is its config's).
    pub(crate) const UNCHANGED: Credentials = Credentials { switch_to: None, no_new_privs: false };

    /// For a workload that must run as `uid`:`gid` with no supplementary groups and
    /// `no_new_privs`. A shim that is root switches; one that is not may only run the cell as
    /// itself.
    pub(crate) fn workload(uid: u32, gid: u32) -> Result<Credentials, ExecPlanError> {
        // SAFETY: geteuid/getegid take no arguments and cannot fail.
        let (own_uid, own_gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if own_uid == 0 {
            return Ok(Credentials { switch_to: Some((uid, gid)), no_new_privs: true });
        }
        if (uid, gid) != (own_uid, own_gid) {
            return Err(ExecPlanError::CannotSwitchUser { uid, gid, own_uid, own_gid });
        }
        Ok(Credentials { switch_to: None, no_new_privs: true })
    }
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
    creds: Credentials,
}

impl ExecPlan {
    pub(crate) fn new(config: &CellConfig, creds: Credentials) -> Result<ExecPlan, ExecPlanError> {
        if config.argv.is_empty() {
            return Err(ExecPlanError::EmptyArgv);
        }
        let argv = config
            .argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ExecPlanError::NulInArgv)?;

        // The cell's own variables, then the shim's (i.e. the supervisor's) environment minus
        // whatever the cell overrides. Inherited entries are used in place: copying them
        // would fragment the heap for the shim's whole life.
        let own = [("WARDEN_CELL_ID", config.cell_id.as_str()), ("WARDEN_WORKLOAD_ID", config.workload_id.as_str())];
        let overrides =
            config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).filter(|(k, _)| !own.iter().any(|(o, _)| o == k)).chain(own);
        let envp = overrides
            .map(|(k, v)| CString::new(format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ExecPlanError::NulInEnv)?;
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
            Some(dir) => Some(path_cstring(dir).map_err(ExecPlanError::Workdir)?),
            None => None,
        };
        let argv_ptrs = argv.iter().map(|c| c.as_ptr()).chain([std::ptr::null()]).collect();
        let mut empty_mask = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset fully initialises the set.
        let empty_mask = unsafe {
            libc::sigemptyset(empty_mask.as_mut_ptr());
            empty_mask.assume_init()
        };
        Ok(ExecPlan { argv, argv_ptrs, _envp: envp, envp_ptrs, workdir, empty_mask, creds })
    }

    pub(crate) fn program(&self) -> String {
        self.argv[0].to_string_lossy().into_owned()
    }

    /// The ids the workload switches to, for error messages.
    pub(crate) fn target_ids(&self) -> String {
        match self.creds.switch_to {
            Some((uid, gid)) => format!("uid {uid} gid {gid}"),
            None => "its own user".to_string(),
        }
    }

    pub(crate) fn workdir_display(&self) -> String {
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

/// The forked child: becomes the workload. Only async-signal-safe calls on pre-built data: the
/// child of a fork must not allocate or take locks (another thread of the parent may have held
/// them at the fork, and the init's clone child skipped glibc's fork hooks altogether).
///
/// # Safety
/// Must only be called in the child right after `fork` (or the init's clone); `plan` must
/// outlive the call, and `devnull`, `log_write` and `err_write` must be open descriptors.
pub(crate) unsafe fn exec_child(plan: &ExecPlan, devnull: RawFd, log_write: RawFd, err_write: RawFd, opts: &ChildOpts<'_>) -> ! {
    for &fd in opts.cgroup_procs {
        // "0" moves the writing process itself.
        if sys::write_all_fd(fd, b"0").is_err() {
            child_fail(err_write, STAGE_CGROUP);
        }
    }
    // Own process group, so a stop signal reaches the workload and all its descendants. (The
    // shim does the same from its side; whoever is first wins.)
    let _ = sys::setpgid(0, 0);
    // Ignored signals survive exec (Rust ignores SIGPIPE; the shim blocks several): the
    // workload must start with a pristine signal state.
    for sig in 1..=KERNEL_NSIG {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: SIG_DFL installs no handler of ours, so no Rust code can run on a signal;
            // numbers the kernel does not know fail harmlessly with EINVAL.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    // SAFETY: `empty_mask` is an initialised sigset owned by `plan`; the old mask is not asked for.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &plan.empty_mask, std::ptr::null_mut()) };
    // SAFETY: prctl with integer arguments only; PR_CAPBSET_DROP reads no memory. (Before the
    // user switch: a non-root user no longer holds CAP_SETPCAP.)
    if opts.drop_ptrace && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0) } < 0 {
        child_fail(err_write, STAGE_CAPS);
    }
    // The cell's user: no supplementary groups (root's would survive a plain setuid), then the
    // group, then the user — in that order, since after setuid no setgid is allowed. Each
    // result is checked: a failure is a failed start, never a workload left running as root.
    if let Some((uid, gid)) = plan.creds.switch_to {
        if sys::drop_to_user(uid, gid).is_err() {
            child_fail(err_write, STAGE_SETUID);
        }
    }
    // No setuid binary or file capability can raise the workload's privileges again.
    // SAFETY: prctl with integer arguments only.
    if plan.creds.no_new_privs && unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
        child_fail(err_write, STAGE_NO_NEW_PRIVS);
    }
    // After the user switch, which clears the parent-death signal.
    if opts.parent_death != 0 {
        // SAFETY: prctl with integer arguments only; PR_SET_PDEATHSIG reads no memory.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) } < 0 {
            child_fail(err_write, STAGE_PDEATHSIG);
        }
        // The shim died before the prctl: nothing would ever end us now.
        // SAFETY: getppid takes no arguments and cannot fail.
        if unsafe { libc::getppid() } != opts.parent_death {
            // SAFETY: _exit ends this child at once, running none of the shim's cleanup.
            unsafe { libc::_exit(127) };
        }
    }
    if sys::dup2(devnull, libc::STDIN_FILENO).is_err()
        || sys::dup2(log_write, libc::STDOUT_FILENO).is_err()
        || sys::dup2(log_write, libc::STDERR_FILENO).is_err()
    {
        child_fail(err_write, STAGE_STDIO);
    }
    if let Some(dir) = &plan.workdir {
        // SAFETY: `dir` is a NUL-terminated string owned by `plan`, alive for the call.
        if unsafe { libc::chdir(dir.as_ptr()) } < 0 {
            child_fail(err_write, STAGE_CHDIR);
        }
    }
    // Every descriptor >= 3 is opened close-on-exec already; this makes sure of it, so the
    // workload starts with exactly stdin, stdout and stderr (Linux 5.11+; else a no-op).
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC closes nothing now; it only marks
    // descriptors to be closed by the exec below, when no Rust object of ours survives anyway.
    unsafe { libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    // Assigning `environ` (rather than execvpe) makes the PATH lookup honour the cell's env.
    // SAFETY: this process is single-threaded (a fork child), so nothing else reads or writes
    // `environ` concurrently; `envp_ptrs` is a NULL-terminated array of C strings owned by
    // `plan` (or by the C library's original environment), alive until the exec replaces us.
    unsafe { std::ptr::addr_of_mut!(environ).write(plan.envp_ptrs.as_ptr()) };
    // SAFETY: `argv_ptrs` is a NULL-terminated array of NUL-terminated strings owned by `plan`,
    // and `argv_ptrs[0]` is the program (ExecPlan::new refuses an empty argv).
    unsafe { libc::execvp(plan.argv_ptrs[0], plan.argv_ptrs.as_ptr()) };
    child_fail(err_write, STAGE_EXEC)
}

/// Sends `(stage, errno)` to the parent and exits without running any Rust or atexit cleanup.
/// Meant for a forked child only: allocation-free and async-signal-safe.
fn child_fail(err_write: RawFd, stage: i32) -> ! {
    let errno = io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&stage.to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // 8 bytes, less than PIPE_BUF: all or nothing. A dead parent needs no message.
    let _ = sys::write_all_fd(err_write, &msg);
    // SAFETY: _exit ends the process at once; it runs none of the parent's cleanup (atexit
    // handlers, stdio buffers shared with the parent), which is why it is used here.
    unsafe { libc::_exit(127) }
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
