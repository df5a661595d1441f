//! Record: every decision becomes an [`AuditEvent`] pushed onto a bounded queue, and
//! one writer task drains the queue in batches to the store.
//!
//! The hot path never waits on the disk: [`AuditSink::record`] is a non-blocking
//! `try_send`, and when the queue is full the event is counted in
//! `vigie_audit_dropped_total` and logged (rate-limited), never silently lost. The
//! writer keeps the queryable store (SQLite or PostgreSQL) and the JSON-lines copy.
//! A store that fails (full disk, server restart, even a panic) is retried, and
//! reopened, with a backoff; events wait for it in a bounded buffer, and those that
//! cannot are counted in `vigie_audit_write_errors_total` and spilled to the log.
//! Retention runs between batches, a chunk at a time.
//! This module does not decide what is worth recording: callers do.

use std::borrow::Cow;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics;

pub mod notices;
pub mod postgres;
pub mod store;

/// Events the queue holds before new ones are dropped: a fifth of a second of a
/// filter blocking 80,000 queries a second, a few megabytes at most. A bigger queue
/// only turns a writer that cannot keep up into memory growth before the drops.
pub const QUEUE_CAPACITY: usize = 16_384;
/// Most events written per batch (one transaction).
const BATCH: usize = 4_096;
/// How long the writer lets a batch fill when events come slower than a full batch
/// at a time: one transaction (and one thread hop) per this window instead of one
/// per handful of events. At the queue's worst case (80,000 events/s) a window is
/// 4,000 events, well inside the queue; it is also the most a `kill -9` can lose
/// beyond the batch being written (documented: under one second).
const LINGER: Duration = Duration::from_millis(50);
/// Events written per store transaction (a batch is written in chunks).
const STORE_CHUNK: usize = 256;
/// Events kept for the store while it fails (a PostgreSQL restart, a full disk),
/// written first once it works again; past this the oldest are counted as write
/// errors and spilled to the log.
const RETRY_CAPACITY: usize = QUEUE_CAPACITY;
/// First wait before trying a failed store again; it doubles at each failure.
const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest wait between two tries while the store stays unavailable.
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Rows one retention step deletes: a few milliseconds of SQLite, so the writer
/// drains the queue between two steps however large the backlog.
const PURGE_CHUNK: usize = 2_000;
/// At most one "store unavailable" error line per this long.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Whether a batch of `batch` events, with `queued` more waiting, is written paced
/// ([`store::Store::set_paced`]): only under a light load — at most half a batch per
/// linger window, under 40,000 events/s — and a shallow queue, so pacing costs
/// latency to the audit trail, never capacity. Measured: the proxy's p99 at 4
/// connections with the writer on the same core, median of 5–6 rounds 1.62–1.68 →
/// 1.20–1.45 ms in three quiet A/B runs (no difference in a fourth, on a busy host),
/// req/s unchanged (benches/RESULTS.md).
fn pace(batch: usize, queued: usize) -> bool {
    batch <= BATCH / 2 && queued < QUEUE_CAPACITY / 8
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One decision, as recorded.
#[derive(Clone, Debug, Serialize)]
pub struct AuditEvent {
    pub time: DateTime<Utc>,
    /// `dns` or `proxy`.
    pub service: &'static str,
    pub client_ip: IpAddr,
    /// The identified user, when someone is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// How the identity was established (`network`, `default`, …).
    pub identity: &'static str,
    /// Shared with the snapshot (a pointer copy per event, not a string).
    pub profile: Arc<str>,
    /// The name (DNS) or URL/host (proxy) asked for.
    pub target: String,
    /// DNS record type (`A`, `HTTPS`, …); absent for the proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qtype: Option<Cow<'static, str>>,
    /// `allow`, `block` or `safe_search`.
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<Arc<str>>,
    /// The rule that decided, in words (`eleves: block gambling`).
    pub rule: Arc<str>,
    /// The list entry that matched (`casino.com`), if a list did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// For a name blocked through its CNAME chain: the blocked name in the chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Time to answer, microseconds.
    pub latency_us: u64,
    /// What only the proxy knows (method, port, status, bytes…); absent for DNS.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    /// Boxed: DNS events, the most numerous, do not carry its ~200 bytes.
    pub proxy: Option<Box<ProxyAudit>>,
}

/// The proxy's part of an [`AuditEvent`], flattened into the same JSON object.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProxyAudit {
    /// Which door: `http`, `connect`, `transparent_http`, `transparent_tls`.
    pub kind: &'static str,
    pub method: String,
    pub host: String,
    pub port: u16,
    /// Path and query, plain HTTP only (a tunnel's path is encrypted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// HTTP status sent to the client (200 for an established tunnel); 403 for a
    /// tunnel refused on its first bytes (SNI, not TLS), which the client saw as
    /// a 200 to its CONNECT followed by a TLS alert or a close.
    pub status: u16,
    /// Body bytes from the client (HTTP) or all bytes client → origin (tunnels).
    pub bytes_up: u64,
    /// Body bytes to the client (HTTP) or all bytes origin → client (tunnels).
    pub bytes_down: u64,
    pub duration_ms: u64,
    /// The TLS server name the client sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// A non-TLS protocol seen in a tunnel (`ssh`, `openvpn`, `bittorrent`…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    /// Why the proxy refused on its own (`client_network`, `auth`, `internal`…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<&'static str>,
    /// The reference shown on the block or error page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// A blocked request as the admin app's live view shows it: published by
/// [`AuditSink::record`] only while someone watches.
#[derive(Clone, Debug, Serialize)]
pub struct LiveBlock {
    pub time: DateTime<Utc>,
    pub service: &'static str,
    pub client_ip: IpAddr,
    pub user: Option<String>,
    pub profile: String,
    /// The host (or name) that was blocked.
    pub host: String,
    pub category: Option<String>,
}

/// Blocks the live view may fall behind by before its oldest are skipped.
const LIVE_CAPACITY: usize = 256;

/// The sending side of the audit queue; cheap to clone, never blocks.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditEvent>,
    /// Blocks for the admin app's live view (dropped when nobody listens).
    live: std::sync::Arc<Live>,
}

/// The live view's channel, and how many watch it: the hot path reads the count
/// (one relaxed atomic load) instead of the channel's lock.
struct Live {
    tx: tokio::sync::broadcast::Sender<LiveBlock>,
    watchers: AtomicU64,
}

/// A live-view subscription; unsubscribes when dropped.
pub struct LiveBlocks {
    rx: tokio::sync::broadcast::Receiver<LiveBlock>,
    live: std::sync::Arc<Live>,
}

impl LiveBlocks {
    /// The next block; `None` when the sink is gone. Blocks missed by a viewer that
    /// fell behind are skipped.
    pub async fn recv(&mut self) -> Option<LiveBlock> {
        loop {
            match self.rx.recv().await {
                Ok(b) => return Some(b),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Drop for LiveBlocks {
    fn drop(&mut self) {
        self.live.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Last time a "queue full" warning was logged (ms since process start), so a flood
/// of drops logs once a second, not once an event.
static LAST_DROP_LOG_MS: AtomicU64 = AtomicU64::new(0);

impl AuditSink {
    /// Queues `event`; when the queue is full, counts and drops it. A block is also
    /// offered to the live view, only when a viewer is subscribed (one atomic load
    /// otherwise).
    pub fn record(&self, event: AuditEvent) {
        if event.verdict == "block" && self.live.watchers.load(Ordering::Relaxed) > 0 {
            let _ = self.live.tx.send(LiveBlock {
                time: event.time,
                service: event.service,
                client_ip: event.client_ip,
                user: event.user.clone(),
                profile: event.profile.to_string(),
                host: store::host_of(&event),
                category: event.category.as_deref().map(str::to_string),
            });
        }
        match self.tx.try_send(event) {
            Ok(()) => metrics::AUDIT_EVENTS_TOTAL.inc(),
            Err(mpsc::error::TrySendError::Full(_)) | Err(mpsc::error::TrySendError::Closed(_)) => {
                metrics::AUDIT_DROPPED_TOTAL.inc();
                let now = process_ms();
                let last = LAST_DROP_LOG_MS.load(Ordering::Relaxed);
                if now.saturating_sub(last) >= 1_000
                    && LAST_DROP_LOG_MS
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(
                        dropped_total = metrics::AUDIT_DROPPED_TOTAL.get(),
                        "audit queue full: events dropped (see vigie_audit_dropped_total)"
                    );
                }
            }
        }
    }

    /// A sink whose events go nowhere but into the returned receiver (tests).
    pub fn channel(capacity: usize) -> (AuditSink, mpsc::Receiver<AuditEvent>) {
        let (tx, rx) = mpsc::channel(capacity);
        let (live, _) = tokio::sync::broadcast::channel(LIVE_CAPACITY);
        let live = std::sync::Arc::new(Live {
            tx: live,
            watchers: AtomicU64::new(0),
        });
        (AuditSink { tx, live }, rx)
    }

    /// Blocks recorded from now on, as they happen (the admin app's live view).
    pub fn subscribe_blocks(&self) -> LiveBlocks {
        self.live.watchers.fetch_add(1, Ordering::Relaxed);
        LiveBlocks {
            rx: self.live.tx.subscribe(),
            live: self.live.clone(),
        }
    }
}

fn process_ms() -> u64 {
    static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64 + 1_000
}

/// Where events are written besides the store.
enum Output {
    /// The JSON-lines copy (`[audit] jsonl = true`), for log shippers.
    File(tokio::io::BufWriter<tokio::fs::File>),
    /// Neither a store nor a file: events go to the log (stderr) under target
    /// `vigie::audit`.
    Log,
    /// The store only.
    Nothing,
}

/// Opens the configured store again (after a panic, or when it could not be opened
/// at start): set by [`attach_store`].
type Reopen = Arc<dyn Fn() -> Result<Box<dyn store::Store>, store::StoreError> + Send + Sync>;

/// The single task that owns the store and writes events in batches.
pub struct Writer {
    rx: mpsc::Receiver<AuditEvent>,
    out: Output,
    /// The queryable store (SQLite or PostgreSQL). `None` while a batch is being
    /// written on a blocking thread, when no store is configured, or while a
    /// configured one is being reopened (`reopen`).
    store: Option<Box<dyn store::Store>>,
    /// Opens the configured store; `None` when none is configured.
    reopen: Option<Reopen>,
    /// Events a failed write left for the store, oldest first (at most
    /// [`RETRY_CAPACITY`]), written before anything newer.
    retry: Vec<AuditEvent>,
    /// After a failure, the store is not tried again before this.
    retry_at: Option<tokio::time::Instant>,
    /// Wait after the next failure.
    backoff: Duration,
    /// When the last "store unavailable" error was logged.
    logged_at: Option<Instant>,
    /// Events older than this are purged, hourly.
    retention: Option<chrono::Duration>,
    /// A retention purge under way: events before this go, a chunk at a time.
    purging: Option<Purge>,
}

/// A retention purge under way.
struct Purge {
    before: DateTime<Utc>,
    deleted: usize,
}

/// How often retention runs.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// Opens the configured store (SQLite under `data_dir` by default, or PostgreSQL)
/// and attaches it to `writer`, with the configured retention.
/// If it cannot be opened now, the error is returned and the writer keeps trying
/// (with a backoff), keeping events for it meanwhile.
pub fn attach_store(
    writer: &mut Writer,
    settings: &crate::config::AuditSettings,
    data_dir: Option<&Path>,
) -> Result<(), store::StoreError> {
    writer.retention = Some(chrono::Duration::days(i64::from(settings.retention_days)));
    if !store::configured(settings, data_dir) {
        return Ok(());
    }
    let (settings, dir) = (settings.clone(), data_dir.map(Path::to_path_buf));
    let reopen: Reopen = Arc::new(move || {
        let mut opened =
            store::open(&settings, dir.as_deref())?.ok_or(store::StoreError::NotConfigured)?;
        if let Err(e) = opened.take_writer_role() {
            // Not fatal: the writer then checkpoints as SQLite does by default.
            tracing::warn!("audit store: checkpoints stay on the writer's thread ({e})");
        }
        Ok(opened)
    });
    writer.reopen = Some(reopen.clone());
    let opened = reopen()?;
    writer.attach(opened);
    Ok(())
}

/// The `[audit]` settings that differ between `old` and `new` but are read only
/// at start (the writer's store and retention, the JSON-lines copy, the admin
/// app's store and pseudonyms): a reload accepts them, and says they wait for a
/// restart.
pub fn restart_only_changes(
    old: &crate::config::AuditSettings,
    new: &crate::config::AuditSettings,
) -> Vec<&'static str> {
    [
        ("audit.store", old.store != new.store),
        ("audit.postgres_url", old.postgres_url != new.postgres_url),
        (
            "audit.postgres_ca_file",
            old.postgres_ca_file != new.postgres_ca_file,
        ),
        (
            "audit.retention_days",
            old.retention_days != new.retention_days,
        ),
        ("audit.jsonl", old.jsonl != new.jsonl),
        ("audit.pseudonymize", old.pseudonymize != new.pseudonymize),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// Creates the queue and its writer. `path` is the JSON-lines file (created, then
/// appended to); `None` logs events instead.
pub async fn open(path: Option<&Path>) -> Result<(AuditSink, Writer), AuditError> {
    let out = match path {
        Some(p) => {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|source| AuditError::Open {
                        path: p.to_path_buf(),
                        source,
                    })?;
            }
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .await
                .map_err(|source| AuditError::Open {
                    path: p.to_path_buf(),
                    source,
                })?;
            Output::File(tokio::io::BufWriter::new(file))
        }
        None => Output::Log,
    };
    let (sink, rx) = AuditSink::channel(QUEUE_CAPACITY);
    Ok((sink, Writer::new(rx, out)))
}

impl Writer {
    fn new(rx: mpsc::Receiver<AuditEvent>, out: Output) -> Writer {
        Writer {
            rx,
            out,
            store: None,
            reopen: None,
            retry: Vec::new(),
            retry_at: None,
            backoff: RETRY_MIN,
            logged_at: None,
            retention: None,
            purging: None,
        }
    }

    /// Writes batches until `cancel` fires, then drains what is queued and flushes,
    /// so a clean shutdown loses nothing that was accepted.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut purge = tokio::time::interval(PURGE_EVERY);
        loop {
            let retry_at = self.retry_at.unwrap_or_else(tokio::time::Instant::now);
            let n = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = purge.tick() => {
                    self.start_purge();
                    continue;
                }
                n = self.rx.recv_many(&mut batch, BATCH) => n,
                // Events kept for a failed store are retried on time even when no
                // new event comes to carry them.
                _ = tokio::time::sleep_until(retry_at), if !self.retry.is_empty() => {
                    let spare = self.write_store(Vec::new()).await;
                    drop(spare);
                    continue;
                }
                // A purge under way goes on while nothing else is to be done.
                _ = std::future::ready(()), if self.purging.is_some() && self.store.is_some() => {
                    self.purge_step().await;
                    continue;
                }
            };
            if n == 0 {
                break;
            }
            if batch.len() < BATCH {
                // A light load: let the batch fill for a moment (one wake-up, not
                // one per event), then take what came.
                tokio::select! {
                    _ = tokio::time::sleep(LINGER) => {}
                    _ = cancel.cancelled() => {}
                }
                while batch.len() < BATCH {
                    match self.rx.try_recv() {
                        Ok(ev) => batch.push(ev),
                        Err(_) => break,
                    }
                }
            }
            self.write(&mut batch).await;
            // One chunk of a purge under way per batch written: however old the
            // backlog, the queue is drained between two chunks.
            if self.purging.is_some() && self.store.is_some() {
                self.purge_step().await;
            }
        }
        // Stop accepting, then write what was accepted.
        self.rx.close();
        while let Ok(ev) = self.rx.try_recv() {
            batch.push(ev);
            if batch.len() >= BATCH {
                self.write(&mut batch).await;
            }
        }
        self.write(&mut batch).await;
        // A last try for what a failing store was given, whatever the backoff; what
        // it still cannot take is counted and goes to the log.
        if !self.retry.is_empty() {
            self.retry_at = None;
            drop(self.write_store(Vec::new()).await);
            let lost = std::mem::take(&mut self.retry);
            if !lost.is_empty() {
                metrics::AUDIT_WRITE_ERRORS_TOTAL.inc_by(lost.len() as u64);
                tracing::error!(
                    events = lost.len(),
                    "audit store unavailable at shutdown, events spilled to the log"
                );
                spill(&lost);
            }
        }
        if let Output::File(f) = &mut self.out
            && let Err(e) = f.flush().await
        {
            tracing::error!("audit log flush failed at shutdown: {e}");
        }
        // Closed on a blocking thread: the PostgreSQL client blocks on a runtime of
        // its own when dropped, which panics on one of tokio's.
        if let Some(store) = self.store.take() {
            let _ = tokio::task::spawn_blocking(move || drop(store)).await;
        }
    }

    /// A store (re)opened: it holds the events, the log need not copy them.
    fn attach(&mut self, store: Box<dyn store::Store>) {
        self.store = Some(store);
        if matches!(self.out, Output::Log) {
            // The store holds them: the log would only be a second, slower copy.
            self.out = Output::Nothing;
        }
    }

    /// Starts a retention purge (hourly); [`Writer::purge_step`] does the work.
    fn start_purge(&mut self) {
        if let Some(keep) = self.retention
            && self.purging.is_none()
        {
            self.purging = Some(Purge {
                before: Utc::now() - keep,
                deleted: 0,
            });
        }
    }

    /// Deletes one chunk of events past retention, on a blocking thread, between
    /// batches (so SQLite never sees two writers and the queue is drained between
    /// two chunks).
    async fn purge_step(&mut self) {
        let Some(before) = self.purging.as_ref().map(|p| p.before) else {
            return;
        };
        let Some(mut store) = self.store.take() else {
            return; // resumes once the store is back
        };
        let r = tokio::task::spawn_blocking(move || {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                store.purge_chunk(before, PURGE_CHUNK)
            })) {
                Ok(r) => (Some(store), r.map_err(|e| e.to_string())),
                // A store that panicked is not trusted with another call.
                Err(_) => (None, Err("the store panicked".to_string())),
            }
        })
        .await
        .unwrap_or_else(|e| (None, Err(format!("retention task failed: {e}"))));
        let (store, r) = r;
        self.store = store;
        match r {
            Ok(n) => {
                metrics::AUDIT_PURGED_TOTAL.inc_by(n as u64);
                let done = n < PURGE_CHUNK;
                if let Some(p) = &mut self.purging {
                    p.deleted += n;
                    if done {
                        if p.deleted > 0 {
                            tracing::info!(
                                purged = p.deleted,
                                "audit retention: events before {before} deleted"
                            );
                        }
                        self.purging = None;
                    }
                }
            }
            Err(e) => {
                // Tried again at the next hourly run.
                tracing::error!("audit retention failed: {e}");
                self.purging = None;
                if self.store.is_none() {
                    self.retry_at = None; // reopened at the next write
                }
            }
        }
    }

    /// Keeps `events` for the store, within [`RETRY_CAPACITY`]: the oldest past it
    /// are counted as write errors and go to the log.
    fn keep_for_retry(&mut self, events: Vec<AuditEvent>) {
        self.retry.extend(events);
        if self.retry.len() > RETRY_CAPACITY {
            let over = self.retry.len() - RETRY_CAPACITY;
            let lost: Vec<AuditEvent> = self.retry.drain(..over).collect();
            metrics::AUDIT_WRITE_ERRORS_TOTAL.inc_by(over as u64);
            if self.should_log() {
                tracing::error!(
                    events = over,
                    "audit store unavailable for too long: events spilled to the log (see vigie_audit_write_errors_total)"
                );
            }
            spill(&lost);
        }
    }

    /// A failed write or reopen: the next try waits, longer each time.
    fn failed(&mut self, why: &str) {
        self.retry_at = Some(tokio::time::Instant::now() + self.backoff);
        if self.should_log() {
            tracing::error!(
                kept = self.retry.len(),
                "audit store unavailable ({why}): events kept for it, tried again in {:?}",
                self.backoff
            );
        }
        self.backoff = (self.backoff * 2).min(RETRY_MAX);
    }

    /// Whether a "store unavailable" error may be logged now (rate limit).
    fn should_log(&mut self) -> bool {
        let now = Instant::now();
        if self
            .logged_at
            .is_some_and(|t| now.duration_since(t) < ERROR_LOG_EVERY)
        {
            return false;
        }
        self.logged_at = Some(now);
        true
    }

    /// Opens the configured store again, on a blocking thread.
    async fn reopen(&mut self) {
        let Some(reopen) = self.reopen.clone() else {
            return;
        };
        match tokio::task::spawn_blocking(move || reopen()).await {
            Ok(Ok(store)) => {
                tracing::info!("audit store open again");
                self.attach(store);
            }
            Ok(Err(e)) => self.failed(&e.to_string()),
            Err(e) => self.failed(&format!("reopen task failed: {e}")),
        }
    }

    /// Writes `events`, after any kept from a failed write, to the store on a
    /// blocking thread. A failure (full disk, read-only file, database down, even a
    /// panic) keeps them for a retry after a backoff — a panicked store is
    /// reopened —, and filtering carries on: nothing is lost without being counted.
    /// Takes the batch by value (no copy) and gives a vector back for reuse.
    async fn write_store(&mut self, events: Vec<AuditEvent>) -> Vec<AuditEvent> {
        if self.reopen.is_none() && self.store.is_none() && self.retry.is_empty() {
            return events; // no store configured
        }
        let mut events = events;
        if !self.retry.is_empty() {
            let mut all = std::mem::take(&mut self.retry);
            all.append(&mut events);
            events = all;
        }
        if events.is_empty() {
            return events;
        }
        if self
            .retry_at
            .is_some_and(|t| tokio::time::Instant::now() < t)
        {
            self.keep_for_retry(events);
            return Vec::new();
        }
        if self.store.is_none() {
            self.reopen().await;
        }
        let Some(mut store) = self.store.take() else {
            if self.reopen.is_none() {
                self.failed("no store to reopen");
            }
            self.keep_for_retry(events);
            return Vec::new();
        };
        let n = events.len();
        let paced = pace(n, self.rx.len());
        let written = tokio::task::spawn_blocking(move || {
            store.set_paced(paced);
            // One transaction per chunk, so no transaction holds a whole batch. Where
            // the writer shares a core with the services (a small appliance, a
            // pinned benchmark) what actually hands the core over under light load
            // is the paced insert inside each chunk (`set_paced` above); the yield
            // between chunks barely does under EEVDF (benches/RESULTS.md).
            let mut failure = None;
            let mut trusted = true;
            let mut stored = 0;
            for chunk in events.chunks(STORE_CHUNK) {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    store.insert_batch(chunk)
                }));
                match r {
                    Ok(Ok(())) => stored += chunk.len(),
                    Ok(Err(e)) => {
                        failure = Some(e.to_string());
                        break;
                    }
                    // A store that panicked is not trusted with another call: it
                    // is dropped and the configured one opened again.
                    Err(_) => {
                        failure = Some("the store panicked".to_string());
                        trusted = false;
                        break;
                    }
                }
                if stored < events.len() {
                    std::thread::yield_now();
                }
            }
            let rest = events.split_off(stored);
            // The events are freed here, not on the runtime's thread: a batch is
            // thousands of strings, better not freed between two requests.
            events.clear();
            (trusted.then_some(store), failure, rest, events)
        })
        .await;
        match written {
            Ok((store, failure, rest, spare)) => {
                self.store = store;
                match failure {
                    None => {
                        self.retry_at = None;
                        self.backoff = RETRY_MIN;
                    }
                    Some(why) => {
                        self.keep_for_retry(rest);
                        self.failed(&why);
                    }
                }
                spare
            }
            Err(e) => {
                // The task itself is gone (the runtime shutting down), with its
                // events: counted, and the store opened again next time.
                metrics::AUDIT_WRITE_ERRORS_TOTAL.inc_by(n as u64);
                tracing::error!(events = n, "audit store task failed, events lost: {e}");
                self.failed(&e.to_string());
                Vec::new()
            }
        }
    }

    async fn write(&mut self, batch: &mut Vec<AuditEvent>) {
        if batch.is_empty() {
            return;
        }
        if matches!(self.out, Output::Nothing) {
            *batch = self.write_store(std::mem::take(batch)).await;
            batch.clear();
            return;
        }
        let mut buf = Vec::with_capacity(batch.len() * 256);
        for ev in batch.iter() {
            // Serialising a struct of strings and numbers cannot fail.
            if serde_json::to_writer(&mut buf, ev).is_ok() {
                buf.push(b'\n');
            }
        }
        match &mut self.out {
            Output::File(f) => {
                let res = async {
                    f.write_all(&buf).await?;
                    f.flush().await
                };
                if let Err(e) = tokio::time::timeout(Duration::from_secs(10), res)
                    .await
                    .unwrap_or_else(|_| Err(std::io::Error::other("write timed out")))
                {
                    metrics::AUDIT_WRITE_ERRORS_TOTAL.inc_by(batch.len() as u64);
                    tracing::error!(events = batch.len(), "audit log write failed: {e}");
                }
            }
            Output::Log => {
                for line in String::from_utf8_lossy(&buf).lines() {
                    tracing::info!(target: "vigie::audit", "{line}");
                }
            }
            Output::Nothing => {}
        }
        *batch = self.write_store(std::mem::take(batch)).await;
        batch.clear();
    }
}

/// Events the store could not take, as JSON lines in the log (target
/// `vigie::audit`), so they are not lost.
fn spill(events: &[AuditEvent]) {
    for ev in events {
        if let Ok(line) = serde_json::to_string(ev) {
            tracing::warn!(target: "vigie::audit", "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64) -> AuditEvent {
        AuditEvent {
            time: Utc::now(),
            service: "dns",
            client_ip: "10.0.0.1".parse().unwrap(),
            user: None,
            identity: "network",
            profile: "eleves".into(),
            target: format!("n{n}.example"),
            qtype: Some("A".into()),
            verdict: "block",
            category: Some("gambling".into()),
            rule: "eleves: block gambling".into(),
            entry: Some("example".into()),
            via: None,
            latency_us: n,
            proxy: None,
        }
    }

    #[test]
    fn only_light_batches_over_a_shallow_queue_are_paced() {
        assert!(pace(1, 0));
        assert!(pace(BATCH / 2, QUEUE_CAPACITY / 8 - 1));
        // A busier linger window, a full batch, or a queue filling up: flat out.
        assert!(!pace(BATCH / 2 + 1, 0));
        assert!(!pace(BATCH, 0));
        assert!(!pace(10, QUEUE_CAPACITY / 8));
    }

    #[tokio::test]
    async fn full_queue_drops_and_counts() {
        let (sink, _rx) = AuditSink::channel(2);
        let before = metrics::AUDIT_DROPPED_TOTAL.get();
        for i in 0..5 {
            sink.record(event(i));
        }
        assert_eq!(metrics::AUDIT_DROPPED_TOTAL.get() - before, 3);
    }

    #[tokio::test]
    async fn writer_drains_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.jsonl");
        let (sink, writer) = open(Some(&path)).await.unwrap();
        let cancel = CancellationToken::new();
        for i in 0..10 {
            sink.record(event(i));
        }
        cancel.cancel();
        writer.run(cancel).await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 10);
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["verdict"], "block");
        assert_eq!(v["category"], "gambling");
        assert_eq!(v["client_ip"], "10.0.0.1");
    }

    /// A store that refuses every write, as a full disk or a read-only file does.
    struct BrokenStore;

    impl store::Store for BrokenStore {
        fn insert_batch(&mut self, _: &[AuditEvent]) -> Result<(), store::StoreError> {
            Err(store::StoreError::Sqlite {
                path: "/var/lib/vigie/audit.db".into(),
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(13), // SQLITE_FULL
                    Some("database or disk is full".into()),
                ),
            })
        }
        fn purge_chunk(&mut self, _: DateTime<Utc>, _: usize) -> Result<usize, store::StoreError> {
            Ok(0)
        }
        fn blocks_matching(
            &mut self,
            _: store::Dimension,
            _: store::Period,
            _: usize,
            _: &store::BlockFilter,
        ) -> Result<Vec<(String, u64)>, store::StoreError> {
            Ok(vec![])
        }
        fn user_history(
            &mut self,
            _: &store::HistoryAccess<'_>,
            _: Option<&str>,
            _: store::Period,
            _: Option<i64>,
            _: usize,
        ) -> Result<Vec<store::StoredEvent>, store::StoreError> {
            Ok(vec![])
        }
        fn history_accesses(
            &mut self,
            _: usize,
        ) -> Result<Vec<store::HistoryAccessRecord>, store::StoreError> {
            Ok(vec![])
        }
        fn by_reference(
            &mut self,
            _: &str,
        ) -> Result<Option<store::StoredEvent>, store::StoreError> {
            Ok(None)
        }
        fn count(&mut self) -> Result<u64, store::StoreError> {
            Ok(0)
        }
    }

    /// A full disk or read-only store: every event is counted as a write error and
    /// spilled to the log (never lost silently), and the writer keeps taking events
    /// (the services never wait on it).
    #[tokio::test]
    async fn a_store_that_cannot_write_is_counted_and_the_writer_carries_on() {
        let (sink, mut writer) = open(None).await.unwrap();
        writer.store = Some(Box::new(BrokenStore));
        writer.out = Output::Nothing;
        let before = metrics::AUDIT_WRITE_ERRORS_TOTAL.get();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(writer.run(cancel.clone()));
        for i in 0..50 {
            sink.record(event(i));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Still accepting after the failures.
        for i in 50..60 {
            sink.record(event(i));
        }
        cancel.cancel();
        task.await.unwrap();
        let counted = metrics::AUDIT_WRITE_ERRORS_TOTAL.get() - before;
        assert!(counted >= 60, "{counted} write errors counted");
    }

    /// A SQLite store whose first insert panics (a bug, a driver's assertion).
    struct PanicsOnce(store::SqliteStore, bool);

    impl store::Store for PanicsOnce {
        fn insert_batch(&mut self, events: &[AuditEvent]) -> Result<(), store::StoreError> {
            if !self.1 {
                self.1 = true;
                panic!("insert panicked (test)");
            }
            self.0.insert_batch(events)
        }
        fn purge_chunk(&mut self, b: DateTime<Utc>, n: usize) -> Result<usize, store::StoreError> {
            self.0.purge_chunk(b, n)
        }
        fn blocks_matching(
            &mut self,
            d: store::Dimension,
            p: store::Period,
            n: usize,
            f: &store::BlockFilter,
        ) -> Result<Vec<(String, u64)>, store::StoreError> {
            self.0.blocks_matching(d, p, n, f)
        }
        fn user_history(
            &mut self,
            a: &store::HistoryAccess<'_>,
            u: Option<&str>,
            p: store::Period,
            b: Option<i64>,
            n: usize,
        ) -> Result<Vec<store::StoredEvent>, store::StoreError> {
            self.0.user_history(a, u, p, b, n)
        }
        fn history_accesses(
            &mut self,
            n: usize,
        ) -> Result<Vec<store::HistoryAccessRecord>, store::StoreError> {
            self.0.history_accesses(n)
        }
        fn by_reference(
            &mut self,
            r: &str,
        ) -> Result<Option<store::StoredEvent>, store::StoreError> {
            self.0.by_reference(r)
        }
        fn count(&mut self) -> Result<u64, store::StoreError> {
            self.0.count()
        }
    }

    fn sqlite_reopen(path: &Path) -> Reopen {
        let path = path.to_path_buf();
        Arc::new(move || Ok(Box::new(store::SqliteStore::open(&path)?) as Box<dyn store::Store>))
    }

    fn stored(path: &Path) -> u64 {
        store::Store::count(&mut store::SqliteStore::open(path).unwrap()).unwrap()
    }

    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A panic inside the store costs no event: the store is dropped, the
    /// configured one opened again after a backoff, and the batch written to it.
    #[tokio::test]
    async fn a_store_that_panics_is_reopened_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let (sink, mut writer) = open(None).await.unwrap();
        writer.store = Some(Box::new(PanicsOnce(
            store::SqliteStore::open(&path).unwrap(),
            false,
        )));
        writer.reopen = Some(sqlite_reopen(&path));
        writer.out = Output::Nothing;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(writer.run(cancel.clone()));
        for i in 0..100 {
            sink.record(event(i));
        }
        eventually("the first events in the reopened store", || {
            stored(&path) == 100
        })
        .await;
        for i in 100..150 {
            sink.record(event(i));
        }
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(stored(&path), 150);
    }

    /// A store that cannot be opened at start (PostgreSQL down) is opened later,
    /// with a backoff, and gets the events recorded meanwhile.
    #[tokio::test]
    async fn a_store_unavailable_at_start_gets_its_events_once_it_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let (sink, mut writer) = open(None).await.unwrap();
        let tries = Arc::new(AtomicU64::new(0));
        let (t, p) = (tries.clone(), path.clone());
        writer.reopen = Some(Arc::new(move || {
            if t.fetch_add(1, Ordering::SeqCst) < 2 {
                return Err(store::StoreError::Postgres {
                    name: "test".into(),
                    message: "connection refused".into(),
                });
            }
            Ok(Box::new(store::SqliteStore::open(&p)?) as Box<dyn store::Store>)
        }));
        writer.out = Output::Nothing;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(writer.run(cancel.clone()));
        for i in 0..20 {
            sink.record(event(i));
        }
        eventually("the events in the store", || {
            path.exists() && stored(&path) == 20
        })
        .await;
        assert_eq!(tries.load(Ordering::SeqCst), 3);
        cancel.cancel();
        task.await.unwrap();
    }

    /// Retention deletes a large backlog a chunk at a time between batches: events
    /// recorded meanwhile, faster than a small queue holds for the whole purge,
    /// all reach the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_purge_does_not_hold_the_queue_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let mut s = store::SqliteStore::open(&path).unwrap();
        let long_ago = Utc::now() - chrono::Duration::days(400);
        for c in 0..20u64 {
            let old: Vec<AuditEvent> = (0..10_000)
                .map(|i| AuditEvent {
                    time: long_ago,
                    ..event(c * 10_000 + i)
                })
                .collect();
            store::Store::insert_batch(&mut s, &old).unwrap();
        }
        drop(s);
        let (sink, rx) = AuditSink::channel(1_024);
        let mut writer = Writer::new(rx, Output::Nothing);
        writer.store = Some(Box::new(store::SqliteStore::open(&path).unwrap()));
        writer.retention = Some(chrono::Duration::days(30));
        let cancel = CancellationToken::new();
        // The first hourly tick is at once: the purge starts with the writer.
        let task = tokio::spawn(writer.run(cancel.clone()));
        let mut sent = 0;
        for _ in 0..100 {
            for _ in 0..50 {
                sink.record(event(sent));
                sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let old = store::Period {
            from: long_ago - chrono::Duration::days(1),
            to: long_ago + chrono::Duration::days(1),
        };
        eventually("the end of the purge", || {
            let mut s = store::SqliteStore::open(&path).unwrap();
            store::Store::blocks_by(&mut s, store::Dimension::Hour, old, 10)
                .unwrap()
                .is_empty()
        })
        .await;
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(stored(&path), sent, "events dropped during the purge");
    }

    #[test]
    fn audit_settings_read_only_at_start_are_named_when_a_reload_changes_them() {
        let old = crate::config::AuditSettings {
            store: crate::config::AuditStoreKind::Sqlite,
            postgres_url: None,
            postgres_ca_file: None,
            retention_days: 90,
            pseudonymize: false,
            jsonl: false,
        };
        let new = crate::config::AuditSettings {
            retention_days: 30,
            jsonl: true,
            ..old.clone()
        };
        assert_eq!(
            restart_only_changes(&old, &new),
            vec!["audit.retention_days", "audit.jsonl"]
        );
        assert!(restart_only_changes(&old, &old).is_empty());
    }

    /// A store that cannot be opened says where and why.
    #[test]
    fn an_unwritable_store_path_is_a_clear_error() {
        let e = store::SqliteStore::open(Path::new("/proc/vigie-no-such-dir/audit.db"))
            .err()
            .expect("cannot open under /proc")
            .to_string();
        assert!(e.contains("/proc/vigie-no-such-dir/audit.db"), "{e}");
    }
}

/// Stable pseudonyms for user names in aggregate views (`[audit] pseudonymize`):
/// `u-` and 10 hex digits of an HMAC-SHA256 under a key kept in the data directory,
/// so the same person has the same pseudonym on every dashboard and every day, and
/// nobody without the key can go back from pseudonym to name by trying names.
pub struct Pseudonymizer {
    key: ring::hmac::Key,
}

impl Pseudonymizer {
    /// The key of `<data_dir>/pseudonym.key`, created (random, owner-only) the first
    /// time.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join("pseudonym.key");
        let bytes = match std::fs::read(&path) {
            Ok(b) if b.len() == 32 => b,
            Ok(b) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{}: {} bytes, expected 32 (delete it to make a new key; pseudonyms change)",
                        path.display(),
                        b.len()
                    ),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut b = vec![0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
                    .map_err(|_| std::io::Error::other("no system randomness"))?;
                std::fs::create_dir_all(data_dir)?;
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                std::io::Write::write_all(&mut opts.open(&path)?, &b)?;
                b
            }
            Err(e) => return Err(e),
        };
        Ok(Self::with_key(&bytes))
    }

    pub fn with_key(key: &[u8]) -> Self {
        Pseudonymizer {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        }
    }

    pub fn name(&self, user: &str) -> String {
        let tag = ring::hmac::sign(&self.key, user.as_bytes());
        let mut out = String::from("u-");
        for b in &tag.as_ref()[..5] {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

/// Blocked requests counted by `dim`, as aggregate views show them: user names
/// replaced by their pseudonyms when `pseudo` is given.
pub fn aggregate(
    store: &mut dyn store::Store,
    dim: store::Dimension,
    period: store::Period,
    limit: usize,
    pseudo: Option<&Pseudonymizer>,
) -> Result<Vec<(String, u64)>, store::StoreError> {
    let rows = store.blocks_by(dim, period, limit)?;
    Ok(match (dim, pseudo) {
        (store::Dimension::User, Some(p)) => {
            rows.into_iter().map(|(k, n)| (p.name(&k), n)).collect()
        }
        _ => rows,
    })
}

#[cfg(test)]
mod pseudonym_tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_distinct_and_keyed() {
        let dir = tempfile::tempdir().unwrap();
        let a = Pseudonymizer::open(dir.path()).unwrap();
        let b = Pseudonymizer::open(dir.path()).unwrap();
        assert_eq!(a.name("mtremblay"), b.name("mtremblay"));
        assert_ne!(a.name("mtremblay"), a.name("agagnon"));
        assert!(a.name("mtremblay").starts_with("u-") && a.name("x").len() == 12);
        assert!(!a.name("mtremblay").contains("tremblay"));
        let other = Pseudonymizer::with_key(&[7u8; 32]);
        assert_ne!(other.name("mtremblay"), a.name("mtremblay"));
        std::fs::write(dir.path().join("pseudonym.key"), b"short").unwrap();
        let err = Pseudonymizer::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("pseudonym.key: 5 bytes, expected 32"), "{err}");
    }
}
