//! Host-name normalisation and the compiled `DomainSet`: "which categories list this
//! host or one of its parent domains?" in a couple of cache misses and no allocation.
//!
//! The set stores no entry text. A list entry `example.com` matches a query host
//! `a.b.example.com` exactly when one label-suffix of the query equals the entry, so
//! the set keeps only a 64-bit hash of every normalised entry and the lookup hashes
//! every label-suffix of the query (`a.b.example.com`, `b.example.com`,
//! `example.com`, `com`); a hit's entry text is the suffix of the host it reports.
//! This module must not know about files, formats or policy: parsers feed it
//! normalised names, policy reads `DomainMatch`.
//!
//! Layout: a static open-addressing table of 64-byte buckets (one cache line), each
//! holding 6 `u64` hashes and, beside them, the 6 `u16` ids of their interned "tag
//! sets" — the list of `(category, source, exception)` that listed the name — so a
//! hit costs one cache line, not two. The home buckets are ~85 % full. Keys are placed
//! in ascending hash order with linear probing and the home bucket is a monotone
//! function of the hash (fast range, multiply-high), so the table is globally sorted:
//! a probe stops at the first empty slot or larger hash and needs the next bucket
//! only when its home bucket is full of smaller hashes (~30 % of probes, simulated).
//! The lookup hashes all suffixes, then reads every home bucket and its neighbour in
//! one branch-free pass, so the cache misses of a query overlap instead of queueing
//! behind each other; only the rare probe that runs past two buckets loops.
//!
//! False positives: two different names share a 64-bit xxh3 hash with probability
//! ~2^-64 per pair, so a lookup of ~3 suffixes against 5 M entries reports a name
//! that is not listed with probability ~1e-12. We accept that: it can only over-block
//! (a collision never *hides* a listed name), it saves ~20 bytes per entry, and the
//! explain trace shows the suffix that matched so a staff member can see it.

use std::collections::HashMap;

use arrayvec::ArrayVec;
use xxhash_rust::xxh3::xxh3_64;

use super::cache::Reader;
use super::{CatSet, CategoryId, ListError, SourceId};

/// Longest name DNS allows (RFC 1035, without the root dot).
const MAX_NAME: usize = 253;
/// Longest label DNS allows.
const MAX_LABEL: usize = 63;
/// Slots per bucket: 6 × (u64 + u16) + 4 spare bytes = one 64-byte cache line.
const SLOTS: usize = 6;
/// Fill ratio of the home buckets, in percent: 85 % costs ~12.5 bytes per name;
/// 90 % would save 0.7 byte but send 44 % of probes to a second bucket (simulated).
const LOAD_PERCENT: usize = 85;

/// One list entry that matched a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainHit {
    pub category: CategoryId,
    pub source: SourceId,
    /// The entry is an exception (allowlist, Adblock `@@`) for `category`.
    pub exception: bool,
    /// the matched list entry is the last `suffix_len` bytes of the normalised host
    pub suffix_len: u8,
}

/// Everything a host matched, most specific suffix first.
#[derive(Clone, Debug, Default)]
pub struct DomainMatch {
    /// At most 16 hits are kept (see `truncated`); `categories()` and `exceptions()`
    /// account for every hit, kept or not.
    pub hits: ArrayVec<DomainHit, 16>,
    /// More than 16 entries matched; the extra hits were not kept.
    pub truncated: bool,
    listed: CatSet,
    excepted: CatSet,
}

impl DomainMatch {
    /// Categories that list the host, minus those for which some matching entry is
    /// an exception: an exception wins whatever its specificity (Adblock `@@`).
    pub fn categories(&self) -> CatSet {
        self.listed.minus(self.excepted)
    }

    /// Categories for which an exception entry matched.
    pub fn exceptions(&self) -> CatSet {
        self.excepted
    }

    /// No entry matched at all (neither listing nor exception).
    pub fn is_empty(&self) -> bool {
        self.hits.is_empty() && !self.truncated
    }

    fn push(&mut self, tag: Tag, suffix_len: u8) {
        if tag.exception {
            self.excepted.insert(tag.category);
        } else {
            self.listed.insert(tag.category);
        }
        let hit = DomainHit {
            category: tag.category,
            source: tag.source,
            exception: tag.exception,
            suffix_len,
        };
        if self.hits.try_push(hit).is_err() {
            self.truncated = true;
        }
    }
}

/// Why a name was rejected; rendered with the offending text by `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HostError {
    Empty,
    NotUtf8,
    Idna,
    InvalidChar(char),
    Wildcard,
    EmptyLabel,
    LabelTooLong(usize),
    NameTooLong(usize),
}

impl HostError {
    pub(crate) fn reason(self, raw: &[u8]) -> String {
        let q = super::parse::quoted(raw);
        match self {
            HostError::Empty => "empty name".into(),
            HostError::NotUtf8 => "not valid UTF-8".into(),
            HostError::Idna => format!("invalid internationalised name {q}"),
            HostError::InvalidChar(c) => format!("invalid character {c:?} in name {q}"),
            HostError::Wildcard => format!("'*' is only allowed as a leading \"*.\" in {q}"),
            HostError::EmptyLabel => format!("empty label in name {q}"),
            HostError::LabelTooLong(n) => {
                format!("label of {n} bytes (more than {MAX_LABEL}) in name {q}")
            }
            HostError::NameTooLong(n) => format!("name of {n} bytes (more than {MAX_NAME})"),
        }
    }
}

/// Normalises a host name as lists and lookups see it: surrounding blanks, a leading
/// `*.` or `.` and one trailing dot removed, lower case, internationalised names
/// converted to punycode (`bücher.de` → `xn--bcher-kva.de`), then validated (letters,
/// digits, `-`, `_`; labels 1–63 bytes; name ≤ 253 bytes). `_` is accepted because
/// real lists and real DNS carry it (`_dmarc`, `foo_bar.tripod.com`).
///
/// The error is a reason text fit for `file:line: reason` or a CLI message.
pub fn normalize_host(raw: &str) -> Result<String, String> {
    let mut out = Vec::new();
    normalize_into(raw.as_bytes(), &mut out).map_err(|e| e.reason(raw.as_bytes()))?;
    // normalize_into only ever writes ASCII.
    String::from_utf8(out).map_err(|_| "not valid UTF-8".to_string())
}

/// Allocation-free (reused buffer) form of `normalize_host` for the parsers.
pub(crate) fn normalize_into(raw: &[u8], out: &mut Vec<u8>) -> Result<(), HostError> {
    let mut s = raw.trim_ascii();
    if let Some(rest) = s.strip_prefix(b"*.") {
        s = rest;
    } else if let Some(rest) = s.strip_prefix(b".") {
        s = rest;
    }
    if let Some(rest) = s.strip_suffix(b".") {
        s = rest;
    }
    if s.is_empty() {
        return Err(HostError::Empty);
    }
    out.clear();
    if s.is_ascii() {
        // Fast path: every name of a real list but the rare IDN.
        push_ascii_name(s, out)?;
    } else {
        let text = std::str::from_utf8(s).map_err(|_| HostError::NotUtf8)?;
        let ascii = idna::domain_to_ascii_cow(text.as_bytes(), idna::AsciiDenyList::URL)
            .map_err(|_| HostError::Idna)?;
        push_ascii_name(ascii.as_bytes(), out)?;
    }
    validate_labels(out)
}

fn push_ascii_name(s: &[u8], out: &mut Vec<u8>) -> Result<(), HostError> {
    for &b in s {
        let c = b.to_ascii_lowercase();
        match c {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(c),
            b'*' => return Err(HostError::Wildcard),
            _ => return Err(HostError::InvalidChar(c as char)),
        }
    }
    Ok(())
}

fn validate_labels(name: &[u8]) -> Result<(), HostError> {
    if name.len() > MAX_NAME {
        return Err(HostError::NameTooLong(name.len()));
    }
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel);
        }
        if label.len() > MAX_LABEL {
            return Err(HostError::LabelTooLong(label.len()));
        }
    }
    Ok(())
}

/// Hash of a normalised name or suffix. 0 marks an empty slot, so it is remapped.
#[inline]
fn name_hash(bytes: &[u8]) -> u64 {
    match xxh3_64(bytes) {
        0 => 1,
        h => h,
    }
}

/// Fast range: maps a uniform hash onto `0..n` with a multiply-high instead of a
/// division, and — what the sorted layout relies on — monotonically in the hash.
#[inline]
fn home_bucket(h: u64, n: u64) -> usize {
    ((u128::from(h) * u128::from(n)) >> 64) as usize
}

/// Bit of `label_mask` for a name of `labels` labels (names of ≥ 63 labels share one).
#[inline]
fn label_bit(labels: usize) -> u64 {
    1u64 << labels.min(63)
}

/// Who listed a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Tag {
    pub category: CategoryId,
    pub source: SourceId,
    pub exception: bool,
}

/// One cache line of the table: keys in ascending order from slot 0, 0 = empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(64))]
struct Bucket {
    keys: [u64; SLOTS],
    /// Tag-set id of each key (meaningless for empty slots).
    tags: [u16; SLOTS],
}

impl Bucket {
    /// Bit i set when slot i holds `h`; branch-free so the loads of several probes
    /// can be in flight together.
    #[inline]
    fn mask(&self, h: u64) -> u32 {
        let mut m = 0;
        for (i, &k) in self.keys.iter().enumerate() {
            m |= u32::from(k == h) << i;
        }
        m
    }

    /// `h` may be stored after this bucket: it is full and all its keys are smaller.
    #[inline]
    fn continues_past(&self, h: u64) -> bool {
        let last = self.keys[SLOTS - 1];
        last != 0 && last < h
    }

    #[inline]
    fn tag_at(&self, mask: u32) -> u16 {
        self.tags.get(mask.trailing_zeros() as usize).copied().unwrap_or(0)
    }
}

const _: () = assert!(std::mem::size_of::<Bucket>() == 64);

/// One suffix of a query being probed.
#[derive(Clone, Copy)]
struct Probe {
    hash: u64,
    suffix_len: u8,
    bucket: usize,
}

/// The compiled, immutable set of listed domains (see the module doc for the layout).
#[derive(Clone, Debug, Default)]
pub struct DomainSet {
    /// Never empty once built (the probe reads a neighbour bucket unconditionally).
    buckets: Vec<Bucket>,
    /// Number of home buckets; the overflow buckets after them hold only keys pushed
    /// out of the last home buckets.
    home_buckets: u64,
    /// Tag set `i` is `set_items[set_offsets[i]..set_offsets[i + 1]]`.
    set_offsets: Vec<u32>,
    set_items: Vec<Tag>,
    /// Bit `k` set when some entry has `k` labels: suffixes of other label counts are
    /// not even hashed (most lists hold no one-label entry, so `com` is skipped).
    label_mask: u64,
    len: usize,
}

impl DomainSet {
    /// Every entry of the lists whose text is a label-suffix of `host`. `host` is
    /// normalised on the fly (case, trailing dot); a non-ASCII host is converted to
    /// punycode first, the only case that allocates (DNS queries and SNI are always
    /// ASCII). A host that is not a valid name simply matches nothing.
    pub fn lookup(&self, host: &str) -> DomainMatch {
        let mut m = DomainMatch::default();
        if self.len == 0 {
            return m;
        }
        let raw = host.as_bytes();
        let raw = raw.strip_suffix(b".").unwrap_or(raw);
        if raw.is_empty() || raw.len() > MAX_NAME {
            return m;
        }
        if !raw.is_ascii() {
            if let Ok(ascii) = normalize_host(host) {
                self.lookup_ascii(ascii.as_bytes(), &mut m);
            }
            return m;
        }
        let mut buf = [0u8; MAX_NAME];
        let name = &mut buf[..raw.len()];
        for (d, s) in name.iter_mut().zip(raw) {
            *d = s.to_ascii_lowercase();
        }
        self.lookup_ascii(name, &mut m);
        m
    }

    /// `name` is lower-case ASCII of at most 253 bytes.
    fn lookup_ascii(&self, name: &[u8], m: &mut DomainMatch) {
        // Label starts, right to left: suffix j (0-based from the right) has j+1 labels.
        let mut starts: ArrayVec<u8, 128> = ArrayVec::new();
        for i in (0..name.len()).rev() {
            if name[i] == b'.' {
                // ≤ 253 bytes means ≤ 127 dots, so this never overflows.
                let _ = starts.try_push((i + 1) as u8);
            }
        }
        let _ = starts.try_push(0);
        // Hash every candidate suffix before probing, most specific first.
        let mut probes: ArrayVec<Probe, 128> = ArrayVec::new();
        for (j, &start) in starts.iter().enumerate().rev() {
            if self.label_mask & label_bit(j + 1) != 0 {
                let suffix = &name[start as usize..];
                let hash = name_hash(suffix);
                let _ = probes.try_push(Probe {
                    hash,
                    suffix_len: suffix.len() as u8,
                    bucket: home_bucket(hash, self.home_buckets),
                });
            }
        }
        let Some(last) = self.buckets.len().checked_sub(1) else {
            return;
        };
        // Pass 1, branch-free: the home bucket and its neighbour of every probe. A
        // key is stored once, so a match in either bucket is the key.
        let mut found: ArrayVec<(Option<u16>, bool), 128> = ArrayVec::new();
        for p in &probes {
            let b0 = &self.buckets[p.bucket.min(last)];
            let b1 = &self.buckets[(p.bucket + 1).min(last)];
            let (m0, m1) = (b0.mask(p.hash), b1.mask(p.hash));
            let tag = if m0 != 0 {
                Some(b0.tag_at(m0))
            } else if m1 != 0 {
                Some(b1.tag_at(m1))
            } else {
                None
            };
            let _ = found.try_push((tag, b1.continues_past(p.hash)));
        }
        // Pass 2: results, and the rare probe that must walk further.
        for (p, &(tag, further)) in probes.iter().zip(&found) {
            let tag = match tag {
                Some(t) => Some(t),
                None if further => self.find_from(p.hash, p.bucket + 2),
                None => None,
            };
            if let Some(id) = tag {
                for &t in self.tag_set(id) {
                    m.push(t, p.suffix_len);
                }
            }
        }
    }

    /// Tag-set id of `h`, scanning from bucket `b` on.
    fn find_from(&self, h: u64, mut b: usize) -> Option<u16> {
        while let Some(bucket) = self.buckets.get(b) {
            let m = bucket.mask(h);
            if m != 0 {
                return Some(bucket.tag_at(m));
            }
            // Keys are globally sorted and each bucket is filled from its start, so
            // `h` can only be further on when this bucket is full of smaller keys.
            if !bucket.continues_past(h) {
                return None;
            }
            b += 1;
        }
        None
    }

    fn tag_set(&self, id: u16) -> &[Tag] {
        let i = usize::from(id);
        match (self.set_offsets.get(i), self.set_offsets.get(i + 1)) {
            (Some(&a), Some(&b)) => self.set_items.get(a as usize..b as usize).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// Number of distinct names.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Heap bytes held by the set.
    pub fn memory_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<Bucket>()
            + self.set_offsets.capacity() * 4
            + self.set_items.capacity() * std::mem::size_of::<Tag>()
    }

    /// Appends the set to a cache payload (little-endian, see `read_from`).
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.buckets.len() * SLOTS * 10 + 64);
        for v in [self.len as u64, self.home_buckets, self.buckets.len() as u64, self.label_mask] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for b in &self.buckets {
            for k in b.keys {
                out.extend_from_slice(&k.to_le_bytes());
            }
            for t in b.tags {
                out.extend_from_slice(&t.to_le_bytes());
            }
        }
        out.extend_from_slice(&(self.set_offsets.len() as u64).to_le_bytes());
        for o in &self.set_offsets {
            out.extend_from_slice(&o.to_le_bytes());
        }
        out.extend_from_slice(&(self.set_items.len() as u64).to_le_bytes());
        for t in &self.set_items {
            out.extend_from_slice(&t.category.to_le_bytes());
            out.extend_from_slice(&t.source.to_le_bytes());
            out.push(u8::from(t.exception));
        }
    }

    /// Reads what `write_to` wrote. Every count and index is checked, so even a
    /// crafted payload yields `None` or a set whose lookups cannot panic.
    pub(crate) fn read_from(r: &mut Reader<'_>) -> Option<DomainSet> {
        let len = usize::try_from(r.u64()?).ok()?;
        let home_buckets = r.u64()?;
        let nbuckets = usize::try_from(r.u64()?).ok()?;
        let label_mask = r.u64()?;
        if home_buckets == 0 || home_buckets > nbuckets as u64 || len > nbuckets.checked_mul(SLOTS)? {
            return None;
        }
        const BUCKET_BYTES: usize = SLOTS * 10;
        let raw = r.take(nbuckets.checked_mul(BUCKET_BYTES)?)?;
        let buckets: Vec<Bucket> = raw
            .chunks_exact(BUCKET_BYTES)
            .map(|c| {
                let (keys, tags) = c.split_at(SLOTS * 8);
                let mut b = Bucket::default();
                for (k, w) in b.keys.iter_mut().zip(keys.chunks_exact(8)) {
                    *k = u64::from_le_bytes(w.try_into().unwrap_or_default());
                }
                for (t, w) in b.tags.iter_mut().zip(tags.chunks_exact(2)) {
                    *t = u16::from_le_bytes([w[0], w[1]]);
                }
                b
            })
            .collect();
        let noffsets = usize::try_from(r.u64()?).ok()?;
        let raw = r.take(noffsets.checked_mul(4)?)?;
        let set_offsets: Vec<u32> = raw
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let nitems = usize::try_from(r.u64()?).ok()?;
        let raw = r.take(nitems.checked_mul(5)?)?;
        let set_items: Vec<Tag> = raw
            .chunks_exact(5)
            .map(|w| Tag {
                category: u16::from_le_bytes([w[0], w[1]]),
                source: u16::from_le_bytes([w[2], w[3]]),
                exception: w[4] != 0,
            })
            .collect();
        // Structural checks: offsets monotone within items, categories fit a CatSet,
        // every slot's tag id names an existing set.
        if set_offsets.first() != Some(&0)
            || set_offsets.last().map(|&o| o as usize) != Some(set_items.len())
            || set_offsets.windows(2).any(|w| w[0] > w[1])
            || set_items.iter().any(|t| usize::from(t.category) >= CatSet::MAX)
        {
            return None;
        }
        let nsets = set_offsets.len() - 1;
        if buckets.iter().flat_map(|b| b.tags).any(|t| usize::from(t) >= nsets) {
            return None;
        }
        Some(DomainSet {
            buckets,
            home_buckets,
            set_offsets,
            set_items,
            label_mask,
            len,
        })
    }
}

/// Collects normalised names, then lays out the table in one pass.
#[derive(Default)]
pub(crate) struct DomainSetBuilder {
    items: Vec<(u64, u32)>,
    tags: Vec<Tag>,
    label_mask: u64,
}

impl DomainSetBuilder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Index of `tag` for `insert` (a compile has at most two tags per source).
    pub(crate) fn tag(&mut self, tag: Tag) -> u32 {
        match self.tags.iter().position(|t| *t == tag) {
            Some(i) => i as u32,
            None => {
                self.tags.push(tag);
                (self.tags.len() - 1) as u32
            }
        }
    }

    /// Adds a name already normalised by `normalize_into`.
    pub(crate) fn insert(&mut self, name: &[u8], tag: u32) {
        let labels = name.iter().filter(|&&b| b == b'.').count() + 1;
        self.label_mask |= label_bit(labels);
        self.items.push((name_hash(name), tag));
    }

    pub(crate) fn build(mut self) -> Result<DomainSet, ListError> {
        // Sorting by (hash, tag) groups the duplicates of a name — the same name in
        // several lists, or twice in one — with their tags already in order.
        self.items.sort_unstable();
        self.items.dedup();

        let mut sets = TagSets::new(&self.tags);
        let mut keys: Vec<(u64, u16)> = Vec::with_capacity(self.items.len());
        let mut group: Vec<u32> = Vec::new();
        let mut i = 0;
        while i < self.items.len() {
            let h = self.items[i].0;
            group.clear();
            while i < self.items.len() && self.items[i].0 == h {
                group.push(self.items[i].1);
                i += 1;
            }
            keys.push((h, sets.intern(&group)?));
        }
        drop(std::mem::take(&mut self.items));

        let len = keys.len();
        let home_buckets = (len * 100).div_ceil(SLOTS * LOAD_PERCENT).max(1);
        let mut buckets = vec![Bucket::default(); home_buckets];
        let mut pos = 0usize;
        for &(h, id) in &keys {
            // Linear probing in hash order: a key goes to the first free slot at or
            // after its home bucket, which keeps the whole table sorted.
            pos = pos.max(home_bucket(h, home_buckets as u64) * SLOTS);
            if pos >= buckets.len() * SLOTS {
                buckets.push(Bucket::default());
            }
            let bucket = &mut buckets[pos / SLOTS];
            bucket.keys[pos % SLOTS] = h;
            bucket.tags[pos % SLOTS] = id;
            pos += 1;
        }
        buckets.shrink_to_fit();
        let (set_offsets, set_items) = sets.finish();
        Ok(DomainSet {
            buckets,
            home_buckets: home_buckets as u64,
            set_offsets,
            set_items,
            label_mask: self.label_mask,
            len,
        })
    }
}

/// Interns lists of builder tag indices into tag-set ids.
struct TagSets<'a> {
    tags: &'a [Tag],
    /// Fast path: the id of the one-tag set for each builder tag (the common case).
    single: Vec<Option<u16>>,
    multi: HashMap<Vec<u32>, u16>,
    offsets: Vec<u32>,
    items: Vec<Tag>,
}

impl<'a> TagSets<'a> {
    fn new(tags: &'a [Tag]) -> Self {
        TagSets {
            tags,
            single: vec![None; tags.len()],
            multi: HashMap::new(),
            offsets: vec![0],
            items: Vec::new(),
        }
    }

    fn intern(&mut self, group: &[u32]) -> Result<u16, ListError> {
        if let [one] = group {
            if let Some(id) = self.single.get(*one as usize).copied().flatten() {
                return Ok(id);
            }
        } else if let Some(&id) = self.multi.get(group) {
            return Ok(id);
        }
        let id = u16::try_from(self.offsets.len() - 1).map_err(|_| ListError::TooManyTagSets)?;
        self.items.extend(group.iter().filter_map(|&t| self.tags.get(t as usize)));
        self.offsets.push(self.items.len() as u32);
        if let [one] = group {
            if let Some(slot) = self.single.get_mut(*one as usize) {
                *slot = Some(id);
            }
        } else {
            self.multi.insert(group.to_vec(), id);
        }
        Ok(id)
    }

    fn finish(mut self) -> (Vec<u32>, Vec<Tag>) {
        self.offsets.shrink_to_fit();
        self.items.shrink_to_fit();
        (self.offsets, self.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set_of(entries: &[(&str, CategoryId, bool)]) -> DomainSet {
        let mut b = DomainSetBuilder::new();
        let mut buf = Vec::new();
        for &(name, cat, exception) in entries {
            normalize_into(name.as_bytes(), &mut buf).unwrap();
            let t = b.tag(Tag {
                category: cat,
                source: cat,
                exception,
            });
            b.insert(&buf, t);
        }
        b.build().unwrap()
    }

    #[test]
    fn normalize_cases() {
        assert_eq!(normalize_host("Example.COM.").unwrap(), "example.com");
        assert_eq!(normalize_host("*.ex.org").unwrap(), "ex.org");
        assert_eq!(normalize_host(".ex.org").unwrap(), "ex.org");
        assert_eq!(normalize_host(" foo_bar.tripod.com ").unwrap(), "foo_bar.tripod.com");
        assert_eq!(normalize_host("BÜCHER.de").unwrap(), "xn--bcher-kva.de");
        assert_eq!(normalize_host("пример.рф").unwrap(), "xn--e1afmkfd.xn--p1ai");
        assert_eq!(normalize_host("").unwrap_err(), "empty name");
        assert_eq!(normalize_host("."), Err("empty name".to_string()));
        assert!(normalize_host("a..b").unwrap_err().starts_with("empty label"));
        assert!(normalize_host("a.com..").unwrap_err().starts_with("empty label"));
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(normalize_host(&long_label).unwrap_err().starts_with("label of 64 bytes"));
        let long_name = vec!["abcdefghi"; 26].join(".");
        assert_eq!(normalize_host(&long_name).unwrap_err(), "name of 259 bytes (more than 253)");
        assert!(normalize_host("a b.com").unwrap_err().contains("invalid character ' '"));
        assert!(normalize_host("a.*.com").unwrap_err().contains("'*'"));
        assert!(normalize_host("http://x.com").unwrap_err().contains("':'"));
    }

    #[test]
    fn suffix_semantics() {
        let s = set_of(&[("example.com", 1, false), ("ads.tracker.net", 2, false)]);
        assert_eq!(s.len(), 2);
        let m = s.lookup("a.b.example.com");
        assert_eq!(m.categories(), CatSet::single(1));
        assert_eq!(m.hits[0].suffix_len as usize, "example.com".len());
        assert!(!s.lookup("example.com").is_empty());
        assert!(!s.lookup("EXAMPLE.com.").is_empty());
        assert!(s.lookup("notexample.com").is_empty());
        assert!(s.lookup("com").is_empty());
        assert!(s.lookup("tracker.net").is_empty());
        assert!(!s.lookup("x.ads.tracker.net").is_empty());
        assert!(s.lookup("").is_empty());
        assert!(s.lookup(".").is_empty());
    }

    #[test]
    fn several_categories_and_most_specific_first() {
        let s = set_of(&[
            ("example.com", 1, false),
            ("example.com", 2, false),
            ("a.example.com", 3, false),
            ("example.com", 1, false),
        ]);
        assert_eq!(s.len(), 2);
        let m = s.lookup("x.a.example.com");
        let cats: Vec<_> = m.hits.iter().map(|h| (h.category, h.suffix_len)).collect();
        assert_eq!(cats, vec![(3, 13), (1, 11), (2, 11)]);
        assert_eq!(m.categories(), CatSet(0b1110));
    }

    #[test]
    fn exceptions_remove_their_category_whatever_the_specificity() {
        let s = set_of(&[
            ("ads.com", 4, false),
            ("good.ads.com", 4, true),
            ("blog.org", 5, true),
            ("x.blog.org", 5, false),
            ("x.blog.org", 6, false),
        ]);
        let m = s.lookup("good.ads.com");
        assert!(m.categories().is_empty());
        assert_eq!(m.exceptions(), CatSet::single(4));
        assert_eq!(s.lookup("bad.ads.com").categories(), CatSet::single(4));
        let m = s.lookup("x.blog.org");
        assert_eq!(m.categories(), CatSet::single(6));
        assert!(m.hits.iter().any(|h| h.exception));
    }

    #[test]
    fn idn_lookup_and_label_mask_skip() {
        let s = set_of(&[("bücher.de", 1, false), ("com", 2, false)]);
        assert_eq!(s.lookup("www.BÜCHER.de").categories(), CatSet::single(1));
        assert_eq!(s.lookup("www.xn--bcher-kva.de").categories(), CatSet::single(1));
        assert_eq!(s.lookup("anything.com").categories(), CatSet::single(2));
    }

    #[test]
    fn empty_set_and_overlong_host() {
        let s = DomainSet::default();
        assert!(s.lookup("example.com").is_empty());
        let s = set_of(&[("com", 1, false)]);
        let long = format!("{}.com", vec!["a"; 200].join("."));
        assert!(s.lookup(&long).is_empty());
    }

    #[test]
    fn many_hits_are_truncated_but_categories_complete() {
        let entries: Vec<(String, CategoryId)> =
            (0..20).map(|c| ("x.com".to_string(), c as CategoryId)).collect();
        let refs: Vec<_> = entries.iter().map(|(n, c)| (n.as_str(), *c, false)).collect();
        let s = set_of(&refs);
        let m = s.lookup("x.com");
        assert_eq!(m.hits.len(), 16);
        assert!(m.truncated);
        assert_eq!(m.categories(), CatSet((1u128 << 20) - 1));
    }

    #[test]
    fn serialisation_round_trip() {
        let s = set_of(&[("a.com", 1, false), ("b.net", 2, true), ("b.net", 1, false)]);
        let mut out = Vec::new();
        s.write_to(&mut out);
        let back = DomainSet::read_from(&mut Reader::new(&out)).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back.lookup("x.a.com").categories(), CatSet::single(1));
        assert_eq!(back.lookup("b.net").exceptions(), CatSet::single(2));
        // Truncated payloads are refused, not trusted.
        for cut in [0, 10, out.len() / 2, out.len() - 1] {
            assert!(DomainSet::read_from(&mut Reader::new(&out[..cut])).is_none());
        }
    }

    #[test]
    fn dense_table_probes_overflow_buckets() {
        // Many names so buckets overflow into their neighbours and past the end.
        let names: Vec<String> = (0..50_000).map(|i| format!("n{i}.test")).collect();
        let refs: Vec<_> = names.iter().map(|n| (n.as_str(), 1, false)).collect();
        let s = set_of(&refs);
        for n in &names {
            assert!(!s.lookup(n).is_empty(), "{n}");
        }
        for i in 0..50_000 {
            assert!(s.lookup(&format!("m{i}.test")).is_empty());
        }
    }

    /// Reference: a name matches every entry equal to it or to one of its parents.
    fn naive(entries: &[(String, CategoryId)], host: &str) -> CatSet {
        let mut out = CatSet::EMPTY;
        for (e, c) in entries {
            if host == e || host.ends_with(&format!(".{e}")) {
                out.insert(*c);
            }
        }
        out
    }

    fn label() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "ab", "ba", "com", "x-y", "_z", "0"]).prop_map(String::from)
    }

    fn name() -> impl Strategy<Value = String> {
        prop::collection::vec(label(), 1..5).prop_map(|v| v.join("."))
    }

    proptest! {
        #[test]
        fn matches_naive_suffix_reference(
            entries in prop::collection::vec((name(), 0u16..6), 0..40),
            hosts in prop::collection::vec(name(), 1..30),
        ) {
            let refs: Vec<_> = entries.iter().map(|(n, c)| (n.as_str(), *c, false)).collect();
            let s = set_of(&refs);
            for h in &hosts {
                prop_assert_eq!(s.lookup(h).categories(), naive(&entries, h), "host {}", h);
                let upper = format!("{}.", h.to_ascii_uppercase());
                prop_assert_eq!(s.lookup(&upper).categories(), naive(&entries, h));
            }
        }

        #[test]
        fn normalize_is_idempotent(raw in "[a-zA-Z0-9._*-]{0,40}") {
            if let Ok(n) = normalize_host(&raw) {
                let again = normalize_host(&n);
                prop_assert_eq!(again.as_deref(), Ok(n.as_str()));
            }
        }
    }
}
