//! LDAP authentication against a real OpenLDAP server (Debian `slapd`, installed by
//! `tests/run`) that this test configures and starts on loopback.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vigie::config;
use vigie::identity::ldap::{LdapAuthenticator, LdapError};

const SUFFIX: &str = "dc=csmb,dc=qc,dc=ca";

struct Slapd {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    /// With TLS: the ldaps:// port (the plain port then offers StartTLS).
    tls_port: Option<u16>,
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_slapd() -> Slapd {
    start_slapd_with(false)
}

/// A test CA and a certificate for `localhost` signed by it (openssl).
fn make_certs(dir: &Path) {
    let sh = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Test CA CSMB",
    ]);
    sh(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    sh(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
}

fn start_slapd_with(tls: bool) -> Slapd {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::create_dir(dir.path().join("db")).unwrap();
    let tls_conf = if tls {
        make_certs(dir.path());
        format!(
            "TLSCACertificateFile {d}/ca.pem\nTLSCertificateFile {d}/srv.pem\nTLSCertificateKeyFile {d}/srv.key\n"
        )
    } else {
        String::new()
    };
    let conf = format!(
        "include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
{tls_conf}pidfile {d}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 10485760
suffix \"{SUFFIX}\"
rootdn \"cn=admin,{SUFFIX}\"
rootpw service-secret
directory {d}/db
access to attrs=userPassword by self read by anonymous auth by * none
access to * by * read
"
    );
    std::fs::write(dir.path().join("slapd.conf"), conf).unwrap();
    let person = |uid: &str, pw: &str| {
        format!(
            "dn: uid={uid},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nuserPassword: {pw}\n\n"
        )
    };
    let ldif = format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: CSMB\ndc: csmb\n\n\
         dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=Groupes,{SUFFIX}\nobjectClass: organizationalUnit\nou: Groupes\n\n\
         {}{}{}\
         dn: cn=Eleves,ou=Groupes,{SUFFIX}\nobjectClass: groupOfNames\ncn: Eleves\nmember: uid=eleve1,ou=people,{SUFFIX}\n\n\
         dn: cn=Personnel,ou=Groupes,{SUFFIX}\nobjectClass: groupOfNames\ncn: Personnel\nmember: uid=mtremblay,ou=people,{SUFFIX}\n\n",
        person("eleve1", "motdepasse-eleve"),
        person("mtremblay", "motdepasse-prof"),
        person("nogroup", "motdepasse-x"),
    );
    std::fs::write(dir.path().join("init.ldif"), ldif).unwrap();
    let out = Command::new("/usr/sbin/slapadd")
        .arg("-f")
        .arg(dir.path().join("slapd.conf"))
        .arg("-l")
        .arg(dir.path().join("init.ldif"))
        .output()
        .expect("slapadd (Debian package slapd; tests/run installs it)");
    assert!(
        out.status.success(),
        "slapadd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let tls_port = tls.then(free_port);
    let urls = match tls_port {
        Some(t) => format!("ldap://127.0.0.1:{port}/ ldaps://127.0.0.1:{t}/"),
        None => format!("ldap://127.0.0.1:{port}/"),
    };
    let child = Command::new("/usr/sbin/slapd")
        .arg("-f")
        .arg(dir.path().join("slapd.conf"))
        .args(["-h", &urls, "-d", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "slapd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(p) = tls_port {
        while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
            assert!(Instant::now() < deadline, "slapd (ldaps) did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Slapd {
        child,
        dir,
        port,
        tls_port,
    }
}

fn settings(slapd: &Slapd, extra: &str) -> config::LdapSettings {
    let text = format!(
        "[profiles.eleves]\n[profiles.personnel]\n[profiles.invites]\n\n[ldap]\nurl = \"ldap://127.0.0.1:{}\"\n{extra}\n\
         group_base = \"ou=Groupes,{SUFFIX}\"\n\
         [[ldap.groups]]\ndn = \"CN=Eleves,OU=Groupes,DC=csmb,DC=qc,DC=ca\"\nprofile = \"eleves\"\n\
         [[ldap.groups]]\ndn = \"cn=Personnel,ou=Groupes,{SUFFIX}\"\nprofile = \"personnel\"\n",
        slapd.port
    );
    config::parse(&text, "ldap.toml", slapd.dir.path())
        .unwrap_or_else(|e| panic!("{e}"))
        .ldap
        .expect("ldap settings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_groups_profiles_and_cache() {
    let mut slapd = start_slapd();
    let auth = LdapAuthenticator::new(settings(
        &slapd,
        &format!("user_dn = \"uid={{user}},ou=people,{SUFFIX}\""),
    ))
    .unwrap();

    let who = auth
        .authenticate("eleve1", "motdepasse-eleve")
        .await
        .unwrap();
    assert_eq!(who.dn, format!("uid=eleve1,ou=people,{SUFFIX}"));
    assert_eq!(
        who.profile.as_deref(),
        Some("eleves"),
        "group DN matched case-insensitively"
    );
    let prof = auth
        .authenticate("mtremblay", "motdepasse-prof")
        .await
        .unwrap();
    assert_eq!(prof.profile.as_deref(), Some("personnel"));
    let none = auth.authenticate("nogroup", "motdepasse-x").await.unwrap();
    assert_eq!(none.profile, None);

    for (user, pw) in [
        ("eleve1", "mauvais"),
        ("inconnu", "x"),
        ("eleve1", ""),
        ("eleve1)(uid=*", "x"),
    ] {
        assert!(
            matches!(
                auth.authenticate(user, pw).await,
                Err(LdapError::InvalidCredentials)
            ),
            "{user}/{pw} must be refused"
        );
    }

    // A remembered login survives a short LDAP outage; a wrong password never hits
    // the cache.
    let _ = slapd.child.kill();
    let _ = slapd.child.wait();
    assert_eq!(
        auth.authenticate("eleve1", "motdepasse-eleve")
            .await
            .unwrap()
            .profile
            .as_deref(),
        Some("eleves")
    );
    assert!(auth.authenticate("eleve1", "mauvais").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_with_service_account() {
    let slapd = start_slapd();
    std::fs::write(slapd.dir.path().join("bind.pw"), "service-secret\n").unwrap();
    let extra = format!(
        "base_dn = \"ou=people,{SUFFIX}\"\nuser_filter = \"(uid={{user}})\"\nbind_dn = \"cn=admin,{SUFFIX}\"\nbind_password_file = \"bind.pw\""
    );
    let auth = LdapAuthenticator::new(settings(&slapd, &extra)).unwrap();
    let who = auth
        .authenticate("mtremblay", "motdepasse-prof")
        .await
        .unwrap();
    assert_eq!(who.dn, format!("uid=mtremblay,ou=people,{SUFFIX}"));
    assert_eq!(who.profile.as_deref(), Some("personnel"));
    assert!(matches!(
        auth.authenticate("personne", "x").await,
        Err(LdapError::InvalidCredentials)
    ));
}

#[test]
fn clear_text_ldap_off_the_box_is_refused() {
    let err = config::parse(
        "[profiles.invites]\n[ldap]\nurl = \"ldap://ad.csmb.qc.ca\"\nuser_dn = \"uid={user}\"\n",
        "v.toml",
        Path::new("/"),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "v.toml:3:7: passwords would cross the network in clear: use ldaps:// or set starttls = true"
    );
}

/// The real binary with `[ldap]`: a teacher signs in at the captive portal with their
/// directory password, a student through proxy authentication; each gets the
/// profile of their directory group (not the network's), for DNS and the proxy, and
/// a wrong directory password is refused and audited.
#[test]
fn portal_and_proxy_logins_through_ldap_get_the_group_profile() {
    let slapd = start_slapd();
    let dir = tempfile::tempdir().unwrap();
    let lists = Path::new(env!("CARGO_MANIFEST_DIR")).join("blocklists");
    let cfg = dir.path().join("vigie.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
default_profile = "invites"
client_networks = ["127.0.0.0/8"]
lists_dir = "{lists}"

[dns]
rate_limit_qps = 0
log_allowed = true

[proxy]
allow_loopback_origins = true

[portal]
networks = ["127.0.0.5/32", "127.0.0.8/32"]

[ldap]
url = "ldap://127.0.0.1:{port}"
user_dn = "uid={{user}},ou=people,{SUFFIX}"
group_base = "ou=Groupes,{SUFFIX}"

[[ldap.groups]]
dn = "cn=Personnel,ou=Groupes,{SUFFIX}"
profile = "personnel"

[[ldap.groups]]
dn = "cn=Eleves,ou=Groupes,{SUFFIX}"
profile = "eleves"

[profiles.invites]
bare_ip = "allow"
[profiles.personnel]
bare_ip = "allow"
[profiles.eleves]
bare_ip = "allow"
"#,
            lists = lists.display(),
            port = slapd.port,
        ),
    )
    .unwrap();
    let up = common::Upstream::start("");
    let origin = common::http_origin();
    let v = common::Vigie::start(&cfg, &[up.addr], dir.path());
    let site = format!("http://{origin}/");

    // The teacher, at the portal, with the directory password.
    let jar = dir.path().join("jar");
    let bad = common::portal_login(&v, "127.0.0.5", &jar, "mtremblay", "mauvais", &site);
    assert_eq!(bad.status, 401);
    let ok = common::portal_login(&v, "127.0.0.5", &jar, "mtremblay", "motdepasse-prof", &site);
    assert_eq!(ok.status, 303, "{}", ok.body);
    let q = common::udp_from(
        "127.0.0.5".parse().unwrap(),
        v.dns,
        "prof.example.",
        hickory_proto::rr::RecordType::A,
    );
    assert!(!q.answers.is_empty());

    // The student, through the proxy with Basic credentials.
    let r = common::curl(
        "127.0.0.8",
        &[
            "-x",
            &v.proxy.to_string(),
            "-U",
            "eleve1:motdepasse-eleve",
            &site,
        ],
    );
    assert_eq!(r.status, 200, "{}", r.headers);

    let evs = common::wait_for(&cfg, dir.path(), None, "both people's requests", |e| {
        common::has(e, |x| x["target"] == "prof.example")
            && common::has(e, |x| x["service"] == "proxy" && x["user"] == "eleve1")
    });
    let prof = evs.iter().find(|x| x["target"] == "prof.example").unwrap();
    assert_eq!(
        (&prof["user"], &prof["profile"]),
        (&"mtremblay".into(), &"personnel".into())
    );
    let student = evs
        .iter()
        .find(|x| x["service"] == "proxy" && x["user"] == "eleve1")
        .unwrap();
    assert_eq!(student["profile"], "eleves");
    assert!(common::has(&evs, |x| x["verdict"] == "login"
        && x["user"] == "mtremblay"
        && x["rule"] == "checked by ldap"));
    assert!(common::has(&evs, |x| x["verdict"] == "login_failed"
        && x["user"] == "mtremblay"));
}

/// ldaps:// and StartTLS against slapd with a certificate of the school's own CA:
/// trusted through `ca_file`, refused without it (the system roots do not know it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldaps_and_starttls_with_the_school_ca() {
    let slapd = start_slapd_with(true);
    let ca = slapd.dir.path().join("ca.pem");
    let settings_for = |url: String, extra: &str| {
        let text = format!(
            "[profiles.eleves]\n[profiles.personnel]\n[profiles.invites]\n\n[ldap]\nurl = \"{url}\"\n\
             user_dn = \"uid={{user}},ou=people,{SUFFIX}\"\ngroup_base = \"ou=Groupes,{SUFFIX}\"\n{extra}\n\
             [[ldap.groups]]\ndn = \"cn=Personnel,ou=Groupes,{SUFFIX}\"\nprofile = \"personnel\"\n"
        );
        config::parse(&text, "ldap.toml", slapd.dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .ldap
            .expect("ldap settings")
    };
    let tls_port = slapd.tls_port.unwrap();
    let with_ca = format!("ca_file = \"{}\"", ca.display());
    for (url, extra) in [
        (format!("ldaps://localhost:{tls_port}"), with_ca.clone()),
        (
            format!("ldap://localhost:{}", slapd.port),
            format!("starttls = true\n{with_ca}"),
        ),
    ] {
        let auth = LdapAuthenticator::new(settings_for(url.clone(), &extra)).unwrap();
        let who = auth
            .authenticate("mtremblay", "motdepasse-prof")
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(who.profile.as_deref(), Some("personnel"), "{url}");
        assert!(matches!(
            auth.authenticate("mtremblay", "mauvais").await,
            Err(LdapError::InvalidCredentials)
        ));
    }
    // Without the school's CA the certificate is not trusted: an error, never a login.
    let auth =
        LdapAuthenticator::new(settings_for(format!("ldaps://localhost:{tls_port}"), "")).unwrap();
    assert!(matches!(
        auth.authenticate("mtremblay", "motdepasse-prof").await,
        Err(LdapError::Server { .. })
    ));
}
