//! `vigie lists update` end to end: a local HTTPS server (rustls, a test CA given
//! to vigie through `[lists_update] ca_file`) serves a UT1-style tarball and a
//! plain list; the real binary downloads, verifies and installs them, and the
//! running filter blocks what only the download lists. Then every kind of bad
//! update — corrupt tarball, too many bad lines, plain http, 404, oversized body,
//! path traversal, a missing category, an untrusted certificate — must fail with a
//! clear message and leave the lists in force exactly as they were. Loopback only.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use hickory_proto::rr::RecordType;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio_rustls::rustls;

const BLOCK_PAGE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

// ---------------------------------------------------------------- the list server

/// What the server answers for one path.
#[derive(Clone)]
struct Route {
    status: u16,
    body: Vec<u8>,
    etag: Option<String>,
    /// Send the body chunked, without a Content-Length.
    chunked: bool,
    location: Option<String>,
}

impl Route {
    fn ok(body: Vec<u8>, etag: &str) -> Route {
        Route {
            status: 200,
            body,
            etag: Some(etag.to_string()),
            chunked: false,
            location: None,
        }
    }

    fn redirect(to: &str) -> Route {
        Route {
            status: 302,
            body: Vec::new(),
            etag: None,
            chunked: false,
            location: Some(to.to_string()),
        }
    }
}

/// Requests seen: (path, If-None-Match).
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

struct ListServer {
    addr: SocketAddr,
    ca_pem: String,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    seen: Seen,
    _rt: tokio::runtime::Runtime,
}

impl ListServer {
    fn start() -> ListServer {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose, SanType,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "vigie test lists CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf.subject_alt_names
            .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
        let key = KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &ca).unwrap();

        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
                key.serialize_der(),
            )),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (rt, listener, addr) = common::server_runtime();
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let seen: Seen = Arc::default();
        let (r, s) = (routes.clone(), seen.clone());
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, r, s) = (acceptor.clone(), r.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let (r, s) = (r.clone(), s.clone());
                        async move { Ok::<_, Infallible>(answer(&r, &s, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        ListServer {
            addr,
            ca_pem: ca.pem(),
            routes,
            seen,
            _rt: rt,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    fn set(&self, path: &str, route: Route) {
        self.routes.lock().unwrap().insert(path.to_string(), route);
    }

    fn seen(&self) -> Vec<(String, Option<String>)> {
        self.seen.lock().unwrap().clone()
    }
}

fn answer(
    routes: &Mutex<HashMap<String, Route>>,
    seen: &Seen,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<BoxBody<Bytes, Infallible>> {
    let path = req.uri().path().to_string();
    let inm = req
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    seen.lock().unwrap().push((path.clone(), inm.clone()));
    let route = routes.lock().unwrap().get(&path).cloned();
    let mut resp = hyper::Response::builder();
    let Some(route) = route else {
        return resp
            .status(404)
            .body(Full::new(Bytes::from_static(b"not found")).boxed())
            .unwrap();
    };
    if let Some(to) = &route.location {
        resp = resp.header("location", to);
    }
    if let Some(etag) = &route.etag {
        if inm.as_deref() == Some(etag.as_str()) {
            return resp
                .status(304)
                .header("etag", etag)
                .body(Full::new(Bytes::new()).boxed())
                .unwrap();
        }
        resp = resp.header("etag", etag);
    }
    let body = if route.chunked {
        let chunks: Vec<Result<Frame<Bytes>, Infallible>> = route
            .body
            .chunks(1024)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(chunks)).boxed()
    } else {
        Full::new(Bytes::from(route.body)).boxed()
    };
    resp.status(route.status).body(body).unwrap()
}

// ---------------------------------------------------------------- lists and config

/// A UT1-style tarball: `blacklists/<category>/<file>`, plus one alias link as UT1
/// has them.
fn ut1_tarball(files: &[(&str, &str)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    for (path, text) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, format!("blacklists/{path}"), text.as_bytes())
            .unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "blacklists/jeux", "gambling")
        .unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

/// The same with a raw (unchecked) entry name, as an attacker would write it.
fn evil_tarball(name: &str) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    for (n, data) in [
        ("blacklists/gambling/domains", &b"casino-evil.example\n"[..]),
        ("blacklists/doh/domains", &b"doh-evil.example\n"[..]),
        (name, &b"pwned.example\n"[..]),
    ] {
        let mut h = tar::Header::new_old();
        let field = &mut h.as_old_mut().name;
        field.fill(0);
        field[..n.len()].copy_from_slice(n.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

const V1: &[(&str, &str)] = &[
    (
        "gambling/domains",
        "shipped-casino.example\ncasino-v1.example\n",
    ),
    ("gambling/urls", "casino-v1.example/poker\n"),
    ("gambling/usage", "black\n"),
    ("doh/domains", "doh-v1.example\n"),
];

const V2: &[(&str, &str)] = &[
    (
        "gambling/domains",
        "shipped-casino.example\ncasino-v2.example\n",
    ),
    ("doh/domains", "doh-v1.example\n"),
];

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    data: PathBuf,
}

impl Setup {
    fn new(server: &ListServer) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let shipped = dir.path().join("shipped");
        for (path, text) in [
            ("ut1/gambling/domains", "shipped-casino.example\n"),
            ("ut1/doh/domains", "shipped-doh.example\n"),
            ("p2p/trackers.txt", "shipped-tracker.example\n"),
        ] {
            let p = shipped.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        std::fs::write(dir.path().join("ca.pem"), &server.ca_pem).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let config = dir.path().join("vigie.toml");
        let s = Setup { dir, config, data };
        s.write_config(&s.config, server, &server.url("/trackers.txt"), "", true);
        s
    }

    /// A variant of the config for one `vigie lists update` (same data_dir): the
    /// running vigie watches its own file, which must not change under it.
    fn variant(
        &self,
        server: &ListServer,
        trackers_url: &str,
        update_extra: &str,
        trust_ca: bool,
    ) -> PathBuf {
        let path = self.dir.path().join("variant.toml");
        self.write_config(&path, server, trackers_url, update_extra, trust_ca);
        path
    }

    /// The test config at `path`; `trackers_url` for the url list, `update_extra`
    /// appended to `[lists_update]`, the test CA trusted when `trust_ca`.
    fn write_config(
        &self,
        path: &Path,
        server: &ListServer,
        trackers_url: &str,
        update_extra: &str,
        trust_ca: bool,
    ) {
        let text = format!(
            r#"default_profile = "eleves"
client_networks = ["127.0.0.1/32", "::1/128"]
lists_dir = "{shipped}"
data_dir = "{data}"

[dns]
rate_limit_qps = 0
block_page_ipv4 = "198.51.100.7"

[lists_update]
ut1_url = "{ut1}"
max_bad_share = 0.2
timeout_ms = 20000
{update_extra}

[[categories]]
id = "gambling"
fr = "Jeux d'argent"
en = "Gambling"

[[categories]]
id = "doh"
fr = "DNS chiffré"
en = "Encrypted DNS"

[[categories]]
id = "p2p"
fr = "Poste à poste"
en = "Peer to peer"

[[lists]]
category = "gambling"
format = "ut1"
path = "ut1/gambling"

[[lists]]
category = "doh"
format = "ut1"
path = "ut1/doh"

[[lists]]
category = "p2p"
format = "domains"
path = "p2p/trackers.txt"
url = "{trackers_url}"

[profiles.eleves]
block = ["gambling", "doh", "p2p"]
block_mode = "page"
"#,
            shipped = self.dir.path().join("shipped").display(),
            data = self.data.display(),
            ut1 = server.url("/blacklists.tar.gz"),
        );
        let text = if trust_ca {
            text.replace(
                "[lists_update]\n",
                &format!(
                    "[lists_update]\nca_file = \"{}\"\n",
                    self.dir.path().join("ca.pem").display()
                ),
            )
        } else {
            text
        };
        std::fs::write(path, text).unwrap();
    }

    fn vigie(&self, args: &[&str]) -> Output {
        self.vigie_with(&self.config, args)
    }

    fn vigie_with(&self, config: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vigie"))
            .arg("--config")
            .arg(config)
            .args(args)
            .env("VIGIE_LOG", "warn")
            .output()
            .unwrap()
    }

    fn update(&self) -> (i32, String, String) {
        self.update_with(&self.config)
    }

    fn update_with(&self, config: &Path) -> (i32, String, String) {
        let out = self.vigie_with(config, &["lists", "update"]);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        eprintln!(
            "--- vigie lists update ({:?})\n{stdout}{stderr}",
            out.status
        );
        (out.status.code().unwrap_or(-1), stdout, stderr)
    }

    /// What is on disk under `<data_dir>/lists`: the `current` link and every
    /// file with its content.
    fn state(&self) -> (Option<PathBuf>, Vec<(PathBuf, Vec<u8>)>) {
        let root = self.data.join("lists");
        let link = std::fs::read_link(root.join("current")).ok();
        let mut files = Vec::new();
        walk(&root, &root, &mut files);
        files.sort();
        (link, files)
    }

    fn sets(&self) -> usize {
        std::fs::read_dir(self.data.join("lists/sets"))
            .map(|rd| rd.count())
            .unwrap_or(0)
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            walk(root, &p, out);
        } else if ft.is_file() && p.file_name().is_some_and(|n| n != ".lock") {
            out.push((
                p.strip_prefix(root).unwrap().to_path_buf(),
                std::fs::read(&p).unwrap(),
            ));
        }
    }
}

fn answer_a(v: &Vigie, name: &str) -> Vec<Ipv4Addr> {
    a_records(&udp(v.dns, name, RecordType::A))
}

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

// ---------------------------------------------------------------- the test

#[test]
fn update_installs_verified_lists_and_a_failed_update_changes_nothing() {
    let server = ListServer::start();
    server.set(
        "/blacklists.tar.gz",
        Route::ok(ut1_tarball(V1), "\"ut1-v1\""),
    );
    server.set(
        "/trackers.txt",
        Route::ok(b"# trackers\ntracker-v1.example\n".to_vec(), "\"t1\""),
    );
    let s = Setup::new(&server);
    let up = Upstream::start("cloak.example");
    let v = Vigie::start(&s.config, &[up.addr], &s.data);

    // Before: the shipped lists only.
    assert_eq!(v.metric("vigie_lists_updated_timestamp_seconds"), 0.0);
    assert_eq!(answer_a(&v, "shipped-casino.example"), vec![BLOCK_PAGE]);
    assert_eq!(answer_a(&v, "casino-v1.example"), vec![UPSTREAM_V4]);

    // 1. The first update downloads both, installs them, and the running vigie
    //    reloads (SIGHUP through its pid file) and blocks what only they list.
    let reloads = v.metric("vigie_reload_total{result=\"accepted\"}");
    let (code, out, _) = s.update();
    assert_eq!(code, 0);
    assert!(
        out.contains("UT1 tarball") && out.contains("downloaded"),
        "{out}"
    );
    assert!(out.contains("ut1/gambling") && out.contains("new"), "{out}");
    assert!(out.contains("p2p/trackers.txt"), "{out}");
    assert!(out.contains("reload: asked the running vigie"), "{out}");
    eventually("the reload after the update", || {
        v.metric("vigie_reload_total{result=\"accepted\"}") > reloads
    });
    // One reload, not a second one from the file watcher.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        v.metric("vigie_reload_total{result=\"accepted\"}"),
        reloads + 1.0
    );
    assert_eq!(answer_a(&v, "casino-v1.example"), vec![BLOCK_PAGE]);
    assert!(v.metric("vigie_lists_updated_timestamp_seconds") > 1.7e9);
    assert_eq!(answer_a(&v, "doh-v1.example"), vec![BLOCK_PAGE]);
    assert_eq!(answer_a(&v, "tracker-v1.example"), vec![BLOCK_PAGE]);
    // A category directory UT1 names twice (`jeux -> gambling`) came along.
    assert!(
        std::fs::read_to_string(s.data.join("lists/current/ut1/jeux/domains"))
            .unwrap()
            .contains("casino-v1.example")
    );
    // Other commands read the same lists (config's data_dir).
    let check = s.vigie(&["check", "--profile", "eleves", "casino-v1.example"]);
    assert_eq!(check.status.code(), Some(1), "{check:?}");
    let stats = String::from_utf8_lossy(&s.vigie(&["lists", "stats"]).stdout).into_owned();
    assert!(stats.contains("updated lists from"), "{stats}");
    assert_eq!(s.sets(), 1);

    // 2. Nothing new on the server: conditional GETs, nothing replaced, no reload.
    let (code, out, _) = s.update();
    assert_eq!(code, 0);
    assert!(
        out.contains("not modified") && out.contains("lists unchanged"),
        "{out}"
    );
    let seen = server.seen();
    assert!(
        seen.iter()
            .any(|(p, inm)| p == "/blacklists.tar.gz" && inm.as_deref() == Some("\"ut1-v1\"")),
        "{seen:?}"
    );
    assert_eq!(s.sets(), 1);
    let good = s.state();
    let reloads = v.metric("vigie_reload_total{result=\"accepted\"}");

    // 3. Every bad update fails clearly and changes nothing.
    let refused_with = |config: &Path, what: &str, want_code: i32, want: &[&str]| {
        let (code, _, err) = s.update_with(config);
        assert_eq!(code, want_code, "{what}: exit code; stderr:\n{err}");
        for w in want {
            assert!(err.contains(w), "{what}: \"{w}\" not in:\n{err}");
        }
        assert!(err.contains("nothing was changed"), "{what}: {err}");
        assert_eq!(s.state(), good, "{what}: the lists on disk changed");
        assert_eq!(
            answer_a(&v, "casino-v1.example"),
            vec![BLOCK_PAGE],
            "{what}: the lists in force changed"
        );
    };
    let refused =
        |what: &str, want_code: i32, want: &[&str]| refused_with(&s.config, what, want_code, want);

    let v2 = ut1_tarball(V2);
    server.set(
        "/blacklists.tar.gz",
        Route::ok(v2[..v2.len() / 2].to_vec(), "\"ut1-broken\""),
    );
    refused(
        "truncated tarball",
        1,
        &[&server.url("/blacklists.tar.gz"), "not a valid .tar.gz"],
    );

    server.set(
        "/blacklists.tar.gz",
        Route::ok(
            evil_tarball("blacklists/../../../escaped/domains"),
            "\"ut1-evil\"",
        ),
    );
    refused(
        "path traversal",
        1,
        &["points outside the archive", "../../../escaped/domains"],
    );
    assert!(!s.dir.path().join("escaped").exists());
    assert!(!s.data.join("escaped").exists());

    server.set(
        "/blacklists.tar.gz",
        Route::ok(
            ut1_tarball(&[("gambling/domains", "casino-v2.example\n")]),
            "\"ut1-nodoh\"",
        ),
    );
    refused(
        "a required category missing",
        1,
        &["no category \"doh\"", "ut1/doh"],
    );

    // The tarball is fine again (304) for the list cases.
    server.set(
        "/blacklists.tar.gz",
        Route::ok(ut1_tarball(V1), "\"ut1-v1\""),
    );
    server.set(
        "/trackers.txt",
        Route::ok(
            b"tracker-v2.example\nnot a domain\nalso bad here\nok.example\nbad one two\n".to_vec(),
            "\"t2\"",
        ),
    );
    refused(
        "too many bad lines",
        1,
        &[
            &server.url("/trackers.txt"),
            "p2p/trackers.txt: 3 of 5 lines are bad",
            "p2p/trackers.txt:2: expected one name per line",
        ],
    );

    server.set("/trackers.txt", Route::ok(vec![b'a'; 10_000], "\"t-big\""));
    let small = s.variant(
        &server,
        &server.url("/trackers.txt"),
        "max_bytes = 4096",
        true,
    );
    refused_with(
        &small,
        "oversized (announced)",
        1,
        &["larger than 4096 bytes"],
    );
    server.set(
        "/trackers.txt",
        Route {
            chunked: true,
            ..Route::ok(vec![b'a'; 10_000], "\"t-big-chunked\"")
        },
    );
    refused_with(
        &small,
        "oversized (chunked)",
        1,
        &["larger than 4096 bytes"],
    );

    let missing = s.variant(&server, &server.url("/missing.txt"), "", true);
    refused_with(
        &missing,
        "404",
        2,
        &[&server.url("/missing.txt"), "HTTP 404 Not Found"],
    );

    let plain = server.url("/trackers.txt").replace("https://", "http://");
    let clear = s.variant(&server, &plain, "", true);
    let text = std::fs::read_to_string(&clear).unwrap();
    let line = text.lines().position(|l| l.contains(&plain)).unwrap() + 1;
    refused_with(
        &clear,
        "plain http",
        2,
        &[&format!("variant.toml:{line}:"), "https:// only"],
    );

    // A certificate vigie does not trust: refused by TLS, not downloaded.
    let untrusted = s.variant(&server, &server.url("/trackers.txt"), "", false);
    refused_with(
        &untrusted,
        "untrusted certificate",
        2,
        &["cannot connect", "certificate", "ca_file"],
    );

    // 4. A good update again: the previous set is kept, and a rollback goes back.
    assert_eq!(
        v.metric("vigie_reload_total{result=\"accepted\"}"),
        reloads,
        "failed updates made the running vigie reload"
    );
    server.set(
        "/trackers.txt",
        Route::ok(b"tracker-v1.example\n".to_vec(), "\"t1\""),
    );
    server.set(
        "/blacklists.tar.gz",
        Route::ok(ut1_tarball(V2), "\"ut1-v2\""),
    );
    let reloads = v.metric("vigie_reload_total{result=\"accepted\"}");
    let (code, out, _) = s.update();
    assert_eq!(code, 0);
    assert!(
        out.contains("updated") && out.contains("kept for `vigie lists rollback`"),
        "{out}"
    );
    eventually("the reload after the second update", || {
        v.metric("vigie_reload_total{result=\"accepted\"}") > reloads
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        v.metric("vigie_reload_total{result=\"accepted\"}"),
        reloads + 1.0,
        "one reload per update; log:\n{}",
        v.log_text()
    );
    assert_eq!(answer_a(&v, "casino-v2.example"), vec![BLOCK_PAGE]);
    assert_eq!(answer_a(&v, "casino-v1.example"), vec![UPSTREAM_V4]);
    assert_eq!(s.sets(), 2);

    let reloads = v.metric("vigie_reload_total{result=\"accepted\"}");
    let out = s.vigie(&["lists", "rollback"]);
    assert!(out.status.success(), "{out:?}");
    eventually("the reload after the rollback", || {
        v.metric("vigie_reload_total{result=\"accepted\"}") > reloads
    });
    assert_eq!(answer_a(&v, "casino-v1.example"), vec![BLOCK_PAGE]);
    assert_eq!(answer_a(&v, "casino-v2.example"), vec![UPSTREAM_V4]);

    assert!(v.stop().success());
    // The pid file goes with the process.
    assert!(!s.data.join("vigie.pid").exists());
}

/// Without a running vigie the update still installs the lists (they apply at
/// the next start), `--no-reload` asks nobody, and `--data-dir` places them.
#[test]
fn update_without_a_running_vigie_and_with_data_dir() {
    let server = ListServer::start();
    server.set(
        "/blacklists.tar.gz",
        Route::ok(ut1_tarball(V1), "\"ut1-v1\""),
    );
    server.set(
        "/trackers.txt",
        Route::ok(b"tracker-v1.example\n".to_vec(), "\"t1\""),
    );
    let s = Setup::new(&server);
    let (code, out, _) = s.update();
    assert_eq!(code, 0);
    assert!(out.contains("no running vigie"), "{out}");
    // The domain set compiled while verifying was handed over as the cache.
    let stats = String::from_utf8_lossy(&s.vigie(&["lists", "stats"]).stdout).into_owned();
    assert!(stats.contains("(from cache)"), "{stats}");

    // Redirects are followed on HTTPS, refused to plain http.
    server.set("/moved.txt", Route::redirect("/trackers.txt"));
    let moved = s.variant(&server, &server.url("/moved.txt"), "", true);
    let (code, out, err) = s.update_with(&moved);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("p2p/trackers.txt") && out.contains("downloaded"),
        "{out}"
    );
    let downgrade = format!("http://{}/trackers.txt", server.addr);
    server.set("/downgrade.txt", Route::redirect(&downgrade));
    let cfg = s.variant(&server, &server.url("/downgrade.txt"), "", true);
    let (code, _, err) = s.update_with(&cfg);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("redirected to {downgrade}, refused"))
            && err.contains("https:// only"),
        "{err}"
    );

    let other = s.dir.path().join("other-data");
    let out = s.vigie(&[
        "lists",
        "update",
        "--no-reload",
        "--data-dir",
        other.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("--no-reload"), "{text}");
    assert!(other.join("lists/current/ut1/gambling/domains").is_file());
    assert!(other.join("lists/current/update.json").is_file());
}

/// A category that collapsed at the source (UT1 once published a nearly empty
/// one) is refused against the list in force, which stays; an operator who knows
/// the source really shrank lets it through with `min_share_of_current = 0`.
#[test]
fn update_refuses_a_list_that_collapsed_at_its_source() {
    let server = ListServer::start();
    let many: String = (0..100).map(|i| format!("casino-{i}.example\n")).collect();
    server.set(
        "/blacklists.tar.gz",
        Route::ok(
            ut1_tarball(&[
                ("gambling/domains", &many),
                ("doh/domains", "doh-v1.example\n"),
            ]),
            "\"ut1-big\"",
        ),
    );
    server.set(
        "/trackers.txt",
        Route::ok(b"tracker-v1.example\n".to_vec(), "\"t1\""),
    );
    let s = Setup::new(&server);
    let (code, _, err) = s.update();
    assert_eq!(code, 0, "{err}");
    let good = s.state();

    server.set(
        "/blacklists.tar.gz",
        Route::ok(
            ut1_tarball(&[
                ("gambling/domains", "casino-0.example\n"),
                ("doh/domains", "doh-v1.example\n"),
            ]),
            "\"ut1-collapsed\"",
        ),
    );
    let (code, _, err) = s.update();
    assert_eq!(code, 1, "a collapsed category must be refused:\n{err}");
    assert!(
        err.contains("ut1/gambling would go from 100 entries to 1")
            && err.contains("min_share_of_current = 50 %")
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(s.state(), good, "the lists in force changed");
    let check = s.vigie(&["check", "--profile", "eleves", "casino-42.example"]);
    assert_eq!(check.status.code(), Some(1), "still blocked: {check:?}");

    let off = s.variant(
        &server,
        &server.url("/trackers.txt"),
        "min_share_of_current = 0",
        true,
    );
    let (code, _, err) = s.update_with(&off);
    assert_eq!(code, 0, "{err}");
    assert_ne!(s.state(), good);
}
