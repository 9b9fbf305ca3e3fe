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

use crate::config::Config;
use crate::health::{BoardSlot, CircuitBoard};
use crate::io::Backend;
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
    /// Each upstream's mark on the board shared by all shards, in the same order.
    pub(crate) board: Vec<BoardSlot>,
    /// Increases with every reload.
    pub(crate) generation: u64,
}

impl<B: Backend> UpstreamSet<B> {
    /// Builds a set for `config`, reusing links of `old` whose address stays.
    /// Returns it with the (old index, new index) pairs of upstreams that stayed.
    pub(crate) fn build(
        config: Arc<Config>,
        old: Option<&Self>,
        stats: &Rc<ShardStats>,
        board: &CircuitBoard,
    ) -> Result<(Self, Vec<(usize, usize)>), String> {
        let limits = &config.limits;
        let mut kept = Vec::new();
        let mut links = Vec::with_capacity(config.upstreams.len());
        for (i, u) in config.upstreams.iter().enumerate() {
            let reuse = old.and_then(|o| {
                let j = o.links.iter().position(|l| l.serves(u))?;
                Some((j, Rc::clone(&o.links[j])))
            });
            let link = match reuse {
                Some((j, link)) => {
                    kept.push((j, i));
                    link.relabel(u.label());
                    link
                }
                None => UpstreamLink::open(u, limits, Rc::clone(stats))
                    .map_err(|e| format!("upstream {} socket: {e}", u.label()))?,
            };
            links.push(link);
        }
        let set = Self {
            zones: ZoneTable::new(&config),
            labels: config.upstreams.iter().map(|u| u.label()).collect(),
            board: config
                .upstreams
                .iter()
                .map(|u| board.slot(u.address))
                .collect(),
            generation: old.map_or(0, |o| o.generation + 1),
            links,
            config,
        };
        Ok((set, kept))
    }
}
