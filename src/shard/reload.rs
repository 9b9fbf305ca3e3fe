//! Reloading the config (SIGHUP, or [`ServerHandle::reload`]): upstreams, forward
//! zones, strategy, tiers, health parameters and the client policy (`[access]`,
//! `[ratelimit]`)
//! take effect at once on every shard; the health of upstreams that stay is kept.
//! The certificate files of `[tls]` and `[https]` are read again (a new path
//! included): new handshakes get the new certificate, and a file that fails keeps
//! the running certificate (logged, naming the key). The other sections, and the
//! other keys of `[tls]` and `[https]`, need a restart.
//!
//! A reload is all or nothing, so shards never run different upstreams:
//! 1. Check, once, on the reloading thread: the client policy, and every part of
//!    the upstream links that can fail to build (`ca_file` or the system's roots,
//!    TLS client configs: [`CheckedUpstreams`]). A failure refuses the reload.
//! 2. Stage: every shard builds its new upstream set from the checked part (its
//!    own sockets) and holds it, not yet in force, and says whether it could.
//! 3. Commit when every shard staged within [`RELOAD_WAIT`]: each swaps (health
//!    carried over) and confirms. Else every shard drops what it staged and the
//!    reload is refused with the reasons ([`ReloadRefused`]): the running config
//!    stays on every shard, the certificates included.
//!
//! Each shard takes these steps from a queue of [`RELOAD_QUEUE`]; a shard whose
//! queue is full (stuck) refuses the reload at once.

use super::upstreams::{CheckedUpstreams, UpstreamSet};
use super::{ServerHandle, Shard};
use crate::config::Config;
use crate::health::UpstreamIdx;
use crate::io::Backend;
use crate::policy::Policy;
use crate::tiers::Budget;
use std::rc::Rc;
use std::sync::mpsc as sync_mpsc;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long a reload waits for every shard to stage (then again to commit).
pub(super) const RELOAD_WAIT: Duration = Duration::from_secs(5);
/// Reload steps a shard's queue holds.
pub(super) const RELOAD_QUEUE: usize = 8;

/// Why a reload was refused: nothing of it took effect, on any shard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReloadRefused(pub String);

/// What every shard takes from a reload, checked once.
pub(super) struct Checked {
    upstreams: CheckedUpstreams,
    policy: Policy,
}

impl Checked {
    /// Checks what can fail: the client policy, the upstreams' roots and TLS.
    fn new(config: Arc<Config>) -> Result<Self, String> {
        let policy = Policy::new(&config.access, &config.ratelimit)
            .map_err(|e| format!("[access] / [ratelimit]: {e}"))?;
        Ok(Self {
            upstreams: CheckedUpstreams::check(config)?,
            policy,
        })
    }
}

/// A shard's answer to a step: its index, and whether it could.
type Outcome = (usize, Result<(), String>);

/// One step of a reload, sent to each shard.
pub(super) enum Step {
    /// Build the new upstream set and hold it, not in force; say whether it built.
    Stage {
        id: u64,
        checked: Arc<Checked>,
        reply: sync_mpsc::Sender<Outcome>,
    },
    /// Put what was staged under `id` in force; say so.
    Commit {
        id: u64,
        reply: sync_mpsc::Sender<Outcome>,
    },
    /// Drop what was staged under `id`.
    Abort { id: u64 },
}

/// The reloading side: the config in force and each shard's step queue.
pub(super) struct Reloader {
    running: Arc<Config>,
    shards: Vec<mpsc::Sender<Step>>,
    last_id: u64,
    wait: Duration,
}

impl Reloader {
    /// A reloader for shards running `running`; returns it with each shard's
    /// end of its step queue.
    pub(super) fn new(running: Arc<Config>, shards: usize) -> (Self, Vec<mpsc::Receiver<Step>>) {
        let (senders, receivers) = (0..shards).map(|_| mpsc::channel(RELOAD_QUEUE)).unzip();
        let reloader = Self {
            running,
            shards: senders,
            last_id: 0,
            wait: RELOAD_WAIT,
        };
        (reloader, receivers)
    }

    /// Stages `checked` on every shard, then commits it on every shard if every
    /// one staged it, else aborts it on every shard.
    fn apply(&mut self, checked: Arc<Checked>) -> Result<(), ReloadRefused> {
        self.last_id += 1;
        let id = self.last_id;
        let staged = self.ask(|reply| Step::Stage {
            id,
            checked: Arc::clone(&checked),
            reply,
        });
        if let Err(why) = staged {
            for shard in &self.shards {
                // A full queue: the shard is stuck; a later stage replaces what it
                // holds, and a commit needs this id.
                let _ = shard.try_send(Step::Abort { id });
            }
            return Err(ReloadRefused(why));
        }
        // Every shard answered the stage, so every queue is empty: each takes the
        // commit, and a commit cannot fail.
        if let Err(why) = self.ask(|reply| Step::Commit { id, reply }) {
            tracing::error!("reload: {why}");
        }
        Ok(())
    }

    /// Sends a step to every shard and waits (up to `wait`) for every answer.
    /// The error lists each shard that failed, did not take the step, or did not
    /// answer in time.
    fn ask(&self, step: impl Fn(sync_mpsc::Sender<Outcome>) -> Step) -> Result<(), String> {
        let (tx, rx) = sync_mpsc::channel();
        let mut failed: Vec<(usize, String)> = Vec::new();
        let mut waiting = vec![false; self.shards.len()];
        for (i, shard) in self.shards.iter().enumerate() {
            match shard.try_send(step(tx.clone())) {
                Ok(()) => waiting[i] = true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    failed.push((i, "busy: earlier reload steps not yet taken".into()));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    failed.push((i, "stopped".into()));
                }
            }
        }
        drop(tx);
        let deadline = Instant::now() + self.wait;
        while waiting.iter().any(|&w| w) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((i, outcome)) => {
                    if let Some(w) = waiting.get_mut(i) {
                        *w = false;
                    }
                    if let Err(why) = outcome {
                        failed.push((i, why));
                    }
                }
                Err(_) => break,
            }
        }
        for (i, _) in waiting.iter().enumerate().filter(|(_, &w)| w) {
            failed.push((i, format!("no answer within {:?}", self.wait)));
        }
        if failed.is_empty() {
            return Ok(());
        }
        failed.sort();
        Err(failed
            .iter()
            .map(|(i, why)| format!("shard {i}: {why}"))
            .collect::<Vec<_>>()
            .join("; "))
    }
}

impl ServerHandle {
    /// Applies a new (validated) config: upstreams, forward zones, strategy, tiers,
    /// health parameters, `[access]` and `[ratelimit]` take effect at once on every
    /// shard; the health of
    /// upstreams that stay is kept. Other sections need a restart: each one that
    /// changed is named in the returned warnings and keeps its running value.
    ///
    /// All or nothing (see the module doc): when any part cannot be built (a
    /// `ca_file` that cannot be read, a shard that cannot open a socket), the
    /// reload is refused with the reason and every shard keeps the running config.
    /// Returns once every shard runs the new one.
    ///
    /// The certificate files are read again then, once for every shard; each one
    /// that fails is logged and named in the warnings, and its certificate stays.
    pub fn reload(&self, config: Config) -> Result<Vec<String>, ReloadRefused> {
        let mut reloader = self.reloader.lock().unwrap_or_else(PoisonError::into_inner);
        let (applied, mut warnings) = reloadable(&reloader.running, config);
        let applied = Arc::new(applied);
        let checked = Checked::new(Arc::clone(&applied)).map_err(ReloadRefused)?;
        reloader.apply(Arc::new(checked))?;
        reloader.running = Arc::clone(&applied);
        for failure in self.shared.listener_tls.reload(&applied) {
            tracing::error!("reload: {failure}");
            warnings.push(failure);
        }
        Ok(warnings)
    }
}

/// The config a reload applies: `new`, with the sections that need a restart
/// (`server`, `limits`, `cache`, `metrics`, and `[tls]` and `[https]` but for their
/// certificate files) kept as running; and a warning for each of those that
/// changed.
fn reloadable(running: &Config, new: Config) -> (Config, Vec<String>) {
    // Each section as TOML, so a change anywhere in it is seen; the certificate
    // files left out, as a reload applies them.
    let fixed = |c: &Config| {
        let mut tls = c.tls.clone();
        tls.cert_file.clear();
        tls.key_file.clear();
        let mut https = c.https.clone();
        https.cert_file.clear();
        https.key_file.clear();
        [
            ("server", toml::to_string(&c.server).ok()),
            ("limits", toml::to_string(&c.limits).ok()),
            ("cache", toml::to_string(&c.cache).ok()),
            ("metrics", toml::to_string(&c.metrics).ok()),
            ("tls", toml::to_string(&tls).ok()),
            ("https", toml::to_string(&https).ok()),
        ]
    };
    let warnings = fixed(running)
        .into_iter()
        .zip(fixed(&new))
        .filter(|((_, old), (_, new))| old != new)
        .map(|((section, _), _)| {
            format!("[{section}] changed: it takes effect only after a restart")
        })
        .collect();
    let mut applied = new;
    applied.server = running.server.clone();
    applied.limits = running.limits.clone();
    applied.cache = running.cache.clone();
    applied.metrics = running.metrics.clone();
    let files = |c: &Config| {
        (
            c.tls.cert_file.clone(),
            c.tls.key_file.clone(),
            c.https.cert_file.clone(),
            c.https.key_file.clone(),
        )
    };
    let (tls_cert, tls_key, https_cert, https_key) = files(&applied);
    applied.tls = crate::config::TlsConfig {
        cert_file: tls_cert,
        key_file: tls_key,
        ..running.tls.clone()
    };
    applied.https = crate::config::HttpsConfig {
        cert_file: https_cert,
        key_file: https_key,
        ..running.https.clone()
    };
    (applied, warnings)
}

/// A new upstream set built by a shard and not yet in force, with its policy.
struct Staged<B: Backend> {
    id: u64,
    set: UpstreamSet<B>,
    /// (old index, new index) of the upstreams that stay.
    kept: Vec<(UpstreamIdx, UpstreamIdx)>,
    policy: Policy,
}

/// Takes the reload steps sent to this shard until shutdown.
pub(super) async fn reload_loop<B: Backend>(shard: Rc<Shard<B>>, mut steps: mpsc::Receiver<Step>) {
    let mut staged: Option<Staged<B>> = None;
    while let Some(step) = steps.recv().await {
        match step {
            Step::Stage { id, checked, reply } => {
                // What an earlier stage held is dropped: only the newest commits.
                staged = None;
                let old = Rc::clone(&shard.upstreams.borrow());
                let outcome = UpstreamSet::build(
                    &checked.upstreams,
                    Some(&old),
                    &shard.stats,
                    &shard.shared.board,
                );
                let outcome = outcome.map(|(set, kept)| {
                    staged = Some(Staged {
                        id,
                        set,
                        kept,
                        policy: checked.policy.clone(),
                    });
                });
                if let Err(e) = &outcome {
                    tracing::warn!(shard = shard.index, error = %e, "reload: cannot build the new upstream set");
                }
                let _ = reply.send((shard.index, outcome));
            }
            Step::Commit { id, reply } => {
                let outcome = match staged.take() {
                    Some(s) if s.id == id => {
                        commit(&shard, s);
                        Ok(())
                    }
                    _ => Err("nothing staged for this reload".to_string()),
                };
                let _ = reply.send((shard.index, outcome));
            }
            Step::Abort { id } => {
                if staged.as_ref().is_some_and(|s| s.id == id) {
                    staged = None;
                }
            }
        }
    }
}

/// Puts a staged set and its policy in force on `shard`: the health of the
/// upstreams that stay carried over, the old set's counters flushed.
fn commit<B: Backend>(shard: &Shard<B>, staged: Staged<B>) {
    let Staged {
        set, kept, policy, ..
    } = staged;
    *shard.policy.borrow_mut() = Rc::new(policy);
    let old = Rc::clone(&shard.upstreams.borrow());
    let new = &set.config;
    let priorities: Vec<i32> = new.upstreams.iter().map(|u| u.priority).collect();
    let health = shard
        .health
        .borrow()
        .carry_over(new.health.clone(), &priorities, &kept);
    shard
        .stats
        .reset_upstreams(&old.labels, new.upstreams.len());
    *shard.health.borrow_mut() = health;
    if shard.budget.borrow().params() != &new.budget {
        let shards = shard.budget.borrow().shards();
        *shard.budget.borrow_mut() =
            Budget::new(new.budget.clone(), Instant::now()).for_shards(shards);
    }
    tracing::debug!(
        shard = shard.index,
        generation = set.generation,
        kept = kept.len(),
        "upstream set reloaded"
    );
    *shard.upstreams.borrow_mut() = Rc::new(set);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a fake shard saw: "stage 1", "commit 1", "abort 1".
    type Seen = Arc<std::sync::Mutex<Vec<String>>>;

    /// A shard thread that answers stages with `stage` and records every step.
    fn fake_shard(
        mut steps: mpsc::Receiver<Step>,
        index: usize,
        stage: Result<(), String>,
    ) -> (Seen, std::thread::JoinHandle<()>) {
        let seen = Seen::default();
        let record = Arc::clone(&seen);
        let thread = std::thread::spawn(move || {
            while let Some(step) = steps.blocking_recv() {
                let mut seen = record.lock().unwrap();
                match step {
                    Step::Stage { id, reply, .. } => {
                        seen.push(format!("stage {id}"));
                        let _ = reply.send((index, stage.clone()));
                    }
                    Step::Commit { id, reply } => {
                        seen.push(format!("commit {id}"));
                        let _ = reply.send((index, Ok(())));
                    }
                    Step::Abort { id } => seen.push(format!("abort {id}")),
                }
            }
        });
        (seen, thread)
    }

    fn checked() -> Arc<Checked> {
        Arc::new(Checked::new(Arc::new(Config::default())).expect("the defaults check"))
    }

    #[test]
    fn one_shard_that_cannot_build_refuses_the_reload_on_every_shard() {
        let (mut reloader, queues) = Reloader::new(Arc::new(Config::default()), 3);
        let shards: Vec<_> = queues
            .into_iter()
            .enumerate()
            .map(|(i, q)| {
                let stage = if i == 1 {
                    Err("no socket".to_string())
                } else {
                    Ok(())
                };
                fake_shard(q, i, stage)
            })
            .collect();
        let refused = reloader.apply(checked()).expect_err("shard 1 failed");
        assert_eq!(refused.0, "shard 1: no socket");
        drop(reloader);
        for (seen, thread) in shards {
            thread.join().unwrap();
            assert_eq!(
                *seen.lock().unwrap(),
                ["stage 1", "abort 1"],
                "nobody commits"
            );
        }
    }

    #[test]
    fn every_shard_commits_once_every_shard_staged() {
        let (mut reloader, queues) = Reloader::new(Arc::new(Config::default()), 3);
        let shards: Vec<_> = queues
            .into_iter()
            .enumerate()
            .map(|(i, q)| fake_shard(q, i, Ok(())))
            .collect();
        reloader.apply(checked()).expect("every shard staged");
        drop(reloader);
        for (seen, thread) in shards {
            thread.join().unwrap();
            assert_eq!(*seen.lock().unwrap(), ["stage 1", "commit 1"]);
        }
    }

    #[test]
    fn a_shard_that_does_not_answer_refuses_the_reload_and_its_queue_is_bounded() {
        let (mut reloader, mut queues) = Reloader::new(Arc::new(Config::default()), 2);
        reloader.wait = Duration::from_millis(20);
        // Shard 1 never takes a step.
        let stuck = queues.pop().unwrap();
        let (seen, thread) = fake_shard(queues.pop().unwrap(), 0, Ok(()));
        let refused = reloader.apply(checked()).expect_err("shard 1 is stuck");
        assert_eq!(refused.0, "shard 1: no answer within 20ms");
        // Each refused reload leaves a stage and an abort in the stuck queue; once
        // it is full, reloads are refused at once.
        for _ in 1..RELOAD_QUEUE / 2 {
            assert!(reloader.apply(checked()).is_err());
        }
        assert_eq!(stuck.len(), RELOAD_QUEUE);
        reloader.wait = Duration::from_secs(60);
        let refused = reloader.apply(checked()).expect_err("the queue is full");
        assert_eq!(
            refused.0,
            "shard 1: busy: earlier reload steps not yet taken"
        );
        assert_eq!(stuck.len(), RELOAD_QUEUE, "bounded");
        drop(reloader);
        thread.join().unwrap();
        assert!(
            seen.lock()
                .unwrap()
                .iter()
                .all(|s| !s.starts_with("commit")),
            "{seen:?}"
        );
    }

    #[test]
    fn sections_that_need_a_restart_keep_their_running_value_and_are_named() {
        let running = Config::default();
        let mut new = Config::default();
        new.limits.max_client_in_flight += 1;
        new.metrics.enabled = !running.metrics.enabled;
        new.tiers.batch_size += 1;
        let (applied, warnings) = reloadable(&running, new);
        assert_eq!(
            warnings,
            [
                "[limits] changed: it takes effect only after a restart",
                "[metrics] changed: it takes effect only after a restart"
            ]
        );
        assert_eq!(
            applied.limits.max_client_in_flight,
            running.limits.max_client_in_flight
        );
        assert_eq!(applied.metrics.enabled, running.metrics.enabled);
        assert_eq!(
            applied.tiers.batch_size,
            running.tiers.batch_size + 1,
            "applied"
        );
    }

    #[test]
    fn access_is_applied_by_a_reload_without_a_warning() {
        let running = Config::default();
        let mut new = Config::default();
        new.access.allow = vec!["10.0.0.0/8".into()];
        new.access.action = crate::policy::AccessAction::Drop;
        let (applied, warnings) = reloadable(&running, new.clone());
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(applied.access, new.access);
    }

    #[test]
    fn certificate_files_are_applied_and_other_tls_keys_need_a_restart() {
        let mut running = Config::default();
        running.tls.listen = vec!["127.0.0.1:853".parse().unwrap()];
        running.tls.cert_file = "old.pem".into();
        running.tls.key_file = "old.key".into();
        let mut new = running.clone();
        new.tls.cert_file = "new.pem".into();
        new.tls.key_file = "new.key".into();
        new.https.cert_file = "h.pem".into();
        new.https.key_file = "h.key".into();
        let (applied, warnings) = reloadable(&running, new.clone());
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(applied.tls, new.tls);
        assert_eq!(applied.https, new.https);
        new.tls.listen = vec!["127.0.0.1:8853".parse().unwrap()];
        new.https.path = "/other".into();
        let (applied, warnings) = reloadable(&running, new);
        assert_eq!(
            warnings,
            [
                "[tls] changed: it takes effect only after a restart",
                "[https] changed: it takes effect only after a restart"
            ]
        );
        assert_eq!(applied.tls.listen, running.tls.listen);
        assert_eq!(applied.tls.cert_file, "new.pem");
        assert_eq!(applied.https.path, "/dns-query");
    }

    #[test]
    fn an_unchanged_config_reloads_without_warnings() {
        let (_, warnings) = reloadable(&Config::default(), Config::default());
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}
