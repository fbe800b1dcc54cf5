//! The read API for users (`/v1/status`, `/v1/regions`, `/v1/stacks`, `/v1/clusters`,
//! `/v1/workspaces[/{id}[/history]]`, `GET /v1/clusters/{id}/status`): what the applied revision says.
//! Behind the user authentication layer ([`crate::auth::require_user`]), which resolves the
//! request's [`Grants`]; every handler shows only what [`authz::allows`] lets them see.

use super::*;
use crate::auth::authz::{self, Action, Grants};
use axum::Extension;

/// The read API (mounted behind the users' authentication layer).
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/regions", get(regions))
        .route("/v1/stacks", get(stacks))
        .route("/v1/clusters", get(clusters))
        .route("/v1/workspaces", get(workspaces))
        .route("/v1/workspaces/{id}", get(workspace))
        .route("/v1/workspaces/{id}/history", get(history))
        .route("/v1/clusters/{cluster}/status", get(cluster_status))
        .with_state(shared)
}

/// The control plane's state. Run errors can name any tenant's workspace: only operators see
/// them; others see how many there are.
pub(super) async fn status(
    State(sh): State<Arc<Shared>>,
    Extension(grants): Extension<Grants>,
) -> Json<serde_json::Value> {
    let last = sh.last.lock().expect("last").clone();
    let mut last = serde_json::to_value(last).expect("runs serialize");
    if !authz::allows(&grants, Action::Operate) {
        if let Some(run) = last.as_object_mut() {
            let hidden = run
                .remove("errors")
                .and_then(|e| e.as_array().map(Vec::len))
                .unwrap_or(0);
            run.insert("errors_hidden".into(), json!(hidden));
        }
    }
    Json(json!({
        "ready": sh.ready.load(Ordering::SeqCst),
        "leader": sh.leader.load(Ordering::SeqCst),
        "branch": sh.branch,
        "last_run": last,
        "notifications": notifications_status(&sh, &grants).await,
    }))
}

/// Notification sinks: each one's pending and dead (given up on) deliveries. The last
/// errors and problems can name any tenant's events or a sink's address: operators only.
async fn notifications_status(sh: &Shared, grants: &Grants) -> serde_json::Value {
    let state = sh.notify.lock().expect("notify").clone();
    let operator = authz::allows(grants, Action::Operate);
    let backlogs = match sh.db.sink_backlogs().await {
        Ok(b) => b,
        Err(e) => return json!({ "error": e.to_string() }),
    };
    let mut sinks: Vec<serde_json::Value> = Vec::new();
    for name in &state.sinks {
        let b = backlogs.iter().find(|b| &b.sink == name);
        let mut v = json!({
            "name": name,
            "pending": b.map_or(0, |b| b.pending),
            "dead": b.map_or(0, |b| b.dead),
        });
        if operator {
            v["last_error"] = json!(b.and_then(|b| b.last_error.clone()));
        }
        sinks.push(v);
    }
    let mut out = json!({ "sinks": sinks });
    if operator {
        out["problems"] = json!(state.problems);
    }
    out
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
/// Platform clusters are shown to operators; a tenant cluster to whoever may read its
/// workspace.
pub(super) async fn clusters(
    State(sh): State<Arc<Shared>>,
    Extension(grants): Extension<Grants>,
) -> Response {
    let accounts = match sh.db.workspace_accounts().await {
        Ok(a) => a,
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    };
    let standings = match crate::rollout::standings(
        &sh.db,
        crate::db::now_ms(),
        sh.settings.agent_offline_after,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    };
    match sh.db.clusters().await {
        Ok(rows) => Json(
            rows.into_iter()
                .filter(|(id, ..)| may_read_cluster(&grants, &accounts, id))
                .map(|(id, kind, region, environment, digest, generation)| {
                    let s = standings.get(&id);
                    json!({ "id": id, "kind": kind, "region": region, "environment": environment, "digest": digest, "generation": generation,
                        "state": s.map(|s| s.state.label()), "behind_by": s.map(|s| s.behind_by), "last_seen": s.and_then(|s| s.last_seen) })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// Whether `grants` may read the cluster `id`: a tenant cluster (`w-{workspace}`) with its
/// workspace's account, any other as an operator.
fn may_read_cluster(
    grants: &Grants,
    accounts: &std::collections::BTreeMap<String, String>,
    id: &str,
) -> bool {
    match id.strip_prefix("w-").and_then(|ws| accounts.get(ws)) {
        Some(account) => authz::allows(grants, Action::Read(account)),
        None => authz::allows(grants, Action::Operate),
    }
}

/// The tenant's AWS identifiers in a workspace's spec, hidden from who may not see them.
const IDENTIFIERS: [&str; 3] = ["accountId", "roleArn", "externalId"];

/// One workspace of the model read at `commit`, if `grants` may read it: its desired state
/// (the tenant's AWS identifiers only for who may see them), the commit (what a write's
/// `If-Match` names) and its `conditions`. One they may not read is not found.
pub(super) fn workspace_json(
    grants: &Grants,
    m: &cplane_schema::Model,
    commit: &str,
    id: &str,
    conditions: std::collections::BTreeMap<String, (bool, String, String)>,
) -> Result<serde_json::Value, ApiError> {
    let ws = m
        .workspaces
        .get(id)
        .filter(|ws| authz::allows(grants, Action::Read(&ws.doc.spec.account)))
        .ok_or_else(|| api_error(StatusCode::NOT_FOUND, format!("no workspace {id}")))?;
    let mut spec = serde_json::to_value(&ws.doc.spec).expect("specs serialize");
    if !authz::allows(grants, Action::ReadIdentifiers(&ws.doc.spec.account)) {
        if let Some(aws) = spec.get_mut("aws").and_then(|a| a.as_object_mut()) {
            for key in IDENTIFIERS {
                aws.remove(key);
            }
        }
    }
    let conditions = conditions_json(conditions);
    Ok(
        json!({ "id": id, "file": ws.file, "commit": commit, "spec": spec, "status": { "conditions": conditions } }),
    )
}

/// `ETag: "<commit>"`: the applied revision a read shows, which a write sends back as
/// `If-Match` (`412` if the workspace's file changed since).
pub(super) fn commit_etag(commit: &str) -> [(axum::http::HeaderName, String); 1] {
    [(axum::http::header::ETAG, format!("\"{commit}\""))]
}

/// The workspaces `grants` may read (the conditions of all read in one query: the overview
/// asks for this list at every redraw, and a fleet has thousands).
pub(super) async fn workspaces(
    State(sh): State<Arc<Shared>>,
    Extension(grants): Extension<Grants>,
) -> Response {
    let (commit, m) = match applied_model(&sh) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let mut conditions = match sh.db.conditions_of_kind("workspace").await {
        Ok(c) => c,
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    };
    let mut out = Vec::new();
    let readable = m
        .workspaces
        .iter()
        .filter(|(_, ws)| authz::allows(&grants, Action::Read(&ws.doc.spec.account)));
    for (id, _) in readable {
        let of = conditions.remove(id).unwrap_or_default();
        match workspace_json(&grants, &m, &commit, id, of) {
            Ok(v) => out.push(v),
            Err(r) => return r.into_response(),
        }
    }
    (commit_etag(&commit), Json(out)).into_response()
}

/// One workspace ([`workspace_json`]) with its provisioning steps (`status.steps`, the
/// journal's entries: step, state, resource, attempts, error, updated_at; resources and
/// errors only for who may see the tenant's AWS identifiers).
pub(super) async fn workspace(
    State(sh): State<Arc<Shared>>,
    Extension(grants): Extension<Grants>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let (commit, m) = match applied_model(&sh) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    // Only an id the model has (and the caller may read) reaches the database: a hostile
    // one (a NUL byte, say) is not found, never a database error.
    let readable = m
        .workspaces
        .get(&id)
        .is_some_and(|ws| authz::allows(&grants, Action::Read(&ws.doc.spec.account)));
    if !readable {
        return api_error(StatusCode::NOT_FOUND, format!("no workspace {id}")).into_response();
    }
    let conditions = match sh.db.conditions("workspace", &id).await {
        Ok(c) => c,
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    };
    let mut v = match workspace_json(&grants, &m, &commit, &id, conditions) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let mut steps = match sh.db.journal_steps(&id).await {
        Ok(s) => s,
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    };
    // Resource ids (ARNs) and cloud errors carry the tenant's AWS identifiers.
    let account = &m.workspaces[&id].doc.spec.account;
    if !authz::allows(&grants, Action::ReadIdentifiers(account)) {
        for s in &mut steps {
            s.resource = None;
            s.error = s.error.take().map(|_| "hidden".to_owned());
        }
    }
    v["status"]["steps"] = json!(steps);
    (commit_etag(&commit), Json(v)).into_response()
}

/// Commits `GET /v1/workspaces/{id}/history` walks at most, looking for changes of the file.
const HISTORY_WALK: usize = 5_000;

/// `?limit=` of `GET /v1/workspaces/{id}/history`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct HistoryQuery {
    limit: Option<usize>,
}

/// `GET /v1/workspaces/{id}/history?limit=N`: the commits of the applied revision's history
/// that changed the workspace's file, newest first, with their authors (`git log -- FILE`,
/// [`source::file_history`]); `limit` 1-100, default 20. `truncated`: the walk stopped after
/// [`HISTORY_WALK`] commits. Scoped like the workspace itself.
pub(super) async fn history(
    State(sh): State<Arc<Shared>>,
    Extension(grants): Extension<Grants>,
    UrlPath(id): UrlPath<String>,
    axum::extract::Query(q): axum::extract::Query<HistoryQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return api_error(StatusCode::BAD_REQUEST, "limit must be 1 to 100").into_response();
    }
    let (commit, m) = match applied_model(&sh) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let Some(file) = m
        .workspaces
        .get(&id)
        .filter(|ws| authz::allows(&grants, Action::Read(&ws.doc.spec.account)))
        .map(|ws| ws.file.clone())
    else {
        return api_error(StatusCode::NOT_FOUND, format!("no workspace {id}")).into_response();
    };
    let mirror = sh.settings.mirror.clone();
    let walked = tokio::task::spawn_blocking(move || {
        let repo = git2::Repository::open_bare(&mirror).map_err(source::Error::from)?;
        source::file_history(&repo, &commit, &file, limit, HISTORY_WALK)
            .map(|(changes, truncated)| json!({ "id": id, "file": file, "commit": commit, "changes": changes, "truncated": truncated }))
    })
    .await;
    match walked {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// `GET /v1/clusters/{cluster}/status`: the agent's last report, whether it applied the
/// current bundle, and where the cluster stands ([`crate::rollout::cluster_standing`]:
/// `state`, `behind_by`, `last_seen`, `message`, `rollout`); `404` for a cluster with neither
/// a published bundle nor a report (unless its workspace is suspended).
pub(super) async fn cluster_status(
    State(sh): State<Arc<Shared>>,
    Extension(grants): Extension<Grants>,
    UrlPath(cluster): UrlPath<String>,
) -> Response {
    let accounts = match sh.db.workspace_accounts().await {
        Ok(a) => a,
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    };
    if !possible_id(&cluster) || !may_read_cluster(&grants, &accounts, &cluster) {
        return api_error(StatusCode::NOT_FOUND, format!("no cluster {cluster}")).into_response();
    }
    let current = sh
        .store
        .head(&cluster)
        .map(|h| (h.digest.to_string(), h.generation));
    let suspended = match sh.db.suspended_clusters().await {
        Ok(s) => s.contains(&cluster),
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    };
    match sh.db.cluster_status(&cluster).await {
        // Neither published nor ever reported nor held by its suspended workspace: no such
        // cluster, for admins as for everyone (not an empty status for any string put in the
        // path).
        Ok(None) if current.is_none() && !suspended => {
            api_error(StatusCode::NOT_FOUND, format!("no cluster {cluster}")).into_response()
        }
        Ok(report) => {
            let in_sync = match (&current, &report) {
                (Some((digest, _)), Some((r, _))) => r.digest == *digest,
                _ => false,
            };
            let standing = match crate::rollout::cluster_standing(
                &sh.db,
                &cluster,
                current.as_ref().map(|(_, g)| *g),
                report.as_ref(),
                crate::db::now_ms(),
                sh.settings.agent_offline_after,
            )
            .await
            {
                Ok(s) => s,
                Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
            };
            Json(json!({
                "cluster": cluster,
                "current": current.map(|(digest, generation)| json!({"digest": digest, "generation": generation})),
                "reported": report.map(|(r, at)| json!({"report": r, "reported_at": at})),
                "in_sync": in_sync,
                "state": standing["state"],
                "behind_by": standing["behind_by"],
                "last_seen": standing["last_seen"],
                "message": standing["message"],
                "rollout": standing["rollout"],
            }))
            .into_response()
        }
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}
