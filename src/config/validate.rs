//! [`Config::validate`]: what serde cannot check (ranges, references between
//! sections), each error naming the key at fault.

use super::error::{invalid, ConfigError};
use super::server::overlaps;
use super::Config;
use crate::policy::AccessList;
use std::net::SocketAddr;

impl Config {
    /// Checks ranges and references; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.listen.is_empty() {
            return Err(invalid("server.listen", "at least one address is required"));
        }
        for (i, a) in s.listen.iter().enumerate() {
            if s.listen[..i].contains(a) {
                return Err(invalid("server.listen", format!("{a} is listed twice")));
            }
        }
        if s.shards > 1024 {
            return Err(invalid("server.shards", "at most 1024"));
        }
        if !(8..=32768).contains(&s.uring_entries) || !s.uring_entries.is_power_of_two() {
            return Err(invalid(
                "server.uring_entries",
                "must be a power of two from 8 to 32768",
            ));
        }
        if !(1..=256).contains(&s.udp_receivers) {
            return Err(invalid("server.udp_receivers", "must be from 1 to 256"));
        }
        if !(512..=4096).contains(&s.max_udp_size) {
            return Err(invalid("server.max_udp_size", "must be from 512 to 4096"));
        }
        let l = &self.limits;
        let positive = [
            ("limits.max_client_in_flight", l.max_client_in_flight),
            ("limits.max_upstream_pending", l.max_upstream_pending),
            ("limits.tcp_connections", l.tcp_connections),
            ("limits.tcp_pipeline", l.tcp_pipeline),
            ("limits.buffer_pool", l.buffer_pool),
            ("limits.upstream_tcp_max", l.upstream_tcp_max),
            ("limits.max_background", l.max_background),
            ("limits.upstream_sockets", l.upstream_sockets),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if l.max_upstream_pending > 60000 {
            return Err(invalid(
                "limits.max_upstream_pending",
                "at most 60000 (16-bit message IDs per upstream socket)",
            ));
        }
        if l.upstream_timeout.is_zero() {
            return Err(invalid("limits.upstream_timeout", "must be positive"));
        }
        if l.upstream_sockets > 256 {
            return Err(invalid("limits.upstream_sockets", "must be from 1 to 256"));
        }
        if l.upstream_socket_lifetime.is_zero() {
            return Err(invalid(
                "limits.upstream_socket_lifetime",
                "must be positive",
            ));
        }
        if l.tcp_idle_timeout.is_zero() {
            return Err(invalid("limits.tcp_idle_timeout", "must be positive"));
        }
        if self.upstreams.is_empty() {
            return Err(invalid("upstream", "at least one [[upstream]] is required"));
        }
        if self.upstreams.len() > 64 {
            return Err(invalid("upstream", "at most 64 upstreams"));
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            let key = format!("upstream[{i}].address");
            if u.address.port() == 0 {
                return Err(invalid(key, "port 0 is not a valid upstream port"));
            }
            if u.address.ip().is_unspecified() {
                return Err(invalid(key, "an unspecified address cannot be an upstream"));
            }
            if self.upstreams[..i].iter().any(|o| o.address == u.address) {
                return Err(invalid(key, format!("{} is listed twice", u.address)));
            }
            if self.upstreams[..i].iter().any(|o| o.label() == u.label()) {
                return Err(invalid(
                    format!("upstream[{i}].name"),
                    format!("{:?} is used twice", u.label()),
                ));
            }
            u.validate(i)?;
        }
        self.tiers.validate()?;
        self.health.validate()?;
        self.budget.validate()?;
        self.cache.validate()?;
        AccessList::new(&self.access)?;
        self.ratelimit.validate()?;
        if self.metrics.flush_interval.is_zero() {
            return Err(invalid("metrics.flush_interval", "must be positive"));
        }
        self.metrics.allowed_networks()?;
        for (i, z) in self.zones.iter().enumerate() {
            if let Err(why) = z.suffix_wire() {
                return Err(invalid(
                    format!("zone[{i}].suffix"),
                    format!("{:?} is not a domain name: {why}", z.suffix),
                ));
            }
            if z.upstreams.is_empty() {
                return Err(invalid(format!("zone[{i}].upstreams"), "must not be empty"));
            }
            for name in &z.upstreams {
                if self.upstream_index(name).is_none() {
                    return Err(invalid(
                        format!("zone[{i}].upstreams"),
                        format!("{name:?} names no [[upstream]]"),
                    ));
                }
            }
            if let Some(t) = &z.tiers {
                t.validate_in(&format!("zone[{i}].tiers"))?;
            }
        }
        self.validate_encrypted()
    }

    /// `[tls]` and `[https]`: files named where listeners need them, a path, and
    /// listen addresses that take no port another listener has.
    fn validate_encrypted(&self) -> Result<(), ConfigError> {
        let (tls, https) = (&self.tls, &self.https);
        if !tls.listen.is_empty() {
            if tls.cert_file.is_empty() {
                return Err(invalid("tls.cert_file", "required with tls.listen"));
            }
            if tls.key_file.is_empty() {
                return Err(invalid("tls.key_file", "required with tls.listen"));
            }
        }
        if https.cert_file.is_empty() != https.key_file.is_empty() {
            let key = if https.key_file.is_empty() {
                "https.key_file"
            } else {
                "https.cert_file"
            };
            return Err(invalid(
                key,
                "https.cert_file and https.key_file go together (neither: [tls]'s are used)",
            ));
        }
        if !https.listen.is_empty() {
            let files = https.cert_files(tls);
            for (path, key) in [files.cert, files.key] {
                if path.is_empty() {
                    return Err(invalid(
                        key,
                        "required with https.listen (give [https] its own files or set [tls]'s)",
                    ));
                }
            }
        }
        let p = &https.path;
        if !p.starts_with('/')
            || p.len() > 256
            || p.contains(['?', '#'])
            || p.contains(char::is_whitespace)
        {
            return Err(invalid(
                "https.path",
                format!("{p:?} must start with '/', have no '?', '#' or spaces, and be at most 256 bytes"),
            ));
        }
        if tls.handshake_timeout.is_zero() {
            return Err(invalid("tls.handshake_timeout", "must be positive"));
        }
        if https.handshake_timeout.is_zero() {
            return Err(invalid("https.handshake_timeout", "must be positive"));
        }
        // Every stream listener in one list, in the order the errors name them.
        let all: Vec<(&str, &SocketAddr)> = self
            .server
            .listen
            .iter()
            .map(|a| ("server.listen", a))
            .chain(tls.listen.iter().map(|a| ("tls.listen", a)))
            .chain(https.listen.iter().map(|a| ("https.listen", a)))
            .collect();
        for (i, (key, a)) in all.iter().enumerate() {
            if *key == "server.listen" {
                continue; // checked above, with the UDP sockets
            }
            if let Some((other, b)) = all[..i].iter().find(|(_, b)| overlaps(a, b)) {
                return Err(invalid(
                    *key,
                    format!("{a} takes the port of {other} {b}: each listener needs its own"),
                ));
            }
        }
        Ok(())
    }
}
