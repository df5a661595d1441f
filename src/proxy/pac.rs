//! Proxy auto-configuration (`/proxy.pac`, `/wpad.dat`) built from the config:
//! plain host names, `.local` names and the school's internal networks go direct,
//! everything else through vigie. The admin listener mounts [`router`]; the proxy
//! also answers these paths itself when asked in origin form.

use std::sync::Arc;

use crate::snapshot::{Snapshot, SnapshotStore};

/// The PAC file for clients of `snap`, pointing them at `proxy` (`host:port` as
/// clients reach it).
pub fn render(snap: &Snapshot, proxy: &str) -> String {
    let mut direct = String::new();
    for net in &snap.config.proxy.internal_networks {
        // isInNet() only takes IPv4 masks; IPv6 ranges go through the proxy, whose
        // SSRF guard refuses them anyway.
        if let ipnet::IpNet::V4(v4) = net {
            direct.push_str(&format!(
                "  if (isIp && isInNet(host, \"{}\", \"{}\")) return \"DIRECT\";\n",
                v4.network(),
                v4.netmask()
            ));
        }
    }
    format!(
        "// vigie proxy auto-configuration, built from {origin}\n\
function FindProxyForURL(url, host) {{\n\
  host = host.toLowerCase();\n\
  if (isPlainHostName(host) || dnsDomainIs(host, \".local\") || host == \"localhost\") return \"DIRECT\";\n\
  var isIp = /^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+$/.test(host);\n\
{direct}  return \"PROXY {proxy}\";\n\
}}\n",
        origin = snap.config.origin.replace(['\n', '\r'], " "),
    )
}

/// Routes `/proxy.pac` and `/wpad.dat` for the admin listener. `proxy` is the
/// address clients use to reach the proxy; when it is unspecified (0.0.0.0), the
/// host the client used to reach the admin listener is used instead.
pub fn router(store: Arc<SnapshotStore>, proxy: std::net::SocketAddr) -> axum::Router {
    use axum::http::{HeaderMap, header};
    use axum::routing::get;
    let serve = move |headers: HeaderMap| {
        let store = store.clone();
        async move {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.rsplit_once(':').map(|(h, _)| h).unwrap_or(h).to_string());
            let target = pac_target(proxy, host.as_deref());
            (
                [(header::CONTENT_TYPE, "application/x-ns-proxy-autoconfig")],
                render(&store.load(), &target),
            )
        }
    };
    axum::Router::new()
        .route("/proxy.pac", get(serve.clone()))
        .route("/wpad.dat", get(serve))
}

/// `host:port` for the PAC: the listener's address unless it is a wildcard.
pub fn pac_target(proxy: std::net::SocketAddr, request_host: Option<&str>) -> String {
    if proxy.ip().is_unspecified()
        && let Some(h) = request_host.filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
        })
    {
        return format!("{h}:{}", proxy.port());
    }
    proxy.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pac_names_the_proxy_and_direct_ranges() {
        let cfg = crate::config::parse(
            "[profiles.invites]\n[proxy]\ninternal_networks = [\"10.20.0.0/16\", \"fd00::/8\"]\n",
            "t.toml",
            std::path::Path::new("/"),
        )
        .unwrap();
        let snap = Snapshot::build(cfg, None).unwrap();
        let pac = render(&snap, "10.0.0.1:3128");
        assert!(pac.contains("return \"PROXY 10.0.0.1:3128\";"), "{pac}");
        assert!(
            pac.contains("isInNet(host, \"10.20.0.0\", \"255.255.0.0\")"),
            "{pac}"
        );
        assert!(!pac.contains("fd00"));
        assert_eq!(
            pac_target("0.0.0.0:3128".parse().unwrap(), Some("gw.school")),
            "gw.school:3128"
        );
        assert_eq!(
            pac_target("0.0.0.0:3128".parse().unwrap(), Some("evil\"host")),
            "0.0.0.0:3128"
        );
        assert_eq!(
            pac_target("10.0.0.1:3128".parse().unwrap(), Some("x")),
            "10.0.0.1:3128"
        );
    }
}
