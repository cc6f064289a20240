//! TLS for broker connections: a rustls client configuration on the `ring` provider, built
//! from the PEM files `[broker.tls]` names.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// A client configuration: the CA file's certificates (or the system's roots) as trust
/// anchors, and the client certificate when one is configured.
pub fn client_config(tls: &TlsConfig) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let mut added = 0;
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("cannot read the CA file {}", path.display()))?
            {
                let cert = cert.with_context(|| {
                    format!(
                        "{} holds something that is not a PEM certificate",
                        path.display()
                    )
                })?;
                roots
                    .add(cert)
                    .with_context(|| format!("{}: unusable CA certificate", path.display()))?;
                added += 1;
            }
            if added == 0 {
                bail!("{} holds no PEM certificate", path.display());
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs().certs;
            if found.is_empty() {
                bail!("no system CA certificates found: set [broker.tls] ca_file");
            }
            for cert in found {
                // A few unusable system roots must not prevent a connection.
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("cannot read the certificate {}", cert.display()))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("{}: not a PEM certificate chain", cert.display()))?;
            if chain.is_empty() {
                bail!("{} holds no PEM certificate", cert.display());
            }
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("{}: no PEM private key", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("the client certificate and key do not fit together")?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
