//! Property tests of the rollout machines (`warden_core::rollout`): random fleets of 1 to 40 hosts,
//! random policies, and random interleavings of what the agents report — acks, activations that
//! succeed, fail or land on the wrong version, probe results (healthy, sick, flapping), silence,
//! rollbacks that work or not, and reports delivered twice — driven the way the control plane
//! drives them: `Rollout::step_host` for each report, time passing with ticks and `next_actions`
//! carried out, every decided event journaled and applied.
//!
//! Checked after every input: `Rollout::validate` (which includes the budget), the budget again
//! explicitly, waves monotonic, a halt and a completion never undone, a halted rollout dispatches
//! nothing, Converged only with current == target, the soak over and every enforce probe passing,
//! `soak_due_at` never moved once set, a refused or duplicate input changes nothing, a probe fails
//! a host exactly when an enforce probe reached its threshold of consecutive failures (checked
//! against a model), a flapping host never fails, and a carried-out plan is stable. At the end:
//! the journal replayed gives the live state, any prefix of the inputs replayed from scratch gives
//! the state live at that point, and a liveness phase (every agent that is up keeps answering)
//! ends completed, halted, or blocked on a named silent host.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

use warden_core::rollout::{
    legal, next_actions, Action, Decision, HostInput, HostRolloutState, OnFailure, ProbeKind, ProbeMode, ProbeSpec, Rollout,
    RolloutEvent, RolloutPolicy, RolloutStepError, StepError, WaveSize, WaveSpec,
};

/// Where simulated time starts: late 2026, in Unix milliseconds.
const T0: u64 = 1_795_445_345_123;
const TARGET: &str = "v2";
const PREVIOUS: &str = "v1";

type R<T = ()> = Result<T, TestCaseError>;

fn bad(message: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(message.into())
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

fn wave_sizes() -> impl Strategy<Value = WaveSize> {
    prop_oneof![(1u32..=6).prop_map(WaveSize::Count), (1u8..=99).prop_map(WaveSize::Percent)]
}

fn probe_specs() -> impl Strategy<Value = Vec<ProbeSpec>> {
    let probe = (prop_oneof![2 => Just(ProbeMode::Enforce), 1 => Just(ProbeMode::Observe)], 1u32..=4);
    prop::collection::vec(probe, 0..=3).prop_map(|probes| {
        probes
            .into_iter()
            .enumerate()
            .map(|(i, (mode, failure_threshold))| ProbeSpec {
                name: format!("p{i}"),
                kind: ProbeKind::Tcp { address: "127.0.0.1:8080".into() },
                interval_ms: 1_000,
                timeout_ms: 500,
                failure_threshold,
                mode,
                grace_ms: 0,
            })
            .collect()
    })
}

fn policies() -> impl Strategy<Value = RolloutPolicy> {
    (
        prop::collection::vec((wave_sizes(), 0u64..=3_000), 0..=3),
        0u64..=3_000,
        1usize..=6,
        prop_oneof![Just(OnFailure::Halt), Just(OnFailure::Rollback)],
        probe_specs(),
        prop::bool::weighted(0.8),
        5_000u64..=30_000,
    )
        .prop_map(|(waves, last_soak_ms, max_in_flight, on_failure, probes, require_probes, stall_after_ms)| {
            let mut waves: Vec<WaveSpec> = waves.into_iter().map(|(size, soak_ms)| WaveSpec { size, soak_ms }).collect();
            waves.push(WaveSpec { size: WaveSize::Percent(100), soak_ms: last_soak_ms });
            let has_enforce = probes.iter().any(|p| p.mode == ProbeMode::Enforce);
            RolloutPolicy {
                waves,
                max_in_flight,
                on_failure,
                probes,
                require_probes: require_probes && has_enforce,
                stall_after_ms,
                activation_timeout_ms: warden_core::rollout::DEFAULT_ACTIVATION_TIMEOUT_MS,
                activate: Vec::new(),
                rollback: Vec::new(),
                current: Vec::new(),
            }
        })
}

/// How a host's agent behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Agent {
    /// Enforce probes pass; observe probes fail at random (which must not matter).
    Healthy,
    /// Every probe fails `failure_threshold - 1` times, then passes, over and over.
    Flapping,
    /// Each probe result fails with this chance, in percent.
    Sick {
        fail_pct: u8,
    },
    ActivationFails,
    /// Reports activation complete on the wrong version.
    WrongVersion,
    /// Down: never reports anything.
    Silent,
    /// Fails its activation, and its rollback too.
    RollbackFails,
}

/// A fleet of 1 to 40 agents. Faults are drawn per host at a rate drawn per fleet, so that some
/// fleets have none (and complete) and some have many (and halt early).
fn fleets() -> impl Strategy<Value = Vec<Agent>> {
    (0u32..=3).prop_flat_map(|fault_weight| {
        let mut kinds: Vec<(u32, BoxedStrategy<Agent>)> =
            vec![(16, Just(Agent::Healthy).boxed()), (4, Just(Agent::Flapping).boxed())];
        if fault_weight > 0 {
            kinds.push((fault_weight, (10u8..=100).prop_map(|fail_pct| Agent::Sick { fail_pct }).boxed()));
            for kind in [Agent::ActivationFails, Agent::WrongVersion, Agent::Silent, Agent::RollbackFails] {
                kinds.push((fault_weight, Just(kind).boxed()));
            }
        }
        prop::collection::vec(prop::strategy::Union::new_weighted(kinds), 1..=40)
    })
}

#[derive(Clone, Debug)]
enum Op {
    /// The agent of `host` sends what it would send next (or a stray report, if it has none).
    Report { host: Index, probe: u32, coin: u8 },
    /// An earlier report of `host` that was applied is delivered again.
    Redeliver { host: Index, which: Index },
    /// Time passes; with `tick_hosts`, every host is ticked before the plan is carried out.
    Pass { ms: u64, tick_hosts: bool },
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        8 => (any::<Index>(), any::<u32>(), any::<u8>()).prop_map(|(host, probe, coin)| Op::Report { host, probe, coin }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(host, which)| Op::Redeliver { host, which }),
        3 => (0u64..=2_500, any::<bool>()).prop_map(|(ms, tick_hosts)| Op::Pass { ms, tick_hosts }),
    ];
    prop::collection::vec(op, 0..=300)
}

// ---------------------------------------------------------------------------------------------
// The simulated control plane and agents
// ---------------------------------------------------------------------------------------------

/// One input as the control plane saw it: replaying these from a fresh rollout must rebuild it.
#[derive(Clone, Debug)]
enum Logged {
    Host { hostname: String, input: HostInput, now_ms: u64 },
    Plan { now_ms: u64, tick_hosts: bool },
}

struct AgentState {
    kind: Agent,
    next_seq: u64,
    /// Reports that were applied, for redelivery.
    applied: Vec<HostInput>,
    /// Flapping: results sent per probe.
    n_sent: BTreeMap<String, u32>,
    /// The model: consecutive failures per probe since the activation completed.
    consecutive_failures: BTreeMap<String, u32>,
}

struct Sim {
    rollout: Rollout,
    initial: Rollout,
    agents: BTreeMap<String, AgentState>,
    now_ms: u64,
    log: Vec<Logged>,
    journal: Vec<(RolloutEvent, u64)>,
    /// What must never change: each host's soak deadline once set, the wave, halt and completion.
    soak_due: BTreeMap<String, u64>,
    /// The live state after `log[..prefix_len]`, for the prefix replay.
    prefix_len: usize,
    at_prefix: Option<Rollout>,
}

/// What carrying out one logged input did: the events applied, and a host input's outcome.
struct Carried {
    applied: Vec<(RolloutEvent, u64)>,
    result: Option<Result<Decision, RolloutStepError>>,
}

/// Carries out one logged input on `rollout`, as the runtime would. Used live and for replay, so
/// both are the same code.
fn carry_out(rollout: &mut Rollout, logged: &Logged) -> Carried {
    let mut applied = Vec::new();
    let mut record = |rollout: &mut Rollout, event: RolloutEvent, at_ms: u64| {
        rollout.apply(&event, at_ms);
        applied.push((event, at_ms));
    };
    match logged {
        Logged::Host { hostname, input, now_ms } => {
            let result = rollout.step_host(hostname, input, *now_ms);
            if let Ok(decision) = &result {
                for event in decision.events() {
                    record(rollout, RolloutEvent::Host { hostname: hostname.clone(), event: event.clone() }, *now_ms);
                }
            }
            Carried { applied, result: Some(result) }
        }
        Logged::Plan { now_ms, tick_hosts } => {
            if *tick_hosts {
                let names: Vec<String> = rollout.hosts.keys().cloned().collect();
                for hostname in names {
                    let decision =
                        rollout.step_host(&hostname, &HostInput::Tick, *now_ms).expect("a tick is legal in every state");
                    for event in decision.events() {
                        record(rollout, RolloutEvent::Host { hostname: hostname.clone(), event: event.clone() }, *now_ms);
                    }
                }
            }
            for action in next_actions(rollout, *now_ms) {
                if let Action::Dispatch { hostname } = &action {
                    rollout.step_host(hostname, &HostInput::Dispatch, *now_ms).expect("next_actions dispatches within the rules");
                }
                if let Some(event) = action.event() {
                    record(rollout, event, *now_ms);
                }
            }
            Carried { applied, result: None }
        }
    }
}

impl Sim {
    fn new(policy: RolloutPolicy, agents: &[Agent], prefix_len: usize) -> R<Sim> {
        let hosts: Vec<(String, Option<String>)> =
            (0..agents.len()).map(|i| (format!("h{i:02}"), Some(PREVIOUS.to_string()))).collect();
        let rollout = Rollout::new("r-1", "stable", TARGET, policy, &hosts, T0).map_err(|err| bad(err.to_string()))?;
        let agents = hosts
            .iter()
            .zip(agents)
            .map(|((name, _), kind)| {
                let agent = AgentState {
                    kind: *kind,
                    next_seq: 1,
                    applied: Vec::new(),
                    n_sent: BTreeMap::new(),
                    consecutive_failures: BTreeMap::new(),
                };
                (name.clone(), agent)
            })
            .collect();
        Ok(Sim {
            initial: rollout.clone(),
            rollout,
            agents,
            now_ms: T0,
            log: Vec::new(),
            journal: Vec::new(),
            soak_due: BTreeMap::new(),
            prefix_len,
            at_prefix: None,
        })
    }

    fn hostname(&self, index: &Index) -> String {
        self.rollout.hosts.keys().nth(index.index(self.rollout.hosts.len())).expect("in range").clone()
    }

    /// What `hostname`'s agent sends next, given the state it was handed; `None` if it is down.
    fn next_report(&mut self, hostname: &str, probe: u32, coin: u8) -> Option<HostInput> {
        use HostRolloutState as S;
        let host = &self.rollout.hosts[hostname];
        let policy = &self.rollout.policy;
        let agent = self.agents.get_mut(hostname).expect("every host has an agent");
        if agent.kind == Agent::Silent {
            return None;
        }
        let seq = agent.next_seq;
        agent.next_seq += 1;
        let fails_activation = matches!(agent.kind, Agent::ActivationFails | Agent::RollbackFails);
        let input = match host.state {
            // Stray reports, which must be refused without changing anything.
            S::Pending => HostInput::Ack { seq, current: None },
            S::Failed => HostInput::RollbackStarted { seq },
            S::Converged | S::Reverted | S::Soaking if policy.probes.is_empty() => HostInput::ActivationStarted { seq },
            S::Dispatched => HostInput::Ack { seq, current: None },
            S::Acked if fails_activation => HostInput::ActivationFailed { seq, error: "switch exited 1".into() },
            S::Acked => HostInput::ActivationStarted { seq },
            S::Activating if agent.kind == Agent::WrongVersion => HostInput::ActivationCompleted { seq, current: "v3".into() },
            S::Activating => HostInput::ActivationCompleted { seq, current: TARGET.into() },
            S::Soaking | S::Converged | S::Reverted => {
                let spec = &policy.probes[probe as usize % policy.probes.len()];
                let sent = agent.n_sent.entry(spec.name.clone()).or_default();
                *sent += 1;
                let passed = match agent.kind {
                    Agent::Healthy => spec.mode == ProbeMode::Enforce || coin >= 128,
                    Agent::Flapping => (*sent).is_multiple_of(spec.failure_threshold),
                    Agent::Sick { fail_pct } => u32::from(coin) * 100 >= u32::from(fail_pct) * 256,
                    _ => true,
                };
                HostInput::ProbeResult { seq, probe: spec.name.clone(), passed, mode: spec.mode, at: self.now_ms }
            }
            S::Reverting if coin.is_multiple_of(3) => HostInput::RollbackStarted { seq },
            S::Reverting if agent.kind == Agent::RollbackFails => {
                HostInput::RollbackFailed { seq, error: "switch exited 1".into() }
            }
            S::Reverting => HostInput::RollbackCompleted { seq, current: host.previous.clone() },
        };
        Some(input)
    }

    fn report(&mut self, hostname: &str, input: HostInput) -> R {
        let before = self.rollout.clone();
        let state = before.hosts[hostname].state;
        let logged = Logged::Host { hostname: hostname.into(), input: input.clone(), now_ms: self.now_ms };
        let Carried { applied: events, result } = self.run(logged)?;
        let result = result.expect("a host input has an outcome");
        let host = &self.rollout.hosts[hostname];
        match result {
            Ok(Decision::Events(_)) => {
                prop_assert!(legal(state, input.kind()), "{} × {} was accepted", state, input.kind());
                let agent = self.agents.get_mut(hostname).expect("every host has an agent");
                agent.applied.push(input.clone());
                match &input {
                    HostInput::ActivationCompleted { .. } => agent.consecutive_failures.clear(),
                    HostInput::ProbeResult { probe, passed, mode, .. } => {
                        let model = agent.consecutive_failures.entry(probe.clone()).or_default();
                        *model = if *passed { 0 } else { *model + 1 };
                        let threshold = before.policy.probe(probe).expect("known probe").failure_threshold;
                        let must_fail = *mode == ProbeMode::Enforce && *model >= threshold;
                        prop_assert_eq!(
                            host.state == HostRolloutState::Failed,
                            must_fail,
                            "{}: probe {} ({:?}) at {} consecutive failures, threshold {}: host is {}",
                            hostname,
                            probe,
                            mode,
                            model,
                            threshold,
                            host.state
                        );
                    }
                    _ => {}
                }
                prop_assert!(!events.is_empty(), "an accepted report is journaled");
            }
            Ok(Decision::Duplicate { seq, last_event_seq }) => {
                return Err(bad(format!("{hostname}: fresh seq {seq} taken for a duplicate (last {last_event_seq})")));
            }
            Err(RolloutStepError::Host(StepError::Illegal { state: s, input: kind, .. })) => {
                prop_assert_eq!((s, kind), (state, input.kind()));
                prop_assert!(!legal(state, kind), "{} × {} refused though legal", state, kind);
                prop_assert_eq!(&self.rollout, &before, "a refused report changes nothing");
            }
            Err(RolloutStepError::Host(StepError::UnknownProbe { .. })) => {
                return Err(bad(format!("{hostname}: the agents only report the policy's probes: {input:?}")));
            }
            Err(other) => return Err(bad(format!("{hostname}: {input:?}: {other}"))),
        }
        Ok(())
    }

    fn redeliver(&mut self, hostname: &str, which: &Index) -> R {
        let applied = &self.agents[hostname].applied;
        if applied.is_empty() {
            return Ok(());
        }
        let input = applied[which.index(applied.len())].clone();
        let before = self.rollout.clone();
        let logged = Logged::Host { hostname: hostname.into(), input: input.clone(), now_ms: self.now_ms };
        let result = self.run(logged)?.result;
        let seq = input.seq().expect("agents' reports carry a seq");
        let last_event_seq = before.hosts[hostname].last_event_seq;
        prop_assert_eq!(result, Some(Ok(Decision::Duplicate { seq, last_event_seq })));
        prop_assert_eq!(&self.rollout, &before, "a duplicate changes nothing");
        Ok(())
    }

    fn pass(&mut self, ms: u64, tick_hosts: bool) -> R {
        self.now_ms += ms;
        self.run(Logged::Plan { now_ms: self.now_ms, tick_hosts })?;
        // A plan carried out is stable: asked again at once, nothing but reports.
        let again = next_actions(&self.rollout, self.now_ms);
        prop_assert!(again.iter().all(|a| matches!(a, Action::Blocked { .. })), "not stable: {:?}", again);
        Ok(())
    }

    /// Carries out one input live, journals what it applied, and checks every invariant.
    fn run(&mut self, logged: Logged) -> R<Carried> {
        let before = self.rollout.clone();
        let carried = carry_out(&mut self.rollout, &logged);
        self.journal.extend(carried.applied.iter().cloned());
        self.log.push(logged);
        self.check(&before)?;
        if self.log.len() == self.prefix_len {
            self.at_prefix = Some(self.rollout.clone());
        }
        Ok(carried)
    }

    fn check(&mut self, before: &Rollout) -> R {
        let r = &self.rollout;
        r.validate().map_err(|why| bad(format!("invalid rollout: {why}")))?;
        prop_assert!(r.n_in_flight() <= r.policy.max_in_flight, "{} in flight", r.n_in_flight());
        prop_assert!(r.wave >= before.wave, "wave went back from {} to {}", before.wave, r.wave);
        prop_assert!(before.halted.is_none() || r.halted == before.halted, "a halt was undone or changed");
        prop_assert!(!before.completed || r.completed, "a completion was undone");
        prop_assert!(!before.quarantined || r.quarantined, "a quarantine was undone");
        for (name, host) in &r.hosts {
            let was = &before.hosts[name];
            if before.halted.is_some() && was.state == HostRolloutState::Pending {
                prop_assert_eq!(host.state, HostRolloutState::Pending, "{} dispatched after the halt", name);
            }
            if let Some(due) = host.soak_due_at {
                let first = *self.soak_due.entry(name.clone()).or_insert(due);
                prop_assert_eq!(due, first, "{}: soak_due_at moved", name);
            }
            prop_assert!(was.soak_due_at.is_none() || host.soak_due_at == was.soak_due_at, "{}: soak_due_at unset", name);
            prop_assert!(host.last_event_seq >= was.last_event_seq, "{}: last_event_seq went back", name);
            if host.state == HostRolloutState::Converged {
                prop_assert_eq!(host.current.as_deref(), Some(TARGET), "{} converged off target", name);
                let due = host.soak_due_at.ok_or_else(|| bad(format!("{name} converged without a soak")))?;
                prop_assert!(host.converged_at.is_some_and(|at| at >= due), "{} converged before its soak ended", name);
                prop_assert!(host.enforce_probes_passing(&r.policy), "{} converged with probes {:?}", name, host.probes);
                for spec in r.policy.enforce_probes() {
                    let last_pass_at = host.probes.get(&spec.name).and_then(|p| p.last_pass_at);
                    prop_assert!(
                        last_pass_at >= Some(due),
                        "{} converged on a pass of {} from before its soak ended",
                        name,
                        spec.name
                    );
                }
                prop_assert!(!r.policy.require_probes || r.policy.enforce_probes().count() > 0);
            }
            if self.agents[name].kind == Agent::Flapping {
                prop_assert!(!host.state.is_failure(), "flapping {} failed: {:?}", name, host.failure);
            }
            if self.agents[name].kind == Agent::Silent {
                prop_assert!(host.last_event_seq == 0, "silent {} reported", name);
            }
        }
        Ok(())
    }

    fn step(&mut self, op: &Op) -> R {
        match op {
            Op::Report { host, probe, coin } => {
                let hostname = self.hostname(host);
                match self.next_report(&hostname, *probe, *coin) {
                    Some(input) => self.report(&hostname, input),
                    None => Ok(()),
                }
            }
            Op::Redeliver { host, which } => {
                let hostname = self.hostname(host);
                self.redeliver(&hostname, which)
            }
            Op::Pass { ms, tick_hosts } => self.pass(*ms, *tick_hosts),
        }
    }

    /// Every agent that is up answers whatever it was handed, round after round, with time
    /// passing beyond every soak and every stall, and every probe reported each round, until the
    /// hosts' states have not changed for a while.
    fn settle(&mut self) -> R {
        let max_soak_ms = self.rollout.policy.waves.iter().map(|w| w.soak_ms).max().unwrap_or(0);
        let step_ms = max_soak_ms.max(self.rollout.policy.stall_after_ms) + 1;
        let n_probes = self.rollout.policy.probes.len().max(1) as u32;
        let shape = |r: &Rollout| -> (Vec<HostRolloutState>, usize, bool, bool) {
            (r.hosts.values().map(|h| h.state).collect(), r.wave, r.halted.is_some(), r.completed)
        };
        let (mut last_shape, mut unchanged_rounds) = (shape(&self.rollout), 0);
        for round in 0u32.. {
            self.pass(step_ms, round % 2 == 0)?;
            let names: Vec<String> = self.rollout.hosts.keys().cloned().collect();
            for (i, name) in names.iter().enumerate() {
                for probe in 0..n_probes {
                    let state = self.rollout.hosts[name].state;
                    let reports = state.is_in_flight() || state == HostRolloutState::Reverting;
                    if !reports || (probe > 0 && state != HostRolloutState::Soaking) {
                        break;
                    }
                    let coin = (round * 37 + i as u32 * 11 + probe * 5) as u8;
                    if let Some(input) = self.next_report(name, probe, coin) {
                        self.report(name, input)?;
                    }
                }
            }
            self.pass(0, false)?;
            let now_shape = shape(&self.rollout);
            unchanged_rounds = if now_shape == last_shape { unchanged_rounds + 1 } else { 0 };
            last_shape = now_shape;
            if unchanged_rounds == 20 {
                return Ok(());
            }
            prop_assert!(round < 3_000, "not settled after {} rounds", round);
        }
        Ok(())
    }

    /// Settled, a rollout is completed, or halted by a failure (with every failed host ordered
    /// back under `rollback`), or waiting on hosts of its wave — never on a healthy one — each of
    /// which is reported as blocking (or, Pending, waits for a budget those hold).
    fn check_settled(&self) -> R {
        let r = &self.rollout;
        let blocked: Vec<String> = next_actions(r, self.now_ms)
            .into_iter()
            .filter_map(|a| match a {
                Action::Blocked { hostname, .. } => Some(hostname),
                _ => None,
            })
            .collect();
        if r.completed {
            prop_assert!(r.hosts.values().all(|h| h.state == HostRolloutState::Converged));
            return Ok(());
        }
        for (name, host) in &r.hosts {
            let kind = self.agents[name].kind;
            if host.state.is_in_flight() {
                prop_assert!(kind != Agent::Healthy, "healthy {} stuck {}", name, host.state);
                prop_assert!(blocked.contains(name), "{} ({:?}) stuck {} and not reported", name, kind, host.state);
            }
        }
        if let Some(reason) = &r.halted {
            prop_assert!(r.hosts.values().any(|h| h.state.is_failure()), "halted ({}) with no failure", reason);
            if r.policy.on_failure == OnFailure::Rollback {
                prop_assert!(r.quarantined, "rollback policy, halted, not quarantined");
                for (name, host) in &r.hosts {
                    prop_assert!(host.state != HostRolloutState::Failed || host.n_rollbacks == 1, "{} never ordered back", name);
                    match host.state {
                        HostRolloutState::Reverted => prop_assert_eq!(host.current.as_deref(), Some(PREVIOUS)),
                        HostRolloutState::Failed => prop_assert_eq!(self.agents[name].kind, Agent::RollbackFails),
                        state => prop_assert!(!state.is_failure(), "{} is {}: its rollback never ended", name, state),
                    }
                }
            }
            return Ok(());
        }
        prop_assert!(r.hosts.values().all(|h| !h.state.is_failure()), "a failure and no halt");
        let waiting: Vec<&String> = r.waves[r.wave].iter().filter(|n| r.hosts[*n].state != HostRolloutState::Converged).collect();
        prop_assert!(!waiting.is_empty(), "stuck with every host of wave {} converged", r.wave);
        for name in waiting {
            if r.hosts[name].state == HostRolloutState::Pending {
                prop_assert_eq!(r.n_in_flight(), r.policy.max_in_flight, "{} pending with budget free", name);
            }
        }
        Ok(())
    }

    /// The journal replayed into the rollout as it started, and the inputs replayed from scratch,
    /// give the live state; so does any prefix of the inputs.
    fn check_replays(&self) -> R {
        let mut from_journal = self.initial.clone();
        for (event, at_ms) in &self.journal {
            from_journal.apply(event, *at_ms);
        }
        prop_assert_eq!(&from_journal, &self.rollout, "journal replay differs");
        let replay = |log: &[Logged]| {
            let mut rollout = self.initial.clone();
            for logged in log {
                carry_out(&mut rollout, logged);
            }
            rollout
        };
        prop_assert_eq!(&replay(&self.log), &self.rollout, "input replay differs");
        let at_prefix = if self.prefix_len == 0 { Some(&self.initial) } else { self.at_prefix.as_ref() };
        if let Some(at_prefix) = at_prefix {
            prop_assert_eq!(
                &replay(&self.log[..self.prefix_len]),
                at_prefix,
                "prefix of {} inputs replays differently",
                self.prefix_len
            );
        }
        let json = serde_json::to_string(&self.rollout).map_err(|err| bad(err.to_string()))?;
        let back: Rollout = serde_json::from_str(&json).map_err(|err| bad(err.to_string()))?;
        prop_assert_eq!(&back, &self.rollout, "JSON round trip differs");
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    /// Every invariant after every input, replays agree, and the rollout settles into one of the
    /// three honest ends: completed, halted by a failure, or waiting on a named silent host.
    #[test]
    fn rollouts_keep_their_invariants_under_any_interleaving(
        policy in policies(),
        agents in fleets(),
        ops in ops(),
        prefix in any::<Index>(),
    ) {
        let mut sim = Sim::new(policy, &agents, prefix.index(ops.len() + 1))?;
        for op in &ops {
            sim.step(op)?;
        }
        sim.check_replays()?;
        sim.settle()?;
        sim.check_settled()?;
        sim.check_replays()?;
    }

    /// With every agent up and healthy (observe probes failing at random), every rollout completes.
    #[test]
    fn a_healthy_fleet_always_completes(
        policy in policies(),
        agents in prop::collection::vec(Just(Agent::Healthy), 1..=40),
        ops in ops(),
    ) {
        let mut sim = Sim::new(policy, &agents, 0)?;
        for op in &ops {
            sim.step(op)?;
        }
        sim.settle()?;
        prop_assert!(sim.rollout.completed, "not completed: wave {}, halted {:?}", sim.rollout.wave, sim.rollout.halted);
        prop_assert!(sim.rollout.halted.is_none());
    }

    /// A probe that fails fewer than `failure_threshold` times in a row between passes never fails
    /// the host, however long it flaps; after the soak, its next pass converges the host.
    #[test]
    fn a_flapping_probe_below_threshold_never_fails_a_host(
        failure_threshold in 1u32..=6,
        runs in prop::collection::vec(0u32..6, 1..=40),
        soak_ms in 0u64..=10_000,
    ) {
        let policy = RolloutPolicy {
            waves: vec![WaveSpec { size: WaveSize::Percent(100), soak_ms }],
            max_in_flight: 1,
            on_failure: OnFailure::Rollback,
            probes: probe_specs_with_threshold(failure_threshold),
            require_probes: true,
            stall_after_ms: 60_000,
            activation_timeout_ms: warden_core::rollout::DEFAULT_ACTIVATION_TIMEOUT_MS,
            activate: Vec::new(),
            rollback: Vec::new(),
                current: Vec::new(),
        };
        let mut sim = Sim::new(policy, &[Agent::Healthy], 0)?;
        sim.pass(0, false)?;
        for input in [HostInput::Ack { seq: 1, current: None }, HostInput::ActivationStarted { seq: 2 }] {
            sim.report("h00", input)?;
        }
        sim.report("h00", HostInput::ActivationCompleted { seq: 3, current: TARGET.into() })?;
        let mut seq = 3;
        let mut probe = |sim: &mut Sim, passed: bool| {
            seq += 1;
            let input = HostInput::ProbeResult { seq, probe: "p0".into(), passed, mode: ProbeMode::Enforce, at: sim.now_ms };
            sim.report("h00", input)
        };
        for run in runs {
            if sim.rollout.hosts["h00"].state == HostRolloutState::Converged {
                break;
            }
            for _ in 0..run % failure_threshold {
                probe(&mut sim, false)?;
                prop_assert_eq!(sim.rollout.hosts["h00"].state, HostRolloutState::Soaking);
            }
            probe(&mut sim, true)?;
            sim.now_ms += 97;
        }
        sim.now_ms += soak_ms;
        if sim.rollout.hosts["h00"].state == HostRolloutState::Soaking {
            probe(&mut sim, true)?;
        }
        prop_assert_eq!(sim.rollout.hosts["h00"].state, HostRolloutState::Converged);
    }

    /// Waves cover every host exactly once, in order; the canary is never empty, and each wave
    /// reaches at least as far as its size asks.
    #[test]
    fn waves_resolve_to_a_partition_of_the_hosts(policy in policies(), n_hosts in 1usize..=40) {
        let ranges = policy.resolve_waves(n_hosts);
        prop_assert_eq!(ranges.len(), policy.waves.len());
        prop_assert_eq!(ranges[0].start, 0);
        prop_assert!(!ranges[0].is_empty(), "an empty canary");
        prop_assert_eq!(ranges.last().map(|r| r.end), Some(n_hosts));
        for (i, pair) in ranges.windows(2).enumerate() {
            prop_assert_eq!(pair[0].end, pair[1].start, "gap or overlap after wave {}", i);
        }
        for (range, wave) in ranges.iter().zip(&policy.waves) {
            prop_assert!(range.end >= wave.size.cumulative_hosts(n_hosts), "{:?} short of {}", range, wave.size);
        }
    }
}

fn probe_specs_with_threshold(failure_threshold: u32) -> Vec<ProbeSpec> {
    vec![ProbeSpec {
        name: "p0".into(),
        kind: ProbeKind::Exec { argv: vec!["/bin/true".into()] },
        interval_ms: 1_000,
        timeout_ms: 500,
        failure_threshold,
        mode: ProbeMode::Enforce,
        grace_ms: 0,
    }]
}
