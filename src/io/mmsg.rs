//! Client UDP on epoll in batches: one `recvmmsg` takes every datagram queued on the
//! socket (up to [`BATCH`]), the replies the service gives at once (cache hits)
//! leave with one `sendmmsg`. Datagrams the service keeps (misses) are answered
//! later through the socket's [`Outbox`], on every backend: one task per client
//! socket sends what queued up while the shard's other tasks ran (the misses whose
//! upstream replies came in the same turn) with one `sendmmsg`.
//!
//! Bounds: [`BATCH`] receive buffers of [`RECV_BUFFER_SIZE`] bytes per client
//! socket; a longer datagram is dropped and counted (`oversize`), like on the
//! io_uring ring. Replies a full socket will not take are sent one by one through
//! the reactor (which waits for room), so none is lost to a short `sendmmsg`.

use super::msghdr::{self, NAME_LEN};
use super::pktinfo::{self, Control};
use super::queue::LocalQueue;
use super::udp::{send_reply, DatagramService, ReplyTo, UdpDrop};
use super::{peer_of, UdpIo, MAX_QUERY};
use smallvec::SmallVec;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use tokio::io::Interest;
use tokio::sync::watch;

/// Datagrams taken per `recvmmsg`, and replies sent per `sendmmsg`.
pub(crate) const BATCH: usize = 32;
/// Bytes per receive buffer: the longest datagram served, as on the io_uring ring.
pub(crate) const RECV_BUFFER_SIZE: usize = MAX_QUERY;
/// Batches taken in a row before a receive loop lets other tasks run.
pub(crate) const BATCHES_PER_TURN: usize = 8;

/// What one `recvmmsg` fills: buffers, sender addresses, control messages (the
/// destination, on a wildcard socket) and the kernel's headers. Used for client
/// sockets here and for upstream sockets (`upstream`), with a buffer size of each
/// one's own.
pub(crate) struct RecvBatch {
    data: Box<[u8]>,
    /// Bytes per buffer: a longer datagram is flagged, not served.
    size: usize,
    names: Box<[[u8; NAME_LEN]; BATCH]>,
    controls: Box<[Control; BATCH]>,
    iovs: Box<[libc::iovec; BATCH]>,
    hdrs: Box<[libc::mmsghdr; BATCH]>,
}

impl RecvBatch {
    pub(crate) fn new() -> Self {
        Self::with_buffers(RECV_BUFFER_SIZE)
    }

    /// [`BATCH`] buffers of `size` bytes.
    pub(crate) fn with_buffers(size: usize) -> Self {
        let (iovs, hdrs) = msghdr::empty_batch();
        Self {
            data: vec![0u8; BATCH * size].into_boxed_slice(),
            size,
            names: Box::new([[0u8; NAME_LEN]; BATCH]),
            controls: Box::new([Control::default(); BATCH]),
            iovs,
            hdrs,
        }
    }

    /// Receives up to [`BATCH`] datagrams without waiting.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let size = self.size;
        for (i, (((iov, name), control), hdr)) in self
            .iovs
            .iter_mut()
            .zip(self.names.iter_mut())
            .zip(self.controls.iter_mut())
            .zip(self.hdrs.iter_mut())
            .enumerate()
        {
            msghdr::point(
                &mut hdr.msg_hdr,
                iov,
                (self.data[i * size..].as_mut_ptr(), size),
                (name.as_mut_ptr().cast(), NAME_LEN as libc::socklen_t),
            );
            hdr.msg_hdr.msg_control = control.0.as_mut_ptr().cast();
            hdr.msg_hdr.msg_controllen = pktinfo::CONTROL_LEN as _;
            hdr.msg_len = 0;
        }
        // SAFETY: every header points at live buffers of the lengths it states
        // (`data`, `names`, `controls`, `iovs` are owned by `self` and not moved
        // during the call); the kernel writes at most those lengths and BATCH
        // headers.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Datagram `i` of the last receive: its bytes, sender and destination (where
    /// reported), or why it is not served.
    pub(crate) fn datagram(&self, i: usize) -> Result<(&[u8], ReplyTo), UdpDrop> {
        let bytes = self.bytes(i)?;
        let hdr = &self.hdrs[i].msg_hdr;
        let name_len = (hdr.msg_namelen as usize).min(NAME_LEN);
        let peer = peer_of(&self.names[i][..name_len]).ok_or(UdpDrop::NoAddress)?;
        // A size_t with glibc, a socklen_t with musl.
        #[allow(clippy::unnecessary_cast)]
        let control_len = (hdr.msg_controllen as usize).min(pktinfo::CONTROL_LEN);
        let local = match control_len {
            0 => None,
            n => pktinfo::local_of(&self.controls[i].0[..n]),
        };
        Ok((bytes, ReplyTo { peer, local }))
    }

    /// The bytes of datagram `i` of the last receive (`i` below what it returned),
    /// or `Oversize` if it did not fit its buffer.
    pub(crate) fn bytes(&self, i: usize) -> Result<&[u8], UdpDrop> {
        let hdr = &self.hdrs[i];
        if hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return Err(UdpDrop::Oversize);
        }
        let len = (hdr.msg_len as usize).min(self.size);
        let start = i * self.size;
        Ok(&self.data[start..start + len])
    }
}

/// For `try_io` around a [`RecvBatch::recv`]: a short batch took everything queued,
/// so it is reported as WouldBlock (its count kept in `short`), which clears the
/// socket's readiness: the loop then waits for the next datagram instead of asking
/// the socket once more only to hear EAGAIN. (Tokio clears readiness only as of the
/// event it saw before the call; a datagram that comes later raises a new one.)
pub(crate) fn short_is_drained(
    received: io::Result<usize>,
    short: &mut Option<usize>,
) -> io::Result<usize> {
    match received {
        Ok(n) if n < BATCH => {
            *short = Some(n);
            Err(io::ErrorKind::WouldBlock.into())
        }
        other => other,
    }
}

/// Replies waiting for the batch's `sendmmsg`.
struct SendBatch {
    replies: Vec<(Vec<u8>, ReplyTo)>,
    addrs: Box<[socket2::SockAddr]>,
    controls: Box<[Control; BATCH]>,
    iovs: Box<[libc::iovec; BATCH]>,
    hdrs: Box<[libc::mmsghdr; BATCH]>,
}

impl SendBatch {
    fn new() -> Self {
        let any = socket2::SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
        let (iovs, hdrs) = msghdr::empty_batch();
        Self {
            replies: Vec::with_capacity(BATCH),
            addrs: vec![any; BATCH].into_boxed_slice(),
            controls: Box::new([Control::default(); BATCH]),
            iovs,
            hdrs,
        }
    }

    /// Sends `replies[from..]` with one call; how many the socket took.
    fn send(&mut self, fd: RawFd, from: usize) -> io::Result<usize> {
        let todo = &mut self.replies[from..];
        for (i, (reply, to)) in todo.iter_mut().enumerate() {
            self.addrs[i] = socket2::SockAddr::from(to.peer);
            let addr = &self.addrs[i];
            let hdr = &mut self.hdrs[i].msg_hdr;
            msghdr::point(
                hdr,
                &mut self.iovs[i],
                (reply.as_mut_ptr(), reply.len()),
                (addr.as_ptr() as *mut libc::c_void, addr.len()),
            );
            if let Some(local) = to.local {
                let control = &mut self.controls[i];
                hdr.msg_controllen = control.write(local) as _;
                hdr.msg_control = control.0.as_mut_ptr().cast();
            }
        }
        // SAFETY: the first `todo.len()` (≤ BATCH) headers point at the replies,
        // addresses and control messages just filled in, all alive and unmoved
        // until the call returns.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                todo.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Serves one client socket until its end marker (see [`super::release_udp`]) or
/// until `stop` changes: every queued datagram in one `recvmmsg`, the replies the
/// service gives at once in one `sendmmsg`.
pub(crate) async fn serve<S: DatagramService>(
    sock: &tokio::net::UdpSocket,
    service: &S,
    mut stop: watch::Receiver<bool>,
) {
    let watch = stop.clone();
    let stop = stop.changed();
    tokio::pin!(stop);
    let fd = sock.as_raw_fd();
    let mut rx = RecvBatch::new();
    let mut tx = SendBatch::new();
    // Whether to wait for readiness before the next turn (not after a turn cut
    // short while datagrams were still coming).
    let mut wait = true;
    loop {
        if wait {
            let ready = tokio::select! {
                biased;
                r = sock.readable() => r,
                _ = &mut stop => return,
            };
            if let Err(e) = ready {
                tracing::error!(error = %e, "client socket: waiting to read failed");
                return;
            }
        }
        wait = true;
        for turn in 0.. {
            if turn == BATCHES_PER_TURN {
                wait = false;
                break;
            }
            let mut short = None;
            let n = match sock.try_io(Interest::READABLE, || {
                short_is_drained(rx.recv(fd), &mut short)
            }) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => match short.take() {
                    Some(n) => n,
                    None => break,
                },
                Err(e) => {
                    // Readiness stays set after an error: pace the retry.
                    tracing::debug!(error = %e, "client receive error");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    wait = false;
                    break;
                }
            };
            let mut ended = false;
            for i in 0..n {
                match rx.datagram(i) {
                    Ok((packet, _)) if service.is_end(packet) => ended = true,
                    Ok((packet, from)) => {
                        if let Some(reply) = service.datagram(packet, from) {
                            tx.replies.push((reply, from));
                        }
                    }
                    Err(why) => service.dropped(why),
                }
            }
            flush(sock, service, &mut tx).await;
            if ended {
                // Released: everything queued before the marker is answered.
                return;
            }
            if n < BATCH {
                break;
            }
        }
        if !wait {
            // Still busy: let the shard's other tasks run (readiness futures use no
            // cooperative budget here, so nothing else would make this loop yield).
            tokio::task::yield_now().await;
            if watch.has_changed().unwrap_or(true) {
                return;
            }
        }
    }
}

/// Sends the batch's replies: one `sendmmsg` for as many as the socket takes, the
/// rest one by one through the backend.
async fn flush<U: UdpIo, S: DatagramService>(sock: &U, service: &S, tx: &mut SendBatch) {
    let fd = sock.raw_fd();
    let mut sent = 0;
    while sent < tx.replies.len() {
        match tx.send(fd, sent) {
            Ok(n) if n > 0 => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(_) | Err(_) => break,
        }
    }
    let mut rest = tx.replies.drain(..);
    for (reply, _) in rest.by_ref().take(sent) {
        service.pool().put(reply);
    }
    // Whatever the kernel refused (full socket buffer, or an error for one
    // destination): each goes on its own, waiting for room, or is counted lost.
    let rest: SmallVec<[(Vec<u8>, ReplyTo); BATCH]> = rest.collect();
    for (reply, to) in rest {
        if send_reply(sock, service.pool(), reply, to).await.is_err() {
            service.dropped(UdpDrop::SendError);
        }
    }
}

/// Replies that leave after their datagram's turn (misses), queued for one client
/// socket; `T` is what each holds until its reply has left (the query's admission).
///
/// Bound: the queue holds one entry per query admitted and answered but not yet
/// sent, so it is bounded by the admissions (`max_client_in_flight`).
pub(crate) type Outbox<T> = LocalQueue<(Vec<u8>, ReplyTo, T)>;

/// Sends what `outbox` holds, forever (the task ends with its runtime): woken by
/// the first reply queued, it runs after the tasks woken before it (those of the
/// same turn), so their replies leave together, [`BATCH`] per `sendmmsg`. What
/// each entry holds is dropped once its reply has left (or was lost, counted).
pub(crate) async fn send_queued<U: UdpIo, S: DatagramService, T>(
    sock: Rc<U>,
    service: Rc<S>,
    outbox: Rc<Outbox<T>>,
) {
    let mut tx = SendBatch::new();
    loop {
        outbox.ready().await;
        let mut held: SmallVec<[T; BATCH]> = SmallVec::new();
        while held.len() < BATCH {
            let Some((reply, to, h)) = outbox.pop() else {
                break;
            };
            tx.replies.push((reply, to));
            held.push(h);
        }
        flush(&*sock, &*service, &mut tx).await;
        drop(held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::Duration;

    fn pair() -> (std::net::UdpSocket, std::net::UdpSocket) {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&server, &client] {
            socket2::SockRef::from(s)
                .set_recv_buffer_size(4 << 20)
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        client.connect(server.local_addr().unwrap()).unwrap();
        (server, client)
    }

    #[test]
    fn a_receive_takes_at_most_a_batch_and_flags_oversize_datagrams() {
        let (server, client) = pair();
        let total = BATCH + 8;
        for i in 0..total as u32 {
            client.send(&i.to_be_bytes()).unwrap();
        }
        client.send(&[1u8; RECV_BUFFER_SIZE + 1]).unwrap();
        let mut rx = RecvBatch::new();
        let fd = server.as_raw_fd();
        assert_eq!(rx.recv(fd).unwrap(), BATCH, "a full batch, no more");
        for i in 0..BATCH {
            let (bytes, from) = rx.datagram(i).unwrap();
            assert_eq!(bytes, (i as u32).to_be_bytes());
            assert_eq!(from, ReplyTo::peer(client.local_addr().unwrap()));
        }
        assert_eq!(rx.recv(fd).unwrap(), 9, "the rest, and the long one");
        for i in 0..8 {
            assert_eq!(
                rx.datagram(i).unwrap().0,
                ((BATCH + i) as u32).to_be_bytes()
            );
        }
        assert_eq!(rx.datagram(8).unwrap_err(), UdpDrop::Oversize);
        let empty = rx.recv(fd).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock, "never waits");
    }

    #[test]
    fn a_short_batch_clears_readiness_and_the_next_datagram_raises_it_again() {
        crate::test_support::local(async {
            let (server, client) = pair();
            server.set_nonblocking(true).unwrap();
            let server = tokio::net::UdpSocket::from_std(server).unwrap();
            let fd = server.as_raw_fd();
            let mut rx = RecvBatch::new();
            for round in 0..50u32 {
                client.send(&round.to_be_bytes()).unwrap();
                tokio::time::timeout(Duration::from_secs(2), server.readable())
                    .await
                    .unwrap_or_else(|_| panic!("round {round}: readiness came"))
                    .unwrap();
                let mut short = None;
                let got = server.try_io(Interest::READABLE, || {
                    short_is_drained(rx.recv(fd), &mut short)
                });
                assert_eq!(got.unwrap_err().kind(), io::ErrorKind::WouldBlock);
                assert_eq!(short, Some(1), "round {round}: the datagram was taken");
                assert_eq!(rx.bytes(0).unwrap(), round.to_be_bytes());
            }
        });
    }

    struct Sink(super::super::buffers::BufferPool, Cell<usize>);

    impl DatagramService for Sink {
        fn datagram(&self, _: &[u8], _: ReplyTo) -> Option<Vec<u8>> {
            None
        }
        fn dropped(&self, _: UdpDrop) {
            self.1.set(self.1.get() + 1);
        }
        fn pool(&self) -> &super::super::buffers::BufferPool {
            &self.0
        }
        fn is_end(&self, _: &[u8]) -> bool {
            false
        }
    }

    /// Counts its drops: what an outbox entry holds until its reply has left.
    struct Held(Rc<Cell<usize>>);

    impl Drop for Held {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    #[test]
    fn queued_replies_leave_in_order_and_release_what_they_hold() {
        crate::test_support::local(async {
            let (server, client) = pair();
            server.set_nonblocking(true).unwrap();
            let server = Rc::new(tokio::net::UdpSocket::from_std(server).unwrap());
            let sink = Rc::new(Sink(
                super::super::buffers::BufferPool::new(8, 0),
                Cell::new(0),
            ));
            let outbox = Outbox::new();
            tokio::task::spawn_local(send_queued(
                Rc::clone(&server),
                Rc::clone(&sink),
                Rc::clone(&outbox),
            ));
            let released = Rc::new(Cell::new(0));
            let peer = ReplyTo::peer(client.local_addr().unwrap());
            // More than a batch, queued in one turn.
            let n = BATCH as u32 + 9;
            for i in 0..n {
                outbox.push((i.to_be_bytes().to_vec(), peer, Held(Rc::clone(&released))));
            }
            assert_eq!(released.get(), 0, "held until sent");
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert_eq!(released.get(), n as usize, "released once sent");
            assert_eq!(outbox.len(), 0);
            let mut got = [0u8; 8];
            for i in 0..n {
                let len = client.recv(&mut got).unwrap();
                assert_eq!(&got[..len], i.to_be_bytes(), "in the order queued");
            }
            // The task waits for more, and sends a later one too.
            outbox.push((b"late".to_vec(), peer, Held(Rc::clone(&released))));
            tokio::task::yield_now().await;
            let len = client.recv(&mut got).unwrap();
            assert_eq!(&got[..len], b"late");
            assert_eq!(sink.1.get(), 0, "nothing lost");
        });
    }

    #[test]
    fn one_send_carries_a_batch_in_order() {
        let (server, client) = pair();
        let peer = ReplyTo::peer(client.local_addr().unwrap());
        let mut tx = SendBatch::new();
        for i in 0..BATCH as u32 {
            tx.replies.push((i.to_be_bytes().to_vec(), peer));
        }
        assert_eq!(tx.send(server.as_raw_fd(), 0).unwrap(), BATCH);
        // From an offset: only the rest.
        assert_eq!(tx.send(server.as_raw_fd(), BATCH - 2).unwrap(), 2);
        let mut got = [0u8; 8];
        for i in (0..BATCH as u32).chain([BATCH as u32 - 2, BATCH as u32 - 1]) {
            let n = client.recv(&mut got).unwrap();
            assert_eq!(&got[..n], i.to_be_bytes());
        }
    }

    /// On a wildcard socket each reply of one batch leaves from its own address,
    /// and one without an address from the route's choice.
    #[test]
    fn each_reply_of_a_batch_leaves_from_its_own_address() {
        let server = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let peer = client.local_addr().unwrap();
        let mut tx = SendBatch::new();
        let from = |ip: [u8; 4]| ReplyTo {
            peer,
            local: Some(ip.into()),
        };
        tx.replies.push((b"2".to_vec(), from([127, 0, 0, 2])));
        tx.replies.push((b"1".to_vec(), ReplyTo::peer(peer)));
        tx.replies.push((b"3".to_vec(), from([127, 0, 0, 3])));
        assert_eq!(tx.send(server.as_raw_fd(), 0).unwrap(), 3);
        let mut got = [0u8; 8];
        for ip in [2u8, 1, 3] {
            let (n, src) = client.recv_from(&mut got).unwrap();
            assert_eq!(&got[..n], ip.to_string().as_bytes());
            assert_eq!(src, SocketAddr::from(([127, 0, 0, ip], port)));
        }
    }
}
