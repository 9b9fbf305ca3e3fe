//! The background-completion merge: one answer holding every upstream's addresses.
//!
//! Rare path (once per completed flight), so it decodes and re-encodes with
//! hickory-proto and allocates freely. It is a pure function of its input bytes and
//! never panics on any of them: anything it cannot read or would have to guess about
//! yields `None`, and the caller keeps the first answer as it is.
//!
//! Rules (the tier algorithm's step 5, `tiers` module doc):
//! - only a NOERROR first answer to one A or AAAA question is merged;
//! - the CNAME chain is the first answer's: from the question name, each CNAME at the
//!   current name leads to the next (at most [`MAX_CHAIN`] links, loops rejected); the
//!   last name is the final owner;
//! - another answer is merged only if it is NOERROR, not truncated, has the same
//!   question and the same chain (names compared ignoring case); otherwise it is
//!   skipped entirely. When the first answer has AD set, answers without AD are
//!   skipped too, so unvalidated data never rides on a validated flag;
//! - from a merged answer only the records of the question's type and class at the
//!   final owner are taken, deduplicated by address, up to
//!   [`MAX_MERGED_ADDRESSES`] addresses in all;
//! - with `min_agree` above 1 (`[tiers] merge_min_agree`), an address the first
//!   answer does not hold is taken only if at least that many of the other answers
//!   hold it: one upstream (or one forged reply that got through) cannot add an
//!   address alone. The first answer's own addresses always stay. The answers are
//!   one per upstream (a flight asks each upstream once), so this counts upstreams;
//!   at most [`MAX_CANDIDATES`] distinct addresses are counted;
//! - the answer section keeps only records whose owner is the question name or a name
//!   in the chain, the first answer's first; every kept record gets the minimum TTL.
//!   Another answer's address with a TTL below [`MERGE_TTL_FLOOR`] (or below the
//!   first answer's own minimum, if that is lower) is not taken: one record about to
//!   expire would take the whole merged answer's TTL down with it, and a TTL-0 entry
//!   means a fresh flight to every upstream at the next query;
//! - the merged answer stays as deliverable as the first: one that fit a plain
//!   512-byte UDP reply still does, and none grows past what an EDNS client takes
//!   ([`EDNS_UDP_SIZE`] less room for our OPT record), so a popular name does not
//!   send every client to TCP. Addresses are dropped from the end to fit;
//! - the first answer's header (ID, flags, RCODE), question, authority, additional
//!   section and OPT record are kept;
//! - a first answer with RRSIGs in its answer section is not merged: adding records
//!   to a signed RRset would break its signature for validating clients.

use crate::wire::answer::OPT_RR_LEN;
use crate::wire::{EDNS_UDP_SIZE, PLAIN_UDP_MAX};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

/// Most CNAME links followed from the question name.
pub const MAX_CHAIN: usize = 16;
/// Most address records in a merged answer.
pub const MAX_MERGED_ADDRESSES: usize = 256;
/// Most distinct addresses of the other answers counted for `min_agree` (those past
/// it are not taken).
pub const MAX_CANDIDATES: usize = 4 * MAX_MERGED_ADDRESSES;
/// Largest DNS message (TCP length prefix).
const MAX_MESSAGE: usize = 65_535;
/// Lowest TTL (seconds) of another answer's address that is merged, unless the first
/// answer's own minimum is lower.
pub const MERGE_TTL_FLOOR: u32 = 30;

/// A merged answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The merged message in wire form, with the first answer's ID and flags.
    pub wire: Vec<u8>,
    /// Addresses added beyond the first answer's.
    pub extra_addresses: usize,
    /// Where each record of `wire` came from, in message order (every record
    /// but OPT): the index of the answer in the input, and the record's index
    /// in that answer (message order, OPT not counted). The provenance of a
    /// cached record.
    pub origins: Vec<(usize, usize)>,
}

/// Merges the good answers of one flight; `answers[0]` is the one already sent to
/// clients. All should carry the same question (those that do not are skipped).
///
/// Returns `None` when there is nothing to add (fewer than two answers, no extra
/// address, a first answer that is not a mergeable A/AAAA NOERROR, or unreadable),
/// so the caller can skip the cache rewrite. Never panics.
pub fn merge(answers: &[&[u8]]) -> Option<Merged> {
    merge_agreed(answers, 1)
}

/// [`merge`], taking an address the first answer lacks only when at least
/// `min_agree` of the other answers give it (0 counts as 1).
pub fn merge_agreed(answers: &[&[u8]], min_agree: usize) -> Option<Merged> {
    let (first_bytes, others) = answers.split_first()?;
    if others.is_empty() {
        return None;
    }
    let mut first = Message::from_vec(first_bytes).ok()?;
    if first.metadata.response_code != ResponseCode::NoError
        || first.metadata.truncation
        || first.queries.len() != 1
    {
        return None;
    }
    let question = first.queries.first()?.clone();
    let qtype = question.query_type;
    if !matches!(qtype, RecordType::A | RecordType::AAAA) {
        return None;
    }
    if first
        .answers
        .iter()
        .any(|r| r.record_type() == RecordType::RRSIG)
    {
        return None;
    }
    let chain = cname_chain(&first, &question)?;
    let final_name = chain.last()?.clone();

    // The first answer's records that belong to the chain, addresses deduplicated,
    // with where each came from (answer, record).
    let mut addresses: Vec<IpAddr> = Vec::new();
    let mut kept: Vec<Record> = Vec::with_capacity(first.answers.len());
    let mut origins: Vec<(usize, usize)> = Vec::with_capacity(first.answers.len());
    let first_answers = first.answers.len();
    for (i, r) in first.answers.drain(..).enumerate() {
        if !chain.contains(&r.name) {
            continue;
        }
        if let Some(ip) = address_of(&r, &question, &final_name) {
            if addresses.contains(&ip) {
                continue;
            }
            addresses.push(ip);
        }
        kept.push(r);
        origins.push((0, i));
    }

    let first_len = first_bytes.len();
    let ttl_floor = kept
        .iter()
        .map(|r| r.ttl)
        .min()
        .unwrap_or(0)
        .min(MERGE_TTL_FLOOR);
    // The other answers' addresses the first lacks, in the order first seen, with
    // how many answers gave each.
    let mut candidates: Vec<(Record, usize, (usize, usize))> = Vec::new();
    let mut index: HashMap<IpAddr, usize> = HashMap::new();
    let mut in_this: HashSet<IpAddr> = HashSet::new();
    for (n, bytes) in others.iter().enumerate() {
        let Ok(other) = Message::from_vec(bytes) else {
            continue;
        };
        if other.metadata.response_code != ResponseCode::NoError
            || other.metadata.truncation
            || (first.metadata.authentic_data && !other.metadata.authentic_data)
            || other.queries.len() != 1
            || !same_question(other.queries.first(), &question)
        {
            continue;
        }
        match cname_chain(&other, &question) {
            Some(c) if c == chain => {}
            _ => continue,
        }
        in_this.clear();
        for (j, r) in other.answers.iter().enumerate() {
            let Some(ip) = address_of(r, &question, &final_name) else {
                continue;
            };
            if r.ttl < ttl_floor || addresses.contains(&ip) || !in_this.insert(ip) {
                continue;
            }
            match index.get(&ip) {
                Some(&i) => candidates[i].1 += 1,
                None if candidates.len() < MAX_CANDIDATES => {
                    index.insert(ip, candidates.len());
                    candidates.push((r.clone(), 1, (n + 1, j)));
                }
                None => {}
            }
        }
    }
    let mut extra = 0usize;
    for (r, agree, from) in candidates {
        if addresses.len() + extra >= MAX_MERGED_ADDRESSES {
            break;
        }
        if agree >= min_agree {
            kept.push(r);
            origins.push(from);
            extra += 1;
        }
    }
    if extra == 0 {
        return None;
    }

    let min_ttl = kept.iter().map(|r| r.ttl).min()?;
    for r in &mut kept {
        r.ttl = min_ttl;
    }
    first.signature = None;
    // As deliverable as the first answer (see the module docs).
    let limit = if first_len <= PLAIN_UDP_MAX {
        PLAIN_UDP_MAX
    } else {
        first_len.max(usize::from(EDNS_UDP_SIZE) - OPT_RR_LEN)
    };
    let limit = limit.min(MAX_MESSAGE);
    // The extra addresses are the last records: keep as many as fit (the most
    // that do, found by bisection: a handful of encodes, on a rare path).
    let base = kept.len() - extra;
    // The authority and additional records are the first answer's, after its
    // answer section (OPT, which hickory keeps apart, not counted).
    let rest = first.authorities.len() + first.additionals.len();
    let origins_of = |n: usize| -> Vec<(usize, usize)> {
        let mut out = origins[..base + n].to_vec();
        out.extend((0..rest).map(|i| (0, first_answers + i)));
        out
    };
    let mut encode = |n: usize| -> Option<Vec<u8>> {
        first.answers = kept[..base + n].to_vec();
        first.to_vec().ok().filter(|w| w.len() <= limit)
    };
    if let Some(wire) = encode(extra) {
        return Some(Merged {
            wire,
            extra_addresses: extra,
            origins: origins_of(extra),
        });
    }
    // Invariant: `lo` extras fit (0 is the first answer alone, which may not), `hi` do not.
    let (mut lo, mut hi) = (0, extra);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if encode(mid).is_some() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        return None;
    }
    encode(lo).map(|wire| Merged {
        wire,
        extra_addresses: lo,
        origins: origins_of(lo),
    })
}

fn same_question(q: Option<&Query>, want: &Query) -> bool {
    q.is_some_and(|q| {
        q.name == want.name && q.query_type == want.query_type && q.query_class == want.query_class
    })
}

/// The address of `r` if it is a record of the question's type and class at `owner`.
fn address_of(r: &Record, question: &Query, owner: &Name) -> Option<IpAddr> {
    if r.dns_class != question.query_class || r.name != *owner {
        return None;
    }
    match (&r.data, question.query_type) {
        (RData::A(a), RecordType::A) => Some(IpAddr::V4(a.0)),
        (RData::AAAA(aaaa), RecordType::AAAA) => Some(IpAddr::V6(aaaa.0)),
        _ => None,
    }
}

/// The question name followed by each CNAME target, in order. `None` on a loop or a
/// chain longer than [`MAX_CHAIN`].
fn cname_chain(msg: &Message, question: &Query) -> Option<Vec<Name>> {
    let mut chain = vec![question.name.clone()];
    loop {
        let current = chain.last()?;
        let next = msg.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if r.name == *current && r.dns_class == question.query_class => {
                Some(target.0.clone())
            }
            _ => None,
        });
        let Some(next) = next else {
            return Some(chain);
        };
        if chain.contains(&next) || chain.len() > MAX_CHAIN {
            return None;
        }
        chain.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, OpCode};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
    use std::str::FromStr;

    fn name(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    fn a(owner: &str, ttl: u32, ip: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A(ip.parse().unwrap())))
    }

    fn aaaa(owner: &str, ttl: u32, ip: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::AAAA(AAAA(ip.parse().unwrap())))
    }

    fn cname(owner: &str, ttl: u32, target: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
    }

    fn answer(qname: &str, qtype: RecordType, records: Vec<Record>) -> Message {
        let mut m = Message::response(0x1234, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.metadata.recursion_available = true;
        m.add_query(Query::query(name(qname), qtype));
        for r in records {
            m.add_answer(r);
        }
        m
    }

    fn wire(m: &Message) -> Vec<u8> {
        m.to_vec().unwrap()
    }

    fn merge_msgs(msgs: &[Message]) -> Option<(Message, usize)> {
        merge_msgs_agreed(msgs, 1)
    }

    fn merge_msgs_agreed(msgs: &[Message], min_agree: usize) -> Option<(Message, usize)> {
        let wires: Vec<Vec<u8>> = msgs.iter().map(wire).collect();
        let refs: Vec<&[u8]> = wires.iter().map(Vec::as_slice).collect();
        let merged = merge_agreed(&refs, min_agree)?;
        Some((
            Message::from_vec(&merged.wire).unwrap(),
            merged.extra_addresses,
        ))
    }

    fn addresses(m: &Message) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = list.iter().map(|s| s.parse().unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn union_deduplicated_by_address() {
        let q = "www.example.com.";
        let first = answer(
            q,
            RecordType::A,
            vec![a(q, 300, "192.0.2.1"), a(q, 300, "192.0.2.2")],
        );
        let second = answer(
            q,
            RecordType::A,
            vec![a(q, 300, "192.0.2.2"), a(q, 300, "192.0.2.3")],
        );
        let third = answer(
            q,
            RecordType::A,
            vec![a(q, 300, "192.0.2.4"), a(q, 300, "192.0.2.3")],
        );
        let (m, extra) = merge_msgs(&[first, second, third]).unwrap();
        assert_eq!(extra, 2);
        assert_eq!(
            addresses(&m),
            ips(&["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"])
        );
        // The first answer's records come first, in their order.
        assert_eq!(m.answers[0], a(q, 300, "192.0.2.1"));
    }

    #[test]
    fn with_min_agree_an_address_is_taken_only_from_that_many_upstreams() {
        let q = "www.example.com.";
        let msg = |last: &[u8]| {
            let records = last
                .iter()
                .map(|n| a(q, 300, &format!("192.0.2.{n}")))
                .collect();
            answer(q, RecordType::A, records)
        };
        let ours = |last: &[u8]| {
            let list: Vec<String> = last.iter().map(|n| format!("192.0.2.{n}")).collect();
            ips(&list.iter().map(String::as_str).collect::<Vec<_>>())
        };
        // 3 from three upstreams, 4 from two (twice in one answer: counted once),
        // 5 from one.
        let all = [msg(&[1, 2]), msg(&[2, 3, 4, 4]), msg(&[3, 5]), msg(&[3, 4])];
        let (m, extra) = merge_msgs_agreed(&all, 1).unwrap();
        assert_eq!((addresses(&m), extra), (ours(&[1, 2, 3, 4, 5]), 3));
        assert_eq!(merge_msgs_agreed(&all, 0), merge_msgs_agreed(&all, 1));
        let (m, extra) = merge_msgs_agreed(&all, 2).unwrap();
        assert_eq!((addresses(&m), extra), (ours(&[1, 2, 3, 4]), 2));
        // The first answer's own addresses stay, whoever else gave them.
        let (m, extra) = merge_msgs_agreed(&all, 3).unwrap();
        assert_eq!((addresses(&m), extra), (ours(&[1, 2, 3]), 1));
        assert_eq!(
            merge_msgs_agreed(&all, 4),
            None,
            "nothing has four upstreams"
        );
        // One upstream repeating an address does not agree with itself.
        assert_eq!(merge_msgs_agreed(&[msg(&[1]), msg(&[7, 7, 7])], 2), None);
        // Answers that are skipped (another question, truncated) do not count.
        let mut truncated = msg(&[9]);
        truncated.metadata.truncation = true;
        let other = answer(
            "x.example.",
            RecordType::A,
            vec![a("x.example.", 300, "192.0.2.9")],
        );
        assert_eq!(
            merge_msgs_agreed(&[msg(&[1]), msg(&[9]), truncated, other], 2),
            None
        );
    }

    #[test]
    fn aaaa_is_merged_and_other_types_ignored() {
        let q = "v6.example.";
        let first = answer(q, RecordType::AAAA, vec![aaaa(q, 60, "2001:db8::1")]);
        let second = answer(
            q,
            RecordType::AAAA,
            vec![aaaa(q, 60, "2001:db8::2"), a(q, 60, "192.0.2.9")],
        );
        let (m, extra) = merge_msgs(&[first, second]).unwrap();
        assert_eq!(extra, 1);
        assert_eq!(addresses(&m), ips(&["2001:db8::1", "2001:db8::2"]));
    }

    #[test]
    fn header_question_authority_and_opt_are_the_first_answers() {
        let q = "www.example.com.";
        let mut first = answer(q, RecordType::A, vec![a(q, 300, "192.0.2.1")]);
        first.metadata.id = 0xBEEF;
        first.metadata.authoritative = true;
        first.add_authority(Record::from_rdata(
            name("example.com."),
            100,
            RData::TXT(TXT::new(vec!["auth".into()])),
        ));
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        first.set_edns(edns);
        let mut second = answer(q, RecordType::A, vec![a(q, 300, "192.0.2.7")]);
        second.metadata.id = 0x0001;
        second.metadata.authoritative = false;
        let (m, _) = merge_msgs(&[first.clone(), second]).unwrap();
        assert_eq!(m.metadata.id, 0xBEEF);
        assert!(m.metadata.authoritative);
        assert!(m.metadata.recursion_available);
        assert_eq!(m.queries, first.queries);
        assert_eq!(m.authorities, first.authorities);
        assert_eq!(m.edns.as_ref().map(Edns::max_payload), Some(1232));
    }

    #[test]
    fn cname_chain_kept_and_answers_with_a_different_chain_skipped() {
        let q = "www.example.com.";
        let first = answer(
            q,
            RecordType::A,
            vec![
                cname(q, 300, "cdn.example.net."),
                cname("cdn.example.net.", 300, "edge.example.net."),
                a("edge.example.net.", 300, "192.0.2.1"),
            ],
        );
        // Same chain, other letter case: merged.
        let same = answer(
            q,
            RecordType::A,
            vec![
                cname("WWW.example.com.", 300, "CDN.example.net."),
                cname("cdn.example.net.", 300, "edge.example.NET."),
                a("Edge.example.net.", 300, "192.0.2.2"),
            ],
        );
        // Different chain (another CDN): skipped entirely, though it has addresses
        // at a name that is in the first chain.
        let other_cdn = answer(
            q,
            RecordType::A,
            vec![
                cname(q, 300, "other.example.org."),
                a("other.example.org.", 300, "198.51.100.1"),
                a("edge.example.net.", 300, "198.51.100.2"),
            ],
        );
        // No chain at all: skipped.
        let direct = answer(q, RecordType::A, vec![a(q, 300, "203.0.113.1")]);
        let (m, extra) = merge_msgs(&[first, other_cdn, same, direct]).unwrap();
        assert_eq!(extra, 1);
        assert_eq!(addresses(&m), ips(&["192.0.2.1", "192.0.2.2"]));
        let cnames: Vec<_> = m
            .answers
            .iter()
            .filter(|r| r.record_type() == RecordType::CNAME)
            .map(|r| r.name.clone())
            .collect();
        assert_eq!(cnames, vec![name(q), name("cdn.example.net.")]);
    }

    #[test]
    fn foreign_owner_names_dropped() {
        let q = "www.example.com.";
        let first = answer(
            q,
            RecordType::A,
            vec![
                a(q, 300, "192.0.2.1"),
                a("evil.example.org.", 300, "6.6.6.6"),
            ],
        );
        let second = answer(
            q,
            RecordType::A,
            vec![
                a(q, 300, "192.0.2.2"),
                a("bad.example.org.", 300, "6.6.6.7"),
            ],
        );
        let (m, extra) = merge_msgs(&[first, second]).unwrap();
        assert_eq!(extra, 1);
        assert!(m.answers.iter().all(|r| r.name == name(q)));
        assert_eq!(addresses(&m), ips(&["192.0.2.1", "192.0.2.2"]));
    }

    #[test]
    fn ttl_is_the_minimum_of_all_kept_records() {
        let q = "www.example.com.";
        let first = answer(
            q,
            RecordType::A,
            vec![
                cname(q, 600, "x.example.net."),
                a("x.example.net.", 300, "192.0.2.1"),
            ],
        );
        let second = answer(
            q,
            RecordType::A,
            vec![
                cname(q, 5000, "x.example.net."),
                a("x.example.net.", 45, "192.0.2.2"),
                // A foreign record's TTL does not count.
                a("other.example.", 1, "192.0.2.3"),
            ],
        );
        let (m, _) = merge_msgs(&[first, second]).unwrap();
        assert_eq!(m.answers.len(), 3);
        assert!(m.answers.iter().all(|r| r.ttl == 45), "{:?}", m.answers);
    }

    #[test]
    fn nothing_to_add_gives_none() {
        let q = "www.example.com.";
        let first = answer(q, RecordType::A, vec![a(q, 300, "192.0.2.1")]);
        assert_eq!(
            merge_msgs(std::slice::from_ref(&first)),
            None,
            "single answer"
        );
        assert_eq!(merge(&[]), None);
        let same = answer(q, RecordType::A, vec![a(q, 30, "192.0.2.1")]);
        assert_eq!(merge_msgs(&[first.clone(), same]), None, "no extra address");
        let nodata = answer(q, RecordType::A, vec![]);
        assert_eq!(merge_msgs(&[first, nodata]), None);
    }

    #[test]
    fn nxdomain_and_other_qtypes_untouched() {
        let q = "www.example.com.";
        let mut nx = answer(q, RecordType::A, vec![]);
        nx.metadata.response_code = ResponseCode::NXDomain;
        let good = answer(q, RecordType::A, vec![a(q, 300, "192.0.2.1")]);
        assert_eq!(merge_msgs(&[nx.clone(), good.clone()]), None);
        // An NXDOMAIN among the others is skipped, not merged.
        let more = answer(q, RecordType::A, vec![a(q, 300, "192.0.2.2")]);
        let (m, extra) = merge_msgs(&[good, nx, more]).unwrap();
        assert_eq!(extra, 1);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        let mx1 = answer(q, RecordType::MX, vec![]);
        let mx2 = answer(q, RecordType::MX, vec![]);
        assert_eq!(merge_msgs(&[mx1, mx2]), None);
    }

    #[test]
    fn other_questions_truncated_and_unvalidated_answers_skipped() {
        let q = "www.example.com.";
        let first = answer(q, RecordType::A, vec![a(q, 300, "192.0.2.1")]);
        let other_name = answer(
            "elsewhere.example.",
            RecordType::A,
            vec![a("elsewhere.example.", 300, "192.0.2.2")],
        );
        let mut truncated = answer(q, RecordType::A, vec![a(q, 300, "192.0.2.3")]);
        truncated.metadata.truncation = true;
        assert_eq!(merge_msgs(&[first.clone(), other_name, truncated]), None);

        let mut validated = first.clone();
        validated.metadata.authentic_data = true;
        let unvalidated = answer(q, RecordType::A, vec![a(q, 300, "192.0.2.4")]);
        assert_eq!(merge_msgs(&[validated.clone(), unvalidated.clone()]), None);
        let mut also_validated = unvalidated;
        also_validated.metadata.authentic_data = true;
        let (m, _) = merge_msgs(&[validated, also_validated]).unwrap();
        assert!(m.metadata.authentic_data);
    }

    #[test]
    fn signed_first_answer_is_not_merged() {
        let q = "www.example.com.";
        let mut first = answer(q, RecordType::A, vec![a(q, 300, "192.0.2.1")]);
        // An RRSIG as raw bytes: type 46, opaque data (hickory decodes it as unknown
        // without the dnssec feature, or as RRSIG with it; either way it is RRSIG).
        let mut wire_first = wire(&first);
        first.answers.clear();
        let rrsig_rr: &[u8] = &[
            0xC0, 0x0C, 0x00, 0x2E, 0x00, 0x01, 0x00, 0x00, 0x01, 0x2C, 0x00, 0x13, 0x00, 0x01,
            0x08, 0x03, 0x00, 0x00, 0x01, 0x2C, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0xAA,
        ];
        wire_first.extend_from_slice(rrsig_rr);
        // ANCOUNT 1 -> 2
        wire_first[7] = 2;
        let decoded = Message::from_vec(&wire_first);
        let second = wire(&answer(q, RecordType::A, vec![a(q, 300, "192.0.2.2")]));
        // Whether or not hickory can decode this RRSIG, no merge must happen.
        if let Ok(d) = decoded {
            assert!(d
                .answers
                .iter()
                .any(|r| r.record_type() == RecordType::RRSIG));
        }
        assert_eq!(merge(&[&wire_first, &second]), None);
    }

    #[test]
    fn cname_loop_is_not_merged() {
        let q = "a.example.";
        let looped = answer(
            q,
            RecordType::A,
            vec![cname(q, 60, "b.example."), cname("b.example.", 60, q)],
        );
        let good = answer(q, RecordType::A, vec![a(q, 60, "192.0.2.1")]);
        assert_eq!(merge_msgs(&[looped.clone(), good.clone()]), None);
        // A looping other answer is skipped.
        let more = answer(q, RecordType::A, vec![a(q, 60, "192.0.2.2")]);
        let (_, extra) = merge_msgs(&[good, looped, more]).unwrap();
        assert_eq!(extra, 1);
    }

    fn many(q: &str, base: u32, n: u32) -> Vec<Record> {
        (0..n)
            .map(|i| a(q, 60, &std::net::Ipv4Addr::from(base + i).to_string()))
            .collect()
    }

    #[test]
    fn a_merge_of_a_small_answer_still_fits_a_plain_udp_reply() {
        let q = "many.example.";
        let first = answer(q, RecordType::A, vec![a(q, 60, "10.0.0.1")]);
        let second = answer(q, RecordType::A, many(q, 0x0A01_0000, 400));
        let wires = [wire(&first), wire(&second)];
        let merged = merge(&[&wires[0], &wires[1]]).unwrap();
        assert!(merged.wire.len() <= PLAIN_UDP_MAX, "{}", merged.wire.len());
        assert!(
            merged.wire.len() > PLAIN_UDP_MAX - 16,
            "filled up to the limit: {}",
            merged.wire.len()
        );
        let m = Message::from_vec(&merged.wire).unwrap();
        assert_eq!(m.answers.len(), merged.extra_addresses + 1);
        assert_eq!(addresses(&m)[0], "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_merge_of_an_edns_sized_answer_stays_within_what_edns_clients_take() {
        let q = "many.example.";
        let first = answer(q, RecordType::A, many(q, 0x0A00_0000, 40));
        let first_len = wire(&first).len();
        assert!(first_len > PLAIN_UDP_MAX);
        let second = answer(q, RecordType::A, many(q, 0x0A01_0000, 400));
        let (m, extra) = merge_msgs(&[first, second]).unwrap();
        let len = m.to_vec().unwrap().len();
        assert!(len <= usize::from(EDNS_UDP_SIZE) - OPT_RR_LEN, "{len}");
        assert!(len > first_len && extra > 0);
        assert_eq!(m.answers.len(), 40 + extra);
        // A first answer already at the limit has no room: nothing is merged.
        let full = answer(q, RecordType::A, many(q, 0x0A00_0000, 80));
        assert!(wire(&full).len() > usize::from(EDNS_UDP_SIZE));
        let more = answer(q, RecordType::A, many(q, 0x0A02_0000, 10));
        assert!(merge_msgs(&[full, more]).is_none());
        assert!(MAX_MERGED_ADDRESSES * 16 > usize::from(EDNS_UDP_SIZE));
    }

    #[test]
    fn addresses_about_to_expire_are_not_merged() {
        let q = "www.example.com.";
        let first = answer(q, RecordType::A, vec![a(q, 300, "192.0.2.1")]);
        let dying = answer(
            q,
            RecordType::A,
            vec![a(q, 0, "192.0.2.2"), a(q, 5, "192.0.2.3")],
        );
        assert!(
            merge_msgs(&[first.clone(), dying]).is_none(),
            "nothing kept"
        );
        let fine = answer(
            q,
            RecordType::A,
            vec![a(q, 29, "192.0.2.4"), a(q, 30, "192.0.2.5")],
        );
        let (m, extra) = merge_msgs(&[first, fine]).unwrap();
        assert_eq!(extra, 1);
        assert!(m.answers.iter().all(|r| r.ttl == MERGE_TTL_FLOOR));
        // A first answer with a short TTL of its own lowers the floor with it.
        let short = answer(q, RecordType::A, vec![a(q, 4, "192.0.2.1")]);
        let also = answer(q, RecordType::A, vec![a(q, 4, "192.0.2.6")]);
        assert!(merge_msgs(&[short, also]).is_some());
    }

    #[test]
    fn garbage_never_panics_and_gives_none() {
        let q = "www.example.com.";
        let good = wire(&answer(q, RecordType::A, vec![a(q, 300, "192.0.2.1")]));
        let more = wire(&answer(q, RecordType::A, vec![a(q, 300, "192.0.2.2")]));
        assert_eq!(merge(&[b"", &good]), None);
        assert_eq!(merge(&[b"\xff\xff\xff", &good]), None);
        // Garbage among the others is skipped.
        assert_eq!(
            merge(&[&good, b"\x00\x01garbage", &more]).map(|m| m.extra_addresses),
            Some(1)
        );
        // Every truncation and single-byte corruption of a real pair: no panic.
        for cut in 0..more.len() {
            let _ = merge(&[&good, &more[..cut]]);
            let _ = merge(&[&more[..cut], &good]);
        }
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..good.len() * 64 {
            let mut g = good.clone();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let pos = i % g.len();
            g[pos] = (state >> 24) as u8;
            // Whatever comes out must itself be a readable message.
            for out in [merge(&[&g, &more]), merge(&[&more, &g, &g])]
                .into_iter()
                .flatten()
            {
                assert!(Message::from_vec(&out.wire).is_ok());
            }
        }
    }

    /// Each record of the merge names the answer it came from and its place
    /// there: the first answer's kept records (a CNAME chain, its addresses,
    /// its authority section) as answer 0, each added address as the first
    /// other answer that gave it.
    #[test]
    fn origins_name_the_answer_and_record_each_merged_record_came_from() {
        let q = "www.example.com.";
        let t = "edge.example.net.";
        let mut first = answer(
            q,
            RecordType::A,
            vec![cname(q, 300, t), a(t, 300, "192.0.2.1")],
        );
        first.add_authority(Record::from_rdata(
            name("example.net."),
            300,
            RData::CNAME(CNAME(name("ns.example.net."))),
        ));
        let second = answer(
            q,
            RecordType::A,
            vec![
                cname(q, 300, t),
                a(t, 300, "192.0.2.1"),
                a(t, 300, "192.0.2.2"),
            ],
        );
        let third = answer(
            q,
            RecordType::A,
            vec![
                cname(q, 300, t),
                a(t, 300, "192.0.2.3"),
                a(t, 300, "192.0.2.2"),
            ],
        );
        let wires: Vec<Vec<u8>> = [first, second, third].iter().map(wire).collect();
        let refs: Vec<&[u8]> = wires.iter().map(Vec::as_slice).collect();
        let merged = merge(&refs).unwrap();
        assert_eq!(merged.extra_addresses, 2);
        assert_eq!(
            merged.origins,
            [(0, 0), (0, 1), (1, 2), (2, 1), (0, 2)],
            "chain and address from the first, .2 from the second, .3 from the third, then the authority"
        );
        let m = Message::from_vec(&merged.wire).unwrap();
        assert_eq!(
            m.answers.len() + m.authorities.len() + m.additionals.len(),
            merged.origins.len()
        );
    }
}
