//! The debug line of one finished flight: what an operator asks when a client got
//! an address ("who was asked, who answered, what was merged": the merged
//! answer's records counted by the upstream that gave each). Built only when
//! debug logging is on: the caller checks `tracing::enabled!` first.

use crate::flight::state::{Came, Finished};
use crate::flight::Account;
use crate::health::{PerUpstream, UpstreamIdx};
use crate::upstream::Question;
use std::fmt::Write;
use std::time::Instant;

/// Logs the flight for `question` that started at `started` and ended at `now`.
pub(super) fn log_flight(
    question: &Question,
    labels: &PerUpstream<String>,
    started: Instant,
    now: Instant,
    account: &Account,
    finished: &Finished,
) {
    let label = |up: UpstreamIdx| labels.get(up).map_or("?", String::as_str);
    let mut asked = String::new();
    for (i, &(up, at)) in account.asked.iter().enumerate() {
        let sep = if i == 0 { "" } else { " " };
        let _ = write!(asked, "{sep}{}@{}ms", label(up), at.as_millis());
    }
    let mut refused = String::new();
    for (i, &(up, purpose)) in account.refused.iter().enumerate() {
        let sep = if i == 0 { "" } else { " " };
        let _ = write!(refused, "{sep}{}:{}", label(up), purpose.as_str());
    }
    let over_tcp: Vec<&str> = account.over_tcp.iter().map(|&up| label(up)).collect();
    let first = finished
        .stats
        .first_good
        .map_or("none", |(up, _)| label(up));
    let merged = finished
        .merged
        .as_ref()
        .map_or(0, |(m, _)| m.extra_addresses);
    // What the merged answer holds, by who gave it: records per upstream.
    let mut by: smallvec::SmallVec<[(UpstreamIdx, usize); 8]> = smallvec::SmallVec::new();
    for came in &finished.came {
        if let Came::Upstream(up, _) = came {
            match by.iter_mut().find(|(u, _)| u == up) {
                Some((_, n)) => *n += 1,
                None => by.push((*up, 1)),
            }
        }
    }
    let mut merged_from = String::new();
    for (i, (up, n)) in by.iter().enumerate() {
        let sep = if i == 0 { "" } else { " " };
        let _ = write!(merged_from, "{sep}{}:{n}", label(*up));
    }
    tracing::debug!(
        name = %text_name(question.qname_lower()),
        qtype = question.qtype(),
        asked = %asked,
        first,
        merged_addresses = merged,
        merged_from = %merged_from,
        budget_refused = %refused,
        over_tcp = ?over_tcp,
        ms = now.saturating_duration_since(started).as_millis() as u64,
        "flight finished"
    );
}

/// A lowercased wire name as text, `.` for the root; bytes outside printable
/// ASCII (and `.` or `\` inside a label) escaped as `\DDD` (RFC 4343). Bounded by
/// the name's length; a malformed name ends where its labels stop making sense.
fn text_name(wire: &[u8]) -> String {
    let mut out = String::with_capacity(wire.len());
    let mut pos = 0;
    while let Some(&len) = wire.get(pos) {
        if len == 0 {
            break;
        }
        let Some(label) = wire.get(pos + 1..pos + 1 + usize::from(len)) else {
            break;
        };
        for &b in label {
            if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                out.push(char::from(b));
            } else {
                let _ = write!(out, "\\{b:03}");
            }
        }
        out.push('.');
        pos += 1 + usize::from(len);
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::upstream;
    use crate::tiers::{PlanStats, Purpose};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Everything the subscriber writes, kept.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(level: tracing::Level) -> String {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        let labels: PerUpstream<String> = ["fast", "slow", "far"]
            .map(String::from)
            .into_iter()
            .collect();
        let t0 = Instant::now();
        let mut account = Account::default();
        account.asked.push((upstream(0), Duration::ZERO));
        account.asked.push((upstream(1), Duration::from_millis(20)));
        account.refused.push((upstream(2), Purpose::Completion));
        let finished = Finished {
            stats: PlanStats {
                first_good: Some((upstream(0), true)),
                ..PlanStats::default()
            },
            merged: None,
            came: vec![
                Came::Upstream(upstream(0), t0),
                Came::Upstream(upstream(0), t0),
                Came::Upstream(upstream(1), t0),
            ],
        };
        let question = Question::new(b"\x03www\x07example\x00", 1, 1);
        tracing::subscriber::with_default(subscriber, || {
            if tracing::enabled!(tracing::Level::DEBUG) {
                let later = t0 + Duration::from_millis(70);
                log_flight(&question, &labels, t0, later, &account, &finished);
            }
        });
        let out = captured.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_finished_flight_is_one_debug_line_naming_who_was_asked_answered_and_refused() {
        let line = logged(tracing::Level::DEBUG);
        assert_eq!(line.lines().count(), 1, "{line}");
        for part in [
            "flight finished",
            "name=www.example.",
            "asked=fast@0ms slow@20ms",
            "first=\"fast\"",
            "budget_refused=far:completion",
            "merged_from=fast:2 slow:1",
            "ms=70",
        ] {
            assert!(line.contains(part), "{part:?} not in {line}");
        }
        assert!(logged(tracing::Level::INFO).is_empty(), "nothing at info");
    }

    #[test]
    fn wire_names_read_as_text_with_odd_bytes_escaped() {
        assert_eq!(text_name(b"\x03www\x07example\x00"), "www.example.");
        assert_eq!(text_name(b"\x00"), ".");
        assert_eq!(text_name(b"\x03a.b\x00"), "a\\046b.");
        assert_eq!(text_name(b"\x02\x00z\x00"), "\\000z.");
        // A length past the end stops the walk instead of reading out of bounds.
        assert_eq!(text_name(b"\x03ww"), ".");
    }
}
