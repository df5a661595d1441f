//! Who is behind a request: logins (proxy authentication, the captive portal),
//! checked against the users file and LDAP / Active Directory, bind a client address
//! to a person; static mappings and the network map give everyone else a profile.
//! Nothing here decides what a person may do.

pub mod ldap;
pub mod limiter;
pub mod neigh;
pub mod portal;
pub mod users;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

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

impl IdentitySource {
    /// The name recorded in audit events and shown in traces.
    pub fn label(self) -> &'static str {
        match self {
            IdentitySource::ProxyAuth => "proxy_auth",
            IdentitySource::Portal => "portal",
            IdentitySource::Static => "static",
            IdentitySource::Network => "network",
            IdentitySource::Default => "default",
            IdentitySource::Operator => "operator",
        }
    }
}

/// Where a password was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginDoor {
    /// `Proxy-Authorization` on the explicit proxy.
    Proxy,
    /// The captive portal's form.
    Portal,
}

/// What became of a login attempt, as audited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Accepted; `via` names the backend (`users_file`, `ldap`).
    Success { via: &'static str },
    /// Unknown user or wrong password (never said which).
    Failed,
    /// Refused unchecked: too many failures lately.
    Throttled,
    /// The directory could not be asked.
    Unavailable,
    /// The person signed out.
    Logout,
}

/// The audit event of a login attempt (`service = "auth"`): who tried (the name
/// given, even when wrong — never the password), from where, through which door,
/// and what came of it.
pub fn login_event(
    snapshot: &Snapshot,
    door: LoginDoor,
    client: IpAddr,
    user: &str,
    identity: Option<&Identity>,
    outcome: LoginOutcome,
    started: std::time::Instant,
) -> crate::audit::AuditEvent {
    let (verdict, rule) = match outcome {
        LoginOutcome::Success { via } => ("login", format!("checked by {via}")),
        LoginOutcome::Failed => ("login_failed", "unknown user or wrong password".into()),
        LoginOutcome::Throttled => ("login_throttled", "too many failures lately".into()),
        LoginOutcome::Unavailable => ("login_unavailable", "directory unreachable".into()),
        LoginOutcome::Logout => ("logout", "signed out".into()),
    };
    let (door_name, source) = match door {
        LoginDoor::Proxy => ("proxy", IdentitySource::ProxyAuth),
        LoginDoor::Portal => ("portal", IdentitySource::Portal),
    };
    // A user name is at most 64 safe characters (users::valid_user_name); anything
    // else is recorded cut and marked, so a pasted password cannot fill the log.
    let user = if users::valid_user_name(user) {
        user.to_string()
    } else {
        format!("(invalid name, {} characters)", user.chars().count())
    };
    crate::audit::AuditEvent {
        time: Utc::now(),
        service: "auth",
        client_ip: crate::snapshot::canonical_ip(client),
        user: Some(user),
        identity: source.label(),
        profile: identity
            .map(|id| snapshot.profile_label(id.profile))
            .unwrap_or_default(),
        target: door_name.to_string(),
        qtype: None,
        verdict,
        category: None,
        rule: rule.into(),
        entry: None,
        via: None,
        latency_us: started.elapsed().as_micros() as u64,
        proxy: None,
    }
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
/// portal), until logout, `expires`, or `idle` without any request from the address.
#[derive(Debug)]
pub struct Binding {
    pub user: Arc<str>,
    pub groups: Vec<Arc<str>>,
    /// By name, not id: ids change when a reload reorders profiles. `None`: the
    /// profile of the client's network (a users-file login says who, not which profile).
    pub profile: Option<Arc<str>>,
    pub source: IdentitySource,
    pub since: DateTime<Utc>,
    /// The latest end, whatever the activity.
    pub expires: DateTime<Utc>,
    /// Ends after this long without a request from the address.
    pub idle: Option<Duration>,
    /// Last request seen from the address, ms since the epoch.
    last_seen_ms: AtomicI64,
    /// The device (link-layer address) the login came from, when the gateway's
    /// neighbour table knew it: another device on the address ends the login.
    pub device: Option<String>,
}

impl Binding {
    pub fn new(
        user: Arc<str>,
        groups: Vec<Arc<str>>,
        profile: Option<Arc<str>>,
        source: IdentitySource,
        now: DateTime<Utc>,
        max: Duration,
        idle: Option<Duration>,
    ) -> Self {
        Binding {
            user,
            groups,
            profile,
            source,
            since: now,
            expires: later(now, max),
            idle,
            last_seen_ms: AtomicI64::new(now.timestamp_millis()),
            device: None,
        }
    }

    /// The same binding, remembering the device behind `ip` now (if known).
    pub fn on_device_of(mut self, ip: IpAddr, neighbours: &neigh::Neighbours) -> Self {
        self.device = neighbours.get(&crate::snapshot::canonical_ip(ip)).cloned();
        self
    }

    /// Whether the login still holds at `now`.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.expires > now
            && self.idle.is_none_or(|idle| {
                let last = self.last_seen_ms.load(Ordering::Relaxed);
                last.saturating_add(idle.as_millis() as i64) > now.timestamp_millis()
            })
    }

    /// Activity from the address: pushes the idle end back. One relaxed atomic.
    pub fn touch(&self, now: DateTime<Utc>) {
        self.last_seen_ms
            .fetch_max(now.timestamp_millis(), Ordering::Relaxed);
    }

    /// When the login ends if nothing more happens.
    pub fn ends(&self) -> DateTime<Utc> {
        match self.idle {
            Some(idle) => {
                let last =
                    DateTime::from_timestamp_millis(self.last_seen_ms.load(Ordering::Relaxed))
                        .unwrap_or(self.since);
                later(last, idle).min(self.expires)
            }
            None => self.expires,
        }
    }
}

/// `t + d`, saturating instead of overflowing.
fn later(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
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
            .filter(|b| b.is_live(now))
            .cloned()
    }

    /// Drops the bindings that ended by `now` (idle, end of session) and returns
    /// them, for the record.
    pub fn purge_expired(&self, now: DateTime<Utc>) -> Vec<(IpAddr, Arc<Binding>)> {
        let expired: Vec<(IpAddr, Arc<Binding>)> = self
            .bindings
            .load()
            .iter()
            .filter(|(_, b)| !b.is_live(now))
            .map(|(ip, b)| (*ip, b.clone()))
            .collect();
        if !expired.is_empty() {
            self.bindings.rcu(|m| {
                m.iter()
                    .filter(|(_, b)| b.is_live(now))
                    .map(|(k, v)| (*k, v.clone()))
                    .collect::<HashMap<_, _>>()
            });
        }
        expired
    }

    /// Ends the logins whose address another device now holds (a DHCP lease that
    /// changed hands), per the gateway's `neighbours`; returns them, for the record.
    /// An address the table does not list is left alone (entries age out while a
    /// device sleeps).
    pub fn end_moved(&self, neighbours: &neigh::Neighbours) -> Vec<(IpAddr, Arc<Binding>)> {
        let moved: Vec<(IpAddr, Arc<Binding>)> = self
            .bindings
            .load()
            .iter()
            .filter(|(ip, b)| {
                matches!((&b.device, neighbours.get(ip)), (Some(was), Some(now)) if was != now)
            })
            .map(|(ip, b)| (*ip, b.clone()))
            .collect();
        for (ip, _) in &moved {
            self.unbind(*ip);
        }
        moved
    }

    pub fn len(&self) -> usize {
        self.bindings.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Who is behind `ip` at `now`, in the documented precedence; counts as activity
    /// of a login (its idle time starts again). A binding without a profile of its
    /// own takes the one its address would have; one whose profile a reload removed
    /// falls back to the default (strictest) profile.
    pub fn resolve(&self, snapshot: &Snapshot, ip: IpAddr, now: DateTime<Utc>) -> Identity {
        match self.get(ip, now) {
            Some(b) => {
                b.touch(now);
                let profile = match &b.profile {
                    Some(p) => snapshot
                        .config
                        .profile_id(p)
                        .unwrap_or(snapshot.config.default_profile),
                    None => Identity::from_ip(snapshot, ip).profile,
                };
                Identity {
                    user: Some(b.user.clone()),
                    groups: b.groups.clone(),
                    profile,
                    source: b.source,
                }
            }
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

    fn binding(user: &str, profile: &str, now: DateTime<Utc>, minutes: u64) -> Binding {
        Binding::new(
            user.into(),
            vec![],
            Some(profile.into()),
            IdentitySource::Portal,
            now,
            Duration::from_secs(minutes * 60),
            None,
        )
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
        assert_eq!(t.purge_expired(later).len(), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn a_lease_given_to_another_device_ends_the_login() {
        let s = snapshot();
        let t = IdentityTable::new();
        let now = Utc::now();
        let ip: IpAddr = "10.1.2.5".parse().unwrap();
        let other: IpAddr = "10.1.2.6".parse().unwrap();
        let table: neigh::Neighbours = [
            (ip, "02:00:00:00:00:01".to_string()),
            (other, "02:00:00:00:00:09".to_string()),
        ]
        .into();
        t.bind(
            ip,
            binding("eleve1", "eleves", now, 30).on_device_of(ip, &table),
        );
        // Unknown device at login: never ended by the table.
        t.bind(other, binding("eleve2", "eleves", now, 30));
        assert!(t.end_moved(&table).is_empty(), "same devices: nothing ends");
        assert!(
            t.end_moved(&neigh::Neighbours::new()).is_empty(),
            "aged-out entries: nothing ends"
        );
        let moved: neigh::Neighbours = [
            (ip, "02:00:00:00:00:02".to_string()),
            (other, "02:00:00:00:00:03".to_string()),
        ]
        .into();
        let ended = t.end_moved(&moved);
        assert_eq!(ended.len(), 1);
        assert_eq!(&*ended[0].1.user, "eleve1");
        assert_eq!(t.resolve(&s, ip, now).user, None);
        assert_eq!(t.resolve(&s, other, now).user.as_deref(), Some("eleve2"));
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
