//! The strategies a flight can follow, chosen globally or per forward zone.
//!
//! The launch rules of each strategy live in [`super::Plan`] (one enum-dispatched
//! state machine); this module names them and holds the facts that differ per
//! strategy but not per flight.

use serde::{Deserialize, Serialize};

/// How one flight spreads its queries over the ordered upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StrategyKind {
    /// Active tier at once, the rest in paced batches (the default).
    #[default]
    Staggered,
    /// Every upstream at once.
    Parallel,
    /// One at a time in health order, with an adaptive per-attempt timeout.
    Sequential,
    /// One at a time in a random order.
    Random,
}

impl StrategyKind {
    /// Label for metrics, logs and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Staggered => "staggered",
            Self::Parallel => "parallel",
            Self::Sequential => "sequential",
            Self::Random => "random",
        }
    }

    /// Whether this strategy asks one upstream at a time and stops at the first good
    /// answer (no background completion, nothing to merge).
    pub fn is_serial(self) -> bool {
        matches!(self, Self::Sequential | Self::Random)
    }

    /// How many upstreams the first send of a flight launches, given the number of
    /// candidates and the configured active tier size.
    pub(crate) fn first_send(self, candidates: usize, active_tier_size: usize) -> usize {
        match self {
            Self::Staggered => active_tier_size.max(1).min(candidates),
            Self::Parallel => candidates,
            Self::Sequential | Self::Random => candidates.min(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        s: StrategyKind,
    }

    #[test]
    fn parses_lowercase_names_and_defaults_to_staggered() {
        for kind in [
            StrategyKind::Staggered,
            StrategyKind::Parallel,
            StrategyKind::Sequential,
            StrategyKind::Random,
        ] {
            let t: T = toml::from_str(&format!("s = \"{}\"", kind.as_str())).unwrap();
            assert_eq!(t.s, kind);
        }
        assert!(toml::from_str::<T>("s = \"fastest\"").is_err());
        assert_eq!(StrategyKind::default(), StrategyKind::Staggered);
    }

    #[test]
    fn first_send_sizes() {
        assert_eq!(StrategyKind::Staggered.first_send(5, 2), 2);
        assert_eq!(StrategyKind::Staggered.first_send(1, 2), 1);
        assert_eq!(StrategyKind::Parallel.first_send(5, 2), 5);
        assert_eq!(StrategyKind::Sequential.first_send(5, 2), 1);
        assert_eq!(StrategyKind::Random.first_send(0, 2), 0);
    }
}
