//! What a generator run measured: counts, rcodes, latency percentiles from an HDR
//! histogram, a timeline in buckets, CPU; as text and as JSON.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Latency in microseconds, up to one minute, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid")
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// Samples.
    pub count: u64,
}

impl Percentiles {
    /// Percentiles of a histogram of microseconds (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
            count: h.len(),
        }
    }
}

/// One slice of the run's timeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Bucket {
    /// Start, seconds since the run began.
    pub t: f64,
    /// Queries sent.
    pub sent: u64,
    /// Answers received (any rcode).
    pub answered: u64,
    /// Answers with NOERROR or NXDOMAIN.
    pub good: u64,
    /// Answers with SERVFAIL.
    pub servfail: u64,
    /// Queries that timed out (counted when sent).
    pub lost: u64,
    /// Largest latency of an answer received, ms.
    pub max_ms: f64,
}

/// The counts of one phase of a run (phases are marked by a scenario's control).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseReport {
    /// When the phase began, seconds since the run began.
    pub start_s: f64,
    /// Queries sent in the phase.
    pub sent: u64,
    /// Of those, answered.
    pub answered: u64,
    /// Of those, timed out.
    pub lost: u64,
    /// Answers per rcode name.
    pub rcodes: BTreeMap<String, u64>,
    /// Their latency.
    pub latency_ms: Percentiles,
}

/// Length of one timeline bucket.
pub const BUCKET: Duration = Duration::from_millis(100);

/// The result of one generator run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// The server loaded.
    pub server: String,
    /// `udp` or `tcp`.
    pub transport: &'static str,
    /// Target rate, 0 for closed loop.
    pub rate: u64,
    /// Seconds of sending.
    pub duration_s: f64,
    /// Queries sent.
    pub sent: u64,
    /// Answers matched to a query.
    pub answered: u64,
    /// Queries without an answer within the timeout.
    pub lost: u64,
    /// `lost / sent`, percent.
    pub loss_pct: f64,
    /// Achieved rate: answers per second of sending.
    pub qps: f64,
    /// Queries sent per second.
    pub sent_qps: f64,
    /// Answers per rcode name.
    pub rcodes: BTreeMap<String, u64>,
    /// Answers with TC=1.
    pub truncated: u64,
    /// Answers that came after their query timed out, or matched none.
    pub unmatched: u64,
    /// Sends the socket refused (counted as sent and lost).
    pub send_errors: u64,
    /// Client latency of the answers.
    pub latency_ms: Percentiles,
    /// CPU time the generator's process used over the run.
    pub cpu_s: f64,
    /// CPU per query sent, microseconds.
    pub cpu_us_per_query: f64,
    /// Source ports (UDP sockets) or connections (TCP) used.
    pub sockets: usize,
    /// The timeline in [`BUCKET`] slices.
    pub timeline: Vec<Bucket>,
    /// Per phase, by send time (one phase unless a scenario marked more).
    pub phases: Vec<PhaseReport>,
    /// The latency histogram (µs), for plots and merging.
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

impl LoadReport {
    /// Answers with this rcode name.
    pub fn rcode(&self, name: &str) -> u64 {
        self.rcodes.get(name).copied().unwrap_or(0)
    }

    /// A few lines in the manner of dnsperf's summary.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let l = &self.latency_ms;
        let _ = writeln!(
            s,
            "server {} over {}, {}, {:.2} s, {} sockets",
            self.server,
            self.transport,
            if self.rate == 0 {
                "closed loop".to_string()
            } else {
                format!("{} qps target", self.rate)
            },
            self.duration_s,
            self.sockets
        );
        let _ = writeln!(
            s,
            "  queries sent {}, answered {}, lost {} ({:.3}%), unmatched {}, send errors {}",
            self.sent, self.answered, self.lost, self.loss_pct, self.unmatched, self.send_errors
        );
        let _ = writeln!(
            s,
            "  achieved {:.0} qps (sent {:.0} qps)",
            self.qps, self.sent_qps
        );
        let rc: Vec<String> = self
            .rcodes
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k} {v} ({:.2}%)",
                    100.0 * *v as f64 / self.answered.max(1) as f64
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "  rcodes: {}{}",
            rc.join(", "),
            if self.truncated > 0 {
                format!("; TC=1 {}", self.truncated)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            s,
            "  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
            l.p50, l.p90, l.p99, l.p99_9, l.max, l.mean
        );
        let _ = writeln!(
            s,
            "  generator CPU {:.3} s = {:.2} us/query",
            self.cpu_s, self.cpu_us_per_query
        );
        s
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap(); // 1..1000 ms
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 500.0).abs() <= 1.0, "{p:?}");
        assert!((p.p90 - 900.0).abs() <= 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() <= 1.0, "{p:?}");
        assert!((p.p99_9 - 999.0).abs() <= 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() <= 1.0, "{p:?}");
        assert!((p.mean - 500.5).abs() <= 1.0, "{p:?}");
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
    }

    #[test]
    fn json_has_top_level_qps_and_percentiles() {
        let mut h = new_histogram();
        h.record(250).unwrap();
        let r = LoadReport {
            server: "127.0.0.1:53".into(),
            transport: "udp",
            rate: 10,
            duration_s: 1.0,
            sent: 10,
            answered: 9,
            lost: 1,
            loss_pct: 10.0,
            qps: 9.0,
            sent_qps: 10.0,
            rcodes: BTreeMap::from([("NOERROR".to_string(), 9)]),
            truncated: 0,
            unmatched: 0,
            send_errors: 0,
            latency_ms: Percentiles::of(&h),
            cpu_s: 0.01,
            cpu_us_per_query: 1000.0,
            sockets: 1,
            timeline: vec![],
            phases: vec![],
            histogram: h,
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["qps"], 9.0);
        assert_eq!(v["rcodes"]["NOERROR"], 9);
        assert_eq!(v["latency_ms"]["p50"], 0.25);
        assert!(r.to_text().contains("lost 1 (10.000%)"));
    }
}
