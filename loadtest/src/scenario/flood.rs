//! `flood`: never-seen names at rising rates against a small cache bound: how
//! many upstream queries each miss costs, and whether memory stays bounded.
//!
//! One tierdns for all rows (the cache fills across them) with
//! `[cache] max_bytes` = 4 MiB; RSS sampled from /proc every 200 ms; cache bytes
//! and entries from tierdns' gauges at the end of each row.

use super::{f, load_config, metrics_sum, run_load, Ctx, Outcome, Table, Tierdns};
use crate::fleet::{self, Fleet};
use crate::generator::StopHandle;
use crate::names::{NameSource, QtypeMix};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SPEC: &str = "1ms,2ms,3ms,4ms,5ms";
const CACHE_BYTES: u64 = 4 << 20;
const MIB: f64 = 1024.0 * 1024.0;

pub(super) fn run(ctx: &Ctx) -> Result<Outcome, String> {
    let duration = ctx.args.duration_or(8.0);
    let rates: Vec<u64> = match ctx.args.rate {
        Some(r) => vec![r],
        None => vec![1000, 5000, 10000],
    };
    let specs = fleet::parse_fleet(SPEC)?;
    let fl = Fleet::start(specs, ctx.args.seed).map_err(|e| format!("fleet: {e}"))?;
    let mut cfg = ctx.config(fl.addrs.clone())?;
    cfg.cache.push(format!("max_bytes = {CACHE_BYTES}"));
    let td = Tierdns::start(&ctx.bin, &ctx.dir, "flood", &cfg)?;
    std::thread::sleep(Duration::from_millis(100));
    let rss_start = td.rss().unwrap_or(0);
    let mut table = Table::new(&[
        "offered qps",
        "answered qps",
        "loss %",
        "SERVFAIL",
        "p99 ms",
        "upstream queries per miss",
        "cache MiB",
        "cache bound MiB",
        "cache entries",
        "RSS start MiB",
        "RSS peak MiB",
        "fleet late p99 ms",
    ]);
    let mut runs = Vec::new();
    for (i, &rate) in rates.iter().enumerate() {
        eprintln!(
            "flood: {rate} qps of never-seen names for {:.0} s",
            duration.as_secs_f64()
        );
        fl.reset();
        let m0 = td.scrape()?;
        let peak = Arc::new(AtomicU64::new(td.rss().unwrap_or(0)));
        let done = Arc::new(AtomicBool::new(false));
        let pid = td.pid();
        let sampler = {
            let (peak, done) = (peak.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if let Some(r) = rss_of(pid) {
                        peak.fetch_max(r, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        let source = NameSource::Unique {
            mix: QtypeMix::parse("A:80,AAAA:20")?,
            tag: format!("f{i}s{}", ctx.args.seed),
            zone: "flood.test".into(),
            next: 0,
        };
        let mut lc = load_config(ctx, td.addr, rate, duration);
        lc.timeout = Duration::from_secs(3);
        let report = run_load(lc, source, StopHandle::default());
        std::thread::sleep(Duration::from_millis(600)); // completions and a metrics flush
        done.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        let report = report?;
        let m = td.scrape()?;
        let misses = metrics_sum(&m, "tierdns_cache_total", &["result=\"miss\""])
            - metrics_sum(&m0, "tierdns_cache_total", &["result=\"miss\""]);
        let l = report.latency_ms;
        table.push(vec![
            rate.to_string(),
            f(report.qps, 0),
            f(report.loss_pct, 2),
            report.rcode("SERVFAIL").to_string(),
            f(l.p99, 1),
            f(fl.total_queries() as f64 / misses.max(1.0), 2),
            f(metrics_sum(&m, "tierdns_cache_bytes", &[]) / MIB, 2),
            f(CACHE_BYTES as f64 / MIB, 0),
            f(metrics_sum(&m, "tierdns_cache_entries", &[]), 0),
            f(rss_start as f64 / MIB, 1),
            f(peak.load(Ordering::Relaxed) as f64 / MIB, 1),
            f(fl.summary().fleet_late_ms_p99, 2),
        ]);
        runs.push((format!("{rate} qps"), report));
    }
    td.stop();
    fl.stop();
    let notes = vec![format!(
        "Fleet {SPEC}; names asked once each (80% A, 20% AAAA), {:.0} s per row, rows in turn on one tierdns (1 shard, [cache] max_bytes = {} MiB). Upstream queries per miss: fleet queries / tierdns cache misses. Fleet late: how far past its drawn delay the fleet itself answered (the harness keeping up).",
        duration.as_secs_f64(),
        CACHE_BYTES >> 20
    )];
    Ok(Outcome {
        table,
        notes,
        runs,
        extra: serde_json::Value::Null,
        failure: None,
    })
}

fn rss_of(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}
