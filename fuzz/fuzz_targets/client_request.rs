//! Fuzzes the whole client request path of a shard: arbitrary bytes arrive as a
//! UDP datagram from a client, pass the access gate, and go through the first pass
//! (read, protocol checks, local answers such as ANY and NOTIMP, the cache lookup
//! and the patched hit) of a real shard without sockets, whose cache holds an
//! answer to the query's own question when the input's last byte is odd. Any reply
//! echoes the client's ID, is a response, and fits the client's UDP limit (checked
//! inside); nothing panics on any input.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run client_request corpus/client_request seeds/client_request`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cached = data.last().is_some_and(|b| b & 1 == 1);
    let _ = tierdns::fuzzing::client_request(data, cached);
});
