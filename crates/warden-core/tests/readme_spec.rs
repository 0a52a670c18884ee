//! The README's examples parse, to exactly the values they document.

use std::collections::BTreeMap;

use warden_core::spec::{Isolation, DEFAULT_BACKOFF_RESET_MS, DEFAULT_LOG_MAX_FILES, DEFAULT_LOG_MAX_SIZE_BYTES};
use warden_core::{ReplicationMode, RestartPolicy, Spec};

const README_EXAMPLE: &str = r#"
name = "web"
ttl = "24h"

[cell]
argv = ["python3", "-m", "http.server", "8080"]
env = { KEY = "value" }
workdir = "/srv/web"
isolation = "process"
graceful_shutdown = "5s"

[restart]
policy = "on-failure"
max_attempts = 3
backoff = "100ms"
backoff_max = "30s"

[replication]
mode = "none"
"#;

#[test]
fn the_readme_example_spec_parses() {
    let spec = Spec::parse("web.toml", README_EXAMPLE).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(spec.name, "web");
    assert_eq!(spec.ttl_ms, Some(24 * 60 * 60 * 1000));
    assert_eq!(spec.cell.argv, ["python3", "-m", "http.server", "8080"]);
    assert_eq!(spec.cell.env, BTreeMap::from([("KEY".to_string(), "value".to_string())]));
    assert_eq!(spec.cell.workdir.as_deref(), Some("/srv/web"));
    assert_eq!(spec.cell.isolation, Isolation::Process);
    assert_eq!(spec.cell.graceful_shutdown_ms, 5_000);
    assert_eq!(spec.restart.policy, RestartPolicy::OnFailure { max_attempts: 3 });
    assert_eq!(spec.restart.backoff_ms, 100);
    assert_eq!(spec.restart.backoff_max_ms, 30_000);
    assert_eq!(spec.restart.backoff_reset_ms, DEFAULT_BACKOFF_RESET_MS);
    assert_eq!(spec.replication.mode, ReplicationMode::None);
    assert_eq!(spec.logs.max_size_bytes, DEFAULT_LOG_MAX_SIZE_BYTES);
    assert_eq!(spec.logs.max_files, DEFAULT_LOG_MAX_FILES);

    let id = spec.spec_id();
    assert!(id.starts_with("sha256:") && id.len() == "sha256:".len() + 64, "{id}");
    assert_eq!(Spec::parse("other.toml", README_EXAMPLE).unwrap().spec_id(), id);
}

/// The spec in README.md's quick start (the `web.toml` heredoc), read from the README itself so
/// the documentation cannot drift into an example that no longer parses.
#[test]
fn the_spec_in_the_readme_quick_start_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{path}: {err}"));
    let start = readme.find("<<'TOML'\n").unwrap_or_else(|| panic!("no <<'TOML' heredoc in {path}")) + "<<'TOML'\n".len();
    let len = readme[start..].find("\nTOML\n").unwrap_or_else(|| panic!("unterminated heredoc in {path}"));
    let text = &readme[start..start + len];
    let spec = Spec::parse("README.md", text).unwrap_or_else(|err| panic!("{err}\n{text}"));
    assert_eq!(spec.name, "web");
    assert_eq!(spec.ttl_ms, Some(24 * 60 * 60 * 1000));
    assert_eq!(spec.cell.argv, ["python3", "-m", "http.server", "8080"]);
    assert_eq!(spec.cell.graceful_shutdown_ms, 5_000);
    assert_eq!(spec.restart.policy, RestartPolicy::OnFailure { max_attempts: 3 });
    assert_eq!((spec.restart.backoff_ms, spec.restart.backoff_max_ms), (100, 30_000));
    assert_eq!(spec.replication.mode, ReplicationMode::None);
}

/// The job manifest in README.md's "Durable jobs" section, read from the README itself.
#[test]
fn the_readme_job_manifest_parses() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let section = &readme[readme.find("## Durable jobs").expect("README has a Durable jobs section")..];
    let block = section.split("```toml\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a toml block");
    let manifest = warden_core::job::JobManifest::parse("README.md", block).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(manifest.name, "etl");
    let ids: Vec<&str> = manifest.states.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["extract", "transform"]);
    assert_eq!(manifest.states[0].timeout_ms, Some(600_000));
    assert_eq!(manifest.states[1].depends_on, ["extract"]);
    let retry = manifest.states[1].retry;
    assert_eq!((retry.max_attempts, retry.backoff_ms, retry.backoff_max_ms), (3, 1_000, 60_000));
}
