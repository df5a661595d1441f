//! `vigie check` in the browser: an address, a profile (or a client address, or a
//! user of the identity table) and a time → the verdict and its explain trace, as
//! the running filter would decide now. Reads only; nothing is recorded.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use chrono::Utc;
use maud::html;
use serde::Deserialize;

use super::layout::tr;
use super::session::Session;
use super::{Admin, Role, Routes};
use crate::identity::{Identity, IdentitySource};
use crate::policy::{self, CheckTarget, Verdict};

pub fn routes() -> Routes {
    Routes::new().route("/admin/check", get(check))
}

#[derive(Deserialize, Default)]
struct CheckQuery {
    #[serde(default)]
    target: String,
    #[serde(default)]
    profile: String,
    /// A client address: its identity as the filter sees it now.
    #[serde(default)]
    ip: String,
    #[serde(default)]
    at: String,
}

async fn check(
    State(admin): State<Arc<Admin>>,
    s: Session,
    Query(q): Query<CheckQuery>,
) -> Response {
    if let Err(r) = s.require(&[Role::ItAdmin, Role::Director]) {
        return r;
    }
    let lang = s.lang;
    let snap = admin.store.load();
    let tz = snap.config.timezone;
    let at = if q.at.trim().is_empty() {
        Utc::now()
    } else {
        super::editor::parse_at(&q.at, tz)
    };
    let mut problem = None;
    let identity = if !q.profile.is_empty() {
        match snap.config.profile_id(&q.profile) {
            Some(id) => Some(Identity::profile(id, IdentitySource::Operator)),
            None => {
                problem = Some(format!(
                    "{} \"{}\"",
                    tr(lang, "Profil inconnu", "Unknown profile"),
                    q.profile
                ));
                None
            }
        }
    } else if !q.ip.trim().is_empty() {
        match q.ip.trim().parse::<std::net::IpAddr>() {
            // Who is behind an address is only shown within the person's networks.
            Ok(ip) if !s.sees_ip(&ip.to_string()) => {
                return super::layout::message(
                    &s.chrome(),
                    axum::http::StatusCode::FORBIDDEN,
                    tr(lang, "Accès refusé", "Access denied"),
                    tr(
                        lang,
                        "Cette adresse n'est pas dans vos réseaux.",
                        "This address is not in your networks.",
                    ),
                );
            }
            Ok(ip) => Some(admin.identities.resolve(&snap, ip, Utc::now())),
            Err(_) => {
                problem = Some(format!(
                    "{} \"{}\"",
                    tr(lang, "Adresse IP invalide", "Invalid IP address"),
                    q.ip
                ));
                None
            }
        }
    } else {
        Some(Identity::profile(
            snap.config.default_profile,
            IdentitySource::Default,
        ))
    };
    let result = match (q.target.trim().is_empty(), identity) {
        (false, Some(id)) => {
            let target = CheckTarget::parse(&q.target);
            let request = target.request();
            let d = policy::decide(&snap, &request, &id, at);
            let verdict = match d.verdict {
                Verdict::Allow => tr(lang, "PERMIS", "ALLOWED").to_string(),
                Verdict::Block => format!(
                    "{} ({})",
                    tr(lang, "BLOQUÉ", "BLOCKED"),
                    d.category_name(&snap)
                ),
                Verdict::SafeSearch { target } => format!(
                    "{} → {target}",
                    tr(lang, "RECHERCHE SÉCURISÉE", "SAFE SEARCH")
                ),
            };
            Some((verdict, d.explain(&snap, &request, &id, at)))
        }
        _ => None,
    };
    let body = html! {
        form method="get" action="/admin/check" {
            label for="target" { (tr(lang, "Adresse à vérifier (nom, URL ou IP)", "Address to check (name, URL or IP)")) }
            input #target type="text" name="target" value=(q.target) required;
            label for="profile" { (tr(lang, "Profil", "Profile")) }
            select #profile name="profile" {
                option value="" { (tr(lang, "— selon l'adresse du client —", "— from the client's address —")) }
                @for p in &snap.config.profiles {
                    option value=(p.name) selected[p.name == q.profile] { (p.name) }
                }
            }
            label for="ip" { (tr(lang, "ou adresse du client (sa personne et son profil actuels)", "or client address (its current person and profile)")) }
            input #ip type="text" name="ip" value=(q.ip);
            label for="at" { (tr(lang, "Moment (AAAA-MM-JJTHH:MM, heure locale ; vide : maintenant)", "Time (YYYY-MM-DDTHH:MM, local; empty: now)")) }
            input #at type="text" name="at" value=(q.at);
            button type="submit" { (tr(lang, "Vérifier", "Check")) }
        }
        @if let Some(p) = problem { p.error role="alert" { (p) } }
        @if let Some((verdict, trace)) = result {
            h2 #verdict { (q.target.trim()) " : " (verdict) }
            p { (at.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z")) }
            ol.trace { @for line in trace { li { code { (line) } } } }
        }
    };
    s.page(tr(lang, "Vérifier une adresse", "Check an address"), body)
}
