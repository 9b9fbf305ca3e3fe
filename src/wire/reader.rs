//! Reading a client query in place: the header, the one question and the EDNS OPT
//! record, with no allocation.
//!
//! This module owns the decision of whether a datagram is a query tierdns can answer
//! and, if not, which error it deserves ([`Reject`]). The checks run in this order,
//! and the first one that fails decides:
//!
//! 1. shorter than a header: dropped ([`Discard::Short`]);
//! 2. QR=1: dropped ([`Discard::Response`]), we never answer responses (no loops);
//! 3. opcode other than QUERY: [`Reject::NotImp`], whatever the counts say;
//! 4. QDCOUNT other than 1, a broken, truncated or compressed question name, a
//!    missing QTYPE/QCLASS, a record that overruns the message, an OPT that is broken,
//!    duplicated, not owned by the root or outside the additional section:
//!    [`Reject::FormErr`];
//! 5. EDNS version above 0: [`Reject::BadVers`] (RFC 6891 section 6.1.3).
//!
//! Invariants of a [`QueryView`] that parsed: `qname` is `msg[12..qname_end]`,
//! uncompressed, at most [`MAX_NAME_LEN`] bytes and ending with the root label;
//! [`QueryView::qname_lower`] is the same name ASCII-lowercased, byte for byte the
//! same length; `question_end <= msg.len()`. Bytes after the last record announced by
//! the header are tolerated and ignored.
//!
//! Every count and length is untrusted: the record walk stops at the first record
//! that does not fit, and since each record takes at least 11 bytes the walk is
//! bounded by the message size, not by the counts.

use super::name::{skip_name, MAX_NAME_LEN};
use super::{rtype, Edns, ReplyTarget, WireError, HEADER_LEN, PLAIN_UDP_MAX};

/// Record type of the EDNS OPT pseudo-record (RFC 6891).
/// Smallest resource record: root owner (1), type, class, TTL, rdlength (10).
const MIN_RR_LEN: usize = 11;

/// The fixed 12-byte DNS header (RFC 1035 section 4.1.1), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message ID.
    pub id: u16,
    /// The second 16 bits: QR, opcode, AA, TC, RD, RA, Z, AD, CD, RCODE.
    pub flags: u16,
    /// Number of questions.
    pub qdcount: u16,
    /// Number of answer records.
    pub ancount: u16,
    /// Number of authority records.
    pub nscount: u16,
    /// Number of additional records (the OPT record included).
    pub arcount: u16,
}

impl Header {
    /// Decodes the header at the start of `msg`; [`WireError::Truncated`] if `msg` is
    /// shorter than [`HEADER_LEN`].
    pub fn parse(msg: &[u8]) -> Result<Self, WireError> {
        let Some(h) = msg.get(..HEADER_LEN) else {
            return Err(WireError::Truncated);
        };
        let word = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
        Ok(Self {
            id: word(0),
            flags: word(2),
            qdcount: word(4),
            ancount: word(6),
            nscount: word(8),
            arcount: word(10),
        })
    }

    /// QR: the message is a response.
    pub fn qr(&self) -> bool {
        self.flags & 0x8000 != 0
    }

    /// The 4-bit opcode (0 = QUERY).
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0x0F) as u8
    }

    /// AA: authoritative answer.
    pub fn aa(&self) -> bool {
        self.flags & 0x0400 != 0
    }

    /// TC: truncated.
    pub fn tc(&self) -> bool {
        self.flags & 0x0200 != 0
    }

    /// RD: recursion desired.
    pub fn rd(&self) -> bool {
        self.flags & 0x0100 != 0
    }

    /// RA: recursion available.
    pub fn ra(&self) -> bool {
        self.flags & 0x0080 != 0
    }

    /// AD: authentic data (RFC 4035, RFC 6840).
    pub fn ad(&self) -> bool {
        self.flags & 0x0020 != 0
    }

    /// CD: checking disabled (RFC 4035).
    pub fn cd(&self) -> bool {
        self.flags & 0x0010 != 0
    }

    /// The low 4 bits of the response code, as carried in the header (the high 8 bits
    /// of an extended rcode live in the OPT record).
    pub fn rcode(&self) -> u8 {
        (self.flags & 0x000F) as u8
    }
}

/// Why a datagram gets no answer at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// Shorter than a DNS header: nothing to echo an ID into.
    Short,
    /// QR=1: a response, never answered (avoids reflection loops).
    Response,
}

impl Discard {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Short => "short",
            Self::Response => "response",
        }
    }
}

/// Why a message is not a query tierdns will look up, and what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not answerable: drop silently.
    Drop(Discard),
    /// Answer FORMERR: wrong QDCOUNT, broken question or records, broken OPT.
    FormErr,
    /// Answer NOTIMP: opcode other than QUERY.
    NotImp,
    /// Answer BADVERS: EDNS version above 0 (RFC 6891 section 6.1.3).
    BadVers,
}

impl Reject {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drop(reason) => reason.as_str(),
            Self::FormErr => "formerr",
            Self::NotImp => "notimp",
            Self::BadVers => "badvers",
        }
    }
}

/// A client query read in place: borrowed from the datagram, plus the lowercased
/// question name in a fixed array (the cache key's name, no allocation).
#[derive(Debug, Clone, Copy)]
pub struct QueryView<'a> {
    /// The whole message as received.
    pub msg: &'a [u8],
    /// Its header.
    pub header: Header,
    /// The question name exactly as sent: wire form, uncompressed, the client's letter
    /// case; `msg[12..12 + qname.len()]`.
    pub qname: &'a [u8],
    qname_lower: [u8; MAX_NAME_LEN],
    qname_lower_len: usize,
    /// QTYPE of the question.
    pub qtype: u16,
    /// QCLASS of the question.
    pub qclass: u16,
    /// Offset just past QTYPE/QCLASS: the question is `msg[12..question_end]`.
    pub question_end: usize,
    /// The client's EDNS, if it sent an OPT record.
    pub edns: Option<Edns>,
}

impl<'a> QueryView<'a> {
    /// Reads a client query; see the module doc for the order of checks.
    pub fn parse(msg: &'a [u8]) -> Result<Self, Reject> {
        let view = Self::parse_any_version(msg)?;
        match view.edns {
            Some(edns) if edns.version > 0 => Err(Reject::BadVers),
            _ => Ok(view),
        }
    }

    /// As [`parse`](Self::parse) but accepts any EDNS version: what the BADVERS reply
    /// is built from.
    pub(crate) fn parse_any_version(msg: &'a [u8]) -> Result<Self, Reject> {
        let header = Header::parse(msg).map_err(|_| Reject::Drop(Discard::Short))?;
        if header.qr() {
            return Err(Reject::Drop(Discard::Response));
        }
        if header.opcode() != 0 {
            return Err(Reject::NotImp);
        }
        if header.qdcount != 1 {
            return Err(Reject::FormErr);
        }

        let mut qname_lower = [0u8; MAX_NAME_LEN];
        let qname_end = read_question_name(msg, &mut qname_lower).map_err(|_| Reject::FormErr)?;
        let qname_lower_len = qname_end - HEADER_LEN;
        let (qtype, qclass, question_end) = match msg.get(qname_end..qname_end + 4) {
            Some(&[t0, t1, c0, c1]) => (
                u16::from_be_bytes([t0, t1]),
                u16::from_be_bytes([c0, c1]),
                qname_end + 4,
            ),
            _ => return Err(Reject::FormErr),
        };
        let qname = msg.get(HEADER_LEN..qname_end).ok_or(Reject::FormErr)?;

        let edns = read_records(msg, question_end, &header).map_err(|_| Reject::FormErr)?;

        Ok(Self {
            msg,
            header,
            qname,
            qname_lower,
            qname_lower_len,
            qtype,
            qclass,
            question_end,
            edns,
        })
    }

    /// The question name, wire form, ASCII-lowercased: the cache key's name and what
    /// goes upstream.
    pub fn qname_lower(&self) -> &[u8] {
        self.qname_lower
            .get(..self.qname_lower_len)
            .unwrap_or(&self.qname_lower)
    }

    /// The DO bit of the client's EDNS (false without EDNS).
    pub fn dnssec_ok(&self) -> bool {
        self.edns.is_some_and(|e| e.dnssec_ok)
    }

    /// What an answer to this query must be patched with: the client's ID, question
    /// name bytes and EDNS, and the largest reply it takes: 65535 over TCP, else its
    /// EDNS UDP size (values below 512 count as 512, RFC 6891 section 6.2.3), else 512.
    pub fn reply_target(&self, tcp: bool) -> ReplyTarget<'a> {
        let max_size = match (tcp, self.edns) {
            (true, _) => usize::from(u16::MAX),
            (false, Some(edns)) => usize::from(edns.udp_size).max(PLAIN_UDP_MAX),
            (false, None) => PLAIN_UDP_MAX,
        };
        ReplyTarget {
            id: self.header.id,
            flags: self.header.flags,
            qname: self.qname,
            edns: self.edns,
            max_size,
        }
    }
}

/// Reads the question name at offset 12, refusing compression pointers, and writes it
/// lowercased into `out`. Returns the offset just past the name.
fn read_question_name(msg: &[u8], out: &mut [u8; MAX_NAME_LEN]) -> Result<usize, WireError> {
    let mut pos = HEADER_LEN;
    let mut written = 0usize;
    loop {
        let len = *msg.get(pos).ok_or(WireError::Truncated)? as usize;
        if len & 0xC0 == 0xC0 {
            return Err(WireError::BadPointer);
        }
        if len & 0xC0 != 0 {
            return Err(WireError::BadLabel);
        }
        let label = msg
            .get(pos + 1..pos + 1 + len)
            .ok_or(WireError::Truncated)?;
        let dst = out
            .get_mut(written..written + 1 + len)
            .ok_or(WireError::NameTooLong)?;
        if let Some((first, rest)) = dst.split_first_mut() {
            *first = len as u8;
            for (d, s) in rest.iter_mut().zip(label) {
                *d = s.to_ascii_lowercase();
            }
        }
        written += 1 + len;
        pos += 1 + len;
        if len == 0 {
            return Ok(pos);
        }
    }
}

/// Walks the answer, authority and additional sections from `pos`, every record
/// bounded by the message, and returns the EDNS facts of the one OPT record, if any.
fn read_records(msg: &[u8], mut pos: usize, header: &Header) -> Result<Option<Edns>, WireError> {
    let non_additional = usize::from(header.ancount) + usize::from(header.nscount);
    let total = non_additional + usize::from(header.arcount);
    // Fail fast on counts the message cannot possibly hold.
    if total.saturating_mul(MIN_RR_LEN) > msg.len().saturating_sub(pos) {
        return Err(WireError::BadCount);
    }
    let mut edns = None;
    for index in 0..total {
        let owner = pos;
        let name_end = skip_name(msg, pos)?;
        let Some(&[t0, t1, c0, c1, l0, l1, l2, l3, r0, r1]) = msg.get(name_end..name_end + 10)
        else {
            return Err(WireError::Truncated);
        };
        let rtype = u16::from_be_bytes([t0, t1]);
        let rdata_start = name_end + 10;
        let rdata_end = rdata_start + usize::from(u16::from_be_bytes([r0, r1]));
        let rdata = msg
            .get(rdata_start..rdata_end)
            .ok_or(WireError::Truncated)?;
        if rtype == rtype::OPT {
            let in_additional = index >= non_additional;
            let root_owner = name_end == owner + 1;
            if !in_additional || !root_owner || edns.is_some() {
                return Err(WireError::BadOpt);
            }
            check_options(rdata)?;
            let ttl = u32::from_be_bytes([l0, l1, l2, l3]);
            edns = Some(Edns {
                udp_size: u16::from_be_bytes([c0, c1]),
                dnssec_ok: ttl & 0x8000 != 0,
                version: (ttl >> 16) as u8,
            });
        }
        pos = rdata_end;
    }
    Ok(edns)
}

/// Checks that OPT rdata is a whole number of options (code, length, data), each
/// within the rdata.
fn check_options(mut rdata: &[u8]) -> Result<(), WireError> {
    while !rdata.is_empty() {
        let Some(&[_, _, l0, l1]) = rdata.get(..4) else {
            return Err(WireError::BadOpt);
        };
        let end = 4 + usize::from(u16::from_be_bytes([l0, l1]));
        rdata = rdata.get(end..).ok_or(WireError::BadOpt)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a query: header with `flags` and counts, the question, then `rest`
    /// verbatim (records).
    pub(crate) fn query(
        id: u16,
        flags: u16,
        counts: [u16; 4],
        qname: &[u8],
        qtype: u16,
        rest: &[u8],
    ) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        for c in counts {
            m.extend_from_slice(&c.to_be_bytes());
        }
        m.extend_from_slice(qname);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(rest);
        m
    }

    /// An OPT record with the given UDP size, TTL and rdata.
    pub(crate) fn opt(udp: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8];
        r.extend_from_slice(&41u16.to_be_bytes());
        r.extend_from_slice(&udp.to_be_bytes());
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(rdata);
        r
    }

    const NAME: &[u8] = b"\x03WwW\x07ExAmple\x03COM\x00";

    /// A well-formed EDNS query with DO=1 for `WwW.ExAmple.COM. A`.
    pub(crate) fn edns_query() -> Vec<u8> {
        query(
            0xBEEF,
            0x0110,
            [1, 0, 0, 1],
            NAME,
            1,
            &opt(4096, 0x8000, &[]),
        )
    }

    #[test]
    fn header_fields_and_flags() {
        let h = Header::parse(&[0x12, 0x34, 0x85, 0xB3, 0, 1, 0, 2, 0, 3, 0, 4]).unwrap();
        assert_eq!(h.id, 0x1234);
        assert_eq!((h.qdcount, h.ancount, h.nscount, h.arcount), (1, 2, 3, 4));
        assert!(h.qr() && h.aa() && h.rd() && h.ra() && h.ad() && h.cd());
        assert!(!h.tc());
        assert_eq!(h.opcode(), 0);
        assert_eq!(h.rcode(), 3);
        let h = Header::parse(&[0, 0, 0x2A, 0x05, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(h.opcode(), 5);
        assert!(h.tc() && !h.qr() && !h.rd() && !h.ra());
        assert_eq!(h.rcode(), 5);
        assert_eq!(Header::parse(&[0; 11]), Err(WireError::Truncated));
    }

    #[test]
    fn plain_query_without_edns() {
        let msg = query(7, 0x0100, [1, 0, 0, 0], NAME, 28, &[]);
        let q = QueryView::parse(&msg).unwrap();
        assert_eq!(q.header.id, 7);
        assert!(q.header.rd());
        assert_eq!(q.qname, NAME);
        assert_eq!(q.qname_lower(), b"\x03www\x07example\x03com\x00");
        assert_eq!((q.qtype, q.qclass), (28, 1));
        assert_eq!(q.question_end, msg.len());
        assert_eq!(q.edns, None);
        assert!(!q.dnssec_ok());
    }

    #[test]
    fn edns_query_with_do_bit() {
        let msg = edns_query();
        let q = QueryView::parse(&msg).unwrap();
        assert_eq!(
            q.edns,
            Some(Edns {
                udp_size: 4096,
                dnssec_ok: true,
                version: 0
            })
        );
        assert!(q.dnssec_ok());
        assert!(q.header.cd());
        assert_eq!(q.question_end, HEADER_LEN + NAME.len() + 4);
    }

    #[test]
    fn reply_target_sizes() {
        let msg = edns_query();
        let q = QueryView::parse(&msg).unwrap();
        let t = q.reply_target(false);
        assert_eq!((t.id, t.qname, t.max_size), (0xBEEF, NAME, 4096));
        assert_eq!(t.edns, q.edns);
        assert_eq!(q.reply_target(true).max_size, 65535);
        let plain = query(1, 0, [1, 0, 0, 0], NAME, 1, &[]);
        let q = QueryView::parse(&plain).unwrap();
        assert_eq!(q.reply_target(false).max_size, PLAIN_UDP_MAX);
        assert_eq!(q.reply_target(false).edns, None);
        let tiny = query(1, 0, [1, 0, 0, 1], NAME, 1, &opt(100, 0, &[]));
        let q = QueryView::parse(&tiny).unwrap();
        assert_eq!(q.reply_target(false).max_size, PLAIN_UDP_MAX);
    }

    #[test]
    fn edns_without_do_and_with_options() {
        // a cookie option (10) with 8 bytes and an empty padding option (12)
        let rdata = b"\x00\x0a\x00\x08abcdefgh\x00\x0c\x00\x00";
        let msg = query(1, 0, [1, 0, 0, 1], NAME, 1, &opt(512, 0, rdata));
        let q = QueryView::parse(&msg).unwrap();
        let e = q.edns.unwrap();
        assert_eq!((e.udp_size, e.dnssec_ok, e.version), (512, false, 0));
    }

    #[test]
    fn opt_among_other_additional_records() {
        // a TSIG-like record owned by "k." before the OPT, and compression in its owner
        let mut rest = Vec::new();
        rest.extend_from_slice(b"\xC0\x0C\x00\xFA\x00\xFF\x00\x00\x00\x00\x00\x02hi");
        rest.extend_from_slice(&opt(1232, 0x8000, &[]));
        let msg = query(1, 0, [1, 0, 0, 2], NAME, 1, &rest);
        let q = QueryView::parse(&msg).unwrap();
        assert_eq!(q.edns.map(|e| e.udp_size), Some(1232));
    }

    #[test]
    fn root_name_query() {
        let msg = query(1, 0, [1, 0, 0, 0], b"\x00", 2, &[]);
        let q = QueryView::parse(&msg).unwrap();
        assert_eq!(q.qname, b"\x00");
        assert_eq!(q.qname_lower(), b"\x00");
        assert_eq!(q.qtype, 2);
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        let mut msg = edns_query();
        msg.extend_from_slice(b"garbage");
        let q = QueryView::parse(&msg).unwrap();
        assert!(q.dnssec_ok());
        let mut plain = query(1, 0, [1, 0, 0, 0], NAME, 1, &[]);
        plain.extend_from_slice(&[0xFF; 40]);
        assert_eq!(QueryView::parse(&plain).unwrap().edns, None);
    }

    #[test]
    fn case_is_preserved_in_qname_and_folded_in_qname_lower() {
        let name = b"\x05MiXeD\x02Z9\x00";
        let msg = query(1, 0, [1, 0, 0, 0], name, 1, &[]);
        let q = QueryView::parse(&msg).unwrap();
        assert_eq!(q.qname, name);
        assert_eq!(&msg[12..12 + q.qname.len()], q.qname);
        assert_eq!(q.qname_lower(), b"\x05mixed\x02z9\x00");
        // non-ASCII bytes are left alone
        let name = b"\x02\xC3\x89\x00";
        let msg = query(1, 0, [1, 0, 0, 0], name, 1, &[]);
        assert_eq!(QueryView::parse(&msg).unwrap().qname_lower(), name);
    }

    #[test]
    fn longest_name_is_accepted_one_more_byte_is_not() {
        // 3 labels of 63 + 1 of 61: 4 + 189 + 61 + 1 = 255
        let mut name = Vec::new();
        for len in [63usize, 63, 63, 61] {
            name.push(len as u8);
            name.extend(std::iter::repeat_n(b'A', len));
        }
        name.push(0);
        assert_eq!(name.len(), MAX_NAME_LEN);
        let msg = query(1, 0, [1, 0, 0, 0], &name, 1, &[]);
        let q = QueryView::parse(&msg).unwrap();
        assert_eq!(q.qname_lower().len(), MAX_NAME_LEN);
        assert!(q.qname_lower()[1..64].iter().all(|&b| b == b'a'));

        let mut long = name.clone();
        long[192] = 62; // label of 61 becomes 62: one more byte
        long.insert(193, b'A');
        assert_eq!(skip_name(&long, 0), Err(WireError::NameTooLong));
        let msg = query(1, 0, [1, 0, 0, 0], &long, 1, &[]);
        assert_eq!(
            read_question_name(&msg, &mut [0; MAX_NAME_LEN]),
            Err(WireError::NameTooLong)
        );
        assert_eq!(QueryView::parse(&msg).err(), Some(Reject::FormErr));
    }

    #[test]
    fn short_and_responses_are_dropped() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                QueryView::parse(&edns_query()[..len]).err(),
                Some(Reject::Drop(Discard::Short))
            );
        }
        // QR=1 wins over anything else, even a non-QUERY opcode and odd counts
        let msg = query(1, 0x8000 | (4 << 11), [3, 0, 0, 0], NAME, 1, &[]);
        assert_eq!(
            QueryView::parse(&msg).err(),
            Some(Reject::Drop(Discard::Response))
        );
        let resp = [0, 1, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            QueryView::parse(&resp).err(),
            Some(Reject::Drop(Discard::Response))
        );
        assert_eq!(Reject::Drop(Discard::Response).as_str(), "response");
        assert_eq!(Discard::Short.as_str(), "short");
    }

    #[test]
    fn opcode_is_checked_before_counts() {
        for opcode in 1..16u16 {
            let msg = query(1, opcode << 11, [0, 9, 9, 9], NAME, 1, &[]);
            assert_eq!(
                QueryView::parse(&msg).err(),
                Some(Reject::NotImp),
                "{opcode}"
            );
        }
        // a bare NOTIFY header with nothing after it
        let notify = [0, 1, 0x20, 0, 0, 2, 0, 0, 0, 0, 0, 0];
        assert_eq!(QueryView::parse(&notify).err(), Some(Reject::NotImp));
    }

    #[test]
    fn qdcount_must_be_one() {
        for qd in [0u16, 2, 65535] {
            let msg = query(1, 0, [qd, 0, 0, 0], NAME, 1, &[]);
            assert_eq!(QueryView::parse(&msg).err(), Some(Reject::FormErr), "{qd}");
        }
        let bare = [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(QueryView::parse(&bare).err(), Some(Reject::FormErr));
    }

    #[test]
    fn compressed_or_broken_question_is_formerr() {
        // pointer to the header
        let msg = query(1, 0, [1, 0, 0, 0], b"\xC0\x04", 1, &[]);
        assert_eq!(QueryView::parse(&msg).err(), Some(Reject::FormErr));
        // label then pointer
        let msg = query(1, 0, [1, 0, 0, 0], b"\x01a\xC0\x0C", 1, &[]);
        assert_eq!(QueryView::parse(&msg).err(), Some(Reject::FormErr));
        // reserved label types 0x40 and 0x80
        for bad in [0x40u8, 0x80] {
            let msg = query(1, 0, [1, 0, 0, 0], &[bad, b'a', 0], 1, &[]);
            assert_eq!(QueryView::parse(&msg).err(), Some(Reject::FormErr));
        }
        // name without its end, question without QCLASS
        let full = query(1, 0, [1, 0, 0, 0], NAME, 1, &[]);
        for cut in HEADER_LEN..full.len() {
            assert_eq!(
                QueryView::parse(&full[..cut]).err(),
                Some(Reject::FormErr),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn records_must_fit() {
        // counts announce records that are not there
        for counts in [
            [1, 1, 0, 0],
            [1, 0, 1, 0],
            [1, 0, 0, 1],
            [1, 65535, 65535, 65535],
        ] {
            let msg = query(1, 0, counts, NAME, 1, &[]);
            assert_eq!(QueryView::parse(&msg).err(), Some(Reject::FormErr));
        }
        // rdlength beyond the end
        let mut msg = edns_query();
        let rdlen = msg.len() - 2;
        msg[rdlen..].copy_from_slice(&[0, 1]);
        assert_eq!(QueryView::parse(&msg).err(), Some(Reject::FormErr));
        // huge counts with enough bytes to pass the quick check but broken records
        let msg = query(1, 0, [1, 0, 0, 3], NAME, 1, &[0x3F; 40]);
        assert_eq!(QueryView::parse(&msg).err(), Some(Reject::FormErr));
    }

    #[test]
    fn answer_and_authority_records_are_skipped() {
        let mut rest = Vec::new();
        // answer: compressed owner, A record
        rest.extend_from_slice(b"\xC0\x0C\x00\x01\x00\x01\x00\x00\x0E\x10\x00\x04\x01\x02\x03\x04");
        // authority: root owner, NS record pointing back
        rest.extend_from_slice(b"\x00\x00\x02\x00\x01\x00\x00\x0E\x10\x00\x02\xC0\x0C");
        rest.extend_from_slice(&opt(1400, 0, &[]));
        let msg = query(1, 0, [1, 1, 1, 1], NAME, 1, &rest);
        let q = QueryView::parse(&msg).unwrap();
        assert_eq!(q.edns.map(|e| e.udp_size), Some(1400));
    }

    #[test]
    fn broken_opt_is_formerr() {
        // two OPT records
        let mut two = opt(1232, 0, &[]);
        two.extend_from_slice(&opt(1232, 0, &[]));
        let msg = query(1, 0, [1, 0, 0, 2], NAME, 1, &two);
        assert_eq!(QueryView::parse(&msg).err(), Some(Reject::FormErr));
        // OPT owned by "a."
        let mut owned = b"\x01a".to_vec();
        owned.extend_from_slice(&opt(1232, 0, &[]));
        let msg = query(1, 0, [1, 0, 0, 1], NAME, 1, &owned);
        assert_eq!(QueryView::parse(&msg).err(), Some(Reject::FormErr));
        // OPT owned by a pointer to the root would still not be the root label
        let mut ptr = b"\xC0".to_vec();
        ptr.extend_from_slice(&opt(1232, 0, &[])[..]);
        let msg = query(1, 0, [1, 0, 0, 1], NAME, 1, &ptr);
        assert_eq!(QueryView::parse(&msg).err(), Some(Reject::FormErr));
        // OPT in the answer section
        let msg = query(1, 0, [1, 1, 0, 0], NAME, 1, &opt(1232, 0, &[]));
        assert_eq!(QueryView::parse(&msg).err(), Some(Reject::FormErr));
        // option overrunning the rdata, and a stray byte
        for rdata in [&b"\x00\x0a\x00\x09abcdefgh"[..], b"\x00\x0a\x00", b"\x00"] {
            let msg = query(1, 0, [1, 0, 0, 1], NAME, 1, &opt(1232, 0, rdata));
            assert_eq!(QueryView::parse(&msg).err(), Some(Reject::FormErr));
        }
    }

    #[test]
    fn edns_version_above_zero_is_badvers_after_form_checks() {
        let msg = query(1, 0, [1, 0, 0, 1], NAME, 1, &opt(1232, 0x0001_8000, &[]));
        assert_eq!(QueryView::parse(&msg).err(), Some(Reject::BadVers));
        let q = QueryView::parse_any_version(&msg).unwrap();
        assert_eq!(
            q.edns,
            Some(Edns {
                udp_size: 1232,
                dnssec_ok: true,
                version: 1
            })
        );
        // a duplicate OPT is a FORMERR even with a bad version
        let mut two = opt(1232, 0x0001_0000, &[]);
        two.extend_from_slice(&opt(1232, 0, &[]));
        let msg = query(1, 0, [1, 0, 0, 2], NAME, 1, &two);
        assert_eq!(QueryView::parse(&msg).err(), Some(Reject::FormErr));
        // extended rcode bits and Z bits in a query's OPT are ignored
        let msg = query(1, 0, [1, 0, 0, 1], NAME, 1, &opt(1232, 0xFF00_7FFF, &[]));
        let q = QueryView::parse(&msg).unwrap();
        assert!(!q.dnssec_ok());
    }

    /// Tiny deterministic generator for the mutation tests (no dependency on rand).
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// Checks the invariants every successful parse must uphold.
    fn check_invariants(msg: &[u8]) {
        let Ok(q) = QueryView::parse(msg) else { return };
        assert!(q.question_end <= msg.len());
        assert_eq!(&msg[HEADER_LEN..HEADER_LEN + q.qname.len()], q.qname);
        assert_eq!(q.qname.to_ascii_lowercase(), q.qname_lower());
        assert!(q.qname.len() <= MAX_NAME_LEN);
        assert_eq!(q.qname.last(), Some(&0));
        assert_eq!(q.header.qdcount, 1);
        assert!(!q.header.qr());
        assert!(q.edns.is_none_or(|e| e.version == 0));
    }

    #[test]
    fn every_truncation_is_handled() {
        let mut rest = b"\xC0\x0C\x00\x01\x00\x01\x00\x00\x0E\x10\x00\x04\x01\x02\x03\x04".to_vec();
        rest.extend_from_slice(&opt(1232, 0x8000, b"\x00\x0a\x00\x02hi"));
        let msg = query(1, 0, [1, 1, 0, 1], NAME, 1, &rest);
        assert!(QueryView::parse(&msg).is_ok());
        for cut in 0..msg.len() {
            let r = QueryView::parse(&msg[..cut]);
            assert!(r.is_err(), "a truncated message parsed at {cut}");
            check_invariants(&msg[..cut]);
        }
    }

    #[test]
    fn random_mutations_never_panic() {
        let base = {
            let mut rest =
                b"\xC0\x0C\x00\x01\x00\x01\x00\x00\x0E\x10\x00\x04\x01\x02\x03\x04".to_vec();
            rest.extend_from_slice(&opt(1232, 0x8000, b"\x00\x0a\x00\x02hi"));
            query(1, 0, [1, 1, 0, 1], NAME, 1, &rest)
        };
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut parsed = 0usize;
        for _ in 0..20_000 {
            let mut msg = base.clone();
            let flips = 1 + (xorshift(&mut state) % 4) as usize;
            for _ in 0..flips {
                let r = xorshift(&mut state);
                let i = (r as usize >> 8) % msg.len();
                match r % 4 {
                    0 => msg[i] = (r >> 32) as u8,
                    1 => msg[i] ^= 1 << ((r >> 40) % 8),
                    2 => msg.truncate(i.max(1)),
                    _ => msg.insert(i, (r >> 48) as u8),
                }
            }
            check_invariants(&msg);
            parsed += usize::from(QueryView::parse(&msg).is_ok());
        }
        // mutations that only touch the ID or the qname's letters still parse
        assert!(parsed > 0);
        // and random garbage of all short lengths
        for len in 0..64 {
            let msg: Vec<u8> = (0..len).map(|_| xorshift(&mut state) as u8).collect();
            check_invariants(&msg);
        }
    }
}
