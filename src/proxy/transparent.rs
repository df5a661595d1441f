//! Transparent mode: the destination a redirected connection was meant for, read
//! from netfilter's conntrack with `SO_ORIGINAL_DST` (IPv4) or
//! `IP6T_SO_ORIGINAL_DST` (IPv6) through nix's safe wrappers.
//!
//! Only the lookup lives here; transparent HTTP requests go through `forward` and
//! transparent TLS through `tunnel`, under the same policy and audit.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpStream;

/// The original destination of a connection redirected by nftables/iptables. A
/// connection that was not redirected reports the listener itself: that is an
/// error (a client talking to the transparent port directly).
#[cfg(target_os = "linux")]
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    let local = stream.local_addr()?;
    let v4 = || -> io::Result<SocketAddr> {
        let sa = getsockopt(stream, sockopt::OriginalDst).map_err(io::Error::from)?;
        Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))),
            u16::from_be(sa.sin_port),
        ))
    };
    let dst = if local.is_ipv4() {
        v4()?
    } else {
        match getsockopt(stream, sockopt::Ip6tOriginalDst) {
            Ok(sa) => SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr)),
                u16::from_be(sa.sin6_port),
            ),
            // An IPv4 client on a dual-stack socket is tracked as IPv4.
            Err(_) => v4()?,
        }
    };
    if dst == local {
        return Err(io::Error::other(
            "connection was not redirected (original destination is the listener)",
        ));
    }
    Ok(dst)
}

#[cfg(not(target_os = "linux"))]
pub fn original_dst(_stream: &TcpStream) -> io::Result<SocketAddr> {
    Err(io::Error::other("transparent mode needs Linux netfilter"))
}
