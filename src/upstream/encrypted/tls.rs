//! The TLS side of encrypted upstreams: the trusted roots, the rustls client
//! config (ring provider, ALPN), the name a certificate must carry, one connection
//! opened under a deadline, and what a failed handshake means.
//!
//! Certificates are verified by rustls' WebPKI verifier against `ca_file` or the
//! system's trust store (rustls-native-certs). Nothing here ever sends a query:
//! a connection that does not complete its handshake is closed, and the caller
//! fails the query ([`FailKind::TlsCertificate`] for a certificate that does not
//! verify): there is no plain-text fallback.

use crate::health::FailKind;
use crate::trust::{read_roots, system_roots};
use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// What one encrypted upstream needs to open connections.
#[derive(Clone)]
pub(crate) struct TlsTarget {
    /// The address connected to.
    pub(crate) addr: SocketAddr,
    /// The name the certificate must be valid for.
    pub(crate) name: ServerName<'static>,
    connector: TlsConnector,
}

impl TlsTarget {
    /// A client config for `alpn` trusting `ca_file` (or the system's roots), with
    /// the ring provider, safe default protocol versions and session resumption
    /// (rustls' in-memory cache), verifying `tls_name` (default: `addr`'s IP). The
    /// error names the key at fault (`ca_file`, `tls_name`) and says why.
    pub(crate) fn new(
        addr: SocketAddr,
        tls_name: Option<&str>,
        ca_file: Option<&Path>,
        alpn: &[u8],
    ) -> Result<Self, (&'static str, String)> {
        let roots = match ca_file {
            Some(path) => Arc::new(read_roots(path).map_err(|why| ("ca_file", why))?),
            None => system_roots().map_err(|why| ("ca_file", why))?,
        };
        let name = match tls_name {
            Some(n) => ServerName::try_from(n.to_string()).map_err(|_| {
                let why = format!("{n:?} is neither a DNS name nor an IP address");
                ("tls_name", why)
            })?,
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ("address", format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Self {
            addr,
            name,
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Opens a TCP connection and completes the TLS handshake within `deadline`.
    pub(crate) async fn connect(
        &self,
        deadline: Duration,
    ) -> Result<TlsStream<TcpStream>, ConnectError> {
        let open = async {
            let tcp = TcpStream::connect(self.addr)
                .await
                .map_err(ConnectError::Tcp)?;
            let _ = tcp.set_nodelay(true);
            self.connector
                .connect(self.name.clone(), tcp)
                .await
                .map_err(ConnectError::from_handshake)
        };
        tokio::time::timeout(deadline, open)
            .await
            .unwrap_or(Err(ConnectError::Timeout))
    }
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// TCP connect failed (refused, unreachable).
    Tcp(std::io::Error),
    /// The handshake failed on the certificate.
    Certificate(CertificateError),
    /// The handshake failed otherwise (an alert, a protocol error, the connection
    /// closed or reset during it).
    Handshake(String),
    /// No connection and handshake within the deadline.
    Timeout,
    /// The server completed the handshake without the protocol asked for (ALPN).
    Protocol(String),
}

impl ConnectError {
    fn from_handshake(e: std::io::Error) -> Self {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::InvalidCertificate(c)) => Self::Certificate(c.clone()),
            Some(other) => Self::Handshake(other.to_string()),
            None => Self::Handshake(e.to_string()),
        }
    }

    /// The failure the query reports.
    pub(crate) fn kind(&self) -> FailKind {
        match self {
            Self::Certificate(_) => FailKind::TlsCertificate,
            Self::Timeout => FailKind::Timeout,
            Self::Tcp(_) | Self::Handshake(_) | Self::Protocol(_) => FailKind::Network,
        }
    }

    /// Label of `tierdns_upstream_tls_failures_total{reason}`, or None for a
    /// failure before TLS (TCP, timeout), counted with the other upstream errors.
    pub(crate) fn tls_reason(&self) -> Option<&'static str> {
        match self {
            Self::Certificate(c) => Some(match c {
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => "name_mismatch",
                CertificateError::UnknownIssuer => "unknown_issuer",
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => "expired",
                _ => "invalid_certificate",
            }),
            Self::Handshake(_) => Some("handshake"),
            Self::Protocol(_) => Some("alpn"),
            Self::Tcp(_) | Self::Timeout => None,
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(e) => write!(f, "TCP connect: {e}"),
            Self::Certificate(c) => write!(f, "certificate does not verify: {c:?}"),
            Self::Handshake(e) => write!(f, "TLS handshake: {e}"),
            Self::Timeout => write!(f, "no connection within the upstream timeout"),
            Self::Protocol(p) => write!(f, "{p}"),
        }
    }
}
