//! Authentication and authorization of API users: OIDC bearer JWTs (Keycloak), principals and
//! account memberships, and the inter-region principal lookup of reference doc 001.
//!
//! - [`require_user`] is the layer of the user API's router (`cplane serve` mounts the read
//!   and write API and `/v1/me` behind it): it requires a valid bearer JWT when at least one
//!   issuer is configured, resolves the [`Principal`] and puts it in the request's
//!   extensions. The other surfaces (agents, the seed's endpoints, webhooks, health) are
//!   routers of their own with their own authentication and never pass through it.
//! - [`Principal`] is an axum extractor: handlers that write take `principal: Principal` and
//!   ask [`Principal::can_write_account`]; readers take the request's [`authz::Grants`]. Every
//!   decision is [`authz::allows`].
//! - [`routes`]: `GET /internal/principals?email=` (bearer `INTER_REGION_SERVICE_TOKEN`) and
//!   the development issuer's JWKS when one is configured ([`dev`]); [`user_routes`]:
//!   `GET /v1/me`.
//!
//! # Guarantees
//! - A token is accepted only when: its `iss` is on the allow-list (checked before any network
//!   call), its `kid` names a signing key the issuer publishes at
//!   `{iss}/protocol/openid-connect/certs`, its `alg` is one that key's type allows (RSA →
//!   RS256/384/512, EC P-256 → ES256; never `none`, never HMAC), the signature verifies, `aud`
//!   contains the configured audience, `exp` is in the future and `nbf` in the past (30 s
//!   leeway), and it carries an `email` that is not marked unverified.
//! - A principal is resolved by email on every request: from the local `principals` table
//!   (created on first encounter: kind `user`, no roles) in the primary region, or from the
//!   primary (`PRIMARY_CPLANE_API_URL`, cached 60 s) elsewhere; memberships always come from the
//!   local database. An unreachable issuer or primary answers 503, never a weaker identity.
//! - Without any issuer configured, the user API is refused with 401, unless the server was
//!   started with `--insecure-open-read`: then reads are open (a warning is logged at start;
//!   the tenants' AWS identifiers stay hidden) and every [`Principal`] extraction — so every
//!   write — is refused with 401.
//!
//! # Errors
//! Refusals are JSON `{"error": "..."}` with `WWW-Authenticate: Bearer …` on 401. Messages say
//! why (expired, wrong audience, unknown key, …) and never echo the token.

pub mod authz;
pub mod dev;
pub mod jwks;
pub mod principals;
pub mod remote;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::Validation;
use serde_json::json;

use crate::db::Db;
use principals::Identity;

/// Errors in the auth configuration and the principal commands.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag's value is not usable.
    #[error("{flag}: {reason}")]
    Config {
        /// The flag (and environment variable).
        flag: &'static str,
        /// Why.
        reason: String,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] crate::db::Error),
    /// The primary region could not be asked.
    #[error("asking the primary region: {0}")]
    Primary(#[source] jwks::FetchError),
    /// The primary region does not know this email.
    #[error("the primary region knows no principal {0}: they must sign in once, or an admin adds them there first")]
    UnknownAtPrimary(String),
    /// The command must run against the primary region's database.
    #[error("principals live in the primary region ({0}); run this against its database")]
    NotPrimary(String),
    /// A role that does not exist.
    #[error("role `{0}`: must be `member` (writes the account's workspaces) or `viewer`")]
    Role(String),
}

/// Authentication flags of `cplane serve` (flattened into its arguments).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    /// Allowed OIDC issuer URL, e.g. `https://auth.sgp-1.cogrion.com/realms/cogrion`
    /// (repeatable; the environment variable takes a comma-separated list). With none, the
    /// user API is refused (unless `--insecure-open-read`).
    #[arg(
        long = "oidc-issuer",
        env = "CPLANE_OIDC_ISSUERS",
        value_delimiter = ','
    )]
    pub oidc_issuers: Vec<String>,
    /// Audience a token must carry (`aud`); required with `--oidc-issuer`.
    #[arg(long, env = "CPLANE_OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
    /// Without an issuer, serve the read API to anyone (every workspace, without the tenants'
    /// AWS identifiers); writes stay refused. For trying cplane out on a private machine only.
    #[arg(long, env = "CPLANE_INSECURE_OPEN_READ")]
    pub insecure_open_read: bool,
    /// Where identities live.
    #[command(flatten)]
    pub region: RegionArgs,
}

/// The primary region and the inter-region secret (reference doc 001), for `serve` and the
/// principal commands.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RegionArgs {
    /// The primary region's API URL: set in every region but the primary; principals are then
    /// resolved there.
    #[arg(long, env = "PRIMARY_CPLANE_API_URL")]
    pub primary_cplane_api_url: Option<String>,
    /// Shared secret of the `/internal/` endpoints between regions (prefer the environment or
    /// `--inter-region-service-token-file`).
    #[arg(long, env = "INTER_REGION_SERVICE_TOKEN", hide_env_values = true)]
    pub inter_region_service_token: Option<String>,
    /// File holding the inter-region shared secret (a mounted secret; surrounding whitespace
    /// is ignored), instead of `INTER_REGION_SERVICE_TOKEN`.
    #[arg(
        long,
        env = "INTER_REGION_SERVICE_TOKEN_FILE",
        conflicts_with = "inter_region_service_token"
    )]
    pub inter_region_service_token_file: Option<std::path::PathBuf>,
}

impl RegionArgs {
    /// The inter-region token, from the flag or environment variable, or read from its file.
    pub fn service_token(&self) -> Result<Option<String>, Error> {
        let token = match (
            &self.inter_region_service_token,
            &self.inter_region_service_token_file,
        ) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(path)) => {
                Some(std::fs::read_to_string(path).map_err(|e| Error::Config {
                    flag: "--inter-region-service-token-file (INTER_REGION_SERVICE_TOKEN_FILE)",
                    reason: format!("{}: {e}", path.display()),
                })?)
            }
            (None, None) => None,
        };
        Ok(token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()))
    }
}

impl Args {
    /// The checked configuration (defaults for the timings).
    pub fn into_config(self) -> Result<Config, Error> {
        let Self {
            oidc_issuers,
            oidc_audience,
            insecure_open_read,
            region,
        } = self;
        let service_token = region.service_token()?;
        let RegionArgs {
            primary_cplane_api_url,
            inter_region_service_token: _,
            inter_region_service_token_file: _,
        } = region;
        let non_empty =
            |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        let issuers: Vec<String> = oidc_issuers
            .iter()
            .map(|s| s.trim().trim_end_matches('/').to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        for issuer in &issuers {
            jwks::checked_uri(issuer).map_err(|e| Error::Config {
                flag: "--oidc-issuer (CPLANE_OIDC_ISSUERS)",
                reason: e.to_string(),
            })?;
        }
        let audience = non_empty(oidc_audience);
        if !issuers.is_empty() && audience.is_none() {
            return Err(Error::Config {
                flag: "--oidc-audience (CPLANE_OIDC_AUDIENCE)",
                reason: "required with --oidc-issuer: tokens minted for other clients of the same issuer must not be accepted".into(),
            });
        }
        let primary = non_empty(primary_cplane_api_url);
        if let Some(p) = &primary {
            jwks::checked_uri(p).map_err(|e| Error::Config {
                flag: "--primary-cplane-api-url (PRIMARY_CPLANE_API_URL)",
                reason: e.to_string(),
            })?;
            if service_token.is_none() {
                return Err(Error::Config {
                    flag: "--inter-region-service-token (INTER_REGION_SERVICE_TOKEN)",
                    reason: "required with PRIMARY_CPLANE_API_URL".into(),
                });
            }
        }
        Ok(Config {
            issuers,
            audience,
            primary,
            service_token,
            insecure_open_read,
            ..Config::default()
        })
    }
}

/// What the server authenticates with.
#[derive(Clone)]
pub struct Config {
    /// Allowed issuers (exact `iss` values, no trailing slash).
    pub issuers: Vec<String>,
    /// Required audience.
    pub audience: Option<String>,
    /// The primary region's API URL (`None` in the primary).
    pub primary: Option<String>,
    /// The inter-region shared secret.
    pub service_token: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Least time between two JWKS fetches of one issuer (unknown `kid`s).
    pub jwks_min_refetch: Duration,
    /// Keys older than this are refreshed on their next use.
    pub jwks_max_age: Duration,
    /// How long identities from the primary are cached.
    pub principal_cache_ttl: Duration,
    /// A development issuer served by this server (`cplane up`).
    pub dev_issuer: Option<dev::DevIssuer>,
    /// Without issuers, serve reads to anyone ([`authz::Grants::open_read`]).
    pub insecure_open_read: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            issuers: Vec::new(),
            audience: None,
            primary: None,
            service_token: None,
            leeway: Duration::from_secs(30),
            jwks_min_refetch: Duration::from_secs(10),
            jwks_max_age: Duration::from_secs(600),
            principal_cache_ttl: Duration::from_secs(60),
            dev_issuer: None,
            insecure_open_read: false,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("issuers", &self.issuers)
            .field("audience", &self.audience)
            .field("primary", &self.primary)
            .field(
                "service_token",
                &self.service_token.as_ref().map(|_| "(set)"),
            )
            .field("leeway", &self.leeway)
            .field("jwks_min_refetch", &self.jwks_min_refetch)
            .field("jwks_max_age", &self.jwks_max_age)
            .field("principal_cache_ttl", &self.principal_cache_ttl)
            .field("dev_issuer", &self.dev_issuer)
            .field("insecure_open_read", &self.insecure_open_read)
            .finish()
    }
}

/// An authenticated user, as the auth middleware resolved them for this request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    /// The token's `sub`.
    pub subject: String,
    /// Lower-cased email (what principals are resolved by).
    pub email: String,
    /// Display name (`name`, else `preferred_username`, else the email).
    pub name: String,
    /// Holds the system role `admin`: writes everything.
    pub admin: bool,
    /// Principal uid (the same in every region); `""` when the primary does not know them yet.
    pub uid: String,
    /// `user` or `service`.
    pub kind: String,
    /// System roles.
    pub system_roles: Vec<String>,
    /// The token's issuer.
    pub issuer: String,
}

impl Principal {
    /// What this principal may do ([`authz::Grants`]): the system role and the memberships in
    /// this region's database.
    pub async fn grants(&self, db: &Db) -> Result<authz::Grants, Error> {
        let memberships = if self.admin || self.uid.is_empty() {
            Vec::new()
        } else {
            principals::memberships(db, &self.uid).await?
        };
        Ok(authz::Grants::from_memberships(self.admin, &memberships))
    }

    /// Whether this principal may write `account`'s workspaces ([`authz::Action::Write`]).
    pub async fn can_write_account(&self, db: &Db, account: &str) -> Result<bool, Error> {
        Ok(authz::allows(
            &self.grants(db).await?,
            authz::Action::Write(account),
        ))
    }
}

/// Marker the middleware leaves when no issuer is configured.
#[derive(Clone, Copy)]
struct NoIssuer;

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 401, 403, 503 or 500.
    pub status: StatusCode,
    /// Human reason.
    pub message: String,
}

impl Rejection {
    fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
        }
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750: an error code only when a token was presented and is bad.
            let challenge = if self.message.starts_with("invalid token") {
                format!(
                    "Bearer realm=\"cplane\", error=\"invalid_token\", error_description=\"{}\"",
                    self.message.replace(['"', '\\'], "'")
                )
            } else {
                "Bearer realm=\"cplane\"".to_owned()
            };
            let value = HeaderValue::from_str(&challenge)
                .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"cplane\""));
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        resp
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(p.clone());
        }
        if parts.extensions.get::<NoIssuer>().is_some() {
            return Err(Rejection::unauthorized(
                "no OIDC issuer configured: API writes are disabled (start with --oidc-issuer)",
            ));
        }
        Err(Rejection::unauthorized("a bearer token is required"))
    }
}

/// Where identities come from.
enum Directory {
    /// This region's `principals` table (the primary region).
    Local,
    /// The primary region, over `/internal/principals`.
    Primary(Box<remote::Primary>),
}

/// The authenticator shared by the middleware and the routes.
pub struct Auth {
    config: Config,
    db: Db,
    keys: jwks::KeyCache,
    directory: Directory,
}

/// Claims read from a verified token.
#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    email: Option<String>,
    email_verified: Option<bool>,
    name: Option<String>,
    preferred_username: Option<String>,
}

/// Just the issuer, read before verification to pick (or refuse) the keys.
#[derive(serde::Deserialize)]
struct UnverifiedIssuer {
    iss: Option<String>,
}

impl Auth {
    /// An authenticator over `db` for the server: logs how users authenticate (a warning when
    /// no issuer is configured).
    pub fn new(config: Config, db: Db) -> Self {
        if config.issuers.is_empty() && config.insecure_open_read {
            tracing::warn!("no OIDC issuer configured and --insecure-open-read: anyone reaching this server reads every workspace (without the tenants' AWS identifiers); every API write is refused");
        } else if config.issuers.is_empty() {
            tracing::warn!("no OIDC issuer configured: the user API is closed (set --oidc-issuer and --oidc-audience, or --insecure-open-read)");
        } else {
            tracing::info!(issuers = ?config.issuers, "API users authenticate with OIDC bearer tokens");
        }
        Self::for_commands(config, db)
    }

    /// An authenticator for the principal commands (no logging).
    pub fn for_commands(config: Config, db: Db) -> Self {
        let client = jwks::HttpClient::new();
        let keys =
            jwks::KeyCache::new(client.clone(), config.jwks_min_refetch, config.jwks_max_age);
        let directory = match (&config.primary, &config.service_token) {
            (Some(primary), Some(token)) => Directory::Primary(Box::new(remote::Primary::new(
                primary,
                token,
                client,
                config.principal_cache_ttl,
            ))),
            _ => Directory::Local,
        };
        Self {
            config,
            db,
            keys,
            directory,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// JWKS fetches made so far (for tests and metrics).
    pub fn jwks_fetches(&self) -> u64 {
        self.keys.fetches()
    }

    /// Verifies a bearer token and resolves its principal.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, Rejection> {
        let bad = |m: String| Rejection::unauthorized(format!("invalid token: {m}"));
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| bad(format!("malformed header ({e})")))?;
        let issuer = jsonwebtoken::dangerous::insecure_decode_claims::<UnverifiedIssuer>(token)
            .map_err(|e| bad(format!("malformed claims ({e})")))?
            .iss
            .ok_or_else(|| bad("no iss claim".into()))?;
        // The allow-list comes first: nothing is fetched for an issuer not on it.
        if !self.config.issuers.contains(&issuer) {
            return Err(bad(format!("issuer {issuer} is not allowed")));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| bad("no kid in the header".into()))?;
        let key = match self.keys.key(&issuer, kid).await {
            Ok(Some(k)) => k,
            Ok(None) => {
                return Err(bad(format!(
                    "issuer {issuer} publishes no signing key {kid}"
                )))
            }
            Err(e) => {
                return Err(Rejection::unavailable(format!(
                    "cannot verify tokens of {issuer} now: {e}"
                )))
            }
        };
        if !key.algorithms.contains(&header.alg) {
            return Err(bad(format!(
                "alg {:?} is not allowed for key {kid}",
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&issuer]);
        if let Some(aud) = &self.config.audience {
            validation.set_audience(&[aud]);
        } else {
            validation.validate_aud = false;
        }
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| bad(describe(&e)))?
            .claims;
        let email = claims
            .email
            .as_deref()
            .map(principals::normalize_email)
            .filter(|e| !e.is_empty())
            .ok_or_else(|| bad("no email claim (principals are resolved by email)".into()))?;
        if claims.email_verified == Some(false) {
            return Err(bad(format!("email {email} is not verified")));
        }
        let identity = self.identity(&email, &claims.sub).await?;
        let name = claims
            .name
            .or(claims.preferred_username)
            .unwrap_or_else(|| email.clone());
        Ok(Principal {
            subject: claims.sub,
            admin: identity
                .system_roles
                .iter()
                .any(|r| r == principals::ROLE_ADMIN),
            email,
            name,
            uid: identity.uid,
            kind: identity.kind,
            system_roles: identity.system_roles,
            issuer: claims.iss,
        })
    }

    async fn identity(&self, email: &str, subject: &str) -> Result<Identity, Rejection> {
        match &self.directory {
            Directory::Local => principals::resolve(&self.db, email, subject)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "resolving a principal");
                    Rejection {
                        status: StatusCode::INTERNAL_SERVER_ERROR,
                        message: "resolving the principal failed".into(),
                    }
                }),
            Directory::Primary(primary) => match primary.lookup(email).await {
                Ok(Some(identity)) => Ok(identity),
                // Not known in the primary yet: authenticated, no roles, reads only.
                Ok(None) => Ok(Identity {
                    uid: String::new(),
                    email: email.to_owned(),
                    external_id: subject.to_owned(),
                    kind: "user".into(),
                    system_roles: Vec::new(),
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "the primary region did not resolve a principal");
                    Err(Rejection::unavailable(format!(
                        "the primary region ({}) cannot resolve principals now",
                        primary.base()
                    )))
                }
            },
        }
    }

    /// Where `email` is resolved: the local table, or the primary (for the CLI of a
    /// non-primary region).
    pub async fn uid_for(&self, email: &str) -> Result<String, Error> {
        match &self.directory {
            Directory::Local => Ok(principals::resolve(&self.db, email, "").await?.uid),
            Directory::Primary(primary) => match primary.lookup(email).await {
                Ok(Some(identity)) => Ok(identity.uid),
                Ok(None) => Err(Error::UnknownAtPrimary(email.to_owned())),
                Err(e) => Err(Error::Primary(e)),
            },
        }
    }

    /// `cplane principal grant-admin|revoke-admin`: only against the primary's database.
    pub async fn set_admin(&self, email: &str, grant: bool) -> Result<Identity, Error> {
        if let Directory::Primary(p) = &self.directory {
            return Err(Error::NotPrimary(p.base().to_owned()));
        }
        Ok(principals::set_role(&self.db, email, principals::ROLE_ADMIN, grant).await?)
    }

    /// `cplane membership add`: `email` joins `account` with `role`; returns the uid.
    pub async fn add_membership(
        &self,
        email: &str,
        account: &str,
        role: &str,
    ) -> Result<String, Error> {
        if role != principals::ROLE_MEMBER && role != principals::ROLE_VIEWER {
            return Err(Error::Role(role.to_owned()));
        }
        let uid = self.uid_for(email).await?;
        principals::add_membership(&self.db, &uid, account, role).await?;
        Ok(uid)
    }

    /// `cplane membership remove`: returns whether there was a membership.
    pub async fn remove_membership(&self, email: &str, account: &str) -> Result<bool, Error> {
        let uid = self.uid_for(email).await?;
        Ok(principals::remove_membership(&self.db, &uid, account).await?)
    }
}

/// A readable reason for a failed verification.
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "expired".into(),
        K::ImmatureSignature => "not valid yet (nbf)".into(),
        K::InvalidAudience => "wrong audience".into(),
        K::InvalidIssuer => "wrong issuer".into(),
        K::InvalidSignature => "bad signature".into(),
        K::InvalidAlgorithm => "algorithm not allowed".into(),
        K::MissingRequiredClaim(c) => format!("missing claim {c}"),
        _ => e.to_string(),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The users' authentication layer (see the module docs): mount it with
/// `axum::middleware::from_fn_with_state(auth, require_user)` on the router of the user API
/// (the read API, the write API, `/v1/me`). Other surfaces are routers of their own with their
/// own authentication (cluster tokens, webhook signatures, the inter-region token) and never
/// pass through it: which routes need a user is said by where they are mounted.
pub async fn require_user(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    if auth.config.issuers.is_empty() {
        if !auth.config.insecure_open_read {
            return Rejection::unauthorized(
                "no OIDC issuer configured: the API is closed (start with --oidc-issuer, or --insecure-open-read to serve reads to anyone)",
            )
            .into_response();
        }
        req.extensions_mut().insert(NoIssuer);
        req.extensions_mut().insert(authz::Grants::open_read());
        return next.run(req).await;
    }
    let Some(token) = bearer(req.headers()) else {
        return Rejection::unauthorized("a bearer token is required").into_response();
    };
    match auth.authenticate(token).await {
        Ok(principal) => {
            let grants = match principal.grants(&auth.db).await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(error = %e, "reading memberships");
                    return Rejection {
                        status: StatusCode::INTERNAL_SERVER_ERROR,
                        message: "could not read memberships".into(),
                    }
                    .into_response();
                }
            };
            req.extensions_mut().insert(grants);
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(rejection) => {
            tracing::info!(status = %rejection.status, reason = %rejection.message, path = %req.uri().path(), "request refused");
            rejection.into_response()
        }
    }
}

/// `?email=` of `/internal/principals`.
#[derive(serde::Deserialize)]
struct EmailQuery {
    email: String,
}

/// Constant-time comparison of a presented token with the configured one (both hashed first,
/// so neither their contents nor their lengths leak through timing).
fn service_token_matches(presented: &str, expected: &str) -> bool {
    use sha2::Digest as _;
    use subtle::ConstantTimeEq as _;
    let a = sha2::Sha256::digest(presented.as_bytes());
    let b = sha2::Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

/// Another region's control plane: the request carries `Authorization: Bearer
/// <INTER_REGION_SERVICE_TOKEN>` (compared in constant time). The extractor of every
/// `/internal/` route; it refuses with 401 when the token is missing, wrong, or not configured
/// here, and with 421 when this control plane is not the primary region's (it has
/// `PRIMARY_CPLANE_API_URL`): the primary's data is not here.
pub struct InterRegion;

impl<S: Send + Sync> FromRequestParts<S> for InterRegion
where
    Arc<Auth>: axum::extract::FromRef<S>,
{
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = <Arc<Auth> as axum::extract::FromRef<S>>::from_ref(state);
        let Some(expected) = auth.config.service_token.as_deref() else {
            return Err(Rejection::unauthorized(
                "INTER_REGION_SERVICE_TOKEN is not configured here",
            ));
        };
        match bearer(&parts.headers) {
            Some(t) if service_token_matches(t, expected) => {}
            _ => {
                return Err(Rejection::unauthorized(
                    "the inter-region service token is required",
                ))
            }
        }
        if let Directory::Primary(p) = &auth.directory {
            return Err(Rejection {
                status: StatusCode::MISDIRECTED_REQUEST,
                message: format!(
                    "this is not the primary region: its data lives at {}",
                    p.base()
                ),
            });
        }
        Ok(InterRegion)
    }
}

/// `GET /internal/principals?email=` (reference doc 001): identity only, for other regions.
async fn internal_principal(
    State(auth): State<Arc<Auth>>,
    _caller: InterRegion,
    Query(q): Query<EmailQuery>,
) -> Response {
    match principals::find(&auth.db, &q.email).await {
        Ok(Some(p)) => Json(json!({
            "uid": p.uid,
            "externalId": p.external_id,
            "kind": p.kind,
            "systemRoles": p.system_roles,
        }))
        .into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no principal {}", principals::normalize_email(&q.email)) })),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "looking up a principal");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({ "error": "database error" })),
            )
                .into_response()
        }
    }
}

/// `GET /v1/me`: the caller's identity and this region's memberships.
async fn me(State(auth): State<Arc<Auth>>, principal: Principal) -> Response {
    let memberships = if principal.uid.is_empty() {
        Ok(Vec::new())
    } else {
        principals::memberships(&auth.db, &principal.uid).await
    };
    match memberships {
        Ok(m) => Json(json!({
            "principal": principal,
            "memberships": m.into_iter().map(|(account, role)| json!({"account": account, "role": role})).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "listing memberships");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({ "error": "database error" })),
            )
                .into_response()
        }
    }
}

/// The routes of this module: `/internal/principals`, `/v1/me`, and the development issuer's
/// JWKS when configured.
pub fn routes(auth: Arc<Auth>) -> Router {
    let mut app = Router::new()
        .route("/internal/principals", get(internal_principal))
        .with_state(auth.clone());
    if let Some(dev) = &auth.config.dev_issuer {
        app = app.merge(dev.router());
    }
    app
}

/// `GET /v1/me`: mounted with the user API, behind [`require_user`].
pub fn user_routes(auth: Arc<Auth>) -> Router {
    Router::new().route("/v1/me", get(me)).with_state(auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_token_comparison() {
        assert!(service_token_matches("s3cret", "s3cret"));
        assert!(!service_token_matches("s3cre", "s3cret"));
        assert!(!service_token_matches("", "s3cret"));
    }

    #[test]
    fn flags_are_checked() {
        let ok = Args {
            oidc_issuers: vec!["https://auth.sgp-1.cogrion.com/realms/cogrion/".into()],
            oidc_audience: Some("cplane".into()),
            ..Args::default()
        }
        .into_config()
        .expect("valid");
        assert_eq!(
            ok.issuers,
            ["https://auth.sgp-1.cogrion.com/realms/cogrion"]
        );
        let no_aud = Args {
            oidc_issuers: vec!["https://auth.example.com/realms/x".into()],
            ..Args::default()
        }
        .into_config()
        .expect_err("audience required");
        assert!(no_aud.to_string().contains("--oidc-audience"), "{no_aud}");
        let plain = Args {
            oidc_issuers: vec!["http://auth.example.com/realms/x".into()],
            oidc_audience: Some("cplane".into()),
            ..Args::default()
        }
        .into_config()
        .expect_err("http");
        assert!(plain.to_string().contains("only https"), "{plain}");
        let no_token = Args {
            region: RegionArgs {
                primary_cplane_api_url: Some("https://cplane.sgp-1.cogrion.com".into()),
                ..RegionArgs::default()
            },
            ..Args::default()
        }
        .into_config()
        .expect_err("token");
        assert!(
            no_token.to_string().contains("INTER_REGION_SERVICE_TOKEN"),
            "{no_token}"
        );
        let empty = Args {
            region: RegionArgs {
                primary_cplane_api_url: Some(String::new()),
                ..RegionArgs::default()
            },
            oidc_issuers: vec![String::new()],
            ..Args::default()
        }
        .into_config()
        .expect("empty values are unset");
        assert!(empty.primary.is_none() && empty.issuers.is_empty());
    }

    #[test]
    fn the_inter_region_token_may_come_from_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret-from-a-mounted-secret\n").expect("write");
        let from_file = |path: std::path::PathBuf| {
            Args {
                region: RegionArgs {
                    primary_cplane_api_url: Some("https://cplane.sgp-1.cogrion.com".into()),
                    inter_region_service_token_file: Some(path),
                    ..RegionArgs::default()
                },
                ..Args::default()
            }
            .into_config()
        };
        let config = from_file(file).expect("token file");
        assert_eq!(
            config.service_token.as_deref(),
            Some("s3cret-from-a-mounted-secret")
        );
        assert!(!format!("{config:?}").contains("s3cret"));
        let missing = from_file(dir.path().join("nope")).expect_err("missing file");
        assert!(
            missing.to_string().starts_with(
                "--inter-region-service-token-file (INTER_REGION_SERVICE_TOKEN_FILE): "
            ),
            "{missing}"
        );
    }
}
