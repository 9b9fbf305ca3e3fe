//! Batched UDP: `recvmmsg` and `sendmmsg`, kernel receive timestamps, `ppoll`;
//! and the two other kernel calls the harness needs (process CPU time, signals).
//!
//! This is the only module with `unsafe`: the mmsg calls take arrays of C headers
//! that point into buffers owned here. Each batch owns its buffers, headers and control
//! space in boxes that do not move; the headers are refilled before every call.
//!
//! Receive timestamps (`SO_TIMESTAMPNS`, `CLOCK_REALTIME`) let the generator drain
//! its sockets in batches, after a sleep, and still measure each answer's latency to
//! the nanosecond the kernel queued it: batching costs no accuracy.

#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

/// Datagrams per `recvmmsg` or `sendmmsg`.
pub const BATCH: usize = 64;
/// Bytes per receive buffer (a reply to an EDNS 1232 query fits, with room).
pub const RECV_SIZE: usize = 2048;
/// Room for a sender's address (IPv4 or IPv6).
const NAME_LEN: usize = size_of::<libc::sockaddr_in6>();
/// Room for one `SCM_TIMESTAMPNS` control message (and slack).
const CTRL_LEN: usize = 64;

/// The time now on `CLOCK_REALTIME`, in nanoseconds: the clock of the kernel's
/// receive timestamps.
pub fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// CPU time of this process so far (all threads).
pub fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the
    // kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Sends signal `sig` (`libc::SIGHUP`, `libc::SIGTERM`) to process `pid`.
pub fn send_signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no such process id"))?;
    // SAFETY: kill(2) takes plain integers; a positive pid names one process (never
    // a group or every process).
    let rc = unsafe { libc::kill(pid, sig) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks the kernel to timestamp every datagram received on `sock`.
pub fn enable_rx_timestamps(sock: &socket2::Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, a pointer to an int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until one of `fds` is readable or `timeout` passes; sets `ready[i]` for
/// each readable one and returns how many are.
pub fn poll_readable(fds: &[RawFd], ready: &mut [bool], timeout: Duration) -> io::Result<usize> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `pfds` is a live array of `pfds.len()` pollfd; `ts` a valid timespec;
    // a null signal mask means "unchanged".
    let n = unsafe {
        libc::ppoll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            ready.iter_mut().for_each(|r| *r = false);
            return Ok(0);
        }
        return Err(e);
    }
    for (r, p) in ready.iter_mut().zip(&pfds) {
        *r = p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0;
    }
    Ok(n as usize)
}

/// A socket address from the bytes of a `sockaddr_in` or `sockaddr_in6`.
fn sockaddr_from_bytes(b: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes([*b.first()?, *b.get(1)?]));
    let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    match family {
        libc::AF_INET => {
            let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::from((ip, port)))
        }
        libc::AF_INET6 => {
            let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            Some(SocketAddr::from((ip, port)))
        }
        _ => None,
    }
}

fn empty_hdr() -> libc::mmsghdr {
    // SAFETY: an all-zero mmsghdr is valid (null pointers, zero lengths).
    unsafe { std::mem::zeroed() }
}

/// What one `recvmmsg` fills: buffers, sender addresses, timestamps.
pub struct RecvBatch {
    data: Box<[u8]>,
    names: Box<[[u8; NAME_LEN]]>,
    ctrl: Box<[[u8; CTRL_LEN]]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    /// Room for [`BATCH`] datagrams of [`RECV_SIZE`] bytes.
    pub fn new() -> Self {
        let iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Self {
            data: vec![0u8; BATCH * RECV_SIZE].into_boxed_slice(),
            names: vec![[0u8; NAME_LEN]; BATCH].into_boxed_slice(),
            ctrl: vec![[0u8; CTRL_LEN]; BATCH].into_boxed_slice(),
            iovs: vec![iov; BATCH].into_boxed_slice(),
            hdrs: (0..BATCH).map(|_| empty_hdr()).collect(),
        }
    }

    /// Receives up to [`BATCH`] datagrams without waiting; 0 when none is queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.data[i * RECV_SIZE..].as_mut_ptr().cast(),
                iov_len: RECV_SIZE,
            };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = self.names[i].as_mut_ptr().cast();
            h.msg_hdr.msg_namelen = NAME_LEN as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.ctrl[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = CTRL_LEN as _;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at live buffers owned by `self` (boxes that
        // are not moved during the call) of the lengths it states; the kernel writes
        // at most those lengths into at most BATCH headers.
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
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                // ICMP port unreachable from an earlier send: the peer is not there
                // (yet); nothing to read now.
                io::ErrorKind::ConnectionRefused => Ok(0),
                _ => Err(e),
            };
        }
        Ok(n as usize)
    }

    /// Bytes of datagram `i` of the last receive (cut at [`RECV_SIZE`]).
    pub fn datagram(&self, i: usize) -> &[u8] {
        let len = (self.hdrs[i].msg_len as usize).min(RECV_SIZE);
        &self.data[i * RECV_SIZE..i * RECV_SIZE + len]
    }

    /// Whether datagram `i` was longer than the buffer.
    pub fn truncated(&self, i: usize) -> bool {
        self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0
    }

    /// Sender of datagram `i` (read from the raw `sockaddr` bytes the kernel wrote).
    pub fn peer(&self, i: usize) -> Option<SocketAddr> {
        let len = (self.hdrs[i].msg_hdr.msg_namelen as usize).min(NAME_LEN);
        sockaddr_from_bytes(&self.names[i][..len])
    }

    /// The kernel's receive time of datagram `i` (`CLOCK_REALTIME` ns), when the
    /// socket has timestamps on.
    pub fn timestamp(&self, i: usize) -> Option<u64> {
        let hdr = &self.hdrs[i].msg_hdr;
        if hdr.msg_controllen == 0 {
            return None;
        }
        // SAFETY: `hdr` is the header the kernel filled in the last call; its control
        // pointer and length describe `self.ctrl[i]`, which is alive. The CMSG
        // macros stay within msg_controllen.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET
                    && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
                {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
                }
                cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
            }
        }
        None
    }
}

/// Datagrams waiting for one `sendmmsg`.
pub struct SendBatch {
    msgs: Vec<Vec<u8>>,
    peers: Vec<Option<socket2::SockAddr>>,
    len: usize,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SendBatch {
    /// An empty batch of up to [`BATCH`] datagrams.
    pub fn new() -> Self {
        let iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Self {
            msgs: (0..BATCH).map(|_| Vec::with_capacity(512)).collect(),
            peers: vec![None; BATCH],
            len: 0,
            iovs: vec![iov; BATCH].into_boxed_slice(),
            hdrs: (0..BATCH).map(|_| empty_hdr()).collect(),
        }
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the batch is full.
    pub fn is_full(&self) -> bool {
        self.len == BATCH
    }

    /// The buffer of the next datagram (cleared), to `send` to `peer` (None on a
    /// connected socket). Call [`SendBatch::commit`] to keep it.
    pub fn next_buffer(&mut self) -> &mut Vec<u8> {
        let b = &mut self.msgs[self.len];
        b.clear();
        b
    }

    /// Keeps the datagram written into [`SendBatch::next_buffer`].
    pub fn commit(&mut self, peer: Option<SocketAddr>) {
        self.peers[self.len] = peer.map(socket2::SockAddr::from);
        self.len += 1;
    }

    /// The `i`-th queued datagram.
    pub fn datagram(&self, i: usize) -> &[u8] {
        &self.msgs[i]
    }

    /// Sends the queued datagrams with as few calls as the socket allows; returns
    /// how many it took (the rest are dropped: a full socket buffer is loss, as on
    /// the wire). Empties the batch.
    pub fn flush(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut done = 0;
        while done < self.len {
            let n = self.send_from(fd, done)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        self.len = 0;
        Ok(done)
    }

    fn send_from(&mut self, fd: RawFd, from: usize) -> io::Result<usize> {
        let count = self.len - from;
        for j in 0..count {
            let i = from + j;
            self.iovs[j] = libc::iovec {
                iov_base: self.msgs[i].as_mut_ptr().cast(),
                iov_len: self.msgs[i].len(),
            };
            let h = &mut self.hdrs[j];
            match &self.peers[i] {
                Some(a) => {
                    h.msg_hdr.msg_name = a.as_ptr() as *mut libc::c_void;
                    h.msg_hdr.msg_namelen = a.len();
                }
                None => {
                    h.msg_hdr.msg_name = std::ptr::null_mut();
                    h.msg_hdr.msg_namelen = 0;
                }
            }
            h.msg_hdr.msg_iov = &mut self.iovs[j];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: the first `count` (<= BATCH) headers point at queued datagrams and
        // addresses owned by `self`, alive and unmoved until the call returns.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::Interrupted
                | io::ErrorKind::ConnectionRefused => Ok(0),
                _ => Err(e),
            };
        }
        Ok(n as usize)
    }
}
