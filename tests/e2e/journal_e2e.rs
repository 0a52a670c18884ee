//! End to end: the journal as a user meets it — a corrupt tail cut back at start, snapshots, and
//! the live event and log streams.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{assert_contiguous_chain, bin, Warden};

const QUICK: &str = "name = \"quick\"\n[cell]\nargv = [\"sh\", \"-c\", \"echo hello\"]\n[restart]\npolicy = \"never\"\n";

#[test]
fn a_corrupt_journal_tail_is_reported_and_cut_back_and_nothing_before_it_is_touched() {
    let mut warden = Warden::start();
    let id = warden.run("quick.toml", QUICK);
    warden.wait_for(&id, "completed", |v| v.state == "completed");
    let before = warden.events(&[]);
    let last = before.last().unwrap().seq;
    warden.kill9();

    // Flip a byte in the last event's body, as a torn write or a bad disk would.
    let db = rusqlite::Connection::open(warden.data_dir().join("journal.db")).unwrap();
    db.execute(
        "UPDATE events SET body = CAST(replace(CAST(body AS TEXT), '\"seq\"', '\"seX\"') AS BLOB) WHERE seq = ?1",
        [last as i64],
    )
    .unwrap();
    drop(db);

    warden.up();
    assert!(
        warden.up_log().contains(&format!("journal tail was torn or corrupt at event {last}")),
        "the repair is reported: {}",
        warden.up_log()
    );
    let after = warden.events(&[]);
    assert_contiguous_chain(&after);
    assert_eq!(&after[..last as usize - 1], &before[..last as usize - 1], "events before the bad one are untouched");
    let recovered = after.iter().find(|e| e.event_type == "dev.warden.journal.recovered.v1").expect("the repair is journaled");
    assert_eq!(recovered.data["discarded_from_seq"], last);
    // The workload's state is what the surviving events say, and warden carries on from there.
    let view = warden.wait_for(&id, "settled", |v| v.state == "completed");
    assert_eq!(view.runs, 1, "the cell that completed is not run again");
}

#[test]
fn restart_from_a_snapshot_rebuilds_the_same_state() {
    let mut warden = Warden::start_with(&["--snapshot-every", "5"]);
    let ids: Vec<String> = (0..4).map(|i| warden.run(&format!("q{i}.toml"), QUICK)).collect();
    for id in &ids {
        warden.wait_for(id, "completed", |v| v.state == "completed");
    }
    let before: serde_json::Value = serde_json::from_str(&warden.cli_ok(&["ps", "--all", "-o", "json"])).unwrap();
    let n_events = warden.events(&[]).len();
    warden.kill9();
    let db = rusqlite::Connection::open(warden.data_dir().join("journal.db")).unwrap();
    let n_snapshots: i64 = db.query_row("SELECT count(*) FROM snapshots", [], |r| r.get(0)).unwrap();
    assert!(n_snapshots >= 1, "{n_events} events with --snapshot-every 5 left no snapshot");
    drop(db);
    warden.up();
    let log = warden.up_log();
    let restart_line = log.lines().rfind(|l| l.contains("state loaded from the snapshot at seq")).unwrap();
    assert!(!restart_line.contains("snapshot at seq 0 "), "start-up used the snapshot: {restart_line}");
    let after: serde_json::Value = serde_json::from_str(&warden.cli_ok(&["ps", "--all", "-o", "json"])).unwrap();
    assert_eq!(before, after);
}

#[test]
fn events_follow_and_logs_follow_stream_as_things_happen() {
    let warden = Warden::start();
    let mut follower = Command::new(bin())
        .args(["events", "--follow", "-o", "json"])
        .env("WARDEN_ADDR", warden.addr())
        .env("XDG_CONFIG_HOME", warden.config_home())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let id = warden.run(
        "ticker.toml",
        "name = \"ticker\"\n[cell]\nargv = [\"sh\", \"-c\", \"for i in 1 2 3 4 5 6 7 8 9 10; do echo tick $i; sleep 0.1; done\"]\n",
    );
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        let event: warden_core::CloudEvent = serde_json::from_str(&line).unwrap();
        seen.push(event.event_type.clone());
        if event.event_type == "dev.warden.lifecycle.started.v1" {
            break;
        }
    }
    assert_eq!(seen.first().map(String::as_str), Some("dev.warden.workload.submitted.v1"));
    let _ = follower.kill();
    let _ = follower.wait();

    // `logs -f` ends by itself once the workload has ended, having shown every line.
    let out = warden.cli_ok(&["logs", "-f", &id]);
    assert!(out.contains("tick 1\n") && out.contains("tick 10\n"), "{out:?}");
    assert_eq!(warden.status(&id).state, "completed");
}
