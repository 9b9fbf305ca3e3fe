//! The ring of provided receive buffers of one client socket's io_uring: the shared
//! array the kernel takes buffer addresses from, and the buffers themselves.
//!
//! Both are raw allocations: the kernel writes into buffers it has taken while this
//! side holds no reference to them. A buffer is readable here only through a
//! [`Filled`] token, which only a receive completion gives ([`BufRing::filled`], at
//! most once per completion) and which [`BufRing::give`] consumes: so no buffer is
//! read while the kernel may write it.

use std::alloc::{self, Layout};
use std::sync::atomic::{AtomicU16, Ordering};

/// Provided receive buffers per client socket (a power of two, as the kernel wants).
pub(crate) const RECV_BUFFERS: u16 = 256;

/// One entry of the kernel's provided-buffer ring (`struct io_uring_buf`). The
/// ring's tail overlays `resv` of entry 0 (`struct io_uring_buf_ring`), so entries are
/// only ever written field by field through raw pointers, never as references.
#[repr(C)]
struct RawBuf {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

/// A buffer the kernel has filled and handed over: readable until given back.
/// Not `Clone`: one token per buffer handed over.
#[derive(Debug)]
pub(super) struct Filled {
    bid: u16,
}

/// The buffers and the ring of their addresses.
pub(super) struct BufRing {
    /// Page-aligned array of `RECV_BUFFERS` entries, shared with the kernel.
    entries: *mut RawBuf,
    /// `RECV_BUFFERS` buffers of `size` bytes.
    data: *mut u8,
    /// Bytes per buffer.
    size: usize,
    /// Next tail to publish.
    tail: u16,
    /// Leaked on purpose (see `Ring`'s `Drop`): never freed.
    pub(super) leaked: bool,
}

impl BufRing {
    fn entries_layout() -> Layout {
        // 16-byte entries; a page-aligned allocation, as the kernel requires.
        Layout::from_size_align(usize::from(RECV_BUFFERS) * size_of::<RawBuf>(), 4096)
            .expect("constant layout")
    }

    fn data_layout(size: usize) -> Layout {
        Layout::from_size_align(usize::from(RECV_BUFFERS) * size, 64).expect("constant layout")
    }

    /// `RECV_BUFFERS` buffers of `size` (> 0) bytes, every one given to the kernel.
    pub(super) fn new(size: usize) -> Self {
        assert!(size > 0 && u32::try_from(size).is_ok(), "buffer size");
        // SAFETY: both layouts have a non-zero size.
        let (entries, data) = unsafe {
            (
                alloc::alloc_zeroed(Self::entries_layout()).cast::<RawBuf>(),
                alloc::alloc_zeroed(Self::data_layout(size)),
            )
        };
        if entries.is_null() {
            alloc::handle_alloc_error(Self::entries_layout());
        }
        if data.is_null() {
            alloc::handle_alloc_error(Self::data_layout(size));
        }
        let mut ring = Self {
            entries,
            data,
            size,
            tail: 0,
            leaked: false,
        };
        for bid in 0..RECV_BUFFERS {
            ring.push(bid);
        }
        ring.publish();
        ring
    }

    /// The shared array's address, to register with the kernel.
    pub(super) fn entries_addr(&self) -> u64 {
        self.entries as u64
    }

    /// The token for the buffer a receive completion names (its `buffer_select`
    /// id). `bid` is taken from the caller's completion, which must not be asked
    /// again: see [`super::ring`]'s `Done::take_buffer`. None for an id that is not
    /// one of ours.
    pub(super) fn filled(&self, bid: u16) -> Option<Filled> {
        (bid < RECV_BUFFERS).then_some(Filled { bid })
    }

    /// The bytes of a filled buffer.
    pub(super) fn buffer(&self, filled: &Filled) -> &[u8] {
        // SAFETY: `filled.bid` < RECV_BUFFERS (checked when the token was made), so
        // the range is inside the allocation. The kernel handed this buffer over with
        // a completion and gets it back only through `give`, which consumes the
        // token: while the token is borrowed here, the kernel does not write it.
        unsafe {
            std::slice::from_raw_parts(
                self.data.add(usize::from(filled.bid) * self.size),
                self.size,
            )
        }
    }

    /// Hands a filled buffer back to the kernel, seen once published.
    pub(super) fn give(&mut self, filled: Filled) {
        self.push(filled.bid);
    }

    fn push(&mut self, bid: u16) {
        let bid = bid & (RECV_BUFFERS - 1);
        let index = usize::from(self.tail & (RECV_BUFFERS - 1));
        // SAFETY: `index` and `bid` are below RECV_BUFFERS, so both pointers stay
        // inside their allocations. The kernel reads only entries between its head
        // and the published tail; this one is past the published tail until
        // `publish`, and its `resv` (entry 0's is the tail) is not touched.
        unsafe {
            let buffer = self.data.add(usize::from(bid) * self.size);
            let entry = self.entries.add(index);
            std::ptr::addr_of_mut!((*entry).addr).write(buffer as u64);
            std::ptr::addr_of_mut!((*entry).len).write(self.size as u32);
            std::ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every buffer given so far visible to the kernel.
    pub(super) fn publish(&self) {
        // SAFETY: entry 0's `resv` is the ring's tail, a valid, aligned u16 for the
        // ring's life, written only by this thread, atomically and with release
        // ordering so the entries written before it are visible first.
        unsafe {
            let tail = std::ptr::addr_of_mut!((*self.entries).resv);
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        // SAFETY: allocated in `new` with these layouts. The owner drops the ring
        // only once the kernel is done with it: after the buffer group is
        // unregistered with nothing in flight (`Ring::quiesce`), or never, when it
        // could not be quiesced (`leaked`).
        unsafe {
            alloc::dealloc(self.entries.cast(), Self::entries_layout());
            alloc::dealloc(self.data, Self::data_layout(self.size));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_buffer_is_given_once_and_only_ours_have_tokens() {
        let mut ring = BufRing::new(64);
        assert_eq!(ring.tail, RECV_BUFFERS, "all given at start");
        let last = ring.filled(RECV_BUFFERS - 1).expect("ours");
        assert_eq!(ring.buffer(&last).len(), 64);
        assert!(ring.filled(RECV_BUFFERS).is_none(), "not ours: no token");
        ring.give(last);
        assert_eq!(ring.tail, RECV_BUFFERS + 1);
    }
}
