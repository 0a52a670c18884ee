//! TLS: the server's certificate (made at the first start, or the operator's own), the rustls
//! configurations of the listener and of the client, and the pins clients keep.
//!
//! The certificate is self-signed and trusted by its fingerprint (`warden_core::fingerprint`),
//! not through a certificate authority: the join token carries it to agents, `warden up` writes
//! it for the local CLI, and the CLI pins any other server on first use (`known_tls`). Operators
//! who put a real certificate in place (`--tls-cert/--tls-key`) give clients `--ca FILE`, which
//! is verified the usual way (chain and name). Request signing stays what identifies a caller;
//! TLS adds secrecy and tells clients they talk to the right server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use warden_core::fingerprint::Fingerprint;

/// In the data dir: the generated certificate (PEM, 0644), its key (PEM, 0600), and the
/// certificate's fingerprint (`sha256:<hex>`, 0644).
pub const TLS_DIR: &str = "tls";
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";
pub const FINGERPRINT_FILE: &str = "fingerprint";

/// The one crypto provider: ring (aws-lc-rs needs cmake and a long C build). rustls deprecates
/// it for want of post-quantum key exchange; classical ECDHE is what this protects with.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How the server serves: TLS with a generated certificate (its extra names), TLS with the
/// operator's files, or plain HTTP (loopback only).
#[derive(Clone, Debug)]
pub enum TlsSetup {
    /// `<data-dir>/tls/cert.pem`, made at the first start with these names beside the usual
    /// ones (`--tls-san`), and reused after.
    Generate { extra_names: Vec<String> },
    /// The operator's certificate chain and key (`--tls-cert`, `--tls-key`), PEM.
    Files { cert: PathBuf, key: PathBuf },
    /// `--insecure-http`: no TLS.
    InsecureHttp,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot use {path}")]
    File { path: String, source: std::io::Error },
    #[error("{path} holds no {what} in PEM")]
    Pem { path: String, what: &'static str },
    #[error("cannot make the server's certificate: {0}")]
    Generate(String),
    #[error("the certificate or key is unusable: {0}")]
    Config(#[from] rustls::Error),
    #[error(
        "--insecure-http serves plain HTTP, which is refused on {addr}: only a loopback address (127.0.0.1, ::1) may \
         go without TLS; drop --insecure-http (TLS is set up by itself) or listen on 127.0.0.1"
    )]
    InsecureNotLoopback { addr: SocketAddr },
}

/// The listener's TLS: the rustls configuration, and what clients pin.
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub fingerprint: Fingerprint,
    /// The leaf certificate's file, for `curl --cacert` and `--ca`.
    pub cert_path: PathBuf,
    /// Made at this start.
    pub generated: bool,
}

/// The listener's TLS per `setup`, or `None` for plain HTTP (refused unless `listen` is a
/// loopback address). A generated certificate names `localhost`, `127.0.0.1`, `::1`, the listen
/// address if specific, `hostname`, and the extra names.
pub fn server_tls(data_dir: &Path, listen: SocketAddr, hostname: &str, setup: &TlsSetup) -> Result<Option<ServerTls>, TlsError> {
    let dir = data_dir.join(TLS_DIR);
    let file_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| TlsError::File { path, source }
    };
    let (cert_path, key_path, generated) = match setup {
        TlsSetup::InsecureHttp if listen.ip().is_loopback() => return Ok(None),
        TlsSetup::InsecureHttp => return Err(TlsError::InsecureNotLoopback { addr: listen }),
        TlsSetup::Files { cert, key } => (cert.clone(), key.clone(), false),
        TlsSetup::Generate { extra_names } => {
            let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
            std::fs::create_dir_all(&dir).map_err(file_err(&dir))?;
            let generated = !(cert.exists() && key.exists());
            if generated {
                let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
                if !listen.ip().is_unspecified() {
                    names.push(listen.ip().to_string());
                }
                names.push(hostname.to_string());
                names.extend(extra_names.iter().cloned());
                let mut unique = Vec::new();
                for name in names {
                    if !name.is_empty() && !unique.contains(&name) {
                        unique.push(name);
                    }
                }
                let (cert_pem, key_pem) = generate(unique)?;
                write_file(&key, key_pem.as_bytes(), 0o600).map_err(file_err(&key))?;
                write_file(&cert, cert_pem.as_bytes(), 0o644).map_err(file_err(&cert))?;
            }
            (cert, key, generated)
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| pem_error(&cert_path, e, "certificate"))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(&cert_path, e, "certificate"))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::Pem { path: cert_path.display().to_string(), what: "certificate" });
    };
    let fingerprint = Fingerprint::of_der(leaf);
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| pem_error(&key_path, e, "private key"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // Agents open a fresh connection per request (`agent::http`): session tickets let them
    // resume instead of a full handshake each time, however many agents there are (the
    // default session cache holds 256).
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    std::fs::create_dir_all(&dir).map_err(file_err(&dir))?;
    let fingerprint_path = dir.join(FINGERPRINT_FILE);
    write_file(&fingerprint_path, format!("{fingerprint}\n").as_bytes(), 0o644).map_err(file_err(&fingerprint_path))?;
    Ok(Some(ServerTls { config: Arc::new(config), fingerprint, cert_path, generated }))
}

fn pem_error(path: &Path, error: rustls::pki_types::pem::Error, what: &'static str) -> TlsError {
    match error {
        rustls::pki_types::pem::Error::Io(source) => TlsError::File { path: path.display().to_string(), source },
        _ => TlsError::Pem { path: path.display().to_string(), what },
    }
}

/// A self-signed ECDSA P-256 certificate for `names` (DNS names or IP addresses), and its key,
/// both PEM.
fn generate(names: Vec<String>) -> Result<(String, String), TlsError> {
    let err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut params = rcgen::CertificateParams::new(names).map_err(err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "warden server");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `bytes` to `path` with `mode` whatever the umask, replacing it atomically.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Whom a client trusts with `https://`.
#[derive(Clone, Debug)]
pub enum ServerTrust {
    /// Only a server whose leaf certificate has this fingerprint (names are not checked: the pin
    /// names the server).
    Pinned(Fingerprint),
    /// Certificates that chain to one of these (`--ca FILE`), for the server's name.
    Roots(Vec<CertificateDer<'static>>),
    /// None: `https://` cannot be used (an explicit `http://` can).
    Nobody,
}

impl ServerTrust {
    /// The certificates in the PEM file `path` (`--ca`).
    pub fn ca_file(path: &Path) -> Result<ServerTrust, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| pem_error(path, e, "certificate"))?
            .collect::<Result<_, _>>()
            .map_err(|e| pem_error(path, e, "certificate"))?;
        if certs.is_empty() {
            return Err(TlsError::Pem { path: path.display().to_string(), what: "certificate" });
        }
        Ok(ServerTrust::Roots(certs))
    }
}

/// A client configuration that trusts no certificate: for reqwest clients that speak plain HTTP
/// only (reqwest needs one, or a process-wide default provider, to be built at all).
pub fn trusts_nobody() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// The rustls client configuration for `trust`, or `None` for `ServerTrust::Nobody`.
pub fn client_config(trust: &ServerTrust) -> Result<Option<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let config = match trust {
        ServerTrust::Nobody => return Ok(None),
        ServerTrust::Pinned(fingerprint) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier { pin: Some(fingerprint.clone()), provider: provider() }))
            .with_no_client_auth(),
        ServerTrust::Roots(certs) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs {
                roots.add(cert.clone())?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Some(config))
}

/// What a pinned client accepts: exactly the leaf certificate whose fingerprint is `pin` (with
/// the handshake's signatures verified as usual); with no pin, any certificate (only to read a
/// server's fingerprint for trust on first use, `probe_fingerprint`, with nothing sent).
#[derive(Debug)]
struct PinVerifier {
    pin: Option<Fingerprint>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of_der(end_entity);
        match &self.pin {
            Some(pin) if *pin != presented => Err(rustls::Error::General(format!(
                "the server's TLS certificate is {presented}, not the pinned {pin}: it is another server, or its \
                 certificate changed"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The fingerprint of the certificate the server at `authority` (`host:port`) presents: a TLS
/// handshake and nothing more, for trust on first use.
pub async fn probe_fingerprint(authority: &str, host: &str, timeout: std::time::Duration) -> Result<Fingerprint, String> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinVerifier { pin: None, provider: provider() }))
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host:?} is not a server name: {e}"))?;
    let handshake = async {
        let stream =
            tokio::net::TcpStream::connect(authority).await.map_err(|e| format!("cannot connect to {authority}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .map_err(|e| format!("no TLS handshake with {authority}: {e}"))?;
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or("the server sent no certificate")?;
        Ok(Fingerprint::of_der(leaf))
    };
    tokio::time::timeout(timeout, handshake).await.map_err(|_| format!("no TLS handshake with {authority} within {timeout:?}"))?
}

/// The pin `known_tls` (`<host:port> sha256:<hex>` per line) holds for `authority`.
pub fn known_pin(known_tls: &Path, authority: &str) -> std::io::Result<Option<Fingerprint>> {
    let text = match std::fs::read_to_string(known_tls) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(text.lines().find_map(|line| {
        let (address, pin) = line.trim().split_once(char::is_whitespace)?;
        (address == authority).then(|| Fingerprint::parse(pin)).flatten()
    }))
}

/// Pins `fingerprint` for each of `authorities` in `known_tls`, replacing their older lines.
pub fn remember_pins(known_tls: &Path, authorities: &[String], fingerprint: &Fingerprint) -> std::io::Result<()> {
    let text = match std::fs::read_to_string(known_tls) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut lines: Vec<String> = text
        .lines()
        .filter(|line| !line.split_whitespace().next().is_some_and(|address| authorities.iter().any(|a| a == address)))
        .map(str::to_string)
        .collect();
    lines.extend(authorities.iter().map(|authority| format!("{authority} {fingerprint}")));
    if let Some(dir) = known_tls.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_file(known_tls, (lines.join("\n") + "\n").as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_is_reused_and_plain_http_is_loopback_only() {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "0.0.0.0:7480".parse().unwrap();
        let setup = TlsSetup::Generate { extra_names: vec!["warden.example".into(), "10.1.2.3".into()] };
        let first = server_tls(dir.path(), listen, "node-1", &setup).unwrap().unwrap();
        assert!(first.generated);
        let again = server_tls(dir.path(), listen, "node-1", &setup).unwrap().unwrap();
        assert!(!again.generated);
        assert_eq!(first.fingerprint, again.fingerprint, "same certificate across restarts");
        let written = std::fs::read_to_string(dir.path().join("tls/fingerprint")).unwrap();
        assert_eq!(written.trim(), first.fingerprint.to_string());
        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &str| std::fs::metadata(dir.path().join("tls").join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(KEY_FILE), mode(CERT_FILE)), (0o600, 0o644));
        let der = CertificateDer::from_pem_file(dir.path().join("tls/cert.pem")).unwrap();
        assert_eq!(Fingerprint::of_der(&der), first.fingerprint);

        assert!(server_tls(dir.path(), "127.0.0.1:7480".parse().unwrap(), "n", &TlsSetup::InsecureHttp).unwrap().is_none());
        let refused = server_tls(dir.path(), listen, "n", &TlsSetup::InsecureHttp).err().unwrap();
        assert!(refused.to_string().contains("refused on 0.0.0.0:7480"), "{refused}");
    }

    #[test]
    fn known_tls_keeps_one_pin_per_address() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_tls");
        let (a, b) = (Fingerprint::of_der(b"a"), Fingerprint::of_der(b"b"));
        assert_eq!(known_pin(&file, "h:1").unwrap(), None);
        remember_pins(&file, &["h:1".into(), "h:2".into()], &a).unwrap();
        remember_pins(&file, &["h:2".into()], &b).unwrap();
        assert_eq!(known_pin(&file, "h:1").unwrap(), Some(a));
        assert_eq!(known_pin(&file, "h:2").unwrap(), Some(b));
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 2);
    }

    /// A pinned client's second connection resumes the session: no full handshake per request
    /// for agents, which open a connection for each.
    #[tokio::test]
    async fn a_pinned_client_resumes_its_session_on_the_next_connection() {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let setup = TlsSetup::Generate { extra_names: Vec::new() };
        let tls = server_tls(dir.path(), addr, "n", &setup).unwrap().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    if let Ok(mut stream) = acceptor.accept(stream).await {
                        let _ = stream.write_all(b"hello").await;
                        let _ = stream.shutdown().await;
                    }
                });
            }
        });
        let config = Arc::new(client_config(&ServerTrust::Pinned(tls.fingerprint.clone())).unwrap().unwrap());
        let mut kinds = Vec::new();
        for _ in 0..2 {
            use tokio::io::AsyncReadExt;
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let mut stream = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await.unwrap();
            let mut text = Vec::new();
            stream.read_to_end(&mut text).await.unwrap();
            assert_eq!(text, b"hello");
            kinds.push(stream.get_ref().1.handshake_kind());
        }
        assert_eq!(kinds, [Some(rustls::HandshakeKind::Full), Some(rustls::HandshakeKind::Resumed)]);
    }
}
