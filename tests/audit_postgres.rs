//! The PostgreSQL audit store against a real PostgreSQL server that this test starts
//! on loopback in a temporary directory (Debian's `postgresql`, installed by
//! `tests/run`), running the same conformance suite as the SQLite store.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vigie::audit::AuditEvent;
use vigie::audit::postgres::PgStore;
use vigie::audit::store::{Store, conformance};

struct Server {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Server {
    /// Stops the server (a fast shutdown: connections are cut, as in a restart by
    /// the operator or a crash of the host) and starts it again on the same port.
    fn restart(&mut self) {
        self.stop();
        self.child = spawn_postgres(self.dir.path(), self.port);
    }

    fn stop(&mut self) {
        let out = as_pg_user(&pg_bin("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pg_bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL server not installed (Debian package postgresql; tests/run installs it)",
        )
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("{name} not found under /usr/lib/postgresql/*/bin"))
}

/// Runs `cmd` as the `postgres` system user when we are root (PostgreSQL refuses
/// to run as root), as ourselves otherwise.
fn as_pg_user(program: &Path) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start() -> Server {
    start_with(|_| {})
}

/// Like [`start`], with `prepare(data_dir)` run between `initdb` and the start.
fn start_with(prepare: impl FnOnce(&Path)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let data = dir.path().join("data");
    let out = as_pg_user(&pg_bin("initdb"))
        .args([
            "-A",
            "trust",
            "-U",
            "vigie",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    prepare(&data);
    let port = free_port();
    let child = spawn_postgres(dir.path(), port);
    Server { child, dir, port }
}

fn spawn_postgres(dir: &Path, port: u16) -> Child {
    // TLS on when the test put a certificate in the data directory.
    let ssl = dir.join("data/server.crt").exists();
    as_pg_user(&pg_bin("postgres"))
        .arg("-D")
        .arg(dir.join("data"))
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            if ssl { "ssl=on" } else { "ssl=off" },
            "-k",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn url(server: &Server) -> String {
    format!(
        "host=127.0.0.1 port={} user=vigie dbname=postgres connect_timeout=2",
        server.port
    )
}

fn connect(server: &Server) -> PgStore {
    let url = url(server);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match PgStore::connect(&url, None) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("PostgreSQL did not come up: {e}"),
        }
    }
}

#[test]
fn postgres_store_conformance() {
    let server = start();
    let mut store = connect(&server);
    conformance::run(&mut store);
    // A second connection (another school's appliance) sees the same records.
    let mut other = connect(&server);
    assert_eq!(other.count().unwrap(), store.count().unwrap());
}

#[test]
fn unreachable_server_is_a_clear_error() {
    let port = free_port();
    let err = PgStore::connect(
        &format!("host=127.0.0.1 port={port} user=vigie password=hunter2 connect_timeout=2"),
        None,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.starts_with(&format!(
            "audit store host=127.0.0.1 port={port} user=vigie"
        )),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

fn event(target: &str) -> AuditEvent {
    AuditEvent {
        time: chrono::Utc::now(),
        service: "dns",
        client_ip: "10.0.0.1".parse().unwrap(),
        user: None,
        identity: "network",
        profile: "eleves".into(),
        target: target.to_string(),
        qtype: Some("A".into()),
        verdict: "block",
        category: Some("gambling".into()),
        rule: "eleves: block gambling".into(),
        entry: None,
        via: None,
        latency_us: 1,
        proxy: None,
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// After a server restart the same store writes again (it reconnects by itself,
/// with a backoff while the server is down): no restart of vigie needed.
#[test]
fn the_store_reconnects_after_a_server_restart() {
    let mut server = start();
    let mut store = connect(&server);
    store.insert_batch(&[event("before.example")]).unwrap();
    server.restart();
    wait_until("a write after the restart", || {
        store.insert_batch(&[event("after.example")]).is_ok()
    });
    assert_eq!(store.count().unwrap(), 2);
    // Reads reconnect too (the web app's store).
    let mut reader = connect(&server);
    server.restart();
    wait_until("a read after the restart", || reader.count().is_ok());
}

/// The writer keeps the events recorded while PostgreSQL is down and writes them
/// once it is back: none lost, none counted as an error.
#[test]
fn the_writer_keeps_events_while_the_server_restarts() {
    let mut server = start();
    drop(connect(&server)); // up, schema in place
    let rt = tokio::runtime::Runtime::new().unwrap();
    let settings = vigie::config::AuditSettings {
        store: vigie::config::AuditStoreKind::Postgres,
        postgres_url: Some(url(&server)),
        postgres_ca_file: None,
        retention_days: 90,
        pseudonymize: false,
        jsonl: false,
    };
    let (sink, mut writer) = rt.block_on(vigie::audit::open(None)).unwrap();
    vigie::audit::attach_store(&mut writer, &settings, None).unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = rt.spawn(writer.run(cancel.clone()));
    let mut reader = connect(&server);
    for i in 0..10 {
        sink.record(event(&format!("up{i}.example")));
    }
    wait_until("the first events", || reader.count().ok() == Some(10));

    server.stop();
    for i in 0..10 {
        sink.record(event(&format!("down{i}.example")));
    }
    // Long enough for the writer to fail at least once.
    std::thread::sleep(Duration::from_secs(1));
    server.child = spawn_postgres(server.dir.path(), server.port);
    wait_until("the events recorded while the server was down", || {
        reader.count().ok() == Some(20)
    });
    cancel.cancel();
    rt.block_on(task).unwrap();
    assert_eq!(reader.count().unwrap(), 20);
}

/// `sslmode=require`: the connection is TLS (the server says so for its own
/// session), and the server's certificate is checked — against the board's CA
/// given as `postgres_ca_file`; without it the same server is refused.
#[test]
fn the_store_speaks_tls_when_asked_and_checks_the_certificate() {
    let issuer = common::board_ca();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca_dir.path().join("board-ca.pem");
    std::fs::write(&ca_file, issuer.pem()).unwrap();

    let server = start_with(|data| {
        std::fs::write(data.join("server.crt"), cert.pem()).unwrap();
        let key_file = data.join("server.key");
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        // The server reads its key as the data directory's owner.
        let owner = Command::new("stat")
            .args(["-c", "%U"])
            .arg(data)
            .output()
            .unwrap();
        let owner = String::from_utf8_lossy(&owner.stdout).trim().to_string();
        for f in ["server.crt", "server.key"] {
            let _ = Command::new("chown").arg(&owner).arg(data.join(f)).status();
        }
    });
    let url = format!("{} sslmode=require", url(&server));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut store = loop {
        match PgStore::connect(&url, Some(&ca_file)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("no TLS connection to PostgreSQL: {e}"),
        }
    };
    assert!(
        store.session_uses_tls().unwrap(),
        "the session is not encrypted"
    );
    store.insert_batch(&[event("tls.example")]).unwrap();
    assert_eq!(store.count().unwrap(), 1);

    // The same server without the board's CA: refused, and the message says why.
    let err = PgStore::connect(&url, None).err().unwrap().to_string();
    assert!(
        err.to_ascii_lowercase().contains("certificate"),
        "expected a certificate error: {err}"
    );
}
