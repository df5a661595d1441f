//! The Record phase of one proxy request: a [`RequestLog`] is created when the
//! request arrives, filled in as it is decided and answered, shared by the request
//! and response bodies (which count the bytes), and emits its audit event and
//! metrics when the last holder drops it — so no path, error or client
//! disconnect included, can skip the record.
//!
//! It only records; it must not influence what the proxy answers.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body::{Body, Frame, SizeHint};

use crate::audit::{AuditEvent, AuditSink, ProxyAudit};
use crate::identity::Identity;
use crate::metrics;
use crate::policy::{Decision, Request};
use crate::snapshot::Snapshot;

/// Which door a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Http,
    Connect,
    TransparentHttp,
    TransparentTls,
    BlockPage,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Connect => "connect",
            Kind::TransparentHttp => "transparent_http",
            Kind::BlockPage => "block_page",
            Kind::TransparentTls => "transparent_tls",
        }
    }
}

/// The decided part of a record.
#[derive(Clone, Debug, Default)]
struct Outcome {
    user: Option<Arc<str>>,
    identity: &'static str,
    profile: Arc<str>,
    target: String,
    host: String,
    port: u16,
    path: Option<String>,
    method: String,
    status: u16,
    verdict: &'static str,
    category: Option<Arc<str>>,
    rule: Arc<str>,
    entry: Option<String>,
    protocol: Option<&'static str>,
    sni: Option<String>,
    reference: Option<String>,
    /// Why the proxy itself refused (not a policy block): `client_network`, `auth`,
    /// `internal`, `port`, `bad_request`, `upstream`…
    refused: Option<&'static str>,
    /// The profile's `record_allowed`, once the identity is known.
    record_allowed: Option<bool>,
}

/// One request's record, emitted on drop.
pub struct RequestLog {
    started: Instant,
    time: DateTime<Utc>,
    kind: Kind,
    client: IpAddr,
    sink: AuditSink,
    log_allowed: bool,
    pub up: AtomicU64,
    pub down: AtomicU64,
    out: Mutex<Outcome>,
}

impl RequestLog {
    pub fn new(
        kind: Kind,
        client: IpAddr,
        method: &str,
        sink: AuditSink,
        log_allowed: bool,
    ) -> Arc<RequestLog> {
        Arc::new(RequestLog {
            started: Instant::now(),
            time: Utc::now(),
            kind,
            client,
            sink,
            log_allowed,
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            out: Mutex::new(Outcome {
                method: method.to_string(),
                identity: "default",
                verdict: "allow",
                ..Outcome::default()
            }),
        })
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    fn with(&self, f: impl FnOnce(&mut Outcome)) {
        // A poisoned lock only means another holder panicked mid-update: keep recording.
        let mut g = self.out.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g);
    }

    pub fn target(&self, target: &str, host: &str, port: u16, path: Option<&str>) {
        self.with(|o| {
            o.target = target.to_string();
            o.host = host.to_string();
            o.port = port;
            o.path = path.map(str::to_string);
        });
    }

    pub fn identity(&self, snap: &Snapshot, id: &Identity) {
        self.with(|o| {
            o.user = id.user.clone();
            o.identity = id.source.label();
            o.profile = snap.profile_label(id.profile);
            o.record_allowed = snap
                .config
                .profiles
                .get(id.profile as usize)
                .and_then(|p| p.record_allowed);
        });
    }

    pub fn decision(&self, snap: &Snapshot, d: &Decision, req: &Request<'_>) {
        self.with(|o| {
            o.verdict = d.verdict.as_str();
            o.category = d.category_label(snap);
            o.rule = d.rule_label(snap);
            o.entry = d.entry(snap, req);
            o.profile = snap.profile_label(d.profile);
        });
    }

    /// A block that policy did not express (non-TLS tunnel, SNI mismatch).
    pub fn blocked(&self, rule: String, protocol: Option<&'static str>) {
        self.with(|o| {
            o.verdict = "block";
            o.rule = rule.into();
            o.protocol = protocol;
        });
    }

    /// The protocol recognised from the first bytes of a stream.
    pub fn protocol(&self, protocol: &'static str) {
        self.with(|o| o.protocol = Some(protocol));
    }

    pub fn refused(&self, why: &'static str) {
        self.with(|o| o.refused = Some(why));
        metrics::PROXY_REFUSED_TOTAL.with_label_values(&[why]).inc();
    }

    pub fn status(&self, status: u16) {
        self.with(|o| o.status = status);
    }

    pub fn sni(&self, sni: Option<&str>) {
        self.with(|o| o.sni = sni.map(str::to_string));
    }

    pub fn reference(&self, reference: &str) {
        self.with(|o| o.reference = Some(reference.to_string()));
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let o = std::mem::take(self.out.get_mut().unwrap_or_else(|e| e.into_inner()));
        let up = *self.up.get_mut();
        let down = *self.down.get_mut();
        let elapsed = self.started.elapsed();
        let category = o.category.as_deref().unwrap_or("");
        let verdict = if o.refused.is_some() && o.verdict == "allow" {
            "refused"
        } else {
            o.verdict
        };
        metrics::DECISIONS_TOTAL
            .with_label_values(&["proxy", verdict, category])
            .inc();
        metrics::PROXY_REQUESTS_TOTAL
            .with_label_values(&[self.kind.as_str(), verdict])
            .inc();
        if verdict == "allow" && !o.record_allowed.unwrap_or(self.log_allowed) {
            return;
        }
        self.sink.record(AuditEvent {
            time: self.time,
            service: "proxy",
            client_ip: self.client,
            user: o.user.as_deref().map(str::to_string),
            identity: o.identity,
            profile: o.profile,
            target: o.target,
            qtype: None,
            verdict,
            category: o.category,
            rule: o.rule,
            entry: o.entry,
            via: None,
            latency_us: elapsed.as_micros() as u64,
            proxy: Some(Box::new(ProxyAudit {
                kind: self.kind.as_str(),
                method: o.method,
                host: o.host,
                port: o.port,
                path: o.path,
                status: o.status,
                bytes_up: up,
                bytes_down: down,
                duration_ms: elapsed.as_millis() as u64,
                sni: o.sni,
                protocol: o.protocol,
                refused: o.refused,
                reference: o.reference,
            })),
        });
    }
}

/// Which way bytes flow, seen from the client.
#[derive(Clone, Copy, Debug)]
pub enum Dir {
    Up,
    Down,
}

/// A body that counts its bytes into a [`RequestLog`] (and keeps it alive until the
/// body is done or dropped).
pub struct Counted<B> {
    inner: B,
    log: Arc<RequestLog>,
    dir: Dir,
}

impl<B> Counted<B> {
    pub fn new(inner: B, log: Arc<RequestLog>, dir: Dir) -> Self {
        Counted { inner, log, dir }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as u64;
            let (counter, label) = match self.dir {
                Dir::Up => (&self.log.up, "up"),
                Dir::Down => (&self.log.down, "down"),
            };
            counter.fetch_add(n, Ordering::Relaxed);
            metrics::PROXY_HTTP_BYTES_TOTAL
                .with_label_values(&[label])
                .inc_by(n);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
