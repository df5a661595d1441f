//! The on-disk cache of the compiled `DomainSet`, so a restart or a reload with
//! unchanged lists skips parsing millions of lines.
//!
//! The cache is an optimisation and never an authority: it is keyed by everything
//! the build reads (specs, paths, sizes, modification times of the domain files and
//! the format version), checksummed with xxh3, and any mismatch, truncation or
//! structural inconsistency makes `load` return `None` so the caller rebuilds from the
//! lists and rewrites it. Writing is best effort (a read-only cache directory must
//! not break filtering) and atomic (temporary file + rename), so a crash mid-write
//! never leaves a half file under the real name. This module owns the byte format
//! only; what goes in it is decided by `DomainSet` and `Lists::compile`.

use std::io::Write;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use super::domain::DomainSet;
use super::{BadLine, SourceSpec};

const MAGIC: &[u8; 8] = b"VIGIEDOM";
/// Bump whenever the payload layout, the hash function or the normalisation rules
/// change: an old cache then simply stops matching.
const FORMAT_VERSION: u32 = 3;
const FILE_NAME: &str = "vigie-domains.cache";
/// magic + version + reserved + key + payload length + checksum.
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8 + 8;

/// What the domain files of one source contributed, replayed into the load report
/// when the set comes from the cache.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DomainFileReport {
    pub domains: usize,
    pub bad_lines: usize,
    pub first_bad: Vec<BadLine>,
}

/// Identity of one domain file as the key sees it.
pub(crate) struct FileStamp<'a> {
    pub path: &'a Path,
    pub len: u64,
    /// Nanoseconds since the epoch, or `None` where the platform has no mtime.
    pub mtime_nanos: Option<u128>,
}

/// The cache key: a hash over the specs and the stamps of the domain files. A list
/// edited in place changes its size or mtime; a spec change (category, exception…)
/// changes the tags stored in the set.
pub(crate) fn key(specs: &[SourceSpec], skipped: &[bool], stamps: &[FileStamp<'_>]) -> u64 {
    let mut h = Xxh3::new();
    h.update(MAGIC);
    h.update(&FORMAT_VERSION.to_le_bytes());
    for (spec, skipped) in specs.iter().zip(skipped) {
        h.update(&spec.id.to_le_bytes());
        h.update(&spec.category.to_le_bytes());
        h.update(&[
            spec.format as u8,
            u8::from(spec.optional),
            u8::from(spec.exception),
            u8::from(*skipped),
        ]);
        let path = spec.path.as_os_str().as_encoded_bytes();
        h.update(&(path.len() as u64).to_le_bytes());
        h.update(path);
    }
    for s in stamps {
        let path = s.path.as_os_str().as_encoded_bytes();
        h.update(&(path.len() as u64).to_le_bytes());
        h.update(path);
        h.update(&s.len.to_le_bytes());
        h.update(&s.mtime_nanos.unwrap_or(u128::MAX).to_le_bytes());
    }
    h.digest()
}

pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Loads the cached set if the file exists, matches `key` and is intact.
pub(crate) fn load(
    dir: &Path,
    key: u64,
    nsources: usize,
) -> Option<(DomainSet, Vec<DomainFileReport>)> {
    let data = std::fs::read(path(dir)).ok()?;
    let mut r = Reader::new(&data);
    if r.take(8)? != MAGIC || r.u32()? != FORMAT_VERSION {
        return None;
    }
    let _reserved = r.u32()?;
    if r.u64()? != key {
        return None;
    }
    let payload_len = usize::try_from(r.u64()?).ok()?;
    let checksum = r.u64()?;
    let payload = r.take(payload_len)?;
    if !r.is_at_end() || xxh3_64(payload) != checksum {
        return None;
    }
    let mut r = Reader::new(payload);
    let set = DomainSet::read_from(&mut r)?;
    let reports = read_reports(&mut r)?;
    if reports.len() != nsources || !r.is_at_end() {
        return None;
    }
    Some((set, reports))
}

/// Writes the cache; failures are logged and otherwise ignored.
pub(crate) fn store(dir: &Path, key: u64, set: &DomainSet, reports: &[DomainFileReport]) {
    if let Err(e) = try_store(dir, key, set, reports) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot write the domain cache; lists will be parsed again next time");
    }
}

fn try_store(
    dir: &Path,
    key: u64,
    set: &DomainSet,
    reports: &[DomainFileReport],
) -> std::io::Result<()> {
    let mut payload = Vec::new();
    set.write_to(&mut payload);
    write_reports(&mut payload, reports);
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&key.to_le_bytes());
    header.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    header.extend_from_slice(&xxh3_64(&payload).to_le_bytes());

    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{FILE_NAME}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&header)?;
        f.write_all(&payload)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path(dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_reports(out: &mut Vec<u8>, reports: &[DomainFileReport]) {
    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
    }
    out.extend_from_slice(&(reports.len() as u64).to_le_bytes());
    for r in reports {
        out.extend_from_slice(&(r.domains as u64).to_le_bytes());
        out.extend_from_slice(&(r.bad_lines as u64).to_le_bytes());
        out.extend_from_slice(&(r.first_bad.len() as u64).to_le_bytes());
        for b in &r.first_bad {
            bytes(out, b.file.as_os_str().as_encoded_bytes());
            out.extend_from_slice(&(b.line as u64).to_le_bytes());
            bytes(out, b.reason.as_bytes());
        }
    }
}

fn read_reports(r: &mut Reader<'_>) -> Option<Vec<DomainFileReport>> {
    let n = r.len_u64()?;
    let mut out = Vec::new();
    for _ in 0..n {
        let domains = r.len_u64()?;
        let bad_lines = r.len_u64()?;
        let nbad = r.len_u64()?;
        let mut first_bad = Vec::new();
        for _ in 0..nbad {
            let file = r.bytes()?;
            let line = r.len_u64()?;
            let reason = std::str::from_utf8(r.bytes()?).ok()?.to_string();
            // Paths are written by this same program on this same OS.
            #[cfg(unix)]
            let file =
                PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(file));
            #[cfg(not(unix))]
            let file = PathBuf::from(std::str::from_utf8(file).ok()?);
            first_bad.push(BadLine { file, line, reason });
        }
        out.push(DomainFileReport {
            domains,
            bad_lines,
            first_bad,
        });
    }
    Some(out)
}

/// Bounds-checked little-endian reader over a byte slice: every read past the end is
/// `None`, so a truncated or crafted file cannot panic the loader.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn len_u64(&mut self) -> Option<usize> {
        usize::try_from(self.u64()?).ok()
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.len_u64()?;
        self.take(n)
    }

    pub(crate) fn is_at_end(&self) -> bool {
        self.pos == self.data.len()
    }
}
