//! TLS by default, end to end: the listener speaks only TLS (a plaintext request gets no
//! answer), its certificate names the server's addresses and survives restarts, agents pin it
//! from their join token, the CLI pins it on first use and refuses a changed one, and plain HTTP
//! (`--insecure-http`) is served on loopback only.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::cluster::{Agent, ControlPlane};
use crate::support::{bin, unsigned_client, Warden};

fn fingerprint(warden: &Warden) -> String {
    std::fs::read_to_string(warden.data_dir().join("tls/fingerprint")).unwrap().trim().to_string()
}

/// `warden ARGS` against `addr` with the config dir `config_home` (its admin key, its pins).
fn cli_with(config_home: &Path, addr: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("WARDEN_ADDR", addr)
        .env("XDG_CONFIG_HOME", config_home)
        .env_remove("WARDEN_CA")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn curl_health(cacert: &Path, url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(cacert)
        .arg(url)
        .output()
        .expect("curl is needed by this test (apt-get install curl)");
    assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_listener_speaks_only_tls_with_a_certificate_that_names_it_and_outlives_restarts() {
    let mut warden = Warden::start();
    let port = warden.addr().rsplit_once(':').unwrap().1.to_string();
    let pin = fingerprint(&warden);
    assert!(warden.up_log().contains(&format!("tls          {pin}")), "the banner shows the fingerprint: {}", warden.up_log());

    // A plaintext request: the handshake fails, no HTTP answer, the connection is closed.
    let mut stream = std::net::TcpStream::connect(warden.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains("HTTP/1.1"), "plaintext got an HTTP answer: {answer:?}");
    assert!(!answer.contains("\"ok\""), "plaintext got the health answer: {answer:?}");
    let (ok, _, err) = cli_with(&warden.config_home(), &format!("http://{}", warden.addr()), &["ps"]);
    assert!(!ok, "the CLI in plain HTTP to the TLS port must fail: {err}");

    // The certificate is good for the names a client uses (curl verifies chain and name).
    let cert = warden.data_dir().join("tls/cert.pem");
    for url in [format!("https://127.0.0.1:{port}/v1/health"), format!("https://localhost:{port}/v1/health")] {
        assert!(curl_health(&cert, &url).contains("\"ok\""), "{url}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = |f: &str| std::fs::metadata(warden.data_dir().join("tls").join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode("key.pem"), mode("cert.pem")), (0o600, 0o644));

    // The CLI `warden up` configured works, over TLS, and keeps working after a restart: the
    // same certificate, the same pin.
    warden.cli_ok(&["ps"]);
    warden.kill9();
    warden.up();
    assert_eq!(fingerprint(&warden), pin, "the certificate is reused across restarts");
    assert!(warden.up_log().contains("reused"), "{}", warden.up_log());
    warden.cli_ok(&["ps"]);
    let known = std::fs::read_to_string(warden.config_home().join("warden/known_tls")).unwrap();
    assert!(known.contains(&format!("127.0.0.1:{port} {pin}")), "{known}");
}

#[test]
fn the_cli_pins_a_server_on_first_use_and_refuses_it_once_its_certificate_changed() {
    let mut warden = Warden::start();
    // Another user's config dir: the admin key, and no pins.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(elsewhere.path().join("warden")).unwrap();
    std::fs::copy(warden.config_home().join("warden/admin.key"), elsewhere.path().join("warden/admin.key")).unwrap();
    let pin = fingerprint(&warden);

    let (ok, _, err) = cli_with(elsewhere.path(), &warden.addr(), &["ps"]);
    assert!(ok, "{err}");
    assert!(err.contains(&format!("trusting {}'s TLS certificate {pin}", warden.addr())), "a note on first use: {err}");
    let known = std::fs::read_to_string(elsewhere.path().join("warden/known_tls")).unwrap();
    assert_eq!(known.trim(), format!("{} {pin}", warden.addr()));
    let (ok, _, err) = cli_with(elsewhere.path(), &warden.addr(), &["ps"]);
    assert!(ok && !err.contains("trusting"), "pinned: no note the second time: {err}");

    // A new certificate on the same address: refused, with the way out.
    warden.kill9();
    std::fs::remove_dir_all(warden.data_dir().join("tls")).unwrap();
    warden.up();
    let new_pin = fingerprint(&warden);
    assert_ne!(new_pin, pin);
    let (ok, _, err) = cli_with(elsewhere.path(), &warden.addr(), &["ps"]);
    assert!(!ok, "a changed certificate must be refused");
    assert!(err.contains(&new_pin) && err.contains(&pin), "the error names both certificates: {err}");
    assert!(err.contains("known_tls") && err.contains("--ca"), "the error says how to fix it: {err}");
    // --ca: the certificate verified the usual way instead of the pin.
    let cert = warden.data_dir().join("tls/cert.pem");
    let (ok, _, err) = cli_with(elsewhere.path(), &warden.addr(), &["ps", "--ca", cert.to_str().unwrap()]);
    assert!(ok, "--ca: {err}");
    // `warden up` pinned its new certificate for its own CLI.
    warden.cli_ok(&["ps"]);
}

#[test]
fn an_agent_trusts_the_pin_in_its_join_token_and_refuses_another_server() {
    let warden = Warden::start_with_command("server", &[]);
    let token = warden.join_token();
    let pin = fingerprint(&warden);
    assert!(token.ends_with(pin.trim_start_matches("sha256:")), "the join token carries the pin: {pin}");

    // Joins with nothing but the token, over TLS (a bare address is https).
    let mut agent = Agent::new("h1", warden.root.path().join("agent-h1"));
    agent.spawn(Command::new(bin()), &warden.addr(), &token);
    let host_up = |warden: &Warden| warden.hosts().iter().any(|h| h.name == "h1" && h.state == "up");
    wait_until("h1 up", Duration::from_secs(20), || host_up(&warden));
    wait_until("the agent's saved pin", Duration::from_secs(10), || agent.data_dir.join("server-pin").exists());
    let saved = std::fs::read_to_string(agent.data_dir.join("server-pin")).unwrap();
    assert_eq!(saved.trim(), pin, "the agent keeps the pin");

    // Restarted with no token at all: the saved pin is trusted, and work is done.
    agent.kill_host();
    let mut command = Command::new(bin());
    command.env_remove("WARDEN_JOIN_TOKEN");
    agent.spawn(command, &warden.addr(), "");
    let spec = "name = \"pinned\"\n[cell]\nargv = [\"sleep\", \"60\"]\n";
    let id = warden.run("pinned.toml", spec);
    let view = warden.wait_for(&id, "running on h1", |v| v.state == "running" && v.host == "h1");
    assert_eq!(view.host, "h1");
    assert!(!agent.log().contains("refused"), "{}", agent.log());

    // A token whose pin is not this server's certificate: the agent refuses to send it.
    let other_pin = "0".repeat(64);
    let wrong = format!("{}_{other_pin}", token.rsplit_once('_').unwrap().0);
    let mut impostor = Agent::new("h2", warden.root.path().join("agent-h2"));
    impostor.spawn(Command::new(bin()), &warden.addr(), &wrong);
    let status = {
        let child = impostor.child.as_mut().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the agent kept going: {}", impostor.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(!status.success());
    let log = impostor.log();
    assert!(log.contains("refusing to talk to the control plane"), "{log}");
    assert!(log.contains(&pin) && log.contains(&format!("sha256:{other_pin}")), "the log names both certificates: {log}");
    assert!(!impostor.data_dir.join("server-pin").exists() && !impostor.data_dir.join("enrolled.json").exists());
    assert!(!warden.hosts().iter().any(|h| h.name == "h2"), "h2 never enrolled");
    agent.kill_host();
}

#[test]
fn plain_http_is_served_on_loopback_only_and_only_when_asked() {
    let warden = Warden::start_with(&["--insecure-http"]);
    assert!(unsigned_client(&warden.url()).call("GET", "/v1/health", b"", None).is_ok());
    warden.cli_ok(&["ps"]);
    assert!(!warden.data_dir().join("tls").exists(), "no certificate made for plain HTTP");
    assert!(warden.up_log().contains("tls          OFF"), "{}", warden.up_log());
    let token = warden.join_token();
    assert_eq!(token.split('_').count(), 3, "a token with no pin: {token}");

    // Anywhere but loopback, it refuses to start, saying why.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["up", "--listen", "0.0.0.0:0", "--insecure-http", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--insecure-http") && err.contains("refused on 0.0.0.0:0") && err.contains("loopback"), "{err}");
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl is needed by this test");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn an_operators_own_certificate_is_served_and_verified_with_ca() {
    // A CA, and a certificate it signed for 127.0.0.1 and localhost.
    let pki = tempfile::tempdir().unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    openssl(
        pki.path(),
        &[&["req", "-x509"], &ec[..], &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test ca"]].concat(),
    );
    openssl(pki.path(), &[&["req"], &ec[..], &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=warden"]].concat());
    std::fs::write(
        pki.path().join("ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        pki.path(),
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    );
    let file = |name: &str| pki.path().join(name).to_str().unwrap().to_string();
    let warden = Warden::start_with(&["--tls-cert", &file("server.pem"), "--tls-key", &file("server.key")]);
    assert!(!warden.data_dir().join("tls/cert.pem").exists(), "nothing generated beside the operator's certificate");
    assert!(warden.up_log().contains("given with --tls-cert"), "{}", warden.up_log());
    let port = warden.addr().rsplit_once(':').unwrap().1.to_string();
    assert!(curl_health(&pki.path().join("ca.pem"), &format!("https://localhost:{port}/v1/health")).contains("\"ok\""));

    // A CLI with --ca trusts it through the CA, pinning nothing; one with another CA refuses it.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(elsewhere.path().join("warden")).unwrap();
    std::fs::copy(warden.config_home().join("warden/admin.key"), elsewhere.path().join("warden/admin.key")).unwrap();
    let (ok, _, err) = cli_with(elsewhere.path(), &format!("localhost:{port}"), &["ps", "--ca", &file("ca.pem")]);
    assert!(ok && !err.contains("trusting"), "{err}");
    assert!(!elsewhere.path().join("warden/known_tls").exists(), "--ca pins nothing");
    let (ok, _, err) = cli_with(elsewhere.path(), &format!("localhost:{port}"), &["ps", "--ca", &file("server.csr")]);
    assert!(!ok, "a file with no certificate is refused: {err}");
    let other = tempfile::tempdir().unwrap();
    openssl(
        other.path(),
        &[&["req", "-x509"], &ec[..], &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=other ca"]].concat(),
    );
    let (ok, _, err) =
        cli_with(elsewhere.path(), &format!("localhost:{port}"), &["ps", "--ca", other.path().join("ca.pem").to_str().unwrap()]);
    assert!(!ok && err.contains("certificate"), "a certificate another CA did not sign is refused: {err}");
}
