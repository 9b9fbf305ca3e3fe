//! Client TCP (RFC 7766): several queries per connection, answered as they complete
//! (pipelined, possibly out of order), an idle timeout, and a bound on connections
//! per shard and on queries answered at once per connection.

use super::gate::Gate;
use super::serve::First;
use super::Shard;
use crate::io::frame::{framed, read_frame};
use crate::io::{Backend, Closing, TcpIo};
use crate::metrics::{DropReason, Transport};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, Semaphore};

/// Accepts connections until shutdown.
pub(super) async fn accept_loop<B: Backend>(shard: Rc<Shard<B>>, listener: B::Listener) {
    let mut shutdown = shard.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            r = B::accept(&listener) => r,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if !shard.tcp_accepts(peer.ip()) {
            drop(stream);
            continue;
        }
        if shard.tcp_open.get() >= shard.shared.config.limits.tcp_connections {
            shard.stats.dropped(DropReason::TcpConnectionLimit);
            drop(stream);
            continue;
        }
        let open = Open::new(&shard);
        crate::metrics::ShardStats::bump(&shard.stats.tcp_connections);
        tokio::task::spawn_local(connection(open, Rc::new(Closing(stream)), peer.ip()));
    }
}

/// Counts an open client connection for as long as it lives.
struct Open<B: Backend>(Rc<Shard<B>>);

impl<B: Backend> Open<B> {
    fn new(shard: &Rc<Shard<B>>) -> Self {
        shard.tcp_open.set(shard.tcp_open.get() + 1);
        Self(Rc::clone(shard))
    }
}

impl<B: Backend> Drop for Open<B> {
    fn drop(&mut self) {
        let n = &self.0.tcp_open;
        n.set(n.get().saturating_sub(1));
    }
}

/// Serves one connection: a reader that spawns a task per query, and a writer that
/// sends answers as they are ready. A client that stops reading cannot hold the
/// connection: a write that makes no progress for `tcp_idle_timeout` ends it, and
/// the reader waits for a pipeline slot no longer than that either. Every query
/// passes the gate first: REFUSED for a client outside `access.allow` (action
/// `refuse`), the connection closed for `drop` (a reload may deny an open one).
async fn connection<B: Backend>(
    open: Open<B>,
    stream: Rc<Closing<B::Stream>>,
    client: std::net::IpAddr,
) {
    let shard = Rc::clone(&open.0);
    let limits = &shard.shared.config.limits;
    let idle = limits.tcp_idle_timeout;
    let permits = Arc::new(Semaphore::new(limits.tcp_pipeline));
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(limits.tcp_pipeline);
    let writer_stream = Rc::clone(&stream);
    let writer = tokio::task::spawn_local(async move {
        while let Some(frame) = rx.recv().await {
            match tokio::time::timeout(idle, writer_stream.write_all(frame)).await {
                Ok((Ok(()), _)) => {}
                _ => {
                    // Stuck or broken: wake the reader too, the connection is done.
                    writer_stream.shutdown();
                    break;
                }
            }
        }
    });
    let mut shutdown = shard.shutdown.clone();
    let stop = shutdown.changed();
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            biased;
            p = tokio::time::timeout(idle, Arc::clone(&permits).acquire_owned()) => match p {
                Ok(Ok(p)) => p,
                _ => break,
            },
            _ = &mut stop => break,
        };
        let frame = tokio::select! {
            biased;
            r = tokio::time::timeout(idle, read_frame(&**stream)) => r,
            _ = &mut stop => break,
        };
        let query = match frame {
            Ok(Ok(q)) => q,
            Ok(Err(e)) => {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    shard.stats.dropped(DropReason::TcpFrame);
                }
                break;
            }
            Err(_idle) => break,
        };
        let gate = shard.gate(client, Transport::Tcp, Instant::now());
        if gate == Gate::Drop {
            break;
        }
        let shard = Rc::clone(&shard);
        let tx = tx.clone();
        tokio::task::spawn_local(async move {
            let start = Instant::now();
            let out = Vec::with_capacity(query.len().max(512));
            let first = if gate == Gate::Pass {
                shard.first_pass(&query, Transport::Tcp, out, start)
            } else {
                match shard.gated_reply(gate, &query, Transport::Tcp) {
                    Some(reply) => First::Reply(reply),
                    None => First::Drop(out),
                }
            };
            let reply = match first {
                First::Reply(reply) => Some(reply),
                First::Drop(_) => None,
                First::Miss(_) => match shard.admit() {
                    Some(admitted) => shard.resolve(&query, Transport::Tcp, start, admitted).await,
                    None => shard.overload_reply(&query, Transport::Tcp),
                },
            };
            if let Some(reply) = reply {
                // A reply never exceeds 65535 bytes (TCP_MAX); one that did would
                // have nothing to frame it with, and goes unsent.
                let frame = framed(&reply);
                shard.pool.put(reply);
                if let Some(frame) = frame {
                    let _ = tx.send(frame).await;
                }
            }
            drop(permit);
        });
    }
    // Let queries already read finish and be written, then close.
    drop(tx);
    let _ = writer.await;
}
