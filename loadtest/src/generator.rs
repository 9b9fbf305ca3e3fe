//! The load generator: one thread, many UDP source ports, batched sends and
//! receives, open loop (a fixed rate) or closed loop (a fixed window, flat out).
//!
//! Per iteration: send what is due (open loop: `rate x elapsed` minus what was
//! sent; closed loop: whatever the window has room for) in batches of up to
//! [`BATCH`](crate::mmsg::BATCH), one `sendmmsg` per socket in turn; then wait
//! (open loop: sleep until the next query is due, at least `tick`, so answers
//! pile up and are taken in batches; closed loop: `ppoll` until an answer comes);
//! then drain every readable socket with `recvmmsg`, and expire queries older than
//! the timeout. Answers carry the kernel's receive timestamp, so latency is exact
//! however late the batch is read.
//!
//! In-flight queries: a slot per (socket, ID) holding the send time, and a FIFO of
//! sends in order; with one timeout for all, the FIFO's front is always the next to
//! expire, so expiry is O(1) per query. Every run ends by itself: sending stops at
//! `duration`, then answers are awaited at most `timeout`.

use crate::dns;
use crate::mmsg::{self, RecvBatch, SendBatch, BATCH};
use crate::names::NameSource;
use crate::report::{new_histogram, Bucket, LoadReport, Percentiles, PhaseReport, BUCKET};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How one run goes.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Where to send.
    pub server: SocketAddr,
    /// Queries per second; 0 = closed loop.
    pub rate: u64,
    /// How long to send.
    pub duration: Duration,
    /// Per-query timeout (an answer later than this is a loss).
    pub timeout: Duration,
    /// UDP sockets (source ports), or TCP connections.
    pub sockets: usize,
    /// Closed loop: queries outstanding at once. Open loop: the most in flight
    /// (past it, due queries wait).
    pub window: usize,
    /// Open loop: shortest sleep between send turns.
    pub tick: Duration,
    /// Draw a progress line on stderr (when it is a terminal).
    pub progress: bool,
    /// RNG seed (names, types).
    pub seed: u64,
    /// Use TCP (one pipelined connection per socket).
    pub tcp: bool,
    /// Closed loop: never sleep waiting for answers, poll the sockets in a busy
    /// loop (the generator owns its core; the server's replies then never have to
    /// wake it up).
    pub spin: bool,
}

impl LoadConfig {
    /// Defaults for `server`: 1000 qps for 10 s, 2 s timeout, 16 source ports.
    pub fn new(server: SocketAddr) -> Self {
        Self {
            server,
            rate: 1000,
            duration: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            sockets: 16,
            window: 100_000,
            tick: Duration::from_millis(1),
            progress: true,
            seed: 1,
            tcp: false,
            spin: false,
        }
    }
}

/// Steers a run from another thread: stop it early, or mark a new phase (the
/// report counts each phase apart, by the time its queries were sent).
#[derive(Debug, Clone, Default)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
}

impl StopHandle {
    /// Asks the run to stop sending now.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    /// Starts phase `n` (phases count from 0 and only go up).
    pub fn set_phase(&self, n: usize) {
        self.phase.fetch_max(n, Ordering::Relaxed);
    }
    pub(crate) fn phase(&self) -> usize {
        self.phase.load(Ordering::Relaxed)
    }
}

/// Counters shared by the UDP and TCP paths.
pub(crate) struct Tally {
    pub(crate) start: Instant,
    pub(crate) start_ns: u64,
    pub(crate) sent: u64,
    pub(crate) answered: u64,
    pub(crate) lost: u64,
    pub(crate) unmatched: u64,
    pub(crate) truncated: u64,
    pub(crate) send_errors: u64,
    pub(crate) rcodes: [u64; 16],
    pub(crate) hist: hdrhistogram::Histogram<u64>,
    pub(crate) timeline: Vec<Bucket>,
    /// Realtime ns at which phase i+1 began.
    pub(crate) phase_starts: Vec<u64>,
    pub(crate) phases: Vec<PhaseTally>,
}

/// The counts of one phase.
pub(crate) struct PhaseTally {
    sent: u64,
    answered: u64,
    lost: u64,
    rcodes: [u64; 16],
    hist: hdrhistogram::Histogram<u64>,
}

impl PhaseTally {
    fn new() -> Self {
        Self {
            sent: 0,
            answered: 0,
            lost: 0,
            rcodes: [0; 16],
            hist: new_histogram(),
        }
    }
}

fn rcode_map(rcodes: &[u64; 16]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (i, &n) in rcodes.iter().enumerate() {
        if n > 0 {
            let name = match dns::rcode_name(i as u8) {
                "OTHER" => format!("RCODE{i}"),
                s => s.to_string(),
            };
            m.insert(name, n);
        }
    }
    m
}

impl Tally {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            start_ns: mmsg::realtime_ns(),
            sent: 0,
            answered: 0,
            lost: 0,
            unmatched: 0,
            truncated: 0,
            send_errors: 0,
            rcodes: [0; 16],
            hist: new_histogram(),
            timeline: Vec::new(),
            phase_starts: Vec::new(),
            phases: vec![PhaseTally::new()],
        }
    }

    /// Follows the control's phase; call once per loop turn.
    pub(crate) fn follow_phase(&mut self, control: &StopHandle) {
        while control.phase() > self.phase_starts.len() {
            self.phase_starts.push(mmsg::realtime_ns());
            self.phases.push(PhaseTally::new());
        }
    }

    fn phase_of(&mut self, sent_ns: u64) -> &mut PhaseTally {
        let i = self.phase_starts.partition_point(|&s| s <= sent_ns);
        &mut self.phases[i]
    }

    fn bucket(&mut self, at_ns: u64) -> &mut Bucket {
        let i = (at_ns.saturating_sub(self.start_ns) / BUCKET.as_nanos() as u64) as usize;
        let i = i.min(100_000);
        while self.timeline.len() <= i {
            let t = self.timeline.len() as f64 * BUCKET.as_secs_f64();
            self.timeline.push(Bucket {
                t,
                ..Bucket::default()
            });
        }
        &mut self.timeline[i]
    }

    pub(crate) fn on_sent(&mut self, at_ns: u64, n: u64) {
        self.sent += n;
        self.bucket(at_ns).sent += n;
        self.phase_of(at_ns).sent += n;
    }

    pub(crate) fn on_lost(&mut self, sent_ns: u64) {
        self.lost += 1;
        self.bucket(sent_ns).lost += 1;
        self.phase_of(sent_ns).lost += 1;
    }

    pub(crate) fn on_answer(&mut self, msg: &[u8], sent_ns: u64, rx_ns: u64) {
        let rcode = dns::rcode_of(msg).unwrap_or(0);
        self.answered += 1;
        self.rcodes[rcode as usize & 0x0F] += 1;
        if msg.len() > 2 && msg[2] & 0x02 != 0 {
            self.truncated += 1;
        }
        let us = (rx_ns.saturating_sub(sent_ns) / 1000).max(1);
        let _ = self.hist.record(us.min(60_000_000));
        let ph = self.phase_of(sent_ns);
        ph.answered += 1;
        ph.rcodes[rcode as usize & 0x0F] += 1;
        let _ = ph.hist.record(us.min(60_000_000));
        let b = self.bucket(rx_ns);
        b.answered += 1;
        match rcode {
            dns::NOERROR | dns::NXDOMAIN => b.good += 1,
            dns::SERVFAIL => b.servfail += 1,
            _ => {}
        }
        b.max_ms = b.max_ms.max(us as f64 / 1000.0);
    }

    pub(crate) fn finish(
        self,
        cfg: &LoadConfig,
        send_time: Duration,
        cpu: Duration,
        sockets: usize,
    ) -> LoadReport {
        let secs = send_time.as_secs_f64().max(1e-9);
        let rcodes = rcode_map(&self.rcodes);
        let phases = self
            .phases
            .iter()
            .enumerate()
            .map(|(i, p)| PhaseReport {
                start_s: if i == 0 {
                    0.0
                } else {
                    self.phase_starts[i - 1].saturating_sub(self.start_ns) as f64 / 1e9
                },
                sent: p.sent,
                answered: p.answered,
                lost: p.lost,
                rcodes: rcode_map(&p.rcodes),
                latency_ms: Percentiles::of(&p.hist),
            })
            .collect();
        LoadReport {
            server: cfg.server.to_string(),
            transport: if cfg.tcp { "tcp" } else { "udp" },
            rate: cfg.rate,
            duration_s: secs,
            sent: self.sent,
            answered: self.answered,
            lost: self.lost,
            loss_pct: 100.0 * self.lost as f64 / self.sent.max(1) as f64,
            qps: self.answered as f64 / secs,
            sent_qps: self.sent as f64 / secs,
            rcodes,
            truncated: self.truncated,
            unmatched: self.unmatched,
            send_errors: self.send_errors,
            latency_ms: Percentiles::of(&self.hist),
            cpu_s: cpu.as_secs_f64(),
            cpu_us_per_query: cpu.as_secs_f64() * 1e6 / self.sent.max(1) as f64,
            sockets,
            timeline: self.timeline,
            phases,
            histogram: self.hist,
        }
    }
}

/// The progress line: elapsed of total, answers per second, loss.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    last: Instant,
    last_answered: u64,
}

impl Progress {
    pub(crate) fn new(enabled: bool, duration: Duration) -> Self {
        let bar = enabled.then(|| {
            let b = ProgressBar::with_draw_target(
                Some(duration.as_millis() as u64),
                ProgressDrawTarget::stderr_with_hz(5),
            );
            b.set_style(
                ProgressStyle::with_template("{bar:16} {elapsed:>3}/{duration} {msg}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            b
        });
        Self {
            bar,
            last: Instant::now(),
            last_answered: 0,
        }
    }

    pub(crate) fn update(&mut self, t: &Tally, now: Instant) {
        let Some(bar) = &self.bar else { return };
        let dt = now.duration_since(self.last);
        if dt < Duration::from_millis(200) {
            return;
        }
        let qps = (t.answered - self.last_answered) as f64 / dt.as_secs_f64();
        self.last = now;
        self.last_answered = t.answered;
        bar.set_position(now.duration_since(t.start).as_millis() as u64);
        bar.set_message(format!(
            "{qps:>7.0} qps, sent {} answered {} lost {}",
            t.sent, t.answered, t.lost
        ));
    }

    pub(crate) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// One UDP source port: its socket and its in-flight slots (send time, 0 = free).
struct Port {
    /// Owns the descriptor `fd` refers to.
    _sock: Socket,
    fd: RawFd,
    slots: Vec<u64>,
    next_id: u16,
}

impl Port {
    fn open(server: SocketAddr) -> io::Result<Self> {
        let sock = Socket::new(
            Domain::for_address(server),
            Type::DGRAM,
            Some(Protocol::UDP),
        )?;
        let _ = sock.set_recv_buffer_size(4 << 20);
        let _ = sock.set_send_buffer_size(4 << 20);
        let any: SocketAddr = if server.is_ipv4() {
            ([127, 0, 0, 1], 0).into()
        } else {
            (std::net::Ipv6Addr::LOCALHOST, 0).into()
        };
        sock.bind(&any.into())?;
        sock.connect(&server.into())?;
        sock.set_nonblocking(true)?;
        mmsg::enable_rx_timestamps(&sock)?;
        let fd = sock.as_raw_fd();
        Ok(Self {
            _sock: sock,
            fd,
            slots: vec![0; 65536],
            next_id: 0,
        })
    }

    /// A free ID, if one is found in a few tries.
    fn take_id(&mut self) -> Option<u16> {
        for _ in 0..64 {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if self.slots[id as usize] == 0 {
                return Some(id);
            }
        }
        None
    }
}

/// Refuses anything but loopback: this harness never sends elsewhere.
pub fn check_loopback(addr: SocketAddr) -> io::Result<()> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr}: the load generator only sends to loopback addresses"),
        ))
    }
}

/// Runs the generator until `duration` (or `stop`), then waits at most `timeout`
/// for the answers still due.
pub fn run(cfg: &LoadConfig, source: &mut NameSource, stop: &StopHandle) -> io::Result<LoadReport> {
    check_loopback(cfg.server)?;
    if cfg.tcp {
        return crate::tcp_gen::run(cfg, source, stop);
    }
    let mut ports: Vec<Port> = (0..cfg.sockets.max(1))
        .map(|_| Port::open(cfg.server))
        .collect::<io::Result<_>>()?;
    let fds: Vec<RawFd> = ports.iter().map(|p| p.fd).collect();
    let mut ready = vec![false; ports.len()];
    let mut rng = SmallRng::seed_from_u64(cfg.seed);
    let mut rx = RecvBatch::new();
    let mut tx = SendBatch::new();
    let mut scratch = String::new();
    // (port, id, send time) in send order
    let mut fifo: VecDeque<(u16, u16, u64)> = VecDeque::with_capacity(cfg.window.min(1 << 20));
    let mut in_flight = 0usize;
    let timeout_ns = cfg.timeout.as_nanos() as u64;
    let window = cfg.window.max(1);
    let mut progress = Progress::new(cfg.progress, cfg.duration);

    let cpu0 = mmsg::process_cpu();
    let mut t = Tally::new();
    let start = t.start;
    let end = start + cfg.duration;
    let mut next_port = 0usize;
    let mut sending = true;
    let mut send_end = end;
    let drain_end = |send_end: Instant| send_end + cfg.timeout;

    loop {
        let now = Instant::now();
        if sending && (now >= end || stop.stopped()) {
            sending = false;
            send_end = now.min(end);
        }
        if !sending && (in_flight == 0 || now >= drain_end(send_end)) {
            break;
        }

        // 1. send what is due
        if sending {
            let room = window.saturating_sub(in_flight);
            let mut due = if cfg.rate == 0 {
                room
            } else {
                let target = (cfg.rate as f64 * now.duration_since(start).as_secs_f64()) as u64;
                (target.saturating_sub(t.sent) as usize).min(room)
            };
            while due > 0 {
                let p = next_port;
                next_port = (next_port + 1) % ports.len();
                let port = &mut ports[p];
                let n = due.min(BATCH);
                let mut ids = [0u16; BATCH];
                let mut k = 0;
                while k < n {
                    let Some(id) = port.take_id() else { break };
                    source.next_query(&mut rng, id, tx.next_buffer(), &mut scratch);
                    tx.commit(None);
                    ids[k] = id;
                    k += 1;
                }
                if k == 0 {
                    break;
                }
                let sent_ns = mmsg::realtime_ns();
                let ok = match tx.flush(port.fd) {
                    Ok(ok) => ok,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => 0,
                    Err(e) => return Err(e),
                };
                t.on_sent(sent_ns, k as u64);
                t.send_errors += (k - ok) as u64;
                for (j, &id) in ids[..k].iter().enumerate() {
                    if j < ok {
                        port.slots[id as usize] = sent_ns;
                        fifo.push_back((p as u16, id, sent_ns));
                        in_flight += 1;
                    } else {
                        t.on_lost(sent_ns);
                    }
                }
                due -= k;
            }
        }

        // 2. wait
        let now = Instant::now();
        let limit = if sending { end } else { drain_end(send_end) };
        let mut wait = limit
            .saturating_duration_since(now)
            .min(Duration::from_millis(10));
        if let Some(&(_, _, oldest)) = fifo.front() {
            let expires =
                Duration::from_nanos((oldest + timeout_ns).saturating_sub(mmsg::realtime_ns()));
            wait = wait.min(expires);
        }
        let polled = if sending && cfg.rate > 0 {
            let next_due = Duration::from_secs_f64((t.sent + 1) as f64 / cfg.rate as f64)
                .saturating_sub(now.duration_since(start));
            let sleep = next_due.max(cfg.tick).min(wait);
            if !sleep.is_zero() {
                std::thread::sleep(sleep);
            }
            mmsg::poll_readable(&fds, &mut ready, Duration::ZERO)?
        } else if sending && (window > in_flight || cfg.spin) {
            mmsg::poll_readable(&fds, &mut ready, Duration::ZERO)?
        } else {
            mmsg::poll_readable(&fds, &mut ready, wait)?
        };

        // 3. receive
        if polled > 0 {
            for (p, port) in ports.iter_mut().enumerate() {
                if !ready[p] {
                    continue;
                }
                for _ in 0..16 {
                    let n = rx.recv(port.fd)?;
                    let fallback_ns = mmsg::realtime_ns();
                    for i in 0..n {
                        let msg = rx.datagram(i);
                        let Some(id) = dns::message_id(msg) else {
                            t.unmatched += 1;
                            continue;
                        };
                        let slot = &mut port.slots[id as usize];
                        if *slot == 0 || msg.len() < dns::HEADER_LEN || msg[2] & 0x80 == 0 {
                            t.unmatched += 1;
                            continue;
                        }
                        let sent_ns = std::mem::take(slot);
                        in_flight -= 1;
                        let rx_ns = rx.timestamp(i).unwrap_or(fallback_ns);
                        t.on_answer(msg, sent_ns, rx_ns);
                    }
                    if n < BATCH {
                        break;
                    }
                }
            }
        }

        // 4. expire
        let now_ns = mmsg::realtime_ns();
        let hard_stop = !sending && Instant::now() >= drain_end(send_end);
        while let Some(&(p, id, sent_ns)) = fifo.front() {
            let slot = &mut ports[p as usize].slots[id as usize];
            if *slot != sent_ns {
                fifo.pop_front(); // answered (or slot reused after an answer)
                continue;
            }
            if now_ns < sent_ns + timeout_ns && !hard_stop {
                break;
            }
            *slot = 0;
            in_flight -= 1;
            t.on_lost(sent_ns);
            fifo.pop_front();
        }
        t.follow_phase(stop);
        progress.update(&t, Instant::now());
    }
    // whatever is still in flight at the hard stop is lost
    for (p, id, sent_ns) in fifo {
        let slot = &mut ports[p as usize].slots[id as usize];
        if *slot == sent_ns {
            *slot = 0;
            t.on_lost(sent_ns);
        }
    }
    progress.finish();
    let cpu = mmsg::process_cpu().saturating_sub(cpu0);
    let n = ports.len();
    drop(ports);
    Ok(t.finish(cfg, send_end.duration_since(start), cpu, n))
}
