//! The lists shipped in `blocklists/` load without error or bad line, and answer for
//! entries taken from the files themselves (so the test follows list updates).

use std::path::{Path, PathBuf};

use vigie::lists::{Format, Lists, SourceSpec, locate_entry};

fn blocklists() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("blocklists")
}

fn shipped_specs() -> Vec<SourceSpec> {
    let root = blocklists();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("ut1"))
        .expect("blocklists/ut1")
        .filter_map(|d| d.ok().map(|d| d.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut specs: Vec<SourceSpec> = dirs
        .into_iter()
        .enumerate()
        .map(|(i, path)| SourceSpec {
            id: i as u16,
            path,
            format: Format::Ut1,
            category: i as u16,
            optional: false,
            exception: false,
        })
        .collect();
    let next = specs.len() as u16;
    specs.push(SourceSpec {
        id: next,
        path: root.join("p2p/torrent-sites.hosts"),
        format: Format::Hosts,
        category: next,
        optional: false,
        exception: false,
    });
    for (k, file) in [
        "tor-exit-nodes.txt",
        "tor-nodes.txt",
        "vpn-ipv4.txt",
        "vpn-ipv6.txt",
    ]
    .iter()
    .enumerate()
    {
        specs.push(SourceSpec {
            id: next + 1 + k as u16,
            path: root.join("ip").join(file),
            format: Format::Cidr,
            category: next + 1,
            optional: false,
            exception: false,
        });
    }
    specs
}

/// The first entry of a list file and its 1-based line number.
fn first_entry(path: &Path) -> (usize, String) {
    std::fs::read_to_string(path)
        .expect("list file")
        .lines()
        .enumerate()
        .find(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, l)| (i + 1, l.trim().to_string()))
        .expect("a non-comment line")
}

fn first_line(path: &Path) -> String {
    first_entry(path).1
}

#[test]
fn shipped_lists_load_cleanly_and_match() {
    let specs = shipped_specs();
    let lists = Lists::compile(&specs, None).expect("shipped lists compile");
    for r in &lists.report.sources {
        assert_eq!(r.bad_lines, 0, "{}: {:?}", r.path.display(), r.first_bad);
        assert!(r.skipped.is_none());
        assert!(
            r.domains + r.urls + r.expressions + r.ips > 0,
            "{} is empty",
            r.path.display()
        );
    }
    assert!(lists.domains.len() > 100_000);
    assert!(lists.urls.len() > 10_000);
    assert!(lists.ips.len() > 1_000);

    let games = specs
        .iter()
        .find(|s| s.path.ends_with("games"))
        .expect("games category");
    let (line, name) = first_entry(&games.path.join("domains"));
    let m = lists.domains.lookup(&format!("www.{name}"));
    assert!(m.categories().contains(games.category), "{name}");
    assert_eq!(
        locate_entry(games, &name),
        Some((games.path.join("domains"), line))
    );

    let url = first_line(&games.path.join("urls"));
    let m = lists.urls.lookup(&format!("http://{url}/more?x=1"));
    assert!(m.categories().contains(games.category), "{url}");

    let tor = specs
        .iter()
        .find(|s| s.path.ends_with("tor-nodes.txt"))
        .expect("tor list");
    let addr = first_line(&tor.path);
    let m = lists.ips.lookup(addr.parse().expect("an address"));
    assert!(m.categories().contains(tor.category), "{addr}");

    let p2p = specs
        .iter()
        .find(|s| s.format == Format::Hosts)
        .expect("hosts list");
    let hosts_line = first_line(&p2p.path);
    let host = hosts_line.split_whitespace().nth(1).expect("a name");
    assert!(
        lists
            .domains
            .lookup(host)
            .categories()
            .contains(p2p.category),
        "{host}"
    );

    assert!(lists.domains.lookup("example.invalid").is_empty());
    assert!(lists.urls.lookup("http://example.invalid/").is_empty());
}

#[test]
fn shipped_lists_round_trip_through_the_cache() {
    let specs = shipped_specs();
    let cache = tempfile::tempdir().expect("temp dir");
    let built = Lists::compile(&specs, Some(cache.path())).expect("compile");
    let cached = Lists::compile(&specs, Some(cache.path())).expect("compile from cache");
    assert!(!built.report.from_cache);
    assert!(cached.report.from_cache);
    assert_eq!(built.domains.len(), cached.domains.len());
    let games = specs
        .iter()
        .find(|s| s.path.ends_with("games"))
        .expect("games category");
    let name = first_line(&games.path.join("domains"));
    assert_eq!(
        built.domains.lookup(&name).categories(),
        cached.domains.lookup(&name).categories()
    );
}
