//! TTL policy: which answers are cached, and for how long.
//!
//! - Positive (NOERROR with a record of the question's type): the minimum TTL of the
//!   answer section, clamped to `[min_ttl, max_ttl]`.
//! - Negative (RFC 2308): NXDOMAIN, or NOERROR without a record of the question's
//!   type (NODATA, also after a CNAME chain), *with* an SOA in the authority
//!   section: min(SOA TTL, SOA MINIMUM, any answer-section TTL) clamped to
//!   `[negative_min_ttl, negative_max_ttl]`. Without an SOA a negative answer is
//!   not cached (RFC 2308 section 5: it SHOULD NOT be).
//! - SERVFAIL: `servfail_ttl` (RFC 9520).
//! - Everything else is not cached: other rcodes, referrals and other NOERROR
//!   shapes without the question's type and without an SOA (e.g. a bare CNAME
//!   chain), truncated (TC) answers, non-responses and other opcodes.
//!
//! Every stored TTL is then rewritten to `rr_ttl.max(lo).min(entry_ttl)`, so no
//! record is shown to clients for longer than its entry lives, and the SOA of a
//! negative answer shows the negative TTL as RFC 2308 section 5 asks.
//! Clamps are `max` then `min`, so an inverted config never panics (the upper bound
//! wins).

use super::config::CacheConfig;
use crate::wire::answer::AnswerLayout;
use crate::wire::rcode;

/// What kind of answer an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Positive,
    Negative,
    ServFail,
}

/// The TTL decision for one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Policy {
    pub(super) kind: Kind,
    /// Entry lifetime, seconds.
    pub(super) ttl: u32,
    /// Lower bound for the stored record TTLs.
    pub(super) lo: u32,
}

/// Decides whether and for how long `layout`'s message is cached; `None` if not.
/// The header checks (QR, opcode) are the caller's.
pub(super) fn policy(layout: &AnswerLayout, cfg: &CacheConfig) -> Option<Policy> {
    if layout.truncated() {
        return None;
    }
    let negative = |layout: &AnswerLayout| {
        let soa = layout.negative_ttl()?;
        let natural = soa.min(layout.min_answer_ttl().unwrap_or(u32::MAX));
        Some(Policy {
            kind: Kind::Negative,
            ttl: natural.max(cfg.negative_min_ttl).min(cfg.negative_max_ttl),
            lo: cfg.negative_min_ttl,
        })
    };
    match layout.rcode() {
        rcode::NOERROR if layout.has_qtype_answer() => {
            let natural = layout.min_answer_ttl()?;
            Some(Policy {
                kind: Kind::Positive,
                ttl: natural.max(cfg.min_ttl).min(cfg.max_ttl),
                lo: cfg.min_ttl,
            })
        }
        rcode::NOERROR | rcode::NXDOMAIN => negative(layout),
        rcode::SERVFAIL => Some(Policy {
            kind: Kind::ServFail,
            ttl: cfg.servfail_ttl,
            lo: 0,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::answer::tests::{a, cname, response, soa};
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::RecordType;

    fn pol(msg: &[u8], cfg: &CacheConfig) -> Option<Policy> {
        policy(&AnswerLayout::parse(msg).unwrap(), cfg)
    }

    fn positive(ttls: &[u32]) -> Vec<u8> {
        let answers = ttls
            .iter()
            .enumerate()
            .map(|(i, &t)| a("x.example.", t, i as u8))
            .collect();
        response(
            "x.example.",
            RecordType::A,
            ResponseCode::NoError,
            answers,
            vec![],
            None,
        )
    }

    #[test]
    fn positive_min_ttl_clamped() {
        let cfg = CacheConfig {
            min_ttl: 30,
            max_ttl: 600,
            ..CacheConfig::default()
        };
        assert_eq!(pol(&positive(&[300, 120]), &cfg).unwrap().ttl, 120);
        assert_eq!(pol(&positive(&[5, 120]), &cfg).unwrap().ttl, 30);
        let p = pol(&positive(&[9000]), &cfg).unwrap();
        assert_eq!((p.kind, p.ttl, p.lo), (Kind::Positive, 600, 30));
        // inverted clamp: the upper bound wins, no panic
        let bad = CacheConfig {
            min_ttl: 100,
            max_ttl: 10,
            ..CacheConfig::default()
        };
        assert_eq!(pol(&positive(&[50]), &bad).unwrap().ttl, 10);
    }

    #[test]
    fn negative_from_soa_with_its_own_clamp() {
        let cfg = CacheConfig {
            negative_min_ttl: 5,
            negative_max_ttl: 200,
            ..CacheConfig::default()
        };
        let nx = |ttl, min| {
            response(
                "nx.example.",
                RecordType::A,
                ResponseCode::NXDomain,
                vec![],
                vec![soa("example.", ttl, min)],
                None,
            )
        };
        let p = pol(&nx(900, 100), &cfg).unwrap();
        assert_eq!((p.kind, p.ttl), (Kind::Negative, 100));
        assert_eq!(pol(&nx(60, 100), &cfg).unwrap().ttl, 60);
        assert_eq!(pol(&nx(900, 1), &cfg).unwrap().ttl, 5);
        assert_eq!(pol(&nx(9000, 9000), &cfg).unwrap().ttl, 200);
        // NODATA after a CNAME: the CNAME's TTL bounds it too
        let nodata = response(
            "x.example.",
            RecordType::AAAA,
            ResponseCode::NoError,
            vec![cname("x.example.", 40, "y.example.")],
            vec![soa("example.", 900, 100)],
            None,
        );
        assert_eq!(pol(&nodata, &cfg).unwrap().ttl, 40);
        // without SOA: not cached
        let bare = response(
            "nx.example.",
            RecordType::A,
            ResponseCode::NXDomain,
            vec![],
            vec![],
            None,
        );
        assert_eq!(pol(&bare, &cfg), None);
        let chain_only = response(
            "x.example.",
            RecordType::AAAA,
            ResponseCode::NoError,
            vec![cname("x.example.", 40, "y.example.")],
            vec![],
            None,
        );
        assert_eq!(pol(&chain_only, &cfg), None);
    }

    #[test]
    fn servfail_briefly_other_rcodes_never() {
        let cfg = CacheConfig::default();
        let sf = response(
            "x.example.",
            RecordType::A,
            ResponseCode::ServFail,
            vec![],
            vec![],
            None,
        );
        let p = pol(&sf, &cfg).unwrap();
        assert_eq!((p.kind, p.ttl), (Kind::ServFail, cfg.servfail_ttl));
        for rcode in [
            ResponseCode::Refused,
            ResponseCode::FormErr,
            ResponseCode::NotImp,
        ] {
            let m = response("x.example.", RecordType::A, rcode, vec![], vec![], None);
            assert_eq!(pol(&m, &cfg), None);
        }
        let mut tc = positive(&[60]);
        tc[2] |= 0x02;
        assert_eq!(pol(&tc, &cfg), None);
    }
}
