//! The tierdns load-test harness.
//!
//! - [`generator`] sends DNS queries in batches (`sendmmsg`/`recvmmsg` over many
//!   source ports, or pipelined TCP), open or closed loop, and measures: [`report`].
//!   Its config, stop handle and counters, which both transports share, live in
//!   `load`.
//! - [`names`] says what it asks: a dnsperf data file, a Zipf mix, never-seen names.
//! - [`fleet`] runs simulated upstreams with latencies, errors and their own
//!   addresses, and records every query they see.
//! - [`responder`] answers everything at once, to measure generators, and is the
//!   floor peers.sh measures servers against: `recvmmsg`/`sendmmsg`, or [`uring`]
//!   (one ring, multishot receive into provided buffers, one enter per turn).
//! - [`scenario`] starts a fleet, tierdns and the generator, runs, and prints a table.
//! - [`dns`] is the little wire format all of them need; [`mmsg`] the batched
//!   socket calls; it and [`uring`] are the modules with `unsafe`.
//!
//! Loopback only: the generator refuses any other destination.

#![deny(unsafe_code)]

pub mod dns;
pub mod fleet;
pub mod generator;
mod load;
pub mod mmsg;
pub mod names;
pub mod plot;
pub mod report;
pub mod responder;
pub mod scenario;
mod tcp_gen;
pub mod uring;
