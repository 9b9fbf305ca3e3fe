//! What the unit tests share: a shard-like runtime to run a future on.

use std::future::Future;

/// Runs `f` to its end on a current-thread runtime with a `LocalSet`, as a shard
/// runs (so `spawn_local`, timers and sockets work).
pub(crate) fn local<F: Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a test runtime");
    tokio::task::LocalSet::new().block_on(&rt, f)
}
