//! The directors' dashboard: blocked requests over a chosen period (a chart drawn
//! here as SVG, so it renders without network or script), the top categories,
//! domains, profiles, schools (networks) and — pseudonymised where `[audit]
//! pseudonymize` says so — people. Every number links to the same view narrowed to
//! it (a category's domains, a domain's hours…): aggregates all the way down, never
//! one person's history (that is the auditors' page, with a justification).
//!
//! A director restricted to some networks sees only what came from them.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::Tz;
use ipnet::IpNet;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::tr;
use super::session::Session;
use super::{Admin, Role, Routes};
use crate::audit::store::{BlockFilter, CIRCUMVENTION_SEP, Dimension, Period};
use crate::i18n::Lang;
use crate::proxy::pages::query_escape;

pub fn routes() -> Routes {
    Routes::new().route("/admin/", get(dashboard))
}

/// The periods offered, in days.
const PERIODS: &[u32] = &[1, 7, 30, 90];

/// The narrowest network a view may be narrowed to: below this, "a network's
/// blocks" is one device's history, which only the auditors' page opens (with a
/// justification, recorded).
const MIN_PREFIX_V4: u8 = 24;
const MIN_PREFIX_V6: u8 = 64;

/// Whether `net` is narrower than an aggregate view may go.
fn too_narrow(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => n.prefix_len() > MIN_PREFIX_V4,
        IpNet::V6(n) => n.prefix_len() > MIN_PREFIX_V6,
    }
}

#[derive(Deserialize, Default, Clone)]
pub struct DashQuery {
    #[serde(default)]
    days: Option<u32>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    host: Option<String>,
    /// One network (school) of the person's.
    #[serde(default)]
    net: Option<String>,
}

impl DashQuery {
    fn days(&self) -> u32 {
        self.days.filter(|d| PERIODS.contains(d)).unwrap_or(7)
    }

    /// This view's link with `key` set to `value` (or removed).
    fn link(&self, key: &str, value: Option<&str>) -> String {
        let mut parts = vec![format!("days={}", self.days())];
        let mut put = |k: &str, v: &Option<String>| {
            let v = if k == key { value } else { v.as_deref() };
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                parts.push(format!("{k}={}", query_escape(v)));
            }
        };
        put("category", &self.category);
        put("profile", &self.profile);
        put("host", &self.host);
        put("net", &self.net);
        format!("/admin/?{}", parts.join("&"))
    }
}

/// What the store said for one view.
struct Numbers {
    hours: Vec<(String, u64)>,
    categories: Vec<(String, u64)>,
    domains: Vec<(String, u64)>,
    profiles: Vec<(String, u64)>,
    /// `category · detection` of circumvention blocks.
    circumvention: Vec<(String, u64)>,
    users: Vec<(String, u64)>,
    /// Per network (school): its label and its blocks.
    networks: Vec<(String, String, u64)>,
}

async fn dashboard(
    State(admin): State<Arc<Admin>>,
    s: Session,
    Query(q): Query<DashQuery>,
) -> Response {
    if let Err(r) = s.require(&[Role::Director, Role::ItAdmin]) {
        return r;
    }
    let lang = s.lang;
    let snap = admin.store.load();
    let tz = snap.config.timezone;
    let days = q.days();
    let now = Utc::now();
    let period = Period {
        from: now - Duration::days(i64::from(days)),
        to: now,
    };
    // The networks this view counts: the person's (all when unrestricted),
    // narrowed to one of them when asked.
    let mine = s.networks();
    let chosen: Option<IpNet> = q.net.as_deref().and_then(|n| n.trim().parse().ok());
    if chosen.as_ref().is_some_and(too_narrow) {
        return super::layout::message(
            &s.chrome(),
            axum::http::StatusCode::BAD_REQUEST,
            tr(lang, "Filtre trop étroit", "Filter too narrow"),
            tr(
                lang,
                "Le tableau de bord montre des ensembles : un filtre de réseau doit couvrir au moins un /24 (IPv4) ou un /64 (IPv6). L'historique d'un appareil ou d'une personne se consulte, avec un motif consigné, dans « Historique d'une personne ».",
                "The dashboard shows aggregates: a network filter must cover at least a /24 (IPv4) or a /64 (IPv6). One device's or one person's history is read, with a recorded justification, under \"A person's history\".",
            ),
        );
    }
    let networks: Vec<IpNet> = match (&mine, chosen) {
        (Some(m), Some(c)) if m.iter().any(|n| n.contains(&c)) => vec![c],
        (Some(m), _) => m.clone(),
        (None, Some(c)) => vec![c],
        (None, None) => Vec::new(),
    };
    let filter = BlockFilter {
        networks,
        category: q.category.clone().filter(|c| !c.is_empty()),
        profile: q.profile.clone().filter(|c| !c.is_empty()),
        host: q.host.clone().filter(|c| !c.is_empty()),
    };
    // The schools to split by: the person's networks, else the named networks of
    // the config.
    let schools: Vec<(String, IpNet)> = match &mine {
        Some(m) => m
            .iter()
            .map(|n| (network_label(&snap.config, n), *n))
            .collect(),
        None => snap
            .config
            .networks
            .iter()
            .take(30)
            .map(|n| (network_label(&snap.config, &n.net), n.net))
            .collect(),
    };
    let pseudo = admin.pseudo.clone();
    let f = filter.clone();
    let numbers = admin
        .with_events(move |st| {
            let hours = st.blocks_matching(Dimension::Hour, period, 24 * 100, &f)?;
            let categories = st.blocks_matching(Dimension::Category, period, 20, &f)?;
            let domains = st.blocks_matching(Dimension::Domain, period, 20, &f)?;
            let profiles = st.blocks_matching(Dimension::Profile, period, 20, &f)?;
            let circumvention = st.blocks_matching(Dimension::Circumvention, period, 20, &f)?;
            let mut users = st.blocks_matching(Dimension::User, period, 10, &f)?;
            if let Some(p) = &pseudo {
                users = users.into_iter().map(|(u, n)| (p.name(&u), n)).collect();
            }
            let mut networks = Vec::new();
            for (label, net) in schools {
                let nf = BlockFilter {
                    networks: vec![net],
                    ..f.clone()
                };
                let n: u64 = st
                    .blocks_matching(Dimension::Profile, period, 1000, &nf)?
                    .iter()
                    .map(|(_, n)| n)
                    .sum();
                networks.push((label, net.to_string(), n));
            }
            Ok(Numbers {
                hours,
                categories,
                domains,
                profiles,
                circumvention,
                users,
                networks,
            })
        })
        .await;
    let numbers = match numbers {
        Ok(n) => n,
        Err(e) => return super::layout::failure(&s.chrome(), &e),
    };
    let total: u64 = numbers.hours.iter().map(|(_, n)| n).sum();
    let cat_label = |id: &str| -> String {
        snap.config
            .categories
            .iter()
            .find(|c| c.id == id)
            .map(|c| match lang {
                Lang::Fr => c.fr.clone(),
                Lang::En => c.en.clone(),
            })
            .unwrap_or_else(|| {
                if id.is_empty() {
                    tr(lang, "(sans catégorie)", "(no category)").to_string()
                } else {
                    id.to_string()
                }
            })
    };
    let buckets = buckets(&numbers.hours, period, days, tz);
    let chart = chart_svg(lang, &buckets, days <= 2);
    let title = tr(lang, "Requêtes bloquées", "Blocked requests");
    let narrowed = filter.category.is_some()
        || filter.profile.is_some()
        || filter.host.is_some()
        || q.net.is_some();
    let table = |caption: &str, head: &str, rows: Markup| {
        html! {
            div.table-wrap {
                table {
                    caption.hint { (caption) }
                    thead { tr { th scope="col" { (head) } th.n scope="col" { (tr(lang, "Blocages", "Blocks")) } } }
                    tbody { (rows) }
                }
            }
        }
    };
    s.page(
        title,
        html! {
            form.filters method="get" action="/admin/" {
                div {
                    label for="days" { (tr(lang, "Période", "Period")) }
                    select #days name="days" {
                        @for d in PERIODS {
                            option value=(d) selected[*d == days] {
                                @match (d, lang) {
                                    (1, Lang::Fr) => "Dernières 24 heures",
                                    (1, Lang::En) => "Last 24 hours",
                                    (_, Lang::Fr) => (format!("{d} derniers jours")),
                                    (_, Lang::En) => (format!("Last {d} days")),
                                }
                            }
                        }
                    }
                }
                @if let Some(c) = &q.category { input type="hidden" name="category" value=(c); }
                @if let Some(p) = &q.profile { input type="hidden" name="profile" value=(p); }
                @if let Some(h) = &q.host { input type="hidden" name="host" value=(h); }
                @if let Some(n) = &q.net { input type="hidden" name="net" value=(n); }
                button type="submit" { (tr(lang, "Afficher", "Show")) }
            }
            @if narrowed {
                p {
                    (tr(lang, "Vue restreinte à : ", "View narrowed to: "))
                    @if let Some(c) = &filter.category { strong { (cat_label(c)) } " " }
                    @if let Some(p) = &filter.profile { strong { (p) } " " }
                    @if let Some(h) = &filter.host { strong { (h) } " " }
                    @if let Some(n) = &q.net { strong { (n) } " " }
                    a href=(format!("/admin/?days={days}")) { (tr(lang, "tout afficher", "show all")) }
                }
            }
            @if let Some(m) = &mine {
                p.hint {
                    (tr(lang, "Vos réseaux : ", "Your networks: "))
                    (m.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "))
                }
            }
            p { span.total #total { (total) } " " (tr(lang, "requêtes bloquées sur la période", "blocked requests in the period")) }
            figure {
                (chart)
                figcaption.hint {
                    @if days <= 2 { (tr(lang, "Par heure, heure locale.", "Per hour, local time.")) }
                    @else { (tr(lang, "Par jour, heure locale.", "Per day, local time.")) }
                }
            }
            details {
                summary { (tr(lang, "Données du graphique", "Chart data")) }
                div.table-wrap { table {
                    thead { tr { th scope="col" { (tr(lang, "Moment", "Time")) } th.n scope="col" { (tr(lang, "Blocages", "Blocks")) } } }
                    tbody { @for (label, _, n) in &buckets { tr { td { (label) } td.n { (n) } } } }
                } }
            }
            div.grid {
                section {
                    h2 { (tr(lang, "Catégories", "Categories")) }
                    (table(tr(lang, "Blocages par catégorie", "Blocks by category"), tr(lang, "Catégorie", "Category"), html! {
                        @for (c, n) in &numbers.categories {
                            tr { td { (cat_label(c)) } td.n { a href=(q.link("category", Some(c))) { (n) } } }
                        }
                    }))
                }
                section {
                    h2 { (tr(lang, "Domaines les plus bloqués", "Most blocked domains")) }
                    (table(tr(lang, "Blocages par domaine", "Blocks by domain"), tr(lang, "Domaine", "Domain"), html! {
                        @for (d, n) in &numbers.domains {
                            tr { td.url { (d) } td.n { a href=(q.link("host", Some(d))) { (n) } } }
                        }
                    }))
                }
                section {
                    h2 { (tr(lang, "Par profil", "By profile")) }
                    (table(tr(lang, "Blocages par profil", "Blocks by profile"), tr(lang, "Profil", "Profile"), html! {
                        @for (p, n) in &numbers.profiles {
                            tr { td { (p) } td.n { a href=(q.link("profile", Some(p))) { (n) } } }
                        }
                    }))
                }
                @if !numbers.circumvention.is_empty() {
                    section #circumvention {
                        h2 { (tr(lang, "Tentatives de contournement", "Circumvention attempts")) }
                        (table(tr(lang, "P2P, Tor, RPV et tunnels, DNS chiffré : ce qui a été détecté", "P2P, Tor, VPNs and tunnels, encrypted DNS: what was detected"), tr(lang, "Catégorie · détection", "Category · detection"), html! {
                            @for (k, n) in &numbers.circumvention {
                                @let (cat, what) = k.split_once(CIRCUMVENTION_SEP).unwrap_or((k.as_str(), ""));
                                tr {
                                    td { (cat_label(cat)) " · " code { (what) } }
                                    td.n { a href=(q.link("category", Some(cat))) { (n) } }
                                }
                            }
                        }))
                    }
                }
                @if !numbers.networks.is_empty() {
                    section {
                        h2 { (tr(lang, "Par école (réseau)", "By school (network)")) }
                        (table(tr(lang, "Blocages par réseau", "Blocks by network"), tr(lang, "Réseau", "Network"), html! {
                            @for (label, net, n) in &numbers.networks {
                                @let wide = net.parse::<IpNet>().is_ok_and(|n| !too_narrow(&n));
                                tr { td { (label) } td.n {
                                    @if wide { a href=(q.link("net", Some(net))) { (n) } } @else { (n) }
                                } }
                            }
                        }))
                    }
                }
                section {
                    h2 {
                        @if admin.pseudo.is_some() { (tr(lang, "Personnes (pseudonymes)", "People (pseudonyms)")) }
                        @else { (tr(lang, "Personnes", "People")) }
                    }
                    (table(tr(lang, "Blocages par personne identifiée", "Blocks by identified person"), tr(lang, "Personne", "Person"), html! {
                        @for (u, n) in &numbers.users { tr { td { (u) } td.n { (n) } } }
                    }))
                }
            }
            p.hint { a href=(format!("/admin/live?lang={}", lang.code())) { (tr(lang, "Voir les blocages en direct", "See blocks live")) } }
        },
    )
}

/// A network's name in the config, else its CIDR.
fn network_label(cfg: &crate::config::Config, net: &IpNet) -> String {
    cfg.networks
        .iter()
        .find(|n| n.net == *net)
        .and_then(|n| n.name.clone())
        .map(|name| format!("{name} ({net})"))
        .unwrap_or_else(|| net.to_string())
}

/// Every bucket of the period (hours when `days` ≤ 2, else local days), with its
/// label, its start, and its count (zeros included: a gap is information).
fn buckets(
    hours: &[(String, u64)],
    period: Period,
    days: u32,
    tz: Tz,
) -> Vec<(String, DateTime<Utc>, u64)> {
    let hourly = days <= 2;
    let key = |t: DateTime<Utc>| -> String {
        let l = t.with_timezone(&tz);
        if hourly {
            l.format("%Y-%m-%d %H:00").to_string()
        } else {
            l.format("%Y-%m-%d").to_string()
        }
    };
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (h, n) in hours {
        if let Ok(t) = DateTime::parse_from_rfc3339(h) {
            *counts.entry(key(t.with_timezone(&Utc))).or_default() += n;
        }
    }
    let step = if hourly {
        Duration::hours(1)
    } else {
        Duration::days(1)
    };
    let mut out: Vec<(String, DateTime<Utc>, u64)> = Vec::new();
    // Start at the bucket holding `from` (local midnight for days).
    let mut t = if hourly {
        Utc.timestamp_opt(period.from.timestamp() / 3600 * 3600, 0)
            .single()
            .unwrap_or(period.from)
    } else {
        let l = period.from.with_timezone(&tz).date_naive();
        tz.from_local_datetime(&l.and_hms_opt(0, 0, 0).unwrap_or_default())
            .earliest()
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or(period.from)
    };
    while t < period.to && out.len() < 24 * 100 {
        let k = key(t);
        if out.last().map(|(l, _, _)| l != &k).unwrap_or(true) {
            let n = counts.get(&k).copied().unwrap_or(0);
            out.push((k, t, n));
        }
        t += step;
    }
    out
}

/// The bar chart, hand-drawn SVG: one bar a bucket, a y axis with three marks, a
/// few x labels, a `<title>` on every bar for the exact number.
fn chart_svg(lang: Lang, buckets: &[(String, DateTime<Utc>, u64)], hourly: bool) -> Markup {
    const W: f64 = 800.0;
    const H: f64 = 260.0;
    const LEFT: f64 = 52.0;
    const BOTTOM: f64 = 44.0;
    const TOP: f64 = 12.0;
    let max = buckets.iter().map(|b| b.2).max().unwrap_or(0);
    let scale = nice_ceiling(max);
    let plot_w = W - LEFT - 10.0;
    let plot_h = H - TOP - BOTTOM;
    let n = buckets.len().max(1) as f64;
    let slot = plot_w / n;
    let bar_w = (slot * 0.8).max(1.0);
    let label_every = ((buckets.len() as f64) / 8.0).ceil().max(1.0) as usize;
    let desc = match lang {
        Lang::Fr => format!(
            "Histogramme de {} barres ; maximum {} blocages.",
            buckets.len(),
            max
        ),
        Lang::En => format!(
            "Bar chart of {} bars; at most {} blocks.",
            buckets.len(),
            max
        ),
    };
    let short = |l: &str| -> String {
        if hourly {
            l.get(11..16).unwrap_or(l).to_string()
        } else {
            l.get(5..).unwrap_or(l).to_string()
        }
    };
    html! {
        svg.chart #blocks-chart xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {W} {H}"))
            role="img" aria-labelledby="chart-title chart-desc" {
            title #chart-title { (tr(lang, "Requêtes bloquées dans le temps", "Blocked requests over time")) }
            desc #chart-desc { (desc) }
            line.axis x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(H - BOTTOM) {}
            line.axis x1=(LEFT) y1=(H - BOTTOM) x2=(W - 10.0) y2=(H - BOTTOM) {}
            @for frac in [0.0f64, 0.5, 1.0] {
                @let y = H - BOTTOM - plot_h * frac;
                text x=(LEFT - 6.0) y=(y + 4.0) text-anchor="end" { (((scale as f64) * frac).round() as u64) }
                line x1=(LEFT) y1=(y) x2=(W - 10.0) y2=(y) stroke="#e2e2e2" stroke-width="1" {}
            }
            @for (i, (label, _, count)) in buckets.iter().enumerate() {
                @let h = if scale == 0 { 0.0 } else { plot_h * (*count as f64) / (scale as f64) };
                @let x = LEFT + slot * (i as f64) + (slot - bar_w) / 2.0;
                rect.bar x=(fmt(x)) y=(fmt(H - BOTTOM - h)) width=(fmt(bar_w)) height=(fmt(h)) {
                    title { (label) " : " (count) }
                }
                @if i % label_every == 0 {
                    text x=(fmt(x + bar_w / 2.0)) y=(H - BOTTOM + 16.0) text-anchor="middle" { (short(label)) }
                }
            }
        }
    }
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

/// The smallest "round" number (1, 2, 5 × 10ⁿ) at or above `v`; 0 stays 0.
fn nice_ceiling(v: u64) -> u64 {
    if v == 0 {
        return 0;
    }
    let mut base = 1u64;
    loop {
        for m in [1, 2, 5] {
            if base.saturating_mul(m) >= v {
                return base * m;
            }
        }
        base = base.saturating_mul(10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_filters_stay_aggregate() {
        let narrow = |s: &str| too_narrow(&s.parse().unwrap());
        assert!(!narrow("10.1.0.0/16"));
        assert!(!narrow("10.1.2.0/24"));
        assert!(narrow("10.1.2.0/25"));
        assert!(narrow("10.1.2.3/32"));
        assert!(!narrow("2001:db8:1:2::/64"));
        assert!(narrow("2001:db8:1:2::/65"));
        assert!(narrow("2001:db8::5/128"));
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0), 0);
        assert_eq!(nice_ceiling(1), 1);
        assert_eq!(nice_ceiling(3), 5);
        assert_eq!(nice_ceiling(7), 10);
        assert_eq!(nice_ceiling(180), 200);
    }

    #[test]
    fn buckets_fill_gaps_and_sum_days() {
        let to = Utc.with_ymd_and_hms(2026, 11, 23, 12, 30, 0).unwrap();
        let period = Period {
            from: to - Duration::days(7),
            to,
        };
        let hours = vec![
            ("2026-11-20T15:00:00Z".to_string(), 3),
            ("2026-11-20T16:00:00Z".to_string(), 2),
            ("2026-11-22T10:00:00Z".to_string(), 1),
        ];
        let b = buckets(&hours, period, 7, chrono_tz::America::Toronto);
        assert_eq!(b.len(), 8, "7 days and a part");
        assert_eq!(b.iter().map(|x| x.2).sum::<u64>(), 6);
        assert!(b.iter().any(|x| x.0 == "2026-11-20" && x.2 == 5));
        let svg = chart_svg(Lang::Fr, &b, false).into_string();
        assert!(svg.contains("<svg") && svg.matches("<rect").count() == 8);
        let hourly = buckets(
            &hours,
            Period {
                from: to - Duration::days(1),
                to,
            },
            1,
            chrono_tz::UTC,
        );
        assert_eq!(hourly.len(), 25);
    }
}
