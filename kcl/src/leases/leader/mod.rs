//! The leader: one worker, elected through a lock item in the coordinator state table,
//! assigns the leases of the whole fleet, so that workers never scan the lease table
//! (the Java KCL 3's design). See `election.rs` for the lock, `fleet.rs` for how workers
//! are judged alive or dead, `plan.rs` for the decision and `assigner.rs` for the writes.

pub(crate) mod assigner;
pub(crate) mod election;
pub(crate) mod fleet;
pub(crate) mod plan;
pub(crate) mod watch;

pub use plan::CpuBalancing;
