//! The admin app's own state, in `<data_dir>/admin.db` (SQLite, WAL): unblock
//! requests and their decisions, and history requests awaiting a second approver.
//! What happened (who decided what) goes to the audit trail as well; this holds
//! what is still in progress or in force. Without a data directory it lives in
//! memory for the run.
//!
//! Retention: unblock requests (an address, who asked, from where, why) are
//! personal data like the audit events, and go after the same `[audit]
//! retention_days` ([`Db::purge_reviews`]), except an approval still in force.
//! History requests are kept: with the audit store's access log they are the
//! record of who read whose history and on whose approval, which must outlive the
//! events read.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::AdminError;
use crate::audit::store::{from_ms, ms};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS reviews (
    id          INTEGER PRIMARY KEY,
    created_ms  INTEGER NOT NULL,
    reference   TEXT NOT NULL,
    url         TEXT NOT NULL,
    host        TEXT NOT NULL,
    category    TEXT,
    client_ip   TEXT NOT NULL,
    requester   TEXT,
    profile     TEXT NOT NULL,
    why         TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending',
    decided_by  TEXT,
    decided_ms  INTEGER,
    scope       TEXT,
    scope_value TEXT,
    expires_ms  INTEGER,
    answer      TEXT
);
CREATE INDEX IF NOT EXISTS reviews_reference ON reviews(reference);
CREATE INDEX IF NOT EXISTS reviews_status ON reviews(status, expires_ms);
CREATE TABLE IF NOT EXISTS history_requests (
    id            INTEGER PRIMARY KEY,
    created_ms    INTEGER NOT NULL,
    requested_by  TEXT NOT NULL,
    subject       TEXT NOT NULL,
    from_ms       INTEGER NOT NULL,
    to_ms         INTEGER NOT NULL,
    justification TEXT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'pending',
    approved_by   TEXT,
    decided_ms    INTEGER
);
";

pub struct Db {
    conn: Connection,
    path: String,
}

/// An unblock request, as stored.
#[derive(Clone, Debug)]
pub struct Review {
    pub id: i64,
    pub created: DateTime<Utc>,
    pub reference: String,
    pub url: String,
    pub host: String,
    pub category: Option<String>,
    pub client_ip: String,
    pub requester: Option<String>,
    pub profile: String,
    pub why: String,
    /// `pending`, `approved` or `refused`.
    pub status: String,
    pub decided_by: Option<String>,
    pub decided: Option<DateTime<Utc>>,
    /// `user`, `profile` or `everyone`.
    pub scope: Option<String>,
    pub scope_value: Option<String>,
    pub expires: Option<DateTime<Utc>>,
    /// The director's reason for a refusal.
    pub answer: Option<String>,
}

/// What a requester asks for.
pub struct NewReview<'a> {
    pub reference: &'a str,
    pub url: &'a str,
    pub host: &'a str,
    pub category: Option<&'a str>,
    pub client_ip: &'a str,
    pub requester: Option<&'a str>,
    pub profile: &'a str,
    pub why: &'a str,
}

/// A request to open a person's history, awaiting (or given) a second approval.
#[derive(Clone, Debug)]
pub struct HistoryRequest {
    pub id: i64,
    pub created: DateTime<Utc>,
    pub requested_by: String,
    pub subject: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub justification: String,
    /// `pending` or `approved`.
    pub status: String,
    pub approved_by: Option<String>,
}

const REVIEW_COLUMNS: &str = "id, created_ms, reference, url, host, category, client_ip, requester, profile, why, status, decided_by, decided_ms, scope, scope_value, expires_ms, answer";

fn row_to_review(r: &rusqlite::Row<'_>) -> rusqlite::Result<Review> {
    Ok(Review {
        id: r.get(0)?,
        created: from_ms(r.get(1)?),
        reference: r.get(2)?,
        url: r.get(3)?,
        host: r.get(4)?,
        category: r.get(5)?,
        client_ip: r.get(6)?,
        requester: r.get(7)?,
        profile: r.get(8)?,
        why: r.get(9)?,
        status: r.get(10)?,
        decided_by: r.get(11)?,
        decided: r.get::<_, Option<i64>>(12)?.map(from_ms),
        scope: r.get(13)?,
        scope_value: r.get(14)?,
        expires: r.get::<_, Option<i64>>(15)?.map(from_ms),
        answer: r.get(16)?,
    })
}

const HISTORY_COLUMNS: &str =
    "id, created_ms, requested_by, subject, from_ms, to_ms, justification, status, approved_by";

fn row_to_history(r: &rusqlite::Row<'_>) -> rusqlite::Result<HistoryRequest> {
    Ok(HistoryRequest {
        id: r.get(0)?,
        created: from_ms(r.get(1)?),
        requested_by: r.get(2)?,
        subject: r.get(3)?,
        from: from_ms(r.get(4)?),
        to: from_ms(r.get(5)?),
        justification: r.get(6)?,
        status: r.get(7)?,
        approved_by: r.get(8)?,
    })
}

impl Db {
    /// Opens (creating) the database at `path`, or one in memory when `None`.
    pub fn open(path: Option<&Path>) -> Result<Db, AdminError> {
        let name = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| ":memory:".into());
        let err = |source| AdminError::Db {
            path: name.clone(),
            source,
        };
        let conn = match path {
            Some(p) => {
                if let Some(dir) = p.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let c = Connection::open(p).map_err(err)?;
                c.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
                c
            }
            None => Connection::open_in_memory().map_err(err)?,
        };
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Db { conn, path: name })
    }

    fn err(&self, source: rusqlite::Error) -> AdminError {
        AdminError::Db {
            path: self.path.clone(),
            source,
        }
    }

    pub fn add_review(&mut self, r: &NewReview<'_>) -> Result<i64, AdminError> {
        self.conn
            .execute(
                "INSERT INTO reviews (created_ms, reference, url, host, category, client_ip, requester, profile, why)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    ms(Utc::now()),
                    r.reference,
                    r.url,
                    r.host,
                    r.category,
                    r.client_ip,
                    r.requester,
                    r.profile,
                    r.why
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Pending requests from one address (a flood guard).
    pub fn pending_from(&mut self, client_ip: &str) -> Result<u64, AdminError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM reviews WHERE status = 'pending' AND client_ip = ?1",
                params![client_ip],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    pub fn reviews_by_reference(&mut self, reference: &str) -> Result<Vec<Review>, AdminError> {
        self.query_reviews(
            &format!("SELECT {REVIEW_COLUMNS} FROM reviews WHERE reference = ?1 ORDER BY id DESC"),
            params![reference],
        )
    }

    pub fn review(&mut self, id: i64) -> Result<Option<Review>, AdminError> {
        self.conn
            .query_row(
                &format!("SELECT {REVIEW_COLUMNS} FROM reviews WHERE id = ?1"),
                params![id],
                row_to_review,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Pending requests first (oldest first), then the latest decided ones.
    pub fn reviews(&mut self, decided: usize) -> Result<Vec<Review>, AdminError> {
        let mut out = self.query_reviews(
            &format!(
                "SELECT {REVIEW_COLUMNS} FROM reviews WHERE status = 'pending' ORDER BY id LIMIT 500"
            ),
            params![],
        )?;
        out.extend(self.query_reviews(
            &format!(
                "SELECT {REVIEW_COLUMNS} FROM reviews WHERE status != 'pending' ORDER BY decided_ms DESC LIMIT ?1"
            ),
            params![decided as i64],
        )?);
        Ok(out)
    }

    /// Approved requests still in force at `now`.
    pub fn grants(&mut self, now: DateTime<Utc>) -> Result<Vec<Review>, AdminError> {
        self.query_reviews(
            &format!(
                "SELECT {REVIEW_COLUMNS} FROM reviews WHERE status = 'approved' AND expires_ms > ?1 ORDER BY id"
            ),
            params![ms(now)],
        )
    }

    fn query_reviews(
        &mut self,
        sql: &str,
        p: impl rusqlite::Params,
    ) -> Result<Vec<Review>, AdminError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(p, row_to_review)
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>();
        drop(stmt);
        rows.map_err(|e| self.err(e))
    }

    /// Approves a pending request; `false` if it was not pending any more.
    pub fn approve(
        &mut self,
        id: i64,
        by: &str,
        scope: &str,
        scope_value: Option<&str>,
        expires: DateTime<Utc>,
    ) -> Result<bool, AdminError> {
        let n = self
            .conn
            .execute(
                "UPDATE reviews SET status = 'approved', decided_by = ?2, decided_ms = ?3, scope = ?4,
                 scope_value = ?5, expires_ms = ?6 WHERE id = ?1 AND status = 'pending'",
                params![id, by, ms(Utc::now()), scope, scope_value, ms(expires)],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    /// Refuses a pending request with a reason; `false` if it was not pending.
    pub fn refuse(&mut self, id: i64, by: &str, answer: &str) -> Result<bool, AdminError> {
        let n = self
            .conn
            .execute(
                "UPDATE reviews SET status = 'refused', decided_by = ?2, decided_ms = ?3, answer = ?4
                 WHERE id = ?1 AND status = 'pending'",
                params![id, by, ms(Utc::now()), answer],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    /// Deletes the unblock requests made before `before`, except approvals still
    /// in force at `now` (their grant needs them; they go once expired). Returns
    /// how many.
    pub fn purge_reviews(
        &mut self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<usize, AdminError> {
        self.conn
            .execute(
                "DELETE FROM reviews WHERE created_ms < ?1
                 AND NOT (status = 'approved' AND expires_ms > ?2)",
                params![ms(before), ms(now)],
            )
            .map_err(|e| self.err(e))
    }

    pub fn add_history_request(
        &mut self,
        by: &str,
        subject: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        justification: &str,
    ) -> Result<i64, AdminError> {
        self.conn
            .execute(
                "INSERT INTO history_requests (created_ms, requested_by, subject, from_ms, to_ms, justification)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![ms(Utc::now()), by, subject, ms(from), ms(to), justification],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn history_request(&mut self, id: i64) -> Result<Option<HistoryRequest>, AdminError> {
        self.conn
            .query_row(
                &format!("SELECT {HISTORY_COLUMNS} FROM history_requests WHERE id = ?1"),
                params![id],
                row_to_history,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn history_requests(&mut self, limit: usize) -> Result<Vec<HistoryRequest>, AdminError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {HISTORY_COLUMNS} FROM history_requests ORDER BY id DESC LIMIT ?1"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![limit as i64], row_to_history)
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>();
        drop(stmt);
        rows.map_err(|e| self.err(e))
    }

    /// A second person approves; never the requester. `false` if not pending or
    /// if `by` asked for it.
    pub fn approve_history_request(&mut self, id: i64, by: &str) -> Result<bool, AdminError> {
        let n = self
            .conn
            .execute(
                "UPDATE history_requests SET status = 'approved', approved_by = ?2, decided_ms = ?3
                 WHERE id = ?1 AND status = 'pending' AND requested_by != ?2",
                params![id, by, ms(Utc::now())],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_reviews_are_purged_but_grants_in_force_and_history_requests_stay() {
        let mut db = Db::open(None).unwrap();
        let add = |db: &mut Db, host: &str| {
            db.add_review(&NewReview {
                reference: "R-1",
                url: "http://casino.example/",
                host,
                category: None,
                client_ip: "10.0.0.1",
                requester: Some("eleve1"),
                profile: "eleves",
                why: "travail de recherche",
            })
            .unwrap()
        };
        let now = Utc::now();
        let (refused, pending, expired, in_force) = (
            add(&mut db, "a.example"),
            add(&mut db, "b.example"),
            add(&mut db, "c.example"),
            add(&mut db, "d.example"),
        );
        db.refuse(refused, "dir", "non").unwrap();
        db.approve(expired, "dir", "user", Some("eleve1"), now)
            .unwrap();
        db.approve(
            in_force,
            "dir",
            "user",
            Some("eleve1"),
            now + chrono::Duration::days(30),
        )
        .unwrap();
        let h = db
            .add_history_request("aud1", "eleve1", now, now, "plainte 2026-12 du conseil")
            .unwrap();
        // Nothing is older than the cut-off yet.
        let cutoff = now - chrono::Duration::days(90);
        assert_eq!(db.purge_reviews(cutoff, now).unwrap(), 0);
        // 91 days later.
        let later = now + chrono::Duration::days(91);
        assert_eq!(
            db.purge_reviews(later - chrono::Duration::days(90), now)
                .unwrap(),
            3
        );
        for id in [refused, pending, expired] {
            assert!(db.review(id).unwrap().is_none(), "#{id} purged");
        }
        assert!(
            db.review(in_force).unwrap().is_some(),
            "a grant in force stays"
        );
        assert!(
            db.history_request(h).unwrap().is_some(),
            "accountability record"
        );
    }

    #[test]
    fn reviews_flow_and_second_approver_is_someone_else() {
        let mut db = Db::open(None).unwrap();
        let id = db
            .add_review(&NewReview {
                reference: "R-1",
                url: "http://casino.example/",
                host: "casino.example",
                category: Some("gambling"),
                client_ip: "10.0.0.1",
                requester: Some("eleve1"),
                profile: "eleves",
                why: "travail de recherche",
            })
            .unwrap();
        assert_eq!(db.pending_from("10.0.0.1").unwrap(), 1);
        let later = Utc::now() + chrono::Duration::hours(1);
        assert!(
            db.approve(id, "dir", "user", Some("eleve1"), later)
                .unwrap()
        );
        assert!(!db.refuse(id, "dir", "trop tard").unwrap(), "decided once");
        assert_eq!(db.grants(Utc::now()).unwrap().len(), 1);
        assert!(db.grants(later).unwrap().is_empty(), "expired");
        assert_eq!(
            db.reviews_by_reference("R-1").unwrap()[0].status,
            "approved"
        );

        let h = db
            .add_history_request(
                "aud1",
                "eleve1",
                Utc::now(),
                later,
                "plainte 2026-12 du conseil",
            )
            .unwrap();
        assert!(!db.approve_history_request(h, "aud1").unwrap());
        assert!(db.approve_history_request(h, "aud2").unwrap());
        assert_eq!(
            db.history_request(h)
                .unwrap()
                .unwrap()
                .approved_by
                .as_deref(),
            Some("aud2")
        );
    }
}
