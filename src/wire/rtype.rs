//! Record types (RFC 1035 3.2.2, RFC 6895 3.1) and EDNS option codes (RFC 6891 6.1.2)
//! by name: the one place their numbers are written on the hot path, where the
//! reader compares raw `u16`s rather than hickory's `RecordType`.

/// An IPv4 address.
pub const A: u16 = 1;
/// An alias (canonical name).
pub const CNAME: u16 = 5;
/// Start of authority: a negative answer's TTL (RFC 2308).
pub const SOA: u16 = 6;
/// An IPv6 address.
pub const AAAA: u16 = 28;
/// The EDNS pseudo-record (RFC 6891): never in a question.
pub const OPT: u16 = 41;
/// A DNSSEC signature.
pub const RRSIG: u16 = 46;
/// Transaction key (RFC 2930), a meta type: never in a question.
pub const TKEY: u16 = 249;
/// Transaction signature (RFC 8945), a meta type: never in a question.
pub const TSIG: u16 = 250;
/// Incremental zone transfer.
pub const IXFR: u16 = 251;
/// Full zone transfer.
pub const AXFR: u16 = 252;
/// Mailbox records (obsolete meta type).
pub const MAILB: u16 = 253;
/// Mail agent records (obsolete meta type).
pub const MAILA: u16 = 254;
/// Any type (RFC 8482: answered minimally).
pub const ANY: u16 = 255;

/// EDNS option: TCP keepalive (RFC 7828).
pub const OPTION_KEEPALIVE: u16 = 11;
/// EDNS option: padding (RFC 7830).
pub const OPTION_PADDING: u16 = 12;
/// EDNS option: Extended DNS Error (RFC 8914).
pub const OPTION_EDE: u16 = 15;
