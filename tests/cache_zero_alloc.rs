//! A cache hit allocates nothing: the whole hit path (parse the raw query, build the
//! key and reply target, look up, copy and patch into a preallocated buffer) runs
//! 10,000 times under a counting global allocator. Neither does the client gate in
//! front of it (access list, rate limiter on prefixes already tracked).
// The counting allocator needs `unsafe impl GlobalAlloc`; this test binary is the
// only place the crate's `deny(unsafe_code)` is relaxed.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tierdns::cache::{CacheConfig, InsertOutcome, KeyRef, Lookup, PacketCache};
use tierdns::wire::reader::QueryView;
use tierdns::wire::{ReplyTarget, PLAIN_UDP_MAX};

thread_local! {
    /// Allocations made by this thread (the harness's other threads do not count).
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

fn count() {
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged,
// so `System`'s guarantees carry over; counting touches only a const-initialized
// thread-local `Cell` (no allocation, no reentrancy).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

fn query(id: u16, name: &str, edns: bool, cd: bool) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.checking_disabled = cd;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn answer(name: &str) -> Vec<u8> {
    let mut m = Message::response(0x4242, OpCode::Query);
    m.metadata.response_code = ResponseCode::NoError;
    m.metadata.recursion_available = true;
    let owner = Name::from_ascii(name).unwrap();
    m.add_query(Query::query(owner.clone(), RecordType::A));
    for i in 0..4u8 {
        m.add_answer(Record::from_rdata(
            owner.clone(),
            300,
            RData::A(A::new(192, 0, 2, i)),
        ));
    }
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.set_edns(e);
    m.to_vec().unwrap()
}

#[test]
fn cache_hit_path_allocates_nothing() {
    let cache = PacketCache::new(CacheConfig::default());
    let now = Instant::now();
    for cd in [false, true] {
        let q = query(1, "www.example.com.", true, cd);
        let view = QueryView::parse(&q).unwrap();
        let outcome = cache.insert(
            &KeyRef::from_query(&view),
            &answer("www.example.com."),
            now,
            1,
        );
        assert_eq!(outcome, InsertOutcome::Inserted);
    }
    // Queries in several letter cases, with and without EDNS, with CD set and not.
    let queries = [
        query(0x1111, "www.example.com.", true, false),
        query(0x2222, "WWW.Example.COM.", false, false),
        query(0x3333, "wWw.eXaMpLe.cOm.", true, true),
        query(0x4444, "Www.Example.Com.", false, true),
    ];
    let mut buf = vec![0u8; 65_535 + 64];
    // Warm up once outside the measurement (first-use lazy statics, if any).
    let view = QueryView::parse(&queries[0]).unwrap();
    let target = ReplyTarget {
        id: view.header.id,
        flags: view.header.flags,
        qname: view.qname,
        edns: view.edns,
        max_size: PLAIN_UDP_MAX,
    };
    assert!(matches!(
        cache.lookup(
            &KeyRef::from_query(&view),
            Instant::now(),
            &target,
            &mut buf
        ),
        Lookup::Hit { .. }
    ));

    let before = allocs();
    let mut hits = 0u32;
    let mut bytes = 0usize;
    for i in 0..10_000usize {
        let raw = &queries[i % queries.len()];
        let Ok(view) = QueryView::parse(raw) else {
            panic!("query did not parse");
        };
        let key = KeyRef::from_query(&view);
        let max_size = match view.edns {
            Some(e) => usize::from(e.udp_size).max(PLAIN_UDP_MAX),
            None => PLAIN_UDP_MAX,
        };
        let target = ReplyTarget {
            id: view.header.id,
            flags: view.header.flags,
            qname: view.qname,
            edns: view.edns,
            max_size,
        };
        if let Lookup::Hit { len, .. } = cache.lookup(&key, Instant::now(), &target, &mut buf) {
            hits += 1;
            bytes += len;
            // ready to send: ID and question echoed
            assert_eq!(&buf[..2], &raw[..2]);
            assert_eq!(&buf[12..12 + view.qname.len()], view.qname);
        }
    }
    let after = allocs();
    assert_eq!(hits, 10_000);
    assert!(bytes > 0);
    assert_eq!(after - before, 0, "allocations on the hit path");

    // The counter works: a miss path insert allocates.
    let q = query(9, "other.example.", false, false);
    let view = QueryView::parse(&q).unwrap();
    let before = allocs();
    let outcome = cache.insert(
        &KeyRef::from_query(&view),
        &answer("other.example."),
        now,
        1,
    );
    assert!(outcome.stored());
    assert!(allocs() > before);
}

/// A TCP hit (the client's limit 65535 bytes) into a pooled 4 KiB buffer: the cache
/// sizes the buffer under its lock to what the reply needs, so nothing is allocated
/// and the buffer never grows to 64 KiB (nor are 64 KiB cleared per hit).
#[test]
fn a_tcp_hit_into_a_pooled_buffer_allocates_nothing() {
    let cache = PacketCache::new(CacheConfig::default());
    let q = query(7, "tcp.example.com.", false, false);
    let view = QueryView::parse(&q).unwrap();
    let key = KeyRef::from_query(&view);
    let stored = answer("tcp.example.com.");
    assert!(cache.insert(&key, &stored, Instant::now(), 1).stored());
    let target = ReplyTarget {
        id: view.header.id,
        flags: view.header.flags,
        qname: view.qname,
        edns: view.edns,
        max_size: 65_535,
    };
    let mut buf = Vec::with_capacity(4096);
    let before = allocs();
    for _ in 0..10_000 {
        let Lookup::Hit { len, .. } = cache.lookup_into(&key, Instant::now(), &target, &mut buf)
        else {
            panic!("a hit");
        };
        assert_eq!(buf.len(), len, "the buffer is the reply");
        assert_eq!(&buf[..2], &q[..2]);
    }
    assert_eq!(allocs() - before, 0, "allocations on the TCP hit path");
    assert_eq!(buf.capacity(), 4096, "never grown to the TCP limit");
    assert!(buf.len() < stored.len() + 64);
}

#[test]
fn the_client_gate_allocates_nothing() {
    use std::net::IpAddr;
    use tierdns::policy::{
        AccessConfig, AccessList, AccessVerdict, RateLimit, RateLimitConfig, RateLimiter,
    };
    let access = AccessList::new(&AccessConfig {
        allow: [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "fc00::/7",
            "::1",
        ]
        .map(String::from)
        .to_vec(),
        ..AccessConfig::default()
    })
    .unwrap();
    let limit = RateLimit::new(&RateLimitConfig {
        qps: 1000,
        ..RateLimitConfig::default()
    })
    .unwrap();
    let limiter = RateLimiter::new();
    let clients: [IpAddr; 4] = [
        "10.1.2.3".parse().unwrap(),
        "192.168.7.7".parse().unwrap(),
        "fd00::1".parse().unwrap(),
        "::ffff:172.16.0.9".parse().unwrap(),
    ];
    // Warm up: the first query of each prefix makes its slot (a miss may allocate).
    let now = Instant::now();
    for c in clients {
        limiter.check(&limit, c, now);
    }
    let before = allocs();
    let mut allowed = 0;
    for i in 0..10_000usize {
        let client = clients[i % clients.len()];
        if access.check(client) == AccessVerdict::Allow {
            allowed += 1;
        }
        access.check("203.0.113.1".parse().unwrap());
        limiter.check(&limit, client, Instant::now());
    }
    assert_eq!(
        allocs() - before,
        0,
        "allocations in the access list and rate limiter"
    );
    assert_eq!(allowed, 10_000);
}
