//! HTTPS for `cplane serve`, with optional client certificates for cluster agents (mTLS).
//!
//! Reference doc 001 has agents authenticate with mutual TLS, their certificates issued by the
//! platform's PKI (OpenBao), the load balancer passing TLS through. With `--tls-cert`/`--tls-key`
//! the server terminates TLS itself; with `--client-ca` it also asks for a client certificate.
//!
//! # Guarantees
//! - A client certificate is accepted only when it chains to the configured client CA (rustls'
//!   WebPKI verifier: signature, validity period, key usage). Clients without a certificate are
//!   still served (browsers, BFFs and agents with bearer tokens), but a certificate that does not
//!   verify fails the handshake.
//! - The cluster a verified certificate names — its URI SAN `spiffe://cplane/cluster/<id>` — is
//!   handed to the handlers as a [`ClientCluster`] request extension
//!   ([`crate::connections`]); nothing a client sends in headers can set it. A certificate without such a SAN authenticates nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The URI SAN prefix naming a cluster in an agent's certificate.
pub const CLUSTER_URI_PREFIX: &str = "spiffe://cplane/cluster/";

/// Errors setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The client CA could not be used.
    #[error("client CA: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
}

/// Where the server's certificate, key and (optional) client CA are.
#[derive(Debug, Clone)]
pub struct Settings {
    /// PEM certificate chain of the server.
    pub cert: PathBuf,
    /// PEM private key of the server.
    pub key: PathBuf,
    /// PEM CA certificate(s) that agents' client certificates must chain to.
    pub client_ca: Option<PathBuf>,
}

/// The cluster named by the verified client certificate of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCluster(pub String);

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = |message: String| Error::Pem {
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem("no certificate in the file".into()));
    }
    Ok(certs)
}

/// The rustls configuration: the server's chain and key, and the client verifier.
pub fn server_config(s: &Settings) -> Result<Arc<rustls::ServerConfig>, Error> {
    // Explicit provider: the process may link more than one (kube brings ring).
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = PrivateKeyDer::from_pem_file(&s.key).map_err(|e| Error::Pem {
        path: s.key.clone(),
        message: e.to_string(),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &s.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(ca)? {
                roots.add(cert)?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs(&s.cert)?, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The cluster a (verified) end-entity certificate names in its URI SAN.
pub fn cluster_of(cert: &CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    let found = cert
        .valid_uri_names()
        .find_map(|uri| uri.strip_prefix(CLUSTER_URI_PREFIX).map(str::to_owned));
    found
}
