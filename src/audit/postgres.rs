//! The PostgreSQL audit store, for a school board that centralises the records of
//! many schools in one database. Same schema and behaviour as the SQLite store
//! (checked by the same conformance suite); synchronous, driven by the writer from
//! a blocking thread, never from the hot path.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::AuditEvent;
use super::store::{
    BlockFilter, Dimension, HistoryAccess, HistoryAccessRecord, Period, Store, StoreError,
    StoredEvent, check_justification, from_ms, host_of, ms,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS vigie_events (
    id          BIGSERIAL PRIMARY KEY,
    time_ms     BIGINT NOT NULL,
    service     TEXT NOT NULL,
    client_ip   TEXT NOT NULL,
    username    TEXT,
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
    latency_us  BIGINT NOT NULL,
    reference   TEXT,
    proxy       TEXT
);
CREATE INDEX IF NOT EXISTS vigie_events_time ON vigie_events(time_ms);
CREATE INDEX IF NOT EXISTS vigie_events_verdict_time ON vigie_events(verdict, time_ms);
CREATE INDEX IF NOT EXISTS vigie_events_user_time ON vigie_events(username, time_ms) WHERE username IS NOT NULL;
CREATE INDEX IF NOT EXISTS vigie_events_reference ON vigie_events(reference) WHERE reference IS NOT NULL;
CREATE TABLE IF NOT EXISTS vigie_history_access (
    id            BIGSERIAL PRIMARY KEY,
    time_ms       BIGINT NOT NULL,
    accessed_by   TEXT NOT NULL,
    subject       TEXT NOT NULL,
    justification TEXT NOT NULL,
    from_ms       BIGINT NOT NULL,
    to_ms         BIGINT NOT NULL
);
";

const COLUMNS: &str = "id, time_ms, service, client_ip, username, profile, target, host, verdict, category, rule, entry, reference, proxy";

pub struct PgStore {
    client: Client,
    /// The connection string without its password, for messages.
    name: String,
    /// The connection string as configured, to connect again (never shown).
    url: String,
    /// TLS for the connection (`sslmode=require`), kept for reconnections.
    tls: Option<MakeRustlsConnect>,
    /// After a failed reconnection, no other is tried before this.
    retry_at: Option<Instant>,
    /// Wait after the next failed reconnection (doubles up to [`RECONNECT_MAX`]).
    backoff: Duration,
}

/// First wait after a failed reconnection; it doubles at each failure.
const RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Longest wait between two reconnections while the server stays down.
const RECONNECT_MAX: Duration = Duration::from_secs(30);

fn row_to_event(r: &postgres::Row) -> Result<StoredEvent, postgres::Error> {
    Ok(StoredEvent {
        id: r.try_get(0)?,
        time: from_ms(r.try_get(1)?),
        service: r.try_get(2)?,
        client_ip: r.try_get(3)?,
        user: r.try_get(4)?,
        profile: r.try_get(5)?,
        target: r.try_get(6)?,
        host: r.try_get(7)?,
        verdict: r.try_get(8)?,
        category: r.try_get(9)?,
        rule: r.try_get(10)?,
        entry: r.try_get(11)?,
        reference: r.try_get(12)?,
        proxy: super::store::proxy_json(r.try_get(13)?),
    })
}

impl PgStore {
    /// Connects (`host=… port=… user=… dbname=…` or a `postgresql://` URL) and
    /// creates the schema if needed. With `sslmode=require` in the connection
    /// string the connection is TLS and the server's certificate is verified
    /// (system CAs plus `ca_file`, the name or address of `host`); otherwise it is
    /// plain, which suits a Unix socket or loopback only.
    pub fn connect(url: &str, ca_file: Option<&Path>) -> Result<Self, StoreError> {
        let name = redact(url);
        let tls = tls_for(url, ca_file).map_err(|message| StoreError::Postgres {
            name: name.clone(),
            message,
        })?;
        let client = open(url, tls.clone()).map_err(|e| pg_err(&name, e))?;
        Ok(PgStore {
            client,
            name,
            tls,
            url: url.to_string(),
            retry_at: None,
            backoff: RECONNECT_MIN,
        })
    }

    /// The connection, made again first if it was lost (a server restart, a
    /// network cut): a long-running writer or web app must not need a restart of
    /// its own. While the server stays down, one attempt per backoff period; the
    /// calls in between fail at once.
    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.is_closed() {
            if let Some(at) = self.retry_at
                && Instant::now() < at
            {
                return Err(StoreError::Postgres {
                    name: self.name.clone(),
                    message: format!(
                        "connection lost; next reconnection in {} ms",
                        at.saturating_duration_since(Instant::now()).as_millis()
                    ),
                });
            }
            match open(&self.url, self.tls.clone()) {
                Ok(c) => {
                    tracing::info!("audit store {}: reconnected", self.name);
                    self.client = c;
                    self.retry_at = None;
                    self.backoff = RECONNECT_MIN;
                }
                Err(e) => {
                    self.retry_at = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(RECONNECT_MAX);
                    return Err(self.err(e));
                }
            }
        }
        Ok(&mut self.client)
    }

    /// Whether the server sees this session encrypted (`pg_stat_ssl`).
    pub fn session_uses_tls(&mut self) -> Result<bool, StoreError> {
        let row = self
            .client()?
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .map_err(|e| pg_err(&self.name, e))?;
        row.try_get(0).map_err(|e| pg_err(&self.name, e))
    }

    fn err(&self, e: postgres::Error) -> StoreError {
        pg_err(&self.name, e)
    }
}

/// The TLS client for `url`: one when its `sslmode` is `require`, none otherwise
/// (`prefer`, the default, then means plain: a TLS attempt that cannot be verified
/// would only fall back anyway).
fn tls_for(url: &str, ca_file: Option<&Path>) -> Result<Option<MakeRustlsConnect>, String> {
    let cfg: postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    if cfg.get_ssl_mode() != postgres::config::SslMode::Require {
        return Ok(None);
    }
    let tls = crate::tls_roots::client_config(ca_file, "audit.postgres_ca_file")?;
    Ok(Some(MakeRustlsConnect::new(tls)))
}

/// A connection to `url` with the schema in place.
fn open(url: &str, tls: Option<MakeRustlsConnect>) -> Result<Client, postgres::Error> {
    let mut client = match tls {
        Some(tls) => Client::connect(url, tls)?,
        None => Client::connect(url, NoTls)?,
    };
    client.batch_execute(SCHEMA)?;
    Ok(client)
}

fn pg_err(name: &str, e: postgres::Error) -> StoreError {
    // The driver's message says what failed ("error performing TLS handshake"),
    // its sources why ("invalid peer certificate: UnknownIssuer").
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    StoreError::Postgres {
        name: name.to_string(),
        message,
    }
}

/// Drops `password=…` and URL passwords from a connection string.
fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
    {
        let user = userinfo.split(':').next().unwrap_or("");
        return format!("{scheme}://{user}@{host}");
    }
    url.split_whitespace()
        .filter(|kv| !kv.starts_with("password="))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Store for PgStore {
    fn insert_batch(&mut self, events: &[AuditEvent]) -> Result<(), StoreError> {
        let name = self.name.clone();
        let err = |e| pg_err(&name, e);
        let mut tx = self.client()?.transaction().map_err(err)?;
        let stmt = tx
            .prepare(
                "INSERT INTO vigie_events (time_ms, service, client_ip, username, identity, profile, target, host, qtype,
                 verdict, category, rule, entry, via, latency_us, reference, proxy)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
            )
            .map_err(err)?;
        for ev in events {
            let proxy = ev
                .proxy
                .as_ref()
                .and_then(|p| serde_json::to_string(p).ok());
            let reference = ev.proxy.as_ref().and_then(|p| p.reference.clone());
            tx.execute(
                &stmt,
                &[
                    &ms(ev.time),
                    &ev.service,
                    &ev.client_ip.to_string(),
                    &ev.user,
                    &ev.identity,
                    &&*ev.profile,
                    &ev.target,
                    &host_of(ev),
                    &ev.qtype.as_deref(),
                    &ev.verdict,
                    &ev.category.as_deref(),
                    &&*ev.rule,
                    &ev.entry,
                    &ev.via,
                    &(ev.latency_us as i64),
                    &reference,
                    &proxy,
                ],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    fn purge_chunk(&mut self, before: DateTime<Utc>, limit: usize) -> Result<usize, StoreError> {
        let n = self
            .client()?
            .execute(
                "DELETE FROM vigie_events WHERE id IN
                 (SELECT id FROM vigie_events WHERE time_ms < $1 ORDER BY time_ms LIMIT $2)",
                &[&ms(before), &(limit as i64)],
            )
            .map_err(|e| self.err(e))?;
        Ok(n as usize)
    }

    fn blocks_matching(
        &mut self,
        dim: Dimension,
        period: Period,
        limit: usize,
        filter: &BlockFilter,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let (circ_key, circ_only) = Dimension::circumvention_sql();
        let (key, order) = match dim {
            Dimension::User => ("username", "n DESC, k"),
            Dimension::Category => ("COALESCE(category, '')", "n DESC, k"),
            Dimension::Domain => ("host", "n DESC, k"),
            Dimension::Profile => ("profile", "n DESC, k"),
            Dimension::Circumvention => (circ_key.as_str(), "n DESC, k"),
            Dimension::Hour => (
                "to_char(date_trunc('hour', to_timestamp(time_ms / 1000.0) AT TIME ZONE 'UTC'), 'YYYY-MM-DD\"T\"HH24:00:00\"Z\"')",
                "k",
            ),
        };
        let only_users = match dim {
            Dimension::User => " AND username IS NOT NULL",
            Dimension::Circumvention => circ_only.as_str(),
            _ => "",
        };
        let sql = format!(
            "SELECT {key} AS k, COUNT(*) AS n FROM vigie_events
             WHERE verdict = 'block' AND time_ms >= $1 AND time_ms < $2{only_users}
               AND ($4::text IS NULL OR client_ip::inet <<= ANY(string_to_array($4::text, ',')::inet[]))
               AND ($5::text IS NULL OR COALESCE(category, '') = $5)
               AND ($6::text IS NULL OR profile = $6)
               AND ($7::text IS NULL OR host = $7)
             GROUP BY k ORDER BY {order} LIMIT $3"
        );
        let rows = self
            .client()?
            .query(
                &sql,
                &[
                    &ms(period.from),
                    &ms(period.to),
                    &(limit as i64),
                    &filter.networks_param(),
                    &filter.category,
                    &filter.profile,
                    &filter.host,
                ],
            )
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| Ok((r.try_get::<_, String>(0)?, r.try_get::<_, i64>(1)? as u64)))
            .collect::<Result<_, postgres::Error>>()
            .map_err(|e| self.err(e))
    }

    fn user_history(
        &mut self,
        access: &HistoryAccess<'_>,
        user: Option<&str>,
        period: Period,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        check_justification(access)?;
        let name = self.name.clone();
        let err = |e| pg_err(&name, e);
        let mut tx = self.client()?.transaction().map_err(err)?;
        tx.execute(
            "INSERT INTO vigie_history_access (time_ms, accessed_by, subject, justification, from_ms, to_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &ms(Utc::now()),
                &access.accessed_by,
                &user.unwrap_or("*"),
                &access.justification.trim(),
                &ms(period.from),
                &ms(period.to),
            ],
        )
        .map_err(err)?;
        let rows = tx
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM vigie_events WHERE ($1::text IS NULL OR username = $1) AND time_ms >= $2 AND time_ms < $3 AND id < $4
                     ORDER BY time_ms DESC, id DESC LIMIT $5"
                ),
                &[&user, &ms(period.from), &ms(period.to), &before.unwrap_or(i64::MAX), &(limit as i64)],
            )
            .map_err(err)?;
        let events = rows
            .iter()
            .map(row_to_event)
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(events)
    }

    fn history_accesses(&mut self, limit: usize) -> Result<Vec<HistoryAccessRecord>, StoreError> {
        let rows = self
            .client()?
            .query(
                "SELECT time_ms, accessed_by, subject, justification, from_ms, to_ms FROM vigie_history_access ORDER BY id DESC LIMIT $1",
                &[&(limit as i64)],
            )
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                Ok(HistoryAccessRecord {
                    time: from_ms(r.try_get(0)?),
                    accessed_by: r.try_get(1)?,
                    subject: r.try_get(2)?,
                    justification: r.try_get(3)?,
                    from: from_ms(r.try_get(4)?),
                    to: from_ms(r.try_get(5)?),
                })
            })
            .collect::<Result<_, postgres::Error>>()
            .map_err(|e| self.err(e))
    }

    fn by_reference(&mut self, reference: &str) -> Result<Option<StoredEvent>, StoreError> {
        let row = self
            .client()?
            .query_opt(
                &format!("SELECT {COLUMNS} FROM vigie_events WHERE reference = $1"),
                &[&reference],
            )
            .map_err(|e| self.err(e))?;
        row.as_ref()
            .map(row_to_event)
            .transpose()
            .map_err(|e| self.err(e))
    }

    fn count(&mut self) -> Result<u64, StoreError> {
        let row = self
            .client()?
            .query_one("SELECT COUNT(*) FROM vigie_events", &[])
            .map_err(|e| self.err(e))?;
        row.try_get::<_, i64>(0)
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgresql://vigie:s3cret@db:5432/audit"),
            "postgresql://vigie@db:5432/audit"
        );
        assert_eq!(
            redact("host=db user=vigie password=s3cret dbname=a"),
            "host=db user=vigie dbname=a"
        );
    }
}
