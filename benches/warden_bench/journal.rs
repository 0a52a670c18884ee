//! The `journal` section: events per second appended to warden's journal, next to raw SQLite.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use warden_core::canonical::sha256_hex;
use warden_core::event::GENESIS_HASH;
use warden_core::CloudEvent;
use warden_store::conformance::sample_event;
use warden_store::{SqliteStore, Store};

use crate::common::process::progress;
use crate::common::table::{figure, fmt_rate, ratio_of, Alt, Row};

/// Journal throughput cases take turns: this many rounds of one slice each.
const JOURNAL_ROUNDS: u32 = 10;
const JOURNAL_SLICE: Duration = Duration::from_millis(300);
/// Concurrent appenders in the group-commit case.
const JOURNAL_THREADS: usize = 64;
/// Events per append in the batch case.
const JOURNAL_BATCH: usize = 1000;
/// The subject every journal row carries, shaped like a real workload id.
const JOURNAL_SUBJECT: &str = "w-0123456789ab";

pub(crate) fn journal_section() -> Vec<Row> {
    progress(format_args!("journal: {JOURNAL_ROUNDS} rounds of {} ms per case, cases interleaved", JOURNAL_SLICE.as_millis()));
    let mut cases: Vec<(String, Result<JournalCase>)> = vec![
        ("warden, 1 appender".into(), warden_case(1, 1)),
        (format!("warden, {JOURNAL_THREADS} appenders"), warden_case(JOURNAL_THREADS, 1)),
        (format!("warden, batches of {JOURNAL_BATCH}"), warden_case(1, JOURNAL_BATCH)),
        ("rusqlite, 1 row per transaction".into(), raw_case(1)),
        (format!("rusqlite, {JOURNAL_BATCH} rows per transaction"), raw_case(JOURNAL_BATCH)),
    ];
    // fsync latency on a shared disk swings by 10× within seconds (other builds, other tests),
    // so the cases take turns in short slices: each one sees the same mix of good and bad moments.
    let mut tallies = vec![(0u64, Duration::ZERO); cases.len()];
    for _ in 0..JOURNAL_ROUNDS {
        for ((_, case), tally) in cases.iter_mut().zip(&mut tallies) {
            if let Ok(run) = case {
                let started = Instant::now();
                match run(JOURNAL_SLICE) {
                    Ok(events) => {
                        tally.0 += events;
                        tally.1 += started.elapsed();
                    }
                    Err(e) => *case = Err(e),
                }
            }
        }
    }
    let rates: Vec<Result<f64>> = cases
        .into_iter()
        .zip(tallies)
        .map(|((name, case), (events, elapsed))| {
            let rate = case.map(|_| events as f64 / elapsed.as_secs_f64());
            progress(format_args!("  {name}: {}", figure(&rate, |r| fmt_rate(*r))));
            rate
        })
        .collect();
    let [single, group, batch, raw_single, raw_batch]: [Result<f64>; 5] = rates.try_into().expect("five cases");

    let row = |metric: String, warden: &Result<f64>, who: &str, raw: &Result<f64>, note: &str| Row {
        metric,
        warden: figure(warden, |r| fmt_rate(*r)),
        alternatives: vec![Alt {
            who: who.to_string(),
            figure: figure(raw, |r| fmt_rate(*r)),
            ratio: ratio_of(warden, |r| *r, raw, |r| *r),
        }],
        note: note.to_string(),
    };
    let raw_one = "raw rusqlite, 1 row/tx";
    vec![
        row(
            "Journal, 1 appender, 1 event/append (durable events/s; higher is better)".into(),
            &single,
            raw_one,
            &raw_single,
            "every append waits for its own fsync",
        ),
        row(
            format!("Journal, {JOURNAL_THREADS} concurrent appenders, 1 event/append (group commit)"),
            &group,
            raw_one,
            &raw_single,
            "baseline: what one transaction per event gets; target ≥ 50,000 durable events/s",
        ),
        row(
            format!("Journal, batches of {JOURNAL_BATCH} events/append"),
            &batch,
            &format!("raw rusqlite, {JOURNAL_BATCH} rows/tx"),
            &raw_batch,
            "warden also seals, hashes and chains each event",
        ),
    ]
}

/// One journal throughput case: runs for about the given time and returns how many events it
/// made durable.
type JournalCase = Box<dyn FnMut(Duration) -> Result<u64>>;

/// `SqliteStore::append` from `threads` appenders, `per_append` events per call.
fn warden_case(threads: usize, per_append: usize) -> Result<JournalCase> {
    let dir = tempfile::tempdir()?;
    let (store, _) = SqliteStore::open(&dir.path().join("journal.db"))?;
    let mut next_n = 0u64;
    Ok(Box::new(move |slice| {
        let _keep = &dir;
        let appended = AtomicU64::new(0);
        let deadline = Instant::now() + slice;
        let first_n = next_n;
        next_n += 1 << 40;
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads as u64)
                .map(|t| {
                    let (store, appended) = (&store, &appended);
                    scope.spawn(move || -> Result<()> {
                        let mut n = first_n + (t << 32);
                        while Instant::now() < deadline {
                            let events = (0..per_append)
                                .map(|_| {
                                    n += 1;
                                    sample_event(n, Some(JOURNAL_SUBJECT))
                                })
                                .collect();
                            appended.fetch_add(store.append(events)?.len() as u64, Ordering::Relaxed);
                        }
                        Ok(())
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| w.join().map_err(|_| anyhow!("an appender panicked"))?)
        })?;
        Ok(appended.into_inner())
    }))
}

/// A bare SQLite file with warden's durability (`journal_mode=WAL`, `synchronous=FULL`): the
/// reference every journal figure is compared with.
pub(crate) fn open_raw_sqlite(path: &Path) -> Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!("raw SQLite file is not in WAL mode ({mode})");
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Rows into a bare SQLite file with warden's durability (`journal_mode=WAL`,
/// `synchronous=FULL`) and warden's `events` table, one thread, `per_tx` rows per transaction.
/// Every row has exactly the bytes of a sealed sample event, so the ratio is warden's own cost.
fn raw_case(per_tx: usize) -> Result<JournalCase> {
    let dir = tempfile::tempdir()?;
    let mut conn = open_raw_sqlite(&dir.path().join("raw.db"))?;
    conn.execute_batch(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, subject TEXT, hash TEXT NOT NULL, body BLOB NOT NULL);
         CREATE INDEX events_subject_seq ON events (subject, seq);",
    )?;
    let sealed = CloudEvent::seal(&sample_event(1, Some(JOURNAL_SUBJECT)), 1, GENESIS_HASH);
    let body = sealed.canonical_bytes();
    let hash = sha256_hex(&body);
    let mut seq: i64 = 0;
    Ok(Box::new(move |slice| {
        let _keep = &dir;
        let first = seq;
        let deadline = Instant::now() + slice;
        while Instant::now() < deadline {
            // IMMEDIATE, as warden's writer does: take the write lock up front.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut insert = tx.prepare_cached("INSERT INTO events (seq, subject, hash, body) VALUES (?1, ?2, ?3, ?4)")?;
                for _ in 0..per_tx {
                    seq += 1;
                    insert.execute(rusqlite::params![seq, JOURNAL_SUBJECT, hash, body])?;
                }
            }
            tx.commit()?;
        }
        Ok((seq - first) as u64)
    }))
}
