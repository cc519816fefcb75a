//! TLS for browserver's clients of other servers — the Rust client and `browserver expose`
//! reaching a proxy over `https://`/`wss://`, and the proxy's egress to `https://` targets:
//! one place that builds a rustls client configuration from a root set plus extra
//! certificate authorities read from PEM.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The cryptography under every TLS connection browserver makes or accepts: rustls's `ring`
/// provider (TLS 1.2 and 1.3, the usual suites). Chosen because it builds with a plain C
/// compiler; rustls 0.23.48 marks it deprecated because it lacks post-quantum key exchange,
/// which the `aws-lc-rs` provider has (it needs more of a toolchain to build).
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Which certificate authorities are trusted besides the extra ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Roots {
    /// The operating system's store (what a user's browser or curl trusts).
    System,
    /// Mozilla's set, compiled in (the same on every machine; what egress uses).
    WebPki,
    /// None: only the extra authorities.
    None,
}

/// The certificates in a PEM file (one or more `CERTIFICATE` blocks).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE in it", path.display()));
    }
    Ok(certs)
}

/// A client configuration (ring provider, TLS 1.2 and 1.3, ALPN `http/1.1`) trusting `roots`
/// and `extra`.
pub fn client_config(
    roots: Roots,
    extra: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut store = rustls::RootCertStore::empty();
    match roots {
        Roots::System => {
            // Unreadable entries are skipped, as browsers do; an empty store only means
            // that only `extra` is trusted.
            let found = rustls_native_certs::load_native_certs();
            let _ = store.add_parsable_certificates(found.certs);
        }
        Roots::WebPki => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Roots::None => {}
    }
    for cert in extra {
        store
            .add(cert.clone())
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webpki_roots_are_compiled_in_and_extra_authorities_are_added() {
        assert!(client_config(Roots::WebPki, &[]).is_ok());
        assert!(client_config(Roots::None, &[CertificateDer::from(vec![1, 2, 3])]).is_err());
    }

    #[test]
    fn a_file_without_certificates_is_refused_naming_it() {
        let path = std::env::temp_dir().join(format!("browserver-nocert-{}", std::process::id()));
        std::fs::write(&path, "hello").expect("write");
        let err = read_certificates(&path).expect_err("no certificate");
        assert!(err.contains("browserver-nocert"), "{err}");
        let _ = std::fs::remove_file(&path);
    }
}
