//! Response codes by name (RFC 1035 4.1.1, RFC 6895 2.3): the one place their
//! numbers are written. The header holds the low four bits; EDNS carries the high
//! eight (an extended rcode such as BADVERS).

/// No error.
pub const NOERROR: u16 = 0;
/// The server could not read the query.
pub const FORMERR: u16 = 1;
/// The server failed to answer.
pub const SERVFAIL: u16 = 2;
/// The name does not exist.
pub const NXDOMAIN: u16 = 3;
/// The server does not do this kind of query.
pub const NOTIMP: u16 = 4;
/// The server will not answer (policy).
pub const REFUSED: u16 = 5;
/// Unsupported EDNS version (RFC 6891 6.1.3): an extended rcode.
pub const BADVERS: u16 = 16;
