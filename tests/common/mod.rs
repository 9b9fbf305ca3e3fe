//! Shared pieces of the integration tests: simulated upstreams on loopback, a
//! server on loopback with port 0, and small DNS clients built on hickory-proto.
#![allow(dead_code, unreachable_pub)]

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tierdns::config::Config;

pub mod tls;
use tierdns::shard::ServerHandle;

/// How a simulated upstream answers.
#[derive(Debug, Clone)]
pub struct Behavior {
    /// Delay before each answer.
    pub delay: Duration,
    /// Rcode of every answer (NOERROR answers carry `addrs`).
    pub rcode: ResponseCode,
    /// A records returned for any A query.
    pub addrs: Vec<Ipv4Addr>,
    /// TTL of the records.
    pub ttl: u32,
    /// Answer UDP with TC=1 and no records (the full answer only over TCP).
    pub truncate_udp: bool,
    /// Never answer.
    pub silent: bool,
    /// Repeat the question in lower case, whatever case it was asked in (as some
    /// upstreams do, which breaks DNS 0x20).
    pub fold_case: bool,
}

impl Default for Behavior {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            rcode: ResponseCode::NoError,
            addrs: vec![Ipv4Addr::new(192, 0, 2, 1)],
            ttl: 300,
            truncate_udp: false,
            silent: false,
            fold_case: false,
        }
    }
}

/// A DNS server on 127.0.0.1 (UDP and TCP, same port) answering per its behavior.
pub struct SimUpstream {
    pub addr: SocketAddr,
    pub udp_queries: Arc<AtomicUsize>,
    pub tcp_queries: Arc<AtomicUsize>,
    pub behavior: Arc<Mutex<Behavior>>,
    /// The last query received, raw.
    pub last_query: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for SimUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the TCP accept loop so that it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn answer(query: &[u8], b: &Behavior, over_udp: bool) -> Option<Vec<u8>> {
    let mut reply = answer_as_asked(query, b, over_udp)?;
    if b.fold_case {
        // The question name, uncompressed after the header (the answers' owner
        // names point at it).
        let mut pos = 12;
        while let Some(&len) = reply.get(pos) {
            if len == 0 || len > 63 {
                break;
            }
            let end = (pos + 1 + usize::from(len)).min(reply.len());
            reply[pos + 1..end].make_ascii_lowercase();
            pos = end;
        }
    }
    Some(reply)
}

/// The answer, with the question in the case it was asked in.
fn answer_as_asked(query: &[u8], b: &Behavior, over_udp: bool) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let question = q.queries.first()?.clone();
    let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.response_code = b.rcode;
    m.add_query(question.clone());
    if let Some(e) = &q.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        edns.set_dnssec_ok(e.flags().dnssec_ok);
        m.set_edns(edns);
    }
    if over_udp && b.truncate_udp {
        m.metadata.truncation = true;
        return m.to_vec().ok();
    }
    let name = question.name().clone();
    if b.rcode == ResponseCode::NoError && name.to_ascii().to_lowercase().starts_with("nx") {
        m.metadata.response_code = ResponseCode::NXDomain;
    }
    let nxdomain = m.metadata.response_code == ResponseCode::NXDomain;
    if b.rcode == ResponseCode::NoError && !nxdomain && question.query_type() == RecordType::A {
        for a in &b.addrs {
            m.add_answer(Record::from_rdata(name.clone(), b.ttl, RData::A(A(*a))));
        }
    } else if b.rcode == ResponseCode::NoError {
        let soa = SOA::new(
            Name::from_str("ns.test.").unwrap(),
            Name::from_str("admin.test.").unwrap(),
            1,
            3600,
            600,
            86400,
            60,
        );
        m.add_authority(Record::from_rdata(
            Name::from_str("test.").unwrap(),
            120,
            RData::SOA(soa),
        ));
    }
    m.to_vec().ok()
}

impl SimUpstream {
    pub fn start(behavior: Behavior) -> Self {
        // UDP picks the port; TCP must get the same one, which another process may
        // hold: try again with a new port then.
        let (udp, addr, tcp) = (0..50)
            .find_map(|_| {
                let udp = UdpSocket::bind("127.0.0.1:0").ok()?;
                let addr = udp.local_addr().ok()?;
                let tcp = TcpListener::bind(addr).ok()?;
                Some((udp, addr, tcp))
            })
            .expect("a loopback port free for UDP and TCP");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let sim = Self {
            addr,
            udp_queries: Arc::default(),
            tcp_queries: Arc::default(),
            behavior: Arc::new(Mutex::new(behavior)),
            last_query: Arc::default(),
            stop: Arc::default(),
        };
        let (stop, count, beh, last) = (
            sim.stop.clone(),
            sim.udp_queries.clone(),
            sim.behavior.clone(),
            sim.last_query.clone(),
        );
        let udp = Arc::new(udp);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, peer)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                *last.lock().unwrap() = buf[..n].to_vec();
                let b = beh.lock().unwrap().clone();
                if b.silent {
                    continue;
                }
                let Some(reply) = answer(&buf[..n], &b, true) else {
                    continue;
                };
                let udp = udp.clone();
                if b.delay.is_zero() {
                    let _ = udp.send_to(&reply, peer);
                } else {
                    std::thread::spawn(move || {
                        std::thread::sleep(b.delay);
                        let _ = udp.send_to(&reply, peer);
                    });
                }
            }
        });
        let (stop, count, beh) = (
            sim.stop.clone(),
            sim.tcp_queries.clone(),
            sim.behavior.clone(),
        );
        std::thread::spawn(move || {
            // Blocks in accept; the drop connects once to wake it.
            for s in tcp.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut s) = s else { continue };
                let (count, beh, stop) = (count.clone(), beh.clone(), stop.clone());
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        let Some(q) = read_frame(&mut s) else { return };
                        count.fetch_add(1, Ordering::SeqCst);
                        let b = beh.lock().unwrap().clone();
                        if b.silent {
                            continue;
                        }
                        std::thread::sleep(b.delay);
                        let Some(reply) = answer(&q, &b, false) else {
                            return;
                        };
                        if write_frame(&mut s, &reply).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        sim
    }

    pub fn set(&self, f: impl FnOnce(&mut Behavior)) {
        f(&mut self.behavior.lock().unwrap());
    }

    pub fn queries(&self) -> usize {
        self.udp_queries.load(Ordering::SeqCst) + self.tcp_queries.load(Ordering::SeqCst)
    }
}

pub fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut msg).ok()?;
    Some(msg)
}

pub fn write_frame(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let mut frame = (msg.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(msg);
    s.write_all(&frame)
}

/// A config on loopback, port 0, no metrics exporter, with these upstreams and
/// extra TOML (top-level keys and sections other than `[server]` and `[metrics]`).
pub fn config(upstreams: &[SocketAddr], io: &str, extra: &str) -> Config {
    let mut text = format!(
        "{extra}\n[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 2\nio = \"{io}\"\npin_cpus = false\nshutdown_grace = \"1s\"\n[metrics]\nenabled = false\n"
    );
    for (i, u) in upstreams.iter().enumerate() {
        text.push_str(&format!(
            "[[upstream]]\naddress = \"{u}\"\nname = \"up{i}\"\n"
        ));
    }
    Config::parse(&text, "test config").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// "uring" where this kernel lets us set io_uring up, else "epoll" (with a note):
/// the suite must pass on machines whose seccomp policy refuses io_uring, while the
/// io_uring backend is tested wherever it exists.
pub fn uring() -> &'static str {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let available = *AVAILABLE.get_or_init(|| {
        std::thread::spawn(|| io_uring::IoUring::new(8).is_ok())
            .join()
            .unwrap_or(false)
    });
    if available {
        "uring"
    } else {
        eprintln!("note: io_uring unavailable here; testing the epoll backend instead");
        "epoll"
    }
}

/// Whether the kernel has the multishot receive the io_uring backend's client
/// sockets use (Linux 6.0+); without it they fall back to a receive per datagram.
pub fn uring_multishot() -> bool {
    std::thread::spawn(|| {
        let Ok(ring) = io_uring::IoUring::new(8) else {
            return false;
        };
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe).is_ok()
            && probe.is_supported(io_uring::opcode::RecvMsgMulti::CODE)
    })
    .join()
    .unwrap_or(false)
}

pub fn start(config: Config) -> ServerHandle {
    tierdns::start(config).expect("server starts")
}

/// A query message with an ID, a name and a type; EDNS with this UDP size if given.
pub fn query(id: u16, name: &str, qtype: RecordType, edns: Option<u16>) -> TestQuery {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    TestQuery {
        msg: m,
        name: name.to_string(),
    }
}

/// Sends raw bytes over UDP and returns the reply, or None after `wait`.
pub fn udp_raw(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.send_to(bytes, server).unwrap();
    let mut buf = [0u8; 65535];
    let deadline = std::time::Instant::now() + wait;
    loop {
        match s.recv(&mut buf) {
            Ok(n) => return Some(buf[..n].to_vec()),
            Err(e)
                if e.kind() == std::io::ErrorKind::Interrupted
                    && std::time::Instant::now() < deadline => {}
            Err(_) => return None,
        }
    }
}

/// A query message plus the question name as the test wrote it: hickory lowercases
/// names it encodes, so [`TestQuery::bytes`] puts the letter case back.
pub struct TestQuery {
    pub msg: Message,
    name: String,
}

impl std::ops::Deref for TestQuery {
    type Target = Message;
    fn deref(&self) -> &Message {
        &self.msg
    }
}

impl std::ops::DerefMut for TestQuery {
    fn deref_mut(&mut self) -> &mut Message {
        &mut self.msg
    }
}

impl TestQuery {
    /// Wire form with the question name in the case given to [`query`].
    pub fn bytes(&self) -> Vec<u8> {
        let mut bytes = self.msg.to_vec().unwrap();
        let mut pos = 12;
        for label in self
            .name
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
        {
            let len = bytes[pos] as usize;
            assert_eq!(len, label.len());
            bytes[pos + 1..pos + 1 + len].copy_from_slice(label.as_bytes());
            pos += 1 + len;
        }
        bytes
    }
}

pub fn udp_query(server: SocketAddr, m: &TestQuery) -> Message {
    let reply = udp_raw(server, &m.bytes(), Duration::from_secs(5)).expect("a UDP reply");
    Message::from_vec(&reply).unwrap_or_else(|e| panic!("unreadable reply {e}: {reply:02x?}"))
}

pub fn tcp_query(server: SocketAddr, m: &TestQuery) -> Message {
    let mut s = TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write_frame(&mut s, &m.bytes()).unwrap();
    Message::from_vec(&read_frame(&mut s).expect("a TCP reply")).unwrap()
}

pub fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// Polls `check` until it returns `Some`, for at most `deadline`; panics with
/// `what` and the last value `probe` saw if it never does. A test waits for a
/// condition this way, never for a fixed time.
pub fn eventually<T, S: std::fmt::Debug>(
    deadline: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, S>,
) -> T {
    let end = std::time::Instant::now() + deadline;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(seen) if std::time::Instant::now() >= end => {
                panic!("{what}: not within {deadline:?}; last seen: {seen:?}")
            }
            Err(_) => std::thread::yield_now(),
        }
        std::thread::park_timeout(Duration::from_millis(2));
    }
}

/// Async form of [`eventually`], for tests whose clients run on a tokio runtime:
/// polls without blocking the runtime's other tasks.
pub async fn eventually_async<T, S: std::fmt::Debug>(
    deadline: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, S>,
) -> T {
    let end = std::time::Instant::now() + deadline;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(seen) if std::time::Instant::now() >= end => {
                panic!("{what}: not within {deadline:?}; last seen: {seen:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// The INFO-CODE of a reply's Extended DNS Error (RFC 8914), if it has one.
pub fn ede_code(m: &Message) -> Option<u16> {
    use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
    match m.edns.as_ref()?.option(EdnsCode::Unknown(15))? {
        EdnsOption::Unknown(15, data) => Some(u16::from_be_bytes([*data.first()?, *data.get(1)?])),
        _ => None,
    }
}
