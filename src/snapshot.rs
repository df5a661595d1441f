//! The immutable policy state every request reads: validated config + compiled
//! lists, built off the hot path and swapped in with one pointer store.
//!
//! A snapshot that fails to build is rejected whole and the previous one keeps
//! serving; in-flight requests finish on the snapshot they started with (they hold
//! an `Arc`). Nothing here performs a decision; see `policy::decide`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use crate::config::{self, Config, ConfigErrors, Override, ProfileId};
use crate::lists::{ListError, Lists};
use crate::metrics;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Lists(#[from] ListError),
}

/// A profile's allow/deny overrides, compiled for lookup by host.
#[derive(Debug, Default)]
pub struct Overrides {
    /// Normalised domain → index in the profile's override list.
    domains: HashMap<String, u16>,
    /// (host without `www.`, path prefix, index) for URL overrides.
    urls: Vec<(String, String, u16)>,
}

impl Overrides {
    fn compile(list: &[Override]) -> Self {
        let mut o = Overrides::default();
        for (i, entry) in list.iter().enumerate() {
            match entry {
                Override::Domain(d) => {
                    o.domains.entry(d.clone()).or_insert(i as u16);
                }
                Override::Url { host, path } => o.urls.push((host.clone(), path.clone(), i as u16)),
            }
        }
        o
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty() && self.urls.is_empty()
    }

    /// Index of the override matching `host` (normalised; any subdomain of a listed
    /// domain matches) or, when `path` is given, a URL prefix at a segment boundary.
    pub fn find(&self, host: &str, path: Option<&str>) -> Option<u16> {
        if !self.domains.is_empty() {
            let mut suffix = host;
            loop {
                if let Some(&i) = self.domains.get(suffix) {
                    return Some(i);
                }
                match suffix.find('.') {
                    Some(dot) => suffix = &suffix[dot + 1..],
                    None => break,
                }
            }
        }
        let path = path?;
        let bare = host.strip_prefix("www.").unwrap_or(host);
        self.urls
            .iter()
            .find(|(h, p, _)| h == bare && path_prefix_matches(p, path))
            .map(|&(_, _, i)| i)
    }
}

/// `prefix` matches `path` when equal, or when `path` continues with a new segment,
/// a query or a fragment (`/foo` matches `/foo/bar` and `/foo?x`, not `/foobar`).
pub fn path_prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with(['/', '?', '#']),
        None => false,
    }
}

/// Who an approved unblock request lets through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantScope {
    /// One person (the requester).
    User(String),
    /// Everyone with this profile (by name, so a reload that reorders profiles
    /// keeps it right).
    Profile(String),
    Everyone,
}

/// An allow layered over the profiles at run time: an unblock request a director
/// approved, until it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The unblock request's id.
    pub id: i64,
    /// Normalised host; its subdomains are let through too.
    pub host: String,
    pub scope: GrantScope,
    pub expires: chrono::DateTime<chrono::Utc>,
}

/// The approved unblock requests in force: replaced whole (one pointer swap) when a
/// director approves or a grant expires, shared by every snapshot a reload builds,
/// and read by `policy::decide` like the profiles' own allow overrides.
#[derive(Debug, Default)]
pub struct Grants {
    list: Vec<Grant>,
}

impl Grants {
    pub fn new(list: Vec<Grant>) -> Self {
        Grants { list }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn list(&self) -> &[Grant] {
        &self.list
    }

    /// The grant letting `user` (of `profile`) reach `host` (normalised) at `now`.
    pub fn find(
        &self,
        host: &str,
        user: Option<&str>,
        profile: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<&Grant> {
        self.list.iter().find(|g| {
            now < g.expires
                && (host == g.host
                    || (host.len() > g.host.len()
                        && host.ends_with(g.host.as_str())
                        && host.as_bytes()[host.len() - g.host.len() - 1] == b'.'))
                && match &g.scope {
                    GrantScope::Everyone => true,
                    GrantScope::Profile(p) => p == profile,
                    GrantScope::User(u) => user == Some(u.as_str()),
                }
        })
    }
}

static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

/// Config + compiled lists, immutable once built.
pub struct Snapshot {
    pub config: Config,
    pub lists: Lists,
    /// Per profile, same order as `config.profiles`.
    pub allow: Vec<Overrides>,
    pub deny: Vec<Overrides>,
    /// Approved unblock requests; the same cell in every snapshot of a
    /// [`SnapshotStore`] (see [`Grants`]).
    pub grants: Arc<ArcSwap<Grants>>,
    /// Increases with every snapshot built by this process.
    pub version: u64,
    pub built_at: SystemTime,
    pub build_time: Duration,
    /// The names audit events carry, made once per snapshot.
    labels: AuditLabels,
}

/// Profile and category names and the category rules' text as shared strings: an
/// audit event copies a pointer instead of allocating each name (blocked DNS
/// queries come by tens of thousands a second).
struct AuditLabels {
    profiles: Vec<Arc<str>>,
    categories: Vec<Arc<str>>,
    /// `"<profile>: block <category>"`, profile-major.
    block_rules: Vec<Arc<str>>,
    unknown: Arc<str>,
}

impl AuditLabels {
    fn new(config: &Config) -> Self {
        let profiles: Vec<Arc<str>> = config
            .profiles
            .iter()
            .map(|p| p.name.as_str().into())
            .collect();
        let categories: Vec<Arc<str>> = config
            .categories
            .iter()
            .map(|c| c.id.as_str().into())
            .collect();
        let block_rules = profiles
            .iter()
            .flat_map(|p| {
                categories
                    .iter()
                    .map(move |c| format!("{p}: block {c}").into())
            })
            .collect();
        AuditLabels {
            profiles,
            categories,
            block_rules,
            unknown: "?".into(),
        }
    }
}

impl Snapshot {
    /// Compiles the lists of a validated config. `cache_dir` holds the compiled-list
    /// cache (defaults to `<data_dir>/cache` when the config names a data dir).
    pub fn build(config: Config, cache_dir: Option<&Path>) -> Result<Snapshot, SnapshotError> {
        let started = Instant::now();
        let default_cache = config.data_dir.as_ref().map(|d| d.join("cache"));
        let cache = cache_dir.or(default_cache.as_deref());
        let lists = Lists::compile(&config.sources, cache)?;
        let allow = config
            .profiles
            .iter()
            .map(|p| Overrides::compile(&p.allow))
            .collect();
        let deny = config
            .profiles
            .iter()
            .map(|p| Overrides::compile(&p.deny))
            .collect();
        let labels = AuditLabels::new(&config);
        Ok(Snapshot {
            config,
            lists,
            allow,
            deny,
            grants: Arc::default(),
            version: NEXT_VERSION.fetch_add(1, Ordering::Relaxed),
            built_at: SystemTime::now(),
            build_time: started.elapsed(),
            labels,
        })
    }

    /// Reads the config at `path` (or the embedded default) and builds a snapshot.
    pub fn load(path: Option<&Path>, cache_dir: Option<&Path>) -> Result<Snapshot, SnapshotError> {
        Snapshot::build(config::load(path)?, cache_dir)
    }

    /// Whether `ip` may use vigie at all (never an open resolver or proxy).
    pub fn is_client(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.config.client_networks.iter().any(|n| n.contains(&ip))
    }

    /// The profile for an unidentified client: the most specific network that
    /// contains it, else the default profile.
    pub fn profile_for_ip(&self, ip: IpAddr) -> ProfileId {
        let ip = canonical_ip(ip);
        self.config
            .networks
            .iter()
            .find(|n| n.net.contains(&ip))
            .map(|n| n.profile)
            .unwrap_or(self.config.default_profile)
    }

    /// Exports the sizes of this snapshot's lists (call when it goes into service).
    pub fn publish_metrics(&self) {
        metrics::SNAPSHOT_VERSION.set(self.version as i64);
        let updated = self
            .config
            .lists_set
            .as_deref()
            .and_then(crate::lists::sets::read_manifest)
            .and_then(|m| m.created_at())
            .map_or(0, |t| t.timestamp());
        metrics::LISTS_UPDATED_TIMESTAMP.set(updated);
        metrics::LIST_ENTRIES
            .with_label_values(&["domain"])
            .set(self.lists.domains.len() as i64);
        metrics::LIST_ENTRIES
            .with_label_values(&["url"])
            .set(self.lists.urls.len() as i64);
        metrics::LIST_ENTRIES
            .with_label_values(&["ip"])
            .set(self.lists.ips.len() as i64);
        for s in &self.lists.report.sources {
            // A counter of lines rejected by loads put in service: a list that
            // degrades between updates shows as a rising rate.
            let path = s.path.display().to_string();
            metrics::LIST_BAD_LINES
                .with_label_values(&[path.as_str()])
                .inc_by(s.bad_lines as u64);
        }
    }

    pub fn profile_name(&self, id: ProfileId) -> &str {
        self.config
            .profiles
            .get(id as usize)
            .map(|p| p.name.as_str())
            .unwrap_or("?")
    }

    /// [`Snapshot::profile_name`] as a shared string (for audit events).
    pub fn profile_label(&self, id: ProfileId) -> Arc<str> {
        let l = &self.labels;
        l.profiles.get(id as usize).unwrap_or(&l.unknown).clone()
    }

    /// [`Snapshot::category_name`] as a shared string (for audit events).
    pub fn category_label(&self, id: crate::lists::CategoryId) -> Arc<str> {
        let l = &self.labels;
        l.categories.get(id as usize).unwrap_or(&l.unknown).clone()
    }

    /// The rule text of a profile blocking a category, `"eleves: block gambling"`.
    pub fn block_rule(
        &self,
        profile: ProfileId,
        category: crate::lists::CategoryId,
    ) -> Option<Arc<str>> {
        let l = &self.labels;
        let i = (profile as usize)
            .checked_mul(l.categories.len())?
            .checked_add(category as usize)?;
        (usize::from(category) < l.categories.len())
            .then(|| l.block_rules.get(i).cloned())
            .flatten()
    }

    pub fn category_name(&self, id: crate::lists::CategoryId) -> &str {
        self.config
            .categories
            .get(id as usize)
            .map(|c| c.id.as_str())
            .unwrap_or("?")
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are their IPv4 address: a dual-stack
/// socket must not let a client dodge its network's rules.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Holds the current snapshot; readers never block, a reload is one pointer swap.
pub struct SnapshotStore {
    current: ArcSwap<Snapshot>,
    /// Handed to every snapshot put in service, so grants outlive reloads.
    grants: Arc<ArcSwap<Grants>>,
}

impl SnapshotStore {
    pub fn new(mut snapshot: Snapshot) -> Self {
        snapshot.publish_metrics();
        let grants = snapshot.grants.clone();
        snapshot.grants = grants.clone();
        SnapshotStore {
            current: ArcSwap::from_pointee(snapshot),
            grants,
        }
    }

    /// Puts `grants` in force at once, for every request that starts from now on.
    pub fn set_grants(&self, grants: Grants) {
        self.grants.store(Arc::new(grants));
    }

    pub fn grants(&self) -> Arc<Grants> {
        self.grants.load_full()
    }

    /// The snapshot to use for one request, from start to finish.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Builds a replacement with `build`; on success swaps it in, on failure keeps
    /// the current snapshot and returns the error.
    pub fn reload<E>(
        &self,
        build: impl FnOnce() -> Result<Snapshot, E>,
    ) -> Result<Arc<Snapshot>, E> {
        let mut next = build()?;
        next.grants = self.grants.clone();
        let next = Arc::new(next);
        next.publish_metrics();
        self.current.store(next.clone());
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_prefix_on_segment_boundary() {
        assert!(path_prefix_matches("/foo", "/foo"));
        assert!(path_prefix_matches("/foo", "/foo/bar"));
        assert!(path_prefix_matches("/foo/", "/foo/bar"));
        assert!(path_prefix_matches("/foo", "/foo?x=1"));
        assert!(!path_prefix_matches("/foo", "/foobar"));
        assert!(!path_prefix_matches("/foo", "/fo"));
    }

    #[test]
    fn overrides_match_subdomains_and_url_prefixes() {
        let o = Overrides::compile(&[
            Override::Domain("example.org".into()),
            Override::Url {
                host: "site.com".into(),
                path: "/ok".into(),
            },
        ]);
        assert_eq!(o.find("a.b.example.org", None), Some(0));
        assert_eq!(o.find("notexample.org", None), None);
        assert_eq!(o.find("www.site.com", Some("/ok/page")), Some(1));
        assert_eq!(o.find("site.com", Some("/okay")), None);
        assert_eq!(o.find("site.com", None), None);
    }

    #[test]
    fn audit_labels_say_what_the_rule_text_says() {
        let cfg = config::parse(
            "[[categories]]\nid = \"jeux\"\nfr = \"Jeux\"\nen = \"Games\"\n\
             [profiles.eleves]\nblock = [\"jeux\"]\n[profiles.invites]\n",
            "t.toml",
            Path::new("/"),
        )
        .unwrap();
        let snap = Snapshot::build(cfg, None).unwrap();
        let profiles = snap.config.profiles.len() as ProfileId;
        let categories = snap.config.categories.len() as crate::lists::CategoryId;
        assert!(profiles >= 2 && categories >= 1);
        for p in 0..profiles {
            assert_eq!(&*snap.profile_label(p), snap.profile_name(p));
            for c in 0..categories {
                assert_eq!(&*snap.category_label(c), snap.category_name(c));
                let rule = snap.block_rule(p, c).unwrap();
                let expected = format!("{}: block {}", snap.profile_name(p), snap.category_name(c));
                assert_eq!(&*rule, expected);
            }
            assert_eq!(snap.block_rule(p, categories), None);
        }
        assert_eq!(snap.block_rule(profiles, 0), None);
        assert_eq!(&*snap.profile_label(profiles), "?");
    }

    #[test]
    fn failed_reload_keeps_the_old_snapshot() {
        let cfg = |tz: &str| {
            config::parse(
                &format!("timezone = \"{tz}\"\n[profiles.invites]\n"),
                "t.toml",
                Path::new("/"),
            )
        };
        let store =
            SnapshotStore::new(Snapshot::build(cfg("America/Toronto").unwrap(), None).unwrap());
        let before = store.load();
        let err = store.reload(|| {
            cfg("Mars/Olympus")
                .map_err(SnapshotError::from)
                .and_then(|c| Snapshot::build(c, None))
        });
        assert!(err.is_err());
        assert_eq!(store.load().version, before.version);
        let next = store
            .reload(|| {
                cfg("Europe/Paris")
                    .map_err(SnapshotError::from)
                    .and_then(|c| Snapshot::build(c, None))
            })
            .unwrap();
        assert!(next.version > before.version);
        assert_eq!(store.load().config.timezone, chrono_tz::Europe::Paris);
        // A request that started on the old snapshot still holds it.
        assert_eq!(before.config.timezone, chrono_tz::America::Toronto);
    }

    #[test]
    fn grants_match_scope_host_and_time_and_survive_reloads() {
        let now = chrono::Utc::now();
        let g = |id, scope| Grant {
            id,
            host: "casino.example".into(),
            scope,
            expires: now + chrono::Duration::hours(1),
        };
        let grants = Grants::new(vec![
            g(1, GrantScope::User("mtremblay".into())),
            g(2, GrantScope::Profile("personnel".into())),
        ]);
        assert_eq!(
            grants
                .find("www.casino.example", Some("mtremblay"), "eleves", now)
                .map(|g| g.id),
            Some(1)
        );
        assert_eq!(
            grants
                .find("casino.example", None, "personnel", now)
                .map(|g| g.id),
            Some(2)
        );
        assert!(grants.find("casino.example", None, "eleves", now).is_none());
        assert!(
            grants
                .find("notcasino.example", None, "personnel", now)
                .is_none()
        );
        assert!(
            grants
                .find(
                    "casino.example",
                    None,
                    "personnel",
                    now + chrono::Duration::hours(2)
                )
                .is_none(),
            "expired"
        );
        let cfg = config::parse("[profiles.invites]\n", "t.toml", Path::new("/")).unwrap();
        let store = SnapshotStore::new(Snapshot::build(cfg.clone(), None).unwrap());
        store.set_grants(Grants::new(vec![g(3, GrantScope::Everyone)]));
        assert_eq!(store.load().grants.load().list().len(), 1);
        store.reload(|| Snapshot::build(cfg, None)).unwrap();
        assert_eq!(store.load().grants.load().list()[0].id, 3);
    }

    #[test]
    fn mapped_ipv6_is_ipv4() {
        let ip: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(canonical_ip(ip), "10.1.2.3".parse::<IpAddr>().unwrap());
    }
}
