//! The load generator: one thread, many UDP source ports, batched sends and
//! receives, open loop (a fixed rate) or closed loop (a fixed window, flat out).
//!
//! Per iteration: send what is due (open loop: `rate x elapsed` minus what was
//! sent; closed loop: whatever the window has room for) in batches of up to
//! [`BATCH`], one `sendmmsg` per socket in turn; then wait
//! (open loop: sleep until the next query is due, at least `tick`, so answers
//! pile up and are taken in batches; closed loop: `ppoll` until an answer comes);
//! then drain every readable socket with `recvmmsg`, and expire queries older than
//! the timeout. Answers carry the kernel's receive timestamp, so latency is exact
//! however late the batch is read.
//!
//! In-flight queries: a slot per (socket, ID) holding the send time, and a FIFO of
//! sends in order; with one timeout for all, the FIFO's front is always the next to
//! expire, so expiry is O(1) per query. Every run ends by itself: sending stops at
//! `duration`, then answers are awaited at most `timeout`.

pub use crate::load::{LoadConfig, StopHandle};

use crate::dns;
use crate::load::{Progress, Tally};
use crate::mmsg::{self, RecvBatch, SendBatch, BATCH};
use crate::names::NameSource;
use crate::report::LoadReport;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// One UDP source port: its socket and its in-flight slots (send time, 0 = free).
struct Port {
    /// Owns the descriptor `fd` refers to.
    _sock: Socket,
    fd: RawFd,
    slots: Vec<u64>,
    next_id: u16,
}

impl Port {
    fn open(server: SocketAddr) -> io::Result<Self> {
        let sock = Socket::new(
            Domain::for_address(server),
            Type::DGRAM,
            Some(Protocol::UDP),
        )?;
        let _ = sock.set_recv_buffer_size(4 << 20);
        let _ = sock.set_send_buffer_size(4 << 20);
        let any: SocketAddr = if server.is_ipv4() {
            ([127, 0, 0, 1], 0).into()
        } else {
            (std::net::Ipv6Addr::LOCALHOST, 0).into()
        };
        sock.bind(&any.into())?;
        sock.connect(&server.into())?;
        sock.set_nonblocking(true)?;
        mmsg::enable_rx_timestamps(&sock)?;
        let fd = sock.as_raw_fd();
        Ok(Self {
            _sock: sock,
            fd,
            slots: vec![0; 65536],
            next_id: 0,
        })
    }

    /// A free ID, if one is found in a few tries.
    fn take_id(&mut self) -> Option<u16> {
        for _ in 0..64 {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if self.slots[id as usize] == 0 {
                return Some(id);
            }
        }
        None
    }
}

/// Refuses anything but loopback: this harness never sends elsewhere.
pub fn check_loopback(addr: SocketAddr) -> io::Result<()> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr}: the load generator only sends to loopback addresses"),
        ))
    }
}

/// Runs the generator until `duration` (or `stop`), then waits at most `timeout`
/// for the answers still due.
pub fn run(cfg: &LoadConfig, source: &mut NameSource, stop: &StopHandle) -> io::Result<LoadReport> {
    check_loopback(cfg.server)?;
    if cfg.tcp {
        return crate::tcp_gen::run(cfg, source, stop);
    }
    let mut ports: Vec<Port> = (0..cfg.sockets.max(1))
        .map(|_| Port::open(cfg.server))
        .collect::<io::Result<_>>()?;
    let fds: Vec<RawFd> = ports.iter().map(|p| p.fd).collect();
    let mut ready = vec![false; ports.len()];
    let mut rng = SmallRng::seed_from_u64(cfg.seed);
    let mut rx = RecvBatch::new();
    let mut tx = SendBatch::new();
    let mut scratch = String::new();
    // (port, id, send time) in send order
    let mut fifo: VecDeque<(u16, u16, u64)> = VecDeque::with_capacity(cfg.window.min(1 << 20));
    let mut in_flight = 0usize;
    let timeout_ns = cfg.timeout.as_nanos() as u64;
    let window = cfg.window.max(1);
    let mut progress = Progress::new(cfg.progress, cfg.duration);

    let cpu0 = mmsg::process_cpu();
    let mut t = Tally::new();
    let start = t.start;
    let end = start + cfg.duration;
    let mut next_port = 0usize;
    let mut sending = true;
    let mut send_end = end;
    let drain_end = |send_end: Instant| send_end + cfg.timeout;

    loop {
        let now = Instant::now();
        if sending && (now >= end || stop.stopped()) {
            sending = false;
            send_end = now.min(end);
        }
        if !sending && (in_flight == 0 || now >= drain_end(send_end)) {
            break;
        }

        // 1. send what is due
        if sending {
            let room = window.saturating_sub(in_flight);
            let mut due = if cfg.rate == 0 {
                room
            } else {
                let target = (cfg.rate as f64 * now.duration_since(start).as_secs_f64()) as u64;
                (target.saturating_sub(t.sent) as usize).min(room)
            };
            while due > 0 {
                let p = next_port;
                next_port = (next_port + 1) % ports.len();
                let port = &mut ports[p];
                let n = due.min(BATCH);
                let mut ids = [0u16; BATCH];
                let mut k = 0;
                while k < n {
                    let Some(id) = port.take_id() else { break };
                    source.next_query(&mut rng, id, tx.next_buffer(), &mut scratch);
                    tx.commit(None);
                    ids[k] = id;
                    k += 1;
                }
                if k == 0 {
                    break;
                }
                let sent_ns = mmsg::realtime_ns();
                let ok = match tx.flush(port.fd) {
                    Ok(ok) => ok,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => 0,
                    Err(e) => return Err(e),
                };
                t.on_sent(sent_ns, k as u64);
                t.send_errors += (k - ok) as u64;
                for (j, &id) in ids[..k].iter().enumerate() {
                    if j < ok {
                        port.slots[id as usize] = sent_ns;
                        fifo.push_back((p as u16, id, sent_ns));
                        in_flight += 1;
                    } else {
                        t.on_lost(sent_ns);
                    }
                }
                due -= k;
            }
        }

        // 2. wait
        let now = Instant::now();
        let limit = if sending { end } else { drain_end(send_end) };
        let mut wait = limit
            .saturating_duration_since(now)
            .min(Duration::from_millis(10));
        if let Some(&(_, _, oldest)) = fifo.front() {
            let expires =
                Duration::from_nanos((oldest + timeout_ns).saturating_sub(mmsg::realtime_ns()));
            wait = wait.min(expires);
        }
        let polled = if sending && cfg.rate > 0 {
            let next_due = Duration::from_secs_f64((t.sent + 1) as f64 / cfg.rate as f64)
                .saturating_sub(now.duration_since(start));
            let sleep = next_due.max(cfg.tick).min(wait);
            if !sleep.is_zero() {
                std::thread::sleep(sleep);
            }
            mmsg::poll_readable(&fds, &mut ready, Duration::ZERO)?
        } else if sending && (window > in_flight || cfg.spin) {
            mmsg::poll_readable(&fds, &mut ready, Duration::ZERO)?
        } else {
            mmsg::poll_readable(&fds, &mut ready, wait)?
        };

        // 3. receive
        if polled > 0 {
            for (p, port) in ports.iter_mut().enumerate() {
                if !ready[p] {
                    continue;
                }
                for _ in 0..16 {
                    let n = rx.recv(port.fd)?;
                    let fallback_ns = mmsg::realtime_ns();
                    for i in 0..n {
                        let msg = rx.datagram(i);
                        let Some(id) = dns::message_id(msg) else {
                            t.unmatched += 1;
                            continue;
                        };
                        let slot = &mut port.slots[id as usize];
                        if *slot == 0 || msg.len() < dns::HEADER_LEN || msg[2] & 0x80 == 0 {
                            t.unmatched += 1;
                            continue;
                        }
                        let sent_ns = std::mem::take(slot);
                        in_flight -= 1;
                        let rx_ns = rx.timestamp(i).unwrap_or(fallback_ns);
                        t.on_answer(msg, sent_ns, rx_ns);
                    }
                    if n < BATCH {
                        break;
                    }
                }
            }
        }

        // 4. expire
        let now_ns = mmsg::realtime_ns();
        let hard_stop = !sending && Instant::now() >= drain_end(send_end);
        while let Some(&(p, id, sent_ns)) = fifo.front() {
            let slot = &mut ports[p as usize].slots[id as usize];
            if *slot != sent_ns {
                fifo.pop_front(); // answered (or slot reused after an answer)
                continue;
            }
            if now_ns < sent_ns + timeout_ns && !hard_stop {
                break;
            }
            *slot = 0;
            in_flight -= 1;
            t.on_lost(sent_ns);
            fifo.pop_front();
        }
        t.follow_phase(stop);
        progress.update(&t, Instant::now());
    }
    // whatever is still in flight at the hard stop is lost
    for (p, id, sent_ns) in fifo {
        let slot = &mut ports[p as usize].slots[id as usize];
        if *slot == sent_ns {
            *slot = 0;
            t.on_lost(sent_ns);
        }
    }
    progress.finish();
    let cpu = mmsg::process_cpu().saturating_sub(cpu0);
    let n = ports.len();
    drop(ports);
    Ok(t.finish(cfg, send_end.duration_since(start), cpu, n))
}
