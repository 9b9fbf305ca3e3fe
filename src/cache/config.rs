//! [`CacheConfig`]: the `[cache]` section of the configuration, with its defaults.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Sizing and TTL policy of the [`PacketCache`](super::PacketCache).
///
/// Every field has a default (`#[serde(default)]`) and unknown keys are rejected.
/// [`CacheConfig::validate`] names the offending key; [`PacketCache::new`](super::PacketCache::new)
/// never panics on an invalid config (it rounds `partitions` up to a power of two
/// and lets the upper bound of an inverted TTL clamp win).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Memory bound in bytes (wire bytes plus per-entry overhead), split evenly
    /// across partitions. Default 64 MiB.
    pub max_bytes: usize,
    /// Number of independently locked partitions, a power of two. Default 256.
    pub partitions: usize,
    /// Lower clamp of positive TTLs, seconds. Default 0.
    pub min_ttl: u32,
    /// Upper clamp of positive TTLs, seconds. Default 86400.
    pub max_ttl: u32,
    /// Lower clamp of negative (NXDOMAIN/NODATA) TTLs, seconds. Default 1.
    pub negative_min_ttl: u32,
    /// Upper clamp of negative TTLs, seconds (RFC 2308 suggests at most 3 hours).
    /// Default 3600.
    pub negative_max_ttl: u32,
    /// How long a SERVFAIL is held, seconds (RFC 9520: at least 1 s, at most 5 min).
    /// Default 1: long enough to shield a failing upstream from a retry storm,
    /// short enough that one lost packet does not fail a name for seconds.
    pub servfail_ttl: u32,
    /// Whether expired entries may answer when every upstream failed (RFC 8767).
    /// Default true.
    pub serve_stale: bool,
    /// How long past expiry an entry may still be served stale ("1d", "3h").
    /// RFC 8767 suggests 1 to 3 days. Default 1 day.
    #[serde(with = "crate::duration")]
    pub max_stale: Duration,
    /// TTL written into stale answers (RFC 8767 recommends 30). Default 30.
    pub stale_answer_ttl: u32,
    /// Whether popular entries near expiry ask for a background refresh. Default true.
    pub prefetch: bool,
    /// Hits an entry needs before it may ask for a refresh. Default 3.
    pub prefetch_min_hits: u32,
    /// Fraction of the TTL, at its end, in which a hit asks for a refresh
    /// (0.1 = the last 10%). Default 0.1.
    pub prefetch_window: f32,
    /// Hits a fresh entry that lacks some upstreams' addresses needs before it
    /// asks for its completion (the demand signal of the amplification budget:
    /// a name asked again earns it, once per entry). Default 1: the first hit.
    pub complete_min_hits: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            partitions: 256,
            min_ttl: 0,
            max_ttl: 86_400,
            negative_min_ttl: 1,
            negative_max_ttl: 3_600,
            servfail_ttl: 1,
            serve_stale: true,
            max_stale: Duration::from_secs(86_400),
            stale_answer_ttl: 30,
            prefetch: true,
            prefetch_min_hits: 3,
            prefetch_window: 0.1,
            complete_min_hits: 1,
        }
    }
}

/// A [`CacheConfig`] value out of range; the message names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CacheConfigError {
    /// `cache.partitions` is zero or not a power of two.
    #[error("cache.partitions must be a power of two, got {0}")]
    Partitions(usize),
    /// `cache.max_bytes` leaves a partition less than 4 KiB.
    #[error("cache.max_bytes must give each partition at least 4096 bytes, got {0}")]
    MaxBytes(usize),
    /// A lower TTL clamp above its upper clamp.
    #[error("cache.{0} is greater than cache.{1}")]
    InvertedClamp(&'static str, &'static str),
    /// `cache.prefetch_window` outside `0.0..=1.0`.
    #[error("cache.prefetch_window must be between 0 and 1, got {0}")]
    PrefetchWindow(f32),
}

impl CacheConfig {
    /// Checks the values a loader should refuse.
    pub fn validate(&self) -> Result<(), CacheConfigError> {
        if !self.partitions.is_power_of_two() {
            return Err(CacheConfigError::Partitions(self.partitions));
        }
        if self.max_bytes / self.partitions < 4096 {
            return Err(CacheConfigError::MaxBytes(self.max_bytes));
        }
        if self.min_ttl > self.max_ttl {
            return Err(CacheConfigError::InvertedClamp("min_ttl", "max_ttl"));
        }
        if self.negative_min_ttl > self.negative_max_ttl {
            return Err(CacheConfigError::InvertedClamp(
                "negative_min_ttl",
                "negative_max_ttl",
            ));
        }
        if !(0.0..=1.0).contains(&self.prefetch_window) {
            return Err(CacheConfigError::PrefetchWindow(self.prefetch_window));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_toml_round_trips() {
        let d = CacheConfig::default();
        assert_eq!(d.validate(), Ok(()));
        let c: CacheConfig = toml::from_str("max_stale = \"3h\"\nmin_ttl = 30").unwrap();
        assert_eq!(c.max_stale, Duration::from_secs(3 * 3600));
        assert_eq!(c.min_ttl, 30);
        assert_eq!(c.max_ttl, d.max_ttl);
        let back: CacheConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(toml::from_str::<CacheConfig>("max_ttls = 3").is_err());
    }

    #[test]
    fn validate_names_the_key() {
        let c = CacheConfig {
            partitions: 3,
            ..CacheConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("cache.partitions"));
        let c = CacheConfig {
            negative_min_ttl: 10,
            negative_max_ttl: 5,
            ..CacheConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("negative_min_ttl"));
        let c = CacheConfig {
            max_bytes: 1000,
            ..CacheConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("max_bytes"));
    }
}
