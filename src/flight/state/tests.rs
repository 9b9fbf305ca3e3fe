//! The flight's state driven with a stepped clock against simulated upstreams:
//! each has a latency and a reply (addresses, a failure, or nothing at all). The
//! simulation sends what the state asks, delivers each reply at its time, and jumps
//! the clock to the next event, so every run is exact and instant.

use super::*;
use crate::health::upstream;
use crate::health::{HealthParams, HealthTracker};
use crate::tiers::{StaggerReason, StrategyKind, TierParams};
use crate::wire::answer::tests::{a, response};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use std::collections::BTreeSet;

const MS: Duration = Duration::from_millis(1);

#[derive(Clone)]
enum Reply {
    /// A NOERROR answer with 192.0.2.N for each N.
    Addresses(Vec<u8>),
    /// A reply with this rcode and no records.
    Rcode(ResponseCode),
    /// The transport's failure (timeout, network) after the latency.
    Fail(FailKind),
    /// These bytes, as the upstream link handed them over.
    Wire(Vec<u8>),
    /// Nothing ever comes back.
    Never,
}

struct Upstream {
    latency: Duration,
    reply: Reply,
}

fn up(ms: u64, reply: Reply) -> Upstream {
    Upstream {
        latency: Duration::from_millis(ms),
        reply,
    }
}

fn addrs(last: &[u8]) -> Reply {
    Reply::Addresses(last.to_vec())
}

/// What a simulated run saw.
#[derive(Default)]
struct Trace {
    /// (upstream, ms after start) of every query sent.
    sent: Vec<(UpstreamIdx, u64)>,
    /// ms after start of the first good answer, and its addresses.
    first: Option<(u64, BTreeSet<u8>)>,
    /// Failures heard, in order.
    failed: Vec<FailKind>,
    /// ms after start when the state said Done.
    done_at: u64,
    /// Most queries in flight at once, as the simulation counted them.
    peak: usize,
}

fn addresses(wire: &[u8]) -> BTreeSet<u8> {
    Message::from_vec(wire)
        .unwrap()
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.octets()[3]),
            _ => None,
        })
        .collect()
}

fn exchange(reply: &Reply, rtt: Duration) -> Result<Exchange, FailKind> {
    let wire = match reply {
        Reply::Addresses(last) => response(
            "www.example.",
            RecordType::A,
            ResponseCode::NoError,
            last.iter().map(|&n| a("www.example.", 300, n)).collect(),
            vec![],
            None,
        ),
        Reply::Rcode(rcode) => {
            response("www.example.", RecordType::A, *rcode, vec![], vec![], None)
        }
        Reply::Fail(kind) => return Err(*kind),
        Reply::Wire(wire) => wire.clone(),
        Reply::Never => unreachable!("never delivered"),
    };
    Ok(Exchange {
        reply: wire,
        rtt,
        over_tcp: false,
    })
}

fn state(kind: StrategyKind, params: &TierParams, n: usize, t0: Instant) -> FlightState {
    let order: Vec<UpstreamIdx> = UpstreamIdx::all(n).collect();
    let health = HealthTracker::new(HealthParams::default(), &vec![0; n]);
    FlightState::new(
        Plan::new(kind, params, &order, &health, t0, 7),
        1,
        params.merge_min_agree,
        t0,
    )
}

/// Runs the flight to its end against `ups` (upstream i is `ups[i]`).
fn simulate(flight: &mut FlightState, ups: &[Upstream], t0: Instant) -> Trace {
    let ms = |t: Instant| (t - t0).as_millis() as u64;
    let mut trace = Trace::default();
    let mut now = t0;
    // (arrival, upstream) of replies on their way.
    let mut pending: Vec<(Instant, UpstreamIdx)> = Vec::new();
    let mut in_flight = 0usize;
    for _ in 0..1000 {
        match flight.next(now, |_, _| true) {
            Next::Send(list) => {
                for u in list {
                    trace.sent.push((u, ms(now)));
                    in_flight += 1;
                    trace.peak = trace.peak.max(in_flight);
                    if !matches!(ups[u.get()].reply, Reply::Never) {
                        pending.push((now + ups[u.get()].latency, u));
                    }
                }
            }
            Next::Wait(at) => {
                assert!(at >= now, "never asked to wake in the past");
                pending.sort();
                match pending.first() {
                    Some(&(arrival, u)) if arrival <= at => {
                        pending.remove(0);
                        in_flight -= 1;
                        now = arrival;
                        let res = exchange(&ups[u.get()].reply, ups[u.get()].latency);
                        match flight.on_report(u, res, now) {
                            Heard::Good {
                                first: Some(answer),
                                ..
                            } => {
                                assert!(trace.first.is_none(), "one first answer");
                                trace.first = Some((ms(now), addresses(&answer.wire)));
                            }
                            Heard::Good { first: None, .. } => {}
                            Heard::Failed(kind) => trace.failed.push(kind),
                            Heard::Overload => trace.failed.push(FailKind::Overload),
                        }
                    }
                    _ => now = at,
                }
            }
            Next::Done => {
                trace.done_at = ms(now);
                return trace;
            }
        }
    }
    panic!("the flight did not end");
}

fn five() -> Vec<Upstream> {
    vec![
        up(20, addrs(&[1, 2])),
        up(40, addrs(&[3, 4])),
        up(80, addrs(&[5, 6])),
        up(150, addrs(&[7, 8])),
        up(300, addrs(&[9, 10])),
    ]
}

#[test]
fn first_answer_at_the_fastest_then_the_stagger_and_a_merge_of_every_address() {
    let t0 = Instant::now();
    let params = TierParams::default();
    let mut flight = state(StrategyKind::Staggered, &params, 5, t0);
    let trace = simulate(&mut flight, &five(), t0);
    // The active tier (two) at once; the first answer at the fastest's 20 ms starts
    // the stagger: batches of two, 50 ms apart.
    assert_eq!(
        trace.sent,
        [
            (upstream(0), 0),
            (upstream(1), 0),
            (upstream(2), 20),
            (upstream(3), 20),
            (upstream(4), 70)
        ]
    );
    assert_eq!(trace.first, Some((20, BTreeSet::from([1, 2]))));
    assert_eq!(
        trace.peak, 3,
        "the slower active query beside the first batch"
    );
    // Background completion lasts until the slowest answered (70 + 300 ms).
    assert_eq!(trace.done_at, 370);
    let Finished {
        stats,
        merged,
        came,
    } = flight.finish();
    // Each merged record names the upstream whose answer it came from, and
    // when: the first answer's at 20 ms, the others' later.
    assert_eq!(came.len(), 10, "{came:?}");
    let first = Came::Upstream(upstream(0), t0 + Duration::from_millis(20));
    assert_eq!(came[..2], [first, first]);
    let mut from: Vec<usize> = came
        .iter()
        .map(|c| match c {
            Came::Upstream(up, at) => {
                assert!(*at >= t0 + Duration::from_millis(20));
                up.get()
            }
            Came::Cached(..) => usize::MAX,
        })
        .collect();
    from.dedup();
    assert_eq!(from.len(), 5, "every upstream's addresses: {came:?}");
    assert_eq!(stats.stagger_reason, Some(StaggerReason::Answered));
    assert_eq!(stats.first_good, Some((upstream(0), true)));
    let (merged, first_at) = merged.expect("five good answers merge");
    assert_eq!(
        first_at,
        t0 + Duration::from_millis(20),
        "the merge ages from the first answer"
    );
    assert_eq!(addresses(&merged.wire), (1..=10).collect());
    assert_eq!(merged.extra_addresses, 8);
}

/// A NOERROR answer with 192.0.2.N for each N that fails a check the first answer
/// passed: an extended rcode (BADVERS) in its OPT record.
fn badvers(last: &[u8]) -> Reply {
    let mut wire = response(
        "www.example.",
        RecordType::A,
        ResponseCode::NoError,
        last.iter().map(|&n| a("www.example.", 300, n)).collect(),
        vec![],
        Some((false, vec![])),
    );
    let ttl = wire.len() - 6; // the OPT record is last and has no options
    wire[ttl] = 1;
    Reply::Wire(wire)
}

#[test]
fn only_replies_that_pass_every_check_are_merged() {
    let t0 = Instant::now();
    let ups = vec![
        up(10, addrs(&[1])),
        up(20, badvers(&[66])),
        up(30, addrs(&[2])),
        up(40, Reply::Fail(FailKind::Malformed)),
        up(50, addrs(&[3])),
    ];
    let mut flight = state(StrategyKind::Staggered, &TierParams::default(), 5, t0);
    let trace = simulate(&mut flight, &ups, t0);
    assert_eq!(trace.first, Some((10, BTreeSet::from([1]))));
    assert_eq!(trace.failed, [FailKind::OtherRcode, FailKind::Malformed]);
    let (merged, _) = flight.finish().merged.expect("three good answers");
    assert_eq!(
        addresses(&merged.wire),
        BTreeSet::from([1, 2, 3]),
        "never 66"
    );
}

#[test]
fn merge_min_agree_takes_an_address_only_from_that_many_upstreams() {
    let run = |min_agree: usize| {
        let t0 = Instant::now();
        let params = TierParams {
            merge_min_agree: min_agree,
            ..TierParams::default()
        };
        let ups = vec![
            up(10, addrs(&[1, 2])),
            up(20, addrs(&[3, 4])),
            up(30, addrs(&[4, 5])),
            up(40, addrs(&[2, 6])),
        ];
        let mut flight = state(StrategyKind::Staggered, &params, 4, t0);
        simulate(&mut flight, &ups, t0);
        flight.finish().merged.map(|(m, _)| addresses(&m.wire))
    };
    assert_eq!(run(1), Some(BTreeSet::from([1, 2, 3, 4, 5, 6])));
    // 4 came from two upstreams; the first answer's 1 and 2 always stay.
    assert_eq!(run(2), Some(BTreeSet::from([1, 2, 4])));
    assert_eq!(run(3), None, "nothing to add");
}

#[test]
fn a_late_active_tier_starts_the_stagger_at_the_fallback_timeout() {
    let t0 = Instant::now();
    let params = TierParams::default();
    let ups = vec![
        up(1000, addrs(&[1])),
        up(1000, addrs(&[2])),
        up(30, addrs(&[3])),
        up(30, addrs(&[4])),
    ];
    let mut flight = state(StrategyKind::Staggered, &params, 4, t0);
    let trace = simulate(&mut flight, &ups, t0);
    assert_eq!(
        trace.sent,
        [
            (upstream(0), 0),
            (upstream(1), 0),
            (upstream(2), 300),
            (upstream(3), 300)
        ]
    );
    assert_eq!(trace.first, Some((330, BTreeSet::from([3]))));
    assert_eq!(
        flight.finish().stats.stagger_reason,
        Some(StaggerReason::Timeout)
    );
}

#[test]
fn an_active_tier_that_failed_starts_the_stagger_at_once_and_the_worst_failure_is_kept() {
    let t0 = Instant::now();
    let params = TierParams::default();
    let ups = vec![
        up(10, Reply::Rcode(ResponseCode::ServFail)),
        up(15, Reply::Fail(FailKind::Timeout)),
        up(10, Reply::Rcode(ResponseCode::Refused)),
        up(10, Reply::Fail(FailKind::Network)),
    ];
    let mut flight = state(StrategyKind::Staggered, &params, 4, t0);
    let trace = simulate(&mut flight, &ups, t0);
    // Both active failed by 15 ms: the stagger starts then, not at 300 ms.
    assert_eq!(
        trace.sent,
        [
            (upstream(0), 0),
            (upstream(1), 0),
            (upstream(2), 15),
            (upstream(3), 15)
        ]
    );
    assert_eq!(trace.first, None);
    assert_eq!(
        trace.failed,
        [
            FailKind::ServFail,
            FailKind::Timeout,
            FailKind::Refused,
            FailKind::Network
        ]
    );
    assert_eq!(trace.done_at, 25, "every upstream failed: over at once");
    // An upstream's own error says more than a network error or a timeout.
    assert_eq!(flight.failure(), Ede::UPSTREAM_REFUSED);
    let finished = flight.finish();
    assert!(finished.merged.is_none());
    assert_eq!(finished.stats.first_good, None);
}

#[test]
fn upstreams_that_never_answer_are_abandoned_at_the_total_collect_timeout() {
    let t0 = Instant::now();
    let params = TierParams::default();
    let ups = vec![
        up(20, addrs(&[1])),
        up(0, Reply::Never),
        up(50, addrs(&[2])),
        up(0, Reply::Never),
    ];
    let mut flight = state(StrategyKind::Staggered, &params, 4, t0);
    let trace = simulate(&mut flight, &ups, t0);
    assert_eq!(trace.first, Some((20, BTreeSet::from([1]))));
    assert_eq!(
        trace.done_at,
        params.total_collect_timeout.as_millis() as u64,
        "the background gives up on the silent ones, never later"
    );
    let (merged, _) = flight.finish().merged.expect("two good answers");
    assert_eq!(addresses(&merged.wire), BTreeSet::from([1, 2]));
}

#[test]
fn without_completion_the_first_answer_ends_the_flight() {
    let t0 = Instant::now();
    let params = TierParams {
        complete: false,
        ..TierParams::default()
    };
    let mut flight = state(StrategyKind::Staggered, &params, 5, t0);
    let trace = simulate(&mut flight, &five(), t0);
    assert_eq!(
        trace.sent,
        [(upstream(0), 0), (upstream(1), 0)],
        "plain hedging: no stagger"
    );
    assert_eq!(trace.first, Some((20, BTreeSet::from([1, 2]))));
    assert_eq!(trace.done_at, 20);
    assert!(flight.finish().merged.is_none(), "nothing to merge");
}

#[test]
fn a_first_answer_no_merge_can_grow_ends_the_flight_without_asking_the_rest() {
    // NXDOMAIN, and NODATA (NOERROR without an address): nothing to merge into.
    for reply in [
        Reply::Rcode(ResponseCode::NXDomain),
        Reply::Rcode(ResponseCode::NoError),
    ] {
        let t0 = Instant::now();
        let ups: Vec<Upstream> = (0..5).map(|i| up(20 + 10 * i, reply.clone())).collect();
        let mut flight = state(StrategyKind::Staggered, &TierParams::default(), 5, t0);
        let trace = simulate(&mut flight, &ups, t0);
        assert_eq!(
            trace.sent,
            [(upstream(0), 0), (upstream(1), 0)],
            "the active tier only"
        );
        assert_eq!(trace.done_at, 20, "over with the first answer");
        assert!(trace.first.is_some());
        assert_eq!(flight.finish().stats.stagger_reason, None);
    }
}

#[test]
fn only_unsigned_address_answers_can_grow() {
    let layout = |rcode, answers| {
        AnswerLayout::parse(&response(
            "x.example.",
            RecordType::A,
            rcode,
            answers,
            vec![],
            None,
        ))
        .unwrap()
    };
    let with_a = layout(ResponseCode::NoError, vec![a("x.example.", 60, 1)]);
    assert!(merge_can_grow(&with_a, 1));
    assert!(!merge_can_grow(&with_a, 16), "a TXT question never merges");
    assert!(
        !merge_can_grow(&layout(ResponseCode::NoError, vec![]), 1),
        "NODATA"
    );
    assert!(!merge_can_grow(&layout(ResponseCode::NXDomain, vec![]), 1));
}

#[test]
fn a_reply_that_cannot_be_patched_is_malformed_not_good() {
    let t0 = Instant::now();
    let mut flight = state(StrategyKind::Staggered, &TierParams::default(), 1, t0);
    let Next::Send(list) = flight.next(t0, |_, _| true) else {
        panic!("sends first")
    };
    assert_eq!(list.as_slice(), [0]);
    let junk = Exchange {
        reply: vec![0xab, 0xcd, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 9],
        rtt: MS,
        over_tcp: false,
    };
    assert!(matches!(
        flight.on_report(upstream(0), Ok(junk), t0 + MS),
        Heard::Failed(FailKind::Malformed)
    ));
    assert_eq!(flight.next(t0 + MS, |_, _| true), Next::Done);
    assert_eq!(flight.failure(), Ede::UPSTREAM_ERROR);
}

#[test]
fn rcodes_classify_by_name() {
    let wire = |rcode| response("x.example.", RecordType::A, rcode, vec![], vec![], None);
    assert!(classify(&wire(ResponseCode::NoError)).is_ok());
    assert!(classify(&wire(ResponseCode::NXDomain)).is_ok());
    for (rcode, kind) in [
        (ResponseCode::FormErr, FailKind::FormErr),
        (ResponseCode::ServFail, FailKind::ServFail),
        (ResponseCode::NotImp, FailKind::NotImp),
        (ResponseCode::Refused, FailKind::Refused),
        (ResponseCode::YXDomain, FailKind::OtherRcode),
    ] {
        assert_eq!(classify(&wire(rcode)).unwrap_err(), kind, "{rcode:?}");
    }
    assert_eq!(classify(&[1, 2, 3]).unwrap_err(), FailKind::Malformed);
    // NOERROR in the header, but BADVERS (16) through the OPT record's extended
    // rcode bits: not a good answer.
    let mut badvers = response(
        "x.example.",
        RecordType::A,
        ResponseCode::NoError,
        vec![a("x.example.", 60, 1)],
        vec![],
        Some((false, vec![])),
    );
    assert!(classify(&badvers).is_ok());
    let ttl = badvers.len() - 6; // the OPT record is last and has no options
    badvers[ttl] = 1;
    assert_eq!(classify(&badvers).unwrap_err(), FailKind::OtherRcode);
}

#[test]
fn the_ede_names_the_most_telling_failure() {
    assert_eq!(failure_ede(None), Ede::NO_REACHABLE_AUTHORITY);
    assert_eq!(
        failure_ede(Some(FailKind::Timeout)),
        Ede::NO_REACHABLE_AUTHORITY
    );
    assert_eq!(
        failure_ede(Some(FailKind::ServFail)),
        Ede::UPSTREAM_SERVFAIL
    );
    assert_eq!(failure_ede(Some(FailKind::Overload)), Ede::LOCAL_OVERLOAD);
    assert_eq!(
        failure_ede(Some(FailKind::TlsCertificate)),
        Ede::NETWORK_ERROR,
        "a refused certificate: nothing was sent"
    );
    assert!(telling(FailKind::ServFail) > telling(FailKind::Network));
    assert!(telling(FailKind::Network) > telling(FailKind::Timeout));
    assert!(telling(FailKind::Timeout) > telling(FailKind::Overload));
}
