//! Resident memory of the compiled `DomainSet`, measured for real: `VmRSS` from
//! `/proc/self/status` before and after, not only the computed heap size.
//!
//! Two fresh processes are measured, because an allocator keeps some freed memory
//! and a second measurement in the same process would be skewed:
//! - build: parse the text list, build, write the cache (RSS after the build, its
//!   transients freed, and the peak `VmHWM` during it);
//! - cache: load the compiled set from that cache (the steady state of a gateway
//!   that restarts with unchanged lists), plus a lookup latency check.
//!
//! Same domain list as `benches/lists.rs` (`VIGIE_BENCH_DOMAINS` or
//! `target/bench/domains-5m.txt`). Run: `cargo bench --bench lists_mem`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use vigie::lists::{Format, Lists, SourceSpec};

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn domains_file() -> PathBuf {
    match std::env::var("VIGIE_BENCH_DOMAINS") {
        Ok(p) => PathBuf::from(p),
        Err(_) => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/domains-5m.txt"),
    }
}

fn specs(file: &Path) -> Vec<SourceSpec> {
    vec![SourceSpec {
        id: 0,
        path: file.to_path_buf(),
        format: Format::Domains,
        category: 0,
        optional: false,
        exception: false,
    }]
}

fn measure(mode: &str, file: &Path, cache: &Path) {
    let specs = specs(file);
    let before = status_kib("VmRSS:");
    let t = Instant::now();
    let lists = match Lists::compile(&specs, Some(cache)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let elapsed = t.elapsed();
    let after = status_kib("VmRSS:");
    let peak = status_kib("VmHWM:");
    let n = lists.domains.len() as f64;
    let rss = (after.saturating_sub(before) * 1024) as f64;
    println!(
        "{mode}: {} names in {:.0} ms (from_cache={}), RSS +{:.1} MiB = {:.2} B/name, \
         computed {:.2} B/name, peak RSS {:.1} MiB",
        lists.domains.len(),
        elapsed.as_secs_f64() * 1e3,
        lists.report.from_cache,
        rss / 1048576.0,
        rss / n,
        lists.domains.memory_bytes() as f64 / n,
        peak as f64 / 1024.0,
    );
    if mode == "cache" {
        // A latency sanity check without criterion: median of 1 M single lookups,
        // each timed in batches of 64 to stay above the clock's resolution.
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let names: Vec<String> = text
            .lines()
            .step_by(7)
            .take(1 << 16)
            .map(|l| format!("www.{l}"))
            .collect();
        let mut samples = Vec::new();
        for chunk in names.chunks(64).cycle().take(16384) {
            let t = Instant::now();
            for h in chunk {
                black_box(lists.domains.lookup(black_box(h)));
            }
            samples.push(t.elapsed().as_nanos() as f64 / chunk.len() as f64);
        }
        samples.sort_by(f64::total_cmp);
        println!(
            "cache: lookup median {:.0} ns (hosts = www. + listed name)",
            samples[samples.len() / 2]
        );
    }
    drop(black_box(lists));
}

fn main() {
    let file = domains_file();
    if !file.exists() {
        eprintln!(
            "{} is absent: run ../shared/tools/make-bench-data domains 5000000 target/bench/domains-5m.txt \
             or set VIGIE_BENCH_DOMAINS",
            file.display()
        );
        return;
    }
    let cache = std::env::temp_dir().join(format!("vigie-lists-mem-{}", std::process::id()));
    let cache = std::env::var("VIGIE_MEM_CACHE")
        .map(PathBuf::from)
        .unwrap_or(cache);
    if let Ok(mode) = std::env::var("VIGIE_MEM_MODE") {
        measure(&mode, &file, &cache);
        return;
    }
    let _ = std::fs::remove_dir_all(&cache);
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    for mode in ["build", "cache"] {
        let status = std::process::Command::new(&exe)
            .env("VIGIE_MEM_MODE", mode)
            .env("VIGIE_MEM_CACHE", &cache)
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("{mode} measurement failed: {status:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&cache);
}
