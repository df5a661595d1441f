//! The admin web app, on the admin listener: directors' dashboards and unblock
//! requests, auditors' justified access to one person's history, and (built on the
//! same foundation) IT staff's pages. Server-rendered HTML (maud), French first,
//! every asset embedded, a little JavaScript for the live view only.
//!
//! The foundation every page module builds on lives here and in [`session`] and
//! [`layout`]: the shared [`Admin`] state, [`Routes`] (each page module returns its
//! own and [`router`] merges them), the [`session::Session`] extractor (login, role
//! and CSRF checks), the page layout, and [`Admin::record`], through which every
//! admin action lands in the audit store next to the decisions it is about.
//!
//! It reads the audit store through its own connection (SQLite WAL lets it read
//! while the writer writes) on blocking threads, and keeps its own workflow state
//! (unblock and history requests) in `<data_dir>/admin.db`. It must not decide
//! anything: an approved unblock request becomes a grant in the snapshot store,
//! which `policy::decide` reads like any override.

// Refusals are rendered pages (`Result<_, Response>`): the handler returns them as
// they are, once per request, so boxing them would buy nothing.
#![allow(clippy::result_large_err)]

pub mod check;
pub mod dashboard;
pub mod db;
pub mod editor;
pub mod health;
pub mod history;
pub mod layout;
pub mod live;
pub mod review;
pub mod session;
pub mod tls;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chrono::Utc;

use crate::audit::store::{Store, StoreError};
use crate::audit::{AuditEvent, AuditSink, Pseudonymizer};
use crate::identity::IdentityTable;
use crate::identity::users::Authenticator;
use crate::snapshot::SnapshotStore;

pub use crate::config::AdminRole as Role;

/// The router type page modules build: routes with the shared state, merged by
/// [`router`].
pub type Routes = axum::Router<Arc<Admin>>;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no audit store is configured ([audit] store, or no data directory)")]
    NoStore,
    #[error("admin database {path}: {source}")]
    Db {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("background task failed: {0}")]
    Task(String),
}

/// What the app needs from the rest of the process.
pub struct Setup {
    pub store: Arc<SnapshotStore>,
    pub identities: Arc<IdentityTable>,
    pub auth: Arc<Authenticator>,
    pub audit: AuditSink,
    pub data_dir: Option<PathBuf>,
    /// The configuration file (`--config`), which IT staff edit; `None`: the
    /// embedded default, read only.
    pub config_path: Option<PathBuf>,
    /// Notices for people whose history is read (`[admin] notify_subject`).
    pub notices: Arc<crate::audit::notices::Notices>,
    /// Fires at shutdown: long-lived responses (the live view) end on it.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Everything the app's routes share.
pub struct Admin {
    pub store: Arc<SnapshotStore>,
    pub identities: Arc<IdentityTable>,
    pub auth: Arc<Authenticator>,
    pub audit: AuditSink,
    pub sessions: session::Sessions,
    /// The app's own state (`admin.db`): unblock and history requests.
    pub db: Arc<Mutex<db::Db>>,
    /// The audit store, read only (and for history reads, which record their
    /// access); `None` when none is configured.
    events: Option<Arc<Mutex<Box<dyn Store>>>>,
    /// `[audit] pseudonymize`: user names in aggregate views.
    pub pseudo: Option<Arc<Pseudonymizer>>,
    pub data_dir: Option<PathBuf>,
    pub config_path: Option<PathBuf>,
    pub notices: Arc<crate::audit::notices::Notices>,
    /// The listeners, by name (the health page), set once they are bound.
    pub services: std::sync::OnceLock<Vec<(String, String)>>,
    pub shutdown: tokio_util::sync::CancellationToken,
    /// When [`Admin::apply_retention`] last ran.
    last_retention: Mutex<Option<std::time::Instant>>,
}

/// How often the app's retention runs (as the audit writer's).
const RETENTION_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

impl Admin {
    /// Opens the app's database and the audit store and puts the approved unblock
    /// requests back in force. A store that cannot be opened leaves the pages that
    /// need it saying so; the rest works.
    pub fn open(setup: Setup) -> Result<Arc<Admin>, AdminError> {
        let snap = setup.store.load();
        let dir = setup.data_dir.clone();
        let db = db::Db::open(dir.as_deref().map(|d| d.join("admin.db")).as_deref())?;
        let events = match crate::audit::store::open(&snap.config.audit, dir.as_deref()) {
            Ok(s) => s.map(|s| Arc::new(Mutex::new(s))),
            Err(e) => {
                tracing::error!("admin app: audit store unavailable: {e}");
                None
            }
        };
        let pseudo = match (snap.config.audit.pseudonymize, dir.as_deref()) {
            (true, Some(d)) => match Pseudonymizer::open(d) {
                Ok(p) => Some(Arc::new(p)),
                Err(e) => {
                    tracing::error!("admin app: pseudonym key unavailable, user names hidden: {e}");
                    // Fail closed: a key of this run only, so names never show.
                    let mut k = [0u8; 32];
                    let _ =
                        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k);
                    Some(Arc::new(Pseudonymizer::with_key(&k)))
                }
            },
            (true, None) => {
                let mut k = [0u8; 32];
                let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k);
                Some(Arc::new(Pseudonymizer::with_key(&k)))
            }
            _ => None,
        };
        let admin = Arc::new(Admin {
            store: setup.store,
            identities: setup.identities,
            auth: setup.auth,
            audit: setup.audit,
            sessions: session::Sessions::default(),
            db: Arc::new(Mutex::new(db)),
            events,
            pseudo,
            data_dir: setup.data_dir,
            config_path: setup.config_path,
            notices: setup.notices,
            services: std::sync::OnceLock::new(),
            shutdown: setup.shutdown,
            last_retention: Mutex::new(None),
        });
        review::refresh_grants_blocking(&admin)?;
        Ok(admin)
    }

    pub fn has_store(&self) -> bool {
        self.events.is_some()
    }

    /// Runs `f` on the audit store, on a blocking thread.
    pub async fn with_events<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, AdminError> {
        let Some(events) = self.events.clone() else {
            return Err(AdminError::NoStore);
        };
        tokio::task::spawn_blocking(move || {
            let mut guard = events.lock().unwrap_or_else(|p| p.into_inner());
            f(guard.as_mut()).map_err(AdminError::from)
        })
        .await
        .map_err(|e| AdminError::Task(e.to_string()))?
    }

    /// Runs `f` on the app's database, on a blocking thread.
    pub async fn with_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut db::Db) -> Result<T, AdminError> + Send + 'static,
    ) -> Result<T, AdminError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = db.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| AdminError::Task(e.to_string()))?
    }

    /// Records an admin action in the audit trail: who (`user`, from `ip`), what
    /// (`action`, on `target`), and the change (`change`, "before → after").
    pub fn record(
        &self,
        user: Option<&str>,
        ip: IpAddr,
        action: &'static str,
        target: impl Into<String>,
        change: impl Into<String>,
    ) {
        self.audit.record(AuditEvent {
            time: Utc::now(),
            service: "admin",
            client_ip: ip,
            user: user.map(str::to_string),
            identity: "admin",
            profile: Arc::default(),
            target: target.into(),
            qtype: None,
            verdict: action,
            category: None,
            rule: change.into().into(),
            entry: None,
            via: None,
            latency_us: 0,
            proxy: None,
        });
    }

    /// Periodic upkeep: expired sessions forgotten, expired grants dropped, and
    /// hourly (as the audit writer purges its events) the app's own personal data
    /// past `[audit] retention_days`.
    pub async fn upkeep(self: &Arc<Self>) {
        self.sessions.purge();
        let due = {
            let mut last = self
                .last_retention
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= RETENTION_EVERY);
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        };
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = review::refresh_grants_blocking(&me) {
                tracing::warn!("admin app: cannot refresh unblock grants: {e}");
            }
            if due {
                me.apply_retention(Utc::now());
            }
        })
        .await;
    }

    /// Deletes what the app keeps about people past the audit retention period
    /// (blocking): unblock requests made before it (`db::Db::purge_reviews`) and
    /// the history notices the person has acknowledged. History requests and the
    /// audit store's access log stay: they are the record of who read whose
    /// history, kept for accountability.
    pub fn apply_retention(&self, now: chrono::DateTime<Utc>) {
        let days = self.store.load().config.audit.retention_days;
        let before = now - chrono::Duration::days(i64::from(days));
        let reviews = {
            let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
            db.purge_reviews(before, now)
        };
        match reviews {
            Ok(n) if n > 0 => {
                tracing::info!(
                    purged = n,
                    "admin retention: unblock requests before {before} deleted"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::error!("admin retention failed: {e}"),
        }
        let n = self.notices.purge_seen(before);
        if n > 0 {
            tracing::info!(
                purged = n,
                "admin retention: read notices before {before} deleted"
            );
        }
    }
}

/// The app's routes, to merge into the admin listener's router (served with
/// `ConnectInfo<SocketAddr>`; [`tls`] inserts it for the HTTPS listener).
pub fn router(admin: Arc<Admin>) -> axum::Router {
    Routes::new()
        .merge(layout::routes())
        .merge(session::routes())
        .merge(dashboard::routes())
        .merge(live::routes())
        .merge(review::routes())
        .merge(history::routes())
        .merge(editor::routes())
        .merge(check::routes())
        .merge(health::routes())
        .with_state(admin)
}

/// An app over a config text, in memory (no data directory, no audit store), and
/// the receiving end of its audit trail; for the page modules' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub fn admin(
        config: &str,
        users: Option<PathBuf>,
    ) -> (Arc<Admin>, tokio::sync::mpsc::Receiver<AuditEvent>) {
        let cfg = crate::config::parse(config, "t.toml", std::path::Path::new("/"))
            .unwrap_or_else(|e| panic!("{e}"));
        let snap = crate::snapshot::Snapshot::build(cfg, None).unwrap_or_else(|e| panic!("{e}"));
        let (audit, rx) = AuditSink::channel(1000);
        let admin = Admin::open(Setup {
            store: Arc::new(SnapshotStore::new(snap)),
            identities: Arc::new(IdentityTable::new()),
            auth: Arc::new(Authenticator::new(users, None)),
            audit,
            data_dir: None,
            config_path: None,
            notices: Arc::new(crate::audit::notices::Notices::open(None)),
            shutdown: tokio_util::sync::CancellationToken::new(),
        })
        .unwrap_or_else(|e| panic!("{e}"));
        (admin, rx)
    }

    /// A signed-in `user` with `role` (unrestricted), from 10.0.0.1.
    pub fn session(user: &str, role: Role) -> session::Session {
        session::Session {
            user: user.to_string(),
            roles: vec![(role, Vec::new())],
            csrf: "0123456789abcdef0123456789abcdef".into(),
            lang: crate::i18n::Lang::Fr,
            ip: "10.0.0.1"
                .parse()
                .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
            here: "/admin/".into(),
        }
    }

    /// The audit actions recorded so far.
    pub fn actions(rx: &mut tokio::sync::mpsc::Receiver<AuditEvent>) -> Vec<&'static str> {
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            out.push(ev.verdict);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn upkeep_applies_retention_to_reviews_and_read_notices() {
        let (admin, _rx) = testing::admin(
            "default_profile = \"eleves\"\n[profiles.eleves]\n[audit]\nretention_days = 30\n",
            None,
        );
        let now = Utc::now();
        let id = admin
            .with_db(|db| {
                db.add_review(&db::NewReview {
                    reference: "R-1",
                    url: "http://casino.example/",
                    host: "casino.example",
                    category: None,
                    client_ip: "10.0.0.5",
                    requester: Some("eleve1"),
                    profile: "eleves",
                    why: "travail de recherche",
                })
            })
            .await
            .unwrap();
        let notice = |seen| crate::audit::notices::Notice {
            subject: "eleve1".into(),
            time: now,
            accessed_by: "verif".into(),
            justification: "Plainte 2026-114".into(),
            from: now,
            to: now,
            seen,
        };
        admin.notices.add(crate::audit::notices::Notice {
            time: now - chrono::Duration::days(40),
            ..notice(true)
        });
        admin.notices.add(notice(true));
        admin.notices.add(notice(false));
        // The upkeep runs it (the first time at once): only the notice read 40
        // days ago is past retention.
        admin.upkeep().await;
        assert_eq!(
            admin.notices.purge_seen(now - chrono::Duration::days(1)),
            0,
            "the upkeep dropped the old read notice"
        );
        assert!(
            admin
                .with_db(move |db| db.review(id))
                .await
                .unwrap()
                .is_some()
        );
        // 31 days on: the request and the read notice go; the unread one stays.
        admin.apply_retention(now + chrono::Duration::days(31));
        assert!(
            admin
                .with_db(move |db| db.review(id))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(admin.notices.unseen("eleve1"), vec![notice(false)]);
        assert_eq!(
            admin.notices.purge_seen(now + chrono::Duration::days(31)),
            0
        );
    }
}
