//! The links against in-test TLS servers (a private CA from rcgen): the bounds on
//! connections and pipelined queries, what a hostile DoT or DoH server's replies
//! come to, and the backoff on its own clock.

use super::*;
use crate::config::Limits;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn backoff_doubles_up_to_its_cap_and_resets_on_success() {
    let mut b = Backoff::default();
    let t0 = Instant::now();
    assert_eq!(b.check(t0), Ok(()));
    let mut waits = Vec::new();
    for _ in 0..12 {
        waits.push(b.failed(FailKind::Network, t0));
    }
    assert_eq!(waits[0], BACKOFF_BASE);
    assert_eq!(waits[1], BACKOFF_BASE * 2);
    assert_eq!(waits[2], BACKOFF_BASE * 4);
    assert!(waits.iter().all(|w| *w <= BACKOFF_CAP));
    assert_eq!(*waits.last().unwrap(), BACKOFF_CAP, "capped");
    // Many more failures never overflow nor pass the cap.
    for _ in 0..100 {
        assert!(b.failed(FailKind::TlsCertificate, t0) <= BACKOFF_CAP);
    }
    assert_eq!(
        b.check(t0),
        Err(FailKind::TlsCertificate),
        "the last failure's kind"
    );
    assert_eq!(
        b.check(t0 + BACKOFF_CAP),
        Ok(()),
        "over once the wait has passed"
    );
    b.succeeded();
    assert_eq!(b.check(t0), Ok(()));
    assert_eq!(b.failed(FailKind::Network, t0), BACKOFF_BASE);
}

type Handler = Arc<
    dyn Fn(tokio_rustls::server::TlsStream<TcpStream>) -> Pin<Box<dyn Future<Output = ()>>>
        + Send
        + Sync,
>;

/// A TLS server on 127.0.0.1 (certificate for 127.0.0.1 from a fresh CA, whose
/// PEM file is returned) running `handler` on each connection; counts accepts.
fn tls_server(alpn: &[u8], handler: Handler) -> (SocketAddr, PathBuf, Arc<AtomicUsize>) {
    tls_server_slow(alpn, handler, Duration::ZERO)
}

/// [`tls_server`], waiting `delay` after each TCP accept before the handshake.
fn tls_server_slow(
    alpn: &[u8],
    handler: Handler,
    delay: Duration,
) -> (SocketAddr, PathBuf, Arc<AtomicUsize>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    let ca_file = std::env::temp_dir().join(format!(
        "tierdns-enc-unit-{}-{}.pem",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    if !alpn.is_empty() {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        crate::test_support::local(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (acceptor, handler) = (acceptor.clone(), Arc::clone(&handler));
                tokio::task::spawn_local(async move {
                    tokio::time::sleep(delay).await;
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        handler(tls).await;
                    }
                });
            }
        });
    });
    (addr, ca_file, accepted)
}

fn upstream(address: &str, ca_file: &std::path::Path) -> UpstreamConfig {
    let text = format!(
        "[[upstream]]\naddress = \"{address}\"\nca_file = \"{}\"\n",
        ca_file.display()
    );
    crate::config::Config::parse(&text, "t").unwrap().upstreams[0].clone()
}

/// Runs `f` on a current-thread runtime with a LocalSet, as a shard does.
fn on_shard<F: Future<Output = ()>>(f: impl FnOnce() -> F) {
    crate::test_support::local(f());
}

/// The query `a.` A IN with an empty OPT, ID 0.
fn query() -> (Vec<u8>, Question) {
    let mut q = vec![0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1];
    q.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01");
    q.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
    (q, Question::new(b"\x01a\x00", 1, 1))
}

/// A reply to `query` (its ID and question, QR=1, no records).
fn reply_to(query: &[u8]) -> Vec<u8> {
    let end = 12 + 3 + 4;
    let mut r = query[..end].to_vec();
    r[2] = 0x81;
    r[3] = 0x80;
    r[10] = 0;
    r[11] = 0;
    r
}

async fn read_frame<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<Vec<u8>> {
    let len = s.read_u16().await.ok()?;
    let mut q = vec![0u8; usize::from(len)];
    s.read_exact(&mut q).await.ok()?;
    Some(q)
}

async fn write_frame<S: tokio::io::AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) {
    let mut f = (msg.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(msg);
    let _ = s.write_all(&f).await;
}

#[test]
fn dot_connections_and_queries_in_flight_are_bounded() {
    // A server that reads and never answers.
    let silent: Handler =
        Arc::new(|mut tls| Box::pin(async move { while read_frame(&mut tls).await.is_some() {} }));
    let (addr, ca, accepted) = tls_server(b"dot", silent);
    on_shard(|| async move {
        let limits = Limits {
            max_upstream_pending: 4,
            upstream_timeout: Duration::from_millis(800),
            ..Limits::default()
        };
        let stats = Rc::new(ShardStats::new(1));
        let link = EncryptedLink::open(&upstream(&format!("tls://{addr}"), &ca), &limits, &stats)
            .unwrap()
            .unwrap();
        let link = Rc::new(link);
        let (q, question) = query();
        // Four queries fill two connections of two each.
        let mut waiting = Vec::new();
        for _ in 0..4 {
            let (link, q, question) = (Rc::clone(&link), q.clone(), question.clone());
            waiting.push(tokio::task::spawn_local(async move {
                link.exchange(&q, &question, false).await
            }));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(link.connections(), DOT_CONNECTIONS);
        // The fifth has no room: it fails at once, as tierdns' own overload.
        let t = Instant::now();
        assert_eq!(
            link.exchange(&q, &question, false).await.unwrap_err(),
            FailKind::Overload
        );
        assert!(t.elapsed() < Duration::from_millis(50));
        for w in waiting {
            assert_eq!(w.await.unwrap().unwrap_err(), FailKind::Timeout);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), DOT_CONNECTIONS);
        // Their slots are free again.
        let again =
            tokio::time::timeout(Duration::from_secs(2), link.exchange(&q, &question, false)).await;
        assert_eq!(
            again.unwrap().unwrap_err(),
            FailKind::Timeout,
            "sent, not refused"
        );
    });
}

#[test]
fn a_hostile_dot_server_gets_nothing_it_forges_accepted() {
    // For each query: junk shorter than a header, a reply to an ID nobody asked,
    // a reply with QR=0, then (for the second query) the right answer for another
    // question; the third query gets its real answer.
    let hostile: Handler = Arc::new(|mut tls| {
        Box::pin(async move {
            let mut n = 0;
            while let Some(q) = read_frame(&mut tls).await {
                n += 1;
                write_frame(&mut tls, &[1, 2, 3]).await;
                let mut other = reply_to(&q);
                other[0] ^= 0xff;
                write_frame(&mut tls, &other).await;
                let mut not_response = reply_to(&q);
                not_response[2] &= 0x7f;
                match n {
                    1 => write_frame(&mut tls, &not_response).await,
                    2 => {
                        let mut wrong = reply_to(&q);
                        wrong[13] = b'b';
                        write_frame(&mut tls, &wrong).await;
                    }
                    3 => write_frame(&mut tls, &reply_to(&q)).await,
                    _ => {
                        let mut truncated = reply_to(&q);
                        truncated[2] |= 0x02;
                        write_frame(&mut tls, &truncated).await;
                    }
                }
            }
        })
    });
    let (addr, ca, accepted) = tls_server(b"dot", hostile);
    on_shard(|| async move {
        let stats = Rc::new(ShardStats::new(1));
        let link = EncryptedLink::open(
            &upstream(&format!("tls://{addr}"), &ca),
            &Limits::default(),
            &stats,
        )
        .unwrap()
        .unwrap();
        let (q, question) = query();
        assert_eq!(
            link.exchange(&q, &question, false).await.unwrap_err(),
            FailKind::Malformed,
            "QR=0"
        );
        assert_eq!(
            link.exchange(&q, &question, false).await.unwrap_err(),
            FailKind::Malformed,
            "another question"
        );
        let ex = link.exchange(&q, &question, false).await.unwrap();
        assert_eq!(&ex.reply[12..], &reply_to(&q)[12..]);
        assert!(!ex.over_tcp);
        assert_eq!(
            link.exchange(&q, &question, false).await.unwrap_err(),
            FailKind::Malformed,
            "TC=1 over TLS: never retried in the clear"
        );
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the connection survives junk"
        );
    });
}

/// What a DoH server answers a query with: status, content type, body.
type Respond = fn(&[u8]) -> (u16, &'static str, Vec<u8>);

/// An HTTP/2 server answering every request with `respond(query)`: status,
/// content type, body.
fn doh_server(respond: Respond) -> (SocketAddr, PathBuf, Arc<AtomicUsize>) {
    let handler: Handler = Arc::new(move |tls| {
        Box::pin(async move {
            let Ok(mut conn) = h2::server::handshake(tls).await else {
                return;
            };
            while let Some(Ok((req, mut tx))) = conn.accept().await {
                tokio::task::spawn_local(async move {
                    let mut body = req.into_body();
                    let mut q = Vec::new();
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                        q.extend_from_slice(&chunk);
                    }
                    let (status, media, bytes) = respond(&q);
                    let response = http::Response::builder()
                        .status(status)
                        .header("content-type", media)
                        .body(())
                        .unwrap();
                    if let Ok(mut s) = tx.send_response(response, false) {
                        let _ = s.send_data(bytes.into(), true);
                    }
                });
            }
        })
    });
    tls_server(b"h2", handler)
}

#[test]
fn doh_replies_must_be_200_dns_messages_of_bounded_size_with_id_0() {
    let cases: [(Respond, Result<(), FailKind>); 6] = [
        (|q| (200, "application/dns-message", reply_to(q)), Ok(())),
        (
            |q| (500, "application/dns-message", reply_to(q)),
            Err(FailKind::Network),
        ),
        (
            |q| (200, "text/html", reply_to(q)),
            Err(FailKind::Malformed),
        ),
        (
            |q| {
                let mut r = reply_to(q);
                r[1] = 7;
                (200, "application/dns-message", r)
            },
            Err(FailKind::Malformed),
        ),
        (
            |q| {
                let mut r = reply_to(q);
                r.resize(70_000, 0);
                (200, "application/dns-message", r)
            },
            Err(FailKind::Malformed),
        ),
        (
            |_| (200, "application/dns-message", vec![0; 5]),
            Err(FailKind::Malformed),
        ),
    ];
    for (i, (respond, want)) in cases.into_iter().enumerate() {
        let (addr, ca, accepted) = doh_server(respond);
        on_shard(|| async move {
            let stats = Rc::new(ShardStats::new(1));
            let link = EncryptedLink::open(
                &upstream(&format!("https://{addr}"), &ca),
                &Limits::default(),
                &stats,
            )
            .unwrap()
            .unwrap();
            let (q, question) = query();
            for _ in 0..2 {
                let got = link.exchange(&q, &question, false).await.map(|ex| {
                    assert_eq!(&ex.reply[..2], &[0, 0], "ID 0");
                });
                assert_eq!(got, want, "case {i}");
            }
            assert_eq!(link.connections(), 1);
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                1,
                "case {i}: one connection, reused"
            );
        });
    }
}

#[test]
fn doh_needs_the_server_to_speak_http2() {
    // A TLS server that selects no ALPN: the DoH link refuses it.
    let handler: Handler = Arc::new(|_tls| Box::pin(async {}));
    let (addr, ca, _) = tls_server(b"", handler);
    on_shard(|| async move {
        let stats = Rc::new(ShardStats::new(1));
        let link = EncryptedLink::open(
            &upstream(&format!("https://{addr}"), &ca),
            &Limits::default(),
            &stats,
        )
        .unwrap()
        .unwrap();
        let (q, question) = query();
        assert_eq!(
            link.exchange(&q, &question, false).await.unwrap_err(),
            FailKind::Network
        );
    });
}

#[test]
fn doh_streams_in_flight_are_bounded() {
    // An HTTP/2 server that takes every request and never answers.
    let handler: Handler = Arc::new(|tls| {
        Box::pin(async move {
            let Ok(mut conn) = h2::server::handshake(tls).await else {
                return;
            };
            let mut held = Vec::new();
            while let Some(Ok((_request, respond))) = conn.accept().await {
                held.push(respond);
            }
        })
    });
    let (addr, ca, accepted) = tls_server(b"h2", handler);
    on_shard(|| async move {
        let limits = Limits {
            max_upstream_pending: 3,
            upstream_timeout: Duration::from_millis(800),
            ..Limits::default()
        };
        let stats = Rc::new(ShardStats::new(1));
        let link = EncryptedLink::open(&upstream(&format!("https://{addr}"), &ca), &limits, &stats)
            .unwrap()
            .unwrap();
        let link = Rc::new(link);
        let (q, question) = query();
        let mut waiting = Vec::new();
        for _ in 0..3 {
            let (link, q, question) = (Rc::clone(&link), q.clone(), question.clone());
            waiting.push(tokio::task::spawn_local(async move {
                link.exchange(&q, &question, false).await
            }));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(link.connections(), 1);
        let t = Instant::now();
        assert_eq!(
            link.exchange(&q, &question, false).await.unwrap_err(),
            FailKind::Overload
        );
        assert!(t.elapsed() < Duration::from_millis(50));
        for w in waiting {
            assert_eq!(w.await.unwrap().unwrap_err(), FailKind::Timeout);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(
            link.exchange(&q, &question, false).await.unwrap_err(),
            FailKind::Timeout,
            "room again: sent, not refused"
        );
    });
}

#[test]
fn failed_connections_back_off_and_are_logged_once_a_minute() {
    // A server whose every handshake fails: it closes at once.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for c in listener.incoming() {
            count.fetch_add(1, Ordering::SeqCst);
            drop(c);
        }
    });
    // Any readable roots will do: the handshake never gets to the certificate.
    let (_, ca, _) = tls_server(b"dot", Arc::new(|_tls| Box::pin(async {})));
    on_shard(|| async move {
        let stats = Rc::new(ShardStats::new(1));
        let link = EncryptedLink::open(
            &upstream(&format!("tls://{addr}"), &ca),
            &Limits::default(),
            &stats,
        )
        .unwrap()
        .unwrap();
        let (q, question) = query();
        assert_eq!(
            link.exchange(&q, &question, false).await.unwrap_err(),
            FailKind::Network
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert!(
            link.shared.logged.get().is_some(),
            "the first failure is logged"
        );
        // Within the backoff: failed at once, no new attempt.
        for _ in 0..20 {
            assert_eq!(
                link.exchange(&q, &question, false).await.unwrap_err(),
                FailKind::Network
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // After it: one more attempt, failed, not logged again (a minute has not passed).
        tokio::time::sleep(BACKOFF_BASE + Duration::from_millis(50)).await;
        assert_eq!(
            link.exchange(&q, &question, false).await.unwrap_err(),
            FailKind::Network
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(link.shared.unlogged.get(), 1);
        // The next wait is twice as long.
        tokio::time::sleep(BACKOFF_BASE + Duration::from_millis(50)).await;
        assert!(link.exchange(&q, &question, false).await.is_err());
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "still in the doubled backoff"
        );
        tokio::time::sleep(BACKOFF_BASE).await;
        assert!(link.exchange(&q, &question, false).await.is_err());
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    });
}

#[test]
fn background_queries_leave_a_quarter_of_a_connection_to_clients() {
    // A DoT server that reads and never answers.
    let silent: Handler =
        Arc::new(|mut tls| Box::pin(async move { while read_frame(&mut tls).await.is_some() {} }));
    let (addr, ca, _) = tls_server(b"dot", silent);
    on_shard(|| async move {
        // Two connections of four: background work may fill three of each.
        let limits = Limits {
            max_upstream_pending: 8,
            upstream_timeout: Duration::from_millis(600),
            ..Limits::default()
        };
        let stats = Rc::new(ShardStats::new(1));
        let link = EncryptedLink::open(&upstream(&format!("tls://{addr}"), &ca), &limits, &stats)
            .unwrap()
            .unwrap();
        let link = Rc::new(link);
        let (q, question) = query();
        let spawn = |background: bool| {
            let (link, q, question) = (Rc::clone(&link), q.clone(), question.clone());
            tokio::task::spawn_local(async move { link.exchange(&q, &question, background).await })
        };
        let mut waiting = Vec::new();
        for _ in 0..6 {
            waiting.push(spawn(true));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            link.exchange(&q, &question, true).await.unwrap_err(),
            FailKind::Overload,
            "background work stops at three quarters"
        );
        // A client's queries take the last places, one per connection.
        for _ in 0..2 {
            waiting.push(spawn(false));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            link.exchange(&q, &question, false).await.unwrap_err(),
            FailKind::Overload,
            "then every place is taken"
        );
        for w in waiting {
            assert_eq!(w.await.unwrap().unwrap_err(), FailKind::Timeout, "all sent");
        }
    });
}

#[test]
fn a_query_that_stops_waiting_does_not_cancel_the_handshake() {
    // A server slow to start TLS (300 ms), answering every query.
    let answering: Handler = Arc::new(|mut tls| {
        Box::pin(async move {
            while let Some(q) = read_frame(&mut tls).await {
                write_frame(&mut tls, &reply_to(&q)).await;
            }
        })
    });
    let (addr, ca, accepted) = tls_server_slow(b"dot", answering, Duration::from_millis(300));
    on_shard(|| async move {
        let stats = Rc::new(ShardStats::new(1));
        let link = EncryptedLink::open(
            &upstream(&format!("tls://{addr}"), &ca),
            &Limits::default(),
            &stats,
        )
        .unwrap()
        .unwrap();
        let (q, question) = query();
        // The first query gives up during the handshake (its flight got its answer
        // elsewhere): the handshake goes on.
        let gave_up = tokio::time::timeout(
            Duration::from_millis(100),
            link.exchange(&q, &question, false),
        )
        .await;
        assert!(gave_up.is_err());
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The next finds the connection open: no new handshake, a quick answer.
        let t = Instant::now();
        link.exchange(&q, &question, false).await.unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    });
}
