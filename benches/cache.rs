// Run: cargo bench --bench cache -- --warm-up-time 1 --measurement-time 3
// Machine: 2-core AMD EPYC VM (shared), Linux, rustc 1.95, release profile.
// Last results (machine loaded: load average ~5 from parallel builds, so the
// two-thread figures especially are noisy; two runs shown where they differed):
//   memory/1000000_entries: avg wire 82.9 B, accounted bytes()/len 194.9 B,
//     real heap/len 189.0 B -> 106 B/entry of overhead in requested sizes
//     (slot 88 B + hash table ~10 B + slab slack), plus glibc's ~8 B chunk header
//     on each wire block: about 115 B/entry, inside the 128 B target.
//   hit/lookup                           81-89 ns
//   hit/full_path                        240-325 ns
//   contended/two_threads_1_partitions   130-153 ns per lookup per thread
//   contended/two_threads_256_partitions 155-223 ns per lookup per thread
//
// What is measured:
// - `hit/lookup`: one cache hit, key already built: hash, lock, probe, copy, patch.
// - `hit/full_path`: from raw query bytes: QueryView::parse, KeyRef, ReplyTarget,
//   lookup into a preallocated buffer (what a shard does per cached query).
// - `contended/*`: two threads looking up different keys at once, time per lookup
//   per thread; with 1 partition (every lookup on the same lock) and with the
//   default 256.
// - memory per entry (printed before the timings): 1,000,000 entries, `bytes()/len`
//   (the accounting) and the real heap growth measured by a counting allocator,
//   against the average stored wire size.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tierdns::cache::{CacheConfig, KeyRef, Lookup, PacketCache};
use tierdns::wire::reader::QueryView;
use tierdns::wire::{ReplyTarget, PLAIN_UDP_MAX};

/// Live heap bytes (requested sizes).
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every method forwards to `System` unchanged; the counter is an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn name(i: usize) -> String {
    format!("host{i}.example.com.")
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.set_edns(e);
    m.to_vec().unwrap()
}

/// A typical A answer: `records` addresses, an OPT.
fn answer(name: &str, records: u8) -> Vec<u8> {
    let mut m = Message::response(0x4242, OpCode::Query);
    m.metadata.response_code = ResponseCode::NoError;
    m.metadata.recursion_desired = true;
    m.metadata.recursion_available = true;
    let owner = Name::from_ascii(name).unwrap();
    m.add_query(Query::query(owner.clone(), RecordType::A));
    for i in 0..records {
        m.add_answer(Record::from_rdata(
            owner.clone(),
            3600,
            RData::A(A::new(192, 0, 2, i)),
        ));
    }
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.set_edns(e);
    m.to_vec().unwrap()
}

fn filled(cfg: CacheConfig, n: usize) -> (PacketCache, Vec<Vec<u8>>) {
    let cache = PacketCache::new(cfg);
    let now = Instant::now();
    let mut queries = Vec::with_capacity(n);
    for i in 0..n {
        let q = query(i as u16, &name(i));
        let view = QueryView::parse(&q).unwrap();
        let outcome = cache.insert(&KeyRef::from_query(&view), &answer(&name(i), 2), now, 1);
        assert!(outcome.stored());
        queries.push(q);
    }
    (cache, queries)
}

fn target<'a>(view: &'a QueryView<'_>) -> ReplyTarget<'a> {
    ReplyTarget {
        id: view.header.id,
        flags: view.header.flags,
        qname: view.qname,
        edns: view.edns,
        max_size: view.edns.map_or(PLAIN_UDP_MAX, |e| {
            usize::from(e.udp_size).max(PLAIN_UDP_MAX)
        }),
    }
}

fn hit(c: &mut Criterion) {
    let (cache, queries) = filled(CacheConfig::default(), 10_000);
    let mut buf = vec![0u8; 65_600];
    let mut group = c.benchmark_group("hit");
    let view = QueryView::parse(&queries[42]).unwrap();
    let key = KeyRef::from_query(&view);
    let t = target(&view);
    group.bench_function("lookup", |b| {
        b.iter(|| {
            let r = cache.lookup(black_box(&key), Instant::now(), &t, &mut buf);
            assert!(matches!(r, Lookup::Hit { .. }));
        })
    });
    let mut i = 0usize;
    group.bench_function("full_path", |b| {
        b.iter(|| {
            i = (i + 7919) % queries.len();
            let view = QueryView::parse(black_box(&queries[i])).unwrap();
            let key = KeyRef::from_query(&view);
            let r = cache.lookup(&key, Instant::now(), &target(&view), &mut buf);
            assert!(matches!(r, Lookup::Hit { .. }));
        })
    });
    group.finish();
}

/// Two threads, different keys, `iters` lookups each; returns the wall time, so the
/// reported figure is time per lookup per thread.
fn two_threads(cache: &PacketCache, queries: &[Vec<u8>], iters: u64) -> Duration {
    let barrier = Barrier::new(2);
    let half = queries.len() / 2;
    std::thread::scope(|s| {
        let run = |offset: usize| {
            let barrier = &barrier;
            move || {
                let mut buf = vec![0u8; 65_600];
                let views: Vec<_> = queries[offset..offset + half]
                    .iter()
                    .map(|q| QueryView::parse(q).unwrap())
                    .collect();
                barrier.wait();
                let start = Instant::now();
                for n in 0..iters as usize {
                    let view = &views[n % views.len()];
                    let r = cache.lookup(&KeyRef::from_query(view), start, &target(view), &mut buf);
                    assert!(matches!(r, Lookup::Hit { .. }));
                }
                start.elapsed()
            }
        };
        let a = s.spawn(run(0));
        let b = s.spawn(run(half));
        a.join().unwrap().max(b.join().unwrap())
    })
}

fn contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("contended");
    for partitions in [1usize, 256] {
        let (cache, queries) = filled(
            CacheConfig {
                partitions,
                ..CacheConfig::default()
            },
            1_000,
        );
        group.bench_function(format!("two_threads_{partitions}_partitions"), |b| {
            b.iter_custom(|iters| two_threads(&cache, &queries, iters))
        });
    }
    group.finish();
}

fn memory_per_entry() {
    const N: usize = 1_000_000;
    let before = LIVE.load(Ordering::Relaxed);
    let cache = PacketCache::new(CacheConfig {
        max_bytes: 1 << 30,
        ..CacheConfig::default()
    });
    let now = Instant::now();
    let mut wire_total = 0usize;
    let mut q = Vec::with_capacity(512);
    for i in 0..N {
        let nm = name(i);
        let a = answer(&nm, 2);
        wire_total += a.len();
        q.clear();
        q.extend_from_slice(&query(1, &nm));
        let view = QueryView::parse(&q).unwrap();
        assert!(cache
            .insert(&KeyRef::from_query(&view), &a, now, 1)
            .stored());
    }
    let heap = LIVE.load(Ordering::Relaxed) - before - q.capacity() as isize;
    let len = cache.len();
    assert_eq!(len, N);
    let wire_avg = wire_total as f64 / N as f64;
    let heap_avg = heap as f64 / N as f64;
    println!(
        "memory/{N}_entries: avg wire {wire_avg:.1} B, accounted bytes()/len {:.1} B, \
         real heap/len {heap_avg:.1} B, real overhead {:.1} B/entry (requested sizes; \
         the allocator's own headers come on top)",
        cache.bytes() as f64 / len as f64,
        heap_avg - wire_avg,
    );
    drop(black_box(cache));
}

criterion_group!(benches, hit, contended);

fn main() {
    memory_per_entry();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
