//! Reloading the config (SIGHUP, or [`ServerHandle::reload`]): upstreams, forward
//! zones, strategy, tiers, health parameters and the client policy (`[access]`,
//! `[ratelimit]`)
//! take effect at once on every shard; the health of upstreams that stay is kept.
//! The certificate files of `[tls]` and `[https]` are read again (a new path
//! included): new handshakes get the new certificate, and a file that fails keeps
//! the running certificate (logged, naming the key). The other sections, and the
//! other keys of `[tls]` and `[https]`, need a restart.

use super::upstreams::UpstreamSet;
use super::{ServerHandle, Shard};
use crate::config::Config;
use crate::io::Backend;
use crate::policy::Policy;
use crate::tiers::Budget;
use std::rc::Rc;
use std::sync::Arc;

impl ServerHandle {
    /// Applies a new (validated) config: upstreams, forward zones, strategy, tiers,
    /// health parameters, `[access]` and `[ratelimit]` take effect at once on every
    /// shard; the health of
    /// upstreams that stay is kept. Other sections need a restart: each one that
    /// changed is named in the returned warnings and keeps its running value.
    ///
    /// The certificate files are read again here, once for every shard; each one
    /// that fails is logged and named in the warnings, and its certificate stays.
    pub fn reload(&self, config: Config) -> Vec<String> {
        let running = self.reload.borrow().clone();
        let (applied, mut warnings) = reloadable(&running, config);
        for failure in self.shared.encrypted.reload(&applied) {
            tracing::error!("reload: {failure}");
            warnings.push(failure);
        }
        let _ = self.reload.send(Arc::new(applied));
        warnings
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

/// Applies every new config sent to this shard until shutdown.
pub(super) async fn reload_loop<B: Backend>(
    shard: Rc<Shard<B>>,
    mut configs: tokio::sync::watch::Receiver<Arc<Config>>,
) {
    while configs.changed().await.is_ok() {
        let config = Arc::clone(&configs.borrow_and_update());
        // The client policy first: it does not depend on the upstreams.
        match Policy::new(&config.access, &config.ratelimit) {
            Ok(policy) => *shard.policy.borrow_mut() = Rc::new(policy),
            Err(e) => {
                tracing::error!(shard = shard.index, error = %e, "reload: keeping the running client policy");
            }
        }
        let old = Rc::clone(&shard.upstreams.borrow());
        let built = UpstreamSet::build(config, Some(&old), &shard.stats, &shard.shared.board);
        match built {
            Ok((set, kept)) => {
                let new = &set.config;
                let priorities: Vec<i32> = new.upstreams.iter().map(|u| u.priority).collect();
                let health =
                    shard
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
                        Budget::new(new.budget.clone(), std::time::Instant::now())
                            .for_shards(shards);
                }
                tracing::debug!(
                    shard = shard.index,
                    generation = set.generation,
                    kept = kept.len(),
                    "upstream set reloaded"
                );
                *shard.upstreams.borrow_mut() = Rc::new(set);
            }
            Err(e) => {
                tracing::error!(shard = shard.index, error = %e, "reload failed; keeping the running upstream set");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
