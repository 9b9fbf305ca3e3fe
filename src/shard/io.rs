//! The socket layer, the only code that differs between the io backends.
//!
//! Both backends move owned `Vec<u8>` buffers into each operation and hand them back
//! (the completion model io_uring needs; epoll just borrows them). A received
//! datagram or read fills the buffer from index 0 and sets its length; a send sends
//! the buffer's whole length. Sockets are built with socket2 by the shard and handed
//! over with [`Backend::udp`] / [`Backend::listener`]; everything above this module is
//! shared by both backends.

use super::{mmsg, ring, udp, Shard};
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::rc::Rc;

/// The longest client UDP datagram served; a longer one is dropped and counted
/// (`oversize`). Real queries are a few hundred bytes at most.
pub(crate) const MAX_QUERY: usize = 2048;

/// A buffer handed back with the result of the operation that used it.
pub(crate) type BufResult<T> = (io::Result<T>, Vec<u8>);

/// A UDP socket on one backend.
pub(crate) trait UdpIo: 'static {
    /// Receives one datagram into `buf` (cleared first).
    fn recv_from(&self, buf: Vec<u8>) -> impl Future<Output = BufResult<(usize, SocketAddr)>>;
    /// Sends `buf` to `addr`.
    fn send_to(&self, buf: Vec<u8>, addr: SocketAddr) -> impl Future<Output = BufResult<usize>>;
    /// Receives from the connected peer.
    fn recv(&self, buf: Vec<u8>) -> impl Future<Output = BufResult<usize>>;
    /// Sends to the connected peer.
    fn send(&self, buf: Vec<u8>) -> impl Future<Output = BufResult<usize>>;
    /// Sends `buf` to `addr` now if the socket can take it (WouldBlock if not).
    /// A UDP send rarely waits; sending it with one syscall spares io_uring a
    /// submission and a completion round trip through the runtime per reply.
    fn try_send_to(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize>;
    /// The socket's descriptor, for a ring of its own (see `ring`).
    fn raw_fd(&self) -> std::os::fd::RawFd;
}

/// A TCP stream on one backend; reads and writes may run from two tasks at once.
pub(crate) trait TcpIo: 'static {
    /// Reads what is available into `buf` starting at its current length (appends).
    fn read(&self, buf: Vec<u8>) -> impl Future<Output = BufResult<usize>>;
    /// Writes the whole buffer.
    fn write_all(&self, buf: Vec<u8>) -> impl Future<Output = BufResult<()>>;
    /// Shuts both directions down: pending reads and writes complete at once.
    fn shutdown(&self);
}

/// A stream that is shut down when dropped. io_uring keeps the socket open while
/// an operation on it is in flight, and a read abandoned by a timeout stays in
/// flight until the peer sends or closes; shutting down completes it, so the
/// socket really closes when tierdns is done with it.
pub(crate) struct Closing<S: TcpIo>(pub(crate) S);

impl<S: TcpIo> Drop for Closing<S> {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

impl<S: TcpIo> std::ops::Deref for Closing<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.0
    }
}

/// One io backend: how sockets become async.
pub(crate) trait Backend: 'static {
    /// UDP socket type.
    type Udp: UdpIo;
    /// TCP stream type.
    type Stream: TcpIo;
    /// TCP listener type.
    type Listener: 'static;
    /// Name for logs and metrics.
    const NAME: &'static str;
    /// Whether several receive loops on one socket run in parallel. With io_uring
    /// each loop keeps its own receive in flight, so a burst is taken without a
    /// round trip per datagram; with epoll every waiting loop is woken by each
    /// datagram and all but one find nothing, so one loop per socket is best.
    const PARALLEL_RECEIVES: bool;
    /// Serves one client UDP socket until shutdown: receive, answer hits at once,
    /// hand misses to tasks of their own. `receivers` is how many per-datagram loops
    /// to run where that is the way.
    fn serve_udp(
        shard: Rc<Shard<Self>>,
        sock: Rc<Self::Udp>,
        receivers: usize,
    ) -> impl Future<Output = ()>
    where
        Self: Sized;
    /// Adopts a bound (and maybe connected) non-blocking std UDP socket.
    fn udp(socket: std::net::UdpSocket) -> io::Result<Self::Udp>;
    /// Adopts a listening non-blocking std TCP listener.
    fn listener(listener: std::net::TcpListener) -> io::Result<Self::Listener>;
    /// Accepts one connection.
    fn accept(
        listener: &Self::Listener,
    ) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>>;
    /// Connects to `addr`.
    fn connect(addr: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>>;
}

/// io_uring through tokio-uring.
pub(crate) struct Uring;

/// A UDP socket on io_uring, with a duplicate of its descriptor for direct sends.
pub(crate) struct UringUdp {
    io: tokio_uring::net::UdpSocket,
    direct: socket2::Socket,
}

impl UdpIo for UringUdp {
    async fn recv_from(&self, mut buf: Vec<u8>) -> BufResult<(usize, SocketAddr)> {
        buf.clear();
        self.io.recv_from(buf).await
    }
    async fn send_to(&self, buf: Vec<u8>, addr: SocketAddr) -> BufResult<usize> {
        self.io.send_to(buf, addr).await
    }
    async fn recv(&self, mut buf: Vec<u8>) -> BufResult<usize> {
        buf.clear();
        self.io.read(buf).await
    }
    async fn send(&self, buf: Vec<u8>) -> BufResult<usize> {
        self.io.send(buf).await
    }
    fn try_send_to(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize> {
        self.direct.send_to(buf, &addr.into())
    }
    fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.direct)
    }
}

impl TcpIo for tokio_uring::net::TcpStream {
    async fn read(&self, buf: Vec<u8>) -> BufResult<usize> {
        use tokio_uring::buf::BoundedBuf;
        let start = buf.len();
        let cap = buf.capacity();
        if start == cap {
            return (Ok(0), buf);
        }
        let (res, slice) = Self::read(self, buf.slice(start..cap)).await;
        (res, slice.into_inner())
    }
    async fn write_all(&self, buf: Vec<u8>) -> BufResult<()> {
        Self::write_all(self, buf).await
    }
    fn shutdown(&self) {
        let _ = Self::shutdown(self, std::net::Shutdown::Both);
    }
}

impl Backend for Uring {
    type Udp = UringUdp;
    type Stream = tokio_uring::net::TcpStream;
    type Listener = tokio_uring::net::TcpListener;
    const NAME: &'static str = "uring";
    const PARALLEL_RECEIVES: bool = true;

    /// One multishot receive on a ring of its own (`ring`), unless turned off
    /// (`server.udp_multishot`) or the kernel lacks it: then `receivers` loops of one
    /// receive operation per datagram.
    async fn serve_udp(shard: Rc<Shard<Self>>, sock: Rc<Self::Udp>, receivers: usize) {
        if shard.shared.config.server.udp_multishot {
            match ring::receive_loop(Rc::clone(&shard), Rc::clone(&sock)).await {
                Ok(()) => return,
                Err(ring::Unsupported(why)) => tracing::warn!(
                    shard = shard.index,
                    reason = %why,
                    "client UDP: no multishot io_uring receive; one receive operation per datagram instead"
                ),
            }
        }
        let loops: Vec<_> = (0..receivers)
            .map(|_| {
                tokio::task::spawn_local(udp::receive_loop(Rc::clone(&shard), Rc::clone(&sock)))
            })
            .collect();
        for l in loops {
            let _ = l.await;
        }
    }

    fn udp(socket: std::net::UdpSocket) -> io::Result<Self::Udp> {
        let direct = socket2::Socket::from(socket.try_clone()?);
        Ok(UringUdp {
            io: tokio_uring::net::UdpSocket::from_std(socket),
            direct,
        })
    }
    fn listener(listener: std::net::TcpListener) -> io::Result<Self::Listener> {
        Ok(tokio_uring::net::TcpListener::from_std(listener))
    }
    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        let (s, addr) = listener.accept().await?;
        s.set_nodelay(true)?;
        Ok((s, addr))
    }
    async fn connect(addr: SocketAddr) -> io::Result<Self::Stream> {
        let s = tokio_uring::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

/// epoll through tokio's current-thread reactor.
pub(crate) struct Epoll;

/// A tokio TCP stream usable from a reader and a writer task at once.
pub(crate) struct EpollStream(tokio::net::TcpStream);

impl UdpIo for tokio::net::UdpSocket {
    async fn recv_from(&self, mut buf: Vec<u8>) -> BufResult<(usize, SocketAddr)> {
        buf.clear();
        let res = Self::recv_buf_from(self, &mut buf).await;
        (res, buf)
    }
    async fn send_to(&self, buf: Vec<u8>, addr: SocketAddr) -> BufResult<usize> {
        let res = Self::send_to(self, &buf, addr).await;
        (res, buf)
    }
    async fn recv(&self, mut buf: Vec<u8>) -> BufResult<usize> {
        buf.clear();
        let res = Self::recv_buf(self, &mut buf).await;
        (res, buf)
    }
    async fn send(&self, buf: Vec<u8>) -> BufResult<usize> {
        let res = Self::send(self, &buf).await;
        (res, buf)
    }
    fn try_send_to(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize> {
        Self::try_send_to(self, buf, addr)
    }
    fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}

impl TcpIo for EpollStream {
    async fn read(&self, mut buf: Vec<u8>) -> BufResult<usize> {
        loop {
            if buf.len() == buf.capacity() {
                return (Ok(0), buf);
            }
            if let Err(e) = self.0.readable().await {
                return (Err(e), buf);
            }
            match self.0.try_read_buf(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                res => return (res, buf),
            }
        }
    }
    async fn write_all(&self, buf: Vec<u8>) -> BufResult<()> {
        let mut done = 0;
        while done < buf.len() {
            if let Err(e) = self.0.writable().await {
                return (Err(e), buf);
            }
            match self.0.try_write(&buf[done..]) {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }
    fn shutdown(&self) {
        let _ = socket2::SockRef::from(&self.0).shutdown(std::net::Shutdown::Both);
    }
}

impl Backend for Epoll {
    type Udp = tokio::net::UdpSocket;
    type Stream = EpollStream;
    type Listener = tokio::net::TcpListener;
    const NAME: &'static str = "epoll";
    const PARALLEL_RECEIVES: bool = false;

    /// Batches: every queued datagram in one `recvmmsg`, the hits' replies in one
    /// `sendmmsg` (`mmsg`).
    async fn serve_udp(shard: Rc<Shard<Self>>, sock: Rc<Self::Udp>, _receivers: usize) {
        mmsg::receive_loop(shard, sock).await;
    }

    fn udp(socket: std::net::UdpSocket) -> io::Result<Self::Udp> {
        tokio::net::UdpSocket::from_std(socket)
    }
    fn listener(listener: std::net::TcpListener) -> io::Result<Self::Listener> {
        tokio::net::TcpListener::from_std(listener)
    }
    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        let (s, addr) = listener.accept().await?;
        s.set_nodelay(true)?;
        Ok((EpollStream(s), addr))
    }
    async fn connect(addr: SocketAddr) -> io::Result<Self::Stream> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(EpollStream(s))
    }
}

/// Takes a UDP socket out of service while `receives` abandoned receives on it are
/// still in flight. Connecting it to a private peer stops the kernel from handing it client
/// datagrams (SO_REUSEPORT sends them to the other sockets, or refuses them), and
/// one empty datagram per receive from that peer completes the receives, which
/// releases the socket. io_uring offers no cancellation through tokio-uring, and
/// shutdown(2) does not complete a pending UDP receive.
pub(crate) fn release_udp(sock: &socket2::Socket, receives: usize) -> io::Result<()> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let local = sock
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an inet socket"))?;
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let peer = std::net::UdpSocket::bind((ip, 0))?;
    sock.connect(&peer.local_addr()?.into())?;
    let target = SocketAddr::new(ip, local.port());
    for _ in 0..receives {
        peer.send_to(&[], target)?;
    }
    Ok(())
}

/// The peer's address from the raw `sockaddr` the kernel wrote.
pub(crate) fn peer_of(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(name.get(0..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match i32::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddrV4::new(Ipv4Addr::from(ip), port).into())
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(name.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(SocketAddrV6::new(Ipv6Addr::from(ip), port, flow, scope).into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_v4(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut b = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        b.extend_from_slice(&port.to_be_bytes());
        b.extend_from_slice(&ip);
        b.resize(16, 0);
        b
    }

    #[test]
    fn peer_addresses_from_raw_sockaddrs() {
        assert_eq!(
            peer_of(&raw_v4([127, 0, 0, 9], 5300)),
            Some(SocketAddr::from(([127, 0, 0, 9], 5300)))
        );
        let mut v6 = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
        v6.extend_from_slice(&53u16.to_be_bytes());
        v6.extend_from_slice(&7u32.to_be_bytes());
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&3u32.to_ne_bytes());
        assert_eq!(
            peer_of(&v6),
            Some(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 53, 7, 3).into())
        );
        // Cut short, or a family that is neither: no address.
        assert_eq!(peer_of(&v6[..20]), None);
        assert_eq!(peer_of(&[]), None);
        assert_eq!(peer_of(&[0xff, 0xff, 0, 53, 1, 2, 3, 4]), None);
    }
}
