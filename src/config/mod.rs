//! Configuration: the TOML file, its built-in defaults, and validation.
//!
//! Every section is `deny_unknown_fields`: a misspelt key is an error naming it,
//! never silently ignored. [`Config::validate`] checks what serde cannot (ranges,
//! references between sections) and names the key at fault; it reads no file
//! (the certificates and CA roots a config names are read once, by the start's
//! preflight, `shard::Preflight`). Without a
//! file, tierdns runs on [`Config::default`]: listen on 127.0.0.1:5353, serve
//! loopback clients only, five public upstreams.

mod error;
mod limits;
mod server;
mod upstreams;
mod validate;
mod zones;

pub use error::ConfigError;
pub use limits::Limits;
pub use server::{CertFiles, HttpsConfig, IoBackend, MetricsConfig, ServerConfig, TlsConfig};
pub use upstreams::{
    UpstreamConfig, UpstreamTransport, DOH_PATH, DOH_PORT, DOT_PORT, UPSTREAM_IDLE_TIMEOUT,
};
/// For the zone table's tests.
#[cfg(test)]
pub(crate) use zones::parse_suffix;
pub use zones::ZoneConfig;

use crate::cache::CacheConfig;
use crate::health::HealthParams;
use crate::policy::{AccessConfig, RateLimitConfig};
use crate::tiers::{BudgetParams, StrategyKind, TierParams};
use error::one_line;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listening sockets, shards and io backend.
    pub server: ServerConfig,
    /// Bounds on queues, tables and connections.
    pub limits: Limits,
    /// Which clients are served (default: loopback only).
    pub access: AccessConfig,
    /// Per-client-prefix rate limit over UDP (default: off).
    pub ratelimit: RateLimitConfig,
    /// The upstream resolvers, in configured order.
    #[serde(rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    /// Default strategy for names outside every forward zone.
    pub strategy: StrategyKind,
    /// Tier parameters for the default strategy.
    pub tiers: TierParams,
    /// The amplification budget: upstream queries beyond the first of a miss.
    pub budget: BudgetParams,
    /// Upstream health tracking and circuit breaking.
    pub health: HealthParams,
    /// The shared packet cache.
    pub cache: CacheConfig,
    /// Prometheus exporter.
    pub metrics: MetricsConfig,
    /// Forward zones: name suffixes sent to their own upstream group.
    #[serde(rename = "zone")]
    pub zones: Vec<ZoneConfig>,
    /// DNS over TLS listeners (RFC 7858); none by default.
    pub tls: TlsConfig,
    /// DNS over HTTPS listeners (RFC 8484); none by default.
    pub https: HttpsConfig,
}

impl Default for Config {
    fn default() -> Self {
        let public = |ip: [u8; 4], name: &str| UpstreamConfig {
            name: Some(name.to_string()),
            ..UpstreamConfig::plain(SocketAddr::from((ip, 53)))
        };
        Self {
            server: ServerConfig::default(),
            limits: Limits::default(),
            access: AccessConfig::default(),
            ratelimit: RateLimitConfig::default(),
            upstreams: vec![
                public([1, 1, 1, 1], "cloudflare"),
                public([8, 8, 8, 8], "google"),
                public([9, 9, 9, 9], "quad9"),
                public([1, 0, 0, 1], "cloudflare-2"),
                public([8, 8, 4, 4], "google-2"),
            ],
            strategy: StrategyKind::default(),
            tiers: TierParams::default(),
            budget: BudgetParams::default(),
            health: HealthParams::default(),
            cache: CacheConfig::default(),
            metrics: MetricsConfig::default(),
            zones: Vec::new(),
            tls: TlsConfig::default(),
            https: HttpsConfig::default(),
        }
    }
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors. Reads no
    /// file: the certificates and roots it names are read by the start's
    /// preflight (`shard::Preflight`), which `--check` runs too.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: one_line(text, &e),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The effective configuration as TOML, defaults included.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Shard count with `0` resolved to the available CPUs.
    pub fn shard_count(&self) -> usize {
        match self.server.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Index of the upstream with this label or address.
    pub fn upstream_index(&self, name: &str) -> Option<usize> {
        self.upstreams.iter().position(|u| {
            u.label() == name || u.address.to_string() == name || u.address_text() == name
        })
    }
}

/// Helpers for the sections' tests.
#[cfg(test)]
mod testing {
    /// The error `text` is refused with.
    pub(super) fn err(text: &str) -> String {
        super::Config::parse(text, "test.toml")
            .unwrap_err()
            .to_string()
    }

    /// A file with one upstream and nothing else.
    pub(super) const ONE: &str = "[[upstream]]\naddress = \"127.0.0.1:5300\"\n";
}

#[cfg(test)]
mod tests {
    use super::testing::{err, ONE};
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let c = Config::default();
        c.validate().unwrap();
        let text = c.to_toml();
        let back = Config::parse(&text, "printed").unwrap();
        assert_eq!(back.to_toml(), text);
        assert_eq!(back.upstreams.len(), 5);
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = Config::parse(ONE, "t").unwrap();
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(c.server.listen, ServerConfig::default().listen);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err(&format!("{ONE}[server]\nlisen = []\n"));
        assert!(e.contains("lisen"), "{e}");
        let e = err(&format!("{ONE}[tiers]\nbatchsize = 3\n"));
        assert!(e.contains("batchsize"), "{e}");
        let e = err("[[upstream]]\naddress = \"127.0.0.1:53\"\nweight = 1\n");
        assert!(e.contains("weight"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = err(&format!("{ONE}[server]\nio = \"kqueue\"\n"));
        assert!(e.contains("kqueue"), "{e}");
        let e = err("[[upstream]]\naddress = \"127.0.0.1\"\n");
        assert!(e.contains("address"), "{e}");
        let e = err(&format!("{ONE}[limits]\ntcp_connections = 0\n"));
        assert!(e.contains("limits.tcp_connections"), "{e}");
        let e = err(&format!("{ONE}[limits]\nupstream_timeout = \"fast\"\n"));
        assert!(e.contains("fast"), "{e}");
        let e = err("upstream = []\n");
        assert!(e.contains("upstream"), "{e}");
        let e = err(&format!("{ONE}[server]\nlisten = []\n"));
        assert!(e.contains("server.listen"), "{e}");
    }

    #[test]
    fn access_defaults_to_loopback_and_names_a_bad_network() {
        let c = Config::parse(ONE, "t").unwrap();
        assert_eq!(c.access.allow, ["127.0.0.0/8", "::1/128"]);
        assert_eq!(c.access.action, crate::policy::AccessAction::Refuse);
        let e = err(&format!(
            "{ONE}[access]\nallow = [\"10.0.0.0/8\", \"fc00::/7\", \"10.0.0.0/33\"]\n"
        ));
        assert!(
            e.contains("access.allow[2]: \"10.0.0.0/33\" is not a network"),
            "{e}"
        );
        let e = err(&format!("{ONE}[access]\naction = \"reject\"\n"));
        assert!(e.contains("reject"), "{e}");
        let e = err(&format!("{ONE}[access]\nallowed = []\n"));
        assert!(e.contains("allowed"), "{e}");
        let c = Config::parse(
            &format!("{ONE}[access]\nallow = [\"0.0.0.0/0\"]\naction = \"drop\"\n"),
            "t",
        )
        .unwrap();
        assert_eq!(c.access.action, crate::policy::AccessAction::Drop);
    }

    #[test]
    fn ratelimit_is_off_by_default_and_names_a_bad_value() {
        let c = Config::parse(ONE, "t").unwrap();
        assert_eq!(c.ratelimit.qps, 0);
        assert_eq!((c.ratelimit.ipv4_prefix, c.ratelimit.ipv6_prefix), (24, 56));
        let e = err(&format!("{ONE}[ratelimit]\nqps = 10\nipv4_prefix = 40\n"));
        assert!(e.contains("ratelimit.ipv4_prefix"), "{e}");
        let e = err(&format!("{ONE}[ratelimit]\naction = \"slow\"\n"));
        assert!(e.contains("slow"), "{e}");
        let c = Config::parse(
            &format!("{ONE}[ratelimit]\nqps = 20\nburst = 40\naction = \"drop\"\n"),
            "t",
        )
        .unwrap();
        assert_eq!((c.ratelimit.qps, c.ratelimit.burst), (20, 40));
    }
}
