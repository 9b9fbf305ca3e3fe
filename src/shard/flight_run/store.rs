//! The flight's cache writes, with their provenance (`cache::provenance`): the
//! first answer as one upstream's, at the entry's creation; the merge record by
//! record, each with the upstream that gave it and its arrival after the first
//! answer (or, in a completion by demand, what the cached answer said of it).

use crate::cache::provenance::{runs_of, Run};
use crate::cache::{InsertOutcome, Key, Origins, PacketCache, SourceId};
use crate::flight::state::Came;
use crate::flight::Answer;
use crate::health::{PerUpstream, UpstreamIdx};
use crate::metrics::{ShardStats, TierStats};
use crate::tiers::Merged;
use std::time::Instant;

/// The cache's name for upstream `up` of `labels` (its label).
fn source(cache: &PacketCache, labels: &PerUpstream<String>, up: UpstreamIdx) -> SourceId {
    labels
        .get(up)
        .map_or(SourceId::UNKNOWN, |label| cache.source_id(label))
}

/// Caches a flight's first good answer under `key` and `version`, every record
/// of it from the upstream that gave it.
pub(super) fn store_first(
    cache: &PacketCache,
    labels: &PerUpstream<String>,
    key: &Key,
    version: u64,
    answer: &Answer,
) -> InsertOutcome {
    let source = source(cache, labels, answer.from);
    cache.insert_traced(
        &key.key_ref(),
        &answer.wire,
        Instant::now(),
        version,
        Origins::One(source),
    )
}

/// The runs of a merged answer whose records came from `came`, the entry
/// created at `first_at`.
fn runs(
    cache: &PacketCache,
    labels: &PerUpstream<String>,
    came: &[Came],
    first_at: Instant,
) -> Vec<Run> {
    let per_record: Vec<(SourceId, u32)> = came
        .iter()
        .map(|c| match *c {
            Came::Cached(source, ms) => (source, ms),
            Came::Upstream(up, at) => {
                let ms = at.saturating_duration_since(first_at).as_millis();
                (
                    source(cache, labels, up),
                    u32::try_from(ms).unwrap_or(u32::MAX),
                )
            }
        })
        .collect();
    runs_of(&per_record)
}

/// Writes a flight's merged answer, if it has one, under its version, each
/// record with where it came from.
pub(super) fn store_merged(
    cache: &PacketCache,
    tiers: &TierStats,
    labels: &PerUpstream<String>,
    key: &Key,
    version: u64,
    merged: Option<(Merged, Instant)>,
    came: &[Came],
) {
    let Some((merged, first_at)) = merged else {
        return;
    };
    let runs = runs(cache, labels, came, first_at);
    // Stored as of the first answer's arrival, so its TTLs age from then, not
    // from the end of the collection.
    let outcome = cache.insert_traced(
        &key.key_ref(),
        &merged.wire,
        first_at,
        version,
        Origins::Runs(&runs),
    );
    if outcome.stored() {
        ShardStats::bump(&tiers.merges);
        let added = tiers.merged_addresses.get() + merged.extra_addresses as u64;
        tiers.merged_addresses.set(added);
    } else {
        ShardStats::bump(&tiers.merge_rejected);
    }
}
