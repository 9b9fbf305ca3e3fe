//! tierdns: a caching DNS forwarder for Linux edge nodes.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cache;
pub mod duration;
pub mod health;
pub mod tiers;
pub mod wire;
