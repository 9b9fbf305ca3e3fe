//! `[[upstream]]`: an upstream's address (its transport parsed from the same
//! string) and the keys that belong to that transport.

use super::error::{invalid, ConfigError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// for the key in the error. Reads no file: the start's preflight reads `ca_file`.
    pub(super) fn validate(&self, i: usize) -> Result<(), ConfigError> {
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
        if self.idle_timeout.is_zero() {
            return Err(invalid(key("idle_timeout"), "must be positive"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{err, ONE};
    use crate::config::Config;

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
        // A ca_file is read by the start's preflight, not here.
        assert!(Config::parse(
            "[[upstream]]\naddress = \"tls://127.0.0.1\"\nca_file = \"/nonexistent\"\n",
            "t"
        )
        .is_ok());
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
}
