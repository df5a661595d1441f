//! End to end: people log in (captive portal, proxy authentication) and what they do
//! is then recorded under their name, in the real binary's SQLite audit store, read
//! back with `vigie audit export`; failed logins are audited; an idle session ends
//! and the address falls back to its network's profile. Clients are real: `curl`
//! (portal, proxy) and hickory DNS messages, on loopback addresses 127.0.0.x.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Upstream, Vigie, captive, csrf_token, curl, has, portal_login, wait_for};
use hickory_proto::rr::RecordType;

/// On the portal network (`invites`, must log in).
const PORTAL_CLIENT: &str = "127.0.0.5";
/// Staff room (`personnel`, allowed traffic recorded by its profile).
const STAFF_CLIENT: &str = "127.0.0.6";
/// Students (`eleves`, allowed traffic not recorded by its profile).
const STUDENT_CLIENT: &str = "127.0.0.7";
const PASSWORD: &str = "Érable-2026 secret";

fn write_config(dir: &Path) -> std::path::PathBuf {
    let lists = Path::new(env!("CARGO_MANIFEST_DIR")).join("blocklists");
    let text = format!(
        r#"
default_profile = "invites"
client_networks = ["127.0.0.0/8"]
lists_dir = "{lists}"

[dns]
rate_limit_qps = 0
log_allowed = false

[proxy]
allow_loopback_origins = true
users_file = "{users}"

[portal]
networks = ["{PORTAL_CLIENT}/32"]
idle_timeout_seconds = 3

[[categories]]
id = "gambling"
fr = "Jeux d'argent"
en = "Gambling"

[[lists]]
category = "gambling"
format = "ut1"
path = "ut1/gambling"

[profiles.invites]
block = ["gambling"]
bare_ip = "allow"
record_allowed = true

[profiles.personnel]
bare_ip = "allow"
record_allowed = true

[profiles.eleves]
block = ["gambling"]
bare_ip = "allow"
record_allowed = false

[[networks]]
cidr = "{PORTAL_CLIENT}/32"
profile = "invites"

[[networks]]
cidr = "{STAFF_CLIENT}/32"
profile = "personnel"

[[networks]]
cidr = "{STUDENT_CLIENT}/32"
profile = "eleves"
"#,
        lists = lists.display(),
        users = dir.join("users").display(),
    );
    let path = dir.join("vigie.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `vigie users add NAME [--profile P]`, the password on stdin as an operator
/// would type it.
fn add_user(cfg: &Path, name: &str, profile: Option<&str>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigie"));
    cmd.args(["--config", cfg.to_str().unwrap(), "users", "add", name]);
    if let Some(p) = profile {
        cmd.args(["--profile", p]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

fn dns_from(v: &Vigie, client: &str, name: &str) {
    let r = common::udp_from(client.parse().unwrap(), v.dns, name, RecordType::A);
    assert_eq!(
        r.metadata.response_code,
        hickory_proto::op::ResponseCode::NoError
    );
}

#[test]
fn portal_login_attributes_dns_and_proxy_then_idle_session_ends() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    // A teacher: wherever she signs in, her profile is the staff's.
    add_user(&cfg, "mtremblay", Some("personnel"));
    let unknown = Command::new(env!("CARGO_BIN_EXE_vigie"))
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "users",
            "add",
            "x",
            "--profile",
            "personel",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("unknown profile \"personel\" (known: eleves, invites, personnel)"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    let up = Upstream::start("");
    let origin = common::http_origin();
    let v = Vigie::start(&cfg, &[up.addr], dir.path());
    let jar = dir.path().join("cookies");
    let site = format!("http://{origin}/page");

    // Unidentified on the portal network: the OS probe and any page are sent to the
    // portal (302), HTTPS is refused, the RFC 8908 API says "captive".
    let probe = curl(
        PORTAL_CLIENT,
        &[
            "-x",
            &v.proxy.to_string(),
            "http://captive.apple.com/hotspot-detect.html",
        ],
    );
    assert_eq!(probe.status, 302, "{}", probe.headers);
    assert_eq!(
        probe.header("location").as_deref(),
        Some(
            format!(
                "http://{}/portal?url=http%3A%2F%2Fcaptive.apple.com%2Fhotspot-detect.html",
                v.admin
            )
            .as_str()
        )
    );
    let tunnel = curl(
        PORTAL_CLIENT,
        &["-x", &v.proxy.to_string(), "https://example.org/"],
    );
    assert_ne!(tunnel.status, 200);
    assert_eq!(captive(&v, PORTAL_CLIENT)["captive"], true);
    // Elsewhere the portal is not needed.
    assert_eq!(captive(&v, STAFF_CLIENT)["captive"], false);

    // The login page is French by default, English on request, and has a CSRF token.
    let fr = curl(PORTAL_CLIENT, &[&format!("http://{}/portal", v.admin)]);
    assert!(fr.body.contains("Code d'accès") && fr.body.contains("lang=\"fr-CA\""));
    assert!(
        fr.header("set-cookie")
            .is_some_and(|c| c.contains("HttpOnly") && c.contains("SameSite=Strict"))
    );
    let en = curl(
        PORTAL_CLIENT,
        &[
            "-H",
            "Accept-Language: en-CA,en;q=0.9",
            &format!("http://{}/portal", v.admin),
        ],
    );
    assert!(en.body.contains("Access code"), "{}", en.body);

    // A form without the cookie's token is refused, whatever the password.
    let forged = curl(
        PORTAL_CLIENT,
        &[
            "--data",
            &format!("user=mtremblay&password=x&csrf={}", "0".repeat(32)),
            &format!("http://{}/portal/login", v.admin),
        ],
    );
    assert_eq!(forged.status, 403);

    // A wrong password: refused, still captive, and audited (never the password).
    let wrong = portal_login(&v, PORTAL_CLIENT, &jar, "mtremblay", "pas le bon", &site);
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("invalide"), "{}", wrong.body);
    assert_eq!(captive(&v, PORTAL_CLIENT)["captive"], true);

    // The right one: back to the page asked for, no longer captive.
    let ok = portal_login(&v, PORTAL_CLIENT, &jar, "mtremblay", PASSWORD, &site);
    assert_eq!(ok.status, 303, "{}", ok.headers);
    assert_eq!(ok.header("location").as_deref(), Some(site.as_str()));
    let api = captive(&v, PORTAL_CLIENT);
    assert_eq!(api["captive"], false);
    assert!(api["seconds-remaining"].as_i64().unwrap() > 0);

    // Now DNS and the proxy are this person's.
    dns_from(&v, PORTAL_CLIENT, "manuels.example.");
    let page = curl(PORTAL_CLIENT, &["-x", &v.proxy.to_string(), &site]);
    assert_eq!(page.status, 200);
    assert_eq!(page.body, "origin ok");
    let mine = wait_for(
        &cfg,
        dir.path(),
        Some("mtremblay"),
        "dns and proxy under the user",
        |e| {
            has(e, |x| {
                x["service"] == "dns" && x["target"] == "manuels.example"
            }) && has(e, |x| x["service"] == "proxy" && x["verdict"] == "allow")
        },
    );
    assert!(has(&mine, |x| x["service"] == "auth"
        && x["verdict"] == "login_failed"));
    assert!(has(&mine, |x| x["service"] == "auth"
        && x["verdict"] == "login"
        && x["target"] == "portal"
        && x["rule"] == "checked by users_file"));
    let raw = std::fs::read(dir.path().join("audit.db")).unwrap();
    assert!(
        !raw.windows(PASSWORD.len())
            .any(|w| w == PASSWORD.as_bytes()),
        "a password reached the audit store"
    );
    assert!(
        !v.log_text().contains("pas le bon"),
        "a password reached the log"
    );

    // Logout ends it at once.
    let status = curl(
        PORTAL_CLIENT,
        &[
            "-c",
            jar.to_str().unwrap(),
            "-b",
            jar.to_str().unwrap(),
            &format!("http://{}/portal", v.admin),
        ],
    );
    assert!(status.body.contains("mtremblay"), "{}", status.body);
    let token = csrf_token(&status.body);
    let out = curl(
        PORTAL_CLIENT,
        &[
            "-b",
            jar.to_str().unwrap(),
            "--data",
            &format!("csrf={token}"),
            &format!("http://{}/portal/logout", v.admin),
        ],
    );
    assert_eq!(out.status, 303);
    assert_eq!(captive(&v, PORTAL_CLIENT)["captive"], true);

    // Log in again, then stay idle past the 3 s timeout: the session ends, the
    // address is back to its network's profile, anonymous, and sent to the portal.
    assert_eq!(
        portal_login(&v, PORTAL_CLIENT, &jar, "mtremblay", PASSWORD, &site).status,
        303
    );
    std::thread::sleep(Duration::from_millis(4500));
    assert_eq!(captive(&v, PORTAL_CLIENT)["captive"], true);
    let again = curl(PORTAL_CLIENT, &["-x", &v.proxy.to_string(), &site]);
    assert_eq!(again.status, 302);
    dns_from(&v, PORTAL_CLIENT, "apres-expiration.example.");
    let all = wait_for(
        &cfg,
        dir.path(),
        None,
        "the anonymous query after expiry",
        |e| has(e, |x| x["target"] == "apres-expiration.example"),
    );
    let after = all
        .iter()
        .find(|x| x["target"] == "apres-expiration.example")
        .unwrap();
    assert_eq!(after["user"], serde_json::Value::Null);
    assert_eq!(after["profile"], "invites");
    assert!(has(&all, |x| x["verdict"] == "logout"
        && x["user"] == "mtremblay"));
}

#[test]
fn proxy_login_binds_the_address_and_profiles_choose_what_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    add_user(&cfg, "mtremblay", None);
    let up = Upstream::start("");
    let origin = common::http_origin();
    let v = Vigie::start(&cfg, &[up.addr], dir.path());
    let site = format!("http://{origin}/cours");

    // A wrong password through the proxy: 407, audited as a failed login.
    let r = curl(
        STAFF_CLIENT,
        &["-x", &v.proxy.to_string(), "-U", "mtremblay:nope", &site],
    );
    assert_eq!(r.status, 407);
    // The right one: served, and the address is now this person's for DNS too.
    let r = curl(
        STAFF_CLIENT,
        &[
            "-x",
            &v.proxy.to_string(),
            "-U",
            &format!("mtremblay:{PASSWORD}"),
            &site,
        ],
    );
    assert_eq!(r.status, 200, "{}", r.headers);
    dns_from(&v, STAFF_CLIENT, "apres-connexion.example.");

    // Students: allowed traffic is not recorded (record_allowed = false), blocks are.
    let gambling = common::ut1_gambling_domain();
    let ok = curl(STUDENT_CLIENT, &["-x", &v.proxy.to_string(), &site]);
    assert_eq!(ok.status, 200);
    let blocked = curl(
        STUDENT_CLIENT,
        &["-x", &v.proxy.to_string(), &format!("http://{gambling}/")],
    );
    assert_eq!(blocked.status, 403);

    let all = wait_for(
        &cfg,
        dir.path(),
        None,
        "the staff DNS query and the student block",
        |e| {
            has(e, |x| x["target"] == "apres-connexion.example")
                && has(e, |x| {
                    x["client_ip"] == STUDENT_CLIENT && x["verdict"] == "block"
                })
        },
    );
    let dns = all
        .iter()
        .find(|x| x["target"] == "apres-connexion.example")
        .unwrap();
    // `[dns] log_allowed = false`, but the staff profile records allowed traffic.
    assert_eq!(dns["user"], "mtremblay");
    assert_eq!(dns["profile"], "personnel");
    assert!(has(&all, |x| x["service"] == "auth"
        && x["verdict"] == "login_failed"
        && x["target"] == "proxy"
        && x["client_ip"] == STAFF_CLIENT));
    assert!(has(&all, |x| x["service"] == "auth" && x["verdict"] == "login"));
    assert!(
        !has(&all, |x| x["client_ip"] == STUDENT_CLIENT
            && x["verdict"] == "allow"),
        "students' allowed traffic was recorded: {all:#?}"
    );
}
