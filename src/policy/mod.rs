//! Client policy: which clients are served at all ([`access`]) and how fast
//! ([`ratelimit`] over UDP, [`stream_rates`] on the stream listeners).
//!
//! Pure logic, no sockets and no DNS: the shard asks with the client's address (and
//! `now` where time matters) before it reads the query, and builds whatever reply
//! the verdict calls for. The structures here are built from their config sections
//! once per (re)load and read on the hot path without allocating.
//!
//! Imports: none from `shard` (the caller) nor from the DNS parts.

pub mod access;
pub mod ratelimit;
pub(crate) mod stream_conns;
pub mod stream_rates;
pub mod tcp_clients;

pub use access::{AccessAction, AccessConfig, AccessConfigError, AccessList, AccessVerdict};
pub use ratelimit::{
    RateLimit, RateLimitAction, RateLimitConfig, RateLimitConfigError, RateLimiter, RateVerdict,
    Reservation,
};
pub use stream_rates::{StreamLimit, StreamLimiters, StreamRates};
pub use tcp_clients::{ClientSlot, TcpClients};

/// The policy in force on one shard, built from the config sections and replaced
/// whole by a reload (SIGHUP): every shard applies a new one as soon as it sees the
/// reloaded config.
///
/// The rate limiter's table is not here: it is shared by all shards (see
/// [`RateLimiter`]); each shard passes its [`RateLimit`] to it with every check.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// `[access]`.
    pub access: AccessList,
    /// `[ratelimit]`; None when off.
    pub ratelimit: Option<RateLimit>,
    /// `[ratelimit]`'s stream keys.
    pub streams: StreamRates,
}

/// A policy section that cannot be used; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyConfigError {
    /// In `[access]`.
    #[error(transparent)]
    Access(#[from] AccessConfigError),
    /// In `[ratelimit]`.
    #[error(transparent)]
    RateLimit(#[from] RateLimitConfigError),
}

impl Policy {
    /// Builds the policy from its sections; the error names the key at fault.
    pub fn new(
        access: &AccessConfig,
        ratelimit: &RateLimitConfig,
    ) -> Result<Self, PolicyConfigError> {
        ratelimit.validate()?;
        Ok(Self {
            access: AccessList::new(access)?,
            ratelimit: RateLimit::new(ratelimit),
            streams: StreamRates::new(ratelimit),
        })
    }
}
