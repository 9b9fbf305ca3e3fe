//! The real first pass allocates nothing for a cache hit: a raw datagram in, the
//! access gate, the read, the cache lookup, the reply bytes out, counters and
//! latency samples included, on a shard built as in production (without sockets).
//! Counted by a global allocator that counts this thread's allocations only.
//!
//! The shard's latency sample buffer grows (by doubling) up to its bound over the
//! first hits of a shard's life and keeps its room across flushes; the test warms
//! it up to that bound first, then counts.
// The counting allocator needs `unsafe impl GlobalAlloc`: test code only.
#![allow(unsafe_code)]

use super::serve::First;
use super::socketless_shard;
use crate::cache::KeyRef;
use crate::config::Config;
use crate::transport::Transport;
use crate::wire::reader::QueryView;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;
use std::time::Instant;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every call is forwarded to the system allocator unchanged; the count is
// a thread-local `Cell` (const-initialised, so touching it never allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

/// A query for `www.example.` A with EDNS, as raw bytes.
fn raw_query(id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
    q.extend_from_slice(b"\x03www\x07example\x00\x00\x01\x00\x01");
    // OPT: root, type 41, UDP 1232, no extended rcode, version 0, no flags.
    q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    q
}

#[test]
fn a_cache_hit_through_the_real_first_pass_allocates_nothing() {
    let mut config = Config::default();
    config.upstreams.clear();
    config.cache.prefetch = false;
    let shard = socketless_shard(config);
    let now = Instant::now();
    let packet = raw_query(7);
    {
        let q = QueryView::parse(&packet).unwrap();
        let mut answer = vec![0, 0, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        answer.extend_from_slice(b"\x03www\x07example\x00\x00\x01\x00\x01");
        answer.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4, 192, 0, 2, 1]);
        let version = shard.shared.cache.next_version();
        shard
            .shared
            .cache
            .insert(&KeyRef::from_query(&q), &answer, now, version);
    }
    let client = IpAddr::from([127, 0, 0, 1]);
    let hit = |packet: &[u8]| {
        assert_eq!(
            shard.gate(client, Transport::Udp, Instant::now()),
            super::gate::Gate::Pass
        );
        let out = shard.pool.get();
        match shard.first_pass(packet, Transport::Udp, out, Instant::now()) {
            First::Reply(reply) => {
                let len = reply.len();
                assert_eq!(reply[..2], packet[..2], "the client's ID");
                shard.pool.put(reply);
                len
            }
            First::Miss(_) | First::Drop(_) => panic!("a hit was expected"),
        }
    };
    // Warm up: the latency sample buffer grows to its bound (65 536 samples).
    for _ in 0..70_000 {
        hit(&packet);
    }
    let before = allocs();
    let mut bytes = 0;
    for _ in 0..10_000 {
        bytes += hit(&packet);
    }
    assert_eq!(allocs() - before, 0, "allocations in 10 000 hits");
    assert!(bytes > 10_000 * 40, "real replies went out");
}
