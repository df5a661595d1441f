//! The pages the proxy answers with itself: the block page (what, which category,
//! which profile or user, a reference, the time, a "request a review" link) and the
//! error pages (one reason each), in French or English after `Accept-Language`.
//!
//! Every word comes from `crate::i18n`; this module only lays them out and escapes
//! what came from the request. It decides nothing.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use super::Body;
use crate::i18n::{Lang, Msg, t};
use crate::snapshot::Snapshot;

/// What a block page shows.
pub struct Blocked<'a> {
    pub lang: Lang,
    /// The URL or `host:port` asked for.
    pub what: &'a str,
    pub category: Option<crate::lists::CategoryId>,
    pub profile: crate::config::ProfileId,
    pub user: Option<&'a str>,
    /// The rule as the configuration names it (`eleves: block gambling`): the
    /// `x-vigie-rule` header, stable for scripts.
    pub rule: &'a str,
    /// The same in the reader's language, for the page.
    pub rule_words: &'a str,
    /// Why, in the reader's language.
    pub reason: Msg,
    pub reference: &'a str,
    pub time: DateTime<Utc>,
    pub review_url: &'a str,
    /// A refused tunnel (the browser usually hides the body; headers carry it too).
    pub tunnel: bool,
}

static NEXT_REF: AtomicU64 = AtomicU64::new(0);

/// A short reference a person can read over the phone, unique within the process
/// and unlikely to repeat across restarts (it mixes the time in).
pub fn new_reference(now: DateTime<Utc>) -> String {
    let n = NEXT_REF.fetch_add(1, Ordering::Relaxed);
    let mixed = xxhash_rust::xxh3::xxh3_64(
        &[now.timestamp_micros().to_le_bytes(), n.to_le_bytes()].concat(),
    );
    // Crockford-style alphabet: no I, L, O, U to misread.
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut out = String::with_capacity(11);
    for i in 0..10 {
        if i == 5 {
            out.push('-');
        }
        out.push(ALPHABET[((mixed >> (i * 5)) & 31) as usize] as char);
    }
    out
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query parameter value.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;color:#222}\
h1{color:#b00020}dl{display:grid;grid-template-columns:max-content auto;gap:.3em 1em}dt{font-weight:bold}\
dd{margin:0;word-break:break-all}.ref{font-family:monospace;font-size:1.2em}a.btn{display:inline-block;margin-top:1em;\
padding:.5em 1em;background:#1a56db;color:#fff;border-radius:4px;text-decoration:none}";

fn page(lang: Lang, title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"{tag}\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<meta name=\"robots\" content=\"noindex\"><title>{title}</title><style>{STYLE}</style></head><body>{body}</body></html>\n",
        tag = lang.tag(),
        title = escape(title),
    )
}

/// The HTML of a block page.
pub fn block_html(snap: &Snapshot, b: &Blocked<'_>) -> String {
    let lang = b.lang;
    let cfg = &snap.config;
    let category = b
        .category
        .and_then(|c| cfg.categories.get(c as usize))
        .map(|c| match lang {
            Lang::Fr => c.fr.as_str(),
            Lang::En => c.en.as_str(),
        })
        .unwrap_or(t(lang, Msg::NoCategory));
    let profile = cfg
        .profiles
        .get(b.profile as usize)
        .map(|p| match lang {
            Lang::Fr => p.fr.as_str(),
            Lang::En => p.en.as_str(),
        })
        .unwrap_or("?");
    let local = b.time.with_timezone(&cfg.timezone);
    let time = local.format("%Y-%m-%d %H:%M:%S %Z").to_string();
    let review = format!(
        "{base}{sep}ref={r}&url={u}&category={c}&lang={l}",
        base = b.review_url,
        sep = if b.review_url.contains('?') { '&' } else { '?' },
        r = query_escape(b.reference),
        u = query_escape(b.what),
        c = query_escape(b.category.map(|c| snap.category_name(c)).unwrap_or("")),
        l = lang.tag(),
    );
    let row = |k: Msg, v: &str| format!("<dt>{}</dt><dd>{}</dd>", escape(t(lang, k)), escape(v));
    let mut rows = String::new();
    rows.push_str(&row(Msg::FieldAddress, b.what));
    rows.push_str(&row(Msg::FieldCategory, category));
    rows.push_str(&row(Msg::FieldReason, t(lang, b.reason)));
    rows.push_str(&row(Msg::FieldProfile, profile));
    rows.push_str(&row(
        Msg::FieldUser,
        b.user.unwrap_or(t(lang, Msg::Anonymous)),
    ));
    rows.push_str(&row(Msg::FieldRule, b.rule_words));
    rows.push_str(&row(Msg::FieldTime, &time));
    rows.push_str(&format!(
        "<dt>{}</dt><dd class=\"ref\">{}</dd>",
        escape(t(lang, Msg::FieldReference)),
        escape(b.reference)
    ));
    let lead = if b.tunnel {
        Msg::BlockedTunnelLead
    } else {
        Msg::BlockedLead
    };
    let body = format!(
        "<h1>{title}</h1><p>{lead}</p><dl>{rows}</dl><p>{hint}</p><p><a class=\"btn\" href=\"{review}\">{link}</a></p>",
        title = escape(t(lang, Msg::BlockedTitle)),
        lead = escape(t(lang, lead)),
        hint = escape(t(lang, Msg::ReviewHint)),
        review = escape(&review),
        link = escape(t(lang, Msg::ReviewLink)),
    );
    page(lang, t(lang, Msg::BlockedTitle), &body)
}

/// The block page as a 403 response, with the same facts in `X-Vigie-*` headers
/// (ASCII: category id, not its label) for clients that hide CONNECT bodies.
pub fn block_response(snap: &Snapshot, b: &Blocked<'_>) -> Response<Body> {
    let html = block_html(snap, b);
    let mut resp = html_response(StatusCode::FORBIDDEN, b.lang, html);
    let h = resp.headers_mut();
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(&ascii_only(value)) {
            h.insert(name, v);
        }
    };
    put("x-vigie-verdict", "block");
    put(
        "x-vigie-category",
        b.category.map(|c| snap.category_name(c)).unwrap_or(""),
    );
    put("x-vigie-profile", snap.profile_name(b.profile));
    put("x-vigie-rule", b.rule);
    put("x-vigie-reference", b.reference);
    put("x-vigie-time", &b.time.to_rfc3339());
    put("x-vigie-review", b.review_url);
    resp
}

fn ascii_only(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// An error page: the status, one reason, and the reference to quote.
pub fn error_response(
    status: StatusCode,
    lang: Lang,
    reason: Msg,
    what: &str,
    reference: &str,
) -> Response<Body> {
    let title = t(lang, Msg::ErrorTitle);
    let body = format!(
        "<h1>{code} — {title}</h1><p>{reason}</p><dl><dt>{addr}</dt><dd>{what}</dd><dt>{refk}</dt><dd class=\"ref\">{reference}</dd></dl>",
        code = status.as_u16(),
        title = escape(title),
        reason = escape(t(lang, reason)),
        addr = escape(t(lang, Msg::FieldAddress)),
        what = escape(what),
        refk = escape(t(lang, Msg::FieldReference)),
        reference = escape(reference),
    );
    let mut resp = html_response(status, lang, page(lang, title, &body));
    if let Ok(v) = HeaderValue::from_str(reference) {
        resp.headers_mut().insert("x-vigie-reference", v);
    }
    if let Ok(v) = HeaderValue::from_str(&ascii_only(t(Lang::En, reason))) {
        resp.headers_mut().insert("x-vigie-reason", v);
    }
    resp
}

pub fn html_response(status: StatusCode, lang: Lang, html: String) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(html)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_LANGUAGE,
        HeaderValue::from_static(lang.tag()),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept-Language"));
    resp
}

pub fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_short_and_distinct() {
        let now = Utc::now();
        let a = new_reference(now);
        let b = new_reference(now);
        assert_eq!(a.len(), 11);
        assert_ne!(a, b);
    }

    #[test]
    fn escaping() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(
            query_escape("http://a/b?c=d é"),
            "http%3A%2F%2Fa%2Fb%3Fc%3Dd%20%C3%A9"
        );
    }
}
