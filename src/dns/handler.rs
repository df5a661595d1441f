//! One DNS query from bytes in to bytes out: Identify (client IP → identity),
//! Decide (`policy::decide`, for every query type), Act (blocked answer, cache,
//! upstream, safe-search CNAME), Record (metrics and audit event), in one place so
//! no path skips a step.
//!
//! The work is split in two so the UDP loop never waits on the network:
//! [`Handler::prepare`] does everything local (parsing, access control, rate limit,
//! the decision, blocked answers, cache hits) synchronously; only a cache miss
//! becomes a [`Pending`] that [`Handler::forward`] completes. Transports live in
//! `server`; this module never touches a socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use chrono::Utc;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};

use super::cache::{AnswerCache, CacheKey};
use super::upstream::{UpstreamError, Upstreams};
use super::wire::{self, Answer, ClientQuery, Ede, Reject};
use crate::audit::{AuditEvent, AuditSink};
use crate::config::BlockMode;
use crate::identity::{Identity, IdentitySource};
use crate::metrics;
use crate::policy::{self, Decision, Reason, Request, Verdict};
use crate::snapshot::{Snapshot, SnapshotStore};

/// How the query arrived; UDP answers are bounded by the client's EDNS size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Categories whose blocks are the operator's security policy (EDE 15 "Blocked");
/// every other category is content filtering agreed with the school (EDE 17 "Filtered").
const SECURITY_CATEGORIES: &[&str] = &["malware", "phishing", "cryptojacking", "ddos", "doh", "vpn", "redirector", "tor"];

/// TTL of the CNAME vigie synthesises for safe search.
const SAFE_SEARCH_TTL: u32 = 300;

/// The part of the handler's settings fixed at start-up (the rest is read from the
/// snapshot of each query, so a reload changes it).
#[derive(Clone, Debug, Default)]
pub struct HandlerOptions {
    /// Block-page addresses used when the config names none: the DNS listen address.
    pub default_block_page_v4: Option<Ipv4Addr>,
    pub default_block_page_v6: Option<Ipv6Addr>,
    /// Per-client rate limit: queries per second and burst; `None` = off.
    pub rate_limit: Option<(NonZeroU32, NonZeroU32)>,
    pub cache_size: u64,
    pub cache_max_ttl: u32,
    pub cache_negative_max_ttl: u32,
}

/// The result of the local part of a query.
pub enum Prepared {
    /// Answered (or dropped) without the network.
    Done(Option<Vec<u8>>),
    /// Needs the upstreams; finish with [`Handler::forward`].
    Forward(Box<Pending>),
}

/// A query waiting for the upstreams, with everything needed to finish it on the
/// snapshot it started with.
pub struct Pending {
    query: ClientQuery,
    transport: Transport,
    ctx: QueryCtx,
    /// The name to ask upstream (the query name, or the safe-search host).
    ask: Name,
}

/// Who asked what, and what was decided: carried to the end of a query for the
/// answer, the metrics and the audit event.
struct QueryCtx {
    snap: Arc<Snapshot>,
    client: IpAddr,
    identity: Identity,
    /// The query name, lowercase, without the final dot.
    host: String,
    decision: Decision,
    started: Instant,
}

pub struct Handler {
    store: Arc<SnapshotStore>,
    upstreams: Upstreams,
    cache: AnswerCache,
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    audit: AuditSink,
    options: HandlerOptions,
}

/// Pre-resolved metric children for the per-query hot path.
struct HotMetrics {
    queries_udp: prometheus::IntCounter,
    queries_tcp: prometheus::IntCounter,
}

static HOT: LazyLock<HotMetrics> = LazyLock::new(|| HotMetrics {
    queries_udp: metrics::DNS_QUERIES_TOTAL.with_label_values(&["udp"]),
    queries_tcp: metrics::DNS_QUERIES_TOTAL.with_label_values(&["tcp"]),
});

impl Handler {
    pub fn new(store: Arc<SnapshotStore>, upstreams: Upstreams, audit: AuditSink, options: HandlerOptions) -> Self {
        let limiter = options
            .rate_limit
            .map(|(qps, burst)| RateLimiter::keyed(Quota::per_second(qps).allow_burst(burst)));
        Handler {
            store,
            upstreams,
            cache: AnswerCache::new(options.cache_size, options.cache_max_ttl, options.cache_negative_max_ttl),
            limiter,
            audit,
            options,
        }
    }

    pub fn upstream_specs(&self) -> &[super::upstream::UpstreamSpec] {
        self.upstreams.specs()
    }

    /// Periodic upkeep: forget idle clients' rate-limit state, export the cache size.
    pub fn maintain(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
        metrics::DNS_CACHE_ENTRIES.set(self.cache.entry_count() as i64);
    }

    /// Answers `packet` from `client`, going upstream if needed.
    pub async fn handle(&self, packet: &[u8], client: IpAddr, transport: Transport) -> Option<Vec<u8>> {
        match self.prepare(packet, client, transport) {
            Prepared::Done(r) => r,
            Prepared::Forward(p) => Some(self.forward(*p).await),
        }
    }

    /// Everything that can be answered without the network.
    pub fn prepare(&self, packet: &[u8], client: IpAddr, transport: Transport) -> Prepared {
        let started = Instant::now();
        match transport {
            Transport::Udp => HOT.queries_udp.inc(),
            Transport::Tcp => HOT.queries_tcp.inc(),
        }
        if let Some(l) = &self.limiter
            && l.check_key(&client).is_err()
        {
            metrics::DNS_RATE_LIMITED_TOTAL.inc();
            // Dropping on UDP gives a flooder (or a spoofed victim) nothing; a TCP
            // client proved its address and gets a REFUSED.
            return Prepared::Done(match transport {
                Transport::Udp => None,
                Transport::Tcp => refuse_header(packet),
            });
        }
        let query = match wire::parse_query(packet) {
            Ok(q) => q,
            Err(reject) => {
                let action = if matches!(reject, Reject::Drop(_)) { "dropped" } else { "formerr" };
                metrics::DNS_MALFORMED_TOTAL.with_label_values(&[action]).inc();
                let reply = wire::encode_reject(&reject).map(|(bytes, rcode)| {
                    count_response(rcode, "local", started);
                    bytes
                });
                return Prepared::Done(reply);
            }
        };
        let snap = self.store.load();
        if !snap.is_client(client) {
            return Prepared::Done(Some(self.refuse(&query, transport, "client_network", started)));
        }
        if query.query.query_class != DNSClass::IN {
            return Prepared::Done(Some(self.refuse(&query, transport, "class", started)));
        }
        if matches!(query.query.query_type, RecordType::AXFR | RecordType::IXFR) {
            return Prepared::Done(Some(self.refuse(&query, transport, "zone_transfer", started)));
        }

        let host = query.query.name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
        let identity = Identity::from_ip(&snap, client);
        let qtype = u16::from(query.query.query_type);
        let decision = policy::decide(&snap, &Request::Dns { name: &host, qtype }, &identity, Utc::now());
        let ctx = QueryCtx {
            snap,
            client,
            identity,
            host,
            decision,
            started,
        };
        match decision.verdict {
            Verdict::Block => {
                let answer = blocked_answer(&ctx, &query, &self.options, None);
                Prepared::Done(Some(self.finish(&query, transport, &ctx, answer, "blocked", None)))
            }
            Verdict::Allow => self.from_cache_or_forward(query, transport, ctx, None),
            Verdict::SafeSearch { target } => match Name::from_ascii(target) {
                Ok(mut t) => {
                    t.set_fqdn(true);
                    self.from_cache_or_forward(query, transport, ctx, Some(t))
                }
                Err(_) => {
                    let answer = Answer::rcode(ResponseCode::ServFail);
                    Prepared::Done(Some(self.finish(&query, transport, &ctx, answer, "local", None)))
                }
            },
        }
    }

    fn from_cache_or_forward(&self, query: ClientQuery, transport: Transport, ctx: QueryCtx, safe: Option<Name>) -> Prepared {
        let ask = safe.clone().unwrap_or_else(|| query.query.name.clone());
        let key = CacheKey {
            name: LowerName::new(&ask),
            qtype: query.query.query_type,
        };
        match self.cache.get(&key) {
            Some(answer) => Prepared::Done(Some(self.allowed(&query, transport, &ctx, answer, safe.as_ref(), "cache"))),
            None => Prepared::Forward(Box::new(Pending { query, transport, ctx, ask })),
        }
    }

    /// Completes a query that needs the upstreams.
    pub async fn forward(&self, p: Pending) -> Vec<u8> {
        let Pending { query, transport, ctx, ask } = p;
        let safe = (ask != query.query.name).then(|| ask.clone());
        let key = CacheKey {
            name: LowerName::new(&ask),
            qtype: query.query.query_type,
        };
        match self.upstreams.query(ask, query.query.query_type).await {
            Ok(answer) => {
                self.cache.insert(key, &answer);
                self.allowed(&query, transport, &ctx, answer, safe.as_ref(), "upstream")
            }
            Err(e) => {
                tracing::debug!(name = %query.query.name, "upstream failed: {e}");
                let mut answer = Answer::rcode(ResponseCode::ServFail);
                answer.ede = Some(match e {
                    UpstreamError::Timeout(_) => Ede {
                        code: wire::EDE_NO_REACHABLE_AUTHORITY,
                        text: "vigie: no upstream answered in time".into(),
                    },
                    _ => Ede {
                        code: wire::EDE_NETWORK_ERROR,
                        text: "vigie: upstream exchange failed".into(),
                    },
                });
                self.finish(&query, transport, &ctx, answer, "upstream", None)
            }
        }
    }

    /// An allowed (or safe-search) query with the upstream's answer: check the CNAME
    /// chain (cloaking), add the safe-search CNAME, encode.
    fn allowed(&self, query: &ClientQuery, transport: Transport, ctx: &QueryCtx, mut answer: Answer, safe: Option<&Name>, path: &'static str) -> Vec<u8> {
        if let Some((via, d)) = cname_block(ctx, &answer) {
            metrics::DNS_CNAME_BLOCKED_TOTAL.inc();
            let blocked_ctx = QueryCtx {
                snap: ctx.snap.clone(),
                client: ctx.client,
                identity: ctx.identity.clone(),
                host: ctx.host.clone(),
                decision: d,
                started: ctx.started,
            };
            let answer = blocked_answer(&blocked_ctx, query, &self.options, Some(&via));
            return self.finish(query, transport, &blocked_ctx, answer, path, Some(via));
        }
        if let Some(target) = safe {
            let cname = Record::from_rdata(query.query.name.clone(), SAFE_SEARCH_TTL, RData::CNAME(CNAME(target.clone())));
            answer.answers.insert(0, cname);
            // The CNAME exists even if the safe host has no record of this type.
            if answer.rcode == ResponseCode::NXDomain {
                answer.rcode = ResponseCode::NoError;
            }
        }
        self.finish(query, transport, ctx, answer, path, None)
    }

    fn refuse(&self, query: &ClientQuery, transport: Transport, reason: &'static str, started: Instant) -> Vec<u8> {
        metrics::DNS_REFUSED_TOTAL.with_label_values(&[reason]).inc();
        let (bytes, _) = wire::encode(query, &Answer::rcode(ResponseCode::Refused), limit(query, transport));
        count_response(ResponseCode::Refused, "local", started);
        bytes
    }

    /// Encodes, counts, records. Every decided query ends here.
    fn finish(&self, query: &ClientQuery, transport: Transport, ctx: &QueryCtx, answer: Answer, path: &'static str, via: Option<String>) -> Vec<u8> {
        let (bytes, truncated) = wire::encode(query, &answer, limit(query, transport));
        if truncated {
            metrics::DNS_TRUNCATED_TOTAL.inc();
        }
        let d = &ctx.decision;
        let category = d.category_name(&ctx.snap);
        metrics::DECISIONS_TOTAL
            .with_label_values(&["dns", d.verdict.as_str(), category])
            .inc();
        let elapsed = count_response(answer.rcode, path, ctx.started);
        if d.verdict == Verdict::Block || ctx.snap.config.dns.log_allowed {
            let req = Request::Dns {
                name: &ctx.host,
                qtype: u16::from(query.query.query_type),
            };
            self.audit.record(AuditEvent {
                time: Utc::now(),
                service: "dns",
                client_ip: ctx.client,
                user: ctx.identity.user.as_deref().map(str::to_string),
                identity: identity_label(ctx.identity.source),
                profile: ctx.snap.profile_name(d.profile).to_string(),
                target: ctx.host.clone(),
                qtype: Some(query.query.query_type.to_string()),
                verdict: d.verdict.as_str(),
                category: d.category.map(|_| category.to_string()),
                rule: d.rule(&ctx.snap),
                entry: match &via {
                    Some(v) => d.entry(&ctx.snap, &Request::Dns { name: v, qtype: req_qtype(&req) }),
                    None => d.entry(&ctx.snap, &req),
                },
                via,
                latency_us: elapsed.as_micros() as u64,
            });
        }
        bytes
    }
}

fn req_qtype(r: &Request<'_>) -> u16 {
    match r {
        Request::Dns { qtype, .. } => *qtype,
        _ => 0,
    }
}

fn identity_label(s: IdentitySource) -> &'static str {
    match s {
        IdentitySource::ProxyAuth => "proxy_auth",
        IdentitySource::Portal => "portal",
        IdentitySource::Static => "static",
        IdentitySource::Network => "network",
        IdentitySource::Default => "default",
        IdentitySource::Operator => "operator",
    }
}

fn limit(query: &ClientQuery, transport: Transport) -> usize {
    match transport {
        Transport::Udp => query.udp_limit(),
        Transport::Tcp => u16::MAX as usize,
    }
}

fn count_response(rcode: ResponseCode, path: &'static str, started: Instant) -> std::time::Duration {
    let elapsed = started.elapsed();
    metrics::DNS_RESPONSES_TOTAL.with_label_values(&[wire::rcode_label(rcode)]).inc();
    metrics::DNS_REQUEST_SECONDS.with_label_values(&[path]).observe(elapsed.as_secs_f64());
    elapsed
}

/// REFUSED built from the header alone (rate-limited TCP clients: not worth a parse).
fn refuse_header(packet: &[u8]) -> Option<Vec<u8>> {
    let id = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
    wire::encode_reject(&Reject::Error {
        id,
        op_code: hickory_proto::op::OpCode::Query,
        rd: false,
        rcode: ResponseCode::Refused,
    })
    .map(|(b, _)| b)
}

/// The first name of the answer's CNAME chain that the client's profile blocks.
fn cname_block(ctx: &QueryCtx, answer: &Answer) -> Option<(String, Decision)> {
    let now = Utc::now();
    answer.answers.iter().find_map(|r| {
        let RData::CNAME(CNAME(target)) = &r.data else {
            return None;
        };
        let name = target.to_ascii();
        let name = name.trim_end_matches('.');
        let d = policy::decide(&ctx.snap, &Request::Dns { name, qtype: 1 }, &ctx.identity, now);
        (d.verdict == Verdict::Block).then(|| (name.to_ascii_lowercase(), d))
    })
}

/// The answer for a blocked name, by the profile's block mode, with its EDE.
fn blocked_answer(ctx: &QueryCtx, query: &ClientQuery, options: &HandlerOptions, via: Option<&str>) -> Answer {
    let snap = &ctx.snap;
    let d = &ctx.decision;
    let dns = &snap.config.dns;
    let ttl = dns.blocked_ttl;
    let mode = snap
        .config
        .profiles
        .get(d.profile as usize)
        .map(|p| p.block_mode)
        .unwrap_or(BlockMode::Nxdomain);
    let category = d.category_name(snap);
    let what = match d.reason {
        Reason::DenyOverride(_) => "deny override".to_string(),
        Reason::BareIp => "bare IP".to_string(),
        _ if category.is_empty() => "policy".to_string(),
        _ => category.to_string(),
    };
    let code = if SECURITY_CATEGORIES.contains(&category) { wire::EDE_BLOCKED } else { wire::EDE_FILTERED };
    let text = match via {
        Some(v) => format!("vigie: {what} (profile {}, via CNAME {v})", snap.profile_name(d.profile)),
        None => format!("vigie: {what} (profile {})", snap.profile_name(d.profile)),
    };
    let name = query.query.name.clone();
    let qtype = query.query.query_type;
    // The DoH canary and Private Relay names must be NXDOMAIN whatever the mode:
    // that is the signal browsers and Apple devices look for.
    let mode = if d.reason == Reason::Circumvention { BlockMode::Nxdomain } else { mode };
    let address: Option<RData> = match (mode, qtype) {
        (BlockMode::Nxdomain, _) => None,
        (BlockMode::Null, RecordType::A) => Some(RData::A(A(Ipv4Addr::UNSPECIFIED))),
        (BlockMode::Null, RecordType::AAAA) => Some(RData::AAAA(AAAA(Ipv6Addr::UNSPECIFIED))),
        (BlockMode::Page, RecordType::A) => Some(RData::A(A(dns
            .block_page_ipv4
            .or(options.default_block_page_v4)
            .unwrap_or(Ipv4Addr::UNSPECIFIED)))),
        // No IPv6 block page: "no data", so the browser uses the A answer.
        (BlockMode::Page, RecordType::AAAA) => dns.block_page_ipv6.or(options.default_block_page_v6).map(|ip| RData::AAAA(AAAA(ip))),
        // Every other type of a blocked name (HTTPS, SVCB, MX, TXT…) has no data.
        _ => None,
    };
    let mut answer = Answer {
        rcode: if mode == BlockMode::Nxdomain { ResponseCode::NXDomain } else { ResponseCode::NoError },
        authoritative: true,
        ede: Some(Ede { code, text }),
        ..Answer::default()
    };
    match address {
        Some(rdata) => answer.answers.push(Record::from_rdata(name, ttl, rdata)),
        None => {
            // An SOA lets stub resolvers cache the negative answer (RFC 2308).
            let soa = SOA::new(
                Name::from_ascii("vigie.invalid.").unwrap_or_else(|_| Name::root()),
                Name::from_ascii("hostmaster.vigie.invalid.").unwrap_or_else(|_| Name::root()),
                1,
                3600,
                600,
                86_400,
                ttl,
            );
            answer.authorities.push(Record::from_rdata(name, ttl, RData::SOA(soa)));
        }
    }
    answer
}
