//! The tierdns binary: command line, config, shards, metrics exporter, signals.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tierdns::config::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A caching DNS forwarder: sharded cache, staggered upstream tiers, io_uring shards.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML). Without it, the built-in defaults: listen on
    /// 127.0.0.1:5353, forward to five public resolvers.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the config (and the certificate files of [tls] and [https]) and exit:
    /// 0 when valid, 1 with the key and reason when not.
    #[arg(long)]
    check: bool,
    /// Print the effective config (defaults included) as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Serve /metrics here instead of [metrics] listen, at start and after every
    /// reload: IP:PORT, [IPv6]:PORT, or an IP (the config's port kept), such as a
    /// Kubernetes pod's address: --metrics-listen '$(POD_IP)'.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<tierdns::MetricsListen>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TIERDNS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("tierdns: {e}");
                return ExitCode::from(1);
            }
        },
        None => Config::default(),
    };
    let overrides = tierdns::Overrides {
        metrics_listen: cli.metrics_listen,
    };
    overrides.apply(&mut config);
    if cli.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    if cli.check {
        // The files it names (certificates, CA roots), read as a start would.
        if let Err(e) = tierdns::shard::Preflight::run(config.clone()) {
            eprintln!("tierdns: {e}");
            return ExitCode::from(1);
        }
        // Valid but risky: said, not refused.
        for warning in tierdns::warnings::check(&config) {
            eprintln!("tierdns: warning: {warning}");
        }
        println!("config ok");
        return ExitCode::SUCCESS;
    }
    for warning in tierdns::warnings::check(&config) {
        tracing::warn!("{warning}");
    }
    match tierdns::run(config, cli.config.as_deref(), &overrides) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tierdns: {e}");
            ExitCode::from(1)
        }
    }
}
