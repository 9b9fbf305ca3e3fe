//! The kernel's message headers, filled in one place for every batch that uses
//! them: the `recvmmsg`/`sendmmsg` batches ([`super::mmsg`]) and the io_uring
//! receive and sends ([`super::ring`]).
//!
//! Filling a header is safe: it only stores pointers. What makes a call sound is that
//! they point at live memory of the stated lengths until the kernel is done, which
//! each caller states where it makes the call.

/// An empty I/O vector.
pub(super) const EMPTY_IOV: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

/// Room for a sender's or receiver's address (IPv4 or IPv6).
pub(super) const NAME_LEN: usize = size_of::<libc::sockaddr_in6>();

/// An all-zero message header: no name, no data, no control.
pub(super) fn empty() -> libc::msghdr {
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    unsafe { std::mem::zeroed() }
}

/// `N` empty I/O vectors and `mmsghdr`s, filled in before each call.
#[allow(clippy::type_complexity)]
pub(super) fn empty_batch<const N: usize>() -> (Box<[libc::iovec; N]>, Box<[libc::mmsghdr; N]>) {
    let hdr = libc::mmsghdr {
        msg_hdr: empty(),
        msg_len: 0,
    };
    (Box::new([EMPTY_IOV; N]), Box::new([hdr; N]))
}

/// Points `hdr` at one buffer (through `iov`) and one address, with no control
/// data and no flags.
pub(super) fn point(
    hdr: &mut libc::msghdr,
    iov: &mut libc::iovec,
    (buf, len): (*mut u8, usize),
    (name, name_len): (*mut libc::c_void, libc::socklen_t),
) {
    *iov = libc::iovec {
        iov_base: buf.cast(),
        iov_len: len,
    };
    hdr.msg_name = name;
    hdr.msg_namelen = name_len;
    hdr.msg_iov = iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = std::ptr::null_mut();
    hdr.msg_controllen = 0;
    hdr.msg_flags = 0;
}
