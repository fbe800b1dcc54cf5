//! The edge front door's two questions (reference doc 002: "Control Plane is the source of
//! truth for hostname → upstream routing via `/v1/public/route` and TLS authorization via
//! `/v1/public/tls-authorize`"). The front door is a stateless Caddy in front of tenants'
//! public URLs; it asks:
//! - `GET /v1/public/tls-authorize?domain=H`, Caddy's on-demand TLS `ask`, before it obtains
//!   a certificate for `H`: `200` only for a host cplane owns, else `404` (any non-2xx makes
//!   Caddy refuse the handshake), so nobody can make the edge request certificates for
//!   arbitrary names pointed at it;
//! - `GET /v1/public/route?host=H` (Caddy's `forward_auth`) for every request: `200` with the
//!   upstream in `X-Cplane-Upstream` (and the body), which Caddy proxies to; `404` for a host
//!   cplane does not own.
//!
//! **The hosts cplane owns** are the workspace zones of the applied revision and every name
//! under them: `w-{id}.{env.}{region}.{base}` and `*.w-{id}.…` (the BFF, the app, Coderunner's
//! public URLs). Platform hosts (`auth.sgp-1.…`) are served by the region's own load
//! balancer (reference doc 001), not by the front door, and are not answered. A workspace
//! removed from the state repo stops being routed, and authorized, once the commit that
//! removes it is applied; a refused commit changes nothing.
//!
//! **The upstream** of a workspace host is `--edge-upstream` with `{workspace}` (`w-acme`),
//! `{zone}` and `{bff}` (the workspace's BFF host, its cluster's gateway: reference doc 000)
//! replaced; by default `{bff}:443`.
//!
//! Both endpoints are open (the edge holds no credential and the answers are public facts:
//! which names exist), answered from an index of the applied revision built once per commit,
//! and rate-limited per source address (`--edge-rate-limit` requests per second, a burst of
//! twice that; `429` with `Retry-After` beyond it; the webhook's limiter, so IPv6 sources are
//! keyed by their /64 and memory is bounded). The peer address is the TCP peer: put no
//! proxy between the edge and cplane that hides it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

use axum::extract::{ConnectInfo, Query};
use axum::http::HeaderValue;

use super::*;

/// The front door's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The upstream of a workspace host: `{workspace}`, `{zone}` and `{bff}` are replaced.
    pub upstream: String,
    /// Requests per second per source address (a burst of twice as many).
    pub rate_per_second: NonZeroU32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            upstream: DEFAULT_UPSTREAM.to_owned(),
            rate_per_second: NonZeroU32::new(DEFAULT_RATE).expect("not zero"),
        }
    }
}

/// The default upstream: the workspace's BFF.
pub const DEFAULT_UPSTREAM: &str = "{bff}:443";

/// The default rate limit, requests per second per source address.
pub const DEFAULT_RATE: u32 = 50;

/// One workspace as the front door sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    /// `w-{id}`.
    workspace: String,
    region: String,
    environment: String,
    /// `w-{id}.{env.}{region}.{base}`.
    zone: String,
    /// The workspace's BFF host.
    bff: String,
}

/// Workspace zones of one applied revision.
#[derive(Debug, Default)]
struct Index {
    commit: String,
    zones: HashMap<String, Route>,
}

impl Index {
    fn of(commit: String, model: &cplane_schema::Model) -> Self {
        let mut zones = HashMap::with_capacity(model.workspaces.len());
        for (id, ws) in &model.workspaces {
            let spec = &ws.doc.spec;
            let names = cplane_schema::validate::names_for(model, &spec.region, &spec.environment);
            let zone = names.workspace_zone(id);
            zones.insert(
                zone.clone(),
                Route {
                    workspace: cplane_schema::domain::workspace_name(id),
                    region: spec.region.clone(),
                    environment: spec.environment.clone(),
                    zone,
                    bff: names.workspace_host(id, "bff"),
                },
            );
        }
        Self { commit, zones }
    }

    /// The workspace whose zone is `host` or holds it.
    fn owner_of(&self, host: &str) -> Option<&Route> {
        let mut rest = host;
        loop {
            if let Some(route) = self.zones.get(rest) {
                return Some(route);
            }
            rest = rest.split_once('.')?.1;
        }
    }
}

/// The front door's state: settings, the limiter, the index of the applied revision.
pub(super) struct Edge {
    settings: Settings,
    limiter: cplane_webhook::Limiter,
    index: tokio::sync::Mutex<Arc<Index>>,
}

impl Edge {
    pub(super) fn new(settings: Settings) -> Self {
        let rate = settings.rate_per_second.get();
        Self {
            limiter: cplane_webhook::Limiter::new(cplane_webhook::RateLimit {
                burst: rate.saturating_mul(2),
                per_minute: rate.saturating_mul(60),
            }),
            settings,
            index: tokio::sync::Mutex::new(Arc::default()),
        }
    }

    /// `Err(how long to wait)` when `peer` is over its rate.
    pub(super) fn admit(&self, peer: IpAddr) -> Result<(), std::time::Duration> {
        self.limiter.check(Some(peer))
    }

    /// The `429` of a source over its rate, with `Retry-After` in whole seconds.
    pub(super) fn too_many(&self, wait: std::time::Duration) -> Response {
        let mut response = api_error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "more than {} requests per second",
                self.settings.rate_per_second
            ),
        )
        .into_response();
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs() + 1),
        );
        response
    }

    /// The index of the applied revision, built again when another revision was applied.
    async fn index(&self, sh: &Arc<Shared>) -> Result<Arc<Index>, ApiError> {
        let applied = sh.applied.lock().expect("applied").clone();
        let mut index = self.index.lock().await;
        if index.commit != applied || applied.is_empty() {
            let sh = sh.clone();
            let built = tokio::task::spawn_blocking(move || {
                applied_model(&sh).map(|(commit, model)| Index::of(commit, &model))
            })
            .await
            .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e))??;
            *index = Arc::new(built);
        }
        Ok(index.clone())
    }

    fn upstream(&self, route: &Route) -> String {
        self.settings
            .upstream
            .replace("{workspace}", &route.workspace)
            .replace("{zone}", &route.zone)
            .replace("{bff}", &route.bff)
    }
}

/// `GET /v1/public/route` and `GET /v1/public/tls-authorize`, open and rate-limited.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/public/route", get(route))
        .route("/v1/public/tls-authorize", get(tls_authorize))
        .with_state(shared)
}

/// A host as asked: lower-case, without a port or a trailing dot; `None` when it is not a DNS
/// name.
fn normalized(host: &str) -> Option<String> {
    let host = host.trim();
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    cplane_schema::domain::is_dns_name(&host).then_some(host)
}

/// The peer's address (set by the connection loop; `127.0.0.1` for in-process tests).
pub(super) fn peer_of(connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>) -> IpAddr {
    connect.map_or(
        IpAddr::from([127, 0, 0, 1]),
        |axum::Extension(ConnectInfo(peer))| peer.ip(),
    )
}

/// Admission, parameter and lookup shared by both endpoints.
async fn lookup(
    sh: &Arc<Shared>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    asked: Option<&String>,
    parameter: &str,
) -> Result<(String, Option<Route>), Response> {
    if let Err(wait) = sh.edge.admit(peer_of(connect)) {
        return Err(sh.edge.too_many(wait));
    }
    let Some(asked) = asked else {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            format!("the query parameter `{parameter}` is required"),
        )
        .into_response());
    };
    let Some(host) = normalized(asked) else {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            format!("`{parameter}` is not a DNS name"),
        )
        .into_response());
    };
    let index = sh
        .edge
        .index(sh)
        .await
        .map_err(IntoResponse::into_response)?;
    let route = index.owner_of(&host).cloned();
    Ok((host, route))
}

/// `GET /v1/public/route?host=`: the upstream of a workspace host.
async fn route(
    State(sh): State<Arc<Shared>>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (host, route) = match lookup(&sh, connect, query.get("host"), "host").await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let Some(route) = route else {
        return api_error(StatusCode::NOT_FOUND, format!("no route for {host}")).into_response();
    };
    let upstream = sh.edge.upstream(&route);
    let body = json!({
        "host": host,
        "workspace": route.workspace,
        "region": route.region,
        "environment": route.environment,
        "upstream": upstream,
    });
    let mut response = Json(body).into_response();
    for (name, value) in [
        ("x-cplane-upstream", &upstream),
        ("x-cplane-workspace", &route.workspace),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// `GET /v1/public/tls-authorize?domain=`: `200` for a host cplane owns, else `404`.
async fn tls_authorize(
    State(sh): State<Arc<Shared>>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match lookup(&sh, connect, query.get("domain"), "domain").await {
        Ok((host, Some(route))) => {
            Json(json!({ "domain": host, "workspace": route.workspace })).into_response()
        }
        Ok((host, None)) => api_error(
            StatusCode::NOT_FOUND,
            format!("{host} is not a host of cplane's"),
        )
        .into_response(),
        Err(response) => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index of the built-in template (what `cplane init` writes).
    fn template_index() -> Index {
        fn files(dir: &include_dir::Dir<'_>, out: &mut Vec<cplane_schema::SourceFile>) {
            for file in dir.files() {
                let path = file.path().to_str().expect("utf-8").to_owned();
                if cplane_schema::FileRole::of(&path) != cplane_schema::FileRole::Ignored {
                    out.push(cplane_schema::SourceFile {
                        path,
                        bytes: file.contents().to_vec(),
                    });
                }
            }
            for sub in dir.dirs() {
                files(sub, out);
            }
        }
        let mut all = Vec::new();
        files(&crate::init::TEMPLATE, &mut all);
        let model = cplane_schema::load(all).into_valid().expect("valid");
        Index::of("c".into(), &model)
    }

    #[test]
    fn workspace_zones_and_the_names_under_them_are_routed() {
        let index = template_index();
        let acme = index
            .owner_of("w-acme.sgp-1.cogrion.com")
            .expect("acme's zone");
        assert_eq!(acme.workspace, "w-acme");
        assert_eq!(acme.bff, "bff.w-acme.sgp-1.cogrion.com");
        for host in [
            "app.w-acme.sgp-1.cogrion.com",
            "run-42.apps.w-acme.sgp-1.cogrion.com",
        ] {
            assert_eq!(index.owner_of(host), Some(acme), "{host}");
        }
        for host in [
            "evil.example.com",
            "cogrion.com",
            "auth.sgp-1.cogrion.com",
            // Another environment's or region's name for the same id is not acme's.
            "app.w-acme.dev.sgp-1.cogrion.com",
            "app.w-acme.fra-1.cogrion.com",
            "w-acme.sgp-1.cogrion.com.evil.example.com",
            "app.w-nobody.sgp-1.cogrion.com",
        ] {
            assert_eq!(index.owner_of(host), None, "{host}");
        }
    }

    #[test]
    fn hosts_are_normalized_and_checked() {
        assert_eq!(
            normalized("App.W-Acme.sgp-1.cogrion.com.:8443").as_deref(),
            Some("app.w-acme.sgp-1.cogrion.com")
        );
        for bad in ["", "a b", "../etc/passwd", "x_y.example.com", "[::1]:80"] {
            assert_eq!(normalized(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_upstream_template_is_filled_in() {
        let index = template_index();
        let route = index.owner_of("w-acme.sgp-1.cogrion.com").expect("acme");
        let edge = Edge::new(Settings {
            upstream: "{workspace}.tenants.internal:8443/{zone}/{bff}".into(),
            ..Settings::default()
        });
        assert_eq!(
            edge.upstream(route),
            "w-acme.tenants.internal:8443/w-acme.sgp-1.cogrion.com/bff.w-acme.sgp-1.cogrion.com"
        );
        assert_eq!(
            Edge::new(Settings::default()).upstream(route),
            "bff.w-acme.sgp-1.cogrion.com:443"
        );
    }

    #[test]
    fn each_source_has_its_own_rate() {
        let edge = Edge::new(Settings {
            rate_per_second: NonZeroU32::new(3).expect("not zero"),
            ..Settings::default()
        });
        let (a, b) = (IpAddr::from([127, 0, 0, 2]), IpAddr::from([127, 0, 0, 3]));
        // A burst of twice the rate, then refused with a Retry-After.
        for _ in 0..6 {
            assert!(edge.admit(a).is_ok());
        }
        let wait = edge.admit(a).expect_err("over the rate");
        let refused = edge.too_many(wait);
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()["retry-after"], "1");
        assert!(edge.admit(b).is_ok(), "another source is not limited");
    }
}
