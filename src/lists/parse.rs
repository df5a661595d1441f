//! Line-level parsers for every list format: they turn the bytes of one file into
//! normalised entries or a precise reason why a line was rejected.
//!
//! These functions own the *syntax* of the formats (comments, BOM, CRLF, hosts
//! columns, Adblock rules, CIDR notation) and nothing else: they never build lookup
//! structures and never touch the disk, so `Lists::compile` and `locate_entry` share
//! exactly the same reading of a file and an explain trace points at the line that
//! really produced an entry.

use std::net::IpAddr;

use ipnet::IpNet;

use super::domain::normalize_into;

/// How the names of a domain-bearing file are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DomainSyntax {
    /// One name per line (plain lists and UT1 `domains`).
    Plain,
    /// `address name name …`.
    Hosts,
    /// `||name^`, `@@||name^`.
    Adblock,
}

/// Iterates over the lines of a file as `(1-based line number, trimmed bytes)`.
///
/// Lists come from every kind of editor and export tool, so a UTF-8 BOM, CRLF line
/// ends and stray surrounding blanks are all tolerated here once, for every format.
pub(crate) fn lines(data: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    // A final newline must not produce a phantom empty line; empty lines are skipped
    // by every parser anyway, so the simple split is kept.
    data.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim_ascii()))
}

/// Renders a piece of a line for a reason text: lossy UTF-8, bounded length, so a
/// binary file fed by mistake cannot produce megabytes of report.
pub(crate) fn quoted(bytes: &[u8]) -> String {
    const MAX: usize = 80;
    let text = String::from_utf8_lossy(bytes);
    if text.chars().count() <= MAX {
        format!("\"{text}\"")
    } else {
        let cut: String = text.chars().take(MAX).collect();
        format!("\"{cut}…\"")
    }
}

/// Cuts a `#` comment that follows the data after a blank (`example.com  # why`).
fn strip_trailing_comment(line: &[u8]) -> &[u8] {
    let mut prev_blank = false;
    for (i, &b) in line.iter().enumerate() {
        if b == b'#' && prev_blank {
            return line[..i].trim_ascii_end();
        }
        prev_blank = b == b' ' || b == b'\t';
    }
    line
}

/// Names that hosts files carry for the machine itself; blocking them would only
/// break the gateway, so they are skipped silently rather than reported.
const LOCAL_NAMES: &[&[u8]] = &[
    b"localhost",
    b"localhost.localdomain",
    b"local",
    b"broadcasthost",
    b"ip6-localhost",
    b"ip6-loopback",
    b"ip6-localnet",
    b"ip6-mcastprefix",
    b"ip6-allnodes",
    b"ip6-allrouters",
    b"ip6-allhosts",
    b"0.0.0.0",
];

/// Adblock modifiers that do not narrow a rule: with them `||name^` still means
/// "the whole domain", which is all a DNS/SNI filter can enforce.
const HARMLESS_MODIFIERS: &[&str] = &["important", "all", "document", "doc", "popup"];

/// Parses a domain-bearing file. `emit` receives, for each line with content, either
/// the normalised names it lists (`Ok((name, exception))`, possibly several per line)
/// or one reason per rejected line.
pub(crate) fn parse_domains(
    data: &[u8],
    syntax: DomainSyntax,
    mut emit: impl FnMut(usize, Result<(&[u8], bool), String>),
) {
    let mut buf = Vec::with_capacity(256);
    for (no, line) in lines(data) {
        if line.is_empty() {
            continue;
        }
        match syntax {
            DomainSyntax::Plain => {
                if line[0] == b'#' || line[0] == b'!' {
                    continue;
                }
                let line = strip_trailing_comment(line);
                let mut fields = line
                    .split(|b| b.is_ascii_whitespace())
                    .filter(|f| !f.is_empty());
                let Some(name) = fields.next() else { continue };
                let extra = fields.count();
                if extra > 0 {
                    let hint = if name.parse_ip().is_some() {
                        " (this looks like a hosts file: use format \"hosts\")"
                    } else {
                        ""
                    };
                    emit(
                        no,
                        Err(format!(
                            "expected one name per line, found {} fields{hint}",
                            extra + 1
                        )),
                    );
                    continue;
                }
                match normalize_into(name, &mut buf) {
                    Ok(()) => emit(no, Ok((&buf, false))),
                    Err(e) => emit(no, Err(e.reason(name))),
                }
            }
            DomainSyntax::Hosts => parse_hosts_line(no, line, &mut buf, &mut emit),
            DomainSyntax::Adblock => parse_adblock_line(no, line, &mut buf, &mut emit),
        }
    }
}

fn parse_hosts_line(
    no: usize,
    line: &[u8],
    buf: &mut Vec<u8>,
    emit: &mut impl FnMut(usize, Result<(&[u8], bool), String>),
) {
    if line[0] == b'#' || line[0] == b'!' {
        return;
    }
    // In hosts files a `#` starts a comment wherever it is.
    let line = match line.iter().position(|&b| b == b'#') {
        Some(p) => line[..p].trim_ascii_end(),
        None => line,
    };
    let mut fields = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty());
    let Some(addr) = fields.next() else { return };
    if addr.parse_ip().is_none() {
        emit(
            no,
            Err(format!(
                "expected an address (0.0.0.0, 127.0.0.1, ::) before the names, found {}",
                quoted(addr)
            )),
        );
        return;
    }
    let mut names = 0usize;
    let mut first_error = None;
    for name in fields {
        names += 1;
        if LOCAL_NAMES.iter().any(|l| l.eq_ignore_ascii_case(name)) {
            continue;
        }
        match normalize_into(name, buf) {
            Ok(()) => emit(no, Ok((buf, false))),
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(e.reason(name));
                }
            }
        }
    }
    if names == 0 {
        emit(no, Err(format!("address {} without names", quoted(addr))));
    } else if let Some(reason) = first_error {
        emit(no, Err(reason));
    }
}

fn parse_adblock_line(
    no: usize,
    line: &[u8],
    buf: &mut Vec<u8>,
    emit: &mut impl FnMut(usize, Result<(&[u8], bool), String>),
) {
    if line[0] == b'!' || line[0] == b'[' {
        return; // comment or `[Adblock Plus 2.0]` header
    }
    const COSMETIC: &[&[u8]] = &[b"##", b"#@#", b"#?#", b"#$#", b"#%#", b"#@$#", b"#@?#"];
    if COSMETIC.iter().any(|m| contains(line, m)) {
        emit(
            no,
            Err("cosmetic rule (only ||domain^ rules are used)".into()),
        );
        return;
    }
    if line[0] == b'#' {
        return; // some lists use `#` comments
    }
    let (exception, rule) = match line.strip_prefix(b"@@") {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let Some(body) = rule.strip_prefix(b"||") else {
        let reason = if rule.len() > 1 && rule[0] == b'/' && rule.ends_with(b"/") {
            "regular-expression rule (only ||domain^ rules are used)".to_string()
        } else if rule.first() == Some(&b'|') {
            "address rule (only ||domain^ rules are used)".to_string()
        } else {
            format!("not a ||domain^ rule: {}", quoted(line))
        };
        emit(no, Err(reason));
        return;
    };
    let (pattern, options) = match body.iter().position(|&b| b == b'$') {
        Some(p) => (&body[..p], Some(&body[p + 1..])),
        None => (body, None),
    };
    let end = pattern
        .iter()
        .position(|&b| matches!(b, b'^' | b'/' | b'|' | b':' | b'?'))
        .unwrap_or(pattern.len());
    let (name, tail) = pattern.split_at(end);
    match tail {
        b"" | b"^" | b"^|" => {}
        _ if tail.contains(&b'/') || tail.contains(&b'?') => {
            emit(
                no,
                Err(format!(
                    "path rule {} (only whole-domain rules are used)",
                    quoted(line)
                )),
            );
            return;
        }
        _ if tail.first() == Some(&b':') => {
            emit(
                no,
                Err(format!(
                    "port rule {} (only whole-domain rules are used)",
                    quoted(line)
                )),
            );
            return;
        }
        _ => {
            emit(
                no,
                Err(format!("not a whole-domain rule: {}", quoted(line))),
            );
            return;
        }
    }
    if let Some(options) = options {
        let Ok(options) = std::str::from_utf8(options) else {
            emit(no, Err("not valid UTF-8".into()));
            return;
        };
        for opt in options.split(',').map(str::trim) {
            if !HARMLESS_MODIFIERS
                .iter()
                .any(|h| h.eq_ignore_ascii_case(opt))
            {
                emit(
                    no,
                    Err(format!(
                        "unsupported modifier \"${opt}\" (only whole-domain rules are used)"
                    )),
                );
                return;
            }
        }
    }
    match normalize_into(name, buf) {
        Ok(()) => emit(no, Ok((buf, exception))),
        Err(e) => emit(no, Err(e.reason(name))),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

trait ParseIp {
    fn parse_ip(&self) -> Option<IpAddr>;
}

impl ParseIp for [u8] {
    fn parse_ip(&self) -> Option<IpAddr> {
        std::str::from_utf8(self).ok()?.parse().ok()
    }
}

/// Parses a CIDR file: one address or network per line, `#` comments anywhere.
/// Host bits set under the mask (`10.1.2.3/8`) are cleared rather than rejected:
/// the intent of such a line is unambiguous.
pub(crate) fn parse_cidrs(data: &[u8], mut emit: impl FnMut(usize, Result<IpNet, String>)) {
    for (no, line) in lines(data) {
        emit_cidr_line(no, line, &mut emit);
    }
}

fn emit_cidr_line(no: usize, line: &[u8], emit: &mut impl FnMut(usize, Result<IpNet, String>)) {
    let line = match line.iter().position(|&b| b == b'#' || b == b';') {
        Some(p) => line[..p].trim_ascii_end(),
        None => line,
    };
    if line.is_empty() || line[0] == b'!' {
        return;
    }
    let mut fields = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty());
    let Some(token) = fields.next() else { return };
    let extra = fields.count();
    if extra > 0 {
        emit(
            no,
            Err(format!(
                "expected one address or network per line, found {} fields",
                extra + 1
            )),
        );
        return;
    }
    emit(
        no,
        parse_net(token).ok_or_else(|| format!("invalid address or network {}", quoted(token))),
    );
}

/// `1.2.3.4`, `1.2.3.0/24`, `2001:db8::/32`, `::1` → network (addresses become /32, /128).
pub(crate) fn parse_net(token: &[u8]) -> Option<IpNet> {
    let text = std::str::from_utf8(token).ok()?;
    if text.contains('/') {
        text.parse::<IpNet>().ok().map(|n| n.trunc())
    } else {
        text.parse::<IpAddr>().ok().map(IpNet::from)
    }
}

/// Parses a UT1 `urls` file into normalised `host/path` entries.
pub(crate) fn parse_urls(data: &[u8], mut emit: impl FnMut(usize, Result<&[u8], String>)) {
    let mut buf = Vec::with_capacity(256);
    for (no, line) in lines(data) {
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        match super::url::normalize_entry(line, &mut buf) {
            Ok(()) => emit(no, Ok(&buf)),
            Err(reason) => emit(no, Err(reason)),
        }
    }
}

/// Parses a UT1 `expressions` file: one regular expression per line, kept as written
/// (they are compiled, and so validated, by the URL set).
pub(crate) fn parse_expressions(data: &[u8], mut emit: impl FnMut(usize, Result<&str, String>)) {
    for (no, line) in lines(data) {
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        match std::str::from_utf8(line) {
            Ok(text) => emit(no, Ok(text)),
            Err(_) => emit(no, Err("not valid UTF-8".into())),
        }
    }
}

/// Reads a UT1 `usage` file (`black`, `white` and free-text tags), informational only.
pub(crate) fn parse_usage(data: &[u8]) -> Vec<String> {
    lines(data)
        .filter(|(_, l)| !l.is_empty() && l[0] != b'#')
        .map(|(_, l)| String::from_utf8_lossy(l).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parsed = (Vec<(usize, String, bool)>, Vec<(usize, String)>);

    fn domains(data: &str, syntax: DomainSyntax) -> Parsed {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        parse_domains(data.as_bytes(), syntax, |no, r| match r {
            Ok((name, exc)) => ok.push((no, String::from_utf8(name.to_vec()).unwrap(), exc)),
            Err(reason) => bad.push((no, reason)),
        });
        (ok, bad)
    }

    fn names(v: &[(usize, String, bool)]) -> Vec<&str> {
        v.iter().map(|(_, n, _)| n.as_str()).collect()
    }

    #[test]
    fn lines_strip_bom_crlf_and_blanks() {
        let data = b"\xEF\xBB\xBFa.com\r\n  b.com \r\n\r\nc.com";
        let got: Vec<_> = lines(data)
            .map(|(n, l)| (n, String::from_utf8(l.to_vec()).unwrap()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "a.com".into()),
                (2, "b.com".into()),
                (3, String::new()),
                (4, "c.com".into())
            ]
        );
    }

    #[test]
    fn plain_handles_comments_case_dots_wildcards_and_idn() {
        let (ok, bad) = domains(
            "# comment\n! also comment\nExample.COM.\n*.wild.org\n.dot.net\nbücher.de\nx.com # why\n",
            DomainSyntax::Plain,
        );
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(
            names(&ok),
            vec![
                "example.com",
                "wild.org",
                "dot.net",
                "xn--bcher-kva.de",
                "x.com"
            ]
        );
        assert_eq!(ok[0].0, 3);
    }

    #[test]
    fn plain_reports_bad_lines_with_reasons() {
        let (ok, bad) = domains(
            "good.com\nex%ample.com\na..b.com\n0.0.0.0 hosts.com\na.*.com\n",
            DomainSyntax::Plain,
        );
        assert_eq!(names(&ok), vec!["good.com"]);
        assert_eq!(bad.len(), 4);
        assert_eq!(
            bad[0],
            (
                2,
                "invalid character '%' in name \"ex%ample.com\"".to_string()
            )
        );
        assert_eq!(bad[1], (3, "empty label in name \"a..b.com\"".to_string()));
        assert!(bad[2].1.contains("hosts file"), "{}", bad[2].1);
        assert!(bad[3].1.contains("'*'"), "{}", bad[3].1);
    }

    #[test]
    fn hosts_multi_names_and_local_names() {
        let (ok, bad) = domains(
            "127.0.0.1 localhost\n::1 ip6-localhost ip6-loopback\n0.0.0.0 a.com B.com c.com # x\n\
             :: d.com\n255.255.255.255 broadcasthost\n0.0.0.0 0.0.0.0\nnot-an-ip e.com\n0.0.0.0\n\
             127.0.0.1 f.com bad%.com g.com\n",
            DomainSyntax::Hosts,
        );
        assert_eq!(
            names(&ok),
            vec!["a.com", "b.com", "c.com", "d.com", "f.com", "g.com"]
        );
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert_eq!(bad[0].0, 7);
        assert!(bad[0].1.starts_with("expected an address"), "{}", bad[0].1);
        assert_eq!(bad[1], (8, "address \"0.0.0.0\" without names".to_string()));
        assert_eq!(bad[2].0, 9);
    }

    #[test]
    fn adblock_rules() {
        let (ok, bad) = domains(
            "[Adblock Plus 2.0]\n! Title: x\n||ads.example.com^\n||Track.NET^$important\n\
             @@||good.ads.example.com^\n||cdn.org^|\n||path.com/ads/\n##.banner\n\
             example.com##.ad\n||tp.com^$third-party\n/ads[0-9]/\n|http://x.com\nplain.com\n\
             ||noanchor.io\n",
            DomainSyntax::Adblock,
        );
        assert_eq!(
            ok.iter()
                .map(|(_, n, e)| (n.as_str(), *e))
                .collect::<Vec<_>>(),
            vec![
                ("ads.example.com", false),
                ("track.net", false),
                ("good.ads.example.com", true),
                ("cdn.org", false),
                ("noanchor.io", false),
            ]
        );
        let reasons: Vec<_> = bad.iter().map(|(n, r)| format!("{n}: {r}")).collect();
        assert_eq!(reasons.len(), 7, "{reasons:#?}");
        assert!(reasons[0].starts_with("7: path rule"));
        assert!(reasons[1].starts_with("8: cosmetic rule"));
        assert!(reasons[2].starts_with("9: cosmetic rule"));
        assert!(reasons[3].starts_with("10: unsupported modifier \"$third-party\""));
        assert!(reasons[4].starts_with("11: regular-expression rule"));
        assert!(reasons[5].starts_with("12: address rule"));
        assert!(reasons[6].starts_with("13: not a ||domain^ rule"));
    }

    #[test]
    fn cidr_lines() {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        parse_cidrs(
            b"# header\n1.0.0.1             # names\n10.1.2.3/8\n2001:db8::/32\n::1\nnope\n1.2.3.4/33\n1.2.3.4 5.6.7.8\r\n",
            |no, r| match r {
                Ok(n) => ok.push((no, n.to_string())),
                Err(e) => bad.push((no, e)),
            },
        );
        assert_eq!(
            ok,
            vec![
                (2, "1.0.0.1/32".into()),
                (3, "10.0.0.0/8".into()),
                (4, "2001:db8::/32".into()),
                (5, "::1/128".into())
            ]
        );
        assert_eq!(
            bad,
            vec![
                (6, "invalid address or network \"nope\"".into()),
                (7, "invalid address or network \"1.2.3.4/33\"".into()),
                (
                    8,
                    "expected one address or network per line, found 2 fields".into()
                ),
            ]
        );
    }

    #[test]
    fn usage_lines() {
        assert_eq!(
            parse_usage(b"#\tnote\nblack\nadult\n"),
            vec!["black", "adult"]
        );
    }

    #[test]
    fn quoted_is_bounded() {
        let long = "a".repeat(500);
        assert!(quoted(long.as_bytes()).chars().count() < 90);
    }
}
