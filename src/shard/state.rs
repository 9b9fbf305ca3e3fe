//! The state file's I/O for a running server (`[server] state_file`, see
//! [`crate::health::state_file`]): read into the circuit board before the shards
//! start, written by a thread of its own every few seconds and once more after
//! the shards stopped. Failures are logged, never fatal.

use super::Shared;
use crate::health::state_file::{Snapshot, WRITE_EVERY};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

/// Puts the saved health on the board, if there is a state file to read.
pub(super) fn seed(shared: &Shared) {
    let Some(path) = path_of(shared) else { return };
    let configured: Vec<_> = shared.config.upstreams.iter().map(|u| u.address).collect();
    match Snapshot::read(&path, &configured) {
        Ok(snap) => {
            snap.seed(&shared.board, &configured, Instant::now());
            tracing::info!(path = %path.display(), upstreams = snap.upstreams.len(), "upstream health read from the state file");
        }
        Err(e) if !path.exists() => {
            tracing::info!(path = %path.display(), reason = %e, "no state file yet: upstream health starts empty");
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), reason = %e, "state file ignored: upstream health starts empty");
        }
    }
}

fn path_of(shared: &Shared) -> Option<PathBuf> {
    let file = &shared.config.server.state_file;
    (!file.is_empty()).then(|| PathBuf::from(file))
}

/// The thread that writes the state file.
pub(super) struct Writer {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    /// Starts writing every [`WRITE_EVERY`], if a state file is configured.
    pub(super) fn start(shared: &Arc<Shared>) -> Option<Self> {
        let path = path_of(shared)?;
        let shared = Arc::clone(shared);
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tierdns-state".into())
            .spawn(move || loop {
                let last = matches!(
                    stopped.recv_timeout(WRITE_EVERY),
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected)
                );
                let snap = Snapshot::of(&shared.board, Instant::now());
                if let Err(e) = snap.write(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the state file");
                }
                if last {
                    return;
                }
            })
            .ok()?;
        Some(Self { stop, thread })
    }

    /// Writes once more and stops.
    pub(super) fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}
