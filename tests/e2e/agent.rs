//! The cluster agent's executor against real cells (the `warden shim` of the real binary), without
//! a control plane: commands in, durable reports out; lease claims, renewals and refusals; and
//! re-adoption of running, ended and lost cells after the agent itself went away.
//! Lease claims are answered by a stand-in for the heartbeat loop (`Claims`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use warden_cell::{CellState, ExitStatus, ProcessBackend, ShimExe, StartedCell};
use warden_core::lease::{HeldLease, LeaseTiming};
use warden_core::Spec;
use warden_runtime::agent::{boottime_ms, pending_reports, AgentConfig, AgentError, ClaimRequest, Executor, Readoption};
use warden_runtime::proto::{CommandKind, InventoryState, LeaseClaim, Report, ReportEvent, StartLease};
use warden_store::queue::DurableQueue;

const TIMEOUT: Duration = Duration::from_secs(20);

fn shim() -> ShimExe {
    ShimExe::Subcommand(PathBuf::from(env!("CARGO_BIN_EXE_warden")))
}

/// How the stand-in for the heartbeat loop answers lease claims.
#[derive(Clone, Default)]
struct Claims {
    refuse: Arc<Mutex<bool>>,
    seen: Arc<Mutex<Vec<LeaseClaim>>>,
}

impl Claims {
    /// Answers every claim at once: renewed "as sent now", unless refusing.
    fn serve(&self, mut requests: mpsc::UnboundedReceiver<ClaimRequest>) {
        let claims = self.clone();
        tokio::spawn(async move {
            while let Some(request) = requests.recv().await {
                claims.seen.lock().unwrap().push(request.claim.clone());
                let refuse = *claims.refuse.lock().unwrap();
                let _ = request.reply.send((!refuse).then(boottime_ms));
            }
        });
    }
}

/// One host's agent state: a data dir with cells, logs and the report queue.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        Host { dir: tempfile::tempdir().unwrap() }
    }

    fn cells_dir(&self) -> PathBuf {
        self.dir.path().join("cells")
    }

    fn logs_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// A fresh executor on this data dir (as a restarted agent would make), serving claims.
    fn executor(&self, timing: LeaseTiming) -> (Executor, Claims) {
        let queue = Arc::new(DurableQueue::open(&self.dir.path().join("reports.db")).unwrap());
        let (claims_tx, claims_rx) = mpsc::unbounded_channel();
        let executor = Executor::new(self.cells_dir(), self.logs_dir(), shim(), queue, timing, claims_tx);
        let claims = Claims::default();
        claims.serve(claims_rx);
        (executor, claims)
    }

    fn backend(&self) -> ProcessBackend {
        ProcessBackend::new(self.cells_dir(), shim())
    }

    fn log(&self, workload_id: &str) -> String {
        std::fs::read_to_string(self.logs_dir().join(workload_id).join("output.log")).unwrap_or_default()
    }
}

fn start(workload_id: &str, cell_id: &str, argv: &str, lease: Option<u64>) -> CommandKind {
    let toml = format!("name = {workload_id:?}\n[cell]\nargv = [\"sh\", \"-c\", {argv:?}]\n");
    let spec = Spec::parse("test.toml", &toml).unwrap();
    CommandKind::Start {
        workload_id: workload_id.into(),
        cell_id: cell_id.into(),
        cell: spec.cell,
        logs: spec.logs,
        lease: lease.map(|epoch| StartLease { epoch, ttl_ms: None, outage: Default::default() }),
        checkpoint: None,
        spec_id: Some(format!("spec-of-{workload_id}")),
    }
}

fn reports(executor: &Executor) -> Vec<Report> {
    pending_reports(executor.queue(), usize::MAX).unwrap()
}

fn events_of(executor: &Executor, cell_id: &str) -> Vec<ReportEvent> {
    reports(executor).into_iter().filter(|r| r.cell_id == cell_id).map(|r| r.event).collect()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The cell's exit, once its report is queued.
async fn exit_report(executor: &Executor, cell_id: &str) -> warden_core::CellExit {
    let mut found = None;
    wait_until(&format!("the exit report of {cell_id}"), || {
        found = events_of(executor, cell_id).into_iter().find_map(|event| match event {
            ReportEvent::Exited { exit } => Some(exit),
            _ => None,
        });
        found.is_some()
    })
    .await;
    found.unwrap()
}

fn started_pid(executor: &Executor, cell_id: &str) -> u32 {
    let events = events_of(executor, cell_id);
    match events.first() {
        Some(ReportEvent::Started { pid, pid_start_time }) => {
            assert_eq!(warden_cell::process_start_time(*pid), Some(*pid_start_time), "the reported pid is the live cell");
            *pid
        }
        other => panic!("{cell_id}: expected a Started report first, got {other:?} (all: {events:?})"),
    }
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => !matches!(stat[stat.rfind(')').unwrap() + 2..].chars().next(), Some('Z' | 'X')),
    }
}

fn exit_json(cells_dir: &Path, cell_id: &str) -> ExitStatus {
    serde_json::from_slice(&std::fs::read(cells_dir.join(cell_id).join("exit.json")).unwrap()).unwrap()
}

fn lease_json(cells_dir: &Path, cell_id: &str) -> warden_cell::LeaseRecord {
    serde_json::from_slice(&std::fs::read(cells_dir.join(cell_id).join("lease.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_signal_exit_and_remove() {
    let host = Host::new();
    let (executor, claims) = host.executor(LeaseTiming::default());
    executor.execute(start("w-sleep", "w-sleep.1", "echo up; exec sleep 1000", None)).await;
    let pid = started_pid(&executor, "w-sleep.1");
    assert!(alive(pid));
    let inventory = executor.inventory();
    assert_eq!(inventory.len(), 1);
    assert_eq!((inventory[0].workload_id.as_str(), inventory[0].cell_id.as_str()), ("w-sleep", "w-sleep.1"));
    assert!(matches!(inventory[0].state, InventoryState::Running { pid: p, .. } if p == pid));
    assert!(executor.renewals().is_empty(), "an unfenced cell holds no lease");
    assert!(claims.seen.lock().unwrap().is_empty(), "an unfenced start claims nothing");
    wait_until("the cell's output", || host.log("w-sleep").contains("up")).await;
    // No epoch for an unfenced cell.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains("WARDEN_EPOCH="));

    executor.execute(CommandKind::Signal { cell_id: "w-sleep.1".into(), kill: false }).await;
    let exit = exit_report(&executor, "w-sleep.1").await;
    assert_eq!(exit.signal, Some(libc::SIGTERM), "{exit:?}");
    assert!(!alive(pid));
    assert!(matches!(&executor.inventory()[0].state, InventoryState::Exited { exit: e } if *e == exit));
    // Reports are queued in order, numbered from 1.
    let queued = reports(&executor);
    assert_eq!(queued.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);

    executor.execute(CommandKind::Remove { cell_id: "w-sleep.1".into() }).await;
    assert!(!host.cells_dir().join("w-sleep.1").exists());
    assert!(executor.inventory().is_empty());
    // Commands are idempotent: again, and for cells that never were.
    executor.execute(CommandKind::Remove { cell_id: "w-sleep.1".into() }).await;
    executor.execute(CommandKind::Signal { cell_id: "w-nobody.1".into(), kill: true }).await;
    assert_eq!(reports(&executor).len(), 2, "nothing more to report");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_of_an_existing_cell_is_a_no_op_and_failures_are_reported() {
    let host = Host::new();
    let (executor, _claims) = host.executor(LeaseTiming::default());
    let command = start("w-once", "w-once.1", "echo ran; exec sleep 1000", None);
    executor.execute(command.clone()).await;
    let pid = started_pid(&executor, "w-once.1");
    executor.execute(command.clone()).await;
    // …also for a fresh agent on the same data dir that has not re-adopted it (it inspects).
    let (other, _) = host.executor(LeaseTiming::default());
    other.execute(command).await;
    assert_eq!(events_of(&executor, "w-once.1").len(), 1, "one Started, nothing else: {:?}", reports(&executor));
    assert!(alive(pid));
    wait_until("the cell's output", || host.log("w-once").contains("ran")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(host.log("w-once").matches("ran").count(), 1, "the workload ran once");

    let CommandKind::Start { cell, logs, .. } = start("w-missing", "w-missing.1", "", None) else { unreachable!() };
    let missing = warden_core::spec::CellSpec { argv: vec!["/nonexistent/binary".into()], ..cell };
    executor
        .execute(CommandKind::Start {
            workload_id: "w-missing".into(),
            cell_id: "w-missing.1".into(),
            cell: missing,
            logs,
            lease: None,
            checkpoint: None,
            spec_id: None,
        })
        .await;
    match events_of(&executor, "w-missing.1").as_slice() {
        [ReportEvent::StartFailed { error }] => assert!(error.contains("No such file"), "{error}"),
        other => panic!("expected one StartFailed, got {other:?}"),
    }
    assert!(executor.inventory().iter().all(|c| c.cell_id != "w-missing.1"), "a failed start is no cell");

    executor.execute(CommandKind::Signal { cell_id: "w-once.1".into(), kill: true }).await;
    let exit = exit_report(&executor, "w-once.1").await;
    assert_eq!(exit.signal, Some(libc::SIGKILL), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_start_claims_its_lease_first_and_without_renewals_the_shim_fences_it() {
    let host = Host::new();
    let timing = LeaseTiming::default();
    let (executor, claims) = host.executor(timing);
    let before = boottime_ms();
    executor.execute(start("w-primary", "w-primary.1", "echo epoch=$WARDEN_EPOCH; exec sleep 1000", Some(7))).await;
    let started_at = boottime_ms();
    assert_eq!(*claims.seen.lock().unwrap(), vec![LeaseClaim { workload_id: "w-primary".into(), epoch: 7 }]);
    let pid = started_pid(&executor, "w-primary.1");
    wait_until("the epoch in the cell's output", || host.log("w-primary").contains("epoch=7")).await;

    // The fence counts from the claim, and the shim got the same deadline.
    let held = executor.held_lease("w-primary.1").expect("a held lease");
    assert_eq!(held.epoch, 7);
    let validity = timing.holder_validity_ms();
    assert!(held.deadline_ms >= before + validity && held.deadline_ms <= started_at + validity, "{held:?}");
    let record = lease_json(&host.cells_dir(), "w-primary.1");
    assert_eq!((record.epoch, record.deadline_boottime_ns), (7, held.deadline_ms * 1_000_000));
    let renewals = executor.renewals();
    assert_eq!(renewals.len(), 1);
    assert_eq!((renewals[0].cell_id.as_str(), renewals[0].claim.epoch), ("w-primary.1", 7));

    // Nobody renews: the shim kills the cell at the deadline, not before.
    let exit = exit_report(&executor, "w-primary.1").await;
    let ended_at = boottime_ms();
    assert!(ended_at >= held.deadline_ms, "ended at {ended_at}, before the deadline {}", held.deadline_ms);
    assert!(ended_at < held.deadline_ms + 2_000, "ended at {ended_at}, long after the deadline {}", held.deadline_ms);
    assert_eq!(exit.signal, Some(libc::SIGKILL), "{exit:?}");
    assert!(!alive(pid));
    let status = exit_json(&host.cells_dir(), "w-primary.1");
    assert!(status.fenced, "{status:?}");
    assert!(executor.renewals().is_empty(), "an ended cell's lease is not renewed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_claim_is_a_failed_start() {
    let host = Host::new();
    let (executor, claims) = host.executor(LeaseTiming::default());
    *claims.refuse.lock().unwrap() = true;
    executor.execute(start("w-late", "w-late.1", "echo must not run", Some(3))).await;
    match events_of(&executor, "w-late.1").as_slice() {
        [ReportEvent::StartFailed { error }] => assert_eq!(error, "lease epoch 3 could not be claimed"),
        other => panic!("expected one StartFailed, got {other:?}"),
    }
    assert!(!host.cells_dir().join("w-late.1").exists(), "nothing was started");
    assert_eq!(host.log("w-late"), "");
    assert!(executor.inventory().is_empty() && executor.renewals().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_keep_a_fenced_cell_alive_and_a_refusal_kills_it_at_once() {
    let host = Host::new();
    let timing = LeaseTiming::default();
    let (executor, _claims) = host.executor(timing);
    executor.execute(start("w-held", "w-held.1", "exec sleep 1000", Some(2))).await;
    let pid = started_pid(&executor, "w-held.1");
    let first = executor.held_lease("w-held.1").unwrap();

    // Heartbeats every renew_every_ms, each answered yes, for well past the first deadline.
    let until = first.deadline_ms + timing.holder_validity_ms();
    let mut last = first;
    while boottime_ms() < until {
        let renewals = executor.renewals();
        assert_eq!(renewals.len(), 1);
        let sent_at = boottime_ms();
        executor.apply_renewals(&renewals, &[true], sent_at).await;
        let held = executor.held_lease("w-held.1").unwrap();
        assert_eq!(held, HeldLease { epoch: 2, deadline_ms: sent_at + timing.holder_validity_ms() });
        assert_eq!(lease_json(&host.cells_dir(), "w-held.1").deadline_boottime_ns, held.deadline_ms * 1_000_000);
        last = held;
        tokio::time::sleep(Duration::from_millis(timing.renew_every_ms)).await;
    }
    assert!(alive(pid), "renewed in time, the cell lives past its first deadline");
    assert!(events_of(&executor, "w-held.1").len() == 1, "no exit: {:?}", reports(&executor));
    // A late answer to an older heartbeat never shortens the fence.
    executor.apply_renewals(&executor.renewals(), &[true], first.deadline_ms - timing.holder_validity_ms()).await;
    assert_eq!(executor.held_lease("w-held.1"), Some(last));

    // The control plane refuses: the cell is killed now, not at its deadline.
    let refused_at = boottime_ms();
    executor.apply_renewals(&executor.renewals(), &[false], refused_at).await;
    assert_eq!(executor.held_lease("w-held.1"), None);
    assert!(executor.renewals().is_empty());
    let exit = exit_report(&executor, "w-held.1").await;
    assert_eq!(exit.signal, Some(libc::SIGKILL), "{exit:?}");
    assert!(boottime_ms() < last.deadline_ms, "killed on refusal, before the deadline");
    assert!(!exit_json(&host.cells_dir(), "w-held.1").fenced, "killed by the agent, not by the fence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_of_a_cell_that_still_runs_kills_it_first() {
    let host = Host::new();
    let (executor, _claims) = host.executor(LeaseTiming::default());
    executor.execute(start("w-stray", "w-stray.1", "exec sleep 1000", None)).await;
    let pid = started_pid(&executor, "w-stray.1");
    executor.execute(CommandKind::Remove { cell_id: "w-stray.1".into() }).await;
    wait_until("the cell to be killed and removed", || !alive(pid) && !host.cells_dir().join("w-stray.1").exists()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(events_of(&executor, "w-stray.1").len(), 1, "its end was journaled already: no exit report");
    assert!(executor.inventory().is_empty());
}

/// An agent runs five cells and goes away (its runtime, watchers and all, is dropped). While it
/// is down one cell is killed and another's shim is SIGKILLed; the next agent on the data dir
/// finds every cell as it is, watches the live ones (resuming the fenced one's lease from its
/// lease.json) and reports the ends it missed — once.
#[test]
fn readoption_after_the_agent_went_away() {
    let host = Host::new();
    let timing = LeaseTiming::default();
    let first = tokio::runtime::Runtime::new().unwrap();
    let (started, shim_of_lost) = first.block_on(async {
        let (executor, _claims) = host.executor(timing);
        for (cell, argv, lease) in [
            ("w-a.1", "exec sleep 1000", None),
            ("w-b.1", "exec sleep 1000", Some(5)),
            ("w-c.1", "exit 3", None),
            ("w-d.1", "exec sleep 1000", None),
            ("w-e.1", "exec sleep 1000", None),
        ] {
            let workload = cell.strip_suffix(".1").unwrap();
            executor.execute(start(workload, cell, argv, lease)).await;
        }
        let exit = exit_report(&executor, "w-c.1").await;
        assert_eq!(exit.exit_code, Some(3));
        let started: Vec<u32> = ["w-a.1", "w-b.1", "w-d.1", "w-e.1"].iter().map(|c| started_pid(&executor, c)).collect();
        let pid_json: StartedCell =
            serde_json::from_slice(&std::fs::read(host.cells_dir().join("w-e.1/pid.json")).unwrap()).unwrap();
        (started, pid_json.shim_pid)
    });
    drop(first); // the agent is gone; its cells are not
    assert!(started.iter().all(|pid| alive(*pid)));

    // While nobody watches: w-d ends, w-e's shim dies, and w-b's last renewal before the crash
    // left it a deadline 30 s out.
    let backend = host.backend();
    backend.signal("w-d.1", true).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !matches!(backend.inspect("w-d.1"), CellState::Exited(_)) {
        assert!(Instant::now() < deadline, "w-d.1 did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) on a pid we read from the cell's own pid.json.
    assert_eq!(unsafe { libc::kill(shim_of_lost as libc::pid_t, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + TIMEOUT;
    while alive(shim_of_lost) {
        assert!(Instant::now() < deadline, "w-e.1's shim did not die");
        std::thread::sleep(Duration::from_millis(10));
    }
    let far = warden_cell::boottime_ns() + 30_000_000_000;
    backend.renew_lease("w-b.1", 5, far).unwrap();

    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let (executor, _claims) = host.executor(timing);
        let before = reports(&executor);
        let summary = executor.readopt().await.unwrap();
        assert_eq!(summary, Readoption { running: 2, fenced: 1, exited: 2, lost: 1 });
        let after = reports(&executor);
        // w-c's exit was still queued: not reported twice. w-d's and w-e's ends are new.
        let new: Vec<&Report> = after.iter().filter(|r| !before.contains(r)).collect();
        assert_eq!(new.len(), 2, "{new:?}");
        assert!(new.iter().all(|r| r.seq > before.last().unwrap().seq), "numbering carried on");
        let exit_of = |cell: &str| {
            new.iter()
                .find(|r| r.cell_id == cell)
                .map(|r| match &r.event {
                    ReportEvent::Exited { exit } => exit.clone(),
                    other => panic!("{other:?}"),
                })
                .unwrap()
        };
        assert_eq!(exit_of("w-d.1").signal, Some(libc::SIGKILL));
        let lost = exit_of("w-e.1");
        assert_eq!((lost.exit_code, lost.signal), (None, None), "a lost cell has no made-up exit: {lost:?}");
        assert_eq!(after.iter().filter(|r| r.cell_id == "w-c.1" && matches!(r.event, ReportEvent::Exited { .. })).count(), 1);
        // The lost cell's workload does not outlive its shim.
        wait_until("w-e.1's workload to be gone", || !alive(started[3])).await;

        let inventory = executor.inventory();
        let state = |cell: &str| inventory.iter().find(|c| c.cell_id == cell).map(|c| c.state.clone()).unwrap();
        assert_eq!(inventory.len(), 5);
        assert!(matches!(state("w-a.1"), InventoryState::Running { pid, .. } if pid == started[0]));
        assert!(matches!(state("w-b.1"), InventoryState::Running { pid, .. } if pid == started[1]));
        assert!(matches!(state("w-c.1"), InventoryState::Exited { exit } if exit.exit_code == Some(3)));
        assert!(matches!(state("w-d.1"), InventoryState::Exited { .. }));
        assert!(matches!(state("w-e.1"), InventoryState::Exited { .. }));
        assert_eq!(inventory.iter().find(|c| c.cell_id == "w-b.1").unwrap().workload_id, "w-b");

        // The fenced cell's lease is renewed again, from the deadline its lease.json had.
        assert_eq!(executor.held_lease("w-b.1"), Some(HeldLease { epoch: 5, deadline_ms: far / 1_000_000 }));
        let renewals = executor.renewals();
        assert_eq!(renewals.len(), 1);
        assert_eq!(renewals[0].claim, LeaseClaim { workload_id: "w-b".into(), epoch: 5 });

        // And the live ones are watched again.
        executor.execute(CommandKind::Signal { cell_id: "w-a.1".into(), kill: true }).await;
        assert_eq!(exit_report(&executor, "w-a.1").await.signal, Some(libc::SIGKILL));
        executor.apply_renewals(&renewals, &[false], boottime_ms()).await;
        assert_eq!(exit_report(&executor, "w-b.1").await.signal, Some(libc::SIGKILL));
        assert!(started.iter().all(|pid| !alive(*pid)));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_needs_a_join_token_and_one_agent_per_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let config = |join_token: Option<&str>| AgentConfig {
        // Nothing listens there: enrollment keeps retrying.
        server: format!("http://127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()),
        name: "h1".into(),
        channel: None,
        tags: vec!["a".into()],
        data_dir: dir.path().to_path_buf(),
        join_token: join_token.map(String::from),
        ca: None,
        shim: shim(),
    };
    let error = warden_runtime::agent::run(config(None)).await.unwrap_err();
    assert!(matches!(error, AgentError::NoJoinToken), "{error}");
    assert!(error.to_string().contains("--join-token-file FILE or WARDEN_JOIN_TOKEN"), "{error}");

    let first = tokio::spawn(warden_runtime::agent::run(config(Some("token"))));
    wait_until("the host key", || dir.path().join("host.key").exists()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!first.is_finished(), "an unreachable server is retried, not fatal");
    let error = warden_runtime::agent::run(config(Some("token"))).await.unwrap_err();
    assert!(matches!(error, AgentError::AlreadyRunning(_)), "{error}");
    assert!(!dir.path().join("enrolled.json").exists());
    first.abort();
}
