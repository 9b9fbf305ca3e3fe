//! edns-tcp-keepalive (RFC 7828) on stream replies (issue 18, item 2), on loopback
//! with a simulated upstream: a TCP or DoT query that carries the option gets it
//! back with `tcp_idle_timeout` in units of 100 ms, and TIMEOUT 0 on the last
//! answers of a connection that is closing; a query without it, and UDP, never.

mod common;

use common::tls::*;
use common::*;
use hickory_proto::rr::RecordType;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An EDNS query for `name` A whose OPT carries edns-tcp-keepalive (empty, as a
/// client sends it) when `keepalive`.
fn edns_query(id: u16, name: &str, keepalive: bool) -> Vec<u8> {
    let mut q = query(id, name, RecordType::A, Some(1232)).bytes();
    if keepalive {
        // The OPT is the last record and has no options: RDLENGTH is the last
        // two bytes.
        let n = q.len();
        assert_eq!(&q[n - 2..], &[0, 0]);
        q[n - 2..].copy_from_slice(&4u16.to_be_bytes());
        q.extend_from_slice(&[0, 11, 0, 0]);
    }
    q
}

/// The TIMEOUT of the keepalive option a reply ends with (tierdns writes its OPT
/// last and the option last in it), if any.
fn keepalive_timeout(reply: &[u8]) -> Option<u16> {
    let n = reply.len();
    let tail = reply.get(n.checked_sub(6)?..)?;
    (tail[..4] == [0, 11, 0, 2]).then(|| u16::from_be_bytes([tail[4], tail[5]]))
}

fn frame(q: &[u8]) -> Vec<u8> {
    let mut f = (q.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(q);
    f
}

#[test]
fn tcp_queries_that_ask_get_the_idle_timeout_and_others_do_not() {
    for io in ["epoll", uring()] {
        let up = SimUpstream::start(Behavior::default());
        let server = start(config(
            &[up.addr],
            io,
            "[limits]\ntcp_idle_timeout = \"7s\"\n",
        ));
        let addr = server.local_addrs[0];
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        // A miss, then a hit: both paths.
        for id in [1, 2] {
            s.write_all(&frame(&edns_query(id, "ka.example.", true)))
                .unwrap();
            let r = read_frame(&mut s).expect("an answer");
            assert_eq!(keepalive_timeout(&r), Some(70), "{io}: 7 s in 100 ms units");
            let m = hickory_proto::op::Message::from_vec(&r).expect("a valid message");
            assert_eq!(m.metadata.id, id);
            assert_eq!(a_records(&m).len(), 1, "{io}");
        }
        s.write_all(&frame(&edns_query(3, "ka.example.", false)))
            .unwrap();
        let r = read_frame(&mut s).expect("an answer");
        assert_eq!(keepalive_timeout(&r), None, "{io}: not asked");
        // Never over UDP.
        let r = udp_raw(
            addr,
            &edns_query(4, "ka.example.", true),
            Duration::from_secs(3),
        )
        .expect("a UDP answer");
        assert_eq!(keepalive_timeout(&r), None, "{io}: UDP");
        assert!(hickory_proto::op::Message::from_vec(&r).is_ok());
        server.shutdown();
    }
}

#[test]
fn the_last_answers_of_a_closing_connection_say_timeout_zero() {
    let up = SimUpstream::start(Behavior::default());
    let server = start(config(
        &[up.addr],
        "epoll",
        "[limits]\ntcp_max_queries = 3\n",
    ));
    let addr = server.local_addrs[0];
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(&frame(&edns_query(1, "closing.example.", true)))
        .unwrap();
    let first = read_frame(&mut s).expect("an answer");
    assert_eq!(keepalive_timeout(&first), Some(100), "the default 10 s");
    // The second and third pipelined: the third is the last this connection takes.
    let mut both = frame(&edns_query(2, "closing.example.", true));
    both.extend_from_slice(&frame(&edns_query(3, "closing.example.", true)));
    s.write_all(&both).unwrap();
    let mut last = None;
    for _ in 0..2 {
        let r = read_frame(&mut s).expect("an answer");
        let m = hickory_proto::op::Message::from_vec(&r).unwrap();
        if m.metadata.id == 3 {
            last = Some(r);
        }
    }
    assert_eq!(
        keepalive_timeout(&last.expect("the third answered")),
        Some(0),
        "the last answer: do not send more"
    );
    assert!(read_frame(&mut s).is_none(), "then the connection ends");
    server.shutdown();
}

#[test]
fn dot_answers_carry_it_too() {
    let pki = Pki::new("keepalive");
    let up = upstream();
    let server = start(config(&[up.addr], "epoll", &pki.sections("")));
    let addr = server.tls_addrs[0];
    runtime().block_on(async {
        let mut s = tls_from(LOCAL, addr, pki.client(&[b"dot"]), HOST)
            .await
            .expect("handshake");
        s.write_all(&frame(&edns_query(9, "dot-ka.example.", true)))
            .await
            .unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.unwrap();
        let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut r).await.unwrap();
        assert_eq!(keepalive_timeout(&r), Some(100));
    });
    server.shutdown();
}
