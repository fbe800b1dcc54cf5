//! The agent's side of the agent protocol (DESIGN.md "Agent protocol"): long-poll
//! `GET /v1/clusters/{cluster}/bundle` and `POST /v1/clusters/{cluster}/status`, outbound only.
//!
//! Guarantees: a bundle is returned only after its body (gzip-decoded when the server sent
//! `Content-Encoding: gzip`) hashes to the `ETag`'s digest; bodies are capped at
//! [`MAX_BUNDLE_BYTES`] (also after decompression). The bearer token is read from its file for
//! every request (so a rotated token is picked up) and never logged: [`Error`] never carries it.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, ETAG};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::bundle::{self, Bundle};

/// Largest bundle accepted, compressed or not.
pub const MAX_BUNDLE_BYTES: usize = 64 << 20;

/// Errors talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a credential file failed.
    #[error("reading {path}: {source}")]
    Credentials {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key file is not usable.
    #[error("TLS setup: {message}")]
    Tls {
        /// What is wrong.
        message: String,
        /// rustls' reason, when it has one.
        #[source]
        source: Option<rustls::Error>,
    },
    /// The server URL is not usable.
    #[error("server URL {url}: {message}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The request did not get an answer (connection refused, timeout, reset).
    #[error("server unreachable: {source}")]
    Unreachable {
        /// The transport error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server answered with an unexpected status.
    #[error("server answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: StatusCode,
        /// The first bytes of the body.
        body: String,
    },
    /// The response is not a valid bundle.
    #[error("invalid bundle response: {message}")]
    Response {
        /// What is wrong.
        message: String,
    },
    /// The bundle failed verification (digest mismatch, bad line).
    #[error("{source}")]
    Bundle {
        /// The digest the server named (its `ETag`, unquoted).
        digest: String,
        /// The generation the server named.
        generation: i64,
        /// Why it was refused.
        #[source]
        source: bundle::Error,
    },
}

impl Error {
    /// The digest and generation of a bundle the server sent and the agent refused (it failed
    /// verification); `None` for every other error.
    pub fn refused_bundle(&self) -> Option<(&str, i64)> {
        match self {
            Self::Bundle {
                digest, generation, ..
            } => Some((digest, *generation)),
            _ => None,
        }
    }

    /// Whether retrying later can help (everything but local configuration errors).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Tls { .. } | Self::Url { .. })
    }
}

/// How the agent authenticates to the server.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// `Authorization: Bearer <contents of the file>` (read for every request).
    TokenFile(PathBuf),
    /// A TLS client certificate (mTLS); the server takes the cluster id from it.
    ClientCert {
        /// PEM certificate chain.
        cert: PathBuf,
        /// PEM private key.
        key: PathBuf,
    },
}

/// What a poll returned.
#[derive(Debug)]
pub enum Poll {
    /// A new, verified bundle.
    Fresh(Bundle),
    /// The server confirmed the bundle we named is still current.
    NotModified,
}

/// A client of one cluster's agent endpoints.
#[derive(Clone)]
pub struct ServerClient {
    base: String,
    cluster: String,
    credentials: Credentials,
    http: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<HttpConnector>,
        Full<Bytes>,
    >,
}

impl std::fmt::Debug for ServerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerClient")
            .field("base", &self.base)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

fn tls_error(message: impl Into<String>) -> Error {
    Error::Tls {
        message: message.into(),
        source: None,
    }
}

fn read_pem_certs(
    path: &PathBuf,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, Error> {
    use rustls::pki_types::pem::PemObject as _;
    let certs: Result<Vec<_>, _> = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(format!("{}: {e}", path.display())))?
        .collect();
    let certs = certs.map_err(|e| tls_error(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_error(format!("{}: no PEM certificate", path.display())));
    }
    Ok(certs)
}

impl ServerClient {
    /// A client for `server` (`http://` or `https://`), trusting `server_ca` (PEM) or, without
    /// it, the system's roots.
    pub fn new(
        server: &str,
        cluster: &str,
        credentials: Credentials,
        server_ca: Option<&PathBuf>,
    ) -> Result<Self, Error> {
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Url {
                url: server.to_owned(),
                message: "must start with http:// or https://".into(),
            });
        }
        let mut roots = rustls::RootCertStore::empty();
        match server_ca {
            Some(path) => {
                for cert in read_pem_certs(path)? {
                    roots
                        .add(cert)
                        .map_err(|e| tls_error(format!("{}: {e}", path.display())))?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
            }
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = match &credentials {
            Credentials::TokenFile(_) => builder.with_no_client_auth(),
            Credentials::ClientCert { cert, key } => {
                use rustls::pki_types::pem::PemObject as _;
                let chain = read_pem_certs(cert)?;
                let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| tls_error(format!("{}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::Tls {
                        message: "client certificate and key do not match".into(),
                        source: Some(e),
                    })?
            }
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build();
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Self {
            base,
            cluster: cluster.to_owned(),
            credentials,
            http,
        })
    }

    /// The cluster this client reports for.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    fn authorize(&self, req: &mut hyper::http::request::Builder) -> Result<(), Error> {
        if let Credentials::TokenFile(path) = &self.credentials {
            let token = std::fs::read_to_string(path).map_err(|source| Error::Credentials {
                path: path.display().to_string(),
                source,
            })?;
            let value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                .map_err(|_| tls_error(format!("{}: not a token", path.display())))?;
            let mut value = value;
            value.set_sensitive(true);
            if let Some(headers) = req.headers_mut() {
                headers.insert(AUTHORIZATION, value);
            }
        }
        Ok(())
    }

    async fn send(
        &self,
        mut req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Error> {
        // Every request says which agent sends it: the server warns about old agents.
        static USER_AGENT: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();
        req.headers_mut().insert(
            hyper::header::USER_AGENT,
            USER_AGENT
                .get_or_init(|| {
                    HeaderValue::from_str(&format!("cplane-agent/{}", crate::version()))
                        .expect("the version is ASCII")
                })
                .clone(),
        );
        match tokio::time::timeout(timeout, self.http.request(req)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(Error::Unreachable {
                source: Box::new(e),
            }),
            Err(e) => Err(Error::Unreachable {
                source: Box::new(e),
            }),
        }
    }

    /// Long-polls the bundle: `known` is the digest we hold (sent as `If-None-Match`), `wait`
    /// how long the server may hold the request before answering `304`.
    pub async fn poll(&self, known: Option<&str>, wait: Duration) -> Result<Poll, Error> {
        let url = format!(
            "{}/v1/clusters/{}/bundle?wait={}",
            self.base,
            self.cluster,
            wait.as_secs()
        );
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(&url)
            .header(ACCEPT_ENCODING, "gzip");
        if let Some(d) = known {
            req = req.header(hyper::header::IF_NONE_MATCH, format!("\"{d}\""));
        }
        self.authorize(&mut req)?;
        let req = req.body(Full::new(Bytes::new())).map_err(|e| Error::Url {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let resp = self.send(req, wait + Duration::from_secs(30)).await?;
        let status = resp.status();
        if status == StatusCode::NOT_MODIFIED {
            return Ok(Poll::NotModified);
        }
        let headers = resp.headers().clone();
        let body = read_limited(resp).await?;
        if status != StatusCode::OK {
            return Err(Error::Status {
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
            });
        }
        let etag = headers
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::Response {
                message: "no ETag".into(),
            })?
            .to_owned();
        let generation = headers
            .get("x-cplane-generation")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        let gzip = headers
            .get(CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
        let body = if gzip { gunzip(&body)? } else { body };
        Bundle::verify(&etag, generation, body)
            .map(Poll::Fresh)
            .map_err(|source| Error::Bundle {
                digest: etag
                    .trim()
                    .trim_start_matches("W/")
                    .trim_matches('"')
                    .to_owned(),
                generation,
                source,
            })
    }

    /// Posts a status report (the JSON the server's `report_status` accepts).
    pub async fn report(&self, report: &serde_json::Value) -> Result<(), Error> {
        let url = format!("{}/v1/clusters/{}/status", self.base, self.cluster);
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        self.authorize(&mut req)?;
        let body = serde_json::to_vec(report).expect("a JSON value always serialises");
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Error::Url {
                url: url.clone(),
                message: e.to_string(),
            })?;
        let resp = self.send(req, Duration::from_secs(30)).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = read_limited(resp).await.unwrap_or_default();
        Err(Error::Status {
            status,
            body: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
        })
    }
}

async fn read_limited(resp: hyper::Response<hyper::body::Incoming>) -> Result<Vec<u8>, Error> {
    let collected = Limited::new(resp.into_body(), MAX_BUNDLE_BYTES)
        .collect()
        .await
        .map_err(|e| Error::Unreachable { source: e })?;
    Ok(collected.to_bytes().to_vec())
}

/// Decodes a gzip body, refusing more than [`MAX_BUNDLE_BYTES`] of output.
fn gunzip(data: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .take(MAX_BUNDLE_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::Response {
            message: format!("gzip: {e}"),
        })?;
    if out.len() > MAX_BUNDLE_BYTES {
        return Err(Error::Response {
            message: format!("bundle larger than {MAX_BUNDLE_BYTES} bytes once decompressed"),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn gunzip_round_trips_and_refuses_garbage() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(b"hello\n").expect("write");
        let gz = enc.finish().expect("finish");
        assert_eq!(gunzip(&gz).expect("decode"), b"hello\n");
        assert!(gunzip(b"not gzip").is_err());
    }

    #[test]
    fn a_server_url_needs_a_scheme() {
        let err = ServerClient::new(
            "cplane.example.com",
            "w-acme",
            Credentials::TokenFile("t".into()),
            None,
        )
        .expect_err("no scheme");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("http://"), "{err}");
    }

    #[test]
    fn errors_never_carry_the_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("token");
        let client = ServerClient::new(
            "http://127.0.0.1:1",
            "w-acme",
            Credentials::TokenFile(missing.clone()),
            None,
        )
        .expect("client");
        let mut req = Request::builder();
        let err = client.authorize(&mut req).expect_err("missing file");
        assert!(err.to_string().contains("token"), "{err}");
        std::fs::write(&missing, "cpt_secret_value\n").expect("write");
        client.authorize(&mut req).expect("read");
        let dbg = format!("{client:?}");
        assert!(!dbg.contains("cpt_secret_value"), "{dbg}");
    }
}
