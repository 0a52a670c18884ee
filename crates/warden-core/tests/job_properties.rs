//! Property tests for durable-job resume, driven by a simulated runtime.
//!
//! The simulation plays the runtime: it asks `next_actions` what to do, journals exactly what it
//! is told (orphan closures, retry schedules, entries, the run's end), and lets each entered
//! attempt complete with a fresh context snapshot, fail (retryable or not, leaving a failure
//! snapshot), or "crash" — nothing more is journaled, so the attempt is found orphaned on the next
//! call. It also cuts the journal back to arbitrary prefixes, as a torn tail would, and resumes
//! from there. Time only moves when the core says it is waiting (`wake_at_ms`).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

use warden_core::job::{next_actions, JobManifest, KernelEvent, RunStatus, StateError};

const INITIAL: &str = "snap:initial";
/// Far more calls than any generated run needs: ≤ 6 states × ≤ 4 attempts × a few calls each,
/// times the ≤ 3 truncations.
const MAX_CALLS: usize = 2_000;

#[derive(Clone, Debug)]
struct GenState {
    /// Bits over earlier states: bit j set = depends on state j.
    deps: u8,
    max_attempts: u32,
    backoff_s: u64,
}

fn manifest_text(states: &[GenState], reversed: bool) -> String {
    let mut blocks: Vec<String> = states
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let deps: Vec<String> = (0..i).filter(|j| s.deps & (1 << j) != 0).map(|j| format!("\"s{j}\"")).collect();
            format!(
                "[[state]]\nid = \"s{i}\"\nargv = [\"run\", \"{i}\"]\ndepends_on = [{}]\nretry = {{ max_attempts = {}, backoff = \"{}s\", backoff_max = \"3s\" }}\n",
                deps.join(", "),
                s.max_attempts,
                s.backoff_s
            )
        })
        .collect();
    if reversed {
        blocks.reverse();
    }
    format!("name = \"prop\"\n{}", blocks.concat())
}

fn manifests() -> impl Strategy<Value = JobManifest> {
    (prop::collection::vec((any::<u8>(), 0u32..=3, 0u64..=2), 1..=6), any::<bool>()).prop_map(|(raw, reversed)| {
        let states: Vec<GenState> = raw
            .into_iter()
            .enumerate()
            .map(|(i, (deps, max_attempts, backoff_s))| GenState { deps: deps & ((1u8 << i) - 1), max_attempts, backoff_s })
            .collect();
        JobManifest::parse("prop.toml", &manifest_text(&states, reversed)).expect("generated manifests are valid")
    })
}

#[derive(Clone, Copy, Debug)]
enum Outcome {
    Complete,
    FailRetryable,
    FailFinal,
    Crash,
}

fn outcomes() -> impl Strategy<Value = Vec<Outcome>> {
    prop::collection::vec(
        prop_oneof![
            4 => Just(Outcome::Complete),
            2 => Just(Outcome::FailRetryable),
            1 => Just(Outcome::FailFinal),
            2 => Just(Outcome::Crash),
        ],
        1..40,
    )
}

struct Run {
    status: RunStatus,
    history: Vec<KernelEvent>,
    /// Entries ever made per state, across truncations (the journal may have lost some).
    max_entries_seen: BTreeMap<String, u32>,
}

fn entries(history: &[KernelEvent], state: &str) -> u32 {
    history.iter().filter(|e| matches!(e, KernelEvent::StateEntered { state_id, .. } if state_id == state)).count() as u32
}

fn completed(history: &[KernelEvent]) -> BTreeMap<String, String> {
    history
        .iter()
        .filter_map(|e| match e {
            KernelEvent::StateCompleted { state_id, context_snapshot_id } => {
                Some((state_id.clone(), context_snapshot_id.clone()))
            }
            _ => None,
        })
        .collect()
}

/// Runs the simulation, checking the invariants after every call.
fn simulate(m: &JobManifest, script: &[Outcome], truncations: &[(usize, Index)]) -> Result<Run, TestCaseError> {
    let mut history =
        vec![KernelEvent::RunStarted { op_id: "op-1".into(), manifest_id: m.manifest_id(), initial_snapshot_id: INITIAL.into() }];
    let mut now = 0u64;
    let mut fresh = 0u32;
    let mut next_outcome = 0usize;
    let mut max_entries_seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut failure_snapshots: BTreeSet<String> = BTreeSet::new();

    for call in 0..MAX_CALLS {
        if let Some((_, at)) = truncations.iter().find(|(step, _)| *step == call) {
            // Keep at least `RunStarted`; any later prefix is a journal a crash could leave.
            let keep = 1 + at.index(history.len());
            history.truncate(keep);
        }
        let r = next_actions(m, &history, now);
        if r.done {
            let status = match history.last() {
                Some(KernelEvent::RunCompleted { status, .. }) => *status,
                other => return Err(TestCaseError::fail(format!("done without RunCompleted at the end: {other:?}"))),
            };
            return Ok(Run { status, history, max_entries_seen });
        }

        let done_states = completed(&history);
        let contexts: BTreeSet<&String> = done_states.values().collect();
        for enter in &r.enter {
            let spec = m.state(&enter.state_id).expect("entered states are in the manifest");
            prop_assert!(!done_states.contains_key(&enter.state_id), "completed state {} entered again", enter.state_id);
            for dep in &spec.depends_on {
                prop_assert!(done_states.contains_key(dep), "{} entered before its dependency {dep} completed", enter.state_id);
            }
            prop_assert!(!enter.base_snapshot_ids.is_empty());
            for base in &enter.base_snapshot_ids {
                prop_assert!(!failure_snapshots.contains(base), "base {base} is a failure snapshot");
                prop_assert!(base == INITIAL || contexts.contains(base), "base {base} is neither initial nor a context");
            }
            prop_assert_eq!(enter.attempt, entries(&history, &enter.state_id));
            prop_assert!(
                enter.attempt <= spec.retry.max_attempts,
                "attempt {} over budget for {}",
                enter.attempt,
                enter.state_id
            );
        }
        if r.finish.is_some() {
            prop_assert!(r.enter.is_empty() && r.orphaned.is_empty());
        }

        let mut progressed = false;
        for orphan in &r.orphaned {
            history.push(orphan.orphaned_failure());
            progressed = true;
        }
        if progressed {
            continue;
        }
        for scheduled in &r.schedule {
            history.push(scheduled.event());
            progressed = true;
        }
        if let Some(finish) = &r.finish {
            let final_snapshot_id = match finish.snapshot_ids.as_slice() {
                [] => None,
                [one] => Some(one.clone()),
                many => Some(format!("merge:{}", many.join("+"))),
            };
            history.push(KernelEvent::RunCompleted { status: finish.status, final_snapshot_id });
            continue;
        }
        for enter in &r.enter {
            let base_snapshot_id = match enter.base_snapshot_ids.as_slice() {
                [one] => one.clone(),
                many => format!("merge:{}", many.join("+")),
            };
            history.push(KernelEvent::StateEntered {
                state_id: enter.state_id.clone(),
                attempt: enter.attempt,
                base_snapshot_id,
            });
            let n = entries(&history, &enter.state_id);
            let seen = max_entries_seen.entry(enter.state_id.clone()).or_default();
            *seen = (*seen).max(n);
            progressed = true;
        }
        // Outcomes come after all entries: branches entered together run concurrently.
        for enter in &r.enter {
            fresh += 1;
            let outcome = script[next_outcome % script.len()];
            next_outcome += 1;
            let state_id = enter.state_id.clone();
            match outcome {
                Outcome::Complete => {
                    history.push(KernelEvent::StateCompleted { state_id, context_snapshot_id: format!("ctx:{fresh}") })
                }
                Outcome::FailRetryable | Outcome::FailFinal => {
                    let snapshot = format!("fail:{fresh}");
                    failure_snapshots.insert(snapshot.clone());
                    let error = StateError {
                        code: "exit".into(),
                        message: "exit status 1".into(),
                        retryable: matches!(outcome, Outcome::FailRetryable),
                    };
                    history.push(KernelEvent::StateFailed { state_id, error, failure_snapshot_id: Some(snapshot) });
                }
                Outcome::Crash => {}
            }
        }
        if !progressed {
            match r.wake_at_ms {
                Some(wake) => {
                    prop_assert!(wake > now, "wake_at_ms {wake} is not in the future of {now}");
                    now = wake;
                }
                None => return Err(TestCaseError::fail(format!("stuck: nothing to do and nothing to wait for\n{history:#?}"))),
            }
        }
    }
    Err(TestCaseError::fail(format!("no RunCompleted within {MAX_CALLS} calls")))
}

fn check_end(m: &JobManifest, run: &Run) -> Result<(), TestCaseError> {
    for spec in &m.states {
        let seen = run.max_entries_seen.get(&spec.id).copied().unwrap_or(0);
        prop_assert!(seen <= 1 + spec.retry.max_attempts, "{} entered {seen} times, budget {}", spec.id, spec.retry.max_attempts);
    }
    let done = completed(&run.history);
    match run.status {
        RunStatus::Completed => prop_assert_eq!(done.len(), m.states.len()),
        RunStatus::Failed => prop_assert!(done.len() < m.states.len()),
        RunStatus::Cancelled => prop_assert!(false, "next_actions never cancels"),
    }
    Ok(())
}

fn truncation_plan() -> impl Strategy<Value = Vec<(usize, Index)>> {
    prop::collection::vec((0usize..60, any::<Index>()), 0..=3)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Every invariant, checked after every call, for arbitrary outcomes and journal cuts.
    #[test]
    fn resume_keeps_invariants_and_terminates(m in manifests(), script in outcomes(), cuts in truncation_plan()) {
        let run = simulate(&m, &script, &cuts)?;
        check_end(&m, &run)?;
    }

    /// The retry budget holds when the supervisor dies during every single attempt: orphans count.
    #[test]
    fn attempts_never_exceed_budget_even_when_every_attempt_is_orphaned(m in manifests(), cuts in truncation_plan()) {
        let run = simulate(&m, &[Outcome::Crash], &cuts)?;
        check_end(&m, &run)?;
        prop_assert_eq!(run.status, RunStatus::Failed);
        // Some root ran its whole budget out, and not one attempt more.
        let exhausted = m.states.iter().any(|s| entries(&run.history, &s.id) == 1 + s.retry.max_attempts);
        prop_assert!(exhausted, "the run failed without any state using its budget");
    }

    /// Without failures every state completes once and the run completes on the sinks' contexts.
    #[test]
    fn clean_runs_complete_each_state_once(m in manifests()) {
        let run = simulate(&m, &[Outcome::Complete], &[])?;
        prop_assert_eq!(run.status, RunStatus::Completed);
        for s in &m.states {
            prop_assert_eq!(entries(&run.history, &s.id), 1);
        }
        let done = completed(&run.history);
        let sinks: Vec<String> = m.sinks().iter().map(|s| done[&s.id].clone()).collect();
        let expected = if sinks.len() == 1 { sinks[0].clone() } else { format!("merge:{}", sinks.join("+")) };
        prop_assert_eq!(run.history.last(), Some(&KernelEvent::RunCompleted { status: RunStatus::Completed, final_snapshot_id: Some(expected) }));
    }

    /// Nothing is ever asked for after `RunCompleted`, whatever follows it in the journal.
    #[test]
    fn nothing_after_run_completed(m in manifests(), script in outcomes(), now in any::<u64>()) {
        let mut run = simulate(&m, &script, &[])?;
        run.history.push(KernelEvent::StateEntered { state_id: m.states[0].id.clone(), attempt: 0, base_snapshot_id: INITIAL.into() });
        let r = next_actions(&m, &run.history, now);
        prop_assert!(r.done && r.enter.is_empty() && r.orphaned.is_empty() && r.schedule.is_empty() && r.finish.is_none());
    }
}
