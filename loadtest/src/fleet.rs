//! The simulated upstream fleet: N DNS servers on 127.0.0.(11+i), UDP and TCP on
//! one port each, each with its own latency distribution, jitter, loss, error
//! rcodes, truncation and address set per name, and a record of every query.
//!
//! Spec (`--spec`): upstreams separated by commas; each is a latency and options
//! separated by `/`:
//!
//! ```text
//! 20ms                         fixed 20 ms
//! 10ms..30ms                   uniform between
//! ln:20ms:0.5                  log-normal, median 20 ms, sigma 0.5
//! 20ms/jitter=5ms/loss=1%/servfail=2%/refused=1%/tc=5%/addrs=2/ttl=300
//! ```
//!
//! Addresses: upstream `i` answers name `n` with `addrs` A records
//! 198.18.i.x and AAAA records 2001:db8:0:i::x, x derived from a hash of `n`: every
//! upstream's set is its own, so a merged answer shows which upstreams it holds.
//!
//! Records: each query's arrival and answer time (ns since the fleet started), the
//! upstream, the name's hash and the outcome, kept up to [`MAX_RECORDS`] (counters
//! go on past that). From them: peak in flight (fleet-wide and per name), queries
//! per name, completion time per name.

use crate::dns::{self, AnswerSpec};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How late the timer may send a delayed answer so that answers due close
/// together leave in one wake-up.
pub const TIMER_SLACK: Duration = Duration::from_micros(100);

/// Most query records kept per fleet.
pub const MAX_RECORDS: usize = 4_000_000;

/// A latency distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    /// Always this.
    Fixed(Duration),
    /// Uniform in [lo, hi].
    Uniform(Duration, Duration),
    /// Log-normal with this median and sigma (of the underlying normal).
    LogNormal(Duration, f64),
}

impl Latency {
    /// A draw.
    pub fn sample(&self, rng: &mut SmallRng) -> Duration {
        match *self {
            Self::Fixed(d) => d,
            Self::Uniform(lo, hi) => {
                if hi <= lo {
                    lo
                } else {
                    Duration::from_secs_f64(rng.random_range(lo.as_secs_f64()..=hi.as_secs_f64()))
                }
            }
            Self::LogNormal(median, sigma) => {
                // Box-Muller
                let u1: f64 = rng.random_range(f64::EPSILON..1.0);
                let u2: f64 = rng.random();
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                Duration::from_secs_f64((median.as_secs_f64() * (sigma * z).exp()).min(60.0))
            }
        }
    }

    /// The median of the distribution.
    pub fn median(&self) -> Duration {
        match *self {
            Self::Fixed(d) | Self::LogNormal(d, _) => d,
            Self::Uniform(lo, hi) => (lo + hi) / 2,
        }
    }
}

/// One simulated upstream's behaviour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpstreamSpec {
    /// Delay before answering.
    pub latency: Latency,
    /// Added uniformly in [0, jitter].
    pub jitter: Duration,
    /// Share of queries never answered, 0..1.
    pub loss: f64,
    /// Share answered SERVFAIL.
    pub servfail: f64,
    /// Share answered REFUSED.
    pub refused: f64,
    /// Share of UDP answers sent with TC=1 and no records.
    pub truncate: f64,
    /// Addresses per name and type.
    pub addrs: u8,
    /// TTL of the records.
    pub ttl: u32,
}

impl UpstreamSpec {
    /// An upstream answering after `latency`, nothing else.
    pub fn fixed(latency: Duration) -> Self {
        Self {
            latency: Latency::Fixed(latency),
            jitter: Duration::ZERO,
            loss: 0.0,
            servfail: 0.0,
            refused: 0.0,
            truncate: 0.0,
            addrs: 2,
            ttl: 300,
        }
    }
}

/// Parses `20ms`, `1.5s`, `500us`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(format!("{s:?}: a duration needs a unit (us, ms, s)"));
    };
    let v: f64 = num.parse().map_err(|_| format!("{s:?}: not a duration"))?;
    if !(0.0..=60.0 / scale).contains(&v) {
        return Err(format!("{s:?}: out of range (0 to 60 s)"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

fn parse_share(key: &str, v: &str) -> Result<f64, String> {
    let (num, scale) = match v.strip_suffix('%') {
        Some(n) => (n, 0.01),
        None => (v, 1.0),
    };
    let x: f64 = num
        .parse()
        .map_err(|_| format!("{key}={v}: not a number"))?;
    let x = x * scale;
    if !(0.0..=1.0).contains(&x) {
        return Err(format!("{key}={v}: must be within 0 and 100%"));
    }
    Ok(x)
}

/// Parses one upstream's spec (see the module doc).
pub fn parse_upstream(spec: &str) -> Result<UpstreamSpec, String> {
    let mut parts = spec.split('/');
    let lat = parts.next().unwrap_or_default().trim();
    let latency = if let Some(rest) = lat.strip_prefix("ln:") {
        let (m, s) = rest
            .split_once(':')
            .ok_or_else(|| format!("{lat:?}: log-normal is ln:MEDIAN:SIGMA"))?;
        let sigma: f64 = s.parse().map_err(|_| format!("{lat:?}: bad sigma"))?;
        if !(0.0..=3.0).contains(&sigma) {
            return Err(format!("{lat:?}: sigma outside 0..3"));
        }
        Latency::LogNormal(parse_duration(m)?, sigma)
    } else if let Some((lo, hi)) = lat.split_once("..") {
        let (lo, hi) = (parse_duration(lo)?, parse_duration(hi)?);
        if hi < lo {
            return Err(format!("{lat:?}: the upper bound is below the lower"));
        }
        Latency::Uniform(lo, hi)
    } else {
        Latency::Fixed(parse_duration(lat)?)
    };
    let mut u = UpstreamSpec {
        latency,
        ..UpstreamSpec::fixed(Duration::ZERO)
    };
    for opt in parts {
        let (k, v) = opt
            .split_once('=')
            .ok_or_else(|| format!("{opt:?}: options are key=value"))?;
        match k.trim() {
            "jitter" => u.jitter = parse_duration(v)?,
            "loss" => u.loss = parse_share(k, v)?,
            "servfail" => u.servfail = parse_share(k, v)?,
            "refused" => u.refused = parse_share(k, v)?,
            "tc" => u.truncate = parse_share(k, v)?,
            "addrs" => {
                u.addrs = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=16).contains(n))
                    .ok_or_else(|| format!("addrs={v}: 1 to 16"))?;
            }
            "ttl" => u.ttl = v.parse().map_err(|_| format!("ttl={v}: not a number"))?,
            other => {
                return Err(format!(
                    "unknown option {other:?} (jitter, loss, servfail, refused, tc, addrs, ttl)"
                ))
            }
        }
    }
    if u.loss + u.servfail + u.refused > 1.0 {
        return Err(format!("{spec:?}: loss + servfail + refused exceed 100%"));
    }
    Ok(u)
}

/// Parses a fleet spec: upstream specs separated by commas.
pub fn parse_fleet(spec: &str) -> Result<Vec<UpstreamSpec>, String> {
    let v: Vec<UpstreamSpec> = spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_upstream)
        .collect::<Result<_, _>>()?;
    if v.is_empty() || v.len() > 200 {
        return Err("a fleet has 1 to 200 upstreams".into());
    }
    Ok(v)
}

/// A stable hash of a name (lowercased, with the final dot).
pub fn name_hash(name: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let lower = name.to_ascii_lowercase();
    let n = if lower.ends_with('.') {
        lower
    } else {
        format!("{lower}.")
    };
    n.hash(&mut h);
    h.finish()
}

/// The addresses upstream `index` serves for a name (both families).
pub fn addresses_for(index: usize, hash: u64, count: u8) -> Vec<IpAddr> {
    let mut v = Vec::with_capacity(2 * count as usize);
    for k in 0..u64::from(count) {
        let x = (hash.wrapping_add(k.wrapping_mul(0x9E37_79B9)) % 253 + 1) as u8;
        let x = if k > 0
            && v.iter()
                .any(|a| matches!(a, IpAddr::V4(o) if o.octets()[3] == x))
        {
            ((u64::from(x) + k) % 253 + 1) as u8
        } else {
            x
        };
        v.push(IpAddr::V4(Ipv4Addr::new(198, 18, index as u8, x)));
        v.push(IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            index as u16,
            0,
            0,
            (hash >> 16) as u16,
            u16::from(x),
        )));
    }
    v
}

/// The union of the addresses of every upstream for a name and type.
pub fn union_for(specs: &[UpstreamSpec], name: &str, qtype: u16) -> Vec<IpAddr> {
    let h = name_hash(name);
    let mut all: Vec<IpAddr> = specs
        .iter()
        .enumerate()
        .flat_map(|(i, s)| addresses_for(i, h, s.addrs))
        .filter(|a| match qtype {
            dns::TYPE_A => a.is_ipv4(),
            dns::TYPE_AAAA => a.is_ipv6(),
            _ => false,
        })
        .collect();
    all.sort();
    all.dedup();
    all
}

/// What an upstream did with one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not decided yet (answer pending).
    Pending,
    /// Answered NOERROR with records.
    Answered,
    /// Answered SERVFAIL.
    ServFail,
    /// Answered REFUSED.
    Refused,
    /// Answered TC=1.
    Truncated,
    /// Never answered (loss or down).
    Dropped,
}

/// One query as the fleet saw it.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// Which upstream.
    pub upstream: u16,
    /// Over TCP.
    pub tcp: bool,
    /// [`name_hash`] of the question name.
    pub name: u64,
    /// Question type.
    pub qtype: u16,
    /// Arrival, ns since the fleet started.
    pub arrived_ns: u64,
    /// Answer sent, ns since start (0 = never).
    pub answered_ns: u64,
    /// The delay drawn for it, ns (answered minus arrived minus this: how late the
    /// fleet itself was).
    pub delay_ns: u64,
    /// Outcome.
    pub outcome: Outcome,
}

/// An upstream's state, switchable at run time (outage scenarios).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// As its spec says.
    Up = 0,
    /// Drops every query.
    Down = 1,
    /// Answers every query SERVFAIL.
    ServFail = 2,
}

/// (generation, index) of a record.
type RecordId = (u64, usize);

struct Shared {
    start: Instant,
    specs: Vec<UpstreamSpec>,
    states: Vec<AtomicU8>,
    /// (generation, records): a reset bumps the generation, so answers to queries
    /// from before it do not touch the new records.
    records: Mutex<(u64, Vec<Record>)>,
    queries: Vec<AtomicU64>,
    in_flight: AtomicU64,
    peak: AtomicU64,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records an arrival; returns the record's handle (index usize::MAX past the cap).
    fn arrive(&self, upstream: usize, tcp: bool, name: u64, qtype: u16) -> RecordId {
        self.queries[upstream].fetch_add(1, Ordering::Relaxed);
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(n, Ordering::Relaxed);
        let mut guard = self.records.lock().expect("records lock");
        let (generation, r) = &mut *guard;
        if r.len() >= MAX_RECORDS {
            return (*generation, usize::MAX);
        }
        r.push(Record {
            upstream: upstream as u16,
            tcp,
            name,
            qtype,
            arrived_ns: self.now_ns(),
            answered_ns: 0,
            delay_ns: 0,
            outcome: Outcome::Pending,
        });
        (*generation, r.len() - 1)
    }

    fn set_delay(&self, (generation, idx): RecordId, delay: Duration) {
        let mut guard = self.records.lock().expect("records lock");
        if guard.0 == generation {
            if let Some(rec) = guard.1.get_mut(idx) {
                rec.delay_ns = delay.as_nanos() as u64;
            }
        }
    }

    fn done(&self, (generation, idx): RecordId, outcome: Outcome) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let now = self.now_ns();
        let mut guard = self.records.lock().expect("records lock");
        if guard.0 != generation {
            return;
        }
        if let Some(rec) = guard.1.get_mut(idx) {
            rec.outcome = outcome;
            if outcome != Outcome::Dropped {
                rec.answered_ns = now;
            }
        }
    }

    /// Decides what upstream `i` does with a query: (outcome, delay).
    fn decide(&self, i: usize, tcp: bool, rng: &mut SmallRng) -> (Outcome, Duration) {
        let s = &self.specs[i];
        let delay = s.latency.sample(rng)
            + if s.jitter.is_zero() {
                Duration::ZERO
            } else {
                s.jitter.mul_f64(rng.random())
            };
        let state = self.states[i].load(Ordering::Relaxed);
        if state == State::Down as u8 {
            return (Outcome::Dropped, delay);
        }
        if state == State::ServFail as u8 {
            return (Outcome::ServFail, delay);
        }
        let x: f64 = rng.random();
        let outcome = if x < s.loss {
            Outcome::Dropped
        } else if x < s.loss + s.servfail {
            Outcome::ServFail
        } else if x < s.loss + s.servfail + s.refused {
            Outcome::Refused
        } else if !tcp && rng.random::<f64>() < s.truncate {
            Outcome::Truncated
        } else {
            Outcome::Answered
        };
        (outcome, delay)
    }

    /// Handles one query: Some((answer, delay, record index)) or None (dropped /
    /// not a query).
    fn handle(
        &self,
        i: usize,
        tcp: bool,
        query: &[u8],
        rng: &mut SmallRng,
        name_buf: &mut String,
    ) -> Option<(Vec<u8>, Duration, RecordId, Outcome)> {
        let q = dns::parse_query(query).ok()?;
        dns::read_name(query, dns::HEADER_LEN, name_buf).ok()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name_buf.hash(&mut h);
        let hash = h.finish();
        let idx = self.arrive(i, tcp, hash, q.qtype);
        let (outcome, delay) = self.decide(i, tcp, rng);
        self.set_delay(idx, delay);
        if outcome == Outcome::Dropped {
            self.done(idx, Outcome::Dropped);
            return None;
        }
        let addrs = addresses_for(i, hash, self.specs[i].addrs);
        let spec = AnswerSpec {
            rcode: match outcome {
                Outcome::ServFail => dns::SERVFAIL,
                Outcome::Refused => dns::REFUSED,
                _ => dns::NOERROR,
            },
            truncated: outcome == Outcome::Truncated,
            ttl: self.specs[i].ttl,
            addresses: &addrs,
        };
        let mut out = Vec::with_capacity(256);
        dns::build_answer(&mut out, query, &q, &spec);
        Some((out, delay, idx, outcome))
    }
}

/// A running fleet. Dropping it stops it.
///
/// Threads: one receiving thread per upstream (UDP), one timer thread that sends
/// the delayed UDP answers at their time (a heap and a condvar: sub-millisecond
/// precision, where runtime timers round up to the next millisecond), and one
/// tokio thread for TCP.
pub struct Fleet {
    /// One address per upstream, in spec order (UDP and TCP).
    pub addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    timer: Arc<Timer>,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// An answer waiting for its time.
struct Due {
    at: Instant,
    upstream: usize,
    peer: SocketAddr,
    answer: Vec<u8>,
    record: RecordId,
    outcome: Outcome,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.at.cmp(&self.at) // min-heap on time
    }
}

/// The delayed UDP answers of the whole fleet.
struct Timer {
    heap: Mutex<std::collections::BinaryHeap<Due>>,
    wake: std::sync::Condvar,
    stop: std::sync::atomic::AtomicBool,
}

impl Timer {
    fn push(&self, due: Due) {
        let mut h = self.heap.lock().expect("timer lock");
        let earliest = h.peek().is_none_or(|top| due.at < top.at);
        h.push(due);
        drop(h);
        if earliest {
            self.wake.notify_one();
        }
    }

    /// Sends each answer at its time until stopped.
    fn run(&self, socks: &[std::net::UdpSocket], sh: &Shared) {
        let mut batch = Vec::new();
        let mut h = self.heap.lock().expect("timer lock");
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            while h.peek().is_some_and(|top| top.at <= now) {
                batch.push(h.pop().expect("peeked"));
            }
            if batch.is_empty() {
                // wake a little after the earliest: answers due together go out in
                // one wake-up (at most TIMER_SLACK late)
                let wait = h
                    .peek()
                    .map_or(Duration::from_millis(100), |top| top.at - now + TIMER_SLACK)
                    .min(Duration::from_millis(100));
                h = self.wake.wait_timeout(h, wait).expect("timer lock").0;
                continue;
            }
            drop(h);
            for d in batch.drain(..) {
                let _ = socks[d.upstream].send_to(&d.answer, d.peer);
                sh.done(d.record, d.outcome);
            }
            h = self.heap.lock().expect("timer lock");
        }
    }
}

/// Per-upstream and fleet-wide figures from the records.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FleetSummary {
    /// Queries per upstream.
    pub queries: Vec<u64>,
    /// All queries.
    pub total: u64,
    /// Highest number of queries in flight at once, fleet-wide.
    pub peak_in_flight: u64,
    /// Highest number in flight at once at each upstream (from the records).
    pub peak_in_flight_per_upstream: Vec<u64>,
    /// Distinct (name, type) asked.
    pub names: u64,
    /// Largest number of one name's queries in flight at once.
    pub peak_per_name: u64,
    /// Median over names of that name's own peak.
    pub median_peak_per_name: f64,
    /// Median over names of last answer minus first arrival, ms.
    pub completion_ms_p50: f64,
    /// 99th percentile of the same.
    pub completion_ms_p99: f64,
    /// How late the fleet answered beyond the delay it drew, ms, 99th percentile
    /// (a fleet that keeps up stays well under a millisecond).
    pub fleet_late_ms_p99: f64,
}

impl Fleet {
    /// Starts one server per spec on 127.0.0.(11+i), each on a free port (UDP and
    /// TCP on the same one), on a thread of its own. `seed` makes runs repeatable.
    pub fn start(specs: Vec<UpstreamSpec>, seed: u64) -> io::Result<Self> {
        let n = specs.len();
        let shared = Arc::new(Shared {
            start: Instant::now(),
            states: (0..n).map(|_| AtomicU8::new(State::Up as u8)).collect(),
            queries: (0..n).map(|_| AtomicU64::new(0)).collect(),
            specs,
            records: Mutex::new((0, Vec::new())),
            in_flight: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut udps = Vec::with_capacity(n);
        let mut tcps = Vec::with_capacity(n);
        let mut addrs = Vec::with_capacity(n);
        for i in 0..n {
            let ip = Ipv4Addr::new(127, 0, 0, 11 + (i as u8 % 240));
            let (udp, tcp) = bind_pair(ip)?;
            addrs.push(udp.local_addr()?);
            udps.push(udp);
            tcps.push(tcp);
        }
        let timer = Arc::new(Timer {
            heap: Mutex::new(std::collections::BinaryHeap::new()),
            wake: std::sync::Condvar::new(),
            stop: std::sync::atomic::AtomicBool::new(false),
        });
        let mut threads = Vec::new();
        let senders: Vec<std::net::UdpSocket> = udps
            .iter()
            .map(|u| u.try_clone())
            .collect::<io::Result<_>>()?;
        {
            let (timer, sh) = (timer.clone(), shared.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("fleet-timer".into())
                    .spawn(move || timer.run(&senders, &sh))?,
            );
        }
        for (i, udp) in udps.into_iter().enumerate() {
            let (timer, sh) = (timer.clone(), shared.clone());
            let seed = seed.wrapping_add(i as u64);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("fleet-udp-{i}"))
                    .spawn(move || serve_udp(i, &udp, &sh, &timer, seed))?,
            );
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        let sh = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("fleet-tcp".into())
                .spawn(move || {
                    rt.block_on(async move {
                        let mut tasks = Vec::new();
                        for (i, tcp) in tcps.into_iter().enumerate() {
                            let Ok(tcp) = tokio::net::TcpListener::from_std(tcp) else {
                                continue;
                            };
                            tasks.push(tokio::spawn(serve_tcp(
                                i,
                                tcp,
                                sh.clone(),
                                seed.wrapping_add(1000 + i as u64),
                            )));
                        }
                        let mut rx = rx;
                        while !*rx.borrow() {
                            if rx.changed().await.is_err() {
                                break;
                            }
                        }
                        for t in tasks {
                            t.abort();
                        }
                    });
                })?,
        );
        Ok(Self {
            addrs,
            shared,
            timer,
            shutdown: Some(tx),
            threads,
        })
    }

    /// The specs the fleet runs.
    pub fn specs(&self) -> &[UpstreamSpec] {
        &self.shared.specs
    }

    /// Switches upstream `i` (Up, Down, ServFail).
    pub fn set_state(&self, i: usize, state: State) {
        self.shared.states[i].store(state as u8, Ordering::Relaxed);
    }

    /// Queries received so far, all upstreams.
    pub fn total_queries(&self) -> u64 {
        self.shared
            .queries
            .iter()
            .map(|q| q.load(Ordering::Relaxed))
            .sum()
    }

    /// Queries received and not yet answered or dropped, all upstreams.
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// A copy of the records so far.
    pub fn records(&self) -> Vec<Record> {
        self.shared.records.lock().expect("records lock").1.clone()
    }

    /// Forgets the records and counters (between phases of a scenario).
    pub fn reset(&self) {
        {
            let mut g = self.shared.records.lock().expect("records lock");
            g.0 += 1;
            g.1.clear();
        }
        for q in &self.shared.queries {
            q.store(0, Ordering::Relaxed);
        }
        self.shared.peak.store(
            self.shared.in_flight.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }

    /// Figures from the records so far.
    pub fn summary(&self) -> FleetSummary {
        let records = self.records();
        let mut s = summarize(&records);
        s.queries = self
            .shared
            .queries
            .iter()
            .map(|q| q.load(Ordering::Relaxed))
            .collect();
        s.total = s.queries.iter().sum();
        s.peak_in_flight = self.shared.peak.load(Ordering::Relaxed);
        s
    }

    /// Stops the servers and waits for the thread.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        self.timer.stop.store(true, Ordering::Relaxed);
        self.timer.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// The records as CSV: one line per query, times in ms since the fleet started.
pub fn records_csv(records: &[Record]) -> String {
    let mut s = String::from(
        "upstream,transport,name_hash,qtype,arrived_ms,answered_ms,delay_ms,outcome\n",
    );
    for r in records {
        let answered = if r.answered_ns > 0 {
            format!("{:.3}", r.answered_ns as f64 / 1e6)
        } else {
            String::new()
        };
        s.push_str(&format!(
            "{},{},{:016x},{},{:.3},{},{:.3},{:?}\n",
            r.upstream,
            if r.tcp { "tcp" } else { "udp" },
            r.name,
            r.qtype,
            r.arrived_ns as f64 / 1e6,
            answered,
            r.delay_ns as f64 / 1e6,
            r.outcome
        ));
    }
    s
}

/// Per-name figures from records: peaks of concurrency and completion times.
pub fn summarize(records: &[Record]) -> FleetSummary {
    let mut by_name: HashMap<(u64, u16), Vec<&Record>> = HashMap::new();
    for r in records {
        by_name.entry((r.name, r.qtype)).or_default().push(r);
    }
    let mut peaks = Vec::with_capacity(by_name.len());
    let mut completions = Vec::with_capacity(by_name.len());
    let mut events: Vec<(u64, i32)> = Vec::new();
    let mut late: Vec<f64> = records
        .iter()
        .filter(|r| r.answered_ns > 0)
        .map(|r| r.answered_ns.saturating_sub(r.arrived_ns + r.delay_ns) as f64 / 1e6)
        .collect();
    late.sort_by(f64::total_cmp);
    for recs in by_name.values() {
        events.clear();
        let mut first = u64::MAX;
        let mut last = 0;
        for r in recs {
            first = first.min(r.arrived_ns);
            let end = if r.answered_ns > 0 {
                r.answered_ns
            } else {
                r.arrived_ns
            };
            last = last.max(end);
            events.push((r.arrived_ns, 1));
            events.push((end, -1));
        }
        events.sort_by_key(|&(t, d)| (t, d));
        let (mut cur, mut peak) = (0i32, 0i32);
        for &(_, d) in &events {
            cur += d;
            peak = peak.max(cur);
        }
        peaks.push(peak.max(1) as u64);
        completions.push(last.saturating_sub(first) as f64 / 1e6);
    }
    peaks.sort_unstable();
    completions.sort_by(f64::total_cmp);
    let upstreams = records
        .iter()
        .map(|r| r.upstream as usize + 1)
        .max()
        .unwrap_or(0);
    let mut per_upstream = vec![Vec::new(); upstreams];
    for r in records {
        let end = if r.answered_ns > 0 {
            r.answered_ns
        } else {
            r.arrived_ns
        };
        per_upstream[r.upstream as usize].push((r.arrived_ns, 1i32));
        per_upstream[r.upstream as usize].push((end, -1i32));
    }
    let peak_in_flight_per_upstream = per_upstream
        .iter_mut()
        .map(|ev| {
            ev.sort_unstable();
            let (mut cur, mut peak) = (0i32, 0i32);
            for &(_, d) in ev.iter() {
                cur += d;
                peak = peak.max(cur);
            }
            peak as u64
        })
        .collect();
    let q = |v: &[f64], p: f64| -> f64 {
        if v.is_empty() {
            0.0
        } else {
            v[((v.len() - 1) as f64 * p).round() as usize]
        }
    };
    let peaks_f: Vec<f64> = peaks.iter().map(|&p| p as f64).collect();
    FleetSummary {
        names: by_name.len() as u64,
        peak_per_name: peaks.last().copied().unwrap_or(0),
        median_peak_per_name: q(&peaks_f, 0.5),
        completion_ms_p50: q(&completions, 0.5),
        completion_ms_p99: q(&completions, 0.99),
        fleet_late_ms_p99: q(&late, 0.99),
        peak_in_flight_per_upstream,
        ..FleetSummary::default()
    }
}

fn bind_pair(ip: Ipv4Addr) -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let mut last = None;
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind((ip, 0))?;
        let port = udp.local_addr()?.port();
        match std::net::TcpListener::bind((ip, port)) {
            Ok(tcp) => {
                tcp.set_nonblocking(true)?;
                udp.set_read_timeout(Some(Duration::from_millis(100)))?;
                let sock = socket2::SockRef::from(&udp);
                let _ = sock.set_recv_buffer_size(4 << 20);
                let _ = sock.set_send_buffer_size(4 << 20);
                return Ok((udp, tcp));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free port pair")))
}

/// Receives upstream `i`'s UDP queries until the timer is stopped; answers now or
/// hands them to the timer.
fn serve_udp(i: usize, sock: &std::net::UdpSocket, sh: &Shared, timer: &Timer, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut buf = vec![0u8; 4096];
    let mut name = String::new();
    while !timer.stop.load(Ordering::Relaxed) {
        let Ok((n, peer)) = sock.recv_from(&mut buf) else {
            continue; // timeout (checks stop) or a transient error
        };
        let at = Instant::now();
        let Some((answer, delay, record, outcome)) =
            sh.handle(i, false, &buf[..n], &mut rng, &mut name)
        else {
            continue;
        };
        if delay < Duration::from_micros(50) {
            let _ = sock.send_to(&answer, peer);
            sh.done(record, outcome);
        } else {
            timer.push(Due {
                at: at + delay,
                upstream: i,
                peer,
                answer,
                record,
                outcome,
            });
        }
    }
}

async fn serve_tcp(i: usize, listener: tokio::net::TcpListener, sh: Arc<Shared>, seed: u64) {
    let mut conn_no = 0u64;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        conn_no += 1;
        let sh = sh.clone();
        let seed = seed.wrapping_add(conn_no << 20);
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let (mut rd, mut wr) = stream.into_split();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1024);
            let writer = tokio::spawn(async move {
                while let Some(msg) = rx.recv().await {
                    if wr.write_all(&msg).await.is_err() {
                        break;
                    }
                }
            });
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut name = String::new();
            let idle = Duration::from_secs(30);
            loop {
                let mut len = [0u8; 2];
                match tokio::time::timeout(idle, rd.read_exact(&mut len)).await {
                    Ok(Ok(_)) => {}
                    _ => break,
                }
                let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
                if rd.read_exact(&mut msg).await.is_err() {
                    break;
                }
                let Some((answer, delay, idx, outcome)) =
                    sh.handle(i, true, &msg, &mut rng, &mut name)
                else {
                    continue;
                };
                let tx = tx.clone();
                let sh = sh.clone();
                tokio::spawn(async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let mut framed = Vec::with_capacity(answer.len() + 2);
                    framed.extend_from_slice(&(answer.len() as u16).to_be_bytes());
                    framed.extend_from_slice(&answer);
                    let _ = tx.send(framed).await;
                    sh.done(idx, outcome);
                });
            }
            drop(tx);
            let _ = writer.await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_every_form() {
        let f = parse_fleet("20ms,40ms , 10ms..30ms,ln:20ms:0.5,1s/jitter=5ms/loss=1%/servfail=0.02/refused=1%/tc=5%/addrs=3/ttl=60").unwrap();
        assert_eq!(f.len(), 5);
        assert_eq!(f[0].latency, Latency::Fixed(Duration::from_millis(20)));
        assert_eq!(
            f[2].latency,
            Latency::Uniform(Duration::from_millis(10), Duration::from_millis(30))
        );
        assert_eq!(
            f[3].latency,
            Latency::LogNormal(Duration::from_millis(20), 0.5)
        );
        let u = f[4];
        assert_eq!(u.latency.median(), Duration::from_secs(1));
        assert_eq!(u.jitter, Duration::from_millis(5));
        assert!((u.loss - 0.01).abs() < 1e-12);
        assert!((u.servfail - 0.02).abs() < 1e-12);
        assert!((u.truncate - 0.05).abs() < 1e-12);
        assert_eq!((u.addrs, u.ttl), (3, 60));
        assert_eq!(f[0].addrs, 2, "default");
    }

    #[test]
    fn spec_errors_say_what() {
        for (bad, says) in [
            ("20", "unit"),
            ("30ms..10ms", "upper bound"),
            ("20ms/loss=150%", "within 0 and 100%"),
            ("20ms/colour=red", "unknown option"),
            ("20ms/loss", "key=value"),
            ("ln:20ms", "ln:MEDIAN:SIGMA"),
            ("20ms/loss=60%/servfail=50%", "exceed"),
            ("20ms/addrs=0", "1 to 16"),
        ] {
            let e = parse_fleet(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(parse_fleet("").is_err());
    }

    #[test]
    fn latency_draws_follow_their_law() {
        let mut rng = SmallRng::seed_from_u64(3);
        let u = Latency::Uniform(Duration::from_millis(10), Duration::from_millis(30));
        for _ in 0..1000 {
            let d = u.sample(&mut rng);
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(30));
        }
        let ln = Latency::LogNormal(Duration::from_millis(20), 0.5);
        let mut v: Vec<Duration> = (0..10_001).map(|_| ln.sample(&mut rng)).collect();
        v.sort();
        let median = v[5000].as_secs_f64() * 1000.0;
        assert!((median - 20.0).abs() < 1.0, "median {median}");
        assert!(v[9900] > Duration::from_millis(50), "a long tail");
    }

    #[test]
    fn each_upstream_has_its_own_addresses() {
        let specs = vec![UpstreamSpec::fixed(Duration::ZERO); 5];
        let u = union_for(&specs, "a.test.", dns::TYPE_A);
        assert_eq!(u.len(), 10, "5 upstreams x 2 distinct addresses");
        assert_eq!(union_for(&specs, "A.TEST", dns::TYPE_AAAA).len(), 10);
        let a0 = addresses_for(0, name_hash("a.test."), 2);
        let a1 = addresses_for(1, name_hash("a.test."), 2);
        assert!(a0.iter().all(|a| !a1.contains(a)));
        assert_eq!(a0, addresses_for(0, name_hash("a.test"), 2), "stable");
    }

    #[test]
    fn summary_finds_peaks_and_completion() {
        let rec = |up: u16, name: u64, a: u64, b: u64| Record {
            upstream: up,
            tcp: false,
            name,
            qtype: 1,
            arrived_ns: a * 1_000_000,
            answered_ns: b * 1_000_000,
            delay_ns: 0,
            outcome: Outcome::Answered,
        };
        // name 1: three overlapping at 0..20, 0..40, 25..80 -> peak 2, completion 80
        // name 2: one, 5..25 -> peak 1, completion 20
        let s = summarize(&[
            rec(0, 1, 0, 20),
            rec(1, 1, 0, 40),
            rec(2, 1, 25, 80),
            rec(0, 2, 5, 25),
        ]);
        assert_eq!(s.names, 2);
        assert_eq!(s.peak_per_name, 2);
        // upstream 0: 0..20 and 5..25 overlap; 1 and 2 have one each
        assert_eq!(s.peak_in_flight_per_upstream, vec![2, 1, 1]);
        assert_eq!(s.completion_ms_p99, 80.0);
        assert!(s.completion_ms_p50 == 20.0 || s.completion_ms_p50 == 80.0);
    }
}
