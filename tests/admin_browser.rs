//! The admin web app in a real browser: headless Chromium driven through
//! chromedriver (WebDriver, `fantoccini`), against the real binary. A director logs
//! in and the dashboard draws its chart for blocks made through the real DNS filter
//! and proxy; a blocked page's "request a review" link is followed in the browser
//! (browsing through vigie's proxy), the director approves, and the same page then
//! opens through the running proxy; an auditor's justified access is recorded and
//! listed for the IT admin. Each step saves a screenshot under
//! `target/screenshots/`.
//!
//! Without chromedriver the test says so loudly and passes, unless
//! `VIGIE_REQUIRE_BROWSER=1` (set by `tests/run` when it could install it).

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Upstream, Vigie};
use fantoccini::{Client, ClientBuilder, Locator};
use hickory_proto::rr::RecordType;

const PASSWORD: &str = "Érable-2026 secret";
const DENIED: &str = "jeux.loopback.test";

fn chromedriver() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("VIGIE_CHROMEDRIVER") {
        return Some(PathBuf::from(p));
    }
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// `None` (and a loud message) when there is no browser to drive; a panic instead
/// when the run requires one.
fn require_browser() -> Option<PathBuf> {
    match chromedriver() {
        Some(p) => Some(p),
        None => {
            let msg = "\n**********\nadmin_browser: chromedriver NOT FOUND (Debian: apt-get install chromium chromium-driver) — the browser tests did NOT run\n**********\n";
            if std::env::var("VIGIE_REQUIRE_BROWSER").as_deref() == Ok("1") {
                panic!("{msg}");
            }
            eprintln!("{msg}");
            None
        }
    }
}

fn write_config(dir: &Path) -> PathBuf {
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

[[admin.roles]]
user = "direction"
role = "director"

[[admin.roles]]
user = "verif"
role = "auditor"

[[admin.roles]]
user = "ti"
role = "it-admin"

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
deny = ["{DENIED}"]
bare_ip = "allow"

[[networks]]
cidr = "127.0.0.7/32"
profile = "eleves"
name = "École A"
"#,
        lists = lists.display(),
        users = dir.join("users").display(),
    );
    let path = dir.join("vigie.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// chromedriver on a free port, stopped on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start(path: &Path) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let d = target.join("screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).unwrap();
}

async fn browser(driver: &Driver, proxy: std::net::SocketAddr) -> Client {
    browser_sized(driver, proxy, "1280,1100").await
}

/// A browser with a window of `size` (`"W,H"`): a phone is `"390,844"`.
async fn browser_sized(driver: &Driver, proxy: std::net::SocketAddr, size: &str) -> Client {
    let mut caps = serde_json::Map::new();
    let args = vec![
        "--headless=new".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        format!("--window-size={size}"),
        "--lang=fr-CA".into(),
        "--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable".into(),
        // Web pages go through vigie's proxy; the admin app (a loopback address)
        // is reached directly, as Chromium does for loopback by default.
        format!("--proxy-server=http://{proxy}"),
    ];
    let mut opts = serde_json::json!({ "args": args });
    if let Ok(bin) = std::env::var("VIGIE_CHROMIUM") {
        opts["binary"] = serde_json::Value::String(bin);
    }
    caps.insert("goog:chromeOptions".into(), opts);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("WebDriver session")
}

async fn fill(c: &Client, css: &str, text: &str) {
    let e = c.find(Locator::Css(css)).await.expect(css);
    e.clear().await.ok();
    e.send_keys(text).await.expect("type");
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .expect(css)
        .click()
        .await
        .expect("click");
}

async fn login(c: &Client, admin: &str, user: &str) {
    c.goto(&format!("{admin}/admin/login")).await.unwrap();
    fill(c, "#user", user).await;
    fill(c, "#password", PASSWORD).await;
    click(c, "form[action='/admin/login'] button[type=submit]").await;
    // The login's own navigation must land before the caller goes elsewhere, or it
    // lands after and replaces the caller's page.
    wait_source(c, "the page after the login", false, |s| {
        s.contains("class=\"logout\"")
    })
    .await;
}

async fn logout(c: &Client) {
    click(c, "form.logout button[type=submit]").await;
}

async fn wait_source(c: &Client, what: &str, reload: bool, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let src = c.source().await.unwrap_or_default();
        if f(&src) {
            return src;
        }
        assert!(Instant::now() < deadline, "never saw {what}:\n{src}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        if reload {
            c.refresh().await.ok();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_dashboard_unblock_request_and_audited_history() {
    let Some(driver_path) = require_browser() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    for u in ["direction", "verif", "ti"] {
        common::add_user(&cfg, u, PASSWORD);
    }
    let up = Upstream::start("");
    let origin = common::http_origin();
    let v = Vigie::start(&cfg, &[up.addr], dir.path());
    let admin = format!("http://{}", v.admin);
    // Blocks through the real DNS filter, from school A.
    let gambling = common::ut1_gambling_domain();
    for _ in 0..5 {
        common::udp_from(
            "127.0.0.7".parse().unwrap(),
            v.dns,
            &gambling,
            RecordType::A,
        );
    }
    let driver = Driver::start(&driver_path);
    let c = browser(&driver, v.proxy).await;

    // A director logs in; the dashboard draws the blocks.
    login(&c, &admin, "direction").await;
    let src = wait_source(&c, "the chart with blocks", true, |s| {
        s.contains("blocks-chart") && s.contains(&gambling)
    })
    .await;
    assert!(src.contains("<rect"), "bars in the chart");
    let bars = c
        .find_all(Locator::Css("#blocks-chart rect.bar"))
        .await
        .unwrap();
    assert!(!bars.is_empty());
    shot(&c, "admin-dashboard").await;

    // Through the proxy, the denied page shows the block page; its review link
    // opens the request form.
    let page = format!("http://{DENIED}:{}/jeu", origin.port());
    c.goto(&page).await.unwrap();
    wait_source(&c, "the block page", false, |s| s.contains("ref=")).await;
    shot(&c, "block-page").await;
    click(&c, "a.btn").await;
    wait_source(&c, "the review form", false, |s| s.contains("name=\"why\"")).await;
    fill(&c, "#why", "Recherche pour le cours d'histoire").await;
    shot(&c, "review-form").await;
    click(&c, "form[action='/review'] button[type=submit]").await;
    wait_source(&c, "the pending status", false, |s| {
        s.contains("status-pending")
    })
    .await;
    shot(&c, "review-status").await;
    let status_url = c.current_url().await.unwrap().to_string();

    // The director approves it for the profile.
    c.goto(&format!("{admin}/admin/reviews")).await.unwrap();
    wait_source(&c, "the pending request", false, |s| s.contains(DENIED)).await;
    let scope = c.find(Locator::Css("select[name=scope]")).await.unwrap();
    scope.select_by_value("profile").await.unwrap();
    shot(&c, "admin-reviews").await;
    click(&c, "form[action$='/approve'] button[type=submit]").await;
    wait_source(&c, "the decision", false, |s| s.contains("status-approved")).await;

    // The same page now opens through the running proxy.
    c.goto(&page).await.unwrap();
    wait_source(&c, "the unblocked page", false, |s| s.contains("origin ok")).await;
    shot(&c, "unblocked-page").await;
    c.goto(&status_url).await.unwrap();
    wait_source(&c, "the approved status", false, |s| {
        s.contains("status-approved")
    })
    .await;

    // An auditor opens a history with a justification: recorded, and listed for
    // the IT admin.
    c.goto(&format!("{admin}/admin/")).await.unwrap();
    logout(&c).await;
    login(&c, &admin, "verif").await;
    wait_source(&c, "the history form", false, |s| {
        s.contains("name=\"justification\"")
    })
    .await;
    fill(&c, "#user", "eleve1").await;
    fill(
        &c,
        "#justification",
        "Plainte 2026-114 du conseil d'établissement",
    )
    .await;
    shot(&c, "history-form").await;
    click(&c, "form[action='/admin/history/view'] button[type=submit]").await;
    wait_source(&c, "the recorded access", false, |s| {
        s.contains("access-recorded")
    })
    .await;
    shot(&c, "history-view").await;
    logout(&c).await;
    login(&c, &admin, "ti").await;
    c.goto(&format!("{admin}/admin/accesses")).await.unwrap();
    let src = wait_source(&c, "the access list", false, |s| {
        s.contains("Plainte 2026-114")
    })
    .await;
    assert!(src.contains("verif") && src.contains("eleve1"));
    shot(&c, "history-accesses").await;

    c.close().await.ok();
    drop(driver);
    assert!(v.stop().success());
}

/// IT staff in a real browser: a profile edited in the editor (preview with its
/// simulation, then applied) changes what the running proxy does; a bad change in
/// the whole-file editor is refused with the validator's message and the filter
/// keeps its configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_it_admin_edits_a_profile_and_the_proxy_follows() {
    let Some(driver_path) = require_browser() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    common::add_user(&cfg, "ti", PASSWORD);
    let up = Upstream::start("");
    let origin = common::http_origin();
    let v = Vigie::start(&cfg, &[up.addr], dir.path());
    let admin = format!("http://{}", v.admin);
    let driver = Driver::start(&driver_path);
    let c = browser(&driver, v.proxy).await;
    const SITE: &str = "devoirs.loopback.test";
    let page = format!("http://{SITE}:{}/", origin.port());
    c.goto(&page).await.unwrap();
    wait_source(&c, "the page before the edit", false, |s| {
        s.contains("origin ok")
    })
    .await;

    login(&c, &admin, "ti").await;
    c.goto(&format!("{admin}/admin/config/profile/eleves"))
        .await
        .unwrap();
    wait_source(&c, "the profile form", false, |s| {
        s.contains("name=\"deny\"")
    })
    .await;
    fill(&c, "#deny", &format!("{DENIED}\n{SITE}")).await;
    fill(&c, "#targets", SITE).await;
    shot(&c, "editor-profile").await;
    click(&c, "form[action$='/preview'] button[type=submit]").await;
    wait_source(&c, "the preview with its simulation", false, |s| {
        s.contains("(changé)") || s.contains("(changed)")
    })
    .await;
    shot(&c, "editor-preview").await;
    click(&c, "form[action='/admin/config/apply'] button[type=submit]").await;
    wait_source(&c, "the applied change", false, |s| {
        s.contains("role=\"status\"")
    })
    .await;
    shot(&c, "editor-applied").await;

    // The running proxy follows at once.
    c.goto(&page).await.unwrap();
    wait_source(&c, "the block page", false, |s| s.contains("ref=")).await;
    shot(&c, "editor-blocked-page").await;

    // A bad change in the whole-file editor: refused with the validator's words.
    c.goto(&format!("{admin}/admin/config/raw")).await.unwrap();
    wait_source(&c, "the file editor", false, |s| s.contains("id=\"text\"")).await;
    c.execute(
        "const t = document.getElementById('text'); \
         t.value = t.value.replace('block = [\"gambling\"]', 'block = [\"gambing\"]');",
        vec![],
    )
    .await
    .unwrap();
    click(
        &c,
        "form[action='/admin/config/raw/preview'] button[type=submit]",
    )
    .await;
    let src = wait_source(&c, "the refusal", false, |s| s.contains("role=\"alert\"")).await;
    assert!(
        src.contains("gambing") && src.contains("gambling"),
        "the validator's message with its suggestion"
    );
    shot(&c, "editor-refused").await;
    assert!(
        std::fs::read_to_string(&cfg)
            .unwrap()
            .contains("block = [\"gambling\"]")
    );
    c.goto(&page).await.unwrap();
    wait_source(&c, "still blocked after the refused change", false, |s| {
        s.contains("ref=")
    })
    .await;

    c.close().await.ok();
    drop(driver);
    assert!(v.stop().success());
}

/// On a phone-sized window the director's pages fit the width (no sideways
/// scrolling) and the navigation stays reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_director_pages_fit_a_phone() {
    let Some(driver_path) = require_browser() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    common::add_user(&cfg, "direction", PASSWORD);
    let up = Upstream::start("");
    let v = Vigie::start(&cfg, &[up.addr], dir.path());
    let gambling = common::ut1_gambling_domain();
    common::udp_from(
        "127.0.0.7".parse().unwrap(),
        v.dns,
        &gambling,
        RecordType::A,
    );
    let admin = format!("http://{}", v.admin);
    let driver = Driver::start(&driver_path);
    let c = browser_sized(&driver, v.proxy, "390,844").await;
    login(&c, &admin, "direction").await;
    for (path, name) in [
        ("/admin/", "phone-dashboard"),
        ("/admin/reviews", "phone-reviews"),
    ] {
        c.goto(&format!("{admin}{path}")).await.unwrap();
        wait_source(&c, path, false, |s| s.contains("<main")).await;
        let fits = c
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
                vec![],
            )
            .await
            .unwrap();
        shot(&c, name).await;
        assert_eq!(
            fits,
            serde_json::Value::Bool(true),
            "{path} is wider than a phone"
        );
        assert!(
            c.find(Locator::Css("nav a")).await.is_ok(),
            "navigation on {path}"
        );
    }
    c.close().await.ok();
    drop(driver);
    assert!(v.stop().success());
}
