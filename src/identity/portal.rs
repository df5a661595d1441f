//! The captive portal: `/portal` on the admin listener, where a person on a network
//! that requires login gives their access code; their address is then bound to them
//! (identity table) until logout, the idle timeout or the end of the session.
//!
//! Devices find it by themselves: on `[portal] networks`, the proxy answers an
//! unidentified client's plain-HTTP requests — the OS connectivity probes included —
//! with a redirect here, which is what makes phones and laptops pop the login up.
//! The RFC 8908 captive-portal API (`/portal/api`, announced by DHCP option 114 or
//! the IPv6 RA option) tells devices that know it without a probe.
//!
//! Forms carry a CSRF token (double-submit cookie); the password goes to the
//! authenticator and nowhere else, never into a log or an audit event.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::users::{Authenticator, Credentials};
use super::{Binding, IdentitySource, IdentityTable};
use crate::audit::AuditSink;
use crate::i18n::Lang;
use crate::snapshot::{SnapshotStore, canonical_ip};
use crate::web;

const CSRF_COOKIE: &str = "vigie_portal_csrf";

/// Everything the portal's routes share.
pub struct Portal {
    pub store: Arc<SnapshotStore>,
    pub identities: Arc<IdentityTable>,
    pub auth: Arc<Authenticator>,
    pub audit: AuditSink,
    /// Where clients reach the portal when `[portal] url` is not set
    /// (`http://<admin address>/portal`).
    pub default_url: String,
    /// Reads of a person's history they are to be told of.
    pub notices: Arc<crate::audit::notices::Notices>,
}

impl Portal {
    /// The portal's address as clients reach it.
    pub fn url(&self) -> String {
        self.store
            .load()
            .config
            .portal
            .url
            .clone()
            .unwrap_or_else(|| self.default_url.clone())
    }
}

/// The portal's routes, to merge into the admin listener's router (which must be
/// served with `ConnectInfo<SocketAddr>`).
pub fn router(portal: Arc<Portal>) -> axum::Router {
    axum::Router::new()
        .route("/portal", get(show))
        .route("/portal/login", post(login))
        .route("/portal/logout", post(logout))
        .route("/portal/notices", post(acknowledge))
        .route("/portal/api", get(api))
        .with_state(portal)
}

#[derive(Deserialize, Default)]
struct ShowQuery {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    lang: Option<String>,
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
    password: String,
    csrf: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    lang: Option<String>,
}

#[derive(Deserialize)]
struct AckForm {
    csrf: String,
    /// The newest notice shown (RFC 3339): newer ones stay unread.
    until: String,
    #[serde(default)]
    lang: Option<String>,
}

#[derive(Deserialize)]
struct LogoutForm {
    csrf: String,
    #[serde(default)]
    lang: Option<String>,
}

fn lang_of(headers: &HeaderMap, asked: Option<&str>) -> Lang {
    match asked {
        Some("en") => Lang::En,
        Some("fr") => Lang::Fr,
        _ => Lang::negotiate(
            headers
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok()),
        ),
    }
}

/// Only the school's clients use the portal; anyone else gets a plain 403.
fn is_client(p: &Portal, ip: IpAddr) -> bool {
    p.store
        .load()
        .config
        .client_networks
        .iter()
        .any(|n| n.contains(&ip))
}

/// The form's token matches the cookie's (compared in constant time).
fn csrf_ok(headers: &HeaderMap, form_token: &str) -> bool {
    web::cookie(headers, CSRF_COOKIE).is_some_and(|c| web::same_token(c, form_token))
}

/// A return address worth following after login: an absolute http(s) URL only
/// (never `javascript:` or another scheme), at most 2 KiB.
fn safe_return(url: Option<&str>) -> Option<String> {
    let u = url?.trim();
    ((u.starts_with("http://") || u.starts_with("https://"))
        && u.len() <= 2048
        && !u.chars().any(|c| c.is_control()))
    .then(|| u.to_string())
}

fn tr(lang: Lang, fr: &'static str, en: &'static str) -> &'static str {
    match lang {
        Lang::Fr => fr,
        Lang::En => en,
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:28em;margin:2em auto;padding:0 1em;color:#222}\
h1{font-size:1.5em}label{display:block;margin-top:1em;font-weight:bold}input[type=text],input[type=password]\
{width:100%;box-sizing:border-box;padding:.6em;font-size:1em;border:1px solid #555;border-radius:4px}\
button{margin-top:1.2em;padding:.6em 1.2em;font-size:1em;background:#1a56db;color:#fff;border:0;border-radius:4px}\
button:focus,input:focus{outline:3px solid #f59e0b}.err{color:#b00020;font-weight:bold}.lang{float:right}";

fn page(lang: Lang, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang=(lang.tag()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="robots" content="noindex";
                title { (title) }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                p.lang {
                    @match lang {
                        Lang::Fr => a href="/portal?lang=en" lang="en" { "English" },
                        Lang::En => a href="/portal?lang=fr" lang="fr-CA" { "Français" },
                    }
                }
                (body)
            }
        }
    }
}

struct FormView<'a> {
    lang: Lang,
    token: &'a str,
    url: Option<&'a str>,
    error: Option<&'a str>,
}

fn login_page(v: &FormView<'_>) -> Markup {
    let lang = v.lang;
    let title = tr(
        lang,
        "Connexion au réseau de l'école",
        "Sign in to the school network",
    );
    page(
        lang,
        title,
        html! {
            main {
                h1 { (title) }
                p { (tr(lang,
                    "Entrez votre code d'accès et votre mot de passe pour utiliser Internet.",
                    "Enter your access code and password to use the Internet.")) }
                @if let Some(e) = v.error { p.err role="alert" { (e) } }
                form method="post" action="/portal/login" {
                    input type="hidden" name="csrf" value=(v.token);
                    input type="hidden" name="lang" value=(lang.code());
                    @if let Some(u) = v.url { input type="hidden" name="url" value=(u); }
                    label for="user" { (tr(lang, "Code d'accès", "Access code")) }
                    input #user type="text" name="user" autocomplete="username" autocapitalize="none" required autofocus;
                    label for="password" { (tr(lang, "Mot de passe", "Password")) }
                    input #password type="password" name="password" autocomplete="current-password" required;
                    button type="submit" { (tr(lang, "Se connecter", "Sign in")) }
                }
                p { small { (tr(lang,
                    "Votre navigation est associée à votre code d'accès, selon la politique de l'école.",
                    "Your browsing is tied to your access code, as the school's policy requires.")) } }
            }
        },
    )
}

fn status_page(
    lang: Lang,
    token: &str,
    user: &str,
    ends: &str,
    notices: &[(String, crate::audit::notices::Notice)],
    tz: chrono_tz::Tz,
) -> Markup {
    let title = tr(lang, "Vous êtes connecté", "You are signed in");
    page(
        lang,
        title,
        html! {
            main {
                h1 { (title) }
                p { (tr(lang, "Code d'accès : ", "Access code: ")) strong { (user) } }
                p { (tr(lang, "Fin de la session si inactive : ", "Session ends if idle at: ")) (ends) }
                @for (when, n) in notices {
                    section.notice role="status" {
                        h2 { (tr(lang, "Consultation de votre historique", "Your history was read")) }
                        p {
                            (tr(lang, "Le ", "On ")) (when) ", " strong { (n.accessed_by) }
                            (tr(lang, " a consulté votre historique de navigation pour la période du ",
                                " read your browsing history for the period from "))
                            (period_days(n, tz).0) (tr(lang, " au ", " to ")) (period_days(n, tz).1) "."
                        }
                        p { (tr(lang, "Motif : ", "Reason: ")) (n.justification) }
                    }
                }
                @if let Some(until) = notices.iter().map(|(_, n)| n.time).max() {
                    form method="post" action="/portal/notices" {
                        input type="hidden" name="csrf" value=(token);
                        input type="hidden" name="lang" value=(lang.code());
                        input type="hidden" name="until"
                            value=(until.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
                        button type="submit" { (tr(lang, "J'ai pris connaissance", "I have read this")) }
                    }
                }
                form method="post" action="/portal/logout" {
                    input type="hidden" name="csrf" value=(token);
                    input type="hidden" name="lang" value=(lang.code());
                    button type="submit" { (tr(lang, "Se déconnecter", "Sign out")) }
                }
            }
        },
    )
}

/// The first and last days a notice's read covered, in the school's time zone: the
/// period is whole local days with an exclusive end (`admin::history`), so the
/// last day is the one before the end.
fn period_days(n: &crate::audit::notices::Notice, tz: chrono_tz::Tz) -> (String, String) {
    let day = |t: chrono::DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d").to_string();
    let last = if n.to > n.from {
        n.to - chrono::Duration::nanoseconds(1)
    } else {
        n.to
    };
    (day(n.from), day(last))
}

/// The page with a fresh CSRF cookie (or the one the browser already holds).
fn with_token(status: StatusCode, token: &str, fresh: bool, body: Markup) -> Response {
    let mut resp = (status, Html(body.into_string())).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if fresh
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{CSRF_COOKIE}={token}; Path=/portal; HttpOnly; SameSite=Strict"
        ))
    {
        h.insert(header::SET_COOKIE, v);
    }
    resp
}

fn token_for(headers: &HeaderMap) -> (String, bool) {
    match web::cookie(headers, CSRF_COOKIE).filter(|t| t.len() == 32) {
        Some(t) => (t.to_string(), false),
        None => (web::random_token(), true),
    }
}

/// 403 for an address outside the school's client networks (a plain line in the
/// person's language: there is nothing for them here).
pub fn not_client(lang: Lang) -> Response {
    let mut r = (
        StatusCode::FORBIDDEN,
        format!(
            "403 — {}\n",
            crate::i18n::t(lang, crate::i18n::Msg::NotServed)
        ),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(lang.tag()) {
        r.headers_mut().insert(header::CONTENT_LANGUAGE, v);
    }
    r
}

async fn show(
    State(p): State<Arc<Portal>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<ShowQuery>,
    headers: HeaderMap,
) -> Response {
    let ip = canonical_ip(peer.ip());
    let lang = lang_of(&headers, q.lang.as_deref());
    if !is_client(&p, ip) {
        return not_client(lang);
    }
    let (token, fresh) = token_for(&headers);
    let now = Utc::now();
    if let Some(b) = p.identities.get(ip, now) {
        let tz = p.store.load().config.timezone;
        let ends = b.ends().with_timezone(&tz).format("%H:%M").to_string();
        let notices: Vec<_> = p
            .notices
            .unseen(&b.user)
            .into_iter()
            .map(|n| {
                (
                    n.time
                        .with_timezone(&tz)
                        .format("%Y-%m-%d %H:%M")
                        .to_string(),
                    n,
                )
            })
            .collect();
        return with_token(
            StatusCode::OK,
            &token,
            fresh,
            status_page(lang, &token, &b.user, &ends, &notices, tz),
        );
    }
    let url = safe_return(q.url.as_deref());
    let view = FormView {
        lang,
        token: &token,
        url: url.as_deref(),
        error: None,
    };
    with_token(StatusCode::OK, &token, fresh, login_page(&view))
}

async fn login(
    State(p): State<Arc<Portal>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let ip = canonical_ip(peer.ip());
    let lang = lang_of(&headers, f.lang.as_deref());
    if !is_client(&p, ip) {
        return not_client(lang);
    }
    let url = safe_return(f.url.as_deref());
    let (token, fresh) = token_for(&headers);
    let again = |status: StatusCode, error: &str| {
        let view = FormView {
            lang,
            token: &token,
            url: url.as_deref(),
            error: Some(error),
        };
        with_token(status, &token, fresh, login_page(&view))
    };
    if !csrf_ok(&headers, &f.csrf) {
        return again(
            StatusCode::FORBIDDEN,
            tr(
                lang,
                "Le formulaire a expiré : réessayez.",
                "The form expired: try again.",
            ),
        );
    }
    let started = std::time::Instant::now();
    let user = f.user.trim();
    let outcome = p.auth.verify(ip, user, &f.password).await;
    let snap = p.store.load();
    match outcome {
        Credentials::Valid(v) => {
            let now = Utc::now();
            let binding = Binding::new(
                v.user.clone(),
                v.groups.clone(),
                v.profile.clone(),
                IdentitySource::Portal,
                now,
                snap.config.portal.max_session,
                Some(snap.config.portal.idle_timeout),
            );
            let neighbours = tokio::task::spawn_blocking(super::neigh::read)
                .await
                .unwrap_or_default();
            p.identities.bind(ip, binding.on_device_of(ip, &neighbours));
            let id = p.identities.resolve(&snap, ip, now);
            p.audit.record(super::login_event(
                &snap,
                super::LoginDoor::Portal,
                ip,
                &v.user,
                Some(&id),
                super::LoginOutcome::Success { via: v.via },
                started,
            ));
            let to = url.unwrap_or_else(|| format!("/portal?lang={}", lang.code()));
            Redirect::to(&to).into_response()
        }
        other => {
            let (status, outcome, msg) = match other {
                Credentials::Throttled => (
                    StatusCode::TOO_MANY_REQUESTS,
                    super::LoginOutcome::Throttled,
                    crate::i18n::Msg::AuthThrottled,
                ),
                Credentials::Unavailable => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    super::LoginOutcome::Unavailable,
                    crate::i18n::Msg::AuthUnavailable,
                ),
                _ => (
                    StatusCode::UNAUTHORIZED,
                    super::LoginOutcome::Failed,
                    crate::i18n::Msg::AuthFailed,
                ),
            };
            p.audit.record(super::login_event(
                &snap,
                super::LoginDoor::Portal,
                ip,
                user,
                None,
                outcome,
                started,
            ));
            again(status, crate::i18n::t(lang, msg))
        }
    }
}

/// What the portal's small forms (sign out, notices read) check first: a client
/// address (else 403) and the form's CSRF token (else back to the portal, nothing
/// done). The address and where to go back to. (The refusal is the response the
/// handler returns at once, as in the admin app: not worth a box.)
#[allow(clippy::result_large_err)]
fn posted(
    p: &Portal,
    peer: SocketAddr,
    headers: &HeaderMap,
    csrf: &str,
    lang: Option<&str>,
) -> Result<(IpAddr, String), Response> {
    let ip = canonical_ip(peer.ip());
    let lang = lang_of(headers, lang);
    if !is_client(p, ip) {
        return Err(not_client(lang));
    }
    let back = format!("/portal?lang={}", lang.code());
    if !csrf_ok(headers, csrf) {
        return Err(Redirect::to(&back).into_response());
    }
    Ok((ip, back))
}

async fn logout(
    State(p): State<Arc<Portal>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LogoutForm>,
) -> Response {
    let (ip, back) = match posted(&p, peer, &headers, &f.csrf, f.lang.as_deref()) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Some(b) = p.identities.unbind(ip) {
        let snap = p.store.load();
        p.audit.record(super::login_event(
            &snap,
            super::LoginDoor::Portal,
            ip,
            &b.user,
            None,
            super::LoginOutcome::Logout,
            std::time::Instant::now(),
        ));
    }
    Redirect::to(&back).into_response()
}

/// The signed-in person has read the notices shown to them: they stop showing.
/// A form with its CSRF token, so only the person's own click marks them read.
async fn acknowledge(
    State(p): State<Arc<Portal>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<AckForm>,
) -> Response {
    let (ip, back) = match posted(&p, peer, &headers, &f.csrf, f.lang.as_deref()) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let (Some(b), Ok(until)) = (
        p.identities.get(ip, Utc::now()),
        chrono::DateTime::parse_from_rfc3339(f.until.trim()),
    ) {
        p.notices.acknowledge(&b.user, until.with_timezone(&Utc));
    }
    Redirect::to(&back).into_response()
}

/// RFC 8908 captive-portal API: whether this client is still captive, and where to
/// log in.
async fn api(
    State(p): State<Arc<Portal>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let ip = canonical_ip(peer.ip());
    if !is_client(&p, ip) {
        return not_client(lang_of(&headers, None));
    }
    let now = Utc::now();
    let snap = p.store.load();
    let on_portal_net = snap.config.portal.networks.iter().any(|n| n.contains(&ip));
    let body = match p.identities.get(ip, now) {
        Some(b) => serde_json::json!({
            "captive": false,
            "user-portal-url": p.url(),
            "seconds-remaining": (b.ends() - now).num_seconds().max(0),
            "can-extend-session": true,
        }),
        None => serde_json::json!({
            "captive": on_portal_net,
            "user-portal-url": p.url(),
        }),
    };
    (
        [
            (header::CONTENT_TYPE, "application/captive+json"),
            (header::CACHE_CONTROL, "private, no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_names_the_last_local_day_read() {
        use chrono::TimeZone;
        let tz = chrono_tz::America::Toronto;
        // 2026-03-01 to 2026-03-03 read in Montréal: [Mar 1 00:00, Mar 4 00:00) local.
        let local = |d: u32| {
            tz.with_ymd_and_hms(2026, 3, d, 0, 0, 0)
                .unwrap()
                .with_timezone(&Utc)
        };
        let n = crate::audit::notices::Notice {
            subject: "eleve1".into(),
            time: Utc::now(),
            accessed_by: "verif".into(),
            justification: "Plainte 2026-114".into(),
            from: local(1),
            to: local(4),
            seen: false,
        };
        assert_eq!(
            period_days(&n, tz),
            ("2026-03-01".to_string(), "2026-03-03".to_string())
        );
    }

    #[tokio::test]
    async fn outsiders_are_refused_in_their_language() {
        use http_body_util::BodyExt as _;
        for (lang, text) in [
            (Lang::Fr, "Votre réseau n'est pas desservi par le filtre"),
            (
                Lang::En,
                "Your network is not served by the school's filter",
            ),
        ] {
            let r = not_client(lang);
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
            let body = r.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body);
            assert!(body.contains(text), "{body}");
            assert!(!body.contains("forbidden"), "{body}");
        }
    }

    #[test]
    fn return_urls_are_http_only() {
        assert_eq!(
            safe_return(Some("http://example.com/a?b=1")).as_deref(),
            Some("http://example.com/a?b=1")
        );
        assert_eq!(safe_return(Some("javascript:alert(1)")), None);
        assert_eq!(safe_return(Some("//evil.example/")), None);
        assert_eq!(safe_return(Some("http://a\r\nSet-Cookie: x")), None);
        assert_eq!(safe_return(None), None);
    }

    #[test]
    fn csrf_needs_the_matching_cookie() {
        let mut h = HeaderMap::new();
        assert!(!csrf_ok(&h, "abc"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; vigie_portal_csrf=abcd"),
        );
        assert!(csrf_ok(&h, "abcd"));
        assert!(!csrf_ok(&h, "abce"));
        assert!(!csrf_ok(&h, ""));
        assert_eq!(web::random_token().len(), 32);
    }
}
