//! A restart under load: tierdns A serves, tierdns B starts on the same addresses
//! (SO_REUSEPORT), and once B answers A shuts down (what SIGTERM does). Clients
//! sending all along, from many source ports (so the kernel spreads them over
//! A's and B's sockets), must get every answer: A answers what it holds, B takes
//! the rest. Both io backends, on one address and on the wildcard (`0.0.0.0`, the
//! clients asking 127.0.0.2: every answer must come from the address asked, also
//! those A sends after it has let go of its sockets).

mod common;

use common::*;
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the clients counted.
#[derive(Default)]
struct Counts {
    sent: AtomicUsize,
    answered: AtomicUsize,
    /// Answers carrying B's upstream's address: B serves.
    from_b: AtomicUsize,
    lost: AtomicUsize,
    /// Answers from another address than the one asked (a client drops them).
    wrong_source: AtomicUsize,
}

const B_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// One client: a query, then its answer (or a loss after 2 s), until `stop`.
fn client(server: SocketAddr, n: usize, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 1500];
    let mut id = (n as u16) << 12;
    while !stop.load(Ordering::Relaxed) {
        id = id.wrapping_add(1);
        let name = format!("n{}.restart.test.", id % 64);
        let q = query(id, &name, RecordType::A, None).bytes();
        sock.send_to(&q, server).unwrap();
        counts.sent.fetch_add(1, Ordering::Relaxed);
        let answer = loop {
            match sock.recv_from(&mut buf) {
                Ok((_, from)) if from != server => {
                    counts.wrong_source.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Ok((len, _)) => match Message::from_vec(&buf[..len]) {
                    Ok(m) if m.metadata.id == id => break Some(m),
                    _ => continue,
                },
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break None,
            }
        };
        match answer {
            Some(m) => {
                counts.answered.fetch_add(1, Ordering::Relaxed);
                if a_records(&m) == [B_ADDR] {
                    counts.from_b.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                counts.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn restart_under_load(io: &str, wildcard: bool) {
    let up_a = SimUpstream::start(Behavior::default());
    let up_b = SimUpstream::start(Behavior {
        addrs: vec![B_ADDR],
        ..Behavior::default()
    });
    let mut config_a = config(&[up_a.addr], io, "");
    if wildcard {
        config_a.server.listen = vec!["0.0.0.0:0".parse().unwrap()];
    }
    let a = start(config_a);
    let bound = a.local_addrs[0];
    let mut config_b = config(&[up_b.addr], io, "");
    config_b.server.listen = vec![bound];
    // The address the clients ask: on the wildcard, not the one the route would
    // pick as a reply's source (127.0.0.1).
    let addr = match wildcard {
        true => SocketAddr::from(([127, 0, 0, 2], bound.port())),
        false => bound,
    };

    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|n| {
            let (counts, stop) = (Arc::clone(&counts), Arc::clone(&stop));
            std::thread::spawn(move || client(addr, n, counts, stop))
        })
        .collect();
    let answered = |at_least: usize| {
        let counts = Arc::clone(&counts);
        move || {
            let n = counts.answered.load(Ordering::Relaxed);
            if n >= at_least {
                Ok(n)
            } else {
                Err(n)
            }
        }
    };
    eventually(Duration::from_secs(10), "A answers", answered(2000));

    // B on the same address, while A serves.
    let b = start(config_b);
    assert_eq!(b.local_addrs, vec![bound]);
    eventually(Duration::from_secs(10), "B answers too", || {
        match counts.from_b.load(Ordering::Relaxed) {
            n if n >= 200 => Ok(n),
            n => Err(n),
        }
    });

    // A stops as at SIGTERM; the clients keep sending through it and after.
    let before = counts.sent.load(Ordering::Relaxed);
    a.shutdown();
    let after = counts.answered.load(Ordering::Relaxed);
    eventually(
        Duration::from_secs(10),
        "B answers after A stopped",
        answered(after + 5000),
    );
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (sent, answered, lost, wrong) = (
        counts.sent.load(Ordering::Relaxed),
        counts.answered.load(Ordering::Relaxed),
        counts.lost.load(Ordering::Relaxed),
        counts.wrong_source.load(Ordering::Relaxed),
    );
    eprintln!(
        "{io} on {bound}: sent {sent}, answered {answered}, lost {lost}, \
         {wrong} from another address ({before} sent before A stopped)"
    );
    assert_eq!(wrong, 0, "{io}: every answer from the address asked");
    assert_eq!(lost, 0, "{io}: every query answered across the restart");
    assert_eq!(answered, sent);
    b.shutdown();
}

#[test]
fn a_restart_under_load_loses_no_query_on_io_uring() {
    restart_under_load(uring(), false);
}

#[test]
fn a_restart_under_load_loses_no_query_on_epoll() {
    restart_under_load("epoll", false);
}

#[test]
fn a_restart_on_the_wildcard_answers_from_the_address_asked_on_io_uring() {
    // Without multishot receive the per-datagram loop learns no destination
    // (README, "Shutdown and restart").
    if uring() == "uring" && !uring_multishot() {
        return eprintln!("note: no multishot io_uring receive here; not tested");
    }
    restart_under_load(uring(), true);
}

#[test]
fn a_restart_on_the_wildcard_answers_from_the_address_asked_on_epoll() {
    restart_under_load("epoll", true);
}
