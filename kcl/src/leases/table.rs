//! How the lease table is created: name, billing, tags, backups, protection and the owner
//! index. A table that already exists is used as it is.

/// Settings of the DynamoDB lease table, applied when the table is created (the Java KCL's
/// `LeaseManagementConfig` table options). A table that exists is used as it is, whoever
/// created it, except that point-in-time recovery is switched on at every start when asked
/// for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseTableConfig {
    /// The table name (Java: `tableName`). Default `None`: the application name.
    pub table_name: Option<String>,
    /// Capacity mode (Java: `billingMode`). Default on-demand.
    pub billing: LeaseTableBilling,
    /// Tags put on a new table (Java: `tags`). Default none.
    pub tags: Vec<(String, String)>,
    /// Point-in-time recovery (continuous backups) (Java: `leaseTablePitrEnabled`). Default
    /// off. When on, it is checked, and enabled if needed, at every start.
    pub point_in_time_recovery: bool,
    /// Deletion protection of a new table (Java: `leaseTableDeletionProtectionEnabled`).
    /// Default off.
    pub deletion_protection: bool,
    /// Create a new table with the `LeaseOwnerToLeaseKeyIndex` global secondary index (hash
    /// key `leaseOwner`, range key `leaseKey`, keys only), as the Java KCL 3 does, so that a
    /// worker's leases are listed with a query instead of a scan. Default on. A table without
    /// the index is used with scans.
    pub owner_index: bool,
}

impl Default for LeaseTableConfig {
    fn default() -> Self {
        LeaseTableConfig {
            table_name: None,
            billing: LeaseTableBilling::OnDemand,
            tags: Vec::new(),
            point_in_time_recovery: false,
            deletion_protection: false,
            owner_index: true,
        }
    }
}

/// The capacity mode of a new lease table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseTableBilling {
    /// Pay per request (the default, as in the Java KCL).
    #[default]
    OnDemand,
    /// Provisioned capacity (the Java KCL's `initialLeaseTableReadCapacity` and
    /// `initialLeaseTableWriteCapacity`, 10 each there). The owner index gets the same.
    Provisioned {
        /// Read capacity units.
        read_capacity_units: i64,
        /// Write capacity units.
        write_capacity_units: i64,
    },
}

/// The name of the owner index (the Java KCL 3's).
pub const OWNER_INDEX_NAME: &str = "LeaseOwnerToLeaseKeyIndex";
