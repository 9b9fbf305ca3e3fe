//! The epoll backend, through tokio's current-thread reactor. Client UDP on this
//! backend is served in `recvmmsg`/`sendmmsg` batches by [`super::mmsg`].

use super::udp::ReplyTo;
use super::{pktinfo, Backend, BufResult, TcpIo, UdpIo};
use std::io;
use std::net::SocketAddr;

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
    async fn send_to(&self, buf: Vec<u8>, to: ReplyTo) -> BufResult<usize> {
        let res = match to.local {
            None => Self::send_to(self, &buf, to.peer).await,
            Some(_) => {
                let fd = std::os::fd::AsRawFd::as_raw_fd(self);
                self.async_io(tokio::io::Interest::WRITABLE, || {
                    pktinfo::send_from(fd, &buf, to)
                })
                .await
            }
        };
        (res, buf)
    }
    fn try_send_to(&self, buf: &[u8], to: ReplyTo) -> io::Result<usize> {
        match to.local {
            None => Self::try_send_to(self, buf, to.peer),
            Some(_) => {
                let fd = std::os::fd::AsRawFd::as_raw_fd(self);
                self.try_io(tokio::io::Interest::WRITABLE, || {
                    pktinfo::send_from(fd, buf, to)
                })
            }
        }
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
    fn shutdown_write(&self) {
        let _ = socket2::SockRef::from(&self.0).shutdown(std::net::Shutdown::Write);
    }
}

impl Backend for Epoll {
    type Udp = tokio::net::UdpSocket;
    type Stream = EpollStream;
    type Listener = tokio::net::TcpListener;
    const NAME: &'static str = "epoll";
    const PARALLEL_RECEIVES: bool = false;

    fn readiness(sock: &Self::Udp) -> Option<&tokio::net::UdpSocket> {
        Some(sock)
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
