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
    /// Not TLS; the protocol it looks like (`ssh`, `openvpn`, `bittorrent`,
    /// `http`, `malformed_tls`, `unknown`).
    NotTls(&'static str),
    /// The start of a TLS record or ClientHello: read more.
    NeedMore,
}

/// Classifies the bytes read so far.
pub fn inspect(buf: &[u8]) -> FirstBytes {
    let Some(&first) = buf.first() else {
        return FirstBytes::NeedMore;
    };
    if first != 0x16 {
        return FirstBytes::NotTls(protocol_of(buf));
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
                    return FirstBytes::NotTls("malformed_tls");
                }
                handshake.extend_from_slice(record.data);
                rest = after;
                if handshake.len() >= 4 {
                    let len =
                        u32::from_be_bytes([0, handshake[1], handshake[2], handshake[3]]) as usize;
                    if handshake[0] != 1 || len > MAX_HELLO_BYTES {
                        return FirstBytes::NotTls("malformed_tls");
                    }
                    if handshake.len() >= 4 + len {
                        return client_hello(&handshake[..4 + len]);
                    }
                }
                if rest.is_empty() {
                    return if buf.len() >= MAX_HELLO_BYTES {
                        FirstBytes::NotTls("malformed_tls")
                    } else {
                        FirstBytes::NeedMore
                    };
                }
            }
            Err(tls_parser::Err::Incomplete(_)) => {
                // A TLS record header is 5 bytes: type, version (3.x), length.
                if rest.len() >= 3 && rest[1] != 3 {
                    return FirstBytes::NotTls("malformed_tls");
                }
                return if buf.len() >= MAX_HELLO_BYTES {
                    FirstBytes::NotTls("malformed_tls")
                } else {
                    FirstBytes::NeedMore
                };
            }
            Err(_) => return FirstBytes::NotTls("malformed_tls"),
        }
    }
}

fn client_hello(msg: &[u8]) -> FirstBytes {
    let Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) =
        parse_tls_message_handshake(msg)
    else {
        return FirstBytes::NotTls("malformed_tls");
    };
    let mut sni = None;
    if let Some(ext) = hello.ext {
        let Ok((_, extensions)) = parse_tls_extensions(ext) else {
            return FirstBytes::NotTls("malformed_tls");
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

/// Best guess at a non-TLS protocol from its first bytes, for the audit record.
fn protocol_of(buf: &[u8]) -> &'static str {
    if buf.starts_with(b"SSH-") {
        return "ssh";
    }
    if buf.len() >= 20 && buf[0] == 19 && &buf[1..20] == b"BitTorrent protocol" {
        return "bittorrent";
    }
    // OpenVPN over TCP: a 2-byte packet length, then opcode << 3 | key id, where the
    // client's first packet is a HARD_RESET_CLIENT (v1 = 1, v2 = 7, v3 = 10).
    if buf.len() >= 3 {
        let len = u16::from_be_bytes([buf[0], buf[1]]) as usize;
        let opcode = buf[2] >> 3;
        if (14..=1500).contains(&len) && matches!(opcode, 1 | 7 | 10) {
            return "openvpn";
        }
    }
    const METHODS: &[&[u8]] = &[
        b"GET ",
        b"POST ",
        b"HEAD ",
        b"PUT ",
        b"CONNECT ",
        b"OPTIONS ",
        b"DELETE ",
        b"PATCH ",
    ];
    if METHODS.iter().any(|m| buf.starts_with(m)) {
        return "http";
    }
    "unknown"
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

    #[test]
    fn circumvention_protocols_are_not_tls() {
        assert_eq!(
            inspect(b"SSH-2.0-OpenSSH_9.2p1\r\n"),
            FirstBytes::NotTls("ssh")
        );
        let mut bt = vec![19u8];
        bt.extend_from_slice(b"BitTorrent protocol");
        bt.extend_from_slice(&[0; 8]);
        assert_eq!(inspect(&bt), FirstBytes::NotTls("bittorrent"));
        assert_eq!(
            inspect(&[0x00, 0x0e, 0x38, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0, 0]),
            FirstBytes::NotTls("openvpn")
        );
        assert_eq!(inspect(b"GET / HTTP/1.1\r\n"), FirstBytes::NotTls("http"));
        assert_eq!(
            inspect(&[0x16, 0x07, 0x00, 0x00]),
            FirstBytes::NotTls("malformed_tls")
        );
        assert_eq!(
            inspect(&[0x17, 0x03, 0x03, 0x00, 0x01, 0x00]),
            FirstBytes::NotTls("unknown")
        );
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
