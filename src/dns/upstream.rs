//! The upstream resolvers vigie forwards allowed queries to: plain UDP/TCP,
//! DNS-over-TLS and DNS-over-HTTPS, through hickory-resolver's name-server pool,
//! which keeps connections, orders servers by measured latency, queries two at once
//! (so one dead upstream costs no time) and retries over TCP when an answer is
//! truncated. This module only forwards; caching and filtering are the handler's.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hickory_resolver::config::{NameServerConfig, ResolverOpts, ServerOrderingStrategy};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::DnsHandle;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::{DnsRequest, DnsRequestOptions, Query};
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::{NameServerPool, PoolContext, TlsConfig};

use super::wire::Answer;
use crate::metrics;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(
        "invalid upstream \"{spec}\": {why} (expected e.g. 9.9.9.9, 9.9.9.9:53, tcp://9.9.9.9, tls://9.9.9.9#dns.quad9.net, https://9.9.9.9/dns-query#dns.quad9.net)"
    )]
    Spec { spec: String, why: String },
    #[error(
        "no upstream resolver configured and none found in /etc/resolv.conf: give --upstream or [dns] upstreams"
    )]
    None,
    #[error("TLS setup for upstreams failed: {0}")]
    Tls(String),
    #[error("no upstream answered within {0:?}")]
    Timeout(Duration),
    #[error("upstream exchange failed: {0}")]
    Failed(String),
}

/// One upstream as written in the config or on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSpec {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// UDP, falling back to TCP for truncated answers.
    Plain,
    /// TCP only.
    Tcp,
    Tls {
        server_name: String,
    },
    Https {
        server_name: String,
        path: String,
    },
}

impl std::fmt::Display for UpstreamSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.protocol {
            Protocol::Plain => write!(f, "{}", self.addr),
            Protocol::Tcp => write!(f, "tcp://{}", self.addr),
            Protocol::Tls { server_name } => write!(f, "tls://{}#{server_name}", self.addr),
            Protocol::Https { server_name, path } => {
                write!(f, "https://{}{path}#{server_name}", self.addr)
            }
        }
    }
}

/// Parses `IP`, `IP:port`, `[v6]:port`, `udp://…`, `tcp://…`, `tls://IP[:port]#name`,
/// `https://IP[:port][/path]#name`. An IP is required: resolving the upstream's own
/// name would need an upstream.
pub fn parse_spec(spec: &str) -> Result<UpstreamSpec, UpstreamError> {
    let bad = |why: &str| UpstreamError::Spec {
        spec: spec.to_string(),
        why: why.to_string(),
    };
    let s = spec.trim();
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("udp".to_string(), s),
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    let default_port = match scheme.as_str() {
        "udp" | "tcp" | "dns" => 53,
        "tls" => 853,
        "https" => 443,
        _ => return Err(bad("unknown scheme")),
    };
    let addr = if let Ok(sa) = hostport.parse::<SocketAddr>() {
        sa
    } else if let Ok(ip) = hostport
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        SocketAddr::new(ip, default_port)
    } else {
        return Err(bad(
            "the address must be an IP address, with an optional port",
        ));
    };
    let server_name = || -> Result<String, UpstreamError> {
        match fragment {
            Some(n) if !n.is_empty() => Ok(n.to_string()),
            _ => Err(bad("TLS needs the server's name after '#'")),
        }
    };
    let protocol = match scheme.as_str() {
        "udp" | "dns" => Protocol::Plain,
        "tcp" => Protocol::Tcp,
        "tls" => Protocol::Tls {
            server_name: server_name()?,
        },
        _ => Protocol::Https {
            server_name: server_name()?,
            path: path
                .filter(|p| *p != "/")
                .unwrap_or("/dns-query")
                .to_string(),
        },
    };
    if matches!(
        protocol,
        Protocol::Plain | Protocol::Tcp | Protocol::Tls { .. }
    ) && path.is_some()
    {
        return Err(bad("only https:// upstreams take a path"));
    }
    Ok(UpstreamSpec { addr, protocol })
}

/// The nameservers of /etc/resolv.conf, minus `exclude` (vigie's own addresses, so
/// a gateway whose resolv.conf points at itself does not forward to itself).
pub fn system_upstreams(exclude: &[SocketAddr]) -> Vec<UpstreamSpec> {
    let Ok((conf, _)) = hickory_resolver::system_conf::read_system_conf() else {
        return Vec::new();
    };
    let mut out: Vec<UpstreamSpec> = Vec::new();
    for ns in conf.name_servers() {
        let port = ns.connections.first().map(|c| c.port).unwrap_or(53);
        let addr = SocketAddr::new(ns.ip, port);
        let is_self = exclude
            .iter()
            .any(|e| e.port() == port && (e.ip() == ns.ip || e.ip().is_unspecified()));
        if !is_self && !out.iter().any(|o| o.addr == addr) {
            out.push(UpstreamSpec {
                addr,
                protocol: Protocol::Plain,
            });
        }
    }
    out
}

/// The forwarding side: a pool of upstream name servers.
pub struct Upstreams {
    pool: NameServerPool<TokioRuntimeProvider>,
    /// When every upstream is plain DNS: UDP queries go through this forwarder (the
    /// pool then only carries the TCP retries of truncated answers).
    udp: Option<super::forward::UdpForwarder>,
    timeout: Duration,
    specs: Vec<UpstreamSpec>,
}

impl Upstreams {
    /// Builds the pool; `timeout` bounds one query across every upstream tried.
    /// `ca_file`: extra CAs trusted for `tls://` and `https://` upstreams.
    pub fn new(
        specs: Vec<UpstreamSpec>,
        timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Upstreams, UpstreamError> {
        if specs.is_empty() {
            return Err(UpstreamError::None);
        }
        let mut opts = ResolverOpts::default();
        opts.timeout = timeout;
        opts.attempts = 1;
        // Two upstreams at once: the faster answers, a dead one costs nothing (the
        // "parallel best" strategy of Blocky, hickory's default).
        opts.num_concurrent_reqs = 2;
        opts.server_ordering_strategy = ServerOrderingStrategy::QueryStatistics;
        // One TCP/TLS connection carries many queries of a busy school.
        opts.max_active_requests = 512;
        // Names travel as the client wrote them; 0x20 would only add a retry path.
        opts.case_randomization = false;
        let configs = specs.iter().map(|s| {
            let mut c = match &s.protocol {
                Protocol::Plain => NameServerConfig::udp_and_tcp(s.addr.ip()),
                Protocol::Tcp => NameServerConfig::tcp(s.addr.ip()),
                Protocol::Tls { server_name } => {
                    NameServerConfig::tls(s.addr.ip(), Arc::from(server_name.as_str()))
                }
                Protocol::Https { server_name, path } => NameServerConfig::https(
                    s.addr.ip(),
                    Arc::from(server_name.as_str()),
                    Some(Arc::from(path.as_str())),
                ),
            };
            for conn in &mut c.connections {
                conn.port = s.addr.port();
            }
            c.trust_negative_responses = true;
            c
        });
        let configs: Vec<NameServerConfig> = configs.collect();
        let tls = TlsConfig {
            config: crate::tls_roots::client_config(ca_file, "dns.upstream_ca_file")
                .map_err(UpstreamError::Tls)?,
        };
        let cx = Arc::new(PoolContext::new(opts, tls));
        let pool = NameServerPool::from_config(configs, cx, TokioRuntimeProvider::default());
        let udp = if specs.iter().all(|s| s.protocol == Protocol::Plain) {
            let addrs: Vec<SocketAddr> = specs.iter().map(|s| s.addr).collect();
            match super::forward::UdpForwarder::new(&addrs) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(
                        "UDP forwarder not available ({e}); forwarding through the resolver pool"
                    );
                    None
                }
            }
        } else {
            None
        };
        Ok(Upstreams {
            pool,
            udp,
            timeout,
            specs,
        })
    }

    pub fn specs(&self) -> &[UpstreamSpec] {
        &self.specs
    }

    /// Asks the upstreams for `name`/`qtype` (class IN). NXDOMAIN and "no data" are
    /// answers, not errors: they come back with their SOA for negative caching.
    pub async fn query(&self, name: Name, qtype: RecordType) -> Result<Answer, UpstreamError> {
        let started = Instant::now();
        if let Some(udp) = &self.udp {
            // `None`: truncated; the pool asks again and retries over TCP.
            if let Some(out) = self.query_udp(udp, &name, qtype, started).await {
                return out;
            }
        }
        let mut options = DnsRequestOptions::default();
        options.recursion_desired = true;
        options.use_edns = true;
        options.edns_payload_len = super::wire::MAX_UDP_PAYLOAD;
        let request = DnsRequest::from_query(Query::query(name, qtype), options);
        let exchange = async { self.pool.send(request).next().await };
        // The pool has its own deadline; this outer bound holds even if a transport
        // misbehaves, so a client never waits longer than the configured timeout.
        let result =
            tokio::time::timeout(self.timeout + Duration::from_millis(100), exchange).await;
        let (label, out) = match result {
            Err(_) | Ok(Some(Err(NetError::Timeout))) => {
                ("timeout", Err(UpstreamError::Timeout(self.timeout)))
            }
            Ok(None) => ("error", Err(UpstreamError::Failed("no response".into()))),
            Ok(Some(Ok(response))) => {
                let msg = response.into_message();
                let answer = Answer {
                    rcode: msg.metadata.response_code,
                    answers: msg.answers,
                    authorities: msg.authorities,
                    additionals: msg.additionals,
                    authoritative: false,
                    ede: None,
                };
                (
                    if answer.rcode == hickory_resolver::proto::op::ResponseCode::NXDomain {
                        "nxdomain"
                    } else {
                        "ok"
                    },
                    Ok(answer),
                )
            }
            Ok(Some(Err(NetError::Dns(DnsError::NoRecordsFound(nr))))) => {
                let answer = Answer {
                    rcode: nr.response_code,
                    authorities: nr.authorities.map(|a| a.to_vec()).unwrap_or_default(),
                    ..Answer::default()
                };
                (
                    if nr.response_code == hickory_resolver::proto::op::ResponseCode::NXDomain {
                        "nxdomain"
                    } else {
                        "nodata"
                    },
                    Ok(answer),
                )
            }
            Ok(Some(Err(e))) => ("error", Err(UpstreamError::Failed(e.to_string()))),
        };
        count_exchange(started, label);
        out
    }
}

/// Counts one upstream exchange, whichever path carried it: its time and result.
fn count_exchange(started: Instant, label: &str) {
    metrics::DNS_UPSTREAM_SECONDS.observe(started.elapsed().as_secs_f64());
    metrics::DNS_UPSTREAM_TOTAL
        .with_label_values(&[label])
        .inc();
}

impl Upstreams {
    /// One exchange through the UDP forwarder. `None` when the answer was truncated
    /// (the caller goes through the pool, which retries over TCP).
    async fn query_udp(
        &self,
        udp: &super::forward::UdpForwarder,
        name: &Name,
        qtype: RecordType,
        started: Instant,
    ) -> Option<Result<Answer, UpstreamError>> {
        use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
        let mut msg = Message::new(0, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(name.clone(), qtype));
        let mut edns = Edns::new();
        edns.set_max_payload(super::wire::MAX_UDP_PAYLOAD);
        msg.edns = Some(edns);
        let packet = match msg.to_vec() {
            Ok(p) => p,
            Err(e) => return Some(Err(UpstreamError::Failed(e.to_string()))),
        };
        let result = udp.exchange(packet, self.timeout).await;
        let (label, out) = match result {
            Err(super::forward::ForwardError::Timeout) => {
                ("timeout", Err(UpstreamError::Timeout(self.timeout)))
            }
            Err(super::forward::ForwardError::Io(e)) => {
                ("error", Err(UpstreamError::Failed(e.to_string())))
            }
            Ok((bytes, from)) => match Message::from_vec(&bytes) {
                Ok(m) if m.metadata.truncation => return None,
                // As through the pool: an upstream's failure is an error, not an
                // answer (the handler says SERVFAIL with its own reason).
                Ok(m)
                    if matches!(
                        m.metadata.response_code,
                        ResponseCode::ServFail | ResponseCode::Refused
                    ) =>
                {
                    (
                        "error",
                        Err(UpstreamError::Failed(format!(
                            "{from} answered {}",
                            m.metadata.response_code
                        ))),
                    )
                }
                Ok(m) => {
                    let rcode = m.metadata.response_code;
                    let label = match rcode {
                        ResponseCode::NXDomain => "nxdomain",
                        ResponseCode::NoError if m.answers.is_empty() => "nodata",
                        _ => "ok",
                    };
                    let answer = Answer {
                        rcode,
                        answers: m.answers,
                        authorities: m.authorities,
                        additionals: m.additionals,
                        authoritative: false,
                        ede: None,
                    };
                    (label, Ok(answer))
                }
                Err(e) => (
                    "error",
                    Err(UpstreamError::Failed(format!(
                        "malformed answer from {from}: {e}"
                    ))),
                ),
            },
        };
        count_exchange(started, label);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let p = |s| parse_spec(s).unwrap();
        assert_eq!(
            p("9.9.9.9"),
            UpstreamSpec {
                addr: "9.9.9.9:53".parse().unwrap(),
                protocol: Protocol::Plain
            }
        );
        assert_eq!(p("127.0.0.1:5400").addr.port(), 5400);
        assert_eq!(p("[::1]:5400").addr, "[::1]:5400".parse().unwrap());
        assert_eq!(p("::1").addr, "[::1]:53".parse().unwrap());
        assert_eq!(p("tcp://10.0.0.1").protocol, Protocol::Tcp);
        assert_eq!(
            p("tls://9.9.9.9#dns.quad9.net"),
            UpstreamSpec {
                addr: "9.9.9.9:853".parse().unwrap(),
                protocol: Protocol::Tls {
                    server_name: "dns.quad9.net".into()
                }
            }
        );
        assert_eq!(
            p("https://1.1.1.1/dns-query#cloudflare-dns.com").protocol,
            Protocol::Https {
                server_name: "cloudflare-dns.com".into(),
                path: "/dns-query".into()
            }
        );
        assert!(parse_spec("dns.google").is_err());
        assert!(parse_spec("tls://9.9.9.9").is_err());
        assert!(parse_spec("quic://9.9.9.9#x").is_err());
        assert!(parse_spec("9.9.9.9/path").is_err());
    }
}
