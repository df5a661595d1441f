//! Safe-search hosts: which names a profile with safe search rewrites, and to what.
//! The DNS filter answers them with a CNAME to the safe host; the proxy uses the
//! same mapping.

use crate::config::SafeSearch;

const YOUTUBE: &[&str] = &[
    "www.youtube.com",
    "m.youtube.com",
    "youtubei.googleapis.com",
    "youtube.googleapis.com",
    "www.youtube-nocookie.com",
];

/// The safe host `host` (normalised) must be served through, if any.
pub fn safe_search_target(host: &str, level: SafeSearch) -> Option<&'static str> {
    if level == SafeSearch::Off {
        return None;
    }
    if YOUTUBE.contains(&host) {
        return Some(match level {
            SafeSearch::Strict => "restrict.youtube.com",
            _ => "restrictmoderate.youtube.com",
        });
    }
    let bare = host.strip_prefix("www.").unwrap_or(host);
    if is_google_search(bare) {
        return Some("forcesafesearch.google.com");
    }
    match bare {
        "bing.com" => Some("strict.bing.com"),
        "duckduckgo.com" => Some("safe.duckduckgo.com"),
        _ => None,
    }
}

/// `google.com`, `google.ca`, `google.fr`, `google.co.uk`, `google.com.br`,
/// `google.cat` … : Google's search front-ends (country domains follow these shapes).
fn is_google_search(bare: &str) -> bool {
    let Some(tld) = bare.strip_prefix("google.") else {
        return false;
    };
    let cc = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_lowercase());
    tld == "com"
        || tld == "cat"
        || cc(tld)
        || tld.strip_prefix("co.").is_some_and(cc)
        || tld.strip_prefix("com.").is_some_and(cc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_and_youtube() {
        let s = SafeSearch::Strict;
        for h in [
            "google.com",
            "www.google.ca",
            "www.google.fr",
            "google.co.uk",
            "www.google.com.br",
        ] {
            assert_eq!(
                safe_search_target(h, s),
                Some("forcesafesearch.google.com"),
                "{h}"
            );
        }
        assert_eq!(safe_search_target("forcesafesearch.google.com", s), None);
        assert_eq!(safe_search_target("mail.google.com", s), None);
        assert_eq!(safe_search_target("google.example", s), None);
        assert_eq!(
            safe_search_target("www.bing.com", s),
            Some("strict.bing.com")
        );
        assert_eq!(
            safe_search_target("duckduckgo.com", s),
            Some("safe.duckduckgo.com")
        );
        assert_eq!(
            safe_search_target("www.youtube.com", s),
            Some("restrict.youtube.com")
        );
        assert_eq!(
            safe_search_target("m.youtube.com", SafeSearch::Moderate),
            Some("restrictmoderate.youtube.com")
        );
        assert_eq!(safe_search_target("www.google.com", SafeSearch::Off), None);
    }
}
