//! One person's history, for a mandated auditor (or an IT admin): only with a
//! written justification, which the audit store checks and records with the read
//! itself (who, whose, when, why, which period) — so no path can read without
//! leaving that trace. With `[admin] history_second_approver`, the read is first a
//! request that another auditor or IT admin approves. The view shows time, host,
//! URL, verdict and category, and exports as CSV (an access too, recorded the same
//! way). IT admins see the list of every access.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use maud::html;
use serde::Deserialize;

use super::layout::{self, tr};
use super::session::{Fields, Session};
use super::{Admin, AdminError, Role, Routes};
use crate::audit::store::{HistoryAccess, MIN_JUSTIFICATION, Period, StoreError, StoredEvent};
use crate::i18n::Lang;

/// Most events one view or export shows.
const MAX_EVENTS: usize = 5_000;
/// Events per page of the history view (each page read is recorded like the first).
const PAGE: usize = 500;
/// Who may read a person's history.
const READERS: &[Role] = &[Role::Auditor, Role::ItAdmin];

pub fn routes() -> Routes {
    Routes::new()
        .route("/admin/history", get(form_page))
        .route("/admin/history/view", post(view))
        .route("/admin/history/export", post(export))
        .route("/admin/history/requests", post(request))
        .route(
            "/admin/history/requests/{id}/approve",
            post(approve_request),
        )
        .route("/admin/accesses", get(accesses))
}

#[derive(Deserialize, Default, Clone)]
struct HistoryForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    justification: String,
    /// An approved history request (second-approver mode).
    #[serde(default)]
    request: Option<i64>,
    /// Paging: events older than this event id (the last one of the page before).
    #[serde(default)]
    before: Option<i64>,
}

fn local_day(tz: Tz, d: NaiveDate) -> Option<DateTime<Utc>> {
    tz.from_local_datetime(&d.and_hms_opt(0, 0, 0)?)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

/// `[from, to]` as whole local days.
fn period_of(tz: Tz, from: &str, to: &str) -> Option<Period> {
    let f = NaiveDate::parse_from_str(from.trim(), "%Y-%m-%d").ok()?;
    let t = NaiveDate::parse_from_str(to.trim(), "%Y-%m-%d").ok()?;
    let from = local_day(tz, f)?;
    let to = local_day(tz, t.succ_opt()?)?;
    (to > from).then_some(Period { from, to })
}

fn day(tz: Tz, t: DateTime<Utc>) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d").to_string()
}

async fn form_page(State(admin): State<Arc<Admin>>, s: Session) -> Response {
    if let Err(r) = s.require(READERS) {
        return r;
    }
    let lang = s.lang;
    let snap = admin.store.load();
    let tz = snap.config.timezone;
    let second = snap.config.admin.history_second_approver;
    let today = day(tz, Utc::now());
    let week_ago = day(tz, Utc::now() - chrono::Duration::days(7));
    let requests = if second {
        match admin.with_db(|db| db.history_requests(100)).await {
            Ok(r) => r,
            Err(e) => return layout::failure(&s.chrome(), &e),
        }
    } else {
        Vec::new()
    };
    let action = if second {
        "/admin/history/requests"
    } else {
        "/admin/history/view"
    };
    s.page(
        tr(lang, "Historique d'une personne", "A person's history"),
        html! {
            p { (tr(lang,
                "La consultation de l'historique d'une personne exige un motif raisonnable, écrit. Elle est consignée (qui, quand, de qui, pourquoi, quelle période) et visible par la direction informatique.",
                "Reading a person's history requires a reasonable ground, in writing. It is recorded (who, when, whose, why, which period) and visible to IT management.")) }
            @if second {
                p.hint { (tr(lang,
                    "Une deuxième personne (vérificateur ou administrateur TI) doit approuver la demande avant la consultation.",
                    "A second person (auditor or IT admin) must approve the request before the history can be read.")) }
            }
            form method="post" action=(action) {
                input type="hidden" name="csrf" value=(s.csrf);
                label for="user" { (tr(lang, "Code d'accès de la personne", "The person's access code")) }
                input #user type="text" name="user" required autocapitalize="none";
                div.filters {
                    div {
                        label for="from" { (tr(lang, "Du", "From")) }
                        input #from type="date" name="from" value=(week_ago) required;
                    }
                    div {
                        label for="to" { (tr(lang, "Au", "To")) }
                        input #to type="date" name="to" value=(today) required;
                    }
                }
                label for="justification" { (tr(lang, "Motif (obligatoire)", "Justification (required)")) }
                textarea #justification name="justification" required minlength=(MIN_JUSTIFICATION) maxlength="2000"
                    aria-describedby="justification-hint" {}
                p.hint #justification-hint {
                    (match lang {
                        Lang::Fr => format!("Au moins {MIN_JUSTIFICATION} caractères : numéro de plainte, mandat, motif précis."),
                        Lang::En => format!("At least {MIN_JUSTIFICATION} characters: complaint number, mandate, precise ground."),
                    })
                }
                div { button type="submit" {
                    @if second { (tr(lang, "Demander l'approbation", "Ask for approval")) }
                    @else { (tr(lang, "Consulter l'historique", "Open the history")) }
                } }
            }
            @if second {
                h2 { (tr(lang, "Demandes", "Requests")) }
                div.table-wrap { table {
                    thead { tr {
                        th scope="col" { "#" }
                        th scope="col" { (tr(lang, "Demandée par", "Requested by")) }
                        th scope="col" { (tr(lang, "Personne", "Person")) }
                        th scope="col" { (tr(lang, "Période", "Period")) }
                        th scope="col" { (tr(lang, "Motif", "Justification")) }
                        th scope="col" { (tr(lang, "État", "Status")) }
                        th scope="col" { (tr(lang, "Action", "Action")) }
                    } }
                    tbody { @for r in &requests { tr {
                        td { (r.id) }
                        td { (r.requested_by) }
                        td { (r.subject) }
                        td { (day(tz, r.from)) " → " (day(tz, r.to - chrono::Duration::seconds(1))) }
                        td { (r.justification) }
                        td {
                            @if r.status == "approved" {
                                span.status-approved { (tr(lang, "Approuvée par ", "Approved by ")) (r.approved_by.as_deref().unwrap_or("")) }
                            } @else { span.status-pending { (tr(lang, "En attente", "Pending")) } }
                        }
                        td {
                            @if r.status == "approved" && r.requested_by == s.user {
                                form method="post" action="/admin/history/view" {
                                    input type="hidden" name="csrf" value=(s.csrf);
                                    input type="hidden" name="request" value=(r.id);
                                    button type="submit" { (tr(lang, "Consulter", "Open")) }
                                }
                            } @else if r.status == "pending" && r.requested_by != s.user {
                                form method="post" action=(format!("/admin/history/requests/{}/approve", r.id)) {
                                    input type="hidden" name="csrf" value=(s.csrf);
                                    button type="submit" { (tr(lang, "Approuver", "Approve")) }
                                }
                            }
                        }
                    } } }
                } }
            }
        },
    )
}

/// What one read is: whose, which period, why (from the form, or from the
/// approved request in second-approver mode).
struct Read {
    subject: String,
    period: Period,
    justification: String,
}

/// The read the form asks for, once the session may read histories and the form's
/// CSRF token is its own; otherwise the refusal to send back.
async fn read_of(admin: &Arc<Admin>, s: &Session, f: &HistoryForm) -> Result<Read, Response> {
    s.require(READERS)?;
    s.check_csrf(&f.csrf)?;
    let lang = s.lang;
    let snap = admin.store.load();
    let refused = |text: String| {
        layout::message(
            &s.chrome(),
            StatusCode::BAD_REQUEST,
            tr(lang, "Consultation refusée", "Access refused"),
            &text,
        )
    };
    if snap.config.admin.history_second_approver {
        let Some(id) = f.request else {
            return Err(refused(
                tr(
                    lang,
                    "Une deuxième approbation est exigée : faites d'abord une demande.",
                    "A second approval is required: make a request first.",
                )
                .to_string(),
            ));
        };
        let r = admin
            .with_db(move |db| db.history_request(id))
            .await
            .map_err(|e| layout::failure(&s.chrome(), &e))?;
        return match r {
            Some(r) if r.status == "approved" && r.requested_by == s.user => Ok(Read {
                subject: r.subject,
                period: Period {
                    from: r.from,
                    to: r.to,
                },
                justification: r.justification,
            }),
            _ => Err(refused(
                tr(
                    lang,
                    "Cette demande n'est pas approuvée, ou n'est pas la vôtre.",
                    "This request is not approved, or is not yours.",
                )
                .to_string(),
            )),
        };
    }
    let subject = f.user.trim().to_string();
    if subject.is_empty() {
        return Err(refused(
            tr(lang, "Indiquez la personne.", "Say whose history.").to_string(),
        ));
    }
    let Some(period) = period_of(snap.config.timezone, &f.from, &f.to) else {
        return Err(refused(
            tr(lang, "Période invalide.", "Invalid period.").to_string(),
        ));
    };
    Ok(Read {
        subject,
        period,
        justification: f.justification.trim().to_string(),
    })
}

/// Reads the history; the store refuses without a justification and records the
/// access in the same transaction.
async fn fetch(
    admin: &Arc<Admin>,
    s: &Session,
    read: &Read,
    before: Option<i64>,
    limit: usize,
) -> Result<Vec<StoredEvent>, AdminError> {
    let (by, why, subject, period) = (
        s.user.clone(),
        read.justification.clone(),
        read.subject.clone(),
        read.period,
    );
    let events = admin
        .with_events(move |st| {
            st.user_history(
                &HistoryAccess {
                    accessed_by: &by,
                    justification: &why,
                },
                Some(&subject),
                period,
                before,
                limit,
            )
        })
        .await?;
    // Every recorded read is also one the person may be told of.
    notify(admin, s, read);
    Ok(events)
}

fn refusal(s: &Session, e: &AdminError) -> Response {
    let lang = s.lang;
    match e {
        AdminError::Store(StoreError::JustificationRequired { min }) => layout::message(
            &s.chrome(),
            StatusCode::BAD_REQUEST,
            tr(lang, "Consultation refusée", "Access refused"),
            &match lang {
                Lang::Fr => format!(
                    "Un motif écrit d'au moins {min} caractères est obligatoire pour consulter l'historique d'une personne."
                ),
                Lang::En => format!(
                    "A written justification of at least {min} characters is required to read a person's history."
                ),
            },
        ),
        other => layout::failure(&s.chrome(), other),
    }
}

/// Leaves the person a notice of this read, where the policy says they are told.
fn notify(admin: &Admin, s: &Session, read: &Read) {
    if admin.store.load().config.admin.notify_subject {
        admin.notices.add(crate::audit::notices::Notice {
            subject: read.subject.clone(),
            time: chrono::Utc::now(),
            accessed_by: s.user.clone(),
            justification: read.justification.clone(),
            from: read.period.from,
            to: read.period.to,
            seen: false,
        });
    }
}

async fn view(
    State(admin): State<Arc<Admin>>,
    s: Session,
    Fields(f): Fields<HistoryForm>,
) -> Response {
    let read = match read_of(&admin, &s, &f).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let events = match fetch(&admin, &s, &read, f.before, PAGE).await {
        Ok(e) => e,
        Err(e) => return refusal(&s, &e),
    };
    let tz = admin.store.load().config.timezone;
    admin.record(
        Some(&s.user),
        s.ip,
        "history_open",
        read.subject.clone(),
        format!(
            "history of {} from {} to {} read ({} events): {}",
            read.subject,
            read.period.from.to_rfc3339(),
            read.period.to.to_rfc3339(),
            events.len(),
            read.justification
        ),
    );
    let lang = s.lang;
    let title = match lang {
        Lang::Fr => format!("Historique de {}", read.subject),
        Lang::En => format!("History of {}", read.subject),
    };
    s.page(
        &title,
        html! {
            p.hint {
                (day(tz, read.period.from)) " → " (day(tz, read.period.to - chrono::Duration::seconds(1)))
                " — " (tr(lang, "motif : ", "justification: ")) (read.justification)
            }
            p.ok #access-recorded role="status" { (tr(lang,
                "Cette consultation a été consignée au registre d'audit.",
                "This access was recorded in the audit trail.")) }
            form method="post" action="/admin/history/export" {
                input type="hidden" name="csrf" value=(s.csrf);
                @if let Some(id) = f.request { input type="hidden" name="request" value=(id); }
                input type="hidden" name="user" value=(read.subject);
                input type="hidden" name="from" value=(day(tz, read.period.from));
                input type="hidden" name="to" value=(day(tz, read.period.to - chrono::Duration::seconds(1)));
                input type="hidden" name="justification" value=(read.justification);
                button.secondary type="submit" { (tr(lang, "Exporter (CSV)", "Export (CSV)")) }
            }
            p { (events.len()) " " (tr(lang, "événements", "events")) }
            div.table-wrap { table #history {
                thead { tr {
                    th scope="col" { (tr(lang, "Heure", "Time")) }
                    th scope="col" { (tr(lang, "Hôte", "Host")) }
                    th scope="col" { "URL" }
                    th scope="col" { (tr(lang, "Décision", "Verdict")) }
                    th scope="col" { (tr(lang, "Catégorie", "Category")) }
                    th scope="col" { (tr(lang, "Service", "Service")) }
                } }
                tbody { @for e in &events { tr {
                    td { (e.time.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S")) }
                    td.url { (e.host) }
                    td.url { (url_of(e)) }
                    td { (verdict_label(lang, &e.verdict)) }
                    td { (e.category.as_deref().unwrap_or("")) }
                    td { (service_label(lang, &e.service)) }
                } } }
            } }
            @if events.len() == PAGE {
                @if let Some(last) = events.last() {
                    form method="post" action="/admin/history/view" {
                        input type="hidden" name="csrf" value=(s.csrf);
                        @if let Some(id) = f.request { input type="hidden" name="request" value=(id); }
                        input type="hidden" name="user" value=(read.subject);
                        input type="hidden" name="from" value=(day(tz, read.period.from));
                        input type="hidden" name="to" value=(day(tz, read.period.to - chrono::Duration::seconds(1)));
                        input type="hidden" name="justification" value=(read.justification);
                        input type="hidden" name="before" value=(last.id);
                        button.secondary #older type="submit" { (tr(lang, "Événements plus anciens", "Older events")) }
                    }
                }
            }
        },
    )
}

/// A stored verdict as the reader says it (the CSV export keeps the stored word).
fn verdict_label(lang: Lang, verdict: &str) -> String {
    let (fr, en) = match verdict {
        "allow" => ("permis", "allowed"),
        "block" => ("bloqué", "blocked"),
        "safe_search" => ("recherche sécurisée", "safe search"),
        "login" => ("connexion", "sign-in"),
        "login_failed" => ("connexion refusée", "sign-in refused"),
        "login_throttled" => (
            "connexion suspendue (trop d'essais)",
            "sign-in held (too many attempts)",
        ),
        "login_unavailable" => (
            "connexion non vérifiée (annuaire muet)",
            "sign-in not checked (directory down)",
        ),
        "logout" => ("déconnexion", "sign-out"),
        "review_request" => ("demande de déblocage", "unblock request"),
        other => return other.to_string(),
    };
    tr(lang, fr, en).to_string()
}

/// A stored service name as the reader says it.
fn service_label(lang: Lang, service: &str) -> String {
    let (fr, en) = match service {
        "dns" => ("DNS", "DNS"),
        "proxy" => ("mandataire web", "web proxy"),
        "auth" => ("identification", "sign-in"),
        "admin" => ("administration", "administration"),
        other => return other.to_string(),
    };
    tr(lang, fr, en).to_string()
}

/// The URL where it is known (plain HTTP through the proxy); empty otherwise.
fn url_of(e: &StoredEvent) -> &str {
    if e.service == "proxy" && e.target.contains("://") {
        &e.target
    } else {
        ""
    }
}

fn csv_field(s: &str) -> String {
    // A leading = + - @ would be a formula in a spreadsheet: quote it as text.
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

async fn export(
    State(admin): State<Arc<Admin>>,
    s: Session,
    Fields(f): Fields<HistoryForm>,
) -> Response {
    let read = match read_of(&admin, &s, &f).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let events = match fetch(&admin, &s, &read, None, MAX_EVENTS).await {
        Ok(e) => e,
        Err(e) => return refusal(&s, &e),
    };
    admin.record(
        Some(&s.user),
        s.ip,
        "history_export",
        read.subject.clone(),
        format!(
            "history of {} from {} to {} exported as CSV ({} events): {}",
            read.subject,
            read.period.from.to_rfc3339(),
            read.period.to.to_rfc3339(),
            events.len(),
            read.justification
        ),
    );
    let mut out =
        String::from("time,service,client_ip,user,profile,host,url,verdict,category,rule\r\n");
    for e in &events {
        let row = [
            e.time.to_rfc3339(),
            e.service.clone(),
            e.client_ip.clone(),
            e.user.clone().unwrap_or_default(),
            e.profile.clone(),
            e.host.clone(),
            url_of(e).to_string(),
            e.verdict.clone(),
            e.category.clone().unwrap_or_default(),
            e.rule.clone(),
        ];
        out.push_str(
            &row.iter()
                .map(|v| csv_field(v))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push_str("\r\n");
    }
    let name: String = read
        .subject
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let mut r = ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response();
    layout::secure_headers(r.headers_mut());
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"historique-{name}.csv\""))
    {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

async fn request(
    State(admin): State<Arc<Admin>>,
    s: Session,
    Fields(f): Fields<HistoryForm>,
) -> Response {
    if let Err(r) = s.require(READERS) {
        return r;
    }
    if let Err(r) = s.check_csrf(&f.csrf) {
        return r;
    }
    let lang = s.lang;
    let snap = admin.store.load();
    let subject = f.user.trim().to_string();
    let justification = f.justification.trim().to_string();
    let refused = |text: String| {
        layout::message(
            &s.chrome(),
            StatusCode::BAD_REQUEST,
            tr(lang, "Demande refusée", "Request refused"),
            &text,
        )
    };
    if justification.chars().count() < MIN_JUSTIFICATION {
        return refusal(
            &s,
            &AdminError::Store(StoreError::JustificationRequired {
                min: MIN_JUSTIFICATION,
            }),
        );
    }
    let Some(period) = period_of(snap.config.timezone, &f.from, &f.to) else {
        return refused(tr(lang, "Période invalide.", "Invalid period.").to_string());
    };
    if subject.is_empty() {
        return refused(tr(lang, "Indiquez la personne.", "Say whose history.").to_string());
    }
    let (by, subj, why) = (s.user.clone(), subject.clone(), justification.clone());
    let id = match admin
        .with_db(move |db| db.add_history_request(&by, &subj, period.from, period.to, &why))
        .await
    {
        Ok(id) => id,
        Err(e) => return layout::failure(&s.chrome(), &e),
    };
    admin.record(
        Some(&s.user),
        s.ip,
        "history_request",
        subject,
        format!("history request #{id}: none → pending ({justification})"),
    );
    Redirect::to("/admin/history").into_response()
}

#[derive(Deserialize, Default)]
struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

async fn approve_request(
    State(admin): State<Arc<Admin>>,
    s: Session,
    Path(id): Path<i64>,
    Fields(f): Fields<CsrfOnly>,
) -> Response {
    if let Err(r) = s.require(READERS) {
        return r;
    }
    if let Err(r) = s.check_csrf(&f.csrf) {
        return r;
    }
    let by = s.user.clone();
    let done = match admin
        .with_db(move |db| db.approve_history_request(id, &by))
        .await
    {
        Ok(d) => d,
        Err(e) => return layout::failure(&s.chrome(), &e),
    };
    let lang = s.lang;
    if !done {
        return layout::message(
            &s.chrome(),
            StatusCode::FORBIDDEN,
            tr(lang, "Approbation refusée", "Approval refused"),
            tr(
                lang,
                "Une demande n'est approuvée qu'une fois, et jamais par la personne qui l'a faite.",
                "A request is approved once, and never by the person who made it.",
            ),
        );
    }
    admin.record(
        Some(&s.user),
        s.ip,
        "history_approve",
        format!("history request #{id}"),
        format!("history request #{id}: pending → approved"),
    );
    Redirect::to("/admin/history").into_response()
}

async fn accesses(State(admin): State<Arc<Admin>>, s: Session) -> Response {
    if let Err(r) = s.require(&[Role::ItAdmin]) {
        return r;
    }
    let lang = s.lang;
    let list = match admin.with_events(|st| st.history_accesses(500)).await {
        Ok(l) => l,
        Err(e) => return layout::failure(&s.chrome(), &e),
    };
    let tz = admin.store.load().config.timezone;
    s.page(
        tr(lang, "Consultations d'historique", "History accesses"),
        html! {
            p { (tr(lang,
                "Chaque lecture de l'historique d'une personne (et chaque exportation), la plus récente d'abord.",
                "Every read of a person's history (and every export), newest first.")) }
            div.table-wrap { table #accesses {
                thead { tr {
                    th scope="col" { (tr(lang, "Quand", "When")) }
                    th scope="col" { (tr(lang, "Qui", "Who")) }
                    th scope="col" { (tr(lang, "De qui", "Whose")) }
                    th scope="col" { (tr(lang, "Période", "Period")) }
                    th scope="col" { (tr(lang, "Motif", "Justification")) }
                } }
                tbody { @for a in &list { tr {
                    td { (a.time.with_timezone(&tz).format("%Y-%m-%d %H:%M")) }
                    td { (a.accessed_by) }
                    td { (if a.subject == "*" { tr(lang, "(tout le monde)", "(everyone)") } else { a.subject.as_str() }) }
                    td { (day(tz, a.from)) " → " (day(tz, a.to - chrono::Duration::seconds(1))) }
                    td { (a.justification) }
                } } }
            } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_whole_local_days() {
        let tz = chrono_tz::America::Toronto;
        let p = period_of(tz, "2026-11-20", "2026-11-22").unwrap();
        assert_eq!(p.to - p.from, chrono::Duration::days(3));
        assert!(period_of(tz, "2026-11-22", "2026-11-20").is_none());
        assert!(period_of(tz, "hier", "2026-11-20").is_none());
    }

    #[test]
    fn verdicts_and_services_are_worded_for_the_reader() {
        assert_eq!(verdict_label(Lang::Fr, "block"), "bloqué");
        assert_eq!(verdict_label(Lang::En, "safe_search"), "safe search");
        assert_eq!(verdict_label(Lang::Fr, "allow"), "permis");
        assert_eq!(verdict_label(Lang::Fr, "nouveau_mot"), "nouveau_mot");
        assert_eq!(service_label(Lang::Fr, "proxy"), "mandataire web");
        assert_eq!(service_label(Lang::En, "auth"), "sign-in");
    }

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(csv_field("plain"), "plain");
    }
}
