//! Shared helpers of the end-to-end DNS tests: a small authoritative upstream on
//! loopback, the real `vigie` binary started on free ports, and DNS clients (raw
//! hickory-proto messages over UDP/TCP, and `dig`). Loopback only; every wait is
//! bounded.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// The address every allowed name resolves to at the test upstream.
pub const UPSTREAM_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const UPSTREAM_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
/// Safe-search hosts and the addresses the test upstream gives them.
pub const SAFE_HOSTS: &[(&str, Ipv4Addr)] = &[
    (
        "forcesafesearch.google.com.",
        Ipv4Addr::new(216, 239, 38, 120),
    ),
    ("strict.bing.com.", Ipv4Addr::new(204, 79, 197, 220)),
    ("safe.duckduckgo.com.", Ipv4Addr::new(52, 142, 124, 215)),
    ("restrict.youtube.com.", Ipv4Addr::new(216, 239, 38, 119)),
    (
        "restrictmoderate.youtube.com.",
        Ipv4Addr::new(216, 239, 38, 120),
    ),
];

/// A gambling domain of the shipped UT1 list (its first entry).
pub fn ut1_gambling_domain() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("blocklists/ut1/gambling/domains");
    let text = std::fs::read_to_string(&path).expect("shipped UT1 gambling list");
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#') && l.contains('.'))
        .expect("a domain in the gambling list")
        .to_string()
}

/// A tiny authoritative server for the tests, on UDP and TCP of one loopback port:
/// - any name: A `UPSTREAM_V4`, AAAA `UPSTREAM_V6`, other types "no data" + SOA;
/// - `nx.*` names: NXDOMAIN + SOA (negative TTL 30);
/// - the safe-search hosts: their addresses;
/// - `big.test` TXT: ~3 kB, more than fits in UDP (truncated there);
/// - `cloaked.test`: a CNAME to `cloak_target`, then its address;
/// - names under `loopback.test`: A 127.0.0.1, AAAA ::1 (origins the tests start).
pub struct Upstream {
    pub addr: SocketAddr,
    pub queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    pub fn start(cloak_target: &str) -> Upstream {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind upstream udp");
        let addr = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(addr).expect("bind upstream tcp");
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        tcp.set_nonblocking(true).unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let target = Name::from_ascii(format!("{cloak_target}.")).unwrap();
        {
            let (q, s, t) = (queries.clone(), stop.clone(), target.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !s.load(Ordering::Relaxed) {
                    let Ok((n, peer)) = udp.recv_from(&mut buf) else {
                        continue;
                    };
                    q.fetch_add(1, Ordering::Relaxed);
                    if let Some(reply) = answer(&buf[..n], &t, true) {
                        let _ = udp.send_to(&reply, peer);
                    }
                }
            });
        }
        {
            let (q, s, t) = (queries.clone(), stop.clone(), target);
            std::thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let Ok((mut stream, _)) = tcp.accept() else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    let (q, t) = (q.clone(), t.clone());
                    std::thread::spawn(move || {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                        loop {
                            let mut len = [0u8; 2];
                            if stream.read_exact(&mut len).is_err() {
                                return;
                            }
                            let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
                            if stream.read_exact(&mut msg).is_err() {
                                return;
                            }
                            q.fetch_add(1, Ordering::Relaxed);
                            let Some(reply) = answer(&msg, &t, false) else {
                                return;
                            };
                            let mut out = (reply.len() as u16).to_be_bytes().to_vec();
                            out.extend_from_slice(&reply);
                            if stream.write_all(&out).is_err() {
                                return;
                            }
                        }
                    });
                }
            });
        }
        Upstream {
            addr,
            queries,
            stop,
        }
    }

    pub fn count(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn soa(zone: &Name) -> Record {
    let soa = SOA::new(
        Name::from_ascii("ns.test.").unwrap(),
        Name::from_ascii("hostmaster.test.").unwrap(),
        1,
        3600,
        600,
        86400,
        30,
    );
    Record::from_rdata(zone.clone(), 60, RData::SOA(soa))
}

/// The fake upstream's answer to `packet` (see [`Upstream`]); also served over
/// DoT and DoH by tests/dns_upstream_tls.rs.
pub fn answer(packet: &[u8], cloak_target: &Name, udp: bool) -> Option<Vec<u8>> {
    let req = Message::from_vec(packet).ok()?;
    let q = req.queries.first()?.clone();
    let mut resp = Message::response(req.metadata.id, OpCode::Query);
    resp.metadata.authoritative = true;
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_query(q.clone());
    if req.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        resp.edns = Some(e);
    }
    let name = q.name.clone();
    let lower = name.to_lowercase().to_ascii();
    let qt = q.query_type;
    if lower.starts_with("nx.") {
        resp.metadata.response_code = ResponseCode::NXDomain;
        resp.add_authority(soa(&name));
    } else if let Some((_, ip)) = SAFE_HOSTS.iter().find(|(h, _)| *h == lower) {
        if qt == RecordType::A {
            resp.add_answer(Record::from_rdata(name, 300, RData::A(A(*ip))));
        } else {
            resp.add_authority(soa(&name));
        }
    } else if lower == "big.test." && qt == RecordType::TXT {
        for i in 0..30 {
            let text = format!("{i:02}-{}", "x".repeat(95));
            resp.add_answer(Record::from_rdata(
                name.clone(),
                300,
                RData::TXT(TXT::new(vec![text])),
            ));
        }
    } else if lower == "cloaked.test." {
        resp.add_answer(Record::from_rdata(
            name,
            300,
            RData::CNAME(CNAME(cloak_target.clone())),
        ));
        if qt == RecordType::A {
            resp.add_answer(Record::from_rdata(
                cloak_target.clone(),
                300,
                RData::A(A(UPSTREAM_V4)),
            ));
        }
    } else if lower.ends_with(".loopback.test.") && qt == RecordType::A {
        resp.add_answer(Record::from_rdata(
            name,
            300,
            RData::A(A(Ipv4Addr::LOCALHOST)),
        ));
    } else if lower.ends_with(".loopback.test.") && qt == RecordType::AAAA {
        resp.add_answer(Record::from_rdata(
            name,
            300,
            RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
        ));
    } else if qt == RecordType::A {
        resp.add_answer(Record::from_rdata(name, 300, RData::A(A(UPSTREAM_V4))));
    } else if qt == RecordType::AAAA {
        resp.add_answer(Record::from_rdata(
            name,
            300,
            RData::AAAA(AAAA(UPSTREAM_V6)),
        ));
    } else {
        resp.add_authority(soa(&name));
    }
    let bytes = resp.to_vec().ok()?;
    let limit = if udp {
        req.edns
            .as_ref()
            .map(|e| e.max_payload() as usize)
            .unwrap_or(512)
    } else {
        65535
    };
    if bytes.len() > limit {
        return resp.truncate().to_vec().ok();
    }
    Some(bytes)
}

/// A running `vigie run`, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Vigie {
    child: Option<Child>,
    pub dns: SocketAddr,
    pub admin: SocketAddr,
    /// The explicit proxy (always started on a free port).
    pub proxy: SocketAddr,
    /// Further `name addr` pairs of the ready line (`transparent_http`, …).
    pub extra: Vec<(String, SocketAddr)>,
    pub log: PathBuf,
}

impl Vigie {
    /// Starts the binary with `config`, upstream `upstream`, data in `data_dir`, and
    /// waits (at most 60 s) for its "ready" line.
    pub fn start(config: &Path, upstreams: &[SocketAddr], data_dir: &Path) -> Vigie {
        Vigie::start_with(config, upstreams, data_dir, &[])
    }

    /// Like [`Vigie::start`], with extra `vigie run` arguments.
    pub fn start_with(
        config: &Path,
        upstreams: &[SocketAddr],
        data_dir: &Path,
        extra_args: &[&str],
    ) -> Vigie {
        Vigie::start_wrapped(&[], config, upstreams, data_dir, extra_args)
    }

    /// Like [`Vigie::start_with`], run through `wrapper` (e.g. `ip netns exec NS`,
    /// which execs in place, so the PID stays vigie's).
    pub fn start_wrapped(
        wrapper: &[&str],
        config: &Path,
        upstreams: &[SocketAddr],
        data_dir: &Path,
        extra_args: &[&str],
    ) -> Vigie {
        let log = data_dir.join("vigie.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_vigie"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_vigie")),
        };
        cmd.arg("--config").arg(config).arg("run");
        // Free loopback ports, unless the caller chose the address.
        for flag in ["--dns-listen", "--admin-listen", "--proxy-listen"] {
            if !extra_args.contains(&flag) {
                cmd.args([flag, "127.0.0.1:0"]);
            }
        }
        // Started as root (CI), vigie would give root up for the `vigie` user, which
        // cannot read the tests' root-only temporary directories: keep root unless
        // the test names a user (tests/drop_root.rs). Ignored when not root.
        if !extra_args.contains(&"--user") {
            cmd.args(["--user", "root"]);
        }
        cmd.args(extra_args)
            .arg("--data-dir")
            .arg(data_dir)
            .env("VIGIE_LOG", "info,vigie=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        for u in upstreams {
            cmd.arg("--upstream").arg(u.to_string());
        }
        let mut child = cmd.spawn().expect("start vigie");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("vigie ready:") => {
                    // "vigie ready: dns 127.0.0.1:PORT admin 127.0.0.1:PORT proxy 127.0.0.1:PORT [name addr]…"
                    let words: Vec<&str> = line.split_whitespace().collect();
                    let dns = words[3].parse().expect("dns addr");
                    let admin = words[5].parse().expect("admin addr");
                    let proxy = words[7].parse().expect("proxy addr");
                    let extra = words[8..]
                        .chunks(2)
                        .filter_map(|w| Some((w[0].to_string(), w.get(1)?.parse().ok()?)))
                        .collect();
                    return Vigie {
                        child: Some(child),
                        dns,
                        admin,
                        proxy,
                        extra,
                        log,
                    };
                }
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "vigie did not become ready; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Sends SIGTERM and waits (at most 10 s) for a clean exit; returns its status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().expect("child");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("vigie did not stop within 10 s after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` on the admin listener; returns the body.
    pub fn http_get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(self.admin).expect("connect admin");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read admin");
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or(out)
    }

    /// The value of one metric line (`name{labels}`) in `/metrics`, 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.http_get("/metrics");
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    }
}

impl Drop for Vigie {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A query message for `name`/`qtype`, with EDNS (payload 1232) when `edns`.
pub fn query_message(name: &str, qtype: RecordType, edns: bool) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    let mut n = Name::from_ascii(name).expect("name");
    n.set_fqdn(true);
    m.add_query(Query::query(n, qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.edns = Some(e);
    }
    m
}

/// Sends `msg` over UDP and waits (at most `timeout`) for the answer with its id.
pub fn exchange_udp(server: SocketAddr, msg: &Message, timeout: Duration) -> Option<Message> {
    exchange_udp_from(Ipv4Addr::LOCALHOST, server, msg, timeout)
}

/// Like [`exchange_udp`], from a chosen loopback address (127.0.0.0/8 is all local on
/// Linux): the tests' way of being a client of another network.
pub fn exchange_udp_from(
    src: Ipv4Addr,
    server: SocketAddr,
    msg: &Message,
    timeout: Duration,
) -> Option<Message> {
    let sock = UdpSocket::bind((src, 0)).ok()?;
    sock.set_read_timeout(Some(timeout)).ok()?;
    sock.send_to(&msg.to_vec().ok()?, server).ok()?;
    let mut buf = [0u8; 65535];
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        if let Ok(m) = Message::from_vec(&buf[..n])
            && m.metadata.id == msg.metadata.id
            && m.metadata.message_type == MessageType::Response
        {
            return Some(m);
        }
    }
    None
}

pub fn exchange_tcp(server: SocketAddr, msg: &Message, timeout: Duration) -> Option<Message> {
    let mut s = TcpStream::connect_timeout(&server, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    let bytes = msg.to_vec().ok()?;
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&bytes);
    s.write_all(&out).ok()?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).ok()?;
    Message::from_vec(&buf).ok()
}

pub fn udp_from(src: Ipv4Addr, server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    exchange_udp_from(
        src,
        server,
        &query_message(name, qtype, true),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|| panic!("no UDP answer for {name} {qtype} from {src}"))
}

pub fn udp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    exchange_udp(
        server,
        &query_message(name, qtype, true),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|| panic!("no UDP answer for {name} {qtype}"))
}

pub fn tcp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    exchange_tcp(
        server,
        &query_message(name, qtype, true),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|| panic!("no TCP answer for {name} {qtype}"))
}

pub fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(A(ip)) => Some(*ip),
            _ => None,
        })
        .collect()
}

pub fn aaaa_records(m: &Message) -> Vec<Ipv6Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::AAAA(AAAA(ip)) => Some(*ip),
            _ => None,
        })
        .collect()
}

pub fn cname_targets(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::CNAME(CNAME(n)) => Some(n.to_ascii()),
            _ => None,
        })
        .collect()
}

/// Whether `dig` is on this machine (Debian: dnsutils / bind9-dnsutils).
pub fn have_dig() -> bool {
    Command::new("dig").arg("-v").output().is_ok()
}

/// Runs `dig @server -p port args…` with a bounded time; returns its stdout.
pub fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+time=3", "+tries=1"])
        .args(args)
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Client addresses of the test config: 127.0.0.1 gets profile "page", 127.0.0.2
/// "nxdomain", 127.0.0.3 "null"; 127.0.0.9 is outside the client networks.
pub const PAGE_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
pub const NXDOMAIN_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
pub const NULL_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
pub const OUTSIDER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

/// A config for the tests: the shipped UT1 gambling and doh lists, one profile per
/// block mode (chosen by client address, see [`PAGE_CLIENT`]…), `extra` appended to
/// the `[dns]` table.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let default_profile = "page";
    let client_networks = ["127.0.0.1/32", "127.0.0.2/32", "127.0.0.3/32", "::1/128"];
    let lists = Path::new(env!("CARGO_MANIFEST_DIR")).join("blocklists");
    let nets: Vec<String> = client_networks.iter().map(|n| format!("\"{n}\"")).collect();
    let text = format!(
        r#"
default_profile = "{default_profile}"
client_networks = [{nets}]
lists_dir = "{lists}"

[dns]
{rate}
block_page_ipv4 = "198.51.100.7"
block_page_ipv6 = "2001:db8::7"
{extra}

[[categories]]
id = "gambling"
fr = "Jeux d'argent"
en = "Gambling"

[[categories]]
id = "doh"
fr = "DNS chiffré"
en = "Encrypted DNS"

[[lists]]
category = "gambling"
format = "ut1"
path = "ut1/gambling"

[[lists]]
category = "doh"
format = "ut1"
path = "ut1/doh"

[profiles.page]
block = ["gambling", "doh"]
block_mode = "page"
safe_search = "strict"

[profiles.nxdomain]
block = ["gambling", "doh"]
block_mode = "nxdomain"
safe_search = "moderate"

[profiles.null]
block = ["gambling", "doh"]
block_mode = "null"

[[networks]]
cidr = "127.0.0.2/32"
profile = "nxdomain"

[[networks]]
cidr = "127.0.0.3/32"
profile = "null"

# The tests read the JSON-lines copy of the audit trail.
[audit]
jsonl = true
"#,
        nets = nets.join(", "),
        rate = if extra.contains("rate_limit_qps") {
            ""
        } else {
            "rate_limit_qps = 0"
        },
        lists = lists.display(),
    );
    let path = dir.join("vigie.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

// ---- HTTP clients (curl) and the audit trail as `vigie audit export` gives it ----

pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Runs curl from `client` (`--interface`), returning status, headers and body.
pub fn curl(client: &str, args: &[&str]) -> Reply {
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "--max-time", "10", "--interface", client])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (headers, body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .unwrap_or((text.clone(), String::new()));
    let status = headers
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        headers,
        body,
    }
}

/// A school board's own CA for tests (rcgen), able to sign server certificates.
pub fn board_ca() -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "vigie test board CA");
    rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap()
}

pub fn csrf_token(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("csrf field") + 19;
    html[at..at + 32].to_string()
}

/// The portal's RFC 8908 answer for `client`.
pub fn captive(v: &Vigie, client: &str) -> serde_json::Value {
    let r = curl(client, &[&format!("http://{}/portal/api", v.admin)]);
    assert_eq!(r.status, 200, "{}", r.headers);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/captive+json")
    );
    serde_json::from_str(&r.body).unwrap()
}

/// Logs in at the portal from `client` with a cookie jar; returns the reply.
pub fn portal_login(
    v: &Vigie,
    client: &str,
    jar: &Path,
    user: &str,
    password: &str,
    url: &str,
) -> Reply {
    let jar = jar.to_str().unwrap();
    let page = curl(
        client,
        &["-c", jar, "-b", jar, &format!("http://{}/portal", v.admin)],
    );
    assert_eq!(page.status, 200);
    let token = csrf_token(&page.body);
    curl(
        client,
        &[
            "-c",
            jar,
            "-b",
            jar,
            "--data-urlencode",
            &format!("user={user}"),
            "--data-urlencode",
            &format!("password={password}"),
            "--data-urlencode",
            &format!("csrf={token}"),
            "--data-urlencode",
            &format!("url={url}"),
            &format!("http://{}/portal/login", v.admin),
        ],
    )
}

/// Every stored event of the last day, as `vigie audit export` gives them.
pub fn export(cfg: &Path, dir: &Path, user: Option<&str>) -> Vec<serde_json::Value> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigie"));
    cmd.args(["--config", cfg.to_str().unwrap(), "audit", "export"])
        .args([
            "--by",
            "test",
            "--justification",
            "vérification du test de bout en bout",
        ])
        .arg("--data-dir")
        .arg(dir);
    if let Some(u) = user {
        cmd.args(["--user", u]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits (at most 10 s: the writer's batch window is 1 s) until `pred` holds for
/// the exported events, and returns them.
pub fn wait_for(
    cfg: &Path,
    dir: &Path,
    user: Option<&str>,
    what: &str,
    pred: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let evs = export(cfg, dir, user);
        if pred(&evs) {
            return evs;
        }
        if Instant::now() > deadline {
            panic!("never saw {what}; events: {evs:#?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn has(evs: &[serde_json::Value], f: impl Fn(&serde_json::Value) -> bool) -> bool {
    evs.iter().any(f)
}

/// A plain HTTP origin on loopback answering every request with `origin ok`.
pub fn http_origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().map_while(Result::ok).take(1000) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\norigin ok",
            );
        }
    });
    addr
}

/// One person's browser for the admin app: a cookie jar, a source address.
pub struct Browser {
    pub jar: PathBuf,
    pub base: String,
    pub from: &'static str,
}

impl Browser {
    pub fn new(dir: &Path, v: &Vigie, name: &str, from: &'static str) -> Browser {
        Browser {
            jar: dir.join(format!("jar-{name}")),
            base: format!("http://{}", v.admin),
            from,
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        let jar = self.jar.to_str().unwrap();
        curl(
            self.from,
            &["-c", jar, "-b", jar, &format!("{}{path}", self.base)],
        )
    }

    /// POSTs `fields` (url-encoded) to `path`.
    pub fn post(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let jar = self.jar.to_str().unwrap();
        let mut args: Vec<String> = vec!["-c".into(), jar.into(), "-b".into(), jar.into()];
        for (k, v) in fields {
            args.push("--data-urlencode".into());
            args.push(format!("{k}={v}"));
        }
        if fields.is_empty() {
            args.push("-X".into());
            args.push("POST".into());
        }
        args.push(format!("{}{path}", self.base));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(self.from, &refs)
    }

    /// Signs in at `/admin/login` with `password`.
    pub fn login(&self, user: &str, password: &str) -> Reply {
        let page = self.get("/admin/login");
        assert_eq!(page.status, 200, "{}", page.body);
        let token = csrf_token(&page.body);
        self.post(
            "/admin/login",
            &[("user", user), ("password", password), ("csrf", &token)],
        )
    }
}

/// The value of the hidden field `name` of an HTML page, unescaped.
pub fn hidden_field(html: &str, name: &str) -> String {
    let key = format!("name=\"{name}\" value=\"");
    let at = html.find(&key).unwrap_or_else(|| panic!("no field {name}")) + key.len();
    let end = at + html[at..].find('"').expect("end of value");
    html[at..end]
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// `vigie users add NAME`, the password on stdin.
pub fn add_user(cfg: &Path, name: &str, password: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigie"))
        .args(["--config", cfg.to_str().unwrap(), "users", "add", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// A one-worker runtime for a test's own server, and a loopback listener bound in it
/// (`127.0.0.1:0`) with its address.
pub fn server_runtime() -> (tokio::runtime::Runtime, tokio::net::TcpListener, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind a loopback listener");
    let addr = listener.local_addr().expect("listener address");
    (rt, listener, addr)
}
