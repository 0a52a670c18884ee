use super::*;

const T0: u64 = 1_795_445_345_123;

fn policy(soak_ms: u64, on_failure: OnFailure) -> RolloutPolicy {
    RolloutPolicy {
        waves: vec![
            WaveSpec { size: WaveSize::Count(1), soak_ms },
            WaveSpec { size: WaveSize::Percent(50), soak_ms },
            WaveSpec { size: WaveSize::Percent(100), soak_ms },
        ],
        max_in_flight: 2,
        on_failure,
        probes: vec![
            ProbeSpec {
                name: "health".into(),
                kind: ProbeKind::Http { url: "http://127.0.0.1:8080/healthz".into(), expect_status: 200 },
                interval_ms: 1_000,
                timeout_ms: 500,
                failure_threshold: 3,
                mode: ProbeMode::Enforce,
                grace_ms: 0,
            },
            ProbeSpec {
                name: "latency".into(),
                kind: ProbeKind::Exec { argv: vec!["/bin/check-latency".into()] },
                interval_ms: 1_000,
                timeout_ms: 500,
                failure_threshold: 1,
                mode: ProbeMode::Observe,
                grace_ms: 0,
            },
        ],
        require_probes: true,
        stall_after_ms: 60_000,
        activation_timeout_ms: DEFAULT_ACTIVATION_TIMEOUT_MS,
        activate: Vec::new(),
        rollback: Vec::new(),
        current: Vec::new(),
    }
}

fn probe(seq: u64, passed: bool, at: u64) -> HostInput {
    HostInput::ProbeResult { seq, probe: "health".into(), passed, mode: ProbeMode::Enforce, at }
}

fn host() -> HostRolloutSnapshot {
    HostRolloutSnapshot::pending("r-1", "a", "stable", "v2", Some("v1".into()), 0)
}

/// Steps and applies, panicking on an error: the path to a state.
fn feed(host: &mut HostRolloutSnapshot, input: HostInput, now_ms: u64, policy: &RolloutPolicy) {
    let decision = host.step(&input, now_ms, policy).unwrap_or_else(|err| panic!("{input:?}: {err}"));
    for event in decision.events() {
        host.apply(event, now_ms);
    }
}

/// A host brought to `state` by legal inputs, with `last_event_seq` 10 × the number of reports.
fn host_in(state: HostRolloutState, policy: &RolloutPolicy) -> HostRolloutSnapshot {
    use HostRolloutState as S;
    let mut h = host();
    let path: &[HostInput] = match state {
        S::Pending => &[],
        S::Dispatched => &[HostInput::Dispatch],
        S::Acked => &[HostInput::Dispatch, HostInput::Ack { seq: 10, current: None }],
        S::Activating | S::Soaking | S::Converged | S::Failed | S::Reverting | S::Reverted => {
            &[HostInput::Dispatch, HostInput::Ack { seq: 10, current: None }, HostInput::ActivationStarted { seq: 20 }]
        }
    };
    for input in path {
        feed(&mut h, input.clone(), T0, policy);
    }
    let complete = HostInput::ActivationCompleted { seq: 30, current: "v2".into() };
    let fail = HostInput::ActivationFailed { seq: 30, error: "switch exited 1".into() };
    let extra: Vec<HostInput> = match state {
        S::Soaking => vec![complete],
        S::Converged => vec![complete, probe(40, true, T0 + 1_000)],
        S::Failed => vec![fail],
        S::Reverting => vec![fail, HostInput::RollBack],
        S::Reverted => vec![fail, HostInput::RollBack, HostInput::RollbackCompleted { seq: 40, current: Some("v1".into()) }],
        _ => vec![],
    };
    for input in extra {
        feed(&mut h, input, T0 + 1_000, policy);
    }
    assert_eq!(h.state, state);
    h
}

fn sample(kind: InputKind, seq: u64) -> HostInput {
    match kind {
        InputKind::Dispatch => HostInput::Dispatch,
        InputKind::Ack => HostInput::Ack { seq, current: None },
        InputKind::ActivationStarted => HostInput::ActivationStarted { seq },
        InputKind::ActivationCompleted => HostInput::ActivationCompleted { seq, current: "v2".into() },
        InputKind::ActivationFailed => HostInput::ActivationFailed { seq, error: "boom".into() },
        InputKind::ProbeResult => probe(seq, true, T0),
        InputKind::Tick => HostInput::Tick,
        InputKind::RollBack => HostInput::RollBack,
        InputKind::RollbackStarted => HostInput::RollbackStarted { seq },
        InputKind::RollbackCompleted => HostInput::RollbackCompleted { seq, current: Some("v1".into()) },
        InputKind::RollbackFailed => HostInput::RollbackFailed { seq, error: "boom".into() },
    }
}

#[test]
fn step_agrees_with_the_legality_table_for_every_state_and_input() {
    let policy = policy(0, OnFailure::Rollback);
    for (row, state) in HostRolloutState::ALL.into_iter().enumerate() {
        assert_eq!(state as usize, row);
        let h = host_in(state, &policy);
        for (column, kind) in InputKind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, column);
            let input = sample(kind, h.last_event_seq + 1);
            let before = h.clone();
            let result = h.step(&input, T0 + 2_000, &policy);
            assert_eq!(h, before, "step never changes the host");
            match (legal(state, kind), result) {
                (true, Ok(Decision::Events(events))) => {
                    let mut after = h.clone();
                    events.iter().for_each(|e| after.apply(e, T0 + 2_000));
                    assert_eq!(after.validate(), Ok(()));
                }
                (false, Err(StepError::Illegal { state: s, input: k, .. })) => assert_eq!((s, k), (state, kind)),
                (legal, other) => panic!("{state} × {kind}: table says legal = {legal}, step gave {other:?}"),
            }
            // A report at or below last_event_seq is a duplicate in every state.
            if let Some(seq) = sample(kind, h.last_event_seq).seq() {
                let duplicate = h.step(&sample(kind, seq), T0 + 2_000, &policy);
                assert_eq!(duplicate, Ok(Decision::Duplicate { seq, last_event_seq: h.last_event_seq }), "{state} × {kind}");
            }
        }
    }
}

#[test]
fn soak_starts_at_the_hosts_activation_and_needs_a_pass_after_it() {
    let policy = policy(60_000, OnFailure::Halt);
    let mut h = host();
    feed(&mut h, HostInput::Dispatch, T0, &policy);
    feed(&mut h, HostInput::Ack { seq: 1, current: None }, T0 + 10, &policy);
    feed(&mut h, HostInput::ActivationStarted { seq: 2 }, T0 + 20, &policy);
    // A slow activation: the soak is not eaten by it (the origin started the clock at open).
    let done = T0 + 500_000;
    feed(&mut h, HostInput::ActivationCompleted { seq: 3, current: "v2".into() }, done, &policy);
    assert_eq!(h.soak_due_at, Some(done + 60_000));
    feed(&mut h, probe(4, true, done + 1_000), done + 1_000, &policy);
    assert_eq!(h.step(&HostInput::Tick, done + 59_999, &policy), Ok(Decision::Events(vec![])));
    // Due, but the only pass is older than the soak's end: wait for fresh evidence.
    assert_eq!(h.step(&HostInput::Tick, done + 60_000, &policy), Ok(Decision::Events(vec![])));
    let decision = h.step(&probe(5, true, done + 61_000), done + 61_000, &policy).unwrap();
    assert_eq!(decision.events().last(), Some(&HostEvent::Converged));
}

#[test]
fn the_hosts_own_word_on_what_it_runs_is_where_a_rollback_returns_it() {
    let policy = policy(0, OnFailure::Rollback);
    let mut h = host();
    feed(&mut h, HostInput::Dispatch, T0, &policy);
    assert_eq!(h.previous.as_deref(), Some("v1"), "the control plane's idea, until the host says");
    feed(&mut h, HostInput::Ack { seq: 1, current: Some("v0-hotfix".into()) }, T0 + 10, &policy);
    assert_eq!((h.current.as_deref(), h.previous.as_deref()), (Some("v0-hotfix"), Some("v0-hotfix")));
    feed(&mut h, HostInput::ActivationStarted { seq: 2 }, T0 + 20, &policy);
    // The activation command exited 0, but the host says it still runs the old system.
    feed(&mut h, HostInput::ActivationCompleted { seq: 3, current: "v0-hotfix".into() }, T0 + 30, &policy);
    assert_eq!(h.state, HostRolloutState::Failed);
    assert!(h.failure.as_deref().unwrap().contains("not the target"), "{:?}", h.failure);
    feed(&mut h, HostInput::RollBack, T0 + 40, &policy);
    feed(&mut h, HostInput::RollbackStarted { seq: 4 }, T0 + 50, &policy);
    feed(&mut h, HostInput::RollbackCompleted { seq: 5, current: Some("v0-hotfix".into()) }, T0 + 60, &policy);
    assert_eq!(h.state, HostRolloutState::Reverted);
}

#[test]
fn failures_within_a_probes_grace_after_activation_do_not_count() {
    let mut policy = policy(60_000, OnFailure::Halt);
    policy.probes[0].grace_ms = 5_000;
    let mut h = host();
    feed(&mut h, HostInput::Dispatch, T0, &policy);
    feed(&mut h, HostInput::Ack { seq: 1, current: None }, T0, &policy);
    feed(&mut h, HostInput::ActivationStarted { seq: 2 }, T0, &policy);
    feed(&mut h, HostInput::ActivationCompleted { seq: 3, current: "v2".into() }, T0, &policy);
    // Still starting: four failures (threshold 3) inside the grace are recorded, not counted.
    for (i, seq) in (4..8).enumerate() {
        let now = T0 + 1_000 * (i as u64 + 1);
        let decision = h.step(&probe(seq, false, now), now, &policy).unwrap();
        assert!(matches!(decision.events(), [HostEvent::ProbeRecorded { in_grace: true, .. }]), "{decision:?}");
        feed(&mut h, probe(seq, false, now), now, &policy);
    }
    assert_eq!(h.state, HostRolloutState::Soaking);
    assert_eq!((h.probes["health"].n_failures, h.probes["health"].consecutive_failures), (4, 0));
    // After it, three in a row fail the host as always.
    for seq in 8..11 {
        feed(&mut h, probe(seq, false, T0 + 5_000 + seq), T0 + 5_000 + seq, &policy);
    }
    assert_eq!(h.state, HostRolloutState::Failed);
}

#[test]
fn a_pass_clears_the_failure_count_so_a_flapping_probe_does_not_fail_the_host() {
    let policy = policy(60_000, OnFailure::Halt);
    let mut h = host_in(HostRolloutState::Soaking, &policy);
    let mut seq = h.last_event_seq;
    for passed in [false, false, true, false, false, true, false, false] {
        seq += 1;
        feed(&mut h, probe(seq, passed, T0), T0 + 2_000, &policy);
        assert_eq!(h.state, HostRolloutState::Soaking, "two failures in a row, threshold 3");
    }
    assert_eq!((h.probes["health"].consecutive_failures, h.probes["health"].n_failures), (2, 6));
    feed(&mut h, probe(seq + 1, false, T0), T0 + 2_000, &policy);
    assert_eq!(h.state, HostRolloutState::Failed);
    assert!(h.failure.as_deref().unwrap().contains("3 times in a row"), "{:?}", h.failure);
}

#[test]
fn observe_probes_never_fail_a_host_and_unknown_probes_are_refused() {
    let policy = policy(0, OnFailure::Halt);
    let mut h = host_in(HostRolloutState::Soaking, &policy);
    for seq in 31..40 {
        let latency = HostInput::ProbeResult { seq, probe: "latency".into(), passed: false, mode: ProbeMode::Observe, at: T0 };
        feed(&mut h, latency, T0 + 2_000, &policy);
    }
    assert_eq!((h.state, h.probes["latency"].consecutive_failures), (HostRolloutState::Soaking, 9));
    let wrong_mode = HostInput::ProbeResult { seq: 40, probe: "latency".into(), passed: false, mode: ProbeMode::Enforce, at: T0 };
    assert!(matches!(h.step(&wrong_mode, T0, &policy), Err(StepError::UnknownProbe { .. })));
}

#[test]
fn no_enforce_probe_is_refused_unless_the_policy_says_so_and_never_converges_vacuously() {
    let mut p = policy(0, OnFailure::Halt);
    p.probes.retain(|probe| probe.mode == ProbeMode::Observe);
    assert!(p.check().unwrap_err().0.contains("require_probes = false"));
    // Even a policy that skipped `check` does not converge on no evidence.
    let h = host_in(HostRolloutState::Soaking, &p);
    assert_eq!(h.step(&HostInput::Tick, T0 + 5_000, &p), Ok(Decision::Events(vec![])));
    p.require_probes = false;
    assert_eq!(p.check(), Ok(()));
    assert_eq!(h.step(&HostInput::Tick, T0 + 5_000, &p), Ok(Decision::Events(vec![HostEvent::Converged])));
}

#[test]
fn a_wrong_current_after_activation_or_rollback_is_a_failure() {
    let policy = policy(0, OnFailure::Rollback);
    let mut h = host_in(HostRolloutState::Activating, &policy);
    feed(&mut h, HostInput::ActivationCompleted { seq: 30, current: "v3".into() }, T0 + 5, &policy);
    assert_eq!((h.state, h.current.as_deref(), h.soak_due_at), (HostRolloutState::Failed, Some("v3"), None));
    feed(&mut h, HostInput::RollBack, T0 + 6, &policy);
    feed(&mut h, HostInput::RollbackCompleted { seq: 31, current: Some("v3".into()) }, T0 + 7, &policy);
    assert_eq!((h.state, h.n_rollbacks), (HostRolloutState::Failed, 1));
    assert!(h.failure.as_deref().unwrap().starts_with("rollback left the host on v3, not v1"));
}

fn hosts(n: usize) -> Vec<(String, Option<String>)> {
    (0..n).map(|i| (format!("h{i:02}"), Some("v1".to_string()))).collect()
}

/// Applies every action's event, as the runtime would.
fn carry_out(rollout: &mut Rollout, actions: &[Action], now_ms: u64) {
    for action in actions {
        if let Action::Dispatch { hostname } = action {
            rollout.step_host(hostname, &HostInput::Dispatch, now_ms).expect("next_actions dispatches within the rules");
        }
        if let Some(event) = action.event() {
            rollout.apply(&event, now_ms);
        }
    }
}

fn report(rollout: &mut Rollout, hostname: &str, input: HostInput, now_ms: u64) {
    let decision = rollout.step_host(hostname, &input, now_ms).unwrap_or_else(|err| panic!("{input:?}: {err}"));
    for event in decision.events() {
        rollout.apply(&RolloutEvent::Host { hostname: hostname.into(), event: event.clone() }, now_ms);
    }
}

fn activate(rollout: &mut Rollout, hostname: &str, now_ms: u64) {
    report(rollout, hostname, HostInput::Ack { seq: 1, current: None }, now_ms);
    report(rollout, hostname, HostInput::ActivationStarted { seq: 2 }, now_ms);
    report(rollout, hostname, HostInput::ActivationCompleted { seq: 3, current: "v2".into() }, now_ms);
}

fn dispatch(name: &str) -> Action {
    Action::Dispatch { hostname: name.into() }
}

#[test]
fn waves_advance_on_convergence_within_the_budget() {
    let mut r = Rollout::new("r-1", "stable", "v2", policy(1_000, OnFailure::Halt), &hosts(5), T0).unwrap();
    assert_eq!(r.waves, [vec!["h00"], vec!["h01", "h02"], vec!["h03", "h04"]]);
    let actions = next_actions(&r, T0);
    assert_eq!(actions, [dispatch("h00")], "the canary alone");
    carry_out(&mut r, &actions, T0);
    assert_eq!(next_actions(&r, T0), [], "a plan carried out is stable");
    assert!(matches!(r.step_host("h01", &HostInput::Dispatch, T0), Err(RolloutStepError::NotCurrentWave { .. })));
    activate(&mut r, "h00", T0 + 10);
    report(&mut r, "h00", probe(4, true, T0 + 1_010), T0 + 1_010);
    assert_eq!(r.hosts["h00"].state, HostRolloutState::Converged);
    let actions = next_actions(&r, T0 + 1_010);
    assert_eq!(actions, [Action::AdvanceWave { wave: 1 }, dispatch("h01"), dispatch("h02")]);
    carry_out(&mut r, &actions, T0 + 1_010);
    activate(&mut r, "h01", T0 + 1_100);
    activate(&mut r, "h02", T0 + 1_100);
    report(&mut r, "h01", probe(4, true, T0 + 2_100), T0 + 2_100);
    assert_eq!(next_actions(&r, T0 + 2_100), [], "h02 has not passed since its soak ended");
    report(&mut r, "h02", probe(4, true, T0 + 2_200), T0 + 2_200);
    let actions = next_actions(&r, T0 + 2_200);
    assert_eq!(actions, [Action::AdvanceWave { wave: 2 }, dispatch("h03"), dispatch("h04")]);
    carry_out(&mut r, &actions, T0 + 2_200);
    assert!(matches!(r.step_host("h00", &HostInput::Dispatch, T0), Err(RolloutStepError::Host(StepError::Illegal { .. }))));
    for name in ["h03", "h04"] {
        activate(&mut r, name, T0 + 2_300);
        report(&mut r, name, probe(4, true, T0 + 3_300), T0 + 3_300);
    }
    assert_eq!(next_actions(&r, T0 + 3_300), [Action::Complete]);
    carry_out(&mut r, &[Action::Complete], T0 + 3_300);
    assert!(r.completed && next_actions(&r, T0 + 9_000).is_empty());
}

#[test]
fn a_failing_canary_halts_and_with_rollback_goes_back_and_quarantines() {
    let mut r = Rollout::new("r-1", "stable", "v2", policy(1_000, OnFailure::Rollback), &hosts(3), T0).unwrap();
    let actions = next_actions(&r, T0);
    carry_out(&mut r, &actions, T0);
    activate(&mut r, "h00", T0 + 10);
    for seq in 4..7 {
        report(&mut r, "h00", probe(seq, false, T0 + 20), T0 + 20);
    }
    assert_eq!(r.hosts["h00"].state, HostRolloutState::Failed);
    let actions = next_actions(&r, T0 + 20);
    let reason = "host h00 failed: enforce probe health failed 3 times in a row (failure_threshold = 3)".to_string();
    assert_eq!(
        actions,
        [
            Action::Halt { reason },
            Action::Quarantine { channel: "stable".into(), target: "v2".into() },
            Action::RollBack { hostname: "h00".into(), to: Some("v1".into()) },
        ]
    );
    carry_out(&mut r, &actions, T0 + 20);
    assert_eq!(next_actions(&r, T0 + 30), [], "halted: nothing dispatched, nothing ordered twice");
    assert!(matches!(r.step_host("h01", &HostInput::Dispatch, T0 + 30), Err(RolloutStepError::Halted { .. })));
    report(&mut r, "h00", HostInput::RollbackStarted { seq: 7 }, T0 + 40);
    report(&mut r, "h00", HostInput::RollbackCompleted { seq: 8, current: Some("v1".into()) }, T0 + 50);
    assert_eq!(r.hosts["h00"].state, HostRolloutState::Reverted);
    assert!(r.quarantined && r.halted.is_some() && !r.completed);
}

#[test]
fn a_silent_host_blocks_its_wave_and_is_reported_never_skipped() {
    let mut r = Rollout::new("r-1", "stable", "v2", policy(0, OnFailure::Halt), &hosts(1), T0).unwrap();
    let actions = next_actions(&r, T0);
    carry_out(&mut r, &actions, T0);
    assert_eq!(next_actions(&r, T0 + 59_999), []);
    let state = HostRolloutState::Dispatched;
    let blocked = Action::Blocked { hostname: "h00".into(), state, since: T0, reason: BlockedReason::Silent };
    assert_eq!(next_actions(&r, T0 + 60_000), [blocked]);
    assert_eq!(r.n_in_flight(), 1, "it keeps its budget");
}

#[test]
fn the_budget_is_enforced_by_step_host_too() {
    let mut p = policy(0, OnFailure::Halt);
    p.waves = vec![WaveSpec { size: WaveSize::Percent(100), soak_ms: 0 }];
    p.max_in_flight = 1;
    let mut r = Rollout::new("r-1", "", "v2", p, &hosts(2), T0).unwrap();
    report(&mut r, "h00", HostInput::Dispatch, T0);
    let over = r.step_host("h01", &HostInput::Dispatch, T0);
    assert!(matches!(over, Err(RolloutStepError::OverBudget { n_in_flight: 1, max_in_flight: 1, .. })), "{over:?}");
}

#[test]
fn waves_resolve_cumulatively_and_never_lose_a_host() {
    let p = RolloutPolicy::parse("p.toml", "waves = [1, \"25%\", \"100%\"]\nrequire_probes = false\n").unwrap();
    assert_eq!(p.resolve_waves(40), [0..1, 1..10, 10..40]);
    assert_eq!(p.resolve_waves(1), [0..1, 1..1, 1..1]);
    assert_eq!(p.resolve_waves(3), [0..1, 1..1, 1..3]);
    let mut r = Rollout::new("r", "", "v2", p, &hosts(1), T0).unwrap();
    let actions = next_actions(&r, T0);
    carry_out(&mut r, &actions, T0);
    activate(&mut r, "h00", T0);
    let actions = next_actions(&r, T0 + DEFAULT_SOAK_MS);
    let expected =
        [Action::Converge { hostname: "h00".into() }, Action::AdvanceWave { wave: 1 }, Action::AdvanceWave { wave: 2 }];
    assert_eq!(actions[..3], expected, "empty waves pass at once");
    assert_eq!(actions[3..], [Action::Complete]);
}

#[test]
fn policies_parse_with_defaults_and_precise_errors() {
    let text = r#"
waves = [1, "25%", "100%"]
max_in_flight = 3
soak = ["10m", "5m", "0s"]
on_failure = "rollback"

[[probes]]
name = "health"
http = "http://127.0.0.1:8080/healthz"
interval = "5s"
timeout = "2s"

[[probes]]
name = "port"
tcp = "127.0.0.1:8080"
mode = "observe"
"#;
    let p = RolloutPolicy::parse("p.toml", text).unwrap();
    assert_eq!(
        p.waves.iter().map(|w| (w.size, w.soak_ms)).collect::<Vec<_>>(),
        [(WaveSize::Count(1), 600_000), (WaveSize::Percent(25), 300_000), (WaveSize::Percent(100), 0)]
    );
    assert_eq!((p.max_in_flight, p.on_failure, p.require_probes), (3, OnFailure::Rollback, true));
    assert_eq!(p.probes[0].kind, ProbeKind::Http { url: "http://127.0.0.1:8080/healthz".into(), expect_status: 200 });
    assert_eq!((p.probes[0].failure_threshold, p.probes[0].timeout_ms, p.probes[1].mode), (3, 2_000, ProbeMode::Observe));
    let json = serde_json::to_string(&p).unwrap();
    assert!(json.contains(r#""waves":[{"size":1,"soak_ms":600000},{"size":"25%""#), "{json}");
    assert_eq!(serde_json::from_str::<RolloutPolicy>(&json).unwrap(), p);

    let error = |text: &str| RolloutPolicy::parse("p.toml", text).unwrap_err().to_string();
    assert_eq!(
        error("waves = [1, \"12.5%\", \"100%\"]\n"),
        "p.toml:1: waves[1]: a wave is a host count or a whole percentage like \"25%\", got \"12.5%\""
    );
    assert!(error("waves = [1, \"50%\"]\nrequire_probes = false\n").contains("the last wave must be \"100%\""));
    assert!(error("waves = [0, \"100%\"]\n").contains("at least 1, got 0"));
    assert!(error("soak = [\"1m\"]\n").starts_with("p.toml:1: soak: one per wave (2 waves), got 1"));
    assert!(error("").contains("no probe has mode = \"enforce\""));
    assert!(error("max_in_flight = 0\nrequire_probes = false\n").starts_with("p.toml:1: max_in_flight must be at least 1"));
    assert!(error("[[probes]]\nname = \"x\"\ntcp = \"a:1\"\nexec = [\"true\"]\n").contains("exactly one of"));
    assert!(error("[[probes]]\nname = \"x\"\nexec = [\"true\"]\nfailure_threshold = 0\n").starts_with("p.toml:4:"));
    assert!(error("on_failure = \"panic\"\n").contains("\"halt\" or \"rollback\""));
}

#[test]
fn snapshots_round_trip_through_json() {
    let policy = policy(0, OnFailure::Halt);
    for state in HostRolloutState::ALL {
        let h = host_in(state, &policy);
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<HostRolloutSnapshot>(&json).unwrap(), h);
    }
}
