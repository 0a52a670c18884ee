//! warden's core: types, events and pure state machines — no tokio, no clock, no I/O.
//!
//! Everything here is deterministic. Time is an input (`now_ms`), effects are outputs, and the
//! state of a workload is a fold over its events (`Projection::apply`). The runtime crates carry
//! the effects out and feed results back in as inputs.

pub mod authz;
pub mod batch;
pub mod canonical;
pub mod cluster;
pub mod event;
pub mod fingerprint;
pub mod job;
pub mod keys;
pub mod lease;
pub mod projection;
pub mod rollout;
pub mod secrets;
pub mod spec;
pub mod standby;
pub mod time;
pub mod types;
pub mod units;
pub mod workload;

pub use event::{CloudEvent, EventData, NewEvent};
pub use projection::Projection;
pub use spec::{Spec, SpecError};
pub use types::*;
pub use workload::{Effect, Input, Phase, Workload};
