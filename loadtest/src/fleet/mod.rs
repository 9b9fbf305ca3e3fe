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
//!
//! Inside: `spec` (the language above), `addrs` (the address sets), `shared` (the
//! state every thread shares, what an upstream does with a query), `record` (the
//! records and their summary), `udp` (receivers and the answer timer), `tcp`; this
//! file starts and stops them.

mod addrs;
mod record;
mod shared;
mod spec;
mod tcp;
mod udp;

pub use addrs::{addresses_for, name_hash, union_for};
pub use record::{records_csv, summarize, FleetSummary, Outcome, Record};
pub use shared::{State, MAX_RECORDS};
pub use spec::{parse_duration, parse_fleet, parse_upstream, Latency, UpstreamSpec};
pub use udp::TIMER_SLACK;

use shared::Shared;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use udp::Timer;

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

impl Fleet {
    /// Starts one server per spec on 127.0.0.(11+i), each on a free port (UDP and
    /// TCP on the same one), on a thread of its own. `seed` makes runs repeatable.
    pub fn start(specs: Vec<UpstreamSpec>, seed: u64) -> io::Result<Self> {
        let n = specs.len();
        let shared = Arc::new(Shared::new(specs));
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
        let timer = Arc::new(Timer::new());
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
                    .spawn(move || udp::serve_udp(i, &udp, &sh, &timer, seed))?,
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
                            tasks.push(tokio::spawn(tcp::serve_tcp(
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
        self.timer.stop();
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
