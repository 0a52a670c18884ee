//! Where a control plane is: `host[:port]` (port 7480) or `http://host[:port]` (port 80), the
//! way `--addr`, `WARDEN_ADDR` and `--server` are written.

/// warden's default port, for a server given as a bare `host` (`paths::DEFAULT_ADDR`).
pub const DEFAULT_PORT: u16 = 7480;

/// A control plane's `host:port`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    /// `host:port` or `[v6]:port`: what is connected to and sent in `Host`.
    authority: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerAddressError {
    #[error("server {server}: https is not supported yet; use http:// (every request is signed)")]
    Https { server: String },
    #[error("server {server}: only http:// URLs are supported")]
    Scheme { server: String },
    #[error("server {server}: expected http://HOST[:PORT] or HOST[:PORT], with no path")]
    Shape { server: String },
    #[error("server {server}: {port:?} is not a port")]
    Port { server: String, port: String },
}

impl ServerAddress {
    /// `server` is `http://host[:port]` (port 80 if omitted) or `host[:port]` (port 7480 if
    /// omitted), with nothing after the authority but an optional `/`.
    pub fn parse(server: &str) -> Result<ServerAddress, ServerAddressError> {
        let server = server.trim();
        let (rest, default_port) = if let Some(rest) = server.strip_prefix("http://") {
            (rest, 80)
        } else if server.starts_with("https://") {
            return Err(ServerAddressError::Https { server: server.to_string() });
        } else if server.contains("://") {
            return Err(ServerAddressError::Scheme { server: server.to_string() });
        } else {
            (server, DEFAULT_PORT)
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
            return Ok(ServerAddress { authority: format!("{authority}:{default_port}") });
        }
        let port = authority.rsplit_once(':').map(|(_, port)| port).unwrap_or_default();
        if port.parse::<u16>().is_err() {
            return Err(ServerAddressError::Port { server: server.to_string(), port: port.to_string() });
        }
        Ok(ServerAddress { authority: authority.to_string() })
    }

    /// `host:port`: how `events verify` names the server in `known_servers`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// `http://host:port`, without a trailing `/`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.authority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(server: &str) -> Result<String, ServerAddressError> {
        ServerAddress::parse(server).map(|address| address.authority().to_string())
    }

    #[test]
    fn a_server_is_host_port_with_7480_for_a_bare_host_and_80_for_an_http_url() {
        assert_eq!(authority("http://10.0.0.1:7480").unwrap(), "10.0.0.1:7480");
        assert_eq!(authority("http://server/").unwrap(), "server:80");
        assert_eq!(authority("server").unwrap(), "server:7480");
        assert_eq!(authority(" 127.0.0.1:9000 ").unwrap(), "127.0.0.1:9000");
        assert_eq!(authority("[::1]:9000").unwrap(), "[::1]:9000");
        assert_eq!(authority("http://[::1]").unwrap(), "[::1]:80");
        assert_eq!(ServerAddress::parse("server").unwrap().base_url(), "http://server:7480");
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        assert!(matches!(authority("https://server"), Err(ServerAddressError::Https { .. })));
        assert!(authority("https://server").unwrap_err().to_string().contains("https is not supported"));
        assert!(matches!(authority("ftp://server"), Err(ServerAddressError::Scheme { .. })));
        assert!(matches!(authority("http://server/prefix"), Err(ServerAddressError::Shape { .. })));
        assert!(matches!(authority("user@server"), Err(ServerAddressError::Shape { .. })));
        assert!(matches!(authority(""), Err(ServerAddressError::Shape { .. })));
        assert_eq!(authority("server:http"), Err(ServerAddressError::Port { server: "server:http".into(), port: "http".into() }));
    }
}
