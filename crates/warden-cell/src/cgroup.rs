//! Resource limits and teardown with cgroups, on whichever layout the host runs (v2, or v1 with
//! one hierarchy per controller): every cell gets its own cgroup(s) at
//! `<supervisor's cgroup>/warden/<cell_id>`, so its memory, CPU and process count can be capped,
//! an OOM kill can be told apart from any other SIGKILL, and nothing the cell started can outlive
//! it.
//!
//! Cgroups are created for *every* cell, not only for cells with limits: that is what gives OOM
//! detection (global OOM kills are counted in the victim's cgroup too) and a complete teardown
//! (a daemon that left the workload's process group is still in its cgroup). Without limits this
//! is best effort (an unprivileged supervisor simply runs cells without cgroups); with a limit,
//! failing to enforce it fails the start.
//!
//! The shim records the directories it created in `<cell_dir>/cgroups.json` before anything
//! joins them, so the supervisor can still clean up after a shim that died.

use crate::cell::CellLimits;
use crate::diag::{report, Chain};
use crate::durable::{read_json, write_json_atomic};
use crate::sys;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// CFS bandwidth period; quotas are expressed against it (`cpu.max "quota 100000"`).
const CPU_PERIOD_US: u64 = 100_000;

/// Name of the file in the cell dir that lists the cell's cgroups.
const RECORD: &str = "cgroups.json";

/// How long teardown keeps killing stragglers and retrying `rmdir` before it gives up (and
/// reports the leak) rather than keep a shim — or the supervisor's `inspect` — waiting forever
/// on, say, a process stuck in uninterruptible sleep.
const TEARDOWN_LIMIT: Duration = Duration::from_secs(3);

/// The controllers warden uses.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// Why a cell's cgroups could not be set up (created, limited, recorded or opened to join).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CgroupSetupError {
    #[error("read /proc/self/cgroup")]
    ReadOwnCgroup(#[source] io::Error),
    #[error("no v2 entry in /proc/self/cgroup")]
    NoV2Entry,
    #[error("no memory, cpu or pids cgroup hierarchy is mounted")]
    NoHierarchy,
    #[error("a {controller} limit was set but the {controller} cgroup controller is not available")]
    ControllerMissing { controller: &'static str },
    #[error("create {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "enable controllers in {} (cgroup v2 allows controllers only below a cgroup without processes of its own: run the supervisor in a delegated cgroup, in a leaf of its own)",
        dir.display()
    )]
    EnableControllers {
        dir: PathBuf,
        #[source]
        source: AttrWriteError,
    },
    #[error("set the cell's limits")]
    Limits(#[source] AttrWriteError),
    #[error("write {RECORD} in {}", cell_dir.display())]
    Record {
        cell_dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no free cgroup name for cell {cell_id}")]
    NoFreeName { cell_id: String },
    #[error("open {}", path.display())]
    OpenProcs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Why writing one cgroup attribute file (a limit, `cgroup.subtree_control`) failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttrWriteError {
    #[error("open {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("write {value:?} to {}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
}

/// Which cgroup layout the host runs, as detected from `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupLayout {
    /// The unified hierarchy, with the memory controller available at its root.
    V2 { root: PathBuf },
    /// Legacy (or hybrid) layout: one mount point per controller; `None` where the controller
    /// is not mounted at all.
    V1 { memory: Option<PathBuf>, cpu: Option<PathBuf>, pids: Option<PathBuf> },
}

impl fmt::Display for CgroupLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CgroupLayout::V2 { root } => write!(f, "cgroup v2 (unified) at {}", root.display()),
            CgroupLayout::V1 { memory, cpu, pids } => {
                let show = |p: &Option<PathBuf>| p.as_ref().map_or("not mounted".to_string(), |p| p.display().to_string());
                write!(f, "cgroup v1: memory {}, cpu {}, pids {}", show(memory), show(cpu), show(pids))
            }
        }
    }
}

/// Detects the host's cgroup layout: v2 when a cgroup2 mount offers the memory controller,
/// otherwise the v1 mount points of the memory, cpu and pids controllers (a hybrid host's
/// controller-less unified mount is ignored).
pub fn cgroup_layout() -> CgroupLayout {
    layout_from(&mounts())
}

/// One cgroup file system mount from `/proc/self/mountinfo`.
struct Mount {
    point: PathBuf,
    /// The hierarchy path mounted there (not `/` inside some containers).
    root: String,
    v2: bool,
    /// v1 only: the controllers bound to this hierarchy.
    controllers: Vec<String>,
    /// v1 only: every super option, so also controllers warden does not use and `name=...`.
    options: Vec<String>,
}

fn mounts() -> Vec<Mount> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines().filter_map(parse_mount).collect()
}

/// `36 35 98:0 /root /mnt/point rw,noatime master:1 - cgroup cgroup rw,memory`
fn parse_mount(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let root = unescape(l.nth(3)?);
    let point = unescape(l.next()?);
    let mut r = right.split(' ');
    let fstype = r.next()?;
    let _source = r.next()?;
    let options = r.next().unwrap_or("");
    match fstype {
        "cgroup2" => Some(Mount { point: PathBuf::from(point), root, v2: true, controllers: Vec::new(), options: Vec::new() }),
        "cgroup" => Some(Mount {
            point: PathBuf::from(point),
            root,
            v2: false,
            controllers: options.split(',').filter(|o| CONTROLLERS.contains(o)).map(str::to_string).collect(),
            options: options.split(',').map(str::to_string).collect(),
        }),
        _ => None,
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn v2_has_memory(point: &Path) -> bool {
    std::fs::read_to_string(point.join("cgroup.controllers")).is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
}

fn layout_from(mounts: &[Mount]) -> CgroupLayout {
    if let Some(m) = mounts.iter().find(|m| m.v2 && v2_has_memory(&m.point)) {
        return CgroupLayout::V2 { root: m.point.clone() };
    }
    let point = |c: &str| mounts.iter().find(|m| !m.v2 && m.controllers.iter().any(|x| x == c)).map(|m| m.point.clone());
    CgroupLayout::V1 { memory: point("memory"), cpu: point("cpu"), pids: point("pids") }
}

/// One of the cell's cgroup directories.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CgroupDir {
    /// Absolute path of the directory.
    path: PathBuf,
    /// The same cgroup as `/proc/PID/cgroup` names it, to check a process is really in it.
    proc_path: String,
    /// v1: the controller of this hierarchy (`/proc/PID/cgroup` line to compare); v2: empty.
    controller: String,
    /// Whether this directory carries the memory controller (OOM accounting lives there).
    memory: bool,
}

/// The cgroup(s) of one cell.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CellCgroups {
    v2: bool,
    dirs: Vec<CgroupDir>,
}

/// One hierarchy the cell needs a directory in, before the name is chosen.
struct Target {
    mount: PathBuf,
    /// `<mount>/<supervisor's cgroup>/warden`.
    parent: PathBuf,
    /// `/proc/self/cgroup` path of `parent`.
    proc_parent: String,
    controller: String,
    /// v1: the warden controllers served by this hierarchy; v2: all available ones.
    controllers: Vec<String>,
}

impl CellCgroups {
    /// Creates (and records in `cell_dir`) the cgroups for a cell and writes its limits.
    /// `Ok(None)`: no cgroups, which is only allowed when `limits` asks for nothing.
    pub(crate) fn create(cell_dir: &Path, cell_id: &str, limits: &CellLimits) -> Result<Option<CellCgroups>, CgroupSetupError> {
        let wanted = limits.memory_max_bytes.is_some() || limits.cpu_max_millicores.is_some() || limits.pids_max.is_some();
        match Self::try_create(cell_dir, cell_id, limits) {
            Ok(cgroups) => Ok(Some(cgroups)),
            Err(e) if wanted => Err(e),
            Err(e) => {
                report(format_args!("running without a cgroup (no limits were asked for): {}", Chain(&e)));
                Ok(None)
            }
        }
    }

    fn try_create(cell_dir: &Path, cell_id: &str, limits: &CellLimits) -> Result<CellCgroups, CgroupSetupError> {
        let mounts = mounts();
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(CgroupSetupError::ReadOwnCgroup)?;
        let (v2, targets) = targets(&mounts, &own)?;
        for (controller, set) in [
            ("memory", limits.memory_max_bytes.is_some()),
            ("cpu", limits.cpu_max_millicores.is_some()),
            ("pids", limits.pids_max.is_some()),
        ] {
            if set && !targets.iter().any(|t| t.controllers.iter().any(|c| c == controller)) {
                return Err(CgroupSetupError::ControllerMissing { controller });
            }
        }
        for t in &targets {
            std::fs::create_dir_all(&t.parent)
                .map_err(|source| CgroupSetupError::CreateDir { path: t.parent.clone(), source })?;
            if v2 {
                enable_v2_controllers(&t.parent, &t.controllers)?;
            }
        }
        let cgroups = make_dirs(cell_dir, cell_id, v2, &targets)?;
        if let Err(e) = cgroups.write_limits(limits) {
            cgroups.remove();
            return Err(CgroupSetupError::Limits(e));
        }
        Ok(cgroups)
    }

    /// Opens every directory's `cgroup.procs` for writing; a process joins the cell by writing
    /// `0` to each (async-signal-safe, so the forked child can do it right before `exec`).
    pub(crate) fn open_procs(&self) -> Result<Vec<OwnedFd>, CgroupSetupError> {
        self.dirs
            .iter()
            .map(|d| {
                let path = d.path.join("cgroup.procs");
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|source| CgroupSetupError::OpenProcs { path, source })
            })
            .collect()
    }

    fn write_limits(&self, limits: &CellLimits) -> Result<(), AttrWriteError> {
        for dir in &self.dirs {
            let has = |c: &str| if self.v2 { true } else { dir.controller == c };
            if let (Some(bytes), true) = (limits.memory_max_bytes, dir.memory) {
                if self.v2 {
                    write_file(&dir.path, "memory.max", &bytes.to_string())?;
                    // No swap at all: swapping is a way around the memory limit.
                    write_optional(&dir.path, "memory.swap.max", "0")?;
                } else {
                    write_file(&dir.path, "memory.limit_in_bytes", &bytes.to_string())?;
                    // memory+swap may never be below memory alone, so it is set second; equal
                    // means the cell cannot use swap to dodge the limit. Absent without swap
                    // accounting, which is then moot.
                    write_optional(&dir.path, "memory.memsw.limit_in_bytes", &bytes.to_string())?;
                }
            }
            if let (Some(millicores), true) = (limits.cpu_max_millicores, has("cpu")) {
                let quota = cpu_quota_us(millicores);
                if self.v2 {
                    write_file(&dir.path, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
                } else {
                    write_file(&dir.path, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                    write_file(&dir.path, "cpu.cfs_quota_us", &quota.to_string())?;
                }
            }
            if let (Some(max), true) = (limits.pids_max, has("pids")) {
                write_file(&dir.path, "pids.max", &max.to_string())?;
            }
        }
        Ok(())
    }

    /// The end of the cell: kills whatever is left in its cgroups, reads whether the kernel
    /// OOM-killed anything in it, and removes the directories. `sigkilled` (the workload died
    /// of SIGKILL or without a report) enables the v1 `memory.failcnt` fallback for kernels
    /// without an `oom_kill` counter. Bounded by [`TEARDOWN_LIMIT`]; returns the OOM verdict.
    pub(crate) fn teardown(&self, sigkilled: bool) -> bool {
        self.kill_all();
        let oom = self.oom_killed(sigkilled);
        self.remove();
        oom
    }

    /// Kills every process in the cell's cgroups until they are empty (or time runs out).
    pub(crate) fn kill_all(&self) {
        if self.v2 {
            // Atomic, fork-race-free kill of the whole subtree (Linux 5.14+).
            for dir in &self.dirs {
                let _ = write_file(&dir.path, "cgroup.kill", "1");
            }
        }
        let deadline = Instant::now() + TEARDOWN_LIMIT;
        let mut pause = Duration::from_millis(1);
        loop {
            let mut found = false;
            for dir in &self.dirs {
                let Ok(procs) = std::fs::read_to_string(dir.path.join("cgroup.procs")) else {
                    continue;
                };
                for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                    found = true;
                    kill_if_member(pid, dir);
                }
            }
            if !found || Instant::now() >= deadline {
                return;
            }
            // SIGKILLed processes leave the cgroup when they finish exiting; new ones may have
            // been forked between reading the list and the kill.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    fn oom_killed(&self, sigkilled: bool) -> bool {
        let Some(dir) = self.dirs.iter().find(|d| d.memory) else {
            return false;
        };
        let file = if self.v2 { "memory.events" } else { "memory.oom_control" };
        let counter = std::fs::read_to_string(dir.path.join(file))
            .ok()
            .and_then(|text| text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse::<u64>().ok()));
        match counter {
            Some(n) => n > 0,
            // Pre-4.13 v1: the limit was hit (failcnt) and the cell died of SIGKILL.
            None if !self.v2 => {
                sigkilled
                    && std::fs::read_to_string(dir.path.join("memory.failcnt"))
                        .ok()
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .is_some_and(|n| n > 0)
            }
            None => false,
        }
    }

    /// Removes the directories, retrying while the last killed processes finish exiting.
    fn remove(&self) {
        let deadline = Instant::now() + TEARDOWN_LIMIT;
        for dir in &self.dirs {
            loop {
                match std::fs::remove_dir(&dir.path) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                        self.kill_all();
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => {
                        report(format_args!("cgroup {} left behind: {e}", dir.path.display()));
                        break;
                    }
                }
            }
        }
    }

    /// For the supervisor, after the shim died: tears down whatever cgroups the shim recorded.
    pub(crate) fn cleanup_recorded(cell_dir: &Path) {
        if let Ok(Some(cgroups)) = read_json::<CellCgroups>(&cell_dir.join(RECORD)) {
            cgroups.kill_all();
            cgroups.remove();
        }
    }

    #[cfg(test)]
    fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.path.clone()).collect()
    }
}

/// CFS quota for a CPU share in thousandths of a core; the kernel's minimum quota is 1 ms.
fn cpu_quota_us(millicores: u32) -> u64 {
    (u64::from(millicores) * CPU_PERIOD_US / 1000).max(1000)
}

/// The hierarchies a cell gets a directory in: `(is v2, targets)`.
fn targets(mounts: &[Mount], own: &str) -> Result<(bool, Vec<Target>), CgroupSetupError> {
    // `/proc/self/cgroup`: `hierarchy-id:controller,list:/path`; v2 is `0::/path`.
    let own_path = |pred: &dyn Fn(&str) -> bool| {
        own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            pred(ctrls).then(|| path.to_string())
        })
    };
    let under = |m: &Mount, path: &str| -> (PathBuf, String) {
        // Inside some containers the mount shows only a subtree: strip its root.
        let rel = match m.root.as_str() {
            "/" => path,
            root => path.strip_prefix(root).unwrap_or(path),
        };
        let dir = m.point.join(rel.trim_start_matches('/')).join("warden");
        (dir, format!("{}/warden", path.trim_end_matches('/')))
    };
    if let Some(m) = mounts.iter().find(|m| m.v2 && v2_has_memory(&m.point)) {
        let path = own_path(&|c| c.is_empty()).ok_or(CgroupSetupError::NoV2Entry)?;
        let available = std::fs::read_to_string(m.point.join("cgroup.controllers")).unwrap_or_default();
        let controllers =
            CONTROLLERS.iter().filter(|c| available.split_whitespace().any(|a| a == **c)).map(|c| c.to_string()).collect();
        let (parent, proc_parent) = under(m, &path);
        return Ok((true, vec![Target { mount: m.point.clone(), parent, proc_parent, controller: String::new(), controllers }]));
    }
    let mut targets: Vec<Target> = Vec::new();
    for controller in CONTROLLERS {
        let Some(m) = mounts.iter().find(|m| !m.v2 && m.controllers.iter().any(|c| c == controller)) else {
            continue;
        };
        // Co-mounted controllers (e.g. `cpu,cpuacct`, rarely `memory,pids`) share one directory.
        if let Some(t) = targets.iter_mut().find(|t| t.mount == m.point) {
            t.controllers.push(controller.to_string());
            continue;
        }
        let Some(path) = own_path(&|c| c.split(',').any(|c| c == controller)) else {
            continue;
        };
        let (parent, proc_parent) = under(m, &path);
        targets.push(Target {
            mount: m.point.clone(),
            parent,
            proc_parent,
            controller: controller.to_string(),
            controllers: vec![controller.to_string()],
        });
    }
    if targets.is_empty() {
        return Err(CgroupSetupError::NoHierarchy);
    }
    Ok((false, targets))
}

/// After an OCI runtime was killed while it created a container (a start undone): removes the
/// cgroup directories it may already have made for the cell — `warden/<cell_id>` under this
/// process's cgroup in *every* hierarchy, where runc resolves the bundle's relative
/// `cgroupsPath` (see [`crate::oci`]) — which the runtime's `delete` cannot remove for a
/// container whose state it never got to write. Only `rmdir`: a directory that still holds a
/// process is not the leftover of a killed start (it may be another warden's live cell of the
/// same id), and stays. Retries briefly while the killed runtime's last processes finish exiting.
pub(crate) fn remove_runtime_leftovers(cell_id: &str) {
    let Ok(own) = std::fs::read_to_string("/proc/self/cgroup") else { return };
    let mounts = mounts();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let fits = |m: &&Mount| {
            if ctrls.is_empty() {
                m.v2
            } else {
                !m.v2 && ctrls.split(',').all(|c| m.options.iter().any(|o| o == c))
            }
        };
        for m in mounts.iter().filter(fits) {
            let rel = match m.root.as_str() {
                "/" => path,
                root => path.strip_prefix(root).unwrap_or(path),
            };
            let dir = m.point.join(rel.trim_start_matches('/')).join("warden").join(cell_id);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    for dir in dirs {
        loop {
            match std::fs::remove_dir(&dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    report(format_args!("cgroup {} left behind: {e}", dir.display()));
                    break;
                }
                _ => break,
            }
        }
    }
}

/// v2 only lets a cgroup use the controllers its parent enables for its children; enables the
/// ones warden uses in the supervisor's cgroup and in `warden/`. Fails (EBUSY) when the
/// supervisor's own cgroup still holds processes: v2 forbids controllers there, so the
/// supervisor must run in a delegated cgroup whose processes sit in a leaf of their own.
fn enable_v2_controllers(warden_dir: &Path, controllers: &[String]) -> Result<(), CgroupSetupError> {
    let want: String = controllers.iter().map(|c| format!("+{c} ")).collect();
    for dir in [warden_dir.parent().unwrap_or(warden_dir), warden_dir] {
        let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        if controllers.iter().all(|c| enabled.split_whitespace().any(|e| e == c)) {
            continue;
        }
        write_file(dir, "cgroup.subtree_control", want.trim_end())
            .map_err(|source| CgroupSetupError::EnableControllers { dir: dir.to_path_buf(), source })?;
    }
    Ok(())
}

/// Creates `warden/<cell_id>` in every hierarchy — or `warden/<cell_id>~N` if another cell of
/// that name is live (e.g. a second warden with its own data dir) — and records the result.
fn make_dirs(cell_dir: &Path, cell_id: &str, v2: bool, targets: &[Target]) -> Result<CellCgroups, CgroupSetupError> {
    'names: for n in 0..1000u32 {
        let name = if n == 0 { cell_id.to_string() } else { format!("{cell_id}~{n}") };
        let mut made = CellCgroups { v2, dirs: Vec::new() };
        for t in targets {
            let path = t.parent.join(&name);
            match std::fs::create_dir(&path) {
                Ok(()) => made.dirs.push(CgroupDir {
                    path,
                    proc_path: format!("{}/{name}", t.proc_parent),
                    controller: t.controller.clone(),
                    memory: t.controllers.iter().any(|c| c == "memory"),
                }),
                Err(source) => {
                    made.remove();
                    if source.kind() == io::ErrorKind::AlreadyExists {
                        continue 'names;
                    }
                    return Err(CgroupSetupError::CreateDir { path, source });
                }
            }
        }
        // Recorded before any process joins, so a dead shim's cgroups can always be found.
        if let Err(source) = write_json_atomic(cell_dir, RECORD, &made) {
            made.remove();
            return Err(CgroupSetupError::Record { cell_dir: cell_dir.to_path_buf(), source });
        }
        return Ok(made);
    }
    Err(CgroupSetupError::NoFreeName { cell_id: cell_id.to_string() })
}

/// SIGKILLs `pid` only if it is (still) in `dir`: a pidfd pins the process, and checking its
/// cgroup *after* opening it rules out a pid that was recycled since `cgroup.procs` was read.
fn kill_if_member(pid: u32, dir: &CgroupDir) {
    let Ok(pidfd) = sys::pidfd_open(pid) else {
        return;
    };
    let Ok(cgroups) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return;
    };
    let member = cgroups.lines().any(|l| {
        let mut parts = l.splitn(3, ':');
        let (_id, ctrls, path) = (parts.next(), parts.next(), parts.next());
        let right_hierarchy = match ctrls {
            Some(c) if dir.controller.is_empty() => c.is_empty(),
            Some(c) => c.split(',').any(|c| c == dir.controller),
            None => false,
        };
        right_hierarchy && path == Some(dir.proc_path.as_str())
    });
    if member {
        let _ = sys::pidfd_send_signal(&pidfd, libc::SIGKILL);
    }
}

fn write_file(dir: &Path, name: &str, value: &str) -> Result<(), AttrWriteError> {
    let path = dir.join(name);
    // Plain O_WRONLY (no O_TRUNC/O_CREAT): these are kernel attributes, not files.
    let file = match std::fs::OpenOptions::new().write(true).open(&path) {
        Ok(file) => file,
        Err(source) => return Err(AttrWriteError::Open { path, source }),
    };
    sys::write_all_fd(std::os::fd::AsRawFd::as_raw_fd(&file), value.as_bytes()).map_err(|source| AttrWriteError::Write {
        path,
        value: value.to_string(),
        source,
    })
}

/// Like [`write_file`], but a file the kernel does not offer (e.g. no swap accounting) is fine.
fn write_optional(dir: &Path, name: &str, value: &str) -> Result<(), AttrWriteError> {
    if dir.join(name).exists() {
        write_file(dir, name, value)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_and_v2_mounts() {
        let v1 =
            parse_mount("35 25 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct").unwrap();
        assert_eq!(v1.point, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert!(!v1.v2);
        assert_eq!(v1.controllers, ["cpu"]);
        let v2 = parse_mount("30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate").unwrap();
        assert!(v2.v2);
        let docker = parse_mount("40 30 0:33 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory").unwrap();
        assert_eq!(docker.root, "/docker/abc");
        assert!(parse_mount("22 1 8:1 / / rw - ext4 /dev/sda1 rw").is_none());
        assert_eq!(unescape("/a\\040b"), "/a b");
    }

    #[test]
    fn layout_display_names_each_controller() {
        let v1 = CgroupLayout::V1 { memory: Some("/sys/fs/cgroup/memory".into()), cpu: None, pids: Some("/p".into()) };
        assert_eq!(v1.to_string(), "cgroup v1: memory /sys/fs/cgroup/memory, cpu not mounted, pids /p");
        let v2 = CgroupLayout::V2 { root: "/sys/fs/cgroup".into() };
        assert_eq!(v2.to_string(), "cgroup v2 (unified) at /sys/fs/cgroup");
    }

    #[test]
    fn cpu_quota_is_thousandths_of_the_period() {
        assert_eq!(cpu_quota_us(1000), 100_000);
        assert_eq!(cpu_quota_us(200), 20_000);
        assert_eq!(cpu_quota_us(2500), 250_000);
        assert_eq!(cpu_quota_us(1), 1000);
    }

    #[test]
    fn this_hosts_cells_go_under_the_own_cgroup() {
        let mounts = mounts();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let Ok((v2, targets)) = targets(&mounts, &own) else {
            return; // no cgroups on this host: nothing to check
        };
        for t in &targets {
            assert!(t.parent.ends_with("warden"), "{}", t.parent.display());
            if !v2 {
                let line = own.lines().find(|l| l.split(':').nth(1).unwrap().split(',').any(|c| c == t.controller)).unwrap();
                let path = line.splitn(3, ':').nth(2).unwrap();
                assert_eq!(t.proc_parent, format!("{}/warden", path.trim_end_matches('/')));
            }
        }
    }

    #[test]
    fn create_and_teardown_leave_nothing() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let limits = CellLimits { memory_max_bytes: Some(32 << 20), cpu_max_millicores: Some(250), pids_max: Some(7) };
        let id = format!("unit-{}", std::process::id());
        let Some(cg) = CellCgroups::create(tmp.path(), &id, &limits).unwrap() else {
            return;
        };
        assert!(tmp.path().join(RECORD).exists());
        for p in cg.paths() {
            assert!(p.is_dir());
        }
        // A second cell with the same id (another data dir) gets a name of its own.
        let other = CellCgroups::create(tmp.path(), &id, &limits).unwrap().unwrap();
        assert!(other.paths().iter().all(|p| p.file_name().unwrap().to_string_lossy().ends_with("~1")));
        assert!(!other.teardown(false));
        assert!(!cg.teardown(false));
        for p in cg.paths().iter().chain(&other.paths()) {
            assert!(!p.exists(), "{} left behind", p.display());
        }
    }
}
