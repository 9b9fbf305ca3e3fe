//! Per-client patching: one client's reply from the stored bytes, with a copy and a
//! handful of stores at the offsets [`AnswerLayout`] recorded (see the invariants in
//! [`super`]): the ID, the question's letter case, the TTLs, the flags, an OPT
//! record rebuilt for the client, or a truncated reply when it does not fit.

use super::{be16, norm_ttl, AnswerLayout, TtlPatch, OPT_RR_LEN, TC_BIT};
use crate::wire::rtype;
use crate::wire::{ReplyTarget, EDNS_UDP_SIZE, HEADER_LEN};

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
            if code == rtype::OPTION_EDE {
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
    head[1..3].copy_from_slice(&rtype::OPT.to_be_bytes());
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
/// Returns the reply length, or `None` when `dst` is too small, `src` is not the message
/// `layout` was parsed from, or `target.qname` is not the question name.
/// A `dst` of `src.len() + REPLY_HEADROOM` bytes always suffices. Never allocates,
/// never panics.
pub fn write_reply(
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
