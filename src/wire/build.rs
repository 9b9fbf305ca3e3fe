//! Messages tierdns originates: the query it sends upstream and the error replies it
//! gives clients.
//!
//! The upstream query is on the miss path of every flight, so it is written by hand
//! into a caller's buffer with no allocation ([`write_upstream_query`]). Error replies
//! are rare and built with hickory-proto ([`error_reply`], [`formerr_from_header`],
//! [`reject_reply`]); they allocate.
//!
//! Invariants: every reply echoes the client's ID and opcode and has QR=1; a reply
//! carries an OPT record only if the client's query did (RFC 6891 section 6.1.1), and
//! an Extended DNS Error (RFC 8914) only inside that OPT; the question of a reply is
//! the client's question byte for byte, its letter case included. Nothing here panics
//! on any input.

use hickory_proto::op::{Edns as HickoryEdns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::rdata::HINFO;
use hickory_proto::rr::{RData, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::reader::{Header, QueryView, Reject};
use super::{rcode, rtype, EDNS_UDP_SIZE, HEADER_LEN};

/// Longest upstream query [`write_upstream_query`] writes: header, the longest name,
/// QTYPE/QCLASS and an empty OPT record.
pub const MAX_UPSTREAM_QUERY_LEN: usize = HEADER_LEN + super::name::MAX_NAME_LEN + 4 + 11;

/// Writes the query tierdns sends upstream for the client's question `q` into `dst`
/// and returns its length, or 0 if `dst` is shorter than the query (callers pass a
/// buffer of at least [`MAX_UPSTREAM_QUERY_LEN`] bytes, e.g. a 512-byte one, so this
/// does not happen in practice).
///
/// The query has the given `id`, RD=1, the client's CD bit, one question with the
/// lowercased name (the flight is shared by every letter case of the name) and the
/// client's QTYPE/QCLASS, and an OPT record advertising [`EDNS_UDP_SIZE`] with the
/// client's DO bit (0 if the client sent no EDNS) and no options.
pub fn write_upstream_query(dst: &mut [u8], id: u16, q: &QueryView<'_>) -> usize {
    let name = q.qname_lower();
    let len = HEADER_LEN + name.len() + 4 + 11;
    let Some(out) = dst.get_mut(..len) else {
        return 0;
    };
    let flags: u16 = 0x0100 | if q.header.cd() { 0x0010 } else { 0 };
    let ttl: u32 = if q.dnssec_ok() { 0x0000_8000 } else { 0 };
    let mut w = Writer { out, pos: 0 };
    w.put(&id.to_be_bytes());
    w.put(&flags.to_be_bytes());
    w.put(&[0, 1, 0, 0, 0, 0, 0, 1]); // QDCOUNT=1, ANCOUNT=0, NSCOUNT=0, ARCOUNT=1
    w.put(name);
    w.put(&q.qtype.to_be_bytes());
    w.put(&q.qclass.to_be_bytes());
    w.put(&[0, 0, 41]); // root owner, type OPT
    w.put(&EDNS_UDP_SIZE.to_be_bytes());
    w.put(&ttl.to_be_bytes());
    w.put(&[0, 0]); // RDLENGTH
    w.pos
}

/// Sequential writer into a slice already checked to be long enough; a write that
/// would not fit is dropped rather than panicking.
struct Writer<'b> {
    out: &'b mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        if let Some(dst) = self.out.get_mut(self.pos..self.pos + bytes.len()) {
            dst.copy_from_slice(bytes);
            self.pos += bytes.len();
        }
    }
}

/// The response codes tierdns answers with when it has no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorRcode {
    /// FORMERR (1): the query could not be read.
    FormErr,
    /// SERVFAIL (2): no upstream gave a usable answer.
    ServFail,
    /// NOTIMP (4): an opcode other than QUERY.
    NotImp,
    /// REFUSED (5): policy (ACL, rate limit, class).
    Refused,
    /// BADVERS (16, extended: 1 in the OPT, 0 in the header): EDNS version above 0.
    BadVers,
}

impl ErrorRcode {
    /// The full (extended) response code value.
    pub fn code(self) -> u16 {
        match self {
            Self::FormErr => rcode::FORMERR,
            Self::ServFail => rcode::SERVFAIL,
            Self::NotImp => rcode::NOTIMP,
            Self::Refused => rcode::REFUSED,
            Self::BadVers => rcode::BADVERS,
        }
    }

    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FormErr => "formerr",
            Self::ServFail => "servfail",
            Self::NotImp => "notimp",
            Self::Refused => "refused",
            Self::BadVers => "badvers",
        }
    }

    fn to_hickory(self) -> ResponseCode {
        match self {
            Self::FormErr => ResponseCode::FormErr,
            Self::ServFail => ResponseCode::ServFail,
            Self::NotImp => ResponseCode::NotImp,
            Self::Refused => ResponseCode::Refused,
            Self::BadVers => ResponseCode::BADVERS,
        }
    }
}

/// An Extended DNS Error (RFC 8914): an info-code and a short UTF-8 text for humans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ede {
    /// INFO-CODE from the IANA "Extended DNS Error Codes" registry.
    pub code: u16,
    /// EXTRA-TEXT; may be empty.
    pub text: &'static str,
}

impl Ede {
    /// 0, Other Error: none of the specific codes fits.
    pub const OTHER: Self = Self { code: 0, text: "" };
    /// 3, Stale Answer: the answer came from the cache past its TTL because no
    /// upstream answered in time (RFC 8767 serve-stale).
    pub const STALE_ANSWER: Self = Self {
        code: 3,
        text: "upstreams unavailable; serving stale",
    };
    /// 22, No Reachable Authority: every upstream tier was tried and none answered
    /// (timeouts or open circuit breakers); goes with SERVFAIL.
    pub const NO_REACHABLE_AUTHORITY: Self = Self {
        code: 22,
        text: "no upstream answered",
    };
    /// 23, Network Error: upstreams could not be reached because of local network
    /// errors (send failures, ICMP unreachable, TCP resets); goes with SERVFAIL.
    pub const NETWORK_ERROR: Self = Self {
        code: 23,
        text: "upstream network error",
    };
    /// 0, Other: the upstreams answered, but only with errors (SERVFAIL).
    pub const UPSTREAM_SERVFAIL: Self = Self {
        code: 0,
        text: "upstreams answered SERVFAIL",
    };
    /// 0, Other: the upstreams answered, but only with REFUSED.
    pub const UPSTREAM_REFUSED: Self = Self {
        code: 0,
        text: "upstreams answered REFUSED",
    };
    /// 0, Other: the upstreams answered, but only with errors or malformed replies.
    pub const UPSTREAM_ERROR: Self = Self {
        code: 0,
        text: "upstreams answered with errors",
    };
    /// 0, Other: tierdns had no room to ask the upstreams (its own bounds).
    pub const LOCAL_OVERLOAD: Self = Self {
        code: 0,
        text: "resolver overloaded",
    };
    /// 18, Prohibited: the client is outside `access.allow`; goes with REFUSED.
    pub const PROHIBITED: Self = Self {
        code: 18,
        text: "client not allowed",
    };
    /// 21, Not Supported: zone transfers are not forwarded.
    pub const NOT_SUPPORTED: Self = Self {
        code: 21,
        text: "zone transfers are not served",
    };

    /// Length of the option on the wire: code, length, INFO-CODE and text.
    pub fn wire_len(&self) -> usize {
        4 + 2 + self.text.len()
    }

    /// Writes the whole EDNS option (option code 15, option length, INFO-CODE,
    /// EXTRA-TEXT) into `dst`, for splicing into an OPT record in place; returns its
    /// length, or 0 if `dst` is too short or the text does not fit an option.
    pub fn write_option(&self, dst: &mut [u8]) -> usize {
        let len = self.wire_len();
        let Ok(opt_len) = u16::try_from(2 + self.text.len()) else {
            return 0;
        };
        let Some(out) = dst.get_mut(..len) else {
            return 0;
        };
        let mut w = Writer { out, pos: 0 };
        w.put(&rtype::OPTION_EDE.to_be_bytes());
        w.put(&opt_len.to_be_bytes());
        w.put(&self.code.to_be_bytes());
        w.put(self.text.as_bytes());
        w.pos
    }

    /// The option data (INFO-CODE then EXTRA-TEXT), as hickory's raw option payload.
    fn payload(&self) -> Vec<u8> {
        let mut data = Vec::with_capacity(2 + self.text.len());
        data.extend_from_slice(&self.code.to_be_bytes());
        data.extend_from_slice(self.text.as_bytes());
        data
    }
}

/// Builds an error reply to the client's query `q`: the client's ID, opcode, RD and
/// CD, its question exactly as sent (letter case included), QR=1, RA=1 and `rcode`.
///
/// If the client sent EDNS the reply carries an OPT record (UDP size
/// [`EDNS_UDP_SIZE`], version 0, the client's DO bit) with the `ede` option, if any;
/// without client EDNS there is no OPT and `ede` is left out. [`ErrorRcode::BadVers`]
/// is the exception: its value only exists in an OPT, so that reply always has one.
pub fn error_reply(q: &QueryView<'_>, rcode: ErrorRcode, ede: Option<Ede>) -> Vec<u8> {
    let mut msg = reply_for(&q.header, rcode);
    // The question was read uncompressed, so it decodes on its own.
    let question = q.msg.get(HEADER_LEN..q.question_end).unwrap_or_default();
    if let Ok(query) = Query::read(&mut BinDecoder::new(question)) {
        msg.add_query(query);
    }
    let client_edns = q.edns.map(|e| e.dnssec_ok);
    let dnssec_ok = match (client_edns, rcode) {
        (Some(dnssec_ok), _) => Some(dnssec_ok),
        (None, ErrorRcode::BadVers) => Some(false),
        (None, _) => None,
    };
    if let Some(dnssec_ok) = dnssec_ok {
        let mut edns = HickoryEdns::new();
        edns.set_max_payload(EDNS_UDP_SIZE)
            .set_version(0)
            .set_dnssec_ok(dnssec_ok);
        if let (Some(ede), Some(_)) = (ede, client_edns) {
            edns.options_mut()
                .insert(EdnsOption::Unknown(rtype::OPTION_EDE, ede.payload()));
        }
        msg.set_edns(edns);
    }
    encode(&msg, &q.header, rcode.code())
}

/// TTL of the synthesized answer to an ANY query. RFC 8482 leaves it to the
/// responder; an hour lets stub and downstream caches keep it, so a client that
/// repeats ANY does not come back each time.
pub const ANY_HINFO_TTL: u32 = 3600;

/// The minimal answer to a query with QTYPE ANY (RFC 8482 section 4.2): NOERROR with
/// one synthesized HINFO record at the question name, CPU `"RFC8482"` and an empty
/// OS, TTL [`ANY_HINFO_TTL`], in the question's class. Answered locally: nothing is
/// forwarded or cached.
///
/// The reply echoes like any local reply ([`error_reply`]): the client's ID, RD and
/// CD, its question byte for byte (the record's owner is a compression pointer to
/// it, so it shows the client's letter case), RA=1, and an OPT record (with the
/// client's DO bit) only if the client sent one. Should it exceed `max_size` (it
/// cannot in practice: at most about 300 bytes), it goes out with TC=1 and no record.
pub fn any_reply(q: &QueryView<'_>, max_size: usize) -> Vec<u8> {
    let mut msg = noerror_message(q);
    if let Some(query) = msg.queries.first() {
        let hinfo = HINFO::new("RFC8482".to_string(), String::new());
        let mut record =
            Record::from_rdata(query.name().clone(), ANY_HINFO_TTL, RData::HINFO(hinfo));
        record.dns_class = query.query_class();
        msg.add_answer(record);
    }
    let reply = encode(&msg, &q.header, rcode::NOERROR);
    if reply.len() <= max_size {
        return reply;
    }
    msg.answers.clear();
    msg.metadata.truncation = true;
    encode(&msg, &q.header, rcode::NOERROR)
}

/// An empty NOERROR reply with TC=1: the client's question and nothing else, so a
/// real client retries over TCP (RFC 7766). What a UDP client over its rate limit
/// gets: it is no larger than the query, so it amplifies nothing. Echoes like
/// [`any_reply`] (ID, RD, CD, question bytes, OPT only for EDNS clients).
pub fn truncated_reply(q: &QueryView<'_>) -> Vec<u8> {
    let mut msg = noerror_message(q);
    msg.metadata.truncation = true;
    encode(&msg, &q.header, rcode::NOERROR)
}

/// A NOERROR reply skeleton for `q`: the client's ID, RD and CD, RA=1, its question
/// byte for byte, and an OPT (our size, the client's DO) only if the client sent one.
fn noerror_message(q: &QueryView<'_>) -> Message {
    let mut msg = Message::new(q.header.id, MessageType::Response, OpCode::Query);
    msg.metadata.recursion_desired = q.header.rd();
    msg.metadata.checking_disabled = q.header.cd();
    msg.metadata.recursion_available = true;
    msg.metadata.response_code = ResponseCode::NoError;
    let question = q.msg.get(HEADER_LEN..q.question_end).unwrap_or_default();
    if let Ok(query) = Query::read(&mut BinDecoder::new(question)) {
        msg.add_query(query);
    }
    if let Some(edns) = q.edns {
        let mut opt = HickoryEdns::new();
        opt.set_max_payload(EDNS_UDP_SIZE)
            .set_version(0)
            .set_dnssec_ok(edns.dnssec_ok);
        msg.set_edns(opt);
    }
    msg
}

/// Builds a FORMERR for a message whose question could not be read: the client's ID,
/// opcode and RD/CD bits, QR=1, RA=1, no question and no OPT. `None` if `msg` is
/// shorter than a header or is a response (QR=1): those are dropped.
pub fn formerr_from_header(msg: &[u8]) -> Option<Vec<u8>> {
    header_only_reply(msg, ErrorRcode::FormErr)
}

/// The reply a [`Reject`] from [`QueryView::parse`] deserves, if any: nothing for a
/// drop, a header-only FORMERR, a header-only NOTIMP with no flag but QR (see
/// [`notimp_reply`]), and for BADVERS a reply with the question and an OPT record of
/// version 0 (RFC 6891 section 6.1.3).
pub fn reject_reply(msg: &[u8], reject: Reject) -> Option<Vec<u8>> {
    match reject {
        Reject::Drop(_) => None,
        Reject::FormErr => header_only_reply(msg, ErrorRcode::FormErr),
        Reject::NotImp => notimp_reply(msg),
        Reject::BadVers => match QueryView::parse_any_version(msg) {
            Ok(q) => Some(error_reply(&q, ErrorRcode::BadVers, None)),
            Err(_) => header_only_reply(msg, ErrorRcode::FormErr),
        },
    }
}

/// A reply with no question and no OPT, for messages we cannot read past the header.
fn header_only_reply(msg: &[u8], rcode: ErrorRcode) -> Option<Vec<u8>> {
    let header = Header::parse(msg).ok()?;
    if header.qr() {
        return None;
    }
    let reply = reply_for(&header, rcode);
    Some(encode(&reply, &header, rcode.code()))
}

/// NOTIMP for an opcode tierdns does not implement: the client's ID and opcode,
/// QR=1, and no other flag: RD and CD are not echoed and RA is not set, since their
/// meaning under an unknown opcode is unknown (RFC 1035 section 4.1.1 defines them
/// for QUERY; the ISC DNS compliance tests `opcode` and `opcodeflg` expect this).
/// No question (its format is the opcode's) and no OPT. `None` for a message shorter
/// than a header or a response.
pub fn notimp_reply(msg: &[u8]) -> Option<Vec<u8>> {
    let header = Header::parse(msg).ok()?;
    if header.qr() {
        return None;
    }
    let mut reply = Message::new(
        header.id,
        MessageType::Response,
        OpCode::from_u8(header.opcode()),
    );
    reply.metadata.response_code = ErrorRcode::NotImp.to_hickory();
    Some(encode(&reply, &header, rcode::NOTIMP))
}

/// A response skeleton echoing what the client's header asks to be echoed.
fn reply_for(header: &Header, rcode: ErrorRcode) -> Message {
    let mut msg = Message::new(
        header.id,
        MessageType::Response,
        OpCode::from_u8(header.opcode()),
    );
    msg.metadata.recursion_desired = header.rd();
    msg.metadata.checking_disabled = header.cd();
    msg.metadata.recursion_available = true;
    msg.metadata.response_code = rcode.to_hickory();
    msg
}

/// Encodes `msg`; should hickory refuse, falls back to a bare 12-byte header with the
/// same ID, opcode, flags (those `msg` sets) and (low 4 bits of the) rcode, so a
/// client always hears back.
fn encode(msg: &Message, header: &Header, rcode: u16) -> Vec<u8> {
    msg.to_vec().unwrap_or_else(|_| {
        let bit = |set: bool, mask: u16| if set { mask } else { 0 };
        let m = &msg.metadata;
        let flags: u16 = 0x8000
            | (header.flags & 0x7800) // opcode
            | bit(m.recursion_desired, 0x0100)
            | bit(m.recursion_available, 0x0080)
            | bit(m.checking_disabled, 0x0010)
            | (rcode & 0x000F);
        let mut bare = vec![0u8; HEADER_LEN];
        let mut w = Writer {
            out: &mut bare,
            pos: 0,
        };
        w.put(&header.id.to_be_bytes());
        w.put(&flags.to_be_bytes());
        bare
    })
}

/// An upstream answer to `q`'s question, for the fuzzer to cache: NOERROR, and for
/// an A question a number of A records chosen by the query's ID (0 to 39, so some
/// answers need TC=1 for a plain-UDP client). Raw bytes, the question lowercased.
#[cfg(fuzzing)]
pub fn fuzz_answer(q: &QueryView<'_>) -> Option<Vec<u8>> {
    let count: u16 = if q.qtype == rtype::A {
        u16::from(q.header.id.to_be_bytes()[1] % 40)
    } else {
        0
    };
    let mut msg = Vec::with_capacity(64 + usize::from(count) * 16);
    msg.extend_from_slice(&[0, 0, 0x81, 0x80, 0, 1]);
    msg.extend_from_slice(&count.to_be_bytes());
    msg.extend_from_slice(&[0, 0, 0, 0]);
    msg.extend_from_slice(q.qname_lower());
    msg.extend_from_slice(&q.qtype.to_be_bytes());
    msg.extend_from_slice(&q.qclass.to_be_bytes());
    for i in 0..count {
        msg.extend_from_slice(&[0xC0, 12, 0, 1]);
        msg.extend_from_slice(&q.qclass.to_be_bytes());
        msg.extend_from_slice(&[0, 0, 1, 44, 0, 4, 192, 0, 2]);
        msg.push(i as u8);
    }
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::super::reader::tests::{edns_query, opt, query};
    use super::*;
    use hickory_proto::rr::rdata::opt::EdnsCode;
    use hickory_proto::rr::{DNSClass, Name, RecordType};

    fn decode(bytes: &[u8]) -> Message {
        Message::from_vec(bytes).expect("hickory decodes our output")
    }

    fn ede_of(msg: &Message) -> Option<Vec<u8>> {
        let edns = msg.edns.as_ref()?;
        match edns.option(EdnsCode::Unknown(rtype::OPTION_EDE))? {
            EdnsOption::Unknown(rtype::OPTION_EDE, data) => Some(data.clone()),
            _ => None,
        }
    }

    #[test]
    fn upstream_query_is_lowercased_with_our_edns() {
        let client = edns_query(); // WwW.ExAmple.COM A, DO=1, CD=1, RD=1
        let q = QueryView::parse(&client).unwrap();
        let mut buf = [0u8; 512];
        let n = write_upstream_query(&mut buf, 0x4242, &q);
        assert_eq!(n, 12 + q.qname.len() + 4 + 11);
        let m = decode(&buf[..n]);
        assert_eq!(m.id, 0x4242);
        assert_eq!(m.message_type, MessageType::Query);
        assert!(m.recursion_desired && m.checking_disabled);
        assert!(!m.authentic_data && !m.truncation && !m.authoritative);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.queries[0].name().to_ascii(), "www.example.com.");
        assert_eq!(m.queries[0].query_type(), RecordType::A);
        assert_eq!(m.queries[0].query_class(), DNSClass::IN);
        let edns = m.edns.as_ref().expect("OPT present");
        assert_eq!(edns.max_payload(), EDNS_UDP_SIZE);
        assert!(edns.flags().dnssec_ok);
        assert_eq!(edns.version(), 0);
        assert!(edns.options().as_ref().is_empty());
        assert!(m.answers.is_empty() && m.authorities.is_empty() && m.additionals.is_empty());

        // and our own reader takes it back
        let back = QueryView::parse(&buf[..n]).unwrap();
        assert_eq!(back.qname, q.qname_lower());
        assert_eq!((back.qtype, back.qclass), (q.qtype, q.qclass));
        assert!(back.dnssec_ok());
        assert_eq!(back.edns.map(|e| e.udp_size), Some(EDNS_UDP_SIZE));
    }

    #[test]
    fn upstream_query_without_client_edns_has_do_clear_and_cd_copied() {
        let client = query(9, 0x0000, [1, 0, 0, 0], b"\x01A\x00", 28, &[]);
        let q = QueryView::parse(&client).unwrap();
        let mut buf = [0xAAu8; 512];
        let n = write_upstream_query(&mut buf, 1, &q);
        let expected: &[u8] = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\
            \x01a\x00\x00\x1c\x00\x01\
            \x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00";
        assert_eq!(&buf[..n], expected);
        assert_eq!(buf[n], 0xAA, "nothing written past the query");
    }

    #[test]
    fn upstream_query_into_short_buffer_writes_nothing() {
        let client = edns_query();
        let q = QueryView::parse(&client).unwrap();
        let need = 12 + q.qname.len() + 4 + 11;
        let mut small = vec![0u8; need - 1];
        assert_eq!(write_upstream_query(&mut small, 1, &q), 0);
        assert!(small.iter().all(|&b| b == 0));
        let mut exact = vec![0u8; need];
        assert_eq!(write_upstream_query(&mut exact, 1, &q), need);
        assert!(need <= MAX_UPSTREAM_QUERY_LEN);
    }

    #[test]
    fn servfail_with_ede_echoes_question_case_and_do() {
        let client = edns_query();
        let q = QueryView::parse(&client).unwrap();
        let reply = error_reply(&q, ErrorRcode::ServFail, Some(Ede::NO_REACHABLE_AUTHORITY));
        let m = decode(&reply);
        assert_eq!(m.id, 0xBEEF);
        assert_eq!(m.message_type, MessageType::Response);
        assert_eq!(m.op_code, OpCode::Query);
        assert_eq!(m.response_code, ResponseCode::ServFail);
        assert!(m.recursion_desired && m.recursion_available && m.checking_disabled);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.queries[0].name().to_ascii(), "WwW.ExAmple.COM.");
        assert_eq!(m.queries[0].query_type(), RecordType::A);
        // the question bytes are the client's, verbatim
        assert_eq!(&reply[12..q.question_end], &client[12..q.question_end]);
        let edns = m.edns.as_ref().expect("client sent EDNS");
        assert_eq!(edns.max_payload(), EDNS_UDP_SIZE);
        assert!(edns.flags().dnssec_ok);
        assert_eq!(edns.version(), 0);
        let mut want = 22u16.to_be_bytes().to_vec();
        want.extend_from_slice(b"no upstream answered");
        assert_eq!(ede_of(&m), Some(want));
    }

    #[test]
    fn no_opt_and_no_ede_without_client_edns() {
        let client = query(0x0102, 0x0100, [1, 0, 0, 0], b"\x03FoO\x00", 16, &[]);
        let q = QueryView::parse(&client).unwrap();
        let m = decode(&error_reply(
            &q,
            ErrorRcode::Refused,
            Some(Ede::NETWORK_ERROR),
        ));
        assert_eq!(m.id, 0x0102);
        assert_eq!(m.response_code, ResponseCode::Refused);
        assert!(m.edns.is_none());
        assert!(m.additionals.is_empty());
        assert!(!m.checking_disabled);
        assert_eq!(m.queries[0].name(), &Name::from_ascii("FoO.").unwrap());
        assert_eq!(m.queries[0].name().to_ascii(), "FoO.");
    }

    #[test]
    fn do_bit_is_echoed_clear_and_ede_is_optional() {
        let client = query(5, 0, [1, 0, 0, 1], b"\x00", 2, &opt(512, 0, &[]));
        let q = QueryView::parse(&client).unwrap();
        for rcode in [
            ErrorRcode::FormErr,
            ErrorRcode::ServFail,
            ErrorRcode::NotImp,
        ] {
            let m = decode(&error_reply(&q, rcode, None));
            assert_eq!(u16::from(m.response_code), rcode.code());
            let edns = m.edns.as_ref().expect("OPT echoed");
            assert!(!edns.flags().dnssec_ok);
            assert!(ede_of(&m).is_none());
            assert!(!m.recursion_desired);
        }
    }

    #[test]
    fn badvers_reply_has_extended_rcode_in_opt() {
        let client = query(
            77,
            0x0100,
            [1, 0, 0, 1],
            b"\x01X\x00",
            1,
            &opt(4096, 0x0002_8000, &[]),
        );
        let reject = QueryView::parse(&client).err().unwrap();
        assert_eq!(reject, Reject::BadVers);
        let reply = reject_reply(&client, reject).expect("BADVERS is answered");
        // header rcode 0, OPT ext-rcode 1, version 0
        assert_eq!(reply[3] & 0x0F, 0);
        let m = decode(&reply);
        assert_eq!(u16::from(m.response_code), 16);
        assert_eq!(m.id, 77);
        assert_eq!(m.queries[0].name().to_ascii(), "X.");
        let edns = m.edns.as_ref().expect("BADVERS needs an OPT");
        assert_eq!(edns.rcode_high(), 1);
        assert_eq!(edns.version(), 0);
        assert!(edns.flags().dnssec_ok);

        // even when asked for without client EDNS, BADVERS carries an OPT
        let plain = query(78, 0, [1, 0, 0, 0], b"\x00", 1, &[]);
        let q = QueryView::parse(&plain).unwrap();
        let m = decode(&error_reply(&q, ErrorRcode::BadVers, Some(Ede::OTHER)));
        assert_eq!(u16::from(m.response_code), 16);
        let edns = m.edns.as_ref().expect("OPT");
        assert!(
            edns.options().as_ref().is_empty(),
            "no EDE without client EDNS"
        );
    }

    #[test]
    fn formerr_from_header_echoes_id_and_opcode_only() {
        let mut msg = vec![0xAB, 0xCD, 0x29, 0x10, 0, 5, 0, 0, 0, 0, 0, 0];
        msg.extend_from_slice(b"\xC0\x00garbage");
        let m = decode(&formerr_from_header(&msg).unwrap());
        assert_eq!(m.id, 0xABCD);
        assert_eq!(m.op_code, OpCode::Update);
        assert_eq!(m.message_type, MessageType::Response);
        assert_eq!(m.response_code, ResponseCode::FormErr);
        assert!(m.recursion_desired && m.checking_disabled && m.recursion_available);
        assert!(m.queries.is_empty() && m.edns.is_none() && m.additionals.is_empty());
        // exactly a header
        assert_eq!(formerr_from_header(&msg).unwrap().len(), HEADER_LEN);

        assert_eq!(formerr_from_header(&msg[..11]), None);
        assert_eq!(formerr_from_header(&[]), None);
        let response = [0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        assert_eq!(formerr_from_header(&response), None);
    }

    #[test]
    fn reject_replies() {
        let short = [0u8; 5];
        let r = QueryView::parse(&short).err().unwrap();
        assert_eq!(reject_reply(&short, r), None);

        let notify = query(3, 4 << 11, [1, 0, 0, 0], b"\x00", 6, &[]);
        let r = QueryView::parse(&notify).err().unwrap();
        assert_eq!(r, Reject::NotImp);
        let m = decode(&reject_reply(&notify, r).unwrap());
        assert_eq!((m.id, m.op_code), (3, OpCode::Notify));
        assert_eq!(m.response_code, ResponseCode::NotImp);

        let two = query(4, 0, [2, 0, 0, 0], b"\x00", 1, &[]);
        let r = QueryView::parse(&two).err().unwrap();
        let m = decode(&reject_reply(&two, r).unwrap());
        assert_eq!((m.id, m.response_code), (4, ResponseCode::FormErr));
    }

    #[test]
    fn notimp_for_an_unknown_opcode_sets_no_flag_but_qr() {
        // opcode 15, RD, CD, AD, and a question: every flag the client could set.
        let client = query(
            0xA1B2,
            (15 << 11) | 0x0100 | 0x0020 | 0x0010,
            [1, 0, 0, 0],
            b"\x01x\x00",
            1,
            &[],
        );
        let reject = QueryView::parse(&client).err().unwrap();
        assert_eq!(reject, Reject::NotImp);
        let reply = reject_reply(&client, reject).expect("NOTIMP is answered");
        // ID; QR=1, opcode 15, AA TC RD RA Z AD CD all 0, rcode 4; no section.
        assert_eq!(reply, [0xA1, 0xB2, 0xF8, 0x04, 0, 0, 0, 0, 0, 0, 0, 0]);
        let m = decode(&reply);
        assert!(!m.recursion_desired && !m.recursion_available && !m.checking_disabled);
        assert_eq!(m.response_code, ResponseCode::NotImp);

        // NOTIFY (4) with RD: likewise, RD not echoed.
        let notify = query(3, (4 << 11) | 0x0100, [1, 0, 0, 0], b"\x00", 6, &[]);
        assert_eq!(
            notimp_reply(&notify).unwrap(),
            [0, 3, 0xA0, 0x04, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        // Responses and short messages get nothing.
        assert_eq!(notimp_reply(&[0, 1, 0xF8, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(notimp_reply(&[0, 1, 0x78]), None);
    }

    #[test]
    fn any_is_answered_with_the_rfc8482_hinfo() {
        // ExAmple.CoM ANY, RD and CD, no EDNS.
        let client = query(
            0x0A0B,
            0x0110,
            [1, 0, 0, 0],
            b"\x07ExAmple\x03CoM\x00",
            255,
            &[],
        );
        let q = QueryView::parse(&client).unwrap();
        let reply = any_reply(&q, 512);
        let mut want = vec![
            0x0A, 0x0B, // ID
            0x81, 0x90, // QR, RD, RA, CD; rcode NOERROR
            0, 1, 0, 1, 0, 0, 0, 0, // one question, one answer
        ];
        want.extend_from_slice(&client[12..]); // the question, letter case and all
        want.extend_from_slice(&[
            0xC0, 0x0C, // owner: the question name
            0, 13, 0, 1, // HINFO IN
            0, 0, 0x0E, 0x10, // TTL 3600
            0, 9, // RDLENGTH
            7, b'R', b'F', b'C', b'8', b'4', b'8', b'2', // CPU "RFC8482"
            0,    // OS ""
        ]);
        assert_eq!(reply, want);
        let m = decode(&reply);
        assert_eq!(m.answers[0].name.to_ascii(), "ExAmple.CoM.");

        // With EDNS: an OPT with our size and the client's DO; class echoed.
        let mut client = query(
            7,
            0x0100,
            [1, 0, 0, 1],
            b"\x01x\x00",
            255,
            &opt(4096, 0x8000, &[]),
        );
        client[17] = 0; // QCLASS CH (3)
        client[18] = 3;
        let q = QueryView::parse(&client).unwrap();
        let m = decode(&any_reply(&q, 4096));
        assert_eq!(m.response_code, ResponseCode::NoError);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].ttl, ANY_HINFO_TTL);
        assert_eq!(m.answers[0].dns_class, DNSClass::CH);
        match &m.answers[0].data {
            RData::HINFO(h) => assert_eq!((&*h.cpu, &*h.os), (&b"RFC8482"[..], &b""[..])),
            other => panic!("not HINFO: {other:?}"),
        }
        let edns = m.edns.as_ref().expect("OPT echoed");
        assert!(edns.flags().dnssec_ok);
        assert_eq!(edns.max_payload(), EDNS_UDP_SIZE);
        assert!(!m.authentic_data && !m.truncation);

        // Too small a limit: TC=1, the question, no record.
        let m = decode(&any_reply(&q, 20));
        assert!(m.truncation && m.answers.is_empty());
        assert_eq!(m.queries.len(), 1);
    }

    #[test]
    fn truncated_reply_is_the_question_with_tc() {
        let client = query(0x0C0D, 0x0100, [1, 0, 0, 0], b"\x03FoO\x00", 1, &[]);
        let q = QueryView::parse(&client).unwrap();
        let reply = truncated_reply(&q);
        let mut want = vec![0x0C, 0x0D, 0x83, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(&client[12..]);
        assert_eq!(reply, want, "QR TC RD RA, NOERROR, the question only");
        assert!(reply.len() <= client.len());

        let client = edns_query();
        let q = QueryView::parse(&client).unwrap();
        let m = decode(&truncated_reply(&q));
        assert!(m.truncation && m.answers.is_empty() && m.checking_disabled);
        assert_eq!(m.response_code, ResponseCode::NoError);
        assert_eq!(m.queries[0].name().to_ascii(), "WwW.ExAmple.COM.");
        assert!(
            m.edns
                .as_ref()
                .expect("OPT for an EDNS client")
                .flags()
                .dnssec_ok
        );
    }

    #[test]
    fn ede_option_bytes() {
        let mut buf = [0u8; 64];
        let n = Ede::NO_REACHABLE_AUTHORITY.write_option(&mut buf);
        assert_eq!(n, Ede::NO_REACHABLE_AUTHORITY.wire_len());
        assert_eq!(&buf[..6], &[0, 15, 0, 22, 0, 22]);
        assert_eq!(&buf[6..n], b"no upstream answered");
        assert_eq!(Ede::OTHER.write_option(&mut buf), 6);
        assert_eq!(&buf[..6], &[0, 15, 0, 2, 0, 0]);
        let mut tiny = [0u8; 5];
        assert_eq!(Ede::OTHER.write_option(&mut tiny), 0);
        assert_eq!((Ede::STALE_ANSWER.code, Ede::NETWORK_ERROR.code), (3, 23));
    }
}
