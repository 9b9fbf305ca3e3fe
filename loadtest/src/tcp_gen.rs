//! The generator over TCP (`--tcp`): `sockets` connections, queries pipelined on
//! each (RFC 7766 two-byte length framing), one thread polling them all. Same
//! pacing, window, timeout and report as UDP; latency is taken when the answer is
//! read (the poll wakes on it, no sleep-batching here). A connection the server
//! closes is reopened; its queries in flight are lost.

use crate::dns;
use crate::load::{LoadConfig, Progress, StopHandle, Tally};
use crate::mmsg;
use crate::names::NameSource;
use crate::report::LoadReport;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

struct Conn {
    stream: TcpStream,
    out: Vec<u8>,
    inbuf: Vec<u8>,
    slots: Vec<u64>,
    next_id: u16,
    /// Bumped on reconnect so old FIFO entries are recognised.
    epoch: u32,
}

impl Conn {
    fn open(cfg: &LoadConfig) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&cfg.server, Duration::from_secs(2))?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream,
            out: Vec::with_capacity(64 << 10),
            inbuf: Vec::with_capacity(64 << 10),
            slots: vec![0; 65536],
            next_id: 0,
            epoch: 0,
        })
    }

    fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

/// Runs the TCP generator (see the module doc).
pub(crate) fn run(
    cfg: &LoadConfig,
    source: &mut NameSource,
    stop: &StopHandle,
) -> io::Result<LoadReport> {
    let mut conns: Vec<Conn> = (0..cfg.sockets.max(1))
        .map(|_| Conn::open(cfg))
        .collect::<io::Result<_>>()?;
    let mut ready = vec![false; conns.len()];
    let mut rng = SmallRng::seed_from_u64(cfg.seed);
    let mut query = Vec::with_capacity(512);
    let mut scratch = String::new();
    let mut fifo: VecDeque<(u16, u32, u16, u64)> = VecDeque::new();
    let mut in_flight = 0usize;
    let timeout_ns = cfg.timeout.as_nanos() as u64;
    let window = cfg.window.max(1);
    let mut progress = Progress::new(cfg.progress, cfg.duration);
    let cpu0 = mmsg::process_cpu();
    let mut t = Tally::new();
    let start = t.start;
    let end = start + cfg.duration;
    let mut sending = true;
    let mut send_end = end;
    let mut next = 0usize;
    let mut buf = vec![0u8; 64 << 10];

    loop {
        let now = Instant::now();
        if sending && (now >= end || stop.stopped()) {
            sending = false;
            send_end = now.min(end);
        }
        let drain_end = send_end + cfg.timeout;
        if !sending && (in_flight == 0 || now >= drain_end) {
            break;
        }
        if sending {
            let room = window.saturating_sub(in_flight);
            let mut due = if cfg.rate == 0 {
                room.min(1024)
            } else {
                let target = (cfg.rate as f64 * now.duration_since(start).as_secs_f64()) as u64;
                (target.saturating_sub(t.sent) as usize).min(room)
            };
            let sent_ns = mmsg::realtime_ns();
            while due > 0 {
                let c = next;
                next = (next + 1) % conns.len();
                let conn = &mut conns[c];
                let id = conn.next_id;
                conn.next_id = conn.next_id.wrapping_add(1);
                if conn.slots[id as usize] != 0 {
                    break;
                }
                source.next_query(&mut rng, id, &mut query, &mut scratch);
                conn.out
                    .extend_from_slice(&(query.len() as u16).to_be_bytes());
                conn.out.extend_from_slice(&query);
                conn.slots[id as usize] = sent_ns;
                fifo.push_back((c as u16, conn.epoch, id, sent_ns));
                in_flight += 1;
                t.on_sent(sent_ns, 1);
                due -= 1;
            }
        }
        for conn in &mut conns {
            if conn.out.is_empty() {
                continue;
            }
            match conn.stream.write(&conn.out) {
                Ok(n) => {
                    conn.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    // broken connection: the read side sees it and reconnects
                    t.send_errors += 1;
                    conn.out.clear();
                    let _ = conn.stream.shutdown(std::net::Shutdown::Both);
                }
            }
        }
        let limit = if sending { end } else { drain_end };
        let mut wait = limit
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(10));
        if sending && cfg.rate > 0 {
            let next_due = Duration::from_secs_f64((t.sent + 1) as f64 / cfg.rate as f64)
                .saturating_sub(start.elapsed());
            wait = wait.min(next_due);
        } else if sending && window > in_flight {
            wait = Duration::ZERO;
        }
        let fds: Vec<RawFd> = conns.iter().map(Conn::fd).collect();
        mmsg::poll_readable(&fds, &mut ready, wait)?;
        let now_ns = mmsg::realtime_ns();
        for (c, conn) in conns.iter_mut().enumerate() {
            if !ready[c] {
                continue;
            }
            let closed = loop {
                match conn.stream.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(n) => conn.inbuf.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                    Err(_) => break true,
                }
            };
            let mut pos = 0;
            while conn.inbuf.len() >= pos + 2 {
                let len = u16::from_be_bytes([conn.inbuf[pos], conn.inbuf[pos + 1]]) as usize;
                if conn.inbuf.len() < pos + 2 + len {
                    break;
                }
                let msg = &conn.inbuf[pos + 2..pos + 2 + len];
                pos += 2 + len;
                match dns::message_id(msg) {
                    Some(id) if conn.slots[id as usize] != 0 => {
                        let sent_ns = std::mem::take(&mut conn.slots[id as usize]);
                        in_flight -= 1;
                        t.on_answer(msg, sent_ns, now_ns);
                    }
                    _ => t.unmatched += 1,
                }
            }
            conn.inbuf.drain(..pos);
            if closed {
                // the server closed: what was in flight on it is lost; reconnect
                for s in conn.slots.iter_mut().filter(|s| **s != 0) {
                    t.on_lost(*s);
                    *s = 0;
                    in_flight -= 1;
                }
                conn.epoch += 1;
                conn.out.clear();
                conn.inbuf.clear();
                if sending {
                    if let Ok(fresh) = Conn::open(cfg) {
                        let epoch = conn.epoch;
                        *conn = fresh;
                        conn.epoch = epoch;
                    }
                }
            }
        }
        let hard_stop = !sending && Instant::now() >= send_end + cfg.timeout;
        while let Some(&(c, epoch, id, sent_ns)) = fifo.front() {
            let conn = &mut conns[c as usize];
            if conn.epoch != epoch || conn.slots[id as usize] != sent_ns {
                fifo.pop_front();
                continue;
            }
            if now_ns < sent_ns + timeout_ns && !hard_stop {
                break;
            }
            conn.slots[id as usize] = 0;
            in_flight -= 1;
            t.on_lost(sent_ns);
            fifo.pop_front();
        }
        t.follow_phase(stop);
        progress.update(&t, Instant::now());
    }
    for (c, epoch, id, sent_ns) in fifo {
        let conn = &mut conns[c as usize];
        if conn.epoch == epoch && conn.slots[id as usize] == sent_ns {
            conn.slots[id as usize] = 0;
            t.on_lost(sent_ns);
        }
    }
    progress.finish();
    let cpu = mmsg::process_cpu().saturating_sub(cpu0);
    let n = conns.len();
    Ok(t.finish(cfg, send_end.duration_since(start), cpu, n))
}
