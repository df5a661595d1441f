//! End to end: the real `vigie` binary's forward proxy on loopback, driven by
//! `curl -x` and by hyper/tokio-rustls clients, in front of origin servers this test
//! starts on 127.0.0.1:0 (plain HTTP with streaming, echo and WebSocket routes, and
//! a rustls HTTPS server). Every wait is bounded.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Vigie;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GAMBLING: &str = "0-casino.info";

// ---------------------------------------------------------------- origins

/// A plain HTTP origin: `/hello`, `/big?n=BYTES` (streamed), `/echo` (POST body
/// back), `/ws` (WebSocket echo). Counts accepted TCP connections.
struct Origin {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

type OBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(s: impl Into<Bytes>) -> OBody {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

async fn origin_service(mut req: Request<Incoming>) -> Result<Response<OBody>, std::io::Error> {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/hello" => {
            let via = req
                .headers()
                .get("via")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let pa = req.headers().contains_key("proxy-authorization");
            Ok(Response::builder()
                .header("x-origin-saw-via", via)
                .header("x-origin-saw-proxy-auth", pa.to_string())
                .body(full("hello from origin"))
                .unwrap())
        }
        "/big" => {
            let n: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("n="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(0u64, move |sent| {
                let chunk = chunk.clone();
                async move {
                    if sent >= n {
                        return None;
                    }
                    let len = (n - sent).min(chunk.len() as u64) as usize;
                    Some((
                        Ok::<_, std::io::Error>(Frame::data(chunk.slice(..len))),
                        sent + len as u64,
                    ))
                }
            });
            Ok(Response::new(StreamBody::new(stream).boxed()))
        }
        "/stall" => {
            // A chunk, then nothing ever again (the connection stays open).
            let first = futures_util::stream::once(async {
                Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"first chunk\n")))
            });
            let stream = futures_util::StreamExt::chain(first, futures_util::stream::pending());
            Ok(Response::new(StreamBody::new(stream).boxed()))
        }
        "/echo" => {
            let body = req
                .into_body()
                .collect()
                .await
                .map_err(std::io::Error::other)?
                .to_bytes();
            Ok(Response::new(full(body)))
        }
        "/ws" => {
            let key = req
                .headers()
                .get("sec-websocket-key")
                .and_then(|k| k.to_str().ok())
                .unwrap_or("")
                .to_string();
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = upgrade.await {
                    let mut io = TokioIo::new(up);
                    // Echo frames: read a masked client frame, answer it unmasked.
                    while let Ok(Some((op, payload))) = ws_read(&mut io).await {
                        if op == 8 || ws_write(&mut io, op, &payload, false).await.is_err() {
                            break;
                        }
                    }
                }
            });
            Ok(Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", ws_accept(&key))
                .body(full(""))
                .unwrap())
        }
        _ => Ok(Response::builder()
            .status(404)
            .body(full("not found"))
            .unwrap()),
    }
}

impl Origin {
    fn start() -> Origin {
        let (rt, listener, addr) = common::server_runtime();
        let accepted = Arc::new(AtomicUsize::new(0));
        let acc = accepted.clone();
        rt.spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(origin_service);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Origin {
            addr,
            accepted,
            _rt: rt,
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// A rustls HTTPS origin for `localhost` (self-signed, its certificate in PEM).
struct TlsOrigin {
    addr: SocketAddr,
    cert_pem: String,
    cert_der: tokio_rustls::rustls::pki_types::CertificateDer<'static>,
    accepted: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

impl TlsOrigin {
    fn start() -> TlsOrigin {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "0-casino.info".to_string(),
        ])
        .unwrap();
        let cert_pem = ck.cert.pem();
        let cert_der = ck.cert.der().clone();
        let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(
            tokio_rustls::rustls::pki_types::PrivatePkcs8KeyDer::from(
                ck.signing_key.serialize_der(),
            ),
        );
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (rt, listener, addr) = common::server_runtime();
        let accepted = Arc::new(AtomicUsize::new(0));
        let acc = accepted.clone();
        rt.spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(origin_service);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsOrigin {
            addr,
            cert_pem,
            cert_der,
            accepted,
            _rt: rt,
        }
    }
}

// ---------------------------------------------------------------- WebSocket bits

fn ws_accept(key: &str) -> String {
    use base64::Engine as _;
    let mut input = key.as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

async fn ws_write<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    op: u8,
    payload: &[u8],
    mask: bool,
) -> std::io::Result<()> {
    assert!(payload.len() < 126);
    let mut frame = vec![
        0x80 | op,
        (payload.len() as u8) | if mask { 0x80 } else { 0 },
    ];
    if mask {
        let key = [0x12u8, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    w.write_all(&frame).await
}

async fn ws_read<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 2];
    if r.read_exact(&mut head).await.is_err() {
        return Ok(None);
    }
    let op = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let len = (head[1] & 0x7f) as usize;
    assert!(len < 126, "test frames are short");
    let mut key = [0u8; 4];
    if masked {
        r.read_exact(&mut key).await?;
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Ok(Some((op, payload)))
}

// ---------------------------------------------------------------- vigie + clients

/// Clients of the test config: 127.0.0.1 is `eleves` (bare IP blocked), 127.0.0.3
/// is `personnel` (bare IP allowed), 127.0.0.4 must authenticate, 127.0.0.9 is
/// not a client at all.
const PERSONNEL: &str = "127.0.0.3";
const AUTH_CLIENT: &str = "127.0.0.4";
const OUTSIDER: &str = "127.0.0.9";

/// `extra`: more `[proxy]` keys.
fn write_proxy_config(dir: &Path, allow_loopback: bool, tls_port: u16, extra: &str) -> PathBuf {
    let lists = Path::new(env!("CARGO_MANIFEST_DIR")).join("blocklists");
    let text = format!(
        r#"
default_profile = "eleves"
client_networks = ["127.0.0.1/32", "127.0.0.3/32", "127.0.0.4/32", "::1/128"]
lists_dir = "{lists}"

[dns]
rate_limit_qps = 0

[audit]
jsonl = true

[proxy]
allow_loopback_origins = {allow_loopback}
connect_ports = [443, {tls_port}]
auth_required_networks = ["127.0.0.4/32"]
users_file = "{users}"
header_timeout_ms = 1500
{extra}
client_hello_timeout_ms = 1500

[[categories]]
id = "gambling"
fr = "Jeux d'argent"
en = "Gambling"

[[categories]]
id = "p2p"
fr = "Poste-à-poste"
en = "Peer-to-peer"

[[categories]]
id = "vpn"
fr = "RPV"
en = "VPN"

[[lists]]
category = "gambling"
format = "ut1"
path = "ut1/gambling"

[profiles.eleves]
fr = "Élèves"
en = "Students"
block = ["gambling", "p2p", "vpn"]
bare_ip = "block"

# Staff may reach an SSH server on port 443; P2P stays blocked.
[profiles.personnel]
fr = "Personnel"
en = "Staff"
block = ["gambling", "p2p"]
bare_ip = "allow"

[[networks]]
cidr = "127.0.0.3/32"
profile = "personnel"

[[networks]]
cidr = "127.0.0.4/32"
profile = "personnel"
"#,
        lists = lists.display(),
        users = dir.join("users").display(),
    );
    let path = dir.join("vigie.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits (bounded, 5 s) for `cond`.
async fn wait_until(cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met in 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn start_vigie(dir: &Path, allow_loopback: bool, tls_port: u16) -> Vigie {
    start_vigie_with(dir, allow_loopback, tls_port, "")
}

fn start_vigie_with(dir: &Path, allow_loopback: bool, tls_port: u16, extra: &str) -> Vigie {
    let cfg = write_proxy_config(dir, allow_loopback, tls_port, extra);
    // The DNS service needs an upstream; the proxy tests never query it.
    Vigie::start(&cfg, &["127.0.0.1:9".parse().unwrap()], dir)
}

struct Curl {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Curl {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// `curl -x proxy args…`, bounded to 60 s; the last response's status and headers.
fn curl(proxy: SocketAddr, args: &[&str]) -> Curl {
    curl_with(&["-x", &format!("http://{proxy}")], args)
}

/// `curl args…` with no proxy (`--noproxy '*'`: ignore any proxy of the environment).
fn curl_direct(args: &[&str]) -> Curl {
    curl_with(&["--noproxy", "*"], args)
}

fn curl_with(how: &[&str], args: &[&str]) -> Curl {
    let dir = tempfile::tempdir().unwrap();
    let hdr = dir.path().join("h");
    let out = Command::new("curl")
        .args(["-s", "--max-time", "60"])
        .args(how)
        .arg("-D")
        .arg(&hdr)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let headers = std::fs::read_to_string(&hdr).unwrap_or_default();
    // With CONNECT, -D holds the proxy's answer and then the origin's: keep the last.
    let last = headers.rsplit("HTTP/").next().unwrap_or("").to_string();
    let status = last
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Curl {
        status,
        headers: last,
        body: out.stdout,
    }
}

/// Waits (at most 5 s) for an audit line containing every needle.
fn audit_line(dir: &Path, needles: &[&str]) -> serde_json::Value {
    let path = dir.join("audit.jsonl");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .rev()
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            return serde_json::from_str(line).unwrap();
        }
        if Instant::now() > deadline {
            panic!("no audit line with {needles:?} in:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET url` sent as written, with `Accept-Language: en`; status and body.
fn raw_get(proxy: SocketAddr, url: &str) -> (u16, String) {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let host = url.split('/').nth(2).unwrap_or("");
    write!(
        s,
        "GET {url} HTTP/1.1\r\nHost: {host}\r\nAccept-Language: en\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Opens a connection to the proxy from `src`, sends `CONNECT target`, and returns
/// the stream after the proxy's answer head, with its status.
async fn connect_via(
    proxy: SocketAddr,
    src: &str,
    target: &str,
    extra: &str,
) -> (u16, String, tokio::net::TcpStream) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(src.parse().unwrap(), 0)).unwrap();
    let mut s = sock.connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("proxy answered CONNECT")
            .unwrap();
        assert!(
            n == 1,
            "proxy closed during CONNECT head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, s)
}

fn tls_client(
    cert: &tokio_rustls::rustls::pki_types::CertificateDer<'static>,
) -> tokio_rustls::TlsConnector {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

// ---------------------------------------------------------------- tests

#[test]
fn proxy_http_allowed_and_blocked_with_block_page_in_both_languages() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start();
    let v = start_vigie(dir.path(), true, 443);

    // Allowed: forwarded, Via added both ways, credentials never forwarded.
    let r = curl(
        v.proxy,
        &[&format!("http://localhost:{}/hello", origin.port())],
    );
    assert_eq!(r.status, 200, "{}", r.headers);
    assert_eq!(r.text(), "hello from origin");
    assert_eq!(r.header("via").as_deref(), Some("1.1 vigie"));
    assert_eq!(r.header("x-origin-saw-via").as_deref(), Some("1.1 vigie"));
    let ev = audit_line(dir.path(), &["/hello", "\"status\":200"]);
    assert_eq!(ev["verdict"], "allow");
    assert_eq!(ev["method"], "GET");
    assert_eq!(ev["host"], "localhost");
    assert_eq!(ev["port"], origin.port());
    assert_eq!(ev["path"], "/hello");
    assert_eq!(ev["bytes_down"], 17);
    assert_eq!(ev["profile"], "eleves");

    // Blocked, French by default (fr-CA first), then English on request.
    let url = format!("http://www.{GAMBLING}/page?x='onload&y=1");
    let fr = curl(v.proxy, &["-H", "Accept-Language: fr-CA,fr;q=0.9", &url]);
    assert_eq!(fr.status, 403);
    let page = fr.text();
    for needle in [
        "Accès bloqué",
        "Jeux d&#39;argent",
        "Élèves",
        "non identifié",
        "Demander une révision",
        // The rule in French on the page; as configured in the header (below).
        "eleves : catégorie « Jeux d&#39;argent » bloquée",
    ] {
        assert!(page.contains(needle), "missing {needle:?} in\n{page}");
    }
    assert!(!page.contains("block gambling"), "{page}");
    assert_eq!(
        fr.header("x-vigie-rule").as_deref(),
        Some("eleves: block gambling")
    );
    assert!(!page.contains("'onload"), "the URL must be escaped");
    assert!(page.contains("page?x=&#39;onload&amp;y=1"), "{page}");
    let reference = fr.header("x-vigie-reference").expect("reference header");
    assert!(page.contains(&reference));
    assert!(
        page.contains(&format!(
            "{}/review?ref={reference}",
            format_args!("http://{}", v.admin)
        )),
        "{page}"
    );
    assert_eq!(fr.header("content-language").as_deref(), Some("fr-CA"));
    let ev = audit_line(dir.path(), &[&reference]);
    assert_eq!(ev["verdict"], "block");
    assert_eq!(ev["category"], "gambling");
    assert_eq!(ev["status"], 403);
    assert_eq!(ev["entry"], GAMBLING);
    assert_eq!(ev["rule"], "eleves: block gambling");

    let en = curl(
        v.proxy,
        &["-H", "Accept-Language: en-US,en;q=0.9,fr;q=0.5", &url],
    );
    assert_eq!(en.status, 403);
    let page = en.text();
    for needle in [
        "Access blocked",
        "Gambling",
        "Students",
        "not identified",
        "Request a review",
        "eleves: category “Gambling” blocked",
    ] {
        assert!(page.contains(needle), "missing {needle:?} in\n{page}");
    }

    // Origin-form requests are not proxied (they would be a loop), the PAC is served.
    let r = curl(v.proxy, &[&format!("http://{}/proxy.pac", v.proxy)]);
    assert_eq!(
        r.status, 403,
        "the proxy's own address is refused as a target"
    );
    let pac = v.http_get("/proxy.pac");
    assert!(pac.contains(&format!("PROXY {}", v.proxy)), "{pac}");
    assert!(v.http_get("/wpad.dat").contains("FindProxyForURL"));

    let m = v.http_get("/metrics");
    assert!(
        m.contains("vigie_proxy_requests_total{kind=\"http\",verdict=\"block\"}"),
        "{m}"
    );
    assert!(
        m.contains(
            "vigie_decisions_total{category=\"gambling\",service=\"proxy\",verdict=\"block\"}"
        ),
        "{m}"
    );
    assert!(m.contains("vigie_proxy_upstream_connect_seconds_bucket"));
}

#[test]
fn proxy_keep_alive_both_sides_and_100_continue() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start();
    let v = start_vigie(dir.path(), true, 443);
    let url = format!("http://localhost:{}/hello", origin.port());
    // Three requests in one curl: one connection to the proxy, one to the origin.
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "30",
            "-x",
            &format!("http://{}", v.proxy),
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_code}:%{num_connects}\n", &url, &url, &url])
        .output()
        .unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines,
        ["200:1", "200:0", "200:0"],
        "client side reused its connection"
    );
    assert_eq!(
        origin.accepted.load(Ordering::SeqCst),
        1,
        "upstream pool reused the origin connection"
    );

    // A raw keep-alive exchange with a hyper client, and a POST with Expect: 100-continue.
    rt().block_on(async {
        let stream = tokio::net::TcpStream::connect(v.proxy).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        for i in 0..5 {
            let body = format!("payload {i} ").repeat(1000);
            let req = Request::post(format!("http://localhost:{}/echo", origin.port()))
                .header("host", format!("localhost:{}", origin.port()))
                .header("expect", "100-continue")
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let got = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(got, body.as_bytes());
        }
    });
    let ev = audit_line(dir.path(), &["/echo", "POST"]);
    assert_eq!(ev["bytes_up"], ev["bytes_down"]);
    assert!(ev["bytes_up"].as_u64().unwrap() >= 10_000, "{ev}");
    // A blocked POST with Expect never gets 100 Continue: the body is never read.
    let upload = dir.path().join("upload.bin");
    std::fs::write(&upload, vec![0u8; 2 << 20]).unwrap();
    let r = curl(
        v.proxy,
        &[
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &format!("@{}", upload.display()),
            &format!("http://{GAMBLING}/upload"),
        ],
    );
    assert_eq!(r.status, 403);
    let ev = audit_line(dir.path(), &["/upload"]);
    assert_eq!(ev["bytes_up"], 0, "the blocked body was never read");
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[test]
fn proxy_streams_a_large_download_in_bounded_memory() {
    const SIZE: u64 = 1 << 30; // 1 GiB
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start();
    let v = start_vigie(dir.path(), true, 443);
    // Warm up (pool, allocator) before taking the baseline.
    let _ = curl(
        v.proxy,
        &[
            &format!("http://localhost:{}/big?n=1000000", origin.port()),
            "-o",
            "/dev/null",
        ],
    );
    // Reset the peak-RSS mark (VmHWM) so it measures the download only.
    std::fs::write(format!("/proc/{}/clear_refs", v.pid()), "5")
        .expect("reset VmHWM (needs Linux)");
    let before = rss_kib(v.pid(), "VmRSS:");
    let started = Instant::now();
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "120",
            "-x",
            &format!("http://{}", v.proxy),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
        ])
        .arg(format!("http://localhost:{}/big?n={SIZE}", origin.port()))
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let peak = rss_kib(v.pid(), "VmHWM:");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("200 {SIZE}"));
    eprintln!(
        "1 GiB through the proxy in {elapsed:?} ({:.0} MiB/s); RSS before {before} KiB, peak {peak} KiB",
        SIZE as f64 / 1048576.0 / elapsed.as_secs_f64()
    );
    assert!(
        peak < before + 32 * 1024,
        "RSS grew by {} KiB while streaming",
        peak.saturating_sub(before)
    );
    let ev = audit_line(dir.path(), &["/big", &format!("\"bytes_down\":{SIZE}")]);
    assert_eq!(ev["status"], 200);
}

#[test]
fn proxy_websocket_echo() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start();
    let v = start_vigie(dir.path(), true, 443);
    rt().block_on(async {
        let mut s = tokio::net::TcpStream::connect(v.proxy).await.unwrap();
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let req = format!(
            "GET http://localhost:{p}/ws HTTP/1.1\r\nHost: localhost:{p}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n",
            p = origin.port()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut b)).await.unwrap().unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("upgrade: websocket"), "{head}");
        assert!(head.contains(&format!("sec-websocket-accept: {}", ws_accept(key).to_lowercase())), "{head}");
        for msg in ["bonjour", "hello", "un deux trois"] {
            ws_write(&mut s, 1, msg.as_bytes(), true).await.unwrap();
            let (op, payload) = tokio::time::timeout(Duration::from_secs(5), ws_read(&mut s)).await.unwrap().unwrap().unwrap();
            assert_eq!(op, 1);
            assert_eq!(payload, msg.as_bytes());
        }
        ws_write(&mut s, 8, b"", true).await.unwrap();
    });
    let ev = audit_line(dir.path(), &["/ws", "\"status\":101"]);
    assert!(ev["bytes_up"].as_u64().unwrap() > 0);
}

#[test]
fn proxy_connect_tls_decided_on_sni() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsOrigin::start();
    let port = tls.addr.port();
    let v = start_vigie(dir.path(), true, port);

    // curl through CONNECT to the rustls origin.
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, &tls.cert_pem).unwrap();
    let r = curl(
        v.proxy,
        &[
            "--cacert",
            cert.to_str().unwrap(),
            &format!("https://localhost:{port}/hello"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.headers);
    assert_eq!(r.text(), "hello from origin");
    let ev = audit_line(
        dir.path(),
        &["\"kind\":\"connect\"", "\"sni\":\"localhost\""],
    );
    assert_eq!(ev["verdict"], "allow");
    assert_eq!(ev["status"], 200);
    assert!(ev["bytes_down"].as_u64().unwrap() > 500, "{ev}");
    assert!(ev.get("path").is_none(), "no path for tunnels");

    // An allowed CONNECT host carrying a blocked SNI: refused with a TLS alert,
    // the origin never dialled.
    rt().block_on(async {
        let before = tls.accepted.load(Ordering::SeqCst);
        let (status, _, s) =
            connect_via(v.proxy, "127.0.0.1", &format!("localhost:{port}"), "").await;
        assert_eq!(status, 200);
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(GAMBLING).unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            tls_client(&tls.cert_der).connect(name, s),
        )
        .await
        .unwrap();
        let err = match r {
            Ok(_) => panic!("the handshake with a blocked SNI must fail"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("AccessDenied") || err.contains("access"),
            "{err}"
        );
        assert_eq!(
            tls.accepted.load(Ordering::SeqCst),
            before,
            "origin not contacted"
        );

        // The same SNI with an allowed name works.
        let (status, _, s) =
            connect_via(v.proxy, "127.0.0.1", &format!("localhost:{port}"), "").await;
        assert_eq!(status, 200);
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut t = tls_client(&tls.cert_der).connect(name, s).await.unwrap();
        t.write_all(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut out)).await;
        assert!(String::from_utf8_lossy(&out).contains("hello from origin"));
    });
    let ev = audit_line(dir.path(), &[&format!("\"sni\":\"{GAMBLING}\"")]);
    assert_eq!(ev["verdict"], "block");
    assert_eq!(ev["category"], "gambling");
    // The client saw 200 to its CONNECT, then an alert: the record says vigie
    // refused (403), with a reference like every block.
    assert_eq!(ev["status"], 403, "{ev}");
    assert!(
        ev["reference"].as_str().is_some_and(|r| !r.is_empty()),
        "{ev}"
    );

    // A blocked CONNECT host: 403 with the facts in headers and body.
    let r = curl(
        v.proxy,
        &["-H", "Accept-Language: en", &format!("https://{GAMBLING}/")],
    );
    assert_eq!(r.status, 403, "{}", r.headers);
    assert_eq!(r.header("x-vigie-category").as_deref(), Some("gambling"));
    assert_eq!(r.header("x-vigie-verdict").as_deref(), Some("block"));
    assert!(r.header("x-vigie-reference").is_some());
    assert!(r.headers.contains("x-vigie-rule: eleves: block gambling"));
    assert!(r.text().is_empty(), "curl does not show a CONNECT body");
    rt().block_on(async {
        let (status, head, mut s) = connect_via(
            v.proxy,
            "127.0.0.1",
            &format!("{GAMBLING}:443"),
            "Accept-Language: fr\r\n",
        )
        .await;
        assert_eq!(status, 403);
        assert!(head.contains("x-vigie-reference"));
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })
            .and_then(|v| v.parse().ok())
            .expect("content-length");
        let mut body = vec![0u8; len];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut body))
            .await
            .unwrap()
            .unwrap();
        let body = String::from_utf8(body).unwrap();
        assert!(body.contains("connexion sécurisée"), "{body}");
    });
}

#[test]
fn proxy_connect_refuses_non_tls_bare_ip_and_other_ports() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsOrigin::start();
    let port = tls.addr.port();
    let v = start_vigie(dir.path(), true, port);
    rt().block_on(async {
        let mut bt = vec![19u8];
        bt.extend_from_slice(b"BitTorrent protocol");
        bt.extend_from_slice(&[0u8; 48]);
        let cases: Vec<(&str, &str, Vec<u8>)> = vec![
            ("ssh", "vpn", b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n".to_vec()),
            ("bittorrent", "p2p", bt.clone()),
            (
                "openvpn",
                "vpn",
                vec![
                    0x00, 0x0e, 0x38, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
            ("http", "vpn", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
            (
                "gnutella",
                "p2p",
                b"GNUTELLA CONNECT/0.6\r\nUser-Agent: gtk-gnutella/1.2\r\n\r\n".to_vec(),
            ),
        ];
        for (proto, category, bytes) in cases {
            let before = tls.accepted.load(Ordering::SeqCst);
            let (status, _, mut s) =
                connect_via(v.proxy, "127.0.0.1", &format!("localhost:{port}"), "").await;
            assert_eq!(status, 200);
            s.write_all(&bytes).await.unwrap();
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("closed promptly")
                .unwrap_or(0);
            assert_eq!(n, 0, "{proto}: nothing comes back");
            assert_eq!(
                tls.accepted.load(Ordering::SeqCst),
                before,
                "{proto}: origin never dialled"
            );
            let ev = audit_line(dir.path(), &[&format!("\"protocol\":\"{proto}\"")]);
            assert_eq!(ev["verdict"], "block");
            assert_eq!(ev["refused"], "not_tls");
            assert_eq!(ev["category"], category, "{ev}");
            assert_eq!(
                ev["rule"].as_str().unwrap(),
                format!("eleves: block {category}"),
                "{ev}"
            );
        }
        // Staff's profile does not block `vpn`: their SSH on 443 goes through, but
        // BitTorrent (p2p) does not.
        let before = tls.accepted.load(Ordering::SeqCst);
        let (status, _, mut s) =
            connect_via(v.proxy, PERSONNEL, &format!("localhost:{port}"), "").await;
        assert_eq!(status, 200);
        s.write_all(b"SSH-2.0-OpenSSH_9.2p1\r\n").await.unwrap();
        wait_until(|| tls.accepted.load(Ordering::SeqCst) > before).await;
        drop(s);
        let (status, _, mut s) =
            connect_via(v.proxy, PERSONNEL, &format!("localhost:{port}"), "").await;
        assert_eq!(status, 200);
        s.write_all(&bt).await.unwrap();
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed promptly")
            .unwrap_or(0);
        assert_eq!(n, 0);
        let ev = audit_line(
            dir.path(),
            &["\"protocol\":\"bittorrent\"", "\"profile\":\"personnel\""],
        );
        assert_eq!(ev["rule"], "personnel: block p2p");
        // A client that sends nothing (server-speaks-first protocols) is cut off.
        let (status, _, mut s) =
            connect_via(v.proxy, "127.0.0.1", &format!("localhost:{port}"), "").await;
        assert_eq!(status, 200);
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed after the hello timeout");
        assert_eq!(n.unwrap_or(0), 0);
        audit_line(dir.path(), &["\"protocol\":\"silent\""]);

        // Bare IP: blocked for eleves (127.0.0.1), allowed for personnel (127.0.0.3).
        let (status, head, _) =
            connect_via(v.proxy, "127.0.0.1", &format!("127.0.0.1:{port}"), "").await;
        assert_eq!(status, 403, "{head}");
        assert!(
            head.contains("x-vigie-rule: eleves: bare_ip = block"),
            "{head}"
        );
        let (status, _, s) =
            connect_via(v.proxy, PERSONNEL, &format!("127.0.0.1:{port}"), "").await;
        assert_eq!(status, 200);
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tls_client(&tls.cert_der)
            .connect(name, s)
            .await
            .expect("bare-IP tunnel for personnel");

        // Only configured ports.
        let (status, head, _) = connect_via(v.proxy, "127.0.0.1", "localhost:22", "").await;
        assert_eq!(status, 403, "{head}");
        assert!(
            head.contains("x-vigie-reason: This port is not allowed"),
            "{head}"
        );
    });
    let m = v.http_get("/metrics");
    assert!(
        m.contains("vigie_proxy_circumvention_total{protocol=\"ssh\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("vigie_proxy_refused_total{reason=\"port\"} 1"),
        "{m}"
    );
}

#[test]
fn proxy_blocks_tracker_announces_and_names_resolving_to_listed_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start();
    let tls = TlsOrigin::start();
    // A Tor relay list holding the address `localhost` resolves to, and a staff
    // profile that blocks Tor but allows bare IPs.
    std::fs::write(dir.path().join("tor.txt"), "127.0.0.1/32 # test relay\n").unwrap();
    let cfg = write_proxy_config(dir.path(), true, tls.addr.port(), "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "block = [\"gambling\", \"p2p\"]",
        "block = [\"gambling\", \"p2p\", \"tor\"]",
    );
    let text = format!(
        "{text}\n[[categories]]\nid = \"tor\"\nfr = \"Tor\"\nen = \"Tor\"\n\n[[lists]]\ncategory = \"tor\"\nformat = \"cidr\"\npath = \"{}\"\n",
        dir.path().join("tor.txt").display()
    );
    std::fs::write(&cfg, text).unwrap();
    let v = Vigie::start(&cfg, &["127.0.0.1:9".parse().unwrap()], dir.path());

    // A tracker announce, whatever the tracker's name: blocked as P2P before the
    // origin is dialled; an ordinary request with a similar query is not.
    let before = origin.accepted.load(Ordering::SeqCst);
    let announce = format!(
        "http://localhost:{}/announce?info_hash=%124Vx%9A%BC%DE%F1%23Eg%89%AB%CD%EF%124Vx%9A&peer_id=-AR1370-abcdefghijkl&port=6881&left=0",
        origin.port()
    );
    let r = curl(v.proxy, &[&announce]);
    assert_eq!(r.status, 403, "{}", r.headers);
    assert_eq!(
        r.header("x-vigie-rule").as_deref(),
        Some("eleves: block p2p")
    );
    assert_eq!(origin.accepted.load(Ordering::SeqCst), before);
    let ev = audit_line(dir.path(), &["\"protocol\":\"tracker_announce\""]);
    assert_eq!(
        (ev["verdict"].as_str(), ev["category"].as_str()),
        (Some("block"), Some("p2p"))
    );
    assert_eq!(ev["entry"], "tracker_announce");
    let r = curl(
        v.proxy,
        &[&format!(
            "http://localhost:{}/hello?info=hash",
            origin.port()
        )],
    );
    assert_eq!(r.status, 200, "{}", r.headers);

    // CONNECT by name to an address in the Tor list: refused with the page, the
    // list entry named.
    rt().block_on(async {
        let (status, head, _) = connect_via(
            v.proxy,
            PERSONNEL,
            &format!("localhost:{}", tls.addr.port()),
            "",
        )
        .await;
        assert_eq!(status, 403, "{head}");
        assert!(
            head.contains("x-vigie-rule: personnel: block tor"),
            "{head}"
        );
    });
    let ev = audit_line(
        dir.path(),
        &["\"kind\":\"connect\"", "\"category\":\"tor\""],
    );
    assert_eq!(ev["entry"], "127.0.0.1/32");
    assert_eq!(ev["verdict"], "block");
    // Plain HTTP by name to that address: refused the same way.
    let before = origin.accepted.load(Ordering::SeqCst);
    let r = curl_with(
        &[
            "-x",
            &format!("http://{}", v.proxy),
            "--interface",
            PERSONNEL,
        ],
        &[&format!("http://localhost:{}/hello", origin.port())],
    );
    assert_eq!(r.status, 403, "{}", r.headers);
    assert_eq!(
        r.header("x-vigie-rule").as_deref(),
        Some("personnel: block tor")
    );
    assert_eq!(origin.accepted.load(Ordering::SeqCst), before);
    let ev = audit_line(dir.path(), &["\"kind\":\"http\"", "\"category\":\"tor\""]);
    assert_eq!(ev["entry"], "127.0.0.1/32");
    let m = v.http_get("/metrics");
    assert!(
        m.contains("vigie_proxy_circumvention_total{protocol=\"tracker_announce\"} 1"),
        "{m}"
    );
}

#[test]
fn proxy_decides_paths_in_the_spelling_the_origin_reads() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start();
    let cfg = write_proxy_config(dir.path(), true, 443, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "bare_ip = \"block\"",
        "bare_ip = \"block\"\nallow = [\"localhost/hello\"]\ndeny = [\"localhost/secret\"]",
    );
    std::fs::write(&cfg, text).unwrap();
    let v = Vigie::start(&cfg, &["127.0.0.1:9".parse().unwrap()], dir.path());
    let base = format!("http://localhost:{}", origin.port());

    // A deny override is not stepped around by another spelling of its path, nor
    // by an allowed prefix followed by `..`.
    for path in [
        "/secret",
        "//secret",
        "/./secret",
        "/%73ecret",
        "/hello/../secret",
        "/x/%2e%2e/secret",
    ] {
        let r = curl(v.proxy, &["--path-as-is", &format!("{base}{path}")]);
        assert_eq!(r.status, 403, "{path}: {}", r.headers);
        assert_eq!(
            r.header("x-vigie-rule").as_deref(),
            Some("eleves: deny localhost/secret"),
            "{path}"
        );
    }
    // What was decided is what is sent: the normal spelling.
    let r = curl(v.proxy, &["--path-as-is", &format!("{base}/x/../%68ello")]);
    assert_eq!(r.status, 200, "{}", r.headers);
    assert_eq!(r.text(), "hello from origin");
    let ev = audit_line(dir.path(), &["\"status\":200"]);
    assert_eq!(ev["path"], "/hello");
}

#[test]
fn proxy_authentication_407_and_identity_in_audit() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start();
    let v = start_vigie(dir.path(), true, 443);
    // `vigie users add` reads the password from stdin, never from argv.
    let cfg = dir.path().join("vigie.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigie"))
        .args(["--config", cfg.to_str().unwrap(), "users", "add", "alice"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"motdepasse secret\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let users = std::fs::read_to_string(dir.path().join("users")).unwrap();
    assert!(users.contains("alice:$argon2id$") && !users.contains("secret"));

    let url = format!("http://localhost:{}/hello", origin.port());
    // No credentials from a network that requires them: 407 with a challenge.
    let r = curl(v.proxy, &["--interface", AUTH_CLIENT, &url]);
    assert_eq!(r.status, 407, "{}", r.headers);
    assert_eq!(
        r.header("proxy-authenticate").as_deref(),
        Some("Basic realm=\"vigie\", charset=\"UTF-8\"")
    );
    assert!(r.text().contains("code d&#39;accès"), "{}", r.text());
    // From the staff network that requires a login, with these credentials.
    let as_user = |credentials: &str, url: &str| {
        curl(
            v.proxy,
            &["--interface", AUTH_CLIENT, "-U", credentials, url],
        )
    };
    // Wrong password: 407 again.
    let r = as_user("alice:wrong", &url);
    assert_eq!(r.status, 407);
    // Right password: served, credentials not forwarded, user recorded.
    for _ in 0..3 {
        let r = as_user("alice:motdepasse secret", &url);
        assert_eq!(r.status, 200, "{}", r.headers);
        assert_eq!(
            r.header("x-origin-saw-proxy-auth").as_deref(),
            Some("false")
        );
    }
    let ev = audit_line(dir.path(), &["\"user\":\"alice\"", "/hello"]);
    assert_eq!(ev["identity"], "proxy_auth");
    assert_eq!(ev["profile"], "personnel");
    assert_eq!(ev["client_ip"], AUTH_CLIENT);
    // CONNECT needs credentials too.
    let r = curl(
        v.proxy,
        &["--interface", AUTH_CLIENT, &format!("https://{GAMBLING}/")],
    );
    assert_eq!(r.status, 407);
    // Where authentication is not required, credentials are still used when sent.
    let r = curl(
        v.proxy,
        &[
            "-U",
            "alice:motdepasse secret",
            &format!("http://{GAMBLING}/"),
        ],
    );
    assert_eq!(r.status, 403);
    assert!(r.text().contains("alice"), "the block page names the user");
    assert_eq!(
        audit_line(dir.path(), &["\"user\":\"alice\"", "\"verdict\":\"block\""])["category"],
        "gambling"
    );
    let m = v.http_get("/metrics");
    assert!(
        m.contains("vigie_proxy_refused_total{reason=\"auth\"}"),
        "{m}"
    );

    // Two people behind one address (a terminal server): each request is theirs,
    // and each login is recorded once, not at every switch between them.
    common::add_user(&cfg, "carol", "autre secret");
    let logins = |who: &str| {
        std::fs::read_to_string(dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.contains("\"verdict\":\"login\"") && l.contains(&format!("\"user\":\"{who}\""))
            })
            .count()
    };
    let alice_before = logins("alice");
    for round in 0..3 {
        for (who, password) in [("carol", "autre secret"), ("alice", "motdepasse secret")] {
            let r = as_user(
                &format!("{who}:{password}"),
                &format!("{url}?who={who}&round={round}"),
            );
            assert_eq!(r.status, 200, "{}", r.headers);
        }
    }
    let ev = audit_line(dir.path(), &["who=carol&round=2"]);
    assert_eq!(ev["user"], "carol");
    audit_line(dir.path(), &["who=alice&round=2"]);
    assert_eq!(logins("carol"), 1);
    assert_eq!(logins("alice"), alice_before);

    // A user whose profile the configuration no longer defines gets the default
    // (strictest) profile, not the network's: from the staff network, a bare IP
    // (allowed for `personnel`) is refused as for `eleves`.
    common::add_user(&cfg, "bob", "mot de passe");
    let users: String = std::fs::read_to_string(dir.path().join("users"))
        .unwrap()
        .lines()
        .map(|l| match l.starts_with("bob:") {
            true => format!("{l}:restreint\n"),
            false => format!("{l}\n"),
        })
        .collect();
    std::fs::write(dir.path().join("users"), users).unwrap();
    let bare = format!("http://127.0.0.1:{}/hello", origin.port());
    let r = as_user("alice:motdepasse secret", &bare);
    assert_eq!(r.status, 200, "staff may reach a bare IP: {}", r.headers);
    let r = as_user("bob:mot de passe", &bare);
    assert_eq!(r.status, 403, "{}", r.headers);
    assert_eq!(
        r.header("x-vigie-rule").as_deref(),
        Some("eleves: bare_ip = block")
    );
}

#[test]
fn proxy_refuses_ssrf_outsiders_and_slow_clients() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start();
    // The default: loopback origins refused, however spelled.
    let v = start_vigie(dir.path(), false, 443);
    let p = origin.port();
    // Raw requests: curl would normalise the odd spellings before sending them.
    for url in [
        format!("http://localhost:{p}/hello"),
        format!("http://127.0.0.1:{p}/hello"),
        format!("http://2130706433:{p}/hello"),
        format!("http://0x7f.1:{p}/hello"),
        format!("http://0177.0.0.1:{p}/hello"),
        format!("http://127.1:{p}/hello"),
        format!("http://[::ffff:127.0.0.1]:{p}/hello"),
        format!("http://[::ffff:7f00:1]:{p}/hello"),
        format!("http://[::1]:{p}/hello"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://0.0.0.0/".to_string(),
        format!("http://{}/metrics", v.admin),
    ] {
        let (status, body) = raw_get(v.proxy, &url);
        assert_eq!(status, 403, "{url}: {body}");
        assert!(
            body.contains("internal") || body.contains("filter&#39;s own"),
            "{url}: {body}"
        );
    }
    assert_eq!(
        origin.accepted.load(Ordering::SeqCst),
        0,
        "no request reached the origin"
    );
    let r = curl(v.proxy, &[&format!("https://localhost:{p}/")]);
    assert_eq!(r.status, 403, "CONNECT to loopback: {}", r.headers);
    let ev = audit_line(dir.path(), &["\"refused\":\"internal\"", "2130706433"]);
    assert_eq!(ev["host"], "2130706433");
    assert_eq!(ev["target"], format!("http://127.0.0.1:{p}/hello"));

    // Not a client network: 403 and a metric, never proxied.
    let r = curl(v.proxy, &["--interface", OUTSIDER, "http://example.org/"]);
    assert_eq!(r.status, 403);
    assert!(
        r.text().contains("réseau n&#39;est pas autorisé"),
        "{}",
        r.text()
    );
    assert!(
        v.http_get("/metrics")
            .contains("vigie_proxy_refused_total{reason=\"client_network\"} 1")
    );

    // Slowloris: a head that never completes is cut off after header_timeout (1.5 s).
    let mut s = TcpStream::connect(v.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\n")
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1000) && waited < Duration::from_secs(8),
        "closed after {waited:?}"
    );
    // A head larger than max_header_bytes: 431, not a buffer that grows.
    let big = "a".repeat(70 * 1024);
    let mut s = TcpStream::connect(v.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(
        format!("GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\nX-Big: {big}\r\n\r\n")
            .as_bytes(),
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
}

/// Headless Chromium (Debian `chromium`, installed by `tests/run`) through the
/// proxy: an allowed page, the French block page for a listed site, and a refused
/// CONNECT for the same site over HTTPS (Chromium shows its own error page there).
#[test]
fn proxy_chromium_gets_the_block_page() {
    let Some(chromium) = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!(
            "proxy_chromium_gets_the_block_page: no chromium on this machine (tests/run installs it): nothing checked"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start();
    let v = start_vigie(dir.path(), true, 443);
    let dump = |url: &str| -> String {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--accept-lang=fr-CA,fr",
                // Chromium never proxies loopback unless told to.
                "--proxy-bypass-list=<-loopback>",
                "--dump-dom",
            ])
            .arg(format!("--proxy-server=http://{}", v.proxy))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("chromium did not finish loading {url}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        out
    };
    let page = dump(&format!("http://localhost:{}/hello", origin.port()));
    assert!(page.contains("hello from origin"), "{page}");
    let page = dump(&format!("http://www.{GAMBLING}/"));
    for needle in ["Accès bloqué", "Jeux d'argent", "Demander une révision"] {
        assert!(page.contains(needle), "missing {needle:?} in\n{page}");
    }
    let ev = audit_line(dir.path(), &["\"kind\":\"http\"", "\"verdict\":\"block\""]);
    assert_eq!(ev["category"], "gambling");
    let _ = dump(&format!("https://www.{GAMBLING}/"));
    let ev = audit_line(
        dir.path(),
        &["\"kind\":\"connect\"", "\"verdict\":\"block\""],
    );
    assert_eq!(ev["status"], 403);
    assert_eq!(ev["port"], 443);
}

/// `max_connections` bounds client connections, tunnels included: a third client
/// waits (in the listen backlog) until one of two open tunnels ends.
#[test]
fn proxy_max_connections_counts_tunnels() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start();
    let tls = TlsOrigin::start();
    let port = tls.addr.port();
    let v = start_vigie_with(dir.path(), true, port, "max_connections = 2");
    rt().block_on(async {
        let mut tunnels = Vec::new();
        for _ in 0..2 {
            let (status, _, s) = connect_via(v.proxy, "127.0.0.1", &format!("localhost:{port}"), "").await;
            assert_eq!(status, 200);
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
            tunnels.push(tls_client(&tls.cert_der).connect(name, s).await.unwrap());
        }
        let mut third = tokio::net::TcpStream::connect(v.proxy).await.unwrap();
        let req = format!("GET http://localhost:{p}/hello HTTP/1.1\r\nHost: localhost:{p}\r\nConnection: close\r\n\r\n", p = origin.port());
        third.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let early = tokio::time::timeout(Duration::from_millis(1500), third.read(&mut buf)).await;
        assert!(early.is_err(), "served while two tunnels held both places: {early:?}");
        drop(tunnels.pop());
        let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf)).await.expect("served once a tunnel ended").unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    });
}

#[test]
fn proxy_slow_upload_is_not_cut_by_the_first_byte_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start();
    let v = start_vigie_with(dir.path(), true, 443, "first_byte_timeout_ms = 1000");
    // 60 KB at 20 KB/s: three seconds of upload, three times the timeout; the
    // origin answers once it has read everything.
    let body = dir.path().join("upload.bin");
    std::fs::write(&body, vec![b'x'; 60_000]).unwrap();
    let data = format!("@{}", body.display());
    let r = curl(
        v.proxy,
        &[
            "--limit-rate",
            "20K",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &data,
            &format!("http://localhost:{}/echo", origin.port()),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.headers);
    assert_eq!(r.body.len(), 60_000);
}

#[test]
fn proxy_drops_an_origin_that_stalls_mid_body() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start();
    let v = start_vigie_with(dir.path(), true, 443, "idle_timeout_ms = 1000");
    let started = Instant::now();
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "30",
            "-x",
            &format!("http://{}", v.proxy),
        ])
        .arg(format!("http://localhost:{}/stall", origin.port()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // The first chunk arrives, then the response is cut (not completed, not left
    // hanging until curl's own 30 s limit).
    assert_eq!(String::from_utf8_lossy(&out.stdout), "first chunk\n");
    assert!(!out.status.success(), "a cut response is an error for curl");
    assert_ne!(
        out.status.code(),
        Some(28),
        "curl timed out: vigie kept it open"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn proxy_one_client_cannot_take_every_place() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start();
    let tls = TlsOrigin::start();
    let port = tls.addr.port();
    let v = start_vigie_with(dir.path(), true, port, "max_connections_per_client = 2");
    let req = format!(
        "GET http://localhost:{p}/hello HTTP/1.1\r\nHost: localhost:{p}\r\nConnection: close\r\n\r\n",
        p = origin.port()
    );
    rt().block_on(async {
        let mut tunnels = Vec::new();
        for _ in 0..2 {
            let (status, _, s) =
                connect_via(v.proxy, "127.0.0.1", &format!("localhost:{port}"), "").await;
            assert_eq!(status, 200);
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
            tunnels.push(tls_client(&tls.cert_der).connect(name, s).await.unwrap());
        }
        // A third connection from the same address is closed at once…
        let mut third = tokio::net::TcpStream::connect(v.proxy).await.unwrap();
        let _ = third.write_all(req.as_bytes()).await;
        let mut buf = vec![0u8; 4096];
        let got = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("closed, not left waiting");
        assert!(matches!(got, Ok(0) | Err(_)), "{got:?}");
        // …while another client is served.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{PERSONNEL}:0").parse().unwrap())
            .unwrap();
        let mut other = sock.connect(v.proxy).await.unwrap();
        other.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), other.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        // A tunnel ends: its place is the first client's again.
        drop(tunnels.pop());
        let fourth = async {
            loop {
                let mut s = tokio::net::TcpStream::connect(v.proxy).await.unwrap();
                s.write_all(req.as_bytes()).await.unwrap();
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out).await;
                if !out.is_empty() {
                    return out;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let out = tokio::time::timeout(Duration::from_secs(10), fourth)
            .await
            .expect("served once a tunnel ended");
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    });
    let m = v.http_get("/metrics");
    assert!(
        m.contains("vigie_proxy_refused_total{reason=\"per_client\"}"),
        "{m}"
    );
}

/// The block-page listener (`block_page_listen`): what a browser reaches when the
/// DNS filter answered a blocked name with vigie's address and no proxy is used.
#[test]
fn proxy_block_page_listener_explains_dns_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let v = start_vigie_with(dir.path(), true, 443, "block_page_listen = \"127.0.0.1:0\"");
    let addr = v
        .extra
        .iter()
        .find(|(k, _)| k == "block_page")
        .map(|(_, a)| *a)
        .expect("block_page in the ready line");
    let get = |host: &str, lang: &str| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /jeux?x=1 HTTP/1.1\r\nHost: {host}\r\nAccept-Language: {lang}\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let page = get(&format!("www.{GAMBLING}"), "fr-CA");
    assert!(page.starts_with("HTTP/1.1 403"), "{page}");
    for needle in [
        "Accès bloqué",
        "Jeux d&#39;argent",
        &format!("http://www.{GAMBLING}/jeux?x=1"),
    ] {
        assert!(page.contains(needle), "missing {needle:?} in\n{page}");
    }
    let page = get("example.org:80", "en");
    assert!(page.starts_with("HTTP/1.1 503"), "{page}");
    assert!(page.contains("not blocked for you now"), "{page}");
    let ev = audit_line(
        dir.path(),
        &["\"kind\":\"block_page\"", "\"verdict\":\"block\""],
    );
    assert_eq!(ev["category"], "gambling");
}

/// Origin names are resolved through vigie's own resolver (the DNS filter's
/// upstreams and cache), not the system's: a name only the test's upstream knows
/// reaches the local origin, a second connection to it is resolved from vigie's
/// cache, and the SSRF guard still judges the addresses the name resolves to.
#[test]
fn proxy_resolves_origins_through_vigie_dns_and_its_cache() {
    let up = common::Upstream::start("ads.example");
    let (first, second) = (Origin::start(), Origin::start());
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_proxy_config(dir.path(), true, 443, "");
    let v = Vigie::start(&cfg, &[up.addr], dir.path());
    let name = "www.loopback.test";

    let before = up.count();
    let r = curl(v.proxy, &[&format!("http://{name}:{}/hello", first.port())]);
    assert_eq!(r.status, 200, "{}\n{}", r.headers, v.log_text());
    assert_eq!(r.text(), "hello from origin");
    let asked = up.count() - before;
    assert!(asked >= 1, "the upstream was not asked");

    // Another port is another pooled connection, so another resolution: from the cache.
    let hits = v.metric("vigie_dns_cache_total{result=\"hit\"}");
    let r = curl(
        v.proxy,
        &[&format!("http://{name}:{}/hello", second.port())],
    );
    assert_eq!(r.status, 200, "{}", r.headers);
    assert_eq!(
        up.count() - before,
        asked,
        "the second dial asked the upstream again"
    );
    assert!(
        v.metric("vigie_dns_cache_total{result=\"hit\"}") > hits,
        "no cache hit counted"
    );
    // The DNS filter's clients share that cache entry.
    let m = common::udp(v.dns, name, hickory_proto::rr::RecordType::A);
    assert_eq!(common::a_records(&m), vec![std::net::Ipv4Addr::LOCALHOST]);
    assert_eq!(up.count() - before, asked);
    // A name the upstream says does not exist: a page, not a system lookup.
    let (status, body) = raw_get(v.proxy, "http://nx.loopback.test/");
    assert_eq!(status, 502, "{body}");
    drop(v);

    // Loopback origins not allowed: the resolved address is refused, nothing dialled.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_proxy_config(dir.path(), false, 443, "");
    let v = Vigie::start(&cfg, &[up.addr], dir.path());
    let accepted = first.accepted.load(Ordering::SeqCst);
    let (status, body) = raw_get(v.proxy, &format!("http://{name}:{}/hello", first.port()));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("internal"), "{body}");
    assert_eq!(first.accepted.load(Ordering::SeqCst), accepted);
}

/// The block page over plain HTTP and TLS (`block_page_listen`,
/// `block_page_tls_listen`): what a browser reaches when the DNS filter answered a
/// blocked name with vigie's address. Real `curl`, any name, both languages; the
/// self-signed certificate is made once and served again after a restart.
#[test]
fn block_page_listeners_http_and_tls_with_curl() {
    let dir = tempfile::tempdir().unwrap();
    let keys = "block_page_listen = \"127.0.0.1:0\"\nblock_page_tls_listen = \"127.0.0.1:0\"";
    let v = start_vigie_with(dir.path(), false, 443, keys);
    let listener = |v: &Vigie, name: &str| {
        v.extra
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("{name} in the ready line: {:?}", v.extra))
    };
    let (http, https) = (listener(&v, "block_page"), listener(&v, "block_page_tls"));
    let blocked = format!("www.{GAMBLING}");
    let fr = "Accept-Language: fr-CA,fr;q=0.9";
    let en = "Accept-Language: en-US,en;q=0.9";
    let check = |r: &Curl, url: &str, needles: &[&str]| {
        assert_eq!(r.status, 403, "{url}: {}", r.headers);
        let page = r.text();
        for needle in needles.iter().chain(&[url]) {
            assert!(page.contains(needle), "missing {needle:?} in\n{page}");
        }
        let reference = r.header("x-vigie-reference").expect("reference header");
        assert!(page.contains(&reference), "{page}");
        assert_eq!(r.header("x-vigie-category").as_deref(), Some("gambling"));
        reference
    };
    let french = ["Accès bloqué", "Jeux d&#39;argent", "Élèves", "Référence"];
    let english = ["Access blocked", "Gambling", "Students", "Reference"];

    // Plain HTTP: any Host gets the page for that host.
    let host = format!("Host: {blocked}");
    let url = format!("http://{http}/jeux?x=1");
    let r = curl_direct(&["-H", &host, "-H", fr, &url]);
    let reference = check(&r, &format!("http://{blocked}/jeux?x=1"), &french);
    let ev = audit_line(dir.path(), &[&reference]);
    assert_eq!(
        (
            ev["kind"].as_str(),
            ev["verdict"].as_str(),
            ev["status"].as_u64()
        ),
        (Some("block_page"), Some("block"), Some(403))
    );
    let r = curl_direct(&["-H", &host, "-H", en, &url]);
    check(&r, &format!("http://{blocked}/jeux?x=1"), &english);

    // TLS: the browser asked for https://blocked/ at vigie's address.
    let resolve = format!("{blocked}:{}:127.0.0.1", https.port());
    let url = format!("https://{blocked}:{}/jeux", https.port());
    let r = curl_direct(&["--insecure", "--resolve", &resolve, "-H", fr, &url]);
    let reference = check(&r, &format!("https://{blocked}/jeux"), &french);
    audit_line(dir.path(), &[&reference, "\"kind\":\"block_page\""]);
    let r = curl_direct(&["--insecure", "--resolve", &resolve, "-H", en, &url]);
    check(&r, &format!("https://{blocked}/jeux"), &english);
    // Without --insecure the certificate is refused, as a browser warns.
    let r = curl_direct(&["--resolve", &resolve, &url]);
    assert_eq!(r.status, 0, "a self-signed certificate must not verify");
    // A name that is not blocked: the page says so, nothing is forwarded.
    let r = curl_direct(&[
        "--insecure",
        "--resolve",
        &format!("example.org:{}:127.0.0.1", https.port()),
        &format!("https://example.org:{}/", https.port()),
    ]);
    assert_eq!(r.status, 503, "{}", r.headers);
    // The block page never opens tunnels.
    let r = curl(http, &["--max-time", "5", &format!("https://{blocked}/")]);
    assert!(
        r.status == 400 || r.status == 0,
        "CONNECT on the block page: {}",
        r.headers
    );

    // The self-signed certificate is kept in the data directory and served again
    // after a restart (browsers that accepted it are not asked twice).
    let pem = std::fs::read(dir.path().join("block-page.crt")).expect("certificate kept");
    drop(v);
    let v = start_vigie_with(dir.path(), false, 443, keys);
    let https = listener(&v, "block_page_tls");
    assert_eq!(
        std::fs::read(dir.path().join("block-page.crt")).unwrap(),
        pem
    );
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    let cert = tokio_rustls::rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    rt().block_on(async {
        let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
        let name =
            tokio_rustls::rustls::pki_types::ServerName::try_from("block-page.vigie.invalid")
                .unwrap();
        let mut t = tls_client(&cert)
            .connect(name, tcp)
            .await
            .expect("the kept certificate is served");
        t.write_all(
            format!("GET / HTTP/1.1\r\nHost: {blocked}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), t.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    });
}
