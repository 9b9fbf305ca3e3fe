//! The encrypted listeners (issue 13): DNS over TLS (RFC 7858) and over HTTPS
//! (RFC 8484), on loopback, against a simulated upstream, with a private CA made
//! by the test (rcgen) and clients on rustls (tokio-rustls) and hyper.
//!
//! What they must show: answers over DoT, pipelined on one connection; DoH GET and
//! POST over HTTP/2 and HTTP/1.1 with `cache-control: max-age` from the answer's
//! TTL; the HTTP errors; the access list and the per-client connection cap on
//! these listeners; the handshake timeout; a certificate reload.

mod common;

use common::tls::*;
use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[test]
fn dot_answers_pipelined_queries_matched_by_id_on_both_backends() {
    for io in ["epoll", uring()] {
        let pki = Pki::new("dot");
        let up = upstream();
        let server = start(config(&[up.addr], io, &pki.sections("")));
        let addr = server.tls_addrs[0];
        assert_ne!(addr.port(), 0);
        runtime().block_on(async {
            let mut s = tls_from(LOCAL, addr, pki.client(&[b"dot"]), HOST)
                .await
                .expect("handshake with the test CA");
            assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"dot"[..]));
            // Two queries before reading anything: both answered on this
            // connection, each under its own ID.
            write_query(&mut s, 0x1111, "one.example.").await;
            write_query(&mut s, 0x2222, "two.example.").await;
            let a = read_answer(&mut s).await.expect("first answer");
            let b = read_answer(&mut s).await.expect("second answer");
            let mut ids = [a.metadata.id, b.metadata.id];
            ids.sort();
            assert_eq!(ids, [0x1111, 0x2222], "{io}");
            for m in [&a, &b] {
                let name = m.queries[0].name().to_ascii();
                let want = if m.metadata.id == 0x1111 {
                    "one"
                } else {
                    "two"
                };
                assert!(name.starts_with(want), "{name} for id {:x}", m.metadata.id);
                assert_eq!(a_records(m), [Ipv4Addr::new(192, 0, 2, 7)]);
            }
            // The connection stays open for more; a repeat is a cache hit.
            write_query(&mut s, 3, "one.example.").await;
            let c = read_answer(&mut s).await.expect("third answer");
            assert_eq!(c.metadata.id, 3);
            assert_eq!(a_records(&c), [Ipv4Addr::new(192, 0, 2, 7)]);
        });
        assert_eq!(up.queries(), 2, "{io}: the repeat came from the cache");
        server.shutdown();
    }
}

#[test]
fn doh_get_and_post_over_http2_and_http1_with_max_age_from_the_ttl() {
    let pki = Pki::new("doh");
    let up = upstream();
    let server = start(config(&[up.addr], uring(), &pki.sections("")));
    let addr = server.https_addrs[0];
    let url = |p: &str| format!("https://{HOST}:{}{p}", addr.port());
    runtime().block_on(async {
        for (h2, tag) in [(true, "h2"), (false, "h1")] {
            let mut http = Http::connect(&pki, addr, h2).await;
            // GET, ID 0 as RFC 8484 recommends.
            let q = query(0, &format!("get-{tag}.example."), RecordType::A, None).bytes();
            let r = http
                .send(get(addr, &format!("/dns-query?dns={}", b64(&q))))
                .await;
            let m = r.dns();
            assert_eq!(m.metadata.id, 0);
            assert_eq!(a_records(&m), [Ipv4Addr::new(192, 0, 2, 7)], "{tag}");
            // The upstream's TTL is 120: a fresh answer may be cached 120 s.
            let age = r.max_age();
            assert!((118..=120).contains(&age), "{tag}: max-age={age}");
            // POST, on the same connection.
            let q = query(0x4242, &format!("post-{tag}.example."), RecordType::A, None).bytes();
            let r = http
                .send(request(
                    Method::POST,
                    &url("/dns-query"),
                    Some("application/dns-message"),
                    q,
                ))
                .await;
            let m = r.dns();
            assert_eq!(m.metadata.id, 0x4242);
            assert_eq!(a_records(&m), [Ipv4Addr::new(192, 0, 2, 7)], "{tag}");
            assert!((118..=120).contains(&r.max_age()), "{tag}");
            // A negative answer: max-age from the SOA (TTL 120, MINIMUM 60).
            let q = query(7, &format!("nx-{tag}.example."), RecordType::A, None).bytes();
            let r = http
                .send(get(addr, &format!("/dns-query?dns={}", b64(&q))))
                .await;
            assert_eq!(r.dns().metadata.response_code, ResponseCode::NXDomain);
            let age = r.max_age();
            assert!((58..=60).contains(&age), "{tag}: negative max-age={age}");
        }
    });
    assert_eq!(up.queries(), 6, "each name asked once");
    server.shutdown();
}

#[test]
fn doh_answers_what_is_not_dns_with_an_http_error() {
    let pki = Pki::new("errors");
    let up = upstream();
    let server = start(config(&[up.addr], "epoll", &pki.sections("")));
    let addr = server.https_addrs[0];
    let url = |p: &str| format!("https://{HOST}:{}{p}", addr.port());
    let q = query(1, "err.example.", RecordType::A, None).bytes();
    runtime().block_on(async {
        for h2 in [true, false] {
            let mut http = Http::connect(&pki, addr, h2).await;
            let dns = format!("?dns={}", b64(&q));
            let cases: Vec<(Request<Full<Bytes>>, StatusCode)> = vec![
                (get(addr, &format!("/other{dns}")), StatusCode::NOT_FOUND),
                (
                    get(addr, &format!("/dns-query/x{dns}")),
                    StatusCode::NOT_FOUND,
                ),
                (
                    request(
                        Method::PUT,
                        &url("/dns-query"),
                        Some("application/dns-message"),
                        q.clone(),
                    ),
                    StatusCode::METHOD_NOT_ALLOWED,
                ),
                (
                    request(
                        Method::DELETE,
                        &url(&format!("/dns-query{dns}")),
                        None,
                        Vec::new(),
                    ),
                    StatusCode::METHOD_NOT_ALLOWED,
                ),
                (
                    request(
                        Method::POST,
                        &url("/dns-query"),
                        Some("text/plain"),
                        q.clone(),
                    ),
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ),
                (
                    request(Method::POST, &url("/dns-query"), None, q.clone()),
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ),
                (get(addr, "/dns-query"), StatusCode::BAD_REQUEST),
                (get(addr, "/dns-query?dns=***"), StatusCode::BAD_REQUEST),
                (
                    get(addr, &format!("/dns-query?dns={}", b64(&q[..5]))),
                    StatusCode::BAD_REQUEST,
                ),
                (
                    request(
                        Method::POST,
                        &url("/dns-query"),
                        Some("application/dns-message"),
                        vec![1, 2, 3],
                    ),
                    StatusCode::BAD_REQUEST,
                ),
                (
                    request(
                        Method::POST,
                        &url("/dns-query"),
                        Some("application/dns-message"),
                        vec![0; 5_000],
                    ),
                    // Longer than any query (issue 18: 4 KiB at most).
                    StatusCode::PAYLOAD_TOO_LARGE,
                ),
                (
                    request(
                        Method::POST,
                        &url("/dns-query"),
                        Some("application/dns-message"),
                        vec![0; 70_000],
                    ),
                    StatusCode::PAYLOAD_TOO_LARGE,
                ),
            ];
            for (i, (req, want)) in cases.into_iter().enumerate() {
                let what = format!("case {i} {} {} (h2 {h2})", req.method(), req.uri());
                let r = http.send(req).await;
                assert_eq!(r.status, want, "{what}");
                if want == StatusCode::METHOD_NOT_ALLOWED {
                    assert_eq!(r.headers["allow"], "GET, POST");
                }
                if matches!(http, Http::H1(_)) && want == StatusCode::PAYLOAD_TOO_LARGE {
                    // HTTP/1.1 cannot go on after an unread body.
                    http = Http::connect(&pki, addr, h2).await;
                }
            }
            // Still serving DNS after all that.
            let r = http.send(get(addr, &format!("/dns-query{dns}"))).await;
            assert_eq!(r.dns().metadata.id, 1);
        }
    });
    assert_eq!(
        up.queries(),
        1,
        "nothing but the good query reached the upstream"
    );
    server.shutdown();
}

#[test]
fn access_control_refuses_and_drops_clients_on_the_encrypted_listeners() {
    let pki = Pki::new("access");
    let up = upstream();
    let refuse = format!(
        "{}[access]\nallow = [\"127.0.0.2/32\"]\naction = \"refuse\"\n",
        pki.sections("")
    );
    let server = start(config(&[up.addr], uring(), &refuse));
    let (dot, doh) = (server.tls_addrs[0], server.https_addrs[0]);
    runtime().block_on(async {
        // 127.0.0.1 is outside allow: even with `refuse` it never holds a
        // connection, closed at accept before any handshake (issue 18).
        for addr in [dot, doh] {
            let r = tls_from(LOCAL, addr, pki.client(&[]), HOST).await;
            assert!(r.is_err(), "denied with refuse: no session on {addr}");
        }
        // 127.0.0.2 is served.
        let mut s = tls_from(Ipv4Addr::new(127, 0, 0, 2), dot, pki.client(&[]), HOST)
            .await
            .unwrap();
        write_query(&mut s, 11, "allowed.example.").await;
        let m = read_answer(&mut s).await.expect("an answer");
        assert_eq!(a_records(&m), [Ipv4Addr::new(192, 0, 2, 7)]);
    });
    assert_eq!(
        up.queries(),
        1,
        "only the allowed client's query went upstream"
    );
    // `drop`: closed at accept, before any handshake.
    let drop_config = config(
        &[up.addr],
        uring(),
        &format!(
            "{}[access]\nallow = [\"127.0.0.2/32\"]\naction = \"drop\"\n",
            pki.sections("")
        ),
    );
    server.reload(drop_config).expect("reload");
    // Until the reload applies on every shard: eight fresh connections in a row
    // (spread over the shards) get no session.
    runtime().block_on(async {
        for addr in [dot, doh] {
            let deadline = Instant::now() + Duration::from_secs(3);
            'poll: loop {
                for _ in 0..8 {
                    let r = tls_from(LOCAL, addr, pki.client(&[]), HOST).await;
                    if r.is_ok() {
                        assert!(
                            Instant::now() < deadline,
                            "denied with drop: no session on {addr}"
                        );
                        continue 'poll;
                    }
                }
                break;
            }
        }
    });
    server.shutdown();
}

#[test]
fn the_per_client_cap_holds_on_the_encrypted_listeners() {
    let pki = Pki::new("cap");
    let up = upstream();
    let extra = format!(
        "{}[limits]\ntcp_connections_per_client = 2\n",
        pki.sections("")
    );
    let server = start(config(&[up.addr], "epoll", &extra));
    let (dot, doh) = (server.tls_addrs[0], server.https_addrs[0]);
    runtime().block_on(async {
        // One DoT and one DoH connection: the address's two.
        let mut a = tls_from(LOCAL, dot, pki.client(&[]), HOST).await.unwrap();
        let _b = Http::connect(&pki, doh, true).await;
        write_query(&mut a, 1, "cap.example.").await;
        assert!(read_answer(&mut a).await.is_some());
        // A third, on either listener: closed at accept.
        for addr in [dot, doh, dot] {
            assert!(
                tls_from(LOCAL, addr, pki.client(&[]), HOST).await.is_err(),
                "past the cap on {addr}"
            );
        }
        // Another address of the same /24 shares the prefix's cap (issue 18)...
        assert!(
            tls_from(Ipv4Addr::new(127, 0, 0, 2), dot, pki.client(&[]), HOST)
                .await
                .is_err(),
            "127.0.0.2 is in 127.0.0.1's /24"
        );
        // ... and another prefix has a cap of its own.
        let mut c = tls_from(Ipv4Addr::new(127, 0, 1, 2), dot, pki.client(&[]), HOST)
            .await
            .unwrap();
        write_query(&mut c, 2, "cap.example.").await;
        assert_eq!(read_answer(&mut c).await.expect("served").metadata.id, 2);
        // A connection that ends gives its slot back.
        drop(a);
        eventually_async(Duration::from_secs(2), "the slot given back", || {
            let open = server.shared.tcp_clients.open(LOCAL.into());
            (open <= 1).then_some(()).ok_or(open)
        })
        .await;
        let mut d = tls_from(LOCAL, dot, pki.client(&[]), HOST).await.unwrap();
        write_query(&mut d, 3, "cap.example.").await;
        assert!(read_answer(&mut d).await.is_some(), "slot freed");
    });
    server.shutdown();
}

#[test]
fn a_handshake_that_does_not_complete_in_time_is_closed() {
    let pki = Pki::new("slow");
    let up = upstream();
    // The last line lands in [https]: each section has its own timeout.
    let extra = format!(
        "{}handshake_timeout = \"300ms\"\n",
        pki.sections("handshake_timeout = \"300ms\"")
    );
    let server = start(config(&[up.addr], uring(), &extra));
    runtime().block_on(async {
        for addr in [server.tls_addrs[0], server.https_addrs[0]] {
            // A client that connects and says nothing.
            let mut tcp = tcp_from(LOCAL, addr).await.unwrap();
            let t0 = Instant::now();
            let mut byte = [0u8; 1];
            let r = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut byte)).await;
            assert!(
                matches!(r, Ok(Ok(0)) | Ok(Err(_))),
                "closed by the server: {r:?}"
            );
            let waited = t0.elapsed();
            assert!(
                waited >= Duration::from_millis(250) && waited < Duration::from_millis(1500),
                "{addr}: closed after {waited:?}"
            );
            // Its slot is free again: the address is not left at its cap.
            eventually_async(Duration::from_secs(1), "the slot is free again", || {
                let open = server.shared.tcp_clients.open(LOCAL.into());
                (open == 0).then_some(()).ok_or(open)
            })
            .await;
        }
        // A real client in time is served, and not closed at the handshake timeout.
        let addr = server.tls_addrs[0];
        let mut s = tls_from(LOCAL, addr, pki.client(&[]), HOST).await.unwrap();
        write_query(&mut s, 5, "slow.example.").await;
        assert!(read_answer(&mut s).await.is_some());
        assert!(!ended_within(&mut s, Duration::from_millis(400)).await);
    });
    server.shutdown();
}

#[test]
fn a_reload_serves_the_new_certificate_and_a_bad_file_keeps_the_old() {
    let pki = Pki::new("reload");
    let up = upstream();
    let extra = pki.sections("");
    let server = start(config(&[up.addr], "epoll", &extra));
    let (dot, doh) = (server.tls_addrs[0], server.https_addrs[0]);
    // A second CA issues the replacement, for the same name.
    let next = Pki::new("reload-next");
    runtime().block_on(async {
        for addr in [dot, doh] {
            assert!(tls_from(LOCAL, addr, pki.client(&[]), HOST).await.is_ok());
            assert!(tls_from(LOCAL, addr, next.client(&[]), HOST).await.is_err());
        }
    });
    // Replace the files in place and reload, as SIGHUP does.
    for f in ["server-cert.pem", "server-key.pem"] {
        std::fs::copy(next.dir.join(f), pki.dir.join(f)).unwrap();
    }
    let warnings = server
        .reload(config(&[up.addr], "epoll", &extra))
        .expect("reload");
    assert!(warnings.is_empty(), "{warnings:?}");
    runtime().block_on(async {
        for addr in [dot, doh] {
            let mut s = tls_from(LOCAL, addr, next.client(&[]), HOST)
                .await
                .expect("the new certificate");
            if addr == dot {
                write_query(&mut s, 8, "reloaded.example.").await;
                assert!(read_answer(&mut s).await.is_some());
            }
            assert!(
                tls_from(LOCAL, addr, pki.client(&[]), HOST).await.is_err(),
                "the old certificate is gone"
            );
        }
    });
    // A bad file: named in the warnings, and the running certificate stays.
    std::fs::write(pki.dir.join("server-cert.pem"), "not a certificate\n").unwrap();
    let warnings = server
        .reload(config(&[up.addr], "epoll", &extra))
        .expect("reload");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings.iter().all(|w| w.contains("tls.cert_file")),
        "{warnings:?}"
    );
    runtime().block_on(async {
        for addr in [dot, doh] {
            assert!(tls_from(LOCAL, addr, next.client(&[]), HOST).await.is_ok());
        }
    });
    // A name the certificate is not for is refused by the client's check.
    runtime().block_on(async {
        assert!(tls_from(LOCAL, dot, next.client(&[]), "other.test")
            .await
            .is_err());
    });
    server.shutdown();
}

#[test]
fn a_full_shard_closes_its_idlest_connection_of_any_transport() {
    let pki = Pki::new("evict");
    let up = upstream();
    let mut c = config(
        &[up.addr],
        uring(),
        &format!("{}[limits]\ntcp_connections = 2\n", pki.sections("")),
    );
    c.server.shards = 1;
    let server = start(c);
    let (dot, doh) = (server.tls_addrs[0], server.https_addrs[0]);
    let plain = server.local_addrs[0];
    runtime().block_on(async {
        let mut idlest = tls_from(LOCAL, dot, pki.client(&[]), HOST).await.unwrap();
        write_query(&mut idlest, 1, "evict.example.").await;
        // Each step starts after the server stamped the previous one's activity
        // (Instant::now(), when the answer is queued): idleness follows the steps.
        assert!(read_answer(&mut idlest).await.is_some());
        let mut http = Http::connect(&pki, doh, true).await;
        let q = query(2, "evict.example.", RecordType::A, None).bytes();
        let r = http
            .send(get(doh, &format!("/dns-query?dns={}", b64(&q))))
            .await;
        assert_eq!(r.dns().metadata.id, 2);
        // A third connection (plain TCP) at the bound of 2: the DoT one, idle the
        // longest, is closed for it.
        let mut tcp = TcpStream::connect(plain).await.unwrap();
        let q = query(3, "evict.example.", RecordType::A, None).bytes();
        let mut frame = (q.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(&q);
        tcp.write_all(&frame).await.unwrap();
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).await.unwrap();
        assert!(
            ended_within(&mut idlest, Duration::from_secs(2)).await,
            "the idlest went"
        );
        // The DoH connection is still served.
        let q = query(4, "evict.example.", RecordType::A, None).bytes();
        let r = http
            .send(get(doh, &format!("/dns-query?dns={}", b64(&q))))
            .await;
        assert_eq!(r.dns().metadata.id, 4);
    });
    server.shutdown();
}

#[test]
fn doh_connections_end_when_idle_and_after_their_query_cap() {
    let pki = Pki::new("doh-limits");
    let up = upstream();
    let extra = format!(
        "{}[limits]\ntcp_idle_timeout = \"300ms\"\ntcp_max_queries = 3\n",
        pki.sections("")
    );
    let server = start(config(&[up.addr], "epoll", &extra));
    let doh = server.https_addrs[0];
    let q = query(0, "limits.example.", RecordType::A, None).bytes();
    let path = format!("/dns-query?dns={}", b64(&q));
    runtime().block_on(async {
        for h2 in [true, false] {
            // Idle past tcp_idle_timeout: closed by the server.
            let mut http = Http::connect(&pki, doh, h2).await;
            assert_eq!(http.send(get(doh, &path)).await.status, StatusCode::OK);
            eventually_async(Duration::from_secs(5), "the idle connection closed", || {
                let closed = match &http {
                    Http::H2(s) => s.is_closed(),
                    Http::H1(s) => s.is_closed(),
                };
                closed.then_some(()).ok_or(h2)
            })
            .await;
            // Three requests answered, then the connection takes no more.
            let mut http = Http::connect(&pki, doh, h2).await;
            for _ in 0..3 {
                assert_eq!(http.send(get(doh, &path)).await.status, StatusCode::OK);
            }
            // The server ends the connection after the third (GOAWAY over HTTP/2).
            eventually_async(Duration::from_secs(5), "the connection ended", || {
                let closed = match &http {
                    Http::H2(s) => s.is_closed(),
                    Http::H1(s) => s.is_closed(),
                };
                closed.then_some(()).ok_or(h2)
            })
            .await;
            let fourth = match &mut http {
                Http::H2(s) => s.send_request(get(doh, &path)).await,
                Http::H1(s) => match s.ready().await {
                    Ok(()) => s.send_request(get(doh, &path)).await,
                    Err(e) => Err(e),
                },
            };
            assert!(fourth.is_err(), "past tcp_max_queries (h2 {h2})");
        }
    });
    server.shutdown();
}

#[test]
fn check_reads_the_certificate_files_and_names_the_key_of_a_bad_one() {
    let pki = Pki::new("check");
    let write = |name: &str, text: &str| {
        let path = pki.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let run = |config: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tierdns"))
            .args(["--check", "--config"])
            .arg(config)
            .output()
            .unwrap()
    };
    let good = write(
        "good.toml",
        &format!(
            "{}[[upstream]]\naddress = \"127.0.0.1:5300\"\n",
            pki.sections("")
        ),
    );
    let out = run(&good);
    assert!(out.status.success(), "{out:?}");
    // [https] with files of its own, the key file missing.
    let bad = write(
        "bad.toml",
        &format!(
            "{}cert_file = \"{}\"\nkey_file = \"{}\"\n[[upstream]]\naddress = \"127.0.0.1:5300\"\n",
            pki.sections(""),
            pki.file("server-cert.pem"),
            pki.file("missing-key.pem")
        ),
    );
    let out = run(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("https.key_file: cannot read"), "{err}");
}

#[test]
fn doh_http2_streams_per_connection_are_bounded_by_tcp_pipeline() {
    let pki = Pki::new("streams");
    let up = upstream();
    up.set(|b| b.delay = Duration::from_millis(300));
    let extra = format!("{}[limits]\ntcp_pipeline = 2\n", pki.sections(""));
    let server = start(config(&[up.addr], "epoll", &extra));
    let doh = server.https_addrs[0];
    runtime().block_on(async {
        let Http::H2(send) = Http::connect(&pki, doh, true).await else {
            unreachable!("asked for HTTP/2")
        };
        // One request first, so the client has the server's SETTINGS and queues
        // streams past the limit itself (streams opened before would be refused
        // with REFUSED_STREAM).
        let q = query(99, "first.example.", RecordType::A, None).bytes();
        let first = send
            .clone()
            .send_request(get(doh, &format!("/dns-query?dns={}", b64(&q))))
            .await
            .expect("a response");
        assert_eq!(first.status(), StatusCode::OK);
        // Six misses at once on one connection, 300 ms each upstream: two streams
        // at a time take three rounds.
        let t0 = Instant::now();
        let requests = (0..6u16).map(|i| {
            let mut send = send.clone();
            let q = query(i, &format!("s{i}.example."), RecordType::A, None).bytes();
            let req = get(doh, &format!("/dns-query?dns={}", b64(&q)));
            async move {
                let resp = send.send_request(req).await.expect("a response");
                assert_eq!(resp.status(), StatusCode::OK);
                Instant::now()
            }
        });
        let mut ends = Vec::new();
        for task in requests.map(tokio::spawn).collect::<Vec<_>>() {
            ends.push(task.await.unwrap() - t0);
        }
        ends.sort();
        assert!(
            ends[1] < Duration::from_millis(600),
            "the first two at once: {ends:?}"
        );
        assert!(
            ends[5] >= Duration::from_millis(850),
            "no more than two streams at once: {ends:?}"
        );
    });
    assert_eq!(up.queries(), 7);
    server.shutdown();
}
