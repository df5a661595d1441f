//! Downloading one list over HTTPS: rustls with the system's roots plus the
//! configured CA, conditional GET, redirects that stay on HTTPS, and hard limits
//! on time and size so a slow or hostile server cannot fill the disk or hang a
//! daily timer.
//!
//! The body goes straight to a file, hashed on the way (SHA-256): nothing is held
//! in memory, and the caller decides what the bytes are (a tarball, a list).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncWriteExt;

use crate::config::{ListsUpdateConfig, check_https_url};

/// Redirects followed before giving up (mirrors and CDNs use one or two).
const MAX_REDIRECTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Setup(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("HTTP {0}")]
    Status(String),
    #[error("redirected to {0}, refused: {1}")]
    Redirect(String, String),
    #[error("too many redirects (more than {MAX_REDIRECTS})")]
    TooManyRedirects,
    #[error("refused: the body is larger than {limit} bytes (lists_update.max_bytes){}", announced.map(|n| format!(", the server announced {n}")).unwrap_or_default())]
    TooLarge { limit: u64, announced: Option<u64> },
    #[error("no complete answer within {0:?} (lists_update.timeout_ms)")]
    Timeout(Duration),
    #[error("the download broke off: {0}")]
    Body(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    /// Whether what the server sent is at fault (refused on verification), as
    /// opposed to not getting an answer at all.
    pub fn is_refusal(&self) -> bool {
        matches!(self, FetchError::TooLarge { .. })
    }
}

/// Validators of the copy we hold, for a conditional GET.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// A body written to disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Body {
    pub bytes: u64,
    /// SHA-256 of the body, lowercase hex.
    pub sha256: String,
    pub validators: Validators,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetched {
    /// `304 Not Modified`: the copy we hold is current.
    NotModified,
    Body(Body),
}

/// An HTTPS client for list downloads.
pub struct Client {
    inner: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
    max_bytes: u64,
}

impl Client {
    pub fn new(cfg: &ListsUpdateConfig) -> Result<Client, FetchError> {
        let tls = crate::tls_roots::client_config(cfg.ca_file.as_deref(), "lists_update.ca_file")
            .map_err(FetchError::Setup)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(https);
        Ok(Client {
            inner,
            timeout: cfg.timeout,
            max_bytes: cfg.max_bytes,
        })
    }

    /// GETs `url` into `dest` (created or truncated); `304` when `have` is still
    /// current. Everything, redirects included, must finish within the timeout.
    pub async fn get(
        &self,
        url: &str,
        have: &Validators,
        dest: &Path,
    ) -> Result<Fetched, FetchError> {
        match tokio::time::timeout(self.timeout, self.get_inner(url, have, dest)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(self.timeout)),
        }
    }

    async fn get_inner(
        &self,
        url: &str,
        have: &Validators,
        dest: &Path,
    ) -> Result<Fetched, FetchError> {
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = Request::get(url.as_str())
                .header(
                    header::USER_AGENT,
                    concat!("vigie/", env!("CARGO_PKG_VERSION"), " (lists update)"),
                )
                .header(header::ACCEPT_ENCODING, "identity");
            if let Some(etag) = &have.etag {
                req = req.header(header::IF_NONE_MATCH, etag.as_str());
            }
            if let Some(lm) = &have.last_modified {
                req = req.header(header::IF_MODIFIED_SINCE, lm.as_str());
            }
            let req = req
                .body(Empty::<Bytes>::new())
                .map_err(|e| FetchError::Setup(e.to_string()))?;
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| {
                    let mut m = error_chain(&e);
                    if m.contains("certificate") {
                        m.push_str(" (behind a TLS-inspecting proxy or a private mirror? trust its CA with [lists_update] ca_file)");
                    }
                    FetchError::Connect(m)
                })?;
            let status = resp.status();
            if status == StatusCode::NOT_MODIFIED {
                return Ok(Fetched::NotModified);
            }
            if status.is_redirection() {
                let location = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| FetchError::Status(describe(status) + " without a Location"))?;
                let next = resolve_location(&url, location);
                check_https_url(&next).map_err(|why| FetchError::Redirect(next.clone(), why))?;
                url = next;
                continue;
            }
            if status != StatusCode::OK {
                return Err(FetchError::Status(describe(status)));
            }
            let announced = content_length(resp.headers());
            if announced.is_some_and(|n| n > self.max_bytes) {
                return Err(FetchError::TooLarge {
                    limit: self.max_bytes,
                    announced,
                });
            }
            let validators = Validators {
                etag: header_text(resp.headers(), header::ETAG),
                last_modified: header_text(resp.headers(), header::LAST_MODIFIED),
            };
            let (bytes, sha256) = self.save(resp.into_body(), dest).await?;
            return Ok(Fetched::Body(Body {
                bytes,
                sha256,
                validators,
            }));
        }
        Err(FetchError::TooManyRedirects)
    }

    /// Streams a body to `dest`, stopping past `max_bytes`.
    async fn save(
        &self,
        mut body: hyper::body::Incoming,
        dest: &Path,
    ) -> Result<(u64, String), FetchError> {
        let io = |source| FetchError::Io {
            path: dest.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| FetchError::Body(error_chain(&e)))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            total += data.len() as u64;
            if total > self.max_bytes {
                return Err(FetchError::TooLarge {
                    limit: self.max_bytes,
                    announced: None,
                });
            }
            hash.update(&data);
            file.write_all(&data).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        Ok((total, hex(hash.finish().as_ref())))
    }
}

/// The absolute URL a `Location` names, from the URL that answered it.
pub fn resolve_location(base: &str, location: &str) -> String {
    let location = location.trim();
    if location.contains("://") {
        return location.to_string();
    }
    // scheme://authority
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let origin_end = base[after_scheme..]
        .find(['/', '?', '#'])
        .map(|i| after_scheme + i)
        .unwrap_or(base.len());
    let origin = &base[..origin_end];
    if let Some(rest) = location.strip_prefix("//") {
        let scheme = &base[..after_scheme];
        return format!("{scheme}{rest}");
    }
    if location.starts_with('/') {
        return format!("{origin}{location}");
    }
    let path = &base[origin_end..];
    let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    let dir = &path[..path.rfind('/').map(|i| i + 1).unwrap_or(0)];
    let dir = if dir.is_empty() { "/" } else { dir };
    format!("{origin}{dir}{location}")
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn header_text(h: &HeaderMap, name: header::HeaderName) -> Option<String> {
    h.get(name)?.to_str().ok().map(str::to_string)
}

fn describe(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(r) => format!("{} {r}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// An error with its causes, `outer: inner: …` (hyper's own message is vague).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_against_the_url_that_answered() {
        let base = "https://dsi.example.fr/blacklists/download/blacklists.tar.gz?x=1";
        assert_eq!(
            resolve_location(base, "https://mirror.example/b.tar.gz"),
            "https://mirror.example/b.tar.gz"
        );
        assert_eq!(
            resolve_location(base, "/other/b.tar.gz"),
            "https://dsi.example.fr/other/b.tar.gz"
        );
        assert_eq!(
            resolve_location(base, "b.tar.gz"),
            "https://dsi.example.fr/blacklists/download/b.tar.gz"
        );
        assert_eq!(
            resolve_location(base, "//cdn.example/b"),
            "https://cdn.example/b"
        );
        assert_eq!(
            resolve_location("https://h.example", "l.txt"),
            "https://h.example/l.txt"
        );
        // The caller refuses a redirect to plain http.
        assert!(check_https_url(&resolve_location(base, "http://evil.example/")).is_err());
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
