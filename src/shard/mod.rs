//! Shards: N pinned threads, each with its own single-threaded runtime, sockets,
//! upstream links, buffer pool and counters.
//!
//! Startup binds every socket on the calling thread first ([`sockets`]), chooses the
//! io backend ([`runtime`]), then starts one thread per shard. A shard owns, per
//! listen address, a SO_REUSEPORT UDP socket (the kernel spreads clients over shards)
//! and a SO_REUSEPORT TCP listener (and the DoT/DoH listeners); per upstream, a pool
//! of connected UDP sockets with random source ports, rotated, and reused TCP
//! connections for truncated answers, or its DoT/DoH link ([`upstreams`]). Only the
//! cache, the flight table, the circuit board, the rate limiters' tables and the
//! stream budgets are shared between shards.
//!
//! The transports live above the shard, in the `listen` folder; the shard starts them
//! on its client sockets through [`StartListeners`] and imports nothing of them.
//! What a shard itself drives, one file each:
//! - [`gate`]: the client policy every listener applies first (access list, rate
//!   limit);
//! - [`serve`](mod@serve): one client query, hit or miss (the first pass, joining or leading
//!   the flight, the reply);
//! - [`flight_run`]: one flight's driver, the tier plan on the upstream links;
//! - [`reload`]: a new config applied; [`stats`]: counters flushed to metrics;
//! - [`stop`]: the shutdown (client sockets released, what they hold answered).

#[cfg(fuzzing)]
mod fuzz;
#[cfg(fuzzing)]
pub(crate) use fuzz::{fuzz_classify, fuzz_first_pass};
mod flight_run;
mod gate;
mod preflight;
mod reload;
mod runtime;
mod serve;
mod sockets;
mod state;
mod stats;
mod stop;
mod upstreams;

use crate::cache::PacketCache;
use crate::certs::ListenerTls;
use crate::config::Config;
use crate::flight::{FlightResult, FlightTable};
use crate::health::{CircuitBoard, HealthTracker};
use crate::io::buffers::BufferPool;
use crate::io::udp::EndMarker;
use crate::io::{Backend, Epoll, Uring};
use crate::metrics::ShardStats;
use crate::policy::stream_conns::StreamConns;
use crate::policy::{Policy, RateLimiter, StreamLimiters, TcpClients};
use crate::tiers::Budget;
pub(crate) use gate::Gate;
pub use preflight::Preflight;
pub use reload::ReloadRefused;
use runtime::{choose_backend, run_shard};
pub(crate) use serve::First;
use sockets::{bind_all, bind_encrypted, ShardSockets};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
pub(crate) use stop::ListenerTasks;
use tokio::sync::watch;
use upstreams::{CheckedUpstreams, UpstreamSet};

/// State shared by every shard: the only cross-thread data on the query path.
#[derive(Debug)]
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// The packet cache.
    pub cache: PacketCache,
    /// Flights in progress.
    pub flights: Arc<FlightTable<FlightResult>>,
    /// Client prefixes and their rate-limit buckets (one table for all shards).
    pub ratelimiter: RateLimiter,
    /// The stream rates' tables (connections, TLS sessions, queries), for all
    /// shards.
    pub stream_limiters: StreamLimiters,
    /// Upstream circuits opened by any shard.
    pub board: CircuitBoard,
    /// Bytes of framed replies queued and not yet written on every TCP and DoT
    /// connection (the listeners' reply budget).
    pub stream_reply_bytes: std::sync::atomic::AtomicUsize,
    /// Open TCP connections per client address (one table for all shards).
    pub tcp_clients: Arc<TcpClients>,
    /// The TLS state of the DoT and DoH listeners.
    pub(crate) listener_tls: ListenerTls,
}

impl Shared {
    /// The state `shards` shards share, for `config`.
    fn new(config: Config, shards: usize, listener_tls: ListenerTls) -> Self {
        Self {
            listener_tls,
            cache: PacketCache::new(config.cache.clone()),
            flights: Arc::new(FlightTable::new(
                (shards * 64).next_power_of_two(),
                config.limits.flight_max_waiters,
            )),
            ratelimiter: RateLimiter::new(),
            stream_limiters: StreamLimiters::default(),
            stream_reply_bytes: std::sync::atomic::AtomicUsize::new(0),
            board: CircuitBoard::new(),
            // Every connection a shard holds, those closed for a newer one and
            // still draining included (see tcp.rs), has at most one address.
            tcp_clients: Arc::new(TcpClients::new(
                shards * 4,
                shards
                    .saturating_mul(config.limits.tcp_connections)
                    .saturating_mul(2),
                (config.ratelimit.ipv4_prefix, config.ratelimit.ipv6_prefix),
            )),
            config,
        }
    }
}

/// A shard on the epoll types with no sockets and no tasks, for driving its
/// synchronous paths (the gate, the first pass) from tests and the fuzzer. Nothing
/// may send upstream: give it a config without upstreams.
#[cfg(any(test, fuzzing))]
pub(crate) fn socketless_shard(config: Config) -> Rc<Shard<Epoll>> {
    let shared = Arc::new(Shared::new(config, 1, ListenerTls::default()));
    let sockets = ShardSockets::empty();
    let (_, shutdown) = watch::channel(false);
    let checked = CheckedUpstreams::check(Arc::new(shared.config.clone())).expect("no upstreams");
    let (built, _) =
        build_shard::<Epoll>(0, shared, sockets, &checked, shutdown).expect("a socketless shard");
    built.shard
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listen socket could not be bound.
    #[error("cannot listen on {addr} ({proto}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// "udp" or "tcp".
        proto: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// `io = "uring"` but io_uring cannot be set up.
    #[error("io = \"uring\" but io_uring is unavailable: {0}")]
    Uring(std::io::Error),
    /// A shard failed while starting.
    #[error("shard {shard} failed to start: {reason}")]
    Shard {
        /// Which.
        shard: usize,
        /// Why.
        reason: String,
    },
    /// A certificate of the encrypted listeners could not be loaded (the message
    /// names the config key).
    #[error("{0}")]
    Tls(String),
    /// An encrypted upstream's roots or TLS setup failed (the message names it).
    #[error("{0}")]
    Upstream(String),
}

/// A running server.
pub struct ServerHandle {
    threads: Vec<std::thread::JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    /// The config in force and the shards' reload queues; one reload at a time.
    reloader: std::sync::Mutex<reload::Reloader>,
    /// The addresses served, with port 0 resolved (UDP and TCP share the port).
    pub local_addrs: Vec<SocketAddr>,
    /// The DNS over TLS addresses (`tls.listen`), port 0 resolved.
    pub tls_addrs: Vec<SocketAddr>,
    /// The DNS over HTTPS addresses (`https.listen`), port 0 resolved.
    pub https_addrs: Vec<SocketAddr>,
    /// The io backend running ("uring" or "epoll").
    pub backend: &'static str,
    /// Why this backend was chosen.
    pub backend_reason: String,
    /// Shared state (cache, flights), for tests and metrics.
    pub shared: Arc<Shared>,
    /// Writes `[server] state_file`, if set.
    state: Option<state::Writer>,
}

impl ServerHandle {
    /// Stops accepting, lets in-flight queries finish up to `shutdown_grace`, joins
    /// the shard threads, and writes the state file a last time.
    pub fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.threads {
            let _ = t.join();
        }
        if let Some(state) = self.state {
            state.finish();
        }
    }
}

/// What starts a shard's listeners on its client sockets: the layer above the
/// shard (the `listen` folder), passed in so that the shard imports nothing of it.
pub(crate) trait StartListeners: 'static {
    /// Starts the tasks that serve `sockets` for `shard`; they end at its shutdown.
    fn spawn<B: Backend>(shard: &Rc<Shard<B>>, sockets: ClientSockets<B>) -> ListenerTasks;
}

/// A shard's client sockets, adopted by its backend, for its listeners.
pub(crate) struct ClientSockets<B: Backend> {
    /// A UDP socket per listen address.
    pub(crate) udp: Vec<B::Udp>,
    /// A TCP listener per listen address.
    pub(crate) tcp: Vec<B::Listener>,
    /// DNS over TLS listeners (tokio's: TLS runs on its reactor).
    pub(crate) dot: Vec<tokio::net::TcpListener>,
    /// DNS over HTTPS listeners.
    pub(crate) doh: Vec<tokio::net::TcpListener>,
}

/// Starts the shards, each with the listeners `L` starts. Returns once every
/// shard has its sockets running.
pub(crate) fn start<L: StartListeners>(preflight: Preflight) -> Result<ServerHandle, StartError> {
    let Preflight {
        listener_tls,
        upstreams,
    } = preflight;
    let config = (*upstreams.config).clone();
    let shards = config.shard_count();
    let (uring, backend_reason) = choose_backend(&config)?;
    let backend = if uring { Uring::NAME } else { Epoll::NAME };
    // Roots and TLS setups read once, for every shard.
    let checked = Arc::new(upstreams);
    let (mut sockets, local_addrs) = bind_all(&config, shards)?;
    let (tls_addrs, https_addrs) = bind_encrypted(&config, &mut sockets)?;
    let shared = Arc::new(Shared::new(config, shards, listener_tls));
    state::seed(&shared);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (reloader, reload_rxs) = reload::Reloader::new(Arc::clone(&checked.config), shards);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<usize, (usize, String)>>();
    let cores = if shared.config.server.pin_cpus {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut threads = Vec::with_capacity(shards);
    for ((index, sockets), reloads) in sockets.into_iter().enumerate().zip(reload_rxs) {
        let shared = Arc::clone(&shared);
        let checked = Arc::clone(&checked);
        let shutdown = shutdown_rx.clone();
        let ready = ready_tx.clone();
        let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
        let thread = std::thread::Builder::new()
            .name(format!("tierdns-shard-{index}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                let signals = Signals {
                    checked,
                    shutdown,
                    reloads,
                };
                run_shard::<L>(index, uring, shared, sockets, signals, ready);
            })
            .map_err(|e| StartError::Shard {
                shard: index,
                reason: e.to_string(),
            })?;
        threads.push(thread);
    }
    drop(ready_tx);
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err((shard, reason))) => {
                let _ = shutdown_tx.send(true);
                return Err(StartError::Shard { shard, reason });
            }
            Err(_) => {
                let _ = shutdown_tx.send(true);
                return Err(StartError::Shard {
                    shard: 0,
                    reason: "a shard thread exited during startup".into(),
                });
            }
        }
    }
    metrics::gauge!("tierdns_info", "version" => env!("CARGO_PKG_VERSION"), "io" => backend)
        .set(1.0);
    Ok(ServerHandle {
        threads,
        shutdown: shutdown_tx,
        reloader: std::sync::Mutex::new(reloader),
        local_addrs,
        tls_addrs,
        https_addrs,
        backend,
        backend_reason,
        state: state::Writer::start(&shared),
        shared,
    })
}

type Ready = std::sync::mpsc::Sender<Result<usize, (usize, String)>>;

/// What a shard starts from and listens to.
struct Signals {
    /// Its upstreams, checked once for all shards.
    checked: Arc<CheckedUpstreams>,
    /// Set at shutdown.
    shutdown: watch::Receiver<bool>,
    /// The steps of reloads.
    reloads: tokio::sync::mpsc::Receiver<reload::Step>,
}

/// Everything one shard owns. The shard's own modules reach its fields; the
/// listeners see the accessors below (and the gate, first pass and resolve in
/// [`gate`] and [`mod@serve`]).
pub(crate) struct Shard<B: Backend> {
    index: usize,
    shared: Arc<Shared>,
    /// The upstream set in force; replaced whole by a reload.
    upstreams: RefCell<Rc<UpstreamSet<B>>>,
    health: RefCell<HealthTracker>,
    /// The amplification budget of this shard's flights.
    budget: RefCell<Budget>,
    pool: Rc<BufferPool>,
    stats: Rc<ShardStats>,
    /// The client policy in force ([`gate`]); replaced whole by a reload.
    policy: RefCell<Rc<Policy>>,
    /// Client queries being resolved (misses) on this shard.
    in_flight: Cell<usize>,
    /// Background work running: flights collecting after their first answer, and
    /// prefetches (bound: `limits.max_background`).
    background: Cell<usize>,
    /// The stream client connections (TCP, DoT, DoH): those running, and the
    /// registry that closes the idlest at the bound.
    streams: StreamConns,
    shutdown: watch::Receiver<bool>,
    /// Ends the client UDP loops if their end marker never comes ([`stop`]).
    udp_stop: watch::Receiver<bool>,
    /// What ends the client UDP loops once their sockets are released.
    udp_end: EndMarker,
}

impl<B: Backend> Shard<B> {
    /// Which shard (logs).
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// What every shard shares (the config, the cache, the process-wide tables).
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The shard's packet buffers.
    pub(crate) fn pool(&self) -> &Rc<BufferPool> {
        &self.pool
    }

    /// The shard's counters.
    pub(crate) fn stats(&self) -> &Rc<ShardStats> {
        &self.stats
    }

    /// The shard's stream client connections.
    pub(crate) fn streams(&self) -> &StreamConns {
        &self.streams
    }

    /// Becomes true when the shard shuts down.
    pub(crate) fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// Becomes true when the client UDP loops must stop although their end
    /// marker has not come ([`stop`]).
    pub(crate) fn udp_stop(&self) -> watch::Receiver<bool> {
        self.udp_stop.clone()
    }

    /// The marker that ends a client UDP loop once its socket is released.
    pub(crate) fn udp_end(&self) -> &EndMarker {
        &self.udp_end
    }
}

/// A client query admitted to the miss path: counted in the shard's `in_flight`
/// for as long as it lives, however its task ends. Clones share the one count: the
/// flight a query leads holds a clone, so a client that goes away (a reset DoH
/// stream, a closed connection) frees its place only when that flight is over.
pub(crate) struct Admitted<B: Backend>(Rc<AdmittedQuery<B>>);

impl<B: Backend> Clone for Admitted<B> {
    fn clone(&self) -> Self {
        Self(Rc::clone(&self.0))
    }
}

/// The one count behind an [`Admitted`] and its clones.
pub(crate) struct AdmittedQuery<B: Backend>(Rc<Shard<B>>);

impl<B: Backend> Drop for AdmittedQuery<B> {
    fn drop(&mut self) {
        let n = &self.0.in_flight;
        n.set(n.get().saturating_sub(1));
    }
}

/// One piece of background work, counted in the shard's `background` for as long
/// as it lives.
pub(crate) struct BackgroundSlot<B: Backend>(Rc<Shard<B>>);

impl<B: Backend> Drop for BackgroundSlot<B> {
    fn drop(&mut self) {
        let n = &self.0.background;
        n.set(n.get().saturating_sub(1));
    }
}

impl<B: Backend> Shard<B> {
    /// A slot for background work, unless `max_background` are running: then the
    /// work is shed and counted.
    pub(crate) fn background_slot(self: &Rc<Self>) -> Option<BackgroundSlot<B>> {
        if self.background.get() >= self.shared.config.limits.max_background {
            ShardStats::bump(&self.stats.tiers.background_shed);
            return None;
        }
        self.background.set(self.background.get() + 1);
        Some(BackgroundSlot(Rc::clone(self)))
    }

    /// Admits one more miss unless `max_client_in_flight` are being resolved;
    /// at the bound the query is dropped and counted (`reason="overload"`).
    pub(crate) fn admit(self: &Rc<Self>) -> Option<Admitted<B>> {
        if self.in_flight.get() >= self.shared.config.limits.max_client_in_flight {
            self.stats.dropped(crate::metrics::DropReason::Overload);
            return None;
        }
        self.in_flight.set(self.in_flight.get() + 1);
        Some(Admitted(Rc::new(AdmittedQuery(Rc::clone(self)))))
    }

    /// Client UDP receive loops per socket: `server.udp_receivers` where the
    /// backend runs them in parallel, else one.
    pub(crate) fn udp_receivers(&self) -> usize {
        if B::PARALLEL_RECEIVES {
            self.shared.config.server.udp_receivers
        } else {
            1
        }
    }
}

async fn shard_main<B: Backend, L: StartListeners>(
    index: usize,
    shared: Arc<Shared>,
    sockets: ShardSockets,
    signals: Signals,
    ready: Ready,
) {
    let Signals {
        checked,
        shutdown,
        reloads,
    } = signals;
    match build_shard::<B>(index, shared, sockets, &checked, shutdown) {
        Ok((built, closers)) => {
            let _ = ready.send(Ok(index));
            drop(ready);
            drop(checked);
            let reloader =
                tokio::task::spawn_local(reload::reload_loop(Rc::clone(&built.shard), reloads));
            serve::<B, L>(built, closers).await;
            reloader.abort();
        }
        Err(reason) => {
            let _ = ready.send(Err((index, reason)));
        }
    }
}

/// A shard with its client sockets, ready to serve.
struct Built<B: Backend> {
    shard: Rc<Shard<B>>,
    sockets: ClientSockets<B>,
    /// Fires the shard's `udp_stop`.
    udp_stop: watch::Sender<bool>,
}

fn build_shard<B: Backend>(
    index: usize,
    shared: Arc<Shared>,
    sockets: ShardSockets,
    checked: &CheckedUpstreams,
    shutdown: watch::Receiver<bool>,
) -> Result<(Built<B>, Vec<socket2::Socket>), String> {
    let config = &shared.config;
    let pool = Rc::new(BufferPool::new(config.limits.buffer_pool, 64));
    let stats = Rc::new(ShardStats::new(config.upstreams.len()));
    let (set, _) = UpstreamSet::build(checked, None, &stats, &shared.board)?;
    let priorities: Vec<i32> = config.upstreams.iter().map(|u| u.priority).collect();
    let health = HealthTracker::new(config.health.clone(), &priorities);
    let policy = Policy::new(&config.access, &config.ratelimit).map_err(|e| e.to_string())?;
    let udp = sockets
        .udp
        .into_iter()
        .map(|s| B::udp(s).map_err(|e| format!("client UDP socket: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let tcp = sockets
        .tcp
        .into_iter()
        .map(|s| B::listener(s).map_err(|e| format!("TCP listener: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let tokio_listener =
        |s| tokio::net::TcpListener::from_std(s).map_err(|e| format!("TLS listener: {e}"));
    let dot = sockets
        .dot
        .into_iter()
        .map(tokio_listener)
        .collect::<Result<Vec<_>, _>>()?;
    let doh = sockets
        .doh
        .into_iter()
        .map(tokio_listener)
        .collect::<Result<Vec<_>, _>>()?;
    let budget =
        Budget::new(config.budget.clone(), Instant::now()).for_shards(config.shard_count());
    let (udp_stop_tx, udp_stop) = watch::channel(false);
    let shard = Rc::new(Shard {
        index,
        shared,
        upstreams: RefCell::new(Rc::new(set)),
        health: RefCell::new(health),
        budget: RefCell::new(budget),
        pool,
        stats,
        policy: RefCell::new(Rc::new(policy)),
        in_flight: Cell::new(0),
        background: Cell::new(0),
        streams: StreamConns::default(),
        shutdown,
        udp_stop,
        udp_end: EndMarker::random(),
    });
    let closers = sockets.closers;
    let sockets = ClientSockets { udp, tcp, dot, doh };
    let built = Built {
        shard,
        sockets,
        udp_stop: udp_stop_tx,
    };
    Ok((built, closers))
}

async fn serve<B: Backend, L: StartListeners>(built: Built<B>, closers: Vec<socket2::Socket>) {
    let Built {
        shard,
        sockets,
        udp_stop,
    } = built;
    let tasks = L::spawn(&shard, sockets);
    let flusher = tokio::task::spawn_local(stats::flush_loop(Rc::clone(&shard)));
    let mut shutdown = shard.shutdown.clone();
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    stop::stop(&shard, tasks, closers, udp_stop).await;
    flusher.abort();
    shard.stats.flush(&shard.upstreams.borrow().labels);
    tracing::debug!(shard = shard.index, "shard stopped");
}

#[cfg(test)]
mod zero_alloc;
