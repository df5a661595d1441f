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

static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

/// Config + compiled lists, immutable once built.
pub struct Snapshot {
    pub config: Config,
    pub lists: Lists,
    /// Per profile, same order as `config.profiles`.
    pub allow: Vec<Overrides>,
    pub deny: Vec<Overrides>,
    /// Increases with every snapshot built by this process.
    pub version: u64,
    pub built_at: SystemTime,
    pub build_time: Duration,
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
        Ok(Snapshot {
            config,
            lists,
            allow,
            deny,
            version: NEXT_VERSION.fetch_add(1, Ordering::Relaxed),
            built_at: SystemTime::now(),
            build_time: started.elapsed(),
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
}

impl SnapshotStore {
    pub fn new(snapshot: Snapshot) -> Self {
        snapshot.publish_metrics();
        SnapshotStore {
            current: ArcSwap::from_pointee(snapshot),
        }
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
        let next = Arc::new(build()?);
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
    fn mapped_ipv6_is_ipv4() {
        let ip: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(canonical_ip(ip), "10.1.2.3".parse::<IpAddr>().unwrap());
    }
}
