//! Tunnels: CONNECT from explicit clients and raw TLS from the transparent
//! listener. Before any origin is dialled, the client's first bytes are read: a TLS
//! ClientHello is decided on its SNI (and the CONNECT host), anything else is
//! refused and recorded as circumvention. Allowed tunnels are spliced byte for byte
//! — TLS is never decrypted — with an idle timeout and byte counts.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::forward::{Page, block_page, dial_error_page, error_page, forbidden_page};
use super::guard::parse_host_ip;
use super::log::{Kind, RequestLog};
use super::server::Conn;
use super::sniff::{
    ALERT_ACCESS_DENIED, Detected, FirstBytes, MALFORMED, MAX_HELLO_BYTES, inspect,
};
use super::{Body, Proxy, pages};
use crate::config::SniMismatch;
use crate::i18n::{Lang, Msg};
use crate::identity::Identity;
use crate::metrics;
use crate::policy::{self, Request as PolicyRequest, Verdict};
use crate::snapshot::{Snapshot, canonical_ip};

/// Bytes buffered per direction of a spliced tunnel.
const SPLICE_BUF: usize = 16 * 1024;
/// Most reads while waiting for a ClientHello. A real one (up to ~8 KiB with large
/// post-quantum key shares) comes in a handful of TCP segments of at least 536
/// bytes; a client that needs more reads than this is dribbling bytes on purpose.
const MAX_HELLO_READS: usize = 64;

/// A CONNECT request from an identified client.
#[allow(clippy::too_many_arguments)]
pub async fn connect(
    p: Arc<Proxy>,
    conn: Arc<Conn>,
    snap: Arc<Snapshot>,
    req: Request<Incoming>,
    identity: Identity,
    lang: Lang,
    log: Arc<RequestLog>,
    tracker: TaskTracker,
) -> Response<Body> {
    let what = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let Some((host, port)) = req.uri().authority().and_then(|a| {
        a.port_u16().map(|port| {
            (
                a.host()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_ascii_lowercase(),
                port,
            )
        })
    }) else {
        return error_page(
            Page {
                status: StatusCode::BAD_REQUEST,
                reason: Msg::BadRequest,
                refused: "bad_request",
            },
            lang,
            &what,
            &log,
        );
    };
    log.target(&what, &host, port, None);
    let cfg = &snap.config.proxy;
    if !cfg.connect_ports.contains(&port) {
        return error_page(
            Page {
                status: StatusCode::FORBIDDEN,
                reason: Msg::PortNotAllowed,
                refused: "port",
            },
            lang,
            &what,
            &log,
        );
    }
    let literal = parse_host_ip(&host).map(canonical_ip);
    if let Some(ip) = literal
        && let Err(why) = p.dialer.guard.check(SocketAddr::new(ip, port))
    {
        return error_page(forbidden_page(why), lang, &what, &log);
    }
    // Decide on the CONNECT host now: a blocked site gets a 403 with the page, not
    // a tunnel that dies later.
    let policy_host = literal
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| host.clone());
    let preq = PolicyRequest::Tls {
        host: Some(&policy_host),
        port,
        ip: literal,
    };
    let d = policy::decide(&snap, &preq, &identity, Utc::now());
    log.decision(&snap, &d, &preq);
    if d.verdict == Verdict::Block {
        return block_page(&p, &snap, &d, &identity, lang, &what, &log, true);
    }
    // Resolve (and SSRF-check every address) before answering 200, so an unknown
    // or internal name gets a page, not a tunnel that dies after the ClientHello.
    let dial_name = match d.verdict {
        Verdict::SafeSearch { target } => target.to_string(),
        _ => policy_host.clone(),
    };
    let addrs = match p.dialer.resolve(&dial_name, port).await {
        Ok(a) => a,
        Err(e) => return error_page(dial_error_page(&e), lang, &what, &log),
    };
    if literal.is_none()
        && let Some(d2) = listed_address_block(&snap, &identity, &policy_host, &addrs, &log)
    {
        return block_page(&p, &snap, &d2, &identity, lang, &what, &log, true);
    }
    log.status(200);
    let upgrade = hyper::upgrade::on(req);
    let t = Tunnel {
        p,
        snap,
        identity,
        log,
        connect_host: Some(policy_host),
        port,
        literal,
        dial_name,
        addrs,
        safe: None,
    };
    tracker.spawn(async move {
        // The tunnel keeps the connection's place under max_connections.
        let _conn = conn;
        match upgrade.await {
            Ok(up) => t.run(TokioIo::new(up)).await,
            Err(e) => tracing::debug!("CONNECT upgrade failed: {e}"),
        }
    });
    Response::new(pages::empty())
}

/// A name that resolves into an address list (a Tor relay, a VPN endpoint, a DoH
/// resolver) is decided on those addresses too: the blocking decision, recorded,
/// if one of `addrs` is listed in a category the profile blocks.
pub(super) fn listed_address_block(
    snap: &Snapshot,
    identity: &Identity,
    host: &str,
    addrs: &[SocketAddr],
    log: &RequestLog,
) -> Option<policy::Decision> {
    if snap.lists.ips.is_empty() {
        return None;
    }
    for a in addrs {
        let ip = canonical_ip(a.ip());
        if snap.lists.ips.lookup(ip).is_empty() {
            continue;
        }
        let ip_req = PolicyRequest::Tls {
            host: Some(host),
            port: a.port(),
            ip: Some(ip),
        };
        let d = policy::decide(snap, &ip_req, identity, Utc::now());
        if d.verdict == Verdict::Block {
            log.decision(snap, &d, &ip_req);
            return Some(d);
        }
    }
    None
}

/// Transparent mode: the client chose the address, the name it sent (SNI, Host)
/// was decided. When the name does not resolve to that address (vigie's DNS, the
/// one the school's devices use), the name may be a decoy — an allowed site's name
/// sent to a VPN server — so the address is decided too, as the bare IP it is
/// (`bare_ip = "block"` refuses it; a profile allowing bare IPs goes on). Squid's
/// `host_verify_strict` does the same check. The blocking decision, recorded, if
/// any.
pub(super) async fn elsewhere_block(
    p: &Proxy,
    snap: &Snapshot,
    identity: &Identity,
    name: &str,
    port: u16,
    dst: IpAddr,
    log: &RequestLog,
) -> Option<policy::Decision> {
    let dst = canonical_ip(dst);
    let resolved = p.dialer.resolve(name, port).await.unwrap_or_default();
    if resolved.iter().any(|a| canonical_ip(a.ip()) == dst) {
        return None;
    }
    let preq = PolicyRequest::Tls {
        host: None,
        port,
        ip: Some(dst),
    };
    let d = policy::decide(snap, &preq, identity, Utc::now());
    if d.verdict != Verdict::Block {
        return None;
    }
    log.decision(snap, &d, &preq);
    metrics::PROXY_CIRCUMVENTION_TOTAL
        .with_label_values(&["name_elsewhere"])
        .inc();
    Some(d)
}

/// A raw connection redirected to a transparent listener: TLS on the TLS port, or
/// a stream that is not HTTP on the HTTP port (`kind` says which door).
pub async fn transparent_stream(
    p: Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    kind: Kind,
    cancel: CancellationToken,
) {
    let snap = p.store.load();
    let client_ip = canonical_ip(peer.ip());
    let log = RequestLog::new(
        kind,
        client_ip,
        if kind == Kind::TransparentTls {
            "TLS"
        } else {
            "-"
        },
        p.audit.clone(),
        snap.config.proxy.log_allowed,
    );
    let what = dst.to_string();
    log.target(&what, &dst.ip().to_string(), dst.port(), None);
    let identity = p.identities.resolve(&snap, client_ip, Utc::now());
    log.identity(&snap, &identity);
    // HTTPS cannot be redirected: before the portal login the connection is closed,
    // and the device's plain-HTTP probe (redirected) shows the login.
    if super::forward::needs_portal(&snap, client_ip, &identity) {
        log.refused("portal");
        return;
    }
    if let Err(why) = p.dialer.guard.check(dst) {
        log.refused(forbidden_page(why).refused);
        return;
    }
    log.status(200);
    let t = Tunnel {
        p,
        snap,
        identity,
        log,
        connect_host: None,
        port: dst.port(),
        literal: Some(canonical_ip(dst.ip())),
        dial_name: dst.to_string(),
        addrs: vec![dst],
        safe: None,
    };
    tokio::select! {
        _ = t.run(stream) => {}
        _ = cancel.cancelled() => {}
    }
}

struct Tunnel {
    p: Arc<Proxy>,
    snap: Arc<Snapshot>,
    identity: Identity,
    log: Arc<RequestLog>,
    /// The CONNECT host (canonical IP text for literals); None in transparent mode.
    connect_host: Option<String>,
    port: u16,
    /// The IP the client named or connected to, when known.
    literal: Option<IpAddr>,
    /// What is dialled, for messages, and its addresses (already SSRF-checked).
    dial_name: String,
    addrs: Vec<SocketAddr>,
    /// A safe-search host the SNI decision sends the tunnel to instead.
    safe: Option<&'static str>,
}

impl Tunnel {
    async fn run<C: AsyncRead + AsyncWrite + Unpin>(mut self, mut client: C) {
        let cfg = &self.snap.config.proxy;
        let mut buf: Vec<u8> = Vec::with_capacity(2048);
        let mut reads = 0;
        let first = tokio::time::timeout(cfg.client_hello_timeout, async {
            loop {
                // Each look parses everything read so far: bounding the reads keeps
                // a hello dribbled a byte at a time from costing quadratic work.
                if buf.len() >= MAX_HELLO_BYTES || reads >= MAX_HELLO_READS {
                    return Ok(Some(FirstBytes::NotTls(MALFORMED)));
                }
                reads += 1;
                let mut chunk = [0u8; 4096];
                let n = client.read(&mut chunk).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(None);
                }
                buf.extend_from_slice(&chunk[..n]);
                match inspect(&buf) {
                    FirstBytes::NeedMore => continue,
                    other => return Ok(Some(other)),
                }
            }
        })
        .await;
        let not_tls = match first {
            // A silent client on a TLS port waits for the server to speak first:
            // SMTP, FTP, some VPNs. Not HTTPS either way.
            Err(_) => Err(Detected::tunnel("silent")),
            Ok(Err(_)) | Ok(Ok(None)) | Ok(Ok(Some(FirstBytes::NeedMore))) => return,
            Ok(Ok(Some(FirstBytes::NotTls(detected)))) => Err(detected),
            Ok(Ok(Some(FirstBytes::ClientHello { sni }))) => Ok(sni),
        };
        let sni = match not_tls {
            Ok(sni) => sni,
            Err(detected) => {
                if self.refuse_stream(&mut client, detected).await {
                    return;
                }
                // A profile that does not block the protocol's category (staff
                // allowed SSH on 443): the tunnel goes on, decided on the address.
                None
            }
        };
        self.log.sni(sni.as_deref());

        if let Some(name) = sni.as_deref() {
            let name = name.trim_end_matches('.');
            // A CONNECT to an IP literal that carries a named SNI differs too: an SNI
            // is never an address.
            let differs = match &self.connect_host {
                Some(h) => !h.trim_end_matches('.').eq_ignore_ascii_case(name),
                None => false,
            };
            if differs && cfg.sni_mismatch == SniMismatch::Block {
                self.log.blocked(
                    format!(
                        "{}: sni_mismatch = block",
                        self.snap.profile_name(self.identity.profile)
                    ),
                    None,
                );
                metrics::PROXY_CIRCUMVENTION_TOTAL
                    .with_label_values(&["sni_mismatch"])
                    .inc();
                self.refused_after_sniffing();
                let _ = client.write_all(&ALERT_ACCESS_DENIED).await;
                return;
            }
            let preq = PolicyRequest::Tls {
                host: Some(name),
                port: self.port,
                ip: self.literal,
            };
            let d = policy::decide(&self.snap, &preq, &self.identity, Utc::now());
            // The SNI decision is the record when it blocks, or when nothing else
            // named the site (transparent mode).
            if d.verdict == Verdict::Block || self.connect_host.is_none() || differs {
                self.log.decision(&self.snap, &d, &preq);
                self.log.target(name, name, self.port, None);
            }
            match d.verdict {
                Verdict::Block => {
                    self.refused_after_sniffing();
                    let _ = client.write_all(&ALERT_ACCESS_DENIED).await;
                    return;
                }
                Verdict::SafeSearch { target } => self.safe = Some(target),
                Verdict::Allow => {}
            }
            if self.connect_host.is_none()
                && self.safe.is_none()
                && let Some(dst) = self.literal
                && elsewhere_block(
                    &self.p,
                    &self.snap,
                    &self.identity,
                    name,
                    self.port,
                    dst,
                    &self.log,
                )
                .await
                .is_some()
            {
                self.refused_after_sniffing();
                let _ = client.write_all(&ALERT_ACCESS_DENIED).await;
                return;
            }
        } else if self.connect_host.is_none() {
            // Transparent TLS without SNI: only the address is known.
            let ip = self.literal.unwrap_or(IpAddr::from([0, 0, 0, 0]));
            let preq = PolicyRequest::Tls {
                host: None,
                port: self.port,
                ip: Some(ip),
            };
            let d = policy::decide(&self.snap, &preq, &self.identity, Utc::now());
            self.log.decision(&self.snap, &d, &preq);
            if d.verdict == Verdict::Block {
                self.refused_after_sniffing();
                let _ = client.write_all(&ALERT_ACCESS_DENIED).await;
                return;
            }
        }

        let dialled = match self.safe {
            Some(safe) => self.p.dialer.connect(safe, self.port).await,
            None => {
                self.p
                    .dialer
                    .connect_addrs(&self.dial_name, std::mem::take(&mut self.addrs))
                    .await
            }
        };
        let mut origin = match dialled {
            Ok(s) => s,
            Err(e) => {
                let page = dial_error_page(&e);
                tracing::debug!("tunnel dial failed: {e}");
                self.log.refused(page.refused);
                self.log.status(page.status.as_u16());
                return;
            }
        };
        if origin.write_all(&buf).await.is_err() {
            return;
        }
        self.log.up.fetch_add(buf.len() as u64, Ordering::Relaxed);
        metrics::PROXY_TUNNEL_BYTES_TOTAL
            .with_label_values(&["up"])
            .inc_by(buf.len() as u64);
        drop(buf);
        splice(client, origin, &self.log, cfg.idle_timeout).await;
    }

    /// A tunnel refused once its first bytes were read: the client was told 200
    /// (CONNECT) or nothing (transparent) before, but the record says what vigie
    /// did — 403, with a reference like every other block.
    fn refused_after_sniffing(&self) {
        self.log.status(403);
        self.log.reference(&pages::new_reference(Utc::now()));
    }

    /// Decides a stream that is not TLS by its protocol's category (`p2p`, `vpn`)
    /// and closes it when the profile blocks that; true when it was refused.
    async fn refuse_stream<C: AsyncWrite + Unpin>(
        &self,
        client: &mut C,
        detected: Detected,
    ) -> bool {
        self.log.protocol(detected.protocol);
        let preq = PolicyRequest::Stream {
            protocol: detected.protocol,
            category: detected.category,
        };
        let d = policy::decide(&self.snap, &preq, &self.identity, Utc::now());
        if d.verdict != Verdict::Block {
            return false;
        }
        self.log.decision(&self.snap, &d, &preq);
        self.log.refused("not_tls");
        self.refused_after_sniffing();
        metrics::PROXY_CIRCUMVENTION_TOTAL
            .with_label_values(&[detected.protocol])
            .inc();
        let _ = client.shutdown().await;
        true
    }
}

fn now_ms(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// Copies both ways until both sides are done, or nothing moved for `idle`.
/// Byte counts go to the record and the tunnel metrics as they flow.
pub async fn splice<A, B>(client: A, origin: B, log: &RequestLog, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let _active = ActiveTunnel::new();
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let (cr, cw) = tokio::io::split(client);
    let (or, ow) = tokio::io::split(origin);
    let up = pipe(cr, ow, &log.up, "up", &last, epoch);
    let down = pipe(or, cw, &log.down, "down", &last, epoch);
    let watch = async {
        loop {
            let quiet = now_ms(epoch).saturating_sub(last.load(Ordering::Relaxed));
            let left = (idle.as_millis() as u64).saturating_sub(quiet);
            if left == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(left)).await;
        }
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = watch => tracing::debug!("tunnel idle for {idle:?}: closed"),
    }
}

async fn pipe<R, W>(
    mut r: R,
    mut w: W,
    counter: &AtomicU64,
    label: &str,
    last: &AtomicU64,
    epoch: Instant,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; SPLICE_BUF];
    let bytes = metrics::PROXY_TUNNEL_BYTES_TOTAL.with_label_values(&[label]);
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        bytes.inc_by(n as u64);
        last.store(now_ms(epoch), Ordering::Relaxed);
    }
    // Half-close: the other side learns this direction is done.
    let _ = w.shutdown().await;
}

struct ActiveTunnel;

impl ActiveTunnel {
    fn new() -> Self {
        metrics::PROXY_ACTIVE_CONNECTIONS
            .with_label_values(&["tunnel"])
            .inc();
        ActiveTunnel
    }
}

impl Drop for ActiveTunnel {
    fn drop(&mut self) {
        metrics::PROXY_ACTIVE_CONNECTIONS
            .with_label_values(&["tunnel"])
            .dec();
    }
}
