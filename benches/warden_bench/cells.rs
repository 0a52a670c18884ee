//! The `cells` section: cells started per second over the API.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::common::control_plane::{parallel, sleeper_spec, stop_all, WardenServer, API_THREADS};
use crate::common::process::{progress, signal, start_time, still_running};
use crate::common::table::{figure, Row};

/// Cells submitted in the start-rate test.
const RATE_CELLS: usize = 1000;

struct CellRate {
    per_sec: f64,
    to_running: Duration,
    to_stopped: Duration,
    left_behind: usize,
}

pub(crate) fn cells_section() -> Vec<Row> {
    progress(format_args!("cells: {RATE_CELLS} `sleep 1000` cells from {API_THREADS} API threads"));
    let rate = cell_rate(RATE_CELLS);
    let note = match &rate {
        Ok(r) => format!(
            "all running {:.2} s after the first submit; stopping all took {:.2} s; `sleep 1000` left behind: {}. Target ≥ 500 cells/s",
            r.to_running.as_secs_f64(),
            r.to_stopped.as_secs_f64(),
            r.left_behind
        ),
        Err(_) => "Target ≥ 500 cells/s".into(),
    };
    vec![Row {
        metric: format!("Cells started per second, {RATE_CELLS} cells over the HTTP API (higher is better)"),
        warden: figure(&rate, |r| format!("{:.0} cells/s", r.per_sec)),
        alternatives: Vec::new(),
        note,
    }]
}

/// Submits `n` sleepers from several threads and times first submit → n-th
/// `dev.warden.lifecycle.started.v1` on the event stream; then stops them all and checks that
/// every `sleep` it started is gone.
fn cell_rate(n: usize) -> Result<CellRate> {
    let warden = WardenServer::start()?;
    let api = warden.api()?;

    // Follow the event stream from a thread of its own; it reports when it is connected (so no
    // started event can be missed: the server subscribes before it answers) and when it has
    // seen the n-th started event.
    let (connected_tx, connected) = mpsc::channel::<Result<()>>();
    let (all_started_tx, all_started) = mpsc::channel::<Instant>();
    let follow_api = warden.api()?;
    std::thread::spawn(move || {
        let response = match follow_api.stream("/v1/events?follow=true") {
            Ok(response) => response,
            Err(e) => {
                let _ = connected_tx.send(Err(e));
                return;
            }
        };
        let _ = connected_tx.send(Ok(()));
        let mut started = 0;
        for line in BufReader::new(response).lines() {
            let Ok(line) = line else { return };
            if line.contains("\"dev.warden.lifecycle.started.v1\"") {
                started += 1;
                if started == n {
                    let _ = all_started_tx.send(Instant::now());
                    return;
                }
            }
        }
    });
    connected.recv_timeout(Duration::from_secs(10)).context("the event stream did not connect")??;

    let first_submit = Instant::now();
    let ids = parallel(n, API_THREADS, |i| Ok(api.submit(&format!("sleep-{i}.toml"), &sleeper_spec(i))?.info.id))?;
    let all_running =
        all_started.recv_timeout(Duration::from_secs(300)).map_err(|_| anyhow!("not all {n} cells started within 300 s"))?;
    let to_running = all_running - first_submit;
    progress(format_args!("  {n} cells running after {:.2} s", to_running.as_secs_f64()));

    // The workloads' pids, with start times, to check afterwards that stopping left none behind.
    let running: Vec<(u32, u64)> = api
        .list()?
        .iter()
        .filter(|v| v.state == "running")
        .filter_map(|v| v.pid)
        .filter_map(|pid| Some((pid, start_time(pid)?)))
        .collect();
    if running.len() != n {
        progress(format_args!("  warning: {} of {n} cells listed as running", running.len()));
    }

    let stop_started = Instant::now();
    stop_all(&api, &ids)?;
    let to_stopped = stop_started.elapsed();
    progress(format_args!("  all stopped after {:.2} s", to_stopped.as_secs_f64()));
    // A workload is `stopped` once its exit is journaled, i.e. after its process was reaped.
    let left: Vec<u32> = running.iter().filter(|(pid, t)| still_running(*pid, *t)).map(|(pid, _)| *pid).collect();
    for pid in &left {
        signal(*pid, libc::SIGKILL);
    }
    Ok(CellRate { per_sec: n as f64 / to_running.as_secs_f64(), to_running, to_stopped, left_behind: left.len() })
}
