//! What the encrypted listeners share: their TLS server configs, the accept loop
//! and the handshake. DNS over TLS ([`super::dot`]) and over HTTPS
//! ([`super::doh`]) differ only in what runs on the session.
//!
//! A connection meets, before any TLS work, the bounds every stream connection
//! meets ([`super::tcp::admit_connection`]): `drop` in `[access]`, the per-client cap, the
//! shard's connection bound (the idlest connection of any transport is closed for
//! it). The handshake then has `handshake_timeout` to complete (a slow-loris
//! holds a slot no longer), and the connection is closed at once if the shard
//! needs its place meanwhile. Failed and timed out handshakes are counted
//! (`tierdns_drops_total{reason="tls_handshake"|"tls_handshake_timeout"}`).
//!
//! The listeners are tokio `TcpListener`s on both backends: tokio-uring runs a tokio
//! current-thread runtime underneath, so the TLS sessions live on the shard's own
//! thread and runtime beside its io_uring sockets, through the tokio reactor
//! (epoll) rather than the ring.

use super::tcp::{accept_failed, admit_connection, Open};
use super::tcp_registry::{Close, CloseSignal};
use super::{Shard, StartError};
use crate::certs::ServerCert;
use crate::config::Config;
use crate::io::Backend;
use crate::metrics::{DropReason, Transport};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// ALPN of DNS over TLS (RFC 7858's registration in the ALPN registry).
const ALPN_DOT: &[u8] = b"dot";

/// One kind of encrypted listener: its certificate and TLS config.
#[derive(Debug)]
pub(crate) struct TlsListener {
    cert: Arc<ServerCert>,
    config: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
}

/// The encrypted listeners' TLS state, shared by every shard; a kind without
/// listen addresses has none.
#[derive(Debug, Default)]
pub(crate) struct Encrypted {
    pub(crate) dot: Option<TlsListener>,
    pub(crate) doh: Option<TlsListener>,
}

impl Encrypted {
    /// Loads the certificates the configured listeners need; the error names the
    /// key of the file at fault. `[https]` without files of its own loads `[tls]`'s
    /// files into a certificate of its own, so each section reloads on its own.
    pub(super) fn load(config: &Config) -> Result<Self, StartError> {
        let listener = |files, alpn: &[&[u8]], handshake_timeout| {
            let cert =
                Arc::new(ServerCert::load(files).map_err(|e| StartError::Tls(e.to_string()))?);
            let config = cert
                .server_config(alpn)
                .map_err(|e| StartError::Tls(e.to_string()))?;
            Ok::<_, StartError>(TlsListener {
                cert,
                config,
                handshake_timeout,
            })
        };
        let tls = &config.tls;
        let https = &config.https;
        Ok(Self {
            dot: if tls.listen.is_empty() {
                None
            } else {
                let files = crate::config::CertFiles {
                    cert: (&tls.cert_file, "tls.cert_file"),
                    key: (&tls.key_file, "tls.key_file"),
                };
                Some(listener(files, &[ALPN_DOT], tls.handshake_timeout)?)
            },
            doh: if https.listen.is_empty() {
                None
            } else {
                Some(listener(
                    https.cert_files(tls),
                    &[b"h2", b"http/1.1"],
                    https.handshake_timeout,
                )?)
            },
        })
    }

    /// Rereads the certificate files `config` names; a file that fails keeps the
    /// running certificate. Returns one message per failure (naming the key).
    pub(crate) fn reload(&self, config: &Config) -> Vec<String> {
        let tls = &config.tls;
        let mut failed = Vec::new();
        if let Some(dot) = &self.dot {
            let files = crate::config::CertFiles {
                cert: (&tls.cert_file, "tls.cert_file"),
                key: (&tls.key_file, "tls.key_file"),
            };
            if let Err(e) = dot.cert.reload(files) {
                failed.push(format!("keeping the running DoT certificate: {e}"));
            }
        }
        if let Some(doh) = &self.doh {
            if let Err(e) = doh.cert.reload(config.https.cert_files(tls)) {
                failed.push(format!("keeping the running DoH certificate: {e}"));
            }
        }
        failed
    }
}

/// Accepts DoT (`transport` [`Transport::Dot`]) or DoH connections until shutdown.
pub(super) async fn accept_loop<B: Backend>(
    shard: Rc<Shard<B>>,
    listener: TcpListener,
    transport: Transport,
) {
    let mut shutdown = shard.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                accept_failed(&e).await;
                continue;
            }
        };
        let Some(client) = admit_connection(&shard, peer.ip(), transport) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let signal = Rc::new(CloseSignal::default());
        let open = Open::new(&shard, Rc::clone(&signal) as Rc<dyn Close>, client);
        tokio::task::spawn_local(connection(open, stream, peer.ip(), transport, signal));
    }
}

/// The handshake under its timeout, then DoT or DoH on the session.
async fn connection<B: Backend>(
    open: Open<B>,
    stream: TcpStream,
    client: std::net::IpAddr,
    transport: Transport,
    signal: Rc<CloseSignal>,
) {
    let shard = Rc::clone(open.shard());
    let encrypted = &shard.shared.encrypted;
    let listener = match transport {
        Transport::Dot => encrypted.dot.as_ref(),
        _ => encrypted.doh.as_ref(),
    };
    let Some(listener) = listener else {
        return;
    };
    let acceptor = TlsAcceptor::from(Arc::clone(&listener.config));
    let mut shutdown = shard.shutdown.clone();
    let handshake = tokio::select! {
        biased;
        _ = signal.closed() => return,
        _ = shutdown.changed() => return,
        r = tokio::time::timeout(listener.handshake_timeout, acceptor.accept(stream)) => r,
    };
    let session: TlsStream<TcpStream> = match handshake {
        Ok(Ok(session)) => session,
        Ok(Err(e)) => {
            tracing::debug!(%client, error = %e, "TLS handshake failed");
            shard.stats.dropped(DropReason::TlsHandshake);
            return;
        }
        Err(_) => {
            shard.stats.dropped(DropReason::TlsHandshakeTimeout);
            return;
        }
    };
    match transport {
        Transport::Dot => super::dot::serve(open, session, client, signal).await,
        _ => super::doh::serve(open, session, client, signal).await,
    }
}
