//! The agent protocol: `GET /v1/clusters/{id}/bundle` (long-poll, ETag) and
//! `POST /v1/clusters/{id}/status`, authenticated by the cluster's `agent` token or client
//! certificate, never by a user's nor by the workspace BFF's `bff` token.

use super::*;
use crate::db::TokenScope;

/// The agent protocol's routes: each handler checks the cluster's credential itself.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/clusters/{cluster}/bundle", get(bundle))
        .route(
            "/v1/clusters/{cluster}/status",
            axum::routing::post(report_status),
        )
        .with_state(shared)
}

/// What a request's `Authorization: Bearer <cluster token>` grants: `401` when it is missing,
/// unknown, revoked or expired.
pub(super) async fn bearer_grant(
    sh: &Shared,
    headers: &axum::http::HeaderMap,
) -> Result<crate::db::TokenGrant, ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| api_error(StatusCode::UNAUTHORIZED, "missing bearer token"))?;
    match sh.store.token_grant(token.trim()).await {
        Ok(Some(grant)) if grant.is_expired(crate::db::now_ms()) => {
            Err(api_error(StatusCode::UNAUTHORIZED, "expired token"))
        }
        Ok(Some(grant)) => Ok(grant),
        Ok(None) => Err(api_error(
            StatusCode::UNAUTHORIZED,
            "unknown or revoked token",
        )),
        Err(e) => Err(api_error(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

/// The verified client certificate's cluster, when the connection is mTLS ([`crate::tls`]).
pub(super) type ClientCert = Option<axum::Extension<ClientCluster>>;

/// Passes when the caller acts for `cluster` with a credential of `scope`.
///
/// - [`TokenScope::Agent`]: the cluster's verified client certificate (an agent's identity),
///   else a bearer token of scope `agent` for that cluster.
/// - [`TokenScope::Bff`]: a bearer token of scope `bff` for that cluster only; a client
///   certificate is ignored (it identifies the cluster's agent, not its BFF).
///
/// `401` without a credential or with an unknown, revoked or expired token; `403` for another
/// cluster's credential or a token of the other scope.
pub(super) async fn require_credential(
    sh: &Shared,
    headers: &axum::http::HeaderMap,
    cert: &ClientCert,
    cluster: &str,
    scope: TokenScope,
) -> Result<(), ApiError> {
    let owner = match (scope, cert) {
        (TokenScope::Agent, Some(axum::Extension(ClientCluster(c)))) => c.clone(),
        _ => {
            let grant = bearer_grant(sh, headers).await?;
            if grant.scope != scope {
                return Err(api_error(
                    StatusCode::FORBIDDEN,
                    format!(
                        "this is a {} token; this endpoint takes a {scope} token",
                        grant.scope
                    ),
                ));
            }
            grant.cluster
        }
    };
    if owner == cluster {
        Ok(())
    } else {
        Err(api_error(
            StatusCode::FORBIDDEN,
            format!("this credential is not for {cluster}"),
        ))
    }
}

/// `?wait=<seconds>` of the bundle long-poll.
#[derive(serde::Deserialize)]
pub(super) struct WaitQuery {
    pub(super) wait: Option<u64>,
}

/// Longest long-poll accepted.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(300);

/// `GET /v1/clusters/{cluster}/bundle` (agent protocol): the cluster's canonical bundle with
/// `ETag: "<digest>"` and `X-Cplane-Generation`, or `304` when `If-None-Match` names the current
/// digest — after waiting up to `?wait=` seconds for a change. A token for one cluster gets `403`
/// for every other, and so does a `bff` token. A `304` is answered from memory (no database read); a `200` is gzip-encoded
/// when the agent accepts it (the stored bytes, as they are) and inflated otherwise.
pub(super) async fn bundle(
    State(sh): State<Arc<Shared>>,
    UrlPath(cluster): UrlPath<String>,
    axum::extract::Query(q): axum::extract::Query<WaitQuery>,
    headers: axum::http::HeaderMap,
    cert: ClientCert,
) -> Response {
    if let Err(e) = require_credential(&sh, &headers, &cert, &cluster, TokenScope::Agent).await {
        return e.into_response();
    }
    let known = headers
        .get(axum::http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_matches('"').to_owned());
    let gzip = accepts_gzip(&headers);
    // Not held while parked: hyper parses header values in place, so they would keep the
    // connection's first read buffer alive next to the one it reads into meanwhile.
    drop(headers);
    let deadline = Instant::now() + Duration::from_secs(q.wait.unwrap_or(0)).min(MAX_WAIT);
    // Subscribe before looking, so a publish between the look and the wait is not missed.
    let mut changes = sh.store.subscribe();
    let mut waiting = None;
    loop {
        let Some(head) = sh.store.head(&cluster) else {
            return api_error(
                StatusCode::NOT_FOUND,
                format!("no bundle published for cluster {cluster}"),
            )
            .into_response();
        };
        if known.as_deref() != Some(&*head.digest) {
            break;
        }
        let now = Instant::now();
        if now < deadline && waiting.is_none() {
            waiting = Some(Waiting::new(&sh.metrics.long_polls));
        }
        if now >= deadline
            || tokio::time::timeout(deadline - now, changes.changed())
                .await
                .is_err()
        {
            return (
                StatusCode::NOT_MODIFIED,
                [(axum::http::header::ETAG, format!("\"{}\"", head.digest))],
            )
                .into_response();
        }
    }
    let (digest, generation, gz) = match sh.store.body(&cluster).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return api_error(
                StatusCode::NOT_FOUND,
                format!("no bundle published for cluster {cluster}"),
            )
            .into_response()
        }
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    };
    drop(waiting);
    let mut response = if gzip {
        let mut r = gz.into_response();
        r.headers_mut().insert(
            axum::http::header::CONTENT_ENCODING,
            axum::http::HeaderValue::from_static("gzip"),
        );
        r
    } else {
        let mut body = Vec::new();
        if let Err(e) =
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut body)
        {
            return api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("stored bundle {digest} is corrupt: {e}"),
            )
            .into_response();
        }
        body.into_response()
    };
    let h = response.headers_mut();
    for (name, value) in [
        (axum::http::header::ETAG, format!("\"{digest}\"")),
        (
            axum::http::header::CONTENT_TYPE,
            "application/x-ndjson".to_owned(),
        ),
        (axum::http::header::VARY, "Accept-Encoding".to_owned()),
        (
            axum::http::HeaderName::from_static("x-cplane-generation"),
            generation.to_string(),
        ),
    ] {
        h.insert(
            name,
            axum::http::HeaderValue::try_from(value).expect("digests and numbers are ASCII"),
        );
    }
    response
}

/// Whether `Accept-Encoding` admits gzip (`gzip` or `*`, with a non-zero `q`).
pub(super) fn accepts_gzip(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !zero
        })
}

/// `POST /v1/clusters/{cluster}/status` (agent protocol): the applied digest, generation,
/// per-object results and health, with the cluster's own `agent` token (or certificate).
pub(super) async fn report_status(
    State(sh): State<Arc<Shared>>,
    UrlPath(cluster): UrlPath<String>,
    headers: axum::http::HeaderMap,
    cert: ClientCert,
    body: axum::body::Bytes,
) -> Response {
    if let Err(e) = require_credential(&sh, &headers, &cert, &cluster, TokenScope::Agent).await {
        return e.into_response();
    }
    let mut report: crate::db::ClusterReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return api_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("status report: {e}"),
            )
            .into_response()
        }
    };
    let hex = report.digest.strip_prefix("sha256:").unwrap_or("");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) || !report.objects.is_array()
    {
        return api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "status report: digest must be sha256:<64 hex>, objects a list",
        )
        .into_response();
    }
    report.agent_version = agent_version(&headers).unwrap_or_default();
    warn_if_outdated(&cluster, &report.agent_version);
    match sh.db.report_cluster_status(&cluster, &report).await {
        Ok(()) => {
            // A report may pass (or fail) a rollout gate: judge it now, not at the next tick.
            sh.rollout_wake.notify_one();
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// The agent's version from its `User-Agent` (`cplane-agent/0.1.0 (commit …)`).
fn agent_version(headers: &axum::http::HeaderMap) -> Option<String> {
    let ua = headers.get(axum::http::header::USER_AGENT)?.to_str().ok()?;
    let v = ua.strip_prefix("cplane-agent/")?;
    Some(v.chars().take(128).collect())
}

/// Logs a warning, once per cluster and version in this process, when a cluster's agent is
/// older than this server (or does not say which version it is): an old agent may not
/// understand what this server publishes. Upgrade it with `cplane agent install`.
fn warn_if_outdated(cluster: &str, agent: &str) {
    static WARNED: std::sync::Mutex<Option<std::collections::HashSet<(String, String)>>> =
        std::sync::Mutex::new(None);
    let server = semver::Version::parse(env!("CARGO_PKG_VERSION")).expect("the crate's version");
    let theirs = agent
        .split_whitespace()
        .next()
        .and_then(|v| semver::Version::parse(v).ok());
    if theirs.as_ref().is_some_and(|v| *v >= server) {
        return;
    }
    let mut warned = WARNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if warned
        .get_or_insert_with(Default::default)
        .insert((cluster.to_owned(), agent.to_owned()))
    {
        tracing::warn!(
            cluster,
            agent_version = if agent.is_empty() { "unknown" } else { agent },
            server_version = crate::version(),
            "this cluster's agent is older than the control plane: upgrade it (`cplane agent install --cluster {cluster}`, then apply)"
        );
    }
}
