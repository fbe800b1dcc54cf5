//! The read API for users (`/v1/status`, `/v1/regions`, `/v1/stacks`, `/v1/clusters`,
//! `/v1/workspaces[/{id}]`, `GET /v1/clusters/{id}/status`): what the applied revision says.
//! Behind the user authentication layer ([`crate::auth::require_user`]).

use super::*;

/// The read API (mounted behind the users' authentication layer).
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/regions", get(regions))
        .route("/v1/stacks", get(stacks))
        .route("/v1/clusters", get(clusters))
        .route("/v1/workspaces", get(workspaces))
        .route("/v1/workspaces/{id}", get(workspace))
        .route("/v1/clusters/{cluster}/status", get(cluster_status))
        .with_state(shared)
}

pub(super) async fn status(State(sh): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let last = sh.last.lock().expect("last").clone();
    Json(json!({
        "ready": sh.ready.load(Ordering::SeqCst),
        "leader": sh.leader.load(Ordering::SeqCst),
        "branch": sh.branch,
        "last_run": last,
    }))
}

/// An API error: status and message, answered as `{"error": message}`.
pub(super) struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

pub(super) fn api_error(status: StatusCode, message: impl std::fmt::Display) -> ApiError {
    ApiError(status, message.to_string())
}

/// The model of the last applied revision, read from the mirror.
pub(super) fn model_of(sh: &Shared) -> Result<cplane_schema::Model, ApiError> {
    applied_model(sh).map(|(_, model)| model)
}

/// The last applied revision and its model (the commit is the one the model was read at,
/// even when a reconcile applies another meanwhile).
pub(super) fn applied_model(sh: &Shared) -> Result<(String, cplane_schema::Model), ApiError> {
    let commit = sh.applied.lock().expect("applied").clone();
    if commit.is_empty() || !sh.ready.load(Ordering::SeqCst) {
        return Err(api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no good revision loaded yet",
        ));
    }
    let repo = git2::Repository::open_bare(&sh.settings.mirror)
        .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let snap = source::read(&repo, &commit)
        .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let model = cplane_schema::load(snap.files).into_valid().map_err(|d| {
        api_error(
            StatusCode::CONFLICT,
            format!("revision {commit} is invalid: {} error(s)", d.len()),
        )
    })?;
    Ok((commit, model))
}

/// Every region of the applied revision, with its conditions (`Ready`: every workspace
/// provisioned there is ready).
pub(super) async fn regions(State(sh): State<Arc<Shared>>) -> Response {
    let m = match model_of(&sh) {
        Err(r) => return r.into_response(),
        Ok(m) => m,
    };
    let mut out = Vec::with_capacity(m.regions.len());
    for r in m.regions.values() {
        let id = &r.doc.metadata.name;
        let conditions = match sh.db.conditions("region", id).await {
            Ok(c) => conditions_json(c),
            Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        };
        out.push(json!({ "id": id, "spec": r.doc.spec, "status": { "conditions": conditions } }));
    }
    Json(out).into_response()
}

/// Conditions as the API shows them (`type`, `status` `True`/`False`, `reason`, `message`).
fn conditions_json(
    conditions: std::collections::BTreeMap<String, (bool, String, String)>,
) -> Vec<serde_json::Value> {
    conditions
        .into_iter()
        .map(|(c, (status, reason, message))| json!({ "type": c, "status": if status { "True" } else { "False" }, "reason": reason, "message": message }))
        .collect()
}

pub(super) async fn stacks(State(sh): State<Arc<Shared>>) -> Response {
    match model_of(&sh) {
        Err(r) => r.into_response(),
        Ok(m) => Json(
            m.stacks
                .values()
                .map(|s| json!({ "name": s.entity.doc.metadata.name, "spec": s.entity.doc.spec }))
                .collect::<Vec<_>>(),
        )
        .into_response(),
    }
}

/// Every cluster with the digest and generation of its published bundle (from the database:
/// no rendering per request).
pub(super) async fn clusters(State(sh): State<Arc<Shared>>) -> Response {
    match sh.db.clusters().await {
        Ok(rows) => Json(
            rows.into_iter()
                .map(|(id, kind, region, environment, digest, generation)| {
                    json!({ "id": id, "kind": kind, "region": region, "environment": environment, "digest": digest, "generation": generation })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// One workspace of the model read at `commit`: its desired state, the commit (what a write's
/// `If-Match` names) and its conditions.
pub(super) async fn workspace_json(
    sh: &Shared,
    m: &cplane_schema::Model,
    commit: &str,
    id: &str,
) -> Result<serde_json::Value, ApiError> {
    let ws = m
        .workspaces
        .get(id)
        .ok_or_else(|| api_error(StatusCode::NOT_FOUND, format!("no workspace {id}")))?;
    let conditions = sh
        .db
        .conditions("workspace", id)
        .await
        .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let conditions = conditions_json(conditions);
    Ok(
        json!({ "id": id, "file": ws.file, "commit": commit, "spec": ws.doc.spec, "status": { "conditions": conditions } }),
    )
}

/// `ETag: "<commit>"`: the applied revision a read shows, which a write sends back as
/// `If-Match` (`412` if the workspace's file changed since).
pub(super) fn commit_etag(commit: &str) -> [(axum::http::HeaderName, String); 1] {
    [(axum::http::header::ETAG, format!("\"{commit}\""))]
}

pub(super) async fn workspaces(State(sh): State<Arc<Shared>>) -> Response {
    let (commit, m) = match applied_model(&sh) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let mut out = Vec::new();
    for id in m.workspaces.keys() {
        match workspace_json(&sh, &m, &commit, id).await {
            Ok(v) => out.push(v),
            Err(r) => return r.into_response(),
        }
    }
    (commit_etag(&commit), Json(out)).into_response()
}

pub(super) async fn workspace(
    State(sh): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let (commit, m) = match applied_model(&sh) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    match workspace_json(&sh, &m, &commit, &id).await {
        Ok(v) => (commit_etag(&commit), Json(v)).into_response(),
        Err(r) => r.into_response(),
    }
}

/// `GET /v1/clusters/{cluster}/status`: the agent's last report, and whether it applied the
/// current bundle.
pub(super) async fn cluster_status(
    State(sh): State<Arc<Shared>>,
    UrlPath(cluster): UrlPath<String>,
) -> Response {
    let current = sh
        .store
        .head(&cluster)
        .map(|h| (h.digest.to_string(), h.generation));
    match sh.db.cluster_status(&cluster).await {
        Ok(report) => {
            let in_sync = match (&current, &report) {
                (Some((digest, _)), Some((r, _))) => r.digest == *digest,
                _ => false,
            };
            Json(json!({
                "cluster": cluster,
                "current": current.map(|(digest, generation)| json!({"digest": digest, "generation": generation})),
                "reported": report.map(|(r, at)| json!({"report": r, "reported_at": at})),
                "in_sync": in_sync,
            }))
            .into_response()
        }
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}
