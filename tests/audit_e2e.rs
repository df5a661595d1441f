//! The audit trail end to end: the real binary writes every blocked DNS query to its
//! SQLite store, loses nothing under a bounded load, survives `kill -9` with at most
//! the last second of events missing and a store that is never corrupt.

mod common;

use std::time::{Duration, Instant};

use common::{Upstream, Vigie, udp, ut1_gambling_domain, write_config};
use hickory_proto::rr::RecordType;
use vigie::audit::store::{SqliteStore, Store};

#[test]
fn every_blocked_query_reaches_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start("cloak.example");
    let config = write_config(dir.path(), "");
    let vigie = Vigie::start(&config, &[upstream.addr], dir.path());
    let domain = ut1_gambling_domain();
    const N: usize = 2_000;
    for i in 0..N {
        let answer = udp(vigie.dns, &format!("q{i}.{domain}"), RecordType::A);
        assert_eq!(answer.answers.len(), 1, "blocked answer (page mode)");
    }
    assert_eq!(vigie.metric("vigie_audit_dropped_total"), 0.0);
    let status = vigie.stop();
    assert!(status.success(), "clean shutdown: {status:?}");
    let mut store = SqliteStore::open(&dir.path().join("audit.db")).unwrap();
    assert_eq!(
        store.count().unwrap(),
        N as u64,
        "every blocked query recorded, none dropped"
    );
    let top = store
        .top_blocked_domains(
            vigie::audit::store::Period {
                from: chrono::Utc::now() - chrono::Duration::hours(1),
                to: chrono::Utc::now() + chrono::Duration::hours(1),
            },
            1,
        )
        .unwrap();
    assert!(top[0].0.ends_with(&domain), "{top:?}");
    assert_eq!(top[0].1, 1, "each name once");
}

#[test]
fn kill_9_loses_at_most_the_last_second_and_never_corrupts() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start("cloak.example");
    let config = write_config(dir.path(), "");
    let vigie = Vigie::start(&config, &[upstream.addr], dir.path());
    let domain = ut1_gambling_domain();
    // A bounded load: at most 200,000 queries or 3 s, whichever comes first (a
    // quiet machine answers 20,000 in well under a second: the kill must come
    // more than a second after the first answers).
    let started = Instant::now();
    let mut answered_at: Vec<Instant> = Vec::new();
    for i in 0..200_000 {
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
        let answer = udp(vigie.dns, &format!("k{i}.{domain}"), RecordType::A);
        if !answer.answers.is_empty() {
            answered_at.push(Instant::now());
        }
    }
    vigie.signal("KILL");
    let killed = Instant::now();
    drop(vigie);
    let safe = answered_at
        .iter()
        .filter(|t| killed.duration_since(**t) > Duration::from_secs(1))
        .count() as u64;
    assert!(safe > 0, "the load ran long enough to have settled events");

    let db = dir.path().join("audit.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    let mut store = SqliteStore::open(&db).unwrap();
    let stored = store.count().unwrap();
    assert!(
        stored >= safe && stored <= answered_at.len() as u64,
        "stored {stored}, answered {} of which {safe} more than 1 s before the kill",
        answered_at.len()
    );

    // vigie restarts on the same store and keeps appending.
    let vigie = Vigie::start(&config, &[upstream.addr], dir.path());
    udp(vigie.dns, &format!("after.{domain}"), RecordType::A);
    assert!(vigie.stop().success());
    assert_eq!(SqliteStore::open(&db).unwrap().count().unwrap(), stored + 1);
}

#[test]
fn purge_command_applies_retention() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    {
        let mut s = SqliteStore::open(&db).unwrap();
        let old = vigie::audit::AuditEvent {
            time: chrono::Utc::now() - chrono::Duration::days(120),
            service: "dns",
            client_ip: "10.0.0.1".parse().unwrap(),
            user: None,
            identity: "network",
            profile: "eleves".into(),
            target: "old.example.".into(),
            qtype: Some("A".into()),
            verdict: "block",
            category: Some("gambling".into()),
            rule: "r".into(),
            entry: None,
            via: None,
            latency_us: 1,
            proxy: None,
        };
        let mut recent = old.clone();
        recent.time = chrono::Utc::now();
        s.insert_batch(&[old, recent]).unwrap();
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigie"))
        .env(
            "VIGIE_LISTS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/blocklists"),
        )
        .args(["audit", "purge", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1 audit events older than 90 days deleted"
    );
    assert_eq!(SqliteStore::open(&db).unwrap().count().unwrap(), 1);
}

fn vigie_cli(args: &[&str], data_dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_vigie"))
        .env(
            "VIGIE_LISTS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/blocklists"),
        )
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}

#[test]
fn stats_and_accountable_export() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start("cloak.example");
    let config = write_config(dir.path(), "");
    let vigie = Vigie::start(&config, &[upstream.addr], dir.path());
    let domain = ut1_gambling_domain();
    for i in 0..5 {
        udp(vigie.dns, &format!("s{i}.{domain}"), RecordType::A);
    }
    let log = vigie.log.clone();
    let status = vigie.stop();
    assert!(
        status.success(),
        "{status:?}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let out = vigie_cli(&["audit", "stats"], dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("by category:\n         5  gambling"),
        "{text}"
    );

    // No justification: refused, nothing exported, nothing recorded.
    let out = vigie_cli(
        &[
            "audit",
            "export",
            "--by",
            "dir",
            "--justification",
            "curious",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a written justification"));
    assert!(out.stdout.is_empty());

    let why = "Enquête 2026-17 demandée par la direction";
    let out = vigie_cli(
        &[
            "audit",
            "export",
            "--by",
            "auditeur",
            "--justification",
            why,
            "--format",
            "csv",
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8_lossy(&out.stdout);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "id,time,service,client_ip,user,profile,target,host,verdict,category,rule,entry,reference"
        )
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 5, "{csv}");
    assert!(rows.iter().all(|r| r.contains(",block,gambling,")), "{csv}");
    let out = vigie_cli(
        &[
            "audit",
            "export",
            "--by",
            "auditeur",
            "--justification",
            why,
        ],
        dir.path(),
    );
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["category"], "gambling");

    // Both exports are on record, with who and why.
    let mut store = SqliteStore::open(&dir.path().join("audit.db")).unwrap();
    let log = store.history_accesses(10).unwrap();
    assert_eq!(log.len(), 2);
    assert!(
        log.iter()
            .all(|a| a.accessed_by == "auditeur" && a.subject == "*" && a.justification == why)
    );
}
