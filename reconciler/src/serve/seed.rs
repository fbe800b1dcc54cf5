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
///
/// This region's own workspaces are answered from its table. Others are asked of the global
/// map (step 8's sink) when `cplane.yaml` configures one: an outside call, so it is admitted
/// per source address by the edge's rate limit (`429` beyond it), and a sink that cannot be
/// read is a `503`.
pub(super) async fn lookup(
    State(sh): State<Arc<Shared>>,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    if !possible_id(&name) {
        return api_error(StatusCode::NOT_FOUND, "no such workspace").into_response();
    }
    let found = |region: &str, bff_url: &str| {
        Json(json!({ "region": region, "bff_url": bff_url })).into_response()
    };
    match sh.db.lookup_entry(&name).await {
        Ok(Some(row)) => return found(&row.region, &row.bff_url),
        Ok(None) => {}
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
    let sink = sh.global_lookup.read().expect("global lookup lock").clone();
    let missing =
        || api_error(StatusCode::NOT_FOUND, format!("no workspace {name}")).into_response();
    let Some(sink) = sink else {
        return missing();
    };
    if let Err(wait) = sh.edge.admit(super::edge::peer_of(connect)) {
        return sh.edge.too_many(wait);
    }
    match sink.get_many(std::slice::from_ref(&name)).await {
        Ok(rows) => match rows.get(&name) {
            Some(row) => found(&row.region, &row.bff_url),
            None => missing(),
        },
        Err(e) => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the global lookup ({}) cannot be read: {e}", sink.name()),
        )
        .into_response(),
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

/// A BFF's registration, checked: `(bff_url, public_ip)`, or every problem as
/// `(field, message)`. The body is `{"bff_url": "https://…", "public_ip": "…"}` (reference
/// doc 001, BFF startup step 3); `bff_url` must be an absolute https URL with a host,
/// `public_ip` an IPv4 or IPv6 address.
pub(super) fn check_registration(
    body: &[u8],
) -> Result<(String, std::net::IpAddr), Vec<(&'static str, String)>> {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        Ok(_) => {
            return Err(vec![(
                "body",
                "must be a JSON object {bff_url, public_ip}".into(),
            )])
        }
        Err(e) => return Err(vec![("body", format!("not JSON: {e}"))]),
    };
    let mut errors = Vec::new();
    let field = |name: &'static str, errors: &mut Vec<(&'static str, String)>| match value.get(name)
    {
        Some(serde_json::Value::String(s)) => Some(s.trim().to_owned()),
        Some(_) => {
            errors.push((name, "must be a string".into()));
            None
        }
        None => {
            errors.push((name, "required".into()));
            None
        }
    };
    let url = field("bff_url", &mut errors).filter(|url| {
        let ok = url.len() <= 2048
            && url.parse::<axum::http::Uri>().is_ok_and(|u| {
                u.scheme_str() == Some("https")
                    && u.host().is_some_and(|h| !h.is_empty())
                    && !u.authority().is_some_and(|a| a.as_str().contains('@'))
            });
        if !ok {
            errors.push((
                "bff_url",
                format!("`{url}` is not an https:// URL with a host"),
            ));
        }
        ok
    });
    let ip = field("public_ip", &mut errors).and_then(|ip| match ip.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            errors.push((
                "public_ip",
                format!("`{ip}` is not an IPv4 or IPv6 address"),
            ));
            None
        }
    });
    match (url, ip) {
        (Some(url), Some(ip)) if errors.is_empty() => Ok((url, ip)),
        _ => Err(errors),
    }
}

/// `POST /api/workspaces/{id}/register`: the BFF registers at startup and then periodically
/// (reference doc 001, BFF startup step 3). Records `{bff_url, public_ip}` and marks the BFF
/// healthy: the workspace's `BffHealthy` condition turns `True` until no registration has
/// come for `--bff-register-ttl` ([`expire_registrations`]). `400` names every bad field.
pub(super) async fn bff_register(
    State(sh): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let id = workspace_of(&id);
    let name = cplane_schema::domain::workspace_name(&id);
    if let Err(e) = require_credential(&sh, &headers, &None, &name, TokenScope::Bff).await {
        return e.into_response();
    }
    let (url, ip) = match check_registration(&body) {
        Ok(r) => r,
        Err(errors) => {
            let message = errors
                .iter()
                .map(|(f, m)| format!("{f}: {m}"))
                .collect::<Vec<_>>()
                .join("; ");
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({
                    "error": message,
                    "errors": errors.iter().map(|(f, m)| json!({"field": f, "message": m})).collect::<Vec<_>>(),
                })),
            )
                .into_response();
        }
    };
    let ttl = sh.settings.bff_register_ttl;
    match sh.db.register_bff(&id, &url, &ip.to_string(), ttl).await {
        Ok(at) => {
            tracing::info!(workspace = %name, bff_url = %url, public_ip = %ip, "BFF registered");
            Json(json!({
                "registered": name,
                "bff_url": url,
                "public_ip": ip.to_string(),
                "registered_at_ms": at,
                "ttl_seconds": ttl.as_secs_f64(),
            }))
            .into_response()
        }
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// Turns the `BffHealthy` condition of every BFF that stopped registering `False` (reason
/// `RegistrationExpired`): checks every quarter of `--bff-register-ttl` (at least every 30 s,
/// at most every 100 ms), so a BFF turns unhealthy between TTL and TTL + min(TTL/4, 30 s)
/// after its last registration. Every replica runs it; the change is idempotent.
pub(super) async fn expire_registrations(sh: Arc<Shared>) {
    let ttl = sh.settings.bff_register_ttl;
    let every = (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sh.db.expire_bff_registrations(ttl).await {
            Ok(expired) => {
                for id in expired {
                    tracing::warn!(workspace = %id, ttl = %humantime::format_duration(ttl), "BFF registration expired: BffHealthy=False");
                }
            }
            Err(e) => tracing::warn!(error = %e, "checking BFF registrations"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check_registration;

    #[test]
    fn registrations_are_checked_field_by_field() {
        let ok = check_registration(
            br#"{"bff_url":"https://bff.w-acme.sgp-1.cogrion.com","public_ip":"203.0.113.7"}"#,
        )
        .expect("valid");
        assert_eq!(ok.0, "https://bff.w-acme.sgp-1.cogrion.com");
        assert_eq!(ok.1.to_string(), "203.0.113.7");
        assert!(check_registration(
            br#"{"bff_url":"https://x.example","public_ip":"2001:db8::1"}"#
        )
        .is_ok());
        let fields = |body: &[u8]| -> Vec<&'static str> {
            check_registration(body)
                .expect_err("invalid")
                .into_iter()
                .map(|(f, _)| f)
                .collect()
        };
        assert_eq!(
            fields(br#"{"bff_url":"http://x","public_ip":"1.2.3"}"#),
            ["bff_url", "public_ip"]
        );
        assert_eq!(
            fields(br#"{"url":"https://x.example"}"#),
            ["bff_url", "public_ip"]
        );
        assert_eq!(
            fields(br#"{"bff_url":"https://u:p@x.example","public_ip":"1.2.3.4"}"#),
            ["bff_url"]
        );
        assert_eq!(
            fields(br#"{"bff_url":"https://x.example","public_ip":7}"#),
            ["public_ip"]
        );
        assert_eq!(fields(b"[1]"), ["body"]);
        assert_eq!(fields(b"{"), ["body"]);
    }
}
