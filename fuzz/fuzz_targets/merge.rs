//! Fuzzes the background-completion merge of one flight's answers.
//!
//! The input is split into one to four messages, each behind a 2-byte big-endian
//! length (a length past the end takes what is left). `tiers::merge` never panics,
//! returns nothing for fewer than two answers, and when it merges: hickory decodes
//! the result; it has the first answer's header, question, authority, additional
//! section and EDNS; its addresses are a superset of the first answer's chain
//! addresses; the addresses it adds are exactly `extra_addresses` distinct ones at
//! the final owner, each from another answer, after the first answer's own chain
//! records; every answer record lies on the first answer's CNAME chain and all
//! share one TTL.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run merge corpus/merge seeds/merge`
#![no_main]

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use std::net::IpAddr;
use tierdns::tiers::{merge, MAX_MERGED_ADDRESSES};

fuzz_target!(|data: &[u8]| {
    let answers = split(data);
    let merged = merge(&answers);
    if answers.len() < 2 {
        assert!(merged.is_none(), "nothing to merge with");
        return;
    }
    assert!(merge(&answers[..1]).is_none(), "one answer never merges");
    let Some(merged) = merged else {
        return;
    };
    assert!(
        merged.extra_addresses > 0,
        "Some only when something was added"
    );
    assert!(merged.wire.len() <= 65_535);
    let first = Message::from_vec(answers[0]).expect("a merged first answer decodes");
    let m = Message::from_vec(&merged.wire).expect("hickory decodes the merged answer");

    // the first answer's header, question and other sections
    assert_eq!(m.metadata, first.metadata);
    assert_eq!(m.queries, first.queries);
    assert_eq!(m.authorities, first.authorities);
    assert_eq!(m.additionals, first.additionals);
    assert_eq!(m.edns, first.edns);
    let question = &first.queries[0];
    assert!(matches!(
        question.query_type,
        RecordType::A | RecordType::AAAA
    ));

    // every record on the first answer's chain, one TTL for all
    let chain = cname_chain(&first, question);
    let final_name = chain.last().expect("the chain holds the question name");
    assert!(
        m.answers.iter().all(|r| chain.contains(&r.name)),
        "a record off the chain"
    );
    assert!(m.answers.windows(2).all(|w| w[0].ttl == w[1].ttl));
    // the first answer's chain records come first, in order, repeated addresses
    // at the final owner dropped
    let mut seen = BTreeSet::new();
    let own: Vec<&Record> = first
        .answers
        .iter()
        .filter(|r| chain.contains(&r.name))
        .filter(|r| !address_of(r, question, final_name) || ip(r).is_some_and(|a| seen.insert(a)))
        .collect();
    assert!(own.len() < m.answers.len());
    for (got, want) in m.answers.iter().zip(&own) {
        assert_eq!(
            (&got.name, got.dns_class, &got.data),
            (&want.name, want.dns_class, &want.data)
        );
    }

    // a superset of the first answer's addresses on the chain
    let on_chain = |msg: &Message| -> BTreeSet<IpAddr> {
        msg.answers
            .iter()
            .filter(|r| chain.contains(&r.name))
            .filter_map(ip)
            .collect()
    };
    let before = on_chain(&first);
    let after = on_chain(&m);
    assert!(before.is_subset(&after), "{before:?} not in {after:?}");

    // the additions: distinct addresses of the question's type at the final owner,
    // counted by extra_addresses, each from another answer
    let at_final = |msg: &Message| -> Vec<IpAddr> {
        msg.answers
            .iter()
            .filter(|r| address_of(r, question, final_name))
            .filter_map(ip)
            .collect()
    };
    let first_final: BTreeSet<IpAddr> = at_final(&first).into_iter().collect();
    let merged_final = at_final(&m);
    let merged_set: BTreeSet<IpAddr> = merged_final.iter().copied().collect();
    assert_eq!(
        merged_final.len(),
        merged_set.len(),
        "addresses deduplicated"
    );
    assert!(merged_set.len() <= MAX_MERGED_ADDRESSES);
    let added: BTreeSet<IpAddr> = merged_set.difference(&first_final).copied().collect();
    assert_eq!(added.len(), merged.extra_addresses);
    assert_eq!(merged_set.len(), first_final.len() + merged.extra_addresses);
    let from_others: BTreeSet<IpAddr> = answers[1..]
        .iter()
        .filter_map(|bytes| Message::from_vec(bytes).ok())
        .flat_map(|o| at_final(&o))
        .collect();
    assert!(added.is_subset(&from_others), "an address from nowhere");
});

/// Up to four length-prefixed messages.
fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() < 4 {
        let [a, b, body @ ..] = rest else {
            break;
        };
        let len = usize::from(u16::from_be_bytes([*a, *b])).min(body.len());
        let (msg, tail) = body.split_at(len);
        out.push(msg);
        rest = tail;
    }
    out
}

fn ip(r: &Record) -> Option<IpAddr> {
    match &r.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
        _ => None,
    }
}

/// A record of the question's type and class at `owner`.
fn address_of(r: &Record, q: &Query, owner: &Name) -> bool {
    r.dns_class == q.query_class
        && r.name == *owner
        && matches!(
            (&r.data, q.query_type),
            (RData::A(_), RecordType::A) | (RData::AAAA(_), RecordType::AAAA)
        )
}

/// The question name, then each CNAME target in the answer section (stops at a
/// repeat; `merge` refuses loops anyway).
fn cname_chain(msg: &Message, q: &Query) -> Vec<Name> {
    let mut chain = vec![q.name.clone()];
    loop {
        let current = &chain[chain.len() - 1];
        let next = msg.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(t) if r.name == *current && r.dns_class == q.query_class => {
                Some(t.0.clone())
            }
            _ => None,
        });
        match next {
            Some(n) if !chain.contains(&n) => chain.push(n),
            _ => return chain,
        }
    }
}
