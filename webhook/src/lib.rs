//! `cplane-webhook`: git push webhooks as an axum router the server mounts at
//! `POST /v1/webhooks/git`.
//!
//! Senders, recognised by their headers:
//! - **GitHub** (`X-GitHub-Event`, `X-GitHub-Delivery`, `X-Hub-Signature-256: sha256=<hex>`)
//! - **Gitea** (`X-Gitea-Event`, `X-Gitea-Delivery`, `X-Gitea-Signature: <hex>` or
//!   `X-Hub-Signature-256`)
//! - **GitLab** (`X-Gitlab-Event`, `Idempotency-Key` or else `X-Gitlab-Event-UUID`,
//!   `X-Gitlab-Token: <secret>`)
//! - **generic** (`X-Cplane-Signature-256: sha256=<hex>`, optional `X-Cplane-Delivery`; body
//!   `{"ref": "refs/heads/main", "after": "<sha>"}`)
//!
//! Guarantees: a secret is required (there is no unauthenticated mode); signatures and tokens
//! are compared in constant time (GitLab's token by its SHA-256, so that not even its length
//! shows); a source address over its rate is answered `429` before its body is read
//! ([`RateLimit`]); bodies over the limit are refused before parsing; a delivery id recorded
//! before — in memory, or in a store the server's replicas share ([`Deliveries`]) — is
//! acknowledged and ignored; pushes to other branches and other events are acknowledged and
//! ignored. A valid push calls the trigger, which the server coalesces with a reconcile already
//! in flight. Pull- and merge-request events (GitHub and Gitea `pull_request`, GitLab `Merge
//! Request Hook`) into the watched branch are verified alike and handed to the server's
//! planner when it has one ([`router_with_pull_requests`], [`PullRequest`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

mod limit;
mod pull_request;

pub use limit::{Limiter, RateLimit, MAX_SOURCES};
pub use pull_request::PullRequest;

/// Default largest body accepted: GitHub caps payloads at 25 MB, but a push to a state repo is
/// small; 1 MiB keeps a flood cheap.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// Who sent the hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sender {
    /// GitHub.
    GitHub,
    /// Gitea (and Forgejo).
    Gitea,
    /// GitLab.
    GitLab,
    /// Any sender signing with HMAC-SHA256 in `X-Cplane-Signature-256`.
    Generic,
}

/// A verified push to the watched branch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Push {
    /// Sender.
    pub sender: Sender,
    /// Delivery id, when the sender gives one.
    pub delivery: Option<String>,
    /// Branch name (without `refs/heads/`).
    pub branch: String,
    /// Commit the branch now points at, when given.
    pub after: Option<String>,
}

/// What a delivery amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A push to the watched branch: reconcile.
    Trigger(Push),
    /// A pull or merge request into the watched branch opened, reopened or pushed to: plan
    /// its head.
    PullRequest(PullRequest),
    /// Authentic, but nothing to do (another branch, a tag, a ping, …).
    Ignored(String),
}

/// Why a delivery is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// No recognisable signature or token header.
    #[error("no signature: send X-Hub-Signature-256, X-Gitea-Signature, X-Gitlab-Token or X-Cplane-Signature-256")]
    Unsigned,
    /// The signature or token does not match the secret.
    #[error("signature does not match")]
    BadSignature,
    /// The body is not the JSON a push carries.
    #[error("payload: {0}")]
    Payload(String),
}

impl Error {
    /// The HTTP status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Unsigned | Error::BadSignature => StatusCode::UNAUTHORIZED,
            Error::Payload(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Verification settings.
#[derive(Clone)]
pub struct Config {
    secret: Arc<[u8]>,
    branch: String,
}

impl Config {
    /// `secret` must not be empty: there is no unauthenticated mode.
    pub fn new(secret: &[u8], branch: &str) -> Option<Self> {
        (!secret.is_empty()).then(|| Self {
            secret: secret.into(),
            branch: branch.trim_start_matches("refs/heads/").to_owned(),
        })
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("secret", &"<redacted>")
            .field("branch", &self.branch)
            .finish()
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Constant-time check of `hex(HMAC-SHA256(secret, body))` against `given` (hex, any case).
fn hmac_matches(secret: &[u8], body: &[u8], given_hex: &str) -> bool {
    let Ok(given) = hex::decode(given_hex.trim()) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// Constant-time check of a shared token (GitLab's `X-Gitlab-Token`) against the secret that
/// does not leak the secret's length either: comparing the bytes directly would stop at the
/// first length mismatch, so the SHA-256 digests of both (always 32 bytes) are compared.
fn token_matches(secret: &[u8], given: &[u8]) -> bool {
    use sha2::Digest as _;
    Sha256::digest(secret).ct_eq(&Sha256::digest(given)).into()
}

/// What kind of event a delivery carries, by its sender's event header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Push,
    PullRequest,
    Other,
}

/// Verifies and interprets one delivery. Pure: no I/O, no state.
pub fn verify(headers: &HeaderMap, body: &[u8], config: &Config) -> Result<Verdict, Error> {
    let secret = &config.secret[..];
    let github_event = |h| match header(h, "x-github-event") {
        Some("push") => Event::Push,
        Some("pull_request") => Event::PullRequest,
        _ => Event::Other,
    };
    let gitea_event = |h| match header(h, "x-gitea-event") {
        Some("push") => Event::Push,
        Some("pull_request") => Event::PullRequest,
        _ => Event::Other,
    };
    let (sender, event, delivery) = if let Some(token) = header(headers, "x-gitlab-token") {
        if !token_matches(secret, token.as_bytes()) {
            return Err(Error::BadSignature);
        }
        let event = match header(headers, "x-gitlab-event").unwrap_or("") {
            "Push Hook" | "System Hook" => Event::Push,
            "Merge Request Hook" => Event::PullRequest,
            _ => Event::Other,
        };
        (
            Sender::GitLab,
            event,
            // GitLab keeps `Idempotency-Key` across retries of one event (since 17.4);
            // `X-Gitlab-Event-UUID` is the fallback of older versions.
            header(headers, "idempotency-key").or(header(headers, "x-gitlab-event-uuid")),
        )
    } else if let Some(sig) = header(headers, "x-gitea-signature") {
        if !hmac_matches(secret, body, sig) {
            return Err(Error::BadSignature);
        }
        (
            Sender::Gitea,
            gitea_event(headers),
            header(headers, "x-gitea-delivery"),
        )
    } else if let Some(sig) = header(headers, "x-hub-signature-256") {
        let ok = sig
            .strip_prefix("sha256=")
            .is_some_and(|hex| hmac_matches(secret, body, hex));
        if !ok {
            return Err(Error::BadSignature);
        }
        if headers.contains_key("x-gitea-event") {
            (
                Sender::Gitea,
                gitea_event(headers),
                header(headers, "x-gitea-delivery"),
            )
        } else {
            (
                Sender::GitHub,
                github_event(headers),
                header(headers, "x-github-delivery"),
            )
        }
    } else if let Some(sig) = header(headers, "x-cplane-signature-256") {
        let ok = sig
            .strip_prefix("sha256=")
            .is_some_and(|hex| hmac_matches(secret, body, hex));
        if !ok {
            return Err(Error::BadSignature);
        }
        (
            Sender::Generic,
            Event::Push,
            header(headers, "x-cplane-delivery"),
        )
    } else {
        return Err(Error::Unsigned);
    };
    let delivery = delivery.map(str::to_owned);
    match event {
        Event::Other => Ok(Verdict::Ignored("not a push or pull request event".into())),
        Event::PullRequest => pull_request::interpret(sender, delivery, body, &config.branch),
        Event::Push => push(sender, delivery, body, &config.branch),
    }
}

/// A push delivery's verdict.
fn push(
    sender: Sender,
    delivery: Option<String>,
    body: &[u8],
    watched: &str,
) -> Result<Verdict, Error> {
    #[derive(serde::Deserialize)]
    struct Payload {
        #[serde(rename = "ref")]
        git_ref: String,
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        deleted: bool,
    }
    let payload: Payload =
        serde_json::from_slice(body).map_err(|e| Error::Payload(e.to_string()))?;
    let Some(branch) = payload.git_ref.strip_prefix("refs/heads/") else {
        return Ok(Verdict::Ignored(format!(
            "{} is not a branch",
            payload.git_ref
        )));
    };
    if branch != watched {
        return Ok(Verdict::Ignored(format!(
            "branch {branch} is not watched ({watched})"
        )));
    }
    if payload.deleted {
        return Ok(Verdict::Ignored(format!(
            "branch {branch} was deleted; keeping the last good revision"
        )));
    }
    Ok(Verdict::Trigger(Push {
        sender,
        delivery,
        branch: branch.to_owned(),
        after: payload.after,
    }))
}

/// A boxed future of [`Deliveries::first_seen`].
pub type FirstSeen<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, String>> + Send + 'a>>;

/// Where delivery ids are recorded, so that each delivery is acted on once — by one process
/// ([`RecentDeliveries`]) or by every replica sharing a database (the server's).
pub trait Deliveries: Send + Sync {
    /// Records `key` (`<sender>:<delivery id>`): `Ok(true)` the first time, `Ok(false)` when it
    /// was recorded before. `Err` when it cannot tell (the delivery is then acted on: running
    /// a reconcile twice is harmless, missing a push is not).
    fn first_seen<'a>(&'a self, key: &'a str) -> FirstSeen<'a>;
}

/// The last `capacity` delivery ids, in memory: de-duplication within one process.
#[derive(Debug)]
pub struct RecentDeliveries(Mutex<Seen>);

impl RecentDeliveries {
    /// Remembers the last `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        Self(Mutex::new(Seen {
            order: VecDeque::new(),
            set: HashSet::new(),
            capacity: capacity.max(1),
        }))
    }
}

impl Deliveries for RecentDeliveries {
    fn first_seen<'a>(&'a self, key: &'a str) -> FirstSeen<'a> {
        let first = self.0.lock().expect("seen lock").insert(key);
        Box::pin(std::future::ready(Ok(first)))
    }
}

/// Delivery ids seen recently (bounded), for de-duplication of redeliveries.
#[derive(Debug)]
struct Seen {
    order: VecDeque<String>,
    set: HashSet<String>,
    capacity: usize,
}

impl Seen {
    /// Records `id`; false when it was already there.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(id.to_owned());
        self.set.insert(id.to_owned());
        true
    }
}

/// Called for every verified push to the watched branch.
pub type Trigger = Arc<dyn Fn(Push) + Send + Sync>;

/// Called for every verified pull- or merge-request event that asks for a plan
/// ([`Verdict::PullRequest`]). It should return at once (forges give up on a delivery after
/// about ten seconds): plan and post from a task of its own.
pub type PullRequestTrigger = Arc<dyn Fn(PullRequest) + Send + Sync>;

/// What the router accepts: body size, rate per source, and where delivery ids are recorded.
#[derive(Clone)]
pub struct Limits {
    /// Largest body accepted (`413` above).
    pub max_body: usize,
    /// Deliveries per source address (`429` above); `None`: unlimited.
    pub rate: Option<RateLimit>,
    /// Where delivery ids are recorded.
    pub deliveries: Arc<dyn Deliveries>,
}

impl Default for Limits {
    /// [`DEFAULT_MAX_BODY`], [`RateLimit::default`], the last 4096 ids in memory.
    fn default() -> Self {
        Self {
            max_body: DEFAULT_MAX_BODY,
            rate: Some(RateLimit::default()),
            deliveries: Arc::new(RecentDeliveries::new(4096)),
        }
    }
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("max_body", &self.max_body)
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Hook {
    config: Config,
    trigger: Trigger,
    pull_requests: Option<PullRequestTrigger>,
    deliveries: Arc<dyn Deliveries>,
}

/// The router with [`Limits::default`] but for `max_body`: see [`router_with_limits`].
pub fn router(config: Config, trigger: Trigger, max_body: usize) -> Router {
    router_with_limits(
        config,
        trigger,
        Limits {
            max_body,
            ..Limits::default()
        },
    )
}

/// The router: `POST /v1/webhooks/git`. Answers `202` with `{"triggered": true, …}` for a push
/// to the watched branch, `200` with `{"ignored": reason}` for an authentic delivery with nothing
/// to do (including a delivery id recorded before), `401` for a missing or wrong signature,
/// `400` for a malformed payload, `413` above `max_body` bytes, and `429` with `Retry-After`
/// (seconds) when the source address has sent more than its rate — checked first, before the
/// body is read. The source is the request's `ConnectInfo<SocketAddr>` extension; requests
/// without one share a bucket.
pub fn router_with_limits(config: Config, trigger: Trigger, limits: Limits) -> Router {
    router_with_pull_requests(config, trigger, None, limits)
}

/// [`router_with_limits`] that also hands pull- and merge-request events to `pull_requests`
/// (`202` with `{"planning": true, "pull_request": …}`); without it they are acknowledged
/// and ignored.
pub fn router_with_pull_requests(
    config: Config,
    trigger: Trigger,
    pull_requests: Option<PullRequestTrigger>,
    limits: Limits,
) -> Router {
    let Limits {
        max_body,
        rate,
        deliveries,
    } = limits;
    let hook = Hook {
        config,
        trigger,
        pull_requests,
        deliveries,
    };
    let mut route = post(deliver).layer(DefaultBodyLimit::max(max_body));
    if let Some(rate) = rate {
        let limiter = Arc::new(limit::Limiter::new(rate));
        route = route.layer(axum::middleware::from_fn_with_state(limiter, rate_limit));
    }
    Router::new()
        .route("/v1/webhooks/git", route)
        .with_state(hook)
}

/// `429` with `Retry-After` when the request's source is over its rate.
async fn rate_limit(
    State(limiter): State<Arc<limit::Limiter>>,
    request: Request,
    next: Next,
) -> Response {
    let source = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    match limiter.check(source) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            tracing::debug!(source = ?source, retry_after = secs, "webhook rate limited");
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(axum::http::header::RETRY_AFTER, secs.to_string())],
                Json(serde_json::json!({
                    "error": format!("too many deliveries from this source; retry in {secs} s")
                })),
            )
                .into_response()
        }
    }
}

/// The key a delivery is recorded under: `<sender>:<id>`, the id replaced by its SHA-256 when
/// it is long or not printable ASCII (it comes from the sender, and is stored).
fn delivery_key(sender: Sender, id: &str) -> String {
    let sender = match sender {
        Sender::GitHub => "github",
        Sender::Gitea => "gitea",
        Sender::GitLab => "gitlab",
        Sender::Generic => "generic",
    };
    if id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) {
        format!("{sender}:{id}")
    } else {
        use sha2::Digest as _;
        format!(
            "{sender}:sha256:{}",
            hex::encode(Sha256::digest(id.as_bytes()))
        )
    }
}

/// Records a delivery id: `Some(answer)` when it was seen before.
async fn seen_before(
    hook: &Hook,
    sender: Sender,
    delivery: Option<&String>,
) -> Option<(StatusCode, Json<serde_json::Value>)> {
    let id = delivery?;
    match hook.deliveries.first_seen(&delivery_key(sender, id)).await {
        Ok(true) => None,
        Ok(false) => Some((
            StatusCode::OK,
            Json(serde_json::json!({ "ignored": format!("duplicate delivery {id}") })),
        )),
        Err(e) => {
            tracing::warn!(error = %e, delivery = %id, "recording the delivery failed; acting on it");
            None
        }
    }
}

async fn deliver(
    State(hook): State<Hook>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Json<serde_json::Value>) {
    match verify(&headers, &body, &hook.config) {
        Err(e) => {
            tracing::warn!(error = %e, "webhook refused");
            (
                e.status(),
                Json(serde_json::json!({ "error": e.to_string() })),
            )
        }
        Ok(Verdict::Ignored(reason)) => (
            StatusCode::OK,
            Json(serde_json::json!({ "ignored": reason })),
        ),
        Ok(Verdict::PullRequest(request)) => {
            let Some(on_request) = &hook.pull_requests else {
                return (
                    StatusCode::OK,
                    Json(serde_json::json!({
                        "ignored": "pull request events are not planned here (no forge configured)"
                    })),
                );
            };
            if let Some(answer) =
                seen_before(&hook, request.sender, request.delivery.as_ref()).await
            {
                return answer;
            }
            tracing::info!(sender = ?request.sender, number = request.number, head = %request.head, "pull request: plan");
            on_request(request.clone());
            (
                StatusCode::ACCEPTED,
                Json(serde_json::json!({ "planning": true, "pull_request": request })),
            )
        }
        Ok(Verdict::Trigger(push)) => {
            if let Some(answer) = seen_before(&hook, push.sender, push.delivery.as_ref()).await {
                return answer;
            }
            tracing::info!(sender = ?push.sender, branch = %push.branch, after = ?push.after, "push: reconcile");
            (hook.trigger)(push.clone());
            (
                StatusCode::ACCEPTED,
                Json(serde_json::json!({ "triggered": true, "push": push })),
            )
        }
    }
}
