//! A recording test forge: the REST endpoints of GitHub, GitLab or Gitea that cplane's forge
//! adapter (`reconciler/src/adapters/forge.rs`) calls, served by axum on 127.0.0.1, in memory,
//! every request recorded; and the forge's side of git (pull-request refs in the project's
//! bare repository) and of webhooks (signed request events).
//!
//! Emulated faithfully, one forge per server ([`ForgeKind`]), for one project:
//! - **Authentication**, as each forge reads it: GitHub `Authorization: Bearer <t>` or
//!   `token <t>` (else `401 {"message": "Bad credentials"}`), and a `User-Agent` header
//!   (without one GitHub answers `403` "Request forbidden by administrative rules");
//!   GitLab `PRIVATE-TOKEN: <t>` or `Authorization: Bearer <t>` (else `401 {"message": "401
//!   Unauthorized"}`); Gitea `Authorization: token <t>` or `Bearer <t>` (else `401`). Another
//!   project is `404`.
//! - **Commit statuses**: GitHub and Gitea `POST /repos/{o}/{r}/statuses/{sha}` (`state`
//!   `error|failure|pending|success`, Gitea also `warning`, else `422`; `context` default
//!   `default`) → `201`; GitLab `POST /projects/{id}/statuses/{sha}` (`state`
//!   `pending|running|success|failed|canceled`, `name` default `default`) → `201`, and `400`
//!   "Cannot transition status via :… from :…" when the (sha, name) already has that state.
//! - **Comments**: GitHub `GET /repos/{o}/{r}/issues/{n}/comments?per_page=&page=` (30 per
//!   page by default, at most 100), Gitea the same path unpaged; `POST` there → `201`; `PATCH
//!   /repos/{o}/{r}/issues/comments/{id}` → `200`. GitLab *notes*: `GET
//!   /projects/{id}/merge_requests/{iid}/notes?per_page=&page=` (20 by default, at most 100;
//!   with `system` notes), `POST` → `201`, `PUT …/notes/{id}` → `200`. A request that does not
//!   exist is `404`.
//! - **Requests**: GitHub `GET /repos/{o}/{r}/pulls?state=&head=owner:branch&base=`, Gitea
//!   `GET /repos/{o}/{r}/pulls?state=&page=&limit=` (no head filter, as Gitea's API), GitLab
//!   `GET /projects/{id}/merge_requests?state=opened&source_branch=&target_branch=`; creating
//!   one (`POST …/pulls` `{title, head, base, body}`, GitLab `POST …/merge_requests`
//!   `{source_branch, target_branch, title, description}`) needs both branches in the
//!   project's repository (else `422`), refuses a second open request for the same branches
//!   (GitHub `422` "A pull request already exists for …", GitLab and Gitea `409`), and — as
//!   the forges do — writes the head ref `refs/pull/{n}/head` (GitLab
//!   `refs/merge-requests/{iid}/head`) into the repository.
//! - **Webhooks**: [`ForgeServer::event`] builds the delivery a forge sends when a request is
//!   opened or pushed to (headers, signature or token, payload), after moving the head ref to
//!   the branch's tip as the forge does on a push.
//!
//! Not emulated: pagination `Link` headers (clients here stop on a short page), rate limits,
//! request reviews, merging, labels, permissions beyond one token, forks (heads come from the
//! project's own branches), GitLab's numeric project ids, status transitions other than the
//! same-state refusal, Markdown rendering, comment authorship checks (any comment may be
//! edited with the token).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Value};

/// Which forge the server plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForgeKind {
    /// GitHub (REST v3, at the root like `api.github.com`).
    GitHub,
    /// GitLab (REST v4 under `/api/v4`).
    GitLab,
    /// Gitea (REST v1 under `/api/v1`).
    Gitea,
}

impl ForgeKind {
    /// The value of `cplane serve --forge`.
    pub fn flag(self) -> &'static str {
        match self {
            ForgeKind::GitHub => "github",
            ForgeKind::GitLab => "gitlab",
            ForgeKind::Gitea => "gitea",
        }
    }
}

/// A commit status as posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitStatus {
    /// Commit.
    pub sha: String,
    /// `success`, `failure`/`failed`, `pending`, …
    pub state: String,
    /// `context` (GitHub, Gitea) or `name` (GitLab).
    pub context: String,
    /// Description.
    pub description: String,
    /// Link.
    pub target_url: String,
}

/// A comment (GitLab: note) on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    /// Id.
    pub id: u64,
    /// The request's number.
    pub number: u64,
    /// Markdown.
    pub body: String,
    /// A GitLab system note ("added 1 commit").
    pub system: bool,
    /// How many times it was edited.
    pub edits: u32,
}

/// A pull (merge) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// Number (GitLab: iid).
    pub number: u64,
    /// Source branch.
    pub head: String,
    /// Target branch.
    pub base: String,
    /// Title.
    pub title: String,
    /// Description.
    pub body: String,
    /// Open.
    pub open: bool,
}

/// One handled request: method, path with query, JSON body (`Null` when none).
#[derive(Debug, Clone)]
pub struct Call {
    /// Method.
    pub method: String,
    /// Path and query, under the API base.
    pub path: String,
    /// Body.
    pub body: Value,
}

#[derive(Debug)]
struct World {
    kind: ForgeKind,
    owner: String,
    name: String,
    token: String,
    git: PathBuf,
    web: String,
    statuses: Vec<CommitStatus>,
    comments: Vec<Comment>,
    requests: BTreeMap<u64, PullRequest>,
    next_id: u64,
    log: Vec<Call>,
}

/// The server. Cheap to clone.
#[derive(Clone)]
pub struct ForgeServer {
    /// The REST API base URL (`--forge-api-url`).
    pub api_url: String,
    /// The project (`--forge-repo`): `owner/name`.
    pub repo: String,
    world: Arc<Mutex<World>>,
}

impl ForgeServer {
    /// Serves `kind` for project `owner/name`, whose git repository is the bare `git`, to
    /// callers with `token`.
    pub fn start(kind: ForgeKind, repo: &str, token: &str, git: &std::path::Path) -> Self {
        let (owner, name) = repo.split_once('/').expect("owner/name");
        let world = Arc::new(Mutex::new(World {
            kind,
            owner: owner.to_owned(),
            name: name.to_owned(),
            token: token.to_owned(),
            git: git.to_owned(),
            web: String::new(),
            statuses: Vec::new(),
            comments: Vec::new(),
            requests: BTreeMap::new(),
            next_id: 1000,
            log: Vec::new(),
        }));
        let app = Router::new().fallback(handle).with_state(world.clone());
        let url = crate::faults::serve_in_background(app);
        world.lock().expect("forge").web = format!("{url}/web");
        let api_url = match kind {
            ForgeKind::GitHub => url,
            ForgeKind::GitLab => format!("{url}/api/v4"),
            ForgeKind::Gitea => format!("{url}/api/v1"),
        };
        Self {
            api_url,
            repo: repo.to_owned(),
            world,
        }
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().expect("forge lock")
    }

    /// Every status posted, oldest first.
    pub fn statuses(&self) -> Vec<CommitStatus> {
        self.world().statuses.clone()
    }

    /// The last status posted on `sha` with `context`.
    pub fn status(&self, sha: &str, context: &str) -> Option<CommitStatus> {
        self.world()
            .statuses
            .iter()
            .rev()
            .find(|s| s.sha == sha && s.context == context)
            .cloned()
    }

    /// The comments of request `number` that people wrote (no system notes), oldest first.
    pub fn comments(&self, number: u64) -> Vec<Comment> {
        self.world()
            .comments
            .iter()
            .filter(|c| c.number == number && !c.system)
            .cloned()
            .collect()
    }

    /// Every request.
    pub fn requests(&self) -> Vec<PullRequest> {
        self.world().requests.values().cloned().collect()
    }

    /// Handled requests, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.world().log.clone()
    }

    /// Handled requests with `method` whose path contains `part`.
    pub fn count(&self, method: &str, part: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.method == method && c.path.contains(part))
            .count()
    }

    /// A comment somebody else wrote on request `number` (to check cplane edits only its own).
    pub fn comment_as_user(&self, number: u64, body: &str) -> u64 {
        let mut w = self.world();
        w.next_id += 1;
        let id = w.next_id;
        w.comments.push(Comment {
            id,
            number,
            body: body.to_owned(),
            system: false,
            edits: 0,
        });
        id
    }

    /// Opens a request from `head` into `base` as a user would on the forge's web page: its
    /// number.
    pub fn open_request(&self, head: &str, base: &str, title: &str) -> u64 {
        let mut w = self.world();
        match create_request(&mut w, head, base, title, "") {
            Ok(n) => n,
            Err(e) => panic!("opening a request: {e:?}"),
        }
    }

    /// The delivery the forge sends when request `number` is opened (`opened: true`) or its
    /// branch pushed to: (headers, body), signed with `secret` as the forge signs. The
    /// request's head ref first moves to its branch's tip, as the forge does on a push.
    pub fn event(
        &self,
        number: u64,
        opened: bool,
        secret: &str,
    ) -> (Vec<(&'static str, String)>, Vec<u8>) {
        let mut w = self.world();
        let request = w.requests.get(&number).cloned().expect("no such request");
        let head = point_head_ref(&w, &request).expect("the request's branch");
        w.next_id += 1;
        let delivery = format!("delivery-{}", w.next_id);
        let kind = w.kind;
        let (web, owner, name) = (w.web.clone(), w.owner.clone(), w.name.clone());
        if kind == ForgeKind::GitLab && !opened {
            // GitLab notes each push on the merge request.
            w.next_id += 1;
            let id = w.next_id;
            w.comments.push(Comment {
                id,
                number,
                body: "added 1 commit".into(),
                system: true,
                edits: 0,
            });
        }
        drop(w);
        match kind {
            ForgeKind::GitHub | ForgeKind::Gitea => {
                let action = match (opened, kind) {
                    (true, _) => "opened",
                    (false, ForgeKind::GitHub) => "synchronize",
                    (false, _) => "synchronized",
                };
                let body = json!({
                    "action": action,
                    "number": number,
                    "pull_request": {
                        "number": number,
                        "state": "open",
                        "title": request.title,
                        "html_url": format!("{web}/{owner}/{name}/pull/{number}"),
                        "head": {"ref": request.head, "sha": head},
                        "base": {"ref": request.base, "sha": "0000000000000000000000000000000000000000"},
                    },
                    "repository": {"full_name": format!("{owner}/{name}")},
                })
                .to_string()
                .into_bytes();
                let sig = crate::serve::hmac_hex(secret.as_bytes(), &body);
                let headers = if kind == ForgeKind::GitHub {
                    vec![
                        ("X-GitHub-Event", "pull_request".to_owned()),
                        ("X-GitHub-Delivery", delivery),
                        ("X-Hub-Signature-256", format!("sha256={sig}")),
                        ("Content-Type", "application/json".to_owned()),
                    ]
                } else {
                    vec![
                        ("X-Gitea-Event", "pull_request".to_owned()),
                        ("X-Gitea-Delivery", delivery),
                        ("X-Gitea-Signature", sig),
                        ("Content-Type", "application/json".to_owned()),
                    ]
                };
                (headers, body)
            }
            ForgeKind::GitLab => {
                let mut attributes = json!({
                    "iid": number,
                    "title": request.title,
                    "state": "opened",
                    "action": if opened { "open" } else { "update" },
                    "source_branch": request.head,
                    "target_branch": request.base,
                    "url": format!("{web}/{owner}/{name}/-/merge_requests/{number}"),
                    "last_commit": {"id": head},
                });
                if !opened {
                    attributes["oldrev"] = json!("1111111111111111111111111111111111111111");
                }
                let body = json!({
                    "object_kind": "merge_request",
                    "event_type": "merge_request",
                    "project": {"path_with_namespace": format!("{owner}/{name}")},
                    "object_attributes": attributes,
                })
                .to_string()
                .into_bytes();
                let headers = vec![
                    ("X-Gitlab-Event", "Merge Request Hook".to_owned()),
                    ("X-Gitlab-Token", secret.to_owned()),
                    ("Idempotency-Key", delivery),
                    ("Content-Type", "application/json".to_owned()),
                ];
                (headers, body)
            }
        }
    }
}

/// The head ref a forge keeps for request `number`.
fn head_ref(kind: ForgeKind, number: u64) -> String {
    match kind {
        ForgeKind::GitLab => format!("refs/merge-requests/{number}/head"),
        ForgeKind::GitHub | ForgeKind::Gitea => format!("refs/pull/{number}/head"),
    }
}

/// Points the request's head ref at its branch's tip: the tip.
fn point_head_ref(w: &World, request: &PullRequest) -> Result<String, String> {
    let repo = git2::Repository::open_bare(&w.git).map_err(|e| e.to_string())?;
    let tip = repo
        .refname_to_id(&format!("refs/heads/{}", request.head))
        .map_err(|e| e.to_string())?;
    repo.reference(
        &head_ref(w.kind, request.number),
        tip,
        true,
        "forge: request head",
    )
    .map_err(|e| e.to_string())?;
    Ok(tip.to_string())
}

/// What creating a request can run into.
#[derive(Debug)]
enum CreateError {
    MissingBranch(String),
    Exists(u64),
}

fn create_request(
    w: &mut World,
    head: &str,
    base: &str,
    title: &str,
    body: &str,
) -> Result<u64, CreateError> {
    let repo = git2::Repository::open_bare(&w.git)
        .map_err(|e| CreateError::MissingBranch(e.to_string()))?;
    for branch in [head, base] {
        if repo.refname_to_id(&format!("refs/heads/{branch}")).is_err() {
            return Err(CreateError::MissingBranch(branch.to_owned()));
        }
    }
    if let Some(r) = w
        .requests
        .values()
        .find(|r| r.open && r.head == head && r.base == base)
    {
        return Err(CreateError::Exists(r.number));
    }
    let number = w.requests.keys().next_back().copied().unwrap_or(0) + 1;
    let request = PullRequest {
        number,
        head: head.to_owned(),
        base: base.to_owned(),
        title: title.to_owned(),
        body: body.to_owned(),
        open: true,
    };
    point_head_ref(w, &request).map_err(CreateError::MissingBranch)?;
    w.requests.insert(number, request);
    Ok(number)
}

fn message(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "message": message }))).into_response()
}

fn not_found(kind: ForgeKind) -> Response {
    match kind {
        ForgeKind::GitLab => message(StatusCode::NOT_FOUND, "404 Not found"),
        _ => message(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// The token a request carries, read as the forge reads it: the refusal, if any.
fn refusal(w: &World, headers: &HeaderMap) -> Option<Response> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let authorization = header("authorization").unwrap_or("");
    let bearer = authorization.strip_prefix("Bearer ");
    let token = match w.kind {
        ForgeKind::GitHub => {
            if header("user-agent").is_none_or(str::is_empty) {
                return Some((
                    StatusCode::FORBIDDEN,
                    "Request forbidden by administrative rules. Please make sure your request has a User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). Check https://developer.github.com for other possible causes.\n",
                )
                    .into_response());
            }
            bearer.or(authorization.strip_prefix("token "))
        }
        ForgeKind::Gitea => bearer.or(authorization.strip_prefix("token ")),
        ForgeKind::GitLab => header("private-token").or(bearer),
    };
    if token == Some(w.token.as_str()) {
        return None;
    }
    Some(match w.kind {
        ForgeKind::GitHub => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401"})),
        )
            .into_response(),
        ForgeKind::GitLab => message(StatusCode::UNAUTHORIZED, "401 Unauthorized"),
        ForgeKind::Gitea => message(StatusCode::UNAUTHORIZED, "user does not exist"),
    })
}

/// `page` and `per_page` (or Gitea's `limit`) of a listing.
fn page_of<T: Clone>(items: &[T], query: &BTreeMap<String, String>, default: usize) -> Vec<T> {
    let per = query
        .get("per_page")
        .or_else(|| query.get("limit"))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(default)
        .clamp(1, 100);
    let page = query
        .get("page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    items
        .iter()
        .skip((page - 1) * per)
        .take(per)
        .cloned()
        .collect()
}

async fn handle(
    State(world): State<Arc<Mutex<World>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut w = world.lock().expect("forge lock");
    if let Some(refused) = refusal(&w, &headers) {
        return refused;
    }
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return message(
                    StatusCode::BAD_REQUEST,
                    &format!("Problems parsing JSON: {e}"),
                )
            }
        }
    };
    let query: BTreeMap<String, String> =
        serde_urlencoded::from_str(uri.query().unwrap_or("")).unwrap_or_default();
    let path = uri.path().to_owned();
    let kind = w.kind;
    // The project's part of the path, and the rest.
    let (project, rest) = match kind {
        ForgeKind::GitHub | ForgeKind::Gitea => {
            let prefix = if kind == ForgeKind::Gitea {
                "/api/v1/repos/"
            } else {
                "/repos/"
            };
            let Some(tail) = path.strip_prefix(prefix) else {
                return not_found(kind);
            };
            let mut parts = tail.splitn(3, '/');
            let (o, n, rest) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            (format!("{o}/{n}"), rest.to_owned())
        }
        ForgeKind::GitLab => {
            let Some(tail) = path.strip_prefix("/api/v4/projects/") else {
                return not_found(kind);
            };
            let (id, rest) = tail.split_once('/').unwrap_or((tail, ""));
            (id.replace("%2F", "/").replace("%2f", "/"), rest.to_owned())
        }
    };
    if project != format!("{}/{}", w.owner, w.name) {
        return match kind {
            ForgeKind::GitLab => message(StatusCode::NOT_FOUND, "404 Project Not Found"),
            _ => not_found(kind),
        };
    }
    w.log.push(Call {
        method: method.to_string(),
        path: match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        },
        body: body.clone(),
    });
    let segments: Vec<&str> = rest.split('/').collect();
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let (web, owner, name) = (w.web.clone(), w.owner.clone(), w.name.clone());
    let request_json = |r: &PullRequest| match kind {
        ForgeKind::GitLab => json!({
            "iid": r.number, "id": r.number + 5000, "title": r.title, "description": r.body,
            "state": if r.open { "opened" } else { "closed" },
            "source_branch": r.head, "target_branch": r.base,
            "web_url": format!("{web}/{owner}/{name}/-/merge_requests/{}", r.number),
        }),
        _ => json!({
            "number": r.number, "id": r.number + 5000, "title": r.title, "body": r.body,
            "state": if r.open { "open" } else { "closed" },
            "head": {"ref": r.head, "label": format!("{owner}:{}", r.head)},
            "base": {"ref": r.base, "label": format!("{owner}:{}", r.base)},
            "html_url": format!("{web}/{owner}/{name}/pull/{}", r.number),
        }),
    };
    let comment_json = |c: &Comment| match kind {
        ForgeKind::GitLab => {
            json!({"id": c.id, "body": c.body, "system": c.system, "noteable_iid": c.number})
        }
        _ => {
            json!({"id": c.id, "body": c.body, "html_url": format!("{web}/{owner}/{name}/pull/{}#issuecomment-{}", c.number, c.id)})
        }
    };
    match (method.as_str(), segments.as_slice()) {
        // Commit statuses.
        ("POST", ["statuses", sha]) => {
            let state = str_of(&body, "state").unwrap_or_default();
            let allowed: &[&str] = match kind {
                ForgeKind::GitHub => &["error", "failure", "pending", "success"],
                ForgeKind::Gitea => &["error", "failure", "pending", "success", "warning"],
                ForgeKind::GitLab => &["pending", "running", "success", "failed", "canceled"],
            };
            if !allowed.contains(&state.as_str()) {
                return match kind {
                    ForgeKind::GitLab => {
                        message(StatusCode::BAD_REQUEST, "state does not have a valid value")
                    }
                    _ => message(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed"),
                };
            }
            let context = str_of(
                &body,
                if kind == ForgeKind::GitLab {
                    "name"
                } else {
                    "context"
                },
            )
            .unwrap_or_else(|| "default".into());
            if kind == ForgeKind::GitLab {
                let current = w
                    .statuses
                    .iter()
                    .rev()
                    .find(|s| s.sha == *sha && s.context == context)
                    .map(|s| s.state.clone());
                if current.as_deref() == Some(state.as_str()) {
                    let event = match state.as_str() {
                        "pending" => "enqueue",
                        "running" => "run",
                        "success" => "succeed",
                        "failed" => "drop",
                        _ => "cancel",
                    };
                    return message(
                        StatusCode::BAD_REQUEST,
                        &format!("Cannot transition status via :{event} from :{state}"),
                    );
                }
            }
            let status = CommitStatus {
                sha: (*sha).to_owned(),
                state: state.clone(),
                context: context.clone(),
                description: str_of(&body, "description").unwrap_or_default(),
                target_url: str_of(&body, "target_url").unwrap_or_default(),
            };
            w.statuses.push(status);
            (
                StatusCode::CREATED,
                Json(json!({"state": state, "context": context, "sha": sha})),
            )
                .into_response()
        }
        // Comments: GitHub and Gitea (issues), GitLab (merge request notes).
        ("GET", ["issues", n, "comments"]) | ("GET", ["merge_requests", n, "notes"])
            if (kind == ForgeKind::GitLab) == (segments[0] == "merge_requests") =>
        {
            let Some(number) = n.parse::<u64>().ok().filter(|n| w.requests.contains_key(n)) else {
                return not_found(kind);
            };
            let all: Vec<Value> = w
                .comments
                .iter()
                .filter(|c| c.number == number)
                .map(comment_json)
                .collect();
            let shown = match kind {
                ForgeKind::Gitea => all,
                ForgeKind::GitHub => page_of(&all, &query, 30),
                ForgeKind::GitLab => page_of(&all, &query, 20),
            };
            Json(Value::Array(shown)).into_response()
        }
        ("POST", ["issues", n, "comments"]) | ("POST", ["merge_requests", n, "notes"])
            if (kind == ForgeKind::GitLab) == (segments[0] == "merge_requests") =>
        {
            let Some(number) = n.parse::<u64>().ok().filter(|n| w.requests.contains_key(n)) else {
                return not_found(kind);
            };
            let Some(text) = str_of(&body, "body").filter(|b| !b.is_empty()) else {
                return message(StatusCode::UNPROCESSABLE_ENTITY, "body is missing");
            };
            w.next_id += 1;
            let comment = Comment {
                id: w.next_id,
                number,
                body: text,
                system: false,
                edits: 0,
            };
            let answer = comment_json(&comment);
            w.comments.push(comment);
            (StatusCode::CREATED, Json(answer)).into_response()
        }
        ("PATCH", ["issues", "comments", id]) if kind != ForgeKind::GitLab => {
            update_comment(&mut w, id, None, &body, comment_json)
        }
        ("PUT", ["merge_requests", n, "notes", id]) if kind == ForgeKind::GitLab => {
            let number = n.parse::<u64>().ok();
            update_comment(&mut w, id, number, &body, comment_json)
        }
        // Requests.
        ("GET", ["pulls"]) | ("GET", ["merge_requests"])
            if (kind == ForgeKind::GitLab) == (segments[0] == "merge_requests") =>
        {
            let wanted_state = query
                .get("state")
                .map(String::as_str)
                .unwrap_or(match kind {
                    ForgeKind::GitLab => "all",
                    _ => "open",
                });
            let mut list: Vec<&PullRequest> = w
                .requests
                .values()
                .filter(|r| match wanted_state {
                    "open" | "opened" => r.open,
                    "closed" => !r.open,
                    _ => true,
                })
                .collect();
            match kind {
                ForgeKind::GitHub => {
                    if let Some(head) = query.get("head") {
                        list.retain(|r| *head == format!("{owner}:{}", r.head));
                    }
                    if let Some(base) = query.get("base") {
                        list.retain(|r| r.base == *base);
                    }
                }
                ForgeKind::GitLab => {
                    if let Some(source) = query.get("source_branch") {
                        list.retain(|r| r.head == *source);
                    }
                    if let Some(target) = query.get("target_branch") {
                        list.retain(|r| r.base == *target);
                    }
                }
                ForgeKind::Gitea => {}
            }
            let all: Vec<Value> = list.into_iter().map(request_json).collect();
            let default = if kind == ForgeKind::Gitea { 50 } else { 30 };
            Json(Value::Array(page_of(&all, &query, default))).into_response()
        }
        ("POST", ["pulls"]) | ("POST", ["merge_requests"])
            if (kind == ForgeKind::GitLab) == (segments[0] == "merge_requests") =>
        {
            let (head, base, description) = match kind {
                ForgeKind::GitLab => (
                    str_of(&body, "source_branch"),
                    str_of(&body, "target_branch"),
                    str_of(&body, "description"),
                ),
                _ => (
                    str_of(&body, "head"),
                    str_of(&body, "base"),
                    str_of(&body, "body"),
                ),
            };
            let (Some(head), Some(base), Some(title)) = (head, base, str_of(&body, "title")) else {
                return message(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Validation Failed: title, head and base are required",
                );
            };
            match create_request(&mut w, &head, &base, &title, &description.unwrap_or_default()) {
                Ok(number) => {
                    let answer = request_json(&w.requests[&number]);
                    (StatusCode::CREATED, Json(answer)).into_response()
                }
                Err(CreateError::MissingBranch(b)) => message(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &format!("Validation Failed: branch {b} does not exist"),
                ),
                Err(CreateError::Exists(n)) => match kind {
                    ForgeKind::GitHub => (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        Json(json!({"message": "Validation Failed", "errors": [{"resource": "PullRequest", "code": "custom", "message": format!("A pull request already exists for {owner}:{head}.")}]})),
                    )
                        .into_response(),
                    ForgeKind::GitLab => (
                        StatusCode::CONFLICT,
                        Json(json!({"message": [format!("Another open merge request already exists for this source branch: !{n}")]})),
                    )
                        .into_response(),
                    ForgeKind::Gitea => message(
                        StatusCode::CONFLICT,
                        &format!("pull request already exists for these targets [id: {n}, issue_id: {n}, head_repo_id: 1, base_repo_id: 1, head_branch: {head}, base_branch: {base}]"),
                    ),
                },
            }
        }
        _ => not_found(kind),
    }
}

fn update_comment(
    w: &mut World,
    id: &str,
    number: Option<u64>,
    body: &Value,
    comment_json: impl Fn(&Comment) -> Value,
) -> Response {
    let kind = w.kind;
    let Some(text) = body
        .get("body")
        .and_then(Value::as_str)
        .filter(|b| !b.is_empty())
    else {
        return message(StatusCode::UNPROCESSABLE_ENTITY, "body is missing");
    };
    let Some(comment) = w.comments.iter_mut().find(|c| {
        id.parse::<u64>().ok() == Some(c.id) && number.is_none_or(|n| n == c.number) && !c.system
    }) else {
        return not_found(kind);
    };
    comment.body = text.to_owned();
    comment.edits += 1;
    Json(comment_json(comment)).into_response()
}
