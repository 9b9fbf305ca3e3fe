//! Just enough DNS wire format for load: build a query, read a query's question,
//! build an answer, and read a response's header and addresses.
//!
//! Everything here is bounded: names at most 255 bytes, labels at most 63, a
//! response's compression pointers followed at most [`MAX_HOPS`] times. Nothing
//! allocates but the builders' output vectors (which the caller may reuse).

use std::net::IpAddr;

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
/// Record type OPT (EDNS).
pub const TYPE_OPT: u16 = 41;
/// Class IN.
pub const CLASS_IN: u16 = 1;
/// Most compression pointers followed while skipping one name.
pub const MAX_HOPS: usize = 16;
/// Length of the DNS header.
pub const HEADER_LEN: usize = 12;

/// Rcode NOERROR.
pub const NOERROR: u8 = 0;
/// Rcode SERVFAIL.
pub const SERVFAIL: u8 = 2;
/// Rcode NXDOMAIN.
pub const NXDOMAIN: u8 = 3;
/// Rcode REFUSED.
pub const REFUSED: u8 = 5;

/// Why bytes are not the DNS message expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The message ends inside a field.
    Short,
    /// A label longer than 63, a name longer than 255, or an empty label inside a name.
    BadName,
    /// Too many compression pointers.
    Loop,
    /// QDCOUNT is not 1, or the QR bit is wrong for the direction.
    NotAQuery,
}

/// The name of an rcode, as dnsperf prints it.
pub fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "OTHER",
    }
}

/// The number of a record type name (`A`, `AAAA`, `TYPE65`, ...).
pub fn qtype_from_name(name: &str) -> Option<u16> {
    let upper = name.to_ascii_uppercase();
    Some(match upper.as_str() {
        "A" => TYPE_A,
        "NS" => 2,
        "CNAME" => 5,
        "SOA" => 6,
        "PTR" => 12,
        "MX" => 15,
        "TXT" => 16,
        "AAAA" => TYPE_AAAA,
        "SRV" => 33,
        "DS" => 43,
        "DNSKEY" => 48,
        "HTTPS" => 65,
        "ANY" => 255,
        _ => return upper.strip_prefix("TYPE")?.parse().ok(),
    })
}

/// Appends `name` (presentation form, with or without the final dot) in wire form.
pub fn write_name(out: &mut Vec<u8>, name: &str) -> Result<(), WireError> {
    let start = out.len();
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() || label.len() > 63 {
                out.truncate(start);
                return Err(WireError::BadName);
            }
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    if out.len() - start > 255 {
        out.truncate(start);
        return Err(WireError::BadName);
    }
    Ok(())
}

/// Replaces `out` with a recursive query (RD=1) for `name`/`qtype`, class IN,
/// advertising EDNS with `edns_size` when it is not zero.
pub fn build_query(
    out: &mut Vec<u8>,
    id: u16,
    name: &str,
    qtype: u16,
    edns_size: u16,
) -> Result<(), WireError> {
    out.clear();
    let arcount: u16 = if edns_size > 0 { 1 } else { 0 };
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0]);
    out.extend_from_slice(&arcount.to_be_bytes());
    write_name(out, name)?;
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    if edns_size > 0 {
        push_opt(out, edns_size);
    }
    Ok(())
}

fn push_opt(out: &mut Vec<u8>, size: u16) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
}

/// The ID of a message (first two bytes).
pub fn message_id(msg: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.first()?, *msg.get(1)?]))
}

/// The end offset of the (uncompressed or compressed) name starting at `pos`.
fn skip_name(msg: &[u8], mut pos: usize) -> Result<usize, WireError> {
    loop {
        let len = *msg.get(pos).ok_or(WireError::Short)?;
        match len {
            0 => return Ok(pos + 1),
            1..=63 => pos += 1 + len as usize,
            0xC0..=0xFF => {
                msg.get(pos + 1).ok_or(WireError::Short)?;
                return Ok(pos + 2);
            }
            _ => return Err(WireError::BadName),
        }
    }
}

/// Reads the name at `pos` (following pointers, at most [`MAX_HOPS`]) into `out` as
/// lowercase presentation form with the final dot.
pub fn read_name(msg: &[u8], mut pos: usize, out: &mut String) -> Result<(), WireError> {
    out.clear();
    let mut hops = 0;
    loop {
        let len = *msg.get(pos).ok_or(WireError::Short)? as usize;
        match len {
            0 => break,
            1..=63 => {
                let label = msg.get(pos + 1..pos + 1 + len).ok_or(WireError::Short)?;
                for &b in label {
                    out.push(b.to_ascii_lowercase() as char);
                }
                out.push('.');
                if out.len() > 255 {
                    return Err(WireError::BadName);
                }
                pos += 1 + len;
            }
            0xC0..=0xFF => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(WireError::Loop);
                }
                let low = *msg.get(pos + 1).ok_or(WireError::Short)? as usize;
                pos = ((len & 0x3F) << 8) | low;
            }
            _ => return Err(WireError::BadName),
        }
    }
    if out.is_empty() {
        out.push('.');
    }
    Ok(())
}

/// The question of a query: its bytes (name, type, class) and where they end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question<'a> {
    /// Name, type and class exactly as sent.
    pub bytes: &'a [u8],
    /// The query type.
    pub qtype: u16,
    /// Whether the query carries an OPT record (EDNS).
    pub edns: bool,
}

/// Reads the one question of a query (QR=0, QDCOUNT=1).
pub fn parse_query(msg: &[u8]) -> Result<Question<'_>, WireError> {
    if msg.len() < HEADER_LEN {
        return Err(WireError::Short);
    }
    if msg[2] & 0x80 != 0 || msg[4..6] != [0, 1] {
        return Err(WireError::NotAQuery);
    }
    let end = skip_name(msg, HEADER_LEN)?;
    if end > HEADER_LEN && msg[end - 2] & 0xC0 == 0xC0 && msg[end - 1] != 0 {
        // a compression pointer in a question: not something a client sends
        return Err(WireError::BadName);
    }
    let tail = msg.get(end..end + 4).ok_or(WireError::Short)?;
    let arcount = u16::from_be_bytes([msg[10], msg[11]]);
    Ok(Question {
        bytes: &msg[HEADER_LEN..end + 4],
        qtype: u16::from_be_bytes([tail[0], tail[1]]),
        edns: arcount > 0,
    })
}

/// What an answer built by [`build_answer`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerSpec<'a> {
    /// Response code.
    pub rcode: u8,
    /// Set TC=1 and send no records.
    pub truncated: bool,
    /// TTL of every record.
    pub ttl: u32,
    /// Records (A for IPv4, AAAA for IPv6) of the question's type; others are skipped.
    pub addresses: &'a [IpAddr],
}

/// Replaces `out` with the answer to `query` (whose question is `q`): ID, RD and
/// question echoed, QR=1, RA=1, the records of `spec` that match the question type,
/// an OPT record when the query had one.
pub fn build_answer(out: &mut Vec<u8>, query: &[u8], q: &Question<'_>, spec: &AnswerSpec<'_>) {
    out.clear();
    out.extend_from_slice(&query[0..2]);
    let rd = query[2] & 0x01;
    out.push(0x80 | rd | if spec.truncated { 0x02 } else { 0 });
    out.push(0x80 | (spec.rcode & 0x0F));
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0]);
    out.extend_from_slice(&(u16::from(q.edns)).to_be_bytes());
    out.extend_from_slice(q.bytes);
    let mut count: u16 = 0;
    if !spec.truncated && spec.rcode == NOERROR {
        for addr in spec.addresses {
            match (addr, q.qtype) {
                (IpAddr::V4(a), TYPE_A) => {
                    push_record_head(out, TYPE_A, spec.ttl, 4);
                    out.extend_from_slice(&a.octets());
                }
                (IpAddr::V6(a), TYPE_AAAA) => {
                    push_record_head(out, TYPE_AAAA, spec.ttl, 16);
                    out.extend_from_slice(&a.octets());
                }
                _ => continue,
            }
            count += 1;
        }
    }
    out[6..8].copy_from_slice(&count.to_be_bytes());
    if q.edns {
        push_opt(out, 1232);
    }
}

fn push_record_head(out: &mut Vec<u8>, rtype: u16, ttl: u32, rdlen: u16) {
    out.extend_from_slice(&[0xC0, HEADER_LEN as u8]);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&rdlen.to_be_bytes());
}

/// The parts of a response the harness looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Message ID.
    pub id: u16,
    /// Response code (low four bits).
    pub rcode: u8,
    /// TC bit.
    pub truncated: bool,
    /// A and AAAA records of the answer section, in order.
    pub addresses: Vec<IpAddr>,
    /// Smallest TTL among those records.
    pub min_ttl: Option<u32>,
}

/// Reads a response's header and the addresses in its answer section.
pub fn parse_response(msg: &[u8]) -> Result<Response, WireError> {
    if msg.len() < HEADER_LEN {
        return Err(WireError::Short);
    }
    if msg[2] & 0x80 == 0 {
        return Err(WireError::NotAQuery);
    }
    let qd = u16::from_be_bytes([msg[4], msg[5]]);
    let an = u16::from_be_bytes([msg[6], msg[7]]);
    let mut pos = HEADER_LEN;
    for _ in 0..qd {
        pos = skip_name(msg, pos)? + 4;
    }
    let mut addresses = Vec::new();
    let mut min_ttl: Option<u32> = None;
    for _ in 0..an {
        pos = skip_name(msg, pos)?;
        let head = msg.get(pos..pos + 10).ok_or(WireError::Short)?;
        let rtype = u16::from_be_bytes([head[0], head[1]]);
        let ttl = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let rdlen = u16::from_be_bytes([head[8], head[9]]) as usize;
        let rdata = msg
            .get(pos + 10..pos + 10 + rdlen)
            .ok_or(WireError::Short)?;
        match (rtype, rdlen) {
            (TYPE_A, 4) => {
                let o: [u8; 4] = rdata.try_into().map_err(|_| WireError::Short)?;
                addresses.push(IpAddr::from(o));
            }
            (TYPE_AAAA, 16) => {
                let o: [u8; 16] = rdata.try_into().map_err(|_| WireError::Short)?;
                addresses.push(IpAddr::from(o));
            }
            _ => {}
        }
        if matches!(rtype, TYPE_A | TYPE_AAAA) {
            min_ttl = Some(min_ttl.map_or(ttl, |t| t.min(ttl)));
        }
        pos += 10 + rdlen;
    }
    Ok(Response {
        id: u16::from_be_bytes([msg[0], msg[1]]),
        rcode: msg[3] & 0x0F,
        truncated: msg[2] & 0x02 != 0,
        addresses,
        min_ttl,
    })
}

/// Response code and TC bit of a message, without reading further (hot path).
pub fn rcode_of(msg: &[u8]) -> Option<u8> {
    msg.get(3).map(|b| b & 0x0F)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn query_round_trips_through_parse_query() {
        let mut q = Vec::new();
        build_query(&mut q, 0xBEEF, "WwW.Example.test.", TYPE_AAAA, 1232).unwrap();
        assert_eq!(message_id(&q), Some(0xBEEF));
        assert_eq!(q[2], 0x01, "RD set, QR clear");
        let question = parse_query(&q).unwrap();
        assert_eq!(question.qtype, TYPE_AAAA);
        assert!(question.edns);
        let mut name = String::new();
        read_name(&q, HEADER_LEN, &mut name).unwrap();
        assert_eq!(name, "www.example.test.");
    }

    #[test]
    fn bad_names_are_refused() {
        let mut q = Vec::new();
        assert_eq!(
            build_query(&mut q, 1, "a..b", TYPE_A, 0),
            Err(WireError::BadName)
        );
        let long = "x".repeat(64);
        assert_eq!(
            build_query(&mut q, 1, &long, TYPE_A, 0),
            Err(WireError::BadName)
        );
        let too_long = vec!["abcdefghi"; 30].join(".");
        assert_eq!(
            build_query(&mut q, 1, &too_long, TYPE_A, 0),
            Err(WireError::BadName)
        );
        build_query(&mut q, 1, ".", TYPE_A, 0).unwrap();
        assert_eq!(parse_query(&q).unwrap().bytes, &[0, 0, 1, 0, 1]);
    }

    #[test]
    fn answer_echoes_the_query_and_carries_matching_addresses() {
        let mut q = Vec::new();
        build_query(&mut q, 7, "n1.test", TYPE_A, 1232).unwrap();
        let question = parse_query(&q).unwrap();
        let addrs = [
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
        ];
        let mut a = Vec::new();
        let spec = AnswerSpec {
            rcode: NOERROR,
            truncated: false,
            ttl: 60,
            addresses: &addrs,
        };
        build_answer(&mut a, &q, &question, &spec);
        let r = parse_response(&a).unwrap();
        assert_eq!(r.id, 7);
        assert_eq!(r.rcode, NOERROR);
        assert!(!r.truncated);
        assert_eq!(r.addresses, vec![addrs[0], addrs[2]], "only the A records");
        assert_eq!(r.min_ttl, Some(60));
        assert_eq!(
            &a[HEADER_LEN..HEADER_LEN + question.bytes.len()],
            question.bytes
        );
        assert_eq!(a[2] & 0x81, 0x81, "QR and RD");
        assert_eq!(u16::from_be_bytes([a[10], a[11]]), 1, "OPT echoed");
    }

    #[test]
    fn error_and_truncated_answers_have_no_records() {
        let mut q = Vec::new();
        build_query(&mut q, 9, "x.test", TYPE_A, 0).unwrap();
        let question = parse_query(&q).unwrap();
        let addrs = [IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))];
        let mut a = Vec::new();
        for (rcode, tc) in [(SERVFAIL, false), (NOERROR, true)] {
            let spec = AnswerSpec {
                rcode,
                truncated: tc,
                ttl: 5,
                addresses: &addrs,
            };
            build_answer(&mut a, &q, &question, &spec);
            let r = parse_response(&a).unwrap();
            assert_eq!((r.rcode, r.truncated), (rcode, tc));
            assert!(r.addresses.is_empty());
            assert_eq!(rcode_of(&a), Some(rcode));
        }
    }

    #[test]
    fn parse_response_rejects_queries_and_pointer_loops() {
        let mut q = Vec::new();
        build_query(&mut q, 9, "x.test", TYPE_A, 0).unwrap();
        assert_eq!(parse_response(&q), Err(WireError::NotAQuery));
        let looped = [0, 0, 0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0xC0, 12];
        let mut name = String::new();
        assert_eq!(read_name(&looped, 12, &mut name), Err(WireError::Loop));
        assert_eq!(parse_response(&looped[..5]), Err(WireError::Short));
    }

    #[test]
    fn qtype_names() {
        assert_eq!(qtype_from_name("a"), Some(TYPE_A));
        assert_eq!(qtype_from_name("AAAA"), Some(TYPE_AAAA));
        assert_eq!(qtype_from_name("TYPE65"), Some(65));
        assert_eq!(qtype_from_name("BOGUS"), None);
    }
}
