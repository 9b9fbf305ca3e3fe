//! `hit-rate`: a Zipf mix over a million names (one row per exponent, each on a
//! fresh tierdns with the same fleet), against an ideal cache.
//!
//! The ideal hit rate replays the generator's draws (same seed, same count):
//! 1 - distinct names / queries, what an unbounded cache that never expires and
//! answers every repeat from memory would do. tierdns' own hit rate comes from
//! `tierdns_cache_total{result}`: hit / (hit + miss + stale); a query that joins a
//! flight in progress counts as a miss there.

use super::{f, load_config, metrics_sum, run_load, Ctx, Outcome, Table, Tierdns};
use crate::fleet::{self, Fleet};
use crate::generator::StopHandle;
use crate::names::{NameSource, QtypeMix, Zipf};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::collections::HashSet;
use std::time::Duration;

const NAMES: usize = 1_000_000;
const SPEC: &str = "2ms,4ms,6ms,8ms,10ms";
const ZONE: &str = "zipf.test";

fn source(zipf: &Zipf) -> Result<NameSource, String> {
    Ok(NameSource::Zipf {
        zipf: zipf.clone(),
        mix: QtypeMix::parse("A")?,
        zone: ZONE.into(),
    })
}

/// 1 - distinct/queries over the first `n` draws with `seed`.
fn ideal_hit_rate(zipf: &Zipf, seed: u64, n: u64) -> Result<f64, String> {
    let mut src = source(zipf)?;
    let mut rng = SmallRng::seed_from_u64(seed);
    let (mut out, mut scratch) = (Vec::new(), String::new());
    let mut seen = HashSet::new();
    for _ in 0..n {
        src.next_query(&mut rng, 0, &mut out, &mut scratch);
        seen.insert(out.clone());
    }
    Ok(1.0 - seen.len() as f64 / n.max(1) as f64)
}

pub(super) fn run(ctx: &Ctx) -> Result<Outcome, String> {
    let rate = ctx.args.rate.unwrap_or(5000);
    let duration = ctx.args.duration_or(8.0);
    let specs = fleet::parse_fleet(SPEC)?;
    let fl = Fleet::start(specs, ctx.args.seed).map_err(|e| format!("fleet: {e}"))?;
    let mut table = Table::new(&[
        "zipf s",
        "names",
        "queries",
        "qps",
        "hit rate %",
        "ideal hit rate %",
        "p50 ms",
        "p99 ms",
        "upstream queries per miss",
    ]);
    let mut runs = Vec::new();
    let mut fleet_late = Vec::new();
    for s in [0.8, 1.0, 1.2] {
        eprintln!(
            "hit-rate: zipf s = {s} over {NAMES} names, {rate} qps for {:.0} s",
            duration.as_secs_f64()
        );
        let zipf = Zipf::new(NAMES, s)?;
        let cfg = ctx.config(fl.addrs.clone())?;
        let td = Tierdns::start(&ctx.bin, &ctx.dir, &format!("hit-rate-{s}"), &cfg)?;
        std::thread::sleep(Duration::from_millis(100));
        fl.reset();
        let report = run_load(
            load_config(ctx, td.addr, rate, duration),
            source(&zipf)?,
            StopHandle::default(),
        )?;
        std::thread::sleep(Duration::from_millis(500)); // a metrics flush
        let m = td.scrape()?;
        td.stop();
        let hit = metrics_sum(&m, "tierdns_cache_total", &["result=\"hit\""]);
        let miss = metrics_sum(&m, "tierdns_cache_total", &["result=\"miss\""]);
        let stale = metrics_sum(&m, "tierdns_cache_total", &["result=\"stale\""]);
        let ideal = ideal_hit_rate(&zipf, ctx.args.seed, report.sent)?;
        let upstream = fl.total_queries();
        fleet_late.push(f(fl.summary().fleet_late_ms_p99, 2));
        let l = report.latency_ms;
        table.push(vec![
            f(s, 1),
            NAMES.to_string(),
            report.sent.to_string(),
            f(report.qps, 0),
            f(100.0 * hit / (hit + miss + stale).max(1.0), 1),
            f(100.0 * ideal, 1),
            f(l.p50, 2),
            f(l.p99, 2),
            f(upstream as f64 / miss.max(1.0), 2),
        ]);
        runs.push((format!("zipf s={s}"), report));
    }
    fl.stop();
    let notes = vec![format!(
        "Fleet {SPEC}, TTL 300 s; {rate} qps for {:.0} s per row; a fresh tierdns (1 shard, empty cache) per row. Ideal: 1 - distinct/queries of the same draws. Fleet late p99 (ms past the drawn delay, per row): {}.",
        duration.as_secs_f64(),
        fleet_late.join(", ")
    )];
    Ok(Outcome {
        table,
        notes,
        runs,
        extra: serde_json::Value::Null,
        failure: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ideal_hit_rate_counts_repeats() {
        // one name: every query after the first is a hit
        let z = Zipf::new(1, 1.0).unwrap();
        assert!((ideal_hit_rate(&z, 1, 100).unwrap() - 0.99).abs() < 1e-9);
        // a million names, 100 uniform draws: almost no repeats
        let z = Zipf::new(NAMES, 0.0).unwrap();
        assert!(ideal_hit_rate(&z, 1, 100).unwrap() < 0.02);
    }
}
