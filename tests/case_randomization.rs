//! DNS 0x20 end to end: with `case_randomization`, queries leave with letters in
//! random case; an upstream that repeats the question as sent is answered from, one
//! that folds the case is not (and is, without the option).

mod common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

fn with_0x20(addrs: &[SocketAddr]) -> tierdns::config::Config {
    let mut cfg = config(addrs, "epoll", "[limits]\nupstream_timeout = \"300ms\"\n");
    for u in &mut cfg.upstreams {
        u.case_randomization = true;
    }
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
    let server = start(config(&[folding], "epoll", ""));
    let r = udp_query(
        server.local_addrs[0],
        &query(2, "abcdefghijklmnop.example.", RecordType::A, None),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    server.shutdown();
}
