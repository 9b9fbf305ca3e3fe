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
