//! End to end: encrypted DNS upstreams. vigie forwards queries to a DNS-over-TLS
//! server (RFC 7858) and to a DNS-over-HTTPS server (RFC 8484, HTTP/2) that the test
//! starts on loopback, with certificates from the test's own CA. The CA is trusted
//! through `[dns] upstream_ca_file`, as a school board's resolvers would be; without
//! it the upstream is not trusted and the client gets SERVFAIL, never an answer.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::{UPSTREAM_V4, Vigie, a_records, udp};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// The test CA and a server certificate for `name` (and 127.0.0.1) it signed.
struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn pki(name: &str, alpn: &[&[u8]]) -> Pki {
    let issuer = common::board_ca();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Pki {
        ca_pem: issuer.pem(),
        server: Arc::new(server),
    }
}

/// A DoT or DoH server on loopback answering like `common::Upstream`.
struct Server {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

fn cloak() -> Name {
    Name::from_ascii("cloak.test.").unwrap()
}

impl Server {
    fn dot(tls: Arc<rustls::ServerConfig>) -> Server {
        Server::start(tls, |stream, queries| async move {
            let mut stream = stream;
            loop {
                let mut len = [0u8; 2];
                if stream.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
                if stream.read_exact(&mut msg).await.is_err() {
                    return;
                }
                queries.fetch_add(1, Ordering::SeqCst);
                let Some(reply) = common::answer(&msg, &cloak(), false) else {
                    return;
                };
                let mut out = (reply.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&reply);
                if stream.write_all(&out).await.is_err() {
                    return;
                }
            }
        })
    }

    /// RFC 8484 over HTTP/2: `POST /dns-query` with `application/dns-message`.
    fn doh(tls: Arc<rustls::ServerConfig>) -> Server {
        Server::start(tls, |stream, queries| async move {
            let Ok(mut conn) = h2::server::handshake(stream).await else {
                return;
            };
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                let queries = queries.clone();
                tokio::spawn(async move {
                    let ok_path = req.uri().path() == "/dns-query";
                    let mut body = req.into_body();
                    let mut msg = Vec::new();
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                        msg.extend_from_slice(&chunk);
                    }
                    let reply = if ok_path {
                        queries.fetch_add(1, Ordering::SeqCst);
                        common::answer(&msg, &cloak(), false)
                    } else {
                        None
                    };
                    let status = if reply.is_some() { 200 } else { 404 };
                    let resp = http::Response::builder()
                        .status(status)
                        .header("content-type", "application/dns-message")
                        .body(())
                        .unwrap();
                    let Ok(mut send) = respond.send_response(resp, false) else {
                        return;
                    };
                    let _ = send.send_data(Bytes::from(reply.unwrap_or_default()), true);
                });
            }
        })
    }

    fn start<F, Fut>(tls: Arc<rustls::ServerConfig>, serve: F) -> Server
    where
        F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, Arc<AtomicUsize>) -> Fut
            + Send
            + Sync
            + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (rt, listener, addr) = common::server_runtime();
        let queries = Arc::new(AtomicUsize::new(0));
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let serve = Arc::new(serve);
        let q = queries.clone();
        rt.spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, serve, q) = (acceptor.clone(), serve.clone(), q.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(s).await {
                        serve(tls, q).await;
                    }
                });
            }
        });
        Server {
            addr,
            queries,
            _rt: rt,
        }
    }
}

fn config(dir: &Path, upstream: &str, ca: Option<&str>) -> std::path::PathBuf {
    let ca_line = match ca {
        Some(pem) => {
            std::fs::write(dir.join("board-ca.pem"), pem).unwrap();
            "upstream_ca_file = \"board-ca.pem\"\n"
        }
        None => "",
    };
    common::write_config(
        dir,
        &format!("upstreams = [\"{upstream}\"]\nupstream_timeout_ms = 1500\n{ca_line}"),
    )
}

/// Asks vigie for a few names through `upstream`: answered from the server with the
/// CA, SERVFAIL without it.
fn check(upstream: impl Fn(SocketAddr) -> String, server: impl Fn(&Pki) -> Server, alpn: &[&[u8]]) {
    let pki = pki("resolver.board.test", alpn);
    let srv = server(&pki);
    let spec = upstream(srv.addr);

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &spec, Some(&pki.ca_pem));
    let v = Vigie::start(&cfg, &[], dir.path());
    for name in ["www.example.org", "eleves.cssdm.test", "www.example.org"] {
        let m = udp(v.dns, name, RecordType::A);
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{spec}: {name}"
        );
        assert_eq!(a_records(&m), vec![UPSTREAM_V4], "{spec}: {name}");
    }
    // Two distinct names asked; the repeat came from the cache.
    assert_eq!(srv.queries.load(Ordering::SeqCst), 2, "{spec}");
    let m = udp(v.dns, "loopback-check.loopback.test", RecordType::A);
    assert_eq!(a_records(&m), vec![Ipv4Addr::LOCALHOST]);
    // Filtering is unchanged: a gambling name gets the block page, never asked.
    let m = udp(v.dns, &common::ut1_gambling_domain(), RecordType::A);
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(198, 51, 100, 7)]);
    assert_eq!(srv.queries.load(Ordering::SeqCst), 3, "{spec}");
    drop(v);

    // The same upstream without the board's CA: not trusted, nothing answered.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &spec, None);
    let v = Vigie::start(&cfg, &[], dir.path());
    let before = srv.queries.load(Ordering::SeqCst);
    let m = udp(v.dns, "untrusted.example.org", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{spec}");
    assert!(a_records(&m).is_empty());
    assert_eq!(
        srv.queries.load(Ordering::SeqCst),
        before,
        "{spec}: no query sent"
    );
}

#[test]
fn dns_over_tls_upstream_with_the_boards_ca() {
    check(
        |a| format!("tls://{a}#resolver.board.test"),
        |p| Server::dot(p.server.clone()),
        &[],
    );
}

#[test]
fn dns_over_https_upstream_with_the_boards_ca() {
    check(
        |a| format!("https://{a}/dns-query#resolver.board.test"),
        |p| Server::doh(p.server.clone()),
        &[b"h2"],
    );
}

#[test]
fn a_bad_upstream_ca_file_stops_the_start_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "tls://127.0.0.1:853#x.test",
        Some("not a pem\n"),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigie"))
        .args(["--config", cfg.to_str().unwrap(), "run", "--user", "root"])
        .args([
            "--dns-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--proxy-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dns.upstream_ca_file"), "{err}");
    assert!(err.contains("board-ca.pem"), "{err}");
    assert!(err.contains("no certificate"), "{err}");
}
