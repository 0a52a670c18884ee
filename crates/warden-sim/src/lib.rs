//! Deterministic simulations of warden's distributed protocols against the code that ships: the
//! core's cluster decisions (`warden_core::cluster`), workload machine and standby role, wired
//! over turmoil's simulated network and clock as the runtime wires them, with crashes,
//! partitions, delays and clock drift injected from a seed. See `lease` for the lease and
//! warm-standby protocol.
//!
//! Rooms: `lease` (a world's run, the faults' application, the checker's verdict), `world` (the
//! ground truth, the clocks, the durable stores), `control_plane` (the server node over the
//! core), `agent` (a host's agent), `wire` (the datagrams), `faults` (what can go wrong), `rng`.

mod agent;
mod control_plane;
mod faults;
pub mod lease;
mod rng;
mod wire;
mod world;
