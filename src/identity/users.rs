//! The local users file (one `name:argon2-hash` per line, written by `vigie users`)
//! and the password check every login door uses: proxy authentication (Basic
//! `Proxy-Authorization`) and the captive portal, against that file and then
//! LDAP / Active Directory when configured.
//!
//! argon2 is deliberately slow (tens of milliseconds), so a verified credential is
//! remembered (keyed by a hash of name and password, never the password itself) and
//! verification runs on the blocking pool, not on a proxy worker. The file is
//! re-read when it changes. This module says who someone is; it does not decide what
//! they may do.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;

use crate::identity::limiter::LoginLimiter;
use password_hash::rand_core::OsRng;

/// How long a verified credential is trusted without re-running argon2.
const VERIFIED_TTL: Duration = Duration::from_secs(600);
/// How often the users file's modification time is looked at.
const RECHECK_EVERY: Duration = Duration::from_secs(2);
/// Failed attempts a user name or a client address may make per
/// [`FAILURE_WINDOW`] before its credentials are refused without being checked
/// (`identity::limiter`, shared with the other login doors): guessing passwords, or
/// burning the gateway's CPU on argon2, stops there.
const MAX_FAILURES: u32 = 20;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read users file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {why}")]
    Parse {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("cannot write users file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid user name \"{0}\": use letters, digits, '.', '_', '-' or '@' (at most 64)")]
    BadName(String),
    #[error("invalid profile name \"{0}\": use letters, digits, '_' or '-'")]
    BadProfile(String),
    #[error("user \"{0}\" already exists (use `vigie users passwd`)")]
    Exists(String),
    #[error("no user \"{0}\"")]
    NoSuchUser(String),
    #[error("the password must not be empty")]
    EmptyPassword,
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

/// An argon2id PHC string for `password`, with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    if password.is_empty() {
        return Err(AuthError::EmptyPassword);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// The hash an unknown user name's password is checked against: a random
/// password's, made by [`hash_password`] (the parameters of every hash `vigie
/// users` writes), once per process.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let secret = SaltString::generate(&mut OsRng);
        hash_password(secret.as_str()).unwrap_or_default()
    })
}

/// One line of the users file: `name:argon2-hash[:profile]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    /// An argon2 PHC string (`$argon2id$v=19$…`), which never contains `:`.
    pub hash: String,
    /// The profile this person gets wherever they log in; `None`: the network's.
    pub profile: Option<String>,
}

fn valid_profile_name(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 64
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
}

/// The users of a file, in file order. A missing file is an empty one.
pub fn read_users(path: &Path) -> Result<Vec<UserEntry>, AuthError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(AuthError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| AuthError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            why: why.to_string(),
        };
        let (name, rest) = line
            .split_once(':')
            .ok_or_else(|| bad("expected name:hash[:profile]"))?;
        if !valid_user_name(name) {
            return Err(bad("invalid user name"));
        }
        let (hash, profile) = match rest.split_once(':') {
            Some((h, p)) if valid_profile_name(p) => (h, Some(p.to_string())),
            Some(_) => return Err(bad("invalid profile name after the hash")),
            None => (rest, None),
        };
        PasswordHash::new(hash)
            .map_err(|_| bad("not an argon2 hash (write users with `vigie users add`)"))?;
        out.push(UserEntry {
            name: name.to_string(),
            hash: hash.to_string(),
            profile,
        });
    }
    Ok(out)
}

/// Replaces the file atomically (write beside, then rename), readable by its owner only.
pub fn write_users(path: &Path, users: &[UserEntry]) -> Result<(), AuthError> {
    let werr = |source| AuthError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(werr)?;
    }
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(werr)?;
    writeln!(
        f,
        "# vigie users: name:argon2id hash[:profile]. Edit with `vigie users add|passwd|del`."
    )
    .map_err(werr)?;
    for u in users {
        match &u.profile {
            Some(p) => writeln!(f, "{}:{}:{p}", u.name, u.hash),
            None => writeln!(f, "{}:{}", u.name, u.hash),
        }
        .map_err(werr)?;
    }
    f.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)
}

/// Adds (`create`) a user, or changes (`!create`) a user's password. `profile`:
/// the profile to give them (on a change, `None` keeps the one they have).
pub fn set_password(
    path: &Path,
    name: &str,
    password: &str,
    create: bool,
    profile: Option<&str>,
) -> Result<(), AuthError> {
    if !valid_user_name(name) {
        return Err(AuthError::BadName(name.to_string()));
    }
    if let Some(p) = profile
        && !valid_profile_name(p)
    {
        return Err(AuthError::BadProfile(p.to_string()));
    }
    let mut users = read_users(path)?;
    let hash = hash_password(password)?;
    match (users.iter_mut().find(|u| u.name == name), create) {
        (Some(_), true) => return Err(AuthError::Exists(name.to_string())),
        (Some(entry), false) => {
            entry.hash = hash;
            if let Some(p) = profile {
                entry.profile = Some(p.to_string());
            }
        }
        (None, true) => users.push(UserEntry {
            name: name.to_string(),
            hash,
            profile: profile.map(str::to_string),
        }),
        (None, false) => return Err(AuthError::NoSuchUser(name.to_string())),
    }
    write_users(path, &users)
}

pub fn delete_user(path: &Path, name: &str) -> Result<(), AuthError> {
    let mut users = read_users(path)?;
    let before = users.len();
    users.retain(|u| u.name != name);
    if users.len() == before {
        return Err(AuthError::NoSuchUser(name.to_string()));
    }
    write_users(path, &users)
}

/// Someone whose password checked out, and what the check told about them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub user: Arc<str>,
    /// Directory groups (LDAP group DNs, lowercased); empty for the users file.
    pub groups: Vec<Arc<str>>,
    /// The profile the directory maps the person to; `None`: the network's.
    pub profile: Option<Arc<str>>,
    /// Which backend vouched: `users_file` or `ldap`.
    pub via: &'static str,
    /// For the users file, which version of the person's entry vouched (see
    /// [`Authenticator::stamp`]): a session opened with it ends when the entry
    /// changes or goes.
    pub stamp: Option<u64>,
}

/// A users-file entry's version: its argon2 hash's, which a new password changes.
fn stamp_of(hash: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(hash.as_bytes())
}

/// The result of checking a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// A known user with the right password.
    Valid(Arc<Verified>),
    /// Malformed, unknown user or wrong password.
    Invalid,
    /// Too many failures for this user or from this client lately: not even checked.
    Throttled,
    /// The directory could not be asked (LDAP down): neither yes nor no.
    Unavailable,
}

/// A user of the file as kept in memory: argon2 hash, profile.
type UserRecord = (String, Option<Arc<str>>);

/// Checks passwords: the users file first, then LDAP / Active Directory when
/// configured, for every door a password comes through (proxy authentication, the
/// captive portal). The users file is re-read when it changes.
pub struct Authenticator {
    path: Option<PathBuf>,
    users: ArcSwap<HashMap<String, UserRecord>>,
    seen: Mutex<(Instant, Option<SystemTime>)>,
    verified: moka::sync::Cache<u128, Arc<Verified>>,
    limiter: LoginLimiter,
    /// The directory, swapped when a reload changes `[ldap]` (see `sync_ldap`).
    ldap: arc_swap::ArcSwapOption<crate::identity::ldap::LdapAuthenticator>,
    /// The `[ldap]` settings `ldap` was built from, to notice a change.
    ldap_settings: Mutex<String>,
    /// Passwords checked with argon2 so far (see [`Authenticator::argon2_runs`]).
    argon2_runs: AtomicU64,
}

impl Authenticator {
    /// `path` None and no `ldap`: nobody can authenticate (every credential is invalid).
    pub fn new(
        path: Option<PathBuf>,
        ldap: Option<crate::identity::ldap::LdapAuthenticator>,
    ) -> Authenticator {
        let a = Authenticator {
            path,
            users: ArcSwap::from_pointee(HashMap::new()),
            seen: Mutex::new((Instant::now(), None)),
            verified: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(VERIFIED_TTL)
                .build(),
            limiter: LoginLimiter::new(MAX_FAILURES, FAILURE_WINDOW),
            ldap: arc_swap::ArcSwapOption::from(ldap.map(Arc::new)),
            ldap_settings: Mutex::new(String::new()),
            argon2_runs: AtomicU64::new(0),
        };
        a.reload();
        a
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn user_count(&self) -> usize {
        self.users.load().len()
    }

    /// The current version of `user`'s entry in the users file (`None`: not in
    /// it any more), read after a look at the file's modification time, so a
    /// password change or a deletion by `vigie users` shows at once.
    pub fn stamp(&self, user: &str) -> Option<u64> {
        self.reload_if_changed(true);
        self.users.load().get(user).map(|(hash, _)| stamp_of(hash))
    }

    /// Whether the users file gives someone `profile`: that profile then follows
    /// them to whichever network they log in from.
    pub fn gives_profile(&self, profile: &str) -> bool {
        self.users
            .load()
            .values()
            .any(|(_, p)| p.as_deref() == Some(profile))
    }

    /// Whether anyone can log in at all (a users file with users, or a directory).
    pub fn has_backend(&self) -> bool {
        self.ldap.load().is_some() || self.user_count() > 0
    }

    fn reload(&self) {
        let Some(path) = &self.path else { return };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        match read_users(path) {
            Ok(list) => {
                self.users.store(Arc::new(
                    list.into_iter()
                        .map(|u| (u.name, (u.hash, u.profile.map(|p| Arc::from(p.as_str())))))
                        .collect(),
                ));
                self.verified.invalidate_all();
            }
            // A broken file keeps the previous users: a typo must not lock a school out.
            Err(e) => tracing::error!("users file not reloaded: {e}"),
        }
        if let Ok(mut seen) = self.seen.lock() {
            *seen = (Instant::now(), mtime);
        }
    }

    /// Re-reads the file if its modification time changed; looks at most every
    /// [`RECHECK_EVERY`] unless `now` (an unknown user: maybe just added).
    fn reload_if_changed(&self, now: bool) {
        let Some(path) = &self.path else { return };
        let stale = match self.seen.lock() {
            Ok(mut seen) if now || seen.0.elapsed() >= RECHECK_EVERY => {
                seen.0 = Instant::now();
                let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                mtime != seen.1
            }
            _ => false,
        };
        if stale {
            self.reload();
        }
    }

    /// Follows the configuration's `[ldap]` settings: a reload that adds, changes or
    /// removes the directory takes effect here (the running process picks it up on
    /// its next upkeep). `initial`: the settings the authenticator was built with.
    pub fn sync_ldap(&self, settings: Option<&crate::config::LdapSettings>, initial: bool) {
        let key = format!("{settings:?}");
        let mut seen = self.ldap_settings.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == key {
            return;
        }
        *seen = key;
        if initial {
            return;
        }
        let next = settings.cloned().and_then(|s| {
            crate::identity::ldap::LdapAuthenticator::new(s)
                .map_err(|e| tracing::error!("LDAP logins unavailable: {e}"))
                .ok()
        });
        tracing::info!(
            enabled = next.is_some(),
            "LDAP settings changed: directory reconnected"
        );
        self.ldap.store(next.map(Arc::new));
        self.verified.invalidate_all();
    }

    /// Whether `password` matches the argon2 `hash`, on the blocking pool.
    async fn argon2(&self, hash: String, password: &str) -> bool {
        self.argon2_runs.fetch_add(1, Ordering::Relaxed);
        let password = password.to_string();
        tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false)
    }

    /// How many passwords went through argon2 (known names and unknown ones alike).
    pub fn argon2_runs(&self) -> u64 {
        self.argon2_runs.load(Ordering::Relaxed)
    }

    /// Checks a `Proxy-Authorization` value sent by `client`.
    pub async fn check(self: &Arc<Self>, client: std::net::IpAddr, header: &[u8]) -> Credentials {
        match parse_basic(header) {
            Some((user, password)) => self.verify(client, &user, &password).await,
            None => Credentials::Invalid,
        }
    }

    /// Checks `user`'s `password`, sent by `client`.
    ///
    /// A credential verified lately is accepted from the cache before the limiter is
    /// asked: someone guessing a teacher's password must not cut off the teacher's
    /// browser, which proved it already.
    pub async fn verify(
        self: &Arc<Self>,
        client: std::net::IpAddr,
        user: &str,
        password: &str,
    ) -> Credentials {
        self.reload_if_changed(false);
        if !valid_user_name(user) {
            return Credentials::Invalid;
        }
        let key =
            xxhash_rust::xxh3::xxh3_128(&[user.as_bytes(), b"\0", password.as_bytes()].concat());
        if let Some(v) = self.verified.get(&key) {
            return Credentials::Valid(v);
        }
        // Counted before argon2 runs, so parallel attempts cannot all slip past
        // the limit while the first ones are being checked.
        let Ok(attempt) = self.limiter.begin(user, client, Instant::now()) else {
            return Credentials::Throttled;
        };
        if !self.users.load().contains_key(user) {
            // A stat, not a read: cheap enough to do for every unknown name.
            self.reload_if_changed(true);
        }
        let entry = self.users.load().get(user).cloned();
        let verdict = match entry {
            Some((hash, profile)) => {
                let stamp = stamp_of(&hash);
                let ok = self.argon2(hash, password).await;
                ok.then(|| Verified {
                    user: Arc::from(user),
                    groups: Vec::new(),
                    profile,
                    via: "users_file",
                    stamp: Some(stamp),
                })
                .ok_or(Credentials::Invalid)
            }
            None => match self.ldap.load_full() {
                Some(ldap) => match ldap.authenticate(user, password).await {
                    Ok(id) => Ok(Verified {
                        user: Arc::from(user),
                        groups: id.groups.iter().map(|g| Arc::from(g.as_str())).collect(),
                        profile: id.profile.as_deref().map(Arc::from),
                        via: "ldap",
                        stamp: None,
                    }),
                    Err(crate::identity::ldap::LdapError::InvalidCredentials) => {
                        Err(Credentials::Invalid)
                    }
                    Err(e) => {
                        tracing::error!("login of {user:?} not checked: {e}");
                        // Not counted as a failure: the person did nothing wrong.
                        self.limiter.forgive(attempt);
                        return Credentials::Unavailable;
                    }
                },
                None => {
                    // As slow as a known name's check, so the answer's time does not
                    // tell which names exist.
                    self.argon2(dummy_hash().to_string(), password).await;
                    Err(Credentials::Invalid)
                }
            },
        };
        match verdict {
            Ok(v) => {
                self.limiter.success(attempt);
                let v = Arc::new(v);
                self.verified.insert(key, v.clone());
                Credentials::Valid(v)
            }
            // Already counted by `begin`.
            Err(c) => c,
        }
    }
}

/// `Basic base64(user:password)` → (user, password).
pub fn parse_basic(header: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, b64) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (user, password) = raw.split_once(':')?;
    if !valid_user_name(user) {
        return None;
    }
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_adding_or_removing_ldap_takes_effect() {
        let cfg = crate::config::parse(
            "[profiles.invites]\n[ldap]\nurl = \"ldap://127.0.0.1:389\"\nuser_dn = \"uid={user}\"\n",
            "t.toml",
            Path::new("/"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let auth = Authenticator::new(None, None);
        auth.sync_ldap(None, true);
        assert!(!auth.has_backend());
        auth.sync_ldap(cfg.ldap.as_ref(), false);
        assert!(auth.has_backend(), "[ldap] added by a reload");
        auth.sync_ldap(None, false);
        assert!(!auth.has_backend(), "[ldap] removed by a reload");
    }

    #[test]
    fn basic_header_parses() {
        let h = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et")
        );
        assert_eq!(
            parse_basic(h.as_bytes()),
            Some(("alice".into(), "s3cr:et".into()))
        );
        assert_eq!(parse_basic(b"Bearer abc"), None);
        assert_eq!(parse_basic(b"Basic !!!"), None);
    }

    #[tokio::test]
    async fn an_unknown_name_costs_an_argon2_run_like_a_known_one() {
        let dir = tempfile::tempdir().unwrap();
        let auth = file_of(dir.path(), &["prof"]);
        let ip: std::net::IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(auth.verify(ip, "prof", "wrong").await, Credentials::Invalid);
        assert_eq!(auth.argon2_runs(), 1);
        assert_eq!(
            auth.verify(ip, "nobody", "wrong").await,
            Credentials::Invalid
        );
        assert_eq!(
            auth.argon2_runs(),
            2,
            "the unknown name went through argon2"
        );
        // Against a hash of the same parameters as the file's.
        let known = PasswordHash::new(&auth.users.load()["prof"].0)
            .unwrap()
            .params
            .to_string();
        assert_eq!(
            PasswordHash::new(dummy_hash()).unwrap().params.to_string(),
            known
        );
    }

    /// An authenticator over a users file of `users` (all with password "pw").
    fn file_of(dir: &Path, users: &[&str]) -> Arc<Authenticator> {
        let path = dir.join("users");
        for u in users {
            set_password(&path, u, "pw", true, None).unwrap();
        }
        Arc::new(Authenticator::new(Some(path), None))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parallel_guesses_are_counted_before_argon2_answers() {
        let dir = tempfile::tempdir().unwrap();
        let auth = file_of(dir.path(), &["prof"]);
        let ip: std::net::IpAddr = "10.0.0.9".parse().unwrap();
        let all = futures_util::future::join_all((0..100).map(|i| {
            let auth = auth.clone();
            async move { auth.verify(ip, "prof", &format!("guess{i}")).await }
        }))
        .await;
        let checked = all.iter().filter(|c| **c != Credentials::Throttled).count();
        assert!(
            checked <= MAX_FAILURES as usize,
            "{checked} of 100 parallel guesses were checked"
        );
        assert!(
            all.iter()
                .all(|c| matches!(c, Credentials::Invalid | Credentials::Throttled))
        );
    }

    #[tokio::test]
    async fn a_valid_login_between_guesses_does_not_reset_the_address() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..40).map(|i| format!("prof{i}")).collect();
        let mut users: Vec<&str> = names.iter().map(String::as_str).collect();
        users.push("eleve");
        let auth = file_of(dir.path(), &users);
        let ip: std::net::IpAddr = "10.0.0.9".parse().unwrap();
        let mut checked = 0;
        // 19 guesses at teachers' passwords, then the student's own good login
        // (a new password each time, so never from the cache), and again.
        let mut n = 0;
        for round in 0..3 {
            for _ in 0..19 {
                let c = auth.verify(ip, &names[n % names.len()], "guess").await;
                n += 1;
                if c != Credentials::Throttled {
                    checked += 1;
                }
            }
            let own = format!("pw{round}");
            set_password(&dir.path().join("users"), "eleve", &own, false, None).unwrap();
            auth.reload();
            let _ = auth.verify(ip, "eleve", &own).await;
        }
        assert_eq!(
            checked, MAX_FAILURES,
            "the address locks after its 20th guess"
        );
    }

    #[tokio::test]
    async fn users_file_round_trip_and_verification() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        set_password(&path, "alice", "correct horse", true, None).unwrap();
        assert!(matches!(
            set_password(&path, "alice", "x", true, None),
            Err(AuthError::Exists(_))
        ));
        set_password(&path, "bob", "pw", true, Some("personnel")).unwrap();
        let auth = Arc::new(Authenticator::new(Some(path.clone()), None));
        let valid = |c: Credentials, who: &str| matches!(c, Credentials::Valid(v) if &*v.user == who && v.via == "users_file");
        assert_eq!(auth.user_count(), 2);
        let ip: std::net::IpAddr = "10.0.0.7".parse().unwrap();
        let hdr = |u: &str, p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        assert!(valid(
            auth.check(ip, hdr("alice", "correct horse").as_bytes())
                .await,
            "alice"
        ));
        // Second time from the cache.
        assert!(valid(
            auth.check(ip, hdr("alice", "correct horse").as_bytes())
                .await,
            "alice"
        ));
        assert_eq!(
            auth.check(ip, hdr("alice", "wrong").as_bytes()).await,
            Credentials::Invalid
        );
        assert_eq!(
            auth.check(ip, hdr("mallory", "pw").as_bytes()).await,
            Credentials::Invalid
        );
        // An address that keeps guessing is cut off before argon2 runs
        // (identity::limiter); a credential verified lately still works, and the
        // right password from elsewhere too (the address hit the limit first, so the
        // user's own count is still below it).
        for _ in 0..MAX_FAILURES {
            auth.check(ip, hdr("bob", "guess").as_bytes()).await;
        }
        assert_eq!(
            auth.check(ip, hdr("bob", "pw").as_bytes()).await,
            Credentials::Throttled
        );
        let other: std::net::IpAddr = "10.0.0.8".parse().unwrap();
        match auth.check(other, hdr("bob", "pw").as_bytes()).await {
            Credentials::Valid(v) => assert_eq!(
                (&*v.user, v.profile.as_deref()),
                ("bob", Some("personnel")),
                "the users file gives bob his profile"
            ),
            c => panic!("{c:?}"),
        }
        // A password change keeps the profile; the file says it after the hash.
        set_password(&path, "bob", "pw2", false, None).unwrap();
        let bob = read_users(&path)
            .unwrap()
            .into_iter()
            .find(|u| u.name == "bob")
            .unwrap();
        assert_eq!(bob.profile.as_deref(), Some("personnel"));
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains(":personnel\n")
        );
        assert!(matches!(
            set_password(&path, "carl", "pw", true, Some("mauvais profil")),
            Err(AuthError::BadProfile(_))
        ));
        std::fs::write(
            &path,
            "carl:$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo:a b\n",
        )
        .unwrap();
        let e = read_users(&path).unwrap_err().to_string();
        assert!(
            e.ends_with(":1: invalid profile name after the hash"),
            "{e}"
        );
        std::fs::remove_file(&path).unwrap();
        set_password(&path, "bob", "pw", true, Some("personnel")).unwrap();
        set_password(&path, "alice", "correct horse", true, None).unwrap();
        assert!(valid(
            auth.check(ip, hdr("alice", "correct horse").as_bytes())
                .await,
            "alice"
        ));
        delete_user(&path, "bob").unwrap();
        assert_eq!(read_users(&path).unwrap().len(), 1);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("correct horse"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
