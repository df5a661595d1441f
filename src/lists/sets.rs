//! Updated list sets on disk: `<data_dir>/lists/`, filled by `vigie lists update`
//! and read by every configuration load.
//!
//! ```text
//! <data_dir>/lists/
//!   current -> sets/20260817T031500Z     the set in force (a relative symlink)
//!   sets/20260816T031500Z/               the previous one, kept for a rollback
//!   sets/20260817T031500Z/
//!     update.json                        where each file came from (URL, ETag, sha256)
//!     ut1/gambling/domains …             same relative paths as the configuration's
//!   .lock                                one update at a time
//! ```
//!
//! A set is written once, under a `.incomplete` marker, verified, and only then
//! named by `current`, whose replacement is one `rename(2)` of a symlink: a reader
//! sees the old set or the new one, never a mix, and a crash mid-update leaves the
//! old set in force. Sets are never modified afterwards, so an unchanged file is
//! shared between sets by a hard link, and a snapshot built from a set can re-read
//! its files (explain traces) for as long as the set is kept.
//!
//! This module owns the layout and the atomic steps only; what goes into a set, and
//! whether it is good enough, is `crate::update`'s business.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

/// The link naming the set in force.
const CURRENT: &str = "current";
/// Directory holding the sets.
const SETS: &str = "sets";
/// Marker of a set still being written or verified (removed on completion).
const INCOMPLETE: &str = ".incomplete";
/// Each set's record of where its files came from.
pub const MANIFEST: &str = "update.json";

/// What one set holds: when it was made and, per URL, what was fetched.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// When the set was made (RFC 3339, UTC).
    pub created: String,
    pub sources: Vec<ManifestSource>,
}

/// One downloaded URL of a set.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ManifestSource {
    pub url: String,
    /// Paths (relative to the set) filled from this URL: `ut1` for the tarball,
    /// `p2p/trackers.txt` for a single list.
    pub paths: Vec<String>,
    /// Validators for the next conditional GET.
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub last_modified: Option<String>,
    /// SHA-256 (hex) of the body as downloaded.
    pub sha256: String,
    pub bytes: u64,
    /// When this content was downloaded (a `304 Not Modified` keeps the date).
    pub fetched: String,
}

impl Manifest {
    pub fn source(&self, url: &str) -> Option<&ManifestSource> {
        self.sources.iter().find(|s| s.url == url)
    }

    /// The creation time, if it parses.
    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.created)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// Reads a set's manifest; `None` when absent or unreadable (a set without one is
/// still usable, it just cannot be fetched conditionally).
pub fn read_manifest(set: &Path) -> Option<Manifest> {
    let text = std::fs::read(set.join(MANIFEST)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Writes a set's manifest (the set is not in force yet, so no rename dance).
pub fn write_manifest(set: &Path, m: &Manifest) -> io::Result<()> {
    let text = serde_json::to_vec_pretty(m).map_err(io::Error::other)?;
    write_synced(&set.join(MANIFEST), &text)
}

/// Writes `data` to `path` and flushes it to disk: a set put in force must survive
/// a power cut.
pub fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// `<data_dir>/lists`.
#[derive(Clone, Debug)]
pub struct ListsDir {
    root: PathBuf,
}

impl ListsDir {
    pub fn new(data_dir: &Path) -> ListsDir {
        ListsDir {
            root: data_dir.join("lists"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The link `current`, as a path (whether or not it exists).
    pub fn current_link(&self) -> PathBuf {
        self.root.join(CURRENT)
    }

    /// The set in force, as a canonical directory path (so a snapshot keeps naming
    /// its own set after `current` moves on). `None`: no update ever succeeded, or
    /// the link is dangling.
    pub fn current(&self) -> Option<PathBuf> {
        let dir = std::fs::canonicalize(self.current_link()).ok()?;
        (dir.is_dir() && !dir.join(INCOMPLETE).exists()).then_some(dir)
    }

    /// Complete sets, oldest first (their names are UTC timestamps).
    pub fn sets(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = match std::fs::read_dir(self.root.join(SETS)) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir() && !p.join(INCOMPLETE).exists())
                .filter_map(|p| std::fs::canonicalize(p).ok())
                .collect(),
            Err(_) => Vec::new(),
        };
        out.sort();
        out
    }

    /// The newest complete set older than the one in force (what a rollback goes
    /// back to); `None` when there is none.
    pub fn previous(&self) -> Option<PathBuf> {
        let current = self.current()?;
        self.sets().into_iter().rev().find(|s| *s < current)
    }

    /// Takes the update lock; `Ok(None)` when another update holds it. The lock
    /// goes with the returned file.
    pub fn lock(&self) -> io::Result<Option<File>> {
        std::fs::create_dir_all(&self.root)?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(".lock"))?;
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Creates an empty set for `now`, marked incomplete. Call with the lock held.
    pub fn create_set(&self, now: DateTime<Utc>) -> io::Result<PathBuf> {
        let sets = self.root.join(SETS);
        std::fs::create_dir_all(&sets)?;
        let base = now.format("%Y%m%dT%H%M%SZ").to_string();
        for n in 0..1000 {
            let name = if n == 0 {
                base.clone()
            } else {
                format!("{base}-{n:03}")
            };
            let dir = sets.join(name);
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    File::create(dir.join(INCOMPLETE))?;
                    return std::fs::canonicalize(dir);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!(
            "{}: cannot name a new list set",
            sets.display()
        )))
    }

    /// Marks a set complete (verified): it may now be put in force.
    pub fn complete(&self, set: &Path) -> io::Result<()> {
        std::fs::remove_file(set.join(INCOMPLETE))?;
        sync_dir(set)
    }

    /// Puts `set` in force (or, with `None`, goes back to the shipped lists), in
    /// one atomic rename of the `current` link.
    pub fn switch_to(&self, set: Option<&Path>) -> io::Result<()> {
        let link = self.current_link();
        match set {
            None => match std::fs::remove_file(&link) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            },
            Some(set) => {
                let name = set
                    .file_name()
                    .ok_or_else(|| io::Error::other("a list set has no name"))?;
                // Relative, so the data directory can be moved or mounted elsewhere.
                let target = Path::new(SETS).join(name);
                let tmp = self
                    .root
                    .join(format!(".{CURRENT}.tmp-{}", std::process::id()));
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(&target, &tmp)?;
                if let Err(e) = std::fs::rename(&tmp, &link) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            }
        }
        sync_dir(&self.root)
    }

    /// Removes the sets beyond `keep` (the one in force and `protect` always stay,
    /// then the newest others), and anything left incomplete by an interrupted
    /// update. Call with the lock held. Returns what was removed.
    pub fn prune(&self, keep: usize, protect: &[&Path]) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        let sets_dir = self.root.join(SETS);
        if let Ok(rd) = std::fs::read_dir(&sets_dir) {
            for e in rd.filter_map(Result::ok) {
                let p = e.path();
                if p.join(INCOMPLETE).exists() && std::fs::remove_dir_all(&p).is_ok() {
                    removed.push(p);
                }
            }
        }
        let current = self.current();
        let mut kept: Vec<PathBuf> = current.iter().cloned().collect();
        for p in protect {
            if let Ok(p) = std::fs::canonicalize(p)
                && !kept.contains(&p)
            {
                kept.push(p);
            }
        }
        for set in self.sets().into_iter().rev() {
            if kept.contains(&set) {
                continue;
            }
            if kept.len() < keep {
                kept.push(set);
            } else if std::fs::remove_dir_all(&set).is_ok() {
                removed.push(set);
            }
        }
        removed
    }

    /// Removes a set that will not be put in force.
    pub fn discard(&self, set: &Path) {
        if let Err(e) = std::fs::remove_dir_all(set)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", set.display());
        }
    }
}

/// Flushes a directory's entries (a rename or a new file in it) to disk.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_set_is_in_force_only_once_complete_and_switched_to() {
        let tmp = tempfile::tempdir().unwrap();
        let d = ListsDir::new(tmp.path());
        assert_eq!(d.current(), None);
        let _lock = d.lock().unwrap().expect("lock");
        let a = d.create_set(at("2026-08-17T03:15:00Z")).unwrap();
        assert!(a.ends_with("sets/20260817T031500Z"));
        assert!(d.sets().is_empty(), "incomplete sets are not listed");
        d.complete(&a).unwrap();
        assert_eq!(d.current(), None, "not in force before the switch");
        d.switch_to(Some(&a)).unwrap();
        assert_eq!(d.current(), Some(a.clone()));
        assert_eq!(
            std::fs::read_link(d.current_link()).unwrap(),
            Path::new("sets/20260817T031500Z"),
            "relative link"
        );
        // Same second: a distinct name.
        let b = d.create_set(at("2026-08-17T03:15:00Z")).unwrap();
        assert!(b.ends_with("sets/20260817T031500Z-001"));
        d.complete(&b).unwrap();
        d.switch_to(Some(&b)).unwrap();
        assert_eq!(d.current(), Some(b.clone()));
        assert_eq!(d.previous(), Some(a.clone()));
        d.switch_to(None).unwrap();
        assert_eq!(d.current(), None);
        assert_eq!(d.previous(), None);
    }

    #[test]
    fn one_update_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let d = ListsDir::new(tmp.path());
        let held = d.lock().unwrap();
        assert!(held.is_some());
        assert!(d.lock().unwrap().is_none(), "second lock refused");
        drop(held);
        assert!(d.lock().unwrap().is_some(), "free again");
    }

    #[test]
    fn prune_keeps_current_protected_and_newest_and_drops_incomplete() {
        let tmp = tempfile::tempdir().unwrap();
        let d = ListsDir::new(tmp.path());
        let mut sets = Vec::new();
        for h in 1..=4 {
            let s = d
                .create_set(at(&format!("2026-08-1{h}T00:00:00Z")))
                .unwrap();
            d.complete(&s).unwrap();
            sets.push(s);
        }
        let broken = d.create_set(at("2026-08-19T00:00:00Z")).unwrap();
        d.switch_to(Some(&sets[3])).unwrap();
        // Keep 2: current (4) and the protected previous (1), not the newer 3.
        let removed = d.prune(2, &[&sets[0]]);
        assert!(removed.contains(&broken));
        assert!(removed.contains(&sets[1]) && removed.contains(&sets[2]));
        assert_eq!(d.sets(), vec![sets[0].clone(), sets[3].clone()]);
        assert_eq!(d.previous(), Some(sets[0].clone()));
        // Keep 1: only the one in force.
        d.prune(1, &[]);
        assert_eq!(d.sets(), vec![sets[3].clone()]);
    }

    #[test]
    fn manifest_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let m = Manifest {
            created: "2026-08-17T03:15:00+00:00".into(),
            sources: vec![ManifestSource {
                url: "https://example.org/l.txt".into(),
                paths: vec!["p2p/l.txt".into()],
                etag: Some("\"abc\"".into()),
                last_modified: None,
                sha256: "00".into(),
                bytes: 3,
                fetched: "2026-08-17T03:15:00+00:00".into(),
            }],
        };
        write_manifest(tmp.path(), &m).unwrap();
        let back = read_manifest(tmp.path()).unwrap();
        assert_eq!(back, m);
        assert_eq!(
            back.created_at(),
            Some(at("2026-08-17T03:15:00Z")),
            "created parses"
        );
        assert!(back.source("https://example.org/l.txt").is_some());
        assert!(read_manifest(&tmp.path().join("nope")).is_none());
    }
}
