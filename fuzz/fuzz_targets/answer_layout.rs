//! Fuzzes the answer walk, the per-client patching built on it, and the packet cache
//! that stores answers and patches them on a hit.
//!
//! For arbitrary bytes (read as an upstream response): `AnswerLayout::parse` never
//! panics, and when it accepts the message its layout agrees with the bytes (TTL
//! offsets, OPT, rcode, minimum answer TTL, `clamp_ttls`). `write_reply` is then run
//! for every client shape (no EDNS, EDNS with DO clear, EDNS with DO set), every
//! `max_size` (512, 1232, 65535, unbounded) and both `TtlPatch` variants, into a
//! buffer of `src.len() + REPLY_HEADROOM`: it always writes something, never more
//! than `max_size`, with the client's ID and question-name case, TTLs patched as
//! asked, the OPT stripped, rebuilt or added as the client needs, and either the
//! full reply or the TC=1 reply. Every reply re-parses with `AnswerLayout`, and
//! hickory decodes it whenever hickory decodes the input (`AnswerLayout::parse`
//! refuses names whose pointers lead into bytes the patch rewrites). The same bytes
//! are then
//! inserted in a `PacketCache` under their own (lowercased) question and looked up;
//! hits obey the same checks.
//!
//! The message ID (bytes 0..2) is ignored by the walk, so its bits choose the
//! client: its ID, which question-name letters change case, the TTL age and the
//! key's DO/CD bits.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run answer_layout corpus/answer_layout seeds/answer_layout`
#![no_main]

use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};
use tierdns::cache::{CacheConfig, InsertOutcome, KeyRef, Lookup, PacketCache, Unstorable};
use tierdns::wire::answer::{write_reply, AnswerLayout, TtlPatch, OPT_RR_LEN, REPLY_HEADROOM};
use tierdns::wire::name::{read_name_lower, MAX_NAME_LEN};
use tierdns::wire::{Edns, ReplyTarget, EDNS_UDP_SIZE, HEADER_LEN};

const TC: u8 = 0x02;
const AA: u16 = 0x0400;
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;
const AD: u16 = 0x0020;
const CD: u16 = 0x0010;
const OPT_CODE_EDE: u16 = 15;
const RCODE_SERVFAIL: u16 = 2;

/// The client shapes every reply is written for.
const CLIENTS: [Option<Edns>; 3] = [
    None,
    Some(Edns {
        udp_size: 1232,
        dnssec_ok: false,
        version: 0,
    }),
    Some(Edns {
        udp_size: 4096,
        dnssec_ok: true,
        version: 0,
    }),
];
const MAX_SIZES: [usize; 3] = [512, 1232, 65535];

fuzz_target!(|data: &[u8]| {
    let knobs = Knobs::new(data);
    let layout = AnswerLayout::parse(data);
    let input = Message::from_vec(data).ok();
    let records_decode = input.as_ref();
    if let Ok(layout) = &layout {
        check_layout(data, layout, &knobs);
        let qname = knobs.flip_case(&data[HEADER_LEN..layout.question_end() - 4]);
        for edns in CLIENTS {
            check_replies(
                data,
                layout,
                &knobs,
                &qname,
                edns,
                input.as_ref(),
                records_decode,
            );
        }
    }
    check_cache(data, layout, &knobs, records_decode);
});

/// What the message ID bits choose.
struct Knobs {
    id: u16,
    /// The client's RD (0x0100), AD (0x0020) and CD (0x0010) bits.
    flags: u16,
    case_mask: u8,
    age: u32,
    set: u32,
    dnssec_ok: bool,
    checking_disabled: bool,
}

impl Knobs {
    fn new(data: &[u8]) -> Self {
        let (b0, b1) = (
            data.first().copied().unwrap_or(0),
            data.get(1).copied().unwrap_or(0),
        );
        let age = match b0 >> 6 {
            0 => 0,
            1 => u32::from(b1),
            2 => u32::from(b1) << 24,
            _ => u32::MAX,
        };
        Self {
            id: u16::from_be_bytes([b0, b1]).rotate_left(5) ^ 0xA5A5,
            flags: (if b0 & 1 != 0 { RD } else { 0 })
                | (if b0 & 2 != 0 { AD } else { 0 })
                | (if b0 & 4 != 0 { CD } else { 0 }),
            case_mask: b0 ^ b1.rotate_left(3),
            age,
            set: age ^ 30,
            dnssec_ok: b1 & 1 != 0,
            checking_disabled: b1 & 2 != 0,
        }
    }

    /// `name` with the case of some ASCII letters flipped (label lengths are at most
    /// 63, so never letters).
    fn flip_case(&self, name: &[u8]) -> Vec<u8> {
        let mut letter = 0u32;
        name.iter()
            .map(|&b| {
                if !b.is_ascii_alphabetic() {
                    return b;
                }
                letter += 1;
                if self.case_mask & (1 << (letter % 8)) != 0 {
                    b ^ 0x20
                } else {
                    b
                }
            })
            .collect()
    }
}

fn be16(msg: &[u8], pos: usize) -> u16 {
    u16::from_be_bytes([msg[pos], msg[pos + 1]])
}

fn be32(msg: &[u8], pos: usize) -> u32 {
    u32::from_be_bytes([msg[pos], msg[pos + 1], msg[pos + 2], msg[pos + 3]])
}

fn norm_ttl(raw: u32) -> u32 {
    if raw > i32::MAX as u32 {
        0
    } else {
        raw
    }
}

/// The layout agrees with the bytes it was parsed from.
fn check_layout(data: &[u8], l: &AnswerLayout, knobs: &Knobs) {
    let qend = l.question_end();
    assert!(qend <= data.len());
    assert_eq!(l.qname_len() + HEADER_LEN + 4, qend);
    assert!(l.qname_len() >= 1 && l.qname_len() <= MAX_NAME_LEN);
    assert_eq!(data[qend - 5], 0, "the question name ends in place");
    assert_eq!(be16(data, 4), 1);
    assert_eq!(l.ancount(), be16(data, 6));
    assert_eq!(l.truncated(), data[2] & TC != 0);
    assert_eq!(l.is_response(), data[2] & 0x80 != 0);

    let offsets = l.ttl_offsets();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    assert!(offsets
        .iter()
        .all(|&o| usize::from(o) > qend && usize::from(o) + 4 <= data.len()));
    let records =
        usize::from(be16(data, 6)) + usize::from(be16(data, 8)) + usize::from(be16(data, 10));
    assert_eq!(
        offsets.len() + usize::from(l.opt_start().is_some()),
        records
    );

    match l.opt_start() {
        Some(opt) => {
            assert!(opt >= qend && opt + OPT_RR_LEN <= data.len());
            assert_eq!(&data[opt..opt + 3], b"\x00\x00\x29");
            assert!(offsets.iter().all(|&o| usize::from(o) != opt + 5));
            assert_eq!(
                l.rcode(),
                u16::from(data[3] & 0x0F) | u16::from(data[opt + 5]) << 4
            );
        }
        None => {
            assert_eq!(l.rcode(), u16::from(data[3] & 0x0F));
            assert!(!l.opt_is_last());
        }
    }

    let ancount = usize::from(l.ancount());
    let min = offsets[..ancount]
        .iter()
        .map(|&o| norm_ttl(be32(data, usize::from(o))))
        .min();
    assert_eq!(l.min_answer_ttl(), min);

    // clamp_ttls: every TTL becomes ttl.max(lo).min(hi), nothing else changes
    let (lo, hi) = (knobs.age % 1000, knobs.set % 2000);
    let mut clamped = data.to_vec();
    l.clamp_ttls(&mut clamped, lo, hi);
    for &o in offsets {
        let o = usize::from(o);
        assert_eq!(be32(&clamped, o), norm_ttl(be32(data, o)).max(lo).min(hi));
        clamped[o..o + 4].copy_from_slice(&data[o..o + 4]);
    }
    assert_eq!(clamped, data);
}

fn target<'a>(
    knobs: &Knobs,
    qname: &'a [u8],
    edns: Option<Edns>,
    max_size: usize,
) -> ReplyTarget<'a> {
    ReplyTarget {
        id: knobs.id,
        flags: knobs.flags,
        qname,
        edns,
        max_size,
    }
}

/// Writes `src` for one client shape at every size limit and TTL patch.
fn check_replies(
    src: &[u8],
    l: &AnswerLayout,
    knobs: &Knobs,
    qname: &[u8],
    edns: Option<Edns>,
    input: Option<&Message>,
    records_decode: Option<&Message>,
) {
    let cap = src.len() + REPLY_HEADROOM;
    let mut full = vec![0u8; cap];
    let t = target(knobs, qname, edns, usize::MAX);
    let n_full = write_reply(&mut full, src, l, &t, TtlPatch::Age(knobs.age))
        .expect("a dst of src.len() + REPLY_HEADROOM always suffices");
    full.truncate(n_full);
    let out = check_full_reply(src, l, &full, &t, TtlPatch::Age(knobs.age));

    // TtlPatch::Set changes the TTL fields and nothing else
    let mut set = vec![0u8; cap];
    let n = write_reply(&mut set, src, l, &t, TtlPatch::Set(knobs.set)).unwrap_or(0);
    assert_eq!(n, n_full);
    set.truncate(n);
    check_full_reply(src, l, &set, &t, TtlPatch::Set(knobs.set));
    for &o in out.ttl_offsets() {
        let o = usize::from(o);
        set[o..o + 4].copy_from_slice(&full[o..o + 4]);
    }
    assert_eq!(set, full);

    if let Some(input) = records_decode {
        let m = Message::from_vec(&full).expect("hickory decodes the reply");
        assert_eq!(m.metadata.id, knobs.id);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.edns.is_some(), edns.is_some());
        assert_eq!(m.answers.len(), input.answers.len());
        assert_eq!(m.authorities.len(), input.authorities.len());
        assert!(m.additionals.len() <= input.additionals.len());
        if l.opt_start().is_none() || l.opt_is_last() {
            assert_eq!(m.additionals.len(), input.additionals.len());
        }
        if let (Some(got), Some(sent)) = (&m.edns, &input.edns) {
            assert_eq!(got.flags().dnssec_ok, sent.flags().dnssec_ok);
        }
    }

    let mut truncated_checked = false;
    for max_size in MAX_SIZES {
        let t = target(knobs, qname, edns, max_size);
        let mut dst = vec![0u8; cap];
        let n = write_reply(&mut dst, src, l, &t, TtlPatch::Age(knobs.age)).unwrap_or(0);
        assert!(n > 0 && n <= max_size, "{n} > {max_size}");
        if n_full <= max_size {
            assert_eq!(&dst[..n], &full[..], "a reply that fits is the full reply");
            continue;
        }
        let reply = &dst[..n];
        check_truncated_reply(src, l, reply, &t);
        if !truncated_checked {
            truncated_checked = true;
            if input.is_some() {
                let m = Message::from_vec(reply).expect("hickory decodes our TC reply");
                assert!(m.metadata.truncation);
                assert_eq!(m.metadata.id, knobs.id);
                assert_eq!(m.queries.len(), 1);
                assert!(m.answers.is_empty() && m.authorities.is_empty());
                assert!(m.additionals.is_empty());
                assert_eq!(m.edns.is_some(), edns.is_some());
            }
        }
    }
}

/// Header bytes 2 and 3 of a reply to `t`: the stored answer's, with the client's
/// RD and CD, AD only when the client sent AD or DO (RFC 6840 section 5.8), RA set
/// and AA clear (we recurse, and are no authority).
fn reply_flags(src: &[u8], t: &ReplyTarget<'_>) -> [u8; 2] {
    let stored = u16::from_be_bytes([src[2], src[3]]);
    let wants_ad = t.flags & AD != 0 || t.edns.is_some_and(|e| e.dnssec_ok);
    let ad = if wants_ad { stored & AD } else { 0 };
    let kept = stored & !(AA | RD | RA | AD | CD);
    (kept | RA | (t.flags & (RD | CD)) | ad).to_be_bytes()
}

/// Checks a reply that was not truncated; returns its re-parsed layout.
fn check_full_reply(
    src: &[u8],
    l: &AnswerLayout,
    out: &[u8],
    t: &ReplyTarget<'_>,
    patch: TtlPatch,
) -> AnswerLayout {
    let qend = l.question_end();
    assert_eq!(be16(out, 0), t.id);
    assert_eq!(&out[HEADER_LEN..qend - 4], t.qname);
    assert_eq!(out[2..4], reply_flags(src, t));
    assert_eq!(&out[4..10], &src[4..10], "the first three counts kept");
    assert_eq!(&out[qend - 4..qend], &src[qend - 4..qend]);

    let o = AnswerLayout::parse(out).expect("a reply re-parses");
    assert_eq!(o.question_end(), qend);
    assert_eq!(o.ancount(), l.ancount());
    assert_eq!(o.opt_start().is_some(), t.edns.is_some());
    let body_end = o.opt_start().unwrap_or(out.len());
    if let Some(opt) = l.opt_start() {
        assert_eq!(body_end, opt, "the reply keeps the bytes before the OPT");
    }
    assert!(body_end <= src.len());
    // records after the OPT are dropped, those before it keep their offsets
    let kept: Vec<u16> = l
        .ttl_offsets()
        .iter()
        .copied()
        .filter(|&off| usize::from(off) < body_end)
        .collect();
    assert_eq!(o.ttl_offsets(), &kept[..]);
    let mut body = out[..body_end].to_vec();
    for &off in &kept {
        let off = usize::from(off);
        let want = match patch {
            TtlPatch::Age(age) => norm_ttl(be32(src, off)).saturating_sub(age),
            TtlPatch::Set(v) => v,
        };
        assert_eq!(be32(out, off), want);
        body[off..off + 4].copy_from_slice(&src[off..off + 4]);
    }
    body[..4].copy_from_slice(&src[..4]);
    body[HEADER_LEN..qend - 4].copy_from_slice(&src[HEADER_LEN..qend - 4]);
    body[10..12].copy_from_slice(&src[10..12]);
    assert_eq!(
        body,
        &src[..body_end],
        "only ID, flags, qname case, TTLs and ARCOUNT change"
    );

    match t.edns {
        None => {
            assert_eq!(o.rcode(), l.rcode() & 0x0F);
            assert_eq!(o.opt_start(), None);
        }
        Some(edns) => {
            assert_eq!(o.rcode(), l.rcode());
            assert!(o.opt_is_last());
            let opt = body_end;
            assert_eq!(be16(out, opt + 3), EDNS_UDP_SIZE);
            match l.opt_start() {
                Some(sopt) => assert_eq!(&out[opt + 5..opt + 9], &src[sopt + 5..sopt + 9]),
                None => assert_eq!(
                    &out[opt + 5..opt + 9],
                    &[0, 0, if edns.dnssec_ok { 0x80 } else { 0 }, 0]
                ),
            }
            // only EDE options survive
            let mut rdata = &out[opt + OPT_RR_LEN..];
            assert_eq!(usize::from(be16(out, opt + 9)), rdata.len());
            while !rdata.is_empty() {
                assert_eq!(be16(rdata, 0), OPT_CODE_EDE);
                rdata = &rdata[4 + usize::from(be16(rdata, 2))..];
            }
        }
    }
    o
}

/// Checks the TC=1 reply: header, question, a bare OPT for an EDNS client.
fn check_truncated_reply(src: &[u8], l: &AnswerLayout, out: &[u8], t: &ReplyTarget<'_>) {
    let qend = l.question_end();
    let opt_len = if t.edns.is_some() { OPT_RR_LEN } else { 0 };
    assert_eq!(out.len(), qend + opt_len);
    assert_eq!(be16(out, 0), t.id);
    let [hi, lo] = reply_flags(src, t);
    assert_eq!((out[2], out[3]), (hi | TC, lo));
    assert_eq!(&out[4..12], &[0, 1, 0, 0, 0, 0, 0, u8::from(opt_len > 0)]);
    assert_eq!(&out[HEADER_LEN..qend - 4], t.qname);
    assert_eq!(&out[qend - 4..qend], &src[qend - 4..qend]);
    let o = AnswerLayout::parse(out).expect("a TC reply re-parses");
    assert!(o.truncated() && o.ttl_offsets().is_empty());
    if t.edns.is_some() {
        assert_eq!(o.opt_start(), Some(qend));
        assert_eq!(be16(out, qend + 3), EDNS_UDP_SIZE);
        assert_eq!(be16(out, qend + 9), 0, "a bare OPT");
    }
}

/// A cache hit obeys the reply checks that do not depend on the stored TTLs.
fn check_hit(
    data: &[u8],
    l: &AnswerLayout,
    out: &[u8],
    t: &ReplyTarget<'_>,
    records_decode: Option<&Message>,
) {
    assert!(!out.is_empty() && out.len() <= t.max_size);
    assert_eq!(be16(out, 0), t.id);
    assert_eq!(&out[HEADER_LEN..l.question_end() - 4], t.qname);
    let o = AnswerLayout::parse(out).expect("a cached reply re-parses");
    assert_eq!(o.question_end(), l.question_end());
    assert_eq!(o.opt_start().is_some(), t.edns.is_some());
    if records_decode.is_some() {
        let m = Message::from_vec(out).expect("hickory decodes a cached reply");
        assert_eq!(m.metadata.id, t.id);
        assert_eq!(m.queries.len(), 1);
    }
    let [hi, lo] = reply_flags(data, t);
    assert_eq!((out[2] & !TC, out[3]), (hi, lo));
    if out[2] & TC == 0 {
        // the stored answer kept its records, as in the message it came from
        assert_eq!(o.ancount(), l.ancount());
        let body_end = o.opt_start().unwrap_or(out.len());
        assert!(o.ttl_offsets().iter().eq(l
            .ttl_offsets()
            .iter()
            .filter(|&&off| usize::from(off) < body_end)));
    }
}

fn check_cache(
    data: &[u8],
    layout: Result<AnswerLayout, tierdns::wire::WireError>,
    knobs: &Knobs,
    records_decode: Option<&Message>,
) {
    // the key: the message's own question, lowercased (a placeholder when unreadable)
    let mut lower = [0u8; MAX_NAME_LEN];
    let (name_len, qend) = read_name_lower(data, HEADER_LEN, &mut lower).unwrap_or((1, 0));
    let (qtype, qclass) = match data.get(qend..qend + 4) {
        Some(&[t0, t1, c0, c1]) if qend > 0 => {
            (u16::from_be_bytes([t0, t1]), u16::from_be_bytes([c0, c1]))
        }
        _ => (1, 1),
    };
    let key = KeyRef {
        qname_lower: &lower[..name_len],
        qtype,
        qclass,
        dnssec_ok: knobs.dnssec_ok,
        checking_disabled: knobs.checking_disabled,
    };
    let cfg = CacheConfig {
        max_bytes: 1 << 20,
        partitions: 1,
        serve_stale: knobs.case_mask & 1 == 0,
        ..CacheConfig::default()
    };
    let serve_stale = cfg.serve_stale;
    let cache = PacketCache::new(cfg);
    let now = Instant::now();
    let outcome = cache.insert(&key, data, now, 2);
    let l = match layout {
        Ok(l) => l,
        Err(e) => {
            assert_eq!(outcome, InsertOutcome::Rejected(Unstorable::Malformed(e)));
            assert!(cache.is_empty());
            return;
        }
    };
    assert!(
        matches!(
            outcome,
            InsertOutcome::Inserted | InsertOutcome::Rejected(Unstorable::NotCacheable)
        ),
        "{outcome:?}"
    );
    if !l.is_response() || data[2] & 0x78 != 0 || l.truncated() {
        assert_eq!(outcome, InsertOutcome::Rejected(Unstorable::NotCacheable));
    }
    assert_eq!(cache.len(), usize::from(outcome.stored()));
    assert!(cache.bytes() <= 1 << 20);
    if !outcome.stored() {
        return;
    }

    let qname = knobs.flip_case(&data[HEADER_LEN..l.question_end() - 4]);
    let mut dst = vec![0u8; data.len() + REPLY_HEADROOM];
    for (i, edns) in CLIENTS.into_iter().enumerate() {
        let t = target(knobs, &qname, edns, MAX_SIZES[i]);
        if let Lookup::Hit { len, .. } = cache.lookup(&key, now, &t, &mut dst) {
            check_hit(data, &l, &dst[..len], &t, records_decode);
        }
        match cache.lookup_stale(&key, now, &t, &mut dst) {
            Some(len) => check_hit(data, &l, &dst[..len], &t, records_decode),
            None => assert!(
                !serve_stale || l.rcode() == RCODE_SERVFAIL,
                "a stored answer is served stale right after insert"
            ),
        }
    }
    let t = target(knobs, &qname, CLIENTS[1], 65535);
    // another key, a dst too small, a time far past expiry: no answer
    let other = KeyRef {
        dnssec_ok: !key.dnssec_ok,
        ..key
    };
    assert_eq!(cache.lookup(&other, now, &t, &mut dst), Lookup::Miss);
    let mut small = vec![0u8; l.question_end() - 1];
    assert_eq!(cache.lookup(&key, now, &t, &mut small), Lookup::Miss);
    let later = now + Duration::from_secs(3 * 86_400);
    assert_eq!(cache.lookup(&key, later, &t, &mut dst), Lookup::Miss);
    assert_eq!(cache.lookup_stale(&key, later, &t, &mut dst), None);
    // versions: older is ignored, the same replaces
    assert_eq!(cache.insert(&key, data, now, 1), InsertOutcome::Superseded);
    assert_eq!(cache.insert(&key, data, now, 2), InsertOutcome::Replaced);
    assert_eq!(cache.len(), 1);
}
