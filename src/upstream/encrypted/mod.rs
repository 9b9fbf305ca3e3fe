//! Encrypted upstreams: DNS over TLS (RFC 7858, [`dot`]) and DNS over HTTPS
//! (RFC 8484, [`doh`]), one [`EncryptedLink`] per upstream and shard.
//!
//! What both share, and their invariants:
//! - Connections are opened when a query needs one, and its round-trip time
//!   includes what it waited for (TCP, TLS handshake): the tiers and the health
//!   score see what the upstream costs. The setup runs in a task of its own
//!   ([`Setup`]), so a query that stops waiting does not cancel the handshake
//!   the next ones will use. They are reused and pipelined, closed
//!   after `idle_timeout` without a query, and bounded: [`DOT_CONNECTIONS`] DoT
//!   connections or one HTTP/2 connection per upstream and shard, each with at
//!   most its share of `limits.max_upstream_pending` queries in flight (background
//!   work three quarters of it, as on UDP); a query past the bound fails at once
//!   with [`FailKind::Overload`].
//! - A connection that cannot be opened puts the link in backoff ([`Backoff`]:
//!   exponential, capped): queries fail at once with the same failure until it
//!   ends, so a dead or misconfigured upstream costs one handshake per backoff,
//!   not one per query.
//! - A certificate that does not verify fails with [`FailKind::TlsCertificate`],
//!   is counted in `tierdns_upstream_tls_failures_total{upstream,reason}` and
//!   logged at most once a minute per upstream and shard. Nothing is ever sent in
//!   the clear instead: the only bytes written before a verified handshake are
//!   the TLS client's.
//! - Every query is padded (RFC 7830, to 128-byte blocks per RFC 8467); a reply
//!   must be a response (QR=1) repeating the question, with the query's ID (DoT:
//!   random per connection; DoH: 0, RFC 8484 section 4.1), and not truncated (a
//!   TC=1 reply fails as malformed: it is never retried over plain TCP).
//! - A query whose reused connection is lost before its answer (the server closed
//!   an idle connection just then) is sent once more on a fresh connection,
//!   within the same timeout.

mod doh;
mod dot;
mod pad;
mod tls;

pub(crate) use tls::TlsTarget;

use super::mailbox::Exchange;
use super::pending::Question;
use crate::config::{Limits, UpstreamConfig, UpstreamTransport};
use crate::health::FailKind;
use crate::metrics::ShardStats;
use crate::wire::reader::Header;
use std::cell::{Cell, RefCell};
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tls::ConnectError;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// DoT connections per upstream and shard.
pub(crate) const DOT_CONNECTIONS: usize = 2;
/// First backoff after a connection failure; it doubles per failure in a row.
pub(crate) const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// Longest backoff.
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// At most one log line per upstream and shard this often about failed handshakes.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// When a link may try to connect again: exponential backoff with a cap, time
/// passed in.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    /// Connection failures in a row.
    failures: u32,
    /// No attempt before this, and what the queries meanwhile fail with.
    until: Option<(Instant, FailKind)>,
}

impl Backoff {
    /// Nothing to wait for (`Ok`), or the failure to report until `until`.
    pub(crate) fn check(&self, now: Instant) -> Result<(), FailKind> {
        match self.until {
            Some((until, kind)) if now < until => Err(kind),
            _ => Ok(()),
        }
    }

    /// A connection failed at `now`; returns the wait before the next attempt.
    pub(crate) fn failed(&mut self, kind: FailKind, now: Instant) -> Duration {
        let wait = BACKOFF_BASE
            .saturating_mul(1u32 << self.failures.min(16))
            .min(BACKOFF_CAP);
        self.failures = self.failures.saturating_add(1);
        self.until = Some((now + wait, kind));
        wait
    }

    /// A connection opened: the next failure waits [`BACKOFF_BASE`] again.
    pub(crate) fn succeeded(&mut self) {
        *self = Self::default();
    }
}

/// Why one attempt of a query failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttemptError {
    /// A failure to report.
    Fail(FailKind),
    /// The connection closed before the answer; `reused`: the query was sent on a
    /// connection opened before it (so a fresh one may well work).
    Lost { reused: bool },
}

impl From<FailKind> for AttemptError {
    fn from(kind: FailKind) -> Self {
        Self::Fail(kind)
    }
}

/// What the DoT and DoH links share: the TLS target, the backoff, and the
/// counting and logging of failed connections.
struct LinkShared {
    target: TlsTarget,
    /// ALPN the server must select (DoH: "h2"); DoT accepts none.
    require_alpn: Option<&'static [u8]>,
    label: String,
    timeout: Duration,
    idle_timeout: Duration,
    /// Queries in flight per connection.
    max_per_connection: usize,
    backoff: RefCell<Backoff>,
    /// When the last failure was logged, and how many went unlogged since.
    logged: Cell<Option<Instant>>,
    unlogged: Cell<u64>,
    stats: Rc<ShardStats>,
}

impl LinkShared {
    /// A TLS connection, unless the link is in backoff. A failure starts (or
    /// lengthens) the backoff, is counted and logged (rate-limited).
    async fn open(&self) -> Result<TlsStream<TcpStream>, FailKind> {
        self.backoff.borrow().check(Instant::now())?;
        let opened = match self.target.connect(self.timeout).await {
            Ok(stream) => match (self.require_alpn, stream.get_ref().1.alpn_protocol()) {
                (Some(want), got) if got != Some(want) => Err(ConnectError::Protocol(format!(
                    "the server did not select ALPN {:?}",
                    String::from_utf8_lossy(want)
                ))),
                _ => Ok(stream),
            },
            Err(e) => Err(e),
        };
        match opened {
            Ok(stream) => {
                self.backoff.borrow_mut().succeeded();
                Ok(stream)
            }
            Err(e) => {
                let kind = e.kind();
                let wait = self.backoff.borrow_mut().failed(kind, Instant::now());
                if let Some(reason) = e.tls_reason() {
                    // Per connection attempt (at most one per backoff), not per
                    // packet: straight into the registry.
                    metrics::counter!(
                        "tierdns_upstream_tls_failures_total",
                        "upstream" => self.label.clone(),
                        "reason" => reason
                    )
                    .increment(1);
                }
                self.log_failure(&e, wait);
                Err(kind)
            }
        }
    }

    fn log_failure(&self, e: &ConnectError, wait: Duration) {
        let now = Instant::now();
        if self
            .logged
            .get()
            .is_some_and(|at| now.duration_since(at) < LOG_EVERY)
        {
            self.unlogged.set(self.unlogged.get() + 1);
            return;
        }
        self.logged.set(Some(now));
        let unlogged = self.unlogged.replace(0);
        let addr = self.target.addr;
        let upstream = &self.label;
        if matches!(e, ConnectError::Certificate(_)) {
            tracing::warn!(%upstream, %addr, error = %e, retry_in = ?wait, unlogged,
                "encrypted upstream refused: its certificate does not verify (nothing sent)");
        } else {
            tracing::warn!(%upstream, %addr, error = %e, retry_in = ?wait, unlogged,
                "encrypted upstream: cannot connect");
        }
    }
}

/// What an encrypted upstream's links need that can fail to build: its roots
/// (`ca_file` read, or the system's), the TLS client config and the name the
/// certificate must carry. None for a plain upstream. Built once per start or
/// reload and handed to every shard, so all shards trust the same roots.
/// `i` is its position in the config, for the key named in the error.
pub(crate) fn prepare(i: usize, upstream: &UpstreamConfig) -> Result<Option<TlsTarget>, String> {
    let alpn: &[u8] = match &upstream.transport {
        UpstreamTransport::Plain => return Ok(None),
        UpstreamTransport::Tls => b"dot",
        UpstreamTransport::Https { .. } => b"h2",
    };
    TlsTarget::new(
        upstream.address,
        upstream.tls_name.as_deref(),
        upstream.ca_file.as_deref(),
        alpn,
    )
    .map(Some)
    .map_err(|(key, why)| format!("upstream[{i}].{key} ({}): {why}", upstream.label()))
}

/// The transport-specific half of a link.
enum LinkKind {
    Dot(dot::DotLink),
    Doh(doh::DohLink),
}

/// One shard's link to one encrypted upstream.
pub(crate) struct EncryptedLink {
    transport: LinkKind,
    shared: Rc<LinkShared>,
    /// The keys it was opened with, to tell on reload whether it still serves.
    keys: (UpstreamTransport, Option<String>, Option<PathBuf>, Duration),
}

impl EncryptedLink {
    /// The link for an encrypted upstream, None for a plain one. Reads `ca_file`
    /// (or the system's roots); opens no connection yet.
    #[cfg(test)]
    pub(crate) fn open(
        upstream: &UpstreamConfig,
        limits: &Limits,
        stats: &Rc<ShardStats>,
    ) -> io::Result<Option<Self>> {
        match prepare(0, upstream).map_err(io::Error::other)? {
            Some(target) => Self::with_target(upstream, target, limits, stats).map(Some),
            None => Ok(None),
        }
    }

    /// The link for an encrypted upstream over `target` (from [`prepare`]); opens
    /// no connection yet and reads no file.
    pub(crate) fn with_target(
        upstream: &UpstreamConfig,
        target: TlsTarget,
        limits: &Limits,
        stats: &Rc<ShardStats>,
    ) -> io::Result<Self> {
        let (require_alpn, connections) = match &upstream.transport {
            UpstreamTransport::Https { .. } => (Some(&b"h2"[..]), 1),
            _ => (None, DOT_CONNECTIONS),
        };
        let shared = Rc::new(LinkShared {
            target,
            require_alpn,
            label: upstream.label(),
            timeout: limits.upstream_timeout,
            idle_timeout: upstream.idle_timeout,
            max_per_connection: limits.max_upstream_pending.div_ceil(connections).max(1),
            backoff: RefCell::new(Backoff::default()),
            logged: Cell::new(None),
            unlogged: Cell::new(0),
            stats: Rc::clone(stats),
        });
        let transport = match &upstream.transport {
            UpstreamTransport::Https { path } => {
                LinkKind::Doh(doh::DohLink::new(upstream, path, Rc::clone(&shared))?)
            }
            _ => LinkKind::Dot(dot::DotLink::new(Rc::clone(&shared))),
        };
        Ok(Self {
            transport,
            shared,
            keys: Self::keys_of(upstream),
        })
    }

    fn keys_of(
        u: &UpstreamConfig,
    ) -> (UpstreamTransport, Option<String>, Option<PathBuf>, Duration) {
        (
            u.transport.clone(),
            u.tls_name.clone(),
            u.ca_file.clone(),
            u.idle_timeout,
        )
    }

    /// Whether this link is what `upstream` asks for (same transport, name, roots
    /// file and idle timeout), so a reload may keep it and its connections.
    pub(crate) fn serves(&self, upstream: &UpstreamConfig) -> bool {
        self.shared.target.addr == upstream.address && self.keys == Self::keys_of(upstream)
    }

    /// Sends `query` (any ID: replaced) padded, and waits for the reply to its
    /// question, within `limits.upstream_timeout` from now, connection setup
    /// included. A lost reused connection is retried once on a fresh one.
    /// `background` (no client waits): it may take only three quarters of a
    /// connection's room, as on UDP.
    pub(crate) async fn exchange(
        &self,
        query: &[u8],
        question: &Question,
        background: bool,
    ) -> Result<Exchange, FailKind> {
        let start = Instant::now();
        let deadline =
            tokio::time::Instant::from_std(crate::health::after(start, self.shared.timeout));
        let mut padded = pad::pad_query(query).map_err(|_| FailKind::Malformed)?;
        let mut fresh = false;
        loop {
            let attempt = async {
                match &self.transport {
                    LinkKind::Dot(link) => {
                        link.attempt(&mut padded, question, background, fresh).await
                    }
                    LinkKind::Doh(link) => {
                        link.attempt(&mut padded, question, background, fresh).await
                    }
                }
            };
            let outcome = tokio::time::timeout_at(deadline, attempt)
                .await
                .unwrap_or(Err(AttemptError::Fail(FailKind::Timeout)));
            match outcome {
                // TC=1 on a stream transport is broken (RFC 7766 has no truncation
                // over TCP) and must never lead to a retry in the clear.
                Ok(reply) if Header::parse(&reply).is_ok_and(|h| h.tc()) => {
                    return Err(FailKind::Malformed)
                }
                Ok(reply) => {
                    return Ok(Exchange {
                        reply,
                        rtt: start.elapsed(),
                        over_tcp: false,
                    })
                }
                Err(AttemptError::Lost { reused: true }) if !fresh => fresh = true,
                Err(AttemptError::Lost { .. }) => return Err(FailKind::Network),
                Err(AttemptError::Fail(kind)) => return Err(kind),
            }
        }
    }

    /// Connections open or opening now (for tests).
    #[cfg(test)]
    pub(crate) fn connections(&self) -> usize {
        match &self.transport {
            LinkKind::Dot(link) => link.connections(),
            LinkKind::Doh(link) => link.connections(),
        }
    }
}

/// A connection's setup (TCP, TLS, HTTP/2), run once by a task of its own, so
/// that a query that stops waiting (its flight has its answer) does not cancel
/// the handshake the next queries need; its result goes to every query waiting
/// on it. The task ends with the setup, which is bounded by the upstream timeout.
pub(crate) struct Setup<T> {
    result: RefCell<Option<Result<T, FailKind>>>,
    started: Cell<bool>,
    done: tokio::sync::Notify,
}

impl<T: Clone + 'static> Setup<T> {
    pub(crate) fn new() -> Rc<Self> {
        Rc::new(Self {
            result: RefCell::new(None),
            started: Cell::new(false),
            done: tokio::sync::Notify::new(),
        })
    }

    /// Starts `open` on the first call, then waits for its result.
    pub(crate) async fn get<F>(self: &Rc<Self>, open: impl FnOnce() -> F) -> Result<T, FailKind>
    where
        F: std::future::Future<Output = Result<T, FailKind>> + 'static,
    {
        if !self.started.replace(true) {
            let (me, opening) = (Rc::clone(self), open());
            tokio::task::spawn_local(async move {
                let result = opening.await;
                *me.result.borrow_mut() = Some(result);
                me.done.notify_waiters();
            });
        }
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(result) = &*self.result.borrow() {
                return result.clone();
            }
            notified.await;
        }
    }
}

/// What a DoT and a DoH connection share besides their [`Setup`]: whether it is
/// dead, whether it was established, when it was last active, and the idle rule
/// ([`ConnState::idle_for`]).
pub(crate) struct ConnState {
    /// Its handshake failed or it ended: no new query goes on it.
    dead: Cell<bool>,
    /// The handshake was done (queries on it from now on reuse it).
    established: Cell<bool>,
    /// Last query sent, reply received, stream begun or ended.
    last_active: Cell<Instant>,
}

impl ConnState {
    fn new() -> Self {
        Self {
            dead: Cell::new(false),
            established: Cell::new(false),
            last_active: Cell::new(Instant::now()),
        }
    }

    fn is_dead(&self) -> bool {
        self.dead.get()
    }

    /// No new query goes on it.
    fn kill(&self) {
        self.dead.set(true);
    }

    fn is_established(&self) -> bool {
        self.established.get()
    }

    /// The handshakes are done.
    fn established(&self) {
        self.established.set(true);
        self.touch();
    }

    fn touch(&self) {
        self.last_active.set(Instant::now());
    }

    /// Completes once nothing is in flight (`in_flight()` is 0) and the last
    /// activity was `idle` ago (checked when that would be), or the connection is
    /// dead.
    async fn idle_for(&self, idle: Duration, in_flight: impl Fn() -> usize) {
        loop {
            let at = if in_flight() == 0 {
                self.last_active.get() + idle
            } else {
                Instant::now() + idle
            };
            tokio::time::sleep_until(at.max(Instant::now() + Duration::from_millis(1)).into())
                .await;
            if self.is_dead() || (in_flight() == 0 && self.last_active.get().elapsed() >= idle) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
