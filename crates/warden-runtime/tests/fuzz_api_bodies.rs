//! Fuzzing the server's JSON request bodies: every body type a handler decodes, from arbitrary
//! bytes and from mutated valid bodies, decoded as the handler does (`serde_json::from_slice`)
//! and, when it decodes, handed to the parser the handler calls next. Nothing may panic; a body
//! that decodes serializes again. The end-to-end side (mutated signed bodies against a real
//! server, no 5xx) is `tests/e2e/hostile_input_e2e.rs`.
//!
//! `WARDEN_FUZZ_CASES` / `WARDEN_FUZZ_SEED` as for the parser fuzz tests (`warden-core`).

#[path = "../../warden-core/tests/support/fuzz.rs"]
mod fuzz;

use serde::de::DeserializeOwned;
use serde::Serialize;
use warden_core::job::JobManifest;
use warden_core::rollout::RolloutPolicy;
use warden_core::Spec;
use warden_runtime::proto::{AcquireRequest, EnrollRequest, Heartbeat, RevokeRequest, RolloutReport};
use warden_runtime::view::{JobRunRequest, RolloutRequest, SubmitRequest};

const SUBMIT: &str = r#"{"file":"web.toml","spec_toml":"name = \"web\"\n[cell]\nargv = [\"sleep\", \"60\"]\nenv = { A = \"1\" }\n[restart]\npolicy = \"always\"\nbackoff = \"100ms\"\n[placement]\ninstances = 2\n","consumer_workload_id":"w-1"}"#;
const JOB: &str = r#"{"file":"j.toml","manifest_toml":"name = \"j\"\n[[state]]\nid = \"a\"\nargv = [\"true\"]\n[[state]]\nid = \"b\"\nargv = [\"true\"]\ndepends_on = [\"a\"]\n","workdir":"/srv/j","input":{"k":[1,2,{"x":null}]}}"#;
const ROLLOUT: &str = r#"{"service":"web","spec_file":"s.toml","spec_toml":"name = \"web\"\n[cell]\nargv = [\"true\"]\n","target":null,"channel":"edge","policy_file":"p.toml","policy_toml":"waves = [1, \"25%\", \"100%\"]\nsoak = \"1m\"\n[[probes]]\nname = \"h\"\nhttp = \"http://{host}:8080/\"\n"}"#;
const ENROLL: &str = r#"{"join_token":"wjt-abc","name":"web-1","channel":"edge","tags":["ssd","eu"]}"#;
const HEARTBEAT: &str = r#"{"host":"web-1","reports":[{"seq":1,"workload_id":"w-1","cell_id":"w-1.1","event":{"kind":"started","pid":7,"pid_start_time":99}},{"seq":2,"workload_id":"w-1","cell_id":"w-1.1","event":{"kind":"checkpointed","state_uri":"blob://x","size_bytes":10}}],"renew":[{"workload_id":"w-1","epoch":3}],"inventory":[{"workload_id":"w-1","cell_id":"w-1.1","state":{"state":"running","pid":7,"pid_start_time":99}}],"standbys":["w-2"]}"#;
const REVOKE: &str = r#"{"host":"web-1","workload_id":"w-1","cell_id":"w-1.1","epoch":3,"state_uri":"blob://x"}"#;
const ACQUIRE: &str = r#"{"host":"web-1","workload_id":"w-1","cell_id":"w-1.2","expected_epoch":3,"hot_cell":"w-1.s0"}"#;

fn corpus() -> Vec<&'static str> {
    vec![SUBMIT, JOB, ROLLOUT, ENROLL, HEARTBEAT, REVOKE, ACQUIRE]
}

/// Mostly mutations of `own`, sometimes arbitrary bytes or another body's mutation.
fn body(rng: &mut fuzz::Rng, own: &str) -> Vec<u8> {
    let corpus = corpus();
    match rng.below(10) {
        0 | 1 => fuzz::arbitrary_bytes(rng),
        2 => {
            let other = *rng.pick(&corpus);
            fuzz::mutate(rng, other, &corpus).into_bytes()
        }
        _ => fuzz::mutate(rng, own, &corpus).into_bytes(),
    }
}

/// Decodes `bytes` as the handler would; a value that decodes must serialize again and be
/// handed to `then` (the parser the handler calls next).
fn decode<T: DeserializeOwned + Serialize>(bytes: &[u8], then: impl Fn(&T)) {
    if let Ok(value) = serde_json::from_slice::<T>(bytes) {
        serde_json::to_vec(&value).unwrap();
        then(&value);
    }
}

fn fuzz_body<T: DeserializeOwned + Serialize>(name: &str, seed_body: &str, then: impl Fn(&T)) {
    serde_json::from_str::<T>(seed_body).unwrap_or_else(|e| panic!("{name}: the seed body does not decode: {e}"));
    fuzz::run(name, fuzz::cases(fuzz::DEFAULT_CASES), |rng| body(rng, seed_body), |bytes| decode::<T>(bytes, &then));
}

#[test]
fn submit_bodies_never_panic() {
    fuzz_body::<SubmitRequest>("SubmitRequest", SUBMIT, |r| {
        let _ = Spec::parse(&r.file, &r.spec_toml);
    });
}

#[test]
fn job_run_bodies_never_panic() {
    fuzz_body::<JobRunRequest>("JobRunRequest", JOB, |r| {
        let _ = JobManifest::parse(&r.file, &r.manifest_toml);
    });
}

#[test]
fn rollout_bodies_never_panic() {
    fuzz_body::<RolloutRequest>("RolloutRequest", ROLLOUT, |r| {
        let _ = RolloutPolicy::parse(&r.policy_file, &r.policy_toml);
        if let (Some(file), Some(text)) = (&r.spec_file, &r.spec_toml) {
            let _ = Spec::parse(file, text);
        }
    });
}

#[test]
fn agent_bodies_never_panic() {
    fuzz_body::<EnrollRequest>("EnrollRequest", ENROLL, |_| {});
    fuzz_body::<Heartbeat>("Heartbeat", HEARTBEAT, |_| {});
    fuzz_body::<RevokeRequest>("RevokeRequest", REVOKE, |_| {});
    fuzz_body::<AcquireRequest>("AcquireRequest", ACQUIRE, |_| {});
    // A rollout report's seed is whatever a real one serializes to; mutations of the others
    // and arbitrary bytes exercise its decoder all the same.
    fuzz::run(
        "RolloutReport",
        fuzz::cases(fuzz::DEFAULT_CASES),
        |rng| body(rng, HEARTBEAT),
        |bytes| decode::<RolloutReport>(bytes, |_| {}),
    );
}
