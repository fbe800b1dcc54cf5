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
