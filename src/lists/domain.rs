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
//! hit costs one cache line, not two. The home buckets are ~75 % full. Keys are placed
//! in ascending hash order with linear probing and the home bucket is a monotone
//! function of the hash (fast range, multiply-high), so the table is globally sorted
//! and a bucket is filled from its first slot: a probe compares its hash with the
//! bucket's keys and needs the next bucket only when its home bucket is full of
//! smaller hashes (14 % of listed names at 75 %, simulated). The table
//! sits in huge pages (see `Table`) so a cache miss is not also a TLB miss.
//!
//! In front of the table, a binary fuse filter (`Prefilter`, ~9 bits per name, small
//! enough to stay in the L3 cache) rules out nearly every suffix that is not listed,
//! so an unlisted host — most of real traffic — costs no DRAM read at all (~50–110 ns
//! instead of ~230 ns at 5 M names), and a listed one reads only the bucket of the
//! suffix that matched.
//!
//! The hash is our own (`name_hash`, wyhash-style multiply-folds) rather than a
//! library's: the lookup walks the name once from its right end, 8 bytes at a time,
//! lower-casing and finding dots as it goes, and every suffix reuses the state of the
//! words to its right (`suffix_hashes`), instead of copying the name and hashing each
//! suffix from scratch.
//!
//! False positives: a suffix that is not listed matches only if its 64-bit hash
//! equals that of a listed name, ~N/2^64 ≈ 3e-13 per suffix at 5 M names
//! (the bucket position is derived from the same hash, so only exact equality
//! counts). We accept that: it can only over-block (a collision never *hides* a
//! listed name), storing the text instead would cost ~20 bytes per name, and the
//! explain trace shows the suffix that matched. Crafting a collision buys an
//! attacker nothing but blocking a name of their own.

use std::collections::HashMap;

use arrayvec::ArrayVec;
use xorf::{BinaryFuse8, Descriptor};

use super::cache::Reader;
use super::{CatSet, CategoryId, ListError, SourceId};

/// Longest name DNS allows (RFC 1035, without the root dot).
const MAX_NAME: usize = 253;
/// Longest label DNS allows.
const MAX_LABEL: usize = 63;
/// Slots per bucket: 6 × (u64 + u16) + 4 spare bytes = one 64-byte cache line.
const SLOTS: usize = 6;
/// Fill ratio of the home buckets, in percent. Latency is the scarcer resource: at
/// 75 % (14.2 bytes per name) 14 % of probes need a second, dependent cache line; at
/// 85 % (12.5 bytes) 30 % do, and at 90 % (11.9 bytes) 44 % (simulated).
const LOAD_PERCENT: usize = 75;

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

/// Hits a `DomainMatch` keeps: 14 make it 128 bytes, the largest value the compiler
/// still copies inline (with 16 it was 144 bytes and every lookup's result went
/// through a `memcpy` call).
pub const MAX_DOMAIN_HITS: usize = 14;

/// Everything a host matched, most specific suffix first.
#[derive(Clone, Debug, Default)]
pub struct DomainMatch {
    /// At most `MAX_DOMAIN_HITS` hits are kept (see `truncated`); `categories()` and
    /// `exceptions()` account for every hit, kept or not.
    pub hits: ArrayVec<DomainHit, MAX_DOMAIN_HITS>,
    /// More entries matched than `hits` keeps; the extra hits were not kept.
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

/// Hash of a normalised name or suffix (see `suffix_hashes`, which must agree with
/// it on every label-suffix of a query). 0 marks an empty slot, so it never results.
fn name_hash(name: &[u8]) -> u64 {
    let mut state = HASH_SEED;
    let mut end = name.len();
    while let Some(w) = end.checked_sub(8).and_then(|at| name.get(at..end)) {
        state = hash_word(state, lower8(word_le(w)));
        end -= 8;
    }
    let head = if end == 0 {
        0
    } else {
        lower8(head_word(name, end))
    };
    hash_finish(state, head, name.len())
}

/// The hash of every label-suffix of `raw` (any case, ≤ 253 bytes) whose label count
/// `label_mask` holds, shortest suffix first: `f(hash, suffix_len)`, with
/// `hash == name_hash(lower-cased suffix)`. Returns whether `raw` is ASCII; when it is
/// not, the hashes are meaningless.
///
/// One pass from the right end, 8 bytes at a time: a word is lower-cased, its dots
/// found and then it is folded into the running state, so every suffix costs only
/// its last, partial word and a finish — the words to its right are shared with the
/// shorter suffixes — and no copy of the name is made. The words are aligned on the
/// end of the name (the leftmost one is the partial one) for that reason.
#[inline(always)]
fn suffix_hashes(raw: &[u8], label_mask: u64, mut f: impl FnMut(u64, usize)) -> bool {
    let (head, words) = raw.as_rchunks::<8>();
    let mut state = HASH_SEED;
    // Labels of the suffix that starts after the next dot found.
    let mut labels = 1;
    let mut high = 0;
    let mut done = 0;
    for w in words.iter().rev() {
        let w = u64::from_le_bytes(*w);
        high |= w;
        let x = lower8(w);
        word_suffixes(x, state, done, label_mask, &mut labels, &mut f);
        state = hash_word(state, x);
        done += 8;
    }
    let x = if head.is_empty() {
        0
    } else {
        let w = head_word(raw, head.len());
        high |= w;
        let x = lower8(w);
        word_suffixes(x, state, done, label_mask, &mut labels, &mut f);
        x
    };
    if label_mask & label_bit(labels) != 0 {
        f(hash_finish(state, x, raw.len()), raw.len());
    }
    high & HI == 0
}

/// The suffixes that start inside word `x` (after one of its dots), nearest the end
/// first; `done` bytes of the name lie right of `x`, folded into `state`.
#[inline(always)]
fn word_suffixes(
    x: u64,
    state: u64,
    done: usize,
    label_mask: u64,
    labels: &mut usize,
    f: &mut impl FnMut(u64, usize),
) {
    let mut dots = dots8(x);
    while dots != 0 {
        let bit = 63 - dots.leading_zeros();
        dots ^= 1 << bit;
        // The suffix holds the bytes of `x` right of the dot.
        let keep = (7 - bit / 8) as usize;
        if label_mask & label_bit(*labels) != 0 {
            f(
                hash_finish(state, x & top_bytes(keep), done + keep),
                done + keep,
            );
        }
        *labels += 1;
    }
}

// Constants of wyhash (odd, balanced bits).
const HASH_SEED: u64 = 0xa076_1d64_78bd_642f;
const HASH_WORD: u64 = 0xe703_7ed1_a0b4_28db;
const HASH_FIN_A: u64 = 0x8ebc_6af0_9c88_c6e3;
const HASH_FIN_B: u64 = 0x5899_65cc_7537_4cc3;

/// The 128-bit product's halves xored: the mixing step of wyhash and rapidhash.
#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Folds one full 8-byte word into the state.
#[inline(always)]
fn hash_word(state: u64, word: u64) -> u64 {
    fold_mul(state ^ word, HASH_WORD)
}

/// The hash of a name of `len` bytes: `state` holds its full words from the right
/// end, `head` its remaining leftmost bytes in the top bytes of a word (or 0). The
/// length tells apart names that differ only by leading zero bytes; the second
/// multiply spreads every input bit over the high bits that pick the bucket.
#[inline(always)]
fn hash_finish(state: u64, head: u64, len: usize) -> u64 {
    let h = fold_mul(state ^ head ^ HASH_FIN_A, len as u64 ^ HASH_FIN_B);
    match fold_mul(h, HASH_WORD) {
        0 => 1,
        h => h,
    }
}

/// Mask of the `n` (0–7) high bytes of a word.
#[inline(always)]
fn top_bytes(n: usize) -> u64 {
    !(u64::MAX >> (8 * n))
}

#[inline(always)]
fn word_le(w: &[u8]) -> u64 {
    u64::from_le_bytes(w.try_into().unwrap_or_default())
}

/// The first `end` (1–7) bytes of `raw`, in the top bytes of a little-endian word.
#[inline(always)]
fn head_word(raw: &[u8], end: usize) -> u64 {
    let low = match raw.first_chunk::<8>() {
        // A longer name: its first 8 bytes, of which the shift keeps the `end` first.
        Some(w) => u64::from_le_bytes(*w),
        None => raw
            .get(..end)
            .unwrap_or_default()
            .iter()
            .rev()
            .fold(0, |acc, &b| (acc << 8) | u64::from(b)),
    };
    low.checked_shl(8 * (8 - end as u32)).unwrap_or(0)
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
/// `Pod` lets the table live in a huge-page mapping, viewed through bytemuck.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Bucket {
    keys: [u64; SLOTS],
    /// Tag-set id of each key (meaningless for empty slots).
    tags: [u16; SLOTS],
    _spare: u32,
}

/// The bucket array, in 2 MiB pages where the kernel gives them.
///
/// Every lookup reads random cache lines of a table far larger than the caches,
/// so with 4 KiB pages nearly every probe is also a TLB miss, and on a virtual
/// machine a TLB miss is a two-dimensional page walk. Measured on the 2-core dev VM
/// (64 MiB, dependent random reads): 167 ns per read with 4 KiB pages, 142 ns with
/// huge pages. Linux gives anonymous memory huge pages only on request
/// (`transparent_hugepage=madvise` is the common default), hence an anonymous
/// mapping advised `MADV_HUGEPAGE`; small tables and other systems use a `Vec`.
enum Table {
    Heap(Vec<Bucket>),
    #[cfg(target_os = "linux")]
    Huge(memmap2::MmapMut),
}

/// Below this size the table fits the TLB's reach anyway.
const HUGE_TABLE_MIN: usize = 4 << 20;

impl Table {
    /// `n` empty buckets.
    fn zeroed(n: usize) -> Table {
        #[cfg(target_os = "linux")]
        if n * std::mem::size_of::<Bucket>() >= HUGE_TABLE_MIN
            && let Ok(map) = memmap2::MmapOptions::new()
                .len(n * std::mem::size_of::<Bucket>())
                .map_anon()
        {
            // Advice only: without huge pages the table still works, a bit slower.
            let _ = map.advise(memmap2::Advice::HugePage);
            let table = Table::Huge(map);
            if table.as_slice().len() == n {
                return table;
            }
        }
        Table::Heap(vec![Bucket::default(); n])
    }

    #[inline(always)]
    fn as_slice(&self) -> &[Bucket] {
        match self {
            Table::Heap(v) => v,
            // A fresh mapping is page-aligned and sized in whole buckets, so the
            // cast cannot fail; an empty slice would only make every lookup miss.
            #[cfg(target_os = "linux")]
            Table::Huge(m) => bytemuck::try_cast_slice(&m[..]).unwrap_or(&[]),
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Bucket] {
        match self {
            Table::Heap(v) => v,
            #[cfg(target_os = "linux")]
            Table::Huge(m) => bytemuck::try_cast_slice_mut(&mut m[..]).unwrap_or(&mut []),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Table::Heap(v) => v.capacity() * std::mem::size_of::<Bucket>(),
            #[cfg(target_os = "linux")]
            Table::Huge(m) => m.len(),
        }
    }
}

impl Default for Table {
    fn default() -> Self {
        Table::Heap(Vec::new())
    }
}

impl Clone for Table {
    fn clone(&self) -> Self {
        let mut t = Table::zeroed(self.as_slice().len());
        t.as_mut_slice().copy_from_slice(self.as_slice());
        t
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Table({} buckets)", self.as_slice().len())
    }
}

impl Bucket {
    /// The tag-set id of `h` if this bucket holds it, and whether the bucket is full
    /// of smaller keys (then `h` may be further on: keys are sorted and a bucket is
    /// filled from its first slot). A compare and a conditional move per slot, no
    /// branch; empty slots are 0, which no hash is.
    #[inline(always)]
    fn probe(&self, h: u64) -> (Option<u16>, bool) {
        let mut tag = None;
        for (&k, &t) in self.keys.iter().zip(&self.tags) {
            if k == h {
                tag = Some(t);
            }
        }
        // `k - 1` wraps an empty slot (0) to the largest value.
        let full_of_smaller = self.keys[SLOTS - 1].wrapping_sub(1) < h - 1;
        (tag, full_of_smaller)
    }
}

const _: () = assert!(std::mem::size_of::<Bucket>() == 64);
const _: () = assert!(std::mem::size_of::<DomainMatch>() <= 128);

/// A listed suffix of a query: its tag set and length.
#[derive(Clone, Copy)]
struct Found {
    tag_set: u16,
    suffix_len: u8,
}

/// The first-level filter: a binary fuse filter (xorf) over the same 64-bit hashes as
/// the table, ~9 bits per name, so it fits the L3 cache where the table cannot.
/// "Not in the filter" is exact, and ~99.6 % of unlisted suffixes get that answer
/// from cache instead of a DRAM read of the table.
#[derive(Clone, Default)]
struct Prefilter(Option<BinaryFuse8>);

impl Prefilter {
    fn build(keys: impl ExactSizeIterator<Item = u64> + Clone) -> Prefilter {
        // Keys are distinct hashes, so construction succeeds; if it ever did not,
        // every suffix would simply go to the table, as before the filter existed.
        Prefilter(BinaryFuse8::try_from_iterator(keys).ok())
    }

    /// xorf's `BinaryFuse8::contains`, restated so that it is inlined into the
    /// lookup (xorf's is not marked `#[inline]` and was called out of line, ~8 % of
    /// a lookup's instructions); `prefilter_restates_xorf` keeps the two equal.
    /// An index out of the fingerprints (impossible once `read_from` has checked
    /// the layout) answers "maybe", never a false "no".
    #[inline(always)]
    fn may_contain(&self, h: u64) -> bool {
        let Some(f) = &self.0 else {
            return true;
        };
        let d = &f.descriptor;
        let hash = murmur_mix64(h.wrapping_add(d.seed));
        let h0 = ((u128::from(hash) * u128::from(d.segment_count_length)) >> 64) as u32;
        let h1 = h0.wrapping_add(d.segment_length);
        let h2 = h1.wrapping_add(d.segment_length);
        let h1 = h1 ^ ((hash >> 18) as u32 & d.segment_length_mask);
        let h2 = h2 ^ (hash as u32 & d.segment_length_mask);
        let fp = &f.fingerprints;
        match (
            fp.get(h0 as usize),
            fp.get(h1 as usize),
            fp.get(h2 as usize),
        ) {
            (Some(a), Some(b), Some(c)) => (hash ^ (hash >> 32)) as u8 ^ a ^ b ^ c == 0,
            _ => true,
        }
    }

    fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |f| f.fingerprints.len())
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        match &self.0 {
            None => out.push(0),
            Some(f) => {
                out.push(1);
                let d = &f.descriptor;
                out.extend_from_slice(&d.seed.to_le_bytes());
                for v in [
                    d.segment_length,
                    d.segment_length_mask,
                    d.segment_count_length,
                ] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&(f.fingerprints.len() as u64).to_le_bytes());
                out.extend_from_slice(&f.fingerprints);
            }
        }
    }

    /// Reads what `write_to` wrote, refusing any descriptor whose three probe
    /// positions could fall outside the fingerprints (xorf indexes without checking
    /// against a crafted layout).
    fn read_from(r: &mut Reader<'_>) -> Option<Prefilter> {
        match r.take(1)? {
            [0] => return Some(Prefilter(None)),
            [1] => {}
            _ => return None,
        }
        let seed = r.u64()?;
        let segment_length = r.u32()?;
        let segment_length_mask = r.u32()?;
        let segment_count_length = r.u32()?;
        let n = usize::try_from(r.u64()?).ok()?;
        let fingerprints: Box<[u8]> = r.take(n)?.into();
        // h0 < segment_count_length; h1 and h2 stay inside the segment one and two
        // places further, so the array must hold two segments past the count.
        let end = u64::from(segment_count_length) + 2 * u64::from(segment_length);
        if !segment_length.is_power_of_two()
            || segment_length_mask != segment_length - 1
            || segment_count_length % segment_length != 0
            || end > n as u64
            || end > u64::from(u32::MAX)
        {
            return None;
        }
        Some(Prefilter(Some(BinaryFuse8 {
            descriptor: Descriptor {
                seed,
                segment_length,
                segment_length_mask,
                segment_count_length,
            },
            fingerprints,
        })))
    }
}

impl std::fmt::Debug for Prefilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Prefilter({} bytes)", self.bytes())
    }
}

/// MurmurHash3's 64-bit finaliser, as xorf mixes a key with its seed.
#[inline(always)]
fn murmur_mix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// Label-suffixes a query can have: a name of at most 253 bytes has at most 127
/// labels. Only names with empty labels (`a..b`, which no entry can equal) have
/// more; their longest suffixes are not probed.
const MAX_SUFFIXES: usize = 128;
const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Lower-cases 8 ASCII bytes at once: the high bit of `b + (0x80 - 'A')` says
/// `b >= 'A'`, that of `b + (0x7f - 'Z')` says `b > 'Z'`; no byte carries into the
/// next because every byte is < 0x80.
#[inline]
fn lower8(x: u64) -> u64 {
    // Wrapping: a non-ASCII word (whose hashes are discarded) may carry out.
    let ge_a = x.wrapping_add(LO * (0x80 - u64::from(b'A')));
    let gt_z = x.wrapping_add(LO * (0x7f - u64::from(b'Z')));
    x | ((ge_a & !gt_z & HI) >> 2)
}

/// 0x80 in each byte of `x` that is a `.` (exact zero-byte test on `x ^ "........"`).
#[inline]
fn dots8(x: u64) -> u64 {
    let v = x ^ (LO * u64::from(b'.'));
    !(((v & !HI) + !HI) | v) & HI
}

/// The compiled, immutable set of listed domains (see the module doc for the layout).
#[derive(Clone, Debug, Default)]
pub struct DomainSet {
    /// One home bucket at least once built.
    buckets: Table,
    /// Consulted for every suffix before the table (see `Prefilter`).
    filter: Prefilter,
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
    /// ASCII). A host that is not a valid name simply matches nothing — and so does
    /// `host:port`: callers pass the bare host (strip the port, and the brackets of
    /// an IPv6 literal, first).
    #[inline]
    pub fn lookup(&self, host: &str) -> DomainMatch {
        // The work is out of line and this wrapper inlined: −4 ns on a cache-resident
        // hit. The 128-byte result is copied out inline (see `MAX_DOMAIN_HITS`).
        let mut m = DomainMatch::default();
        self.lookup_into(host, &mut m);
        m
    }

    #[inline(never)]
    fn lookup_into(&self, host: &str, m: &mut DomainMatch) {
        let raw = host.as_bytes();
        let raw = raw.strip_suffix(b".").unwrap_or(raw);
        let ascii = if (1..=MAX_NAME).contains(&raw.len()) && self.len != 0 {
            // Checks for ASCII on the way (a separate scan cost ~10 % of a lookup).
            self.lookup_ascii(raw, m)
        } else {
            raw.is_ascii()
        };
        if !ascii {
            *m = self.lookup_non_ascii(host);
        }
    }

    /// Internationalised host: converted to punycode first (allocates; DNS queries
    /// and SNI never take this path, they are ASCII on the wire).
    #[cold]
    #[inline(never)]
    fn lookup_non_ascii(&self, host: &str) -> DomainMatch {
        match normalize_host(host) {
            Ok(ascii) if ascii.is_ascii() => self.lookup(&ascii),
            _ => DomainMatch::default(),
        }
    }

    /// `raw` is a non-empty name of at most 253 bytes, any case. Returns false, having
    /// matched nothing, if it is not ASCII.
    #[inline(always)]
    fn lookup_ascii(&self, raw: &[u8], m: &mut DomainMatch) -> bool {
        let buckets = self.buckets.as_slice();
        let Some(last) = buckets.len().checked_sub(1) else {
            return raw.is_ascii();
        };
        // Pass 1, shortest suffix first: hash each suffix whose label count some
        // entry has, ask the prefilter about it and, if it may be listed (a listed
        // name, or ~0.4 % of the others), read the table. The tag sets found are
        // used in pass 2 only, so a table read overlaps the hashing of the longer
        // suffixes. (Reading the next bucket together with the home one, so the
        // 14 % of listed names pushed out of their home bucket cost no second,
        // dependent read, measured no faster: benches/RESULTS.md.)
        let mut found: ArrayVec<Found, MAX_SUFFIXES> = ArrayVec::new();
        let ascii = suffix_hashes(
            raw,
            self.label_mask,
            #[inline(always)]
            |h, len| {
                if !self.filter.may_contain(h) {
                    return;
                }
                let home = home_bucket(h, self.home_buckets).min(last);
                let tag = match buckets[home].probe(h) {
                    (Some(t), _) => Some(t),
                    (None, true) => self.find_from(h, home + 1),
                    (None, false) => None,
                };
                if let Some(tag_set) = tag {
                    let _ = found.try_push(Found {
                        tag_set,
                        suffix_len: len as u8,
                    });
                }
            },
        );
        if !ascii {
            return false;
        }
        // Pass 2: the hits, most specific suffix first.
        for f in found.iter().rev() {
            for &t in self.tag_set(f.tag_set) {
                m.push(t, f.suffix_len);
            }
        }
        true
    }

    /// Tag-set id of `h`, scanning from bucket `b` on (the rare probe that finds
    /// two buckets full of smaller keys).
    #[cold]
    #[inline(never)]
    fn find_from(&self, h: u64, mut b: usize) -> Option<u16> {
        while let Some(bucket) = self.buckets.as_slice().get(b) {
            match bucket.probe(h) {
                (Some(t), _) => return Some(t),
                (None, false) => return None,
                (None, true) => b += 1,
            }
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
        self.buckets.bytes()
            + self.filter.bytes()
            + self.set_offsets.capacity() * 4
            + self.set_items.capacity() * std::mem::size_of::<Tag>()
    }

    /// Appends the set to a cache payload (little-endian, see `read_from`).
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        let buckets = self.buckets.as_slice();
        out.reserve(buckets.len() * SLOTS * 10 + 64);
        for v in [
            self.len as u64,
            self.home_buckets,
            buckets.len() as u64,
            self.label_mask,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for b in buckets {
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
        self.filter.write_to(out);
    }

    /// Reads what `write_to` wrote. Every count and index is checked, so even a
    /// crafted payload yields `None` or a set whose lookups cannot panic.
    pub(crate) fn read_from(r: &mut Reader<'_>) -> Option<DomainSet> {
        let len = usize::try_from(r.u64()?).ok()?;
        let home_buckets = r.u64()?;
        let nbuckets = usize::try_from(r.u64()?).ok()?;
        let label_mask = r.u64()?;
        if home_buckets == 0
            || home_buckets > nbuckets as u64
            || len > nbuckets.checked_mul(SLOTS)?
        {
            return None;
        }
        const BUCKET_BYTES: usize = SLOTS * 10;
        let raw = r.take(nbuckets.checked_mul(BUCKET_BYTES)?)?;
        let mut buckets = Table::zeroed(nbuckets);
        for (b, c) in buckets
            .as_mut_slice()
            .iter_mut()
            .zip(raw.chunks_exact(BUCKET_BYTES))
        {
            let (keys, tags) = c.split_at(SLOTS * 8);
            for (k, w) in b.keys.iter_mut().zip(keys.chunks_exact(8)) {
                *k = u64::from_le_bytes(w.try_into().unwrap_or_default());
            }
            for (t, w) in b.tags.iter_mut().zip(tags.chunks_exact(2)) {
                *t = u16::from_le_bytes([w[0], w[1]]);
            }
        }
        if buckets.as_slice().len() != nbuckets {
            return None;
        }
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
        let filter = Prefilter::read_from(r)?;
        // Structural checks: offsets monotone within items, categories fit a CatSet,
        // every slot's tag id names an existing set.
        if set_offsets.first() != Some(&0)
            || set_offsets.last().map(|&o| o as usize) != Some(set_items.len())
            || set_offsets.windows(2).any(|w| w[0] > w[1])
            || set_items
                .iter()
                .any(|t| usize::from(t.category) >= CatSet::MAX)
        {
            return None;
        }
        let nsets = set_offsets.len() - 1;
        if buckets
            .as_slice()
            .iter()
            .flat_map(|b| b.tags)
            .any(|t| usize::from(t) >= nsets)
        {
            return None;
        }
        Some(DomainSet {
            buckets,
            filter,
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
        // Linear probing in hash order: a key goes to the first free slot at or after
        // its home bucket, which keeps the whole table sorted. A first pass sizes
        // the table (overflow buckets past the last home bucket), the second fills it.
        let place = |pos: usize, h: u64| pos.max(home_bucket(h, home_buckets as u64) * SLOTS);
        let end = keys.iter().fold(0, |pos, &(h, _)| place(pos, h) + 1);
        let mut buckets = Table::zeroed(home_buckets.max(end.div_ceil(SLOTS)));
        let table = buckets.as_mut_slice();
        let mut pos = 0;
        for &(h, id) in &keys {
            pos = place(pos, h);
            if let Some(bucket) = table.get_mut(pos / SLOTS) {
                bucket.keys[pos % SLOTS] = h;
                bucket.tags[pos % SLOTS] = id;
            }
            pos += 1;
        }
        let (set_offsets, set_items) = sets.finish();
        Ok(DomainSet {
            buckets,
            filter: if keys.is_empty() {
                Prefilter::default()
            } else {
                Prefilter::build(keys.iter().map(|&(h, _)| h))
            },
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
        self.items
            .extend(group.iter().filter_map(|&t| self.tags.get(t as usize)));
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
    use xorf::Filter as _;

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
        assert_eq!(
            normalize_host(" foo_bar.tripod.com ").unwrap(),
            "foo_bar.tripod.com"
        );
        assert_eq!(normalize_host("BÜCHER.de").unwrap(), "xn--bcher-kva.de");
        assert_eq!(
            normalize_host("пример.рф").unwrap(),
            "xn--e1afmkfd.xn--p1ai"
        );
        assert_eq!(normalize_host("").unwrap_err(), "empty name");
        assert_eq!(normalize_host("."), Err("empty name".to_string()));
        assert!(
            normalize_host("a..b")
                .unwrap_err()
                .starts_with("empty label")
        );
        assert!(
            normalize_host("a.com..")
                .unwrap_err()
                .starts_with("empty label")
        );
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(
            normalize_host(&long_label)
                .unwrap_err()
                .starts_with("label of 64 bytes")
        );
        let long_name = vec!["abcdefghi"; 26].join(".");
        assert_eq!(
            normalize_host(&long_name).unwrap_err(),
            "name of 259 bytes (more than 253)"
        );
        assert!(
            normalize_host("a b.com")
                .unwrap_err()
                .contains("invalid character ' '")
        );
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
        assert_eq!(
            s.lookup("www.xn--bcher-kva.de").categories(),
            CatSet::single(1)
        );
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
        let entries: Vec<(String, CategoryId)> = (0..20)
            .map(|c| ("x.com".to_string(), c as CategoryId))
            .collect();
        let refs: Vec<_> = entries
            .iter()
            .map(|(n, c)| (n.as_str(), *c, false))
            .collect();
        let s = set_of(&refs);
        let m = s.lookup("x.com");
        assert_eq!(m.hits.len(), MAX_DOMAIN_HITS);
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
    fn prefilter_turns_away_unlisted_suffixes() {
        let names: Vec<String> = (0..50_000).map(|i| format!("f{i}.test")).collect();
        let refs: Vec<_> = names.iter().map(|n| (n.as_str(), 1, false)).collect();
        let s = set_of(&refs);
        assert!(s.filter.0.is_some());
        // ~9 bits per name, and a false-positive rate near 1/256.
        assert!(s.filter.bytes() * 8 < 10 * names.len());
        let passed = (0..50_000)
            .filter(|i| {
                s.filter
                    .may_contain(name_hash(format!("g{i}.test").as_bytes()))
            })
            .count();
        assert!(passed < 500, "{passed} false positives in 50000");
        for n in names.iter().step_by(13) {
            assert!(s.filter.may_contain(name_hash(n.as_bytes())));
        }
    }

    #[test]
    fn prefilter_restates_xorf() {
        let names: Vec<String> = (0..20_000).map(|i| format!("r{i}.test")).collect();
        let refs: Vec<_> = names.iter().map(|n| (n.as_str(), 1, false)).collect();
        let s = set_of(&refs);
        let f = s.filter.0.as_ref().unwrap();
        let mut x = 0x1234_5678_9abc_def0u64;
        for i in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Random keys (a few hundred false positives) and every listed one.
            let key = if i % 10 == 0 {
                name_hash(names[(i / 10) as usize % names.len()].as_bytes())
            } else {
                x
            };
            assert_eq!(s.filter.may_contain(key), f.contains(&key), "{key:#x}");
        }
    }

    #[test]
    fn crafted_prefilter_layouts_are_refused() {
        let s = set_of(&[
            ("a.com", 1, false),
            ("b.net", 2, false),
            ("c.org", 3, false),
        ]);
        let mut good = Vec::new();
        s.filter.write_to(&mut good);
        assert!(Prefilter::read_from(&mut Reader::new(&good)).is_some());
        // Layout: tag, seed, segment_length, mask, segment_count_length, len, bytes.
        let patch = |at: usize, v: u32| {
            let mut b = good.clone();
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            b
        };
        let seg = u32::from_le_bytes(good[9..13].try_into().unwrap());
        for bad in [
            patch(9, seg + 1),             // not a power of two
            patch(13, seg),                // mask not length - 1
            patch(17, u32::MAX - seg + 1), // probes past the fingerprints
            patch(17, seg * 1000),         // idem
        ] {
            assert!(Prefilter::read_from(&mut Reader::new(&bad)).is_none());
        }
        let mut bad_tag = good.clone();
        bad_tag[0] = 7;
        assert!(Prefilter::read_from(&mut Reader::new(&bad_tag)).is_none());
        assert!(Prefilter::read_from(&mut Reader::new(&[0])).is_some_and(|f| f.0.is_none()));
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

    #[test]
    fn large_tables_live_in_the_mapping_and_behave_the_same() {
        let n = HUGE_TABLE_MIN / std::mem::size_of::<Bucket>() + 10;
        let mut t = Table::zeroed(n);
        #[cfg(target_os = "linux")]
        assert!(matches!(t, Table::Huge(_)));
        assert_eq!(t.as_slice().len(), n);
        t.as_mut_slice()[n - 1].keys[0] = 7;
        assert_eq!(t.clone().as_slice()[n - 1].keys[0], 7);
        assert!(t.bytes() >= n * 64);

        let names: Vec<String> = (0..400_000).map(|i| format!("h{i}.example")).collect();
        let refs: Vec<_> = names.iter().map(|n| (n.as_str(), 2, false)).collect();
        let s = set_of(&refs);
        #[cfg(target_os = "linux")]
        assert!(matches!(s.buckets, Table::Huge(_)));
        let mut out = Vec::new();
        s.write_to(&mut out);
        let back = DomainSet::read_from(&mut Reader::new(&out)).unwrap();
        for n in names.iter().step_by(97) {
            assert_eq!(
                s.lookup(&format!("www.{n}")).categories(),
                CatSet::single(2)
            );
            assert_eq!(back.lookup(n).categories(), CatSet::single(2));
            assert!(back.lookup(&format!("x{n}")).is_empty());
        }
    }

    #[test]
    fn name_hash_sees_every_byte_and_the_length() {
        let mut seen = std::collections::HashSet::new();
        let mut count = 0;
        for len in 0..=40 {
            let base = vec![b'a'; len];
            assert!(seen.insert(name_hash(&base)));
            count += 1;
            for at in 0..len {
                for c in [b'b', b'.', b'0', 0] {
                    let mut n = base.clone();
                    n[at] = c;
                    assert!(seen.insert(name_hash(&n)), "{len} {at} {c}");
                    count += 1;
                }
            }
        }
        assert_eq!(seen.len(), count);
        assert!(!seen.contains(&0));
        // Upper case hashes as lower case (lookups lower-case on the fly).
        assert_eq!(name_hash(b"WWW.Example.COM"), name_hash(b"www.example.com"));
        let long = vec!["abcdefg"; 31].join(".");
        assert_eq!(long.len(), 247);
        let mut got = Vec::new();
        suffix_hashes(long.as_bytes(), u64::MAX, |h, len| got.push((h, len)));
        assert_eq!(got.len(), 31);
        assert_eq!(got[30], (name_hash(long.as_bytes()), 247));
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
        prop::sample::select(vec!["a", "b", "ab", "ba", "com", "x-y", "_z", "0"])
            .prop_map(String::from)
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
        fn suffix_hashes_are_the_hashes_of_the_suffixes(
            name in "[a-zA-Z0-9._-]{1,80}",
            mask in any::<u64>(),
        ) {
            let lower = name.to_ascii_lowercase();
            let mut got = Vec::new();
            suffix_hashes(name.as_bytes(), mask, |h, len| got.push((h, len)));
            // Every label-suffix, shortest first, filtered by its label count.
            let mut want = Vec::new();
            for (at, _) in lower.match_indices('.').rev() {
                want.push(&lower[at + 1..]);
            }
            want.push(&lower);
            let want: Vec<_> = want
                .into_iter()
                .filter(|s| mask & label_bit(s.matches('.').count() + 1) != 0)
                .map(|s| (name_hash(s.as_bytes()), s.len()))
                .collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn swar_matches_byte_loop(bytes in prop::array::uniform8(0u8..0x80)) {
            let x = u64::from_le_bytes(bytes);
            let lower = lower8(x).to_le_bytes();
            let dots = dots8(x).to_le_bytes();
            for i in 0..8 {
                prop_assert_eq!(lower[i], bytes[i].to_ascii_lowercase());
                prop_assert_eq!(dots[i] == 0x80, bytes[i] == b'.');
                prop_assert!(dots[i] == 0 || dots[i] == 0x80);
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
