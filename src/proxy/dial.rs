//! Reaching origins: name resolution, the SSRF guard on every resolved address,
//! and Happy Eyeballs (RFC 8305) connection racing between IPv6 and IPv4.
//!
//! Names are resolved through the DNS filter's cache and upstreams
//! (`dns::Handler::resolve_addrs`: A and AAAA at once, TTLs and negative answers
//! honoured), so the proxy and the school's clients share one cache. The system
//! resolver (`getaddrinfo`) serves only a dialer built without the DNS filter (unit
//! tests). This module decides nothing about policy: it only refuses addresses the
//! guard forbids.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hyper::Uri;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::guard::{Forbidden, Guard, parse_host_ip};
use crate::metrics;

/// Delay before racing the next address (RFC 8305 §5 recommends 250 ms).
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot resolve {host}: {source}")]
    Lookup {
        host: String,
        #[source]
        source: crate::dns::ResolveError,
    },
    #[error("{host} has no address")]
    NoAddress { host: String },
    #[error("{host} resolves to {addr}, which the proxy may not reach ({why:?})")]
    Forbidden {
        host: String,
        addr: SocketAddr,
        why: Forbidden,
    },
    #[error("connecting to {host} timed out after {after:?}")]
    Timeout { host: String, after: Duration },
    #[error("cannot connect to {host}: {source}")]
    Connect {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the URL has no host")]
    NoHost,
}

/// Resolves and connects, refusing forbidden addresses.
pub struct Dialer {
    pub guard: Guard,
    pub connect_timeout: Duration,
    /// The DNS filter, whose cache and upstreams resolve origin names; `None`: the
    /// system resolver.
    pub resolver: Option<Arc<crate::dns::Handler>>,
    /// An origin connection that leaves a read pending this long fails (`[proxy]
    /// idle_timeout_ms`): a stalled response body does not hold a client's place.
    pub read_idle: Duration,
}

impl Dialer {
    /// Every address of `host:port`, after the guard. One forbidden address refuses
    /// the whole name: a public name that also resolves to an internal address is a
    /// rebinding attempt, not a name to half-trust.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, DialError> {
        let addrs: Vec<SocketAddr> = match parse_host_ip(host) {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None if let Some(dns) = &self.resolver => {
                match tokio::time::timeout(self.connect_timeout, dns.resolve_addrs(host)).await {
                    Ok(Ok(ips)) => ips
                        .into_iter()
                        .map(|ip| SocketAddr::new(ip, port))
                        .collect(),
                    Ok(Err(source)) => {
                        return Err(DialError::Lookup {
                            host: host.to_string(),
                            source,
                        });
                    }
                    Err(_) => {
                        return Err(DialError::Timeout {
                            host: host.to_string(),
                            after: self.connect_timeout,
                        });
                    }
                }
            }
            None => {
                let lookup = tokio::net::lookup_host((host, port));
                match tokio::time::timeout(self.connect_timeout, lookup).await {
                    Ok(Ok(it)) => it.collect(),
                    Ok(Err(source)) => {
                        return Err(DialError::Resolve {
                            host: host.to_string(),
                            source,
                        });
                    }
                    Err(_) => {
                        return Err(DialError::Timeout {
                            host: host.to_string(),
                            after: self.connect_timeout,
                        });
                    }
                }
            }
        };
        if addrs.is_empty() {
            return Err(DialError::NoAddress {
                host: host.to_string(),
            });
        }
        for &addr in &addrs {
            if let Err(why) = self.guard.check(addr) {
                return Err(DialError::Forbidden {
                    host: host.to_string(),
                    addr,
                    why,
                });
            }
        }
        Ok(addrs)
    }

    /// Resolves `host` and connects to the first address that answers.
    pub async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, DialError> {
        let addrs = self.resolve(host, port).await?;
        self.connect_addrs(host, addrs).await
    }

    /// Races connections to `addrs` (already checked by the guard), families
    /// interleaved, one new attempt every [`ATTEMPT_DELAY`] or as soon as one fails.
    pub async fn connect_addrs(
        &self,
        host: &str,
        addrs: Vec<SocketAddr>,
    ) -> Result<TcpStream, DialError> {
        let started = Instant::now();
        let ordered = interleave(addrs);
        let race = async {
            let mut queue = ordered.into_iter();
            let mut attempts = FuturesUnordered::new();
            let mut last_err = None;
            if let Some(a) = queue.next() {
                attempts.push(TcpStream::connect(a));
            }
            loop {
                tokio::select! {
                    r = attempts.next(), if !attempts.is_empty() => match r {
                        Some(Ok(s)) => return Ok(s),
                        Some(Err(e)) => {
                            last_err = Some(e);
                            match queue.next() {
                                Some(a) => attempts.push(TcpStream::connect(a)),
                                None if attempts.is_empty() => break,
                                None => {}
                            }
                        }
                        None => break,
                    },
                    _ = tokio::time::sleep(ATTEMPT_DELAY) => match queue.next() {
                        Some(a) => attempts.push(TcpStream::connect(a)),
                        None if attempts.is_empty() => break,
                        None => {}
                    },
                }
            }
            Err(last_err.unwrap_or_else(|| std::io::Error::other("no address to try")))
        };
        let result = tokio::time::timeout(self.connect_timeout, race).await;
        let outcome = match result {
            Ok(Ok(stream)) => {
                // Small requests and interactive tunnels must not wait for Nagle.
                let _ = stream.set_nodelay(true);
                metrics::PROXY_UPSTREAM_CONNECT_SECONDS
                    .with_label_values(&["ok"])
                    .observe(started.elapsed().as_secs_f64());
                return Ok(stream);
            }
            Ok(Err(source)) => DialError::Connect {
                host: host.to_string(),
                source,
            },
            Err(_) => DialError::Timeout {
                host: host.to_string(),
                after: self.connect_timeout,
            },
        };
        metrics::PROXY_UPSTREAM_CONNECT_SECONDS
            .with_label_values(&["error"])
            .observe(started.elapsed().as_secs_f64());
        Err(outcome)
    }
}

/// Alternates address families, starting with the resolver's first choice.
fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first) = addrs.first().copied() else {
        return addrs;
    };
    let (mut same, mut other): (Vec<_>, Vec<_>) = addrs
        .into_iter()
        .partition(|a| a.is_ipv6() == first.is_ipv6());
    same.reverse();
    other.reverse();
    let mut out = Vec::with_capacity(same.len() + other.len());
    loop {
        match (same.pop(), other.pop()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// The host of a URI without IPv6 brackets.
pub fn uri_host(uri: &Uri) -> Option<&str> {
    uri.host().map(|h| {
        h.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(h)
    })
}

/// The [`Dialer`] as a connector for hyper-util's pooled client.
#[derive(Clone)]
pub struct Connector(pub Arc<Dialer>);

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<IdleRead<TcpStream>>;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, DialError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), DialError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dialer = self.0.clone();
        Box::pin(async move {
            let host = uri_host(&uri).ok_or(DialError::NoHost)?.to_string();
            let port = uri.port_u16().unwrap_or(80);
            let stream = dialer.connect(&host, port).await?;
            Ok(TokioIo::new(IdleRead::new(stream, dialer.read_idle)))
        })
    }
}

/// A stream whose reads fail with `TimedOut` when one stays pending for `idle`
/// with no byte arriving. Only a pending read counts: an origin the client is slow
/// to read from (no read asked for) is not idle. The deadline moves lazily — a read
/// stores the time, the timer checks it when it fires — so the hot path costs a
/// clock read, not a timer reset or an allocation per response.
pub struct IdleRead<S> {
    inner: S,
    idle: Duration,
    last: Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> IdleRead<S> {
    pub fn new(inner: S, idle: Duration) -> Self {
        IdleRead {
            inner,
            idle,
            last: Instant::now(),
            timer: None,
        }
    }
}

impl hyper_util::client::legacy::connect::Connection for IdleRead<TcpStream> {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.inner.connected()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleRead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.last = Instant::now();
                }
                Poll::Ready(r)
            }
            // The timer is made once and left at its deadline while reads succeed;
            // when it fires early (bytes came since it was set) it moves on.
            Poll::Pending => loop {
                let deadline = tokio::time::Instant::from_std(this.last + this.idle);
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match timer.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) if tokio::time::Instant::now() >= deadline => {
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "origin idle",
                        )));
                    }
                    Poll::Ready(()) => timer.as_mut().reset(deadline),
                }
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleRead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaves_families() {
        let a: Vec<SocketAddr> = ["[::1]:1", "[::2]:1", "1.1.1.1:1", "[::3]:1", "2.2.2.2:1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let out: Vec<String> = interleave(a).iter().map(|s| s.to_string()).collect();
        assert_eq!(
            out,
            ["[::1]:1", "1.1.1.1:1", "[::2]:1", "2.2.2.2:1", "[::3]:1"]
        );
    }

    #[tokio::test]
    async fn refuses_names_and_spellings_of_forbidden_addresses() {
        let d = Dialer {
            guard: Guard::new(&crate::config::ProxyConfig::default(), vec![], vec![]),
            connect_timeout: Duration::from_secs(2),
            resolver: None,
            read_idle: Duration::from_secs(300),
        };
        for host in [
            "localhost",
            "2130706433",
            "0x7f.1",
            "::ffff:127.0.0.1",
            "169.254.169.254",
            "0",
        ] {
            let r = d.resolve(host, 80).await;
            assert!(
                matches!(r, Err(DialError::Forbidden { .. })),
                "{host}: {r:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_read_left_pending_too_long_fails_and_progress_keeps_it_alive() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(64);
        let mut s = IdleRead::new(near, Duration::from_millis(400));
        let mut buf = [0u8; 8];
        // A byte every 250 ms: each read waits less than the 400 ms allowed.
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                far.write_all(b"x").await.unwrap();
            }
            far // kept open, silent
        });
        for _ in 0..4 {
            assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        }
        assert!(started.elapsed() >= Duration::from_millis(900));
        let waited = Instant::now();
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(
            waited.elapsed() >= Duration::from_millis(300),
            "{:?}",
            waited.elapsed()
        );
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn races_to_the_address_that_answers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cfg = crate::config::ProxyConfig {
            allow_loopback_origins: true,
            ..Default::default()
        };
        let d = Dialer {
            guard: Guard::new(&cfg, vec![], vec![]),
            connect_timeout: Duration::from_secs(2),
            resolver: None,
            read_idle: Duration::from_secs(300),
        };
        // Port 1 on ::1 refuses at once; the IPv4 address then wins.
        let addrs = vec![
            SocketAddr::new("::1".parse().unwrap(), 1),
            SocketAddr::new("127.0.0.1".parse().unwrap(), port),
        ];
        let s = d.connect_addrs("test", addrs).await.unwrap();
        assert_eq!(s.peer_addr().unwrap().port(), port);
    }
}
