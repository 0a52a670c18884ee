//! Everything outside the protocol, shared by the simulated nodes: the drifting clocks, the
//! control plane's store (its journal, which survives its crashes), each host's disk (which
//! survives its agent's), the cells under their shims (the ground truth the checker reads), and
//! the trace.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use warden_core::cluster::{Report, ReportEvent};
use warden_core::lease::{HeldLease, LeaseTiming, OutagePolicy};
use warden_core::{EventData, Projection};

use crate::rng::Rng;
use crate::wire::Cursor;

pub const HOSTS: [&str; 4] = ["h0", "h1", "h2", "h3"];
/// The one workload's id (and, as `web`, the id its submitter chose).
pub const WORKLOAD: &str = "w-web";

/// One seeded world's settings.
#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub timing: LeaseTiming,
    /// The spec's `replication.promotion_delay`.
    pub promotion_delay_ms: u64,
    /// The spec's `replication.standbys`.
    pub standbys: u32,
    /// Faults are injected until this real time, then everything is healed.
    pub faults_until_ms: u64,
    /// The run ends here; a primary must be running by then.
    pub end_ms: u64,
    pub max_latency_ms: u64,
    /// A deliberate bug for the suite's own test: shims fence this much later than the lease
    /// allows. Always 0 except to prove the checker catches an unsafe fence.
    pub late_fence_ms: u64,
    /// Faults at fixed times instead of drawn ones: (at ms, fault, for ms). A host index of
    /// `HOLDER` is resolved to whoever holds the lease (in the journal) at that moment.
    pub script: Option<&'static [(u64, crate::faults::Fault, u64)]>,
    /// The workload's `placement.control_plane_outage`: whether its primary takes a refused
    /// connection (no control plane listening) as a renewal.
    pub outage: OutagePolicy,
    /// A deliberate bug for the suite's own test: a restarted control plane counts its leases as
    /// renewed this much *before* it listens (assumption A5 broken). Always 0 except to prove the
    /// checker catches it.
    pub grace_before_listening_ms: u64,
}

impl SimConfig {
    /// A world drawn from `seed`: the drift bound and kill budget vary too, so the arithmetic is
    /// exercised away from the defaults (each timing still passes `validate`).
    pub fn from_seed(seed: u64) -> SimConfig {
        let mut rng = Rng::new(seed ^ 0x5eed);
        let drift_ppm = [100, 1_000, 20_000, 50_000][rng.below(4) as usize];
        let timing = LeaseTiming { drift_ppm, kill_budget_ms: 50 + rng.below(200), ..LeaseTiming::default() };
        // One world in six lasts long enough for a control plane to stay down for many seconds
        // while hosts fail around it.
        let faults_until_ms = if rng.below(6) == 0 { 20_000 } else { 8_000 };
        SimConfig {
            seed,
            timing,
            promotion_delay_ms: 100 + rng.below(400),
            faults_until_ms,
            end_ms: faults_until_ms + 6_000,
            max_latency_ms: 1 + rng.below(60),
            late_fence_ms: 0,
            script: None,
            standbys: 2 + rng.below(2) as u32,
            outage: if rng.below(4) == 0 { OutagePolicy::Stop } else { OutagePolicy::RideOut },
            grace_before_listening_ms: 0,
        }
    }
}

/// What a world did, for the suite's totals.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// Leases granted (the journal's `LeaseGranted` events).
    pub grants: u64,
    pub fenced: u64,
    pub faults: u64,
}

/// A cell as the world (not the protocol) sees it: on a host's disk, under its shim.
#[derive(Clone, Debug)]
pub struct Cell {
    pub workload_id: String,
    pub cell_id: String,
    pub epoch: u64,
    /// The shim's fence, on the host's clock.
    pub deadline_ms: u64,
    pub started_at_ms: u64,
    /// Set once killed: the real time it is gone.
    pub gone_at_ms: Option<u64>,
    /// Its exit is in the agent's report queue (or was, and was acknowledged).
    pub exit_queued: bool,
    /// Its files are gone (`Remove`): no longer in the inventory.
    pub removed: bool,
}

impl Cell {
    pub fn alive_at(&self, now_ms: u64) -> bool {
        self.started_at_ms <= now_ms && self.gone_at_ms.is_none_or(|gone| gone > now_ms)
    }
}

/// A standby slot as the agent keeps it on disk.
#[derive(Clone, Copy, Debug)]
pub struct Armed {
    pub standby_index: usize,
    pub promotion_delay_ms: u64,
}

/// The control plane's node as a connecting host finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlPlaneNode {
    /// Listening (from the moment its process starts serving).
    Listening,
    /// Its process is dead, its machine is not: connections are refused by its kernel.
    ProcessDown,
    /// Its machine is gone: connections go unanswered, like a partition's.
    MachineDown,
}

/// What an agent keeps on its host's disk: it survives the agent's crashes (and the host's).
#[derive(Clone, Debug, Default)]
pub struct AgentDisk {
    /// The command cursor (`commands.json`); `None` before the first command.
    pub cursor: Option<Cursor>,
    /// The report queue (`reports.db`): unacknowledged reports, oldest first.
    pub reports: Vec<Report>,
    pub last_report_seq: u64,
    /// Standby slots by workload id.
    pub armed: BTreeMap<String, Armed>,
}

pub struct World {
    pub config: SimConfig,
    pub rng: Rng,
    /// Per node: (offset ms, rate in ppm off real: within ±drift).
    clocks: BTreeMap<String, (u64, i64)>,
    /// The control plane's journal: each committed event with its time on the control plane's
    /// clock. It survives the control plane's crashes; its memory does not.
    pub journal: Vec<(u64, EventData)>,
    /// The journal folded as it was committed: what the store's readers see.
    pub committed: Projection,
    /// Bumped by every start of the control plane (the real one draws a random id).
    pub incarnation: u64,
    /// Cells under shims, per host: survive agent crashes, not host crashes.
    pub cells: BTreeMap<String, Vec<Cell>>,
    pub disks: BTreeMap<String, AgentDisk>,
    pub trace: Vec<String>,
    pub outcome: Outcome,
    pub now_ms: u64,
    /// A broken invariant found inside a node (the checker reports it at the next step).
    pub violation: Option<String>,
    /// Request ids, unique in the world: an answer never reaches a request it was not for,
    /// even across an agent's restart (a real one's connections close with it).
    last_request_id: u64,
    /// Whether a connection to the control plane would be accepted, refused or left unanswered.
    pub control_plane: ControlPlaneNode,
    /// Hosts whose packets to the control plane are lost (a partition, a cut link).
    pub cut_to_server: BTreeSet<String>,
    /// Hosts the control plane's packets do not reach.
    pub cut_from_server: BTreeSet<String>,
    /// One-way latency of a host's slow link, if it is slow.
    pub slow: BTreeMap<String, u64>,
}

pub type Shared = Rc<RefCell<World>>;

impl World {
    pub fn new(config: SimConfig, clocks: BTreeMap<String, (u64, i64)>) -> World {
        World {
            config,
            rng: Rng::new(config.seed ^ 0xfeed),
            clocks,
            journal: Vec::new(),
            committed: Projection::default(),
            incarnation: 0,
            cells: BTreeMap::new(),
            disks: HOSTS.iter().map(|h| (h.to_string(), AgentDisk::default())).collect(),
            trace: Vec::new(),
            outcome: Outcome::default(),
            now_ms: 0,
            violation: None,
            last_request_id: 0,
            control_plane: ControlPlaneNode::Listening,
            cut_to_server: BTreeSet::new(),
            cut_from_server: BTreeSet::new(),
            slow: BTreeMap::new(),
        }
    }

    /// The one-way latency between `host` and the control plane (a slow link's, or a typical
    /// one for the refusals this world models outside turmoil's network).
    pub fn latency_ms(&self, host: &str) -> u64 {
        self.slow.get(host).copied().unwrap_or(1 + self.config.max_latency_ms / 2)
    }

    /// Whether a connection attempt from `host` arriving now is refused: the control plane's
    /// process is down, its machine up, and the way there open.
    pub fn refuses(&self, host: &str) -> bool {
        self.control_plane == ControlPlaneNode::ProcessDown && !self.cut_to_server.contains(host)
    }

    pub fn local_ms(&self, node: &str) -> u64 {
        let (offset, rate_ppm) = self.clocks[node];
        let real = self.now_ms as i128;
        (offset as i128 + real + real * rate_ppm as i128 / 1_000_000) as u64
    }

    pub fn log(&mut self, line: String) {
        self.trace.push(format!("{:>6} {line}", self.now_ms));
    }

    pub fn next_request_id(&mut self) -> u64 {
        self.last_request_id += 1;
        self.last_request_id
    }

    pub fn disk(&mut self, host: &str) -> &mut AgentDisk {
        self.disks.entry(host.to_string()).or_default()
    }

    /// The agent queues a report durably.
    pub fn queue_report(&mut self, host: &str, workload_id: &str, cell_id: &str, event: ReportEvent) {
        let disk = self.disk(host);
        disk.last_report_seq += 1;
        let seq = disk.last_report_seq;
        disk.reports.push(Report { seq, workload_id: workload_id.to_string(), cell_id: cell_id.to_string(), event });
    }

    /// The store appends a batch's events.
    pub fn commit(&mut self, now_ms: u64, events: Vec<EventData>) {
        for data in events {
            if let Some(line) = describe(&data) {
                self.log(format!("server commits {line}"));
            }
            if matches!(data, EventData::LeaseGranted { .. }) {
                self.outcome.grants += 1;
            }
            self.committed.apply_data(&data, now_ms);
            self.journal.push((now_ms, data));
        }
    }

    /// The journal's lease holder, as an index into `HOSTS`.
    pub fn holder(&self) -> Option<usize> {
        let holder = self.committed.leases.get(WORKLOAD)?.holder.as_deref()?;
        HOSTS.iter().position(|h| *h == holder)
    }

    /// The newest lease epoch in the journal.
    pub fn newest_epoch(&self) -> u64 {
        self.committed.leases.get(WORKLOAD).map_or(0, |l| l.epoch)
    }

    /// A shim starts `cell_id` fenced under `held`.
    pub fn start_cell(&mut self, host: &str, workload_id: &str, cell_id: &str, held: HeldLease) {
        let now = self.now_ms;
        // (A4) a host stops its older cells before a newer epoch starts.
        let kill = self.kill_latency();
        for cell in self.cells.entry(host.to_string()).or_default() {
            if cell.gone_at_ms.is_none() {
                cell.gone_at_ms = Some(now + kill);
            }
        }
        self.cells.get_mut(host).expect("inserted above").push(Cell {
            workload_id: workload_id.to_string(),
            cell_id: cell_id.to_string(),
            epoch: held.epoch,
            deadline_ms: held.deadline_ms,
            started_at_ms: now,
            gone_at_ms: None,
            exit_queued: false,
            removed: false,
        });
        self.log(format!("{host} starts {cell_id} as primary epoch {} (fence at local {})", held.epoch, held.deadline_ms));
    }

    fn kill_latency(&mut self) -> u64 {
        self.rng.below(self.config.timing.kill_budget_ms + 1)
    }

    /// Kills the live cells on `host` that `which` picks; they are gone within the kill budget.
    pub fn kill_cells(&mut self, host: &str, which: impl Fn(&Cell) -> bool, why: &str) {
        let now = self.now_ms;
        let latency = self.kill_latency();
        let mut killed = Vec::new();
        for cell in self.cells.entry(host.to_string()).or_default() {
            if cell.gone_at_ms.is_none() && which(cell) {
                cell.gone_at_ms = Some(now + latency);
                killed.push(cell.cell_id.clone());
            }
        }
        for cell_id in killed {
            self.outcome.fenced += 1;
            self.log(format!("{host} kills {cell_id}: {why} (gone in {latency} ms)"));
        }
    }

    /// The shims: each fences its cell on its host's clock, whatever the agent is doing.
    pub fn run_shims(&mut self) {
        let hosts: Vec<String> = self.cells.keys().cloned().collect();
        for host in hosts {
            let local = self.local_ms(&host);
            let late = self.config.late_fence_ms;
            self.kill_cells(&host, |c| local >= c.deadline_ms + late, "shim fence: lease not renewed");
        }
    }

    /// Invariant 3's subject: the primary cells alive at this instant, as (host, epoch).
    pub fn alive(&self) -> Vec<(String, u64)> {
        let now = self.now_ms;
        let mut alive = Vec::new();
        for (host, cells) in &self.cells {
            for cell in cells.iter().filter(|c| c.alive_at(now)) {
                alive.push((host.clone(), cell.epoch));
            }
        }
        alive
    }
}

/// A committed event, in a trace line (the cluster's and the lifecycle's; the rest by name).
fn describe(data: &EventData) -> Option<String> {
    Some(match data {
        EventData::LeaseGranted { epoch, host, .. } => format!("lease epoch {epoch} to {host}"),
        EventData::LeaseReleased { epoch, .. } => format!("lease epoch {epoch} released"),
        EventData::CellPlaced { cell_id, host, epoch, .. } => format!("{cell_id} placed on {host} at epoch {epoch:?}"),
        EventData::HostDown { host, reason } => format!("{host} down: {reason}"),
        EventData::HostUp { host } => format!("{host} up"),
        EventData::WorkloadFailover { cell_id, from_host, reason, .. } => {
            format!("failover to {cell_id} from {from_host:?}: {reason}")
        }
        EventData::StandbyArmed { slot, .. } => format!("standby {} on {}", slot.standby_index, slot.host),
        EventData::StandbyReleased { host, reason, .. } => format!("standby on {host} released: {reason}"),
        EventData::LifecycleStarted { cell_id, .. } => format!("{cell_id} started"),
        EventData::LifecycleDestroyed { cell_id, reason, .. } => format!("{cell_id} destroyed: {reason}"),
        EventData::WorkloadStarting { cell_id, .. } => format!("{cell_id} starting"),
        EventData::WorkloadBackoff { delay_ms, .. } => format!("backoff {delay_ms} ms"),
        EventData::HostEnrolled { .. } | EventData::WorkloadSubmitted { .. } => return None,
        other => format!("{other:?}"),
    })
}
