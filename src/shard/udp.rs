//! Client UDP: receive, answer hits inline, hand misses to their own task.

use super::io::{Backend, UdpIo};
use super::Shard;
use crate::metrics::{Drop, Transport};
use crate::query::First;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

/// One of the shard's concurrent receive loops on one client socket. Ends at
/// shutdown; the socket closes when the last loop holding it ends.
pub(super) async fn receive_loop<B: Backend>(shard: Rc<Shard<B>>, sock: Rc<B::Udp>) {
    let mut shutdown = shard.shutdown.clone();
    // One wait for the shutdown signal for the whole loop: a fresh `changed()` per
    // datagram would take the channel's waiter lock, shared by all shards, twice
    // per packet.
    let stop = shutdown.changed();
    tokio::pin!(stop);
    loop {
        let buf = shard.pool.get();
        let (res, buf) = tokio::select! {
            biased;
            r = sock.recv_from(buf) => r,
            _ = &mut stop => return,
        };
        let peer = match res {
            Ok((_, peer)) => peer,
            Err(e) => {
                shard.pool.put(buf);
                tracing::debug!(error = %e, "client receive error");
                continue;
            }
        };
        let reply = take(&shard, &sock, &buf, peer);
        shard.pool.put(buf);
        if let Some(reply) = reply {
            send(&shard, &sock, reply, peer).await;
        }
    }
}

/// One client datagram received into a buffer the caller keeps: a hit's (or a
/// refusal's) reply is returned for the caller to send in its batch; a miss is copied
/// into a pooled buffer and resolved in a task of its own, which sends its reply.
pub(super) fn take<B: Backend>(
    shard: &Rc<Shard<B>>,
    sock: &Rc<B::Udp>,
    packet: &[u8],
    peer: SocketAddr,
) -> Option<Vec<u8>> {
    let start = Instant::now();
    let out = shard.pool.get();
    match shard.first_pass(packet, Transport::Udp, out, start) {
        First::Reply(out) => Some(out),
        First::Drop(out) => {
            shard.pool.put(out);
            None
        }
        First::Miss(out) => {
            shard.pool.put(out);
            let admitted = shard.admit()?;
            let mut query = shard.pool.get();
            query.extend_from_slice(packet);
            let shard = Rc::clone(shard);
            let sock = Rc::clone(sock);
            tokio::task::spawn_local(async move {
                let reply = shard.resolve(&query, Transport::Udp, start, admitted).await;
                shard.pool.put(query);
                if let Some(reply) = reply {
                    send(&shard, &sock, reply, peer).await;
                }
            });
            None
        }
    }
}

/// Sends a reply now if the socket takes it, else through the backend; counts a failure.
pub(super) async fn send<B: Backend>(
    shard: &Shard<B>,
    sock: &B::Udp,
    reply: Vec<u8>,
    peer: SocketAddr,
) {
    let res = match sock.try_send_to(&reply, peer) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            let (res, buf) = sock.send_to(reply, peer).await;
            shard.pool.put(buf);
            res
        }
        res => {
            shard.pool.put(reply);
            res
        }
    };
    if res.is_err() {
        shard.stats.dropped(Drop::SendError);
    }
}
