//! Shards: N pinned threads, each with its own single-threaded runtime, sockets,
//! upstream links, buffer pool and counters.
//!
//! Startup binds every socket on the calling thread first (so a port in use or a
//! port 0 is resolved once and reported before anything runs), then starts one
//! thread per shard. A shard owns, per listen address, a SO_REUSEPORT UDP socket
//! (the kernel spreads clients over shards) and a SO_REUSEPORT TCP listener; per
//! upstream, one connected UDP socket and a few idle TCP connections. Only the cache
//! and the flight table are shared between shards.
//!
//! The io backend is chosen once: `uring` (tokio-uring), `epoll` (tokio
//! current-thread), or `auto`, which probes io_uring_setup and falls back to epoll
//! when the kernel refuses it (seccomp, `kernel.io_uring_disabled`, old kernel). The
//! reason is logged and exported in `tierdns_info`.

pub(crate) mod buffers;
pub(crate) mod io;
mod tcp;
// The two modules with `unsafe`: batched socket calls and the io_uring buffer ring
// and message headers, memory shared with the kernel. Each block says why it is sound.
#[allow(unsafe_code)]
mod mmsg;
#[allow(unsafe_code)]
mod ring;
mod udp;
pub(crate) mod upstreams;

use crate::cache::PacketCache;
use crate::config::{Config, IoBackend};
use crate::flight::FlightTable;
use crate::health::HealthTracker;
use crate::metrics::ShardStats;
use crate::resolve::FlightResult;
use buffers::BufferPool;
use io::{Backend, Epoll, Uring};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use upstreams::UpstreamSet;

/// State shared by every shard: the only cross-thread data on the query path.
#[derive(Debug)]
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// The packet cache.
    pub cache: PacketCache,
    /// Flights in progress.
    pub flights: Arc<FlightTable<FlightResult>>,
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
}

/// One shard's sockets, bound before its thread starts.
struct ShardSockets {
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<std::net::TcpListener>,
    /// Duplicates of every listening socket, to shut them down at stop: an io_uring
    /// receive or accept in flight keeps a socket open after its loop is gone, and
    /// with SO_REUSEPORT the kernel would keep routing new clients to it.
    closers: Vec<socket2::Socket>,
}

impl ShardSockets {
    fn push_udp(&mut self, sock: std::net::UdpSocket) -> std::io::Result<()> {
        self.closers.push(socket2::Socket::from(sock.try_clone()?));
        self.udp.push(sock);
        Ok(())
    }

    fn push_tcp(&mut self, sock: std::net::TcpListener) -> std::io::Result<()> {
        self.closers.push(socket2::Socket::from(sock.try_clone()?));
        self.tcp.push(sock);
        Ok(())
    }
}

/// A running server.
pub struct ServerHandle {
    threads: Vec<std::thread::JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    reload: watch::Sender<Arc<Config>>,
    /// The addresses served, with port 0 resolved (UDP and TCP share the port).
    pub local_addrs: Vec<SocketAddr>,
    /// The io backend running ("uring" or "epoll").
    pub backend: &'static str,
    /// Why this backend was chosen.
    pub backend_reason: String,
    /// Shared state (cache, flights), for tests and metrics.
    pub shared: Arc<Shared>,
}

impl ServerHandle {
    /// Applies a new (validated) config: upstreams, forward zones, strategy, tiers
    /// and health parameters take effect at once on every shard; the health of
    /// upstreams that stay is kept. Other sections need a restart: each one that
    /// changed is named in the returned warnings and keeps its running value.
    pub fn reload(&self, config: Config) -> Vec<String> {
        let running = self.reload.borrow().clone();
        let mut warnings = Vec::new();
        let fixed = [
            (
                "server",
                toml::to_string(&running.server),
                toml::to_string(&config.server),
            ),
            (
                "limits",
                toml::to_string(&running.limits),
                toml::to_string(&config.limits),
            ),
            (
                "cache",
                toml::to_string(&running.cache),
                toml::to_string(&config.cache),
            ),
            (
                "metrics",
                toml::to_string(&running.metrics),
                toml::to_string(&config.metrics),
            ),
        ];
        for (section, old, new) in fixed {
            if old.ok() != new.ok() {
                warnings.push(format!(
                    "[{section}] changed: it takes effect only after a restart"
                ));
            }
        }
        let mut applied = config;
        applied.server = running.server.clone();
        applied.limits = running.limits.clone();
        applied.cache = running.cache.clone();
        applied.metrics = running.metrics.clone();
        let _ = self.reload.send(Arc::new(applied));
        warnings
    }

    /// Stops accepting, lets in-flight queries finish up to `shutdown_grace`, and
    /// joins the shard threads.
    pub fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn reuse_port_socket(addr: SocketAddr, ty: socket2::Type) -> std::io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, ty, None)?;
    sock.set_reuse_port(true)?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sock)
}

fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, StartError> {
    let err = |source| StartError::Bind {
        addr,
        proto: "udp",
        source,
    };
    let sock = reuse_port_socket(addr, socket2::Type::DGRAM).map_err(err)?;
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    Ok(sock.into())
}

fn bind_tcp(addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    let err = |source| StartError::Bind {
        addr,
        proto: "tcp",
        source,
    };
    let sock = reuse_port_socket(addr, socket2::Type::STREAM).map_err(err)?;
    sock.listen(1024).map_err(err)?;
    Ok(sock.into())
}

/// Binds every shard's sockets; a port 0 is resolved by the first bind and reused.
fn bind_all(
    config: &Config,
    shards: usize,
) -> Result<(Vec<ShardSockets>, Vec<SocketAddr>), StartError> {
    let mut resolved = Vec::new();
    let mut per_shard: Vec<ShardSockets> = (0..shards)
        .map(|_| ShardSockets {
            udp: Vec::new(),
            tcp: Vec::new(),
            closers: Vec::new(),
        })
        .collect();
    for &want in &config.server.listen {
        // With port 0, the kernel picks a UDP port; TCP then takes the same number,
        // retried a few times in case that TCP port is taken.
        let mut attempt = 0;
        let (addr, udp0, tcp0) = loop {
            let udp0 = bind_udp(want)?;
            let addr = udp0.local_addr().map_err(|source| StartError::Bind {
                addr: want,
                proto: "udp",
                source,
            })?;
            match bind_tcp(addr) {
                Ok(tcp0) => break (addr, udp0, tcp0),
                Err(e) if want.port() == 0 && attempt < 8 => {
                    attempt += 1;
                    tracing::debug!(error = %e, "retrying port choice");
                }
                Err(e) => return Err(e),
            }
        };
        resolved.push(addr);
        let dup_err = |source| StartError::Bind {
            addr,
            proto: "dup",
            source,
        };
        per_shard[0].push_udp(udp0).map_err(dup_err)?;
        per_shard[0].push_tcp(tcp0).map_err(dup_err)?;
        for sockets in per_shard.iter_mut().skip(1) {
            sockets.push_udp(bind_udp(addr)?).map_err(dup_err)?;
            sockets.push_tcp(bind_tcp(addr)?).map_err(dup_err)?;
        }
    }
    Ok((per_shard, resolved))
}

/// Decides the backend: (use uring, reason).
fn choose_backend(config: &Config) -> Result<(bool, String), StartError> {
    // Probe on a throwaway thread: tearing a ring down queues task work on the
    // thread that made it, which interrupts that thread's next blocking syscall.
    let entries = config.server.uring_entries;
    let probe = || {
        std::thread::spawn(move || io_uring::IoUring::new(entries).map(drop))
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("io_uring probe panicked")))
    };
    match config.server.io {
        IoBackend::Epoll => Ok((false, "configured io = \"epoll\"".into())),
        IoBackend::Uring => {
            probe().map_err(StartError::Uring)?;
            Ok((true, "configured io = \"uring\"".into()))
        }
        IoBackend::Auto => match probe() {
            Ok(()) => Ok((true, "io = \"auto\" and io_uring is available".into())),
            Err(e) => Ok((
                false,
                format!("io = \"auto\" and io_uring_setup failed ({e}); falling back to epoll"),
            )),
        },
    }
}

/// Starts the shards. Returns once every shard has its sockets running.
pub fn start(config: Config) -> Result<ServerHandle, StartError> {
    let shards = config.shard_count();
    let (uring, backend_reason) = choose_backend(&config)?;
    let backend = if uring { Uring::NAME } else { Epoll::NAME };
    let (sockets, local_addrs) = bind_all(&config, shards)?;
    let shared = Arc::new(Shared {
        cache: PacketCache::new(config.cache.clone()),
        flights: Arc::new(FlightTable::new(
            (shards * 64).next_power_of_two(),
            config.limits.flight_max_waiters,
        )),
        config,
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (reload_tx, reload_rx) = watch::channel(Arc::new(shared.config.clone()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<usize, (usize, String)>>();
    let cores = if shared.config.server.pin_cpus {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut threads = Vec::with_capacity(shards);
    for (index, sockets) in sockets.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        let shutdown = shutdown_rx.clone();
        let reloads = reload_rx.clone();
        let ready = ready_tx.clone();
        let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
        let thread = std::thread::Builder::new()
            .name(format!("tierdns-shard-{index}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                run_shard(index, uring, shared, sockets, (shutdown, reloads), ready);
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
        reload: reload_tx,
        local_addrs,
        backend,
        backend_reason,
        shared,
    })
}

type Ready = std::sync::mpsc::Sender<Result<usize, (usize, String)>>;

/// What a shard listens to: shutdown, and new configs to reload.
type Signals = (watch::Receiver<bool>, watch::Receiver<Arc<Config>>);

fn run_shard(
    index: usize,
    uring: bool,
    shared: Arc<Shared>,
    sockets: ShardSockets,
    signals: Signals,
    ready: Ready,
) {
    if uring {
        let mut builder = tokio_uring::builder();
        builder.entries(shared.config.server.uring_entries);
        // Completions for a running shard wait until it next enters the kernel rather
        // than interrupting it (Linux 5.19+); older kernels get the default ring.
        let mut coop = tokio_uring::uring_builder();
        coop.setup_coop_taskrun();
        builder.uring_builder(&coop);
        let rt = tokio_uring::Runtime::new(&builder).or_else(|_| {
            builder.uring_builder(&tokio_uring::uring_builder());
            tokio_uring::Runtime::new(&builder)
        });
        match rt {
            Ok(rt) => rt.block_on(shard_main::<Uring>(index, shared, sockets, signals, ready)),
            Err(e) => {
                let _ = ready.send(Err((index, format!("io_uring runtime: {e}"))));
            }
        }
    } else {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        match rt {
            Ok(rt) => {
                let local = tokio::task::LocalSet::new();
                local.block_on(
                    &rt,
                    shard_main::<Epoll>(index, shared, sockets, signals, ready),
                );
            }
            Err(e) => {
                let _ = ready.send(Err((index, format!("tokio runtime: {e}"))));
            }
        }
    }
}

/// Everything one shard owns.
pub(crate) struct Shard<B: Backend> {
    pub(crate) index: usize,
    pub(crate) shared: Arc<Shared>,
    /// The upstream set in force; replaced whole by a reload.
    pub(crate) upstreams: RefCell<Rc<UpstreamSet<B>>>,
    pub(crate) health: RefCell<HealthTracker>,
    pub(crate) pool: Rc<BufferPool>,
    pub(crate) stats: Rc<ShardStats>,
    /// Client queries being resolved (misses) on this shard.
    pub(crate) in_flight: Cell<usize>,
    pub(crate) tcp_open: Cell<usize>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// A client query admitted to the miss path: counted in the shard's `in_flight`
/// for as long as it lives, however its task ends.
pub(crate) struct Admitted<B: Backend>(Rc<Shard<B>>);

impl<B: Backend> Drop for Admitted<B> {
    fn drop(&mut self) {
        let n = &self.0.in_flight;
        n.set(n.get().saturating_sub(1));
    }
}

impl<B: Backend> Shard<B> {
    /// Admits one more miss unless `max_client_in_flight` are being resolved;
    /// at the bound the query is dropped and counted (`reason="overload"`).
    pub(crate) fn admit(self: &Rc<Self>) -> Option<Admitted<B>> {
        if self.in_flight.get() >= self.shared.config.limits.max_client_in_flight {
            self.stats.dropped(crate::metrics::Drop::Overload);
            return None;
        }
        self.in_flight.set(self.in_flight.get() + 1);
        Some(Admitted(Rc::clone(self)))
    }
}

async fn shard_main<B: Backend>(
    index: usize,
    shared: Arc<Shared>,
    sockets: ShardSockets,
    (shutdown, reloads): Signals,
    ready: Ready,
) {
    match build_shard::<B>(index, shared, sockets, shutdown) {
        Ok((built, closers)) => {
            let _ = ready.send(Ok(index));
            drop(ready);
            let reloader =
                tokio::task::spawn_local(upstreams::reload_loop(Rc::clone(&built.0), reloads));
            serve(built, closers).await;
            reloader.abort();
        }
        Err(reason) => {
            let _ = ready.send(Err((index, reason)));
        }
    }
}

/// A shard with its client sockets, ready to serve.
type Built<B> = (
    Rc<Shard<B>>,
    Vec<<B as Backend>::Udp>,
    Vec<<B as Backend>::Listener>,
);

fn build_shard<B: Backend>(
    index: usize,
    shared: Arc<Shared>,
    sockets: ShardSockets,
    shutdown: watch::Receiver<bool>,
) -> Result<(Built<B>, Vec<socket2::Socket>), String> {
    let config = &shared.config;
    let pool = Rc::new(BufferPool::new(config.limits.buffer_pool, 64));
    let stats = Rc::new(ShardStats::new(config.upstreams.len()));
    let (set, _) = UpstreamSet::build(Arc::new(config.clone()), None, &pool, &stats)?;
    let priorities: Vec<i32> = config.upstreams.iter().map(|u| u.priority).collect();
    let health = HealthTracker::new(config.health.clone(), &priorities);
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
    let shard = Rc::new(Shard {
        index,
        shared,
        upstreams: RefCell::new(Rc::new(set)),
        health: RefCell::new(health),
        pool,
        stats,
        in_flight: Cell::new(0),
        tcp_open: Cell::new(0),
        shutdown,
    });
    Ok(((shard, udp, tcp), sockets.closers))
}

async fn serve<B: Backend>((shard, udp, tcp): Built<B>, closers: Vec<socket2::Socket>) {
    let config = &shard.shared.config;
    let receivers = if B::PARALLEL_RECEIVES {
        config.server.udp_receivers
    } else {
        1
    };
    let mut tasks = Vec::new();
    for sock in udp {
        let sock = Rc::new(sock);
        tasks.push(tokio::task::spawn_local(B::serve_udp(
            Rc::clone(&shard),
            sock,
            receivers,
        )));
    }
    for listener in tcp {
        tasks.push(tokio::task::spawn_local(tcp::accept_loop(
            Rc::clone(&shard),
            listener,
        )));
    }
    let flusher = tokio::task::spawn_local(flush_loop(Rc::clone(&shard)));
    let mut shutdown = shard.shutdown.clone();
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    // Stop receiving: the loops see the signal and end; shutting the sockets down
    // completes their abandoned operations, so the sockets really close.
    for t in tasks {
        let _ = t.await;
    }
    for c in closers {
        let done = if c.r#type().ok() == Some(socket2::Type::DGRAM) {
            io::release_udp(&c, receivers)
        } else {
            c.shutdown(std::net::Shutdown::Read)
        };
        if let Err(e) = done {
            tracing::debug!(error = %e, "closing a listening socket early failed");
        }
    }
    let deadline = Instant::now() + shard.shared.config.server.shutdown_grace;
    while (shard.in_flight.get() > 0 || shard.tcp_open.get() > 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    flusher.abort();
    shard.stats.flush(&shard.upstreams.borrow().labels);
    tracing::debug!(shard = shard.index, "shard stopped");
}

async fn flush_loop<B: Backend>(shard: Rc<Shard<B>>) {
    let mut tick = tokio::time::interval(shard.shared.config.metrics.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let set = Rc::clone(&shard.upstreams.borrow());
        shard.stats.flush(&set.labels);
        let health = shard.health.borrow();
        for (i, label) in set.labels.iter().enumerate() {
            let state = health.state(i);
            metrics::gauge!("tierdns_upstream_health", "upstream" => label.clone(), "shard" => shard.index.to_string())
                .set(f64::from(state.as_gauge()));
        }
        drop(health);
        if shard.index == 0 {
            metrics::gauge!("tierdns_cache_entries").set(shard.shared.cache.len() as f64);
            metrics::gauge!("tierdns_cache_bytes").set(shard.shared.cache.bytes() as f64);
        }
    }
}
