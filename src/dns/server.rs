//! The DNS transports: UDP sockets (one per worker thread, `SO_REUSEPORT`, so the
//! kernel spreads clients across cores) and a TCP listener (RFC 7766: length-prefixed
//! messages, idle timeout, bounded connections). Each loop stops on the shared
//! `CancellationToken`; queries waiting on an upstream are tracked so shutdown can
//! let them finish. What to answer is the handler's business, not this module's.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handler::{Handler, Prepared, Transport};

/// Largest query accepted over UDP; anything longer is cut and answered FORMERR.
const UDP_RECV_BUFFER: usize = 4096;
/// Queries waiting on upstreams at once; past it a UDP query is dropped (the client
/// retries) rather than letting a flood of unique names grow memory without bound.
const MAX_PENDING_UPSTREAM: usize = 16_384;
/// Simultaneous TCP connections.
const MAX_TCP_CONNECTIONS: usize = 1_024;
/// A TCP client that sends nothing for this long is disconnected (RFC 7766 §6.2.3
/// suggests seconds, not minutes).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Kernel receive buffer asked for each UDP socket, to ride out bursts.
const UDP_SO_RCVBUF: usize = 4 << 20;

/// Bound DNS sockets, ready to serve.
pub struct Listeners {
    udp: Vec<UdpSocket>,
    tcp: TcpListener,
    local: SocketAddr,
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
            return Ok(Listeners { udp, tcp, local });
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("cannot bind DNS listener")))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
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
        tasks.spawn(tcp_loop(self.tcp, handler, tracker, cancel));
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
    handler: Arc<Handler>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
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
        let (h, c) = (handler.clone(), cancel.clone());
        tracker.spawn(async move {
            if let Err(e) = tcp_connection(stream, peer, h, c).await {
                tracing::debug!(%peer, "dns tcp connection: {e}");
            }
            drop(permit);
        });
    }
}

async fn tcp_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<Handler>,
    cancel: CancellationToken,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(512);
    loop {
        let len = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_u16()) => match r {
                Err(_) => return Ok(()),
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(r) => r?,
            },
        };
        buf.resize(usize::from(len), 0);
        tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut buf))
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
        stream.write_all(&out).await?;
    }
}
