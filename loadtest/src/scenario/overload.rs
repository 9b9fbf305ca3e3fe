//! `overload`: measure capacity, then offer twice that.
//!
//! tierdns runs with `[limits] max_client_in_flight = 256` (one shard) in front of
//! a fleet at 40..60 ms, so its capacity for misses is about 256 / 50 ms. First a
//! closed-loop probe with a window of 256 never-seen names measures the answered
//! rate (the capacity); then an open-loop run at twice that. Reported: what was
//! admitted (answered) and its latency, what was lost, and tierdns' drops by reason
//! (`tierdns_drops_total`, the difference over each run).

use super::{f, load_config, metrics_by_label, run_load, Ctx, Outcome, Table, Tierdns};
use crate::fleet::{self, Fleet};
use crate::generator::StopHandle;
use crate::names::{NameSource, QtypeMix};
use std::collections::BTreeMap;
use std::time::Duration;

const SPEC: &str = "40ms,45ms,50ms,55ms,60ms";
const LIMIT: usize = 256;

fn drops(td: &Tierdns) -> Result<BTreeMap<String, f64>, String> {
    Ok(metrics_by_label(
        &td.scrape()?,
        "tierdns_drops_total",
        "reason",
    ))
}

fn diff(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> String {
    let parts: Vec<String> = after
        .iter()
        .map(|(k, v)| (k, v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .map(|(k, d)| format!("{k} {d:.0}"))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

pub(super) fn run(ctx: &Ctx) -> Result<Outcome, String> {
    let duration = ctx.args.duration_or(6.0);
    let specs = fleet::parse_fleet(SPEC)?;
    let fl = Fleet::start(specs, ctx.args.seed).map_err(|e| format!("fleet: {e}"))?;
    let mut cfg = ctx.config(fl.addrs.clone())?;
    cfg.limits.push(format!("max_client_in_flight = {LIMIT}"));
    let td = Tierdns::start(&ctx.bin, &ctx.dir, "overload", &cfg)?;
    std::thread::sleep(Duration::from_millis(200));
    let mut table = Table::new(&[
        "run",
        "offered qps",
        "answered qps",
        "admitted p50 ms",
        "admitted p99 ms",
        "lost %",
        "SERVFAIL",
        "drops by reason",
    ]);
    let mut runs = Vec::new();
    let unique = |tag: &str| -> Result<NameSource, String> {
        Ok(NameSource::Unique {
            mix: QtypeMix::parse("A")?,
            tag: format!("{tag}{}", ctx.args.seed),
            zone: "overload.test".into(),
            next: 0,
        })
    };

    eprintln!(
        "overload: capacity probe, closed loop, window {LIMIT}, {:.0} s",
        duration.as_secs_f64()
    );
    let d0 = drops(&td)?;
    let mut lc = load_config(ctx, td.addr, 0, duration);
    lc.window = LIMIT;
    lc.timeout = Duration::from_secs(1);
    let probe = run_load(lc, unique("cap")?, StopHandle::default())?;
    std::thread::sleep(Duration::from_millis(500));
    let d1 = drops(&td)?;
    let capacity = probe.rcode("NOERROR") as f64 / probe.duration_s.max(1e-9);
    let push = |table: &mut Table,
                name: &str,
                offered: String,
                r: &crate::report::LoadReport,
                d: String| {
        table.push(vec![
            name.into(),
            offered,
            f(r.qps, 0),
            f(r.latency_ms.p50, 1),
            f(r.latency_ms.p99, 1),
            f(r.loss_pct, 2),
            r.rcode("SERVFAIL").to_string(),
            d,
        ]);
    };
    push(
        &mut table,
        &format!("capacity probe (closed loop, window {LIMIT})"),
        "-".into(),
        &probe,
        diff(&d1, &d0),
    );
    runs.push(("capacity probe".to_string(), probe));

    let rate = ctx
        .args
        .rate
        .unwrap_or((2.0 * capacity).round().max(100.0) as u64);
    eprintln!(
        "overload: {rate} qps (2 x capacity {capacity:.0}) for {:.0} s",
        duration.as_secs_f64()
    );
    let mut lc = load_config(ctx, td.addr, rate, duration);
    lc.timeout = Duration::from_secs(1);
    let over = run_load(lc, unique("over")?, StopHandle::default())?;
    std::thread::sleep(Duration::from_millis(500));
    let d2 = drops(&td)?;
    push(
        &mut table,
        "2 x capacity (open loop)",
        rate.to_string(),
        &over,
        diff(&d2, &d1),
    );
    runs.push(("2 x capacity".to_string(), over));
    let alive = td.scrape().is_ok();
    td.stop();
    fl.stop();
    let notes = vec![format!(
        "Fleet {SPEC}; never-seen names; tierdns 1 shard, [limits] max_client_in_flight = {LIMIT}; capacity {capacity:.0} answered qps; per-query timeout 1 s (a dropped query is lost); tierdns {} after the overload.",
        if alive { "still serving metrics" } else { "NOT answering metrics" }
    )];
    Ok(Outcome {
        table,
        notes,
        runs,
        extra: serde_json::Value::Null,
        failure: None,
    })
}
