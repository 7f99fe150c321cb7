//! Leases: the table interface, its DynamoDB and in-memory implementations, and the
//! algorithm that renews, takes and balances them.

pub mod coordinator;
pub mod dynamodb;
mod held;
pub mod memory;
pub mod store;

pub use coordinator::{HeldLease, LeaseCoordinator, LeaseCoordinatorConfig, TakeRound};
pub use dynamodb::DynamoDbLeaseStore;
pub(crate) use held::timed;
pub use memory::MemoryLeaseStore;
pub use store::{CheckpointUpdate, LeaseStore, LeaseStoreError};
