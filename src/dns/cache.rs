//! The answer cache: upstream answers kept for their TTL (RFC 1035 §3.2.1), negative
//! answers for the SOA's negative TTL (RFC 2308 §5), both capped, in a bounded
//! concurrent cache (moka, TinyLFU admission) so a scan of random names cannot evict
//! the popular ones. It stores what the upstreams said, before any filtering, so one
//! entry serves every profile and survives snapshot reloads; the handler filters on
//! the way out.

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{LowerName, RData, RecordType};

use super::wire::Answer;
use crate::metrics;

/// What an answer is cached under: the name (case-folded) and type; class is IN.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct CacheKey {
    pub name: LowerName,
    pub qtype: RecordType,
}

#[derive(Debug)]
struct Entry {
    answer: Answer,
    stored: Instant,
    ttl: u32,
}

struct TtlExpiry;

impl moka::Expiry<CacheKey, std::sync::Arc<Entry>> for TtlExpiry {
    fn expire_after_create(&self, _: &CacheKey, value: &std::sync::Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(Duration::from_secs(u64::from(value.ttl)))
    }
}

pub struct AnswerCache {
    inner: moka::sync::Cache<CacheKey, std::sync::Arc<Entry>>,
    max_ttl: u32,
    negative_max_ttl: u32,
}

impl AnswerCache {
    pub fn new(capacity: u64, max_ttl: u32, negative_max_ttl: u32) -> Self {
        AnswerCache {
            inner: moka::sync::Cache::builder().max_capacity(capacity).expire_after(TtlExpiry).build(),
            max_ttl,
            negative_max_ttl,
        }
    }

    /// The cached answer with every TTL counted down by the time it spent here.
    pub fn get(&self, key: &CacheKey) -> Option<Answer> {
        let Some(entry) = self.inner.get(key) else {
            metrics::DNS_CACHE_TOTAL.with_label_values(&["miss"]).inc();
            return None;
        };
        let age = entry.stored.elapsed().as_secs().min(u64::from(u32::MAX)) as u32;
        if age >= entry.ttl {
            metrics::DNS_CACHE_TOTAL.with_label_values(&["miss"]).inc();
            return None;
        }
        metrics::DNS_CACHE_TOTAL.with_label_values(&["hit"]).inc();
        let mut answer = entry.answer.clone();
        for r in answer.answers.iter_mut().chain(answer.authorities.iter_mut()).chain(answer.additionals.iter_mut()) {
            r.ttl = r.ttl.saturating_sub(age);
        }
        Some(answer)
    }

    /// Caches `answer` if it may be: positive answers for their smallest TTL,
    /// negative ones (NXDOMAIN, no data) for min(SOA TTL, SOA minimum), nothing else
    /// (failures, negative answers without SOA, TTL 0).
    pub fn insert(&self, key: CacheKey, answer: &Answer) {
        let Some(ttl) = self.ttl_of(answer) else {
            return;
        };
        if ttl == 0 {
            return;
        }
        let entry = Entry {
            answer: answer.clone(),
            stored: Instant::now(),
            ttl,
        };
        self.inner.insert(key, std::sync::Arc::new(entry));
    }

    fn ttl_of(&self, answer: &Answer) -> Option<u32> {
        match answer.rcode {
            ResponseCode::NoError if !answer.answers.is_empty() => {
                let min = answer.answers.iter().chain(answer.authorities.iter()).map(|r| r.ttl).min()?;
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
        self.inner.run_pending_tasks();
        self.inner.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, Record};

    fn key(n: &str) -> CacheKey {
        CacheKey {
            name: LowerName::new(&Name::from_ascii(n).unwrap()),
            qtype: RecordType::A,
        }
    }

    #[test]
    fn positive_negative_and_uncacheable() {
        let c = AnswerCache::new(100, 3600, 300);
        let name = Name::from_ascii("a.test.").unwrap();
        let pos = Answer {
            answers: vec![Record::from_rdata(name.clone(), 100, RData::A(A::new(1, 2, 3, 4)))],
            ..Answer::default()
        };
        c.insert(key("A.test."), &pos);
        let got = c.get(&key("a.TEST.")).unwrap();
        assert_eq!(got.answers.len(), 1);
        assert!(got.answers[0].ttl <= 100);

        let soa = SOA::new(Name::from_ascii("ns.test.").unwrap(), Name::from_ascii("h.test.").unwrap(), 1, 2, 3, 4, 30);
        let neg = Answer {
            rcode: ResponseCode::NXDomain,
            authorities: vec![Record::from_rdata(Name::from_ascii("test.").unwrap(), 600, RData::SOA(soa))],
            ..Answer::default()
        };
        assert_eq!(c.ttl_of(&neg), Some(30));
        c.insert(key("nx.test."), &neg);
        assert_eq!(c.get(&key("nx.test.")).unwrap().rcode, ResponseCode::NXDomain);

        let no_soa = Answer::rcode(ResponseCode::NXDomain);
        assert_eq!(c.ttl_of(&no_soa), None);
        assert_eq!(c.ttl_of(&Answer::rcode(ResponseCode::ServFail)), None);
        let zero = Answer {
            answers: vec![Record::from_rdata(name, 0, RData::A(A::new(1, 2, 3, 4)))],
            ..Answer::default()
        };
        c.insert(key("zero.test."), &zero);
        assert!(c.get(&key("zero.test.")).is_none());
    }
}
