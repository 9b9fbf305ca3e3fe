//! The upstream set in force on one shard, and how a config reload replaces it.
//!
//! A set is immutable once built: the upstream links, the forward zones and the
//! config they came from, with a generation number. A flight takes the set current
//! at its start and keeps it to its end, so a reload never changes the meaning of an
//! upstream index under a flight; results of a flight from an older generation are
//! not recorded into the health or counters of the new one.
//!
//! Reload (SIGHUP, or [`super::ServerHandle::reload`]): each shard builds the new set,
//! reusing the link (socket, idle TCP connections) of every upstream whose address
//! stays, carries their health over (EWMA, circuit state), flushes the old set's
//! counters under its labels, and swaps. Links of removed upstreams close once the
//! last flight using them ends.

use super::buffers::BufferPool;
use super::io::Backend;
use super::Shard;
use crate::config::Config;
use crate::metrics::ShardStats;
use crate::upstream::UpstreamLink;
use crate::zones::ZoneTable;
use std::rc::Rc;
use std::sync::Arc;

/// One generation of upstream links and routes.
pub(crate) struct UpstreamSet<B: Backend> {
    /// The config this set was built from (upstreams, zones, tiers, health).
    pub(crate) config: Arc<Config>,
    /// Forward zones over `links` indices.
    pub(crate) zones: ZoneTable,
    /// One link per configured upstream, in config order.
    pub(crate) links: Vec<Rc<UpstreamLink<B>>>,
    /// Upstream labels for metrics and logs, in the same order.
    pub(crate) labels: Vec<String>,
    /// Increases with every reload.
    pub(crate) generation: u64,
}

impl<B: Backend> UpstreamSet<B> {
    /// Builds a set for `config`, reusing links of `old` whose address stays.
    /// Returns it with the (old index, new index) pairs of upstreams that stayed.
    pub(crate) fn build(
        config: Arc<Config>,
        old: Option<&Self>,
        pool: &Rc<BufferPool>,
        stats: &Rc<ShardStats>,
    ) -> Result<(Self, Vec<(usize, usize)>), String> {
        let limits = &config.limits;
        let mut kept = Vec::new();
        let mut links = Vec::with_capacity(config.upstreams.len());
        for (i, u) in config.upstreams.iter().enumerate() {
            let reuse = old.and_then(|o| {
                let j = o.links.iter().position(|l| l.addr == u.address)?;
                Some((j, Rc::clone(&o.links[j])))
            });
            let link = match reuse {
                Some((j, link)) => {
                    kept.push((j, i));
                    link
                }
                None => UpstreamLink::open(u.address, limits, Rc::clone(pool), Rc::clone(stats))
                    .map_err(|e| format!("upstream {} socket: {e}", u.label()))?,
            };
            links.push(link);
        }
        let set = Self {
            zones: ZoneTable::new(&config),
            labels: config.upstreams.iter().map(|u| u.label()).collect(),
            generation: old.map_or(0, |o| o.generation + 1),
            links,
            config,
        };
        Ok((set, kept))
    }
}

/// Applies every new config sent to this shard until shutdown.
pub(super) async fn reload_loop<B: Backend>(
    shard: Rc<Shard<B>>,
    mut configs: tokio::sync::watch::Receiver<Arc<Config>>,
) {
    while configs.changed().await.is_ok() {
        let config = Arc::clone(&configs.borrow_and_update());
        let old = Rc::clone(&shard.upstreams.borrow());
        match UpstreamSet::build(config, Some(&old), &shard.pool, &shard.stats) {
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
