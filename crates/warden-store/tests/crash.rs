//! A process killed with SIGKILL mid-append loses nothing it acknowledged.
//!
//! The test re-runs its own binary as the child (selected by an environment variable): the child
//! appends from several threads and prints every acknowledged seq with its hash; the parent kills
//! it without warning, reopens the journal and checks that every acknowledged event is there,
//! unchanged, with no gap before it.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use warden_core::event::GENESIS_HASH;
use warden_store::conformance::sample_event;
use warden_store::{verify_chain, SqliteStore, Store};

const CHILD_JOURNAL: &str = "WARDEN_STORE_CRASH_CHILD_JOURNAL";
const TEST_NAME: &str = "acknowledged_appends_survive_sigkill";

#[test]
fn acknowledged_appends_survive_sigkill() {
    if let Some(journal) = std::env::var_os(CHILD_JOURNAL) {
        append_until_killed(Path::new(&journal));
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_JOURNAL, &journal)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    let stdout = child.stdout.take().unwrap();
    let (first_ack, first_ack_seen) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut acked = Vec::new();
        let mut stdout = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            if stdout.read_until(b'\n', &mut line).unwrap() == 0 {
                return acked;
            }
            // A line cut short by the kill has no newline; it was never fully acknowledged.
            let Some(line) = line.strip_suffix(b"\n") else {
                return acked;
            };
            let line = String::from_utf8_lossy(line);
            let mut words = line.split(' ');
            if words.next() != Some("ACK") {
                continue; // the test harness's own output
            }
            let seq: u64 = words.next().unwrap().parse().unwrap();
            let hash = words.next().unwrap().to_string();
            if acked.is_empty() {
                let _ = first_ack.send(());
            }
            acked.push((seq, hash));
        }
    });

    first_ack_seen.recv_timeout(Duration::from_secs(60)).expect("the child acknowledged an append");
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL: no destructors, no flushing, no goodbye
    child.wait().unwrap();
    let acked = reader.join().unwrap();
    assert!(acked.len() > 1, "the child made progress before the kill");

    // SQLite's WAL discards an uncommitted tail by itself; the chain check finds no damage
    // (open would refuse it).
    let (store, report) = SqliteStore::open(&journal).unwrap();
    let events = store.read_after(0, usize::MAX, None).unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=report.head.seq).collect::<Vec<_>>(), "no gaps");
    assert_eq!(verify_chain(&events, GENESIS_HASH), Ok(()));
    for (seq, hash) in &acked {
        let event =
            events.get(*seq as usize - 1).unwrap_or_else(|| panic!("acknowledged seq {seq} is lost (head {})", report.head.seq));
        assert_eq!(&event.hash(), hash, "acknowledged event {seq} changed");
    }
    eprintln!("crash test: {} acknowledged, {} in the journal after SIGKILL", acked.len(), events.len());

    // And the journal goes on from where it was cut.
    let next = store.append(vec![sample_event(u64::MAX / 2, None)]).unwrap();
    assert_eq!(next[0].seq, report.head.seq + 1);
    assert_eq!(next[0].prevhash, report.head.hash);
}

/// The child: four threads append batches of 1 to 8 events as fast as they can and print each
/// acknowledged seq and hash, until killed (or, if the parent is gone, for at most a minute).
fn append_until_killed(journal: &Path) {
    let (store, _) = SqliteStore::open(journal).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let store = &store;
            scope.spawn(move || {
                let mut n = t * 1_000_000_000;
                while Instant::now() < deadline {
                    let len = 1 + n % 8;
                    let batch = (n..n + len).map(|k| sample_event(k, Some("w-crash"))).collect();
                    n += len;
                    let sealed = store.append(batch).unwrap();
                    let mut out = std::io::stdout().lock();
                    for event in &sealed {
                        writeln!(out, "ACK {} {}", event.seq, event.hash()).unwrap();
                    }
                    out.flush().unwrap();
                }
            });
        }
    });
}
