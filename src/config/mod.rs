//! Configuration: one TOML file (or the embedded default), parsed with serde and
//! validated into a typed, resolved [`Config`].
//!
//! Validation reports *every* problem it can find, each as
//! `file:line:column: message`, with a suggestion where one fits, so an IT person
//! fixes a file in one pass. This module does not compile lists or decide anything;
//! `policy::Snapshot` builds on the `Config` it returns.

mod schedule;
mod schema;

use std::fmt;
use std::path::{Path, PathBuf};

use chrono_tz::Tz;
use ipnet::IpNet;
use toml::Spanned;

pub use schedule::{Schedule, parse_days, parse_time_range};
pub use schema::{
    Action, AuditStoreKind, BlockMode, DEFAULT_CLIENT_NETWORKS, DEFAULT_UT1_URL, RawConfig,
    SafeSearch, SniMismatch,
};

use crate::lists::{CatSet, CategoryId, SourceId, SourceSpec};

/// The configuration used when no file is given: the three school profiles and the
/// lists shipped in `blocklists/`.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");
/// How the embedded default names itself in messages.
pub const EMBEDDED_NAME: &str = "<embedded default config>";

pub type ProfileId = u16;

/// One problem found in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Every problem found in a configuration; never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A category as the people using vigie see it.
#[derive(Clone, Debug)]
pub struct Category {
    pub id: String,
    pub fr: String,
    pub en: String,
    pub description_fr: Option<String>,
    pub description_en: Option<String>,
}

/// An allow or deny override: a domain (matches its subdomains) or a URL prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Override {
    Domain(String),
    /// Host (normalised, without `www.`) and path prefix (starts with `/`).
    Url {
        host: String,
        path: String,
    },
}

impl fmt::Display for Override {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Override::Domain(d) => write!(f, "{d}"),
            Override::Url { host, path } => write!(f, "{host}{path}"),
        }
    }
}

/// A category rule of a profile, optionally limited to a schedule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub action: Action,
    pub categories: CatSet,
    pub schedule: Option<usize>,
    /// 1-based line of the rule in the config, for explain traces.
    pub line: usize,
}

#[derive(Clone, Debug)]
pub struct Profile {
    pub name: String,
    pub fr: String,
    pub en: String,
    /// Categories blocked at all times (scheduled `allow` rules may open them).
    pub block: CatSet,
    pub allow: Vec<Override>,
    pub deny: Vec<Override>,
    pub safe_search: SafeSearch,
    pub block_mode: BlockMode,
    pub bare_ip: Action,
    pub rules: Vec<Rule>,
    /// Record allowed traffic of this profile; `None`: each service's `log_allowed`.
    pub record_allowed: Option<bool>,
}

/// Where and how long the audit trail is kept.
#[derive(Clone, Debug)]
pub struct AuditSettings {
    pub store: AuditStoreKind,
    pub postgres_url: Option<String>,
    /// Extra CAs for the PostgreSQL server's certificate (`sslmode=require`).
    pub postgres_ca_file: Option<PathBuf>,
    pub retention_days: u32,
    /// User names appear pseudonymised in aggregate views.
    pub pseudonymize: bool,
    /// A JSON-lines copy of every event in `<data_dir>/audit.jsonl`.
    pub jsonl: bool,
}

/// Resolved `[portal]` settings; see `schema::RawPortal`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortalConfig {
    pub networks: Vec<IpNet>,
    pub idle_timeout: std::time::Duration,
    pub max_session: std::time::Duration,
    pub url: Option<String>,
}

impl Default for PortalConfig {
    fn default() -> Self {
        let raw = schema::RawPortal::default();
        PortalConfig {
            networks: Vec::new(),
            idle_timeout: std::time::Duration::from_secs(*raw.idle_timeout_seconds.get_ref()),
            max_session: std::time::Duration::from_secs(*raw.max_session_seconds.get_ref()),
            url: None,
        }
    }
}

/// A role of the admin web app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AdminRole {
    /// Profiles, lists, health; sees the list of history accesses.
    ItAdmin,
    /// Dashboards and unblock requests (of their networks when restricted).
    Director,
    /// One person's history, with a written justification.
    Auditor,
}

impl AdminRole {
    pub const ALL: [AdminRole; 3] = [AdminRole::ItAdmin, AdminRole::Director, AdminRole::Auditor];

    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::ItAdmin => "it-admin",
            AdminRole::Director => "director",
            AdminRole::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Option<AdminRole> {
        AdminRole::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Who a role assignment is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminSubject {
    User(String),
    /// An LDAP group DN, lowercased (as the authenticator reports groups).
    Group(String),
}

/// One `[[admin.roles]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminRoleGrant {
    pub subject: AdminSubject,
    pub role: AdminRole,
    /// Empty: every network.
    pub networks: Vec<IpNet>,
}

/// Resolved `[admin]` settings; see `schema::RawAdmin`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    pub roles: Vec<AdminRoleGrant>,
    pub session: std::time::Duration,
    pub secure_cookies: bool,
    pub tls_listen: Option<std::net::SocketAddr>,
    /// Certificate chain and key files (absolute); `None`: self-signed.
    pub tls_cert: Option<(PathBuf, PathBuf)>,
    pub history_second_approver: bool,
    /// The person whose history is read is told at the portal.
    pub notify_subject: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            roles: Vec::new(),
            session: std::time::Duration::from_secs(
                60 * *schema::RawAdmin::default().session_minutes.get_ref(),
            ),
            secure_cookies: false,
            tls_listen: None,
            tls_cert: None,
            history_second_approver: false,
            notify_subject: false,
        }
    }
}

impl AdminConfig {
    /// The roles of `user` (member of `groups`), each with its networks (empty: all).
    pub fn roles_of(&self, user: &str, groups: &[impl AsRef<str>]) -> Vec<(AdminRole, Vec<IpNet>)> {
        let mut out: Vec<(AdminRole, Vec<IpNet>)> = Vec::new();
        for g in &self.roles {
            let applies = match &g.subject {
                AdminSubject::User(u) => u == user,
                AdminSubject::Group(dn) => {
                    groups.iter().any(|x| x.as_ref().eq_ignore_ascii_case(dn))
                }
            };
            if !applies {
                continue;
            }
            match out.iter_mut().find(|(r, _)| *r == g.role) {
                // Two grants of one role: the union of their networks, and an
                // unrestricted grant wins.
                Some((_, nets)) => {
                    if nets.is_empty() || g.networks.is_empty() {
                        nets.clear();
                    } else {
                        nets.extend(g.networks.iter().copied());
                    }
                }
                None => out.push((g.role, g.networks.clone())),
            }
        }
        out.sort_by_key(|(r, _)| *r);
        out
    }
}

/// LDAP / Active Directory settings, validated.
#[derive(Clone, Debug)]
pub struct LdapSettings {
    pub url: String,
    pub starttls: bool,
    pub user_dn: Option<String>,
    pub base_dn: Option<String>,
    pub user_filter: String,
    pub bind_dn: Option<String>,
    pub bind_password_file: Option<PathBuf>,
    pub group_base: Option<String>,
    pub group_filter: String,
    /// Trusted CA certificates (PEM) for ldaps / StartTLS; `None`: system roots.
    pub ca_file: Option<PathBuf>,
    pub timeout: std::time::Duration,
    pub cache_ttl: std::time::Duration,
    /// (lowercased group DN, profile name), first match wins.
    pub groups: Vec<(String, String)>,
}

/// A static identity: every client in `net` is `user` (if given) with `profile`.
#[derive(Clone, Debug)]
pub struct Mapping {
    pub net: IpNet,
    pub user: Option<String>,
    pub profile: ProfileId,
}

#[derive(Clone, Debug)]
pub struct Network {
    pub net: IpNet,
    pub profile: ProfileId,
    pub name: Option<String>,
}

/// Where an updatable list comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateOrigin {
    /// A category directory of UT1's tarball (`gambling`, `audio-video` …).
    Ut1 { category_dir: String },
    /// Its own `https://` URL (`[[lists]] url`).
    Url(String),
}

/// A list source that `vigie lists update` refreshes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateTarget {
    /// Index in [`Config::sources`].
    pub source: usize,
    /// Its path relative to the list base, as configured (`ut1/gambling`): the same
    /// path inside an updated set.
    pub rel: PathBuf,
    /// Where it is read from while no updated set holds it (the shipped copy).
    pub fallback: PathBuf,
    pub origin: UpdateOrigin,
}

/// Resolved `[lists_update]` settings; see `schema::RawListsUpdate`.
#[derive(Clone, Debug, PartialEq)]
pub struct ListsUpdateConfig {
    /// `None`: UT1 is not updated.
    pub ut1_url: Option<String>,
    /// Relative to the list base (`ut1`).
    pub ut1_path: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: std::time::Duration,
    pub timeout: std::time::Duration,
    pub max_bytes: u64,
    pub max_unpacked_bytes: u64,
    pub max_bad_share: f64,
    pub min_entries: u64,
    pub min_share_of_current: f64,
    pub keep: usize,
    /// The list sources an update refreshes, in source order.
    pub targets: Vec<UpdateTarget>,
}

/// `--data-dir` given on the command line: it wins over the file's `data_dir` for
/// every configuration this process loads, the first and each reload, so updated
/// lists, cache and audit store are looked for in one place.
static DATA_DIR_OVERRIDE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Sets the process-wide `--data-dir` (once, at start-up; later calls are ignored).
pub fn override_data_dir(dir: PathBuf) {
    let _ = DATA_DIR_OVERRIDE.set(dir);
}

/// A validated configuration, with every name resolved to an index.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from, as given (or [`EMBEDDED_NAME`]).
    pub origin: String,
    pub timezone: Tz,
    pub default_profile: ProfileId,
    pub client_networks: Vec<IpNet>,
    pub data_dir: Option<PathBuf>,
    pub categories: Vec<Category>,
    pub sources: Vec<SourceSpec>,
    pub schedules: Vec<Schedule>,
    pub profiles: Vec<Profile>,
    /// Sorted most specific first, so the first match wins.
    pub networks: Vec<Network>,
    /// Static identities, most specific first.
    pub mappings: Vec<Mapping>,
    pub ldap: Option<LdapSettings>,
    pub audit: AuditSettings,
    pub dns_upstreams: Vec<String>,
    /// The DNS filter's settings (`[dns]`).
    pub dns: DnsConfig,
    /// The forward proxy's settings (`[proxy]`).
    pub proxy: ProxyConfig,
    /// The captive portal's settings (`[portal]`).
    pub portal: PortalConfig,
    /// The admin web app's settings (`[admin]`).
    pub admin: AdminConfig,
    /// `vigie lists update`'s settings and the lists it refreshes (`[lists_update]`).
    pub lists_update: ListsUpdateConfig,
    /// The updated list set the sources are read from (`<data_dir>/lists/current`,
    /// resolved); `None`: the configured (shipped) files only.
    pub lists_set: Option<PathBuf>,
}

/// Resolved `[proxy]` settings; see `schema::RawProxy` for what each means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    pub connect_ports: Vec<u16>,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_timeout: std::time::Duration,
    pub connect_timeout: std::time::Duration,
    pub first_byte_timeout: std::time::Duration,
    pub idle_timeout: std::time::Duration,
    pub client_hello_timeout: std::time::Duration,
    pub internal_networks: Vec<IpNet>,
    pub allow_loopback_origins: bool,
    pub sni_mismatch: SniMismatch,
    pub auth_required_networks: Vec<IpNet>,
    /// Absolute; `None` means `<data_dir>/users` when a data dir is known.
    pub users_file: Option<PathBuf>,
    pub auth_realm: String,
    pub review_url: Option<String>,
    pub via_name: String,
    pub transparent_http_listen: Option<std::net::SocketAddr>,
    pub transparent_tls_listen: Option<std::net::SocketAddr>,
    pub block_page_listen: Option<std::net::SocketAddr>,
    pub block_page_tls_listen: Option<std::net::SocketAddr>,
    /// Certificate chain and key files of the TLS block page (absolute); `None`:
    /// a self-signed certificate.
    pub block_page_cert: Option<(PathBuf, PathBuf)>,
    pub log_allowed: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        let raw = schema::RawProxy::default();
        let ms = std::time::Duration::from_millis;
        ProxyConfig {
            connect_ports: raw.connect_ports,
            max_connections: raw.max_connections,
            max_connections_per_client: raw.max_connections_per_client,
            max_header_bytes: raw.max_header_bytes,
            max_headers: raw.max_headers,
            header_timeout: ms(raw.header_timeout_ms),
            connect_timeout: ms(raw.connect_timeout_ms),
            first_byte_timeout: ms(raw.first_byte_timeout_ms),
            idle_timeout: ms(raw.idle_timeout_ms),
            client_hello_timeout: ms(raw.client_hello_timeout_ms),
            internal_networks: Vec::new(),
            allow_loopback_origins: raw.allow_loopback_origins,
            sni_mismatch: raw.sni_mismatch,
            auth_required_networks: Vec::new(),
            users_file: None,
            auth_realm: raw.auth_realm,
            review_url: None,
            via_name: raw.via_name,
            transparent_http_listen: None,
            transparent_tls_listen: None,
            block_page_listen: None,
            block_page_tls_listen: None,
            block_page_cert: None,
            log_allowed: raw.log_allowed,
        }
    }
}

/// Resolved `[dns]` settings; see `schema::RawDns` for what each means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    pub rate_limit_qps: u32,
    pub rate_limit_burst: u32,
    pub cache_size: u64,
    pub cache_max_ttl: u32,
    pub cache_negative_max_ttl: u32,
    pub blocked_ttl: u32,
    pub block_page_ipv4: Option<std::net::Ipv4Addr>,
    pub block_page_ipv6: Option<std::net::Ipv6Addr>,
    pub log_allowed: bool,
    pub upstream_timeout: std::time::Duration,
    /// Extra trusted CAs for encrypted upstreams (`[dns] upstream_ca_file`).
    pub upstream_ca_file: Option<PathBuf>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        let raw = schema::RawDns::default();
        DnsConfig {
            rate_limit_qps: raw.rate_limit_qps,
            rate_limit_burst: raw.rate_limit_burst,
            cache_size: raw.cache_size,
            cache_max_ttl: raw.cache_max_ttl,
            cache_negative_max_ttl: raw.cache_negative_max_ttl,
            blocked_ttl: raw.blocked_ttl,
            block_page_ipv4: None,
            block_page_ipv6: None,
            log_allowed: raw.log_allowed,
            upstream_timeout: std::time::Duration::from_millis(raw.upstream_timeout_ms),
            upstream_ca_file: None,
        }
    }
}

impl Config {
    /// Whether allowed traffic of `profile` is recorded: the profile's
    /// `record_allowed`, else the service's own setting.
    pub fn records_allowed(&self, profile: ProfileId, service_default: bool) -> bool {
        self.profiles
            .get(profile as usize)
            .and_then(|p| p.record_allowed)
            .unwrap_or(service_default)
    }

    pub fn category_id(&self, name: &str) -> Option<CategoryId> {
        self.categories
            .iter()
            .position(|c| c.id == name)
            .map(|i| i as CategoryId)
    }

    pub fn profile_id(&self, name: &str) -> Option<ProfileId> {
        self.profiles
            .iter()
            .position(|p| p.name == name)
            .map(|i| i as ProfileId)
    }

    pub fn source(&self, id: SourceId) -> Option<&SourceSpec> {
        self.sources.get(id as usize)
    }

    /// Reads the updatable lists from `set` where it holds them, from their
    /// configured (shipped) paths otherwise. `None`: configured paths only.
    ///
    /// A list found in the updated set wins; only lists an update refreshes are
    /// looked for there, so removing a `url` goes back to the configured file.
    pub fn use_lists_set(&mut self, set: Option<&Path>) {
        for t in &self.lists_update.targets {
            let Some(spec) = self.sources.get_mut(t.source) else {
                continue;
            };
            spec.path = match set.map(|s| s.join(&t.rel)) {
                Some(p) if p.exists() => p,
                _ => t.fallback.clone(),
            };
        }
        self.lists_set = set.map(Path::to_path_buf);
    }
}

/// Reads and validates the configuration at `path`, or the embedded default.
///
/// `lists_dir` overrides the base directory of relative list paths (used to find the
/// shipped `blocklists/` when running on the embedded default).
pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| {
                ConfigErrors(vec![Diagnostic {
                    file: p.display().to_string(),
                    line: 0,
                    column: 0,
                    message: format!("cannot read configuration: {e}"),
                }])
            })?;
            let base = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            parse(&text, &p.display().to_string(), &base)
        }
        None => parse(EMBEDDED_DEFAULT, EMBEDDED_NAME, &shipped_lists_dir()),
    }
}

/// Where the lists shipped with vigie live: `$VIGIE_LISTS_DIR`, then
/// `/usr/share/vigie/blocklists` and `<exe>/../share/vigie/blocklists` for installed
/// copies, then `./blocklists`, then the source tree vigie was built from.
pub fn shipped_lists_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VIGIE_LISTS_DIR") {
        return PathBuf::from(d);
    }
    let mut candidates = vec![PathBuf::from("/usr/share/vigie/blocklists")];
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join("../share/vigie/blocklists"));
    }
    candidates.push(PathBuf::from("blocklists"));
    candidates
        .into_iter()
        .find(|c| c.join("ut1").is_dir())
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/blocklists")))
}

/// Parses and validates configuration text. `origin` names it in messages and
/// `base_dir` resolves relative paths.
pub fn parse(text: &str, origin: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let mut v = Validator {
        text,
        origin,
        diags: Vec::new(),
    };
    let raw = v.deserialize();
    let config = raw.and_then(|raw| v.resolve(raw, base_dir));
    match config {
        Some(c) if v.diags.is_empty() => Ok(c),
        _ => {
            v.diags.sort_by_key(|d| (d.line, d.column));
            Err(ConfigErrors(v.diags))
        }
    }
}

/// Collects diagnostics while turning the raw TOML into a [`Config`].
struct Validator<'a> {
    text: &'a str,
    origin: &'a str,
    diags: Vec<Diagnostic>,
}

/// Most unknown keys a single validation reports before giving up.
const MAX_UNKNOWN_KEYS: usize = 100;

impl Validator<'_> {
    fn error_at(&mut self, span: std::ops::Range<usize>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.diags.push(Diagnostic {
            file: self.origin.to_string(),
            line,
            column,
            message: message.into(),
        });
    }

    /// Where the value of `path` (`["dns", "upstream_timeout_ms"]`) is written, for
    /// errors about settings the schema does not keep `Spanned` (plain numbers,
    /// flags, lists): read again from the text, which is cheap next to an error.
    /// A key that is not written (a default) gives its nearest written table, or
    /// `0..0` (line 1).
    fn span_of(&self, path: &[&str]) -> std::ops::Range<usize> {
        use toml::de::{DeTable, DeValue};
        let Ok(doc) = DeTable::parse(self.text) else {
            return 0..0;
        };
        let mut table = doc.get_ref();
        let mut span = 0..0;
        for (i, key) in path.iter().enumerate() {
            let Some((_, value)) = table.iter().find(|(k, _)| k.get_ref() == key) else {
                return span;
            };
            span = value.span();
            match value.get_ref() {
                DeValue::Table(t) if i + 1 < path.len() => table = t,
                _ => break,
            }
        }
        span
    }

    /// serde stops at the first error, but an operator wants every unknown key at
    /// once: after each "unknown field" error the offending key/value is blanked out
    /// (spaces, newlines kept so every position stays true) and parsing resumes.
    fn deserialize(&mut self) -> Option<RawConfig> {
        let mut src = self.text.to_string();
        for _ in 0..MAX_UNKNOWN_KEYS {
            match toml::from_str::<RawConfig>(&src) {
                // Keys blanked out above are already reported; the rest still
                // gets the semantic checks, so one run shows every problem.
                Ok(raw) => return Some(raw),
                Err(e) => {
                    let span = e.span().unwrap_or(0..0);
                    let message = describe_toml_error(&e, &src[span.clone()]);
                    self.error_at(span.clone(), message);
                    if !e.message().starts_with("unknown field") {
                        return None;
                    }
                    match entry_extent(&src, span.start) {
                        Some(range) => blank(&mut src, range),
                        None => return None,
                    }
                }
            }
        }
        None
    }

    fn resolve(&mut self, mut raw: RawConfig, base_dir: &Path) -> Option<Config> {
        // A school's file usually only says what is its own (profiles, networks,
        // schedules); categories and list sources it leaves out come from the
        // embedded default, with the shipped lists.
        let mut lists_base = raw.lists_dir.as_deref().map(|d| {
            let d = Path::new(d);
            if d.is_absolute() {
                d.to_path_buf()
            } else {
                base_dir.join(d)
            }
        });
        // Own categories with no lists stay list-less: the default lists name
        // categories such a file may not have.
        if raw.categories.is_empty()
            && self.origin != EMBEDDED_NAME
            && let Ok(default) = toml::from_str::<RawConfig>(EMBEDDED_DEFAULT)
        {
            raw.categories = default.categories;
            if raw.lists.is_empty() {
                raw.lists = default.lists;
                lists_base.get_or_insert_with(shipped_lists_dir);
            }
        }
        let timezone = match raw.timezone.get_ref().parse::<Tz>() {
            Ok(tz) => tz,
            Err(_) => {
                let name = raw.timezone.get_ref().clone();
                let hint = suggest(&name, chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()));
                self.error_at(
                    raw.timezone.span(),
                    format!("unknown time zone \"{name}\"{hint}"),
                );
                chrono_tz::America::Toronto
            }
        };

        let client_networks = raw
            .client_networks
            .iter()
            .filter_map(|s| self.cidr(s))
            .collect();

        // Categories: declared ones, in order.
        let mut categories: Vec<Category> = Vec::new();
        for c in &raw.categories {
            let id = c.id.get_ref();
            if categories.iter().any(|k| &k.id == id) {
                self.error_at(c.id.span(), format!("category \"{id}\" is defined twice"));
                continue;
            }
            if !valid_ident(id) {
                self.error_at(
                    c.id.span(),
                    format!(
                        "invalid category id \"{id}\": use lowercase letters, digits, '_' or '-'"
                    ),
                );
            }
            categories.push(Category {
                id: id.clone(),
                fr: c.fr.clone(),
                en: c.en.clone(),
                description_fr: c.description_fr.clone(),
                description_en: c.description_en.clone(),
            });
        }
        if categories.len() > CatSet::MAX {
            // At the first category past the limit.
            self.error_at(
                raw.categories
                    .get(CatSet::MAX)
                    .map_or(0..0, |c| c.id.span()),
                format!(
                    "too many categories ({}, at most {})",
                    categories.len(),
                    CatSet::MAX
                ),
            );
        }
        let names: Vec<String> = categories.iter().map(|c| c.id.clone()).collect();

        let mut sources = Vec::new();
        for (i, l) in raw.lists.iter().enumerate() {
            let Some(category) = self.category(&names, &l.category, "list") else {
                continue;
            };
            let rel = Path::new(l.path.get_ref());
            let path = if rel.is_absolute() {
                rel.to_path_buf()
            } else {
                lists_base.as_deref().unwrap_or(base_dir).join(rel)
            };
            sources.push(SourceSpec {
                id: i as SourceId,
                path,
                format: l.format,
                category,
                optional: l.optional,
                exception: l.exception,
            });
        }

        let mut schedules: Vec<Schedule> = Vec::new();
        let schedule_names: Vec<String> = raw.schedules.keys().cloned().collect();
        for (name, s) in &raw.schedules {
            let mut sched = Schedule::new(name.clone());
            for d in &s.days {
                match parse_days(d.get_ref()) {
                    Ok(mask) => sched.days |= mask,
                    Err(msg) => self.error_at(d.span(), format!("in schedule \"{name}\": {msg}")),
                }
            }
            if s.days.is_empty() {
                let at = self.span_of(&["schedules", name, "days"]);
                self.error_at(at, format!("schedule \"{name}\" has no days"));
            }
            for t in &s.times {
                match parse_time_range(t.get_ref()) {
                    Ok(range) => sched.ranges.push(range),
                    Err(msg) => self.error_at(t.span(), format!("in schedule \"{name}\": {msg}")),
                }
            }
            if s.times.is_empty() {
                sched.ranges.push((0, 24 * 60));
            }
            schedules.push(sched);
        }

        let profile_names: Vec<String> = raw.profiles.keys().cloned().collect();
        let mut profiles = Vec::new();
        for (name, p) in &raw.profiles {
            let what = format!("profile \"{name}\"");
            let block = self.category_set(&names, &p.block, &what);
            let allow = p
                .allow
                .iter()
                .filter_map(|o| self.override_entry(o))
                .collect();
            let deny = p
                .deny
                .iter()
                .filter_map(|o| self.override_entry(o))
                .collect();
            let mut rules: Vec<(Rule, std::ops::Range<usize>)> = Vec::new();
            for r in &p.rules {
                let cats = self.category_set(&names, &r.categories, &what);
                let schedule = match &r.schedule {
                    None => None,
                    Some(s) => match schedule_names.iter().position(|n| n == s.get_ref()) {
                        Some(i) => Some(i),
                        None => {
                            let hint =
                                suggest(s.get_ref(), schedule_names.iter().map(String::as_str));
                            self.error_at(
                                s.span(),
                                format!("unknown schedule \"{}\" in {what}{hint}", s.get_ref()),
                            );
                            continue;
                        }
                    },
                };
                let line = line_col(self.text, r.action.span().start).0;
                rules.push((
                    Rule {
                        action: *r.action.get_ref(),
                        categories: cats,
                        schedule,
                        line,
                    },
                    r.action.span(),
                ));
            }
            self.check_rule_conflicts(name, &rules, &schedules, &names);
            profiles.push(Profile {
                name: name.clone(),
                fr: p.fr.clone().unwrap_or_else(|| name.clone()),
                en: p.en.clone().unwrap_or_else(|| name.clone()),
                block,
                allow,
                deny,
                safe_search: p.safe_search,
                block_mode: p.block_mode,
                bare_ip: p.bare_ip,
                record_allowed: p.record_allowed,
                rules: rules.into_iter().map(|(r, _)| r).collect(),
            });
        }

        let default_profile = self.profile(&profile_names, &raw.default_profile, "default_profile");

        let mut networks = Vec::new();
        for n in &raw.networks {
            let net = self.cidr(&n.cidr);
            let profile = self.profile(&profile_names, &n.profile, "network");
            if let (Some(net), Some(profile)) = (net, profile) {
                networks.push(Network {
                    net,
                    profile,
                    name: n.name.clone(),
                });
            }
        }
        networks.sort_by_key(|n| std::cmp::Reverse(n.net.prefix_len()));

        let mut mappings = Vec::new();
        for m in &raw.mappings {
            let net = self.cidr(&m.cidr);
            let profile = self.profile(&profile_names, &m.profile, "mapping");
            if let (Some(net), Some(profile)) = (net, profile) {
                mappings.push(Mapping {
                    net,
                    user: m.user.clone(),
                    profile,
                });
            }
        }
        mappings.sort_by_key(|m| std::cmp::Reverse(m.net.prefix_len()));

        let ldap = raw
            .ldap
            .as_ref()
            .and_then(|l| self.ldap(l, &profile_names, base_dir));
        let audit = self.audit(&raw.audit, base_dir);

        let dns_upstreams = raw
            .dns
            .upstreams
            .iter()
            .map(|u| u.get_ref().clone())
            .collect();
        let dns = self.dns(&raw.dns, base_dir);
        let proxy = self.proxy(&raw.proxy, base_dir);
        let portal = self.portal(&raw.portal);
        let admin = self.admin(&raw.admin, base_dir);
        let lists_update = self.lists_update(&raw, &sources, base_dir);

        if !self.diags.is_empty() {
            return None;
        }
        let data_dir = DATA_DIR_OVERRIDE.get().cloned().or_else(|| {
            raw.data_dir.map(|d| {
                let d = PathBuf::from(d);
                if d.is_absolute() { d } else { base_dir.join(d) }
            })
        });
        let mut config = Config {
            origin: self.origin.to_string(),
            timezone,
            default_profile: default_profile?,
            client_networks,
            data_dir,
            categories,
            sources,
            schedules,
            profiles,
            networks,
            mappings,
            ldap,
            audit,
            dns_upstreams,
            dns,
            proxy,
            portal,
            admin,
            lists_update,
            lists_set: None,
        };
        if let Some(d) = &config.data_dir {
            let set = crate::lists::sets::ListsDir::new(d).current();
            config.use_lists_set(set.as_deref());
        }
        Some(config)
    }

    /// `[lists_update]` and the `url` of `[[lists]]`: which sources an update
    /// refreshes, from where. Downloads are HTTPS only: a list fetched in clear
    /// could be altered on the way to block or open anything.
    fn lists_update(
        &mut self,
        raw: &RawConfig,
        sources: &[SourceSpec],
        base_dir: &Path,
    ) -> ListsUpdateConfig {
        let u = &raw.lists_update;
        let ut1_url = {
            let url = u.ut1_url.get_ref().trim();
            if url.is_empty() {
                None
            } else if self.https_url(&u.ut1_url, "lists_update.ut1_url") {
                Some(url.to_string())
            } else {
                None
            }
        };
        let ut1_path = PathBuf::from(u.ut1_path.get_ref().trim());
        if !plain_relative(&ut1_path) {
            self.error_at(
                u.ut1_path.span(),
                format!(
                    "lists_update.ut1_path \"{}\" must be a relative path inside lists_dir, without \"..\"",
                    u.ut1_path.get_ref()
                ),
            );
        }
        let positive = |v: &mut Self, s: &Spanned<u64>, key: &str| {
            if *s.get_ref() == 0 {
                v.error_at(s.span(), format!("lists_update.{key} must be at least 1"));
            }
            *s.get_ref()
        };
        let connect_timeout = positive(self, &u.connect_timeout_ms, "connect_timeout_ms");
        let timeout = positive(self, &u.timeout_ms, "timeout_ms");
        let max_bytes = positive(self, &u.max_bytes, "max_bytes");
        let max_unpacked_bytes = positive(self, &u.max_unpacked_bytes, "max_unpacked_bytes");
        let keep = positive(self, &u.keep, "keep");
        let share = *u.max_bad_share.get_ref();
        if !(0.0..=1.0).contains(&share) {
            self.error_at(
                u.max_bad_share.span(),
                format!("lists_update.max_bad_share = {share}: expected a share between 0 and 1 (0.05 = 5 %)"),
            );
        }
        let kept = *u.min_share_of_current.get_ref();
        if !(0.0..=1.0).contains(&kept) {
            self.error_at(
                u.min_share_of_current.span(),
                format!("lists_update.min_share_of_current = {kept}: expected a share between 0 and 1 (0.5 = half the entries in force; 0: no check)"),
            );
        }

        // `raw.lists[i]` became `sources[j]` with `sources[j].id == i`.
        let mut targets: Vec<UpdateTarget> = Vec::new();
        for (j, spec) in sources.iter().enumerate() {
            let Some(l) = raw.lists.get(spec.id as usize) else {
                continue;
            };
            let rel = Path::new(l.path.get_ref());
            let origin = match &l.url {
                Some(url) => {
                    if !self.https_url(url, "url") {
                        continue;
                    }
                    if l.format == crate::lists::Format::Ut1 {
                        self.error_at(
                            url.span(),
                            "a list of format \"ut1\" is a category directory: it is refreshed from lists_update.ut1_url, not from its own url",
                        );
                        continue;
                    }
                    if !plain_relative(rel) {
                        self.error_at(
                            l.path.span(),
                            format!(
                                "a list with a url needs a relative path (it is kept under <data_dir>/lists/): \"{}\"",
                                rel.display()
                            ),
                        );
                        continue;
                    }
                    if ut1_url.is_some() && rel.starts_with(&ut1_path) {
                        self.error_at(
                            l.path.span(),
                            format!(
                                "\"{}\" is inside lists_update.ut1_path \"{}\", which UT1's tarball fills: give this list another path",
                                rel.display(),
                                ut1_path.display()
                            ),
                        );
                        continue;
                    }
                    UpdateOrigin::Url(url.get_ref().trim().to_string())
                }
                None => {
                    let category_dir = rel
                        .strip_prefix(&ut1_path)
                        .ok()
                        .filter(|rest| rest.components().count() == 1 && plain_relative(rel))
                        .and_then(|rest| rest.to_str());
                    match category_dir {
                        Some(dir) if ut1_url.is_some() && l.format == crate::lists::Format::Ut1 => {
                            UpdateOrigin::Ut1 {
                                category_dir: dir.to_string(),
                            }
                        }
                        _ => continue,
                    }
                }
            };
            if let Some(other) = targets.iter().find(|t| t.rel == rel && t.origin != origin) {
                let what = match &other.origin {
                    UpdateOrigin::Url(u) => u.clone(),
                    UpdateOrigin::Ut1 { .. } => "UT1's tarball".to_string(),
                };
                self.error_at(
                    l.path.span(),
                    format!(
                        "\"{}\" is already downloaded from {what}: two sources cannot fill one path",
                        rel.display()
                    ),
                );
                continue;
            }
            targets.push(UpdateTarget {
                source: j,
                rel: rel.to_path_buf(),
                fallback: spec.path.clone(),
                origin,
            });
        }
        let ca_file = u.ca_file.as_ref().map(|f| {
            let p = Path::new(f.get_ref().trim());
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base_dir.join(p)
            }
        });
        ListsUpdateConfig {
            ut1_url,
            ut1_path,
            ca_file,
            connect_timeout: std::time::Duration::from_millis(connect_timeout),
            timeout: std::time::Duration::from_millis(timeout),
            max_bytes,
            max_unpacked_bytes,
            max_bad_share: share,
            min_entries: *u.min_entries.get_ref(),
            min_share_of_current: kept,
            keep: usize::try_from(keep).unwrap_or(usize::MAX),
            targets,
        }
    }

    /// Checks that `url` is an `https://` URL with a host; reports it otherwise.
    fn https_url(&mut self, url: &Spanned<String>, key: &str) -> bool {
        match check_https_url(url.get_ref().trim()) {
            Ok(()) => true,
            Err(why) => {
                self.error_at(url.span(), format!("{key}: {why}"));
                false
            }
        }
    }

    fn admin(&mut self, raw: &schema::RawAdmin, base_dir: &Path) -> AdminConfig {
        let mut roles = Vec::new();
        for r in &raw.roles {
            let name = r.role.get_ref().trim();
            let role = AdminRole::parse(name);
            if role.is_none() {
                self.error_at(
                    r.role.span(),
                    format!(
                        "unknown admin role \"{name}\" (expected it-admin, director or auditor){}",
                        suggest(name, AdminRole::ALL.iter().map(|r| r.as_str()))
                    ),
                );
            }
            let subject = match (&r.user, &r.group) {
                (Some(u), None) if !u.get_ref().trim().is_empty() => {
                    Some(AdminSubject::User(u.get_ref().trim().to_string()))
                }
                (None, Some(g)) if !g.get_ref().trim().is_empty() => {
                    Some(AdminSubject::Group(g.get_ref().trim().to_ascii_lowercase()))
                }
                _ => {
                    self.error_at(
                        r.role.span(),
                        "[[admin.roles]] needs exactly one of user = \"login\" or group = \"<ldap group dn>\"",
                    );
                    None
                }
            };
            let networks: Vec<IpNet> = r.networks.iter().filter_map(|n| self.cidr(n)).collect();
            if !networks.is_empty() && role.is_some_and(|r| r != AdminRole::Director) {
                self.error_at(
                    r.networks[0].span(),
                    format!("networks only restrict a director, not an {name}"),
                );
            }
            if let (Some(subject), Some(role)) = (subject, role) {
                roles.push(AdminRoleGrant {
                    subject,
                    role,
                    networks,
                });
            }
        }
        let minutes = *raw.session_minutes.get_ref();
        if !(5..=7 * 24 * 60).contains(&minutes) {
            self.error_at(
                raw.session_minutes.span(),
                format!("admin.session_minutes = {minutes}: expected between 5 and 10080 (a week)"),
            );
        }
        let tls_listen = raw.tls_listen.as_ref().and_then(|s| {
            match s.get_ref().trim().parse::<std::net::SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.error_at(
                        s.span(),
                        format!(
                            "admin.tls_listen \"{}\" is not an address:port (e.g. 0.0.0.0:8443)",
                            s.get_ref()
                        ),
                    );
                    None
                }
            }
        });
        let file = |f: &Spanned<String>| {
            let p = Path::new(f.get_ref().trim());
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base_dir.join(p)
            }
        };
        let tls_cert = match (&raw.tls_cert_file, &raw.tls_key_file) {
            (Some(c), Some(k)) => Some((file(c), file(k))),
            (None, None) => None,
            (Some(one), None) | (None, Some(one)) => {
                self.error_at(
                    one.span(),
                    "admin.tls_cert_file and admin.tls_key_file go together: give both or neither",
                );
                None
            }
        };
        if tls_cert.is_some() && tls_listen.is_none() {
            self.error_at(
                raw.tls_cert_file.as_ref().map(|s| s.span()).unwrap_or(0..0),
                "admin.tls_cert_file is set but admin.tls_listen is not: nothing would serve it",
            );
        }
        AdminConfig {
            roles,
            session: std::time::Duration::from_secs(minutes * 60),
            secure_cookies: raw.secure_cookies,
            tls_listen,
            tls_cert,
            history_second_approver: raw.history_second_approver,
            notify_subject: raw.notify_subject,
        }
    }

    fn portal(&mut self, raw: &schema::RawPortal) -> PortalConfig {
        let networks = raw.networks.iter().filter_map(|s| self.cidr(s)).collect();
        let secs = |v: &mut Self, s: &Spanned<u64>, key: &str, min: u64, max: u64| {
            let n = *s.get_ref();
            if !(min..=max).contains(&n) {
                v.error_at(
                    s.span(),
                    format!("portal.{key} = {n}: expected between {min} and {max} seconds"),
                );
            }
            std::time::Duration::from_secs(n)
        };
        let idle_timeout = secs(
            self,
            &raw.idle_timeout_seconds,
            "idle_timeout_seconds",
            1,
            86_400,
        );
        let max_session = secs(
            self,
            &raw.max_session_seconds,
            "max_session_seconds",
            1,
            7 * 86_400,
        );
        let url = raw.url.as_ref().and_then(|u| {
            let t = u.get_ref().trim();
            if t.starts_with("http://") || t.starts_with("https://") {
                Some(t.trim_end_matches('/').to_string())
            } else {
                self.error_at(
                    u.span(),
                    format!("portal.url \"{t}\" must start with http:// or https://"),
                );
                None
            }
        });
        PortalConfig {
            networks,
            idle_timeout,
            max_session,
            url,
        }
    }

    fn dns(&mut self, raw: &schema::RawDns, base_dir: &Path) -> DnsConfig {
        let block_page_ipv4 =
            raw.block_page_ipv4
                .as_ref()
                .and_then(|s| match s.get_ref().trim().parse() {
                    Ok(ip) => Some(ip),
                    Err(_) => {
                        self.error_at(
                            s.span(),
                            format!(
                                "invalid IPv4 address \"{}\" for dns.block_page_ipv4",
                                s.get_ref()
                            ),
                        );
                        None
                    }
                });
        let block_page_ipv6 =
            raw.block_page_ipv6
                .as_ref()
                .and_then(|s| match s.get_ref().trim().parse() {
                    Ok(ip) => Some(ip),
                    Err(_) => {
                        self.error_at(
                            s.span(),
                            format!(
                                "invalid IPv6 address \"{}\" for dns.block_page_ipv6",
                                s.get_ref()
                            ),
                        );
                        None
                    }
                });
        if raw.rate_limit_qps > 0 && raw.rate_limit_burst == 0 {
            self.error_at(
                self.span_of(&["dns", "rate_limit_burst"]),
                "dns.rate_limit_burst must be at least 1 when dns.rate_limit_qps is set",
            );
        }
        if raw.upstream_timeout_ms == 0 {
            self.error_at(
                self.span_of(&["dns", "upstream_timeout_ms"]),
                "dns.upstream_timeout_ms must be at least 1",
            );
        }
        DnsConfig {
            rate_limit_qps: raw.rate_limit_qps,
            rate_limit_burst: raw.rate_limit_burst,
            cache_size: raw.cache_size,
            cache_max_ttl: raw.cache_max_ttl,
            cache_negative_max_ttl: raw.cache_negative_max_ttl,
            blocked_ttl: raw.blocked_ttl,
            block_page_ipv4,
            block_page_ipv6,
            log_allowed: raw.log_allowed,
            upstream_timeout: std::time::Duration::from_millis(raw.upstream_timeout_ms),
            upstream_ca_file: raw.upstream_ca_file.as_ref().map(|f| base_dir.join(f)),
        }
    }

    fn proxy(&mut self, raw: &schema::RawProxy, base_dir: &Path) -> ProxyConfig {
        let ms = std::time::Duration::from_millis;
        for (key, value) in [
            ("header_timeout_ms", raw.header_timeout_ms),
            ("connect_timeout_ms", raw.connect_timeout_ms),
            ("first_byte_timeout_ms", raw.first_byte_timeout_ms),
            ("idle_timeout_ms", raw.idle_timeout_ms),
            ("client_hello_timeout_ms", raw.client_hello_timeout_ms),
            ("max_connections", raw.max_connections as u64),
            ("max_headers", raw.max_headers as u64),
        ] {
            if value == 0 {
                self.error_at(
                    self.span_of(&["proxy", key]),
                    format!("proxy.{key} must be at least 1"),
                );
            }
        }
        // hyper cannot read a request head in less than this; smaller would refuse everything.
        if raw.max_header_bytes < 8192 {
            self.error_at(
                self.span_of(&["proxy", "max_header_bytes"]),
                format!(
                    "proxy.max_header_bytes must be at least 8192 (got {})",
                    raw.max_header_bytes
                ),
            );
        }
        if raw.connect_ports.contains(&0) {
            self.error_at(
                self.span_of(&["proxy", "connect_ports"]),
                "proxy.connect_ports: 0 is not a port",
            );
        }
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        };
        if !token(&raw.via_name) {
            self.error_at(
                self.span_of(&["proxy", "via_name"]),
                format!(
                    "proxy.via_name \"{}\" must be letters, digits, '-', '.' or '_'",
                    raw.via_name
                ),
            );
        }
        if raw.auth_realm.contains(['"', '\\']) || raw.auth_realm.chars().any(char::is_control) {
            self.error_at(
                self.span_of(&["proxy", "auth_realm"]),
                "proxy.auth_realm must not contain quotes, backslashes or control characters",
            );
        }
        if let Some(u) = &raw.review_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            self.error_at(
                self.span_of(&["proxy", "review_url"]),
                format!("proxy.review_url \"{u}\" must start with http:// or https://"),
            );
        }
        let internal_networks = raw
            .internal_networks
            .iter()
            .filter_map(|s| self.cidr(s))
            .collect();
        let auth_required_networks = raw
            .auth_required_networks
            .iter()
            .filter_map(|s| self.cidr(s))
            .collect();
        let listen = |v: &mut Self,
                      s: &Option<Spanned<String>>,
                      key: &str|
         -> Option<std::net::SocketAddr> {
            let s = s.as_ref()?;
            match s.get_ref().trim().parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    v.error_at(
                        s.span(),
                        format!(
                            "invalid address \"{}\" for proxy.{key} (expected e.g. 0.0.0.0:3129)",
                            s.get_ref()
                        ),
                    );
                    None
                }
            }
        };
        let transparent_http_listen = listen(
            self,
            &raw.transparent_http_listen,
            "transparent_http_listen",
        );
        let transparent_tls_listen =
            listen(self, &raw.transparent_tls_listen, "transparent_tls_listen");
        let block_page_listen = listen(self, &raw.block_page_listen, "block_page_listen");
        let block_page_tls_listen =
            listen(self, &raw.block_page_tls_listen, "block_page_tls_listen");
        let file = |s: &Spanned<String>| {
            let f = PathBuf::from(s.get_ref());
            if f.is_absolute() { f } else { base_dir.join(f) }
        };
        let block_page_cert = match (&raw.block_page_cert_file, &raw.block_page_key_file) {
            (Some(c), Some(k)) => Some((file(c), file(k))),
            (None, None) => None,
            (Some(given), None) | (None, Some(given)) => {
                self.error_at(
                    given.span(),
                    "proxy.block_page_cert_file and proxy.block_page_key_file go together: give both, or neither for a self-signed certificate",
                );
                None
            }
        };
        ProxyConfig {
            connect_ports: raw.connect_ports.clone(),
            max_connections: raw.max_connections,
            max_connections_per_client: raw.max_connections_per_client,
            max_header_bytes: raw.max_header_bytes,
            max_headers: raw.max_headers,
            header_timeout: ms(raw.header_timeout_ms),
            connect_timeout: ms(raw.connect_timeout_ms),
            first_byte_timeout: ms(raw.first_byte_timeout_ms),
            idle_timeout: ms(raw.idle_timeout_ms),
            client_hello_timeout: ms(raw.client_hello_timeout_ms),
            internal_networks,
            allow_loopback_origins: raw.allow_loopback_origins,
            sni_mismatch: raw.sni_mismatch,
            auth_required_networks,
            users_file: raw.users_file.as_ref().map(|f| {
                let f = PathBuf::from(f);
                if f.is_absolute() { f } else { base_dir.join(f) }
            }),
            auth_realm: raw.auth_realm.clone(),
            review_url: raw.review_url.clone(),
            via_name: raw.via_name.clone(),
            transparent_http_listen,
            transparent_tls_listen,
            block_page_listen,
            block_page_tls_listen,
            block_page_cert,
            log_allowed: raw.log_allowed,
        }
    }

    fn category(
        &mut self,
        names: &[String],
        c: &Spanned<String>,
        what: &str,
    ) -> Option<CategoryId> {
        let name = c.get_ref();
        match names.iter().position(|n| n == name) {
            Some(i) => Some(i as CategoryId),
            None => {
                let hint = suggest(name, names.iter().map(String::as_str));
                self.error_at(
                    c.span(),
                    format!("unknown category \"{name}\" in {what}{hint}"),
                );
                None
            }
        }
    }

    /// The set of the named categories; each unknown name is reported.
    fn category_set(&mut self, names: &[String], list: &[Spanned<String>], what: &str) -> CatSet {
        let mut set = CatSet::EMPTY;
        for c in list {
            if let Some(id) = self.category(names, c, what) {
                set.insert(id);
            }
        }
        set
    }

    fn profile(&mut self, names: &[String], p: &Spanned<String>, what: &str) -> Option<ProfileId> {
        let name = p.get_ref();
        match names.iter().position(|n| n == name) {
            Some(i) => Some(i as ProfileId),
            None => {
                let hint = suggest(name, names.iter().map(String::as_str));
                self.error_at(
                    p.span(),
                    format!("unknown profile \"{name}\" in {what}{hint}"),
                );
                None
            }
        }
    }

    fn audit(&mut self, a: &schema::RawAudit, base_dir: &Path) -> AuditSettings {
        let days = *a.retention_days.get_ref();
        if days == 0 || days > 3650 {
            self.error_at(
                a.retention_days.span(),
                format!("retention_days = {days}: keep audit events between 1 and 3650 days"),
            );
        }
        let mut url = a.postgres_url.clone();
        if let Some(f) = &a.postgres_url_file {
            match std::fs::read_to_string(base_dir.join(f)) {
                Ok(text) => url = Some(text.trim().to_string()),
                Err(e) => self.error_at(
                    self.span_of(&["audit", "postgres_url_file"]),
                    format!("[audit] postgres_url_file {f}: {e}"),
                ),
            }
        }
        if a.store == AuditStoreKind::Postgres && url.is_none() {
            self.error_at(
                self.span_of(&["audit", "store"]),
                "[audit] store = \"postgres\" needs postgres_url or postgres_url_file",
            );
        }
        AuditSettings {
            store: a.store,
            postgres_url: url,
            postgres_ca_file: a.postgres_ca_file.as_ref().map(|f| base_dir.join(f)),
            retention_days: days,
            pseudonymize: a.pseudonymize,
            jsonl: a.jsonl,
        }
    }

    fn ldap(
        &mut self,
        l: &schema::RawLdap,
        profiles: &[String],
        base_dir: &Path,
    ) -> Option<LdapSettings> {
        let url = l.url.get_ref();
        if !(url.starts_with("ldap://") || url.starts_with("ldaps://")) {
            self.error_at(
                l.url.span(),
                format!("invalid LDAP url \"{url}\" (expected ldaps://host or ldap://host)"),
            );
        }
        if url.starts_with("ldap://") && !l.starttls && !is_loopback_url(url) {
            self.error_at(
                l.url.span(),
                "passwords would cross the network in clear: use ldaps:// or set starttls = true",
            );
        }
        if l.user_dn.is_none() && (l.base_dn.is_none() || l.user_filter.is_none()) {
            self.error_at(
                l.url.span(),
                "[ldap] needs user_dn, or base_dn and user_filter",
            );
        }
        let mut groups = Vec::new();
        for g in &l.groups {
            if self.profile(profiles, &g.profile, "ldap group").is_some() {
                groups.push((g.dn.to_ascii_lowercase(), g.profile.get_ref().clone()));
            }
        }
        Some(LdapSettings {
            url: url.clone(),
            starttls: l.starttls,
            user_dn: l.user_dn.clone(),
            base_dn: l.base_dn.clone(),
            user_filter: l
                .user_filter
                .clone()
                .unwrap_or_else(|| "(uid={user})".into()),
            bind_dn: l.bind_dn.clone(),
            bind_password_file: l.bind_password_file.as_ref().map(|f| base_dir.join(f)),
            group_base: l.group_base.clone(),
            group_filter: l
                .group_filter
                .clone()
                .unwrap_or_else(|| "(|(member={dn})(uniqueMember={dn}))".into()),
            ca_file: l.ca_file.as_ref().map(|f| base_dir.join(f)),
            timeout: std::time::Duration::from_millis(l.timeout_ms.unwrap_or(5000)),
            cache_ttl: std::time::Duration::from_secs(l.cache_seconds.unwrap_or(300)),
            groups,
        })
    }

    fn cidr(&mut self, s: &Spanned<String>) -> Option<IpNet> {
        let text = s.get_ref().trim();
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => Some(net.trunc()),
            Err(_) => {
                self.error_at(
                    s.span(),
                    format!("invalid CIDR \"{text}\" (expected e.g. 10.1.0.0/16 or fd00::/8)"),
                );
                None
            }
        }
    }

    fn override_entry(&mut self, o: &Spanned<String>) -> Option<Override> {
        match parse_override(o.get_ref()) {
            Ok(v) => Some(v),
            Err(msg) => {
                self.error_at(o.span(), msg);
                None
            }
        }
    }

    /// Two rules of one profile that act oppositely on one category at overlapping
    /// times would make the verdict depend on rule order: refuse them.
    fn check_rule_conflicts(
        &mut self,
        profile: &str,
        rules: &[(Rule, std::ops::Range<usize>)],
        schedules: &[Schedule],
        names: &[String],
    ) {
        for (j, (b, span)) in rules.iter().enumerate() {
            for (a, _) in &rules[..j] {
                if a.action == b.action {
                    continue;
                }
                let common = a.categories.intersect(b.categories);
                if common.is_empty() {
                    continue;
                }
                let sa = a.schedule.and_then(|i| schedules.get(i));
                let sb = b.schedule.and_then(|i| schedules.get(i));
                let overlap = match (sa, sb) {
                    (Some(x), Some(y)) => x.overlaps(y),
                    _ => true,
                };
                if overlap {
                    let cats: Vec<&str> = common
                        .iter()
                        .filter_map(|c| names.get(c as usize).map(String::as_str))
                        .collect();
                    self.error_at(
                        span.clone(),
                        format!(
                            "rules for \"{}\" in profile \"{profile}\" overlap in time with opposite actions (the other rule is at line {})",
                            cats.join("\", \""),
                            a.line
                        ),
                    );
                }
            }
        }
    }
}

/// Why `url` cannot be downloaded from, if it cannot: `https://host[:port]/…` only.
pub fn check_https_url(url: &str) -> Result<(), String> {
    if url
        .get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"))
    {
        return Err(format!(
            "\"{url}\" is plain http://: lists are downloaded over https:// only (a list fetched in clear can be altered on the way)"
        ));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("\"{url}\" is not a valid URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!(
            "\"{url}\" is not an https:// URL (expected e.g. https://example.org/list.txt)"
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("\"{url}\" has no host"));
    }
    Ok(())
}

/// A non-empty relative path made of plain names only (no `..`, no root).
fn plain_relative(p: &Path) -> bool {
    p.components().next().is_some()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// `ldap://127.0.0.1:…` / `ldap://localhost…`: clear text that never leaves the box.
fn is_loopback_url(url: &str) -> bool {
    let host = url
        .trim_start_matches("ldap://")
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Parses an allow/deny override: `example.com`, `*.example.com`,
/// `example.com/path`, or `https://example.com/path`.
pub fn parse_override(raw: &str) -> Result<Override, String> {
    let s = raw.trim();
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .unwrap_or(s);
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let host = crate::lists::domain::normalize_host(host)
        .map_err(|why| format!("invalid override \"{raw}\": {why}"))?;
    if path.is_empty() || path == "/" {
        Ok(Override::Domain(host))
    } else {
        let host = host
            .strip_prefix("www.")
            .map(str::to_string)
            .unwrap_or(host);
        Ok(Override::Url {
            host,
            path: path.to_string(),
        })
    }
}

/// `" — did you mean \"x\"?"` when a close candidate exists, else `""`.
pub fn suggest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    let best = candidates
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, c)) if d > 0 && d <= (word.chars().count() / 3).max(2) => {
            format!(" — did you mean \"{c}\"?")
        }
        _ => String::new(),
    }
}

/// 1-based line and column (in characters) of byte `offset`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}

/// The toml crate's messages spell serde internals; say it the operator's way and
/// suggest the closest known key.
fn describe_toml_error(e: &toml::de::Error, at: &str) -> String {
    let msg = e.message().trim();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or(at);
        let expected: Vec<&str> = rest
            .split("expected ")
            .nth(1)
            .map(|tail| tail.split('`').skip(1).step_by(2).collect())
            .unwrap_or_default();
        let hint = suggest(field, expected.iter().copied());
        let known = if expected.is_empty() {
            String::new()
        } else {
            format!(" (known keys: {})", expected.join(", "))
        };
        return if hint.is_empty() {
            format!("unknown key \"{field}\"{known}")
        } else {
            format!("unknown key \"{field}\"{hint}")
        };
    }
    msg.replace('`', "\"")
        .lines()
        .next()
        .unwrap_or(msg)
        .to_string()
}

/// Byte range of the key/value (or `[table]` with its body) that starts at `start`.
fn entry_extent(src: &str, start: usize) -> Option<std::ops::Range<usize>> {
    let line_start = src[..start].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_head = src[line_start..start].trim_start();
    if line_head.starts_with('[') {
        // A table header: blank it and its body, up to the next header.
        let mut end = src.len();
        let mut pos = src[start..].find('\n').map(|i| start + i + 1)?;
        while pos < src.len() {
            let next = src[pos..]
                .find('\n')
                .map(|i| pos + i + 1)
                .unwrap_or(src.len());
            if src[pos..next].trim_start().starts_with('[') {
                end = pos;
                break;
            }
            pos = next;
        }
        return Some(line_start..end);
    }
    let table = toml::de::DeTable::parse(src).ok()?;
    find_value_end(table.get_ref(), start).map(|end| start..end)
}

fn find_value_end(table: &toml::de::DeTable<'_>, key_start: usize) -> Option<usize> {
    for (k, v) in table.iter() {
        if k.span().start == key_start {
            return Some(v.span().end);
        }
        if let Some(end) = find_in_value(v.get_ref(), key_start) {
            return Some(end);
        }
    }
    None
}

fn find_in_value(v: &toml::de::DeValue<'_>, key_start: usize) -> Option<usize> {
    match v {
        toml::de::DeValue::Table(t) => find_value_end(t, key_start),
        toml::de::DeValue::Array(a) => a.iter().find_map(|x| find_in_value(x.get_ref(), key_start)),
        _ => None,
    }
}

fn blank(src: &mut String, range: std::ops::Range<usize>) {
    // Multi-byte characters become several spaces so byte offsets stay true.
    let replaced: String = src[range.clone()]
        .chars()
        .flat_map(|c| {
            let (ch, n) = if c == '\n' {
                ('\n', 1)
            } else {
                (' ', c.len_utf8())
            };
            std::iter::repeat_n(ch, n)
        })
        .collect();
    src.replace_range(range, &replaced);
}

#[cfg(test)]
mod tests;
