//! The SSRF guard: which origin addresses the proxy refuses to connect to, however
//! the address was spelled (dotted, decimal, octal or hex IPv4, IPv4-mapped or
//! -compatible IPv6, NAT64, or a name that resolves there).
//!
//! The guard only classifies addresses; the dialer applies it to every address a
//! name resolves to, right before connecting, so DNS rebinding cannot slip past a
//! check made earlier. It must not resolve names itself. The machine's own
//! addresses count as loopback; in service they are read again every 30 s, as a
//! gateway's WAN address may change (DHCP).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::config::ProxyConfig;

/// Why an address is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forbidden {
    /// Loopback, the gateway's own addresses, link-local, unspecified, multicast,
    /// broadcast.
    Special,
    /// One of `[proxy] internal_networks`.
    Internal,
    /// One of vigie's own listeners (a request loop, or a way into the admin app).
    Own,
}

/// The addresses no request may reach.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    internal: Vec<IpNet>,
    allow_loopback: bool,
    /// vigie's listeners; an unspecified IP means "this port on every local address".
    own: Vec<SocketAddr>,
    /// The machine's own addresses (for listeners bound to 0.0.0.0 / [::], and
    /// refused on every port).
    local: Arc<LocalAddrs>,
}

/// The machine's addresses, read again every [`LOCAL_REFRESH`] when asked to
/// (a gateway's WAN address comes from DHCP and changes).
#[derive(Debug, Default)]
struct LocalAddrs {
    addrs: ArcSwap<Vec<IpAddr>>,
    /// How to read them again, and how often (`None`: a fixed list).
    refresh: Option<(ReadAddrs, Duration)>,
    epoch: Option<Instant>,
    /// When they were last read, ms after `epoch`.
    read_ms: AtomicU64,
}

/// Reads the machine's addresses ([`local_addresses`]; another in tests).
type ReadAddrs = fn() -> Vec<IpAddr>;

/// How often the machine's own addresses are read again.
const LOCAL_REFRESH: Duration = Duration::from_secs(30);

impl Guard {
    pub fn new(cfg: &ProxyConfig, own: Vec<SocketAddr>, local: Vec<IpAddr>) -> Guard {
        Guard {
            internal: cfg.internal_networks.clone(),
            allow_loopback: cfg.allow_loopback_origins,
            own,
            local: Arc::new(LocalAddrs {
                addrs: ArcSwap::from_pointee(local),
                ..Default::default()
            }),
        }
    }

    /// The machine's own addresses read now and again every 30 s (by the request
    /// that finds them stale), instead of the fixed list `new` was given.
    pub fn following_local_addresses(self) -> Guard {
        self.following(local_addresses, LOCAL_REFRESH)
    }

    fn following(mut self, read: ReadAddrs, every: Duration) -> Guard {
        self.local = Arc::new(LocalAddrs {
            addrs: ArcSwap::from_pointee(read()),
            refresh: Some((read, every)),
            epoch: Some(Instant::now()),
            read_ms: AtomicU64::new(0),
        });
        self
    }

    /// The machine's own addresses, read again first when stale (one caller
    /// does it; the others use the list they find).
    fn local(&self) -> Arc<Vec<IpAddr>> {
        let l = &self.local;
        if let (Some((read_again, every)), Some(epoch)) = (l.refresh, l.epoch) {
            let now = epoch.elapsed().as_millis() as u64;
            let read = l.read_ms.load(Ordering::Relaxed);
            if now.saturating_sub(read) >= every.as_millis() as u64
                && l.read_ms
                    .compare_exchange(read, now, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                l.addrs.store(Arc::new(read_again()));
            }
        }
        l.addrs.load_full()
    }

    /// Whether connecting to `addr` is refused, and why.
    pub fn check(&self, addr: SocketAddr) -> Result<(), Forbidden> {
        let local = self.local();
        let ip = embedded_ipv4(addr.ip());
        let own = self.own.iter().any(|o| {
            o.port() == addr.port()
                && (embedded_ipv4(o.ip()) == ip
                    || (o.ip().is_unspecified()
                        && (ip.is_loopback() || ip.is_unspecified() || local.contains(&ip))))
        });
        if own {
            return Err(Forbidden::Own);
        }
        // The gateway's own addresses count as loopback on every port, not only
        // vigie's: a connection the proxy makes to them comes from the machine
        // itself, past the firewall rules that keep clients off its SSH, exporters
        // and other local services.
        if is_special(ip, self.allow_loopback) || (!self.allow_loopback && local.contains(&ip)) {
            return Err(Forbidden::Special);
        }
        if self.internal.iter().any(|n| n.contains(&ip)) {
            return Err(Forbidden::Internal);
        }
        Ok(())
    }
}

/// Loopback, unspecified, link-local, multicast, broadcast, and the "this network"
/// block: never an origin a school's client may ask the gateway to reach.
fn is_special(ip: IpAddr, allow_loopback: bool) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            (v4.is_loopback() && !allow_loopback)
                || v4.octets()[0] == 0
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            (v6.is_loopback() && !allow_loopback)
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// The IPv4 address inside an IPv6 one that carries it (mapped `::ffff:a.b.c.d`,
/// compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`), else the address itself: the
/// kernel or a NAT64 gateway would deliver those to the IPv4 host.
pub fn embedded_ipv4(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let compatible = s[..6].iter().all(|&x| x == 0) && !v6.is_loopback() && !v6.is_unspecified();
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6].iter().all(|&x| x == 0);
    if compatible || nat64 {
        IpAddr::V4(tail)
    } else {
        ip
    }
}

/// An IP address written in any form a URL host may take: `[v6]`, dotted quad, and
/// the legacy `inet_aton` forms browsers and libc still accept (`2130706433`,
/// `0x7f.1`, `0177.0.0.1`, `127.1`) — per the WHATWG URL IPv4 parser. `None` for a
/// name.
pub fn parse_host_ip(host: &str) -> Option<IpAddr> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // Zone ids (`%eth0`) are meaningless to a proxy and refused by parse().
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(v6) = host.parse::<Ipv6Addr>() {
        return Some(IpAddr::V6(v6));
    }
    parse_ipv4_loose(host).map(IpAddr::V4)
}

fn parse_ipv4_loose(host: &str) -> Option<Ipv4Addr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    // A name whose last label is not numeric is a name (`1.example`).
    let mut nums = Vec::with_capacity(4);
    for p in &parts {
        nums.push(parse_ipv4_number(p)?);
    }
    let (last, init) = nums.split_last()?;
    if init.iter().any(|&n| n > 255) {
        return None;
    }
    let room = 8 * (5 - nums.len() as u32);
    if room < 32 && *last >= 1u64 << room {
        return None;
    }
    if *last > u32::MAX as u64 {
        return None;
    }
    let mut v = *last as u32;
    for (i, n) in init.iter().enumerate() {
        v |= (*n as u32) << (8 * (3 - i));
    }
    Some(Ipv4Addr::from(v))
}

fn parse_ipv4_number(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() {
        return Some(0);
    }
    if digits.len() > 12 {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// The machine's own addresses (for listeners on 0.0.0.0 / [::]); empty if the
/// interfaces cannot be listed, in which case loopback still counts as own.
pub fn local_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in addrs {
        let Some(sa) = a.address else { continue };
        if let Some(v4) = sa.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_machines_addresses_are_followed_when_they_change() {
        use std::sync::atomic::AtomicU8;
        static LAST: AtomicU8 = AtomicU8::new(1);
        fn read() -> Vec<IpAddr> {
            vec![IpAddr::from([192, 0, 2, LAST.load(Ordering::Relaxed)])]
        }
        let g = Guard::new(&ProxyConfig::default(), vec![], vec![]).following(read, Duration::ZERO);
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(g.check(sa("192.0.2.1:22")), Err(Forbidden::Special));
        // DHCP gives the gateway another address: it is refused, the old one not.
        LAST.store(9, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(g.check(sa("192.0.2.9:22")), Err(Forbidden::Special));
        assert_eq!(g.check(sa("192.0.2.1:22")), Ok(()));
        // A fixed list (tests, `new`) is not read again.
        let fixed = Guard::new(&ProxyConfig::default(), vec![], vec![ip("192.0.2.1")]);
        assert_eq!(fixed.check(sa("192.0.2.1:22")), Err(Forbidden::Special));
        assert_eq!(fixed.check(sa("192.0.2.9:22")), Ok(()));
    }

    #[test]
    fn loose_ipv4_spellings() {
        for s in [
            "2130706433",
            "0x7f000001",
            "0x7f.1",
            "0177.0.0.1",
            "127.1",
            "127.0.1",
            "127.0.0.1",
            "127.0.0.1.",
        ] {
            assert_eq!(parse_host_ip(s), Some(ip("127.0.0.1")), "{s}");
        }
        assert_eq!(
            parse_host_ip("[::ffff:127.0.0.1]"),
            Some(ip("::ffff:127.0.0.1"))
        );
        for s in [
            "example.com",
            "1.example",
            "256.1.1.1.1",
            "1.2.3.256x",
            "",
            "4294967296",
            "1.2.3.0x100",
        ] {
            assert_eq!(parse_host_ip(s), None, "{s}");
        }
        assert_eq!(parse_host_ip("10.0.258"), Some(ip("10.0.1.2")));
    }

    #[test]
    fn guard_refuses_special_internal_and_own() {
        let mut cfg = ProxyConfig {
            internal_networks: vec!["10.20.0.0/16".parse().unwrap()],
            ..Default::default()
        };
        let g = Guard::new(
            &cfg,
            vec![
                "0.0.0.0:3128".parse().unwrap(),
                "127.0.0.1:8080".parse().unwrap(),
            ],
            vec![ip("192.0.2.1")],
        );
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(g.check(sa("127.0.0.1:80")), Err(Forbidden::Special));
        assert_eq!(
            g.check(sa("[::ffff:127.0.0.1]:80")),
            Err(Forbidden::Special)
        );
        assert_eq!(g.check(sa("[::127.0.0.1]:80")), Err(Forbidden::Special));
        assert_eq!(
            g.check(sa("[64:ff9b::a9fe:a9fe]:80")),
            Err(Forbidden::Special)
        );
        assert_eq!(g.check(sa("169.254.169.254:80")), Err(Forbidden::Special));
        assert_eq!(g.check(sa("[fe80::1]:80")), Err(Forbidden::Special));
        assert_eq!(g.check(sa("0.0.0.0:80")), Err(Forbidden::Special));
        assert_eq!(g.check(sa("10.20.3.4:443")), Err(Forbidden::Internal));
        assert_eq!(g.check(sa("192.0.2.1:3128")), Err(Forbidden::Own));
        assert_eq!(g.check(sa("192.0.2.1:22")), Err(Forbidden::Special));
        assert_eq!(
            g.check(sa("[::ffff:192.0.2.1]:9100")),
            Err(Forbidden::Special)
        );
        assert_eq!(g.check(sa("192.0.2.2:80")), Ok(()));
        assert_eq!(g.check(sa("93.184.216.34:443")), Ok(()));

        cfg.allow_loopback_origins = true;
        let g = Guard::new(
            &cfg,
            vec!["127.0.0.1:8080".parse().unwrap()],
            vec![ip("192.0.2.1")],
        );
        assert_eq!(g.check(sa("127.0.0.1:80")), Ok(()));
        assert_eq!(g.check(sa("192.0.2.1:80")), Ok(()));
        assert_eq!(g.check(sa("127.0.0.1:8080")), Err(Forbidden::Own));
        assert_eq!(g.check(sa("[::ffff:127.0.0.1]:8080")), Err(Forbidden::Own));
        assert_eq!(g.check(sa("169.254.169.254:80")), Err(Forbidden::Special));
    }
}
