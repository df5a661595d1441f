//! The health page for IT staff: services up, the snapshot in force (version, list
//! sources with their sizes and bad lines), the last reloads (accepted or rejected,
//! with the validator's errors), and the process's key counters.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use maud::html;

use super::layout::tr;
use super::session::Session;
use super::{Admin, Role, Routes};

pub fn routes() -> Routes {
    Routes::new().route("/admin/health", get(health))
}

/// Every `vigie_*` counter and gauge, summed over its labels.
fn counters() -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for fam in crate::metrics::REGISTRY.gather() {
        let name = fam.name().to_string();
        if !name.starts_with("vigie_") {
            continue;
        }
        let total: f64 = fam
            .get_metric()
            .iter()
            .map(|m| {
                if m.get_counter().is_some() {
                    m.get_counter().value()
                } else if m.get_gauge().is_some() {
                    m.get_gauge().value()
                } else {
                    0.0
                }
            })
            .sum();
        out.push((name, total));
    }
    out
}

async fn health(State(admin): State<Arc<Admin>>, s: Session) -> Response {
    if let Err(r) = s.require(&[Role::ItAdmin]) {
        return r;
    }
    let lang = s.lang;
    let snap = admin.store.load();
    let report = &snap.lists.report;
    let reloads = crate::app::recent_reloads();
    let tz = snap.config.timezone;
    let services = admin.services.get().cloned().unwrap_or_default();
    let body = html! {
        h2 { (tr(lang, "Services", "Services")) }
        table {
            thead { tr { th { "Service" } th { (tr(lang, "Adresse", "Address")) } th { (tr(lang, "État", "State")) } } }
            tbody {
                @for (name, addr) in &services {
                    tr { td { (name) } td { code { (addr) } } td.ok { (tr(lang, "en service", "up")) } }
                }
            }
        }
        h2 { (tr(lang, "Configuration en vigueur", "Configuration in force")) }
        p {
            (tr(lang, "Version ", "Version ")) strong #snapshot-version { (snap.version) }
            " · " (snap.config.origin)
            " · " (tr(lang, "construite en ", "built in ")) (format!("{:?}", snap.build_time))
            @if report.from_cache { " " (tr(lang, "(listes depuis le cache)", "(lists from the cache)")) }
        }
        p {
            (snap.lists.domains.len()) (tr(lang, " domaines, ", " domains, "))
            (snap.lists.urls.len()) " URL, "
            (snap.lists.ips.len()) (tr(lang, " réseaux IP", " IP networks"))
        }
        table {
            thead { tr {
                th { (tr(lang, "Source", "Source")) } th { (tr(lang, "Catégorie", "Category")) }
                th { (tr(lang, "Domaines", "Domains")) } th { "URL" } th { "IP" }
                th { (tr(lang, "Lignes invalides", "Bad lines")) }
            } }
            tbody {
                @for src in &report.sources {
                    tr {
                        td { code { (src.path.display()) } @if let Some(why) = &src.skipped { " — " em { (why) } } }
                        td { (snap.category_name(src.category)) }
                        td { (src.domains) } td { (src.urls) } td { (src.ips) }
                        td { (src.bad_lines) }
                    }
                }
            }
        }
        h2 { (tr(lang, "Derniers rechargements", "Last reloads")) }
        @if reloads.is_empty() {
            p { (tr(lang, "Aucun depuis le démarrage.", "None since start.")) }
        } @else {
            table {
                thead { tr { th { (tr(lang, "Heure", "Time")) } th { (tr(lang, "Résultat", "Result")) } th { "Version" } th { (tr(lang, "Détail", "Detail")) } } }
                tbody {
                    @for r in reloads.iter().rev() {
                        tr {
                            td { (r.time.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S")) }
                            td { @if r.accepted { (tr(lang, "accepté", "accepted")) } @else { strong { (tr(lang, "refusé", "rejected")) } } }
                            td { (r.version) }
                            td { pre { (r.message) } }
                        }
                    }
                }
            }
        }
        h2 { (tr(lang, "Compteurs", "Counters")) }
        table {
            tbody {
                @for (name, v) in counters() {
                    tr { td { code { (name) } } td { (v) } }
                }
            }
        }
    };
    s.page(tr(lang, "État du système", "System health"), body)
}
