//! DNS over TLS (RFC 7858): after the handshake ([`super::tls`]), a DoT
//! connection is a TCP connection whose bytes pass through TLS, and is served by
//! the TCP connection code itself ([`super::tcp::connection`], transport
//! [`Transport::Dot`]): the same framing, pipelining bound (`tcp_pipeline`), idle
//! timeout, query and lifetime caps, gate on every query and graceful close.
//!
//! [`TlsIo`] is what makes that possible: the TLS session as a [`TcpIo`]. The
//! reader and the writer run in two tasks of the shard; each poll borrows the
//! session only for the poll itself (single-threaded, never across an await).
//! Closing it (the shard needs the connection's place, or an error) is the
//! connection's [`CloseSignal`]: reads and writes waiting on it end at once.

use super::tcp::{connection, Open};
use super::tls::CloseSignal;
use crate::io::{Backend, BufResult, Closing, TcpIo};
use crate::policy::stream_conns::Close;
use crate::transport::Transport;
use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Bytes read from the session per poll at most (a TLS record holds 16 KiB).
const READ_CHUNK: usize = 4096;

/// Serves one DoT session until it ends.
pub(super) async fn serve<B: Backend>(
    open: Open<B>,
    session: TlsStream<TcpStream>,
    client: std::net::IpAddr,
    signal: Rc<CloseSignal>,
) {
    let stream = Rc::new(Closing(TlsIo {
        session: RefCell::new(session),
        signal,
    }));
    connection(open, stream, client, Transport::Dot).await;
}

/// A server TLS session as a [`TcpIo`].
pub(super) struct TlsIo {
    session: RefCell<TlsStream<TcpStream>>,
    signal: Rc<CloseSignal>,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "connection closed by tierdns")
}

impl TlsIo {
    /// Reads into `buf`'s spare capacity (at most [`READ_CHUNK`] bytes), appending.
    fn poll_read_into(&self, cx: &mut Context<'_>, buf: &mut Vec<u8>) -> Poll<io::Result<usize>> {
        let len = buf.len();
        let room = (buf.capacity() - len).min(READ_CHUNK);
        buf.resize(len + room, 0);
        let mut read = ReadBuf::new(&mut buf[len..]);
        let polled = Pin::new(&mut *self.session.borrow_mut()).poll_read(cx, &mut read);
        let n = read.filled().len();
        buf.truncate(len + n);
        match polled {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(n)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    async fn write_flush(&self, buf: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = poll_fn(|cx| {
                Pin::new(&mut *self.session.borrow_mut()).poll_write(cx, &buf[done..])
            })
            .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            done += n;
        }
        poll_fn(|cx| Pin::new(&mut *self.session.borrow_mut()).poll_flush(cx)).await
    }
}

impl TcpIo for TlsIo {
    async fn read(&self, mut buf: Vec<u8>) -> BufResult<usize> {
        if buf.len() == buf.capacity() {
            return (Ok(0), buf);
        }
        if self.signal.is_closed() {
            return (Err(closed()), buf);
        }
        let res = tokio::select! {
            biased;
            _ = self.signal.closed() => Err(closed()),
            r = poll_fn(|cx| self.poll_read_into(cx, &mut buf)) => r,
        };
        (res, buf)
    }

    async fn write_all(&self, buf: Vec<u8>) -> BufResult<()> {
        if self.signal.is_closed() {
            return (Err(closed()), buf);
        }
        let res = tokio::select! {
            biased;
            _ = self.signal.closed() => Err(closed()),
            r = self.write_flush(&buf) => r,
        };
        (res, buf)
    }

    fn shutdown(&self) {
        self.signal.close();
    }

    /// Sends close_notify and FIN if the socket takes them now (one poll, no
    /// wait): the client reads the answers, then the end of the session.
    fn shutdown_write(&self) {
        let mut session = self.session.borrow_mut();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if Pin::new(&mut *session).poll_shutdown(&mut cx).is_pending() {
            // The socket is full: FIN at least, after what it holds.
            let tcp = session.get_ref().0;
            let _ = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write);
        }
    }
}
