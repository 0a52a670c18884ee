//! Deterministic simulations of warden's distributed protocols: the pure core's state machines,
//! wired over turmoil's simulated network and clock, with crashes, partitions, delays and clock
//! drift injected from a seed. See `lease` for the lease and warm-standby protocol.

pub mod lease;
