//! The edns-tcp-keepalive option (RFC 7828) on stream replies (TCP, DNS over TLS).
//!
//! A client that sends the option in a query over TCP asks how long the server
//! will keep an idle connection open; the server answers with the option carrying
//! TIMEOUT, in units of 100 milliseconds (RFC 7828 3.3.2). tierdns answers it only
//! to queries that carried the option (the RFC allows it for any EDNS query over
//! TCP; a client that never asked has no use for the six bytes), with
//! `tcp_idle_timeout`, and with TIMEOUT 0 on the last answers of a connection that
//! is closing (the client should not send more on it). Never over UDP (RFC 7828
//! 3.2.1 forbids it) nor DoH (HTTP manages its own connections, RFC 8484 5.1).
//!
//! Both functions walk the message in place: [`asks_keepalive`] reads the query's
//! OPT options, [`append_keepalive`] appends the option to the reply's OPT record,
//! which must be the reply's last record (tierdns writes it last: replies are cut
//! before the stored OPT and a new one is written at the end), so appending shifts
//! nothing a compression pointer could point to.

use super::name::skip_name;
use super::{rtype, HEADER_LEN};

/// Where a message's OPT record and records are.
struct Records {
    /// The OPT record of the additional section, if any: where its RR and its
    /// RDATA start.
    opt: Option<(usize, usize)>,
    /// Whether the OPT is the last record.
    opt_last: bool,
    /// Where the records end.
    end: usize,
}

/// Walks a message's records; None if it is malformed.
fn find_opt(msg: &[u8]) -> Option<Records> {
    let count = |i: usize| {
        msg.get(i..i + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    let qd = count(4)?;
    let non_additional = count(6)? + count(8)?;
    let total = non_additional + count(10)?;
    let mut pos = HEADER_LEN;
    for _ in 0..qd {
        pos = skip_name(msg, pos).ok()? + 4;
    }
    let mut opt = None;
    let mut opt_last = false;
    for index in 0..total {
        let name_end = skip_name(msg, pos).ok()?;
        let fixed = msg.get(name_end..name_end + 10)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let rdata = name_end + 10;
        let end = rdata + usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        if end > msg.len() {
            return None;
        }
        opt_last = rtype == rtype::OPT && index >= non_additional;
        if opt_last {
            if name_end != pos + 1 {
                // An OPT's owner is the root: one byte.
                return None;
            }
            opt = Some((pos, rdata));
        }
        pos = end;
    }
    Some(Records {
        opt,
        opt_last,
        end: pos,
    })
}

/// Whether a query carries the edns-tcp-keepalive option in its OPT record. A
/// query is one question and an OPT: a short walk.
pub fn asks_keepalive(query: &[u8]) -> bool {
    let Some(Records {
        opt: Some((opt, rdata)),
        end,
        ..
    }) = find_opt(query)
    else {
        return false;
    };
    let Some(len) = query.get(opt + 9..opt + 11) else {
        return false;
    };
    let rdata_end = rdata + usize::from(u16::from_be_bytes([len[0], len[1]]));
    let mut options = query.get(rdata..rdata_end.min(end)).unwrap_or_default();
    while let Some(&[c0, c1, l0, l1]) = options.get(..4) {
        if u16::from_be_bytes([c0, c1]) == rtype::OPTION_KEEPALIVE {
            return true;
        }
        let next = 4 + usize::from(u16::from_be_bytes([l0, l1]));
        options = options.get(next..).unwrap_or_default();
    }
    false
}

/// TIMEOUT for an idle timeout: units of 100 ms, at most 65535 (109 minutes).
pub fn timeout_units(idle: std::time::Duration) -> u16 {
    u16::try_from(idle.as_millis() / 100).unwrap_or(u16::MAX)
}

/// Appends edns-tcp-keepalive with `timeout` (100 ms units) to `reply`'s OPT
/// record when that record is the last of the reply; false (nothing changed)
/// when the reply has no OPT, it is not last, or the reply would pass 65535 bytes.
pub fn append_keepalive(reply: &mut Vec<u8>, timeout: u16) -> bool {
    let Some(Records {
        opt: Some((opt, _)),
        opt_last: true,
        end,
    }) = find_opt(reply)
    else {
        return false;
    };
    if end != reply.len() || reply.len() + 6 > usize::from(u16::MAX) {
        return false;
    }
    let Some(rdlen) = reply.get(opt + 9..opt + 11) else {
        return false;
    };
    let rdlen = u16::from_be_bytes([rdlen[0], rdlen[1]]) + 6;
    reply[opt + 9..opt + 11].copy_from_slice(&rdlen.to_be_bytes());
    reply.extend_from_slice(&rtype::OPTION_KEEPALIVE.to_be_bytes());
    reply.extend_from_slice(&2u16.to_be_bytes());
    reply.extend_from_slice(&timeout.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::reader::tests::{edns_query, opt, query as build};
    use crate::wire::reader::QueryView;

    const NAME: &[u8] = b"\x07example\x03com\x00";

    fn query(arcount: u16, rest: &[u8]) -> Vec<u8> {
        build(0x0100, 0x0100, [1, 0, 0, arcount], NAME, 1, rest)
    }

    /// A query for example.com A with an OPT whose RDATA is `rdata`.
    fn with_options(rdata: &[u8]) -> Vec<u8> {
        query(1, &opt(1232, 0, rdata))
    }

    #[test]
    fn the_option_is_found_among_others_and_only_in_the_opt() {
        assert!(asks_keepalive(&with_options(&[0, 11, 0, 0])));
        // A cookie (10, 8 bytes) first, then keepalive.
        let mut rdata = vec![0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        rdata.extend_from_slice(&[0, 11, 0, 0]);
        assert!(asks_keepalive(&with_options(&rdata)));
        assert!(!asks_keepalive(&with_options(&[
            0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8
        ])));
        assert!(!asks_keepalive(&edns_query()), "EDNS without the option");
        assert!(!asks_keepalive(&query(0, &[])), "no EDNS");
        // Malformed: an option overrunning its RDATA, a message cut short.
        assert!(!asks_keepalive(&with_options(&[0, 12, 0, 9, 0, 11])));
        let q = with_options(&[0, 11, 0, 0]);
        for cut in 0..q.len() {
            assert!(!asks_keepalive(&q[..cut]), "cut at {cut}");
        }
    }

    #[test]
    fn appended_to_a_last_opt_and_read_back() {
        // A query is a fine stand-in for a reply: one question, OPT last.
        let mut msg = with_options(&[0, 15, 0, 2, 0, 3]);
        let before = msg.len();
        assert!(append_keepalive(&mut msg, 100));
        assert_eq!(msg.len(), before + 6);
        assert_eq!(&msg[before..], &[0, 11, 0, 2, 0, 100]);
        let view = QueryView::parse(&msg).expect("still a valid message");
        assert!(view.edns.is_some());
        assert!(asks_keepalive(&msg));
        // No OPT: nothing added.
        let mut plain = query(0, &[]);
        let len = plain.len();
        assert!(!append_keepalive(&mut plain, 100));
        assert_eq!(plain.len(), len);
        // OPT not last (another additional record after it): nothing added.
        let mut rest = opt(1232, 0, &[]);
        rest.extend_from_slice(&[0, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        let mut not_last = query(2, &rest);
        let len = not_last.len();
        assert!(!append_keepalive(&mut not_last, 100));
        assert_eq!(not_last.len(), len);
    }

    #[test]
    fn timeout_is_in_units_of_100_ms_and_saturates() {
        use std::time::Duration;
        assert_eq!(timeout_units(Duration::from_secs(10)), 100);
        assert_eq!(timeout_units(Duration::from_millis(250)), 2);
        assert_eq!(timeout_units(Duration::from_secs(100_000)), u16::MAX);
        assert_eq!(timeout_units(Duration::ZERO), 0);
    }
}
