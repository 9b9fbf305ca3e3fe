//! Health across a restart (issue 20, `[server] state_file`): with upstreams at
//! 300/150/80/40/20 ms (configured slowest first), a tierdns that ran and stopped
//! leaves their RTTs in its state file, and the next one sends its first miss to
//! the fast upstreams' tier, as a long-running one does; without the file the
//! first miss goes to the configured order's first two.

mod common;

use common::*;
use hickory_proto::rr::RecordType;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

fn fleet() -> Vec<SimUpstream> {
    [300u64, 150, 80, 40, 20]
        .iter()
        .enumerate()
        .map(|(i, ms)| {
            SimUpstream::start(Behavior {
                delay: Duration::from_millis(*ms),
                addrs: vec![Ipv4Addr::new(10, 0, i as u8, 1)],
                ..Behavior::default()
            })
        })
        .collect()
}

/// The address the upstream at `ms` gives.
fn of(ms: u64) -> Ipv4Addr {
    let i = [300u64, 150, 80, 40, 20]
        .iter()
        .position(|m| *m == ms)
        .unwrap();
    Ipv4Addr::new(10, 0, i as u8, 1)
}

fn with_state(
    addrs: &[std::net::SocketAddr],
    path: Option<&std::path::Path>,
) -> tierdns::config::Config {
    let mut cfg = config(addrs, "epoll", "");
    cfg.server.shards = 1;
    if let Some(p) = path {
        cfg.server.state_file = p.display().to_string();
    }
    cfg
}

#[test]
fn a_restarted_tierdns_asks_the_fast_upstreams_first() {
    let ups = fleet();
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let dir = std::env::temp_dir().join(format!("tierdns-statefile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state.toml");

    // Without a file: the first miss goes to the first two configured (300 and
    // 150 ms), and the 150 ms one answers first.
    let cold = start(with_state(&addrs, None));
    let m = udp_query(
        cold.local_addrs[0],
        &query(1, "cold.example.", RecordType::A, None),
    );
    assert_eq!(
        a_records(&m),
        [of(150)],
        "the configured order, optimistically"
    );
    cold.shutdown();

    // A tierdns that ran: misses until every upstream's RTT is on the board.
    let first = start(with_state(&addrs, Some(&path)));
    let mut n = 0u16;
    eventually(
        Duration::from_secs(20),
        "every upstream's RTT learned",
        || {
            n += 1;
            udp_query(
                first.local_addrs[0],
                &query(n, &format!("learn{n}.example."), RecordType::A, None),
            );
            let snap = first.shared.board.snapshot(Instant::now());
            let known = snap.iter().filter(|(_, srtt, _)| srtt.is_some()).count();
            (known == 5).then_some(()).ok_or(known)
        },
    );
    first.shutdown();
    let text = std::fs::read_to_string(&path).expect("the state file is written at shutdown");
    assert!(text.contains("srtt_ms"), "{text}");

    // Restarted on the same file: the first miss goes to the fast tier.
    let second = start(with_state(&addrs, Some(&path)));
    let m = udp_query(
        second.local_addrs[0],
        &query(9, "warm.example.", RecordType::A, None),
    );
    assert_eq!(
        a_records(&m),
        [of(20)],
        "the 20 ms upstream answers the first miss"
    );
    second.shutdown();

    // A corrupt file is ignored, not fatal: the order is the optimistic one.
    std::fs::write(&path, "written = \"yesterday\"\n[[upstream").unwrap();
    let third = start(with_state(&addrs, Some(&path)));
    let m = udp_query(
        third.local_addrs[0],
        &query(10, "again.example.", RecordType::A, None),
    );
    assert_eq!(a_records(&m), [of(150)]);
    third.shutdown();
    std::fs::remove_dir_all(&dir).unwrap();
}
