//! Fuzzing the request path in-process: random packets and random mutations of valid
//! queries go through `Handler::prepare` (everything before the network). It must
//! never panic, and whatever it answers must be a well-formed response to the same id.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::RecordType;
use proptest::prelude::*;
use vigie::audit::AuditSink;
use vigie::dns::{Handler, Prepared, Transport, Upstreams, upstream};
use vigie::snapshot::{Snapshot, SnapshotStore};

struct Env {
    rt: tokio::runtime::Runtime,
    handler: Handler,
    _dir: tempfile::TempDir,
}

fn env() -> &'static Env {
    static ENV: std::sync::OnceLock<Env> = std::sync::OnceLock::new();
    ENV.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = common::write_config(dir.path(), "");
        let snap = Snapshot::load(Some(&cfg), None).expect("test config builds");
        let listen = "127.0.0.1:53".parse().unwrap();
        let options = vigie::dns::handler_options(&snap, listen);
        let store = Arc::new(SnapshotStore::new(snap));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The handler's pool needs a runtime to exist; prepare() never uses the network.
        let handler = rt.block_on(async {
            let specs = vec![upstream::parse_spec("127.0.0.1:9").unwrap()];
            let ups = Upstreams::new(specs, Duration::from_millis(100), None).unwrap();
            let (audit, _rx) = AuditSink::channel(1024);
            Handler::new(
                store,
                ups,
                Arc::new(vigie::identity::IdentityTable::new()),
                audit,
                options,
            )
        });
        Env {
            rt,
            handler,
            _dir: dir,
        }
    })
}

fn check(packet: &[u8], client: IpAddr) {
    let e = env();
    let _guard = e.rt.enter();
    for transport in [Transport::Udp, Transport::Tcp] {
        if let Prepared::Done(Some(reply)) = e.handler.prepare(packet, client, transport) {
            let m = Message::from_vec(&reply).expect("vigie's answers parse");
            assert_eq!(m.metadata.message_type, MessageType::Response);
            assert_eq!(&reply[..2], &packet[..2], "same id");
            if transport == Transport::Udp {
                assert!(reply.len() <= 1232);
            }
        }
    }
}

fn valid_query(name: &str, qtype: u16, edns: bool) -> Vec<u8> {
    common::query_message(name, RecordType::from(qtype), edns)
        .to_vec()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), last in 0u8..=255) {
        check(&bytes, IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)));
    }

    #[test]
    fn mutated_queries_never_panic(
        label in "[a-z0-9][a-z0-9]{0,19}",
        qtype in any::<u16>(),
        edns in any::<bool>(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
    ) {
        let mut p = valid_query(&format!("{label}.example.org"), qtype, edns);
        for (i, b) in flips {
            let n = p.len();
            p[i % n] ^= b;
        }
        let keep = if p.len() > 12 { 12 + cut % (p.len() - 11) } else { p.len() };
        p.truncate(keep);
        check(&p, IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
}

#[test]
fn every_qtype_of_a_blocked_name_is_decided_locally() {
    let gambling = common::ut1_gambling_domain();
    let e = env();
    let _guard = e.rt.enter();
    for qtype in [
        1u16, 2, 5, 6, 12, 15, 16, 28, 33, 64, 65, 99, 255, 257, 65280,
    ] {
        let p = valid_query(&gambling, qtype, true);
        match e
            .handler
            .prepare(&p, IpAddr::V4(Ipv4Addr::LOCALHOST), Transport::Udp)
        {
            Prepared::Done(Some(reply)) => {
                let m = Message::from_vec(&reply).unwrap();
                assert!(vigie::dns::wire::ede_of(&m).is_some(), "qtype {qtype}: EDE");
            }
            _ => panic!("qtype {qtype} of a blocked name went upstream"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    /// The hot path's reader agrees with hickory-proto on every query it accepts.
    #[test]
    fn fast_parser_agrees_with_hickory(
        labels in proptest::collection::vec("[a-zA-Z0-9_][a-zA-Z0-9_-]{0,20}", 1..6),
        qtype in any::<u16>(),
        edns in proptest::option::of(512u16..=65535),
    ) {
        let name = labels.join(".");
        let mut m = common::query_message(&name, RecordType::from(qtype), edns.is_some());
        if let (Some(p), Some(e)) = (edns, m.edns.as_mut()) {
            e.set_max_payload(p);
        }
        let bytes = m.to_vec().unwrap();
        let slow = vigie::dns::wire::parse_query(&bytes).unwrap();
        let fast = vigie::dns::fast::parse(&bytes).expect("common shape");
        prop_assert_eq!(fast.id, slow.id);
        prop_assert_eq!(fast.qtype, u16::from(slow.query.query_type));
        prop_assert_eq!(fast.host(), name.to_ascii_lowercase());
        prop_assert_eq!(fast.edns, slow.edns);
        prop_assert_eq!(fast.udp_limit(), slow.udp_limit());
        let key = vigie::dns::fast::cache_key(&slow.query.name, qtype);
        prop_assert_eq!(fast.cache_key(), key.as_slice());
    }
}
