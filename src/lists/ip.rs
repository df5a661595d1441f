//! The compiled `IpSet`: "which lists contain this IPv4/IPv6 address?" for Tor relay,
//! VPN and DoH provider address lists.
//!
//! The prefixes of each (category, source, exception) are first aggregated with
//! `ipnet` (adjacent /32s of a Tor list collapse), then the address space of each
//! family is cut into disjoint intervals, each labelled with the interned set of
//! prefixes covering it; a lookup is one binary search over the interval starts.
//! For IPv4 a 65,536-entry index on the top 16 bits of the address narrows that
//! search to the few intervals of one /16 (256 KiB well spent: 18 dependent probes
//! into a 100,000-prefix table cost more than the 100 ns budget).
//! Overlapping prefixes from different lists are therefore all reported. This module
//! owns matching only; files are read by `parse`, verdicts are policy's.

use std::collections::HashMap;
use std::net::IpAddr;

use arrayvec::ArrayVec;
use ipnet::IpNet;

use super::domain::Tag;
use super::{CatSet, CategoryId, SourceId};

/// One listed prefix containing the address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpHit {
    pub category: CategoryId,
    pub source: SourceId,
    /// The listed prefix containing the address (after aggregation of the source's
    /// adjacent prefixes, so it may be wider than one line of the file).
    pub net: IpNet,
    pub exception: bool,
}

#[derive(Clone, Debug, Default)]
pub struct IpMatch {
    pub hits: ArrayVec<IpHit, 8>,
    /// More than 8 prefixes matched; `categories()` still accounts for all of them.
    pub truncated: bool,
    listed: CatSet,
    excepted: CatSet,
}

impl IpMatch {
    /// Categories listing the address minus those an exception prefix matched.
    pub fn categories(&self) -> CatSet {
        self.listed.minus(self.excepted)
    }

    pub fn exceptions(&self) -> CatSet {
        self.excepted
    }

    pub fn is_empty(&self) -> bool {
        self.hits.is_empty() && !self.truncated
    }
}

/// Interval label meaning "no prefix covers this interval".
const NONE: u32 = u32::MAX;

#[derive(Clone, Debug, Default)]
pub struct IpSet {
    /// Interval `i` of a family is `[starts[i], starts[i + 1])`, labelled `sets[i]`.
    v4_starts: Vec<u32>,
    v4_sets: Vec<u32>,
    /// `v4_index[p]` = number of intervals starting before `p << 16` (65,537 entries,
    /// or none for an empty set).
    v4_index: Vec<u32>,
    v6_starts: Vec<u128>,
    v6_sets: Vec<u32>,
    /// Set `s` is `set_items[set_offsets[s]..set_offsets[s + 1]]`, indices into `nets`.
    set_offsets: Vec<u32>,
    set_items: Vec<u32>,
    nets: Vec<(IpNet, Tag)>,
}

impl IpSet {
    pub fn lookup(&self, ip: IpAddr) -> IpMatch {
        let mut m = IpMatch::default();
        // `::ffff:1.2.3.4` is how a dual-stack socket shows an IPv4 client.
        let set = match ip.to_canonical() {
            IpAddr::V4(a) => self.v4_interval(u32::from(a)),
            IpAddr::V6(a) => interval(&self.v6_starts, &self.v6_sets, u128::from(a)),
        };
        let Some(set) = set else { return m };
        let (Some(&a), Some(&b)) = (
            self.set_offsets.get(set as usize),
            self.set_offsets.get(set as usize + 1),
        ) else {
            return m;
        };
        for &n in self.set_items.get(a as usize..b as usize).unwrap_or(&[]) {
            let Some(&(net, tag)) = self.nets.get(n as usize) else {
                continue;
            };
            if tag.exception {
                m.excepted.insert(tag.category);
            } else {
                m.listed.insert(tag.category);
            }
            let hit = IpHit {
                category: tag.category,
                source: tag.source,
                net,
                exception: tag.exception,
            };
            if m.hits.try_push(hit).is_err() {
                m.truncated = true;
            }
        }
        m
    }

    /// Number of prefixes after aggregation.
    pub fn len(&self) -> usize {
        self.nets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn memory_bytes(&self) -> usize {
        self.v4_starts.capacity() * 4
            + self.v4_sets.capacity() * 4
            + self.v4_index.capacity() * 4
            + self.v6_starts.capacity() * 16
            + self.v6_sets.capacity() * 4
            + self.set_offsets.capacity() * 4
            + self.set_items.capacity() * 4
            + self.nets.capacity() * std::mem::size_of::<(IpNet, Tag)>()
    }
}

impl IpSet {
    fn v4_interval(&self, x: u32) -> Option<u32> {
        let p = (x >> 16) as usize;
        let (Some(&lo), Some(&hi)) = (self.v4_index.get(p), self.v4_index.get(p + 1)) else {
            return interval(&self.v4_starts, &self.v4_sets, x);
        };
        // Intervals starting inside this /16, plus the one running into it.
        let (lo, hi) = (lo as usize, hi as usize);
        let within = self.v4_starts.get(lo..hi).unwrap_or(&[]);
        let i = (lo + within.partition_point(|&s| s <= x)).checked_sub(1)?;
        self.v4_sets.get(i).copied().filter(|&s| s != NONE)
    }
}

fn interval<T: Copy + Ord>(starts: &[T], sets: &[u32], x: T) -> Option<u32> {
    let i = starts.partition_point(|&s| s <= x).checked_sub(1)?;
    sets.get(i).copied().filter(|&s| s != NONE)
}

#[derive(Default)]
pub(crate) struct IpSetBuilder {
    by_tag: HashMap<Tag, Vec<IpNet>>,
}

impl IpSetBuilder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn add(&mut self, net: IpNet, tag: Tag) {
        self.by_tag.entry(tag).or_default().push(net);
    }

    pub(crate) fn build(self) -> IpSet {
        let mut groups: Vec<(Tag, Vec<IpNet>)> = self.by_tag.into_iter().collect();
        groups.sort_by_key(|(t, _)| *t); // deterministic ids whatever the HashMap order
        let mut nets = Vec::new();
        for (tag, list) in groups {
            nets.extend(IpNet::aggregate(&list).into_iter().map(|n| (n, tag)));
        }
        let mut set = IpSet {
            set_offsets: vec![0],
            ..IpSet::default()
        };
        let mut interner: HashMap<Vec<u32>, u32> = HashMap::new();
        let v4: Vec<(u128, Option<u128>, u32)> = ranges(&nets, true);
        let v6: Vec<(u128, Option<u128>, u32)> = ranges(&nets, false);
        let (starts, sets) = sweep(v4, &mut interner, &mut set);
        // Every IPv4 bound fits in u32: ranges() only produced IPv4 values here.
        set.v4_starts = starts.into_iter().map(|s| s as u32).collect();
        set.v4_sets = sets;
        if !set.v4_starts.is_empty() {
            set.v4_index = (0..=1u64 << 16)
                .map(|p| set.v4_starts.partition_point(|&s| u64::from(s) < p << 16) as u32)
                .collect();
        }
        let (starts, sets) = sweep(v6, &mut interner, &mut set);
        set.v6_starts = starts;
        set.v6_sets = sets;
        set.nets = nets;
        set.set_offsets.shrink_to_fit();
        set.set_items.shrink_to_fit();
        set
    }
}

/// `(first address, one past the last or None at the end of the space, net index)`.
fn ranges(nets: &[(IpNet, Tag)], v4: bool) -> Vec<(u128, Option<u128>, u32)> {
    nets.iter()
        .enumerate()
        .filter_map(|(i, (net, _))| {
            let (lo, hi) = match (net, v4) {
                (IpNet::V4(n), true) => (
                    u128::from(u32::from(n.network())),
                    u128::from(u32::from(n.broadcast())),
                ),
                (IpNet::V6(n), false) => (u128::from(n.network()), u128::from(n.broadcast())),
                _ => return None,
            };
            let end = if v4 && hi == u128::from(u32::MAX) {
                None
            } else {
                hi.checked_add(1)
            };
            Some((lo, end, i as u32))
        })
        .collect()
}

/// Cuts one family's space into labelled disjoint intervals.
fn sweep(
    ranges: Vec<(u128, Option<u128>, u32)>,
    interner: &mut HashMap<Vec<u32>, u32>,
    set: &mut IpSet,
) -> (Vec<u128>, Vec<u32>) {
    // Events at a position: +net at its start, -net one past its end.
    let mut events: Vec<(u128, bool, u32)> = Vec::with_capacity(ranges.len() * 2);
    for (lo, end, i) in ranges {
        events.push((lo, true, i));
        if let Some(end) = end {
            events.push((end, false, i));
        }
    }
    events.sort_unstable();
    let mut starts = Vec::new();
    let mut sets = Vec::new();
    let mut active: Vec<u32> = Vec::new();
    let mut k = 0;
    while k < events.len() {
        let pos = events[k].0;
        while k < events.len() && events[k].0 == pos {
            let (_, add, i) = events[k];
            if add {
                active.push(i);
            } else if let Some(p) = active.iter().position(|&a| a == i) {
                active.swap_remove(p);
            }
            k += 1;
        }
        let label = if active.is_empty() {
            NONE
        } else {
            let mut key = active.clone();
            key.sort_unstable();
            match interner.get(&key) {
                Some(&id) => id,
                None => {
                    let id = (set.set_offsets.len() - 1) as u32;
                    set.set_items.extend_from_slice(&key);
                    set.set_offsets.push(set.set_items.len() as u32);
                    interner.insert(key, id);
                    id
                }
            }
        };
        if sets.last() != Some(&label) {
            starts.push(pos);
            sets.push(label);
        }
    }
    (starts, sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(c: CategoryId, exception: bool) -> Tag {
        Tag {
            category: c,
            source: c,
            exception,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn v4_v6_overlaps_and_edges() {
        let mut b = IpSetBuilder::new();
        b.add(net("10.0.0.0/8"), tag(1, false));
        b.add(net("10.1.0.0/16"), tag(2, false));
        b.add(net("255.255.255.255/32"), tag(3, false));
        b.add(net("0.0.0.0/32"), tag(3, false));
        b.add(net("2001:db8::/32"), tag(4, false));
        b.add(
            net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"),
            tag(4, false),
        );
        b.add(net("10.1.2.3/32"), tag(2, true));
        let s = b.build();
        assert_eq!(s.lookup(ip("10.2.0.1")).categories(), CatSet::single(1));
        assert_eq!(s.lookup(ip("10.1.0.1")).categories(), CatSet(0b110));
        assert_eq!(s.lookup(ip("10.1.2.3")).categories(), CatSet::single(1));
        assert_eq!(s.lookup(ip("10.1.2.3")).exceptions(), CatSet::single(2));
        assert!(s.lookup(ip("11.0.0.0")).is_empty());
        assert!(s.lookup(ip("9.255.255.255")).is_empty());
        assert_eq!(
            s.lookup(ip("255.255.255.255")).categories(),
            CatSet::single(3)
        );
        assert_eq!(s.lookup(ip("0.0.0.0")).categories(), CatSet::single(3));
        assert!(s.lookup(ip("0.0.0.1")).is_empty());
        assert_eq!(s.lookup(ip("2001:db8::1")).categories(), CatSet::single(4));
        assert_eq!(
            s.lookup(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
                .categories(),
            CatSet::single(4)
        );
        assert!(s.lookup(ip("2001:db9::1")).is_empty());
        assert_eq!(
            s.lookup(ip("::ffff:10.2.0.1")).categories(),
            CatSet::single(1)
        );
        let m = s.lookup(ip("10.1.0.1"));
        let mut nets: Vec<_> = m.hits.iter().map(|h| h.net.to_string()).collect();
        nets.sort();
        assert_eq!(nets, vec!["10.0.0.0/8", "10.1.0.0/16"]);
    }

    #[test]
    fn adjacent_prefixes_aggregate() {
        let mut b = IpSetBuilder::new();
        for last in 0..=255u8 {
            b.add(IpNet::from(IpAddr::from([192, 0, 2, last])), tag(1, false));
        }
        let s = b.build();
        assert_eq!(s.len(), 1);
        assert_eq!(s.lookup(ip("192.0.2.77")).hits[0].net, net("192.0.2.0/24"));
    }

    #[test]
    fn empty_set() {
        let s = IpSetBuilder::new().build();
        assert!(s.lookup(ip("1.1.1.1")).is_empty());
        assert!(s.lookup(ip("::1")).is_empty());
    }

    #[test]
    fn matches_naive_reference_on_random_prefixes() {
        // Deterministic pseudo-random prefixes (xorshift) checked against a scan.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut b = IpSetBuilder::new();
        let mut all = Vec::new();
        for _ in 0..500 {
            let addr = (rnd() as u32) & 0x0FFF_FFFF;
            let len = 8 + (rnd() % 25) as u8;
            let n = IpNet::new(IpAddr::from(addr.to_be_bytes()), len)
                .unwrap()
                .trunc();
            let c = (rnd() % 4) as CategoryId;
            b.add(n, tag(c, false));
            all.push((n, c));
        }
        let s = b.build();
        for _ in 0..5000 {
            let a = IpAddr::from(((rnd() as u32) & 0x0FFF_FFFF).to_be_bytes());
            let mut want = CatSet::EMPTY;
            for (n, c) in &all {
                if n.contains(&a) {
                    want.insert(*c);
                }
            }
            assert_eq!(s.lookup(a).categories(), want, "{a}");
        }
    }
}
