//! The UDP side of the fleet: one receiving thread per upstream, and one timer
//! thread that sends the delayed answers of every upstream at their time.

use super::record::Outcome;
use super::shared::{RecordId, Shared};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How late the timer may send a delayed answer so that answers due close
/// together leave in one wake-up.
pub const TIMER_SLACK: Duration = Duration::from_micros(100);

/// An answer waiting for its time.
struct Due {
    at: Instant,
    upstream: usize,
    peer: SocketAddr,
    answer: Vec<u8>,
    record: RecordId,
    outcome: Outcome,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.at.cmp(&self.at) // min-heap on time
    }
}

/// The delayed UDP answers of the whole fleet.
pub(super) struct Timer {
    heap: Mutex<BinaryHeap<Due>>,
    wake: Condvar,
    stop: AtomicBool,
}

impl Timer {
    /// No answer waiting, running.
    pub(super) fn new() -> Self {
        Self {
            heap: Mutex::new(BinaryHeap::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        }
    }

    /// Stops the timer thread and every UDP receiving thread (each within its
    /// read timeout).
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.notify_all();
    }

    fn push(&self, due: Due) {
        let mut h = self.heap.lock().expect("timer lock");
        let earliest = h.peek().is_none_or(|top| due.at < top.at);
        h.push(due);
        drop(h);
        if earliest {
            self.wake.notify_one();
        }
    }

    /// Sends each answer at its time until stopped.
    pub(super) fn run(&self, socks: &[std::net::UdpSocket], sh: &Shared) {
        let mut batch = Vec::new();
        let mut h = self.heap.lock().expect("timer lock");
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            while h.peek().is_some_and(|top| top.at <= now) {
                batch.push(h.pop().expect("peeked"));
            }
            if batch.is_empty() {
                // wake a little after the earliest: answers due together go out in
                // one wake-up (at most TIMER_SLACK late)
                let wait = h
                    .peek()
                    .map_or(Duration::from_millis(100), |top| top.at - now + TIMER_SLACK)
                    .min(Duration::from_millis(100));
                h = self.wake.wait_timeout(h, wait).expect("timer lock").0;
                continue;
            }
            drop(h);
            for d in batch.drain(..) {
                let _ = socks[d.upstream].send_to(&d.answer, d.peer);
                sh.done(d.record, d.outcome);
            }
            h = self.heap.lock().expect("timer lock");
        }
    }
}

/// Receives upstream `i`'s UDP queries until the timer is stopped; answers now or
/// hands them to the timer.
pub(super) fn serve_udp(
    i: usize,
    sock: &std::net::UdpSocket,
    sh: &Shared,
    timer: &Timer,
    seed: u64,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut buf = vec![0u8; 4096];
    let mut name = String::new();
    while !timer.stop.load(Ordering::Relaxed) {
        let Ok((n, peer)) = sock.recv_from(&mut buf) else {
            continue; // timeout (checks stop) or a transient error
        };
        let at = Instant::now();
        let Some((answer, delay, record, outcome)) =
            sh.handle(i, false, &buf[..n], &mut rng, &mut name)
        else {
            continue;
        };
        if delay < Duration::from_micros(50) {
            let _ = sock.send_to(&answer, peer);
            sh.done(record, outcome);
        } else {
            timer.push(Due {
                at: at + delay,
                upstream: i,
                peer,
                answer,
                record,
                outcome,
            });
        }
    }
}
