//! The shard's entry points for the fuzz targets (`cfg(fuzzing)` only): the tiers'
//! classification of an upstream reply, and a client query through the gate and
//! the first pass of a socketless shard.

use super::{gate, serve, socketless_shard, Shard};
use crate::config::Config;
use crate::io::Epoll;
use std::rc::Rc;
use std::time::Instant;

/// How the tiers count an upstream reply (for the fuzzer): true if good. A good
/// answer has NOERROR or NXDOMAIN as its full (extended) rcode and a layout the
/// cache can patch.
pub(crate) fn fuzz_classify(reply: &[u8]) -> bool {
    match crate::flight::state::classify(reply) {
        Ok(layout) => {
            assert!(
                matches!(
                    layout.rcode(),
                    crate::wire::rcode::NOERROR | crate::wire::rcode::NXDOMAIN
                ),
                "only NOERROR and NXDOMAIN are good"
            );
            true
        }
        Err(_) => false,
    }
}

/// The client request path for the fuzzer: one shard (epoll types, no sockets, no
/// upstreams, no prefetch) whose cache holds, for every query that parses, an
/// answer to its own question when `cached` says so; `packet` then goes through the
/// access gate and the first pass over UDP. Returns the reply, if any. Checks its
/// own rules: a reply echoes the query's ID, is a response, and fits the client's
/// UDP limit whenever the query could be read far enough to know it.
pub(crate) fn fuzz_first_pass(packet: &[u8], cached: bool) -> Option<Vec<u8>> {
    use crate::wire::reader::QueryView;
    thread_local! {
        static SHARD: Rc<Shard<Epoll>> = {
            let mut config = Config::default();
            config.upstreams.clear();
            config.cache.prefetch = false;
            config.cache.max_bytes = 1 << 20;
            socketless_shard(config)
        };
    }
    SHARD.with(|shard| {
        let now = Instant::now();
        if cached {
            if let Ok(q) = QueryView::parse(packet) {
                if let Some(answer) = crate::wire::build::fuzz_answer(&q) {
                    let key = crate::cache::KeyRef::from_query(&q);
                    let version = shard.shared.cache.next_version();
                    shard.shared.cache.insert(&key, &answer, now, version);
                }
            }
        }
        let client = std::net::IpAddr::from([127, 0, 0, 1]);
        let reply = match shard.gate(client, crate::transport::Transport::Udp, now) {
            gate::Gate::Pass => {
                match shard.first_pass(
                    packet,
                    crate::transport::Transport::Udp,
                    shard.pool.get(),
                    now,
                ) {
                    serve::First::Reply(reply) => Some(reply),
                    serve::First::Drop(out) | serve::First::Miss(out) => {
                        shard.pool.put(out);
                        None
                    }
                }
            }
            _ => None,
        }?;
        assert!(reply.len() >= 12, "a reply has a header");
        assert_eq!(reply[..2], packet[..2], "the client's ID is echoed");
        assert!(reply[2] & 0x80 != 0, "a reply is a response");
        if let Ok(q) = QueryView::parse(packet) {
            let limit = q.reply_target(false).max_size.max(512);
            assert!(
                reply.len() <= limit,
                "{} bytes for a limit of {limit}",
                reply.len()
            );
        }
        Some(reply)
    })
}
