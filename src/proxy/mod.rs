//! The forward proxy: explicit HTTP/1.1 proxy (absolute-form requests and
//! CONNECT) and, when configured, transparent listeners fed by nftables redirects.
//!
//! Every request takes the one path: identify (client network, Basic auth) →
//! decide (`policy::decide` on the URL, CONNECT host and TLS SNI) → act (forward
//! through a pooled hyper client, tunnel, or answer a block/error page) → record
//! (`log::RequestLog`, emitted whatever happens). Origins are reached only through
//! `dial`, whose SSRF guard refuses loopback, link-local, internal ranges and
//! vigie's own listeners however they are spelled. TLS is never decrypted: tunnels
//! are decided on the first bytes the client sends (`sniff`).
//!
//! This module reads the current `Snapshot` per request and queues audit events; it
//! owns neither (the app wires them in). It must not decide anything `policy` can.

pub mod dial;
mod forward;
pub mod guard;
pub mod log;
pub mod pac;
pub mod page_tls;
pub mod pages;
mod path;
mod server;
pub mod sniff;
mod transparent;
mod tunnel;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::AuditSink;
use crate::identity::IdentityTable;
use crate::identity::users::Authenticator;
use crate::snapshot::SnapshotStore;

pub use server::Mode;

/// The body type of every request and response the proxy handles.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// A proxy login within this long of someone else's on the same address means the
/// address is shared (see `forward::identify`).
const SHARED_ADDRESS_WINDOW: chrono::TimeDelta = chrono::TimeDelta::minutes(5);
/// How long a person's login on a shared address is remembered (one login event).
const SHARED_LOGIN_MEMORY: Duration = Duration::from_secs(600);

/// How long an unused pooled origin connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Most idle pooled connections per origin.
const POOL_MAX_IDLE_PER_HOST: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen for the proxy on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS block page: {0}")]
    PageTls(#[from] page_tls::PageTlsError),
}

/// Where vigie's other services listen, so the proxy never forwards to them.
#[derive(Clone)]
pub struct Setup {
    pub listen: SocketAddr,
    /// vigie's other listeners (DNS, admin).
    pub own: Vec<SocketAddr>,
    /// The data directory (for the default users file).
    pub data_dir: Option<PathBuf>,
    /// The admin app's base URL (`http://127.0.0.1:8080`), for review links when
    /// `[proxy] review_url` is not set.
    pub admin_url: String,
    /// Who is logged in where (portal, LDAP): the identity of a client that sends
    /// no proxy credentials.
    pub identities: Arc<IdentityTable>,
    /// The DNS filter, whose cache and upstreams resolve origin names (`None`: the
    /// system resolver).
    pub resolver: Option<Arc<crate::dns::Handler>>,
    /// Checks passwords (users file, LDAP), shared with the captive portal.
    pub auth: Arc<Authenticator>,
    /// The captive portal's address, where unidentified clients of `[portal]
    /// networks` are sent.
    pub portal_url: String,
}

/// State shared by every connection of the proxy.
pub struct Proxy {
    store: Arc<SnapshotStore>,
    audit: AuditSink,
    dialer: Arc<dial::Dialer>,
    client: Client<dial::Connector, Body>,
    auth: Arc<Authenticator>,
    portal_url: String,
    review_url: String,
    via: ::http::HeaderValue,
    limit: Arc<Semaphore>,
    /// Connections per client address (`max_connections_per_client`).
    per_client: Arc<crate::per_client::PerClient>,
    /// People seen logging in on an address someone else's login holds.
    shared_logins: moka::sync::Cache<(std::net::IpAddr, Arc<str>), ()>,
    identities: Arc<IdentityTable>,
    /// TLS of the block-page address (`block_page_tls_listen`), when on.
    page_tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The bound listeners, ready to serve.
pub struct Listeners {
    proxy: Arc<Proxy>,
    explicit: TcpListener,
    transparent_http: Option<TcpListener>,
    transparent_tls: Option<TcpListener>,
    block_page: Option<TcpListener>,
    block_page_tls: Option<TcpListener>,
}

impl Listeners {
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.explicit.local_addr().ok()
    }

    /// The optional listeners that are on, by name (`transparent_http`,
    /// `transparent_tls`, `block_page`, `block_page_tls`), for logs and the ready line.
    pub fn optional_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        [
            ("transparent_http", &self.transparent_http),
            ("transparent_tls", &self.transparent_tls),
            ("block_page", &self.block_page),
            ("block_page_tls", &self.block_page_tls),
        ]
        .into_iter()
        .filter_map(|(name, l)| Some((name, l.as_ref()?.local_addr().ok()?)))
        .collect()
    }

    /// Starts one accept loop per listener under `tasks`; connections run under
    /// `tracker` so shutdown can wait for them.
    pub fn serve(self, tasks: &mut JoinSet<()>, tracker: TaskTracker, cancel: CancellationToken) {
        let p = self.proxy;
        tasks.spawn(server::accept_loop(
            p.clone(),
            self.explicit,
            Mode::Explicit,
            tracker.clone(),
            cancel.clone(),
        ));
        if let Some(l) = self.transparent_http {
            tasks.spawn(server::accept_loop(
                p.clone(),
                l,
                Mode::TransparentHttp,
                tracker.clone(),
                cancel.clone(),
            ));
        }
        if let Some(l) = self.transparent_tls {
            tasks.spawn(server::accept_loop(
                p.clone(),
                l,
                Mode::TransparentTls,
                tracker.clone(),
                cancel.clone(),
            ));
        }
        if let Some(l) = self.block_page {
            tasks.spawn(server::accept_loop(
                p.clone(),
                l,
                Mode::BlockPage,
                tracker.clone(),
                cancel.clone(),
            ));
        }
        if let Some(l) = self.block_page_tls {
            tasks.spawn(server::accept_loop(
                p,
                l,
                Mode::BlockPageTls,
                tracker,
                cancel,
            ));
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    // A large backlog: connections beyond `max_connections` wait here, not refused.
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .and_then(|s| {
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        Ok(s)
    })
    .map_err(|source| ProxyError::Bind { addr, source })?;
    sock.listen(4096)
        .map_err(|source| ProxyError::Bind { addr, source })
}

/// Binds the proxy's listeners (explicit, and the transparent ones the config
/// enables) and builds the shared state.
pub async fn setup(
    store: Arc<SnapshotStore>,
    audit: AuditSink,
    setup: Setup,
) -> Result<Listeners, ProxyError> {
    let snap = store.load();
    let cfg = &snap.config.proxy;
    let explicit = bind(setup.listen).await?;
    let transparent_http = match cfg.transparent_http_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let transparent_tls = match cfg.transparent_tls_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let block_page = match cfg.block_page_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let (block_page_tls, page_tls) = match cfg.block_page_tls_listen {
        Some(a) => {
            let data_dir = setup.data_dir.as_ref().or(snap.config.data_dir.as_ref());
            let acceptor =
                page_tls::acceptor(cfg.block_page_cert.as_ref(), data_dir.map(|d| d.as_path()))?;
            (Some(bind(a).await?), Some(acceptor))
        }
        None => (None, None),
    };
    let mut own = setup.own.clone();
    own.extend(explicit.local_addr().ok());
    own.extend(transparent_http.as_ref().and_then(|l| l.local_addr().ok()));
    own.extend(transparent_tls.as_ref().and_then(|l| l.local_addr().ok()));
    own.extend(block_page.as_ref().and_then(|l| l.local_addr().ok()));
    own.extend(block_page_tls.as_ref().and_then(|l| l.local_addr().ok()));
    let dialer = Arc::new(dial::Dialer {
        guard: guard::Guard::new(cfg, own, Vec::new()).following_local_addresses(),
        connect_timeout: cfg.connect_timeout,
        resolver: setup.resolver.clone(),
        read_idle: cfg.idle_timeout,
    });
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(dial::Connector(dialer.clone()));
    let auth = setup.auth.clone();
    if !cfg.auth_required_networks.is_empty() && !auth.has_backend() {
        tracing::warn!(
            "proxy authentication is required for {:?} but {} holds no user and no LDAP is configured: add users with `vigie users add`",
            cfg.auth_required_networks,
            auth.path()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "no users file".into())
        );
    }
    let review_url = cfg
        .review_url
        .clone()
        .unwrap_or_else(|| format!("{}/review", setup.admin_url.trim_end_matches('/')));
    let via = ::http::HeaderValue::from_str(&format!("1.1 {}", cfg.via_name))
        .unwrap_or_else(|_| ::http::HeaderValue::from_static("1.1 vigie"));
    let proxy = Arc::new(Proxy {
        store: store.clone(),
        audit,
        dialer,
        client,
        auth,
        portal_url: setup.portal_url.clone(),
        review_url,
        via,
        limit: Arc::new(Semaphore::new(cfg.max_connections)),
        per_client: Arc::default(),
        shared_logins: moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(SHARED_LOGIN_MEMORY)
            .build(),
        identities: setup.identities.clone(),
        page_tls,
    });
    Ok(Listeners {
        proxy,
        explicit,
        transparent_http,
        transparent_tls,
        block_page,
        block_page_tls,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{self, SniMismatch};

    #[test]
    fn proxy_section_defaults_and_values() {
        let cfg = config::parse("[profiles.invites]\n", "t.toml", Path::new("/etc/vigie")).unwrap();
        let p = &cfg.proxy;
        assert_eq!(p.connect_ports, vec![443]);
        assert!(
            !p.allow_loopback_origins,
            "loopback origins are refused unless asked for"
        );
        assert!(
            p.transparent_http_listen.is_none() && p.transparent_tls_listen.is_none(),
            "transparent mode is off by default"
        );
        assert_eq!(p.sni_mismatch, SniMismatch::DecideBoth);

        let text = r#"
[profiles.invites]
[proxy]
connect_ports = [443, 8443]
internal_networks = ["10.9.0.0/16", "fd00::/8"]
auth_required_networks = ["10.2.0.0/16"]
users_file = "users.txt"
sni_mismatch = "block"
transparent_http_listen = "0.0.0.0:3129"
header_timeout_ms = 2500
"#;
        let cfg = config::parse(text, "t.toml", Path::new("/etc/vigie")).unwrap();
        let p = &cfg.proxy;
        assert_eq!(p.connect_ports, vec![443, 8443]);
        assert_eq!(p.internal_networks.len(), 2);
        assert_eq!(
            p.users_file.as_deref(),
            Some(Path::new("/etc/vigie/users.txt"))
        );
        assert_eq!(p.sni_mismatch, SniMismatch::Block);
        assert_eq!(
            p.transparent_http_listen,
            Some("0.0.0.0:3129".parse().unwrap())
        );
        assert_eq!(p.header_timeout, std::time::Duration::from_millis(2500));
    }

    #[test]
    fn block_page_tls_settings() {
        let text = "[profiles.invites]\n[proxy]\nblock_page_tls_listen = \"0.0.0.0:443\"\nblock_page_cert_file = \"bp.crt\"\nblock_page_key_file = \"/k/bp.key\"\n";
        let cfg = config::parse(text, "t.toml", Path::new("/etc/vigie")).unwrap();
        assert_eq!(
            cfg.proxy.block_page_tls_listen,
            Some("0.0.0.0:443".parse().unwrap())
        );
        assert_eq!(
            cfg.proxy.block_page_cert,
            Some(("/etc/vigie/bp.crt".into(), "/k/bp.key".into()))
        );
        let text = "[profiles.invites]\n[proxy]\nblock_page_tls_listen = \"0.0.0.0:443\"\nblock_page_cert_file = \"bp.crt\"\n";
        let err = config::parse(text, "t.toml", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "t.toml:4:24: proxy.block_page_cert_file and proxy.block_page_key_file go together"
            ),
            "{err}"
        );
    }

    #[test]
    fn proxy_section_errors_point_at_the_problem() {
        let text = "[profiles.invites]\n[proxy]\ninternal_networks = [\"10.9.0.0/33\"]\nvia_name = \"a b\"\nmax_header_bytes = 100\ntransparent_tls_listen = \"nowhere\"\nconect_ports = [443]\n";
        let err = config::parse(text, "t.toml", Path::new("/"))
            .unwrap_err()
            .to_string();
        for needle in [
            "t.toml:3:22: invalid CIDR \"10.9.0.0/33\"",
            "proxy.via_name",
            "proxy.max_header_bytes must be at least 8192",
            "t.toml:6:26: invalid address \"nowhere\" for proxy.transparent_tls_listen",
            "unknown key \"conect_ports\" — did you mean \"connect_ports\"?",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in\n{err}");
        }
    }
}
