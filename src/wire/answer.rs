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
//! - The OPT written to an EDNS client advertises [`EDNS_UDP_SIZE`], keeps the
//!   upstream's extended rcode, version and flags (DO), and keeps only Extended DNS
//!   Error options (RFC 8914): cookies, padding, NSID and the like are hop-by-hop
//!   and belong to the upstream, not to our client.
//! - TTL fields with the top bit set are read as 0 (RFC 2181 section 8).

use smallvec::SmallVec;

use super::name::{read_name_lower, skip_name, MAX_NAME_LEN, MAX_POINTER_HOPS};
use super::{ReplyTarget, WireError, EDNS_UDP_SIZE, HEADER_LEN};

const TYPE_SOA: u16 = 6;
const TYPE_OPT: u16 = 41;
const TYPE_ANY: u16 = 255;
const OPT_CODE_EDE: u16 = 15;
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
            if rtype == TYPE_OPT {
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
                        if rtype == qtype || qtype == TYPE_ANY {
                            flags |= FLAG_QTYPE_ANSWER;
                        }
                    }
                    Section::Authority if rtype == TYPE_SOA => {
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

/// Iterates over the options of an OPT RDATA that survive into a client's reply
/// (Extended DNS Errors), each as its full TLV bytes. Stops at the first malformed
/// option.
#[derive(Clone)]
struct KeptOptions<'a> {
    rdata: &'a [u8],
}

impl<'a> Iterator for KeptOptions<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            let (code, len) = match self.rdata {
                [c0, c1, l0, l1, ..] => (
                    u16::from_be_bytes([*c0, *c1]),
                    usize::from(u16::from_be_bytes([*l0, *l1])),
                ),
                _ => return None,
            };
            let Some(option) = self.rdata.get(..4 + len) else {
                self.rdata = &[];
                return None;
            };
            self.rdata = &self.rdata[4 + len..];
            if code == OPT_CODE_EDE {
                return Some(option);
            }
        }
    }
}

/// The RDATA of the OPT record at `opt` in `src`, empty if malformed.
fn opt_rdata(src: &[u8], opt: usize) -> &[u8] {
    let Ok(rdlen) = be16(src, opt + 9) else {
        return &[];
    };
    src.get(opt + OPT_RR_LEN..opt + OPT_RR_LEN + usize::from(rdlen))
        .unwrap_or(&[])
}

/// Writes an OPT RR at the start of `out` (which must hold `OPT_RR_LEN` plus the
/// options): root name, type 41, our UDP size, `ttl` bytes, then `options`.
fn write_opt<'a>(
    out: &mut [u8],
    ttl: [u8; 4],
    options: impl Iterator<Item = &'a [u8]> + Clone,
) -> Option<()> {
    let rdlen: usize = options.clone().map(<[u8]>::len).sum();
    let head = out.get_mut(..OPT_RR_LEN)?;
    head[0] = 0;
    head[1..3].copy_from_slice(&TYPE_OPT.to_be_bytes());
    head[3..5].copy_from_slice(&EDNS_UDP_SIZE.to_be_bytes());
    head[5..9].copy_from_slice(&ttl);
    head[9..11].copy_from_slice(&u16::try_from(rdlen).ok()?.to_be_bytes());
    let mut pos = OPT_RR_LEN;
    for option in options {
        out.get_mut(pos..pos + option.len())?
            .copy_from_slice(option);
        pos += option.len();
    }
    Some(())
}

/// Copies `src` into `dst` for one client and patches it: the ID, the question-name
/// letter case (`target.qname`, which must be the stored name up to ASCII case), the
/// TTLs per `ttl`, and the OPT record: dropped (ARCOUNT adjusted) when the client
/// sent no EDNS; otherwise rewritten with our UDP size [`EDNS_UDP_SIZE`] and only
/// EDE options, or added when `src` had none.
///
/// When that reply would exceed `target.max_size`, writes instead a truncated reply:
/// the header with TC=1, the question, no records, plus a bare OPT for an EDNS
/// client. That reply is written even if it still exceeds `max_size` (nothing
/// smaller is possible).
///
/// Returns the reply length, or 0 when `dst` is too small, `src` is not the message
/// `layout` was parsed from, or `target.qname` is not the question name.
/// A `dst` of `src.len() + REPLY_HEADROOM` bytes always suffices. Never allocates,
/// never panics.
pub fn write_reply(
    dst: &mut [u8],
    src: &[u8],
    layout: &AnswerLayout,
    target: &ReplyTarget<'_>,
    ttl: TtlPatch,
) -> usize {
    write_reply_inner(dst, src, layout, target, ttl).unwrap_or(0)
}

fn write_reply_inner(
    dst: &mut [u8],
    src: &[u8],
    layout: &AnswerLayout,
    target: &ReplyTarget<'_>,
    ttl: TtlPatch,
) -> Option<usize> {
    if src.len() != usize::from(layout.msg_len) {
        return None;
    }
    let qname_end = layout.question_end().checked_sub(4)?;
    let stored_qname = src.get(HEADER_LEN..qname_end)?;
    if !stored_qname.eq_ignore_ascii_case(target.qname) {
        return None;
    }
    let body_end = layout
        .opt_start()
        .unwrap_or(usize::from(layout.records_end));
    let src_opt = layout.opt_start();
    let kept = KeptOptions {
        rdata: src_opt.map_or(&[][..], |opt| opt_rdata(src, opt)),
    };
    let opt_len = match target.edns {
        Some(_) => OPT_RR_LEN + kept.clone().map(<[u8]>::len).sum::<usize>(),
        None => 0,
    };
    let full_len = body_end + opt_len;
    if full_len > target.max_size {
        return write_truncated(dst, src, layout, target);
    }

    let out = dst.get_mut(..full_len)?;
    out.get_mut(..body_end)?
        .copy_from_slice(src.get(..body_end)?);
    out[..2].copy_from_slice(&target.id.to_be_bytes());
    patch_flags(out, target);
    out.get_mut(HEADER_LEN..qname_end)?
        .copy_from_slice(target.qname);
    for &off in &layout.ttl_offsets {
        let off = usize::from(off);
        if off + 4 > body_end {
            continue;
        }
        let field = &mut out[off..off + 4];
        let new = match ttl {
            TtlPatch::Age(age) => {
                norm_ttl(u32::from_be_bytes([field[0], field[1], field[2], field[3]]))
                    .saturating_sub(age)
            }
            TtlPatch::Set(value) => value,
        };
        field.copy_from_slice(&new.to_be_bytes());
    }
    let arcount = layout.ar_kept + u16::from(opt_len > 0);
    out[10..12].copy_from_slice(&arcount.to_be_bytes());
    if let Some(edns) = target.edns {
        let ttl_bytes = match src_opt {
            Some(opt) => {
                let t = src.get(opt + 5..opt + 9)?;
                [t[0], t[1], t[2], t[3]]
            }
            None => [0, 0, if edns.dnssec_ok { 0x80 } else { 0 }, 0],
        };
        write_opt(&mut out[body_end..], ttl_bytes, kept)?;
    }
    Some(full_len)
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
        TYPE_SOA => {
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

/// Header bits that are ours or the client's, not the stored answer's: RD and CD
/// echoed (RFC 1035 4.1.1, RFC 4035 3.2.2); AD cleared unless the client asked for
/// it with AD or DO (RFC 6840 5.8); RA set (we recurse for the client) and AA
/// cleared (we are not the authority, whatever the upstream was). `out` holds at
/// least the header.
fn patch_flags(out: &mut [u8], target: &ReplyTarget<'_>) {
    const AA: u8 = 0x04;
    const RD: u8 = 0x01;
    const RA: u8 = 0x80;
    const AD: u8 = 0x20;
    const CD: u8 = 0x10;
    let [client_hi, client_lo] = target.flags.to_be_bytes();
    out[2] = (out[2] & !(RD | AA)) | (client_hi & RD);
    let wants_ad = client_lo & AD != 0 || target.edns.is_some_and(|e| e.dnssec_ok);
    let ad = if wants_ad { out[3] & AD } else { 0 };
    out[3] = (out[3] & !(AD | CD)) | RA | ad | (client_lo & CD);
}

/// The TC=1 reply: header, question, and a bare OPT for an EDNS client.
fn write_truncated(
    dst: &mut [u8],
    src: &[u8],
    layout: &AnswerLayout,
    target: &ReplyTarget<'_>,
) -> Option<usize> {
    let qend = layout.question_end();
    let qname_end = qend.checked_sub(4)?;
    let opt_len = if target.edns.is_some() { OPT_RR_LEN } else { 0 };
    let out = dst.get_mut(..qend + opt_len)?;
    out.get_mut(..qend)?.copy_from_slice(src.get(..qend)?);
    out[..2].copy_from_slice(&target.id.to_be_bytes());
    patch_flags(out, target);
    out[2] |= TC_BIT;
    out[4..6].copy_from_slice(&1u16.to_be_bytes());
    out[6..10].fill(0);
    out[10..12].copy_from_slice(&u16::from(opt_len > 0).to_be_bytes());
    out.get_mut(HEADER_LEN..qname_end)?
        .copy_from_slice(target.qname);
    if let Some(edns) = target.edns {
        let ttl_bytes = match layout.opt_start() {
            Some(opt) => {
                let t = src.get(opt + 5..opt + 9)?;
                [t[0], t[1], t[2], t[3]]
            }
            None => [0, 0, if edns.dnssec_ok { 0x80 } else { 0 }, 0],
        };
        write_opt(&mut out[qend..], ttl_bytes, std::iter::empty())?;
    }
    Some(qend + opt_len)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::{Edns, PLAIN_UDP_MAX};
    use hickory_proto::op::{Edns as HEdns, Message, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
    use hickory_proto::rr::rdata::{A, CNAME, SOA};
    use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
    use std::net::Ipv4Addr;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    pub(crate) fn a(owner: &str, ttl: u32, last: u8) -> Record {
        Record::from_rdata(
            name(owner),
            ttl,
            RData::A(A(Ipv4Addr::new(192, 0, 2, last))),
        )
    }

    pub(crate) fn cname(owner: &str, ttl: u32, target: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
    }

    pub(crate) fn soa(zone: &str, ttl: u32, minimum: u32) -> Record {
        let rdata = SOA::new(
            name(&format!("ns1.{zone}")),
            name(&format!("hostmaster.{zone}")),
            2024010101,
            7200,
            3600,
            1209600,
            minimum,
        );
        Record::from_rdata(name(zone), ttl, RData::SOA(rdata))
    }

    /// A response to `qname`/`qtype` with the given sections, optionally with an OPT
    /// (DO bit and options).
    pub(crate) fn response(
        qname: &str,
        qtype: RecordType,
        rcode: ResponseCode,
        answers: Vec<Record>,
        authorities: Vec<Record>,
        opt: Option<(bool, Vec<EdnsOption>)>,
    ) -> Vec<u8> {
        let mut msg = Message::response(0x1234, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.metadata.recursion_available = true;
        msg.metadata.response_code = rcode;
        let mut q = Query::query(name(qname), qtype);
        q.query_class = DNSClass::IN;
        msg.add_query(q);
        msg.add_answers(answers);
        msg.add_authorities(authorities);
        if let Some((dnssec_ok, options)) = opt {
            let mut edns = HEdns::new();
            edns.set_max_payload(4096);
            edns.set_dnssec_ok(dnssec_ok);
            for o in options {
                edns.options_mut().insert(o);
            }
            msg.set_edns(edns);
        }
        msg.to_vec().unwrap()
    }

    fn target<'a>(qname: &'a [u8], edns: Option<Edns>, max_size: usize) -> ReplyTarget<'a> {
        ReplyTarget {
            id: 0xBEEF,
            flags: 0x0100,
            qname,
            edns,
            max_size,
        }
    }

    const EDNS: Option<Edns> = Some(Edns {
        udp_size: 1232,
        dnssec_ok: false,
        version: 0,
    });

    fn patch(src: &[u8], t: &ReplyTarget<'_>, ttl: TtlPatch) -> (Vec<u8>, Message) {
        let layout = AnswerLayout::parse(src).unwrap();
        let mut dst = vec![0u8; src.len() + REPLY_HEADROOM];
        let n = write_reply(&mut dst, src, &layout, t, ttl);
        assert!(n > 0, "write_reply failed");
        dst.truncate(n);
        let msg = Message::from_vec(&dst).unwrap();
        (dst, msg)
    }

    const WWW_MIXED: &[u8] = b"\x03WwW\x07ExAmPle\x03COM\x00";

    fn unhex(h: &str) -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn names_pointing_into_patched_bytes_are_refused() {
        // Found by fuzz/answer_layout: hickory decodes each of these, but a name's
        // pointer leads into a TTL (first two) or the header (third), so the reply
        // would stop decoding once TTLs or ARCOUNT are patched.
        for (hex, what) in [
            ("12348180000100020000000001610000010001c00c00010001000001000004c0000201c01c000100010000003c0004c0000202", "owner into a TTL"),
            ("678981800001000000000004076578616d706c65036f726700013b9aca002b001c0001003e00000100c00c00020001000151800006036e7331c00cc0250001000105000e100004c03b9aca002b001c0001003e00000100", "rdata name into a TTL"),
            ("3456818000010001000100000377777700001c0001c005000c00010000019700110363646e076578616d706c65036e657400c03100060001000002580027036e7331c0320a686f73746d6173746572c031783456013aa3f175fffff70000000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff000001070000", "owner into the header"),
        ] {
            let msg = unhex(hex);
            assert!(Message::from_vec(&msg).is_ok(), "{what}: a decodable input");
            assert_eq!(AnswerLayout::parse(&msg).err(), Some(WireError::BadPointer), "{what}");
        }
        // Ordinary compression (owners and CNAME/SOA targets pointing at names) is fine.
        let ok = chain();
        assert!(AnswerLayout::parse(&ok).is_ok());
    }

    #[test]
    fn client_flags_are_echoed_and_ad_needs_ad_or_do() {
        let mut src = response(
            "www.example.com.",
            RecordType::A,
            ResponseCode::NoError,
            vec![a("www.example.com.", 60, 1)],
            vec![],
            None,
        );
        src[3] |= 0x20; // upstream said AD
        src[2] |= 0x04; // and AA
        src[3] &= !0x80; // without RA
        let plain = target(WWW_MIXED, None, 512);
        let (bytes, msg) = patch(&src, &ReplyTarget { flags: 0, ..plain }, TtlPatch::Age(0));
        assert!(!msg.metadata.recursion_desired, "RD echoed from the client");
        assert!(!msg.metadata.authentic_data, "no AD without AD or DO");
        assert!(msg.metadata.recursion_available && !msg.metadata.authoritative);
        assert_eq!(bytes[3] & 0x10, 0);
        let (_, msg) = patch(
            &src,
            &ReplyTarget {
                flags: 0x0120,
                ..plain
            },
            TtlPatch::Age(0),
        );
        assert!(msg.metadata.recursion_desired && msg.metadata.authentic_data);
        let do_edns = Some(Edns {
            dnssec_ok: true,
            ..EDNS.unwrap()
        });
        let (bytes, msg) = patch(
            &src,
            &ReplyTarget {
                flags: 0x0110,
                ..target(WWW_MIXED, do_edns, 1232)
            },
            TtlPatch::Age(0),
        );
        assert!(msg.metadata.authentic_data, "DO asks for AD");
        assert_eq!(bytes[3] & 0x10, 0x10, "CD echoed");
        // Truncated replies get the same treatment.
        let layout = AnswerLayout::parse(&src).unwrap();
        let mut dst = vec![0u8; src.len() + REPLY_HEADROOM];
        let tiny = ReplyTarget {
            flags: 0,
            max_size: 20,
            ..plain
        };
        let n = write_reply(&mut dst, &src, &layout, &tiny, TtlPatch::Age(0));
        assert!(n > 0 && dst[2] & 0x02 != 0, "TC set");
        assert_eq!((dst[2] & 0x01, dst[3] & 0x20), (0, 0));
    }

    fn chain() -> Vec<u8> {
        response(
            "www.example.com.",
            RecordType::A,
            ResponseCode::NoError,
            vec![
                cname("www.example.com.", 300, "cdn.example.net."),
                a("cdn.example.net.", 60, 1),
                a("cdn.example.net.", 120, 2),
            ],
            vec![],
            Some((false, vec![])),
        )
    }

    #[test]
    fn layout_is_small() {
        // stored in every cache entry
        assert!(
            size_of::<AnswerLayout>() <= 48,
            "{}",
            size_of::<AnswerLayout>()
        );
    }

    #[test]
    fn layout_of_cname_chain_with_opt() {
        let src = chain();
        let l = AnswerLayout::parse(&src).unwrap();
        assert_eq!(l.question_end(), 12 + 17 + 4);
        assert_eq!(l.qname_len(), 17);
        assert_eq!(l.ttl_offsets().len(), 3);
        assert_eq!(l.ancount(), 3);
        assert_eq!(l.min_answer_ttl(), Some(60));
        assert!(l.has_qtype_answer());
        assert_eq!(l.rcode(), 0);
        assert_eq!(l.negative_ttl(), None);
        assert_eq!(l.opt_start(), Some(src.len() - OPT_RR_LEN));
        assert!(l.opt_is_last());
        assert!(l.is_response());
        assert!(!l.truncated());
        // every offset points at the TTL we expect
        let ttls: Vec<u32> = l
            .ttl_offsets()
            .iter()
            .map(|&o| be32(&src, usize::from(o)).unwrap())
            .collect();
        assert_eq!(ttls, vec![300, 60, 120]);
    }

    #[test]
    fn patches_id_case_and_ages_ttls() {
        let src = chain();
        let t = target(WWW_MIXED, None, PLAIN_UDP_MAX);
        let (out, msg) = patch(&src, &t, TtlPatch::Age(100));
        assert_eq!(msg.metadata.id, 0xBEEF);
        assert_eq!(&out[12..12 + WWW_MIXED.len()], WWW_MIXED);
        let ttls: Vec<u32> = msg.answers.iter().map(|r| r.ttl).collect();
        assert_eq!(ttls, vec![200, 0, 20]);
        // the CNAME owner is compressed to the question: it shows the client's case
        assert_eq!(msg.answers[0].name.to_ascii(), "WwW.ExAmPle.COM.");
        assert!(msg.metadata.recursion_available);
        assert_eq!(msg.answers.len(), 3);
    }

    #[test]
    fn set_ttl_for_serve_stale() {
        let src = chain();
        let t = target(WWW_MIXED, EDNS, 1232);
        let (_, msg) = patch(&src, &t, TtlPatch::Set(30));
        assert!(msg.answers.iter().all(|r| r.ttl == 30));
    }

    #[test]
    fn strips_opt_without_client_edns_and_keeps_it_with() {
        let src = chain();
        let t = target(WWW_MIXED, None, PLAIN_UDP_MAX);
        let (out, msg) = patch(&src, &t, TtlPatch::Age(0));
        assert!(msg.edns.is_none());
        assert_eq!(out.len(), src.len() - OPT_RR_LEN);
        assert_eq!(be16(&out, 10), Ok(0));

        let t = target(WWW_MIXED, EDNS, 1232);
        let (out, msg) = patch(&src, &t, TtlPatch::Age(0));
        let edns = msg.edns.expect("OPT kept");
        assert_eq!(edns.max_payload(), EDNS_UDP_SIZE);
        assert_eq!(out.len(), src.len());
        assert_eq!(be16(&out, 10), Ok(1));
    }

    #[test]
    fn adds_opt_for_edns_client_when_stored_answer_has_none() {
        let src = response(
            "www.example.com.",
            RecordType::A,
            ResponseCode::NoError,
            vec![a("www.example.com.", 60, 1)],
            vec![],
            None,
        );
        let edns = Some(Edns {
            udp_size: 4096,
            dnssec_ok: true,
            version: 0,
        });
        let (out, msg) = patch(&src, &target(WWW_MIXED, edns, 4096), TtlPatch::Age(0));
        assert_eq!(out.len(), src.len() + OPT_RR_LEN);
        let e = msg.edns.expect("OPT added");
        assert_eq!(e.max_payload(), EDNS_UDP_SIZE);
        assert!(e.flags().dnssec_ok);
    }

    #[test]
    fn keeps_dnssec_ok_and_ede_but_drops_other_options() {
        let src = response(
            "www.example.com.",
            RecordType::A,
            ResponseCode::NoError,
            vec![a("www.example.com.", 60, 1)],
            vec![],
            Some((
                true,
                vec![
                    EdnsOption::Unknown(10, vec![1, 2, 3, 4, 5, 6, 7, 8]), // COOKIE
                    EdnsOption::Unknown(15, vec![0, 3]),                   // EDE 3: stale
                    EdnsOption::Unknown(12, vec![0; 16]),                  // padding
                ],
            )),
        );
        let (out, msg) = patch(&src, &target(WWW_MIXED, EDNS, 1232), TtlPatch::Age(0));
        let e = msg.edns.unwrap();
        assert!(e.flags().dnssec_ok);
        let codes: Vec<u16> = e
            .options()
            .options
            .iter()
            .map(|(c, _)| u16::from(*c))
            .collect();
        assert_eq!(codes, vec![15]);
        assert_eq!(out.len(), src.len() - 12 - 20);
        assert_eq!(
            e.option(EdnsCode::from(15)),
            Some(&EdnsOption::Unknown(15, vec![0, 3]))
        );
    }

    #[test]
    fn nxdomain_with_soa() {
        let src = response(
            "nope.example.com.",
            RecordType::A,
            ResponseCode::NXDomain,
            vec![],
            vec![soa("example.com.", 900, 300)],
            Some((false, vec![])),
        );
        let l = AnswerLayout::parse(&src).unwrap();
        assert_eq!(l.rcode(), 3);
        assert_eq!(l.negative_ttl(), Some(300));
        assert_eq!(l.min_answer_ttl(), None);
        assert!(!l.has_qtype_answer());
        let qname = b"\x04NOPE\x07example\x03com\x00";
        let (_, msg) = patch(&src, &target(qname, None, 512), TtlPatch::Age(10));
        assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(msg.authorities[0].ttl, 890);
        // SOA TTL smaller than MINIMUM wins
        let src = response(
            "nope.example.com.",
            RecordType::A,
            ResponseCode::NXDomain,
            vec![],
            vec![soa("example.com.", 60, 300)],
            None,
        );
        assert_eq!(AnswerLayout::parse(&src).unwrap().negative_ttl(), Some(60));
    }

    #[test]
    fn nodata_has_no_qtype_answer() {
        let src = response(
            "www.example.com.",
            RecordType::AAAA,
            ResponseCode::NoError,
            vec![cname("www.example.com.", 300, "cdn.example.net.")],
            vec![soa("example.net.", 600, 120)],
            None,
        );
        let l = AnswerLayout::parse(&src).unwrap();
        assert!(!l.has_qtype_answer());
        assert_eq!(l.negative_ttl(), Some(120));
        assert_eq!(l.min_answer_ttl(), Some(300));
    }

    /// Appends an A record after the OPT (which hickory puts last) and bumps ARCOUNT.
    fn with_record_after_opt(mut src: Vec<u8>) -> Vec<u8> {
        src.extend_from_slice(b"\xC0\x0C\x00\x01\x00\x01\x00\x00\x00\x3C\x00\x04\xC6\x33\x64\x07");
        let ar = be16(&src, 10).unwrap() + 1;
        src[10..12].copy_from_slice(&ar.to_be_bytes());
        src
    }

    #[test]
    fn opt_not_last_drops_the_records_after_it() {
        let base = chain();
        let src = with_record_after_opt(base.clone());
        let l = AnswerLayout::parse(&src).unwrap();
        assert!(!l.opt_is_last());
        assert_eq!(l.opt_start(), Some(base.len() - OPT_RR_LEN));
        assert_eq!(l.ttl_offsets().len(), 4);
        for edns in [None, EDNS] {
            let (_, msg) = patch(&src, &target(WWW_MIXED, edns, 1232), TtlPatch::Age(1));
            assert_eq!(msg.edns.is_some(), edns.is_some());
            assert!(msg.additionals.is_empty());
            assert_eq!(msg.answers.len(), 3);
        }
    }

    fn big_answer(n: u8) -> Vec<u8> {
        let answers = (0..n).map(|i| a("www.example.com.", 60, i)).collect();
        response(
            "www.example.com.",
            RecordType::A,
            ResponseCode::NoError,
            answers,
            vec![],
            Some((false, vec![EdnsOption::Unknown(15, vec![0, 3])])),
        )
    }

    #[test]
    fn truncates_at_512_without_edns() {
        let src = big_answer(40);
        assert!(src.len() > PLAIN_UDP_MAX && src.len() < 1232);
        let (out, msg) = patch(
            &src,
            &target(WWW_MIXED, None, PLAIN_UDP_MAX),
            TtlPatch::Age(0),
        );
        assert!(msg.metadata.truncation);
        assert_eq!(msg.metadata.id, 0xBEEF);
        assert!(msg.answers.is_empty() && msg.additionals.is_empty());
        assert!(msg.edns.is_none());
        assert_eq!(msg.queries.len(), 1);
        assert_eq!(&out[12..12 + WWW_MIXED.len()], WWW_MIXED);
        assert_eq!(out.len(), 12 + WWW_MIXED.len() + 4);

        // the same answer fits an EDNS client
        let (_, msg) = patch(&src, &target(WWW_MIXED, EDNS, 1232), TtlPatch::Age(0));
        assert!(!msg.metadata.truncation);
        assert_eq!(msg.answers.len(), 40);

        // an EDNS client with a small buffer gets TC and a bare OPT
        let (out, msg) = patch(&src, &target(WWW_MIXED, EDNS, 512), TtlPatch::Age(0));
        assert!(msg.metadata.truncation);
        assert!(msg.answers.is_empty());
        let e = msg.edns.expect("OPT kept on truncation");
        assert!(e.options().options.is_empty());
        assert_eq!(out.len(), 12 + WWW_MIXED.len() + 4 + OPT_RR_LEN);
    }

    #[test]
    fn exactly_max_size_is_not_truncated() {
        let src = big_answer(3);
        let stripped = AnswerLayout::parse(&src).unwrap().opt_start().unwrap();
        let t = target(WWW_MIXED, None, stripped);
        let (out, msg) = patch(&src, &t, TtlPatch::Age(0));
        assert!(!msg.metadata.truncation);
        assert_eq!(out.len(), stripped);
        let t = target(WWW_MIXED, None, stripped - 1);
        let (_, msg) = patch(&src, &t, TtlPatch::Age(0));
        assert!(msg.metadata.truncation);
    }

    #[test]
    fn returns_zero_on_small_dst_or_wrong_name_or_wrong_message() {
        let src = chain();
        let l = AnswerLayout::parse(&src).unwrap();
        let t = target(WWW_MIXED, EDNS, 1232);
        let mut small = vec![0u8; src.len() - 1];
        assert_eq!(write_reply(&mut small, &src, &l, &t, TtlPatch::Age(0)), 0);
        let mut dst = vec![0u8; 2048];
        let other = b"\x03www\x07example\x03org\x00";
        let t2 = target(other, EDNS, 1232);
        assert_eq!(write_reply(&mut dst, &src, &l, &t2, TtlPatch::Age(0)), 0);
        let shorter = b"\x03www\x07example\x02co\x00";
        let t3 = target(shorter, EDNS, 1232);
        assert_eq!(write_reply(&mut dst, &src, &l, &t3, TtlPatch::Age(0)), 0);
        let mut wrong = src.clone();
        wrong.push(0);
        assert_eq!(write_reply(&mut dst, &wrong, &l, &t, TtlPatch::Age(0)), 0);
        assert!(write_reply(&mut dst, &src, &l, &t, TtlPatch::Age(0)) > 0);
    }

    #[test]
    fn clamp_ttls_and_high_bit_ttls() {
        let mut src = chain();
        let l = AnswerLayout::parse(&src).unwrap();
        l.clamp_ttls(&mut src, 100, 250);
        let ttls: Vec<u32> = l
            .ttl_offsets()
            .iter()
            .map(|&o| be32(&src, usize::from(o)).unwrap())
            .collect();
        assert_eq!(ttls, vec![250, 100, 120]);
        // lo > hi: hi wins, no panic
        l.clamp_ttls(&mut src, 500, 10);
        assert!(l
            .ttl_offsets()
            .iter()
            .all(|&o| be32(&src, usize::from(o)) == Ok(10)));
        // a TTL with the top bit set reads as 0
        let off = usize::from(l.ttl_offsets()[1]);
        src[off..off + 4].copy_from_slice(&0x8000_0001u32.to_be_bytes());
        let l = AnswerLayout::parse(&src).unwrap();
        assert_eq!(l.min_answer_ttl(), Some(0));
    }

    #[test]
    fn rejects_bad_shapes() {
        assert_eq!(AnswerLayout::parse(b"\x00\x01"), Err(WireError::Truncated));
        let src = chain();
        // QDCOUNT 2
        let mut m = src.clone();
        m[5] = 2;
        assert_eq!(AnswerLayout::parse(&m), Err(WireError::BadCount));
        // two OPTs
        let mut m = src.clone();
        m.extend_from_slice(&src[src.len() - OPT_RR_LEN..]);
        m[11] += 1;
        assert_eq!(AnswerLayout::parse(&m), Err(WireError::BadOpt));
        // OPT counted in the answer section
        let opt = src[src.len() - OPT_RR_LEN..].to_vec();
        let mut m = src[..src.len() - OPT_RR_LEN].to_vec();
        m.extend_from_slice(&opt);
        m[7] += 1;
        m[11] -= 1;
        // now ANCOUNT=4 covers the OPT and ARCOUNT=0
        assert_eq!(AnswerLayout::parse(&m), Err(WireError::BadOpt));
        // counts larger than the message
        let mut m = src[..src.len() - OPT_RR_LEN].to_vec();
        m[11] = 0;
        m[6] = 0xFF;
        assert_eq!(AnswerLayout::parse(&m), Err(WireError::Truncated));
    }

    #[test]
    fn never_panics_on_prefixes_and_mutations() {
        let sources = [
            chain(),
            with_record_after_opt(chain()),
            big_answer(5),
            response(
                "nope.example.com.",
                RecordType::A,
                ResponseCode::NXDomain,
                vec![],
                vec![soa("example.com.", 900, 300)],
                Some((true, vec![EdnsOption::Unknown(15, vec![0, 3, b'x'])])),
            ),
        ];
        let mut dst = vec![0u8; 4096];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for src in &sources {
            let good = AnswerLayout::parse(src).unwrap();
            for cut in 0..src.len() {
                let _ = AnswerLayout::parse(&src[..cut]);
                // a layout paired with a shorter message writes nothing
                let t = target(WWW_MIXED, EDNS, 4096);
                assert_eq!(
                    write_reply(&mut dst, &src[..cut], &good, &t, TtlPatch::Age(1)),
                    0
                );
            }
            for _ in 0..2000 {
                let mut m = src.clone();
                for _ in 0..3 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let i = (seed as usize) % m.len();
                    m[i] = (seed >> 32) as u8;
                }
                if let Ok(l) = AnswerLayout::parse(&m) {
                    let qname = m[12..12 + l.qname_len()].to_vec();
                    for edns in [None, EDNS] {
                        for max in [0, 512, 65535] {
                            let t = target(&qname, edns, max);
                            let n = write_reply(&mut dst, &m, &l, &t, TtlPatch::Age(5));
                            assert!(n <= m.len() + REPLY_HEADROOM);
                        }
                    }
                }
                // mismatched layout and message
                let t = target(WWW_MIXED, EDNS, 65535);
                let _ = write_reply(&mut dst, &m, &good, &t, TtlPatch::Set(30));
            }
        }
    }
}
