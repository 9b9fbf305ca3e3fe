//! The JSON bodies of `/cache` and `/upstreams`, built from copies taken under
//! the cache's partition lock or from the shards' published views: nothing here
//! holds a lock. Times are both relative (`*_ms`, `age_ms`) and wall-clock
//! (RFC 3339, UTC, milliseconds).

use super::request::{type_text, CacheQuery};
use crate::cache::{Inspected, KeyRef, PacketCache};
use crate::health::view::{merge, ShardView, UpstreamView};
use hickory_proto::op::Message;
use hickory_proto::rr::Record;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime};

/// `instant` on the wall clock, as RFC 3339 with milliseconds.
fn wall(instant: Instant, now: Instant, wall_now: SystemTime) -> String {
    let t = match now.checked_duration_since(instant) {
        Some(ago) => wall_now.checked_sub(ago),
        None => wall_now.checked_add(instant.saturating_duration_since(now)),
    };
    t.map_or_else(String::new, |t| {
        humantime::format_rfc3339_millis(t).to_string()
    })
}

/// An rcode's mnemonic (RFC 6895), or its number.
fn rcode_text(code: u16) -> String {
    use crate::wire::rcode;
    match code {
        rcode::NOERROR => "NOERROR".into(),
        rcode::FORMERR => "FORMERR".into(),
        rcode::SERVFAIL => "SERVFAIL".into(),
        rcode::NXDOMAIN => "NXDOMAIN".into(),
        rcode::NOTIMP => "NOTIMP".into(),
        rcode::REFUSED => "REFUSED".into(),
        n => format!("RCODE{n}"),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The body of `/cache`: every entry of the name and type (class IN), one per
/// DO and CD combination found.
pub(crate) fn cache(
    q: &CacheQuery,
    cache: &PacketCache,
    now: Instant,
    wall_now: SystemTime,
) -> Value {
    let mut entries = Vec::new();
    for (dnssec_ok, checking_disabled) in
        [(false, false), (true, false), (false, true), (true, true)]
    {
        let key = KeyRef {
            qname_lower: &q.wire,
            qtype: q.qtype,
            qclass: 1,
            dnssec_ok,
            checking_disabled,
        };
        if let Some(found) = cache.inspect(&key, now) {
            let mut e = entry(&found, now, wall_now);
            e["dnssec_ok"] = json!(dnssec_ok);
            e["checking_disabled"] = json!(checking_disabled);
            entries.push(e);
        }
    }
    json!({
        "name": q.name,
        "type": q.type_text,
        "class": "IN",
        "entries": entries,
    })
}

/// One entry: its state, TTL, version, and each record with its provenance.
pub(crate) fn entry(e: &Inspected, now: Instant, wall_now: SystemTime) -> Value {
    let age = now.saturating_duration_since(e.created);
    let message = Message::from_vec(&e.wire).ok();
    let rcode = message
        .as_ref()
        .map(|m| rcode_text(u16::from(m.metadata.response_code)));
    let sections: Vec<(&str, &Record)> = message
        .as_ref()
        .map(|m| {
            m.answers
                .iter()
                .map(|r| ("answer", r))
                .chain(m.authorities.iter().map(|r| ("authority", r)))
                .chain(m.additionals.iter().map(|r| ("additional", r)))
                .collect()
        })
        .unwrap_or_default();
    let age_secs = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
    let records: Vec<Value> = e
        .records
        .iter()
        .enumerate()
        .map(|(i, (upstream, after))| {
            let arrived = e.created + *after;
            let mut rec = json!({
                "upstream": upstream,
                "arrived": wall(arrived, now, wall_now),
                "arrived_after_ms": millis(*after),
            });
            if let Some((section, r)) = sections.get(i) {
                rec["section"] = json!(section);
                rec["name"] = json!(r.name.to_string());
                rec["type"] = json!(type_text(u16::from(r.record_type())));
                rec["ttl"] = json!(r.ttl.saturating_sub(age_secs));
                rec["data"] = json!(r.data.to_string());
            }
            rec
        })
        .collect();
    json!({
        "state": e.state.as_str(),
        "rcode": rcode,
        "ttl": e.ttl,
        "ttl_left": e.ttl_left,
        "created": wall(e.created, now, wall_now),
        "age_ms": millis(age),
        "version": e.version,
        "hits": e.hits,
        "incomplete": e.incomplete,
        "records": records,
    })
}

/// One upstream's row.
fn upstream(v: &UpstreamView, now: Instant) -> Value {
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    json!({
        "upstream": v.upstream,
        "address": v.address,
        "srtt_ms": ms(v.srtt),
        "score_ms": ms(v.score),
        "circuit": v.circuit.as_str(),
        "consecutive_failures": v.consecutive_failures,
        "in_flight": v.in_flight,
        "last_failure": v.last_failure.map(|(kind, at)| json!({
            "kind": kind.as_str(),
            "ago_ms": millis(now.saturating_duration_since(at)),
        })),
    })
}

/// The body of `/upstreams`: each shard's last published view, and the merge.
pub(crate) fn upstreams(shards: &[ShardView], every: Duration, now: Instant) -> Value {
    let per_shard: Vec<Value> = shards
        .iter()
        .map(|s| {
            json!({
                "shard": s.shard,
                "age_ms": millis(now.saturating_duration_since(s.taken)),
                "upstreams": s.upstreams.iter().map(|v| upstream(v, now)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let merged: Vec<Value> = merge(shards).iter().map(|v| upstream(v, now)).collect();
    json!({
        "published_every_ms": millis(every),
        "shards": per_shard,
        "merged": merged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::provenance::Run;
    use crate::cache::{CacheConfig, Origins};
    use crate::health::{CircuitState, FailKind};
    use crate::wire::answer::tests::{a, response};
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::RecordType;

    #[test]
    fn a_cache_entry_shows_each_record_with_its_upstream() {
        let c = PacketCache::new(CacheConfig {
            max_bytes: 1 << 20,
            partitions: 1,
            ..CacheConfig::default()
        });
        let answer = response(
            "www.example.",
            RecordType::A,
            ResponseCode::NoError,
            vec![a("www.example.", 60, 1), a("www.example.", 60, 2)],
            vec![],
            None,
        );
        let (ns1, ns2) = (c.source_id("ns1"), c.source_id("ns2"));
        let runs = [
            Run {
                after_ms: 0,
                records: 1,
                source: ns1,
            },
            Run {
                after_ms: 35,
                records: 1,
                source: ns2,
            },
        ];
        let t0 = Instant::now();
        let q = super::super::request::route("GET", "/cache", Some("name=WWW.example&type=a"));
        let Ok(super::super::request::Route::Cache(q)) = q else {
            panic!("{q:?}")
        };
        let key = KeyRef {
            qname_lower: &q.wire,
            qtype: 1,
            qclass: 1,
            dnssec_ok: false,
            checking_disabled: false,
        };
        c.insert_traced(&key, &answer, t0, 7, Origins::Runs(&runs));
        let wall_now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let body = cache(&q, &c, t0 + Duration::from_secs(10), wall_now);
        assert_eq!(body["name"], "www.example.");
        assert_eq!(body["type"], "A");
        let e = &body["entries"][0];
        assert_eq!(e["state"], "fresh");
        assert_eq!(
            (e["ttl"].as_u64(), e["ttl_left"].as_u64()),
            (Some(60), Some(50))
        );
        assert_eq!(e["version"], 7);
        assert_eq!(e["rcode"], "NOERROR");
        assert_eq!(e["dnssec_ok"], false);
        assert_eq!(e["created"], "2023-11-14T22:13:10.000Z");
        let recs = e["records"].as_array().unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0]["upstream"], "ns1");
        assert_eq!(recs[0]["data"], "192.0.2.1");
        assert_eq!(recs[0]["ttl"], 50);
        assert_eq!(recs[0]["section"], "answer");
        assert_eq!(recs[1]["upstream"], "ns2");
        assert_eq!(recs[1]["arrived_after_ms"], 35);
        assert_eq!(recs[1]["arrived"], "2023-11-14T22:13:10.035Z");
        let none = super::super::request::route("GET", "/cache", Some("name=other.example"));
        let Ok(super::super::request::Route::Cache(none)) = none else {
            panic!()
        };
        assert_eq!(cache(&none, &c, t0, wall_now)["entries"], json!([]));
    }

    #[test]
    fn upstreams_lists_each_shard_and_the_merge() {
        let now = Instant::now();
        let row = |srtt: u64, in_flight, circuit| UpstreamView {
            upstream: "nsd".into(),
            address: "127.0.0.1:53".into(),
            srtt: Some(Duration::from_millis(srtt)),
            score: Some(Duration::from_millis(srtt)),
            circuit,
            consecutive_failures: 0,
            in_flight,
            last_failure: Some((FailKind::Timeout, now)),
        };
        let shards = [
            ShardView {
                shard: 0,
                taken: now,
                upstreams: vec![row(10, 1, CircuitState::Closed)],
            },
            ShardView {
                shard: 1,
                taken: now,
                upstreams: vec![row(30, 2, CircuitState::Degraded)],
            },
        ];
        let body = upstreams(
            &shards,
            Duration::from_secs(1),
            now + Duration::from_millis(250),
        );
        assert_eq!(body["published_every_ms"], 1000);
        assert_eq!(body["shards"].as_array().unwrap().len(), 2);
        assert_eq!(body["shards"][1]["age_ms"], 250);
        let s0 = &body["shards"][0]["upstreams"][0];
        assert_eq!(s0["upstream"], "nsd");
        assert_eq!(s0["srtt_ms"], 10.0);
        assert_eq!(s0["circuit"], "closed");
        assert_eq!(s0["last_failure"]["kind"], "timeout");
        assert_eq!(s0["last_failure"]["ago_ms"], 250);
        let m = &body["merged"][0];
        assert_eq!(
            (m["srtt_ms"].as_f64(), m["in_flight"].as_u64()),
            (Some(20.0), Some(3))
        );
        assert_eq!(m["circuit"], "degraded");
    }
}
