//! The io backend and the runtime each shard thread runs: chosen once at start.
//!
//! `uring` (tokio-uring), `epoll` (tokio current-thread), or `auto`, which probes
//! io_uring_setup and falls back to epoll when the kernel refuses it (seccomp,
//! `kernel.io_uring_disabled`, old kernel). The reason is logged and exported in
//! `tierdns_info`.

use super::sockets::ShardSockets;
use super::{shard_main, Ready, Shared, Signals, StartError, StartListeners};
use crate::config::{Config, IoBackend};
use crate::io::{Epoll, Uring};
use std::sync::Arc;

/// Decides the backend: (use uring, reason).
pub(super) fn choose_backend(config: &Config) -> Result<(bool, String), StartError> {
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

pub(super) fn run_shard<L: StartListeners>(
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
            Ok(rt) => rt.block_on(shard_main::<Uring, L>(
                index, shared, sockets, signals, ready,
            )),
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
                    shard_main::<Epoll, L>(index, shared, sockets, signals, ready),
                );
            }
            Err(e) => {
                let _ = ready.send(Err((index, format!("tokio runtime: {e}"))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_epoll_needs_no_probe_and_says_so() {
        let mut config = Config::default();
        config.server.io = IoBackend::Epoll;
        let (uring, why) = choose_backend(&config).unwrap();
        assert!(!uring);
        assert!(why.contains("epoll"), "{why}");
    }

    #[test]
    fn auto_takes_io_uring_exactly_when_the_kernel_allows_it() {
        let mut config = Config::default();
        config.server.io = IoBackend::Auto;
        let available = io_uring::IoUring::new(8).is_ok();
        let (uring, why) = choose_backend(&config).unwrap();
        assert_eq!(uring, available, "{why}");
        if !available {
            assert!(why.contains("falling back to epoll"), "{why}");
        }
    }
}
