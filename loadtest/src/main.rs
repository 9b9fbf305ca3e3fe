//! `loadtest`: the tierdns load-test harness (see the crate doc and loadtest/README.md).

use clap::{Parser, Subcommand};
use loadtest::fleet::{self, Fleet};
use loadtest::generator::{self, LoadConfig, StopHandle};
use loadtest::names::{self, NameSource, QtypeMix, Zipf};
use loadtest::{plot, responder, scenario};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about = "tierdns load-test harness (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send DNS queries at a rate (or flat out) and report qps, loss, rcodes, latency.
    Load(LoadArgs),
    /// Run simulated upstreams until the duration passes.
    Fleet(FleetArgs),
    /// Answer every UDP query at once with a fixed answer (to measure generators).
    Responder(ResponderArgs),
    /// Start a fleet, tierdns and the generator, run, print a table.
    Scenario(scenario::ScenarioArgs),
}

#[derive(clap::Args)]
struct LoadArgs {
    /// Server address (loopback only).
    #[arg(long, short = 's', default_value = "127.0.0.1:5353")]
    server: SocketAddr,
    /// Queries per second; 0 runs closed loop, flat out.
    #[arg(long, short = 'Q', default_value_t = 1000)]
    rate: u64,
    /// Seconds of sending (at most 3600).
    #[arg(long, short = 'l', default_value_t = 10.0)]
    duration: f64,
    /// dnsperf data file: `name type` per line, cycled in order.
    #[arg(long, short = 'd')]
    qname_file: Option<PathBuf>,
    /// Names of the Zipf mix (n0.ZONE .. nN-1.ZONE); 0 asks never-seen names.
    #[arg(long, default_value_t = 1000)]
    names: usize,
    /// Zipf exponent of the name mix (0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Zone under which names are generated.
    #[arg(long, default_value = "load.test.")]
    zone: String,
    /// Query type mix of generated names.
    #[arg(long, default_value = "A")]
    qtypes: String,
    /// Use TCP (pipelined connections) instead of UDP.
    #[arg(long)]
    tcp: bool,
    /// UDP source ports (sockets), or TCP connections.
    #[arg(long, default_value_t = 16)]
    sockets: usize,
    /// Closed loop: queries outstanding; open loop: most in flight.
    #[arg(long, short = 'q')]
    window: Option<usize>,
    /// Closed loop: poll the sockets in a busy loop instead of sleeping until an
    /// answer comes (uses the whole core; spares the server the wake-ups).
    #[arg(long)]
    spin: bool,
    /// Per-query timeout, seconds.
    #[arg(long, short = 't', default_value_t = 2.0)]
    timeout: f64,
    /// Open loop: shortest sleep between send turns, microseconds.
    #[arg(long, default_value_t = 1000)]
    tick_us: u64,
    /// Pin the generator to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG latency plot here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct FleetArgs {
    /// Upstreams, comma-separated: LATENCY[/jitter=..][/loss=..%][/servfail=..%]
    /// [/refused=..%][/tc=..%][/addrs=N][/ttl=S]; LATENCY is 20ms, 10ms..30ms or ln:20ms:0.5.
    #[arg(long, default_value = "20ms,40ms,80ms,150ms,300ms")]
    spec: String,
    /// Seconds to run (at most 86400).
    #[arg(long, default_value_t = 600.0)]
    duration: f64,
    /// Write the fleet's summary as JSON here at the end.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write every query's record (arrival, answer, drawn delay, outcome) as CSV here.
    #[arg(long)]
    records: Option<PathBuf>,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(clap::Args)]
struct ResponderArgs {
    /// Listen address (loopback only).
    #[arg(long, default_value = "127.0.0.1:5399")]
    listen: SocketAddr,
    /// Seconds to run (at most 86400).
    #[arg(long, default_value_t = 600.0)]
    duration: f64,
    /// Pin to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// mmsg: poll + recvmmsg/sendmmsg; uring: one io_uring, multishot recvmsg into
    /// provided buffers, a SendMsg per reply, one io_uring_enter per turn.
    #[arg(long, value_enum, default_value = "mmsg")]
    io: responder::Io,
}

fn pin(cpu: Option<usize>) -> Result<(), String> {
    let Some(cpu) = cpu else { return Ok(()) };
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    let id = ids
        .into_iter()
        .find(|c| c.id == cpu)
        .ok_or_else(|| format!("CPU {cpu} is not available"))?;
    if core_affinity::set_for_current(id) {
        Ok(())
    } else {
        Err(format!("could not pin to CPU {cpu}"))
    }
}

fn bounded(secs: f64, max: f64, what: &str) -> Result<Duration, String> {
    if secs.is_finite() && secs > 0.0 && secs <= max {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!(
            "{what} must be within 0 and {max} seconds, got {secs}"
        ))
    }
}

fn load(a: LoadArgs) -> Result<(), String> {
    pin(a.cpu)?;
    let mut source = if let Some(path) = &a.qname_file {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let lines =
            names::parse_data_file(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        NameSource::from_lines(&lines)?
    } else {
        let mix = QtypeMix::parse(&a.qtypes)?;
        let zone = a.zone.trim_end_matches('.').to_string();
        if a.names == 0 {
            NameSource::Unique {
                mix,
                tag: format!("r{}", std::process::id()),
                zone,
                next: 0,
            }
        } else {
            NameSource::Zipf {
                zipf: Zipf::new(a.names, a.zipf)?,
                mix,
                zone,
            }
        }
    };
    let mut cfg = LoadConfig::new(a.server);
    cfg.rate = a.rate;
    cfg.duration = bounded(a.duration, 3600.0, "--duration")?;
    cfg.timeout = bounded(a.timeout, 60.0, "--timeout")?;
    cfg.sockets = a.sockets.clamp(1, 1024);
    cfg.window = a.window.unwrap_or(if a.rate == 0 { 100 } else { 200_000 });
    cfg.tick = Duration::from_micros(a.tick_us.min(100_000));
    cfg.progress = !a.quiet;
    cfg.seed = a.seed;
    cfg.tcp = a.tcp;
    cfg.spin = a.spin;
    let report =
        generator::run(&cfg, &mut source, &StopHandle::default()).map_err(|e| e.to_string())?;
    print!("{}", report.to_text());
    if let Some(p) = &a.json {
        std::fs::write(p, report.to_json()).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &a.svg {
        let title = format!("loadtest {} {}", report.server, report.transport);
        plot::latency_svg(p, &title, &[("latency".into(), &report.histogram)])?;
    }
    Ok(())
}

fn run_fleet(a: FleetArgs) -> Result<(), String> {
    let specs = fleet::parse_fleet(&a.spec)?;
    let duration = bounded(a.duration, 86_400.0, "--duration")?;
    let f = Fleet::start(specs, a.seed).map_err(|e| e.to_string())?;
    for (i, addr) in f.addrs.iter().enumerate() {
        println!("upstream {i}: {addr} (udp+tcp) {:?}", f.specs()[i]);
    }
    // Bounded: runs for --duration, then reports (Ctrl-C just ends the process).
    let start = std::time::Instant::now();
    let mut last = 0;
    while start.elapsed() < duration {
        std::thread::sleep((duration - start.elapsed()).min(Duration::from_secs(5)));
        let total = f.total_queries();
        eprintln!(
            "fleet: {:>5.0} s, {total} queries ({:.0} qps over the last interval)",
            start.elapsed().as_secs_f64(),
            (total - last) as f64 / 5f64.min(start.elapsed().as_secs_f64()).max(1e-3)
        );
        last = total;
    }
    let s = f.summary();
    println!(
        "queries {} per upstream {:?}; peak in flight {} (per upstream {:?}); names {}; peak per name {}; completion p50 {:.1} ms; fleet late p99 {:.2} ms",
        s.total,
        s.queries,
        s.peak_in_flight,
        s.peak_in_flight_per_upstream,
        s.names,
        s.peak_per_name,
        s.completion_ms_p50,
        s.fleet_late_ms_p99
    );
    if let Some(p) = &a.records {
        std::fs::write(p, fleet::records_csv(&f.records()))
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &a.json {
        let j = serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?;
        std::fs::write(p, j).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    f.stop();
    Ok(())
}

fn run_responder(a: ResponderArgs) -> Result<(), String> {
    pin(a.cpu)?;
    let duration = bounded(a.duration, 86_400.0, "--duration")?;
    let sock = responder::bind(a.listen).map_err(|e| e.to_string())?;
    eprintln!(
        "responder ({:?}) on {} for {:.0} s",
        a.io,
        sock.local_addr().map_err(|e| e.to_string())?,
        duration.as_secs_f64()
    );
    let n = responder::serve_with(a.io, &sock, duration, &AtomicBool::new(false))
        .map_err(|e| e.to_string())?;
    eprintln!("answered {n}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Load(a) => load(a),
        Cmd::Fleet(a) => run_fleet(a),
        Cmd::Responder(a) => run_responder(a),
        Cmd::Scenario(a) => scenario::main(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}
