//! Other regions' endpoints on the primary region (reference doc 001, "Database Strategy"):
//! the `tenants` rows, which the primary region owns. Every route takes the inter-region
//! service token ([`crate::auth::InterRegion`]: 401 without it, 421 on a control plane that is
//! not the primary's). The caller is [`crate::adapters::primary::RemoteTenants`].
//!
//! - `GET /internal/tenants?region=R1,R2&after=W&limit=N`, or `?workspace=w-a,w-b` instead of
//!   `region`: `{"tenants": [row…], "next": "w-…" | null}` in `workspace_id` order, at most
//!   `limit` rows (default and most: 1000); `next` is the `after` of the next page.
//! - `PUT /internal/tenants/w-{id}` with a row `{workspace_id, region, delegated_zone, status,
//!   bff_url}`: an idempotent upsert into the primary's own table; `400` naming every bad
//!   field.

use super::*;
use crate::adapters::primary::{TenantsPage, IDS_PER_CALL, PAGE};
use crate::auth::{Auth, InterRegion};
use crate::plan::TenantRow;
use crate::tenants::Filter;

/// The state of the internal routes.
#[derive(Clone)]
pub(super) struct Internal {
    auth: Arc<Auth>,
    db: Db,
}

impl axum::extract::FromRef<Internal> for Arc<Auth> {
    fn from_ref(state: &Internal) -> Self {
        state.auth.clone()
    }
}

/// The routes (mounted on every control plane; only the primary's answer).
pub(super) fn router(shared: &Shared) -> Router {
    Router::new()
        .route("/internal/tenants", get(list))
        .route("/internal/tenants/{id}", axum::routing::put(put))
        .with_state(Internal {
            auth: shared.auth.clone(),
            db: shared.db.clone(),
        })
}

/// The query of `GET /internal/tenants`.
#[derive(serde::Deserialize)]
struct ListQuery {
    /// Comma-separated region ids.
    region: Option<String>,
    /// Comma-separated workspace names (`w-{id}`).
    workspace: Option<String>,
    /// Rows after this `workspace_id`.
    #[serde(default)]
    after: String,
    /// Rows per page.
    limit: Option<u32>,
}

fn split(list: Option<&str>) -> Vec<String> {
    list.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn bad_request(errors: Vec<(&'static str, String)>) -> Response {
    let message = errors
        .iter()
        .map(|(f, m)| format!("{f}: {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    (
        StatusCode::BAD_REQUEST,
        Json(json!({
            "error": message,
            "errors": errors.iter().map(|(f, m)| json!({"field": f, "message": m})).collect::<Vec<_>>(),
        })),
    )
        .into_response()
}

/// `GET /internal/tenants`: one page of the primary's rows.
async fn list(
    State(st): State<Internal>,
    _caller: InterRegion,
    query: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(axum::extract::Query(q)) = query else {
        return bad_request(vec![(
            "query",
            "expected region=, workspace=, after= and limit= (a number)".into(),
        )]);
    };
    let limit = q.limit.unwrap_or(PAGE);
    let mut errors = Vec::new();
    if limit == 0 || limit > PAGE {
        errors.push(("limit", format!("must be 1 to {PAGE}")));
    }
    let filter = match (q.region.as_deref(), q.workspace.as_deref()) {
        (Some(_), Some(_)) => {
            errors.push(("workspace", "give region= or workspace=, not both".into()));
            Filter::Regions(Vec::new())
        }
        (_, Some(w)) => {
            let names = split(Some(w));
            if names.len() > IDS_PER_CALL {
                errors.push((
                    "workspace",
                    format!("at most {IDS_PER_CALL} names per call"),
                ));
            }
            Filter::Workspaces(names)
        }
        (r, None) => Filter::Regions(split(r)),
    };
    if !errors.is_empty() {
        return bad_request(errors);
    }
    match st.db.tenants_page(&filter, &q.after, limit).await {
        Ok(tenants) => {
            let full = u32::try_from(tenants.len()).unwrap_or(u32::MAX) >= limit;
            let next = full
                .then(|| tenants.last().map(|t| t.workspace_id.clone()))
                .flatten();
            Json(TenantsPage { tenants, next }).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "listing tenants rows");
            api_error(StatusCode::SERVICE_UNAVAILABLE, "database error").into_response()
        }
    }
}

/// `PUT /internal/tenants/{id}`: upserts a row of another region into the primary's table.
async fn put(
    State(st): State<Internal>,
    _caller: InterRegion,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let row: TenantRow = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let shape = "{workspace_id, region, delegated_zone, status, bff_url}";
            return bad_request(vec![("body", format!("not a tenants row {shape}: {e}"))]);
        }
    };
    let errors = crate::tenants::check_row(&id, &row);
    if !errors.is_empty() {
        return bad_request(errors);
    }
    match st.db.write_tenant(&row).await {
        Ok(()) => {
            tracing::info!(workspace = %row.workspace_id, region = %row.region, status = %row.status, "tenants row written for another region");
            Json(json!({ "tenant": row })).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "writing a tenants row");
            api_error(StatusCode::SERVICE_UNAVAILABLE, "database error").into_response()
        }
    }
}
