//! The shard's periodic flush of its local counters into the metrics registry
//! (`metrics.flush_interval`): no shared atomic per packet. At the same tick the
//! shard publishes its view of its upstreams' health for the admin endpoint
//! (`health::view`).

use super::Shard;
use crate::health::view::ShardView;
use crate::io::Backend;
use std::rc::Rc;
use std::time::Instant;

pub(super) async fn flush_loop<B: Backend>(shard: Rc<Shard<B>>) {
    let mut tick = tokio::time::interval(shard.shared.config.metrics.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let set = Rc::clone(&shard.upstreams.borrow());
        shard.stats.flush(&set.labels);
        let health = shard.health.borrow();
        for (i, label) in set.labels.enumerate() {
            let state = health.state(i);
            metrics::gauge!("tierdns_upstream_health", "upstream" => label.clone(), "shard" => shard.index.to_string())
                .set(f64::from(state.as_gauge()));
        }
        let upstreams = set
            .labels
            .enumerate()
            .filter_map(|(i, label)| {
                let address = set.config.upstreams.get(i.get())?.address_text();
                let mut view = health.view(i, label.clone(), address)?;
                view.in_flight = set.in_flight.get(i);
                Some(view)
            })
            .collect();
        drop(health);
        shard.shared.board.views().publish(ShardView {
            shard: shard.index,
            taken: Instant::now(),
            upstreams,
        });
        if shard.index == 0 {
            metrics::gauge!("tierdns_cache_entries").set(shard.shared.cache.len() as f64);
            metrics::gauge!("tierdns_cache_bytes").set(shard.shared.cache.bytes() as f64);
            let limiter = &shard.shared.ratelimiter;
            metrics::gauge!("tierdns_ratelimit_tracked").set(limiter.tracked() as f64);
            metrics::counter!("tierdns_ratelimit_evictions_total").absolute(limiter.evictions());
            let queued = shard
                .shared
                .stream_reply_bytes
                .load(std::sync::atomic::Ordering::Relaxed);
            metrics::gauge!("tierdns_stream_reply_bytes").set(queued as f64);
        }
    }
}
