//! What the encrypted listeners share: the accept loop and the handshake (their
//! TLS server configs are [`crate::certs::ListenerTls`]). DNS over TLS ([`super::dot`]) and over HTTPS
//! ([`super::doh`]) differ only in what runs on the session.
//!
//! A connection meets, before any TLS work, the bounds every stream connection
//! meets ([`super::accept::admit_connection`]): `drop` in `[access]`, the per-client cap, the
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

use super::tcp::Open;
use crate::io::Backend;
use crate::metrics::DropReason;
use crate::policy::stream_conns::Close;
use crate::shard::Shard;
use crate::transport::Transport;
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A close request for a connection whose task watches for it (DoT and DoH: their
/// TLS session is not a socket the shard can shut down from outside).
#[derive(Debug, Default)]
pub(crate) struct CloseSignal {
    closed: Cell<bool>,
    notify: tokio::sync::Notify,
}

impl CloseSignal {
    /// Whether [`Close::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Resolves once the connection is to close (at once if it was already).
    pub(crate) async fn closed(&self) {
        if self.closed.get() {
            return;
        }
        self.notify.notified().await;
    }
}

impl Close for CloseSignal {
    fn close(&self) {
        self.closed.set(true);
        self.notify.notify_waiters();
    }
}

/// Accepts DoT (`transport` [`Transport::Dot`]) or DoH connections until shutdown
/// (the shared [`accept_loop`](super::accept::accept_loop)).
pub(super) async fn accept_loop<B: Backend>(
    shard: Rc<Shard<B>>,
    listener: TcpListener,
    transport: Transport,
) {
    let start = |shard: &Rc<Shard<B>>, stream: TcpStream, peer: SocketAddr, client| {
        let _ = stream.set_nodelay(true);
        let signal = Rc::new(CloseSignal::default());
        let open = Open::new(shard, Rc::clone(&signal) as Rc<dyn Close>, client);
        tokio::task::spawn_local(connection(open, stream, peer.ip(), transport, signal));
    };
    super::accept::accept_loop(shard, listener, transport, start).await;
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
    let encrypted = &shard.shared().listener_tls;
    let listener = match transport {
        Transport::Dot => encrypted.dot.as_ref(),
        _ => encrypted.doh.as_ref(),
    };
    let Some(listener) = listener else {
        return;
    };
    let acceptor = TlsAcceptor::from(Arc::clone(&listener.config));
    let mut shutdown = shard.shutdown();
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
            shard.stats().dropped(DropReason::TlsHandshake);
            return;
        }
        Err(_) => {
            shard.stats().dropped(DropReason::TlsHandshakeTimeout);
            return;
        }
    };
    match transport {
        Transport::Dot => super::dot::serve(open, session, client, signal).await,
        _ => super::doh::serve(open, session, client, signal).await,
    }
}
