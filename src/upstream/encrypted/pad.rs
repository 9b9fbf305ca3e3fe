//! EDNS(0) padding (RFC 7830) of the queries sent over encrypted transports, to
//! the block length RFC 8467 section 4.1 recommends for queries: 128 bytes, so an
//! observer of the encrypted stream learns only a query's length in blocks.
//!
//! The query is copied with its OPT record extended (or one appended, advertising
//! a UDP size of [`EDNS_UDP_SIZE`]) by a padding option; a padding option already
//! there is replaced. The walk over the message is bounded by its length and
//! record counts, and fails (nothing sent) on anything it cannot read.

use crate::wire::name::{read_name_lower, MAX_NAME_LEN};
use crate::wire::reader::Header;
use crate::wire::{rtype, EDNS_UDP_SIZE, HEADER_LEN};

/// Padding block length for queries (RFC 8467 section 4.1).
pub(crate) const QUERY_BLOCK: usize = 128;

/// Why a query could not be padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unpaddable;

/// Offset just past the name at `pos`.
fn skip_name(msg: &[u8], pos: usize) -> Result<usize, Unpaddable> {
    let mut scratch = [0u8; MAX_NAME_LEN];
    read_name_lower(msg, pos, &mut scratch)
        .map(|(_, end)| end)
        .map_err(|_| Unpaddable)
}

fn u16_at(msg: &[u8], pos: usize) -> Result<u16, Unpaddable> {
    match msg.get(pos..pos + 2) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(Unpaddable),
    }
}

/// `query` padded to a multiple of [`QUERY_BLOCK`] bytes. The OPT record, if the
/// query has one, must be its last record (as in every query tierdns builds).
pub(crate) fn pad_query(query: &[u8]) -> Result<Vec<u8>, Unpaddable> {
    let header = Header::parse(query).map_err(|_| Unpaddable)?;
    let mut pos = HEADER_LEN;
    for _ in 0..header.qdcount {
        pos = skip_name(query, pos)? + 4;
    }
    if pos > query.len() {
        return Err(Unpaddable);
    }
    let records = u32::from(header.ancount) + u32::from(header.nscount) + u32::from(header.arcount);
    // (start of the OPT record's RDATA, its end) when the last record is an OPT.
    let mut opt = None;
    for i in 0..records {
        let owner_end = skip_name(query, pos)?;
        let rtype = u16_at(query, owner_end)?;
        let rdlen = usize::from(u16_at(query, owner_end + 8)?);
        let rdata = owner_end + 10;
        let end = rdata + rdlen;
        if end > query.len() {
            return Err(Unpaddable);
        }
        if rtype == rtype::OPT {
            if i + 1 != records {
                return Err(Unpaddable);
            }
            opt = Some((owner_end, rdata, end));
        }
        pos = end;
    }
    if pos != query.len() {
        return Err(Unpaddable);
    }
    let mut out = Vec::with_capacity(query.len() + 11 + 4 + QUERY_BLOCK);
    let rdlen_at = match opt {
        Some((owner_end, rdata, end)) => {
            out.extend_from_slice(&query[..rdata]);
            // Keep every option but an old padding.
            let mut p = rdata;
            while p < end {
                let code = u16_at(query, p)?;
                let len = usize::from(u16_at(query, p + 2)?);
                let next = p + 4 + len;
                if next > end {
                    return Err(Unpaddable);
                }
                if code != rtype::OPTION_PADDING {
                    out.extend_from_slice(&query[p..next]);
                }
                p = next;
            }
            owner_end + 8
        }
        None => {
            let arcount = header.arcount.checked_add(1).ok_or(Unpaddable)?;
            out.extend_from_slice(query);
            out[10..12].copy_from_slice(&arcount.to_be_bytes());
            out.extend_from_slice(&[0, 0, 41]); // root owner, OPT
            out.extend_from_slice(&EDNS_UDP_SIZE.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // TTL (no DO), RDLENGTH
            out.len() - 2
        }
    };
    let padding = (QUERY_BLOCK - (out.len() + 4) % QUERY_BLOCK) % QUERY_BLOCK;
    out.extend_from_slice(&rtype::OPTION_PADDING.to_be_bytes());
    out.extend_from_slice(&(padding as u16).to_be_bytes());
    out.resize(out.len() + padding, 0);
    let rdlen = out.len() - (rdlen_at + 2);
    let rdlen = u16::try_from(rdlen).map_err(|_| Unpaddable)?;
    if out.len() > usize::from(u16::MAX) {
        return Err(Unpaddable);
    }
    out[rdlen_at..rdlen_at + 2].copy_from_slice(&rdlen.to_be_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Message;
    use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};

    fn upstream_query(name: &[u8], opt: bool) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(opt)];
        q.extend_from_slice(name);
        q.extend_from_slice(&[0, 1, 0, 1]);
        if opt {
            q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0x80, 0, 0, 0]);
        }
        q
    }

    fn padding_len(msg: &[u8]) -> Option<usize> {
        let m = Message::from_vec(msg).expect("padded query parses");
        let edns = m.edns.as_ref()?;
        edns.options()
            .as_ref()
            .iter()
            .find(|(c, _)| *c == EdnsCode::Padding)
            .map(|(_, o)| match o {
                EdnsOption::Unknown(_, bytes) => bytes.len(),
                _ => usize::MAX,
            })
    }

    #[test]
    fn queries_are_padded_to_128_byte_blocks() {
        for name in [
            &b"\x00"[..],
            b"\x07example\x03com\x00",
            &[&[63u8][..], &[b'a'; 63], &[63], &[b'b'; 63], &[0]].concat(),
        ] {
            for opt in [true, false] {
                let q = upstream_query(name, opt);
                let padded = pad_query(&q).unwrap();
                assert_eq!(padded.len() % QUERY_BLOCK, 0, "{} bytes", padded.len());
                assert!(padding_len(&padded).is_some(), "a padding option is there");
                let m = Message::from_vec(&padded).unwrap();
                assert_eq!(m.metadata.id, 0x1234);
                assert_eq!(m.edns.as_ref().unwrap().max_payload(), 1232);
                if opt {
                    assert!(m.edns.as_ref().unwrap().flags().dnssec_ok, "DO kept");
                }
                // Padding again replaces the padding: same length, one option.
                let again = pad_query(&padded).unwrap();
                assert_eq!(again, padded);
            }
        }
    }

    #[test]
    fn a_query_of_exactly_a_block_minus_the_option_gets_empty_padding() {
        // 12 + name + 4 + 11 + 4 = 128: name of 97 bytes (labels of 63 and 31).
        let mut name = vec![63u8];
        name.extend_from_slice(&[b'x'; 63]);
        name.push(31);
        name.extend_from_slice(&[b'y'; 31]);
        name.push(0);
        let q = upstream_query(&name, true);
        assert_eq!(q.len() + 4, 128);
        let padded = pad_query(&q).unwrap();
        assert_eq!(padded.len(), 128);
        assert_eq!(padding_len(&padded), Some(0));
    }

    #[test]
    fn unreadable_queries_are_refused_not_padded() {
        let q = upstream_query(b"\x07example\x03com\x00", true);
        for cut in 0..q.len() {
            assert!(pad_query(&q[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = q.clone();
        trailing.push(0);
        assert!(pad_query(&trailing).is_err());
        let mut lying = q.clone();
        lying[11] = 5; // ARCOUNT 5, one record there
        assert!(pad_query(&lying).is_err());
        let mut bad_option = q.clone();
        let n = bad_option.len();
        bad_option[n - 1] = 3; // RDLENGTH 3 past the end
        assert!(pad_query(&bad_option).is_err());
    }
}
