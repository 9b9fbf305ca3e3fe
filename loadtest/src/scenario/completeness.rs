//! `completeness`: does the cache hold every upstream's addresses for the names
//! clients ask, at an ordinary edge load, and what does that cost upstream?
//!
//! The reference fleet (20/40/80/150/300 ms, 2 addresses per upstream and name: 10
//! in the union of an A question) behind tierdns on one shard (its defaults plus any
//! `--set`, e.g. `budget.enabled=false`). The generator asks a Zipf(1) mix over
//! `--names` names (100 000) at `--rate` (3000 qps) for `--duration` (25 s), open
//! loop. Then the scenario waits until background completion is over (nothing in
//! flight at the fleet and no query for a second; at most `total_collect_timeout`
//! plus 3 s), reads the counters, and asks `--probes` (300) names drawn from the
//! same law: answer-weighted completeness, so a name weighs what it weighs in the
//! traffic. A probe of a name the load never asked is a miss and carries what a miss
//! gets, as the next client would see; the band table also gives completeness over
//! the probed names the load did ask (the generator's draws replayed with its seed).
//!
//! Upstream queries come from the fleet's counters, cross-checked with tierdns'
//! `tierdns_upstream_queries_total`; misses are `tierdns_cache_total{result="miss"}`
//! (a query that joins a flight in progress counts there too). Latency is the
//! generator's: over all client queries, and over the slowest answers in the
//! misses' share (the misses, as a hit takes well under a millisecond and a miss
//! waits for an upstream); tierdns' own miss histogram, coarser, is in the notes.
//!
//! The scenario fails (after printing its table) when a probe goes unanswered,
//! when the fleet and tierdns disagree on upstream queries by more than 1 %, when
//! background completion did not settle in time, or when nothing was answered:
//! what CI relies on, with the table's shape, at a short duration and a low rate.

use super::{
    bucket_quantile, buckets_delta, f, load_config, metrics_buckets, metrics_by_label, metrics_sum,
    probe, run_load, ConfigSpec, Ctx, Outcome, Table, Tierdns,
};
use crate::dns;
use crate::fleet::{self, Fleet};
use crate::generator::StopHandle;
use crate::names::{self, NameSource, QtypeMix, Zipf};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The fleet: the reference table's.
const SPEC: &str = super::reference::SPEC;
/// Zone of the generated names.
const ZONE: &str = "completeness.test";
/// Default names of the Zipf mix.
const NAMES: usize = 100_000;
/// Most names `--names` may ask for (the replay keeps a counter per name).
const MAX_NAMES: usize = 10_000_000;
/// Default probes.
const PROBES: usize = 300;
/// Most probes (each is a sequential query).
const MAX_PROBES: usize = 100_000;
/// Background completion is over once the fleet had nothing in flight and
/// received nothing for this long (longer than a stagger's longest pause, 300 ms).
const QUIET: Duration = Duration::from_secs(1);
/// tierdns' default `[tiers] total_collect_timeout`.
const COLLECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Added to the collect timeout (and the quiet second) for the settle deadline.
const MARGIN: Duration = Duration::from_secs(2);
/// How long tierdns' metrics may take to show the fleet's count (flushes every 200 ms).
const METRICS_DEADLINE: Duration = Duration::from_secs(3);
/// Probes draw from their own stream: the seed xor this.
const PROBE_SEED: u64 = 0x5EED_C0DE;
/// Per probe: the timeout of one attempt (a miss waits for the fastest upstream).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Upstream queries: the fleet's count and tierdns' may differ by this share.
const AGREEMENT: f64 = 0.01;

/// Waits until the fleet has had nothing in flight and received no query for
/// `quiet`, or until `deadline`. True when it settled.
pub(super) fn wait_settled(fl: &Fleet, quiet: Duration, deadline: Instant) -> bool {
    let mut last = fl.total_queries();
    let mut since = Instant::now();
    loop {
        let now = Instant::now();
        let total = fl.total_queries();
        if total != last || fl.in_flight() > 0 {
            last = total;
            since = now;
        } else if now.duration_since(since) >= quiet {
            return true;
        }
        if now >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `[tiers] total_collect_timeout` of the config (`--set` may change it).
fn collect_timeout(cfg: &ConfigSpec) -> Result<Duration, String> {
    match cfg.get("tiers", "total_collect_timeout") {
        None => Ok(COLLECT_TIMEOUT),
        Some(v) => fleet::parse_duration(v.trim_matches('"'))
            .map_err(|e| format!("tiers.total_collect_timeout: {e}")),
    }
}

/// Scrapes tierdns until its upstream queries since `since` (a value of
/// `tierdns_upstream_queries_total`) reach `expected` or `deadline` passes.
/// The last scrape, and whether they matched.
fn scrape_matching(
    td: &Tierdns,
    since: f64,
    expected: u64,
    deadline: Instant,
) -> Result<(BTreeMap<String, f64>, bool), String> {
    loop {
        let m = td.scrape()?;
        let sent = metrics_sum(&m, "tierdns_upstream_queries_total", &[]) - since;
        if sent == expected as f64 {
            return Ok((m, true));
        }
        if Instant::now() >= deadline {
            return Ok((m, false));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Popularity bands by rank (1 = the most popular): 1-100, 101-1000, 1001-10000,
/// the rest; cut at `names`.
fn bands(names: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut lo = 1;
    for hi in [100, 1000, 10_000] {
        if hi >= names {
            break;
        }
        out.push((lo, hi));
        lo = hi + 1;
    }
    out.push((lo, names.max(lo)));
    out
}

fn source(zipf: &Zipf) -> Result<NameSource, String> {
    Ok(NameSource::Zipf {
        zipf: zipf.clone(),
        mix: QtypeMix::parse("A")?,
        zone: ZONE.into(),
    })
}

/// The rank of a generated name `n<rank>.<zone>`.
fn rank_of(name: &str) -> Option<usize> {
    name.strip_prefix('n')?.split('.').next()?.parse().ok()
}

/// How often the load asked each rank: the generator's draws replayed (same
/// seed, same count; its RNG draws names and nothing else).
fn asked_ranks(zipf: &Zipf, names: usize, seed: u64, sent: u64) -> Result<Vec<u32>, String> {
    let mut src = source(zipf)?;
    let mut rng = SmallRng::seed_from_u64(seed);
    let (mut out, mut scratch) = (Vec::new(), String::new());
    let mut counts = vec![0u32; names];
    for _ in 0..sent {
        src.next_query(&mut rng, 0, &mut out, &mut scratch);
        let slot = rank_of(&scratch)
            .and_then(|r| counts.get_mut(r))
            .ok_or_else(|| format!("replay: unexpected name {scratch:?}"))?;
        *slot = slot.saturating_add(1);
    }
    Ok(counts)
}

/// One probe's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Probe {
    /// Rank, from 0.
    rank: usize,
    /// An answer came.
    answered: bool,
    /// Distinct addresses of the union in the answer.
    addresses: usize,
    /// The union's size.
    union: usize,
    /// The load asked this name.
    asked: bool,
}

impl Probe {
    fn full(&self) -> bool {
        self.answered && self.union > 0 && self.addresses >= self.union
    }
}

/// Probes of one band.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
struct BandTally {
    /// First rank (from 1).
    lo: usize,
    /// Last rank.
    hi: usize,
    probes: usize,
    answered: usize,
    /// Probes of names the load asked.
    asked: usize,
    /// Answers carrying the whole union.
    full: usize,
    /// Of those, for names the load asked.
    full_asked: usize,
    /// Union addresses over all answers.
    addresses: usize,
}

impl BandTally {
    fn add(&mut self, p: &Probe) {
        self.probes += 1;
        self.answered += usize::from(p.answered);
        self.asked += usize::from(p.asked);
        self.full += usize::from(p.full());
        self.full_asked += usize::from(p.full() && p.asked);
        self.addresses += p.addresses;
    }

    /// Share of probes answered with the whole union, % (an unanswered probe counts
    /// as not full).
    fn full_pct(&self) -> f64 {
        100.0 * self.full as f64 / self.probes.max(1) as f64
    }

    /// The same over probes of names the load asked.
    fn full_asked_pct(&self) -> f64 {
        100.0 * self.full_asked as f64 / self.asked.max(1) as f64
    }

    /// Union addresses per answer.
    fn mean_addresses(&self) -> f64 {
        self.addresses as f64 / self.answered.max(1) as f64
    }

    fn label(&self) -> String {
        format!("{}-{}", self.lo, self.hi)
    }
}

/// Tallies the probes: all of them, and by band.
fn tally(probes: &[Probe], bands: &[(usize, usize)]) -> (BandTally, Vec<BandTally>) {
    let mut by: Vec<BandTally> = bands
        .iter()
        .map(|&(lo, hi)| BandTally {
            lo,
            hi,
            ..BandTally::default()
        })
        .collect();
    let mut all = BandTally {
        lo: bands.first().map_or(1, |b| b.0),
        hi: bands.last().map_or(1, |b| b.1),
        ..BandTally::default()
    };
    for p in probes {
        all.add(p);
        if let Some(b) = by
            .iter_mut()
            .find(|b| (b.lo..=b.hi).contains(&(p.rank + 1)))
        {
            b.add(p);
        }
    }
    (all, by)
}

/// Asks tierdns `count` names drawn from `zipf` (one retry on a timeout).
fn run_probes(
    td: &Tierdns,
    zipf: &Zipf,
    specs: &[fleet::UpstreamSpec],
    asked: &[u32],
    seed: u64,
    count: usize,
) -> Vec<Probe> {
    let mut rng = SmallRng::seed_from_u64(seed ^ PROBE_SEED);
    (0..count)
        .map(|_| {
            let rank = zipf.sample(&mut rng);
            let name = names::zipf_name(rank, ZONE);
            let union = fleet::union_for(specs, &name, dns::TYPE_A);
            let answer = probe(td.addr, &name, dns::TYPE_A, PROBE_TIMEOUT)
                .or_else(|| probe(td.addr, &name, dns::TYPE_A, PROBE_TIMEOUT));
            let mut got: Vec<_> = answer
                .as_ref()
                .map(|r| r.addresses.iter().filter(|a| union.contains(a)).collect())
                .unwrap_or_default();
            got.sort();
            got.dedup();
            Probe {
                rank,
                answered: answer.is_some(),
                addresses: got.len(),
                union: union.len(),
                asked: asked.get(rank).is_some_and(|&n| n > 0),
            }
        })
        .collect()
}

/// The `q` quantile (0..1), ms, of the slowest `share` (0..1) of the answers in a
/// histogram of microseconds: the misses' latency when every miss is slower than
/// every hit (hits take well under a millisecond, a miss waits for an upstream).
fn slowest_share_ms(h: &hdrhistogram::Histogram<u64>, share: f64, q: f64) -> Option<f64> {
    if h.is_empty() || !(share > 0.0 && share <= 1.0) || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let overall = (1.0 - share * (1.0 - q)).clamp(0.0, 1.0);
    Some(h.value_at_quantile(overall) as f64 / 1000.0)
}

/// `end` minus `start` of one label's values of a counter.
fn by_label_delta(
    end: &BTreeMap<String, f64>,
    start: &BTreeMap<String, f64>,
    name: &str,
    label: &str,
) -> BTreeMap<String, f64> {
    let before = metrics_by_label(start, name, label);
    metrics_by_label(end, name, label)
        .into_iter()
        .map(|(k, v)| {
            let d = v - before.get(&k).copied().unwrap_or(0.0);
            (k, d)
        })
        .collect()
}

/// `a 1, b 2` (or `none`).
fn list(m: &BTreeMap<String, f64>) -> String {
    if m.values().all(|v| *v == 0.0) {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The band table (printed under the main one; its rows also go to the JSON).
fn band_table(all: &BandTally, by: &[BandTally], union: usize) -> Table {
    let mut t = Table::new(&[
        "band (rank)",
        "probes",
        "answered",
        "asked in the load",
        &format!("answers with all {union} %"),
        &format!("asked names: answers with all {union} %"),
        "mean addresses per answer",
    ]);
    for (label, b) in
        std::iter::once(("all".to_string(), all)).chain(by.iter().map(|b| (b.label(), b)))
    {
        t.push(vec![
            label,
            b.probes.to_string(),
            b.answered.to_string(),
            b.asked.to_string(),
            f(b.full_pct(), 1),
            f(b.full_asked_pct(), 1),
            f(b.mean_addresses(), 2),
        ]);
    }
    t
}

pub(super) fn run(ctx: &Ctx) -> Result<Outcome, String> {
    let rate = ctx.args.rate.unwrap_or(3000);
    let duration = ctx.args.duration_or(25.0);
    let n_names = ctx.args.names.unwrap_or(NAMES);
    if !(1..=MAX_NAMES).contains(&n_names) {
        return Err(format!("--names: 1 to {MAX_NAMES}, got {n_names}"));
    }
    let n_probes = ctx.args.probes.unwrap_or(PROBES);
    if !(1..=MAX_PROBES).contains(&n_probes) {
        return Err(format!("--probes: 1 to {MAX_PROBES}, got {n_probes}"));
    }
    let seed = ctx.args.seed;
    let zipf = Zipf::new(n_names, 1.0)?;
    let specs = fleet::parse_fleet(SPEC)?;
    let union = fleet::union_for(&specs, &names::zipf_name(0, ZONE), dns::TYPE_A).len();
    let config = if ctx.args.set.is_empty() {
        "defaults".to_string()
    } else {
        ctx.args.set.join(" ")
    };

    let fl = Fleet::start(specs.clone(), seed).map_err(|e| format!("fleet: {e}"))?;
    let cfg = ctx.config(fl.addrs.clone())?;
    let collect = collect_timeout(&cfg)?;
    let td = Tierdns::start(&ctx.bin, &ctx.dir, "completeness", &cfg)?;
    // the readiness probe's flight: let it end, then count from zero
    wait_settled(&fl, QUIET, Instant::now() + collect + QUIET + MARGIN);
    let (base, _) = scrape_matching(
        &td,
        0.0,
        fl.total_queries(),
        Instant::now() + METRICS_DEADLINE,
    )?;
    fl.reset();
    let base_upstream = metrics_sum(&base, "tierdns_upstream_queries_total", &[]);

    eprintln!(
        "completeness: zipf 1.0 over {n_names} names, {rate} qps for {:.0} s, tierdns {config}",
        duration.as_secs_f64()
    );
    let report = run_load(
        load_config(ctx, td.addr, rate, duration),
        source(&zipf)?,
        StopHandle::default(),
    )?;
    let load_end = Instant::now();
    let settled = wait_settled(&fl, QUIET, load_end + collect + QUIET + MARGIN);
    let settle_s = load_end.elapsed().as_secs_f64();
    let upstream = fl.total_queries();
    let (end, agreed) = scrape_matching(
        &td,
        base_upstream,
        upstream,
        Instant::now() + METRICS_DEADLINE,
    )?;
    let summary = fl.summary();

    let asked = asked_ranks(&zipf, n_names, seed, report.sent)?;
    let distinct = asked.iter().filter(|&&n| n > 0).count();
    eprintln!("completeness: {n_probes} probes");
    let probes = run_probes(&td, &zipf, &specs, &asked, seed, n_probes);
    td.stop();
    fl.stop();

    let delta = |name: &str, labels: &[&str]| {
        metrics_sum(&end, name, labels) - metrics_sum(&base, name, labels)
    };
    let upstream_td = delta("tierdns_upstream_queries_total", &[]);
    let hits = delta("tierdns_cache_total", &["result=\"hit\""]);
    let misses = delta("tierdns_cache_total", &["result=\"miss\""]);
    let stale = delta("tierdns_cache_total", &["result=\"stale\""]);
    let refused = by_label_delta(&end, &base, "tierdns_budget_refused_total", "purpose");
    let extra = by_label_delta(
        &end,
        &base,
        "tierdns_upstream_extra_queries_total",
        "purpose",
    );
    let latency = "tierdns_client_latency_seconds";
    let miss_buckets = buckets_delta(
        &metrics_buckets(&end, latency, &["path=\"miss\""]),
        &metrics_buckets(&base, latency, &["path=\"miss\""]),
    );
    let histogram_ms = |q| bucket_quantile(&miss_buckets, q).map_or("-".into(), |s| f(s * 1e3, 1));
    let miss_share = misses / (hits + misses + stale).max(1.0);
    let miss_ms =
        |q| slowest_share_ms(&report.histogram, miss_share, q).map_or("-".into(), |v| f(v, 2));
    let (all, by) = tally(&probes, &bands(n_names));
    let refused_of = |p: &str| refused.get(p).copied().unwrap_or(0.0);

    let mut table = Table::new(&[
        "config",
        "client queries",
        "misses %",
        &format!("answers with all {union} %"),
        "mean addresses per answer",
        "upstream queries per client query",
        "upstream queries per client miss",
        "miss p50 ms",
        "miss p99 ms",
        "p50 ms (all queries)",
        "p99 ms (all queries)",
        "budget refused active/hedge/completion",
    ]);
    let l = &report.latency_ms;
    table.push(vec![
        config.clone(),
        report.sent.to_string(),
        f(100.0 * miss_share, 1),
        f(all.full_pct(), 1),
        f(all.mean_addresses(), 2),
        f(upstream as f64 / report.sent.max(1) as f64, 2),
        f(upstream as f64 / misses.max(1.0), 2),
        miss_ms(0.5),
        miss_ms(0.99),
        f(l.p50, 2),
        f(l.p99, 2),
        format!(
            "{:.0}/{:.0}/{:.0}",
            refused_of("active"),
            refused_of("hedge"),
            refused_of("completion")
        ),
    ]);
    let bt = band_table(&all, &by, union);

    let mut failures = Vec::new();
    if all.answered < all.probes {
        failures.push(format!(
            "{} of {} probes unanswered",
            all.probes - all.answered,
            all.probes
        ));
    }
    let disagreement = (upstream as f64 - upstream_td).abs();
    if disagreement > AGREEMENT * (upstream as f64).max(upstream_td).max(100.0) {
        failures.push(format!(
            "upstream queries: the fleet counted {upstream}, tierdns {upstream_td:.0}"
        ));
    }
    if !settled {
        failures.push(format!(
            "background completion still going {settle_s:.1} s after the load"
        ));
    }
    if report.answered == 0 {
        failures.push("no client query answered".into());
    }

    let notes = vec![
        format!(
            "Fleet {SPEC} ({union} addresses in the union of an A question); Zipf(1) over {n_names} names, {rate} qps for {:.0} s, open loop; tierdns 1 shard, {config}. Background completion settled {settle_s:.1} s after the load (nothing in flight at the fleet, no query for {:.0} s){}; then {n_probes} probes drawn from the same law (a probe of a name the load never asked is a miss).",
            duration.as_secs_f64(),
            QUIET.as_secs_f64(),
            if settled { "" } else { ": NOT SETTLED" },
        ),
        String::new(),
        "By popularity band (rank 1 = the most popular):".into(),
        String::new(),
        bt.to_markdown(),
        format!(
            "Upstream queries: fleet {upstream}, tierdns_upstream_queries_total {upstream_td:.0} ({}); per upstream {:?}. Client queries {} (answered {}, lost {}); tierdns hits {hits:.0}, misses {misses:.0}, stale {stale:.0}; distinct names asked {distinct}.",
            if agreed { "agree" } else { "DIFFER" },
            summary.queries,
            report.sent,
            report.answered,
            report.lost,
        ),
        format!(
            "Extra upstream queries sent by purpose: {}; refused by the budget: {}.",
            list(&extra),
            list(&refused)
        ),
        format!(
            "Latency of the first answer, from the generator: p50/p99 (all queries) over hits and misses; miss p50/p99 over the slowest {:.1} % of the answers (the misses' share: a hit takes well under a millisecond, a miss waits for an upstream). tierdns' own tierdns_client_latency_seconds{{path=\"miss\"}}, interpolated within its buckets (10, 25, 50, 100 ms): p50 {} ms, p99 {} ms.",
            100.0 * miss_share,
            histogram_ms(0.5),
            histogram_ms(0.99)
        ),
    ];
    let extra_json = serde_json::json!({
        "config": config,
        "set": ctx.args.set,
        "names": n_names,
        "probes_asked": n_probes,
        "union": union,
        "settled": settled,
        "settle_s": settle_s,
        "upstream_queries": {"fleet": upstream, "tierdns": upstream_td, "agree": agreed},
        "cache": {"hit": hits, "miss": misses, "stale": stale},
        "miss_latency_histogram_ms": {"p50": histogram_ms(0.5), "p99": histogram_ms(0.99)},
        "distinct_names_asked": distinct,
        "budget_refused": refused,
        "extra_queries": extra,
        "all": all,
        "bands": by,
        "band_rows": bt.to_json(),
        "fleet": summary,
    });
    Ok(Outcome {
        table,
        notes,
        runs: vec![(config, report)],
        extra: extra_json,
        failure: (!failures.is_empty()).then(|| format!("completeness: {}", failures.join("; "))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_cut_at_the_names() {
        assert_eq!(
            bands(100_000),
            vec![(1, 100), (101, 1000), (1001, 10_000), (10_001, 100_000)]
        );
        assert_eq!(bands(5000), vec![(1, 100), (101, 1000), (1001, 5000)]);
        assert_eq!(bands(100), vec![(1, 100)]);
        assert_eq!(bands(1), vec![(1, 1)]);
    }

    fn p(rank: usize, answered: bool, addresses: usize, asked: bool) -> Probe {
        Probe {
            rank,
            answered,
            addresses,
            union: 10,
            asked,
        }
    }

    #[test]
    fn tally_counts_full_answers_by_band() {
        let probes = [
            p(0, true, 10, true),       // rank 1: full
            p(99, true, 4, true),       // rank 100: partial
            p(100, true, 10, true),     // rank 101: full
            p(50_000, true, 2, false),  // never asked: the miss's first answer
            p(60_000, false, 0, false), // unanswered
        ];
        let (all, by) = tally(&probes, &bands(100_000));
        assert_eq!((all.probes, all.answered, all.asked), (5, 4, 3));
        assert_eq!((all.full, all.full_asked), (2, 2));
        assert!((all.full_pct() - 40.0).abs() < 1e-9);
        assert!((all.full_asked_pct() - 200.0 / 3.0).abs() < 1e-9);
        assert!((all.mean_addresses() - 26.0 / 4.0).abs() < 1e-9);
        let probes_by: Vec<usize> = by.iter().map(|b| b.probes).collect();
        assert_eq!(probes_by, vec![2, 1, 0, 2]);
        assert_eq!(by[0].full, 1);
        assert!((by[0].mean_addresses() - 7.0).abs() < 1e-9);
        assert_eq!(by[2].mean_addresses(), 0.0, "an empty band divides by one");
        assert_eq!(by[3].label(), "10001-100000");
        let t = band_table(&all, &by, 10);
        assert_eq!(t.rows.len(), 5);
        assert_eq!(t.rows[0][0], "all");
        assert_eq!(t.rows[0][4], "40.0");
    }

    #[test]
    fn replay_matches_the_names_the_generator_sent() {
        // the generator asks a 1 ms upstream directly; the fleet records the name
        // of every query; the replay must count the same names as often
        let zipf = Zipf::new(1000, 1.0).unwrap();
        let fl = Fleet::start(fleet::parse_fleet("1ms").unwrap(), 1).unwrap();
        let mut cfg = crate::generator::LoadConfig::new(fl.addrs[0]);
        cfg.rate = 2000;
        cfg.duration = Duration::from_millis(300);
        cfg.seed = 7;
        cfg.progress = false;
        let report =
            crate::generator::run(&cfg, &mut source(&zipf).unwrap(), &StopHandle::default())
                .unwrap();
        assert!(report.sent > 100, "sent {}", report.sent);
        let deadline = Instant::now() + Duration::from_secs(5);
        while fl.total_queries() < report.sent {
            assert!(Instant::now() < deadline, "the fleet missed queries");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
        for r in fl.records() {
            *seen.entry(r.name).or_default() += 1;
        }
        fl.stop();
        let counts = asked_ranks(&zipf, 1000, 7, report.sent).unwrap();
        let replayed: BTreeMap<u64, u32> = counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(rank, &n)| (fleet::name_hash(&names::zipf_name(rank, ZONE)), n))
            .collect();
        assert_eq!(seen, replayed);
        // another seed draws other names
        assert_ne!(asked_ranks(&zipf, 1000, 8, report.sent).unwrap(), counts);
        assert_eq!(rank_of("n42.completeness.test"), Some(42));
        assert_eq!(rank_of("u1.x.test"), None);
    }

    #[test]
    fn miss_latency_is_the_slowest_share() {
        let mut h = crate::report::new_histogram();
        h.record_n(100, 700).unwrap(); // hits: 0.1 ms
        for i in 0..300u64 {
            h.record(20_000 + 100 * i).unwrap(); // misses: 20 to 49.9 ms
        }
        let p50 = slowest_share_ms(&h, 0.3, 0.5).unwrap();
        assert!((34.0..36.0).contains(&p50), "{p50}");
        let p99 = slowest_share_ms(&h, 0.3, 0.99).unwrap();
        assert!((49.0..50.0).contains(&p99), "{p99}");
        // all of them: the overall quantiles
        assert!(slowest_share_ms(&h, 1.0, 0.5).unwrap() < 1.0);
        assert_eq!(slowest_share_ms(&h, 0.0, 0.5), None);
        assert_eq!(
            slowest_share_ms(&crate::report::new_histogram(), 0.3, 0.5),
            None
        );
    }

    #[test]
    fn collect_timeout_follows_the_config() {
        let mut c = ConfigSpec::new(Vec::new());
        assert_eq!(collect_timeout(&c).unwrap(), COLLECT_TIMEOUT);
        c.set("tiers.total_collect_timeout=\"1500ms\"").unwrap();
        assert_eq!(collect_timeout(&c).unwrap(), Duration::from_millis(1500));
        c.set("tiers.total_collect_timeout=\"soon\"").unwrap();
        assert!(collect_timeout(&c).is_err());
    }

    #[test]
    fn settles_once_the_fleet_is_quiet() {
        let specs = fleet::parse_fleet("150ms").unwrap();
        let fl = Fleet::start(specs, 1).unwrap();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut q = Vec::new();
        dns::build_query(&mut q, 9, "n1.completeness.test", dns::TYPE_A, 1232).unwrap();
        sock.send_to(&q, fl.addrs[0]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while fl.in_flight() == 0 {
            assert!(Instant::now() < deadline, "the query never arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
        // a query in flight (150 ms) and a quiet window of 100 ms: too soon a
        // deadline fails, a later one settles after the answer
        let start = Instant::now();
        assert!(!wait_settled(
            &fl,
            Duration::from_millis(100),
            start + Duration::from_millis(50)
        ));
        assert!(wait_settled(
            &fl,
            Duration::from_millis(100),
            start + Duration::from_secs(5)
        ));
        assert_eq!(fl.in_flight(), 0);
        fl.stop();
    }
}
