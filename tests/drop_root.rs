//! `vigie run` started as root gives root up once its ports are bound (issue 8).
//! The real binary, started as root with `--user nobody`, must run every thread as
//! `nobody` with no capability left, and still answer DNS, reload on SIGHUP, record
//! in the audit store and write its data directory, which it handed to `nobody`.
//! A user that does not exist, or files the user could not read, stop vigie with a
//! clear message before it serves anything.
//!
//! The tests that start vigie as root need root (CI runs as root); elsewhere they
//! say they skipped.

mod common;

use std::io::BufRead as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Upstream, Vigie};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn skip(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("{test}: skipped, it starts vigie as root (run the tests as root, as CI does)");
    true
}

/// [`skip`], and also when this machine has a `vigie` user: the test is about
/// starting as root without one.
fn skip_unless_no_vigie_user(test: &str) -> bool {
    if skip(test) {
        return true;
    }
    if nix::unistd::User::from_name("vigie").unwrap().is_some() {
        eprintln!("{test}: skipped, this machine has a `vigie` user, so vigie would start as it");
        return true;
    }
    false
}

/// `nobody`'s ids, from the user and group databases.
struct Nobody {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

fn nobody() -> Nobody {
    let u = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a `nobody` user");
    let mut groups: Vec<u32> = nix::unistd::getgrouplist(c"nobody", u.gid)
        .unwrap()
        .iter()
        .map(|g| g.as_raw())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    Nobody {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        groups,
    }
}

/// A temporary directory `nobody` may enter (a default one is root's alone).
fn open_tempdir() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix("vigie-drop-root")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

/// One list (`lists/gambling.txt`, beside the config) and one profile that blocks
/// it; the admin app and the block pages over TLS, whose certificates vigie makes
/// in its data directory while it is still root.
fn write_config(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("lists")).unwrap();
    std::fs::write(dir.join("lists/gambling.txt"), "casino.example\n").unwrap();
    let path = dir.join("vigie.toml");
    std::fs::write(
        &path,
        r#"
default_profile = "eleves"
client_networks = ["127.0.0.0/8", "::1/128"]

[dns]
rate_limit_qps = 0

[[categories]]
id = "gambling"
fr = "Jeux d'argent"
en = "Gambling"

[[lists]]
category = "gambling"
format = "domains"
path = "lists/gambling.txt"

[profiles.eleves]
block = ["gambling"]
block_mode = "nxdomain"

[proxy]
block_page_tls_listen = "127.0.0.1:0"

[admin]
tls_listen = "127.0.0.1:0"
"#,
    )
    .unwrap();
    path
}

/// The credential lines of one thread's `/proc/PID/task/TID/status`, read here
/// independently of vigie's own check.
#[derive(Debug)]
struct Creds {
    uid: Vec<u32>,
    gid: Vec<u32>,
    groups: Vec<u32>,
    cap_prm: u64,
    cap_eff: u64,
    cap_amb: u64,
    no_new_privs: String,
}

fn thread_creds(pid: u32) -> Vec<(String, Creds)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap();
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        let field = |k: &str| -> String {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}:")))
                .unwrap_or_else(|| panic!("no {k} in {status}"))
                .trim()
                .to_string()
        };
        let nums = |k: &str| -> Vec<u32> {
            let mut v: Vec<u32> = field(k)
                .split_whitespace()
                .map(|n| n.parse().unwrap())
                .collect();
            if k == "Groups" {
                v.sort_unstable();
            }
            v
        };
        let cap = |k: &str| u64::from_str_radix(&field(k), 16).unwrap();
        out.push((
            t.file_name().to_string_lossy().into_owned(),
            Creds {
                uid: nums("Uid"),
                gid: nums("Gid"),
                groups: nums("Groups"),
                cap_prm: cap("CapPrm"),
                cap_eff: cap("CapEff"),
                cap_amb: cap("CapAmb"),
                no_new_privs: field("NoNewPrivs"),
            },
        ));
    }
    out
}

/// Every entry under `dir` (itself included) whose owner is not `uid`:`gid`.
fn not_owned_by(dir: &Path, uid: u32, gid: u32) -> Vec<String> {
    let mut bad = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(p) = pending.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.uid() != uid || m.gid() != gid {
            bad.push(format!("{} ({}:{})", p.display(), m.uid(), m.gid()));
        }
        if m.is_dir() {
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                pending.push(e.path());
            }
        }
    }
    bad
}

fn rcode(v: &Vigie, name: &str) -> ResponseCode {
    common::udp(v.dns, name, RecordType::A)
        .metadata
        .response_code
}

/// Waits (at most 10 s) for `pred`.
fn eventually(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pred() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn root_gives_way_to_the_named_user_and_everything_keeps_working() {
    if skip("root_gives_way_to_the_named_user_and_everything_keeps_working") {
        return;
    }
    let nobody = nobody();
    let tmp = open_tempdir();
    let cfg = write_config(tmp.path());
    // A data directory an earlier run as root left behind: root's, closed.
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(data.join("left-by-root"), "x").unwrap();
    std::fs::set_permissions(
        data.join("left-by-root"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let upstream = Upstream::start("target.example");
    let v = Vigie::start_with(&cfg, &[upstream.addr], &data, &["--user", "nobody"]);
    let log = v.log_text();
    assert!(
        log.contains("root given up: running as user nobody"),
        "{log}"
    );

    // Every thread: nobody's uids and gids (real, effective, saved, file system),
    // nobody's groups, no capability, no way back through a set-user-id program.
    let threads = thread_creds(v.pid());
    assert!(threads.len() >= 3, "the runtime's threads too: {threads:?}");
    for (tid, c) in &threads {
        assert_eq!(c.uid, vec![nobody.uid; 4], "thread {tid}: {c:?}");
        assert_eq!(c.gid, vec![nobody.gid; 4], "thread {tid}: {c:?}");
        assert_eq!(c.groups, nobody.groups, "thread {tid}: {c:?}");
        assert_eq!(
            (c.cap_prm, c.cap_eff, c.cap_amb),
            (0, 0, 0),
            "thread {tid}: {c:?}"
        );
        assert_eq!(c.no_new_privs, "1", "thread {tid}: {c:?}");
    }

    // The data directory is nobody's now, what root had left in it and what vigie
    // made there before giving root up (audit store, admin and block-page
    // certificates, list cache) included.
    for f in [
        "left-by-root",
        "audit.db",
        "admin.crt",
        "admin.key",
        "block-page.key",
    ] {
        assert!(data.join(f).exists(), "{f} in the data directory");
    }
    let bad = not_owned_by(&data, nobody.uid, nobody.gid);
    assert!(bad.is_empty(), "not handed over: {bad:?}");

    // DNS: answered, over UDP and TCP, blocked and allowed.
    assert_eq!(rcode(&v, "casino.example"), ResponseCode::NXDomain);
    let ok = common::udp(v.dns, "allowed.example", RecordType::A);
    assert_eq!(common::a_records(&ok), vec![common::UPSTREAM_V4]);
    let ok = common::tcp(v.dns, "allowed.example", RecordType::A);
    assert_eq!(common::a_records(&ok), vec![common::UPSTREAM_V4]);

    // SIGHUP: the config and the lists are read again, as nobody.
    let accepted = "vigie_reload_total{result=\"accepted\"}";
    v.signal("HUP");
    eventually("a reload accepted after SIGHUP", || {
        v.metric(accepted) >= 1.0
    });
    std::fs::write(
        tmp.path().join("lists/gambling.txt"),
        "casino.example\npoker.example\n",
    )
    .unwrap();
    v.signal("HUP");
    eventually("poker.example blocked after the reload", || {
        rcode(&v, "poker.example") == ResponseCode::NXDomain
    });
    assert_eq!(v.metric("vigie_reload_total{result=\"rejected\"}"), 0.0);
    let log = v.log_text();
    assert!(log.contains("SIGHUP: reloading"), "{log}");
    assert!(!log.contains("Permission denied"), "{log}");

    // The audit store, written by nobody, has the blocked queries.
    // The audit store, written by nobody, has the blocked queries.
    std::thread::sleep(Duration::from_secs(3));
    eprintln!("LOG:\n{}", v.log_text());
    eprintln!(
        "METRICS:\n{}",
        v.http_get("/metrics")
            .lines()
            .filter(|l| l.contains("audit") || l.contains("decisions"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    common::wait_for(&cfg, &data, None, "the blocked queries", |evs| {
        ["casino.example", "poker.example"].iter().all(|name| {
            common::has(evs, |e| {
                e["target"]
                    .as_str()
                    .is_some_and(|t| t.trim_end_matches('.') == *name)
                    && e["verdict"] == "block"
            })
        })
    });

    let status = v.stop();
    assert!(status.success(), "{status:?}");
    let bad = not_owned_by(&data, nobody.uid, nobody.gid);
    assert!(bad.is_empty(), "written as someone else: {bad:?}");
}

/// Starts `vigie run` with `args` and waits (at most 60 s) for it to exit; returns
/// its exit code, stdout and stderr.
fn run_to_exit(cfg: &Path, args: &[&str], data: &Path) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigie"))
        .arg("--config")
        .arg(cfg)
        .arg("run")
        .args(["--dns-listen", "127.0.0.1:0"])
        .args(["--proxy-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--upstream", "127.0.0.1:9"])
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("VIGIE_USER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "vigie kept running; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unknown_user_stops_vigie_before_it_serves() {
    let tmp = open_tempdir();
    let cfg = write_config(tmp.path());
    let (code, stdout, stderr) = run_to_exit(
        &cfg,
        &["--user", "vigie-no-such-user-7f3a"],
        &tmp.path().join("data"),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--user vigie-no-such-user-7f3a: no such user"),
        "{stderr}"
    );
    assert!(!stdout.contains("vigie ready"), "{stdout}");
    assert!(
        !tmp.path().join("data").exists(),
        "nothing was made before the user was known"
    );
}

#[test]
fn root_without_user_becomes_vigie_or_says_how_to_create_it() {
    if skip_unless_no_vigie_user("root_without_user_becomes_vigie_or_says_how_to_create_it") {
        return;
    }
    let tmp = open_tempdir();
    let cfg = write_config(tmp.path());
    let (code, stdout, stderr) = run_to_exit(&cfg, &[], &tmp.path().join("data"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("runs as user \"vigie\" once its ports are bound")
            && stderr.contains("useradd --system"),
        "{stderr}"
    );
    assert!(!stdout.contains("vigie ready"), "{stdout}");
}

/// The README's first command run as root on a fresh machine: the embedded
/// defaults and no data directory write nothing to disk, so without a `vigie` user
/// the try-out runs as `nobody` (saying so) instead of refusing to start.
#[test]
fn a_root_try_out_on_the_embedded_defaults_runs_as_nobody() {
    if skip_unless_no_vigie_user("a_root_try_out_on_the_embedded_defaults_runs_as_nobody") {
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigie"))
        .args([
            "run",
            "--dns-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--proxy-listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut first = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut first)
        .unwrap();
    let pid = child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(first.starts_with("vigie ready"), "{first}\n{stderr}");
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert_eq!(uid, vec!["65534"; 4], "{status}");
    assert!(stderr.contains("runs as \"nobody\""), "{stderr}");
}

#[test]
fn files_the_user_cannot_read_stop_vigie_before_it_serves() {
    if skip("files_the_user_cannot_read_stop_vigie_before_it_serves") {
        return;
    }
    // A directory only root may enter: after the switch, nobody can read the
    // config nor the lists (reloads would fail) nor reach the data directory.
    let tmp = open_tempdir();
    let closed = tmp.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let cfg = write_config(&closed);
    let data = closed.join("data");
    let (code, stdout, stderr) = run_to_exit(&cfg, &["--user", "nobody"], &data);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("user nobody cannot use files vigie needs while it runs"),
        "{stderr}"
    );
    for (path, why) in [
        (cfg.clone(), "reloads (SIGHUP, file changes) read it"),
        (closed.join("lists/gambling.txt"), "reloads read the lists"),
        (data.clone(), "the audit store"),
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&path.display().to_string()) && l.contains(why)),
            "{} ({why}) in:\n{stderr}",
            path.display()
        );
    }
    assert!(!stdout.contains("vigie ready"), "{stdout}");
}
