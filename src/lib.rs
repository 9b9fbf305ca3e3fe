//! tierdns: a caching DNS forwarder for Linux edge nodes.
//!
//! One query, top to bottom; imports go the same way, and [`io`] sits underneath:
//! 1. [`shard`]: a pinned thread receives the query on its own SO_REUSEPORT socket
//!    ([`listen`]: UDP, TCP, DoT, DoH), and answers it (`serve`): hit or miss.
//!    Before anything else its gate asks [`policy`]: is the client in
//!    `access.allow`, and (UDP) under its prefix's rate limit? If not: REFUSED with
//!    EDE 18, an empty TC=1 reply, or nothing.
//! 2. [`wire`]: [`wire::reader`] reads header, question and EDNS in place; protocol
//!    errors get FORMERR / NOTIMP / BADVERS from [`wire::build`], junk is dropped
//!    and counted.
//! 3. [`cache`]: the shared, partitioned packet cache answers a hit by copying the
//!    stored bytes and patching ID, question case and TTLs ([`wire::answer`]).
//! 4. [`flight`]: a miss joins or leads the one flight for its key (all shards).
//! 5. [`tiers`]: the leader's shard (`flight_run`) runs the tier plan for its
//!    [`zones`] route: which upstreams to ask and when, within the shard's
//!    amplification budget; then the merge.
//! 6. [`upstream`]: the shard's links to each upstream: a pool of connected UDP
//!    sockets (one picked at random per query) with their pending-query tables,
//!    TCP for truncated answers; or, for a `tls://` or `https://` upstream, pipelined
//!    DoT connections or an HTTP/2 connection (`upstream::encrypted`).
//! 7. [`health`]: EWMA RTT and circuit breaker per upstream (circuits shared by all
//!    shards), the order of the next plan, and the failure kinds everything above
//!    shares.
//! 8. [`io`] moves bytes and knows no DNS: the io_uring and epoll backends, the
//!    buffer pool, the batched receive loops, TCP framing.
//!
//! The first good answer goes to every waiter and into the cache; background
//! completion merges the rest and rewrites the entry under a version guard.
//! Shard-local counters are flushed to Prometheus by [`metrics`], served with the
//! admin endpoints (`/cache`: a cached name's records and who gave them;
//! `/upstreams`: each shard's view of upstream health) by [`admin`]; [`config`] holds
//! every key with its default, and [`warnings`] says what a valid one may still get
//! wrong (private keys others may read, an open resolver without a rate limit).
#![deny(unsafe_code)]
#![warn(missing_docs)]
// The module docs are the contributors' map: they link the private items they
// describe. `cargo doc --document-private-items` renders (and checks) those links;
// the public docs build without them. CI builds both with `-D warnings`.
#![allow(rustdoc::private_intra_doc_links)]

pub mod admin;
pub mod cache;
pub mod certs;
pub mod config;
pub mod duration;
pub mod flight;
pub mod health;
pub mod io;
mod listen;
pub mod metrics;
pub mod policy;
pub mod shard;
#[cfg(test)]
mod test_support;
pub mod tiers;
pub mod transport;
mod trust;
pub mod upstream;
pub mod warnings;
pub mod wire;
pub mod zones;

use config::Config;

/// Entry points for the fuzz targets in `fuzz/` (built with `--cfg fuzzing`): the
/// internal paths that have no public door.
#[cfg(fuzzing)]
pub mod fuzzing {
    /// The upstream reply path: the pending table's acceptance rules, then the
    /// tiers' classification of what was accepted. Returns whether the reply would
    /// count as a good answer.
    pub fn upstream_reply(reply: &[u8]) -> bool {
        let Some(accepted) = crate::upstream::fuzz_dispatch(reply) else {
            return false;
        };
        assert_eq!(accepted, reply, "handed over as received");
        crate::shard::fuzz_classify(&accepted)
    }

    /// The client request path: the access gate and the first pass of one shard
    /// over UDP, against a cache that holds an answer to the query's own question
    /// when `cached`. Returns the reply, if any (rules checked inside).
    pub fn client_request(packet: &[u8], cached: bool) -> Option<Vec<u8>> {
        crate::shard::fuzz_first_pass(packet, cached)
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Startup failed.
    #[error(transparent)]
    Start(#[from] shard::StartError),
    /// The metrics exporter could not start.
    #[error("metrics exporter on {addr}: {reason}")]
    Metrics {
        /// Its address.
        addr: std::net::SocketAddr,
        /// Why.
        reason: String,
    },
    /// Signal handling could not be set up.
    #[error("signal handling: {0}")]
    Signals(std::io::Error),
}

/// Settings given on the command line that take the place of the config file's,
/// at start and at every reload (so a reload does not see them as changes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--metrics-listen`: the exporter's address, or only its IP (the file's port
    /// kept), e.g. a Kubernetes pod's `$(POD_IP)`.
    pub metrics_listen: Option<MetricsListen>,
}

/// The value of `--metrics-listen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    /// An address and port.
    Addr(std::net::SocketAddr),
    /// An IP; the port is `[metrics] listen`'s.
    Ip(std::net::IpAddr),
}

impl std::str::FromStr for MetricsListen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.parse()
            .map(Self::Addr)
            .or_else(|_| text.parse().map(Self::Ip))
            .map_err(|_| format!("{text:?} is neither IP:PORT, [IPv6]:PORT nor an IP address"))
    }
}

impl Overrides {
    /// Puts these settings into `config`.
    pub fn apply(&self, config: &mut Config) {
        match self.metrics_listen {
            Some(MetricsListen::Addr(addr)) => config.metrics.listen = addr,
            Some(MetricsListen::Ip(ip)) => config.metrics.listen.set_ip(ip),
            None => {}
        }
    }
}

fn reload(handle: &shard::ServerHandle, path: Option<&std::path::Path>, overrides: &Overrides) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: running on the built-in config, nothing to reload");
        return;
    };
    match Config::load(path) {
        Ok(mut config) => match handle.reload({
            overrides.apply(&mut config);
            for warning in warnings::check(&config) {
                tracing::warn!("{warning}");
            }
            config
        }) {
            Ok(warnings) => {
                for warning in warnings {
                    tracing::warn!("reload: {warning}");
                }
                tracing::info!(config = %path.display(), "reloaded on every shard: upstreams, zones, strategy, tiers, budget, health, access, ratelimit, certificates");
            }
            Err(e) => {
                tracing::error!(config = %path.display(), "reload refused, every shard keeps the running config: {e}")
            }
        },
        Err(e) => tracing::error!("reload refused, keeping the running config: {e}"),
    }
}

/// Starts the server on `config`: the shards and their listeners. Returns once
/// every shard serves; [`shard::ServerHandle::shutdown`] stops it.
pub fn start(config: Config) -> Result<shard::ServerHandle, shard::StartError> {
    shard::start::<listen::Listeners>(shard::Preflight::run(config)?)
}

/// Runs the server until SIGTERM or SIGINT, then shuts down gracefully. With a
/// config file, SIGHUP rereads it: a valid file is applied (see
/// [`shard::ServerHandle::reload`]) on every shard or on none; an invalid one, or
/// one that cannot be built, is logged as refused and the running config stays.
/// `overrides` (already applied to `config`) are applied to every reloaded file.
pub fn run(
    config: Config,
    path: Option<&std::path::Path>,
    overrides: &Overrides,
) -> Result<(), RunError> {
    // The metrics listener is bound before the shards start (a bad address is a
    // start error) and serves once they run (`/cache` and `/upstreams` read them).
    let mut serving = None;
    if config.metrics.enabled {
        let addr = config.metrics.listen;
        let bad = |reason: String| RunError::Metrics { addr, reason };
        let exporter = metrics_exporter_prometheus::PrometheusBuilder::new()
            // Histograms with buckets (not summaries), so they aggregate across
            // shards and nodes in PromQL.
            .set_buckets(metrics::LATENCY_BUCKETS)
            .map_err(|e| bad(e.to_string()))?
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("tierdns_flight_peak_in_flight".into()),
                metrics::COUNT_BUCKETS,
            )
            .map_err(|e| bad(e.to_string()))?
            // Series nobody updates any more (an upstream removed by a reload)
            // disappear after five minutes instead of showing their last value.
            .idle_timeout(
                metrics_util::MetricKindMask::ALL,
                Some(std::time::Duration::from_secs(300)),
            );
        // Only `[metrics] allow` (validated with the config) is answered; anyone
        // else gets 403.
        let listener = admin::AdminListener::bind(addr, &config.metrics.allow)
            .map_err(|e| bad(e.to_string()))?;
        let recorder = exporter
            .install_recorder()
            .map_err(|e| bad(e.to_string()))?;
        metrics::describe();
        serving = Some((listener, recorder));
    }
    // Signal handlers first, so a SIGTERM right after startup is a clean stop.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Signals)?;
    let (mut term, mut int, mut hup) = {
        use tokio::signal::unix::{signal, SignalKind};
        let _guard = rt.enter();
        (
            signal(SignalKind::terminate()).map_err(RunError::Signals)?,
            signal(SignalKind::interrupt()).map_err(RunError::Signals)?,
            signal(SignalKind::hangup()).map_err(RunError::Signals)?,
        )
    };
    let shards = config.shard_count();
    let upstreams: Vec<String> = config
        .upstreams
        .iter()
        .map(|u| format!("{}={}", u.label(), u.address_text()))
        .collect();
    let handle = start(config)?;
    if let Some((listener, recorder)) = serving {
        let addr = listener.local_addr().ok();
        listener
            .serve(std::sync::Arc::clone(&handle.shared), Some(recorder))
            .map_err(|e| RunError::Metrics {
                addr: addr.unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
                reason: e.to_string(),
            })?;
    }
    tracing::info!(
        listen = ?handle.local_addrs,
        tls = ?handle.tls_addrs,
        https = ?handle.https_addrs,
        shards,
        io = handle.backend,
        upstreams = ?upstreams,
        "tierdns {} running: io backend {} ({})",
        env!("CARGO_PKG_VERSION"),
        handle.backend,
        handle.backend_reason
    );
    let signal = rt.block_on(async {
        loop {
            tokio::select! {
                _ = term.recv() => return "SIGTERM",
                _ = int.recv() => return "SIGINT",
                _ = hup.recv() => reload(&handle, path, overrides),
            }
        }
    });
    tracing::info!(
        signal,
        "shutting down: no new queries, finishing in-flight ones"
    );
    handle.shutdown();
    tracing::info!("stopped");
    Ok(())
}
