//! The flight's driver on a shard (the state machine's own tests are in
//! `src/flight/state/tests.rs`).

use std::time::{Duration, Instant};

const MS: Duration = Duration::from_millis(1);

/// A query whose deadline is far past what an `Instant` holds (an absurd but
/// accepted `upstream_timeout`) is sent and waited for like any other: the deadline
/// is clamped, nothing overflows.
#[test]
fn an_absurd_upstream_timeout_is_clamped_not_an_overflow() {
    let text = "[[upstream]]\naddress = \"127.0.0.1:9\"\n\
                [limits]\nupstream_timeout = \"300000000000y\"\n\
                [cache]\nprefetch = false\n";
    let config = crate::config::Config::parse(text, "test.toml").expect("accepted");
    let mut query = 7u16.to_be_bytes().to_vec();
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    query.extend_from_slice(b"\x03www\x07example\x00\x00\x01\x00\x01");
    crate::test_support::local(async {
        let shard = crate::shard::socketless_shard(config);
        let admitted = shard.admit().unwrap();
        let resolving = shard.resolve(
            &query,
            crate::transport::Transport::Udp,
            Instant::now(),
            &admitted,
        );
        // The query leaves at once (that is where the deadline was computed, and
        // where it overflowed); nobody answers it within this test.
        let waited = tokio::time::timeout(50 * MS, resolving).await;
        assert!(waited.is_err(), "still waiting for its answer, not failed");
    });
}
