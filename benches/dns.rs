//! The DNS filter's per-query CPU cost without sockets: `Handler::prepare` on a
//! blocked name (hot path), a cache hit (hot path), and a cache hit on the general
//! path (a name the hot path hands over). Complements
//! `dns-compare.sh`, whose figures include the kernel's share.
//!
//!     cargo bench --bench dns

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use vigie::audit::AuditSink;
use vigie::dns::{Handler, Prepared, Transport, Upstreams, upstream};
use vigie::identity::IdentityTable;
use vigie::snapshot::{Snapshot, SnapshotStore};

fn query(name: &str) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 7;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.edns = Some(e);
    m.to_vec().unwrap()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let lists = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("blocklists");
    let cfg = dir.path().join("vigie.toml");
    std::fs::write(
        &cfg,
        format!(
            "default_profile = \"p\"\nlists_dir = \"{}\"\n[dns]\nrate_limit_qps = 0\n\
             [[categories]]\nid = \"gambling\"\nfr = \"g\"\nen = \"g\"\n\
             [[lists]]\ncategory = \"gambling\"\nformat = \"ut1\"\npath = \"ut1/gambling\"\n\
             [profiles.p]\nblock = [\"gambling\"]\nblock_mode = \"nxdomain\"\n",
            lists.display()
        ),
    )
    .unwrap();
    let snap = Snapshot::load(Some(&cfg), None).unwrap();
    let options = vigie::dns::handler_options(&snap, "127.0.0.1:53".parse().unwrap());
    let store = Arc::new(SnapshotStore::new(snap));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (handler, _rx) = rt.block_on(async {
        let ups = Upstreams::new(
            vec![upstream::parse_spec("127.0.0.1:9").unwrap()],
            Duration::from_millis(50),
            None,
        )
        .unwrap();
        let (audit, rx) = AuditSink::channel(65_536);
        (
            Handler::new(store, ups, Arc::new(IdentityTable::new()), audit, options),
            rx,
        )
    });
    let _guard = rt.enter();
    // Drain the audit queue as the writer would, so events do not pile up in memory.
    let mut rx = _rx;
    std::thread::spawn(move || while rx.blocking_recv().is_some() {});
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);

    let blocked = query("www.000-online-casino.com.");
    c.bench_function("dns prepare blocked (hot path)", |b| {
        b.iter(
            || match handler.prepare(black_box(&blocked), client, Transport::Udp) {
                Prepared::Done(r) => r,
                Prepared::Forward(_) => panic!("blocked name went upstream"),
            },
        )
    });

    // Fill the cache through the general path, as an upstream answer would.
    let name = Name::from_ascii("www.example.org.").unwrap();
    let answer = vigie::dns::wire::Answer {
        answers: vec![hickory_proto::rr::Record::from_rdata(
            name.clone(),
            300,
            hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 1)),
        )],
        ..Default::default()
    };
    handler.cache_insert(&name, RecordType::A, &answer);
    let cached = query("www.example.org.");
    c.bench_function("dns prepare cache hit (hot path)", |b| {
        b.iter(
            || match handler.prepare(black_box(&cached), client, Transport::Udp) {
                Prepared::Done(r) => r,
                Prepared::Forward(_) => panic!("cache miss"),
            },
        )
    });

    // A name the hot path does not take ('*' is not a hostname byte): general path.
    let star = Name::from_ascii("*.example.org.").unwrap();
    let mut star_answer = answer.clone();
    star_answer.answers[0].name = star.clone();
    handler.cache_insert(&star, RecordType::A, &star_answer);
    let general = query("*.example.org.");
    c.bench_function("dns prepare cache hit (general path)", |b| {
        b.iter(
            || match handler.prepare(black_box(&general), client, Transport::Udp) {
                Prepared::Done(r) => r,
                Prepared::Forward(_) => panic!("cache miss"),
            },
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
