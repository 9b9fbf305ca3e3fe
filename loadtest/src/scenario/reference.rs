//! `reference`: five upstreams at 20/40/80/150/300 ms; never-seen names at a
//! modest rate (100 qps, no budget binds); one row per strategy, each on a fresh
//! tierdns (empty cache, no health history) and a fresh fleet.
//!
//! Columns: client p50/p99 (generator); peak upstream in flight = the most of one
//! name's upstream queries in flight at once, over all names (fleet records);
//! upstream queries per miss = fleet queries / names asked (every query is a
//! miss); addresses cached % = for a sample of names, after background completion
//! had its time, the share of the fleet's union of addresses that tierdns returns;
//! completion ms = median over names of last upstream answer minus first upstream
//! query.

use super::{f, load_config, probe, run_load, Ctx, Outcome, Table, Tierdns};
use crate::dns;
use crate::fleet::{self, Fleet};
use crate::generator::StopHandle;
use crate::names::{self, NameSource, QtypeMix};
use std::time::Duration;

/// The fleet of the reference table.
pub(super) const SPEC: &str = "20ms,40ms,80ms,150ms,300ms";
/// Names sampled for the addresses-cached column.
const SAMPLE: u64 = 50;
/// Zone of the generated names.
const ZONE: &str = "ref.test";

/// What one strategy's run gave.
pub(super) struct Row {
    pub(super) cells: Vec<String>,
    pub(super) report: crate::report::LoadReport,
    pub(super) fleet: fleet::FleetSummary,
}

/// Runs one strategy: fleet, tierdns, load, completion wait, sample.
pub(super) fn run_strategy(
    ctx: &Ctx,
    strategy: &str,
    rate: u64,
    duration: Duration,
) -> Result<Row, String> {
    let specs = fleet::parse_fleet(SPEC)?;
    let fl = Fleet::start(specs.clone(), ctx.args.seed).map_err(|e| format!("fleet: {e}"))?;
    let mut cfg = ctx.config(fl.addrs.clone())?;
    cfg.strategy = strategy.into();
    let td = Tierdns::start(&ctx.bin, &ctx.dir, &format!("reference-{strategy}"), &cfg)?;
    // let the readiness probe's flight finish before counting
    std::thread::sleep(Duration::from_millis(400));
    fl.reset();
    let tag = format!("{strategy}{}", ctx.args.seed);
    let source = NameSource::Unique {
        mix: QtypeMix::parse("A")?,
        tag: tag.clone(),
        zone: ZONE.into(),
        next: 0,
    };
    let mut lc = load_config(ctx, td.addr, rate, duration);
    lc.timeout = Duration::from_secs(3);
    lc.sockets = 4;
    let report = run_load(lc, source, StopHandle::default())?;
    // background completion: total_collect_timeout is 3 s by default
    std::thread::sleep(Duration::from_millis(3300));
    let summary = fl.summary();
    let asked = report.sent.max(1);
    let step = (asked / SAMPLE).max(1);
    let (mut have, mut want) = (0usize, 0usize);
    for i in (0..asked).step_by(step as usize).take(SAMPLE as usize) {
        let name = names::unique_name(i, &tag, ZONE);
        let union = fleet::union_for(&specs, &name, dns::TYPE_A);
        want += union.len();
        if let Some(r) = probe(td.addr, &name, dns::TYPE_A, Duration::from_secs(1)) {
            have += r.addresses.iter().filter(|a| union.contains(a)).count();
        }
    }
    td.stop();
    fl.stop();
    let l = &report.latency_ms;
    let cells = vec![
        strategy.to_string(),
        f(l.p50, 1),
        f(l.p99, 1),
        summary.peak_per_name.to_string(),
        f(summary.total as f64 / asked as f64, 2),
        f(100.0 * have as f64 / want.max(1) as f64, 0),
        f(summary.completion_ms_p50, 0),
    ];
    Ok(Row {
        cells,
        report,
        fleet: summary,
    })
}

pub(super) fn run(ctx: &Ctx) -> Result<Outcome, String> {
    let rate = ctx.args.rate.unwrap_or(100);
    let duration = ctx.args.duration_or(10.0);
    let mut table = Table::new(&[
        "strategy",
        "p50 ms",
        "p99 ms",
        "peak upstream in flight",
        "upstream queries per miss",
        "addresses cached %",
        "completion ms",
    ]);
    let mut runs = Vec::new();
    let mut extra = serde_json::Map::new();
    let mut notes = Vec::new();
    for strategy in ["staggered", "parallel", "sequential"] {
        eprintln!(
            "reference: {strategy}, {rate} qps of never-seen names for {:.0} s",
            duration.as_secs_f64()
        );
        let row = run_strategy(ctx, strategy, rate, duration)?;
        let r = &row.report;
        if r.lost > 0 || r.rcode("NOERROR") != r.answered {
            notes.push(format!(
                "- {strategy}: {} sent, {} lost, rcodes {:?}",
                r.sent, r.lost, r.rcodes
            ));
        }
        table.push(row.cells);
        extra.insert(
            strategy.into(),
            serde_json::to_value(&row.fleet).unwrap_or_default(),
        );
        runs.push((strategy.to_string(), row.report));
    }
    notes.insert(
        0,
        format!(
            "Fleet {SPEC} (2 addresses each per name); {rate} qps of never-seen names for {:.0} s per strategy; tierdns 1 shard, default [tiers]; completion and addresses after a {:.1} s wait.",
            duration.as_secs_f64(),
            3.3
        ),
    );
    Ok(Outcome {
        table,
        notes,
        runs,
        extra: serde_json::Value::Object(extra),
        failure: None,
    })
}
