//! `vigie check`, `vigie config validate` and `vigie lists stats` through the real
//! binary, on the real UT1 lists shipped in `blocklists/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn vigie() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vigie"));
    c.env("VIGIE_LISTS_DIR", lists_dir())
        .env_remove("VIGIE_CONFIG");
    c
}

fn lists_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("blocklists")
}

fn run(args: &[&str]) -> Output {
    vigie().args(args).output().expect("vigie runs")
}

fn json(args: &[&str]) -> (i32, serde_json::Value) {
    let mut a = args.to_vec();
    a.push("--json");
    let out = run(&a);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

/// The first domain of a UT1 category that no other shipped category lists, so the
/// expected category is unambiguous.
fn listed_domain(category: &str) -> String {
    let text =
        std::fs::read_to_string(lists_dir().join("ut1").join(category).join("domains")).unwrap();
    let others: Vec<String> = std::fs::read_dir(lists_dir().join("ut1"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != category)
        .filter_map(|e| std::fs::read_to_string(e.path().join("domains")).ok())
        .collect();
    text.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with('#')
                && l.contains('.')
                && !l.chars().next().unwrap().is_ascii_digit()
        })
        .find(|d| !others.iter().any(|o| o.lines().any(|l| l.trim() == *d)))
        .expect("a domain only this category lists")
        .to_string()
}

#[test]
fn gambling_domain_and_subdomain_blocked_for_students() {
    let domain = listed_domain("gambling");
    for target in [
        domain.clone(),
        format!("www.{domain}"),
        format!("a.b.{domain}"),
    ] {
        let (code, v) = json(&["check", "--profile", "eleves", &target]);
        assert_eq!(code, 1, "{target}: {v}");
        assert_eq!(v["verdict"], "block");
        assert_eq!(v["profile"], "eleves");
        assert_eq!(v["category"], "gambling");
        assert_eq!(v["entry"], domain.as_str());
        assert_eq!(v["rule"], "eleves: block gambling");
        let trace = v["trace"].as_array().unwrap();
        assert!(
            trace
                .iter()
                .any(|l| l.as_str().unwrap().contains("ut1/gambling/domains:")),
            "trace names file:line: {v}"
        );
    }
    // A look-alike that only shares a suffix of characters is not blocked.
    let (code, v) = json(&["check", "--profile", "eleves", &format!("not{domain}")]);
    assert_eq!((code, v["verdict"].as_str()), (0, Some("allow")), "{v}");
}

#[test]
fn text_output_names_verdict_and_trace() {
    let domain = listed_domain("gambling");
    let out = run(&["check", "--profile", "eleves", &domain]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.starts_with(&format!("{domain}: BLOCK (gambling)\n")),
        "{text}"
    );
    assert!(
        text.contains("decision: block (eleves: block gambling)"),
        "{text}"
    );
}

#[test]
fn adult_url_entry_matches_by_path_not_sibling_path() {
    // Take a UT1 adult `urls` entry whose host no domain list blocks.
    let urls = std::fs::read_to_string(lists_dir().join("ut1/adult/urls")).unwrap();
    let entry = urls
        .lines()
        .map(str::trim)
        .filter(|l| l.matches('/').count() == 1 && !l.ends_with('/'))
        .find(|l| {
            let host = l.split('/').next().unwrap();
            let (_, v) = json(&["check", "--profile", "eleves", host]);
            v["verdict"] == "allow"
        })
        .expect("a urls entry on an otherwise allowed host");
    let (code, v) = json(&["check", "--profile", "eleves", &format!("http://{entry}")]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["category"], "adult");
    assert_eq!(v["entry"], entry);
    let (code, v) = json(&[
        "check",
        "--profile",
        "eleves",
        &format!("https://{entry}/deeper?x=1"),
    ]);
    assert_eq!((code, v["category"].as_str()), (1, Some("adult")), "{v}");
    let (code, v) = json(&[
        "check",
        "--profile",
        "eleves",
        &format!("http://{entry}-sibling"),
    ]);
    assert_eq!(
        (code, v["verdict"].as_str()),
        (0, Some("allow")),
        "sibling path: {v}"
    );
}

#[test]
fn social_networks_for_staff_follow_the_work_schedule() {
    let domain = listed_domain("social_networks");
    // 2026-11-23 is a Monday, 2026-11-28 a Saturday.
    let (code, v) = json(&[
        "check",
        "--profile",
        "personnel",
        "--at",
        "2026-11-23T10:00",
        &domain,
    ]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["category"], "social_networks");
    assert!(
        v["rule"].as_str().unwrap().contains("heures_de_travail"),
        "{v}"
    );
    let (code, v) = json(&[
        "check",
        "--profile",
        "personnel",
        "--at",
        "2026-11-23T12:15",
        &domain,
    ]);
    assert_eq!(
        (code, v["verdict"].as_str()),
        (0, Some("allow")),
        "lunch: {v}"
    );
    let (code, v) = json(&[
        "check",
        "--profile",
        "personnel",
        "--at",
        "2026-11-28T10:00",
        &domain,
    ]);
    assert_eq!(
        (code, v["verdict"].as_str()),
        (0, Some("allow")),
        "Saturday: {v}"
    );
    // Students have it blocked at all times.
    let (code, _) = json(&[
        "check",
        "--profile",
        "eleves",
        "--at",
        "2026-11-28T10:00",
        &domain,
    ]);
    assert_eq!(code, 1);
}

#[test]
fn allow_override_beats_category() {
    let domain = listed_domain("gambling");
    let dir = tempfile::tempdir().unwrap();
    let default = String::from_utf8(run(&["config", "default"]).stdout).unwrap();
    let text = default
        .replacen(
            "[profiles.eleves]\n",
            &format!("[profiles.eleves]\nallow = [\"{domain}\"]\n"),
            1,
        )
        .replacen(
            "timezone = ",
            &format!("lists_dir = \"{}\"\ntimezone = ", lists_dir().display()),
            1,
        );
    let cfg = dir.path().join("vigie.toml");
    std::fs::write(&cfg, text).unwrap();
    let cfg = cfg.to_str().unwrap();
    let (code, v) = json(&[
        "--config",
        cfg,
        "check",
        "--profile",
        "eleves",
        &format!("www.{domain}"),
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["verdict"], "allow");
    assert_eq!(
        v["categories"][0], "gambling",
        "still reported as listed: {v}"
    );
    assert_eq!(v["rule"], format!("eleves: allow {domain}"));
    // Other profiles are unaffected.
    let (code, _) = json(&["--config", cfg, "check", "--profile", "invites", &domain]);
    assert_eq!(code, 1);
}

#[test]
fn ip_maps_to_network_profile() {
    let dir = tempfile::tempdir().unwrap();
    let default = String::from_utf8(run(&["config", "default"]).stdout).unwrap();
    let text = format!(
        "{}\n[[networks]]\ncidr = \"10.1.0.0/16\"\nprofile = \"eleves\"\n",
        default.replacen(
            "timezone = ",
            &format!("lists_dir = \"{}\"\ntimezone = ", lists_dir().display()),
            1
        )
    );
    let cfg = dir.path().join("vigie.toml");
    std::fs::write(&cfg, text).unwrap();
    let cfg = cfg.to_str().unwrap();
    let (_, v) = json(&["--config", cfg, "check", "--ip", "10.1.2.3", "example.org"]);
    assert_eq!(v["profile"], "eleves");
    let (_, v) = json(&[
        "--config",
        cfg,
        "check",
        "--ip",
        "192.168.9.9",
        "example.org",
    ]);
    assert_eq!(v["profile"], "invites");
}

#[test]
fn safe_search_and_errors_exit_codes() {
    let (code, v) = json(&["check", "--profile", "eleves", "www.google.ca"]);
    assert_eq!(code, 0);
    assert_eq!(v["verdict"], "safe_search");
    assert_eq!(v["safe_search_target"], "forcesafesearch.google.com");
    let out = run(&["check", "--profile", "eleve", "example.org"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("unknown profile \"eleve\" — did you mean \"eleves\"?")
    );
    let out = run(&["check", "--at", "lundi", "example.org"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn config_validate_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "timezone = \"Europe/Pari\"\n\n[[categories]]\nid = \"gambling\"\nfr = \"Jeux d'argent\"\nen = \"Gambling\"\n\n[profiles.invites]\nblock = [\"gamblin\"]\nsafe_serch = \"strict\"\n",
    )
    .unwrap();
    let out = run(&["config", "validate", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let f = cfg.display();
    assert!(
        err.contains(&format!(
            "{f}:1:12: unknown time zone \"Europe/Pari\" — did you mean \"Europe/Paris\"?"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}:10:1: unknown key \"safe_serch\" — did you mean \"safe_search\"?"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("{f}:9:10: unknown category \"gamblin\" in profile \"invites\" — did you mean \"gambling\"?")), "{err}");
    let out = run(&["config", "validate"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn lists_stats_reports_sources() {
    let out = run(&["lists", "stats"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let gambling = text
        .lines()
        .find(|l| l.starts_with("ut1/gambling"))
        .expect("gambling row");
    let count: usize = gambling.split_whitespace().nth(2).unwrap().parse().unwrap();
    let lines = std::fs::read_to_string(lists_dir().join("ut1/gambling/domains"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    assert!(
        count > lines * 9 / 10 && count <= lines,
        "{count} of {lines}"
    );
    assert!(text.contains("domain set:"), "{text}");
    assert!(text.contains("B/name"), "{text}");
}
