//! The `restart` section: restart latency of a crash-looping workload under warden, supervisord,
//! runsv and s6-supervise; and that workload itself (this bench binary, started again).

use std::ffi::OsStr;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};

use crate::common::control_plane::{toml_string, WardenServer};
use crate::common::process::{bench_exe, log_file, progress, tail, Proc};
use crate::common::stats::{median_ms, p99_ms};
use crate::common::table::{figure, fmt_ms, ratio_of, Alt, Row};

/// Set (to the log file's path) only in the environment of the crash-looping workload.
pub(crate) const WORKLOAD_ENV: &str = "WARDEN_BENCH_WORKLOAD";

/// Restarts sampled from warden: enough for a meaningful p99, in a few seconds.
const FAST_RESTARTS: usize = 200;
/// Restarts sampled from supervisord, runsv and s6-supervise, which each take about a second
/// per restart; the three run at the same time, so this costs ~100 s, not 300.
const SLOW_RESTARTS: usize = 100;

/// Appends `<ns> start`, then `<ns> exit`, and exits with code 1. Each line is one `write` on an
/// `O_APPEND` descriptor, so lines of successive runs never interleave or tear.
pub(crate) fn workload_main(log: &OsStr) -> ! {
    let started = realtime_ns();
    let mut file = match fs::OpenOptions::new().create(true).append(true).open(log) {
        Ok(file) => file,
        Err(_) => std::process::exit(2),
    };
    let _ = file.write_all(format!("{started} start\n").as_bytes());
    let _ = file.write_all(format!("{} exit\n", realtime_ns()).as_bytes());
    std::process::exit(1)
}

pub(crate) fn realtime_ns() -> u64 {
    // CLOCK_REALTIME: one clock for every process, so stamps written by successive runs compare.
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Waits until `log` holds `want` start lines (or `timeout` passes); returns how many it holds.
fn wait_for_starts(log: &Path, want: usize, timeout: Duration, who: &str) -> usize {
    let deadline = Instant::now() + timeout;
    let mut last_report = Instant::now();
    loop {
        let starts = fs::read_to_string(log).unwrap_or_default().lines().filter(|l| l.ends_with(" start")).count();
        if starts >= want || Instant::now() >= deadline {
            return starts;
        }
        if last_report.elapsed() >= Duration::from_secs(15) {
            progress(format_args!("  {who}: {starts}/{want} starts"));
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Restart latencies in ns: for each `exit` line directly followed by a `start` line, the gap.
fn restart_latencies(log: &Path, max: usize) -> Vec<u64> {
    let text = fs::read_to_string(log).unwrap_or_default();
    let entries: Vec<(u64, bool)> = text
        .lines()
        .filter_map(|line| {
            let (ns, what) = line.split_once(' ')?;
            Some((ns.parse().ok()?, what == "start"))
        })
        .collect();
    entries.windows(2).filter(|w| !w[0].1 && w[1].1).map(|w| w[1].0.saturating_sub(w[0].0)).take(max).collect()
}

struct Restarts {
    /// Latencies in ns, in the order they happened.
    samples: Vec<u64>,
}

pub(crate) fn restart_section() -> Vec<Row> {
    progress(format_args!("restart latency: warden ({FAST_RESTARTS} restarts)"));
    let warden = restart_warden(FAST_RESTARTS);
    progress(format_args!(
        "restart latency: supervisord, runsv and s6-supervise at once ({SLOW_RESTARTS} restarts each, ~1 s apart: ~{} s)",
        SLOW_RESTARTS + 10
    ));
    // All three wait about a second between restarts (runsv and s6-supervise on purpose,
    // supervisord because it restarts on the poll tick after it reaped), so they run side by
    // side in time: asleep almost always, none of them disturbs the others.
    let (supervisord, runit, s6) = std::thread::scope(|scope| {
        let supervisord = scope.spawn(|| restart_supervisord(SLOW_RESTARTS));
        let runit = scope.spawn(|| restart_runit(SLOW_RESTARTS));
        let s6 = scope.spawn(|| restart_s6(SLOW_RESTARTS));
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<Restarts>>| h.join().unwrap_or_else(|_| Err(anyhow!("panicked")));
        (join(supervisord), join(runit), join(s6))
    });

    let alternatives = [("supervisord", &supervisord), ("runsv", &runit), ("s6-supervise", &s6)];
    let row = |what: &str, stat: fn(&[u64]) -> f64, note: String| Row {
        metric: what.to_string(),
        warden: figure(&warden, |r| fmt_ms(stat(&r.samples))),
        alternatives: alternatives
            .iter()
            .map(|(who, result)| Alt {
                who: who.to_string(),
                figure: figure(result, |r| fmt_ms(stat(&r.samples))),
                ratio: ratio_of(&warden, |r| stat(&r.samples), result, |r| stat(&r.samples)),
            })
            .collect(),
        note,
    };
    let counts = |r: &Result<Restarts>| r.as_ref().map(|r| r.samples.len().to_string()).unwrap_or_else(|_| "-".into());
    vec![
        row(
            "Restart latency, median (exit → next exec; lower is better)",
            median_ms,
            format!(
                "n = {} warden, {} supervisord, {} runsv, {} s6. Target: first restart < 5 ms median",
                counts(&warden),
                counts(&supervisord),
                counts(&runit),
                counts(&s6)
            ),
        ),
        row(
            "Restart latency, p99",
            p99_ms,
            "runsv and s6-supervise deliberately wait ~1 s before restarting a program that ran < 1 s; supervisord \
             restarts on its next 1 s poll tick after reaping"
                .into(),
        ),
    ]
}

/// warden with `policy = "always"`, no backoff; every decision is fsynced before it is acted on.
fn restart_warden(n: usize) -> Result<Restarts> {
    let warden = WardenServer::start()?;
    let log = warden.root.path().join("restarts.log");
    let spec = format!(
        "name = \"crashloop\"\n[cell]\nargv = [{exe}]\nenv = {{ {WORKLOAD_ENV} = {log} }}\n\
         [restart]\npolicy = \"always\"\nbackoff = \"0s\"\nbackoff_max = \"0s\"\n",
        exe = toml_string(&bench_exe()),
        log = toml_string(&log),
    );
    let spec_path = warden.root.path().join("crashloop.toml");
    fs::write(&spec_path, spec)?;
    let out = warden.cli(&[OsStr::new("run"), spec_path.as_os_str()])?;
    let id = out.lines().last().ok_or_else(|| anyhow!("warden run printed no id"))?.trim().to_string();
    let got = wait_for_starts(&log, n + 1, Duration::from_secs(120), "warden");
    let _ = warden.cli(&[OsStr::new("stop"), OsStr::new(&id)]);
    collect_restarts(&log, n, got, "warden", || tail(&warden.up_log(), 800).to_string())
}

/// supervisord 4 with one changed setting: `startsecs=0`. With the default (1 s) a program that
/// exits at once never counts as started: it goes to BACKOFF and, after `startretries`, FATAL.
fn restart_supervisord(n: usize) -> Result<Restarts> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("restarts.log");
    let program = format!(
        "[program:crashloop]\ncommand={exe}\nenvironment={WORKLOAD_ENV}=\"{log}\"\nstartsecs=0\n",
        exe = bench_exe().display(),
        log = log.display()
    );
    let (mut supervisord, conf_log) = start_supervisord(dir.path(), &program)?;
    let got = wait_for_starts(&log, n + 1, slow_timeout(n), "supervisord");
    supervisord.check_alive("supervisord", &conf_log)?;
    drop(supervisord);
    collect_restarts(&log, n, got, "supervisord", || tail(&fs::read_to_string(&conf_log).unwrap_or_default(), 800).into())
}

/// `supervisord -n -c CONF` with `programs` (config sections) and its logs in `dir`.
pub(crate) fn start_supervisord(dir: &Path, programs: &str) -> Result<(Proc, PathBuf)> {
    let conf = dir.join("supervisord.conf");
    let stderr_log = dir.join("supervisord.stderr");
    fs::write(
        &conf,
        format!(
            "[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\nchildlogdir={d}\n\n{programs}",
            d = dir.display()
        ),
    )?;
    let proc = Proc::spawn(
        "supervisord",
        Command::new("supervisord").arg("-n").arg("-c").arg(&conf).stdout(Stdio::null()).stderr(log_file(&stderr_log)),
    )?;
    Ok((proc, stderr_log))
}

/// runit's `runsv DIR`, defaults untouched.
fn restart_runit(n: usize) -> Result<Restarts> {
    restart_daemontools_style("runsv", n)
}

/// s6's `s6-supervise DIR`, defaults untouched.
fn restart_s6(n: usize) -> Result<Restarts> {
    restart_daemontools_style("s6-supervise", n)
}

/// runsv and s6-supervise share the daemontools layout: a directory with an executable `run`.
/// `run` is a symlink to this binary rather than the usual `#!/bin/sh` + `exec` script, so no
/// shell sits between the supervisor and the workload (as with warden and supervisord); the
/// workload's log path reaches it through the supervisor's own environment, which it inherits.
fn restart_daemontools_style(supervisor: &str, n: usize) -> Result<Restarts> {
    let dir = tempfile::tempdir()?;
    let service = dir.path().join("crashloop");
    fs::create_dir(&service)?;
    std::os::unix::fs::symlink(bench_exe(), service.join("run"))?;
    let log = dir.path().join("restarts.log");
    let stderr_log = dir.path().join("supervisor.stderr");
    let mut proc = Proc::spawn(
        supervisor,
        Command::new(supervisor)
            .arg(&service)
            .env(WORKLOAD_ENV, &log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&stderr_log)),
    )?;
    let got = wait_for_starts(&log, n + 1, slow_timeout(n), supervisor);
    proc.check_alive(supervisor, &stderr_log)?;
    drop(proc);
    collect_restarts(&log, n, got, supervisor, || tail(&fs::read_to_string(&stderr_log).unwrap_or_default(), 800).into())
}

/// How long `n` restarts about a second apart may take before the bench reports what it has.
fn slow_timeout(n: usize) -> Duration {
    Duration::from_millis(1500) * (n as u32 + 1) + Duration::from_secs(10)
}

fn collect_restarts(log: &Path, n: usize, starts: usize, who: &str, diagnostics: impl FnOnce() -> String) -> Result<Restarts> {
    let samples = restart_latencies(log, n);
    if samples.is_empty() {
        bail!("{who} restarted nothing ({starts} starts): {}", diagnostics());
    }
    if samples.len() < n {
        progress(format_args!("  {who}: only {} of {n} restarts before the timeout", samples.len()));
    }
    Ok(Restarts { samples })
}
