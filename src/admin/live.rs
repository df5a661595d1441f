//! The live view: blocked requests as the filter records them, pushed to the page
//! with server-sent events. Fed by `AuditSink::subscribe_blocks` (the audit path
//! publishes blocks only while someone watches); a director restricted to some
//! networks sees only theirs, and user names are pseudonymised where configured.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::html;

use super::layout::tr;
use super::session::Session;
use super::{Admin, Role, Routes};

pub fn routes() -> Routes {
    Routes::new()
        .route("/admin/live", get(page))
        .route("/admin/live/events", get(events))
}

async fn page(s: Session) -> Response {
    if let Err(r) = s.require(&[Role::Director, Role::ItAdmin]) {
        return r;
    }
    let lang = s.lang;
    s.page(
        tr(lang, "Blocages en direct", "Live blocks"),
        html! {
            p #live-state aria-live="polite"
                data-on=(tr(lang, "Connecté : les blocages apparaissent à mesure.", "Connected: blocks appear as they happen."))
                data-off=(tr(lang, "Déconnecté : nouvelle tentative…", "Disconnected: retrying…")) {
                (tr(lang, "Connexion…", "Connecting…"))
            }
            ul #live-list data-src="/admin/live/events" aria-live="off" {}
            noscript { p { (tr(lang,
                "Cette vue a besoin de JavaScript ; le tableau de bord fonctionne sans.",
                "This view needs JavaScript; the dashboard works without it.")) } }
            script src="/admin/assets/live.js" {}
        },
    )
}

async fn events(State(admin): State<Arc<Admin>>, s: Session) -> Response {
    if let Err(r) = s.require(&[Role::Director, Role::ItAdmin]) {
        return r;
    }
    let mut blocks = admin.audit.subscribe_blocks();
    let tz = admin.store.load().config.timezone;
    let pseudo = admin.pseudo.clone();
    let shutdown = admin.shutdown.clone();
    let stream = async_stream(move |tx| async move {
        loop {
            let b = tokio::select! {
                _ = shutdown.cancelled() => return,
                b = blocks.recv() => match b { Some(b) => b, None => return },
            };
            if !s.sees_ip(&b.client_ip.to_string()) {
                continue;
            }
            let who = b.user.as_deref().map(|u| match &pseudo {
                Some(p) => p.name(u),
                None => u.to_string(),
            });
            let data = serde_json::json!({
                "local_time": b.time.with_timezone(&tz).format("%H:%M:%S").to_string(),
                "service": b.service,
                "profile": b.profile,
                "host": b.host,
                "category": b.category,
                "who": who,
            });
            if tx
                .send(Ok(Event::default().event("block").data(data.to_string())))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A stream fed by a task through a small channel: the task ends when the client
/// goes away (its sends fail) or at shutdown.
fn async_stream<F, Fut>(
    f: F,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}
