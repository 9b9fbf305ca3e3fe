//! The io_uring floor: `loadtest responder --io uring`, the responder of
//! [`crate::responder`] built the way issue 17 asks a tierdns shard to be, so
//! peers.sh has io_uring's own physical reference beside the `recvmmsg` floor.
//!
//! One ring on the serving thread, made with `IORING_SETUP_SINGLE_ISSUER |
//! IORING_SETUP_DEFER_TASKRUN` (completions are posted only when this thread enters
//! the kernel); one multishot `recvmsg` (`IORING_RECV_MULTISHOT`) into a ring of
//! provided buffers (`IORING_REGISTER_PBUF_RING`); a `SendMsg` SQE per reply; and
//! one `io_uring_enter` per turn that submits the replies queued by the last turn
//! and waits for the next completion (at most 100 ms, to see the stop switch and
//! the end of the run). The answers are [`crate::responder`]'s, byte for byte.
//!
//! Invariants and bounds:
//! - [`BUFFERS`] receive buffers of [`BUFFER_SIZE`] bytes. When all are taken the
//!   kernel ends the receive (`ENOBUFS`) and datagrams wait in the socket's queue;
//!   buffers go back at the end of each turn and the receive is re-armed there.
//! - [`SEND_SLOTS`] replies in flight; past them a reply goes out by `sendto` at once.
//! - Nothing the kernel points at (buffers, the receive header, send slots) is freed
//!   before the kernel is done with it: at the end every operation on the socket is
//!   cancelled and awaited (at most a second) and the buffer group unregistered;
//!   if that fails they are leaked instead.
//! - A kernel that refuses any of it (no io_uring, `kernel.io_uring_disabled`,
//!   seccomp, older than Linux 6.1) gives an `io::ErrorKind::Unsupported` error that
//!   says what was refused; nothing is left behind.

#![allow(unsafe_code)]

use crate::dns::{self, AnswerSpec};
use io_uring::{cqueue, opcode, types, IoUring};
use std::alloc::{self, Layout};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Provided receive buffers (a power of two, as the kernel wants).
pub const BUFFERS: u16 = 256;
/// The kernel's `io_uring_recvmsg_out` header at the start of each received buffer.
const RECVMSG_OUT: usize = 16;
/// Room for the sender's address (IPv4 or IPv6).
const NAME_LEN: usize = size_of::<libc::sockaddr_in6>();
/// Bytes per receive buffer: header, address, and a datagram as large as the
/// `recvmmsg` floor takes ([`crate::mmsg::RECV_SIZE`]).
pub const BUFFER_SIZE: usize = RECVMSG_OUT + NAME_LEN + crate::mmsg::RECV_SIZE;
/// Replies submitted and not yet completed.
pub const SEND_SLOTS: usize = 256;
/// Buffer group of the receive buffers.
const GROUP: u16 = 0;
/// `user_data` of the multishot receive; sends carry `SEND | slot`.
const RECV: u64 = 1 << 62;
const SEND: u64 = 1 << 63;
/// `user_data` of the cancel at the end.
const CANCEL: u64 = 1 << 61;
/// Longest wait of one turn.
const TURN_WAIT: Duration = Duration::from_millis(100);

fn unsupported(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("io_uring unavailable: {what}: {e}"),
    )
}

/// One entry of the kernel's provided-buffer ring (`struct io_uring_buf`). The
/// ring's tail overlays `resv` of entry 0, so entries are only written field by
/// field through raw pointers, never through references.
#[repr(C)]
struct RawBuf {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

/// The provided buffers and the shared array of their addresses: raw allocations,
/// since the kernel writes into a buffer it has taken while this side holds no
/// reference to it. A buffer is read only between the completion that hands it
/// over and [`BufRing::give`].
struct BufRing {
    /// Page-aligned array of `BUFFERS` entries, shared with the kernel.
    entries: *mut RawBuf,
    /// `BUFFERS` buffers of `BUFFER_SIZE` bytes.
    data: *mut u8,
    /// Next tail to publish.
    tail: u16,
    /// Leaked on purpose (the kernel could not be quiesced): never freed.
    leaked: bool,
}

impl BufRing {
    fn entries_layout() -> Layout {
        Layout::from_size_align(usize::from(BUFFERS) * size_of::<RawBuf>(), 4096)
            .expect("constant layout")
    }

    fn data_layout() -> Layout {
        Layout::from_size_align(usize::from(BUFFERS) * BUFFER_SIZE, 64).expect("constant layout")
    }

    /// Every buffer given to the kernel (published).
    fn new() -> Self {
        // SAFETY: both layouts have a non-zero size.
        let (entries, data) = unsafe {
            (
                alloc::alloc_zeroed(Self::entries_layout()).cast::<RawBuf>(),
                alloc::alloc_zeroed(Self::data_layout()),
            )
        };
        if entries.is_null() {
            alloc::handle_alloc_error(Self::entries_layout());
        }
        if data.is_null() {
            alloc::handle_alloc_error(Self::data_layout());
        }
        let mut ring = Self {
            entries,
            data,
            tail: 0,
            leaked: false,
        };
        for bid in 0..BUFFERS {
            ring.give(bid);
        }
        ring.publish();
        ring
    }

    /// The bytes of buffer `bid` (< BUFFERS), which a completion has handed over.
    fn buffer(&self, bid: u16) -> &[u8] {
        let bid = usize::from(bid & (BUFFERS - 1));
        // SAFETY: bid < BUFFERS, so the range is inside the allocation. The caller
        // reads it between the completion that handed it over and `give`, and the
        // kernel writes a buffer only once it is given back and published.
        unsafe { std::slice::from_raw_parts(self.data.add(bid * BUFFER_SIZE), BUFFER_SIZE) }
    }

    /// Hands buffer `bid` back to the kernel, seen once published.
    fn give(&mut self, bid: u16) {
        let bid = bid & (BUFFERS - 1);
        let index = usize::from(self.tail & (BUFFERS - 1));
        // SAFETY: index and bid are below BUFFERS, so both pointers stay inside their
        // allocations. The kernel reads only the entries between its head and the
        // published tail; this one is past the published tail until `publish`, and its
        // `resv` (entry 0's is the tail) is not touched.
        unsafe {
            let entry = self.entries.add(index);
            let buffer = self.data.add(usize::from(bid) * BUFFER_SIZE);
            std::ptr::addr_of_mut!((*entry).addr).write(buffer as u64);
            std::ptr::addr_of_mut!((*entry).len).write(BUFFER_SIZE as u32);
            std::ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every buffer given so far visible to the kernel.
    fn publish(&self) {
        // SAFETY: entry 0's `resv` is the ring's tail, a valid, aligned u16 for the
        // ring's life, written only by this thread, atomically with release ordering
        // so the entries written before it are seen first.
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
        // SAFETY: allocated in `new` with these layouts; the owner drops the ring only
        // once the buffer group is unregistered with nothing in flight, or marks it
        // leaked.
        unsafe {
            alloc::dealloc(self.entries.cast(), Self::entries_layout());
            alloc::dealloc(self.data, Self::data_layout());
        }
    }
}

/// A reply the kernel is sending: the header points into the slot, so slots live
/// in a boxed slice that never moves.
struct Slot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    name: [u8; NAME_LEN],
    buf: Vec<u8>,
}

fn empty_msghdr() -> libc::msghdr {
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    unsafe { std::mem::zeroed() }
}

/// The ring and everything the kernel may point into.
struct Floor {
    ring: IoUring,
    fd: RawFd,
    /// The header the multishot receive is prepared from (name room only).
    recv_hdr: Box<libc::msghdr>,
    bufs: BufRing,
    slots: Box<[Slot]>,
    free: Vec<u16>,
    /// Sends submitted and not completed.
    sending: usize,
    /// The multishot receive is armed (no final completion seen since).
    armed: bool,
    /// Taken down cleanly: nothing in flight, buffer group unregistered.
    quiet: bool,
    /// Times the receive ended (out of buffers, or an error) and was re-armed.
    ends: u64,
}

impl Floor {
    /// Builds the ring for socket `fd` on the calling thread, which must be the one
    /// that serves (SINGLE_ISSUER).
    fn new(fd: RawFd) -> io::Result<Self> {
        let cq = (usize::from(BUFFERS) + SEND_SLOTS + 64).next_power_of_two() as u32;
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(cq)
            .build((SEND_SLOTS * 2) as u32)
            .map_err(|e| {
                unsupported(
                    "io_uring_setup with SINGLE_ISSUER | DEFER_TASKRUN (Linux 6.1+, kernel.io_uring_disabled = 0)",
                    e,
                )
            })?;
        let mut probe = io_uring::Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| unsupported("io_uring probe", e))?;
        if !probe.is_supported(opcode::RecvMsgMulti::CODE)
            || !probe.is_supported(opcode::SendMsg::CODE)
        {
            return Err(unsupported("opcodes", "no recvmsg/sendmsg"));
        }
        let bufs = BufRing::new();
        // SAFETY: the entries stay allocated and in place until the group is
        // unregistered (`quiesce`) or the ring is closed: on the error below `ring`
        // is dropped before `bufs`; once built, `Floor`'s `Drop` frees `bufs` only
        // after a clean `quiesce` and leaks it otherwise.
        unsafe {
            ring.submitter()
                .register_buf_ring(bufs.entries as u64, BUFFERS, GROUP)
                .map_err(|e| unsupported("provided buffer ring (Linux 5.19+)", e))?;
        }
        let mut recv_hdr = Box::new(empty_msghdr());
        recv_hdr.msg_namelen = NAME_LEN as libc::socklen_t;
        let slots = (0..SEND_SLOTS)
            .map(|_| Slot {
                hdr: empty_msghdr(),
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                name: [0; NAME_LEN],
                buf: Vec::with_capacity(512),
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Ok(Self {
            ring,
            fd,
            recv_hdr,
            bufs,
            slots,
            free: (0..SEND_SLOTS as u16).rev().collect(),
            sending: 0,
            armed: false,
            quiet: false,
            ends: 0,
        })
    }

    /// Queues the multishot receive (submitted by the next enter).
    fn arm(&mut self) -> io::Result<()> {
        let entry = opcode::RecvMsgMulti::new(types::Fd(self.fd), &*self.recv_hdr, GROUP)
            .build()
            .user_data(RECV);
        // SAFETY: the receive header and the buffer ring stay valid until the
        // receive's final completion: freed only by `Drop`, after `quiesce` saw it.
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("submission queue full"))?;
        self.armed = true;
        Ok(())
    }

    /// One enter: submits what is queued, waits up to `wait` for a completion.
    fn enter(&mut self, wait: Duration) -> io::Result<()> {
        let ts = types::Timespec::from(wait);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::ETIME | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Handles every completion posted: sends done (answered when they succeeded)
    /// and datagrams (each answered by a queued send). Gives the buffers back and
    /// re-arms the receive if it ended. Returns the replies sent.
    fn turn(&mut self, sock: &UdpSocket, spec: &AnswerSpec<'_>) -> u64 {
        let mut answered = 0u64;
        let (_, mut sq, mut cq) = self.ring.split();
        cq.sync();
        for cqe in &mut cq {
            let (data, res, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
            if data & SEND != 0 {
                let i = (data & !SEND) as usize;
                if i < self.slots.len() {
                    self.sending = self.sending.saturating_sub(1);
                    self.free.push(i as u16);
                    answered += u64::from(res >= 0);
                }
                continue;
            }
            if data != RECV {
                continue;
            }
            if !cqueue::more(flags) {
                self.armed = false;
            }
            // No buffer: the receive ended (ENOBUFS, an error); re-armed below.
            let Some(bid) = cqueue::buffer_select(flags).filter(|b| *b < BUFFERS) else {
                continue;
            };
            let buffer = self.bufs.buffer(bid);
            let len = usize::try_from(res).unwrap_or(0).min(buffer.len());
            let Ok(msg) = types::RecvMsgOut::parse(&buffer[..len], &self.recv_hdr) else {
                self.bufs.give(bid);
                continue;
            };
            let query = msg.payload_data();
            let name = msg.name_data();
            let name_len = (msg.incoming_name_len() as usize).min(name.len());
            let question = match dns::parse_query(query) {
                Ok(q) if !msg.is_payload_truncated() => q,
                _ => {
                    self.bufs.give(bid);
                    continue;
                }
            };
            match self.free.pop() {
                Some(i) => {
                    let slot = &mut self.slots[usize::from(i)];
                    dns::build_answer(&mut slot.buf, query, &question, spec);
                    slot.name[..name_len].copy_from_slice(&name[..name_len]);
                    slot.iov = libc::iovec {
                        iov_base: slot.buf.as_mut_ptr().cast(),
                        iov_len: slot.buf.len(),
                    };
                    slot.hdr.msg_name = slot.name.as_mut_ptr().cast();
                    slot.hdr.msg_namelen = name_len as libc::socklen_t;
                    slot.hdr.msg_iov = &mut slot.iov;
                    slot.hdr.msg_iovlen = 1;
                    let entry = opcode::SendMsg::new(types::Fd(self.fd), &slot.hdr)
                        .build()
                        .user_data(SEND | u64::from(i));
                    // SAFETY: the slot's header, I/O vector, address and buffer live in
                    // a boxed slice that does not move and are not touched until this
                    // send's completion gives the slot back (or `quiesce` has seen it,
                    // or `Drop` leaks them).
                    if unsafe { sq.push(&entry) }.is_ok() {
                        self.sending += 1;
                    } else {
                        answered += u64::from(send_now(sock, &slot.buf, &name[..name_len]));
                        self.free.push(i);
                    }
                }
                None => {
                    let mut buf = Vec::new();
                    dns::build_answer(&mut buf, query, &question, spec);
                    answered += u64::from(send_now(sock, &buf, &name[..name_len]));
                }
            }
            self.bufs.give(bid);
        }
        drop(cq);
        drop(sq);
        self.bufs.publish();
        if !self.armed {
            self.ends += 1;
            // The submission queue has room for it: SEND_SLOTS sends at most, in a
            // queue of twice that.
            let _ = self.arm();
        }
        answered
    }

    /// Cancels everything on the socket and waits, at most a second, for the receive
    /// and every send to complete, then unregisters the buffer group.
    fn quiesce(&mut self) {
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(self.fd)).all())
            .build()
            .user_data(CANCEL);
        // SAFETY: a cancel points at no memory.
        if unsafe { self.ring.submission().push(&cancel) }.is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while (self.armed || self.sending > 0) && Instant::now() < deadline {
            if self.enter(Duration::from_millis(50)).is_err() {
                return;
            }
            for cqe in self.ring.completion() {
                let data = cqe.user_data();
                if data == RECV && !cqueue::more(cqe.flags()) {
                    self.armed = false;
                } else if data & SEND != 0 {
                    self.sending = self.sending.saturating_sub(1);
                }
            }
        }
        if !self.armed && self.sending == 0 {
            self.quiet = self.ring.submitter().unregister_buf_ring(GROUP).is_ok();
        }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        if !self.quiet {
            // The kernel may still write into the buffers or read a send header:
            // leak them rather than free memory it points at.
            std::mem::forget(std::mem::take(&mut self.slots));
            std::mem::forget(std::mem::replace(
                &mut self.recv_hdr,
                Box::new(empty_msghdr()),
            ));
            self.bufs.leaked = true;
        }
    }
}

/// Sends `reply` to the raw socket address `name` at once (no slot free). True if
/// it went out.
fn send_now(sock: &UdpSocket, reply: &[u8], name: &[u8]) -> bool {
    peer_of(name).is_some_and(|peer| sock.send_to(reply, peer).is_ok())
}

/// The peer in a raw `sockaddr_in`/`sockaddr_in6`.
fn peer_of(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(name.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match i32::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddrV4::new(Ipv4Addr::from(ip), port).into())
        }
        libc::AF_INET6 => {
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            Some(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, 0).into())
        }
        _ => None,
    }
}

/// The ring of a responder, built on the thread that will serve with it.
pub struct Prepared {
    floor: Floor,
}

/// Builds the ring for `sock` on the calling thread; `Unsupported` with what the
/// kernel refused. Serve from the same thread ([`Prepared::serve`]).
pub fn prepare(sock: &UdpSocket) -> io::Result<Prepared> {
    Ok(Prepared {
        floor: Floor::new(sock.as_raw_fd())?,
    })
}

impl Prepared {
    /// Answers on `sock` (the socket it was prepared for) until `duration` passes or
    /// `stop` is set; returns the number of replies sent.
    pub fn serve(
        mut self,
        sock: &UdpSocket,
        duration: Duration,
        stop: &AtomicBool,
    ) -> io::Result<u64> {
        let addrs = [crate::responder::ANSWER];
        let spec = AnswerSpec {
            rcode: dns::NOERROR,
            truncated: false,
            ttl: 300,
            addresses: &addrs,
        };
        let end = Instant::now() + duration;
        let mut answered = 0u64;
        let mut result = self
            .floor
            .arm()
            .map_err(|e| unsupported("arming the multishot receive", e));
        while result.is_ok() && !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= end {
                break;
            }
            result = self.floor.enter((end - now).min(TURN_WAIT));
            answered += self.floor.turn(sock, &spec);
        }
        self.floor.quiesce();
        result.map(|()| answered)
    }
}

/// Builds the ring and answers on `sock` (see [`Prepared::serve`]).
pub fn serve(sock: &UdpSocket, duration: Duration, stop: &AtomicBool) -> io::Result<u64> {
    prepare(sock)?.serve(sock, duration, stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_addresses_read_back() {
        let mut v4 = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        v4.extend_from_slice(&5353u16.to_be_bytes());
        v4.extend_from_slice(&[127, 0, 0, 1]);
        v4.resize(16, 0);
        assert_eq!(peer_of(&v4), Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(peer_of(&v4[..3]), None, "short");
        let mut other = v4.clone();
        other[..2].copy_from_slice(&0xFFFFu16.to_ne_bytes());
        assert_eq!(peer_of(&other), None, "unknown family");
    }

    #[test]
    fn a_burst_past_the_buffers_ends_the_receive_and_every_query_is_answered() {
        let server = crate::responder::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&client)
            .set_recv_buffer_size(4 << 20)
            .unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // More queries than buffers.
        let total = usize::from(BUFFERS) + 100;
        let mut q = Vec::new();
        for id in 0..total as u16 {
            dns::build_query(&mut q, id, "burst.it.test", dns::TYPE_A, 0).unwrap();
            client.send_to(&q, server.local_addr().unwrap()).unwrap();
        }
        let mut floor = match Floor::new(server.as_raw_fd()) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("note: not tested: {e}");
                return;
            }
        };
        let addrs = [crate::responder::ANSWER];
        let spec = AnswerSpec {
            rcode: dns::NOERROR,
            truncated: false,
            ttl: 300,
            addresses: &addrs,
        };
        floor.arm().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Enter without handling completions: no buffer goes back, so the receive
        // takes all BUFFERS and then ends for want of buffers (one more completion).
        while floor.ring.completion().len() <= usize::from(BUFFERS) {
            assert!(
                Instant::now() < deadline,
                "the receive did not take every buffer"
            );
            floor.enter(Duration::from_millis(50)).unwrap();
        }
        let mut answered = 0;
        while answered < total as u64 {
            assert!(Instant::now() < deadline, "{answered} of {total} answered");
            floor.enter(Duration::from_millis(50)).unwrap();
            answered += floor.turn(&server, &spec);
        }
        assert!(
            floor.ends >= 1,
            "the receive ran out of buffers and was re-armed"
        );
        let mut seen = vec![false; total];
        let mut buf = [0u8; 512];
        for _ in 0..total {
            let n = client.recv(&mut buf).unwrap();
            let r = dns::parse_response(&buf[..n]).unwrap();
            assert_eq!(r.addresses, vec![crate::responder::ANSWER]);
            assert!(
                !std::mem::replace(&mut seen[usize::from(r.id)], true),
                "once"
            );
        }
        floor.quiesce();
        assert!(floor.quiet, "cancelled and unregistered cleanly");
    }

    #[test]
    fn every_buffer_is_published_at_start() {
        let ring = BufRing::new();
        assert_eq!(ring.tail, BUFFERS);
        assert_eq!(ring.buffer(BUFFERS - 1).len(), BUFFER_SIZE);
    }
}
