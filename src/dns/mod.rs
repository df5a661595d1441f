//! The DNS filter: answers the school's DNS on UDP and TCP, deciding every query
//! with `policy::decide` for the client's profile, forwarding allowed ones to the
//! upstream resolvers through a TTL-honouring cache, and answering blocked ones
//! itself (NXDOMAIN, null address or block-page address, with an Extended DNS Error
//! naming the category).
//!
//! It owns the DNS wire edge (`wire`), the transports (`server`), the per-query
//! pipeline (`handler`), the answer cache (`cache`), the upstream pool
//! (`upstream`) and the lookups vigie makes for itself (`resolve`: the proxy's
//! origins). It does not own policy state (it reads the current
//! `snapshot::Snapshot` per query) nor the audit store (it only queues events).
//! Only clients inside `client_networks` get answers: never an open resolver.

pub mod cache;
pub mod fast;
pub mod forward;
pub mod handler;
pub mod resolve;
pub mod server;
pub mod upstream;
pub mod wire;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

pub use handler::{Handler, HandlerOptions, Prepared, Transport};
pub use resolve::ResolveError;
pub use server::Listeners;
pub use upstream::{UpstreamError, UpstreamSpec, Upstreams};

use crate::audit::AuditSink;
use crate::identity::IdentityTable;
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
pub fn upstream_specs(
    cli: &[String],
    snap: &Snapshot,
    listen: SocketAddr,
) -> Result<Vec<UpstreamSpec>, UpstreamError> {
    let given: &[String] = if cli.is_empty() {
        &snap.config.dns_upstreams
    } else {
        cli
    };
    if given.is_empty() {
        let found = upstream::system_upstreams(&[listen]);
        if found.is_empty() {
            return Err(UpstreamError::None);
        }
        return Ok(found);
    }
    given.iter().map(|s| upstream::parse_spec(s)).collect()
}

/// The `[dns]` settings that differ between `old` and `new` but that the running
/// filter reads only at start (the upstream pool, the rate limiter and the cache
/// are built once): a reload accepts them, and says they wait for a restart.
pub fn restart_only_changes(
    old: &crate::config::Config,
    new: &crate::config::Config,
) -> Vec<&'static str> {
    let (a, b) = (&old.dns, &new.dns);
    [
        ("dns.upstreams", old.dns_upstreams != new.dns_upstreams),
        (
            "dns.upstream_timeout_ms",
            a.upstream_timeout != b.upstream_timeout,
        ),
        (
            "dns.upstream_ca_file",
            a.upstream_ca_file != b.upstream_ca_file,
        ),
        ("dns.rate_limit_qps", a.rate_limit_qps != b.rate_limit_qps),
        (
            "dns.rate_limit_burst",
            a.rate_limit_burst != b.rate_limit_burst,
        ),
        ("dns.cache_size", a.cache_size != b.cache_size),
        ("dns.cache_max_ttl", a.cache_max_ttl != b.cache_max_ttl),
        (
            "dns.cache_negative_max_ttl",
            a.cache_negative_max_ttl != b.cache_negative_max_ttl,
        ),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

/// Handler options from the snapshot's `[dns]` settings and the listen address.
pub fn handler_options(snap: &Snapshot, listen: SocketAddr) -> HandlerOptions {
    let dns = &snap.config.dns;
    let rate_limit = match (
        NonZeroU32::new(dns.rate_limit_qps),
        NonZeroU32::new(dns.rate_limit_burst),
    ) {
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
/// `identities` is shared with the services that log people in (proxy, portal).
pub fn setup(
    store: Arc<SnapshotStore>,
    identities: Arc<IdentityTable>,
    listen: SocketAddr,
    cli_upstreams: &[String],
    audit: AuditSink,
) -> Result<(Arc<Handler>, Listeners), DnsError> {
    let snap = store.load();
    let specs = upstream_specs(cli_upstreams, &snap, listen)?;
    let upstreams = Upstreams::new(
        specs,
        snap.config.dns.upstream_timeout,
        snap.config.dns.upstream_ca_file.as_deref(),
    )?;
    let options = handler_options(&snap, listen);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let listeners = Listeners::bind(listen, workers).map_err(|source| DnsError::Bind {
        addr: listen,
        source,
    })?;
    let handler = Arc::new(Handler::new(store, upstreams, identities, audit, options));
    // The cache size at scrape time, not as of the last upkeep (up to 10 s old, and
    // 0 for the first 10 s after a start whatever the cache held).
    let weak = Arc::downgrade(&handler);
    crate::metrics::on_scrape(move || weak.upgrade().map(|h| h.export_cache_size()).is_some());
    Ok((handler, listeners))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::path::Path;

    fn snap(dns: &str) -> Result<Snapshot, config::ConfigErrors> {
        let text = format!("[profiles.invites]\n[dns]\n{dns}\n");
        let mut cfg = config::parse(&text, "t.toml", Path::new("/"))?;
        cfg.sources.clear();
        Ok(Snapshot::build(cfg, None).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn dns_settings_resolve_with_defaults_and_errors() {
        let s = snap("").unwrap();
        let d = &s.config.dns;
        assert_eq!(
            (d.rate_limit_qps, d.rate_limit_burst, d.blocked_ttl),
            (200, 400, 60)
        );
        assert!(!d.log_allowed);
        let o = handler_options(&s, "10.0.0.1:53".parse().unwrap());
        assert_eq!(o.default_block_page_v4, Some("10.0.0.1".parse().unwrap()));
        assert!(o.rate_limit.is_some());
        let o = handler_options(&s, "0.0.0.0:53".parse().unwrap());
        assert_eq!(o.default_block_page_v4, None);

        let s = snap("rate_limit_qps = 0\nblock_page_ipv4 = \"192.0.2.1\"\nupstreams = [\"tcp://192.0.2.53\"]").unwrap();
        assert!(
            handler_options(&s, "127.0.0.1:53".parse().unwrap())
                .rate_limit
                .is_none()
        );
        assert_eq!(
            s.config.dns.block_page_ipv4,
            Some("192.0.2.1".parse().unwrap())
        );
        let specs = upstream_specs(&[], &s, "127.0.0.1:53".parse().unwrap()).unwrap();
        assert_eq!(specs[0].protocol, upstream::Protocol::Tcp);
        // --upstream wins over the config.
        let specs = upstream_specs(
            &["192.0.2.9:5353".into()],
            &s,
            "127.0.0.1:53".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(specs[0].addr, "192.0.2.9:5353".parse().unwrap());

        let e = snap("block_page_ipv4 = \"not-an-ip\"")
            .err()
            .expect("invalid address rejected");
        assert!(
            e.to_string().contains("t.toml:3:19:") && e.to_string().contains("block_page_ipv4"),
            "{e}"
        );
        let e = snap("cache_sise = 10").err().expect("unknown key rejected");
        assert!(e.to_string().contains("cache_size"), "{e}");
    }

    #[test]
    fn settings_read_only_at_start_are_named_when_a_reload_changes_them() {
        let before = snap("").unwrap();
        let after = snap(
            "upstreams = [\"192.0.2.53\"]\nrate_limit_qps = 50\ncache_size = 10\nblocked_ttl = 5",
        )
        .unwrap();
        assert_eq!(
            restart_only_changes(&before.config, &after.config),
            vec!["dns.upstreams", "dns.rate_limit_qps", "dns.cache_size"],
            "blocked_ttl is read per query: it applies at once"
        );
        assert!(restart_only_changes(&before.config, &before.config).is_empty());
    }
}
