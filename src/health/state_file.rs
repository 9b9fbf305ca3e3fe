//! Health across a restart (`[server] state_file`): each upstream's smoothed RTT
//! and whether its circuit was open, as the shards published them on the
//! [`CircuitBoard`], written atomically (a temporary file beside it, fsync, rename)
//! every [`WRITE_EVERY`] and at shutdown, and read at start into the board, where
//! a shard with no sample of its own ranks an upstream by it. So the first misses
//! after a restart go to the upstreams a long-running tierdns would pick, not to
//! the configured order.
//!
//! Read defensively: a file older than [`MAX_AGE`], an entry for an upstream no
//! longer configured, a value out of range, or a file that does not parse is
//! ignored (logged by the caller), never fatal.

use super::CircuitBoard;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often a running tierdns writes the file.
pub const WRITE_EVERY: Duration = Duration::from_secs(5);

/// A file written longer ago than this says nothing about the upstreams now.
pub const MAX_AGE: Duration = Duration::from_secs(3600);

/// How long an upstream whose circuit was open stays marked dead after a restart
/// (the default first backoff): it is probed again after it.
const OPEN_FOR: Duration = Duration::from_secs(10);

/// The file's contents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Seconds since the Unix epoch when it was written.
    pub written: u64,
    /// One entry per upstream the board knew.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamState>,
}

/// One upstream's health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamState {
    /// Its address, as configured.
    pub address: SocketAddr,
    /// Smoothed RTT in milliseconds, if any shard had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srtt_ms: Option<f64>,
    /// Its circuit was open.
    #[serde(default)]
    pub open: bool,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Snapshot {
    /// What the board knows at `now`.
    pub fn of(board: &CircuitBoard, now: Instant) -> Self {
        Self {
            written: unix_now(),
            upstreams: board
                .snapshot(now)
                .into_iter()
                .map(|(address, srtt, open)| UpstreamState {
                    address,
                    srtt_ms: srtt.map(|us| us / 1000.0),
                    open,
                })
                .collect(),
        }
    }

    /// Parses a file's text. Entries of upstreams not in `configured`, and
    /// RTTs that are not a positive number under a minute, are left out; a
    /// snapshot older than [`MAX_AGE`] at `now_unix` (or from the future) is an
    /// error.
    pub fn parse(text: &str, configured: &[SocketAddr], now_unix: u64) -> Result<Self, String> {
        let mut snap: Self = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let age = now_unix
            .checked_sub(snap.written)
            .ok_or("written in the future")?;
        if age > MAX_AGE.as_secs() {
            return Err(format!("{age} s old, older than {} s", MAX_AGE.as_secs()));
        }
        snap.upstreams.retain(|u| configured.contains(&u.address));
        for u in &mut snap.upstreams {
            if u.srtt_ms.is_some_and(|ms| !(ms > 0.0 && ms < 60_000.0)) {
                u.srtt_ms = None;
            }
        }
        Ok(snap)
    }

    /// Puts what it holds on the board, at `now`: the RTTs as published ones, and
    /// open circuits as open for a first backoff. Every `configured` upstream gets
    /// its mark first, all held at once: the board prunes marks nobody holds when
    /// a new address comes, and the shards' upstream sets, built next, then find
    /// every one of them.
    pub fn seed(&self, board: &CircuitBoard, configured: &[SocketAddr], now: Instant) {
        let held: Vec<_> = configured.iter().map(|a| (*a, board.slot(*a))).collect();
        for u in &self.upstreams {
            let Some((_, slot)) = held.iter().find(|(a, _)| *a == u.address) else {
                continue;
            };
            if let Some(ms) = u.srtt_ms {
                slot.publish_srtt(ms * 1000.0);
            }
            if u.open {
                slot.mark_open(now + OPEN_FOR);
            }
        }
    }

    /// Writes it to `path` atomically: a temporary file beside it, fsync, rename,
    /// then fsync of the directory, so a crash leaves the old file or the new one.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = toml::to_string(self).map_err(std::io::Error::other)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let name = path
            .file_name()
            .ok_or_else(|| std::io::Error::other("state_file names no file"))?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(b"# tierdns upstream health; rewritten while tierdns runs\n")?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        if let Some(dir) = dir {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Reads `path` for the `configured` upstreams; Err (to be logged, not fatal)
    /// if it cannot be read, does not parse, or is too old.
    pub fn read(path: &Path, configured: &[SocketAddr]) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        Self::parse(&text, configured, unix_now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Written from a board, read back for the configured upstreams, seeded into a
    /// new board: the RTTs and the open circuit are there, and an upstream no
    /// longer configured is left out.
    #[test]
    fn a_snapshot_round_trips_through_the_file_into_a_new_board() {
        let now = Instant::now();
        let board = CircuitBoard::new();
        // Held, as the shards' upstream sets hold them.
        let held = [
            board.slot(addr(1)),
            board.slot(addr(2)),
            board.slot(addr(3)),
        ];
        held[0].publish_srtt(20_000.0);
        held[1].publish_srtt(300_000.0);
        held[2].mark_open(now + Duration::from_secs(60));
        let dir = std::env::temp_dir().join(format!("tierdns-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.toml");
        Snapshot::of(&board, now).write(&path).unwrap();
        let read = Snapshot::read(&path, &[addr(1), addr(3)]).unwrap();
        let fresh = CircuitBoard::new();
        read.seed(&fresh, &[addr(1), addr(3)], now);
        let seen = fresh.snapshot(now);
        assert_eq!(
            seen,
            vec![(addr(1), Some(20_000.0), false), (addr(3), None, true)]
        );
        // Every configured upstream has its mark, held or not, so building the
        // shards' sets prunes none of them.
        assert_eq!(fresh.len(), 2);
        // Nothing temporary is left beside it.
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Truncated, corrupt, stale, from the future, or with nonsense values: an
    /// error or the nonsense left out, never a panic.
    #[test]
    fn a_bad_file_is_an_error_or_ignored_never_a_panic() {
        let configured = [addr(1)];
        let good = "written = 1000\n[[upstream]]\naddress = \"127.0.0.1:1\"\nsrtt_ms = 20.0\n";
        assert!(Snapshot::parse(good, &configured, 1000).is_ok());
        assert!(
            Snapshot::parse(&good[..30], &configured, 1000).is_err(),
            "truncated"
        );
        assert!(Snapshot::parse("\u{0}garbage", &configured, 1000).is_err());
        assert!(
            Snapshot::parse(good, &configured, 1000 + 3601).is_err(),
            "stale"
        );
        assert!(Snapshot::parse(good, &configured, 999).is_err(), "future");
        let odd = "written = 1000\n[[upstream]]\naddress = \"127.0.0.1:1\"\nsrtt_ms = -5.0\n";
        let snap = Snapshot::parse(odd, &configured, 1000).unwrap();
        assert_eq!(snap.upstreams[0].srtt_ms, None, "a negative RTT is dropped");
        let nan = "written = 1000\n[[upstream]]\naddress = \"127.0.0.1:1\"\nsrtt_ms = nan\n";
        let snap = Snapshot::parse(nan, &configured, 1000).unwrap();
        assert_eq!(snap.upstreams[0].srtt_ms, None);
        assert!(Snapshot::read(Path::new("/nonexistent/tierdns/state"), &configured).is_err());
    }
}
