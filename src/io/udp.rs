//! Serving a client UDP socket, the part every loop shares: what the loops ask of
//! the code that answers (a [`DatagramService`]), how a reply leaves when a batch
//! cannot take it, and the plain loop of one receive operation per datagram.
//!
//! The loops know bytes and addresses only: the service reads the datagram, answers
//! it (a reply to send now) or keeps it (a miss it answers later on its own).

use super::buffers::BufferPool;
use super::{UdpIo, MAX_QUERY};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use tokio::sync::watch;

/// Why a datagram was not served, or a reply not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UdpDrop {
    /// Longer than [`MAX_QUERY`].
    Oversize,
    /// No readable sender address (or no message header at all).
    NoAddress,
    /// The kernel refused the reply.
    SendError,
}

/// Where a reply goes: the client, and on a socket bound to a wildcard the address
/// the client sent its query to, which the reply leaves from ([`super::pktinfo`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplyTo {
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// The query's destination, if the kernel reported one.
    pub(crate) local: Option<IpAddr>,
}

impl ReplyTo {
    /// To `peer`, from the source the route picks (or the socket's own address).
    pub(crate) fn peer(peer: SocketAddr) -> Self {
        Self { peer, local: None }
    }
}

/// What answers the datagrams of one client socket.
pub(crate) trait DatagramService: 'static {
    /// One datagram from `from.peer`: the reply to send now, if there is one. A
    /// datagram that needs more time is the service's to answer later (to `from`);
    /// the bytes are only borrowed for this call.
    fn datagram(&self, packet: &[u8], from: ReplyTo) -> Option<Vec<u8>>;
    /// A datagram not served, or a reply lost.
    fn dropped(&self, why: UdpDrop);
    /// Where reply buffers go back to once sent.
    fn pool(&self) -> &BufferPool;
    /// Whether `packet` is the end marker the shard sends its own socket once it
    /// has taken it out of service ([`super::release_udp`]): every datagram
    /// queued before it has been read, so the loop that reads it ends.
    fn is_end(&self, packet: &[u8]) -> bool;
}

/// The end marker of one shard's client sockets: random bytes, so that no client
/// can end a loop early (and no DNS message: shorter than a header and a question).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EndMarker([u8; 16]);

impl EndMarker {
    /// A fresh random marker.
    pub(crate) fn random() -> Self {
        Self(rand::random())
    }

    /// Its bytes, as sent.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether `packet` is this marker.
    pub(crate) fn is(&self, packet: &[u8]) -> bool {
        packet == self.0
    }
}

/// Sends `reply` to `to` now if the socket takes it, else through the backend
/// (waiting for room); the buffer goes back to `pool`. An error is returned for the
/// caller to count.
pub(crate) async fn send_reply<U: UdpIo>(
    sock: &U,
    pool: &BufferPool,
    reply: Vec<u8>,
    to: ReplyTo,
) -> io::Result<usize> {
    match sock.try_send_to(&reply, to) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            let (res, buf) = sock.send_to(reply, to).await;
            pool.put(buf);
            res
        }
        res => {
            pool.put(reply);
            res
        }
    }
}

/// One receive operation per datagram, until the end marker or until `stop`
/// changes. Several of these may run on one socket (io_uring without multishot
/// receive), each ended by a marker of its own; the socket closes when the last
/// loop holding it ends. The receive reports no destination (tokio-uring's has no
/// control messages), so a reply leaves from the source the route picks.
pub(crate) async fn receive_loop<U: UdpIo, S: DatagramService>(
    sock: Rc<U>,
    service: Rc<S>,
    mut stop: watch::Receiver<bool>,
) {
    // One wait for the stop signal for the whole loop: a fresh `changed()` per
    // datagram would take the channel's waiter lock, shared by all shards, twice
    // per packet.
    let stop = stop.changed();
    tokio::pin!(stop);
    loop {
        // A pooled buffer has room for more than MAX_QUERY bytes, so a longer
        // datagram shows as too long (the kernel cuts one to the room given).
        let buf = service.pool().get();
        let (res, buf) = tokio::select! {
            biased;
            r = sock.recv_from(buf) => r,
            _ = &mut stop => return,
        };
        let peer = match res {
            Ok((len, _)) if len > MAX_QUERY => {
                service.pool().put(buf);
                service.dropped(UdpDrop::Oversize);
                continue;
            }
            Ok((len, _)) if service.is_end(&buf[..len.min(buf.len())]) => {
                service.pool().put(buf);
                return;
            }
            Ok((_, peer)) => peer,
            Err(e) => {
                service.pool().put(buf);
                tracing::debug!(error = %e, "client receive error");
                continue;
            }
        };
        let to = ReplyTo::peer(peer);
        let reply = service.datagram(&buf, to);
        service.pool().put(buf);
        if let Some(reply) = reply {
            if send_reply(&*sock, service.pool(), reply, to).await.is_err() {
                service.dropped(UdpDrop::SendError);
            }
        }
    }
}
const _: () = assert!(super::buffers::BUF_CAPACITY > MAX_QUERY);
