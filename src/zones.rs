//! Forward zones: which upstream group, strategy and tier parameters serve a name.
//!
//! A zone is a name suffix; a query name belongs to the zone with the longest suffix
//! that matches it on a label boundary, else to the default route (every upstream,
//! the global strategy). Matching works on lowercased wire-form names and allocates
//! nothing.

use crate::config::Config;
use crate::health::UpstreamIdx;
use crate::tiers::{StrategyKind, TierParams};

/// Where queries for a set of names go.
#[derive(Debug, Clone)]
pub struct Route {
    /// Upstreams of this route, as indices into the configured list.
    pub upstreams: Vec<UpstreamIdx>,
    /// Strategy.
    pub strategy: StrategyKind,
    /// Tier parameters.
    pub tiers: TierParams,
}

/// The default route plus every zone, longest suffix first.
#[derive(Debug, Clone)]
pub struct ZoneTable {
    default: Route,
    zones: Vec<(Vec<u8>, Route)>,
}

/// Whether `suffix` (wire form) ends `name` (wire form) on a label boundary.
fn is_suffix(name: &[u8], suffix: &[u8]) -> bool {
    if suffix.len() > name.len() {
        return false;
    }
    let start = name.len() - suffix.len();
    if name[start..] != *suffix {
        return false;
    }
    // `start` must be the offset of a label in `name`.
    let mut pos = 0;
    while pos < start {
        pos += 1 + name[pos] as usize;
    }
    pos == start
}

impl ZoneTable {
    /// Builds the table from a validated config.
    pub fn new(config: &Config) -> Self {
        let default = Route {
            upstreams: UpstreamIdx::all(config.upstreams.len()).collect(),
            strategy: config.strategy,
            tiers: config.tiers.clone(),
        };
        let mut zones: Vec<(Vec<u8>, Route)> = config
            .zones
            .iter()
            .filter_map(|z| {
                let suffix = z.suffix_wire().ok()?;
                let upstreams = z
                    .upstreams
                    .iter()
                    .filter_map(|n| config.upstream_index(n).map(UpstreamIdx::new))
                    .collect();
                let route = Route {
                    upstreams,
                    strategy: z.strategy.unwrap_or(config.strategy),
                    tiers: z.tiers.clone().unwrap_or_else(|| config.tiers.clone()),
                };
                Some((suffix, route))
            })
            .collect();
        zones.sort_by_key(|z| std::cmp::Reverse(z.0.len()));
        Self { default, zones }
    }

    /// The route for a lowercased wire-form name: longest matching suffix wins.
    pub fn route(&self, qname_lower: &[u8]) -> &Route {
        self.zones
            .iter()
            .find(|(suffix, _)| is_suffix(qname_lower, suffix))
            .map_or(&self.default, |(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_suffix;
    use crate::health::{upstream, upstreams};

    #[test]
    fn suffix_matches_on_label_boundaries_only() {
        let name = parse_suffix("www.corp.example").unwrap();
        assert!(is_suffix(&name, &parse_suffix("corp.example").unwrap()));
        assert!(is_suffix(&name, &parse_suffix("www.corp.example").unwrap()));
        assert!(is_suffix(&name, &parse_suffix(".").unwrap()));
        assert!(!is_suffix(&name, &parse_suffix("orp.example").unwrap()));
        let other = parse_suffix("xcorp.example").unwrap();
        assert!(!is_suffix(&other, &parse_suffix("corp.example").unwrap()));
    }

    #[test]
    fn longest_suffix_wins() {
        let text = r#"
            [[upstream]]
            address = "127.0.0.1:5301"
            name = "a"
            [[upstream]]
            address = "127.0.0.1:5302"
            name = "b"
            [[upstream]]
            address = "127.0.0.1:5303"
            name = "c"
            [[zone]]
            suffix = "example"
            upstreams = ["a"]
            strategy = "parallel"
            [[zone]]
            suffix = "corp.example"
            upstreams = ["b", "c"]
            strategy = "sequential"
        "#;
        let config = Config::parse(text, "t").unwrap();
        let table = ZoneTable::new(&config);
        let r = table.route(&parse_suffix("host.corp.example").unwrap());
        assert_eq!(
            (r.upstreams.as_slice(), r.strategy),
            (&upstreams([1, 2])[..], StrategyKind::Sequential)
        );
        let r = table.route(&parse_suffix("www.example").unwrap());
        assert_eq!(
            (r.upstreams.as_slice(), r.strategy),
            (&[upstream(0)][..], StrategyKind::Parallel)
        );
        let r = table.route(&parse_suffix("www.example.net").unwrap());
        assert_eq!(r.upstreams, vec![0, 1, 2]);
        assert_eq!(r.strategy, StrategyKind::Staggered);
    }
}
