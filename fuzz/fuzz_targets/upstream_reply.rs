//! Fuzzes the upstream reply path: arbitrary bytes arrive on an upstream socket
//! whose pending table holds the bytes' own question under their own ID, and `a.` A
//! IN under the next ID. The table hands a reply over only if it is a response
//! with a pending ID and that query's question (checked inside), exactly as
//! received; what it hands over is classified by the tiers' rules (NOERROR or
//! NXDOMAIN, full extended rcode, patchable layout), checked inside too. Nothing
//! panics on any input.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run upstream_reply corpus/upstream_reply seeds/upstream_reply`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tierdns::fuzzing::upstream_reply(data);
});
