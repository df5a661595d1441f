//! End to end, route by route: the admin web app of the real binary, driven with
//! `curl` (cookie jars, one per person, from loopback addresses 127.0.0.x). Every
//! page and form, and every refusal: no page without login, no form without its
//! CSRF token, no page outside one's role, no history without a justification (for
//! an IT admin either), a director restricted to one school sees and decides only
//! that school's requests. An unblock request made from a real block page, once
//! approved, lets the same person through the running DNS filter and proxy, and
//! still does after a restart. Admin actions land in the audit trail.

mod common;

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use common::{Browser, Reply, Upstream, Vigie, add_user, csrf_token, curl, has, wait_for};
use hickory_proto::rr::RecordType;

/// Students of school A (a director is restricted to it).
const SCHOOL_A: &str = "127.0.0.7";
/// Students of school B.
const SCHOOL_B: &str = "127.0.0.8";
/// Where the staff sign in to the admin app from.
const STAFF: &str = "127.0.0.1";
const PASSWORD: &str = "Érable-2026 secret";
/// Denied to students by an override; resolves to 127.0.0.1 at the test upstream.
const DENIED: &str = "jeux.loopback.test";
const DENIED_B: &str = "autre.loopback.test";

fn write_config(dir: &Path, second_approver: bool) -> PathBuf {
    let lists = Path::new(env!("CARGO_MANIFEST_DIR")).join("blocklists");
    let text = format!(
        r#"
default_profile = "eleves"
client_networks = ["127.0.0.0/8"]
lists_dir = "{lists}"

[dns]
rate_limit_qps = 0

[proxy]
allow_loopback_origins = true
users_file = "{users}"

[admin]
tls_listen = "127.0.0.1:0"
history_second_approver = {second_approver}

[[admin.roles]]
user = "ti"
role = "it-admin"

[[admin.roles]]
user = "direction"
role = "director"

[[admin.roles]]
user = "direction-a"
role = "director"
networks = ["{SCHOOL_A}/32"]

[[admin.roles]]
user = "direction-b"
role = "director"
networks = ["{SCHOOL_B}/32"]

[[admin.roles]]
user = "verif"
role = "auditor"

[[admin.roles]]
user = "verif2"
role = "auditor"

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
deny = ["{DENIED}", "{DENIED_B}"]
bare_ip = "allow"

# School A's own profile: only its network has it, so its director may unblock
# for the whole profile.
[profiles.eleves-a]
block = ["gambling"]
deny = ["{DENIED}", "{DENIED_B}"]
bare_ip = "allow"

[profiles.personnel]
bare_ip = "allow"

[[networks]]
cidr = "{SCHOOL_A}/32"
profile = "eleves-a"
name = "École A"

[[networks]]
cidr = "{SCHOOL_B}/32"
profile = "eleves"
name = "École B"
"#,
        lists = lists.display(),
        users = dir.join("users").display(),
    );
    let path = dir.join("vigie.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn login_ok(b: &Browser, user: &str) {
    let r = b.login(user, PASSWORD);
    assert_eq!(r.status, 303, "{} {}", r.headers, r.body);
}

fn session_token(b: &Browser, page: &str) -> String {
    let r = b.get(page);
    assert_eq!(r.status, 200, "{page}: {}", r.body);
    csrf_token(&r.body)
}

fn via_proxy(v: &Vigie, client: &str, url: &str) -> Reply {
    curl(client, &["-x", &v.proxy.to_string(), url])
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "never saw {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn admin_pages_forms_roles_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), false);
    for u in [
        "ti",
        "direction",
        "direction-a",
        "direction-b",
        "verif",
        "eleve1",
    ] {
        add_user(&cfg, u, PASSWORD);
    }
    let up = Upstream::start("");
    let origin = common::http_origin();
    let v = Vigie::start(&cfg, &[up.addr], dir.path());
    let anon = Browser::new(dir.path(), &v, "anon", STAFF);

    // ---- no page without login: every page sends to the login page, no form runs.
    for page in [
        "/admin/",
        "/admin/live",
        "/admin/live/events",
        "/admin/reviews",
        "/admin/history",
        "/admin/accesses",
    ] {
        let r = anon.get(page);
        assert_eq!(r.status, 303, "{page}: {}", r.headers);
        assert!(
            r.header("location")
                .is_some_and(|l| l.starts_with("/admin/login")),
            "{page}: {}",
            r.headers
        );
    }
    for form in [
        "/admin/reviews/1/approve",
        "/admin/reviews/1/refuse",
        "/admin/history/view",
        "/admin/history/export",
        "/admin/history/requests",
        "/admin/logout",
    ] {
        let r = anon.post(
            form,
            &[("csrf", "x"), ("justification", "x".repeat(40).as_str())],
        );
        assert_eq!(r.status, 303, "{form}");
        assert!(!r.body.contains("<table"), "{form}");
    }
    assert_eq!(anon.get("/").header("location").as_deref(), Some("/admin/"));

    // ---- login: French first, English on request; CSRF, wrong password, no role.
    let page = anon.get("/admin/login");
    assert!(page.body.contains("lang=\"fr-CA\"") && page.body.contains("Mot de passe"));
    assert!(
        page.header("content-security-policy")
            .is_some_and(|c| c.contains("default-src 'self'"))
    );
    let en = curl(
        STAFF,
        &[
            "-H",
            "Accept-Language: en-CA,en;q=0.9",
            &format!("http://{}/admin/login", v.admin),
        ],
    );
    assert!(en.body.contains("Password") && en.body.contains("lang=\"en\""));
    let switch = anon.get("/admin/lang?to=en&back=/admin/login");
    assert_eq!(switch.status, 303);
    assert!(anon.get("/admin/login").body.contains("Sign in"));
    anon.get("/admin/lang?to=fr&back=/admin/login");
    let no_csrf = anon.post(
        "/admin/login",
        &[("user", "direction"), ("password", PASSWORD)],
    );
    assert_eq!(no_csrf.status, 403);
    let token = csrf_token(&anon.get("/admin/login").body);
    let wrong = anon.post(
        "/admin/login",
        &[
            ("user", "direction"),
            ("password", "nope"),
            ("csrf", &token),
        ],
    );
    assert_eq!(wrong.status, 401);
    let no_role = anon.login("eleve1", PASSWORD);
    assert_eq!(no_role.status, 403, "{}", no_role.body);
    assert!(no_role.body.contains("Aucun rôle"));

    // ---- blocked traffic from school A, through the real DNS filter and proxy.
    let gambling = common::ut1_gambling_domain();
    for _ in 0..3 {
        common::udp_from(SCHOOL_A.parse().unwrap(), v.dns, &gambling, RecordType::A);
    }
    let port = origin.port();
    let denied_url = format!("http://{DENIED}:{port}/jeu");
    let blocked = via_proxy(&v, SCHOOL_A, &denied_url);
    assert_eq!(blocked.status, 403, "{}", blocked.headers);
    let reference = blocked.header("x-vigie-reference").expect("reference");
    let review_link = blocked.header("x-vigie-review").expect("review url");
    assert_eq!(review_link, format!("http://{}/review", v.admin));

    // ---- a director: dashboard with the chart, numbers that link further down.
    let dir_b = Browser::new(dir.path(), &v, "direction", STAFF);
    let r = dir_b.login("direction", PASSWORD);
    assert_eq!(r.header("location").as_deref(), Some("/admin/"));
    let cookie = r.header("set-cookie").unwrap_or_default();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    wait_until("the blocks on the dashboard", || {
        let d = dir_b.get("/admin/");
        d.status == 200 && total(&d.body) >= 4
    });
    let dash = dir_b.get("/admin/?days=1");
    assert!(dash.body.contains("<svg") && dash.body.contains("blocks-chart"));
    assert!(dash.body.contains("<rect"), "bars");
    assert!(dash.body.contains("Jeux d&#39;argent") || dash.body.contains("Jeux d'argent"));
    assert!(dash.body.contains(&gambling), "top blocked domains");
    assert!(dash.body.contains("École A"), "split by school");
    let narrowed = dir_b.get("/admin/?days=7&category=gambling");
    assert_eq!(total(&narrowed.body), 3, "the three gambling queries");
    // Narrowed to one device, an aggregate is that device's history: refused.
    for one in ["127.0.0.7/32", "127.0.0.0/25", "::1/128"] {
        let r = dir_b.get(&format!("/admin/?days=7&net={}", qe(one)));
        assert_eq!(r.status, 400, "{one}: {}", r.body);
        assert!(r.body.contains("au moins un /24"), "{one}: {}", r.body);
        assert!(!r.body.contains("id=\"total\""), "{one}: no numbers");
    }
    let wide = dir_b.get("/admin/?days=7&net=127.0.0.0%2F24");
    assert_eq!(wide.status, 200);
    assert!(total(&wide.body) >= 4, "a /24 is an aggregate");
    assert!(
        !dash.body.contains("net=127.0.0.7"),
        "no link to one device's numbers"
    );
    assert_eq!(dir_b.get("/admin/live").status, 200);
    // A director is refused the IT admins' and the auditors' pages.
    for page in ["/admin/accesses", "/admin/history"] {
        let r = dir_b.get(page);
        assert_eq!(r.status, 403, "{page}");
        assert!(r.body.contains("Accès refusé"));
    }

    // ---- the unblock request, from the block page's link.
    let student = Browser::new(dir.path(), &v, "student", SCHOOL_A);
    let form = student.get(&format!(
        "/review?ref={reference}&url={}&category=",
        qe(&denied_url)
    ));
    assert_eq!(form.status, 200, "{}", form.body);
    assert!(form.body.contains(DENIED));
    let rtoken = csrf_token(&form.body);
    let forged = student.post(
        "/review",
        &[
            ("ref", &reference),
            ("url", &denied_url),
            ("why", "pour mon travail"),
        ],
    );
    assert_eq!(forged.status, 403, "no CSRF token, no request");
    let sent = student.post(
        "/review",
        &[
            ("csrf", &rtoken),
            ("ref", &reference),
            ("url", &denied_url),
            ("why", "Recherche pour le cours d'histoire"),
        ],
    );
    assert_eq!(sent.status, 303, "{}", sent.body);
    let status_url = sent.header("location").unwrap();
    assert!(status_url.starts_with(&format!("/review/status?ref={reference}")));
    assert!(student.get(&status_url).body.contains("En attente"));
    // The link again shows the request, not a second form.
    assert_eq!(student.get(&format!("/review?ref={reference}")).status, 303);
    // A request from school B, for another site.
    let other = Browser::new(dir.path(), &v, "student-b", SCHOOL_B);
    let f2 = other.get(&format!("/review?url=http://{DENIED_B}/"));
    let sent_b = other.post(
        "/review",
        &[
            ("csrf", &csrf_token(&f2.body)),
            ("url", &format!("http://{DENIED_B}/")),
            ("why", "Besoin pour un projet"),
        ],
    );
    assert_eq!(sent_b.status, 303);

    // The list; approving needs the CSRF token.
    let list = dir_b.get("/admin/reviews");
    assert!(list.body.contains(DENIED) && list.body.contains(DENIED_B));
    let id_a = review_id(&list.body, DENIED);
    let id_b = review_id(&list.body, DENIED_B);
    let no_token = dir_b.post(
        &format!("/admin/reviews/{id_a}/approve"),
        &[("scope", "profile"), ("hours", "24")],
    );
    assert_eq!(no_token.status, 403);
    assert_eq!(
        via_proxy(&v, SCHOOL_A, &denied_url).status,
        403,
        "still blocked"
    );

    // ---- a director restricted to school A: sees and decides only school A.
    let dir_a = Browser::new(dir.path(), &v, "direction-a", STAFF);
    login_ok(&dir_a, "direction-a");
    let list_a = dir_a.get("/admin/reviews");
    assert!(list_a.body.contains(DENIED) && !list_a.body.contains(DENIED_B));
    let ta = csrf_token(&list_a.body);
    let not_mine = dir_a.post(
        &format!("/admin/reviews/{id_b}/approve"),
        &[("csrf", &ta), ("scope", "profile"), ("hours", "24")],
    );
    assert_eq!(not_mine.status, 403);
    let everyone = dir_a.post(
        &format!("/admin/reviews/{id_a}/approve"),
        &[("csrf", &ta), ("scope", "everyone"), ("hours", "24")],
    );
    assert_eq!(
        everyone.status, 400,
        "a restricted director cannot unblock for everyone"
    );
    let dash_a = dir_a.get("/admin/");
    assert!(dash_a.body.contains("127.0.0.7/32"));
    // Who is behind an address: only within the director's networks.
    let check = |ip: &str| dir_a.get(&format!("/admin/check?target={DENIED}&ip={ip}"));
    assert_eq!(check(SCHOOL_A).status, 200);
    let elsewhere = check(SCHOOL_B);
    assert_eq!(elsewhere.status, 403, "{}", elsewhere.body);
    assert!(!elsewhere.body.contains("id=\"verdict\""));
    // School B's profile is the default one (every unmapped client): its
    // restricted director cannot unblock for the whole of it.
    let dir_rb = Browser::new(dir.path(), &v, "direction-b", STAFF);
    login_ok(&dir_rb, "direction-b");
    let list_b = dir_rb.get("/admin/reviews");
    assert!(list_b.body.contains(DENIED_B) && !list_b.body.contains(DENIED));
    assert!(
        list_b.body.contains("seul le service informatique"),
        "{}",
        list_b.body
    );
    let whole = dir_rb.post(
        &format!("/admin/reviews/{id_b}/approve"),
        &[
            ("csrf", &csrf_token(&list_b.body)),
            ("scope", "profile"),
            ("hours", "24"),
        ],
    );
    assert_eq!(whole.status, 400, "{}", whole.body);
    assert!(whole.body.contains("hors de vos écoles"), "{}", whole.body);

    // Approve for the profile, a day: effective at once, DNS and proxy alike.
    let approved = dir_a.post(
        &format!("/admin/reviews/{id_a}/approve"),
        &[("csrf", &ta), ("scope", "profile"), ("hours", "24")],
    );
    assert_eq!(approved.status, 303, "{}", approved.body);
    let through = via_proxy(&v, SCHOOL_A, &denied_url);
    assert_eq!(through.status, 200, "{}", through.headers);
    assert_eq!(through.body, "origin ok");
    let dns = common::udp_from(SCHOOL_A.parse().unwrap(), v.dns, DENIED, RecordType::A);
    assert_eq!(common::a_records(&dns), vec![std::net::Ipv4Addr::LOCALHOST]);
    assert!(student.get(&status_url).body.contains("Acceptée"));
    // Refusing needs a reason, and the token.
    let tb = session_token(&dir_b, "/admin/reviews");
    let no_reason = dir_b.post(
        &format!("/admin/reviews/{id_b}/refuse"),
        &[("csrf", &tb), ("answer", "")],
    );
    assert_eq!(no_reason.status, 400);
    let refused = dir_b.post(
        &format!("/admin/reviews/{id_b}/refuse"),
        &[
            ("csrf", &tb),
            ("answer", "Site sans lien avec le programme"),
        ],
    );
    assert_eq!(refused.status, 303);
    let b_status = other.get(&sent_b.header("location").unwrap());
    assert!(b_status.body.contains("Refusée") && b_status.body.contains("Site sans lien"));
    assert_eq!(
        via_proxy(&v, SCHOOL_B, &format!("http://{DENIED_B}:{port}/")).status,
        403
    );

    // ---- an auditor: no dashboard; history only with a justification.
    let aud = Browser::new(dir.path(), &v, "verif", STAFF);
    let r = aud.login("verif", PASSWORD);
    assert_eq!(r.header("location").as_deref(), Some("/admin/history"));
    assert_eq!(aud.get("/admin/").status, 403);
    assert_eq!(aud.get("/admin/reviews").status, 403);
    assert_eq!(aud.get("/admin/accesses").status, 403);
    let t = session_token(&aud, "/admin/history");
    let today = "2099-12-31".to_string();
    let fields = |why: &'static str, token: &str| -> Vec<(String, String)> {
        vec![
            ("csrf".into(), token.into()),
            ("user".into(), "eleve1".into()),
            ("from".into(), "2020-01-01".into()),
            ("to".into(), today.clone()),
            ("justification".into(), why.into()),
        ]
    };
    let send = |b: &Browser, path: &str, f: &[(String, String)]| {
        let refs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        b.post(path, &refs)
    };
    let short = send(&aud, "/admin/history/view", &fields("parce que", &t));
    assert_eq!(short.status, 400);
    assert!(short.body.contains("au moins 15"), "{}", short.body);
    let forged = send(
        &aud,
        "/admin/history/view",
        &fields(
            "Plainte 2026-114 du conseil d'établissement",
            "0123456789abcdef0123456789abcdef",
        ),
    );
    assert_eq!(forged.status, 403);
    let why = "Plainte 2026-114 du conseil d'établissement";
    let opened = send(&aud, "/admin/history/view", &fields(why, &t));
    assert_eq!(opened.status, 200, "{}", opened.body);
    assert!(opened.body.contains("access-recorded") && opened.body.contains("id=\"history\""));
    let csv = send(&aud, "/admin/history/export", &fields(why, &t));
    assert_eq!(csv.status, 200);
    assert!(
        csv.header("content-type")
            .is_some_and(|c| c.starts_with("text/csv"))
    );
    assert!(
        csv.body
            .starts_with("time,service,client_ip,user,profile,host,url,verdict,category,rule")
    );

    // ---- an IT admin: no history without a justification either; sees every access.
    let ti = Browser::new(dir.path(), &v, "ti", STAFF);
    login_ok(&ti, "ti");
    let tt = session_token(&ti, "/admin/history");
    let none = send(&ti, "/admin/history/view", &fields("", &tt));
    assert_eq!(none.status, 400, "{}", none.body);
    let acc = ti.get("/admin/accesses");
    assert_eq!(acc.status, 200);
    assert!(acc.body.contains("verif") && acc.body.contains("Plainte 2026-114"));
    assert_eq!(
        acc.body.matches("Plainte 2026-114").count(),
        2,
        "the view and the export"
    );
    assert_eq!(ti.get("/admin/").status, 200);

    // ---- HTTPS listener: same app, Secure cookies.
    let tls = v
        .extra
        .iter()
        .find(|(n, _)| n == "admin_tls")
        .map(|(_, a)| *a)
        .expect("admin_tls on the ready line");
    let r = curl(STAFF, &["-k", &format!("https://{tls}/admin/login")]);
    assert_eq!(r.status, 200, "{}", r.headers);
    assert!(r.header("set-cookie").is_some_and(|c| c.contains("Secure")));

    // ---- logout ends the session (and needs its token).
    let lo = dir_b.post("/admin/logout", &[]);
    assert_eq!(lo.status, 403);
    let tb = session_token(&dir_b, "/admin/reviews");
    assert_eq!(dir_b.post("/admin/logout", &[("csrf", &tb)]).status, 303);
    assert_eq!(dir_b.get("/admin/").status, 303);

    // ---- every admin action is in the audit trail, with who and the change.
    let evs = wait_for(&cfg, dir.path(), None, "admin events", |e| {
        has(e, |x| {
            x["service"] == "admin" && x["verdict"] == "review_approve"
        }) && has(e, |x| x["verdict"] == "history_export")
            && has(e, |x| x["verdict"] == "logout")
    });
    assert!(has(&evs, |x| x["verdict"] == "login"
        && x["user"] == "direction"));
    assert!(has(&evs, |x| x["verdict"] == "login_failed"));
    assert!(has(&evs, |x| x["verdict"] == "review_approve"
        && x["user"] == "direction-a"
        && x["rule"]
            .as_str()
            .is_some_and(|r| r.contains("pending → approved"))));
    assert!(has(&evs, |x| x["verdict"] == "review_refuse"
        && x["user"] == "direction"));
    assert!(has(&evs, |x| x["verdict"] == "history_open"
        && x["user"] == "verif"));
    assert!(has(&evs, |x| x["service"] == "proxy"
        && x["verdict"] == "allow"
        && x["rule"]
            .as_str()
            .is_some_and(|r| r.contains("unblock request"))));

    // ---- the approval survives a restart.
    assert!(v.stop().success());
    let v = Vigie::start(&cfg, &[up.addr], dir.path());
    let again = via_proxy(&v, SCHOOL_A, &denied_url);
    assert_eq!(again.status, 200, "{}", again.headers);
}

/// The number the dashboard shows as its total.
fn total(body: &str) -> u64 {
    body.split("id=\"total\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn qe(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The id of the pending request for `host` in the reviews page.
fn review_id(body: &str, host: &str) -> i64 {
    let at = body
        .find(&format!(" — {host}</h3>"))
        .unwrap_or_else(|| panic!("no request for {host}"));
    let start = body[..at].rfind('#').unwrap() + 1;
    body[start..at].parse().unwrap()
}

#[test]
fn second_approver_is_required_and_is_someone_else() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), true);
    for u in ["verif", "verif2"] {
        add_user(&cfg, u, PASSWORD);
    }
    let up = Upstream::start("");
    let v = Vigie::start(&cfg, &[up.addr], dir.path());
    let a = Browser::new(dir.path(), &v, "verif", STAFF);
    let b = Browser::new(dir.path(), &v, "verif2", STAFF);
    login_ok(&a, "verif");
    login_ok(&b, "verif2");
    let t = session_token(&a, "/admin/history");
    let today = "2099-12-31";
    let why = "Mandat de la direction générale no 42";
    // Reading directly is refused: a request must be approved first.
    let direct = a.post(
        "/admin/history/view",
        &[
            ("csrf", &t),
            ("user", "eleve1"),
            ("from", "2020-01-01"),
            ("to", today),
            ("justification", why),
        ],
    );
    assert_eq!(direct.status, 400);
    let asked = a.post(
        "/admin/history/requests",
        &[
            ("csrf", &t),
            ("user", "eleve1"),
            ("from", "2020-01-01"),
            ("to", today),
            ("justification", why),
        ],
    );
    assert_eq!(asked.status, 303);
    let page = a.get("/admin/history");
    assert!(page.body.contains("Mandat de la direction"));
    assert!(
        !page.body.contains("/admin/history/requests/1/approve"),
        "the requester has no approve button on their own request"
    );
    let own = a.post("/admin/history/requests/1/approve", &[("csrf", &t)]);
    assert_eq!(own.status, 403, "nobody approves their own request");
    let tb = session_token(&b, "/admin/history");
    assert_eq!(
        b.post("/admin/history/requests/1/approve", &[("csrf", &tb)])
            .status,
        303
    );
    // Only the requester opens it.
    assert_eq!(
        b.post("/admin/history/view", &[("csrf", &tb), ("request", "1")])
            .status,
        400
    );
    let opened = a.post("/admin/history/view", &[("csrf", &t), ("request", "1")]);
    assert_eq!(opened.status, 200, "{}", opened.body);
    assert!(opened.body.contains("Historique de eleve1"));
}
