//! The cluster across network namespaces (issue 5's multi-host harness): a real `warden server`
//! on a bridge in the root namespace and three real `warden agent` processes, each in its own
//! network namespace joined to the bridge by a veth pair, so a host can be cut off the way a
//! real one is — its link goes down, packets vanish, nothing answers with a reset — while its
//! agent and cells keep running.
//!
//! ```text
//!   root ns:  warden server --listen 10.77.N.1:PORT on bridge wdXXXXXX (10.77.N.1/24)
//!                │ wdXXXXXX-h1b      │ wdXXXXXX-h2b      │ wdXXXXXX-h3b      (bridge ends)
//!   ns wdXXXXXX-h1: -h1i .11    ns …-h2: -h2i .12    ns …-h3: -h3i .13   (warden agent h1, h2, h3)
//! ```
//!
//! An agent enters only its host's network namespace (see [`in_namespace`]): it keeps the mount
//! and pid namespaces, so its cells get cgroups as on a real host and pids are the test's.
//!
//! Names carry a random tag and the subnet is one no interface uses yet, so runs (and the two
//! tests of this file, which may run in parallel) never collide; everything is removed on drop,
//! also when a test panics. A test process killed by SIGKILL leaves `wd*` links and namespaces
//! behind (`ip netns list`, `ip link show type bridge`).
//!
//! The same ground truth as `cluster_e2e.rs`: the workload appends `epoch monotonic_ns` lines
//! every 20 ms to a file, and two epochs must never overlap. Needs root and iproute2 (`ip`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::support::cluster::{check_no_overlap, ground_truth_spec, Cluster, ControlPlane};
use crate::support::{alive, answers_health_once_pinned, bin, kill9};
use warden_runtime::view::WorkloadView;

/// The longest a failover may take. At the defaults the control plane needs ~2 s (a host is down
/// after 1.5 s of silence, the old lease is granted again 300 ms after its expiry); five times
/// that leaves room for a loaded 2-core CI machine and still fails a failover that does not
/// happen or is far off its target.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(10);
/// For everything that is not a measured failover: start-up, enrollment, a healed host
/// reconnecting, a cell writing its lines.
const SETUP_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The network: a bridge, one namespace and veth pair per host.

/// Held while a subnet is chosen and the bridge takes its address, so that tests running in
/// parallel in this process never pick the same subnet.
static NETWORK_SETUP: Mutex<()> = Mutex::new(());

/// What the test created, removed on drop (in reverse: processes, veths, namespaces, bridge).
struct Network {
    /// `wd` + 6 random hex digits: the bridge's name and every other name's prefix.
    tag: String,
    /// The `N` of 10.77.N.0/24.
    subnet: u8,
    bridge_created: bool,
    namespaces: Vec<String>,
    /// The bridge-side ends (deleting one deletes its pair).
    veths: Vec<String>,
}

struct NetHost {
    namespace: String,
    /// The veth end on the bridge, in the root namespace.
    bridge_end: String,
}

impl Network {
    fn create(n_hosts: usize) -> Network {
        assert!(
            Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success()),
            "these tests need iproute2's `ip` (apt-get install iproute2)"
        );
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "these tests create network namespaces and need root");
        let setup = NETWORK_SETUP.lock().unwrap_or_else(PoisonError::into_inner);
        let tag = format!("wd{:06x}", random_u64() & 0xff_ffff);
        let mut net = Network { tag: tag.clone(), subnet: 0, bridge_created: false, namespaces: Vec::new(), veths: Vec::new() };
        ip(&["link", "add", &tag, "type", "bridge"]);
        net.bridge_created = true;
        for attempt in 1.. {
            net.subnet = free_subnet();
            let cidr = format!("{}/24", net.bridge_ip());
            ip(&["addr", "add", &cidr, "dev", &tag]);
            // Another process may have taken the same subnet meanwhile: then both try again.
            if subnet_users(net.subnet) == [tag.as_str()] {
                break;
            }
            ip(&["addr", "del", &cidr, "dev", &tag]);
            assert!(attempt < 10, "no subnet of 10.77.0.0/16 stayed free");
        }
        ip(&["link", "set", &tag, "up"]);
        drop(setup); // the subnet shows in `ip addr` now
        for i in 1..=n_hosts {
            let namespace = format!("{tag}-h{i}");
            let (bridge_end, inner) = (format!("{tag}-h{i}b"), format!("{tag}-h{i}i"));
            ip(&["netns", "add", &namespace]);
            net.namespaces.push(namespace.clone());
            ip(&["link", "add", &bridge_end, "type", "veth", "peer", "name", &inner, "netns", &namespace]);
            net.veths.push(bridge_end.clone());
            ip(&["link", "set", &bridge_end, "master", &tag, "up"]);
            ip(&["-n", &namespace, "addr", "add", &format!("10.77.{}.{}/24", net.subnet, 10 + i), "dev", &inner]);
            ip(&["-n", &namespace, "link", "set", &inner, "up"]);
            ip(&["-n", &namespace, "link", "set", "lo", "up"]);
        }
        net
    }

    fn bridge_ip(&self) -> String {
        format!("10.77.{}.1", self.subnet)
    }

    /// Host `name` (`h1`, `h2`, …).
    fn host(&self, name: &str) -> NetHost {
        NetHost { namespace: format!("{}-{name}", self.tag), bridge_end: format!("{}-{name}b", self.tag) }
    }

    /// SIGKILL every process in every namespace of this network.
    fn kill_everything(&self) {
        for namespace in &self.namespaces {
            kill_namespace(namespace);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.kill_everything();
        // veths first: deleting a namespace frees its interfaces only asynchronously.
        for veth in &self.veths {
            ip_quiet(&["link", "del", veth]);
        }
        for namespace in &self.namespaces {
            ip_quiet(&["netns", "del", namespace]);
        }
        if self.bridge_created {
            ip_quiet(&["link", "del", &self.tag]);
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("cannot run ip (iproute2)");
    assert!(out.status.success(), "ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// For teardown: best effort, never panics.
fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// A `10.77.N.0/24` no address or route of this machine is in.
fn free_subnet() -> u8 {
    let mut used = String::new();
    for args in [&["-o", "-4", "addr", "show"][..], &["-4", "route", "show", "table", "all"][..]] {
        used += &String::from_utf8_lossy(&Command::new("ip").args(args).output().expect("cannot run ip").stdout);
    }
    for _ in 0..1_000 {
        let n = 1 + (random_u64() % 254) as u8;
        if !used.contains(&format!("10.77.{n}.")) {
            return n;
        }
    }
    panic!("no free subnet in 10.77.0.0/16:\n{used}");
}

/// The interfaces with an address in `10.77.N.0/24`.
fn subnet_users(n: u8) -> Vec<String> {
    let out = Command::new("ip").args(["-o", "-4", "addr", "show"]).output().expect("cannot run ip");
    let prefix = format!("10.77.{n}.");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.split_whitespace().nth(3).is_some_and(|addr| addr.starts_with(&prefix)))
        .filter_map(|line| line.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("/dev/urandom");
    u64::from_ne_bytes(bytes)
}

/// The processes in a network namespace (`ip netns pids`; exited ones, zombies included, are not).
fn namespace_pids(namespace: &str) -> Vec<u32> {
    let out = Command::new("ip").args(["netns", "pids", namespace]).output().expect("cannot run ip");
    String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|pid| pid.parse().ok()).collect()
}

/// SIGKILLs every process in a namespace, again until none is left (a process may fork between
/// the listing and the kill); the pids killed.
fn kill_namespace(namespace: &str) -> Vec<u32> {
    let mut killed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = namespace_pids(namespace);
        if pids.is_empty() || Instant::now() > deadline {
            return killed;
        }
        for pid in pids {
            kill9(pid);
            if !killed.contains(&pid) {
                killed.push(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `command`, to be run in a network namespace made by `ip netns add`.
///
/// Like `ip netns exec NAMESPACE …`, minus its remount of `/sys` for the namespace: that would
/// hide `/sys/fs/cgroup`, and cells on these hosts would run without cgroups, unlike on a real
/// host. Only the network namespace changes; the process keeps the test's mounts (and its
/// pid namespace, so the pids `warden status` shows are the test's too).
fn in_namespace(namespace: &str, mut command: Command) -> Command {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let path = format!("/run/netns/{namespace}");
    let netns: OwnedFd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}")).into();
    // SAFETY: between fork and exec the closure only calls setns(2), which is async-signal-safe;
    // it owns the descriptor (opened with O_CLOEXEC, so the agent does not inherit it).
    unsafe {
        command.pre_exec(move || {
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    command
}

/// CLOCK_MONOTONIC in ns: the clock of the ground truth's lines (Python's `time.monotonic_ns`).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---------------------------------------------------------------------------------------------
// The control plane, listening on the bridge.

struct Server {
    dir: PathBuf,
    /// `10.77.N.1:PORT`.
    addr: String,
    child: Option<Child>,
}

impl Server {
    fn start(dir: &Path, ip: &str) -> Server {
        let port = std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let addr = format!("{ip}:{port}");
        let child = Command::new(bin())
            .args(["server", "--listen", &addr, "--data-dir"])
            .arg(dir.join("data"))
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut server = Server { dir: dir.to_path_buf(), addr, child: Some(child) };
        let deadline = Instant::now() + SETUP_DEADLINE;
        let mut health = None;
        while !answers_health_once_pinned(&server.addr, &server.data_dir(), &mut health) {
            if let Some(status) = server.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("warden server exited with {status}: {}", server.log());
            }
            assert!(Instant::now() < deadline, "warden server did not answer: {}", server.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// `warden run SPEC`: the id from the last line.
    fn run(&self, spec_name: &str, text: &str) -> String {
        let path = self.dir.join(spec_name);
        std::fs::write(&path, text).unwrap();
        self.cli_ok(&["run", path.to_str().unwrap()]).lines().last().expect("run prints the id").trim().to_string()
    }
}

impl ControlPlane for Server {
    fn addr(&self) -> String {
        self.addr.clone()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = Command::new(bin())
            .args(args)
            .env("WARDEN_ADDR", &self.addr)
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .output()
            .unwrap();
        assert!(out.status.success(), "warden {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster: the network, the server, one agent per namespace.

/// Fields drop in this order after `Drop::drop` killed every process in the namespaces: the
/// cluster (agents, cells, server), network, files.
struct NetCluster {
    cluster: Cluster<Server>,
    net: Network,
    root: tempfile::TempDir,
}

impl std::ops::Deref for NetCluster {
    type Target = Cluster<Server>;

    fn deref(&self) -> &Cluster<Server> {
        &self.cluster
    }
}

impl NetCluster {
    fn start(n_hosts: usize) -> NetCluster {
        let root = tempfile::tempdir().unwrap();
        let net = Network::create(n_hosts);
        let server = Server::start(root.path(), &net.bridge_ip());
        // Each agent enters its host's namespace and reaches the server on the bridge.
        let names = (1..=n_hosts).map(|i| format!("h{i}"));
        let mut cluster =
            Cluster::with_agents(server, root.path(), names, |name| in_namespace(&net.host(name).namespace, Command::new(bin())));
        let tag = net.tag.clone();
        cluster.agent_label = Box::new(move |agent| {
            let namespace = format!("{tag}-{}", agent.name);
            format!("{} ({namespace}, pids {:?})", agent.name, namespace_pids(&namespace))
        });
        let cluster = NetCluster { cluster, net, root };
        for agent in &cluster.agents {
            cluster.wait_host(&agent.name, "up", SETUP_DEADLINE);
        }
        cluster
    }

    /// The namespace and bridge end of host `name`.
    fn net_host(&self, name: &str) -> NetHost {
        self.agent(name); // one of ours
        self.net.host(name)
    }

    /// Cuts `host` off: the bridge end of its veth goes down, so nothing it sends arrives and
    /// nothing reaches it. Its agent and cells keep running.
    fn partition(&self, host: &str) {
        ip(&["link", "set", &self.net_host(host).bridge_end, "down"]);
    }

    fn heal(&self, host: &str) {
        ip(&["link", "set", &self.net_host(host).bridge_end, "up"]);
    }

    /// The host dies whole: SIGKILL to every process in its namespace (agent, shims, cells).
    fn kill_host(&mut self, host: &str) -> Vec<u32> {
        let namespace = self.net_host(host).namespace;
        let killed = kill_namespace(&namespace);
        assert!(namespace_pids(&namespace).is_empty(), "processes survived in {namespace}");
        if let Some(mut child) = self.cluster.agent_mut(host).child.take() {
            let _ = child.wait(); // reap it; it was killed above
        }
        killed
    }

    fn cell_dir(&self, host: &str, cell_id: &str) -> PathBuf {
        self.agent(host).data_dir.join("cells").join(cell_id)
    }

    /// The cell's `exit.json`, once its shim has written it.
    fn wait_cell_exit(&self, host: &str, cell_id: &str) -> warden_cell::ExitStatus {
        let path = self.cell_dir(host, cell_id).join("exit.json");
        let deadline = Instant::now() + SETUP_DEADLINE;
        loop {
            // Written atomically (temp file and rename): present means complete.
            if let Ok(text) = std::fs::read_to_string(&path) {
                return serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()));
            }
            assert!(Instant::now() < deadline, "no {}\n{}", path.display(), self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the cell's dir is gone from `host`.
    fn wait_cell_removed(&self, host: &str, cell_id: &str) {
        let (dir, started) = (self.cell_dir(host, cell_id), Instant::now());
        while dir.exists() {
            assert!(started.elapsed() < SETUP_DEADLINE, "{} is still there\n{}", dir.display(), self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Processes in `host`'s namespace that are cells of the ground-truth workload (its argv
    /// holds the truth file's path).
    fn truth_writers_on(&self, host: &str, truth: &Path) -> Vec<u32> {
        let needle = truth.to_str().unwrap();
        namespace_pids(&self.net_host(host).namespace)
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle) && alive(*pid))
            })
            .collect()
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        self.net.kill_everything();
        // Then the cluster kills its agents and, as a cell that left its host's namespace would
        // have escaped the kill above, every shim and cell under their data dirs.
    }
}

// ---------------------------------------------------------------------------------------------
// The ground truth ([`ground_truth_spec`], [`check_no_overlap`] in `support::cluster`).

/// The ground-truth workload, run until its primary wrote 10 lines: the truth file, the
/// workload's id and its first status as a running primary (with an epoch and a pid).
fn start_ground_truth(cluster: &NetCluster) -> (PathBuf, String, WorkloadView) {
    let truth = crate::support::shared_dir(cluster.root.path(), "truth").join("truth.log");
    let id = cluster.server.run("truth.toml", &ground_truth_spec(&truth));
    let first = cluster.wait_for(&id, "a running primary", |v| v.state == "running" && v.epoch.is_some() && v.pid.is_some());
    wait_for_lines(cluster, &truth, first.epoch.unwrap(), 10, 0);
    (truth, id, first)
}

/// Waits until `epoch` wrote at least `n` lines stamped after `after_ns`.
fn wait_for_lines(cluster: &NetCluster, truth: &Path, epoch: u64, n: usize, after_ns: u64) {
    let deadline = Instant::now() + SETUP_DEADLINE;
    loop {
        let text = std::fs::read_to_string(truth).unwrap_or_default();
        let count = text
            .lines()
            .filter_map(|line| line.split_once(' '))
            .filter(|(e, ns)| e.parse() == Ok(epoch) && ns.parse::<u64>().is_ok_and(|ns| ns > after_ns))
            .count();
        if count >= n {
            return;
        }
        assert!(Instant::now() < deadline, "epoch {epoch} wrote {count} of {n} lines\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ms(from_ns: u64, to_ns: u64) -> String {
    format!("{:+.0} ms", (to_ns as f64 - from_ns as f64) / 1e6)
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn partitioned_primary_is_fenced_before_the_new_one_starts() {
    let cluster = NetCluster::start(3);
    let (truth, id, first) = start_ground_truth(&cluster);
    let (old_host, old_epoch, old_pid) = (first.host.clone(), first.epoch.unwrap(), first.pid.unwrap());
    assert_eq!(cluster.truth_writers_on(&old_host, &truth), vec![old_pid], "the primary runs in its host's namespace");

    // Cut the primary's host off. Its agent and cell keep running; the agent can renew nothing.
    let (cut, cut_ns) = (Instant::now(), monotonic_ns());
    cluster.partition(&old_host);
    let (moved, took) = cluster.wait_primary_elsewhere(&id, &old_host, old_epoch, cut, FAILOVER_DEADLINE);
    // The new primary's start is journaled only after the old lease expired: by now the shim
    // on the cut-off host must have killed the old one.
    assert!(
        !alive(old_pid),
        "the old primary (pid {old_pid}) still runs on the cut-off {old_host} next to the new one on {}",
        moved.host
    );
    let new_epoch = moved.epoch.unwrap();
    wait_for_lines(&cluster, &truth, new_epoch, 5, 0);
    let spans = check_no_overlap(&truth);
    let (old_span, new_span) = (spans[&old_epoch], spans[&new_epoch]);
    eprintln!(
        "netns partition of {old_host}: old primary (epoch {old_epoch}) last wrote {}, new primary on {} (epoch {new_epoch}) first wrote {} \
         (gap {} ms); the control plane showed it running after {took:?}",
        ms(cut_ns, old_span.last),
        moved.host,
        ms(cut_ns, new_span.first),
        (new_span.first - old_span.last) / 1_000_000,
    );
    assert_eq!(cluster.host_state(&old_host).as_deref(), Some("down"), "a cut-off host is down");
    // Not the agent (it could not hear of the new primary) nor anyone else: the shim's own timer.
    let old_cell = first.cell_id.clone().expect("a running workload has a cell");
    let exit = cluster.wait_cell_exit(&old_host, &old_cell);
    assert!(exit.fenced, "the old primary ended otherwise than by its shim's fence: {exit:?}");

    // Heal the link: the host comes back, and must not resurrect its old cell or disturb the
    // new primary.
    let (healed, healed_ns) = (Instant::now(), monotonic_ns());
    cluster.heal(&old_host);
    let back = cluster.wait_host(&old_host, "up", SETUP_DEADLINE);
    eprintln!("netns partition healed: {old_host} up again after {back:?}");
    std::thread::sleep(Duration::from_secs(1));
    let now = cluster.server.status(&id);
    assert_eq!(
        (now.state.as_str(), now.host.as_str(), now.epoch, now.pid),
        ("running", moved.host.as_str(), moved.epoch, moved.pid),
        "the new primary stays as it was after the partition healed\n{}",
        cluster.logs()
    );
    assert!(!alive(old_pid), "the old primary came back to life");
    assert_eq!(
        cluster.truth_writers_on(&old_host, &truth),
        Vec::<u32>::new(),
        "a cell of the workload runs on the healed {old_host}"
    );
    wait_for_lines(&cluster, &truth, new_epoch, 5, healed_ns);
    let spans = check_no_overlap(&truth);
    assert_eq!(spans.keys().copied().collect::<Vec<_>>(), vec![old_epoch, new_epoch], "no other primary ever ran: {spans:?}");
    assert!(spans[&old_epoch].last < healed_ns, "the old epoch wrote again after the heal: {spans:?}");
    // The healed host reported its inventory; the control plane had it remove the old cell.
    cluster.wait_cell_removed(&old_host, &old_cell);
    eprintln!("netns partition: old cell removed from {old_host} within {:?} of the heal", healed.elapsed());
}

#[test]
fn killing_a_whole_namespace_fails_over() {
    let mut cluster = NetCluster::start(3);
    let (truth, id, first) = start_ground_truth(&cluster);
    let (old_host, old_epoch, old_pid) = (first.host.clone(), first.epoch.unwrap(), first.pid.unwrap());
    let agent_pid = cluster.agent(&old_host).pid();

    let (killed_at, killed_ns) = (Instant::now(), monotonic_ns());
    let killed = cluster.kill_host(&old_host);
    assert!(killed.contains(&agent_pid) && killed.contains(&old_pid), "agent {agent_pid} and cell {old_pid} in {killed:?}");
    let (moved, took) = cluster.wait_primary_elsewhere(&id, &old_host, old_epoch, killed_at, FAILOVER_DEADLINE);
    let new_epoch = moved.epoch.unwrap();
    wait_for_lines(&cluster, &truth, new_epoch, 5, 0);
    let spans = check_no_overlap(&truth);
    assert_eq!(spans.keys().copied().collect::<Vec<_>>(), vec![old_epoch, new_epoch], "{spans:?}");
    let (old_span, new_span) = (spans[&old_epoch], spans[&new_epoch]);
    eprintln!(
        "netns host killed ({} processes in {}): old primary (epoch {old_epoch}) last wrote {}, new primary on {} (epoch {new_epoch}) \
         first wrote {} (gap {} ms); the control plane showed it running after {took:?}",
        killed.len(),
        cluster.net_host(&old_host).namespace,
        ms(killed_ns, old_span.last),
        moved.host,
        ms(killed_ns, new_span.first),
        (new_span.first - old_span.last) / 1_000_000,
    );
    assert_eq!(cluster.host_state(&old_host).as_deref(), Some("down"), "{:?}", cluster.server.hosts());
}

/// The ground-truth workload ([`ground_truth_spec`]) as a warm-standby workload with `standbys`
/// slots. Its `[replication]` table goes right before `[placement]`, whichever the ground truth
/// ends with.
fn warm_standby_truth_spec(truth: &Path, standbys: u32) -> String {
    let spec = ground_truth_spec(truth);
    assert!(spec.contains("\n[placement]\n"), "the ground truth has a [placement] table:\n{spec}");
    let replication = format!("\n[replication]\nmode = \"warm-standby\"\nstandbys = {standbys}\n[placement]\n");
    spec.replacen("\n[placement]\n", &replication, 1)
}

/// Warm standbys across namespaces: the primary's host is cut off, then — once it is back and
/// the slots are armed again — the new primary's whole namespace is killed. Each time a standby
/// (one of the armed slots' hosts) takes over with a higher epoch, and the ground truth shows
/// the old epoch's last line before the new one's first.
#[test]
fn warm_standby_in_namespaces_survives_a_partition_and_a_killed_namespace() {
    let mut cluster = NetCluster::start(3);
    let truth = crate::support::shared_dir(cluster.root.path(), "truth").join("truth.log");
    let id = cluster.server.run("truth.toml", &warm_standby_truth_spec(&truth, 2));
    let armed = cluster.wait_for(&id, "a running primary with two armed standbys", |v| {
        v.state == "running" && v.epoch.is_some() && v.pid.is_some() && v.standbys.len() == 2
    });
    let (first_host, first_epoch, first_pid) = (armed.host.clone(), armed.epoch.unwrap(), armed.pid.unwrap());
    let first_slots: Vec<String> = armed.standbys.iter().map(|s| s.host.clone()).collect();
    assert!(
        !first_slots.contains(&first_host) && first_slots[0] != first_slots[1],
        "two slots on the two other hosts: {armed:?}"
    );
    wait_for_lines(&cluster, &truth, first_epoch, 10, 0);
    assert_eq!(cluster.truth_writers_on(&first_host, &truth), vec![first_pid], "the primary runs in its host's namespace");

    // 1. The primary's host is cut off; its agent and cell keep running until the shim fences.
    let (cut, cut_ns) = (Instant::now(), monotonic_ns());
    cluster.partition(&first_host);
    let (second, took) = cluster.wait_primary_elsewhere(&id, &first_host, first_epoch, cut, FAILOVER_DEADLINE);
    assert!(first_slots.contains(&second.host), "a standby took over, not a cold host: {second:?} (slots {first_slots:?})");
    assert_eq!((second.failovers, second.restarts), (1, 0), "a failover is not a restart: {second:?}");
    assert!(
        !alive(first_pid),
        "the old primary (pid {first_pid}) still runs on the cut-off {first_host} next to the new one on {}",
        second.host
    );
    let second_epoch = second.epoch.unwrap();
    wait_for_lines(&cluster, &truth, second_epoch, 5, 0);
    let spans = check_no_overlap(&truth);
    let (old_span, new_span) = (spans[&first_epoch], spans[&second_epoch]);
    eprintln!(
        "netns warm standby, partition of {first_host}: old primary (epoch {first_epoch}) last wrote {}, standby on {} \
         (epoch {second_epoch}) first wrote {} (gap {} ms); the control plane showed it running after {took:?}",
        ms(cut_ns, old_span.last),
        second.host,
        ms(cut_ns, new_span.first),
        (new_span.first - old_span.last) / 1_000_000,
    );
    let first_cell = armed.cell_id.clone().expect("a running workload has a cell");
    let exit = cluster.wait_cell_exit(&first_host, &first_cell);
    assert!(exit.fenced, "the old primary ended otherwise than by its shim's fence: {exit:?}");

    // 2. Heal: the host comes back, its old cell stays dead, and the slots are armed again —
    // two of them, none on the new primary's host, naming it.
    let healed = Instant::now();
    cluster.heal(&first_host);
    let back = cluster.wait_host(&first_host, "up", SETUP_DEADLINE);
    let rearmed = cluster.wait_for(&id, "two standbys re-armed around the new primary", |v| {
        v.standbys.len() == 2
            && v.standbys.iter().all(|s| s.host != second.host && s.primary == second.host)
            && v.standbys[0].host != v.standbys[1].host
    });
    eprintln!(
        "netns warm standby: {first_host} up again {back:?} after the heal, slots re-armed on {:?} after {:?}",
        rearmed.standbys.iter().map(|s| s.host.as_str()).collect::<Vec<_>>(),
        healed.elapsed()
    );
    assert_eq!(
        (rearmed.state.as_str(), rearmed.host.as_str(), rearmed.epoch, rearmed.pid),
        ("running", second.host.as_str(), second.epoch, second.pid),
        "the new primary stays as it was after the partition healed\n{}",
        cluster.logs()
    );
    assert_eq!(
        cluster.truth_writers_on(&first_host, &truth),
        Vec::<u32>::new(),
        "a cell of the workload runs on the healed {first_host}"
    );
    let rearmed_slots: Vec<String> = rearmed.standbys.iter().map(|s| s.host.clone()).collect();

    // 3. The new primary's whole namespace dies: agent, shim, cell.
    let second_pid = second.pid.unwrap();
    let second_agent = cluster.agent(&second.host).pid();
    let (killed_at, killed_ns) = (Instant::now(), monotonic_ns());
    let killed = cluster.kill_host(&second.host);
    assert!(
        killed.contains(&second_agent) && killed.contains(&second_pid),
        "agent {second_agent} and cell {second_pid} in {killed:?}"
    );
    let (third, took) = cluster.wait_primary_elsewhere(&id, &second.host, second_epoch, killed_at, FAILOVER_DEADLINE);
    assert!(rearmed_slots.contains(&third.host), "a standby took over, not a cold host: {third:?} (slots {rearmed_slots:?})");
    assert_eq!((third.failovers, third.restarts), (2, 0), "a failover is not a restart: {third:?}");
    let third_epoch = third.epoch.unwrap();
    wait_for_lines(&cluster, &truth, third_epoch, 5, 0);
    let spans = check_no_overlap(&truth);
    assert_eq!(
        spans.keys().copied().collect::<Vec<_>>(),
        vec![first_epoch, second_epoch, third_epoch],
        "no other primary ever ran: {spans:?}"
    );
    let (old_span, new_span) = (spans[&second_epoch], spans[&third_epoch]);
    eprintln!(
        "netns warm standby, {} killed ({} processes): old primary (epoch {second_epoch}) last wrote {}, standby on {} \
         (epoch {third_epoch}) first wrote {} (gap {} ms); the control plane showed it running after {took:?}",
        second.host,
        killed.len(),
        ms(killed_ns, old_span.last),
        third.host,
        ms(killed_ns, new_span.first),
        (new_span.first - old_span.last) / 1_000_000,
    );
    assert_eq!(cluster.host_state(&second.host).as_deref(), Some("down"), "{:?}", cluster.server.hosts());
}

/// SplitMix64: a small deterministic generator, so a run of the blip test can be replayed from
/// the seed it prints.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (the modulo bias is irrelevant at these ranges).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// The wall clock as `HH:MM:SS.mmm` UTC, to line up with the events' `time` and the logs.
fn utc_now() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}.{:03}", s / 3600 % 24, s / 60 % 60, s % 60, ms % 1000)
}

/// Short outages of a host's link — its bridge-side veth down for 50–100 ms every 1–2 s, ~5 % of
/// the time at most — must cost at most a heartbeat or two, never the host: no `host.down`, no
/// failover, the same primary (epoch and pid) throughout.
///
/// The seed comes from `WARDEN_BLIP_SEED` if set, else at random; it is printed either way.
#[test]
fn short_link_blips_do_not_fail_a_host_over() {
    const BLIPPING: Duration = Duration::from_secs(20);
    let seed = std::env::var("WARDEN_BLIP_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("WARDEN_BLIP_SEED is a u64"))
        .unwrap_or_else(random_u64);
    eprintln!("link blips: seed {seed} (replay with WARDEN_BLIP_SEED={seed})");
    let mut rng = SplitMix64(seed);

    let cluster = NetCluster::start(3);
    let (truth, id, first) = start_ground_truth(&cluster);
    let (host, epoch, pid) = (first.host.clone(), first.epoch.unwrap(), first.pid.unwrap());
    assert_eq!(cluster.truth_writers_on(&host, &truth), vec![pid], "the primary runs in its host's namespace");

    // The blips: (start, offset from the first in ms, length in ms).
    let mut blips: Vec<(String, u128, u128)> = Vec::new();
    let started = Instant::now();
    let started_utc = utc_now();
    while started.elapsed() < BLIPPING {
        std::thread::sleep(Duration::from_millis(rng.range(1_000, 2_000)));
        let window = Duration::from_millis(rng.range(50, 100));
        let (at, at_utc) = (started.elapsed(), utc_now());
        cluster.partition(&host);
        let down = Instant::now();
        std::thread::sleep(window);
        cluster.heal(&host);
        blips.push((at_utc, at.as_millis(), down.elapsed().as_millis()));
    }
    let total = started.elapsed();
    let down_ms: u128 = blips.iter().map(|b| b.2).sum();
    let ended_ns = monotonic_ns();
    eprintln!(
        "link blips on {host}: {} windows, {down_ms} ms down in {total:?} ({:.1} %), from {started_utc} UTC",
        blips.len(),
        down_ms as f64 / total.as_millis() as f64 * 100.0
    );
    let blip_list =
        || blips.iter().map(|(utc, at, len)| format!("  {utc} UTC (+{at} ms): down {len} ms")).collect::<Vec<_>>().join("\n");

    // Let whatever the last blip set going settle, and see the primary still writing.
    wait_for_lines(&cluster, &truth, epoch, 10, ended_ns);
    let events = cluster_events(&cluster.server);
    let about_host: Vec<String> = events
        .iter()
        .filter(|e| e.data.get("host").and_then(|h| h.as_str()) == Some(host.as_str()))
        .map(|e| format!("  #{} {} {} {}", e.seq, e.time, e.event_type, e.data))
        .collect();
    let downs: Vec<&warden_core::CloudEvent> = events
        .iter()
        .filter(|e| {
            e.event_type == "dev.warden.host.down.v1" && e.data.get("host").and_then(|h| h.as_str()) == Some(host.as_str())
        })
        .collect();
    assert!(
        downs.is_empty(),
        "short blips of its link took {host} down: {downs:?}\nevents about {host}:\n{}\nblips:\n{}\n{}",
        about_host.join("\n"),
        blip_list(),
        cluster.logs()
    );
    let now = cluster.server.status(&id);
    assert_eq!(
        (now.state.as_str(), now.host.as_str(), now.epoch, now.pid),
        ("running", host.as_str(), Some(epoch), Some(pid)),
        "the primary did not stay as it was through the blips\nevents about {host}:\n{}\nblips:\n{}\n{}",
        about_host.join("\n"),
        blip_list(),
        cluster.logs()
    );
    assert!(alive(pid), "the primary (pid {pid}) is gone");
    let spans = check_no_overlap(&truth);
    assert_eq!(spans.keys().copied().collect::<Vec<_>>(), vec![epoch], "only epoch {epoch} ever ran: {spans:?}");
    let span = spans[&epoch];
    // What the blips did to the agent's heartbeats (a failed one is logged when its error changes).
    let agent_log = std::fs::read_to_string(cluster.agent(&host).data_dir.join("agent.log")).unwrap_or_default();
    let heartbeat_lines: Vec<&str> = agent_log.lines().filter(|l| l.contains("heartbeat")).collect();
    eprintln!(
        "link blips:\n{}\n{host}'s agent log on heartbeats ({} lines):\n{}",
        blip_list(),
        heartbeat_lines.len(),
        heartbeat_lines.join("\n")
    );
    eprintln!(
        "link blips: {host} stayed up, epoch {epoch} pid {pid} ran throughout ({} lines over {} ms)",
        span.lines,
        (span.last - span.first) / 1_000_000
    );
}

/// `warden events -o json`: the whole journal.
fn cluster_events(server: &Server) -> Vec<warden_core::CloudEvent> {
    server.cli_ok(&["events", "-o", "json"]).lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}
