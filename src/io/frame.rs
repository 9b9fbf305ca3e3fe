//! TCP framing (RFC 1035 4.2.2, RFC 7766): every message on a stream is preceded by
//! its length as two bytes, most significant first.

use super::TcpIo;
use std::io;

/// Reads one length-prefixed message.
pub(crate) async fn read_frame<S: TcpIo>(stream: &S) -> io::Result<Vec<u8>> {
    let len = read_frame_len(stream).await?;
    read_frame_body(stream, len).await
}

/// Reads the two-byte length that starts a message.
pub(crate) async fn read_frame_len<S: TcpIo>(stream: &S) -> io::Result<usize> {
    let mut buf = Vec::with_capacity(2);
    while buf.len() < 2 {
        let (res, b) = stream.read(buf).await;
        buf = b;
        if res? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(u16::from_be_bytes([buf[0], buf[1]]) as usize)
}

/// Reads the `len` bytes of a message whose length was read.
pub(crate) async fn read_frame_body<S: TcpIo>(stream: &S, len: usize) -> io::Result<Vec<u8>> {
    let mut msg = Vec::with_capacity(len);
    while msg.len() < len {
        let (res, m) = stream.read(msg).await;
        msg = m;
        if res? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(msg)
}

/// `msg` behind its two-byte length; None if it is longer than a frame can say.
pub(crate) fn framed(msg: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(msg.len()).ok()?;
    let mut frame = Vec::with_capacity(msg.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(msg);
    Some(frame)
}

/// What a [`FrameReader`] reads at a time: a pipelined burst of queries, or the
/// largest query a stream takes (4 KiB) with its length.
pub(crate) const READ_AHEAD: usize = 8192;

/// Reads length-prefixed messages through a buffer of its own. One read takes
/// whatever the peer has sent, often many pipelined queries, where reading each
/// length and each message on its own costs two reads a query: two syscalls on
/// epoll, two trips through the ring on io_uring. Holds at most [`READ_AHEAD`]
/// bytes, or one message and its length if that is longer.
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    /// Where the bytes not yet handed out start.
    start: usize,
    /// A read was abandoned (its future dropped, e.g. by a timeout): its buffer
    /// went with it, so the stream's framing is lost and nothing more is read.
    abandoned: bool,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self {
            buf: Vec::with_capacity(READ_AHEAD),
            start: 0,
            abandoned: false,
        }
    }
}

impl FrameReader {
    /// The length that starts the next message. Cut short (the future dropped)
    /// only while it waits for bytes, like the read it stands for.
    pub(crate) async fn next_len<S: TcpIo>(&mut self, stream: &S) -> io::Result<usize> {
        self.fill(stream, 2).await?;
        let len = u16::from_be_bytes([self.buf[self.start], self.buf[self.start + 1]]);
        self.start += 2;
        Ok(usize::from(len))
    }

    /// The `len` bytes of the message whose length [`Self::next_len`] read.
    pub(crate) async fn body<S: TcpIo>(&mut self, stream: &S, len: usize) -> io::Result<Vec<u8>> {
        self.fill(stream, len).await?;
        let msg = self.buf[self.start..self.start + len].to_vec();
        self.start += len;
        Ok(msg)
    }

    /// Reads until `want` bytes are buffered. EOF first: `UnexpectedEof`.
    async fn fill<S: TcpIo>(&mut self, stream: &S, want: usize) -> io::Result<()> {
        if self.abandoned {
            return Err(io::Error::other(
                "an earlier read on this stream was abandoned",
            ));
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        while self.buf.len() - self.start < want {
            if self.buf.capacity() - self.start < want {
                // No room behind what is buffered: move it to the front, and grow
                // for a message longer than the buffer.
                self.buf.drain(..self.start);
                self.start = 0;
                self.buf.reserve(want - self.buf.len());
            }
            self.abandoned = true;
            let (res, buf) = stream.read(std::mem::take(&mut self.buf)).await;
            self.buf = buf;
            self.abandoned = false;
            if res? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::BufResult;
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;
    use std::future::Future;

    /// A stream that hands out scripted chunks, as much of each as fits, then EOF.
    #[derive(Default)]
    struct Script {
        chunks: RefCell<VecDeque<Vec<u8>>>,
        reads: Cell<usize>,
    }

    impl Script {
        fn new(chunks: &[&[u8]]) -> Self {
            let s = Self::default();
            s.chunks
                .borrow_mut()
                .extend(chunks.iter().map(|c| c.to_vec()));
            s
        }
    }

    impl TcpIo for Script {
        async fn read(&self, mut buf: Vec<u8>) -> BufResult<usize> {
            self.reads.set(self.reads.get() + 1);
            let Some(mut chunk) = self.chunks.borrow_mut().pop_front() else {
                return (Ok(0), buf);
            };
            let n = chunk.len().min(buf.capacity() - buf.len());
            buf.extend_from_slice(&chunk[..n]);
            if n < chunk.len() {
                self.chunks.borrow_mut().push_front(chunk.split_off(n));
            }
            (Ok(n), buf)
        }
        async fn write_all(&self, buf: Vec<u8>) -> BufResult<()> {
            (Ok(()), buf)
        }
        fn shutdown(&self) {}
        fn shutdown_write(&self) {}
    }

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn frames(msgs: &[&[u8]]) -> Vec<u8> {
        msgs.iter().flat_map(|m| framed(m).unwrap()).collect()
    }

    async fn read_all(r: &mut FrameReader, s: &Script) -> (Vec<Vec<u8>>, io::Error) {
        let mut got = Vec::new();
        loop {
            let len = match r.next_len(s).await {
                Ok(len) => len,
                Err(e) => return (got, e),
            };
            match r.body(s, len).await {
                Ok(m) => got.push(m),
                Err(e) => return (got, e),
            }
        }
    }

    #[test]
    fn pipelined_messages_come_out_of_one_read() {
        let msgs: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 30 + usize::from(i)]).collect();
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        let s = Script::new(&[&frames(&refs)]);
        let mut r = FrameReader::default();
        let (got, end) = run(read_all(&mut r, &s));
        assert_eq!(got, msgs);
        assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof);
        // 50 messages: one read for all of them, one more to see the end.
        assert_eq!(s.reads.get(), 2);
    }

    #[test]
    fn messages_split_anywhere_are_put_back_together() {
        let msgs: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 200]).collect();
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        let all = frames(&refs);
        // Chunks of 1, 2, 3 ... bytes: lengths and bodies cut at every offset,
        // and more than the buffer holds, so it moves what is left to the front.
        let mut chunks = Vec::new();
        let (mut at, mut size) = (0, 1);
        while at < all.len() {
            let end = (at + size).min(all.len());
            chunks.push(&all[at..end]);
            at = end;
            size = size % 97 + 1;
        }
        let s = Script::new(&chunks);
        let mut r = FrameReader::default();
        let (got, end) = run(read_all(&mut r, &s));
        assert_eq!(got, msgs);
        assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            r.buf.capacity() <= READ_AHEAD,
            "grew to {}",
            r.buf.capacity()
        );
    }

    #[test]
    fn a_message_longer_than_the_buffer_grows_it_to_fit_that_message() {
        let big = vec![7u8; 40_000];
        let s = Script::new(&[&frames(&[&big, b"after"])]);
        let mut r = FrameReader::default();
        let (got, _) = run(read_all(&mut r, &s));
        assert_eq!(got, vec![big, b"after".to_vec()]);
        assert!(r.buf.capacity() < 2 * 40_002);
    }

    #[test]
    fn the_end_inside_a_message_is_unexpected_eof() {
        let whole = frames(&[b"complete", b"cut short"]);
        let s = Script::new(&[&whole[..whole.len() - 3]]);
        let mut r = FrameReader::default();
        let (got, end) = run(read_all(&mut r, &s));
        assert_eq!(got, vec![b"complete".to_vec()]);
        assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof);
        // A length byte alone, then the end.
        let s = Script::new(&[&[0]]);
        let (got, end) = run(read_all(&mut FrameReader::default(), &s));
        assert!(got.is_empty());
        assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// A stream whose read never completes (a client that sends nothing).
    struct Silent;
    impl TcpIo for Silent {
        async fn read(&self, buf: Vec<u8>) -> BufResult<usize> {
            std::future::pending::<()>().await;
            (Ok(0), buf)
        }
        async fn write_all(&self, buf: Vec<u8>) -> BufResult<()> {
            (Ok(()), buf)
        }
        fn shutdown(&self) {}
        fn shutdown_write(&self) {}
    }

    #[test]
    fn after_an_abandoned_read_the_reader_refuses_instead_of_misframing() {
        let mut r = FrameReader::default();
        {
            let mut read = std::pin::pin!(r.next_len(&Silent));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(read.as_mut().poll(&mut cx).is_pending());
            // Dropped here, as a timeout or a shutdown drops it.
        }
        let s = Script::new(&[&frames(&[b"next"])]);
        let err = run(r.next_len(&s)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Other);
        assert_eq!(s.reads.get(), 0, "nothing more is read from the stream");
    }
}
