//! Logging in to the admin app, and who is logged in.
//!
//! A session is a random id in a cookie (`HttpOnly`, `SameSite=Strict`, `Secure`
//! over TLS or when `[admin] secure_cookies`), kept server-side with its expiry and
//! its CSRF token; roles are read from the current config at every request, so
//! removing a role takes effect at once. Passwords go to the authenticator (users
//! file, then LDAP), which also limits failed attempts per user and per address;
//! every login, failure and logout is audited.
//!
//! Handlers take a [`Session`] argument: without a valid session they never run
//! (the person is sent to the login page), and they call [`Session::require`] for
//! their roles and [`Session::check_csrf`] on every form.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, Form, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use ipnet::IpNet;
use maud::html;
use serde::Deserialize;

use super::layout::{self, Chrome, tr};
use super::{Admin, Role, Routes};
use crate::i18n::Lang;
use crate::identity::users::Credentials;
use crate::snapshot::canonical_ip;

/// The session cookie.
pub const SESSION_COOKIE: &str = "vigie_admin";
/// The login form's double-submit cookie (there is no session yet to hold a token).
const LOGIN_CSRF_COOKIE: &str = "vigie_admin_login";

/// One logged-in person, server-side.
#[derive(Debug)]
struct SessionData {
    user: String,
    groups: Vec<Arc<str>>,
    /// The users-file entry that vouched at login (`Verified::stamp`); `None`
    /// for a directory login.
    stamp: Option<u64>,
    csrf: String,
    expires: Instant,
}

/// Every open session, by id.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<SessionData>>>,
}

impl Sessions {
    fn create(
        &self,
        user: &str,
        groups: Vec<Arc<str>>,
        stamp: Option<u64>,
        ttl: std::time::Duration,
    ) -> String {
        let id = layout::random_token();
        let data = Arc::new(SessionData {
            user: user.to_string(),
            groups,
            stamp,
            csrf: layout::random_token(),
            expires: Instant::now() + ttl,
        });
        self.lock().insert(id.clone(), data);
        id
    }

    fn get(&self, id: &str) -> Option<Arc<SessionData>> {
        let mut m = self.lock();
        match m.get(id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                m.remove(id);
                None
            }
            None => None,
        }
    }

    fn remove(&self, id: &str) -> Option<Arc<SessionData>> {
        self.lock().remove(id)
    }

    /// Forgets expired sessions.
    pub fn purge(&self) {
        let now = Instant::now();
        self.lock().retain(|_, s| s.expires > now);
    }

    /// Number of open sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<SessionData>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The person behind a request, with their roles now. Extracting it is the login
/// check: a request without a valid session is sent to the login page.
#[derive(Clone, Debug)]
pub struct Session {
    pub user: String,
    /// Each role with the networks it is restricted to (empty: all).
    pub roles: Vec<(Role, Vec<IpNet>)>,
    /// The token every form of this session must carry.
    pub csrf: String,
    pub lang: Lang,
    /// The client's address (for the audit trail).
    pub ip: IpAddr,
    /// This page's path and query (for the language switch and the login return).
    pub here: String,
}

impl Session {
    pub fn has(&self, role: Role) -> bool {
        self.roles.iter().any(|(r, _)| *r == role)
    }

    /// `Err(403 page)` unless the person has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), Response> {
        if roles.iter().any(|r| self.has(*r)) {
            Ok(())
        } else {
            Err(layout::forbidden(&self.chrome()))
        }
    }

    /// `Err(403 page)` unless `token` is this session's CSRF token.
    pub fn check_csrf(&self, token: &str) -> Result<(), Response> {
        if layout::same_token(&self.csrf, token) {
            Ok(())
        } else {
            Err(layout::csrf_refused(&self.chrome()))
        }
    }

    /// The networks a director's views are limited to; `None`: every network
    /// (an IT admin, or a director without restriction).
    pub fn networks(&self) -> Option<Vec<IpNet>> {
        if self.has(Role::ItAdmin) {
            return None;
        }
        self.roles
            .iter()
            .find(|(r, _)| *r == Role::Director)
            .and_then(|(_, n)| (!n.is_empty()).then(|| n.clone()))
    }

    /// Whether a client address is in this person's networks.
    pub fn sees_ip(&self, ip: &str) -> bool {
        match self.networks() {
            None => true,
            Some(nets) => ip
                .parse::<IpAddr>()
                .map(|ip| nets.iter().any(|n| n.contains(&canonical_ip(ip))))
                .unwrap_or(false),
        }
    }

    pub fn role_names(&self) -> String {
        self.roles
            .iter()
            .map(|(r, _)| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn chrome(&self) -> Chrome<'_> {
        Chrome {
            lang: self.lang,
            session: Some(self),
            here: &self.here,
        }
    }

    /// A page of this session, with the usual headers.
    pub fn page(&self, title: &str, body: maud::Markup) -> Response {
        layout::respond(
            StatusCode::OK,
            self.lang,
            layout::page(&self.chrome(), title, body),
        )
    }
}

/// The client address of a request: `ConnectInfo` (both listeners provide it).
pub fn client_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| canonical_ip(c.0.ip()))
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

fn here(uri: &Uri) -> String {
    uri.path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| uri.path().to_string())
}

impl FromRequestParts<Arc<Admin>> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        admin: &Arc<Admin>,
    ) -> Result<Self, Self::Rejection> {
        let lang = layout::lang_of(&parts.headers, &parts.uri);
        let here = here(&parts.uri);
        let to_login = || {
            let next = if parts.method == axum::http::Method::GET {
                format!("?next={}", crate::proxy::pages::query_escape(&here))
            } else {
                String::new()
            };
            Redirect::to(&format!("/admin/login{next}")).into_response()
        };
        let Some(id) = layout::cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login());
        };
        let Some(data) = admin.sessions.get(id) else {
            return Err(to_login());
        };
        // Deleted from the users file, or a new password: the session ends with
        // the entry that opened it.
        if let Some(stamp) = data.stamp
            && admin.auth.stamp(&data.user) != Some(stamp)
        {
            admin.sessions.remove(id);
            admin.record(
                Some(&data.user),
                client_ip(parts),
                "session_ended",
                "/admin",
                "users file entry changed or removed: session ended",
            );
            return Err(to_login());
        }
        let roles = admin
            .store
            .load()
            .config
            .admin
            .roles_of(&data.user, &data.groups);
        let session = Session {
            user: data.user.clone(),
            roles,
            csrf: data.csrf.clone(),
            lang,
            ip: client_ip(parts),
            here,
        };
        if session.roles.is_empty() {
            // The config no longer gives this person any role.
            return Err(layout::forbidden(&session.chrome()));
        }
        Ok(session)
    }
}

/// A form's fields; a body that is not a form reads as empty fields, so the CSRF
/// check refuses it with 403 like any other forged form (not a bare 415/422).
pub struct Fields<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for Fields<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Default,
{
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Response> {
        Ok(Fields(
            Form::<T>::from_request(req, state)
                .await
                .map(|Form(t)| t)
                .unwrap_or_default(),
        ))
    }
}

/// Whether the request came over the HTTPS listener.
fn over_tls(parts_ext: &axum::http::Extensions) -> bool {
    parts_ext.get::<super::tls::OverTls>().is_some()
}

pub fn routes() -> Routes {
    Routes::new()
        .route("/admin/login", get(login_page).post(login))
        .route("/admin/logout", post(logout))
}

#[derive(Deserialize, Default)]
struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize, Default)]
struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize, Default)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

fn login_form(
    lang: Lang,
    here: &str,
    token: &str,
    next: Option<&str>,
    error: Option<&str>,
    user: &str,
) -> maud::Markup {
    let c = Chrome {
        lang,
        session: None,
        here,
    };
    layout::page(
        &c,
        tr(
            lang,
            "Connexion — administration",
            "Sign in — administration",
        ),
        html! {
            @if let Some(e) = error { p.err role="alert" { (e) } }
            form method="post" action="/admin/login" {
                input type="hidden" name="csrf" value=(token);
                @if let Some(n) = next { input type="hidden" name="next" value=(n); }
                label for="user" { (tr(lang, "Nom d'utilisateur", "User name")) }
                input #user type="text" name="user" value=(user) autocomplete="username"
                    autocapitalize="none" required autofocus;
                label for="password" { (tr(lang, "Mot de passe", "Password")) }
                input #password type="password" name="password" autocomplete="current-password" required;
                div { button type="submit" { (tr(lang, "Se connecter", "Sign in")) } }
            }
            p.hint { (tr(lang,
                "Réservé au personnel mandaté : chaque action est consignée au registre d'audit.",
                "For mandated staff only: every action is recorded in the audit trail.")) }
        },
    )
}

/// The login page's CSRF token: the browser's cookie, or a fresh one to set.
fn login_token(headers: &HeaderMap) -> (String, bool) {
    match layout::cookie(headers, LOGIN_CSRF_COOKIE).filter(|t| t.len() == 32) {
        Some(t) => (t.to_string(), false),
        None => (layout::random_token(), true),
    }
}

fn with_login_cookie(mut r: Response, token: &str, fresh: bool, secure: bool) -> Response {
    if fresh
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{LOGIN_CSRF_COOKIE}={token}; Path=/admin/login; HttpOnly; SameSite=Strict{}",
            if secure { "; Secure" } else { "" }
        ))
    {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn login_page(
    State(admin): State<Arc<Admin>>,
    Query(q): Query<LoginQuery>,
    parts: Parts,
) -> Response {
    let lang = layout::lang_of(&parts.headers, &parts.uri);
    let (token, fresh) = login_token(&parts.headers);
    let next = layout::local_path(q.next.as_deref());
    let secure = over_tls(&parts.extensions) || admin.store.load().config.admin.secure_cookies;
    let r = layout::respond(
        StatusCode::OK,
        lang,
        login_form(lang, &here(&parts.uri), &token, next.as_deref(), None, ""),
    );
    with_login_cookie(r, &token, fresh, secure)
}

async fn login(
    State(admin): State<Arc<Admin>>,
    parts: Parts,
    Fields(f): Fields<LoginForm>,
) -> Response {
    let lang = layout::lang_of(&parts.headers, &parts.uri);
    let ip = client_ip(&parts);
    let (token, fresh) = login_token(&parts.headers);
    let snap = admin.store.load();
    let secure = over_tls(&parts.extensions) || snap.config.admin.secure_cookies;
    let next = layout::local_path(f.next.as_deref());
    let user = f.user.trim().to_string();
    let again = |status: StatusCode, error: &str| {
        let r = layout::respond(
            status,
            lang,
            login_form(
                lang,
                "/admin/login",
                &token,
                next.as_deref(),
                Some(error),
                &user,
            ),
        );
        with_login_cookie(r, &token, fresh, secure)
    };
    let cookie_ok = layout::cookie(&parts.headers, LOGIN_CSRF_COOKIE)
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
    match admin.auth.verify(ip, &user, &f.password).await {
        Credentials::Valid(v) => {
            let roles = snap.config.admin.roles_of(&v.user, &v.groups);
            if roles.is_empty() {
                admin.record(
                    Some(&v.user),
                    ip,
                    "login_refused",
                    "/admin",
                    "valid password, no admin role",
                );
                return again(
                    StatusCode::FORBIDDEN,
                    tr(
                        lang,
                        "Aucun rôle d'administration ne vous est attribué.",
                        "You have no administration role.",
                    ),
                );
            }
            let id = admin.sessions.create(
                &v.user,
                v.groups.clone(),
                v.stamp,
                snap.config.admin.session,
            );
            let names: Vec<&str> = roles.iter().map(|(r, _)| r.as_str()).collect();
            admin.record(
                Some(&v.user),
                ip,
                "login",
                "/admin",
                format!("signed in ({}) as {}", v.via, names.join(", ")),
            );
            let home = next.unwrap_or_else(|| home_of(&roles).to_string());
            let mut r = Redirect::to(&home).into_response();
            if let Ok(c) = HeaderValue::from_str(&format!(
                "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{}",
                if secure { "; Secure" } else { "" }
            )) {
                r.headers_mut().insert(header::SET_COOKIE, c);
            }
            r
        }
        other => {
            let (status, action, msg) = match other {
                Credentials::Throttled => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "login_throttled",
                    crate::i18n::Msg::AuthThrottled,
                ),
                Credentials::Unavailable => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "login_unavailable",
                    crate::i18n::Msg::AuthUnavailable,
                ),
                _ => (
                    StatusCode::UNAUTHORIZED,
                    "login_failed",
                    crate::i18n::Msg::AuthFailed,
                ),
            };
            admin.record(Some(&user), ip, action, "/admin", "sign-in refused");
            again(status, crate::i18n::t(lang, msg))
        }
    }
}

/// Where a person lands after login: the first page their roles open.
fn home_of(roles: &[(Role, Vec<IpNet>)]) -> &'static str {
    if roles
        .iter()
        .any(|(r, _)| matches!(r, Role::Director | Role::ItAdmin))
    {
        "/admin/"
    } else {
        "/admin/history"
    }
}

async fn logout(
    State(admin): State<Arc<Admin>>,
    s: Session,
    parts: Parts,
    Fields(f): Fields<LogoutForm>,
) -> Response {
    if let Err(r) = s.check_csrf(&f.csrf) {
        return r;
    }
    if let Some(id) = layout::cookie(&parts.headers, SESSION_COOKIE) {
        admin.sessions.remove(id);
    }
    admin.record(Some(&s.user), s.ip, "logout", "/admin", "signed out");
    let mut r = Redirect::to("/admin/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("vigie_admin=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_are_forgotten() {
        let s = Sessions::default();
        let id = s.create("dir", Vec::new(), None, std::time::Duration::from_secs(60));
        assert_eq!(s.get(&id).unwrap().user, "dir");
        assert!(s.get("nope").is_none());
        let gone = s.create("x", Vec::new(), None, std::time::Duration::ZERO);
        assert!(s.get(&gone).is_none());
        s.purge();
        assert_eq!(s.len(), 1);
        assert!(s.remove(&id).is_some());
        assert!(s.is_empty());
    }

    #[tokio::test]
    async fn a_session_ends_when_its_users_file_entry_changes_or_goes() {
        use crate::identity::users::{Credentials, delete_user, set_password};
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users");
        for u in ["dir", "dir2"] {
            set_password(&users, u, "pw", true, None).unwrap();
        }
        let (admin, mut rx) = super::super::testing::admin(
            "default_profile = \"eleves\"\n[profiles.eleves]\n\
             [[admin.roles]]\nuser = \"dir\"\nrole = \"director\"\n\
             [[admin.roles]]\nuser = \"dir2\"\nrole = \"director\"\n",
            Some(users.clone()),
        );
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let open = |user: &'static str| {
            let admin = admin.clone();
            async move {
                let Credentials::Valid(v) = admin.auth.verify(ip, user, "pw").await else {
                    panic!("{user} cannot log in");
                };
                admin.sessions.create(
                    &v.user,
                    v.groups.clone(),
                    v.stamp,
                    std::time::Duration::from_secs(600),
                )
            }
        };
        let request = |id: &str| {
            axum::http::Request::builder()
                .uri("/admin/")
                .header(header::COOKIE, format!("{SESSION_COOKIE}={id}"))
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let signed_in = |id: String| {
            let admin = admin.clone();
            async move {
                Session::from_request_parts(&mut request(&id), &admin)
                    .await
                    .is_ok()
            }
        };
        let (a, b) = (open("dir").await, open("dir2").await);
        assert!(signed_in(a.clone()).await && signed_in(b.clone()).await);
        set_password(&users, "dir", "nouveau", false, None).unwrap();
        assert!(
            !signed_in(a.clone()).await,
            "a new password ends the session"
        );
        assert!(signed_in(b.clone()).await, "others stay signed in");
        delete_user(&users, "dir2").unwrap();
        assert!(!signed_in(b.clone()).await, "a deleted user is signed out");
        assert!(admin.sessions.is_empty(), "both forgotten");
        let ended = super::super::testing::actions(&mut rx);
        assert_eq!(ended.iter().filter(|a| **a == "session_ended").count(), 2);
    }
}
