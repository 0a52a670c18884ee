//! `--store` of `warden up` and `warden server`: which journal the control plane keeps — the
//! embedded SQLite file (the default), or etcd (`etcd://…`, in a binary built with `--features
//! etcd`; its client needs `protoc` to build, which a plain build of warden does not).

use anyhow::{bail, Result};
use warden_runtime::Journal;

/// The prefix of warden's keys in etcd when the URL names none.
const DEFAULT_PREFIX: &str = "/warden";

/// A parsed `--store` value.
#[derive(Debug, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite,
    /// `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]`.
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
}

pub fn parse(text: &str) -> Result<StoreUrl> {
    if text == "sqlite" {
        return Ok(StoreUrl::Sqlite);
    }
    let Some(rest) = text.strip_prefix("etcd://") else {
        bail!("--store {text:?}: expected `sqlite` or `etcd://HOST:PORT[,HOST:PORT…][/PREFIX]`");
    };
    let (hosts, prefix) = match rest.find('/') {
        Some(at) => (&rest[..at], rest[at..].trim_end_matches('/').to_string()),
        None => (rest, DEFAULT_PREFIX.to_string()),
    };
    if prefix.is_empty() || prefix.chars().any(|c| c.is_control() || c.is_whitespace()) {
        bail!("--store {text:?}: the key prefix must be a path such as /warden");
    }
    let mut endpoints = Vec::new();
    for host in hosts.split(',') {
        let Ok(addr) = host.parse::<std::net::SocketAddr>() else {
            bail!("--store {text:?}: {host:?} is not an IP:PORT (one per etcd member, comma-separated)");
        };
        // The etcd client speaks plain gRPC today: only where nothing crosses a network.
        if !addr.ip().is_loopback() {
            bail!(
                "--store {text:?}: {addr} is not a loopback address; warden's etcd client does not speak TLS yet, \
                 so it reaches only etcd members on this machine"
            );
        }
        endpoints.push(format!("http://{addr}"));
    }
    Ok(StoreUrl::Etcd { endpoints, prefix })
}

/// Opens the journal `url` names (SQLite is opened by the server itself, in its data dir).
pub fn open(url: StoreUrl) -> Result<Journal> {
    match url {
        StoreUrl::Sqlite => Ok(Journal::Sqlite),
        StoreUrl::Etcd { endpoints, prefix } => open_etcd(endpoints, prefix),
    }
}

#[cfg(feature = "etcd")]
fn open_etcd(endpoints: Vec<String>, prefix: String) -> Result<Journal> {
    use anyhow::Context;
    let name =
        format!("etcd://{}{prefix}", endpoints.iter().map(|e| e.trim_start_matches("http://")).collect::<Vec<_>>().join(","));
    let (store, report) =
        warden_etcd::EtcdStore::open(&endpoints, &prefix, None).with_context(|| format!("cannot open the journal {name}"))?;
    Ok(Journal::Opened { store: std::sync::Arc::new(store), report, name })
}

#[cfg(not(feature = "etcd"))]
fn open_etcd(_endpoints: Vec<String>, _prefix: String) -> Result<Journal> {
    bail!("this warden was built without etcd support: build it with `cargo build --release --features etcd` (needs protobuf-compiler)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_or_say_why_not() {
        assert_eq!(parse("sqlite").unwrap(), StoreUrl::Sqlite);
        assert_eq!(
            parse("etcd://127.0.0.1:2379,127.0.0.1:22379/team/warden/").unwrap(),
            StoreUrl::Etcd {
                endpoints: vec!["http://127.0.0.1:2379".into(), "http://127.0.0.1:22379".into()],
                prefix: "/team/warden".into()
            }
        );
        assert_eq!(
            parse("etcd://[::1]:2379").unwrap(),
            StoreUrl::Etcd { endpoints: vec!["http://[::1]:2379".into()], prefix: "/warden".into() }
        );
        for (bad, why) in [
            ("postgres://x", "expected `sqlite` or `etcd://"),
            ("etcd://h1:2379", "is not an IP:PORT"),
            ("etcd://10.0.0.1:2379", "does not speak TLS yet"),
            ("etcd://127.0.0.1:2379/", "prefix must be a path"),
        ] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }
}
