//! The dashboard (`/ui/`): one page and a small script over the JSON API, built into the
//! binary (no build step, no CDN at run time, nothing fetched but the API and the issuer).
//!
//! The assets are open, like `/openapi.json`: they hold no data. Everything shown comes from
//! the API with the signed-in user's bearer token, so a user sees what the API lets them read.
//! `/ui/config.json` tells the script which issuer to sign in with (authorization code + PKCE)
//! and as which client. Responses carry a strict Content-Security-Policy: scripts and styles
//! from this server only, connections to this server and the issuer only, no framing.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::Shared;

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// The OAuth client id the dashboard signs in as (a public client with PKCE: no secret).
pub const CLIENT_ID: &str = "cplane-dashboard";

/// The dashboard's routes.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/",
            get(|State(sh): State<Arc<Shared>>| async move {
                asset(&sh, "text/html; charset=utf-8", INDEX)
            }),
        )
        .route(
            "/ui/app.js",
            get(|State(sh): State<Arc<Shared>>| async move {
                asset(&sh, "text/javascript; charset=utf-8", APP_JS)
            }),
        )
        .route(
            "/ui/app.css",
            get(|State(sh): State<Arc<Shared>>| async move {
                asset(&sh, "text/css; charset=utf-8", APP_CSS)
            }),
        )
        .route("/ui/config.json", get(config))
        .with_state(shared)
}

/// The first configured issuer, which the dashboard signs in with.
fn issuer(sh: &Shared) -> Option<String> {
    sh.auth.config().issuers.first().cloned()
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

fn asset(sh: &Shared, content_type: &'static str, body: &'static str) -> Response {
    let connect = match issuer(sh) {
        Some(i) => format!("'self' {}", origin(&i)),
        None => "'self'".to_owned(),
    };
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src {connect}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    );
    let mut r = (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    r
}

/// `GET /ui/config.json`: the issuer and client id to sign in with, and whether edits may be
/// proposed as pull requests (a forge is configured: `?mode=pr` opens one).
async fn config(State(sh): State<Arc<Shared>>) -> Response {
    Json(serde_json::json!({
        "issuer": issuer(&sh),
        "client_id": CLIENT_ID,
        "pull_requests": sh.forge.is_some(),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn origin_strips_the_path() {
        assert_eq!(
            super::origin("http://127.0.0.1:3000/dev-issuer"),
            "http://127.0.0.1:3000"
        );
        assert_eq!(
            super::origin("https://auth.example.com"),
            "https://auth.example.com"
        );
    }
}
