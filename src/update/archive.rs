//! Unpacking UT1's tarball (`blacklists.tar.gz`) into a list set, refusing
//! anything a hostile or broken archive could do to the gateway.
//!
//! Only what vigie reads is written: the known files of each category directory
//! (`<top>/<category>/domains`, `urls`, `expressions`, `very_restrictive_expression`,
//! `usage`, or the same without a top directory, as UT1's per-category tarballs
//! have them). Nothing is ever created from an archive path as given: every path is
//! checked first, and one that is absolute or climbs out with `..` makes the whole
//! archive refused (a well-formed UT1 tarball never has one, so it means tampering
//! or corruption). Symbolic and hard links inside the archive (UT1 names some
//! categories twice, `ads -> publicite`) become hard links between the written
//! files, and only when they stay inside the archive. The whole gzip stream is read
//! to its end, so a truncated or corrupted download fails its CRC check here, and a
//! decompression bomb stops at the configured size.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use crate::lists::UT1_FILE_NAMES;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("not a valid .tar.gz archive: {0}")]
    Corrupt(String),
    #[error(
        "refused: the archive entry \"{0}\" points outside the archive (absolute path or \"..\")"
    )]
    Traversal(String),
    #[error(
        "refused: the archive unpacks to more than {0} bytes (lists_update.max_unpacked_bytes)"
    )]
    TooLarge(u64),
    #[error("the archive holds no UT1 category directory (<category>/domains, urls …)")]
    NoCategory,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ArchiveError {
    /// Whether the archive itself is at fault (as opposed to the local disk).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, ArchiveError::Io { .. })
    }
}

/// What was unpacked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Category directory names, as in the archive (`gambling`, `audio-video` …).
    pub categories: BTreeSet<String>,
    pub files: usize,
    /// Bytes written (aliases not counted again).
    pub bytes: u64,
}

/// Counts what the decompressor hands out and stops past `max`.
struct Limited<R> {
    inner: R,
    read: Rc<Cell<u64>>,
    max: u64,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.read.get().saturating_add(n as u64);
        self.read.set(total);
        if total > self.max {
            return Err(io::Error::other("unpacked size limit reached"));
        }
        Ok(n)
    }
}

/// A file of the set: (category directory, file name).
type Member = (String, String);

/// Unpacks the UT1 categories of the `.tar.gz` at `archive` into `dest` (which is
/// created), reading at most `max_unpacked` bytes of tar stream.
pub fn unpack_ut1(
    archive: &Path,
    dest: &Path,
    max_unpacked: u64,
) -> Result<Unpacked, ArchiveError> {
    let file = std::fs::File::open(archive).map_err(|source| ArchiveError::Io {
        path: archive.to_path_buf(),
        source,
    })?;
    let read = Rc::new(Cell::new(0u64));
    let limited = Limited {
        inner: flate2::read::GzDecoder::new(io::BufReader::new(file)),
        read: read.clone(),
        max: max_unpacked,
    };
    let stream_error = |e: io::Error| {
        if read.get() > max_unpacked {
            ArchiveError::TooLarge(max_unpacked)
        } else {
            ArchiveError::Corrupt(e.to_string())
        }
    };
    let mut tar = tar::Archive::new(limited);
    let mut out = Unpacked::default();
    // Links are applied once every regular file is written.
    let mut file_links: Vec<(Member, Member)> = Vec::new();
    let mut dir_links: BTreeMap<String, String> = BTreeMap::new();
    for entry in tar.entries().map_err(stream_error)? {
        let mut entry = entry.map_err(stream_error)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let parts = archive_path(&raw)?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            // A symlink is relative to its directory, a hard link to the root.
            let base: &[String] = if kind.is_symlink() {
                &parts[..parts.len().saturating_sub(1)]
            } else {
                &[]
            };
            let resolved = resolve_link(base, &target)
                .ok_or_else(|| ArchiveError::Traversal(format!("{raw} -> {target}")))?;
            if let (Some(from), Some(to)) = (member(&parts), member(&resolved)) {
                file_links.push((from, to));
            } else if let (Some(from), Some(to)) = (category_dir(&parts), category_dir(&resolved)) {
                dir_links.insert(from, to);
            }
            continue;
        }
        if !kind.is_file() {
            continue; // directories are made as needed; devices and fifos never
        }
        let Some((cat, name)) = member(&parts) else {
            continue;
        };
        let dir = dest.join(&cat);
        std::fs::create_dir_all(&dir).map_err(|source| ArchiveError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(&name);
        let io_err = |source| ArchiveError::Io {
            path: path.clone(),
            source,
        };
        let mut f = std::fs::File::create(&path).map_err(io_err)?;
        let n = copy_entry(&mut entry, &mut f, &path, &stream_error)?;
        f.sync_all().map_err(io_err)?;
        out.files += 1;
        out.bytes += n;
        out.categories.insert(cat);
    }
    // Read the gzip stream to its end: its CRC and length are checked there.
    let mut rest = tar.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(stream_error)?;

    for ((cat, name), (to_cat, to_name)) in file_links {
        let src = dest.join(&to_cat).join(&to_name);
        if src.is_file() {
            let dir = dest.join(&cat);
            std::fs::create_dir_all(&dir).map_err(|source| ArchiveError::Io {
                path: dir.clone(),
                source,
            })?;
            link_or_copy(&src, &dir.join(&name))?;
            out.categories.insert(cat);
        }
    }
    for (alias, target) in dir_links {
        let (from, to) = (dest.join(&target), dest.join(&alias));
        if from.is_dir() && !to.exists() {
            link_tree(&from, &to).map_err(|source| ArchiveError::Io { path: to, source })?;
            out.categories.insert(alias);
        }
    }
    if out.categories.is_empty() {
        return Err(ArchiveError::NoCategory);
    }
    Ok(out)
}

/// Copies one entry's data, telling a bad archive from a bad disk.
fn copy_entry(
    entry: &mut impl Read,
    f: &mut std::fs::File,
    path: &Path,
    stream_error: &impl Fn(io::Error) -> ArchiveError,
) -> Result<u64, ArchiveError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = entry.read(&mut buf).map_err(stream_error)?;
        if n == 0 {
            return Ok(total);
        }
        f.write_all(&buf[..n]).map_err(|source| ArchiveError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        total += n as u64;
    }
}

/// The components of an archive path; absolute paths and `..` are refused.
fn archive_path(raw: &str) -> Result<Vec<String>, ArchiveError> {
    let mut parts = Vec::new();
    for c in Path::new(raw).components() {
        match c {
            Component::Normal(name) => parts.push(name.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::Traversal(raw.to_string()));
            }
        }
    }
    Ok(parts)
}

/// Where a link inside the archive points, as archive components; `None` when
/// it leaves the archive.
fn resolve_link(base: &[String], target: &str) -> Option<Vec<String>> {
    let mut parts = base.to_vec();
    for c in Path::new(target).components() {
        match c {
            Component::Normal(name) => parts.push(name.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts)
}

/// `[top,] category, file` → the set member it fills, for the files vigie reads.
fn member(parts: &[String]) -> Option<Member> {
    let (cat, name) = match parts {
        [_, cat, name] | [cat, name] => (cat, name),
        _ => return None,
    };
    (valid_name(cat) && UT1_FILE_NAMES.contains(&name.as_str()))
        .then(|| (cat.clone(), name.clone()))
}

/// `[top,] category` → a category directory name (for directory aliases).
fn category_dir(parts: &[String]) -> Option<String> {
    let cat = match parts {
        [_, cat] | [cat] => cat,
        _ => return None,
    };
    valid_name(cat).then(|| cat.clone())
}

/// A category directory name as UT1 writes them (`audio-video`, `social_networks`).
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn link_or_copy(src: &Path, dst: &Path) -> Result<(), ArchiveError> {
    let _ = std::fs::remove_file(dst);
    std::fs::hard_link(src, dst)
        .or_else(|_| std::fs::copy(src, dst).map(|_| ()))
        .map_err(|source| ArchiveError::Io {
            path: dst.to_path_buf(),
            source,
        })
}

/// Recreates the tree `src` at `dst` with hard links to its files (copies where a
/// link cannot be made): unchanged lists cost no space in a new set.
pub fn link_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    if meta.is_dir() {
        std::fs::create_dir_all(dst)?;
        for e in std::fs::read_dir(src)? {
            let e = e?;
            link_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        Ok(())
    } else if meta.is_file() {
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::hard_link(src, dst).or_else(|_| std::fs::copy(src, dst).map(|_| ()))
    } else {
        Ok(()) // a set holds regular files only
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar.gz built entry by entry; names are written raw so tests can build the
    /// archives a well-behaved `tar::Builder` refuses to.
    fn tarball(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_old();
            let field = &mut h.as_old_mut().name;
            field.fill(0);
            field[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if let Some(l) = link {
                let f = &mut h.as_old_mut().linkname;
                f.fill(0);
                f[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    fn unpack(bytes: &[u8], max: u64) -> (tempfile::TempDir, Result<Unpacked, ArchiveError>) {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a.tar.gz");
        std::fs::write(&file, bytes).unwrap();
        let r = unpack_ut1(&file, &tmp.path().join("out"), max);
        (tmp, r)
    }

    use tar::EntryType::{Directory, Link, Regular, Symlink};

    #[test]
    fn unpacks_known_files_of_each_category_with_or_without_a_top_directory() {
        let bytes = tarball(&[
            ("blacklists/", Directory, b"", None),
            (
                "blacklists/gambling/domains",
                Regular,
                b"casino.example\n",
                None,
            ),
            (
                "blacklists/gambling/urls",
                Regular,
                b"casino.example/poker\n",
                None,
            ),
            ("blacklists/gambling/README", Regular, b"ignored", None),
            ("blacklists/global_usage", Regular, b"ignored", None),
            (
                "blacklists/audio-video/domains",
                Regular,
                b"video.example\n",
                None,
            ),
        ]);
        let (tmp, r) = unpack(&bytes, 1 << 20);
        let u = r.unwrap();
        assert_eq!(
            u.categories.iter().map(String::as_str).collect::<Vec<_>>(),
            ["audio-video", "gambling"]
        );
        assert_eq!(u.files, 3);
        let out = tmp.path().join("out");
        assert_eq!(
            std::fs::read_to_string(out.join("gambling/domains")).unwrap(),
            "casino.example\n"
        );
        assert!(!out.join("gambling/README").exists());
        assert!(!out.join("global_usage").exists());

        let bytes = tarball(&[("doh/domains", Regular, b"dns.example\n", None)]);
        let (tmp, r) = unpack(&bytes, 1 << 20);
        assert!(r.unwrap().categories.contains("doh"));
        assert!(tmp.path().join("out/doh/domains").is_file());
    }

    #[test]
    fn path_traversal_is_refused_and_nothing_is_written_outside() {
        for evil in [
            "blacklists/../../evil/domains",
            "/etc/vigie/domains",
            "../domains",
        ] {
            let bytes = tarball(&[
                (
                    "blacklists/gambling/domains",
                    Regular,
                    b"casino.example\n",
                    None,
                ),
                (evil, Regular, b"x", None),
            ]);
            let (tmp, r) = unpack(&bytes, 1 << 20);
            assert!(
                matches!(r, Err(ArchiveError::Traversal(ref p)) if p == evil),
                "{evil}: {r:?}"
            );
            assert!(!tmp.path().join("evil").exists());
        }
        // A link that climbs out is refused too, a link inside is followed.
        let bytes = tarball(&[
            (
                "blacklists/gambling/domains",
                Regular,
                b"casino.example\n",
                None,
            ),
            (
                "blacklists/gambling/urls",
                Symlink,
                b"",
                Some("../../../etc/passwd"),
            ),
        ]);
        assert!(matches!(
            unpack(&bytes, 1 << 20).1,
            Err(ArchiveError::Traversal(_))
        ));
    }

    #[test]
    fn links_inside_the_archive_become_hard_links() {
        let bytes = tarball(&[
            (
                "blacklists/publicite/domains",
                Regular,
                b"ads.example\n",
                None,
            ),
            ("blacklists/ads", Symlink, b"", Some("publicite")),
            (
                "blacklists/drogue/domains",
                Regular,
                b"drug.example\n",
                None,
            ),
            (
                "blacklists/drugs/domains",
                Symlink,
                b"",
                Some("../drogue/domains"),
            ),
            (
                "blacklists/hard/domains",
                Link,
                b"",
                Some("blacklists/drogue/domains"),
            ),
        ]);
        let (tmp, r) = unpack(&bytes, 1 << 20);
        let u = r.unwrap();
        for c in ["ads", "drugs", "hard", "publicite", "drogue"] {
            assert!(u.categories.contains(c), "{c}: {u:?}");
        }
        let out = tmp.path().join("out");
        assert_eq!(
            std::fs::read_to_string(out.join("ads/domains")).unwrap(),
            "ads.example\n"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("drugs/domains")).unwrap(),
            "drug.example\n"
        );
        assert!(
            !std::fs::symlink_metadata(out.join("ads"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn truncated_corrupt_oversized_and_empty_archives_are_refused() {
        let good = tarball(&[("blacklists/gambling/domains", Regular, &[b'a'; 5000], None)]);
        let (_t, r) = unpack(&good[..good.len() - 10], 1 << 20);
        assert!(
            matches!(r, Err(ArchiveError::Corrupt(_))),
            "truncated: {r:?}"
        );
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        let (_t, r) = unpack(&flipped, 1 << 20);
        assert!(matches!(r, Err(ArchiveError::Corrupt(_))), "corrupt: {r:?}");
        let (_t, r) = unpack(b"<html>Not found</html>", 1 << 20);
        assert!(
            matches!(r, Err(ArchiveError::Corrupt(_))),
            "not gzip: {r:?}"
        );
        let (_t, r) = unpack(&good, 4096);
        assert!(
            matches!(r, Err(ArchiveError::TooLarge(4096))),
            "bomb: {r:?}"
        );
        let none = tarball(&[("blacklists/README", Regular, b"x", None)]);
        let (_t, r) = unpack(&none, 1 << 20);
        assert!(matches!(r, Err(ArchiveError::NoCategory)), "{r:?}");
        assert!(r.unwrap_err().is_refusal());
    }

    #[test]
    fn link_tree_shares_files() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("a");
        std::fs::create_dir_all(src.join("ut1/gambling")).unwrap();
        std::fs::write(src.join("ut1/gambling/domains"), "x\n").unwrap();
        link_tree(&src.join("ut1"), &tmp.path().join("b/ut1")).unwrap();
        let a = std::fs::metadata(src.join("ut1/gambling/domains")).unwrap();
        let b = std::fs::metadata(tmp.path().join("b/ut1/gambling/domains")).unwrap();
        assert_eq!(a.ino(), b.ino());
    }
}
