//! DNS over TLS (RFC 7858): queries framed as over TCP (RFC 7766, a two-byte
//! length), pipelined on at most [`super::DOT_CONNECTIONS`] connections per
//! upstream and shard, answers matched by ID in any order.
//!
//! Each connection has a bounded table of pending queries (the upstream
//! [`PendingTable`]: random IDs unique on it, background work three quarters of
//! it), a writer task that writes whole frames from a bounded queue (a query that
//! stops waiting can never leave half a frame on the stream) and closes the
//! connection after `idle_timeout` without a query, and a reader task that hands
//! each reply to its query. A reply must be a response with a pending ID and that
//! query's question: another question under a pending ID fails that query as
//! malformed; an unknown ID (a query that stopped waiting) is dropped and counted.
//! When either task ends, the connection is dead: every query still pending on it
//! sees it lost.

use super::{AttemptError, ConnState, LinkShared, Setup};
use crate::health::FailKind;
use crate::metrics::DropReason;
use crate::upstream::pending::{PendingTable, Question};
use crate::wire::reader::Header;
use std::cell::RefCell;
use std::rc::Rc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

/// What a pending query is sent: its reply, or why it failed.
type Outcome = Result<Vec<u8>, FailKind>;

/// One DoT connection: opening (the first query to need it opens it) or open.
pub(super) struct DotConn {
    /// The writer's queue once the handshake is done, or why it failed.
    setup: Rc<Setup<mpsc::Sender<Vec<u8>>>>,
    state: ConnState,
    pending: RefCell<PendingTable<oneshot::Sender<Outcome>>>,
    max: usize,
}

impl DotConn {
    fn new(max: usize) -> Self {
        Self {
            setup: Setup::new(),
            state: ConnState::new(),
            pending: RefCell::new(PendingTable::new(max)),
            max,
        }
    }

    fn has_room(&self, background: bool) -> bool {
        !self.state.is_dead() && !self.pending.borrow().is_full(background)
    }

    /// Ends the connection: no new query, every pending one lost.
    fn kill(&self) {
        self.state.kill();
        self.pending.borrow_mut().clear();
    }
}

/// Removes a query from its connection's table when it stops waiting (answered,
/// timed out, or its flight done), unless the entry is already another query's.
struct PendingGuard<'a> {
    conn: &'a DotConn,
    id: u16,
    serial: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.conn.pending.borrow_mut().remove(self.id, self.serial);
    }
}

/// One shard's DoT connections to one upstream.
pub(super) struct DotLink {
    shared: Rc<LinkShared>,
    conns: RefCell<Vec<Rc<DotConn>>>,
}

impl DotLink {
    pub(super) fn new(shared: Rc<LinkShared>) -> Self {
        Self {
            shared,
            conns: RefCell::new(Vec::with_capacity(super::DOT_CONNECTIONS)),
        }
    }

    #[cfg(test)]
    pub(super) fn connections(&self) -> usize {
        self.conns
            .borrow()
            .iter()
            .filter(|c| !c.state.is_dead())
            .count()
    }

    /// The connection a query goes on: the first live one with room (queries
    /// pack onto few connections), else a new one if the bound allows and the
    /// link is not in backoff. `fresh`: not one that was open before (a retry
    /// after a lost connection).
    fn pick(&self, background: bool, fresh: bool) -> Result<Rc<DotConn>, FailKind> {
        let mut conns = self.conns.borrow_mut();
        conns.retain(|c| !c.state.is_dead());
        if let Some(c) = conns
            .iter()
            .find(|c| c.has_room(background) && !(fresh && c.state.is_established()))
        {
            return Ok(Rc::clone(c));
        }
        if conns.len() >= super::DOT_CONNECTIONS {
            return Err(FailKind::Overload);
        }
        self.shared
            .backoff
            .borrow()
            .check(std::time::Instant::now())?;
        let conn = Rc::new(DotConn::new(self.shared.max_per_connection));
        conns.push(Rc::clone(&conn));
        Ok(conn)
    }

    /// One try of one query: `query` is padded; its ID is set here.
    pub(super) async fn attempt(
        &self,
        query: &mut [u8],
        question: &Question,
        background: bool,
        fresh: bool,
    ) -> Result<Vec<u8>, AttemptError> {
        let conn = self.pick(background, fresh)?;
        let reused = conn.state.is_established();
        let (tx, rx) = oneshot::channel();
        let (id, serial) = conn
            .pending
            .borrow_mut()
            .register(question.clone(), background, tx)
            .map_err(|_| FailKind::Overload)?;
        let _guard = PendingGuard {
            conn: &conn,
            id,
            serial,
        };
        let tx = conn
            .setup
            .get(|| connect(Rc::clone(&self.shared), Rc::clone(&conn)))
            .await?;
        query
            .get_mut(..2)
            .ok_or(FailKind::Malformed)?
            .copy_from_slice(&id.to_be_bytes());
        let len = u16::try_from(query.len()).map_err(|_| FailKind::Malformed)?;
        let mut frame = Vec::with_capacity(query.len() + 2);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(query);
        conn.state.touch();
        match tx.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(FailKind::Overload.into()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(AttemptError::Lost { reused }),
        }
        match rx.await {
            Ok(outcome) => outcome.map_err(AttemptError::Fail),
            Err(_) => Err(AttemptError::Lost { reused }),
        }
    }
}

/// Opens the connection (TLS, backoff, counting in `LinkShared::open`) and starts its
/// writer and reader tasks; a connection that cannot be opened is dead.
async fn connect(
    shared: Rc<LinkShared>,
    conn: Rc<DotConn>,
) -> Result<mpsc::Sender<Vec<u8>>, FailKind> {
    let stream = shared.open().await.inspect_err(|_| conn.kill())?;
    let (read, write) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel(conn.max);
    conn.state.established();
    let reader = tokio::task::spawn_local(read_loop(
        Rc::clone(&conn),
        BufReader::new(read),
        Rc::clone(&shared),
    ));
    tokio::task::spawn_local(write_loop(
        conn,
        write,
        rx,
        reader,
        shared.idle_timeout,
        shared.timeout,
    ));
    Ok(tx)
}

/// Writes queued frames (flushing once per batch) until the connection is idle
/// for `idle`, its reader ends, or a write fails or does not complete within
/// `stall` (a server that stops reading); then closes it.
async fn write_loop<W: AsyncWrite + Unpin>(
    conn: Rc<DotConn>,
    mut write: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut reader: tokio::task::JoinHandle<()>,
    idle: std::time::Duration,
    stall: std::time::Duration,
) {
    loop {
        tokio::select! {
            _ = &mut reader => break,
            frame = rx.recv() => {
                let Some(frame) = frame else { break };
                let batch = async {
                    write.write_all(&frame).await?;
                    while let Ok(frame) = rx.try_recv() {
                        write.write_all(&frame).await?;
                    }
                    write.flush().await
                };
                if !matches!(tokio::time::timeout(stall, batch).await, Ok(Ok(()))) {
                    break;
                }
            }
            () = conn.state.idle_for(idle, || conn.pending.borrow().len()) => break,
        }
    }
    conn.kill();
    reader.abort();
    // close_notify, then FIN; a peer that does not read is not waited for long.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write.shutdown()).await;
}

/// Reads replies and hands each to its query, until the stream ends or fails.
async fn read_loop<R: AsyncRead + Unpin>(conn: Rc<DotConn>, mut read: R, shared: Rc<LinkShared>) {
    while let Ok(len) = read.read_u16().await {
        let mut reply = vec![0u8; usize::from(len)];
        if read.read_exact(&mut reply).await.is_err() {
            break;
        }
        conn.state.touch();
        let Ok(header) = Header::parse(&reply) else {
            shared.stats.dropped(DropReason::UpstreamMalformed);
            continue;
        };
        let Some(waiter) = conn.pending.borrow_mut().take(header.id) else {
            shared.stats.dropped(DropReason::UpstreamLate);
            continue;
        };
        let outcome = if header.qr() && waiter.question.matches(&reply) == Some(true) {
            Ok(reply)
        } else {
            shared.stats.dropped(DropReason::UpstreamMismatch);
            Err(FailKind::Malformed)
        };
        let _ = waiter.waiter.send(outcome);
    }
    conn.kill();
}
