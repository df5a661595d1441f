//! The answer cache: upstream answers kept for their TTL (RFC 1035 §3.2.1), negative
//! answers for the SOA's negative TTL (RFC 2308 §5), both capped, in a bounded
//! concurrent cache (quick_cache, S3-FIFO) so a scan of random names cannot evict
//! the popular ones. It stores what the upstreams said, before any filtering, so one
//! entry serves every profile and survives snapshot reloads; the handler filters on
//! the way out.

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use super::fast::{self, WireAnswer};
use super::wire::Answer;
use crate::metrics;

/// One cached upstream answer, in wire form only (a decoded copy would double the
/// memory): the hot path patches the bytes, the general path (safe search,
/// truncation, CNAME rewrites) decodes them with hickory-proto.
#[derive(Debug)]
pub struct Entry {
    wire: WireAnswer,
    /// CNAME targets in the answer (lowercase, no final dot), checked against the
    /// asking client's profile on every hit: the chain may pass a blocked name.
    cnames: Box<[Box<str>]>,
    /// When it was stored, milliseconds after [`EPOCH`] (8 bytes where an `Instant`
    /// takes 16: the cache holds tens of thousands of entries).
    stored_ms: u64,
    ttl: u32,
}

/// The clock entries are stored against.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Entry {
    /// Whole seconds since the answer was stored.
    pub fn age(&self) -> u32 {
        let s = now_ms().saturating_sub(self.stored_ms) / 1000;
        u32::try_from(s).unwrap_or(u32::MAX)
    }

    pub fn wire(&self) -> &WireAnswer {
        &self.wire
    }

    pub fn cnames(&self) -> &[Box<str>] {
        &self.cnames
    }

    /// The records with every TTL counted down by the time spent in the cache.
    pub fn answer(&self) -> Option<Answer> {
        let msg = Message::from_vec(self.wire.bytes()).ok()?;
        let age = self.age();
        let mut answer = Answer {
            rcode: msg.metadata.response_code,
            answers: msg.answers,
            authorities: msg.authorities,
            additionals: msg.additionals,
            ..Answer::default()
        };
        for r in answer
            .answers
            .iter_mut()
            .chain(answer.authorities.iter_mut())
            .chain(answer.additionals.iter_mut())
        {
            r.ttl = r.ttl.saturating_sub(age);
        }
        Some(answer)
    }
}

static HIT: LazyLock<prometheus::IntCounter> =
    LazyLock::new(|| metrics::DNS_CACHE_TOTAL.with_label_values(&["hit"]));
static MISS: LazyLock<prometheus::IntCounter> =
    LazyLock::new(|| metrics::DNS_CACHE_TOTAL.with_label_values(&["miss"]));

/// Counts a cache lookup (callers count once per query, whichever path served it).
pub fn count(hit: bool) {
    if hit { HIT.inc() } else { MISS.inc() }
}

/// Keys are [`fast::cache_key`]: the lowercased wire name then the type (class IN),
/// so the hot path looks up with a stack buffer and allocates nothing. Expired
/// entries read as misses and are replaced by the refreshed answer; the bound on
/// entries (S3-FIFO eviction, see quick_cache) keeps memory fixed.
pub struct AnswerCache {
    inner: quick_cache::sync::Cache<Box<[u8]>, Arc<Entry>>,
    max_ttl: u32,
    negative_max_ttl: u32,
}

impl AnswerCache {
    pub fn new(capacity: u64, max_ttl: u32, negative_max_ttl: u32) -> Self {
        AnswerCache {
            inner: quick_cache::sync::Cache::new(
                usize::try_from(capacity).unwrap_or(usize::MAX).max(16),
            ),
            max_ttl,
            negative_max_ttl,
        }
    }

    /// The live entry for `key`, if any (not counted: see [`count`]).
    pub fn get(&self, key: &[u8]) -> Option<Arc<Entry>> {
        let entry = self.inner.get(key)?;
        (entry.age() < entry.ttl).then_some(entry)
    }

    /// Caches the upstream's `answer` to `name`/`qtype` if it may be: positive
    /// answers for their smallest TTL, negative ones (NXDOMAIN, no data) for
    /// min(SOA TTL, SOA minimum), nothing else (failures, negative answers without
    /// SOA, TTL 0).
    pub fn insert(&self, name: &Name, qtype: RecordType, answer: &Answer) {
        let Some(ttl) = self.ttl_of(answer) else {
            return;
        };
        if ttl == 0 {
            return;
        }
        let mut msg = Message::response(0, OpCode::Query);
        msg.metadata.response_code = answer.rcode;
        msg.queries.push(Query::query(name.to_lowercase(), qtype));
        msg.answers.extend(answer.answers.iter().cloned());
        msg.authorities.extend(answer.authorities.iter().cloned());
        msg.additionals.extend(answer.additionals.iter().cloned());
        let Some(wire) = msg.to_vec().ok().and_then(WireAnswer::new) else {
            return;
        };
        let cnames = answer
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::CNAME(c) => Some(
                    c.0.to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase()
                        .into_boxed_str(),
                ),
                _ => None,
            })
            .collect();
        let entry = Entry {
            wire,
            cnames,
            stored_ms: now_ms(),
            ttl,
        };
        self.inner.insert(
            fast::cache_key(name, u16::from(qtype)).into_boxed_slice(),
            Arc::new(entry),
        );
    }

    fn ttl_of(&self, answer: &Answer) -> Option<u32> {
        match answer.rcode {
            ResponseCode::NoError if !answer.answers.is_empty() => {
                let min = answer
                    .answers
                    .iter()
                    .chain(answer.authorities.iter())
                    .map(|r| r.ttl)
                    .min()?;
                Some(min.min(self.max_ttl))
            }
            ResponseCode::NoError | ResponseCode::NXDomain => {
                let soa = answer.authorities.iter().find_map(|r| match &r.data {
                    RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                    _ => None,
                })?;
                Some(soa.min(self.negative_max_ttl))
            }
            _ => None,
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, SOA};

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn key(s: &str) -> Vec<u8> {
        fast::cache_key(&n(s), 1)
    }

    #[test]
    fn positive_negative_and_uncacheable() {
        let c = AnswerCache::new(100, 3600, 300);
        let name = Name::from_ascii("a.test.").unwrap();
        let pos = Answer {
            answers: vec![Record::from_rdata(
                name.clone(),
                100,
                RData::A(A::new(1, 2, 3, 4)),
            )],
            ..Answer::default()
        };
        c.insert(&n("A.test."), RecordType::A, &pos);
        let got = c.get(&key("a.TEST.")).unwrap().answer().unwrap();
        assert_eq!(got.answers.len(), 1);
        assert!(got.answers[0].ttl <= 100);

        let soa = SOA::new(
            Name::from_ascii("ns.test.").unwrap(),
            Name::from_ascii("h.test.").unwrap(),
            1,
            2,
            3,
            4,
            30,
        );
        let neg = Answer {
            rcode: ResponseCode::NXDomain,
            authorities: vec![Record::from_rdata(
                Name::from_ascii("test.").unwrap(),
                600,
                RData::SOA(soa),
            )],
            ..Answer::default()
        };
        assert_eq!(c.ttl_of(&neg), Some(30));
        c.insert(&n("nx.test."), RecordType::A, &neg);
        assert_eq!(
            c.get(&key("nx.test.")).unwrap().answer().unwrap().rcode,
            ResponseCode::NXDomain
        );

        let no_soa = Answer::rcode(ResponseCode::NXDomain);
        assert_eq!(c.ttl_of(&no_soa), None);
        assert_eq!(c.ttl_of(&Answer::rcode(ResponseCode::ServFail)), None);
        let zero = Answer {
            answers: vec![Record::from_rdata(name, 0, RData::A(A::new(1, 2, 3, 4)))],
            ..Answer::default()
        };
        c.insert(&n("zero.test."), RecordType::A, &zero);
        assert!(c.get(&key("zero.test.")).is_none());
    }
}
