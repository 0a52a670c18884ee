//! `DurableQueue`, the agent's outbound report queue: FIFO order, durability across reopen and
//! SIGKILL, sequence numbers that are never reused, idempotent acknowledgements.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use warden_store::queue::DurableQueue;

fn queue_file() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reports.db");
    (dir, path)
}

fn bodies(queue: &DurableQueue) -> Vec<(u64, String)> {
    queue.pending(usize::MAX).unwrap().into_iter().map(|(seq, body)| (seq, String::from_utf8(body).unwrap())).collect()
}

#[test]
fn pushes_are_numbered_from_one_and_pending_is_oldest_first() {
    let (_dir, path) = queue_file();
    let queue = DurableQueue::open(&path).unwrap();
    assert!(queue.is_empty().unwrap());
    assert_eq!(queue.pending(10).unwrap(), Vec::new());
    for (i, body) in ["a", "b", "c", "d"].iter().enumerate() {
        assert_eq!(queue.push(body.as_bytes()).unwrap(), i as u64 + 1);
    }
    assert_eq!(queue.len().unwrap(), 4);
    assert_eq!(bodies(&queue), vec![(1, "a".into()), (2, "b".into()), (3, "c".into()), (4, "d".into())]);
    // The limit takes the oldest.
    assert_eq!(queue.pending(2).unwrap(), vec![(1, b"a".to_vec()), (2, b"b".to_vec())]);
    assert_eq!(queue.pending(0).unwrap(), Vec::new());
    // Arbitrary bytes, including empty and non-UTF-8 ones, come back exactly.
    let binary = [0u8, 255, 10, 13, 0];
    let seq = queue.push(&binary).unwrap();
    assert_eq!(queue.push(b"").unwrap(), seq + 1);
    let pending = queue.pending(usize::MAX).unwrap();
    assert_eq!(pending[4], (5, binary.to_vec()));
    assert_eq!(pending[5], (6, Vec::new()));
}

#[test]
fn pending_messages_survive_reopen() {
    let (_dir, path) = queue_file();
    {
        let queue = DurableQueue::open(&path).unwrap();
        queue.push(b"started").unwrap();
        queue.push(b"exited").unwrap();
        queue.ack_through(1).unwrap();
        queue.push(b"started again").unwrap();
    }
    let queue = DurableQueue::open(&path).unwrap();
    assert_eq!(bodies(&queue), vec![(2, "exited".into()), (3, "started again".into())]);
    assert_eq!(queue.push(b"next").unwrap(), 4);
}

#[test]
fn seq_is_never_reused_after_everything_was_acked_and_the_file_reopened() {
    let (_dir, path) = queue_file();
    {
        let queue = DurableQueue::open(&path).unwrap();
        for _ in 0..5 {
            queue.push(b"x").unwrap();
        }
        // Drop everything, including the highest seq: a plain rowid table would hand out 1 again.
        queue.ack_through(5).unwrap();
        assert!(queue.is_empty().unwrap());
        assert_eq!(queue.push(b"y").unwrap(), 6);
        queue.ack_through(6).unwrap();
    }
    let queue = DurableQueue::open(&path).unwrap();
    assert!(queue.is_empty().unwrap());
    assert_eq!(queue.push(b"z").unwrap(), 7);
    // Acknowledging far beyond what was pushed drops what is there but does not move the numbering.
    queue.ack_through(1_000).unwrap();
    assert_eq!(queue.push(b"w").unwrap(), 8);
    assert_eq!(bodies(&queue), vec![(8, "w".into())]);
}

#[test]
fn ack_is_idempotent_and_never_drops_newer_messages() {
    let (_dir, path) = queue_file();
    let queue = DurableQueue::open(&path).unwrap();
    for body in ["1", "2", "3", "4"] {
        queue.push(body.as_bytes()).unwrap();
    }
    queue.ack_through(2).unwrap();
    queue.ack_through(2).unwrap();
    assert_eq!(bodies(&queue), vec![(3, "3".into()), (4, "4".into())]);
    // A late, older acknowledgement (an earlier heartbeat's answer) changes nothing.
    queue.ack_through(1).unwrap();
    queue.ack_through(0).unwrap();
    assert_eq!(bodies(&queue), vec![(3, "3".into()), (4, "4".into())]);
    queue.ack_through(4).unwrap();
    queue.ack_through(4).unwrap();
    assert!(queue.is_empty().unwrap());
    // And after a reopen, the same acknowledgement again is still harmless.
    drop(queue);
    let queue = DurableQueue::open(&path).unwrap();
    queue.ack_through(4).unwrap();
    assert_eq!(queue.push(b"5").unwrap(), 5);
}

#[test]
fn concurrent_pushes_get_distinct_consecutive_seqs() {
    let (_dir, path) = queue_file();
    let queue = Arc::new(DurableQueue::open(&path).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let queue = queue.clone();
            std::thread::spawn(move || (0..25).map(|i| queue.push(format!("{t}.{i}").as_bytes()).unwrap()).collect::<Vec<_>>())
        })
        .collect();
    let mut seqs: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    // Each thread's own messages stay in its push order.
    let pending = bodies(&queue);
    for t in 0..4 {
        let mine: Vec<usize> =
            pending.iter().filter_map(|(_, body)| body.strip_prefix(&format!("{t}.")).map(|i| i.parse().unwrap())).collect();
        assert_eq!(mine, (0..25).collect::<Vec<_>>());
    }
}

const CHILD_QUEUE: &str = "WARDEN_QUEUE_CRASH_CHILD";
const CRASH_TEST: &str = "pushed_messages_survive_sigkill";

/// The child pushes as fast as it can and prints `PUSHED <seq>` after each push returned; the
/// parent SIGKILLs it and finds every printed message in the reopened queue, with no gap.
#[test]
fn pushed_messages_survive_sigkill() {
    if let Some(path) = std::env::var_os(CHILD_QUEUE) {
        push_until_killed(Path::new(&path));
        return;
    }
    let (_dir, path) = queue_file();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CRASH_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_QUEUE, &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut pushed = Vec::new();
    let mut line = String::new();
    while pushed.len() < 50 {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the child ended early");
        if let Some(seq) = pushed_seq(&line) {
            pushed.push(seq);
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Whatever the child printed before it died was acknowledged by `push`.
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
    // A line the kill cut short has no newline: that push was never acknowledged.
    for line in rest.split_inclusive('\n').filter(|line| line.ends_with('\n')) {
        if let Some(seq) = pushed_seq(line) {
            pushed.push(seq);
        }
    }
    let queue = DurableQueue::open(&path).unwrap();
    let found: Vec<u64> = queue.pending(usize::MAX).unwrap().into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(found[..pushed.len()], pushed[..], "every acknowledged push is there, in order");
    assert_eq!(found, (1..=found.len() as u64).collect::<Vec<_>>(), "no gaps");
    for (seq, body) in queue.pending(usize::MAX).unwrap() {
        assert_eq!(body, format!("message {seq}").into_bytes());
    }
    // Numbering carries on after the crash.
    assert_eq!(queue.push(b"after").unwrap(), found.len() as u64 + 1);
}

/// The seq of a `PUSHED <seq>` line (libtest may print its own words before it on that line).
fn pushed_seq(line: &str) -> Option<u64> {
    line.trim_end().rsplit_once("PUSHED ").map(|(_, seq)| seq.parse().unwrap())
}

fn push_until_killed(path: &Path) {
    let queue = DurableQueue::open(path).unwrap();
    let mut out = std::io::stdout();
    for n in 1.. {
        let seq = queue.push(format!("message {n}").as_bytes()).unwrap();
        assert_eq!(seq, n);
        writeln!(out, "PUSHED {seq}").unwrap();
        out.flush().unwrap();
        if n > 100_000 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
