//! `reload`: SIGHUP during load; no query may be lost.
//!
//! A Zipf mix over 10 000 names (hits and misses) at 2000 qps for `--duration`
//! (default 10 s); every second the config file is rewritten and tierdns gets
//! SIGHUP, cycling through: a new `stagger_delay`, the last upstream removed, the
//! upstream back, the `parallel` strategy, `staggered` again. Counted: reloads
//! sent, reloads tierdns logged as applied, queries, lost, SERVFAIL, latency. The
//! scenario fails (non-zero exit) when a query is lost.

use super::{f, load_config, run_load, ConfigSpec, Ctx, Outcome, Table, Tierdns};
use crate::fleet::{self, Fleet};
use crate::generator::StopHandle;
use crate::names::{NameSource, QtypeMix, Zipf};
use std::time::{Duration, Instant};

const SPEC: &str = "5ms,10ms,15ms,20ms,25ms";

/// The config of reload number `k` (cycling through five changes).
fn variant(base: &ConfigSpec, k: usize) -> ConfigSpec {
    let mut c = base.clone();
    match k % 5 {
        0 => c.tiers.push("stagger_delay = \"60ms\"".into()),
        1 => {
            c.upstreams.pop();
        }
        2 => {}
        3 => c.strategy = "parallel".into(),
        _ => c.tiers.push("stagger_delay = \"40ms\"".into()),
    }
    c
}

pub(super) fn run(ctx: &Ctx) -> Result<Outcome, String> {
    let duration = ctx.args.duration_or(10.0);
    let rate = ctx.args.rate.unwrap_or(2000);
    let specs = fleet::parse_fleet(SPEC)?;
    let fl = Fleet::start(specs, ctx.args.seed).map_err(|e| format!("fleet: {e}"))?;
    let base = ctx.config(fl.addrs.clone())?;
    let td = Tierdns::start(&ctx.bin, &ctx.dir, "reload", &base)?;
    std::thread::sleep(Duration::from_millis(200));
    let applied0 = td.log_count("reloaded");
    let source = NameSource::Zipf {
        zipf: Zipf::new(10_000, 1.0)?,
        mix: QtypeMix::parse("A:80,AAAA:20")?,
        zone: "reload.test".into(),
    };
    let mut lc = load_config(ctx, td.addr, rate, duration);
    lc.timeout = Duration::from_secs(3);
    eprintln!(
        "reload: {rate} qps for {:.0} s, SIGHUP every second",
        duration.as_secs_f64()
    );
    let gen = std::thread::spawn(move || run_load(lc, source, StopHandle::default()));
    let t0 = Instant::now();
    let mut sent = 0usize;
    let mut k = 1;
    while t0.elapsed() + Duration::from_millis(500) < duration {
        std::thread::sleep(Duration::from_secs(k).saturating_sub(t0.elapsed()));
        let c = variant(&base, sent);
        std::fs::write(&td.config_path, c.render(td.addr.port(), td.metrics.port()))
            .map_err(|e| e.to_string())?;
        td.signal(libc::SIGHUP)?;
        sent += 1;
        k += 1;
    }
    let report = gen.join().map_err(|_| "generator thread panicked")??;
    std::thread::sleep(Duration::from_millis(300));
    let applied = td.log_count("reloaded") - applied0;
    let refused = td.log_count("reload refused");
    td.stop();
    fl.stop();
    let lost = report.lost;
    let mut table = Table::new(&[
        "reloads sent",
        "reloads applied",
        "queries",
        "answered",
        "lost",
        "SERVFAIL",
        "p50 ms",
        "p99 ms",
        "lost = 0",
    ]);
    table.push(vec![
        sent.to_string(),
        applied.to_string(),
        report.sent.to_string(),
        report.answered.to_string(),
        lost.to_string(),
        report.rcode("SERVFAIL").to_string(),
        f(report.latency_ms.p50, 2),
        f(report.latency_ms.p99, 2),
        if lost == 0 { "yes" } else { "NO" }.into(),
    ]);
    let mut notes = vec![format!(
        "Fleet {SPEC}; Zipf s=1 over 10000 names (A 80%, AAAA 20%) at {rate} qps for {:.0} s; SIGHUP every second, cycling: stagger_delay 60ms, last upstream removed, upstream back, strategy parallel, stagger_delay 40ms.",
        duration.as_secs_f64()
    )];
    if refused > 0 {
        notes.push(format!("tierdns refused {refused} reload(s): see its log"));
    }
    let failure = (lost > 0 || applied < sent)
        .then(|| format!("reload: {lost} queries lost, {applied} of {sent} reloads applied"));
    Ok(Outcome {
        table,
        notes,
        runs: vec![("reload".to_string(), report)],
        extra: serde_json::Value::Null,
        failure,
    })
}
