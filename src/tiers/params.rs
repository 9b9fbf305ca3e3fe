//! The `[tiers]` parameters (also used per forward zone), their defaults, validation,
//! and how the time-dependent ones are resolved for one flight from upstream health.
//!
//! Invariant: a [`TierParams`] that passed [`TierParams::validate`] never makes a
//! [`super::Plan`] stall: batch and tier sizes are at least 1, and every timeout that
//! bounds a flight is non-zero.

use super::UpstreamIdx;
use crate::health::HealthTracker;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// Largest `merge_min_agree`: a flight asks few upstreams (five in the usual
/// setup), so a higher count would merge nothing.
pub const MAX_MERGE_MIN_AGREE: usize = 5;

/// Hedge delay used by `fallback_timeout = "auto"` before any RTT sample exists.
const AUTO_WITHOUT_SAMPLES: Duration = Duration::from_millis(300);

/// When the stagger starts if the active tier has not answered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FallbackTimeout {
    /// A fixed delay after the flight's start (TOML: `"300ms"`).
    Fixed(Duration),
    /// A high quantile of the active tier's recent RTTs, clamped (TOML: `"auto"`).
    Auto,
}

impl Serialize for FallbackTimeout {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Fixed(d) => crate::duration::serialize(d, s),
            Self::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for FallbackTimeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim().eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        humantime::parse_duration(&text).map(Self::Fixed).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid fallback_timeout {text:?}: {e} (expected a duration like \"300ms\" or \"auto\")"
            ))
        })
    }
}

/// The `[tiers]` config section. Defaults are the design's values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TierParams {
    /// Upstreams asked at once at the start of a flight. Default 2.
    pub active_tier_size: usize,
    /// When the stagger starts if the active tier is late. Default 300ms.
    pub fallback_timeout: FallbackTimeout,
    /// Upstreams launched per staggered batch. Default 2.
    pub batch_size: usize,
    /// Delay between staggered batches. Default 50ms.
    #[serde(with = "crate::duration")]
    pub stagger_delay: Duration,
    /// Hard bound on a flight, background completion included. Default 3s.
    #[serde(with = "crate::duration")]
    pub total_collect_timeout: Duration,
    /// Keep collecting after the first good answer, for the merge. Default true;
    /// false is plain hedging.
    pub complete: bool,
    /// Quantile of recent active-tier RTTs used by `fallback_timeout = "auto"`.
    /// Default 0.95.
    pub auto_quantile: f64,
    /// Lower clamp of adaptive timeouts (auto fallback, sequential attempts).
    /// Default 20ms.
    #[serde(with = "crate::duration")]
    pub auto_min: Duration,
    /// Upper clamp of the auto fallback timeout. Default 1s.
    #[serde(with = "crate::duration")]
    pub auto_max: Duration,
    /// Per-attempt timeout of `sequential` and `random` for an upstream without RTT
    /// samples, and the upper clamp of the adaptive one. Default 1s.
    #[serde(with = "crate::duration")]
    pub attempt_timeout: Duration,
    /// The merge takes an address the first answer lacks only when at least this
    /// many other upstreams gave it (1 to [`MAX_MERGE_MIN_AGREE`]). Default 1.
    pub merge_min_agree: usize,
}

/// A [`TierParams`] value out of range: the key, as `section.key`, and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{section}.{key} {rule}")]
pub struct TierParamsError {
    /// The config section (`tiers`, or a forward zone's `zone[N].tiers`).
    pub section: String,
    /// The key in it.
    pub key: &'static str,
    /// What the value must be.
    pub rule: String,
}

impl Default for TierParams {
    fn default() -> Self {
        Self {
            active_tier_size: 2,
            fallback_timeout: FallbackTimeout::Fixed(Duration::from_millis(300)),
            batch_size: 2,
            stagger_delay: Duration::from_millis(50),
            total_collect_timeout: Duration::from_secs(3),
            complete: true,
            auto_quantile: 0.95,
            auto_min: Duration::from_millis(20),
            auto_max: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(1),
            merge_min_agree: 1,
        }
    }
}

impl TierParams {
    /// Checks the section `[tiers]`; the error names the bad key.
    pub fn validate(&self) -> Result<(), TierParamsError> {
        self.validate_in("tiers")
    }

    /// Checks these parameters as config section `section` (e.g. a forward zone's);
    /// the error names the bad key as `section.key`.
    pub fn validate_in(&self, section: &str) -> Result<(), TierParamsError> {
        let bad = |key: &'static str, rule: String| TierParamsError {
            section: section.to_string(),
            key,
            rule,
        };
        if self.active_tier_size == 0 {
            return Err(bad("active_tier_size", "must be >= 1".into()));
        }
        if self.batch_size == 0 {
            return Err(bad("batch_size", "must be >= 1".into()));
        }
        if self.total_collect_timeout.is_zero() {
            return Err(bad("total_collect_timeout", "must be > 0".into()));
        }
        if self.attempt_timeout.is_zero() {
            return Err(bad("attempt_timeout", "must be > 0".into()));
        }
        if !(self.auto_quantile > 0.0 && self.auto_quantile <= 1.0) {
            return Err(bad(
                "auto_quantile",
                format!("must be in (0, 1], got {}", self.auto_quantile),
            ));
        }
        if self.auto_min > self.auto_max {
            return Err(bad("auto_min", format!("must be <= {section}.auto_max")));
        }
        if !(1..=MAX_MERGE_MIN_AGREE).contains(&self.merge_min_agree) {
            return Err(bad(
                "merge_min_agree",
                format!(
                    "must be in 1..={MAX_MERGE_MIN_AGREE}, got {}",
                    self.merge_min_agree
                ),
            ));
        }
        if self.auto_min > self.attempt_timeout {
            return Err(bad(
                "auto_min",
                format!("must be <= {section}.attempt_timeout"),
            ));
        }
        Ok(())
    }

    /// The hedge delay of one flight whose active tier is `active`: the fixed
    /// fallback timeout, or for `auto` the `auto_quantile` of the active tier's
    /// recent RTTs (300ms without samples), clamped to `[auto_min, auto_max]`.
    pub fn hedge_after(&self, active: &[UpstreamIdx], health: &HealthTracker) -> Duration {
        match self.fallback_timeout {
            FallbackTimeout::Fixed(d) => d,
            FallbackTimeout::Auto => health
                .rtt_quantile(active, self.auto_quantile)
                .unwrap_or(AUTO_WITHOUT_SAMPLES)
                .clamp(self.auto_min, self.auto_max.max(self.auto_min)),
        }
    }

    /// Per-attempt timeout of `sequential`/`random` for `up`: its RTO (SRTT + 4
    /// RTTVAR, RFC 6298) clamped to `[auto_min, attempt_timeout]`, or
    /// `attempt_timeout` without samples.
    pub fn attempt_timeout_for(&self, up: UpstreamIdx, health: &HealthTracker) -> Duration {
        let max = self.attempt_timeout.max(self.auto_min);
        health
            .rto(up)
            .map_or(max, |rto| rto.clamp(self.auto_min, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::HealthParams;
    use crate::health::{upstream, upstreams};

    #[test]
    fn defaults_are_the_design_values_and_valid() {
        let p = TierParams::default();
        assert_eq!(p.active_tier_size, 2);
        assert_eq!(
            p.fallback_timeout,
            FallbackTimeout::Fixed(Duration::from_millis(300))
        );
        assert_eq!(p.batch_size, 2);
        assert_eq!(p.stagger_delay, Duration::from_millis(50));
        assert_eq!(p.total_collect_timeout, Duration::from_secs(3));
        assert!(p.complete);
        assert_eq!(p.merge_min_agree, 1);
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn merge_min_agree_is_bounded_and_named() {
        for ok in [1, 2, MAX_MERGE_MIN_AGREE] {
            let p = TierParams {
                merge_min_agree: ok,
                ..TierParams::default()
            };
            assert_eq!(p.validate(), Ok(()), "{ok}");
        }
        for bad in [0, MAX_MERGE_MIN_AGREE + 1, 100] {
            let p = TierParams {
                merge_min_agree: bad,
                ..TierParams::default()
            };
            let e = p.validate_in("zone[1].tiers").unwrap_err().to_string();
            assert!(
                e.starts_with("zone[1].tiers.merge_min_agree must be in 1..=5"),
                "{e}"
            );
        }
    }

    #[test]
    fn parses_toml_with_auto_and_durations() {
        let p: TierParams = toml::from_str(
            "fallback_timeout = \"auto\"\nstagger_delay = \"10ms\"\ncomplete = false",
        )
        .unwrap();
        assert_eq!(p.fallback_timeout, FallbackTimeout::Auto);
        assert_eq!(p.stagger_delay, Duration::from_millis(10));
        assert!(!p.complete);
        assert_eq!(p.batch_size, 2, "unset keys keep defaults");
        let p: TierParams = toml::from_str("fallback_timeout = \"150ms\"").unwrap();
        assert_eq!(
            p.fallback_timeout,
            FallbackTimeout::Fixed(Duration::from_millis(150))
        );
        let back: TierParams = toml::from_str(&toml::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        let auto = TierParams {
            fallback_timeout: FallbackTimeout::Auto,
            ..TierParams::default()
        };
        let back: TierParams = toml::from_str(&toml::to_string(&auto).unwrap()).unwrap();
        assert_eq!(back, auto);
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        assert!(toml::from_str::<TierParams>("batch = 3").is_err());
        let err = toml::from_str::<TierParams>("fallback_timeout = \"soonish\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("soonish"), "{err}");
        let bad = TierParams {
            batch_size: 0,
            ..TierParams::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "tiers.batch_size must be >= 1"
        );
        let bad = TierParams {
            active_tier_size: 0,
            ..TierParams::default()
        };
        assert!(bad
            .validate_in("zone.example")
            .unwrap_err()
            .to_string()
            .starts_with("zone.example.active_tier_size"));
        let bad = TierParams {
            auto_quantile: 1.5,
            ..TierParams::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "auto_quantile");
        let bad = TierParams {
            total_collect_timeout: Duration::ZERO,
            ..TierParams::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "total_collect_timeout");
        let bad = TierParams {
            auto_min: Duration::from_secs(2),
            ..TierParams::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "auto_min");
    }

    #[test]
    fn auto_hedge_uses_quantile_clamped() {
        let params = TierParams {
            fallback_timeout: FallbackTimeout::Auto,
            ..TierParams::default()
        };
        let mut h = HealthTracker::new(HealthParams::default(), &[0, 0, 0]);
        assert_eq!(
            params.hedge_after(&upstreams([0, 1]), &h),
            Duration::from_millis(300),
            "no samples"
        );
        for ms in 1..=64 {
            h.record_success(upstream(0), Duration::from_millis(ms));
        }
        // Nearest rank: ceil(0.95 * 64) = 61st smallest sample.
        assert_eq!(
            params.hedge_after(&upstreams([0, 1]), &h),
            Duration::from_millis(61)
        );
        // Tiny RTTs clamp up to auto_min, huge ones down to auto_max.
        h.record_success(upstream(1), Duration::from_micros(100));
        assert_eq!(params.hedge_after(&[upstream(1)], &h), params.auto_min);
        h.record_success(upstream(2), Duration::from_secs(9));
        assert_eq!(params.hedge_after(&[upstream(2)], &h), params.auto_max);
        // Fixed ignores health.
        assert_eq!(
            TierParams::default().hedge_after(&[upstream(0)], &h),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn attempt_timeout_adapts_and_clamps() {
        let params = TierParams::default();
        let mut h = HealthTracker::new(HealthParams::default(), &[0, 0, 0]);
        assert_eq!(
            params.attempt_timeout_for(upstream(0), &h),
            params.attempt_timeout
        );
        // First sample: srtt = 40ms, rttvar = 20ms -> rto = 120ms.
        h.record_success(upstream(0), Duration::from_millis(40));
        assert_eq!(
            params.attempt_timeout_for(upstream(0), &h),
            Duration::from_millis(120)
        );
        h.record_success(upstream(1), Duration::from_micros(50));
        assert_eq!(params.attempt_timeout_for(upstream(1), &h), params.auto_min);
        h.record_success(upstream(2), Duration::from_secs(5));
        assert_eq!(
            params.attempt_timeout_for(upstream(2), &h),
            params.attempt_timeout
        );
    }
}
