//! What the fleet saw: one [`Record`] per query, and the figures drawn from them
//! (peaks in flight, fleet-wide, per upstream and per name; completion per name).

use std::collections::HashMap;

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
    /// [`name_hash`](super::addrs::name_hash) of the question name.
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

#[cfg(test)]
mod tests {
    use super::*;

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
