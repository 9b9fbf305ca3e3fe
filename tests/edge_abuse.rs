//! Edge abuse (issue 18): what one client does must not fail another's answer.
//!
//! - A flight belongs to no client: a DoH request reset while its upstream query is
//!   out does not cancel the flight; a UDP client asking the same name meanwhile gets
//!   the answer, and the answer is cached.
//! - A reset request keeps its place in `max_client_in_flight` until its flight is
//!   over: resets cannot bypass the bound.
//! - A TCP client that closes its connection mid-flight cancels nothing either.
//! - A DoH connection whose client resets more than 100 accepted requests gets
//!   GOAWAY and is closed; up to the bound it is served.

mod common;

use common::tls::*;
use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

const ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 9);

/// An upstream that answers after `delay`.
fn slow_upstream(delay: Duration) -> SimUpstream {
    SimUpstream::start(Behavior {
        addrs: vec![ADDR],
        ttl: 300,
        delay,
        ..Behavior::default()
    })
}

/// One HTTP/2 DoH connection driven with the h2 crate, so a test can reset a
/// stream it sent.
struct H2 {
    send: h2::client::SendRequest<bytes::Bytes>,
    conn: tokio::task::JoinHandle<Result<(), h2::Error>>,
}

impl H2 {
    async fn connect(pki: &Pki, addr: SocketAddr) -> Self {
        let tls = tls_from(LOCAL, addr, pki.client(&[b"h2"]), HOST)
            .await
            .expect("handshake");
        let (send, conn) = h2::client::handshake(tls).await.expect("HTTP/2");
        Self {
            send,
            conn: tokio::spawn(conn),
        }
    }

    /// Sends a GET for `name`; returns the response future and the stream.
    async fn ask(
        &mut self,
        id: u16,
        name: &str,
    ) -> Result<(h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>), h2::Error> {
        let q = query(id, name, RecordType::A, None).bytes();
        let req = http::Request::get(format!("https://{HOST}/dns-query?dns={}", b64(&q)))
            .body(())
            .unwrap();
        let mut send = self.send.clone().ready().await?;
        let out = send.send_request(req, true)?;
        self.send = send;
        Ok(out)
    }
}

fn with_https(
    pki: &Pki,
    upstreams: &[SocketAddr],
    io: &str,
    extra: &str,
) -> tierdns::config::Config {
    let mut config = config(upstreams, io, &format!("{extra}\n{}", pki.sections("")));
    // One shard: the DoH connection, the UDP and TCP clients and the bounds all
    // meet on it.
    config.server.shards = 1;
    config
}

#[test]
fn a_reset_doh_request_does_not_fail_the_clients_coalesced_on_its_name() {
    for io in ["epoll", uring()] {
        let pki = Pki::new("reset-coalesced");
        let up = slow_upstream(Duration::from_millis(1000));
        let server = start(with_https(&pki, &[up.addr], io, ""));
        let (https, plain) = (server.https_addrs[0], server.local_addrs[0]);
        runtime().block_on(async {
            let mut h2 = H2::connect(&pki, https).await;
            let (response, mut stream) = h2.ask(1, "slow.example.").await.unwrap();
            eventually_async(Duration::from_secs(5), "the upstream is asked", || {
                (up.queries() >= 1).then_some(()).ok_or(up.queries())
            })
            .await;
            // The DoH client gives up on its request while the upstream query is
            // out (RST_STREAM).
            stream.send_reset(h2::Reason::CANCEL);
            drop(response);
            // A UDP client asks the same name meanwhile: it joins the flight the
            // reset request started, and gets its answer.
            let udp = tokio::task::spawn_blocking(move || {
                udp_query(plain, &query(2, "slow.example.", RecordType::A, None))
            });
            let m = udp.await.unwrap();
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{io}");
            assert_eq!(a_records(&m), [ADDR], "{io}");
        });
        // And the answer is cached: asked again, nothing more goes upstream.
        let m = udp_query(plain, &query(3, "slow.example.", RecordType::A, None));
        assert_eq!(a_records(&m), [ADDR], "{io}");
        assert_eq!(up.queries(), 1, "{io}: one flight, its answer cached");
        server.shutdown();
    }
}

#[test]
fn a_reset_request_keeps_its_place_in_max_client_in_flight() {
    let pki = Pki::new("reset-admission");
    let up = slow_upstream(Duration::from_millis(1500));
    let server = start(with_https(
        &pki,
        &[up.addr],
        uring(),
        "[limits]\nmax_client_in_flight = 1\n",
    ));
    let (https, plain) = (server.https_addrs[0], server.local_addrs[0]);
    runtime().block_on(async {
        let mut h2 = H2::connect(&pki, https).await;
        let (response, mut stream) = h2.ask(1, "held.example.").await.unwrap();
        eventually_async(Duration::from_secs(5), "the upstream is asked", || {
            (up.queries() >= 1).then_some(()).ok_or(up.queries())
        })
        .await;
        stream.send_reset(h2::Reason::CANCEL);
        drop(response);
    });
    // The reset request's flight still holds the shard's one place: a TCP miss
    // is told the resolver is overloaded, and nothing more goes upstream.
    let m = tcp_query(
        plain,
        &query(2, "other.example.", RecordType::A, Some(1232)),
    );
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(ede_code(&m), Some(0), "EDE 0: resolver overloaded");
    assert_eq!(up.queries(), 1);
    // Once that flight is over the place is free again.
    let m = eventually(Duration::from_secs(10), "the place is freed", || {
        let m = tcp_query(plain, &query(3, "other.example.", RecordType::A, None));
        if m.metadata.response_code == ResponseCode::NoError {
            Ok(m)
        } else {
            Err(m.metadata.response_code)
        }
    });
    assert_eq!(a_records(&m), [ADDR]);
    server.shutdown();
}

/// The bound of `shard/doh.rs` (`MAX_STREAM_RESETS`).
const MAX_STREAM_RESETS: u16 = 100;

#[test]
fn a_doh_connection_that_resets_too_many_requests_is_closed() {
    let pki = Pki::new("resets");
    let up = slow_upstream(Duration::from_millis(2000));
    let server = start(with_https(&pki, &[up.addr], uring(), ""));
    let https = server.https_addrs[0];
    runtime().block_on(async {
        let mut h2 = H2::connect(&pki, https).await;
        // Each reset after the server accepted the request (its upstream query
        // is out), as h2's own reset limit does not count those.
        for i in 0..MAX_STREAM_RESETS {
            let (response, mut stream) = h2
                .ask(i, &format!("r{i}.example."))
                .await
                .unwrap_or_else(|e| panic!("request {i} refused: {e}"));
            let want = usize::from(i) + 1;
            eventually_async(Duration::from_secs(5), "the upstream is asked", || {
                (up.queries() >= want).then_some(()).ok_or(up.queries())
            })
            .await;
            stream.send_reset(h2::Reason::CANCEL);
            drop(response);
        }
        // At the bound the connection still serves.
        up.set(|b| b.delay = Duration::ZERO);
        let (response, _stream) = h2.ask(500, "fine.example.").await.unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("an answer in time")
            .expect("an answer at the bound");
        assert_eq!(response.status(), 200);
        // One reset more and it is closed (GOAWAY, then the connection ends).
        up.set(|b| b.delay = Duration::from_millis(2000));
        let before = up.queries();
        let (response, mut stream) = h2.ask(501, "last.example.").await.unwrap();
        eventually_async(Duration::from_secs(5), "the upstream is asked", || {
            (up.queries() > before).then_some(()).ok_or(up.queries())
        })
        .await;
        stream.send_reset(h2::Reason::CANCEL);
        drop(response);
        let ended = tokio::time::timeout(Duration::from_secs(5), &mut h2.conn).await;
        assert!(ended.is_ok(), "the connection is closed past the bound");
    });
    server.shutdown();
}

/// The same from a TCP client that closes its connection while the upstream
/// query is out: the flight is not its to cancel.
#[test]
fn a_closed_tcp_connection_does_not_fail_the_clients_coalesced_on_its_name() {
    for io in ["epoll", uring()] {
        let up = slow_upstream(Duration::from_millis(1000));
        let mut cfg = config(&[up.addr], io, "");
        cfg.server.shards = 1;
        let server = start(cfg);
        let plain = server.local_addrs[0];
        let mut tcp = std::net::TcpStream::connect(plain).unwrap();
        write_frame(
            &mut tcp,
            &query(1, "gone.example.", RecordType::A, None).bytes(),
        )
        .unwrap();
        eventually(Duration::from_secs(5), "the upstream is asked", || {
            (up.queries() >= 1).then_some(()).ok_or(up.queries())
        });
        drop(tcp);
        let m = udp_query(plain, &query(2, "gone.example.", RecordType::A, None));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{io}");
        assert_eq!(a_records(&m), [ADDR], "{io}");
        let m = udp_query(plain, &query(3, "gone.example.", RecordType::A, None));
        assert_eq!(a_records(&m), [ADDR], "{io}");
        assert_eq!(up.queries(), 1, "{io}: one flight, its answer cached");
        server.shutdown();
    }
}
