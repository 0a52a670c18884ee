//! The agent's part in rollouts: one worker task per rollout this host is in, which follows the
//! control plane's [`HostRolloutSnapshot`] of the host — acknowledges the dispatch, activates
//! (runs the activation command, or waits for a service's cells to run the target spec), runs
//! the probes while the host soaks, rolls back when told — and reports each step with
//! `POST /v1/agents/rollout`.
//!
//! The control plane decides; the worker only acts on the state the newest snapshot names:
//!
//! ```text
//! Dispatched  report Ack
//! Acked       report ActivationStarted (the answer says Activating)
//! Activating  activate: Command → run `activate`; Service → wait until each workload's running
//!             cell here runs the target spec; report ActivationCompleted or ActivationFailed.
//!             Also what an agent restarted mid-activation does: activating again is harmless
//!             (a command runs again, a service waits again)
//! Soaking     run every probe on its own interval, report each result, until the state changes
//! Reverting   report RollbackStarted, then roll back (`rollback`, or wait for `previous`);
//!             report RollbackCompleted or RollbackFailed
//! otherwise   nothing to do: the worker ends (a later order for the rollout starts another)
//! ```
//!
//! Orders come from `Rollout` commands and, after either side restarted, from the heartbeat
//! answer (`Executor::follow_rollout`); each replaces the snapshot the worker follows through
//! a `watch` channel, so only the newest counts. An order that moves the host to another state
//! stops what the worker was doing (a running command is killed with its process group) and the
//! worker acts on the new state. An order older than what the worker knows (a lower
//! `last_event_seq`) is ignored.
//!
//! Reports are numbered one above the highest `seq` the worker knows (the snapshot's
//! `last_event_seq` or the last it sent), one in flight at a time. A report that got no answer
//! (no connection, a timeout, a 5xx) is sent again with the same input and `seq`, so the control
//! plane, which deduplicates by `seq`, applies it at most once. Every answer carries the
//! snapshot after the report, which the worker adopts: it is authoritative, also when the
//! report was refused (it no longer fitted the host's state). A 404 (the control plane does not
//! know the rollout) ends the worker.

mod command;
mod probe;
mod substitutions;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use warden_core::rollout::{HostInput, HostRolloutState};

use self::command::{first_line_of, run_command, CommandError, OutputLog};
use self::probe::{probe_every, ProbeOutcome};
use self::substitutions::Substitutions;
use super::context::AgentContext;
use super::http::{Http, HttpError};
use crate::error::error_chain;
use crate::proto::{Activation, RolloutOrder, RolloutReport, RolloutReportResponse};

/// How long one report may wait for its answer before it is sent again.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first wait before a report that got no answer is sent again; doubled up to the next.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// After a refused report that left the host where it was: wait this long (or for a new order)
/// before acting on the same state again, so a disagreement does not turn into a hot loop.
const REFUSED_PAUSE: Duration = Duration::from_secs(2);
/// How often a service activation (or rollback) looks at the cells here.
const SERVICE_POLL: Duration = Duration::from_millis(200);

/// Why the host could not be moved to a version (activation or rollback). Its words go into
/// the host's report (`activation-failed`, `rollback-failed`) as they are.
#[derive(Debug, thiserror::Error)]
enum SwitchError {
    /// The `activate`, `rollback` or `current` command failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Service(#[from] ServiceWaitError),
}

/// A service's cells here did not reach the wanted spec in time.
#[derive(Debug, thiserror::Error)]
#[error("after {timeout_ms} ms, not {} on this host: {}", describe_wanted(.wanted), .off.join(", "))]
struct ServiceWaitError {
    timeout_ms: u128,
    wanted: Option<String>,
    /// Each workload not there, with what it runs.
    off: Vec<String>,
}

fn describe_wanted(wanted: &Option<String>) -> String {
    match wanted {
        Some(spec) => format!("running spec {spec}"),
        None => "stopped".to_string(),
    }
}

/// The rollout workers running here, by rollout id: each follows the newest order sent on its
/// channel. Cheap to clone: all clones share the workers.
#[derive(Clone)]
pub(super) struct Rollouts {
    context: AgentContext,
    workers: Arc<Mutex<BTreeMap<String, watch::Sender<RolloutOrder>>>>,
}

impl Rollouts {
    pub(super) fn new(context: AgentContext) -> Rollouts {
        Rollouts { context, workers: Arc::new(Mutex::new(BTreeMap::new())) }
    }

    fn workers(&self) -> MutexGuard<'_, BTreeMap<String, watch::Sender<RolloutOrder>>> {
        self.workers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands `order` (a `Rollout` command, or an order in a heartbeat answer) to the worker of
    /// its rollout on this host, starting one if none runs. Returns at once.
    pub(super) fn follow(&self, order: RolloutOrder) {
        let rollout_id = order.snapshot.rollout_id.clone();
        let Some((http, host)) = self.context.control_plane() else {
            return tracing::warn!(rollout = %rollout_id, "rollout order without a control plane to report to: ignored");
        };
        let mut workers = self.workers();
        // A worker whose receiver is gone has ended (or panicked): start a new one.
        if let Some(worker) = workers.get(&rollout_id).filter(|worker| !worker.is_closed()) {
            worker.send_replace(order);
            return;
        }
        if !has_work(order.snapshot.state) {
            // The order that tells a finished worker's host it converged or failed, say.
            return tracing::debug!(rollout = %rollout_id, state = %order.snapshot.state, "nothing to do for this rollout");
        }
        tracing::info!(rollout = %rollout_id, state = %order.snapshot.state, "following rollout");
        let (orders, receiver) = watch::channel(order.clone());
        workers.insert(rollout_id.clone(), orders);
        let worker = Worker {
            rollouts: self.clone(),
            http,
            host,
            rollout_id,
            order,
            orders: receiver,
            last_sent_seq: 0,
            rollback_started: false,
        };
        tokio::spawn(worker.run());
    }

    /// The rollouts this host has a worker for (running, or about to end).
    pub(super) fn followed(&self) -> Vec<String> {
        self.workers().keys().cloned().collect()
    }
}

/// Whether the agent has anything to do for a host in `state` (else a worker ends).
fn has_work(state: HostRolloutState) -> bool {
    match state {
        HostRolloutState::Dispatched
        | HostRolloutState::Acked
        | HostRolloutState::Activating
        | HostRolloutState::Soaking
        | HostRolloutState::Reverting => true,
        HostRolloutState::Pending | HostRolloutState::Converged | HostRolloutState::Failed | HostRolloutState::Reverted => false,
    }
}

/// What one round of the worker led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Act on the (possibly new) state at once.
    Next,
    /// The report was refused and the host is still where it was: pause before acting again.
    Refused,
    /// Nothing to do in this state: the worker ends, unless a newer order came.
    Idle,
    /// The control plane does not take reports for this rollout (404, or another refusal of
    /// the request itself): the worker ends, unless a newer order came.
    Gone,
}

/// One rollout's worker; see the module docs.
struct Worker {
    /// The workers of this host (this one leaves when it ends) and the agent's context.
    rollouts: Rollouts,
    http: Arc<Http>,
    host: String,
    rollout_id: String,
    /// The order followed, its snapshot replaced by every answer.
    order: RolloutOrder,
    orders: watch::Receiver<RolloutOrder>,
    /// The highest `seq` sent (answered or not): never reused, since it may have been applied.
    last_sent_seq: u64,
    /// RollbackStarted was reported in this stay in Reverting (the state does not say).
    rollback_started: bool,
}

impl Worker {
    async fn run(mut self) {
        let mut logged_state = None;
        loop {
            self.take_newer_order();
            let state = self.order.snapshot.state;
            if logged_state != Some(state) {
                tracing::info!(rollout = %self.rollout_id, "this host is {state} (target {})", self.order.snapshot.target);
                logged_state = Some(state);
            }
            if state != HostRolloutState::Reverting {
                self.rollback_started = false;
            }
            let step = match state {
                HostRolloutState::Dispatched => {
                    let current = match self.ask_current().await {
                        Ok(current) => current,
                        Err(error) => {
                            tracing::warn!(rollout = %self.rollout_id, "cannot tell what this host runs: {error}");
                            None
                        }
                    };
                    self.report(|seq| HostInput::Ack { seq, current }).await
                }
                HostRolloutState::Acked => self.report(|seq| HostInput::ActivationStarted { seq }).await,
                HostRolloutState::Activating => self.activate().await,
                HostRolloutState::Soaking => self.soak().await,
                HostRolloutState::Reverting if !self.rollback_started => {
                    let step = self.report(|seq| HostInput::RollbackStarted { seq }).await;
                    self.rollback_started = step == Step::Next;
                    step
                }
                HostRolloutState::Reverting => self.roll_back().await,
                HostRolloutState::Pending
                | HostRolloutState::Converged
                | HostRolloutState::Failed
                | HostRolloutState::Reverted => Step::Idle,
            };
            match step {
                Step::Next => {}
                Step::Refused => {
                    let pause = tokio::time::sleep(REFUSED_PAUSE);
                    let _ = self.until_state_changes(pause).await;
                }
                Step::Idle | Step::Gone => {
                    if self.end() {
                        return;
                    }
                }
            }
        }
    }

    /// Removes this worker from the executor, unless a newer order came meanwhile (checked
    /// under the same lock `follow_rollout` sends under, so no order is lost).
    fn end(&mut self) -> bool {
        let mut workers = self.rollouts.workers();
        if self.orders.has_changed().unwrap_or(false) {
            return false;
        }
        workers.remove(&self.rollout_id);
        tracing::info!(rollout = %self.rollout_id, "nothing more to do here while the host is {}", self.order.snapshot.state);
        true
    }

    /// Takes the newest order if one came since the last look; `true` if it was adopted.
    fn take_newer_order(&mut self) -> bool {
        if !self.orders.has_changed().unwrap_or(false) {
            return false;
        }
        let order = self.orders.borrow_and_update().clone();
        self.adopt(order)
    }

    /// Follows `order` unless it is older than what the worker knows: reports only raise
    /// `last_event_seq`, so a lower one is old news (a command that waited in a queue). An
    /// equal one is the control plane's own later decision (roll back, converged) or the same.
    fn adopt(&mut self, order: RolloutOrder) -> bool {
        if order.snapshot.last_event_seq < self.order.snapshot.last_event_seq {
            tracing::debug!(
                rollout = %self.rollout_id,
                "ignoring an order at seq {} (this worker knows seq {})",
                order.snapshot.last_event_seq,
                self.order.snapshot.last_event_seq
            );
            return false;
        }
        self.order = order;
        true
    }

    /// Runs `work` to its end, unless a newer order moves the host to another state first:
    /// then `work` is dropped (a command it runs is killed) and the answer is `None`.
    async fn until_state_changes<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        let state = self.order.snapshot.state;
        tokio::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return Some(output),
                changed = self.orders.changed() => {
                    if changed.is_err() {
                        // The executor dropped the channel (it is going away): finish the work.
                        return Some(work.await);
                    }
                    let order = self.orders.borrow_and_update().clone();
                    if self.adopt(order) && self.order.snapshot.state != state {
                        return None;
                    }
                }
            }
        }
    }

    /// What `{target}`, `{previous}` and `{host}` stand for in this rollout's argv and probes.
    fn substitutions(&self) -> Substitutions {
        Substitutions {
            host: self.host.clone(),
            target: self.order.snapshot.target.clone(),
            previous: self.order.snapshot.previous.clone(),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.order.timeout_ms.max(1))
    }

    /// Activating: run the activation (again, after an agent restart) and report how it went.
    async fn activate(&mut self) -> Step {
        let target = self.order.snapshot.target.clone();
        let outcome = self.switch(Some(target.clone()), true).await;
        // With a `current` command the host's own word counts (nothing printed: it runs
        // nothing, which is not the target); without one, a command that succeeded did it.
        let outcome = match outcome {
            Some(Ok(())) if self.asks_current() => {
                Some(self.ask_current().await.map(Option::unwrap_or_default).map_err(SwitchError::Command))
            }
            outcome => outcome.map(|result| result.map(|()| target)),
        };
        match outcome {
            None => Step::Next,
            Some(Ok(current)) => self.report(|seq| HostInput::ActivationCompleted { seq, current }).await,
            Some(Err(error)) => {
                let error = error_chain(&error);
                tracing::warn!(rollout = %self.rollout_id, "activation failed: {error}");
                self.report(|seq| HostInput::ActivationFailed { seq, error }).await
            }
        }
    }

    /// Moves the host to `wanted`: a host activation runs its `activate` (`forward`) or
    /// `rollback` command; a service waits until its workloads here run `wanted`. `None` if a
    /// newer order moved the host to another state meanwhile (the work was dropped).
    async fn switch(&mut self, wanted: Option<String>, forward: bool) -> Option<Result<(), SwitchError>> {
        let timeout = self.timeout();
        match self.order.activation.clone() {
            Activation::Command { activate, rollback, .. } => {
                let (argv, what) = if forward { (activate, "activate") } else { (rollback, "rollback") };
                let argv = self.substitutions().apply_all(&argv);
                let label = format!("rollout {}: {what}", self.rollout_id);
                let run = run_command(argv, timeout, label, OutputLog::Info);
                self.until_state_changes(run).await.map(|result| result.map_err(SwitchError::Command))
            }
            Activation::Service { workloads } => {
                let wait = wait_for_specs(self.rollouts.context.clone(), workloads, wanted, timeout);
                self.until_state_changes(wait).await.map(|result| result.map_err(SwitchError::Service))
            }
        }
    }

    /// Whether the host can say what it runs (a host activation with a `current` command).
    fn asks_current(&self) -> bool {
        matches!(&self.order.activation, Activation::Command { current, .. } if !current.is_empty())
    }

    /// What the host runs by its own account: the first line of the `current` command's output
    /// (`None` for an empty one). `Ok(None)` without a `current` command, or for a service.
    async fn ask_current(&mut self) -> Result<Option<String>, CommandError> {
        match &self.order.activation {
            Activation::Command { current, .. } if !current.is_empty() => {
                first_line_of(self.substitutions().apply_all(current), self.timeout()).await
            }
            _ => Ok(None),
        }
    }

    /// Reverting, after RollbackStarted: roll back and report how it went.
    async fn roll_back(&mut self) -> Step {
        let previous = self.order.snapshot.previous.clone();
        let outcome = self.switch(previous.clone(), false).await;
        let outcome = match outcome {
            Some(Ok(())) if self.asks_current() => Some(self.ask_current().await.map_err(SwitchError::Command)),
            outcome => outcome.map(|result| result.map(|()| previous)),
        };
        match outcome {
            None => Step::Next,
            Some(Ok(current)) => self.report(|seq| HostInput::RollbackCompleted { seq, current }).await,
            Some(Err(error)) => {
                let error = error_chain(&error);
                tracing::warn!(rollout = %self.rollout_id, "rollback failed: {error}");
                self.report(|seq| HostInput::RollbackFailed { seq, error }).await
            }
        }
    }

    /// Soaking: every probe on its own timer, results reported one at a time in the order they
    /// came, until the state changes (an answer, or a newer order). The probes stop with it.
    async fn soak(&mut self) -> Step {
        let (results_tx, mut results) = mpsc::channel::<ProbeOutcome>(self.order.probes.len().max(1));
        let mut probes = tokio::task::JoinSet::new();
        for spec in self.order.probes.clone() {
            let label = format!("rollout {}: probe {}", self.rollout_id, spec.name);
            probes.spawn(probe_every(spec, self.substitutions(), label, results_tx.clone()));
        }
        drop(results_tx);
        let mut orders_open = true;
        loop {
            tokio::select! {
                Some(outcome) = results.recv() => {
                    let ProbeOutcome { probe, passed, mode, at } = outcome;
                    let step = self.report(|seq| HostInput::ProbeResult { seq, probe, passed, mode, at }).await;
                    match step {
                        // A refused result (the control plane does not know the probe) does not
                        // stop the others; the state decides.
                        Step::Next | Step::Refused if self.order.snapshot.state == HostRolloutState::Soaking => {}
                        Step::Next | Step::Refused => return Step::Next,
                        Step::Idle | Step::Gone => return step,
                    }
                }
                changed = self.orders.changed(), if orders_open => {
                    if changed.is_err() {
                        orders_open = false;
                        continue;
                    }
                    let order = self.orders.borrow_and_update().clone();
                    if self.adopt(order) && self.order.snapshot.state != HostRolloutState::Soaking {
                        return Step::Next;
                    }
                }
                // No probes and no orders can come: nothing will ever change here.
                else => return Step::Idle,
            }
        }
    }

    /// Sends one report, numbered above everything known, until it is answered; adopts the
    /// answer's snapshot.
    async fn report(&mut self, input: impl FnOnce(u64) -> HostInput) -> Step {
        let seq = self.order.snapshot.last_event_seq.max(self.last_sent_seq) + 1;
        self.last_sent_seq = seq;
        let state_before = self.order.snapshot.state;
        let report = RolloutReport { host: self.host.clone(), rollout_id: self.rollout_id.clone(), input: input(seq) };
        let kind = report.input.kind();
        let mut delay = FIRST_RETRY_DELAY;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let answer: Result<RolloutReportResponse, HttpError> =
                self.http.json("POST", "/v1/agents/rollout", Some(&report), REPORT_TIMEOUT).await;
            match answer {
                Ok(answer) => {
                    if attempt > 1 {
                        tracing::info!(rollout = %self.rollout_id, "{kind} (seq {seq}) answered after {attempt} attempts");
                    }
                    let refused = answer.outcome != "applied" && answer.outcome != "duplicate";
                    if refused {
                        tracing::info!(
                            rollout = %self.rollout_id,
                            "{kind} (seq {seq}) not applied: {}; the host is {}",
                            answer.outcome,
                            answer.snapshot.state
                        );
                    } else {
                        tracing::debug!(rollout = %self.rollout_id, "{kind} (seq {seq}): {}", answer.outcome);
                    }
                    self.order.snapshot = answer.snapshot;
                    return if refused && self.order.snapshot.state == state_before { Step::Refused } else { Step::Next };
                }
                Err(HttpError::Status { code: 404, message }) => {
                    tracing::info!(rollout = %self.rollout_id, "the control plane does not know this rollout (any more): {message}");
                    return Step::Gone;
                }
                Err(HttpError::Status { code, message }) if (400..500).contains(&code) && code != 408 && code != 429 => {
                    tracing::warn!(rollout = %self.rollout_id, "{kind} (seq {seq}) refused: {message} (HTTP {code}); not sent again");
                    return Step::Gone;
                }
                Err(e) => {
                    // Logged once, then quietly: a control plane that is down is said once.
                    if attempt == 1 {
                        tracing::warn!(rollout = %self.rollout_id, "{kind} (seq {seq}): {e}; sending it again until answered");
                    } else {
                        tracing::debug!(rollout = %self.rollout_id, "{kind} (seq {seq}), attempt {attempt}: {e}");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                    // A newer order that already counts this report answers it as well.
                    if self.take_newer_order() && self.order.snapshot.last_event_seq >= seq {
                        return Step::Next;
                    }
                }
            }
        }
    }
}

/// Waits until each of `workloads` has its running cells here on spec `wanted` (with `None`:
/// none of them runs), at most `timeout`; the error names the ones that are not.
async fn wait_for_specs(
    context: AgentContext,
    workloads: Vec<String>,
    wanted: Option<String>,
    timeout: Duration,
) -> Result<(), ServiceWaitError> {
    let deadline = Instant::now() + timeout;
    loop {
        let off: Vec<String> = workloads
            .iter()
            .filter_map(|workload_id| {
                let specs = context.running_specs(workload_id);
                let there = match &wanted {
                    Some(wanted) => !specs.is_empty() && specs.iter().all(|spec| spec.as_ref() == Some(wanted)),
                    None => specs.is_empty(),
                };
                (!there).then(|| format!("{workload_id} ({})", describe_specs(&specs)))
            })
            .collect();
        if off.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ServiceWaitError { timeout_ms: timeout.as_millis(), wanted, off });
        }
        tokio::time::sleep(SERVICE_POLL).await;
    }
}

fn describe_specs(specs: &[Option<String>]) -> String {
    if specs.is_empty() {
        return "no running cell".into();
    }
    let each: Vec<&str> = specs.iter().map(|spec| spec.as_deref().unwrap_or("a spec not known here")).collect();
    format!("runs {}", each.join(" and "))
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::agent::cell_table::{Entry, Tracked};
    use tokio::net::TcpListener;

    /// This host's side of a rollout, for a test: no cells and no shim (none is started),
    /// reporting to `server`.
    #[derive(Clone)]
    struct TestHost {
        context: AgentContext,
        rollouts: Rollouts,
    }

    impl TestHost {
        fn cells(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
            self.context.cells()
        }

        fn running_spec(&self, workload_id: &str) -> Option<String> {
            self.context.running_spec(workload_id)
        }

        fn follow_rollout(&self, order: RolloutOrder) {
            self.rollouts.follow(order)
        }

        fn rollouts_followed(&self) -> Vec<String> {
            self.rollouts.followed()
        }
    }

    fn executor(dir: &std::path::Path, server: Option<std::net::SocketAddr>) -> TestHost {
        let queue = Arc::new(warden_store::queue::DurableQueue::open(&dir.join("reports.db")).unwrap());
        let (claims, _) = mpsc::unbounded_channel();
        let shim = warden_cell::ShimExe::Standalone(dir.join("no-shim"));
        let timing = warden_core::lease::LeaseTiming::default();
        let context = AgentContext::new(dir.join("cells"), dir.join("logs"), shim, queue, timing, claims);
        if let Some(addr) = server {
            let identity = Arc::new(crate::auth::Identity::generate("h1"));
            context.set_control_plane(
                Arc::new(Http::new(&format!("http://{addr}"), identity, crate::client::ServerTrust::Nobody).unwrap()),
                "h1",
            );
        }
        TestHost { rollouts: Rollouts::new(context.clone()), context }
    }

    /// Pretends workload `workload_id` runs cell `cell_id` of spec `spec_id` here.
    fn pretend_running(executor: &TestHost, workload_id: &str, cell_id: &str, spec_id: Option<&str>) {
        let started = warden_cell::StartedCell { pid: 1, pid_start_time: 1, shim_pid: 1, shim_start_time: 1 };
        let entry = Entry {
            state: Tracked::Running(started),
            spec_id: spec_id.map(str::to_string),
            ..Entry::starting(workload_id.into(), false, None)
        };
        executor.cells().insert(cell_id.into(), entry);
    }

    fn now_ms() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    }

    #[tokio::test]
    async fn running_specs_and_service_waits() {
        let dir = tempfile::tempdir().unwrap();
        let executor = executor(dir.path(), None);
        assert_eq!(executor.running_spec("web"), None);
        wait_for_specs(executor.context.clone(), vec!["web".into()], None, Duration::from_millis(100)).await.unwrap();
        let error = wait_for_specs(executor.context.clone(), vec!["web".into()], Some("v2".into()), Duration::from_millis(100))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("not running spec v2 on this host: web (no running cell)"), "{error}");

        pretend_running(&executor, "web", "web.1", Some("v1"));
        executor.cells().insert("web.0".into(), Entry::starting("web".into(), false, None));
        assert_eq!(executor.running_spec("web"), Some("v1".into()), "a cell still starting does not count");
        let error = wait_for_specs(executor.context.clone(), vec!["web".into()], Some("v2".into()), Duration::from_millis(100))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("web (runs v1)"), "{error}");
        let error = wait_for_specs(executor.context.clone(), vec!["web".into()], None, Duration::from_millis(100))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("not stopped on this host: web (runs v1)"), "{error}");

        // The replacement overlaps the old cell for a while: not there until the old one is gone.
        pretend_running(&executor, "web", "web.2", Some("v2"));
        assert_eq!(executor.running_spec("web"), None, "two cells that disagree");
        let later = executor.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            later.cells().remove("web.1");
        });
        wait_for_specs(executor.context.clone(), vec!["web".into()], Some("v2".into()), Duration::from_secs(5)).await.unwrap();
        assert_eq!(executor.running_spec("web"), Some("v2".into()));
    }

    /// A stand-in control plane that runs the core's host machine, like the real one.
    #[derive(Clone)]
    struct Plane {
        state: Arc<Mutex<PlaneState>>,
    }

    struct PlaneState {
        snapshot: warden_core::rollout::HostRolloutSnapshot,
        policy: warden_core::rollout::RolloutPolicy,
        /// Every report received, with what was answered.
        received: Vec<(HostInput, String)>,
        /// Reports to apply but answer with a 500 (an answer lost on the way back).
        lose_answers: u32,
    }

    impl Plane {
        async fn serve(policy_toml: &str) -> (Plane, std::net::SocketAddr) {
            let policy = warden_core::rollout::RolloutPolicy::parse("policy.toml", policy_toml).unwrap();
            let mut snapshot =
                warden_core::rollout::HostRolloutSnapshot::pending("r-1", "h1", "default", "v2", Some("v1".into()), 0);
            snapshot.apply(&warden_core::rollout::HostEvent::Dispatched, now_ms());
            let state = PlaneState { snapshot, policy, received: Vec::new(), lose_answers: 0 };
            let plane = Plane { state: Arc::new(Mutex::new(state)) };
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let router =
                axum::Router::new().route("/v1/agents/rollout", axum::routing::post(Plane::report)).with_state(plane.clone());
            tokio::spawn(async move { axum::serve(listener, router).await });
            (plane, addr)
        }

        async fn report(
            axum::extract::State(plane): axum::extract::State<Plane>,
            axum::Json(report): axum::Json<RolloutReport>,
        ) -> axum::response::Response {
            use axum::response::IntoResponse;
            assert_eq!((report.host.as_str(), report.rollout_id.as_str()), ("h1", "r-1"));
            let mut state = plane.state.lock().unwrap();
            let now = now_ms();
            let outcome = match state.snapshot.step(&report.input, now, &state.policy) {
                Ok(warden_core::rollout::Decision::Events(events)) => {
                    events.iter().for_each(|event| state.snapshot.apply(event, now));
                    "applied".to_string()
                }
                Ok(warden_core::rollout::Decision::Duplicate { .. }) => "duplicate".to_string(),
                Err(e) => e.to_string(),
            };
            state.received.push((report.input, outcome.clone()));
            if state.lose_answers > 0 {
                state.lose_answers -= 1;
                return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            axum::Json(RolloutReportResponse { snapshot: state.snapshot.clone(), outcome }).into_response()
        }

        /// The control plane's own decision (a roll back): applied, and the order for the agent.
        fn decide(&self, input: HostInput, activation: &Activation) -> RolloutOrder {
            let mut state = self.state.lock().unwrap();
            let now = now_ms();
            let events = state.snapshot.step(&input, now, &state.policy).unwrap();
            events.events().iter().for_each(|event| state.snapshot.apply(event, now));
            self.order_locked(&state, activation)
        }

        fn order(&self, activation: &Activation) -> RolloutOrder {
            self.order_locked(&self.state.lock().unwrap(), activation)
        }

        fn order_locked(&self, state: &PlaneState, activation: &Activation) -> RolloutOrder {
            RolloutOrder {
                snapshot: state.snapshot.clone(),
                probes: state.policy.probes.clone(),
                activation: activation.clone(),
                timeout_ms: 5_000,
            }
        }

        fn state(&self) -> HostRolloutState {
            self.state.lock().unwrap().snapshot.state
        }

        fn received(&self) -> Vec<(HostInput, String)> {
            self.state.lock().unwrap().received.clone()
        }
    }

    async fn until_worker_ends(executor: &TestHost) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !executor.rollouts_followed().is_empty() {
            assert!(Instant::now() < deadline, "the rollout worker did not end");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn command_activation(dir: &std::path::Path, activate: &str) -> Activation {
        let file = dir.join("current");
        let sh = |script: String| vec!["sh".to_string(), "-c".into(), script];
        Activation::Command {
            activate: sh(format!("{activate} && echo {{target}} > {}", file.display())),
            rollback: sh(format!("echo {{previous}} > {}", file.display())),
            current: sh(format!("cat {} 2>/dev/null || true", file.display())),
        }
    }

    const POLICY: &str = r#"
        waves = ["100%"]
        soak = "0s"
        activate = ["unused"]
        rollback = ["unused"]
        [[probes]]
        name = "on-target"
        exec = ["sh", "-c", "grep -q '^{target}$' CURRENT"]
        interval = "100ms"
        timeout = "100ms"
    "#;

    /// Dispatched → converged against the core's machine: ack, activation started, the command
    /// run with its placeholders, activation completed, a passing probe. The first answer is
    /// lost: the report is sent again with the same seq and answered as a duplicate.
    #[tokio::test]
    async fn a_command_rollout_converges() {
        let dir = tempfile::tempdir().unwrap();
        let policy = POLICY.replace("CURRENT", &dir.path().join("current").display().to_string());
        let (plane, addr) = Plane::serve(&policy).await;
        plane.state.lock().unwrap().lose_answers = 1;
        let executor = executor(dir.path(), Some(addr));
        let activation = command_activation(dir.path(), "test {host} = h1 && test {previous} = v1");
        executor.follow_rollout(plane.order(&activation));
        until_worker_ends(&executor).await;

        assert_eq!(plane.state(), HostRolloutState::Converged);
        assert_eq!(std::fs::read_to_string(dir.path().join("current")).unwrap(), "v2\n");
        let received = plane.received();
        let summary: Vec<(String, Option<u64>, &str)> =
            received.iter().map(|(input, outcome)| (input.kind().to_string(), input.seq(), outcome.as_str())).collect();
        assert_eq!(
            summary,
            vec![
                ("ack".to_string(), Some(1), "applied"),
                ("ack".to_string(), Some(1), "duplicate"),
                ("activation-started".to_string(), Some(2), "applied"),
                ("activation-completed".to_string(), Some(3), "applied"),
                ("probe-result".to_string(), Some(4), "applied"),
            ]
        );
        assert!(matches!(&received[3].0, HostInput::ActivationCompleted { current, .. } if current == "v2"));
        assert!(matches!(&received[4].0, HostInput::ProbeResult { passed: true, probe, .. } if probe == "on-target"));
    }

    /// A failed activation is reported with its reason; the control plane's roll back (a new
    /// order) starts the worker again, which runs the rollback with `{previous}`.
    #[tokio::test]
    async fn a_failed_activation_is_rolled_back_when_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let policy = POLICY.replace("CURRENT", &dir.path().join("current").display().to_string());
        let (plane, addr) = Plane::serve(&policy).await;
        let executor = executor(dir.path(), Some(addr));
        let activation = command_activation(dir.path(), "echo 'no disk space' >&2 && false");
        executor.follow_rollout(plane.order(&activation));
        until_worker_ends(&executor).await;
        assert_eq!(plane.state(), HostRolloutState::Failed);
        let received = plane.received();
        let (failed, _) = received.last().unwrap();
        assert!(
            matches!(failed, HostInput::ActivationFailed { seq: 3, error } if error.contains("exited with code 1: no disk space")),
            "{failed:?}"
        );

        // The control plane's own order saying the host failed starts no worker.
        executor.follow_rollout(plane.order(&activation));
        assert!(executor.rollouts_followed().is_empty());

        executor.follow_rollout(plane.decide(HostInput::RollBack, &activation));
        until_worker_ends(&executor).await;
        assert_eq!(plane.state(), HostRolloutState::Reverted);
        assert_eq!(std::fs::read_to_string(dir.path().join("current")).unwrap(), "v1\n");
        let kinds: Vec<String> = plane.received()[received.len()..].iter().map(|(input, _)| input.kind().to_string()).collect();
        assert_eq!(kinds, ["rollback-started", "rollback-completed"]);
    }

    /// A service activation completes once the workload's running cell here is on the target
    /// spec (the control plane replaces it after ActivationStarted).
    #[tokio::test]
    async fn a_service_rollout_waits_for_the_target_spec() {
        let dir = tempfile::tempdir().unwrap();
        let policy = POLICY.replace("CURRENT", &dir.path().join("current").display().to_string());
        let policy = policy.replace("activate = [\"unused\"]\n        rollback = [\"unused\"]", "");
        let (plane, addr) = Plane::serve(&policy).await;
        std::fs::write(dir.path().join("current"), "v2\n").unwrap();
        let executor = executor(dir.path(), Some(addr));
        pretend_running(&executor, "web", "web.1", Some("v1"));
        let activation = Activation::Service { workloads: vec!["web".into()] };
        executor.follow_rollout(plane.order(&activation));
        let deadline = Instant::now() + Duration::from_secs(10);
        while plane.state() != HostRolloutState::Activating {
            assert!(Instant::now() < deadline, "never activating");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(plane.state(), HostRolloutState::Activating, "still on v1: not completed");
        executor.cells().remove("web.1");
        pretend_running(&executor, "web", "web.2", Some("v2"));
        until_worker_ends(&executor).await;
        assert_eq!(plane.state(), HostRolloutState::Converged);
    }

    /// An operator's undo while the host soaks: the probes stop, the rollback runs. An order
    /// older than what the worker knows is ignored.
    #[tokio::test]
    async fn a_roll_back_order_stops_the_probes() {
        let dir = tempfile::tempdir().unwrap();
        let policy = POLICY.replace("CURRENT", &dir.path().join("current").display().to_string()).replace("\"0s\"", "\"1h\"");
        let (plane, addr) = Plane::serve(&policy).await;
        let executor = executor(dir.path(), Some(addr));
        let activation = command_activation(dir.path(), "true");
        let stale = plane.order(&activation);
        executor.follow_rollout(plane.order(&activation));
        let deadline = Instant::now() + Duration::from_secs(10);
        while plane.received().iter().filter(|(input, _)| input.kind().name() == "probe-result").count() < 3 {
            assert!(Instant::now() < deadline, "no probes while soaking");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        executor.follow_rollout(stale);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(plane.state(), HostRolloutState::Soaking);
        assert!(plane.received().iter().all(|(_, outcome)| outcome == "applied"), "{:?}", plane.received());

        executor.follow_rollout(plane.decide(HostInput::RollBack, &activation));
        until_worker_ends(&executor).await;
        assert_eq!(plane.state(), HostRolloutState::Reverted);
        assert_eq!(std::fs::read_to_string(dir.path().join("current")).unwrap(), "v1\n");
        let n_received = plane.received().len();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(plane.received().len(), n_received, "probes ran on after the worker ended");
        let received = plane.received();
        let seqs: Vec<u64> = received.iter().filter_map(|(input, _)| input.seq()).collect();
        assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{seqs:?}");
        let kinds: Vec<&str> = received.iter().rev().take(2).map(|(input, _)| input.kind().name()).collect();
        assert_eq!(kinds, ["rollback-completed", "rollback-started"]);
    }
}
