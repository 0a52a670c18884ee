//! The check `EtcdStore::open` runs: the hash chain from the latest snapshot (or seq 1) up to the
//! head key, with the per-event checks shared with SQLite (`warden_store::check_stored_event`).
//! Damaged committed history is refused and changes nothing; only a torn, unacknowledged tail
//! past the head is cut.

use etcd_client::{DeleteOptions, GetOptions, SortOrder, SortTarget, TxnOp};
use warden_core::canonical::sha256_hex;
use warden_core::CloudEvent;
use warden_store::{check_stored_event, Head, OpenReport, StoreError, StoreOperation};

use crate::conn::{Etcd, Outcome};
use crate::layout::SnapshotPointer;

/// How many events one read of the walk takes.
const PAGE: i64 = 1000;

/// What `open` found and did.
pub(crate) struct Opened {
    pub report: OpenReport,
    /// The head key's mod revision (0: none yet), which the writer's first append compares.
    pub head_revision: i64,
    /// How many event keys past the head (a torn, unacknowledged tail) were deleted.
    pub torn_cut: u64,
}

/// Verifies the chain up to the head; then, and only then, deletes event keys past the head.
pub(crate) async fn check_at_open(etcd: &Etcd) -> Result<Opened, StoreError> {
    let op = StoreOperation::VerifyChain;
    let layout = &etcd.layout;
    let (record, head_revision) = etcd.read_head(op).await?;
    let head: Head = record.map_or_else(Head::genesis, Head::from);

    let pointer = etcd.get(op, &layout.snapshot_pointer(), None).await?;
    let snapshot = match pointer.first() {
        None => None,
        Some(kv) => Some(
            serde_json::from_slice::<SnapshotPointer>(kv.value())
                .map_err(|e| StoreError::Corrupt { seq: 0, reason: format!("the snapshot pointer is not one ({e})") })?
                .seq,
        ),
    };
    let anchor = match snapshot.filter(|&seq| seq > 0 && seq <= head.seq) {
        None => Head::genesis(),
        Some(seq) => match etcd.get(op, &layout.event(seq), None).await?.first() {
            Some(kv) => Head { seq, hash: sha256_hex(kv.value()) },
            // The snapshot's event is gone: check everything, which finds the gap.
            None => Head::genesis(),
        },
    };
    let verified_from_seq = anchor.seq + 1;

    let damage = match find_damage(etcd, &head, anchor).await? {
        Some(damage) => Some(damage),
        None => snapshot.filter(|&seq| seq > head.seq).map(|seq| {
            let reason = format!(
                "the latest snapshot is as of seq {seq}, past the last event {}: committed events after it are gone",
                head.seq
            );
            (head.seq + 1, reason)
        }),
    };
    if let Some((seq, reason)) = damage {
        let (n_from_seq, last_seq) = stored_from(etcd, seq, head.seq).await?;
        return Err(StoreError::CorruptHistory { journal: etcd.journal(), seq, reason, last_seq, n_from_seq });
    }

    // Keys past the head are an append that never moved the head: never acknowledged.
    let tail = GetOptions::new().with_range(layout.events_end()).with_count_only();
    let torn_cut = etcd.get_count(StoreOperation::Open, &layout.event(head.seq + 1), tail).await?;
    if torn_cut > 0 {
        let delete = TxnOp::delete(layout.event(head.seq + 1), Some(DeleteOptions::new().with_range(layout.events_end())));
        match etcd.guarded_txn(StoreOperation::Open, Some(head_revision), vec![delete]).await? {
            Outcome::Applied { .. } => {}
            Outcome::HeadMoved { head: found, .. } => {
                return Err(StoreError::HeadMoved { expected_seq: head.seq, found_seq: found.map_or(0, |f| f.seq) })
            }
        }
    }
    Ok(Opened { report: OpenReport { head, verified_from_seq }, head_revision, torn_cut })
}

/// Walks the events after `anchor` up to `head`: the first seq the chain cannot vouch for, and
/// why, if there is one.
///
/// The stored value is the event's canonical bytes alone, so an event's hash is computed, and a
/// changed body that still parses is caught by the *next* event's `prevhash` (or by the head
/// key, for the last event). When event `n`'s `prevhash` does not match event `n - 1`, the next
/// link tells which of the two changed: if `n`'s own hash is what `n + 1` (or the head) names,
/// `n` is intact and `n - 1` is the damaged one.
async fn find_damage(etcd: &Etcd, head: &Head, anchor: Head) -> Result<Option<(u64, String)>, StoreError> {
    let op = StoreOperation::VerifyChain;
    let layout = &etcd.layout;
    let mut last_good = anchor;
    while last_good.seq < head.seq {
        let page = GetOptions::new().with_range(layout.event(head.seq + 1)).with_limit(PAGE);
        let kvs = etcd.get(op, &layout.event(last_good.seq + 1), Some(page)).await?;
        if kvs.is_empty() {
            break;
        }
        for kv in &kvs {
            let Some(seq) = layout.seq_of(kv.key()) else { continue };
            match check_stored_event(last_good.seq + 1, &last_good.hash, seq, kv.value()) {
                Ok(hash) => last_good = Head { seq, hash },
                Err(broken) if broken.prevhash_mismatch && seq > 1 => {
                    let vouched = if seq == head.seq {
                        Some(head.hash.clone())
                    } else {
                        let next = etcd.get(op, &layout.event(seq + 1), None).await?;
                        next.first()
                            .and_then(|kv| serde_json::from_slice::<CloudEvent>(kv.value()).ok())
                            .map(|event| event.prevhash)
                    };
                    if vouched.as_deref() == Some(sha256_hex(kv.value()).as_str()) {
                        let reason = format!("event {}: hash does not match the prevhash of event {seq}", seq - 1);
                        return Ok(Some((seq - 1, reason)));
                    }
                    return Ok(Some((broken.seq, broken.reason)));
                }
                Err(broken) => return Ok(Some((broken.seq, broken.reason))),
            }
        }
    }
    if last_good.seq < head.seq {
        let seq = last_good.seq + 1;
        return Ok(Some((seq, format!("event {seq} is missing: the head is at seq {}", head.seq))));
    }
    if last_good.hash != head.hash {
        return Ok(Some((head.seq, format!("event {}: hash does not match the journal's head", head.seq))));
    }
    Ok(None)
}

/// How many events are stored from `seq` to `head`, and the highest seq stored up to `head`.
async fn stored_from(etcd: &Etcd, seq: u64, head: u64) -> Result<(u64, u64), StoreError> {
    let op = StoreOperation::VerifyChain;
    let layout = &etcd.layout;
    let end = layout.event(head + 1);
    let n = etcd.get_count(op, &layout.event(seq), GetOptions::new().with_range(end.clone()).with_count_only()).await?;
    let last = GetOptions::new().with_range(end).with_keys_only().with_limit(1).with_sort(SortTarget::Key, SortOrder::Descend);
    let kvs = etcd.get(op, &layout.events_start(), Some(last)).await?;
    let last_seq = kvs.first().and_then(|kv| layout.seq_of(kv.key())).unwrap_or(0);
    Ok((n, last_seq))
}
