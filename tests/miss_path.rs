//! The miss path's bounds end to end: no fan-out a merge cannot use, and no herd
//! past the waiters of one flight.

mod common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use std::net::Ipv4Addr;
use std::time::Duration;

fn five(rcode: ResponseCode) -> Vec<SimUpstream> {
    (0..5u8)
        .map(|i| {
            SimUpstream::start(Behavior {
                delay: Duration::from_millis(10 + 10 * u64::from(i)),
                rcode,
                addrs: vec![Ipv4Addr::new(10, 0, i, 1)],
                ..Behavior::default()
            })
        })
        .collect()
}

#[test]
fn a_first_answer_no_merge_can_grow_asks_no_more_upstreams() {
    // NXDOMAIN for an A question, and NOERROR for a TXT question (the simulated
    // upstreams give records only for A): neither merges, so the flight ends with
    // its first answer and the other three upstreams are never asked.
    for (rcode, qtype) in [
        (ResponseCode::NXDomain, RecordType::A),
        (ResponseCode::NoError, RecordType::TXT),
    ] {
        let ups = five(rcode);
        let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
        let server = start(config(&addrs, uring(), ""));
        let r = udp_query(
            server.local_addrs[0],
            &query(7, "nothing-to-merge.example.", qtype, None),
        );
        assert_eq!(r.metadata.response_code, rcode);
        let asked = || ups.iter().map(|u| u.queries()).collect::<Vec<usize>>();
        eventually(Duration::from_secs(5), "the active tier asked", || {
            let a = asked();
            (a[..2] == [1, 1]).then_some(()).ok_or(a)
        });
        // A bounded negative: nothing is sent after the first answer. A next batch
        // would leave stagger_delay (50 ms) after it; 300 ms is six of those.
        std::thread::sleep(Duration::from_millis(300));
        let asked = asked();
        assert_eq!(
            asked,
            [1, 1, 0, 0, 0],
            "{rcode:?} {qtype:?}: active tier only"
        );
        server.shutdown();
    }
}

#[test]
fn past_the_waiters_of_a_flight_a_query_starts_no_flight_of_its_own() {
    let up = SimUpstream::start(Behavior {
        delay: Duration::from_millis(400),
        ..Behavior::default()
    });
    let mut cfg = config(
        &[up.addr],
        "epoll",
        "[limits]\nflight_max_waiters = 1\n[tiers]\nactive_tier_size = 1\n",
    );
    // One shard: a query whose cache miss is counted joins its flight before
    // the shard reads the next query.
    cfg.server.shards = 1;
    let server = start(cfg);
    let addr = server.local_addrs[0];
    let misses = |n: u64| {
        eventually(Duration::from_secs(5), "the query missed the cache", || {
            let seen = server.shared.cache.stats().misses;
            (seen >= n).then_some(()).ok_or(seen)
        })
    };
    let q = |id| query(id, "herd.example.", RecordType::A, None);
    // Leader, then one waiter, then two more past the bound: one over UDP (no
    // answer: its retry will find the cache) and one over TCP (SERVFAIL).
    let leader = std::thread::spawn(move || udp_query(addr, &q(1)));
    eventually(Duration::from_secs(5), "the leader asks upstream", || {
        (up.queries() == 1).then_some(()).ok_or(up.queries())
    });
    let waiter = std::thread::spawn(move || udp_query(addr, &q(2)));
    misses(2);
    let past_udp =
        std::thread::spawn(move || udp_raw(addr, &q(3).bytes(), Duration::from_millis(700)));
    let past_tcp = tcp_query(addr, &q(4));
    let past_udp = past_udp.join().unwrap();
    assert_eq!(
        a_records(&leader.join().unwrap()),
        [Ipv4Addr::new(192, 0, 2, 1)]
    );
    assert_eq!(
        a_records(&waiter.join().unwrap()),
        [Ipv4Addr::new(192, 0, 2, 1)]
    );
    assert!(past_udp.is_none(), "dropped, not a flight of its own");
    assert_eq!(past_tcp.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(up.queries(), 1, "one upstream query for all four");
    // The retry is a cache hit.
    let retry = udp_query(addr, &q(5));
    assert_eq!(a_records(&retry), [Ipv4Addr::new(192, 0, 2, 1)]);
    assert_eq!(up.queries(), 1);
    server.shutdown();
}

#[test]
fn new_names_beyond_the_budget_cost_one_upstream_query_each() {
    let ups = five(ResponseCode::NoError);
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    // No refill at all: only the bucket's initial ten tokens for extra queries.
    let server = start(config(
        &addrs,
        "epoll",
        "[budget]\nratio = 0.0\nmin_per_second = 0.0\n",
    ));
    let names = 30;
    for i in 0..names {
        let r = udp_query(
            server.local_addrs[0],
            &query(i, &format!("n{i}.flood.example."), RecordType::A, None),
        );
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    }
    let total = || ups.iter().map(|u| u.queries()).sum::<usize>();
    eventually(Duration::from_secs(5), "every name asked", || {
        (total() >= names as usize).then_some(()).ok_or(total())
    });
    // A bounded negative: the completions the budget refuses never go out. Those
    // it allows leave within two stagger delays (100 ms) of their first answer.
    std::thread::sleep(Duration::from_millis(300));
    let total = total();
    // Two shards, ten tokens each at most; without the budget: 5 per name.
    assert!(total >= names as usize, "every name asked: {total}");
    assert!(
        total <= names as usize + 20,
        "extra queries bounded: {total}"
    );
    server.shutdown();

    // The same without the budget: every upstream is asked for every name.
    let ups = five(ResponseCode::NoError);
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let server = start(config(&addrs, "epoll", "[budget]\nenabled = false\n"));
    for i in 0..5 {
        udp_query(
            server.local_addrs[0],
            &query(i, &format!("m{i}.flood.example."), RecordType::A, None),
        );
    }
    let total = || ups.iter().map(|u| u.queries()).sum::<usize>();
    eventually(Duration::from_secs(5), "every upstream asked", || {
        (total() >= 25).then_some(()).ok_or(total())
    });
    assert_eq!(total(), 25);
    server.shutdown();
}

#[test]
fn past_max_background_a_flight_keeps_its_first_answer_and_stops_collecting() {
    let ups = five(ResponseCode::NoError);
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    // One shard, one background slot: the first flight's completion holds it.
    let mut cfg = config(&addrs, "epoll", "[limits]\nmax_background = 1\n");
    cfg.server.shards = 1;
    let server = start(cfg);
    let addr = server.local_addrs[0];
    let a = udp_query(addr, &query(1, "first.bg.example.", RecordType::A, None));
    let b = udp_query(addr, &query(2, "second.bg.example.", RecordType::A, None));
    assert_eq!(a_records(&a).len(), 1, "a first answer");
    assert_eq!(a_records(&b).len(), 1, "a first answer");
    let total = || ups.iter().map(|u| u.queries()).sum::<usize>();
    // The first flight asked all five and merged (its slot is free once the
    // merge is stored); the second only its active tier.
    let merged = |id, name: &str| {
        eventually(
            Duration::from_secs(5),
            "the merged answer in the cache",
            || {
                let r = a_records(&udp_query(addr, &query(id, name, RecordType::A, None)));
                (r.len() == 5).then_some(()).ok_or(r)
            },
        )
    };
    merged(4, "first.bg.example.");
    eventually(Duration::from_secs(5), "the second's active tier", || {
        (total() >= 7).then_some(()).ok_or(total())
    });
    assert_eq!(total(), 7);
    // The slot came back: a third flight completes again. Its completion takes
    // longer than the second's would have (it started later): had the second
    // kept collecting, its queries would show by then.
    udp_query(addr, &query(3, "third.bg.example.", RecordType::A, None));
    merged(5, "third.bg.example.");
    assert_eq!(total(), 12);
    server.shutdown();
}
