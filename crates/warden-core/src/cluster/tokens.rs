//! Join tokens: what lets a new host enroll. An admin creates one (`warden tokens create`) with
//! a time to live and, optionally, a number of uses; the journal keeps only the SHA-256 of its
//! secret, and the token is checked here, on the control plane's clock, when a host enrolls.
//!
//! A token reads `wjt_<id>_<secret>_<pin>`: the id names it (in `warden tokens ls`, in events),
//! the secret (64 hex digits, 256 random bits, drawn by the runtime) is what proves the holder
//! was given it, and the pin (64 hex digits, optional) is the SHA-256 of the server's TLS
//! certificate, which the agent then accepts and no other (`crate::fingerprint`). Only id and
//! secret are checked here: the pin is for the agent, and a server on plain HTTP hands out
//! tokens without one. The secret is compared in constant time, and a token's state (expired, used up,
//! revoked) is told only to someone who holds its secret.

use subtle::ConstantTimeEq;

use crate::batch::Batch;
use crate::canonical::sha256_hex;
use crate::event::EventData;
use crate::fingerprint::Fingerprint;
use crate::projection::{JoinTokenState, Projection};

use super::state::{ClusterError, ClusterState, JoinTokenRefused, TokenAdminError};

/// A join token lives this long unless its creator says otherwise.
pub const DEFAULT_JOIN_TOKEN_TTL_MS: u64 = 3_600_000;
/// What every join token starts with.
pub const JOIN_TOKEN_PREFIX: &str = "wjt_";

/// The text of a join token with id `token_id` and secret `secret`, carrying the server
/// certificate's fingerprint `pin` if the server serves TLS.
pub fn format_join_token(token_id: &str, secret: &str, pin: Option<&Fingerprint>) -> String {
    match pin {
        Some(pin) => format!("{JOIN_TOKEN_PREFIX}{token_id}_{secret}_{}", pin.hex()),
        None => format!("{JOIN_TOKEN_PREFIX}{token_id}_{secret}"),
    }
}

/// Splits a presented join token into its id and secret (any pin is left out); `None` if it is
/// not shaped like one.
pub fn parse_join_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret, _) = split_join_token(token)?;
    Some((id, secret))
}

/// The server certificate's fingerprint a join token carries; `None` if it carries none (or is
/// not a token).
pub fn join_token_pin(token: &str) -> Option<Fingerprint> {
    split_join_token(token)?.2.and_then(Fingerprint::parse)
}

fn split_join_token(token: &str) -> Option<(&str, &str, Option<&str>)> {
    let mut parts = token.trim().strip_prefix(JOIN_TOKEN_PREFIX)?.split('_');
    let (id, secret, pin) = (parts.next()?, parts.next()?, parts.next());
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (parts.next().is_none() && hex(id, 8) && hex(secret, 64) && pin.is_none_or(|p| hex(p, 64))).then_some((id, secret, pin))
}

/// The longest a join token may live: a token is a key to the fleet, not a standing credential.
pub const MAX_JOIN_TOKEN_TTL_MS: u64 = 365 * 24 * 3_600_000;

impl ClusterState {
    /// An admin creates join token `token_id`, whose secret hashes to `secret_sha256`, valid for
    /// `ttl_ms` from now and at most `max_uses` enrollments.
    pub fn create_join_token(
        &mut self,
        batch: &mut Batch,
        token_id: &str,
        secret_sha256: &str,
        ttl_ms: u64,
        max_uses: Option<u32>,
        created_by: &str,
    ) -> Result<(), TokenAdminError> {
        if batch.live().join_tokens.contains_key(token_id) {
            return Err(TokenAdminError::Duplicate(token_id.to_string()));
        }
        if !(1_000..=MAX_JOIN_TOKEN_TTL_MS).contains(&ttl_ms) {
            return Err(TokenAdminError::BadTtl { ttl_ms });
        }
        if max_uses == Some(0) {
            return Err(TokenAdminError::NoUses);
        }
        batch.record(EventData::HostTokenCreated {
            token_id: token_id.to_string(),
            secret_sha256: secret_sha256.to_string(),
            expires_at_ms: batch.now_ms.saturating_add(ttl_ms),
            max_uses,
            created_by: created_by.to_string(),
        });
        Ok(())
    }

    /// An admin revokes join token `token_id` (revoking it again is not an error).
    pub fn revoke_join_token(&mut self, batch: &mut Batch, token_id: &str) -> Result<(), TokenAdminError> {
        let Some(record) = batch.live().join_tokens.get(token_id) else {
            return Err(TokenAdminError::Unknown(token_id.to_string()));
        };
        if !record.revoked {
            batch.record(EventData::HostTokenRevoked { token_id: token_id.to_string() });
        }
        Ok(())
    }

    /// A host presents `join_token` to enroll as `host` with key `principal`: the token must be
    /// live (right secret, not expired on the control plane's clock, not used up, not revoked),
    /// and the key must never have been removed. On success the enrollment and one use of the
    /// token are recorded.
    pub fn enroll_with_join_token(
        &mut self,
        batch: &mut Batch,
        host: &str,
        principal: &str,
        join_token: &str,
        channel: Option<String>,
        tags: Vec<String>,
    ) -> Result<(), ClusterError> {
        let token_id = check_join_token(batch.live(), join_token, batch.now_ms)?;
        self.enroll(batch, host, principal, channel, tags)?;
        batch.record(EventData::HostTokenUsed { token_id, host: host.to_string() });
        Ok(())
    }
}

/// The id of `join_token` if it enrolls a host at `now_ms`, or why not.
pub fn check_join_token(projection: &Projection, join_token: &str, now_ms: u64) -> Result<String, JoinTokenRefused> {
    let (token_id, secret) = parse_join_token(join_token).ok_or(JoinTokenRefused::Malformed)?;
    // An unknown id and a wrong secret are one answer: ids are listed, secrets are not.
    let record = projection.join_tokens.get(token_id);
    let expected = record.map_or("", |r| r.secret_sha256.as_str());
    let presented = sha256_hex(secret.as_bytes());
    let matches: bool = presented.as_bytes().ct_eq(expected.as_bytes()).into();
    let Some(record) = record.filter(|_| matches) else {
        return Err(JoinTokenRefused::Wrong);
    };
    let token_id = token_id.to_string();
    match record.state(now_ms) {
        JoinTokenState::Live => Ok(token_id),
        JoinTokenState::Expired => Err(JoinTokenRefused::Expired { token_id }),
        JoinTokenState::UsedUp => Err(JoinTokenRefused::UsedUp { token_id, max_uses: record.max_uses.unwrap_or(0) }),
        JoinTokenState::Revoked => Err(JoinTokenRefused::Revoked { token_id }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterConfig;

    const SECRET: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";

    fn token(id: &str) -> String {
        format_join_token(id, SECRET, None)
    }

    /// A control plane with one join token `0000000a` (ttl 60 s from t=0, `max_uses`).
    fn with_token(max_uses: Option<u32>) -> (Projection, ClusterState) {
        let mut projection = Projection::default();
        let mut cluster = ClusterState::after_restart(ClusterConfig::default(), None, &projection, 0);
        let mut batch = Batch::new(&mut projection, 0);
        cluster.create_join_token(&mut batch, "0000000a", &sha256_hex(SECRET.as_bytes()), 60_000, max_uses, "admin").unwrap();
        (projection, cluster)
    }

    fn enroll(
        projection: &mut Projection,
        cluster: &mut ClusterState,
        host: &str,
        token: &str,
        now_ms: u64,
    ) -> Result<Vec<EventData>, ClusterError> {
        let mut batch = Batch::new(projection, now_ms);
        cluster.enroll_with_join_token(&mut batch, host, &format!("key-{host}"), token, None, Vec::new())?;
        Ok(batch.events)
    }

    #[test]
    fn the_journal_holds_the_hash_of_a_token_never_its_secret() {
        let (projection, _) = with_token(None);
        let json = serde_json::to_string(&projection).unwrap();
        assert!(!json.contains(SECRET));
        assert!(json.contains(&sha256_hex(SECRET.as_bytes())));
    }

    #[test]
    fn a_host_name_channel_or_tag_that_could_redraw_a_terminal_is_refused() {
        let (mut projection, mut cluster) = with_token(None);
        for (host, channel, tag, refused) in [
            ("h\u{1b}[2J", None, "ssd", "host name"),
            ("-h", None, "ssd", "host name"),
            ("h1", Some("edge\n"), "ssd", "channel"),
            ("h1", None, "ss d", "tag"),
            ("h1", None, "a\u{7}", "tag"),
        ] {
            let mut batch = Batch::new(&mut projection, 1);
            let error = cluster
                .enroll_with_join_token(&mut batch, host, "key-h1", &token("0000000a"), channel.map(Into::into), vec![tag.into()])
                .unwrap_err();
            assert!(matches!(&error, ClusterError::BadHostLabel { reason } if reason.starts_with(refused)), "{error}");
            assert!(batch.events.is_empty(), "nothing recorded, not even a use of the token");
        }
        let events = enroll(&mut projection, &mut cluster, "web-1.eu_west", &token("0000000a"), 1).unwrap();
        assert!(matches!(&events[0], EventData::HostEnrolled { host, .. } if host == "web-1.eu_west"));
    }

    #[test]
    fn a_live_token_enrolls_and_records_one_use() {
        let (mut projection, mut cluster) = with_token(None);
        let events = enroll(&mut projection, &mut cluster, "h1", &token("0000000a"), 1_000).unwrap();
        assert!(matches!(&events[0], EventData::HostEnrolled { host, .. } if host == "h1"));
        assert_eq!(events[1], EventData::HostTokenUsed { token_id: "0000000a".into(), host: "h1".into() });
        assert_eq!(projection.join_tokens["0000000a"].n_used, 1);
    }

    #[test]
    fn a_token_is_refused_from_its_expiry_on_the_control_planes_clock() {
        let (mut projection, mut cluster) = with_token(None);
        let refused = enroll(&mut projection, &mut cluster, "h1", &token("0000000a"), 60_000).unwrap_err();
        assert_eq!(refused, ClusterError::JoinToken(JoinTokenRefused::Expired { token_id: "0000000a".into() }));
        assert!(projection.hosts.is_empty());
    }

    #[test]
    fn a_single_use_token_enrolls_one_host_then_is_used_up() {
        let (mut projection, mut cluster) = with_token(Some(1));
        enroll(&mut projection, &mut cluster, "h1", &token("0000000a"), 1).unwrap();
        let refused = enroll(&mut projection, &mut cluster, "h2", &token("0000000a"), 2).unwrap_err();
        assert_eq!(refused, ClusterError::JoinToken(JoinTokenRefused::UsedUp { token_id: "0000000a".into(), max_uses: 1 }));
    }

    #[test]
    fn a_revoked_or_wrong_or_malformed_token_is_refused() {
        let (mut projection, mut cluster) = with_token(None);
        let wrong = format_join_token("0000000a", &"0".repeat(64), None);
        let unknown = token("0000000b");
        for (presented, why) in [
            (wrong.as_str(), JoinTokenRefused::Wrong),
            (unknown.as_str(), JoinTokenRefused::Wrong),
            ("wjt-0123456789abcdef", JoinTokenRefused::Malformed),
        ] {
            assert_eq!(enroll(&mut projection, &mut cluster, "h1", presented, 1).unwrap_err(), ClusterError::JoinToken(why));
        }
        let mut batch = Batch::new(&mut projection, 2);
        cluster.revoke_join_token(&mut batch, "0000000a").unwrap();
        let refused = enroll(&mut projection, &mut cluster, "h1", &token("0000000a"), 3).unwrap_err();
        assert_eq!(refused, ClusterError::JoinToken(JoinTokenRefused::Revoked { token_id: "0000000a".into() }));
    }

    #[test]
    fn a_removed_hosts_key_never_enrolls_again_but_its_name_may_with_a_new_key() {
        let (mut projection, mut cluster) = with_token(None);
        enroll(&mut projection, &mut cluster, "h1", &token("0000000a"), 1).unwrap();
        let mut batch = Batch::new(&mut projection, 2);
        cluster.remove_host(&mut batch, "h1", "admin").unwrap();
        assert!(
            matches!(&batch.events[..], [EventData::HostRemoved { host, principal, .. }] if host == "h1" && principal == "key-h1")
        );
        assert!(projection.hosts.is_empty());
        let refused = enroll(&mut projection, &mut cluster, "h1", &token("0000000a"), 3).unwrap_err();
        assert_eq!(refused, ClusterError::KeyRemoved { host: "h1".into() });
        let mut batch = Batch::new(&mut projection, 4);
        cluster.enroll_with_join_token(&mut batch, "h1", "a-new-key", &token("0000000a"), None, Vec::new()).unwrap();
    }

    #[test]
    fn a_token_carries_the_servers_pin_and_enrolls_with_or_without_it() {
        let pin = Fingerprint::of_der(b"the server's certificate");
        let pinned = format_join_token("0000000a", SECRET, Some(&pin));
        assert_eq!(join_token_pin(&pinned), Some(pin.clone()));
        assert_eq!(parse_join_token(&pinned), Some(("0000000a", SECRET)));
        assert_eq!(join_token_pin(&token("0000000a")), None);
        assert_eq!(parse_join_token(&format!("{pinned}_{}", pin.hex())), None, "one pin at most");
        assert_eq!(parse_join_token(&format!("{}_abc", token("0000000a"))), None, "a pin is 64 hex digits");
        let (mut projection, mut cluster) = with_token(None);
        assert!(enroll(&mut projection, &mut cluster, "a", &pinned, 1_000).is_ok(), "the server checks id and secret only");
        assert!(enroll(&mut projection, &mut cluster, "b", &token("0000000a"), 1_000).is_ok(), "a token without a pin");
    }
}
