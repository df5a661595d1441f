//! Request paths in one spelling, so an allow override, a deny override or a UT1
//! `urls` entry cannot be stepped around by writing the same path another way:
//! `/edu/../jeux`, `/%6Aeux`, `/./jeux` or `//jeux`.
//!
//! Two forms come out of a request's path (the query is left as sent):
//! - the **forwarded** path: RFC 3986 §6.2.2 normalisation — percent-encoded
//!   unreserved characters decoded (`%6A` → `j`), the hex digits of the other
//!   escapes upper-cased, then dot segments removed (§5.2.4). Every origin must
//!   treat it as the same resource, and it is what vigie sends: what was decided is
//!   what is fetched, whatever the origin would have made of `..`;
//! - the **policy** path: the forwarded one with runs of `/` merged, because many
//!   origins (nginx's default, most frameworks) serve `//jeux` as `/jeux`. Merging
//!   is not sent upstream (`https://web.archive.org/web/2020/https://x` needs its
//!   `//`); it only makes matching see what such an origin would serve.
//!
//! Encoded slashes (`%2F`) stay encoded: origins disagree on them, and a path with
//! one does not continue an entry's prefix at a segment boundary.

use std::borrow::Cow;

/// The forwarded path-and-query (see the module comment). Borrowed when already
/// normal, which is nearly every request.
pub fn normalize(path_and_query: &str) -> Cow<'_, str> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    if !path.contains('%') && !has_dot_segment(path) {
        return Cow::Borrowed(path_and_query);
    }
    let decoded = decode_unreserved(path);
    let mut out = remove_dot_segments(&decoded);
    if out.is_empty() {
        out.push('/');
    }
    out.push_str(query);
    Cow::Owned(out)
}

/// The policy's path-and-query: `forwarded` (an output of `normalize`) with every
/// run of `/` in the path merged into one.
pub fn for_policy(forwarded: &str) -> Cow<'_, str> {
    let path_end = forwarded.find('?').unwrap_or(forwarded.len());
    if !forwarded[..path_end].contains("//") {
        return Cow::Borrowed(forwarded);
    }
    let mut out = String::with_capacity(forwarded.len());
    let mut prev_slash = false;
    for c in forwarded[..path_end].chars() {
        if c == '/' && prev_slash {
            continue;
        }
        prev_slash = c == '/';
        out.push(c);
    }
    out.push_str(&forwarded[path_end..]);
    Cow::Owned(out)
}

/// Whether some segment of `path` is `.` or `..` (before decoding: `%2E` is found
/// by `normalize` through its `%` test).
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes of unreserved characters and upper-cases the hex of the
/// others; a `%` not followed by two hex digits is kept as it is.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let (Some(h), Some(l)) = (hex(h), hex(l))
        {
            let b = h << 4 | l;
            if is_unreserved(b) {
                out.push(char::from(b));
            } else {
                out.push('%');
                out.push(char::from(bytes[i + 1]).to_ascii_uppercase());
                out.push(char::from(bytes[i + 2]).to_ascii_uppercase());
            }
            i += 3;
            continue;
        }
        // Copy up to the next `%` in one go (a byte search: `i + 1` may fall inside
        // a multi-byte character, a `%` never does).
        let next = bytes[i + 1..]
            .iter()
            .position(|&b| b == b'%')
            .map_or(path.len(), |j| i + 1 + j);
        out.push_str(&path[i..next]);
        i = next;
    }
    out
}

/// RFC 3986 §5.2.4 on an absolute path: `.` segments dropped, `..` removes the
/// segment before it (never climbing above the root).
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    // `split` of "/a/b" gives ["", "a", "b"]: the leading "" is the root.
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate().skip(1) {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                kept.pop();
                trailing_slash = i == last;
            }
            s => {
                kept.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &kept {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/a/b", "/a/b/", "/a?x=../y", "/a.b/c..d/.e"] {
            assert!(matches!(normalize(p), Cow::Borrowed(_)), "{p}");
        }
    }

    #[test]
    fn dot_segments_and_escapes() {
        for (raw, want) in [
            ("/edu/../jeux/", "/jeux/"),
            ("/edu/..", "/"),
            ("/edu/./jeux", "/edu/jeux"),
            ("/a/b/../../..", "/"),
            ("/../../etc", "/etc"),
            ("/a/.", "/a/"),
            ("/%6Aeux", "/jeux"),
            ("/%2e%2E/jeux", "/jeux"),
            ("/edu/%2e%2e/jeux?q=/../x", "/jeux?q=/../x"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%zz%4", "/a%zz%4"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/é/../x", "/x"),
            ("/%41é/%41", "/Aé/A"),
            ("//edu/../jeux", "//jeux"),
        ] {
            assert_eq!(normalize(raw), want, "{raw}");
        }
    }

    #[test]
    fn policy_merges_slashes_in_the_path_only() {
        assert_eq!(for_policy("//jeux"), "/jeux");
        assert_eq!(for_policy("/a//b///c/"), "/a/b/c/");
        assert_eq!(for_policy("/a?u=http://x"), "/a?u=http://x");
        assert!(matches!(for_policy("/a/b"), Cow::Borrowed(_)));
    }
}
