//! End to end: the signed chain head and `warden events verify`, online and on an export with no
//! server at all; tampered exports fail with a message naming the problem; the server key and
//! the proof survive kill -9.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::{Warden, CRASHER};
use warden_store::SignedHead;

const DONE: &str = r#"
name = "done"
[cell]
argv = ["sh", "-c", "echo done"]
"#;

const SLEEPER: &str = r#"
name = "sleeper"
[cell]
argv = ["sh", "-c", "exec sleep 1000"]
graceful_shutdown = "2s"
"#;

fn server_pub(warden: &Warden) -> PathBuf {
    warden.data_dir().join("server.pub")
}

fn server_principal(warden: &Warden) -> String {
    std::fs::read_to_string(server_pub(warden)).unwrap().trim().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `warden events verify` on an export, pinned to the server's `server.pub`.
fn verify_export(warden: &Warden, events: &Path, head: &Path) -> Output {
    let key_file = server_pub(warden);
    verify_export_with(warden, events, head, &["--key-file", key_file.to_str().unwrap()])
}

/// `warden events verify` on an export, with `key` naming the key to trust.
fn verify_export_with(warden: &Warden, events: &Path, head: &Path, key: &[&str]) -> Output {
    let mut args = vec!["events", "verify", "--events", events.to_str().unwrap(), "--head", head.to_str().unwrap()];
    args.extend_from_slice(key);
    warden.cli(&args)
}

fn assert_fails_with(out: &Output, expected: &str) {
    assert!(!out.status.success(), "verification passed, expected it to fail with {expected:?}");
    assert!(stderr(out).contains(expected), "expected {expected:?} in: {}", stderr(out));
}

/// Exports the events and then the head, as the README shows; the server must be quiet.
fn export(warden: &Warden, name: &str) -> (PathBuf, PathBuf, SignedHead) {
    let events = warden.root.path().join(format!("{name}.jsonl"));
    let head = warden.root.path().join(format!("{name}.head.json"));
    std::fs::write(&events, warden.cli_ok(&["events", "-o", "json"])).unwrap();
    let head_json = warden.cli_ok(&["events", "head", "-o", "json"]);
    std::fs::write(&head, &head_json).unwrap();
    (events, head, serde_json::from_str(&head_json).unwrap())
}

#[test]
fn events_verify_online_offline_tampered_and_after_kill9() {
    let mut warden = Warden::start();
    let principal = server_principal(&warden);
    assert!(principal.starts_with("ed25519:") && principal.len() == 8 + 64, "{principal}");
    let mode = |file: &str| std::fs::metadata(warden.data_dir().join(file)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("server.key"), 0o600);
    assert_eq!(mode("server.pub"), 0o644);
    assert!(warden.up_log().contains(&principal), "the banner names the server key: {}", warden.up_log());

    let crasher = warden.run("crasher.toml", CRASHER);
    let done = warden.run("done.toml", DONE);
    warden.wait_for(&crasher, "failed", |v| v.state == "failed");
    warden.wait_for(&done, "completed", |v| v.state == "completed");

    // Online, trust on first use: the key is pinned for this address, then checked.
    let known_servers = warden.config_home().join("warden/known_servers");
    assert!(!known_servers.exists());
    let out = warden.cli(&["events", "verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ok = String::from_utf8_lossy(&out.stdout).into_owned();
    let n_events = warden.events(&[]).len();
    assert!(
        ok.starts_with(&format!("ok: {n_events} events, seq 1..{n_events}, head sha256:")) && ok.contains(&principal),
        "{ok}"
    );
    assert!(stderr(&out).contains("pinned"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&known_servers).unwrap(), format!("{} {principal}\n", warden.addr()));
    warden.cli_ok(&["events", "verify"]);
    let suffix = warden.cli_ok(&["events", "verify", "--after", "3"]);
    assert!(suffix.starts_with(&format!("ok: {} events, seq 4..{n_events}", n_events - 3)), "{suffix}");
    let out = warden.cli(&["events", "verify", "--key-file", server_pub(&warden).to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Offline: an export and its head, no server needed to check them.
    let (events, head, signed) = export(&warden, "export");
    assert_eq!(signed.seq as usize, n_events);
    assert_eq!(signed.server_key, principal);
    let out = verify_export(&warden, &events, &head);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("ok: {n_events} events, seq 1..{n_events}")));

    let lines: Vec<String> = std::fs::read_to_string(&events).unwrap().lines().map(str::to_owned).collect();
    let write = |name: &str, lines: &[String]| {
        let path = warden.root.path().join(name);
        std::fs::write(&path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        path
    };

    // One event deleted from the middle.
    let middle = lines.len() / 2;
    let mut deleted = lines.clone();
    deleted.remove(middle);
    let seq = middle + 1;
    assert_fails_with(
        &verify_export(&warden, &write("deleted.jsonl", &deleted), &head),
        &format!("event {seq} is missing: event {} is followed by event {}", seq - 1, seq + 1),
    );

    // One byte of one event's data altered (the first backoff's delay, 10 ms → 90 ms).
    let backoff = lines.iter().position(|l| l.contains(r#""delay_ms":10"#)).expect("a backoff event");
    let mut altered = lines.clone();
    altered[backoff] = altered[backoff].replacen(r#""delay_ms":10"#, r#""delay_ms":90"#, 1);
    let seq = backoff + 1;
    assert_fails_with(
        &verify_export(&warden, &write("altered.jsonl", &altered), &head),
        &format!("event {}: prevhash does not match event {seq}'s hash", seq + 1),
    );

    // The last line cut off.
    let cut = &lines[..lines.len() - 1];
    assert_fails_with(
        &verify_export(&warden, &write("cut.jsonl", cut), &head),
        &format!("the signed head is seq {n_events} but the events end at {}: 1 event missing at the end", n_events - 1),
    );

    // The last event altered: only the signed head can tell.
    let mut last_altered = lines.clone();
    let last = last_altered.len() - 1;
    last_altered[last] = last_altered[last].replacen("\"source\":\"/warden/", "\"source\":\"/wardeN/", 1);
    assert_fails_with(
        &verify_export(&warden, &write("last.jsonl", &last_altered), &head),
        &format!("event {n_events}: its hash is sha256:"),
    );

    // A head altered or signed by another key; another key pinned.
    let mut forged: SignedHead = signed.clone();
    forged.seq -= 1;
    let forged_path = warden.root.path().join("forged.head.json");
    std::fs::write(&forged_path, serde_json::to_string(&forged).unwrap()).unwrap();
    assert_fails_with(&verify_export(&warden, &write("cut2.jsonl", cut), &forged_path), "bad signature");
    let stranger = warden_runtime::auth::Identity::generate("stranger").principal();
    let out = verify_export_with(&warden, &events, &head, &["--key", &stranger]);
    assert_fails_with(&out, &format!("the head is signed by {principal}, not by the pinned server key {stranger}"));
    let out = warden.cli(&["events", "verify", "--events", events.to_str().unwrap(), "--head", head.to_str().unwrap()]);
    assert_fails_with(&out, "needs the server key to trust");

    // kill -9 with a cell running, and up again: same key, the chain still proves out, and the
    // old export still verifies against its old head.
    let sleeper = warden.run("sleeper.toml", SLEEPER);
    warden.wait_for(&sleeper, "running", |v| v.state == "running");
    warden.kill9();
    warden.up();
    assert_eq!(server_principal(&warden), principal, "the server key survives a restart");
    warden.wait_for(&sleeper, "running", |v| v.state == "running");
    warden.cli_ok(&["stop", &sleeper]);
    warden.wait_for(&sleeper, "stopped", |v| v.state == "stopped");
    let out = warden.cli(&["events", "verify"]);
    assert!(out.status.success(), "after kill -9: {}", stderr(&out));
    let out = verify_export(&warden, &events, &head);
    assert!(out.status.success(), "the old export after kill -9: {}", stderr(&out));
    let (events_after, head_after, signed_after) = export(&warden, "after");
    assert!(signed_after.seq > signed.seq);
    let out = verify_export(&warden, &events_after, &head_after);
    assert!(out.status.success(), "a new export after kill -9: {}", stderr(&out));
    // The old head vouches for the new export up to where it was signed: history was not
    // rewritten since; what came after is said not to be covered.
    let out = verify_export(&warden, &events_after, &head);
    assert!(out.status.success(), "a new export against the old head: {}", stderr(&out));
    let ok = String::from_utf8_lossy(&out.stdout).into_owned();
    let n_after = signed_after.seq - signed.seq;
    assert!(
        ok.starts_with(&format!("ok: {n_events} events, seq 1..{n_events}"))
            && ok.contains(&format!("{n_after} events after it (seq {}..{}) not covered", signed.seq + 1, signed_after.seq)),
        "{ok}"
    );
    // The new export extends the old one: same lines up to the old head.
    let after_lines: Vec<String> = std::fs::read_to_string(&events_after).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(after_lines[..lines.len()], lines[..]);

    // A server whose key changed is refused under trust on first use.
    std::fs::write(&known_servers, format!("{} {stranger}\n", warden.addr())).unwrap();
    let out = warden.cli(&["events", "verify"]);
    assert_fails_with(&out, &format!("signs with {principal}, but {} pins {stranger}", known_servers.display()));
}

#[test]
fn warden_server_signs_its_head_too() {
    let warden = Warden::start_with_command("server", &[]);
    let principal = server_principal(&warden);
    let head: SignedHead = serde_json::from_str(&warden.cli_ok(&["events", "head", "-o", "json"])).unwrap();
    assert_eq!(head.server_key, principal);
    let out = warden.cli(&["events", "verify", "--key", &principal]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "), "{}", String::from_utf8_lossy(&out.stdout));
}
