//! Criterion benchmarks of the compiled lists: `DomainSet` lookups (3-label hit and
//! miss), build from text, cache load, `IpSet` lookups at 100,000 prefixes and
//! `UrlSet` checks with the real UT1 data.
//!
//! The domain list is read from `VIGIE_BENCH_DOMAINS`, else from
//! `target/bench/domains-5m.txt` (made by `../shared/tools/make-bench-data domains
//! 5000000 target/bench/domains-5m.txt` when the tool is there), else a synthetic
//! 300,000-name list is used so quick runs work anywhere. Generated data stays under
//! `target/` and is never committed. Figures and commands: benches/RESULTS.md.
//! `VIGIE_BENCH_QUICK=N` replaces criterion for the lookups by N timed rounds (see
//! `quick_lookups`) and skips the rest.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vigie::lists::{Format, Lists, SourceSpec};

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// Deterministic xorshift, so every run benchmarks the same queries.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn label(&mut self) -> String {
        const SYLL: [&str; 16] = [
            "ka", "lo", "mi", "ne", "ro", "sa", "ti", "vu", "za", "be", "co", "da", "fi", "go",
            "hu", "je",
        ];
        let n = 2 + self.next() % 3;
        (0..n).map(|_| SYLL[(self.next() % 16) as usize]).collect()
    }
}

/// The domain list to benchmark, generating it when possible.
fn domains_file() -> PathBuf {
    if let Ok(p) = std::env::var("VIGIE_BENCH_DOMAINS") {
        return PathBuf::from(p);
    }
    let target = Path::new(MANIFEST).join("target/bench/domains-5m.txt");
    if target.exists() {
        return target;
    }
    let tool = Path::new(MANIFEST).join("../shared/tools/make-bench-data");
    if tool.exists() {
        let _ = std::fs::create_dir_all(target.parent().unwrap_or(Path::new(".")));
        eprintln!("generating {} (once)…", target.display());
        let ok = std::process::Command::new(&tool)
            .args(["domains", "5000000"])
            .arg(&target)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return target;
        }
    }
    let synthetic = Path::new(MANIFEST).join("target/bench/domains-synthetic-300k.txt");
    if !synthetic.exists() {
        let mut rng = Rng(0x5EED);
        let mut text = String::new();
        for i in 0..300_000 {
            text.push_str(&format!(
                "{}{i}.{}\n",
                rng.label(),
                ["com", "net", "org", "fr"][i % 4]
            ));
        }
        let _ = std::fs::create_dir_all(synthetic.parent().unwrap_or(Path::new(".")));
        std::fs::write(&synthetic, text).expect("write synthetic bench list");
    }
    synthetic
}

fn domain_spec(path: &Path) -> Vec<SourceSpec> {
    vec![SourceSpec {
        id: 0,
        path: path.to_path_buf(),
        format: Format::Domains,
        category: 0,
        optional: false,
        exception: false,
    }]
}

fn bench_domains(c: &mut Criterion) {
    let file = domains_file();
    let specs = domain_spec(&file);
    let lists = Lists::compile(&specs, None).expect("compile bench list");
    let set = &lists.domains;
    eprintln!(
        "domains: {} names from {}, {} heap bytes = {:.2} bytes/name",
        set.len(),
        file.display(),
        set.memory_bytes(),
        set.memory_bytes() as f64 / set.len() as f64
    );

    // Queries spread over the whole list (so the table is read cold, as in real
    // traffic), each turned into a 3-label host: `www.` + a 2-label listed name.
    let text = std::fs::read_to_string(&file).expect("read bench list");
    let two_labels: Vec<&str> = text
        .lines()
        .filter(|l| l.matches('.').count() == 1)
        .collect();
    let mut rng = Rng(42);
    const QUERIES: usize = 1 << 20;
    let hits: Vec<String> = (0..QUERIES)
        .map(|_| {
            format!(
                "www.{}",
                two_labels[(rng.next() as usize) % two_labels.len()]
            )
        })
        .collect();
    let misses: Vec<String> = (0..QUERIES)
        .map(|_| format!("www.{}{}.com", rng.label(), rng.next() % 1_000_000_000))
        .collect();
    assert!(hits.iter().take(1000).all(|h| !set.lookup(h).is_empty()));
    let false_hits = misses
        .iter()
        .take(10_000)
        .filter(|h| !set.lookup(h).is_empty())
        .count();
    eprintln!("miss queries that are listed after all: {false_hits}/10000");

    if let Some(rounds) = std::env::var("VIGIE_BENCH_QUICK")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        quick_lookups(set, &hits, &misses, rounds.max(1));
        return;
    }
    let mut g = c.benchmark_group("domains");
    g.throughput(Throughput::Elements(1));
    for (name, queries) in [
        ("lookup_hit_3labels", &hits),
        ("lookup_miss_3labels", &misses),
    ] {
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) & (QUERIES - 1);
                black_box(&set.lookup(black_box(&queries[i])));
            })
        });
    }
    g.finish();
    drop(lists);

    let mut g = c.benchmark_group("domains_build");
    g.sample_size(10).measurement_time(Duration::from_secs(40));
    g.bench_function("compile_from_text", |b| {
        b.iter(|| black_box(Lists::compile(&specs, None).expect("compile")))
    });
    let cache = tempfile::tempdir().expect("temp dir");
    Lists::compile(&specs, Some(cache.path())).expect("compile and write cache");
    g.bench_function("compile_from_cache", |b| {
        b.iter(|| {
            let l = Lists::compile(&specs, Some(cache.path())).expect("compile");
            assert!(l.report.from_cache);
            black_box(l)
        })
    });
    g.finish();
}

/// `VIGIE_BENCH_QUICK=N`: N rounds of 2^18 hits then 2^18 misses, printing the
/// fastest and the median round. On a shared 2-core machine the fastest of a few
/// rounds is the figure least disturbed by the neighbours, and runs of two builds
/// can be alternated quickly to compare them under the same load.
fn quick_lookups(set: &vigie::lists::DomainSet, hits: &[String], misses: &[String], rounds: usize) {
    let mut per_kind = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (times, queries) in per_kind.iter_mut().zip([hits, misses]) {
            let t = std::time::Instant::now();
            for q in queries.iter().take(1 << 18) {
                // By reference: `black_box(value)` would add a copy of the result
                // that no real caller makes (policy reads it in place).
                black_box(&set.lookup(black_box(q)));
            }
            times.push(t.elapsed().as_nanos() as f64 / f64::from(1 << 18));
        }
    }
    for (kind, times) in ["hit", "miss"].iter().zip(&mut per_kind) {
        times.sort_by(f64::total_cmp);
        println!(
            "quick {kind}_3labels: fastest round {:.0} ns, median round {:.0} ns ({rounds} rounds)",
            times[0],
            times[times.len() / 2]
        );
    }
}

fn bench_ips(c: &mut Criterion) {
    // 100,000 prefixes shaped like real block lists: mostly /32 relays, some /24 and
    // /16 provider ranges, a tenth IPv6.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ips.txt");
    let mut rng = Rng(7);
    let mut text = String::new();
    for i in 0..100_000 {
        let r = rng.next();
        if i % 10 == 0 {
            text.push_str(&format!(
                "2001:{:x}:{:x}::/48\n",
                (r >> 16) & 0xffff,
                r & 0xffff
            ));
        } else {
            let a = (r as u32).to_be_bytes();
            let len = [32, 32, 32, 32, 24, 24, 16][(r >> 40) as usize % 7];
            text.push_str(&format!("{}.{}.{}.{}/{len}\n", a[0], a[1], a[2], a[3]));
        }
    }
    std::fs::write(&path, text).expect("write ip list");
    let specs = vec![SourceSpec {
        id: 0,
        path,
        format: Format::Cidr,
        category: 0,
        optional: false,
        exception: false,
    }];
    let lists = Lists::compile(&specs, None).expect("compile ips");
    eprintln!(
        "ips: {} prefixes after aggregation, {} heap bytes",
        lists.ips.len(),
        lists.ips.memory_bytes()
    );
    let queries: Vec<IpAddr> = (0..(1 << 16))
        .map(|i| {
            let r = rng.next();
            if i % 10 == 0 {
                IpAddr::from((u128::from(r) << 64 | u128::from(rng.next())).to_be_bytes())
            } else {
                IpAddr::from((r as u32).to_be_bytes())
            }
        })
        .collect();
    let mut g = c.benchmark_group("ips");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("lookup_100k_prefixes", |b| {
        b.iter(|| {
            i = (i + 1) & ((1 << 16) - 1);
            black_box(lists.ips.lookup(black_box(queries[i])))
        })
    });
    g.finish();
}

fn bench_urls(c: &mut Criterion) {
    let ut1 = Path::new(MANIFEST).join("blocklists/ut1");
    let Ok(dirs) = std::fs::read_dir(&ut1) else {
        eprintln!("urls: {} absent, skipped", ut1.display());
        return;
    };
    let mut categories: Vec<PathBuf> = dirs
        .filter_map(|d| d.ok())
        .map(|d| d.path())
        .filter(|p| p.is_dir())
        .collect();
    categories.sort();
    let specs: Vec<SourceSpec> = categories
        .iter()
        .enumerate()
        .map(|(i, p)| SourceSpec {
            id: i as u16,
            path: p.clone(),
            format: Format::Ut1,
            category: i as u16,
            optional: false,
            exception: false,
        })
        .collect();
    let lists = Lists::compile(&specs, None).expect("compile UT1");
    eprintln!(
        "urls: {} entries+expressions from {} UT1 categories, ~{} heap bytes",
        lists.urls.len(),
        specs.len(),
        lists.urls.memory_bytes()
    );

    // Real-looking traffic: a third of the URLs on listed hosts (listed paths and
    // other paths), the rest on unlisted hosts with ordinary paths.
    let mut entries: Vec<String> = Vec::new();
    for p in &categories {
        if let Ok(t) = std::fs::read_to_string(p.join("urls")) {
            entries.extend(t.lines().filter(|l| !l.is_empty()).map(String::from));
        }
    }
    let mut rng = Rng(99);
    let paths = [
        "/",
        "/index.html",
        "/search?q=cats&lang=fr",
        "/images/logo.png",
        "/watch?v=abc123",
        "/a/b/c/d.js",
    ];
    let urls: Vec<String> = (0..(1 << 16))
        .map(|i| {
            let path = paths[(rng.next() % paths.len() as u64) as usize];
            match (i % 3, entries.is_empty()) {
                (0, false) => format!("http://{}", entries[(rng.next() as usize) % entries.len()]),
                (1, false) => {
                    let e = &entries[(rng.next() as usize) % entries.len()];
                    format!("https://www.{}{path}", e.split('/').next().unwrap_or(e))
                }
                _ => format!("http://www.{}.com{path}", rng.label()),
            }
        })
        .collect();
    let blocked = urls
        .iter()
        .filter(|u| !lists.urls.lookup(u).is_empty())
        .count();
    eprintln!("urls: {blocked}/{} benchmark URLs match", urls.len());

    let mut g = c.benchmark_group("urls");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("lookup_ut1", |b| {
        b.iter(|| {
            i = (i + 1) & ((1 << 16) - 1);
            black_box(lists.urls.lookup(black_box(&urls[i])))
        })
    });
    g.finish();
}

criterion_group!(benches, bench_domains, bench_ips, bench_urls);
criterion_main!(benches);
