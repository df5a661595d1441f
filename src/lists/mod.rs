//! Category lists: parsing every supported list format and compiling them into
//! immutable, allocation-free lookup structures (`DomainSet`, `UrlSet`, `IpSet`).
//!
//! This module knows nothing about profiles, schedules or who is asking: it answers
//! "which categories does this host / URL / IP belong to, and which list entry said
//! so". Policy (`crate::policy`) turns that into a verdict.
//!
//! CONTRACT (used by config/policy/CLI; keep these names and shapes):
//! - `CategoryId`, `SourceId`, `CatSet`
//! - `Format`, `SourceSpec`
//! - `Lists::compile(&[SourceSpec], Option<&Path> /*cache dir*/) -> Result<Lists, ListError>`
//! - `Lists { domains, urls, ips, report }`
//! - `DomainSet::lookup(&self, host: &str) -> DomainMatch` (no allocation)
//! - `UrlSet::lookup(&self, url: &str) -> UrlMatch`
//! - `IpSet::lookup(&self, ip: IpAddr) -> IpMatch`
//! - `LoadReport` / `SourceReport` / `BadLine` for `vigie lists stats`
//! - `locate_entry(spec, entry) -> Option<(PathBuf, usize)>` for explain traces

use std::path::{Path, PathBuf};

/// Index of a category in the snapshot's category table (order of the config).
pub type CategoryId = u16;
/// Index of a list source in the config's `[[lists]]` array.
pub type SourceId = u16;

/// A set of categories as a bitset: at most 128 categories per configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CatSet(pub u128);

impl CatSet {
    pub const EMPTY: CatSet = CatSet(0);
    pub const MAX: usize = 128;
    pub fn single(c: CategoryId) -> Self {
        CatSet(1u128 << c)
    }
    pub fn insert(&mut self, c: CategoryId) {
        self.0 |= 1u128 << c;
    }
    pub fn contains(self, c: CategoryId) -> bool {
        self.0 & (1u128 << c) != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn union(self, o: CatSet) -> CatSet {
        CatSet(self.0 | o.0)
    }
    pub fn intersect(self, o: CatSet) -> CatSet {
        CatSet(self.0 & o.0)
    }
    pub fn minus(self, o: CatSet) -> CatSet {
        CatSet(self.0 & !o.0)
    }
    /// Category ids in ascending order.
    pub fn iter(self) -> impl Iterator<Item = CategoryId> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let c = bits.trailing_zeros() as CategoryId;
            bits &= bits - 1;
            Some(c)
        })
    }
}

/// How a list file is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// UT1 category directory: `domains`, `urls`, `expressions` (and
    /// `very_restrictive_expression`), `usage` (black/white).
    Ut1,
    /// hosts file: `0.0.0.0 a b c`, `127.0.0.1 a`, `:: a`.
    Hosts,
    /// One domain per line.
    Domains,
    /// Adblock-style `||example.com^`, exceptions `@@||example.com^`.
    Adblock,
    /// One IPv4/IPv6 address or CIDR per line, `# comment` allowed after it.
    Cidr,
}

/// One list source as resolved by the configuration (paths absolute).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSpec {
    pub id: SourceId,
    pub path: PathBuf,
    pub format: Format,
    pub category: CategoryId,
    /// A missing or unreadable optional source is reported and skipped.
    pub optional: bool,
    /// Every entry of this source is an exception (allowlist) for `category`.
    pub exception: bool,
}

mod cache;
pub mod domain;
pub mod ip;
mod parse;
pub mod sets;
pub mod url;

pub use domain::{DomainHit, DomainMatch, DomainSet, normalize_host};
pub use ip::{IpHit, IpMatch, IpSet};
pub use url::{UrlHit, UrlHitKind, UrlMatch, UrlSet};

use std::fs::File;
use std::io::Read;
use std::time::Instant;

use cache::{DomainFileReport, FileStamp};
use domain::{DomainSetBuilder, Tag};
use ip::IpSetBuilder;
use parse::DomainSyntax;
use url::UrlSetBuilder;

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("{path}: cannot read list: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not a directory (a UT1 source is a category directory with `domains`, `urls`…)"
    )]
    NotADirectory { path: PathBuf },
    #[error("{path}: category id {category} is out of range (at most {max} categories)", max = CatSet::MAX)]
    CategoryOutOfRange { path: PathBuf, category: CategoryId },
    #[error("more than 65,535 distinct combinations of lists share names; merge some sources")]
    TooManyTagSets,
    #[error("the expressions cannot be compiled together: {reason}")]
    Expressions { reason: String },
}

/// One rejected line, reported as `file:line: reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    pub file: PathBuf,
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
    }
}

#[derive(Clone, Debug, Default)]
pub struct SourceReport {
    pub id: SourceId,
    pub path: PathBuf,
    pub category: CategoryId,
    pub domains: usize,
    pub urls: usize,
    pub expressions: usize,
    pub ips: usize,
    pub bad_lines: usize,
    /// The first few bad lines (at most `BAD_LINES_KEPT`).
    pub first_bad: Vec<BadLine>,
    /// Set when an optional source was missing/unreadable and skipped.
    pub skipped: Option<String>,
    /// Lines of a UT1 `usage` file (`black` or `white`, then free-text tags):
    /// informational, e.g. to warn when a `white` list is used to block.
    pub usage: Vec<String>,
}

impl SourceReport {
    fn note_bad(&mut self, file: &Path, line: usize, reason: String) {
        note_bad(&mut self.bad_lines, &mut self.first_bad, file, line, reason);
    }
}

fn note_bad(count: &mut usize, kept: &mut Vec<BadLine>, file: &Path, line: usize, reason: String) {
    *count += 1;
    if kept.len() < BAD_LINES_KEPT {
        kept.push(BadLine {
            file: file.to_path_buf(),
            line,
            reason,
        });
    }
}

pub const BAD_LINES_KEPT: usize = 5;

#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub sources: Vec<SourceReport>,
    pub build_time: std::time::Duration,
    /// true when the compiled domain set came from the cache file.
    pub from_cache: bool,
}

/// Everything compiled from the list sources; immutable once built.
#[derive(Debug, Default)]
pub struct Lists {
    pub domains: DomainSet,
    pub urls: UrlSet,
    pub ips: IpSet,
    pub report: LoadReport,
}

/// What one file of a source holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Domains(DomainSyntax),
    Urls,
    Expressions,
    Usage,
    Cidr,
}

/// The files of a UT1 category directory, in the order they are read and reported.
/// Any of them may be absent (UT1's `adult` has no `domains` in some releases).
const UT1_FILES: [(&str, Role); 5] = [
    ("domains", Role::Domains(DomainSyntax::Plain)),
    ("urls", Role::Urls),
    ("expressions", Role::Expressions),
    ("very_restrictive_expression", Role::Expressions),
    ("usage", Role::Usage),
];

/// The file names a UT1 category directory may hold (what an update unpacks).
pub const UT1_FILE_NAMES: [&str; 5] = [
    UT1_FILES[0].0,
    UT1_FILES[1].0,
    UT1_FILES[2].0,
    UT1_FILES[3].0,
    UT1_FILES[4].0,
];

/// The files of a source, as opened before anything is parsed.
fn source_files(spec: &SourceSpec) -> Vec<(Role, PathBuf)> {
    let single = |role| vec![(role, spec.path.clone())];
    match spec.format {
        Format::Ut1 => UT1_FILES
            .iter()
            .map(|&(name, role)| (role, spec.path.join(name)))
            .collect(),
        Format::Hosts => single(Role::Domains(DomainSyntax::Hosts)),
        Format::Domains => single(Role::Domains(DomainSyntax::Plain)),
        Format::Adblock => single(Role::Domains(DomainSyntax::Adblock)),
        Format::Cidr => single(Role::Cidr),
    }
}

/// A file opened (so known readable) and stamped for the cache key.
struct OpenFile {
    role: Role,
    path: PathBuf,
    file: File,
    len: u64,
    mtime_nanos: Option<u128>,
}

impl OpenFile {
    fn read(mut self) -> Result<(Role, PathBuf, Vec<u8>), ListError> {
        let mut data = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0).saturating_add(1));
        match self.file.read_to_end(&mut data) {
            Ok(_) => Ok((self.role, self.path, data)),
            Err(source) => Err(ListError::Read {
                path: self.path,
                source,
            }),
        }
    }
}

/// Opens every file of a source. `Ok(Err(reason))`: an optional source to skip.
fn open_source(spec: &SourceSpec) -> Result<Result<Vec<OpenFile>, String>, ListError> {
    let fail = |path: &Path, source: std::io::Error| {
        if spec.optional {
            Ok(Err(format!("{}: {source}", path.display())))
        } else {
            Err(ListError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if spec.format == Format::Ut1 {
        match std::fs::metadata(&spec.path) {
            Err(e) => return fail(&spec.path, e),
            Ok(m) if !m.is_dir() => {
                return if spec.optional {
                    Ok(Err(format!("{}: not a directory", spec.path.display())))
                } else {
                    Err(ListError::NotADirectory {
                        path: spec.path.clone(),
                    })
                };
            }
            Ok(_) => {}
        }
    }
    let mut files = Vec::new();
    for (role, path) in source_files(spec) {
        let file = match File::open(&path) {
            Ok(f) => f,
            // Inside a UT1 directory every file is optional; only the directory counts.
            Err(e) if spec.format == Format::Ut1 && e.kind() == std::io::ErrorKind::NotFound => {
                continue;
            }
            Err(e) => return fail(&path, e),
        };
        let meta = match file.metadata() {
            Ok(m) if m.is_file() => m,
            Ok(_) => return fail(&path, std::io::Error::other("not a regular file")),
            Err(e) => return fail(&path, e),
        };
        let mtime_nanos = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos());
        files.push(OpenFile {
            role,
            path,
            file,
            len: meta.len(),
            mtime_nanos,
        });
    }
    Ok(Ok(files))
}

fn tag_of(spec: &SourceSpec, exception: bool) -> Tag {
    Tag {
        category: spec.category,
        source: spec.id,
        exception: exception || spec.exception,
    }
}

impl Lists {
    /// Loads and compiles every source. A missing or unreadable required source is an
    /// error (the caller keeps its previous snapshot); an optional one is reported as
    /// skipped; a bad line is only reported. With `cache_dir`, the compiled domain set
    /// is reused when no domain file changed, and rewritten otherwise.
    pub fn compile(specs: &[SourceSpec], cache_dir: Option<&Path>) -> Result<Lists, ListError> {
        let started = Instant::now();
        let mut reports = Vec::with_capacity(specs.len());
        let mut opened = Vec::with_capacity(specs.len());
        for spec in specs {
            if usize::from(spec.category) >= CatSet::MAX {
                return Err(ListError::CategoryOutOfRange {
                    path: spec.path.clone(),
                    category: spec.category,
                });
            }
            let mut report = SourceReport {
                id: spec.id,
                path: spec.path.clone(),
                category: spec.category,
                ..SourceReport::default()
            };
            let files = match open_source(spec)? {
                Ok(files) => files,
                Err(reason) => {
                    report.skipped = Some(reason);
                    Vec::new()
                }
            };
            reports.push(report);
            opened.push(files);
        }

        let skipped: Vec<bool> = reports.iter().map(|r| r.skipped.is_some()).collect();
        let stamps: Vec<FileStamp<'_>> = opened
            .iter()
            .flatten()
            .filter(|f| matches!(f.role, Role::Domains(_)))
            .map(|f| FileStamp {
                path: &f.path,
                len: f.len,
                mtime_nanos: f.mtime_nanos,
            })
            .collect();
        let key = cache::key(specs, &skipped, &stamps);
        drop(stamps);

        let cached = cache_dir.and_then(|dir| cache::load(dir, key, specs.len()));
        let from_cache = cached.is_some();
        let (domains, domain_reports) = match cached {
            Some(hit) => hit,
            None => {
                let (set, file_reports) = build_domains(specs, &mut opened)?;
                if let Some(dir) = cache_dir {
                    cache::store(dir, key, &set, &file_reports);
                }
                (set, file_reports)
            }
        };
        for (report, d) in reports.iter_mut().zip(domain_reports) {
            report.domains = d.domains;
            report.bad_lines = d.bad_lines;
            report.first_bad = d.first_bad;
        }

        let mut urls = UrlSetBuilder::new();
        let mut ips = IpSetBuilder::new();
        for ((spec, files), report) in specs.iter().zip(opened).zip(&mut reports) {
            for file in files {
                if matches!(file.role, Role::Domains(_)) {
                    continue; // consumed by build_domains, or served by the cache
                }
                let (role, path, data) = file.read()?;
                load_other(spec, role, &path, &data, report, &mut urls, &mut ips);
            }
        }

        Ok(Lists {
            domains,
            urls: urls.build()?,
            ips: ips.build(),
            report: LoadReport {
                sources: reports,
                build_time: started.elapsed(),
                from_cache,
            },
        })
    }

    /// Approximate heap bytes of the compiled structures.
    pub fn memory_bytes(&self) -> usize {
        self.domains.memory_bytes() + self.urls.memory_bytes() + self.ips.memory_bytes()
    }

    /// The compiled-domain cache file `compile` reads and writes in `cache_dir`
    /// (`vigie lists update` moves a freshly verified one into place).
    pub fn cache_file(cache_dir: &Path) -> PathBuf {
        cache::path(cache_dir)
    }
}

/// Parses every domain file (taking them out of `opened`) into one `DomainSet`.
fn build_domains(
    specs: &[SourceSpec],
    opened: &mut [Vec<OpenFile>],
) -> Result<(DomainSet, Vec<DomainFileReport>), ListError> {
    let mut builder = DomainSetBuilder::new();
    let mut reports = vec![DomainFileReport::default(); specs.len()];
    for ((spec, files), report) in specs.iter().zip(opened.iter_mut()).zip(&mut reports) {
        let (domain_files, rest): (Vec<_>, Vec<_>) = std::mem::take(files)
            .into_iter()
            .partition(|f| matches!(f.role, Role::Domains(_)));
        *files = rest;
        let plain = builder.tag(tag_of(spec, false));
        let exception = builder.tag(tag_of(spec, true));
        for file in domain_files {
            let (role, path, data) = file.read()?;
            let Role::Domains(syntax) = role else {
                continue;
            };
            parse::parse_domains(&data, syntax, |line, parsed| match parsed {
                Ok((name, is_exception)) => {
                    builder.insert(name, if is_exception { exception } else { plain });
                    report.domains += 1;
                }
                Err(reason) => note_bad(
                    &mut report.bad_lines,
                    &mut report.first_bad,
                    &path,
                    line,
                    reason,
                ),
            });
        }
    }
    Ok((builder.build()?, reports))
}

/// Loads a non-domain file of a source into the URL / IP builders.
fn load_other(
    spec: &SourceSpec,
    role: Role,
    path: &Path,
    data: &[u8],
    report: &mut SourceReport,
    urls: &mut UrlSetBuilder,
    ips: &mut IpSetBuilder,
) {
    let tag = tag_of(spec, false);
    match role {
        Role::Domains(_) => {}
        Role::Urls => parse::parse_urls(data, |line, parsed| match parsed {
            Ok(entry) => {
                urls.add_entry(entry, tag);
                report.urls += 1;
            }
            Err(reason) => report.note_bad(path, line, reason),
        }),
        Role::Expressions => parse::parse_expressions(data, |line, parsed| {
            match parsed.and_then(|pattern| urls.add_expression(pattern, tag)) {
                Ok(()) => report.expressions += 1,
                Err(reason) => report.note_bad(path, line, reason),
            }
        }),
        Role::Cidr => parse::parse_cidrs(data, |line, parsed| match parsed {
            Ok(net) => {
                ips.add(net, tag);
                report.ips += 1;
            }
            Err(reason) => report.note_bad(path, line, reason),
        }),
        Role::Usage => report.usage = parse::parse_usage(data),
    }
}

/// Finds the file and 1-based line where `entry` is listed in `spec` (slow path,
/// used only by explain traces, never by lookups).
///
/// `entry` may be a domain (as reported by a `DomainHit` suffix), a `urls` entry or
/// an expression (as given by `UrlSet::entry_text`) or a network (an `IpHit::net`,
/// possibly aggregated: the first listed line inside it, or containing it, is found).
/// Files are re-read and re-parsed with the same parsers as `compile`.
pub fn locate_entry(spec: &SourceSpec, entry: &str) -> Option<(PathBuf, usize)> {
    let domain = normalize_host(entry).ok();
    let url = {
        let mut buf = Vec::new();
        url::normalize_entry(entry.trim().as_bytes(), &mut buf)
            .ok()
            .map(|()| buf)
    };
    let net = parse::parse_net(entry.trim().as_bytes());
    for (role, path) in source_files(spec) {
        let Ok(data) = std::fs::read(&path) else {
            continue;
        };
        let mut found = None;
        match role {
            Role::Domains(syntax) => {
                let Some(want) = &domain else { continue };
                parse::parse_domains(&data, syntax, |line, parsed| {
                    if found.is_none() && matches!(parsed, Ok((name, _)) if name == want.as_bytes())
                    {
                        found = Some(line);
                    }
                });
            }
            Role::Urls => {
                let Some(want) = &url else { continue };
                parse::parse_urls(&data, |line, parsed| {
                    if found.is_none() && matches!(parsed, Ok(e) if e == want.as_slice()) {
                        found = Some(line);
                    }
                });
            }
            Role::Expressions => parse::parse_expressions(&data, |line, parsed| {
                if found.is_none() && parsed == Ok(entry.trim()) {
                    found = Some(line);
                }
            }),
            Role::Cidr => {
                let Some(want) = net else { continue };
                parse::parse_cidrs(&data, |line, parsed| {
                    if found.is_none()
                        && matches!(parsed, Ok(n) if want.contains(&n) || n.contains(&want))
                    {
                        found = Some(line);
                    }
                });
            }
            Role::Usage => {}
        }
        if let Some(line) = found {
            return Some((path, line));
        }
    }
    None
}

#[cfg(test)]
mod tests;
