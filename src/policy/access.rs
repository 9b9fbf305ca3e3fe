//! Access control: which clients may use the resolver (`[access]`).
//!
//! [`AccessConfig`] is the section as written: `allow`, a list of networks in CIDR
//! notation (a bare address is one host), and `action`, what a client outside them
//! gets. [`AccessList::new`] turns it into the form the hot path reads: per address
//! family, the networks as inclusive address ranges, sorted by start and merged
//! where they overlap or touch, so [`AccessList::check`] is one binary search with
//! no allocation and no lock.
//!
//! Invariants: the ranges of each family are sorted, disjoint and not adjacent; a
//! client is allowed if and only if one configured network contains it. A client
//! address that is IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a dual-stack socket
//! reports for an IPv4 peer) is checked as the IPv4 address, against the IPv4
//! networks; an allow entry written as such a network counts as IPv4 as well.
//!
//! The default, `["127.0.0.0/8", "::1/128"]`, keeps the built-in config a loopback
//! resolver: an open resolver is something an operator writes down on purpose.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a client outside `access.allow` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessAction {
    /// REFUSED with an Extended DNS Error 18, Prohibited (RFC 8914); over TCP each
    /// query of the connection is answered so.
    #[default]
    Refuse,
    /// No answer; over TCP the connection is closed at accept.
    Drop,
}

impl AccessAction {
    /// Every action, in the order of the metric arrays.
    pub const ALL: [Self; 2] = [Self::Refuse, Self::Drop];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refuse => "refuse",
            Self::Drop => "drop",
        }
    }
}

/// `[access]`, as written in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// Client networks allowed to query, CIDR (`"10.0.0.0/8"`, `"fc00::/7"`) or a
    /// bare address for one host. Default: loopback only.
    pub allow: Vec<String>,
    /// What everyone else gets. Default `refuse`.
    pub action: AccessAction,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            allow: vec!["127.0.0.0/8".into(), "::1/128".into()],
            action: AccessAction::Refuse,
        }
    }
}

/// An `[access]` value that cannot be used; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessConfigError {
    /// An `allow` entry that is not a network.
    #[error("access.allow[{index}]: {text:?} is not a network ({why})")]
    NotANetwork {
        /// Its index in the list.
        index: usize,
        /// The entry as written.
        text: String,
        /// What is wrong with it.
        why: NetworkError,
    },
}

/// Why a string is not a network. Small and `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    /// The part before the `/` is not an IPv4 or IPv6 address.
    #[error("not an IP address")]
    Address,
    /// The part after the `/` is not a number.
    #[error("the prefix length is not a number")]
    PrefixNotANumber,
    /// The prefix length exceeds the address length (32 or 128).
    #[error("the prefix length is above {0}")]
    PrefixTooLong(u8),
    /// Bits set after the prefix (`10.0.0.1/8`): most likely a typo.
    #[error("address bits are set past the prefix length")]
    HostBits,
}

/// A network: an address and a prefix length, the address with no host bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    /// The network address.
    pub addr: IpAddr,
    /// Bits of `addr` that are the network.
    pub prefix: u8,
}

impl Network {
    /// Parses `"a.b.c.d/len"`, `"x::y/len"`, or a bare address (a host: /32, /128).
    /// Host bits must be clear.
    pub fn parse(text: &str) -> Result<Self, NetworkError> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| NetworkError::Address)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(len) => {
                let len = len.trim();
                if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(NetworkError::PrefixNotANumber);
                }
                match len.parse::<u8>() {
                    Ok(n) if n <= max => n,
                    _ => return Err(NetworkError::PrefixTooLong(max)),
                }
            }
        };
        let net = Self { addr, prefix };
        if net.masked() != addr {
            return Err(NetworkError::HostBits);
        }
        Ok(net)
    }

    /// `addr` with the bits past the prefix cleared.
    fn masked(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(self.prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(self.prefix))),
        }
    }
}

/// The top `prefix` bits of a u32 set (prefix above 32 counts as 32).
pub(crate) fn mask32(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p if p >= 32 => u32::MAX,
        p => u32::MAX << (32 - u32::from(p)),
    }
}

/// The top `prefix` bits of a u128 set (prefix above 128 counts as 128).
pub(crate) fn mask128(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p if p >= 128 => u128::MAX,
        p => u128::MAX << (128 - u32::from(p)),
    }
}

/// The IPv4 address a client really is: its own, or the one inside an IPv4-mapped
/// IPv6 address; None for other IPv6 clients.
pub(crate) fn client_v4(client: IpAddr) -> Option<Ipv4Addr> {
    match client {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    }
}

/// Inclusive ranges, sorted by start, disjoint and not adjacent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Ranges<T>(Box<[(T, T)]>);

impl<T: Copy + Ord + RangeBound> Ranges<T> {
    fn new(mut ranges: Vec<(T, T)>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if last.1 >= start || last.1.next() == Some(start) => {
                    last.1 = last.1.max(end);
                }
                _ => merged.push((start, end)),
            }
        }
        Self(merged.into_boxed_slice())
    }

    fn contains(&self, x: T) -> bool {
        // The last range starting at or before x is the only one that can hold it.
        let after = self.0.partition_point(|&(start, _)| start <= x);
        after
            .checked_sub(1)
            .and_then(|i| self.0.get(i))
            .is_some_and(|&(_, end)| x <= end)
    }
}

/// The successor of a range bound, None at the top.
trait RangeBound: Sized {
    fn next(self) -> Option<Self>;
}

impl RangeBound for u32 {
    fn next(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl RangeBound for u128 {
    fn next(self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// What a client gets from the access list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessVerdict {
    /// In an allowed network: served.
    Allow,
    /// Outside: denied with this action.
    Deny(AccessAction),
}

/// `[access]` ready for the hot path: the allowed networks as sorted ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessList {
    v4: Ranges<u32>,
    v6: Ranges<u128>,
    action: AccessAction,
}

impl AccessList {
    /// Parses and precomputes the section; the error names the entry at fault.
    pub fn new(config: &AccessConfig) -> Result<Self, AccessConfigError> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (index, text) in config.allow.iter().enumerate() {
            let net = Network::parse(text).map_err(|why| AccessConfigError::NotANetwork {
                index,
                text: text.clone(),
                why,
            })?;
            match net.addr {
                IpAddr::V4(a) => {
                    let start = u32::from(a);
                    v4.push((start, start | !mask32(net.prefix)));
                }
                // A network inside ::ffff:0:0/96 holds only IPv4-mapped clients,
                // which are checked as IPv4.
                IpAddr::V6(a) if net.prefix >= 96 && a.to_ipv4_mapped().is_some() => {
                    let start = (u128::from(a) & u128::from(u32::MAX)) as u32;
                    let host = !mask32(net.prefix - 96);
                    v4.push((start, start | host));
                }
                IpAddr::V6(a) => {
                    let start = u128::from(a);
                    v6.push((start, start | !mask128(net.prefix)));
                }
            }
        }
        Ok(Self {
            v4: Ranges::new(v4),
            v6: Ranges::new(v6),
            action: config.action,
        })
    }

    /// Whether `client` may query; no allocation, no lock.
    pub fn check(&self, client: IpAddr) -> AccessVerdict {
        let allowed = match (client_v4(client), client) {
            (Some(v4), _) => self.v4.contains(u32::from(v4)),
            (None, IpAddr::V6(v6)) => self.v6.contains(u128::from(v6)),
            (None, IpAddr::V4(_)) => false,
        };
        if allowed {
            AccessVerdict::Allow
        } else {
            AccessVerdict::Deny(self.action)
        }
    }

    /// The action for clients outside the list.
    pub fn action(&self) -> AccessAction {
        self.action
    }
}

impl Default for AccessList {
    /// The default section: loopback only, refuse.
    fn default() -> Self {
        Self::new(&AccessConfig::default()).unwrap_or(Self {
            v4: Ranges::default(),
            v6: Ranges::default(),
            action: AccessAction::Refuse,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(allow: &[&str]) -> AccessList {
        AccessList::new(&AccessConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            action: AccessAction::Drop,
        })
        .unwrap()
    }

    fn allowed(l: &AccessList, ip: &str) -> bool {
        l.check(ip.parse().unwrap()) == AccessVerdict::Allow
    }

    #[test]
    fn networks_parse_with_the_reason_named() {
        let n = Network::parse("10.0.0.0/8").unwrap();
        assert_eq!((n.addr, n.prefix), ("10.0.0.0".parse().unwrap(), 8));
        assert_eq!(Network::parse("192.0.2.7").unwrap().prefix, 32);
        assert_eq!(Network::parse("2001:db8::1").unwrap().prefix, 128);
        assert_eq!(Network::parse("fc00::/7").unwrap().prefix, 7);
        assert_eq!(Network::parse("0.0.0.0/0").unwrap().prefix, 0);
        assert_eq!(Network::parse("::/0").unwrap().prefix, 0);
        assert_eq!(
            Network::parse("10.0.0.0/33"),
            Err(NetworkError::PrefixTooLong(32))
        );
        assert_eq!(
            Network::parse("::/129"),
            Err(NetworkError::PrefixTooLong(128))
        );
        assert_eq!(
            Network::parse("10.0.0.0/300"),
            Err(NetworkError::PrefixTooLong(32))
        );
        assert_eq!(
            Network::parse("10.0.0.0/"),
            Err(NetworkError::PrefixNotANumber)
        );
        assert_eq!(
            Network::parse("10.0.0.0/-1"),
            Err(NetworkError::PrefixNotANumber)
        );
        assert_eq!(
            Network::parse("10.0.0.0/+8"),
            Err(NetworkError::PrefixNotANumber)
        );
        assert_eq!(Network::parse("10.0.0/8"), Err(NetworkError::Address));
        assert_eq!(Network::parse("example.com"), Err(NetworkError::Address));
        assert_eq!(Network::parse(""), Err(NetworkError::Address));
        assert_eq!(Network::parse("10.0.0.1/8"), Err(NetworkError::HostBits));
        assert_eq!(Network::parse("fc00::1/7"), Err(NetworkError::HostBits));
    }

    #[test]
    fn the_error_names_the_key_and_the_entry() {
        let e = AccessList::new(&AccessConfig {
            allow: vec!["127.0.0.0/8".into(), "::1".into(), "10.0.0.0/33".into()],
            action: AccessAction::Refuse,
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("access.allow[2]: \"10.0.0.0/33\" is not a network"),
            "{e}"
        );
    }

    #[test]
    fn ipv4_matching_at_the_edges() {
        let l = list(&["10.0.0.0/8", "192.168.1.7/32", "172.16.0.0/12"]);
        for ip in [
            "10.0.0.0",
            "10.255.255.255",
            "192.168.1.7",
            "172.16.0.1",
            "172.31.255.255",
        ] {
            assert!(allowed(&l, ip), "{ip}");
        }
        for ip in [
            "9.255.255.255",
            "11.0.0.0",
            "192.168.1.6",
            "192.168.1.8",
            "172.32.0.0",
            "127.0.0.1",
            "::1",
        ] {
            assert!(!allowed(&l, ip), "{ip}");
        }
    }

    #[test]
    fn ipv6_matching_at_the_edges() {
        let l = list(&["fc00::/7", "2001:db8::5/128", "::1"]);
        for ip in ["fc00::", "fdff:ffff::1", "2001:db8::5", "::1"] {
            assert!(allowed(&l, ip), "{ip}");
        }
        for ip in ["fbff::1", "fe00::", "2001:db8::4", "2001:db8::6", "::2"] {
            assert!(!allowed(&l, ip), "{ip}");
        }
        assert!(!allowed(&l, "127.0.0.1"), "no IPv4 network listed");
    }

    #[test]
    fn zero_prefixes_allow_a_whole_family() {
        let l = list(&["0.0.0.0/0"]);
        assert!(allowed(&l, "0.0.0.0") && allowed(&l, "255.255.255.255"));
        assert!(!allowed(&l, "2001:db8::1"));
        let l = list(&["::/0"]);
        assert!(allowed(&l, "::") && allowed(&l, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
        assert!(!allowed(&l, "10.0.0.1"));
    }

    #[test]
    fn v4_mapped_clients_are_checked_as_ipv4() {
        let l = list(&["10.0.0.0/8"]);
        assert!(allowed(&l, "::ffff:10.1.2.3"));
        assert!(!allowed(&l, "::ffff:11.1.2.3"));
        // An IPv6 list does not cover a mapped client: it is an IPv4 client.
        let l = list(&["::/0"]);
        assert!(!allowed(&l, "::ffff:10.1.2.3"));
        // A mapped network in the list is an IPv4 network.
        let l = list(&["::ffff:192.0.2.0/120"]);
        assert!(allowed(&l, "192.0.2.200") && allowed(&l, "::ffff:192.0.2.1"));
        assert!(!allowed(&l, "192.0.3.0"));
    }

    #[test]
    fn overlapping_and_adjacent_networks_merge() {
        let l = list(&["10.0.0.0/9", "10.128.0.0/9", "10.1.0.0/16", "192.0.2.0/24"]);
        assert_eq!(
            &*l.v4.0,
            &[(0x0A00_0000, 0x0AFF_FFFF), (0xC000_0200, 0xC000_02FF)]
        );
        assert!(allowed(&l, "10.200.0.1") && !allowed(&l, "11.0.0.0"));
        let l = list(&["255.255.255.255", "255.255.255.254/31"]);
        assert_eq!(&*l.v4.0, &[(u32::MAX - 1, u32::MAX)]);
        assert!(allowed(&l, "255.255.255.255"));
    }

    #[test]
    fn an_empty_list_denies_everyone_with_the_configured_action() {
        let l = AccessList::new(&AccessConfig {
            allow: vec![],
            action: AccessAction::Refuse,
        })
        .unwrap();
        assert_eq!(
            l.check("127.0.0.1".parse().unwrap()),
            AccessVerdict::Deny(AccessAction::Refuse)
        );
    }

    #[test]
    fn the_default_is_loopback_only() {
        let l = AccessList::default();
        assert!(allowed(&l, "127.0.0.1") && allowed(&l, "127.255.0.9") && allowed(&l, "::1"));
        assert!(!allowed(&l, "10.0.0.1") && !allowed(&l, "::2") && !allowed(&l, "0.0.0.0"));
        assert_eq!(l.action(), AccessAction::Refuse);
    }
}
