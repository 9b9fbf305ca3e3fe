//! Scenarios: start a fleet, tierdns (the binary, as a process) and the generator,
//! run, and print a markdown table.
//!
//! tierdns is found at `$TIERDNS_BIN`, else `target/release/tierdns` of the
//! workspace (built with `cargo build --release --bin tierdns` when missing). It
//! always runs on a config written here whose upstreams are the fleet on
//! loopback; never on its built-in config. Figures come from the generator's
//! report, the fleet's records, and tierdns' `/metrics`.
//!
//! CPUs: with two or more, tierdns runs on CPU 0 (`taskset`, when present) and the
//! generator's thread on CPU 1. Every run is bounded: the generator stops at its
//! duration plus its timeout, tierdns gets SIGTERM then SIGKILL, the fleet stops
//! when dropped.

mod completeness;
mod flood;
mod hit_rate;
mod outage;
mod overload;
mod reference;
mod reload;
mod tierdns;

pub use tierdns::{
    bucket_quantile, buckets_delta, find_binary, free_port, metrics_buckets, metrics_by_label,
    metrics_sum, parse_metrics, ConfigSpec, Tierdns,
};

use crate::dns;
use crate::generator::{self, LoadConfig, StopHandle};
use crate::names::NameSource;
use crate::report::LoadReport;
use serde_json::Value;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Name {
    /// Five upstreams at 20/40/80/150/300 ms, never-seen names at a modest rate:
    /// staggered vs parallel vs sequential.
    Reference,
    /// Zipf over a million names: hit rate against an ideal cache.
    HitRate,
    /// Never-seen names: upstream queries per miss, memory against the cache bound.
    Flood,
    /// Twice the measured capacity: admitted latency, drops by reason.
    Overload,
    /// Upstreams failing and recovering mid-run: errors, stale answers, recovery.
    Outage,
    /// SIGHUP during load: queries lost (must be zero).
    Reload,
    /// Zipf(1) over 100k names at 3000 qps against the reference fleet, then probes:
    /// how many answers carry every upstream's addresses, at what upstream cost.
    Completeness,
}

impl Name {
    /// The name as typed on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reference => "reference",
            Self::HitRate => "hit-rate",
            Self::Flood => "flood",
            Self::Overload => "overload",
            Self::Outage => "outage",
            Self::Reload => "reload",
            Self::Completeness => "completeness",
        }
    }
}

/// Arguments of `loadtest scenario`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScenarioArgs {
    /// Which scenario.
    #[arg(value_enum)]
    pub name: Name,
    /// Seconds of load per run (each scenario has its default).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Queries per second (each scenario has its default).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Write the table's rows and every run's report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG latency plot (one line per row) here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// tierdns binary (else $TIERDNS_BIN, else target/release/tierdns).
    #[arg(long)]
    pub tierdns: Option<PathBuf>,
    /// tierdns io backend: auto, uring or epoll.
    #[arg(long, default_value = "auto")]
    pub io: String,
    /// Keep the temporary directory (configs, tierdns logs).
    #[arg(long)]
    pub keep: bool,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Extra tierdns config, `SECTION.KEY=VALUE` with VALUE as TOML
    /// (`budget.enabled=false`, `tiers.total_collect_timeout="5s"`), or
    /// `strategy=NAME`; repeatable. Not `[server]`, `[metrics]`, `[[upstream]]`.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Names of the Zipf mix (completeness only).
    #[arg(long)]
    pub names: Option<usize>,
    /// Probes after the run (completeness only).
    #[arg(long)]
    pub probes: Option<usize>,
}

impl ScenarioArgs {
    /// `--duration` or the scenario's default, bounded to 1 ms..10 min.
    pub fn duration_or(&self, default: f64) -> Duration {
        Duration::from_secs_f64(self.duration.unwrap_or(default).clamp(0.001, 600.0))
    }
}

/// A markdown table.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Column names.
    pub headers: Vec<String>,
    /// Rows of cells.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// The table as markdown (numeric columns right-aligned).
    pub fn to_markdown(&self) -> String {
        let numeric: Vec<bool> = (0..self.headers.len())
            .map(|c| {
                !self.rows.is_empty()
                    && self.rows.iter().all(|r| {
                        r.get(c).is_some_and(|v| {
                            v.trim_end_matches('%')
                                .replace(['>', ' '], "")
                                .parse::<f64>()
                                .is_ok()
                        })
                    })
            })
            .collect();
        let mut s = format!("| {} |\n|", self.headers.join(" | "));
        for &n in &numeric {
            s.push_str(if n { "---:|" } else { "---|" });
        }
        s.push('\n');
        for r in &self.rows {
            s.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        s
    }

    /// Rows as JSON objects keyed by column.
    pub fn to_json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|r| {
                    let mut m = serde_json::Map::new();
                    for (h, v) in self.headers.iter().zip(r) {
                        let val = v
                            .parse::<f64>()
                            .ok()
                            .and_then(serde_json::Number::from_f64)
                            .map_or_else(|| Value::String(v.clone()), Value::Number);
                        m.insert(h.clone(), val);
                    }
                    Value::Object(m)
                })
                .collect(),
        )
    }
}

/// What a scenario hands back: its table, notes under it, and the runs behind it.
pub struct Outcome {
    /// The table.
    pub table: Table,
    /// Lines printed under the table.
    pub notes: Vec<String>,
    /// (label, report) of each generator run, for JSON and the plot.
    pub runs: Vec<(String, LoadReport)>,
    /// Extra JSON (fleet summaries, metrics).
    pub extra: Value,
    /// A failed check (the table is still printed): exit non-zero.
    pub failure: Option<String>,
}

/// Shared state of a scenario run: arguments, temp dir, tierdns binary.
pub struct Ctx {
    /// The arguments.
    pub args: ScenarioArgs,
    /// Temporary directory (configs, logs).
    pub dir: PathBuf,
    /// The tierdns binary.
    pub bin: PathBuf,
}

impl Ctx {
    /// The tierdns config of a scenario: upstreams (the fleet), `--io`, every `--set`.
    pub fn config(&self, upstreams: Vec<SocketAddr>) -> Result<ConfigSpec, String> {
        let mut c = ConfigSpec::new(upstreams);
        c.io = self.args.io.clone();
        c.set_all(&self.args.set)?;
        Ok(c)
    }
}

/// Runs `loadtest scenario`.
pub fn main(args: ScenarioArgs) -> Result<(), String> {
    if args.name != Name::Completeness && (args.names.is_some() || args.probes.is_some()) {
        return Err("--names and --probes are options of scenario completeness".into());
    }
    // refuse a bad --set before starting anything
    ConfigSpec::new(Vec::new()).set_all(&args.set)?;
    let bin = find_binary(args.tierdns.as_deref())?;
    let dir = std::env::temp_dir().join(format!(
        "loadtest-{}-{}",
        args.name.as_str(),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ctx = Ctx {
        args: args.clone(),
        dir: dir.clone(),
        bin,
    };
    let result = match args.name {
        Name::Reference => reference::run(&ctx),
        Name::HitRate => hit_rate::run(&ctx),
        Name::Flood => flood::run(&ctx),
        Name::Overload => overload::run(&ctx),
        Name::Outage => outage::run(&ctx),
        Name::Reload => reload::run(&ctx),
        Name::Completeness => completeness::run(&ctx),
    };
    if args.keep || result.is_err() {
        eprintln!("scenario files kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let out = result?;
    println!("{}", out.table.to_markdown());
    for n in &out.notes {
        println!("{n}");
    }
    if let Some(p) = &args.json {
        let runs: Vec<Value> = out
            .runs
            .iter()
            .map(|(l, r)| {
                let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
                if let Value::Object(m) = &mut v {
                    m.insert("label".into(), Value::String(l.clone()));
                }
                v
            })
            .collect();
        let j = serde_json::json!({
            "scenario": args.name.as_str(),
            "columns": out.table.headers,
            "rows": out.table.to_json(),
            "notes": out.notes,
            "runs": runs,
            "extra": out.extra,
        });
        std::fs::write(
            p,
            serde_json::to_string_pretty(&j).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &args.svg {
        let series: Vec<(String, &hdrhistogram::Histogram<u64>)> = out
            .runs
            .iter()
            .map(|(l, r)| (l.clone(), &r.histogram))
            .collect();
        crate::plot::latency_svg(
            p,
            &format!("scenario {}: client latency", args.name.as_str()),
            &series,
        )?;
    }
    match out.failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// Runs the generator on a thread of its own, pinned to CPU 1 when there are two
/// or more CPUs (tierdns is on CPU 0).
pub fn run_load(
    cfg: LoadConfig,
    mut source: NameSource,
    control: StopHandle,
) -> Result<LoadReport, String> {
    std::thread::Builder::new()
        .name("generator".into())
        .spawn(move || {
            let ids = core_affinity::get_core_ids().unwrap_or_default();
            if ids.len() >= 2 {
                if let Some(id) = ids.iter().find(|c| c.id == 1) {
                    core_affinity::set_for_current(*id);
                }
            }
            generator::run(&cfg, &mut source, &control).map_err(|e| format!("generator: {e}"))
        })
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|_| "generator thread panicked".to_string())?
}

/// A generator config for a scenario: `server`, `rate`, `duration`.
pub fn load_config(ctx: &Ctx, server: SocketAddr, rate: u64, duration: Duration) -> LoadConfig {
    let mut cfg = LoadConfig::new(server);
    cfg.rate = rate;
    cfg.duration = duration;
    cfg.progress = !ctx.args.quiet;
    cfg.seed = ctx.args.seed;
    cfg
}

/// One UDP query and its parsed answer (None on timeout or garbage).
pub fn probe(
    server: SocketAddr,
    name: &str,
    qtype: u16,
    timeout: Duration,
) -> Option<dns::Response> {
    generator::check_loopback(server).ok()?;
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.set_read_timeout(Some(timeout)).ok()?;
    let id = (std::process::id() as u16) ^ 0x5A5A;
    let mut q = Vec::new();
    dns::build_query(&mut q, id, name, qtype, 1232).ok()?;
    sock.send_to(&q, server).ok()?;
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        if let Ok(r) = dns::parse_response(&buf[..n]) {
            if r.id == id {
                return Some(r);
            }
        }
    }
    None
}

/// Formats a float with `d` decimals.
pub fn f(x: f64, d: usize) -> String {
    format!("{x:.d$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_markdown_aligns_numbers_right() {
        let mut t = Table::new(&["strategy", "p50 ms"]);
        t.push(vec!["staggered".into(), "20.1".into()]);
        t.push(vec!["parallel".into(), "20.3".into()]);
        let md = t.to_markdown();
        assert_eq!(
            md,
            "| strategy | p50 ms |\n|---|---:|\n| staggered | 20.1 |\n| parallel | 20.3 |\n"
        );
        let j = t.to_json();
        assert_eq!(j[1]["p50 ms"], 20.3);
        assert_eq!(j[0]["strategy"], "staggered");
    }
}
