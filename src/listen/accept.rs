//! The one accept loop of the stream listeners (TCP, DoT, DoH): accept until
//! shutdown, back off after a failed accept, and let a connection in only past
//! the bounds every stream connection meets ([`admit_connection`]); then its
//! transport takes it (`start`).

use crate::io::Backend;
use crate::metrics::{DropReason, TcpClose};
use crate::policy::ClientSlot;
use crate::shard::Shard;
use crate::transport::Transport;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

/// A listening socket the loop accepts from.
pub(super) trait Acceptor {
    /// An accepted connection.
    type Stream;
    /// Accepts one connection.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>>;
}

/// A plain TCP listener of backend `B`.
pub(super) struct Plain<B: Backend>(pub(super) B::Listener);

impl<B: Backend> Acceptor for Plain<B> {
    type Stream = B::Stream;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> {
        B::accept(&self.0)
    }
}

/// The encrypted listeners' tokio listener (TLS runs on tokio's reactor).
impl Acceptor for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<(Self::Stream, SocketAddr)> {
        // The inherent `TcpListener::accept` (inherent methods resolve first).
        Self::accept(self).await
    }
}

/// Accepts `transport` connections on `listener` until the shard shuts down;
/// each admitted one goes to `start` with its peer and the client's slot.
pub(super) async fn accept_loop<B: Backend, L: Acceptor>(
    shard: Rc<Shard<B>>,
    listener: L,
    transport: Transport,
    mut start: impl FnMut(&Rc<Shard<B>>, L::Stream, SocketAddr, ClientSlot),
) {
    let mut shutdown = shard.shutdown();
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
        start(&shard, stream, peer, client);
    }
}

/// After a failed accept: EMFILE and friends; back off instead of spinning.
async fn accept_failed(e: &io::Error) {
    tracing::debug!(error = %e, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
}

/// The bounds every stream connection (TCP, DoT, DoH) meets at accept, in order:
/// the access list (`drop` closes it), `tcp_connections_per_client` across all
/// shards, the shard's hard bound of twice `tcp_connections`, and at
/// `tcp_connections` the idlest connection of the shard (of any transport) closed
/// for this one. Returns the client's slot, or None (counted): close it.
pub(super) fn admit_connection<B: Backend>(
    shard: &Rc<Shard<B>>,
    client: std::net::IpAddr,
    transport: Transport,
) -> Option<ClientSlot> {
    if !shard.stream_accepts(client, transport) {
        return None;
    }
    let limits = &shard.shared().config.limits;
    let Some(slot) = shard
        .shared()
        .tcp_clients
        .acquire(client, limits.tcp_connections_per_client)
    else {
        shard.stats().dropped(DropReason::TcpClientLimit);
        return None;
    };
    // Connections closed for a newer one may still be draining their answers:
    // they hold sockets, so they count against a hard bound too.
    if shard.streams().running() >= limits.tcp_connections.saturating_mul(2) {
        shard.stats().dropped(DropReason::TcpConnectionLimit);
        return None;
    }
    if shard.streams().registry().len() >= limits.tcp_connections {
        let victim = shard.streams().registry().evict_idlest();
        if let Some(victim) = victim {
            victim.close();
            shard.stats().tcp_closed(TcpClose::Evicted);
        }
    }
    crate::metrics::ShardStats::bump(&shard.stats().tcp_connections);
    Some(slot)
}
