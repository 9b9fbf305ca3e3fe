//! Answer layout and per-client patching: walk a response once, patch copies of it
//! many times.
//!
//! [`AnswerLayout::parse`] walks a response (from an upstream, or about to be
//! cached) exactly once and records where its patchable fields sit: the end of the
//! question, the offset of every RR's TTL field (all three sections, OPT excluded),
//! the OPT record, and the facts the cache needs to pick a TTL (rcode, minimum
//! answer TTL, the negative TTL of RFC 2308 from the authority SOA).
//!
//! [`write_reply`] then turns the stored bytes into one client's reply with a copy
//! and a handful of stores at recorded offsets, never a re-encode and never an
//! allocation: the client's ID, its question-name letter case, the aged (or, for
//! serve-stale, fixed) TTLs, and an OPT record rebuilt for the client (or none).
//!
//! Invariants:
//! - The layout only holds offsets that `parse` checked against the message it
//!   walked; `write_reply` also checks every offset against `src` and `dst`, so a
//!   layout paired with the wrong message produces `0`, never a panic.
//! - The reply keeps only the bytes *before* the OPT record. Compression pointers
//!   always point backwards, so cutting a suffix never breaks a name. When OPT is
//!   the last record (the common case) nothing but the OPT is lost; when it is not,
//!   the additional records after it are dropped too (additional data is optional,
//!   and a TSIG/SIG(0) from the upstream is meaningless to our client anyway).
//! - The OPT written to an EDNS client advertises [`EDNS_UDP_SIZE`](crate::wire::EDNS_UDP_SIZE), keeps the
//!   upstream's extended rcode, version and flags (DO), and keeps only Extended DNS
//!   Error options (RFC 8914): cookies, padding, NSID and the like are hop-by-hop
//!   and belong to the upstream, not to our client.
//! - TTL fields with the top bit set are read as 0 (RFC 2181 section 8).

use smallvec::SmallVec;

mod patch;

pub use patch::write_reply;

use super::name::{read_name_lower, skip_name, MAX_NAME_LEN, MAX_POINTER_HOPS};
use super::{rtype, WireError, HEADER_LEN};

/// TC bit in the third header byte.
const TC_BIT: u8 = 0x02;

/// Length of an OPT RR without options: root name, type, class, TTL, RDLENGTH.
pub const OPT_RR_LEN: usize = 11;

/// `write_reply` never writes more than `src.len() + REPLY_HEADROOM` bytes: a `dst`
/// of that size always suffices (it may add an OPT when the stored answer has none).
pub const REPLY_HEADROOM: usize = OPT_RR_LEN;

const FLAG_TC: u8 = 1 << 0;
const FLAG_QTYPE_ANSWER: u8 = 1 << 1;
const FLAG_OPT_LAST: u8 = 1 << 2;
const FLAG_RESPONSE: u8 = 1 << 3;
const FLAG_OPT: u8 = 1 << 4;
const FLAG_ANSWER_TTL: u8 = 1 << 5;
const FLAG_NEGATIVE_TTL: u8 = 1 << 6;
const FLAG_SIGNED: u8 = 1 << 7;

/// Where a response's patchable fields sit, recorded once at insert (or when a fresh
/// upstream answer arrives).
///
/// Only [`AnswerLayout::parse`] builds one, so every offset in it lies inside the
/// message it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerLayout {
    /// Offset of the TTL field of every RR but OPT, in message order.
    ttl_offsets: SmallVec<[u16; 8]>,
    /// Length of the message the layout was parsed from.
    msg_len: u16,
    /// Offset just past the question (QTYPE and QCLASS included).
    question_end: u16,
    /// Offset just past the last record (trailing bytes are not part of replies).
    records_end: u16,
    /// Offset of the OPT RR when `FLAG_OPT` is set. (Options are folded into
    /// `flags` to keep the layout, stored in every cache entry, at 48 bytes.)
    opt_start: u16,
    /// ARCOUNT of the reply before any OPT is added: the additional records that sit
    /// before the OPT (all of them when there is no OPT).
    ar_kept: u16,
    /// ANCOUNT.
    ancount: u16,
    /// Full rcode: header RCODE plus the OPT's extended bits shifted left by 4.
    rcode: u16,
    /// Minimum TTL over the answer section, when `FLAG_ANSWER_TTL`.
    min_answer_ttl: u32,
    /// min(SOA TTL, SOA MINIMUM) over the SOAs of the authority section (RFC 2308),
    /// when `FLAG_NEGATIVE_TTL`.
    negative_ttl: u32,
    flags: u8,
}

/// What happens to the TTLs of a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlPatch {
    /// Subtract this many seconds from every TTL, flooring at 0 (cache aging;
    /// `Age(0)` for a fresh answer).
    Age(u32),
    /// Set every TTL to this value (serve-stale, RFC 8767 suggests 30).
    Set(u32),
}

/// Reads a TTL field, treating values with the top bit set as 0 (RFC 2181 section 8).
fn norm_ttl(raw: u32) -> u32 {
    if raw > i32::MAX as u32 {
        0
    } else {
        raw
    }
}

fn be16(msg: &[u8], pos: usize) -> Result<u16, WireError> {
    match msg.get(pos..pos + 2) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(WireError::Truncated),
    }
}

fn be32(msg: &[u8], pos: usize) -> Result<u32, WireError> {
    match msg.get(pos..pos + 4) {
        Some(&[a, b, c, d]) => Ok(u32::from_be_bytes([a, b, c, d])),
        _ => Err(WireError::Truncated),
    }
}

/// Converts an offset that was bounds-checked against a message of at most
/// `u16::MAX` bytes.
fn off16(pos: usize) -> Result<u16, WireError> {
    u16::try_from(pos).map_err(|_| WireError::BadCount)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Answer,
    Authority,
    Additional,
}

impl AnswerLayout {
    /// Walks `msg` once. Requires exactly one question whose name is not compressed
    /// (true of every real response) and at most one OPT, in the additional section
    /// with the root name. Bounded: every record consumes at least 11 bytes, so the
    /// walk ends after at most `msg.len() / 11` records whatever the counts claim.
    pub fn parse(msg: &[u8]) -> Result<Self, WireError> {
        if msg.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let msg_len = u16::try_from(msg.len()).map_err(|_| WireError::BadCount)?;
        let qdcount = be16(msg, 4)?;
        let ancount = be16(msg, 6)?;
        let nscount = be16(msg, 8)?;
        let arcount = be16(msg, 10)?;
        if qdcount != 1 {
            return Err(WireError::BadCount);
        }
        let mut scratch = [0u8; MAX_NAME_LEN];
        let (name_len, name_end) = read_name_lower(msg, HEADER_LEN, &mut scratch)?;
        if name_end - HEADER_LEN != name_len {
            // The question name used a compression pointer: its bytes are not all
            // in place, so the client's case could not be patched in.
            return Err(WireError::BadPointer);
        }
        let qtype = be16(msg, name_end)?;
        let question_end = name_end + 4;
        if question_end > msg.len() {
            return Err(WireError::Truncated);
        }

        let mut ttl_offsets = SmallVec::new();
        let mut opt_start = None;
        let mut ar_kept = arcount;
        let mut rcode = u16::from(msg[3] & 0x0F);
        let mut min_answer_ttl: Option<u32> = None;
        let mut negative_ttl: Option<u32> = None;
        let mut flags = 0u8;
        if msg[2] & TC_BIT != 0 {
            flags |= FLAG_TC;
        }
        if msg[2] & 0x80 != 0 {
            flags |= FLAG_RESPONSE;
        }

        let an = usize::from(ancount);
        let ns = usize::from(nscount);
        let total = an + ns + usize::from(arcount);
        let mut pos = question_end;
        let mut opt_end = 0usize;
        for i in 0..total {
            let section = if i < an {
                Section::Answer
            } else if i < an + ns {
                Section::Authority
            } else {
                Section::Additional
            };
            let rr_start = pos;
            let fixed = skip_name(msg, pos)?;
            check_unpatched(msg, rr_start, &ttl_offsets)?;
            let rtype = be16(msg, fixed)?;
            let ttl = be32(msg, fixed + 4)?;
            let rdlen = usize::from(be16(msg, fixed + 8)?);
            let rdata = fixed + 10;
            let end = rdata + rdlen;
            if end > msg.len() {
                return Err(WireError::Truncated);
            }
            if rtype == rtype::OPT {
                if section != Section::Additional || opt_start.is_some() || fixed != rr_start + 1 {
                    return Err(WireError::BadOpt);
                }
                opt_start = Some(off16(rr_start)?);
                opt_end = end;
                ar_kept = off16(i - an - ns)?;
                rcode |= ((ttl >> 24) as u16) << 4;
            } else {
                ttl_offsets.push(off16(fixed + 4)?);
                // RDATA names end inside the RDATA: read them within it.
                let upto = msg.get(..end).ok_or(WireError::Truncated)?;
                for name in rdata_names(upto, rtype, rdata, end)? {
                    check_unpatched(upto, name, &ttl_offsets)?;
                }
                let ttl = norm_ttl(ttl);
                match section {
                    Section::Answer => {
                        min_answer_ttl = Some(min_answer_ttl.map_or(ttl, |m| m.min(ttl)));
                        if rtype == qtype || qtype == rtype::ANY {
                            flags |= FLAG_QTYPE_ANSWER;
                        }
                        if rtype == rtype::RRSIG {
                            flags |= FLAG_SIGNED;
                        }
                    }
                    Section::Authority if rtype == rtype::SOA => {
                        // MNAME, RNAME, then five 32-bit fields; MINIMUM is the last.
                        let after_names = skip_name(msg, skip_name(msg, rdata)?)?;
                        if after_names + 20 != end {
                            return Err(WireError::Truncated);
                        }
                        let minimum = norm_ttl(be32(msg, end - 4)?);
                        let neg = ttl.min(minimum);
                        negative_ttl = Some(negative_ttl.map_or(neg, |m| m.min(neg)));
                    }
                    _ => {}
                }
            }
            pos = end;
        }
        if opt_start.is_some() {
            flags |= FLAG_OPT;
            if opt_end == pos {
                flags |= FLAG_OPT_LAST;
            }
        }
        if min_answer_ttl.is_some() {
            flags |= FLAG_ANSWER_TTL;
        }
        if negative_ttl.is_some() {
            flags |= FLAG_NEGATIVE_TTL;
        }
        Ok(Self {
            ttl_offsets,
            msg_len,
            question_end: off16(question_end)?,
            records_end: off16(pos)?,
            opt_start: opt_start.unwrap_or(0),
            ar_kept,
            ancount,
            rcode,
            min_answer_ttl: min_answer_ttl.unwrap_or(0),
            negative_ttl: negative_ttl.unwrap_or(0),
            flags,
        })
    }

    /// Offset just past the question section.
    pub fn question_end(&self) -> usize {
        usize::from(self.question_end)
    }

    /// Length of the (uncompressed) question name, which starts at [`HEADER_LEN`].
    pub fn qname_len(&self) -> usize {
        self.question_end() - 4 - HEADER_LEN
    }

    /// Offsets of the TTL fields of every record but OPT.
    pub fn ttl_offsets(&self) -> &[u16] {
        &self.ttl_offsets
    }

    /// Heap bytes held by the TTL offsets when they spilled out of line (for memory
    /// accounting).
    pub fn heap_bytes(&self) -> usize {
        if self.ttl_offsets.spilled() {
            self.ttl_offsets.capacity() * size_of::<u16>()
        } else {
            0
        }
    }

    /// Offset of the OPT record, if the message has one.
    pub fn opt_start(&self) -> Option<usize> {
        (self.flags & FLAG_OPT != 0).then_some(usize::from(self.opt_start))
    }

    /// Whether the OPT record is the last record (always the case for the
    /// responses of common resolvers). When it is not, replies drop the additional
    /// records that follow it.
    pub fn opt_is_last(&self) -> bool {
        self.flags & FLAG_OPT_LAST != 0
    }

    /// Full response code, extended bits from the OPT included (RFC 6891).
    pub fn rcode(&self) -> u16 {
        self.rcode
    }

    /// ANCOUNT.
    pub fn ancount(&self) -> u16 {
        self.ancount
    }

    /// Minimum TTL over the answer section, `None` when it is empty.
    pub fn min_answer_ttl(&self) -> Option<u32> {
        (self.flags & FLAG_ANSWER_TTL != 0).then_some(self.min_answer_ttl)
    }

    /// RFC 2308 negative TTL: min(SOA TTL, SOA MINIMUM) of the authority SOA
    /// (minimum over several), `None` without one.
    pub fn negative_ttl(&self) -> Option<u32> {
        (self.flags & FLAG_NEGATIVE_TTL != 0).then_some(self.negative_ttl)
    }

    /// Whether the answer section holds a record of the question's type (any record
    /// for QTYPE=ANY). NOERROR without one is NODATA.
    pub fn has_qtype_answer(&self) -> bool {
        self.flags & FLAG_QTYPE_ANSWER != 0
    }

    /// Whether the answer section carries an RRSIG (a signed answer: adding records
    /// to its RRsets would break the signatures).
    pub fn signed(&self) -> bool {
        self.flags & FLAG_SIGNED != 0
    }

    /// The TC bit.
    pub fn truncated(&self) -> bool {
        self.flags & FLAG_TC != 0
    }

    /// The QR bit: the message is a response.
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    /// Rewrites every TTL of `msg` (the message this layout was parsed from) to
    /// `ttl.max(lo).min(hi)`; `hi` wins if `lo > hi`. Used at insert so that no
    /// record outlives its cache entry. Offsets outside `msg` are skipped.
    pub fn clamp_ttls(&self, msg: &mut [u8], lo: u32, hi: u32) {
        for &off in &self.ttl_offsets {
            let off = usize::from(off);
            if let Some(field) = msg.get_mut(off..off + 4) {
                let ttl = norm_ttl(u32::from_be_bytes([field[0], field[1], field[2], field[3]]));
                field.copy_from_slice(&ttl.max(lo).min(hi).to_be_bytes());
            }
        }
    }
}

/// Offsets of the domain names inside the RDATA of the types that carry them
/// (RFC 1035 3.3, RFC 2782, RFC 6672); other types are opaque here.
fn rdata_names(
    msg: &[u8],
    rtype: u16,
    rdata: usize,
    end: usize,
) -> Result<SmallVec<[usize; 2]>, WireError> {
    let mut names = SmallVec::new();
    if rdata >= end {
        return Ok(names);
    }
    match rtype {
        // NS, CNAME, PTR, DNAME
        2 | 5 | 12 | 39 => names.push(rdata),
        // MX: preference, exchange
        15 if rdata + 2 < end => names.push(rdata + 2),
        // SRV: priority, weight, port, target
        33 if rdata + 6 < end => names.push(rdata + 6),
        // SOA: MNAME, RNAME
        rtype::SOA => {
            names.push(rdata);
            names.push(skip_name(msg, rdata)?);
        }
        _ => {}
    }
    Ok(names)
}

/// Refuses a name whose compression pointers point forward, or whose labels or
/// pointers lead into bytes that [`write_reply`] changes per client: the header
/// (ID, flags, ARCOUNT) or a TTL recorded so far. Such a name reads differently once patched, so the reply would
/// no longer decode. Sane servers never do this; a broken or hostile one could, and
/// it must not get a malformed answer cached.
fn check_unpatched(msg: &[u8], pos: usize, ttl_offsets: &[u16]) -> Result<(), WireError> {
    let patched = |from: usize, len: usize| {
        from < HEADER_LEN
            || ttl_offsets.iter().any(|&t| {
                let t = usize::from(t);
                from < t + 4 && t < from + len
            })
    };
    let mut cursor = pos;
    // Bytes reached through a pointer must all lie before that pointer, so the name
    // reads the same from any copy that keeps the message up to its own position.
    let mut limit = msg.len();
    for _ in 0..=MAX_POINTER_HOPS {
        loop {
            let len = usize::from(*msg.get(cursor).ok_or(WireError::Truncated)?);
            match len & 0xC0 {
                0x00 => {
                    if cursor + 1 + len > limit {
                        return Err(WireError::BadPointer);
                    }
                    if patched(cursor, 1 + len) {
                        return Err(WireError::BadPointer);
                    }
                    if len == 0 {
                        return Ok(());
                    }
                    cursor += 1 + len;
                }
                0xC0 => {
                    if cursor + 2 > limit || patched(cursor, 2) {
                        return Err(WireError::BadPointer);
                    }
                    let low = usize::from(*msg.get(cursor + 1).ok_or(WireError::Truncated)?);
                    let target = ((len & 0x3F) << 8) | low;
                    // Strictly backwards: a forward pointer may lead past the records
                    // into bytes a reply does not carry.
                    if target >= cursor {
                        return Err(WireError::BadPointer);
                    }
                    limit = cursor;
                    cursor = target;
                    break;
                }
                _ => return Err(WireError::BadLabel),
            }
        }
    }
    Err(WireError::BadPointer)
}

#[cfg(test)]
pub(crate) mod tests;
