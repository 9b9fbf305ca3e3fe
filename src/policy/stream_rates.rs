//! Rates per client prefix on the stream listeners (TCP, DoT, DoH), from the
//! `[ratelimit]` section's stream keys, as dnsdist's
//! `setMaxTCPConnectionRatePerClient`, `setMaxTLSNewSessionRatePerClient` and
//! `MaxQPSIPRule`:
//!
//! - **New connections** (`new_connections_per_second`, every stream transport) and
//!   **new TLS sessions** (`new_tls_sessions_per_second`, DoT and DoH: every
//!   connection starts a full handshake, tierdns resumes none): over either, a
//!   connection is closed at accept, before any handshake. A bucket holds one
//!   second's worth.
//! - **Queries** (`stream_qps`, `stream_burst`; TCP, DoT and DoH together): a query
//!   over the rate is delayed, never failed ([`RateLimiter::reserve`]): the
//!   connection reads nothing more until its token is there, so the client's own
//!   pipeline backs up (TCP flow control), and a DoH request is answered that much
//!   later. A prefix that owes more than [`MAX_QUERY_WAIT`] of its rate (many
//!   connections all pipelining) has the connection of the query that found it so
//!   closed once that query is answered.
//!
//! Each kind has its own table ([`StreamLimiters`], shared by every shard like
//! the UDP one), on the section's prefixes (`ipv4_prefix`, `ipv6_prefix`) and bound
//! (`max_tracked`). The parameters ([`StreamRates`]) are part of the shard's
//! [`Policy`](super::Policy), so a reload applies new rates at once.

use super::ratelimit::{RateLimit, RateLimitConfig, RateLimiter, Reservation};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Longest a stream query waits for its prefix's token. A DNS client gives up
/// after a few seconds; an answer later than that is of no use to it.
pub const MAX_QUERY_WAIT: Duration = Duration::from_secs(2);

/// Which stream rate stopped or slowed a client (label `limit` of
/// `tierdns_stream_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamLimit {
    /// `new_connections_per_second`: a connection closed at accept.
    Connections = 0,
    /// `new_tls_sessions_per_second`: a DoT or DoH connection closed at accept.
    TlsSessions = 1,
    /// `stream_qps`: a query delayed for its token.
    Queries = 2,
}

impl StreamLimit {
    /// Every kind, in label order.
    pub const ALL: [Self; 3] = [Self::Connections, Self::TlsSessions, Self::Queries];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::TlsSessions => "tls_sessions",
            Self::Queries => "queries",
        }
    }
}

/// The stream rates in force, from a validated `[ratelimit]`; None where off.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StreamRates {
    /// `new_connections_per_second`.
    pub connections: Option<RateLimit>,
    /// `new_tls_sessions_per_second`.
    pub tls_sessions: Option<RateLimit>,
    /// `stream_qps` and `stream_burst`.
    pub queries: Option<RateLimit>,
}

impl StreamRates {
    /// The rates a section asks for.
    pub fn new(config: &RateLimitConfig) -> Self {
        Self {
            connections: RateLimit::with_rate(config, config.new_connections_per_second, 0),
            tls_sessions: RateLimit::with_rate(config, config.new_tls_sessions_per_second, 0),
            queries: RateLimit::with_rate(config, config.stream_qps, config.stream_burst),
        }
    }
}

/// The shared tables of the stream rates, one per kind.
#[derive(Debug, Default)]
pub struct StreamLimiters {
    connections: RateLimiter,
    tls_sessions: RateLimiter,
    queries: RateLimiter,
}

impl StreamLimiters {
    /// Whether a new connection from `client` at `now` is within its prefix's
    /// rates: the connection rate, then for a TLS one (`tls`) the session rate.
    /// Err names the rate it is over.
    pub fn accept(
        &self,
        rates: &StreamRates,
        client: IpAddr,
        tls: bool,
        now: Instant,
    ) -> Result<(), StreamLimit> {
        let over = |table: &RateLimiter, limit: Option<RateLimit>| {
            limit.is_some_and(|l| {
                table.reserve(&l, client, now, Duration::ZERO) == Reservation::Over
            })
        };
        if over(&self.connections, rates.connections) {
            return Err(StreamLimit::Connections);
        }
        if tls && over(&self.tls_sessions, rates.tls_sessions) {
            return Err(StreamLimit::TlsSessions);
        }
        Ok(())
    }

    /// One stream query from `client` at `now`: its token now, after a wait, or
    /// [`Reservation::Over`] past [`MAX_QUERY_WAIT`]. [`Reservation::Now`] when
    /// `stream_qps` is off.
    pub fn query(&self, rates: &StreamRates, client: IpAddr, now: Instant) -> Reservation {
        match &rates.queries {
            Some(limit) => self.queries.reserve(limit, client, now, MAX_QUERY_WAIT),
            None => Reservation::Now,
        }
    }

    /// Prefixes tracked now, all kinds.
    pub fn tracked(&self) -> usize {
        self.connections.tracked() + self.tls_sessions.tracked() + self.queries.tracked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rates(f: impl FnOnce(&mut RateLimitConfig)) -> StreamRates {
        let mut c = RateLimitConfig::default();
        f(&mut c);
        c.validate().unwrap();
        StreamRates::new(&c)
    }

    #[test]
    fn off_by_default() {
        let r = rates(|_| {});
        assert_eq!(r, StreamRates::default());
        let t = StreamLimiters::default();
        let now = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(t.accept(&r, ip("192.0.2.1"), true, now), Ok(()));
            assert_eq!(t.query(&r, ip("192.0.2.1"), now), Reservation::Now);
        }
        assert_eq!(t.tracked(), 0, "nothing tracked while off");
    }

    #[test]
    fn connections_past_the_rate_are_refused_per_prefix_and_refill() {
        let r = rates(|c| c.new_connections_per_second = 2);
        let t = StreamLimiters::default();
        let t0 = Instant::now();
        let accept = |client, now| t.accept(&r, ip(client), false, now);
        assert_eq!(accept("192.0.2.1", t0), Ok(()));
        assert_eq!(accept("192.0.2.7", t0), Ok(()), "same /24");
        assert_eq!(
            accept("192.0.2.1", t0),
            Err(StreamLimit::Connections),
            "a third within the second"
        );
        assert_eq!(accept("192.0.3.1", t0), Ok(()), "another /24");
        // Half a second: one more.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(accept("192.0.2.1", t1), Ok(()));
        assert_eq!(accept("192.0.2.1", t1), Err(StreamLimit::Connections));
        // A refused connection took nothing: the bucket is not in debt.
        let t2 = t1 + Duration::from_millis(500);
        assert_eq!(accept("192.0.2.1", t2), Ok(()));
    }

    #[test]
    fn tls_sessions_have_their_own_rate_and_only_tls_counts_against_it() {
        let r = rates(|c| {
            c.new_connections_per_second = 100;
            c.new_tls_sessions_per_second = 1;
        });
        let t = StreamLimiters::default();
        let now = Instant::now();
        assert_eq!(t.accept(&r, ip("192.0.2.1"), true, now), Ok(()));
        assert_eq!(
            t.accept(&r, ip("192.0.2.1"), true, now),
            Err(StreamLimit::TlsSessions)
        );
        for _ in 0..10 {
            assert_eq!(
                t.accept(&r, ip("192.0.2.1"), false, now),
                Ok(()),
                "plain TCP"
            );
        }
        let later = now + Duration::from_secs(1);
        assert_eq!(t.accept(&r, ip("192.0.2.1"), true, later), Ok(()));
    }

    #[test]
    fn queries_over_the_rate_wait_in_turn_until_the_bound() {
        let r = rates(|c| {
            c.stream_qps = 10;
            c.stream_burst = 2;
        });
        let t = StreamLimiters::default();
        let t0 = Instant::now();
        let q = |client, now| t.query(&r, ip(client), now);
        assert_eq!(q("192.0.2.1", t0), Reservation::Now);
        assert_eq!(q("192.0.2.1", t0), Reservation::Now);
        // The third waits one token's refill (100 ms), the fourth two: in turn.
        let ms = |n| Reservation::After(Duration::from_millis(n));
        let close = |got: Reservation, want: Reservation| match (got, want) {
            (Reservation::After(a), Reservation::After(b)) => {
                a.abs_diff(b) < Duration::from_micros(10)
            }
            (a, b) => a == b,
        };
        assert!(close(q("192.0.2.1", t0), ms(100)));
        assert!(
            close(q("192.0.2.9", t0), ms(200)),
            "same prefix, same queue"
        );
        assert_eq!(q("198.51.100.1", t0), Reservation::Now, "another prefix");
        // 150 ms later the debt is half a token: the next waits 150 ms more.
        let t1 = t0 + Duration::from_millis(150);
        assert!(close(q("192.0.2.1", t1), ms(150)));
        // Up to 2 s of debt at 10 qps: 20 tokens; past it, Over and nothing taken.
        let mut n = 0;
        while let Reservation::After(_) = q("192.0.2.1", t1) {
            n += 1;
            assert!(n < 100);
        }
        assert_eq!(n, 18, "waits of 250 ms ... 1950 ms");
        assert_eq!(q("192.0.2.1", t1), Reservation::Over);
        // The debt (19.5 tokens) is paid at qps: two seconds later the bucket
        // holds half a token, and the next query waits for the other half.
        let t2 = t1 + MAX_QUERY_WAIT;
        assert!(close(q("192.0.2.1", t2), ms(50)));
    }
}
