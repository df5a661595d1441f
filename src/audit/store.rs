//! The audit store: embedded SQLite in WAL mode under the data directory.
//!
//! It owns the schema, the batched inserts, retention, and the queries the web app
//! uses (aggregates for directors, one person's history for a mandated auditor,
//! lookup by block-page reference). Reading one person's history requires a
//! written justification and is itself recorded in the same transaction
//! (`history_access`), so the access can never happen without its trace. The store
//! is synchronous: the writer task calls it from a blocking thread, never from the
//! hot path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::AuditEvent;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("audit store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("audit store {name}: {message}")]
    Postgres { name: String, message: String },
    #[error("reading a user's history needs a written justification (at least {min} characters)")]
    JustificationRequired { min: usize },
    #[error("no audit store is configured")]
    NotConfigured,
}

/// Rows [`Store::purge`] deletes per statement.
const PURGE_CHUNK: usize = 10_000;

/// Shortest justification accepted for reading one person's history.
pub const MIN_JUSTIFICATION: usize = 15;

const SCHEMA_VERSION: i64 = 1;

/// How often the writer's WAL is checkpointed. A checkpoint copies what was written
/// since the last one: once a second at 15,000 events/s that was 1–4 ms of CPU in
/// one go, which a request on the same core waited for (`perf sched`); a quarter of
/// a second keeps each under a millisecond, for four syncs to disk a second.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// A paced insert (see [`Store::set_paced`]) sleeps [`PACE_GAP`] after every this
/// many rows.
const PACE_ROWS: usize = 32;
/// 32 rows are ~0.1 ms of work; the sleep hands the core to whoever was waiting.
const PACE_GAP: Duration = Duration::from_micros(200);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY,
    time_ms     INTEGER NOT NULL,
    service     TEXT NOT NULL,
    client_ip   TEXT NOT NULL,
    user        TEXT,
    identity    TEXT NOT NULL,
    profile     TEXT NOT NULL,
    target      TEXT NOT NULL,
    host        TEXT NOT NULL,
    qtype       TEXT,
    verdict     TEXT NOT NULL,
    category    TEXT,
    rule        TEXT NOT NULL,
    entry       TEXT,
    via         TEXT,
    latency_us  INTEGER NOT NULL,
    reference   TEXT,
    proxy       TEXT
);
CREATE INDEX IF NOT EXISTS events_time ON events(time_ms);
-- Blocks only: allowed traffic (most events) pays for one index, not two.
DROP INDEX IF EXISTS events_verdict_time;
CREATE INDEX IF NOT EXISTS events_block_time ON events(time_ms) WHERE verdict = 'block';
CREATE INDEX IF NOT EXISTS events_user_time ON events(user, time_ms) WHERE user IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_reference ON events(reference) WHERE reference IS NOT NULL;
CREATE TABLE IF NOT EXISTS history_access (
    id            INTEGER PRIMARY KEY,
    time_ms       INTEGER NOT NULL,
    accessed_by   TEXT NOT NULL,
    subject       TEXT NOT NULL,
    justification TEXT NOT NULL,
    from_ms       INTEGER NOT NULL,
    to_ms         INTEGER NOT NULL
);
";

/// A period `[from, to)`.
#[derive(Clone, Copy, Debug)]
pub struct Period {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// What blocked requests are counted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    Category,
    Domain,
    Profile,
    /// Start of the hour, RFC 3339 in UTC.
    Hour,
    /// The identified person (anonymous requests left out). Shown pseudonymised
    /// where `[audit] pseudonymize` says so: see `audit::aggregate`.
    User,
    /// Circumvention attempts: blocks in the categories of [`CIRCUMVENTION`], keyed
    /// `category · what was detected` (`p2p · bittorrent`, `tor · 192.0.2.7/32`).
    Circumvention,
}

/// The categories whose blocks are circumvention attempts (P2P, Tor, VPNs and
/// tunnels, encrypted DNS), for the dashboard.
pub const CIRCUMVENTION: &[&str] = &["p2p", "tor", "vpn", "doh"];

/// Separates category and detection in a [`Dimension::Circumvention`] key.
pub const CIRCUMVENTION_SEP: &str = " · ";

impl Dimension {
    /// The grouping key's SQL (the same in SQLite and PostgreSQL) and the extra
    /// condition the dimension adds, except for `User` and `Hour` whose spelling
    /// differs between the two.
    pub(crate) fn circumvention_sql() -> (String, String) {
        let list = CIRCUMVENTION
            .iter()
            .map(|c| format!("'{c}'"))
            .collect::<Vec<_>>()
            .join(", ");
        (
            format!("category || '{CIRCUMVENTION_SEP}' || COALESCE(entry, '')"),
            format!(" AND category IN ({list})"),
        )
    }
}

/// Which blocked requests an aggregate counts: a director's schools (client
/// networks) and the dashboard's drill-down (a category, a profile, a host).
/// The default counts everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockFilter {
    /// Client networks; empty: every client.
    pub networks: Vec<ipnet::IpNet>,
    pub category: Option<String>,
    pub profile: Option<String>,
    pub host: Option<String>,
}

impl BlockFilter {
    /// The networks as one comma-separated string (the stores' SQL parameter).
    pub(crate) fn networks_param(&self) -> Option<String> {
        (!self.networks.is_empty()).then(|| {
            self.networks
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
    }
}

/// Whether the address `ip` (as stored, text) is in one of `nets` (comma-separated
/// CIDRs): the SQLite function `vigie_in_networks` filters with it.
pub(crate) fn ip_in_networks(ip: &str, nets: &str) -> bool {
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        return false;
    };
    let ip = crate::snapshot::canonical_ip(ip);
    nets.split(',')
        .filter_map(|n| n.trim().parse::<ipnet::IpNet>().ok())
        .any(|n| n.contains(&ip))
}

/// One stored event, as read back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoredEvent {
    pub id: i64,
    pub time: DateTime<Utc>,
    pub service: String,
    pub client_ip: String,
    pub user: Option<String>,
    pub profile: String,
    pub target: String,
    pub host: String,
    pub verdict: String,
    pub category: Option<String>,
    pub rule: String,
    pub entry: Option<String>,
    pub reference: Option<String>,
    /// The proxy's part of the record (method, port, path, status, bytes, SNI, the
    /// protocol detected…), as stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<serde_json::Value>,
}

/// The stored proxy part, back as JSON (None for DNS events).
pub(crate) fn proxy_json(text: Option<String>) -> Option<serde_json::Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

/// Who reads a person's history, and why: both are recorded.
#[derive(Clone, Debug)]
pub struct HistoryAccess<'a> {
    pub accessed_by: &'a str,
    pub justification: &'a str,
}

/// What every audit store does; the writer and the web app use only this.
pub trait Store: Send {
    /// Writes a batch in one transaction: all of it or none of it.
    fn insert_batch(&mut self, events: &[AuditEvent]) -> Result<(), StoreError>;
    /// Called once on the writer's store: moves housekeeping (SQLite's WAL
    /// checkpoints) off the writer's thread. Readers' stores never call it.
    fn take_writer_role(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Paced, an insert stops for a moment every few rows, inside its transaction,
    /// so that where the writer shares a core with the services (a small appliance,
    /// a pinned benchmark) a request never waits behind a whole batch. The writer
    /// asks for it only while the queue is shallow. Stores whose work happens in
    /// another process (PostgreSQL) ignore it.
    fn set_paced(&mut self, _paced: bool) {}
    /// Deletes events older than `before`; returns how many. In chunks, each its
    /// own statement; the writer runs [`Store::purge_chunk`] itself instead, one
    /// chunk between two batches, so a first purge of a large backlog never holds
    /// the queue up.
    fn purge(&mut self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let n = self.purge_chunk(before, PURGE_CHUNK)?;
            total += n;
            if n < PURGE_CHUNK {
                return Ok(total);
            }
        }
    }
    /// Deletes at most `limit` of the oldest events older than `before`; returns
    /// how many (fewer than `limit`: nothing older is left).
    fn purge_chunk(&mut self, before: DateTime<Utc>, limit: usize) -> Result<usize, StoreError>;
    /// Blocked requests in `period` counted by `dim`, largest first (hours in time
    /// order), at most `limit` rows.
    fn blocks_by(
        &mut self,
        dim: Dimension,
        period: Period,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.blocks_matching(dim, period, limit, &BlockFilter::default())
    }
    /// [`Store::blocks_by`], counting only the blocked requests `filter` keeps.
    fn blocks_matching(
        &mut self,
        dim: Dimension,
        period: Period,
        limit: usize,
        filter: &BlockFilter,
    ) -> Result<Vec<(String, u64)>, StoreError>;
    /// One person's history (or everyone's, `user = None`: an export), newest first,
    /// paged by event id; the access itself is recorded (who, whose — `*` for
    /// everyone —, why, which period) in the same transaction.
    fn user_history(
        &mut self,
        access: &HistoryAccess<'_>,
        user: Option<&str>,
        period: Period,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// Who read whose history, when and why, newest first.
    fn history_accesses(&mut self, limit: usize) -> Result<Vec<HistoryAccessRecord>, StoreError>;
    /// The event with this block-page reference id.
    fn by_reference(&mut self, reference: &str) -> Result<Option<StoredEvent>, StoreError>;
    /// Number of stored events.
    fn count(&mut self) -> Result<u64, StoreError>;

    /// The most blocked domains in `period`.
    fn top_blocked_domains(
        &mut self,
        period: Period,
        n: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.blocks_by(Dimension::Domain, period, n)
    }
}

/// One recorded read of a person's history.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HistoryAccessRecord {
    pub time: DateTime<Utc>,
    pub accessed_by: String,
    pub subject: String,
    pub justification: String,
    /// The period of the history that was read.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// Refuses a history read without a real justification (shared by every store).
pub fn check_justification(access: &HistoryAccess<'_>) -> Result<(), StoreError> {
    if access.justification.trim().chars().count() < MIN_JUSTIFICATION {
        return Err(StoreError::JustificationRequired {
            min: MIN_JUSTIFICATION,
        });
    }
    Ok(())
}

pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// The writer's checkpoint thread (see [`SqliteStore::checkpoint_elsewhere`]);
    /// dropping the sender stops it.
    checkpointer: Option<std::sync::mpsc::Sender<()>>,
    /// See [`Store::set_paced`].
    paced: bool,
}

/// Milliseconds since the epoch, as every store keeps times.
pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

/// The host an event is about, for "top blocked domains": the DNS name, or the
/// proxy's host.
pub(crate) fn host_of(ev: &AuditEvent) -> String {
    match &ev.proxy {
        Some(p) if !p.host.is_empty() => p.host.to_ascii_lowercase(),
        _ => {
            let (host, _) = crate::policy::split_url(&ev.target);
            host.trim_end_matches('.').to_ascii_lowercase()
        }
    }
}

/// Opens the configured store: SQLite at `<data_dir>/audit.db` (the default), or
/// PostgreSQL. `None`: no queryable store (`store = "none"`, or SQLite without a
/// data directory). The writer, the web app and the `vigie audit` commands all
/// open it here, so they always read and write the same place.
pub fn open(
    settings: &crate::config::AuditSettings,
    data_dir: Option<&Path>,
) -> Result<Option<Box<dyn Store>>, StoreError> {
    use crate::config::AuditStoreKind;
    Ok(match (&settings.store, data_dir) {
        (AuditStoreKind::Postgres, _) => Some(Box::new(super::postgres::PgStore::connect(
            settings.postgres_url.as_deref().unwrap_or_default(),
            settings.postgres_ca_file.as_deref(),
        )?)),
        (AuditStoreKind::Sqlite, Some(dir)) => {
            Some(Box::new(SqliteStore::open(&dir.join("audit.db"))?))
        }
        (AuditStoreKind::Sqlite, None) | (AuditStoreKind::None, _) => None,
    })
}

/// Whether [`open`] opens a store for these settings (not `store = "none"`, nor
/// SQLite without a data directory).
pub fn configured(settings: &crate::config::AuditSettings, data_dir: Option<&Path>) -> bool {
    use crate::config::AuditStoreKind;
    match settings.store {
        AuditStoreKind::Postgres => true,
        AuditStoreKind::Sqlite => data_dir.is_some(),
        AuditStoreKind::None => false,
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, in WAL mode: readers (the web
    /// app) never block the writer, and a crash loses at most the last transaction.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let err = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // A missing directory surfaces as SQLite's "unable to open" just below.
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        // NORMAL in WAL mode: durable at checkpoints, never corrupt on power loss.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        // 1 MiB of page cache instead of SQLite's 2: the writer appends at the right
        // edge of the table and its indexes (a few hot pages) and the dashboards scan,
        // which the OS page cache serves as well.
        conn.pragma_update(None, "cache_size", -1024).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        // Directors restricted to their schools' networks: a CIDR test SQL lacks.
        conn.create_scalar_function(
            "vigie_in_networks",
            2,
            rusqlite::functions::FunctionFlags::SQLITE_UTF8
                | rusqlite::functions::FunctionFlags::SQLITE_DETERMINISTIC,
            |ctx| {
                let ip = ctx.get::<String>(0)?;
                let nets = ctx.get::<String>(1)?;
                Ok(ip_in_networks(&ip, &nets))
            },
        )
        .map_err(err)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(err)?;
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
            checkpointer: None,
            paced: false,
        })
    }

    /// Moves WAL checkpoints off this connection to a thread of their own, run every
    /// [`CHECKPOINT_EVERY`] (`PASSIVE`: never waits for, nor holds up, the writer).
    /// A checkpoint copies the WAL into the database and syncs it to disk; done by
    /// the writer itself every 1,000 pages, it is the likeliest reason the queue
    /// overflowed once under a saturating DNS benchmark (192 events dropped in one
    /// run, none since). If the thread cannot start, the writer keeps checkpointing
    /// itself.
    pub fn checkpoint_elsewhere(&mut self) -> Result<(), StoreError> {
        let err = |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        };
        let conn = Connection::open(&self.path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let path = self.path.clone();
        let spawned = std::thread::Builder::new()
            .name("vigie-checkpoint".into())
            .spawn(move || {
                let checkpoint = || {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!("audit store {}: checkpoint failed: {e}", path.display());
                    }
                };
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    checkpoint();
                }
                checkpoint();
            });
        if spawned.is_ok() {
            self.conn
                .pragma_update(None, "wal_autocheckpoint", 0)
                .map_err(err)?;
            // The writer only appends (a few hot pages at the right edge of the table
            // and its indexes): half a MiB of page cache is plenty.
            self.conn
                .pragma_update(None, "cache_size", -512)
                .map_err(err)?;
            self.checkpointer = Some(stop);
        }
        Ok(())
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }
}

impl Store for SqliteStore {
    fn take_writer_role(&mut self) -> Result<(), StoreError> {
        self.checkpoint_elsewhere()
    }

    fn set_paced(&mut self, paced: bool) {
        self.paced = paced;
    }

    /// Writes a batch in one transaction: all of it or none of it.
    fn insert_batch(&mut self, events: &[AuditEvent]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let paced = self.paced;
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO events (time_ms, service, client_ip, user, identity, profile, target, host, qtype,
                     verdict, category, rule, entry, via, latency_us, reference, proxy)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                )
                .map_err(err)?;
            for (i, ev) in events.iter().enumerate() {
                if paced && i > 0 && i % PACE_ROWS == 0 {
                    // In WAL mode an open write transaction holds up no reader and
                    // no checkpoint of what is already committed.
                    std::thread::sleep(PACE_GAP);
                }
                let proxy = ev
                    .proxy
                    .as_ref()
                    .and_then(|p| serde_json::to_string(p).ok());
                let reference = ev.proxy.as_ref().and_then(|p| p.reference.clone());
                stmt.execute(params![
                    ms(ev.time),
                    ev.service,
                    ev.client_ip.to_string(),
                    ev.user,
                    ev.identity,
                    ev.profile,
                    ev.target,
                    host_of(ev),
                    ev.qtype,
                    ev.verdict,
                    ev.category,
                    ev.rule,
                    ev.entry,
                    ev.via,
                    ev.latency_us as i64,
                    reference,
                    proxy,
                ])
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    fn purge_chunk(&mut self, before: DateTime<Utc>, limit: usize) -> Result<usize, StoreError> {
        self.conn
            .execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE time_ms < ?1 ORDER BY time_ms LIMIT ?2)",
                params![ms(before), limit as i64],
            )
            .map_err(|e| self.err(e))
    }

    /// Blocked requests in `period` that `filter` keeps, counted by `dim`, largest
    /// first (hours in time order), at most `limit` rows.
    fn blocks_matching(
        &mut self,
        dim: Dimension,
        period: Period,
        limit: usize,
        filter: &BlockFilter,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let (circ_key, circ_only) = Dimension::circumvention_sql();
        let (key, order) = match dim {
            Dimension::User => ("user", "n DESC, k"),
            Dimension::Category => ("COALESCE(category, '')", "n DESC, k"),
            Dimension::Domain => ("host", "n DESC, k"),
            Dimension::Profile => ("profile", "n DESC, k"),
            Dimension::Circumvention => (circ_key.as_str(), "n DESC, k"),
            Dimension::Hour => (
                "strftime('%Y-%m-%dT%H:00:00Z', time_ms / 1000, 'unixepoch')",
                "k",
            ),
        };
        let only_users = match dim {
            Dimension::User => " AND user IS NOT NULL",
            Dimension::Circumvention => circ_only.as_str(),
            _ => "",
        };
        let sql = format!(
            "SELECT {key} AS k, COUNT(*) AS n FROM events
             WHERE verdict = 'block' AND time_ms >= ?1 AND time_ms < ?2{only_users}
               AND (?4 IS NULL OR vigie_in_networks(client_ip, ?4))
               AND (?5 IS NULL OR COALESCE(category, '') = ?5)
               AND (?6 IS NULL OR profile = ?6)
               AND (?7 IS NULL OR host = ?7)
             GROUP BY k ORDER BY {order} LIMIT ?3"
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![
                    ms(period.from),
                    ms(period.to),
                    limit as i64,
                    filter.networks_param(),
                    filter.category,
                    filter.profile,
                    filter.host
                ],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// One person's history in `period`, newest first, `limit` events before the
    /// event id `before` (paging). The access is recorded with who and why, in the
    /// same transaction as the read.
    fn user_history(
        &mut self,
        access: &HistoryAccess<'_>,
        user: Option<&str>,
        period: Period,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        check_justification(access)?;
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        tx.execute(
            "INSERT INTO history_access (time_ms, accessed_by, subject, justification, from_ms, to_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                ms(Utc::now()),
                access.accessed_by,
                user.unwrap_or("*"),
                access.justification.trim(),
                ms(period.from),
                ms(period.to)
            ],
        )
        .map_err(err)?;
        let events = {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM events WHERE (?1 IS NULL OR user = ?1) AND time_ms >= ?2 AND time_ms < ?3 AND id < ?4
                     ORDER BY time_ms DESC, id DESC LIMIT ?5"
                ))
                .map_err(err)?;
            let rows = stmt
                .query_map(
                    params![
                        user,
                        ms(period.from),
                        ms(period.to),
                        before.unwrap_or(i64::MAX),
                        limit as i64
                    ],
                    row_to_event,
                )
                .map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)?
        };
        tx.commit().map_err(err)?;
        Ok(events)
    }

    /// Who read whose history, when and why, newest first.
    fn history_accesses(&mut self, limit: usize) -> Result<Vec<HistoryAccessRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT time_ms, accessed_by, subject, justification, from_ms, to_ms FROM history_access ORDER BY id DESC LIMIT ?1",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![limit as i64], |r| {
                Ok(HistoryAccessRecord {
                    time: from_ms(r.get(0)?),
                    accessed_by: r.get(1)?,
                    subject: r.get(2)?,
                    justification: r.get(3)?,
                    from: from_ms(r.get(4)?),
                    to: from_ms(r.get(5)?),
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The event with this block-page reference id.
    fn by_reference(&mut self, reference: &str) -> Result<Option<StoredEvent>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM events WHERE reference = ?1"),
                params![reference],
                row_to_event,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Number of stored events (tests and health page).
    fn count(&mut self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }
}

const COLUMNS: &str = "id, time_ms, service, client_ip, user, profile, target, host, verdict, category, rule, entry, reference, proxy";

fn row_to_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        id: r.get(0)?,
        time: from_ms(r.get(1)?),
        service: r.get(2)?,
        client_ip: r.get(3)?,
        user: r.get(4)?,
        profile: r.get(5)?,
        target: r.get(6)?,
        host: r.get(7)?,
        verdict: r.get(8)?,
        category: r.get(9)?,
        rule: r.get(10)?,
        entry: r.get(11)?,
        reference: r.get(12)?,
        proxy: proxy_json(r.get(13)?),
    })
}

/// The behaviour every [`Store`] must have, as one function the tests of each store
/// run against a fresh, empty store (SQLite in unit tests, a real PostgreSQL server
/// in `tests/audit_postgres.rs`).
#[doc(hidden)]
pub mod conformance {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::audit::ProxyAudit;

    pub(crate) fn event(
        minute: i64,
        user: Option<&str>,
        host: &str,
        verdict: &'static str,
        category: Option<&str>,
    ) -> AuditEvent {
        AuditEvent {
            time: Utc.with_ymd_and_hms(2026, 11, 23, 15, 0, 0).unwrap()
                + chrono::Duration::minutes(minute),
            service: "dns",
            client_ip: "10.1.2.3".parse().unwrap(),
            user: user.map(str::to_string),
            identity: "network",
            profile: if user.is_some() {
                "personnel".into()
            } else {
                "eleves".into()
            },
            target: format!("{host}."),
            qtype: Some("A".into()),
            verdict,
            category: category.map(std::sync::Arc::from),
            rule: "rule".into(),
            entry: None,
            via: None,
            latency_us: 10,
            proxy: None,
        }
    }

    fn day() -> Period {
        Period {
            from: Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap(),
            to: Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0).unwrap(),
        }
    }

    /// Runs every check on `store`, which must be empty. Panics on the first failure.
    pub fn run(store: &mut dyn Store) {
        blocks_by_user(store);
        aggregates_over_a_period(store);
        history_needs_a_reason_and_is_itself_recorded(store);
        reference_lookup_and_purge(store);
        circumvention_attempts(store);
    }

    /// Five days after `day()`: blocks in the circumvention categories, counted by
    /// what was detected; other blocks left out.
    fn circumvention_attempts(s: &mut dyn Store) {
        let later = 5 * 24 * 60;
        let with_entry = |category: &str, entry: &str| {
            let mut e = event(later, None, "203.0.113.9", "block", Some(category));
            e.entry = Some(entry.to_string());
            e
        };
        s.insert_batch(&[
            with_entry("p2p", "bittorrent"),
            with_entry("p2p", "bittorrent"),
            with_entry("vpn", "ssh"),
            with_entry("tor", "203.0.113.40/32"),
            with_entry("gambling", "casino.example"),
            event(later, None, "x.example", "allow", Some("p2p")),
        ])
        .unwrap();
        let period = Period {
            from: day().from + chrono::Duration::days(5),
            to: day().to + chrono::Duration::days(5),
        };
        assert_eq!(
            s.blocks_matching(
                Dimension::Circumvention,
                period,
                10,
                &BlockFilter::default()
            )
            .unwrap(),
            vec![
                ("p2p · bittorrent".to_string(), 2),
                ("tor · 203.0.113.40/32".to_string(), 1),
                ("vpn · ssh".to_string(), 1),
            ]
        );
    }

    /// Three days after `day()`, so the other checks' counts are untouched.
    fn blocks_by_user(s: &mut dyn Store) {
        let later = 3 * 24 * 60;
        s.insert_batch(&[
            event(
                later,
                Some("mtremblay"),
                "bet.example",
                "block",
                Some("gambling"),
            ),
            event(
                later + 1,
                Some("mtremblay"),
                "bet.example",
                "block",
                Some("gambling"),
            ),
            event(
                later + 2,
                Some("agagnon"),
                "bet.example",
                "block",
                Some("gambling"),
            ),
            event(later + 3, Some("agagnon"), "ok.example", "allow", None),
            event(later + 4, None, "bet.example", "block", Some("gambling")),
        ])
        .unwrap();
        let d = day();
        let three = chrono::Duration::days(3);
        let period = Period {
            from: d.from + three,
            to: d.to + three,
        };
        assert_eq!(
            s.blocks_by(Dimension::User, period, 10).unwrap(),
            vec![("mtremblay".to_string(), 2), ("agagnon".to_string(), 1)]
        );
        assert_eq!(s.purge(period.to).unwrap(), 5);
    }

    fn aggregates_over_a_period(s: &mut dyn Store) {
        s.insert_batch(&[
            event(0, None, "Casino.example", "block", Some("gambling")),
            event(1, None, "casino.example", "block", Some("gambling")),
            event(70, None, "poker.example", "block", Some("gambling")),
            event(2, None, "porn.example", "block", Some("adult")),
            event(3, None, "ok.example", "allow", None),
            event(60 * 30, None, "casino.example", "block", Some("gambling")), // next day
        ])
        .unwrap();
        assert_eq!(s.count().unwrap(), 6);
        assert_eq!(
            s.blocks_by(Dimension::Category, day(), 10).unwrap(),
            vec![("gambling".to_string(), 3), ("adult".to_string(), 1)]
        );
        assert_eq!(
            s.top_blocked_domains(day(), 1).unwrap(),
            vec![("casino.example".to_string(), 2)]
        );
        assert_eq!(
            s.blocks_by(Dimension::Hour, day(), 24).unwrap(),
            vec![
                ("2026-11-23T15:00:00Z".to_string(), 3),
                ("2026-11-23T16:00:00Z".to_string(), 1)
            ]
        );
        assert_eq!(
            s.blocks_by(Dimension::Profile, day(), 10).unwrap(),
            vec![("eleves".to_string(), 4)]
        );
        assert_eq!(
            s.blocks_matching(
                Dimension::Domain,
                day(),
                10,
                &BlockFilter {
                    category: Some("gambling".into()),
                    ..Default::default()
                }
            )
            .unwrap(),
            vec![
                ("casino.example".to_string(), 2),
                ("poker.example".to_string(), 1)
            ]
        );
        let school = |net: &str| BlockFilter {
            networks: vec![net.parse().unwrap()],
            ..Default::default()
        };
        assert_eq!(
            s.blocks_matching(Dimension::Category, day(), 10, &school("10.1.0.0/16"))
                .unwrap()
                .len(),
            2,
            "the events come from 10.1.2.3"
        );
        assert!(
            s.blocks_matching(Dimension::Category, day(), 10, &school("10.2.0.0/16"))
                .unwrap()
                .is_empty()
        );
    }

    fn history_needs_a_reason_and_is_itself_recorded(s: &mut dyn Store) {
        let events: Vec<_> = (0..25)
            .map(|m| event(m, Some("mtremblay"), "site.example", "allow", None))
            .collect();
        s.insert_batch(&events).unwrap();
        s.insert_batch(&[event(0, Some("other"), "x.example", "allow", None)])
            .unwrap();
        let no_reason = HistoryAccess {
            accessed_by: "directrice",
            justification: "because",
        };
        assert!(matches!(
            s.user_history(&no_reason, Some("mtremblay"), day(), None, 10),
            Err(StoreError::JustificationRequired { .. })
        ));
        assert!(
            s.history_accesses(10).unwrap().is_empty(),
            "a refused read leaves no access"
        );
        let access = HistoryAccess {
            accessed_by: "auditeur1",
            justification: "Plainte no 2026-114 du conseil d'établissement",
        };
        let page1 = s
            .user_history(&access, Some("mtremblay"), day(), None, 10)
            .unwrap();
        assert_eq!(page1.len(), 10);
        assert!(
            page1.windows(2).all(|w| w[0].time >= w[1].time),
            "newest first"
        );
        assert!(page1.iter().all(|e| e.user.as_deref() == Some("mtremblay")));
        let rest = s
            .user_history(&access, Some("mtremblay"), day(), Some(page1[9].id), 100)
            .unwrap();
        assert_eq!(rest.len(), 15);
        assert!(rest.iter().all(|e| e.time <= page1[9].time));
        let log = s.history_accesses(10).unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(
            (log[0].accessed_by.as_str(), log[0].subject.as_str()),
            ("auditeur1", "mtremblay")
        );
        assert!(log[0].justification.contains("Plainte"));
        assert_eq!((log[0].from, log[0].to), (day().from, day().to));
        // An export of everyone is an access too, recorded with subject "*".
        let all = s.user_history(&access, None, day(), None, 1000).unwrap();
        assert_eq!(
            all.len(),
            31,
            "the 5 anonymous events of the day and the 26 of the two users"
        );
        assert_eq!(s.history_accesses(1).unwrap()[0].subject, "*");
    }

    fn reference_lookup_and_purge(s: &mut dyn Store) {
        let before = s.count().unwrap();
        let mut ev = event(0, None, "blocked.example", "block", Some("adult"));
        ev.service = "proxy";
        ev.proxy = Some(Box::new(ProxyAudit {
            kind: "http",
            method: "GET".into(),
            host: "blocked.example".into(),
            port: 80,
            reference: Some("R-7F3A".into()),
            status: 403,
            ..Default::default()
        }));
        s.insert_batch(&[
            ev,
            event(-60 * 24 * 100, None, "old.example", "block", Some("adult")),
        ])
        .unwrap();
        let found = s.by_reference("R-7F3A").unwrap().unwrap();
        assert_eq!(found.host, "blocked.example");
        assert_eq!(found.category.as_deref(), Some("adult"));
        let proxy = found.proxy.expect("the proxy part comes back");
        assert_eq!(
            (proxy["method"].as_str(), proxy["status"].as_u64()),
            (Some("GET"), Some(403))
        );
        assert!(s.by_reference("nope").unwrap().is_none());
        let cutoff = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
        assert_eq!(s.purge(cutoff).unwrap(), 1);
        assert_eq!(s.count().unwrap(), before + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_store_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("audit/audit.db")).unwrap();
        conformance::run(&mut s);
        // Reopening finds the same events (durable, schema idempotent).
        let n = s.count().unwrap();
        drop(s);
        let mut again = SqliteStore::open(&dir.path().join("audit/audit.db")).unwrap();
        assert_eq!(again.count().unwrap(), n);
    }

    #[test]
    fn checkpoints_run_on_their_own_thread() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let mut s = SqliteStore::open(&db).unwrap();
        s.checkpoint_elsewhere().unwrap();
        let auto: i64 = s
            .conn
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(auto, 0, "the writer no longer checkpoints itself");
        let before = std::fs::metadata(&db).unwrap().len();
        let events: Vec<AuditEvent> = (0..2_000)
            .map(|i| {
                conformance::event(
                    i % 60,
                    None,
                    &format!("n{i}.example"),
                    "block",
                    Some("adult"),
                )
            })
            .collect();
        s.insert_batch(&events).unwrap();
        // The writer only appended to the WAL; within a second or two the checkpoint
        // thread copies the pages into the database file.
        let grown = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::metadata(&db).unwrap().len() > before
        });
        assert!(grown, "database file still {before} bytes");
        assert_eq!(s.count().unwrap(), 2_000);
    }

    #[test]
    fn a_paced_insert_pauses_every_few_rows_and_keeps_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(&dir.path().join("audit.db")).unwrap();
        let events: Vec<AuditEvent> = (0..100)
            .map(|i| conformance::event(i % 60, None, &format!("p{i}.example"), "allow", None))
            .collect();
        s.set_paced(true);
        let t = std::time::Instant::now();
        s.insert_batch(&events).unwrap();
        // Pauses after rows 32, 64 and 96; a sleep never returns early.
        assert!(t.elapsed() >= 3 * PACE_GAP, "{:?}", t.elapsed());
        assert_eq!(s.count().unwrap(), 100);
        // Unpaced again, the same store takes the next batch in one go.
        s.set_paced(false);
        s.insert_batch(&events[..10]).unwrap();
        assert_eq!(s.count().unwrap(), 110);
    }

    #[test]
    fn unwritable_path_is_a_clear_error() {
        let err = SqliteStore::open(Path::new("/proc/vigie/audit.db"))
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("audit store /proc/vigie/audit.db:"),
            "{err}"
        );
    }
}
