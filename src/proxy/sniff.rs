//! What a client sends first inside a tunnel: a TLS ClientHello (and its SNI), or
//! something else (SSH, OpenVPN, BitTorrent, plain HTTP, unknown) that has no
//! business on a TLS port.
//!
//! Parsing uses `tls-parser`; this module only adds record reassembly (a
//! ClientHello may span several records, and post-quantum key shares make it
//! larger than one TCP segment) and the signatures of the usual circumvention
//! protocols. It reads nothing from the network itself.

use tls_parser::{
    SNIType, TlsExtension, TlsMessage, TlsMessageHandshake, TlsRecordType, parse_tls_extensions,
    parse_tls_message_handshake, parse_tls_raw_record,
};

/// Most bytes read while waiting for a complete ClientHello: a real one is under
/// 2 KiB (about 8 KiB with large post-quantum shares and many extensions).
pub const MAX_HELLO_BYTES: usize = 32 * 1024;

/// What the first bytes of a tunnel are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FirstBytes {
    /// A complete TLS ClientHello, with its server name if it sent one.
    ClientHello { sni: Option<String> },
    /// Not TLS: what it looks like.
    NotTls(Detected),
    /// The start of a TLS record or ClientHello: read more.
    NeedMore,
}

/// A TLS record header with a broken or non-ClientHello handshake.
pub const MALFORMED: Detected = Detected::tunnel("malformed_tls");

/// Classifies the bytes read so far.
pub fn inspect(buf: &[u8]) -> FirstBytes {
    let Some(&first) = buf.first() else {
        return FirstBytes::NeedMore;
    };
    if first != 0x16 {
        return FirstBytes::NotTls(detect(buf));
    }
    // Reassemble handshake bytes from consecutive handshake records.
    let mut handshake: Vec<u8> = Vec::new();
    let mut rest = buf;
    loop {
        match parse_tls_raw_record(rest) {
            Ok((after, record)) => {
                if record.hdr.record_type != TlsRecordType::Handshake
                    || record.hdr.version.0 >> 8 != 3
                {
                    return FirstBytes::NotTls(MALFORMED);
                }
                handshake.extend_from_slice(record.data);
                rest = after;
                if handshake.len() >= 4 {
                    let len =
                        u32::from_be_bytes([0, handshake[1], handshake[2], handshake[3]]) as usize;
                    if handshake[0] != 1 || len > MAX_HELLO_BYTES {
                        return FirstBytes::NotTls(MALFORMED);
                    }
                    if handshake.len() >= 4 + len {
                        return client_hello(&handshake[..4 + len]);
                    }
                }
                if rest.is_empty() {
                    return if buf.len() >= MAX_HELLO_BYTES {
                        FirstBytes::NotTls(MALFORMED)
                    } else {
                        FirstBytes::NeedMore
                    };
                }
            }
            Err(tls_parser::Err::Incomplete(_)) => {
                // A TLS record header is 5 bytes: type, version (3.x), length.
                if rest.len() >= 3 && rest[1] != 3 {
                    return FirstBytes::NotTls(MALFORMED);
                }
                return if buf.len() >= MAX_HELLO_BYTES {
                    FirstBytes::NotTls(MALFORMED)
                } else {
                    FirstBytes::NeedMore
                };
            }
            Err(_) => return FirstBytes::NotTls(MALFORMED),
        }
    }
}

fn client_hello(msg: &[u8]) -> FirstBytes {
    let Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) =
        parse_tls_message_handshake(msg)
    else {
        return FirstBytes::NotTls(MALFORMED);
    };
    let mut sni = None;
    if let Some(ext) = hello.ext {
        let Ok((_, extensions)) = parse_tls_extensions(ext) else {
            return FirstBytes::NotTls(MALFORMED);
        };
        for e in extensions {
            if let TlsExtension::SNI(names) = e {
                sni = names
                    .iter()
                    .find(|(t, _)| *t == SNIType::HostName)
                    .and_then(|(_, n)| std::str::from_utf8(n).ok())
                    .filter(|n| !n.is_empty() && n.len() <= 253)
                    .map(|n| n.to_ascii_lowercase());
            }
        }
    }
    FirstBytes::ClientHello { sni }
}

/// A protocol recognised from a connection's first bytes, and the category
/// (`p2p`, `vpn`) a profile blocks to refuse it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detected {
    /// `bittorrent`, `dht`, `tracker_announce`, `gnutella`, `edonkey`, `dcpp`,
    /// `ssh`, `openvpn`, `wireguard`, `http`, `malformed_tls`, `silent`, `unknown`.
    pub protocol: &'static str,
    pub category: &'static str,
}

impl Detected {
    const fn p2p(protocol: &'static str) -> Self {
        Detected {
            protocol,
            category: "p2p",
        }
    }

    /// Not TLS on a TLS port and not a P2P protocol: a tunnel of some kind (VPN,
    /// SSH, obfs4 and other pluggable transports look random), filed under `vpn`.
    pub const fn tunnel(protocol: &'static str) -> Self {
        Detected {
            protocol,
            category: "vpn",
        }
    }
}

/// Signatures found at the very start of a stream (anchored).
const ANCHORED: &[(&[u8], Detected)] = &[
    (b"\x13BitTorrent protocol", Detected::p2p("bittorrent")),
    // Mainline DHT (BEP 5) queries and responses, bencoded: usually UDP, seen
    // here when tunnelled.
    (b"d1:ad2:id20:", Detected::p2p("dht")),
    (b"d1:rd2:id20:", Detected::p2p("dht")),
    (b"GNUTELLA CONNECT/", Detected::p2p("gnutella")),
    (b"GNUTELLA/", Detected::p2p("gnutella")),
    // Direct Connect (NMDC: client-to-client opens with $MyNick, a hub with
    // $Lock) and ADC (`HSUP`).
    (b"$MyNick ", Detected::p2p("dcpp")),
    (b"$Lock ", Detected::p2p("dcpp")),
    (b"$Supports ", Detected::p2p("dcpp")),
    (b"HSUP ", Detected::p2p("dcpp")),
    (b"CSUP ", Detected::p2p("dcpp")),
    (b"SSH-", Detected::tunnel("ssh")),
    (b"GET ", Detected::tunnel("http")),
    (b"POST ", Detected::tunnel("http")),
    (b"HEAD ", Detected::tunnel("http")),
    (b"PUT ", Detected::tunnel("http")),
    (b"CONNECT ", Detected::tunnel("http")),
    (b"OPTIONS ", Detected::tunnel("http")),
    (b"DELETE ", Detected::tunnel("http")),
    (b"PATCH ", Detected::tunnel("http")),
];

/// One automaton over all anchored signatures: a single pass over the first bytes
/// whatever the number of protocols.
static SIGNATURES: std::sync::LazyLock<aho_corasick::AhoCorasick> =
    std::sync::LazyLock::new(|| {
        aho_corasick::AhoCorasick::builder()
            .start_kind(aho_corasick::StartKind::Anchored)
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(ANCHORED.iter().map(|(p, _)| p))
            .unwrap_or_else(|e| unreachable!("static signatures: {e}"))
    });

/// A BitTorrent tracker request in an HTTP request line or URL: announce and
/// scrape both carry the torrent's `info_hash` in the query (BEP 3, BEP 48).
static TRACKER: std::sync::LazyLock<aho_corasick::AhoCorasick> = std::sync::LazyLock::new(|| {
    aho_corasick::AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(["?info_hash=", "&info_hash="])
        .unwrap_or_else(|e| unreachable!("static signatures: {e}"))
});

/// Whether a request target (path and query, or a whole URL) is a BitTorrent
/// tracker announce or scrape.
pub fn is_tracker_request(target: &str) -> bool {
    tracker_in(target.as_bytes())
}

/// The tracker check over the first line of `bytes` (a request line or a URL).
fn tracker_in(bytes: &[u8]) -> bool {
    let line = bytes
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or(bytes);
    TRACKER.is_match(line)
}

/// What a stream that is not TLS looks like, from its first bytes. Only the first
/// bytes are read: a protocol recognised later is not this module's business.
pub fn detect(buf: &[u8]) -> Detected {
    let input = aho_corasick::Input::new(buf).anchored(aho_corasick::Anchored::Yes);
    if let Some(m) = SIGNATURES.find(input) {
        let found = ANCHORED[m.pattern().as_usize()].1;
        if found.protocol == "http" && tracker_in(buf) {
            return Detected::p2p("tracker_announce");
        }
        return found;
    }
    // eDonkey/eMule: protocol byte (0xE3 eDonkey, 0xC5 eMule, 0xD4 packed), a
    // little-endian length, then OP_HELLO (0x01) with a 16-byte user hash.
    if buf.len() >= 7 && matches!(buf[0], 0xe3 | 0xc5 | 0xd4) {
        let len = u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if (17..=1 << 20).contains(&len) && buf[5] == 0x01 && buf[6] == 0x10 {
            return Detected::p2p("edonkey");
        }
    }
    // WireGuard handshake initiation (type 1, three zero bytes, 148 bytes), bare
    // or behind the 2-byte length the TCP wrappers add.
    let wg = |b: &[u8]| b.len() >= 4 && b[..4] == [1, 0, 0, 0];
    if (wg(buf) && buf.len() == 148) || (buf.len() >= 6 && buf[..2] == [0, 148] && wg(&buf[2..])) {
        return Detected::tunnel("wireguard");
    }
    // OpenVPN over TCP: a 2-byte packet length, then opcode << 3 | key id, where the
    // client's first packet is a HARD_RESET_CLIENT (v1 = 1, v2 = 7, v3 = 10).
    if buf.len() >= 3 {
        let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
        let opcode = buf[2] >> 3;
        if (14..=1500).contains(&len) && matches!(opcode, 1 | 7 | 10) {
            return Detected::tunnel("openvpn");
        }
    }
    Detected::tunnel("unknown")
}

/// A TLS fatal alert `access_denied` (RFC 8446 §6.2), sent instead of silence so a
/// TLS client reports a refusal rather than a network error.
pub const ALERT_ACCESS_DENIED: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31];

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal, well-formed TLS 1.2 ClientHello carrying `sni` (or none).
    pub fn client_hello_bytes(sni: Option<&str>) -> Vec<u8> {
        let mut ext = Vec::new();
        if let Some(name) = sni {
            let n = name.as_bytes();
            let list_len = 3 + n.len();
            ext.extend_from_slice(&[0x00, 0x00]);
            ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
            ext.extend_from_slice(&(list_len as u16).to_be_bytes());
            ext.push(0);
            ext.extend_from_slice(&(n.len() as u16).to_be_bytes());
            ext.extend_from_slice(n);
        }
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0);
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]);
        body.extend_from_slice(&[0x01, 0x00]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![0x01];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn client_hello_sni_complete_partial_and_fragmented() {
        let hello = client_hello_bytes(Some("Example.ORG"));
        assert_eq!(
            inspect(&hello),
            FirstBytes::ClientHello {
                sni: Some("example.org".into())
            }
        );
        for cut in [1, 3, 5, 20, hello.len() - 1] {
            assert_eq!(inspect(&hello[..cut]), FirstBytes::NeedMore, "cut at {cut}");
        }
        assert_eq!(
            inspect(&client_hello_bytes(None)),
            FirstBytes::ClientHello { sni: None }
        );
        // The same handshake split over two records.
        let hs = &hello[5..];
        let (a, b) = hs.split_at(10);
        let mut two = vec![0x16, 0x03, 0x01];
        two.extend_from_slice(&(a.len() as u16).to_be_bytes());
        two.extend_from_slice(a);
        two.extend_from_slice(&[0x16, 0x03, 0x01]);
        two.extend_from_slice(&(b.len() as u16).to_be_bytes());
        two.extend_from_slice(b);
        assert_eq!(
            inspect(&two),
            FirstBytes::ClientHello {
                sni: Some("example.org".into())
            }
        );
    }

    fn not_tls(bytes: &[u8]) -> (&'static str, &'static str) {
        match inspect(bytes) {
            FirstBytes::NotTls(d) => (d.protocol, d.category),
            other => panic!("{other:?} for {bytes:?}"),
        }
    }

    #[test]
    fn circumvention_protocols_are_not_tls() {
        assert_eq!(not_tls(b"SSH-2.0-OpenSSH_9.2p1\r\n"), ("ssh", "vpn"));
        let mut bt = vec![19u8];
        bt.extend_from_slice(b"BitTorrent protocol");
        bt.extend_from_slice(&[0; 8]);
        assert_eq!(not_tls(&bt), ("bittorrent", "p2p"));
        assert_eq!(
            not_tls(&[0x00, 0x0e, 0x38, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0, 0]),
            ("openvpn", "vpn")
        );
        assert_eq!(not_tls(b"GET / HTTP/1.1\r\n"), ("http", "vpn"));
        assert_eq!(not_tls(&[0x16, 0x07, 0x00, 0x00]), ("malformed_tls", "vpn"));
        assert_eq!(
            not_tls(&[0x17, 0x03, 0x03, 0x00, 0x01, 0x00]),
            ("unknown", "vpn")
        );
    }

    #[test]
    fn p2p_signatures() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"GNUTELLA CONNECT/0.6\r\nUser-Agent: LimeWire\r\n",
                "gnutella",
            ),
            (b"GNUTELLA/0.6 200 OK\r\n", "gnutella"),
            (
                b"$MyNick eleve42|$Lock EXTENDEDPROTOCOLABCABCABC Pk=x|",
                "dcpp",
            ),
            (b"$Lock EXTENDEDPROTOCOL_verlihub Pk=version0.9.8|", "dcpp"),
            (b"HSUP ADBASE ADTIGR\n", "dcpp"),
            (
                b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe",
                "dht",
            ),
            (
                b"GET /announce?info_hash=%12%34&peer_id=-AR1370-abc&port=6881 HTTP/1.1\r\n",
                "tracker_announce",
            ),
            (
                b"GET /scrape?info_hash=%12 HTTP/1.1\r\n",
                "tracker_announce",
            ),
        ];
        for (bytes, proto) in cases {
            assert_eq!(
                not_tls(bytes),
                (*proto, "p2p"),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // eDonkey hello: 0xE3, length 0x40 (LE), OP_HELLO, hash size 16.
        let mut ed = vec![0xe3, 0x40, 0, 0, 0, 0x01, 0x10];
        ed.extend_from_slice(&[0xaa; 16]);
        assert_eq!(not_tls(&ed), ("edonkey", "p2p"));
        // WireGuard initiation, bare and length-prefixed.
        let mut wg = vec![1u8, 0, 0, 0];
        wg.resize(148, 7);
        assert_eq!(not_tls(&wg), ("wireguard", "vpn"));
        let mut framed = vec![0u8, 148];
        framed.extend_from_slice(&wg);
        assert_eq!(not_tls(&framed), ("wireguard", "vpn"));
        // A signature only counts at the start of the stream.
        assert_eq!(not_tls(b"xx\x13BitTorrent protocol"), ("unknown", "vpn"));
    }

    #[test]
    fn tracker_requests() {
        assert!(is_tracker_request("/announce?info_hash=%AB&peer_id=x"));
        assert!(is_tracker_request(
            "http://tracker.example:6969/a?passkey=1&INFO_HASH=x"
        ));
        assert!(!is_tracker_request("/search?q=info_hash"));
        assert!(!is_tracker_request("/announce"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = inspect(&bytes);
            let mut tls = vec![0x16, 0x03, 0x01];
            tls.extend_from_slice(&bytes);
            let _ = inspect(&tls);
        }
    }
}
