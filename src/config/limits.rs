//! `[limits]`: the bound of every queue, table and connection count.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[limits]`: every queue and table has a bound; what happens at it is documented here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Client queries being resolved at once per shard; past it, new misses are
    /// dropped and counted (`tierdns_drops_total{reason="overload"}`).
    pub max_client_in_flight: usize,
    /// Queries awaiting an answer per upstream per shard; past it, that upstream
    /// counts as failed for the flight.
    pub max_upstream_pending: usize,
    /// Connected UDP sockets per upstream per shard; each query leaves from one
    /// chosen at random, so a forger must guess the source port as well as the ID.
    pub upstream_sockets: usize,
    /// An upstream socket is replaced by a fresh one (a new random port) once this
    /// old; the old one closes when its last query is answered or times out.
    #[serde(with = "crate::duration")]
    pub upstream_socket_lifetime: Duration,
    /// Hard timeout of one upstream attempt (UDP, or the TCP retry).
    #[serde(with = "crate::duration")]
    pub upstream_timeout: Duration,
    /// Open TCP client connections per shard; at it, the idlest is closed for a new
    /// one (RFC 7766 6.2.3, `tierdns_tcp_closed_total{reason="evicted"}`).
    pub tcp_connections: usize,
    /// Close a TCP client connection idle this long (RFC 7766 section 6.2.3).
    #[serde(with = "crate::duration")]
    pub tcp_idle_timeout: Duration,
    /// Queries of one TCP connection answered concurrently; reading pauses past it.
    pub tcp_pipeline: usize,
    /// Stream connections (TCP, DoT, DoH) open at once from one client prefix
    /// (`ratelimit.ipv4_prefix`, `ratelimit.ipv6_prefix`), counted across all
    /// shards (unbound's `tcp-connection-limit`, dnsdist's
    /// `setMaxTCPConnectionsPerClient`); past it a new one is closed at once
    /// (`reason="tcp_client_limit"`). 0: no cap. Default 256: a pipelining
    /// forwarder or load balancer in front does not trip it.
    pub tcp_connections_per_client: usize,
    /// Queries read from one TCP connection; then it stops reading between two
    /// queries, answers what it read and closes
    /// (`tierdns_tcp_closed_total{reason="max_queries"}`). 0 (the default, as
    /// dnsdist and unbound): no cap. A client that pipelines may have sent more
    /// when the connection stops: those are not answered.
    pub tcp_max_queries: u64,
    /// Age of a TCP connection past which it stops reading between two queries,
    /// answers what it read and closes (`reason="max_lifetime"`). "0s" (the
    /// default): no cap.
    #[serde(with = "crate::duration")]
    pub tcp_max_lifetime: Duration,
    /// Bytes of framed replies queued and not yet written on all TCP and DoT
    /// connections of the process (unbound's `stream-wait-size`); past it each
    /// shard closes its connections holding the most
    /// (`tierdns_tcp_closed_total{reason="reply_bytes"}`). 0: no budget.
    pub stream_reply_bytes: usize,
    /// Idle upstream TCP connections kept per upstream per shard for reuse.
    pub upstream_tcp_idle: usize,
    /// Upstream TCP connections in use at once per upstream per shard (for
    /// truncated answers); past it the retry fails at once as local overload.
    pub upstream_tcp_max: usize,
    /// Clients that may wait on one flight besides its leader; past it, a query gets
    /// a stale answer if there is one, else is dropped (UDP) or answered SERVFAIL
    /// (TCP), counted (`reason="flight_full"`): it never starts a flight of its own.
    pub flight_max_waiters: usize,
    /// Background work per shard: flights still collecting after their first
    /// answer, and prefetches. Past it, a flight keeps its first answer and stops
    /// collecting, and a prefetch is skipped (`tierdns_background_shed_total`).
    /// Background queries also leave a quarter of `max_upstream_pending` to queries
    /// a client waits for.
    pub max_background: usize,
    /// Buffers kept in each shard's pool; more are allocated under load and freed.
    pub buffer_pool: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_client_in_flight: 4096,
            max_upstream_pending: 4096,
            upstream_sockets: 16,
            upstream_socket_lifetime: Duration::from_secs(60),
            upstream_timeout: Duration::from_secs(2),
            tcp_connections: 256,
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_pipeline: 32,
            tcp_connections_per_client: 256,
            tcp_max_queries: 0,
            tcp_max_lifetime: Duration::ZERO,
            stream_reply_bytes: 64 << 20,
            upstream_tcp_idle: 2,
            upstream_tcp_max: 16,
            flight_max_waiters: 1024,
            max_background: 1024,
            buffer_pool: 1024,
        }
    }
}
