//! The flight machine on a stepped clock: every timing rule it owns (deadlines,
//! the TCP retry, the stagger's starts, the collection's end) and the budget's
//! decisions, with the clock moved by hand.

use super::*;
use crate::health::upstream;
use crate::health::{HealthParams, HealthTracker};
use crate::tiers::{FallbackTimeout, Plan, StrategyKind, TierParams};
use crate::wire::answer::tests::{a, response};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

const MS: Duration = Duration::from_millis(1);
const TIMEOUT: Duration = Duration::from_millis(400);

/// The budget: latency queries allowed or not, completions answered so.
struct Fixed {
    latency: bool,
    completion: Spend,
}

impl Spender for Fixed {
    fn spend_latency(&mut self, _: Purpose, _: Instant) -> bool {
        self.latency
    }
    fn spend_completion(&mut self, _: UpstreamIdx, _: bool, _: Instant) -> Spend {
        self.completion
    }
}

fn open() -> Fixed {
    Fixed {
        latency: true,
        completion: Spend::Allowed,
    }
}

fn params() -> TierParams {
    TierParams {
        fallback_timeout: FallbackTimeout::Fixed(300 * MS),
        ..TierParams::default()
    }
}

fn flight(params: &TierParams, n: usize, t0: Instant) -> FlightMachine {
    let order: Vec<UpstreamIdx> = UpstreamIdx::all(n).collect();
    let health = HealthTracker::new(HealthParams::default(), &vec![0; n]);
    let plan = Plan::new(StrategyKind::Staggered, params, &order, &health, t0, 7);
    FlightMachine::new(
        FlightState::new(plan, 1, params.merge_min_agree, t0),
        false,
        t0,
    )
}

fn answer(last: u8, tc: bool, over_tcp: bool) -> Exchange {
    let mut reply = response(
        "www.example.",
        RecordType::A,
        ResponseCode::NoError,
        vec![a("www.example.", 300, last)],
        vec![],
        None,
    );
    if tc {
        reply[2] |= 0x02;
    }
    Exchange {
        reply,
        rtt: 10 * MS,
        over_tcp,
    }
}

/// Polls until the machine waits or is done, sending what it asks (each send
/// recorded and registered with `TIMEOUT`). Returns the sends and what came last.
fn send_all(
    f: &mut FlightMachine,
    now: Instant,
    spender: &mut impl Spender,
) -> (Vec<(UpstreamIdx, bool)>, Action) {
    let mut sent = Vec::new();
    for _ in 0..32 {
        match f.poll_action(now, spender) {
            Action::Send { up, background } => {
                sent.push((up, background));
                f.handle_sent(up, TIMEOUT, now);
            }
            other => return (sent, other),
        }
    }
    panic!("the machine kept sending");
}

#[test]
fn a_query_past_its_deadline_fails_as_a_timeout_and_the_wake_up_never_passes_it() {
    let t0 = Instant::now();
    let mut f = flight(&params(), 4, t0);
    let (sent, next) = send_all(&mut f, t0, &mut open());
    assert_eq!(sent, [(upstream(0), false), (upstream(1), false)]);
    // The hedge would be at 300 ms; the deadlines (400 ms) are later.
    assert_eq!(next, Action::Wait(t0 + 300 * MS));
    assert!(
        f.handle_timeout(t0 + 399 * MS).is_none(),
        "not before its deadline"
    );
    let (up, heard) = f.handle_timeout(t0 + TIMEOUT).expect("timed out");
    assert_eq!(up, upstream(0));
    assert!(matches!(heard, Heard::Failed(FailKind::Timeout)));
    let (up, _) = f.handle_timeout(t0 + TIMEOUT).expect("the other too");
    assert_eq!(up, upstream(1));
    assert!(f.handle_timeout(t0 + TIMEOUT).is_none(), "each heard once");
    // A reply after its timeout is not heard.
    assert!(f
        .handle_reply(upstream(0), answer(1, false, false), t0 + 401 * MS)
        .is_none());
}

#[test]
fn a_deadline_shorter_than_the_plans_wake_up_is_the_wake_up() {
    let t0 = Instant::now();
    let mut f = flight(&params(), 2, t0);
    let up = match f.poll_action(t0, &mut open()) {
        Action::Send { up, .. } => up,
        other => panic!("{other:?}"),
    };
    f.handle_sent(up, 120 * MS, t0);
    let (_, next) = send_all(&mut f, t0, &mut open());
    assert_eq!(next, Action::Wait(t0 + 120 * MS));
}

#[test]
fn a_truncated_answer_is_asked_again_over_tcp_once_within_its_own_deadline() {
    let t0 = Instant::now();
    let mut f = flight(&params(), 2, t0);
    send_all(&mut f, t0, &mut open());
    assert!(f
        .handle_reply(upstream(0), answer(1, true, false), t0 + 10 * MS)
        .is_none());
    assert_eq!(
        f.poll_action(t0 + 10 * MS, &mut open()),
        Action::RetryOverTcp {
            up: upstream(0),
            deadline: t0 + TIMEOUT
        }
    );
    // A second truncated copy asks nothing more.
    assert!(f
        .handle_reply(upstream(0), answer(1, true, false), t0 + 11 * MS)
        .is_none());
    assert!(matches!(
        f.poll_action(t0 + 11 * MS, &mut open()),
        Action::Wait(_)
    ));
    assert_eq!(f.account().over_tcp.as_slice(), [0]);
    // The answer over TCP is the first good one.
    match f.handle_reply(upstream(0), answer(1, false, true), t0 + 30 * MS) {
        Some(Heard::Good { first: Some(_), .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_tcp_retry_that_never_answers_times_out_at_the_querys_deadline() {
    let t0 = Instant::now();
    let mut f = flight(&params(), 2, t0);
    send_all(&mut f, t0, &mut open());
    f.handle_reply(upstream(1), answer(2, true, false), t0 + 5 * MS);
    assert!(matches!(
        f.poll_action(t0 + 5 * MS, &mut open()),
        Action::RetryOverTcp { up, .. } if up == 1
    ));
    let late = f.handle_timeout(t0 + TIMEOUT);
    assert!(matches!(late, Some((_, Heard::Failed(FailKind::Timeout)))));
}

#[test]
fn the_stagger_starts_at_once_when_every_active_query_failed() {
    let t0 = Instant::now();
    let mut f = flight(&params(), 4, t0);
    send_all(&mut f, t0, &mut open());
    f.handle_failure(upstream(0), FailKind::ServFail, t0 + 5 * MS);
    let (sent, _) = send_all(&mut f, t0 + 5 * MS, &mut open());
    assert!(sent.is_empty(), "one active query left: no stagger yet");
    f.handle_failure(upstream(1), FailKind::Refused, t0 + 6 * MS);
    let (sent, _) = send_all(&mut f, t0 + 6 * MS, &mut open());
    assert_eq!(
        sent,
        [(upstream(2), false), (upstream(3), false)],
        "fail fast, not at 300 ms"
    );
}

#[test]
fn the_hedge_goes_at_the_fallback_timeout_and_a_refused_one_is_accounted() {
    let t0 = Instant::now();
    let mut f = flight(&params(), 4, t0);
    let mut stingy = Fixed {
        latency: false,
        completion: Spend::Allowed,
    };
    let (sent, next) = send_all(&mut f, t0, &mut stingy);
    assert_eq!(
        sent,
        [(upstream(0), false)],
        "the active tier's second query refused"
    );
    assert_eq!(
        f.account().refused.as_slice(),
        [(upstream(1), Purpose::Active)]
    );
    assert_eq!(next, Action::Wait(t0 + 300 * MS));
    let (sent, _) = send_all(&mut f, t0 + 300 * MS, &mut open());
    assert_eq!(
        sent,
        [(upstream(2), false), (upstream(3), false)],
        "hedged at the fallback timeout"
    );
}

#[test]
fn a_deferred_completion_is_background_work_not_sent_and_leaves_the_answer_incomplete() {
    let t0 = Instant::now();
    let mut f = flight(&params(), 4, t0);
    send_all(&mut f, t0, &mut open());
    f.handle_reply(upstream(0), answer(1, false, false), t0 + 20 * MS);
    let mut deferring = Fixed {
        latency: true,
        completion: Spend::Deferred,
    };
    let (sent, _) = send_all(&mut f, t0 + 20 * MS, &mut deferring);
    assert!(sent.is_empty(), "completion deferred");
    assert!(f
        .account()
        .refused
        .iter()
        .all(|(_, p)| *p == Purpose::Completion));
    f.stop_collecting();
    assert!(f.finish().incomplete, "a merge could have grown it");
}

#[test]
fn completion_sends_are_background_work() {
    let t0 = Instant::now();
    let mut f = flight(&params(), 4, t0);
    send_all(&mut f, t0, &mut open());
    f.handle_reply(upstream(0), answer(1, false, false), t0 + 20 * MS);
    let (sent, _) = send_all(&mut f, t0 + 20 * MS, &mut open());
    assert_eq!(sent, [(upstream(2), true), (upstream(3), true)]);
}

#[test]
fn collecting_ends_at_the_total_collect_timeout() {
    let t0 = Instant::now();
    let p = TierParams {
        total_collect_timeout: 1000 * MS,
        ..params()
    };
    let mut f = flight(&p, 2, t0);
    send_all(&mut f, t0, &mut open());
    f.handle_reply(upstream(0), answer(1, false, false), t0 + 20 * MS);
    // Upstream 1 never answers and its deadline is long: the collection's end
    // comes first.
    let mut now = t0 + 20 * MS;
    let mut waits = 0;
    loop {
        while f.handle_timeout(now).is_some() {}
        match send_all(&mut f, now, &mut open()).1 {
            Action::Wait(at) => {
                assert!(at > now || at == now && waits < 4, "time moves on");
                now = at.max(now);
                waits += 1;
            }
            Action::Done => break,
            other => panic!("{other:?}"),
        }
        assert!(waits < 100, "the flight did not end");
    }
    assert!(now <= t0 + 1000 * MS, "done by {:?}", now - t0);
    assert!(f.is_done(now, &mut open()));
    let abandoned: Vec<_> = f.abandoned(now).collect();
    assert!(
        abandoned.iter().all(|&(up, _)| up != upstream(0)),
        "0 answered"
    );
}

#[test]
fn a_result_for_an_upstream_never_asked_is_ignored() {
    let t0 = Instant::now();
    let mut f = flight(&params(), 3, t0);
    send_all(&mut f, t0, &mut open());
    assert!(f
        .handle_reply(upstream(2), answer(3, false, false), t0 + MS)
        .is_none());
    assert!(f
        .handle_failure(upstream(9), FailKind::Network, t0 + MS)
        .is_none());
}

#[test]
fn due_sends_survive_a_look_at_whether_the_flight_is_done() {
    let t0 = Instant::now();
    let mut f = flight(&params(), 4, t0);
    send_all(&mut f, t0, &mut open());
    f.handle_reply(upstream(0), answer(1, false, false), t0 + 20 * MS);
    assert!(!f.is_done(t0 + 20 * MS, &mut open()), "the stagger is due");
    let (sent, _) = send_all(&mut f, t0 + 20 * MS, &mut open());
    assert_eq!(
        sent,
        [(upstream(2), true), (upstream(3), true)],
        "kept for the next poll"
    );
}
