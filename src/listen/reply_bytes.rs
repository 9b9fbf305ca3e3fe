//! The process-wide budget of stream replies queued and not yet written
//! (`limits.stream_reply_bytes`, as unbound's `stream-wait-size`).
//!
//! A TCP or DoT client that pipelines queries and reads no answers makes tierdns
//! hold its replies: in the connection's queue to its writer (at most
//! `tcp_pipeline` frames) and in the frame being written. That is bounded per
//! connection, but not across thousands of them: 256 connections per shard with 32
//! answers of 64 KiB each is half a GiB a shard. Every framed reply therefore gets
//! a [`ReplyTicket`] when it is queued: its bytes count in the process total
//! ([`crate::shard::Shared::stream_reply_bytes`], one atomic) and in its connection's entry
//! of the shard's registry, until the frame is written or dropped (the ticket goes
//! with the frame, whatever path drops it).
//!
//! Past the budget, the shard that queues a reply closes its own connections
//! holding the most ([`Registry::take_heaviest`](crate::policy::stream_conns::Registry::take_heaviest)),
//! until the total it knows of is back under the budget or none of its connections
//! holds more than an equal share of the budget (the budget divided by the
//! connections open, estimated as this shard's times the shard count). A closed
//! connection's replies are dropped as its writer fails. Across shards this is
//! approximate: a shard sees the process total but closes only its own
//! connections, so a heavy connection on another shard goes when that shard next
//! queues a reply. DoH replies are not counted here: hyper and h2 bound them per
//! stream (`max_send_buf_size`, one message) and per connection
//! (`max_concurrent_streams` = `tcp_pipeline`).

use crate::io::Backend;
use crate::metrics::TcpClose;
use crate::policy::stream_conns::ConnId;
use crate::shard::Shard;
use std::rc::Rc;
use std::sync::atomic::Ordering;

/// The bytes of one queued reply frame (or of several joined into one write),
/// counted until dropped.
pub(super) struct ReplyTicket<B: Backend> {
    shard: Rc<Shard<B>>,
    id: ConnId,
    bytes: usize,
}

impl<B: Backend> ReplyTicket<B> {
    /// Counts `bytes` of a reply queued on connection `id`; past the budget, closes
    /// this shard's heaviest connections first.
    pub(super) fn new(shard: &Rc<Shard<B>>, id: ConnId, bytes: usize) -> Self {
        shard.streams().registry().queue(id, bytes);
        let total = shard
            .shared()
            .stream_reply_bytes
            .fetch_add(bytes, Ordering::Relaxed)
            + bytes;
        let ticket = Self {
            shard: Rc::clone(shard),
            id,
            bytes,
        };
        let budget = shard.shared().config.limits.stream_reply_bytes;
        if budget > 0 && total > budget {
            shed(shard, total, budget);
        }
        ticket
    }

    /// Takes over `other`'s bytes (frames joined into one write).
    pub(super) fn absorb(&mut self, mut other: Self) {
        self.bytes += other.bytes;
        other.bytes = 0;
    }
}

impl<B: Backend> Drop for ReplyTicket<B> {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        self.shard.streams().registry().unqueue(self.id, self.bytes);
        self.shard
            .shared()
            .stream_reply_bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Closes the shard's connections holding the most queued reply bytes while the
/// process total (as last seen, less what the closed ones held) is over `budget`
/// and the heaviest holds more than an equal share of it.
fn shed<B: Backend>(shard: &Rc<Shard<B>>, mut total: usize, budget: usize) {
    let shards = shard.shared().config.shard_count().max(1);
    while total > budget {
        let open = shard.streams().registry().len().max(1);
        let share = budget / open.saturating_mul(shards);
        let heaviest = shard.streams().registry().take_heaviest(share);
        let Some((handle, held)) = heaviest else {
            return;
        };
        handle.close();
        shard.stats().tcp_closed(TcpClose::ReplyBytes);
        total = total.saturating_sub(held);
    }
}
