//! Accepting connections: one accept loop per listener, a semaphore bounding the
//! connections served at once (the rest wait in the listen backlog), and one hyper
//! HTTP/1.1 connection per client with the head size/count limits and the
//! header-read timeout that stops slowloris clients.
//!
//! Nothing here decides: requests go to `forward` (HTTP) and `tunnel` (CONNECT,
//! transparent TLS).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Proxy;
use super::log::Kind;
use crate::metrics;
use crate::per_client::ClientSlot;
use crate::snapshot::canonical_ip;

/// How long a connection still gets, once shutdown starts, to finish its request.
const DRAIN: Duration = Duration::from_secs(4);

/// Which kind of listener accepted a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Clients configured to use the proxy (absolute-form requests, CONNECT).
    Explicit,
    /// Port 80 traffic redirected by the firewall (origin-form requests).
    TransparentHttp,
    /// Port 443 traffic redirected by the firewall (raw TLS).
    TransparentTls,
    /// The block-page address: every request gets the page for its Host, nothing
    /// is forwarded.
    BlockPage,
    /// The same over TLS, for the `https://` of a name the DNS filter blocked.
    BlockPageTls,
}

impl Mode {
    /// Whether this listener only explains blocks (never forwards).
    pub fn is_block_page(self) -> bool {
        matches!(self, Mode::BlockPage | Mode::BlockPageTls)
    }
}

/// What every request of one client connection shares.
pub struct Conn {
    pub peer: SocketAddr,
    pub mode: Mode,
    /// Whether the peer is inside `client_networks`.
    pub client: bool,
    /// The destination the client meant (transparent modes only).
    pub original_dst: Option<SocketAddr>,
    /// This connection's places. Tunnels and WebSockets outlive hyper's connection
    /// task and hold a clone of the `Arc<Conn>`, so the places are given back only
    /// when the last of them ends.
    _places: Places,
}

/// A connection's place under `max_connections` and its place among its
/// address's connections (`max_connections_per_client`), given back on drop.
struct Places {
    _permit: OwnedSemaphorePermit,
    _slot: Option<ClientSlot>,
}

/// Decrements the active-connection gauge however the connection ends.
struct Active(&'static str);

impl Active {
    fn new(kind: &'static str) -> Active {
        metrics::PROXY_ACTIVE_CONNECTIONS
            .with_label_values(&[kind])
            .inc();
        Active(kind)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        metrics::PROXY_ACTIVE_CONNECTIONS
            .with_label_values(&[self.0])
            .dec();
    }
}

pub async fn accept_loop(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    mode: Mode,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            p = proxy.limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("proxy accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let cap = proxy.store.load().config.proxy.max_connections_per_client;
        let Ok(slot) = proxy.per_client.enter(canonical_ip(peer.ip()), cap) else {
            // Closed at once: this address already holds its share.
            metrics::PROXY_REFUSED_TOTAL
                .with_label_values(&["per_client"])
                .inc();
            continue;
        };
        let proxy = proxy.clone();
        let cancel = cancel.clone();
        let tracker2 = tracker.clone();
        tracker.spawn(async move {
            let _active = Active::new("client");
            // Wait for the first byte in this small future; the connection's large
            // state (hyper's buffers and state machine) is boxed only once the
            // client speaks, so idle connections cost a socket and a small task.
            // (`peek`, not `readable()`: a freshly registered socket reports
            // readiness before any byte arrives.)
            let wait = proxy.store.load().config.proxy.header_timeout;
            let mut first = [0u8; 1];
            tokio::select! {
                r = tokio::time::timeout(wait, stream.peek(&mut first)) => {
                    if !matches!(r, Ok(Ok(n)) if n > 0) {
                        return;
                    }
                }
                _ = cancel.cancelled() => return,
            }
            let places = Places {
                _permit: permit,
                _slot: slot,
            };
            Box::pin(serve_conn(
                proxy, stream, peer, mode, places, tracker2, cancel,
            ))
            .await;
        });
    }
}

async fn serve_conn(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
    mode: Mode,
    places: Places,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let snap = proxy.store.load();
    let client = snap.is_client(peer.ip());
    let original_dst = match mode {
        Mode::Explicit | Mode::BlockPage | Mode::BlockPageTls => None,
        _ => match super::transparent::original_dst(&stream) {
            Ok(dst) => Some(dst),
            Err(e) => {
                tracing::debug!(%peer, "transparent connection without an original destination: {e}");
                metrics::PROXY_REFUSED_TOTAL
                    .with_label_values(&["no_original_dst"])
                    .inc();
                return;
            }
        },
    };
    if mode == Mode::TransparentTls {
        if !client {
            metrics::PROXY_REFUSED_TOTAL
                .with_label_values(&["client_network"])
                .inc();
            return;
        }
        if let Some(dst) = original_dst {
            super::tunnel::transparent_stream(
                proxy,
                stream,
                peer,
                dst,
                Kind::TransparentTls,
                cancel,
            )
            .await;
        }
        return;
    }
    // Port 80 carries more than HTTP: a BitTorrent handshake or a Gnutella/DC++
    // hello redirected here is decided like a non-TLS stream on the TLS port,
    // instead of dying as a 400 that nobody sees.
    if mode == Mode::TransparentHttp
        && client
        && let Some(dst) = original_dst
    {
        let mut first = [0u8; 64];
        let n = stream.peek(&mut first).await.unwrap_or(0);
        if !looks_like_http(&first[..n]) {
            super::tunnel::transparent_stream(
                proxy,
                stream,
                peer,
                dst,
                Kind::TransparentHttp,
                cancel,
            )
            .await;
            return;
        }
    }
    let conn = Arc::new(Conn {
        peer,
        mode,
        client,
        original_dst,
        _places: places,
    });
    if mode == Mode::BlockPageTls {
        let Some(acceptor) = proxy.page_tls.clone() else {
            return;
        };
        // The handshake counts against the header timeout: a silent TLS client is
        // a slowloris too.
        let handshake = acceptor.accept(stream);
        match tokio::time::timeout(snap.config.proxy.header_timeout, handshake).await {
            Ok(Ok(tls)) => serve_http(proxy, tls, conn, tracker, cancel).await,
            // Expected after the certificate warning: the browser hangs up until the
            // person accepts the certificate.
            Ok(Err(e)) => tracing::debug!(%peer, "block page TLS handshake failed: {e}"),
            Err(_) => tracing::debug!(%peer, "block page TLS handshake timed out"),
        }
        return;
    }
    drop(snap);
    serve_http(proxy, stream, conn, tracker, cancel).await;
}

/// Whether a stream's first bytes can be an HTTP/1 request: a method token (any,
/// WebDAV's included, possibly still incomplete) and a space, and not one of the
/// P2P hellos that look like one (`GNUTELLA CONNECT/0.6`).
fn looks_like_http(first: &[u8]) -> bool {
    let d = super::sniff::detect(first);
    if d.category == "p2p" && d.protocol != "tracker_announce" {
        return false;
    }
    let token = first
        .iter()
        .take_while(|b| b.is_ascii_uppercase() || matches!(b, b'-' | b'_'))
        .count();
    token > 0 && (token == first.len() || first[token] == b' ')
}

/// One client's HTTP/1.1 connection (plain or inside the block page's TLS).
async fn serve_http<I>(
    proxy: Arc<Proxy>,
    io: I,
    conn: Arc<Conn>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let snap = proxy.store.load();
    let cfg = &snap.config.proxy;
    let peer = conn.peer;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_timeout)
        .max_headers(cfg.max_headers)
        .max_header_size(cfg.max_header_bytes)
        .max_buf_size(cfg.max_header_bytes.max(8192) + 1024)
        .keep_alive(conn.client);
    drop(snap);
    let p = proxy.clone();
    let c = conn.clone();
    let service = service_fn(move |req| {
        let p = p.clone();
        let c = c.clone();
        let tracker = tracker.clone();
        async move { Ok::<_, Infallible>(super::forward::handle(p, c, req, tracker).await) }
    });
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        r = connection.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, "proxy connection ended: {e}");
            }
        }
        _ = cancel.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, connection).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::looks_like_http;

    #[test]
    fn http_or_another_protocol_on_port_80() {
        for http in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROPFIND /dav HTTP/1.1",
            b"GE",
            b"GET /announce?info_hash=%01 HTTP/1.1",
        ] {
            assert!(looks_like_http(http), "{:?}", String::from_utf8_lossy(http));
        }
        let mut bt = vec![19u8];
        bt.extend_from_slice(b"BitTorrent protocol");
        for other in [
            &bt[..],
            b"GNUTELLA CONNECT/0.6\r\n",
            b"$MyNick x|",
            b"SSH-2.0-OpenSSH",
            b"\x16\x03\x01\x02\x00",
            b"",
        ] {
            assert!(
                !looks_like_http(other),
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }

    /// The idle-connection saving relies on `peek` waiting for the first byte.
    #[tokio::test]
    async fn peek_waits_for_the_first_byte() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (s, _) = l.accept().await.unwrap();
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_millis(200), s.peek(&mut b)).await;
        assert!(r.is_err(), "peek returned before any byte: {r:?}");
        c.try_write(b"G").unwrap();
        let n = tokio::time::timeout(Duration::from_secs(2), s.peek(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((n, b[0]), (1, b'G'));
    }
}
