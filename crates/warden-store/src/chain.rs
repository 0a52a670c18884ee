//! Hash-chain checks: over events in memory (`verify_chain`) and over stored rows at open.

use warden_core::canonical::sha256_hex;
use warden_core::CloudEvent;

/// Checks that `events` continue a chain whose last hash is `prev_hash`: each event's
/// `prevhash` is the hash of the one before it (the first's is `prev_hash`) and their `seq`s
/// are consecutive. Says which event broke the chain, and how.
pub fn verify_chain(events: &[CloudEvent], prev_hash: &str) -> Result<(), String> {
    let mut prev = prev_hash.to_string();
    let mut prev_seq: Option<u64> = None;
    for event in events {
        if let Some(p) = prev_seq {
            if event.seq != p + 1 {
                return Err(format!("gap: expected {}, found {}", p + 1, event.seq));
            }
        }
        if event.prevhash != prev {
            return Err(prevhash_mismatch(event.seq));
        }
        prev = event.hash();
        prev_seq = Some(event.seq);
    }
    Ok(())
}

fn prevhash_mismatch(seq: u64) -> String {
    if seq <= 1 {
        format!("event {seq}: prevhash is not the genesis hash")
    } else {
        format!("event {seq}: prevhash does not match event {}", seq - 1)
    }
}

/// One stored row, as read back at open.
pub(crate) struct StoredRow<'a> {
    pub seq: u64,
    pub subject: Option<&'a str>,
    pub hash: &'a str,
    pub body: &'a [u8],
}

/// Checks that `row` is the event that must come next after (`expected_seq - 1`, `prev_hash`).
///
/// Every way a row can be wrong is checked, because the chain is only as strong as its weakest
/// link: the stored hash must cover the body, the body must be the canonical form of an event
/// that says it is this `seq` and points at the previous hash, and the `subject` column (which
/// filtered reads use) must agree with the body.
pub(crate) fn check_row(expected_seq: u64, prev_hash: &str, row: &StoredRow) -> Result<(), String> {
    let seq = row.seq;
    if seq != expected_seq {
        return Err(format!("gap: expected {expected_seq}, found {seq}"));
    }
    if sha256_hex(row.body) != row.hash {
        return Err(format!("event {seq}: hash mismatch"));
    }
    let event: CloudEvent = serde_json::from_slice(row.body).map_err(|e| format!("event {seq}: body is not an event: {e}"))?;
    if event.seq != seq {
        return Err(format!("event {seq}: body says seq {}", event.seq));
    }
    if event.prevhash != prev_hash {
        return Err(prevhash_mismatch(seq));
    }
    // A body can parse and hash correctly yet not be what `seal` produced (reordered keys,
    // unknown fields, whitespace); then its hash is not the event's hash and the chain lies.
    if event.canonical_bytes() != row.body {
        return Err(format!("event {seq}: body is not in canonical form"));
    }
    if event.subject.as_deref() != row.subject {
        return Err(format!("event {seq}: subject column does not match the body"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_core::event::GENESIS_HASH;
    use warden_core::{EventData, NewEvent};

    fn chain(n: u64) -> Vec<CloudEvent> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let new = NewEvent {
                    id: format!("e{seq}"),
                    source: "/test".into(),
                    time_ms: seq,
                    subject: Some("w".into()),
                    data: EventData::WorkloadCompleted { workload_id: "w".into() },
                };
                let event = CloudEvent::seal(&new, seq, &prev);
                prev = event.hash();
                event
            })
            .collect()
    }

    #[test]
    fn accepts_a_sealed_chain_and_its_suffixes() {
        let events = chain(5);
        assert_eq!(verify_chain(&events, GENESIS_HASH), Ok(()));
        assert_eq!(verify_chain(&events[2..], &events[1].hash()), Ok(()));
        assert_eq!(verify_chain(&[], "anything"), Ok(()));
    }

    #[test]
    fn names_the_broken_link() {
        let mut events = chain(5);
        assert_eq!(verify_chain(&events, &events[0].hash()), Err("event 1: prevhash is not the genesis hash".into()));
        events[2].id = "tampered".into();
        assert_eq!(verify_chain(&events, GENESIS_HASH), Err("event 4: prevhash does not match event 3".into()));
        let mut events = chain(5);
        events.remove(2);
        assert_eq!(verify_chain(&events, GENESIS_HASH), Err("gap: expected 3, found 4".into()));
    }

    #[test]
    fn check_row_catches_each_kind_of_damage() {
        let events = chain(2);
        let body = events[1].canonical_bytes();
        let hash = sha256_hex(&body);
        let prev = events[0].hash();
        let good = StoredRow { seq: 2, subject: Some("w"), hash: &hash, body: &body };
        assert_eq!(check_row(2, &prev, &good), Ok(()));
        assert_eq!(check_row(1, &prev, &good), Err("gap: expected 1, found 2".into()));
        assert_eq!(check_row(2, GENESIS_HASH, &good), Err("event 2: prevhash does not match event 1".into()));
        let wrong_subject = StoredRow { subject: None, ..good };
        assert_eq!(check_row(2, &prev, &wrong_subject), Err("event 2: subject column does not match the body".into()));

        let mut flipped = body.clone();
        flipped[10] ^= 1;
        let row = StoredRow { seq: 2, subject: Some("w"), hash: &hash, body: &flipped };
        assert_eq!(check_row(2, &prev, &row), Err("event 2: hash mismatch".into()));

        // Pretty-printed: same event, valid hash of the bytes, but not the canonical bytes.
        let pretty = serde_json::to_vec_pretty(&events[1]).unwrap();
        let pretty_hash = sha256_hex(&pretty);
        let row = StoredRow { seq: 2, subject: Some("w"), hash: &pretty_hash, body: &pretty };
        assert_eq!(check_row(2, &prev, &row), Err("event 2: body is not in canonical form".into()));

        let torn = &body[..body.len() / 2];
        let torn_hash = sha256_hex(torn);
        let row = StoredRow { seq: 2, subject: Some("w"), hash: &torn_hash, body: torn };
        assert!(check_row(2, &prev, &row).unwrap_err().starts_with("event 2: body is not an event"));
    }
}
