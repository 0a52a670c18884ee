//! What every warden-cell test file shares: waiting on cells, reading their logs, telling a live
//! process from a dead one, and (in `rootfs`) the busybox root filesystem the OCI tests run on.

#![allow(dead_code)] // each test file is its own crate and uses a different part of this

pub mod rootfs;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use warden_cell::CellConfig;

/// How long any one cell may take to end in these tests before it counts as hung.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// True if `fd` turned readable within `timeout` (a pidfd does when its process ends).
pub fn poll_readable(fd: &OwnedFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    n == 1
}

pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `wait_until` with the suite's `EXIT_TIMEOUT`.
pub fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    wait_until(what, EXIT_TIMEOUT, cond)
}

/// The cell's log so far. Lossy: some workloads here write random bytes to every fd they have.
pub fn read_log(cfg: &CellConfig) -> String {
    String::from_utf8_lossy(&std::fs::read(&cfg.log_path).unwrap_or_default()).into_owned()
}

/// Gone, or a zombie nobody reaped yet: either way no longer running.
pub fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat[stat.rfind(')').unwrap() + 1..].trim_start();
            state.starts_with('Z') || state.starts_with('X')
        }
    }
}

/// The directories of a process's cgroups, one per hierarchy, from `/proc/<pid>/cgroup` and the
/// cgroup mounts in `/proc/self/mountinfo` (v1, hybrid and v2 alike).
pub fn cgroup_dirs(pid: u32) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    // (fstype, super options, mount root, mount point)
    let mounts: Vec<(String, Vec<String>, String, String)> = mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            let fstype = *post.first()?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| {
                let opts = post.get(2).map(|o| o.split(',').map(String::from).collect()).unwrap_or_default();
                (fstype.to_string(), opts, pre[3].to_string(), pre[4].to_string())
            })
        })
        .collect();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("/proc/PID/cgroup");
    cgroups
        .lines()
        .filter_map(|line| {
            let mut it = line.splitn(3, ':');
            let (_, controllers, path) = (it.next()?, it.next()?, it.next()?);
            let mount = mounts.iter().find(|(fstype, opts, _, _)| {
                if controllers.is_empty() {
                    fstype == "cgroup2"
                } else {
                    fstype == "cgroup" && controllers.split(',').all(|c| opts.iter().any(|o| o == c))
                }
            })?;
            let rel = path.strip_prefix(mount.2.as_str()).unwrap_or(path).trim_start_matches('/');
            Some(Path::new(&mount.3).join(rel))
        })
        .collect()
}

/// A pidfd for `pid` (readable once the process has ended), or `None` if it is already gone.
pub fn pidfd(pid: u32) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: the kernel just handed us this descriptor; nothing else owns it.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Nanoseconds to milliseconds, signed: how far `t` is after `reference` (negative: before).
pub fn ms_after(t: u64, reference: u64) -> f64 {
    (t as f64 - reference as f64) / 1e6
}
