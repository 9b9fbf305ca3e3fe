//! DNS 0x20 on one upstream link (one shard): whether the next UDP query leaves
//! with its letters in random case, and the automatic fallback for an upstream that
//! does not repeat the case it was asked in.
//!
//! With 0x20 on, a reply must repeat the question's letters in the case sent, else
//! it is dropped as forged (`upstream_case_mismatch`) and the query keeps waiting.
//! Some upstreams fold the question to lower case: with them every query would time
//! out. So each link watches the verdicts its queries give, as [`CaseSeen`]:
//!
//! - [`CaseSeen::Kept`]: a reply accepted in the exact case sent, for a name that
//!   had at least one capital (an all-lowercase draw proves nothing).
//! - [`CaseSeen::Folded`]: a query that got a reply with its ID and question in
//!   another case and then ended (timed out, or its flight was over) without any
//!   reply in the case sent.
//!
//! Rule ([`CaseGuard`]): after [`FOLDS_TO_FALL_BACK`] `Folded` in a row with no
//! `Kept` between, the link asks without 0x20 for [`FALLBACK_FOR`]; then one query
//! is a probe: sent with 0x20, but its reply is accepted in any case (as during the
//! fallback, so a probe never fails a client). A probe answered in the case sent
//! turns 0x20 back on; answered in another case, the fallback starts again. Any
//! `Kept` turns 0x20 on at once. Each fallback is counted
//! (`tierdns_upstream_case_fallback_total{upstream}`) and the first one per upstream
//! logged (a warning), the next ones at debug level.
//!
//! Why a forger cannot easily switch 0x20 off for an honest upstream: a `Folded`
//! needs a reply with the query's ID, from the upstream's address to the query's
//! source port (a 1 in 2^16 x 16-socket guess per packet for an off-path forger),
//! and it only counts when the upstream's own reply in the right case never came:
//! for an upstream that answers, the real reply arrives and makes the query `Kept`,
//! whatever was forged before it. So the forger must also make the real replies
//! vanish, three queries in a row with no good reply between, which is on-path
//! power (and on path 0x20 protects nothing anyway). The trade-off: detection waits
//! for the queries to end (an `upstream_timeout` each), so the first few queries to
//! a case-folding upstream fail from it before the fallback; and an upstream whose
//! servers disagree (a pool where some fold and some do not) keeps resetting the
//! count and stays on 0x20, losing the folding servers' answers: set
//! `case_randomization = false` for it.
//!
//! Pure logic with `now` passed in, one per link per shard: no shared write per
//! packet.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `Folded` verdicts in a row (no `Kept` between) that switch 0x20 off.
pub(crate) const FOLDS_TO_FALL_BACK: u32 = 3;
/// How long a link asks without 0x20 before it probes again.
pub(crate) const FALLBACK_FOR: Duration = Duration::from_secs(300);

/// What one query told about the upstream's handling of letter case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CaseSeen {
    /// Repeated the case sent.
    Kept,
    /// Answered in another case only.
    Folded,
}

/// How the next query is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CaseUse {
    /// Letters as they are; any case accepted back.
    Plain,
    /// Random case; a reply in another case is dropped as forged.
    Strict,
    /// Random case, to learn whether the upstream keeps it again; a reply in
    /// another case is still accepted (and says it does not).
    Probe,
}

/// A change of the link's mode, for the counter and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CaseChange {
    /// 0x20 switched off for [`FALLBACK_FOR`].
    FellBack,
    /// 0x20 back on.
    Restored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    On,
    Off {
        until: Instant,
    },
    /// Past the fallback: one probe out at a time (`sent_at`), another one only
    /// when the last gave no verdict within `probe_wait`.
    Probing {
        sent_at: Option<Instant>,
    },
}

/// The 0x20 state of one upstream link: see the module doc for the rule.
#[derive(Debug)]
pub(crate) struct CaseGuard {
    mode: Mode,
    /// `Folded` verdicts since the last `Kept`.
    folded_in_row: u32,
    /// How long a probe may go without a verdict before the next query probes
    /// (the upstream timeout: by then its query has ended).
    probe_wait: Duration,
}

impl CaseGuard {
    /// 0x20 on, no evidence yet.
    pub(crate) fn new(probe_wait: Duration) -> Self {
        Self {
            mode: Mode::On,
            folded_in_row: 0,
            probe_wait,
        }
    }

    /// How to send a query leaving at `now`.
    pub(crate) fn next_query(&mut self, now: Instant) -> CaseUse {
        match self.mode {
            Mode::On => CaseUse::Strict,
            Mode::Off { until } if now < until => CaseUse::Plain,
            Mode::Off { .. } => self.probe(now),
            Mode::Probing { sent_at: Some(at) } if now < at + self.probe_wait => CaseUse::Plain,
            Mode::Probing { .. } => self.probe(now),
        }
    }

    fn probe(&mut self, now: Instant) -> CaseUse {
        self.mode = Mode::Probing { sent_at: Some(now) };
        CaseUse::Probe
    }

    /// Takes one query's verdict, at `now`; says when the mode changed.
    pub(crate) fn saw(&mut self, seen: CaseSeen, now: Instant) -> Option<CaseChange> {
        match seen {
            CaseSeen::Kept => {
                self.folded_in_row = 0;
                if self.mode == Mode::On {
                    return None;
                }
                self.mode = Mode::On;
                Some(CaseChange::Restored)
            }
            CaseSeen::Folded => {
                self.folded_in_row = self.folded_in_row.saturating_add(1);
                let fall_back = match self.mode {
                    Mode::On => self.folded_in_row >= FOLDS_TO_FALL_BACK,
                    // The probe (or a query sent before the fallback) came back
                    // folded: off again.
                    Mode::Probing { .. } => true,
                    // Queries sent before the fallback, ending now.
                    Mode::Off { .. } => false,
                };
                if !fall_back {
                    return None;
                }
                self.mode = Mode::Off {
                    until: now + FALLBACK_FOR,
                };
                Some(CaseChange::FellBack)
            }
        }
    }

    /// Whether queries leave with 0x20 (on, not falling back or probing).
    #[cfg(test)]
    pub(crate) fn is_on(&self) -> bool {
        self.mode == Mode::On
    }
}

/// Most upstream addresses remembered as already warned about (then every
/// fallback of a new one warns again: only the log is at stake).
const MAX_WARNED: usize = 1024;

/// Upstreams whose first fallback was logged, process-wide (all shards), so that
/// the warning comes once per upstream, not once per shard.
static WARNED: Mutex<Vec<std::net::SocketAddr>> = Mutex::new(Vec::new());

/// Counts and logs a change of `addr`'s mode (labelled `label`). Rare: at most one
/// fallback per [`FALLBACK_FOR`] per link.
pub(crate) fn report(change: CaseChange, addr: std::net::SocketAddr, label: &str) {
    match change {
        CaseChange::FellBack => {
            metrics::counter!("tierdns_upstream_case_fallback_total", "upstream" => label.to_string())
                .increment(1);
            let first = {
                let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
                if warned.contains(&addr) {
                    false
                } else {
                    if warned.len() >= MAX_WARNED {
                        warned.clear();
                    }
                    warned.push(addr);
                    true
                }
            };
            if first {
                tracing::warn!(
                    upstream = label,
                    after = FOLDS_TO_FALL_BACK,
                    retry_in = ?FALLBACK_FOR,
                    "upstream does not repeat the query's letter case (DNS 0x20): asking it without 0x20 for a while; set case_randomization = false to stop this"
                );
            } else {
                tracing::debug!(
                    upstream = label,
                    "upstream still folds the letter case: 0x20 off again"
                );
            }
        }
        CaseChange::Restored => {
            tracing::debug!(
                upstream = label,
                "upstream repeats the letter case: 0x20 back on"
            );
        }
    }
}

/// The 0x20 guard of one link, shared by its sockets, with what its
/// changes are reported under.
pub(crate) struct CaseWatch {
    pub(crate) guard: std::cell::RefCell<CaseGuard>,
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) label: std::cell::RefCell<String>,
}

impl CaseWatch {
    pub(crate) fn next_query(&self, now: Instant) -> CaseUse {
        self.guard.borrow_mut().next_query(now)
    }

    pub(crate) fn saw(&self, seen: CaseSeen, now: Instant) {
        let change = self.guard.borrow_mut().saw(seen, now);
        if let Some(change) = change {
            report(change, self.addr, &self.label.borrow());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const WAIT: Duration = Duration::from_secs(2);

    #[test]
    fn three_folds_in_a_row_switch_it_off_and_a_kept_case_resets_the_count() {
        let t0 = Instant::now();
        let mut g = CaseGuard::new(WAIT);
        assert_eq!(g.next_query(t0), CaseUse::Strict);
        assert_eq!(g.saw(CaseSeen::Folded, t0), None);
        assert_eq!(g.saw(CaseSeen::Folded, t0), None);
        // One reply in the case sent: the upstream keeps case, the count restarts.
        assert_eq!(g.saw(CaseSeen::Kept, t0), None);
        assert_eq!(g.saw(CaseSeen::Folded, t0), None);
        assert_eq!(g.saw(CaseSeen::Folded, t0), None);
        assert!(g.is_on());
        assert_eq!(g.next_query(t0), CaseUse::Strict);
        assert_eq!(g.saw(CaseSeen::Folded, t0 + S), Some(CaseChange::FellBack));
        assert!(!g.is_on());
        assert_eq!(g.next_query(t0 + S), CaseUse::Plain);
        assert_eq!(g.next_query(t0 + S + FALLBACK_FOR / 2), CaseUse::Plain);
        // More folds of queries sent before the fallback change nothing.
        assert_eq!(g.saw(CaseSeen::Folded, t0 + 2 * S), None);
        assert_eq!(
            g.next_query(t0 + S + FALLBACK_FOR - Duration::from_millis(1)),
            CaseUse::Plain,
            "off for the whole period, counted from the fallback"
        );
    }

    #[test]
    fn after_the_fallback_one_probe_at_a_time_and_its_verdict_decides() {
        let t0 = Instant::now();
        let mut g = CaseGuard::new(WAIT);
        for _ in 0..FOLDS_TO_FALL_BACK {
            g.saw(CaseSeen::Folded, t0);
        }
        let t1 = t0 + FALLBACK_FOR;
        assert_eq!(g.next_query(t1), CaseUse::Probe);
        // While the probe is out, the others go plain.
        assert_eq!(g.next_query(t1 + S), CaseUse::Plain);
        // Still folding: off again for a whole period, counted again.
        assert_eq!(g.saw(CaseSeen::Folded, t1 + S), Some(CaseChange::FellBack));
        assert_eq!(g.next_query(t1 + 2 * S), CaseUse::Plain);
        let t2 = t1 + S + FALLBACK_FOR;
        assert_eq!(g.next_query(t2), CaseUse::Probe);
        // A probe without a verdict (no reply, or a name with no capital drawn):
        // another one once it has had its time.
        assert_eq!(
            g.next_query(t2 + WAIT - Duration::from_millis(1)),
            CaseUse::Plain
        );
        assert_eq!(g.next_query(t2 + WAIT), CaseUse::Probe);
        // Fixed upstream: back on.
        assert_eq!(g.saw(CaseSeen::Kept, t2 + WAIT), Some(CaseChange::Restored));
        assert!(g.is_on());
        assert_eq!(g.next_query(t2 + WAIT), CaseUse::Strict);
        // And the count starts from zero.
        assert_eq!(g.saw(CaseSeen::Folded, t2 + WAIT), None);
        assert_eq!(g.saw(CaseSeen::Folded, t2 + WAIT), None);
        assert!(g.is_on());
    }

    #[test]
    fn a_kept_case_during_the_fallback_turns_it_back_on() {
        let t0 = Instant::now();
        let mut g = CaseGuard::new(WAIT);
        for _ in 0..FOLDS_TO_FALL_BACK {
            g.saw(CaseSeen::Folded, t0);
        }
        assert!(!g.is_on());
        // A query sent with 0x20 before the fallback, answered in its case: only
        // the upstream itself can send that (the forger never saw the case).
        assert_eq!(g.saw(CaseSeen::Kept, t0 + S), Some(CaseChange::Restored));
        assert_eq!(g.next_query(t0 + S), CaseUse::Strict);
    }

    #[test]
    fn an_honest_upstream_answering_between_forgeries_never_falls_back() {
        // Forged replies in another case only ever become Folded for queries the
        // upstream itself did not answer; each of its answers is a Kept.
        let t0 = Instant::now();
        let mut g = CaseGuard::new(WAIT);
        for i in 0..1000u32 {
            let seen = if i % 3 == 2 {
                CaseSeen::Kept
            } else {
                CaseSeen::Folded
            };
            assert_eq!(g.saw(seen, t0), None, "verdict {i}");
        }
        assert!(g.is_on());
    }
}
