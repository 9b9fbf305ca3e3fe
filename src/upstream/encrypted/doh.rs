//! DNS over HTTPS (RFC 8484): each query a POST of `application/dns-message` with
//! ID 0 (section 4.1, so that caches can share answers), on an HTTP/2 stream of one
//! connection per upstream and shard (the h2 crate), at most
//! `limits.max_upstream_pending` streams at once (and no more than the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS, which h2 enforces by making a query wait).
//!
//! A reply counts if the status is 200, the content type `application/dns-message`,
//! the body at most 65535 bytes and a response to the same question with ID 0.
//! Response headers are bounded (16 KiB), bodies are read with flow control
//! released as they come. A connection is closed after `idle_timeout` without a
//! stream, or when the server ends it (GOAWAY, reset): then the next query opens a
//! new one.

use super::{AttemptError, ConnState, LinkShared, Setup};
use crate::config::{UpstreamConfig, DOH_PORT};
use crate::health::FailKind;
use crate::upstream::pending::{room, Question};
use crate::wire::reader::Header;
use bytes::Bytes;
use h2::client::SendRequest;
use rustls::pki_types::ServerName;
use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::time::Instant;

/// The media type of DNS messages (RFC 8484 section 6).
const DNS_MESSAGE: &str = "application/dns-message";
/// Largest DNS message, so largest body read.
const MAX_BODY: usize = 65535;
/// Largest response header block accepted.
const MAX_HEADERS: u32 = 16 << 10;

/// One HTTP/2 connection: opening (by the first query that needs it) or open.
struct DohConn {
    /// The HTTP/2 handle once the handshakes are done, or why they failed.
    setup: Rc<Setup<SendRequest<Bytes>>>,
    /// Shared with the task driving the connection (which must not hold the
    /// handle: dropping the last one closes the connection).
    state: Rc<ConnState>,
    /// Streams in flight on it.
    in_flight: Rc<Cell<usize>>,
}

/// Counts a stream while alive.
struct StreamSlot<'a>(&'a DohConn);

impl Drop for StreamSlot<'_> {
    fn drop(&mut self) {
        let n = &self.0.in_flight;
        n.set(n.get().saturating_sub(1));
        self.0.state.touch();
    }
}

/// One shard's DoH connection to one upstream.
pub(super) struct DohLink {
    shared: Rc<LinkShared>,
    uri: http::Uri,
    conn: RefCell<Option<Rc<DohConn>>>,
}

impl DohLink {
    pub(super) fn new(
        upstream: &UpstreamConfig,
        path: &str,
        shared: Rc<LinkShared>,
    ) -> io::Result<Self> {
        // The authority the server is asked for: the name its certificate is
        // checked against, else the address.
        let authority = match &shared.target.name {
            ServerName::DnsName(name) if upstream.address.port() == DOH_PORT => {
                name.as_ref().to_string()
            }
            ServerName::DnsName(name) => format!("{}:{}", name.as_ref(), upstream.address.port()),
            _ => upstream.address.to_string(),
        };
        let uri = format!("https://{authority}{path}")
            .parse::<http::Uri>()
            .map_err(|e| io::Error::other(format!("upstream {}: {e}", upstream.label())))?;
        Ok(Self {
            shared,
            uri,
            conn: RefCell::new(None),
        })
    }

    #[cfg(test)]
    pub(super) fn connections(&self) -> usize {
        usize::from(
            self.conn
                .borrow()
                .as_ref()
                .is_some_and(|c| !c.state.is_dead()),
        )
    }

    /// The connection (a new one if there is none, or only a dead one, or `fresh`
    /// asks for one that was not open before), unless it is full or the link in
    /// backoff.
    fn pick(&self, background: bool, fresh: bool) -> Result<Rc<DohConn>, FailKind> {
        let mut slot = self.conn.borrow_mut();
        if let Some(c) = slot.as_ref() {
            let stale = c.state.is_dead() || (fresh && c.state.is_established());
            if !stale {
                if c.in_flight.get() >= room(self.shared.max_per_connection, background) {
                    return Err(FailKind::Overload);
                }
                return Ok(Rc::clone(c));
            }
            // A fresh connection replaces the old one; streams still on the old
            // one finish there.
        }
        self.shared.backoff.borrow().check(Instant::now())?;
        let conn = Rc::new(DohConn {
            setup: Setup::new(),
            state: Rc::new(ConnState::new()),
            in_flight: Rc::new(Cell::new(0)),
        });
        *slot = Some(Rc::clone(&conn));
        Ok(conn)
    }

    /// One try of one query (`query` padded; its ID set to 0 here).
    pub(super) async fn attempt(
        &self,
        query: &mut [u8],
        question: &Question,
        background: bool,
        fresh: bool,
    ) -> Result<Vec<u8>, AttemptError> {
        let conn = self.pick(background, fresh)?;
        let reused = conn.state.is_established();
        conn.in_flight.set(conn.in_flight.get() + 1);
        conn.state.touch();
        let _in_flight = StreamSlot(&conn);
        let send = conn
            .setup
            .get(|| connect(Rc::clone(&self.shared), Rc::clone(&conn)))
            .await?;
        query
            .get_mut(..2)
            .ok_or(FailKind::Malformed)?
            .copy_from_slice(&[0, 0]);
        let lost = |e: h2::Error| {
            if e.is_go_away() || e.is_io() || conn.state.is_dead() {
                conn.state.kill();
                AttemptError::Lost { reused }
            } else {
                AttemptError::Fail(FailKind::Network)
            }
        };
        let request = http::Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, DNS_MESSAGE)
            .header(http::header::ACCEPT, DNS_MESSAGE)
            .header(http::header::CONTENT_LENGTH, query.len())
            .body(())
            .map_err(|_| FailKind::Malformed)?;
        let mut send = send.ready().await.map_err(lost)?;
        let (response, mut body) = send.send_request(request, false).map_err(lost)?;
        body.send_data(Bytes::copy_from_slice(query), true)
            .map_err(lost)?;
        let response = response.await.map_err(lost)?;
        if response.status() != http::StatusCode::OK {
            return Err(FailKind::Network.into());
        }
        let media = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim);
        if !media.is_some_and(|m| m.eq_ignore_ascii_case(DNS_MESSAGE)) {
            return Err(FailKind::Malformed.into());
        }
        let mut body = response.into_body();
        let mut reply = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(lost)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if reply.len() + chunk.len() > MAX_BODY {
                return Err(FailKind::Malformed.into());
            }
            reply.extend_from_slice(&chunk);
        }
        let header = Header::parse(&reply).map_err(|_| FailKind::Malformed)?;
        if !header.qr() || header.id != 0 || question.matches(&reply) != Some(true) {
            return Err(FailKind::Malformed.into());
        }
        Ok(reply)
    }
}

/// Opens the TLS connection (ALPN h2 required), does the HTTP/2 handshake and
/// starts the task driving the connection until it ends or is idle; a connection
/// that cannot be opened is dead.
async fn connect(
    shared: Rc<LinkShared>,
    conn: Rc<DohConn>,
) -> Result<SendRequest<Bytes>, FailKind> {
    let opened = open_h2(&shared, &conn).await;
    if opened.is_err() {
        conn.state.kill();
    }
    opened
}

async fn open_h2(shared: &LinkShared, conn: &DohConn) -> Result<SendRequest<Bytes>, FailKind> {
    let stream = shared.open().await?;
    let handshake = h2::client::Builder::new()
        .max_header_list_size(MAX_HEADERS)
        .max_concurrent_reset_streams(64)
        .handshake::<_, Bytes>(stream);
    let (send, connection) = match tokio::time::timeout(shared.timeout, handshake).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            tracing::debug!(upstream = %shared.label, error = %e, "HTTP/2 handshake");
            return Err(FailKind::Network);
        }
        Err(_) => return Err(FailKind::Timeout),
    };
    conn.state.established();
    let idle = shared.idle_timeout;
    let label = shared.label.clone();
    let (state, in_flight) = (Rc::clone(&conn.state), Rc::clone(&conn.in_flight));
    tokio::task::spawn_local(async move {
        tokio::select! {
            ended = connection => {
                if let Err(e) = ended {
                    tracing::debug!(upstream = %label, error = %e, "DoH connection ended");
                }
            }
            () = state.idle_for(idle, || in_flight.get()) => {}
        }
        // Dropping the connection closes it; streams still open on it fail.
        state.kill();
    });
    Ok(send)
}
