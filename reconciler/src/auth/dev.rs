//! A development OIDC issuer: an ES256 (P-256) key, its JWKS served at the Keycloak path
//! (`{issuer}/protocol/openid-connect/certs`), and tokens signed for any subject. `cplane up`
//! runs one on its own server so local try-outs use the same JWT path as production; tests
//! run one on 127.0.0.1.
//!
//! # Guarantees
//! - The private key never leaves the process except into the key file given to
//!   [`DevIssuer::load_or_create`], written with mode 0600; it is never logged.
//! - The key id is the key's RFC 7638 thumbprint, so a new key is a new `kid` (rotation).
//! - Tokens carry `iss`, `aud`, `sub`, `email` (verified), `name`, `iat`, `nbf`, `exp`, like
//!   Keycloak's access tokens with an audience mapper.
//! - With [`DevIssuer::with_sign_in`] (what `cplane up` does for its dashboard), it also serves
//!   the authorization code flow with PKCE (RFC 7636, `S256` only) at Keycloak's paths, and
//!   signs in that one principal without a password. Codes are single use, expire after 60 s,
//!   are bound to the client, the redirect URI and the challenge, and are only ever sent to a
//!   redirect URI on the issuer's own origin (no open redirect).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use axum::body::Bytes;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// The path `cplane up` serves its issuer under.
pub const PATH: &str = "/dev-issuer";

/// Errors of the development issuer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the key file failed.
    #[error("dev issuer key {path}: {source}")]
    Io {
        /// Key file.
        path: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not hold a P-256 PKCS#8 key, or generating one failed.
    #[error("dev issuer key {path}: {reason}")]
    Key {
        /// Key file, or `(generated)`.
        path: String,
        /// Why.
        reason: String,
    },
    /// Signing or describing the key failed.
    #[error("dev issuer: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    /// Binding a local port failed.
    #[error("dev issuer: listening on 127.0.0.1: {0}")]
    Listen(#[source] std::io::Error),
}

/// Claims of a development token.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    email: &'a str,
    email_verified: bool,
    name: &'a str,
    preferred_username: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
}

/// The one principal a development issuer signs in at its authorization endpoint.
#[derive(Debug, Clone)]
pub struct SignIn {
    /// The token's audience.
    pub audience: String,
    /// `sub`.
    pub subject: String,
    /// `email`.
    pub email: String,
    /// `name`.
    pub name: String,
    /// How long the token is valid.
    pub lifetime: Duration,
}

/// An authorization code waiting for its token request.
#[derive(Debug)]
struct Pending {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    expires: Instant,
}

/// A development issuer (see the module docs).
#[derive(Clone)]
pub struct DevIssuer {
    issuer: String,
    key: EncodingKey,
    kid: String,
    jwks: serde_json::Value,
    sign_in: Option<SignIn>,
    codes: Arc<Mutex<HashMap<String, Pending>>>,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl DevIssuer {
    /// An issuer named `issuer` (its URL) with a new in-memory key.
    pub fn generate(issuer: &str) -> Result<Self, Error> {
        Self::from_pkcs8(issuer, &generate_pkcs8("(generated)")?, "(generated)")
    }

    /// An issuer named `issuer` whose key is kept in `key_file` (created, mode 0600, when
    /// missing).
    pub fn load_or_create(key_file: &Path, issuer: &str) -> Result<Self, Error> {
        let path = key_file.display().to_string();
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let pkcs8 = match std::fs::read(key_file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes = generate_pkcs8(&path)?;
                use std::io::Write as _;
                use std::os::unix::fs::OpenOptionsExt as _;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(key_file)
                    .map_err(io)?;
                f.write_all(&bytes).map_err(io)?;
                bytes
            }
            Err(e) => return Err(io(e)),
        };
        Self::from_pkcs8(issuer, &pkcs8, &path)
    }

    fn from_pkcs8(issuer: &str, pkcs8: &[u8], path: &str) -> Result<Self, Error> {
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8).map_err(|e| {
            Error::Key {
                path: path.to_owned(),
                reason: format!("not a P-256 PKCS#8 key ({e})"),
            }
        })?;
        let key = EncodingKey::from_ec_der(pkcs8);
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)?;
        let kid = jwk.thumbprint(ThumbprintHash::SHA256)?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
        let jwks = serde_json::to_value(JwkSet { keys: vec![jwk] })
            .map_err(jsonwebtoken::errors::Error::from)?;
        Ok(Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            key,
            kid,
            jwks,
            sign_in: None,
            codes: Arc::default(),
        })
    }

    /// Serves the authorization code flow (with PKCE), signing in `who` without a password.
    pub fn with_sign_in(mut self, who: SignIn) -> Self {
        self.sign_in = Some(who);
        self
    }

    /// `scheme://host[:port]` of the issuer URL.
    fn origin(&self) -> String {
        let after_scheme = self.issuer.find("://").map_or(0, |i| i + 3);
        match self.issuer[after_scheme..].find('/') {
            Some(i) => self.issuer[..after_scheme + i].to_owned(),
            None => self.issuer.clone(),
        }
    }

    /// The issuer URL (the `iss` of its tokens).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWKS document.
    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    /// A token for `audience` naming `subject`, `email` and `name`, valid for `lifetime`.
    pub fn token(
        &self,
        audience: &str,
        subject: &str,
        email: &str,
        name: &str,
        lifetime: Duration,
    ) -> Result<String, Error> {
        let now = jsonwebtoken::get_current_timestamp();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let claims = Claims {
            iss: &self.issuer,
            aud: audience,
            sub: subject,
            email,
            email_verified: true,
            name,
            preferred_username: email,
            iat: now,
            nbf: now,
            exp: now + lifetime.as_secs(),
        };
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }

    /// Routes serving the JWKS at `{issuer path}/protocol/openid-connect/certs` and a minimal
    /// `{issuer path}/.well-known/openid-configuration`.
    pub fn router(&self) -> Router {
        let base = self
            .issuer
            .parse::<axum::http::Uri>()
            .map(|u| u.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        let jwks = self.jwks.clone();
        let mut discovery = serde_json::json!({
            "issuer": self.issuer,
            "jwks_uri": super::jwks::jwks_url(&self.issuer),
            "id_token_signing_alg_values_supported": ["ES256"],
        });
        let mut flow = Router::new();
        if self.sign_in.is_some() {
            discovery["authorization_endpoint"] =
                format!("{}/protocol/openid-connect/auth", self.issuer).into();
            discovery["token_endpoint"] =
                format!("{}/protocol/openid-connect/token", self.issuer).into();
            discovery["response_types_supported"] = serde_json::json!(["code"]);
            discovery["grant_types_supported"] = serde_json::json!(["authorization_code"]);
            discovery["code_challenge_methods_supported"] = serde_json::json!(["S256"]);
            let me = self.clone();
            let me2 = self.clone();
            flow = flow
                .route(
                    &format!("{base}/protocol/openid-connect/auth"),
                    get(move |Query(q): Query<AuthRequest>| {
                        let me = me.clone();
                        async move { me.authorize(q) }
                    }),
                )
                .route(
                    &format!("{base}/protocol/openid-connect/token"),
                    post(move |body: Bytes| {
                        let me = me2.clone();
                        async move {
                            match serde_urlencoded::from_bytes::<TokenRequest>(&body) {
                                Ok(f) => me.exchange(f),
                                Err(e) => oauth_error(
                                    StatusCode::BAD_REQUEST,
                                    "invalid_request",
                                    &format!("the form: {e}"),
                                ),
                            }
                        }
                    }),
                );
        }
        Router::new()
            .merge(flow)
            .route(
                &format!("{base}/protocol/openid-connect/certs"),
                get(move || {
                    let jwks = jwks.clone();
                    async move { Json(jwks) }
                }),
            )
            .route(
                &format!("{base}/.well-known/openid-configuration"),
                get(move || {
                    let d = discovery.clone();
                    async move { Json(d) }
                }),
            )
    }

    /// Starts an issuer on a free port of 127.0.0.1 (issuer `http://127.0.0.1:PORT/dev-issuer`),
    /// serving until the returned task is aborted or the runtime ends. For tests and tools.
    pub async fn start_local() -> Result<(Self, tokio::task::JoinHandle<()>), Error> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Error::Listen)?;
        let addr = listener.local_addr().map_err(Error::Listen)?;
        let issuer = Self::generate(&format!("http://{addr}{PATH}"))?;
        let app = issuer.router();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "dev issuer stopped");
            }
        });
        Ok((issuer, task))
    }
}

/// The query of an authorization request.
#[derive(Debug, serde::Deserialize)]
pub struct AuthRequest {
    response_type: String,
    client_id: String,
    redirect_uri: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    code_challenge: String,
    #[serde(default)]
    code_challenge_method: String,
}

/// The form of a token request.
#[derive(Debug, serde::Deserialize)]
pub struct TokenRequest {
    grant_type: String,
    code: String,
    redirect_uri: String,
    client_id: String,
    code_verifier: String,
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": error, "error_description": description})),
    )
        .into_response()
}

impl DevIssuer {
    /// `GET …/auth`: checks the request, issues a code for the sign-in principal and sends the
    /// browser back to the redirect URI with it.
    fn authorize(&self, q: AuthRequest) -> Response {
        let origin = self.origin();
        // Errors about the redirect URI itself are shown here, never sent to it.
        let same_origin = q
            .redirect_uri
            .strip_prefix(&origin)
            .is_some_and(|rest| rest.starts_with('/'));
        if !same_origin {
            return (
                StatusCode::BAD_REQUEST,
                format!("redirect_uri must be on {origin}"),
            )
                .into_response();
        }
        if q.response_type != "code" {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_response_type",
                "only `code`",
            );
        }
        if q.code_challenge_method != "S256"
            || !(43..=128).contains(&q.code_challenge.len())
            || q.client_id.is_empty()
        {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "a client_id and a PKCE code_challenge with method S256 are required",
            );
        }
        let code = hex::encode(rand::random::<[u8; 32]>());
        let mut codes = self
            .codes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        codes.retain(|_, p| p.expires > now);
        codes.insert(
            code.clone(),
            Pending {
                client_id: q.client_id,
                redirect_uri: q.redirect_uri.clone(),
                challenge: q.code_challenge,
                expires: now + Duration::from_secs(60),
            },
        );
        let sep = if q.redirect_uri.contains('?') {
            '&'
        } else {
            '?'
        };
        let query =
            serde_urlencoded::to_string([("code", code.as_str()), ("state", q.state.as_str())])
                .expect("strings encode");
        Redirect::to(&format!("{}{sep}{query}", q.redirect_uri)).into_response()
    }

    /// `POST …/token`: a code and its PKCE verifier for an access token.
    fn exchange(&self, f: TokenRequest) -> Response {
        use sha2::Digest as _;
        let Some(who) = &self.sign_in else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                "no sign-in here",
            );
        };
        if f.grant_type != "authorization_code" {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only authorization_code",
            );
        }
        // Single use: the code is gone whether or not the rest checks out.
        let pending = self
            .codes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&f.code);
        let Some(p) = pending.filter(|p| p.expires > Instant::now()) else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "unknown, used or expired code",
            );
        };
        let challenge = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            sha2::Sha256::digest(f.code_verifier.as_bytes()),
        );
        if p.client_id != f.client_id
            || p.redirect_uri != f.redirect_uri
            || p.challenge != challenge
        {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "the client, redirect_uri or code_verifier does not match the authorization request",
            );
        }
        match self.token(
            &who.audience,
            &who.subject,
            &who.email,
            &who.name,
            who.lifetime,
        ) {
            Ok(t) => Json(serde_json::json!({
                "access_token": t,
                "token_type": "Bearer",
                "expires_in": who.lifetime.as_secs(),
            }))
            .into_response(),
            Err(e) => oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                &e.to_string(),
            ),
        }
    }
}

fn generate_pkcs8(path: &str) -> Result<Vec<u8>, Error> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map(|doc| doc.as_ref().to_vec())
        .map_err(|e| Error::Key {
            path: path.to_owned(),
            reason: format!("generating a P-256 key: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("dev-issuer.p8");
        let a = DevIssuer::load_or_create(&file, "http://127.0.0.1:1/dev-issuer").expect("create");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = DevIssuer::load_or_create(&file, "http://127.0.0.1:1/dev-issuer").expect("load");
        assert_eq!(a.kid(), b.kid(), "the same key is reused");
        assert_ne!(
            a.kid(),
            DevIssuer::generate("http://x").expect("gen").kid(),
            "a new key is a new kid"
        );
        std::fs::write(&file, b"not a key").expect("write");
        let err = DevIssuer::load_or_create(&file, "http://x").expect_err("garbage");
        assert!(err.to_string().contains("not a P-256 PKCS#8 key"), "{err}");
    }

    #[test]
    fn jwks_describes_the_signing_key() {
        let issuer = DevIssuer::generate("http://127.0.0.1:9/dev-issuer/").expect("gen");
        assert_eq!(issuer.issuer(), "http://127.0.0.1:9/dev-issuer");
        let key = &issuer.jwks()["keys"][0];
        assert_eq!(key["kty"], "EC");
        assert_eq!(key["crv"], "P-256");
        assert_eq!(key["use"], "sig");
        assert_eq!(key["alg"], "ES256");
        assert_eq!(key["kid"], issuer.kid());
        assert!(key.get("d").is_none(), "no private part: {key}");
    }
}
