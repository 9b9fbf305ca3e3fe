//! The cache key, borrowed ([`KeyRef`], built from a parsed query without
//! allocation) and owned ([`Key`], held by a flight), and the one hash every table
//! partitions by: the cache and the singleflight table.
//!
//! The key is (lowercased qname, qtype, qclass, DO, CD). It is never stored as such:
//! an entry's name, qtype and qclass are its stored answer's question (lowercased at
//! insert), and DO/CD are two flag bits, so an entry holds the name once.

use ahash::RandomState;
use std::sync::OnceLock;

use crate::wire::reader::QueryView;

/// Borrowed key, built from a parsed query without allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRef<'a> {
    /// The question name in uncompressed wire form, ASCII-lowercased.
    pub qname_lower: &'a [u8],
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
    /// The query's DO bit (RFC 3225): answers with and without DNSSEC records differ.
    pub dnssec_ok: bool,
    /// The query's CD bit: an answer the upstream did not validate must not serve a
    /// client that asked for validation.
    pub checking_disabled: bool,
}

/// Owned key, the same parts as [`KeyRef`]: what a flight holds for its whole life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The question name in uncompressed wire form, ASCII-lowercased.
    pub qname_lower: Box<[u8]>,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
    /// DO bit.
    pub dnssec_ok: bool,
    /// CD bit.
    pub checking_disabled: bool,
}

impl Key {
    /// Borrows it as a [`KeyRef`].
    pub fn key_ref(&self) -> KeyRef<'_> {
        KeyRef {
            qname_lower: &self.qname_lower,
            qtype: self.qtype,
            qclass: self.qclass,
            dnssec_ok: self.dnssec_ok,
            checking_disabled: self.checking_disabled,
        }
    }
}

/// Flag bit for DO in an entry's key flags.
pub(super) const KEY_DO: u8 = 1 << 0;
/// Flag bit for CD in an entry's key flags.
pub(super) const KEY_CD: u8 = 1 << 1;
/// Both key flag bits.
pub(super) const KEY_MASK: u8 = KEY_DO | KEY_CD;

/// The per-process hasher state: random keys (DoS resistance against chosen names),
/// fixed for the life of the process so every cache and table agrees on a hash.
fn state() -> &'static RandomState {
    static STATE: OnceLock<RandomState> = OnceLock::new();
    STATE.get_or_init(RandomState::new)
}

/// Hash of the key parts, as stored entries recompute it from their wire question.
pub(super) fn hash_parts(qname_lower: &[u8], qtype: u16, qclass: u16, flags: u8) -> u64 {
    state().hash_one((qname_lower, qtype, qclass, flags & KEY_MASK))
}

impl<'a> KeyRef<'a> {
    /// The key of a parsed client query: its lowercased name, QTYPE, QCLASS, and the
    /// DO (from its EDNS) and CD (header) bits. Borrows the view; no allocation.
    pub fn from_query(q: &'a QueryView<'_>) -> Self {
        Self {
            qname_lower: q.qname_lower(),
            qtype: q.qtype,
            qclass: q.qclass,
            dnssec_ok: q.dnssec_ok(),
            checking_disabled: q.header.cd(),
        }
    }

    /// An owned copy (one allocation, for the name).
    pub fn to_key(&self) -> Key {
        Key {
            qname_lower: self.qname_lower.into(),
            qtype: self.qtype,
            qclass: self.qclass,
            dnssec_ok: self.dnssec_ok,
            checking_disabled: self.checking_disabled,
        }
    }

    /// The DO and CD bits as entry key flags.
    pub(super) fn flags(&self) -> u8 {
        (if self.dnssec_ok { KEY_DO } else { 0 })
            | (if self.checking_disabled { KEY_CD } else { 0 })
    }

    /// The 64-bit key hash (per-process random keys, so a client cannot choose names
    /// that collide), the same for every table that asks: the cache and the
    /// singleflight table partition and look up by it.
    pub fn hash(&self) -> u64 {
        hash_parts(self.qname_lower, self.qtype, self.qclass, self.flags())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_query_takes_do_and_cd() {
        // ID 1, RD+CD, one question WwW.Example. A IN, an OPT with DO.
        let mut q = b"\x00\x01\x01\x10\x00\x01\x00\x00\x00\x00\x00\x01".to_vec();
        q.extend_from_slice(b"\x03WwW\x07Example\x00\x00\x01\x00\x01");
        q.extend_from_slice(b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00");
        let view = QueryView::parse(&q).unwrap();
        let k = KeyRef::from_query(&view);
        assert_eq!(k.qname_lower, b"\x03www\x07example\x00");
        assert_eq!(
            (k.qtype, k.qclass, k.dnssec_ok, k.checking_disabled),
            (1, 1, true, true)
        );
    }

    #[test]
    fn every_part_changes_the_hash() {
        let k = KeyRef {
            qname_lower: b"\x03www\x07example\x03com\x00",
            qtype: 1,
            qclass: 1,
            dnssec_ok: false,
            checking_disabled: false,
        };
        let h = k.hash();
        assert_eq!(h, k.hash());
        let variants = [
            KeyRef { qtype: 28, ..k },
            KeyRef { qclass: 3, ..k },
            KeyRef {
                dnssec_ok: true,
                ..k
            },
            KeyRef {
                checking_disabled: true,
                ..k
            },
            KeyRef {
                qname_lower: b"\x03www\x07example\x03org\x00",
                ..k
            },
        ];
        for v in variants {
            assert_ne!(v.hash(), h, "{v:?}");
        }
    }
}
