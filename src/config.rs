//! Configuration: the TOML file, its built-in defaults, and validation.
//!
//! Every section is `deny_unknown_fields`: a misspelt key is an error naming it,
//! never silently ignored. [`Config::validate`] checks what serde cannot (ranges,
//! references between sections) and names the key at fault. Without a file, tierdns
//! runs on [`Config::default`]: listen on 127.0.0.1:5353, serve loopback clients only,
//! five public upstreams.

use crate::cache::{CacheConfig, CacheConfigError};
use crate::health::{HealthParams, HealthParamsError};
use crate::policy::{
    AccessConfig, AccessConfigError, AccessList, RateLimitConfig, RateLimitConfigError,
};
use crate::tiers::{BudgetParams, BudgetParamsError, StrategyKind, TierParams, TierParamsError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// Which io backend shards run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IoBackend {
    /// io_uring when the kernel allows it, else epoll (logged with the reason).
    #[default]
    Auto,
    /// io_uring or fail at startup.
    Uring,
    /// tokio's epoll reactor.
    Epoll,
}

/// `[server]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Addresses served over both UDP and TCP.
    pub listen: Vec<SocketAddr>,
    /// Shard threads; 0 means one per available CPU.
    pub shards: usize,
    /// io backend.
    pub io: IoBackend,
    /// Pin shard N to the Nth available CPU.
    pub pin_cpus: bool,
    /// io_uring submission queue entries per shard.
    pub uring_entries: u32,
    /// Concurrent receive loops per client UDP socket with io_uring (epoll runs one)
    /// when the multishot receive is off or unavailable.
    pub udp_receivers: usize,
    /// With io_uring: receive client UDP with one multishot receive into a ring of
    /// provided buffers and send the replies in batches (Linux 6.0+; on an older
    /// kernel tierdns logs why and falls back). `false`: one receive operation per
    /// datagram.
    pub udp_multishot: bool,
    /// Largest UDP reply whatever the client's EDNS size (DNS flag day 2020: 1232);
    /// larger answers go out with TC=1 and the client retries over TCP.
    pub max_udp_size: u16,
    /// On SIGTERM/SIGINT: how long in-flight queries may still finish.
    #[serde(with = "crate::duration")]
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 5353))],
            shards: 0,
            io: IoBackend::Auto,
            pin_cpus: true,
            uring_entries: 1024,
            udp_receivers: 8,
            udp_multishot: true,
            max_udp_size: 1232,
            shutdown_grace: Duration::from_secs(3),
        }
    }
}

/// `[limits]`: every queue and table has a bound; what happens at it is documented here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Client queries being resolved at once per shard; past it, new misses are
    /// dropped and counted (`tierdns_drops_total{reason="overload"}`).
    pub max_client_in_flight: usize,
    /// Queries awaiting an answer per upstream per shard; past it, that upstream
    /// counts as failed for the flight.
    pub max_upstream_pending: usize,
    /// Connected UDP sockets per upstream per shard; each query leaves from one
    /// chosen at random, so a forger must guess the source port as well as the ID.
    pub upstream_sockets: usize,
    /// An upstream socket is replaced by a fresh one (a new random port) once this
    /// old; the old one closes when its last query is answered or times out.
    #[serde(with = "crate::duration")]
    pub upstream_socket_lifetime: Duration,
    /// Hard timeout of one upstream attempt (UDP, or the TCP retry).
    #[serde(with = "crate::duration")]
    pub upstream_timeout: Duration,
    /// Open TCP client connections per shard; at it, the idlest is closed for a new
    /// one (RFC 7766 6.2.3, `tierdns_tcp_closed_total{reason="evicted"}`).
    pub tcp_connections: usize,
    /// Close a TCP client connection idle this long (RFC 7766 section 6.2.3).
    #[serde(with = "crate::duration")]
    pub tcp_idle_timeout: Duration,
    /// Queries of one TCP connection answered concurrently; reading pauses past it.
    pub tcp_pipeline: usize,
    /// Stream connections (TCP, DoT, DoH) open at once from one client prefix
    /// (`ratelimit.ipv4_prefix`, `ratelimit.ipv6_prefix`), counted across all
    /// shards (unbound's `tcp-connection-limit`, dnsdist's
    /// `setMaxTCPConnectionsPerClient`); past it a new one is closed at once
    /// (`reason="tcp_client_limit"`). 0: no cap. Default 256: a pipelining
    /// forwarder or load balancer in front does not trip it.
    pub tcp_connections_per_client: usize,
    /// Queries read from one TCP connection; then it stops reading between two
    /// queries, answers what it read and closes
    /// (`tierdns_tcp_closed_total{reason="max_queries"}`). 0 (the default, as
    /// dnsdist and unbound): no cap. A client that pipelines may have sent more
    /// when the connection stops: those are not answered.
    pub tcp_max_queries: u64,
    /// Age of a TCP connection past which it stops reading between two queries,
    /// answers what it read and closes (`reason="max_lifetime"`). "0s" (the
    /// default): no cap.
    #[serde(with = "crate::duration")]
    pub tcp_max_lifetime: Duration,
    /// Bytes of framed replies queued and not yet written on all TCP and DoT
    /// connections of the process (unbound's `stream-wait-size`); past it each
    /// shard closes its connections holding the most
    /// (`tierdns_tcp_closed_total{reason="reply_bytes"}`). 0: no budget.
    pub stream_reply_bytes: usize,
    /// Idle upstream TCP connections kept per upstream per shard for reuse.
    pub upstream_tcp_idle: usize,
    /// Upstream TCP connections in use at once per upstream per shard (for
    /// truncated answers); past it the retry fails at once as local overload.
    pub upstream_tcp_max: usize,
    /// Clients that may wait on one flight besides its leader; past it, a query gets
    /// a stale answer if there is one, else is dropped (UDP) or answered SERVFAIL
    /// (TCP), counted (`reason="flight_full"`): it never starts a flight of its own.
    pub flight_max_waiters: usize,
    /// Background work per shard: flights still collecting after their first
    /// answer, and prefetches. Past it, a flight keeps its first answer and stops
    /// collecting, and a prefetch is skipped (`tierdns_background_shed_total`).
    /// Background queries also leave a quarter of `max_upstream_pending` to queries
    /// a client waits for.
    pub max_background: usize,
    /// Buffers kept in each shard's pool; more are allocated under load and freed.
    pub buffer_pool: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_client_in_flight: 4096,
            max_upstream_pending: 4096,
            upstream_sockets: 16,
            upstream_socket_lifetime: Duration::from_secs(60),
            upstream_timeout: Duration::from_secs(2),
            tcp_connections: 256,
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_pipeline: 32,
            tcp_connections_per_client: 256,
            tcp_max_queries: 0,
            tcp_max_lifetime: Duration::ZERO,
            stream_reply_bytes: 64 << 20,
            upstream_tcp_idle: 2,
            upstream_tcp_max: 16,
            flight_max_waiters: 1024,
            max_background: 1024,
            buffer_pool: 1024,
        }
    }
}

/// `[tls]`: DNS over TLS listeners (RFC 7858). Each address gets a SO_REUSEPORT
/// TCP listener per shard; connections are bounded by `[limits]` like plain TCP ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Addresses served over TLS (port 853 by convention); empty: no DoT.
    pub listen: Vec<SocketAddr>,
    /// The certificate chain, PEM, leaf first. Reread on SIGHUP.
    pub cert_file: String,
    /// The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1). Reread on SIGHUP.
    pub key_file: String,
    /// A TCP connection that has not completed its TLS handshake this long after
    /// accept is closed (slow-loris).
    #[serde(with = "crate::duration")]
    pub handshake_timeout: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            cert_file: String::new(),
            key_file: String::new(),
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// `[https]`: DNS over HTTPS listeners (RFC 8484), HTTP/2 and HTTP/1.1 on each
/// address. The certificate is `[tls]`'s unless this section names its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpsConfig {
    /// Addresses served over HTTPS (port 443 by convention); empty: no DoH.
    pub listen: Vec<SocketAddr>,
    /// The one path answered (RFC 8484's `{?dns}` template on it); others get 404.
    pub path: String,
    /// A certificate chain of its own, PEM, leaf first; empty: `tls.cert_file`.
    pub cert_file: String,
    /// Its private key; empty: `tls.key_file`. Both or neither.
    pub key_file: String,
    /// As `tls.handshake_timeout`, for HTTPS connections.
    #[serde(with = "crate::duration")]
    pub handshake_timeout: Duration,
}

impl Default for HttpsConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            path: "/dns-query".to_string(),
            cert_file: String::new(),
            key_file: String::new(),
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

impl HttpsConfig {
    /// The certificate and key files the HTTPS listeners use, with the keys that
    /// name them (for errors): this section's, else `[tls]`'s.
    pub fn cert_files<'a>(&'a self, tls: &'a TlsConfig) -> CertFiles<'a> {
        if self.cert_file.is_empty() {
            CertFiles {
                cert: (&tls.cert_file, "tls.cert_file"),
                key: (&tls.key_file, "tls.key_file"),
            }
        } else {
            CertFiles {
                cert: (&self.cert_file, "https.cert_file"),
                key: (&self.key_file, "https.key_file"),
            }
        }
    }
}

/// A certificate chain file and its key file, each with the config key naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertFiles<'a> {
    /// The chain's path and key.
    pub cert: (&'a str, &'static str),
    /// The private key's path and key.
    pub key: (&'a str, &'static str),
}

/// Whether two listen addresses would take the same port: the same family and
/// port, and the same address or either one unspecified (SO_REUSEPORT would let
/// both bind and split the clients between them). Port 0 never collides.
fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// One `[[upstream]]`.
///
/// `address` is `IP:PORT` (UDP, TCP when an answer is truncated), `tls://IP[:PORT]`
/// (DNS over TLS, RFC 7858, port 853 by default) or `https://IP[:PORT][/PATH]` (DNS
/// over HTTPS, RFC 8484, port 443 and `/dns-query` by default). The host is an IP
/// address: a forwarder cannot resolve its own upstream's name; `tls_name` says
/// which name the certificate must carry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "UpstreamSpec", into = "UpstreamSpec")]
pub struct UpstreamConfig {
    /// The address connected to (`"192.0.2.1:53"`; the port is required for UDP).
    pub address: SocketAddr,
    /// How queries travel: parsed from the same `address` string.
    pub transport: UpstreamTransport,
    /// Label in logs and metrics; defaults to the address.
    pub name: Option<String>,
    /// Tie-breaker in tier order: lower is preferred.
    pub priority: i32,
    /// DNS 0x20 (draft-vixie-dnsext-dns0x20): the letters of each UDP query's name
    /// get a random case, and a reply must repeat it exactly or is dropped
    /// (`reason="upstream_case_mismatch"`): more for a forger to guess. On by
    /// default for plain upstreams, with an automatic fallback for an upstream seen
    /// not to preserve case (see `upstream::case`); `false` turns it off. Plain
    /// upstreams only: off (and refused when set) for encrypted ones.
    pub case_randomization: bool,
    /// Encrypted upstreams: the name the server's certificate must be valid for (a
    /// DNS name, or an IP address); default: the address's IP.
    pub tls_name: Option<String>,
    /// Encrypted upstreams: PEM file of the root certificates to trust; default:
    /// the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Encrypted upstreams: an idle connection is closed after this long.
    pub idle_timeout: Duration,
}

/// How queries reach an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UpstreamTransport {
    /// UDP, and TCP for truncated answers.
    #[default]
    Plain,
    /// DNS over TLS (RFC 7858).
    Tls,
    /// DNS over HTTPS (RFC 8484): POST to this path over HTTP/2.
    Https {
        /// The request path, starting with `/`.
        path: String,
    },
}

impl UpstreamTransport {
    /// Whether queries travel encrypted.
    pub fn is_encrypted(&self) -> bool {
        !matches!(self, Self::Plain)
    }
}

/// Default port of DNS over TLS (RFC 7858 section 3.1).
pub const DOT_PORT: u16 = 853;
/// Default port of DNS over HTTPS.
pub const DOH_PORT: u16 = 443;
/// Default DoH path (RFC 8484 section 3 suggests the template `{?dns}` at it).
pub const DOH_PATH: &str = "/dns-query";
/// Default `idle_timeout` of encrypted upstreams.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// `[[upstream]]` as written in the file; [`UpstreamConfig`] is it parsed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamSpec {
    address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default)]
    priority: i32,
    /// Unset: on for plain upstreams, off for encrypted ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    case_randomization: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tls_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idle_timeout: Option<String>,
}

/// Why an upstream `address` cannot be used, in words for the config error.
fn parse_address(text: &str) -> Result<(SocketAddr, UpstreamTransport), String> {
    let hostname_hint = |host: &str| {
        format!(
            "address {text:?}: the host {host:?} is not an IP address; tierdns cannot \
             resolve its own upstream's name: write the server's IP address and put the \
             name in tls_name = {host:?}"
        )
    };
    let (rest, transport, default_port) = if let Some(rest) = text.strip_prefix("tls://") {
        (rest, UpstreamTransport::Tls, DOT_PORT)
    } else if let Some(rest) = text.strip_prefix("https://") {
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, DOH_PATH),
        };
        if path.contains(['?', '#']) || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "address {text:?}: the path must be a plain path (no query, fragment or spaces)"
            ));
        }
        (
            authority,
            UpstreamTransport::Https {
                path: path.to_string(),
            },
            DOH_PORT,
        )
    } else if let Some((scheme, _)) = text.split_once("://") {
        return Err(format!(
            "address {text:?}: unknown scheme {scheme:?} (IP:PORT for UDP, tls:// or https://)"
        ));
    } else {
        return text.parse::<SocketAddr>().map(|a| (a, UpstreamTransport::Plain)).map_err(|_| {
            format!("address {text:?}: not IP:PORT (e.g. \"192.0.2.1:53\", \"[2001:db8::1]:53\"), nor tls:// or https://")
        });
    };
    if rest.is_empty() {
        return Err(format!("address {text:?}: no host"));
    }
    if rest.contains('@') {
        return Err(format!(
            "address {text:?}: user information is not supported"
        ));
    }
    if let Ok(addr) = rest.parse::<SocketAddr>() {
        return Ok((addr, transport));
    }
    let bare = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
    if let Some(ip) = bare.and_then(|b| b.parse::<std::net::Ipv6Addr>().ok()) {
        return Ok((SocketAddr::new(ip.into(), default_port), transport));
    }
    if let Ok(ip) = rest.parse::<std::net::Ipv4Addr>() {
        return Ok((SocketAddr::new(ip.into(), default_port), transport));
    }
    if rest.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(format!(
            "address {text:?}: an IPv6 address goes in brackets, e.g. [2001:db8::1]:853"
        ));
    }
    // A host and maybe a port: is the host a name?
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (rest, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().is_err() {
            return Err(format!("address {text:?}: bad port {p:?}"));
        }
    }
    Err(hostname_hint(host))
}

impl TryFrom<UpstreamSpec> for UpstreamConfig {
    type Error = String;

    fn try_from(spec: UpstreamSpec) -> Result<Self, String> {
        let (address, transport) = parse_address(&spec.address)?;
        let idle_timeout =
            match &spec.idle_timeout {
                None => UPSTREAM_IDLE_TIMEOUT,
                Some(_) if !transport.is_encrypted() => return Err(
                    "idle_timeout: only for encrypted upstreams (address tls://... or https://...)"
                        .to_string(),
                ),
                Some(text) => humantime::parse_duration(text)
                    .map_err(|e| format!("idle_timeout: invalid duration {text:?}: {e}"))?,
            };
        // Unset: on only where it means something (an encrypted query cannot be
        // forged on the way); explicitly on for an encrypted one is refused by
        // `validate`.
        let case_randomization = spec.case_randomization.unwrap_or(!transport.is_encrypted());
        Ok(Self {
            address,
            transport,
            name: spec.name,
            priority: spec.priority,
            case_randomization,
            tls_name: spec.tls_name,
            ca_file: spec.ca_file,
            idle_timeout,
        })
    }
}

impl From<UpstreamConfig> for UpstreamSpec {
    fn from(u: UpstreamConfig) -> Self {
        let encrypted = u.transport.is_encrypted();
        Self {
            address: u.address_text(),
            name: u.name,
            priority: u.priority,
            // Shown for plain upstreams; for encrypted ones only if (wrongly) set.
            case_randomization: (!encrypted || u.case_randomization)
                .then_some(u.case_randomization),
            tls_name: u.tls_name,
            ca_file: u.ca_file,
            idle_timeout: encrypted.then(|| humantime::format_duration(u.idle_timeout).to_string()),
        }
    }
}

impl UpstreamConfig {
    /// A plain (UDP) upstream at `address` with every other key at its default.
    pub fn plain(address: SocketAddr) -> Self {
        Self {
            address,
            transport: UpstreamTransport::Plain,
            name: None,
            priority: 0,
            case_randomization: true,
            tls_name: None,
            ca_file: None,
            idle_timeout: UPSTREAM_IDLE_TIMEOUT,
        }
    }

    /// The `address` as written in a config file: `IP:PORT`, `tls://IP:PORT` or
    /// `https://IP:PORT/PATH`.
    pub fn address_text(&self) -> String {
        match &self.transport {
            UpstreamTransport::Plain => self.address.to_string(),
            UpstreamTransport::Tls => format!("tls://{}", self.address),
            UpstreamTransport::Https { path } => format!("https://{}{path}", self.address),
        }
    }

    /// The label used in logs and metrics.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.address_text())
    }

    /// Checks the keys that belong to the transport; `i` is the upstream's index,
    /// for the key in the error. Reads `ca_file`.
    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("upstream[{i}].{k}");
        if !self.transport.is_encrypted() {
            for (k, set) in [
                ("tls_name", self.tls_name.is_some()),
                ("ca_file", self.ca_file.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        key(k),
                        "only for encrypted upstreams (address tls://... or https://...)",
                    ));
                }
            }
            return Ok(());
        }
        if self.case_randomization {
            return Err(invalid(
                key("case_randomization"),
                "only for plain upstreams: an encrypted query cannot be forged on the way",
            ));
        }
        if let Some(name) = &self.tls_name {
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                return Err(invalid(
                    key("tls_name"),
                    format!("{name:?} is neither a DNS name nor an IP address"),
                ));
            }
        }
        if let Some(path) = &self.ca_file {
            crate::upstream::encrypted::read_roots(path)
                .map_err(|why| invalid(key("ca_file"), why))?;
        }
        if self.idle_timeout.is_zero() {
            return Err(invalid(key("idle_timeout"), "must be positive"));
        }
        if self.ca_file.is_none() {
            // The system's roots, then: there must be some.
            crate::upstream::encrypted::system_roots()
                .map_err(|why| invalid(key("ca_file"), why))?;
        }
        Ok(())
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` for Prometheus.
    pub enabled: bool,
    /// Exporter address.
    pub listen: SocketAddr,
    /// Networks (CIDR, or a bare address) allowed to scrape; anyone else gets
    /// HTTP 403. An IPv4 network also covers its IPv4-mapped IPv6 form.
    pub allow: Vec<String>,
    /// How often shards flush their local counters into the registry.
    #[serde(with = "crate::duration")]
    pub flush_interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9153)),
            allow: vec!["127.0.0.0/8".into(), "::1/128".into()],
            flush_interval: Duration::from_secs(1),
        }
    }
}

impl MetricsConfig {
    /// `allow` as the exporter's networks (`addr/len`), each IPv4 one also in
    /// its IPv4-mapped IPv6 form (a dual-stack listener sees IPv4 peers so);
    /// the error names the entry at fault.
    pub fn allowed_networks(&self) -> Result<Vec<String>, ConfigError> {
        use crate::policy::access::Network;
        if self.allow.is_empty() {
            return Err(invalid(
                "metrics.allow",
                "must not be empty (every address: [\"0.0.0.0/0\", \"::/0\"])",
            ));
        }
        let mut nets = Vec::with_capacity(self.allow.len() * 2);
        for (i, text) in self.allow.iter().enumerate() {
            let net = Network::parse(text).map_err(|e| {
                invalid(
                    format!("metrics.allow[{i}]"),
                    format!("{text:?} is not a network: {e}"),
                )
            })?;
            nets.push(format!("{}/{}", net.addr, net.prefix));
            if let std::net::IpAddr::V4(v4) = net.addr {
                nets.push(format!("{}/{}", v4.to_ipv6_mapped(), 96 + net.prefix));
            }
        }
        Ok(nets)
    }
}

/// One `[[zone]]`: names at or below `suffix` go to `upstreams` with their own
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
fn one_line(text: &str, e: &toml::de::Error) -> String {
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

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
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

    /// Parses and validates TOML text; `origin` names it in errors.
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

    /// Checks ranges and references; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.listen.is_empty() {
            return Err(invalid("server.listen", "at least one address is required"));
        }
        for (i, a) in s.listen.iter().enumerate() {
            if s.listen[..i].contains(a) {
                return Err(invalid("server.listen", format!("{a} is listed twice")));
            }
        }
        if s.shards > 1024 {
            return Err(invalid("server.shards", "at most 1024"));
        }
        if !(8..=32768).contains(&s.uring_entries) || !s.uring_entries.is_power_of_two() {
            return Err(invalid(
                "server.uring_entries",
                "must be a power of two from 8 to 32768",
            ));
        }
        if !(1..=256).contains(&s.udp_receivers) {
            return Err(invalid("server.udp_receivers", "must be from 1 to 256"));
        }
        if !(512..=4096).contains(&s.max_udp_size) {
            return Err(invalid("server.max_udp_size", "must be from 512 to 4096"));
        }
        let l = &self.limits;
        let positive = [
            ("limits.max_client_in_flight", l.max_client_in_flight),
            ("limits.max_upstream_pending", l.max_upstream_pending),
            ("limits.tcp_connections", l.tcp_connections),
            ("limits.tcp_pipeline", l.tcp_pipeline),
            ("limits.buffer_pool", l.buffer_pool),
            ("limits.upstream_tcp_max", l.upstream_tcp_max),
            ("limits.max_background", l.max_background),
            ("limits.upstream_sockets", l.upstream_sockets),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if l.max_upstream_pending > 60000 {
            return Err(invalid(
                "limits.max_upstream_pending",
                "at most 60000 (16-bit message IDs per upstream socket)",
            ));
        }
        if l.upstream_timeout.is_zero() {
            return Err(invalid("limits.upstream_timeout", "must be positive"));
        }
        if l.upstream_sockets > 256 {
            return Err(invalid("limits.upstream_sockets", "must be from 1 to 256"));
        }
        if l.upstream_socket_lifetime.is_zero() {
            return Err(invalid(
                "limits.upstream_socket_lifetime",
                "must be positive",
            ));
        }
        if l.tcp_idle_timeout.is_zero() {
            return Err(invalid("limits.tcp_idle_timeout", "must be positive"));
        }
        if self.upstreams.is_empty() {
            return Err(invalid("upstream", "at least one [[upstream]] is required"));
        }
        if self.upstreams.len() > 64 {
            return Err(invalid("upstream", "at most 64 upstreams"));
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            let key = format!("upstream[{i}].address");
            if u.address.port() == 0 {
                return Err(invalid(key, "port 0 is not a valid upstream port"));
            }
            if u.address.ip().is_unspecified() {
                return Err(invalid(key, "an unspecified address cannot be an upstream"));
            }
            if self.upstreams[..i].iter().any(|o| o.address == u.address) {
                return Err(invalid(key, format!("{} is listed twice", u.address)));
            }
            if self.upstreams[..i].iter().any(|o| o.label() == u.label()) {
                return Err(invalid(
                    format!("upstream[{i}].name"),
                    format!("{:?} is used twice", u.label()),
                ));
            }
            u.validate(i)?;
        }
        self.tiers.validate()?;
        self.health.validate()?;
        self.budget.validate()?;
        self.cache.validate()?;
        AccessList::new(&self.access)?;
        self.ratelimit.validate()?;
        if self.metrics.flush_interval.is_zero() {
            return Err(invalid("metrics.flush_interval", "must be positive"));
        }
        self.metrics.allowed_networks()?;
        for (i, z) in self.zones.iter().enumerate() {
            if let Err(why) = z.suffix_wire() {
                return Err(invalid(
                    format!("zone[{i}].suffix"),
                    format!("{:?} is not a domain name: {why}", z.suffix),
                ));
            }
            if z.upstreams.is_empty() {
                return Err(invalid(format!("zone[{i}].upstreams"), "must not be empty"));
            }
            for name in &z.upstreams {
                if self.upstream_index(name).is_none() {
                    return Err(invalid(
                        format!("zone[{i}].upstreams"),
                        format!("{name:?} names no [[upstream]]"),
                    ));
                }
            }
            if let Some(t) = &z.tiers {
                t.validate_in(&format!("zone[{i}].tiers"))?;
            }
        }
        self.validate_encrypted()
    }

    /// `[tls]` and `[https]`: files named where listeners need them, a path, and
    /// listen addresses that take no port another listener has.
    fn validate_encrypted(&self) -> Result<(), ConfigError> {
        let (tls, https) = (&self.tls, &self.https);
        if !tls.listen.is_empty() {
            if tls.cert_file.is_empty() {
                return Err(invalid("tls.cert_file", "required with tls.listen"));
            }
            if tls.key_file.is_empty() {
                return Err(invalid("tls.key_file", "required with tls.listen"));
            }
        }
        if https.cert_file.is_empty() != https.key_file.is_empty() {
            let key = if https.key_file.is_empty() {
                "https.key_file"
            } else {
                "https.cert_file"
            };
            return Err(invalid(
                key,
                "https.cert_file and https.key_file go together (neither: [tls]'s are used)",
            ));
        }
        if !https.listen.is_empty() {
            let files = https.cert_files(tls);
            for (path, key) in [files.cert, files.key] {
                if path.is_empty() {
                    return Err(invalid(
                        key,
                        "required with https.listen (give [https] its own files or set [tls]'s)",
                    ));
                }
            }
        }
        let p = &https.path;
        if !p.starts_with('/')
            || p.len() > 256
            || p.contains(['?', '#'])
            || p.contains(char::is_whitespace)
        {
            return Err(invalid(
                "https.path",
                format!("{p:?} must start with '/', have no '?', '#' or spaces, and be at most 256 bytes"),
            ));
        }
        if tls.handshake_timeout.is_zero() {
            return Err(invalid("tls.handshake_timeout", "must be positive"));
        }
        if https.handshake_timeout.is_zero() {
            return Err(invalid("https.handshake_timeout", "must be positive"));
        }
        // Every stream listener in one list, in the order the errors name them.
        let all: Vec<(&str, &SocketAddr)> = self
            .server
            .listen
            .iter()
            .map(|a| ("server.listen", a))
            .chain(tls.listen.iter().map(|a| ("tls.listen", a)))
            .chain(https.listen.iter().map(|a| ("https.listen", a)))
            .collect();
        for (i, (key, a)) in all.iter().enumerate() {
            if *key == "server.listen" {
                continue; // checked above, with the UDP sockets
            }
            if let Some((other, b)) = all[..i].iter().find(|(_, b)| overlaps(a, b)) {
                return Err(invalid(
                    *key,
                    format!("{a} takes the port of {other} {b}: each listener needs its own"),
                ));
            }
        }
        Ok(())
    }

    /// Index of the upstream with this label or address.
    pub fn upstream_index(&self, name: &str) -> Option<usize> {
        self.upstreams.iter().position(|u| {
            u.label() == name || u.address.to_string() == name || u.address_text() == name
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn err(text: &str) -> String {
        Config::parse(text, "test.toml").unwrap_err().to_string()
    }

    const ONE: &str = "[[upstream]]\naddress = \"127.0.0.1:5300\"\n";

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
    fn metrics_allow_defaults_to_loopback_and_names_a_bad_network() {
        let c = Config::parse(ONE, "t").unwrap();
        assert_eq!(c.metrics.allow, ["127.0.0.0/8", "::1/128"]);
        assert_eq!(
            c.metrics.allowed_networks().unwrap(),
            ["127.0.0.0/8", "::ffff:127.0.0.0/104", "::1/128"]
        );
        let e = err(&format!(
            "{ONE}[metrics]\nallow = [\"10.0.0.0/8\", \"10.0.0.1/8\"]\n"
        ));
        assert!(
            e.contains("metrics.allow[1]: \"10.0.0.1/8\" is not a network"),
            "{e}"
        );
        let e = err(&format!("{ONE}[metrics]\nallow = [\"prometheus\"]\n"));
        assert!(e.contains("metrics.allow[0]"), "{e}");
        let e = err(&format!("{ONE}[metrics]\nallow = []\n"));
        assert!(e.contains("metrics.allow: must not be empty"), "{e}");
        let c = Config::parse(
            &format!("{ONE}[metrics]\nallow = [\"10.1.2.3\", \"fd00::/8\"]\n"),
            "t",
        )
        .unwrap();
        assert_eq!(
            c.metrics.allowed_networks().unwrap(),
            ["10.1.2.3/32", "::ffff:10.1.2.3/128", "fd00::/8"]
        );
        let printed = Config::parse(&c.to_toml(), "printed").unwrap();
        assert_eq!(printed.metrics.allow, c.metrics.allow, "in --print-config");
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

    #[test]
    fn encrypted_listeners_are_off_by_default_and_name_what_they_lack() {
        let c = Config::parse(ONE, "t").unwrap();
        assert!(c.tls.listen.is_empty() && c.https.listen.is_empty());
        assert_eq!(c.https.path, "/dns-query");
        let e = err(&format!("{ONE}[tls]\nlisten = [\"127.0.0.1:853\"]\n"));
        assert!(e.contains("tls.cert_file: required"), "{e}");
        let e = err(&format!(
            "{ONE}[tls]\nlisten = [\"127.0.0.1:853\"]\ncert_file = \"c.pem\"\n"
        ));
        assert!(e.contains("tls.key_file: required"), "{e}");
        let e = err(&format!("{ONE}[https]\nlisten = [\"127.0.0.1:443\"]\n"));
        assert!(
            e.contains("tls.cert_file: required with https.listen"),
            "{e}"
        );
        let e = err(&format!("{ONE}[https]\ncert_file = \"c.pem\"\n"));
        assert!(e.contains("https.key_file"), "{e}");
        let e = err(&format!("{ONE}[https]\npath = \"dns-query\"\n"));
        assert!(e.contains("https.path"), "{e}");
        let e = err(&format!("{ONE}[tls]\nhandshake_timeout = \"0s\"\n"));
        assert!(e.contains("tls.handshake_timeout"), "{e}");
        let e = err(&format!("{ONE}[tls]\ncertfile = \"x\"\n"));
        assert!(e.contains("certfile"), "{e}");
        // [https] takes [tls]'s files, or its own.
        let files = "cert_file = \"c.pem\"\nkey_file = \"k.pem\"\n";
        let c = Config::parse(
            &format!("{ONE}[tls]\n{files}[https]\nlisten = [\"127.0.0.1:8443\"]\n"),
            "t",
        )
        .unwrap();
        assert_eq!(c.https.cert_files(&c.tls).cert, ("c.pem", "tls.cert_file"));
        let c = Config::parse(
            &format!("{ONE}[https]\nlisten = [\"127.0.0.1:8443\"]\n{files}"),
            "t",
        )
        .unwrap();
        assert_eq!(c.https.cert_files(&c.tls).key, ("k.pem", "https.key_file"));
    }

    #[test]
    fn an_encrypted_listener_may_not_take_another_listeners_port() {
        let files = "cert_file = \"c.pem\"\nkey_file = \"k.pem\"\n";
        let e = err(&format!(
            "{ONE}[server]\nlisten = [\"127.0.0.1:5353\"]\n[tls]\n{files}listen = [\"0.0.0.0:5353\"]\n"
        ));
        assert!(
            e.contains("tls.listen: 0.0.0.0:5353 takes the port of server.listen 127.0.0.1:5353"),
            "{e}"
        );
        let e = err(&format!(
            "{ONE}[tls]\n{files}listen = [\"127.0.0.1:853\"]\n[https]\nlisten = [\"127.0.0.1:853\"]\n"
        ));
        assert!(e.contains("https.listen"), "{e}");
        let e = err(&format!(
            "{ONE}[tls]\n{files}listen = [\"127.0.0.1:853\", \"127.0.0.1:853\"]\n"
        ));
        assert!(e.contains("tls.listen"), "{e}");
        // Another address, another family, or port 0: no collision.
        Config::parse(
            &format!(
                "{ONE}[tls]\n{files}listen = [\"127.0.0.2:5353\", \"[::1]:853\", \"127.0.0.1:0\"]\n[https]\nlisten = [\"127.0.0.1:853\", \"127.0.0.1:0\"]\n"
            ),
            "t",
        )
        .unwrap();
    }

    #[test]
    fn upstream_addresses_carry_their_transport() {
        let parsed = |t: &str| parse_address(t).unwrap();
        assert_eq!(
            parsed("192.0.2.1:53"),
            ("192.0.2.1:53".parse().unwrap(), UpstreamTransport::Plain)
        );
        assert_eq!(
            parsed("tls://192.0.2.1"),
            ("192.0.2.1:853".parse().unwrap(), UpstreamTransport::Tls)
        );
        assert_eq!(
            parsed("tls://[2001:db8::1]:8853"),
            (
                "[2001:db8::1]:8853".parse().unwrap(),
                UpstreamTransport::Tls
            )
        );
        assert_eq!(
            parsed("https://[2001:db8::1]"),
            (
                "[2001:db8::1]:443".parse().unwrap(),
                UpstreamTransport::Https {
                    path: DOH_PATH.to_string()
                }
            )
        );
        assert_eq!(
            parsed("https://192.0.2.1:8443/resolve"),
            (
                "192.0.2.1:8443".parse().unwrap(),
                UpstreamTransport::Https {
                    path: "/resolve".to_string()
                }
            )
        );
        for (bad, says) in [
            ("tls://dns.example", "tls_name = \"dns.example\""),
            ("https://dns.example:8443/q", "tls_name = \"dns.example\""),
            ("tls://", "no host"),
            ("tls://2001:db8::1", "brackets"),
            ("tls://192.0.2.1:x", "bad port"),
            ("https://192.0.2.1/q?dns=x", "plain path"),
            ("https://u@192.0.2.1/", "user information"),
            ("udp://192.0.2.1:53", "unknown scheme"),
            ("192.0.2.1", "not IP:PORT"),
        ] {
            let e = parse_address(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn encrypted_upstream_keys_are_checked() {
        let e = err("[[upstream]]\naddress = \"127.0.0.1:53\"\nidle_timeout = \"5s\"\n");
        assert!(
            e.contains("idle_timeout") && e.contains("only for encrypted"),
            "{e}"
        );
        let e = err("[[upstream]]\naddress = \"127.0.0.1:53\"\nca_file = \"/etc/hosts\"\n");
        assert!(e.contains("upstream[0].ca_file"), "{e}");
        let e = err("[[upstream]]\naddress = \"tls://127.0.0.1\"\ncase_randomization = true\n");
        assert!(e.contains("upstream[0].case_randomization"), "{e}");
        let e = err("[[upstream]]\naddress = \"tls://127.0.0.1\"\nidle_timeout = \"0s\"\n");
        assert!(e.contains("upstream[0].idle_timeout"), "{e}");
        let e = err("[[upstream]]\naddress = \"tls://127.0.0.1\"\nca_file = \"/nonexistent\"\n");
        assert!(
            e.contains("upstream[0].ca_file") && e.contains("cannot read"),
            "{e}"
        );
        // The same address over UDP and TLS is one upstream listed twice.
        let e = err("[[upstream]]\naddress = \"127.0.0.1:853\"\n[[upstream]]\naddress = \"tls://127.0.0.1\"\n");
        assert!(
            e.contains("upstream[1].address") && e.contains("twice"),
            "{e}"
        );
    }

    #[test]
    fn case_randomization_is_on_by_default_only_where_it_means_something() {
        let up = |text: &str| -> UpstreamConfig { toml::from_str(text).unwrap() };
        assert!(up("address = \"127.0.0.1:53\"").case_randomization);
        assert!(!up("address = \"127.0.0.1:53\"\ncase_randomization = false").case_randomization);
        assert!(!up("address = \"tls://127.0.0.1\"").case_randomization);
        assert!(!up("address = \"https://127.0.0.1\"").case_randomization);
        assert!(UpstreamConfig::plain("127.0.0.1:53".parse().unwrap()).case_randomization);
        // The default on a plain upstream is valid; an encrypted one without the key
        // stays valid too (explicitly on is refused: see above).
        let c = Config::parse(ONE, "t").unwrap();
        assert!(c.upstreams[0].case_randomization);
        // Printed for plain upstreams (so --print-config shows the default), not
        // for encrypted ones, and read back the same.
        let mut tls = up("address = \"tls://127.0.0.1\"");
        let plain = toml::to_string(&c.upstreams[0]).unwrap();
        assert!(plain.contains("case_randomization = true"), "{plain}");
        let enc = toml::to_string(&tls).unwrap();
        assert!(!enc.contains("case_randomization"), "{enc}");
        assert!(!up(&enc).case_randomization);
        tls.case_randomization = true;
        assert!(toml::to_string(&tls)
            .unwrap()
            .contains("case_randomization = true"));
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
