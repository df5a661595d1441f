//! The DNS transports: UDP sockets (one per worker thread, `SO_REUSEPORT`, so the
//! kernel spreads clients across cores) and a TCP listener (RFC 7766: length-prefixed
//! messages, bounded connections — in all and per client —, idle timeout, a cap on
//! queries and lifetime per connection, write timeout; outsiders closed at accept,
//! so no client can hold slots another needs). Each loop stops on the shared
//! `CancellationToken`; queries waiting on an upstream are tracked so shutdown can
//! let them finish. What to answer is the handler's business, not this module's.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handler::{Handler, Prepared, Transport};
use crate::per_client::PerClient;

/// Largest query accepted over UDP; anything longer is cut and answered FORMERR.
const UDP_RECV_BUFFER: usize = 4096;
/// Queries waiting on upstreams at once; past it a UDP query is dropped (the client
/// retries) rather than letting a flood of unique names grow memory without bound.
const MAX_PENDING_UPSTREAM: usize = 16_384;
/// Bounds on the TCP transport. RFC 7766 §6.2.3 leaves them to the server: these
/// follow Unbound and BIND (idle seconds, not minutes; a connection is closed after
/// a number of queries or a lifetime, and the client simply reconnects).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpLimits {
    /// Simultaneous connections in all.
    pub max_connections: usize,
    /// Simultaneous connections of one client (its address, see `rate_key`): a
    /// thirty-second of the whole, so one device cannot hold every slot.
    pub per_client: usize,
    /// Queries answered on one connection before it is closed.
    pub max_queries: usize,
    /// A client that sends nothing for this long is disconnected.
    pub idle: Duration,
    /// Longest a connection stays open, however busy.
    pub lifetime: Duration,
    /// Longest an answer may take to be written (a client that stops reading).
    pub write_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: 1_024,
            per_client: 32,
            max_queries: 256,
            idle: Duration::from_secs(10),
            lifetime: Duration::from_secs(120),
            write_timeout: Duration::from_secs(5),
        }
    }
}
/// Kernel receive buffer asked for each UDP socket, to ride out bursts.
const UDP_SO_RCVBUF: usize = 4 << 20;

/// Bound DNS sockets, ready to serve.
pub struct Listeners {
    udp: Vec<UdpSocket>,
    tcp: TcpListener,
    local: SocketAddr,
    tcp_limits: TcpLimits,
}

impl Listeners {
    /// Binds `addr` on UDP (`udp_sockets` sockets sharing the port) and TCP. With
    /// port 0 the kernel picks one port, used for both.
    pub fn bind(addr: SocketAddr, udp_sockets: usize) -> io::Result<Listeners> {
        let mut last_err = None;
        // Port 0: the UDP port the kernel picked may be taken on TCP; try a few.
        for _ in 0..if addr.port() == 0 { 16 } else { 1 } {
            let first = udp_socket(addr)?;
            let local = first.local_addr()?;
            let tcp = match tcp_listener(local) {
                Ok(t) => t,
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            };
            let mut udp = vec![first];
            for _ in 1..udp_sockets.max(1) {
                udp.push(udp_socket(local)?);
            }
            return Ok(Listeners {
                udp,
                tcp,
                local,
                tcp_limits: TcpLimits::default(),
            });
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("cannot bind DNS listener")))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Other TCP bounds than the defaults (tests lower them).
    pub fn with_tcp_limits(mut self, limits: TcpLimits) -> Self {
        self.tcp_limits = limits;
        self
    }

    /// Starts the UDP loops and the TCP accept loop in `tasks`.
    pub fn serve(
        self,
        handler: Arc<Handler>,
        tasks: &mut JoinSet<()>,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) {
        let pending = Arc::new(Semaphore::new(MAX_PENDING_UPSTREAM));
        for sock in self.udp {
            tasks.spawn(udp_loop(
                Arc::new(sock),
                handler.clone(),
                tracker.clone(),
                pending.clone(),
                cancel.clone(),
            ));
        }
        tasks.spawn(tcp_loop(
            self.tcp,
            self.tcp_limits,
            handler,
            tracker,
            cancel,
        ));
    }
}

fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = s.set_recv_buffer_size(UDP_SO_RCVBUF);
    s.set_nonblocking(true)?;
    s.bind(&SockAddr::from(addr))?;
    UdpSocket::from_std(s.into())
}

fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SockAddr::from(addr))?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// Datagrams read (and answers written) per system call on Linux.
#[cfg(target_os = "linux")]
const UDP_BATCH: usize = 32;

/// The UDP loop on Linux: every wake-up drains up to [`UDP_BATCH`] queries with one
/// `recvmmsg` and sends the answers it can give at once with one `sendmmsg`, instead
/// of two system calls (and tokio's readiness round trip) per query. Queries that go
/// upstream are answered from their own task, as in the portable loop.
#[cfg(target_os = "linux")]
async fn udp_loop(
    sock: Arc<UdpSocket>,
    handler: Arc<Handler>,
    tracker: TaskTracker,
    pending: Arc<Semaphore>,
    cancel: CancellationToken,
) {
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
    use tokio::io::Interest;

    let fd = sock.as_raw_fd();
    let mut bufs = vec![[0u8; UDP_RECV_BUFFER]; UDP_BATCH];
    let mut got: Vec<(usize, Option<SocketAddr>)> = Vec::with_capacity(UDP_BATCH);
    let mut replies: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(UDP_BATCH);
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            _ = &mut cancelled => break,
            r = sock.readable() => if let Err(e) = r {
                tracing::debug!("dns udp readable: {e}");
                continue;
            },
        }
        got.clear();
        let read = sock.try_io(Interest::READABLE, || {
            // nix's headers hold raw pointers (not `Send`): made per batch, inside
            // this synchronous call, so the loop's future can move between threads.
            let mut rx_headers = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            let msgs = recvmmsg(
                fd,
                &mut rx_headers,
                iovs.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(io::Error::from)?;
            for m in msgs {
                got.push((m.bytes, m.address.and_then(|a| std_addr(&a))));
            }
            Ok(())
        });
        match read {
            Ok(()) => {}
            // Readiness was stale: try_io cleared it, wait again.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                // ICMP errors from earlier sends surface here; they are not fatal.
                tracing::debug!("dns udp recvmmsg: {e}");
                continue;
            }
        }
        for (i, &(n, peer)) in got.iter().enumerate() {
            let Some(peer) = peer else { continue };
            match handler.prepare(&bufs[i][..n], peer.ip(), Transport::Udp) {
                Prepared::Done(Some(reply)) => replies.push((reply, peer)),
                Prepared::Done(None) => {}
                Prepared::Forward(p) => forward_udp(&handler, &sock, &tracker, &pending, p, peer),
            }
        }
        if replies.is_empty() {
            continue;
        }
        let sent = sock
            .try_io(Interest::WRITABLE, || {
                let iovs: Vec<[IoSlice<'_>; 1]> =
                    replies.iter().map(|(r, _)| [IoSlice::new(r)]).collect();
                let addrs: Vec<Option<SockaddrStorage>> = replies
                    .iter()
                    .map(|(_, a)| Some(SockaddrStorage::from(*a)))
                    .collect();
                let mut tx_headers =
                    MultiHeaders::<SockaddrStorage>::preallocate(replies.len(), None);
                let n = sendmmsg(
                    fd,
                    &mut tx_headers,
                    &iovs,
                    &addrs,
                    [],
                    MsgFlags::MSG_DONTWAIT,
                )
                .map_err(io::Error::from)?
                .count();
                Ok(n)
            })
            .unwrap_or(0);
        // What the kernel did not take at once (a full send buffer) goes one by one,
        // waiting for room: an answer is never silently dropped here.
        for (reply, peer) in replies.drain(..).skip(sent) {
            if let Err(e) = sock.send_to(&reply, peer).await {
                tracing::debug!(%peer, "dns udp send: {e}");
            }
        }
    }
}

/// Answers a query that needs the upstreams from its own task, within the bound on
/// queries waiting upstream (past it the query is dropped: the client retries).
fn forward_udp(
    handler: &Arc<Handler>,
    sock: &Arc<UdpSocket>,
    tracker: &TaskTracker,
    pending: &Arc<Semaphore>,
    query: Box<super::handler::Pending>,
    peer: SocketAddr,
) {
    let Ok(permit) = pending.clone().try_acquire_owned() else {
        crate::metrics::DNS_UPSTREAM_BACKLOG_DROPPED_TOTAL.inc();
        tracing::debug!(%peer, "too many queries waiting on upstreams; dropped");
        return;
    };
    let (h, s) = (handler.clone(), sock.clone());
    tracker.spawn(async move {
        let reply = h.forward(*query).await;
        drop(permit);
        if let Err(e) = s.send_to(&reply, peer).await {
            tracing::debug!(%peer, "dns udp send: {e}");
        }
    });
}

/// A received datagram's source as a std address.
#[cfg(target_os = "linux")]
fn std_addr(a: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(std::net::SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(std::net::SocketAddrV6::from(*v6)))
}

/// The portable UDP loop: one datagram per system call.
#[cfg(not(target_os = "linux"))]
async fn udp_loop(
    sock: Arc<UdpSocket>,
    handler: Arc<Handler>,
    tracker: TaskTracker,
    pending: Arc<Semaphore>,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; UDP_RECV_BUFFER];
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        let (n, peer) = tokio::select! {
            biased;
            _ = &mut cancelled => break,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier sends surface here; they are not fatal.
                    tracing::debug!("dns udp recv: {e}");
                    continue;
                }
            },
        };
        match handler.prepare(&buf[..n], peer.ip(), Transport::Udp) {
            Prepared::Done(Some(reply)) => {
                if let Err(e) = sock.send_to(&reply, peer).await {
                    tracing::debug!(%peer, "dns udp send: {e}");
                }
            }
            Prepared::Done(None) => {}
            Prepared::Forward(p) => forward_udp(&handler, &sock, &tracker, &pending, p, peer),
        }
    }
}

async fn tcp_loop(
    listener: TcpListener,
    limits: TcpLimits,
    handler: Arc<Handler>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(limits.max_connections));
    let per_client = Arc::new(PerClient::default());
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("dns tcp accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Closed before anything is read: an outsider would otherwise hold a slot
        // for the idle timeout after its REFUSED (UDP still answers it REFUSED).
        let ip = peer.ip().to_canonical();
        if !handler.is_client(ip) {
            crate::metrics::DNS_TCP_REFUSED_TOTAL
                .with_label_values(&["client_network"])
                .inc();
            tracing::debug!(%peer, "dns tcp: not a client, closed");
            continue;
        }
        let Ok(slot) = per_client.enter(super::handler::rate_key(ip), limits.per_client) else {
            crate::metrics::DNS_TCP_REFUSED_TOTAL
                .with_label_values(&["client_limit"])
                .inc();
            tracing::debug!(%peer, "dns tcp: the client holds {} connections, closed", limits.per_client);
            continue;
        };
        let (h, c) = (handler.clone(), cancel.clone());
        tracker.spawn(async move {
            if let Err(e) = tcp_connection(stream, peer, limits, h, c).await {
                tracing::debug!(%peer, "dns tcp connection: {e}");
            }
            drop(slot);
            drop(permit);
        });
    }
}

async fn tcp_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    limits: TcpLimits,
    handler: Arc<Handler>,
    cancel: CancellationToken,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let closes_at = Instant::now() + limits.lifetime;
    let mut buf = Vec::with_capacity(512);
    // Past `max_queries` the connection is closed between two messages, which RFC
    // 7766 §6.2.3 allows at any time: the client reconnects.
    for _ in 0..limits.max_queries {
        // Idle time counts from the last answer, but never past the lifetime.
        let wait = limits
            .idle
            .min(closes_at.saturating_duration_since(Instant::now()));
        let len = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = tokio::time::timeout(wait, stream.read_u16()) => match r {
                Err(_) => return Ok(()),
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(r) => r?,
            },
        };
        buf.resize(usize::from(len), 0);
        tokio::time::timeout(limits.idle, stream.read_exact(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "partial message"))??;
        let Some(reply) = handler.handle(&buf, peer.ip(), Transport::Tcp).await else {
            // Nothing to say to this (a response, a runt): close, as Unbound does.
            return Ok(());
        };
        let Ok(rlen) = u16::try_from(reply.len()) else {
            return Ok(());
        };
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&rlen.to_be_bytes());
        out.extend_from_slice(&reply);
        // A client that stops reading would otherwise hold the slot for ever.
        tokio::time::timeout(limits.write_timeout, stream.write_all(&out))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "answer not read"))??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::wire::Answer;
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    /// Clients 127.0.0.1 and 127.0.0.2; `b.test` A is in the cache, so answering it
    /// needs no upstream.
    fn handler() -> Arc<Handler> {
        let h = super::super::handler::test_handler(
            "client_networks = [\"127.0.0.1/32\", \"127.0.0.2/32\"]\n[profiles.invites]\n",
            "127.0.0.1:9",
            Duration::from_secs(1),
            None,
        );
        let name = Name::from_ascii("b.test.").unwrap();
        let answer = Answer {
            answers: vec![Record::from_rdata(
                name.clone(),
                300,
                RData::A(A::new(192, 0, 2, 1)),
            )],
            ..Answer::rcode(ResponseCode::NoError)
        };
        h.cache_insert(&name, RecordType::A, &answer);
        Arc::new(h)
    }

    /// Serves `handler()` on a free loopback port with `limits`.
    fn serve(limits: TcpLimits) -> (SocketAddr, CancellationToken, JoinSet<()>) {
        let listeners = Listeners::bind("127.0.0.1:0".parse().unwrap(), 1)
            .unwrap()
            .with_tcp_limits(limits);
        let addr = listeners.local_addr();
        let (mut tasks, cancel) = (JoinSet::new(), CancellationToken::new());
        listeners.serve(handler(), &mut tasks, TaskTracker::new(), cancel.clone());
        (addr, cancel, tasks)
    }

    async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{src}:0").parse().unwrap()).unwrap();
        s.connect(to).await.unwrap()
    }

    /// Sends one query for `b.test` A; its answer's rcode, `None` if the server
    /// closed the connection or said nothing within a second.
    async fn ask(s: &mut TcpStream, id: u16) -> Option<ResponseCode> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.add_query(Query::query(
            Name::from_ascii("b.test.").unwrap(),
            RecordType::A,
        ));
        let q = m.to_vec().unwrap();
        let mut out = (q.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&q);
        s.write_all(&out).await.ok()?;
        let exchange = async {
            let len = s.read_u16().await.ok()?;
            let mut buf = vec![0u8; usize::from(len)];
            s.read_exact(&mut buf).await.ok()?;
            Message::from_vec(&buf).ok()
        };
        let m = tokio::time::timeout(Duration::from_secs(1), exchange)
            .await
            .ok()??;
        assert_eq!(m.metadata.id, id);
        Some(m.metadata.response_code)
    }

    /// Whether the server closed `s` (EOF or reset within half a second).
    async fn closed(s: &mut TcpStream) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_client_at_its_cap_cannot_starve_another_and_outsiders_are_closed() {
        let refused = |r: &str| {
            crate::metrics::DNS_TCP_REFUSED_TOTAL
                .with_label_values(&[r])
                .get()
        };
        let (over_cap, outsiders) = (refused("client_limit"), refused("client_network"));
        let (addr, cancel, _tasks) = serve(TcpLimits {
            max_connections: 8,
            per_client: 4,
            ..TcpLimits::default()
        });
        // One client opens as many connections as the whole listener takes, and
        // sends nothing on them.
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(connect_from("127.0.0.1", addr).await);
        }
        let mut shut = 0;
        for s in &mut held {
            if closed(s).await {
                shut += 1;
            }
        }
        assert_eq!(shut, 4, "connections past the client's cap are closed");
        assert!(refused("client_limit") >= over_cap + 4);
        // Another client is still served.
        let mut other = connect_from("127.0.0.2", addr).await;
        assert_eq!(ask(&mut other, 1).await, Some(ResponseCode::NoError));
        // An outsider is closed without an answer.
        let mut outsider = connect_from("127.0.0.9", addr).await;
        assert_eq!(ask(&mut outsider, 2).await, None);
        assert!(refused("client_network") > outsiders);
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_query_past_the_upstream_backlog_is_dropped_and_counted() {
        let h = handler();
        let mut m = Message::query();
        m.add_query(Query::query(
            Name::from_ascii("miss.test.").unwrap(),
            RecordType::A,
        ));
        let Prepared::Forward(p) = h.prepare(
            &m.to_vec().unwrap(),
            "127.0.0.1".parse().unwrap(),
            Transport::Udp,
        ) else {
            panic!("a cache miss goes upstream");
        };
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let before = crate::metrics::DNS_UPSTREAM_BACKLOG_DROPPED_TOTAL.get();
        let full = Arc::new(Semaphore::new(0));
        let tracker = TaskTracker::new();
        forward_udp(&h, &sock, &tracker, &full, p, sock.local_addr().unwrap());
        assert!(tracker.is_empty(), "nothing was sent upstream");
        assert!(crate::metrics::DNS_UPSTREAM_BACKLOG_DROPPED_TOTAL.get() > before);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_ends_after_its_queries_or_its_lifetime() {
        let (addr, cancel, _tasks) = serve(TcpLimits {
            max_queries: 3,
            lifetime: Duration::from_millis(800),
            ..TcpLimits::default()
        });
        let mut s = connect_from("127.0.0.1", addr).await;
        for id in 0..3 {
            assert_eq!(ask(&mut s, id).await, Some(ResponseCode::NoError));
        }
        assert!(closed(&mut s).await, "closed after max_queries");

        // Busy, never idle, but not for longer than the lifetime.
        let mut s = connect_from("127.0.0.1", addr).await;
        let started = Instant::now();
        let mut answered = 0;
        while ask(&mut s, answered).await.is_some() {
            answered += 1;
            assert!(answered < 3 || started.elapsed() < Duration::from_secs(2));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(
            (1..=3).contains(&answered),
            "{answered} answers in {:?}",
            started.elapsed()
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        cancel.cancel();
    }
}
