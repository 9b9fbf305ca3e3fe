//! The label values of tierdns' metrics: each enum a label, its `as_str()` the
//! value, `ALL` the order of the shard counters' arrays.

use crate::wire::rcode;

/// Response codes counted per transport (label `rcode`): the ones a forwarder
/// sends, and the rest as `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcodeLabel {
    /// NOERROR.
    NoError = 0,
    /// FORMERR.
    FormErr = 1,
    /// SERVFAIL.
    ServFail = 2,
    /// NXDOMAIN.
    NxDomain = 3,
    /// NOTIMP.
    NotImp = 4,
    /// REFUSED.
    Refused = 5,
    /// BADVERS (an extended rcode).
    BadVers = 6,
    /// Any other.
    Other = 7,
}

impl RcodeLabel {
    /// Every label, in the order of the shard counters' arrays.
    pub const ALL: [Self; 8] = [
        Self::NoError,
        Self::FormErr,
        Self::ServFail,
        Self::NxDomain,
        Self::NotImp,
        Self::Refused,
        Self::BadVers,
        Self::Other,
    ];

    /// The label of a (possibly extended) rcode.
    pub fn of(code: u16) -> Self {
        match code {
            rcode::NOERROR => Self::NoError,
            rcode::FORMERR => Self::FormErr,
            rcode::SERVFAIL => Self::ServFail,
            rcode::NXDOMAIN => Self::NxDomain,
            rcode::NOTIMP => Self::NotImp,
            rcode::REFUSED => Self::Refused,
            rcode::BADVERS => Self::BadVers,
            _ => Self::Other,
        }
    }

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoError => "noerror",
            Self::FormErr => "formerr",
            Self::ServFail => "servfail",
            Self::NxDomain => "nxdomain",
            Self::NotImp => "notimp",
            Self::Refused => "refused",
            Self::BadVers => "badvers",
            Self::Other => "other",
        }
    }
}

/// Why a packet was dropped without an answer (label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than a DNS header.
    Short,
    /// A response (QR=1) sent to the client port.
    Response,
    /// Too many client queries in flight on the shard.
    Overload,
    /// The flight for the query's name already had `flight_max_waiters` waiters
    /// (and no stale answer was there to serve).
    FlightFull,
    /// A reply from an upstream with an unknown ID or a different question.
    UpstreamMismatch,
    /// An upstream reply for a query that had stopped waiting (timed out, or its
    /// flight had its answer): late, not forged.
    UpstreamLate,
    /// An upstream reply that repeats a DNS 0x20 query's question in another letter
    /// case.
    UpstreamCaseMismatch,
    /// A reply from an upstream that could not be read.
    UpstreamMalformed,
    /// A TCP client connection refused at the connection limit.
    TcpConnectionLimit,
    /// A TCP frame that could not be answered (bad length, closed early).
    TcpFrame,
    /// The answer could not be sent.
    SendError,
    /// An upstream query tierdns had no room for (pending table or upstream TCP
    /// connections full).
    UpstreamOverload,
    /// A client UDP datagram longer than the 2048-byte receive buffer.
    Oversize,
    /// A TCP client connection closed at accept: its address had
    /// `tcp_connections_per_client` open already.
    TcpClientLimit,
    /// A DoT or DoH connection whose TLS handshake failed.
    TlsHandshake,
    /// A DoT or DoH connection whose TLS handshake took longer than its
    /// `handshake_timeout`.
    TlsHandshakeTimeout,
    /// A query that waited on a flight longer than a flight can take (the
    /// waiter's own bound): answered stale or SERVFAIL.
    FlightWait,
}

impl DropReason {
    pub(super) const ALL: [Self; 17] = [
        Self::Short,
        Self::Response,
        Self::Overload,
        Self::FlightFull,
        Self::UpstreamMismatch,
        Self::UpstreamLate,
        Self::UpstreamCaseMismatch,
        Self::UpstreamMalformed,
        Self::TcpConnectionLimit,
        Self::TcpFrame,
        Self::SendError,
        Self::UpstreamOverload,
        Self::Oversize,
        Self::TcpClientLimit,
        Self::TlsHandshake,
        Self::TlsHandshakeTimeout,
        Self::FlightWait,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Short => "short",
            Self::Response => "response",
            Self::Overload => "overload",
            Self::FlightFull => "flight_full",
            Self::UpstreamMismatch => "upstream_mismatch",
            Self::UpstreamLate => "upstream_late",
            Self::UpstreamCaseMismatch => "upstream_case_mismatch",
            Self::UpstreamMalformed => "upstream_malformed",
            Self::TcpConnectionLimit => "tcp_connection_limit",
            Self::TcpFrame => "tcp_frame",
            Self::SendError => "send_error",
            Self::UpstreamOverload => "upstream_overload",
            Self::Oversize => "oversize",
            Self::TcpClientLimit => "tcp_client_limit",
            Self::TlsHandshake => "tls_handshake",
            Self::TlsHandshakeTimeout => "tls_handshake_timeout",
            Self::FlightWait => "flight_wait",
        }
    }
}

/// Why tierdns closed a TCP client connection that was still usable (label
/// `reason` of `tierdns_tcp_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpClose {
    /// The idlest connection of a full shard, closed for a new one (RFC 7766 6.2.3).
    Evicted = 0,
    /// `limits.tcp_max_queries` read.
    MaxQueries = 1,
    /// Open `limits.tcp_max_lifetime`.
    MaxLifetime = 2,
    /// A DoH connection whose client reset too many of the requests it had sent
    /// (streams reset after they were accepted; HTTP/2 GOAWAY, then closed).
    Resets = 3,
    /// Its client prefix owed more than the longest wait of `ratelimit.stream_qps`.
    QueryRate = 4,
    /// It held the most queued reply bytes of its shard while the process was
    /// past `limits.stream_reply_bytes`.
    ReplyBytes = 5,
}

impl TcpClose {
    pub(super) const ALL: [Self; 6] = [
        Self::Evicted,
        Self::MaxQueries,
        Self::MaxLifetime,
        Self::Resets,
        Self::QueryRate,
        Self::ReplyBytes,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Evicted => "evicted",
            Self::MaxQueries => "max_queries",
            Self::MaxLifetime => "max_lifetime",
            Self::Resets => "resets",
            Self::QueryRate => "query_rate",
            Self::ReplyBytes => "reply_bytes",
        }
    }
}

/// Cache outcomes as seen by clients (label `result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Fresh answer from the cache.
    Hit = 0,
    /// Not in the cache (or expired).
    Miss = 1,
    /// Expired answer served because upstreams failed (RFC 8767).
    Stale = 2,
    /// Background refresh of a popular entry near expiry.
    Prefetch = 3,
}

impl CacheResult {
    /// Every result, in the order of the shard counters' array.
    pub const ALL: [Self; 4] = [Self::Hit, Self::Miss, Self::Stale, Self::Prefetch];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Stale => "stale",
            Self::Prefetch => "prefetch",
        }
    }
}
