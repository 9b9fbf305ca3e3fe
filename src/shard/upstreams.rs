//! The upstream set in force on one shard, and how a config reload replaces it.
//!
//! A set is immutable once built: the upstream links, the forward zones and the
//! config they came from, with a generation number. A flight takes the set current
//! at its start and keeps it to its end, so a reload never changes the meaning of an
//! upstream index under a flight; results of a flight from an older generation are
//! not recorded into the health or counters of the new one.
//!
//! What can fail to build a set (reading `ca_file` or the system's roots, the TLS
//! client configs) is built once, on the starting or reloading thread
//! ([`CheckedUpstreams`]), and handed to every shard: all shards trust the same
//! roots, and a file that cannot be read fails the whole start or reload, never
//! one shard's.
//!
//! Reload (SIGHUP, or [`super::ServerHandle::reload`]): each shard builds the new set
//! from the checked part, reusing the link (socket, idle TCP connections) of every
//! upstream whose address stays; once every shard has built its set, each carries
//! the health of those upstreams over (EWMA, circuit state), flushes the old set's
//! counters under its labels, and swaps ([`super::reload`]). Links of removed
//! upstreams close once the last flight using them ends.

use crate::config::Config;
use crate::health::{BoardSlot, CircuitBoard, PerUpstream, UpstreamIdx};
use crate::io::Backend;
use crate::metrics::ShardStats;
use crate::upstream::encrypted::{prepare, TlsTarget};
use crate::upstream::UpstreamLink;
use crate::zones::ZoneTable;
use std::rc::Rc;
use std::sync::Arc;

/// A config's upstreams with the part of their links that can fail to build
/// (roots and TLS client configs) built and checked, for every shard to share.
pub(crate) struct CheckedUpstreams {
    /// The config the set is for.
    pub(crate) config: Arc<Config>,
    /// Per upstream, in config order: the TLS target of an encrypted one.
    tls: Vec<Option<TlsTarget>>,
}

impl CheckedUpstreams {
    /// Reads every encrypted upstream's roots and builds its TLS client config;
    /// the error names the upstream.
    pub(crate) fn check(config: Arc<Config>) -> Result<Self, String> {
        let tls = config
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| prepare(i, u))
            .collect::<Result<_, _>>()?;
        Ok(Self { config, tls })
    }
}

/// One generation of upstream links and routes.
pub(crate) struct UpstreamSet<B: Backend> {
    /// The config this set was built from (upstreams, zones, tiers, health).
    pub(crate) config: Arc<Config>,
    /// Forward zones over `links` indices.
    pub(crate) zones: ZoneTable,
    /// One link per configured upstream, in config order.
    pub(crate) links: PerUpstream<Rc<UpstreamLink<B>>>,
    /// Upstream labels for metrics and logs, in the same order.
    pub(crate) labels: PerUpstream<String>,
    /// Each upstream's mark on the board shared by all shards, in the same order.
    pub(crate) board: PerUpstream<BoardSlot>,
    /// Increases with every reload.
    pub(crate) generation: u64,
    /// Queries out per upstream, for the health view.
    pub(super) in_flight: super::flight_run::InFlight,
}

impl<B: Backend> UpstreamSet<B> {
    /// Builds a set for `checked`, reusing links of `old` whose address stays.
    /// Returns it with the (old index, new index) pairs of upstreams that stayed.
    /// Reads no file: what fails here is the shard's own (a socket).
    pub(crate) fn build(
        checked: &CheckedUpstreams,
        old: Option<&Self>,
        stats: &Rc<ShardStats>,
        board: &CircuitBoard,
    ) -> Result<(Self, Vec<(UpstreamIdx, UpstreamIdx)>), String> {
        let config = Arc::clone(&checked.config);
        let limits = &config.limits;
        let mut kept = Vec::new();
        let mut links = Vec::with_capacity(config.upstreams.len());
        for (i, u) in config.upstreams.iter().enumerate() {
            let reuse = old.and_then(|o| {
                let (j, link) = o.links.enumerate().find(|(_, l)| l.serves(u))?;
                Some((j, Rc::clone(link)))
            });
            let link = match reuse {
                Some((j, link)) => {
                    kept.push((j, UpstreamIdx::new(i)));
                    link.relabel(u.label());
                    link
                }
                None => UpstreamLink::open(u, checked.tls[i].as_ref(), limits, Rc::clone(stats))
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
            in_flight: super::flight_run::InFlight::new(config.upstreams.len()),
            links: links.into(),
            config,
        };
        Ok((set, kept))
    }
}
