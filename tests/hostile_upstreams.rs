//! Hostile upstreams: each misbehaviour alone (the client gets what it should, in
//! bounded time) and beside a good upstream (the client gets the good answer in
//! about the good upstream's time); after each, no flight is left in the table.

mod common;

use common::*;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Misbehaviour {
    /// The right ID, then garbage.
    GarbageAfterId,
    /// A good answer with another ID.
    WrongId,
    /// A good answer to another question.
    WrongQuestion,
    /// The answer with QR=0.
    NotAResponse,
    /// A good answer sent from another port.
    OtherPort,
    /// Nothing at all.
    Silent,
    /// TC=1 over UDP, and no TCP listener (connection refused).
    TruncatedTcpRefused,
    /// TC=1 over UDP; over TCP half a frame, then the connection is closed.
    TruncatedPartialFrame,
    /// TC=1 over UDP; over TCP the connection is reset at once.
    TruncatedReset,
    /// The good answer, twice.
    Duplicate,
    /// The good answer, after the query has been given up on.
    Late,
}

/// A good answer to `query`: its ID and question, one A record 198.51.100.7.
fn good_answer(query: &[u8]) -> Vec<u8> {
    let q = Message::from_vec(query).unwrap();
    let question = q.queries[0].clone();
    let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_answer(Record::from_rdata(
        question.name().clone(),
        300,
        RData::A(A(Ipv4Addr::new(198, 51, 100, 7))),
    ));
    m.add_query(question);
    m.to_vec().unwrap()
}

struct Hostile {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes a TCP accept waiting in its thread (refused at once where the
        // upstream has no TCP listener).
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn hostile(how: Misbehaviour) -> Hostile {
    let tcp_modes = [
        Misbehaviour::TruncatedPartialFrame,
        Misbehaviour::TruncatedReset,
    ];
    // UDP picks the port; TCP, where needed, must get the same one, which another
    // process may hold: try again with a new port then.
    let (udp, addr, tcp) = (0..50)
        .find_map(|_| {
            let udp = UdpSocket::bind("127.0.0.1:0").ok()?;
            let addr = udp.local_addr().ok()?;
            let tcp = if tcp_modes.contains(&how) {
                Some(TcpListener::bind(addr).ok()?)
            } else {
                None
            };
            Some((udp, addr, tcp))
        })
        .expect("a loopback port free for UDP and TCP");
    udp.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    if let Some(listener) = tcp {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            // A blocking accept: the Hostile's drop connects once to wake it.
            while let Ok((mut s, _)) = listener.accept() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let mut len = [0u8; 2];
                if s.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if s.read_exact(&mut q).is_err() {
                    continue;
                }
                if how == Misbehaviour::TruncatedReset {
                    // Linger 0: close sends a reset.
                    socket2::SockRef::from(&s)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                } else {
                    let a = good_answer(&q);
                    let _ = s.write_all(&(a.len() as u16).to_be_bytes());
                    let _ = s.write_all(&a[..a.len() / 2]);
                }
                drop(s);
            }
        });
    }
    let stop_udp = Arc::clone(&stop);
    std::thread::spawn(move || {
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u8; 1500];
        while !stop_udp.load(Ordering::Relaxed) {
            let Ok((n, from)) = udp.recv_from(&mut buf) else {
                continue;
            };
            let q = &buf[..n];
            let mut a = good_answer(q);
            match how {
                Misbehaviour::GarbageAfterId => {
                    a.truncate(2);
                    a.extend_from_slice(&[0xff; 40]);
                }
                Misbehaviour::WrongId => {
                    a[1] ^= 0x5a;
                }
                Misbehaviour::WrongQuestion => {
                    // The question name's first letter changed.
                    a[13] = if a[13] == b'z' { b'y' } else { b'z' };
                }
                Misbehaviour::NotAResponse => a[2] &= 0x7f,
                Misbehaviour::OtherPort => {
                    let _ = other.send_to(&a, from);
                    continue;
                }
                Misbehaviour::Silent => continue,
                Misbehaviour::TruncatedTcpRefused
                | Misbehaviour::TruncatedPartialFrame
                | Misbehaviour::TruncatedReset => {
                    let mut m = Message::from_vec(&a).unwrap();
                    m.answers.clear();
                    m.metadata.truncation = true;
                    a = m.to_vec().unwrap();
                }
                Misbehaviour::Duplicate => {
                    let _ = udp.send_to(&a, from);
                }
                Misbehaviour::Late => std::thread::sleep(Duration::from_millis(600)),
            }
            let _ = udp.send_to(&a, from);
        }
    });
    Hostile { addr, stop }
}

const ALL: [Misbehaviour; 11] = [
    Misbehaviour::GarbageAfterId,
    Misbehaviour::WrongId,
    Misbehaviour::WrongQuestion,
    Misbehaviour::NotAResponse,
    Misbehaviour::OtherPort,
    Misbehaviour::Silent,
    Misbehaviour::TruncatedTcpRefused,
    Misbehaviour::TruncatedPartialFrame,
    Misbehaviour::TruncatedReset,
    Misbehaviour::Duplicate,
    Misbehaviour::Late,
];

/// Limits that keep the waits short: a 400 ms upstream timeout.
const EXTRA: &str = "[limits]\nupstream_timeout = \"400ms\"\n";

fn wait_for_no_flights(server: &tierdns::shard::ServerHandle) {
    eventually(Duration::from_secs(5), "no flight left behind", || {
        let left = server.shared.flights.len();
        (left == 0).then_some(()).ok_or(left)
    });
}

#[test]
fn each_misbehaviour_alone_gives_servfail_or_the_answer_in_bounded_time() {
    for how in ALL {
        let bad = hostile(how);
        let server = start(config(&[bad.addr], "epoll", EXTRA));
        let t = Instant::now();
        let r = udp_query(
            server.local_addrs[0],
            &query(9, "hostile.example.", RecordType::A, None),
        );
        let took = t.elapsed();
        let expect = match how {
            // A real answer came (the first of two; the second is dropped).
            Misbehaviour::Duplicate => ResponseCode::NoError,
            _ => ResponseCode::ServFail,
        };
        assert_eq!(r.metadata.response_code, expect, "{how:?}");
        assert!(
            took < Duration::from_millis(1500),
            "{how:?}: answered in {took:?}"
        );
        if expect == ResponseCode::ServFail {
            assert!(
                a_records(&r).is_empty(),
                "{how:?}: nothing forged got through"
            );
        }
        wait_for_no_flights(&server);
        server.shutdown();
    }
}

#[test]
fn beside_a_good_upstream_the_client_gets_the_good_answer_in_its_time() {
    for how in ALL {
        let bad = hostile(how);
        let good = SimUpstream::start(Behavior {
            delay: Duration::from_millis(30),
            addrs: vec![Ipv4Addr::new(192, 0, 2, 77)],
            ..Behavior::default()
        });
        // The hostile one first: with no health data both form the active tier.
        let server = start(config(&[bad.addr, good.addr], "epoll", EXTRA));
        let t = Instant::now();
        let r = udp_query(
            server.local_addrs[0],
            &query(10, "hostile.example.", RecordType::A, None),
        );
        let took = t.elapsed();
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{how:?}");
        let got = a_records(&r);
        let forged = Ipv4Addr::new(198, 51, 100, 7);
        match how {
            // A real answer, sent twice: it may win, being first.
            Misbehaviour::Duplicate => assert_eq!(got.len(), 1, "{how:?}"),
            _ => assert_eq!(got, [Ipv4Addr::new(192, 0, 2, 77)], "{how:?}: {got:?}"),
        }
        if how != Misbehaviour::Duplicate {
            assert!(!got.contains(&forged), "{how:?}: a bad reply was taken");
        }
        assert!(
            took < Duration::from_millis(300),
            "{how:?}: the good answer took {took:?}"
        );
        wait_for_no_flights(&server);
        server.shutdown();
    }
}
