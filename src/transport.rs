//! The transports a client query arrives on. Everything after the listener is
//! shared by the four (the gate, the first pass, the cache, the flights); what
//! differs is said by this type: the reply's size limit and truncation (UDP only),
//! and the label the counters are kept under.

/// Transports a query can arrive on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP.
    Udp = 0,
    /// TCP.
    Tcp = 1,
    /// DNS over TLS (RFC 7858).
    Dot = 2,
    /// DNS over HTTPS (RFC 8484).
    Doh = 3,
}

impl Transport {
    /// Every transport, in label order.
    pub const ALL: [Self; 4] = [Self::Udp, Self::Tcp, Self::Dot, Self::Doh];

    /// Its name in metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Dot => "dot",
            Self::Doh => "doh",
        }
    }

    /// Whether replies go over a stream (anything but UDP): no UDP size limit,
    /// no truncation.
    pub fn is_stream(self) -> bool {
        self != Self::Udp
    }
}
