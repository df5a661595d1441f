//! Tests of `Lists::compile` and `locate_entry` over real files in a temporary
//! directory: sources, report, cache behaviour.

use std::fs;
use std::path::Path;

use super::*;

fn spec(id: SourceId, path: &Path, format: Format, category: CategoryId) -> SourceSpec {
    SourceSpec {
        id,
        path: path.to_path_buf(),
        format,
        category,
        optional: false,
        exception: false,
    }
}

fn write(path: &Path, content: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap();
}

/// A UT1 directory, a hosts file, an Adblock list and a CIDR file.
fn fixture(dir: &Path) -> Vec<SourceSpec> {
    let ut1 = dir.join("ut1/adult");
    write(
        &ut1.join("domains"),
        b"\xEF\xBB\xBFporn.example\r\nWWW.Sexy.Example.\r\n# comment\r\n\r\nbad%name.com\r\n",
    );
    write(
        &ut1.join("urls"),
        b"free.example/adult\nwww.pics.example/nsfw/\n",
    );
    write(&ut1.join("expressions"), b"(xxx|porn)tube\n(unclosed\n");
    write(&ut1.join("usage"), b"black\nadult\n");
    write(
        &dir.join("p2p.hosts"),
        b"127.0.0.1 localhost\n0.0.0.0 tracker.example torrent.example\nnot-an-ip x.example\n",
    );
    write(
        &dir.join("ads.txt"),
        b"! Title\n||ads.example^\n@@||ok.ads.example^\n||ads.example/path\n",
    );
    write(
        &dir.join("tor.txt"),
        b"1.0.0.1             # names\n10.0.0.0/8\n2001:db8::/32\nnope\n",
    );
    vec![
        spec(0, &ut1, Format::Ut1, 1),
        spec(1, &dir.join("p2p.hosts"), Format::Hosts, 2),
        spec(2, &dir.join("ads.txt"), Format::Adblock, 3),
        spec(3, &dir.join("tor.txt"), Format::Cidr, 4),
    ]
}

#[test]
fn compile_all_formats_and_report() {
    let tmp = tempfile::tempdir().unwrap();
    let specs = fixture(tmp.path());
    let lists = Lists::compile(&specs, None).unwrap();

    assert_eq!(
        lists.domains.lookup("a.porn.example").categories(),
        CatSet::single(1)
    );
    assert_eq!(
        lists.domains.lookup("a.www.sexy.example").categories(),
        CatSet::single(1)
    );
    // A `www.` entry lists that name only, not its parent.
    assert!(lists.domains.lookup("sexy.example").is_empty());
    assert_eq!(
        lists.domains.lookup("tracker.example").categories(),
        CatSet::single(2)
    );
    assert!(lists.domains.lookup("localhost").is_empty());
    assert_eq!(
        lists.domains.lookup("x.ads.example").categories(),
        CatSet::single(3)
    );
    let ok = lists.domains.lookup("ok.ads.example");
    assert!(ok.categories().is_empty());
    assert_eq!(ok.exceptions(), CatSet::single(3));
    assert!(ok.hits.iter().any(|h| h.exception && h.source == 2));

    assert_eq!(
        lists
            .urls
            .lookup("http://www.free.example/adult/x")
            .categories(),
        CatSet::single(1)
    );
    assert_eq!(
        lists
            .urls
            .lookup("http://pics.example/nsfw/a.jpg")
            .categories(),
        CatSet::single(1)
    );
    assert_eq!(
        lists.urls.lookup("http://ex.com/PornTube").categories(),
        CatSet::single(1)
    );
    assert!(lists.urls.lookup("http://free.example/adultery").is_empty());

    assert_eq!(
        lists.ips.lookup("10.9.9.9".parse().unwrap()).categories(),
        CatSet::single(4)
    );
    assert_eq!(
        lists.ips.lookup("1.0.0.1".parse().unwrap()).categories(),
        CatSet::single(4)
    );
    assert!(lists.ips.lookup("1.0.0.2".parse().unwrap()).is_empty());

    let r = &lists.report;
    assert!(!r.from_cache);
    assert_eq!(r.sources.len(), 4);
    let ut1 = &r.sources[0];
    assert_eq!(
        (ut1.domains, ut1.urls, ut1.expressions, ut1.bad_lines),
        (2, 2, 1, 2)
    );
    assert_eq!(ut1.usage, vec!["black", "adult"]);
    let bad: Vec<String> = ut1.first_bad.iter().map(ToString::to_string).collect();
    let dir = tmp.path().join("ut1/adult");
    assert_eq!(
        bad[0],
        format!(
            "{}:5: invalid character '%' in name \"bad%name.com\"",
            dir.join("domains").display()
        )
    );
    assert!(
        bad[1].starts_with(&format!(
            "{}:2: invalid regular expression: ",
            dir.join("expressions").display()
        )),
        "{}",
        bad[1]
    );
    let hosts = &r.sources[1];
    assert_eq!((hosts.domains, hosts.bad_lines), (2, 1));
    assert_eq!(hosts.first_bad[0].line, 3);
    let ads = &r.sources[2];
    assert_eq!((ads.domains, ads.bad_lines), (2, 1));
    assert!(ads.first_bad[0].reason.starts_with("path rule"));
    let tor = &r.sources[3];
    assert_eq!((tor.ips, tor.bad_lines), (3, 1));
    assert_eq!(
        tor.first_bad[0].to_string(),
        format!(
            "{}:4: invalid address or network \"nope\"",
            specs[3].path.display()
        )
    );
    assert!(lists.memory_bytes() > 0);
}

#[test]
fn ut1_directory_with_missing_files_is_fine() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("malware");
    write(&dir.join("urls"), b"evil.example/x\n");
    let lists = Lists::compile(&[spec(0, &dir, Format::Ut1, 0)], None).unwrap();
    assert_eq!(lists.report.sources[0].urls, 1);
    assert_eq!(lists.report.sources[0].domains, 0);
    assert!(lists.domains.is_empty());
}

#[test]
fn required_missing_source_is_an_error_optional_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.txt");
    let err = Lists::compile(&[spec(0, &missing, Format::Domains, 0)], None).unwrap_err();
    assert!(matches!(err, ListError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read list", missing.display()))
    );

    let err =
        Lists::compile(&[spec(0, &tmp.path().join("nodir"), Format::Ut1, 0)], None).unwrap_err();
    assert!(matches!(err, ListError::Read { .. }), "{err}");
    write(&tmp.path().join("file"), b"x.com\n");
    let err =
        Lists::compile(&[spec(0, &tmp.path().join("file"), Format::Ut1, 0)], None).unwrap_err();
    assert!(matches!(err, ListError::NotADirectory { .. }), "{err}");

    let good = tmp.path().join("good.txt");
    write(&good, b"good.example\n");
    let mut opt = spec(0, &missing, Format::Domains, 0);
    opt.optional = true;
    let mut opt_dir = spec(1, &tmp.path().join("nodir"), Format::Ut1, 1);
    opt_dir.optional = true;
    let lists = Lists::compile(&[opt, opt_dir, spec(2, &good, Format::Domains, 2)], None).unwrap();
    let skipped = lists.report.sources[0].skipped.as_deref().unwrap();
    assert!(
        skipped.starts_with(&missing.display().to_string()),
        "{skipped}"
    );
    assert!(lists.report.sources[1].skipped.is_some());
    assert!(lists.report.sources[2].skipped.is_none());
    assert_eq!(
        lists.domains.lookup("good.example").categories(),
        CatSet::single(2)
    );
}

#[test]
fn category_out_of_range_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("d.txt");
    write(&f, b"a.com\n");
    let err = Lists::compile(&[spec(0, &f, Format::Domains, 128)], None).unwrap_err();
    assert!(matches!(err, ListError::CategoryOutOfRange { .. }));
}

#[test]
fn exception_source_makes_every_entry_an_exception() {
    let tmp = tempfile::tempdir().unwrap();
    let block = tmp.path().join("block.txt");
    let allow = tmp.path().join("allow.txt");
    write(&block, b"social.example\n");
    write(&allow, b"edu.social.example\n");
    let mut allow_spec = spec(1, &allow, Format::Domains, 5);
    allow_spec.exception = true;
    let lists = Lists::compile(&[spec(0, &block, Format::Domains, 5), allow_spec], None).unwrap();
    assert_eq!(
        lists.domains.lookup("www.social.example").categories(),
        CatSet::single(5)
    );
    let m = lists.domains.lookup("x.edu.social.example");
    assert!(m.categories().is_empty());
    assert_eq!(m.exceptions(), CatSet::single(5));
}

#[test]
fn cache_round_trip_invalidation_and_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    let specs = fixture(tmp.path());

    let first = Lists::compile(&specs, Some(&cache_dir)).unwrap();
    assert!(!first.report.from_cache);
    let cache_file = cache::path(&cache_dir);
    assert!(cache_file.exists());

    let second = Lists::compile(&specs, Some(&cache_dir)).unwrap();
    assert!(second.report.from_cache);
    assert_eq!(second.domains.len(), first.domains.len());
    assert_eq!(
        second.domains.lookup("a.porn.example").categories(),
        CatSet::single(1)
    );
    assert_eq!(
        second.domains.lookup("ok.ads.example").exceptions(),
        CatSet::single(3)
    );
    // The report is the same, bad lines of the (unparsed) domain files included.
    for (a, b) in first.report.sources.iter().zip(&second.report.sources) {
        assert_eq!(
            (a.domains, a.urls, a.expressions, a.ips, a.bad_lines),
            (b.domains, b.urls, b.expressions, b.ips, b.bad_lines)
        );
        assert_eq!(a.first_bad, b.first_bad);
    }

    // A changed spec (category) invalidates the cache.
    let mut changed = specs.clone();
    changed[1].category = 7;
    let third = Lists::compile(&changed, Some(&cache_dir)).unwrap();
    assert!(!third.report.from_cache);
    assert_eq!(
        third.domains.lookup("tracker.example").categories(),
        CatSet::single(7)
    );

    // A changed list file invalidates it too (size changes).
    write(
        &specs[1].path,
        b"0.0.0.0 tracker.example torrent.example new.example\n",
    );
    let fourth = Lists::compile(&specs, Some(&cache_dir)).unwrap();
    assert!(!fourth.report.from_cache);
    assert!(!fourth.domains.lookup("new.example").is_empty());
    assert!(
        Lists::compile(&specs, Some(&cache_dir))
            .unwrap()
            .report
            .from_cache
    );

    // Flip one byte in the payload: the checksum refuses it, the lists are parsed
    // again and the cache rewritten.
    let mut bytes = fs::read(&cache_file).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x55;
    fs::write(&cache_file, &bytes).unwrap();
    let fifth = Lists::compile(&specs, Some(&cache_dir)).unwrap();
    assert!(!fifth.report.from_cache);
    assert!(!fifth.domains.lookup("new.example").is_empty());
    assert!(
        Lists::compile(&specs, Some(&cache_dir))
            .unwrap()
            .report
            .from_cache
    );

    // Truncated or garbage files are ignored the same way.
    fs::write(&cache_file, &bytes[..100]).unwrap();
    assert!(
        !Lists::compile(&specs, Some(&cache_dir))
            .unwrap()
            .report
            .from_cache
    );
    fs::write(&cache_file, b"garbage").unwrap();
    assert!(
        !Lists::compile(&specs, Some(&cache_dir))
            .unwrap()
            .report
            .from_cache
    );
    assert!(
        Lists::compile(&specs, Some(&cache_dir))
            .unwrap()
            .report
            .from_cache
    );
}

#[test]
fn unwritable_cache_dir_does_not_fail_the_load() {
    let tmp = tempfile::tempdir().unwrap();
    let specs = fixture(tmp.path());
    let blocker = tmp.path().join("blocker");
    write(&blocker, b"a file where the cache directory should be");
    let lists = Lists::compile(&specs, Some(&blocker.join("cache"))).unwrap();
    assert!(!lists.report.from_cache);
    assert!(!lists.domains.is_empty());
}

#[test]
fn locate_entries_in_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let specs = fixture(tmp.path());
    let ut1 = &specs[0];
    let dir = &ut1.path;
    assert_eq!(
        locate_entry(ut1, "WWW.sexy.example."),
        Some((dir.join("domains"), 2))
    );
    assert_eq!(
        locate_entry(ut1, "porn.example"),
        Some((dir.join("domains"), 1))
    );
    assert_eq!(
        locate_entry(ut1, "pics.example/nsfw/"),
        Some((dir.join("urls"), 2))
    );
    assert_eq!(
        locate_entry(ut1, "(xxx|porn)tube"),
        Some((dir.join("expressions"), 1))
    );
    assert_eq!(locate_entry(ut1, "absent.example"), None);
    assert_eq!(
        locate_entry(&specs[1], "torrent.example"),
        Some((specs[1].path.clone(), 2))
    );
    assert_eq!(
        locate_entry(&specs[2], "ok.ads.example"),
        Some((specs[2].path.clone(), 3))
    );
    assert_eq!(
        locate_entry(&specs[3], "10.0.0.0/8"),
        Some((specs[3].path.clone(), 2))
    );
    assert_eq!(
        locate_entry(&specs[3], "1.0.0.1"),
        Some((specs[3].path.clone(), 1))
    );
    assert_eq!(
        locate_entry(&specs[3], "2001:db8::/32"),
        Some((specs[3].path.clone(), 3))
    );

    // An explain trace: from a hit back to its line.
    let lists = Lists::compile(&specs, None).unwrap();
    let host = "img.www.sexy.example";
    let m = lists.domains.lookup(host);
    let entry = &host[host.len() - usize::from(m.hits[0].suffix_len)..];
    assert_eq!(locate_entry(ut1, entry), Some((dir.join("domains"), 2)));
    let m = lists.urls.lookup("http://pics.example/nsfw/x");
    assert_eq!(
        locate_entry(ut1, lists.urls.entry_text(m.hits[0].kind)),
        Some((dir.join("urls"), 2))
    );
}
