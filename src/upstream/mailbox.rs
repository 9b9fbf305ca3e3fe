//! Where the results of one flight's upstream queries land: the receive loops of
//! the upstream sockets post a reply into the mailbox of the flight that asked, and
//! wake it. Single-threaded (a shard's), so a `RefCell` and a stored waker are the
//! whole channel: no task, no channel and no timer per upstream query.
//!
//! Bound: a flight asks each upstream at most once, so a mailbox holds at most one
//! result per upstream of the flight's route.

use super::Exchange;
use crate::health::{FailKind, UpstreamIdx};
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// One upstream's result, as the flight hears it.
pub(crate) type Report = (UpstreamIdx, Result<Exchange, FailKind>);

/// The results waiting for one flight, and the flight's waker.
#[derive(Default)]
pub(crate) struct Mailbox {
    reports: RefCell<SmallVec<[Report; 2]>>,
    waker: Cell<Option<Waker>>,
}

impl Mailbox {
    pub(crate) fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// Leaves a result and wakes the flight if it waits.
    pub(crate) fn post(&self, report: Report) {
        self.reports.borrow_mut().push(report);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// The oldest result waiting, if any.
    pub(crate) fn take(&self) -> Option<Report> {
        let mut reports = self.reports.borrow_mut();
        (!reports.is_empty()).then(|| reports.remove(0))
    }

    /// Waits for a result.
    pub(crate) async fn recv(&self) -> Report {
        poll_fn(|cx| match self.take() {
            Some(report) => Poll::Ready(report),
            None => {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_post_wakes_the_waiting_flight_and_results_come_in_order() {
        let mailbox = Mailbox::new();
        let poster = Rc::clone(&mailbox);
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async move {
                let waiting = tokio::task::spawn_local(async move {
                    let a = mailbox.recv().await;
                    let b = mailbox.recv().await;
                    (a.0, b.0)
                });
                tokio::task::yield_now().await;
                poster.post((3, Err(FailKind::Timeout)));
                poster.post((1, Err(FailKind::Network)));
                let (a, b) = waiting.await.unwrap();
                assert_eq!((a, b), (3, 1));
            })
            .await;
    }
}
