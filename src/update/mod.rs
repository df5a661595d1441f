//! `vigie lists update`: downloads the configured list sources over HTTPS, checks
//! them, and puts them in force all at once — or changes nothing.
//!
//! One update, start to finish, under `<data_dir>/lists/.lock`:
//! 1. plan: UT1's tarball if the configuration reads UT1 categories under
//!    `[lists_update] ut1_path`, and every `[[lists]]` entry with a `url`;
//! 2. fetch each URL into a new, incomplete set (`lists::sets`), conditionally:
//!    a `304 Not Modified` (or a body whose SHA-256 is the one we hold) reuses the
//!    files of the set in force through hard links;
//! 3. verify: size limits while downloading, gzip/tar integrity and no path
//!    traversal while unpacking, then a full snapshot built from the new set with
//!    the same code `vigie config validate` and every reload use, and per list a
//!    ceiling on the share of bad lines, a floor on entries and a floor on the
//!    share of the list in force it keeps (a list collapsed at its source);
//! 4. install: mark the set complete, swap `current` to it (one rename), hand the
//!    domain cache the verification built to the running process, prune old sets,
//!    and ask the running `vigie run` to reload (`pidfile`).
//!
//! Any failure before step 4 removes the new set: the lists in force, the cache and
//! the running filter are exactly as they were. This module decides nothing about
//! requests; it only produces files that a later snapshot reads.

pub mod archive;
pub mod fetch;
pub mod pidfile;

use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::config::{self, Config, ConfigErrors, UpdateOrigin};
use crate::lists::sets::{self, ListsDir, Manifest, ManifestSource};
use crate::lists::{Lists, SourceReport};
use crate::snapshot::Snapshot;

pub use pidfile::{PidFile, Reload};

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error(
        "no data directory: set data_dir in the configuration or give --data-dir (updated lists are kept in <data_dir>/lists)"
    )]
    NoDataDir,
    #[error("another `vigie lists update` is running (it holds {0})")]
    Busy(PathBuf),
    #[error("{0}")]
    Setup(String),
    /// A server could not be reached or did not give the list.
    #[error("{url}: {reason}")]
    Download { url: String, reason: String },
    /// What was downloaded is not good enough to put in force.
    #[error("{0}")]
    Refused(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl UpdateError {
    /// Exit status of `vigie lists update`: 1 when the downloaded lists were
    /// refused, 2 when the update could not be made at all.
    pub fn exit_code(&self) -> u8 {
        match self {
            UpdateError::Refused(_) => 1,
            _ => 2,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UpdateError + '_ {
    move |source| UpdateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Ask the running `vigie run` to reload once the new set is in force.
    pub reload: bool,
    /// Names the new set and dates the manifest.
    pub now: DateTime<Utc>,
}

/// What one URL gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Download {
    /// New content, this many bytes.
    Downloaded(u64),
    /// `304 Not Modified`: the held copy is reused.
    NotModified,
    /// A full body identical to the held copy (the server has no validators).
    SameContent(u64),
}

#[derive(Clone, Debug)]
pub struct DownloadReport {
    pub url: String,
    /// `UT1 tarball` or the list's path.
    pub what: String,
    pub result: Download,
}

/// How a list compares with the one in force before the update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Was read from its configured (shipped) file until now.
    New,
    Updated,
    Unchanged,
}

#[derive(Clone, Debug)]
pub struct ListReport {
    /// Path relative to the list base (`ut1/gambling`).
    pub rel: PathBuf,
    pub category: String,
    pub change: Change,
    pub entries: usize,
    pub bad_lines: usize,
}

#[derive(Clone, Debug)]
pub enum Outcome {
    /// No list of the configuration is updatable (no `url`, no UT1 under `ut1_path`).
    NothingToUpdate,
    /// Every source answered with what the set in force holds: nothing changed.
    Unchanged { set: Option<PathBuf> },
    /// A new set is in force.
    Installed {
        set: PathBuf,
        previous: Option<PathBuf>,
        removed: Vec<PathBuf>,
        /// `None`: not asked (`--no-reload`).
        reload: Option<Reload>,
    },
}

#[derive(Clone, Debug)]
pub struct Report {
    pub downloads: Vec<DownloadReport>,
    pub lists: Vec<ListReport>,
    /// Things the operator should know that did not stop the update.
    pub notes: Vec<String>,
    pub outcome: Outcome,
}

/// One URL to fetch and where its content goes in a set.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Planned {
    url: String,
    /// The set-relative path it fills (the UT1 directory, or the list's file).
    rel: PathBuf,
    tarball: bool,
}

/// The URLs an update fetches for `cfg`, UT1's tarball first.
fn plan(cfg: &Config) -> Vec<Planned> {
    let up = &cfg.lists_update;
    let mut out = Vec::new();
    if let Some(url) = &up.ut1_url
        && up
            .targets
            .iter()
            .any(|t| matches!(t.origin, UpdateOrigin::Ut1 { .. }))
    {
        out.push(Planned {
            url: url.clone(),
            rel: up.ut1_path.clone(),
            tarball: true,
        });
    }
    for t in &up.targets {
        if let UpdateOrigin::Url(url) = &t.origin {
            let p = Planned {
                url: url.clone(),
                rel: t.rel.clone(),
                tarball: false,
            };
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Runs one update for the configuration at `config` (or the embedded default).
pub fn update(config: Option<&Path>, opts: &Options) -> Result<Report, UpdateError> {
    let cfg = config::load(config)?;
    let data_dir = cfg.data_dir.clone().ok_or(UpdateError::NoDataDir)?;
    let planned = plan(&cfg);
    if planned.is_empty() {
        return Ok(Report {
            downloads: Vec::new(),
            lists: Vec::new(),
            notes: Vec::new(),
            outcome: Outcome::NothingToUpdate,
        });
    }
    let dir = ListsDir::new(&data_dir);
    let _lock = dir
        .lock()
        .map_err(io_err(dir.root()))?
        .ok_or_else(|| UpdateError::Busy(dir.root().join(".lock")))?;
    // Leftovers of an update that was interrupted (power cut, kill -9).
    dir.prune(usize::MAX, &[]);
    let set = dir.create_set(opts.now).map_err(io_err(dir.root()))?;
    let mut u = Updater {
        cfg: &cfg,
        dir: &dir,
        data_dir: &data_dir,
        current: dir.current(),
        set: &set,
        opts,
    };
    let result = u.run(&planned);
    if !matches!(
        result,
        Ok(Report {
            outcome: Outcome::Installed { .. },
            ..
        })
    ) {
        dir.discard(&set);
    }
    result
}

/// Switches back to the set before the one in force (or to the shipped lists when
/// there is none) and asks the running vigie to reload. Returns the set now in
/// force and the reload's fate.
pub fn rollback(
    config: Option<&Path>,
    reload: bool,
) -> Result<(Option<PathBuf>, Option<Reload>), UpdateError> {
    let cfg = config::load(config)?;
    let data_dir = cfg.data_dir.clone().ok_or(UpdateError::NoDataDir)?;
    let dir = ListsDir::new(&data_dir);
    let _lock = dir
        .lock()
        .map_err(io_err(dir.root()))?
        .ok_or_else(|| UpdateError::Busy(dir.root().join(".lock")))?;
    if dir.current().is_none() {
        return Err(UpdateError::Setup(format!(
            "no updated lists are in force in {}: the configured lists are already used",
            dir.root().display()
        )));
    }
    let previous = dir.previous();
    dir.switch_to(previous.as_deref())
        .map_err(io_err(dir.root()))?;
    let reload = reload.then(|| pidfile::request_reload(&data_dir));
    Ok((previous, reload))
}

struct Updater<'a> {
    cfg: &'a Config,
    dir: &'a ListsDir,
    data_dir: &'a Path,
    /// The set in force before this update.
    current: Option<PathBuf>,
    /// The set being made.
    set: &'a Path,
    opts: &'a Options,
}

impl Updater<'_> {
    fn run(&mut self, planned: &[Planned]) -> Result<Report, UpdateError> {
        let old = self
            .current
            .as_deref()
            .and_then(sets::read_manifest)
            .unwrap_or_default();
        let (downloads, manifest, reused) = self.fetch_all(planned, &old)?;
        let mut notes = Vec::new();
        if let Some(current) = &self.current
            && downloads
                .iter()
                .all(|d| !matches!(d.result, Download::Downloaded(_)))
            && same_sources(&old, &manifest)
        {
            self.check_ut1_categories(current, &mut notes)?;
            return Ok(Report {
                downloads,
                lists: Vec::new(),
                notes,
                outcome: Outcome::Unchanged {
                    set: self.current.clone(),
                },
            });
        }
        // Only now, when a new set will be made, are unchanged files linked into
        // it: a daily "nothing new" touches nothing on disk.
        for rel in &reused {
            self.reuse(rel)?;
        }
        self.check_ut1_categories(self.set, &mut notes)?;
        sets::write_manifest(self.set, &manifest).map_err(io_err(self.set))?;
        let lists = self.verify(&mut notes)?;
        self.install(downloads, lists, notes)
    }

    /// Fetches every planned URL into the new set; the manifest says what it holds,
    /// and the paths returned are to be reused from the set in force.
    fn fetch_all(
        &self,
        planned: &[Planned],
        old: &Manifest,
    ) -> Result<(Vec<DownloadReport>, Manifest, Vec<PathBuf>), UpdateError> {
        let up = &self.cfg.lists_update;
        let client = fetch::Client::new(up).map_err(|e| UpdateError::Setup(e.to_string()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| UpdateError::Setup(format!("cannot start the async runtime: {e}")))?;
        let now = self
            .opts
            .now
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut manifest = Manifest {
            created: now.clone(),
            sources: Vec::new(),
        };
        let mut reports = Vec::new();
        let mut reused = Vec::new();
        for (i, p) in planned.iter().enumerate() {
            let rel = p.rel.to_string_lossy().into_owned();
            // The held copy, if the set in force has all of it.
            let held = self.current.as_deref().and_then(|cur| {
                old.source(&p.url)
                    .filter(|s| s.paths == [rel.clone()] && cur.join(&p.rel).exists())
            });
            let have = held
                .map(|s| fetch::Validators {
                    etag: s.etag.clone(),
                    last_modified: s.last_modified.clone(),
                })
                .unwrap_or_default();
            let tmp = self.set.join(format!(".download-{i}"));
            let fetched = rt.block_on(client.get(&p.url, &have, &tmp));
            let result = match fetched {
                Err(e) if e.is_refusal() => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(UpdateError::Refused(format!("{}: {e}", p.url)));
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(UpdateError::Download {
                        url: p.url.clone(),
                        reason: e.to_string(),
                    });
                }
                Ok(fetch::Fetched::NotModified) => {
                    let Some(held) = held else {
                        return Err(UpdateError::Download {
                            url: p.url.clone(),
                            reason: "HTTP 304 Not Modified to an unconditional request".into(),
                        });
                    };
                    reused.push(p.rel.clone());
                    manifest.sources.push(held.clone());
                    Download::NotModified
                }
                Ok(fetch::Fetched::Body(body)) if held.is_some_and(|h| h.sha256 == body.sha256) => {
                    let _ = std::fs::remove_file(&tmp);
                    reused.push(p.rel.clone());
                    let mut entry = held.cloned().unwrap_or_default();
                    entry.etag = body.validators.etag;
                    entry.last_modified = body.validators.last_modified;
                    manifest.sources.push(entry);
                    Download::SameContent(body.bytes)
                }
                Ok(fetch::Fetched::Body(body)) => {
                    let placed = self.place(p, &tmp);
                    let _ = std::fs::remove_file(&tmp);
                    placed?;
                    manifest.sources.push(ManifestSource {
                        url: p.url.clone(),
                        paths: vec![rel.clone()],
                        etag: body.validators.etag,
                        last_modified: body.validators.last_modified,
                        sha256: body.sha256,
                        bytes: body.bytes,
                        fetched: now.clone(),
                    });
                    Download::Downloaded(body.bytes)
                }
            };
            reports.push(DownloadReport {
                url: p.url.clone(),
                what: if p.tarball {
                    "UT1 tarball".to_string()
                } else {
                    rel
                },
                result,
            });
        }
        Ok((reports, manifest, reused))
    }

    /// Hard-links the held copy of `rel` from the set in force into the new set.
    fn reuse(&self, rel: &Path) -> Result<(), UpdateError> {
        let Some(cur) = &self.current else {
            return Ok(());
        };
        let dst = self.set.join(rel);
        archive::link_tree(&cur.join(rel), &dst).map_err(io_err(&dst))
    }

    /// Puts a downloaded body where it belongs in the new set.
    fn place(&self, p: &Planned, body: &Path) -> Result<(), UpdateError> {
        let dst = self.set.join(&p.rel);
        if p.tarball {
            let max = self.cfg.lists_update.max_unpacked_bytes;
            return match archive::unpack_ut1(body, &dst, max) {
                Ok(_) => Ok(()),
                Err(e) if e.is_refusal() => Err(UpdateError::Refused(format!("{}: {e}", p.url))),
                Err(archive::ArchiveError::Io { path, source }) => {
                    Err(UpdateError::Io { path, source })
                }
                Err(e) => Err(UpdateError::Setup(e.to_string())),
            };
        }
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::fs::rename(body, &dst).map_err(io_err(&dst))
    }

    /// Every required UT1 category the configuration reads must be in `set`; an
    /// optional one that is not keeps its configured copy.
    fn check_ut1_categories(&self, set: &Path, notes: &mut Vec<String>) -> Result<(), UpdateError> {
        let up = &self.cfg.lists_update;
        let Some(url) = &up.ut1_url else {
            return Ok(());
        };
        let mut missing = Vec::new();
        for t in &up.targets {
            let UpdateOrigin::Ut1 { category_dir } = &t.origin else {
                continue;
            };
            if set.join(&t.rel).is_dir() {
                continue;
            }
            let optional = self.cfg.sources.get(t.source).is_some_and(|s| s.optional);
            if optional {
                notes.push(format!(
                    "{}: no category \"{category_dir}\" in UT1's tarball; the configured copy stays in use (optional list)",
                    t.rel.display()
                ));
            } else {
                missing.push(format!(
                    "{url}: refused: the tarball has no category \"{category_dir}\", which the [[lists]] entry with path \"{}\" needs (UT1 may have renamed it: fix the path, or mark the entry optional)",
                    t.rel.display()
                ));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(UpdateError::Refused(missing.join("\n")))
        }
    }

    /// Builds a full snapshot from the new set (what `vigie config validate` and a
    /// reload do) and checks each refreshed list's bad lines and entries.
    fn verify(&self, notes: &mut Vec<String>) -> Result<Vec<ListReport>, UpdateError> {
        let mut cfg = self.cfg.clone();
        cfg.use_lists_set(Some(self.set));
        // The compiled domain set goes beside the new set, so a failed update
        // leaves the running filter's cache alone; a successful one hands it over.
        let cache = self.set.join(".cache");
        let snap = Snapshot::build(cfg, Some(&cache)).map_err(|e| {
            UpdateError::Refused(format!(
                "the downloaded lists do not load, nothing was changed:\n{}",
                self.relative(&e.to_string())
            ))
        })?;
        let up = &self.cfg.lists_update;
        let mut problems = Vec::new();
        let mut out = Vec::new();
        for t in &up.targets {
            let Some(spec) = snap.config.sources.get(t.source) else {
                continue;
            };
            if !spec.path.starts_with(self.set) {
                continue; // kept its configured copy (see the notes)
            }
            let Some(r) = snap.lists.report.sources.iter().find(|r| r.id == spec.id) else {
                continue;
            };
            let origin = match &t.origin {
                UpdateOrigin::Url(u) => u.as_str(),
                UpdateOrigin::Ut1 { .. } => up.ut1_url.as_deref().unwrap_or(""),
            };
            if let Some(why) = &r.skipped {
                notes.push(format!(
                    "{}: skipped: {}",
                    t.rel.display(),
                    self.relative(why)
                ));
                continue;
            }
            let entries = entries(r);
            let total = entries + r.bad_lines;
            if r.bad_lines > 0 && r.bad_lines as f64 > up.max_bad_share * total as f64 {
                let mut msg = format!(
                    "{origin}: refused: {}: {} of {total} lines are bad ({:.1} %, more than lists_update.max_bad_share = {} %)",
                    t.rel.display(),
                    r.bad_lines,
                    100.0 * r.bad_lines as f64 / total as f64,
                    (up.max_bad_share * 1000.0).round() / 10.0
                );
                for b in &r.first_bad {
                    msg.push_str(&format!("\n  {}", self.relative(&b.to_string())));
                }
                if r.bad_lines > r.first_bad.len() {
                    msg.push_str(&format!(
                        "\n  … and {} more",
                        r.bad_lines - r.first_bad.len()
                    ));
                }
                problems.push(msg);
            }
            // The list in force: the set's copy, or the configured (shipped) one.
            let before = self
                .cfg
                .sources
                .get(t.source)
                .map_or(0, |s| entry_lines(&s.path));
            // An optional list that had entries is held to the same floors: an
            // empty download must not silently switch it off.
            if (!spec.optional || before > 0) && (entries as u64) < up.min_entries {
                problems.push(format!(
                    "{origin}: refused: {} has {entries} entries, fewer than lists_update.min_entries = {}",
                    t.rel.display(),
                    up.min_entries
                ));
            }
            let after = entry_lines(&spec.path);
            if before > 0 && (after as f64) < up.min_share_of_current * before as f64 {
                problems.push(format!(
                    "{origin}: refused: {} would go from {before} entries to {after} ({:.1} % kept, less than lists_update.min_share_of_current = {} %); if the source really shrank, lower min_share_of_current for one update",
                    t.rel.display(),
                    100.0 * after as f64 / before as f64,
                    (up.min_share_of_current * 1000.0).round() / 10.0
                ));
            }
            out.push(ListReport {
                rel: t.rel.clone(),
                category: snap.category_name(spec.category).to_string(),
                change: self.change(&t.rel),
                entries,
                bad_lines: r.bad_lines,
            });
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(UpdateError::Refused(problems.join("\n")))
        }
    }

    /// Puts the verified set in force and tells the running vigie.
    fn install(
        &self,
        downloads: Vec<DownloadReport>,
        lists: Vec<ListReport>,
        notes: Vec<String>,
    ) -> Result<Report, UpdateError> {
        self.dir.complete(self.set).map_err(io_err(self.set))?;
        self.dir
            .switch_to(Some(self.set))
            .map_err(io_err(self.dir.root()))?;
        // From here on the new set is in force; what follows only saves work.
        let built = Lists::cache_file(&self.set.join(".cache"));
        let cache_dir = self.data_dir.join("cache");
        if built.exists() {
            let moved = std::fs::create_dir_all(&cache_dir)
                .and_then(|()| std::fs::rename(&built, Lists::cache_file(&cache_dir)));
            if let Err(e) = moved {
                tracing::warn!(
                    "cannot hand the compiled lists to {}: {e} (vigie compiles them again on reload)",
                    cache_dir.display()
                );
            }
        }
        let _ = std::fs::remove_dir_all(self.set.join(".cache"));
        // With keep ≥ 2 the set just replaced is the one kept for a rollback, even
        // if a newer one exists (a set rolled back from is the first to go).
        let keep = self.cfg.lists_update.keep;
        let protect: Vec<&Path> = match &self.current {
            Some(c) if keep >= 2 => vec![c.as_path()],
            _ => Vec::new(),
        };
        let removed = self.dir.prune(keep, &protect);
        let reload = self
            .opts
            .reload
            .then(|| pidfile::request_reload(self.data_dir));
        Ok(Report {
            downloads,
            lists,
            notes,
            outcome: Outcome::Installed {
                set: self.set.to_path_buf(),
                previous: self.current.clone(),
                removed,
                reload,
            },
        })
    }

    /// How the list at `rel` in the new set compares with the one in force.
    fn change(&self, rel: &Path) -> Change {
        match &self.current {
            Some(cur) if cur.join(rel).exists() => {
                if same_tree(&cur.join(rel), &self.set.join(rel)) {
                    Change::Unchanged
                } else {
                    Change::Updated
                }
            }
            _ => Change::New,
        }
    }

    /// Paths inside the new set shown relative to it: the set is gone when the
    /// operator reads the message.
    fn relative(&self, text: &str) -> String {
        let prefix = format!("{}/", self.set.display());
        text.replace(&prefix, "")
    }
}

fn entries(r: &SourceReport) -> usize {
    r.domains + r.urls + r.expressions + r.ips
}

/// Lines of a list source that can hold an entry (neither blank nor a comment):
/// its file, or the entry files of a UT1 category directory; 0 when unreadable.
/// The same cheap measure of the list in force and of its replacement, for
/// `lists_update.min_share_of_current` (parsing the list in force again would
/// double an update's time).
fn entry_lines(path: &Path) -> usize {
    use std::io::BufRead;
    let files: Vec<PathBuf> = if path.is_dir() {
        crate::lists::UT1_FILE_NAMES
            .iter()
            .filter(|n| **n != "usage")
            .map(|n| path.join(n))
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    let mut n = 0;
    let mut line = Vec::new();
    for f in files {
        let Ok(file) = std::fs::File::open(&f) else {
            continue;
        };
        let mut r = io::BufReader::new(file);
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let l = line.trim_ascii();
                    if !l.is_empty() && !l.starts_with(b"#") && !l.starts_with(b"!") {
                        n += 1;
                    }
                }
            }
        }
    }
    n
}

/// Whether two manifests name the same URLs filling the same paths.
fn same_sources(a: &Manifest, b: &Manifest) -> bool {
    let key = |m: &Manifest| {
        let mut v: Vec<(String, Vec<String>)> = m
            .sources
            .iter()
            .map(|s| (s.url.clone(), s.paths.clone()))
            .collect();
        v.sort();
        v
    };
    key(a) == key(b)
}

/// Whether two files or directory trees hold the same names and bytes (hard links
/// are recognised without reading).
fn same_tree(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    if ma.is_dir() && mb.is_dir() {
        let names = |p: &Path| -> Option<Vec<std::ffi::OsString>> {
            let mut v: Vec<_> = std::fs::read_dir(p)
                .ok()?
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .collect();
            v.sort();
            Some(v)
        };
        let (Some(na), Some(nb)) = (names(a), names(b)) else {
            return false;
        };
        return na == nb && na.iter().all(|n| same_tree(&a.join(n), &b.join(n)));
    }
    if ma.is_file() && mb.is_file() {
        if ma.dev() == mb.dev() && ma.ino() == mb.ino() {
            return true;
        }
        return ma.len() == mb.len() && same_bytes(a, b).unwrap_or(false);
    }
    false
}

fn same_bytes(a: &Path, b: &Path) -> io::Result<bool> {
    use std::io::Read;
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(fb.read(&mut bb[..1])? == 0);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str, base: &Path) -> Config {
        config::parse(text, "t.toml", base).unwrap_or_else(|e| panic!("{e}"))
    }

    const CATEGORIES: &str = r#"
[[categories]]
id = "gambling"
fr = "Jeux"
en = "Gambling"
[[categories]]
id = "p2p"
fr = "P2P"
en = "P2P"
[profiles.invites]
"#;

    #[test]
    fn plan_fetches_the_tarball_once_and_each_list_url() {
        let tmp = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
[lists_update]
ut1_url = "https://ut1.example/blacklists.tar.gz"
[[lists]]
category = "gambling"
format = "ut1"
path = "ut1/gambling"
[[lists]]
category = "p2p"
format = "ut1"
path = "ut1/p2p"
[[lists]]
category = "p2p"
format = "domains"
path = "p2p/trackers.txt"
url = "https://lists.example/trackers.txt"
[[lists]]
category = "p2p"
format = "domains"
path = "own/local.txt"
{CATEGORIES}"#
        );
        let c = cfg(&text, tmp.path());
        let p = plan(&c);
        assert_eq!(
            p,
            vec![
                Planned {
                    url: "https://ut1.example/blacklists.tar.gz".into(),
                    rel: "ut1".into(),
                    tarball: true
                },
                Planned {
                    url: "https://lists.example/trackers.txt".into(),
                    rel: "p2p/trackers.txt".into(),
                    tarball: false
                },
            ]
        );
        // The list without url is not a target: it always reads its own file.
        assert_eq!(c.lists_update.targets.len(), 3);
        // UT1 turned off: only the url list.
        let off = cfg(
            &text.replace("https://ut1.example/blacklists.tar.gz", ""),
            tmp.path(),
        );
        assert_eq!(plan(&off).len(), 1);
    }

    #[test]
    fn same_tree_compares_names_and_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d.join("gambling")).unwrap();
            std::fs::write(d.join("gambling/domains"), "x.example\n").unwrap();
        }
        assert!(same_tree(&a, &b));
        std::fs::write(b.join("gambling/domains"), "y.example\n").unwrap();
        assert!(!same_tree(&a, &b));
        std::fs::write(b.join("gambling/domains"), "x.example\n").unwrap();
        std::fs::write(b.join("gambling/urls"), "").unwrap();
        assert!(!same_tree(&a, &b), "an extra file");
    }

    #[test]
    fn entry_lines_count_what_can_be_an_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("gambling");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("domains"), "# UT1\na.example\n\n  b.example  \n").unwrap();
        std::fs::write(dir.join("urls"), "a.example/x\n").unwrap();
        std::fs::write(dir.join("usage"), "black\n").unwrap();
        assert_eq!(entry_lines(&dir), 3);
        let file = tmp.path().join("easylist.txt");
        std::fs::write(&file, "! adblock comment\n||ads.example^\n").unwrap();
        assert_eq!(entry_lines(&file), 1);
        assert_eq!(entry_lines(&tmp.path().join("missing")), 0);
    }

    #[test]
    fn exit_codes_tell_refused_from_failed() {
        assert_eq!(UpdateError::Refused("x".into()).exit_code(), 1);
        assert_eq!(UpdateError::NoDataDir.exit_code(), 2);
        assert_eq!(
            UpdateError::Download {
                url: "https://x".into(),
                reason: "HTTP 404 Not Found".into()
            }
            .exit_code(),
            2
        );
    }
}
