//! The benchmark table behind `cargo xtask bench`: warden's restart latency, journal throughput,
//! cell start rate, memory per cell, start latency and memory per isolation backend, and the cost
//! of durable jobs, each measured side by side with supervisord, runit, s6, bare process spawns
//! or raw SQLite in the same run and reported as a ratio; failover times on a cluster; and the
//! control plane's cost per host of a rollout.
//!
//! Sections: `restart`, `journal`, `cells`, `memory`, `isolation`, `jobs`, `failover` and
//! `rollout`. The `jobs` figures are:
//!
//! * overhead per state: a job of 1,000 `true` states in one dependency chain on a fresh
//!   `warden up`; (wall − Σ ran_ms) ÷ 1,000, where wall is the run's `RunStarted` →
//!   `RunCompleted` from its view (`finished_at_ms − started_at_ms`, server clock) and Σ ran_ms
//!   sums the step cells' `lifecycle.destroyed` `ran_ms`, i.e. what warden spends per state
//!   outside the state's own process (journal commits, shim, cgroup, scheduling). Beside it,
//!   1,000 sequential `/bin/true` spawns from Rust (`Command::status`), per spawn and in all;
//! * resume time: a run with 100,000 kernel events (50,000 states in a chain, the last one
//!   entered and never closed) written straight into a fresh journal with `SqliteStore`, no cells
//!   run and no projection snapshot taken, then `warden up` on it: spawn → `/v1/health` answers
//!   (open with the hash-chain check, full replay), and spawn → the run has ended (the open
//!   attempt closed as orphaned, and the run `failed` since its retry budget is 0). Beside them,
//!   raw SQLite reading every event body in order and parsing it as JSON, the floor of any replay.
//!
//! `failover` prints a table of its own (see [`failover`]): a `warden server` and three agents on
//! loopback, the primary's whole host SIGKILLed `WARDEN_BENCH_FAILOVER_RUNS` times (default 20)
//! per replication mode (`none`, `warm-standby`, `hot`); p50 / p95 / max of host killed → the
//! new primary's first line, next to the lease TTL, and the runs in which two epochs overlapped.
//! Two more rows (`warm-standby, drain`, `hot, drain`) hand over on purpose instead: `warden
//! hosts drain` of the primary's host → the new primary's first line (the lease is revoked).
//!
//! `rollout` prints a table of its own too (see [`rollout`]): a `warden server` and 1,000 (then
//! 100) hosts the bench simulates itself (enrolled keys, no agent processes), one host activation
//! with `soak = "0s"` driven to `completed` by signed agent reports; wall time and server CPU per
//! host, beside raw SQLite writing the rollout's own events one transaction per report.
//! `WARDEN_BENCH_ROLLOUT_HOSTS=1000,100` sets the fleet sizes.
//!
//! The machine is shared and small, so absolute figures drift from run to run; the ratios between
//! figures taken in one run are what to compare. Progress goes to stderr, the markdown table to
//! stdout. Nothing is asserted: the targets are printed for context only.
//!
//! Needs `target/release/warden-shim` next to `warden` (`cargo xtask bench` builds both first) and
//! `supervisord`, `runsv`/`runsvdir`, `s6-supervise`/`s6-svscan` on the PATH (it installs them).
//! `WARDEN_BENCH_ONLY=restart,journal,cells,memory,isolation,jobs,failover,rollout` runs a
//! subset while developing.
//! The `isolation` section also needs `runc` and a static `/bin/busybox` (Debian's
//! `busybox-static`) for its `isolation = "oci"` rows, and root for `cell` and `oci`.
//!
//! The same binary doubles as the crash-looping workload of the restart test: started with
//! `WARDEN_BENCH_WORKLOAD=<file>` in its environment, it appends `<CLOCK_REALTIME ns> start` and
//! `<ns> exit` to that file and exits with code 1. With `WARDEN_BENCH_TRUTH=<file>` it is the
//! failover test's workload instead, appending `<WARDEN_EPOCH> <CLOCK_MONOTONIC ns>` every 20 ms.

mod cells;
mod common;
mod failover;
mod isolation;
mod jobs;
mod journal;
mod memory;
mod restart;
mod rollout;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::cells::cells_section;
use crate::common::control_plane::warden_bin;
use crate::common::process::progress;
use crate::common::table::{machine_summary, Row};
use crate::isolation::isolation_section;
use crate::jobs::jobs_section;
use crate::journal::journal_section;
use crate::memory::{memory_section, MEMORY_CELLS};
use crate::restart::{restart_section, workload_main, WORKLOAD_ENV};

fn main() {
    // Workload mode first: the restart test measures from this process's first instructions.
    if let Some(log) = std::env::var_os(WORKLOAD_ENV) {
        workload_main(&log);
    }
    if let Some(truth) = std::env::var_os(failover::TRUTH_ENV) {
        failover::truth_writer_main(&truth);
    }
    let only = std::env::var("WARDEN_BENCH_ONLY").unwrap_or_default();
    let wanted = |section: &str| only.is_empty() || only.split(',').any(|s| s.trim() == section);
    check_prerequisites();
    let started = Instant::now();

    let mut rows = Vec::new();
    if wanted("restart") {
        rows.extend(restart_section());
    }
    if wanted("journal") {
        rows.extend(journal_section());
    }
    if wanted("cells") {
        rows.extend(cells_section());
    }
    if wanted("memory") {
        rows.extend(memory_section());
    }
    if wanted("isolation") {
        rows.extend(isolation_section());
    }
    if wanted("jobs") {
        rows.extend(jobs_section());
    }
    let failover = wanted("failover").then(failover::failover_section);
    let rollout = wanted("rollout").then(rollout::rollout_section);
    progress(format_args!("done in {:.0} s", started.elapsed().as_secs_f64()));
    if !rows.is_empty() {
        print_table(&rows);
    }
    for (i, table) in failover.into_iter().chain(rollout).enumerate() {
        print!("{}{table}", if rows.is_empty() && i == 0 { "" } else { "\n" });
    }
}

fn print_table(rows: &[Row]) {
    let mut out = String::new();
    let _ = writeln!(out, "## warden benchmark\n");
    let _ = writeln!(out, "Reproduce with `cargo xtask bench`. {}\n", machine_summary());
    let _ = writeln!(out, "| Metric | warden | Alternatives | warden ÷ alternative | Notes |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for row in rows {
        let (alternatives, ratios) = if row.alternatives.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            (
                row.alternatives.iter().map(|a| format!("{}: {}", a.who, a.figure)).collect::<Vec<_>>().join("; "),
                row.alternatives.iter().map(|a| format!("{}: {}", a.who, a.ratio)).collect::<Vec<_>>().join("; "),
            )
        };
        let _ = writeln!(out, "| {} | {} | {alternatives} | {ratios} | {} |", row.metric, row.warden, row.note);
    }
    let _ = writeln!(
        out,
        "\nSettings: warden `policy = \"always\"`, `backoff = \"0s\"`, `backoff_max = \"0s\"`, every event fsynced \
         (journal_mode=WAL, synchronous=FULL); supervisord defaults except `startsecs=0` (otherwise a program that \
         exits at once goes BACKOFF → FATAL); runsv and s6-supervise at their defaults, `run` a symlink to the workload \
         binary (no shell). Restart latency = CLOCK_REALTIME of a run's `exit` line → the next run's `start` line, \
         written by the workload itself. Memory: PSS from /proc/PID/smaps_rollup with {MEMORY_CELLS} `sleep 1000` \
         cells per system; warden's figure is its per-cell `warden-shim`. Ratios compare figures from this one run; \
         absolute numbers drift on a shared machine."
    );
    print!("{out}");
}

/// Fails early, with the fix, when the build or the alternatives are missing.
fn check_prerequisites() {
    let shim = Path::new(warden_bin()).with_file_name("warden-shim");
    if !shim.is_file() {
        progress(format_args!(
            "warning: {} is missing, so warden falls back to `warden shim` (a much larger process per cell); \
             run `cargo build --release --workspace --bins` first (`cargo xtask bench` does)",
            shim.display()
        ));
    }
    let missing: HashSet<&str> = ["supervisord", "runsv", "runsvdir", "s6-supervise", "s6-svscan"]
        .into_iter()
        .filter(|binary| {
            Command::new("sh").arg("-c").arg(format!("command -v {binary}")).output().map_or(true, |o| !o.status.success())
        })
        .collect();
    if !missing.is_empty() {
        progress(format_args!("warning: not on PATH: {missing:?} (`cargo xtask bench` installs supervisor, runit and s6)"));
    }
    // The `isolation` section's oci rows: warden finds runc in /usr/sbin even off the PATH.
    let runc =
        ["/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc", "/usr/local/bin/runc"].iter().any(|p| Path::new(p).is_file());
    if !runc || !Path::new("/bin/busybox").is_file() {
        progress(format_args!(
            "warning: the isolation section's oci rows need runc and /bin/busybox (apt-get install runc busybox-static)"
        ));
    }
}
