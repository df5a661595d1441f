//! End to end, issue 8: the circumvention tools students really use, against the
//! appliance as shipped — the real vigie binary in transparent mode behind
//! `deploy/nftables.conf` itself (only its `define`s are set to the lab's
//! interfaces and networks).
//!
//! The lab is three network namespaces this test creates; nothing leaves the
//! machine:
//!
//! ```text
//!  client                 gateway                                  internet
//!  c0 ─────────────── lan0  vigie + deploy/nftables.conf  wan0 ─────────── up0
//!  10.77.0.2          10.77.0.1              192.0.2.1          192.0.2.2
//!  fd77::2            fd77::1                2001:db8:1::1      2001:db8:1::2
//! ```
//!
//! The internet namespace routes the client network back through the gateway
//! (no NAT) and holds the servers on TEST-NET-3 addresses of its loopback:
//! dnsmasq (203.0.113.53, the "ISP resolver" the client is configured with, and
//! vigie's upstream), an HTTPS file server (`files.test`, also on IPv6), a
//! BitTorrent tracker over HTTP and HTTPS (`tracker.test`) that hands out one
//! seeder, a real `aria2c` seeding at 203.0.113.30 (port 443 mapped to its 6881),
//! a real Tor bridge relay, a real OpenVPN server and `sshd` on port 443, a DoH
//! server (`doh.test`, RFC 8484), a UDP "QUIC" server on 443, a DoT port 853, and
//! an "NTP" server for the firewall's allowlist. The small servers are in-process
//! (hyper + rustls, bound inside the namespace with setns); one lab CA signs
//! every certificate.
//!
//! Each case runs the real client in the client namespace and a positive control
//! (the same client from the gateway, where nothing is redirected, or after a
//! reload that takes the relay out of the Tor list) so that a refusal proves the
//! block and not a broken lab; each refusal is looked up in the audit store with
//! `vigie audit export` (verdict, category) and, for the detected protocol, in the
//! proxy's part of the stored event, which the export leaves out. Steps run in
//! order on one lab; a failed step does not stop the others, and the test fails
//! at the end naming every failed step.
//!
//! Needs root and the tools below (`tests/run` installs them). Without them the
//! test says so loudly and passes without checking anything, unless
//! `VIGIE_REQUIRE_BROWSER=1` (set by `tests/run` as root), where that is a failure.

mod common;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::DirBuilderExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio_rustls::rustls;

use common::Vigie;

// ---- the lab's addresses ----

const CLIENT4: &str = "10.77.0.2";
const CLIENT6: &str = "fd77::2";
const GW4: &str = "10.77.0.1";
const GW6: &str = "fd77::1";
const GW_WAN4: &str = "192.0.2.1";
const NET_WAN4: &str = "192.0.2.2";
const GW_WAN6: &str = "2001:db8:1::1";
const NET_WAN6: &str = "2001:db8:1::2";
/// The "ISP resolver" (dnsmasq): the client's configured DNS server and vigie's upstream.
const RESOLVER: &str = "203.0.113.53";
/// An IPv6 resolver address where nothing listens: only the redirect can answer.
const RESOLVER6: &str = "2001:db8:113::53";
const FILES4: &str = "203.0.113.10";
const FILES6: &str = "2001:db8:113::10";
const TRACKER: &str = "203.0.113.20";
const SEEDER: &str = "203.0.113.30";
/// The seeder's real port (aria2c listens on 1024 and up); 443 is mapped to it.
const SEEDER_PORT: u16 = 6881;
const RELAY: &str = "203.0.113.40";
/// What the Tor list holds after the reload of the positive control.
const NOT_RELAY: &str = "203.0.113.41";
const OPENVPN: &str = "203.0.113.50";
const SSHD: &str = "203.0.113.60";
const DOH: &str = "203.0.113.70";
const QUIC: &str = "203.0.113.80";
const NTP: &str = "203.0.113.123";

/// What `https://files.test/page.html` contains.
const PAGE_MARK: &str = "vigie-lab: page de cours / lesson page";
/// The lesson file's size and the torrent's piece length (five pieces).
const LESSON_LEN: usize = 300_000;
const PIECE: usize = 65_536;
/// Tor's bootstrap phase "handshake_done" (the TLS and link handshake with the
/// bridge completed).
const HANDSHAKE_DONE: u32 = 15;

const PREFIX: &str = "vigie-circ-";

/// The programs the lab runs, with the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("dnsmasq", "dnsmasq-base"),
    ("aria2c", "aria2"),
    ("tor", "tor"),
    ("openvpn", "openvpn"),
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("sshd", "openssh-server"),
    ("curl", "curl"),
    ("chromium", "chromium"),
    ("timeout", "coreutils"),
];

/// The absolute path of a program (PATH, then the sbin directories root has).
fn tool(name: &str) -> Option<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

fn t(name: &str) -> String {
    tool(name).unwrap_or_else(|| panic!("{name} not found"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Why the lab cannot run here, if it cannot.
fn missing_prerequisites() -> Option<String> {
    if !is_root() {
        return Some("not root, cannot create network namespaces".into());
    }
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(name, _)| tool(name).is_none())
        .map(|(name, pkg)| format!("{name} (Debian: {pkg})"))
        .collect();
    (!missing.is_empty()).then(|| format!("missing {}", missing.join(", ")))
}

// ---- small helpers ----

/// Runs a command that must succeed.
fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("lab address"), port)
}

/// Runs `f` on a thread that entered network namespace `ns`: sockets it opens
/// belong to that namespace for good, wherever they are used afterwards.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Sends one datagram to `dst` and waits `wait` for its echo.
fn udp_probe(dst: SocketAddr, wait: Duration) -> Result<(), String> {
    let any: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let s = UdpSocket::bind(any).map_err(|e| e.to_string())?;
    s.connect(dst).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(wait)).map_err(|e| e.to_string())?;
    s.send(b"vigie-lab probe").map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    match s.recv(&mut buf) {
        Ok(n) if &buf[..n] == b"vigie-lab probe" => Ok(()),
        Ok(n) => Err(format!("unexpected reply {:?}", &buf[..n])),
        Err(e) => Err(format!("{:?}: {e}", e.kind())),
    }
}

/// Opens a TCP connection to `dst` within `wait`.
fn tcp_probe(dst: SocketAddr, wait: Duration) -> Result<(), (std::io::ErrorKind, String)> {
    TcpStream::connect_timeout(&dst, wait)
        .map(drop)
        .map_err(|e| (e.kind(), e.to_string()))
}

/// A DNS exchange over UDP from any source address (IPv4 or IPv6).
fn dns_query(server: SocketAddr, name: &str, qtype: RecordType) -> Option<Message> {
    let any: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let msg = common::query_message(name, qtype, true);
    let s = UdpSocket::bind(any).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.send_to(&msg.to_vec().ok()?, server).ok()?;
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let (n, _) = s.recv_from(&mut buf).ok()?;
        if let Ok(m) = Message::from_vec(&buf[..n])
            && m.metadata.id == msg.metadata.id
        {
            return Some(m);
        }
    }
    None
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-text panic)".into())
}

// ---- what the servers serve ----

/// The lesson file every download fetches (deterministic, incompressible).
fn lesson() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..LESSON_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Bencoding (BEP 3): enough for a .torrent and a tracker's answer.
enum Bencode<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    Dict(Vec<(&'a str, Bencode<'a>)>),
}

fn bencode(v: &Bencode, out: &mut Vec<u8>) {
    match v {
        Bencode::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
        Bencode::Bytes(b) => {
            out.extend_from_slice(format!("{}:", b.len()).as_bytes());
            out.extend_from_slice(b);
        }
        Bencode::Dict(items) => {
            // Keys in raw byte order, as the format requires.
            let mut items: Vec<&(&str, Bencode)> = items.iter().collect();
            items.sort_by_key(|(k, _)| k.as_bytes());
            out.push(b'd');
            for (k, v) in items {
                bencode(&Bencode::Bytes(k.as_bytes()), out);
                bencode(v, out);
            }
            out.push(b'e');
        }
    }
}

/// A single-file .torrent of `data` announcing to `announce`.
fn torrent(announce: &str, data: &[u8]) -> Vec<u8> {
    let pieces: Vec<u8> = data
        .chunks(PIECE)
        .flat_map(|c| {
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, c)
                .as_ref()
                .to_vec()
        })
        .collect();
    let info = Bencode::Dict(vec![
        ("length", Bencode::Int(data.len() as i64)),
        ("name", Bencode::Bytes(b"lesson.bin")),
        ("piece length", Bencode::Int(PIECE as i64)),
        ("pieces", Bencode::Bytes(&pieces)),
    ]);
    let mut out = Vec::new();
    bencode(
        &Bencode::Dict(vec![
            ("announce", Bencode::Bytes(announce.as_bytes())),
            ("info", info),
        ]),
        &mut out,
    );
    out
}

/// A tracker's answer (compact form, BEP 23): the seeder, on port 443.
fn tracker_answer() -> Vec<u8> {
    let ip: Ipv4Addr = SEEDER.parse().unwrap();
    let mut peer = ip.octets().to_vec();
    peer.extend_from_slice(&443u16.to_be_bytes());
    let mut out = Vec::new();
    bencode(
        &Bencode::Dict(vec![
            ("interval", Bencode::Int(60)),
            ("peers", Bencode::Bytes(&peer)),
        ]),
        &mut out,
    );
    out
}

/// An RFC 8484 answer: `files.test` A is the file server, anything else NXDOMAIN.
fn doh_answer(query: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(query).ok()?;
    let q = req.queries.first()?.clone();
    let mut resp = Message::response(req.metadata.id, OpCode::Query);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_query(q.clone());
    let name = q.name.to_lowercase().to_ascii();
    if name == "files.test." {
        if q.query_type == RecordType::A {
            let ip: Ipv4Addr = FILES4.parse().unwrap();
            resp.add_answer(Record::from_rdata(q.name.clone(), 60, RData::A(A(ip))));
        }
    } else {
        resp.metadata.response_code = ResponseCode::NXDomain;
    }
    resp.to_vec().ok()
}

// ---- the in-process servers ----

/// How many requests each in-process server saw: a refusal by vigie or the
/// firewall leaves its counter where it was.
#[derive(Default)]
struct Seen {
    tracker_http: AtomicUsize,
    tracker_https: AtomicUsize,
    doh: AtomicUsize,
    dot: AtomicUsize,
    quic: AtomicUsize,
    ntp: AtomicUsize,
}

type Handler =
    Arc<dyn Fn(&hyper::Method, &str, &[u8]) -> (u16, &'static str, Vec<u8>) + Send + Sync>;

async fn respond(
    handler: Handler,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (status, ctype, bytes) = handler(&method, &target, &body);
    let mut resp = hyper::Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    Ok(resp)
}

/// Serves HTTP/1.1 (over TLS when `tls` is given) on `listener` until the runtime stops.
fn serve(
    rt: &tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handler: Handler,
) {
    listener.set_nonblocking(true).unwrap();
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let (tls, handler) = (tls.clone(), handler.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| respond(handler.clone(), req));
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
}

/// Echoes every datagram, counting them.
fn udp_echo(
    rt: &tokio::runtime::Runtime,
    sock: UdpSocket,
    seen: Arc<Seen>,
    which: fn(&Seen) -> &AtomicUsize,
) {
    sock.set_nonblocking(true).unwrap();
    rt.spawn(async move {
        let s = tokio::net::UdpSocket::from_std(sock).unwrap();
        let mut buf = [0u8; 2048];
        loop {
            if let Ok((n, peer)) = s.recv_from(&mut buf).await {
                which(&seen).fetch_add(1, Ordering::Relaxed);
                let _ = s.send_to(&buf[..n], peer).await;
            }
        }
    });
}

/// Accepts connections and counts them (a stand-in for a DoT server).
fn tcp_count(rt: &tokio::runtime::Runtime, listener: std::net::TcpListener, seen: Arc<Seen>) {
    listener.set_nonblocking(true).unwrap();
    rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(listener).unwrap();
        loop {
            if l.accept().await.is_ok() {
                seen.dot.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
}

/// The lab CA and a certificate it signed.
struct Pki {
    ca_pem: String,
    server_pem: String,
    server_key_pem: String,
    server_der: Vec<u8>,
    server_key_der: Vec<u8>,
    client_pem: String,
    client_key_pem: String,
}

fn make_pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "vigie lab CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>, cn: &str| {
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca).unwrap();
        (cert, key)
    };
    let names = ["files.test", "tracker.test", "doh.test", "server.test"]
        .map(String::from)
        .to_vec();
    let (server, server_key) = leaf(names, "server.test");
    let (client, client_key) = leaf(vec!["client.test".into()], "client.test");
    Pki {
        ca_pem: ca.pem(),
        server_pem: server.pem(),
        server_key_pem: server_key.serialize_pem(),
        server_der: server.der().to_vec(),
        server_key_der: server_key.serialize_der(),
        client_pem: client.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

fn tls_acceptor(pki: &Pki) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(pki.server_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key_der.clone())),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

// ---- the lab ----

/// The namespaces, the processes started in them, the in-process servers and
/// vigie; all of it removed on drop, panic or not.
struct Lab {
    client: String,
    gateway: String,
    internet: String,
    dir: tempfile::TempDir,
    children: Mutex<Vec<(String, Child)>>,
    etc_netns: Vec<PathBuf>,
    made_etc_netns: bool,
    made_run_sshd: bool,
    rt: Option<tokio::runtime::Runtime>,
    seen: Arc<Seen>,
    vigie: Option<Vigie>,
    cfg: PathBuf,
    data: PathBuf,
    tor_blocked: Option<(PathBuf, Instant)>,
}

/// Namespaces left by an earlier run of this test that was killed before its
/// cleanup (their owner's pid is gone): their processes are this test's own.
fn remove_stale_labs() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in text(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.rsplit('-').next())
        else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        kill_netns_processes(name);
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
    }
}

/// Kills what still runs in one of the lab's namespaces (chromium's helpers, a
/// client a timeout left behind).
fn kill_netns_processes(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in text(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
}

fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Lab {
    fn drop(&mut self) {
        drop(self.vigie.take());
        let children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, mut c) in children {
            terminate(&mut c);
        }
        for ns in [&self.client, &self.gateway, &self.internet] {
            kill_netns_processes(ns);
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        for ns in [&self.client, &self.gateway, &self.internet] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        for d in &self.etc_netns {
            let _ = std::fs::remove_dir_all(d);
        }
        if self.made_etc_netns {
            let _ = std::fs::remove_dir("/etc/netns");
        }
        if self.made_run_sshd {
            let _ = std::fs::remove_dir("/run/sshd");
        }
    }
}

impl Lab {
    fn new() -> Lab {
        remove_stale_labs();
        let id = std::process::id();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("vigie-data");
        Lab {
            client: format!("{PREFIX}c-{id}"),
            gateway: format!("{PREFIX}g-{id}"),
            internet: format!("{PREFIX}i-{id}"),
            cfg: dir.path().join("vigie.toml"),
            data,
            dir,
            children: Mutex::new(Vec::new()),
            etc_netns: Vec::new(),
            made_etc_netns: false,
            made_run_sshd: false,
            rt: None,
            seen: Arc::new(Seen::default()),
            vigie: None,
            tor_blocked: None,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime")
    }

    /// `ip -n NS …`, which must succeed.
    fn ip(&self, ns: &str, args: &[&str]) {
        let mut full = vec!["ip", "-n", ns];
        full.extend_from_slice(args);
        sh(&full);
    }

    /// Runs `args` in `ns`, bounded by `secs` (coreutils `timeout`); never panics
    /// on the command's own failure.
    fn run(&self, ns: &str, secs: u64, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns, "timeout", "-k", "3", &secs.to_string()])
            .args(args)
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// Starts `args` in `ns`, its output in `log`; stopped by [`Lab::stop`] or on drop.
    fn spawn(&self, ns: &str, name: &str, args: &[&str], log: &Path) {
        let f = std::fs::File::create(log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        self.children
            .lock()
            .unwrap()
            .push((name.to_string(), child));
    }

    fn stop(&self, name: &str) {
        let mut children = self.children.lock().unwrap();
        if let Some(i) = children.iter().position(|(n, _)| n == name) {
            let (_, mut c) = children.remove(i);
            drop(children);
            terminate(&mut c);
        }
    }

    /// Waits (at most `secs`) until `log` contains `needle`.
    fn wait_log(&self, log: &Path, needle: &str, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if std::fs::read_to_string(log).is_ok_and(|t| t.contains(needle)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(log: &Path) -> String {
        let t = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn bind_tcp(&self, addr: SocketAddr) -> std::net::TcpListener {
        in_netns(&self.internet, move || {
            std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
        })
    }

    fn bind_udp(&self, addr: SocketAddr) -> UdpSocket {
        in_netns(&self.internet, move || {
            UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
        })
    }

    fn build(&mut self) {
        self.build_network();
        self.load_ruleset();
        let pki = make_pki();
        self.write_files(&pki);
        self.start_servers(&pki);
        self.start_external_servers();
        self.start_vigie();
        self.wait_ready();
    }

    fn build_network(&mut self) {
        let (c, g, i) = (
            self.client.clone(),
            self.gateway.clone(),
            self.internet.clone(),
        );
        for ns in [&c, &g, &i] {
            sh(&["ip", "netns", "add", ns]);
        }
        // Each end is created inside its namespace: the fixed names never meet.
        sh(&[
            "ip", "link", "add", "c0", "netns", &c, "type", "veth", "peer", "name", "lan0",
            "netns", &g,
        ]);
        sh(&[
            "ip", "link", "add", "wan0", "netns", &g, "type", "veth", "peer", "name", "up0",
            "netns", &i,
        ]);
        for ns in [&c, &g, &i] {
            self.ip(ns, &["link", "set", "lo", "up"]);
        }
        let c4 = format!("{CLIENT4}/24");
        let c6 = format!("{CLIENT6}/64");
        self.ip(&c, &["addr", "add", &c4, "dev", "c0"]);
        self.ip(&c, &["addr", "add", &c6, "dev", "c0", "nodad"]);
        self.ip(&c, &["link", "set", "c0", "up"]);
        self.ip(&c, &["route", "add", "default", "via", GW4]);
        self.ip(&c, &["-6", "route", "add", "default", "via", GW6]);

        let (g4, g6) = (format!("{GW4}/24"), format!("{GW6}/64"));
        let (w4, w6) = (format!("{GW_WAN4}/24"), format!("{GW_WAN6}/64"));
        self.ip(&g, &["addr", "add", &g4, "dev", "lan0"]);
        self.ip(&g, &["addr", "add", &g6, "dev", "lan0", "nodad"]);
        self.ip(&g, &["addr", "add", &w4, "dev", "wan0"]);
        self.ip(&g, &["addr", "add", &w6, "dev", "wan0", "nodad"]);
        self.ip(&g, &["link", "set", "lan0", "up"]);
        self.ip(&g, &["link", "set", "wan0", "up"]);
        self.ip(&g, &["route", "add", "203.0.113.0/24", "via", NET_WAN4]);
        self.ip(
            &g,
            &["-6", "route", "add", "2001:db8:113::/64", "via", NET_WAN6],
        );
        sh(&[
            "ip",
            "netns",
            "exec",
            &g,
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
        ]);

        let (n4, n6) = (format!("{NET_WAN4}/24"), format!("{NET_WAN6}/64"));
        self.ip(&i, &["addr", "add", &n4, "dev", "up0"]);
        self.ip(&i, &["addr", "add", &n6, "dev", "up0", "nodad"]);
        self.ip(&i, &["link", "set", "up0", "up"]);
        for a in [
            FILES4, TRACKER, SEEDER, RELAY, NOT_RELAY, OPENVPN, SSHD, DOH, QUIC, NTP, RESOLVER,
        ] {
            self.ip(&i, &["addr", "add", &format!("{a}/32"), "dev", "lo"]);
        }
        self.ip(&i, &["addr", "add", &format!("{FILES6}/128"), "dev", "lo"]);
        self.ip(&i, &["route", "add", "10.77.0.0/24", "via", GW_WAN4]);
        self.ip(&i, &["-6", "route", "add", "fd77::/64", "via", GW_WAN6]);
        // The seeder "listens on 443" the way a real one behind a port mapping does.
        let map = self.path("internet.nft");
        std::fs::write(
            &map,
            format!(
                "table ip lab {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
                 ip daddr {SEEDER} tcp dport 443 dnat to {SEEDER}:{SEEDER_PORT}\n  }}\n}}\n"
            ),
        )
        .unwrap();
        sh(&[
            "ip",
            "netns",
            "exec",
            &i,
            "nft",
            "-f",
            map.to_str().unwrap(),
        ]);

        // `ip netns exec` puts /etc/netns/NS/resolv.conf in place of /etc/resolv.conf:
        // every namespace asks the "ISP resolver" (for the client, the redirect
        // makes that vigie).
        if !Path::new("/etc/netns").exists() {
            std::fs::create_dir("/etc/netns").unwrap();
            self.made_etc_netns = true;
        }
        for ns in [&c, &g, &i] {
            let d = Path::new("/etc/netns").join(ns);
            std::fs::create_dir_all(&d).unwrap();
            self.etc_netns.push(d.clone());
            std::fs::write(
                d.join("resolv.conf"),
                format!("nameserver {RESOLVER}\noptions timeout:2 attempts:2\n"),
            )
            .unwrap();
        }
    }

    /// `deploy/nftables.conf` as shipped, its `define`s set to the lab's values.
    fn ruleset(overrides: &[(&str, &str)]) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nftables.conf");
        let shipped = std::fs::read_to_string(&path).unwrap();
        let mut used = Vec::new();
        let mut out = String::new();
        for line in shipped.lines() {
            let name = line
                .strip_prefix("define ")
                .and_then(|rest| rest.split_whitespace().next());
            match name.and_then(|n| overrides.iter().find(|(k, _)| *k == n)) {
                Some((k, v)) => {
                    out.push_str(&format!("define {k} = {v}\n"));
                    used.push(*k);
                }
                None => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        for (k, _) in overrides {
            assert!(used.contains(k), "deploy/nftables.conf has no `define {k}`");
        }
        out
    }

    fn load_ruleset(&mut self) {
        let g = self.gateway.clone();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nftables.conf");
        // The file as shipped passes `nft -c`…
        sh(&[
            "ip",
            "netns",
            "exec",
            &g,
            "nft",
            "-c",
            "-f",
            shipped.to_str().unwrap(),
        ]);
        // …and, with the lab's interfaces and networks, loads — twice, as a reload does.
        let rules = self.path("nftables.conf");
        std::fs::write(
            &rules,
            Lab::ruleset(&[
                ("LAN_IFACES", "{ \"lan0\" }"),
                ("CLIENT_NETS_V4", "{ 10.77.0.0/24 }"),
                ("CLIENT_NETS_V6", "{ fd77::/64 }"),
            ]),
        )
        .unwrap();
        let rules = rules.to_str().unwrap();
        sh(&["ip", "netns", "exec", &g, "nft", "-c", "-f", rules]);
        sh(&["ip", "netns", "exec", &g, "nft", "-f", rules]);
        sh(&["ip", "netns", "exec", &g, "nft", "-f", rules]);
    }

    fn write_files(&mut self, pki: &Pki) {
        let w = |name: &str, content: &[u8]| std::fs::write(self.path(name), content).unwrap();
        w("ca.pem", pki.ca_pem.as_bytes());
        w("server.pem", pki.server_pem.as_bytes());
        w("server.key", pki.server_key_pem.as_bytes());
        w("client.pem", pki.client_pem.as_bytes());
        w("client.key", pki.client_key_pem.as_bytes());
        let data = lesson();
        std::fs::create_dir_all(self.path("seed")).unwrap();
        w("seed/lesson.bin", &data);
        w(
            "http.torrent",
            &torrent("http://tracker.test/announce", &data),
        );
        w(
            "https.torrent",
            &torrent("https://tracker.test/announce", &data),
        );
        std::fs::create_dir_all(self.path("lists")).unwrap();
        w("lists/tor.txt", format!("{RELAY}/32\n").as_bytes());
        w("lists/doh.txt", b"doh.test\n");
        w("lists/p2p.txt", b"torrents.test\n");
        w("lists/vpn.txt", b"vpn-provider.test\n");
        for d in ["relay", "tor-blocked", "tor-allowed"] {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(self.path(d))
                .unwrap();
        }
        sh(&[
            &t("ssh-keygen"),
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            &self.p("ssh_host_ed25519_key"),
        ]);
    }

    fn start_servers(&mut self, pki: &Pki) {
        self.rt = Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        );
        let tls = tls_acceptor(pki);
        let data = Arc::new(lesson());
        let web: Handler = Arc::new(
            move |_: &hyper::Method, target: &str, _: &[u8]| match target {
                "/lesson.bin" => (200, "application/octet-stream", data.to_vec()),
                "/page.html" => (
                    200,
                    "text/html; charset=utf-8",
                    format!("<!doctype html><title>cours</title><p id=\"ok\">{PAGE_MARK}</p>")
                        .into_bytes(),
                ),
                _ => (404, "text/plain", b"not found".to_vec()),
            },
        );
        let tracker = |counter: fn(&Seen) -> &AtomicUsize, seen: Arc<Seen>| -> Handler {
            Arc::new(move |_: &hyper::Method, target: &str, _: &[u8]| {
                if target.starts_with("/announce") {
                    counter(&seen).fetch_add(1, Ordering::Relaxed);
                    (200, "text/plain", tracker_answer())
                } else {
                    (404, "text/plain", b"not found".to_vec())
                }
            })
        };
        let seen = self.seen.clone();
        let doh: Handler = Arc::new(move |method: &hyper::Method, target: &str, body: &[u8]| {
            use base64::Engine;
            let query = if *method == hyper::Method::POST {
                Some(body.to_vec())
            } else {
                target.split_once("dns=").and_then(|(_, q)| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(q.split('&').next().unwrap_or(""))
                        .ok()
                })
            };
            seen.doh.fetch_add(1, Ordering::Relaxed);
            match query.as_deref().and_then(doh_answer) {
                Some(answer) => (200, "application/dns-message", answer),
                None => (400, "text/plain", b"bad query".to_vec()),
            }
        });
        let rt = self.rt();
        serve(
            rt,
            self.bind_tcp(sock(FILES4, 443)),
            Some(tls.clone()),
            web.clone(),
        );
        serve(
            rt,
            self.bind_tcp(sock(FILES6, 443)),
            Some(tls.clone()),
            web.clone(),
        );
        // A port no rule lets clients reach directly.
        serve(rt, self.bind_tcp(sock(FILES4, 8080)), None, web);
        let s = self.seen.clone();
        serve(
            rt,
            self.bind_tcp(sock(TRACKER, 80)),
            None,
            tracker(|s| &s.tracker_http, s.clone()),
        );
        serve(
            rt,
            self.bind_tcp(sock(TRACKER, 443)),
            Some(tls.clone()),
            tracker(|s| &s.tracker_https, s),
        );
        serve(rt, self.bind_tcp(sock(DOH, 443)), Some(tls), doh);
        tcp_count(rt, self.bind_tcp(sock(DOH, 853)), self.seen.clone());
        udp_echo(rt, self.bind_udp(sock(QUIC, 443)), self.seen.clone(), |s| {
            &s.quic
        });
        for port in [123, 124] {
            udp_echo(rt, self.bind_udp(sock(NTP, port)), self.seen.clone(), |s| {
                &s.ntp
            });
        }
    }

    fn start_external_servers(&mut self) {
        let i = self.internet.clone();
        // The tor relay first: it makes its keys while the rest starts.
        let torrc = self.path("relay.torrc");
        std::fs::write(
            &torrc,
            format!(
                "DataDirectory {dir}\nORPort {RELAY}:443\nAddress {RELAY}\nNickname vigielab\n\
                 BridgeRelay 1\nAssumeReachable 1\nPublishServerDescriptor 0\nSocksPort 0\n\
                 ExitRelay 0\nLog notice file {log}\n",
                dir = self.p("relay"),
                log = self.p("relay.log"),
            ),
        )
        .unwrap();
        self.spawn(
            &i,
            "tor-relay",
            &[&t("tor"), "-f", torrc.to_str().unwrap()],
            &self.path("relay.out"),
        );
        let resolver_arg = format!("--listen-address={RESOLVER}");
        let files = format!("--host-record=files.test,{FILES4},{FILES6}");
        let tracker = format!("--host-record=tracker.test,{TRACKER}");
        let doh = format!("--host-record=doh.test,{DOH}");
        let log = format!("--log-facility={}", self.p("dnsmasq.log"));
        let pid = format!("--pid-file={}", self.p("dnsmasq.pid"));
        self.spawn(
            &i,
            "dnsmasq",
            &[
                &t("dnsmasq"),
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                &resolver_arg,
                "--port=53",
                "--user=root",
                &pid,
                &log,
                "--log-queries",
                &files,
                &tracker,
                &doh,
            ],
            &self.path("dnsmasq.out"),
        );
        if !Path::new("/run/sshd").exists() {
            // sshd's privilege-separation directory (the package makes it at boot).
            std::fs::create_dir("/run/sshd").unwrap();
            self.made_run_sshd = true;
        }
        let listen = format!("ListenAddress={SSHD}:443");
        let hostkey = format!("HostKey={}", self.p("ssh_host_ed25519_key"));
        self.spawn(
            &i,
            "sshd",
            &[
                &t("sshd"),
                "-D",
                "-e",
                "-f",
                "/dev/null",
                "-o",
                &listen,
                "-o",
                &hostkey,
                "-o",
                "PidFile=none",
                "-o",
                "UsePAM=no",
            ],
            &self.path("sshd.log"),
        );
        let (ca, cert, key) = (self.p("ca.pem"), self.p("server.pem"), self.p("server.key"));
        self.spawn(
            &i,
            "openvpn-server",
            &[
                &t("openvpn"),
                "--dev",
                "null",
                "--proto",
                "tcp-server",
                "--local",
                OPENVPN,
                "--lport",
                "443",
                "--tls-server",
                "--ca",
                &ca,
                "--cert",
                &cert,
                "--key",
                &key,
                "--dh",
                "none",
                "--verb",
                "3",
            ],
            &self.path("openvpn-server.log"),
        );
        let iface = format!("--interface={SEEDER}");
        let port = format!("--listen-port={SEEDER_PORT}");
        let dir = format!("--dir={}", self.p("seed"));
        let log = format!("--log={}", self.p("seeder.log"));
        self.spawn(
            &i,
            "seeder",
            &[
                &t("aria2c"),
                &iface,
                &port,
                &dir,
                "--check-integrity=true",
                "--seed-ratio=0.0",
                "--bt-exclude-tracker=*",
                "--enable-dht=false",
                "--enable-dht6=false",
                "--bt-enable-lpd=false",
                "--enable-peer-exchange=false",
                "--disable-ipv6=true",
                "--summary-interval=0",
                &log,
                "--log-level=info",
                &self.p("http.torrent"),
            ],
            &self.path("seeder.out"),
        );
    }

    fn write_config(&self) {
        let text = format!(
            r#"
# Students get their profile from their network, not by default: a path that saw
# an IPv4 client as ::ffff:10.77.0.2 (dual-stack listeners) would let it through.
default_profile = "libre"
client_networks = ["10.77.0.0/24", "fd77::/64"]
lists_dir = "{lists}"

[dns]
rate_limit_qps = 0

[audit]
jsonl = true

[proxy]
transparent_http_listen = "[::]:3129"
transparent_tls_listen = "[::]:3130"
client_hello_timeout_ms = 3000

[[categories]]
id = "p2p"
fr = "Pair-à-pair"
en = "Peer-to-peer"

[[categories]]
id = "tor"
fr = "Tor"
en = "Tor"

[[categories]]
id = "vpn"
fr = "RPV et mandataires"
en = "VPNs and proxies"

[[categories]]
id = "doh"
fr = "DNS chiffré"
en = "Encrypted DNS"

[[lists]]
category = "tor"
format = "cidr"
path = "tor.txt"

[[lists]]
category = "doh"
format = "domains"
path = "doh.txt"

[[lists]]
category = "p2p"
format = "domains"
path = "p2p.txt"

[[lists]]
category = "vpn"
format = "domains"
path = "vpn.txt"

[profiles.eleves]
block = ["p2p", "tor", "vpn", "doh"]
block_mode = "nxdomain"
# Peers are bare addresses: this lab proves detection, not the bare-IP rule.
bare_ip = "allow"

[profiles.libre]
block = []

[[networks]]
cidr = "10.77.0.0/24"
profile = "eleves"

[[networks]]
cidr = "fd77::/64"
profile = "eleves"
"#,
            lists = self.p("lists"),
        );
        std::fs::write(&self.cfg, text).unwrap();
    }

    fn start_vigie(&mut self) {
        self.write_config();
        std::fs::create_dir_all(&self.data).unwrap();
        let g = self.gateway.clone();
        let v = Vigie::start_wrapped(
            &["ip", "netns", "exec", &g],
            &self.cfg,
            &[sock(RESOLVER, 53)],
            &self.data,
            &["--dns-listen", "[::]:53", "--proxy-listen", "[::]:3128"],
        );
        for (name, port) in [("transparent_http", 3129), ("transparent_tls", 3130)] {
            assert!(
                v.extra.iter().any(|(k, a)| k == name && a.port() == port),
                "{name} not on {port}: {:?}",
                v.extra
            );
        }
        self.vigie = Some(v);
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let resolver = sock(RESOLVER, 53);
        let sshd = sock(SSHD, 443);
        let relay = sock(RELAY, 443);
        loop {
            let (dns, ssh, tor) = in_netns(&self.gateway, move || {
                (
                    dns_query(resolver, "files.test", RecordType::A).is_some(),
                    tcp_probe(sshd, Duration::from_millis(500)).is_ok(),
                    tcp_probe(relay, Duration::from_millis(500)).is_ok(),
                )
            });
            let ovpn = std::fs::read_to_string(self.path("openvpn-server.log"))
                .is_ok_and(|t| t.contains("Listening for incoming TCP connection"));
            let seeder = std::fs::read_to_string(self.path("seeder.log"))
                .is_ok_and(|t| t.contains("listening on TCP port"));
            if dns && ssh && tor && ovpn && seeder {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "lab servers not ready (dnsmasq {dns}, sshd {ssh}, tor relay {tor}, openvpn {ovpn}, seeder {seeder}):\n\
                 dnsmasq: {}\nsshd: {}\nrelay: {}\nopenvpn: {}\nseeder: {}",
                Lab::log_tail(&self.path("dnsmasq.out")),
                Lab::log_tail(&self.path("sshd.log")),
                Lab::log_tail(&self.path("relay.log")),
                Lab::log_tail(&self.path("openvpn-server.log")),
                Lab::log_tail(&self.path("seeder.log")),
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn vigie(&self) -> &Vigie {
        self.vigie.as_ref().expect("vigie")
    }

    // ---- clients ----

    /// A Tor client in the client namespace using the lab relay as its only bridge.
    fn start_tor_client(&self, name: &str, socks: u16) -> PathBuf {
        let torrc = self.path(&format!("{name}.torrc"));
        let log = self.path(&format!("{name}.log"));
        std::fs::write(
            &torrc,
            format!(
                "DataDirectory {dir}\nUseBridges 1\nBridge {RELAY}:443\n\
                 SocksPort 127.0.0.1:{socks}\nLog notice file {log}\n",
                dir = self.p(name),
                log = log.display(),
            ),
        )
        .unwrap();
        self.spawn(
            &self.client,
            name,
            &[&t("tor"), "-f", torrc.to_str().unwrap()],
            &self.path(&format!("{name}.out")),
        );
        log
    }

    /// Runs aria2c in `ns` on `torrent`, downloading into `dir`; its output.
    fn aria2c_torrent(&self, ns: &str, torrent: &str, dir: &str) -> Output {
        let d = format!("--dir={}", self.p(dir));
        let ca = format!("--ca-certificate={}", self.p("ca.pem"));
        let log = format!("--log={}", self.p(&format!("{dir}.log")));
        self.run(
            ns,
            40,
            &[
                &t("aria2c"),
                &d,
                &ca,
                &log,
                "--log-level=info",
                "--seed-time=0",
                "--bt-stop-timeout=6",
                "--bt-tracker-connect-timeout=5",
                "--bt-tracker-timeout=5",
                "--enable-dht=false",
                "--enable-dht6=false",
                "--bt-enable-lpd=false",
                "--enable-peer-exchange=false",
                "--file-allocation=none",
                "--summary-interval=0",
                &self.p(torrent),
            ],
        )
    }

    fn curl(&self, ns: &str, args: &[&str]) -> Output {
        let ca = self.p("ca.pem");
        let mut full = vec!["curl", "-sS", "--max-time", "10", "--cacert", ca.as_str()];
        full.extend_from_slice(args);
        self.run(ns, 20, &full)
    }

    fn chromium(&self, url: &str) -> Output {
        let profile = format!("--user-data-dir={}", self.p("chromium-profile"));
        self.run(
            &self.client,
            90,
            &[
                &t("chromium"),
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--ignore-certificate-errors",
                &profile,
                "--dump-dom",
                url,
            ],
        )
    }

    // ---- the audit store ----

    fn events(&self) -> Vec<Value> {
        common::export(&self.cfg, &self.data, None)
    }

    /// The JSON-lines copy of the trail's lines mentioning `needle` (full events,
    /// with the proxy's part), for failure messages.
    fn jsonl_about(&self, needle: &str) -> String {
        let t = std::fs::read_to_string(self.data.join("audit.jsonl")).unwrap_or_default();
        let lines: Vec<&str> = t.lines().filter(|l| l.contains(needle)).collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Waits (10 s) for an exported event about `needle` (in its target, host or
    /// list entry: a relay reached with a made-up SNI is named by the entry) that
    /// `pred` accepts.
    fn event(&self, needle: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let about = |e: &Value| e.to_string().contains(needle);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let evs = self.events();
            if let Some(e) = evs.iter().find(|e| about(e) && pred(e)) {
                return e.clone();
            }
            if Instant::now() > deadline {
                let mine: Vec<String> = evs
                    .iter()
                    .filter(|e| about(e))
                    .map(|e| e.to_string())
                    .collect();
                panic!(
                    "{what}: no such event in the audit store.\nexported events about {needle}:\n{}\n\
                     audit.jsonl about {needle}:\n{}",
                    mine.join("\n"),
                    self.jsonl_about(needle)
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Asserts the refusal contract: a `block` event by `service` in `category`,
    /// naming the detected `protocol` when there is one.
    fn refusal(
        &self,
        needle: &str,
        what: &str,
        service: &str,
        category: &str,
        protocol: Option<&str>,
    ) {
        let e = self.event(needle, what, |e| {
            e["verdict"] == "block" && e["service"] == service && e["category"] == category
        });
        if let Some(p) = protocol {
            // `audit export` prints the columns every event has; the proxy's part
            // (kind, SNI, protocol, …) is stored beside them as JSON.
            let stored = e["id"].as_i64().and_then(|id| self.stored_proxy_part(id));
            let got = e
                .get("protocol")
                .or_else(|| e.get("proxy").and_then(|x| x.get("protocol")))
                .or_else(|| stored.as_ref().and_then(|x| x.get("protocol")))
                .and_then(Value::as_str);
            assert_eq!(
                got,
                Some(p),
                "{what}: the stored event does not name the detected protocol:\n{e}\n\
                 its proxy part: {stored:?}\naudit.jsonl about {needle}:\n{}",
                self.jsonl_about(needle)
            );
        }
    }

    /// The proxy's part of stored event `id`, read from the audit store itself.
    fn stored_proxy_part(&self, id: i64) -> Option<Value> {
        let db = rusqlite::Connection::open_with_flags(
            self.data.join("audit.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .ok()?;
        let text: Option<String> = db
            .query_row("SELECT proxy FROM events WHERE id = ?1", [id], |r| r.get(0))
            .ok()?;
        serde_json::from_str(&text?).ok()
    }

    /// Every refusal in the trail, one line each, for the log of a run.
    fn refusals_summary(&self) -> String {
        let t = std::fs::read_to_string(self.data.join("audit.jsonl")).unwrap_or_default();
        t.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["verdict"] == "block")
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or("-").to_string();
                let target: String = s("target").chars().take(60).collect();
                format!(
                    "  {} {} {:<4} protocol={} entry={} {}",
                    s("service"),
                    s("kind"),
                    s("category"),
                    s("protocol"),
                    s("entry"),
                    target
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The highest "Bootstrapped N%" a Tor log reports.
fn bootstrapped(log: &Path) -> Option<u32> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split("Bootstrapped ")
                .nth(1)?
                .split('%')
                .next()?
                .parse()
                .ok()
        })
        .max()
}

// ---- the steps ----

/// DNS: whatever resolver a client asks, vigie answers (the redirect).
fn step_dns_redirect(lab: &Lab) {
    let resolver = sock(RESOLVER, 53);
    let (blocked, allowed) = in_netns(&lab.client, move || {
        (
            dns_query(resolver, "doh.test", RecordType::A),
            dns_query(resolver, "files.test", RecordType::A),
        )
    });
    // dnsmasq knows doh.test; the answer a client gets is vigie's.
    let blocked = blocked.expect("no answer from the 'ISP resolver' (redirected to vigie)");
    assert_eq!(
        blocked.metadata.response_code,
        ResponseCode::NXDomain,
        "{blocked:?}"
    );
    let allowed = allowed.expect("no answer for files.test");
    assert_eq!(
        common::a_records(&allowed),
        vec![FILES4.parse::<Ipv4Addr>().unwrap()]
    );
    // IPv6: nothing listens at RESOLVER6; only the redirect can answer.
    let r6 = sock(RESOLVER6, 53);
    let m = in_netns(&lab.client, move || {
        dns_query(r6, "files.test", RecordType::A)
    })
    .expect("no answer over IPv6 through the redirect");
    assert_eq!(
        common::a_records(&m),
        vec![FILES4.parse::<Ipv4Addr>().unwrap()]
    );
    // Control: the gateway's own queries are not redirected; dnsmasq answers doh.test.
    let m = in_netns(&lab.gateway, move || {
        dns_query(resolver, "doh.test", RecordType::A)
    })
    .expect("dnsmasq does not answer from the gateway");
    assert_eq!(
        common::a_records(&m),
        vec![DOH.parse::<Ipv4Addr>().unwrap()]
    );
    let e = lab.event("doh.test", "DNS refusal of doh.test", |e| {
        e["verdict"] == "block" && e["service"] == "dns"
    });
    assert_eq!(e["category"], "doh", "{e}");
    // vigie listens on [::]:53 (as deploy/vigie.service does): an IPv4 client
    // must be recorded as itself, not as ::ffff:10.77.0.2.
    assert_eq!(
        e["client_ip"], CLIENT4,
        "the DNS filter records an IPv4 client of its dual-stack listener by its \
         IPv4-mapped address: {e}"
    );
}

/// Ordinary HTTPS: pages and the lesson file, byte for byte, with curl (IPv4 and
/// IPv6) and aria2c.
fn step_https_browsing(lab: &Lab, round: &str) {
    for family in ["-4", "-6"] {
        let out = lab.curl(&lab.client, &[family, "https://files.test/page.html"]);
        assert!(
            out.status.success() && text(&out.stdout).contains(PAGE_MARK),
            "curl {family} https://files.test/page.html: {:?}\n{}{}\nvigie log:\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            lab.vigie().log_text()
        );
    }
    let dl = lab.p(&format!("curl-{round}.bin"));
    let out = lab.curl(&lab.client, &["-o", &dl, "https://files.test/lesson.bin"]);
    assert!(out.status.success(), "curl: {}", text(&out.stderr));
    assert!(
        std::fs::read(&dl).unwrap() == lesson(),
        "curl's copy differs"
    );
    let dir = format!("--dir={}", lab.p(&format!("aria2-{round}")));
    let ca = format!("--ca-certificate={}", lab.p("ca.pem"));
    let out = lab.run(
        &lab.client,
        30,
        &[
            &t("aria2c"),
            &dir,
            &ca,
            "--summary-interval=0",
            "--allow-overwrite=true",
            "https://files.test/lesson.bin",
        ],
    );
    assert!(
        out.status.success(),
        "aria2c over HTTPS: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let copy = lab.path(&format!("aria2-{round}/lesson.bin"));
    assert!(
        std::fs::read(copy).unwrap() == lesson(),
        "aria2c's copy differs"
    );
    for client in [CLIENT4, CLIENT6] {
        lab.event("files.test", "allowed HTTPS to files.test", |e| {
            e["verdict"] == "allow" && e["service"] == "proxy" && e["client_ip"] == client
        });
    }
}

/// Headless Chromium loads a page through the transparent proxy.
fn step_chromium(lab: &Lab) {
    let out = lab.chromium("https://files.test/page.html");
    assert!(
        text(&out.stdout).contains(PAGE_MARK),
        "chromium --dump-dom: {:?}\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// BitTorrent, tracker over plain HTTP: vigie reads the announce and refuses it.
fn step_torrent_http_tracker(lab: &Lab) {
    let before = lab.seen.tracker_http.load(Ordering::Relaxed);
    let out = lab.aria2c_torrent(&lab.client, "http.torrent", "bt-http");
    let got = std::fs::read(lab.path("bt-http/lesson.bin")).unwrap_or_default();
    assert!(
        got != lesson(),
        "the torrent downloaded through the gateway (plain-HTTP tracker): {}",
        text(&out.stdout)
    );
    assert_eq!(
        lab.seen.tracker_http.load(Ordering::Relaxed),
        before,
        "the announce reached the tracker"
    );
    // Control: the tracker answers an announce from the gateway.
    let out = lab.curl(
        &lab.gateway,
        &["http://tracker.test/announce?info_hash=%00&peer_id=x&port=6881"],
    );
    assert!(text(&out.stdout).contains("5:peers"), "{out:?}");
    lab.refusal(
        "tracker.test",
        "the tracker announce over HTTP",
        "proxy",
        "p2p",
        Some("tracker_announce"),
    );
}

/// BitTorrent, tracker over HTTPS (allowed on its SNI): the peer connection to
/// the seeder's port 443 reaches the transparent TLS port and is refused.
fn step_torrent_https_tracker(lab: &Lab) {
    let before = lab.seen.tracker_https.load(Ordering::Relaxed);
    let out = lab.aria2c_torrent(&lab.client, "https.torrent", "bt-https");
    let got = std::fs::read(lab.path("bt-https/lesson.bin")).unwrap_or_default();
    assert!(
        got != lesson(),
        "the torrent downloaded through the gateway (HTTPS tracker, peer on 443): {}",
        text(&out.stdout)
    );
    assert!(
        lab.seen.tracker_https.load(Ordering::Relaxed) > before,
        "the HTTPS tracker was never reached (it should be allowed on its SNI): {}\n{}",
        text(&out.stdout),
        Lab::log_tail(&lab.path("bt-https.log"))
    );
    // Control: from the gateway (nothing redirected) the same torrent completes.
    let out = lab.aria2c_torrent(&lab.gateway, "https.torrent", "bt-control");
    let got = std::fs::read(lab.path("bt-control/lesson.bin")).unwrap_or_default();
    assert!(
        got == lesson(),
        "control: the torrent did not download from the gateway, the lab is broken: {}\n{}",
        text(&out.stdout),
        Lab::log_tail(&lab.path("bt-control.log"))
    );
    lab.event(
        "tracker.test",
        "the HTTPS tracker allowed on its SNI",
        |e| e["verdict"] == "allow" && e["service"] == "proxy",
    );
    lab.refusal(
        SEEDER,
        "the BitTorrent handshake to a peer on 443",
        "proxy",
        "p2p",
        Some("bittorrent"),
    );
}

/// Tor through a bridge whose address is in the Tor list: no handshake.
fn step_tor_blocked(lab: &Lab) {
    let (log, started) = lab.tor_blocked.clone().expect("tor client started");
    let deadline = started + Duration::from_secs(20);
    while Instant::now() < deadline {
        let got = bootstrapped(&log).unwrap_or(0);
        assert!(
            got < HANDSHAKE_DONE,
            "tor got past its handshake with a listed relay ({got}%):\n{}",
            Lab::log_tail(&log)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    lab.stop("tor-blocked");
    let got = bootstrapped(&log);
    eprintln!("circumvention: tor to a listed relay: bootstrap stopped at {got:?}%");
    assert!(
        got.is_some_and(|p| p >= 5),
        "tor never tried to connect ({got:?}):\n{}",
        Lab::log_tail(&log)
    );
    lab.refusal(RELAY, "TLS to a Tor relay", "proxy", "tor", None);
}

/// Positive control: with the relay out of the list (a reload), the same client
/// completes its handshake — the block above was the list, not a broken lab.
fn step_tor_allowed_after_reload(lab: &Lab) {
    let v = lab.vigie();
    let reloads = || v.log_text().matches("reload accepted").count();
    let before = reloads();
    std::fs::write(lab.path("lists/tor.txt"), format!("{NOT_RELAY}/32\n")).unwrap();
    v.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(15);
    while reloads() == before {
        assert!(Instant::now() < deadline, "no reload:\n{}", v.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = lab.start_tor_client("tor-allowed", 9051);
    let deadline = Instant::now() + Duration::from_secs(40);
    while bootstrapped(&log).unwrap_or(0) < HANDSHAKE_DONE {
        assert!(
            Instant::now() < deadline,
            "control: tor did not complete its handshake with an unlisted relay:\n{}\nrelay:\n{}",
            Lab::log_tail(&log),
            Lab::log_tail(&lab.path("relay.log"))
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    lab.stop("tor-allowed");
    eprintln!(
        "circumvention: tor to an unlisted relay: bootstrap reached {:?}%",
        bootstrapped(&log)
    );
}

/// OpenVPN over TCP 443: refused before its TLS handshake.
fn step_openvpn(lab: &Lab) {
    let (ca, cert, key) = (lab.p("ca.pem"), lab.p("client.pem"), lab.p("client.key"));
    let ovpn = t("openvpn");
    let args: Vec<&str> = vec![
        &ovpn,
        "--dev",
        "null",
        "--proto",
        "tcp-client",
        "--remote",
        OPENVPN,
        "443",
        "--tls-client",
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "--connect-retry",
        "1",
        "--verb",
        "3",
    ];
    let (client_log, control_log) = (
        lab.path("openvpn-client.log"),
        lab.path("openvpn-control.log"),
    );
    let started = Instant::now();
    lab.spawn(&lab.client, "openvpn-client", &args, &client_log);
    lab.spawn(&lab.gateway, "openvpn-control", &args, &control_log);
    let done = "Peer Connection Initiated";
    let control = lab.wait_log(&control_log, done, 20);
    while started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.stop("openvpn-client");
    lab.stop("openvpn-control");
    assert!(
        control,
        "control: openvpn from the gateway did not connect, the lab is broken:\n{}\nserver:\n{}",
        Lab::log_tail(&control_log),
        Lab::log_tail(&lab.path("openvpn-server.log"))
    );
    let client = std::fs::read_to_string(&client_log).unwrap_or_default();
    assert!(
        !client.contains(done),
        "openvpn completed its handshake through the gateway:\n{client}"
    );
    assert!(
        client.contains("TCP connection established"),
        "openvpn never reached the gateway:\n{client}"
    );
    lab.refusal(
        OPENVPN,
        "OpenVPN over TCP 443",
        "proxy",
        "vpn",
        Some("openvpn"),
    );
}

/// SSH to port 443: refused before the banners are exchanged.
fn step_ssh(lab: &Lab) {
    let ssh = t("ssh");
    let dest = format!("eleve@{SSHD}");
    let args = [
        ssh.as_str(),
        "-v",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=5",
        "-p",
        "443",
        &dest,
        "true",
    ];
    let banner = "remote software version";
    let out = lab.run(&lab.client, 15, &args);
    let err = text(&out.stderr);
    assert!(
        !err.contains(banner),
        "ssh exchanged banners through the gateway:\n{err}"
    );
    assert!(
        err.contains("Connection established"),
        "ssh never reached the gateway:\n{err}"
    );
    let out = lab.run(&lab.gateway, 15, &args);
    let control = text(&out.stderr);
    assert!(
        control.contains(banner),
        "control: ssh from the gateway got no banner, the lab is broken:\n{control}"
    );
    lab.refusal(SSHD, "SSH on 443", "proxy", "vpn", Some("ssh"));
}

/// DoH: the server's name is refused by DNS, and by SNI when its address is pinned.
fn step_doh(lab: &Lab) {
    let before = lab.seen.doh.load(Ordering::Relaxed);
    let doh = ["--doh-url", "https://doh.test/dns-query"];
    let page = "https://files.test/page.html";
    let out = lab.curl(&lab.client, &[doh[0], doh[1], page]);
    assert!(
        !out.status.success() && !text(&out.stdout).contains(PAGE_MARK),
        "curl --doh-url worked through the gateway: {}",
        text(&out.stdout)
    );
    lab.refusal(
        "doh.test",
        "the DoH server's name by DNS",
        "dns",
        "doh",
        None,
    );
    let pin = format!("doh.test:443:{DOH}");
    let out = lab.curl(&lab.client, &["--resolve", &pin, doh[0], doh[1], page]);
    assert!(
        !out.status.success() && !text(&out.stdout).contains(PAGE_MARK),
        "curl --doh-url with the DoH address pinned worked through the gateway: {}",
        text(&out.stdout)
    );
    assert_eq!(
        lab.seen.doh.load(Ordering::Relaxed),
        before,
        "a DoH query reached the DoH server"
    );
    lab.refusal(
        "doh.test",
        "the DoH server's name by SNI",
        "proxy",
        "doh",
        None,
    );
    // Control: from the gateway, the same DoH lookup answers.
    let out = lab.curl(&lab.gateway, &["--resolve", &pin, doh[0], doh[1], page]);
    assert!(
        text(&out.stdout).contains(PAGE_MARK) && lab.seen.doh.load(Ordering::Relaxed) > before,
        "control: DoH from the gateway failed, the lab is broken: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The firewall: QUIC and DoT rejected at once, other ports dropped, the
/// allowlist opens exactly what it lists, the admin port closed to clients.
fn step_firewall(lab: &Lab) {
    let wait = Duration::from_millis(1000);
    let quic = sock(QUIC, 443);
    let before = lab.seen.quic.load(Ordering::Relaxed);
    let started = Instant::now();
    let r = in_netns(&lab.client, move || udp_probe(quic, wait));
    assert!(r.is_err(), "QUIC (UDP 443) crossed the gateway");
    assert!(
        started.elapsed() < wait,
        "QUIC was dropped, not rejected (browsers wait before falling back to TCP): {r:?}"
    );
    assert_eq!(
        lab.seen.quic.load(Ordering::Relaxed),
        before,
        "a QUIC datagram arrived"
    );
    let r = in_netns(&lab.gateway, move || udp_probe(quic, wait));
    assert!(
        r.is_ok(),
        "control: the UDP server does not answer the gateway: {r:?}"
    );

    let dot = sock(DOH, 853);
    let before = lab.seen.dot.load(Ordering::Relaxed);
    let r = in_netns(&lab.client, move || tcp_probe(dot, wait));
    assert!(
        matches!(r, Err((std::io::ErrorKind::ConnectionRefused, _))),
        "DoT (TCP 853) not refused at once: {r:?}"
    );
    let r = in_netns(&lab.gateway, move || tcp_probe(dot, wait));
    assert!(
        r.is_ok(),
        "control: the DoT port does not answer the gateway: {r:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        lab.seen.dot.load(Ordering::Relaxed),
        before + 1,
        "only the gateway's connection reaches the DoT port"
    );

    let other = sock(FILES4, 8080);
    let r = in_netns(&lab.client, move || tcp_probe(other, wait));
    assert!(
        matches!(r, Err((std::io::ErrorKind::TimedOut, _))),
        "TCP 8080 from a client was not dropped: {r:?}"
    );
    let r = in_netns(&lab.gateway, move || tcp_probe(other, wait));
    assert!(
        r.is_ok(),
        "control: port 8080 does not answer the gateway: {r:?}"
    );

    // The allowlist: NTP to the board's server once listed, and nothing else.
    let (ntp, ntp_other) = (sock(NTP, 123), sock(NTP, 124));
    let r = in_netns(&lab.client, move || udp_probe(ntp, wait));
    assert!(r.is_err(), "NTP crossed before it was allowed");
    sh(&[
        "ip",
        "netns",
        "exec",
        &lab.gateway,
        "nft",
        "add",
        "element",
        "inet",
        "vigie",
        "allow_v4",
        &format!("{{ {NTP} . udp . 123 }}"),
    ]);
    let r = in_netns(&lab.client, move || udp_probe(ntp, wait));
    assert!(
        r.is_ok(),
        "the allowlisted NTP server is unreachable: {r:?}"
    );
    let r = in_netns(&lab.client, move || udp_probe(ntp_other, wait));
    assert!(r.is_err(), "the allowlist let another port through");

    // The gateway's own services: vigie's DNS yes, the admin port no.
    let (dns, admin) = (sock(GW4, 53), sock(GW4, 8443));
    let r = in_netns(&lab.client, move || tcp_probe(dns, wait));
    assert!(
        r.is_ok(),
        "vigie's DNS (TCP) unreachable from a client: {r:?}"
    );
    let r = in_netns(&lab.client, move || tcp_probe(admin, wait));
    assert!(
        matches!(r, Err((std::io::ErrorKind::TimedOut, _))),
        "the admin port is not closed to clients: {r:?}"
    );
}

#[test]
fn circumvention_with_real_clients_through_the_appliance() {
    if let Some(why) = missing_prerequisites() {
        let msg = format!(
            "\n**********\ncircumvention: {why} — the circumvention lab did NOT run \
             (tests/run installs what it needs, as root)\n**********\n"
        );
        if std::env::var("VIGIE_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!("{msg}");
        }
        eprintln!("{msg}");
        return;
    }
    let started = Instant::now();
    let mut lab = Lab::new();
    lab.build();
    eprintln!("circumvention: lab built in {:.1?}", started.elapsed());
    // The blocked Tor client runs while the other steps do; its step reads its log.
    let log = lab.start_tor_client("tor-blocked", 9050);
    lab.tor_blocked = Some((log, Instant::now()));

    type Step = (&'static str, fn(&Lab));
    let steps: &[Step] = &[
        ("dns_redirect", step_dns_redirect),
        ("https_browsing", |lab| step_https_browsing(lab, "first")),
        ("chromium", step_chromium),
        ("torrent_http_tracker", step_torrent_http_tracker),
        ("torrent_https_tracker", step_torrent_https_tracker),
        ("openvpn", step_openvpn),
        ("ssh", step_ssh),
        ("doh", step_doh),
        ("firewall", step_firewall),
        ("tor_blocked", step_tor_blocked),
        ("tor_allowed_after_reload", step_tor_allowed_after_reload),
        ("https_browsing_again", |lab| {
            step_https_browsing(lab, "again")
        }),
        ("chromium_again", step_chromium),
    ];
    let mut failed = Vec::new();
    for (name, step) in steps {
        let t0 = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| step(&lab)));
        eprintln!(
            "circumvention: {name}: {} in {:.1?}",
            if r.is_ok() { "ok" } else { "FAILED" },
            t0.elapsed()
        );
        if let Err(e) = r {
            failed.push(format!("{name}: {}", panic_text(&*e)));
        }
    }
    eprintln!(
        "circumvention: refusals in the audit trail:\n{}",
        lab.refusals_summary()
    );
    drop(lab);
    eprintln!("circumvention: {:.1?} in all", started.elapsed());
    assert!(
        failed.is_empty(),
        "{} of {} steps failed:\n\n{}",
        failed.len(),
        steps.len(),
        failed.join("\n\n")
    );
}

#[test]
fn bencode_sorts_keys_and_frames_strings() {
    let mut out = Vec::new();
    bencode(
        &Bencode::Dict(vec![
            ("pieces", Bencode::Bytes(b"ab")),
            ("piece length", Bencode::Int(16)),
        ]),
        &mut out,
    );
    assert_eq!(out, b"d12:piece lengthi16e6:pieces2:abe");
    let t = torrent("http://x/announce", &[0u8; 3]);
    assert!(t.starts_with(b"d8:announce17:http://x/announce4:infod6:lengthi3e"));
}
