//! The compiled `UrlSet`: UT1 / squidGuard `urls` entries (host + path prefix) and
//! `expressions` (regular expressions over the URL).
//!
//! Both kinds of entry see the same normalised URL: scheme, user info and port
//! dropped, host lower-cased with one trailing dot and a leading `www.`/`www2.`…
//! removed (so `www.ex.com/a` and `ex.com/a` are one entry, as squidGuard intends),
//! path and query lower-cased too (squidGuard compares URLs case-insensitively;
//! over-matching `/Foo` for `/foo` is the safe side for a filter). A `urls` entry
//! matches when the URL's host equals the entry's host and its path starts with the
//! entry's path at a boundary (`/`, `?`, `&`, `=`, `#`, `;` or the end), so
//! `ex.com/foo` matches `/foo`, `/foo/bar` and `/foo?x` but not `/foobar`.
//! Percent-encoding is not decoded.
//!
//! This module owns matching only; reading files is `parse`'s job and deciding what
//! a match means is policy's.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use arrayvec::ArrayVec;
use regex::bytes::{RegexBuilder, RegexSet, RegexSetBuilder};
use xxhash_rust::xxh3::xxh3_64;

use super::domain::{Tag, normalize_into};
use super::parse::quoted;
use super::{CatSet, CategoryId, ListError, SourceId};

/// Compiled-size ceiling of one expression; a bigger one is a bad line, so one
/// pathological line cannot eat the gateway's memory.
const REGEX_SIZE_LIMIT: usize = 2 << 20;
/// Ceiling of all expressions compiled together.
const SET_SIZE_LIMIT: usize = 64 << 20;
/// Lazy-DFA cache per thread for the set.
const SET_DFA_LIMIT: usize = 8 << 20;
/// URLs up to this length are normalised on the stack; longer ones (rare) on the heap.
const STACK_URL: usize = 2048;

/// One `urls` entry or expression that matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UrlHit {
    pub category: CategoryId,
    pub source: SourceId,
    pub kind: UrlHitKind,
    /// The entry comes from an exception source for `category`.
    pub exception: bool,
}

/// Which entry matched, for `UrlSet::entry_text`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlHitKind {
    /// Index into the set's `host/path` entries.
    Prefix(u32),
    /// Index into the set's expressions.
    Expression(u32),
}

/// Everything a URL matched: prefix entries (shortest first), then expressions.
#[derive(Clone, Debug, Default)]
pub struct UrlMatch {
    pub hits: ArrayVec<UrlHit, 8>,
    /// More than 8 entries matched; `categories()` still accounts for all of them.
    pub truncated: bool,
    listed: CatSet,
    excepted: CatSet,
}

impl UrlMatch {
    /// Categories listing the URL minus those an exception entry matched.
    pub fn categories(&self) -> CatSet {
        self.listed.minus(self.excepted)
    }

    pub fn exceptions(&self) -> CatSet {
        self.excepted
    }

    pub fn is_empty(&self) -> bool {
        self.hits.is_empty() && !self.truncated
    }

    fn push(&mut self, tag: Tag, kind: UrlHitKind) {
        if tag.exception {
            self.excepted.insert(tag.category);
        } else {
            self.listed.insert(tag.category);
        }
        let hit = UrlHit {
            category: tag.category,
            source: tag.source,
            kind,
            exception: tag.exception,
        };
        if self.hits.try_push(hit).is_err() {
            self.truncated = true;
        }
    }
}

/// The keys are already xxh3 hashes: hashing them again would only cost time.
#[derive(Default, Clone, Copy)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are used; fold anything else so the hasher stays correct.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdBuild = BuildHasherDefault<IdentityHasher>;

/// The compiled URL entries and expressions.
#[derive(Debug, Default)]
pub struct UrlSet {
    /// xxh3 of every entry's host → its index in `path_len_offsets`: most URLs stop
    /// after this one probe.
    hosts: HashMap<u64, u32, IdBuild>,
    /// Host `h` has entries whose paths are `path_lens[path_len_offsets[h]..
    /// path_len_offsets[h + 1]]` bytes long (sorted, distinct): only URL prefixes of
    /// those lengths are hashed, not one per boundary of a long phishing URL.
    path_len_offsets: Vec<u32>,
    path_lens: Vec<u16>,
    /// xxh3 of an entry's text → first entry with that hash; `next` chains the
    /// (astronomically rare) others, and the text is compared, so matching is exact.
    index: HashMap<u64, u32, IdBuild>,
    next: Vec<u32>,
    /// Entry `i` is `text[text_offsets[i]..text_offsets[i + 1]]`.
    text: String,
    text_offsets: Vec<u32>,
    /// Entry `i` is listed by `entry_tags[tag_offsets[i]..tag_offsets[i + 1]]`.
    tag_offsets: Vec<u32>,
    entry_tags: Vec<Tag>,
    patterns: Vec<String>,
    pattern_tags: Vec<Tag>,
    regex: Option<RegexSet>,
}

const NO_NEXT: u32 = u32::MAX;

impl UrlSet {
    /// Every entry and expression matching `url` (absolute `http://…`, scheme-less
    /// `host/path`, or a bare `host[:port]`).
    pub fn lookup(&self, url: &str) -> UrlMatch {
        let mut m = UrlMatch::default();
        if self.text_offsets.len() <= 1 && self.regex.is_none() {
            return m;
        }
        let Some((host, path)) = split_url(url.as_bytes()) else {
            return m;
        };
        let needed = host.len() + path.len() + 1;
        if host.is_ascii() && needed <= STACK_URL {
            let mut buf: ArrayVec<u8, STACK_URL> = ArrayVec::new();
            let host_len = write_normalized(host, path, &mut buf);
            self.match_normalized(&buf, host_len, &mut m);
        } else {
            // Rare: an internationalised host or a URL of several kilobytes.
            let mut host_buf = Vec::new();
            let host = if host.is_ascii() {
                host
            } else if normalize_into(host, &mut host_buf).is_ok() {
                &host_buf
            } else {
                return m;
            };
            let mut buf = Vec::with_capacity(needed);
            let host_len = write_normalized(host, path, &mut buf);
            self.match_normalized(&buf, host_len, &mut m);
        }
        m
    }

    fn match_normalized(&self, norm: &[u8], host_len: usize, m: &mut UrlMatch) {
        if let Some(&h) = self.hosts.get(&xxh3_64(&norm[..host_len])) {
            let path = &norm[host_len..];
            let h = h as usize;
            let lens = match (
                self.path_len_offsets.get(h),
                self.path_len_offsets.get(h + 1),
            ) {
                (Some(&a), Some(&b)) => self.path_lens.get(a as usize..b as usize).unwrap_or(&[]),
                _ => &[],
            };
            for &len in lens {
                let len = usize::from(len);
                if len > path.len() {
                    break;
                }
                // The entry must end at a boundary of the URL's path: before a
                // separator, after one, or at the end.
                let at_boundary = len == 0
                    || len == path.len()
                    || path.get(len).is_some_and(|&c| is_boundary(c))
                    || path.get(len - 1).is_some_and(|&c| is_boundary(c));
                if at_boundary {
                    self.match_entry(&norm[..host_len + len], m);
                }
            }
        }
        if let Some(set) = &self.regex {
            // `is_match` first: `matches` allocates its result, and most URLs match
            // nothing.
            if set.is_match(norm) {
                for i in set.matches(norm).iter() {
                    if let Some(&tag) = self.pattern_tags.get(i) {
                        m.push(tag, UrlHitKind::Expression(i as u32));
                    }
                }
            }
        }
    }

    fn match_entry(&self, key: &[u8], m: &mut UrlMatch) {
        let Some(&first) = self.index.get(&xxh3_64(key)) else {
            return;
        };
        let mut e = first;
        while e != NO_NEXT {
            if self.entry(e).as_bytes() == key {
                let i = e as usize;
                if let (Some(&a), Some(&b)) = (self.tag_offsets.get(i), self.tag_offsets.get(i + 1))
                {
                    for &tag in self.entry_tags.get(a as usize..b as usize).unwrap_or(&[]) {
                        m.push(tag, UrlHitKind::Prefix(e));
                    }
                }
            }
            e = self.next.get(e as usize).copied().unwrap_or(NO_NEXT);
        }
    }

    fn entry(&self, i: u32) -> &str {
        let i = i as usize;
        match (self.text_offsets.get(i), self.text_offsets.get(i + 1)) {
            (Some(&a), Some(&b)) => self.text.get(a as usize..b as usize).unwrap_or(""),
            _ => "",
        }
    }

    /// The normalised `host/path` entry or the expression as written.
    pub fn entry_text(&self, kind: UrlHitKind) -> &str {
        match kind {
            UrlHitKind::Prefix(i) => self.entry(i),
            UrlHitKind::Expression(i) => self
                .patterns
                .get(i as usize)
                .map(String::as_str)
                .unwrap_or(""),
        }
    }

    /// Number of distinct `host/path` entries plus expressions.
    pub fn len(&self) -> usize {
        self.text_offsets.len().saturating_sub(1) + self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate heap bytes. The compiled regular expressions are not measurable
    /// from outside the regex crate; their source length stands in for them.
    pub fn memory_bytes(&self) -> usize {
        self.hosts.capacity() * 13
            + self.path_len_offsets.capacity() * 4
            + self.path_lens.capacity() * 2
            + self.index.capacity() * 13
            + self.next.capacity() * 4
            + self.text.capacity()
            + self.text_offsets.capacity() * 4
            + self.tag_offsets.capacity() * 4
            + self.entry_tags.capacity() * std::mem::size_of::<Tag>()
            + self
                .patterns
                .iter()
                .map(|p| p.capacity() * 4)
                .sum::<usize>()
            + self.pattern_tags.capacity() * std::mem::size_of::<Tag>()
    }
}

/// Splits a URL into its raw host (no user info, port or brackets) and its path with
/// query; `None` when there is no host at all.
fn split_url(url: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut s = url.trim_ascii();
    if let Some(p) = scheme_len(s) {
        s = &s[p + 3..];
    } else if let Some(rest) = s.strip_prefix(b"//") {
        s = rest;
    }
    let end = s
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(s.len());
    let (authority, path) = s.split_at(end);
    let authority = match authority.iter().rposition(|&b| b == b'@') {
        Some(p) => &authority[p + 1..],
        None => authority,
    };
    let host = if let Some(rest) = authority.strip_prefix(b"[") {
        let close = rest.iter().position(|&b| b == b']')?;
        &rest[..close]
    } else {
        match authority.iter().rposition(|&b| b == b':') {
            Some(p) if authority[p + 1..].iter().all(u8::is_ascii_digit) => &authority[..p],
            _ => authority,
        }
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host, path))
}

/// Where a `urls` entry may end in a URL path (see the module doc).
fn is_boundary(c: u8) -> bool {
    matches!(c, b'/' | b'?' | b'&' | b'=' | b'#' | b';')
}

/// Length of a leading `scheme:` followed by `//`, scanning only scheme characters.
fn scheme_len(s: &[u8]) -> Option<usize> {
    let n = s
        .iter()
        .take_while(|&&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        .count();
    (n > 0 && s[n..].starts_with(b"://")).then_some(n)
}

/// `www.`, `www2.`… in front of a name that still has a dot after it.
fn strip_www(host: &[u8]) -> &[u8] {
    let Some(rest) = host.strip_prefix(b"www") else {
        return host;
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    match rest[digits..].strip_prefix(b".") {
        Some(name) if name.contains(&b'.') => name,
        _ => host,
    }
}

/// Writes `host + path` lower-cased into `out`, `www` stripped and the path made to
/// start with `/`; returns the host's length in `out`.
fn write_normalized(host: &[u8], path: &[u8], out: &mut impl Extend<u8>) -> usize {
    let mut lower = [0u8; 256];
    let host = if host.len() <= lower.len() {
        for (d, s) in lower.iter_mut().zip(host) {
            *d = s.to_ascii_lowercase();
        }
        strip_www(&lower[..host.len()])
    } else {
        host // not a valid name; kept as is, it will match nothing
    };
    out.extend(host.iter().copied());
    if path.first() != Some(&b'/') {
        out.extend([b'/']);
    }
    out.extend(path.iter().map(u8::to_ascii_lowercase));
    host.len()
}

/// Normalises a `urls` line into `host/path` (the same form `lookup` builds).
pub(crate) fn normalize_entry(raw: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    if std::str::from_utf8(raw).is_err() {
        return Err("not valid UTF-8".into());
    }
    if raw.iter().any(u8::is_ascii_whitespace) {
        return Err(format!("blank inside URL entry {}", quoted(raw)));
    }
    let Some((host, path)) = split_url(raw) else {
        return Err(format!("URL entry without a host: {}", quoted(raw)));
    };
    let mut name = Vec::new();
    normalize_into(host, &mut name).map_err(|e| e.reason(host))?;
    out.clear();
    let host = strip_www(&name);
    out.extend_from_slice(host);
    if !path.is_empty() {
        if path[0] != b'/' {
            out.push(b'/');
        }
        out.extend(path.iter().map(u8::to_ascii_lowercase));
    }
    Ok(())
}

/// Collects entries and expressions, then freezes them into a `UrlSet`.
#[derive(Default)]
pub(crate) struct UrlSetBuilder {
    entries: HashMap<Vec<u8>, u32>,
    texts: Vec<Vec<u8>>,
    tags: Vec<Vec<Tag>>,
    patterns: Vec<(String, Tag)>,
}

impl UrlSetBuilder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds an entry normalised by `normalize_entry`.
    pub(crate) fn add_entry(&mut self, entry: &[u8], tag: Tag) {
        let i = match self.entries.get(entry) {
            Some(&i) => i as usize,
            None => {
                let i = self.texts.len();
                self.entries.insert(entry.to_vec(), i as u32);
                self.texts.push(entry.to_vec());
                self.tags.push(Vec::new());
                i
            }
        };
        if let Some(tags) = self.tags.get_mut(i)
            && !tags.contains(&tag)
        {
            tags.push(tag);
        }
    }

    /// Adds an expression after compiling it alone, so an invalid or oversized one is
    /// reported against its own line instead of failing the whole set.
    pub(crate) fn add_expression(&mut self, pattern: &str, tag: Tag) -> Result<(), String> {
        RegexBuilder::new(pattern)
            .case_insensitive(true)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| regex_reason(&e))?;
        self.patterns.push((pattern.to_string(), tag));
        Ok(())
    }

    pub(crate) fn build(self) -> Result<UrlSet, ListError> {
        let mut set = UrlSet::default();
        let mut by_host: HashMap<u64, Vec<u16>> = HashMap::new();
        let n = self.texts.len();
        set.text_offsets.reserve_exact(n + 1);
        set.text_offsets.push(0);
        set.tag_offsets.push(0);
        set.next = vec![NO_NEXT; n];
        for (i, (text, tags)) in self.texts.iter().zip(&self.tags).enumerate() {
            // Entries are valid UTF-8 (checked by `normalize_entry`).
            set.text.push_str(&String::from_utf8_lossy(text));
            set.text_offsets.push(set.text.len() as u32);
            set.entry_tags.extend_from_slice(tags);
            set.tag_offsets.push(set.entry_tags.len() as u32);
            let host_end = text.iter().position(|&b| b == b'/').unwrap_or(text.len());
            let path_len = u16::try_from(text.len() - host_end).unwrap_or(u16::MAX);
            by_host
                .entry(xxh3_64(&text[..host_end]))
                .or_default()
                .push(path_len);
            let h = xxh3_64(text);
            if let Some(prev) = set.index.insert(h, i as u32) {
                set.next[i] = prev;
            }
        }
        // Keyed by the host's hash: two hosts sharing one (astronomically rare)
        // simply share a merged length list; entries are still compared as text.
        set.path_len_offsets.push(0);
        let mut by_host: Vec<(u64, Vec<u16>)> = by_host.into_iter().collect();
        by_host.sort_unstable();
        for (hash, mut lens) in by_host {
            lens.sort_unstable();
            lens.dedup();
            set.hosts
                .insert(hash, (set.path_len_offsets.len() - 1) as u32);
            set.path_lens.extend_from_slice(&lens);
            set.path_len_offsets.push(set.path_lens.len() as u32);
        }
        if !self.patterns.is_empty() {
            let regex = RegexSetBuilder::new(self.patterns.iter().map(|(p, _)| p))
                .case_insensitive(true)
                .size_limit(SET_SIZE_LIMIT)
                .dfa_size_limit(SET_DFA_LIMIT)
                .build()
                .map_err(|e| ListError::Expressions {
                    reason: regex_reason(&e),
                })?;
            set.regex = Some(regex);
        }
        let (patterns, pattern_tags) = self.patterns.into_iter().unzip();
        set.patterns = patterns;
        set.pattern_tags = pattern_tags;
        Ok(set)
    }
}

/// One-line reason from a regex error (syntax errors span several lines).
fn regex_reason(e: &regex::Error) -> String {
    match e {
        regex::Error::CompiledTooBig(limit) => {
            format!("regular expression too big (compiled size over {limit} bytes)")
        }
        regex::Error::Syntax(text) => {
            let detail = text
                .lines()
                .find_map(|l| l.strip_prefix("error: "))
                .unwrap_or_else(|| text.lines().last().unwrap_or("syntax error"));
            format!("invalid regular expression: {detail}")
        }
        other => format!("invalid regular expression: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(c: CategoryId) -> Tag {
        Tag {
            category: c,
            source: c,
            exception: false,
        }
    }

    fn set(entries: &[(&str, CategoryId)], exprs: &[(&str, CategoryId)]) -> UrlSet {
        let mut b = UrlSetBuilder::new();
        let mut buf = Vec::new();
        for &(e, c) in entries {
            normalize_entry(e.as_bytes(), &mut buf).unwrap();
            b.add_entry(&buf, tag(c));
        }
        for &(p, c) in exprs {
            b.add_expression(p, tag(c)).unwrap();
        }
        b.build().unwrap()
    }

    fn cats(s: &UrlSet, url: &str) -> CatSet {
        s.lookup(url).categories()
    }

    #[test]
    fn entry_normalisation() {
        let mut out = Vec::new();
        for (raw, want) in [
            ("Ex.COM/Foo", "ex.com/foo"),
            ("www.ex.com/a", "ex.com/a"),
            ("www2.ex.com/a", "ex.com/a"),
            ("http://user@www.ex.com:8080/a?b", "ex.com/a?b"),
            ("brujildasexy.es/?v=da7f", "brujildasexy.es/?v=da7f"),
            ("ex.com?x=1", "ex.com/?x=1"),
            ("www.com/a", "www.com/a"),
            ("ex.com", "ex.com"),
        ] {
            normalize_entry(raw.as_bytes(), &mut out).unwrap();
            assert_eq!(String::from_utf8_lossy(&out), want, "{raw}");
        }
        assert!(
            normalize_entry(b"/path-only", &mut out)
                .unwrap_err()
                .contains("without a host")
        );
        assert!(
            normalize_entry(b"ex%.com/a", &mut out)
                .unwrap_err()
                .contains("'%'")
        );
        assert!(
            normalize_entry(b"\xffab.com/x", &mut out)
                .unwrap_err()
                .contains("UTF-8")
        );
    }

    #[test]
    fn prefix_at_segment_boundary() {
        let s = set(
            &[("ex.com/foo", 1), ("ex.com/dir/", 2), ("ex.com/s?q=", 3)],
            &[],
        );
        assert_eq!(cats(&s, "http://ex.com/foo"), CatSet::single(1));
        assert_eq!(cats(&s, "http://ex.com/foo/bar"), CatSet::single(1));
        assert_eq!(cats(&s, "http://ex.com/foo?x=1"), CatSet::single(1));
        assert_eq!(
            cats(&s, "https://user:pw@WWW.EX.COM:8443/FOO"),
            CatSet::single(1)
        );
        assert_eq!(cats(&s, "http://www3.ex.com./foo"), CatSet::single(1));
        assert!(cats(&s, "http://ex.com/foobar").is_empty());
        assert!(cats(&s, "http://ex.com/").is_empty());
        assert!(cats(&s, "http://sub.ex.com/foo").is_empty());
        assert!(cats(&s, "http://ex.com/bar/foo").is_empty());
        assert_eq!(cats(&s, "http://ex.com/dir/x"), CatSet::single(2));
        assert!(cats(&s, "http://ex.com/dirx").is_empty());
        assert_eq!(cats(&s, "ex.com/s?q=abc"), CatSet::single(3));
        let m = s.lookup("http://ex.com/foo/bar");
        assert_eq!(s.entry_text(m.hits[0].kind), "ex.com/foo");
    }

    #[test]
    fn host_only_entry_and_bare_hosts() {
        let s = set(&[("ex.com", 1), ("www.ex.org/", 2)], &[]);
        assert_eq!(cats(&s, "http://ex.com"), CatSet::single(1));
        assert_eq!(cats(&s, "ex.com:443"), CatSet::single(1));
        assert_eq!(cats(&s, "http://ex.com/any/thing"), CatSet::single(1));
        assert_eq!(cats(&s, "http://ex.org"), CatSet::single(2));
        assert!(cats(&s, "").is_empty());
        assert!(cats(&s, "http:///x").is_empty());
    }

    #[test]
    fn same_entry_in_several_categories() {
        let s = set(
            &[("ex.com/a", 1), ("ex.com/a", 2), ("www.ex.com/a", 2)],
            &[],
        );
        assert_eq!(s.len(), 1);
        assert_eq!(cats(&s, "http://ex.com/a"), CatSet(0b110));
    }

    #[test]
    fn expressions_case_insensitive_over_normalised_url() {
        let s = set(
            &[],
            &[
                (r"^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+/search\?q=[0-9]+$", 1),
                ("(/banner/|/sponsor/|/Advertisement/)", 2),
            ],
        );
        assert_eq!(
            cats(&s, "http://10.1.2.3:80/search?q=42"),
            CatSet::single(1)
        );
        assert!(cats(&s, "http://10.1.2.3/search?q=42x").is_empty());
        assert_eq!(
            cats(&s, "http://ex.com/ADVERTISEMENT/x.gif"),
            CatSet::single(2)
        );
        let m = s.lookup("http://ex.com/sponsor/");
        assert_eq!(m.hits[0].kind, UrlHitKind::Expression(1));
        assert_eq!(
            s.entry_text(m.hits[0].kind),
            "(/banner/|/sponsor/|/Advertisement/)"
        );
    }

    #[test]
    fn invalid_expression_is_a_reason() {
        let mut b = UrlSetBuilder::new();
        let e = b.add_expression("(unclosed", tag(1)).unwrap_err();
        assert!(e.starts_with("invalid regular expression: "), "{e}");
        assert!(!e.contains('\n'));
        let huge = format!(
            "({})",
            (0..20000)
                .map(|i| format!("w{i}x"))
                .collect::<Vec<_>>()
                .join("|")
        );
        let e = b
            .add_expression(&format!("{huge}{{5}}"), tag(1))
            .unwrap_err();
        assert!(e.contains("too big"), "{e}");
    }

    #[test]
    fn long_and_idn_urls() {
        let s = set(&[("bücher.de/x", 1)], &[("zzz", 2)]);
        assert_eq!(cats(&s, "http://BÜCHER.de/x/y"), CatSet::single(1));
        let long = format!("http://a.com/{}zzz", "p/".repeat(3000));
        assert_eq!(cats(&s, &long), CatSet::single(2));
    }
}
