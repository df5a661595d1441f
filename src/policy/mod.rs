//! The decision: may this person go there now?
//!
//! [`decide`] is a pure function of the snapshot, the request, the identity and the
//! time: no I/O, no clock reads, no globals. The DNS filter, the proxy, `vigie check`
//! and the tests all call the same function. Precedence, highest first:
//!
//! 1. an allow override of the profile (domain or URL prefix), or an approved unblock
//!    request in force (`Snapshot::grants`: read like the overrides, through the
//!    snapshot, expiring by `now`);
//! 2. a deny override of the profile;
//! 3. a category the target is listed in, blocked by the profile at that time
//!    (always-blocked categories, adjusted by the scheduled rules active then);
//!    built-in circumvention names (the DoH canary, iCloud Private Relay) count as
//!    `doh` for profiles that block `doh`; a bare IP follows the profile's `bare_ip`;
//! 4. safe search: search engines and YouTube are rewritten to their safe hosts;
//! 5. otherwise allow.
//!
//! A [`Decision`] is small and allocation-free; [`Decision::explain`] renders the
//! human-readable trace only when someone asks for it.

mod safesearch;

use std::borrow::Cow;
use std::net::IpAddr;

use chrono::{DateTime, Utc};

use crate::config::{Action, ProfileId, SafeSearch};
use crate::identity::Identity;
use crate::lists::{CatSet, CategoryId, SourceId, UrlHitKind, locate_entry};
use crate::snapshot::Snapshot;

pub use safesearch::safe_search_target;

/// What an operator asks about (`vigie check`, the admin app's check page and
/// simulations): an IP address, a URL (with or without `http://`), or a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckTarget {
    Ip(IpAddr),
    Url(String),
    Name(String),
}

impl CheckTarget {
    pub fn parse(text: &str) -> CheckTarget {
        let t = text.trim();
        if let Ok(ip) = t
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            CheckTarget::Ip(ip)
        } else if t.contains("://") {
            CheckTarget::Url(t.to_string())
        } else if t.contains('/') {
            CheckTarget::Url(format!("http://{t}"))
        } else {
            CheckTarget::Name(t.trim_end_matches('.').to_ascii_lowercase())
        }
    }

    /// The request the filter would see: a TLS connection to the address, a plain
    /// HTTP GET of the URL, a DNS A query of the name.
    pub fn request(&self) -> Request<'_> {
        match self {
            CheckTarget::Ip(ip) => Request::Ip { ip: *ip, port: 443 },
            CheckTarget::Url(url) => Request::Http { method: "GET", url },
            CheckTarget::Name(name) => Request::Dns { name, qtype: 1 },
        }
    }
}

/// What is being asked for.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    /// A DNS query for `name` with record type `qtype` (numeric, e.g. 1 = A).
    Dns { name: &'a str, qtype: u16 },
    /// A plain HTTP request with an absolute URL.
    Http { method: &'a str, url: &'a str },
    /// A TLS connection or CONNECT: the SNI or CONNECT host, the port, and the IP
    /// it goes to when known.
    Tls {
        host: Option<&'a str>,
        port: u16,
        ip: Option<IpAddr>,
    },
    /// A connection to a bare IP address.
    Ip { ip: IpAddr, port: u16 },
    /// A stream recognised by its first bytes (`proxy::sniff`): a P2P or tunnel
    /// protocol, decided by the category it belongs to (`p2p`, `vpn`).
    Stream {
        protocol: &'static str,
        category: &'a str,
    },
}

/// The verdict part of a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Block,
    /// Allowed, but through the safe host of a search engine / YouTube.
    SafeSearch {
        target: &'static str,
    },
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Block => "block",
            Verdict::SafeSearch { .. } => "safe_search",
        }
    }
}

/// Which rule of the profile produced the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Index into the profile's `allow` list.
    AllowOverride(u16),
    /// An approved unblock request (its id), see `snapshot::Grants`.
    Granted(i64),
    /// Index into the profile's `deny` list.
    DenyOverride(u16),
    /// A category in the profile's always-blocked list.
    BlockedCategory,
    /// A scheduled rule (index into the profile's `rules`) active at that time.
    ScheduledRule(u16),
    /// A circumvention name built into vigie (DoH canary, Private Relay).
    Circumvention,
    /// A bare IP address under a profile with `bare_ip = "block"`.
    BareIp,
    /// Safe-search rewrite of the profile.
    SafeSearch,
    /// A protocol whose category is not configured: refused (fail closed).
    Signature,
    /// Nothing blocks it.
    Default,
}

/// Which list entry matched (enough to find the entry again for a trace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matched {
    /// The entry is the last `suffix_len` bytes of the normalised host.
    Domain {
        source: SourceId,
        suffix_len: u8,
    },
    Url {
        source: SourceId,
        kind: UrlHitKind,
    },
    Ip {
        source: SourceId,
        net: ipnet::IpNet,
    },
    /// A name vigie itself knows (see [`CIRCUMVENTION_NAMES`]).
    Builtin,
    /// A protocol recognised by its first bytes.
    Signature(&'static str),
}

/// The outcome of [`decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub profile: ProfileId,
    /// The category that blocked, if a category did.
    pub category: Option<CategoryId>,
    /// Every category the target is listed in (exceptions removed), blocked or not.
    pub listed: CatSet,
    pub reason: Reason,
    pub matched: Option<Matched>,
}

/// Names that reveal or enable filter circumvention, answered as blocked for every
/// profile that blocks `doh`: Firefox's DoH canary (a negative answer tells the
/// browser to keep using the network's DNS) and iCloud Private Relay (a negative
/// answer makes Apple devices turn it off on this network).
pub const CIRCUMVENTION_NAMES: &[&str] = &[
    "use-application-dns.net",
    "mask.icloud.com",
    "mask-h2.icloud.com",
    "mask-api.icloud.com",
];

/// Decides `request` for `identity` at `now`. Pure.
pub fn decide(
    snapshot: &Snapshot,
    request: &Request<'_>,
    identity: &Identity,
    now: DateTime<Utc>,
) -> Decision {
    let profile_id = identity.profile;
    let Some(profile) = snapshot.config.profiles.get(profile_id as usize) else {
        // A stale identity naming a profile that no longer exists: fail closed.
        return Decision {
            verdict: Verdict::Block,
            profile: profile_id,
            category: None,
            listed: CatSet::EMPTY,
            reason: Reason::Default,
            matched: None,
        };
    };
    let target = Target::of(request);
    let mut buf = [0u8; 256];
    let host = target.host.and_then(|h| normalize_query_host(h, &mut buf));
    let host_str = host.as_deref();

    let mut d = Decision {
        verdict: Verdict::Allow,
        profile: profile_id,
        category: None,
        listed: CatSet::EMPTY,
        reason: Reason::Default,
        matched: None,
    };

    // Classify first, so even an overridden decision reports what the target is
    // listed in (the audit trail shows "allowed although gambling").
    let (blocked, rule_of) = blocked_categories(snapshot, profile_id, now);
    let mut first: Option<(CategoryId, Matched)> = None;
    let consider = |cat: CategoryId, m: Matched, first: &mut Option<(CategoryId, Matched)>| {
        if first.is_none() && blocked.contains(cat) {
            *first = Some((cat, m));
        }
    };
    if let Some(url) = target.url {
        let m = snapshot.lists.urls.lookup(url);
        d.listed = d.listed.union(m.categories());
        for hit in &m.hits {
            consider(
                hit.category,
                Matched::Url {
                    source: hit.source,
                    kind: hit.kind,
                },
                &mut first,
            );
        }
    }
    if let Some(h) = host_str {
        let m = snapshot.lists.domains.lookup(h);
        let cats = m.categories();
        d.listed = d.listed.union(cats);
        // Most specific entry first, so the trace names the closest match.
        let mut hits: arrayvec::ArrayVec<_, 16> = m
            .hits
            .iter()
            .filter(|x| !x.exception && cats.contains(x.category))
            .collect();
        hits.sort_by_key(|x| std::cmp::Reverse(x.suffix_len));
        for hit in hits {
            consider(
                hit.category,
                Matched::Domain {
                    source: hit.source,
                    suffix_len: hit.suffix_len,
                },
                &mut first,
            );
        }
        if first.is_none()
            && let Some(doh) = snapshot.config.category_id("doh")
            && blocked.contains(doh)
            && CIRCUMVENTION_NAMES
                .iter()
                .any(|n| is_same_or_subdomain(h, n))
        {
            d.listed.insert(doh);
            first = Some((doh, Matched::Builtin));
        }
    }
    if let Some(ip) = target.ip {
        let m = snapshot.lists.ips.lookup(ip);
        d.listed = d.listed.union(m.categories());
        for hit in &m.hits {
            consider(
                hit.category,
                Matched::Ip {
                    source: hit.source,
                    net: hit.net,
                },
                &mut first,
            );
        }
    }
    if let Request::Stream { protocol, category } = *request {
        let m = Matched::Signature(protocol);
        match snapshot.config.category_id(category) {
            Some(c) => {
                d.listed.insert(c);
                consider(c, m, &mut first);
            }
            None => {
                d.verdict = Verdict::Block;
                d.reason = Reason::Signature;
                d.matched = Some(m);
                return d;
            }
        }
    }
    // 1 and 2: overrides.
    if let Some(h) = host_str {
        if let Some(i) = snapshot.allow[profile_id as usize].find(h, target.path) {
            d.reason = Reason::AllowOverride(i);
            return d;
        }
        let grants = snapshot.grants.load();
        if !grants.is_empty()
            && let Some(g) = grants.find(h, identity.user.as_deref(), &profile.name, now)
        {
            d.reason = Reason::Granted(g.id);
            return d;
        }
        if let Some(i) = snapshot.deny[profile_id as usize].find(h, target.path) {
            d.verdict = Verdict::Block;
            d.reason = Reason::DenyOverride(i);
            return d;
        }
    }

    // 3: categories. A target listed in more entries than a lookup keeps (16) may
    // have had its blocked category's entry left out: the category set still
    // says so, and it still blocks (the entry is then not named).
    if first.is_none()
        && let Some(cat) = d.listed.intersect(blocked).iter().next()
    {
        d.verdict = Verdict::Block;
        d.category = Some(cat);
        d.reason = match rule_of(cat) {
            Some(r) => Reason::ScheduledRule(r),
            None => Reason::BlockedCategory,
        };
        return d;
    }
    if let Some((cat, m)) = first {
        d.verdict = Verdict::Block;
        d.category = Some(cat);
        d.matched = Some(m);
        d.reason = match m {
            Matched::Builtin => Reason::Circumvention,
            _ => match rule_of(cat) {
                Some(r) => Reason::ScheduledRule(r),
                None => Reason::BlockedCategory,
            },
        };
        return d;
    }

    if target.bare_ip && profile.bare_ip == Action::Block {
        d.verdict = Verdict::Block;
        d.reason = Reason::BareIp;
        return d;
    }

    // 4: safe search.
    if profile.safe_search != SafeSearch::Off
        && let Some(h) = host_str
        && let Some(t) = safe_search_target(h, profile.safe_search)
    {
        d.verdict = Verdict::SafeSearch { target: t };
        d.reason = Reason::SafeSearch;
    }
    d
}

/// The categories `profile` blocks at `now`, and for each a function naming the
/// scheduled rule responsible (None = the always-blocked list).
fn blocked_categories(
    snapshot: &Snapshot,
    profile: ProfileId,
    now: DateTime<Utc>,
) -> (CatSet, impl Fn(CategoryId) -> Option<u16> + '_) {
    let p = &snapshot.config.profiles[profile as usize];
    let local = now.with_timezone(&snapshot.config.timezone);
    let mut blocked = p.block;
    let mut active_rules = 0u64;
    for (i, rule) in p.rules.iter().enumerate() {
        let active = match rule.schedule {
            None => true,
            Some(s) => snapshot
                .config
                .schedules
                .get(s)
                .is_some_and(|s| s.active_at(&local)),
        };
        if !active {
            continue;
        }
        if i < 64 {
            active_rules |= 1 << i;
        }
        blocked = match rule.action {
            Action::Block => blocked.union(rule.categories),
            Action::Allow => blocked.minus(rule.categories),
        };
    }
    let rule_of = move |cat: CategoryId| {
        p.rules
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                *i < 64
                    && active_rules & (1 << i) != 0
                    && r.action == Action::Block
                    && r.categories.contains(cat)
            })
            .map(|(i, _)| i as u16)
            .next()
            .filter(|_| !p.block.contains(cat))
    };
    (blocked, rule_of)
}

fn is_same_or_subdomain(host: &str, name: &str) -> bool {
    host == name
        || (host.len() > name.len()
            && host.ends_with(name)
            && host.as_bytes()[host.len() - name.len() - 1] == b'.')
}

/// What a request points at, extracted once.
struct Target<'a> {
    host: Option<&'a str>,
    path: Option<&'a str>,
    url: Option<&'a str>,
    ip: Option<IpAddr>,
    bare_ip: bool,
}

impl<'a> Target<'a> {
    fn of(request: &Request<'a>) -> Self {
        match *request {
            Request::Dns { name, .. } => Target {
                host: Some(name),
                path: None,
                url: None,
                ip: None,
                bare_ip: false,
            },
            Request::Http { url, .. } => {
                let (host, path) = split_url(url);
                let ip = parse_ip_host(host);
                Target {
                    host: if ip.is_some() { None } else { Some(host) },
                    path: Some(path),
                    url: Some(url),
                    ip,
                    bare_ip: ip.is_some(),
                }
            }
            Request::Tls { host, ip, .. } => {
                let literal = host.and_then(parse_ip_host);
                Target {
                    host: if literal.is_some() { None } else { host },
                    path: None,
                    url: None,
                    ip: literal.or(ip),
                    bare_ip: literal.is_some() || host.is_none(),
                }
            }
            Request::Ip { ip, .. } => Target {
                host: None,
                path: None,
                url: None,
                ip: Some(ip),
                bare_ip: true,
            },
            Request::Stream { .. } => Target {
                host: None,
                path: None,
                url: None,
                ip: None,
                bare_ip: false,
            },
        }
    }
}

/// Splits an absolute URL (or `host/path`) into host and path; drops scheme,
/// userinfo and port.
pub fn split_url(url: &str) -> (&str, &str) {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host_port = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or(v6)
    } else {
        host_port
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(host_port)
    };
    (host, if path.is_empty() { "/" } else { path })
}

fn parse_ip_host(host: &str) -> Option<IpAddr> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.parse::<IpAddr>().ok().map(crate::snapshot::canonical_ip)
}

/// Lowercases and strips a trailing dot without allocating for ASCII names (the hot
/// path: DNS names on the wire are ASCII); falls back to IDNA for the rest.
pub fn normalize_query_host<'b>(host: &str, buf: &'b mut [u8; 256]) -> Option<Cow<'b, str>> {
    let h = host.strip_suffix('.').unwrap_or(host);
    if h.is_empty() {
        return None;
    }
    if h.is_ascii() && h.len() <= buf.len() {
        let out = &mut buf[..h.len()];
        out.copy_from_slice(h.as_bytes());
        out.make_ascii_lowercase();
        return std::str::from_utf8(out).ok().map(Cow::Borrowed);
    }
    crate::lists::domain::normalize_host(h).ok().map(Cow::Owned)
}

impl Decision {
    /// A short name of the rule that decided, for logs and audit events.
    pub fn rule(&self, snapshot: &Snapshot) -> String {
        let p = snapshot.config.profiles.get(self.profile as usize);
        let pname = snapshot.profile_name(self.profile);
        match self.reason {
            Reason::AllowOverride(i) => format!(
                "{pname}: allow {}",
                p.and_then(|p| p.allow.get(i as usize))
                    .map(|o| o.to_string())
                    .unwrap_or_default()
            ),
            Reason::Granted(id) => format!("{pname}: unblock request #{id}"),
            Reason::DenyOverride(i) => format!(
                "{pname}: deny {}",
                p.and_then(|p| p.deny.get(i as usize))
                    .map(|o| o.to_string())
                    .unwrap_or_default()
            ),
            Reason::BlockedCategory => format!("{pname}: block {}", self.category_name(snapshot)),
            Reason::ScheduledRule(i) => {
                let sched = p
                    .and_then(|p| p.rules.get(i as usize))
                    .and_then(|r| r.schedule)
                    .and_then(|s| snapshot.config.schedules.get(s))
                    .map(|s| format!(" during {}", s.name))
                    .unwrap_or_default();
                format!(
                    "{pname}: rule #{} block {}{sched}",
                    i + 1,
                    self.category_name(snapshot)
                )
            }
            Reason::Circumvention => format!("{pname}: circumvention (block doh)"),
            Reason::BareIp => format!("{pname}: bare_ip = block"),
            Reason::SafeSearch => format!("{pname}: safe_search"),
            Reason::Signature => {
                format!("{pname}: protocol refused (its category is not configured)")
            }
            Reason::Default if self.verdict == Verdict::Block => {
                format!("{pname}: unknown profile, refused (fail closed)")
            }
            Reason::Default => format!("{pname}: default allow"),
        }
    }

    /// [`Decision::rule`] as a shared string, for audit events: the common case (a
    /// category the profile blocks) is a pointer copy, not a new string.
    pub fn rule_label(&self, snapshot: &Snapshot) -> std::sync::Arc<str> {
        if matches!(self.reason, Reason::BlockedCategory)
            && let Some(rule) = self
                .category
                .and_then(|c| snapshot.block_rule(self.profile, c))
        {
            return rule;
        }
        self.rule(snapshot).into()
    }

    /// The category that decided, as a shared string (audit events).
    pub fn category_label(&self, snapshot: &Snapshot) -> Option<std::sync::Arc<str>> {
        self.category.map(|c| snapshot.category_label(c))
    }

    pub fn category_name<'s>(&self, snapshot: &'s Snapshot) -> &'s str {
        self.category
            .map(|c| snapshot.category_name(c))
            .unwrap_or("")
    }

    /// The list entry that matched, as text (e.g. `casino.com`), if a list did.
    pub fn entry(&self, snapshot: &Snapshot, request: &Request<'_>) -> Option<String> {
        match self.matched? {
            Matched::Domain { suffix_len, .. } => {
                let mut buf = [0u8; 256];
                let host = Target::of(request).host?;
                let h = normalize_query_host(host, &mut buf)?;
                let start = h.len().checked_sub(suffix_len as usize)?;
                h.get(start..).map(str::to_string)
            }
            Matched::Url { kind, .. } => Some(snapshot.lists.urls.entry_text(kind).to_string()),
            Matched::Ip { net, .. } => Some(net.to_string()),
            Matched::Signature(protocol) => Some(protocol.to_string()),
            Matched::Builtin => {
                let mut buf = [0u8; 256];
                let host = Target::of(request).host?;
                let h = normalize_query_host(host, &mut buf)?;
                CIRCUMVENTION_NAMES
                    .iter()
                    .find(|n| is_same_or_subdomain(&h, n))
                    .map(|n| n.to_string())
            }
        }
    }

    /// The explain trace: how the verdict was reached, one step a line.
    pub fn explain(
        &self,
        snapshot: &Snapshot,
        request: &Request<'_>,
        identity: &Identity,
        now: DateTime<Utc>,
    ) -> Vec<String> {
        let cfg = &snapshot.config;
        let mut t = Vec::new();
        let local = now.with_timezone(&cfg.timezone);
        t.push(format!(
            "time: {} ({})",
            local.format("%A %Y-%m-%d %H:%M"),
            cfg.timezone.name()
        ));
        let who = match &identity.user {
            Some(u) => format!("user {u}"),
            None => "unidentified client".to_string(),
        };
        t.push(format!(
            "identity: {who}, profile \"{}\" (from {:?})",
            snapshot.profile_name(self.profile),
            identity.source
        ));
        let target = Target::of(request);
        if let Some(h) = target.host {
            t.push(format!("host: {h}"));
        }
        if let Some(ip) = target.ip {
            t.push(format!("ip: {ip}"));
        }
        if !self.listed.is_empty() {
            let names: Vec<&str> = self
                .listed
                .iter()
                .map(|c| snapshot.category_name(c))
                .collect();
            t.push(format!("listed in: {}", names.join(", ")));
        } else {
            t.push("listed in: no category".to_string());
        }
        if let Some(m) = self.matched {
            let entry = self.entry(snapshot, request).unwrap_or_default();
            let source = match m {
                Matched::Domain { source, .. }
                | Matched::Url { source, .. }
                | Matched::Ip { source, .. } => cfg.source(source),
                Matched::Builtin | Matched::Signature(_) => None,
            };
            match source {
                None if matches!(m, Matched::Signature(_)) => t.push(format!(
                    "detected protocol \"{entry}\" from the connection's first bytes"
                )),
                Some(spec) => {
                    let at = locate_entry(spec, &entry)
                        .map(|(file, line)| format!("{}:{line}", file.display()))
                        .unwrap_or_else(|| spec.path.display().to_string());
                    t.push(format!(
                        "matched entry \"{entry}\" of list {at} (category {})",
                        snapshot.category_name(spec.category)
                    ));
                }
                None => t.push(format!("matched built-in circumvention name \"{entry}\"")),
            }
        }
        if let Some(p) = cfg.profiles.get(self.profile as usize) {
            match self.reason {
                Reason::ScheduledRule(i) => {
                    if let Some(r) = p.rules.get(i as usize) {
                        let sched = r
                            .schedule
                            .and_then(|s| cfg.schedules.get(s))
                            .map(|s| {
                                format!("schedule \"{}\" ({}), active now", s.name, s.describe())
                            })
                            .unwrap_or_else(|| "always".into());
                        t.push(format!(
                            "rule: profile \"{}\" rule #{} (line {}) blocks {} — {sched}",
                            p.name,
                            i + 1,
                            r.line,
                            self.category_name(snapshot)
                        ));
                    }
                }
                Reason::BlockedCategory => t.push(format!(
                    "rule: profile \"{}\" blocks category \"{}\" at all times",
                    p.name,
                    self.category_name(snapshot)
                )),
                _ => {}
            }
            // Say which scheduled rules were not active, so "why is it open?" is answered.
            for (i, r) in p.rules.iter().enumerate() {
                if let Some(s) = r.schedule.and_then(|s| cfg.schedules.get(s))
                    && !s.active_at(&local)
                    && !r.categories.intersect(self.listed).is_empty()
                {
                    let names: Vec<&str> = r
                        .categories
                        .intersect(self.listed)
                        .iter()
                        .map(|c| snapshot.category_name(c))
                        .collect();
                    t.push(format!(
                        "rule: profile \"{}\" rule #{} ({} {}) not active: schedule \"{}\" is {}",
                        p.name,
                        i + 1,
                        match r.action {
                            Action::Block => "block",
                            Action::Allow => "allow",
                        },
                        names.join(", "),
                        s.name,
                        s.describe()
                    ));
                }
            }
        }
        t.push(format!(
            "decision: {} ({})",
            self.verdict.as_str(),
            self.rule(snapshot)
        ));
        if let Verdict::SafeSearch { target } = self.verdict {
            t.push(format!("safe search: served through {target}"));
        }
        t
    }
}

#[cfg(test)]
mod tests;
