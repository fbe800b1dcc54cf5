//! Real payloads (fixtures/README.md) through the router, signed as each sender signs them.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cplane_webhook::{router, Config, Push, Sender, DEFAULT_MAX_BODY};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tower::ServiceExt;

const SECRET: &[u8] = b"s3cret-webhook-key";

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

type Pushes = Arc<Mutex<Vec<Push>>>;

fn app(branch: &str) -> (axum::Router, Pushes) {
    let pushes: Pushes = Arc::default();
    let sink = pushes.clone();
    let trigger = Arc::new(move |p: Push| sink.lock().expect("lock").push(p));
    (
        router(
            Config::new(SECRET, branch).expect("secret"),
            trigger,
            DEFAULT_MAX_BODY,
        ),
        pushes,
    )
}

async fn send(
    app: &axum::Router,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::post("/v1/webhooks/git").header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body)).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn github_push_to_the_watched_branch_triggers_once() {
    let (app, pushes) = app("master");
    let body = fixture("github-push-branch.json");
    let sig = format!("sha256={}", sign(&body));
    let headers = [
        ("x-github-event", "push"),
        ("x-github-delivery", "d-1"),
        ("x-hub-signature-256", sig.as_str()),
    ];
    let (status, json) = send(&app, &headers, body.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    assert_eq!(
        json["push"]["after"],
        "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
    );
    // The same delivery again (a redelivery) is acknowledged and ignored.
    let (status, json) = send(&app, &headers, body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["ignored"], "duplicate delivery d-1");
    let got = pushes.lock().expect("lock").clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].sender, Sender::GitHub);
    assert_eq!(got[0].branch, "master");
}

#[tokio::test]
async fn wrong_or_missing_signatures_are_refused() {
    let (app, pushes) = app("master");
    let body = fixture("github-push-branch.json");
    let bad = format!("sha256={}", "0".repeat(64));
    let (status, _) = send(
        &app,
        &[("x-github-event", "push"), ("x-hub-signature-256", &bad)],
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Signed with another secret.
    let mut mac = Hmac::<Sha256>::new_from_slice(b"other").expect("key");
    mac.update(&body);
    let other = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let (status, _) = send(
        &app,
        &[("x-github-event", "push"), ("x-hub-signature-256", &other)],
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A tampered body.
    let sig = format!("sha256={}", sign(&body));
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    let (status, _) = send(
        &app,
        &[("x-github-event", "push"), ("x-hub-signature-256", &sig)],
        tampered,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, json) = send(&app, &[("x-github-event", "push")], body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(json["error"]
        .as_str()
        .expect("error")
        .starts_with("no signature"));
    assert!(pushes.lock().expect("lock").is_empty());
    assert!(
        Config::new(b"", "main").is_none(),
        "no unauthenticated mode"
    );
}

#[tokio::test]
async fn tags_other_branches_and_pings_are_ignored() {
    let (app, pushes) = app("main");
    let tag = fixture("github-push-tag.json");
    let sig = format!("sha256={}", sign(&tag));
    let (status, json) = send(
        &app,
        &[("x-github-event", "push"), ("x-hub-signature-256", &sig)],
        tag,
    )
    .await;
    assert_eq!(
        (status, json["ignored"].as_str()),
        (StatusCode::OK, Some("refs/tags/simple-tag is not a branch"))
    );
    let branch = fixture("github-push-branch.json");
    let sig = format!("sha256={}", sign(&branch));
    let (status, json) = send(
        &app,
        &[("x-github-event", "push"), ("x-hub-signature-256", &sig)],
        branch,
    )
    .await;
    assert_eq!(
        (status, json["ignored"].as_str()),
        (StatusCode::OK, Some("branch master is not watched (main)"))
    );
    let ping = br#"{"zen":"Keep it logically awesome."}"#.to_vec();
    let sig = format!("sha256={}", sign(&ping));
    let (status, json) = send(
        &app,
        &[("x-github-event", "ping"), ("x-hub-signature-256", &sig)],
        ping,
    )
    .await;
    assert_eq!(
        (status, json["ignored"].as_str()),
        (StatusCode::OK, Some("not a push or pull request event"))
    );
    assert!(pushes.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn gitlab_gitea_and_generic_senders() {
    let (app, pushes) = app("master");
    let gitlab = fixture("gitlab-push.json");
    let (status, _) = send(
        &app,
        &[("x-gitlab-event", "Push Hook"), ("x-gitlab-token", "wrong")],
        gitlab.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let secret = std::str::from_utf8(SECRET).expect("utf-8");
    let (status, json) = send(
        &app,
        &[
            ("x-gitlab-event", "Push Hook"),
            ("x-gitlab-token", secret),
            ("x-gitlab-event-uuid", "g-1"),
        ],
        gitlab,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");

    // Gitea sends the GitHub-shaped payload, signed in X-Gitea-Signature (bare hex).
    let gitea = fixture("github-push-branch.json");
    let sig = sign(&gitea);
    let (status, json) = send(
        &app,
        &[
            ("x-gitea-event", "push"),
            ("x-gitea-delivery", "t-1"),
            ("x-gitea-signature", &sig),
        ],
        gitea,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");

    let generic = br#"{"ref":"refs/heads/master","after":"abc123"}"#.to_vec();
    let sig = format!("sha256={}", sign(&generic));
    let (status, json) = send(&app, &[("x-cplane-signature-256", &sig)], generic).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");

    let senders: Vec<Sender> = pushes
        .lock()
        .expect("lock")
        .iter()
        .map(|p| p.sender)
        .collect();
    assert_eq!(senders, [Sender::GitLab, Sender::Gitea, Sender::Generic]);
}

#[tokio::test]
async fn oversized_and_malformed_bodies_are_refused() {
    let pushes: Pushes = Arc::default();
    let sink = pushes.clone();
    let small = router(
        Config::new(SECRET, "master").expect("secret"),
        Arc::new(move |p| sink.lock().expect("lock").push(p)),
        1024,
    );
    let body = fixture("github-push-branch.json");
    let sig = format!("sha256={}", sign(&body));
    let (status, _) = send(
        &small,
        &[("x-github-event", "push"), ("x-hub-signature-256", &sig)],
        body,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let junk = b"not json".to_vec();
    let sig = format!("sha256={}", sign(&junk));
    let (status, _) = send(
        &small,
        &[("x-github-event", "push"), ("x-hub-signature-256", &sig)],
        junk,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(pushes.lock().expect("lock").is_empty());
}

type Requests = Arc<Mutex<Vec<cplane_webhook::PullRequest>>>;

/// A router planning pull requests into `branch`: (router, pushes, requests).
fn app_with_requests(branch: &str) -> (axum::Router, Pushes, Requests) {
    let pushes: Pushes = Arc::default();
    let requests: Requests = Arc::default();
    let (sink, seen) = (pushes.clone(), requests.clone());
    let router = cplane_webhook::router_with_pull_requests(
        Config::new(SECRET, branch).expect("secret"),
        Arc::new(move |p: Push| sink.lock().expect("lock").push(p)),
        Some(Arc::new(move |r| seen.lock().expect("lock").push(r))),
        cplane_webhook::Limits::default(),
    );
    (router, pushes, requests)
}

#[tokio::test]
async fn pull_request_events_of_each_forge_ask_for_a_plan_of_the_head() {
    let (app, pushes, requests) = app_with_requests("main");
    let secret = std::str::from_utf8(SECRET).expect("utf-8");

    let github = fixture("github-pull-request.json");
    let sig = format!("sha256={}", sign(&github));
    let headers = [
        ("x-github-event", "pull_request"),
        ("x-github-delivery", "pr-1"),
        ("x-hub-signature-256", sig.as_str()),
    ];
    let (status, json) = send(&app, &headers, github.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    assert_eq!(json["planning"], true);
    // A redelivery is acknowledged and not planned again.
    let (status, json) = send(&app, &headers, github.clone()).await;
    assert_eq!(
        (status, json["ignored"].as_str()),
        (StatusCode::OK, Some("duplicate delivery pr-1"))
    );

    let gitea = fixture("gitea-pull-request.json");
    let sig = sign(&gitea);
    let (status, json) = send(
        &app,
        &[
            ("x-gitea-event", "pull_request"),
            ("x-gitea-delivery", "pr-2"),
            ("x-gitea-signature", sig.as_str()),
        ],
        gitea,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");

    let gitlab = fixture("gitlab-merge-request.json");
    let (status, json) = send(
        &app,
        &[
            ("x-gitlab-event", "Merge Request Hook"),
            ("x-gitlab-token", secret),
            ("idempotency-key", "pr-3"),
        ],
        gitlab,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");

    let seen = requests.lock().expect("lock").clone();
    let summary: Vec<(Sender, u64, &str, &str, &str)> = seen
        .iter()
        .map(|r| {
            (
                r.sender,
                r.number,
                r.head.as_str(),
                r.head_ref.as_str(),
                r.source_branch.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                Sender::GitHub,
                7,
                "6dcb09b5b57875f334f61aebed695e2e4193db5e",
                "refs/pull/7/head",
                "globex-trino"
            ),
            (
                Sender::Gitea,
                3,
                "6dcb09b5b57875f334f61aebed695e2e4193db5e",
                "refs/pull/3/head",
                "globex-trino"
            ),
            (
                Sender::GitLab,
                4,
                "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
                "refs/merge-requests/4/head",
                "globex-trino"
            ),
        ]
    );
    assert!(pushes.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn pull_request_events_are_verified_and_filtered() {
    let (hook, _, requests) = app_with_requests("main");
    let github = fixture("github-pull-request.json");
    // A wrong signature is refused, as for pushes.
    let (status, _) = send(
        &hook,
        &[
            ("x-github-event", "pull_request"),
            ("x-hub-signature-256", "sha256=00"),
        ],
        github.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Closed, edited, and into another branch: acknowledged, not planned.
    let text = String::from_utf8(github).expect("utf-8");
    for (body, reason) in [
        (
            text.replace("\"synchronize\"", "\"closed\""),
            "pull request #7 closed: no new commits to plan",
        ),
        (
            text.replace("\"ref\": \"main\"", "\"ref\": \"develop\""),
            "the request merges into develop, which is not watched (main)",
        ),
    ] {
        let sig = format!("sha256={}", sign(body.as_bytes()));
        let (status, json) = send(
            &hook,
            &[
                ("x-github-event", "pull_request"),
                ("x-hub-signature-256", sig.as_str()),
            ],
            body.into_bytes(),
        )
        .await;
        assert_eq!(
            (status, json["ignored"].as_str()),
            (StatusCode::OK, Some(reason))
        );
    }
    // A GitLab update without new commits (a title edit) is not planned.
    let gitlab = String::from_utf8(fixture("gitlab-merge-request.json"))
        .expect("utf-8")
        .replace(
            "\"oldrev\": \"3333333333333333333333333333333333333333\",",
            "",
        );
    let secret = std::str::from_utf8(SECRET).expect("utf-8");
    let (status, json) = send(
        &hook,
        &[
            ("x-gitlab-event", "Merge Request Hook"),
            ("x-gitlab-token", secret),
        ],
        gitlab.into_bytes(),
    )
    .await;
    assert_eq!(
        (status, json["ignored"].as_str()),
        (
            StatusCode::OK,
            Some("merge request !4 update: no new commits to plan")
        )
    );
    assert!(requests.lock().expect("lock").is_empty());

    // Without a planner, request events are acknowledged and ignored.
    let (plain, _) = app("main");
    let body = fixture("github-pull-request.json");
    let sig = format!("sha256={}", sign(&body));
    let (status, json) = send(
        &plain,
        &[
            ("x-github-event", "pull_request"),
            ("x-hub-signature-256", sig.as_str()),
        ],
        body,
    )
    .await;
    assert_eq!(
        (status, json["ignored"].as_str()),
        (
            StatusCode::OK,
            Some("pull request events are not planned here (no forge configured)")
        )
    );
}
