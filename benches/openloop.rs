//! An open-loop HTTP/1.1 load generator for benches/proxy-compare.sh: requests are
//! sent at a fixed rate whatever the server's response times (wrk is closed-loop: a
//! slow answer delays the next request, which hides queueing — "coordinated
//! omission"). Latency counts from the timer tick (about every millisecond) that
//! finds a request due, so time spent waiting for a free connection counts.
//!
//!   cargo bench --bench openloop -- --rate 10000 --secs 10 --conns 64 \
//!       --url http://localhost:18081/1k [--proxy 127.0.0.1:3401]
//!
//! Prints one line (rate = the offered rate): `sent N ok N errors N rate R p50_us X p90_us X p99_us X p999_us X
//! max_us X`. Loopback only; bounded by `--secs` (plus 5 s for the last answers).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

struct Args {
    rate: f64,
    secs: f64,
    conns: usize,
    url: String,
    proxy: Option<SocketAddr>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        rate: 1000.0,
        secs: 10.0,
        conns: 64,
        url: String::new(),
        proxy: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--rate" => a.rate = v()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--secs" => a.secs = v()?.parse().map_err(|e| format!("--secs: {e}"))?,
            "--conns" => a.conns = v()?.parse().map_err(|e| format!("--conns: {e}"))?,
            "--url" => a.url = v()?,
            "--proxy" => a.proxy = Some(v()?.parse().map_err(|e| format!("--proxy: {e}"))?),
            // `cargo bench` passes `--bench`; nothing else is expected.
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.url.is_empty() || a.rate <= 0.0 || a.conns == 0 || a.secs <= 0.0 {
        return Err("usage: openloop --rate R --secs S --conns C --url URL [--proxy ADDR]".into());
    }
    Ok(a)
}

/// Where to connect and what to send: straight to the URL's host (origin-form) or
/// to the proxy (absolute-form).
fn target(a: &Args) -> Result<(SocketAddr, hyper::Uri, String), String> {
    let uri: hyper::Uri = a.url.parse().map_err(|e| format!("--url: {e}"))?;
    let auth = uri.authority().ok_or("--url needs a host")?.clone();
    let host = auth.as_str().to_string();
    let connect = match a.proxy {
        Some(p) => p,
        None => {
            let h = if auth.host() == "localhost" {
                "127.0.0.1"
            } else {
                auth.host()
            };
            format!("{h}:{}", auth.port_u16().unwrap_or(80))
                .parse()
                .map_err(|e| format!("--url host: {e}"))?
        }
    };
    let send: hyper::Uri = if a.proxy.is_some() {
        uri
    } else {
        uri.path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse()
            .map_err(|e| format!("--url path: {e}"))?
    };
    Ok((connect, send, host))
}

/// One keep-alive connection answering the due times it is handed; gives back the
/// latency of each (µs; `u64::MAX` for an error) and says when it is free again.
/// HTTP/1.1 by hand (a fixed request, `Content-Length` responses): a client as light
/// as wrk's, so the rate it offers is not limited by its own CPU.
async fn worker(
    id: usize,
    connect: SocketAddr,
    request: Arc<[u8]>,
    mut work: mpsc::UnboundedReceiver<Instant>,
    free: mpsc::UnboundedSender<usize>,
) -> Vec<(Instant, u64)> {
    let mut out = Vec::new();
    let mut conn: Option<TcpStream> = None;
    let mut buf = vec![0u8; 64 * 1024];
    while let Some(due) = work.recv().await {
        let mut ok = false;
        for _attempt in 0..2 {
            if conn.is_none() {
                let Ok(tcp) = TcpStream::connect(connect).await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                conn = Some(tcp);
            }
            let Some(s) = conn.as_mut() else { continue };
            if s.write_all(&request).await.is_err() {
                conn = None;
                continue;
            }
            match read_response(s, &mut buf).await {
                Some((status, keep)) => {
                    ok = (200..300).contains(&status);
                    if !keep {
                        conn = None;
                    }
                    break;
                }
                None => conn = None,
            }
        }
        out.push((
            due,
            if ok {
                due.elapsed().as_micros() as u64
            } else {
                u64::MAX
            },
        ));
        if free.send(id).is_err() {
            break;
        }
    }
    out
}

/// Reads one response with a `Content-Length` body; its status and whether the
/// connection stays open. `None` on any error or an unexpected shape.
async fn read_response(s: &mut TcpStream, buf: &mut [u8]) -> Option<(u16, bool)> {
    let mut have = 0;
    let head_end = loop {
        let n = s.read(&mut buf[have..]).await.ok()?;
        if n == 0 {
            return None;
        }
        have += n;
        if let Some(i) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if have == buf.len() {
            return None;
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let mut length = 0usize;
    let mut keep = true;
    for line in head.split("\r\n").skip(1) {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if k.eq_ignore_ascii_case("content-length") {
            length = v.trim().parse().ok()?;
        } else if k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close") {
            keep = false;
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
    }
    let mut body = have - head_end;
    while body < length {
        let n = s.read(buf).await.ok()?;
        if n == 0 {
            return None;
        }
        body += n;
    }
    Some((status, keep))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn main() {
    // `cargo test --all-targets` runs this without arguments: check the client
    // against a tiny local server instead of printing the usage.
    if std::env::args().len() <= 1 || std::env::args().nth(1).as_deref() == Some("--test") {
        self_test();
        return;
    }
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("openloop: {e}");
            std::process::exit(2);
        }
    };
    let s = run(&a).unwrap_or_else(|e| {
        eprintln!("openloop: {e}");
        std::process::exit(2);
    });
    println!(
        "sent {} ok {} errors {} rate {:.0} p50_us {} p90_us {} p99_us {} p999_us {} max_us {}",
        s.sent,
        s.ok.len(),
        s.errors,
        a.rate,
        percentile(&s.ok, 0.50),
        percentile(&s.ok, 0.90),
        percentile(&s.ok, 0.99),
        percentile(&s.ok, 0.999),
        s.ok.last().copied().unwrap_or(0),
    );
}

/// What a run saw: requests sent, sorted latencies of the answered ones (µs), errors.
struct Summary {
    sent: u64,
    ok: Vec<u64>,
    errors: usize,
}

/// 100 requests at 500/s over 4 connections to a loopback server answering every
/// request: all must come back, none late by a second.
fn self_test() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut s = stream;
                let mut buf = [0u8; 4096];
                let mut have = Vec::new();
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    have.extend_from_slice(&buf[..n]);
                    while let Some(i) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                        have.drain(..i + 4);
                        let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
                        if s.write_all(reply).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let a = Args {
        rate: 500.0,
        secs: 0.2,
        conns: 4,
        url: format!("http://127.0.0.1:{port}/x"),
        proxy: None,
    };
    let s = run(&a).unwrap_or_else(|e| panic!("self test: {e}"));
    assert_eq!((s.sent, s.ok.len(), s.errors), (100, 100, 0));
    assert!(
        percentile(&s.ok, 1.0) < 1_000_000,
        "an answer took over a second"
    );
    println!("openloop self test: 100 requests at 500/s answered");
}

fn run(a: &Args) -> Result<Summary, String> {
    let (connect, uri, host) = target(a)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let request: Arc<[u8]> =
        format!("GET {uri} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: vigie-openloop\r\n\r\n")
            .into_bytes()
            .into();
    Ok(rt.block_on(async move {
        let (free_tx, mut free_rx) = mpsc::unbounded_channel::<usize>();
        let mut work = Vec::new();
        let mut handles = Vec::new();
        for id in 0..a.conns {
            let (tx, rx) = mpsc::unbounded_channel();
            work.push(tx);
            handles.push(tokio::spawn(worker(
                id,
                connect,
                request.clone(),
                rx,
                free_tx.clone(),
            )));
            let _ = free_tx.send(id);
        }
        drop(free_tx);
        let total = (a.rate * a.secs) as u64;
        let start = Instant::now() + Duration::from_millis(100);
        let due_at = |i: u64| start + Duration::from_secs_f64(i as f64 / a.rate);
        let mut next = 0u64;
        let mut backlog: std::collections::VecDeque<Instant> = Default::default();
        // Idle connections.
        let mut pool: Vec<usize> = Vec::new();
        let mut tick = tokio::time::interval_at(start.into(), Duration::from_micros(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let deadline = due_at(total) + Duration::from_secs(5);
        while next < total || !backlog.is_empty() {
            if Instant::now() > deadline {
                break;
            }
            tokio::select! {
                _ = tick.tick() => {
                    let now = Instant::now();
                    // tokio's timer ticks about every millisecond: a request is
                    // counted from the tick that finds it due (the client's own
                    // granularity is not the server's latency); from then on, waiting
                    // for a free connection counts.
                    while next < total && due_at(next) <= now {
                        backlog.push_back(now);
                        next += 1;
                    }
                }
                Some(id) = free_rx.recv() => {
                    // A free connection: back in the pool below.
                    if let Some(due) = backlog.pop_front() {
                        let _ = work[id].send(due);
                    } else {
                        pool.push(id);
                    }
                }
            }
            // Hand what is due to the idle connections.
            while !backlog.is_empty() {
                let Some(id) = pool.pop() else { break };
                if let Some(due) = backlog.pop_front() {
                    let _ = work[id].send(due);
                }
            }
        }
        drop(work);
        let mut lat = Vec::new();
        for h in handles {
            if let Ok(v) = tokio::time::timeout(Duration::from_secs(6), h).await {
                lat.extend(v.unwrap_or_default());
            }
        }
        // `OPENLOOP_SLOW_US=N`: every answer slower than N µs on stderr, as "due
        // (ms since the start) latency (µs)", to line the slow ones up with a
        // scheduler trace.
        if let Some(slow) = std::env::var("OPENLOOP_SLOW_US")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            eprintln!("slow start {start:?}");
            let mut s: Vec<_> = lat
                .iter()
                .filter(|(_, l)| *l > slow && *l != u64::MAX)
                .collect();
            s.sort_unstable();
            for (due, l) in s {
                eprintln!(
                    "slow {:.3} {l}",
                    due.duration_since(start).as_secs_f64() * 1e3
                );
            }
        }
        let lat: Vec<u64> = lat.into_iter().map(|(_, l)| l).collect();
        let errors = lat.iter().filter(|&&l| l == u64::MAX).count();
        let mut ok: Vec<u64> = lat.into_iter().filter(|&l| l != u64::MAX).collect();
        ok.sort_unstable();
        Summary {
            sent: next,
            ok,
            errors,
        }
    }))
}
