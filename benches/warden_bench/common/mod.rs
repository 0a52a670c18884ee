//! What the sections share: processes, the control plane, statistics and the table.

pub(crate) mod control_plane;
pub(crate) mod process;
pub(crate) mod stats;
pub(crate) mod table;
