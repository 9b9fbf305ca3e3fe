//! The fleet and the generator in-process on loopback: counts must match on both
//! sides, and each simulated behaviour (delay, SERVFAIL, loss, TCP) must show.

use loadtest::dns;
use loadtest::fleet::{self, Fleet, Outcome, State};
use loadtest::generator::{self, LoadConfig, StopHandle};
use loadtest::names::{self, NameSource, QtypeMix, Zipf};
use loadtest::responder;
use std::net::SocketAddr;
use std::time::Duration;

fn zipf_source(n: usize) -> NameSource {
    NameSource::Zipf {
        zipf: Zipf::new(n, 1.0).unwrap(),
        mix: QtypeMix::parse("A:50,AAAA:50").unwrap(),
        zone: "it.test".into(),
    }
}

fn config(server: SocketAddr, rate: u64, ms: u64) -> LoadConfig {
    let mut c = LoadConfig::new(server);
    c.rate = rate;
    c.duration = Duration::from_millis(ms);
    c.timeout = Duration::from_millis(300);
    c.sockets = 4;
    c.progress = false;
    c
}

#[test]
fn fleet_answers_as_specified_and_counts_agree() {
    let specs = fleet::parse_fleet("5ms,1ms/servfail=100%,1ms/loss=100%").unwrap();
    let fl = Fleet::start(specs, 7).unwrap();

    // upstream 0: 5 ms, all NOERROR; the fleet saw exactly what was sent
    let r = generator::run(
        &config(fl.addrs[0], 400, 500),
        &mut zipf_source(50),
        &StopHandle::default(),
    )
    .unwrap();
    assert!(r.sent >= 150 && r.sent <= 210, "sent {}", r.sent);
    assert_eq!(r.answered, r.sent);
    assert_eq!(r.lost, 0);
    assert_eq!(r.rcode("NOERROR"), r.sent);
    assert!(
        r.latency_ms.p50 >= 5.0 && r.latency_ms.p50 < 15.0,
        "{:?}",
        r.latency_ms
    );
    assert_eq!(fl.summary().queries[0], r.sent);

    // upstream 1: SERVFAIL every time
    let r = generator::run(
        &config(fl.addrs[1], 400, 300),
        &mut zipf_source(50),
        &StopHandle::default(),
    )
    .unwrap();
    assert!(r.sent > 0);
    assert_eq!(r.rcode("SERVFAIL"), r.sent);

    // upstream 2: loses everything; the generator times out each query
    let r = generator::run(
        &config(fl.addrs[2], 400, 300),
        &mut zipf_source(50),
        &StopHandle::default(),
    )
    .unwrap();
    assert!(r.sent > 0);
    assert_eq!(r.answered, 0);
    assert_eq!(r.lost, r.sent);

    // over TCP, pipelined on two connections
    let mut c = config(fl.addrs[0], 400, 300);
    c.tcp = true;
    c.sockets = 2;
    let r = generator::run(&c, &mut zipf_source(50), &StopHandle::default()).unwrap();
    assert!(r.sent > 0);
    assert_eq!(r.answered, r.sent, "{}", r.to_text());

    // the records: outcomes per upstream
    let recs = fl.records();
    assert!(recs.iter().any(|x| x.upstream == 0 && x.tcp));
    assert!(recs
        .iter()
        .filter(|x| x.upstream == 1)
        .all(|x| x.outcome == Outcome::ServFail));
    assert!(recs
        .iter()
        .filter(|x| x.upstream == 2)
        .all(|x| x.outcome == Outcome::Dropped));

    // an upstream switched down drops, switched up answers again
    fl.set_state(0, State::Down);
    let r = generator::run(
        &config(fl.addrs[0], 200, 200),
        &mut zipf_source(5),
        &StopHandle::default(),
    )
    .unwrap();
    assert_eq!(r.answered, 0);
    fl.set_state(0, State::Up);
    let r = generator::run(
        &config(fl.addrs[0], 200, 200),
        &mut zipf_source(5),
        &StopHandle::default(),
    )
    .unwrap();
    assert_eq!(r.answered, r.sent);
    fl.stop();
}

#[test]
fn each_upstream_serves_its_own_addresses() {
    let specs = fleet::parse_fleet("1ms,1ms/addrs=3").unwrap();
    let fl = Fleet::start(specs.clone(), 1).unwrap();
    let name = "www.merge.test.";
    let mut all = Vec::new();
    for (i, addr) in fl.addrs.iter().enumerate() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut q = Vec::new();
        dns::build_query(&mut q, 42, name, dns::TYPE_A, 1232).unwrap();
        sock.send_to(&q, addr).unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) = sock.recv_from(&mut buf).unwrap();
        let resp = dns::parse_response(&buf[..n]).unwrap();
        assert_eq!(resp.id, 42);
        assert_eq!(resp.addresses.len(), specs[i].addrs as usize);
        all.extend(resp.addresses);
    }
    all.sort();
    assert_eq!(
        all,
        fleet::union_for(&specs, name, dns::TYPE_A),
        "disjoint sets whose union is known"
    );
}

#[test]
fn closed_loop_against_the_responder_loses_nothing() {
    let resp = responder::Background::start(Duration::from_secs(20)).unwrap();
    let lines = names::parse_data_file("a.it.test A\nb.it.test AAAA\nc.it.test A\n").unwrap();
    let mut src = NameSource::from_lines(&lines).unwrap();
    let mut c = config(resp.addr, 0, 400);
    c.window = 64;
    let control = StopHandle::default();
    let r = generator::run(&c, &mut src, &control).unwrap();
    let answered_by_responder = resp.stop().unwrap();
    assert!(r.sent > 1000, "closed loop runs flat out: {}", r.sent);
    assert_eq!(r.lost, 0);
    assert_eq!(r.answered, r.sent);
    assert_eq!(answered_by_responder, r.sent);
    let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert!(v["qps"].as_f64().unwrap() > 1000.0);
}

#[test]
fn the_generator_refuses_non_loopback_targets() {
    let c = config("192.0.2.1:53".parse().unwrap(), 10, 100);
    let e = generator::run(&c, &mut zipf_source(5), &StopHandle::default()).unwrap_err();
    assert!(e.to_string().contains("loopback"));
}

#[test]
fn phases_split_the_counts_and_stop_ends_the_run_early() {
    let resp = responder::Background::start(Duration::from_secs(20)).unwrap();
    let mut c = config(resp.addr, 2000, 5000);
    c.timeout = Duration::from_millis(500);
    let control = StopHandle::default();
    let steer = {
        let control = control.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            control.set_phase(1);
            std::thread::sleep(Duration::from_millis(200));
            control.stop();
        })
    };
    let r = generator::run(&c, &mut zipf_source(100), &control).unwrap();
    steer.join().unwrap();
    resp.stop().unwrap();
    assert!(r.duration_s < 1.0, "stopped early: {}", r.duration_s);
    assert_eq!(r.phases.len(), 2);
    assert_eq!(r.phases.iter().map(|p| p.sent).sum::<u64>(), r.sent);
    assert_eq!(r.phases.iter().map(|p| p.answered).sum::<u64>(), r.answered);
    assert!(
        r.phases[0].sent > 200 && r.phases[1].sent > 200,
        "{:?}",
        r.phases
    );
    assert!(
        (r.phases[1].start_s - 0.2).abs() < 0.1,
        "{}",
        r.phases[1].start_s
    );
    let timeline_sent: u64 = r.timeline.iter().map(|b| b.sent).sum();
    assert_eq!(timeline_sent, r.sent);
}
