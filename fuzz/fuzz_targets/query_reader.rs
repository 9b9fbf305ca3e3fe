//! Fuzzes the client query reader and everything built from what it reads.
//!
//! For arbitrary bytes: `QueryView::parse` never panics, and when it accepts a query
//! its invariants hold (the name is the client's bytes, its lowercase form matches,
//! offsets are in bounds, version 0). The upstream query written from it re-parses to
//! the same lowercased question and DO bit, and hickory decodes both it and every
//! error reply. Rejects map to replies hickory decodes. `formerr_from_header` and
//! `name::read_name_lower` see the same bytes at a few offsets.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run query_reader corpus/query_reader seeds/query_reader`
//! (new inputs go to the first, git-ignored, directory; `seeds/` holds hand-made queries).
#![no_main]

use hickory_proto::op::{Message, MessageType, ResponseCode};
use libfuzzer_sys::fuzz_target;
use tierdns::wire::build::{
    any_reply, error_reply, formerr_from_header, reject_reply, truncated_reply,
    write_upstream_query, Ede, ErrorRcode,
};
use tierdns::wire::name::{read_name_lower, skip_name, MAX_NAME_LEN};
use tierdns::wire::reader::{QueryView, Reject};
use tierdns::wire::{EDNS_UDP_SIZE, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    check_names(data);
    check_formerr(data);
    match QueryView::parse(data) {
        Ok(q) => check_query(data, &q),
        Err(reject) => check_reject(data, reject),
    }
});

fn check_names(data: &[u8]) {
    let mut out = [0u8; MAX_NAME_LEN];
    for pos in [0, HEADER_LEN, data.len() / 2, data.len().saturating_sub(3)] {
        if let Ok((len, end)) = read_name_lower(data, pos, &mut out) {
            assert!(len <= MAX_NAME_LEN && end <= data.len() && end > pos);
            assert_eq!(out[len - 1], 0, "a name ends with the root label");
            assert!(!out[..len].iter().any(u8::is_ascii_uppercase));
            // skip_name agrees on where the name ends
            assert_eq!(skip_name(data, pos), Ok(end));
        }
    }
}

fn check_formerr(data: &[u8]) {
    match formerr_from_header(data) {
        Some(reply) => {
            assert!(data.len() >= HEADER_LEN && data[2] & 0x80 == 0);
            let m = Message::from_vec(&reply).expect("hickory decodes our FORMERR");
            assert_eq!(m.id, u16::from_be_bytes([data[0], data[1]]));
            assert_eq!(u8::from(m.op_code), (data[2] >> 3) & 0x0F);
            assert_eq!(m.message_type, MessageType::Response);
            assert_eq!(m.response_code, ResponseCode::FormErr);
            assert!(m.queries.is_empty() && m.edns.is_none());
        }
        None => assert!(data.len() < HEADER_LEN || data[2] & 0x80 != 0),
    }
}

fn check_query(data: &[u8], q: &QueryView<'_>) {
    // reader invariants
    assert!(q.question_end <= data.len());
    assert_eq!(q.question_end, HEADER_LEN + q.qname.len() + 4);
    assert_eq!(&data[HEADER_LEN..HEADER_LEN + q.qname.len()], q.qname);
    assert_eq!(q.qname.to_ascii_lowercase(), q.qname_lower());
    assert!(q.qname.len() <= MAX_NAME_LEN);
    assert_eq!(q.header.qdcount, 1);
    assert!(!q.header.qr() && q.header.opcode() == 0);
    assert!(q.edns.is_none_or(|e| e.version == 0));

    // upstream query: re-parses to the same question and DO bit
    let mut buf = [0u8; 512];
    let n = write_upstream_query(&mut buf, 0x5A5A, q);
    assert!(n > 0, "a 512-byte buffer always fits the upstream query");
    let up = QueryView::parse(&buf[..n]).expect("our upstream query parses");
    assert_eq!(up.header.id, 0x5A5A);
    assert!(up.header.rd());
    assert_eq!(up.header.cd(), q.header.cd());
    assert_eq!(up.qname, q.qname_lower());
    assert_eq!(up.qname_lower(), q.qname_lower());
    assert_eq!((up.qtype, up.qclass), (q.qtype, q.qclass));
    assert_eq!(up.dnssec_ok(), q.dnssec_ok());
    assert_eq!(up.edns.map(|e| e.udp_size), Some(EDNS_UDP_SIZE));
    let m = Message::from_vec(&buf[..n]).expect("hickory decodes our upstream query");
    assert_eq!(m.queries.len(), 1);

    // error replies: decodable, question echoed verbatim, OPT only with client EDNS
    for (rcode, ede) in [
        (ErrorRcode::ServFail, Some(Ede::NO_REACHABLE_AUTHORITY)),
        (ErrorRcode::Refused, None),
        (ErrorRcode::BadVers, Some(Ede::OTHER)),
    ] {
        let reply = error_reply(q, rcode, ede);
        let m = Message::from_vec(&reply).expect("hickory decodes our error reply");
        assert_eq!(m.id, q.header.id);
        assert_eq!(m.message_type, MessageType::Response);
        assert_eq!(u16::from(m.response_code), rcode.code());
        assert_eq!(m.queries.len(), 1, "question echoed");
        assert_eq!(
            reply.get(HEADER_LEN..q.question_end),
            data.get(HEADER_LEN..q.question_end),
            "question bytes echoed verbatim"
        );
        let want_opt = q.edns.is_some() || rcode == ErrorRcode::BadVers;
        assert_eq!(m.edns.is_some(), want_opt);
        if let Some(edns) = &m.edns {
            assert_eq!(edns.flags().dnssec_ok, q.dnssec_ok());
            let has_ede = !edns.options().as_ref().is_empty();
            assert_eq!(has_ede, q.edns.is_some() && ede.is_some());
        }
    }
    // local NOERROR replies (ANY, rate-limited TC): decodable, question verbatim,
    // OPT only with client EDNS, within the size asked for when it can be
    let any = any_reply(q, 512);
    let tc = truncated_reply(q);
    for (reply, what) in [(&any, "ANY"), (&tc, "TC")] {
        let m = Message::from_vec(reply).expect("hickory decodes our local reply");
        assert_eq!(m.id, q.header.id, "{what}");
        assert_eq!(m.response_code, ResponseCode::NoError, "{what}");
        assert_eq!(m.queries.len(), 1, "{what}: question echoed");
        assert_eq!(
            reply.get(HEADER_LEN..q.question_end),
            data.get(HEADER_LEN..q.question_end),
            "{what}: question bytes echoed verbatim"
        );
        assert_eq!(m.edns.is_some(), q.edns.is_some(), "{what}");
    }
    assert!(any.len() <= 512, "an ANY answer fits any client");
    let m = Message::from_vec(&tc).unwrap();
    assert!(m.truncation && m.answers.is_empty());
}

fn check_reject(data: &[u8], reject: Reject) {
    let reply = reject_reply(data, reject);
    match reject {
        Reject::Drop(_) => assert!(reply.is_none()),
        Reject::FormErr | Reject::NotImp | Reject::BadVers => {
            let reply = reply.expect("answerable rejects get a reply");
            let m = Message::from_vec(&reply).expect("hickory decodes our reject reply");
            assert_eq!(m.id, u16::from_be_bytes([data[0], data[1]]));
            let want = match reject {
                Reject::NotImp => 4,
                Reject::BadVers => 16,
                _ => 1,
            };
            assert_eq!(u16::from(m.response_code), want);
            if reject == Reject::NotImp {
                // an unknown opcode: nothing echoed but the ID and the opcode
                assert_eq!(reply.get(2).map(|b| b & 0x87), Some(0x80));
                assert_eq!(reply.get(3), Some(&0x04));
            }
        }
    }
}
