//! The address a client asked, for sockets bound to a wildcard (`0.0.0.0`, `[::]`):
//! the kernel reports each datagram's destination (`IP_PKTINFO`, `IPV6_PKTINFO`
//! control messages) and the reply names it as its source, so a reply leaves from
//! the address the query went to. Without it the route picks the source, which on
//! a host with several addresses may not be the one asked (the client then drops
//! the reply), and a released socket ([`super::release_udp`]), connected to
//! loopback, would answer from loopback's.
//!
//! Control messages are read and written as bytes here, with the kernel's layout
//! (`struct cmsghdr`, then the data at its alignment): no pointer casts.

use super::udp::ReplyTo;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;

/// Rounds up to the alignment of control message headers and data.
const fn align(n: usize) -> usize {
    let a = size_of::<usize>();
    (n + a - 1) & !(a - 1)
}

/// Bytes of a control message header, padded: where its data starts.
const HDR: usize = align(size_of::<libc::cmsghdr>());
/// `struct in_pktinfo`: ifindex, the local address a reply leaves from, the header's
/// destination.
const IN_PKTINFO: usize = 12;
/// `struct in6_pktinfo`: the address, then the ifindex.
const IN6_PKTINFO: usize = 20;
/// Room for one packet-info control message, either family, with margin.
pub(crate) const CONTROL_LEN: usize = 64;
const _: () = assert!(HDR + align(IN6_PKTINFO) <= CONTROL_LEN);

/// One message's control buffer, aligned as the kernel's headers are.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(crate) struct Control(pub(crate) [u8; CONTROL_LEN]);

impl Default for Control {
    fn default() -> Self {
        Self([0; CONTROL_LEN])
    }
}

impl Control {
    /// Writes the control message that makes a reply leave from `local`; returns
    /// its length (the header's `msg_controllen`).
    pub(crate) fn write(&mut self, local: IpAddr) -> usize {
        let mut data = [0u8; IN6_PKTINFO];
        let (level, kind, data_len) = match local {
            IpAddr::V4(ip) => {
                // ipi_ifindex 0 (the route picks the device), ipi_spec_dst the
                // source; ipi_addr is not read on a send.
                data[4..8].copy_from_slice(&ip.octets());
                (libc::SOL_IP, libc::IP_PKTINFO, IN_PKTINFO)
            }
            IpAddr::V6(ip) => {
                // ipi6_addr the source, ipi6_ifindex 0.
                data[..16].copy_from_slice(&ip.octets());
                (libc::SOL_IPV6, libc::IPV6_PKTINFO, IN6_PKTINFO)
            }
        };
        self.0 = [0; CONTROL_LEN];
        let len = HDR + data_len;
        let at = size_of::<usize>();
        self.0[..at].copy_from_slice(&len.to_ne_bytes());
        self.0[at..at + 4].copy_from_slice(&level.to_ne_bytes());
        self.0[at + 4..at + 8].copy_from_slice(&kind.to_ne_bytes());
        self.0[HDR..len].copy_from_slice(&data[..data_len]);
        HDR + align(data_len)
    }
}

/// The destination address in the control messages the kernel wrote (`control`
/// cut to the returned `msg_controllen`), if one is there and a reply can leave
/// from it (not a multicast or broadcast address). Anything malformed is ignored.
pub(crate) fn local_of(control: &[u8]) -> Option<IpAddr> {
    let mut rest = control;
    while rest.len() >= HDR {
        let len = usize::from_ne_bytes(rest[..size_of::<usize>()].try_into().ok()?);
        let at = size_of::<usize>();
        let level = i32::from_ne_bytes(rest[at..at + 4].try_into().ok()?);
        let kind = i32::from_ne_bytes(rest[at + 4..at + 8].try_into().ok()?);
        if len < HDR || len > rest.len() {
            return None;
        }
        let data = &rest[HDR..len];
        let ip = match (level, kind) {
            (libc::SOL_IP, libc::IP_PKTINFO) if data.len() >= IN_PKTINFO => {
                // ipi_spec_dst, the local address a reply should leave from: the
                // destination for a unicast query, a local address of the network
                // for one sent to its broadcast address. ipi_addr (the header's
                // destination) only if the kernel left it unset.
                let spec: [u8; 4] = data[4..8].try_into().ok()?;
                let dst: [u8; 4] = data[8..12].try_into().ok()?;
                let o = if spec == [0; 4] { dst } else { spec };
                Some(IpAddr::V4(Ipv4Addr::from(o)))
            }
            (libc::SOL_IPV6, libc::IPV6_PKTINFO) if data.len() >= IN6_PKTINFO => {
                let o: [u8; 16] = data[..16].try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(o)))
            }
            _ => None,
        };
        if let Some(ip) = ip {
            return usable(ip).then_some(ip);
        }
        rest = rest.get(align(len)..)?;
    }
    None
}

/// Whether a reply may name `ip` as its source.
fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

/// Asks the kernel to report each datagram's destination on `sock`, bound to
/// `addr`; does nothing unless `addr` is a wildcard.
pub(crate) fn enable(sock: &socket2::Socket, addr: SocketAddr) -> io::Result<()> {
    if !addr.ip().is_unspecified() {
        return Ok(());
    }
    let (level, name) = match addr {
        SocketAddr::V4(_) => (libc::SOL_IP, libc::IP_PKTINFO),
        SocketAddr::V6(_) => (libc::SOL_IPV6, libc::IPV6_RECVPKTINFO),
    };
    let on: libc::c_int = 1;
    // SAFETY: `on` is a live c_int and the length given is its size; the descriptor
    // belongs to `sock`, open for the call.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(sock),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `buf` to `to.peer` from `to.local` (if given) with one `sendmsg`, without
/// waiting (WouldBlock if the socket cannot take it now).
pub(crate) fn send_from(fd: RawFd, buf: &[u8], to: ReplyTo) -> io::Result<usize> {
    let addr = socket2::SockAddr::from(to.peer);
    let mut control = Control::default();
    let mut iov = super::msghdr::EMPTY_IOV;
    let mut hdr = super::msghdr::empty();
    super::msghdr::point(
        &mut hdr,
        &mut iov,
        (buf.as_ptr() as *mut u8, buf.len()),
        (addr.as_ptr() as *mut libc::c_void, addr.len()),
    );
    if let Some(local) = to.local {
        let len = control.write(local);
        hdr.msg_control = control.0.as_mut_ptr().cast();
        hdr.msg_controllen = len as _;
    }
    // SAFETY: the header points at `buf`, `addr` and `control`, all alive and unmoved
    // until the call returns, with the lengths they have; the kernel only reads them.
    let n = unsafe { libc::sendmsg(fd, &hdr, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    #[test]
    fn what_is_written_reads_back_and_garbage_reads_as_nothing() {
        for ip in ["127.0.0.2", "10.1.2.3", "::1", "2001:db8::53"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut c = Control::default();
            let len = c.write(ip);
            assert!(len <= CONTROL_LEN);
            // What the kernel reads as the source for a send is ipi_spec_dst.
            if let IpAddr::V4(v4) = ip {
                assert_eq!(&c.0[HDR + 4..HDR + 8], v4.octets(), "ipi_spec_dst");
            }
            assert_eq!(local_of(&c.0[..len]), Some(ip));
            // Cut short anywhere: nothing, and no panic.
            for cut in 0..len {
                let _ = local_of(&c.0[..cut]);
            }
            assert_eq!(local_of(&c.0[..HDR]), None);
        }
        assert_eq!(local_of(&[]), None);
        assert_eq!(
            local_of(&[0xff; CONTROL_LEN]),
            None,
            "a length past the end"
        );
        let mut zero_len = [0u8; CONTROL_LEN];
        zero_len[0] = 1;
        assert_eq!(local_of(&zero_len), None, "a length shorter than a header");
        // A query to a network's broadcast address: the kernel's ipi_spec_dst
        // (a local address) is the source, not the header's destination; without
        // one, the destination.
        let mut c = Control::default();
        let len = c.write([10, 0, 0, 1].into());
        c.0[HDR + 8..HDR + 12].copy_from_slice(&[10, 0, 0, 255]);
        assert_eq!(local_of(&c.0[..len]), Some([10, 0, 0, 1].into()));
        c.0[HDR + 4..HDR + 8].copy_from_slice(&[0; 4]);
        assert_eq!(local_of(&c.0[..len]), Some([10, 0, 0, 255].into()));
        // A multicast or broadcast destination is not a source.
        for ip in ["224.0.0.251", "255.255.255.255", "ff02::fb", "0.0.0.0"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut c = Control::default();
            let len = c.write(ip);
            assert_eq!(local_of(&c.0[..len]), None, "{ip}");
        }
    }

    /// Receives into `rx` what is queued on `fd`, waiting at most two seconds for
    /// the first datagram.
    fn recv_within(rx: &mut super::super::mmsg::RecvBatch, fd: RawFd) -> usize {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            match rx.recv(fd) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "nothing came");
                    std::thread::yield_now();
                }
                got => return got.unwrap(),
            }
        }
    }

    fn wildcard_v4() -> (socket2::Socket, u16) {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        s.bind(&any.into()).unwrap();
        enable(&s, any).unwrap();
        let port = s.local_addr().unwrap().as_socket().unwrap().port();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        (s, port)
    }

    /// Against the kernel: a query to 127.0.0.2 on a wildcard socket, answered with
    /// and without the address asked. Only with it does the reply come from
    /// 127.0.0.2, also once the socket is connected to loopback (released).
    #[test]
    fn a_reply_leaves_from_the_address_the_query_went_to() {
        let (server, port) = wildcard_v4();
        let asked = SocketAddr::from(([127, 0, 0, 2], port));
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let peer = client.local_addr().unwrap();
        for released in [false, true] {
            client.send_to(b"q", asked).unwrap();
            let mut rx = super::super::mmsg::RecvBatch::new();
            let n = recv_within(&mut rx, server.as_raw_fd());
            assert_eq!(n, 1);
            let (bytes, to) = rx.datagram(0).unwrap();
            assert_eq!(bytes, b"q");
            assert_eq!(
                to,
                ReplyTo {
                    peer,
                    local: Some(asked.ip())
                }
            );
            if released {
                let lo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                server.connect(&lo.local_addr().unwrap().into()).unwrap();
            }
            let mut got = [0u8; 8];
            send_from(server.as_raw_fd(), b"with", to).unwrap();
            let (n, from) = client.recv_from(&mut got).unwrap();
            assert_eq!(
                (&got[..n], from),
                (&b"with"[..], asked),
                "released: {released}"
            );
            send_from(server.as_raw_fd(), b"without", ReplyTo::peer(peer)).unwrap();
            let (n, from) = client.recv_from(&mut got).unwrap();
            assert_eq!(&got[..n], b"without");
            assert_eq!(
                from.ip(),
                IpAddr::from([127, 0, 0, 1]),
                "the route's choice"
            );
        }
    }

    #[test]
    fn an_ipv6_wildcard_socket_reports_the_address_asked() {
        let s = match socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None) {
            Ok(s) => s,
            Err(e) => return eprintln!("note: no IPv6 here ({e}); not tested"),
        };
        s.set_only_v6(true).unwrap();
        let any: SocketAddr = "[::]:0".parse().unwrap();
        if let Err(e) = s.bind(&any.into()) {
            return eprintln!("note: no IPv6 here ({e}); not tested");
        }
        enable(&s, any).unwrap();
        let port = s.local_addr().unwrap().as_socket().unwrap().port();
        let Ok(client) = std::net::UdpSocket::bind("[::1]:0") else {
            return eprintln!("note: no ::1 here; not tested");
        };
        client.send_to(b"q6", ("::1", port)).unwrap();
        let mut rx = super::super::mmsg::RecvBatch::new();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert_eq!(recv_within(&mut rx, s.as_raw_fd()), 1);
        let (_, to) = rx.datagram(0).unwrap();
        assert_eq!(to.local, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        send_from(s.as_raw_fd(), b"r6", to).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut got = [0u8; 4];
        let (n, from) = client.recv_from(&mut got).unwrap();
        assert_eq!(
            (&got[..n], from),
            (&b"r6"[..], SocketAddr::from((Ipv6Addr::LOCALHOST, port)))
        );
    }

    #[test]
    fn a_socket_bound_to_one_address_reports_none() {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        s.bind(&addr.into()).unwrap();
        enable(&s, addr).unwrap();
        let port = s.local_addr().unwrap().as_socket().unwrap().port();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"q", ("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut rx = super::super::mmsg::RecvBatch::new();
        assert_eq!(recv_within(&mut rx, s.as_raw_fd()), 1);
        assert_eq!(
            rx.datagram(0).unwrap().1.local,
            None,
            "no option, no address"
        );
    }
}
