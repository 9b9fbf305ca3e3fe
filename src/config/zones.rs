//! `[[zone]]`: forward zones, name suffixes sent to their own upstream group.

use crate::tiers::{StrategyKind, TierParams};
use serde::{Deserialize, Serialize};

/// strategy and tiers. The longest matching suffix wins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// Name suffix, e.g. `"corp.example."`.
    pub suffix: String,
    /// Upstream names (or addresses) from `[[upstream]]`.
    pub upstreams: Vec<String>,
    /// Strategy for this zone; the global one when absent.
    #[serde(default)]
    pub strategy: Option<StrategyKind>,
    /// Tier parameters for this zone; the global ones when absent.
    #[serde(default)]
    pub tiers: Option<TierParams>,
}

impl ZoneConfig {
    /// The suffix as a lowercased wire-form name, parsed by hickory-proto (escapes
    /// such as `\.` inside a label are read as the RFC 1035 presentation format says;
    /// the trailing dot is optional, `"."` is the root).
    pub fn suffix_wire(&self) -> Result<Vec<u8>, String> {
        parse_suffix(&self.suffix)
    }
}

/// A presentation-format name as a lowercased wire-form name.
pub(crate) fn parse_suffix(text: &str) -> Result<Vec<u8>, String> {
    let name = hickory_proto::rr::Name::from_ascii(text).map_err(|e| e.to_string())?;
    let mut wire = Vec::with_capacity(text.len() + 2);
    for label in name.iter() {
        wire.push(label.len() as u8);
        wire.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    wire.push(0);
    Ok(wire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{err, ONE};
    use crate::config::Config;

    #[test]
    fn zone_suffixes_are_names_in_presentation_format() {
        assert_eq!(
            parse_suffix("Example.COM."),
            Ok(b"\x07example\x03com\x00".to_vec())
        );
        assert_eq!(parse_suffix("example.com"), parse_suffix("example.com."));
        assert_eq!(parse_suffix("."), Ok(vec![0]));
        // An escaped dot is part of its label, not a separator.
        assert_eq!(
            parse_suffix("a\\.b.example"),
            Ok(b"\x03a.b\x07example\x00".to_vec())
        );
        assert!(parse_suffix("a..b").is_err());
        assert!(
            parse_suffix(&"x".repeat(64)).is_err(),
            "a label over 63 bytes"
        );
        assert!(
            parse_suffix(&"abcdefg.".repeat(40)).is_err(),
            "a name over 255 bytes"
        );
    }

    #[test]
    fn zones_must_reference_upstreams() {
        let e = err(&format!(
            "{ONE}[[zone]]\nsuffix = \"corp.example.\"\nupstreams = [\"nope\"]\n"
        ));
        assert!(e.contains("zone[0].upstreams") && e.contains("nope"), "{e}");
        let ok =
            format!("{ONE}[[zone]]\nsuffix = \"corp.example\"\nupstreams = [\"127.0.0.1:5300\"]\n");
        Config::parse(&ok, "t").unwrap();
    }
}
