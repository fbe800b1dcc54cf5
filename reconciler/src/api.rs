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
//!   `{"branch", "commit"}` instead. A published commit triggers a reconcile; every outcome is
//!   counted in `/metrics` (`cplane_api_commits_total{outcome}`).
//! - `GET /v1/plan`: the plan of the remote head against what is applied (the database), as
//!   `cplane plan --format json` prints it (`{"commit", "plan", "notes"}`), or `{"commit",
//!   "valid": false, "errors"}` for an invalid head. Cloud drift is not read here.
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
        .route("/v1/plan", get(plan))
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
                Some(branch) => json!({ "branch": branch, "commit": w.commit }),
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

/// `GET /v1/plan`: the plan of the remote head against the database, as `cplane plan --format
/// json` prints it.
async fn plan(
    State(api): State<Arc<Api>>,
    axum::Extension(grants): axum::Extension<Grants>,
) -> Response {
    let settings = api.settings.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let (repo, rev) = head_repo(&settings).map_err(|e| e.to_string())?;
        let snapshot = crate::source::read(&repo, &rev).map_err(|e| e.to_string())?;
        let confirmed = crate::reconcile::confirmed_by_commit(&snapshot.message);
        let commit = snapshot.commit.clone();
        Ok::<_, String>((commit, confirmed, cplane_schema::load(snapshot.files)))
    })
    .await;
    let (commit, confirmed, loaded) = match loaded {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let model = match loaded.into_valid() {
        Ok(m) => m,
        Err(mut errors) => {
            // Errors quote files: others' workspaces only for operators.
            let total = errors.len();
            if !authz::allows(&grants, authz::Action::Operate) {
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
                        .is_some_and(|a| authz::allows(&grants, authz::Action::Read(a)))
                });
            }
            let hidden = total - errors.len();
            return Json(json!({ "commit": commit, "valid": false, "errors": errors, "errors_hidden": hidden }))
                .into_response();
        }
    };
    let scope = &api.settings.scope;
    let desired = crate::plan::desired_workspaces(&model, scope);
    let observed = match api.db.observe(scope).await {
        Ok(o) => o,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let mut options = crate::plan::Options {
        max_deletions: api.settings.max_deletions,
        confirmed: false,
        delete_foreign_records: api.settings.delete_foreign_records,
    };
    if let Some(n) = confirmed {
        let removing = observed
            .workspaces
            .iter()
            .filter(|(id, w)| !desired.contains_key(*id) && !w.status.is_gone())
            .count();
        options.confirmed = n >= removing;
    }
    let mut plan = crate::plan::plan(&desired, &observed, options);
    if !authz::allows(&grants, authz::Action::Operate) {
        // The steps and refusals of the workspaces they may read (desired ones by the state
        // repo's account, removed ones by the recorded one).
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
            account_of(id).is_some_and(|a| authz::allows(&grants, authz::Action::Read(&a)))
        };
        plan = filtered(plan, readable);
    }
    Json(json!({
        "commit": commit,
        "plan": plan,
        "notes": ["cloud drift is not read by the API's plan; `cplane plan --cloud aws` reads it"],
    }))
    .into_response()
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
