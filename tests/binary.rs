//! The tierdns binary: CLI, the io_uring -> epoll fallback under a seccomp filter
//! that refuses io_uring_setup (as container runtimes do), and graceful shutdown.
#![allow(unsafe_code)]

mod common;

use common::*;
use hickory_proto::rr::RecordType;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tierdns");

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tierdns-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tierdns.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn loopback_config(upstream: SocketAddr, io: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nshards = 1\nio = \"{io}\"\npin_cpus = false\nshutdown_grace = \"3s\"\n\
         [metrics]\nenabled = false\n[[upstream]]\naddress = \"{upstream}\"\n"
    )
}

/// Makes io_uring_setup fail with EPERM in the child, like Docker's default profile.
fn deny_io_uring(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only makes two
    // async-signal-safe prctl calls on data that lives on its own stack.
    unsafe {
        cmd.pre_exec(|| {
            const NR_IO_URING_SETUP: u32 = 425;
            let filter = [
                // A = syscall number
                libc::sock_filter {
                    code: 0x20,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                // if A == io_uring_setup fall through, else skip one
                libc::sock_filter {
                    code: 0x15,
                    jt: 0,
                    jf: 1,
                    k: NR_IO_URING_SETUP,
                },
                // return ERRNO(EPERM)
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: 0x0005_0000 | libc::EPERM as u32,
                },
                // return ALLOW
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: 0x7fff_0000,
                },
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const _,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A running binary whose stderr lines arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line containing `needle`.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
        }
        panic!(
            "no log line with {needle:?}; saw:\n{}",
            self.seen.join("\n")
        );
    }

    fn listen_addr(line: &str) -> SocketAddr {
        let start = line.find("listen=[").expect("listen in startup line") + "listen=[".len();
        let end = line[start..].find(']').unwrap() + start;
        line[start..end]
            .split(',')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn sigterm(&self) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        self.sigterm();
        self.wait_exit()
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        eventually(Duration::from_secs(10), "exit after SIGTERM", || {
            self.child.try_wait().unwrap().ok_or("running")
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn auto_falls_back_to_epoll_when_io_uring_setup_is_refused() {
    let up = SimUpstream::start(Behavior::default());
    let path = write_config("fallback", &loopback_config(up.addr, "auto"));
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&path);
    deny_io_uring(&mut cmd);
    let mut run = Running::spawn(cmd);
    let line = run.wait_for("running");
    assert!(line.contains("io backend epoll"), "{line}");
    assert!(
        line.contains("io_uring_setup failed"),
        "the reason is logged: {line}"
    );
    let addr = Running::listen_addr(&line);
    let r = udp_query(addr, &query(1, "fallback.example.", RecordType::A, None));
    assert_eq!(a_records(&r), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    assert!(run.terminate().success());
}

#[test]
fn uring_required_but_refused_is_a_clear_startup_error() {
    let up = SimUpstream::start(Behavior::default());
    let path = write_config("uring-refused", &loopback_config(up.addr, "uring"));
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&path);
    deny_io_uring(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("io_uring is unavailable"), "{err}");
}

#[test]
fn auto_uses_io_uring_when_available_and_sigterm_lets_in_flight_queries_finish() {
    let up = SimUpstream::start(Behavior {
        delay: Duration::from_millis(700),
        ..Behavior::default()
    });
    let path = write_config("sigterm", &loopback_config(up.addr, "auto"));
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&path);
    let mut run = Running::spawn(cmd);
    let line = run.wait_for("running");
    if !line.contains("io backend uring") {
        eprintln!("io_uring unavailable on this kernel, only the shutdown part ran: {line}");
    }
    let addr = Running::listen_addr(&line);
    // A slow query is in flight when SIGTERM arrives: it still gets its answer.
    let client = std::thread::spawn(move || {
        udp_query(addr, &query(5, "slow.example.", RecordType::A, None))
    });
    eventually(
        Duration::from_secs(5),
        "the slow query reaches the upstream",
        || (up.queries() == 1).then_some(()).ok_or(up.queries()),
    );
    run.sigterm();
    run.wait_for("shutting down");
    // While the slow query finishes, the listening sockets no longer take new
    // clients: the TCP port is free and UDP queries are refused. (The slow query
    // holds the process 700 ms; its answer below shows it was served to the end.)
    assert!(
        run.child.try_wait().unwrap().is_none(),
        "still finishing in-flight work"
    );
    // (The shards close them as they see the signal, just after the log line;
    // well before the slow query's answer.)
    eventually(
        Duration::from_millis(300),
        "TCP listener closed at SIGTERM",
        || std::net::TcpListener::bind(addr),
    );
    // New UDP queries are refused (port unreachable), not silently swallowed.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    probe.connect(addr).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    probe
        .send(&query(6, "late.example.", RecordType::A, None).bytes())
        .unwrap();
    let mut buf = [0u8; 512];
    let late = probe.recv(&mut buf);
    assert_eq!(
        late.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused),
        "no socket takes new queries after SIGTERM"
    );
    let status = run.wait_exit();
    let reply = client.join().unwrap();
    assert_eq!(a_records(&reply), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    assert!(status.success(), "{status:?}");
    run.wait_for("stopped");
}

#[test]
fn check_names_the_bad_key_and_print_config_round_trips() {
    let bad = write_config(
        "bad",
        "[[upstream]]\naddress = \"127.0.0.1:53\"\n[tiers]\nbatch_sise = 2\n",
    );
    let out = Command::new(BIN)
        .arg("--check")
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("batch_sise"), "{err}");

    let bad = write_config(
        "bad2",
        "[[upstream]]\naddress = \"127.0.0.1:53\"\n[limits]\ntcp_pipeline = 0\n",
    );
    let out = Command::new(BIN)
        .arg("--check")
        .arg("-c")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.tcp_pipeline"));

    let out = Command::new(BIN).arg("--print-config").output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(
        printed.contains("1.1.1.1:53") && printed.contains("active_tier_size = 2"),
        "{printed}"
    );
    let path = write_config("printed", &printed);
    let out = Command::new(BIN)
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn sighup_reloads_a_valid_file_and_refuses_a_broken_one() {
    let a = SimUpstream::start(Behavior {
        addrs: vec![Ipv4Addr::new(198, 51, 100, 1)],
        ..Behavior::default()
    });
    let b = SimUpstream::start(Behavior {
        addrs: vec![Ipv4Addr::new(198, 51, 100, 2)],
        ..Behavior::default()
    });
    let path = write_config("sighup", &loopback_config(a.addr, "auto"));
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&path);
    let mut run = Running::spawn(cmd);
    let addr = Running::listen_addr(&run.wait_for("running"));
    let hup = |run: &Running| {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(run.child.id() as i32, libc::SIGHUP) };
    };
    std::fs::write(&path, "[[upstream]]\nadress = \"127.0.0.1:53\"\n").unwrap();
    hup(&run);
    let line = run.wait_for("reload refused");
    assert!(line.contains("adress"), "{line}");
    let r = udp_query(addr, &query(1, "one.example.", RecordType::A, None));
    assert_eq!(
        a_records(&r),
        vec![Ipv4Addr::new(198, 51, 100, 1)],
        "still serving"
    );

    std::fs::write(&path, loopback_config(b.addr, "auto")).unwrap();
    hup(&run);
    // A reload returns once every shard runs the new file.
    run.wait_for("reloaded on every shard");
    let r = udp_query(addr, &query(2, "two.example.", RecordType::A, None));
    assert_eq!(a_records(&r), vec![Ipv4Addr::new(198, 51, 100, 2)]);
    assert!(run.terminate().success());
}

#[test]
fn circuit_changes_are_logged() {
    let dead = SimUpstream::start(Behavior {
        silent: true,
        ..Behavior::default()
    });
    let text = format!(
        "{}[limits]\nupstream_timeout = \"100ms\"\n",
        loopback_config(dead.addr, "epoll")
    );
    let path = write_config("circuit", &text);
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&path);
    let mut run = Running::spawn(cmd);
    let addr = Running::listen_addr(&run.wait_for("running"));
    for i in 0..5u16 {
        udp_query(
            addr,
            &query(i, &format!("c{i}.example."), RecordType::A, None),
        );
    }
    let line = run.wait_for("upstream circuit changed");
    assert!(line.contains("to=\"degraded\""), "{line}");
    let line = run.wait_for("upstream circuit changed");
    assert!(
        line.contains("to=\"open\"") && line.contains("WARN"),
        "{line}"
    );
    assert!(run.terminate().success());
}

#[test]
fn the_readme_config_example_is_valid() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("```toml\n").expect("a TOML example") + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let config = tierdns::config::Config::parse(&readme[start..end], "README.md").unwrap();
    assert_eq!(config.upstreams.len(), 2);
    assert_eq!(config.zones.len(), 1);
}

#[test]
fn sighup_applies_a_new_access_list_at_once() {
    let up = SimUpstream::start(Behavior::default());
    let config = |allow: &str| {
        format!(
            "{}[access]\nallow = [{allow}]\n",
            loopback_config(up.addr, "auto")
        )
    };
    let path = write_config("sighup-access", &config("\"127.0.0.1/32\""));
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&path);
    let mut run = Running::spawn(cmd);
    let addr = Running::listen_addr(&run.wait_for("running"));
    let q = query(0x0ACC, "access.example.", RecordType::A, None);
    let from_127_0_0_2 = || {
        let s = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.send_to(&q.bytes(), addr).unwrap();
        let mut buf = [0u8; 4096];
        let n = s.recv(&mut buf).expect("an answer");
        hickory_proto::op::Message::from_vec(&buf[..n])
            .unwrap()
            .metadata
            .response_code
    };
    use hickory_proto::op::ResponseCode;
    assert_eq!(from_127_0_0_2(), ResponseCode::Refused);

    std::fs::write(&path, config("\"127.0.0.1/32\", \"127.0.0.2/32\"")).unwrap();
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(run.child.id() as i32, libc::SIGHUP) };
    let line = run.wait_for("reloaded");
    assert!(line.contains("access"), "{line}");
    eventually(
        Duration::from_secs(2),
        "the reload let 127.0.0.2 in",
        || match from_127_0_0_2() {
            ResponseCode::NoError => Ok(()),
            other => Err(other),
        },
    );
    assert_eq!(up.queries(), 1);
    assert!(run.terminate().success());
}

/// `GET /metrics` from `source`: the HTTP status and the body.
fn scrape(source: Ipv4Addr, exporter: SocketAddr) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::from((source, 0)).into())?;
    sock.connect_timeout(&exporter.into(), Duration::from_secs(2))?;
    let mut stream = std::net::TcpStream::from(sock);
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: tierdns\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, text))
}

#[test]
fn only_metrics_allow_may_scrape() {
    let up = SimUpstream::start(Behavior::default());
    // A free port for the exporter (it cannot be told port 0 and report it).
    let exporter = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let text = loopback_config(up.addr, "epoll").replace(
        "[metrics]\nenabled = false\n",
        &format!("[metrics]\nlisten = \"{exporter}\"\nallow = [\"127.0.0.2/32\"]\n"),
    );
    let path = write_config("metrics-allow", &text);
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&path);
    let mut run = Running::spawn(cmd);
    run.wait_for("running");
    let allowed = Ipv4Addr::new(127, 0, 0, 2);
    let (status, body) = eventually(Duration::from_secs(10), "the exporter answers", || {
        scrape(allowed, exporter)
    });
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("tierdns_info"), "{body}");
    let (status, body) = scrape(Ipv4Addr::LOCALHOST, exporter).unwrap();
    assert_eq!(status, 403, "127.0.0.1 is not in metrics.allow: {body}");
    assert!(!body.contains("tierdns_"), "{body}");
    assert!(run.terminate().success());
}

#[test]
fn metrics_listen_takes_the_place_of_the_file_s_address_across_reloads() {
    let out = Command::new(BIN)
        .args(["--print-config", "--metrics-listen", "10.1.2.3"])
        .output()
        .unwrap();
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.contains("listen = \"10.1.2.3:9153\""), "{printed}");
    let out = Command::new(BIN)
        .args(["--print-config", "--metrics-listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());

    let up = SimUpstream::start(Behavior::default());
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (in_file, given) = (free(), free());
    let text = loopback_config(up.addr, "epoll").replace(
        "[metrics]\nenabled = false\n",
        &format!("[metrics]\nlisten = \"{in_file}\"\n"),
    );
    let path = write_config("metrics-listen", &text);
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(&path)
        .arg("--metrics-listen")
        .arg(given.to_string());
    let mut run = Running::spawn(cmd);
    run.wait_for("running");
    eventually(
        Duration::from_secs(10),
        "the exporter on --metrics-listen",
        || scrape(Ipv4Addr::LOCALHOST, given),
    );
    assert!(
        scrape(Ipv4Addr::LOCALHOST, in_file).is_err(),
        "not the file's"
    );
    // A reload of the same file sees no change to [metrics].
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(run.child.id() as i32, libc::SIGHUP) };
    run.wait_for("reloaded");
    assert!(
        !run.seen.iter().any(|l| l.contains("[metrics] changed")),
        "{:?}",
        run.seen
    );
    assert!(run.terminate().success());
}

#[test]
fn the_daemonset_binds_metrics_to_the_pod_s_address_not_the_host_s_every_address() {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/daemonset.yaml"
    ))
    .unwrap();
    let start = yaml
        .find("tierdns.toml: |\n")
        .expect("the ConfigMap's file")
        + "tierdns.toml: |\n".len();
    let text: String = yaml[start..]
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    let config = tierdns::config::Config::parse(&text, "deploy/daemonset.yaml").unwrap();
    assert!(
        config.metrics.listen.ip().is_loopback(),
        "the file's address is loopback: {}",
        config.metrics.listen
    );
    assert!(
        !config
            .metrics
            .allow
            .iter()
            .any(|n| n == "0.0.0.0/0" || n == "::/0"),
        "{:?}",
        config.metrics.allow
    );
    // The pod's address, from the downward API, takes its place.
    assert!(
        yaml.contains(r#""--metrics-listen", "$(POD_IP)"]"#),
        "{yaml}"
    );
    assert!(
        yaml.contains("fieldRef: {fieldPath: status.podIP}"),
        "{yaml}"
    );
    assert!(!yaml.contains("0.0.0.0:9153"), "{yaml}");
}

/// `tierdns --check -c FILE`: whether it passed, and its stderr.
fn check(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("--check")
        .arg("-c")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_warns_about_an_open_resolver_without_a_rate_limit() {
    let base = "[[upstream]]\naddress = \"127.0.0.1:53\"\n";
    let open = write_config(
        "open",
        &format!("{base}[access]\nallow = [\"0.0.0.0/0\", \"::1/128\"]\n"),
    );
    let (ok, err) = check(&open);
    assert!(ok, "a warning, not an error: {err}");
    assert!(
        err.contains(
            "tierdns: warning: access.allow has 0.0.0.0/0 (every address) and ratelimit.qps = 0"
        ),
        "{err}"
    );
    let limited = write_config(
        "open-limited",
        &format!("{base}[access]\nallow = [\"0.0.0.0/0\"]\n[ratelimit]\nqps = 50\n"),
    );
    let (ok, err) = check(&limited);
    assert!(ok && !err.contains("warning"), "{err}");
    let closed = write_config("closed", base);
    let (ok, err) = check(&closed);
    assert!(ok && err.is_empty(), "{err}");
}

#[test]
fn a_private_key_others_may_read_is_warned_about_by_check_and_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("tierdns-test-{}-keymode", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["dns.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let up = SimUpstream::start(Behavior::default());
    let text = format!(
        "{}[tls]\nlisten = [\"127.0.0.1:0\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        loopback_config(up.addr, "epoll"),
        cert_file.display(),
        key_file.display()
    );
    let path = write_config("keymode", &text);
    let (ok, err) = check(&path);
    assert!(ok, "a warning, not an error: {err}");
    let expected = format!(
        "tls.key_file {} is not private to its owner (mode 0640: group may read)",
        key_file.display()
    );
    assert!(
        err.contains(&format!("tierdns: warning: {expected}")),
        "{err}"
    );

    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&path);
    let mut run = Running::spawn(cmd);
    let line = run.wait_for("is not private to its owner");
    assert!(line.contains("WARN") && line.contains(&expected), "{line}");
    run.wait_for("running");
    assert!(run.terminate().success());

    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, err) = check(&path);
    assert!(ok && !err.contains("warning"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
