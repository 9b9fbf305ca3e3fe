//! What a configuration that cannot be used says: the key at fault and why.

use crate::cache::CacheConfigError;
use crate::health::HealthParamsError;
use crate::policy::{AccessConfigError, RateLimitConfigError};
use crate::tiers::{BudgetParamsError, TierParamsError};

/// A configuration that cannot be used, naming the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// serde's message, which names the key and the line.
        message: String,
    },
    /// A `[tiers]` value (or a zone's) out of range.
    #[error("invalid config: {0}")]
    Tiers(#[from] TierParamsError),
    /// A `[budget]` value out of range.
    #[error("invalid config: {0}")]
    Budget(#[from] BudgetParamsError),
    /// A `[health]` value out of range.
    #[error("invalid config: {0}")]
    Health(#[from] HealthParamsError),
    /// A `[cache]` value out of range.
    #[error("invalid config: {0}")]
    Cache(#[from] CacheConfigError),
    /// An `[access]` entry that is not a network.
    #[error("invalid config: {0}")]
    Access(#[from] AccessConfigError),
    /// A `[ratelimit]` value out of range.
    #[error("invalid config: {0}")]
    RateLimit(#[from] RateLimitConfigError),
    /// A value out of range or inconsistent with another.
    #[error("invalid config: {key}: {reason}")]
    Invalid {
        /// Dotted path of the key, e.g. `tiers.batch_size`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A TOML error as one line (for logs): where, and serde's message, which names
/// the key.
pub(super) fn one_line(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

pub(super) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}
