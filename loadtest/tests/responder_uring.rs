//! The io_uring floor (`loadtest responder --io uring`) over loopback: it answers a
//! real query exactly as the `recvmmsg` floor does, and keeps up with the generator
//! flat out. Skipped, with a note, where the kernel refuses the ring.

use loadtest::dns;
use loadtest::generator::{self, LoadConfig, StopHandle};
use loadtest::names::{self, NameSource};
use loadtest::responder::{self, Background, Io};
use std::net::UdpSocket;
use std::time::Duration;

/// The uring responder, or None (with a note) where io_uring is unavailable.
fn uring() -> Option<Background> {
    match Background::start_with(Io::Uring, Duration::from_secs(20)) {
        Ok(r) => Some(r),
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            eprintln!("note: not tested, the kernel refuses the io_uring floor: {e}");
            None
        }
        Err(e) => panic!("the uring responder did not start: {e}"),
    }
}

/// Sends `query` from a fresh loopback socket to `server`; the reply.
fn ask(server: std::net::SocketAddr, query: &[u8]) -> Vec<u8> {
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.send_to(query, server).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = client.recv_from(&mut buf).expect("an answer within 5 s");
    assert_eq!(
        from, server,
        "the answer comes from the responder's address"
    );
    buf[..n].to_vec()
}

#[test]
fn a_query_over_loopback_gets_the_same_answer_as_from_the_mmsg_floor() {
    let Some(ring) = uring() else { return };
    let floor = Background::start(Duration::from_secs(20)).unwrap();
    let mut a = Vec::new();
    dns::build_query(&mut a, 0x1234, "www.it.test", dns::TYPE_A, 1232).unwrap();
    let mut aaaa = Vec::new();
    dns::build_query(&mut aaaa, 0xBEEF, "v6.it.test", dns::TYPE_AAAA, 0).unwrap();

    let got = ask(ring.addr, &a);
    let r = dns::parse_response(&got).unwrap();
    assert_eq!(r.id, 0x1234);
    assert_eq!(r.rcode, dns::NOERROR);
    assert!(!r.truncated);
    assert_eq!(r.addresses, vec![responder::ANSWER]);
    assert_eq!(r.min_ttl, Some(300));
    assert_eq!(
        got,
        ask(floor.addr, &a),
        "byte for byte the mmsg floor's answer"
    );

    let got = ask(ring.addr, &aaaa);
    let r = dns::parse_response(&got).unwrap();
    assert_eq!((r.id, r.rcode), (0xBEEF, dns::NOERROR));
    assert!(r.addresses.is_empty(), "no AAAA record: {:?}", r.addresses);
    assert_eq!(got, ask(floor.addr, &aaaa));

    // Not a query: no answer, and the responder goes on answering.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.send_to(b"\x00\x01", ring.addr).unwrap();
    let r = dns::parse_response(&ask(ring.addr, &a)).unwrap();
    assert_eq!(r.id, 0x1234);

    assert_eq!(ring.stop().unwrap(), 3, "three replies sent");
    assert_eq!(floor.stop().unwrap(), 2);
}

#[test]
fn closed_loop_against_the_uring_responder_loses_nothing() {
    let Some(ring) = uring() else { return };
    let lines = names::parse_data_file("a.it.test A\nb.it.test AAAA\nc.it.test A\n").unwrap();
    let mut src = NameSource::from_lines(&lines).unwrap();
    let mut c = LoadConfig::new(ring.addr);
    c.rate = 0;
    c.duration = Duration::from_millis(400);
    c.timeout = Duration::from_millis(500);
    c.sockets = 4;
    c.progress = false;
    // More outstanding than receive buffers and send slots.
    c.window = 2 * usize::from(loadtest::uring::BUFFERS) + 100;
    let r = generator::run(&c, &mut src, &StopHandle::default()).unwrap();
    let answered_by_responder = ring.stop().unwrap();
    assert!(r.sent > 1000, "closed loop runs flat out: {}", r.sent);
    assert_eq!(r.lost, 0);
    assert_eq!(r.answered, r.sent);
    assert_eq!(r.rcode("NOERROR"), r.sent);
    assert_eq!(answered_by_responder, r.sent);
}
