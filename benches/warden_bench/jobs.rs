//! The `jobs` section: overhead per state of a durable job, and resume of a long history.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use warden_core::canonical::Artifact;
use warden_core::job::{JobEvent, JobManifest, KernelEvent, RetrySpec, StateSpec};
use warden_core::{EventData, NewEvent, Projection, Spec};
use warden_store::{SqliteStore, Store};

use crate::common::control_plane::{unsigned_client, why, WardenServer};
use crate::common::process::{progress, wait_every};
use crate::common::table::{figure, fmt_ms, fmt_s, group_thousands, ratio_of, Alt, Row};

/// States in the chain of the overhead test, and `/bin/true` spawns in its baseline.
const JOB_CHAIN_STATES: usize = 1000;
/// Kernel events in the resume test's history: `RunStarted`, then `StateEntered` +
/// `StateCompleted` per state, and a last `StateEntered` left open; so (N − 2) ÷ 2 completed
/// states plus the open one. Even.
const RESUME_EVENTS: usize = 100_000;
/// Events per append while the resume test writes its journal.
const RESUME_APPEND: usize = 10_000;
/// The resume test's run (a run id is `r-` and no `.`).
const RESUME_RUN_ID: &str = "r-resumebench";
const DESTROYED_EVENT: &str = "dev.warden.lifecycle.destroyed.v1";
const KERNEL_EVENT: &str = "dev.warden.job.kernel.v1";

/// One run of the chain, as warden's own records tell it.
struct JobChain {
    /// `RunStarted` → `RunCompleted`: the run view's `finished_at_ms − started_at_ms` (server ms).
    wall_ms: u64,
    /// Σ `ran_ms` of the step cells' `lifecycle.destroyed` events.
    ran_ms: u64,
    /// POST → the first poll that saw `completed`, on the bench's clock.
    client: Duration,
    /// Step cells with a `destroyed` event, and how many of those carried no `ran_ms`.
    cells: usize,
    cells_without_ran_ms: usize,
    /// Journal events of the whole server (it ran nothing else), and the run's kernel events.
    journal_events: usize,
    kernel_events: usize,
}

impl JobChain {
    fn overhead_ms(&self) -> f64 {
        self.wall_ms.saturating_sub(self.ran_ms) as f64 / JOB_CHAIN_STATES as f64
    }
}

/// `n` sequential `/bin/true` spawns from this process.
struct BareSpawns {
    total: Duration,
    n: usize,
}

impl BareSpawns {
    fn per_spawn_ms(&self) -> f64 {
        self.total.as_secs_f64() * 1e3 / self.n as f64
    }
}

/// The history the resume test wrote, straight into the journal.
struct ResumeJournal {
    run_id: String,
    states: usize,
    events: usize,
    manifest_bytes: usize,
}

/// What `warden up` on that history took, from just before its spawn.
struct JobResume {
    to_health: Duration,
    to_ended: Duration,
    /// The run view afterwards: `failed` expected (the open attempt is orphaned, budget 0).
    status: String,
    kernel_events: u64,
    /// The `journal` line of the up log (events, snapshot used, chain verified from).
    journal_line: String,
    /// The same start-up steps, timed inside this process.
    in_process: Result<InProcessReplay>,
    journal: ResumeJournal,
}

/// `SqliteStore::open` (which verifies the hash chain) and the replay into a `Projection`:
/// what `warden up` does before it listens, timed here because the up log prints no timings.
struct InProcessReplay {
    open: Duration,
    replay: Duration,
    verified_from_seq: u64,
}

/// Raw SQLite: `SELECT body FROM events ORDER BY seq`, every row parsed as JSON.
struct ReplayFloor {
    elapsed: Duration,
    rows: usize,
}

pub(crate) fn jobs_section() -> Vec<Row> {
    progress(format_args!(
        "jobs: a chain of {JOB_CHAIN_STATES} `true` states, then {JOB_CHAIN_STATES} sequential spawns of /bin/true"
    ));
    let chain = job_chain();
    progress(format_args!(
        "  warden: {}",
        figure(&chain, |c| format!(
            "wall {}, Σ ran_ms {} ms, overhead {} per state",
            fmt_s(Duration::from_millis(c.wall_ms)),
            c.ran_ms,
            fmt_ms(c.overhead_ms())
        ))
    ));
    let spawns = bare_spawns(JOB_CHAIN_STATES);
    progress(format_args!(
        "  /bin/true: {}",
        figure(&spawns, |s| format!("{} per spawn, {} in all", fmt_ms(s.per_spawn_ms()), fmt_s(s.total)))
    ));
    progress(format_args!(
        "jobs: resume of a run with {} kernel events in its history (journal written directly, no cells)",
        group_thousands(RESUME_EVENTS as u64)
    ));
    let (resume, floor) = job_resume();
    progress(format_args!(
        "  warden: {}; raw SQLite: {}",
        figure(&resume, |r| format!("health after {}, run ended after {}", fmt_s(r.to_health), fmt_s(r.to_ended))),
        figure(&floor, |f| fmt_s(f.elapsed))
    ));

    let secs = |d: &Duration| d.as_secs_f64();
    let floor_alt = |of: &dyn Fn(&JobResume) -> f64| Alt {
        who: "raw SQLite read + JSON parse".into(),
        figure: figure(&floor, |f| fmt_s(f.elapsed)),
        ratio: ratio_of(&resume, of, &floor, |f| secs(&f.elapsed)),
    };
    let n_chain = group_thousands(JOB_CHAIN_STATES as u64);
    let n_resume = group_thousands(RESUME_EVENTS as u64);
    vec![
        Row {
            metric: format!(
                "Job overhead per state, {n_chain} `true` states in one dependency chain ((wall − Σ ran_ms) ÷ {n_chain}; \
                 lower is better)"
            ),
            warden: figure(&chain, |c| fmt_ms(c.overhead_ms())),
            alternatives: vec![Alt {
                who: "bare spawn of /bin/true from Rust".into(),
                figure: figure(&spawns, |s| format!("{} per spawn", fmt_ms(s.per_spawn_ms()))),
                ratio: ratio_of(&chain, JobChain::overhead_ms, &spawns, BareSpawns::per_spawn_ms),
            }],
            note: format!(
                "`POST /v1/jobs` of s0000 → s0001 → … each `argv = [\"true\"]`. wall = the run view's finished_at_ms − \
                 started_at_ms (server clock) = {}; Σ ran_ms = {} over {} step cells' lifecycle.destroyed events (ms \
                 resolution, started → exit as the engine saw it{}); {} journal events per state ({} kernel events in all). \
                 Each state is a workload `<run>.<state>.0` with its own shim and cell cgroup, and costs two \
                 fsynced journal commits: its cell's start, then its exit together with StateCompleted and the next \
                 state's StateEntered + submit (one engine batch). That is the price of a durable, re-adoptable \
                 step. The alternative is `Command::new(\"/bin/true\").status()` {n_chain} times in a row with no \
                 record of anything: the floor any supervisor pays per process",
                figure(&chain, |c| fmt_s(Duration::from_millis(c.wall_ms))),
                figure(&chain, |c| format!("{} ms", group_thousands(c.ran_ms))),
                figure(&chain, |c| group_thousands(c.cells as u64)),
                match &chain {
                    Ok(c) if c.cells_without_ran_ms > 0 => format!("; {} had no ran_ms", c.cells_without_ran_ms),
                    _ => String::new(),
                },
                figure(&chain, |c| format!("{:.1}", c.journal_events as f64 / JOB_CHAIN_STATES as f64)),
                figure(&chain, |c| group_thousands(c.kernel_events as u64)),
            ),
        },
        Row {
            metric: format!("Job wall time, the same {n_chain}-state chain (RunStarted → RunCompleted; lower is better)"),
            warden: figure(&chain, |c| fmt_s(Duration::from_millis(c.wall_ms))),
            alternatives: vec![Alt {
                who: format!("{n_chain} sequential /bin/true spawns"),
                figure: figure(&spawns, |s| fmt_s(s.total)),
                ratio: ratio_of(&chain, |c| c.wall_ms as f64 / 1e3, &spawns, |s| secs(&s.total)),
            }],
            note: format!(
                "POST → the first poll of GET /v1/jobs/<run> (every 50 ms) that saw `completed`: {} on the bench's clock",
                figure(&chain, |c| fmt_s(c.client))
            ),
        },
        Row {
            metric: format!(
                "Job resume, one run with {n_resume} kernel events and its last state open (spawn of `warden up` → run \
                 ended; lower is better)"
            ),
            warden: figure(&resume, |r| fmt_s(r.to_ended)),
            alternatives: vec![floor_alt(&|r| secs(&r.to_ended))],
            note: format!(
                "The history is written with SqliteStore::append_with_artifacts ({} events per append), no cells run: \
                 RunStarted, StateEntered + StateCompleted for {} states in one chain, then the last state's \
                 StateEntered left open; manifest artifact {} ({} states). No projection snapshot is in that journal, \
                 so warden replays all {n_resume} events (it snapshots every 10,000 events by default, \
                 `--snapshot-every`, but only of what it journals itself). On start it verifies the hash chain, \
                 replays, loads the manifest, finds the open attempt without a workload, journals \
                 StateFailed{{orphaned}} and, the retry budget being 0, RunCompleted{{failed}}: the run ended `{}` \
                 with {} kernel events. Ended = `/metrics` shows no running run (polled every 2 ms; the run view \
                 of {} states is ~10 MB, so it is read once, afterwards). The raw SQLite floor reads {} rows and \
                 checks no hashes: `SELECT body FROM events ORDER BY seq` on the same file, each row \
                 parsed into a serde_json::Value. Page cache warm (the journal was just written); n = 1",
                group_thousands(RESUME_APPEND as u64),
                figure(&resume, |r| group_thousands(r.journal.states as u64 - 1)),
                figure(&resume, |r| format!("{:.1} MB", r.journal.manifest_bytes as f64 / 1e6)),
                figure(&resume, |r| group_thousands(r.journal.states as u64)),
                figure(&resume, |r| r.status.clone()),
                figure(&resume, |r| group_thousands(r.kernel_events)),
                figure(&resume, |r| group_thousands(r.journal.states as u64)),
                figure(&floor, |f| group_thousands(f.rows as u64)),
            ),
        },
        Row {
            metric: format!("Job resume, {n_resume} events: spawn of `warden up` → /v1/health answers (lower is better)"),
            warden: figure(&resume, |r| fmt_s(r.to_health)),
            alternatives: vec![floor_alt(&|r| secs(&r.to_health))],
            note: match &resume {
                Ok(r) => format!(
                    "`warden up` listens only once the journal is replayed. The same steps inside the bench process: \
                     SqliteStore::open with the chain check (verified from seq {}) {}, then read_after in pages of \
                     10,000 + Projection::apply_event {}. The up log prints no timings; its journal line: “{}”",
                    figure(&r.in_process, |p| p.verified_from_seq.to_string()),
                    figure(&r.in_process, |p| fmt_s(p.open)),
                    figure(&r.in_process, |p| fmt_s(p.replay)),
                    r.journal_line
                ),
                Err(_) => String::new(),
            },
        },
    ]
}

/// A chain of `JOB_CHAIN_STATES` `true` states on a fresh `warden up`: runs it to its end and
/// reads the timings back from the run view and the journal.
fn job_chain() -> Result<JobChain> {
    let warden = WardenServer::start()?;
    let api = warden.api()?;
    let mut manifest = String::from("name = \"chain\"\n");
    for i in 0..JOB_CHAIN_STATES {
        let _ = writeln!(manifest, "[[state]]\nid = \"s{i:04}\"");
        if i > 0 {
            let _ = writeln!(manifest, "depends_on = [\"s{:04}\"]", i - 1);
        }
        manifest.push_str("argv = [\"true\"]\n");
    }
    let posted = Instant::now();
    let run = api.job_run("chain.toml", &manifest)?;
    let run_id = run["run_id"].as_str().ok_or_else(|| anyhow!("no run_id in {run}"))?.to_string();
    let mut last_report = Instant::now();
    let view = wait_every(Duration::from_secs(600), Duration::from_millis(50), &format!("run {run_id} to end"), || {
        let view = api.job(&run_id)?;
        if view["status"] != "running" {
            return Ok(Some(view));
        }
        if last_report.elapsed() >= Duration::from_secs(15) {
            let done = view["states"].as_array().map_or(0, |s| s.iter().filter(|s| s["status"] == "completed").count());
            progress(format_args!("  {done}/{JOB_CHAIN_STATES} states completed"));
            last_report = Instant::now();
        }
        Ok(None)
    })?;
    let client = posted.elapsed();
    if view["status"] != "completed" {
        let failed = view["states"].as_array().and_then(|s| s.iter().find(|s| s["status"] == "failed")).cloned();
        let why = failed
            .as_ref()
            .and_then(|s| s["workload_id"].as_str())
            .map(|id| api.status(id).map(|v| why(&v)).unwrap_or_else(|e| format!("{e:#}")))
            .unwrap_or_default();
        bail!("run {run_id} ended {}: state {} {why}", view["status"], failed.map(|s| s["state_id"].clone()).unwrap_or_default());
    }
    let (Some(started), Some(finished)) = (view["started_at_ms"].as_u64(), view["finished_at_ms"].as_u64()) else {
        bail!("run {run_id} has no started_at_ms / finished_at_ms");
    };

    let events = api.events_after(0)?;
    let step_prefix = format!("{run_id}.");
    let destroyed: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["type"] == DESTROYED_EVENT && e["subject"].as_str().is_some_and(|s| s.starts_with(&step_prefix)))
        .collect();
    if destroyed.len() != JOB_CHAIN_STATES {
        progress(format_args!("  warning: {} step cells ended for {JOB_CHAIN_STATES} states", destroyed.len()));
    }
    let ran: Vec<u64> = destroyed.iter().filter_map(|e| e["data"]["ran_ms"].as_u64()).collect();
    let kernel_events = events.iter().filter(|e| e["type"] == KERNEL_EVENT && e["subject"] == run_id.as_str()).count();
    Ok(JobChain {
        wall_ms: finished.saturating_sub(started),
        ran_ms: ran.iter().sum(),
        client,
        cells: destroyed.len(),
        cells_without_ran_ms: destroyed.len() - ran.len(),
        journal_events: events.len(),
        kernel_events,
    })
}

/// `n` sequential `/bin/true` runs from this process after one warm-up: fork/exec/wait and
/// nothing else, the floor of any supervisor.
fn bare_spawns(n: usize) -> Result<BareSpawns> {
    let spawn = || -> Result<()> {
        let status = Command::new("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("cannot spawn /bin/true")?;
        if !status.success() {
            bail!("/bin/true exited with {status}");
        }
        Ok(())
    };
    spawn()?;
    let started = Instant::now();
    for _ in 0..n {
        spawn()?;
    }
    Ok(BareSpawns { total: started.elapsed(), n })
}

/// Writes the long history into a fresh data dir, times the raw SQLite floor and warden's replay
/// in this process on it, then starts `warden up` there and times the resume.
fn job_resume() -> (Result<JobResume>, Result<ReplayFloor>) {
    let prepared = (|| -> Result<(WardenServer, ResumeJournal)> {
        let warden = WardenServer::new()?;
        fs::create_dir_all(warden.data_dir())?;
        let started = Instant::now();
        let journal = write_resume_journal(&warden.data_dir().join("journal.db"))?;
        progress(format_args!(
            "  {} events ({} states, manifest {:.1} MB) written in {}",
            group_thousands(journal.events as u64),
            group_thousands(journal.states as u64),
            journal.manifest_bytes as f64 / 1e6,
            fmt_s(started.elapsed())
        ));
        Ok((warden, journal))
    })();
    let (mut warden, journal) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            let e = format!("{e:#}");
            return (Err(anyhow!("{e}")), Err(anyhow!("{e}")));
        }
    };
    let db = warden.data_dir().join("journal.db");
    let floor = replay_floor(&db);
    let in_process = replay_in_process(&db, &journal);
    (resume_warden(&mut warden, journal, in_process), floor)
}

/// The resume test's history, appended with warden's own store so it is sealed and chained
/// exactly as warden writes it. The manifest is built as a struct: parsing 50,000 states of
/// TOML would only slow the bench down.
fn write_resume_journal(db: &Path) -> Result<ResumeJournal> {
    const { assert!(RESUME_EVENTS >= 2 && RESUME_EVENTS.is_multiple_of(2)) };
    let completed = (RESUME_EVENTS - 2) / 2;
    let cell = Spec::parse("x", "name='x'\n[cell]\nargv=['true']").map_err(|e| anyhow!("{e}"))?.cell;
    let state_id = |i: usize| format!("s{i:05}");
    let states: Vec<StateSpec> = (0..=completed)
        .map(|i| StateSpec {
            id: state_id(i),
            cell: cell.clone(),
            depends_on: if i == 0 { Vec::new() } else { vec![state_id(i - 1)] },
            timeout_ms: None,
            retry: RetrySpec::default(),
        })
        .collect();
    let manifest = JobManifest { name: "resume".into(), namespace: "default".into(), states };
    let manifest_artifact = Artifact::of_json(&manifest);
    let empty = Artifact::of_json(&serde_json::json!({}));
    let (manifest_id, context_id) = (manifest_artifact.id.clone(), empty.id.clone());
    let manifest_bytes = manifest_artifact.bytes.len();

    let run_id = RESUME_RUN_ID.to_string();
    let mut kernel = Vec::with_capacity(RESUME_EVENTS);
    kernel.push(KernelEvent::RunStarted { op_id: run_id.clone(), manifest_id, initial_snapshot_id: context_id.clone() });
    for i in 0..=completed {
        kernel.push(KernelEvent::StateEntered { state_id: state_id(i), attempt: 0, base_snapshot_id: context_id.clone() });
        if i < completed {
            kernel.push(KernelEvent::StateCompleted { state_id: state_id(i), context_snapshot_id: context_id.clone() });
        }
    }
    if kernel.len() != RESUME_EVENTS {
        bail!("built {} kernel events, not {RESUME_EVENTS}", kernel.len());
    }

    let (store, _) = SqliteStore::open(db)?;
    let now = warden_runtime::engine::now_ms();
    let mut events = kernel.into_iter().enumerate().map(|(i, event)| NewEvent {
        id: format!("00000000-0000-4000-8000-{i:012x}"),
        source: "/warden/bench".into(),
        time_ms: now,
        subject: Some(run_id.clone()),
        data: EventData::Job(JobEvent { run_id: run_id.clone(), owner: (i == 0).then(|| "bench".to_string()), event }),
    });
    // The artifacts go with the first append, as warden stores them with the `RunStarted`.
    let mut artifacts = vec![manifest_artifact, empty];
    loop {
        let batch: Vec<NewEvent> = events.by_ref().take(RESUME_APPEND).collect();
        if batch.is_empty() {
            break;
        }
        store.append_with_artifacts(std::mem::take(&mut artifacts), batch)?;
    }
    Ok(ResumeJournal { run_id, states: completed + 1, events: RESUME_EVENTS, manifest_bytes })
}

/// The floor of any replay: every row's body read in order and parsed as JSON; no hash checks,
/// no typed events, no projection.
fn replay_floor(db: &Path) -> Result<ReplayFloor> {
    let started = Instant::now();
    let conn = rusqlite::Connection::open(db)?;
    let mut select = conn.prepare("SELECT body FROM events ORDER BY seq")?;
    let mut rows = select.query([])?;
    let mut n = 0;
    while let Some(row) = rows.next()? {
        let body: serde_json::Value = serde_json::from_slice(row.get_ref(0)?.as_bytes()?)?;
        std::hint::black_box(body);
        n += 1;
    }
    Ok(ReplayFloor { elapsed: started.elapsed(), rows: n })
}

/// What `warden up` does with the journal before it listens (`Engine::load` with no snapshot):
/// open the store (verifying the hash chain), then fold every event into a `Projection`.
fn replay_in_process(db: &Path, journal: &ResumeJournal) -> Result<InProcessReplay> {
    let started = Instant::now();
    let (store, report) = SqliteStore::open(db)?;
    let open = started.elapsed();
    let mut projection = Projection::default();
    warden_runtime::engine::replay_tail(&store, &mut projection)?;
    let replay = started.elapsed() - open;
    let run = projection.runs.get(&journal.run_id).ok_or_else(|| anyhow!("the replay has no run {}", journal.run_id))?;
    if run.n_events != journal.events as u64 || run.open.len() != 1 {
        bail!("the replayed run has {} events and {} open attempts", run.n_events, run.open.len());
    }
    Ok(InProcessReplay { open, replay, verified_from_seq: report.verified_from_seq })
}

/// Starts `warden up` on the written history and times it until `/v1/health` answers and until
/// the run has ended.
fn resume_warden(warden: &mut WardenServer, journal: ResumeJournal, in_process: Result<InProcessReplay>) -> Result<JobResume> {
    let (spawned, to_health) = warden.launch(Duration::from_millis(5), Duration::from_secs(300))?;
    let api = warden.api()?;
    let metrics = unsigned_client(&warden.addr())?;
    let run_id = journal.run_id.clone();
    let to_ended = wait_every(Duration::from_secs(600), Duration::from_millis(2), "the resumed run to end", || {
        let (_, text) = metrics.call("GET", "/metrics", b"", None).context("GET /metrics")?;
        let text = String::from_utf8(text).context("GET /metrics")?;
        let runs: HashMap<&str, u64> = text
            .lines()
            .filter_map(|line| {
                let (status, count) = line.strip_prefix("warden_job_runs{status=\"")?.split_once("\"} ")?;
                Some((status, count.trim().parse().ok()?))
            })
            .collect();
        let ended = match runs.get("running") {
            Some(&running) => running == 0 && runs.values().sum::<u64>() > 0,
            None => api.job(&run_id)?["status"] != "running", // no job metrics: ask the run view
        };
        Ok(ended.then(|| spawned.elapsed()))
    })?;
    let view = api.job(&run_id)?;
    let status = view["status"].as_str().unwrap_or("?").to_string();
    if status != "failed" {
        bail!("the resumed run ended {status}, not failed (its open attempt is orphaned and has no retries left)");
    }
    let journal_line = warden
        .up_log()
        .lines()
        .find(|line| line.trim_start().starts_with("journal "))
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "-".into());
    Ok(JobResume {
        to_health,
        to_ended,
        status,
        kernel_events: view["n_events"].as_u64().unwrap_or(0),
        journal_line,
        in_process,
        journal,
    })
}
