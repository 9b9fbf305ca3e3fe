//! What both transports of the generator share: how a run goes ([`LoadConfig`]),
//! how it is stopped and split in phases ([`StopHandle`]), what it counts
//! (`Tally`, turned into the [`LoadReport`]) and the progress line it shows.
//! `generator` (UDP) and `tcp_gen` both import it, so neither imports the other's
//! types; `generator` re-exports the public ones.

use crate::dns;
use crate::mmsg;
use crate::report::{new_histogram, Bucket, LoadReport, Percentiles, PhaseReport, BUCKET};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::net::SocketAddr;
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
