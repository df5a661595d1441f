//! The DNS wire format at vigie's edge: reading a client's query (strictly, so a
//! malformed packet never reaches the policy) and encoding answers, with EDNS(0),
//! Extended DNS Errors (RFC 8914) and truncation for UDP. hickory-proto does the
//! encoding and decoding; this module only decides what goes in.

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// Largest UDP answer vigie sends, whatever the client advertises: the DNS Flag Day
/// 2020 value, which avoids IP fragmentation on every common path.
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// What a client without EDNS may receive over UDP (RFC 1035).
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;

/// EDNS option code of an Extended DNS Error (RFC 8914).
pub const EDE_OPTION: u16 = 15;
/// EDE info-code 15: blocked by the resolver operator's policy (security lists).
pub const EDE_BLOCKED: u16 = 15;
/// EDE info-code 17: filtered by a policy agreed with the client (content filtering).
pub const EDE_FILTERED: u16 = 17;
/// EDE info-code 22: no upstream answered in time.
pub const EDE_NO_REACHABLE_AUTHORITY: u16 = 22;
/// EDE info-code 23: the upstream exchange failed.
pub const EDE_NETWORK_ERROR: u16 = 23;

/// The EDNS parameters a client sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientEdns {
    pub payload: u16,
    pub dnssec_ok: bool,
}

/// A client's query, checked: exactly one question, opcode QUERY, at most one OPT.
#[derive(Clone, Debug)]
pub struct ClientQuery {
    pub id: u16,
    /// The question as sent (case preserved: clients using 0x20 compare it).
    pub query: Query,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    pub edns: Option<ClientEdns>,
}

impl ClientQuery {
    /// Largest answer this client accepts over UDP.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => e.payload.clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD) as usize,
            None => CLASSIC_UDP_PAYLOAD as usize,
        }
    }
}

/// Why a packet is not a query vigie answers normally.
#[derive(Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not worth an answer: too short to carry an id, or itself a response (answering
    /// responses lets two servers loop).
    Drop(&'static str),
    /// Answer with this code and no question (FORMERR, NOTIMP).
    Error {
        id: u16,
        op_code: OpCode,
        rd: bool,
        rcode: ResponseCode,
    },
    /// Unknown EDNS version (RFC 6891 §6.1.3): BADVERS with an OPT of version 0.
    BadVersion { id: u16, rd: bool },
}

/// Reads a client query. Cheap checks on the header come first so a hostile packet
/// (65,535 questions, say) is refused before anything is allocated for it.
pub fn parse_query(packet: &[u8]) -> Result<ClientQuery, Reject> {
    let mut decoder = BinDecoder::new(packet);
    let header = Header::read(&mut decoder).map_err(|_| Reject::Drop("short"))?;
    let md = header.metadata;
    if md.message_type == MessageType::Response {
        return Err(Reject::Drop("response"));
    }
    let error = |rcode| Reject::Error {
        id: md.id,
        op_code: md.op_code,
        rd: md.recursion_desired,
        rcode,
    };
    if md.op_code != OpCode::Query {
        return Err(error(ResponseCode::NotImp));
    }
    let c = header.counts;
    // A query carries one question, no answers or authority, and in the additional
    // section at most an OPT and a TSIG (what Unbound accepts too).
    if c.queries != 1 || c.answers != 0 || c.authorities != 0 || c.additionals > 2 {
        return Err(error(ResponseCode::FormErr));
    }
    let msg = Message::from_vec(packet).map_err(|_| error(ResponseCode::FormErr))?;
    let Some(query) = msg.queries.into_iter().next() else {
        return Err(error(ResponseCode::FormErr));
    };
    let edns = match &msg.edns {
        Some(e) if e.version() > 0 => {
            return Err(Reject::BadVersion {
                id: md.id,
                rd: md.recursion_desired,
            });
        }
        Some(e) => Some(ClientEdns {
            payload: e.max_payload(),
            dnssec_ok: e.flags().dnssec_ok,
        }),
        None => None,
    };
    Ok(ClientQuery {
        id: md.id,
        query,
        recursion_desired: md.recursion_desired,
        checking_disabled: md.checking_disabled,
        edns,
    })
}

/// An Extended DNS Error to attach to an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ede {
    pub code: u16,
    pub text: String,
}

/// What to answer, before encoding.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    /// Set for answers vigie itself is the authority for (blocked names).
    pub authoritative: bool,
    pub ede: Option<Ede>,
}

impl Answer {
    pub fn rcode(rcode: ResponseCode) -> Self {
        Answer {
            rcode,
            ..Answer::default()
        }
    }
}

fn response_edns(ede: Option<&Ede>) -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(MAX_UDP_PAYLOAD);
    if let Some(ede) = ede {
        let mut data = Vec::with_capacity(2 + ede.text.len());
        data.extend_from_slice(&ede.code.to_be_bytes());
        data.extend_from_slice(ede.text.as_bytes());
        edns.options_mut()
            .insert(EdnsOption::Unknown(EDE_OPTION, data));
    }
    edns
}

/// Encodes `answer` to `query`. When the result exceeds `limit` bytes (the UDP size
/// the client accepts), it is replaced by the question alone with TC set, so the
/// client retries over TCP. Returns the bytes and whether they were truncated.
pub fn encode(query: &ClientQuery, answer: &Answer, limit: usize) -> (Vec<u8>, bool) {
    let mut msg = Message::response(query.id, OpCode::Query);
    msg.metadata.recursion_desired = query.recursion_desired;
    msg.metadata.recursion_available = true;
    msg.metadata.checking_disabled = query.checking_disabled;
    msg.metadata.authoritative = answer.authoritative;
    msg.metadata.response_code = answer.rcode;
    msg.queries.push(query.query.clone());
    msg.answers.extend(answer.answers.iter().cloned());
    msg.authorities.extend(answer.authorities.iter().cloned());
    msg.additionals.extend(answer.additionals.iter().cloned());
    // RFC 6891 §7: a response carries an OPT only if the query did. An EDE without
    // EDNS cannot be sent; the rcode and the block answer still say it.
    if query.edns.is_some() {
        msg.edns = Some(response_edns(answer.ede.as_ref()));
    }
    let bytes = match msg.to_vec() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("cannot encode answer for {}: {e}", query.query.name);
            return (servfail(query), false);
        }
    };
    if bytes.len() <= limit {
        return (bytes, false);
    }
    let truncated = msg.truncate();
    match truncated.to_vec() {
        Ok(b) if b.len() <= limit => (b, true),
        _ => (servfail(query), false),
    }
}

/// SERVFAIL to `query`, for when encoding itself failed.
fn servfail(query: &ClientQuery) -> Vec<u8> {
    let mut msg = Message::error_msg(query.id, OpCode::Query, ResponseCode::ServFail);
    msg.metadata.recursion_desired = query.recursion_desired;
    msg.metadata.recursion_available = true;
    msg.to_vec().unwrap_or_default()
}

/// The answer to a rejected packet, if it gets one.
pub fn encode_reject(reject: &Reject) -> Option<(Vec<u8>, ResponseCode)> {
    match *reject {
        Reject::Drop(_) => None,
        Reject::Error {
            id,
            op_code,
            rd,
            rcode,
        } => {
            let mut msg = Message::error_msg(id, op_code, rcode);
            msg.metadata.recursion_desired = rd;
            msg.metadata.recursion_available = true;
            msg.to_vec().ok().map(|b| (b, rcode))
        }
        Reject::BadVersion { id, rd } => {
            let mut msg = Message::error_msg(id, OpCode::Query, ResponseCode::BADVERS);
            msg.metadata.recursion_desired = rd;
            msg.metadata.recursion_available = true;
            msg.edns = Some(response_edns(None));
            msg.to_vec().ok().map(|b| (b, ResponseCode::BADVERS))
        }
    }
}

/// The EDE of an answer, if it has one (tests and tools).
pub fn ede_of(msg: &Message) -> Option<Ede> {
    let edns = msg.edns.as_ref()?;
    match edns.option(EdnsCode::from(EDE_OPTION))? {
        EdnsOption::Unknown(_, data) if data.len() >= 2 => Some(Ede {
            code: u16::from_be_bytes([data[0], data[1]]),
            text: String::from_utf8_lossy(&data[2..]).into_owned(),
        }),
        _ => None,
    }
}

/// A record type's name for audit events: its mnemonic (`AAAA`), or `TYPE<n>`
/// (RFC 3597) for a type hickory does not name.
pub fn qtype_label(qtype: u16) -> std::borrow::Cow<'static, str> {
    match RecordType::from(qtype) {
        RecordType::Unknown(n) => format!("TYPE{n}").into(),
        t => <&'static str>::from(t).into(),
    }
}

/// Lowercase label used in metrics for a response code.
pub fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "noerror",
        ResponseCode::FormErr => "formerr",
        ResponseCode::ServFail => "servfail",
        ResponseCode::NXDomain => "nxdomain",
        ResponseCode::NotImp => "notimp",
        ResponseCode::Refused => "refused",
        ResponseCode::BADVERS => "badvers",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qtype_labels() {
        assert_eq!(qtype_label(1), "A");
        assert_eq!(qtype_label(65), "HTTPS");
        assert_eq!(qtype_label(65_280), "TYPE65280");
    }
    use hickory_proto::rr::{Name, RecordType};

    fn query_bytes(name: &str, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 77;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        if let Some(p) = edns {
            let mut e = Edns::new();
            e.set_max_payload(p);
            m.edns = Some(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn parses_a_query_and_keeps_case() {
        let q = parse_query(&query_bytes("WwW.Example.ORG.", Some(4096))).unwrap();
        assert_eq!(q.id, 77);
        assert_eq!(q.query.name.to_ascii(), "WwW.Example.ORG.");
        assert_eq!(q.udp_limit(), MAX_UDP_PAYLOAD as usize);
        let q = parse_query(&query_bytes("a.org.", None)).unwrap();
        assert_eq!(q.udp_limit(), 512);
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(parse_query(&[0u8; 5]).err(), Some(Reject::Drop("short")));
        let mut b = query_bytes("a.org.", None);
        b[2] |= 0x80; // QR
        assert_eq!(parse_query(&b).err(), Some(Reject::Drop("response")));
        let mut b = query_bytes("a.org.", None);
        b[5] = 2; // QDCOUNT = 2
        assert!(matches!(
            parse_query(&b),
            Err(Reject::Error {
                rcode: ResponseCode::FormErr,
                id: 77,
                ..
            })
        ));
        let mut b = query_bytes("a.org.", None);
        b[2] = (b[2] & 0x87) | (5 << 3); // opcode UPDATE
        assert!(matches!(
            parse_query(&b),
            Err(Reject::Error {
                rcode: ResponseCode::NotImp,
                ..
            })
        ));
        let b = query_bytes("a.org.", None);
        assert!(matches!(
            parse_query(&b[..b.len() - 2]),
            Err(Reject::Error {
                rcode: ResponseCode::FormErr,
                ..
            })
        ));
    }

    #[test]
    fn ede_round_trips_and_big_answers_truncate() {
        let q = parse_query(&query_bytes("a.org.", Some(1232))).unwrap();
        let mut a = Answer::rcode(ResponseCode::NXDomain);
        a.ede = Some(Ede {
            code: EDE_FILTERED,
            text: "gambling".into(),
        });
        let (b, tc) = encode(&q, &a, q.udp_limit());
        assert!(!tc);
        let m = Message::from_vec(&b).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(ede_of(&m).unwrap().text, "gambling");

        let name = Name::from_ascii("a.org.").unwrap();
        let big: Vec<Record> = (0..200u32)
            .map(|i| {
                Record::from_rdata(
                    name.clone(),
                    60,
                    hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A(
                        std::net::Ipv4Addr::from(i),
                    )),
                )
            })
            .collect();
        let a = Answer {
            answers: big,
            ..Answer::default()
        };
        let (b, tc) = encode(&q, &a, q.udp_limit());
        assert!(tc);
        let m = Message::from_vec(&b).unwrap();
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        assert_eq!(m.queries.len(), 1);
        let (b, tc) = encode(&q, &a, 65_535);
        assert!(!tc && b.len() > 1232);
    }
}
