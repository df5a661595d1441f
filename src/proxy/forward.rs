//! One HTTP request through the proxy: who is asking (client network, Basic auth),
//! what they ask for (absolute-form URL, or Host header in transparent mode), the
//! decision, then either a page vigie writes itself or the request forwarded to the
//! origin through the pooled client — bodies streamed both ways, hop-by-hop headers
//! removed, `Via` added, WebSocket upgrades spliced.
//!
//! CONNECT is handed to `tunnel` once the client is identified.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::Utc;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;

use super::dial::{DialError, uri_host};
use super::guard::{Forbidden, parse_host_ip};
use super::log::{Counted, Dir, Kind, RequestLog};
use super::pages::{self, Blocked};
use super::server::{Conn, Mode};
use super::{Body, Proxy, SHARED_ADDRESS_WINDOW};
use crate::i18n::{Lang, Msg};
use crate::identity::{Identity, IdentitySource};
use crate::policy::{self, Reason, Request as PolicyRequest, Verdict};
use crate::snapshot::{Snapshot, canonical_ip};

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the
/// proxy's own credentials.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// A response written by vigie, and what to record about it.
pub struct Page {
    pub status: StatusCode,
    pub reason: Msg,
    pub refused: &'static str,
}

pub async fn handle(
    p: Arc<Proxy>,
    conn: Arc<Conn>,
    mut req: Request<Incoming>,
    tracker: TaskTracker,
) -> Response<Body> {
    let snap = p.store.load();
    let lang = Lang::negotiate(
        req.headers()
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok()),
    );
    let is_connect = req.method() == Method::CONNECT;

    // The proxy's own pages, asked for in origin form (`GET /proxy.pac`).
    if conn.mode == Mode::Explicit && !is_connect && req.uri().scheme().is_none() && conn.client {
        let path = req.uri().path();
        if path == "/proxy.pac" || path == "/wpad.dat" {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.to_string());
            return pac_response(&snap, host.as_deref());
        }
    }

    let kind = match (is_connect, conn.mode) {
        (true, _) => Kind::Connect,
        (false, Mode::TransparentHttp) => Kind::TransparentHttp,
        (false, Mode::BlockPage | Mode::BlockPageTls) => Kind::BlockPage,
        _ => Kind::Http,
    };
    let client_ip = canonical_ip(conn.peer.ip());
    let log = RequestLog::new(
        kind,
        client_ip,
        req.method().as_str(),
        p.audit.clone(),
        snap.config.proxy.log_allowed,
    );
    let what = describe_target(&req, &conn);
    log.target(&what, "", 0, None);

    let refuse = |page: Page, log: &RequestLog| error_page(page, lang, &what, log);

    if !conn.client {
        return refuse(
            Page {
                status: StatusCode::FORBIDDEN,
                reason: Msg::NotClient,
                refused: "client_network",
            },
            &log,
        );
    }

    // The block-page address explains blocks; it never opens tunnels.
    if is_connect && conn.mode.is_block_page() {
        return refuse(bad_request(), &log);
    }

    let identity = match identify(&p, &snap, &conn, req.headers()).await {
        Ok(id) => id,
        Err(failed) => return auth_challenge(&snap, lang, &what, failed, &log),
    };
    log.identity(&snap, &identity);

    // A network that requires login: nobody browses before signing in at the portal.
    if needs_portal(&snap, client_ip, &identity) {
        if is_connect {
            return refuse(
                Page {
                    status: StatusCode::FORBIDDEN,
                    reason: Msg::PortalRequired,
                    refused: "portal",
                },
                &log,
            );
        }
        return portal_redirect(&p.portal_url, &req, &conn, &log);
    }

    if is_connect {
        return super::tunnel::connect(p, conn, snap, req, identity, lang, log, tracker).await;
    }

    // The target: absolute-form (explicit) or Host + original destination (transparent).
    let (uri, dial_to) = match target_of(&req, &conn) {
        Ok(t) => t,
        Err(page) => return refuse(page, &log),
    };
    let Some(host) = uri_host(&uri).map(str::to_string) else {
        return refuse(bad_request(), &log);
    };
    // `https` only on the TLS block page: the proxy forwards plain HTTP alone.
    let scheme = uri.scheme_str().unwrap_or("http").to_string();
    let default_port = if scheme == "https" { 443 } else { 80 };
    let port = uri.port_u16().unwrap_or(default_port);
    // What is decided is what is sent: the path in its normal spelling (no `..`,
    // no needless escapes); policy also sees runs of `/` merged (`path`).
    let raw_pq = uri.path_and_query().map(|x| x.as_str()).unwrap_or("/");
    let pq = super::path::normalize(raw_pq).into_owned();
    let policy_pq = super::path::for_policy(&pq);
    let literal = parse_host_ip(&host).map(canonical_ip);
    // Policy sees IP hosts in their canonical spelling, whatever the client wrote.
    let port_text = if port == default_port {
        String::new()
    } else {
        format!(":{port}")
    };
    let policy_url = match literal {
        Some(ip) => format!("{scheme}://{}{port_text}{policy_pq}", url_host(ip)),
        None => format!(
            "{scheme}://{}{port_text}{policy_pq}",
            host.to_ascii_lowercase()
        ),
    };
    log.target(&policy_url, &host, port, Some(&pq));

    // SSRF on what the client spelled (names are checked again after resolution).
    let checked = match (dial_to, literal) {
        (Some(dst), _) => Some(dst),
        (None, Some(ip)) => Some(SocketAddr::new(ip, port)),
        (None, None) => None,
    };
    if let Some(addr) = checked.filter(|_| !conn.mode.is_block_page())
        && let Err(why) = p.dialer.guard.check(addr)
    {
        return refuse(forbidden_page(why), &log);
    }

    let method = req.method().as_str().to_string();
    let preq = PolicyRequest::Http {
        method: &method,
        url: &policy_url,
    };
    let now = Utc::now();
    let d = policy::decide(&snap, &preq, &identity, now);
    log.decision(&snap, &d, &preq);
    // Transparent: the address the client really connects to is checked too (IP
    // lists: Tor relays, VPN endpoints), so a forged Host cannot launder it.
    if let (Verdict::Allow | Verdict::SafeSearch { .. }, Some(dst)) = (d.verdict, dial_to) {
        let ip_req = PolicyRequest::Tls {
            host: Some(&host),
            port,
            ip: Some(dst.ip()),
        };
        let d2 = policy::decide(&snap, &ip_req, &identity, now);
        if d2.verdict == Verdict::Block {
            log.decision(&snap, &d2, &ip_req);
            return block_page(&p, &snap, &d2, &identity, lang, &policy_url, &log, false);
        }
    }
    // Transparent: a Host that does not resolve to the address the client chose
    // may be a decoy; the address is then decided as a bare IP too.
    if let (Verdict::Allow, Some(dst), None) = (d.verdict, dial_to, literal)
        && let Some(d2) =
            super::tunnel::elsewhere_block(&p, &snap, &identity, &host, port, dst.ip(), &log).await
    {
        return block_page(&p, &snap, &d2, &identity, lang, &policy_url, &log, false);
    }
    // A BitTorrent tracker announce or scrape, whatever the tracker's name: the
    // torrent client learns no peer from a network that blocks P2P.
    if d.verdict != Verdict::Block
        && !conn.mode.is_block_page()
        && super::sniff::is_tracker_request(&policy_pq)
    {
        let sreq = PolicyRequest::Stream {
            protocol: "tracker_announce",
            category: "p2p",
        };
        let d3 = policy::decide(&snap, &sreq, &identity, now);
        if d3.verdict == Verdict::Block {
            log.protocol("tracker_announce");
            log.decision(&snap, &d3, &sreq);
            crate::metrics::PROXY_CIRCUMVENTION_TOTAL
                .with_label_values(&["tracker_announce"])
                .inc();
            return block_page(&p, &snap, &d3, &identity, lang, &policy_url, &log, false);
        }
    }
    if conn.mode.is_block_page() {
        // Nothing is forwarded from here: the page says why, or that the name is
        // no longer blocked for this client (a DNS answer cached from before).
        return match d.verdict {
            Verdict::Block => block_page(&p, &snap, &d, &identity, lang, &policy_url, &log, false),
            _ => error_page(
                Page {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    reason: Msg::NotBlockedNow,
                    refused: "not_blocked",
                },
                lang,
                &policy_url,
                &log,
            ),
        };
    }
    let dial_host = match d.verdict {
        Verdict::Block => {
            return block_page(&p, &snap, &d, &identity, lang, &policy_url, &log, false);
        }
        Verdict::SafeSearch { target } => Some(target),
        Verdict::Allow => None,
    };
    // A name that resolves into an address list is refused here as it is for a
    // CONNECT (resolving through vigie's cache; the connector asks it again).
    if dial_host.is_none() && dial_to.is_none() && literal.is_none() && !snap.lists.ips.is_empty() {
        let addrs = match p.dialer.resolve(&host, port).await {
            Ok(a) => a,
            Err(e) => return error_page(dial_error_page(&e), lang, &policy_url, &log),
        };
        if let Some(d2) = super::tunnel::listed_address_block(&snap, &identity, &host, &addrs, &log)
        {
            return block_page(&p, &snap, &d2, &identity, lang, &policy_url, &log, false);
        }
    }

    // Build the outgoing request.
    let upgrade = wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // RFC 9112 §3.2.2: the absolute-form target wins over a received Host header
    // (which could otherwise name another site than the one decided on).
    if conn.mode == Mode::Explicit || !parts.headers.contains_key(header::HOST) {
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(&host);
        if let Ok(v) = HeaderValue::from_str(authority) {
            parts.headers.insert(header::HOST, v);
        }
    }
    let upgrade_proto = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(proto) = upgrade_proto.filter(|_| upgrade) {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, proto);
    }
    // vigie answers `Expect: 100-continue` itself: hyper sends the interim 100 when
    // the body is first read, which happens only once the request is allowed.
    parts.headers.remove(header::EXPECT);
    parts.headers.append(header::VIA, p.via.clone());
    parts.version = Version::HTTP_11;
    let authority = match (dial_host, dial_to) {
        (Some(safe), _) => format!("{safe}:{port}"),
        (None, Some(dst)) => dst.to_string(),
        (None, None) => uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| host.clone()),
    };
    parts.uri = match Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(pq.as_str())
        .build()
    {
        Ok(u) => u,
        Err(_) => return refuse(bad_request(), &log),
    };
    let body = Counted::new(body, log.clone(), Dir::Up).boxed();
    let out = Request::from_parts(parts, body);

    let first_byte = snap.config.proxy.first_byte_timeout;
    let idle = snap.config.proxy.idle_timeout;
    // The origin has `first_byte` to answer once the client stops sending: a long
    // upload (a video to a school drive) is not cut by it, a silent origin is.
    let request = p.client.request(out);
    tokio::pin!(request);
    let mut sent = log.up.load(Ordering::Relaxed);
    let answered = loop {
        match tokio::time::timeout(first_byte, &mut request).await {
            Ok(r) => break Ok(r),
            Err(_) => {
                let now = log.up.load(Ordering::Relaxed);
                if now == sent {
                    break Err(());
                }
                sent = now;
            }
        }
    };
    let resp = match answered {
        Err(_) => {
            return refuse(
                Page {
                    status: StatusCode::GATEWAY_TIMEOUT,
                    reason: Msg::OriginTimeout,
                    refused: "upstream_timeout",
                },
                &log,
            );
        }
        Ok(Err(e)) => return refuse(upstream_error(&e), &log),
        Ok(Ok(r)) => r,
    };
    let mut resp = resp;
    let status = resp.status();
    log.status(status.as_u16());
    crate::metrics::PROXY_RESPONSE_SECONDS
        .with_label_values(&[kind.as_str()])
        .observe(log.started().elapsed().as_secs_f64());

    if status == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let origin_upgrade = hyper::upgrade::on(&mut resp);
        let (mut rp, _) = resp.into_parts();
        let proto = rp.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut rp.headers);
        if let Some(proto) = proto {
            rp.headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            rp.headers.insert(header::UPGRADE, proto);
        }
        rp.headers.append(header::VIA, p.via.clone());
        let tunnel_log = log.clone();
        let holds_place = conn.clone();
        tracker.spawn(async move {
            let _conn = holds_place;
            match tokio::try_join!(client_upgrade, origin_upgrade) {
                Ok((c, o)) => {
                    super::tunnel::splice(TokioIo::new(c), TokioIo::new(o), &tunnel_log, idle).await
                }
                Err(e) => tracing::debug!("upgrade failed: {e}"),
            }
        });
        return Response::from_parts(rp, pages::empty());
    }

    let (mut rp, body) = resp.into_parts();
    // vigie speaks HTTP/1.1 to the client whatever the origin spoke.
    rp.version = Version::HTTP_11;
    strip_hop_by_hop(&mut rp.headers);
    rp.headers.append(header::VIA, p.via.clone());
    Response::from_parts(rp, Counted::new(body, log, Dir::Down).boxed())
}

/// `host[:port]` or the URL, for records and pages before anything is parsed.
fn describe_target(req: &Request<Incoming>, conn: &Conn) -> String {
    if req.method() == Method::CONNECT {
        return req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
    }
    match conn.mode {
        Mode::TransparentHttp => {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            format!(
                "http://{host}{}",
                req.uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
            )
        }
        _ => req.uri().to_string(),
    }
}

/// The absolute URI asked for and, in transparent mode, where to connect.
fn target_of(req: &Request<Incoming>, conn: &Conn) -> Result<(Uri, Option<SocketAddr>), Page> {
    match conn.mode {
        Mode::BlockPage | Mode::BlockPageTls => {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| {
                    h.rsplit_once(':')
                        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
                        .map(|(h, _)| h)
                        .unwrap_or(h)
                })
                .filter(|h| !h.is_empty())
                .ok_or_else(bad_request)?;
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let scheme = if conn.mode == Mode::BlockPageTls {
                "https"
            } else {
                "http"
            };
            let uri: Uri = format!("{scheme}://{host}{pq}")
                .parse()
                .map_err(|_| bad_request())?;
            Ok((uri, None))
        }
        Mode::TransparentHttp => {
            let dst = conn.original_dst.ok_or_else(bad_request)?;
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| !h.is_empty())
                .map(str::to_string)
                .unwrap_or_else(|| url_host(dst.ip()));
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let uri: Uri = format!("http://{host}{pq}")
                .parse()
                .map_err(|_| bad_request())?;
            Ok((uri, Some(dst)))
        }
        _ => {
            let uri = req.uri().clone();
            match uri.scheme_str() {
                Some("http") if uri.authority().is_some() => Ok((uri, None)),
                Some(_) => Err(Page {
                    status: StatusCode::BAD_REQUEST,
                    reason: Msg::UnsupportedScheme,
                    refused: "bad_request",
                }),
                // Origin form sent to a proxy: a client that does not know it is
                // talking to one, or a loop.
                None => Err(bad_request()),
            }
        }
    }
}

fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn bad_request() -> Page {
    Page {
        status: StatusCode::BAD_REQUEST,
        reason: Msg::BadRequest,
        refused: "bad_request",
    }
}

pub fn forbidden_page(why: Forbidden) -> Page {
    match why {
        Forbidden::Own => Page {
            status: StatusCode::FORBIDDEN,
            reason: Msg::Loop,
            refused: "own",
        },
        Forbidden::Special | Forbidden::Internal => Page {
            status: StatusCode::FORBIDDEN,
            reason: Msg::Internal,
            refused: "internal",
        },
    }
}

/// The page for a failed origin exchange, from the dial error inside it if any.
fn upstream_error(e: &hyper_util::client::legacy::Error) -> Page {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(d) = s.downcast_ref::<DialError>() {
            return dial_error_page(d);
        }
        source = s.source();
    }
    Page {
        status: StatusCode::BAD_GATEWAY,
        reason: if e.is_connect() {
            Msg::OriginUnreachable
        } else {
            Msg::OriginError
        },
        refused: "upstream",
    }
}

pub fn dial_error_page(d: &DialError) -> Page {
    match d {
        DialError::Forbidden { why, .. } => forbidden_page(*why),
        DialError::Resolve { .. } | DialError::Lookup { .. } | DialError::NoAddress { .. } => {
            Page {
                status: StatusCode::BAD_GATEWAY,
                reason: Msg::NameNotFound,
                refused: "dns",
            }
        }
        DialError::Timeout { .. } => Page {
            status: StatusCode::GATEWAY_TIMEOUT,
            reason: Msg::OriginTimeout,
            refused: "upstream_timeout",
        },
        DialError::Connect { .. } | DialError::NoHost => Page {
            status: StatusCode::BAD_GATEWAY,
            reason: Msg::OriginUnreachable,
            refused: "upstream",
        },
    }
}

/// An error page, recorded as refused.
pub fn error_page(page: Page, lang: Lang, what: &str, log: &RequestLog) -> Response<Body> {
    let reference = pages::new_reference(Utc::now());
    log.refused(page.refused);
    log.status(page.status.as_u16());
    log.reference(&reference);
    pages::error_response(page.status, lang, page.reason, what, &reference)
}

/// The blocking rule in the reader's language, for the page's "Rule" row.
fn rule_words(snap: &Snapshot, d: &policy::Decision, lang: Lang) -> String {
    let profile = snap.config.profiles.get(d.profile as usize);
    let p = snap.profile_name(d.profile);
    let c = d
        .category
        .and_then(|c| snap.config.categories.get(c as usize))
        .map(|c| match lang {
            Lang::Fr => c.fr.as_str(),
            Lang::En => c.en.as_str(),
        })
        .unwrap_or_else(|| d.category_name(snap));
    let fill = |m: Msg, s: &str, n: &str, e: &str| {
        crate::i18n::t(lang, m)
            .replace("{p}", p)
            .replace("{c}", c)
            .replace("{s}", s)
            .replace("{n}", n)
            .replace("{e}", e)
    };
    match d.reason {
        Reason::BlockedCategory => fill(Msg::RuleCategory, "", "", ""),
        Reason::ScheduledRule(i) => {
            let n = (i + 1).to_string();
            let schedule = profile
                .and_then(|p| p.rules.get(i as usize))
                .and_then(|r| r.schedule)
                .and_then(|s| snap.config.schedules.get(s))
                .map(|s| s.name.as_str());
            match schedule {
                Some(s) => fill(Msg::RuleScheduledWhen, s, &n, ""),
                None => fill(Msg::RuleScheduled, "", &n, ""),
            }
        }
        Reason::DenyOverride(i) => {
            let entry = profile
                .and_then(|p| p.deny.get(i as usize))
                .map(|o| o.to_string())
                .unwrap_or_default();
            fill(Msg::RuleDeny, "", "", &entry)
        }
        Reason::BareIp => fill(Msg::RuleBareIp, "", "", ""),
        Reason::Circumvention => fill(Msg::RuleCircumvention, "", "", ""),
        Reason::Signature => fill(Msg::RuleProtocol, "", "", ""),
        Reason::Default => fill(Msg::RuleUnknownProfile, "", "", ""),
        _ => d.rule(snap),
    }
}

/// The reason shown on a block page for a decision.
pub fn reason_msg(reason: Reason) -> Msg {
    match reason {
        Reason::BareIp => Msg::ReasonBareIp,
        Reason::DenyOverride(_) => Msg::ReasonDenyOverride,
        Reason::Circumvention => Msg::ReasonCircumvention,
        Reason::Signature => Msg::ReasonProtocol,
        // `Default` blocks only when the identity's profile no longer exists.
        Reason::Default => Msg::ReasonUnknownProfile,
        _ => Msg::ReasonCategory,
    }
}

#[allow(clippy::too_many_arguments)]
pub fn block_page(
    p: &Proxy,
    snap: &Snapshot,
    d: &policy::Decision,
    identity: &Identity,
    lang: Lang,
    what: &str,
    log: &RequestLog,
    tunnel: bool,
) -> Response<Body> {
    let now = Utc::now();
    let reference = pages::new_reference(now);
    let rule = d.rule(snap);
    let rule_words = rule_words(snap, d, lang);
    log.reference(&reference);
    log.status(403);
    pages::block_response(
        snap,
        &Blocked {
            lang,
            what,
            category: d.category,
            profile: d.profile,
            user: identity.user.as_deref(),
            rule: &rule,
            rule_words: &rule_words,
            reason: reason_msg(d.reason),
            reference: &reference,
            time: now,
            review_url: &p.review_url,
            tunnel,
        },
    )
}

/// Whether `ip` is on a `[portal] networks` range and nobody has signed in there
/// (a static mapping counts as signed in: printers and lab machines never log in).
pub fn needs_portal(snap: &Snapshot, ip: IpAddr, id: &Identity) -> bool {
    snap.config.portal.networks.iter().any(|n| n.contains(&ip))
        && id.user.is_none()
        && id.source != IdentitySource::Static
}

/// `302` to the portal, with the page asked for as the place to come back to. This
/// is also what the operating systems' connectivity probes
/// (`connectivitycheck.gstatic.com`, `captive.apple.com`, `www.msftconnecttest.com`,
/// `detectportal.firefox.com`) get, and what makes devices pop the login up.
fn portal_redirect(
    portal_url: &str,
    req: &Request<Incoming>,
    conn: &Conn,
    log: &RequestLog,
) -> Response<Body> {
    let back = match target_of(req, conn) {
        Ok((uri, _)) if uri.scheme().is_some() => uri.to_string(),
        _ => String::new(),
    };
    let location = if back.is_empty() {
        portal_url.to_string()
    } else {
        format!("{portal_url}?url={}", pages::query_escape(&back))
    };
    log.refused("portal");
    log.status(302);
    let mut resp = Response::new(pages::full(bytes::Bytes::from(format!(
        "<!DOCTYPE html><html lang=\"fr-CA\"><head><meta charset=\"utf-8\"><title>Portail</title></head>\
<body><p><a href=\"{href}\">Connexion / Sign in</a></p></body></html>\n",
        href = pages::escape(&location)
    ))));
    *resp.status_mut() = StatusCode::FOUND;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Why identification failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Invalid,
    Throttled,
    /// The directory could not be asked.
    Unavailable,
}

/// The identity behind a request: credentials when sent (explicit mode), else the
/// identity table (a portal or proxy login bound to the address, a static mapping,
/// the network). Authentication is demanded only where configured, and not from a
/// client a login already identified. Valid credentials also bind the address to the
/// person, so their DNS queries are theirs too; failed ones are audited.
async fn identify(
    p: &Arc<Proxy>,
    snap: &Snapshot,
    conn: &Conn,
    headers: &HeaderMap,
) -> Result<Identity, AuthFailure> {
    use crate::identity::users::Credentials;
    use crate::identity::{Binding, LoginDoor, LoginOutcome, login_event};
    let ip = canonical_ip(conn.peer.ip());
    let now = Utc::now();
    // Credentials beat the identity table (identity::IdentityTable's precedence).
    let id = p.identities.resolve(snap, ip, now);
    if conn.mode != Mode::Explicit {
        return Ok(id);
    }
    let required = snap
        .config
        .proxy
        .auth_required_networks
        .iter()
        .any(|n| n.contains(&ip));
    let Some(v) = headers.get(header::PROXY_AUTHORIZATION) else {
        // Where credentials are required, only a portal login stands in for them: an
        // address bound by someone's proxy login (for DNS attribution) may be shared
        // (NAT, a lab's terminal server), so each proxy request proves itself.
        if required && !(id.user.is_some() && id.source == IdentitySource::Portal) {
            return Err(AuthFailure::Missing);
        }
        return Ok(id);
    };
    let started = std::time::Instant::now();
    let (user, _) = crate::identity::users::parse_basic(v.as_bytes()).unwrap_or_default();
    let failed = |outcome: LoginOutcome, why: AuthFailure| {
        p.audit.record(login_event(
            snap,
            LoginDoor::Proxy,
            ip,
            &user,
            None,
            outcome,
            started,
        ));
        Err(why)
    };
    match p.auth.check(ip, v.as_bytes()).await {
        Credentials::Valid(v) => {
            let portal = &snap.config.portal;
            let current = p.identities.get(ip, now);
            let known = current
                .as_ref()
                .is_some_and(|b| b.user == v.user && b.source == IdentitySource::ProxyAuth);
            // Someone else's proxy login on this address, made moments ago: a shared
            // address (a lab's terminal server, NAT). The first login keeps the
            // address for DNS attribution instead of the binding flapping — and
            // reading the neighbour table, copying the table and writing a login
            // event — on every request; each person's login is recorded once.
            let shared = !known
                && current.as_ref().is_some_and(|b| {
                    b.source == IdentitySource::ProxyAuth
                        && now.signed_duration_since(b.since) < SHARED_ADDRESS_WINDOW
                });
            let first_here =
                !known && (!shared || p.shared_logins.get(&(ip, v.user.clone())).is_none());
            if shared {
                p.shared_logins.insert((ip, v.user.clone()), ());
            } else if !known {
                let neighbours = tokio::task::spawn_blocking(crate::identity::neigh::read)
                    .await
                    .unwrap_or_default();
                p.identities.bind(
                    ip,
                    Binding::new(
                        v.user.clone(),
                        v.groups.clone(),
                        v.profile.clone(),
                        IdentitySource::ProxyAuth,
                        now,
                        portal.max_session,
                        Some(portal.idle_timeout),
                    )
                    .on_device_of(ip, &neighbours),
                );
            }
            // This request is the credential's person, whatever the table holds
            // (two people behind one address: each request is still theirs).
            // A profile the config no longer has falls back to the default (the
            // strictest), as in the identity table, never to the network's.
            let profile = match v.profile.as_deref() {
                Some(name) => snap
                    .config
                    .profile_id(name)
                    .unwrap_or(snap.config.default_profile),
                None => crate::identity::Identity::from_ip(snap, ip).profile,
            };
            let me = Identity {
                user: Some(v.user.clone()),
                groups: v.groups.clone(),
                profile,
                source: IdentitySource::ProxyAuth,
            };
            if first_here {
                p.audit.record(login_event(
                    snap,
                    LoginDoor::Proxy,
                    ip,
                    &v.user,
                    Some(&me),
                    LoginOutcome::Success { via: v.via },
                    started,
                ));
            }
            Ok(me)
        }
        Credentials::Invalid => failed(LoginOutcome::Failed, AuthFailure::Invalid),
        Credentials::Throttled => failed(LoginOutcome::Throttled, AuthFailure::Throttled),
        Credentials::Unavailable => failed(LoginOutcome::Unavailable, AuthFailure::Unavailable),
    }
}

fn auth_challenge(
    snap: &Snapshot,
    lang: Lang,
    what: &str,
    failed: AuthFailure,
    log: &RequestLog,
) -> Response<Body> {
    let (reason, refused) = match failed {
        AuthFailure::Missing => (Msg::AuthRequired, "auth"),
        AuthFailure::Invalid => (Msg::AuthFailed, "auth"),
        AuthFailure::Throttled => (Msg::AuthThrottled, "auth_throttled"),
        AuthFailure::Unavailable => {
            // Not the person's fault: no challenge, the browser would only ask again.
            return error_page(
                Page {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    reason: Msg::AuthUnavailable,
                    refused: "auth_unavailable",
                },
                lang,
                what,
                log,
            );
        }
    };
    let mut resp = error_page(
        Page {
            status: StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            reason,
            refused,
        },
        lang,
        what,
        log,
    );
    let realm = &snap.config.proxy.auth_realm;
    if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\"")) {
        resp.headers_mut().insert(header::PROXY_AUTHENTICATE, v);
    }
    resp
}

fn pac_response(snap: &Snapshot, host: Option<&str>) -> Response<Body> {
    let listen = host.unwrap_or("127.0.0.1:3128");
    let mut resp = Response::new(pages::full(bytes::Bytes::from(super::pac::render(
        snap, listen,
    ))));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ns-proxy-autoconfig"),
    );
    resp
}

/// Whether a request asks to switch protocols (WebSocket): `Connection: upgrade`
/// with an `Upgrade` header.
fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_blocking_reason_has_its_own_words() {
        use crate::i18n::{Lang, t};
        for (reason, msg) in [
            (Reason::BareIp, Msg::ReasonBareIp),
            (Reason::DenyOverride(0), Msg::ReasonDenyOverride),
            (Reason::Circumvention, Msg::ReasonCircumvention),
            (Reason::Signature, Msg::ReasonProtocol),
            (Reason::Default, Msg::ReasonUnknownProfile),
            (Reason::BlockedCategory, Msg::ReasonCategory),
            (Reason::ScheduledRule(0), Msg::ReasonCategory),
        ] {
            assert_eq!(reason_msg(reason), msg, "{reason:?}");
            assert_ne!(t(Lang::Fr, msg), t(Lang::En, msg));
        }
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn upgrade_detection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(!wants_upgrade(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
    }
}
