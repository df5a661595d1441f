//! The TOML schema of vigie's configuration, as serde structs.
//!
//! Every struct denies unknown keys so a typo is an error, never a silently ignored
//! setting. Values that later validation must point at (category names, CIDRs,
//! times, time zone) are `Spanned` so errors carry `file:line:column`.

use serde::Deserialize;
use toml::Spanned;

use crate::lists::Format;

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// IANA time zone in which schedules are read.
    #[serde(default = "default_timezone")]
    pub timezone: Spanned<String>,
    /// Profile for clients that no network maps and nobody identified.
    #[serde(default = "default_profile")]
    pub default_profile: Spanned<String>,
    /// Networks allowed to use vigie at all; everyone else is refused.
    #[serde(default = "default_client_networks")]
    pub client_networks: Vec<Spanned<String>>,
    /// Base directory of relative list paths (default: the config file's directory,
    /// or the shipped `blocklists/` for the embedded default).
    #[serde(default)]
    pub lists_dir: Option<String>,
    /// Where vigie keeps its state (list cache, audit store).
    #[serde(default)]
    pub data_dir: Option<String>,
    #[serde(default)]
    pub categories: Vec<RawCategory>,
    #[serde(default)]
    pub lists: Vec<RawList>,
    #[serde(default)]
    pub schedules: indexmap::IndexMap<String, RawSchedule>,
    #[serde(default)]
    pub profiles: indexmap::IndexMap<String, RawProfile>,
    #[serde(default)]
    pub networks: Vec<RawNetwork>,
    /// Static identities: an IP or CIDR that is always the same user or profile
    /// (lab machines, library printers, a staff room).
    #[serde(default)]
    pub mappings: Vec<RawMapping>,
    #[serde(default)]
    pub audit: RawAudit,
    /// LDAP / Active Directory authentication; absent = local users file only.
    #[serde(default)]
    pub ldap: Option<RawLdap>,
    #[serde(default)]
    pub dns: RawDns,
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub portal: RawPortal,
    /// The admin web app (`src/admin/`): who may use it, sessions, TLS.
    #[serde(default)]
    pub admin: RawAdmin,
    /// `vigie lists update`: where fresh lists come from and how they are checked.
    #[serde(default)]
    pub lists_update: RawListsUpdate,
}

fn default_timezone() -> Spanned<String> {
    Spanned::new(0..0, "America/Toronto".to_string())
}

fn default_profile() -> Spanned<String> {
    Spanned::new(0..0, "invites".to_string())
}

/// Loopback and the private ranges: a school network, never the internet.
pub const DEFAULT_CLIENT_NETWORKS: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
    "fe80::/10",
];

fn default_client_networks() -> Vec<Spanned<String>> {
    DEFAULT_CLIENT_NETWORKS
        .iter()
        .map(|s| Spanned::new(0..0, s.to_string()))
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCategory {
    pub id: Spanned<String>,
    /// French label (fr-CA), shown first on every screen.
    pub fr: String,
    /// English label.
    pub en: String,
    #[serde(default)]
    pub description_fr: Option<String>,
    #[serde(default)]
    pub description_en: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawList {
    pub path: Spanned<String>,
    pub format: Format,
    pub category: Spanned<String>,
    #[serde(default)]
    pub optional: bool,
    /// Entries of this list are exceptions (allowlist) for its category.
    #[serde(default)]
    pub exception: bool,
    /// `https://` address `vigie lists update` downloads this list from; the copy
    /// it keeps in `<data_dir>/lists/` then replaces `path` (which stays the
    /// fallback until a first update succeeds).
    #[serde(default)]
    pub url: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    /// e.g. `["mon-fri"]`, `["lun", "mer"]`.
    pub days: Vec<Spanned<String>>,
    /// e.g. `["08:00-11:30", "13:00-16:00"]`; absent = the whole day.
    #[serde(default)]
    pub times: Vec<Spanned<String>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SafeSearch {
    #[default]
    Off,
    /// Search engines in safe mode, YouTube restricted moderately.
    Moderate,
    /// Search engines in safe mode, YouTube strictly restricted.
    Strict,
}

/// How a blocked name is answered by the DNS filter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockMode {
    /// A/AAAA point at vigie's block page, so a browser shows why.
    #[default]
    Page,
    Nxdomain,
    /// `0.0.0.0` / `::`.
    Null,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    #[default]
    Block,
    Allow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    #[serde(default)]
    pub fr: Option<String>,
    #[serde(default)]
    pub en: Option<String>,
    /// Categories blocked at all times (unless a scheduled `allow` rule is active).
    #[serde(default)]
    pub block: Vec<Spanned<String>>,
    /// Allow overrides: domains (suffix match) or URL prefixes. They beat everything.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// Deny overrides: domains or URL prefixes, blocked whatever the lists say.
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    #[serde(default)]
    pub safe_search: SafeSearch,
    #[serde(default)]
    pub block_mode: BlockMode,
    /// Whether a CONNECT or a request to a bare IP address is allowed.
    #[serde(default)]
    pub bare_ip: Action,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    /// Record this profile's allowed traffic in the audit trail (overrides
    /// `[dns] log_allowed` and `[proxy] log_allowed`); blocks are always recorded.
    #[serde(default)]
    pub record_allowed: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub action: Spanned<Action>,
    pub categories: Vec<Spanned<String>>,
    /// Name of a `[schedules.*]` entry; absent = always.
    #[serde(default)]
    pub schedule: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub cidr: Spanned<String>,
    pub profile: Spanned<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// Which store keeps the audit trail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditStoreKind {
    /// SQLite in WAL mode, `<data_dir>/audit.db`.
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by a school board (`postgres_url`).
    Postgres,
    /// No queryable store (events still go to the JSON-lines log).
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    #[serde(default)]
    pub store: AuditStoreKind,
    /// `host=… user=… dbname=…` or `postgresql://…`; prefer `postgres_url_file`.
    #[serde(default)]
    pub postgres_url: Option<String>,
    /// File holding the connection string (so its password stays out of the config).
    #[serde(default)]
    pub postgres_url_file: Option<String>,
    /// Extra CAs (PEM) trusted for the server's certificate when the connection
    /// string asks for TLS (`sslmode=require`), beside the system's.
    #[serde(default)]
    pub postgres_ca_file: Option<String>,
    /// Days audit events are kept before they are purged.
    #[serde(default = "default_retention_days")]
    pub retention_days: Spanned<u32>,
    /// Show user names in aggregate views (dashboards, `vigie audit stats`) only as
    /// stable pseudonyms; a person's own history still shows the name.
    #[serde(default)]
    pub pseudonymize: bool,
    /// Also append every event to `<data_dir>/audit.jsonl` (for log shippers).
    #[serde(default)]
    pub jsonl: bool,
}

fn default_retention_days() -> Spanned<u32> {
    Spanned::new(0..0, 90)
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            store: AuditStoreKind::default(),
            postgres_url: None,
            postgres_url_file: None,
            postgres_ca_file: None,
            retention_days: default_retention_days(),
            pseudonymize: false,
            jsonl: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLdap {
    /// `ldaps://ad.example.qc.ca` (TLS) or `ldap://…` with `starttls = true`.
    pub url: Spanned<String>,
    #[serde(default)]
    pub starttls: bool,
    /// DN of a user, `{user}` replaced by the escaped login: direct bind, no search.
    #[serde(default)]
    pub user_dn: Option<String>,
    /// Otherwise: search `user_filter` (e.g. `(sAMAccountName={user})`) under
    /// `base_dn` with the service account, then bind as the DN found.
    #[serde(default)]
    pub base_dn: Option<String>,
    #[serde(default)]
    pub user_filter: Option<String>,
    #[serde(default)]
    pub bind_dn: Option<String>,
    /// File holding the service account's password (never in the config itself).
    #[serde(default)]
    pub bind_password_file: Option<String>,
    /// Where groups live, and how a group names its members (`{dn}` = the user's DN).
    #[serde(default)]
    pub group_base: Option<String>,
    #[serde(default)]
    pub group_filter: Option<String>,
    /// CA certificate(s) (PEM) the directory's TLS certificate must chain to, for a
    /// school CA; relative to the config file. Absent: the system's trusted roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// How long a successful login is remembered (saves a bind per request).
    #[serde(default)]
    pub cache_seconds: Option<u64>,
    /// Group DN → profile, first match wins.
    #[serde(default)]
    pub groups: Vec<RawLdapGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLdapGroup {
    pub dn: String,
    pub profile: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMapping {
    pub cidr: Spanned<String>,
    /// The user this address always is (audit attribution); optional.
    #[serde(default)]
    pub user: Option<String>,
    pub profile: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// Upstream resolvers (`ip:port`, `tcp://ip:port`, `tls://ip:port#name`,
    /// `https://ip:port/path#name`). Empty: the system's resolvers.
    #[serde(default)]
    pub upstreams: Vec<Spanned<String>>,
    /// Queries per second one client IP may send; 0 turns the limit off.
    #[serde(default = "default_rate_limit_qps")]
    pub rate_limit_qps: u32,
    /// Queries a client may send in one burst above its steady rate.
    #[serde(default = "default_rate_limit_burst")]
    pub rate_limit_burst: u32,
    /// Most answers kept in the cache (positive and negative).
    #[serde(default = "default_cache_size")]
    pub cache_size: u64,
    /// Longest time an upstream answer is cached, whatever its TTL says (seconds).
    #[serde(default = "default_cache_max_ttl")]
    pub cache_max_ttl: u32,
    /// Longest time a negative answer (NXDOMAIN, no data) is cached (seconds).
    #[serde(default = "default_cache_negative_max_ttl")]
    pub cache_negative_max_ttl: u32,
    /// TTL of the answers vigie gives for blocked names (seconds).
    #[serde(default = "default_blocked_ttl")]
    pub blocked_ttl: u32,
    /// Address of vigie's block page for `block_mode = "page"` (A answers).
    #[serde(default)]
    pub block_page_ipv4: Option<Spanned<String>>,
    /// Address of vigie's block page for `block_mode = "page"` (AAAA answers).
    #[serde(default)]
    pub block_page_ipv6: Option<Spanned<String>>,
    /// Record allowed queries in the audit log too (default: blocked ones only).
    #[serde(default)]
    pub log_allowed: bool,
    /// How long one query may wait for the upstreams before SERVFAIL (milliseconds).
    #[serde(default = "default_upstream_timeout_ms")]
    pub upstream_timeout_ms: u64,
    /// Extra CA certificates (PEM) trusted for `tls://` and `https://` upstreams,
    /// beside the public roots: a school board's own resolvers.
    #[serde(default)]
    pub upstream_ca_file: Option<String>,
}

impl Default for RawDns {
    fn default() -> Self {
        RawDns {
            upstreams: Vec::new(),
            rate_limit_qps: default_rate_limit_qps(),
            rate_limit_burst: default_rate_limit_burst(),
            cache_size: default_cache_size(),
            cache_max_ttl: default_cache_max_ttl(),
            cache_negative_max_ttl: default_cache_negative_max_ttl(),
            blocked_ttl: default_blocked_ttl(),
            block_page_ipv4: None,
            block_page_ipv6: None,
            log_allowed: false,
            upstream_timeout_ms: default_upstream_timeout_ms(),
            upstream_ca_file: None,
        }
    }
}

// A busy school device (a shared lab PC, a teacher's laptop opening many tabs) stays
// well under 100 qps; a flood from one compromised device does not.
fn default_rate_limit_qps() -> u32 {
    200
}
fn default_rate_limit_burst() -> u32 {
    400
}
fn default_cache_size() -> u64 {
    100_000
}
fn default_cache_max_ttl() -> u32 {
    86_400
}
// RFC 2308 §5 suggests one to three hours; Unbound uses one.
fn default_cache_negative_max_ttl() -> u32 {
    3_600
}
fn default_blocked_ttl() -> u32 {
    60
}
fn default_upstream_timeout_ms() -> u64 {
    2_000
}

/// What the proxy does when a TLS ClientHello names another host than the CONNECT
/// line (`CONNECT a.example:443` carrying SNI `b.example`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SniMismatch {
    /// Decide on both names; either one blocked blocks the tunnel. CDNs and
    /// CONNECTs to an IP with a named SNI stay usable.
    #[default]
    DecideBoth,
    /// Refuse any tunnel whose SNI differs from its CONNECT host (domain fronting),
    /// a CONNECT to an IP address that carries a named SNI included.
    Block,
}

/// The forward proxy (`[proxy]`). Every key has a default, so an absent table is a
/// working proxy on `--proxy-listen`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    /// Ports a CONNECT may target; everything else is refused (403).
    #[serde(default = "default_connect_ports")]
    pub connect_ports: Vec<u16>,
    /// Most client connections served at once; more wait in the kernel's backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most of those one client address may hold at once (0: no cap of its own),
    /// so one device cannot take every place from the others.
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
    /// Largest request head (request line + headers) a client may send, bytes.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields in one request.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Time a client has to send a complete request head (slowloris), milliseconds.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Time to open a TCP connection to an origin, milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time an origin has to start its response, milliseconds.
    #[serde(default = "default_first_byte_timeout_ms")]
    pub first_byte_timeout_ms: u64,
    /// Time a keep-alive connection or a tunnel may stay silent, milliseconds.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Time a CONNECT client has to send its first bytes (the ClientHello), milliseconds.
    #[serde(default = "default_client_hello_timeout_ms")]
    pub client_hello_timeout_ms: u64,
    /// Extra ranges no request may reach (the school's servers, the gateway's LAN
    /// side). Loopback, link-local, unspecified, multicast and vigie's own listeners
    /// are always refused.
    #[serde(default)]
    pub internal_networks: Vec<Spanned<String>>,
    /// Let requests reach loopback origins. For tests and development only: on a
    /// gateway this would open the box's own services to every client.
    #[serde(default)]
    pub allow_loopback_origins: bool,
    /// What to do when the SNI differs from the CONNECT host.
    #[serde(default)]
    pub sni_mismatch: SniMismatch,
    /// Client networks that must authenticate (Basic, 407) before being served.
    /// Elsewhere credentials are used when sent, never asked for.
    #[serde(default)]
    pub auth_required_networks: Vec<Spanned<String>>,
    /// Users file (`vigie users add`); relative to the config file. Default:
    /// `<data_dir>/users`.
    #[serde(default)]
    pub users_file: Option<String>,
    /// The realm named in the 407 challenge.
    #[serde(default = "default_realm")]
    pub auth_realm: String,
    /// Base URL of the admin app's review form, linked from block pages. Default:
    /// the admin listener's own address + `/review`.
    #[serde(default)]
    pub review_url: Option<String>,
    /// Name vigie gives itself in `Via` headers.
    #[serde(default = "default_via_name")]
    pub via_name: String,
    /// Transparent HTTP listener (nftables redirect of port 80), e.g. `0.0.0.0:3129`.
    /// Absent: off.
    #[serde(default)]
    pub transparent_http_listen: Option<Spanned<String>>,
    /// Transparent TLS listener (redirect of port 443), e.g. `0.0.0.0:3130`. Absent: off.
    #[serde(default)]
    pub transparent_tls_listen: Option<Spanned<String>>,
    /// Plain-HTTP listener that answers every request with the block page for its
    /// Host, e.g. `0.0.0.0:80` on the address `[dns] block_page_ipv4` names, for
    /// clients that use neither the proxy nor the transparent redirect. Absent: off.
    #[serde(default)]
    pub block_page_listen: Option<Spanned<String>>,
    /// TLS listener of the block page, e.g. `0.0.0.0:443` on the block-page address:
    /// answers every name with one certificate (browsers warn, then show the page).
    /// Absent: off.
    #[serde(default)]
    pub block_page_tls_listen: Option<Spanned<String>>,
    /// Certificate chain (PEM) of the TLS block page; relative to the config file.
    /// Absent: a self-signed certificate made at first start and kept in the data
    /// directory (`block-page.crt`), so browsers that accepted it keep accepting it.
    #[serde(default)]
    pub block_page_cert_file: Option<Spanned<String>>,
    /// Private key (PEM) of `block_page_cert_file`; both or neither.
    #[serde(default)]
    pub block_page_key_file: Option<Spanned<String>>,
    /// Record allowed requests in the audit log too (default: yes — the proxy's audit
    /// is the record of who went where).
    #[serde(default = "default_true")]
    pub log_allowed: bool,
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            connect_ports: default_connect_ports(),
            max_connections: default_max_connections(),
            max_connections_per_client: default_max_connections_per_client(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            header_timeout_ms: default_header_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            first_byte_timeout_ms: default_first_byte_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            client_hello_timeout_ms: default_client_hello_timeout_ms(),
            internal_networks: Vec::new(),
            allow_loopback_origins: false,
            sni_mismatch: SniMismatch::default(),
            auth_required_networks: Vec::new(),
            users_file: None,
            auth_realm: default_realm(),
            review_url: None,
            via_name: default_via_name(),
            transparent_http_listen: None,
            transparent_tls_listen: None,
            block_page_listen: None,
            block_page_tls_listen: None,
            block_page_cert_file: None,
            block_page_key_file: None,
            log_allowed: true,
        }
    }
}

fn default_connect_ports() -> Vec<u16> {
    vec![443]
}
// A school of a few thousand devices, each with a browser holding ~10 connections.
fn default_max_connections() -> usize {
    20_000
}
// A tenth of the places: a browser holds tens of connections, a lab's terminal
// server with thirty sessions behind one address a couple of thousand.
fn default_max_connections_per_client() -> usize {
    2_000
}
// Browsers send 1–4 KiB of headers; cookies of some sites reach ~16 KiB.
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_header_timeout_ms() -> u64 {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_first_byte_timeout_ms() -> u64 {
    60_000
}
// Browsers keep idle connections ~60–300 s; a tunnel silent this long is dead.
fn default_idle_timeout_ms() -> u64 {
    300_000
}
fn default_client_hello_timeout_ms() -> u64 {
    10_000
}
fn default_realm() -> String {
    "vigie".to_string()
}
fn default_via_name() -> String {
    "vigie".to_string()
}
fn default_true() -> bool {
    true
}

/// The captive portal (`/portal` on the admin listener).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPortal {
    /// Client networks whose unidentified clients are sent to the portal to log in.
    #[serde(default)]
    pub networks: Vec<Spanned<String>>,
    /// A login ends after this long without any DNS query or proxy request, seconds.
    #[serde(default = "default_portal_idle")]
    pub idle_timeout_seconds: Spanned<u64>,
    /// A login ends after this long whatever the activity (a school day), seconds.
    #[serde(default = "default_portal_max")]
    pub max_session_seconds: Spanned<u64>,
    /// The portal's address as clients reach it (`http://vigie.ecole.local/portal`).
    /// Default: the admin listener's address + `/portal`.
    #[serde(default)]
    pub url: Option<Spanned<String>>,
}

fn default_portal_idle() -> Spanned<u64> {
    Spanned::new(0..0, 1800)
}
fn default_portal_max() -> Spanned<u64> {
    Spanned::new(0..0, 36_000)
}

impl Default for RawPortal {
    fn default() -> Self {
        RawPortal {
            networks: Vec::new(),
            idle_timeout_seconds: default_portal_idle(),
            max_session_seconds: default_portal_max(),
            url: None,
        }
    }
}

/// The admin web app (`[admin]`). Absent: the app runs on the admin listener and
/// nobody can log in (no role is assigned).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Who gets which role: `[[admin.roles]] user = "x"` or `group = "<ldap dn>"`.
    #[serde(default)]
    pub roles: Vec<RawAdminRole>,
    /// A login ends after this long, minutes.
    #[serde(default = "default_session_minutes")]
    pub session_minutes: Spanned<u64>,
    /// Mark session cookies `Secure` on the plain listener too (behind a reverse
    /// proxy that terminates TLS). The HTTPS listener always does.
    #[serde(default)]
    pub secure_cookies: bool,
    /// HTTPS listener of the admin app, e.g. `0.0.0.0:8443`. Absent: plain HTTP only.
    #[serde(default)]
    pub tls_listen: Option<Spanned<String>>,
    /// Certificate chain (PEM) of the HTTPS listener; relative to the config file.
    /// Absent: a self-signed certificate kept in the data directory (`admin.crt`).
    #[serde(default)]
    pub tls_cert_file: Option<Spanned<String>>,
    /// Private key (PEM) of `tls_cert_file`; both or neither.
    #[serde(default)]
    pub tls_key_file: Option<Spanned<String>>,
    /// Opening one person's history needs a second auditor or IT admin to approve.
    #[serde(default)]
    pub history_second_approver: bool,
    /// Tell people when their history is read: the portal shows them who read it,
    /// when and why (where the school's policy requires it).
    #[serde(default)]
    pub notify_subject: bool,
}

fn default_session_minutes() -> Spanned<u64> {
    Spanned::new(0..0, 480)
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            roles: Vec::new(),
            session_minutes: default_session_minutes(),
            secure_cookies: false,
            tls_listen: None,
            tls_cert_file: None,
            tls_key_file: None,
            history_second_approver: false,
            notify_subject: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminRole {
    /// A login name (users file or LDAP).
    #[serde(default)]
    pub user: Option<Spanned<String>>,
    /// An LDAP group DN: every member gets the role.
    #[serde(default)]
    pub group: Option<Spanned<String>>,
    /// `it-admin`, `director` or `auditor`.
    pub role: Spanned<String>,
    /// Restricts a director to these networks (schools); empty: all of them.
    #[serde(default)]
    pub networks: Vec<Spanned<String>>,
}

/// `[lists_update]`: how `vigie lists update` refreshes the lists. Every key has a
/// default, so an absent table updates the UT1 lists from the university's server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListsUpdate {
    /// UT1's whole tarball (every category); `""` turns UT1 updates off.
    #[serde(default = "default_ut1_url")]
    pub ut1_url: Spanned<String>,
    /// Where the configuration's UT1 category directories are, relative to
    /// `lists_dir`: `[[lists]]` of format `ut1` under it are refreshed from the tarball.
    #[serde(default = "default_ut1_path")]
    pub ut1_path: Spanned<String>,
    /// Extra CA certificate(s) (PEM) trusted besides the system's roots: a board's
    /// TLS-inspecting proxy, a local mirror. Relative to the config file.
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
    /// Time to open a TCP + TLS connection to a list server, milliseconds.
    #[serde(default = "default_update_connect_timeout_ms")]
    pub connect_timeout_ms: Spanned<u64>,
    /// Time one download may take from request to last byte, milliseconds.
    #[serde(default = "default_update_timeout_ms")]
    pub timeout_ms: Spanned<u64>,
    /// Largest body accepted from one URL (as transferred), bytes.
    #[serde(default = "default_update_max_bytes")]
    pub max_bytes: Spanned<u64>,
    /// Largest total a tarball may unpack to, bytes (a decompression bomb stops here).
    #[serde(default = "default_update_max_unpacked_bytes")]
    pub max_unpacked_bytes: Spanned<u64>,
    /// Largest share of rejected lines a refreshed list may have (0.05 = 5 %).
    #[serde(default = "default_update_max_bad_share")]
    pub max_bad_share: Spanned<f64>,
    /// Fewest entries a refreshed required list must hold (an optional one too,
    /// when the list in force has entries).
    #[serde(default = "default_update_min_entries")]
    pub min_entries: Spanned<u64>,
    /// Smallest share of the list in force a refreshed list must keep (0.5 = half
    /// its entries; 0 turns the check off): a list that collapsed at its source
    /// (an empty or cut file UT1 once published) is refused, the old one kept.
    #[serde(default = "default_update_min_share_of_current")]
    pub min_share_of_current: Spanned<f64>,
    /// List sets kept on disk, the one in force included (2: it and the previous).
    #[serde(default = "default_update_keep")]
    pub keep: Spanned<u64>,
}

/// UT1's own download server (Université Toulouse Capitole).
pub const DEFAULT_UT1_URL: &str =
    "https://dsi.ut-capitole.fr/blacklists/download/blacklists.tar.gz";

fn default_ut1_url() -> Spanned<String> {
    Spanned::new(0..0, DEFAULT_UT1_URL.to_string())
}
fn default_ut1_path() -> Spanned<String> {
    Spanned::new(0..0, "ut1".to_string())
}
fn default_update_connect_timeout_ms() -> Spanned<u64> {
    Spanned::new(0..0, 10_000)
}
// UT1's tarball is ~20 MB: ten minutes is 35 kB/s, a congested school link.
fn default_update_timeout_ms() -> Spanned<u64> {
    Spanned::new(0..0, 600_000)
}
fn default_update_max_bytes() -> Spanned<u64> {
    Spanned::new(0..0, 100 * 1024 * 1024)
}
// UT1 unpacks to ~300 MB (adult/domains alone is most of it).
fn default_update_max_unpacked_bytes() -> Spanned<u64> {
    Spanned::new(0..0, 2 * 1024 * 1024 * 1024)
}
fn default_update_max_bad_share() -> Spanned<f64> {
    Spanned::new(0..0, 0.05)
}
fn default_update_min_entries() -> Spanned<u64> {
    Spanned::new(0..0, 1)
}
// UT1's categories grow or shrink by a few percent a day; half gone in one
// update is a broken source, not a cleanup.
fn default_update_min_share_of_current() -> Spanned<f64> {
    Spanned::new(0..0, 0.5)
}
fn default_update_keep() -> Spanned<u64> {
    Spanned::new(0..0, 2)
}

impl Default for RawListsUpdate {
    fn default() -> Self {
        RawListsUpdate {
            ut1_url: default_ut1_url(),
            ut1_path: default_ut1_path(),
            ca_file: None,
            connect_timeout_ms: default_update_connect_timeout_ms(),
            timeout_ms: default_update_timeout_ms(),
            max_bytes: default_update_max_bytes(),
            max_unpacked_bytes: default_update_max_unpacked_bytes(),
            max_bad_share: default_update_max_bad_share(),
            min_entries: default_update_min_entries(),
            min_share_of_current: default_update_min_share_of_current(),
            keep: default_update_keep(),
        }
    }
}
