//! Client TCP (RFC 7766): several queries per connection, answered as they complete
//! (pipelined, possibly out of order), an idle timeout, and a bound on queries
//! answered at once per connection. DNS over TLS sessions are served by the same
//! [`connection`] ([`super::dot`]); DoT and DoH connections meet the same bounds at
//! accept ([`accept::admit_connection`]) and count in the same registry, and every DoH
//! request's message is answered by the same [`answer`].
//!
//! What one client and one connection may hold:
//! - `tcp_connections_per_client` open at once from one address, across all shards
//!   ([`TcpClients`](crate::policy::TcpClients)); past it a new one is closed at
//!   accept (`reason="tcp_client_limit"`).
//! - `tcp_connections` per shard: at the bound the idlest connection is closed for
//!   the new one (RFC 7766 6.2.3; [`Registry`](crate::policy::stream_conns::Registry) picks
//!   it, one with a query in flight only if none is idle), counted
//!   (`tierdns_tcp_closed_total{reason="evicted"}`). A closed connection drains its
//!   answers in flight; connections still draining count against a hard bound of
//!   twice `tcp_connections`, past which new ones are refused
//!   (`reason="tcp_connection_limit"`).
//! - `ratelimit.stream_qps` per client prefix: a query over it waits for its
//!   token before the next is read ([`Shard::stream_pace`]); a prefix owing more
//!   than the longest wait has that query answered and the connection closed
//!   (`reason="query_rate"`).
//! - `stream_reply_bytes` of replies queued and unwritten, all connections of the
//!   process: past it the heaviest holders are closed ([`super::reply_bytes`]).
//! - `tcp_max_queries` read, or open `tcp_max_lifetime`: the connection stops
//!   reading, answers every query it read, and closes (`reason="max_queries"`,
//!   `"max_lifetime"`) gracefully: FIN, then what the client still sends is
//!   discarded until it closes or [`LINGER`] passes (a close with unread bytes
//!   would reset the connection and could drop the answers).

use super::accept;
use super::reply_bytes::ReplyTicket;
use crate::io::frame::{framed, FrameReader};
use crate::io::{Backend, Closing, TcpIo};
use crate::metrics::{DropReason, TcpClose};
use crate::policy::stream_conns::{Close, ConnId};
use crate::policy::{ClientSlot, Reservation};
use crate::shard::{First, Gate, Shard};
use crate::transport::Transport;
use crate::wire::keepalive;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, Semaphore};

/// Accepts TCP connections until shutdown (the shared [`accept_loop`]).
pub(super) async fn accept_loop<B: Backend>(shard: Rc<Shard<B>>, listener: B::Listener) {
    let start = |shard: &Rc<Shard<B>>, stream, peer: std::net::SocketAddr, client| {
        let stream = Rc::new(Closing(stream));
        let open = Open::new(shard, Rc::clone(&stream) as Rc<dyn Close>, client);
        tokio::task::spawn_local(connection(open, stream, peer.ip(), Transport::Tcp));
    };
    accept::accept_loop(shard, accept::Plain::<B>(listener), Transport::Tcp, start).await;
}

impl<S: TcpIo> Close for Closing<S> {
    fn close(&self) {
        self.0.shutdown();
    }
}

/// An open client connection (TCP, DoT or DoH), counted in the shard's running stream connections
/// and its registry and against its client address for as long as its task lives.
pub(super) struct Open<B: Backend> {
    shard: Rc<Shard<B>>,
    id: ConnId,
    _client: ClientSlot,
}

impl<B: Backend> Open<B> {
    /// The shard serving it.
    pub(super) fn shard(&self) -> &Rc<Shard<B>> {
        &self.shard
    }

    /// Its registry entry.
    pub(super) fn id(&self) -> ConnId {
        self.id
    }

    /// Registers a connection admitted by [`admit_connection`](super::accept::admit_connection); `handle` closes it
    /// when the shard needs its place.
    pub(super) fn new(shard: &Rc<Shard<B>>, handle: Rc<dyn Close>, client: ClientSlot) -> Self {
        let id = shard.streams().started(handle);
        Self {
            shard: Rc::clone(shard),
            id,
            _client: client,
        }
    }
}

impl<B: Backend> Drop for Open<B> {
    fn drop(&mut self) {
        self.shard.streams().ended(self.id);
    }
}

/// One query of a connection being answered: marked in the registry from the read
/// to the reply queued (or dropped), however its task ends.
pub(super) struct Busy<B: Backend> {
    shard: Rc<Shard<B>>,
    id: ConnId,
}

impl<B: Backend> Busy<B> {
    pub(super) fn new(shard: &Rc<Shard<B>>, id: ConnId) -> Self {
        shard.streams().registry().begin(id, Instant::now());
        Self {
            shard: Rc::clone(shard),
            id,
        }
    }
}

impl<B: Backend> Drop for Busy<B> {
    fn drop(&mut self) {
        self.shard.streams().registry().end(self.id, Instant::now());
    }
}

/// Serves one connection: a reader that spawns a task per query, and a writer that
/// sends answers as they are ready. A client that stops reading cannot hold the
/// connection: a write that makes no progress for `tcp_idle_timeout` ends it, and
/// the reader waits for a pipeline slot no longer than that either. Every query
/// passes the gate first: REFUSED for a client outside `access.allow` (action
/// `refuse`), the connection closed for `drop` (a reload may deny an open one).
/// After `tcp_max_queries` queries or `tcp_max_lifetime` the reader stops; the
/// queries already read are answered before the connection closes.
///
/// The same for DNS over TLS (RFC 7858 frames messages as TCP does): `stream` is
/// then the TLS session, `transport` [`Transport::Dot`].
pub(super) async fn connection<B: Backend, S: TcpIo>(
    open: Open<B>,
    stream: Rc<Closing<S>>,
    client: std::net::IpAddr,
    transport: Transport,
) {
    let shard = Rc::clone(&open.shard);
    let id = open.id;
    let limits = &shard.shared().config.limits;
    let idle = limits.tcp_idle_timeout;
    let max_queries = limits.tcp_max_queries;
    let lifetime = limits.tcp_max_lifetime;
    let permits = Arc::new(Semaphore::new(limits.tcp_pipeline));
    // Each frame travels with the ticket that counts its bytes until it is
    // written or dropped (`limits.stream_reply_bytes`).
    let (tx, mut rx) = mpsc::channel::<(Vec<u8>, ReplyTicket<B>)>(limits.tcp_pipeline);
    let writer_stream = Rc::clone(&stream);
    let writer = tokio::task::spawn_local(async move {
        while let Some((mut frame, mut ticket)) = rx.recv().await {
            // Answers ready together leave in one write: one syscall (one TLS
            // record over DoT) for a burst of pipelined answers.
            while frame.len() < COALESCE {
                match rx.try_recv() {
                    Ok((more, more_ticket)) => {
                        frame.extend_from_slice(&more);
                        ticket.absorb(more_ticket);
                    }
                    Err(_) => break,
                }
            }
            let written = tokio::time::timeout(idle, writer_stream.write_all(frame)).await;
            drop(ticket);
            match written {
                Ok((Ok(()), _)) => {}
                _ => {
                    // Stuck or broken: wake the reader too, the connection is done.
                    writer_stream.shutdown();
                    break;
                }
            }
        }
    });
    let mut shutdown = shard.shutdown();
    let stop = shutdown.changed();
    tokio::pin!(stop);
    let expiry = async {
        if lifetime.is_zero() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(lifetime).await;
    };
    tokio::pin!(expiry);
    let mut read = 0u64;
    // Queries are read through a buffer: one read takes a pipelined burst.
    let mut reader = FrameReader::default();
    // Whether the reader stopped while the client may still be sending.
    let mut linger = false;
    // Set once the connection takes no more queries: the answers still to come
    // tell clients that asked for edns-tcp-keepalive TIMEOUT 0 (RFC 7828).
    let closing = Rc::new(std::cell::Cell::new(false));
    let idle_units = keepalive::timeout_units(idle);
    loop {
        if max_queries > 0 && read >= max_queries {
            shard.stats().tcp_closed(TcpClose::MaxQueries);
            linger = true;
            break;
        }
        // The lifetime first: a client that always has a query ready must not
        // outlive it.
        let permit = tokio::select! {
            biased;
            _ = &mut stop => break,
            _ = &mut expiry => {
                shard.stats().tcp_closed(TcpClose::MaxLifetime);
                linger = true;
                break;
            }
            p = tokio::time::timeout(idle, Arc::clone(&permits).acquire_owned()) => match p {
                Ok(Ok(p)) => p,
                _ => break,
            },
        };
        // Only the wait for a query's first bytes may be cut short (shutdown, the
        // lifetime): once its length is read the query is read whole and
        // answered, so a connection stops between queries, never inside one.
        let len = tokio::select! {
            biased;
            _ = &mut stop => break,
            _ = &mut expiry => {
                shard.stats().tcp_closed(TcpClose::MaxLifetime);
                linger = true;
                break;
            }
            r = tokio::time::timeout(idle, reader.next_len(&**stream)) => r,
        };
        let frame = match len {
            Ok(Ok(len)) if len > MAX_STREAM_QUERY => {
                // No query is this long: not read, the connection is closed.
                shard.stats().dropped(DropReason::Oversize);
                linger = true;
                break;
            }
            Ok(Ok(len)) => tokio::time::timeout(idle, reader.body(&**stream, len)).await,
            Ok(Err(e)) => Ok(Err(e)),
            Err(idle) => Err(idle),
        };
        let query = match frame {
            Ok(Ok(q)) => q,
            Ok(Err(e)) => {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    shard.stats().dropped(DropReason::TcpFrame);
                }
                break;
            }
            Err(_idle) => break,
        };
        read += 1;
        if max_queries > 0 && read >= max_queries {
            closing.set(true);
        }
        let keepalive = keepalive::asks_keepalive(&query);
        let gate = shard.gate(client, transport, Instant::now());
        if gate == Gate::Drop {
            break;
        }
        // Over its prefix's `stream_qps`, the query waits for its token and the
        // connection reads nothing meanwhile: the client's pipeline backs up.
        let over = match shard.stream_pace(client, transport, Instant::now()) {
            Reservation::Now => false,
            Reservation::After(wait) => {
                tokio::time::sleep(wait).await;
                false
            }
            Reservation::Over => {
                closing.set(true);
                true
            }
        };
        let busy = Busy::new(&shard, id);
        let task_shard = Rc::clone(&shard);
        let tx = tx.clone();
        let closing = Rc::clone(&closing);
        tokio::task::spawn_local(async move {
            let shard = task_shard;
            let _busy = busy;
            let reply = answer(&shard, &query, transport, gate, Instant::now()).await;
            if let Some(mut reply) = reply {
                if keepalive {
                    let timeout = if closing.get() { 0 } else { idle_units };
                    keepalive::append_keepalive(&mut reply, timeout);
                }
                // A reply never exceeds 65535 bytes (TCP_MAX); one that did would
                // have nothing to frame it with, and goes unsent.
                let frame = framed(&reply);
                shard.pool().put(reply);
                if let Some(frame) = frame {
                    let ticket = ReplyTicket::new(&shard, id, frame.len());
                    let _ = tx.send((frame, ticket)).await;
                }
            }
            drop(permit);
        });
        if over {
            // The prefix owes more than the longest wait: this query is
            // answered, then the connection closes.
            shard.stats().tcp_closed(TcpClose::QueryRate);
            linger = true;
            break;
        }
    }
    // Let queries already read finish and be written, then close.
    closing.set(true);
    drop(tx);
    let _ = writer.await;
    if linger {
        linger_close(&**stream, idle.min(LINGER)).await;
    }
}

/// Answers one query of a stream connection (TCP, DoT, DoH) that passed or was
/// stopped by `gate`: the gated reply, or the first pass and, for a miss, the
/// flight. None: nothing to send (dropped and counted). The reply is a pooled
/// buffer.
pub(super) async fn answer<B: Backend>(
    shard: &Rc<Shard<B>>,
    query: &[u8],
    transport: Transport,
    gate: Gate,
    start: Instant,
) -> Option<Vec<u8>> {
    let out = shard.pool().get();
    let first = if gate == Gate::Pass {
        shard.first_pass(query, transport, out, start)
    } else {
        match shard.gated_reply(gate, query, transport) {
            Some(reply) => First::Reply(reply),
            None => First::Drop(out),
        }
    };
    match first {
        First::Reply(reply) => Some(reply),
        First::Drop(out) => {
            shard.pool().put(out);
            None
        }
        First::Miss(out) => {
            shard.pool().put(out);
            match shard.admit() {
                Some(admitted) => shard.resolve(query, transport, start, &admitted).await,
                None => shard.overload_reply(query, transport),
            }
        }
    }
}

/// Longest query a stream client (TCP, DoT, DoH) may send. A DNS query is one
/// question and an OPT record: a few hundred bytes, 468 padded (RFC 8467); a
/// longer frame is not read and its connection is closed (DoH: 413), counted as
/// `reason="oversize"`.
pub(super) const MAX_STREAM_QUERY: usize = 4096;

/// Framed answers already queued are joined into one write up to this many bytes
/// (a write may exceed it by one answer).
const COALESCE: usize = 16 * 1024;

/// Longest a connection stopped by its limits waits for the client to close.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Closes gracefully a connection whose client may still be sending: a close with
/// unread bytes would send a reset, and a reset can destroy answers the client has
/// not read yet. Sends FIN after the answers, then reads and discards what still
/// comes until the client closes, for at most `wait`.
async fn linger_close<S: TcpIo>(stream: &S, wait: std::time::Duration) {
    stream.shutdown_write();
    let _ = tokio::time::timeout(wait, async {
        let mut buf = Vec::with_capacity(512);
        loop {
            buf.clear();
            let (res, b) = stream.read(buf).await;
            buf = b;
            if !matches!(res, Ok(n) if n > 0) {
                return;
            }
        }
    })
    .await;
}
