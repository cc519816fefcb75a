//! HTTPS and WSS on the listener: rustls, with a certificate that is reloaded in place
//! (SIGHUP in the binary) — new handshakes get the new certificate, open connections and
//! sessions are untouched.
//!
//! ```no_run
//! # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
//! use browserver_server::{Config, Mode, run, tls::Certificate};
//!
//! let certificate = Certificate::load("fullchain.pem".as_ref(), "privkey.pem".as_ref())?;
//! let config = Config { tls: Some(certificate.clone()), ..Config::default() };
//! // Later, when the files were renewed (the binary does this on SIGHUP):
//! certificate.reload()?;
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
//! run(listener, config, Mode::Proxy, std::future::pending()).await?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds no PEM of the expected kind.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The key does not suit rustls, or does not match the certificate.
    #[error("{0}")]
    Key(String),
}

/// The server's certificate chain and key, from two PEM files, replaceable while serving.
pub struct Certificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Loads the chain (`cert`, leaf first) and its private key (`key`; PKCS#8, PKCS#1 or
    /// SEC1 PEM).
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Certificate>, TlsError> {
        let provider = browserver_transport_http::tls::provider();
        let current = certified_key(&provider, cert, key)?;
        Ok(Arc::new(Certificate {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            provider,
            current: RwLock::new(current),
        }))
    }

    /// Reads both files again. On an error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let next = certified_key(&self.provider, &self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    /// A TLS acceptor that always presents the current certificate (HTTP/1.1 by ALPN).
    pub fn acceptor(self: &Arc<Self>) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Key(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn certified_key(
    provider: &CryptoProvider,
    cert: &Path,
    key: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let file_error = |path: &Path, why: String| TlsError::File {
        path: path.to_path_buf(),
        why,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no CERTIFICATE in it".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e.to_string()))?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::Key(format!("{}: {e}", key.display())))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        TlsError::Key(format!(
            "{} does not match {}: {e}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok(Arc::new(certified))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.cert.pem()).expect("write");
        std::fs::write(&k, cert.signing_key.serialize_pem()).expect("write");
        (c, k)
    }

    fn leaf(c: &Certificate) -> Vec<u8> {
        c.current.read().expect("lock").cert[0].to_vec()
    }

    #[test]
    fn a_reload_swaps_the_certificate_and_a_bad_one_keeps_the_old() {
        let dir = std::env::temp_dir().join(format!("browserver-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = write_pair(&dir, "one.test");
        let c = Certificate::load(&cert, &key).expect("load");
        let first = leaf(&c);
        let (cert2, key2) = write_pair(&dir, "two.test");
        std::fs::copy(&cert2, &cert).expect("copy");
        std::fs::copy(&key2, &key).expect("copy");
        c.reload().expect("reload");
        let second = leaf(&c);
        assert_ne!(first, second);
        std::fs::write(&key, "not a key").expect("write");
        assert!(c.reload().is_err());
        assert_eq!(leaf(&c), second, "the certificate in use stays");
        // A key that belongs to another certificate is refused.
        std::fs::copy(&key2, &key).expect("copy");
        let (cert3, _) = write_pair(&dir, "three.test");
        std::fs::copy(&cert3, &cert).expect("copy");
        let err = c.reload().expect_err("mismatch");
        assert!(err.to_string().contains("does not match"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_or_empty_files_are_named_in_the_error() {
        let err = Certificate::load(Path::new("/nonexistent/c.pem"), Path::new("/x.key"))
            .expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/c.pem"), "{err}");
    }
}
