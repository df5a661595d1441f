//! Name resolution for vigie's own use: the proxy resolves the origins it dials
//! through the DNS filter's cache and upstreams, so a name costs one upstream
//! exchange per TTL whoever asks (a client or the proxy), negative answers are
//! cached the same way, and the proxy reaches the addresses the school's clients
//! are given.
//!
//! No policy here: the proxy decides on the name before it dials, and a blocked
//! answer (null or block-page address) would only hide the real address from its
//! SSRF guard. Nothing is recorded either: the proxy records its own request.
//!
//! A and AAAA are asked at once (RFC 8305 §3). The answer waits for A (on a school
//! network without IPv6, starting on AAAA alone would fail, and a late A could not
//! join the race) and then gives AAAA at most [`RESOLUTION_DELAY`] more. A lookup
//! that misses the cache runs as its own task, so a late AAAA still lands in the
//! cache for the next connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::task::JoinHandle;

use super::handler::Handler;
use super::upstream::UpstreamError;
use super::wire::Answer;

/// How long the AAAA answer may lag behind the A answer (RFC 8305 §3: 50 ms).
pub const RESOLUTION_DELAY: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("\"{0}\" is not a valid DNS name")]
    InvalidName(String),
    #[error("no such name (NXDOMAIN)")]
    NxDomain,
    #[error("the upstream resolvers answered {0}")]
    Rcode(ResponseCode),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// One address family being looked up: answered from the cache, or asked upstream.
enum Lookup {
    Ready(Result<Vec<IpAddr>, ResolveError>),
    Asking(JoinHandle<Result<Answer, UpstreamError>>),
}

impl Lookup {
    async fn wait(self) -> Result<Vec<IpAddr>, ResolveError> {
        match self {
            Lookup::Ready(r) => r,
            Lookup::Asking(task) => match task.await {
                Ok(answer) => addresses(&answer?),
                Err(e) => Err(UpstreamError::Failed(format!("lookup task ended: {e}")).into()),
            },
        }
    }
}

impl Handler {
    /// The addresses of `host` (IPv6 first, for Happy Eyeballs), from the cache or
    /// the upstreams. An empty list means the name exists without addresses.
    pub async fn resolve_addrs(self: &Arc<Self>, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        if let Some(local) = localhost(host) {
            return Ok(local);
        }
        let name = fqdn(host)?;
        let v4 = self.lookup(&name, RecordType::A);
        let v6 = self.lookup(&name, RecordType::AAAA);
        let a = v4.wait().await;
        let aaaa = match &a {
            // A late AAAA is dropped from this race only (its task still caches it).
            Ok(found) if !found.is_empty() => tokio::time::timeout(RESOLUTION_DELAY, v6.wait())
                .await
                .unwrap_or(Ok(Vec::new())),
            // No IPv4 address: the name may be IPv6-only, wait for the whole answer.
            _ => v6.wait().await,
        };
        match (a, aaaa) {
            (Err(ResolveError::NxDomain), _) => Err(ResolveError::NxDomain),
            (Ok(v4), Ok(mut v6)) => {
                v6.extend(v4);
                Ok(v6)
            }
            (Ok(v4), Err(e)) => {
                if v4.is_empty() {
                    Err(e)
                } else {
                    Ok(v4)
                }
            }
            (Err(_), Ok(v6)) if !v6.is_empty() => Ok(v6),
            (Err(e), _) => Err(e),
        }
    }

    fn lookup(self: &Arc<Self>, name: &Name, qtype: RecordType) -> Lookup {
        if let Some(answer) = self.cached(name, qtype) {
            return Lookup::Ready(addresses(&answer));
        }
        let (handler, name) = (self.clone(), name.clone());
        Lookup::Asking(tokio::spawn(
            async move { handler.fetch(&name, qtype).await },
        ))
    }
}

/// The A and AAAA records of an answer (whatever their owner: a recursive
/// resolver's answer holds the CNAME chain and the addresses at its end).
fn addresses(answer: &Answer) -> Result<Vec<IpAddr>, ResolveError> {
    match answer.rcode {
        ResponseCode::NoError => Ok(answer
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect()),
        ResponseCode::NXDomain => Err(ResolveError::NxDomain),
        rcode => Err(ResolveError::Rcode(rcode)),
    }
}

/// `localhost` and names under it are the loopback addresses, never asked
/// upstream (RFC 6761 §6.3): an upstream could otherwise point them anywhere.
fn localhost(host: &str) -> Option<Vec<IpAddr>> {
    let h = host.trim_end_matches('.');
    let local = h.eq_ignore_ascii_case("localhost")
        || h.len() > 10 && h[h.len() - 10..].eq_ignore_ascii_case(".localhost");
    local.then(|| {
        vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]
    })
}

/// `host` as an absolute name: never completed with search domains.
fn fqdn(host: &str) -> Result<Name, ResolveError> {
    let invalid = || ResolveError::InvalidName(host.to_string());
    if host.is_empty() || host.starts_with('.') {
        return Err(invalid());
    }
    let mut name = Name::from_ascii(host).map_err(|_| invalid())?;
    name.set_fqdn(true);
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hickory_proto::op::{Message, OpCode};
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, AAAA, SOA};

    /// A UDP upstream: `nx.test` NXDOMAIN, `slow6.test` AAAA after 400 ms, `v6only.test`
    /// no A, any other name A 192.0.2.1 and AAAA 2001:db8::1; counts queries by type.
    async fn stub() -> (std::net::SocketAddr, Arc<[AtomicUsize; 2]>) {
        let sock = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = sock.local_addr().unwrap();
        let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let c = counts.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                let Ok(req) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let q = req.queries[0].clone();
                let v6 = q.query_type == RecordType::AAAA;
                c[usize::from(v6)].fetch_add(1, Ordering::SeqCst);
                let name = q.name.to_ascii();
                let mut resp = Message::response(req.metadata.id, OpCode::Query);
                resp.metadata.recursion_available = true;
                resp.add_query(q.clone());
                let soa = || {
                    let soa = SOA::new(q.name.clone(), q.name.clone(), 1, 1, 1, 1, 30);
                    Record::from_rdata(q.name.clone(), 30, RData::SOA(soa))
                };
                if name.starts_with("nx.") {
                    resp.metadata.response_code = ResponseCode::NXDomain;
                    resp.add_authority(soa());
                } else if v6 {
                    let ip = "2001:db8::1".parse().unwrap();
                    resp.add_answer(Record::from_rdata(
                        q.name.clone(),
                        60,
                        RData::AAAA(AAAA(ip)),
                    ));
                } else if name.starts_with("v6only.") {
                    resp.add_authority(soa());
                } else {
                    let ip = A::new(192, 0, 2, 1);
                    resp.add_answer(Record::from_rdata(q.name.clone(), 60, RData::A(ip)));
                }
                let (sock, bytes) = (sock.clone(), resp.to_vec().unwrap());
                let delay = if v6 && name.starts_with("slow6.") {
                    400
                } else {
                    0
                };
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let _ = sock.send_to(&bytes, peer).await;
                });
            }
        });
        (addr, counts)
    }

    fn handler(upstream: std::net::SocketAddr) -> Arc<Handler> {
        Arc::new(super::super::handler::test_handler(
            "[profiles.invites]\n",
            &upstream.to_string(),
            Duration::from_secs(2),
            None,
        ))
    }

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[tokio::test]
    async fn both_families_then_the_cache() {
        let (addr, counts) = stub().await;
        let h = handler(addr);
        let got = h.resolve_addrs("Site.Test").await.unwrap();
        assert_eq!(got, ips(&["2001:db8::1", "192.0.2.1"]));
        let asked =
            |c: &[AtomicUsize; 2]| (c[0].load(Ordering::SeqCst), c[1].load(Ordering::SeqCst));
        assert_eq!(asked(&counts), (1, 1));
        // Served from the cache (any case, with or without the final dot).
        assert_eq!(h.resolve_addrs("site.test.").await.unwrap(), got);
        assert_eq!(asked(&counts), (1, 1));

        // NXDOMAIN is an error, and cached (RFC 2308).
        let e = h.resolve_addrs("nx.test").await.unwrap_err();
        assert!(matches!(e, ResolveError::NxDomain), "{e:?}");
        let before = asked(&counts);
        assert!(h.resolve_addrs("nx.test").await.is_err());
        assert_eq!(asked(&counts), before);

        // No A: the AAAA answer is waited for.
        assert_eq!(
            h.resolve_addrs("v6only.test").await.unwrap(),
            ips(&["2001:db8::1"])
        );
    }

    #[tokio::test]
    async fn a_late_aaaa_does_not_hold_the_connection_and_is_cached_later() {
        let (addr, counts) = stub().await;
        let h = handler(addr);
        let started = std::time::Instant::now();
        let got = h.resolve_addrs("slow6.test").await.unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(got, ips(&["192.0.2.1"]));
        tokio::time::sleep(Duration::from_millis(600)).await;
        // (The upstream pool may have asked twice meanwhile; nothing more now.)
        let asked = counts[1].load(Ordering::SeqCst);
        let got = h.resolve_addrs("slow6.test").await.unwrap();
        assert_eq!(got, ips(&["2001:db8::1", "192.0.2.1"]));
        assert_eq!(
            counts[1].load(Ordering::SeqCst),
            asked,
            "the late AAAA was cached"
        );
    }

    #[test]
    fn localhost_and_names() {
        for h in ["localhost", "LOCALHOST.", "a.b.localhost"] {
            assert_eq!(localhost(h), Some(ips(&["127.0.0.1", "::1"])), "{h}");
        }
        for h in ["notlocalhost", "localhost.example", "xlocalhost."] {
            assert_eq!(localhost(h), None, "{h}");
        }
        assert!(fqdn("example.org").unwrap().is_fqdn());
        assert!(fqdn("").is_err());
        assert!(fqdn(".x").is_err());
        assert!(fqdn(&"a".repeat(300)).is_err());
    }
}
