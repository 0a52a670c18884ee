//! A real etcd cluster on loopback for the tests: N members of Debian's `/usr/bin/etcd` on free
//! ports, data dirs in a temporary directory, killed when the cluster is dropped — or when the
//! test binary exits, since each member runs under a small `sh` that kills it when its stdin
//! (a pipe this process holds) closes.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use etcd_client::Client;
use tempfile::TempDir;

pub struct Member {
    pub name: String,
    pub client_url: String,
    shell: Child,
    /// Closing it makes the member's shell kill it.
    lifeline: Option<ChildStdin>,
}

impl Member {
    /// Kills the member (SIGKILL) and waits until it is gone.
    pub fn kill(&mut self) {
        drop(self.lifeline.take());
        let _ = self.shell.wait();
    }
}

pub struct Cluster {
    pub members: Vec<Member>,
    pub endpoints: Vec<String>,
    pub dir: TempDir,
}

/// Distinct free loopback ports: all bound at once, then released for etcd to take.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

impl Cluster {
    /// Starts `n` members and waits until the cluster accepts a write (it has a leader).
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// [`Cluster::start`] with `extra` flags for every member.
    pub fn start_with(n: usize, extra: &[&str]) -> Cluster {
        assert!(std::path::Path::new("/usr/bin/etcd").exists(), "etcd is not installed: apt-get install -y etcd-server");
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(2 * n);
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let client = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i]);
        let initial: Vec<String> = (0..n).map(|i| format!("m{i}={}", peer(i))).collect();
        let token = format!("warden-test-{}-{}", std::process::id(), ports[0]);
        let mut members = Vec::new();
        for i in 0..n {
            let name = format!("m{i}");
            let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
            let mut command = Command::new("sh");
            // `read` returns when the pipe closes (this process dropped the member, or exited);
            // then the member is killed and its files removed — the shared cluster's directory is
            // never dropped, so its members clean up after themselves (the last removes the root).
            command
                .arg("-c")
                .arg(
                    "etcd \"$@\" & pid=$!; read _ignored; kill -9 $pid; wait $pid; \
                     rm -rf \"$WARDEN_TEST_ROOT/$WARDEN_TEST_MEMBER\" \"$WARDEN_TEST_ROOT/$WARDEN_TEST_MEMBER.log\"; \
                     rmdir \"$WARDEN_TEST_ROOT\" 2>/dev/null; true",
                )
                .arg("sh")
                .env("WARDEN_TEST_ROOT", dir.path())
                .env("WARDEN_TEST_MEMBER", &name)
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.path().join(&name))
                .args(["--listen-client-urls", &client(i), "--advertise-client-urls", &client(i)])
                .args(["--listen-peer-urls", &peer(i), "--initial-advertise-peer-urls", &peer(i)])
                .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(extra)
                .stdin(Stdio::piped())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            if std::env::consts::ARCH != "x86_64" {
                let arch = if std::env::consts::ARCH == "aarch64" { "arm64" } else { std::env::consts::ARCH };
                command.env("ETCD_UNSUPPORTED_ARCH", arch);
            }
            let mut shell = command.spawn().expect("start etcd");
            let lifeline = shell.stdin.take();
            members.push(Member { name, client_url: client(i), shell, lifeline });
        }
        let endpoints: Vec<String> = (0..n).map(client).collect();
        let cluster = Cluster { members, endpoints, dir };
        cluster.wait_healthy();
        cluster
    }

    fn wait_healthy(&self) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        runtime.block_on(async {
            loop {
                let attempt = async {
                    let mut client = Client::connect(&self.endpoints, None).await?;
                    client.put("/warden-test/health", "ok", None).await
                };
                match tokio::time::timeout(Duration::from_secs(3), attempt).await {
                    Ok(Ok(_)) => return,
                    _ if Instant::now() > deadline => {
                        let logs: Vec<String> = self
                            .members
                            .iter()
                            .map(|m| std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name))).unwrap_or_default())
                            .collect();
                        panic!("the etcd cluster did not become healthy in 30 s; logs:\n{}", logs.join("\n---\n"));
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.kill();
        }
    }
}

/// The 3-member cluster the tests of this binary share (each uses its own prefix). Never
/// dropped: its members go when the test binary exits and their lifelines close.
pub fn shared() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start(3))
}

/// A prefix no other test uses.
pub fn fresh_prefix(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("/warden-test/{}/{what}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Direct etcd access, behind the store's back.
pub struct Raw {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl Raw {
    pub fn new(endpoints: &[String]) -> Raw {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = runtime.block_on(Client::connect(endpoints, None)).unwrap();
        Raw { runtime, client }
    }

    pub fn get(&self, key: &str) -> Option<etcd_client::KeyValue> {
        let mut kv = self.client.kv_client();
        self.runtime.block_on(kv.get(key, None)).unwrap().take_kvs().into_iter().next()
    }

    pub fn put(&self, key: &str, value: impl Into<Vec<u8>>) {
        let mut kv = self.client.kv_client();
        self.runtime.block_on(kv.put(key, value, None)).unwrap();
    }

    pub fn delete(&self, key: &str) {
        let mut kv = self.client.kv_client();
        self.runtime.block_on(kv.delete(key, None)).unwrap();
    }

    /// Keys (without values) starting with `prefix`.
    pub fn list_keys(&self, prefix: &str) -> Vec<etcd_client::KeyValue> {
        let mut kv = self.client.kv_client();
        let options = etcd_client::GetOptions::new().with_prefix().with_keys_only();
        self.runtime.block_on(kv.get(prefix, Some(options))).unwrap().take_kvs()
    }

    /// Keys (with values) starting with `prefix`.
    pub fn list(&self, prefix: &str) -> Vec<etcd_client::KeyValue> {
        let mut kv = self.client.kv_client().max_decoding_message_size(64 << 20);
        let options = etcd_client::GetOptions::new().with_prefix();
        self.runtime.block_on(kv.get(prefix, Some(options))).unwrap().take_kvs()
    }

    /// The bytes of etcd's database in use (summed over nothing: the member answering).
    pub fn db_in_use(&self, endpoint: &str) -> i64 {
        let runtime = &self.runtime;
        let mut client = runtime.block_on(Client::connect([endpoint], None)).unwrap();
        runtime.block_on(client.status()).unwrap().raft_used_db_size()
    }
}

/// Writes `text` to stderr at once (test output is captured, and shown on failure).
pub fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}
