//! End to end: the journal as a user meets it — damaged history refused until an operator's
//! repair, a torn last write cut by itself, snapshots, and the live event and log streams.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{bin, Warden};

const QUICK: &str = "name = \"quick\"\n[cell]\nargv = [\"sh\", \"-c\", \"echo hello\"]\n[restart]\npolicy = \"never\"\n";

/// Every stored event row, exactly as stored: (seq, subject, hash, body).
fn stored_rows(journal: &Path) -> Vec<(i64, Option<String>, String, Vec<u8>)> {
    let db = rusqlite::Connection::open(journal).unwrap();
    let mut stmt = db.prepare("SELECT seq, subject, hash, body FROM events ORDER BY seq").unwrap();
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

#[test]
fn damaged_history_stops_warden_until_the_operator_repairs_it_and_the_repair_loses_nothing_for_good() {
    let mut warden = Warden::start();
    // One after the other, so the first two have ended before the third is submitted.
    let ids: Vec<String> = (0..3)
        .map(|i| {
            let id = warden.run(&format!("q{i}.toml"), QUICK);
            warden.wait_for(&id, "completed", |v| v.state == "completed");
            id
        })
        .collect();
    let before = warden.events(&[]);
    warden.kill9();

    // Flip one bit in the middle of a committed, acknowledged event's body with the server
    // stopped, as a bad disk would: the last workload's submission, with its life after it.
    let bad = before
        .iter()
        .find(|e| e.event_type == "dev.warden.workload.submitted.v1" && e.subject.as_deref() == Some(ids[2].as_str()))
        .unwrap()
        .seq;
    let last = before.last().unwrap().seq;
    assert!(bad + 2 < last, "event {bad} is in the middle of 1..{last}");
    let journal = warden.data_dir().join("journal.db");
    {
        let db = rusqlite::Connection::open(&journal).unwrap();
        let mut body: Vec<u8> = db.query_row("SELECT body FROM events WHERE seq = ?1", [bad as i64], |r| r.get(0)).unwrap();
        let middle = body.len() / 2;
        body[middle] ^= 0x01;
        db.execute("UPDATE events SET body = ?2 WHERE seq = ?1", rusqlite::params![bad as i64, body]).unwrap();
    }
    let damaged = stored_rows(&journal);

    // `warden up` refuses: non-zero, naming the seq, what failed and the repair; nothing changed.
    let log = warden.up_fails();
    let data_dir = warden.data_dir().display().to_string();
    for expected in [
        format!("is damaged: event {bad}: hash mismatch"),
        format!("{} committed events are stored from seq {bad} to {last}", last - bad + 1),
        format!("`warden journal repair --data-dir {data_dir} --truncate-after {}`", bad - 1),
        "`warden restore`".to_string(),
    ] {
        assert!(log.contains(&expected), "the refusal says {expected:?}: {log}");
    }
    assert!(log.contains("warden: error: cannot open the journal: journal "), "the whole chain of causes: {log}");
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(stored_rows(&journal), damaged, "a refused start changed the journal");

    // The offline check names it too, and changes nothing.
    let out = warden.cli(&["journal", "verify", "--data-dir", &data_dir]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("event {bad}: hash mismatch")), "{out:?}");
    // The repair refuses to keep the damage.
    let out = warden.cli(&["journal", "repair", "--data-dir", &data_dir, "--truncate-after", &bad.to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("truncate after {} or earlier", bad - 1)), "{out:?}");
    assert_eq!(stored_rows(&journal), damaged);

    // The operator's repair saves what it discards (0600), then truncates and journals itself.
    let keep = bad - 1;
    warden.cli_ok(&["journal", "repair", "--data-dir", &data_dir, "--truncate-after", &keep.to_string()]);
    let saved: Vec<PathBuf> = std::fs::read_dir(warden.data_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.file_name().unwrap().to_string_lossy().starts_with(&format!("journal.discarded-{bad}-")))
        .collect();
    assert_eq!(saved.len(), 1, "one file of discarded events: {saved:?}");
    assert_eq!(std::fs::metadata(&saved[0]).unwrap().permissions().mode() & 0o777, 0o600);
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&saved[0]).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(lines.len() as u64, last - keep);
    for (line, (seq, subject, hash, body)) in lines.iter().zip(&damaged[keep as usize..]) {
        assert_eq!(line["seq"], *seq);
        assert_eq!(line["subject"].as_str(), subject.as_deref());
        assert_eq!(line["hash"], *hash);
        assert_eq!(line["body"].as_str().unwrap().as_bytes(), &body[..], "event {seq} saved as it was stored");
    }

    warden.up();
    let out = warden.cli_ok(&["events", "verify"]);
    assert!(out.starts_with("ok: "), "{out}");
    let after = warden.events(&[]);
    assert_eq!(&after[..keep as usize], &before[..keep as usize], "events before the damage are untouched");
    let repaired = &after[keep as usize];
    assert_eq!((repaired.seq, repaired.event_type.as_str()), (bad, "dev.warden.journal.repaired.v1"));
    assert_eq!(repaired.data["truncated_after"], keep);
    assert_eq!(repaired.data["n_discarded"], last - keep);
    assert_eq!(repaired.data["first_bad_seq"], bad);
    assert_eq!(repaired.data["reason"], format!("event {bad}: hash mismatch"));
    assert_eq!(repaired.data["saved_to"], saved[0].display().to_string());
    assert!(repaired.data["operator"].as_str().unwrap().contains("warden journal repair"), "{:?}", repaired.data);
    // What the surviving events say: the first two workloads completed; the third was never
    // submitted, as far as the journal knows.
    for id in &ids[..2] {
        assert_eq!(warden.status(id).state, "completed");
    }
    assert!(!warden.cli(&["status", &ids[2]]).status.success());
}

/// A crash in the middle of a commit leaves a torn last WAL frame; SQLite's recovery drops it
/// with the commit it ended, so warden starts at the earlier head without complaint. (A torn
/// write is never acknowledged; here the last commit was, which only makes the cut visible.)
#[test]
fn a_torn_last_wal_write_is_cut_by_itself_and_warden_starts_at_the_earlier_head() {
    let mut warden = Warden::start();
    let id = warden.run("quick.toml", QUICK);
    warden.wait_for(&id, "completed", |v| v.state == "completed");
    let before = warden.events(&[]);
    // kill -9: nothing is checkpointed, every commit is still in journal.db-wal.
    warden.kill9();

    let wal_path = warden.data_dir().join("journal.db-wal");
    let wal = std::fs::read(&wal_path).unwrap();
    let page_size = u32::from_be_bytes(wal[8..12].try_into().unwrap()) as usize;
    let frame_size = 24 + page_size;
    assert!(wal.len() > 32 + frame_size && (wal.len() - 32).is_multiple_of(frame_size), "WAL of {} bytes", wal.len());
    std::fs::write(&wal_path, &wal[..wal.len() - frame_size / 2]).unwrap();

    let logged_before = warden.up_log().len();
    warden.up();
    let log = warden.up_log()[logged_before..].to_string();
    assert!(!log.contains("damaged") && !log.contains("error"), "{log}");
    let out = warden.cli_ok(&["events", "verify"]);
    assert!(out.starts_with("ok: "), "{out}");
    let after = warden.events(&[]);
    let n_kept = before.iter().zip(&after).take_while(|(b, a)| b == a).count();
    assert!(n_kept < before.len(), "the torn last commit is gone: {n_kept} of {} events kept", before.len());
    assert!(n_kept > 0);
    assert!(after.iter().all(|e| e.event_type != "dev.warden.journal.repaired.v1"));
    // warden carries on from the earlier head. (What the workload's state becomes depends on
    // which commit was torn: a real torn write was never acknowledged, so nothing acted on it;
    // this one was, and its cell may already be gone.)
    warden.wait_for(&id, "settled", |v| v.state == "completed" || v.state == "failed");
    let next = warden.run("next.toml", QUICK);
    warden.wait_for(&next, "completed", |v| v.state == "completed");
    warden.cli_ok(&["events", "verify"]);
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
    // The journal so far (the first start's join token), then the workload's own events.
    let first_of_workload = seen.iter().find(|t| !t.starts_with("dev.warden.host.token."));
    assert_eq!(first_of_workload.map(String::as_str), Some("dev.warden.workload.submitted.v1"), "{seen:?}");
    let _ = follower.kill();
    let _ = follower.wait();

    // `logs -f` ends by itself once the workload has ended, having shown every line.
    let out = warden.cli_ok(&["logs", "-f", &id]);
    assert!(out.contains("tick 1\n") && out.contains("tick 10\n"), "{out:?}");
    assert_eq!(warden.status(&id).state, "completed");
}
