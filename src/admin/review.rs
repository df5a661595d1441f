//! Unblock requests. The block page's "request a review" link opens `/review`
//! (public to the school's client networks, like the portal): the person says why,
//! and the request is kept with the blocked address and who they are (the identity
//! of their address now). They follow it by the block page's reference at
//! `/review/status`. Directors (of the requester's network, when restricted) and IT
//! admins approve — for this person, their profile or everyone, until an expiry —
//! or refuse with a reason. An approval is a grant in the snapshot store at once
//! (`snapshot::Grants`, read by `policy::decide` for DNS and the proxy alike), and
//! is put back in force from `admin.db` at the next start.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{Duration, Utc};
use ipnet::IpNet;
use maud::{Markup, html};
use serde::Deserialize;

use super::db::{NewReview, Review};
use super::layout::{self, Chrome, tr};
use super::session::{Fields, Session};
use super::{Admin, AdminError, Role, Routes};
use crate::i18n::Lang;
use crate::proxy::pages::query_escape;
use crate::snapshot::{Grant, GrantScope, Grants, canonical_ip};

/// The request form's double-submit cookie.
const REVIEW_CSRF_COOKIE: &str = "vigie_review";
/// Pending requests one address may have at once.
const MAX_PENDING_PER_CLIENT: u64 = 20;
/// Shortest reason accepted from a requester, in characters.
const MIN_WHY: usize = 5;
/// Expiries a director may choose, in hours.
const EXPIRIES: &[i64] = &[1, 24, 7 * 24, 30 * 24, 90 * 24, 365 * 24];

pub fn routes() -> Routes {
    Routes::new()
        .route("/review", get(show).post(create))
        .route("/review/status", get(status))
        .route("/admin/reviews", get(list))
        .route("/admin/reviews/{id}/approve", post(approve))
        .route("/admin/reviews/{id}/refuse", post(refuse))
}

/// Puts the approved, unexpired requests of `admin.db` in force (blocking).
pub fn refresh_grants_blocking(admin: &Admin) -> Result<(), AdminError> {
    let rows = {
        let mut db = admin.db.lock().unwrap_or_else(|p| p.into_inner());
        db.grants(Utc::now())?
    };
    let list = rows.into_iter().filter_map(grant_of).collect();
    admin.store.set_grants(Grants::new(list));
    Ok(())
}

/// Whether a grant for `profile` stays inside `nets` (a restricted director's
/// networks): a grant is matched on the profile alone, wherever its people are, so
/// every place the profile applies must be one of `nets`. A profile that is the
/// default (every unmapped client), or that follows people (the users file, the
/// directory's groups), reaches beyond any list of networks.
fn profile_within(
    snap: &crate::snapshot::Snapshot,
    auth: &crate::identity::users::Authenticator,
    profile: &str,
    nets: &[IpNet],
) -> bool {
    let cfg = &snap.config;
    let Some(id) = cfg.profile_id(profile) else {
        return false;
    };
    let covered = |net: &IpNet| nets.iter().any(|m| m.contains(net));
    id != cfg.default_profile
        && cfg
            .networks
            .iter()
            .filter(|n| n.profile == id)
            .all(|n| covered(&n.net))
        && cfg
            .mappings
            .iter()
            .filter(|m| m.profile == id)
            .all(|m| covered(&m.net))
        && !cfg
            .ldap
            .as_ref()
            .is_some_and(|l| l.groups.iter().any(|(_, p)| p == profile))
        && !auth.gives_profile(profile)
}

/// Whether this person may approve `profile`-wide: anyone unrestricted, a
/// restricted director only for a profile inside their networks.
fn may_grant_profile(admin: &Admin, s: &Session, profile: &str) -> bool {
    match s.networks() {
        None => true,
        Some(nets) => profile_within(&admin.store.load(), &admin.auth, profile, &nets),
    }
}

fn grant_of(r: Review) -> Option<Grant> {
    let scope = match (r.scope.as_deref()?, r.scope_value) {
        ("user", Some(u)) => GrantScope::User(u),
        ("profile", Some(p)) => GrantScope::Profile(p),
        ("everyone", _) => GrantScope::Everyone,
        _ => return None,
    };
    Some(Grant {
        id: r.id,
        host: r.host,
        scope,
        expires: r.expires?,
    })
}

async fn refresh(admin: &Arc<Admin>) -> Result<(), AdminError> {
    let a = admin.clone();
    tokio::task::spawn_blocking(move || refresh_grants_blocking(&a))
        .await
        .map_err(|e| AdminError::Task(e.to_string()))?
}

// ---- the requester's side (public to client networks) ----

#[derive(Deserialize, Default)]
struct ShowQuery {
    #[serde(default, rename = "ref")]
    reference: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    category: Option<String>,
}

#[derive(Deserialize, Default)]
struct CreateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default, rename = "ref")]
    reference: Option<String>,
    #[serde(default)]
    url: String,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    why: String,
}

/// A reference as the block page makes them (letters, digits, a dash), else none.
fn clean_reference(r: Option<&str>) -> Option<String> {
    let r = r?.trim();
    (!r.is_empty() && r.len() <= 32 && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .then(|| r.to_ascii_uppercase())
}

/// The host a request is about, normalised; `None` for nothing usable or a bare IP
/// (grants are by name).
fn host_of_url(url: &str) -> Option<String> {
    let (host, _) = crate::policy::split_url(url.trim());
    let mut buf = [0u8; 256];
    let h = crate::policy::normalize_query_host(host, &mut buf)?.to_string();
    (h.contains('.') && h.parse::<std::net::IpAddr>().is_err() && !h.starts_with('[')).then_some(h)
}

/// 403 for an address outside the school's client networks, in its language.
fn public_forbidden(lang: Lang) -> Response {
    crate::identity::portal::not_client(lang)
}

fn review_token(headers: &HeaderMap) -> (String, bool) {
    match layout::cookie(headers, REVIEW_CSRF_COOKIE).filter(|t| t.len() == 32) {
        Some(t) => (t.to_string(), false),
        None => (layout::random_token(), true),
    }
}

fn with_review_cookie(mut r: Response, token: &str, fresh: bool) -> Response {
    if fresh
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{REVIEW_CSRF_COOKIE}={token}; Path=/review; HttpOnly; SameSite=Strict"
        ))
    {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

fn here(uri: &Uri) -> String {
    uri.path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/review".into())
}

fn status_label(lang: Lang, status: &str) -> &'static str {
    match status {
        "approved" => tr(lang, "Acceptée", "Approved"),
        "refused" => tr(lang, "Refusée", "Refused"),
        _ => tr(lang, "En attente", "Pending"),
    }
}

fn scope_label(lang: Lang, r: &Review) -> String {
    match (r.scope.as_deref(), r.scope_value.as_deref()) {
        (Some("user"), Some(u)) => format!("{} {u}", tr(lang, "pour", "for")),
        (Some("profile"), Some(p)) => format!("{} {p}", tr(lang, "pour le profil", "for profile")),
        (Some("everyone"), _) => tr(lang, "pour tout le monde", "for everyone").to_string(),
        _ => String::new(),
    }
}

fn review_form(
    lang: Lang,
    token: &str,
    reference: Option<&str>,
    url: &str,
    category: Option<&str>,
    error: Option<&str>,
) -> Markup {
    html! {
        @if let Some(e) = error { p.err role="alert" { (e) } }
        p { (tr(lang,
            "Si ce blocage vous semble une erreur ou si vous avez besoin de ce site pour vos études ou votre travail, expliquez-le : la direction de l'école examinera votre demande.",
            "If this block looks like a mistake, or you need this site for your studies or work, explain why: the school's management will review your request.")) }
        form method="post" action="/review" {
            input type="hidden" name="csrf" value=(token);
            @if let Some(r) = reference { input type="hidden" name="ref" value=(r); }
            @if let Some(c) = category { input type="hidden" name="category" value=(c); }
            label for="url" { (tr(lang, "Adresse bloquée", "Blocked address")) }
            input #url type="text" name="url" value=(url) required;
            label for="why" { (tr(lang, "Pourquoi en avez-vous besoin ?", "Why do you need it?")) }
            textarea #why name="why" required minlength=(MIN_WHY) maxlength="2000" {}
            div { button type="submit" { (tr(lang, "Envoyer la demande", "Send the request")) } }
        }
    }
}

async fn show(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<ShowQuery>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let lang = layout::lang_of(&headers, &uri);
    if !admin.store.load().is_client(peer.ip()) {
        return public_forbidden(lang);
    }
    let reference = clean_reference(q.reference.as_deref());
    // A request already made for this reference: show where it stands.
    if let Some(r) = &reference {
        let r2 = r.clone();
        if let Ok(found) = admin.with_db(move |db| db.reviews_by_reference(&r2)).await
            && !found.is_empty()
        {
            return Redirect::to(&format!("/review/status?ref={}", query_escape(r)))
                .into_response();
        }
    }
    // What was blocked: the audit store knows the reference (once written);
    // otherwise what the block page put in the link.
    let mut url = q.url.clone().unwrap_or_default();
    let mut category = q.category.clone().filter(|c| !c.is_empty());
    if let Some(r) = reference.clone()
        && let Ok(Some(ev)) = admin.with_events(move |st| st.by_reference(&r)).await
    {
        url = ev.target;
        category = ev.category.or(category);
    }
    let (token, fresh) = review_token(&headers);
    let here = here(&uri);
    let c = Chrome {
        lang,
        session: None,
        here: &here,
    };
    let body = review_form(
        lang,
        &token,
        reference.as_deref(),
        &url,
        category.as_deref(),
        None,
    );
    let r = layout::respond(
        StatusCode::OK,
        lang,
        layout::page(
            &c,
            tr(lang, "Demander un déblocage", "Request an unblock"),
            body,
        ),
    );
    with_review_cookie(r, &token, fresh)
}

async fn create(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    Fields(f): Fields<CreateForm>,
) -> Response {
    let ip = canonical_ip(peer.ip());
    let snap = admin.store.load();
    let lang = layout::lang_of(&headers, &uri);
    if !snap.is_client(ip) {
        return public_forbidden(lang);
    }
    let (token, fresh) = review_token(&headers);
    let reference = clean_reference(f.reference.as_deref());
    let again = |status: StatusCode, error: &str| {
        let c = Chrome {
            lang,
            session: None,
            here: "/review",
        };
        let body = review_form(
            lang,
            &token,
            reference.as_deref(),
            &f.url,
            f.category.as_deref(),
            Some(error),
        );
        with_review_cookie(
            layout::respond(
                status,
                lang,
                layout::page(
                    &c,
                    tr(lang, "Demander un déblocage", "Request an unblock"),
                    body,
                ),
            ),
            &token,
            fresh,
        )
    };
    let cookie_ok = layout::cookie(&headers, REVIEW_CSRF_COOKIE)
        .is_some_and(|c| layout::same_token(c, &f.csrf));
    if !cookie_ok {
        return again(
            StatusCode::FORBIDDEN,
            tr(
                lang,
                "Le formulaire a expiré : réessayez.",
                "The form expired: try again.",
            ),
        );
    }
    let why = f.why.trim();
    if why.chars().count() < MIN_WHY || why.chars().count() > 2000 {
        return again(
            StatusCode::BAD_REQUEST,
            tr(
                lang,
                "Expliquez en quelques mots pourquoi vous avez besoin de ce site.",
                "Say in a few words why you need this site.",
            ),
        );
    }
    let url: String = f.url.trim().chars().take(2048).collect();
    let Some(host) = host_of_url(&url) else {
        return again(
            StatusCode::BAD_REQUEST,
            tr(
                lang,
                "Cette adresse n'est pas un nom de site (ex. : exemple.com).",
                "This address is not a site name (e.g. example.com).",
            ),
        );
    };
    let now = Utc::now();
    let id = admin.identities.resolve(&snap, ip, now);
    let reference = reference
        .clone()
        .unwrap_or_else(|| crate::proxy::pages::new_reference(now));
    let requester = id.user.as_deref().map(str::to_string);
    let profile = snap.profile_name(id.profile).to_string();
    let category: Option<String> = f
        .category
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.len() <= 64)
        .map(str::to_string);
    let (ip_s, why_s, r2, host2) = (
        ip.to_string(),
        why.to_string(),
        reference.clone(),
        host.clone(),
    );
    let created = admin
        .with_db(move |db| {
            if db.pending_from(&ip_s)? >= MAX_PENDING_PER_CLIENT {
                return Ok(None);
            }
            db.add_review(&NewReview {
                reference: &r2,
                url: &url,
                host: &host2,
                category: category.as_deref(),
                client_ip: &ip_s,
                requester: requester.as_deref(),
                profile: &profile,
                why: &why_s,
            })
            .map(Some)
        })
        .await;
    match created {
        Ok(Some(n)) => {
            admin.record(
                id.user.as_deref(),
                ip,
                "review_request",
                host,
                format!("unblock request #{n} (reference {reference}): none → pending"),
            );
            Redirect::to(&format!(
                "/review/status?ref={}&lang={}",
                query_escape(&reference),
                lang.code()
            ))
            .into_response()
        }
        Ok(None) => again(
            StatusCode::TOO_MANY_REQUESTS,
            tr(
                lang,
                "Trop de demandes en attente depuis cet appareil : attendez une réponse.",
                "Too many pending requests from this device: wait for an answer.",
            ),
        ),
        Err(e) => {
            tracing::error!("review request not saved: {e}");
            again(
                StatusCode::INTERNAL_SERVER_ERROR,
                tr(
                    lang,
                    "La demande n'a pas pu être enregistrée.",
                    "The request could not be saved.",
                ),
            )
        }
    }
}

#[derive(Deserialize, Default)]
struct StatusQuery {
    #[serde(default, rename = "ref")]
    reference: Option<String>,
}

async fn status(
    State(admin): State<Arc<Admin>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<StatusQuery>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let snap = admin.store.load();
    let lang = layout::lang_of(&headers, &uri);
    if !snap.is_client(peer.ip()) {
        return public_forbidden(lang);
    }
    let here = here(&uri);
    let c = Chrome {
        lang,
        session: None,
        here: &here,
    };
    let title = tr(lang, "Suivi de la demande", "Request status");
    let Some(reference) = clean_reference(q.reference.as_deref()) else {
        return layout::message(
            &c,
            StatusCode::BAD_REQUEST,
            title,
            tr(lang, "Référence manquante.", "Missing reference."),
        );
    };
    let r2 = reference.clone();
    let found = match admin.with_db(move |db| db.reviews_by_reference(&r2)).await {
        Ok(f) => f,
        Err(e) => return layout::failure(&c, &e),
    };
    let tz = snap.config.timezone;
    let when = |t: chrono::DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string();
    let status = if found.is_empty() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    layout::respond(
        status,
        lang,
        layout::page(
            &c,
            title,
            html! {
                p { (tr(lang, "Référence : ", "Reference: ")) code { (reference) } }
                @if found.is_empty() {
                    p { (tr(lang, "Aucune demande pour cette référence.", "No request for this reference.")) }
                }
                @for r in &found {
                    div.card {
                        p { strong { (r.host) } }
                        p #review-status {
                            (tr(lang, "État : ", "Status: "))
                            span class=(format!("status-{}", r.status)) { (status_label(lang, &r.status)) }
                        }
                        @if r.status == "approved" {
                            p { (scope_label(lang, r)) @if let Some(e) = r.expires { ", " (tr(lang, "jusqu'au", "until")) " " (when(e)) } }
                        }
                        @if let Some(a) = &r.answer { p { (tr(lang, "Réponse : ", "Answer: ")) (a) } }
                        p.hint { (tr(lang, "Demandée le ", "Requested on ")) (when(r.created)) }
                    }
                }
            },
        ),
    )
}

// ---- the directors' side ----

async fn list(State(admin): State<Arc<Admin>>, s: Session) -> Response {
    if let Err(r) = s.require(&[Role::Director, Role::ItAdmin]) {
        return r;
    }
    let lang = s.lang;
    let all = match admin.with_db(|db| db.reviews(50)).await {
        Ok(r) => r,
        Err(e) => return layout::failure(&s.chrome(), &e),
    };
    let tz = admin.store.load().config.timezone;
    let when = |t: chrono::DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string();
    let mine: Vec<&Review> = all.iter().filter(|r| s.sees_ip(&r.client_ip)).collect();
    let pending: Vec<&&Review> = mine.iter().filter(|r| r.status == "pending").collect();
    let decided: Vec<&&Review> = mine.iter().filter(|r| r.status != "pending").collect();
    let restricted = s.networks().is_some();
    s.page(
        tr(lang, "Demandes de déblocage", "Unblock requests"),
        html! {
            h2 { (tr(lang, "En attente", "Pending")) " (" (pending.len()) ")" }
            @if pending.is_empty() { p { (tr(lang, "Aucune demande en attente.", "No pending request.")) } }
            @for r in &pending {
                section.card id=(format!("review-{}", r.id)) aria-labelledby=(format!("review-{}-h", r.id)) {
                    h3 id=(format!("review-{}-h", r.id)) { "#" (r.id) " — " (r.host) }
                    dl {
                        dt { (tr(lang, "Adresse", "Address")) } dd.url { (r.url) }
                        @if let Some(c) = &r.category { dt { (tr(lang, "Catégorie", "Category")) } dd { (c) } }
                        dt { (tr(lang, "Demandée par", "Requested by")) }
                        dd { (r.requester.as_deref().unwrap_or(tr(lang, "(anonyme)", "(anonymous)"))) " — " (r.profile) " — " (r.client_ip) }
                        dt { (tr(lang, "Raison", "Reason")) } dd { (r.why) }
                        dt { (tr(lang, "Le", "On")) } dd { (when(r.created)) }
                        dt { (tr(lang, "Référence", "Reference")) } dd { code { (r.reference) } }
                    }
                    @let by_profile = may_grant_profile(&admin, &s, &r.profile);
                    @if r.requester.is_none() && !by_profile && restricted {
                        p.hint { (tr(lang,
                            "La personne n'est pas identifiée et son profil s'applique aussi hors de vos écoles : seul le service informatique peut accepter cette demande. Vous pouvez la refuser.",
                            "The person is not identified and their profile also applies outside your schools: only IT can approve this request. You may refuse it.")) }
                    } @else {
                    form.inline method="post" action=(format!("/admin/reviews/{}/approve", r.id)) {
                        input type="hidden" name="csrf" value=(s.csrf);
                        div {
                            label for=(format!("scope-{}", r.id)) { (tr(lang, "Portée", "Scope")) }
                            select id=(format!("scope-{}", r.id)) name="scope" {
                                @if r.requester.is_some() {
                                    option value="user" { (tr(lang, "Cette personne", "This person")) }
                                }
                                @if by_profile {
                                    option value="profile" { (tr(lang, "Ce profil", "This profile")) " (" (r.profile) ")" }
                                }
                                @if !restricted {
                                    option value="everyone" { (tr(lang, "Tout le monde", "Everyone")) }
                                }
                            }
                        }
                        div {
                            label for=(format!("hours-{}", r.id)) { (tr(lang, "Durée", "Duration")) }
                            select id=(format!("hours-{}", r.id)) name="hours" {
                                @for h in EXPIRIES {
                                    option value=(h) selected[*h == 7 * 24] { (duration_label(lang, *h)) }
                                }
                            }
                        }
                        button type="submit" { (tr(lang, "Accepter", "Approve")) }
                    }
                    }
                    form.inline method="post" action=(format!("/admin/reviews/{}/refuse", r.id)) {
                        input type="hidden" name="csrf" value=(s.csrf);
                        div {
                            label for=(format!("answer-{}", r.id)) { (tr(lang, "Raison du refus", "Reason for refusal")) }
                            input type="text" id=(format!("answer-{}", r.id)) name="answer" required minlength="3";
                        }
                        button.danger type="submit" { (tr(lang, "Refuser", "Refuse")) }
                    }
                }
            }
            h2 { (tr(lang, "Décidées récemment", "Recently decided")) }
            div.table-wrap { table {
                thead { tr {
                    th scope="col" { "#" }
                    th scope="col" { (tr(lang, "Site", "Site")) }
                    th scope="col" { (tr(lang, "Décision", "Decision")) }
                    th scope="col" { (tr(lang, "Par", "By")) }
                    th scope="col" { (tr(lang, "Détail", "Detail")) }
                } }
                tbody { @for r in &decided { tr {
                    td { (r.id) }
                    td.url { (r.host) }
                    td { span class=(format!("status-{}", r.status)) { (status_label(lang, &r.status)) } }
                    td { (r.decided_by.as_deref().unwrap_or("")) }
                    td {
                        @if r.status == "approved" {
                            (scope_label(lang, r))
                            @if let Some(e) = r.expires { ", " (tr(lang, "jusqu'au", "until")) " " (when(e)) }
                        }
                        @if let Some(a) = &r.answer { (a) }
                    }
                } } }
            } }
        },
    )
}

fn duration_label(lang: Lang, hours: i64) -> String {
    match (hours, lang) {
        (1, Lang::Fr) => "1 heure".into(),
        (1, Lang::En) => "1 hour".into(),
        (h, Lang::Fr) if h < 48 => format!("{h} heures"),
        (h, Lang::En) if h < 48 => format!("{h} hours"),
        (h, Lang::Fr) => format!("{} jours", h / 24),
        (h, Lang::En) => format!("{} days", h / 24),
    }
}

#[derive(Deserialize, Default)]
struct ApproveForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    hours: i64,
}

#[derive(Deserialize, Default)]
struct RefuseForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    answer: String,
}

/// 409: someone else decided the request first.
fn already_decided(s: &Session) -> Response {
    let lang = s.lang;
    layout::message(
        &s.chrome(),
        StatusCode::CONFLICT,
        tr(lang, "Déjà décidée", "Already decided"),
        tr(
            lang,
            "Cette demande a déjà été décidée.",
            "This request was already decided.",
        ),
    )
}

/// The pending request `id`, if this person may decide it.
async fn decidable(admin: &Arc<Admin>, s: &Session, id: i64) -> Result<Review, Response> {
    let found = admin
        .with_db(move |db| db.review(id))
        .await
        .map_err(|e| layout::failure(&s.chrome(), &e))?;
    let lang = s.lang;
    match found {
        Some(r) if !s.sees_ip(&r.client_ip) => Err(layout::forbidden(&s.chrome())),
        Some(r) if r.status == "pending" => Ok(r),
        Some(_) => Err(already_decided(s)),
        None => Err(layout::message(
            &s.chrome(),
            StatusCode::NOT_FOUND,
            tr(lang, "Introuvable", "Not found"),
            tr(
                lang,
                "Cette demande n'existe pas.",
                "This request does not exist.",
            ),
        )),
    }
}

async fn approve(
    State(admin): State<Arc<Admin>>,
    s: Session,
    Path(id): Path<i64>,
    Fields(f): Fields<ApproveForm>,
) -> Response {
    if let Err(r) = s.require(&[Role::Director, Role::ItAdmin]) {
        return r;
    }
    if let Err(r) = s.check_csrf(&f.csrf) {
        return r;
    }
    let r = match decidable(&admin, &s, id).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let lang = s.lang;
    let bad = |text: &str| {
        layout::message(
            &s.chrome(),
            StatusCode::BAD_REQUEST,
            tr(lang, "Décision refusée", "Decision refused"),
            text,
        )
    };
    if !EXPIRIES.contains(&f.hours) {
        return bad(tr(lang, "Durée invalide.", "Invalid duration."));
    }
    let scope_value = match f.scope.as_str() {
        "user" => match &r.requester {
            Some(u) => Some(u.clone()),
            None => {
                return bad(tr(
                    lang,
                    "La personne n'est pas identifiée : choisissez le profil.",
                    "The person is not identified: choose the profile.",
                ));
            }
        },
        "profile" if may_grant_profile(&admin, &s, &r.profile) => Some(r.profile.clone()),
        "profile" => {
            return bad(tr(
                lang,
                "Ce profil s'applique aussi hors de vos écoles : vous ne pouvez pas débloquer pour tout ce profil. Débloquez pour cette personne, ou demandez au service informatique.",
                "This profile also applies outside your schools: you cannot unblock for the whole profile. Unblock for this person, or ask IT.",
            ));
        }
        "everyone" if s.networks().is_none() => None,
        "everyone" => {
            return bad(tr(
                lang,
                "Votre rôle est limité à vos écoles : vous ne pouvez pas débloquer pour tout le monde.",
                "Your role is limited to your schools: you cannot unblock for everyone.",
            ));
        }
        _ => return bad(tr(lang, "Portée invalide.", "Invalid scope.")),
    };
    let expires = Utc::now() + Duration::hours(f.hours);
    let (by, scope, sv) = (s.user.clone(), f.scope.clone(), scope_value.clone());
    match admin
        .with_db(move |db| db.approve(id, &by, &scope, sv.as_deref(), expires))
        .await
    {
        Ok(true) => {}
        Ok(false) => return already_decided(&s),
        Err(e) => return layout::failure(&s.chrome(), &e),
    }
    if let Err(e) = refresh(&admin).await {
        return layout::failure(&s.chrome(), &e);
    }
    admin.record(
        Some(&s.user),
        s.ip,
        "review_approve",
        r.host.clone(),
        format!(
            "unblock request #{id}: pending → approved, scope {} {}, until {}",
            f.scope,
            scope_value.unwrap_or_default(),
            expires.to_rfc3339()
        ),
    );
    Redirect::to("/admin/reviews").into_response()
}

async fn refuse(
    State(admin): State<Arc<Admin>>,
    s: Session,
    Path(id): Path<i64>,
    Fields(f): Fields<RefuseForm>,
) -> Response {
    if let Err(r) = s.require(&[Role::Director, Role::ItAdmin]) {
        return r;
    }
    if let Err(r) = s.check_csrf(&f.csrf) {
        return r;
    }
    let r = match decidable(&admin, &s, id).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let answer: String = f.answer.trim().chars().take(1000).collect();
    if answer.chars().count() < 3 {
        let lang = s.lang;
        return layout::message(
            &s.chrome(),
            StatusCode::BAD_REQUEST,
            tr(lang, "Décision refusée", "Decision refused"),
            tr(
                lang,
                "Donnez la raison du refus.",
                "Give the reason for the refusal.",
            ),
        );
    }
    refuse_pending(&admin, &s, r, answer).await
}

/// Refuses `r`, read as pending a moment ago, and records it; unless someone
/// decided it in between (then nothing happened, and nothing is recorded).
async fn refuse_pending(admin: &Arc<Admin>, s: &Session, r: Review, answer: String) -> Response {
    let (id, by, a) = (r.id, s.user.clone(), answer.clone());
    match admin.with_db(move |db| db.refuse(id, &by, &a)).await {
        Ok(true) => {}
        Ok(false) => return already_decided(s),
        Err(e) => return layout::failure(&s.chrome(), &e),
    }
    admin.record(
        Some(&s.user),
        s.ip,
        "review_refuse",
        r.host,
        format!("unblock request #{id}: pending → refused ({answer})"),
    );
    Redirect::to("/admin/reviews").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_grant_stays_inside_a_restricted_directors_networks() {
        let cfg = crate::config::parse(
            r#"
default_profile = "eleves"
client_networks = ["10.0.0.0/8"]
[profiles.eleves]
[profiles.eleves-a]
[profiles.eleves-ab]
[profiles.personnel]
[[networks]]
cidr = "10.1.0.0/16"
profile = "eleves-a"
[[networks]]
cidr = "10.1.0.0/16"
profile = "eleves-ab"
[[networks]]
cidr = "10.2.0.0/16"
profile = "eleves-ab"
"#,
            "t.toml",
            std::path::Path::new("/"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let snap = crate::snapshot::Snapshot::build(cfg, None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users");
        crate::identity::users::set_password(&users, "prof", "pw", true, Some("personnel"))
            .unwrap();
        let auth = crate::identity::users::Authenticator::new(Some(users), None);
        let a: Vec<IpNet> = vec!["10.1.0.0/16".parse().unwrap()];
        let within = |p: &str| profile_within(&snap, &auth, p, &a);
        assert!(within("eleves-a"), "only school A's network has it");
        assert!(!within("eleves-ab"), "school B's network has it too");
        assert!(!within("eleves"), "the default: every unmapped client");
        assert!(!within("personnel"), "follows a user of the file anywhere");
        assert!(!within("inconnu"));
        let both: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(profile_within(&snap, &auth, "eleves-ab", &both));
    }

    #[tokio::test]
    async fn a_refusal_that_came_second_is_not_recorded() {
        let (admin, mut rx) =
            super::super::testing::admin("default_profile = \"eleves\"\n[profiles.eleves]\n", None);
        let s = super::super::testing::session("dir", Role::Director);
        let id = admin
            .with_db(|db| {
                db.add_review(&NewReview {
                    reference: "R-1",
                    url: "http://casino.example/",
                    host: "casino.example",
                    category: None,
                    client_ip: "10.0.0.5",
                    requester: None,
                    profile: "eleves",
                    why: "travail de recherche",
                })
            })
            .await
            .unwrap();
        let read = admin
            .with_db(move |db| db.review(id))
            .await
            .unwrap()
            .unwrap();
        // Another director refuses it first.
        admin
            .with_db(move |db| db.refuse(id, "autre", "non"))
            .await
            .unwrap();
        let r = refuse_pending(&admin, &s, read, "trop tard".into()).await;
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert!(!super::super::testing::actions(&mut rx).contains(&"review_refuse"));
        let stored = admin
            .with_db(move |db| db.review(id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.answer.as_deref(), Some("non"));
    }

    #[test]
    fn hosts_and_references_are_cleaned() {
        assert_eq!(
            host_of_url("http://WWW.Casino.example:8080/a?b").as_deref(),
            Some("www.casino.example")
        );
        assert_eq!(
            host_of_url("casino.example").as_deref(),
            Some("casino.example")
        );
        assert_eq!(host_of_url("http://10.0.0.1/"), None);
        assert_eq!(host_of_url(""), None);
        assert_eq!(
            clean_reference(Some("abc12-XYZ9")).as_deref(),
            Some("ABC12-XYZ9")
        );
        assert_eq!(clean_reference(Some("<script>")), None);
    }
}
