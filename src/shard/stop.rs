//! A shard's shutdown (SIGTERM, SIGINT): what it holds is answered, nothing new is
//! taken, and during a restart the new process takes over without a lost query.
//!
//! In order, from the shutdown signal:
//! 1. Each client UDP socket is released (`crate::io::release_udp`): connected to a
//!    private peer, so the kernel hands it no more client datagrams (SO_REUSEPORT
//!    steers them to the group's other sockets: a new tierdns on the same
//!    addresses), while its receive loops keep running. The peer then sends the
//!    shard's end marker, which queues behind every datagram already there.
//! 2. The stream listeners (TCP, DoT, DoH): their accept loops end at the signal,
//!    then each is shut down, which takes it out of its SO_REUSEPORT group. A
//!    connection still in its accept queue is reset by the kernel, unless
//!    `net.ipv4.tcp_migrate_req = 1` (Linux 5.14+) moves it to another listener
//!    of the group.
//! 3. The UDP loops read and answer what is queued and end at their marker. One
//!    whose marker never comes (the queue was full when it was sent) is stopped
//!    at the deadline.
//! 4. Queries in flight (UDP misses, stream connections) are answered until the
//!    deadline: `shutdown_grace` after the signal, for all of it.

use super::Shard;
use crate::io::{release_udp, Backend, Released};
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The tasks of a shard's listeners, as `StartListeners` started them.
pub(crate) struct ListenerTasks {
    /// One per client UDP socket; ends at the socket's end marker.
    pub(crate) udp: Vec<JoinHandle<()>>,
    /// The accept loops of the stream listeners; end at the shutdown signal.
    pub(crate) streams: Vec<JoinHandle<()>>,
}

/// Runs the shutdown, once the signal has come; `closers` are duplicates of every
/// client socket, `udp_stop` the shard's stop of last resort for its UDP loops.
pub(super) async fn stop<B: Backend>(
    shard: &Rc<Shard<B>>,
    tasks: ListenerTasks,
    closers: Vec<socket2::Socket>,
    udp_stop: watch::Sender<bool>,
) {
    let deadline = Instant::now() + shard.shared.config.server.shutdown_grace;
    let receivers = shard.udp_receivers();
    let (udp, streams): (Vec<_>, Vec<_>) = closers
        .into_iter()
        .partition(|c| c.r#type().ok() == Some(socket2::Type::DGRAM));
    let released: Vec<Released> = udp
        .iter()
        .filter_map(|c| match release_udp(c, &shard.udp_end, receivers) {
            Ok(r) => Some(r),
            Err(e) => {
                // Its loops end at the deadline instead.
                tracing::warn!(shard = shard.index, error = %e, "releasing a client UDP socket failed");
                None
            }
        })
        .collect();
    // The accept loops end at the signal; an io_uring accept in flight keeps its
    // listener open, and shutting it down completes that accept.
    for t in tasks.streams {
        let _ = t.await;
    }
    for c in &streams {
        if let Err(e) = c.shutdown(std::net::Shutdown::Read) {
            tracing::debug!(error = %e, "closing a listening socket early failed");
        }
    }
    let mut stopped = false;
    for mut t in tasks.udp {
        if !stopped {
            match tokio::time::timeout_at(deadline, &mut t).await {
                Ok(_) => continue,
                Err(_) => {
                    tracing::warn!(
                        shard = shard.index,
                        "client UDP: the end marker did not come within shutdown_grace; stopping"
                    );
                    stopped = true;
                    let _ = udp_stop.send(true);
                }
            }
        }
        let _ = t.await;
    }
    if stopped {
        // Receives a stopped loop left in flight (io_uring) complete on these.
        for r in &released {
            let _ = r.mark(&shard.udp_end, receivers);
        }
    }
    while (shard.in_flight.get() > 0 || shard.streams.running() > 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
