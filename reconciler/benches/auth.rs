//! Cost of authenticating one API request (`cargo bench -p cplane-reconciler --bench auth`; env
//! `CPLANE_BENCH_REQUESTS`): the auth middleware in front of a trivial handler, through
//! `tower::ServiceExt::oneshot`, with the signing keys cached (one JWKS fetch from an issuer on
//! 127.0.0.1) and the principal resolved by email in SQLite (PostgreSQL with `CPLANE_BENCH_PG`),
//! for RS256 (RSA-2048) and ES256 (P-256) tokens, against the same route with no auth.
//!
//! Before/after, 2026-12-06 (issue 12 "Done when"): the tree at 78ab27a ("before") and after the
//! issue 12 sessions (e37b0da plus the validate work), release builds, each bench run in both
//! trees back to back; the machine was shared with other builds (load printed), so figures move
//! by tens of percent between runs of one tree.
//! - load about 9, median per request (SQLite): no auth 0.3 / 0.3 us; RS256 + principal 287 /
//!   64 us; ES256 + principal 104 / 102 us; one JWKS fetch in both.
//! - load 2.9: no auth 0.3 / 0.3 us; RS256 60 / 259 us; ES256 97 / 425 us; one JWKS fetch. The
//!   two runs disagree in opposite directions: on this machine the medians are the neighbours'
//!   builds, not the code.

#[path = "../../tests/src/oidc.rs"]
#[allow(dead_code)] // the bench uses part of the test helpers
mod oidc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use cplane_reconciler::auth::{self, Auth, Config, Principal};
use cplane_reconciler::db::Db;
use tower::ServiceExt as _;

async fn run(app: &Router, token: Option<&str>, n: usize) -> Duration {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let mut req = Request::get("/v1/me");
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let started = Instant::now();
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        times.push(started.elapsed());
        assert_eq!(resp.status(), StatusCode::OK);
    }
    times.sort_unstable();
    times[n / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("CPLANE_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let (rsa, ec) = (oidc::TestKey::rsa("rsa"), oidc::TestKey::ec("ec"));
    let issuer = oidc::TestIssuer::start("/realms/bench", &[&rsa, &ec]).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = std::env::var("CPLANE_BENCH_PG")
        .unwrap_or_else(|_| format!("sqlite://{}", tmp.path().join("bench.db").display()));
    let db = Db::connect(&url).await.expect("database");
    let config = Config {
        issuers: vec![issuer.url.clone()],
        audience: Some("cplane".into()),
        ..Config::default()
    };
    let with_auth = Arc::new(Auth::new(config, db.clone()));
    let handler = get(|p: Principal| async move { p.email });
    let app = Router::new()
        .route("/v1/me", handler)
        .layer(axum::middleware::from_fn_with_state(
            with_auth,
            auth::require_user,
        ));
    let open = Router::new().route("/v1/me", get(|| async { "anonymous" }));

    let claims = oidc::claims(&issuer.url, "cplane", "bench@example.com", 3600);
    let (rs, es) = (rsa.token(&claims), ec.token(&claims));
    // Warm up: the JWKS fetch and the principal's creation happen here.
    run(&app, Some(&rs), 10).await;
    run(&app, Some(&es), 10).await;
    let none = run(&open, None, n).await;
    let rs_t = run(&app, Some(&rs), n).await;
    let es_t = run(&app, Some(&es), n).await;
    println!(
        "auth bench: {n} requests each, median per request ({})",
        cplane_reconciler::db::redact(&url)
            .split(':')
            .next()
            .unwrap_or("")
    );
    println!(
        "  no auth                      {:>8.1} µs",
        none.as_secs_f64() * 1e6
    );
    println!(
        "  RS256 (RSA-2048) + principal {:>8.1} µs",
        rs_t.as_secs_f64() * 1e6
    );
    println!(
        "  ES256 (P-256) + principal    {:>8.1} µs",
        es_t.as_secs_f64() * 1e6
    );
    println!("  JWKS fetches                 {:>8}", issuer.fetches());
}
