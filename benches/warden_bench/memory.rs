//! The `memory` section: memory (PSS) per supervised cell, next to runit, s6 and supervisord.

use std::fmt::Write as _;
use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Result};

use crate::common::control_plane::{parallel, sleeper_spec, stop_all, WardenServer, API_THREADS};
use crate::common::process::{children_named, has_children, log_file, progress, pss_kib, wait_until, write_executable, Proc};
use crate::common::stats::median;
use crate::common::table::{figure, fmt_kib, ratio_of, Alt, Row};
use crate::restart::start_supervisord;

/// Cells (or services, or programs) per system in the memory test.
pub(crate) const MEMORY_CELLS: usize = 100;
/// Pause after the last memory-test process is up, so every system's lazily touched pages (and
/// supervisord's first state transitions) are in before PSS is read.
pub(crate) const MEMORY_SETTLE: Duration = Duration::from_secs(2);

/// PSS in KiB: per supervising process (median), and of the one parent over all of them.
pub(crate) struct Memory {
    pub(crate) per_cell_kib: f64,
    pub(crate) parent_kib: u64,
    pub(crate) processes: usize,
}

pub(crate) fn memory_section() -> Vec<Row> {
    progress(format_args!("memory: {MEMORY_CELLS} `sleep 1000` cells per system"));
    let warden = memory_warden(MEMORY_CELLS);
    progress(format_args!("  warden: {}", figure(&warden, |m| fmt_kib(m.per_cell_kib))));
    let runit = memory_runit(MEMORY_CELLS);
    progress(format_args!("  runit: {}", figure(&runit, |m| fmt_kib(m.per_cell_kib))));
    let s6 = memory_s6(MEMORY_CELLS);
    progress(format_args!("  s6: {}", figure(&s6, |m| fmt_kib(m.per_cell_kib))));
    let supervisord = memory_supervisord(MEMORY_CELLS);
    progress(format_args!("  supervisord: {}", figure(&supervisord, |m| fmt_kib(m.per_cell_kib))));

    let per_cell = |m: &Memory| m.per_cell_kib;
    let parent_share = |m: &Memory| m.parent_kib as f64 / MEMORY_CELLS as f64;
    let total = |m: &Memory| m.per_cell_kib + m.parent_kib as f64 / MEMORY_CELLS as f64;
    let alt = |who: &str, result: &Result<Memory>, of: &dyn Fn(&Memory) -> f64| Alt {
        who: who.to_string(),
        figure: figure(result, |m| fmt_kib(of(m))),
        ratio: ratio_of(&warden, of, result, of),
    };
    let counts =
        [&warden, &runit, &s6].map(|r| r.as_ref().map(|m| m.processes.to_string()).unwrap_or_else(|_| "-".into())).join("/");
    vec![
        Row {
            metric: format!("Memory per supervised cell, {MEMORY_CELLS} cells (PSS; lower is better)"),
            warden: figure(&warden, |m| fmt_kib(per_cell(m))),
            alternatives: vec![
                alt("runsv", &runit, &per_cell),
                alt("s6-supervise", &s6, &per_cell),
                alt("supervisord ÷ 100", &supervisord, &per_cell),
            ],
            note: format!(
                "warden: median over its shims; runit, s6: median per runsv / s6-supervise (processes measured: {counts}). \
                 Target ≤ 150 KB per cell"
            ),
        },
        Row {
            metric: format!("Supervisor process ÷ {MEMORY_CELLS} (PSS)"),
            warden: figure(&warden, |m| fmt_kib(parent_share(m))),
            alternatives: vec![alt("runsvdir", &runit, &parent_share), alt("s6-svscan", &s6, &parent_share)],
            note: "`warden up` (API, engine, journal) spread over the cells; supervisord's single process is the row above"
                .into(),
        },
        Row {
            metric: "Total per cell (the two rows above)".into(),
            warden: figure(&warden, |m| fmt_kib(total(m))),
            alternatives: vec![alt("runit", &runit, &total), alt("s6", &s6, &total), alt("supervisord", &supervisord, &per_cell)],
            note: String::new(),
        },
    ]
}

fn memory_warden(n: usize) -> Result<Memory> {
    let warden = WardenServer::start()?;
    let api = warden.api()?;
    let ids = parallel(n, API_THREADS.min(4), |i| Ok(api.submit(&format!("sleep-{i}.toml"), &sleeper_spec(i))?.info.id))?;
    wait_until(Duration::from_secs(60), "every cell to run", || {
        Ok((api.list()?.iter().filter(|v| v.state == "running").count() == n).then_some(()))
    })?;
    std::thread::sleep(MEMORY_SETTLE);
    let shims = warden.shim_pids();
    if shims.len() != n {
        bail!("found {} shim pids for {n} cells", shims.len());
    }
    let memory = measure(&shims, warden.server_pid())?;
    stop_all(&api, &ids)?;
    Ok(memory)
}

/// `runsvdir DIR` over `n` services, each `exec sleep 1000`: one runsv per service.
pub(crate) fn memory_runit(n: usize) -> Result<Memory> {
    memory_svscan_style("runsvdir", "runsv", n)
}

/// `s6-svscan DIR` over `n` services, each `exec sleep 1000`: one s6-supervise per service.
pub(crate) fn memory_s6(n: usize) -> Result<Memory> {
    memory_svscan_style("s6-svscan", "s6-supervise", n)
}

fn memory_svscan_style(scanner: &str, supervisor: &str, n: usize) -> Result<Memory> {
    let dir = tempfile::tempdir()?;
    let services = dir.path().join("services");
    for i in 0..n {
        let service = services.join(format!("sleep-{i}"));
        fs::create_dir_all(&service)?;
        write_executable(&service.join("run"), "#!/bin/sh\nexec sleep 1000\n")?;
    }
    let stderr_log = dir.path().join("scanner.stderr");
    let mut scan = Proc::spawn(
        scanner,
        Command::new(scanner).arg(&services).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log_file(&stderr_log)),
    )?;
    let supervisors = wait_until(Duration::from_secs(60), &format!("{n} {supervisor} with a running service"), || {
        scan.check_alive(scanner, &stderr_log)?;
        let supervisors = children_named(scan.pid(), supervisor);
        Ok((supervisors.len() == n && supervisors.iter().all(|&pid| has_children(pid))).then_some(supervisors))
    })?;
    std::thread::sleep(MEMORY_SETTLE);
    measure(&supervisors, scan.pid())
}

/// One supervisord with `n` programs, each `sleep 1000`: its PSS ÷ n per program.
pub(crate) fn memory_supervisord(n: usize) -> Result<Memory> {
    let dir = tempfile::tempdir()?;
    let mut programs = String::new();
    for i in 0..n {
        let _ = writeln!(programs, "[program:sleep-{i}]\ncommand=sleep 1000\n");
    }
    let (mut supervisord, stderr_log) = start_supervisord(dir.path(), &programs)?;
    wait_until(Duration::from_secs(60), &format!("{n} programs under supervisord"), || {
        supervisord.check_alive("supervisord", &stderr_log)?;
        Ok((children_named(supervisord.pid(), "sleep").len() == n).then_some(()))
    })?;
    std::thread::sleep(MEMORY_SETTLE);
    let pss = pss_kib(supervisord.pid())?;
    Ok(Memory { per_cell_kib: pss as f64 / n as f64, parent_kib: 0, processes: 1 })
}

fn measure(per_cell: &[u32], parent: u32) -> Result<Memory> {
    let pss = per_cell.iter().map(|&pid| pss_kib(pid)).collect::<Result<Vec<u64>>>()?;
    Ok(Memory { per_cell_kib: median(&pss), parent_kib: pss_kib(parent)?, processes: pss.len() })
}
