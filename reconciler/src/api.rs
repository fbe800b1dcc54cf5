//! The write API and the server's description: routes merged into `cplane serve`'s router.
//!
//! - `PUT /v1/workspaces/{id}` (body: the Workspace document as JSON, which replaces the
//!   file's; `201` created, `200` changed), `PATCH /v1/workspaces/{id}` (a JSON merge patch,
//!   RFC 7396, of that document), `DELETE /v1/workspaces/{id}`, `PUT
//!   /v1/workspaces/{id}/stacks/{name}` (body `{"values": {...}}`, which replaces the stack's
//!   values — keys left out are gone: enable, `201`, or re-value, `200`), `PATCH
//!   /v1/workspaces/{id}/stacks/{name}` (`{"values": {...}}` as a merge patch: `null` removes
//!   a key, objects merge, other keys are kept; enables the stack when it is not, `201`),
//!   `DELETE /v1/workspaces/{id}/stacks/{name}` (disable). A `PATCH` body is
//!   `application/merge-patch+json` (or `application/json`), else `415`. Edits keep the
//!   file's comments and layout ([`crate::write::edit`]). Every write authenticates (the
//!   [`Principal`] extractor: `401`), authorizes (admin, or a member of the workspace's
//!   `spec.account` before and after the change: `403`), and goes through the
//!   [`crate::write::Writer`]: `422` `{"valid": false, "errors": [{file, line, column,
//!   message, path}]}` (the shape of `cplane validate --format json`), `404`, `409`, `412`
//!   (`If-Match: "<commit>"`, the `ETag` of `GET /v1/workspaces/{id}`, quoted or bare: the
//!   file changed since that commit), else `{"commit": "<id>", "changed": bool}`; `?mode=pr` answers
//!   `{"branch", "commit"}` instead, and with a forge configured opens the pull (merge)
//!   request of the branch — or finds the one open — and adds `"pull_request": {"number",
//!   "url", "created"}` (`502` with `{"error", "branch", "commit"}` when the forge fails: the
//!   branch is pushed, the same change again opens the request). A published commit triggers a reconcile; every outcome is
//!   counted in `/metrics` (`cplane_api_commits_total{outcome}`).
//! - `GET /v1/plan[?rev=REV]` and `POST /v1/plan` (`{"rev", "ref"?}`): the plan of the remote
//!   head (or of `rev`, fetched when the server lacks it) against what is applied (the
//!   database and the published bundles), as `cplane plan --format json` prints it
//!   ([`crate::preview::Preview`]: steps and every cluster's object changes), or `{"commit",
//!   "valid": false, "errors"}` for an invalid revision (`200` on GET, `422` on POST). Cloud
//!   drift is not read here. Read-only: nothing is written but fetched refs of the mirror.
//! - `POST /v1/reconcile` (admins): start a reconcile now (`202`).
//! - `GET /openapi.json`: every route of the server (a maintained document; a test checks that
//!   every route registered in the code is described).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::auth::authz::{self, Grants};
use crate::auth::Principal;
use crate::db::Db;
use crate::write::{self, Access, Change, Mode, Request, User, Writer};

/// The OpenAPI description served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What the API needs to know about the server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The state repo's remote.
    pub repo_url: String,
    /// The followed branch.
    pub branch: String,
    /// The server's bare mirror (the writer shares it for remote URLs).
    pub mirror: PathBuf,
    /// Regions and environments reconciled.
    pub scope: crate::plan::Scope,
    /// Deletion threshold (for `GET /v1/plan`).
    pub max_deletions: usize,
    /// Whether zone deletions also delete records cplane did not create (for `GET /v1/plan`).
    pub delete_foreign_records: bool,
    /// Whether the server runs with a cloud (else the plan's cloud steps are skipped).
    pub cloud: bool,
    /// The forge `?mode=pr` opens pull requests on (`None`: it only pushes the branch).
    pub forge: Option<crate::adapters::forge::Forge>,
}

/// A function that starts a reconcile.
pub type Trigger = Arc<dyn Fn() + Send + Sync>;

/// The API's state.
pub struct Api {
    settings: Settings,
    db: Db,
    writer: Writer,
    trigger: Trigger,
    /// API writes by outcome (`cplane_api_commits_total`).
    commits: Family<OutcomeLabel, Counter>,
}

/// The label of `cplane_api_commits_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

impl Api {
    /// Starts the writer for the server's state repo; `trigger` starts a reconcile (called
    /// after every published commit and by `POST /v1/reconcile`).
    pub fn start(settings: Settings, db: Db, trigger: Trigger) -> Arc<Self> {
        let on_commit = trigger.clone();
        let writer = Writer::start(write::Config {
            repo_url: settings.repo_url.clone(),
            branch: settings.branch.clone(),
            mirror: settings.mirror.clone(),
            committer: ("cplane".into(), "cplane@cplane.local".into()),
            on_commit: Arc::new(move |_| on_commit()),
            before_publish: None,
        });
        Arc::new(Self {
            settings,
            db,
            writer,
            trigger,
            commits: Family::default(),
        })
    }

    fn count(&self, outcome: &'static str) {
        self.commits.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Registers the API's series (`cplane_api_commits_total`) in the server's registry.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "cplane_api_commits",
            "API writes by outcome",
            self.commits.clone(),
        );
    }
}

/// The user routes of this module (mounted behind the users' authentication layer).
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route(
            "/v1/workspaces/{id}",
            put(put_workspace)
                .patch(patch_workspace)
                .delete(delete_workspace),
        )
        .route(
            "/v1/workspaces/{id}/stacks/{name}",
            put(put_stack).patch(patch_stack).delete(delete_stack),
        )
        .route("/v1/plan", get(plan).post(plan_post))
        .route("/v1/reconcile", post(reconcile))
        .with_state(api)
}

/// `GET /openapi.json`: open, like the health endpoints.
pub fn open_router() -> Router {
    Router::new().route("/openapi.json", get(openapi))
}

/// The extractor's outcome: a principal, or the response that refuses the request.
type Authenticated = Result<Principal, <Principal as FromRequestParts<Arc<Api>>>::Rejection>;

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

/// `?mode=pr`.
#[derive(serde::Deserialize)]
struct ModeQuery {
    mode: Option<String>,
}

/// Everything a write handler gathered, ready for the writer.
struct Write {
    principal: Principal,
    change: Change,
    /// Accounts the change touches, as far as the handler can tell.
    accounts: Vec<String>,
}

async fn run_write(api: &Api, w: Write, headers: &HeaderMap, query: ModeQuery) -> Response {
    let Write {
        principal,
        change,
        mut accounts,
    } = w;
    let mode = match query.mode.as_deref() {
        None | Some("commit") => Mode::Commit,
        Some("pr") => Mode::PullRequest,
        Some(other) => {
            api.count("bad_request");
            return error(
                StatusCode::BAD_REQUEST,
                format!("mode `{other}`: use `pr`, or leave it out"),
            );
        }
    };
    let if_match = headers
        .get(axum::http::header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_matches('"').to_owned());
    // Authorize: admins write everything; others must be members of every account involved.
    let grants = match principal.grants(&api.db).await {
        Ok(g) => g,
        Err(e) => {
            api.count("error");
            return error(StatusCode::INTERNAL_SERVER_ERROR, e);
        }
    };
    let access = if grants.admin {
        Access::Any
    } else {
        if let Some(current) = current_account(api, change.workspace()).await {
            accounts.push(current);
        }
        let mut allowed = BTreeSet::new();
        for account in accounts {
            if !authz::allows(&grants, authz::Action::Write(&account)) {
                api.count("forbidden");
                return error(
                    StatusCode::FORBIDDEN,
                    format!("you may not write workspaces of account {account}"),
                );
            }
            allowed.insert(account);
        }
        Access::Accounts(allowed)
    };
    let request = Request {
        change,
        user: User {
            name: if principal.name.is_empty() {
                principal.email.clone()
            } else {
                principal.name.clone()
            },
            email: principal.email.clone(),
        },
        if_match,
        mode,
        access,
    };
    match api.writer.write(request).await {
        Ok(w) => {
            api.count(if w.changed { "committed" } else { "unchanged" });
            let status = if w.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let body = match &w.branch {
                Some(branch) => {
                    let mut body = json!({ "branch": branch, "commit": w.commit });
                    if let Some(forge) = &api.settings.forge {
                        match open_pull_request(api, forge, branch, w.message.as_deref()).await {
                            Ok(opened) => body["pull_request"] = json!(opened),
                            Err(e) => {
                                tracing::warn!(error = %e, branch = %branch, "opening the pull request");
                                body["error"] = json!(format!(
                                    "the branch is pushed, but the {} could not be opened: {e}; retrying the same change opens it",
                                    forge.kind().request_noun()
                                ));
                                return (StatusCode::BAD_GATEWAY, Json(body)).into_response();
                            }
                        }
                    }
                    body
                }
                None => json!({ "commit": w.commit, "changed": w.changed }),
            };
            (status, Json(body)).into_response()
        }
        Err(e) => {
            api.count(e.label());
            let status =
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            match e {
                write::Error::Invalid(errors) => {
                    (status, Json(json!({ "valid": false, "errors": errors }))).into_response()
                }
                other => error(status, other),
            }
        }
    }
}

/// Opens (or finds open) the pull request of a `?mode=pr` branch into the followed branch:
/// the title is the commit's subject, the description its body (which names the user).
async fn open_pull_request(
    api: &Api,
    forge: &crate::adapters::forge::Forge,
    branch: &str,
    message: Option<&str>,
) -> Result<crate::adapters::forge::Opened, crate::adapters::forge::Error> {
    let message = message.unwrap_or(branch);
    let (title, body) = message.split_once('\n').unwrap_or((message, ""));
    let body = format!(
        "{}\n\nOpened by cplane (`?mode=pr`) from branch `{branch}`; pushing to the branch updates it.\n",
        body.trim()
    );
    forge
        .open_request(branch, &api.settings.branch, title.trim(), &body)
        .await
}

/// The account of a workspace at the head: the writer's index, else read from the repo.
async fn current_account(api: &Api, id: &str) -> Option<String> {
    if let Some(account) = api.writer.account_of(id) {
        return Some(account);
    }
    let settings = api.settings.clone();
    let id = id.to_owned();
    tokio::task::spawn_blocking(move || {
        let (repo, rev) = head_repo(&settings).ok()?;
        let tree = repo.revparse_single(&rev).ok()?.peel_to_tree().ok()?;
        let entry = tree
            .get_path(std::path::Path::new(&write::verify::workspace_path(&id)))
            .ok()?;
        let blob = repo.find_blob(entry.id()).ok()?;
        write::verify::account_in(blob.content())
    })
    .await
    .ok()
    .flatten()
}

/// The repository holding the branch head, and the revision naming it: the remote itself when
/// it is local, else the server's mirror (as of its last fetch).
fn head_repo(settings: &Settings) -> Result<(git2::Repository, String), git2::Error> {
    match write::store::local_path(&settings.repo_url) {
        Some(path) => Ok((
            git2::Repository::open(path)?,
            format!("refs/heads/{}", settings.branch),
        )),
        None => Ok((
            git2::Repository::open_bare(&settings.mirror)?,
            format!("refs/remotes/origin/{}", settings.branch),
        )),
    }
}

fn unauthenticated(api: &Api, rejection: impl IntoResponse) -> Response {
    api.count("unauthorized");
    rejection.into_response()
}

async fn put_workspace(
    State(api): State<Arc<Api>>,
    principal: Authenticated,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<ModeQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let principal = match principal {
        Ok(p) => p,
        Err(r) => return unauthenticated(&api, r),
    };
    let document: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            api.count("bad_request");
            return error(
                StatusCode::BAD_REQUEST,
                format!("body: not a JSON Workspace document: {e}"),
            );
        }
    };
    let accounts = account_of(document.get("spec"));
    let w = Write {
        principal,
        change: Change::PutWorkspace { id, document },
        accounts,
    };
    run_write(&api, w, &headers, query).await
}

/// The account a Workspace document's (or patch's) `spec` names, if any: a write may need the
/// caller to be its member too.
fn account_of(spec: Option<&Value>) -> Vec<String> {
    spec.and_then(|s| s.get("account"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .into_iter()
        .collect()
}

/// The media types a `PATCH` body may have: a JSON merge patch (RFC 7396).
const MERGE_PATCH: &str = "application/merge-patch+json";

/// A `PATCH` body: a JSON object sent as `application/merge-patch+json` or `application/json`
/// (`415` otherwise, with `Accept-Patch`), else the response refusing it.
fn merge_patch(
    api: &Api,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<serde_json::Map<String, Value>, Box<Response>> {
    let media = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if !matches!(media.as_deref(), Some(MERGE_PATCH | "application/json")) {
        api.count("bad_request");
        let mut response = error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {}: a PATCH body is a JSON merge patch ({MERGE_PATCH}, or application/json)",
                media.as_deref().unwrap_or("(none)")
            ),
        );
        response.headers_mut().insert(
            "accept-patch",
            axum::http::HeaderValue::from_static(MERGE_PATCH),
        );
        return Err(Box::new(response));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(patch)) => Ok(patch),
        Ok(_) => {
            api.count("bad_request");
            Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                "body: a merge patch here is a JSON object (one that is not would replace the whole document: use PUT)",
            )))
        }
        Err(e) => {
            api.count("bad_request");
            Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                format!("body: not JSON: {e}"),
            )))
        }
    }
}

async fn patch_workspace(
    State(api): State<Arc<Api>>,
    principal: Authenticated,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<ModeQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let principal = match principal {
        Ok(p) => p,
        Err(r) => return unauthenticated(&api, r),
    };
    let patch = match merge_patch(&api, &headers, &body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let accounts = account_of(patch.get("spec"));
    let w = Write {
        principal,
        change: Change::PatchWorkspace { id, patch },
        accounts,
    };
    run_write(&api, w, &headers, query).await
}

async fn delete_workspace(
    State(api): State<Arc<Api>>,
    principal: Authenticated,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<ModeQuery>,
    headers: HeaderMap,
) -> Response {
    let principal = match principal {
        Ok(p) => p,
        Err(r) => return unauthenticated(&api, r),
    };
    let w = Write {
        principal,
        change: Change::DeleteWorkspace { id },
        accounts: Vec::new(),
    };
    run_write(&api, w, &headers, query).await
}

/// Body of `PUT /v1/workspaces/{id}/stacks/{name}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StackBody {
    #[serde(default)]
    values: serde_json::Map<String, Value>,
}

async fn put_stack(
    State(api): State<Arc<Api>>,
    principal: Authenticated,
    UrlPath((id, name)): UrlPath<(String, String)>,
    Query(query): Query<ModeQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let principal = match principal {
        Ok(p) => p,
        Err(r) => return unauthenticated(&api, r),
    };
    let values = if body.is_empty() {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice::<StackBody>(&body) {
            Ok(b) => b.values,
            Err(e) => {
                api.count("bad_request");
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("body: expected {{\"values\": {{...}}}}: {e}"),
                );
            }
        }
    };
    let w = Write {
        principal,
        change: Change::PutStack {
            workspace: id,
            stack: name,
            values,
        },
        accounts: Vec::new(),
    };
    run_write(&api, w, &headers, query).await
}

async fn patch_stack(
    State(api): State<Arc<Api>>,
    principal: Authenticated,
    UrlPath((id, name)): UrlPath<(String, String)>,
    Query(query): Query<ModeQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let principal = match principal {
        Ok(p) => p,
        Err(r) => return unauthenticated(&api, r),
    };
    let patch = match merge_patch(&api, &headers, &body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    if let Some(key) = patch.keys().find(|k| k.as_str() != "values") {
        api.count("bad_request");
        return error(
            StatusCode::BAD_REQUEST,
            format!("body: unknown field `{key}`; expected {{\"values\": {{...}}}}"),
        );
    }
    if patch
        .get("values")
        .is_some_and(|v| !v.is_object() && !v.is_null())
    {
        api.count("bad_request");
        return error(
            StatusCode::BAD_REQUEST,
            "body: `values` is an object (merged into the stack's values) or null (removes them all)",
        );
    }
    let w = Write {
        principal,
        change: Change::PatchStack {
            workspace: id,
            stack: name,
            patch,
        },
        accounts: Vec::new(),
    };
    run_write(&api, w, &headers, query).await
}

async fn delete_stack(
    State(api): State<Arc<Api>>,
    principal: Authenticated,
    UrlPath((id, name)): UrlPath<(String, String)>,
    Query(query): Query<ModeQuery>,
    headers: HeaderMap,
) -> Response {
    let principal = match principal {
        Ok(p) => p,
        Err(r) => return unauthenticated(&api, r),
    };
    let w = Write {
        principal,
        change: Change::DeleteStack {
            workspace: id,
            stack: name,
        },
        accounts: Vec::new(),
    };
    run_write(&api, w, &headers, query).await
}

/// `POST /v1/reconcile`: admins start a run now.
async fn reconcile(State(api): State<Arc<Api>>, principal: Authenticated) -> Response {
    let principal = match principal {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let grants = match principal.grants(&api.db).await {
        Ok(g) => g,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    if !authz::may_trigger(&grants) {
        return error(StatusCode::FORBIDDEN, "only admins start a reconcile");
    }
    (api.trigger)();
    (StatusCode::ACCEPTED, Json(json!({ "triggered": true }))).into_response()
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// `?rev=` of `GET /v1/plan`.
#[derive(serde::Deserialize)]
struct PlanQuery {
    rev: Option<String>,
}

/// Body of `POST /v1/plan`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanBody {
    /// The revision: a commit id, branch or ref.
    rev: String,
    /// A ref to fetch from the remote when the revision is not there yet.
    #[serde(rename = "ref")]
    git_ref: Option<String>,
}

/// `GET /v1/plan[?rev=REV]`: the plan of the branch head (or of any revision the server has
/// fetched) against what is applied; an invalid revision answers `200` with `{"commit",
/// "valid": false, "errors"}`.
async fn plan(
    State(api): State<Arc<Api>>,
    axum::Extension(grants): axum::Extension<Grants>,
    Query(query): Query<PlanQuery>,
) -> Response {
    let planned = api.preview(query.rev, false, None).await;
    plan_response(&api, &grants, planned, StatusCode::OK).await
}

/// `POST /v1/plan` with `{"rev", "ref"?}`: the plan of `rev` (fetched from the remote, `ref`
/// or every branch, when the server does not have it) against what is applied. Read-only; an
/// invalid revision answers `422` with `{"commit", "valid": false, "errors"}`.
async fn plan_post(
    State(api): State<Arc<Api>>,
    axum::Extension(grants): axum::Extension<Grants>,
    body: axum::body::Bytes,
) -> Response {
    let body: PlanBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body: expected {{\"rev\": \"<commit or ref>\", \"ref\": \"<ref to fetch>\"?}}: {e}"),
            )
        }
    };
    let planned = api.preview(Some(body.rev), true, body.git_ref).await;
    plan_response(&api, &grants, planned, StatusCode::UNPROCESSABLE_ENTITY).await
}

/// What planning a revision gave.
pub enum Planned {
    /// The plan.
    Plan {
        /// The plan, for operators (nothing left out).
        preview: crate::preview::Preview,
        /// The revision's model (whose accounts decide who may read which part).
        model: Box<cplane_schema::Model>,
        /// What the database records (accounts of removed workspaces).
        observed: Box<crate::plan::Observed>,
    },
    /// The revision does not validate.
    Invalid {
        /// Its commit.
        commit: String,
        /// Every error.
        errors: Vec<cplane_schema::Diagnostic>,
    },
}

/// Why a revision could not be planned: the HTTP status and message.
#[derive(Debug)]
pub struct PlanError(pub StatusCode, pub String);

impl Api {
    /// The plan of `rev` (default: the followed branch's head) against what the database
    /// records as applied and observed, and the bundles published. With `fetch`, a revision
    /// the server does not have is fetched from the remote (`fetch_ref`, else every branch)
    /// into `refs/cplane/plan/` of its mirror; nothing else is written.
    pub async fn preview(
        &self,
        rev: Option<String>,
        fetch: bool,
        fetch_ref: Option<String>,
    ) -> Result<Planned, PlanError> {
        let settings = self.settings.clone();
        let loaded =
            tokio::task::spawn_blocking(move || read_revision(&settings, rev, fetch, fetch_ref))
                .await
                .map_err(|e| PlanError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
        let (snapshot, confirmed) = loaded;
        let commit = snapshot.commit.clone();
        let published = self
            .db
            .cluster_digests()
            .await
            .map_err(|e| PlanError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let scope = self.settings.scope.clone();
        let checked = tokio::task::spawn_blocking(move || {
            crate::check::check_memo(
                snapshot.files,
                |c, digest| {
                    if scope.includes(&c.region, true, &c.environment)
                        && published.get(&c.id).map(String::as_str) != Some(digest)
                    {
                        crate::check::Keep::Bundle
                    } else {
                        crate::check::Keep::Nothing
                    }
                },
                None,
            )
        })
        .await
        .map_err(|e| PlanError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        if !checked.is_valid() {
            return Ok(Planned::Invalid {
                commit,
                errors: checked.diagnostics,
            });
        }
        let internal =
            |e: crate::db::Error| PlanError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        let model = checked.model.as_ref().expect("valid implies a model");
        let scope = &self.settings.scope;
        let mut desired = crate::plan::desired_workspaces(model, scope);
        let mut observed = self.db.observe(scope).await.map_err(internal)?;
        crate::plan::add_moved_out(model, scope, &observed, &mut desired);
        cplane_core::rollout::hold_suspended(model, &mut desired, &mut observed);
        // Steps 8 and 9 as a run of this server would plan them (by the journal: the API's
        // plan reads no outside system).
        let providers = if self.settings.cloud {
            crate::plan::Providers::from_model(model)
        } else {
            crate::plan::Providers::default()
        };
        let mut options = crate::plan::Options {
            max_deletions: self.settings.max_deletions,
            confirmed: false,
            delete_foreign_records: self.settings.delete_foreign_records,
        };
        if let Some(n) = confirmed {
            let removing = observed
                .workspaces
                .iter()
                .filter(|(id, w)| !desired.contains_key(*id) && !w.status.is_gone())
                .count();
            options.confirmed = n >= removing;
        }
        let plan = crate::plan::plan_with(&desired, &observed, options, &providers);
        let clusters = crate::reconcile::cluster_changes(&self.db, &checked.clusters)
            .await
            .map_err(internal)?;
        let notes = vec![
            "cloud drift is not read by the API's plan; `cplane plan --cloud aws` reads it"
                .to_owned(),
        ];
        let preview =
            crate::preview::Preview::new(commit, plan, self.settings.cloud, clusters, notes);
        Ok(Planned::Plan {
            preview,
            model: Box::new(checked.model.expect("valid implies a model")),
            observed: Box::new(observed),
        })
    }
}

/// Reads `rev` (default: the branch head) with the `Cplane-Confirm-Deletions` of its message,
/// fetching it first when the repository does not have it.
fn read_revision(
    settings: &Settings,
    rev: Option<String>,
    fetch: bool,
    fetch_ref: Option<String>,
) -> Result<(crate::source::Snapshot, Option<usize>), PlanError> {
    let unavailable =
        |e: &dyn std::fmt::Display| PlanError(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    let (repo, head) = head_repo(settings).map_err(|e| unavailable(&e))?;
    let rev = rev.filter(|r| !r.trim().is_empty()).unwrap_or(head);
    if rev.starts_with('-') || rev.contains("..") || rev.chars().any(char::is_whitespace) {
        return Err(PlanError(
            StatusCode::BAD_REQUEST,
            format!("rev `{rev}`: not a commit id or ref"),
        ));
    }
    // A branch or ref fetched for an earlier plan is found under `refs/cplane/plan/`.
    let candidates = [
        rev.clone(),
        plan_ref(&rev),
        plan_ref(&format!("refs/heads/{rev}")),
    ];
    let find = |repo: &git2::Repository| {
        candidates
            .iter()
            .find(|c| crate::source::resolve(repo, c).is_ok())
            .cloned()
    };
    if let Some(found) = find(&repo) {
        return read_at(&repo, &found);
    }
    if !fetch || write::store::local_path(&settings.repo_url).is_some() {
        return Err(PlanError(
            StatusCode::NOT_FOUND,
            format!("rev `{rev}`: no such commit or ref in the state repo"),
        ));
    }
    fetch_for_plan(&repo, fetch_ref.as_deref()).map_err(|e| match e {
        FetchRefError::Bad(m) => PlanError(StatusCode::BAD_REQUEST, m),
        FetchRefError::Git(e) => unavailable(&e),
    })?;
    match find(&repo) {
        Some(found) => read_at(&repo, &found),
        None => Err(PlanError(
            StatusCode::NOT_FOUND,
            format!(
                "rev `{rev}`: not in the state repo's remote (fetched {})",
                fetch_ref.as_deref().unwrap_or("every branch")
            ),
        )),
    }
}

fn read_at(
    repo: &git2::Repository,
    rev: &str,
) -> Result<(crate::source::Snapshot, Option<usize>), PlanError> {
    let snapshot = crate::source::read(repo, rev)
        .map_err(|e| PlanError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let confirmed = crate::reconcile::confirmed_by_commit(&snapshot.message);
    Ok((snapshot, confirmed))
}

/// Where a fetched ref is kept in the mirror.
fn plan_ref(r: &str) -> String {
    format!("refs/cplane/plan/{}", r.trim_start_matches("refs/"))
}

enum FetchRefError {
    Bad(String),
    Git(git2::Error),
}

/// Fetches `r` (a full ref name: `refs/pull/7/head`, `refs/heads/x`) or every branch into
/// `refs/cplane/plan/` of the mirror.
fn fetch_for_plan(repo: &git2::Repository, r: Option<&str>) -> Result<(), FetchRefError> {
    let spec = match r {
        Some(r) => {
            if !r.starts_with("refs/") || !git2::Reference::is_valid_name(r) || r.contains('*') {
                return Err(FetchRefError::Bad(format!(
                    "ref `{r}`: a full ref name like refs/heads/main or refs/pull/7/head"
                )));
            }
            format!("+{r}:{}", plan_ref(r))
        }
        None => format!("+refs/heads/*:{}", plan_ref("refs/heads/*")),
    };
    let mut remote = repo.find_remote("origin").map_err(FetchRefError::Git)?;
    let mut options = git2::FetchOptions::new();
    options.remote_callbacks(crate::remote::callbacks());
    remote
        .fetch(&[spec.as_str()], Some(&mut options), None)
        .map_err(FetchRefError::Git)
}

/// Answers a plan: for non-operators only the steps, refusals and clusters of workspaces they
/// may read; `invalid` is the status of a revision that does not validate.
async fn plan_response(
    api: &Api,
    grants: &Grants,
    planned: Result<Planned, PlanError>,
    invalid: StatusCode,
) -> Response {
    let operator = authz::allows(grants, authz::Action::Operate);
    match planned {
        Err(PlanError(status, message)) => error(status, message),
        Ok(Planned::Invalid { commit, mut errors }) => {
            // Errors quote files: others' workspaces only for operators.
            let total = errors.len();
            if !operator {
                let accounts = match api.db.workspace_accounts().await {
                    Ok(a) => a,
                    Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
                };
                errors.retain(|d| {
                    let id = d
                        .file
                        .strip_prefix("workspaces/")
                        .and_then(|f| f.strip_suffix(".yaml"));
                    id.and_then(|id| accounts.get(id))
                        .is_some_and(|a| authz::allows(grants, authz::Action::Read(a)))
                });
            }
            let hidden = total - errors.len();
            (
                invalid,
                Json(json!({ "commit": commit, "valid": false, "errors": errors, "errors_hidden": hidden })),
            )
                .into_response()
        }
        Ok(Planned::Plan {
            preview,
            model,
            observed,
        }) => {
            if operator {
                return Json(preview).into_response();
            }
            // The steps and refusals of the workspaces they may read (desired ones by the
            // state repo's account, removed ones by the recorded one), and those workspaces'
            // clusters; platform clusters are for operators.
            let account_of = |id: &str| {
                model
                    .workspaces
                    .get(id)
                    .map(|w| w.doc.spec.account.clone())
                    .or_else(|| {
                        observed
                            .workspaces
                            .get(id)
                            .map(|w| w.applied.account.clone())
                    })
            };
            let readable = |id: &str| {
                account_of(id).is_some_and(|a| authz::allows(grants, authz::Action::Read(&a)))
            };
            let crate::preview::Preview {
                commit,
                plan,
                clusters,
                notes,
                ..
            } = preview;
            let plan = filtered(plan, readable);
            let clusters = clusters
                .into_iter()
                .filter(|c| {
                    c.kind == "tenant" && c.cluster.strip_prefix("w-").is_some_and(readable)
                })
                .collect();
            let preview =
                crate::preview::Preview::new(commit, plan, api.settings.cloud, clusters, notes);
            Json(preview).into_response()
        }
    }
}

/// `plan` with only the steps and refusals of the workspaces `keep` accepts; a kept step's
/// `after` indexes are renumbered (a step only ever waits on steps of its own workspace).
fn filtered(plan: crate::plan::Plan, keep: impl Fn(&str) -> bool) -> crate::plan::Plan {
    let mut index = vec![None; plan.steps.len()];
    let mut steps = Vec::new();
    for (i, step) in plan.steps.into_iter().enumerate() {
        if keep(&step.workspace) {
            index[i] = Some(steps.len());
            steps.push(step);
        }
    }
    for step in &mut steps {
        step.after = step.after.iter().filter_map(|a| index[*a]).collect();
    }
    crate::plan::Plan {
        steps,
        refused: plan
            .refused
            .into_iter()
            .filter(|r| keep(&r.workspace))
            .collect(),
        held: plan.held,
    }
}
