//! The DNS filter: answers the school's DNS on UDP and TCP, deciding every query
//! with `policy::decide` for the client's profile, forwarding allowed ones to the
//! upstream resolvers through a TTL-honouring cache, and answering blocked ones
//! itself (NXDOMAIN, null address or block-page address, with an Extended DNS Error
//! naming the category).
//!
//! It owns the DNS wire edge (`wire`), the transports (`server`), the per-query
//! pipeline (`handler`), the answer cache (`cache`) and the upstream pool
//! (`upstream`). It does not own policy state (it reads the current
//! `snapshot::Snapshot` per query) nor the audit store (it only queues events).
//! Only clients inside `client_networks` get answers: never an open resolver.

pub mod cache;
pub mod handler;
pub mod server;
pub mod upstream;
pub mod wire;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

pub use handler::{Handler, HandlerOptions, Prepared, Transport};
pub use server::Listeners;
pub use upstream::{UpstreamError, UpstreamSpec, Upstreams};

use crate::audit::AuditSink;
use crate::snapshot::{Snapshot, SnapshotStore};

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("cannot listen for DNS on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The upstreams to use: `--upstream` flags first, then `[dns] upstreams`, then the
/// system's resolvers (minus vigie itself).
pub fn upstream_specs(cli: &[String], snap: &Snapshot, listen: SocketAddr) -> Result<Vec<UpstreamSpec>, UpstreamError> {
    let given: &[String] = if cli.is_empty() { &snap.config.dns_upstreams } else { cli };
    if given.is_empty() {
        let found = upstream::system_upstreams(&[listen]);
        if found.is_empty() {
            return Err(UpstreamError::None);
        }
        return Ok(found);
    }
    given.iter().map(|s| upstream::parse_spec(s)).collect()
}

/// Handler options from the snapshot's `[dns]` settings and the listen address.
pub fn handler_options(snap: &Snapshot, listen: SocketAddr) -> HandlerOptions {
    let dns = &snap.config.dns;
    let rate_limit = match (NonZeroU32::new(dns.rate_limit_qps), NonZeroU32::new(dns.rate_limit_burst)) {
        (Some(q), Some(b)) => Some((q, b)),
        (Some(q), None) => Some((q, q)),
        _ => None,
    };
    // With no block-page address configured, the block page is vigie itself, at the
    // address clients already reach it on.
    let (v4, v6) = match listen.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => (Some(ip), None),
        IpAddr::V6(ip) if !ip.is_unspecified() => (None, Some(ip)),
        _ => (None, None),
    };
    HandlerOptions {
        default_block_page_v4: v4,
        default_block_page_v6: v6,
        rate_limit,
        cache_size: dns.cache_size,
        cache_max_ttl: dns.cache_max_ttl,
        cache_negative_max_ttl: dns.cache_negative_max_ttl,
    }
}

/// Builds the handler and binds the listeners (one UDP socket per worker thread).
pub fn setup(store: Arc<SnapshotStore>, listen: SocketAddr, cli_upstreams: &[String], audit: AuditSink) -> Result<(Arc<Handler>, Listeners), DnsError> {
    let snap = store.load();
    let specs = upstream_specs(cli_upstreams, &snap, listen)?;
    let upstreams = Upstreams::new(specs, snap.config.dns.upstream_timeout)?;
    let options = handler_options(&snap, listen);
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let listeners = Listeners::bind(listen, workers).map_err(|source| DnsError::Bind { addr: listen, source })?;
    let handler = Arc::new(Handler::new(store, upstreams, audit, options));
    Ok((handler, listeners))
}
