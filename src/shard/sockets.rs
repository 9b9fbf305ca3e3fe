//! Binding the listening sockets, on the calling thread before any shard starts:
//! a port in use is reported once, and a port 0 is resolved once and shared by every
//! shard (UDP and TCP take the same number). Each shard gets its own SO_REUSEPORT
//! socket per listen address, so the kernel spreads clients over the shards.

use super::StartError;
use crate::config::Config;
use std::net::SocketAddr;

/// One shard's sockets, bound before its thread starts.
pub(super) struct ShardSockets {
    pub(super) udp: Vec<std::net::UdpSocket>,
    pub(super) tcp: Vec<std::net::TcpListener>,
    /// DNS over TLS listeners (`tls.listen`).
    pub(super) dot: Vec<std::net::TcpListener>,
    /// DNS over HTTPS listeners (`https.listen`).
    pub(super) doh: Vec<std::net::TcpListener>,
    /// Duplicates of every listening socket, to shut them down at stop: an io_uring
    /// receive or accept in flight keeps a socket open after its loop is gone, and
    /// with SO_REUSEPORT the kernel would keep routing new clients to it.
    pub(super) closers: Vec<socket2::Socket>,
}

impl ShardSockets {
    fn push_udp(&mut self, sock: std::net::UdpSocket) -> std::io::Result<()> {
        self.closers.push(socket2::Socket::from(sock.try_clone()?));
        self.udp.push(sock);
        Ok(())
    }

    fn push_tcp(&mut self, sock: std::net::TcpListener) -> std::io::Result<()> {
        self.closers.push(socket2::Socket::from(sock.try_clone()?));
        self.tcp.push(sock);
        Ok(())
    }

    fn push_encrypted(&mut self, sock: std::net::TcpListener, https: bool) -> std::io::Result<()> {
        self.closers.push(socket2::Socket::from(sock.try_clone()?));
        if https {
            self.doh.push(sock);
        } else {
            self.dot.push(sock);
        }
        Ok(())
    }

    /// No sockets at all.
    pub(super) fn empty() -> Self {
        Self {
            udp: Vec::new(),
            tcp: Vec::new(),
            dot: Vec::new(),
            doh: Vec::new(),
            closers: Vec::new(),
        }
    }
}

fn reuse_port_socket(addr: SocketAddr, ty: socket2::Type) -> std::io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, ty, None)?;
    sock.set_reuse_port(true)?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sock)
}

fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, StartError> {
    let err = |source| StartError::Bind {
        addr,
        proto: "udp",
        source,
    };
    let sock = reuse_port_socket(addr, socket2::Type::DGRAM).map_err(err)?;
    // On a wildcard: each datagram's destination, for its reply's source.
    crate::io::pktinfo::enable(&sock, addr).map_err(err)?;
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    Ok(sock.into())
}

fn bind_tcp(addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    bind_stream(addr, "tcp")
}

fn bind_stream(addr: SocketAddr, proto: &'static str) -> Result<std::net::TcpListener, StartError> {
    let err = |source| StartError::Bind {
        addr,
        proto,
        source,
    };
    let sock = reuse_port_socket(addr, socket2::Type::STREAM).map_err(err)?;
    sock.listen(1024).map_err(err)?;
    Ok(sock.into())
}

/// Binds every shard's sockets; a port 0 is resolved by the first bind and reused.
pub(super) fn bind_all(
    config: &Config,
    shards: usize,
) -> Result<(Vec<ShardSockets>, Vec<SocketAddr>), StartError> {
    let mut resolved = Vec::new();
    let mut per_shard: Vec<ShardSockets> = (0..shards).map(|_| ShardSockets::empty()).collect();
    for &want in &config.server.listen {
        // With port 0, the kernel picks a UDP port; TCP then takes the same number,
        // retried a few times in case that TCP port is taken.
        let mut attempt = 0;
        let (addr, udp0, tcp0) = loop {
            let udp0 = bind_udp(want)?;
            let addr = udp0.local_addr().map_err(|source| StartError::Bind {
                addr: want,
                proto: "udp",
                source,
            })?;
            match bind_tcp(addr) {
                Ok(tcp0) => break (addr, udp0, tcp0),
                Err(e) if want.port() == 0 && attempt < 8 => {
                    attempt += 1;
                    tracing::debug!(error = %e, "retrying port choice");
                }
                Err(e) => return Err(e),
            }
        };
        resolved.push(addr);
        let dup_err = |source| StartError::Bind {
            addr,
            proto: "dup",
            source,
        };
        per_shard[0].push_udp(udp0).map_err(dup_err)?;
        per_shard[0].push_tcp(tcp0).map_err(dup_err)?;
        for sockets in per_shard.iter_mut().skip(1) {
            sockets.push_udp(bind_udp(addr)?).map_err(dup_err)?;
            sockets.push_tcp(bind_tcp(addr)?).map_err(dup_err)?;
        }
    }
    Ok((per_shard, resolved))
}

/// Binds every shard's DNS over TLS (`tls.listen`) and HTTPS (`https.listen`)
/// listeners, SO_REUSEPORT like the others; returns their addresses, port 0
/// resolved once per address and shared by every shard.
pub(super) fn bind_encrypted(
    config: &Config,
    per_shard: &mut [ShardSockets],
) -> Result<(Vec<SocketAddr>, Vec<SocketAddr>), StartError> {
    let mut resolved = (Vec::new(), Vec::new());
    for (https, listen, proto) in [
        (false, &config.tls.listen, "tls"),
        (true, &config.https.listen, "https"),
    ] {
        for &want in listen {
            let first = bind_stream(want, proto)?;
            let addr = first.local_addr().map_err(|source| StartError::Bind {
                addr: want,
                proto,
                source,
            })?;
            let dup_err = |source| StartError::Bind {
                addr,
                proto: "dup",
                source,
            };
            let mut first = Some(first);
            for sockets in per_shard.iter_mut() {
                let sock = match first.take() {
                    Some(s) => s,
                    None => bind_stream(addr, proto)?,
                };
                sockets.push_encrypted(sock, https).map_err(dup_err)?;
            }
            if https {
                resolved.1.push(addr);
            } else {
                resolved.0.push(addr);
            }
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_resolved_once_and_shared_by_every_shard_and_both_protocols() {
        let mut config = Config::default();
        config.server.listen = vec!["127.0.0.1:0".parse().unwrap()];
        let (shards, addrs) = bind_all(&config, 3).unwrap();
        assert_eq!(addrs.len(), 1);
        assert_ne!(addrs[0].port(), 0);
        assert_eq!(shards.len(), 3);
        for s in &shards {
            assert_eq!(s.udp.len(), 1);
            assert_eq!(s.tcp.len(), 1);
            assert_eq!(s.closers.len(), 2);
            assert_eq!(s.udp[0].local_addr().unwrap(), addrs[0]);
            assert_eq!(s.tcp[0].local_addr().unwrap(), addrs[0]);
        }
    }

    #[test]
    fn a_port_taken_by_a_socket_without_reuse_port_is_a_bind_error() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut config = Config::default();
        config.server.listen = vec![taken.local_addr().unwrap()];
        match bind_all(&config, 1) {
            Err(StartError::Bind { proto, addr, .. }) => {
                assert_eq!(proto, "udp");
                assert_eq!(addr, taken.local_addr().unwrap());
            }
            other => panic!("expected a bind error, got {:?}", other.map(|(_, a)| a)),
        }
    }
}
