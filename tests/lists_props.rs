//! End-to-end property test: random lists written to files in every domain format,
//! compiled by `Lists::compile`, must answer exactly like a naive suffix scan.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use proptest::prelude::*;
use vigie::lists::{CatSet, CategoryId, Format, Lists, SourceSpec};

fn label() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "ab", "com", "net", "x-y", "q_1", "7"])
        .prop_map(String::from)
}

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..5).prop_map(|v| v.join("."))
}

/// Writes `names` in `format`, with the noise real lists carry: random case, a
/// trailing dot, `*.`, comments and CRLF.
fn render(format: Format, names: &[(String, u8)]) -> String {
    let mut out = String::from("\u{feff}# generated\r\n");
    for (n, noise) in names {
        let mut n = if noise & 1 == 1 {
            n.to_ascii_uppercase()
        } else {
            n.clone()
        };
        if noise & 2 == 2 {
            n.push('.');
        }
        let eol = if noise & 4 == 4 { "\r\n" } else { "\n" };
        let _ = match format {
            Format::Hosts => write!(out, "0.0.0.0 {n}{eol}"),
            Format::Adblock => write!(out, "||{n}^{eol}"),
            _ if noise & 8 == 8 => write!(out, "*.{n}{eol}"),
            _ => write!(out, "{n}{eol}"),
        };
    }
    out
}

fn naive(lists: &[(CategoryId, Vec<String>)], host: &str) -> CatSet {
    let mut out = CatSet::EMPTY;
    for (cat, names) in lists {
        if names
            .iter()
            .any(|e| host == e || host.ends_with(&format!(".{e}")))
        {
            out.insert(*cat);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn compiled_lists_match_naive_suffix_scan(
        sources in prop::collection::vec(prop::collection::vec((name(), any::<u8>()), 0..20), 1..4),
        hosts in prop::collection::vec(name(), 1..20),
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        let formats = [Format::Domains, Format::Hosts, Format::Adblock];
        let mut specs = Vec::new();
        let mut reference = Vec::new();
        for (i, names) in sources.iter().enumerate() {
            let format = formats[i % formats.len()];
            let path = dir.path().join(format!("list{i}.txt"));
            std::fs::write(&path, render(format, names)).expect("write list");
            specs.push(SourceSpec { id: i as u16, path, format, category: i as u16, optional: false, exception: false });
            let distinct: BTreeSet<String> = names.iter().map(|(n, _)| n.clone()).collect();
            reference.push((i as CategoryId, distinct.into_iter().collect::<Vec<_>>()));
        }
        let lists = Lists::compile(&specs, None).expect("compile");
        for r in &lists.report.sources {
            prop_assert_eq!(r.bad_lines, 0, "{:?}", r.first_bad);
        }
        for h in &hosts {
            prop_assert_eq!(lists.domains.lookup(h).categories(), naive(&reference, h), "host {}", h);
        }
    }
}
