//! [`Circuit`]: the circuit breaker of one upstream.
//!
//! ```text
//!            degraded_after consecutive failures
//!   Closed ───────────────────────────────────────> Degraded
//!     ^  <─────────────── a success ───────────────────┘ │
//!     │                                                   │ open_after consecutive failures
//!     │ close_after successes                             v
//!   HalfOpen <── backoff passed, a probe is taken ───── Open (until now + backoff)
//!     │                                                   ^
//!     └──────── a failure: backoff doubles (≤ max) ───────┘
//! ```
//!
//! Invariants: an open circuit grants one probe per backoff interval and becomes
//! half-open when it does; a half-open circuit has at most one query granted at a
//! time (its slot frees on a result, or after one backoff interval if the result
//! never comes, e.g. because the flight ended first); the backoff starts at
//! `backoff_initial`, doubles on each failed probe, never exceeds `backoff_max`, and
//! resets when the circuit closes. Only failures that
//! [trip circuits](super::FailKind::trips_circuit) count; a success received
//! while open (a late answer to a query sent before) changes nothing.

use super::{after, CircuitState, FailKind, HealthParams};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub(crate) struct Circuit {
    state: CircuitState,
    consecutive_failures: u32,
    half_open_successes: u32,
    backoff: Duration,
    /// Open: when the next probe may go. HalfOpen: when a taken slot frees anyway.
    retry_at: Option<Instant>,
    /// HalfOpen: a query has been granted and its result not seen.
    slot_taken: bool,
}

impl Circuit {
    pub(crate) fn new(params: &HealthParams) -> Self {
        Self {
            state: CircuitState::Closed,
            consecutive_failures: 0,
            half_open_successes: 0,
            backoff: params.backoff_initial,
            retry_at: None,
            slot_taken: false,
        }
    }

    pub(crate) fn state(&self) -> CircuitState {
        self.state
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub(crate) fn on_success(&mut self, params: &HealthParams) {
        match self.state {
            CircuitState::Closed | CircuitState::Degraded => {
                self.consecutive_failures = 0;
                self.state = CircuitState::Closed;
            }
            CircuitState::HalfOpen => {
                self.slot_taken = false;
                self.half_open_successes += 1;
                if self.half_open_successes >= params.close_after {
                    self.state = CircuitState::Closed;
                    self.consecutive_failures = 0;
                    self.half_open_successes = 0;
                    self.backoff = params.backoff_initial;
                    self.retry_at = None;
                }
            }
            CircuitState::Open => {}
        }
    }

    pub(crate) fn on_failure(&mut self, kind: FailKind, params: &HealthParams, now: Instant) {
        if !kind.trips_circuit() {
            // Says nothing about the upstream's health, but the probe came back.
            self.slot_taken = false;
            return;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        match self.state {
            CircuitState::Closed | CircuitState::Degraded => {
                if self.consecutive_failures >= params.open_after {
                    self.open(params.backoff_initial, now);
                } else if self.consecutive_failures >= params.degraded_after {
                    self.state = CircuitState::Degraded;
                }
            }
            CircuitState::HalfOpen => {
                let doubled = self.backoff.saturating_mul(2).min(params.backoff_max);
                self.open(doubled, now);
            }
            CircuitState::Open => {}
        }
    }

    fn open(&mut self, backoff: Duration, now: Instant) {
        self.state = CircuitState::Open;
        self.backoff = backoff;
        self.retry_at = Some(after(now, backoff));
        self.half_open_successes = 0;
        self.slot_taken = false;
    }

    /// Whether this upstream may be asked now; takes the probe slot of an open or
    /// half-open circuit when it grants one.
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        let due = self.retry_at.is_none_or(|at| now >= at);
        match self.state {
            CircuitState::Closed | CircuitState::Degraded => true,
            CircuitState::Open if due => {
                self.state = CircuitState::HalfOpen;
                self.half_open_successes = 0;
                self.take_slot(now);
                true
            }
            CircuitState::HalfOpen if !self.slot_taken || due => {
                self.take_slot(now);
                true
            }
            CircuitState::Open | CircuitState::HalfOpen => false,
        }
    }

    fn take_slot(&mut self, now: Instant) {
        self.slot_taken = true;
        self.retry_at = Some(after(now, self.backoff));
    }

    /// The current backoff interval.
    pub(crate) fn backoff(&self) -> Duration {
        self.backoff
    }
}
