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
//! answer ([`Executor::follow_rollout`]); each replaces the snapshot the worker follows through
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

use std::collections::VecDeque;
use std::future::Future;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use warden_core::rollout::{HostInput, HostRolloutState, ProbeKind, ProbeMode, ProbeSpec};

use super::executor::Executor;
use super::http::{Http, HttpError};
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
/// Lines of a command's output kept for the error message when it fails.
const OUTPUT_LINES_KEPT: usize = 5;
/// Longest line of a command's output that is logged or kept whole.
const MAX_LINE_CHARS: usize = 1_000;
/// After a command exited, how long its output may still take to drain (a process it left
/// behind may hold the pipes open).
const OUTPUT_DRAIN: Duration = Duration::from_millis(200);
/// An HTTP probe's status line must come within this many bytes.
const MAX_STATUS_LINE_BYTES: usize = 8 * 1024;

/// The executor's handle on one rollout's worker: the newest order goes in here.
pub(super) struct RolloutWorker {
    orders: watch::Sender<RolloutOrder>,
}

impl Executor {
    /// Hands `order` (a `Rollout` command, or an order in a heartbeat answer) to the worker of
    /// its rollout on this host, starting one if none runs. Returns at once.
    pub fn follow_rollout(&self, order: RolloutOrder) {
        let rollout_id = order.snapshot.rollout_id.clone();
        let Some((http, host)) = self.control_plane() else {
            return tracing::warn!(rollout = %rollout_id, "rollout order without a control plane to report to: ignored");
        };
        let mut workers = self.rollout_workers();
        // A worker whose receiver is gone has ended (or panicked): start a new one.
        if let Some(worker) = workers.get(&rollout_id).filter(|worker| !worker.orders.is_closed()) {
            worker.orders.send_replace(order);
            return;
        }
        if !has_work(order.snapshot.state) {
            // The order that tells a finished worker's host it converged or failed, say.
            return tracing::debug!(rollout = %rollout_id, state = %order.snapshot.state, "nothing to do for this rollout");
        }
        tracing::info!(rollout = %rollout_id, state = %order.snapshot.state, "following rollout");
        let (orders, receiver) = watch::channel(order.clone());
        workers.insert(rollout_id.clone(), RolloutWorker { orders });
        let worker = Worker {
            executor: self.clone(),
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
    pub fn rollouts_followed(&self) -> Vec<String> {
        self.rollout_workers().keys().cloned().collect()
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
    executor: Executor,
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
        let mut workers = self.executor.rollout_workers();
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
            Some(Ok(())) if self.asks_current() => Some(self.ask_current().await.map(Option::unwrap_or_default)),
            outcome => outcome.map(|result| result.map(|()| target)),
        };
        match outcome {
            None => Step::Next,
            Some(Ok(current)) => self.report(|seq| HostInput::ActivationCompleted { seq, current }).await,
            Some(Err(error)) => {
                tracing::warn!(rollout = %self.rollout_id, "activation failed: {error}");
                self.report(|seq| HostInput::ActivationFailed { seq, error }).await
            }
        }
    }

    /// Moves the host to `wanted`: a host activation runs its `activate` (`forward`) or
    /// `rollback` command; a service waits until its workloads here run `wanted`. `None` if a
    /// newer order moved the host to another state meanwhile (the work was dropped).
    async fn switch(&mut self, wanted: Option<String>, forward: bool) -> Option<Result<(), String>> {
        let timeout = self.timeout();
        match self.order.activation.clone() {
            Activation::Command { activate, rollback, .. } => {
                let (argv, what) = if forward { (activate, "activate") } else { (rollback, "rollback") };
                let argv = self.substitutions().apply_all(&argv);
                let label = format!("rollout {}: {what}", self.rollout_id);
                self.until_state_changes(run_command(argv, timeout, label, OutputLog::Info)).await
            }
            Activation::Service { workloads } => {
                self.until_state_changes(wait_for_specs(self.executor.clone(), workloads, wanted, timeout)).await
            }
        }
    }

    /// Whether the host can say what it runs (a host activation with a `current` command).
    fn asks_current(&self) -> bool {
        matches!(&self.order.activation, Activation::Command { current, .. } if !current.is_empty())
    }

    /// What the host runs by its own account: the first line of the `current` command's output
    /// (`None` for an empty one). `Ok(None)` without a `current` command, or for a service.
    async fn ask_current(&mut self) -> Result<Option<String>, String> {
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
            Some(Ok(())) if self.asks_current() => Some(self.ask_current().await),
            outcome => outcome.map(|result| result.map(|()| previous)),
        };
        match outcome {
            None => Step::Next,
            Some(Ok(current)) => self.report(|seq| HostInput::RollbackCompleted { seq, current }).await,
            Some(Err(error)) => {
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

/// The placeholders of activation and rollback commands and of probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Substitutions {
    /// This agent's host name: `{host}`.
    pub host: String,
    /// `{target}`.
    pub target: String,
    /// `{previous}`; empty when the host ran nothing before.
    pub previous: Option<String>,
}

impl Substitutions {
    /// `text` with each `{target}`, `{previous}` and `{host}` replaced, in one pass: a value
    /// that itself contains a placeholder is not replaced again. Other braces are left alone.
    pub fn apply(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open..];
            let value = [
                ("{target}", self.target.as_str()),
                ("{previous}", self.previous.as_deref().unwrap_or("")),
                ("{host}", &self.host),
            ]
            .into_iter()
            .find(|(placeholder, _)| after.starts_with(placeholder));
            match value {
                Some((placeholder, value)) => {
                    out.push_str(value);
                    rest = &after[placeholder.len()..];
                }
                None => {
                    out.push('{');
                    rest = &after[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    pub fn apply_all(&self, argv: &[String]) -> Vec<String> {
        argv.iter().map(|arg| self.apply(arg)).collect()
    }
}

/// Waits until each of `workloads` has its running cells here on spec `wanted` (with `None`:
/// none of them runs), at most `timeout`; the error names the ones that are not.
async fn wait_for_specs(
    executor: Executor,
    workloads: Vec<String>,
    wanted: Option<String>,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let off: Vec<String> = workloads
            .iter()
            .filter_map(|workload_id| {
                let specs = executor.running_specs(workload_id);
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
            let wanted = match &wanted {
                Some(spec) => format!("running spec {spec}"),
                None => "stopped".to_string(),
            };
            return Err(format!("after {} ms, not {wanted} on this host: {}", timeout.as_millis(), off.join(", ")));
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

/// Where a command's output goes in the agent's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutputLog {
    /// Activations and rollbacks: an operator wants to see what they did.
    Info,
    /// Exec probes, which run every few seconds.
    Debug,
}

/// Runs `argv` in its own process group with its output in the agent's log (each line
/// prefixed with `label`), at most `timeout`: then (or if this future is dropped) the whole
/// group is killed. `Err` says why it did not succeed: exit code or signal, or the timeout,
/// with the last line of its stderr (or stdout).
async fn run_command(argv: Vec<String>, timeout: Duration, label: String, log: OutputLog) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else { return Err("no command to run (an empty argv)".into()) };
    let mut command = tokio::process::Command::new(program);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| format!("cannot run {program:?}: {e}"))?;
    let mut group = ProcessGroup(child.id());
    let tails = Arc::new(Tails::default());
    let label: Arc<str> = label.into();
    let mut forwards = tokio::task::JoinSet::new();
    if let Some(stdout) = child.stdout.take() {
        forwards.spawn(forward_output(stdout, label.clone(), log, tails.clone(), false));
    }
    if let Some(stderr) = child.stderr.take() {
        forwards.spawn(forward_output(stderr, label.clone(), log, tails.clone(), true));
    }
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => {
            // Reaped: the group id may be reused from here on, so it must not be signalled.
            group.0 = None;
            status
        }
        Ok(Err(e)) => return Err(format!("cannot wait for {program:?}: {e}")),
        Err(_) => {
            group.kill();
            let _ = child.wait().await;
            let _ = tokio::time::timeout(OUTPUT_DRAIN, async { while forwards.join_next().await.is_some() {} }).await;
            return Err(format!("{program:?} timed out after {} ms and was killed{}", timeout.as_millis(), tails.last_words()));
        }
    };
    let _ = tokio::time::timeout(OUTPUT_DRAIN, async { while forwards.join_next().await.is_some() {} }).await;
    if status.success() {
        return Ok(());
    }
    Err(format!("{program:?} {}{}", describe_exit(status), tails.last_words()))
}

/// Runs `argv` (killed at `timeout`) and returns the first line of its stdout, trimmed; `None`
/// if it printed nothing. A non-zero exit is an error.
async fn first_line_of(argv: Vec<String>, timeout: Duration) -> Result<Option<String>, String> {
    let Some((program, args)) = argv.split_first() else { return Err("no command to run (an empty argv)".into()) };
    let mut command = tokio::process::Command::new(program);
    command.args(args).stdin(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
    let output = match tokio::time::timeout(timeout, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(format!("cannot run {program:?}: {e}")),
        Err(_) => return Err(format!("{program:?} timed out after {} ms", timeout.as_millis())),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().map(|line| format!(": {line}")).unwrap_or_default();
        return Err(format!("{program:?} {}{last}", describe_exit(output.status)));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(stdout.lines().next().map(str::trim).filter(|line| !line.is_empty()).map(str::to_string))
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

/// A command's process group, killed when this is dropped unless it was reaped (`None`).
struct ProcessGroup(Option<u32>);

impl ProcessGroup {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take().and_then(|pid| libc::pid_t::try_from(pid).ok()) {
            // SAFETY: a signal to the process group this command was started in (its leader
            // not yet reaped, so the id cannot have been reused); no memory is involved.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last lines of a command's stdout and stderr, for its error message.
#[derive(Default)]
struct Tails {
    stdout: Mutex<VecDeque<String>>,
    stderr: Mutex<VecDeque<String>>,
}

impl Tails {
    fn push(&self, stderr: bool, line: String) {
        let mut lines = if stderr { &self.stderr } else { &self.stdout }.lock().unwrap_or_else(PoisonError::into_inner);
        if lines.len() == OUTPUT_LINES_KEPT {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// `: <the last line of stderr>` (of stdout if stderr said nothing), or nothing.
    fn last_words(&self) -> String {
        let last = |lines: &Mutex<VecDeque<String>>| lines.lock().unwrap_or_else(PoisonError::into_inner).back().cloned();
        match last(&self.stderr).or_else(|| last(&self.stdout)) {
            Some(line) => format!(": {line}"),
            None => String::new(),
        }
    }
}

async fn forward_output(output: impl AsyncRead + Unpin, label: Arc<str>, log: OutputLog, tails: Arc<Tails>, stderr: bool) {
    let mut reader = BufReader::new(output);
    let mut bytes = Vec::new();
    loop {
        bytes.clear();
        match reader.read_until(b'\n', &mut bytes).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&bytes);
        let line: String = text.trim_end().chars().take(MAX_LINE_CHARS).collect();
        if line.is_empty() {
            continue;
        }
        let stream = if stderr { "stderr" } else { "stdout" };
        match log {
            OutputLog::Info => tracing::info!("{label} ({stream}): {line}"),
            OutputLog::Debug => tracing::debug!("{label} ({stream}): {line}"),
        }
        tails.push(stderr, line);
    }
}

/// One probe's result, as the worker reports it.
#[derive(Clone, Debug)]
struct ProbeOutcome {
    probe: String,
    passed: bool,
    mode: ProbeMode,
    /// Unix ms when it was taken, by this host's clock.
    at: u64,
}

/// Runs `spec` every `interval_ms` (the first at once), each run bounded by `timeout_ms`, and
/// sends each result; ends when the worker stops listening.
async fn probe_every(spec: ProbeSpec, substitutions: Substitutions, label: String, results: mpsc::Sender<ProbeOutcome>) {
    let mut ticks = tokio::time::interval(Duration::from_millis(spec.interval_ms.max(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = Duration::from_millis(spec.timeout_ms.max(1));
    let mut last_passed = None;
    loop {
        ticks.tick().await;
        let result = run_probe(&spec.kind, &substitutions, timeout, &label).await;
        let passed = result.is_ok();
        // Each change is logged at info, the same result again only at debug.
        match (&result, last_passed == Some(passed)) {
            (Ok(()), false) => tracing::info!("{label}: passes"),
            (Err(e), false) => tracing::info!("{label}: fails: {e}"),
            (Ok(()), true) => tracing::debug!("{label}: passes"),
            (Err(e), true) => tracing::debug!("{label}: fails: {e}"),
        }
        last_passed = Some(passed);
        let outcome = ProbeOutcome { probe: spec.name.clone(), passed, mode: spec.mode, at: crate::engine::now_ms() };
        if results.send(outcome).await.is_err() {
            return;
        }
    }
}

/// Runs a probe once, at most `timeout`; `Err` says why it failed.
pub(super) async fn run_probe(
    kind: &ProbeKind,
    substitutions: &Substitutions,
    timeout: Duration,
    label: &str,
) -> Result<(), String> {
    let bounded = |what: String| move |_| format!("{what}: no result within {} ms", timeout.as_millis());
    match kind {
        ProbeKind::Http { url, expect_status } => {
            let url = substitutions.apply(url);
            let status = tokio::time::timeout(timeout, http_status(&url)).await.map_err(bounded(format!("GET {url}")))??;
            if status == *expect_status {
                Ok(())
            } else {
                Err(format!("GET {url}: HTTP {status}, expected {expect_status}"))
            }
        }
        ProbeKind::Tcp { address } => {
            let address = substitutions.apply(address);
            let connect = TcpStream::connect(&address);
            match tokio::time::timeout(timeout, connect).await.map_err(bounded(format!("connect to {address}")))? {
                Ok(_) => Ok(()),
                Err(e) => Err(format!("connect to {address}: {e}")),
            }
        }
        ProbeKind::Exec { argv } => {
            run_command(substitutions.apply_all(argv), timeout, label.to_string(), OutputLog::Debug).await
        }
    }
}

/// The status of a plain HTTP/1.1 GET of `url` (`http://host[:port][/path][?query]`). The
/// agent speaks no TLS: an `https://` URL is refused with an error saying so.
async fn http_status(url: &str) -> Result<u16, String> {
    let (authority, connect_to, path) = split_http_url(url)?;
    let mut stream =
        TcpStream::connect(&connect_to).await.map_err(|e| format!("GET {url}: cannot connect to {connect_to}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: warden-agent-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("GET {url}: cannot send the request: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head.windows(2).position(|pair| pair == b"\r\n") {
            return parse_status_line(&head[..end]).map_err(|e| format!("GET {url}: {e}"));
        }
        if head.len() > MAX_STATUS_LINE_BYTES {
            return Err(format!("GET {url}: no HTTP status line in the first {MAX_STATUS_LINE_BYTES} bytes"));
        }
        let n = stream.read(&mut chunk).await.map_err(|e| format!("GET {url}: reading the answer: {e}"))?;
        if n == 0 {
            return Err(format!("GET {url}: the connection closed before an HTTP status line"));
        }
        head.extend_from_slice(&chunk[..n]);
    }
}

/// `http://host[:port][/path][?query]` → (`host[:port]` as written, for `Host`; `host:port` to
/// connect to; `/path?query`).
fn split_http_url(url: &str) -> Result<(String, String, String), String> {
    let rest = match url.strip_prefix("http://") {
        Some(rest) => rest,
        None if url.starts_with("https://") => {
            return Err(format!(
                "{url}: https is not supported by the agent's probes (it speaks no TLS); probe an http:// URL, or use a tcp or exec probe"
            ))
        }
        None => return Err(format!("{url}: not an http:// URL")),
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{url}: expected http://HOST[:PORT][/PATH]"));
    }
    let path = match path {
        "" => "/".to_string(),
        query if query.starts_with('?') => format!("/{query}"),
        path => path.to_string(),
    };
    // `host:port`, `[v6]:port`, or a host without a port.
    let has_port = match authority.rfind(']') {
        Some(bracket) => authority[bracket..].contains(':'),
        None => authority.contains(':'),
    };
    let connect_to = if has_port { authority.to_string() } else { format!("{authority}:80") };
    Ok((authority.to_string(), connect_to, path))
}

fn parse_status_line(line: &[u8]) -> Result<u16, String> {
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    let (version, code) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    match code.parse::<u16>() {
        Ok(code) if version.starts_with("HTTP/1.") && (100..=999).contains(&code) => Ok(code),
        _ => Err(format!("not an HTTP answer: {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn substitutions() -> Substitutions {
        Substitutions { host: "h1".into(), target: "v2".into(), previous: Some("v1".into()) }
    }

    #[test]
    fn placeholders_are_replaced_once() {
        let s = substitutions();
        assert_eq!(s.apply("switch --to {target} --from {previous} on {host}"), "switch --to v2 --from v1 on h1");
        assert_eq!(s.apply("{target}{target}"), "v2v2");
        assert_eq!(s.apply("{other} {target"), "{other} {target", "unknown or unclosed braces stay");
        assert_eq!(s.apply("{{host}}"), "{h1}");
        let none = Substitutions { previous: None, ..s.clone() };
        assert_eq!(none.apply("[{previous}]"), "[]", "no previous: empty");
        let tricky = Substitutions { target: "{host}".into(), ..s };
        assert_eq!(tricky.apply("{target}"), "{host}", "a value is not substituted again");
        assert_eq!(tricky.apply_all(&["a-{host}".into(), "{target}".into()]), vec!["a-h1".to_string(), "{host}".into()]);
    }

    #[test]
    fn http_urls() {
        let split = |url: &str| split_http_url(url).unwrap();
        assert_eq!(split("http://h:8080/health?x=1"), ("h:8080".into(), "h:8080".into(), "/health?x=1".into()));
        assert_eq!(split("http://h"), ("h".into(), "h:80".into(), "/".into()));
        assert_eq!(split("http://h?ready"), ("h".into(), "h:80".into(), "/?ready".into()));
        assert_eq!(split("http://[::1]:9/x#frag"), ("[::1]:9".into(), "[::1]:9".into(), "/x".into()));
        assert!(split_http_url("https://h/").unwrap_err().contains("https is not supported"));
        assert!(split_http_url("ftp://h/").is_err());
        assert!(split_http_url("http://user@h/").is_err());
        assert_eq!(parse_status_line(b"HTTP/1.1 503 Service Unavailable"), Ok(503));
        assert_eq!(parse_status_line(b"HTTP/1.0 200"), Ok(200));
        assert!(parse_status_line(b"SSH-2.0-OpenSSH_9").is_err());
    }

    /// A tiny HTTP server: `/ok` answers 200, anything else 500; `/hang` never answers.
    async fn http_server() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let request = String::from_utf8_lossy(&request);
                    let path = request.split(' ').nth(1).unwrap_or_default().to_string();
                    assert!(request.contains(&format!("Host: {addr}\r\n")), "{request}");
                    if path == "/hang" {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    let status = if path == "/ok" { "200 OK" } else { "500 Internal Server Error" };
                    let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi");
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        addr
    }

    async fn probe(kind: ProbeKind, timeout_ms: u64) -> Result<(), String> {
        run_probe(&kind, &substitutions(), Duration::from_millis(timeout_ms), "test probe").await
    }

    #[tokio::test]
    async fn http_probes() {
        let addr = http_server().await;
        let http = |path: &str, expect_status| ProbeKind::Http { url: format!("http://{addr}{path}"), expect_status };
        probe(http("/ok", 200), 2_000).await.unwrap();
        let error = probe(http("/broken", 200), 2_000).await.unwrap_err();
        assert!(error.contains("HTTP 500, expected 200"), "{error}");
        probe(http("/broken", 500), 2_000).await.unwrap();
        // Placeholders in the URL: `{target}` is `v2` here, which is not a path that answers 200.
        let error = probe(http("/{target}", 200), 2_000).await.unwrap_err();
        assert!(error.contains("/v2"), "{error}");

        let started = std::time::Instant::now();
        let error = probe(http("/hang", 200), 300).await.unwrap_err();
        assert!(error.contains("no result within 300 ms"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));

        let error = probe(ProbeKind::Http { url: "https://127.0.0.1:1/".into(), expect_status: 200 }, 1_000).await.unwrap_err();
        assert!(error.contains("https is not supported"), "{error}");
    }

    #[tokio::test]
    async fn tcp_probes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        probe(ProbeKind::Tcp { address: open.to_string() }, 2_000).await.unwrap();
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let error = probe(ProbeKind::Tcp { address: closed.to_string() }, 2_000).await.unwrap_err();
        assert!(error.contains(&format!("connect to {closed}")), "{error}");
    }

    #[tokio::test]
    async fn exec_probes() {
        let exec = |argv: &[&str]| ProbeKind::Exec { argv: argv.iter().map(|a| a.to_string()).collect() };
        probe(exec(&["true"]), 2_000).await.unwrap();
        let error = probe(exec(&["false"]), 2_000).await.unwrap_err();
        assert!(error.contains("exited with code 1"), "{error}");
        let error =
            probe(exec(&["sh", "-c", "echo first >&2; echo 'why: {host} {target}' >&2; exit 3"]), 2_000).await.unwrap_err();
        assert!(error.contains("exited with code 3: why: h1 v2"), "{error}");
        let error = probe(exec(&["sh", "-c", "echo only stdout; exit 4"]), 2_000).await.unwrap_err();
        assert!(error.ends_with("exited with code 4: only stdout"), "{error}");
        let error = probe(exec(&["sh", "-c", "kill -9 $$"]), 2_000).await.unwrap_err();
        assert!(error.contains("killed by signal 9"), "{error}");
        let error = probe(exec(&["/nonexistent/probe"]), 2_000).await.unwrap_err();
        assert!(error.contains("cannot run \"/nonexistent/probe\""), "{error}");
    }

    /// A command past its timeout is killed with everything it started.
    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; echo waiting >&2; wait", pid_file.display());
        let started = std::time::Instant::now();
        let argv = vec!["sh".to_string(), "-c".into(), script];
        let error = run_command(argv, Duration::from_millis(500), "test".into(), OutputLog::Debug).await.unwrap_err();
        assert!(error.contains("timed out after 500 ms and was killed: waiting"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        let gone = (0..100).any(|_| {
            // SAFETY: signal 0 only checks whether the process exists.
            let alive = unsafe { libc::kill(pid, 0) } == 0 && !is_zombie(pid);
            if alive {
                std::thread::sleep(Duration::from_millis(20));
            }
            !alive
        });
        assert!(gone, "the command's child {pid} outlived the timeout");
    }

    /// An executor with no cells and no shim (none is started), reporting to `server`.
    fn executor(dir: &std::path::Path, server: Option<std::net::SocketAddr>) -> Executor {
        let queue = Arc::new(warden_store::queue::DurableQueue::open(&dir.join("reports.db")).unwrap());
        let (claims, _) = mpsc::unbounded_channel();
        let shim = warden_cell::ShimExe::Standalone(dir.join("no-shim"));
        let timing = warden_core::lease::LeaseTiming::default();
        let executor = Executor::new(dir.join("cells"), dir.join("logs"), shim, queue, timing, claims);
        if let Some(addr) = server {
            let identity = Arc::new(crate::auth::Identity::generate("h1"));
            executor.set_control_plane(Arc::new(Http::new(&format!("http://{addr}"), identity).unwrap()), "h1");
        }
        executor
    }

    /// Pretends workload `workload_id` runs cell `cell_id` of spec `spec_id` here.
    fn pretend_running(executor: &Executor, workload_id: &str, cell_id: &str, spec_id: Option<&str>) {
        let started = warden_cell::StartedCell { pid: 1, pid_start_time: 1, shim_pid: 1, shim_start_time: 1 };
        let entry = super::super::executor::Entry {
            state: super::super::executor::Tracked::Running(started),
            spec_id: spec_id.map(str::to_string),
            ..super::super::executor::Entry::starting(workload_id.into(), false, None)
        };
        executor.cells().insert(cell_id.into(), entry);
    }

    #[tokio::test]
    async fn running_specs_and_service_waits() {
        let dir = tempfile::tempdir().unwrap();
        let executor = executor(dir.path(), None);
        assert_eq!(executor.running_spec("web"), None);
        wait_for_specs(executor.clone(), vec!["web".into()], None, Duration::from_millis(100)).await.unwrap();
        let error = wait_for_specs(executor.clone(), vec!["web".into()], Some("v2".into()), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(error.contains("not running spec v2 on this host: web (no running cell)"), "{error}");

        pretend_running(&executor, "web", "web.1", Some("v1"));
        executor.cells().insert("web.0".into(), super::super::executor::Entry::starting("web".into(), false, None));
        assert_eq!(executor.running_spec("web"), Some("v1".into()), "a cell still starting does not count");
        let error = wait_for_specs(executor.clone(), vec!["web".into()], Some("v2".into()), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(error.contains("web (runs v1)"), "{error}");
        let error = wait_for_specs(executor.clone(), vec!["web".into()], None, Duration::from_millis(100)).await.unwrap_err();
        assert!(error.contains("not stopped on this host: web (runs v1)"), "{error}");

        // The replacement overlaps the old cell for a while: not there until the old one is gone.
        pretend_running(&executor, "web", "web.2", Some("v2"));
        assert_eq!(executor.running_spec("web"), None, "two cells that disagree");
        let later = executor.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            later.cells().remove("web.1");
        });
        wait_for_specs(executor.clone(), vec!["web".into()], Some("v2".into()), Duration::from_secs(5)).await.unwrap();
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
            snapshot.apply(&warden_core::rollout::HostEvent::Dispatched, crate::engine::now_ms());
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
            let now = crate::engine::now_ms();
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
            let now = crate::engine::now_ms();
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

    async fn until_worker_ends(executor: &Executor) {
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

    fn is_zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
            .unwrap_or(true)
    }
}
