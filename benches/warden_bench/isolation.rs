//! The `isolation` section: start latency and memory per cell for each isolation backend.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use warden_runtime::view::WorkloadView;

use crate::common::control_plane::{parallel, toml_string, why, Api, WardenServer, API_THREADS};
use crate::common::process::{
    bench_exe, process_table, process_tree, progress, pss_kib, signal, start_time, still_running, wait_every, wait_until,
};
use crate::common::stats::{median, median_ms, p99_ms};
use crate::common::table::{figure, fmt_kib, fmt_ms, fmt_ratio, ratio_of, Alt, Row};
use crate::memory::{memory_runit, memory_s6, memory_supervisord, Memory, MEMORY_SETTLE};
use crate::restart::{realtime_ns, WORKLOAD_ENV};

/// Timed starts per isolation backend and condition (idle, warm), after one discarded warm-up
/// start each.
const START_SAMPLES: usize = 50;
/// Quiet time before an "idle" start. On the small VMs this was written on, a start right after
/// other activity ("warm") took about half as long as one into a quiet machine, for `process`
/// and `cell` alike (the extra time falls after the POST returned, around the shim's cgroup
/// joins), so both are measured, alternately.
const START_IDLE: Duration = Duration::from_millis(100);
/// The order of the backends in successive rounds: every order once per six rounds, so each
/// backend follows each other one equally often (a start right after an OCI cell ended was
/// measurably slower, and with a fixed order that was charged to one backend).
const START_ORDERS: [[usize; 3]; 6] = [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 2, 1], [2, 1, 0], [1, 0, 2]];
/// `sleep 1000` cells per backend (and services or programs per alternative) in the isolation
/// memory test.
const ISOLATION_CELLS: usize = 50;
/// The directory, inside the OCI cells' root filesystem, that holds this bench binary and the
/// start stamps it writes there.
const OCI_BENCH_DIR: &str = "bench";
/// Workload states that no longer change.
const TERMINAL: [&str; 4] = ["completed", "failed", "stopped", "expired"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isolation {
    Process,
    Cell,
    Oci,
}

const ISOLATIONS: [Isolation; 3] = [Isolation::Process, Isolation::Cell, Isolation::Oci];

impl Isolation {
    fn name(self) -> &'static str {
        match self {
            Isolation::Process => "process",
            Isolation::Cell => "cell",
            Isolation::Oci => "oci",
        }
    }
}

/// One `warden up` for the whole section, and the root filesystem of its OCI cells.
struct IsolationBench {
    warden: WardenServer,
    api: Api,
    /// Start stamps of `process` and `cell` workloads (they see the host's file system).
    stamps: PathBuf,
    /// Debian's static busybox plus this bench binary and its shared libraries.
    rootfs: Result<PathBuf>,
    /// Every workload id submitted, for the leftover check (cell ids and runc's container ids
    /// contain it).
    submitted: std::sync::Mutex<Vec<String>>,
}

impl IsolationBench {
    fn submit(&self, file: &str, spec: &str) -> Result<String> {
        let id = self.api.submit(file, spec)?.info.id;
        self.submitted.lock().map_err(|_| anyhow!("a submitter panicked"))?.push(id.clone());
        Ok(id)
    }

    fn rootfs(&self) -> Result<&Path> {
        self.rootfs.as_deref().map_err(|e| anyhow!("no OCI root filesystem: {e:#}"))
    }

    /// The `[cell]` lines that select `isolation`.
    fn isolation_lines(&self, isolation: Isolation) -> Result<String> {
        Ok(match isolation {
            Isolation::Oci => format!("isolation = \"oci\"\nrootfs = {}\noci_runtime = \"runc\"\n", toml_string(self.rootfs()?)),
            other => format!("isolation = \"{}\"\n", other.name()),
        })
    }

    /// The spec of a workload that is this bench binary in workload mode (it stamps its start
    /// and exits), and where its stamp shows up on the host. An OCI cell runs the copy inside
    /// its root filesystem and writes there.
    fn stamping_spec(&self, isolation: Isolation, name: &str) -> Result<(String, PathBuf)> {
        let (exe, stamp, host_stamp) = match isolation {
            Isolation::Oci => {
                let inside = format!("{OCI_BENCH_DIR}/stamps/{name}.log");
                (format!("/{OCI_BENCH_DIR}/warden_bench"), format!("/{inside}"), self.rootfs()?.join(inside))
            }
            _ => {
                let host = self.stamps.join(format!("{name}.log"));
                (bench_exe().display().to_string(), host.display().to_string(), host)
            }
        };
        let spec = format!(
            "name = \"{name}\"\n[cell]\nargv = [{exe}]\nenv = {{ {WORKLOAD_ENV} = {stamp} }}\n{lines}[restart]\npolicy = \"never\"\n",
            exe = json_string(&exe),
            stamp = json_string(&stamp),
            lines = self.isolation_lines(isolation)?,
        );
        Ok((spec, host_stamp))
    }
}

/// A TOML basic string (a JSON string literal is one).
fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// Per-cell memory of one backend.
struct CellMemory {
    /// Median over the cells of the summed PSS of everything warden runs for the cell.
    per_cell_kib: f64,
    /// What was counted per cell, e.g. `warden-shim ×2`.
    processes: String,
}

/// What the section's clean-up found still there after every workload was stopped.
struct Leftovers {
    processes: usize,
    cgroups: usize,
    cgroups_not_removed: usize,
}

/// Submit → exec latencies in ns of one backend.
#[derive(Default)]
struct StartSamples {
    /// Each after START_IDLE with nothing happening.
    idle: Vec<u64>,
    /// Each right after the previous start's workload ended.
    warm: Vec<u64>,
}

struct IsolationResults {
    starts: [Result<StartSamples>; 3],
    memory: [Result<CellMemory>; 3],
    leftovers: Leftovers,
}

pub(crate) fn isolation_section() -> Vec<Row> {
    progress(format_args!(
        "isolation: {START_SAMPLES} idle and {START_SAMPLES} warm starts per backend (process, cell, oci; taking \
         turns), then {ISOLATION_CELLS} `sleep 1000` cells per backend and per alternative"
    ));
    let warden = isolation_warden();
    progress(format_args!("  runit, s6, supervisord with {ISOLATION_CELLS} services each"));
    let runit = memory_runit(ISOLATION_CELLS);
    let s6 = memory_s6(ISOLATION_CELLS);
    let supervisord = memory_supervisord(ISOLATION_CELLS);

    let (starts, memory, leftovers) = match warden {
        Ok(IsolationResults { starts, memory, leftovers }) => (starts, memory, Some(leftovers)),
        Err(e) => {
            let e = format!("{e:#}");
            (ISOLATIONS.map(|_| Err(anyhow!("{e}"))), ISOLATIONS.map(|_| Err(anyhow!("{e}"))), None)
        }
    };
    let [process_starts, cell_starts, _] = &starts;
    let both = |s: &StartSamples| {
        let stat = |v: &[u64]| format!("{} / {}", fmt_ms(median_ms(v)), fmt_ms(p99_ms(v)));
        format!("idle {}; warm {}", stat(&s.idle), stat(&s.warm))
    };
    let start_alt = |who: &str, of: &Result<StartSamples>, base: &Result<StartSamples>| Alt {
        who: who.to_string(),
        figure: figure(base, both),
        ratio: match (of, base) {
            (Ok(of), Ok(base)) => {
                let ratio = |a: &[u64], b: &[u64]| {
                    format!("{} / {}", fmt_ratio(median_ms(a) / median_ms(b)), fmt_ratio(p99_ms(a) / p99_ms(b)))
                };
                format!("idle {}; warm {}", ratio(&of.idle, &base.idle), ratio(&of.warm, &base.warm))
            }
            _ => "-".into(),
        },
    };
    let mut rows = Vec::new();
    for (isolation, result) in ISOLATIONS.iter().zip(&starts) {
        let (alternatives, note) = match isolation {
            Isolation::Process => (
                Vec::new(),
                format!(
                    "From CLOCK_REALTIME just before POST /v1/workloads to the CLOCK_REALTIME the workload (this bench \
                     binary) writes first thing in main(), i.e. just after its exec; includes the fsynced journal \
                     append of the submit. One start at a time, the backends taking turns in every order; n = {} \
                     idle + {} warm per backend after a discarded warm-up. idle: after {} ms with nothing happening; \
                     warm: right after the previous start's workload ended",
                    figure(result, |s| s.idle.len().to_string()),
                    figure(result, |s| s.warm.len().to_string()),
                    START_IDLE.as_millis()
                ),
            ),
            Isolation::Cell => (
                vec![start_alt("process", result, process_starts)],
                "PID/mount/UTS/IPC namespaces under warden's init; ratios median / p99. Target: cell start < 10 ms".into(),
            ),
            Isolation::Oci => (
                vec![start_alt("process", result, process_starts), start_alt("cell", result, cell_starts)],
                "`runc run` under the shim; busybox-static rootfs with the same bench binary and its shared libraries \
                 copied in, so the stamp is the same exec-time stamp"
                    .into(),
            ),
        };
        rows.push(Row {
            metric: format!(
                "Cell start, isolation = {} (submit → workload exec, median / p99; lower is better)",
                isolation.name()
            ),
            warden: figure(result, both),
            alternatives,
            note,
        });
    }
    let mem_alt = |who: &str, of: &Result<CellMemory>, other: &Result<Memory>| Alt {
        who: who.to_string(),
        figure: figure(other, |m| fmt_kib(m.per_cell_kib)),
        ratio: ratio_of(of, |m| m.per_cell_kib, other, |m| m.per_cell_kib),
    };
    for (isolation, result) in ISOLATIONS.iter().zip(&memory) {
        let counted = result.as_ref().map(|m| m.processes.as_str()).unwrap_or("-");
        let mut note = format!("counted per cell: {counted}; the workload itself is not counted. Target ≤ 300 KB per cell");
        if let (Isolation::Oci, Some(left)) = (isolation, &leftovers) {
            let _ = write!(
                note,
                ". Clean-up after stopping every cell: {} processes and {} cell cgroups left behind ({} not removable)",
                left.processes, left.cgroups, left.cgroups_not_removed
            );
        }
        rows.push(Row {
            metric: format!(
                "Memory per cell, isolation = {}, {ISOLATION_CELLS} `sleep 1000` cells (PSS, median; lower is better)",
                isolation.name()
            ),
            warden: figure(result, |m| fmt_kib(m.per_cell_kib)),
            alternatives: vec![
                mem_alt("runsv", result, &runit),
                mem_alt("s6-supervise", result, &s6),
                mem_alt(&format!("supervisord ÷ {ISOLATION_CELLS}"), result, &supervisord),
            ],
            note,
        });
    }
    rows
}

/// Everything warden-side of the section on one server: the timed starts, the memory per cell
/// of each backend, and a check that nothing outlived it.
fn isolation_warden() -> Result<IsolationResults> {
    let dir = tempfile::tempdir()?;
    // The cells run as the `warden` user: their stamps go where it may write.
    let stamps = crate::common::shared_dir(dir.path(), "stamps")?;
    let rootfs = oci_rootfs(dir.path());
    if let Err(e) = &rootfs {
        progress(format_args!("  no OCI root filesystem, the oci rows will say why: {e:#}"));
    }
    let warden = WardenServer::start()?;
    let api = warden.api()?;
    let bench = IsolationBench { warden, api, stamps, rootfs, submitted: Default::default() };

    let starts = start_latencies(&bench);
    let mut seen = Vec::new();
    let memory = ISOLATIONS.map(|isolation| {
        let memory = cell_memory(&bench, isolation, ISOLATION_CELLS, &mut seen);
        progress(format_args!("  memory, {}: {}", isolation.name(), figure(&memory, |m| fmt_kib(m.per_cell_kib))));
        memory
    });

    // Clean-up: stop whatever still runs, end the server, then look for anything left over.
    if let Err(e) = stop_everything(&bench.api) {
        progress(format_args!("  warning: stopping the last workloads failed: {e:#}"));
    }
    let workload_ids = std::mem::take(&mut *bench.submitted.lock().map_err(|_| anyhow!("a submitter panicked"))?);
    // Shims (and a cell's init, a clone of its shim) have their cell dir in their argv, runc its
    // bundle there, and stamping workloads their stamp path in their environment.
    let ours = [bench.warden.root.path().to_path_buf(), dir.path().to_path_buf()];
    drop(bench);
    let mut left: Vec<u32> = seen.iter().filter(|(pid, time)| still_running(*pid, *time)).map(|(pid, _)| *pid).collect();
    left.extend(processes_mentioning(&ours));
    left.sort_unstable();
    left.dedup();
    for &pid in &left {
        signal(pid, libc::SIGKILL);
    }
    let cgroups = cell_cgroups(&workload_ids);
    let mut not_removed = 0;
    for cgroup in &cgroups {
        // A cgroup can be removed only once its last process is gone (after a SIGKILL above).
        if wait_until(Duration::from_secs(2), "an empty cgroup", || Ok(fs::remove_dir(cgroup).is_ok().then_some(()))).is_err() {
            not_removed += 1;
        }
    }
    if !left.is_empty() || !cgroups.is_empty() {
        progress(format_args!(
            "  warning: left behind: processes {left:?}, cgroups {:?}",
            cgroups.iter().map(|c| c.display().to_string()).collect::<Vec<_>>()
        ));
    }
    Ok(IsolationResults {
        starts,
        memory,
        leftovers: Leftovers { processes: left.len(), cgroups: cgroups.len(), cgroups_not_removed: not_removed },
    })
}

/// Submit → exec latencies per backend: one start at a time, the backends taking turns (in
/// every order, see [`START_ORDERS`]) so all see the same machine, rounds alternating between
/// idle and warm starts. A backend whose start fails is dropped with that error.
fn start_latencies(bench: &IsolationBench) -> [Result<StartSamples>; 3] {
    let mut results: [Result<StartSamples>; 3] = ISOLATIONS.map(|_| Ok(StartSamples::default()));
    // Round 0 is the warm-up (first exec of each binary, first runc run, cold caches); then odd
    // rounds are idle, even ones warm.
    for round in 0..=2 * START_SAMPLES {
        let idle = round % 2 == 1;
        for i in START_ORDERS[(round / 2) % START_ORDERS.len()] {
            let isolation = ISOLATIONS[i];
            if results[i].is_err() {
                continue;
            }
            if idle {
                std::thread::sleep(START_IDLE);
            }
            match time_start(bench, isolation, &format!("start-{}-{round}", isolation.name())) {
                Ok(ns) => {
                    if let (Ok(samples), true) = (&mut results[i], round > 0) {
                        if idle { &mut samples.idle } else { &mut samples.warm }.push(ns);
                    }
                }
                Err(e) => {
                    progress(format_args!("  start, {}: {e:#}", isolation.name()));
                    results[i] = Err(e);
                }
            }
        }
        if round % 20 == 0 && round > 0 {
            let show = |r: &Result<StartSamples>| {
                figure(r, |s| format!("idle {} warm {}", fmt_ms(median_ms(&s.idle)), fmt_ms(median_ms(&s.warm))))
            };
            progress(format_args!(
                "  {}/{START_SAMPLES} starts per condition; medians so far: process {}, cell {}, oci {}",
                round / 2,
                show(&results[0]),
                show(&results[1]),
                show(&results[2])
            ));
        }
    }
    results
}

/// One start: submit → the workload's own start stamp. Waits until the workload (which exits
/// at once) has ended, so that starts never overlap.
fn time_start(bench: &IsolationBench, isolation: Isolation, name: &str) -> Result<u64> {
    let (spec, stamp) = bench.stamping_spec(isolation, name)?;
    let submitted = realtime_ns();
    let id = bench.submit(&format!("{name}.toml"), &spec)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut polls = 0u32;
    let started = loop {
        if let Some(ns) = start_stamp(&stamp) {
            break ns;
        }
        polls += 1;
        if polls.is_multiple_of(25) || Instant::now() >= deadline {
            let view = bench.api.status(&id)?;
            if TERMINAL.contains(&view.state.as_str()) {
                if let Some(ns) = start_stamp(&stamp) {
                    break ns;
                }
                bail!("{name} ended without running: {}", why(&view));
            }
            if Instant::now() >= deadline {
                bail!("{name} did not start within 60 s (state {})", view.state);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    wait_every(Duration::from_secs(60), Duration::from_millis(5), &format!("{name} to end"), || {
        Ok(TERMINAL.contains(&bench.api.status(&id)?.state.as_str()).then_some(()))
    })?;
    Ok(started.saturating_sub(submitted))
}

/// The `<ns> start` line the workload wrote, once it is there.
fn start_stamp(log: &Path) -> Option<u64> {
    fs::read_to_string(log).ok()?.lines().find_map(|line| line.strip_suffix(" start")?.parse().ok())
}

/// `n` `sleep 1000` cells of one backend: once all run, the summed PSS per cell of every process
/// in the shim's tree except the workload itself (shim; shim + init; shim + runc ...). Stops
/// every workload before returning, also on failure. Every process seen goes into `seen`.
fn cell_memory(bench: &IsolationBench, isolation: Isolation, n: usize, seen: &mut Vec<(u32, u64)>) -> Result<CellMemory> {
    let memory = measure_cells(bench, isolation, n, seen);
    let stopped = stop_everything(&bench.api);
    let memory = memory?;
    stopped?;
    Ok(memory)
}

fn measure_cells(bench: &IsolationBench, isolation: Isolation, n: usize, seen: &mut Vec<(u32, u64)>) -> Result<CellMemory> {
    let lines = bench.isolation_lines(isolation)?;
    let name = isolation.name();
    // `graceful_shutdown`: an OCI cell's `sleep` is its PID 1 and ignores SIGTERM.
    let ids = parallel(n, API_THREADS.min(4), |i| {
        let spec = format!(
            "name = \"mem-{name}-{i}\"\n[cell]\nargv = [\"sleep\", \"1000\"]\ngraceful_shutdown = \"1s\"\n{lines}\
             [restart]\npolicy = \"never\"\n"
        );
        bench.submit(&format!("mem-{name}-{i}.toml"), &spec)
    })?;
    let cell_ids = wait_until(Duration::from_secs(120), &format!("{n} {name} cells to run"), || {
        let live: HashMap<String, WorkloadView> = bench.api.list()?.into_iter().map(|v| (v.info.id.clone(), v)).collect();
        if let Some(gone) = ids.iter().find(|id| !live.contains_key(*id)) {
            bail!("{gone} ended: {}", why(&bench.api.status(gone)?));
        }
        Ok(ids.iter().map(|id| live[id].cell_id.clone().filter(|_| live[id].state == "running")).collect::<Option<Vec<_>>>())
    })?;
    std::thread::sleep(MEMORY_SETTLE);

    let comms: HashMap<u32, String> = process_table().into_iter().map(|(pid, _, comm)| (pid, comm)).collect();
    let mut per_cell = Vec::with_capacity(n);
    let mut counted: BTreeMap<String, usize> = BTreeMap::new();
    for cell_id in &cell_ids {
        let pid_json = bench.warden.data_dir().join("cells").join(cell_id).join("pid.json");
        let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&pid_json)?)?;
        let shim =
            json["shim_pid"].as_u64().and_then(|p| u32::try_from(p).ok()).ok_or_else(|| anyhow!("no shim_pid in {json}"))?;
        let mut kib = 0;
        for pid in process_tree(shim) {
            seen.extend(start_time(pid).map(|t| (pid, t)));
            let comm = comms.get(&pid).cloned().unwrap_or_else(|| "?".into());
            if comm != "sleep" {
                kib += pss_kib(pid)?;
                *counted.entry(comm).or_default() += 1;
            }
        }
        per_cell.push(kib);
    }
    let processes = counted
        .iter()
        .map(|(comm, count)| {
            let each = *count as f64 / n as f64;
            if each.fract() == 0.0 {
                format!("{comm} ×{each:.0}")
            } else {
                format!("{comm} ×{each:.2}")
            }
        })
        .collect::<Vec<_>>()
        .join(" + ");
    Ok(CellMemory { per_cell_kib: median(&per_cell), processes })
}

/// Stops every live workload (one that ends meanwhile refuses the stop: fine) and waits until
/// none is left.
fn stop_everything(api: &Api) -> Result<()> {
    let live: Vec<String> = api.list()?.into_iter().map(|v| v.info.id).collect();
    parallel(live.len(), API_THREADS, |i| {
        let _ = api.stop(&live[i]);
        Ok(())
    })?;
    wait_until(Duration::from_secs(120), "every workload to stop", || Ok(api.list()?.is_empty().then_some(())))
}

/// Processes other than this one whose command line or environment mentions one of `paths`.
fn processes_mentioning(paths: &[PathBuf]) -> Vec<u32> {
    let needles: Vec<Vec<u8>> = paths.iter().map(|p| p.as_os_str().as_encoded_bytes().to_vec()).collect();
    let me = std::process::id();
    process_table()
        .into_iter()
        .map(|(pid, _, _)| pid)
        .filter(|&pid| pid != me)
        .filter(|pid| {
            ["cmdline", "environ"].iter().any(|file| {
                let bytes = fs::read(format!("/proc/{pid}/{file}")).unwrap_or_default();
                needles.iter().any(|n| bytes.windows(n.len()).any(|w| w == n.as_slice()))
            })
        })
        .collect()
}

/// Cgroup directories anywhere under /sys/fs/cgroup whose name contains one of `ids` (warden's
/// `<workload_id>.<n>`, runc's `warden-<workload_id>.<n>`), deepest first.
fn cell_cgroups(ids: &[String]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if ids.iter().any(|id| name.contains(id.as_str())) {
                found.push(entry.path());
            }
            if depth < 12 {
                dirs.push((entry.path(), depth + 1));
            }
        }
    }
    found.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
    found
}

/// The OCI cells' root filesystem under `dir`: busybox with `sh` and `sleep`, and this bench
/// binary, each with the shared libraries `ldd` lists (none for Debian's busybox-static) at
/// their host paths, so the same workload stamps its start in all three backends.
fn oci_rootfs(dir: &Path) -> Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "proc", "dev", "sys", "tmp", "etc", "root", &format!("{OCI_BENCH_DIR}/stamps")] {
        fs::create_dir_all(rootfs.join(sub))?;
    }
    // The container's process is the `warden` user, not root.
    crate::common::shared_dir(&rootfs.join(OCI_BENCH_DIR), "stamps")?;
    copy_with_libraries(Path::new("/bin/busybox"), &rootfs, &rootfs.join("bin/busybox"))
        .context("busybox for the OCI rootfs (apt-get install busybox-static)")?;
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(rootfs.join("etc/group"), "root:x:0:\n")?;
    copy_with_libraries(&bench_exe(), &rootfs, &rootfs.join(OCI_BENCH_DIR).join("warden_bench"))?;
    Ok(rootfs)
}

/// Copies `binary` to `to` and every shared library it loads to the same path under `rootfs`.
fn copy_with_libraries(binary: &Path, rootfs: &Path, to: &Path) -> Result<()> {
    fs::copy(binary, to).with_context(|| format!("cannot copy {}", binary.display()))?;
    // `ldd` fails on a static executable ("not a dynamic executable"): nothing to copy then.
    let ldd = Command::new("ldd").arg(binary).output().context("cannot run ldd")?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        if line.contains("not found") {
            bail!("{}: {}", binary.display(), line.trim());
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`.
        let path = line.rsplit("=>").next().unwrap_or("").split(" (").next().unwrap_or("").trim();
        if let Some(relative) = path.strip_prefix('/') {
            let target = rootfs.join(relative);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::copy(path, &target).with_context(|| format!("cannot copy {path}"))?;
        }
    }
    Ok(())
}
