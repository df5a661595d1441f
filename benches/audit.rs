//! Audit ingest: sustained batches of events into the SQLite store, as the writer
//! task does them (1,024 events per transaction). Target: ≥ 100,000 events/s.
//! Run: `cargo bench --bench audit`.

use std::hint::black_box;

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vigie::audit::AuditEvent;
use vigie::audit::store::{SqliteStore, Store};

fn event(i: usize) -> AuditEvent {
    AuditEvent {
        time: Utc::now(),
        service: "dns",
        client_ip: "10.1.2.3".parse().expect("literal"),
        user: i.is_multiple_of(3).then(|| format!("user{}", i % 500)),
        identity: "network",
        profile: "eleves".into(),
        target: format!("www.site{}.example.", i % 10_000),
        qtype: Some("A".into()),
        verdict: "block",
        category: Some("gambling".into()),
        rule: "eleves: block gambling".into(),
        entry: Some(format!("site{}.example", i % 10_000)),
        via: None,
        latency_us: 12,
        proxy: None,
    }
}

fn ingest(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = SqliteStore::open(&dir.path().join("audit.db")).expect("store");
    let batch: Vec<AuditEvent> = (0..1024).map(event).collect();
    let mut g = c.benchmark_group("audit");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("sqlite_insert_batch_1024", |b| {
        b.iter(|| store.insert_batch(black_box(&batch)).expect("insert"))
    });
    g.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
