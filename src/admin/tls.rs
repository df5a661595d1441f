//! The admin app over HTTPS (`[admin] tls_listen`): the operator's certificate, or
//! a self-signed one made once and kept in the data directory (the block page's
//! machinery, `proxy::page_tls`). Each connection gets the client address
//! (`ConnectInfo`, as on the plain listener) and an [`OverTls`] marker, so session
//! cookies are marked `Secure`.

use std::net::SocketAddr;
use std::path::Path;

use axum::extract::ConnectInfo;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::page_tls::{self, PageTlsError, SelfSigned};

/// Marks a request that came over the HTTPS listener.
#[derive(Clone, Copy, Debug)]
pub struct OverTls;

/// The admin app's self-signed certificate.
pub const ADMIN_CERT: SelfSigned = SelfSigned {
    cert_file: "admin.crt",
    key_file: "admin.key",
    names: &["localhost", "vigie.admin.invalid"],
    common_name: "vigie - administration",
};

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub fn acceptor(
    files: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    data_dir: Option<&Path>,
) -> Result<TlsAcceptor, PageTlsError> {
    page_tls::acceptor_for(files, data_dir, &ADMIN_CERT)
}

/// Serves `app` over TLS on `listener` until `cancel`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    app: axum::Router,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("admin TLS accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (acceptor, app, cancel) = (acceptor.clone(), app.clone(), cancel.clone());
        tracker.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!("admin TLS handshake from {peer} failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let service =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    req.extensions_mut().insert(OverTls);
                    let mut app = app.clone();
                    async move { tower_service::Service::call(&mut app, req).await }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!("admin TLS connection from {peer}: {e}");
                },
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn).await;
                }
            }
        });
    }
}
