//! Hardened edges against real processes: an outsider holding ~20k idle connections and
//! pushing large unsigned uploads cannot get a healthy host declared down (nor the server's
//! memory up); a signed request captured on the wire does not replay after a kill -9 and
//! restart; and the data dir's secrets are not readable by other users.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::FromRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::cluster::Cluster;
use crate::support::{tls_over, Warden};
use warden_runtime::view::{SubmitRequest, WorkloadView};

/// A TCP connection to `server` from the loopback address `from` (loopback is all of 127/8:
/// the attacker is another address than the agents' 127.0.0.1).
fn connect_from(from: Ipv4Addr, server: SocketAddrV4) -> std::io::Result<TcpStream> {
    let sockaddr = |addr: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a fresh fd we own; the fd goes into the TcpStream, or is closed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The port is picked at connect time (bind with port 0 searches the bound ports, which
        // gets slow with thousands of them).
        let one: libc::c_int = 1;
        let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, &one as *const _ as *const libc::c_void, size);
        let local = sockaddr(SocketAddrV4::new(from, 0));
        let remote = sockaddr(server);
        if libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) != 0
            || libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) != 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

/// Lifts this process's soft fd limit to its hard limit; returns it.
fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: the struct is ours.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

fn vm_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

const STANDBY_SPEC: &str = r#"
name = "kv"
[cell]
argv = ["sh", "-c", "mkdir -p \"$WARDEN_STATE_DIR\" 2>/dev/null; while true; do sleep 0.2; done"]
graceful_shutdown = "1s"
[restart]
policy = "on-failure"
max_attempts = 1
backoff = "5s"
[replication]
mode = "warm-standby"
standbys = 1
state_dir = "STATE"
checkpoint_interval = "1h"
[placement]
instances = 1
"#;

#[test]
fn idle_connections_and_unsigned_uploads_take_no_host_down() {
    // Heavy: its own connections and uploads load the machine; no cluster test's timed
    // failovers beside it.
    let cluster = Cluster::start_heavy(2);
    let state = cluster.server.shared("rw").join("state");
    let spec = STANDBY_SPEC.replace("STATE", state.to_str().unwrap());
    let id = cluster.server.run("kv.toml", &spec);
    let armed = cluster.wait_for(&id, "an armed standby", |v| v.state == "running" && v.standbys.len() == 1);
    let server_pid = cluster.server.server.as_ref().unwrap().id();
    let rss_before = vm_rss_kb(server_pid);
    let server: SocketAddrV4 = cluster.server.addr().parse().unwrap();
    let nofile = raise_nofile();

    let stop = Arc::new(AtomicBool::new(false));
    let uploaded = Arc::new(AtomicU64::new(0));
    // Eight large unsigned uploads at a time, from 127.0.0.3, each tried again 100 ms after it
    // is refused (the pause keeps this one 2-core machine's CPU for the server and the CLI: a
    // real attacker's loop runs on its own machine).
    let uploaders: Vec<_> = (0..8)
        .map(|i| {
            let (stop, uploaded) = (stop.clone(), uploaded.clone());
            std::thread::spawn(move || {
                let chunk = vec![0u8; 1 << 20];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(conn) = connect_from(Ipv4Addr::new(127, 0, 0, 3), server) else {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    let mut conn = tls_over(conn, &server.to_string());
                    let head =
                        format!("PUT /v1/blobs/{:064x} HTTP/1.1\r\nHost: warden\r\nContent-Length: {}\r\n\r\n", i, 250u64 << 20);
                    if conn.write_all(head.as_bytes()).is_err() {
                        continue;
                    }
                    for _ in 0..250 {
                        if stop.load(Ordering::Relaxed) || conn.write_all(&chunk).is_err() {
                            break;
                        }
                        uploaded.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        })
        .collect();
    // As many idle connections as this process may open (20k if it may), from 127.0.0.2, each
    // with a half-sent TLS handshake (the first bytes of a ClientHello record: the server's
    // handshake waits for the rest), opened by 16 threads over up to 25 s while `watch` looks on.
    let wanted = 20_000usize.min(nofile.saturating_sub(400) as usize);
    let opening = Instant::now();
    let openers: Vec<_> = (0..16)
        .map(|_| {
            std::thread::spawn(move || {
                let mut mine = Vec::with_capacity(wanted / 16);
                while mine.len() < wanted / 16 && opening.elapsed() < Duration::from_secs(25) {
                    match connect_from(Ipv4Addr::new(127, 0, 0, 2), server) {
                        Ok(mut conn) => {
                            let _ = conn.write_all(&[0x16, 0x03, 0x01]);
                            mine.push(conn);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                mine
            })
        })
        .collect();

    // Under attack: `warden ps` answers within a second, every time; both hosts stay up.
    let mut rss_max = vm_rss_kb(server_pid);
    let mut slowest = Duration::ZERO;
    let mut slowest_api = Duration::ZERO;
    let api = cluster.server.client();
    let mut watch = |until: &dyn Fn() -> bool| {
        while !until() {
            // The server's own answer to what `warden ps` asks, then `warden ps` itself.
            let asked = Instant::now();
            api.call("GET", "/v1/workloads", b"", Some(Duration::from_secs(5))).unwrap();
            slowest_api = slowest_api.max(asked.elapsed());
            let asked = Instant::now();
            cluster.server.cli_ok(&["ps"]);
            let took = asked.elapsed();
            slowest = slowest.max(took);
            // The server's answer within a second, always; the CLI around it is a debug binary
            // started fresh on a 2-core machine that CI loads with other tests, which alone has
            // taken a second: it gets three.
            assert!(slowest_api < Duration::from_secs(1), "the API took {slowest_api:?} under attack");
            assert!(
                took < Duration::from_secs(3),
                "`warden ps` took {took:?} under attack (the API alone: {slowest_api:?} at most)"
            );
            for host in cluster.hosts() {
                assert_eq!(host.state, "up", "host {} under attack: {host:?}\n{}", host.name, cluster.logs());
            }
            rss_max = rss_max.max(vm_rss_kb(server_pid));
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    watch(&|| openers.iter().all(|opener| opener.is_finished()));
    let idle: Vec<TcpStream> = openers.into_iter().flat_map(|opener| opener.join().unwrap()).collect();
    eprintln!(
        "attacker: {} idle connections opened in {:?} (fd limit {nofile}; the machine's load limits the rate); large uploads running",
        idle.len(),
        opening.elapsed()
    );
    // On a loaded 2-core machine the attacker itself is slow to open them; 5,000 is still 20 times
    // the cap an unknown address gets.
    assert!(idle.len() >= 5_000, "could open only {} connections", idle.len());
    // Then 10 s more with all of them held.
    let holding = Instant::now();
    watch(&|| holding.elapsed() > Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    for uploader in uploaders {
        uploader.join().unwrap();
    }
    let sent_mb = uploaded.load(Ordering::Relaxed) >> 20;
    eprintln!(
        "under attack: slowest `warden ps` {slowest:?} (the API alone: {slowest_api:?}); server VmRSS {} MB before, {} MB at most; {sent_mb} MB of unsigned uploads pushed into sockets (kernel buffers; refused after the headers)",
        rss_before / 1024,
        rss_max / 1024
    );
    drop(idle);
    assert!(rss_max < rss_before + 150 * 1024, "server RSS grew from {rss_before} kB to {rss_max} kB");

    let after: WorkloadView = cluster.server.status(&id);
    assert_eq!(
        (after.host.as_str(), after.epoch, after.failovers, after.restarts),
        (armed.host.as_str(), armed.epoch, armed.failovers, armed.restarts),
        "no failover, no restart: {after:?}"
    );
    let events = cluster.server.cli_ok(&["events", "-o", "json"]);
    assert!(!events.contains("dev.warden.host.down.v1"), "a host was declared down");
    assert!(!events.contains("dev.warden.workload.failover.v1"), "the workload failed over");
}

/// Sends `bytes` on a fresh connection; the status code and the body of the answer.
fn send_raw(addr: &str, bytes: &[u8]) -> (u16, String) {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut conn = tls_over(tcp, addr);
    conn.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).to_string();
    let code = answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

#[test]
fn a_request_captured_before_a_restart_does_not_replay_after_it() {
    let mut warden = Warden::start();
    let spec = "name = \"once\"\n[cell]\nargv = [\"sleep\", \"600\"]\n";
    let body =
        serde_json::to_vec(&SubmitRequest { file: "once.toml".into(), spec_toml: spec.into(), consumer_workload_id: None })
            .unwrap();
    // The exact bytes of a signed POST /v1/workloads, as a wiretapper would record them.
    let request = warden.client().prepare("POST", "/v1/workloads", body.clone()).unwrap();
    let captured = [
        format!(
            "POST /v1/workloads HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            warden.addr(),
            request.authorization().unwrap(),
            body.len()
        )
        .into_bytes(),
        body,
    ]
    .concat();
    let (code, answer) = send_raw(&warden.addr(), &captured);
    assert!((200..300).contains(&code), "the first send is accepted: {code} {answer}");
    let (code, answer) = send_raw(&warden.addr(), &captured);
    assert_eq!(code, 401, "replayed before the restart: {answer}");

    warden.kill9();
    warden.up();
    let (code, answer) = send_raw(&warden.addr(), &captured);
    assert_eq!(code, 401, "replayed after the restart: {answer}");
    assert!(answer.contains("before this server started"), "{answer}");
    let listed = warden.cli_ok(&["ps", "-a", "-o", "json"]);
    let workloads: Vec<WorkloadView> = serde_json::from_str(&listed).unwrap();
    assert_eq!(workloads.len(), 1, "one workload, not two: {workloads:?}");
    // A fresh request from the key's holder is served as ever.
    warden.cli_ok(&["ps"]);
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// Every file under `dir` (recursively).
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn the_data_dir_keeps_its_secrets_from_other_users() {
    let mut warden = Warden::start();
    let talker = "name = \"talker\"\n[cell]\nargv = [\"sh\", \"-c\", \"echo hello; sleep 600\"]\nenv = { TOKEN = \"s3cret\" }\n";
    let id = warden.run("talker.toml", talker);
    warden.wait_for(&id, "running", |v| v.state == "running");
    let data = warden.data_dir();
    let check = |data: &Path| {
        assert_eq!(mode(data), 0o711, "data dir: passable for cells, not listable");
        assert_eq!(mode(&data.join("journal.db")), 0o600, "journal.db");
        assert_eq!(mode(&data.join("journal.db-wal")), 0o600, "journal.db-wal");
        let configs: Vec<_> = files_under(&data.join("cells")).into_iter().filter(|p| p.ends_with("config.json")).collect();
        assert!(!configs.is_empty(), "a cell's config.json");
        for config in &configs {
            assert_eq!(mode(config), 0o600, "{}", config.display());
        }
        let logs = files_under(&data.join("logs"));
        assert!(!logs.is_empty(), "a log file");
        for log in &logs {
            assert_eq!(mode(log), 0o640, "{}", log.display());
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while files_under(&data.join("logs")).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    check(&data);

    // A data dir of an older version (everything readable by all) is tightened at start.
    warden.kill9();
    let loosen = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    loosen(&data, 0o755);
    loosen(&data.join("journal.db"), 0o644);
    loosen(&data.join("journal.db-wal"), 0o644);
    for file in files_under(&data.join("cells")).iter().filter(|p| p.ends_with("config.json")) {
        loosen(file, 0o644);
    }
    for file in files_under(&data.join("logs")) {
        loosen(&file, 0o644);
    }
    warden.up();
    check(&data);
    warden.cli_ok(&["stop", &id]);
}

#[test]
fn bodies_are_read_only_once_the_header_is_authenticated_and_under_one_limit() {
    let warden = Warden::start();
    // Headers announcing 250 MB, and not a byte of the body: refused at once.
    let tcp = TcpStream::connect(warden.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut conn = tls_over(tcp, &warden.addr());
    let hex = "0".repeat(64);
    let head = format!("PUT /v1/blobs/{hex} HTTP/1.1\r\nHost: warden\r\nContent-Length: {}\r\n\r\n", 250u64 << 20);
    conn.write_all(head.as_bytes()).unwrap();
    let mut answer = [0u8; 512];
    let n = conn.read(&mut answer).expect("an answer before the body is sent");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    // Signed, 3 MiB: past axum's own 2 MiB default, under warden's one limit (4 MiB), so the
    // spec parser answers, not a size limit.
    let client = warden.client();
    let big = serde_json::to_vec(&SubmitRequest {
        file: "big.toml".into(),
        spec_toml: format!("name = \"big\"\n# {}\n[cell]\nargv = [\"true\"]\nbogus = 1\n", "x".repeat(3 << 20)),
        consumer_workload_id: None,
    })
    .unwrap();
    let (code, answer) = client.exchange(&client.prepare("POST", "/v1/workloads", big).unwrap(), None).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("bogus"), "the spec was read: {answer}");
    // Signed, 5 MiB: over the limit, refused on its Content-Length before the body is read (a
    // client that writes the whole body first sees the connection close under it).
    let request = client.prepare("POST", "/v1/workloads", vec![b' '; 5 << 20]).unwrap();
    let tcp = TcpStream::connect(warden.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut conn = tls_over(tcp, &warden.addr());
    let head = format!(
        "POST /v1/workloads HTTP/1.1\r\nHost: warden\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n",
        request.authorization().unwrap(),
        5 << 20
    );
    conn.write_all(head.as_bytes()).unwrap();
    let mut answer = [0u8; 512];
    let n = conn.read(&mut answer).expect("an answer before the body is sent");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}
