//! The staggered engine end to end: five simulated upstreams with different
//! latencies and address sets behind a real server on loopback.

mod common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn fleet() -> Vec<SimUpstream> {
    // Latencies 20, 60, 100, 140, 180 ms; each its own two addresses.
    (0..5u8)
        .map(|i| {
            SimUpstream::start(Behavior {
                delay: Duration::from_millis(20 + 40 * u64::from(i)),
                addrs: vec![Ipv4Addr::new(10, 0, i, 1), Ipv4Addr::new(10, 0, i, 2)],
                ..Behavior::default()
            })
        })
        .collect()
}

#[test]
fn first_answer_comes_at_the_fastest_latency_and_the_cache_gets_the_union() {
    let ups = fleet();
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let server = start(config(&addrs, uring(), ""));
    let addr = server.local_addrs[0];

    let t = Instant::now();
    let first = udp_query(addr, &query(1, "merge.example.", RecordType::A, Some(1232)));
    let took = t.elapsed();
    // With no health data yet, the active tier is the first two configured; the
    // fastest of them (20 ms) answers.
    assert_eq!(
        a_records(&first),
        vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]
    );
    assert!(
        took < Duration::from_millis(55),
        "answered at the fastest latency, took {took:?}"
    );

    // Background completion asks the rest (stagger starts on the first answer) and
    // merges every address into the cache.
    let mut want: Vec<Ipv4Addr> = (0..5u8)
        .flat_map(|i| [Ipv4Addr::new(10, 0, i, 1), Ipv4Addr::new(10, 0, i, 2)])
        .collect();
    want.sort();
    let merged = eventually(Duration::from_secs(5), "the merge in the cache", || {
        let r = a_records(&udp_query(
            addr,
            &query(2, "merge.example.", RecordType::A, Some(1232)),
        ));
        if r.len() >= want.len() {
            Ok(r)
        } else {
            Err(r)
        }
    });
    assert_eq!(merged, want);
    for u in &ups {
        assert_eq!(
            u.udp_queries.load(Ordering::SeqCst),
            1,
            "each upstream asked once per flight"
        );
    }
    server.shutdown();
}

#[test]
fn complete_false_is_plain_hedging() {
    let ups = fleet();
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let server = start(config(&addrs, "epoll", "[tiers]\ncomplete = false\n"));
    let r = udp_query(
        server.local_addrs[0],
        &query(1, "hedge.example.", RecordType::A, None),
    );
    assert_eq!(a_records(&r).len(), 2);
    // A bounded negative: with completion on, the next batch would leave
    // stagger_delay (50 ms) after the first answer; 300 ms is six of those.
    std::thread::sleep(Duration::from_millis(300));
    let asked: Vec<usize> = ups.iter().map(|u| u.queries()).collect();
    assert_eq!(
        asked,
        vec![1, 1, 0, 0, 0],
        "nothing sent after the first answer"
    );
    server.shutdown();
}

#[test]
fn stagger_starts_at_once_when_the_active_tier_fails() {
    let ups = fleet();
    for u in &ups[..2] {
        u.set(|b| b.rcode = ResponseCode::ServFail);
    }
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let server = start(config(
        &addrs,
        "epoll",
        "[tiers]\nfallback_timeout = \"2s\"\n",
    ));
    let t = Instant::now();
    let r = udp_query(
        server.local_addrs[0],
        &query(1, "failfast.example.", RecordType::A, None),
    );
    let took = t.elapsed();
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    // Active tier fails after 60 ms at most; the first stagger batch (100 and 140 ms)
    // answers at about 160 ms: far below the 2 s fallback timeout.
    assert!(
        took < Duration::from_millis(800),
        "did not wait out the fallback timer: {took:?}"
    );
    assert_eq!(
        a_records(&r),
        vec![Ipv4Addr::new(10, 0, 2, 1), Ipv4Addr::new(10, 0, 2, 2)]
    );
    server.shutdown();
}

#[test]
fn identical_concurrent_queries_over_all_shards_make_one_flight() {
    let up = SimUpstream::start(Behavior {
        delay: Duration::from_millis(300),
        ..Behavior::default()
    });
    let server = start(config(
        &[up.addr],
        uring(),
        "[tiers]\nactive_tier_size = 1\n",
    ));
    let addr = server.local_addrs[0];
    let clients: Vec<_> = (0..100u16)
        .map(|i| {
            std::thread::spawn(move || {
                // Every client its own socket (source port), so SO_REUSEPORT spreads
                // them over both shards; its own letter case too.
                let name = if i % 2 == 0 {
                    "Hot.Example."
                } else {
                    "hot.example."
                };
                let r = udp_query(addr, &query(i, name, RecordType::A, None));
                assert_eq!(r.metadata.id, i);
                assert_eq!(r.queries[0].name().to_ascii(), name);
                a_records(&r)
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    }
    assert_eq!(up.queries(), 1, "one flight for 100 identical queries");
    server.shutdown();
}

/// Completion by demand (issue 21): when the amplification budget has no spare
/// for a name nobody asked again, its entry is cached with the first answers
/// only; the first hit while it is fresh earns its completion, which asks the
/// upstreams not heard and merges their addresses into the entry.
#[test]
fn a_name_asked_again_earns_its_completion() {
    let ups = fleet();
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    // No refill from misses or time: the bucket's ten tokens are all there is,
    // so after a few flights nothing is spare for names nobody asks again.
    let mut cfg = config(
        &addrs,
        uring(),
        "[budget]\nratio = 0.0\nmin_per_second = 0.0\n",
    );
    cfg.server.shards = 1;
    let server = start(cfg);
    let addr = server.local_addrs[0];
    for i in 0..4 {
        let name = format!("drain{i}.example.");
        udp_query(addr, &query(i, &name, RecordType::A, Some(1232)));
    }
    let first = udp_query(
        addr,
        &query(20, "demand.example.", RecordType::A, Some(1232)),
    );
    let heard = a_records(&first).len();
    assert!(heard >= 2, "the first answer: {:?}", a_records(&first));
    // Collected what was in flight, nothing more: the entry is incomplete.
    let cached = eventually(Duration::from_secs(5), "the flight settles", || {
        let m = udp_query(
            addr,
            &query(21, "demand.example.", RecordType::A, Some(1232)),
        );
        let n = a_records(&m).len();
        (n < 10).then_some(n).ok_or(n)
    });
    assert!(
        cached < 10,
        "no completion without demand: {cached} addresses"
    );
    // That hit was the demand: the upstreams not heard are asked, and the entry
    // ends up with every address.
    let mut want: Vec<Ipv4Addr> = (0..5u8)
        .flat_map(|i| [Ipv4Addr::new(10, 0, i, 1), Ipv4Addr::new(10, 0, i, 2)])
        .collect();
    want.sort();
    eventually(Duration::from_secs(5), "completed by demand", || {
        let m = udp_query(
            addr,
            &query(22, "demand.example.", RecordType::A, Some(1232)),
        );
        let got = a_records(&m);
        (got == want).then_some(()).ok_or(got)
    });
    server.shutdown();
}

#[test]
fn merge_min_agree_merges_only_addresses_two_upstreams_gave() {
    let ip = |c: u8, d: u8| Ipv4Addr::new(10, 0, c, d);
    let ups: Vec<SimUpstream> = [
        (0, vec![ip(0, 1)]),
        (20, vec![ip(1, 1), ip(9, 9)]),
        (20, vec![ip(2, 1), ip(9, 9)]),
        (40, vec![ip(3, 1)]),
    ]
    .into_iter()
    .map(|(ms, addrs)| {
        SimUpstream::start(Behavior {
            delay: Duration::from_millis(ms),
            addrs,
            ..Behavior::default()
        })
    })
    .collect();
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let server = start(config(&addrs, "epoll", "[tiers]\nmerge_min_agree = 2\n"));
    let addr = server.local_addrs[0];
    let ask = |id| {
        a_records(&udp_query(
            addr,
            &query(id, "agree.example.", RecordType::A, None),
        ))
    };
    assert_eq!(ask(1), [ip(0, 1)], "the first answer at once");
    // The merge is written once every upstream answered: wait for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut id = 1;
    let merged = loop {
        id += 1;
        let got = ask(id);
        if got != [ip(0, 1)] {
            break got;
        }
        assert!(Instant::now() < deadline, "no merge written");
        std::thread::yield_now();
    };
    // 10.0.9.9 came from two upstreams; 10.0.1.1, 10.0.2.1 and 10.0.3.1 from one
    // each: left out. The first answer's own address stays.
    assert_eq!(merged, [ip(0, 1), ip(9, 9)]);
    assert!(ups.iter().all(|u| u.queries() == 1), "every upstream asked");
    server.shutdown();
}
