//! Zero-copy reading and in-place patching of DNS messages.
//!
//! The hot path never builds a message: it reads the header, the one question and
//! the EDNS OPT record in place ([`reader`]), walks a response once to record where
//! its TTLs and OPT record sit ([`answer`]), and patches a copy of the stored bytes
//! for each client. Messages we originate (errors with EDE, merged answers) are built
//! with hickory-proto ([`build`]).
//!
//! Every count, length and pointer read from the wire is untrusted: names are capped
//! at 255 bytes, labels at 63, compression pointers at [`name::MAX_POINTER_HOPS`]
//! hops, and nothing here recurses or panics on any input.

pub mod answer;
pub mod build;
pub mod keepalive;
pub mod name;
pub mod rcode;
pub mod reader;
pub mod rtype;

/// Size of the fixed DNS header.
pub const HEADER_LEN: usize = 12;
/// Largest reply to a client that did not send EDNS (RFC 1035 section 4.2.1).
pub const PLAIN_UDP_MAX: usize = 512;
/// The EDNS UDP payload size tierdns advertises to upstreams and clients
/// (DNS flag day 2020).
pub const EDNS_UDP_SIZE: u16 = 1232;

/// Why a message could not be read. Small and `Copy`: no formatting on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The message ends before a field it announces.
    Truncated,
    /// A label longer than 63 bytes or a reserved label type.
    BadLabel,
    /// A name longer than 255 bytes.
    NameTooLong,
    /// More compression pointers than allowed, or a pointer that does not point back.
    BadPointer,
    /// A malformed or duplicated OPT record.
    BadOpt,
    /// More records than the message can hold.
    BadCount,
}

impl WireError {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::BadLabel => "bad_label",
            Self::NameTooLong => "name_too_long",
            Self::BadPointer => "bad_pointer",
            Self::BadOpt => "bad_opt",
            Self::BadCount => "bad_count",
        }
    }
}

/// The EDNS(0) facts of a message (RFC 6891).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// Requestor's UDP payload size, as sent (not clamped).
    pub udp_size: u16,
    /// The DO bit (RFC 3225).
    pub dnssec_ok: bool,
    /// EDNS version; only 0 is defined.
    pub version: u8,
}

/// What a stored or fresh answer must be patched with before it goes to one client.
#[derive(Debug, Clone, Copy)]
pub struct ReplyTarget<'a> {
    /// The client's message ID, echoed.
    pub id: u16,
    /// The client's header flags word: RD and CD are echoed; AD stays set only if
    /// the client set AD or DO (RFC 6840 section 5.8).
    pub flags: u16,
    /// The client's question name in wire form exactly as it sent it (its letter
    /// case), uncompressed. Same length as the stored answer's question name.
    pub qname: &'a [u8],
    /// The client's EDNS, if it sent an OPT record. Without it the reply carries no OPT.
    pub edns: Option<Edns>,
    /// Largest reply this client can take: 512 for plain UDP, its EDNS size (at least
    /// 512) for EDNS UDP, 65535 for TCP. Larger replies go out truncated with TC=1.
    pub max_size: usize,
}
