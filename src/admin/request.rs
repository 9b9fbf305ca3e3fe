//! What a request to the admin listener asks for: its route, and for `/cache`
//! the name and type, read from the query string. Pure: no I/O, no panic on any
//! input; a bad parameter is a message for the 400.

use crate::wire::rtype;
use hickory_proto::rr::{Name, RecordType};
use std::str::FromStr;

/// A route of the admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/metrics`: Prometheus text.
    Metrics,
    /// `/health`: "OK" (as the exporter it replaces answered).
    Health,
    /// `/cache?name=NAME&type=TYPE`.
    Cache(CacheQuery),
    /// `/upstreams`.
    Upstreams,
}

/// Why a request gets no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 404: no such path.
    NotFound,
    /// 405: not a GET (or HEAD).
    Method,
    /// 400, with what is wrong.
    Bad(String),
}

/// The entries `/cache` looks up: one name and type, class IN, every DO and CD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CacheQuery {
    /// The name as text (lowercase, with its final dot).
    pub(crate) name: String,
    /// The name in wire form, lowercase: the cache key's.
    pub(crate) wire: Vec<u8>,
    /// The type's number.
    pub(crate) qtype: u16,
    /// The type as text.
    pub(crate) type_text: String,
}

/// The route for `method`, `path` and `query` (the URI's query string).
pub(crate) fn route(method: &str, path: &str, query: Option<&str>) -> Result<Route, Refusal> {
    let route = match path {
        "/metrics" => Route::Metrics,
        "/health" => Route::Health,
        "/upstreams" => Route::Upstreams,
        "/cache" => Route::Cache(CacheQuery::parse(query.unwrap_or(""))?),
        _ => return Err(Refusal::NotFound),
    };
    if method != "GET" && method != "HEAD" {
        return Err(Refusal::Method);
    }
    Ok(route)
}

impl CacheQuery {
    /// Reads `name=` and `type=` (percent-encoded) from a query string.
    fn parse(query: &str) -> Result<Self, Refusal> {
        let bad = Refusal::Bad;
        let (mut name, mut qtype) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).ok_or_else(|| bad(format!("{k}: bad percent-encoding")))?;
            match k {
                "name" => name = Some(v),
                "type" => qtype = Some(v),
                _ => return Err(bad(format!("unknown parameter {k:?} (name, type)"))),
            }
        }
        let name = name.ok_or_else(|| bad("name= is missing".into()))?;
        let (wire, text) =
            wire_name(&name).ok_or_else(|| bad(format!("name {name:?} is not a domain name")))?;
        let qtype_text = qtype.unwrap_or_else(|| "A".into());
        let qtype = type_number(&qtype_text)
            .ok_or_else(|| bad(format!("type {qtype_text:?} is not a record type")))?;
        Ok(Self {
            name: text,
            wire,
            qtype,
            type_text: type_text(qtype),
        })
    }
}

/// `%XX` decoded (and `+` as a space); None for a bad escape or non-UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A text name in lowercase wire form, and as text with its final dot; None if
/// it is not a name (a label over 63 bytes, over 255 in all, empty labels).
fn wire_name(text: &str) -> Option<(Vec<u8>, String)> {
    let name = Name::from_ascii(text).ok()?;
    let mut wire = Vec::with_capacity(text.len() + 2);
    for label in name.iter() {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|&n| n > 0 && n <= 63)?;
        wire.push(len);
        wire.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    wire.push(0);
    if wire.len() > 255 {
        return None;
    }
    let mut fqdn = name.to_lowercase();
    fqdn.set_fqdn(true);
    Some((wire, fqdn.to_string()))
}

/// A type by name (`AAAA`, any case), `TYPEnnn` (RFC 3597) or number.
fn type_number(text: &str) -> Option<u16> {
    let upper = text.trim().to_ascii_uppercase();
    if let Ok(n) = upper.parse::<u16>() {
        return Some(n);
    }
    if let Some(n) = upper.strip_prefix("TYPE") {
        return n.parse().ok();
    }
    let t = RecordType::from_str(&upper).ok()?;
    let n = u16::from(t);
    (n != rtype::OPT).then_some(n)
}

/// A type's mnemonic, or `TYPEnnn`.
pub(crate) fn type_text(qtype: u16) -> String {
    match RecordType::from(qtype) {
        RecordType::Unknown(n) => format!("TYPE{n}"),
        t => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(query: &str) -> Result<CacheQuery, Refusal> {
        match route("GET", "/cache", Some(query))? {
            Route::Cache(q) => Ok(q),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn routes_and_refusals() {
        assert_eq!(route("GET", "/metrics", None), Ok(Route::Metrics));
        assert_eq!(
            route("GET", "/upstreams", Some("x=1")),
            Ok(Route::Upstreams)
        );
        assert_eq!(route("GET", "/", None), Err(Refusal::NotFound));
        assert_eq!(route("GET", "/cachex", None), Err(Refusal::NotFound));
        assert_eq!(route("POST", "/metrics", None), Err(Refusal::Method));
        assert_eq!(route("DELETE", "/upstreams", None), Err(Refusal::Method));
        assert_eq!(route("HEAD", "/health", None), Ok(Route::Health));
    }

    #[test]
    fn a_cache_query_reads_name_and_type() {
        let q = cache("name=WWW.Example.COM&type=aaaa").unwrap();
        assert_eq!(q.name, "www.example.com.");
        assert_eq!(q.wire, b"\x03www\x07example\x03com\x00");
        assert_eq!((q.qtype, q.type_text.as_str()), (28, "AAAA"));
        let q = cache("name=www.example.com.").unwrap();
        assert_eq!(
            (q.qtype, q.name.as_str()),
            (1, "www.example.com."),
            "A by default"
        );
        assert_eq!(cache("name=a%2Eb&type=TYPE65").unwrap().qtype, 65);
        assert_eq!(cache("name=.&type=16").unwrap().wire, b"\x00");
    }

    #[test]
    fn a_bad_cache_query_says_what_is_wrong() {
        let why = |q: &str| match cache(q) {
            Err(Refusal::Bad(why)) => why,
            other => panic!("{q}: {other:?}"),
        };
        assert!(why("type=A").contains("name= is missing"));
        assert!(why("name=x&type=NOPE").contains("not a record type"));
        assert!(why("name=x&type=OPT").contains("not a record type"));
        assert!(why("name=a..b").contains("not a domain name"));
        let long = "a".repeat(64);
        assert!(why(&format!("name={long}.example")).contains("not a domain name"));
        let many = vec!["abcdefghi"; 30].join(".");
        assert!(why(&format!("name={many}")).contains("not a domain name"));
        assert!(why("name=%zz").contains("percent"));
        assert!(why("name=%ff").contains("percent"), "not UTF-8");
        assert!(why("name=x&class=CH").contains("unknown parameter"));
    }
}
