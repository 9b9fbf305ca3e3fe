//! Client policy: which clients are served at all ([`access`]) and, later in the
//! same pass, how fast.
//!
//! Pure logic, no sockets and no DNS: the shard asks with the client's address (and
//! `now` where time matters) before it reads the query, and builds whatever reply
//! the verdict calls for. The structures here are built from their config sections
//! once per (re)load and read on the hot path without allocating.
//!
//! Imports: none from `shard` (the caller) nor from the DNS parts.

pub mod access;

pub use access::{AccessAction, AccessConfig, AccessConfigError, AccessList, AccessVerdict};

/// The policy in force on one shard, built from the config sections and replaced
/// whole by a reload (SIGHUP): every shard applies a new one as soon as it sees the
/// reloaded config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// `[access]`.
    pub access: AccessList,
}

impl Policy {
    /// Builds the policy from its sections; the error names the key at fault.
    pub fn new(access: &AccessConfig) -> Result<Self, AccessConfigError> {
        Ok(Self {
            access: AccessList::new(access)?,
        })
    }
}
