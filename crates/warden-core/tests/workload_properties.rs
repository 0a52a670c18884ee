//! Property tests for the workload state machine, driven by a simulated runtime.
//!
//! The simulation plays the part of warden's runtime: it submits workloads built from generated
//! spec TOML, lets time pass and ticks whatever `Projection::due` reports, starts the cells that
//! `Effect::StartCell` asks for (or fails to), lets running cells exit with arbitrary codes and
//! signals, and asks for stops. Every event the core decides is sealed into a hash-chained
//! journal, written out as canonical bytes, read back and folded into a second projection, as a
//! restart of the daemon would.
//!
//! Every simulation, whatever property it is run for, also checks after every single input that
//! `Workload::validate` holds, that the replayed projection equals the live one, that the runtime's
//! view of which cells exist agrees with the workloads' phases, and after every passage of time
//! that `next_deadline_ms` is exact (a tick does something if and only if the workload is due).

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

use warden_core::event::{CloudEvent, EventData, NewEvent, Outcome, GENESIS_HASH};
use warden_core::projection::{Projection, ReplayError};
use warden_core::spec::Spec;
use warden_core::types::{CellExit, LifecycleTerminalState, ReplicationMode, RestartPolicy, WorkloadInfo};
use warden_core::workload::{Decision, Effect, Input, Phase, StopReason, StopSignal, Workload};

/// Where simulated time starts: late 2026, in Unix milliseconds.
const T0: u64 = 1_795_445_345_123;
const DAY_MS: u64 = 86_400_000;

type R<T = ()> = Result<T, TestCaseError>;

fn bad(message: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(message.into())
}

// ---------------------------------------------------------------------------------------------
// Specs, generated as TOML and parsed with `Spec::parse`, so every one of them is a valid spec.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Policy {
    Never,
    Always,
    /// `max_attempts: None` leaves the key out (default 3); `explicit: false` leaves out the
    /// `policy` key (on-failure is the default).
    OnFailure {
        max_attempts: Option<u32>,
        explicit: bool,
    },
}

#[derive(Clone, Copy, Debug)]
enum Reset {
    /// Key left out: 10 minutes.
    Default,
    /// `"1000d"`: no simulated run ever lasts that long.
    Huge,
    Ms(u64),
}

#[derive(Clone, Debug)]
struct SpecParams {
    policy: Policy,
    /// `None` leaves the key out (100ms).
    backoff_ms: Option<u64>,
    /// `backoff_max = backoff + extra`; `None` leaves the key out (`max(30s, backoff)`).
    backoff_max_extra: Option<u64>,
    reset: Reset,
    /// `None` leaves the key out (5s).
    graceful_ms: Option<u64>,
    ttl_ms: Option<u64>,
    /// Write whole seconds as `1h2m3s` rather than milliseconds.
    long_units: bool,
    /// `[replication] mode = "warm-standby"`: a lost host means a failover, not an exit.
    warm_standby: bool,
    /// `replication.standbys`, only with `warm_standby`; `None` leaves the key out (1).
    standbys: Option<u32>,
}

fn duration_text(ms: u64, long_units: bool) -> String {
    if !long_units || ms == 0 || !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = ms / 1000;
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

impl SpecParams {
    fn backoff(&self) -> u64 {
        self.backoff_ms.unwrap_or(100)
    }

    fn backoff_max(&self) -> u64 {
        match self.backoff_max_extra {
            Some(extra) => self.backoff() + extra,
            None => self.backoff().max(30_000),
        }
    }

    fn reset_ms(&self) -> u64 {
        match self.reset {
            Reset::Default => 600_000,
            Reset::Huge => 1000 * DAY_MS,
            Reset::Ms(ms) => ms,
        }
    }

    fn graceful(&self) -> u64 {
        self.graceful_ms.unwrap_or(5_000)
    }

    fn restart_policy(&self) -> RestartPolicy {
        match self.policy {
            Policy::Never => RestartPolicy::Never,
            Policy::Always => RestartPolicy::Always,
            Policy::OnFailure { max_attempts, .. } => RestartPolicy::OnFailure { max_attempts: max_attempts.unwrap_or(3) },
        }
    }

    fn toml(&self, name: &str) -> String {
        let d = |ms| duration_text(ms, self.long_units);
        let mut text = format!("name = \"{name}\"\n");
        if let Some(ttl) = self.ttl_ms {
            text.push_str(&format!("ttl = \"{}\"\n", d(ttl)));
        }
        text.push_str("\n[cell]\nargv = [\"sleep\", \"60\"]\n");
        if let Some(grace) = self.graceful_ms {
            text.push_str(&format!("graceful_shutdown = \"{}\"\n", d(grace)));
        }
        text.push_str("\n[restart]\n");
        match self.policy {
            Policy::Never => text.push_str("policy = \"never\"\n"),
            Policy::Always => text.push_str("policy = \"always\"\n"),
            Policy::OnFailure { max_attempts, explicit } => {
                if explicit {
                    text.push_str("policy = \"on-failure\"\n");
                }
                if let Some(m) = max_attempts {
                    text.push_str(&format!("max_attempts = {m}\n"));
                }
            }
        }
        if let Some(backoff) = self.backoff_ms {
            text.push_str(&format!("backoff = \"{}\"\n", d(backoff)));
        }
        if self.backoff_max_extra.is_some() {
            text.push_str(&format!("backoff_max = \"{}\"\n", d(self.backoff_max())));
        }
        match self.reset {
            Reset::Default => {}
            Reset::Huge => text.push_str("backoff_reset = \"1000d\"\n"),
            Reset::Ms(ms) => text.push_str(&format!("backoff_reset = \"{}\"\n", d(ms))),
        }
        if self.warm_standby {
            text.push_str("\n[replication]\nmode = \"warm-standby\"\n");
            if let Some(n) = self.standbys {
                text.push_str(&format!("standbys = {n}\n"));
            }
        }
        text
    }

    fn replication_mode(&self) -> ReplicationMode {
        if self.warm_standby {
            ReplicationMode::WarmStandby
        } else {
            ReplicationMode::None
        }
    }

    /// Parses the generated TOML and checks it means what was generated.
    fn spec(&self, name: &str) -> R<Spec> {
        let text = self.toml(name);
        let spec = Spec::parse("t.toml", &text).map_err(|err| bad(format!("generated spec rejected: {err}\n{text}")))?;
        prop_assert_eq!(&spec.name, name);
        prop_assert_eq!(spec.ttl_ms, self.ttl_ms, "{}", text);
        prop_assert_eq!(spec.cell.graceful_shutdown_ms, self.graceful(), "{}", text);
        prop_assert_eq!(spec.restart.policy, self.restart_policy(), "{}", text);
        prop_assert_eq!(spec.restart.backoff_ms, self.backoff(), "{}", text);
        prop_assert_eq!(spec.restart.backoff_max_ms, self.backoff_max(), "{}", text);
        prop_assert_eq!(spec.restart.backoff_reset_ms, self.reset_ms(), "{}", text);
        prop_assert_eq!(spec.replication.mode, self.replication_mode(), "{}", text);
        prop_assert_eq!(spec.replication.standbys, self.standbys.filter(|_| self.warm_standby), "{}", text);
        let standby_count = if self.warm_standby { self.standbys.unwrap_or(1) as usize } else { 0 };
        prop_assert_eq!(spec.replication.standby_count(), standby_count, "{}", text);
        Ok(spec)
    }
}

fn on_failure() -> BoxedStrategy<Policy> {
    (prop::option::of(0u32..=5), any::<bool>())
        .prop_map(|(max_attempts, explicit)| Policy::OnFailure { max_attempts, explicit })
        .boxed()
}

fn any_policy() -> BoxedStrategy<Policy> {
    prop_oneof![Just(Policy::Never), Just(Policy::Always), on_failure()].boxed()
}

fn any_reset() -> BoxedStrategy<Reset> {
    prop_oneof![Just(Reset::Default), Just(Reset::Huge), (0u64..=20_000).prop_map(Reset::Ms),].boxed()
}

fn spec_params(policy: BoxedStrategy<Policy>, reset: BoxedStrategy<Reset>, with_ttl: bool) -> BoxedStrategy<SpecParams> {
    let ttl = if with_ttl { prop::option::of(prop_oneof![1u64..=3_000, 1_000u64..=600_000]).boxed() } else { Just(None).boxed() };
    (
        policy,
        prop::option::of(10u64..=2_000),
        prop::option::of(prop_oneof![Just(0u64), 0u64..=60_000]),
        reset,
        prop::option::of(prop_oneof![Just(0u64), 1u64..=200, 1u64..=10_000]),
        ttl,
        any::<bool>(),
        (prop::bool::weighted(0.3), prop::option::of(1u32..=3)),
    )
        .prop_map(|(policy, backoff_ms, backoff_max_extra, reset, graceful_ms, ttl_ms, long_units, (warm_standby, standbys))| {
            SpecParams {
                policy,
                backoff_ms,
                backoff_max_extra,
                reset,
                graceful_ms,
                ttl_ms,
                long_units,
                warm_standby,
                standbys: standbys.filter(|_| warm_standby),
            }
        })
        .boxed()
}

/// One to three workloads; the first is submitted at once, the others by `Action::Submit`.
fn specs(policy: BoxedStrategy<Policy>, reset: BoxedStrategy<Reset>, with_ttl: bool) -> impl Strategy<Value = Vec<SpecParams>> {
    prop::collection::vec(spec_params(policy, reset, with_ttl), 1..=3)
}

// ---------------------------------------------------------------------------------------------
// What the simulated world does.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct ExitHow {
    exit_code: Option<i32>,
    signal: Option<i32>,
    terminal_state: Option<LifecycleTerminalState>,
}

impl ExitHow {
    fn cell_exit(&self, successes_allowed: bool) -> CellExit {
        let mut exit_code = self.exit_code;
        if !successes_allowed && exit_code == Some(0) && self.signal.is_none() {
            exit_code = Some(1);
        }
        CellExit { terminal_state: self.terminal_state, ..CellExit::from_status(exit_code, self.signal) }
    }
}

fn exit_how() -> impl Strategy<Value = ExitHow> {
    let status = prop_oneof![
        3 => Just((Some(0), None)),
        3 => (1i32..=255).prop_map(|code| (Some(code), None)),
        1 => any::<i32>().prop_map(|code| (Some(code), None)),
        2 => (1i32..=31).prop_map(|signal| (None, Some(signal))),
        1 => Just((None, None)),
        1 => (any::<i32>(), 1i32..=31).prop_map(|(code, signal)| (Some(code), Some(signal))),
    ];
    let terminal = prop::option::of(prop_oneof![Just(LifecycleTerminalState::Clean), Just(LifecycleTerminalState::Forced),]);
    (status, terminal).prop_map(|((exit_code, signal), terminal_state)| ExitHow { exit_code, signal, terminal_state })
}

#[derive(Clone, Debug)]
enum Action {
    /// Time passes; then every due workload is ticked.
    Advance(u64),
    /// One of the cells that exist exits.
    Exit { cell: Index, exit: ExitHow },
    /// The runtime carries out one outstanding `Effect::StartCell`.
    Start { cell: Index, fail: bool, pid: u32, pid_start_time: u64 },
    /// A user stops one of the submitted workloads, whatever its phase.
    Stop { workload: Index },
    /// The next workload is submitted.
    Submit,
    /// The host of one of the cells that exist or are being started is lost.
    Lost { cell: Index },
    /// A rollout moves one of the submitted workloads to a new spec, whatever its phase.
    Replace { workload: Index },
}

fn actions(stop_weight: u32) -> impl Strategy<Value = Vec<Action>> {
    actions_with(stop_weight, 0)
}

/// `actions`, with new versions (`Action::Replace`) weighted `replace_weight`.
fn actions_with(stop_weight: u32, replace_weight: u32) -> impl Strategy<Value = Vec<Action>> {
    let advance = prop_oneof![
        1 => Just(0u64),
        4 => 0u64..=500,
        3 => 0u64..=5_000,
        1 => 0u64..=120_000,
        1 => 0u64..=36_000_000,
    ];
    let action = prop_oneof![
        10 => advance.prop_map(Action::Advance),
        6 => (any::<Index>(), exit_how()).prop_map(|(cell, exit)| Action::Exit { cell, exit }),
        8 => (any::<Index>(), prop::bool::weighted(0.15), any::<u32>(), any::<u64>()).prop_map(
            |(cell, fail, pid, pid_start_time)| Action::Start { cell, fail, pid, pid_start_time }
        ),
        stop_weight => any::<Index>().prop_map(|workload| Action::Stop { workload }),
        1 => Just(Action::Submit),
        3 => any::<Index>().prop_map(|cell| Action::Lost { cell }),
        replace_weight => any::<Index>().prop_map(|workload| Action::Replace { workload }),
    ];
    prop::collection::vec(action, 0..120)
}

#[derive(Clone, Copy, Debug)]
struct Rules {
    /// Cells may exit 0; otherwise a generated exit 0 becomes exit 1.
    successes: bool,
    /// The runtime may fail to start a cell.
    start_failures: bool,
    /// Users may stop workloads.
    stops: bool,
}

const ANYTHING_GOES: Rules = Rules { successes: true, start_failures: true, stops: true };

// ---------------------------------------------------------------------------------------------
// The simulated runtime.
// ---------------------------------------------------------------------------------------------

/// One input given to one workload (or its submission, when `input` is `None`).
#[derive(Debug)]
struct Step {
    wid: String,
    input: Option<Input>,
    now: u64,
    before: Option<Workload>,
    after: Workload,
    decision: Decision,
}

struct Sim {
    rules: Rules,
    specs: Vec<Spec>,
    submitted: usize,
    now: u64,
    live: Projection,
    /// Folded, event by event, from the sealed journal read back from its bytes.
    replay: Projection,
    /// Every event, with the time it was decided at.
    journal: Vec<(u64, EventData)>,
    sealed: Vec<CloudEvent>,
    /// Per workload, counted from the journal as it is sealed.
    tallies: BTreeMap<String, Tally>,
    /// Outstanding `StartCell` effects: (workload id, cell id).
    starting: Vec<(String, String)>,
    /// Cells whose process exists: (workload id, cell id).
    alive: Vec<(String, String)>,
    steps: Vec<Step>,
    /// After each action: the journal's length and the live projection then.
    boundaries: Vec<(usize, Projection)>,
}

/// Events of one workload, counted as they are sealed.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    /// `lifecycle.started`
    runs: u32,
    /// `workload.failover`
    failovers: u32,
    /// `workload.starting`
    starts: u32,
    /// `workload.starting` after an earlier one with a `workload.replaced` in between: a new
    /// version's cell, not a restart.
    replacements: u32,
    replaced_since_start: bool,
}

fn info_for(index: usize, spec: &Spec, now_ms: u64) -> WorkloadInfo {
    let created_at = now_ms / 1000;
    WorkloadInfo {
        id: format!("w-{index}"),
        vmid: 0,
        workload_type: spec.cell.isolation.as_str().into(),
        spec_id: spec.spec_id(),
        created_at,
        expires_at: spec.ttl_ms.map(|ttl| created_at + ttl.div_ceil(1000)),
        owner: format!("ed25519:{}", "ab".repeat(32)),
        replication: spec.replication.mode,
        restart_policy: spec.restart.policy,
        state_uri: None,
        consumer_workload_id: None,
    }
}

impl Sim {
    fn new(specs: Vec<Spec>, rules: Rules) -> Sim {
        Sim {
            rules,
            specs,
            submitted: 0,
            now: T0,
            live: Projection::default(),
            replay: Projection::default(),
            journal: Vec::new(),
            sealed: Vec::new(),
            tallies: BTreeMap::new(),
            starting: Vec::new(),
            alive: Vec::new(),
            steps: Vec::new(),
            boundaries: Vec::new(),
        }
    }

    /// Submits the workloads, runs the actions, and checks the journal as a whole.
    fn run(params: &[SpecParams], rules: Rules, actions: &[Action]) -> R<Sim> {
        let specs = params.iter().enumerate().map(|(i, p)| p.spec(&format!("t{i}"))).collect::<R<Vec<_>>>()?;
        let mut sim = Sim::new(specs, rules);
        sim.submit_next()?;
        sim.boundary();
        for action in actions {
            sim.act(action)?;
            sim.boundary();
        }
        sim.check_journal()?;
        Ok(sim)
    }

    fn boundary(&mut self) {
        self.boundaries.push((self.sealed.len(), self.live.clone()));
    }

    fn spec_of(&self, wid: &str) -> &Spec {
        &self.live.workloads[wid].spec
    }

    fn act(&mut self, action: &Action) -> R {
        match action {
            Action::Advance(dt) => self.advance_time(*dt),
            Action::Submit => self.submit_next(),
            Action::Stop { workload } => {
                if !self.rules.stops {
                    return Ok(());
                }
                let ids: Vec<String> = self.live.workloads.keys().cloned().collect();
                let wid = workload.get(&ids).clone();
                self.drive(&wid, Input::Stop)
            }
            Action::Start { cell, fail, pid, pid_start_time } => {
                if self.starting.is_empty() {
                    return Ok(());
                }
                let (wid, cell_id) = cell.get(&self.starting).clone();
                let input = if *fail && self.rules.start_failures {
                    Input::CellStartFailed { cell_id, error: "spawn: No such file or directory".into() }
                } else {
                    Input::CellStarted { cell_id, pid: *pid, pid_start_time: *pid_start_time }
                };
                self.drive(&wid, input)
            }
            Action::Exit { cell, exit } => {
                if self.alive.is_empty() {
                    return Ok(());
                }
                let (wid, cell_id) = cell.get(&self.alive).clone();
                let exit = exit.cell_exit(self.rules.successes);
                self.drive(&wid, Input::CellExited { cell_id, exit })
            }
            Action::Lost { cell } => {
                let cells: Vec<(String, String)> = self.alive.iter().chain(&self.starting).cloned().collect();
                if cells.is_empty() {
                    return Ok(());
                }
                let (wid, cell_id) = cell.get(&cells).clone();
                self.drive(&wid, Input::HostLost { cell_id, host: Some("h1".into()), reason: "host h1 is down".into() })
            }
            Action::Replace { workload } => {
                let ids: Vec<String> = self.live.workloads.keys().cloned().collect();
                if ids.is_empty() {
                    return Ok(());
                }
                let wid = workload.get(&ids).clone();
                self.replace(&wid)
            }
        }
    }

    /// A new version: refused only once the workload was stopped or expired (or is stopping for
    /// either); otherwise the spec is the new one at once, a cell is stopped as for a stop, and
    /// a workload without a cell starts the new spec at once, without backoff.
    fn replace(&mut self, wid: &str) -> R {
        let before = self.live.workloads[wid].clone();
        let mut spec = before.spec.clone();
        spec.cell.argv.push(format!("v{}", before.replacements + 2));
        let spec_id = format!("spec-{}", spec.cell.argv.len());
        let input = Input::Replace { spec: Box::new(spec.clone()), spec_id: spec_id.clone(), reason: "rollout r-1".into() };
        let refused = matches!(
            before.phase,
            Phase::Stopped { .. } | Phase::Expired | Phase::Stopping { reason: StopReason::Requested | StopReason::Expired, .. }
        );
        if refused {
            prop_assert!(before.step(&input, self.now).is_err(), "{}: replace accepted in {:?}", wid, before.phase);
            return Ok(());
        }
        self.drive(wid, input)?;
        let after = &self.live.workloads[wid];
        prop_assert_eq!(&after.spec, &spec);
        prop_assert_eq!(&after.info.spec_id, &spec_id);
        prop_assert_eq!(after.consecutive_failures, 0);
        let expired = before.info.expires_at.is_some_and(|secs| self.now >= secs.saturating_mul(1000));
        match &before.phase {
            Phase::Starting { .. } | Phase::Running { .. } if !expired => {
                let stopping = matches!(after.phase, Phase::Stopping { reason: StopReason::Replaced, .. });
                prop_assert!(stopping, "{}: the old cell stops for the new spec: {:?}", wid, after.phase);
            }
            Phase::Exited { .. } | Phase::Backoff { .. } | Phase::Completed | Phase::Failed { .. } if !expired => {
                prop_assert!(
                    matches!(after.phase, Phase::Starting { .. }),
                    "{}: the new spec starts at once from {:?}: {:?}",
                    wid,
                    before.phase,
                    after.phase
                );
            }
            _ => {}
        }
        Ok(())
    }

    fn submit_next(&mut self) -> R {
        let Some(spec) = self.specs.get(self.submitted).cloned() else {
            return Ok(());
        };
        let index = self.submitted;
        self.submitted += 1;
        let info = info_for(index, &spec, self.now);
        let wid = info.id.clone();
        let decision = self.live.submit(info, spec.clone(), self.now);
        match decision.events.first() {
            Some(EventData::WorkloadSubmitted { workload, spec: submitted_spec, .. }) => {
                prop_assert_eq!(&workload.id, &wid);
                prop_assert_eq!(workload.vmid, index as u32 + 1, "vmids count from 1");
                prop_assert_eq!(submitted_spec, &spec);
            }
            other => return Err(bad(format!("submit must journal workload.submitted first, got {other:?}"))),
        }
        let after = self.live.workloads[&wid].clone();
        self.record(wid, None, None, after, decision)
    }

    /// Gives `input` to workload `wid` through `Projection::advance`, as the runtime does.
    fn drive(&mut self, wid: &str, input: Input) -> R {
        let before = self.live.workloads[wid].clone();
        let pure = before
            .step(&input, self.now)
            .map_err(|err| bad(format!("step({input:?}) refused at {} in phase {:?}: {err}", self.now, before.phase)))?;
        // What the projection would have become had the lost cell simply exited instead.
        let twin = matches!(input, Input::HostLost { .. }).then(|| self.live.clone());
        let decision = self
            .live
            .advance(wid, &input, self.now)
            .map_err(|err| bad(format!("advance({input:?}) refused at {} in phase {:?}: {err}", self.now, before.phase)))?;
        prop_assert!(
            decision.events.starts_with(&pure.events) && decision.effects.starts_with(&pure.effects),
            "advance must begin with what step decided: {:?} vs {:?}",
            decision,
            pure
        );
        let after = self.live.workloads[wid].clone();
        if let (Input::HostLost { cell_id, host, reason }, Some(twin)) = (&input, twin) {
            self.check_host_lost(wid, (cell_id, host, reason), &before, twin, (&pure, &decision), &after)?;
        }
        self.record(wid.to_string(), Some(input), Some(before), after, decision)
    }

    /// A lost host: a warm-standby workload in Starting or Running (before its ttl) fails over
    /// to a fresh cell at once, with no backoff and without counting a failure; anything else
    /// takes it exactly as the cell exiting without a status.
    fn check_host_lost(
        &self,
        wid: &str,
        (cell_id, host, reason): (&String, &Option<String>, &String),
        before: &Workload,
        mut twin: Projection,
        (pure, decision): (&Decision, &Decision),
        after: &Workload,
    ) -> R {
        let expired = before.info.expires_at.is_some_and(|secs| self.now >= secs.saturating_mul(1000));
        let warm = before.spec.replication.mode == ReplicationMode::WarmStandby;
        let fails_over = warm && !expired && matches!(before.phase, Phase::Starting { .. } | Phase::Running { .. });
        if !fails_over {
            let exit = CellExit { exit_code: None, signal: None, reason: reason.clone(), terminal_state: None };
            let exited = Input::CellExited { cell_id: cell_id.clone(), exit };
            let pure_exit = before.step(&exited, self.now).map_err(|err| bad(format!("step({exited:?}) refused: {err}")))?;
            prop_assert_eq!(&pure.events, &pure_exit.events, "{}: a host loss in {:?} is an exit", wid, &before.phase);
            prop_assert_eq!(&pure.effects, &pure_exit.effects);
            let twin_decision = twin.advance(wid, &exited, self.now).map_err(|err| bad(format!("advance({exited:?}): {err}")))?;
            prop_assert_eq!(&decision.events, &twin_decision.events, "{}: a host loss in {:?} is an exit", wid, &before.phase);
            prop_assert_eq!(&decision.effects, &twin_decision.effects);
            prop_assert_eq!(after, &twin.workloads[wid]);
            prop_assert_eq!(after.failovers, before.failovers);
            return Ok(());
        }
        let Phase::Starting { cell_id: next, attempt } = &after.phase else {
            return Err(bad(format!("{wid}: a failover from {:?} left it {:?}", before.phase, after.phase)));
        };
        prop_assert_eq!(*attempt, before.runs);
        prop_assert_ne!(next, cell_id);
        let seen = self.events_of(wid).any(|(_, data)| cell_ids_of(data).contains(&next.as_str()));
        prop_assert!(!seen, "{}: the failover's cell {} is not fresh", wid, next);
        let ran_ms = before.phase.running_cell().map(|cell| self.now - cell.started_at_ms);
        let expected = vec![
            EventData::LifecycleDestroyed {
                workload_id: wid.to_string(),
                cell_id: cell_id.clone(),
                outcome: Outcome::Failed,
                exit_code: None,
                signal: None,
                reason: reason.clone(),
                terminal_state: None,
                ran_ms,
            },
            EventData::WorkloadFailover {
                workload_id: wid.to_string(),
                from_cell: cell_id.clone(),
                from_host: host.clone(),
                cell_id: next.clone(),
                reason: reason.clone(),
            },
        ];
        // Nothing follows at once: no backoff, no stop.
        prop_assert_eq!(&decision.events, &expected, "{}: failover from {:?}", wid, &before.phase);
        let backs_off = decision.events.iter().any(|data| matches!(data, EventData::WorkloadBackoff { .. }));
        prop_assert!(!backs_off, "{}: a failover backs off: {:?}", wid, decision);
        let start = Effect::StartCell { workload_id: wid.to_string(), cell_id: next.clone() };
        prop_assert_eq!(&decision.effects, &vec![start]);
        prop_assert_eq!(pure, decision);
        prop_assert_eq!(after.consecutive_failures, before.consecutive_failures);
        prop_assert_eq!(after.failovers, before.failovers + 1);
        prop_assert_eq!(after.runs, before.runs);
        prop_assert_eq!(after.cells_created, before.cells_created + 1);
        prop_assert_eq!(after.stop_reason, before.stop_reason);
        Ok(())
    }

    /// Journals a step's events, carries out its effects' bookkeeping, and checks the state.
    fn record(&mut self, wid: String, input: Option<Input>, before: Option<Workload>, after: Workload, decision: Decision) -> R {
        for data in &decision.events {
            prop_assert_eq!(data.workload_id(), Some(wid.as_str()));
            self.seal(data.clone())?;
        }
        match &input {
            Some(Input::CellStarted { cell_id, .. }) => {
                self.starting.retain(|(_, c)| c != cell_id);
                prop_assert!(
                    matches!(decision.events.first(), Some(EventData::LifecycleStarted { cell_id: c, .. }) if c == cell_id),
                    "a started cell is journaled as lifecycle.started: {:?}",
                    decision
                );
                self.alive.push((wid.clone(), cell_id.clone()));
            }
            Some(Input::CellStartFailed { cell_id, .. }) => {
                self.starting.retain(|(_, c)| c != cell_id);
            }
            Some(Input::CellExited { cell_id, .. }) => {
                self.alive.retain(|(_, c)| c != cell_id);
            }
            // A lost cell is gone, whether it ran or was still being started.
            Some(Input::HostLost { cell_id, .. }) => {
                self.alive.retain(|(_, c)| c != cell_id);
                self.starting.retain(|(_, c)| c != cell_id);
            }
            Some(Input::Tick | Input::Stop | Input::Replace { .. }) | None => {}
        }
        for effect in &decision.effects {
            match effect {
                Effect::StartCell { workload_id, cell_id } => {
                    prop_assert_eq!(workload_id, &wid);
                    self.starting.push((wid.clone(), cell_id.clone()));
                }
                Effect::SignalCell { workload_id, .. } => prop_assert_eq!(workload_id, &wid),
            }
        }
        self.steps.push(Step { wid, input, now: self.now, before, after, decision });
        self.check_state()
    }

    /// Seals one event into the journal, reads it back from its bytes, and folds it into `replay`.
    fn seal(&mut self, data: EventData) -> R {
        let seq = self.sealed.len() as u64 + 1;
        let prevhash = self.sealed.last().map_or_else(|| GENESIS_HASH.to_string(), CloudEvent::hash);
        let new = NewEvent {
            id: format!("evt-{seq}"),
            source: "/warden/sim".into(),
            time_ms: self.now,
            subject: data.subject().map(str::to_string),
            data: data.clone(),
        };
        let event = CloudEvent::seal(&new, seq, &prevhash);
        let read: CloudEvent = serde_json::from_slice(&event.canonical_bytes())?;
        prop_assert_eq!(&read, &event);
        prop_assert_eq!(read.hash(), event.hash());
        prop_assert_eq!(&read.typed_data()?, &data);
        self.replay.apply_event(&read)?;
        if let Some(wid) = data.workload_id() {
            let tally = self.tallies.entry(wid.to_string()).or_default();
            match &data {
                EventData::LifecycleStarted { .. } => tally.runs += 1,
                EventData::WorkloadFailover { .. } => tally.failovers += 1,
                EventData::WorkloadStarting { .. } => {
                    if tally.starts > 0 && tally.replaced_since_start {
                        tally.replacements += 1;
                    }
                    tally.replaced_since_start = false;
                    tally.starts += 1;
                }
                EventData::WorkloadReplaced { .. } => tally.replaced_since_start = true,
                _ => {}
            }
        }
        // What the runtime does once the event is durable: the core cannot know seqs.
        self.live.last_seq = seq;
        self.sealed.push(event);
        self.journal.push((self.now, data));
        Ok(())
    }

    /// Checked after every input.
    fn check_state(&self) -> R {
        for (id, workload) in &self.live.workloads {
            if let Err(why) = workload.validate() {
                return Err(bad(format!("{id} invalid after a step: {why}")));
            }
            // Failovers are new cells, and runs, that are not restarts; `never` allows them.
            let tally = self.tallies.get(id).copied().unwrap_or_default();
            prop_assert_eq!(workload.runs, tally.runs, "{}: runs vs lifecycle.started", id);
            prop_assert_eq!(workload.failovers, tally.failovers, "{}: failovers vs workload.failover", id);
            let restarts = workload.runs.saturating_sub(1).saturating_sub(workload.failovers_ran);
            prop_assert_eq!(workload.restarts(), restarts.saturating_sub(workload.replacements));
            prop_assert_eq!(workload.replacements, tally.replacements, "{}: replacements vs starts after a replace", id);
            prop_assert!(workload.failovers_ran <= workload.failovers);
            if workload.spec.restart.policy == RestartPolicy::Never {
                let allowed = 1 + workload.failovers + workload.replacements;
                prop_assert!(workload.runs <= allowed, "{}: never, yet {} runs", id, workload.runs);
                prop_assert!(tally.starts <= 1 + tally.replacements, "{}: never, yet {} workload.starting", id, tally.starts);
            }
            // The runtime's view of the cells agrees with the phases.
            let running: Vec<&str> = workload.phase.running_cell().map(|c| c.cell_id.as_str()).into_iter().collect();
            let creating: Vec<&str> = match (workload.phase.cell_id(), running.is_empty()) {
                (Some(cell_id), true) => vec![cell_id],
                _ => vec![],
            };
            let alive: Vec<&str> = self.alive.iter().filter(|(w, _)| w == id).map(|(_, c)| c.as_str()).collect();
            let starting: Vec<&str> = self.starting.iter().filter(|(w, _)| w == id).map(|(_, c)| c.as_str()).collect();
            prop_assert_eq!(alive, running, "{} in {:?}", id, workload.phase);
            prop_assert_eq!(starting, creating, "{} in {:?}", id, workload.phase);
        }
        prop_assert_eq!(&self.replay, &self.live, "replaying the journal must rebuild the live projection");
        Ok(())
    }

    /// Time passes; every due workload is ticked, as the runtime's timer would.
    fn advance_time(&mut self, dt: u64) -> R {
        self.now += dt;
        let due = self.live.due(self.now);
        for (id, workload) in &self.live.workloads {
            let tick = workload.step(&Input::Tick, self.now).map_err(|err| bad(format!("tick refused: {err}")))?;
            let is_due = due.contains(id);
            prop_assert_eq!(
                !tick.events.is_empty(),
                is_due,
                "{} in {:?} at {}: a tick must do something exactly when the workload is due (next deadline {:?})",
                id,
                workload.phase,
                self.now,
                workload.next_deadline_ms()
            );
            if !is_due {
                prop_assert!(tick.effects.is_empty());
            }
        }
        for id in due {
            self.drive(&id, Input::Tick)?;
        }
        prop_assert!(
            self.live.due(self.now).is_empty(),
            "still due after being ticked (the runtime would spin): {:?}",
            self.live.due(self.now)
        );
        if let Some(next) = self.live.next_deadline_ms() {
            prop_assert!(next > self.now);
        }
        Ok(())
    }

    /// Lets everything run to its end: cells start, every cell exits failing at once, and time
    /// jumps to the next deadline. Only for policies that end (never, on-failure).
    fn drain(&mut self) -> R {
        for _ in 0..10_000 {
            if let Some((wid, cell_id)) = self.starting.first().cloned() {
                self.drive(&wid, Input::CellStarted { cell_id, pid: 4242, pid_start_time: 17 })?;
            } else if let Some((wid, cell_id)) = self.alive.first().cloned() {
                let exit = CellExit::from_status(Some(1), None);
                self.drive(&wid, Input::CellExited { cell_id, exit })?;
            } else if let Some(at) = self.live.next_deadline_ms() {
                self.advance_time(at - self.now)?;
            } else {
                return Ok(());
            }
        }
        Err(bad("the simulation did not settle"))
    }

    /// The sealed journal: seqs from 1 without gaps, an intact prevhash chain, and a full
    /// replay from scratch equal to the live projection.
    fn check_journal(&self) -> R {
        let mut prev = GENESIS_HASH.to_string();
        for (i, event) in self.sealed.iter().enumerate() {
            prop_assert_eq!(event.seq, i as u64 + 1, "seq gap");
            prop_assert_eq!(&event.prevhash, &prev, "prevhash chain broken at {}", event.seq);
            prev = event.hash();
        }
        let rebuilt = fold(&self.sealed)?;
        prop_assert_eq!(&rebuilt, &self.live);
        Ok(())
    }

    fn workload_ids(&self) -> Vec<String> {
        self.live.workloads.keys().cloned().collect()
    }

    fn events_of<'a>(&'a self, wid: &'a str) -> impl Iterator<Item = &'a (u64, EventData)> + 'a {
        self.journal.iter().filter(move |(_, data)| data.workload_id() == Some(wid))
    }

    fn count(&self, wid: &str, pred: impl Fn(&EventData) -> bool) -> usize {
        self.events_of(wid).filter(|(_, data)| pred(data)).count()
    }
}

/// Folds sealed events, as read back from their bytes, into a fresh projection.
fn fold(events: &[CloudEvent]) -> R<Projection> {
    let mut projection = Projection::default();
    for event in events {
        let read: CloudEvent = serde_json::from_slice(&event.canonical_bytes())?;
        projection.apply_event(&read)?;
    }
    Ok(projection)
}

fn is_lifecycle_started(data: &EventData) -> bool {
    matches!(data, EventData::LifecycleStarted { .. })
}

fn is_starting(data: &EventData) -> bool {
    matches!(data, EventData::WorkloadStarting { .. })
}

fn is_failover(data: &EventData) -> bool {
    matches!(data, EventData::WorkloadFailover { .. })
}

/// A new cell decided: a start (first or after a backoff), or a failover.
fn is_new_cell(data: &EventData) -> bool {
    matches!(data, EventData::WorkloadStarting { .. } | EventData::WorkloadFailover { .. })
}

/// The cells an event names.
fn cell_ids_of(data: &EventData) -> Vec<&str> {
    match data {
        EventData::WorkloadStarting { cell_id, .. }
        | EventData::LifecycleStarted { cell_id, .. }
        | EventData::LifecycleDestroyed { cell_id, .. } => vec![cell_id],
        EventData::WorkloadFailover { from_cell, cell_id, .. } => vec![from_cell, cell_id],
        _ => vec![],
    }
}

fn is_terminal_event(data: &EventData) -> bool {
    matches!(
        data,
        EventData::WorkloadCompleted { .. }
            | EventData::WorkloadFailed { .. }
            | EventData::WorkloadStopped { .. }
            | EventData::WorkloadExpired { .. }
    )
}

fn max_attempts_of(spec: &Spec) -> u32 {
    match spec.restart.policy {
        RestartPolicy::OnFailure { max_attempts } => max_attempts,
        other => panic!("expected on-failure, got {other:?}"),
    }
}

/// `backoff × 2^(n-1)` capped at `backoff_max`, worked out independently of the core;
/// `backoff` itself for n = 0 (the delay after a success under `always`).
fn expected_delay(backoff: u64, backoff_max: u64, consecutive_failures: u32) -> u64 {
    let mut delay = u128::from(backoff);
    for _ in 1..consecutive_failures {
        if delay >= u128::from(backoff_max) {
            break;
        }
        delay *= 2;
    }
    delay.min(u128::from(backoff_max)) as u64
}

// ---------------------------------------------------------------------------------------------
// Property checks over a finished simulation.
// ---------------------------------------------------------------------------------------------

/// Property 3: nothing starts once a workload has ended, or once its stop was decided.
fn check_nothing_starts_after_the_end(sim: &Sim) -> R {
    for step in &sim.steps {
        // Every StartCell comes with the workload.starting (or workload.failover) that decided
        // it, and vice versa.
        let starting: Vec<&str> = step
            .decision
            .events
            .iter()
            .filter_map(|data| match data {
                EventData::WorkloadStarting { cell_id, .. } | EventData::WorkloadFailover { cell_id, .. } => {
                    Some(cell_id.as_str())
                }
                _ => None,
            })
            .collect();
        let start_effects: Vec<&str> = step
            .decision
            .effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::StartCell { cell_id, .. } => Some(cell_id.as_str()),
                Effect::SignalCell { .. } => None,
            })
            .collect();
        prop_assert_eq!(starting, start_effects, "{:?}", step.decision);
        if let Some(before) = &step.before {
            if before.phase.is_terminal() {
                prop_assert!(
                    step.decision.events.is_empty() && step.decision.effects.is_empty(),
                    "{} is {:?}, yet {:?} produced {:?}",
                    step.wid,
                    before.phase,
                    step.input,
                    step.decision
                );
                prop_assert_eq!(&step.after.phase, &before.phase);
            }
        }
    }
    // From a user's Stop on, no new cell; and a workload that was live when it was stopped
    // ends `stopped` (or `expired`, if its ttl had already started stopping it).
    for wid in sim.workload_ids() {
        let mut stop_asked: Option<&Phase> = None;
        for step in sim.steps.iter().filter(|s| s.wid == wid) {
            if let (Some(Input::Stop), Some(before)) = (&step.input, &step.before) {
                stop_asked = stop_asked.or(Some(&before.phase));
            }
            let Some(phase_when_asked) = stop_asked else {
                continue;
            };
            if let Some(data) = step.decision.events.iter().find(|data| is_new_cell(data)) {
                return Err(bad(format!("{wid}: {data:?} at {} after a stop was asked for", step.now)));
            }
            if !phase_when_asked.is_terminal() && step.after.phase.is_terminal() {
                let expected_stopped = !matches!(phase_when_asked, Phase::Stopping { reason: StopReason::Expired, .. });
                prop_assert!(
                    if expected_stopped {
                        matches!(step.after.phase, Phase::Stopped { .. })
                    } else {
                        step.after.phase == Phase::Expired
                    },
                    "{} was {:?} when stopped, and ended {:?}",
                    &wid,
                    phase_when_asked,
                    step.after.phase
                );
            }
        }
    }
    for wid in sim.workload_ids() {
        let mut ended = false;
        let mut stop_decided = false;
        for (at, data) in sim.events_of(&wid) {
            if ended {
                return Err(bad(format!("{wid}: {data:?} at {at} after the workload ended")));
            }
            if stop_decided && is_new_cell(data) {
                return Err(bad(format!("{wid}: {data:?} at {at} after its stop was decided")));
            }
            ended |= is_terminal_event(data);
            stop_decided |= matches!(data, EventData::WorkloadStopping { .. });
        }
    }
    Ok(())
}

/// Property 6: stop sends SIGTERM, then SIGKILL exactly once at the deadline, then ends stopped.
fn check_stop_semantics(sim: &Sim) -> R {
    let mut terms: BTreeMap<&str, usize> = BTreeMap::new();
    let mut kills: BTreeMap<&str, usize> = BTreeMap::new();
    for step in &sim.steps {
        for effect in &step.decision.effects {
            let Effect::SignalCell { cell_id, signal, .. } = effect else {
                continue;
            };
            // Only a cell with a known pid, in a stopping workload, is ever signalled.
            let Phase::Stopping { cell: Some(cell), kill_at_ms, escalated, .. } = &step.after.phase else {
                return Err(bad(format!("{cell_id} signalled {signal:?} while {:?}", step.after.phase)));
            };
            prop_assert_eq!(&cell.cell_id, cell_id);
            match signal {
                StopSignal::Term => *terms.entry(cell_id).or_default() += 1,
                StopSignal::Kill => {
                    *kills.entry(cell_id).or_default() += 1;
                    prop_assert!(*escalated);
                    prop_assert!(step.now >= *kill_at_ms, "SIGKILL at {} before kill_at_ms {}", step.now, kill_at_ms);
                }
            }
        }
        // A stop decided before the pid was known is delivered as soon as it is.
        if let (Some(Phase::Stopping { cell: None, escalated, .. }), Some(Input::CellStarted { cell_id, .. })) =
            (step.before.as_ref().map(|w| &w.phase), &step.input)
        {
            let signal = if *escalated { StopSignal::Kill } else { StopSignal::Term };
            prop_assert_eq!(
                &step.decision.effects,
                &vec![Effect::SignalCell { workload_id: step.wid.clone(), cell_id: cell_id.clone(), signal }]
            );
        }
    }
    for (cell, n) in terms.iter().chain(kills.iter()) {
        prop_assert!(*n <= 1, "{} signalled {} times with one signal", cell, n);
    }

    for (i, step) in sim.steps.iter().enumerate() {
        let (Some(Input::Stop), Some(Workload { phase: Phase::Running { cell }, .. })) = (&step.input, &step.before) else {
            continue;
        };
        let cell_id = cell.cell_id.as_str();
        let kill_at = step.now + sim.spec_of(&step.wid).cell.graceful_shutdown_ms;
        prop_assert_eq!(
            step.decision.events.first(),
            Some(&EventData::WorkloadStopping {
                workload_id: step.wid.clone(),
                reason: StopReason::Requested,
                kill_at_ms: kill_at,
            })
        );
        let term = Effect::SignalCell { workload_id: step.wid.clone(), cell_id: cell_id.to_string(), signal: StopSignal::Term };
        prop_assert_eq!(step.decision.effects.first(), Some(&term));

        let later: Vec<(usize, &Step)> = sim.steps.iter().enumerate().skip(i).filter(|(_, s)| s.wid == step.wid).collect();
        // The cell's end: it exits, or its host is lost (which, while stopping, is an exit).
        let exited = later.iter().find(|(_, s)| {
            matches!(&s.input, Some(Input::CellExited { cell_id: c, .. } | Input::HostLost { cell_id: c, .. }) if c == cell_id)
        });
        let kill_steps: Vec<usize> = later
            .iter()
            .filter(|(_, s)| {
                s.decision
                    .effects
                    .iter()
                    .any(|e| matches!(e, Effect::SignalCell { cell_id: c, signal: StopSignal::Kill, .. } if c == cell_id))
            })
            .map(|(j, _)| *j)
            .collect();
        // The first step of this workload at or past the deadline, while the cell still lives.
        let first_due =
            later.iter().take_while(|(j, _)| exited.is_none_or(|(e, _)| j < e)).find(|(_, s)| s.now >= kill_at).map(|(j, _)| *j);
        let time_reached_deadline_alive = match exited {
            Some((_, exit_step)) => exit_step.now >= kill_at,
            None => sim.now >= kill_at,
        };
        if time_reached_deadline_alive {
            prop_assert!(first_due.is_some(), "{} outlived kill_at_ms {} but no tick came", cell_id, kill_at);
        }
        match first_due {
            Some(j) => prop_assert_eq!(
                &kill_steps,
                &vec![j],
                "{} must get SIGKILL once, at the first tick at or after {}",
                cell_id,
                kill_at
            ),
            None => prop_assert!(kill_steps.is_empty(), "{} got SIGKILL though it exited before {}", cell_id, kill_at),
        }
        if let Some((_, exit_step)) = exited {
            prop_assert!(
                matches!(exit_step.after.phase, Phase::Stopped { .. }),
                "after its cell exited, a stopped workload is {:?}",
                exit_step.after.phase
            );
        }
    }
    Ok(())
}

/// Property 7: each backoff (and the final failure) counts consecutive failures as the spec says,
/// and waits `backoff × 2^(n-1)` capped at `backoff_max`; restarts wait for the backoff.
fn check_backoff_model(sim: &Sim) -> R {
    for wid in sim.workload_ids() {
        let restart = sim.spec_of(&wid).restart;
        let mut failures: u32 = 0;
        let mut last_exit: Option<(bool, Option<u64>)> = None;
        let mut backoff_until: Option<u64> = None;
        for (at, data) in sim.events_of(&wid) {
            match data {
                EventData::LifecycleDestroyed { outcome, exit_code, signal, ran_ms, .. } => {
                    let succeeded = *exit_code == Some(0) && signal.is_none();
                    prop_assert_eq!(*outcome, if succeeded { Outcome::Succeeded } else { Outcome::Failed });
                    last_exit = Some((succeeded, *ran_ms));
                }
                // A failover follows the lost cell's failed lifecycle.destroyed at once, without a
                // backoff, and leaves the count of consecutive failures alone.
                EventData::WorkloadFailover { .. } => {
                    let Some((succeeded, _)) = last_exit.take() else {
                        return Err(bad(format!("{wid}: {data:?} without an exit before it")));
                    };
                    prop_assert!(!succeeded, "{}: failover after a successful exit", &wid);
                    prop_assert!(backoff_until.is_none(), "{}: failover during a backoff", &wid);
                }
                EventData::WorkloadBackoff { consecutive_failures, .. }
                | EventData::WorkloadFailed { consecutive_failures, .. } => {
                    let Some((succeeded, ran_ms)) = last_exit.take() else {
                        return Err(bad(format!("{wid}: {data:?} without an exit before it")));
                    };
                    let outlived_reset = ran_ms.is_some_and(|ran| ran >= restart.backoff_reset_ms);
                    let expected = if succeeded {
                        0
                    } else if outlived_reset {
                        1
                    } else {
                        failures + 1
                    };
                    prop_assert_eq!(
                        *consecutive_failures,
                        expected,
                        "{}: exit succeeded={} ran_ms={:?} after {} failures: {:?}",
                        &wid,
                        succeeded,
                        ran_ms,
                        failures,
                        data
                    );
                    failures = expected;
                    if let EventData::WorkloadBackoff { delay_ms, until_ms, .. } = data {
                        let delay = expected_delay(restart.backoff_ms, restart.backoff_max_ms, expected);
                        prop_assert_eq!(*delay_ms, delay, "{}: {:?}", &wid, data);
                        prop_assert_eq!(*until_ms, at + delay);
                        backoff_until = Some(*until_ms);
                    }
                }
                EventData::WorkloadStarting { .. } => {
                    if let Some(until) = backoff_until.take() {
                        prop_assert!(*at >= until, "{}: restarted at {} before {}", &wid, at, until);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// `Workload::restarts` against its definition, worked out from the events: every run after the
/// first whose cell was not decided by a failover.
fn check_restarts_model(sim: &Sim) -> R {
    for wid in sim.workload_ids() {
        let mut runs = 0u32;
        let mut restarts = 0u32;
        let mut failover_cells: Vec<&str> = Vec::new();
        for step in sim.steps.iter().filter(|s| s.wid == wid) {
            for data in &step.decision.events {
                match data {
                    EventData::WorkloadFailover { cell_id, .. } => failover_cells.push(cell_id),
                    EventData::LifecycleStarted { cell_id, .. } => {
                        if runs > 0 && !failover_cells.contains(&cell_id.as_str()) {
                            restarts += 1;
                        }
                        runs += 1;
                    }
                    _ => {}
                }
            }
            prop_assert_eq!(
                step.after.restarts(),
                restarts,
                "{}: after {:?} at {} ({} runs, {} failovers, failover cells {:?})",
                &wid,
                &step.input,
                step.now,
                step.after.runs,
                step.after.failovers,
                &failover_cells
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The properties.
// ---------------------------------------------------------------------------------------------

/// How long one run of a crash loop lasts, relative to `backoff_reset`.
#[derive(Clone, Copy, Debug)]
enum RunLength {
    Ms(u64),
    JustUnderReset,
    ExactlyReset,
}

impl RunLength {
    fn ms(self, reset: u64) -> u64 {
        match self {
            RunLength::Ms(ms) => ms,
            RunLength::JustUnderReset => reset - 1,
            RunLength::ExactlyReset => reset,
        }
    }
}

fn run_length() -> impl Strategy<Value = RunLength> {
    prop_oneof![
        6 => (0u64..=2_000).prop_map(RunLength::Ms),
        2 => (0u64..=40_000).prop_map(RunLength::Ms),
        1 => Just(RunLength::JustUnderReset),
        1 => Just(RunLength::ExactlyReset),
    ]
}

proptest! {
    /// 1a. Under on-failure with max_attempts = m and a backoff_reset no run reaches, a workload
    /// starts at most 1 + m cells, whatever else happens (successes, start failures, stops, ttl,
    /// lost hosts); failovers come on top, as new cells that are not restarts.
    #[test]
    fn on_failure_runs_at_most_one_plus_max_attempts(
        params in specs(on_failure(), Just(Reset::Huge).boxed(), true),
        actions in actions(1),
    ) {
        let sim = Sim::run(&params, ANYTHING_GOES, &actions)?;
        for wid in sim.workload_ids() {
            let m = max_attempts_of(sim.spec_of(&wid));
            for (_, data) in sim.events_of(&wid) {
                if let EventData::LifecycleDestroyed { ran_ms: Some(ran), .. } = data {
                    prop_assert!(*ran < sim.spec_of(&wid).restart.backoff_reset_ms);
                }
            }
            let runs = sim.count(&wid, is_lifecycle_started);
            let decided = sim.count(&wid, is_starting);
            let failovers = sim.count(&wid, is_failover);
            prop_assert!(
                runs as u64 <= 1 + u64::from(m) + failovers as u64,
                "{}: {} runs with max_attempts {} and {} failovers",
                wid,
                runs,
                m,
                failovers
            );
            prop_assert!(decided as u64 <= 1 + u64::from(m), "{}: {} cells with max_attempts {}", wid, decided, m);
            prop_assert_eq!(sim.live.workloads[&wid].runs as usize, runs);
        }
    }

    /// 1b. Under on-failure with max_attempts = m, a workload whose every run fails ends `failed`
    /// after exactly 1 + m failed cells once enough time passes: 1 + m runs, plus one per
    /// failover, less the cells lost before they started.
    #[test]
    fn on_failure_gives_up_after_exactly_one_plus_max_attempts_failed_runs(
        params in specs(on_failure(), Just(Reset::Huge).boxed(), false),
        actions in actions(0),
    ) {
        let rules = Rules { successes: false, start_failures: false, stops: false };
        let mut sim = Sim::run(&params, rules, &actions)?;
        while sim.submitted < sim.specs.len() {
            sim.submit_next()?;
        }
        sim.drain()?;
        sim.check_journal()?;
        for wid in sim.workload_ids() {
            let m = max_attempts_of(sim.spec_of(&wid));
            let workload = &sim.live.workloads[&wid];
            prop_assert!(matches!(workload.phase, Phase::Failed { .. }), "{} ended {:?}", wid, workload.phase);
            // Start failures and stops are off: a cell that never ran was lost while starting.
            let never_ran = sim.count(&wid, |data| matches!(data, EventData::LifecycleDestroyed { ran_ms: None, .. }));
            let failovers = sim.count(&wid, is_failover) as u64;
            prop_assert_eq!(u64::from(workload.cells_created), 1 + u64::from(m) + failovers);
            prop_assert_eq!(u64::from(workload.runs), 1 + u64::from(m) + failovers - never_ran as u64);
            prop_assert_eq!(sim.count(&wid, is_lifecycle_started) as u64, u64::from(workload.runs));
            let failed: Vec<u32> = sim
                .events_of(&wid)
                .filter_map(|(_, data)| match data {
                    EventData::WorkloadFailed { consecutive_failures, .. } => Some(*consecutive_failures),
                    _ => None,
                })
                .collect();
            prop_assert_eq!(failed, vec![m + 1]);
        }
    }

    /// 2. Under `never`, at most one start, ever (a failover is not a restart, so its cell may
    /// run besides); and the workload always comes to an end.
    #[test]
    fn never_runs_at_most_once(
        params in specs(Just(Policy::Never).boxed(), any_reset(), true),
        actions in actions(1),
    ) {
        let mut sim = Sim::run(&params, ANYTHING_GOES, &actions)?;
        sim.drain()?;
        sim.check_journal()?;
        for wid in sim.workload_ids() {
            let failovers = sim.count(&wid, is_failover);
            prop_assert!(sim.count(&wid, is_lifecycle_started) <= 1 + failovers, "{} ran twice", wid);
            prop_assert!(sim.count(&wid, is_starting) <= 1, "{} started twice", wid);
            prop_assert_eq!(sim.live.workloads[&wid].failovers as usize, failovers);
            prop_assert!(sim.live.workloads[&wid].phase.is_terminal());
        }
    }

    /// 3. Once a workload is completed, failed, stopped or expired, nothing more happens to it;
    /// once its stop is decided, no new cell is started for it.
    #[test]
    fn nothing_starts_after_a_workload_ends_or_is_stopped(
        params in specs(any_policy(), any_reset(), true),
        actions in actions(2),
    ) {
        let sim = Sim::run(&params, ANYTHING_GOES, &actions)?;
        check_nothing_starts_after_the_end(&sim)?;
    }

    /// 4. Folding the sealed journal into a fresh projection rebuilds the live projection, at
    /// every boundary between inputs (checked incrementally inside the simulation) and, from
    /// scratch, at every boundary between actions.
    #[test]
    fn replay_rebuilds_the_live_projection_at_every_boundary(
        params in specs(any_policy(), any_reset(), true),
        actions in actions(1),
    ) {
        let sim = Sim::run(&params, ANYTHING_GOES, &actions)?;
        for (len, live) in &sim.boundaries {
            let rebuilt = fold(&sim.sealed[..*len])?;
            prop_assert_eq!(&rebuilt, live, "after {} events", len);
        }
    }

    /// 5. Invariants after every step (checked inside the simulation); the sealed journal has
    /// no seq gaps, its prevhash chain verifies, and a gap or a tampered event is detected.
    #[test]
    fn every_step_keeps_the_invariants_and_the_chain_verifies(
        params in specs(any_policy(), any_reset(), true),
        actions in actions(1),
        victim in any::<Index>(),
    ) {
        let sim = Sim::run(&params, ANYTHING_GOES, &actions)?;
        sim.check_journal()?;
        for workload in sim.live.workloads.values() {
            prop_assert_eq!(workload.validate(), Ok(()));
            prop_assert!(workload.runs <= workload.cells_created);
        }
        prop_assert_eq!(sim.live.last_seq, sim.sealed.len() as u64);

        // Dropping one event leaves a gap that replay refuses.
        let n = sim.sealed.len();
        let dropped = victim.index(n);
        if dropped + 1 < n {
            let mut projection = Projection::default();
            let mut refused = None;
            for (i, event) in sim.sealed.iter().enumerate() {
                if i == dropped {
                    continue;
                }
                if let Err(err) = projection.apply_event(event) {
                    refused = Some(err);
                    break;
                }
            }
            let expected_seq = dropped as u64 + 2;
            prop_assert!(
                matches!(refused, Some(ReplayError::Gap { seq, expected }) if seq == expected_seq && expected == expected_seq - 1),
                "{:?}",
                refused
            );
        }
        // Changing one event breaks the chain at the next one.
        if dropped + 1 < n {
            let mut tampered = sim.sealed[dropped].clone();
            tampered.time = "1970-01-01T00:00:00.000Z".into();
            prop_assert_ne!(tampered.hash(), sim.sealed[dropped + 1].prevhash.clone());
            prop_assert_eq!(sim.sealed[dropped].hash(), sim.sealed[dropped + 1].prevhash.clone());
        }
    }

    /// 6. Stop on a running workload sends SIGTERM; if the cell outlives kill_at_ms the first
    /// due tick sends SIGKILL, exactly once; when the cell exits the workload is `stopped`.
    #[test]
    fn stop_sends_term_then_one_kill_at_the_deadline(
        params in specs(any_policy(), any_reset(), true),
        actions in actions(3),
    ) {
        let sim = Sim::run(&params, ANYTHING_GOES, &actions)?;
        check_stop_semantics(&sim)?;
    }

    /// 9. A new version (a rollout's `Replace`) is refused only for a workload stopped or
    /// expired; otherwise the spec changes at once, a running cell is stopped, and the new
    /// spec's cell starts without backoff (also after a failure: a rollback revives the
    /// workload). Replacement cells are not restarts; replay rebuilds every step.
    #[test]
    fn replacing_the_spec_starts_the_new_version_without_counting_a_restart(
        params in specs(any_policy(), any_reset(), true),
        actions in actions_with(1, 3),
    ) {
        let sim = Sim::run(&params, ANYTHING_GOES, &actions)?;
        check_stop_semantics(&sim)?;
    }

    /// 7a. Every backoff's delay follows the doubling-with-cap rule and the reset rule, over
    /// arbitrary runs of the simulation.
    #[test]
    fn backoff_follows_consecutive_failures(
        params in specs(any_policy(), any_reset(), true),
        actions in actions(1),
    ) {
        let sim = Sim::run(&params, ANYTHING_GOES, &actions)?;
        check_backoff_model(&sim)?;
    }

    /// 8. `restarts()` counts the runs after the first that are not failovers, at every step.
    /// Fails today: `restarts()` subtracts every failover from the runs, whether or not its cell
    /// ran yet (see the two deterministic cases below).
    #[test]
    fn restarts_count_runs_after_the_first_that_are_not_failovers(
        params in specs(any_policy(), any_reset(), true),
        actions in actions(1),
    ) {
        let sim = Sim::run(&params, ANYTHING_GOES, &actions)?;
        check_restarts_model(&sim)?;
    }

    /// 7b. A crash loop: delays are backoff, 2×backoff, 4×backoff … capped at backoff_max, and a
    /// run that lasted at least backoff_reset sets the next delay back to backoff.
    #[test]
    fn backoff_doubles_in_a_crash_loop_and_resets_after_a_long_run(
        backoff in 10u64..=2_000,
        extra in prop_oneof![Just(0u64), 0u64..=60_000],
        reset in 1u64..=20_000,
        runs in prop::collection::vec((run_length(), 1i32..=255), 1..24),
    ) {
        let params = SpecParams {
            policy: Policy::Always,
            backoff_ms: Some(backoff),
            backoff_max_extra: Some(extra),
            reset: Reset::Ms(reset),
            graceful_ms: None,
            ttl_ms: None,
            long_units: false,
            warm_standby: false,
            standbys: None,
        };
        let max = backoff + extra;
        let rules = Rules { successes: false, start_failures: false, stops: false };
        let mut sim = Sim::run(&[params], rules, &[])?;
        let mut expected = Vec::new();
        let mut failures = 0u32;
        for (length, code) in &runs {
            let ran = length.ms(reset);
            let (wid, cell_id) = sim.starting.first().cloned().ok_or_else(|| bad("no cell to start"))?;
            sim.drive(&wid, Input::CellStarted { cell_id: cell_id.clone(), pid: 100, pid_start_time: 1 })?;
            sim.advance_time(ran)?;
            let exit = CellExit::from_status(Some(*code), None);
            sim.drive(&wid, Input::CellExited { cell_id, exit })?;
            failures = if ran >= reset { 1 } else { failures + 1 };
            // backoff × 2^(failures-1), capped, spelled out.
            let mut delay = backoff;
            for _ in 1..failures {
                delay = (delay * 2).min(max);
            }
            expected.push(delay.min(max));
            let until_ms = sim
                .journal
                .iter()
                .rev()
                .find_map(|(_, data)| match data {
                    EventData::WorkloadBackoff { until_ms, .. } => Some(*until_ms),
                    _ => None,
                })
                .ok_or_else(|| bad("no backoff after a failed exit"))?;
            if until_ms <= sim.now {
                // A zero delay restarts within the same step.
                prop_assert_eq!(sim.starting.len(), 1);
                continue;
            }
            // Nothing restarts a moment early; at until_ms it does.
            prop_assert!(sim.starting.is_empty());
            sim.advance_time(until_ms - sim.now - 1)?;
            prop_assert!(sim.starting.is_empty(), "restarted before {}", until_ms);
            sim.advance_time(1)?;
            prop_assert_eq!(sim.starting.len(), 1);
        }
        let delays: Vec<u64> = sim
            .journal
            .iter()
            .filter_map(|(_, data)| match data {
                EventData::WorkloadBackoff { delay_ms, .. } => Some(*delay_ms),
                _ => None,
            })
            .collect();
        prop_assert_eq!(delays, expected, "runs {:?}", runs);
        check_backoff_model(&sim)?;
        sim.check_journal()?;
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic cases.
// ---------------------------------------------------------------------------------------------

fn one_workload(toml: &str) -> (Projection, String) {
    let spec = Spec::parse("t.toml", toml).expect("spec parses");
    let mut projection = Projection::default();
    let info = info_for(0, &spec, T0);
    let id = info.id.clone();
    projection.submit(info, spec, T0);
    (projection, id)
}

#[test]
fn a_crash_loop_backs_off_100_200_400ms_then_stays_at_the_cap() {
    let (mut projection, id) =
        one_workload("name='t'\n[cell]\nargv=['false']\n[restart]\npolicy='always'\nbackoff='100ms'\nbackoff_max='500ms'\n");
    let mut now = T0;
    let mut delays = Vec::new();
    for n in 1..=6 {
        let cell_id = format!("{id}.{n}");
        let started = Input::CellStarted { cell_id: cell_id.clone(), pid: 10 + n, pid_start_time: 1 };
        projection.advance(&id, &started, now).unwrap();
        now += 10;
        let exited = Input::CellExited { cell_id, exit: CellExit::from_status(Some(1), None) };
        let decision = projection.advance(&id, &exited, now).unwrap();
        let Some(EventData::WorkloadBackoff { delay_ms, until_ms, .. }) = decision.events.last() else {
            panic!("no backoff: {decision:?}");
        };
        delays.push(*delay_ms);
        now = *until_ms;
        assert_eq!(projection.due(now), vec![id.clone()]);
        projection.advance(&id, &Input::Tick, now).unwrap();
    }
    assert_eq!(delays, [100, 200, 400, 500, 500, 500]);
}

/// Regression: deadlines saturate instead of overflowing when a spec sets an absurd duration
/// (found by this suite: the stop deadline used a plain `+`).
#[test]
fn a_huge_graceful_shutdown_does_not_overflow_the_kill_deadline() {
    let (mut projection, id) = one_workload("name='t'\n[cell]\nargv=['sleep','60']\ngraceful_shutdown='213503982334d'\n");
    let started = Input::CellStarted { cell_id: format!("{id}.1"), pid: 7, pid_start_time: 1 };
    projection.advance(&id, &started, T0).unwrap();
    let decision = projection.advance(&id, &Input::Stop, T0 + 1).unwrap();
    let Some(EventData::WorkloadStopping { kill_at_ms, .. }) = decision.events.first() else {
        panic!("no stopping: {decision:?}");
    };
    assert!(*kill_at_ms > T0 + 1, "kill_at_ms {kill_at_ms} is in the past");
    assert!(
        !decision.effects.iter().any(|e| matches!(e, Effect::SignalCell { signal: StopSignal::Kill, .. })),
        "SIGKILL sent at once: {decision:?}"
    );
}

/// Regression: deadlines saturate instead of overflowing when a spec sets an absurd duration
/// (found by this suite: the backoff deadline used a plain `+`).
#[test]
fn a_huge_backoff_does_not_overflow_the_restart_deadline() {
    let (mut projection, id) = one_workload(
        "name='t'\n[cell]\nargv=['false']\n[restart]\npolicy='always'\nbackoff='213503982334d'\nbackoff_max='213503982334d'\n",
    );
    let cell_id = format!("{id}.1");
    let started = Input::CellStarted { cell_id: cell_id.clone(), pid: 7, pid_start_time: 1 };
    projection.advance(&id, &started, T0).unwrap();
    let exited = Input::CellExited { cell_id, exit: CellExit::from_status(Some(1), None) };
    let decision = projection.advance(&id, &exited, T0 + 1).unwrap();
    assert!(!decision.effects.iter().any(|e| matches!(e, Effect::StartCell { .. })), "restarted at once: {decision:?}");
    let Phase::Backoff { until_ms } = projection.workloads[&id].phase else {
        panic!("not backing off: {:?}", projection.workloads[&id].phase);
    };
    assert!(until_ms > T0 + 1, "until_ms {until_ms} is in the past");
}

fn lost(cell_id: &str) -> Input {
    Input::HostLost { cell_id: cell_id.into(), host: Some("h1".into()), reason: "host h1 is down".into() }
}

fn started(cell_id: &str) -> Input {
    Input::CellStarted { cell_id: cell_id.into(), pid: 7, pid_start_time: 1 }
}

const WARM_ALWAYS: &str =
    "name='t'\n[cell]\nargv=['false']\n[restart]\npolicy='always'\nbackoff='10ms'\n[replication]\nmode='warm-standby'\n";

/// Past its ttl (and not yet ticked), a warm-standby workload does not fail over: the lost
/// cell is an exit, and the workload expires. The simulation never reaches this, since the
/// runtime ticks a due workload before anything else happens to it.
#[test]
fn a_host_loss_past_the_ttl_is_an_exit_even_under_warm_standby() {
    let (mut projection, id) = one_workload(&WARM_ALWAYS.replace("[cell]", "ttl='1s'\n[cell]"));
    projection.advance(&id, &started(&format!("{id}.1")), T0).unwrap();
    let now = T0 + 2_000;
    let mut twin = projection.clone();
    let decision = projection.advance(&id, &lost(&format!("{id}.1")), now).unwrap();
    let exit = CellExit { exit_code: None, signal: None, reason: "host h1 is down".into(), terminal_state: None };
    let exited = twin.advance(&id, &Input::CellExited { cell_id: format!("{id}.1"), exit }, now).unwrap();
    assert_eq!(decision, exited);
    assert_eq!(projection, twin);
    assert_eq!(projection.workloads[&id].phase, Phase::Expired);
    assert_eq!(projection.workloads[&id].failovers, 0);
}

/// Minimal case found by property 8: a restart, then a failover. The failover is not a run,
/// yet `restarts()` drops from 1 to 0 the moment it is decided (and only comes back once the
/// standby's cell runs).
#[test]
fn restarts_do_not_drop_when_a_failover_is_decided() {
    let (mut projection, id) = one_workload(WARM_ALWAYS);
    projection.advance(&id, &started(&format!("{id}.1")), T0).unwrap();
    let exit = CellExit::from_status(Some(1), None);
    projection.advance(&id, &Input::CellExited { cell_id: format!("{id}.1"), exit }, T0 + 10).unwrap();
    projection.advance(&id, &Input::Tick, T0 + 20).unwrap(); // the 10ms backoff is over
    projection.advance(&id, &started(&format!("{id}.2")), T0 + 20).unwrap();
    assert_eq!(projection.workloads[&id].restarts(), 1);
    projection.advance(&id, &lost(&format!("{id}.2")), T0 + 30).unwrap();
    let w = &projection.workloads[&id];
    assert_eq!((w.runs, w.failovers), (2, 1));
    assert_eq!(w.restarts(), 1, "a failover decided is not a restart undone");
}

/// Minimal case: a failover whose cell never ran (its host was lost while it started), then a
/// real restart after a failed run. `restarts()` stays at 0 for good.
#[test]
fn a_restart_after_a_failover_of_a_cell_that_never_ran_counts() {
    let (mut projection, id) = one_workload(WARM_ALWAYS);
    projection.advance(&id, &lost(&format!("{id}.1")), T0).unwrap();
    projection.advance(&id, &started(&format!("{id}.2")), T0).unwrap();
    let exit = CellExit::from_status(Some(1), None);
    projection.advance(&id, &Input::CellExited { cell_id: format!("{id}.2"), exit }, T0 + 10).unwrap();
    projection.advance(&id, &Input::Tick, T0 + 20).unwrap(); // the 10ms backoff is over
    projection.advance(&id, &started(&format!("{id}.3")), T0 + 20).unwrap();
    let w = &projection.workloads[&id];
    assert_eq!((w.runs, w.failovers), (2, 1));
    assert_eq!(w.restarts(), 1, "{id}.3 ran after a backoff: a restart");
}
