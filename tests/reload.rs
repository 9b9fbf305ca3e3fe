//! Config reload: upstream changes take effect at once, health of upstreams that
//! stay is kept, sections that need a restart are named, and a reload that cannot
//! be built is refused on every shard.

mod common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use std::net::Ipv4Addr;

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
    let warnings = server
        .reload(one_shard(config(
            &[dead.addr, good.addr],
            uring(),
            TIMEOUTS,
        )))
        .expect("reload");
    assert!(warnings.is_empty(), "{warnings:?}");
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
    let warnings = server.reload(next).expect("reload");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("[server]")));
    assert!(warnings.iter().any(|w| w.contains("[cache]")));
    let r = udp_query(addr, &query(2, "two.corp.example.", RecordType::A, None));
    assert_eq!(a_records(&r), vec![Ipv4Addr::new(198, 51, 100, 2)]);
    assert_eq!(a.queries(), 1, "the removed upstream is not asked");
    server.shutdown();
}

/// A CA certificate (self-signed) in PEM, as an encrypted upstream's `ca_file`.
fn ca_pem() -> String {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "tierdns reload test CA");
    ca.self_signed(&KeyPair::generate().unwrap()).unwrap().pem()
}

/// Which upstream answers each of `n` queries, each from a socket of its own
/// (so the kernel spreads them over the shards), each for a name not cached.
fn answers(addr: std::net::SocketAddr, tag: &str, n: u16) -> Vec<Vec<Ipv4Addr>> {
    (0..n)
        .map(|i| {
            let r = udp_query(
                addr,
                &query(i, &format!("{tag}{i}.example."), RecordType::A, None),
            );
            a_records(&r)
        })
        .collect()
}

#[test]
fn a_reload_whose_ca_file_cannot_be_read_is_refused_on_every_shard() {
    let old = SimUpstream::start(Behavior {
        addrs: vec![Ipv4Addr::new(198, 51, 100, 1)],
        ..Behavior::default()
    });
    let new = SimUpstream::start(Behavior {
        addrs: vec![Ipv4Addr::new(198, 51, 100, 2)],
        ..Behavior::default()
    });
    let mut running = config(&[old.addr], "epoll", "");
    running.server.shards = 4;
    let server = start(running);
    let addr = server.local_addrs[0];
    let from_old = vec![vec![Ipv4Addr::new(198, 51, 100, 1)]; 24];
    assert_eq!(answers(addr, "before", 24), from_old);

    // The new config: another upstream, a DoT one whose roots are in `ca`, and an
    // access list that refuses this test's address. Valid when read; then its CA
    // file goes (a directory in its place: unreadable even for root).
    let dir = std::env::temp_dir().join(format!("tierdns-reload-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_pem()).unwrap();
    let next = |access: &str| {
        let mut c = config(
            &[new.addr],
            "epoll",
            &format!(
                "{access}[[upstream]]\naddress = \"tls://127.0.0.1:1\"\nname = \"dot\"\n\
                 ca_file = \"{}\"\n",
                ca.display()
            ),
        );
        c.server.shards = 4;
        c
    };
    let refused = next("[access]\nallow = [\"127.0.0.2/32\"]\n");
    std::fs::remove_file(&ca).unwrap();
    std::fs::create_dir(&ca).unwrap();
    let e = server
        .reload(refused)
        .expect_err("the CA file cannot be read");
    assert!(
        e.0.contains("upstream[0].ca_file (dot)") && e.0.contains(&ca.display().to_string()),
        "{e}"
    );
    // No shard took any of it: neither the upstreams nor the access list.
    assert_eq!(answers(addr, "refused", 24), from_old);
    assert_eq!(new.queries(), 0);

    // The same reload with its CA file back is taken by every shard.
    std::fs::remove_dir(&ca).unwrap();
    std::fs::write(&ca, ca_pem()).unwrap();
    let warnings = server.reload(next("")).expect("reload");
    assert!(warnings.is_empty(), "{warnings:?}");
    let asked = old.queries();
    assert_eq!(
        answers(addr, "after", 24),
        vec![vec![Ipv4Addr::new(198, 51, 100, 2)]; 24]
    );
    assert_eq!(old.queries(), asked, "the removed upstream is not asked");
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
