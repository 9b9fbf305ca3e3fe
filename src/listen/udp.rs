//! Client UDP: the shard's side of the receive loops in [`crate::io`]. Hits are
//! answered inline (the loop sends the reply in its batch); misses are copied into a
//! pooled buffer and resolved in a task of their own, which queues its reply in the
//! socket's [`Outbox`]: the misses answered in one turn leave in one `sendmmsg`.
//!
//! Which loop serves a socket: on epoll, `recvmmsg`/`sendmmsg` batches
//! ([`crate::io::mmsg`]); on io_uring, a multishot receive on a ring of its own
//! ([`crate::io::ring`]) unless `server.udp_multishot = false` or the kernel lacks
//! it, then `udp_receivers` loops of one receive operation per datagram.

use crate::io::buffers::BufferPool;
use crate::io::mmsg::Outbox;
use crate::io::udp::{self, DatagramService, ReplyTo, UdpDrop};
use crate::io::{mmsg, ring, Backend};
use crate::metrics::DropReason;
use crate::shard::{Admitted, First, Gate, Shard};
use crate::transport::Transport;
use std::rc::Rc;
use std::time::Instant;

/// Serves one client UDP socket until shutdown, and at shutdown until every
/// datagram queued on it when the shard released it is answered (see
/// `crate::io::release_udp`).
pub(super) async fn serve_udp<B: Backend>(shard: Rc<Shard<B>>, sock: Rc<B::Udp>, receivers: usize) {
    let service = Rc::new(UdpService {
        shard: Rc::clone(&shard),
        outbox: Outbox::new(),
    });
    // Runs as long as the shard: misses still in flight at shutdown are answered.
    tokio::task::spawn_local(mmsg::send_queued(
        Rc::clone(&sock),
        Rc::clone(&service),
        Rc::clone(&service.outbox),
    ));
    // Not the shutdown signal: at shutdown the shard releases the socket and the
    // loops end at its end marker, once everything queued is answered; this stops
    // them only if the marker never comes (`shutdown_grace`).
    let stop = shard.udp_stop();
    if let Some(tokio_sock) = B::readiness(&sock) {
        mmsg::serve(tokio_sock, &*service, stop).await;
        return;
    }
    if shard.shared().config.server.udp_multishot {
        match ring::serve(&*sock, &*service, stop.clone()).await {
            Ok(()) => return,
            Err(ring::Unsupported(why)) => tracing::warn!(
                shard = shard.index(),
                reason = %why,
                wildcard_replies_from_route = shard
                    .shared()
                    .config
                    .server
                    .listen
                    .iter()
                    .any(|a| a.ip().is_unspecified()),
                "client UDP: no multishot io_uring receive; one receive operation per datagram \
                 instead (a wildcard listener's replies then leave from the source the route picks)"
            ),
        }
    }
    let loops: Vec<_> = (0..receivers)
        .map(|_| {
            tokio::task::spawn_local(udp::receive_loop(
                Rc::clone(&sock),
                Rc::clone(&service),
                stop.clone(),
            ))
        })
        .collect();
    for l in loops {
        let _ = l.await;
    }
}

/// One client socket of one shard, as the receive loops see it.
struct UdpService<B: Backend> {
    shard: Rc<Shard<B>>,
    /// Replies to misses, with their admissions, until they have left.
    outbox: Rc<Outbox<Admitted<B>>>,
}

impl<B: Backend> DatagramService for UdpService<B> {
    fn datagram(&self, packet: &[u8], from: ReplyTo) -> Option<Vec<u8>> {
        take(&self.shard, &self.outbox, packet, from)
    }

    fn dropped(&self, why: UdpDrop) {
        self.shard.stats().dropped(match why {
            UdpDrop::Oversize => DropReason::Oversize,
            UdpDrop::NoAddress => DropReason::Short,
            UdpDrop::SendError => DropReason::SendError,
        });
    }

    fn pool(&self) -> &BufferPool {
        self.shard.pool()
    }

    fn is_end(&self, packet: &[u8]) -> bool {
        self.shard.udp_end().is(packet)
    }
}

/// One client datagram received into a buffer the caller keeps: past the gate, a
/// hit's (or a refusal's) reply is returned for the caller to send in its batch; a
/// miss is copied into a pooled buffer and resolved in a task of its own, which
/// queues its reply in `outbox`.
fn take<B: Backend>(
    shard: &Rc<Shard<B>>,
    outbox: &Rc<Outbox<Admitted<B>>>,
    packet: &[u8],
    from: ReplyTo,
) -> Option<Vec<u8>> {
    let start = Instant::now();
    let gate = shard.gate(from.peer.ip(), Transport::Udp, start);
    if gate != Gate::Pass {
        return shard.gated_reply(gate, packet, Transport::Udp);
    }
    let out = shard.pool().get();
    match shard.first_pass(packet, Transport::Udp, out, start) {
        First::Reply(out) => Some(out),
        First::Drop(out) => {
            shard.pool().put(out);
            None
        }
        First::Miss(out) => {
            shard.pool().put(out);
            let admitted = shard.admit()?;
            let mut query = shard.pool().get();
            query.extend_from_slice(packet);
            let shard = Rc::clone(shard);
            let outbox = Rc::clone(outbox);
            tokio::task::spawn_local(async move {
                let reply = shard
                    .resolve(&query, Transport::Udp, start, &admitted)
                    .await;
                shard.pool().put(query);
                if let Some(reply) = reply {
                    // Admitted until the reply has left (shutdown waits for it).
                    outbox.push((reply, from, admitted));
                }
            });
            None
        }
    }
}
