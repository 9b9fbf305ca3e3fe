//! The admin endpoints on the metrics listener, end to end: two simulated
//! upstreams with their own addresses behind a real server on loopback, its
//! listener answering `[metrics] allow` only.

mod common;

use common::*;
use hickory_proto::rr::RecordType;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tierdns::admin::AdminListener;

/// `GET path` from `source`: the status and the body.
fn get(source: Ipv4Addr, admin: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::from((source, 0)).into())?;
    sock.connect_timeout(&admin.into(), Duration::from_secs(2))?;
    let mut stream = std::net::TcpStream::from(sock);
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: tierdns\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn a_merged_answer_shows_each_address_with_the_upstream_that_gave_it() {
    // up0 answers first (20 ms) with 10.0.0.1; up1 (60 ms) adds 10.0.1.1.
    let ups: Vec<SimUpstream> = (0..2u8)
        .map(|i| {
            SimUpstream::start(Behavior {
                delay: Duration::from_millis(20 + 40 * u64::from(i)),
                addrs: vec![Ipv4Addr::new(10, 0, i, 1)],
                ..Behavior::default()
            })
        })
        .collect();
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let server = start(config(&addrs, "epoll", ""));
    let listener = AdminListener::bind("127.0.0.1:0".parse().unwrap(), &["127.0.0.1/32".into()])
        .expect("the admin listener binds");
    let admin = listener.local_addr().unwrap();
    listener
        .serve(Arc::clone(&server.shared), None)
        .expect("serves");
    let me = Ipv4Addr::LOCALHOST;

    let first = udp_query(
        server.local_addrs[0],
        &query(1, "prov.example.", RecordType::A, Some(1232)),
    );
    assert_eq!(a_records(&first), [Ipv4Addr::new(10, 0, 0, 1)]);

    // Once the merge is in, /cache names each address's upstream.
    let entry = eventually(Duration::from_secs(5), "the merged entry in /cache", || {
        let (status, body) =
            get(me, admin, "/cache?name=Prov.Example&type=A").map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("{status}: {body}"));
        }
        let v = json(&body);
        let e = v["entries"][0].clone();
        match e["records"].as_array() {
            Some(r) if r.len() == 2 => Ok((v, e)),
            _ => Err(body),
        }
    });
    let (v, e) = entry;
    assert_eq!(
        (v["name"].as_str(), v["type"].as_str()),
        (Some("prov.example."), Some("A"))
    );
    assert_eq!(e["state"], "fresh");
    assert_eq!(e["rcode"], "NOERROR");
    assert!(e["version"].as_u64().is_some_and(|v| v > 0), "{e}");
    assert!(
        e["ttl_left"].as_u64().is_some_and(|t| t > 0 && t <= 300),
        "{e}"
    );
    let records = e["records"].as_array().unwrap();
    let by: Vec<(&str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["data"].as_str().unwrap_or("?"),
                r["upstream"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(by, [("10.0.0.1", "up0"), ("10.0.1.1", "up1")], "{e}");
    assert_eq!(
        records[0]["arrived_after_ms"], 0,
        "the first answer made the entry"
    );
    assert!(
        records[1]["arrived_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0),
        "the merged address came later: {e}"
    );

    // /upstreams: both upstreams on each of the two shards, and merged.
    let (status, body) = eventually(Duration::from_secs(5), "every shard's view", || {
        let (status, body) = get(me, admin, "/upstreams").map_err(|e| e.to_string())?;
        let shards = json(&body)["shards"].as_array().map_or(0, Vec::len);
        if shards == 2 {
            Ok((status, body))
        } else {
            Err(body)
        }
    });
    assert_eq!(status, 200);
    let v = json(&body);
    for shard in v["shards"].as_array().unwrap() {
        let names: Vec<&str> = shard["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|u| u["upstream"].as_str())
            .collect();
        assert_eq!(names, ["up0", "up1"], "{shard}");
        assert!(shard["upstreams"][0]["circuit"].is_string(), "{shard}");
    }
    let merged = v["merged"].as_array().unwrap();
    assert_eq!(merged.len(), 2, "{v}");
    assert_eq!(merged[0]["address"], addrs[0].to_string());
    // The shard that ran the flight has RTT samples of both, published at its
    // next flush.
    eventually(
        Duration::from_secs(5),
        "the RTTs in the merged view",
        || {
            let (_, body) = get(me, admin, "/upstreams").map_err(|e| e.to_string())?;
            let v = json(&body);
            let all = v["merged"].as_array().is_some_and(|m| {
                m.iter()
                    .all(|u| u["srtt_ms"].as_f64().is_some_and(|s| s > 0.0))
            });
            if all {
                Ok(())
            } else {
                Err(body)
            }
        },
    );

    // Errors: a bad type is 400 with the reason, an unknown path 404.
    let (status, body) = get(me, admin, "/cache?name=prov.example&type=BOGUS").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not a record type"), "{body}");
    assert_eq!(get(me, admin, "/other").unwrap().0, 404);
    // Outside [metrics] allow: 403, and nothing of the cache.
    let (status, body) = get(
        Ipv4Addr::new(127, 0, 0, 2),
        admin,
        "/cache?name=prov.example",
    )
    .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains("10.0."), "{body}");
    server.shutdown();
}
