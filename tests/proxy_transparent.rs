//! End to end: transparent mode. The test builds two network namespaces — a client
//! and a gateway joined by a veth pair — and, in the gateway, an nftables rule that
//! redirects the client's port 80 and 443 to vigie's transparent listeners, an
//! HTTP origin (python3 http.server) and a TLS origin (openssl s_server) on an
//! address of the gateway's loopback, and the gateway's DNS (dnsmasq), vigie's
//! upstream. The client uses plain `curl` with no proxy setting.
//!
//! Needs root, `ip` (iproute2), `nft` (nftables) and dnsmasq; `tests/run` installs them.
//! Without root the test says so and passes without checking anything.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Vigie;

const ORIGIN: &str = "203.0.113.80";
/// Where the gateway's DNS (dnsmasq) says `decoy.test` is: not the origin.
const DECOY: &str = "203.0.113.81";
/// The gateway's resolver, vigie's upstream.
const RESOLVER: &str = "127.0.0.53";
const GAMBLING: &str = "0-casino.info";

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The namespaces and the processes started in them, removed on drop.
struct Lab {
    client: String,
    gateway: String,
    children: Vec<Child>,
}

impl Lab {
    fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        run(&full)
    }

    /// `curl` in the client namespace (no proxy); exit code, status and body.
    fn curl(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.client,
                "curl",
                "-s",
                "--max-time",
                "10",
                "-D",
                "-",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.client, &self.gateway] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn audit_line(dir: &Path, needles: &[&str]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .rev()
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            return serde_json::from_str(line).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no audit line with {needles:?} in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn proxy_transparent_mode_in_network_namespaces() {
    if !is_root() {
        eprintln!("proxy_transparent: not root, cannot create network namespaces: nothing checked");
        return;
    }
    let id = std::process::id();
    let mut lab = Lab {
        client: format!("vigie-c{id}"),
        gateway: format!("vigie-g{id}"),
        children: Vec::new(),
    };
    let (vc, vg) = (format!("vc{id}"), format!("vg{id}"));
    run(&["ip", "netns", "add", &lab.client]);
    run(&["ip", "netns", "add", &lab.gateway]);
    run(&[
        "ip",
        "link",
        "add",
        &vc,
        "netns",
        &lab.client,
        "type",
        "veth",
        "peer",
        "name",
        &vg,
        "netns",
        &lab.gateway,
    ]);
    let (c, g) = (lab.client.clone(), lab.gateway.clone());
    for cmd in [
        vec!["ip", "link", "set", "lo", "up"],
        vec!["ip", "addr", "add", "10.231.0.2/24", "dev", &vc],
        vec!["ip", "link", "set", &vc, "up"],
        vec!["ip", "route", "add", "default", "via", "10.231.0.1"],
    ] {
        lab.exec(&c, &cmd);
    }
    let origin_cidr = format!("{ORIGIN}/32");
    for cmd in [
        vec!["ip", "link", "set", "lo", "up"],
        vec!["ip", "addr", "add", "10.231.0.1/24", "dev", &vg],
        vec!["ip", "link", "set", &vg, "up"],
        // The origins' address lives on the gateway's loopback (no dummy module needed).
        vec!["ip", "addr", "add", &origin_cidr, "dev", "lo"],
    ] {
        lab.exec(&g, &cmd);
    }
    // The appliance's redirect (deploy/nftables does the same on the LAN side).
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("redirect.nft");
    std::fs::write(
        &rules,
        format!(
            "table ip vigie {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
             iifname \"{vg}\" tcp dport 80 redirect to :3129\n    iifname \"{vg}\" tcp dport 443 redirect to :3130\n  }}\n}}\n"
        ),
    )
    .unwrap();
    lab.exec(&g, &["nft", "-f", rules.to_str().unwrap()]);

    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hello transparent\n").unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["site.test".to_string(), GAMBLING.to_string()])
            .unwrap();
    std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    let spawn = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &g])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let www_s = www.to_str().unwrap().to_string();
    lab.children.push(spawn(&[
        "python3",
        "-m",
        "http.server",
        "80",
        "--bind",
        ORIGIN,
        "--directory",
        &www_s,
    ]));
    // The gateway's DNS, vigie's upstream: the names the client uses.
    let dns_listen = format!("--listen-address={RESOLVER}");
    let site_record = format!("--host-record=site.test,{ORIGIN}");
    let gambling_record = format!("--host-record={GAMBLING},{ORIGIN}");
    let decoy_record = format!("--host-record=decoy.test,{DECOY}");
    let dns_pid = format!("--pid-file={}", dir.path().join("dnsmasq.pid").display());
    lab.children.push(spawn(&[
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        &dns_listen,
        "--port=53",
        "--user=root",
        &dns_pid,
        &site_record,
        &gambling_record,
        &decoy_record,
    ]));
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let accept = format!("{ORIGIN}:443");
    lab.children.push(spawn(&[
        "openssl",
        "s_server",
        "-quiet",
        "-accept",
        &accept,
        "-cert",
        cert.to_str().unwrap(),
        "-key",
        key.to_str().unwrap(),
        "-www",
    ]));

    let lists = Path::new(env!("CARGO_MANIFEST_DIR")).join("blocklists");
    let cfg = dir.path().join("vigie.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
default_profile = "eleves"
client_networks = ["10.231.0.0/24"]
lists_dir = "{lists}"

[dns]
rate_limit_qps = 0

[audit]
jsonl = true

[proxy]
transparent_http_listen = "0.0.0.0:3129"
transparent_tls_listen = "0.0.0.0:3130"
client_hello_timeout_ms = 1500
users_file = "{users}"
# The origins sit on the gateway's own loopback, which the proxy otherwise
# refuses to reach (the machine's own addresses count as loopback).
allow_loopback_origins = true

[[categories]]
id = "gambling"
fr = "Jeux d'argent"
en = "Gambling"

[[lists]]
category = "gambling"
format = "ut1"
path = "ut1/gambling"

[profiles.eleves]
block = ["gambling"]
bare_ip = "block"
"#,
            lists = lists.display(),
            users = dir.path().join("users").display(),
        ),
    )
    .unwrap();
    common::add_user(&cfg, "eleve1", "mot de passe");
    let v = Vigie::start_wrapped(
        &["ip", "netns", "exec", &g],
        &cfg,
        &[format!("{RESOLVER}:53").parse().unwrap()],
        dir.path(),
        // The explicit proxy on the LAN side too, for the lease-change check.
        &["--proxy-listen", "10.231.0.1:3128"],
    );
    assert!(
        v.extra
            .iter()
            .any(|(k, a)| k == "transparent_http" && a.port() == 3129),
        "{:?}",
        v.extra
    );

    // The origins take a moment to start: wait (bounded) for the first success.
    let resolve = format!("site.test:80:{ORIGIN}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let (code, out) = loop {
        let (code, out) = lab.curl(&["--resolve", &resolve, "http://site.test/hello.txt"]);
        if out.contains("hello transparent") || Instant::now() > deadline {
            break (code, out);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Plain HTTP, allowed: through vigie (Via), decided on the Host header.
    assert_eq!(code, 0, "{out}\n{}", v.log_text());
    assert!(out.contains("hello transparent"), "{out}");
    assert!(out.to_ascii_lowercase().contains("via: 1.1 vigie"), "{out}");
    // (Earlier attempts, before the origin was up, are in the trail too: the one
    // that got through is the one with status 200.)
    let ev = audit_line(
        dir.path(),
        &[
            "\"kind\":\"transparent_http\"",
            "hello.txt",
            "\"status\":200",
        ],
    );
    assert_eq!(ev["verdict"], "allow");
    assert_eq!(ev["client_ip"], "10.231.0.2");
    assert_eq!(ev["status"], 200);
    assert_eq!(ev["host"], "site.test");

    // A Host that does not resolve to the address the client chose (an allowed
    // name sent to a VPN server, say): the address is decided as a bare IP.
    let resolve = format!("decoy.test:80:{ORIGIN}");
    let (_, out) = lab.curl(&["--resolve", &resolve, "http://decoy.test/hello.txt"]);
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(
        out.contains("x-vigie-rule: eleves: bare_ip = block"),
        "{out}"
    );

    // A bare IP in the Host header follows the profile (eleves: bare_ip = block).
    let (_, out) = lab.curl(&[&format!("http://{ORIGIN}/hello.txt")]);
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(
        out.contains("x-vigie-rule: eleves: bare_ip = block"),
        "{out}"
    );

    // Plain HTTP to a blocked name (the Host header names it).
    let resolve = format!("{GAMBLING}:80:{ORIGIN}");
    let (_, out) = lab.curl(&["--resolve", &resolve, &format!("http://{GAMBLING}/")]);
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(out.contains("Accès bloqué"), "{out}");
    let ev = audit_line(
        dir.path(),
        &[
            "\"kind\":\"transparent_http\"",
            "\"verdict\":\"block\"",
            GAMBLING,
        ],
    );
    assert_eq!(ev["category"], "gambling");

    // TLS, allowed on its SNI (which resolves to the address): tunnelled.
    let resolve = format!("site.test:443:{ORIGIN}");
    let (code, out) = lab.curl(&["-k", "--resolve", &resolve, "https://site.test/"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    let ev = audit_line(
        dir.path(),
        &["\"kind\":\"transparent_tls\"", "\"sni\":\"site.test\""],
    );
    assert_eq!(ev["verdict"], "allow");
    assert!(ev["bytes_down"].as_u64().unwrap() > 100);

    // The same with TLS: an allowed SNI sent to another address than its name's.
    let resolve = format!("decoy.test:443:{ORIGIN}");
    let (code, out) = lab.curl(&["-k", "--resolve", &resolve, "https://decoy.test/"]);
    assert_eq!(code, 35, "curl: SSL connect error: {out}");
    let ev = audit_line(
        dir.path(),
        &["\"kind\":\"transparent_tls\"", "\"sni\":\"decoy.test\""],
    );
    assert_eq!(ev["verdict"], "block", "{ev}");
    assert_eq!(ev["rule"], "eleves: bare_ip = block", "{ev}");
    assert_eq!(ev["status"], 403, "{ev}");

    // TLS with a blocked SNI: refused (TLS alert), curl reports a TLS error.
    let resolve = format!("{GAMBLING}:443:{ORIGIN}");
    let (code, _) = lab.curl(&["-k", "--resolve", &resolve, &format!("https://{GAMBLING}/")]);
    assert_eq!(code, 35, "curl: SSL connect error");
    let ev = audit_line(
        dir.path(),
        &[
            "\"kind\":\"transparent_tls\"",
            &format!("\"sni\":\"{GAMBLING}\""),
        ],
    );
    assert_eq!(ev["verdict"], "block");
    assert_eq!(ev["category"], "gambling");

    // Not TLS on port 443: refused as circumvention, nothing comes back.
    let script = format!(
        "exec 3<>/dev/tcp/{ORIGIN}/443; printf 'SSH-2.0-OpenSSH_9.2\\r\\n' >&3; timeout 5 cat <&3"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &c, "bash", "-c", &script])
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let ev = audit_line(
        dir.path(),
        &["\"kind\":\"transparent_tls\"", "\"protocol\":\"ssh\""],
    );
    assert_eq!(ev["verdict"], "block");
    assert_eq!(ev["refused"], "not_tls");

    // A proxy login remembers the client's device; when the address goes to
    // another device (a new MAC, as after a DHCP lease changes hands), the login
    // ends and the end is audited.
    let (code, _) = lab.curl(&[
        "-x",
        "http://10.231.0.1:3128",
        "-U",
        "eleve1:mot de passe",
        &format!("http://{ORIGIN}/hello.txt"),
    ]);
    assert_eq!(code, 0);
    audit_line(dir.path(), &["\"verdict\":\"login\"", "eleve1"]);
    lab.exec(&c, &["ip", "link", "set", &vc, "down"]);
    lab.exec(
        &c,
        &["ip", "link", "set", &vc, "address", "02:00:00:00:99:99"],
    );
    lab.exec(&c, &["ip", "link", "set", &vc, "up"]);
    lab.exec(&c, &["ip", "neigh", "flush", "all"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let ended = loop {
        // Traffic from the new device teaches the gateway its address.
        let _ = lab.curl(&["--max-time", "2", "http://10.231.0.1:3128/"]);
        let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap_or_default();
        if let Some(l) = text
            .lines()
            .find(|l| l.contains("\"session_end\"") && l.contains("another device"))
        {
            break l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the login did not end after the lease change:\n{text}\ngateway's neighbours:\n{}\n{}",
            String::from_utf8_lossy(&lab.exec(&g, &["cat", "/proc/net/arp"]).stdout),
            v.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(ended.contains("eleve1"), "{ended}");

    drop(v);
    drop(lab);
}
