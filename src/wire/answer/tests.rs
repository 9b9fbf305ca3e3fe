//! Layout and patching, checked against messages built with hickory-proto.

use super::*;
use crate::wire::{Edns, ReplyTarget, EDNS_UDP_SIZE, PLAIN_UDP_MAX};
use hickory_proto::op::{Edns as HEdns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::rdata::{A, CNAME, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use std::net::Ipv4Addr;

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

pub(crate) fn a(owner: &str, ttl: u32, last: u8) -> Record {
    Record::from_rdata(
        name(owner),
        ttl,
        RData::A(A(Ipv4Addr::new(192, 0, 2, last))),
    )
}

pub(crate) fn cname(owner: &str, ttl: u32, target: &str) -> Record {
    Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
}

pub(crate) fn soa(zone: &str, ttl: u32, minimum: u32) -> Record {
    let rdata = SOA::new(
        name(&format!("ns1.{zone}")),
        name(&format!("hostmaster.{zone}")),
        2024010101,
        7200,
        3600,
        1209600,
        minimum,
    );
    Record::from_rdata(name(zone), ttl, RData::SOA(rdata))
}

/// A response to `qname`/`qtype` with the given sections, optionally with an OPT
/// (DO bit and options).
pub(crate) fn response(
    qname: &str,
    qtype: RecordType,
    rcode: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    opt: Option<(bool, Vec<EdnsOption>)>,
) -> Vec<u8> {
    let mut msg = Message::response(0x1234, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.metadata.recursion_available = true;
    msg.metadata.response_code = rcode;
    let mut q = Query::query(name(qname), qtype);
    q.query_class = DNSClass::IN;
    msg.add_query(q);
    msg.add_answers(answers);
    msg.add_authorities(authorities);
    if let Some((dnssec_ok, options)) = opt {
        let mut edns = HEdns::new();
        edns.set_max_payload(4096);
        edns.set_dnssec_ok(dnssec_ok);
        for o in options {
            edns.options_mut().insert(o);
        }
        msg.set_edns(edns);
    }
    msg.to_vec().unwrap()
}

fn target<'a>(qname: &'a [u8], edns: Option<Edns>, max_size: usize) -> ReplyTarget<'a> {
    ReplyTarget {
        id: 0xBEEF,
        flags: 0x0100,
        qname,
        edns,
        max_size,
    }
}

const EDNS: Option<Edns> = Some(Edns {
    udp_size: 1232,
    dnssec_ok: false,
    version: 0,
});

fn patch(src: &[u8], t: &ReplyTarget<'_>, ttl: TtlPatch) -> (Vec<u8>, Message) {
    let layout = AnswerLayout::parse(src).unwrap();
    let mut dst = vec![0u8; src.len() + REPLY_HEADROOM];
    let n = write_reply(&mut dst, src, &layout, t, ttl).expect("write_reply failed");
    dst.truncate(n);
    let msg = Message::from_vec(&dst).unwrap();
    (dst, msg)
}

const WWW_MIXED: &[u8] = b"\x03WwW\x07ExAmPle\x03COM\x00";

fn unhex(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn names_pointing_into_patched_bytes_are_refused() {
    // Found by fuzz/answer_layout: hickory decodes each of these, but a name's
    // pointer leads into a TTL (first two) or the header (third), so the reply
    // would stop decoding once TTLs or ARCOUNT are patched.
    for (hex, what) in [
        ("12348180000100020000000001610000010001c00c00010001000001000004c0000201c01c000100010000003c0004c0000202", "owner into a TTL"),
        ("678981800001000000000004076578616d706c65036f726700013b9aca002b001c0001003e00000100c00c00020001000151800006036e7331c00cc0250001000105000e100004c03b9aca002b001c0001003e00000100", "rdata name into a TTL"),
        ("3456818000010001000100000377777700001c0001c005000c00010000019700110363646e076578616d706c65036e657400c03100060001000002580027036e7331c0320a686f73746d6173746572c031783456013aa3f175fffff70000000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff000001070000", "owner into the header"),
    ] {
        let msg = unhex(hex);
        assert!(Message::from_vec(&msg).is_ok(), "{what}: a decodable input");
        assert_eq!(AnswerLayout::parse(&msg).err(), Some(WireError::BadPointer), "{what}");
    }
    // Ordinary compression (owners and CNAME/SOA targets pointing at names) is fine.
    let ok = chain();
    assert!(AnswerLayout::parse(&ok).is_ok());
}

#[test]
fn client_flags_are_echoed_and_ad_needs_ad_or_do() {
    let mut src = response(
        "www.example.com.",
        RecordType::A,
        ResponseCode::NoError,
        vec![a("www.example.com.", 60, 1)],
        vec![],
        None,
    );
    src[3] |= 0x20; // upstream said AD
    src[2] |= 0x04; // and AA
    src[3] &= !0x80; // without RA
    let plain = target(WWW_MIXED, None, 512);
    let (bytes, msg) = patch(&src, &ReplyTarget { flags: 0, ..plain }, TtlPatch::Age(0));
    assert!(!msg.metadata.recursion_desired, "RD echoed from the client");
    assert!(!msg.metadata.authentic_data, "no AD without AD or DO");
    assert!(msg.metadata.recursion_available && !msg.metadata.authoritative);
    assert_eq!(bytes[3] & 0x10, 0);
    let (_, msg) = patch(
        &src,
        &ReplyTarget {
            flags: 0x0120,
            ..plain
        },
        TtlPatch::Age(0),
    );
    assert!(msg.metadata.recursion_desired && msg.metadata.authentic_data);
    let do_edns = Some(Edns {
        dnssec_ok: true,
        ..EDNS.unwrap()
    });
    let (bytes, msg) = patch(
        &src,
        &ReplyTarget {
            flags: 0x0110,
            ..target(WWW_MIXED, do_edns, 1232)
        },
        TtlPatch::Age(0),
    );
    assert!(msg.metadata.authentic_data, "DO asks for AD");
    assert_eq!(bytes[3] & 0x10, 0x10, "CD echoed");
    // Truncated replies get the same treatment.
    let layout = AnswerLayout::parse(&src).unwrap();
    let mut dst = vec![0u8; src.len() + REPLY_HEADROOM];
    let tiny = ReplyTarget {
        flags: 0,
        max_size: 20,
        ..plain
    };
    let n = write_reply(&mut dst, &src, &layout, &tiny, TtlPatch::Age(0));
    assert!(n.is_some() && dst[2] & 0x02 != 0, "TC set");
    assert_eq!((dst[2] & 0x01, dst[3] & 0x20), (0, 0));
}

fn chain() -> Vec<u8> {
    response(
        "www.example.com.",
        RecordType::A,
        ResponseCode::NoError,
        vec![
            cname("www.example.com.", 300, "cdn.example.net."),
            a("cdn.example.net.", 60, 1),
            a("cdn.example.net.", 120, 2),
        ],
        vec![],
        Some((false, vec![])),
    )
}

#[test]
fn layout_is_small() {
    // stored in every cache entry
    assert!(
        size_of::<AnswerLayout>() <= 48,
        "{}",
        size_of::<AnswerLayout>()
    );
}

#[test]
fn layout_of_cname_chain_with_opt() {
    let src = chain();
    let l = AnswerLayout::parse(&src).unwrap();
    assert_eq!(l.question_end(), 12 + 17 + 4);
    assert_eq!(l.qname_len(), 17);
    assert_eq!(l.ttl_offsets().len(), 3);
    assert_eq!(l.ancount(), 3);
    assert_eq!(l.min_answer_ttl(), Some(60));
    assert!(l.has_qtype_answer());
    assert_eq!(l.rcode(), 0);
    assert_eq!(l.negative_ttl(), None);
    assert_eq!(l.opt_start(), Some(src.len() - OPT_RR_LEN));
    assert!(l.opt_is_last());
    assert!(l.is_response());
    assert!(!l.truncated());
    // every offset points at the TTL we expect
    let ttls: Vec<u32> = l
        .ttl_offsets()
        .iter()
        .map(|&o| be32(&src, usize::from(o)).unwrap())
        .collect();
    assert_eq!(ttls, vec![300, 60, 120]);
}

#[test]
fn patches_id_case_and_ages_ttls() {
    let src = chain();
    let t = target(WWW_MIXED, None, PLAIN_UDP_MAX);
    let (out, msg) = patch(&src, &t, TtlPatch::Age(100));
    assert_eq!(msg.metadata.id, 0xBEEF);
    assert_eq!(&out[12..12 + WWW_MIXED.len()], WWW_MIXED);
    let ttls: Vec<u32> = msg.answers.iter().map(|r| r.ttl).collect();
    assert_eq!(ttls, vec![200, 0, 20]);
    // the CNAME owner is compressed to the question: it shows the client's case
    assert_eq!(msg.answers[0].name.to_ascii(), "WwW.ExAmPle.COM.");
    assert!(msg.metadata.recursion_available);
    assert_eq!(msg.answers.len(), 3);
}

#[test]
fn set_ttl_for_serve_stale() {
    let src = chain();
    let t = target(WWW_MIXED, EDNS, 1232);
    let (_, msg) = patch(&src, &t, TtlPatch::Set(30));
    assert!(msg.answers.iter().all(|r| r.ttl == 30));
}

#[test]
fn strips_opt_without_client_edns_and_keeps_it_with() {
    let src = chain();
    let t = target(WWW_MIXED, None, PLAIN_UDP_MAX);
    let (out, msg) = patch(&src, &t, TtlPatch::Age(0));
    assert!(msg.edns.is_none());
    assert_eq!(out.len(), src.len() - OPT_RR_LEN);
    assert_eq!(be16(&out, 10), Ok(0));

    let t = target(WWW_MIXED, EDNS, 1232);
    let (out, msg) = patch(&src, &t, TtlPatch::Age(0));
    let edns = msg.edns.expect("OPT kept");
    assert_eq!(edns.max_payload(), EDNS_UDP_SIZE);
    assert_eq!(out.len(), src.len());
    assert_eq!(be16(&out, 10), Ok(1));
}

#[test]
fn adds_opt_for_edns_client_when_stored_answer_has_none() {
    let src = response(
        "www.example.com.",
        RecordType::A,
        ResponseCode::NoError,
        vec![a("www.example.com.", 60, 1)],
        vec![],
        None,
    );
    let edns = Some(Edns {
        udp_size: 4096,
        dnssec_ok: true,
        version: 0,
    });
    let (out, msg) = patch(&src, &target(WWW_MIXED, edns, 4096), TtlPatch::Age(0));
    assert_eq!(out.len(), src.len() + OPT_RR_LEN);
    let e = msg.edns.expect("OPT added");
    assert_eq!(e.max_payload(), EDNS_UDP_SIZE);
    assert!(e.flags().dnssec_ok);
}

#[test]
fn keeps_dnssec_ok_and_ede_but_drops_other_options() {
    let src = response(
        "www.example.com.",
        RecordType::A,
        ResponseCode::NoError,
        vec![a("www.example.com.", 60, 1)],
        vec![],
        Some((
            true,
            vec![
                EdnsOption::Unknown(10, vec![1, 2, 3, 4, 5, 6, 7, 8]), // COOKIE
                EdnsOption::Unknown(15, vec![0, 3]),                   // EDE 3: stale
                EdnsOption::Unknown(12, vec![0; 16]),                  // padding
            ],
        )),
    );
    let (out, msg) = patch(&src, &target(WWW_MIXED, EDNS, 1232), TtlPatch::Age(0));
    let e = msg.edns.unwrap();
    assert!(e.flags().dnssec_ok);
    let codes: Vec<u16> = e
        .options()
        .options
        .iter()
        .map(|(c, _)| u16::from(*c))
        .collect();
    assert_eq!(codes, vec![15]);
    assert_eq!(out.len(), src.len() - 12 - 20);
    assert_eq!(
        e.option(EdnsCode::from(15)),
        Some(&EdnsOption::Unknown(15, vec![0, 3]))
    );
}

#[test]
fn nxdomain_with_soa() {
    let src = response(
        "nope.example.com.",
        RecordType::A,
        ResponseCode::NXDomain,
        vec![],
        vec![soa("example.com.", 900, 300)],
        Some((false, vec![])),
    );
    let l = AnswerLayout::parse(&src).unwrap();
    assert_eq!(l.rcode(), 3);
    assert_eq!(l.negative_ttl(), Some(300));
    assert_eq!(l.min_answer_ttl(), None);
    assert!(!l.has_qtype_answer());
    let qname = b"\x04NOPE\x07example\x03com\x00";
    let (_, msg) = patch(&src, &target(qname, None, 512), TtlPatch::Age(10));
    assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(msg.authorities[0].ttl, 890);
    // SOA TTL smaller than MINIMUM wins
    let src = response(
        "nope.example.com.",
        RecordType::A,
        ResponseCode::NXDomain,
        vec![],
        vec![soa("example.com.", 60, 300)],
        None,
    );
    assert_eq!(AnswerLayout::parse(&src).unwrap().negative_ttl(), Some(60));
}

#[test]
fn nodata_has_no_qtype_answer() {
    let src = response(
        "www.example.com.",
        RecordType::AAAA,
        ResponseCode::NoError,
        vec![cname("www.example.com.", 300, "cdn.example.net.")],
        vec![soa("example.net.", 600, 120)],
        None,
    );
    let l = AnswerLayout::parse(&src).unwrap();
    assert!(!l.has_qtype_answer());
    assert_eq!(l.negative_ttl(), Some(120));
    assert_eq!(l.min_answer_ttl(), Some(300));
}

/// Appends an A record after the OPT (which hickory puts last) and bumps ARCOUNT.
fn with_record_after_opt(mut src: Vec<u8>) -> Vec<u8> {
    src.extend_from_slice(b"\xC0\x0C\x00\x01\x00\x01\x00\x00\x00\x3C\x00\x04\xC6\x33\x64\x07");
    let ar = be16(&src, 10).unwrap() + 1;
    src[10..12].copy_from_slice(&ar.to_be_bytes());
    src
}

#[test]
fn opt_not_last_drops_the_records_after_it() {
    let base = chain();
    let src = with_record_after_opt(base.clone());
    let l = AnswerLayout::parse(&src).unwrap();
    assert!(!l.opt_is_last());
    assert_eq!(l.opt_start(), Some(base.len() - OPT_RR_LEN));
    assert_eq!(l.ttl_offsets().len(), 4);
    for edns in [None, EDNS] {
        let (_, msg) = patch(&src, &target(WWW_MIXED, edns, 1232), TtlPatch::Age(1));
        assert_eq!(msg.edns.is_some(), edns.is_some());
        assert!(msg.additionals.is_empty());
        assert_eq!(msg.answers.len(), 3);
    }
}

fn big_answer(n: u8) -> Vec<u8> {
    let answers = (0..n).map(|i| a("www.example.com.", 60, i)).collect();
    response(
        "www.example.com.",
        RecordType::A,
        ResponseCode::NoError,
        answers,
        vec![],
        Some((false, vec![EdnsOption::Unknown(15, vec![0, 3])])),
    )
}

#[test]
fn truncates_at_512_without_edns() {
    let src = big_answer(40);
    assert!(src.len() > PLAIN_UDP_MAX && src.len() < 1232);
    let (out, msg) = patch(
        &src,
        &target(WWW_MIXED, None, PLAIN_UDP_MAX),
        TtlPatch::Age(0),
    );
    assert!(msg.metadata.truncation);
    assert_eq!(msg.metadata.id, 0xBEEF);
    assert!(msg.answers.is_empty() && msg.additionals.is_empty());
    assert!(msg.edns.is_none());
    assert_eq!(msg.queries.len(), 1);
    assert_eq!(&out[12..12 + WWW_MIXED.len()], WWW_MIXED);
    assert_eq!(out.len(), 12 + WWW_MIXED.len() + 4);

    // the same answer fits an EDNS client
    let (_, msg) = patch(&src, &target(WWW_MIXED, EDNS, 1232), TtlPatch::Age(0));
    assert!(!msg.metadata.truncation);
    assert_eq!(msg.answers.len(), 40);

    // an EDNS client with a small buffer gets TC and a bare OPT
    let (out, msg) = patch(&src, &target(WWW_MIXED, EDNS, 512), TtlPatch::Age(0));
    assert!(msg.metadata.truncation);
    assert!(msg.answers.is_empty());
    let e = msg.edns.expect("OPT kept on truncation");
    assert!(e.options().options.is_empty());
    assert_eq!(out.len(), 12 + WWW_MIXED.len() + 4 + OPT_RR_LEN);
}

#[test]
fn exactly_max_size_is_not_truncated() {
    let src = big_answer(3);
    let stripped = AnswerLayout::parse(&src).unwrap().opt_start().unwrap();
    let t = target(WWW_MIXED, None, stripped);
    let (out, msg) = patch(&src, &t, TtlPatch::Age(0));
    assert!(!msg.metadata.truncation);
    assert_eq!(out.len(), stripped);
    let t = target(WWW_MIXED, None, stripped - 1);
    let (_, msg) = patch(&src, &t, TtlPatch::Age(0));
    assert!(msg.metadata.truncation);
}

#[test]
fn returns_zero_on_small_dst_or_wrong_name_or_wrong_message() {
    let src = chain();
    let l = AnswerLayout::parse(&src).unwrap();
    let t = target(WWW_MIXED, EDNS, 1232);
    let mut small = vec![0u8; src.len() - 1];
    assert_eq!(
        write_reply(&mut small, &src, &l, &t, TtlPatch::Age(0)),
        None
    );
    let mut dst = vec![0u8; 2048];
    let other = b"\x03www\x07example\x03org\x00";
    let t2 = target(other, EDNS, 1232);
    assert_eq!(write_reply(&mut dst, &src, &l, &t2, TtlPatch::Age(0)), None);
    let shorter = b"\x03www\x07example\x02co\x00";
    let t3 = target(shorter, EDNS, 1232);
    assert_eq!(write_reply(&mut dst, &src, &l, &t3, TtlPatch::Age(0)), None);
    let mut wrong = src.clone();
    wrong.push(0);
    assert_eq!(
        write_reply(&mut dst, &wrong, &l, &t, TtlPatch::Age(0)),
        None
    );
    assert!(write_reply(&mut dst, &src, &l, &t, TtlPatch::Age(0)).is_some());
}

#[test]
fn clamp_ttls_and_high_bit_ttls() {
    let mut src = chain();
    let l = AnswerLayout::parse(&src).unwrap();
    l.clamp_ttls(&mut src, 100, 250);
    let ttls: Vec<u32> = l
        .ttl_offsets()
        .iter()
        .map(|&o| be32(&src, usize::from(o)).unwrap())
        .collect();
    assert_eq!(ttls, vec![250, 100, 120]);
    // lo > hi: hi wins, no panic
    l.clamp_ttls(&mut src, 500, 10);
    assert!(l
        .ttl_offsets()
        .iter()
        .all(|&o| be32(&src, usize::from(o)) == Ok(10)));
    // a TTL with the top bit set reads as 0
    let off = usize::from(l.ttl_offsets()[1]);
    src[off..off + 4].copy_from_slice(&0x8000_0001u32.to_be_bytes());
    let l = AnswerLayout::parse(&src).unwrap();
    assert_eq!(l.min_answer_ttl(), Some(0));
}

#[test]
fn rejects_bad_shapes() {
    assert_eq!(AnswerLayout::parse(b"\x00\x01"), Err(WireError::Truncated));
    let src = chain();
    // QDCOUNT 2
    let mut m = src.clone();
    m[5] = 2;
    assert_eq!(AnswerLayout::parse(&m), Err(WireError::BadCount));
    // two OPTs
    let mut m = src.clone();
    m.extend_from_slice(&src[src.len() - OPT_RR_LEN..]);
    m[11] += 1;
    assert_eq!(AnswerLayout::parse(&m), Err(WireError::BadOpt));
    // OPT counted in the answer section
    let opt = src[src.len() - OPT_RR_LEN..].to_vec();
    let mut m = src[..src.len() - OPT_RR_LEN].to_vec();
    m.extend_from_slice(&opt);
    m[7] += 1;
    m[11] -= 1;
    // now ANCOUNT=4 covers the OPT and ARCOUNT=0
    assert_eq!(AnswerLayout::parse(&m), Err(WireError::BadOpt));
    // counts larger than the message
    let mut m = src[..src.len() - OPT_RR_LEN].to_vec();
    m[11] = 0;
    m[6] = 0xFF;
    assert_eq!(AnswerLayout::parse(&m), Err(WireError::Truncated));
}

#[test]
fn never_panics_on_prefixes_and_mutations() {
    let sources = [
        chain(),
        with_record_after_opt(chain()),
        big_answer(5),
        response(
            "nope.example.com.",
            RecordType::A,
            ResponseCode::NXDomain,
            vec![],
            vec![soa("example.com.", 900, 300)],
            Some((true, vec![EdnsOption::Unknown(15, vec![0, 3, b'x'])])),
        ),
    ];
    let mut dst = vec![0u8; 4096];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for src in &sources {
        let good = AnswerLayout::parse(src).unwrap();
        for cut in 0..src.len() {
            let _ = AnswerLayout::parse(&src[..cut]);
            // a layout paired with a shorter message writes nothing
            let t = target(WWW_MIXED, EDNS, 4096);
            assert_eq!(
                write_reply(&mut dst, &src[..cut], &good, &t, TtlPatch::Age(1)),
                None
            );
        }
        for _ in 0..2000 {
            let mut m = src.clone();
            for _ in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % m.len();
                m[i] = (seed >> 32) as u8;
            }
            if let Ok(l) = AnswerLayout::parse(&m) {
                let qname = m[12..12 + l.qname_len()].to_vec();
                for edns in [None, EDNS] {
                    for max in [0, 512, 65535] {
                        let t = target(&qname, edns, max);
                        let n = write_reply(&mut dst, &m, &l, &t, TtlPatch::Age(5));
                        assert!(n.unwrap_or(0) <= m.len() + REPLY_HEADROOM);
                    }
                }
            }
            // mismatched layout and message
            let t = target(WWW_MIXED, EDNS, 65535);
            let _ = write_reply(&mut dst, &m, &good, &t, TtlPatch::Set(30));
        }
    }
}

#[test]
fn an_rrsig_in_the_answer_marks_the_answer_signed() {
    let plain = response(
        "x.example.",
        RecordType::A,
        ResponseCode::NoError,
        vec![a("x.example.", 60, 1)],
        vec![],
        None,
    );
    assert!(!AnswerLayout::parse(&plain).unwrap().signed());
    // The same answer with an RRSIG over it appended: owner a pointer to the
    // question name, type 46, class IN, TTL 60, then the RRSIG RDATA (type covered
    // A, algorithm 13, 2 labels, original TTL, expiration, inception, key tag, the
    // root as signer, 4 bytes of signature).
    let mut signed = plain.clone();
    signed[7] += 1; // ANCOUNT
    let rdata: &[u8] = &[
        0, 1, 13, 2, 0, 0, 0, 60, 0x70, 0, 0, 0, 0x60, 0, 0, 0, 0x12, 0x34, 0, 1, 2, 3, 4,
    ];
    signed.extend_from_slice(&[0xC0, 12, 0, 46, 0, 1, 0, 0, 0, 60, 0, rdata.len() as u8]);
    signed.extend_from_slice(rdata);
    let layout = AnswerLayout::parse(&signed).unwrap();
    assert!(layout.signed());
    assert_eq!(layout.ancount(), 2);
}
