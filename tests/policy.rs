//! Edge hardening end to end on loopback: the access list (`[access]`) over UDP and
//! TCP on both io backends, its counter and its reload; ANY answered locally (RFC
//! 8482) and NOTIMP for an unknown opcode; the per-prefix rate limit across shards,
//! its counters and its reload; the deployment example is no open resolver.
//!
//! Clients outside the allow list are sockets bound to 127.0.0.2 while the list
//! allows 127.0.0.1/32 only: loopback, never another address. The tests of this
//! file run one at a time (they read a process-wide metrics registry).

mod common;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::RecordType;
use std::io::Read;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tierdns::config::Config;

/// The allowed client address, and one outside the list.
const INSIDE: &str = "127.0.0.1";
const OUTSIDE: &str = "127.0.0.2";

const ONLY_INSIDE: &str = "[access]\nallow = [\"127.0.0.1/32\"]\n";
const ONLY_INSIDE_DROP: &str = "[access]\nallow = [\"127.0.0.1/32\"]\naction = \"drop\"\n";

fn backends() -> Vec<&'static str> {
    vec!["epoll", uring()]
}

/// One test at a time, and the metrics registry they read.
fn serial() -> (
    MutexGuard<'static, ()>,
    &'static metrics_exporter_prometheus::PrometheusHandle,
) {
    static LOCK: Mutex<()> = Mutex::new(());
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let handle = HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("a recorder for this test process")
    });
    (guard, handle)
}

/// The value of a counter with these labels (0 when absent).
fn counter(
    handle: &metrics_exporter_prometheus::PrometheusHandle,
    name: &str,
    labels: &[&str],
) -> u64 {
    handle
        .render()
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn server_config(up: SocketAddr, io: &str, extra: &str) -> Config {
    let mut c = config(&[up], io, extra);
    c.metrics.flush_interval = Duration::from_millis(20);
    c
}

/// Sends `bytes` from a socket bound to `src` and waits up to `wait` for a reply.
fn udp_from(src: &str, server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let s = UdpSocket::bind((src, 0)).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.send_to(bytes, server).unwrap();
    let mut buf = [0u8; 65535];
    let n = s.recv(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

/// A TCP connection from `src` to `server`.
fn tcp_from(src: &str, server: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let bind: SocketAddr = format!("{src}:0").parse().unwrap();
    sock.bind(&bind.into()).unwrap();
    sock.connect_timeout(&server.into(), Duration::from_secs(2))
        .unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

fn ede(m: &Message) -> Option<u16> {
    match m.edns.as_ref()?.option(EdnsCode::Unknown(15))? {
        EdnsOption::Unknown(15, data) => Some(u16::from_be_bytes([*data.first()?, *data.get(1)?])),
        _ => None,
    }
}

fn assert_prohibited(m: &Message, id: u16, what: &str) {
    assert_eq!(m.metadata.id, id, "{what}: ID echoed");
    assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{what}");
    assert_eq!(ede(m), Some(18), "{what}: EDE 18 Prohibited");
    assert!(m.answers.is_empty(), "{what}");
    assert_eq!(
        m.queries[0].name().to_ascii(),
        "Denied.Example.",
        "{what}: question echoed"
    );
}

#[test]
fn clients_outside_allow_are_refused_with_ede_18_over_udp_and_tcp() {
    let (_serial, metrics) = serial();
    for io in backends() {
        let up = SimUpstream::start(Behavior::default());
        let server = start(server_config(up.addr, io, ONLY_INSIDE));
        let addr = server.local_addrs[0];
        let udp_before = counter(
            metrics,
            "tierdns_access_denied_total",
            &["\"refuse\"", "\"udp\""],
        );
        let tcp_before = counter(
            metrics,
            "tierdns_access_denied_total",
            &["\"refuse\"", "\"tcp\""],
        );
        let q = query(0x5151, "Denied.Example.", RecordType::A, Some(1232));

        let reply = udp_from(OUTSIDE, addr, &q.bytes(), Duration::from_secs(3)).expect("an answer");
        assert_prohibited(&Message::from_vec(&reply).unwrap(), 0x5151, io);

        // Over TCP a denied client never holds a connection, even with
        // `refuse`: closed at accept, before its query is read (issue 18).
        for _ in 0..2 {
            let mut s = tcp_from(OUTSIDE, addr);
            let _ = write_frame(&mut s, &q.bytes());
            assert!(read_frame(&mut s).is_none(), "{io}: closed at accept");
        }
        assert_eq!(up.queries(), 0, "{io}: nothing went upstream");

        // The allowed address is served as before, on both transports.
        let ok = udp_from(INSIDE, addr, &q.bytes(), Duration::from_secs(3)).expect("an answer");
        let ok = Message::from_vec(&ok).unwrap();
        assert_eq!(ok.metadata.response_code, ResponseCode::NoError, "{io}");
        assert_eq!(a_records(&ok).len(), 1);
        let mut s = tcp_from(INSIDE, addr);
        write_frame(&mut s, &q.bytes()).unwrap();
        let m = Message::from_vec(&read_frame(&mut s).unwrap()).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{io}");
        drop(s);
        server.shutdown();
        assert_eq!(
            counter(
                metrics,
                "tierdns_access_denied_total",
                &["\"refuse\"", "\"udp\""]
            ) - udp_before,
            1,
            "{io}"
        );
        assert_eq!(
            counter(
                metrics,
                "tierdns_access_denied_total",
                &["\"refuse\"", "\"tcp\""]
            ) - tcp_before,
            2,
            "{io}"
        );
    }
}

/// A REFUSED is rate limited like any reply (issue 18): a spoofed source outside
/// `allow` gets at most the burst, then nothing, while `[ratelimit]` is on.
#[test]
fn refusals_are_rate_limited_over_udp() {
    let (_serial, _) = serial();
    let up = SimUpstream::start(Behavior::default());
    let server = start(server_config(
        up.addr,
        "epoll",
        &format!("{ONLY_INSIDE}[ratelimit]\nqps = 1\nburst = 3\n"),
    ));
    let addr = server.local_addrs[0];
    let q = query(0x5252, "Denied.Example.", RecordType::A, Some(1232));
    let refused = (0..10)
        .filter(|_| udp_from(OUTSIDE, addr, &q.bytes(), Duration::from_millis(300)).is_some())
        .count();
    // The burst, and at most a token or two refilled while the 10 were asked.
    assert!((3..=6).contains(&refused), "{refused} REFUSED of 10");
    assert_eq!(up.queries(), 0);
    server.shutdown();
}

#[test]
fn drop_gives_no_answer_and_closes_tcp_at_accept() {
    let (_serial, metrics) = serial();
    for io in backends() {
        let up = SimUpstream::start(Behavior::default());
        let server = start(server_config(up.addr, io, ONLY_INSIDE_DROP));
        let addr = server.local_addrs[0];
        let udp_before = counter(
            metrics,
            "tierdns_access_denied_total",
            &["\"drop\"", "\"udp\""],
        );
        let tcp_before = counter(
            metrics,
            "tierdns_access_denied_total",
            &["\"drop\"", "\"tcp\""],
        );
        let q = query(7, "denied.example.", RecordType::A, None);

        let reply = udp_from(OUTSIDE, addr, &q.bytes(), Duration::from_millis(500));
        assert!(reply.is_none(), "{io}: no UDP answer, got {reply:02x?}");

        // The connection is closed by the server, not left hanging.
        let mut s = tcp_from(OUTSIDE, addr);
        let _ = write_frame(&mut s, &q.bytes());
        let t = Instant::now();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("{io}: expected the connection closed, got {other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(2), "{io}: closed at once");
        assert_eq!(up.queries(), 0, "{io}");

        let ok = udp_from(INSIDE, addr, &q.bytes(), Duration::from_secs(3)).expect("allowed");
        assert_eq!(
            Message::from_vec(&ok).unwrap().metadata.response_code,
            ResponseCode::NoError
        );
        server.shutdown();
        assert_eq!(
            counter(
                metrics,
                "tierdns_access_denied_total",
                &["\"drop\"", "\"udp\""]
            ) - udp_before,
            1,
            "{io}"
        );
        assert_eq!(
            counter(
                metrics,
                "tierdns_access_denied_total",
                &["\"drop\"", "\"tcp\""]
            ) - tcp_before,
            1,
            "{io}"
        );
    }
}

/// Polls `f` until it returns true, failing with `what` after two seconds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    common::eventually(Duration::from_secs(2), what, || f().then_some(()).ok_or(()));
}

#[test]
fn a_reload_that_adds_the_network_lets_the_client_in_without_restart() {
    let (_serial, _) = serial();
    for io in backends() {
        let up = SimUpstream::start(Behavior::default());
        let server = start(server_config(up.addr, io, ONLY_INSIDE));
        let addr = server.local_addrs[0];
        let q = query(9, "reload.example.", RecordType::A, None);
        let rcode_within = |src: &str, wait: Duration| {
            udp_from(src, addr, &q.bytes(), wait)
                .and_then(|r| Message::from_vec(&r).ok())
                .map(|m| m.metadata.response_code)
        };
        let rcode = |src: &str| rcode_within(src, Duration::from_secs(2));
        assert_eq!(rcode(OUTSIDE), Some(ResponseCode::Refused), "{io}");
        // A TCP connection from outside: closed at accept now, served after the
        // reload.
        let mut s = tcp_from(OUTSIDE, addr);
        let _ = write_frame(&mut s, &q.bytes());
        assert!(read_frame(&mut s).is_none(), "{io}: closed at accept");

        let warnings = server
            .reload(server_config(
                up.addr,
                io,
                "[access]\nallow = [\"127.0.0.1/32\", \"127.0.0.2/32\"]\n",
            ))
            .expect("reload");
        assert!(
            warnings.is_empty(),
            "{io}: [access] needs no restart: {warnings:?}"
        );
        // Both shards: several queries, from fresh source ports, all served.
        eventually(
            &format!("{io}: the reloaded allow list applies on every shard"),
            || (0..8).all(|_| rcode(OUTSIDE) == Some(ResponseCode::NoError)),
        );
        let mut s = tcp_from(OUTSIDE, addr);
        write_frame(&mut s, &q.bytes()).unwrap();
        let m = Message::from_vec(&read_frame(&mut s).unwrap()).unwrap();
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{io}: a new connection"
        );
        // An open connection whose client a reload denies is refused per query.
        server
            .reload(server_config(up.addr, io, ONLY_INSIDE))
            .expect("reload");
        eventually(&format!("{io}: denied again"), || {
            rcode(OUTSIDE) == Some(ResponseCode::Refused)
        });
        eventually(
            &format!("{io}: the open connection is refused per query"),
            || {
                write_frame(&mut s, &q.bytes()).unwrap();
                let m = Message::from_vec(&read_frame(&mut s).unwrap()).unwrap();
                m.metadata.response_code == ResponseCode::Refused
            },
        );
        drop(s);

        // And back: a reload to `drop` closes the client out again.
        server
            .reload(server_config(up.addr, io, ONLY_INSIDE_DROP))
            .expect("reload");
        eventually(&format!("{io}: dropped after the second reload"), || {
            (0..8).all(|_| rcode_within(OUTSIDE, Duration::from_millis(200)).is_none())
        });
        assert_eq!(rcode(INSIDE), Some(ResponseCode::NoError));
        server.shutdown();
    }
}

#[test]
fn any_is_answered_locally_with_the_rfc8482_hinfo() {
    let (_serial, _) = serial();
    for io in backends() {
        let up = SimUpstream::start(Behavior::default());
        let server = start(server_config(up.addr, io, ""));
        let addr = server.local_addrs[0];
        for (i, edns) in [None, Some(1232)].into_iter().enumerate() {
            let q = query(0x7700 + i as u16, "AnY.Example.", RecordType::ANY, edns);
            for m in [udp_query(addr, &q), tcp_query(addr, &q)] {
                assert_eq!(m.metadata.id, 0x7700 + i as u16, "{io}");
                assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{io}");
                assert!(!m.metadata.truncation, "{io}");
                assert_eq!(m.queries[0].name().to_ascii(), "AnY.Example.", "{io}");
                assert_eq!(m.answers.len(), 1, "{io}");
                let r = &m.answers[0];
                assert_eq!(r.name.to_ascii(), "AnY.Example.", "{io}");
                match &r.data {
                    hickory_proto::rr::RData::HINFO(h) => {
                        assert_eq!((&*h.cpu, &*h.os), (&b"RFC8482"[..], &b""[..]))
                    }
                    other => panic!("{io}: not HINFO: {other:?}"),
                }
                assert_eq!(m.edns.is_some(), edns.is_some(), "{io}: OPT as the client");
            }
        }
        // And again: still local (nothing was cached and nothing goes upstream).
        let m = udp_query(addr, &query(1, "any.example.", RecordType::ANY, None));
        assert_eq!(m.answers.len(), 1);
        assert_eq!(up.queries(), 0, "{io}: ANY never reaches the upstream");
        server.shutdown();
    }
}

#[test]
fn an_unknown_opcode_gets_a_notimp_with_no_flag_echoed() {
    let (_serial, _) = serial();
    let up = SimUpstream::start(Behavior::default());
    let server = start(server_config(up.addr, uring(), ""));
    let mut q = query(0x4242, "x.example.", RecordType::A, None);
    q.metadata.checking_disabled = true;
    let mut bytes = q.bytes();
    bytes[2] |= 15 << 3; // opcode 15, RD and CD still set
    let reply = udp_from(
        INSIDE,
        server.local_addrs[0],
        &bytes,
        Duration::from_secs(3),
    )
    .unwrap();
    assert_eq!(reply, [0x42, 0x42, 0xF8, 0x04, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(up.queries(), 0);
    server.shutdown();
}

/// Sends `n` queries, each from a fresh socket on 127.0.0.1 (a new source port, so
/// the kernel spreads them over the shards), waiting `wait` for each reply; returns
/// (answered with records, answered TC=1 and empty, unanswered) and the time taken.
fn udp_burst(
    addr: SocketAddr,
    q: &TestQuery,
    n: usize,
    wait: Duration,
) -> ((usize, usize, usize), Duration) {
    let start = Instant::now();
    let mut counts = (0, 0, 0);
    for _ in 0..n {
        match udp_from(INSIDE, addr, &q.bytes(), wait).map(|r| Message::from_vec(&r).unwrap()) {
            Some(m) if m.metadata.truncation => {
                assert!(m.answers.is_empty(), "a TC reply carries no record");
                assert_eq!(m.metadata.response_code, ResponseCode::NoError);
                assert_eq!(m.queries.len(), 1, "the question is echoed");
                counts.1 += 1;
            }
            Some(m) => {
                assert_eq!(a_records(&m).len(), 1);
                counts.0 += 1;
            }
            None => counts.2 += 1,
        }
    }
    (counts, start.elapsed())
}

#[test]
fn a_client_over_its_rate_gets_tc_and_succeeds_over_tcp_and_two_shards_do_not_double_it() {
    let (_serial, metrics) = serial();
    const BURST: usize = 10;
    for io in backends() {
        let up = SimUpstream::start(Behavior::default());
        let cfg = server_config(
            up.addr,
            io,
            &format!("[ratelimit]\nqps = 1\nburst = {BURST}\n"),
        );
        assert_eq!(cfg.server.shards, 2, "the limit must hold across shards");
        let server = start(cfg);
        let addr = server.local_addrs[0];
        let before = counter(metrics, "tierdns_ratelimited_total", &["\"truncate\""]);
        let q = query(0x6161, "rate.example.", RecordType::A, None);

        // 40 queries from one address and 40 source ports, over both shards: a
        // bucket per shard would let about twice the burst through.
        let ((served, truncated, lost), took) = udp_burst(addr, &q, 40, Duration::from_secs(3));
        let refill = took.as_secs() as usize + 1;
        assert_eq!(lost, 0, "{io}: truncate answers every query");
        assert!(
            (BURST..=BURST + refill).contains(&served),
            "{io}: {served} served in {took:?}, burst {BURST} at 1 qps (a bucket per shard would serve about {})",
            2 * BURST
        );
        assert_eq!(served + truncated, 40);

        // TCP is not limited: the client retries there and succeeds.
        for _ in 0..5 {
            let m = tcp_query(addr, &q);
            assert!(!m.metadata.truncation, "{io}");
            assert_eq!(a_records(&m).len(), 1, "{io}: TCP is not limited");
        }
        // Another client prefix is not affected: IPv4 /24 prefixes, 127.0.0.0/24
        // is the one above; 127.0.1.1 is loopback too.
        let other = udp_from("127.0.1.1", addr, &q.bytes(), Duration::from_secs(3)).unwrap();
        assert!(
            !Message::from_vec(&other).unwrap().metadata.truncation,
            "{io}"
        );
        server.shutdown();
        assert_eq!(
            counter(metrics, "tierdns_ratelimited_total", &["\"truncate\""]) - before,
            truncated as u64,
            "{io}: every TC reply counted"
        );
    }
}

#[test]
fn ratelimit_drop_and_off_apply_by_reload() {
    let (_serial, metrics) = serial();
    let up = SimUpstream::start(Behavior::default());
    let server = start(server_config(up.addr, uring(), ""));
    let addr = server.local_addrs[0];
    let q = query(0x6262, "reload-rate.example.", RecordType::A, None);
    let wait = Duration::from_millis(150);
    // Off by default: everything is served.
    let ((served, _, _), _) = udp_burst(addr, &q, 20, wait);
    assert_eq!(served, 20);

    let before = counter(metrics, "tierdns_ratelimited_total", &["\"drop\""]);
    let warnings = server
        .reload(server_config(
            up.addr,
            uring(),
            "[ratelimit]\nqps = 1\nburst = 3\naction = \"drop\"\n",
        ))
        .expect("reload");
    assert!(
        warnings.is_empty(),
        "[ratelimit] needs no restart: {warnings:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let ((served, truncated, lost), took) = udp_burst(addr, &q, 20, wait);
    let refill = took.as_secs() as usize + 1;
    assert_eq!(truncated, 0);
    assert!(
        (3..=3 + refill).contains(&served),
        "{served} served in {took:?}"
    );
    assert_eq!(served + lost, 20);

    // And off again.
    server
        .reload(server_config(up.addr, uring(), ""))
        .expect("reload");
    std::thread::sleep(Duration::from_millis(300));
    let ((served, _, _), _) = udp_burst(addr, &q, 20, wait);
    assert_eq!(served, 20, "limiting off after the second reload");
    server.shutdown();
    assert_eq!(
        counter(metrics, "tierdns_ratelimited_total", &["\"drop\""]) - before,
        lost as u64
    );
}

#[test]
fn the_deploy_config_example_is_valid_and_no_open_resolver() {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/daemonset.yaml"
    ))
    .unwrap();
    // The ConfigMap's file: the lines indented under `tierdns.toml: |`.
    let start = yaml
        .find("tierdns.toml: |\n")
        .expect("a config in the ConfigMap")
        + "tierdns.toml: |\n".len();
    let text: String = yaml[start..]
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    let config = Config::parse(&text, "deploy/daemonset.yaml").unwrap();
    for open in ["0.0.0.0/0", "::/0"] {
        assert!(
            !config.access.allow.iter().any(|n| n == open),
            "{open} allowed"
        );
    }
    for private in ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"] {
        assert!(
            config.access.allow.iter().any(|n| n == private),
            "{private}"
        );
    }
    let list = tierdns::policy::AccessList::new(&config.access).unwrap();
    for public in ["1.1.1.1", "8.8.8.8", "2001:4860::8888"] {
        assert_ne!(
            list.check(public.parse().unwrap()),
            tierdns::policy::AccessVerdict::Allow,
            "{public}"
        );
    }
}
