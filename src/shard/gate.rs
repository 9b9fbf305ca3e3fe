//! The client gate: the first thing every listener does with a query, before it is
//! read. [`Shard::gate`] asks the shard's [`Policy`](crate::policy::Policy) about the
//! client's address (the access list, then over UDP the shared rate limiter) and
//! counts what it stops; [`Shard::gated_reply`] is the reply a stopped query gets.
//!
//! One function for every listener (UDP, TCP, DNS over TLS and over HTTPS call the
//! same two), so a client outside `access.allow` is treated alike on all of them.
//! A denied query is read only as far as its reply needs: a REFUSED echoes the
//! question and the client's EDNS; anything that cannot be read that far is dropped
//! (a denied client gets no FORMERR or NOTIMP either).
//!
//! The rate limit applies to UDP, to the REFUSED of denied clients as well (over
//! the limit they get nothing): its `truncate` reply sends a real client to TCP,
//! where a spoofed source cannot complete a handshake.
//!
//! Streams (TCP, DoT, DoH): a denied client is closed at accept, whatever the
//! action, before any TLS handshake ([`Shard::stream_accepts`]), and so is one over
//! its prefix's rate of new connections or, for DoT and DoH, of new TLS sessions
//! ([`crate::policy::stream_rates`]); its queries are paced to `stream_qps`
//! ([`Shard::stream_pace`]). On an open
//! connection every query goes through the gate again, so a reload that denies a
//! client takes effect on its open connections too (REFUSED, or the connection
//! closed for `drop`).

use super::Shard;
use crate::io::Backend;
use crate::policy::{AccessAction, AccessVerdict, RateLimitAction, RateVerdict, Reservation};
use crate::transport::Transport;
use crate::wire::build::{error_reply, truncated_reply, Ede, ErrorRcode};
use crate::wire::rcode;
use crate::wire::reader::QueryView;
use std::net::IpAddr;
use std::time::Instant;

/// What the gate says about one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Serve it.
    Pass,
    /// REFUSED with EDE 18 (Prohibited).
    Refuse,
    /// Over the rate limit: an empty reply with TC=1 (UDP only).
    Truncate,
    /// No answer (over TCP: close the connection).
    Drop,
}

impl<B: Backend> Shard<B> {
    /// The gate for one query from `client` at `now`: the access list, then, over
    /// UDP, the rate limit; counted when it stops the query. No allocation; one
    /// short partition lock when the rate limit is on.
    pub(crate) fn gate(&self, client: IpAddr, transport: Transport, now: Instant) -> Gate {
        let policy = self.policy.borrow();
        let limit = policy.ratelimit.filter(|_| transport == Transport::Udp);
        if let AccessVerdict::Deny(action) = policy.access.check(client) {
            drop(policy);
            self.stats.access_denied(transport, action);
            return match action {
                // A REFUSED is a reply like any other: over UDP it is rate
                // limited, so a spoofed source gets no unlimited reflection.
                // Over the limit it is dropped (a truncated reply would only
                // send the client to TCP, where it is closed at accept).
                AccessAction::Refuse => match limit {
                    Some(limit) => match self.shared.ratelimiter.check(&limit, client, now) {
                        RateVerdict::Pass => Gate::Refuse,
                        RateVerdict::Limit(_) => {
                            self.stats.ratelimited(RateLimitAction::Drop);
                            Gate::Drop
                        }
                    },
                    None => Gate::Refuse,
                },
                AccessAction::Drop => Gate::Drop,
            };
        }
        drop(policy);
        let Some(limit) = limit else {
            return Gate::Pass;
        };
        match self.shared.ratelimiter.check(&limit, client, now) {
            RateVerdict::Pass => Gate::Pass,
            RateVerdict::Limit(action) => {
                self.stats.ratelimited(action);
                match action {
                    RateLimitAction::Truncate => Gate::Truncate,
                    RateLimitAction::Drop => Gate::Drop,
                }
            }
        }
    }

    /// Whether a stream connection (TCP, DoT, DoH) from `client` is kept: false
    /// (counted, with its action) for any client outside `access.allow`. A denied
    /// client never holds a connection: closed at accept, before any TLS
    /// handshake, so it can neither take a connection slot nor evict an allowed
    /// client's connection, whatever the action (`refuse` is for UDP; a stream
    /// client learns as much from the close).
    ///
    /// Then the prefix's rates (`new_connections_per_second`, and for DoT and DoH
    /// `new_tls_sessions_per_second`): over either, closed at accept too, counted
    /// in `tierdns_stream_limited_total`.
    pub(crate) fn stream_accepts(&self, client: IpAddr, transport: Transport) -> bool {
        let policy = self.policy.borrow();
        if let AccessVerdict::Deny(action) = policy.access.check(client) {
            drop(policy);
            self.stats.access_denied(transport, action);
            return false;
        }
        let rates = policy.streams;
        drop(policy);
        let tls = matches!(transport, Transport::Dot | Transport::Doh);
        let limiters = &self.shared.stream_limiters;
        match limiters.accept(&rates, client, tls, Instant::now()) {
            Ok(()) => true,
            Err(limit) => {
                self.stats.stream_limited(limit, transport);
                false
            }
        }
    }

    /// The token of one stream query from `client` at `now` (`stream_qps`): now,
    /// after a wait (counted), or [`Reservation::Over`] when the prefix owes more
    /// than the longest wait (the caller answers the query, then closes the
    /// connection). No lock while the rate is off.
    pub(crate) fn stream_pace(
        &self,
        client: IpAddr,
        transport: Transport,
        now: Instant,
    ) -> Reservation {
        let rates = self.policy.borrow().streams;
        let r = self.shared.stream_limiters.query(&rates, client, now);
        if r != Reservation::Now {
            self.stats
                .stream_limited(crate::policy::StreamLimit::Queries, transport);
        }
        r
    }

    /// The reply a query the gate stopped gets, if any; counted as answered.
    pub(crate) fn gated_reply(
        &self,
        gate: Gate,
        packet: &[u8],
        transport: Transport,
    ) -> Option<Vec<u8>> {
        match gate {
            Gate::Pass | Gate::Drop => None,
            Gate::Refuse => {
                let q = QueryView::parse(packet).ok()?;
                self.stats.answered(transport, ErrorRcode::Refused.code());
                Some(error_reply(&q, ErrorRcode::Refused, Some(Ede::PROHIBITED)))
            }
            Gate::Truncate => {
                let q = QueryView::parse(packet).ok()?;
                self.stats.answered(transport, rcode::NOERROR);
                Some(truncated_reply(&q))
            }
        }
    }
}
