//! The page every admin screen is drawn in: language, navigation for the person's
//! roles, the logout form, the embedded stylesheet and script, and the headers
//! every page carries (no caching, a strict content-security policy, no framing).
//!
//! Wording: every message is written French (fr-CA) first and English second, side
//! by side at the call (`tr(lang, "…", "…")`), so a missing translation shows in
//! review. Page modules add themselves to [`NAV`].

use axum::extract::Query;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::{Role, Routes, session::Session};
use crate::i18n::Lang;

/// The cookie keeping a chosen language.
pub const LANG_COOKIE: &str = "vigie_lang";

/// The stylesheet and script, embedded: the appliance may have no internet.
pub const STYLE: &str = include_str!("assets/admin.css");
pub const LIVE_JS: &str = include_str!("assets/live.js");

/// French first, English second.
pub fn tr(lang: Lang, fr: &'static str, en: &'static str) -> &'static str {
    match lang {
        Lang::Fr => fr,
        Lang::En => en,
    }
}

/// One entry of the navigation: shown to the roles that may open it.
pub struct NavItem {
    pub path: &'static str,
    pub fr: &'static str,
    pub en: &'static str,
    pub roles: &'static [Role],
}

/// The navigation, in order. A page module that adds a screen adds it here.
pub const NAV: &[NavItem] = &[
    NavItem {
        path: "/admin/",
        fr: "Tableau de bord",
        en: "Dashboard",
        roles: &[Role::Director, Role::ItAdmin],
    },
    NavItem {
        path: "/admin/live",
        fr: "En direct",
        en: "Live",
        roles: &[Role::Director, Role::ItAdmin],
    },
    NavItem {
        path: "/admin/reviews",
        fr: "Demandes de déblocage",
        en: "Unblock requests",
        roles: &[Role::Director, Role::ItAdmin],
    },
    NavItem {
        path: "/admin/history",
        fr: "Historique d'une personne",
        en: "A person's history",
        roles: &[Role::Auditor, Role::ItAdmin],
    },
    NavItem {
        path: "/admin/check",
        fr: "Vérifier",
        en: "Check",
        roles: &[Role::ItAdmin, Role::Director],
    },
    NavItem {
        path: "/admin/health",
        fr: "État",
        en: "Health",
        roles: &[Role::ItAdmin],
    },
    NavItem {
        path: "/admin/config",
        fr: "Configuration",
        en: "Configuration",
        roles: &[Role::ItAdmin],
    },
    NavItem {
        path: "/admin/accesses",
        fr: "Consultations d'historique",
        en: "History accesses",
        roles: &[Role::ItAdmin],
    },
];

/// The language of a request: `?lang=`, else the kept choice, else
/// `Accept-Language` (French when nothing says).
pub fn lang_of(headers: &HeaderMap, uri: &Uri) -> Lang {
    let asked = uri.query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "lang")
            .map(|(_, v)| v)
    });
    let chosen = asked.or_else(|| cookie(headers, LANG_COOKIE));
    match chosen {
        Some(v) if v.starts_with("en") => Lang::En,
        Some(v) if v.starts_with("fr") => Lang::Fr,
        _ => Lang::negotiate(
            headers
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok()),
        ),
    }
}

pub use crate::web::{cookie, random_token, same_token};

/// A local path worth returning to after login or a language switch: starts with
/// one `/`, no scheme, no control characters.
pub fn local_path(p: Option<&str>) -> Option<String> {
    let p = p?.trim();
    (p.starts_with('/')
        && !p.starts_with("//")
        && !p.starts_with("/\\")
        && p.len() <= 2048
        && !p.chars().any(|c| c.is_control()))
    .then(|| p.to_string())
}

/// What a page is drawn for.
pub struct Chrome<'a> {
    pub lang: Lang,
    pub session: Option<&'a Session>,
    /// The path (and query) of this page, for the language switch.
    pub here: &'a str,
}

/// The whole page around `body`.
pub fn page(c: &Chrome<'_>, title: &str, body: Markup) -> Markup {
    let lang = c.lang;
    let other = match lang {
        Lang::Fr => ("en", "English", "en"),
        Lang::En => ("fr", "Français", "fr-CA"),
    };
    let switch = format!(
        "/admin/lang?to={}&back={}",
        other.0,
        crate::proxy::pages::query_escape(c.here)
    );
    html! {
        (DOCTYPE)
        html lang=(lang.tag()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="robots" content="noindex";
                title { (title) " — vigie" }
                link rel="stylesheet" href="/admin/assets/admin.css";
            }
            body {
                a.skip href="#main" { (tr(lang, "Aller au contenu", "Skip to content")) }
                header.top {
                    span.brand { "vigie" }
                    @if let Some(s) = c.session {
                        nav aria-label=(tr(lang, "Navigation principale", "Main navigation")) {
                            ul {
                                @for item in NAV.iter().filter(|i| i.roles.iter().any(|r| s.has(*r))) {
                                    li {
                                        a href=(item.path)
                                          aria-current=[(c.here.split('?').next() == Some(item.path)).then_some("page")] {
                                            (tr(lang, item.fr, item.en))
                                        }
                                    }
                                }
                            }
                        }
                        form.logout method="post" action="/admin/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            span.who { (s.user) " (" (s.role_names()) ")" }
                            button type="submit" { (tr(lang, "Se déconnecter", "Sign out")) }
                        }
                    }
                    a.lang href=(switch) lang=(other.2) { (other.1) }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page response with the headers every admin page carries.
pub fn respond(status: StatusCode, lang: Lang, body: Markup) -> Response {
    let mut resp = (status, Html(body.into_string())).into_response();
    secure_headers(resp.headers_mut());
    if let Ok(v) = HeaderValue::from_str(lang.tag()) {
        resp.headers_mut().insert(header::CONTENT_LANGUAGE, v);
    }
    resp
}

/// No caching of personal data, no scripts or styles but our own, no framing.
pub fn secure_headers(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

/// A message page (refusals, errors) with `status`.
pub fn message(c: &Chrome<'_>, status: StatusCode, title: &str, text: &str) -> Response {
    respond(
        status,
        c.lang,
        page(c, title, html! { p.err role="alert" { (text) } }),
    )
}

/// 403 for a signed-in person whose role does not open this page.
pub fn forbidden(c: &Chrome<'_>) -> Response {
    let lang = c.lang;
    message(
        c,
        StatusCode::FORBIDDEN,
        tr(lang, "Accès refusé", "Access denied"),
        tr(
            lang,
            "Votre rôle ne donne pas accès à cette page.",
            "Your role does not give access to this page.",
        ),
    )
}

/// 403 for a form sent without its (valid) CSRF token.
pub fn csrf_refused(c: &Chrome<'_>) -> Response {
    let lang = c.lang;
    message(
        c,
        StatusCode::FORBIDDEN,
        tr(lang, "Formulaire refusé", "Form refused"),
        tr(
            lang,
            "Le formulaire a expiré ou ne vient pas de cette application : rechargez la page et réessayez.",
            "The form expired or did not come from this application: reload the page and try again.",
        ),
    )
}

/// 500/503 for a store or database failure, logged with its cause.
pub fn failure(c: &Chrome<'_>, e: &super::AdminError) -> Response {
    tracing::error!("admin app: {e}");
    let lang = c.lang;
    let status = match e {
        super::AdminError::NoStore => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let text = match e {
        super::AdminError::NoStore => tr(
            lang,
            "Aucun registre d'audit n'est configuré : cette page n'a rien à montrer.",
            "No audit store is configured: this page has nothing to show.",
        ),
        _ => tr(
            lang,
            "Une erreur interne est survenue ; elle a été journalisée.",
            "An internal error occurred; it was logged.",
        ),
    };
    message(c, status, tr(lang, "Erreur", "Error"), text)
}

pub fn routes() -> Routes {
    Routes::new()
        .route("/admin/assets/admin.css", get(css))
        .route("/admin/assets/live.js", get(js))
        .route("/admin/lang", get(switch_lang))
        .route("/admin", get(|| async { Redirect::to("/admin/") }))
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", LIVE_JS)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, kind)], body).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[derive(Deserialize)]
struct LangQuery {
    to: String,
    #[serde(default)]
    back: Option<String>,
}

/// Keeps the chosen language in a cookie and goes back where the person was.
async fn switch_lang(Query(q): Query<LangQuery>) -> Response {
    let code = if q.to.starts_with("en") { "en" } else { "fr" };
    let back = local_path(q.back.as_deref()).unwrap_or_else(|| "/admin/".into());
    let mut r = Redirect::to(&back).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{LANG_COOKIE}={code}; Path=/; Max-Age=31536000; SameSite=Lax"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_only() {
        assert_eq!(
            local_path(Some("/admin/x?y=1")).as_deref(),
            Some("/admin/x?y=1")
        );
        assert_eq!(local_path(Some("//evil.example/")), None);
        assert_eq!(local_path(Some("https://evil.example/")), None);
        assert_eq!(local_path(Some("/\\evil.example")), None);
        assert_eq!(local_path(Some("/a\r\nSet-Cookie: x")), None);
    }

    #[test]
    fn tokens_compare_whole() {
        let t = random_token();
        assert_eq!(t.len(), 32);
        assert!(same_token(&t, &t.clone()));
        assert!(!same_token(&t, &t[..31]));
        assert!(!same_token("", ""));
    }

    #[test]
    fn language_from_query_cookie_then_header() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("en-US"));
        let uri: Uri = "/admin/".parse().unwrap();
        assert_eq!(lang_of(&h, &uri), Lang::En);
        h.insert(header::COOKIE, HeaderValue::from_static("vigie_lang=fr"));
        assert_eq!(lang_of(&h, &uri), Lang::Fr);
        let uri: Uri = "/admin/?lang=en".parse().unwrap();
        assert_eq!(lang_of(&h, &uri), Lang::En);
    }
}
