//! Who is behind a request. For now the client's IP and the network map give an
//! unidentified client its profile; proxy authentication, the captive portal, LDAP
//! and static user mappings plug in here later. Nothing here decides or records.

pub mod ldap;
pub mod limiter;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};

use crate::config::ProfileId;
use crate::snapshot::Snapshot;

/// How an identity was established, most trusted first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// Proxy authentication (Basic, users file or LDAP).
    ProxyAuth,
    /// Captive portal login bound to the client IP.
    Portal,
    /// A static IP/CIDR → user or profile mapping.
    Static,
    /// The network map of the configuration (`[[networks]]`).
    Network,
    /// Nobody knows this client: the default profile.
    Default,
    /// Chosen explicitly by an operator (`vigie check --profile`).
    Operator,
}

/// The person (or at least the profile) behind a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: Option<Arc<str>>,
    pub groups: Vec<Arc<str>>,
    pub profile: ProfileId,
    pub source: IdentitySource,
}

impl Identity {
    /// An anonymous identity with the given profile.
    pub fn profile(profile: ProfileId, source: IdentitySource) -> Self {
        Identity {
            user: None,
            groups: Vec::new(),
            profile,
            source,
        }
    }

    /// The identity of a client at `ip` that nobody logged in: a static mapping of
    /// the config, else its network's profile, else the default (strictest) profile.
    pub fn from_ip(snapshot: &Snapshot, ip: IpAddr) -> Self {
        let ip = crate::snapshot::canonical_ip(ip);
        if let Some(m) = snapshot
            .config
            .mappings
            .iter()
            .find(|m| m.net.contains(&ip))
        {
            return Identity {
                user: m.user.as_deref().map(Arc::from),
                groups: Vec::new(),
                profile: m.profile,
                source: IdentitySource::Static,
            };
        }
        match snapshot
            .config
            .networks
            .iter()
            .find(|n| n.net.contains(&ip))
        {
            Some(n) => Identity::profile(n.profile, IdentitySource::Network),
            None => Identity::profile(snapshot.config.default_profile, IdentitySource::Default),
        }
    }
}

/// A person bound to a client address by a login (proxy authentication, captive
/// portal), until it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub user: Arc<str>,
    pub groups: Vec<Arc<str>>,
    /// By name, not id: ids change when a reload reorders profiles.
    pub profile: Arc<str>,
    pub source: IdentitySource,
    pub since: DateTime<Utc>,
    pub expires: DateTime<Utc>,
}

/// IP → logged-in person, read lock-free on every DNS query and proxy request.
///
/// Logins are rare next to lookups, so writes copy the map (RCU) and reads are one
/// atomic load. Precedence when resolving a client, most trusted first: a live
/// binding (proxy authentication or portal login), a static mapping of the config,
/// the network map, the default profile. Credentials sent with a proxy request are
/// stronger still and are resolved by the proxy before it asks this table.
#[derive(Default)]
pub struct IdentityTable {
    bindings: ArcSwap<HashMap<IpAddr, Arc<Binding>>>,
}

impl IdentityTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds `ip` to a person (replacing any earlier binding of that address).
    pub fn bind(&self, ip: IpAddr, binding: Binding) {
        let ip = crate::snapshot::canonical_ip(ip);
        let binding = Arc::new(binding);
        self.bindings.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(ip, binding.clone());
            m
        });
    }

    /// Ends the binding of `ip` (logout, lease change).
    pub fn unbind(&self, ip: IpAddr) -> Option<Arc<Binding>> {
        let ip = crate::snapshot::canonical_ip(ip);
        let old = self.bindings.load().get(&ip).cloned();
        if old.is_some() {
            self.bindings.rcu(|m| {
                let mut m = HashMap::clone(m);
                m.remove(&ip);
                m
            });
        }
        old
    }

    /// The live binding of `ip` at `now`, if any.
    pub fn get(&self, ip: IpAddr, now: DateTime<Utc>) -> Option<Arc<Binding>> {
        let ip = crate::snapshot::canonical_ip(ip);
        self.bindings
            .load()
            .get(&ip)
            .filter(|b| b.expires > now)
            .cloned()
    }

    /// Drops expired bindings; returns how many.
    pub fn purge_expired(&self, now: DateTime<Utc>) -> usize {
        let expired = self
            .bindings
            .load()
            .values()
            .filter(|b| b.expires <= now)
            .count();
        if expired > 0 {
            self.bindings.rcu(|m| {
                m.iter()
                    .filter(|(_, b)| b.expires > now)
                    .map(|(k, v)| (*k, v.clone()))
                    .collect::<HashMap<_, _>>()
            });
        }
        expired
    }

    pub fn len(&self) -> usize {
        self.bindings.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Who is behind `ip` at `now`, in the documented precedence. A binding whose
    /// profile a reload removed falls back to the default (strictest) profile.
    pub fn resolve(&self, snapshot: &Snapshot, ip: IpAddr, now: DateTime<Utc>) -> Identity {
        match self.get(ip, now) {
            Some(b) => Identity {
                user: Some(b.user.clone()),
                groups: b.groups.clone(),
                profile: snapshot
                    .config
                    .profile_id(&b.profile)
                    .unwrap_or(snapshot.config.default_profile),
                source: b.source,
            },
            None => Identity::from_ip(snapshot, ip),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::path::Path;

    fn snapshot() -> Snapshot {
        let text = r#"
[profiles.eleves]
[profiles.personnel]
[profiles.invites]
[[networks]]
cidr = "10.1.0.0/16"
profile = "eleves"
[[mappings]]
cidr = "10.1.5.9"
user = "imprimante-biblio"
profile = "personnel"
"#;
        let mut cfg =
            config::parse(text, "t.toml", Path::new("/")).unwrap_or_else(|e| panic!("{e}"));
        cfg.sources.clear();
        Snapshot::build(cfg, None).unwrap()
    }

    fn binding(user: &str, profile: &str, now: DateTime<Utc>, minutes: i64) -> Binding {
        Binding {
            user: user.into(),
            groups: vec![],
            profile: profile.into(),
            source: IdentitySource::Portal,
            since: now,
            expires: now + chrono::Duration::minutes(minutes),
        }
    }

    #[test]
    fn precedence_binding_static_network_default() {
        let s = snapshot();
        let t = IdentityTable::new();
        let now = Utc::now();
        let ip = |x: &str| x.parse::<IpAddr>().unwrap();
        let name = |id: &Identity| s.profile_name(id.profile).to_string();
        assert_eq!(name(&t.resolve(&s, ip("10.1.2.3"), now)), "eleves");
        assert_eq!(name(&t.resolve(&s, ip("192.168.0.1"), now)), "invites");
        let printer = t.resolve(&s, ip("10.1.5.9"), now);
        assert_eq!(
            (name(&printer), printer.source),
            ("personnel".into(), IdentitySource::Static)
        );
        assert_eq!(printer.user.as_deref(), Some("imprimante-biblio"));
        t.bind(ip("10.1.2.3"), binding("mtremblay", "personnel", now, 30));
        let id = t.resolve(&s, ip("::ffff:10.1.2.3"), now);
        assert_eq!(id.user.as_deref(), Some("mtremblay"));
        assert_eq!(
            (name(&id), id.source),
            ("personnel".into(), IdentitySource::Portal)
        );
        // Expired: back to the network's profile, and purged.
        let later = now + chrono::Duration::minutes(31);
        assert_eq!(t.resolve(&s, ip("10.1.2.3"), later).user, None);
        assert_eq!(t.purge_expired(later), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn removed_profile_falls_back_to_default_and_unbind_works() {
        let s = snapshot();
        let t = IdentityTable::new();
        let now = Utc::now();
        let ip: IpAddr = "10.1.2.4".parse().unwrap();
        t.bind(ip, binding("x", "ancien-profil", now, 5));
        assert_eq!(s.profile_name(t.resolve(&s, ip, now).profile), "invites");
        assert!(t.unbind(ip).is_some());
        assert_eq!(t.resolve(&s, ip, now).user, None);
    }
}
