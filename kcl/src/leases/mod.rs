//! Leases: the table interface and its DynamoDB and in-memory implementations (public, for
//! lease tools and stores of your own), the coordinator tables beside it
//! ([`coordination`]), and the algorithm that renews, takes, assigns and balances them
//! (internal): every worker for itself, or a leader for the fleet ([`Coordination`]).

pub mod coordination;
pub(crate) mod coordinator;
pub(crate) mod dynamodb;
mod heartbeat;
mod held;
pub(crate) mod leader;
pub(crate) mod liveness;
mod memory;
pub mod reset;
mod store;
mod table;
pub(crate) mod worker;

pub use coordinator::ThroughputBalancing;
pub(crate) use coordinator::{HeldLease, LeaseCoordinatorConfig};
pub use dynamodb::DynamoDbLeaseStore;
pub(crate) use held::timed;
pub use leader::CpuBalancing;
pub use memory::MemoryLeaseStore;
pub use store::{CheckpointUpdate, LeaseStore, LeaseStoreError};
pub use table::{LeaseTableBilling, LeaseTableConfig, OWNER_INDEX_NAME};
pub use worker::{Coordination, LeaderConfig};
