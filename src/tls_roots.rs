//! The trust vigie's TLS clients place in servers: encrypted DNS upstreams, list
//! downloads and the directory (LDAP). One place decides it, so every client
//! trusts the same roots and reports a bad CA file the same way.
//!
//! The system's store comes first (Mozilla's list where the system has none), plus
//! an optional PEM file of extra CAs: a school board's own resolvers, its
//! TLS-inspecting proxy, its directory.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;

/// The roots: system (or Mozilla's), plus every certificate of `ca_file`. `key`
/// names the setting in messages (`dns.upstream_ca_file`).
pub fn roots(ca_file: Option<&Path>, key: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(ca) = ca_file {
        let bad = |m: String| format!("{key} {}: {m}", ca.display());
        let mut n = 0;
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))? {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
            n += 1;
        }
        if n == 0 {
            return Err(bad("no certificate in the file".into()));
        }
    }
    Ok(roots)
}

/// A client configuration trusting [`roots`], TLS 1.2 and 1.3, no client
/// certificate.
pub fn client_config(ca_file: Option<&Path>, key: &str) -> Result<rustls::ClientConfig, String> {
    let roots = roots(ca_file, key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_file_is_named_with_its_setting() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(Some(&empty), "dns.upstream_ca_file").unwrap_err();
        assert!(e.starts_with("dns.upstream_ca_file "), "{e}");
        assert!(e.contains("no certificate"), "{e}");
        let e = client_config(Some(&dir.path().join("missing.pem")), "k").unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
        let ok = client_config(None, "k").unwrap();
        assert!(ok.alpn_protocols.is_empty());
    }
}
