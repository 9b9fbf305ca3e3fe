//! The io_uring backend, through tokio-uring: one operation per receive, send, read
//! or write. Client UDP on this backend is served by [`super::ring`] (a multishot
//! receive on a ring of its own) where the kernel has it.

use super::udp::ReplyTo;
use super::{pktinfo, Backend, BufResult, TcpIo, UdpIo};
use std::io;
use std::net::SocketAddr;

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
    async fn send_to(&self, buf: Vec<u8>, to: ReplyTo) -> BufResult<usize> {
        let Some(local) = to.local else {
            return self.io.send_to(buf, to.peer).await;
        };
        // A send that had to wait for room. Kernels without "io_uring/net: save
        // msghdr->msg_control for retries" (6.4, in the stable series) may fail such
        // a retried send with EFAULT; it is counted as a send error.
        let mut control = pktinfo::Control::default();
        let len = control.write(local);
        let (res, mut bufs, _) = self
            .io
            .sendmsg(vec![buf], Some(to.peer), Some(control.0[..len].to_vec()))
            .await;
        (res, bufs.pop().unwrap_or_default())
    }
    fn try_send_to(&self, buf: &[u8], to: ReplyTo) -> io::Result<usize> {
        match to.local {
            None => self.direct.send_to(buf, &to.peer.into()),
            Some(_) => pktinfo::send_from(std::os::fd::AsRawFd::as_raw_fd(&self.direct), buf, to),
        }
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
    fn shutdown_write(&self) {
        let _ = Self::shutdown(self, std::net::Shutdown::Write);
    }
}

impl Backend for Uring {
    type Udp = UringUdp;
    type Stream = tokio_uring::net::TcpStream;
    type Listener = tokio_uring::net::TcpListener;
    const NAME: &'static str = "uring";
    const PARALLEL_RECEIVES: bool = true;

    fn readiness(_: &Self::Udp) -> Option<&tokio::net::UdpSocket> {
        None
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
