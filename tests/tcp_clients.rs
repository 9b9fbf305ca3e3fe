//! What one TCP client may hold (issue 11, "TCP clients"), on loopback with a
//! simulated upstream: connections per client address across all shards, the
//! idlest connection closed for a new one at a shard's bound (RFC 7766 6.2.3), and
//! the queries and lifetime of one connection, with every query read before the
//! close answered.
//!
//! A client from another address is a socket bound to 127.0.0.2 (loopback, so
//! inside the default `access.allow`).

mod common;

use common::*;
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn backends() -> [&'static str; 2] {
    ["epoll", uring()]
}

/// A TCP connection to `server` from `src`.
fn connect_from(src: &str, server: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let bind: SocketAddr = format!("{src}:0").parse().unwrap();
    sock.bind(&bind.into()).unwrap();
    sock.connect(&server.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// One query on `s` and its answer, if the connection gives one.
fn ask(s: &mut TcpStream, id: u16, name: &str) -> Option<Message> {
    write_frame(s, &query(id, name, RecordType::A, None).bytes()).ok()?;
    Message::from_vec(&read_frame(s)?).ok()
}

/// Whether the server closes `s` (EOF or reset) within `wait`, with nothing more
/// to read.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    match s.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
    }
}

#[test]
fn connections_past_the_per_client_cap_are_closed_across_shards() {
    for io in backends() {
        connections_past_the_per_client_cap_are_closed_across_shards_on(io);
    }
}

fn connections_past_the_per_client_cap_are_closed_across_shards_on(io: &str) {
    let up = SimUpstream::start(Behavior::default());
    // Two shards: the cap holds across them, wherever the kernel puts each
    // connection.
    let server = start(config(
        &[up.addr],
        io,
        "[limits]\ntcp_connections_per_client = 3\ntcp_idle_timeout = \"10s\"\n",
    ));
    let addr = server.local_addrs[0];
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.1", addr)).collect();
    for (i, s) in held.iter_mut().enumerate() {
        let r = ask(s, i as u16, "cap.example.").expect("under the cap: served");
        assert_eq!(r.metadata.id, i as u16);
    }
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(server.shared.tcp_clients.open(local), 3);
    // A fourth from the same address: closed at once, whichever shard takes it.
    for _ in 0..4 {
        let mut over = connect_from("127.0.0.1", addr);
        assert!(
            closed_within(&mut over, Duration::from_secs(2)),
            "past the cap: closed at accept"
        );
    }
    assert_eq!(
        server.shared.tcp_clients.open(local),
        3,
        "refusals take nothing"
    );
    // Another address of the same /24 shares the prefix's cap (issue 18)...
    let mut same = connect_from("127.0.0.2", addr);
    assert!(
        closed_within(&mut same, Duration::from_secs(2)),
        "127.0.0.2 is in 127.0.0.1's /24: past the cap"
    );
    // ... and another prefix has a cap of its own.
    let mut other = connect_from("127.0.1.2", addr);
    let r = ask(&mut other, 40, "cap.example.").expect("another prefix is served");
    assert_eq!(r.metadata.id, 40);
    // The held ones still work.
    assert!(ask(&mut held[0], 41, "cap.example.").is_some());
    // A connection that ends gives its slot back.
    held.pop();
    eventually(Duration::from_secs(2), "the slot given back", || {
        let open = server.shared.tcp_clients.open(local);
        (open <= 2).then_some(()).ok_or(open)
    });
    let mut again = connect_from("127.0.0.1", addr);
    assert!(ask(&mut again, 42, "cap.example.").is_some(), "slot freed");
    drop((held, other, again));
    eventually(Duration::from_secs(2), "entries removed at zero", || {
        let tracked = server.shared.tcp_clients.tracked();
        (tracked == 0).then_some(()).ok_or(tracked)
    });
    server.shutdown();
}

#[test]
fn a_full_shard_closes_its_idlest_connection_for_a_new_one() {
    for io in backends() {
        a_full_shard_closes_its_idlest_connection_for_a_new_one_on(io);
    }
}

fn a_full_shard_closes_its_idlest_connection_for_a_new_one_on(io: &str) {
    let up = SimUpstream::start(Behavior::default());
    let mut c = config(
        &[up.addr],
        io,
        "[limits]\ntcp_connections = 2\ntcp_idle_timeout = \"10s\"\n",
    );
    c.server.shards = 1;
    let server = start(c);
    let addr = server.local_addrs[0];
    udp_query(addr, &query(1, "hit.example.", RecordType::A, None));
    let mut a = connect_from("127.0.0.1", addr);
    // Each step starts after the server stamped the previous one's activity
    // (Instant::now(), when the answer is queued): the order of idleness is the
    // order of these steps.
    assert!(ask(&mut a, 2, "hit.example.").is_some());
    let mut b = connect_from("127.0.0.1", addr);
    assert!(ask(&mut b, 3, "hit.example.").is_some());
    // The shard is full: a new connection is served, and `a`, idle the longest,
    // is closed.
    let mut c = connect_from("127.0.0.1", addr);
    let r = ask(&mut c, 4, "hit.example.").expect("the new connection is served");
    assert_eq!(r.metadata.id, 4);
    assert!(
        closed_within(&mut a, Duration::from_secs(2)),
        "the idlest closed"
    );
    assert!(ask(&mut b, 5, "hit.example.").is_some(), "the others stay");

    // `b` has a query in flight (a slow miss) and the oldest activity; `c` is idle
    // but more recent. A new connection closes `c`, and `b` gets its answer.
    up.set(|sim| sim.delay = Duration::from_millis(800));
    let asked = up.queries();
    write_frame(
        &mut b,
        &query(6, "slow.example.", RecordType::A, None).bytes(),
    )
    .unwrap();
    // The slow query was read (it reached the upstream): `b` is busy.
    eventually(
        Duration::from_secs(2),
        "the slow query reaches the upstream",
        || (up.queries() > asked).then_some(()).ok_or(up.queries()),
    );
    assert!(ask(&mut c, 7, "hit.example.").is_some());
    let mut d = connect_from("127.0.0.1", addr);
    assert!(ask(&mut d, 8, "hit.example.").is_some(), "served");
    assert!(
        closed_within(&mut c, Duration::from_secs(2)),
        "the idle one closed, not the busy one"
    );
    let slow = Message::from_vec(&read_frame(&mut b).expect("the busy one answered")).unwrap();
    assert_eq!(slow.metadata.id, 6);
    assert_eq!(a_records(&slow).len(), 1);
    server.shutdown();
}

#[test]
fn a_connection_closes_after_max_queries_answering_every_query_it_read() {
    for io in backends() {
        a_connection_closes_after_max_queries_answering_every_query_it_read_on(io);
    }
}

fn a_connection_closes_after_max_queries_answering_every_query_it_read_on(io: &str) {
    // Answers of about 1 KB each, to a client with a small receive buffer that
    // reads late: when the server closes, answers still wait in its send queue, and
    // a close that resets the connection (two queries left unread) would drop them.
    let up = SimUpstream::start(Behavior {
        addrs: (1..=60)
            .map(|i| std::net::Ipv4Addr::new(198, 51, 100, i))
            .collect(),
        ..Behavior::default()
    });
    let server = start(config(
        &[up.addr],
        io,
        "[limits]\ntcp_max_queries = 3\ntcp_idle_timeout = \"10s\"\n",
    ));
    let addr = server.local_addrs[0];
    udp_query(addr, &query(1, "hit.example.", RecordType::A, None));
    up.set(|sim| sim.delay = Duration::from_millis(300));
    let mut s = {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(1024).unwrap();
        sock.connect(&addr.into()).unwrap();
        TcpStream::from(sock)
    };
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    // Five pipelined queries in one write, a slow miss among the first three: the
    // three read are answered, the two past the limit are not.
    let mut frames = Vec::new();
    let five = [
        (11u16, "hit.example."),
        (12, "slow.example."),
        (13, "hit.example."),
        (14, "hit.example."),
        (15, "hit.example."),
    ];
    for (id, name) in five {
        let q = query(id, name, RecordType::A, None).bytes();
        frames.extend_from_slice(&(q.len() as u16).to_be_bytes());
        frames.extend_from_slice(&q);
    }
    std::io::Write::write_all(&mut s, &frames).unwrap();
    // Read late: only once the server has answered the three and closed.
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    eventually(
        Duration::from_secs(3),
        "the server closes after 3 queries",
        || {
            let open = server.shared.tcp_clients.open(local);
            (open == 0).then_some(()).ok_or(open)
        },
    );
    let mut ids: Vec<u16> = (0..3)
        .map(|_| {
            let reply = read_frame(&mut s).expect("every query read is answered");
            Message::from_vec(&reply).unwrap().metadata.id
        })
        .collect();
    ids.sort();
    assert_eq!(ids, [11, 12, 13]);
    // A clean close (FIN after the answers, not a reset that could destroy them),
    // although two queries were left unread; well before the idle timeout.
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut byte = [0u8; 1];
    match s.read(&mut byte) {
        Ok(0) => {}
        other => panic!("expected EOF after tcp_max_queries, got {other:?}"),
    }
    // A new connection starts its own count.
    let mut t = connect_from("127.0.0.1", addr);
    assert!(ask(&mut t, 14, "hit.example.").is_some());
    server.shutdown();
}

#[test]
fn a_connection_closes_after_max_lifetime_answering_what_is_in_flight() {
    for io in backends() {
        a_connection_closes_after_max_lifetime_answering_what_is_in_flight_on(io);
    }
}

fn a_connection_closes_after_max_lifetime_answering_what_is_in_flight_on(io: &str) {
    let up = SimUpstream::start(Behavior::default());
    let server = start(config(
        &[up.addr],
        io,
        "[limits]\ntcp_max_lifetime = \"500ms\"\ntcp_idle_timeout = \"10s\"\n",
    ));
    let addr = server.local_addrs[0];
    udp_query(addr, &query(1, "hit.example.", RecordType::A, None));
    // A query still being answered when the lifetime ends is answered, then the
    // connection closes.
    up.set(|sim| sim.delay = Duration::from_millis(800));
    let t = Instant::now();
    let mut s = connect_from("127.0.0.1", addr);
    assert!(ask(&mut s, 2, "hit.example.").is_some());
    write_frame(
        &mut s,
        &query(3, "slow.example.", RecordType::A, None).bytes(),
    )
    .unwrap();
    let slow = Message::from_vec(&read_frame(&mut s).expect("answered past the lifetime"));
    assert_eq!(slow.unwrap().metadata.id, 3);
    assert!(closed_within(&mut s, Duration::from_secs(2)), "then closed");
    assert!(t.elapsed() < Duration::from_secs(3));
    // A client that always has a query ready does not outlive it either.
    let t = Instant::now();
    let mut busy = connect_from("127.0.0.1", addr);
    let mut answered = 0;
    while t.elapsed() < Duration::from_secs(3) {
        if ask(&mut busy, answered as u16, "hit.example.").is_none() {
            break;
        }
        answered += 1;
    }
    assert!(answered > 0);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "closed after its lifetime ({answered} answered in {:?})",
        t.elapsed()
    );
    server.shutdown();
}
