//! Fuzzing the parsers of every file a user writes (workload specs, job manifests, rollout
//! policies): a fixed budget of seeded cases each, of arbitrary bytes and of mutated valid
//! documents. None may panic; every refusal names the file, and a line inside it when it gives
//! one; every acceptance is a value that survives the journal (canonical JSON round trip).
//!
//! `WARDEN_FUZZ_CASES=100000 cargo test -p warden-core --test fuzz_parsers` runs more;
//! `WARDEN_FUZZ_SEED=…` other cases (see `support/fuzz.rs`).

#[path = "support/fuzz.rs"]
mod fuzz;

use fuzz::{arbitrary_bytes, mutate, Rng};
use warden_core::job::JobManifest;
use warden_core::rollout::RolloutPolicy;
use warden_core::spec::SpecError;
use warden_core::Spec;

/// Valid specs: every section and most keys, as the README and the tests write them.
const SPECS: &[&str] = &[
    "name = \"web\"\nttl = \"24h\"\n\n[cell]\nargv = [\"python3\", \"-m\", \"http.server\", \"8080\"]\nenv = { KEY = \"value\" }\nworkdir = \"/srv/web\"\nisolation = \"process\"\ngraceful_shutdown = \"5s\"\n\n[restart]\npolicy = \"on-failure\"\nmax_attempts = 3\nbackoff = \"100ms\"\nbackoff_max = \"30s\"\nbackoff_reset = \"10m\"\n\n[replication]\nmode = \"none\"\n\n[logs]\nmax_size = \"10MiB\"\nmax_files = 3\n",
    "name='c'\n[cell]\nargv=['sh']\nisolation='cell'\nnetwork='none'\n[cell.limits]\nmemory_max='64MiB'\ncpu_max=0.5\npids_max=20\n",
    "name='o'\n[cell]\nargv=['sh']\nisolation='oci'\nrootfs='/srv/rootfs'\noci_runtime='crun'\n",
    "name='kv'\n[cell]\nargv=['sh']\n[restart]\npolicy='always'\nbackoff='10ms'\n[replication]\nmode='warm-standby'\nstandbys=2\npromotion_delay='100ms'\nstate_dir='/s'\ncheckpoint_interval='2s'\n[placement]\ninstances=3\nlost_after='30s'\ncontrol_plane_outage='stop'\n",
    "name='hot'\n[cell]\nargv=['sh']\n[replication]\nmode='warm-standby'\nhot=true\n[placement]\nchannel='edge'\ntags=['ssd', 'eu']\n",
    "name='each'\n[cell]\nargv=['sleep', '1000']\n[placement]\nmode='each-host'\n",
    "name='c'\n[cell]\nargv=['x']\n[replication]\nmode='checkpointed'\nstate_dir='/var/lib/c'\n",
];

const MANIFESTS: &[&str] = &[
    "name = \"etl\"\n[[state]]\nid = \"extract\"\nargv = [\"./extract.sh\"]\ntimeout = \"10m\"\n[[state]]\nid = \"transform\"\ndepends_on = [\"extract\"]\nretry = { max_attempts = 3, backoff = \"1s\", backoff_max = \"1m\" }\nargv = [\"./transform.sh\"]\n",
    "name = \"j\"\n[[state]]\nid = \"a\"\nargv = [\"x\"]\nenv = { A = \"1\" }\nworkdir = \"/tmp\"\n[[state]]\nid = \"b\"\nargv = [\"y\"]\nisolation = \"cell\"\nnetwork = \"none\"\nlimits = { memory_max = \"64MiB\", pids_max = 10 }\n[[state]]\nid = \"c\"\nargv = [\"z\"]\ndepends_on = [\"a\", \"b\"]\ngraceful_shutdown = \"1s\"\n",
];

const POLICIES: &[&str] = &[
    "waves = [1, \"25%\", \"100%\"]\nmax_in_flight = 2\nsoak = \"5m\"\non_failure = \"rollback\"\n[[probes]]\nname = \"health\"\nhttp = \"http://{host}:8080/health\"\nexpect_status = 200\ninterval = \"10s\"\ntimeout = \"5s\"\nfailure_threshold = 3\ngrace = \"30s\"\nmode = \"enforce\"\n",
    "waves = [1, \"100%\"]\nsoak = [\"10m\", \"5m\"]\nrequire_probes = false\nstall_after = \"1m\"\nactivation_timeout = \"2m\"\nactivate = [\"/usr/bin/switch\", \"{target}\"]\nrollback = [\"/usr/bin/switch\", \"{previous}\"]\ncurrent = [\"readlink\", \"/run/current-system\"]\n[[probes]]\nname = \"port\"\ntcp = \"{host}:22\"\nmode = \"observe\"\n[[probes]]\nname = \"ok\"\nexec = [\"true\"]\n",
];

/// The README's `toml` blocks: documents as users copy them (not all of them parse as every
/// kind of file, which is the point of feeding them to every parser).
fn readme_blocks() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{path}: {err}"));
    readme.split("```toml\n").skip(1).filter_map(|block| block.split_once("\n```").map(|(toml, _)| toml.to_string())).collect()
}

/// A document to try: arbitrary bytes (as text), a mutated document of this kind, or now and
/// then a mutated document of another kind.
fn input(rng: &mut Rng, own: &[&str], corpus: &[&str]) -> String {
    match rng.below(10) {
        0 | 1 => String::from_utf8_lossy(&arbitrary_bytes(rng)).into_owned(),
        2 => {
            let doc = *rng.pick(corpus);
            mutate(rng, doc, corpus)
        }
        _ => {
            let doc = *rng.pick(own);
            mutate(rng, doc, corpus)
        }
    }
}

/// A refusal names the file, and any line it gives is one of the document's.
fn assert_names_file_and_line(error: &SpecError, file: &str, text: &str) {
    assert_eq!(error.file, file);
    let shown = error.to_string();
    assert!(shown.starts_with(&format!("{file}:")), "{shown}");
    if let Some(line) = error.line {
        let n_lines = text.matches('\n').count() + 1;
        assert!((1..=n_lines).contains(&line), "line {line} of a {n_lines}-line document: {shown}");
        assert!(shown.starts_with(&format!("{file}:{line}: ")), "{shown}");
    }
    assert!(!error.message.is_empty(), "{shown}");
}

/// The documents the mutations start from: the constants plus the README's blocks.
fn corpus() -> Vec<String> {
    let mut all: Vec<String> = SPECS.iter().chain(MANIFESTS).chain(POLICIES).map(|s| s.to_string()).collect();
    all.extend(readme_blocks());
    all
}

/// Parsers run on a thread with the stack of a tokio worker (2 MiB), where the server parses
/// what clients send: deep nesting must be refused (toml's recursion limit), not overflow it.
/// (A debug build overflows 512 KiB at 50 levels, below that limit: the limit is what holds.)
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new().stack_size(2 << 20).spawn(f).unwrap().join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

#[test]
fn the_seed_documents_are_valid() {
    for (i, text) in SPECS.iter().enumerate() {
        Spec::parse(&format!("spec{i}.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    }
    for (i, text) in MANIFESTS.iter().enumerate() {
        JobManifest::parse(&format!("job{i}.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    }
    for (i, text) in POLICIES.iter().enumerate() {
        RolloutPolicy::parse(&format!("policy{i}.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(readme_blocks().len() >= 4, "the README's toml blocks were not found");
}

#[test]
fn spec_parse_never_panics_and_every_refusal_names_file_and_line() {
    let corpus = corpus();
    on_small_stack(move || {
        let refs: Vec<&str> = corpus.iter().map(String::as_str).collect();
        fuzz::run(
            "Spec::parse",
            fuzz::cases(fuzz::DEFAULT_CASES),
            |rng| input(rng, SPECS, &refs),
            |text| {
                match Spec::parse("fuzz.toml", text) {
                    Ok(spec) => {
                        // Accepted: what the journal stores reads back as the same spec, same id.
                        let json = serde_json::to_vec(&spec).unwrap();
                        let back: Spec = serde_json::from_slice(&json).unwrap();
                        assert_eq!(back, spec);
                        assert_eq!(Spec::parse("other.toml", text).unwrap().spec_id(), spec.spec_id());
                        assert!(spec.restart.backoff_ms <= spec.restart.backoff_max_ms);
                        let cell = &spec.cell;
                        assert!(!cell.argv.iter().chain(cell.env.values()).any(|s| s.contains('\0')), "{cell:?}");
                    }
                    Err(error) => assert_names_file_and_line(&error, "fuzz.toml", text),
                }
            },
        );
    });
}

#[test]
fn job_manifest_parse_never_panics_and_every_refusal_names_file_and_line() {
    let corpus = corpus();
    on_small_stack(move || {
        let refs: Vec<&str> = corpus.iter().map(String::as_str).collect();
        fuzz::run(
            "JobManifest::parse",
            fuzz::cases(fuzz::DEFAULT_CASES),
            |rng| input(rng, MANIFESTS, &refs),
            |text| match JobManifest::parse("job.toml", text) {
                Ok(manifest) => {
                    let json = serde_json::to_vec(&manifest).unwrap();
                    let back: JobManifest = serde_json::from_slice(&json).unwrap();
                    assert_eq!(back, manifest);
                    assert!(!manifest.states.is_empty());
                    for state in &manifest.states {
                        assert!(state.depends_on.iter().all(|d| manifest.state(d).is_some()), "{state:?}");
                    }
                }
                Err(error) => assert_names_file_and_line(&error, "job.toml", text),
            },
        );
    });
}

#[test]
fn rollout_policy_parse_never_panics_and_every_refusal_names_file_and_line() {
    let corpus = corpus();
    on_small_stack(move || {
        let refs: Vec<&str> = corpus.iter().map(String::as_str).collect();
        fuzz::run(
            "RolloutPolicy::parse",
            fuzz::cases(fuzz::DEFAULT_CASES),
            |rng| input(rng, POLICIES, &refs),
            |text| match RolloutPolicy::parse("policy.toml", text) {
                Ok(policy) => {
                    policy.check().unwrap();
                    let json = serde_json::to_vec(&policy).unwrap();
                    let back: RolloutPolicy = serde_json::from_slice(&json).unwrap();
                    assert_eq!(back, policy);
                    for n_hosts in [0, 1, 7, 1_000] {
                        let waves = policy.resolve_waves(n_hosts);
                        assert_eq!(waves.last().map(|w| w.end), Some(n_hosts));
                    }
                }
                Err(error) => assert_names_file_and_line(&error, "policy.toml", text),
            },
        );
    });
}
