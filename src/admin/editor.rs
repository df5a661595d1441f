//! IT staff's configuration editor: profiles (blocked categories, allow/deny
//! overrides, safe search, block mode, bare IPs, what is recorded), the network map,
//! and the whole file as text for everything else (schedules, list sources).
//!
//! Every change goes the same way: the edit is applied to the file's text with
//! `toml_edit` (comments and layout kept), validated exactly like `vigie config
//! validate`, shown as a diff with a simulation (these test addresses, at this time,
//! for every profile: which verdicts change), and only then applied: the previous
//! text is kept as a version, the new one written atomically (temporary file +
//! rename) and the snapshot reloaded. A change the validator refuses is shown with
//! its messages and never written; a reload that fails (a list file that cannot be
//! read) puts the previous text back. The filter never stops on the old snapshot.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Form, Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, tr};
use super::session::Session;
use super::{Admin, Role, Routes};
use crate::config::{self, Config};
use crate::i18n::Lang;
use crate::identity::{Identity, IdentitySource};
use crate::policy::{self, CheckTarget, Verdict};
use crate::snapshot::Snapshot;

pub fn routes() -> Routes {
    Routes::new()
        .route("/admin/config", get(overview))
        .route("/admin/config/profile/{name}", get(profile_page))
        .route(
            "/admin/config/profile/{name}/preview",
            post(profile_preview),
        )
        .route("/admin/config/networks", get(networks_page))
        .route("/admin/config/networks/preview", post(networks_preview))
        .route("/admin/config/raw", get(raw_page))
        .route("/admin/config/raw/preview", post(raw_preview))
        .route("/admin/config/apply", post(apply))
        .route("/admin/config/versions", get(versions_page))
        .route("/admin/config/versions/{id}/restore", post(restore))
}

// ---- the engine: edit, validate, diff, simulate, apply, versions ----

/// What a profile form sets.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ProfileEdit {
    /// Blocked categories, comma-separated (the form's checkboxes are joined).
    #[serde(default)]
    pub block: Vec<String>,
    #[serde(default)]
    pub allow: String,
    #[serde(default)]
    pub deny: String,
    #[serde(default)]
    pub safe_search: String,
    #[serde(default)]
    pub block_mode: String,
    #[serde(default)]
    pub bare_ip: String,
    /// `default`, `true` or `false`.
    #[serde(default)]
    pub record_allowed: String,
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn string_array(items: &[String]) -> toml_edit::Array {
    let mut a = toml_edit::Array::new();
    for i in items {
        a.push(i.as_str());
    }
    a
}

/// Sets `key` to `value`, keeping the comment and spacing around the old value
/// (`block = ["gambling"]   # toujours`), and leaving an equal value untouched.
fn set_value(table: &mut dyn toml_edit::TableLike, key: &str, mut value: toml_edit::Value) {
    if let Some(old) = table.get(key).and_then(|i| i.as_value()) {
        if old.to_string().trim() == value.to_string().trim() {
            return;
        }
        *value.decor_mut() = old.decor().clone();
    }
    table.insert(key, toml_edit::Item::Value(value));
}

fn parse_doc(text: &str) -> Result<toml_edit::DocumentMut, String> {
    text.parse::<toml_edit::DocumentMut>()
        .map_err(|e| format!("the current configuration is not valid TOML: {e}"))
}

/// `text` with profile `name` set as `edit` says (the profile is created when the
/// file does not have it yet); everything else, comments included, kept.
pub fn edit_profile(text: &str, name: &str, edit: &ProfileEdit) -> Result<String, String> {
    let mut doc = parse_doc(text)?;
    let profiles = doc
        .entry("profiles")
        .or_insert_with(|| {
            let mut t = toml_edit::Table::new();
            t.set_implicit(true);
            toml_edit::Item::Table(t)
        })
        .as_table_like_mut()
        .ok_or("[profiles] is not a table")?;
    let profile = profiles
        .entry(name)
        .or_insert(toml_edit::Item::Table(toml_edit::Table::new()))
        .as_table_like_mut()
        .ok_or_else(|| format!("[profiles.{name}] is not a table"))?;
    let mut block: Vec<String> = edit
        .block
        .iter()
        .flat_map(|b| b.split(','))
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty())
        .collect();
    block.dedup();
    set_value(profile, "block", string_array(&block).into());
    for (key, text) in [("allow", &edit.allow), ("deny", &edit.deny)] {
        let items = lines(text);
        if items.is_empty() {
            profile.remove(key);
        } else {
            set_value(profile, key, string_array(&items).into());
        }
    }
    // A setting the file does not spell out is written only when it differs from
    // the default, so the diff shows what changed and nothing else.
    for (key, v, default) in [
        ("safe_search", &edit.safe_search, "off"),
        ("block_mode", &edit.block_mode, "page"),
        ("bare_ip", &edit.bare_ip, "block"),
    ] {
        let v = v.trim();
        if !v.is_empty() && (profile.contains_key(key) || v != default) {
            set_value(profile, key, v.into());
        }
    }
    match edit.record_allowed.trim() {
        "true" => set_value(profile, "record_allowed", true.into()),
        "false" => set_value(profile, "record_allowed", false.into()),
        _ => {
            profile.remove("record_allowed");
        }
    }
    Ok(doc.to_string())
}

/// `text` with the network map replaced by `rows`: one `CIDR PROFILE [name…]` a line.
pub fn edit_networks(text: &str, rows: &str) -> Result<String, String> {
    let mut doc = parse_doc(text)?;
    let mut nets = toml_edit::ArrayOfTables::new();
    for (i, line) in rows.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(3, char::is_whitespace);
        let (Some(cidr), Some(profile)) = (parts.next(), parts.next()) else {
            return Err(format!("line {}: expected \"CIDR PROFILE [name]\"", i + 1));
        };
        let mut t = toml_edit::Table::new();
        t.insert("cidr", toml_edit::value(cidr));
        t.insert("profile", toml_edit::value(profile.trim()));
        if let Some(name) = parts.next().map(str::trim).filter(|n| !n.is_empty()) {
            t.insert("name", toml_edit::value(name));
        }
        nets.push(t);
    }
    if nets.is_empty() {
        doc.remove("networks");
    } else {
        doc.insert("networks", toml_edit::Item::ArrayOfTables(nets));
    }
    Ok(doc.to_string())
}

/// The validator's verdict on `text`, as `vigie config validate` gives it.
pub fn validate(text: &str, path: &Path) -> Result<Config, Vec<String>> {
    let base = path.parent().unwrap_or(Path::new("/"));
    config::parse(text, &path.display().to_string(), base)
        .map_err(|e| e.0.iter().map(|d| d.to_string()).collect())
}

/// One line of a diff: `' '`, `'-'` or `'+'`, and the text.
pub type DiffLine = (char, String);

/// The changed lines of `old` → `new`, with up to three lines of context.
pub fn diff(old: &str, new: &str) -> Vec<DiffLine> {
    let d = similar::TextDiff::from_lines(old, new);
    let mut out = Vec::new();
    for group in d.grouped_ops(3) {
        for op in group {
            for change in d.iter_changes(&op) {
                let sign = match change.tag() {
                    similar::ChangeTag::Equal => ' ',
                    similar::ChangeTag::Delete => '-',
                    similar::ChangeTag::Insert => '+',
                };
                out.push((sign, change.value().trim_end_matches('\n').to_string()));
            }
        }
        out.push((' ', "…".into()));
    }
    out.pop();
    out
}

/// One simulated request: for `target` and `profile`, the verdict before and after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimRow {
    pub target: String,
    pub profile: String,
    pub before: SimVerdict,
    pub after: SimVerdict,
}

/// A simulated verdict, worded at display time in the reader's language.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimVerdict {
    /// The profile does not exist in that version.
    NoProfile,
    Allow,
    /// Blocked, by this rule (its text as in the configuration).
    Block(String),
    /// Allowed through this safe-search host.
    SafeSearch(String),
}

impl SimVerdict {
    pub fn text(&self, lang: Lang) -> String {
        match self {
            SimVerdict::NoProfile => "—".into(),
            SimVerdict::Allow => tr(lang, "permis", "allowed").into(),
            SimVerdict::Block(rule) => format!("{} — {rule}", tr(lang, "bloqué", "blocked")),
            SimVerdict::SafeSearch(host) => format!(
                "{} → {host}",
                tr(lang, "recherche sécurisée", "safe search")
            ),
        }
    }
}

impl SimRow {
    pub fn changed(&self) -> bool {
        self.before != self.after
    }
}

fn verdict_of(
    snap: &Snapshot,
    target: &CheckTarget,
    profile: &str,
    at: DateTime<Utc>,
) -> SimVerdict {
    let Some(id) = snap.config.profile_id(profile) else {
        return SimVerdict::NoProfile;
    };
    let identity = Identity::profile(id, IdentitySource::Operator);
    let d = policy::decide(snap, &target.request(), &identity, at);
    match d.verdict {
        Verdict::Allow => SimVerdict::Allow,
        Verdict::Block => SimVerdict::Block(d.rule(snap).to_string()),
        Verdict::SafeSearch { target } => SimVerdict::SafeSearch(target.to_string()),
    }
}

/// Every test target for every profile of either snapshot, before and after.
pub fn simulate(
    old: &Snapshot,
    new: &Snapshot,
    targets: &[String],
    at: DateTime<Utc>,
) -> Vec<SimRow> {
    let mut profiles: Vec<String> = old.config.profiles.iter().map(|p| p.name.clone()).collect();
    for p in &new.config.profiles {
        if !profiles.contains(&p.name) {
            profiles.push(p.name.clone());
        }
    }
    let mut rows = Vec::new();
    for t in targets
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .take(50)
    {
        let target = CheckTarget::parse(t);
        for p in &profiles {
            rows.push(SimRow {
                target: t.to_string(),
                profile: p.clone(),
                before: verdict_of(old, &target, p, at),
                after: verdict_of(new, &target, p, at),
            });
        }
    }
    rows
}

/// Where versions of the configuration are kept: `<data_dir>/config-versions`, or
/// beside the file.
fn versions_dir(admin: &Admin, config: &Path) -> PathBuf {
    match &admin.data_dir {
        Some(d) => d.join("config-versions"),
        None => config
            .parent()
            .unwrap_or(Path::new("."))
            .join(".vigie-config-versions"),
    }
}

/// One kept version: its id (file stem), when, by whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub id: String,
    pub time: String,
    pub by: String,
}

fn valid_version_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 120
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        && !id.contains("..")
}

/// The kept versions, newest first.
pub fn list_versions(dir: &Path) -> Vec<Version> {
    let mut v: Vec<Version> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let id = name.strip_suffix(".toml")?.to_string();
                    let (time, by) = id.split_once("--")?;
                    Some(Version {
                        time: time.to_string(),
                        by: by.to_string(),
                        id,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| b.id.cmp(&a.id));
    v
}

/// Keeps `text` as a version by `who`; returns its id.
pub fn save_version(dir: &Path, text: &str, who: &str) -> std::io::Result<String> {
    std::fs::create_dir_all(dir)?;
    let who: String = who
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut id = format!("{}--{who}", Utc::now().format("%Y%m%dT%H%M%S%.6fZ"));
    while dir.join(format!("{id}.toml")).exists() {
        id.push('_');
    }
    std::fs::write(dir.join(format!("{id}.toml")), text)?;
    Ok(id)
}

/// Writes `text` to `path` atomically: a temporary file beside it, synced, renamed.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("toml.vigie-tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn hash(text: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

/// Why an apply did not happen.
#[derive(Debug)]
pub enum ApplyError {
    /// The validator's messages.
    Invalid(Vec<String>),
    /// The file changed since the edit started (someone else applied meanwhile).
    Stale,
    /// Written, but the snapshot could not be rebuilt (a list that cannot be read):
    /// the previous text is back.
    Reload,
    Io(String),
    /// vigie runs on its embedded defaults: there is no file to edit.
    NoFile,
}

/// Validates `text`, keeps the current text as a version, writes `text`, reloads,
/// keeps `text` as a version too, and records the change. `base`: the hash of the
/// text the edit started from.
pub async fn apply_text(
    admin: &Arc<Admin>,
    s: &Session,
    text: &str,
    base: Option<&str>,
    what: &str,
) -> Result<String, ApplyError> {
    let Some(path) = admin.config_path.clone() else {
        return Err(ApplyError::NoFile);
    };
    let current = std::fs::read_to_string(&path).map_err(|e| ApplyError::Io(e.to_string()))?;
    if base.is_some_and(|b| b != hash(&current)) {
        return Err(ApplyError::Stale);
    }
    validate(text, &path).map_err(ApplyError::Invalid)?;
    let dir = versions_dir(admin, &path);
    if list_versions(&dir).is_empty() {
        save_version(&dir, &current, "initial").map_err(|e| ApplyError::Io(e.to_string()))?;
    }
    write_atomically(&path, text).map_err(|e| ApplyError::Io(e.to_string()))?;
    let cache = admin.data_dir.as_ref().map(|d| d.join("cache"));
    if !crate::app::reload(&admin.store, Some(path.clone()), cache.clone()).await {
        let _ = write_atomically(&path, &current);
        let _ = crate::app::reload(&admin.store, Some(path.clone()), cache).await;
        return Err(ApplyError::Reload);
    }
    let id = save_version(&dir, text, &s.user).map_err(|e| ApplyError::Io(e.to_string()))?;
    let changed: Vec<String> = diff(&current, text)
        .into_iter()
        .filter(|(c, _)| *c != ' ')
        .map(|(c, l)| format!("{c}{l}"))
        .take(40)
        .collect();
    admin.record(
        Some(&s.user),
        s.ip,
        "config_apply",
        format!("{what} (version {id})"),
        changed.join("\n"),
    );
    Ok(id)
}

// ---- pages ----

/// An IT admin's form with its CSRF token.
#[allow(clippy::result_large_err)]
fn it_form(s: &Session, token: &str) -> Result<(), Response> {
    it_only(s)?;
    s.check_csrf(token)
}

#[allow(clippy::result_large_err)]
fn it_only(s: &Session) -> Result<(), Response> {
    s.require(&[Role::ItAdmin])
}

fn no_file(s: &Session) -> Response {
    layout::message(
        &s.chrome(),
        StatusCode::CONFLICT,
        tr(
            s.lang,
            "Aucun fichier de configuration",
            "No configuration file",
        ),
        tr(
            s.lang,
            "vigie tourne sur sa configuration intégrée : démarrez-le avec --config FICHIER pour pouvoir la modifier ici.",
            "vigie runs on its embedded configuration: start it with --config FILE to edit it here.",
        ),
    )
}

fn current_text(admin: &Admin) -> Option<(PathBuf, String)> {
    let path = admin.config_path.clone()?;
    let text = std::fs::read_to_string(&path).ok()?;
    Some((path, text))
}

async fn overview(State(admin): State<Arc<Admin>>, s: Session) -> Response {
    if let Err(r) = it_only(&s) {
        return r;
    }
    let lang = s.lang;
    let snap = admin.store.load();
    let cfg = &snap.config;
    let editable = admin.config_path.is_some();
    let body = html! {
        @if !editable {
            p.note { (tr(lang, "Configuration intégrée : lecture seule (démarrez vigie avec --config pour la modifier).",
                "Embedded configuration: read only (start vigie with --config to edit it).")) }
        } @else {
            p { (tr(lang, "Fichier : ", "File: ")) code { (cfg.origin) } }
        }
        h2 { (tr(lang, "Profils", "Profiles")) }
        table {
            thead { tr { th { (tr(lang, "Profil", "Profile")) } th { (tr(lang, "Catégories bloquées", "Blocked categories")) }
                th { (tr(lang, "Recherche sécurisée", "Safe search")) } th { (tr(lang, "Mode de blocage", "Block mode")) } } }
            tbody {
                @for p in &cfg.profiles {
                    tr {
                        td { a href=(format!("/admin/config/profile/{}", p.name)) { (match lang { Lang::Fr => &p.fr, Lang::En => &p.en }) " (" (p.name) ")" } }
                        td { (p.block.iter().map(|c| snap.category_name(c)).collect::<Vec<_>>().join(", ")) }
                        td { (format!("{:?}", p.safe_search).to_lowercase()) }
                        td { (format!("{:?}", p.block_mode).to_lowercase()) }
                    }
                }
            }
        }
        p {
            a href="/admin/config/networks" { (tr(lang, "Réseaux → profils", "Networks → profiles")) }
            " · " a href="/admin/config/raw" { (tr(lang, "Fichier complet (horaires, listes…)", "Whole file (schedules, lists…)")) }
            " · " a href="/admin/config/versions" { (tr(lang, "Versions", "Versions")) }
        }
        h2 { (tr(lang, "Sources de listes", "List sources")) }
        ul {
            @for src in &cfg.sources {
                li { code { (src.path.display()) } " → " (cfg.categories.get(src.category as usize).map(|c| c.id.as_str()).unwrap_or("?")) }
            }
        }
    };
    s.page(tr(lang, "Configuration", "Configuration"), body)
}

fn sim_fields(lang: Lang, targets: &str, at: &str) -> Markup {
    html! {
        fieldset {
            legend { (tr(lang, "Simulation", "Simulation")) }
            label for="targets" { (tr(lang, "Adresses à essayer (une par ligne)", "Addresses to try (one a line)")) }
            textarea #targets name="targets" rows="4" { (targets) }
            label for="at" { (tr(lang, "Moment (AAAA-MM-JJTHH:MM, heure locale ; vide : maintenant)", "Time (YYYY-MM-DDTHH:MM, local; empty: now)")) }
            input #at type="text" name="at" value=(at);
        }
    }
}

async fn profile_page(
    State(admin): State<Arc<Admin>>,
    s: Session,
    UrlPath(name): UrlPath<String>,
) -> Response {
    if let Err(r) = it_only(&s) {
        return r;
    }
    if admin.config_path.is_none() {
        return no_file(&s);
    }
    let lang = s.lang;
    let snap = admin.store.load();
    let cfg = &snap.config;
    let Some(id) = cfg.profile_id(&name) else {
        return layout::message(
            &s.chrome(),
            StatusCode::NOT_FOUND,
            tr(lang, "Profil inconnu", "Unknown profile"),
            &name,
        );
    };
    let p = &cfg.profiles[id as usize];
    let overrides = |list: &[config::Override]| -> String {
        list.iter()
            .map(|o| match o {
                config::Override::Domain(d) => d.clone(),
                config::Override::Url { host, path } => format!("https://{host}{path}"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let select = |field: &'static str, options: &[&'static str], current: &str| {
        html! {
            select id=(field) name=(field) {
                @for o in options {
                    option value=(o) selected[*o == current] { (o) }
                }
            }
        }
    };
    let body = html! {
        form method="post" action=(format!("/admin/config/profile/{name}/preview")) {
            input type="hidden" name="csrf" value=(s.csrf);
            fieldset {
                legend { (tr(lang, "Catégories bloquées en tout temps", "Categories blocked at all times")) }
                @for (i, c) in cfg.categories.iter().enumerate() {
                    label.check {
                        input type="checkbox" name="block" value=(c.id) checked[p.block.contains(i as crate::lists::CategoryId)];
                        " " (match lang { Lang::Fr => &c.fr, Lang::En => &c.en }) " (" (c.id) ")"
                    }
                }
            }
            label for="allow" { (tr(lang, "Toujours permis (domaines ou URL, un par ligne)", "Always allowed (domains or URLs, one a line)")) }
            textarea #allow name="allow" rows="4" { (overrides(&p.allow)) }
            label for="deny" { (tr(lang, "Toujours interdits", "Always denied")) }
            textarea #deny name="deny" rows="4" { (overrides(&p.deny)) }
            label for="safe_search" { (tr(lang, "Recherche sécurisée", "Safe search")) }
            (select("safe_search", &["off", "moderate", "strict"], &format!("{:?}", p.safe_search).to_lowercase()))
            label for="block_mode" { (tr(lang, "Réponse DNS pour un nom bloqué", "DNS answer for a blocked name")) }
            (select("block_mode", &["page", "nxdomain", "null"], &format!("{:?}", p.block_mode).to_lowercase()))
            label for="bare_ip" { (tr(lang, "Connexions vers une adresse IP", "Connections to a bare IP address")) }
            (select("bare_ip", &["allow", "block"], &format!("{:?}", p.bare_ip).to_lowercase()))
            label for="record_allowed" { (tr(lang, "Journaliser le trafic permis", "Record allowed traffic")) }
            (select("record_allowed", &["default", "true", "false"], match p.record_allowed { None => "default", Some(true) => "true", Some(false) => "false" }))
            p.note { (tr(lang, "Les règles selon l'horaire se modifient dans le fichier complet.", "Scheduled rules are edited in the whole file.")) }
            (sim_fields(lang, "", ""))
            button type="submit" { (tr(lang, "Vérifier et voir les changements", "Check and preview")) }
        }
    };
    s.page(
        &format!("{} — {}", tr(lang, "Profil", "Profile"), name),
        body,
    )
}

#[derive(Deserialize)]
struct Sim {
    #[serde(default)]
    targets: String,
    #[serde(default)]
    at: String,
}

async fn profile_preview(
    State(admin): State<Arc<Admin>>,
    s: Session,
    UrlPath(name): UrlPath<String>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(r) = it_only(&s) {
        return r;
    }
    // Checkboxes repeat a field (`block=a&block=b`): read the pairs as they come.
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    if let Err(r) = s.check_csrf(&get("csrf")) {
        return r;
    }
    let edit = ProfileEdit {
        block: pairs
            .iter()
            .filter(|(n, _)| n == "block")
            .map(|(_, v)| v.clone())
            .collect(),
        allow: get("allow"),
        deny: get("deny"),
        safe_search: get("safe_search"),
        block_mode: get("block_mode"),
        bare_ip: get("bare_ip"),
        record_allowed: get("record_allowed"),
    };
    let sim = Sim {
        targets: get("targets"),
        at: get("at"),
    };
    let Some((path, text)) = current_text(&admin) else {
        return no_file(&s);
    };
    let proposed = edit_profile(&text, &name, &edit);
    preview(
        &admin,
        &s,
        &path,
        &text,
        proposed,
        &sim,
        &format!("profile {name}"),
    )
    .await
}

async fn networks_page(State(admin): State<Arc<Admin>>, s: Session) -> Response {
    if let Err(r) = it_only(&s) {
        return r;
    }
    if admin.config_path.is_none() {
        return no_file(&s);
    }
    let lang = s.lang;
    let snap = admin.store.load();
    let rows: Vec<String> = snap
        .config
        .networks
        .iter()
        .map(|n| {
            format!(
                "{} {}{}",
                n.net,
                snap.profile_name(n.profile),
                n.name
                    .as_deref()
                    .map(|x| format!(" {x}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    let body = html! {
        form method="post" action="/admin/config/networks/preview" {
            input type="hidden" name="csrf" value=(s.csrf);
            label for="rows" { (tr(lang, "Un réseau par ligne : CIDR PROFIL [nom]", "One network a line: CIDR PROFILE [name]")) }
            textarea #rows name="rows" rows="12" { (rows.join("\n")) }
            (sim_fields(lang, "", ""))
            button type="submit" { (tr(lang, "Vérifier et voir les changements", "Check and preview")) }
        }
    };
    s.page(tr(lang, "Réseaux → profils", "Networks → profiles"), body)
}

#[derive(Deserialize)]
struct NetworksForm {
    csrf: String,
    rows: String,
    #[serde(flatten)]
    sim: Sim,
}

async fn networks_preview(
    State(admin): State<Arc<Admin>>,
    s: Session,
    Form(f): Form<NetworksForm>,
) -> Response {
    if let Err(r) = it_form(&s, &f.csrf) {
        return r;
    }
    let Some((path, text)) = current_text(&admin) else {
        return no_file(&s);
    };
    let proposed = edit_networks(&text, &f.rows);
    preview(&admin, &s, &path, &text, proposed, &f.sim, "networks").await
}

async fn raw_page(State(admin): State<Arc<Admin>>, s: Session) -> Response {
    if let Err(r) = it_only(&s) {
        return r;
    }
    let Some((_, text)) = current_text(&admin) else {
        return no_file(&s);
    };
    let lang = s.lang;
    let body = html! {
        form method="post" action="/admin/config/raw/preview" {
            input type="hidden" name="csrf" value=(s.csrf);
            label for="text" { (tr(lang, "Fichier de configuration (TOML)", "Configuration file (TOML)")) }
            textarea #text.code name="text" rows="30" spellcheck="false" { (text) }
            (sim_fields(lang, "", ""))
            button type="submit" { (tr(lang, "Vérifier et voir les changements", "Check and preview")) }
        }
    };
    s.page(tr(lang, "Fichier complet", "Whole file"), body)
}

#[derive(Deserialize)]
struct RawForm {
    csrf: String,
    text: String,
    #[serde(flatten)]
    sim: Sim,
}

async fn raw_preview(
    State(admin): State<Arc<Admin>>,
    s: Session,
    Form(f): Form<RawForm>,
) -> Response {
    if let Err(r) = it_form(&s, &f.csrf) {
        return r;
    }
    let Some((path, text)) = current_text(&admin) else {
        return no_file(&s);
    };
    // Browsers send textareas with CRLF line ends.
    let proposed = f.text.replace("\r\n", "\n");
    preview(&admin, &s, &path, &text, Ok(proposed), &f.sim, "whole file").await
}

/// A local `YYYY-MM-DDTHH:MM` (or RFC 3339) time; empty or unreadable: now.
pub fn parse_at(text: &str, tz: chrono_tz::Tz) -> DateTime<Utc> {
    use chrono::TimeZone;
    let t = text.trim();
    if t.is_empty() {
        return Utc::now();
    }
    chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M")
        .ok()
        .and_then(|n| tz.from_local_datetime(&n).earliest())
        .map(|d| d.with_timezone(&Utc))
        .or_else(|| {
            DateTime::parse_from_rfc3339(t)
                .ok()
                .map(|d| d.with_timezone(&Utc))
        })
        .unwrap_or_else(Utc::now)
}

/// The preview: the validator's messages (nothing can be applied), or the diff, the
/// simulation and the form that applies exactly this text.
async fn preview(
    admin: &Arc<Admin>,
    s: &Session,
    path: &Path,
    current: &str,
    proposed: Result<String, String>,
    sim: &Sim,
    what: &str,
) -> Response {
    let lang = s.lang;
    let title = tr(
        lang,
        "Vérification de la modification",
        "Checking the change",
    );
    let proposed = match proposed {
        Ok(p) => p,
        Err(e) => return refused(s, title, &[e]),
    };
    let new_cfg = match validate(&proposed, path) {
        Ok(c) => c,
        Err(errors) => return refused(s, title, &errors),
    };
    let old = admin.store.load();
    let tz = old.config.timezone;
    let at = parse_at(&sim.at, tz);
    let targets: Vec<String> = sim.targets.lines().map(str::to_string).collect();
    let cache = admin.data_dir.as_ref().map(|d| d.join("cache"));
    // Building a snapshot loads the lists: off the async workers.
    let built =
        tokio::task::spawn_blocking(move || Snapshot::build(new_cfg, cache.as_deref())).await;
    let new_snap = match built {
        Ok(Ok(snap)) => snap,
        Ok(Err(e)) => return refused(s, title, &[e.to_string()]),
        Err(e) => return refused(s, title, &[e.to_string()]),
    };
    let rows = simulate(&old, &new_snap, &targets, at);
    let changes = diff(current, &proposed);
    let body = html! {
        @if changes.is_empty() {
            p { (tr(lang, "Aucun changement.", "No change.")) }
        } @else {
            h2 { (tr(lang, "Changements", "Changes")) }
            pre.diff {
                @for (sign, line) in &changes {
                    @match sign {
                        '+' => ins { "+ " (line) "\n" },
                        '-' => del { "- " (line) "\n" },
                        _ => span { "  " (line) "\n" },
                    }
                }
            }
        }
        @if !rows.is_empty() {
            h2 { (tr(lang, "Simulation", "Simulation")) " — " (at.with_timezone(&tz).format("%Y-%m-%d %H:%M")) }
            table.sim {
                thead { tr { th { (tr(lang, "Adresse", "Address")) } th { (tr(lang, "Profil", "Profile")) }
                    th { (tr(lang, "Avant", "Before")) } th { (tr(lang, "Après", "After")) } } }
                tbody {
                    @for r in &rows {
                        tr class=[r.changed().then_some("changed")] {
                            td { (r.target) } td { (r.profile) } td { (r.before.text(lang)) }
                            td { (r.after.text(lang)) @if r.changed() { " " strong { (tr(lang, "(changé)", "(changed)")) } } }
                        }
                    }
                }
            }
        }
        form method="post" action="/admin/config/apply" {
            input type="hidden" name="csrf" value=(s.csrf);
            input type="hidden" name="base" value=(hash(current));
            input type="hidden" name="what" value=(what);
            input type="hidden" name="text" value=(proposed);
            button type="submit" disabled[changes.is_empty()] { (tr(lang, "Appliquer", "Apply")) }
        }
    };
    s.page(title, body)
}

fn refused(s: &Session, title: &str, errors: &[String]) -> Response {
    let lang = s.lang;
    let body = html! {
        div.error role="alert" {
            p { strong { (tr(lang, "Modification refusée : rien n'a été changé, le filtre continue avec la configuration actuelle.",
                "Change refused: nothing was changed, the filter keeps the current configuration.")) } }
            ul.errors { @for e in errors { li { code { (e) } } } }
        }
        p { a href="/admin/config" { (tr(lang, "Retour", "Back")) } }
    };
    let mut r = s.page(title, body);
    *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    r
}

#[derive(Deserialize)]
struct ApplyForm {
    csrf: String,
    text: String,
    #[serde(default)]
    base: Option<String>,
    #[serde(default)]
    what: String,
}

async fn apply(State(admin): State<Arc<Admin>>, s: Session, Form(f): Form<ApplyForm>) -> Response {
    if let Err(r) = it_form(&s, &f.csrf) {
        return r;
    }
    let what = if f.what.is_empty() {
        "edit"
    } else {
        f.what.as_str()
    };
    applied(
        &s,
        apply_text(
            &admin,
            &s,
            &f.text.replace("\r\n", "\n"),
            f.base.as_deref(),
            what,
        )
        .await,
    )
}

fn applied(s: &Session, r: Result<String, ApplyError>) -> Response {
    let lang = s.lang;
    let title = tr(
        lang,
        "Application de la modification",
        "Applying the change",
    );
    match r {
        Ok(_) => Redirect::to("/admin/config/versions?applied=1").into_response(),
        Err(ApplyError::Invalid(errors)) => refused(s, title, &errors),
        Err(ApplyError::Stale) => refused(
            s,
            title,
            &[tr(
                lang,
                "Le fichier a changé depuis le début de cette modification : recommencez à partir de la version actuelle.",
                "The file changed since this edit started: start again from the current version.",
            )
            .to_string()],
        ),
        Err(ApplyError::Reload) => refused(
            s,
            title,
            &[tr(
                lang,
                "Le filtre n'a pas pu charger cette configuration (une liste illisible ?) : l'ancienne est remise en place.",
                "The filter could not load this configuration (an unreadable list?): the previous one is back.",
            )
            .to_string()],
        ),
        Err(ApplyError::NoFile) => no_file(s),
        Err(ApplyError::Io(e)) => refused(s, title, &[e]),
    }
}

async fn versions_page(State(admin): State<Arc<Admin>>, s: Session) -> Response {
    if let Err(r) = it_only(&s) {
        return r;
    }
    let Some(path) = admin.config_path.clone() else {
        return no_file(&s);
    };
    let lang = s.lang;
    let applied = s.here.contains("applied=1");
    let versions = list_versions(&versions_dir(&admin, &path));
    let body = html! {
        @if applied {
            p.ok role="status" { (tr(lang, "Modification appliquée : le filtre l'utilise déjà.", "Change applied: the filter already uses it.")) }
        }
        @if versions.is_empty() {
            p { (tr(lang, "Aucune version enregistrée encore.", "No version kept yet.")) }
        } @else {
            table {
                thead { tr { th { (tr(lang, "Version", "Version")) } th { (tr(lang, "Par", "By")) } th {} } }
                tbody {
                    @for (i, v) in versions.iter().enumerate() {
                        tr {
                            td { code { (v.time) } @if i == 0 { " " strong { (tr(lang, "(en vigueur)", "(current)")) } } }
                            td { (v.by) }
                            td {
                                @if i > 0 {
                                    form method="post" action=(format!("/admin/config/versions/{}/restore", v.id)) {
                                        input type="hidden" name="csrf" value=(s.csrf);
                                        button type="submit" { (tr(lang, "Rétablir", "Restore")) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    s.page(
        tr(
            lang,
            "Versions de la configuration",
            "Configuration versions",
        ),
        body,
    )
}

/// 404: no kept version of that name.
fn no_version(s: &Session, id: &str) -> Response {
    let lang = s.lang;
    let text = match lang {
        Lang::Fr => format!("Aucune version « {id} » n'est conservée."),
        Lang::En => format!("No version \"{id}\" is kept."),
    };
    layout::message(
        &s.chrome(),
        StatusCode::NOT_FOUND,
        tr(lang, "Version introuvable", "Version not found"),
        &text,
    )
}

#[derive(Deserialize)]
struct CsrfOnly {
    csrf: String,
}

async fn restore(
    State(admin): State<Arc<Admin>>,
    s: Session,
    UrlPath(id): UrlPath<String>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    if let Err(r) = it_form(&s, &f.csrf) {
        return r;
    }
    let Some(path) = admin.config_path.clone() else {
        return no_file(&s);
    };
    let file = versions_dir(&admin, &path).join(format!("{id}.toml"));
    let text = valid_version_id(&id)
        .then(|| std::fs::read_to_string(&file).ok())
        .flatten();
    let Some(text) = text else {
        return no_version(&s, &id);
    };
    applied(
        &s,
        apply_text(&admin, &s, &text, None, &format!("restore {id}")).await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_verdicts_are_worded_in_the_readers_language() {
        let block = SimVerdict::Block("eleves: block gambling".into());
        assert_eq!(block.text(Lang::Fr), "bloqué — eleves: block gambling");
        assert_eq!(block.text(Lang::En), "blocked — eleves: block gambling");
        assert_eq!(SimVerdict::Allow.text(Lang::Fr), "permis");
        assert_eq!(
            SimVerdict::SafeSearch("forcesafesearch.google.com".into()).text(Lang::Fr),
            "recherche sécurisée → forcesafesearch.google.com"
        );
        // Whether a row changed does not depend on the wording.
        let row = SimRow {
            target: "a.example".into(),
            profile: "eleves".into(),
            before: SimVerdict::Allow,
            after: block,
        };
        assert!(row.changed());
    }

    const TEXT: &str = "# Configuration de l'école\n[[categories]]\nid = \"gambling\"\nfr = \"Jeux\"\nen = \"Gambling\"\n\n[[categories]]\nid = \"games\"\nfr = \"Jeux vidéo\"\nen = \"Games\"\n\n[profiles.eleves]\nblock = [\"gambling\"]  # toujours\n\n[profiles.invites]\nblock = [\"gambling\"]\n";

    #[test]
    fn profile_edit_keeps_comments_and_validates() {
        let edit = ProfileEdit {
            block: vec!["gambling".into(), "games".into()],
            allow: "ecole.example\n\n".into(),
            safe_search: "strict".into(),
            record_allowed: "false".into(),
            ..Default::default()
        };
        let out = edit_profile(TEXT, "eleves", &edit).unwrap();
        assert!(out.starts_with("# Configuration de l'école\n"), "{out}");
        assert!(
            out.contains("block = [\"gambling\", \"games\"]  # toujours"),
            "{out}"
        );
        assert!(out.contains("allow = [\"ecole.example\"]"), "{out}");
        assert!(out.contains("safe_search = \"strict\""), "{out}");
        // Defaults the file does not spell out stay unwritten: the diff is the change.
        let same = edit_profile(
            TEXT,
            "invites",
            &ProfileEdit {
                block: vec!["gambling".into()],
                block_mode: "page".into(),
                bare_ip: "block".into(),
                safe_search: "off".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(same, TEXT, "no change, no diff");
        let cfg = validate(&out, Path::new("/etc/vigie/vigie.toml")).unwrap();
        let p = &cfg.profiles[cfg.profile_id("eleves").unwrap() as usize];
        assert_eq!(p.block.iter().count(), 2);
        assert_eq!(p.record_allowed, Some(false));
        // An unknown category: the validator's own message, with its position.
        let bad = edit_profile(
            TEXT,
            "eleves",
            &ProfileEdit {
                block: vec!["gambing".into()],
                ..Default::default()
            },
        )
        .unwrap();
        let e = validate(&bad, Path::new("/etc/vigie/vigie.toml")).unwrap_err();
        assert!(
            e.iter().any(|m| m.starts_with("/etc/vigie/vigie.toml:")
                && m.contains("did you mean \"gambling\"")),
            "{e:?}"
        );
    }

    #[test]
    fn networks_edit_diff_and_versions() {
        let out = edit_networks(
            TEXT,
            "10.1.0.0/16 eleves Labo A\n# note\n10.2.0.0/16 invites\n",
        )
        .unwrap();
        let cfg = validate(&out, Path::new("/v.toml")).unwrap();
        assert_eq!(cfg.networks.len(), 2);
        assert_eq!(
            cfg.networks[0]
                .name
                .as_deref()
                .or(cfg.networks[1].name.as_deref()),
            Some("Labo A")
        );
        assert!(
            edit_networks(TEXT, "10.1.0.0/16\n")
                .unwrap_err()
                .contains("line 1")
        );
        let d = diff(TEXT, &out);
        assert!(
            d.iter()
                .any(|(c, l)| *c == '+' && l.contains("10.1.0.0/16")),
            "{d:?}"
        );
        assert!(d.iter().all(|(c, _)| *c != '-'));
        let dir = tempfile::tempdir().unwrap();
        let a = save_version(dir.path(), TEXT, "it admin").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = save_version(dir.path(), &out, "it-admin").unwrap();
        let v = list_versions(dir.path());
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].id, b, "newest first");
        assert_eq!(v[1].by, "it_admin");
        assert!(valid_version_id(&a) && !valid_version_id("../etc/passwd"));
        let file = dir.path().join("c.toml");
        write_atomically(&file, "x = 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x = 1\n");
    }
}
