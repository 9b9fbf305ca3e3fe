//! The description and unit of every metric, registered once at startup.

/// Registers descriptions and units for every metric.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "tierdns_queries_total",
        "Client queries answered, by transport (udp, tcp, dot, doh) and rcode"
    );
    describe_counter!(
        "tierdns_cache_total",
        "Cache outcomes: hit, miss, stale, prefetch"
    );
    describe_counter!(
        "tierdns_drops_total",
        "Packets dropped without an answer (and connections closed before serving: tcp_client_limit, tcp_connection_limit, tls_handshake, tls_handshake_timeout), by reason"
    );
    describe_histogram!(
        "tierdns_client_latency_seconds",
        Unit::Seconds,
        "Time from receiving a query to sending its answer, by path (hit, miss)"
    );
    describe_counter!(
        "tierdns_upstream_queries_total",
        "Queries sent to each upstream"
    );
    describe_counter!(
        "tierdns_upstream_answers_total",
        "Good answers (NOERROR/NXDOMAIN) from each upstream"
    );
    describe_counter!(
        "tierdns_upstream_errors_total",
        "Failed answers (rcode, malformed, network) from each upstream"
    );
    describe_counter!(
        "tierdns_upstream_timeouts_total",
        "Upstream queries that timed out"
    );
    describe_counter!(
        "tierdns_upstream_tcp_retries_total",
        "Truncated UDP answers retried over TCP"
    );
    describe_counter!(
        "tierdns_upstream_tls_failures_total",
        "Failed TLS connections to encrypted upstreams (DoT, DoH), by reason: name_mismatch, unknown_issuer, expired, invalid_certificate (the certificate does not verify: nothing is sent), handshake, alpn"
    );
    describe_counter!(
        "tierdns_upstream_case_fallback_total",
        "Times a shard stopped using DNS 0x20 for an upstream seen not to repeat the query's letter case (after three folded replies in a row, or a failed re-probe); it probes again after 5 minutes"
    );
    describe_histogram!(
        "tierdns_upstream_rtt_seconds",
        Unit::Seconds,
        "Upstream round-trip time"
    );
    describe_gauge!(
        "tierdns_upstream_health",
        "Circuit state per upstream and shard: 0 closed, 1 degraded, 2 half-open, 3 open"
    );
    describe_counter!(
        "tierdns_tier_answered_total",
        "Flights whose first good answer came from the active tier or the stagger"
    );
    describe_counter!(
        "tierdns_stagger_launches_total",
        "Flights whose stagger started, by reason"
    );
    describe_counter!(
        "tierdns_flight_waiters_total",
        "Queries that joined a flight (coalesced) or found it full"
    );
    describe_counter!(
        "tierdns_background_merges_total",
        "Background merges written to the cache or superseded by a newer write"
    );
    describe_counter!(
        "tierdns_merged_addresses_total",
        "Addresses added to cached answers by background merges"
    );
    describe_counter!(
        "tierdns_upstream_extra_queries_total",
        "Upstream queries beyond the first of a flight, by purpose (active, hedge, completion)"
    );
    describe_counter!(
        "tierdns_background_shed_total",
        "Background completions stopped and prefetches skipped at limits.max_background"
    );
    describe_counter!(
        "tierdns_budget_refused_total",
        "Upstream queries the amplification budget refused, by purpose"
    );
    describe_counter!(
        "tierdns_flights_failed_total",
        "Flights with no good answer from any upstream"
    );
    describe_histogram!(
        "tierdns_flight_peak_in_flight",
        "Peak concurrent upstream queries per flight"
    );
    describe_histogram!(
        "tierdns_background_duration_seconds",
        Unit::Seconds,
        "Flight duration including background completion"
    );
    describe_counter!(
        "tierdns_tcp_connections_total",
        "Stream client connections accepted: TCP, DoT and DoH (their TLS handshake still to come)"
    );
    describe_counter!(
        "tierdns_tcp_closed_total",
        "Stream client connections (TCP, DoT, DoH) tierdns closed, by reason: evicted (the idlest of a full shard, for a new one), max_queries, max_lifetime, resets (DoH), query_rate (its prefix owed more than 2 s of ratelimit.stream_qps), reply_bytes (the heaviest holder of queued replies while the process was past limits.stream_reply_bytes)"
    );
    describe_counter!(
        "tierdns_access_denied_total",
        "Clients outside access.allow, by transport and action: refuse (REFUSED + EDE 18, per query) or drop (per UDP query; per TCP, DoT or DoH connection, closed at accept)"
    );
    describe_counter!(
        "tierdns_ratelimited_total",
        "UDP queries over their client prefix's rate limit, by action: truncate (empty TC=1 reply) or drop"
    );
    describe_counter!(
        "tierdns_stream_limited_total",
        "Stream clients over their prefix's ratelimit stream rates, by limit and transport: connections and tls_sessions (closed at accept), queries (delayed for their token)"
    );
    describe_counter!(
        "tierdns_ratelimit_evictions_total",
        "Client prefixes evicted from the rate limiter's table at ratelimit.max_tracked"
    );
    describe_gauge!(
        "tierdns_stream_reply_bytes",
        "Bytes of replies queued and not yet written on TCP and DoT client connections, all shards (limits.stream_reply_bytes)"
    );
    describe_gauge!(
        "tierdns_ratelimit_tracked",
        "Client prefixes tracked by the rate limiter"
    );
    describe_gauge!("tierdns_cache_entries", "Entries in the packet cache");
    describe_gauge!("tierdns_cache_bytes", "Bytes accounted to the packet cache");
    describe_gauge!(
        "tierdns_info",
        "Build and runtime facts in labels (version, io backend)"
    );
}
