//! Wiring of `vigie run`: builds the first snapshot, starts every service as a task
//! under one `CancellationToken` + `JoinSet` (DNS filter, forward proxy, admin listener, reload
//! watcher, upkeep), reloads the snapshot on SIGHUP and file changes, and on Ctrl-C /
//! SIGTERM stops accepting, lets in-flight queries finish and flushes the audit queue.
//!
//! Nothing here decides or answers anything: it only owns lifetimes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics;
use crate::snapshot::{Snapshot, SnapshotStore};

/// Quiet time after the last file event before a reload starts: editors and list
/// updaters write in several steps.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(500);
/// How long shutdown waits for in-flight work before giving up on it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often rate-limit state is pruned and gauges refreshed.
const UPKEEP_EVERY: Duration = Duration::from_secs(10);

/// What `vigie run` was asked to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config: Option<PathBuf>,
    pub dns_listen: SocketAddr,
    /// Where the explicit proxy listens.
    pub proxy_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub upstreams: Vec<String>,
    pub data_dir: Option<PathBuf>,
    /// Whom to become after binding when started as root (`--user`); `None`:
    /// [`crate::privileges::DEFAULT_USER`].
    pub user: Option<String>,
}

/// Runs until Ctrl-C / SIGTERM.
pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    // Whom to become is settled before anything is opened or bound: a wrong --user
    // stops vigie before it serves anything.
    let run_as = crate::privileges::plan(
        opts.user.as_deref(),
        opts.config.is_none() && opts.data_dir.is_none(),
    )?;
    if let Some(to) = &run_as {
        // Before any thread is started: every thread inherits it.
        crate::privileges::forbid_new_privileges(to)?;
        // A new data directory is made for the user (mode 0750) before anything is
        // written in it, and one vigie must not take over stops it here; what is
        // written there until the switch is handed over again then.
        if let Some(dir) = &opts.data_dir {
            crate::privileges::hand_over_data_dir(dir, to)?;
        }
    }
    metrics::init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vigie")
        .build()
        .context("cannot start the async runtime")?;
    // SIGHUP's default action kills the process: its handler goes in before the
    // lists are loaded (seconds for big lists), so a `systemctl reload` or a
    // `vigie lists update` during the start is a reload, not a crash.
    #[cfg(unix)]
    let hup = {
        let _rt = runtime.enter();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot watch SIGHUP: {e}");
                None
            }
        }
    };
    let cache_dir = opts.data_dir.as_ref().map(|d| d.join("cache"));
    let snapshot = Snapshot::load(opts.config.as_deref(), cache_dir.as_deref())?;
    publish_snapshot_metrics(&snapshot);
    metrics::SNAPSHOT_BUILD_SECONDS.observe(snapshot.build_time.as_secs_f64());
    tracing::info!(
        version = snapshot.version,
        domains = snapshot.lists.domains.len(),
        "snapshot built in {:?} from {}",
        snapshot.build_time,
        snapshot.config.origin
    );
    runtime.block_on(serve(
        opts,
        snapshot,
        cache_dir,
        run_as,
        #[cfg(unix)]
        hup,
    ))
}

async fn serve(
    opts: RunOptions,
    snapshot: Snapshot,
    cache_dir: Option<PathBuf>,
    run_as: Option<crate::privileges::RunAs>,
    #[cfg(unix)] hup: Option<tokio::signal::unix::Signal>,
) -> anyhow::Result<()> {
    let store = Arc::new(SnapshotStore::new(snapshot));
    let cancel = CancellationToken::new();
    let mut tasks: JoinSet<()> = JoinSet::new();
    let tracker = TaskTracker::new();

    let data_dir = opts
        .data_dir
        .clone()
        .or_else(|| store.load().config.data_dir.clone());
    let audit_path = data_dir
        .as_ref()
        .filter(|_| store.load().config.audit.jsonl)
        .map(|d| d.join("audit.jsonl"));
    let (audit, mut writer) = crate::audit::open(audit_path.as_deref()).await?;
    // The queryable store (SQLite by default). If it cannot be opened (read-only or
    // full disk, database down) filtering still starts: the writer keeps trying
    // with a backoff and keeps events for it meanwhile (they also go to the
    // JSON-lines log or the log); the error is logged and counted.
    let audit_settings = store.load().config.audit.clone();
    let dir = data_dir.clone();
    match tokio::task::spawn_blocking(move || {
        let r = crate::audit::attach_store(&mut writer, &audit_settings, dir.as_deref());
        (writer, r)
    })
    .await
    {
        Ok((w, Ok(()))) => writer = w,
        Ok((w, Err(e))) => {
            crate::metrics::AUDIT_WRITE_ERRORS_TOTAL.inc();
            tracing::error!("audit store unavailable at start, retried with a backoff: {e}");
            writer = w;
        }
        Err(e) => anyhow::bail!("audit store setup failed: {e}"),
    }
    // The writer stops last, on its own token, so it drains what the services queued.
    let audit_cancel = CancellationToken::new();
    let audit_task = tokio::spawn(writer.run(audit_cancel.clone()));

    // Who is logged in where: filled by the proxy/portal logins, read by every service.
    let identities = Arc::new(crate::identity::IdentityTable::new());
    let (handler, listeners) = crate::dns::setup(
        store.clone(),
        identities.clone(),
        opts.dns_listen,
        &opts.upstreams,
        audit.clone(),
    )?;
    let dns_addr = listeners.local_addr();

    let admin = tokio::net::TcpListener::bind(opts.admin_listen)
        .await
        .with_context(|| format!("cannot listen for admin on {}", opts.admin_listen))?;
    let admin_addr = admin.local_addr()?;

    // One password check for every login door (proxy authentication, the portal,
    // the admin app).
    let auth = Arc::new(authenticator(&store.load(), data_dir.as_deref()));
    let auth_for_admin = auth.clone();
    let auth_for_upkeep = auth.clone();
    let admin_url = format!("http://{admin_addr}");
    let notices = Arc::new(crate::audit::notices::Notices::open(data_dir.as_deref()));
    let portal = Arc::new(crate::identity::portal::Portal {
        notices: notices.clone(),
        store: store.clone(),
        identities: identities.clone(),
        auth: auth.clone(),
        audit: audit.clone(),
        default_url: format!("{admin_url}/portal"),
    });

    // The forward proxy (issue 5): never forwards to vigie's own listeners.
    let proxy = crate::proxy::setup(
        store.clone(),
        audit.clone(),
        crate::proxy::Setup {
            listen: opts.proxy_listen,
            own: vec![dns_addr, admin_addr],
            data_dir: opts.data_dir.clone(),
            admin_url: admin_url.clone(),
            identities: identities.clone(),
            auth,
            portal_url: portal.url(),
            // Origins are resolved through the DNS filter's cache and upstreams.
            resolver: Some(handler.clone()),
        },
    )
    .await?;
    let proxy_addr = proxy.local_addr().unwrap_or(opts.proxy_listen);
    let proxy_optional = proxy.optional_addrs();
    // The admin web app (issue 7): its own reads of the audit store, its requests
    // database, and the unblock grants it puts back in force.
    let admin_app = crate::admin::Admin::open(crate::admin::Setup {
        store: store.clone(),
        identities: identities.clone(),
        auth: auth_for_admin,
        audit: audit.clone(),
        data_dir: data_dir.clone(),
        config_path: opts.config.clone(),
        notices,
        shutdown: cancel.clone(),
    })
    .context("cannot start the admin web app")?;
    let pac = crate::proxy::pac::router(store.clone(), proxy_addr)
        .merge(crate::identity::portal::router(portal))
        .merge(crate::admin::router(admin_app.clone()));

    // HTTPS for the admin app, on its own address (`[admin] tls_listen`).
    let mut admin_tls = None;
    let admin_cfg = store.load().config.admin.clone();
    if let Some(addr) = admin_cfg.tls_listen {
        let acceptor =
            crate::admin::tls::acceptor(admin_cfg.tls_cert.as_ref(), data_dir.as_deref())
                .context("admin HTTPS listener")?;
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for admin HTTPS on {addr}"))?;
        admin_tls = Some((l, acceptor));
    }
    let admin_tls_addr = match &admin_tls {
        Some((l, _)) => Some(l.local_addr()?),
        None => None,
    };

    // Every listener is bound: give root up (when started as root) before serving.
    if let Some(to) = &run_as {
        give_up_root(
            to,
            &store.load(),
            opts.config.as_deref(),
            data_dir.as_deref(),
        )?;
    }
    listeners.serve(handler.clone(), &mut tasks, tracker.clone(), cancel.clone());
    proxy.serve(&mut tasks, tracker.clone(), cancel.clone());
    if let Some((l, acceptor)) = admin_tls {
        tasks.spawn(crate::admin::tls::serve(
            l,
            acceptor,
            admin_routes(pac.clone()),
            tracker.clone(),
            cancel.clone(),
        ));
    }
    tasks.spawn(serve_admin(admin, pac, cancel.clone()));
    let mut services = vec![
        ("dns (udp+tcp)".to_string(), dns_addr.to_string()),
        ("proxy".to_string(), proxy_addr.to_string()),
        ("admin".to_string(), format!("http://{admin_addr}")),
    ];
    services.extend(
        proxy_optional
            .iter()
            .map(|(n, a)| (n.to_string(), a.to_string())),
    );
    services.extend(admin_tls_addr.map(|a| ("admin_tls".to_string(), format!("https://{a}"))));
    let _ = admin_app.services.set(services);

    tasks.spawn(reload_loop(
        store.clone(),
        opts.config.clone(),
        cache_dir,
        #[cfg(unix)]
        hup,
        cancel.clone(),
    ));

    let h = handler.clone();
    let c = cancel.clone();
    let (ids, upkeep_store, upkeep_audit) = (identities.clone(), store.clone(), audit.clone());
    let upkeep_auth = auth_for_upkeep;
    tasks.spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tokio::select! {
                _ = c.cancelled() => break,
                _ = every.tick() => {
                    h.maintain();
                    end_sessions(&ids, &upkeep_store.load(), &upkeep_audit);
                    if !ids.is_empty() {
                        let neighbours = tokio::task::spawn_blocking(crate::identity::neigh::read)
                            .await
                            .unwrap_or_default();
                        let moved = ids.end_moved(&neighbours);
                        record_ended(&upkeep_store.load(), &upkeep_audit, moved, "the address went to another device (lease change)");
                    }
                    admin_app.upkeep().await;
                    upkeep_auth.sync_ldap(upkeep_store.load().config.ldap.as_ref(), false);
                }
            }
        }
    });

    tracing::info!(
        "dns on {dns_addr} (udp+tcp), upstreams {}, admin on http://{admin_addr}",
        handler_upstreams(&handler)
    );
    let also: String = proxy_optional
        .iter()
        .map(|(name, addr)| format!(", {name} on {addr}"))
        .collect();
    tracing::info!("proxy on {proxy_addr}{also}");
    // Scripts and tests wait for this line (and read the ports from it).
    let mut ready = format!("vigie ready: dns {dns_addr} admin {admin_addr} proxy {proxy_addr}");
    for (name, addr) in &proxy_optional {
        ready.push_str(&format!(" {name} {addr}"));
    }
    if let Some(a) = admin_tls_addr {
        ready.push_str(&format!(" admin_tls {a}"));
    }
    // Handlers are installed before anyone is told we are ready: a SIGTERM sent
    // right after the ready line must drain and flush, not kill the process.
    let signals = ShutdownSignals::install();
    // `vigie lists update` finds this process here to ask for a reload (SIGHUP);
    // removed on the way out.
    let _pid_file = data_dir.as_deref().and_then(|d| {
        crate::update::PidFile::create(d)
            .map_err(|e| {
                tracing::warn!(
                    "cannot write {}/vigie.pid, `vigie lists update` will not reload this process: {e}",
                    d.display()
                )
            })
            .ok()
    });
    println!("{ready}");

    wait_for_shutdown(signals, &cancel, &mut tasks).await;
    tracing::info!("shutting down");
    cancel.cancel();
    tracker.close();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
        tracker.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some tasks did not stop within {SHUTDOWN_GRACE:?}");
        tasks.abort_all();
    }
    drop(handler);
    audit_cancel.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, audit_task)
        .await
        .is_err()
    {
        tracing::warn!("audit queue not flushed within {SHUTDOWN_GRACE:?}");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Hands the data directory to `to`, becomes `to` for good, then checks that the
/// files vigie opens again while it runs are open to it. Any failure stops vigie
/// before it serves.
fn give_up_root(
    to: &crate::privileges::RunAs,
    snap: &Snapshot,
    config: Option<&Path>,
    data_dir: Option<&Path>,
) -> anyhow::Result<()> {
    if let Some(dir) = data_dir {
        let changed = crate::privileges::hand_over_data_dir(dir, to)?;
        tracing::info!(
            "data directory {} handed to user {} ({changed} entries changed owner)",
            dir.display(),
            to.name
        );
    }
    crate::privileges::become_user(to)?;
    let needs = crate::privileges::needs(&snap.config, config, data_dir);
    crate::privileges::check_access(to, &needs, config)?;
    Ok(())
}

/// The password check: the users file (`[proxy] users_file`, else
/// `<data_dir>/users`), then LDAP when `[ldap]` is configured.
fn authenticator(
    snap: &Snapshot,
    data_dir: Option<&Path>,
) -> crate::identity::users::Authenticator {
    let users_file = snap
        .config
        .proxy
        .users_file
        .clone()
        .or_else(|| data_dir.map(|d| d.join("users")));
    let ldap = snap.config.ldap.clone().and_then(|settings| {
        crate::identity::ldap::LdapAuthenticator::new(settings)
            .map_err(|e| tracing::error!("LDAP logins unavailable: {e}"))
            .ok()
    });
    let auth = crate::identity::users::Authenticator::new(users_file, ldap);
    auth.sync_ldap(snap.config.ldap.as_ref(), true);
    auth
}

/// Ends logins that expired (idle or session end) and records that they did.
fn end_sessions(
    ids: &crate::identity::IdentityTable,
    snap: &Snapshot,
    audit: &crate::audit::AuditSink,
) {
    let ended = ids.purge_expired(chrono::Utc::now());
    record_ended(snap, audit, ended, "idle timeout or end of session");
}

/// Audits logins that ended without a logout (`session_end`, with why).
fn record_ended(
    snap: &Snapshot,
    audit: &crate::audit::AuditSink,
    ended: Vec<(std::net::IpAddr, Arc<crate::identity::Binding>)>,
    why: &str,
) {
    for (ip, b) in ended {
        let mut ev = crate::identity::login_event(
            snap,
            match b.source {
                crate::identity::IdentitySource::ProxyAuth => crate::identity::LoginDoor::Proxy,
                _ => crate::identity::LoginDoor::Portal,
            },
            ip,
            &b.user,
            None,
            crate::identity::LoginOutcome::Logout,
            Instant::now(),
        );
        ev.verdict = "session_end";
        ev.rule = why.into();
        audit.record(ev);
    }
}

fn handler_upstreams(h: &crate::dns::Handler) -> String {
    h.upstream_specs()
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// SIGTERM and SIGINT streams, registered up front (tokio installs a handler only
/// when the stream is created).
struct ShutdownSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let open = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot watch {name}: {e}");
                None
            }
        };
        ShutdownSignals {
            term: open(SignalKind::terminate(), "SIGTERM"),
            int: open(SignalKind::interrupt(), "SIGINT"),
        }
    }
}

async fn recv_or_pending(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// Returns on SIGINT (Ctrl-C), SIGTERM, or a service task ending on its own (which
/// means it failed: services only end when cancelled).
async fn wait_for_shutdown(
    mut signals: ShutdownSignals,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    tokio::select! {
        _ = recv_or_pending(&mut signals.int) => {}
        _ = recv_or_pending(&mut signals.term) => {}
        _ = cancel.cancelled() => {}
        Some(r) = tasks.join_next() => {
            tracing::error!("a service stopped unexpectedly: {r:?}");
        }
    }
}

/// The admin listener's routes: `/metrics`, `/healthz` and `extra`, the routes
/// other services mount (the proxy's `/proxy.pac`, the portal, the admin app).
fn admin_routes(extra: axum::Router) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    metrics::render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/",
            get(|| async { axum::response::Redirect::to("/admin/") }),
        )
        .merge(extra)
}

async fn serve_admin(
    listener: tokio::net::TcpListener,
    extra: axum::Router,
    cancel: CancellationToken,
) {
    let app = admin_routes(extra);
    let shutdown = cancel.clone();
    // Client addresses for the portal (and, later, the admin app's audit records).
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        tracing::error!("admin listener failed: {e}");
    }
}

fn publish_snapshot_metrics(s: &Snapshot) {
    metrics::SNAPSHOT_VERSION.set(s.version as i64);
    metrics::LIST_ENTRIES
        .with_label_values(&["domain"])
        .set(s.lists.domains.len() as i64);
    metrics::LIST_ENTRIES
        .with_label_values(&["url"])
        .set(s.lists.urls.len() as i64);
    metrics::LIST_ENTRIES
        .with_label_values(&["ip"])
        .set(s.lists.ips.len() as i64);
}

/// Builds a new snapshot off the hot path and swaps it in; a snapshot that fails to
/// build is rejected and the current one keeps serving.
/// One reload of the configuration, as the admin app's health page lists it.
#[derive(Clone, Debug)]
pub struct ReloadRecord {
    pub time: chrono::DateTime<chrono::Utc>,
    pub accepted: bool,
    /// The snapshot serving afterwards.
    pub version: u64,
    pub message: String,
}

/// The last reloads, oldest first (at most [`RELOADS_KEPT`]).
static RELOADS: std::sync::Mutex<std::collections::VecDeque<ReloadRecord>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());
const RELOADS_KEPT: usize = 20;

fn note_reload(accepted: bool, version: u64, message: String) {
    let mut r = RELOADS.lock().unwrap_or_else(|p| p.into_inner());
    if r.len() >= RELOADS_KEPT {
        r.pop_front();
    }
    r.push_back(ReloadRecord {
        time: chrono::Utc::now(),
        accepted,
        version,
        message,
    });
}

/// The last reloads, oldest first.
pub fn recent_reloads() -> Vec<ReloadRecord> {
    RELOADS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect()
}

pub async fn reload(
    store: &SnapshotStore,
    config: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
) -> bool {
    let started = Instant::now();
    let built = tokio::task::spawn_blocking(move || {
        Snapshot::load(config.as_deref(), cache_dir.as_deref())
    })
    .await;
    let old = store.load();
    match built {
        Ok(Ok(next)) => {
            metrics::SNAPSHOT_BUILD_SECONDS.observe(started.elapsed().as_secs_f64());
            publish_snapshot_metrics(&next);
            let version = next.version;
            // Accepted, but built into the running services once at start.
            let mut later = crate::dns::restart_only_changes(&old.config, &next.config);
            later.extend(crate::audit::restart_only_changes(
                &old.config.audit,
                &next.config.audit,
            ));
            for key in &later {
                tracing::warn!("changed {key}: takes effect after a restart");
            }
            let _ = store.reload(|| Ok::<_, std::convert::Infallible>(next));
            metrics::RELOAD_TOTAL.with_label_values(&["accepted"]).inc();
            tracing::info!(
                version,
                previous = old.version,
                "reload accepted in {:?}",
                started.elapsed()
            );
            let mut message = format!("in {:?}", started.elapsed());
            if !later.is_empty() {
                message.push_str(&format!(
                    "; takes effect after a restart: {}",
                    later.join(", ")
                ));
            }
            note_reload(true, version, message);
            retire(old);
            true
        }
        Ok(Err(e)) => {
            metrics::RELOAD_TOTAL.with_label_values(&["rejected"]).inc();
            tracing::error!(
                serving = old.version,
                "reload rejected, the current snapshot keeps serving:\n{e}"
            );
            note_reload(false, old.version, e.to_string());
            false
        }
        Err(e) => {
            metrics::RELOAD_TOTAL.with_label_values(&["rejected"]).inc();
            tracing::error!(
                serving = old.version,
                "reload rejected: snapshot build failed: {e}"
            );
            note_reload(false, old.version, e.to_string());
            false
        }
    }
}

/// Frees a replaced snapshot on a blocking thread once in-flight queries are done
/// with it: freeing a million-name index on a DNS worker would stall its socket.
fn retire(old: Arc<Snapshot>) {
    tokio::spawn(async move {
        for _ in 0..100 {
            if Arc::strong_count(&old) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = tokio::task::spawn_blocking(move || drop(old)).await;
    });
}

/// Files whose change triggers a reload: the config file and every list source,
/// except those of an updated list set. A set never changes once written, and
/// `vigie lists update` asks for its reload itself (SIGHUP): watching it would
/// only reload a second time when the next update hard-links its unchanged files.
fn watched_paths(config: Option<&Path>, snap: &Snapshot) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    if let Some(c) = config {
        out.insert(absolute(c));
    }
    let set = snap.config.lists_set.as_deref();
    for s in &snap.config.sources {
        if set.is_some_and(|set| s.path.starts_with(set)) {
            continue;
        }
        out.insert(absolute(&s.path));
    }
    out
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Watches `paths` (directories recursively; files through their directory, since
/// editors replace files by renaming) and sends a unit per relevant change.
fn watch(paths: &BTreeSet<PathBuf>, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let interesting = paths.clone();
    let mut watcher =
        match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            if matches!(ev.kind, EventKind::Access(_)) {
                return;
            }
            if ev
                .paths
                .iter()
                .any(|p| interesting.iter().any(|w| p.starts_with(w)))
            {
                // A full channel already holds a pending reload: nothing is lost.
                let _ = tx.try_send(());
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("cannot watch files for changes (SIGHUP still reloads): {e}");
                return None;
            }
        };
    let mut dirs = BTreeSet::new();
    for p in paths {
        if p.is_dir() {
            dirs.insert((p.clone(), RecursiveMode::Recursive));
        } else if let Some(parent) = p.parent() {
            dirs.insert((parent.to_path_buf(), RecursiveMode::NonRecursive));
        }
    }
    for (dir, mode) in dirs {
        if let Err(e) = watcher.watch(&dir, mode) {
            tracing::warn!("cannot watch {}: {e}", dir.display());
        }
    }
    Some(watcher)
}

async fn reload_loop(
    store: Arc<SnapshotStore>,
    config: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    #[cfg(unix)] mut hup: Option<tokio::signal::unix::Signal>,
    cancel: CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut paths = watched_paths(config.as_deref(), &store.load());
    let mut _watcher = watch(&paths, tx.clone());
    loop {
        let by_signal = async {
            #[cfg(unix)]
            if let Some(h) = hup.as_mut() {
                h.recv().await;
                return;
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = by_signal => tracing::info!("SIGHUP: reloading"),
            Some(()) = rx.recv() => {
                // Debounce: wait until the files have been quiet for a moment.
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        more = rx.recv() => if more.is_none() { break },
                        _ = tokio::time::sleep(RELOAD_DEBOUNCE) => break,
                    }
                }
                tracing::info!("configuration or list files changed: reloading");
            }
        }
        if reload(&store, config.clone(), cache_dir.clone()).await {
            let now = watched_paths(config.as_deref(), &store.load());
            if now != paths {
                paths = now;
                _watcher = watch(&paths, tx.clone());
            }
        }
    }
}
