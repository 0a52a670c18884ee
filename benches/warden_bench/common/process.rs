//! Processes the bench starts, finds, measures and kills; polling; progress on stderr.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub(crate) fn progress(args: std::fmt::Arguments<'_>) {
    eprintln!("[warden_bench] {args}");
}

/// A process this bench started. Dropping it (also while unwinding from a panic) kills it and
/// everything below it.
pub(crate) struct Proc {
    pub(crate) child: Child,
}

impl Proc {
    pub(crate) fn spawn(what: &str, command: &mut Command) -> Result<Proc> {
        let child = command.spawn().with_context(|| format!("cannot start {what}"))?;
        Ok(Proc { child })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has already exited (e.g. a supervisor that rejected its config).
    pub(crate) fn check_alive(&mut self, what: &str, log: &Path) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{what} exited with {status}: {}", tail(&fs::read_to_string(log).unwrap_or_default(), 800));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill_tree(self.child.id());
        let _ = self.child.wait();
    }
}

/// A stderr log file for a spawned process.
pub(crate) fn log_file(path: &Path) -> Stdio {
    fs::File::create(path).map(Stdio::from).unwrap_or_else(|_| Stdio::null())
}

pub(crate) fn tail(text: &str, max: usize) -> &str {
    let start = text.len().saturating_sub(max);
    let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    &text[start..]
}

/// `(pid, ppid, comm)` of every process on the machine.
pub(crate) fn process_table() -> Vec<(u32, u32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_string();
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid, comm))
        })
        .collect()
}

/// `root` and all its descendants, parents before children.
pub(crate) fn process_tree(root: u32) -> Vec<u32> {
    let table = process_table();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(table.iter().filter(|(_, ppid, _)| *ppid == parent).map(|(pid, _, _)| *pid));
        i += 1;
    }
    tree
}

/// Direct children of `parent` whose command name is `comm`.
pub(crate) fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    process_table().into_iter().filter(|(_, ppid, c)| *ppid == parent && c == comm).map(|(pid, _, _)| pid).collect()
}

pub(crate) fn has_children(pid: u32) -> bool {
    process_table().iter().any(|(_, ppid, _)| *ppid == pid)
}

/// Kills `root` and every descendant. Each process is stopped first, parents before children
/// and until no new one appears, so no supervisor in the tree can restart what is killed.
pub(crate) fn kill_tree(root: u32) {
    let mut stopped: Vec<u32> = Vec::new();
    for _ in 0..50 {
        let fresh: Vec<u32> = process_tree(root).into_iter().filter(|pid| !stopped.contains(pid)).collect();
        if fresh.is_empty() {
            break;
        }
        for pid in fresh {
            signal(pid, libc::SIGSTOP);
            stopped.push(pid);
        }
    }
    for pid in stopped {
        signal(pid, libc::SIGKILL);
    }
}

pub(crate) fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        unsafe { libc::kill(pid, signal) };
    }
}

pub(crate) fn signal_group(pgid: u32, signal: libc::c_int) {
    if let Ok(pgid) = i32::try_from(pgid) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; a negative pid names
        // the process group.
        unsafe { libc::kill(-pgid, signal) };
    }
}

/// Field 22 of `/proc/PID/stat` (start time in clock ticks): tells a pid from its reuse.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the same process (same start time) and not a zombie.
pub(crate) fn still_running(pid: u32, started_at: u64) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let mut fields = rest.split_whitespace();
    let state = fields.next().unwrap_or("Z");
    state != "Z" && fields.nth(18).and_then(|t| t.parse().ok()) == Some(started_at)
}

/// Proportional set size in KiB: the process's private pages plus its share of shared ones.
pub(crate) fn pss_kib(pid: u32) -> Result<u64> {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).with_context(|| format!("pid {pid} is gone"))?;
    rollup
        .lines()
        .find_map(|line| line.strip_prefix("Pss:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or_else(|| anyhow!("no Pss line for pid {pid}"))
}

/// Polls `ready` every 50 ms until it returns `Some` or `timeout` passes.
pub(crate) fn wait_until<T>(timeout: Duration, what: &str, ready: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    wait_every(timeout, Duration::from_millis(50), what, ready)
}

/// Polls `ready` every `interval` until it returns `Some` or `timeout` passes.
pub(crate) fn wait_every<T>(
    timeout: Duration,
    interval: Duration,
    what: &str,
    mut ready: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = ready()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {:.0} s waiting for {what}", timeout.as_secs_f64());
        }
        std::thread::sleep(interval);
    }
}

pub(crate) fn write_executable(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

pub(crate) fn bench_exe() -> PathBuf {
    std::env::current_exe().expect("the bench knows its own path")
}
