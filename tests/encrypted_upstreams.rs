//! Encrypted upstreams end to end: tierdns on loopback asking in-test DoT (RFC 7858)
//! and DoH (RFC 8484) servers that use a private CA made here (rcgen): answers over
//! both, pipelining answered out of order on one connection, connection reuse,
//! padding, a certificate for another name (SERVFAIL, counted, nothing sent in the
//! clear), reconnecting after the server closes, the reopen backoff, config errors.

mod common;

use common::*;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsCode;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tierdns::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A private CA and a server certificate for `dns.test` and 127.0.0.1, in a
/// directory of their own.
struct Pki {
    dir: PathBuf,
    ca_file: PathBuf,
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tierdns-enc-up-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "tierdns test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let server =
        CertificateParams::new(vec!["dns.test".to_string(), "127.0.0.1".to_string()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = server.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    Pki {
        dir,
        ca_file,
        cert: cert.der().clone(),
        key: key.serialize_der(),
    }
}

/// How a fake server answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Each query at once.
    Answer,
    /// Waits for two queries on a connection and answers the second first.
    TwoReversed,
    /// Answers the first query of each connection; at the second, closes it
    /// without answering.
    CloseAtSecond,
}

/// A DoT or DoH server on 127.0.0.1 with the test PKI, on a thread of its own.
struct FakeServer {
    addr: SocketAddr,
    /// TCP connections accepted.
    accepted: Arc<AtomicUsize>,
    /// TLS handshakes completed.
    handshakes: Arc<AtomicUsize>,
    /// Connections whose serving ended (closed by either side).
    ended: Arc<AtomicUsize>,
    /// DNS queries read (after TLS), raw.
    queries: Arc<Mutex<Vec<Vec<u8>>>>,
    /// DoH: (method, path, content-type) of each request.
    requests: Arc<Mutex<Vec<(String, String, String)>>>,
}

fn server_config(pki: &Pki, alpn: &[u8]) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key.clone())),
        )
        .unwrap();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// The answer to `query`: its ID and question, A 192.0.2.N with N the query's
/// arrival order on its connection plus one, and an OPT if it had one.
fn answer(query: &[u8], n: u8) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.recursion_available = true;
    m.metadata.response_code = ResponseCode::NoError;
    let question = q.queries.first()?.clone();
    if question.query_type() == RecordType::A {
        m.add_answer(Record::from_rdata(
            question.name().clone(),
            300,
            RData::A(A(Ipv4Addr::new(192, 0, 2, n))),
        ));
    }
    m.add_query(question);
    if q.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().ok()
}

impl FakeServer {
    fn dot(pki: &Pki, mode: Mode) -> Self {
        Self::start(server_config(pki, b"dot"), mode, false)
    }

    fn doh(pki: &Pki) -> Self {
        Self::start(server_config(pki, b"h2"), Mode::Answer, true)
    }

    fn start(config: Arc<rustls::ServerConfig>, mode: Mode, doh: bool) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let server = Self {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            handshakes: Arc::default(),
            ended: Arc::default(),
            queries: Arc::default(),
            requests: Arc::default(),
        };
        let (accepted, handshakes, queries, requests) = (
            Arc::clone(&server.accepted),
            Arc::clone(&server.handshakes),
            Arc::clone(&server.queries),
            Arc::clone(&server.requests),
        );
        let ended = Arc::clone(&server.ended);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                while let Ok((tcp, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let acceptor = acceptor.clone();
                    let (handshakes, queries, requests, ended) = (
                        Arc::clone(&handshakes),
                        Arc::clone(&queries),
                        Arc::clone(&requests),
                        Arc::clone(&ended),
                    );
                    tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            handshakes.fetch_add(1, Ordering::SeqCst);
                            if doh {
                                serve_doh(tls, queries, requests).await;
                            } else {
                                serve_dot(tls, mode, queries).await;
                            }
                        }
                        ended.fetch_add(1, Ordering::SeqCst);
                    });
                }
            });
        });
        server
    }

    fn queries(&self) -> Vec<Vec<u8>> {
        self.queries.lock().unwrap().clone()
    }
}

async fn serve_dot<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut tls: S,
    mode: Mode,
    queries: Arc<Mutex<Vec<Vec<u8>>>>,
) {
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut n = 0u8;
    loop {
        let Ok(len) = tls.read_u16().await else {
            return;
        };
        let mut q = vec![0u8; usize::from(len)];
        if tls.read_exact(&mut q).await.is_err() {
            return;
        }
        queries.lock().unwrap().push(q.clone());
        n += 1;
        if mode == Mode::CloseAtSecond && n == 2 {
            let _ = tls.shutdown().await;
            return;
        }
        let Some(a) = answer(&q, n) else { return };
        let mut frame = (a.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(&a);
        held.push(frame);
        if mode == Mode::TwoReversed && held.len() < 2 {
            continue;
        }
        for frame in held.drain(..).rev() {
            if tls.write_all(&frame).await.is_err() {
                return;
            }
        }
    }
}

async fn serve_doh<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>(
    tls: S,
    queries: Arc<Mutex<Vec<Vec<u8>>>>,
    requests: Arc<Mutex<Vec<(String, String, String)>>>,
) {
    let Ok(mut conn) = h2::server::handshake(tls).await else {
        return;
    };
    let mut n = 0u8;
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        n = n.wrapping_add(1);
        let (queries, requests) = (Arc::clone(&queries), Arc::clone(&requests));
        tokio::spawn(async move {
            let content_type = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            requests.lock().unwrap().push((
                req.method().to_string(),
                req.uri().path().to_string(),
                content_type,
            ));
            let mut body = req.into_body();
            let mut q = Vec::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                q.extend_from_slice(&chunk);
            }
            queries.lock().unwrap().push(q.clone());
            let Some(a) = answer(&q, n) else { return };
            let response = http::Response::builder()
                .status(200)
                .header("content-type", "application/dns-message")
                .header("content-length", a.len())
                .body(())
                .unwrap();
            if let Ok(mut stream) = respond.send_response(response, false) {
                let _ = stream.send_data(bytes::Bytes::from(a), true);
            }
        });
    }
}

/// The metrics registry of this test process.
fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("a recorder for this test process")
    })
}

fn counter(name: &str, labels: &[&str]) -> u64 {
    metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// One shard (so every query shares the shard's connections), loopback, these
/// upstream blocks.
fn config_with(upstreams: &str, io: &str, extra: &str) -> Config {
    let text = format!(
        "{extra}\n[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 1\nio = \"{io}\"\npin_cpus = false\nshutdown_grace = \"1s\"\n[metrics]\nenabled = false\n{upstreams}"
    );
    Config::parse(&text, "test config").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn dot_upstream(name: &str, server: &FakeServer, pki: &Pki, tls_name: &str) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\naddress = \"tls://{}\"\ntls_name = \"{tls_name}\"\nca_file = \"{}\"\n",
        server.addr,
        pki.ca_file.display()
    )
}

fn backends() -> Vec<&'static str> {
    if uring() == "uring" {
        vec!["epoll", "uring"]
    } else {
        vec!["epoll"]
    }
}

#[test]
fn answers_over_dot_and_doh_with_padded_queries_and_reused_connections() {
    let pki = pki();
    for io in backends() {
        let dot = FakeServer::dot(&pki, Mode::Answer);
        let doh = FakeServer::doh(&pki);
        for (server, upstream) in [
            (&dot, dot_upstream("dot", &dot, &pki, "dns.test")),
            (
                &doh,
                // No tls_name: the certificate must carry the IP.
                format!(
                    "[[upstream]]\nname = \"doh\"\naddress = \"https://{}/q\"\nca_file = \"{}\"\n",
                    doh.addr,
                    pki.ca_file.display()
                ),
            ),
        ] {
            let tierdns = start(config_with(&upstream, io, ""));
            let addr = tierdns.local_addrs[0];
            for (i, name) in ["a.example.", "bb.example.", "ccc.example."]
                .iter()
                .enumerate()
            {
                let r = udp_query(addr, &query(100 + i as u16, name, RecordType::A, None));
                assert_eq!(
                    r.metadata.response_code,
                    ResponseCode::NoError,
                    "{io} {upstream}"
                );
                assert_eq!(r.metadata.id, 100 + i as u16);
                assert_eq!(a_records(&r).len(), 1, "{io} {upstream}: {r:?}");
            }
            // TCP clients too.
            let r = tcp_query(addr, &query(7, "tcp.example.", RecordType::A, None));
            assert_eq!(a_records(&r).len(), 1);
            assert_eq!(
                server.accepted.load(Ordering::SeqCst),
                1,
                "{io} {upstream}: one connection reused"
            );
            let queries = server.queries();
            assert_eq!(queries.len(), 4);
            for q in &queries {
                assert_eq!(
                    q.len() % 128,
                    0,
                    "padded to 128-byte blocks: {} bytes",
                    q.len()
                );
                let m = Message::from_vec(q).unwrap();
                let edns = m.edns.as_ref().expect("an OPT record");
                assert!(
                    edns.options()
                        .as_ref()
                        .iter()
                        .any(|(c, _)| *c == EdnsCode::Padding),
                    "a padding option"
                );
                if server.addr == doh.addr {
                    assert_eq!(m.metadata.id, 0, "DoH queries carry ID 0 (RFC 8484 4.1)");
                }
            }
            if server.addr == doh.addr {
                for (method, path, content_type) in doh.requests.lock().unwrap().iter() {
                    assert_eq!((method.as_str(), path.as_str()), ("POST", "/q"));
                    assert_eq!(content_type, "application/dns-message");
                }
            } else {
                let ids: std::collections::HashSet<u16> = queries
                    .iter()
                    .map(|q| u16::from_be_bytes([q[0], q[1]]))
                    .collect();
                assert_eq!(ids.len(), queries.len(), "DoT IDs differ on one connection");
            }
            tierdns.shutdown();
        }
    }
}

#[test]
fn pipelined_dot_queries_are_answered_out_of_order_on_one_connection() {
    let pki = pki();
    let dot = FakeServer::dot(&pki, Mode::TwoReversed);
    let tierdns = start(config_with(
        &dot_upstream("pipe", &dot, &pki, "dns.test"),
        "epoll",
        "",
    ));
    let addr = tierdns.local_addrs[0];
    // Two clients at once: the server holds the first query until the second
    // arrives, then answers the second first.
    let first = std::thread::spawn(move || {
        udp_query(addr, &query(1, "first.example.", RecordType::A, None))
    });
    eventually(
        Duration::from_secs(5),
        "the first query held upstream",
        || {
            let read = dot.queries.lock().unwrap().len();
            (read == 1).then_some(()).ok_or(read)
        },
    );
    let second = udp_query(addr, &query(2, "second.example.", RecordType::A, None));
    let first = first.join().unwrap();
    assert_eq!(first.queries[0].name().to_ascii(), "first.example.");
    assert_eq!(second.queries[0].name().to_ascii(), "second.example.");
    // The server numbers answers by arrival: each reply went to its own query.
    assert_eq!(a_records(&first), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    assert_eq!(a_records(&second), vec![Ipv4Addr::new(192, 0, 2, 2)]);
    assert_eq!(
        dot.accepted.load(Ordering::SeqCst),
        1,
        "both on one connection"
    );
    assert_eq!(dot.queries().len(), 2);
    tierdns.shutdown();
}

/// Accepts TCP, records what the client sends, and relays both ways to `to`.
fn recording_relay(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let Ok(mut server) = std::net::TcpStream::connect(to) else {
                return;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
            let record = Arc::clone(&record);
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut buf = [0u8; 4096];
                while let Ok(n) = client.read(&mut buf) {
                    if n == 0 || server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = server.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (addr, seen)
}

#[test]
fn a_certificate_for_another_name_is_refused_counted_and_nothing_goes_in_the_clear() {
    let pki = pki();
    let dot = FakeServer::dot(&pki, Mode::Answer);
    let doh = FakeServer::doh(&pki);
    let (dot_relay, dot_seen) = recording_relay(dot.addr);
    let (doh_relay, doh_seen) = recording_relay(doh.addr);
    let upstreams = format!(
        "[[upstream]]\nname = \"wrong-dot\"\naddress = \"tls://{dot_relay}\"\ntls_name = \"other.test\"\nca_file = \"{ca}\"\n\
         [[upstream]]\nname = \"wrong-doh\"\naddress = \"https://{doh_relay}\"\ntls_name = \"other.test\"\nca_file = \"{ca}\"\n",
        ca = pki.ca_file.display()
    );
    let before = counter(
        "tierdns_upstream_tls_failures_total",
        &["wrong-dot", "name_mismatch"],
    );
    let tierdns = start(config_with(
        &upstreams,
        "epoll",
        "strategy = \"parallel\"\n",
    ));
    let addr = tierdns.local_addrs[0];
    let r = udp_query(
        addr,
        &query(9, "secretname.example.", RecordType::A, Some(1232)),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(a_records(&r).is_empty());
    // A second query within the backoff: SERVFAIL again, no new handshake.
    let r = udp_query(
        addr,
        &query(10, "secretname2.example.", RecordType::A, None),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    for (label, server) in [("wrong-dot", &dot), ("wrong-doh", &doh)] {
        let after = counter(
            "tierdns_upstream_tls_failures_total",
            &[&format!("upstream=\"{label}\""), "reason=\"name_mismatch\""],
        );
        assert!(after >= 1, "{label}: the failure is counted");
        assert_eq!(
            server.handshakes.load(Ordering::SeqCst),
            0,
            "{label}: no handshake completed"
        );
        assert!(
            server.queries().is_empty(),
            "{label}: no DNS query reached the server"
        );
        assert_eq!(
            server.accepted.load(Ordering::SeqCst),
            1,
            "{label}: one attempt in the backoff"
        );
    }
    assert!(
        counter(
            "tierdns_upstream_tls_failures_total",
            &["wrong-dot", "name_mismatch"]
        ) > before
    );
    for (label, seen) in [("dot", dot_seen), ("doh", doh_seen)] {
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty(), "{label}: the client spoke");
        assert_eq!(
            seen[0], 0x16,
            "{label}: what it sent starts with a TLS handshake record"
        );
        // Every byte is inside a TLS record (handshake, alert, change cipher spec or
        // encrypted data): nothing else was written on the connection.
        let mut at = 0;
        while at < seen.len() {
            let header = &seen[at..(at + 5).min(seen.len())];
            assert!(
                header.len() == 5 && (0x14..=0x17).contains(&header[0]) && header[1] == 3,
                "{label}: not a TLS record at byte {at}: {header:02x?}"
            );
            at += 5 + usize::from(u16::from_be_bytes([header[3], header[4]]));
        }
        assert_eq!(at, seen.len(), "{label}: whole records only");
        assert!(
            !seen.windows(10).any(|w| w == b"secretname"),
            "{label}: the name never left in the clear"
        );
    }
    tierdns.shutdown();
}

#[test]
fn a_lost_connection_is_reopened_and_a_query_on_it_retried() {
    let pki = pki();
    let dot = FakeServer::dot(&pki, Mode::CloseAtSecond);
    let tierdns = start(config_with(
        &dot_upstream("lossy", &dot, &pki, "dns.test"),
        "epoll",
        "",
    ));
    let addr = tierdns.local_addrs[0];
    let r = udp_query(addr, &query(1, "one.example.", RecordType::A, None));
    assert_eq!(a_records(&r).len(), 1);
    // The second query goes on the reused connection; the server closes it
    // without answering; tierdns sends it again on a new connection.
    let r = udp_query(addr, &query(2, "two.example.", RecordType::A, None));
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&r).len(), 1);
    assert_eq!(dot.accepted.load(Ordering::SeqCst), 2);
    // Again: the connection is reused, lost, and reopened once more.
    let r = udp_query(addr, &query(3, "three.example.", RecordType::A, None));
    assert_eq!(a_records(&r).len(), 1);
    assert_eq!(dot.accepted.load(Ordering::SeqCst), 3);
    tierdns.shutdown();
}

#[test]
fn an_idle_connection_is_closed_then_reopened() {
    let pki = pki();
    let dot = FakeServer::dot(&pki, Mode::Answer);
    let upstream = format!(
        "{}idle_timeout = \"300ms\"\n",
        dot_upstream("idle", &dot, &pki, "dns.test")
    );
    let tierdns = start(config_with(&upstream, "epoll", ""));
    let addr = tierdns.local_addrs[0];
    udp_query(addr, &query(1, "one.example.", RecordType::A, None));
    udp_query(addr, &query(2, "two.example.", RecordType::A, None));
    assert_eq!(dot.accepted.load(Ordering::SeqCst), 1);
    eventually(
        Duration::from_secs(5),
        "the idle connection is closed",
        || {
            let ended = dot.ended.load(Ordering::SeqCst);
            (ended == 1).then_some(()).ok_or(ended)
        },
    );
    let r = udp_query(addr, &query(3, "three.example.", RecordType::A, None));
    assert_eq!(a_records(&r).len(), 1);
    assert_eq!(
        dot.accepted.load(Ordering::SeqCst),
        2,
        "closed when idle, reopened"
    );
    tierdns.shutdown();
}

#[test]
fn reopening_a_failing_upstream_backs_off() {
    // A server that accepts and closes at once: every handshake fails.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for c in listener.incoming() {
            count.fetch_add(1, Ordering::SeqCst);
            drop(c);
        }
    });
    let pki = pki();
    let upstream = format!(
        "[[upstream]]\nname = \"closing\"\naddress = \"tls://{server}\"\nca_file = \"{}\"\n",
        pki.ca_file.display()
    );
    let tierdns = start(config_with(&upstream, "epoll", ""));
    let addr = tierdns.local_addrs[0];
    let start = Instant::now();
    let mut answered = 0;
    for i in 0..40u16 {
        let r = udp_query(
            addr,
            &query(i, &format!("n{i}.example."), RecordType::A, None),
        );
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
        answered += 1;
        std::thread::sleep(Duration::from_millis(25));
    }
    let elapsed = start.elapsed();
    let attempts = accepted.load(Ordering::SeqCst);
    // 250 ms, 500 ms, 1 s, 2 s...: within ~1.5 s at most 4 attempts (plus one for
    // a slow machine), whatever the number of queries.
    assert_eq!(answered, 40);
    assert!(attempts >= 1, "it tried");
    let bound = 1 + (elapsed.as_secs_f64() / 0.25).log2().ceil().max(0.0) as usize + 1;
    assert!(
        attempts <= bound,
        "{attempts} connection attempts in {elapsed:?} for 40 queries (bound {bound})"
    );
    assert!(
        counter(
            "tierdns_upstream_tls_failures_total",
            &["closing", "handshake"]
        ) >= 1
    );
    tierdns.shutdown();
}

#[test]
fn encrypted_upstream_config_errors_name_the_key() {
    let err = |upstream: &str| {
        Config::parse(&format!("[[upstream]]\n{upstream}"), "t.toml")
            .unwrap_err()
            .to_string()
    };
    let e = err("address = \"tls://dns.example:853\"\n");
    assert!(
        e.contains("address") && e.contains("not an IP address") && e.contains("tls_name"),
        "{e}"
    );
    let e = err("address = \"https://dns.example/dns-query\"\n");
    assert!(
        e.contains("address") && e.contains("tls_name = \"dns.example\""),
        "{e}"
    );
    let e = err("address = \"quic://127.0.0.1:853\"\n");
    assert!(e.contains("address") && e.contains("quic"), "{e}");
    let e = err("address = \"tls://127.0.0.1:99999\"\n");
    assert!(e.contains("address"), "{e}");
    // The files are read by the start's preflight (and `--check`), not by the parse.
    let preflight_err = |upstream: &str| {
        let config = Config::parse(&format!("[[upstream]]\n{upstream}"), "t.toml").unwrap();
        match tierdns::shard::Preflight::run(config) {
            Ok(_) => panic!("preflight passed: {upstream}"),
            Err(e) => e.to_string(),
        }
    };
    let e = preflight_err("address = \"tls://127.0.0.1\"\nca_file = \"/nonexistent/ca.pem\"\n");
    assert!(
        e.contains("upstream[0].ca_file") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );
    let e = err("address = \"127.0.0.1:53\"\ntls_name = \"dns.test\"\n");
    assert!(e.contains("upstream[0].tls_name"), "{e}");
    let e = err("address = \"tls://127.0.0.1\"\ntls_name = \"not a name\"\n");
    assert!(e.contains("upstream[0].tls_name"), "{e}");
    // A file that is no PEM bundle.
    let pki = pki();
    let junk = pki.dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let e = preflight_err(&format!(
        "address = \"tls://127.0.0.1\"\nca_file = \"{}\"\n",
        junk.display()
    ));
    assert!(
        e.contains("upstream[0].ca_file") && e.contains("no PEM certificate"),
        "{e}"
    );
    // Defaults: port 853 and 443, path /dns-query; printed back as written.
    let c = Config::parse(
        &format!(
            "[[upstream]]\naddress = \"tls://127.0.0.1\"\nca_file = \"{ca}\"\n\
             [[upstream]]\naddress = \"https://[::1]\"\nca_file = \"{ca}\"\n",
            ca = pki.ca_file.display()
        ),
        "t",
    )
    .unwrap();
    assert_eq!(c.upstreams[0].address, "127.0.0.1:853".parse().unwrap());
    assert_eq!(c.upstreams[1].address, "[::1]:443".parse().unwrap());
    assert_eq!(c.upstreams[0].label(), "tls://127.0.0.1:853");
    assert_eq!(c.upstreams[1].label(), "https://[::1]:443/dns-query");
    let back = Config::parse(&c.to_toml(), "printed").unwrap();
    assert_eq!(back.to_toml(), c.to_toml());
}

#[test]
fn a_reload_that_changes_tls_name_rebuilds_the_link() {
    let pki = pki();
    let dot = FakeServer::dot(&pki, Mode::Answer);
    let tierdns = start(config_with(
        &dot_upstream("renamed", &dot, &pki, "other.test"),
        "epoll",
        "",
    ));
    let addr = tierdns.local_addrs[0];
    let r = udp_query(addr, &query(1, "before.example.", RecordType::A, None));
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(dot.handshakes.load(Ordering::SeqCst), 0);
    // Same address, the right name: a new link (no backoff carried over), answers.
    let warnings = tierdns
        .reload(config_with(
            &dot_upstream("renamed", &dot, &pki, "dns.test"),
            "epoll",
            "",
        ))
        .expect("reload");
    assert!(warnings.is_empty(), "{warnings:?}");
    let answered = eventually(Duration::from_secs(3), "answered after the reload", || {
        let r = udp_query(addr, &query(2, "after.example.", RecordType::A, None));
        match r.metadata.response_code {
            ResponseCode::NoError => Ok(r),
            other => Err(other),
        }
    });
    assert_eq!(a_records(&answered).len(), 1, "{answered:?}");
    assert_eq!(dot.handshakes.load(Ordering::SeqCst), 1);
    tierdns.shutdown();
}

#[test]
fn the_readme_example_of_encrypted_upstreams_is_valid() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .find("### Encrypted upstreams")
        .expect("the README's section");
    let start = section + readme[section..].find("```toml\n").unwrap() + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    // This test's CA for both (the machine's own roots are not the test's business).
    let pki = pki();
    let ca = format!("ca_file = \"{}\"", pki.ca_file.display());
    let example = readme[start..end]
        .replace("ca_file = \"/etc/tierdns/ca.pem\"", &ca)
        .replace(
            "tls_name = \"doh.example.net\"",
            &format!("tls_name = \"doh.example.net\"\n{ca}"),
        );
    let c = Config::parse(&example, "README.md").unwrap_or_else(|e| panic!("{e}\n{example}"));
    assert_eq!(c.upstreams.len(), 2);
    assert_eq!(c.upstreams[0].address_text(), "tls://192.0.2.55:853");
    assert_eq!(
        c.upstreams[1].address_text(),
        "https://192.0.2.56:443/dns-query"
    );
}

/// The binary on a config file; its stderr lines; killed when dropped.
struct Binary {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Binary {
    fn spawn(config: &std::path::Path) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tierdns"))
            .arg("--config")
            .arg(config)
            .env("TIERDNS_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
        }
        panic!(
            "no log line with {needle:?}; saw:\n{}",
            self.seen.join("\n")
        );
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sighup_refuses_a_file_whose_ca_file_cannot_be_read_and_keeps_serving() {
    let pki = pki();
    let dot = FakeServer::dot(&pki, Mode::Answer);
    let file = pki.dir.join("tierdns.toml");
    let write = |ca_file: &std::path::Path| {
        std::fs::write(
            &file,
            format!(
                "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 1\nio = \"epoll\"\npin_cpus = false\n\
                 [metrics]\nenabled = false\n\
                 [[upstream]]\nname = \"dot\"\naddress = \"tls://{}\"\ntls_name = \"dns.test\"\nca_file = \"{}\"\n",
                dot.addr,
                ca_file.display()
            ),
        )
        .unwrap();
    };
    write(&pki.ca_file);
    let mut run = Binary::spawn(&file);
    let started = run.wait_for("running");
    assert!(
        started.contains(&format!("dot=tls://{}", dot.addr)),
        "{started}"
    );
    let at = started.find("listen=[").unwrap() + "listen=[".len();
    let listen: SocketAddr = started[at..at + started[at..].find(']').unwrap()]
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let r = udp_query(listen, &query(1, "one.example.", RecordType::A, None));
    assert_eq!(a_records(&r).len(), 1);
    // The file now names a CA file that is not there: refused, with the key.
    write(&pki.dir.join("gone.pem"));
    run.signal("HUP");
    let refused = run.wait_for("reload refused");
    assert!(refused.contains("upstream[0].ca_file"), "{refused}");
    let r = udp_query(listen, &query(2, "two.example.", RecordType::A, None));
    assert_eq!(a_records(&r).len(), 1, "the running config still serves");
    assert_eq!(
        dot.accepted.load(Ordering::SeqCst),
        1,
        "on the same connection"
    );
    // And `--check` says the same.
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_tierdns"))
        .args(["--check", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!check.status.success());
    let said = String::from_utf8_lossy(&check.stderr).to_string()
        + &String::from_utf8_lossy(&check.stdout);
    assert!(said.contains("upstream[0].ca_file"), "{said}");
    run.signal("TERM");
}
