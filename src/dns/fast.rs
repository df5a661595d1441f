//! The hot path's wire format: reading the common query shape without allocating,
//! and writing the two answers that dominate a school's traffic (blocked names,
//! cache hits) by patching bytes instead of building messages.
//!
//! Measured first (benches/RESULTS.md, `## DNS`): parsing and encoding through
//! hickory-proto's `Message` cost more than the rest of a query together. So this
//! module handles exactly one shape — opcode QUERY, one uncompressed question of
//! letters/digits/`-`/`_` labels, no answer/authority, at most an EDNS(0) OPT — and
//! says `None` to anything else, which then takes the general path (`wire`, built on
//! hickory-proto) with its full validation and error answers. Every byte written here
//! is checked against hickory-proto's decoder in the tests.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::wire::{ClientEdns, EDE_OPTION, MAX_UDP_PAYLOAD};

/// Longest domain name in wire form (RFC 1035 §3.1).
const MAX_NAME: usize = 255;
const TYPE_OPT: u16 = 41;
const TYPE_SOA: u16 = 6;
const CLASS_IN: u16 = 1;

/// A query in the common shape, borrowed from the packet.
pub struct FastQuery<'a> {
    packet: &'a [u8],
    pub id: u16,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    /// End of the question section (header + name + type + class).
    question_end: usize,
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<ClientEdns>,
    /// The name lowercased, dotted, without the final dot (`www.example.org`).
    host: [u8; MAX_NAME],
    host_len: usize,
    /// The cache key: lowercased wire name followed by the type.
    key: [u8; MAX_NAME + 2],
    key_len: usize,
}

impl<'a> FastQuery<'a> {
    pub fn host(&self) -> &str {
        // Only ASCII letters, digits, '-', '_' and '.' are ever written.
        std::str::from_utf8(&self.host[..self.host_len]).unwrap_or("")
    }

    /// The question name exactly as the client wrote it (wire form).
    pub fn qname_wire(&self) -> &'a [u8] {
        &self.packet[12..self.question_end - 4]
    }

    /// The answer-cache key of this question.
    pub fn cache_key(&self) -> &[u8] {
        &self.key[..self.key_len]
    }

    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => e
                .payload
                .clamp(super::wire::CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD)
                as usize,
            None => super::wire::CLASSIC_UDP_PAYLOAD as usize,
        }
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Reads `packet` if it has the common shape; `None` sends it down the general path.
pub fn parse(packet: &[u8]) -> Option<FastQuery<'_>> {
    let mut q = FastQuery::empty(packet);
    parse_into(&mut q).then_some(q)
}

impl<'a> FastQuery<'a> {
    /// A query not yet read, to fill in place with [`parse_into`] (the struct is half
    /// a kilobyte: the hot path keeps it on the caller's stack instead of moving it).
    pub fn empty(packet: &'a [u8]) -> Self {
        FastQuery {
            packet,
            id: 0,
            recursion_desired: false,
            checking_disabled: false,
            question_end: 0,
            qtype: 0,
            qclass: 0,
            edns: None,
            host: [0; MAX_NAME],
            host_len: 0,
            key: [0; MAX_NAME + 2],
            key_len: 0,
        }
    }
}

/// Reads `q`'s packet into `q`; false if it is not the common shape.
pub fn parse_into(q: &mut FastQuery<'_>) -> bool {
    parse_fields(q).is_some()
}

fn parse_fields(q: &mut FastQuery<'_>) -> Option<()> {
    let packet = q.packet;
    if packet.len() < 12 + 1 + 4 {
        return None;
    }
    let flags = be16(packet, 2)?;
    // QR = 0, opcode = 0 (QUERY), TC = 0.
    if flags & 0xfa00 != 0 {
        return None;
    }
    let (qd, an, ns, ar) = (
        be16(packet, 4)?,
        be16(packet, 6)?,
        be16(packet, 8)?,
        be16(packet, 10)?,
    );
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    q.id = be16(packet, 0)?;
    q.recursion_desired = flags & 0x0100 != 0;
    q.checking_disabled = flags & 0x0010 != 0;
    q.host_len = 0;
    q.key_len = 0;
    q.edns = None;
    let mut pos = 12;
    loop {
        let len = *packet.get(pos)? as usize;
        if len == 0 {
            q.key[q.key_len] = 0;
            q.key_len += 1;
            pos += 1;
            break;
        }
        // Pointers (0xC0) and extended label types are rare in questions: general path.
        if len > 63 || pos + 1 + len > packet.len() || q.key_len + 1 + len + 1 > MAX_NAME {
            return None;
        }
        if q.host_len > 0 {
            q.host[q.host_len] = b'.';
            q.host_len += 1;
        }
        q.key[q.key_len] = len as u8;
        q.key_len += 1;
        for &b in &packet[pos + 1..pos + 1 + len] {
            if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return None;
            }
            let l = b.to_ascii_lowercase();
            q.host[q.host_len] = l;
            q.host_len += 1;
            q.key[q.key_len] = l;
            q.key_len += 1;
        }
        pos += 1 + len;
    }
    q.qtype = be16(packet, pos)?;
    q.qclass = be16(packet, pos + 2)?;
    q.key[q.key_len..q.key_len + 2].copy_from_slice(&q.qtype.to_be_bytes());
    q.key_len += 2;
    pos += 4;
    q.question_end = pos;
    if ar == 1 {
        // The OPT pseudo-record: root owner, type 41, class = payload size,
        // TTL = extended rcode, version, flags; then its options, to the end.
        if *packet.get(pos)? != 0 || be16(packet, pos + 1)? != TYPE_OPT {
            return None;
        }
        let payload = be16(packet, pos + 3)?;
        let version = *packet.get(pos + 6)?;
        let dflags = be16(packet, pos + 7)?;
        let rdlen = be16(packet, pos + 9)? as usize;
        if version != 0 || pos + 11 + rdlen != packet.len() {
            return None;
        }
        q.edns = Some(ClientEdns {
            payload,
            dnssec_ok: dflags & 0x8000 != 0,
        });
    } else if pos != packet.len() {
        return None;
    }
    Some(())
}

/// Header flags of an answer to `q`: QR, RD and CD echoed, RA, AA as given, rcode.
fn answer_flags(q: &FastQuery<'_>, authoritative: bool, rcode: u8) -> [u8; 2] {
    let mut hi = 0x80u8; // QR
    if authoritative {
        hi |= 0x04;
    }
    if q.recursion_desired {
        hi |= 0x01;
    }
    let mut lo = 0x80u8 | (rcode & 0x0f); // RA
    if q.checking_disabled {
        lo |= 0x10;
    }
    [hi, lo]
}

/// Appends an OPT record (payload `MAX_UDP_PAYLOAD`, version 0) with an optional EDE.
fn push_opt(out: &mut Vec<u8>, ede: Option<(u16, &str)>) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&MAX_UDP_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    match ede {
        Some((code, text)) => {
            // Keep the EDE well inside a 512-byte answer.
            let text = truncate_utf8(text, 200);
            let opt_len = 2 + text.len() as u16;
            out.extend_from_slice(&(4 + opt_len).to_be_bytes());
            out.extend_from_slice(&EDE_OPTION.to_be_bytes());
            out.extend_from_slice(&opt_len.to_be_bytes());
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        None => out.extend_from_slice(&[0, 0]),
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The data of a blocked answer.
pub enum BlockedData {
    /// NXDOMAIN (with `nxdomain`) or "no data", with vigie's SOA for negative caching.
    Negative {
        nxdomain: bool,
    },
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

/// Encodes a blocked answer to `q`: the client's question, then one A/AAAA record
/// (owner = the question name, by pointer) or vigie's SOA, then OPT + EDE if the
/// client used EDNS.
pub fn blocked(q: &FastQuery<'_>, data: &BlockedData, ttl: u32, ede: (u16, &str)) -> Vec<u8> {
    let mut out = Vec::with_capacity(q.question_end + 96 + ede.1.len());
    let rcode = match data {
        BlockedData::Negative { nxdomain: true } => 3,
        _ => 0,
    };
    let (an, ns) = match data {
        BlockedData::Negative { .. } => (0u16, 1u16),
        _ => (1, 0),
    };
    out.extend_from_slice(&q.id.to_be_bytes());
    out.extend_from_slice(&answer_flags(q, true, rcode));
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&an.to_be_bytes());
    out.extend_from_slice(&ns.to_be_bytes());
    out.extend_from_slice(&u16::from(q.edns.is_some()).to_be_bytes());
    out.extend_from_slice(&q.packet[12..q.question_end]);
    // Owner: pointer to the question name at offset 12.
    out.extend_from_slice(&[0xc0, 0x0c]);
    match data {
        BlockedData::V4(ip) => {
            out.extend_from_slice(&1u16.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&ip.octets());
        }
        BlockedData::V6(ip) => {
            out.extend_from_slice(&28u16.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&16u16.to_be_bytes());
            out.extend_from_slice(&ip.octets());
        }
        BlockedData::Negative { .. } => {
            const MNAME: &[u8] = b"\x05vigie\x07invalid\x00";
            const RNAME: &[u8] = b"\x0ahostmaster\x05vigie\x07invalid\x00";
            out.extend_from_slice(&TYPE_SOA.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&((MNAME.len() + RNAME.len() + 20) as u16).to_be_bytes());
            out.extend_from_slice(MNAME);
            out.extend_from_slice(RNAME);
            for v in [1u32, 3600, 600, 86_400, ttl] {
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
    }
    if q.edns.is_some() {
        push_opt(&mut out, Some(ede));
    }
    out
}

/// An upstream answer kept in wire form: encoded once without OPT, for id 0 and the
/// lowercased question, with the offsets of every TTL so a hit is a copy and a few
/// patches.
///
/// One allocation per answer (the cache holds tens of thousands): the message, then
/// the TTL offsets as big-endian `u16`s.
#[derive(Debug)]
pub struct WireAnswer {
    data: Box<[u8]>,
    /// Length of the message at the start of `data`.
    len: u16,
}

impl WireAnswer {
    /// Wraps an encoding of a response (from hickory-proto); `None` if it is not one
    /// this module can walk.
    pub fn new(mut bytes: Vec<u8>) -> Option<WireAnswer> {
        let len = u16::try_from(bytes.len()).ok()?;
        let offsets = ttl_offsets(&bytes)?;
        bytes.reserve_exact(offsets.len() * 2);
        for off in offsets {
            bytes.extend_from_slice(&off.to_be_bytes());
        }
        Some(WireAnswer {
            data: bytes.into_boxed_slice(),
            len,
        })
    }

    fn ttl_offsets(&self) -> impl Iterator<Item = usize> + '_ {
        self.data
            .get(usize::from(self.len)..)
            .unwrap_or_default()
            .chunks_exact(2)
            .map(|o| usize::from(u16::from_be_bytes([o[0], o[1]])))
    }

    /// The answer for `q`, `age` seconds after it was stored, or `None` if it does not
    /// fit in `limit` bytes (the general path truncates).
    pub fn answer(&self, q: &FastQuery<'_>, age: u32, limit: usize) -> Option<Vec<u8>> {
        let name = q.qname_wire();
        let extra = if q.edns.is_some() { 11 } else { 0 };
        let bytes = self.bytes();
        if bytes.len() + extra > limit || bytes.len() < 12 + name.len() {
            return None;
        }
        let mut out = Vec::with_capacity(bytes.len() + extra);
        out.extend_from_slice(bytes);
        out[0..2].copy_from_slice(&q.id.to_be_bytes());
        let rcode = bytes[3] & 0x0f;
        out[2..4].copy_from_slice(&answer_flags(q, false, rcode));
        // The client's own spelling of the name (0x20 clients compare it); same length.
        out[12..12 + name.len()].copy_from_slice(name);
        for at in self.ttl_offsets() {
            let ttl = u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]])
                .saturating_sub(age);
            out[at..at + 4].copy_from_slice(&ttl.to_be_bytes());
        }
        if q.edns.is_some() {
            let ar = u16::from_be_bytes([out[10], out[11]]).saturating_add(1);
            out[10..12].copy_from_slice(&ar.to_be_bytes());
            push_opt(&mut out, None);
        }
        Some(out)
    }

    pub fn bytes(&self) -> &[u8] {
        self.data.get(..usize::from(self.len)).unwrap_or_default()
    }

    pub fn rcode(&self) -> u8 {
        self.bytes().get(3).map(|b| b & 0x0f).unwrap_or(2)
    }
}

fn skip_name(b: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *b.get(pos)? as usize;
        if len == 0 {
            return Some(pos + 1);
        }
        if len & 0xc0 == 0xc0 {
            b.get(pos + 1)?;
            return Some(pos + 2);
        }
        if len > 63 {
            return None;
        }
        pos += 1 + len;
    }
}

/// Offsets of the TTL field of every record (OPT excluded) of an encoded message.
fn ttl_offsets(b: &[u8]) -> Option<Vec<u16>> {
    let qd = be16(b, 4)?;
    let records = be16(b, 6)? as usize + be16(b, 8)? as usize + be16(b, 10)? as usize;
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(b, pos)? + 4;
    }
    let mut out = Vec::with_capacity(records);
    for _ in 0..records {
        pos = skip_name(b, pos)?;
        let rtype = be16(b, pos)?;
        let rdlen = be16(b, pos + 8)? as usize;
        if rtype != TYPE_OPT {
            out.push(u16::try_from(pos + 4).ok()?);
        }
        pos += 10 + rdlen;
        if pos > b.len() {
            return None;
        }
    }
    (pos == b.len()).then_some(out)
}

/// The answer-cache key of a name (any case) and type, as [`FastQuery::cache_key`].
pub fn cache_key(name: &hickory_proto::rr::Name, qtype: u16) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 3);
    for label in name.iter() {
        key.push(label.len() as u8);
        key.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    key.push(0);
    key.extend_from_slice(&qtype.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 4242;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(p) = edns {
            let mut e = Edns::new();
            e.set_max_payload(p);
            m.edns = Some(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn parses_the_common_shape() {
        let p = query("WWW.Example.org.", RecordType::AAAA, Some(4096));
        let q = parse(&p).unwrap();
        assert_eq!(q.id, 4242);
        assert_eq!(q.host(), "www.example.org");
        assert_eq!(q.qtype, 28);
        assert_eq!(q.qclass, 1);
        assert_eq!(q.edns.unwrap().payload, 4096);
        assert_eq!(q.qname_wire(), b"\x03WWW\x07Example\x03org\x00");
        assert_eq!(
            q.cache_key(),
            cache_key(&Name::from_ascii("www.EXAMPLE.org.").unwrap(), 28).as_slice()
        );
        let p = query("a.b.", RecordType::A, None);
        assert_eq!(parse(&p).unwrap().edns, None);
        // Not the common shape: trailing bytes, a second question, odd bytes in labels.
        let mut p2 = p.clone();
        p2.push(0);
        assert!(parse(&p2).is_none());
        let mut p3 = p.clone();
        p3[5] = 2;
        assert!(parse(&p3).is_none());
        let p4 = query("a\\.b.c.", RecordType::A, None);
        assert!(parse(&p4).is_none());
    }

    #[test]
    fn blocked_answers_decode() {
        let p = query("Casino.Example.", RecordType::A, Some(1232));
        let q = parse(&p).unwrap();
        let b = blocked(
            &q,
            &BlockedData::V4(Ipv4Addr::new(198, 51, 100, 7)),
            60,
            (17, "vigie: gambling (profile eleves)"),
        );
        let m = Message::from_vec(&b).unwrap();
        assert_eq!(m.metadata.id, 4242);
        assert!(
            m.metadata.authoritative
                && m.metadata.recursion_desired
                && m.metadata.recursion_available
        );
        assert_eq!(m.queries[0].name.to_ascii(), "Casino.Example.");
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].name.to_ascii(), "Casino.Example.");
        assert_eq!(m.answers[0].ttl, 60);
        assert_eq!(
            m.answers[0].data,
            RData::A(hickory_proto::rr::rdata::A::new(198, 51, 100, 7))
        );
        let ede = super::super::wire::ede_of(&m).unwrap();
        assert_eq!(
            (ede.code, ede.text.as_str()),
            (17, "vigie: gambling (profile eleves)")
        );

        let q = parse(&p).unwrap();
        let b = blocked(&q, &BlockedData::Negative { nxdomain: true }, 30, (15, "x"));
        let m = Message::from_vec(&b).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.answers.is_empty());
        match &m.authorities[0].data {
            RData::SOA(soa) => assert_eq!(soa.minimum, 30),
            other => panic!("{other:?}"),
        }
        let p = query("a.example.", RecordType::AAAA, None);
        let q = parse(&p).unwrap();
        let b = blocked(&q, &BlockedData::V6(Ipv6Addr::UNSPECIFIED), 30, (17, "y"));
        let m = Message::from_vec(&b).unwrap();
        assert!(m.edns.is_none(), "no OPT without EDNS in the query");
        assert_eq!(m.answers[0].record_type(), RecordType::AAAA);
    }

    #[test]
    fn cached_answers_patch_id_case_ttl_and_opt() {
        let name = Name::from_ascii("www.example.org.").unwrap();
        let mut r = Message::response(0, hickory_proto::op::OpCode::Query);
        r.add_query(Query::query(name.clone(), RecordType::A));
        r.add_answer(Record::from_rdata(
            name.clone(),
            300,
            RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 1)),
        ));
        r.add_answer(Record::from_rdata(
            name,
            100,
            RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 2)),
        ));
        let w = WireAnswer::new(r.to_vec().unwrap()).unwrap();
        let p = query("WwW.Example.ORG.", RecordType::A, Some(1232));
        let q = parse(&p).unwrap();
        let b = w.answer(&q, 40, 1232).unwrap();
        let m = Message::from_vec(&b).unwrap();
        assert_eq!(m.metadata.id, 4242);
        assert_eq!(m.queries[0].name.to_ascii(), "WwW.Example.ORG.");
        assert_eq!(
            m.answers.iter().map(|r| r.ttl).collect::<Vec<_>>(),
            vec![260, 60]
        );
        assert!(m.edns.is_some());
        assert!(w.answer(&q, 0, 40).is_none(), "too big for the limit");
    }
}
