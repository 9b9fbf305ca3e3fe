//! `outage`: every upstream fails mid-run, then comes back; twice, once with
//! upstreams that go silent (every query dropped: tierdns waits out its timeouts)
//! and once with upstreams that fail fast (every query answered SERVFAIL).
//!
//! Zipf over 500 names at 1000 qps, fleet TTL 2 s (entries expire during the
//! outage, so what tierdns can still give is stale answers). Phases: up for `d`,
//! all upstreams failing for `d`, up again for `2d` (`d` = `--duration`, default
//! 4 s); a fresh tierdns and fleet per failure mode. Per phase, by send time: answers, SERVFAIL, lost,
//! stale answers (`tierdns_cache_total{result="stale"}` over the phase) and
//! latency. Recovery time: from the upstreams' return to the start of the first
//! second in which every query got a good answer (NOERROR/NXDOMAIN, not lost),
//! from the generator's 100 ms timeline.

use super::{f, load_config, metrics_sum, run_load, Ctx, Outcome, Table, Tierdns};
use crate::fleet::{self, Fleet, State};
use crate::generator::StopHandle;
use crate::names::{NameSource, QtypeMix, Zipf};
use crate::report::{Bucket, BUCKET};
use std::time::{Duration, Instant};

const SPEC: &str = "10ms/ttl=2,20ms/ttl=2,30ms/ttl=2,40ms/ttl=2,50ms/ttl=2";

/// Seconds from `from_s` until the first run of `window` buckets that are all
/// good (sent > 0, every query answered well, none lost); None if never.
pub(super) fn recovery_s(timeline: &[Bucket], from_s: f64, window: usize) -> Option<f64> {
    let start = (from_s / BUCKET.as_secs_f64()).floor() as usize;
    let good = |b: &Bucket| b.sent > 0 && b.lost == 0 && b.servfail == 0 && b.good == b.answered;
    (start..timeline.len().saturating_sub(window - 1))
        .find(|&i| timeline[i..i + window].iter().all(good))
        .map(|i| (i as f64 * BUCKET.as_secs_f64() - from_s).max(0.0))
}

/// What one failure mode's run gave.
struct ModeRun {
    report: crate::report::LoadReport,
    /// `tierdns_cache_total{result="stale"}` at each phase boundary and the end.
    stale: Vec<f64>,
    /// Fleet queries at the same moments.
    upstream: Vec<u64>,
}

fn stale_now(td: &Tierdns) -> Result<f64, String> {
    Ok(metrics_sum(
        &td.scrape()?,
        "tierdns_cache_total",
        &["result=\"stale\""],
    ))
}

fn run_mode(ctx: &Ctx, mode: State, d: Duration, rate: u64) -> Result<ModeRun, String> {
    let specs = fleet::parse_fleet(SPEC)?;
    let n = specs.len();
    let fl = Fleet::start(specs, ctx.args.seed).map_err(|e| format!("fleet: {e}"))?;
    let cfg = ctx.config(fl.addrs.clone())?;
    let td = Tierdns::start(&ctx.bin, &ctx.dir, &format!("outage-{mode:?}"), &cfg)?;
    std::thread::sleep(Duration::from_millis(200));
    let source = NameSource::Zipf {
        zipf: Zipf::new(500, 1.0)?,
        mix: QtypeMix::parse("A")?,
        zone: "outage.test".into(),
    };
    let control = StopHandle::default();
    let mut lc = load_config(ctx, td.addr, rate, d * 4);
    lc.timeout = Duration::from_secs(3);
    eprintln!(
        "outage ({mode:?}): {rate} qps; upstreams failing from {:.0} s to {:.0} s; run {:.0} s",
        d.as_secs_f64(),
        2.0 * d.as_secs_f64(),
        4.0 * d.as_secs_f64()
    );
    let mut stale = vec![stale_now(&td)?];
    let mut upstream = vec![fl.total_queries()];
    let gen = {
        let control = control.clone();
        std::thread::spawn(move || run_load(lc, source, control))
    };
    let t0 = Instant::now();
    let wait_until = |t: Duration| std::thread::sleep(t.saturating_sub(t0.elapsed()));
    wait_until(d);
    stale.push(stale_now(&td)?);
    upstream.push(fl.total_queries());
    for i in 0..n {
        fl.set_state(i, mode);
    }
    control.set_phase(1);
    wait_until(d * 2);
    stale.push(stale_now(&td)?);
    upstream.push(fl.total_queries());
    for i in 0..n {
        fl.set_state(i, State::Up);
    }
    control.set_phase(2);
    let report = gen.join().map_err(|_| "generator thread panicked")??;
    std::thread::sleep(Duration::from_millis(500));
    stale.push(stale_now(&td)?);
    upstream.push(fl.total_queries());
    td.stop();
    fl.stop();
    Ok(ModeRun {
        report,
        stale,
        upstream,
    })
}

pub(super) fn run(ctx: &Ctx) -> Result<Outcome, String> {
    let d = ctx.args.duration_or(4.0);
    let rate = ctx.args.rate.unwrap_or(1000);
    let mut table = Table::new(&[
        "upstreams",
        "phase",
        "seconds",
        "queries",
        "good answers %",
        "SERVFAIL",
        "lost",
        "stale answers",
        "upstream queries",
        "p50 ms",
        "p99 ms",
    ]);
    let mut notes = vec![format!(
        "Fleet {SPEC} (TTL 2 s); Zipf s=1 over 500 names at {rate} qps; every upstream fails from {:.0} s to {:.0} s (silent: drops every query; SERVFAIL: answers SERVFAIL at once), then answers again; tierdns 1 shard, default [cache] (serve-stale on), a fresh one per failure mode.",
        d.as_secs_f64(),
        2.0 * d.as_secs_f64()
    )];
    let mut runs = Vec::new();
    let mut extra = serde_json::Map::new();
    let phases = ["before (all up)", "outage (all failing)", "after (all up)"];
    for (mode, label) in [(State::Down, "silent"), (State::ServFail, "SERVFAIL")] {
        let m = run_mode(ctx, mode, d, rate)?;
        let report = m.report;
        for (i, ph) in report.phases.iter().enumerate().take(3) {
            let end = report
                .phases
                .get(i + 1)
                .map_or(report.duration_s, |p| p.start_s);
            let good = ph.rcodes.get("NOERROR").copied().unwrap_or(0)
                + ph.rcodes.get("NXDOMAIN").copied().unwrap_or(0);
            let delta_stale =
                m.stale.get(i + 1).copied().unwrap_or(0.0) - m.stale.get(i).copied().unwrap_or(0.0);
            let delta_up = m.upstream.get(i + 1).copied().unwrap_or(0)
                - m.upstream.get(i).copied().unwrap_or(0);
            table.push(vec![
                label.into(),
                phases[i].into(),
                f(end - ph.start_s, 1),
                ph.sent.to_string(),
                f(100.0 * good as f64 / ph.sent.max(1) as f64, 2),
                ph.rcodes.get("SERVFAIL").copied().unwrap_or(0).to_string(),
                ph.lost.to_string(),
                f(delta_stale, 0),
                delta_up.to_string(),
                f(ph.latency_ms.p50, 1),
                f(ph.latency_ms.p99, 1),
            ]);
        }
        let back = report
            .phases
            .get(2)
            .map_or(2.0 * d.as_secs_f64(), |p| p.start_s);
        let recovery = recovery_s(&report.timeline, back, 10);
        let rec_text = match recovery {
            Some(s) => format!("{s:.1} s"),
            None => format!("not within the {:.1} s left", report.duration_s - back),
        };
        notes.push(format!(
            "Recovery, {label} upstreams (first full second of only good answers after they returned): {rec_text}."
        ));
        extra.insert(
            label.into(),
            serde_json::json!({
                "recovery_s": recovery,
                "stale_counter": m.stale,
                "upstream_queries": m.upstream,
            }),
        );
        runs.push((format!("outage, {label} upstreams"), report));
    }
    Ok(Outcome {
        table,
        notes,
        runs,
        extra: serde_json::Value::Object(extra),
        failure: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(t: f64, sent: u64, good: u64, servfail: u64, lost: u64) -> Bucket {
        Bucket {
            t,
            sent,
            answered: good + servfail,
            good,
            servfail,
            lost,
            max_ms: 1.0,
        }
    }

    #[test]
    fn recovery_is_the_first_clean_window_after_the_return() {
        let mut tl: Vec<Bucket> = (0..10).map(|i| b(i as f64 / 10.0, 10, 10, 0, 0)).collect();
        tl.extend((10..25).map(|i| b(i as f64 / 10.0, 10, 2, 8, 0))); // bad until 2.5 s
        tl.extend((25..30).map(|i| b(i as f64 / 10.0, 10, 9, 0, 1))); // lost until 3.0 s
        tl.extend((30..60).map(|i| b(i as f64 / 10.0, 10, 10, 0, 0)));
        let r = recovery_s(&tl, 2.0, 10).unwrap();
        assert!((r - 1.0).abs() < 1e-9, "{r}");
        assert_eq!(
            recovery_s(&tl[..35], 2.0, 10),
            None,
            "too short to see a clean second"
        );
    }
}
