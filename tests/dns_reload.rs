//! Reload without dropping a query: a bounded query load runs against the real
//! binary while the config changes on disk (accepted), breaks (rejected: the old
//! snapshot keeps serving) and is restored with SIGHUP. Every query must be answered,
//! correctly and in time.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

/// An answer slower than this counts as late.
const LATE: Duration = Duration::from_millis(500);
/// Upper bound on the load, whatever happens.
const MAX_LOAD: Duration = Duration::from_secs(60);

struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

/// Two client threads, each a closed loop of queries (one in flight): cached allowed
/// names and blocked names alternately, every answer checked.
fn start_load(dns: std::net::SocketAddr, gambling: String) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for t in 0..2 {
        let (stop, sent, failed, gambling) =
            (stop.clone(), sent.clone(), failed.clone(), gambling.clone());
        threads.push(std::thread::spawn(move || {
            let started = Instant::now();
            let mut problems = Vec::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_LOAD {
                i += 1;
                let blocked = i.is_multiple_of(2);
                let name = if blocked {
                    format!("x{}.{gambling}", i % 50)
                } else {
                    format!("load{}-{t}.example.org", i % 50)
                };
                let q = query_message(&name, RecordType::A, true);
                let t0 = Instant::now();
                let reply = exchange_udp(dns, &q, Duration::from_secs(2));
                let took = t0.elapsed();
                sent.fetch_add(1, Ordering::Relaxed);
                let ok = match &reply {
                    Some(m) if blocked => {
                        m.metadata.response_code == ResponseCode::NoError
                            && a_records(m)
                                == vec!["198.51.100.7".parse::<std::net::Ipv4Addr>().unwrap()]
                    }
                    Some(m) => a_records(m) == vec![UPSTREAM_V4],
                    None => false,
                };
                if !ok || took > LATE {
                    failed.fetch_add(1, Ordering::Relaxed);
                    if problems.len() < 10 {
                        problems.push(format!(
                            "{name}: {took:?} {:?}",
                            reply.map(|m| (m.metadata.response_code, m.answers))
                        ));
                    }
                }
            }
            problems
        }));
    }
    Load {
        stop,
        sent,
        failed,
        threads,
    }
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn dns_reload_under_load_accepts_rejects_and_never_drops_a_query() {
    let dir = tempfile::tempdir().unwrap();
    let gambling = ut1_gambling_domain();
    let up = Upstream::start(&gambling);
    let cfg = write_config(dir.path(), "");
    let good = std::fs::read_to_string(&cfg).unwrap();
    let v = Vigie::start(&cfg, &[up.addr], dir.path());
    assert_eq!(
        a_records(&udp(v.dns, "newly-denied.example.org", RecordType::A)),
        vec![UPSTREAM_V4]
    );

    let load = start_load(v.dns, gambling.clone());
    std::thread::sleep(Duration::from_millis(300));

    // 1. A valid change on disk: picked up by the watcher, swapped in.
    let accepted = v.metric("vigie_reload_total{result=\"accepted\"}");
    let with_deny = good.replace(
        "[profiles.page]\n",
        "[profiles.page]\ndeny = [\"newly-denied.example.org\"]\n",
    );
    assert_ne!(with_deny, good);
    std::fs::write(&cfg, &with_deny).unwrap();
    wait_for("accepted reload", Duration::from_secs(20), || {
        v.metric("vigie_reload_total{result=\"accepted\"}") > accepted
    });
    let m = udp(v.dns, "newly-denied.example.org", RecordType::A);
    assert_eq!(
        a_records(&m),
        vec!["198.51.100.7".parse::<std::net::Ipv4Addr>().unwrap()],
        "deny override applied"
    );
    std::thread::sleep(Duration::from_millis(300));

    // 2. A broken change: rejected, counted, the previous snapshot keeps serving.
    let rejected = v.metric("vigie_reload_total{result=\"rejected\"}");
    std::fs::write(
        &cfg,
        with_deny.replace(
            "block = [\"gambling\", \"doh\"]\nblock_mode = \"page\"",
            "block = [\"gamblin\", \"doh\"]\nblock_mode = \"page\"",
        ),
    )
    .unwrap();
    wait_for("rejected reload", Duration::from_secs(20), || {
        v.metric("vigie_reload_total{result=\"rejected\"}") > rejected
    });
    let m = udp(v.dns, "newly-denied.example.org", RecordType::A);
    assert_eq!(
        a_records(&m),
        vec!["198.51.100.7".parse::<std::net::Ipv4Addr>().unwrap()],
        "old snapshot still serving"
    );
    assert!(
        v.log_text().contains("gamblin"),
        "the rejection names the problem"
    );
    std::thread::sleep(Duration::from_millis(300));

    // 3. SIGHUP after restoring the original: accepted, the deny override is gone.
    let accepted = v.metric("vigie_reload_total{result=\"accepted\"}");
    std::fs::write(&cfg, &good).unwrap();
    v.signal("HUP");
    wait_for("SIGHUP reload", Duration::from_secs(20), || {
        v.metric("vigie_reload_total{result=\"accepted\"}") > accepted
    });
    wait_for("deny override removed", Duration::from_secs(5), || {
        a_records(&udp(v.dns, "newly-denied.example.org", RecordType::A)) == vec![UPSTREAM_V4]
    });
    std::thread::sleep(Duration::from_millis(300));

    load.stop.store(true, Ordering::Relaxed);
    let problems: Vec<String> = load
        .threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let sent = load.sent.load(Ordering::Relaxed);
    let failed = load.failed.load(Ordering::Relaxed);
    eprintln!("load: {sent} queries, {failed} failed or late");
    assert!(sent > 200, "the load ran ({sent} queries)");
    assert_eq!(
        failed, 0,
        "failed or late queries during reloads: {problems:#?}"
    );
    assert!(v.stop().success());
}

/// A reload asked for while vigie is still loading its lists (a `systemctl reload`
/// or a `vigie lists update` right after a restart) must not kill it: SIGHUP's
/// default action would.
#[test]
fn sighup_during_the_start_is_not_fatal() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    // The embedded default config: every shipped list (~0.1 s to load).
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigie"))
        .args(["run", "--user", "root", "--dns-listen", "127.0.0.1:0"])
        .args([
            "--admin-listen",
            "127.0.0.1:0",
            "--proxy-listen",
            "127.0.0.1:0",
        ])
        .args(["--upstream", "127.0.0.1:9"])
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // As soon as the process shows a SIGHUP handler (SigCgt in /proc, bit 0), and
    // while it is still loading its lists, a SIGHUP every 5 ms until the ready line.
    let handles_hup = || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("SigCgt:"))?.to_string();
                u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
            })
            .is_some_and(|mask| mask & 1 != 0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !handles_hup() {
        assert!(
            rx.try_recv().is_err(),
            "vigie was ready (or gone) before it handled SIGHUP"
        );
        assert!(Instant::now() < deadline, "no SIGHUP handler in 60 s");
        std::thread::sleep(Duration::from_micros(500));
    }
    let mut sent = 0;
    let ready = loop {
        let _ = Command::new("kill").args(["-HUP", &pid]).status();
        sent += 1;
        match rx.recv_timeout(Duration::from_millis(5)) {
            Ok(line) if line.starts_with("vigie ready:") => break true,
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break false,
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ready && alive,
        "vigie died after {sent} SIGHUPs during its start"
    );
}

/// A reload accepts settings the running filter only reads at start (its cache,
/// rate limiter, upstream pool), and says so rather than ignoring them silently.
#[test]
fn a_reload_names_the_settings_that_wait_for_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start(&ut1_gambling_domain());
    let cfg = write_config(dir.path(), "");
    let v = Vigie::start(&cfg, &[up.addr], dir.path());
    let accepted = v.metric("vigie_reload_total{result=\"accepted\"}");
    write_config(dir.path(), "cache_size = 5000\nblocked_ttl = 30");
    v.signal("HUP");
    wait_for("the reload", Duration::from_secs(20), || {
        v.metric("vigie_reload_total{result=\"accepted\"}") > accepted
    });
    wait_for("the warning", Duration::from_secs(5), || {
        v.log_text()
            .contains("changed dns.cache_size: takes effect after a restart")
    });
    let log = v.log_text();
    assert!(
        !log.contains("changed dns.blocked_ttl"),
        "blocked_ttl applies at once:\n{log}"
    );
}
