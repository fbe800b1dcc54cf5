//! Signing keys of the allowed issuers, fetched from `{iss}/protocol/openid-connect/certs`
//! (Keycloak's JWKS path) and cached per issuer.
//!
//! # Guarantees
//! - Only issuers on the allow-list reach this module (the caller checks first), so nothing
//!   is ever fetched for an issuer an attacker names.
//! - Keys are served from memory while fresh (`max_age`); an unknown `kid` triggers a refetch
//!   (key rotation), but at most one fetch per issuer per `min_refetch`, and concurrent misses
//!   share that one fetch: a flood of made-up `kid`s costs the issuer nothing more.
//! - Each key carries the algorithms its type allows: RSA → RS256/RS384/RS512, EC P-256 →
//!   ES256 (narrowed to the JWK's own `alg` when it names one). Symmetric (`oct`) keys,
//!   encryption keys (`use: enc`) and other curves are never used, so `none` and HMAC can never
//!   verify a token.
//! - When a refetch fails, keys already known keep working (logged); an issuer never reached
//!   is reported as unavailable, not as a bad token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey};

/// Largest JWKS or principal document read from a remote (1 MiB).
const MAX_BODY: usize = 1 << 20;
/// Longest a remote call may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Errors calling an issuer or the primary region.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not a URL.
    #[error("`{url}` is not a URL: {reason}")]
    BadUrl {
        /// What was given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// Plain http to anything but this machine.
    #[error("`{0}`: only https is allowed (plain http only to 127.0.0.1, ::1 or localhost)")]
    Insecure(String),
    /// Building the request failed.
    #[error("request to {url}: {source}")]
    Request {
        /// URL.
        url: String,
        /// Reason.
        #[source]
        source: axum::http::Error,
    },
    /// Connecting or talking to the remote failed.
    #[error("calling {url}: {source}")]
    Call {
        /// URL.
        url: String,
        /// Reason.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// Reading the body failed or it was too large.
    #[error("reading the answer of {url}: {reason}")]
    Body {
        /// URL.
        url: String,
        /// Reason.
        reason: String,
    },
    /// The remote took too long.
    #[error("calling {0}: no answer within 5 s")]
    Timeout(String),
    /// An unexpected status.
    #[error("{url} answered {status}")]
    Status {
        /// URL.
        url: String,
        /// Status.
        status: StatusCode,
    },
    /// The body is not the JSON expected.
    #[error("{url} answered a document that is not {what}: {source}")]
    Json {
        /// URL.
        url: String,
        /// What was expected.
        what: &'static str,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// The last fetch failed and the next is not due yet.
    #[error("{0} (retrying after the refetch interval)")]
    Recent(String),
}

/// Checks that `url` is https, or http to a loopback host, and parses it.
pub fn checked_uri(url: &str) -> Result<Uri, FetchError> {
    let uri: Uri = url
        .parse()
        .map_err(|e: axum::http::uri::InvalidUri| FetchError::BadUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(uri),
        Some("http") if is_loopback(host) => Ok(uri),
        Some("http") => Err(FetchError::Insecure(url.to_owned())),
        _ => Err(FetchError::BadUrl {
            url: url.to_owned(),
            reason: "expected an https:// URL".into(),
        }),
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(crate) type Connector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// The hyper client of cplane's outbound HTTP (issuers' JWKS, Keycloak, Workers KV): rustls
/// with the system's CA certificates, http/1.1, plain http only where the caller allows it.
/// Without system CA certificates https calls to `what` fail, and that is logged here once.
pub(crate) fn hyper_client(
    what: &str,
) -> hyper_util::client::legacy::Client<Connector, Full<Bytes>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = match hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider.clone())
    {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "no system CA certificates: https calls to {what} will fail");
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("aws-lc-rs supports rustls' default protocol versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    let connector = builder.https_or_http().enable_http1().build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

/// An HTTP/1.1 client for issuers and the primary region (principals, tenants rows): https with the system's roots
/// (rustls on aws-lc-rs), plain http only to loopback addresses (tests, `cplane up`).
#[derive(Clone)]
pub struct HttpClient {
    inner: hyper_util::client::legacy::Client<Connector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    /// A client; when the system has no CA certificates, https calls fail (logged once here).
    pub fn new() -> Self {
        Self {
            inner: hyper_client("issuers"),
        }
    }

    /// `GET url` (https, or http to loopback) with an optional bearer token: status and body
    /// (at most 1 MiB, within 5 s).
    pub async fn get(
        &self,
        url: &str,
        bearer: Option<&str>,
    ) -> Result<(StatusCode, Bytes), FetchError> {
        self.send(Method::GET, url, bearer, None).await
    }

    /// `method url` (https, or http to loopback) with an optional bearer token and JSON body:
    /// status and body (at most 1 MiB, within 5 s).
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        bearer: Option<&str>,
        json: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), FetchError> {
        let uri = checked_uri(url)?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::ACCEPT, "application/json");
        if let Some(token) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if json.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(json.unwrap_or_default())))
            .map_err(|source| FetchError::Request {
                url: url.to_owned(),
                source,
            })?;
        let call = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|source| FetchError::Call {
                    url: url.to_owned(),
                    source,
                })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| FetchError::Body {
                    url: url.to_owned(),
                    reason: e.to_string(),
                })?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(TIMEOUT, call)
            .await
            .map_err(|_| FetchError::Timeout(url.to_owned()))?
    }
}

/// One signing key and the algorithms a token signed with it may claim.
#[derive(Clone)]
pub struct VerifyKey {
    /// The public key.
    pub key: DecodingKey,
    /// Algorithms allowed for it (never `none`, never HMAC).
    pub algorithms: Vec<Algorithm>,
}

/// A JWK as Keycloak publishes it; only the fields used.
#[derive(serde::Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(serde::Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

/// The usable signing keys of a JWKS document, by `kid`. Keys that are not for signatures,
/// of an unsupported type, or malformed are skipped (logged at debug).
pub fn parse_jwks(body: &[u8]) -> Result<HashMap<String, VerifyKey>, serde_json::Error> {
    let set: RawJwks = serde_json::from_slice(body)?;
    let mut out = HashMap::new();
    for value in set.keys {
        let jwk: RawJwk = match serde_json::from_value(value) {
            Ok(j) => j,
            Err(e) => {
                tracing::debug!(error = %e, "skipping a malformed JWK");
                continue;
            }
        };
        let Some(kid) = jwk.kid.clone() else { continue };
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        let declared: Option<Algorithm> = match jwk.alg.as_deref() {
            None => None,
            Some(a) => match a.parse() {
                Ok(alg) => Some(alg),
                Err(_) => continue,
            },
        };
        let (key, family) = match (jwk.kty.as_str(), &jwk) {
            (
                "RSA",
                RawJwk {
                    n: Some(n),
                    e: Some(e),
                    ..
                },
            ) => match DecodingKey::from_rsa_components(n, e) {
                Ok(k) => (
                    k,
                    vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
                ),
                Err(_) => continue,
            },
            (
                "EC",
                RawJwk {
                    crv: Some(crv),
                    x: Some(x),
                    y: Some(y),
                    ..
                },
            ) if crv == "P-256" => match DecodingKey::from_ec_components(x, y) {
                Ok(k) => (k, vec![Algorithm::ES256]),
                Err(_) => continue,
            },
            _ => continue,
        };
        let algorithms = match declared {
            None => family,
            Some(alg) if family.contains(&alg) => vec![alg],
            Some(_) => continue,
        };
        out.insert(kid, VerifyKey { key, algorithms });
    }
    Ok(out)
}

/// The JWKS URL of a Keycloak issuer.
pub fn jwks_url(issuer: &str) -> String {
    format!(
        "{}/protocol/openid-connect/certs",
        issuer.trim_end_matches('/')
    )
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, VerifyKey>,
    fetched_at: Option<Instant>,
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

#[derive(Default)]
struct IssuerKeys {
    snapshot: RwLock<Arc<KeySet>>,
    fetch: tokio::sync::Mutex<FetchState>,
}

impl IssuerKeys {
    fn snapshot(&self) -> Arc<KeySet> {
        self.snapshot.read().expect("key snapshot lock").clone()
    }
}

/// Per-issuer key cache (see the module docs for its guarantees).
pub struct KeyCache {
    client: HttpClient,
    min_refetch: Duration,
    max_age: Duration,
    issuers: Mutex<HashMap<String, Arc<IssuerKeys>>>,
    fetches: std::sync::atomic::AtomicU64,
}

impl KeyCache {
    /// A cache refetching at most every `min_refetch` and refreshing keys older than `max_age`.
    pub fn new(client: HttpClient, min_refetch: Duration, max_age: Duration) -> Self {
        Self {
            client,
            min_refetch,
            max_age,
            issuers: Mutex::default(),
            fetches: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// JWKS fetches made so far (all issuers).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn entry(&self, issuer: &str) -> Arc<IssuerKeys> {
        self.issuers
            .lock()
            .expect("issuer map lock")
            .entry(issuer.to_owned())
            .or_default()
            .clone()
    }

    /// The key `kid` of `issuer` (which the caller has checked against the allow-list), or
    /// `None` when the issuer does not publish it.
    pub async fn key(&self, issuer: &str, kid: &str) -> Result<Option<VerifyKey>, FetchError> {
        let entry = self.entry(issuer);
        let fresh = |set: &KeySet| set.fetched_at.is_some_and(|t| t.elapsed() < self.max_age);
        let snap = entry.snapshot();
        if fresh(&snap) {
            if let Some(k) = snap.keys.get(kid) {
                return Ok(Some(k.clone()));
            }
        }
        // A miss or stale keys: one fetch at a time per issuer, at most one per interval.
        let mut state = entry.fetch.lock().await;
        let snap = entry.snapshot();
        if let Some(k) = snap.keys.get(kid) {
            if fresh(&snap)
                || state
                    .last_attempt
                    .is_some_and(|t| t.elapsed() < self.min_refetch)
            {
                return Ok(Some(k.clone()));
            }
        }
        if state
            .last_attempt
            .is_some_and(|t| t.elapsed() < self.min_refetch)
        {
            return match (&state.last_error, snap.fetched_at) {
                (Some(e), None) => Err(FetchError::Recent(e.clone())),
                _ => Ok(None),
            };
        }
        state.last_attempt = Some(Instant::now());
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.fetch(issuer).await {
            Ok(keys) => {
                state.last_error = None;
                let found = keys.get(kid).cloned();
                tracing::info!(
                    issuer,
                    keys = keys.len(),
                    "fetched the issuer's signing keys"
                );
                *entry.snapshot.write().expect("key snapshot lock") = Arc::new(KeySet {
                    keys,
                    fetched_at: Some(Instant::now()),
                });
                Ok(found)
            }
            Err(e) => {
                tracing::warn!(issuer, error = %e, "fetching the issuer's signing keys failed");
                state.last_error = Some(e.to_string());
                match snap.keys.get(kid) {
                    Some(k) => Ok(Some(k.clone())),
                    None if snap.fetched_at.is_some() => Ok(None),
                    None => Err(e),
                }
            }
        }
    }

    async fn fetch(&self, issuer: &str) -> Result<HashMap<String, VerifyKey>, FetchError> {
        let url = jwks_url(issuer);
        let (status, body) = self.client.get(&url, None).await?;
        if status != StatusCode::OK {
            return Err(FetchError::Status { url, status });
        }
        parse_jwks(&body).map_err(|source| FetchError::Json {
            url,
            what: "a JWKS",
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http() {
        assert!(checked_uri("https://auth.sgp-1.cogrion.com/realms/x").is_ok());
        assert!(checked_uri("http://127.0.0.1:8080/x").is_ok());
        assert!(checked_uri("http://[::1]:8080/x").is_ok());
        assert!(checked_uri("http://localhost/x").is_ok());
        assert!(matches!(
            checked_uri("http://auth.example.com/x"),
            Err(FetchError::Insecure(_))
        ));
        assert!(matches!(
            checked_uri("http://10.0.0.1/x"),
            Err(FetchError::Insecure(_))
        ));
        assert!(checked_uri("ftp://x/y").is_err());
        assert!(checked_uri("not a url").is_err());
    }

    #[test]
    fn jwks_keeps_only_signing_keys_with_pinned_algorithms() {
        // Keycloak publishes an RS256 signing key and an RSA-OAEP encryption key; an HMAC key
        // or another curve must never become usable.
        let n = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";
        let jwks = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "sig1", "use": "sig", "alg": "RS256", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "enc1", "use": "enc", "alg": "RSA-OAEP", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "any", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "lying", "alg": "HS256", "n": n, "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kty": "RSA", "n": n, "e": "AQAB"},
            "garbage"
        ]});
        let keys = parse_jwks(jwks.to_string().as_bytes()).expect("jwks");
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        assert_eq!(kids, ["any", "sig1"]);
        assert_eq!(keys["sig1"].algorithms, [Algorithm::RS256]);
        assert_eq!(
            keys["any"].algorithms,
            [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512]
        );
    }
}
