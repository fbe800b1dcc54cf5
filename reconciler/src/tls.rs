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
//! - Behind a load balancer that terminates TLS and forwards the client's certificate in a
//!   header (AWS ALB mTLS: `X-Amzn-Mtls-Clientcert`, the URL-encoded PEM chain),
//!   [`ForwardedCerts`] takes that header only from the trusted proxies' addresses, and checks
//!   the certificate with the very verifier a direct connection's handshake uses; from any
//!   other peer the header is dropped unread. Handlers never see the header.
//! - Revocation: `--client-crl` CRL files (PEM or DER) are given to that verifier; a revoked
//!   serial fails a direct handshake and authenticates nothing when forwarded. CRLs are read at
//!   start (restart to load a new one).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;

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
    /// The forwarded-certificate header is not a header name.
    #[error("--client-cert-header {0:?} is not an HTTP header name")]
    Header(String),
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
    /// CRLs (PEM or DER) of the client CA: revoked client certificates.
    pub client_crls: Vec<PathBuf>,
}

/// Where a load balancer that terminates TLS puts the client's certificate, and whom to
/// believe about it.
#[derive(Debug, Clone)]
pub struct ForwardedSettings {
    /// The request header with the URL-encoded PEM certificate (chain), leaf first.
    pub header: String,
    /// The proxies' addresses (networks) whose header is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// PEM CA certificate(s) the forwarded certificates must chain to.
    pub client_ca: PathBuf,
    /// CRLs of that CA.
    pub client_crls: Vec<PathBuf>,
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

fn crls(paths: &[PathBuf]) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
    let mut out = Vec::new();
    for path in paths {
        let pem = |message: String| Error::Pem {
            path: path.clone(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| pem(e.to_string()))?;
        if bytes.starts_with(b"-----BEGIN") {
            let list = CertificateRevocationListDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem(e.to_string()))?;
            if list.is_empty() {
                return Err(pem("no CRL in the file".into()));
            }
            out.extend(list);
        } else {
            out.push(CertificateRevocationListDer::from(bytes));
        }
    }
    Ok(out)
}

/// The one verifier of client certificates: chains to `ca`, not revoked by `crl_files`
/// (rustls' WebPKI verifier: signature, validity period, key usage, CRLs). Clients without a
/// certificate are let through; they need another credential.
pub fn client_verifier(
    ca: &Path,
    crl_files: &[PathBuf],
) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(ca)? {
        roots.add(cert)?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
            .with_crls(crls(crl_files)?)
            .allow_unauthenticated()
            .build()?;
    Ok(verifier)
}

/// The rustls configuration: the server's chain and key, and the client verifier.
pub fn server_config(s: &Settings) -> Result<Arc<rustls::ServerConfig>, Error> {
    // Explicit provider: the process may link more than one (kube brings ring).
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = PrivateKeyDer::from_pem_file(&s.key).map_err(|e| Error::Pem {
        path: s.key.clone(),
        message: e.to_string(),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?;
    let builder = match &s.client_ca {
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, &s.client_crls)?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs(&s.cert)?, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Client certificates forwarded by a trusted load balancer in a request header.
pub struct ForwardedCerts {
    header: axum::http::HeaderName,
    trusted: Vec<ipnet::IpNet>,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for ForwardedCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardedCerts")
            .field("header", &self.header)
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}

impl ForwardedCerts {
    /// The header, the trusted proxies and the verifier of `s`.
    pub fn new(s: &ForwardedSettings) -> Result<Self, Error> {
        Ok(Self {
            header: axum::http::HeaderName::try_from(s.header.as_str())
                .map_err(|_| Error::Header(s.header.clone()))?,
            trusted: s.trusted_proxies.clone(),
            verifier: client_verifier(&s.client_ca, &s.client_crls)?,
        })
    }

    /// Takes the certificate header out of `headers` and returns the cluster its certificate
    /// names, when `peer` is a trusted proxy and the certificate verifies; `None` otherwise.
    /// The header is removed in every case.
    pub fn take(&self, peer: IpAddr, headers: &mut axum::http::HeaderMap) -> Option<ClientCluster> {
        let values: Vec<_> = match headers.entry(&self.header) {
            axum::http::header::Entry::Occupied(e) => e.remove_entry_mult().1.collect(),
            axum::http::header::Entry::Vacant(_) => return None,
        };
        if !self.trusted.iter().any(|net| net.contains(&peer)) {
            tracing::debug!(%peer, header = %self.header, "client certificate header from an untrusted peer: ignored");
            return None;
        }
        let [value] = values.as_slice() else {
            return None; // several: ambiguous, believe none
        };
        let pem = percent_encoding::percent_decode(value.as_bytes()).collect::<Vec<u8>>();
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        let (leaf, intermediates) = chain.split_first()?;
        match self
            .verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
        {
            Ok(_) => cluster_of(leaf).map(ClientCluster),
            Err(e) => {
                tracing::info!(%peer, error = %e, "forwarded client certificate refused");
                None
            }
        }
    }
}

/// The cluster a (verified) end-entity certificate names in its URI SAN.
pub fn cluster_of(cert: &CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    let found = cert
        .valid_uri_names()
        .find_map(|uri| uri.strip_prefix(CLUSTER_URI_PREFIX).map(str::to_owned));
    found
}
