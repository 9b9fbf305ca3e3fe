//! The addresses each upstream serves for a name: upstream `i` answers name `n`
//! with A records 198.18.i.x and AAAA records 2001:db8:0:i::x, x derived from a
//! hash of `n`, so a merged answer shows which upstreams it holds.

use super::spec::UpstreamSpec;
use crate::dns;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A stable hash of a name (lowercased, with the final dot).
pub fn name_hash(name: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let lower = name.to_ascii_lowercase();
    let n = if lower.ends_with('.') {
        lower
    } else {
        format!("{lower}.")
    };
    n.hash(&mut h);
    h.finish()
}

/// The addresses upstream `index` serves for a name (both families).
pub fn addresses_for(index: usize, hash: u64, count: u8) -> Vec<IpAddr> {
    let mut v = Vec::with_capacity(2 * count as usize);
    for k in 0..u64::from(count) {
        let x = (hash.wrapping_add(k.wrapping_mul(0x9E37_79B9)) % 253 + 1) as u8;
        let x = if k > 0
            && v.iter()
                .any(|a| matches!(a, IpAddr::V4(o) if o.octets()[3] == x))
        {
            ((u64::from(x) + k) % 253 + 1) as u8
        } else {
            x
        };
        v.push(IpAddr::V4(Ipv4Addr::new(198, 18, index as u8, x)));
        v.push(IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            index as u16,
            0,
            0,
            (hash >> 16) as u16,
            u16::from(x),
        )));
    }
    v
}

/// The union of the addresses of every upstream for a name and type.
pub fn union_for(specs: &[UpstreamSpec], name: &str, qtype: u16) -> Vec<IpAddr> {
    let h = name_hash(name);
    let mut all: Vec<IpAddr> = specs
        .iter()
        .enumerate()
        .flat_map(|(i, s)| addresses_for(i, h, s.addrs))
        .filter(|a| match qtype {
            dns::TYPE_A => a.is_ipv4(),
            dns::TYPE_AAAA => a.is_ipv6(),
            _ => false,
        })
        .collect();
    all.sort();
    all.dedup();
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_upstream_has_its_own_addresses() {
        let specs = vec![UpstreamSpec::fixed(Duration::ZERO); 5];
        let u = union_for(&specs, "a.test.", dns::TYPE_A);
        assert_eq!(u.len(), 10, "5 upstreams x 2 distinct addresses");
        assert_eq!(union_for(&specs, "A.TEST", dns::TYPE_AAAA).len(), 10);
        let a0 = addresses_for(0, name_hash("a.test."), 2);
        let a1 = addresses_for(1, name_hash("a.test."), 2);
        assert!(a0.iter().all(|a| !a1.contains(a)));
        assert_eq!(a0, addresses_for(0, name_hash("a.test"), 2), "stable");
    }
}
