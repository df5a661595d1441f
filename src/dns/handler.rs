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
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::cache::{self, AnswerCache};
use super::fast::{self, BlockedData, FastQuery};
use super::upstream::{UpstreamError, Upstreams};
use super::wire::{self, Answer, ClientQuery, Ede, Reject};
use crate::audit::{AuditEvent, AuditSink};
use crate::config::BlockMode;
use crate::identity::{Identity, IdentityTable};
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
const SECURITY_CATEGORIES: &[&str] = &[
    "malware",
    "phishing",
    "cryptojacking",
    "ddos",
    "doh",
    "vpn",
    "redirector",
    "tor",
];

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
    /// The wall-clock time the query was decided at (one clock read per query).
    now: DateTime<Utc>,
}

pub struct Handler {
    store: Arc<SnapshotStore>,
    upstreams: Upstreams,
    cache: AnswerCache,
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Logged-in people by address (proxy authentication, portal); else the network map.
    identities: Arc<IdentityTable>,
    audit: AuditSink,
    options: HandlerOptions,
}

/// Pre-resolved metric children for the per-query hot path (a labelled lookup
/// hashes its labels under a lock; these are plain atomics).
struct HotMetrics {
    queries_udp: prometheus::IntCounter,
    queries_tcp: prometheus::IntCounter,
    allow: prometheus::IntCounter,
    /// By rcode 0..=5 (noerror, formerr, servfail, nxdomain, notimp, refused).
    responses: Vec<prometheus::IntCounter>,
    /// By path: blocked, cache, upstream, local.
    durations: [prometheus::Histogram; 4],
}

static HOT: LazyLock<HotMetrics> = LazyLock::new(|| HotMetrics {
    queries_udp: metrics::DNS_QUERIES_TOTAL.with_label_values(&["udp"]),
    queries_tcp: metrics::DNS_QUERIES_TOTAL.with_label_values(&["tcp"]),
    allow: metrics::DECISIONS_TOTAL.with_label_values(&["dns", "allow", ""]),
    responses: (0u8..=5)
        .map(|c| {
            metrics::DNS_RESPONSES_TOTAL
                .with_label_values(&[wire::rcode_label(ResponseCode::from(0, c))])
        })
        .collect(),
    durations: ["blocked", "cache", "upstream", "local"]
        .map(|p| metrics::DNS_REQUEST_SECONDS.with_label_values(&[p])),
});

/// How a query was answered, for the latency histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Blocked,
    Cache,
    Upstream,
    Local,
}

impl Handler {
    pub fn new(
        store: Arc<SnapshotStore>,
        upstreams: Upstreams,
        identities: Arc<IdentityTable>,
        audit: AuditSink,
        options: HandlerOptions,
    ) -> Self {
        let limiter = options
            .rate_limit
            .map(|(qps, burst)| RateLimiter::keyed(Quota::per_second(qps).allow_burst(burst)));
        Handler {
            store,
            upstreams,
            cache: AnswerCache::new(
                options.cache_size,
                options.cache_max_ttl,
                options.cache_negative_max_ttl,
            ),
            limiter,
            identities,
            audit,
            options,
        }
    }

    pub fn upstream_specs(&self) -> &[super::upstream::UpstreamSpec] {
        self.upstreams.specs()
    }

    /// Puts an upstream answer in the cache, as `forward` does (benches, tests).
    pub fn cache_insert(&self, name: &Name, qtype: RecordType, answer: &Answer) {
        self.cache.insert(name, qtype, answer);
    }

    /// The cached answer to `name`/`qtype`, TTLs counted down (counted as a lookup).
    pub(super) fn cached(&self, name: &Name, qtype: RecordType) -> Option<Answer> {
        let answer = self
            .cache
            .get(&fast::cache_key(name, u16::from(qtype)))
            .and_then(|e| e.answer());
        cache::count(answer.is_some());
        answer
    }

    /// Asks the upstreams and caches the answer, as a client's cache miss does.
    pub(super) async fn fetch(
        &self,
        name: &Name,
        qtype: RecordType,
    ) -> Result<Answer, UpstreamError> {
        let answer = self.upstreams.query(name.clone(), qtype).await?;
        self.cache.insert(name, qtype, &answer);
        Ok(answer)
    }

    /// Whether `client` is inside `client_networks` now (the TCP listener closes
    /// anyone else's connection before reading from it).
    pub fn is_client(&self, client: IpAddr) -> bool {
        self.store.load().is_client(client)
    }

    /// Periodic upkeep: forget idle clients' rate-limit state, export the cache size.
    pub fn maintain(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
        self.export_cache_size();
    }

    /// Sets `vigie_dns_cache_entries`; also run at every scrape (see `dns::setup`).
    pub fn export_cache_size(&self) {
        metrics::DNS_CACHE_ENTRIES.set(self.cache.entry_count() as i64);
    }

    /// Answers `packet` from `client`, going upstream if needed.
    pub async fn handle(
        &self,
        packet: &[u8],
        client: IpAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        match self.prepare(packet, client, transport) {
            Prepared::Done(r) => r,
            Prepared::Forward(p) => Some(self.forward(*p).await),
        }
    }

    /// Everything that can be answered without the network.
    pub fn prepare(&self, packet: &[u8], client: IpAddr, transport: Transport) -> Prepared {
        let started = Instant::now();
        // A dual-stack listener (`[::]:53`) sees IPv4 clients as `::ffff:a.b.c.d`:
        // the rate limit, the identity and the audit record use the IPv4 address.
        let client = client.to_canonical();
        match transport {
            Transport::Udp => HOT.queries_udp.inc(),
            Transport::Tcp => HOT.queries_tcp.inc(),
        }
        let snap = self.store.load();
        // Outsiders first: they are refused whatever their rate, and never get a
        // rate-limit bucket (spoofed sources would otherwise fill the limiter's map).
        if !snap.is_client(client) {
            return Prepared::Done(match parse_or_reject(packet, started) {
                Ok(query) => Some(self.refuse(&query, transport, "client_network", started)),
                Err(reply) => reply,
            });
        }
        if let Some(l) = &self.limiter
            && l.check_key(&rate_key(client)).is_err()
        {
            metrics::DNS_RATE_LIMITED_TOTAL.inc();
            // Dropping on UDP gives a flooder (or a spoofed victim) nothing; a TCP
            // client proved its address and gets a REFUSED.
            return Prepared::Done(match transport {
                Transport::Udp => None,
                Transport::Tcp => refuse_header(packet),
            });
        }
        let mut fq = FastQuery::empty(packet);
        if fast::parse_into(&mut fq)
            && let Some(reply) = self.try_fast(&snap, &fq, client, transport, started)
        {
            return Prepared::Done(Some(reply));
        }
        let query = match parse_or_reject(packet, started) {
            Ok(q) => q,
            Err(reply) => return Prepared::Done(reply),
        };
        if query.query.query_class != DNSClass::IN {
            return Prepared::Done(Some(self.refuse(&query, transport, "class", started)));
        }
        if matches!(query.query.query_type, RecordType::AXFR | RecordType::IXFR) {
            return Prepared::Done(Some(self.refuse(
                &query,
                transport,
                "zone_transfer",
                started,
            )));
        }

        let host = query
            .query
            .name
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let now = Utc::now();
        let identity = self.identities.resolve(&snap, client, now);
        let qtype = u16::from(query.query.query_type);
        let decision = policy::decide(&snap, &Request::Dns { name: &host, qtype }, &identity, now);
        let ctx = QueryCtx {
            snap,
            client,
            identity,
            host,
            decision,
            started,
            now,
        };
        match decision.verdict {
            Verdict::Block => {
                let answer = blocked_answer(&ctx, &query, &self.options, None);
                Prepared::Done(Some(self.finish(
                    &query,
                    transport,
                    &ctx,
                    answer,
                    Path::Blocked,
                    None,
                )))
            }
            Verdict::Allow => self.cached_or_forward(query, transport, ctx, None),
            Verdict::SafeSearch { target } => match Name::from_ascii(target) {
                Ok(mut t) => {
                    t.set_fqdn(true);
                    self.cached_or_forward(query, transport, ctx, Some(t))
                }
                Err(_) => {
                    let answer = Answer::rcode(ResponseCode::ServFail);
                    Prepared::Done(Some(self.finish(
                        &query,
                        transport,
                        &ctx,
                        answer,
                        Path::Local,
                        None,
                    )))
                }
            },
        }
    }

    /// The hot path: a query in the common shape that is blocked or answered from the
    /// cache, encoded by patching bytes. `None` hands the query to the general path
    /// (cache misses, safe search, refusals, anything unusual), which decides again.
    /// `client` is one of `snap`'s clients (checked by the caller).
    fn try_fast(
        &self,
        snap: &Arc<Snapshot>,
        fq: &FastQuery<'_>,
        client: IpAddr,
        transport: Transport,
        started: Instant,
    ) -> Option<Vec<u8>> {
        if fq.qclass != u16::from(DNSClass::IN) || matches!(fq.qtype, 251 | 252) {
            return None;
        }
        let snap = snap.clone();
        let now = Utc::now();
        let identity = self.identities.resolve(&snap, client, now);
        let host = fq.host();
        let decision = policy::decide(
            &snap,
            &Request::Dns {
                name: host,
                qtype: fq.qtype,
            },
            &identity,
            now,
        );
        let limit = match transport {
            Transport::Udp => fq.udp_limit(),
            Transport::Tcp => u16::MAX as usize,
        };
        match decision.verdict {
            Verdict::Block => {
                let ctx = QueryCtx {
                    snap,
                    client,
                    identity,
                    host: host.to_string(),
                    decision,
                    started,
                    now,
                };
                let plan = block_plan(&ctx, fq.qtype, &self.options, None);
                let bytes =
                    fast::blocked(fq, &plan.data, plan.ttl, (plan.ede.code, &plan.ede.text));
                if bytes.len() > limit {
                    return None;
                }
                self.record(fq.qtype, &ctx, plan.rcode(), Path::Blocked, None);
                Some(bytes)
            }
            Verdict::Allow => {
                let entry = self.cache.get(fq.cache_key())?;
                // A chain through a blocked name, or an answer too big: general path.
                if !entry.cnames().is_empty() {
                    let blocked = entry.cnames().iter().any(|c| {
                        policy::decide(&snap, &Request::Dns { name: c, qtype: 1 }, &identity, now)
                            .verdict
                            == Verdict::Block
                    });
                    if blocked {
                        return None;
                    }
                }
                let bytes = entry.wire().answer(fq, entry.age(), limit)?;
                cache::count(true);
                HOT.allow.inc();
                let rcode = entry.wire().rcode();
                let elapsed = count_response(ResponseCode::from(0, rcode), Path::Cache, started);
                if snap
                    .config
                    .records_allowed(decision.profile, snap.config.dns.log_allowed)
                {
                    let ctx = QueryCtx {
                        snap,
                        client,
                        identity,
                        host: host.to_string(),
                        decision,
                        started,
                        now,
                    };
                    self.audit_event(fq.qtype, &ctx, None, elapsed);
                }
                Some(bytes)
            }
            Verdict::SafeSearch { .. } => None,
        }
    }

    fn cached_or_forward(
        &self,
        query: ClientQuery,
        transport: Transport,
        ctx: QueryCtx,
        safe: Option<Name>,
    ) -> Prepared {
        let ask = safe.clone().unwrap_or_else(|| query.query.name.clone());
        let key = fast::cache_key(&ask, u16::from(query.query.query_type));
        match self.cache.get(&key) {
            Some(entry) if let Some(answer) = entry.answer() => {
                cache::count(true);
                Prepared::Done(Some(self.allowed(
                    &query,
                    transport,
                    &ctx,
                    answer,
                    safe.as_ref(),
                    Path::Cache,
                )))
            }
            _ => {
                cache::count(false);
                Prepared::Forward(Box::new(Pending {
                    query,
                    transport,
                    ctx,
                    ask,
                }))
            }
        }
    }

    /// Completes a query that needs the upstreams.
    pub async fn forward(&self, p: Pending) -> Vec<u8> {
        let Pending {
            query,
            transport,
            ctx,
            ask,
        } = p;
        let safe = (ask != query.query.name).then(|| ask.clone());
        let qtype = query.query.query_type;
        match self.upstreams.query(ask.clone(), qtype).await {
            Ok(answer) => {
                self.cache.insert(&ask, qtype, &answer);
                self.allowed(
                    &query,
                    transport,
                    &ctx,
                    answer,
                    safe.as_ref(),
                    Path::Upstream,
                )
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
                self.finish(&query, transport, &ctx, answer, Path::Upstream, None)
            }
        }
    }

    /// An allowed (or safe-search) query with the upstream's answer: check the CNAME
    /// chain (cloaking), add the safe-search CNAME, encode.
    fn allowed(
        &self,
        query: &ClientQuery,
        transport: Transport,
        ctx: &QueryCtx,
        mut answer: Answer,
        safe: Option<&Name>,
        path: Path,
    ) -> Vec<u8> {
        if let Some((via, d)) = cname_block(ctx, &answer) {
            metrics::DNS_CNAME_BLOCKED_TOTAL.inc();
            let blocked_ctx = QueryCtx {
                snap: ctx.snap.clone(),
                client: ctx.client,
                identity: ctx.identity.clone(),
                host: ctx.host.clone(),
                decision: d,
                started: ctx.started,
                now: ctx.now,
            };
            let answer = blocked_answer(&blocked_ctx, query, &self.options, Some(&via));
            return self.finish(query, transport, &blocked_ctx, answer, path, Some(via));
        }
        if let Some(target) = safe {
            let cname = Record::from_rdata(
                query.query.name.clone(),
                SAFE_SEARCH_TTL,
                RData::CNAME(CNAME(target.clone())),
            );
            answer.answers.insert(0, cname);
            // The CNAME exists even if the safe host has no record of this type.
            if answer.rcode == ResponseCode::NXDomain {
                answer.rcode = ResponseCode::NoError;
            }
        }
        self.finish(query, transport, ctx, answer, path, None)
    }

    fn refuse(
        &self,
        query: &ClientQuery,
        transport: Transport,
        reason: &'static str,
        started: Instant,
    ) -> Vec<u8> {
        metrics::DNS_REFUSED_TOTAL
            .with_label_values(&[reason])
            .inc();
        let (bytes, _) = wire::encode(
            query,
            &Answer::rcode(ResponseCode::Refused),
            limit(query, transport),
        );
        count_response(ResponseCode::Refused, Path::Local, started);
        bytes
    }

    /// Encodes, counts, records: every decided query of the general path ends here.
    fn finish(
        &self,
        query: &ClientQuery,
        transport: Transport,
        ctx: &QueryCtx,
        answer: Answer,
        path: Path,
        via: Option<String>,
    ) -> Vec<u8> {
        let (bytes, truncated) = wire::encode(query, &answer, limit(query, transport));
        if truncated {
            metrics::DNS_TRUNCATED_TOTAL.inc();
        }
        self.record(
            u16::from(query.query.query_type),
            ctx,
            answer.rcode,
            path,
            via,
        );
        bytes
    }

    /// Metrics and audit event of a decided query (both paths).
    fn record(
        &self,
        qtype: u16,
        ctx: &QueryCtx,
        rcode: ResponseCode,
        path: Path,
        via: Option<String>,
    ) {
        let d = &ctx.decision;
        if d.verdict == Verdict::Allow {
            HOT.allow.inc();
        } else {
            metrics::DECISIONS_TOTAL
                .with_label_values(&["dns", d.verdict.as_str(), d.category_name(&ctx.snap)])
                .inc();
        }
        let elapsed = count_response(rcode, path, ctx.started);
        if d.verdict == Verdict::Block
            || ctx
                .snap
                .config
                .records_allowed(d.profile, ctx.snap.config.dns.log_allowed)
        {
            self.audit_event(qtype, ctx, via, elapsed);
        }
    }

    fn audit_event(&self, qtype: u16, ctx: &QueryCtx, via: Option<String>, elapsed: Duration) {
        let d = &ctx.decision;
        // For a CNAME-chain block, the decision (and its list entry) is the chain's name.
        let decided = via.as_deref().unwrap_or(&ctx.host);
        self.audit.record(AuditEvent {
            time: ctx.now,
            service: "dns",
            client_ip: ctx.client,
            user: ctx.identity.user.as_deref().map(str::to_string),
            identity: ctx.identity.source.label(),
            profile: ctx.snap.profile_label(d.profile),
            target: ctx.host.clone(),
            qtype: Some(wire::qtype_label(qtype)),
            verdict: d.verdict.as_str(),
            category: d.category_label(&ctx.snap),
            rule: d.rule_label(&ctx.snap),
            entry: d.entry(
                &ctx.snap,
                &Request::Dns {
                    name: decided,
                    qtype,
                },
            ),
            via,
            latency_us: elapsed.as_micros() as u64,
            proxy: None,
        });
    }
}

fn limit(query: &ClientQuery, transport: Transport) -> usize {
    match transport {
        Transport::Udp => query.udp_limit(),
        Transport::Tcp => u16::MAX as usize,
    }
}

/// Counts a response and its latency; returns the latency.
fn count_response(rcode: ResponseCode, path: Path, started: Instant) -> Duration {
    let code = u16::from(rcode);
    match HOT.responses.get(usize::from(code)) {
        Some(c) if code <= 5 => c.inc(),
        _ => metrics::DNS_RESPONSES_TOTAL
            .with_label_values(&[wire::rcode_label(rcode)])
            .inc(),
    }
    let i = match path {
        Path::Blocked => 0,
        Path::Cache => 1,
        Path::Upstream => 2,
        Path::Local => 3,
    };
    let elapsed = started.elapsed();
    HOT.durations[i].observe(elapsed.as_secs_f64());
    elapsed
}

/// The parsed query, or what to answer a packet that is not one (FORMERR, or
/// nothing for a runt), counted.
fn parse_or_reject(packet: &[u8], started: Instant) -> Result<ClientQuery, Option<Vec<u8>>> {
    wire::parse_query(packet).map_err(|reject| {
        let action = if matches!(reject, Reject::Drop(_)) {
            "dropped"
        } else {
            "formerr"
        };
        metrics::DNS_MALFORMED_TOTAL
            .with_label_values(&[action])
            .inc();
        wire::encode_reject(&reject).map(|(bytes, rcode)| {
            count_response(rcode, Path::Local, started);
            bytes
        })
    })
}

/// The rate limiter's and the TCP connection cap's key for a client: its address
/// (an IPv4-mapped IPv6 one as the IPv4 it is). Not its IPv6 /64, as a resolver on
/// the internet would key a customer: on a school's LAN one /64 is every device of
/// the segment (SLAAC), so a /64 budget would throttle the whole school for one
/// busy laptop. A device that rotates privacy addresses gets a budget per address;
/// outsiders get none (the client-network check comes first), and idle entries are
/// dropped by the limiter's upkeep, so the map stays bounded by the LAN.
pub(crate) fn rate_key(client: IpAddr) -> IpAddr {
    client.to_canonical()
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
    let now = ctx.now;
    answer.answers.iter().find_map(|r| {
        let RData::CNAME(CNAME(target)) = &r.data else {
            return None;
        };
        let name = target.to_ascii();
        let name = name.trim_end_matches('.');
        let d = policy::decide(
            &ctx.snap,
            &Request::Dns { name, qtype: 1 },
            &ctx.identity,
            now,
        );
        (d.verdict == Verdict::Block).then(|| (name.to_ascii_lowercase(), d))
    })
}

/// What a blocked answer says, whichever path encodes it.
struct BlockPlan {
    data: BlockedData,
    ttl: u32,
    ede: Ede,
}

impl BlockPlan {
    fn rcode(&self) -> ResponseCode {
        match self.data {
            BlockedData::Negative { nxdomain: true } => ResponseCode::NXDomain,
            _ => ResponseCode::NoError,
        }
    }
}

/// The answer for a blocked name, by the profile's block mode, with its EDE.
fn block_plan(
    ctx: &QueryCtx,
    qtype: u16,
    options: &HandlerOptions,
    via: Option<&str>,
) -> BlockPlan {
    let snap = &ctx.snap;
    let d = &ctx.decision;
    let dns = &snap.config.dns;
    let mode = snap
        .config
        .profiles
        .get(d.profile as usize)
        .map(|p| p.block_mode)
        .unwrap_or(BlockMode::Nxdomain);
    let category = d.category_name(snap);
    let what = match d.reason {
        Reason::DenyOverride(_) => "deny override",
        Reason::BareIp => "bare IP",
        _ if category.is_empty() => "policy",
        _ => category,
    };
    let code = if SECURITY_CATEGORIES.contains(&category) {
        wire::EDE_BLOCKED
    } else {
        wire::EDE_FILTERED
    };
    let text = match via {
        Some(v) => format!(
            "vigie: {what} (profile {}, via CNAME {v})",
            snap.profile_name(d.profile)
        ),
        None => format!("vigie: {what} (profile {})", snap.profile_name(d.profile)),
    };
    // The DoH canary and Private Relay names must be NXDOMAIN whatever the mode:
    // that is the signal browsers and Apple devices look for.
    let circumvention = d.reason == Reason::Circumvention
        || policy::CIRCUMVENTION_NAMES
            .iter()
            .any(|n| ctx.host == *n || ctx.host.strip_suffix(n).is_some_and(|p| p.ends_with('.')));
    let mode = if circumvention {
        BlockMode::Nxdomain
    } else {
        mode
    };
    const A: u16 = 1;
    const AAAA: u16 = 28;
    let data = match (mode, qtype) {
        (BlockMode::Nxdomain, _) => BlockedData::Negative { nxdomain: true },
        (BlockMode::Null, A) => BlockedData::V4(Ipv4Addr::UNSPECIFIED),
        (BlockMode::Null, AAAA) => BlockedData::V6(Ipv6Addr::UNSPECIFIED),
        (BlockMode::Page, A) => BlockedData::V4(
            dns.block_page_ipv4
                .or(options.default_block_page_v4)
                .unwrap_or(Ipv4Addr::UNSPECIFIED),
        ),
        // No IPv6 block page: "no data", so the browser uses the A answer.
        (BlockMode::Page, AAAA) => match dns.block_page_ipv6.or(options.default_block_page_v6) {
            Some(ip) => BlockedData::V6(ip),
            None => BlockedData::Negative { nxdomain: false },
        },
        // Every other type of a blocked name (HTTPS, SVCB, MX, TXT…) has no data.
        _ => BlockedData::Negative { nxdomain: false },
    };
    BlockPlan {
        data,
        ttl: dns.blocked_ttl,
        ede: Ede { code, text },
    }
}

/// [`block_plan`] as records, for the general path.
fn blocked_answer(
    ctx: &QueryCtx,
    query: &ClientQuery,
    options: &HandlerOptions,
    via: Option<&str>,
) -> Answer {
    let plan = block_plan(ctx, u16::from(query.query.query_type), options, via);
    let name = query.query.name.clone();
    let ttl = plan.ttl;
    let mut answer = Answer {
        rcode: plan.rcode(),
        authoritative: true,
        ..Answer::default()
    };
    match plan.data {
        BlockedData::V4(ip) => answer
            .answers
            .push(Record::from_rdata(name, ttl, RData::A(A(ip)))),
        BlockedData::V6(ip) => {
            answer
                .answers
                .push(Record::from_rdata(name, ttl, RData::AAAA(AAAA(ip))))
        }
        BlockedData::Negative { .. } => {
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
            answer
                .authorities
                .push(Record::from_rdata(name, ttl, RData::SOA(soa)));
        }
    }
    answer.ede = Some(plan.ede);
    answer
}

/// A handler for the module tests: the configuration `config` (no list
/// sources), one `upstream` with its `timeout`, a small cache and `rate_limit`
/// (qps, burst); its audit events go nowhere.
#[cfg(test)]
pub(crate) fn test_handler(
    config: &str,
    upstream: &str,
    timeout: Duration,
    rate_limit: Option<(NonZeroU32, NonZeroU32)>,
) -> Handler {
    let mut cfg = crate::config::parse(config, "t.toml", std::path::Path::new("/")).unwrap();
    cfg.sources.clear();
    let snap = Snapshot::build(cfg, None).unwrap_or_else(|e| panic!("{e}"));
    let spec = super::upstream::parse_spec(upstream).unwrap();
    let ups = Upstreams::new(vec![spec], timeout, None).unwrap();
    let (audit, _rx) = AuditSink::channel(16);
    Handler::new(
        Arc::new(SnapshotStore::new(snap)),
        ups,
        Arc::new(IdentityTable::new()),
        audit,
        HandlerOptions {
            rate_limit,
            cache_size: 100,
            cache_max_ttl: 3600,
            cache_negative_max_ttl: 300,
            ..HandlerOptions::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handler for `client_networks`, limited to one query per second (burst 1),
    /// with an upstream it never reaches (the tests stop at `prepare`).
    fn handler(client_networks: &str) -> Handler {
        let one = NonZeroU32::new(1).unwrap();
        test_handler(
            &format!("client_networks = {client_networks}\n[profiles.invites]\n"),
            "127.0.0.1:9",
            Duration::from_secs(1),
            Some((one, one)),
        )
    }

    fn query(id: u16) -> Vec<u8> {
        let mut m = hickory_proto::op::Message::query();
        m.metadata.id = id;
        m.metadata.recursion_desired = true;
        m.add_query(hickory_proto::op::Query::query(
            Name::from_ascii("www.example.org.").unwrap(),
            RecordType::A,
        ));
        m.to_vec().unwrap()
    }

    fn rcode(p: &Prepared) -> Option<ResponseCode> {
        match p {
            Prepared::Done(Some(bytes)) => Some(
                hickory_proto::op::Message::from_vec(bytes)
                    .unwrap()
                    .metadata
                    .response_code,
            ),
            _ => None,
        }
    }

    /// Dropped by the rate limit (UDP): no answer at all.
    fn limited(p: &Prepared) -> bool {
        matches!(p, Prepared::Done(None))
    }

    #[tokio::test]
    async fn outsiders_are_refused_before_the_rate_limit_and_never_use_it() {
        let h = handler(r#"["10.0.0.0/8"]"#);
        let outsider: IpAddr = "192.0.2.9".parse().unwrap();
        // Every query of an outsider is REFUSED, however many: none is dropped as
        // rate-limited, and none takes a bucket in the limiter.
        for id in 0..5 {
            let p = h.prepare(&query(id), outsider, Transport::Udp);
            assert_eq!(rcode(&p), Some(ResponseCode::Refused), "query {id}");
        }
        let limiter = h.limiter.as_ref().unwrap();
        assert_eq!(limiter.len(), 0, "outsiders got rate-limit state");
        // A client still has its own budget.
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(!limited(&h.prepare(&query(9), client, Transport::Udp)));
        assert!(limited(&h.prepare(&query(10), client, Transport::Udp)));
    }

    #[tokio::test]
    async fn ipv6_devices_of_one_lan_64_each_have_their_budget() {
        let h = handler(r#"["2001:db8::/32"]"#);
        let first: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:0:1:ffff::2".parse().unwrap();
        assert!(!limited(&h.prepare(&query(1), first, Transport::Udp)));
        assert!(limited(&h.prepare(&query(2), first, Transport::Udp)));
        // Another device of the same LAN segment (one /64) is not held back.
        assert!(!limited(&h.prepare(&query(3), same_64, Transport::Udp)));
        assert_eq!(
            rate_key("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }
}
