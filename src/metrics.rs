//! Every Prometheus metric vigie exports, defined in one place so names stay
//! consistent and documented. Services increment these; `/metrics` renders them.

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The process-wide registry rendered by `/metrics`.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<T: prometheus::core::Collector + Clone + 'static>(m: T) -> T {
    // Registering the same name twice is a programming error caught by tests; at
    // runtime a failure only means the metric is not exported.
    if let Err(e) = REGISTRY.register(Box::new(m.clone())) {
        tracing::error!("metric registration failed: {e}");
    }
    m
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    // Names and labels are literals of this module, valid by construction.
    register(
        IntCounterVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}")),
    )
}

/// Snapshot reloads by result (`accepted`, `rejected`).
pub static RELOAD_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "vigie_reload_total",
        "Snapshot reloads by result.",
        &["result"],
    )
});

/// Lines rejected while loading lists, by source path.
pub static LIST_BAD_LINES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "vigie_list_bad_lines_total",
        "List lines rejected while loading, by source.",
        &["source"],
    )
});

/// Entries in the current snapshot's lists, by kind (`domain`, `url`, `ip`).
pub static LIST_ENTRIES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "vigie_list_entries",
                "Entries loaded in the current lists, by kind.",
            ),
            &["kind"],
        )
        .unwrap_or_else(|e| panic!("vigie_list_entries: {e}")),
    )
});

/// When the updated list set in force was made (`vigie lists update`), Unix
/// seconds; 0 while the configured (shipped) lists are used. Alert on its age.
pub static LISTS_UPDATED_TIMESTAMP: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "vigie_lists_updated_timestamp_seconds",
            "Creation time of the updated list set in force (0: shipped lists).",
        )
        .unwrap_or_else(|e| panic!("vigie_lists_updated_timestamp_seconds: {e}")),
    )
});

/// Version number of the snapshot in service.
pub static SNAPSHOT_VERSION: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "vigie_snapshot_version",
            "Version of the snapshot in service.",
        )
        .unwrap_or_else(|e| panic!("vigie_snapshot_version: {e}")),
    )
});

/// Decisions by service, verdict and category.
pub static DECISIONS_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "vigie_decisions_total",
        "Decisions by service, verdict and category.",
        &["service", "verdict", "category"],
    )
});

/// Time to build a snapshot (config + lists).
pub static SNAPSHOT_BUILD_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new("vigie_snapshot_build_seconds", "Time to build a snapshot.")
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .unwrap_or_else(|e| panic!("vigie_snapshot_build_seconds: {e}")),
    )
});

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .unwrap_or_else(|e| panic!("metric {name}: {e}")),
    )
}

fn histogram_vec(
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> prometheus::HistogramVec {
    register(
        prometheus::HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .unwrap_or_else(|e| panic!("metric {name}: {e}")),
    )
}

// ---- DNS filter (`dns/`) ----

/// DNS queries received, by transport (`udp`, `tcp`).
pub static DNS_QUERIES_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "vigie_dns_queries_total",
        "DNS queries received, by transport.",
        &["transport"],
    )
});

/// DNS responses sent, by response code (`noerror`, `nxdomain`, `servfail`, `refused`, `formerr`, `notimp`).
pub static DNS_RESPONSES_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "vigie_dns_responses_total",
        "DNS responses sent, by response code.",
        &["rcode"],
    )
});

/// Time from receiving a query to having its answer, by how it was answered
/// (`blocked`, `cache`, `upstream`, `local` for errors and refusals).
pub static DNS_REQUEST_SECONDS: LazyLock<prometheus::HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "vigie_dns_request_duration_seconds",
        "Time to answer a DNS query, by how it was answered.",
        &["path"],
        vec![
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            0.25, 0.5, 1.0, 2.5,
        ],
    )
});

/// Packets that are not a well-formed DNS query, by what was done (`formerr`, `dropped`).
pub static DNS_MALFORMED_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "vigie_dns_malformed_total",
        "Malformed DNS packets, by action taken.",
        &["action"],
    )
});

/// Queries refused, by reason (`client_network`: the source is not in `client_networks`;
/// `zone_transfer`; `class`; `rate_limit` on TCP).
pub static DNS_REFUSED_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "vigie_dns_refused_total",
        "DNS queries refused, by reason.",
        &["reason"],
    )
});

/// Queries dropped or refused because their client exceeded its rate limit.
pub static DNS_RATE_LIMITED_TOTAL: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    register(
        prometheus::IntCounter::new(
            "vigie_dns_rate_limited_total",
            "DNS queries over a client's rate limit (dropped on UDP, refused on TCP).",
        )
        .unwrap_or_else(|e| panic!("vigie_dns_rate_limited_total: {e}")),
    )
});

/// TCP connections closed at accept, before anything is read, by reason
/// (`client_network`: the source is not in `client_networks`; `client_limit`: the
/// client already holds its share of the connections).
pub static DNS_TCP_REFUSED_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "vigie_dns_tcp_refused_total",
        "DNS TCP connections closed at accept, by reason.",
        &["reason"],
    )
});

/// UDP queries dropped because too many queries were already waiting on the
/// upstreams (the client retries).
pub static DNS_UPSTREAM_BACKLOG_DROPPED_TOTAL: LazyLock<prometheus::IntCounter> =
    LazyLock::new(|| {
        register(
            prometheus::IntCounter::new(
                "vigie_dns_upstream_backlog_dropped_total",
                "DNS queries dropped because too many were waiting on the upstreams.",
            )
            .unwrap_or_else(|e| panic!("vigie_dns_upstream_backlog_dropped_total: {e}")),
        )
    });

/// Answers cut to a header and question with TC set because they did not fit in UDP.
pub static DNS_TRUNCATED_TOTAL: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    register(
        prometheus::IntCounter::new(
            "vigie_dns_truncated_total",
            "DNS answers truncated (TC) to fit the client's UDP size.",
        )
        .unwrap_or_else(|e| panic!("vigie_dns_truncated_total: {e}")),
    )
});

/// Answer cache lookups, by result (`hit`, `miss`).
pub static DNS_CACHE_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "vigie_dns_cache_total",
        "DNS answer cache lookups, by result.",
        &["result"],
    )
});

/// Answers held in the cache.
pub static DNS_CACHE_ENTRIES: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new("vigie_dns_cache_entries", "Answers held in the DNS cache.")
            .unwrap_or_else(|e| panic!("vigie_dns_cache_entries: {e}")),
    )
});

/// Upstream exchanges, by result (`ok`, `nxdomain`, `nodata`, `timeout`, `error`).
pub static DNS_UPSTREAM_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "vigie_dns_upstream_total",
        "Queries forwarded upstream, by result (ok, nxdomain, nodata, error, timeout; mismatched: a datagram with a pending query's id but from another address or for another question, e.g. a spoofing attempt).",
        &["result"],
    )
});

/// Time the upstreams took to answer (or fail).
pub static DNS_UPSTREAM_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "vigie_dns_upstream_duration_seconds",
        "Time the upstream resolvers took to answer.",
        vec![
            0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ],
    )
});

/// Allowed names whose upstream answer went through a blocked name (CNAME cloaking).
pub static DNS_CNAME_BLOCKED_TOTAL: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    register(
        prometheus::IntCounter::new(
            "vigie_dns_cname_blocked_total",
            "Answers blocked because their CNAME chain reached a blocked name.",
        )
        .unwrap_or_else(|e| panic!("vigie_dns_cname_blocked_total: {e}")),
    )
});

// ---- audit (`audit/`) ----

/// Audit events accepted onto the queue.
pub static AUDIT_EVENTS_TOTAL: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    register(
        prometheus::IntCounter::new(
            "vigie_audit_events_total",
            "Audit events queued for writing.",
        )
        .unwrap_or_else(|e| panic!("vigie_audit_events_total: {e}")),
    )
});

/// Audit events lost because the queue was full (the hot path never waits for the disk).
pub static AUDIT_DROPPED_TOTAL: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    register(
        prometheus::IntCounter::new(
            "vigie_audit_dropped_total",
            "Audit events dropped because the queue was full.",
        )
        .unwrap_or_else(|e| panic!("vigie_audit_dropped_total: {e}")),
    )
});

/// Audit events deleted by retention.
pub static AUDIT_PURGED_TOTAL: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    register(
        prometheus::IntCounter::new(
            "vigie_audit_purged_total",
            "Audit events deleted by retention.",
        )
        .unwrap_or_else(|e| panic!("vigie_audit_purged_total: {e}")),
    )
});

/// Audit events the store never got (it failed for longer than the writer could
/// keep them, or was still failing at shutdown; each is spilled to the log), and
/// events the JSON-lines log could not take.
pub static AUDIT_WRITE_ERRORS_TOTAL: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    register(
        prometheus::IntCounter::new(
            "vigie_audit_write_errors_total",
            "Audit events that could not be written.",
        )
        .unwrap_or_else(|e| panic!("vigie_audit_write_errors_total: {e}")),
    )
});

// ---- forward proxy (`proxy/`) ----

/// Proxy requests by door (`http`, `connect`, `transparent_http`, `transparent_tls`)
/// and outcome (`allow`, `block`, `safe_search`, `refused`).
pub static PROXY_REQUESTS_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "vigie_proxy_requests_total",
        "Proxy requests by kind and verdict.",
        &["kind", "verdict"],
    )
});

/// Requests the proxy refused itself, by reason (`client_network`, `auth`, `auth_throttled`,
/// `internal`, `own`, `port`, `not_tls`, `bad_request`, `dns`, `upstream`,
/// `upstream_timeout`, `no_original_dst`, `not_blocked`).
pub static PROXY_REFUSED_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "vigie_proxy_refused_total",
        "Proxy requests refused by the proxy itself, by reason.",
        &["reason"],
    )
});

/// Tunnels refused because they did not carry TLS or tried to hide their name, by
/// protocol seen (`ssh`, `openvpn`, `bittorrent`, `http`, `unknown`, `silent`,
/// `malformed_tls`, `sni_mismatch`).
pub static PROXY_CIRCUMVENTION_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "vigie_proxy_circumvention_total",
        "Tunnels refused as circumvention, by protocol seen.",
        &["protocol"],
    )
});

/// Connections open now, by kind (`client`: client connections; `tunnel`: spliced
/// CONNECT/WebSocket/transparent TLS tunnels).
pub static PROXY_ACTIVE_CONNECTIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "vigie_proxy_active_connections",
                "Proxy connections open now, by kind.",
            ),
            &["kind"],
        )
        .unwrap_or_else(|e| panic!("vigie_proxy_active_connections: {e}")),
    )
});

/// Time to open a TCP connection to an origin (resolution excluded), by result.
pub static PROXY_UPSTREAM_CONNECT_SECONDS: LazyLock<prometheus::HistogramVec> =
    LazyLock::new(|| {
        histogram_vec(
            "vigie_proxy_upstream_connect_seconds",
            "Time to connect to an origin, by result.",
            &["result"],
            vec![
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0,
            ],
        )
    });

/// Time from a request's arrival to the origin's response head, by kind.
pub static PROXY_RESPONSE_SECONDS: LazyLock<prometheus::HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "vigie_proxy_response_seconds",
        "Time from request to the origin's response head, by kind.",
        &["kind"],
        vec![
            0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            5.0, 10.0,
        ],
    )
});

/// Body bytes of forwarded HTTP requests (`up`) and responses (`down`).
pub static PROXY_HTTP_BYTES_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "vigie_proxy_http_bytes_total",
        "HTTP body bytes through the proxy, by direction.",
        &["direction"],
    )
});

/// Bytes through tunnels (CONNECT, WebSocket, transparent TLS), by direction.
pub static PROXY_TUNNEL_BYTES_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "vigie_proxy_tunnel_bytes_total",
        "Bytes through proxy tunnels, by direction.",
        &["direction"],
    )
});

/// Refreshes a gauge whose value lives elsewhere (a cache's size); returns false once
/// what it reads is gone, and is then forgotten.
type ScrapeHook = Box<dyn Fn() -> bool + Send + Sync>;

static ON_SCRAPE: std::sync::Mutex<Vec<ScrapeHook>> = std::sync::Mutex::new(Vec::new());

/// Runs `hook` before every [`render`], so a gauge read at scrape time is exact
/// rather than as old as the last periodic upkeep.
pub fn on_scrape(hook: impl Fn() -> bool + Send + Sync + 'static) {
    ON_SCRAPE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(Box::new(hook));
}

/// Renders every registered metric in the Prometheus text format.
pub fn render() -> String {
    use prometheus::Encoder;
    ON_SCRAPE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|hook| hook());
    let mut out = Vec::new();
    let enc = prometheus::TextEncoder::new();
    if let Err(e) = enc.encode(&REGISTRY.gather(), &mut out) {
        tracing::error!("metrics encoding failed: {e}");
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Forces registration of every metric so `/metrics` lists them from the start.
pub fn init() {
    LazyLock::force(&RELOAD_TOTAL);
    LazyLock::force(&LIST_BAD_LINES);
    LazyLock::force(&LIST_ENTRIES);
    LazyLock::force(&SNAPSHOT_VERSION);
    LazyLock::force(&LISTS_UPDATED_TIMESTAMP);
    LazyLock::force(&DECISIONS_TOTAL);
    LazyLock::force(&SNAPSHOT_BUILD_SECONDS);
    LazyLock::force(&DNS_QUERIES_TOTAL);
    LazyLock::force(&DNS_RESPONSES_TOTAL);
    LazyLock::force(&DNS_REQUEST_SECONDS);
    LazyLock::force(&DNS_MALFORMED_TOTAL);
    LazyLock::force(&DNS_REFUSED_TOTAL);
    LazyLock::force(&DNS_RATE_LIMITED_TOTAL);
    LazyLock::force(&DNS_TCP_REFUSED_TOTAL);
    LazyLock::force(&DNS_UPSTREAM_BACKLOG_DROPPED_TOTAL);
    LazyLock::force(&DNS_TRUNCATED_TOTAL);
    LazyLock::force(&DNS_CACHE_TOTAL);
    LazyLock::force(&DNS_CACHE_ENTRIES);
    LazyLock::force(&DNS_UPSTREAM_TOTAL);
    LazyLock::force(&DNS_UPSTREAM_SECONDS);
    LazyLock::force(&DNS_CNAME_BLOCKED_TOTAL);
    LazyLock::force(&AUDIT_EVENTS_TOTAL);
    LazyLock::force(&AUDIT_DROPPED_TOTAL);
    LazyLock::force(&AUDIT_WRITE_ERRORS_TOTAL);
    LazyLock::force(&AUDIT_PURGED_TOTAL);
    LazyLock::force(&PROXY_REQUESTS_TOTAL);
    LazyLock::force(&PROXY_REFUSED_TOTAL);
    LazyLock::force(&PROXY_CIRCUMVENTION_TOTAL);
    LazyLock::force(&PROXY_ACTIVE_CONNECTIONS);
    LazyLock::force(&PROXY_UPSTREAM_CONNECT_SECONDS);
    LazyLock::force(&PROXY_RESPONSE_SECONDS);
    LazyLock::force(&PROXY_HTTP_BYTES_TOTAL);
    LazyLock::force(&PROXY_TUNNEL_BYTES_TOTAL);
}

#[cfg(test)]
mod tests {
    #[test]
    fn all_metrics_register_and_render() {
        super::init();
        super::RELOAD_TOTAL.with_label_values(&["accepted"]).inc();
        let text = super::render();
        assert!(
            text.contains("vigie_reload_total{result=\"accepted\"} 1"),
            "{text}"
        );
        assert!(text.contains("# TYPE vigie_snapshot_build_seconds histogram"));
    }

    #[test]
    fn scrape_hooks_run_at_each_render_until_they_say_they_are_done() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        // Says it is done at its second run (as a hook does once its DNS handler
        // is dropped): it runs twice, then never again.
        super::on_scrape(move || r.fetch_add(1, Ordering::SeqCst) < 1);
        for _ in 0..4 {
            super::render();
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}
