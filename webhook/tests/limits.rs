//! The webhook's front-door limits (issue 13, item 6): GitLab's token compared without leaking
//! its length, a per-source rate limit, and de-duplication through a shared delivery store.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cplane_webhook::{router, Config, Push, DEFAULT_MAX_BODY};
use tower::ServiceExt;

const SECRET: &str = "s3cret-webhook-key";

type Pushes = Arc<Mutex<Vec<Push>>>;

/// A request to the router: (status, headers, body).
async fn send(
    app: &axum::Router,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let mut req = Request::post("/v1/webhooks/git").header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_vec())).expect("request"))
        .await
        .expect("response");
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

fn gitlab_push() -> Vec<u8> {
    br#"{"object_kind":"push","ref":"refs/heads/main","after":"abc"}"#.to_vec()
}

#[tokio::test]
async fn gitlab_tokens_of_another_length_are_refused() {
    let pushes: Pushes = Arc::default();
    let sink = pushes.clone();
    let app = router(
        Config::new(SECRET.as_bytes(), "main").expect("secret"),
        Arc::new(move |p: Push| sink.lock().expect("lock").push(p)),
        DEFAULT_MAX_BODY,
    );
    let longer = format!("{SECRET}x");
    let longest = SECRET.repeat(40);
    for wrong in [
        "",
        "s",
        &SECRET[..SECRET.len() - 1],
        longer.as_str(),
        longest.as_str(),
        "S3CRET-WEBHOOK-KEY",
    ] {
        let (status, _, json) = send(
            &app,
            &[("x-gitlab-event", "Push Hook"), ("x-gitlab-token", wrong)],
            &gitlab_push(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong:?}: {json}");
    }
    assert!(pushes.lock().expect("lock").is_empty());
    let (status, _, json) = send(
        &app,
        &[("x-gitlab-event", "Push Hook"), ("x-gitlab-token", SECRET)],
        &gitlab_push(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    assert_eq!(pushes.lock().expect("lock").len(), 1);
}

/// A request from `source`, as the server's connection layer hands it: (status, Retry-After).
async fn from(app: &axum::Router, source: &str) -> (StatusCode, Option<String>) {
    let addr: std::net::SocketAddr = source.parse().expect("address");
    let mut req = Request::post("/v1/webhooks/git")
        .body(Body::from("{}"))
        .expect("request");
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    let resp = app.clone().oneshot(req).await.expect("response");
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (resp.status(), retry)
}

#[tokio::test]
async fn a_source_over_its_rate_gets_429_and_others_do_not() {
    let app = cplane_webhook::router_with_limits(
        Config::new(SECRET.as_bytes(), "main").expect("secret"),
        Arc::new(|_| {}),
        cplane_webhook::Limits {
            rate: Some(cplane_webhook::RateLimit {
                burst: 3,
                per_minute: 2,
            }),
            ..cplane_webhook::Limits::default()
        },
    );
    // Unsigned deliveries count too: the limit comes before the signature check.
    for _ in 0..3 {
        assert_eq!(
            from(&app, "192.0.2.1:4000").await,
            (StatusCode::UNAUTHORIZED, None)
        );
    }
    let (status, retry) = from(&app, "192.0.2.1:4001").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry.as_deref(), Some("30"), "one delivery per 30 s");
    assert_eq!(
        from(&app, "192.0.2.2:4000").await.0,
        StatusCode::UNAUTHORIZED,
        "another source is not limited"
    );
    assert_eq!(
        from(&app, "[2001:db8::1]:4000").await.0,
        StatusCode::UNAUTHORIZED
    );
}

/// Records ids in a set shared by several routers, as replicas share a database.
#[derive(Default)]
struct Shared(Mutex<std::collections::HashSet<String>>);

impl cplane_webhook::Deliveries for Shared {
    fn first_seen<'a>(&'a self, key: &'a str) -> cplane_webhook::FirstSeen<'a> {
        let first = self.0.lock().expect("lock").insert(key.to_owned());
        Box::pin(std::future::ready(Ok(first)))
    }
}

/// Always fails, as a database that is down.
struct Down;

impl cplane_webhook::Deliveries for Down {
    fn first_seen<'a>(&'a self, _: &'a str) -> cplane_webhook::FirstSeen<'a> {
        Box::pin(std::future::ready(Err("database down".to_owned())))
    }
}

#[tokio::test]
async fn a_delivery_store_shared_by_routers_acts_on_each_delivery_once() {
    let store = Arc::new(Shared::default());
    let pushes: Pushes = Arc::default();
    let replica = || {
        let sink = pushes.clone();
        cplane_webhook::router_with_limits(
            Config::new(SECRET.as_bytes(), "main").expect("secret"),
            Arc::new(move |p: Push| sink.lock().expect("lock").push(p)),
            cplane_webhook::Limits {
                deliveries: store.clone(),
                ..cplane_webhook::Limits::default()
            },
        )
    };
    let (a, b) = (replica(), replica());
    let gitlab = |uuid: &'static str| {
        [
            ("x-gitlab-event", "Push Hook"),
            ("x-gitlab-token", SECRET),
            ("x-gitlab-event-uuid", uuid),
        ]
    };
    assert_eq!(
        send(&a, &gitlab("u-1"), &gitlab_push()).await.0,
        StatusCode::ACCEPTED
    );
    let (status, _, json) = send(&b, &gitlab("u-1"), &gitlab_push()).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["ignored"], "duplicate delivery u-1");
    assert_eq!(
        send(&b, &gitlab("u-2"), &gitlab_push()).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(pushes.lock().expect("lock").len(), 2);
    let keys = store.0.lock().expect("lock").clone();
    assert!(keys.contains("gitlab:u-1"), "{keys:?}");

    // A store that cannot answer does not lose a push.
    let sink = pushes.clone();
    let down = cplane_webhook::router_with_limits(
        Config::new(SECRET.as_bytes(), "main").expect("secret"),
        Arc::new(move |p: Push| sink.lock().expect("lock").push(p)),
        cplane_webhook::Limits {
            deliveries: Arc::new(Down),
            ..cplane_webhook::Limits::default()
        },
    );
    assert_eq!(
        send(&down, &gitlab("u-1"), &gitlab_push()).await.0,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn gitlab_retries_are_recognised_by_their_idempotency_key() {
    let pushes: Pushes = Arc::default();
    let sink = pushes.clone();
    let app = router(
        Config::new(SECRET.as_bytes(), "main").expect("secret"),
        Arc::new(move |p: Push| sink.lock().expect("lock").push(p)),
        DEFAULT_MAX_BODY,
    );
    let attempt = |uuid: &'static str| {
        [
            ("x-gitlab-event", "Push Hook"),
            ("x-gitlab-token", SECRET),
            ("x-gitlab-event-uuid", uuid),
            ("idempotency-key", "908a6d9e-45fd-46c8-97e6-c4f350f219dd"),
        ]
    };
    assert_eq!(
        send(&app, &attempt("e-1"), &gitlab_push()).await.0,
        StatusCode::ACCEPTED
    );
    let (status, _, json) = send(&app, &attempt("e-2"), &gitlab_push()).await;
    assert_eq!(status, StatusCode::OK, "a retry: {json}");
    assert_eq!(pushes.lock().expect("lock").len(), 1);
}
