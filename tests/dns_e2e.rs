//! End to end: the real `vigie` binary on loopback, with a test upstream, queried
//! with hickory-proto messages over UDP and TCP and with `dig`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use vigie::dns::wire::{EDE_BLOCKED, EDE_FILTERED, ede_of};

fn setup(extra: &str) -> (tempfile::TempDir, Upstream, Vigie, String) {
    let dir = tempfile::tempdir().unwrap();
    let gambling = ut1_gambling_domain();
    let up = Upstream::start(&gambling);
    let cfg = write_config(dir.path(), extra);
    let v = Vigie::start(&cfg, &[up.addr], dir.path());
    (dir, up, v, gambling)
}

#[test]
fn dns_e2e_allowed_blocked_safe_search_refused_metrics() {
    let (dir, up, v, gambling) = setup("");

    // Allowed names resolve to the upstream's address, over UDP and TCP, A and AAAA.
    let m = udp(v.dns, "www.example.org", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&m), vec![UPSTREAM_V4]);
    let m = tcp(v.dns, "www.example.org", RecordType::AAAA);
    assert_eq!(aaaa_records(&m), vec![UPSTREAM_V6]);
    // The second identical query is a cache hit: the upstream sees nothing new.
    let before = up.count();
    let m = udp(v.dns, "WWW.Example.ORG", RecordType::A);
    assert_eq!(a_records(&m), vec![UPSTREAM_V4]);
    assert_eq!(
        m.queries[0].name.to_ascii(),
        "WWW.Example.ORG.",
        "question case kept"
    );
    assert_eq!(up.count(), before, "answered from cache");
    // Negative answers are cached too (RFC 2308).
    let m = udp(v.dns, "nx.example.org", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let before = up.count();
    let m = udp(v.dns, "nx.example.org", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(up.count(), before, "negative answer from cache");

    // A UT1 gambling domain and its subdomain, in each block mode, with the EDE.
    for name in [
        gambling.clone(),
        format!("www.{gambling}"),
        format!("a.b.{gambling}"),
    ] {
        // page: A → block page, AAAA → block page v6, other types: no data.
        let m = udp_from(PAGE_CLIENT, v.dns, &name, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(
            a_records(&m),
            vec!["198.51.100.7".parse::<std::net::Ipv4Addr>().unwrap()],
            "{name}"
        );
        let ede = ede_of(&m).expect("EDE on blocked answer");
        assert_eq!(ede.code, EDE_FILTERED);
        assert!(ede.text.contains("gambling"), "{}", ede.text);
        let m = udp_from(PAGE_CLIENT, v.dns, &name, RecordType::AAAA);
        assert_eq!(
            aaaa_records(&m),
            vec!["2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap()]
        );
        for qtype in [
            RecordType::HTTPS,
            RecordType::MX,
            RecordType::TXT,
            RecordType::CNAME,
        ] {
            let m = udp_from(PAGE_CLIENT, v.dns, &name, qtype);
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::NoError,
                "{name} {qtype}"
            );
            assert!(m.answers.is_empty(), "{name} {qtype}: {:?}", m.answers);
            assert!(ede_of(&m).is_some(), "{name} {qtype}");
        }
        // nxdomain
        let m = udp_from(NXDOMAIN_CLIENT, v.dns, &name, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert_eq!(ede_of(&m).unwrap().code, EDE_FILTERED);
        // null
        let m = udp_from(NULL_CLIENT, v.dns, &name, RecordType::A);
        assert_eq!(a_records(&m), vec![std::net::Ipv4Addr::UNSPECIFIED]);
        let m = udp_from(NULL_CLIENT, v.dns, &name, RecordType::AAAA);
        assert_eq!(aaaa_records(&m), vec![std::net::Ipv6Addr::UNSPECIFIED]);
        assert!(ede_of(&m).unwrap().text.contains("gambling"));
        // TCP too
        let m = tcp(v.dns, &name, RecordType::A);
        assert_eq!(
            a_records(&m),
            vec!["198.51.100.7".parse::<std::net::Ipv4Addr>().unwrap()]
        );
    }

    // CNAME cloaking: an allowed name whose chain reaches the gambling domain.
    let m = udp_from(NXDOMAIN_CLIENT, v.dns, "cloaked.test", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        ede_of(&m).unwrap().text.contains("via CNAME"),
        "{:?}",
        ede_of(&m)
    );

    // Safe search: CNAME to the safe host plus its address.
    let m = udp(v.dns, "www.google.ca", RecordType::A);
    assert_eq!(cname_targets(&m), vec!["forcesafesearch.google.com."]);
    assert_eq!(
        a_records(&m),
        vec!["216.239.38.120".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    let m = udp(v.dns, "www.youtube.com", RecordType::A);
    assert_eq!(cname_targets(&m), vec!["restrict.youtube.com."]);
    let m = udp_from(NXDOMAIN_CLIENT, v.dns, "m.youtube.com", RecordType::A);
    assert_eq!(cname_targets(&m), vec!["restrictmoderate.youtube.com."]);
    let m = udp(v.dns, "www.bing.com", RecordType::A);
    assert_eq!(cname_targets(&m), vec!["strict.bing.com."]);
    let m = udp(v.dns, "duckduckgo.com", RecordType::A);
    assert_eq!(cname_targets(&m), vec!["safe.duckduckgo.com."]);
    assert_eq!(
        a_records(&m),
        vec!["52.142.124.215".parse::<std::net::Ipv4Addr>().unwrap()]
    );

    // Canary and Private Relay: NXDOMAIN in every block mode, EDE 15.
    for client in [PAGE_CLIENT, NULL_CLIENT, NXDOMAIN_CLIENT] {
        for name in [
            "use-application-dns.net",
            "mask.icloud.com",
            "mask-h2.icloud.com",
        ] {
            let m = udp_from(client, v.dns, name, RecordType::A);
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::NXDomain,
                "{name} from {client}"
            );
            assert_eq!(ede_of(&m).unwrap().code, EDE_BLOCKED);
        }
    }

    // A client outside the client networks is refused, UDP and nothing leaks upstream.
    let before = up.count();
    let m = udp_from(OUTSIDER, v.dns, "www.example.org", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(m.answers.is_empty());
    assert_eq!(up.count(), before);

    // Large answers: TC over UDP, complete over TCP.
    let m = udp(v.dns, "big.test", RecordType::TXT);
    assert!(m.metadata.truncation, "big answer truncated over UDP");
    let m = tcp(v.dns, "big.test", RecordType::TXT);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 30);

    // dig, UDP and TCP.
    if have_dig() {
        let out = dig(v.dns, &["www.example.org", "A", "+short"]);
        assert_eq!(out.trim(), UPSTREAM_V4.to_string());
        let out = dig(v.dns, &[&gambling, "A"]);
        assert!(out.contains("198.51.100.7"), "{out}");
        assert!(
            out.contains("EDE: 17 (Filtered)") && out.contains("gambling"),
            "{out}"
        );
        let out = dig(v.dns, &["+tcp", &format!("www.{gambling}"), "AAAA"]);
        assert!(out.contains("2001:db8::7"), "{out}");
        let out = dig(v.dns, &["use-application-dns.net", "A"]);
        assert!(out.contains("status: NXDOMAIN"), "{out}");
        let out = dig(v.dns, &["+tcp", "www.google.fr", "A"]);
        assert!(
            out.contains("forcesafesearch.google.com.") && out.contains("216.239.38.120"),
            "{out}"
        );
        let out = dig(v.dns, &["big.test", "TXT", "+ignore"]);
        assert!(out.contains("flags: qr tc"), "{out}");
        let out = dig(v.dns, &["big.test", "TXT"]); // dig retries over TCP itself
        assert!(out.contains("ANSWER: 30"), "{out}");
    } else {
        eprintln!("dig not installed: dig checks skipped");
    }

    // Metrics and health.
    assert!(v.http_get("/healthz").contains("ok"));
    assert!(v.metric("vigie_dns_cache_total{result=\"hit\"}") >= 2.0);
    assert!(v.metric("vigie_dns_cache_total{result=\"miss\"}") >= 1.0);
    // Read at scrape time (the 10 s upkeep alone left it at 0 this early).
    assert!(v.metric("vigie_dns_cache_entries") >= 1.0);
    assert!(v.metric("vigie_dns_refused_total{reason=\"client_network\"}") >= 1.0);
    assert!(
        v.metric("vigie_decisions_total{category=\"gambling\",service=\"dns\",verdict=\"block\"}")
            >= 9.0
    );
    assert!(v.metric("vigie_dns_cname_blocked_total") >= 1.0);
    assert!(v.metric("vigie_dns_truncated_total") >= 1.0);
    assert!(v.metric("vigie_dns_queries_total{transport=\"tcp\"}") >= 4.0);

    // Clean stop on SIGTERM; the audit log holds the blocked queries (and only them).
    let status = v.stop();
    assert!(status.success(), "exit status {status:?}");
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).expect("audit log");
    let events: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events.iter().all(|e| e["verdict"] == "block"),
        "only blocks recorded by default"
    );
    let ev = events
        .iter()
        .find(|e| e["target"] == gambling.as_str() && e["qtype"] == "A")
        .expect("audit event for the gambling domain");
    assert_eq!(ev["category"], "gambling");
    assert_eq!(ev["profile"], "page");
    assert_eq!(ev["client_ip"], "127.0.0.1");
    assert_eq!(ev["entry"], gambling.as_str());
    assert!(
        events
            .iter()
            .any(|e| e["via"] == gambling.as_str() && e["target"] == "cloaked.test")
    );
}

#[test]
fn dns_e2e_dead_upstream_servfail_then_next_upstream() {
    let dir = tempfile::tempdir().unwrap();
    // A bound socket that never answers: a dead upstream.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let gambling = ut1_gambling_domain();
    let cfg = write_config(dir.path(), "upstream_timeout_ms = 500");

    // Only the dead upstream: SERVFAIL within the bound; blocked names still instant.
    let v = Vigie::start(&cfg, &[dead.local_addr().unwrap()], dir.path());
    let t = Instant::now();
    let m = exchange_udp(
        v.dns,
        &query_message("www.example.org", RecordType::A, true),
        Duration::from_secs(3),
    )
    .expect("an answer");
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let m = udp(v.dns, &gambling, RecordType::A);
    assert_eq!(a_records(&m).len(), 1);
    assert!(t.elapsed() < Duration::from_millis(200));
    assert!(v.metric("vigie_dns_upstream_total{result=\"timeout\"}") >= 1.0);
    drop(v);

    // Dead first, live second: answers come from the live one.
    let up = Upstream::start(&gambling);
    let v = Vigie::start(&cfg, &[dead.local_addr().unwrap(), up.addr], dir.path());
    for i in 0..5 {
        let t = Instant::now();
        let m = udp(v.dns, &format!("n{i}.example.org"), RecordType::A);
        assert_eq!(a_records(&m), vec![UPSTREAM_V4]);
        assert!(t.elapsed() < Duration::from_millis(1500));
    }
}

#[test]
fn dns_e2e_rate_limit_and_malformed() {
    let (dir, _up, v, _g) = setup("rate_limit_qps = 5\nrate_limit_burst = 5\nlog_allowed = true");
    // Burst of 30 from one client: about 5 answered, the rest dropped.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for i in 0..30u16 {
        let mut m = query_message("rl.example.org", RecordType::A, false);
        m.metadata.id = i;
        sock.send_to(&m.to_vec().unwrap(), v.dns).unwrap();
    }
    let mut answered = 0;
    let mut buf = [0u8; 1500];
    while sock.recv_from(&mut buf).is_ok() {
        answered += 1;
    }
    assert!((4..=8).contains(&answered), "answered {answered}");
    assert!(v.metric("vigie_dns_rate_limited_total") >= 20.0);

    // Malformed packets: FORMERR when the header is readable, dropped otherwise.
    std::thread::sleep(Duration::from_millis(1100)); // let the bucket refill
    let s = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s.send_to(
        &[
            0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x3f, b'a',
        ],
        v.dns,
    )
    .unwrap();
    let (n, _) = s.recv_from(&mut buf).expect("FORMERR answer");
    assert_eq!(&buf[..2], &[0x12, 0x34]);
    assert_eq!(buf[3] & 0x0f, 1, "FORMERR");
    assert!(n >= 12);
    s.send_to(&[1, 2, 3], v.dns).unwrap();
    assert!(s.recv_from(&mut buf).is_err(), "runt packets are dropped");
    assert!(v.metric("vigie_dns_malformed_total{action=\"formerr\"}") >= 1.0);
    assert!(v.metric("vigie_dns_malformed_total{action=\"dropped\"}") >= 1.0);
    // Still serving.
    let m = udp_from(NXDOMAIN_CLIENT, v.dns, "still.example.org", RecordType::A);
    assert_eq!(a_records(&m), vec![UPSTREAM_V4]);

    // log_allowed = true: allowed queries are in the audit log too.
    assert!(v.stop().success());
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).expect("audit log");
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"target\":\"still.example.org\"")
                && l.contains("\"verdict\":\"allow\"")),
        "{audit}"
    );
}

/// A TCP connection to `server` from the loopback address `src`.
fn tcp_from(src: std::net::Ipv4Addr, server: std::net::SocketAddr) -> std::net::TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&std::net::SocketAddr::from((src, 0)).into())
        .unwrap();
    s.connect(&server.into()).unwrap();
    let s: std::net::TcpStream = s.into();
    // Short: a test reads 32 open connections one after the other, well within
    // vigie's idle timeout (10 s).
    s.set_read_timeout(Some(Duration::from_millis(150)))
        .unwrap();
    s
}

/// Whether the server closed `s`: EOF (or a reset) rather than a timeout.
fn closed_by_server(mut s: &std::net::TcpStream) -> bool {
    use std::io::Read;
    let mut b = [0u8; 512];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue, // an answer before the close
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

#[test]
fn dns_e2e_tcp_outsiders_are_closed_and_one_client_cannot_hold_every_slot() {
    use std::io::Write;
    let (_dir, _up, v, _g) = setup("");

    // An outsider's connection is closed, not left open after a REFUSED.
    let mut s = tcp_from(OUTSIDER, v.dns);
    let q = query_message("www.example.org", RecordType::A, false)
        .to_vec()
        .unwrap();
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    let _ = s.write_all(&framed);
    assert!(closed_by_server(&s), "outsider's connection left open");
    assert!(v.metric("vigie_dns_tcp_refused_total{reason=\"client_network\"}") >= 1.0);

    // One client opening more connections than its share (32) gets the extra
    // ones closed at once; another client is still answered over TCP.
    let held: Vec<_> = (0..40).map(|_| tcp_from(PAGE_CLIENT, v.dns)).collect();
    let shut = held.iter().filter(|s| closed_by_server(s)).count();
    assert_eq!(shut, 8, "connections past the per-client cap");
    assert!(v.metric("vigie_dns_tcp_refused_total{reason=\"client_limit\"}") >= 8.0);
    let m = exchange_tcp_from(NXDOMAIN_CLIENT, v.dns);
    assert_eq!(a_records(&m), vec![UPSTREAM_V4]);
    drop(held);
}

fn exchange_tcp_from(
    src: std::net::Ipv4Addr,
    server: std::net::SocketAddr,
) -> hickory_proto::op::Message {
    use std::io::{Read, Write};
    let mut s = tcp_from(src, server);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let q = query_message("tcp.example.org", RecordType::A, false)
        .to_vec()
        .unwrap();
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).unwrap();
    hickory_proto::op::Message::from_vec(&buf).unwrap()
}
