//! Config reload: upstream changes take effect at once, health of upstreams that
//! stay is kept, sections that need a restart are named.

mod common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use std::net::Ipv4Addr;
use std::time::Duration;

const TIMEOUTS: &str = "[limits]\nupstream_timeout = \"150ms\"\n[tiers]\nactive_tier_size = 1\ntotal_collect_timeout = \"1s\"\n";

fn one_shard(mut c: tierdns::config::Config) -> tierdns::config::Config {
    c.server.shards = 1;
    c
}

#[test]
fn reload_keeps_the_health_of_upstreams_that_stay() {
    let dead = SimUpstream::start(Behavior {
        silent: true,
        ..Behavior::default()
    });
    let good = SimUpstream::start(Behavior {
        addrs: vec![Ipv4Addr::new(203, 0, 113, 9)],
        ..Behavior::default()
    });
    let server = start(one_shard(config(&[dead.addr], uring(), TIMEOUTS)));
    let addr = server.local_addrs[0];
    // Five timeouts open the dead upstream's circuit.
    for i in 0..5u16 {
        let r = udp_query(
            addr,
            &query(i, &format!("t{i}.example."), RecordType::A, None),
        );
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    }
    assert_eq!(dead.queries(), 5);

    // Reload with the dead upstream first and a good one added. Were its health
    // forgotten, it would lead the order again (configured first, no RTT yet).
    let warnings = server.reload(one_shard(config(
        &[dead.addr, good.addr],
        uring(),
        TIMEOUTS,
    )));
    assert!(warnings.is_empty(), "{warnings:?}");
    std::thread::sleep(Duration::from_millis(50));
    let r = udp_query(addr, &query(9, "after.example.", RecordType::A, None));
    assert_eq!(a_records(&r), vec![Ipv4Addr::new(203, 0, 113, 9)]);
    assert_eq!(dead.queries(), 5, "the open circuit was carried over");
    assert_eq!(good.queries(), 1);
    server.shutdown();
}

#[test]
fn reload_replaces_upstreams_and_names_sections_needing_a_restart() {
    let a = SimUpstream::start(Behavior {
        addrs: vec![Ipv4Addr::new(198, 51, 100, 1)],
        ..Behavior::default()
    });
    let b = SimUpstream::start(Behavior {
        addrs: vec![Ipv4Addr::new(198, 51, 100, 2)],
        ..Behavior::default()
    });
    let server = start(config(&[a.addr], "epoll", ""));
    let addr = server.local_addrs[0];
    let r = udp_query(addr, &query(1, "one.example.", RecordType::A, None));
    assert_eq!(a_records(&r), vec![Ipv4Addr::new(198, 51, 100, 1)]);

    let mut next = config(
        &[b.addr],
        "epoll",
        "[[zone]]\nsuffix = \"corp.example\"\nupstreams = [\"up0\"]\n",
    );
    next.server.udp_receivers = 3;
    next.cache.max_ttl = 60;
    let warnings = server.reload(next);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("[server]")));
    assert!(warnings.iter().any(|w| w.contains("[cache]")));
    std::thread::sleep(Duration::from_millis(50));
    let r = udp_query(addr, &query(2, "two.corp.example.", RecordType::A, None));
    assert_eq!(a_records(&r), vec![Ipv4Addr::new(198, 51, 100, 2)]);
    assert_eq!(a.queries(), 1, "the removed upstream is not asked");
    server.shutdown();
}
