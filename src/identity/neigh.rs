//! The gateway's neighbour table (IPv4 ARP, IPv6 NDP): which device (link-layer
//! address) is behind a client address now. A login remembers the device it came
//! from; when the DHCP lease of that address goes to another device, the neighbour
//! table says so and the login ends (`IdentityTable::end_moved`), so the next
//! person on that address is not browsing under someone else's name.

use std::collections::HashMap;
use std::net::IpAddr;

/// Client address → link-layer address (lowercase `aa:bb:cc:dd:ee:ff`).
pub type Neighbours = HashMap<IpAddr, String>;

fn usable(mac: &str) -> bool {
    mac.len() == 17 && mac != "00:00:00:00:00:00" && mac.split(':').count() == 6
}

/// Parses `/proc/net/arp`: complete entries only (flag 0x2).
pub fn parse_proc_arp(text: &str) -> Neighbours {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let ip = f.first()?.parse().ok()?;
            let flags = u32::from_str_radix(f.get(2)?.trim_start_matches("0x"), 16).ok()?;
            let mac = f.get(3)?.to_ascii_lowercase();
            (flags & 0x2 != 0 && usable(&mac)).then_some((ip, mac))
        })
        .collect()
}

/// Parses `ip -6 neigh show`: `ADDR dev IF lladdr MAC STATE`; entries without a
/// link-layer address (FAILED, INCOMPLETE) are left out.
pub fn parse_ip_neigh(text: &str) -> Neighbours {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let ip = f.first()?.parse().ok()?;
            let at = f.iter().position(|w| *w == "lladdr")?;
            let mac = f.get(at + 1)?.to_ascii_lowercase();
            usable(&mac).then_some((ip, mac))
        })
        .collect()
}

/// The current table (empty where it cannot be read: no check is made then).
pub fn read() -> Neighbours {
    let mut n = std::fs::read_to_string("/proc/net/arp")
        .map(|t| parse_proc_arp(&t))
        .unwrap_or_default();
    if let Ok(out) = std::process::Command::new("ip")
        .args(["-6", "neigh", "show"])
        .stderr(std::process::Stdio::null())
        .output()
    {
        n.extend(parse_ip_neigh(&String::from_utf8_lossy(&out.stdout)));
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_arp_and_ndp_tables() {
        let arp = "IP address       HW type     Flags       HW address            Mask     Device\n\
                   10.1.2.3         0x1         0x2         02:FC:00:00:00:05     *        eth0\n\
                   10.1.2.4         0x1         0x0         00:00:00:00:00:00     *        eth0\n";
        let n = parse_proc_arp(arp);
        assert_eq!(n.len(), 1);
        assert_eq!(
            n[&"10.1.2.3".parse::<IpAddr>().unwrap()],
            "02:fc:00:00:00:05"
        );
        let ndp = "fd00::5 dev eth0 lladdr 02:aa:bb:cc:dd:ee REACHABLE\nfd00::1 dev eth0 FAILED\n";
        let n = parse_ip_neigh(ndp);
        assert_eq!(n.len(), 1);
        assert_eq!(
            n[&"fd00::5".parse::<IpAddr>().unwrap()],
            "02:aa:bb:cc:dd:ee"
        );
    }
}
