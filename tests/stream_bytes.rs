//! The process-wide budget of queued stream replies (issue 18, item 2;
//! `limits.stream_reply_bytes`, as unbound's `stream-wait-size`), on loopback with
//! a simulated upstream whose answers are large: a client that pipelines and never
//! reads is closed once the process holds more than the budget for it, while a
//! well-behaved client on another connection keeps being served.

mod common;

use common::*;
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The value of a counter with these labels (0 when absent).
fn counter(handle: &metrics_exporter_prometheus::PrometheusHandle, name: &str, label: &str) -> u64 {
    handle
        .render()
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A TCP connection with a small receive buffer, so the server's replies back up
/// quickly when it does not read.
fn connect_small(server: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&server.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

fn ask(s: &mut TcpStream, id: u16, name: &str) -> Option<Message> {
    write_frame(s, &query(id, name, RecordType::A, None).bytes()).ok()?;
    Message::from_vec(&read_frame(s)?).ok()
}

/// Queries the hog pipelines: their answers (about 1 KiB each) are far more than
/// the kernel's socket buffers and the budget hold.
const HOG_QUERIES: u16 = 4000;

#[test]
fn a_client_that_never_reads_is_closed_past_the_budget_and_others_are_served() {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("a recorder for this test process");
    for io in ["epoll", uring()] {
        let up = SimUpstream::start(Behavior {
            // About 1 KiB of answer: 60 A records.
            addrs: (0..60).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect(),
            ..Behavior::default()
        });
        let mut c = config(
            &[up.addr],
            io,
            "[limits]\nstream_reply_bytes = 32768\ntcp_idle_timeout = \"30s\"\n",
        );
        c.metrics.flush_interval = Duration::from_millis(20);
        let server = start(c);
        let addr = server.local_addrs[0];
        let before = counter(&handle, "tierdns_tcp_closed_total", "reply_bytes");
        let mut good = connect_small(addr);
        let first = ask(&mut good, 1, "big.example.").expect("served");
        assert_eq!(a_records(&first).len(), 60, "{io}: the large answer");
        // The hog writes its queries from a thread (the server stops reading
        // them once its pipeline is full) and reads nothing.
        let mut hog = connect_small(addr);
        let mut hog_writer = hog.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            for id in 0..HOG_QUERIES {
                let q = query(id, "big.example.", RecordType::A, None).bytes();
                let mut frame = (q.len() as u16).to_be_bytes().to_vec();
                frame.extend_from_slice(&q);
                if hog_writer.write_all(&frame).is_err() {
                    return;
                }
            }
        });
        eventually(Duration::from_secs(10), "the hog closed", || {
            let n = counter(&handle, "tierdns_tcp_closed_total", "reply_bytes");
            if n > before {
                Ok(())
            } else {
                Err(server.shared.stream_reply_bytes.load(Ordering::Relaxed))
            }
        });
        // The well-behaved client is served meanwhile and after.
        for id in 2..20 {
            let m = ask(&mut good, id, "big.example.").expect("still served");
            assert_eq!(m.metadata.id, id, "{io}");
            assert_eq!(a_records(&m).len(), 60, "{io}");
        }
        // What the process holds goes back under the budget.
        eventually(Duration::from_secs(5), "queued bytes released", || {
            let n = server.shared.stream_reply_bytes.load(Ordering::Relaxed);
            if n <= 32768 {
                Ok(())
            } else {
                Err(n)
            }
        });
        // The hog's connection ends before all its answers came.
        let mut answers = 0;
        let mut buf = vec![0u8; 1 << 16];
        let mut pending = Vec::new();
        let ended = loop {
            match hog.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    while pending.len() >= 2 {
                        let len = u16::from_be_bytes([pending[0], pending[1]]) as usize;
                        if pending.len() < 2 + len {
                            break;
                        }
                        pending.drain(..2 + len);
                        answers += 1;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    break matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                    )
                }
            }
        };
        assert!(ended, "{io}: the hog's connection was closed");
        assert!(
            answers < usize::from(HOG_QUERIES),
            "{io}: {answers} answers"
        );
        writer.join().unwrap();
        server.shutdown();
    }
}
