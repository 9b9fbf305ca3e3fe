//! The transports: how clients reach a shard. Each listener accepts or receives
//! on the shard's own SO_REUSEPORT sockets and calls the shard's serving API:
//! the gate first (`Shard::gate`, `Shard::stream_accepts`), then the first pass
//! and, on a miss, the resolve (`crate::shard`'s `serve`).
//!
//! - [`udp`]: client datagrams, on the io loops of [`crate::io`] (recvmmsg batches
//!   on epoll, a multishot receive on io_uring);
//! - [`accept`]: the one accept loop of every stream listener (TCP, DoT, DoH):
//!   the bounds a connection meets before anything is read, then its transport;
//! - [`tcp`]: DNS over TCP (RFC 7766), pipelined; it also serves DoT sessions;
//! - [`tls`]: the TLS handshake of the encrypted listeners, then [`dot`] (RFC
//!   7858) or [`doh`] (RFC 8484, hyper's HTTP/2 and HTTP/1.1 servers);
//! - [`reply_bytes`]: the process-wide budget of queued stream replies.
//!
//! A shard starts its listeners through [`Listeners`] (the shard imports nothing
//! from here), and they end when the shard's shutdown signal fires.

mod accept;
mod doh;
mod dot;
mod reply_bytes;
mod tcp;
mod tls;
mod udp;

use crate::io::Backend;
use crate::shard::{ClientSockets, ListenerTasks, Shard, StartListeners};
use crate::transport::Transport;
use std::rc::Rc;

/// The listeners of every transport, as a shard starts them.
pub(crate) struct Listeners;

impl StartListeners for Listeners {
    fn spawn<B: Backend>(shard: &Rc<Shard<B>>, sockets: ClientSockets<B>) -> ListenerTasks {
        let receivers = shard.udp_receivers();
        let mut udp_tasks = Vec::new();
        for sock in sockets.udp {
            udp_tasks.push(tokio::task::spawn_local(udp::serve_udp(
                Rc::clone(shard),
                Rc::new(sock),
                receivers,
            )));
        }
        let mut tasks = Vec::new();
        for listener in sockets.tcp {
            tasks.push(tokio::task::spawn_local(tcp::accept_loop(
                Rc::clone(shard),
                listener,
            )));
        }
        for (listeners, transport) in [(sockets.dot, Transport::Dot), (sockets.doh, Transport::Doh)]
        {
            for listener in listeners {
                tasks.push(tokio::task::spawn_local(tls::accept_loop(
                    Rc::clone(shard),
                    listener,
                    transport,
                )));
            }
        }
        ListenerTasks {
            udp: udp_tasks,
            streams: tasks,
        }
    }
}
