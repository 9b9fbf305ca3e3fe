//! A queue on one thread with one consumer that waits for it: producers push and
//! wake the consumer, which takes items in the order pushed. A `RefCell` and a
//! stored waker are the whole channel (a shard is single-threaded): the flights'
//! mailboxes of upstream results and the client sockets' outboxes of replies.
//!
//! Bound: none of its own; each user bounds what it pushes (see theirs).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

pub(crate) struct LocalQueue<T> {
    items: RefCell<VecDeque<T>>,
    waker: Cell<Option<Waker>>,
}

impl<T> LocalQueue<T> {
    pub(crate) fn new() -> Rc<Self> {
        Rc::new(Self {
            items: RefCell::new(VecDeque::new()),
            waker: Cell::new(None),
        })
    }

    /// Adds an item and wakes the consumer if it waits.
    pub(crate) fn push(&self, item: T) {
        self.items.borrow_mut().push_back(item);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// The oldest item, if any.
    pub(crate) fn pop(&self) -> Option<T> {
        self.items.borrow_mut().pop_front()
    }

    pub(crate) fn len(&self) -> usize {
        self.items.borrow().len()
    }

    /// Waits until there is an item, and takes it.
    pub(crate) async fn recv(&self) -> T {
        poll_fn(|cx| match self.pop() {
            Some(item) => Poll::Ready(item),
            None => {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// Waits until there is an item, and leaves it there.
    pub(crate) async fn ready(&self) {
        poll_fn(|cx| {
            if self.len() > 0 {
                Poll::Ready(())
            } else {
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

    #[test]
    fn a_push_wakes_the_waiting_consumer_and_items_come_in_order() {
        crate::test_support::local(async {
            let queue = LocalQueue::new();
            let producer = Rc::clone(&queue);
            let waiting = tokio::task::spawn_local(async move {
                queue.ready().await;
                let a = queue.recv().await;
                let b = queue.recv().await;
                (a, b)
            });
            tokio::task::yield_now().await;
            assert!(!waiting.is_finished(), "nothing to take yet");
            producer.push(3);
            producer.push(1);
            assert_eq!(waiting.await.unwrap(), (3, 1));
            assert_eq!(producer.len(), 0);
            assert_eq!(producer.pop(), None);
        });
    }
}
