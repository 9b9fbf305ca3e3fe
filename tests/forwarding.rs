//! The resolver core end to end on loopback: forwarding over UDP and TCP on both io
//! backends, caching, case and ID echo, truncation, TCP fallback upstream, failover,
//! SERVFAIL with EDE, malformed input.

mod common;

use common::*;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::RecordType;
use hickory_proto::rr::{RData, Record};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

fn backends() -> Vec<&'static str> {
    vec!["epoll", uring()]
}

/// Every client UDP path: epoll (recvmmsg batches), and io_uring twice: the multishot
/// ring (default) and one receive operation per datagram (`udp_multishot = false`).
fn runs() -> Vec<(&'static str, bool)> {
    let mut runs: Vec<(&str, bool)> = backends().into_iter().map(|io| (io, true)).collect();
    if uring() == "uring" {
        runs.push(("uring", false));
    }
    runs
}

#[test]
fn forwards_over_udp_and_tcp_on_both_backends_and_caches() {
    for (io, multishot) in runs() {
        let up = SimUpstream::start(Behavior::default());
        let mut cfg = config(&[up.addr], io, "");
        cfg.server.udp_multishot = multishot;
        let server = start(cfg);
        assert_eq!(server.backend, io);
        let addr = server.local_addrs[0];

        let reply = udp_query(
            addr,
            &query(0x1234, "WwW.ExAmple.COM.", RecordType::A, Some(1232)),
        );
        assert_eq!(reply.metadata.id, 0x1234, "{io}: ID echoed");
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a_records(&reply), vec![Ipv4Addr::new(192, 0, 2, 1)], "{io}");
        assert_eq!(
            reply.queries[0].name().to_ascii(),
            "WwW.ExAmple.COM.",
            "{io}: question case echoed"
        );
        assert_eq!(up.queries(), 1);

        // A hit: same answer, other case, no new upstream query; TTL aged, not grown.
        let hit = udp_query(addr, &query(7, "www.example.com.", RecordType::A, None));
        assert_eq!(hit.metadata.id, 7);
        assert_eq!(a_records(&hit), vec![Ipv4Addr::new(192, 0, 2, 1)]);
        assert_eq!(hit.queries[0].name().to_ascii(), "www.example.com.");
        assert!(hit.answers[0].ttl <= 300);
        assert!(hit.edns.is_none(), "{io}: no OPT to a client without EDNS");
        assert_eq!(up.queries(), 1, "{io}: served from cache");

        // TCP: a miss then a hit.
        let t = tcp_query(addr, &query(99, "tcp.example.com.", RecordType::A, None));
        assert_eq!((t.metadata.id, a_records(&t).len()), (99, 1));
        let t = tcp_query(addr, &query(100, "TCP.example.com.", RecordType::A, None));
        assert_eq!(t.queries[0].name().to_ascii(), "TCP.example.com.");
        assert_eq!(up.queries(), 2);

        // NXDOMAIN and NODATA pass through.
        let nx = udp_query(addr, &query(5, "nx.example.com.", RecordType::A, None));
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        let nodata = udp_query(addr, &query(6, "www.example.com.", RecordType::AAAA, None));
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        server.shutdown();
    }
}

#[test]
fn upstream_queries_are_well_formed() {
    let up = SimUpstream::start(Behavior::default());
    let server = start(config(&[up.addr], "epoll", ""));
    let mut q = query(1, "Mixed.Case.example.", RecordType::A, None);
    q.metadata.checking_disabled = true;
    udp_query(server.local_addrs[0], &q);
    let sent = Message::from_vec(&up.last_query.lock().unwrap()).unwrap();
    // The client's letter case does not travel: the name is lowercased, then
    // (DNS 0x20, on by default) given a random case of our own.
    let name = sent.queries[0].name().to_ascii();
    assert!(name.eq_ignore_ascii_case("mixed.case.example."), "{name}");
    assert!(sent.metadata.recursion_desired && sent.metadata.checking_disabled);
    assert_eq!(sent.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    assert_ne!(sent.metadata.id, 1, "upstream IDs are our own");
    server.shutdown();
}

#[test]
fn tcp_connection_carries_pipelined_queries() {
    let up = SimUpstream::start(Behavior::default());
    let server = start(config(&[up.addr], uring(), ""));
    let mut s = TcpStream::connect(server.local_addrs[0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut ids = Vec::new();
    for i in 0..5u16 {
        let m = query(1000 + i, &format!("p{i}.example."), RecordType::A, None);
        write_frame(&mut s, &m.bytes()).unwrap();
        ids.push(1000 + i);
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        let m = Message::from_vec(&read_frame(&mut s).unwrap()).unwrap();
        assert_eq!(a_records(&m).len(), 1);
        got.push(m.metadata.id);
    }
    got.sort();
    assert_eq!(got, ids);
    let addr = server.local_addrs[0];
    drop(s);
    server.shutdown();
    // Every socket of every shard is closed: the port is free again.
    std::net::UdpSocket::bind(addr).expect("UDP port released at shutdown");
    std::net::TcpListener::bind(addr).expect("TCP port released at shutdown");
}

#[test]
fn large_answers_truncate_for_small_udp_clients() {
    let addrs: Vec<Ipv4Addr> = (1..=60).map(|i| Ipv4Addr::new(198, 51, 100, i)).collect();
    let up = SimUpstream::start(Behavior {
        addrs: addrs.clone(),
        ..Behavior::default()
    });
    let server = start(config(&[up.addr], "epoll", ""));
    let addr = server.local_addrs[0];
    // 60 A records: about 1 KB, more than 512.
    let plain = udp_query(addr, &query(1, "big.example.", RecordType::A, None));
    assert!(plain.metadata.truncation, "TC=1 without EDNS");
    assert!(plain.answers.is_empty());
    let raw = udp_raw(
        addr,
        &query(2, "big.example.", RecordType::A, None)
            .to_vec()
            .unwrap(),
        Duration::from_secs(2),
    )
    .unwrap();
    assert!(raw.len() <= 512);
    let edns = udp_query(addr, &query(3, "big.example.", RecordType::A, Some(1232)));
    assert!(!edns.metadata.truncation);
    assert_eq!(a_records(&edns), addrs);
    let tcp = tcp_query(addr, &query(4, "big.example.", RecordType::A, None));
    assert_eq!(a_records(&tcp), addrs);
    server.shutdown();
}

#[test]
fn truncated_upstream_answers_are_retried_over_tcp() {
    for io in backends() {
        let up = SimUpstream::start(Behavior {
            truncate_udp: true,
            ..Behavior::default()
        });
        let server = start(config(&[up.addr], io, ""));
        let r = udp_query(
            server.local_addrs[0],
            &query(9, "tc.example.", RecordType::A, Some(1232)),
        );
        assert!(!r.metadata.truncation);
        assert_eq!(a_records(&r), vec![Ipv4Addr::new(192, 0, 2, 1)], "{io}");
        assert_eq!(up.tcp_queries.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The TCP connection is reused for the next truncated answer.
        udp_query(
            server.local_addrs[0],
            &query(10, "tc2.example.", RecordType::A, Some(1232)),
        );
        assert_eq!(up.tcp_queries.load(std::sync::atomic::Ordering::SeqCst), 2);
        server.shutdown();
    }
}

#[test]
fn fails_over_to_the_next_upstream_and_servfails_with_ede_when_all_fail() {
    let bad = SimUpstream::start(Behavior {
        rcode: ResponseCode::ServFail,
        ..Behavior::default()
    });
    let good = SimUpstream::start(Behavior {
        addrs: vec![Ipv4Addr::new(203, 0, 113, 7)],
        ..Behavior::default()
    });
    let server = start(config(
        &[bad.addr, good.addr],
        "epoll",
        "strategy = \"sequential\"\n",
    ));
    let addr = server.local_addrs[0];
    let r = udp_query(addr, &query(1, "f.example.", RecordType::A, None));
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&r), vec![Ipv4Addr::new(203, 0, 113, 7)]);

    good.set(|b| b.rcode = ResponseCode::Refused);
    let r = udp_query(addr, &query(2, "g.example.", RecordType::A, Some(1232)));
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    let ede = r.edns.as_ref().and_then(|e| {
        e.options()
            .as_ref()
            .iter()
            .find(|(code, _)| u16::from(*code) == 15)
            .map(|(_, o)| o.clone())
    });
    assert!(
        ede.is_some(),
        "SERVFAIL carries an Extended DNS Error: {r:?}"
    );
    server.shutdown();
}

#[test]
fn malformed_input_gets_formerr_or_is_dropped_and_serving_continues() {
    let up = SimUpstream::start(Behavior::default());
    let server = start(config(&[up.addr], uring(), ""));
    let addr = server.local_addrs[0];
    let wait = Duration::from_millis(300);
    // Too short for a header: dropped.
    assert_eq!(udp_raw(addr, b"\x12\x34\x01", wait), None);
    // A response: dropped.
    let mut resp = query(3, "x.example.", RecordType::A, None)
        .to_vec()
        .unwrap();
    resp[2] |= 0x80;
    assert_eq!(udp_raw(addr, &resp, wait), None);
    // QDCOUNT = 2: FORMERR with the ID echoed.
    let mut two = query(0x4242, "x.example.", RecordType::A, None)
        .to_vec()
        .unwrap();
    two[5] = 2;
    let r = Message::from_vec(&udp_raw(addr, &two, wait).unwrap()).unwrap();
    assert_eq!(
        (r.metadata.id, r.metadata.response_code),
        (0x4242, ResponseCode::FormErr)
    );
    // Broken question: FORMERR.
    let mut broken = query(0x4343, "x.example.", RecordType::A, None)
        .to_vec()
        .unwrap();
    broken.truncate(16);
    let r = Message::from_vec(&udp_raw(addr, &broken, wait).unwrap()).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    // Opcode NOTIFY: NOTIMP.
    let mut notify = query(0x4444, "x.example.", RecordType::A, None)
        .to_vec()
        .unwrap();
    notify[2] = (notify[2] & 0x87) | (4 << 3);
    let r = Message::from_vec(&udp_raw(addr, &notify, wait).unwrap()).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
    // Zone transfers are refused locally, never forwarded.
    let before = up.queries();
    let r = udp_query(addr, &query(0x4545, "x.example.", RecordType::AXFR, None));
    assert_eq!(
        (r.metadata.id, r.metadata.response_code),
        (0x4545, ResponseCode::Refused)
    );
    let r = tcp_query(
        addr,
        &query(0x4546, "x.example.", RecordType::IXFR, Some(1232)),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert_eq!(up.queries(), before, "not forwarded");
    // Random junk of every length up to 64: never a crash.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for len in 0..64 {
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = udp_raw(addr, &junk, Duration::from_millis(20));
    }
    // Junk over TCP: a zero-length frame, then a frame of garbage.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    write_frame(&mut s, b"\x00\x01\x02").unwrap();
    // Still serving.
    let r = udp_query(addr, &query(77, "after.example.", RecordType::A, None));
    assert_eq!(a_records(&r), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    let r = tcp_query(addr, &query(78, "after2.example.", RecordType::A, None));
    assert_eq!(r.metadata.id, 78);
    server.shutdown();
}

#[test]
fn replies_only_from_the_upstream_with_the_right_id_and_question_are_accepted() {
    // The upstream never answers for itself: a forger who sees its queries sends
    // the server what a spoofer would, each missing one thing: the right source
    // port (sent from another socket), the right ID, the right question, QR=1. None
    // may be taken: the client gets SERVFAIL after the upstream timeout.
    let upstream = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    upstream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let addr = upstream.local_addr().unwrap();
    let forger = std::thread::spawn(move || {
        let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u8; 1500];
        let mut forged = 0;
        while let Ok((n, from)) = upstream.recv_from(&mut buf) {
            let q = Message::from_vec(&buf[..n]).unwrap();
            let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
            m.add_query(q.queries[0].clone());
            m.add_answer(Record::from_rdata(
                q.queries[0].name().clone(),
                300,
                RData::A(A(Ipv4Addr::new(203, 0, 113, 66))),
            ));
            let good = m.to_vec().unwrap();
            // From another port, everything else right.
            other.send_to(&good, from).unwrap();
            // Wrong ID.
            let mut wrong_id = good.clone();
            wrong_id[0] ^= 0xff;
            upstream.send_to(&wrong_id, from).unwrap();
            // Wrong question (another name of the same length).
            let mut wrong_q = good.clone();
            wrong_q[13] ^= 0x01;
            upstream.send_to(&wrong_q, from).unwrap();
            // QR=0.
            let mut not_response = good.clone();
            not_response[2] &= 0x7f;
            upstream.send_to(&not_response, from).unwrap();
            forged += 4;
        }
        forged
    });
    let server = start(config(
        &[addr],
        "epoll",
        "[limits]\nupstream_timeout = \"300ms\"\n[tiers]\ntotal_collect_timeout = \"1s\"\n",
    ));
    let r = udp_query(
        server.local_addrs[0],
        &query(1, "s.example.", RecordType::A, None),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(a_records(&r).is_empty(), "no forged address taken");
    server.shutdown();
    assert!(forger.join().unwrap() >= 4, "the forger did send");
}

#[test]
fn serves_stale_when_upstreams_fail_and_holds_servfail_briefly() {
    let up = SimUpstream::start(Behavior {
        ttl: 1,
        ..Behavior::default()
    });
    let server = start(config(&[up.addr], "epoll", ""));
    let addr = server.local_addrs[0];
    let fresh = udp_query(addr, &query(1, "stale.example.", RecordType::A, None));
    assert_eq!(fresh.answers[0].ttl, 1);
    up.set(|b| b.rcode = ResponseCode::ServFail);
    // Expired, upstream failing: the stale answer with TTL 30 (RFC 8767). Until
    // the entry expires the hits give its own TTL (1 or 0).
    let stale = eventually(Duration::from_secs(5), "the stale answer", || {
        let r = udp_query(addr, &query(2, "stale.example.", RecordType::A, None));
        match r.answers.first().map(|a| a.ttl) {
            Some(30) => Ok(r),
            other => Err((r.metadata.response_code, other)),
        }
    });
    assert_eq!(stale.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&stale), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    assert_eq!(stale.answers[0].ttl, 30);

    // A name never answered: SERVFAIL, then held (RFC 9520): no new upstream query.
    let before = up.queries();
    let r = udp_query(addr, &query(3, "never.example.", RecordType::A, None));
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(up.queries(), before + 1);
    let r = udp_query(addr, &query(4, "never.example.", RecordType::A, None));
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(r.metadata.id, 4);
    assert_eq!(up.queries(), before + 1, "the SERVFAIL was held");
    server.shutdown();
}

#[test]
fn tcp_connections_are_bounded_and_idle_ones_closed() {
    let up = SimUpstream::start(Behavior::default());
    let server = start(config(
        &[up.addr],
        uring(),
        "[limits]\ntcp_connections = 2\ntcp_idle_timeout = \"300ms\"\n",
    ));
    let addr = server.local_addrs[0];
    // shards = 2, so up to 4 connections are served in all; open 12 and count
    // how many answer (each one past a shard's bound closes that shard's idlest:
    // see tests/tcp_clients.rs).
    let mut conns: Vec<TcpStream> = (0..12).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // Wait until the server accepted them: whatever the split between the two
    // shards, at least 8 are closed for newer ones (EOF on a peek).
    let closed = |conns: &[TcpStream]| {
        conns
            .iter()
            .filter(|s| {
                s.set_nonblocking(true).unwrap();
                let eof = matches!(s.peek(&mut [0u8; 1]), Ok(0));
                s.set_nonblocking(false).unwrap();
                eof
            })
            .count()
    };
    eventually(Duration::from_secs(3), "the server accepted all 12", || {
        let n = closed(&conns);
        (n >= 8).then_some(()).ok_or(n)
    });
    let mut answered = 0;
    for (i, s) in conns.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let q = query(i as u16, "bound.example.", RecordType::A, None);
        if write_frame(s, &q.bytes()).is_ok() && read_frame(s).is_some() {
            answered += 1;
        }
    }
    assert!(
        (1..=4).contains(&answered),
        "answered {answered} of 12 with a bound of 2 per shard"
    );
    drop(conns);
    eventually(Duration::from_secs(3), "the closed ones forgotten", || {
        let tracked = server.shared.tcp_clients.tracked();
        (tracked == 0).then_some(()).ok_or(tracked)
    });
    // An idle connection is closed by the server after tcp_idle_timeout.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let t = std::time::Instant::now();
    let mut byte = [0u8; 1];
    let n = std::io::Read::read(&mut idle, &mut byte).unwrap_or(0);
    assert_eq!(n, 0, "closed, not answered");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "closed after the idle timeout"
    );
    server.shutdown();
}

#[test]
fn popular_entries_are_prefetched_before_they_expire() {
    let up = SimUpstream::start(Behavior {
        ttl: 4,
        ..Behavior::default()
    });
    let server = start(config(
        &[up.addr],
        uring(),
        "[cache]\nprefetch_min_hits = 2\nprefetch_window = 0.5\n",
    ));
    let addr = server.local_addrs[0];
    for i in 0..3 {
        udp_query(addr, &query(i, "hot.example.", RecordType::A, None));
    }
    assert_eq!(up.queries(), 1);
    // Inside the last half of the TTL: a hit that triggers one background refresh.
    std::thread::sleep(Duration::from_millis(2300));
    let hit = udp_query(addr, &query(10, "hot.example.", RecordType::A, None));
    assert!(hit.answers[0].ttl <= 2, "served from cache, aged");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(up.queries(), 2, "refreshed in the background");
    // The refresh took the upstream's full TTL, not the half-expired one.
    let fresh = udp_query(addr, &query(11, "hot.example.", RecordType::A, None));
    assert!(fresh.answers[0].ttl >= 3, "TTL {}", fresh.answers[0].ttl);
    udp_query(addr, &query(12, "hot.example.", RecordType::A, None));
    assert_eq!(up.queries(), 2, "one refresh, not one per hit");
    server.shutdown();
}

#[test]
fn a_tcp_client_that_stops_reading_loses_its_connection_and_its_slot() {
    let addrs: Vec<Ipv4Addr> = (1..=60).map(|i| Ipv4Addr::new(198, 51, 100, i)).collect();
    let up = SimUpstream::start(Behavior {
        addrs,
        ..Behavior::default()
    });
    let mut c = config(
        &[up.addr],
        uring(),
        "[limits]\ntcp_connections = 1\ntcp_idle_timeout = \"300ms\"\ntcp_pipeline = 2\n",
    );
    c.server.shards = 1;
    let server = start(c);
    let addr = server.local_addrs[0];
    udp_query(addr, &query(1, "big.example.", RecordType::A, Some(1232)));
    // Pipeline queries for a 1 KB answer and never read: the server's writes stall.
    let mut stuck = TcpStream::connect(addr).unwrap();
    stuck
        .set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let frame = {
        let q = query(2, "big.example.", RecordType::A, None).bytes();
        let mut f = (q.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(&q);
        f
    };
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        if std::io::Write::write_all(&mut stuck, &frame.repeat(256)).is_err() {
            break; // the server closed it, or our own buffers are full
        }
    }
    // The one connection slot of the shard is free again: a new client is served.
    eventually(
        Duration::from_secs(3),
        "the stuck connection closed",
        || {
            let tracked = server.shared.tcp_clients.tracked();
            (tracked == 0).then_some(()).ok_or(tracked)
        },
    );
    let r = tcp_query(addr, &query(3, "other.example.", RecordType::A, None));
    assert_eq!(r.metadata.id, 3);
    server.shutdown();
}

#[test]
fn client_datagrams_longer_than_the_receive_buffer_are_dropped_on_both_backends() {
    // Every receive path: recvmmsg, the multishot ring, one receive per datagram.
    for (io, multishot) in runs() {
        let up = SimUpstream::start(Behavior::default());
        let mut c = config(&[up.addr], io, "");
        c.server.udp_multishot = multishot;
        let server = start(c);
        let addr = server.local_addrs[0];
        // A good query with 3000 bytes of trailing junk: longer than the 2048-byte
        // receive buffer, so it is dropped (counted as oversize), never half-read.
        let mut long = query(9, "long.example.", RecordType::A, None)
            .to_vec()
            .unwrap();
        long.resize(3000, 0xAB);
        assert_eq!(
            udp_raw(addr, &long, Duration::from_millis(300)),
            None,
            "{io} multishot={multishot}"
        );
        assert_eq!(up.queries(), 0, "{io} multishot={multishot}: not forwarded");
        let r = udp_query(addr, &query(10, "long.example.", RecordType::A, None));
        assert_eq!(
            a_records(&r),
            vec![Ipv4Addr::new(192, 0, 2, 1)],
            "{io} multishot={multishot}"
        );
        server.shutdown();
    }
}

#[test]
fn a_flood_of_hits_starves_neither_misses_nor_shutdown() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;
    for (io, multishot) in runs() {
        let up = SimUpstream::start(Behavior::default());
        let mut cfg = config(&[up.addr], io, "");
        cfg.server.shards = 1;
        cfg.server.udp_multishot = multishot;
        let server = start(cfg);
        let addr = server.local_addrs[0];
        udp_query(addr, &query(1, "hot.example.", RecordType::A, None));
        // Two senders keep the one shard's client socket full of hits, never
        // reading the replies, for at most 10 s.
        let stop = Arc::new(AtomicBool::new(false));
        let floods: Vec<_> = (0..2)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                    s.connect(addr).unwrap();
                    let hit = query(2, "hot.example.", RecordType::A, None).bytes();
                    let deadline = Instant::now() + Duration::from_secs(10);
                    let mut sent = 0u64;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        if s.send(&hit).is_ok() {
                            sent += 1;
                        }
                    }
                    sent
                })
            })
            .collect();
        let hits = server.shared.cache.stats().hits;
        eventually(Duration::from_secs(5), "the flood is served", || {
            let now = server.shared.cache.stats().hits;
            (now >= hits + 1000).then_some(()).ok_or(now)
        });
        // A miss over TCP needs the shard's other tasks (the connection, the upstream
        // reply): it is answered while the flood goes on. (Over UDP it would share the
        // flooded socket, where the kernel drops what does not fit.)
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        write_frame(
            &mut s,
            &query(3, "cold.example.", RecordType::A, None).bytes(),
        )
        .unwrap();
        let reply = read_frame(&mut s).expect("miss answered over TCP during the flood");
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(a_records(&reply), vec![Ipv4Addr::new(192, 0, 2, 1)], "{io}");
        let waited = started.elapsed();
        // Shutdown is seen under the flood too.
        let started = Instant::now();
        server.shutdown();
        let stopping = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let sent: u64 = floods.into_iter().map(|f| f.join().unwrap()).sum();
        eprintln!(
            "{io} (multishot {multishot}): {sent} hits sent; miss answered in {waited:?}; shutdown took {stopping:?}"
        );
        assert!(
            waited < Duration::from_secs(2),
            "{io}: miss waited {waited:?}"
        );
        assert!(
            stopping < Duration::from_secs(4),
            "{io}: shutdown took {stopping:?}"
        );
    }
}
