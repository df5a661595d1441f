//! How `vigie lists update` reaches the running filter: `vigie run` writes its pid
//! to `<data_dir>/vigie.pid`, and the updater sends that process SIGHUP — the same
//! reload `systemctl reload vigie` asks for, so a reload has one path whoever asks.
//!
//! A pid file can outlive its process (a `kill -9`, a power cut) and the number can
//! be reused by anything, to which SIGHUP usually means "terminate". So before
//! signalling, the process is checked to be a `vigie … run` through
//! `/proc/<pid>/cmdline`; a stale file is reported, never trusted.

use std::io;
use std::path::{Path, PathBuf};

const FILE_NAME: &str = "vigie.pid";

/// The pid file of this process, removed when dropped (if it is still ours).
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes this process's pid to `<data_dir>/vigie.pid` (temporary file + rename,
    /// so a reader never sees half a number).
    pub fn create(data_dir: &Path) -> io::Result<PidFile> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(FILE_NAME);
        let tmp = data_dir.join(format!(".{FILE_NAME}.tmp-{}", std::process::id()));
        std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
        std::fs::rename(&tmp, &path)?;
        Ok(PidFile { path })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if read_pid(&self.path) == Some(std::process::id()) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// What became of a reload request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reload {
    /// SIGHUP sent to this pid.
    Signalled(u32),
    /// No running vigie uses this data directory (why): the lists apply at its
    /// next start.
    NotRunning(String),
    /// A vigie runs but could not be signalled.
    Failed(String),
}

/// Asks the `vigie run` of `data_dir` to reload.
pub fn request_reload(data_dir: &Path) -> Reload {
    let path = data_dir.join(FILE_NAME);
    let Some(pid) = read_pid(&path) else {
        return Reload::NotRunning(format!("no pid in {}", path.display()));
    };
    if !is_vigie_run(pid) {
        return Reload::NotRunning(format!(
            "{} names pid {pid}, which is not a running `vigie run` (stale file)",
            path.display()
        ));
    }
    let Ok(raw) = i32::try_from(pid) else {
        return Reload::NotRunning(format!("{}: invalid pid {pid}", path.display()));
    };
    match nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(raw),
        nix::sys::signal::Signal::SIGHUP,
    ) {
        Ok(()) => Reload::Signalled(pid),
        Err(nix::errno::Errno::ESRCH) => {
            Reload::NotRunning(format!("pid {pid} of {} has exited", path.display()))
        }
        Err(e) => Reload::Failed(format!("cannot signal vigie (pid {pid}): {e}")),
    }
}

/// Whether `pid` runs `vigie … run`.
fn is_vigie_run(pid: u32) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(raw) => is_vigie_run_cmdline(&raw),
        Err(_) => false,
    }
}

/// `argv[0]` named vigie (any directory) and a `run` argument.
fn is_vigie_run_cmdline(raw: &[u8]) -> bool {
    let mut args = raw.split(|&b| b == 0).filter(|a| !a.is_empty());
    let Some(argv0) = args.next() else {
        return false;
    };
    let name = argv0.rsplit(|&b| b == b'/').next().unwrap_or(argv0);
    name.starts_with(b"vigie") && args.any(|a| a == b"run")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_vigie_run_is_signalled() {
        assert!(is_vigie_run_cmdline(
            b"/usr/bin/vigie\0--config\0/etc/vigie/vigie.toml\0run\0--data-dir\0/var/lib/vigie\0"
        ));
        assert!(!is_vigie_run_cmdline(b"/usr/bin/vigie\0lists\0update\0"));
        assert!(!is_vigie_run_cmdline(b"/usr/sbin/sshd\0run\0"));
        assert!(!is_vigie_run_cmdline(b""));
        // This test process is not `vigie run`.
        assert!(!is_vigie_run(std::process::id()));
    }

    #[test]
    fn pid_file_is_written_and_removed_and_a_stale_one_is_not_trusted() {
        let tmp = tempfile::tempdir().unwrap();
        let f = PidFile::create(tmp.path()).unwrap();
        assert_eq!(
            read_pid(&tmp.path().join(FILE_NAME)),
            Some(std::process::id())
        );
        // Our own pid is not a `vigie run`: reported, not signalled.
        assert!(matches!(request_reload(tmp.path()), Reload::NotRunning(m) if m.contains("stale")));
        drop(f);
        assert!(!tmp.path().join(FILE_NAME).exists());
        assert!(matches!(request_reload(tmp.path()), Reload::NotRunning(_)));
    }
}
