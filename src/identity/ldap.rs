//! LDAP / Active Directory authentication: checks a login by binding as the user
//! (ldaps or StartTLS), reads the user's groups and maps them to a profile.
//!
//! Connections are pooled (a bind only changes who a connection speaks for), the
//! number of binds in flight is bounded, and successful logins are remembered for a
//! short time so a proxy that authenticates every request does not bind every
//! request. The cache keeps a keyed hash of the password, never the password. This
//! module answers "is this person who they say, and which profile are they?"; it
//! does not bind IPs (the identity table) nor rate-limit attempts (callers do).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry, dn_escape, ldap_escape};
use tokio::sync::Semaphore;

use crate::config::LdapSettings;

/// Most binds in flight at once; beyond, logins wait their turn.
const MAX_IN_FLIGHT: usize = 8;
/// Idle connections kept for reuse.
const POOL_SIZE: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    /// Wrong user or password: the only answer a person gets, whichever it was.
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("LDAP server {url}: {message}")]
    Server { url: String, message: String },
    #[error("LDAP service account password file {path}: {message}")]
    BindPassword { path: String, message: String },
}

/// A person LDAP vouched for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LdapIdentity {
    pub user: String,
    pub dn: String,
    /// Group DNs, lowercased.
    pub groups: Vec<String>,
    /// The profile of the first configured group the person is in.
    pub profile: Option<String>,
}

struct Cached {
    password_tag: ring::hmac::Tag,
    identity: LdapIdentity,
    until: Instant,
}

pub struct LdapAuthenticator {
    settings: LdapSettings,
    pool: Mutex<Vec<Ldap>>,
    in_flight: Semaphore,
    cache: Mutex<HashMap<String, Cached>>,
    /// Random per process: the cache's password tags mean nothing outside it.
    cache_key: ring::hmac::Key,
    /// The TLS client for `ca_file`, built on the first connection that needs it
    /// (reading the system's roots is file I/O, not for every connection). A
    /// reload builds a new authenticator, so a fixed `ca_file` is read again.
    tls: std::sync::OnceLock<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
}

impl LdapAuthenticator {
    pub fn new(settings: LdapSettings) -> Result<Self, LdapError> {
        let rng = ring::rand::SystemRandom::new();
        let cache_key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).map_err(|_| {
            LdapError::Server {
                url: settings.url.clone(),
                message: "no system randomness for the login cache".into(),
            }
        })?;
        Ok(LdapAuthenticator {
            settings,
            pool: Mutex::new(Vec::new()),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            cache: Mutex::new(HashMap::new()),
            cache_key,
            tls: std::sync::OnceLock::new(),
        })
    }

    fn server_err(&self, e: impl std::fmt::Display) -> LdapError {
        LdapError::Server {
            url: self.settings.url.clone(),
            message: e.to_string(),
        }
    }

    /// Checks `user`/`password`; on success returns who they are and their profile.
    pub async fn authenticate(
        &self,
        user: &str,
        password: &str,
    ) -> Result<LdapIdentity, LdapError> {
        // An empty password is an anonymous bind that LDAP servers accept: never a login.
        if user.is_empty() || password.is_empty() {
            return Err(LdapError::InvalidCredentials);
        }
        let tag = ring::hmac::sign(&self.cache_key, password.as_bytes());
        if let Some(hit) = self.cached(user, &tag) {
            return Ok(hit);
        }
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|e| self.server_err(e))?;
        let mut conn = self.connection().await?;
        let result =
            tokio::time::timeout(self.settings.timeout, self.check(&mut conn, user, password))
                .await
                .unwrap_or_else(|_| Err(self.server_err("timed out")));
        match &result {
            // The connection is healthy whatever the verdict on the password.
            Ok(_) | Err(LdapError::InvalidCredentials) => self.give_back(conn),
            Err(_) => drop(conn),
        }
        let identity = result?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|_, c| c.until > Instant::now());
            cache.insert(
                user.to_string(),
                Cached {
                    password_tag: tag,
                    identity: identity.clone(),
                    until: Instant::now() + self.settings.cache_ttl,
                },
            );
        }
        Ok(identity)
    }

    fn cached(&self, user: &str, tag: &ring::hmac::Tag) -> Option<LdapIdentity> {
        let cache = self.cache.lock().ok()?;
        let c = cache.get(user)?;
        // Constant-time comparison of the keyed hashes.
        let same = constant_time_eq(c.password_tag.as_ref(), tag.as_ref());
        (same && c.until > Instant::now()).then(|| c.identity.clone())
    }

    async fn connection(&self) -> Result<Ldap, LdapError> {
        if let Some(conn) = self.pool.lock().ok().and_then(|mut p| p.pop()) {
            return Ok(conn);
        }
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.settings.timeout)
            .set_starttls(self.settings.starttls);
        if let Some(ca) = &self.settings.ca_file {
            settings = settings.set_config(self.tls_config(ca)?);
        }
        let (driver, ldap) = LdapConnAsync::with_settings(settings, &self.settings.url)
            .await
            .map_err(|e| self.server_err(e))?;
        let url = self.settings.url.clone();
        tokio::spawn(async move {
            if let Err(e) = driver.drive().await {
                tracing::debug!("LDAP connection to {url} closed: {e}");
            }
        });
        Ok(ldap)
    }

    /// A TLS client trusting the certificates of `ca` (a school's own CA) beside
    /// the system's roots.
    fn tls_config(
        &self,
        ca: &std::path::Path,
    ) -> Result<std::sync::Arc<tokio_rustls::rustls::ClientConfig>, LdapError> {
        if let Some(config) = self.tls.get() {
            return Ok(config.clone());
        }
        let config = crate::tls_roots::client_config(Some(ca), "ldap.ca_file")
            .map(std::sync::Arc::new)
            .map_err(|e| self.server_err(e))?;
        Ok(self.tls.get_or_init(|| config).clone())
    }

    fn give_back(&self, conn: Ldap) {
        if let Ok(mut pool) = self.pool.lock()
            && pool.len() < POOL_SIZE
        {
            pool.push(conn);
        }
    }

    async fn check(
        &self,
        ldap: &mut Ldap,
        user: &str,
        password: &str,
    ) -> Result<LdapIdentity, LdapError> {
        let s = &self.settings;
        let dn = match &s.user_dn {
            Some(template) => template.replace("{user}", &dn_escape(user)),
            None => self.find_dn(ldap, user).await?,
        };
        let bind = ldap
            .simple_bind(&dn, password)
            .await
            .map_err(|e| self.server_err(e))?;
        match bind.rc {
            0 => {}
            // invalidCredentials, and "no such object" for an unknown user DN.
            49 | 32 => return Err(LdapError::InvalidCredentials),
            rc => {
                return Err(
                    self.server_err(format!("bind failed (result code {rc}: {})", bind.text))
                );
            }
        }
        let groups = self.groups(ldap, &dn).await?;
        let profile = s
            .groups
            .iter()
            .find(|(g, _)| groups.iter().any(|m| m == g))
            .map(|(_, p)| p.clone());
        Ok(LdapIdentity {
            user: user.to_string(),
            dn,
            groups,
            profile,
        })
    }

    /// Finds a user's DN with the service account (`base_dn` + `user_filter`).
    async fn find_dn(&self, ldap: &mut Ldap, user: &str) -> Result<String, LdapError> {
        let s = &self.settings;
        if let Some(bind_dn) = &s.bind_dn {
            let password = match &s.bind_password_file {
                Some(path) => std::fs::read_to_string(path)
                    .map(|p| p.trim_end_matches(['\n', '\r']).to_string())
                    .map_err(|e| LdapError::BindPassword {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })?,
                None => String::new(),
            };
            let r = ldap
                .simple_bind(bind_dn, &password)
                .await
                .map_err(|e| self.server_err(e))?;
            if r.rc != 0 {
                return Err(self.server_err(format!(
                    "service account bind failed (result code {}: {})",
                    r.rc, r.text
                )));
            }
        }
        let base = s.base_dn.as_deref().unwrap_or("");
        let filter = s.user_filter.replace("{user}", &ldap_escape(user));
        let (entries, _) = ldap
            .search(base, Scope::Subtree, &filter, vec!["1.1"])
            .await
            .and_then(|r| r.success())
            .map_err(|e| self.server_err(e))?;
        match entries.len() {
            1 => Ok(SearchEntry::construct(
                entries
                    .into_iter()
                    .next()
                    .ok_or(LdapError::InvalidCredentials)?,
            )
            .dn),
            0 => Err(LdapError::InvalidCredentials),
            n => Err(self.server_err(format!("{n} entries match {filter}: ambiguous login"))),
        }
    }

    /// Group DNs the user is a member of (lowercased), searched as the user.
    async fn groups(&self, ldap: &mut Ldap, dn: &str) -> Result<Vec<String>, LdapError> {
        let s = &self.settings;
        let Some(base) = s.group_base.as_deref().or(s.base_dn.as_deref()) else {
            return Ok(Vec::new());
        };
        let filter = s.group_filter.replace("{dn}", &ldap_escape(dn));
        let (entries, _) = ldap
            .search(base, Scope::Subtree, &filter, vec!["1.1"])
            .await
            .and_then(|r| r.success())
            .map_err(|e| self.server_err(e))?;
        Ok(entries
            .into_iter()
            .map(|e| SearchEntry::construct(e).dn.to_ascii_lowercase())
            .collect())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
