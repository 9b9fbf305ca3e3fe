//! TLS and HTTP clients for the encrypted-listener tests: a private CA made by the
//! test (rcgen), TLS sessions (tokio-rustls), DoT frames and DoH requests (hyper).

use super::*;
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

/// The name the server's certificates are for.
pub const HOST: &str = "dns.test";

/// A private CA and a temp directory holding the server's files.
pub struct Pki {
    pub dir: PathBuf,
    pub ca_key: rcgen::KeyPair,
    pub ca: rcgen::Certificate,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Pki {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tierdns-enc-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("tierdns test CA {tag}"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).unwrap();
        let pki = Self { dir, ca_key, ca };
        pki.issue(HOST, "server");
        pki
    }

    /// Writes `<prefix>-cert.pem` and `<prefix>-key.pem` for `host`, signed by the CA.
    pub fn issue(&self, host: &str, prefix: &str) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.to_string()])
            .unwrap()
            .signed_by(&key, &self.ca, &self.ca_key)
            .unwrap();
        std::fs::write(self.dir.join(format!("{prefix}-cert.pem")), cert.pem()).unwrap();
        std::fs::write(
            self.dir.join(format!("{prefix}-key.pem")),
            key.serialize_pem(),
        )
        .unwrap();
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `[tls]` and `[https]` on loopback port 0 with the server's files.
    pub fn sections(&self, tls_extra: &str) -> String {
        format!(
            "[tls]\nlisten = [\"127.0.0.1:0\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{tls_extra}\n[https]\nlisten = [\"127.0.0.1:0\"]\n",
            self.file("server-cert.pem"),
            self.file("server-key.pem")
        )
    }

    /// A client config trusting this CA, offering `alpn`.
    pub fn client(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TCP connection to `server` from `src` (127.0.0.x).
pub async fn tcp_from(src: Ipv4Addr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((src, 0)))?;
    sock.connect(server).await
}

/// A TLS session to `server` from `src`, verifying `name` against `client`'s CA.
pub async fn tls_from(
    src: Ipv4Addr,
    server: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    name: &str,
) -> std::io::Result<Tls> {
    let tcp = tcp_from(src, server).await?;
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    tokio::time::timeout(
        Duration::from_secs(3),
        TlsConnector::from(client).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake timed out"))?
}

pub async fn write_query(s: &mut Tls, id: u16, name: &str) {
    let q = query(id, name, RecordType::A, None).bytes();
    let mut frame = (q.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&q);
    s.write_all(&frame).await.unwrap();
}

pub async fn read_answer(s: &mut Tls) -> Option<Message> {
    let read = async {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.ok()?;
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut msg).await.ok()?;
        Message::from_vec(&msg).ok()
    };
    tokio::time::timeout(Duration::from_secs(3), read)
        .await
        .ok()
        .flatten()
}

/// Whether the server ends `s` (EOF, reset, or a TLS alert) within `wait`.
pub async fn ended_within(s: &mut Tls, wait: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, s.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

pub fn upstream() -> SimUpstream {
    SimUpstream::start(Behavior {
        addrs: vec![Ipv4Addr::new(192, 0, 2, 7)],
        ttl: 120,
        ..Behavior::default()
    })
}

pub const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A DoH response: status, headers, body.
pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn dns(&self) -> Message {
        assert_eq!(self.status, StatusCode::OK);
        assert_eq!(self.headers["content-type"], "application/dns-message");
        Message::from_vec(&self.body).unwrap()
    }

    pub fn max_age(&self) -> u32 {
        let v = self.headers["cache-control"].to_str().unwrap();
        v.strip_prefix("max-age=")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("cache-control {v:?}"))
    }
}

/// An HTTP/2 or HTTP/1.1 client connection over TLS.
pub enum Http {
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
}

impl Http {
    pub async fn connect(pki: &Pki, addr: SocketAddr, h2: bool) -> Self {
        let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
        let tls = tls_from(LOCAL, addr, pki.client(&[alpn]), HOST)
            .await
            .expect("handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        let io = TokioIo::new(tls);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Self::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Self::H1(send)
        }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Reply {
        let resp = match self {
            Self::H2(s) => s.send_request(req).await,
            Self::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await
            }
        }
        .expect("a response");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }
}

pub fn request(
    method: Method,
    uri: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = content_type {
        b = b.header("content-type", t);
    }
    b.body(Full::new(Bytes::from(body))).unwrap()
}

pub fn get(addr: SocketAddr, path_and_query: &str) -> Request<Full<Bytes>> {
    request(
        Method::GET,
        &format!("https://{HOST}:{}{path_and_query}", addr.port()),
        None,
        Vec::new(),
    )
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
