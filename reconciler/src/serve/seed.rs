//! The seed's endpoints (reference doc 001): the tenant → region lookup, and the BFF's
//! config and registration, which take the workspace's `bff` token (not its agent's token,
//! nor its agent's client certificate).

use super::*;
use crate::db::TokenScope;

/// The lookup (open) and the BFF's endpoints (the workspace's `bff` token).
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/lookup/{workspace}", get(lookup))
        .route("/api/workspaces/{id}/config", get(bff_config))
        .route(
            "/api/workspaces/{id}/register",
            axum::routing::post(bff_register),
        )
        .with_state(shared)
}

/// Tenant → region lookup (reference doc 001, step 8): `{"region", "bff_url"}`.
pub(super) async fn lookup(
    State(sh): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    if !possible_id(&name) {
        return api_error(StatusCode::NOT_FOUND, "no such workspace").into_response();
    }
    match sh.db.lookup_entry(&name).await {
        Ok(Some(row)) => {
            Json(json!({ "region": row.region, "bff_url": row.bff_url })).into_response()
        }
        Ok(None) => {
            api_error(StatusCode::NOT_FOUND, format!("no workspace {name}")).into_response()
        }
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// `w-{id}` from a path segment that may or may not carry the prefix.
pub(super) fn workspace_of(id: &str) -> String {
    id.strip_prefix("w-").unwrap_or(id).to_owned()
}

/// `GET /api/workspaces/{id}/config`: the BFF's startup configuration (reference doc 001),
/// for the workspace's own `bff` token only.
pub(super) async fn bff_config(
    State(sh): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let id = workspace_of(&id);
    let name = cplane_schema::domain::workspace_name(&id);
    if let Err(e) = require_credential(&sh, &headers, &None, &name, TokenScope::Bff).await {
        return e.into_response();
    }
    let m = match model_of(&sh) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let Some(ws) = m.workspaces.get(&id) else {
        return api_error(StatusCode::NOT_FOUND, format!("no workspace {id}")).into_response();
    };
    let spec = &ws.doc.spec;
    let names = cplane_schema::validate::names_for(&m, &spec.region, &spec.environment);
    let vars = names.cluster_vars();
    let registered = sh.db.bff_registration(&name).await.ok().flatten();
    use cplane_schema::validate::integrations as cfg;
    // Step 9's realm when Keycloak is configured, else the naming convention's.
    let issuer = cfg::keycloak_realm(&m, &spec.region, &spec.environment).map_or_else(
        || {
            format!(
                "https://{}/realms/{}",
                vars.auth_domain, m.platform.doc.metadata.name
            )
        },
        |r| r.issuer(),
    );
    Json(json!({
        "workspace_id": name,
        "region": spec.region,
        "environment": spec.environment,
        "account": spec.account,
        "domains": {
            "zone": names.workspace_zone(&id),
            "bff": names.workspace_host(&id, "bff"),
            "app": names.workspace_host(&id, "app"),
        },
        "auth": {
            "authorization_endpoint": format!("{issuer}/protocol/openid-connect/auth"),
            "token_endpoint": format!("{issuer}/protocol/openid-connect/token"),
            "issuer": issuer,
            "client_id": name,
            "client_provisioned": m.platform.doc.spec.keycloak.is_some(),
        },
        "temporal": { "address": cfg::temporal_address(&m, &spec.region, &spec.environment) },
        "features": cfg::features(&m, &spec.region),
        "control_plane": format!("https://{}", vars.base_domain),
        "stacks": spec.stacks.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        "registered_url": registered,
    }))
    .into_response()
}

/// Body of `POST /api/workspaces/{id}/register`.
#[derive(serde::Deserialize)]
pub(super) struct Registration {
    pub(super) url: String,
}

/// `POST /api/workspaces/{id}/register`: the BFF registers its URL at startup.
pub(super) async fn bff_register(
    State(sh): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    headers: axum::http::HeaderMap,
    Json(reg): Json<Registration>,
) -> Response {
    let name = cplane_schema::domain::workspace_name(&workspace_of(&id));
    if let Err(e) = require_credential(&sh, &headers, &None, &name, TokenScope::Bff).await {
        return e.into_response();
    }
    if !reg.url.starts_with("https://") || reg.url.len() > 2048 {
        return api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "url: must be an https:// URL",
        )
        .into_response();
    }
    match sh.db.register_bff(&name, &reg.url).await {
        Ok(()) => Json(json!({ "registered": name, "url": reg.url })).into_response(),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}
