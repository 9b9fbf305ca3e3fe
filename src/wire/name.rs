//! Domain names in wire form: skip, read (lowercased, decompressed) and compare,
//! in place and bounded.

use super::WireError;

/// Most compression pointers followed while reading one name.
pub const MAX_POINTER_HOPS: usize = 16;
/// Longest name in wire form (RFC 1035 section 2.3.4).
pub const MAX_NAME_LEN: usize = 255;

/// Skips the name starting at `pos` without following pointers and returns the
/// offset just past it (past the terminating zero label or the 2-byte pointer).
pub fn skip_name(msg: &[u8], mut pos: usize) -> Result<usize, WireError> {
    let start = pos;
    loop {
        let len = *msg.get(pos).ok_or(WireError::Truncated)? as usize;
        match len & 0xC0 {
            0x00 => {
                pos += 1 + len;
                if pos > msg.len() {
                    return Err(WireError::Truncated);
                }
                if pos - start > MAX_NAME_LEN {
                    return Err(WireError::NameTooLong);
                }
                if len == 0 {
                    return Ok(pos);
                }
            }
            0xC0 => {
                if pos + 2 > msg.len() {
                    return Err(WireError::Truncated);
                }
                return Ok(pos + 2);
            }
            _ => return Err(WireError::BadLabel),
        }
    }
}

/// Reads the name at `pos`, following compression pointers (each must point strictly
/// backwards, at most [`MAX_POINTER_HOPS`] of them), and writes it uncompressed and
/// ASCII-lowercased into `out`. Returns `(name_len, end)`: the length written to `out`
/// and the offset just past the name where it starts (not where pointers led).
pub fn read_name_lower(
    msg: &[u8],
    pos: usize,
    out: &mut [u8; MAX_NAME_LEN],
) -> Result<(usize, usize), WireError> {
    let mut cursor = pos;
    let mut written = 0usize;
    let mut end = None;
    let mut hops = 0usize;
    loop {
        let len = *msg.get(cursor).ok_or(WireError::Truncated)? as usize;
        match len & 0xC0 {
            0x00 => {
                let label_end = cursor + 1 + len;
                if label_end > msg.len() {
                    return Err(WireError::Truncated);
                }
                if written + 1 + len > MAX_NAME_LEN {
                    return Err(WireError::NameTooLong);
                }
                out[written] = len as u8;
                for (dst, src) in out[written + 1..written + 1 + len]
                    .iter_mut()
                    .zip(&msg[cursor + 1..label_end])
                {
                    *dst = src.to_ascii_lowercase();
                }
                written += 1 + len;
                if len == 0 {
                    return Ok((written, end.unwrap_or(label_end)));
                }
                cursor = label_end;
            }
            0xC0 => {
                let low = *msg.get(cursor + 1).ok_or(WireError::Truncated)? as usize;
                let target = ((len & 0x3F) << 8) | low;
                hops += 1;
                if hops > MAX_POINTER_HOPS || target >= cursor {
                    return Err(WireError::BadPointer);
                }
                end.get_or_insert(cursor + 2);
                cursor = target;
            }
            _ => return Err(WireError::BadLabel),
        }
    }
}

/// Compares the name at `pos` in `msg` (pointers followed) with an uncompressed,
/// lowercased wire name, ignoring ASCII case. Errors on a malformed name.
pub fn name_eq_lower(msg: &[u8], pos: usize, lower: &[u8]) -> Result<bool, WireError> {
    let mut buf = [0u8; MAX_NAME_LEN];
    let (len, _) = read_name_lower(msg, pos, &mut buf)?;
    Ok(&buf[..len] == lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_and_read_plain_name() {
        let msg = b"\x03WwW\x07Example\x03com\x00rest";
        assert_eq!(skip_name(msg, 0), Ok(17));
        let mut out = [0u8; MAX_NAME_LEN];
        let (len, end) = read_name_lower(msg, 0, &mut out).unwrap();
        assert_eq!(&out[..len], b"\x03www\x07example\x03com\x00");
        assert_eq!(end, 17);
    }

    #[test]
    fn pointers_must_point_back_and_are_bounded() {
        // name at 0: "a.", then at 3 a pointer to 0.
        let msg = b"\x01a\x00\xC0\x00";
        let mut out = [0u8; MAX_NAME_LEN];
        assert_eq!(read_name_lower(msg, 3, &mut out), Ok((3, 5)));
        // pointer to itself
        let looped = b"\xC0\x00";
        assert_eq!(
            read_name_lower(looped, 0, &mut out),
            Err(WireError::BadPointer)
        );
        // forward pointer
        let fwd = b"\xC0\x02\x00";
        assert_eq!(
            read_name_lower(fwd, 0, &mut out),
            Err(WireError::BadPointer)
        );
    }

    #[test]
    fn rejects_reserved_labels_long_names_and_truncation() {
        let mut out = [0u8; MAX_NAME_LEN];
        assert_eq!(skip_name(b"\x40abc", 0), Err(WireError::BadLabel));
        assert_eq!(skip_name(b"\x05ab", 0), Err(WireError::Truncated));
        assert_eq!(skip_name(b"", 0), Err(WireError::Truncated));
        let mut long = Vec::new();
        for _ in 0..5 {
            long.push(63u8);
            long.extend_from_slice(&[b'x'; 63]);
        }
        long.push(0);
        assert_eq!(skip_name(&long, 0), Err(WireError::NameTooLong));
        assert_eq!(
            read_name_lower(&long, 0, &mut out),
            Err(WireError::NameTooLong)
        );
    }

    #[test]
    fn compares_ignoring_case() {
        let msg = b"\x03FoO\x00";
        assert_eq!(name_eq_lower(msg, 0, b"\x03foo\x00"), Ok(true));
        assert_eq!(name_eq_lower(msg, 0, b"\x03fop\x00"), Ok(false));
    }

    /// A name of exactly `total` bytes in wire form, labels of 'X'.
    fn name_of_len(total: usize) -> Vec<u8> {
        let mut name = Vec::new();
        let mut left = total - 1; // the root label
        while left > 0 {
            let label = (left - 1).min(63);
            name.push(label as u8);
            name.extend(std::iter::repeat_n(b'X', label));
            left -= 1 + label;
        }
        name.push(0);
        assert_eq!(name.len(), total);
        name
    }

    #[test]
    fn longest_name_is_accepted_by_skip_and_read() {
        let name = name_of_len(MAX_NAME_LEN);
        let mut out = [0u8; MAX_NAME_LEN];
        assert_eq!(skip_name(&name, 0), Ok(MAX_NAME_LEN));
        assert_eq!(
            read_name_lower(&name, 0, &mut out),
            Ok((MAX_NAME_LEN, MAX_NAME_LEN))
        );
        assert!(out[1..64].iter().all(|&b| b == b'x'));
        assert_eq!(name_eq_lower(&name, 0, &out), Ok(true));
    }

    #[test]
    fn pointer_chain_is_capped_at_max_hops() {
        // "\x01a\x00" at 0, then pointers each pointing at the previous one.
        let mut msg = b"\x01a\x00".to_vec();
        let mut prev = 0usize;
        let mut starts = Vec::new();
        for _ in 0..=MAX_POINTER_HOPS {
            let here = msg.len();
            msg.extend_from_slice(&[0xC0 | (prev >> 8) as u8, prev as u8]);
            starts.push(here);
            prev = here;
        }
        let mut out = [0u8; MAX_NAME_LEN];
        // starting at the 16th pointer: 16 hops, allowed
        let ok_start = starts[MAX_POINTER_HOPS - 1];
        assert_eq!(
            read_name_lower(&msg, ok_start, &mut out),
            Ok((3, ok_start + 2))
        );
        assert_eq!(&out[..3], b"\x01a\x00");
        // starting at the 17th: one hop too many
        let bad_start = starts[MAX_POINTER_HOPS];
        assert_eq!(
            read_name_lower(&msg, bad_start, &mut out),
            Err(WireError::BadPointer)
        );
        // skip_name does not follow pointers at all
        assert_eq!(skip_name(&msg, bad_start), Ok(bad_start + 2));
    }

    #[test]
    fn decompressed_length_is_capped() {
        // 200-byte name at 0, then "\x3f" + 63 bytes + pointer to 0: 264 bytes expanded
        let mut msg = name_of_len(200);
        let start = msg.len();
        msg.push(63);
        msg.extend_from_slice(&[b'y'; 63]);
        msg.extend_from_slice(&[0xC0, 0x00]);
        let mut out = [0u8; MAX_NAME_LEN];
        assert_eq!(
            read_name_lower(&msg, start, &mut out),
            Err(WireError::NameTooLong)
        );
        assert_eq!(
            name_eq_lower(&msg, start, b"\x00"),
            Err(WireError::NameTooLong)
        );
        // the compressed form itself is short, so skip_name is fine with it
        assert_eq!(skip_name(&msg, start), Ok(msg.len()));
    }

    #[test]
    fn truncated_pointers_and_labels() {
        let mut out = [0u8; MAX_NAME_LEN];
        assert_eq!(skip_name(b"\x01a\xC0", 0), Err(WireError::Truncated));
        assert_eq!(
            read_name_lower(b"\x01a\xC0", 0, &mut out),
            Err(WireError::Truncated)
        );
        assert_eq!(
            read_name_lower(b"\x01a", 0, &mut out),
            Err(WireError::Truncated)
        );
        assert_eq!(
            read_name_lower(b"\x01a\x00", 3, &mut out),
            Err(WireError::Truncated)
        );
        assert_eq!(
            read_name_lower(b"\x80", 0, &mut out),
            Err(WireError::BadLabel)
        );
        // a pointer into the middle of a label reads whatever is there, bounded
        let msg = b"\x03abc\x00\xC0\x02";
        assert_eq!(read_name_lower(msg, 5, &mut out), Err(WireError::BadLabel));
    }

    #[test]
    fn equal_ignoring_case_needs_same_length() {
        let msg = b"\x03FoO\x03bAr\x00\xC0\x04";
        assert_eq!(name_eq_lower(msg, 0, b"\x03foo\x03bar\x00"), Ok(true));
        assert_eq!(name_eq_lower(msg, 0, b"\x03foo\x00"), Ok(false));
        assert_eq!(name_eq_lower(msg, 9, b"\x03bar\x00"), Ok(true));
        assert_eq!(
            name_eq_lower(b"\x03FoO", 0, b"\x03foo\x00"),
            Err(WireError::Truncated)
        );
    }
}
