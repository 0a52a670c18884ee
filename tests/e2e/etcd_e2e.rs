//! The journal on etcd end to end (`--features etcd`): `warden up --store etcd://…` against a
//! real 3-member etcd cluster on loopback keeps every event there and none on its disk; after a
//! kill -9 of warden and the loss of one etcd member it starts again from etcd, re-adopts its
//! cell with the same pid and carries on, the chain verifying from seq 1; a second server on the
//! same prefix cannot fork the journal; an etcd URL off loopback is refused (no TLS to etcd yet).

use crate::support::{assert_contiguous_chain, Warden};

#[path = "../../crates/warden-etcd/tests/support/mod.rs"]
#[allow(dead_code)] // shared with the etcd crate's tests; not every helper is used here
mod etcd;

const SLEEPER: &str = r#"
name = "on-etcd"
[cell]
argv = ["sh", "-c", "exec sleep 1000"]
"#;

fn store_url(cluster: &etcd::Cluster, prefix: &str) -> String {
    let hosts: Vec<&str> = cluster.endpoints.iter().map(|e| e.trim_start_matches("http://")).collect();
    format!("etcd://{}{prefix}", hosts.join(","))
}

#[test]
fn a_server_on_etcd_keeps_its_journal_there_across_kill9_and_a_lost_member() {
    let mut cluster = etcd::Cluster::start(3);
    let url = store_url(&cluster, "/e2e");
    let mut warden = Warden::start_with(&["--store", &url]);
    assert!(warden.up_log().contains(&format!("journal      {url}: ")), "{}", warden.up_log());
    let id = warden.run("on-etcd.toml", SLEEPER);
    let running = warden.wait_for(&id, "running", |v| v.state == "running" && v.pid.is_some());
    assert!(!warden.data_dir().join("journal.db").exists(), "nothing journaled on the server's disk");

    // The server dies and takes an etcd member with it: the other two are a quorum.
    warden.kill9();
    cluster.members[0].kill();
    warden.up();
    let after = warden.wait_for(&id, "re-adopted", |v| v.state == "running");
    assert_eq!(after.pid, running.pid, "the same cell, re-adopted, not restarted");
    assert_eq!(after.restarts, 0);
    let events = warden.events(&[]);
    assert_contiguous_chain(&events);
    let second = warden.run("on-etcd-2.toml", &SLEEPER.replace("on-etcd", "on-etcd-2"));
    warden.wait_for(&second, "running", |v| v.state == "running");
    warden.cli_ok(&["events", "verify"]);

    // A second server on the same prefix (two control planes, which leader election will
    // prevent): the one whose append comes second finds the head moved and stops (exit 70)
    // instead of forking the journal.
    let other = Warden::start_with(&["--store", &url]);
    let third = other.run("on-etcd-3.toml", &SLEEPER.replace("on-etcd", "on-etcd-3"));
    assert!(third.starts_with("w-"));
    let _ = warden.cli(&["run", warden.write_spec("on-etcd-4.toml", &SLEEPER.replace("on-etcd", "on-etcd-4")).to_str().unwrap()]);
    let first_stopped = warden.server.as_mut().unwrap().wait().unwrap();
    assert_eq!(first_stopped.code(), Some(70), "the deposed writer exits 70: {}", warden.up_log());
    assert!(warden.up_log().contains("another writer appended"), "{}", warden.up_log());
    let events = other.events(&[]);
    assert_contiguous_chain(&events);
    other.cli_ok(&["stop", &third]);
    warden.server = None;
}

#[test]
fn an_etcd_member_off_loopback_is_refused_before_anything_starts() {
    let mut warden = Warden::start();
    warden.kill9();
    warden.up_args = vec!["--store".into(), "etcd://10.1.2.3:2379".into()];
    let log = warden.up_fails();
    assert!(log.contains("does not speak TLS yet"), "{log}");
}
