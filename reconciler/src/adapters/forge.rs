//! The forge adapter: the REST calls cplane makes to the GitHub, GitLab or Gitea project that
//! hosts the state repo — a commit status and one comment on each pull (merge) request it
//! plans, and the pull request `?mode=pr` opens.
//!
//! Calls made (and all that the test forge in `tests/src/forge.rs` must answer), `{repo}`
//! being `{api}/repos/{owner}/{name}` (GitHub, Gitea) or `{api}/projects/{url-encoded path}`
//! (GitLab):
//!
//! | | GitHub | Gitea | GitLab |
//! |---|---|---|---|
//! | status | `POST {repo}/statuses/{sha}` | same | `POST {repo}/statuses/{sha}` (`name`, `failed`) |
//! | list comments | `GET {repo}/issues/{n}/comments?per_page=100&page=P` | `GET {repo}/issues/{n}/comments` | `GET {repo}/merge_requests/{iid}/notes?per_page=100&page=P` |
//! | create comment | `POST {repo}/issues/{n}/comments` | same | `POST {repo}/merge_requests/{iid}/notes` |
//! | update comment | `PATCH {repo}/issues/comments/{id}` | same | `PUT {repo}/merge_requests/{iid}/notes/{id}` |
//! | find open request | `GET {repo}/pulls?state=open&head={owner}:{branch}&base=B` | `GET {repo}/pulls?state=open&page=P&limit=50` (filtered here) | `GET {repo}/merge_requests?state=opened&source_branch=S&target_branch=B` |
//! | open request | `POST {repo}/pulls` | same | `POST {repo}/merge_requests` |
//!
//! Authentication: GitHub `Authorization: Bearer`, Gitea `Authorization: token`, GitLab
//! `PRIVATE-TOKEN`. Every call sends `User-Agent: cplane/<version>` (GitHub refuses calls
//! without one) and is bounded by the timeout of [`super::http::Client`].
//!
//! # Guarantees
//! - The token is read from its reference (environment variable or file) at each call, so a
//!   rotated file is picked up; it is sent only in the authentication header and appears in
//!   no error, log or `Debug`.
//! - One comment per request: the comment cplane writes carries [`MARKER`]; a later plan of the
//!   same request finds it and edits it in place ([`Forge::upsert_comment`]).
//! - Opening a request is idempotent: an open request from the same branch into the same base
//!   is returned instead of a second one ([`Forge::open_request`]), also when another call
//!   opened it between the look-up and the create.
//! - Calls whose repetition is harmless (reads, statuses, edits) are retried on throttling and
//!   server errors; creating a comment or a request is not (it would duplicate).

use axum::http::{Method, StatusCode};
use hyper::body::Bytes;
use serde_json::{json, Value};

use super::http::{Client, Response};
use cplane_schema::model::SecretRef;

/// The hidden line that marks the one comment cplane keeps on a request.
pub const MARKER: &str = "<!-- cplane-plan -->";

/// The status context (GitHub, Gitea) or name (GitLab) of cplane's plan.
pub const CONTEXT: &str = "cplane/plan";

/// Pages of comments or requests read at most (100 per page on GitHub and GitLab).
const MAX_PAGES: u32 = 50;

/// Which forge hosts the state repo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// GitHub (and GitHub Enterprise Server: `https://HOST/api/v3`).
    #[value(name = "github")]
    GitHub,
    /// GitLab (`https://HOST/api/v4`).
    #[value(name = "gitlab")]
    GitLab,
    /// Gitea and Forgejo (`https://HOST/api/v1`).
    #[value(name = "gitea")]
    Gitea,
}

impl Kind {
    /// What a request is called on this forge.
    pub fn request_noun(self) -> &'static str {
        match self {
            Kind::GitLab => "merge request",
            Kind::GitHub | Kind::Gitea => "pull request",
        }
    }
}

/// Where the state repo's project lives and how to sign in.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The forge.
    pub kind: Kind,
    /// Its REST API base URL (https; plain http only to a loopback address), e.g.
    /// `https://api.github.com`, `https://gitlab.com/api/v4`, `https://gitea.example/api/v1`.
    pub api_url: String,
    /// The project: `owner/name` (GitHub, Gitea), the path with namespace (GitLab,
    /// `group/sub/name`) or its numeric id.
    pub repo: String,
    /// The API token, by reference.
    pub token: SecretRef,
}

/// A commit status' state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Planning.
    Pending,
    /// Planned.
    Success,
    /// Invalid, or could not be planned.
    Failure,
}

/// A pull (merge) request cplane opened or found open.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Opened {
    /// Its number (GitLab: `iid`).
    pub number: u64,
    /// Its web page.
    pub url: String,
    /// Whether this call opened it (else it was open already).
    pub created: bool,
}

/// What [`Forge::upsert_comment`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comment {
    /// Created comment `id`.
    Created(u64),
    /// Edited comment `id` in place.
    Updated(u64),
}

/// Why a forge call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The settings are unusable (token not readable, project name malformed).
    #[error("forge: {0}")]
    Config(String),
    /// No answer.
    #[error(transparent)]
    Transport(#[from] super::http::Error),
    /// The forge answered with an error status.
    #[error("forge: {call}: {status} {message}")]
    Refused {
        /// Method and path.
        call: String,
        /// HTTP status.
        status: u16,
        /// The forge's message (or the start of its body).
        message: String,
    },
    /// The answer is not what the forge documents.
    #[error("forge: {call}: unexpected answer: {reason}")]
    Answer {
        /// Method and path.
        call: String,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// Whether a later attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport(_) => true,
            Error::Refused { status, .. } => *status == 429 || *status >= 500,
            Error::Config(_) | Error::Answer { .. } => false,
        }
    }
}

/// The forge client. Cheap to clone.
#[derive(Clone)]
pub struct Forge {
    settings: Settings,
    /// `{api}/repos/{owner}/{name}` or `{api}/projects/{id}`.
    base: String,
    http: Client,
}

impl std::fmt::Debug for Forge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forge")
            .field("kind", &self.settings.kind)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Whether `s` is a project path segment the forges allow.
fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Forge {
    /// A client for `settings`; the token is not read yet.
    pub fn new(settings: Settings) -> Result<Self, Error> {
        crate::auth::jwks::checked_uri(&settings.api_url)
            .map_err(|e| Error::Config(format!("API URL: {e}")))?;
        let api = settings.api_url.trim_end_matches('/');
        let segments: Vec<&str> = settings.repo.split('/').collect();
        let base = match settings.kind {
            Kind::GitHub | Kind::Gitea => {
                if segments.len() != 2 || !segments.iter().all(|s| segment_ok(s)) {
                    return Err(Error::Config(format!(
                        "repository `{}`: expected owner/name",
                        settings.repo
                    )));
                }
                format!("{api}/repos/{}", settings.repo)
            }
            Kind::GitLab => {
                if !segments.iter().all(|s| segment_ok(s)) {
                    return Err(Error::Config(format!(
                        "project `{}`: expected group/name (or a numeric id)",
                        settings.repo
                    )));
                }
                format!("{api}/projects/{}", segments.join("%2F"))
            }
        };
        Ok(Self {
            settings,
            base,
            http: Client::new(),
        })
    }

    /// The forge.
    pub fn kind(&self) -> Kind {
        self.settings.kind
    }

    fn token(&self) -> Result<String, Error> {
        crate::global::read_secret("forge token", &self.settings.token)
            .map_err(|e| Error::Config(e.to_string()))
    }

    /// One call: `path` under the project (`/statuses/…`) or, starting with `?`, its query.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        retry: bool,
    ) -> Result<Response, Error> {
        let token = self.token()?;
        let url = format!("{}{path}", self.base);
        let auth = match self.settings.kind {
            Kind::GitHub => ("authorization", format!("Bearer {token}")),
            Kind::Gitea => ("authorization", format!("token {token}")),
            Kind::GitLab => ("private-token", token),
        };
        let user_agent = concat!("cplane/", env!("CARGO_PKG_VERSION"));
        let mut headers: Vec<(&str, &str)> = vec![
            (auth.0, auth.1.as_str()),
            ("user-agent", user_agent),
            ("content-type", "application/json"),
        ];
        match self.settings.kind {
            Kind::GitHub => {
                headers.push(("accept", "application/vnd.github+json"));
                headers.push(("x-github-api-version", "2022-11-28"));
            }
            Kind::GitLab | Kind::Gitea => headers.push(("accept", "application/json")),
        }
        let body = body.map(|b| Bytes::from(b.to_string()));
        Ok(self.http.send(method, &url, &headers, body, retry).await?)
    }

    /// The call's name in errors (method and path, without the query).
    fn name(method: &Method, path: &str) -> String {
        format!("{method} {}", path.split('?').next().unwrap_or(path))
    }

    fn refused(method: &Method, path: &str, r: &Response) -> Error {
        let message = serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| {
                let m = v.get("message").or_else(|| v.get("error"))?;
                Some(match m {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
            })
            .unwrap_or_else(|| r.snippet());
        Error::Refused {
            call: Self::name(method, path),
            status: r.status.as_u16(),
            message,
        }
    }

    /// A call expected to answer `ok`: its body as JSON.
    async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        ok: StatusCode,
        retry: bool,
    ) -> Result<Value, Error> {
        let r = self.call(method.clone(), path, body, retry).await?;
        if r.status != ok {
            return Err(Self::refused(&method, path, &r));
        }
        serde_json::from_slice(&r.body).map_err(|e| Error::Answer {
            call: Self::name(&method, path),
            reason: e.to_string(),
        })
    }

    /// Posts `state` of cplane's plan on commit `sha`, with `description` (cut to the 140
    /// characters GitHub accepts) and a link.
    pub async fn set_status(
        &self,
        sha: &str,
        state: State,
        description: &str,
        target_url: &str,
    ) -> Result<(), Error> {
        if !sha.bytes().all(|b| b.is_ascii_hexdigit()) || sha.is_empty() {
            return Err(Error::Config(format!("`{sha}` is not a commit id")));
        }
        let description: String = description.chars().take(140).collect();
        let path = format!("/statuses/{sha}");
        let body = match self.settings.kind {
            Kind::GitHub | Kind::Gitea => json!({
                "state": match state { State::Pending => "pending", State::Success => "success", State::Failure => "failure" },
                "context": CONTEXT,
                "description": description,
                "target_url": target_url,
            }),
            Kind::GitLab => json!({
                "state": match state { State::Pending => "pending", State::Success => "success", State::Failure => "failed" },
                "name": CONTEXT,
                "description": description,
                "target_url": target_url,
            }),
        };
        let r = self.call(Method::POST, &path, Some(body), true).await?;
        if r.status == StatusCode::CREATED || r.status == StatusCode::OK {
            return Ok(());
        }
        let e = Self::refused(&Method::POST, &path, &r);
        // GitLab refuses a status equal to the current one ("Cannot transition status via
        // :succeed from :success"): that status is already there.
        if self.settings.kind == Kind::GitLab
            && r.status == StatusCode::BAD_REQUEST
            && matches!(&e, Error::Refused { message, .. } if message.contains("Cannot transition status"))
        {
            return Ok(());
        }
        Err(e)
    }

    /// The comments of request `number`: (id, body), oldest first.
    pub async fn comments(&self, number: u64) -> Result<Vec<(u64, String)>, Error> {
        let (path, paged) = match self.settings.kind {
            Kind::GitHub => (format!("/issues/{number}/comments?per_page=100"), true),
            Kind::Gitea => (format!("/issues/{number}/comments"), false),
            Kind::GitLab => (
                format!("/merge_requests/{number}/notes?per_page=100&sort=asc&order_by=created_at"),
                true,
            ),
        };
        let mut out = Vec::new();
        for page in 1..=MAX_PAGES {
            let path = if paged {
                format!("{path}&page={page}")
            } else {
                path.clone()
            };
            let v = self
                .json(Method::GET, &path, None, StatusCode::OK, true)
                .await?;
            let items = v.as_array().ok_or_else(|| Error::Answer {
                call: Self::name(&Method::GET, &path),
                reason: "not a list".into(),
            })?;
            for c in items {
                // GitLab's system notes ("added 1 commit") are not comments anyone wrote.
                if c.get("system").and_then(Value::as_bool) == Some(true) {
                    continue;
                }
                if let (Some(id), Some(body)) = (
                    c.get("id").and_then(Value::as_u64),
                    c.get("body").and_then(Value::as_str),
                ) {
                    out.push((id, body.to_owned()));
                }
            }
            if !paged || items.len() < 100 {
                break;
            }
        }
        Ok(out)
    }

    /// Writes `body` (which should carry [`MARKER`]; it is prepended otherwise) as cplane's one
    /// comment on request `number`: edits the comment that carries the marker, else creates it.
    pub async fn upsert_comment(&self, number: u64, body: &str) -> Result<Comment, Error> {
        let body = if body.contains(MARKER) {
            body.to_owned()
        } else {
            format!("{MARKER}\n{body}")
        };
        let existing = self
            .comments(number)
            .await?
            .into_iter()
            .find(|(_, b)| b.contains(MARKER))
            .map(|(id, _)| id);
        let payload = json!({ "body": body });
        match existing {
            Some(id) => {
                let (method, path) = match self.settings.kind {
                    Kind::GitHub | Kind::Gitea => (Method::PATCH, format!("/issues/comments/{id}")),
                    Kind::GitLab => (Method::PUT, format!("/merge_requests/{number}/notes/{id}")),
                };
                self.json(method, &path, Some(payload), StatusCode::OK, true)
                    .await?;
                Ok(Comment::Updated(id))
            }
            None => {
                let path = match self.settings.kind {
                    Kind::GitHub | Kind::Gitea => format!("/issues/{number}/comments"),
                    Kind::GitLab => format!("/merge_requests/{number}/notes"),
                };
                let v = self
                    .json(
                        Method::POST,
                        &path,
                        Some(payload),
                        StatusCode::CREATED,
                        false,
                    )
                    .await?;
                let id = v
                    .get("id")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| Error::Answer {
                        call: Self::name(&Method::POST, &path),
                        reason: "no comment id".into(),
                    })?;
                Ok(Comment::Created(id))
            }
        }
    }

    /// (number, web URL) of a request in a forge's answer.
    fn request_of(&self, v: &Value) -> Option<(u64, String)> {
        let (number, url) = match self.settings.kind {
            Kind::GitHub | Kind::Gitea => ("number", "html_url"),
            Kind::GitLab => ("iid", "web_url"),
        };
        Some((v.get(number)?.as_u64()?, v.get(url)?.as_str()?.to_owned()))
    }

    /// The open request from `branch` into `base`, if any.
    pub async fn find_open(&self, branch: &str, base: &str) -> Result<Option<Opened>, Error> {
        let query = |pairs: &[(&str, &str)]| serde_urlencoded::to_string(pairs).unwrap_or_default();
        let found = |v: &Value| {
            self.request_of(v).map(|(number, url)| Opened {
                number,
                url,
                created: false,
            })
        };
        match self.settings.kind {
            Kind::GitHub => {
                let owner = self.settings.repo.split('/').next().unwrap_or_default();
                let head = format!("{owner}:{branch}");
                let path = format!(
                    "/pulls?{}",
                    query(&[("state", "open"), ("head", &head), ("base", base)])
                );
                let v = self
                    .json(Method::GET, &path, None, StatusCode::OK, true)
                    .await?;
                Ok(v.as_array().and_then(|a| a.first()).and_then(found))
            }
            Kind::GitLab => {
                let path = format!(
                    "/merge_requests?{}",
                    query(&[
                        ("state", "opened"),
                        ("source_branch", branch),
                        ("target_branch", base)
                    ])
                );
                let v = self
                    .json(Method::GET, &path, None, StatusCode::OK, true)
                    .await?;
                Ok(v.as_array().and_then(|a| a.first()).and_then(found))
            }
            Kind::Gitea => {
                for page in 1..=MAX_PAGES {
                    let path = format!("/pulls?state=open&limit=50&page={page}");
                    let v = self
                        .json(Method::GET, &path, None, StatusCode::OK, true)
                        .await?;
                    let items = v.as_array().cloned().unwrap_or_default();
                    let hit = items.iter().find(|p| {
                        p.pointer("/head/ref").and_then(Value::as_str) == Some(branch)
                            && p.pointer("/base/ref").and_then(Value::as_str) == Some(base)
                    });
                    if let Some(p) = hit {
                        return Ok(found(p));
                    }
                    if items.len() < 50 {
                        break;
                    }
                }
                Ok(None)
            }
        }
    }

    /// Opens a request from `branch` into `base`, or returns the one open already.
    pub async fn open_request(
        &self,
        branch: &str,
        base: &str,
        title: &str,
        body: &str,
    ) -> Result<Opened, Error> {
        if let Some(open) = self.find_open(branch, base).await? {
            return Ok(open);
        }
        let (path, payload) = match self.settings.kind {
            Kind::GitHub | Kind::Gitea => (
                "/pulls",
                json!({ "title": title, "head": branch, "base": base, "body": body }),
            ),
            Kind::GitLab => (
                "/merge_requests",
                json!({
                    "title": title,
                    "source_branch": branch,
                    "target_branch": base,
                    "description": body,
                    "remove_source_branch": true,
                }),
            ),
        };
        let r = self.call(Method::POST, path, Some(payload), false).await?;
        if r.status == StatusCode::CREATED {
            let v: Value = serde_json::from_slice(&r.body).map_err(|e| Error::Answer {
                call: Self::name(&Method::POST, path),
                reason: e.to_string(),
            })?;
            let (number, url) = self.request_of(&v).ok_or_else(|| Error::Answer {
                call: Self::name(&Method::POST, path),
                reason: "no number or URL".into(),
            })?;
            return Ok(Opened {
                number,
                url,
                created: true,
            });
        }
        // Opened by another call meanwhile: GitHub answers 422, GitLab and Gitea 409.
        if matches!(r.status.as_u16(), 409 | 422) {
            if let Some(open) = self.find_open(branch, base).await? {
                return Ok(open);
            }
        }
        Err(Self::refused(&Method::POST, path, &r))
    }
}
