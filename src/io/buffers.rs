//! Each shard's pool of fixed-capacity buffers.
//!
//! Receives, replies and upstream queries all borrow a `Vec<u8>` from the pool and
//! give it back when the operation returns it. The pool keeps at most `keep` free
//! buffers: under a burst it allocates more, and those are freed (not kept) once the
//! pool is full again, so memory stays bounded after the burst.

use std::cell::RefCell;

/// Capacity of every pooled buffer: the largest UDP message tierdns receives or sends.
pub(crate) const BUF_CAPACITY: usize = 4096;

/// A shard-local free list.
#[derive(Debug)]
pub(crate) struct BufferPool {
    free: RefCell<Vec<Vec<u8>>>,
    keep: usize,
}

impl BufferPool {
    /// A pool that keeps up to `keep` free buffers, `prefill` of them allocated now.
    pub(crate) fn new(keep: usize, prefill: usize) -> Self {
        let free = (0..prefill.min(keep))
            .map(|_| Vec::with_capacity(BUF_CAPACITY))
            .collect::<Vec<_>>();
        let mut list = Vec::with_capacity(keep);
        list.extend(free);
        Self {
            free: RefCell::new(list),
            keep,
        }
    }

    /// An empty buffer with at least [`BUF_CAPACITY`] bytes of capacity.
    pub(crate) fn get(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUF_CAPACITY))
    }

    /// Returns a buffer; dropped when the pool is full or the buffer is not one of ours.
    pub(crate) fn put(&self, mut buf: Vec<u8>) {
        if buf.capacity() != BUF_CAPACITY {
            return;
        }
        let mut free = self.free.borrow_mut();
        if free.len() < self.keep {
            buf.clear();
            free.push(buf);
        }
    }

    /// Free buffers held now.
    #[cfg(test)]
    pub(crate) fn free(&self) -> usize {
        self.free.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_its_bound() {
        let pool = BufferPool::new(2, 1);
        assert_eq!(pool.free(), 1);
        let bufs: Vec<_> = (0..5).map(|_| pool.get()).collect();
        assert!(bufs
            .iter()
            .all(|b| b.capacity() == BUF_CAPACITY && b.is_empty()));
        for b in bufs {
            pool.put(b);
        }
        assert_eq!(pool.free(), 2);
        pool.put(Vec::with_capacity(10));
        assert_eq!(pool.free(), 2);
    }

    #[test]
    fn returned_buffers_come_back_empty() {
        let pool = BufferPool::new(4, 0);
        let mut b = pool.get();
        b.extend_from_slice(b"abc");
        pool.put(b);
        assert!(pool.get().is_empty());
    }
}
