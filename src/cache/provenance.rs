//! Where each record of an entry came from: which upstream gave it, and when.
//!
//! Kept beside the answer, never in the hit path's way: a hit copies the stored
//! wire bytes and patches them, and reads none of this.
//!
//! - **Sources.** An upstream is named by a [`SourceId`], one byte, from the
//!   cache's own registry of upstream labels ([`Sources`]): the label is what the
//!   metrics call it, and an id is never reused, so a reload that renumbers the
//!   upstreams does not rename what entries written before it say. At most
//!   [`MAX_SOURCES`] labels are named; a label past them is [`SourceId::UNKNOWN`].
//! - **One source (most entries).** An answer one upstream gave costs one byte in
//!   the entry (space its padding had anyway): every record from that upstream,
//!   at the entry's creation.
//! - **Merged entries.** Records in message order (every record but OPT, as the
//!   TTL patches count them) are described by [`Run`]s: consecutive records from
//!   one source at one arrival, 8 bytes a run whatever its length. A merged
//!   answer has about one run per upstream that added to it. They live in the
//!   partition's side table, charged to the entry's bytes; at most [`MAX_RUNS`]
//!   runs are kept per entry, and records past them read as unknown.
//! - **Replacement.** An insert replaces the whole entry, its provenance
//!   included: a new flight's answer starts its own. A completion by demand
//!   merges into the cached answer and carries that answer's runs over.

use std::sync::{PoisonError, RwLock};

/// Most distinct upstream labels named; later ones are [`SourceId::UNKNOWN`].
pub const MAX_SOURCES: usize = 255;
/// Most runs kept per entry (a merged answer needs about one per upstream).
pub const MAX_RUNS: usize = 64;

/// An upstream as the cache names it (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SourceId(u8);

impl SourceId {
    /// Not known: written without provenance, or past [`MAX_SOURCES`].
    pub const UNKNOWN: Self = Self(u8::MAX);

    /// The id as a number.
    pub fn get(self) -> u8 {
        self.0
    }
}

/// Records in message order from one source, that arrived `after_ms` after the
/// entry's creation (saturating: about 49 days).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Milliseconds after the entry's creation (its first answer's arrival).
    pub after_ms: u32,
    /// How many consecutive records.
    pub records: u16,
    /// Who gave them.
    pub source: SourceId,
}

/// Bytes a traced entry is charged beyond its runs: its slot in the partition's
/// side table (key, boxed slice, control byte, load slack) and the allocator's
/// per-block overhead of the runs.
pub const TRACE_OVERHEAD: usize = size_of::<(u32, Box<[Run]>)>() + 8 + 16;

/// Bytes charged for `runs` kept in the side table.
pub(super) fn trace_cost(runs: &[Run]) -> usize {
    TRACE_OVERHEAD + size_of_val(runs)
}

/// Where the records of an answer being stored came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origins<'a> {
    /// Every record from one source, at the entry's creation.
    One(SourceId),
    /// Records in message order, by runs (see [`Run`]).
    Runs(&'a [Run]),
}

impl Origins<'_> {
    /// The compact form: one source in the entry, or the runs for the side
    /// table (at most [`MAX_RUNS`], neighbours of the same source and arrival
    /// joined, empty runs dropped).
    pub(super) fn compact(self) -> (SourceId, Option<Box<[Run]>>) {
        let runs = match self {
            Self::One(source) => return (source, None),
            Self::Runs(runs) => runs,
        };
        let mut out: Vec<Run> = Vec::new();
        for run in runs.iter().filter(|r| r.records > 0) {
            let room = out.len() < MAX_RUNS;
            match out.last_mut() {
                Some(last) if last.source == run.source && last.after_ms == run.after_ms => {
                    last.records = last.records.saturating_add(run.records);
                }
                _ if room => out.push(*run),
                _ => break,
            }
        }
        match out.as_slice() {
            [] => (SourceId::UNKNOWN, None),
            [only] if only.after_ms == 0 => (only.source, None),
            _ => (
                out.first().map_or(SourceId::UNKNOWN, |r| r.source),
                Some(out.into()),
            ),
        }
    }
}

/// Per record in message order, its source and arrival (ms after the entry's
/// creation), for `records` records described by `one` or `runs`. Records no
/// run covers are unknown.
pub fn expand(one: SourceId, runs: Option<&[Run]>, records: usize) -> Vec<(SourceId, u32)> {
    let Some(runs) = runs else {
        return vec![(one, 0); records];
    };
    let mut out = Vec::with_capacity(records);
    for run in runs {
        let left = records - out.len();
        let n = usize::from(run.records).min(left);
        out.extend(std::iter::repeat_n((run.source, run.after_ms), n));
    }
    out.resize(records, (SourceId::UNKNOWN, 0));
    out
}

/// Runs for a list of per-record origins (the inverse of [`expand`]).
pub fn runs_of(records: &[(SourceId, u32)]) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for &(source, after_ms) in records {
        match out.last_mut() {
            Some(last)
                if last.source == source
                    && last.after_ms == after_ms
                    && last.records < u16::MAX =>
            {
                last.records += 1;
            }
            _ => out.push(Run {
                after_ms,
                records: 1,
                source,
            }),
        }
    }
    out
}

/// The registry of upstream labels behind [`SourceId`]s. Read-mostly: a label
/// already named costs a shared read lock and a scan of at most
/// [`MAX_SOURCES`] short strings (a miss path's cost, never a hit's).
#[derive(Debug, Default)]
pub struct Sources {
    labels: RwLock<Vec<Box<str>>>,
}

impl Sources {
    /// The id of `label`, named on first use.
    pub fn id(&self, label: &str) -> SourceId {
        let find = |labels: &[Box<str>]| labels.iter().position(|l| &**l == label);
        {
            let labels = self.labels.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(i) = find(&labels) {
                return SourceId(u8::try_from(i).unwrap_or(u8::MAX));
            }
        }
        let mut labels = self.labels.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = find(&labels) {
            return SourceId(u8::try_from(i).unwrap_or(u8::MAX));
        }
        if labels.len() >= MAX_SOURCES {
            return SourceId::UNKNOWN;
        }
        labels.push(label.into());
        SourceId(u8::try_from(labels.len() - 1).unwrap_or(u8::MAX))
    }

    /// The label `id` names, None for [`SourceId::UNKNOWN`] or an id never given.
    pub fn label(&self, id: SourceId) -> Option<String> {
        let labels = self.labels.read().unwrap_or_else(PoisonError::into_inner);
        labels.get(usize::from(id.0)).map(|l| l.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(source: u8, after_ms: u32, records: u16) -> Run {
        Run {
            after_ms,
            records,
            source: SourceId(source),
        }
    }

    /// The numbers the README gives: an entry of one source costs nothing more
    /// (its source byte sits in padding), a merged one its side-table slot and
    /// 8 bytes a run.
    #[test]
    fn provenance_costs_what_the_readme_says() {
        assert_eq!(size_of::<Run>(), 8);
        assert_eq!(TRACE_OVERHEAD, 48);
        assert_eq!(super::super::ENTRY_OVERHEAD, 120, "as before provenance");
        assert_eq!(trace_cost(&[run(0, 0, 2), run(1, 40, 1)]), 64);
    }

    #[test]
    fn sources_are_named_once_and_never_reused() {
        let s = Sources::default();
        let a = s.id("ns1");
        let b = s.id("ns2");
        assert_ne!(a, b);
        assert_eq!(s.id("ns1"), a);
        assert_eq!(s.label(b).as_deref(), Some("ns2"));
        assert_eq!(s.label(SourceId::UNKNOWN), None);
        for i in 0..400 {
            s.id(&format!("u{i}"));
        }
        assert_eq!(s.id("one too many"), SourceId::UNKNOWN, "bounded");
        assert_eq!(s.id("ns2"), b, "still named");
    }

    #[test]
    fn one_source_at_creation_needs_no_runs() {
        assert_eq!(Origins::One(SourceId(3)).compact(), (SourceId(3), None));
        let single = [run(2, 0, 5)];
        assert_eq!(Origins::Runs(&single).compact(), (SourceId(2), None));
        // The same source later, or two sources: runs.
        let later = [run(2, 0, 2), run(2, 40, 1)];
        let (first, runs) = Origins::Runs(&later).compact();
        assert_eq!((first, runs.as_deref()), (SourceId(2), Some(&later[..])));
    }

    #[test]
    fn runs_join_neighbours_and_stay_bounded() {
        let joined = [run(1, 0, 2), run(1, 0, 3), run(4, 30, 0), run(4, 30, 2)];
        let (_, runs) = Origins::Runs(&joined).compact();
        assert_eq!(runs.as_deref(), Some(&[run(1, 0, 5), run(4, 30, 2)][..]));
        let many: Vec<Run> = (0..200).map(|i| run((i % 2) as u8, i, 1)).collect();
        let (_, runs) = Origins::Runs(&many).compact();
        let runs = runs.unwrap();
        assert_eq!(runs.len(), MAX_RUNS);
        // Records past the kept runs read as unknown.
        let records = expand(SourceId(0), Some(&runs), 200);
        assert_eq!(records[MAX_RUNS - 1], (SourceId(1), 63));
        assert_eq!(records[MAX_RUNS], (SourceId::UNKNOWN, 0));
    }

    #[test]
    fn expand_and_runs_of_are_inverse() {
        let per_record = vec![
            (SourceId(0), 0),
            (SourceId(0), 0),
            (SourceId(1), 25),
            (SourceId(2), 60),
            (SourceId(2), 60),
        ];
        let runs = runs_of(&per_record);
        assert_eq!(runs, [run(0, 0, 2), run(1, 25, 1), run(2, 60, 2)]);
        assert_eq!(expand(SourceId(0), Some(&runs), 5), per_record);
        assert_eq!(
            expand(SourceId(7), None, 2),
            [(SourceId(7), 0), (SourceId(7), 0)]
        );
        // More records than runs cover: unknown; fewer: cut.
        assert_eq!(
            expand(SourceId(0), Some(&runs), 6)[5],
            (SourceId::UNKNOWN, 0)
        );
        assert_eq!(expand(SourceId(0), Some(&runs), 1), [(SourceId(0), 0)]);
    }
}
