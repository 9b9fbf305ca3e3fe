//! Client UDP on io_uring, the way that makes io_uring cheap: one multishot
//! receive into a ring of provided buffers ([`super::bufring`]), replies pushed as
//! send SQEs and submitted together, one `io_uring_enter` per batch.
//!
//! tokio-uring has no multishot receive and no provided buffer ring, so each client
//! socket gets a small ring of its own, built with the `io-uring` crate beneath
//! tokio-uring. Its descriptor is registered with the shard's reactor: the loop
//! sleeps with everything else the shard waits for and wakes when completions are
//! posted. Only the receive and the replies the service gives at once go through
//! here; datagrams the service keeps (misses) are answered later by a direct send.
//!
//! Bounds: [`RECV_BUFFERS`] buffers of [`RECV_BUFFER_SIZE`] bytes (the kernel stops
//! the receive with `ENOBUFS` when all are taken; datagrams then wait in the socket's
//! receive queue, whose size is the bound, and the receive is re-armed once buffers
//! are back), [`SEND_SLOTS`] replies in flight (past it a reply goes out by
//! `sendto` at once, or is dropped and counted if the socket cannot take it).

use super::bufring::{BufRing, Filled, RECV_BUFFERS};
use super::msghdr::{self, NAME_LEN};
use super::pktinfo::{self, Control, CONTROL_LEN};
use super::udp::{DatagramService, ReplyTo, UdpDrop};
use super::{peer_of, UdpIo, MAX_QUERY};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

/// The kernel's `io_uring_recvmsg_out` header at the start of each received buffer.
const RECVMSG_OUT: usize = 16;
/// Bytes per receive buffer: the kernel's header, the peer's address, the control
/// messages (the destination, on a wildcard socket) and up to [`MAX_QUERY`] bytes
/// of datagram; a longer one is dropped and counted (`oversize`).
pub(crate) const RECV_BUFFER_SIZE: usize = RECVMSG_OUT + NAME_LEN + CONTROL_LEN + MAX_QUERY;
/// Replies submitted and not yet completed, per client socket.
pub(crate) const SEND_SLOTS: usize = 256;
/// Buffer group of the receive buffers.
const GROUP: u16 = 0;
/// `user_data` of the multishot receive; sends carry `SEND | slot`.
const RECV: u64 = 1 << 62;
const SEND: u64 = 1 << 63;
/// `user_data` of the cancel at shutdown.
const CANCEL: u64 = 1 << 61;
/// `user_data` of the no-op that wakes a busy loop through the reactor.
const NOP: u64 = 1 << 60;
/// Completions taken off the queue at a time.
const BATCH: usize = 64;
/// Passes over the completion queue before the loop lets other tasks run.
const PASSES_PER_TURN: usize = 8;
/// Failures in a row (receives ending in an error other than want of buffers, or
/// arming or submitting failing) before the socket falls back to per-datagram
/// receive operations.
const MAX_RECEIVE_FAILURES: u32 = 100;

/// What a completion says, copied off the queue. Made only by `Ring::reap`, and
/// neither `Clone` nor `Copy`: the buffer it names is taken from it once.
#[derive(Default)]
struct Done {
    data: u64,
    res: i32,
    flags: u32,
    /// The receive buffer handed over, until taken.
    buffer: Option<u16>,
}

impl Done {
    /// The id of the receive buffer this completion hands over, once: later calls
    /// find none.
    fn take_buffer(&mut self) -> Option<u16> {
        self.buffer.take()
    }
}

/// Why the multishot path could not start; the caller falls back to per-datagram
/// receive operations and logs this once.
#[derive(Debug)]
pub(crate) struct Unsupported(pub(crate) String);

/// A reply the kernel is sending: the message header points into the slot, so
/// slots live in a boxed slice that never moves.
struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: socket2::SockAddr,
    control: Control,
    buf: Vec<u8>,
}

/// One client socket's ring and everything the kernel may point into.
struct Ring {
    uring: AsyncFd<IoUring>,
    fd: RawFd,
    /// The recvmsg header the multishot receive was prepared from (room for the
    /// name and the control messages; no data of its own).
    recv_hdr: Box<libc::msghdr>,
    bufs: BufRing,
    slots: Box<[SendSlot]>,
    free: Vec<u16>,
    /// Sends submitted and not completed.
    sending: usize,
    /// The multishot receive is armed (no final completion seen since).
    armed: bool,
    /// Taken down cleanly: nothing in flight, buffer group unregistered.
    quiet: bool,
    /// The end marker was read (see `super::release_udp`).
    ended: bool,
}

impl Ring {
    fn new(fd: RawFd) -> Result<Self, Unsupported> {
        let entries = (SEND_SLOTS * 2).next_power_of_two() as u32;
        let cq = (usize::from(RECV_BUFFERS) + SEND_SLOTS + 64).next_power_of_two() as u32;
        let build = |coop: bool| {
            let mut b = IoUring::builder();
            b.setup_cqsize(cq).setup_single_issuer();
            if coop {
                // Completions of a running shard are delivered when it next enters the
                // kernel instead of by an interrupt per datagram (Linux 5.19+).
                b.setup_coop_taskrun();
            }
            b.build(entries)
        };
        let uring = build(true)
            .or_else(|_| build(false))
            .map_err(|e| Unsupported(format!("io_uring_setup: {e}")))?;
        let mut probe = io_uring::Probe::new();
        uring
            .submitter()
            .register_probe(&mut probe)
            .map_err(|e| Unsupported(format!("io_uring probe: {e}")))?;
        if !probe.is_supported(opcode::RecvMsgMulti::CODE)
            || !probe.is_supported(opcode::SendMsg::CODE)
        {
            return Err(Unsupported(
                "recvmsg/sendmsg not supported by io_uring".into(),
            ));
        }
        let bufs = BufRing::new(RECV_BUFFER_SIZE);
        // SAFETY: the entries stay allocated and in place until the group is
        // unregistered (`quiesce`) or the ring closed: on an error below, `uring` is
        // closed before `bufs` is dropped; once built, `Ring`'s `Drop` frees `bufs`
        // only after a clean `quiesce`, and leaks it otherwise.
        unsafe {
            uring
                .submitter()
                .register_buf_ring(bufs.entries_addr(), RECV_BUFFERS, GROUP)
                .map_err(|e| Unsupported(format!("provided buffer ring (Linux 5.19+): {e}")))?;
        }
        let mut recv_hdr = Box::new(msghdr::empty());
        recv_hdr.msg_namelen = NAME_LEN as libc::socklen_t;
        recv_hdr.msg_controllen = CONTROL_LEN as _;
        let slots = (0..SEND_SLOTS)
            .map(|_| SendSlot {
                hdr: msghdr::empty(),
                iov: msghdr::EMPTY_IOV,
                addr: socket2::SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0))),
                control: Control::default(),
                buf: Vec::new(),
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        // Readable only: the ring's descriptor also reports writable whenever the
        // submission queue has room, which would wake the shard for nothing.
        // SAFETY: the ring owns its descriptor, which stays open and the same until
        // the `AsyncFd` (which owns the ring) is dropped.
        let uring =
            unsafe { AsyncFd::register_with_interest(uring, tokio::io::Interest::READABLE) }
                .map_err(|e| Unsupported(format!("registering the ring: {e}")))?;
        Ok(Self {
            uring,
            fd,
            recv_hdr,
            bufs,
            slots,
            free: (0..SEND_SLOTS as u16).rev().collect(),
            sending: 0,
            armed: false,
            quiet: false,
            ended: false,
        })
    }

    fn ring(&mut self) -> &mut IoUring {
        self.uring.get_mut()
    }

    /// Queues an entry, submitting what is queued first if the queue is full.
    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every pointer in the entries pushed here (the receive header,
            // the send slots, the buffer ring) stays valid until its completion is
            // seen: they are freed only by `Ring`'s `Drop`, and only after `quiesce`
            // has seen every completion; a ring that could not be quiesced leaks
            // them instead.
            if unsafe { self.ring().submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.submit()?;
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        loop {
            match self.ring().submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The completion queue is full: the caller drains it next.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    fn arm(&mut self) -> io::Result<()> {
        let entry = opcode::RecvMsgMulti::new(types::Fd(self.fd), &*self.recv_hdr, GROUP)
            .build()
            .user_data(RECV);
        self.push(&entry)?;
        self.armed = true;
        Ok(())
    }

    /// Queues `buf` to `to`. Gives the buffer back if no slot is free.
    fn send(&mut self, buf: Vec<u8>, to: ReplyTo) -> Result<(), Vec<u8>> {
        let Some(i) = self.free.pop() else {
            return Err(buf);
        };
        let slot = &mut self.slots[usize::from(i)];
        slot.addr = socket2::SockAddr::from(to.peer);
        slot.buf = buf;
        msghdr::point(
            &mut slot.hdr,
            &mut slot.iov,
            (slot.buf.as_mut_ptr(), slot.buf.len()),
            (slot.addr.as_ptr() as *mut libc::c_void, slot.addr.len()),
        );
        if let Some(local) = to.local {
            slot.hdr.msg_controllen = slot.control.write(local) as _;
            slot.hdr.msg_control = slot.control.0.as_mut_ptr().cast();
        }
        let entry = opcode::SendMsg::new(types::Fd(self.fd), &slot.hdr)
            .build()
            .user_data(SEND | u64::from(i));
        match self.push(&entry) {
            Ok(()) => {
                self.sending += 1;
                Ok(())
            }
            Err(_) => {
                self.free.push(i);
                Err(std::mem::take(&mut self.slots[usize::from(i)].buf))
            }
        }
    }

    /// Copies up to [`BATCH`] completions off the queue.
    fn reap(&mut self, into: &mut [Done; BATCH]) -> usize {
        let mut cq = self.ring().completion();
        cq.sync();
        let mut n = 0;
        for (slot, cqe) in into.iter_mut().zip(&mut cq) {
            *slot = Done {
                data: cqe.user_data(),
                res: cqe.result(),
                flags: cqe.flags(),
                buffer: cqueue::buffer_select(cqe.flags()),
            };
            n += 1;
        }
        n
    }

    /// Cancels the receive and waits, at most a second, for it and every send to
    /// complete, so nothing the kernel points at is freed under it. Sends are let
    /// finish (replies to datagrams already read) for up to half of that, then
    /// cancelled too.
    fn quiesce(&mut self) {
        let cancel =
            |what: types::CancelBuilder| opcode::AsyncCancel2::new(what).build().user_data(CANCEL);
        if self.armed
            && self
                .push(&cancel(types::CancelBuilder::user_data(RECV)))
                .is_err()
        {
            return;
        }
        let start = Instant::now();
        let mut sends_cancelled = false;
        let tick = types::Timespec::new().nsec(50_000_000);
        let args = types::SubmitArgs::new().timespec(&tick);
        let mut cqes = std::array::from_fn(|_| Done::default());
        while (self.armed || self.sending > 0) && start.elapsed() < Duration::from_secs(1) {
            if !sends_cancelled && start.elapsed() >= Duration::from_millis(500) {
                sends_cancelled = true;
                let all = types::CancelBuilder::fd(types::Fd(self.fd)).all();
                if self.push(&cancel(all)).is_err() {
                    return;
                }
            }
            match self.ring().submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ETIME)) => {}
                Err(_) => return,
            }
            let n = self.reap(&mut cqes);
            for cqe in &cqes[..n] {
                if cqe.data == RECV && !cqueue::more(cqe.flags) {
                    self.armed = false;
                } else if cqe.data & SEND != 0 {
                    self.sending -= 1;
                }
            }
        }
        if !self.armed && self.sending == 0 {
            self.quiet = self.ring().submitter().unregister_buf_ring(GROUP).is_ok();
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if !self.quiet {
            // The kernel may still write into the buffers or read a send header:
            // leak them rather than free memory it points at. Only reachable if the
            // ring could not be quiesced within its bound (at shutdown or fallback).
            tracing::warn!("client io_uring not quiet at shutdown; leaking its buffers");
            std::mem::forget(std::mem::take(&mut self.slots));
            std::mem::forget(std::mem::replace(
                &mut self.recv_hdr,
                Box::new(msghdr::empty()),
            ));
            self.bufs.leaked = true;
        }
    }
}

/// Serves one client socket through its own ring until its end marker (see
/// [`super::release_udp`]) or until `stop` changes. Returns
/// `Err(Unsupported)` if the kernel lacks what it needs, or if receiving (or arming,
/// or submitting) keeps failing; the ring is taken down first, so the caller can
/// serve the socket another way.
pub(crate) async fn serve<U: UdpIo, S: DatagramService>(
    sock: &U,
    service: &S,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Unsupported> {
    let mut ring = Ring::new(sock.raw_fd())?;
    if let Err(e) = ring.arm().and_then(|()| ring.submit()) {
        ring.quiesce();
        return Err(Unsupported(format!("arming the multishot receive: {e}")));
    }
    let watch = stop.clone();
    let stop = stop.changed();
    tokio::pin!(stop);
    let mut cqes: [Done; BATCH] = std::array::from_fn(|_| Done::default());
    // Receives that ended in an error in a row; past the bound the socket falls
    // back to per-datagram receive operations rather than retrying forever.
    let mut failures = 0u32;
    // Whether to wait for completions before the next pass (not after a pass that
    // was cut short, or after an error that must be retried).
    let mut wait = true;
    loop {
        if wait {
            let ready = tokio::select! {
                biased;
                r = ring.uring.readable() => r,
                _ = &mut stop => break,
            };
            match ready {
                Ok(mut guard) => guard.clear_ready(),
                Err(e) => {
                    tracing::error!(error = %e, "client io_uring: waiting for completions failed");
                    break;
                }
            }
        }
        wait = true;
        let mut retry = false;
        for pass in 0.. {
            if pass == PASSES_PER_TURN {
                // Still busy: let the shard's other tasks (misses, upstream replies,
                // TCP, timers) run first (see below).
                wait = false;
                break;
            }
            let n = ring.reap(&mut cqes);
            let mut failed = 0;
            for cqe in &mut cqes[..n] {
                failed += u32::from(complete(sock, service, &mut ring, cqe));
            }
            ring.bufs.publish();
            failures = if failed > 0 {
                failures + failed
            } else if n > 0 {
                0
            } else {
                failures
            };
            if failures >= MAX_RECEIVE_FAILURES {
                ring.quiesce();
                return Err(Unsupported(format!(
                    "{failures} receives in a row failed on the socket"
                )));
            }
            if failed > 0 {
                retry = true;
                break;
            }
            if !ring.armed {
                if let Err(e) = ring.arm() {
                    tracing::error!(error = %e, "client io_uring: re-arming the receive failed");
                    failures += 1;
                    retry = true;
                    break;
                }
            }
            let queued = !ring.ring().submission().is_empty();
            if queued {
                if let Err(e) = ring.submit() {
                    tracing::error!(error = %e, "client io_uring: submit failed");
                    failures += 1;
                    retry = true;
                    break;
                }
            }
            // Sends usually complete inside the submit: take their completions now
            // rather than on a wake-up of their own.
            if n < BATCH && !queued {
                break;
            }
        }
        if retry {
            // Paced, and without waiting for a completion that may never come: the
            // receive must be re-armed (or the queue submitted) for one to arrive.
            tokio::time::sleep(Duration::from_millis(10)).await;
            wait = false;
        } else if !wait {
            // Still busy. A plain yield would keep the runtime from ever parking, and
            // tokio-uring submits its queued operations (upstream queries, TCP) only
            // when the runtime parks. So wait through the reactor instead: a no-op's
            // completion makes the ring readable again, and the loop resumes right
            // after the park.
            let nop = opcode::Nop::new().build().user_data(NOP);
            if ring.push(&nop).and_then(|()| ring.submit()).is_ok() {
                wait = true;
            } else {
                tokio::task::yield_now().await;
            }
        }
        if ring.ended {
            // Released, and everything queued before the marker answered (its
            // sends complete in `quiesce`).
            break;
        }
        if !wait && watch.has_changed().unwrap_or(true) {
            break;
        }
    }
    ring.quiesce();
    Ok(())
}

/// Handles one completion: a datagram, a send done, or the receive ending. True if
/// the receive ended with an error (not for want of buffers).
fn complete<U: UdpIo, S: DatagramService>(
    sock: &U,
    service: &S,
    ring: &mut Ring,
    cqe: &mut Done,
) -> bool {
    let data = cqe.data;
    if data & SEND != 0 {
        let i = (data & !SEND) as usize;
        let Some(slot) = ring.slots.get_mut(i) else {
            return false;
        };
        ring.sending -= 1;
        service.pool().put(std::mem::take(&mut slot.buf));
        ring.free.push(i as u16);
        if cqe.res < 0 {
            service.dropped(UdpDrop::SendError);
        }
        return false;
    }
    if data != RECV {
        return false;
    }
    if !cqueue::more(cqe.flags) {
        ring.armed = false;
    }
    let res = cqe.res;
    let Some(bid) = cqe.take_buffer() else {
        // No buffer: the receive ended (ENOBUFS when all buffers were taken, or an
        // error); it is re-armed after this batch.
        let failed = res < 0 && res != -libc::ENOBUFS && res != -libc::ECANCELED;
        if failed {
            tracing::debug!(error = %io::Error::from_raw_os_error(-res), "client receive error");
        }
        return failed;
    };
    // Not one of ours: never handed out, so never given back.
    let Some(filled) = ring.bufs.filled(bid) else {
        return false;
    };
    let len = usize::try_from(res).unwrap_or(0);
    handle(sock, service, ring, &filled, len);
    ring.bufs.give(filled);
    false
}

/// Serves one received datagram: the service's reply, if any, is queued on the ring.
fn handle<U: UdpIo, S: DatagramService>(
    sock: &U,
    service: &S,
    ring: &mut Ring,
    filled: &Filled,
    len: usize,
) {
    let buffer = ring.bufs.buffer(filled);
    let Ok(msg) = types::RecvMsgOut::parse(&buffer[..len.min(buffer.len())], &ring.recv_hdr) else {
        service.dropped(UdpDrop::NoAddress);
        return;
    };
    if msg.is_payload_truncated() {
        service.dropped(UdpDrop::Oversize);
        return;
    }
    if service.is_end(msg.payload_data()) {
        ring.ended = true;
        return;
    }
    let Some(peer) = peer_of(msg.name_data()) else {
        service.dropped(UdpDrop::NoAddress);
        return;
    };
    let to = ReplyTo {
        peer,
        local: pktinfo::local_of(msg.control_data()),
    };
    let Some(reply) = service.datagram(msg.payload_data(), to) else {
        return;
    };
    if let Err(reply) = ring.send(reply, to) {
        // Every slot is busy: send it now, or count it lost.
        if sock.try_send_to(&reply, to).is_err() {
            service.dropped(UdpDrop::SendError);
        }
        service.pool().put(reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap()
    }

    /// Waits for completions (a test may block its runtime).
    fn wait(ring: &mut Ring, cqes: &mut [Done; BATCH]) -> usize {
        ring.ring().submit_and_wait(1).unwrap();
        ring.reap(cqes)
    }

    #[test]
    fn a_burst_past_the_buffers_ends_the_receive_and_re_arming_takes_the_rest() {
        runtime().block_on(async {
            let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket2::SockRef::from(&server)
                .set_recv_buffer_size(8 << 20)
                .unwrap();
            let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            client.connect(server.local_addr().unwrap()).unwrap();
            // More datagrams than buffers, queued before the receive is armed, then
            // one longer than a buffer.
            let total = usize::from(RECV_BUFFERS) + 100;
            for i in 0..total as u32 {
                client.send(&i.to_be_bytes()).unwrap();
            }
            client.send(&[7u8; RECV_BUFFER_SIZE]).unwrap();
            let mut ring = match Ring::new(std::os::fd::AsRawFd::as_raw_fd(&server)) {
                Ok(r) => r,
                Err(Unsupported(why)) => {
                    eprintln!("note: no multishot io_uring here ({why}); not tested");
                    return;
                }
            };
            ring.arm().unwrap();
            ring.submit().unwrap();
            let mut cqes: [Done; BATCH] = std::array::from_fn(|_| Done::default());
            let (mut seen, mut held) = (vec![0u32; total], Vec::new());
            let (mut ends, mut oversize) = (0, 0);
            let deadline = Instant::now() + Duration::from_secs(10);
            while seen.contains(&0) || oversize == 0 {
                assert!(Instant::now() < deadline, "burst not received in time");
                let n = wait(&mut ring, &mut cqes);
                for cqe in &mut cqes[..n] {
                    assert_eq!(cqe.data, RECV);
                    if !cqueue::more(cqe.flags) {
                        ring.armed = false;
                    }
                    let Some(bid) = cqe.take_buffer() else {
                        assert_eq!(
                            cqe.res,
                            -libc::ENOBUFS,
                            "the receive ends for want of buffers"
                        );
                        ends += 1;
                        continue;
                    };
                    assert!(cqe.take_buffer().is_none(), "a buffer is taken once");
                    let filled = ring.bufs.filled(bid).unwrap();
                    let buf = ring.bufs.buffer(&filled);
                    let msg =
                        types::RecvMsgOut::parse(&buf[..cqe.res as usize], &ring.recv_hdr).unwrap();
                    assert_eq!(peer_of(msg.name_data()), client.local_addr().ok());
                    if msg.is_payload_truncated() {
                        oversize += 1;
                    } else {
                        let i = u32::from_be_bytes(msg.payload_data().try_into().unwrap());
                        seen[i as usize] += 1;
                    }
                    held.push(filled);
                }
                // Buffers go back only once the receive has ended: all of them were
                // taken, so the burst must have outgrown them.
                if !ring.armed {
                    for filled in held.drain(..) {
                        ring.bufs.give(filled);
                    }
                    ring.bufs.publish();
                    ring.arm().unwrap();
                    ring.submit().unwrap();
                }
            }
            assert!(ends >= 1, "the receive ended with ENOBUFS at the bound");
            assert!(seen.iter().all(|&n| n == 1), "every datagram exactly once");
            assert_eq!(oversize, 1, "the long datagram is flagged truncated");
            ring.quiesce();
            assert!(ring.quiet, "cancelled and unregistered cleanly");
        });
    }

    #[test]
    fn sends_past_the_slots_are_handed_back_and_slots_return_on_completion() {
        runtime().block_on(async {
            let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket2::SockRef::from(&client)
                .set_recv_buffer_size(8 << 20)
                .unwrap();
            let peer = ReplyTo::peer(client.local_addr().unwrap());
            let Ok(mut ring) = Ring::new(std::os::fd::AsRawFd::as_raw_fd(&server)) else {
                eprintln!("note: no multishot io_uring here; not tested");
                return;
            };
            for i in 0..SEND_SLOTS as u32 {
                assert!(ring.send(i.to_be_bytes().to_vec(), peer).is_ok());
            }
            let back = ring.send(b"one too many".to_vec(), peer);
            assert_eq!(back.unwrap_err(), b"one too many", "no slot: handed back");
            ring.submit().unwrap();
            let mut cqes: [Done; BATCH] = std::array::from_fn(|_| Done::default());
            while ring.sending > 0 {
                let n = wait(&mut ring, &mut cqes);
                for cqe in &cqes[..n] {
                    assert!(
                        cqe.data & SEND != 0 && cqe.res == 4,
                        "a 4-byte send completed"
                    );
                    let i = (cqe.data & !SEND) as usize;
                    assert_eq!(ring.slots[i].buf, (i as u32).to_be_bytes());
                    ring.sending -= 1;
                    ring.free.push(i as u16);
                }
            }
            assert_eq!(ring.free.len(), SEND_SLOTS);
            assert!(ring.send(b"again".to_vec(), peer).is_ok(), "slots are back");
            client
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut got = [0u8; 16];
            for i in 0..SEND_SLOTS as u32 {
                let n = client.recv(&mut got).unwrap();
                assert_eq!(&got[..n], i.to_be_bytes(), "sent in order");
            }
            ring.submit().unwrap();
            ring.quiesce();
            assert!(ring.quiet);
        });
    }

    /// On a wildcard socket the multishot receive reports each datagram's
    /// destination, and a reply queued with it leaves from that address.
    #[test]
    fn on_a_wildcard_socket_a_reply_leaves_from_the_address_asked() {
        runtime().block_on(async {
            let server =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
            server.bind(&any.into()).unwrap();
            pktinfo::enable(&server, any).unwrap();
            let port = server.local_addr().unwrap().as_socket().unwrap().port();
            let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let Ok(mut ring) = Ring::new(std::os::fd::AsRawFd::as_raw_fd(&server)) else {
                eprintln!("note: no multishot io_uring here; not tested");
                return;
            };
            ring.arm().unwrap();
            ring.submit().unwrap();
            let mut cqes: [Done; BATCH] = std::array::from_fn(|_| Done::default());
            for ip in [2u8, 3] {
                let asked = SocketAddr::from(([127, 0, 0, ip], port));
                client.send_to(&[ip], asked).unwrap();
                let to = loop {
                    let n = wait(&mut ring, &mut cqes);
                    let mut got = None;
                    for cqe in &mut cqes[..n] {
                        if cqe.data & SEND != 0 {
                            // The previous round's reply.
                            ring.sending -= 1;
                            ring.free.push((cqe.data & !SEND) as u16);
                            continue;
                        }
                        let Some(bid) = cqe.take_buffer() else {
                            continue;
                        };
                        let filled = ring.bufs.filled(bid).unwrap();
                        let buf = ring.bufs.buffer(&filled);
                        let msg =
                            types::RecvMsgOut::parse(&buf[..cqe.res as usize], &ring.recv_hdr)
                                .unwrap();
                        assert_eq!(msg.payload_data(), [ip]);
                        got = Some(ReplyTo {
                            peer: peer_of(msg.name_data()).unwrap(),
                            local: pktinfo::local_of(msg.control_data()),
                        });
                        ring.bufs.give(filled);
                    }
                    ring.bufs.publish();
                    if let Some(to) = got {
                        break to;
                    }
                };
                assert_eq!(to.local, Some(asked.ip()), "the destination, reported");
                ring.send(b"r".to_vec(), to).unwrap();
                ring.submit().unwrap();
                let mut got = [0u8; 4];
                let (n, from) = client.recv_from(&mut got).unwrap();
                assert_eq!(
                    (&got[..n], from),
                    (&b"r"[..], asked),
                    "from the address asked"
                );
            }
            ring.quiesce();
            assert!(ring.quiet);
        });
    }
}
