//! Leases: the table interface and its DynamoDB and in-memory implementations (public, for
//! lease tools and stores of your own), and the algorithm that renews, takes and balances
//! them (internal).

pub mod coordination;
pub(crate) mod coordinator;
pub(crate) mod dynamodb;
mod heartbeat;
mod held;
pub(crate) mod leader;
pub(crate) mod liveness;
mod memory;
mod store;
mod table;

pub(crate) use coordinator::renewer::renew_forever;
pub use coordinator::ThroughputBalancing;
pub(crate) use coordinator::{next_take_at, HeldLease, LeaseCoordinator, LeaseCoordinatorConfig};
pub use dynamodb::DynamoDbLeaseStore;
pub(crate) use held::timed;
pub use leader::CpuBalancing;
pub use memory::MemoryLeaseStore;
pub use store::{CheckpointUpdate, LeaseStore, LeaseStoreError};
pub use table::{LeaseTableBilling, LeaseTableConfig, OWNER_INDEX_NAME};
