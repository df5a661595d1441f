//! Who is behind a request. For now the client's IP and the network map give an
//! unidentified client its profile; proxy authentication, the captive portal, LDAP
//! and static user mappings plug in here later. Nothing here decides or records.

use std::net::IpAddr;
use std::sync::Arc;

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

    /// The identity of an unidentified client at `ip`: its network's profile, or the
    /// default (strictest) profile.
    pub fn from_ip(snapshot: &Snapshot, ip: IpAddr) -> Self {
        let ip = crate::snapshot::canonical_ip(ip);
        match snapshot.config.networks.iter().find(|n| n.net.contains(&ip)) {
            Some(n) => Identity::profile(n.profile, IdentitySource::Network),
            None => Identity::profile(snapshot.config.default_profile, IdentitySource::Default),
        }
    }
}
