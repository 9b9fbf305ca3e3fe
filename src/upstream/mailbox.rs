//! Where the results of one flight's upstream queries land: the receive loops of
//! the upstream sockets post a reply into the mailbox of the flight that asked, and
//! wake it; no task, no channel and no timer per upstream query.
//!
//! Bound: a flight asks each upstream at most once, so a mailbox holds at most one
//! result per upstream of the flight's route.

use crate::health::{FailKind, UpstreamIdx};
use crate::io::queue::LocalQueue;
use crate::wire::reader::Header;
use std::time::Duration;

/// A successful exchange.
#[derive(Debug)]
pub(crate) struct Exchange {
    /// The reply, as received (our ID, the upstream's case).
    pub(crate) reply: Vec<u8>,
    /// Round-trip time of the attempt that produced it.
    pub(crate) rtt: Duration,
    /// It came over TCP after a truncated UDP answer.
    pub(crate) over_tcp: bool,
}

impl Exchange {
    /// A UDP answer with TC=1: to be asked again over TCP.
    pub(crate) fn truncated(&self) -> bool {
        !self.over_tcp && Header::parse(&self.reply).is_ok_and(|h| h.tc())
    }
}

/// One upstream's result, as the flight hears it.
pub(crate) type Report = (UpstreamIdx, Result<Exchange, FailKind>);

/// The results waiting for one flight, and the flight's waker.
pub(crate) type Mailbox = LocalQueue<Report>;
