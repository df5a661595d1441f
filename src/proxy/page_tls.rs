//! The TLS side of the block-page address. A browser that the DNS filter's
//! block-page answer sent here opens TLS for the blocked name; this answers every
//! name (whatever the SNI) with one certificate — the operator's, or a self-signed
//! one made at first start and kept in the data directory, so a browser that
//! accepted it once is not asked again after a restart. Past the certificate
//! warning, the request is served by `forward` like the plain-HTTP block page.
//!
//! It owns the certificate and the TLS settings only; it decides nothing.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// Where the self-signed certificate and its key are kept, in the data directory.
pub const CERT_FILE: &str = "block-page.crt";
pub const KEY_FILE: &str = "block-page.key";

/// What a self-signed certificate is for: where it is kept in the data directory
/// and what it says. The block page and the admin app's HTTPS listener each have one.
pub struct SelfSigned {
    pub cert_file: &'static str,
    pub key_file: &'static str,
    /// Subject alternative names.
    pub names: &'static [&'static str],
    /// The common name a person sees when they open the certificate.
    pub common_name: &'static str,
}

/// The block page's: its name matches no site, on purpose (the warning is the
/// honest answer: vigie is not the blocked site).
pub const BLOCK_PAGE: SelfSigned = SelfSigned {
    cert_file: CERT_FILE,
    key_file: KEY_FILE,
    names: &["block-page.vigie.invalid"],
    common_name: "vigie - page de blocage / block page",
};

#[derive(Debug, thiserror::Error)]
pub enum PageTlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {why}", path.display())]
    Pem { path: PathBuf, why: String },
    #[error(
        "cannot keep a self-signed certificate in {}: {source} (give the certificate and key files in the config, or a writable data directory)",
        path.display()
    )]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the certificate and key do not fit together: {0}")]
    Tls(#[from] rustls::Error),
}

/// The acceptor of the TLS block page: `files` (certificate chain, key) when the
/// config names them, else the self-signed certificate of `data_dir` (made if
/// missing). Without either, a certificate made for this run only.
pub fn acceptor(
    files: Option<&(PathBuf, PathBuf)>,
    data_dir: Option<&Path>,
) -> Result<TlsAcceptor, PageTlsError> {
    acceptor_for(files, data_dir, &BLOCK_PAGE)
}

/// [`acceptor`] for any listener: `files` when given, else the self-signed
/// certificate `which` describes (made once, kept in `data_dir`).
pub fn acceptor_for(
    files: Option<&(PathBuf, PathBuf)>,
    data_dir: Option<&Path>,
    which: &SelfSigned,
) -> Result<TlsAcceptor, PageTlsError> {
    let (chain, key) = match (files, data_dir) {
        (Some((cert, key)), _) => (load_chain(cert)?, load_key(key)?),
        (None, Some(dir)) => self_signed_in(dir, which)?,
        (None, None) => {
            tracing::warn!(
                "no data directory: the self-signed certificate {} changes at every start",
                which.cert_file
            );
            let (cert, key) = generate(which)?;
            (
                parse_chain(cert.as_bytes(), Path::new("(generated)"))?,
                parse_key(key.as_bytes(), Path::new("(generated)"))?,
            )
        }
    };
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    // The block page speaks HTTP/1.1 only; say so, or browsers would try h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The kept self-signed certificate of `dir`, made (and kept) if missing.
fn self_signed_in(
    dir: &Path,
    which: &SelfSigned,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PageTlsError> {
    let (cert_path, key_path) = (dir.join(which.cert_file), dir.join(which.key_file));
    if cert_path.exists() && key_path.exists() {
        return Ok((load_chain(&cert_path)?, load_key(&key_path)?));
    }
    let (cert, key) = generate(which)?;
    let write = |path: &Path, text: &str, mode: u32| -> Result<(), PageTlsError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let err = |source| PageTlsError::Write {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)
    };
    // The key first: a certificate on disk always has its key beside it.
    write(&key_path, &key, 0o600)?;
    write(&cert_path, &cert, 0o644)?;
    tracing::info!("made a self-signed certificate: {}", cert_path.display());
    Ok((
        parse_chain(cert.as_bytes(), &cert_path)?,
        parse_key(key.as_bytes(), &key_path)?,
    ))
}

/// A self-signed certificate and its key, in PEM.
fn generate(which: &SelfSigned) -> Result<(String, String), PageTlsError> {
    let names: Vec<String> = which.names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names)?;
    // What a person sees when they open the certificate from the browser's warning.
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, which.common_name);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "vigie");
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn read(path: &Path) -> Result<Vec<u8>, PageTlsError> {
    std::fs::read(path).map_err(|source| PageTlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, PageTlsError> {
    parse_chain(&read(path)?, path)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PageTlsError> {
    parse_key(&read(path)?, path)
}

fn parse_chain(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, PageTlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PageTlsError::Pem {
            path: path.to_path_buf(),
            why: format!("not a PEM certificate chain: {e}"),
        })?;
    if chain.is_empty() {
        return Err(PageTlsError::Pem {
            path: path.to_path_buf(),
            why: "no certificate (expected \"-----BEGIN CERTIFICATE-----\")".into(),
        });
    }
    Ok(chain)
}

fn parse_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, PageTlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| PageTlsError::Pem {
        path: path.to_path_buf(),
        why: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        acceptor(None, Some(dir.path())).unwrap();
        let cert = std::fs::read(dir.path().join(CERT_FILE)).unwrap();
        let key_meta = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(key_meta.permissions().mode() & 0o777, 0o600);
        acceptor(None, Some(dir.path())).unwrap();
        assert_eq!(std::fs::read(dir.path().join(CERT_FILE)).unwrap(), cert);
    }

    #[test]
    fn configured_files_are_used_and_errors_name_them() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = generate(&BLOCK_PAGE).unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        acceptor(Some(&(c.clone(), k.clone())), None).unwrap();
        assert!(!dir.path().join(CERT_FILE).exists());

        let missing = dir.path().join("nope.pem");
        let e = acceptor(Some(&(missing.clone(), k.clone())), None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("nope.pem"), "{e}");
        // A key where the certificate should be.
        let e = acceptor(Some(&(k.clone(), k)), None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("k.pem") && e.contains("no certificate"), "{e}");
    }
}
