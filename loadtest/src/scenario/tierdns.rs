//! tierdns as a child process: its binary, its config, readiness, metrics,
//! signals, memory, and a bounded stop.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace root (this crate's parent).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The tierdns binary: `explicit`, else `$TIERDNS_BIN`, else the workspace's
/// `target/release/tierdns` (built when missing).
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--tierdns {}: no such file", p.display()))
        };
    }
    if let Some(p) = std::env::var_os("TIERDNS_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("TIERDNS_BIN={}: no such file", p.display()))
        };
    }
    let root = workspace_root();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let bin = target.join("release").join("tierdns");
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!(
        "tierdns not found at {}: building it (cargo build --release --bin tierdns)",
        bin.display()
    );
    let status = Command::new("cargo")
        .args(["build", "--release", "--bin", "tierdns"])
        .current_dir(&root)
        .status()
        .map_err(|e| format!("cargo build: {e}; build tierdns or set TIERDNS_BIN"))?;
    if status.success() && bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "could not build tierdns; run `cargo build --release --bin tierdns` or set TIERDNS_BIN (looked at {})",
            bin.display()
        ))
    }
}

/// A port free on 127.0.0.1 for both UDP and TCP (at the time of asking).
pub fn free_port() -> Result<u16, String> {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = udp.local_addr().map_err(|e| e.to_string())?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free port on 127.0.0.1".into())
}

/// What goes into a tierdns config file.
#[derive(Debug, Clone)]
pub struct ConfigSpec {
    /// `strategy`.
    pub strategy: String,
    /// The fleet's addresses.
    pub upstreams: Vec<SocketAddr>,
    /// `[server] io`.
    pub io: String,
    /// Extra `key = value` lines of `[tiers]`.
    pub tiers: Vec<String>,
    /// Extra lines of `[limits]`.
    pub limits: Vec<String>,
    /// Extra lines of `[cache]`.
    pub cache: Vec<String>,
    /// Other sections (`[budget]`, `[health]`, ...) and their lines, in order.
    pub sections: Vec<(String, Vec<String>)>,
}

impl ConfigSpec {
    /// Defaults: staggered, auto io, no extra keys.
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self {
            strategy: "staggered".into(),
            upstreams,
            io: "auto".into(),
            tiers: Vec::new(),
            limits: Vec::new(),
            cache: Vec::new(),
            sections: Vec::new(),
        }
    }

    /// Applies one `--set SECTION.KEY=VALUE` (VALUE is TOML as written: `false`,
    /// `0.5`, `"5s"`), or `strategy=NAME`. The sections the scenario owns
    /// (`server`, `metrics`, `upstream`) are refused: the listener, the metrics
    /// endpoint and the fleet on loopback are what every scenario relies on.
    pub fn set(&mut self, assignment: &str) -> Result<(), String> {
        let (path, value) = assignment
            .split_once('=')
            .map(|(p, v)| (p.trim(), v.trim()))
            .ok_or_else(|| format!("--set {assignment:?}: expected SECTION.KEY=VALUE"))?;
        if value.is_empty() || value.contains(['\n', '\r']) {
            return Err(format!(
                "--set {assignment:?}: the value is one line of TOML"
            ));
        }
        if path == "strategy" {
            self.strategy = value.trim_matches('"').to_string();
            return Ok(());
        }
        let (section, key) = path
            .split_once('.')
            .ok_or_else(|| format!("--set {assignment:?}: expected SECTION.KEY=VALUE"))?;
        let bare = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !bare(section) || !bare(key) {
            return Err(format!(
                "--set {assignment:?}: SECTION and KEY are bare TOML keys"
            ));
        }
        let lines = match section {
            "server" | "metrics" | "upstream" => {
                return Err(format!(
                    "--set {assignment:?}: [{section}] is the scenario's own (loopback listener, metrics, the fleet)"
                ))
            }
            "limits" => &mut self.limits,
            "tiers" => &mut self.tiers,
            "cache" => &mut self.cache,
            other => {
                let i = match self.sections.iter().position(|(s, _)| s == other) {
                    Some(i) => i,
                    None => {
                        self.sections.push((other.to_string(), Vec::new()));
                        self.sections.len() - 1
                    }
                };
                &mut self.sections[i].1
            }
        };
        lines.push(format!("{key} = {value}"));
        Ok(())
    }

    /// Applies every `--set` in turn.
    pub fn set_all(&mut self, assignments: &[String]) -> Result<(), String> {
        assignments.iter().try_for_each(|a| self.set(a))
    }

    /// The value of `SECTION.KEY` among the extra lines, as written (`"5s"`).
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        let lines = match section {
            "limits" => &self.limits,
            "tiers" => &self.tiers,
            "cache" => &self.cache,
            other => &self.sections.iter().find(|(s, _)| s == other)?.1,
        };
        lines.iter().rev().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim())
        })
    }

    /// The TOML text, listening on `port`, metrics on `metrics_port`.
    pub fn render(&self, port: u16, metrics_port: u16) -> String {
        let mut s = String::new();
        s.push_str(
            "# written by loadtest scenario: upstreams are the simulated fleet on loopback\n",
        );
        s.push_str(&format!("strategy = \"{}\"\n\n", self.strategy));
        s.push_str(&format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nshards = 1\npin_cpus = false\nio = \"{}\"\nshutdown_grace = \"1s\"\n\n",
            self.io
        ));
        let own = [
            ("limits", &self.limits),
            ("tiers", &self.tiers),
            ("cache", &self.cache),
        ];
        let others = self.sections.iter().map(|(s, l)| (s.as_str(), l));
        for (section, lines) in own.into_iter().chain(others) {
            if !lines.is_empty() {
                s.push_str(&format!("[{section}]\n{}\n\n", lines.join("\n")));
            }
        }
        s.push_str(&format!(
            "[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\nflush_interval = \"200ms\"\n\n"
        ));
        for (i, a) in self.upstreams.iter().enumerate() {
            s.push_str(&format!(
                "[[upstream]]\naddress = \"{a}\"\nname = \"up{i}\"\n\n"
            ));
        }
        s
    }
}

/// A running tierdns. Dropping it kills it.
pub struct Tierdns {
    /// Where it serves DNS.
    pub addr: SocketAddr,
    /// Its metrics endpoint.
    pub metrics: SocketAddr,
    /// Its config file.
    pub config_path: PathBuf,
    /// Its stderr log.
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl Tierdns {
    /// Writes the config under `dir` (named `tag`), checks it, starts tierdns (on
    /// CPU 0 via taskset when there are two CPUs), and waits until it answers a
    /// query (at most 15 s).
    pub fn start(bin: &Path, dir: &Path, tag: &str, spec: &ConfigSpec) -> Result<Self, String> {
        for u in &spec.upstreams {
            if !u.ip().is_loopback() {
                return Err(format!("upstream {u} is not on loopback"));
            }
        }
        let port = free_port()?;
        let mut mport = free_port()?;
        while mport == port {
            mport = free_port()?;
        }
        let config_path = dir.join(format!("{tag}.toml"));
        let log_path = dir.join(format!("{tag}.log"));
        std::fs::write(&config_path, spec.render(port, mport)).map_err(|e| e.to_string())?;
        let check = Command::new(bin)
            .arg("--check")
            .arg("--config")
            .arg(&config_path)
            .output()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        if !check.status.success() {
            return Err(format!(
                "tierdns --check refused {}: {}{}",
                config_path.display(),
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            ));
        }
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let pin = core_affinity::get_core_ids().is_some_and(|c| c.len() >= 2)
            && Command::new("taskset").arg("-V").output().is_ok();
        let mut cmd = if pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        cmd.arg("--config")
            .arg(&config_path)
            .env("TIERDNS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().map_err(|e| format!("{}: {e}", bin.display()))?;
        let mut me = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            metrics: SocketAddr::from(([127, 0, 0, 1], mport)),
            config_path,
            log_path,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(c) = me.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!(
                        "tierdns exited during startup ({status}): {}",
                        me.log_tail(20)
                    ));
                }
            }
            if super::probe(
                me.addr,
                "ready.probe.test.",
                crate::dns::TYPE_A,
                Duration::from_millis(500),
            )
            .is_some()
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "tierdns never answered on {}: {}",
                    me.addr,
                    me.log_tail(20)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(me)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Lines of its log containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Sends it a signal (`libc::SIGHUP`, `libc::SIGTERM`).
    pub fn signal(&self, sig: libc::c_int) -> Result<(), String> {
        crate::mmsg::send_signal(self.pid(), sig)
            .map_err(|e| format!("signal {sig} to tierdns: {e}"))
    }

    /// Resident memory, bytes (from /proc).
    pub fn rss(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// Scrapes `/metrics` (at most 2 s).
    pub fn scrape(&self) -> Result<BTreeMap<String, f64>, String> {
        let mut s = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(2))
            .map_err(|e| format!("metrics {}: {e}", self.metrics))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.metrics
        )
        .map_err(|e| e.to_string())?;
        let mut body = String::new();
        s.read_to_string(&mut body)
            .map_err(|e| format!("metrics read: {e}"))?;
        let text = body
            .split_once("\r\n\r\n")
            .map_or(body.as_str(), |(_, b)| b);
        Ok(parse_metrics(text))
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = crate::mmsg::send_signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Tierdns {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Parses Prometheus text: `name{labels} value` per line (comments skipped),
/// keyed by the series as written.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some((k, v)) = line.rsplit_once(' ') {
            if let Ok(x) = v.parse::<f64>() {
                m.insert(k.to_string(), x);
            }
        }
    }
    m
}

/// Sum of the series of metric `name` whose labels contain every `key="value"`
/// in `labels`.
pub fn metrics_sum(m: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            let (n, rest) = k.split_once('{').unwrap_or((k.as_str(), ""));
            n == name && labels.iter().all(|l| rest.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Values of one label of metric `name`, with their sums: `reason="overload"` -> 12.
pub fn metrics_by_label(
    m: &BTreeMap<String, f64>,
    name: &str,
    label: &str,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let key = format!("{label}=\"");
    for (k, v) in m {
        let (n, rest) = k.split_once('{').unwrap_or((k.as_str(), ""));
        if n != name {
            continue;
        }
        if let Some(i) = rest.find(&key) {
            let val = rest[i + key.len()..].split('"').next().unwrap_or("");
            *out.entry(val.to_string()).or_insert(0.0) += v;
        }
    }
    out
}

/// The cumulative buckets `(le, count)` of histogram `name` (its `name_bucket`
/// series) whose labels contain every `key="value"` in `labels`, by `le` (`+Inf`
/// last).
pub fn metrics_buckets(m: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> Vec<(f64, f64)> {
    let series = format!("{name}_bucket");
    let mut out: Vec<(f64, f64)> = m
        .iter()
        .filter_map(|(k, v)| {
            let (n, rest) = k.split_once('{')?;
            if n != series || !labels.iter().all(|l| rest.contains(l)) {
                return None;
            }
            let i = rest.find("le=\"")?;
            let le = rest[i + 4..].split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, *v))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// `end` minus `start`, bucket by bucket (a bucket missing from `start` counts 0).
pub fn buckets_delta(end: &[(f64, f64)], start: &[(f64, f64)]) -> Vec<(f64, f64)> {
    end.iter()
        .map(|&(le, n)| {
            let before = start.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
            (le, (n - before).max(0.0))
        })
        .collect()
}

/// The `q` quantile (0..1) of cumulative buckets, interpolated linearly within its
/// bucket as Prometheus' `histogram_quantile` does (from 0 in the first bucket);
/// in the `+Inf` bucket, the highest finite bound. None without samples.
pub fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= rank && n > below {
            if le.is_infinite() {
                return Some(lo);
            }
            return Some(lo + (le - lo) * (rank - below) / (n - below));
        }
        if le.is_finite() {
            lo = le;
        }
        below = n;
    }
    Some(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE tierdns_cache_total counter\n\
        tierdns_cache_total{result=\"hit\"} 90\n\
        tierdns_cache_total{result=\"miss\"} 10\n\
        tierdns_drops_total{reason=\"overload\"} 5\n\
        tierdns_drops_total{reason=\"short\"} 1\n\
        tierdns_cache_bytes 1234.5\n";

    #[test]
    fn metrics_parse_and_sum() {
        let m = parse_metrics(TEXT);
        assert_eq!(
            metrics_sum(&m, "tierdns_cache_total", &["result=\"hit\""]),
            90.0
        );
        assert_eq!(metrics_sum(&m, "tierdns_cache_total", &[]), 100.0);
        assert_eq!(metrics_sum(&m, "tierdns_cache_bytes", &[]), 1234.5);
        assert_eq!(
            metrics_sum(&m, "tierdns_cache", &[]),
            0.0,
            "exact names only"
        );
        let d = metrics_by_label(&m, "tierdns_drops_total", "reason");
        assert_eq!(d.get("overload"), Some(&5.0));
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn histogram_buckets_delta_and_quantiles() {
        let text = "x_bucket{path=\"miss\",le=\"0.01\"} 10\n\
            x_bucket{path=\"miss\",le=\"0.025\"} 60\n\
            x_bucket{path=\"miss\",le=\"+Inf\"} 100\n\
            x_bucket{path=\"miss\",le=\"0.05\"} 90\n\
            x_bucket{path=\"hit\",le=\"0.01\"} 7\n\
            x_count{path=\"miss\"} 100\n";
        let m = parse_metrics(text);
        let b = metrics_buckets(&m, "x", &["path=\"miss\""]);
        assert_eq!(
            b,
            vec![
                (0.01, 10.0),
                (0.025, 60.0),
                (0.05, 90.0),
                (f64::INFINITY, 100.0)
            ]
        );
        // median: rank 50, in (0.01, 0.025] holding 10..60: 0.01 + 0.015 * 40/50
        let p50 = bucket_quantile(&b, 0.5).unwrap();
        assert!((p50 - 0.022).abs() < 1e-9, "{p50}");
        // rank 5 in the first bucket, from 0
        assert!((bucket_quantile(&b, 0.05).unwrap() - 0.005).abs() < 1e-9);
        // rank 99 lies in +Inf: the highest finite bound
        assert_eq!(bucket_quantile(&b, 0.99), Some(0.05));
        // a bucket missing from the start counts 0
        let start = vec![(0.01, 10.0), (0.025, 20.0), (f64::INFINITY, 20.0)];
        let d = buckets_delta(&b, &start);
        assert_eq!(
            d,
            vec![
                (0.01, 0.0),
                (0.025, 40.0),
                (0.05, 90.0),
                (f64::INFINITY, 80.0)
            ]
        );
        let start = vec![
            (0.01, 10.0),
            (0.025, 20.0),
            (0.05, 20.0),
            (f64::INFINITY, 20.0),
        ];
        let d = buckets_delta(&b, &start);
        // rank 20 of 80: the empty first bucket is skipped, then 0.01 + 0.015 * 20/40
        let q = bucket_quantile(&d, 0.25).unwrap();
        assert!((q - 0.0175).abs() < 1e-9, "{q}");
        assert_eq!(bucket_quantile(&[], 0.5), None);
        assert_eq!(bucket_quantile(&[(f64::INFINITY, 0.0)], 0.5), None);
    }

    #[test]
    fn config_has_the_fleet_and_the_extras() {
        let mut c = ConfigSpec::new(vec!["127.0.0.11:5300".parse().unwrap()]);
        c.strategy = "parallel".into();
        c.limits.push("max_client_in_flight = 256".into());
        let t = c.render(5353, 9153);
        assert!(t.contains("strategy = \"parallel\""));
        assert!(t.contains("listen = [\"127.0.0.1:5353\"]"));
        assert!(t.contains("[limits]\nmax_client_in_flight = 256"));
        assert!(t.contains("address = \"127.0.0.11:5300\""));
        assert!(!t.contains("[tiers]"), "no empty sections");
    }

    #[test]
    fn set_adds_lines_to_their_sections_and_refuses_the_scenarios_own() {
        let mut c = ConfigSpec::new(vec!["127.0.0.11:5300".parse().unwrap()]);
        c.set("budget.enabled=false").unwrap();
        c.set("budget.ratio = 0.5").unwrap();
        c.set("tiers.total_collect_timeout=\"5s\"").unwrap();
        c.set("strategy=parallel").unwrap();
        let t = c.render(5353, 9153);
        assert!(
            t.contains("[budget]\nenabled = false\nratio = 0.5\n"),
            "{t}"
        );
        assert!(t.contains("[tiers]\ntotal_collect_timeout = \"5s\""), "{t}");
        assert!(t.contains("strategy = \"parallel\""), "{t}");
        assert_eq!(c.get("tiers", "total_collect_timeout"), Some("\"5s\""));
        assert_eq!(c.get("budget", "enabled"), Some("false"));
        assert_eq!(c.get("budget", "missing"), None);
        assert_eq!(c.get("health", "enabled"), None);
        for bad in [
            "budget.enabled",
            "enabled=false",
            "budget.=false",
            "budget.enabled=",
            "server.listen=[\"0.0.0.0:53\"]",
            "upstream.address=\"8.8.8.8:53\"",
            "metrics.listen=\"0.0.0.0:9\"",
            "bud get.enabled=false",
            "budget.enabled=false\n[server]",
        ] {
            assert!(c.set(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(c.render(5353, 9153).matches("[server]").count(), 1);
    }
}
