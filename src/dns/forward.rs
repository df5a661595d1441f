//! Plain-UDP forwarding to the upstreams, written for the hot path.
//!
//! hickory-resolver's name-server pool opens a socket per query (bind, epoll
//! registration, close) and runs each query through several layers of boxed,
//! shared futures: under `benches/dns-compare.sh` the 3.7 % of queries that went
//! upstream took 14 % of vigie's CPU (perf, `benches/RESULTS.md`). This forwarder
//! keeps a few long-lived sockets instead, matches answers to queries by id, and
//! leaves TCP, DNS-over-TLS/HTTPS and truncated answers to the pool
//! ([`super::upstream::Upstreams`] decides which path a query takes).
//!
//! Answers are accepted only from the address the query went to, with the query's
//! id and the query's question (compared byte for byte, case aside). Ids are random;
//! sockets are bound to random ports chosen by the kernel and replaced after
//! [`ROTATE_AFTER`] queries or [`ROTATE_EVERY`], so an off-path attacker has a moving
//! target (16 bits of id times the port) and no long-lived port to probe.
//!
//! Each query goes to the two upstreams with the lowest smoothed answer time at once
//! (one dead upstream costs nothing, as in the pool's "parallel" strategy); the first
//! useful answer wins, a SERVFAIL or REFUSED only when every upstream asked said so.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

/// Sockets queries are spread over.
const SOCKETS: usize = 4;
/// Queries a socket carries before it is replaced by one on a new random port.
pub const ROTATE_AFTER: u32 = 2_048;
/// Age at which a socket is replaced whatever its count.
pub const ROTATE_EVERY: Duration = Duration::from_secs(30);
/// Largest answer read: we advertise an EDNS payload of
/// [`super::wire::MAX_UDP_PAYLOAD`] (1,232 bytes), so anything longer is not an
/// answer to our query (it is cut here, then fails the checks).
const MAX_ANSWER: usize = 4_096;
/// Upstreams asked at once.
const FAN_OUT: usize = 2;

/// Why a forwarded query got no answer.
#[derive(Debug)]
pub enum ForwardError {
    /// No upstream answered in time.
    Timeout,
    /// The socket could not be used.
    Io(std::io::Error),
}

struct Upstream {
    addr: SocketAddr,
    /// Smoothed answer time, microseconds (7/8 old + 1/8 new; doubled when it
    /// misses an answer another upstream gave).
    srtt_us: AtomicU32,
}

/// A query waiting for its answer.
struct Waiting {
    /// Where the query went: an answer from anywhere else is ignored.
    sent_to: [Option<SocketAddr>; FAN_OUT],
    /// The question section as sent (name, type, class), for comparison.
    question: Vec<u8>,
    /// Upstreams that answered SERVFAIL or REFUSED so far.
    failed: usize,
    done: Option<oneshot::Sender<(Vec<u8>, SocketAddr)>>,
}

struct Slot {
    socket: UdpSocket,
    pending: Mutex<HashMap<u16, Waiting>>,
    sent: AtomicU32,
    born: Instant,
    retired: AtomicBool,
}

impl Slot {
    fn open(v6: bool) -> std::io::Result<Arc<Slot>> {
        let bind: SocketAddr = if v6 {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let std_socket = std::net::UdpSocket::bind(bind)?;
        std_socket.set_nonblocking(true)?;
        let slot = Arc::new(Slot {
            socket: UdpSocket::from_std(std_socket)?,
            pending: Mutex::new(HashMap::new()),
            sent: AtomicU32::new(0),
            born: Instant::now(),
            retired: AtomicBool::new(false),
        });
        tokio::spawn(receive(slot.clone()));
        Ok(slot)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Waiting>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands `packet` from `from` to the query it answers, if it answers one.
    fn deliver(&self, packet: &[u8], from: SocketAddr) {
        let Some(header) = packet.get(..12) else {
            return;
        };
        let id = u16::from_be_bytes([header[0], header[1]]);
        let is_response = header[2] & 0x80 != 0;
        let one_question = header[4..6] == [0, 1];
        let rcode = header[3] & 0x0f;
        let mut pending = self.pending();
        let Some(w) = pending.get_mut(&id) else {
            return;
        };
        let asked = w.sent_to.contains(&Some(from));
        let same_question = packet
            .get(12..12 + w.question.len())
            .is_some_and(|q| q.eq_ignore_ascii_case(&w.question));
        if !(asked && is_response && one_question && same_question) {
            crate::metrics::DNS_UPSTREAM_TOTAL
                .with_label_values(&["mismatched"])
                .inc();
            return;
        }
        // SERVFAIL (2) or REFUSED (5): wait for the other upstream, if any.
        let asked_count = w.sent_to.iter().flatten().count();
        if matches!(rcode, 2 | 5) {
            w.failed += 1;
            if w.failed < asked_count {
                return;
            }
        }
        if let Some(w) = pending.remove(&id)
            && let Some(done) = w.done
        {
            let _ = done.send((packet.to_vec(), from));
        }
    }
}

/// Reads answers for `slot` until it is retired and nothing waits on it.
async fn receive(slot: Arc<Slot>) {
    let mut buf = vec![0u8; MAX_ANSWER];
    loop {
        // Errors (ICMP port unreachable on some systems) and quiet seconds alike:
        // the query times out or the other upstream answers.
        if let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_secs(1), slot.socket.recv_from(&mut buf)).await
        {
            slot.deliver(&buf[..n], from);
        }
        if slot.retired.load(Ordering::Relaxed) && slot.pending().is_empty() {
            return;
        }
    }
}

/// Forwards over UDP to plain upstreams.
pub struct UdpForwarder {
    upstreams: Vec<Upstream>,
    v4: Vec<ArcSwap<Slot>>,
    v6: Vec<ArcSwap<Slot>>,
    next: AtomicUsize,
}

impl UdpForwarder {
    /// Opens the sockets (IPv4 and/or IPv6, as the upstreams need). Must run inside
    /// the tokio runtime.
    pub fn new(addrs: &[SocketAddr]) -> std::io::Result<UdpForwarder> {
        let open = |v6: bool| -> std::io::Result<Vec<ArcSwap<Slot>>> {
            if !addrs.iter().any(|a| a.is_ipv6() == v6) {
                return Ok(Vec::new());
            }
            (0..SOCKETS)
                .map(|_| Slot::open(v6).map(ArcSwap::new))
                .collect()
        };
        Ok(UdpForwarder {
            upstreams: addrs
                .iter()
                .map(|&addr| Upstream {
                    addr,
                    srtt_us: AtomicU32::new(0),
                })
                .collect(),
            v4: open(false)?,
            v6: open(true)?,
            next: AtomicUsize::new(0),
        })
    }

    /// Sends `query` (a complete DNS message; its id is replaced) and returns the
    /// first useful answer and who gave it, or [`ForwardError::Timeout`].
    pub async fn exchange(
        &self,
        mut query: Vec<u8>,
        timeout: Duration,
    ) -> Result<(Vec<u8>, SocketAddr), ForwardError> {
        let started = Instant::now();
        let targets = self.pick();
        let Some(first) = targets[0] else {
            return Err(ForwardError::Timeout);
        };
        let slots = if first.is_ipv6() { &self.v6 } else { &self.v4 };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % slots.len().max(1);
        let slot = self.slot(slots, i, first.is_ipv6())?;
        let question = question_of(&query).to_vec();
        let (done, answer) = oneshot::channel();
        let id = {
            let mut pending = slot.pending();
            let mut id: u16 = rand::random();
            while pending.contains_key(&id) {
                id = rand::random();
            }
            pending.insert(
                id,
                Waiting {
                    sent_to: targets,
                    question,
                    failed: 0,
                    done: Some(done),
                },
            );
            id
        };
        // Removes the entry however this future ends (answer, timeout, cancel).
        let _guard = Forget { slot: &slot, id };
        if let Some(b) = query.get_mut(..2) {
            b.copy_from_slice(&id.to_be_bytes());
        }
        let mut sent = 0;
        let mut last_err = None;
        for to in targets.iter().flatten() {
            match slot.socket.send_to(&query, to).await {
                Ok(_) => sent += 1,
                Err(e) => {
                    // Not asked after all: a SERVFAIL from the other one is final.
                    if let Some(w) = slot.pending().get_mut(&id) {
                        for t in &mut w.sent_to {
                            if *t == Some(*to) {
                                *t = None;
                            }
                        }
                    }
                    last_err = Some(e);
                }
            }
        }
        if sent == 0 {
            return Err(ForwardError::Io(
                last_err.unwrap_or_else(|| std::io::Error::other("no upstream")),
            ));
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok((packet, from))) => {
                self.observe(&targets, from, started.elapsed());
                Ok((packet, from))
            }
            _ => {
                for to in targets.iter().flatten() {
                    self.penalize(*to);
                }
                Err(ForwardError::Timeout)
            }
        }
    }

    /// The current socket of `slots[i]`, replaced first if it is due.
    fn slot(&self, slots: &[ArcSwap<Slot>], i: usize, v6: bool) -> Result<Arc<Slot>, ForwardError> {
        let cell = slots
            .get(i % slots.len().max(1))
            .ok_or_else(|| ForwardError::Io(std::io::Error::other("no socket for this family")))?;
        let slot = cell.load_full();
        let n = slot.sent.fetch_add(1, Ordering::Relaxed);
        if n + 1 >= ROTATE_AFTER || slot.born.elapsed() >= ROTATE_EVERY {
            // One caller wins the swap; the others keep using the old socket once.
            if !slot.retired.swap(true, Ordering::Relaxed) {
                match Slot::open(v6) {
                    Ok(fresh) => {
                        cell.store(fresh.clone());
                        return Ok(fresh);
                    }
                    Err(_) => slot.retired.store(false, Ordering::Relaxed),
                }
            }
        }
        Ok(slot)
    }

    /// The upstreams to ask, fastest first, all of the fastest one's address
    /// family (they share its socket).
    fn pick(&self) -> [Option<SocketAddr>; FAN_OUT] {
        let mut order: Vec<(u32, SocketAddr)> = self
            .upstreams
            .iter()
            .map(|u| (u.srtt_us.load(Ordering::Relaxed), u.addr))
            .collect();
        order.sort_by_key(|(rtt, _)| *rtt);
        let v6 = order.first().is_some_and(|(_, a)| a.is_ipv6());
        let mut out = [None; FAN_OUT];
        let same_family = order.into_iter().filter(|(_, a)| a.is_ipv6() == v6);
        for (o, (_, addr)) in out.iter_mut().zip(same_family) {
            *o = Some(addr);
        }
        out
    }

    fn observe(&self, asked: &[Option<SocketAddr>], from: SocketAddr, took: Duration) {
        let us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        for u in &self.upstreams {
            if u.addr == from {
                let old = u.srtt_us.load(Ordering::Relaxed);
                let new = if old == 0 { us } else { old - old / 8 + us / 8 };
                u.srtt_us.store(new.max(1), Ordering::Relaxed);
            } else if asked.contains(&Some(u.addr)) {
                // Beaten (or silent): slower, until it proves otherwise.
                let old = u.srtt_us.load(Ordering::Relaxed);
                u.srtt_us
                    .store(old.max(us).saturating_add(us / 8).max(1), Ordering::Relaxed);
            }
        }
    }

    fn penalize(&self, addr: SocketAddr) {
        for u in &self.upstreams {
            if u.addr == addr {
                let old = u.srtt_us.load(Ordering::Relaxed).max(1_000);
                u.srtt_us
                    .store(old.saturating_mul(2).min(10_000_000), Ordering::Relaxed);
            }
        }
    }
}

/// Drops a query's entry when its exchange ends, however it ends.
struct Forget<'a> {
    slot: &'a Slot,
    id: u16,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.slot.pending().remove(&self.id);
    }
}

/// The question section of a one-question message (empty if malformed).
fn question_of(msg: &[u8]) -> &[u8] {
    let Some(rest) = msg.get(12..) else {
        return &[];
    };
    let mut i = 0;
    while let Some(&len) = rest.get(i) {
        if len == 0 {
            // Root label, then type and class.
            return rest.get(..i + 5).unwrap_or(&[]);
        }
        if len & 0xc0 != 0 {
            return &[];
        }
        i += 1 + usize::from(len);
    }
    &[]
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{Name, RData, Record, RecordType, rdata::A};

    fn query(name: &str) -> Vec<u8> {
        let mut m = Message::new(0, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    /// A fake upstream on loopback: answers each query after `delay` with `rcode`,
    /// or also sends a forged answer (wrong id) first.
    async fn upstream(rcode: ResponseCode, delay: Duration, forge: bool) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut r = Message::response(q.metadata.id, OpCode::Query);
                r.metadata.response_code = rcode;
                r.add_query(q.queries[0].clone());
                r.add_answer(Record::from_rdata(
                    q.queries[0].name().clone(),
                    60,
                    RData::A(A::new(192, 0, 2, 7)),
                ));
                if forge {
                    let mut f = r.clone();
                    f.metadata.id = q.metadata.id.wrapping_add(1);
                    f.answers[0] = Record::from_rdata(
                        q.queries[0].name().clone(),
                        60,
                        RData::A(A::new(6, 6, 6, 6)),
                    );
                    sock.send_to(&f.to_vec().unwrap(), from).await.unwrap();
                }
                tokio::time::sleep(delay).await;
                sock.send_to(&r.to_vec().unwrap(), from).await.unwrap();
            }
        });
        addr
    }

    fn a_of(packet: &[u8]) -> String {
        let m = Message::from_vec(packet).unwrap();
        m.answers[0].data.to_string()
    }

    #[tokio::test]
    async fn answers_come_back_and_forgeries_are_ignored() {
        let up = upstream(ResponseCode::NoError, Duration::ZERO, true).await;
        let f = UdpForwarder::new(&[up]).unwrap();
        for i in 0..50 {
            let (packet, from) = f
                .exchange(query(&format!("n{i}.example.")), Duration::from_secs(2))
                .await
                .unwrap();
            assert_eq!(from, up);
            assert_eq!(a_of(&packet), "192.0.2.7");
            let m = Message::from_vec(&packet).unwrap();
            assert_eq!(m.queries[0].name().to_ascii(), format!("n{i}.example."));
        }
    }

    #[tokio::test]
    async fn a_dead_upstream_costs_nothing_and_servfail_waits_for_the_other() {
        // Nothing listens on this port (bound, then dropped).
        let dead = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let live = upstream(ResponseCode::NoError, Duration::from_millis(20), false).await;
        let f = UdpForwarder::new(&[dead, live]).unwrap();
        let started = Instant::now();
        let (_, from) = f
            .exchange(query("a.example."), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(from, live);
        assert!(started.elapsed() < Duration::from_secs(1));

        let failing = upstream(ResponseCode::ServFail, Duration::ZERO, false).await;
        let f = UdpForwarder::new(&[failing, live]).unwrap();
        let (packet, from) = f
            .exchange(query("b.example."), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(
            from, live,
            "the quick SERVFAIL did not win over a real answer"
        );
        assert_eq!(
            Message::from_vec(&packet).unwrap().metadata.response_code,
            ResponseCode::NoError
        );

        // Every upstream failing: the failure is the answer.
        let f = UdpForwarder::new(&[failing]).unwrap();
        let (packet, _) = f
            .exchange(query("c.example."), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(
            Message::from_vec(&packet).unwrap().metadata.response_code,
            ResponseCode::ServFail
        );
    }

    #[tokio::test]
    async fn timeouts_leave_nothing_behind_and_sockets_rotate() {
        let dead = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let f = UdpForwarder::new(&[dead]).unwrap();
        let r = f
            .exchange(query("d.example."), Duration::from_millis(50))
            .await;
        assert!(matches!(r, Err(ForwardError::Timeout)));
        for cell in &f.v4 {
            assert!(cell.load().pending().is_empty());
        }

        let up = upstream(ResponseCode::NoError, Duration::ZERO, false).await;
        let f = UdpForwarder::new(&[up]).unwrap();
        let port = |f: &UdpForwarder| f.v4[0].load().socket.local_addr().unwrap().port();
        let first = port(&f);
        for i in 0..(ROTATE_AFTER as usize * SOCKETS + SOCKETS) {
            f.exchange(query(&format!("r{i}.example.")), Duration::from_secs(2))
                .await
                .unwrap();
        }
        assert_ne!(
            port(&f),
            first,
            "socket replaced after {ROTATE_AFTER} queries"
        );
    }

    #[test]
    fn question_section() {
        let q = query("ab.example.");
        assert_eq!(question_of(&q), &q[12..]);
        assert_eq!(question_of(&q[..14]), b"");
        assert_eq!(question_of(b"short"), b"");
    }
}
