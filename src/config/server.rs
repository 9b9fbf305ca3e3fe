//! `[server]` and the listeners beside it: `[tls]`, `[https]` and the `[metrics]`
//! exporter.

use super::error::{invalid, ConfigError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

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
    /// Where upstream health (each upstream's smoothed RTT and whether its circuit
    /// is open) is kept across restarts: written atomically every few seconds and
    /// at shutdown, read at start. Empty (the default): off.
    pub state_file: String,
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
            state_file: String::new(),
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
pub(super) fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
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

#[cfg(test)]
mod tests {
    use crate::config::testing::{err, ONE};
    use crate::config::Config;

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
}
