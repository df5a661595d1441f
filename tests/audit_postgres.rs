//! The PostgreSQL audit store against a real PostgreSQL server that this test starts
//! on loopback in a temporary directory (Debian's `postgresql`, installed by
//! `tests/run`), running the same conformance suite as the SQLite store.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vigie::audit::postgres::PgStore;
use vigie::audit::store::{Store, conformance};

struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
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
    let port = free_port();
    let child = as_pg_user(&pg_bin("postgres"))
        .arg("-D")
        .arg(&data)
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-k",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Server {
        child,
        _dir: dir,
        port,
    }
}

fn connect(server: &Server) -> PgStore {
    let url = format!(
        "host=127.0.0.1 port={} user=vigie dbname=postgres",
        server.port
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match PgStore::connect(&url) {
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
    let err = PgStore::connect(&format!(
        "host=127.0.0.1 port={port} user=vigie password=hunter2 connect_timeout=2"
    ))
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
