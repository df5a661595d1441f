//! End to end: IT staff change the filter from the admin app of the real binary.
//! A profile edit is previewed (diff + simulation), applied, and the running proxy
//! decides differently at once; a bad edit is refused with the validator's own
//! message and changes nothing; an earlier version is restored in one click; the
//! check and health pages answer; only IT admins may do any of it, and only with
//! the form's CSRF token. Clients: curl with cookie jars, from 127.0.0.x.

mod common;

use std::path::{Path, PathBuf};

use common::{Browser, Upstream, Vigie, add_user, curl, has, hidden_field, wait_for};

const STUDENT: &str = "127.0.0.7";
const STAFF: &str = "127.0.0.1";
const PASSWORD: &str = "Érable-2026 secret";
/// Resolves to 127.0.0.1 at the test upstream; allowed until the edit denies it.
const SITE: &str = "jeu.loopback.test";

fn write_config(dir: &Path) -> PathBuf {
    let lists = Path::new(env!("CARGO_MANIFEST_DIR")).join("blocklists");
    let text = format!(
        r#"# Configuration de l'école — commentaire qui doit rester
default_profile = "eleves"
client_networks = ["127.0.0.0/8"]
lists_dir = "{lists}"

[dns]
rate_limit_qps = 0

[proxy]
allow_loopback_origins = true
users_file = "{users}"

[[admin.roles]]
user = "ti"
role = "it-admin"

[[admin.roles]]
user = "direction"
role = "director"

[[categories]]
id = "gambling"
fr = "Jeux d'argent"
en = "Gambling"

[[lists]]
category = "gambling"
format = "ut1"
path = "ut1/gambling"

[profiles.eleves]
block = ["gambling"]   # toujours
bare_ip = "allow"

[profiles.personnel]
bare_ip = "allow"

[[networks]]
cidr = "{STUDENT}/32"
profile = "eleves"
"#,
        lists = lists.display(),
        users = dir.join("users").display(),
    );
    let path = dir.join("vigie.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn via_proxy(v: &Vigie, url: &str) -> u16 {
    curl(STUDENT, &["-x", &v.proxy.to_string(), url]).status
}

#[test]
fn it_admin_edits_previews_applies_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    add_user(&cfg, "ti", PASSWORD);
    add_user(&cfg, "direction", PASSWORD);
    let up = Upstream::start("");
    let origin = common::http_origin();
    let v = Vigie::start(&cfg, &[up.addr], dir.path());
    let url = format!("http://{SITE}:{}/", origin.port());
    assert_eq!(via_proxy(&v, &url), 200, "allowed before the edit");

    // No page without login; a director is refused the editor.
    let anon = Browser::new(dir.path(), &v, "anon", STAFF);
    let r = anon.get("/admin/config");
    assert_eq!(r.status, 303);
    assert!(r.header("location").unwrap().starts_with("/admin/login"));
    let director = Browser::new(dir.path(), &v, "direction", STAFF);
    assert_eq!(director.login("direction", PASSWORD).status, 303);
    assert_eq!(director.get("/admin/config").status, 403);
    assert_eq!(director.get("/admin/health").status, 403);

    let ti = Browser::new(dir.path(), &v, "ti", STAFF);
    assert_eq!(ti.login("ti", PASSWORD).status, 303);
    let overview = ti.get("/admin/config");
    assert_eq!(overview.status, 200);
    assert!(overview.body.contains("/admin/config/profile/eleves"));
    let form = ti.get("/admin/config/profile/eleves");
    assert_eq!(form.status, 200);
    let token = hidden_field(&form.body, "csrf");

    // Without the token: refused.
    let forged = ti.post(
        "/admin/config/profile/eleves/preview",
        &[("block", "gambling"), ("deny", SITE)],
    );
    assert_eq!(forged.status, 403);

    // A bad edit: the validator's message, nothing written, the filter unchanged.
    let before = std::fs::read_to_string(&cfg).unwrap();
    let bad = ti.post(
        "/admin/config/profile/eleves/preview",
        &[
            ("csrf", &token),
            ("block", "gambing"),
            ("safe_search", "off"),
        ],
    );
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert!(
        bad.body.contains("unknown category &quot;gambing&quot;")
            && bad.body.contains("did you mean &quot;gambling&quot;"),
        "{}",
        bad.body
    );
    assert!(
        bad.body.contains(&format!("{}:", cfg.display())),
        "file:line:col"
    );
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), before);
    assert_eq!(via_proxy(&v, &url), 200);

    // A good edit: diff and simulation first.
    let preview = ti.post(
        "/admin/config/profile/eleves/preview",
        &[
            ("csrf", &token),
            ("block", "gambling"),
            ("deny", SITE),
            ("safe_search", "off"),
            ("block_mode", "page"),
            ("bare_ip", "allow"),
            ("record_allowed", "default"),
            ("targets", SITE),
        ],
    );
    assert_eq!(preview.status, 200, "{}", preview.body);
    assert!(
        preview
            .body
            .contains("<ins>+ deny = [&quot;jeu.loopback.test&quot;]"),
        "{}",
        preview.body
    );
    assert!(
        preview.body.contains("(changé)"),
        "the simulation shows the verdict change"
    );
    assert_eq!(via_proxy(&v, &url), 200, "a preview changes nothing");

    // Apply: written with its comments, reloaded, in force at once.
    let applied = ti.post(
        "/admin/config/apply",
        &[
            ("csrf", &token),
            ("text", &hidden_field(&preview.body, "text")),
            ("base", &hidden_field(&preview.body, "base")),
            ("what", "profile eleves"),
        ],
    );
    assert_eq!(applied.status, 303, "{}", applied.body);
    let after = std::fs::read_to_string(&cfg).unwrap();
    assert!(after.starts_with("# Configuration de l'école — commentaire qui doit rester"));
    assert!(after.contains("block = [\"gambling\"]"));
    assert!(after.contains(SITE));
    assert_eq!(via_proxy(&v, &url), 403, "denied through the running proxy");

    // Applying the same preview again: the file changed since, refused.
    let stale = ti.post(
        "/admin/config/apply",
        &[
            ("csrf", &token),
            ("text", &hidden_field(&preview.body, "text")),
            ("base", &hidden_field(&preview.body, "base")),
        ],
    );
    assert_eq!(stale.status, 422);

    // Versions: the one in force and the initial one, restored in one click.
    let versions = ti.get("/admin/config/versions?applied=1");
    assert_eq!(versions.status, 200);
    let restore_at = versions
        .body
        .find("/restore")
        .expect("a restorable version");
    let action_start = versions.body[..restore_at].rfind("action=\"").unwrap() + 8;
    let action = &versions.body[action_start..restore_at + 8];
    let restored = ti.post(action, &[("csrf", &token)]);
    assert_eq!(restored.status, 303, "{}", restored.body);
    assert_eq!(via_proxy(&v, &url), 200, "allowed again after the restore");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), before);

    // The network map form: previewed with its diff (not applied here).
    let nets = ti.get("/admin/config/networks");
    assert_eq!(nets.status, 200);
    assert!(nets.body.contains("127.0.0.7/32 eleves"), "{}", nets.body);
    let net_preview = ti.post(
        "/admin/config/networks/preview",
        &[
            ("csrf", &token),
            (
                "rows",
                "127.0.0.7/32 eleves\n127.0.0.9/32 personnel Salle du personnel",
            ),
        ],
    );
    assert_eq!(net_preview.status, 200, "{}", net_preview.body);
    assert!(
        net_preview
            .body
            .contains("+ cidr = &quot;127.0.0.9/32&quot;"),
        "{}",
        net_preview.body
    );
    let bad_net = ti.post(
        "/admin/config/networks/preview",
        &[("csrf", &token), ("rows", "127.0.0.9/32 personel")],
    );
    assert_eq!(bad_net.status, 422);
    assert!(bad_net.body.contains("personel"), "{}", bad_net.body);
    // The overview lists the list sources.
    assert!(ti.get("/admin/config").body.contains("ut1/gambling"));

    // Check and health pages.
    let gambling = common::ut1_gambling_domain();
    let check = ti.get(&format!("/admin/check?target={gambling}&profile=eleves"));
    assert_eq!(check.status, 200);
    assert!(check.body.contains("BLOQUÉ (gambling)"), "{}", check.body);
    let health = ti.get("/admin/health");
    assert_eq!(health.status, 200);
    assert!(
        health.body.contains("accepté") && health.body.contains("ut1/gambling"),
        "{}",
        health.body
    );

    // Each apply is in the audit trail, with who and what changed.
    let evs = wait_for(&cfg, dir.path(), Some("ti"), "the admin's changes", |e| {
        e.iter().filter(|x| x["verdict"] == "config_apply").count() >= 2
    });
    assert!(has(&evs, |x| x["verdict"] == "config_apply"
        && x["rule"].as_str().unwrap_or("").contains(SITE)));
}

/// `[admin] notify_subject`: a justified read of a person's history is shown to that
/// person at the captive portal, until they say they have read it.
#[test]
fn history_read_is_told_to_the_person_at_the_portal() {
    let dir = tempfile::tempdir().unwrap();
    let lists = Path::new(env!("CARGO_MANIFEST_DIR")).join("blocklists");
    let cfg = dir.path().join("vigie.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
default_profile = "eleves"
client_networks = ["127.0.0.0/8"]
lists_dir = "{lists}"

[dns]
rate_limit_qps = 0
log_allowed = true

[proxy]
users_file = "{users}"

[portal]
networks = ["127.0.0.5/32"]

[admin]
notify_subject = true

[[admin.roles]]
user = "verif"
role = "auditor"

[profiles.eleves]
"#,
            lists = lists.display(),
            users = dir.path().join("users").display(),
        ),
    )
    .unwrap();
    add_user(&cfg, "eleve1", PASSWORD);
    add_user(&cfg, "verif", PASSWORD);
    let up = Upstream::start("");
    let v = Vigie::start(&cfg, &[up.addr], dir.path());
    let jar = dir.path().join("jar-eleve1");
    let login = common::portal_login(&v, "127.0.0.5", &jar, "eleve1", PASSWORD, "");
    assert_eq!(login.status, 303, "{}", login.body);
    common::udp_from(
        "127.0.0.5".parse().unwrap(),
        v.dns,
        "manuel.example.",
        hickory_proto::rr::RecordType::A,
    );
    // More than a page of history (500 events a page).
    for i in 0..520 {
        common::udp_from(
            "127.0.0.5".parse().unwrap(),
            v.dns,
            &format!("page{i}.example."),
            hickory_proto::rr::RecordType::A,
        );
    }
    wait_for(
        &cfg,
        dir.path(),
        Some("eleve1"),
        "the student's queries",
        |e| e.iter().filter(|x| x["service"] == "dns").count() >= 521,
    );

    let auditor = Browser::new(dir.path(), &v, "verif", STAFF);
    assert_eq!(auditor.login("verif", PASSWORD).status, 303);
    let form = auditor.get("/admin/history");
    assert_eq!(form.status, 200);
    let token = hidden_field(&form.body, "csrf");
    // Days in the config's time zone (America/Toronto by default), with a day of
    // margin each side.
    let local = chrono::Utc::now().with_timezone(&chrono_tz::America::Toronto);
    let day = |d: i64| {
        (local + chrono::Duration::days(d))
            .format("%Y-%m-%d")
            .to_string()
    };
    let (from, to) = (day(-1), day(1));
    let read = auditor.post(
        "/admin/history/view",
        &[
            ("csrf", &token),
            ("user", "eleve1"),
            ("from", &from),
            ("to", &to),
            (
                "justification",
                "Plainte 2026-114 du conseil d'établissement",
            ),
        ],
    );
    assert_eq!(read.status, 200, "{}", read.body);
    // Newest first, one page; the older events on the next page, read (and recorded)
    // with the same justification.
    assert!(read.body.contains("page519.example") && !read.body.contains("manuel.example"));
    assert!(read.body.contains("id=\"older\""));
    let older = auditor.post(
        "/admin/history/view",
        &[
            ("csrf", &token),
            ("user", "eleve1"),
            ("from", &from),
            ("to", &to),
            (
                "justification",
                "Plainte 2026-114 du conseil d'établissement",
            ),
            ("before", &hidden_field(&read.body, "before")),
        ],
    );
    assert_eq!(older.status, 200);
    assert!(older.body.contains("manuel.example") && !older.body.contains("page519.example"));
    assert!(!older.body.contains("id=\"older\""), "the last page");

    // The student sees it at the portal, once.
    let portal = format!("http://{}/portal", v.admin);
    let jar = jar.to_str().unwrap();
    let seen = curl("127.0.0.5", &["-c", jar, "-b", jar, &portal]);
    assert_eq!(seen.status, 200);
    assert!(
        seen.body.contains("Consultation de votre historique")
            && seen.body.contains("verif")
            && seen.body.contains("Plainte 2026-114"),
        "{}",
        seen.body
    );
    // The period as the auditor asked for it: local days, the last one included.
    assert!(
        seen.body.contains(&format!("du {from} au {to}.")),
        "{}",
        seen.body
    );
    // Showing is not reading: the notice stays until the person says so, with the
    // form's token.
    let again = curl("127.0.0.5", &["-c", jar, "-b", jar, &portal]);
    assert!(again.body.contains("Consultation de votre historique"));
    assert!(
        again.body.contains("J&#39;ai pris connaissance")
            || again.body.contains("J'ai pris connaissance")
    );
    let ack = |token: &str| {
        curl(
            "127.0.0.5",
            &[
                "-c",
                jar,
                "-b",
                jar,
                "--data-urlencode",
                &format!("csrf={token}"),
                "--data-urlencode",
                &format!("until={}", hidden_field(&again.body, "until")),
                &format!("{portal}/notices"),
            ],
        )
    };
    assert_eq!(ack("0123456789abcdef0123456789abcdef").status, 303);
    let forged = curl("127.0.0.5", &["-c", jar, "-b", jar, &portal]);
    assert!(
        forged.body.contains("Consultation de votre historique"),
        "a forged form marks nothing read"
    );
    assert_eq!(ack(&hidden_field(&again.body, "csrf")).status, 303);
    let read = curl("127.0.0.5", &["-c", jar, "-b", jar, &portal]);
    assert_eq!(read.status, 200);
    assert!(!read.body.contains("Consultation de votre historique"));
}

/// The live view: a director's open event stream receives a block the DNS filter
/// makes after it connected (server-sent events, as the page's script reads them).
#[test]
fn live_view_streams_a_new_block() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    add_user(&cfg, "direction", PASSWORD);
    let up = Upstream::start("");
    let v = Vigie::start(&cfg, &[up.addr], dir.path());
    let director = Browser::new(dir.path(), &v, "direction", STAFF);
    assert_eq!(director.login("direction", PASSWORD).status, 303);
    let jar = director.jar.to_str().unwrap().to_string();
    let stream = std::process::Command::new("curl")
        .args(["-s", "-N", "--max-time", "6", "-b", &jar])
        .arg(format!("http://{}/admin/live/events", v.admin))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let gambling = common::ut1_gambling_domain();
    common::udp_from(
        STUDENT.parse().unwrap(),
        v.dns,
        &format!("live.{gambling}"),
        hickory_proto::rr::RecordType::A,
    );
    let out = stream.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("event: block") && text.contains(&format!("live.{gambling}")),
        "{text}"
    );
}
