//! Rates per client prefix on the stream listeners (issue 18, item 2), on loopback
//! with a simulated upstream: new connections and new TLS sessions per second
//! (closed at accept, another prefix unaffected), and queries per second on TCP
//! and DoH (paced, none lost); a reload that applies new rates.
//!
//! Another prefix is a socket bound to 127.0.1.x: another /24 on loopback, inside
//! the default `access.allow`.

mod common;

use common::tls::*;
use common::*;
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

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

/// Whether the server closed `s` (EOF or reset) with nothing to read.
fn closed(s: &mut TcpStream) -> bool {
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
fn new_connections_past_the_rate_are_closed_at_accept_per_prefix() {
    for io in ["epoll", uring()] {
        let up = SimUpstream::start(Behavior::default());
        let server = start(config(
            &[up.addr],
            io,
            "[ratelimit]\nnew_connections_per_second = 2\n",
        ));
        let addr = server.local_addrs[0];
        // Warm the cache from another prefix, so every answer below is a hit.
        let mut warm = connect_from("127.0.2.1", addr);
        ask(&mut warm, 1, "rate.example.").expect("warm");
        let start = Instant::now();
        let mut held: Vec<TcpStream> = (0..6).map(|_| connect_from("127.0.0.1", addr)).collect();
        let mut served = 0;
        for (i, s) in held.iter_mut().enumerate() {
            match ask(s, i as u16, "rate.example.") {
                Some(r) => {
                    assert_eq!(r.metadata.id, i as u16);
                    served += 1;
                }
                None => assert!(closed(s), "{io}: a connection not served is closed"),
            }
        }
        // The burst (2), plus what refilled meanwhile at 2 a second.
        let refill = (start.elapsed().as_secs_f64() * 2.0).ceil() as usize;
        assert!(served >= 2, "{io}: the burst is served, got {served}");
        assert!(
            served <= 2 + refill,
            "{io}: {served} of 6 served within {:?}",
            start.elapsed()
        );
        assert!(served < 6, "{io}: the rate closed none");
        // 127.0.0.2 is in the same /24: also over. 127.0.1.2 is another prefix.
        let mut other = connect_from("127.0.1.2", addr);
        assert!(
            ask(&mut other, 100, "rate.example.").is_some(),
            "{io}: another prefix"
        );
        // The bucket refills: a connection later is served again.
        let mut again = eventually(Duration::from_secs(5), "the bucket refills", || {
            let mut s = connect_from("127.0.0.3", addr);
            match ask(&mut s, 101, "rate.example.") {
                Some(_) => Ok(s),
                None => Err("closed"),
            }
        });
        assert!(ask(&mut again, 102, "rate.example.").is_some());
        server.shutdown();
    }
}

#[test]
fn new_tls_sessions_past_their_rate_are_closed_before_the_handshake() {
    let pki = Pki::new("tls-rate");
    let up = upstream();
    let server = start(config(
        &[up.addr],
        "epoll",
        &format!(
            "{}\n[ratelimit]\nnew_tls_sessions_per_second = 1\n",
            pki.sections("")
        ),
    ));
    let dot = server.tls_addrs[0];
    let tcp = server.local_addrs[0];
    runtime().block_on(async {
        let client = pki.client(&[b"dot"]);
        let local = Ipv4Addr::LOCALHOST;
        let mut first = tls_from(local, dot, client.clone(), HOST)
            .await
            .expect("the first session");
        // The next handshakes within the second fail: closed at accept.
        let start = Instant::now();
        let mut refused = 0;
        for _ in 0..3 {
            if tls_from(local, dot, client.clone(), HOST).await.is_err() {
                refused += 1;
            }
        }
        if start.elapsed() < Duration::from_millis(900) {
            assert_eq!(refused, 3, "sessions past 1 a second");
        } else {
            assert!(refused >= 1, "sessions past 1 a second");
        }
        // Another prefix gets its own; plain TCP from this one is not limited.
        let mut other = tls_from(Ipv4Addr::new(127, 0, 1, 2), dot, client.clone(), HOST)
            .await
            .expect("another prefix");
        write_query(&mut other, 7, "tls.example.").await;
        assert_eq!(
            read_answer(&mut other).await.expect("answer").metadata.id,
            7
        );
        write_query(&mut first, 8, "tls.example.").await;
        assert_eq!(
            read_answer(&mut first).await.expect("answer").metadata.id,
            8
        );
    });
    let mut plain = connect_from("127.0.0.1", tcp);
    assert!(ask(&mut plain, 9, "tls.example.").is_some(), "plain TCP");
    server.shutdown();
}

/// `n` queries pipelined on one connection (written before any is read): their
/// IDs as answered, and how long the answers took.
fn pipelined(s: &mut TcpStream, n: u16, name: &str) -> (Vec<u16>, Duration) {
    let start = Instant::now();
    let mut bytes = Vec::new();
    for id in 0..n {
        let q = query(id, name, RecordType::A, None).bytes();
        bytes.extend_from_slice(&(q.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&q);
    }
    std::io::Write::write_all(s, &bytes).unwrap();
    let mut ids: Vec<u16> = (0..n)
        .map_while(|_| read_frame(s).and_then(|f| Message::from_vec(&f).ok()))
        .map(|m| m.metadata.id)
        .collect();
    ids.sort_unstable();
    (ids, start.elapsed())
}

#[test]
fn stream_queries_over_the_rate_are_paced_and_none_is_lost() {
    for io in ["epoll", uring()] {
        let up = SimUpstream::start(Behavior::default());
        let server = start(config(
            &[up.addr],
            io,
            "[ratelimit]\nstream_qps = 20\nstream_burst = 4\n",
        ));
        let addr = server.local_addrs[0];
        let mut warm = connect_from("127.0.2.1", addr);
        ask(&mut warm, 1, "paced.example.").expect("warm");
        let mut s = connect_from("127.0.0.1", addr);
        let (ids, took) = pipelined(&mut s, 16, "paced.example.");
        assert_eq!(
            ids,
            (0..16).collect::<Vec<_>>(),
            "{io}: every query answered"
        );
        // The burst at once, the other 12 at 20 a second: 600 ms at least.
        assert!(
            took >= Duration::from_millis(550),
            "{io}: 16 answers in {took:?}"
        );
        // Another prefix meanwhile has its own bucket: its burst is not paced.
        let mut other = connect_from("127.0.1.2", addr);
        let (ids, took) = pipelined(&mut other, 4, "paced.example.");
        assert_eq!(ids.len(), 4, "{io}");
        assert!(took < Duration::from_millis(500), "{io}: {took:?}");
        server.shutdown();
    }
}

#[test]
fn doh_requests_over_the_rate_wait_for_their_token() {
    let pki = Pki::new("doh-rate");
    let up = upstream();
    let server = start(config(
        &[up.addr],
        "epoll",
        &format!(
            "{}\n[ratelimit]\nstream_qps = 10\nstream_burst = 2\n",
            pki.sections("")
        ),
    ));
    let addr = server.https_addrs[0];
    runtime().block_on(async {
        let mut http = Http::connect(&pki, addr, true).await;
        let start = Instant::now();
        for id in 0..7u16 {
            let q = query(id, "doh-rate.example.", RecordType::A, None).bytes();
            let r = http
                .send(get(addr, &format!("/dns-query?dns={}", b64(&q))))
                .await;
            assert_eq!(r.status, hyper::StatusCode::OK);
            assert_eq!(r.dns().metadata.id, id);
        }
        // Two at once, five more at 10 a second.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(450), "7 requests in {took:?}");
    });
    server.shutdown();
}

#[test]
fn a_reload_applies_new_stream_rates() {
    let up = SimUpstream::start(Behavior::default());
    let server = start(config(&[up.addr], "epoll", ""));
    let addr = server.local_addrs[0];
    for i in 0..5 {
        let mut s = connect_from("127.0.0.1", addr);
        assert!(ask(&mut s, i, "reload.example.").is_some(), "no rate yet");
    }
    let _ = server.reload(config(
        &[up.addr],
        "epoll",
        "[ratelimit]\nnew_connections_per_second = 1\n",
    ));
    // Once every shard has the new policy, connections past one a second close.
    eventually(Duration::from_secs(5), "the new rate in force", || {
        let refused = (0..4)
            .filter(|i| {
                let mut s = connect_from("127.0.0.1", addr);
                ask(&mut s, 10 + i, "reload.example.").is_none()
            })
            .count();
        if refused >= 2 {
            Ok(())
        } else {
            Err(refused)
        }
    });
    server.shutdown();
}
