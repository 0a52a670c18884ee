//! Where a control plane is: `host[:port]` (TLS, port 7480), `https://host[:port]` (port 443)
//! or `http://host[:port]` (plain HTTP, port 80; only when written so), the way `--addr`,
//! `WARDEN_ADDR` and `--server` are written.

/// warden's default port, for a server given as a bare `host` (`paths::DEFAULT_ADDR`).
pub const DEFAULT_PORT: u16 = 7480;

/// A control plane's `host:port`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    /// `host:port` or `[v6]:port`: what is connected to and sent in `Host`.
    authority: String,
    /// Over TLS (`https://`, or no scheme): every address but an explicit `http://`.
    tls: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerAddressError {
    #[error("server {server}: only https:// and http:// URLs are supported")]
    Scheme { server: String },
    #[error("server {server}: expected HOST[:PORT], https://HOST[:PORT] or http://HOST[:PORT], with no path")]
    Shape { server: String },
    #[error("server {server}: {port:?} is not a port")]
    Port { server: String, port: String },
}

impl ServerAddress {
    /// `server` is `host[:port]` (TLS, port 7480 if omitted), `https://host[:port]` (port 443
    /// if omitted) or `http://host[:port]` (plain HTTP, port 80 if omitted), with nothing after
    /// the authority but an optional `/`.
    pub fn parse(server: &str) -> Result<ServerAddress, ServerAddressError> {
        let server = server.trim();
        let (rest, default_port, tls) = if let Some(rest) = server.strip_prefix("http://") {
            (rest, 80, false)
        } else if let Some(rest) = server.strip_prefix("https://") {
            (rest, 443, true)
        } else if server.contains("://") {
            return Err(ServerAddressError::Scheme { server: server.to_string() });
        } else {
            (server, DEFAULT_PORT, true)
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '@', '?', '#']) {
            return Err(ServerAddressError::Shape { server: server.to_string() });
        }
        // `host:port`, `[v6]:port`, or a host without a port.
        let has_port = match authority.rfind(']') {
            Some(bracket) => authority[bracket..].contains(':'),
            None => authority.contains(':'),
        };
        if !has_port {
            return Ok(ServerAddress { authority: format!("{authority}:{default_port}"), tls });
        }
        let port = authority.rsplit_once(':').map(|(_, port)| port).unwrap_or_default();
        if port.parse::<u16>().is_err() {
            return Err(ServerAddressError::Port { server: server.to_string(), port: port.to_string() });
        }
        Ok(ServerAddress { authority: authority.to_string(), tls })
    }

    /// Whether requests go over TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// The host without the port (and without an IPv6 address's brackets): the TLS server name.
    pub fn host(&self) -> &str {
        let host = self.authority.rsplit_once(':').map_or(self.authority.as_str(), |(host, _)| host);
        host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
    }

    /// `host:port`: how `events verify` names the server in `known_servers`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// `https://host:port` (or `http://`), without a trailing `/`.
    pub fn base_url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.authority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(server: &str) -> Result<String, ServerAddressError> {
        ServerAddress::parse(server).map(|address| address.authority().to_string())
    }

    #[test]
    fn a_server_is_host_port_over_tls_unless_http_is_written() {
        assert_eq!(authority("http://10.0.0.1:7480").unwrap(), "10.0.0.1:7480");
        assert_eq!(authority("http://server/").unwrap(), "server:80");
        assert_eq!(authority("server").unwrap(), "server:7480");
        assert_eq!(authority(" 127.0.0.1:9000 ").unwrap(), "127.0.0.1:9000");
        assert_eq!(authority("[::1]:9000").unwrap(), "[::1]:9000");
        assert_eq!(authority("http://[::1]").unwrap(), "[::1]:80");
        assert_eq!(ServerAddress::parse("server").unwrap().base_url(), "https://server:7480");
        assert_eq!(ServerAddress::parse("https://server").unwrap().base_url(), "https://server:443");
        assert_eq!(ServerAddress::parse("http://server:7480").unwrap().base_url(), "http://server:7480");
        assert!(!ServerAddress::parse("http://server").unwrap().tls());
        assert_eq!(ServerAddress::parse("[::1]:9000").unwrap().host(), "::1");
        assert_eq!(ServerAddress::parse("https://server.example:9000").unwrap().host(), "server.example");
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        assert!(matches!(authority("ftp://server"), Err(ServerAddressError::Scheme { .. })));
        assert!(matches!(authority("http://server/prefix"), Err(ServerAddressError::Shape { .. })));
        assert!(matches!(authority("user@server"), Err(ServerAddressError::Shape { .. })));
        assert!(matches!(authority(""), Err(ServerAddressError::Shape { .. })));
        assert_eq!(authority("server:http"), Err(ServerAddressError::Port { server: "server:http".into(), port: "http".into() }));
    }
}
