//! Where the results of one flight's upstream queries land: the receive loops of
//! the upstream sockets post a reply into the mailbox of the flight that asked, and
//! wake it; no task, no channel and no timer per upstream query.
//!
//! Bound: a flight asks each upstream at most once, so a mailbox holds at most one
//! result per upstream of the flight's route.

use super::Exchange;
use crate::health::{FailKind, UpstreamIdx};
use crate::io::queue::LocalQueue;

/// One upstream's result, as the flight hears it.
pub(crate) type Report = (UpstreamIdx, Result<Exchange, FailKind>);

/// The results waiting for one flight, and the flight's waker.
pub(crate) type Mailbox = LocalQueue<Report>;
