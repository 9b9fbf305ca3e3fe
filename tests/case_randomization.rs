//! DNS 0x20 end to end: on by default, queries leave with letters in random case;
//! an upstream that repeats the question as sent is answered from and keeps 0x20,
//! one that folds the case is not answered from until the shard falls back to plain
//! queries for it (counted), and is at once with `case_randomization = false`. A
//! reply dropped for its case is never merged into the cached answer.

mod common;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The metrics registry of this test process.
fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("a recorder for this test process")
    })
}

/// A counter's value summed over the lines with these labels (0 when absent).
fn counter(name: &str, labels: &[&str]) -> u64 {
    metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Polls `f` until it holds, failing with `what` after `within`.
fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    common::eventually(within, what, || f().then_some(()).ok_or(()));
}

/// Whether the question of this raw query has a capital letter (0x20 at work).
fn has_capital(query: &[u8]) -> bool {
    let m = Message::from_vec(query).expect("a readable query");
    m.queries[0]
        .name()
        .to_ascii()
        .bytes()
        .any(|b| b.is_ascii_uppercase())
}

/// Two shards on loopback, a short upstream timeout, the metrics flushed often, and
/// the upstreams named `{label}{i}` (labels unique to the test: the metrics
/// registry is the process's).
fn named(ups: &[SocketAddr], label: &str, extra: &str) -> tierdns::config::Config {
    metrics();
    let mut cfg = config(
        ups,
        "epoll",
        &format!("{extra}\n[limits]\nupstream_timeout = \"200ms\"\n"),
    );
    cfg.metrics.flush_interval = Duration::from_millis(20);
    for (i, u) in cfg.upstreams.iter_mut().enumerate() {
        u.name = Some(format!("{label}{i}"));
    }
    cfg
}

/// Answers every query with its own bytes as a response (NOERROR, no records:
/// NODATA), the question as received or (`fold`) in lower case; records the
/// question names seen.
fn echo_upstream(fold: bool) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let addr = sock.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let mut reply = buf[..n].to_vec();
            // The question only: QR, RA, counts 1/0/0/0 (the OPT is dropped).
            reply[2] |= 0x80;
            reply[3] = 0x80;
            reply[6..12].fill(0);
            let end = 12 + reply[12..].iter().position(|&b| b == 0).unwrap() + 5;
            reply.truncate(end);
            log.lock().unwrap().push(reply[12..end - 4].to_vec());
            if fold {
                reply[12..end - 4].make_ascii_lowercase();
            }
            let _ = sock.send_to(&reply, from);
        }
    });
    (addr, seen)
}

/// The default config: 0x20 is on without asking.
fn with_0x20(addrs: &[SocketAddr]) -> tierdns::config::Config {
    let cfg = config(addrs, "epoll", "[limits]\nupstream_timeout = \"300ms\"\n");
    assert!(cfg.upstreams.iter().all(|u| u.case_randomization));
    cfg
}

#[test]
fn queries_go_out_in_random_case_and_a_faithful_upstream_is_answered_from() {
    let (addr, seen) = echo_upstream(false);
    let server = start(with_0x20(&[addr]));
    for i in 0..8u16 {
        let r = udp_query(
            server.local_addrs[0],
            &query(i, &format!("casetest{i}.example."), RecordType::AAAA, None),
        );
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "query {i}");
    }
    let names = seen.lock().unwrap().clone();
    assert_eq!(names.len(), 8);
    let mixed = names
        .iter()
        .filter(|n| n.iter().any(u8::is_ascii_uppercase))
        .count();
    assert!(
        mixed >= 6,
        "random case on the wire: {mixed} of 8 had capitals"
    );
    server.shutdown();
}

#[test]
fn an_upstream_that_folds_the_case_is_not_answered_from() {
    let (folding, seen) = echo_upstream(true);
    let server = start(with_0x20(&[folding]));
    let r = udp_query(
        server.local_addrs[0],
        &query(1, "abcdefghijklmnop.example.", RecordType::A, None),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(!seen.lock().unwrap().is_empty(), "it was asked");
    server.shutdown();
    // Without 0x20 the same upstream serves.
    let mut cfg = config(&[folding], "epoll", "");
    cfg.upstreams[0].case_randomization = false;
    let server = start(cfg);
    let r = udp_query(
        server.local_addrs[0],
        &query(2, "abcdefghijklmnop.example.", RecordType::A, None),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    server.shutdown();
}

#[test]
fn a_case_folding_upstream_is_asked_without_0x20_after_a_few_folds_and_answers() {
    let up = SimUpstream::start(Behavior {
        fold_case: true,
        ..Behavior::default()
    });
    let server = start(named(&[up.addr], "folding", ""));
    let addr = server.local_addrs[0];
    // Each shard falls back after its own few folds (each a query that timed out
    // on the dropped reply); then every query is answered. Each client query comes
    // from a fresh port, so the kernel spreads them over both shards.
    let (mut in_row, mut failed, mut i) = (0, 0, 0u16);
    let deadline = Instant::now() + Duration::from_secs(30);
    while in_row < 12 {
        assert!(
            Instant::now() < deadline,
            "{failed} failed, {in_row} in a row"
        );
        i += 1;
        let r = udp_query(
            addr,
            &query(i, &format!("foldcase{i}.example."), RecordType::A, None),
        );
        if r.metadata.response_code == ResponseCode::NoError {
            assert_eq!(a_records(&r), [Ipv4Addr::new(192, 0, 2, 1)], "query {i}");
            in_row += 1;
        } else {
            assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
            failed += 1;
            in_row = 0;
        }
    }
    assert!(
        failed >= 3,
        "three folds before the first fallback: {failed}"
    );
    assert!(
        !has_capital(&up.last_query.lock().unwrap()),
        "asked without 0x20 now"
    );
    eventually("the fallback counted", Duration::from_secs(5), || {
        counter(
            "tierdns_upstream_case_fallback_total",
            &["upstream=\"folding0\""],
        ) >= 1
    });
    // The drops that led there were counted as forged-looking replies.
    eventually("the drops counted", Duration::from_secs(5), || {
        counter(
            "tierdns_drops_total",
            &["reason=\"upstream_case_mismatch\""],
        ) >= 3
    });
    server.shutdown();
}

#[test]
fn an_upstream_that_keeps_the_case_keeps_0x20() {
    let up = SimUpstream::start(Behavior::default());
    let server = start(named(&[up.addr], "keeping", ""));
    for i in 0..16u16 {
        let r = udp_query(
            server.local_addrs[0],
            &query(i, &format!("keepcase{i}.example."), RecordType::A, None),
        );
        assert_eq!(a_records(&r), [Ipv4Addr::new(192, 0, 2, 1)], "query {i}");
        // 17 letters: all drawn lower case once in 131 072.
        assert!(
            has_capital(&up.last_query.lock().unwrap()),
            "query {i} left with 0x20"
        );
    }
    assert_eq!(
        counter(
            "tierdns_upstream_case_fallback_total",
            &["upstream=\"keeping0\""]
        ),
        0
    );
    server.shutdown();
}

#[test]
fn a_reply_dropped_for_its_case_is_never_merged() {
    // The first answer comes from a faithful upstream at once; a folding one
    // answers as fast with an address of its own (dropped: wrong case), a third
    // faithful one later. The merge, which comes once every query ended (the
    // folding one's by its timeout), holds the first and the third only.
    let first = SimUpstream::start(Behavior::default());
    let folding = SimUpstream::start(Behavior {
        fold_case: true,
        addrs: vec![Ipv4Addr::new(10, 66, 6, 6)],
        ..Behavior::default()
    });
    let third = SimUpstream::start(Behavior {
        delay: Duration::from_millis(30),
        addrs: vec![Ipv4Addr::new(10, 7, 7, 7)],
        ..Behavior::default()
    });
    let server = start(named(
        &[first.addr, folding.addr, third.addr],
        "mergecase",
        "",
    ));
    let addr = server.local_addrs[0];
    let ask = |id| udp_query(addr, &query(id, "MergeCase.example.", RecordType::A, None));
    assert_eq!(a_records(&ask(1)), [Ipv4Addr::new(192, 0, 2, 1)]);
    let mut id = 1;
    eventually("the merge", Duration::from_secs(5), || {
        id += 1;
        a_records(&ask(id)).contains(&Ipv4Addr::new(10, 7, 7, 7))
    });
    assert_eq!(folding.queries(), 1, "the folding upstream was asked");
    assert_eq!(
        a_records(&ask(id + 1)),
        [Ipv4Addr::new(10, 7, 7, 7), Ipv4Addr::new(192, 0, 2, 1)],
        "nothing from the reply in another case"
    );
    server.shutdown();
}
