//! The security suite (issue 13, item 7): each attack a test, driven against the real
//! `cplane serve` over HTTP on 127.0.0.1, with a real OIDC issuer ([`cplane_e2e::oidc`]) and
//! tokens forged here. Where another file already tests a case thoroughly, the table names
//! that test; the cases here are the ones the real server adds something to.
//!
//! | Case | Test |
//! |---|---|
//! | Forged webhook: bad HMAC (generic, GitHub, Gitea), the signature of another body, none, a GitLab token of another length or value → 401, nothing triggered, the delivery id not burnt | [`forged_webhooks_are_refused_and_trigger_nothing`] |
//! | GitLab token compared by digest, tokens of other lengths | `webhook/tests/limits.rs` `gitlab_tokens_of_another_length_are_refused` (in-process) |
//! | Replayed webhook (same delivery id, also re-signed with another body) → acted on once | [`a_replayed_webhook_is_acted_on_once`]; across replicas sharing PostgreSQL: `webhook_limits.rs` `a_replayed_delivery_is_acted_on_once_across_replicas` |
//! | JWT `alg: none` (with and without a signature part) | [`jwt_alg_none_is_refused`] |
//! | JWT HS256 "signed" with the issuer's public key (key confusion) | [`jwt_hs256_signed_with_the_public_key_is_refused`] |
//! | JWT expired beyond the leeway (and not valid yet) | [`jwt_expired_beyond_the_leeway_is_refused`] |
//! | JWT with a wrong or missing `aud` | [`jwt_with_a_wrong_audience_is_refused`] |
//! | JWT with a wrong `iss` | [`jwt_with_a_wrong_issuer_is_refused`] |
//! | An issuer not on the allow-list is never fetched (zero requests on any path) | [`an_issuer_not_on_the_allow_list_is_never_fetched`] |
//! | JWT signed by an unknown key (kid not in the JWKS, a path or a URL as kid; the key embedded in the header, `jku`, `x5u`) | [`jwt_signed_by_an_unknown_key_is_refused`] |
//! | Tampered signatures and claims, identity claims, JWKS refetch flood, unreachable issuer | `auth.rs` `tokens_are_verified_against_the_issuers_jwks`, `unknown_kid_refetches_keys_at_most_once_per_interval`, `an_unreachable_issuer_is_unavailable_not_unauthorized` (in-process) |
//! | Cross-tenant reads: a member of account A sees nothing of B (workspace, lists, cluster status, plan) | [`a_member_reads_nothing_of_another_account`]; viewers, AWS identifiers: `auth.rs` `reads_are_scoped_by_account_and_role` |
//! | Cross-tenant writes: a member of A writes nothing of B, nor moves a workspace between accounts, nor opens a PR branch | [`a_member_writes_nothing_of_another_account`] |
//! | A viewer writes nothing | [`a_viewer_writes_nothing`] |
//! | An agent or BFF token of cluster A reads nothing of cluster B (bundle, status, config, register) | [`a_cluster_credential_opens_nothing_of_another_cluster`]; scopes: `credentials.rs` `agent_and_bff_tokens_are_separate_*`; certificates: `mtls.rs` |
//! | Path traversal in every id of every route, reads | [`traversal_ids_read_nothing_sqlite`], [`traversal_ids_read_nothing_postgres`] |
//! | Path traversal in every id of every route, writes: the branch does not move, no file appears | [`traversal_ids_write_nothing`] |
//! | Oversized bodies on every body-taking route → 413, the server stays healthy | [`oversized_bodies_are_refused_on_every_route`] |
//! | Slow clients: a head dripped byte by byte is cut off at the header-read timeout while others are served | [`a_head_dripped_byte_by_byte_is_cut_off_while_others_are_served`]; half a request line, silence, TLS: `slow_clients.rs` |

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cplane_e2e::http::{Request, Response};
use cplane_e2e::oidc::{b64, claims, hs256, now, TestIssuer, TestKey};
use cplane_e2e::serve::{hmac_hex, metric, Serve, Server, SECRET};
use serde_json::{json, Value};

const AUD: &str = "cplane";

/// A server with the webhook on, users signing in at a local issuer, and its directory.
struct Fixture {
    server: Server,
    issuer: TestIssuer,
    key: TestKey,
    dir: tempfile::TempDir,
}

impl Fixture {
    /// `cplane serve` with `--oidc-issuer` (an RSA key), `--webhook-secret` and `extra` flags,
    /// on SQLite or on the database `database`.
    async fn start(database: Option<&str>, extra: &[&str]) -> Self {
        let key = TestKey::rsa("k1");
        let issuer = TestIssuer::start("/realms/cogrion", &[&key]).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut serve = Serve::new(dir.path())
            .args(["--oidc-issuer", &issuer.url, "--oidc-audience", AUD])
            .args(["--webhook-secret", SECRET])
            .args(extra);
        if let Some(url) = database {
            serve = serve.database(url);
        }
        let server = tokio::task::block_in_place(|| serve.start());
        Self {
            server,
            issuer,
            key,
            dir,
        }
    }

    fn port(&self) -> u16 {
        self.server.port
    }

    /// A valid token of `email`.
    fn token(&self, email: &str) -> String {
        self.key.token(&claims(&self.issuer.url, AUD, email, 300))
    }

    /// Valid claims of alice, to be spoilt.
    fn claims(&self) -> Value {
        claims(&self.issuer.url, AUD, "alice@example.com", 300)
    }

    /// Asserts that `token` opens no user route: `401` with a `Bearer` challenge, an error
    /// containing `why`, the token never echoed.
    fn refused(&self, token: &str, why: &str) {
        for (method, path) in [
            ("GET", "/v1/workspaces"),
            ("GET", "/v1/me"),
            ("PATCH", "/v1/workspaces/acme"),
        ] {
            let r = send(
                Request::new(self.port(), method, path)
                    .bearer(token)
                    .header("Content-Type", "application/merge-patch+json")
                    .body(r#"{"spec":{}}"#),
            );
            assert_eq!(r.status, 401, "{why}: {method} {path}: {r:?}");
            assert!(
                r.json()["error"].as_str().unwrap_or("").contains(why),
                "expected `{why}`: {r:?}"
            );
            assert!(
                r.header("www-authenticate")
                    .is_some_and(|c| c.starts_with("Bearer")),
                "{r:?}"
            );
            assert!(!r.text().contains(token), "the token is never echoed");
        }
    }

    /// A user who signed in once (so that memberships can name them), with `role` in
    /// `account` when given.
    fn user(&self, email: &str, membership: Option<(&str, &str)>) -> String {
        let token = self.token(email);
        let r = send(Request::get(self.port(), "/v1/me").bearer(&token));
        assert_eq!(r.status, 200, "{r:?}");
        if let Some((account, role)) = membership {
            tokio::task::block_in_place(|| {
                self.server
                    .cplane(&["membership", "add", email, account, "--role", role])
            });
        }
        token
    }

    /// An admin's token.
    fn admin(&self) -> String {
        let token = self.user("root@example.com", None);
        tokio::task::block_in_place(|| {
            self.server
                .cplane(&["principal", "grant-admin", "root@example.com"])
        });
        token
    }

    /// A push of the followed branch, as its webhook body.
    fn push(&self, after: &str) -> String {
        format!(
            r#"{{"ref":"refs/heads/{}","after":"{after}"}}"#,
            self.server.branch
        )
    }

    /// A cluster token of `scope` for `cluster`.
    fn cluster_token(&self, cluster: &str, scope: &str) -> String {
        let out = tokio::task::block_in_place(|| {
            self.server
                .cplane(&["cluster", "token", "create", cluster, "--scope", scope])
        });
        let token = out.trim().to_owned();
        assert!(token.starts_with("cpt_"), "{out}");
        token
    }
}

/// Asserts that `token` writes acme's trino stack: what a test refused is not refused for
/// every write.
fn assert_writes(port: u16, token: &str) {
    let r = write(
        port,
        token,
        "PATCH",
        "/v1/workspaces/acme/stacks/trino",
        r#"{"values":{"workers":2}}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
}

/// Sends `request`, panicking when no answer comes.
fn send(request: Request) -> Response {
    request.send().expect("an answer")
}

/// `cplane_webhook_deliveries_total`: pushes the server acted on.
fn acted_on(port: u16) -> u64 {
    metric(port, "cplane_webhook_deliveries_total") as u64
}

/// `POST /v1/webhooks/git` with `headers` and `body`.
fn hook(port: u16, headers: &[(&str, String)], body: &[u8]) -> Response {
    send(
        Request::new(port, "POST", "/v1/webhooks/git")
            .header("Content-Type", "application/json")
            .headers(headers)
            .body(body),
    )
}

// ---------------------------------------------------------------------------------------------
// Webhooks.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_webhooks_are_refused_and_trigger_nothing() {
    let f = Fixture::start(None, &[]).await;
    let port = f.port();
    let body = f.push("x");
    let body = body.as_bytes();
    let good = hmac_hex(SECRET.as_bytes(), body);
    let other_body = hmac_hex(SECRET.as_bytes(), br#"{"ref":"refs/heads/elsewhere"}"#);
    let wrong_key = hmac_hex(b"not-the-secret", body);
    let delivery = |id: &str| ("X-Cplane-Delivery", id.to_owned());
    let github = |sig: String| {
        vec![
            ("X-GitHub-Event", "push".to_owned()),
            ("X-GitHub-Delivery", "forged-1".to_owned()),
            ("X-Hub-Signature-256", sig),
        ]
    };
    let gitlab = |token: &str| {
        vec![
            ("X-Gitlab-Event", "Push Hook".to_owned()),
            ("Idempotency-Key", "forged-1".to_owned()),
            ("X-Gitlab-Token", token.to_owned()),
        ]
    };
    let forgeries: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("no signature", vec![delivery("forged-1")]),
        (
            "an HMAC with another key",
            vec![
                ("X-Cplane-Signature-256", format!("sha256={wrong_key}")),
                delivery("forged-1"),
            ],
        ),
        (
            "the HMAC of another body",
            vec![
                ("X-Cplane-Signature-256", format!("sha256={other_body}")),
                delivery("forged-1"),
            ],
        ),
        (
            "a truncated HMAC",
            vec![
                ("X-Cplane-Signature-256", format!("sha256={}", &good[..32])),
                delivery("forged-1"),
            ],
        ),
        (
            "an HMAC without its prefix",
            vec![
                ("X-Cplane-Signature-256", good.clone()),
                delivery("forged-1"),
            ],
        ),
        (
            "an empty signature",
            vec![
                ("X-Cplane-Signature-256", String::new()),
                delivery("forged-1"),
            ],
        ),
        ("GitHub, another key", github(format!("sha256={wrong_key}"))),
        ("GitHub, sha1", github(format!("sha1={}", &good[..40]))),
        (
            "Gitea, another key",
            vec![
                ("X-Gitea-Event", "push".to_owned()),
                ("X-Gitea-Delivery", "forged-1".to_owned()),
                ("X-Gitea-Signature", wrong_key.clone()),
            ],
        ),
        ("GitLab, the secret and more", gitlab(&format!("{SECRET}x"))),
        (
            "GitLab, a prefix of the secret",
            gitlab(&SECRET[..SECRET.len() - 1]),
        ),
        (
            "GitLab, another token of the same length",
            gitlab(&"x".repeat(SECRET.len())),
        ),
        ("GitLab, empty", gitlab("")),
    ];
    for (what, headers) in &forgeries {
        let r = hook(port, headers, body);
        assert_eq!(r.status, 401, "{what}: {r:?}");
    }
    assert_eq!(acted_on(port), 0, "nothing was triggered");

    // The forged deliveries burnt no id: the genuine delivery forged-1 is acted on.
    let r = hook(
        port,
        &[
            ("X-Cplane-Signature-256", format!("sha256={good}")),
            delivery("forged-1"),
        ],
        body,
    );
    assert_eq!(r.status, 202, "{r:?}");
    let r = hook(port, &gitlab(SECRET), body);
    assert_eq!(r.status, 202, "GitLab's genuine forged-1: {r:?}");
    assert_eq!(acted_on(port), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_webhook_is_acted_on_once() {
    let f = Fixture::start(None, &[]).await;
    let port = f.port();
    let body = f.push("x");
    let signed = |body: &str, id: &str| {
        vec![
            ("X-GitHub-Event", "push".to_owned()),
            ("X-GitHub-Delivery", id.to_owned()),
            (
                "X-Hub-Signature-256",
                format!("sha256={}", hmac_hex(SECRET.as_bytes(), body.as_bytes())),
            ),
        ]
    };
    // A captured delivery, replayed byte for byte.
    let captured = signed(&body, "gh-1");
    assert_eq!(hook(port, &captured, body.as_bytes()).status, 202);
    for _ in 0..3 {
        let r = hook(port, &captured, body.as_bytes());
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.text().contains("duplicate delivery gh-1"), "{r:?}");
    }
    // The same id with another (validly signed) body is the same delivery.
    let other = f.push("y");
    assert_eq!(
        hook(port, &signed(&other, "gh-1"), other.as_bytes()).status,
        200
    );
    // The captured signature on another body is no signature at all.
    assert_eq!(hook(port, &captured, other.as_bytes()).status, 401);
    assert_eq!(acted_on(port), 1, "acted on once");
    // The id is per sender: the same id from another sender is another delivery.
    let generic = [
        ("X-Cplane-Delivery", "gh-1".to_owned()),
        (
            "X-Cplane-Signature-256",
            format!("sha256={}", hmac_hex(SECRET.as_bytes(), body.as_bytes())),
        ),
    ];
    assert_eq!(hook(port, &generic, body.as_bytes()).status, 202);
    assert_eq!(hook(port, &generic, body.as_bytes()).status, 200);
    assert_eq!(acted_on(port), 2);
}

// ---------------------------------------------------------------------------------------------
// JWTs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_alg_none_is_refused() {
    let f = Fixture::start(None, &[]).await;
    let c = f.claims();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "JWT", "kid": "k1"});
        let unsigned = format!(
            "{}.{}.",
            b64(header.to_string().as_bytes()),
            b64(c.to_string().as_bytes())
        );
        f.refused(&unsigned, "invalid token");
        f.refused(unsigned.trim_end_matches('.'), "invalid token");
        // `none` with a real RS256 signature of the same input.
        let with_sig = f.key.sign(&header, &c);
        f.refused(&with_sig, "invalid token");
    }
    // The same claims properly signed pass: the refusals were about the algorithm.
    let r = send(Request::get(f.port(), "/v1/me").bearer(&f.key.token(&c)));
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_hs256_signed_with_the_public_key_is_refused() {
    let f = Fixture::start(None, &[]).await;
    let c = f.claims();
    let jwk = f.key.jwk();
    // Every form of the public key an attacker could pick as the HMAC secret.
    let secrets: Vec<Vec<u8>> = vec![
        f.key.public_der(),
        jwk["n"].as_str().expect("n").as_bytes().to_vec(),
        jwk.to_string().into_bytes(),
        json!({ "keys": [jwk] }).to_string().into_bytes(),
    ];
    for alg in ["HS256", "HS384", "HS512"] {
        for secret in &secrets {
            let header = json!({"alg": alg, "typ": "JWT", "kid": "k1"});
            f.refused(&hs256(&header, &c, secret), "not allowed for key");
        }
    }
    // Without a kid, nothing picks a key at all.
    let header = json!({"alg": "HS256", "typ": "JWT"});
    f.refused(&hs256(&header, &c, &f.key.public_der()), "no kid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_expired_beyond_the_leeway_is_refused() {
    let f = Fixture::start(None, &[]).await;
    let mut c = f.claims();
    c["iat"] = json!(now() - 3600);
    c["nbf"] = json!(now() - 3600);
    c["exp"] = json!(now() - 120);
    f.refused(&f.key.token(&c), "expired");
    c["exp"] = json!(now() - 3000);
    f.refused(&f.key.token(&c), "expired");
    let mut c = f.claims();
    c.as_object_mut().expect("object").remove("exp");
    f.refused(&f.key.token(&c), "missing claim exp");
    let mut c = f.claims();
    c["nbf"] = json!(now() + 600);
    f.refused(&f.key.token(&c), "not valid yet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_with_a_wrong_audience_is_refused() {
    let f = Fixture::start(None, &[]).await;
    for aud in [
        json!("account"),
        json!("cplane-evil"),
        json!(["account", "other"]),
        json!(""),
    ] {
        let mut c = f.claims();
        c["aud"] = aud;
        f.refused(&f.key.token(&c), "wrong audience");
    }
    let mut c = f.claims();
    c.as_object_mut().expect("object").remove("aud");
    f.refused(&f.key.token(&c), "missing claim aud");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_with_a_wrong_issuer_is_refused() {
    let f = Fixture::start(None, &[]).await;
    let fetched = f.issuer.requests();
    let url = &f.issuer.url;
    let host = url.trim_end_matches("/realms/cogrion");
    for iss in [
        format!("{url}/"),
        format!("{url}-evil"),
        format!("{host}/realms/other"),
        url.to_uppercase(),
        url.replace("http://", "https://"),
        String::new(),
    ] {
        let mut c = f.claims();
        c["iss"] = json!(iss);
        f.refused(&f.key.token(&c), "is not allowed");
    }
    let mut c = f.claims();
    c.as_object_mut().expect("object").remove("iss");
    f.refused(&f.key.token(&c), "no iss claim");
    assert_eq!(
        f.issuer.requests(),
        fetched,
        "no fetch for another issuer's token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_not_on_the_allow_list_is_never_fetched() {
    let f = Fixture::start(None, &[]).await;
    // A working issuer of its own, publishing its key: a server that fetched it would accept
    // the token.
    let theirs = TestKey::rsa("k1");
    let stranger = TestIssuer::start("/realms/cogrion", &[&theirs]).await;
    let c = claims(&stranger.url, AUD, "alice@example.com", 300);
    f.refused(&theirs.token(&c), "is not allowed");
    // Nor when it points at itself from the header.
    let header = json!({"alg": "RS256", "kid": "k1", "jku": format!("{}/protocol/openid-connect/certs", stranger.url)});
    f.refused(&theirs.sign(&header, &c), "is not allowed");
    assert_eq!(
        stranger.requests(),
        0,
        "the stranger received no request at all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_signed_by_an_unknown_key_is_refused() {
    let f = Fixture::start(None, &[]).await;
    let c = f.claims();
    let attacker = TestKey::rsa("k1");
    let stranger = TestIssuer::start("/realms/evil", &[&attacker]).await;
    // Its own kid, which the issuer does not publish.
    let unknown = TestKey::rsa("k-unknown");
    f.refused(&unknown.token(&c), "publishes no signing key k-unknown");
    // A kid that is a path, or a URL of the attacker's, is only a name that is not published.
    for kid in ["../../../../etc/passwd", "/dev/zero", &stranger.url] {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
        f.refused(&unknown.sign(&header, &c), "publishes no signing key");
    }
    // The published kid, another key.
    f.refused(&attacker.token(&c), "bad signature");
    // The attacker's key embedded in the header (`jwk`) or pointed at (`jku`, `x5u`).
    let certs = format!("{}/protocol/openid-connect/certs", stranger.url);
    for extra in [
        json!({"jwk": attacker.jwk()}),
        json!({"jku": certs}),
        json!({"x5u": certs}),
    ] {
        let mut header = json!({"alg": "RS256", "typ": "JWT", "kid": "k1"});
        header
            .as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        f.refused(&attacker.sign(&header, &c), "bad signature");
    }
    assert_eq!(
        stranger.requests(),
        0,
        "no key was fetched from where the header points"
    );
}

// ---------------------------------------------------------------------------------------------
// Tenants.

/// Mia is a member of acme-corp (workspace acme, cluster w-acme); globex is another account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_reads_nothing_of_another_account() {
    let f = Fixture::start(None, &[]).await;
    let port = f.port();
    let mia = f.user("mia@example.com", Some(("acme-corp", "member")));
    let get = |path: &str| send(Request::get(port, path).bearer(&mia));
    for path in ["/v1/workspaces/globex", "/v1/clusters/w-globex/status"] {
        let r = get(path);
        assert_eq!(r.status, 404, "{path}: {r:?}");
        assert!(!r.text().contains("\"spec\""), "{r:?}");
    }
    // Lists leave it out; the plan has none of its steps; the status none of its errors.
    for path in ["/v1/workspaces", "/v1/clusters", "/v1/plan", "/v1/status"] {
        let r = get(path);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(!r.text().contains("globex"), "{path} shows globex: {r:?}");
    }
    assert!(
        get("/v1/workspaces").text().contains("\"acme\""),
        "its own is shown"
    );
    // Its own cluster's status is readable: the 404 above is about the account.
    assert_eq!(get("/v1/clusters/w-acme/status").status, 200);
}

/// Every write a member of acme-corp could try on globex's workspace, or to move a workspace
/// from one account to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_writes_nothing_of_another_account() {
    let f = Fixture::start(None, &[]).await;
    let port = f.port();
    let mia = f.user("mia@example.com", Some(("acme-corp", "member")));
    let before = f.server.remote_refs();
    let globex = workspace_document("globex", "globex");
    let writes: Vec<(&str, String, String)> = vec![
        ("PUT", "/v1/workspaces/globex".into(), globex.to_string()),
        // Globex's workspace claimed for acme-corp: the current account counts too.
        (
            "PUT",
            "/v1/workspaces/globex".into(),
            workspace_document("globex", "acme-corp").to_string(),
        ),
        (
            "PATCH",
            "/v1/workspaces/globex".into(),
            json!({"spec": {"account": "acme-corp"}}).to_string(),
        ),
        (
            "PATCH",
            "/v1/workspaces/globex".into(),
            json!({"spec": {"environment": "dev"}}).to_string(),
        ),
        ("DELETE", "/v1/workspaces/globex".into(), String::new()),
        // Its own workspace given away to globex, or a new one created in globex's account.
        (
            "PUT",
            "/v1/workspaces/acme".into(),
            workspace_document("acme", "globex").to_string(),
        ),
        (
            "PATCH",
            "/v1/workspaces/acme".into(),
            json!({"spec": {"account": "globex"}}).to_string(),
        ),
        (
            "PUT",
            "/v1/workspaces/evil".into(),
            workspace_document("evil", "globex").to_string(),
        ),
        (
            "PUT",
            "/v1/workspaces/globex/stacks/trino".into(),
            r#"{"values":{}}"#.into(),
        ),
        (
            "PATCH",
            "/v1/workspaces/globex/stacks/trino".into(),
            r#"{"values":{"x":1}}"#.into(),
        ),
        (
            "DELETE",
            "/v1/workspaces/globex/stacks/trino".into(),
            String::new(),
        ),
        (
            "PUT",
            "/v1/workspaces/globex?mode=pr".into(),
            globex.to_string(),
        ),
        (
            "PUT",
            "/v1/workspaces/globex/stacks/trino?mode=pr".into(),
            r#"{"values":{}}"#.into(),
        ),
    ];
    for (method, path, body) in &writes {
        let r = write(port, &mia, method, path, body);
        assert_eq!(r.status, 403, "{method} {path} {body}: {r:?}");
    }
    assert_eq!(
        f.server.remote_refs(),
        before,
        "no branch moved, none was pushed"
    );
    // The same member writes its own account's workspace: the 403s were about the account.
    assert_writes(port, &mia);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_writes_nothing() {
    let f = Fixture::start(None, &[]).await;
    let port = f.port();
    let vic = f.user("vic@example.com", Some(("acme-corp", "viewer")));
    let before = f.server.remote_refs();
    let acme = workspace_document("acme", "acme-corp").to_string();
    for (method, path, body) in [
        ("PUT", "/v1/workspaces/acme", acme.as_str()),
        (
            "PATCH",
            "/v1/workspaces/acme",
            r#"{"spec":{"environment":"dev"}}"#,
        ),
        ("DELETE", "/v1/workspaces/acme", ""),
        (
            "PUT",
            "/v1/workspaces/acme/stacks/trino",
            r#"{"values":{}}"#,
        ),
        (
            "PATCH",
            "/v1/workspaces/acme/stacks/trino",
            r#"{"values":{"workers":2}}"#,
        ),
        ("DELETE", "/v1/workspaces/acme/stacks/trino", ""),
        ("PUT", "/v1/workspaces/acme?mode=pr", acme.as_str()),
        (
            "PUT",
            "/v1/workspaces/new-one",
            &workspace_document("new-one", "acme-corp").to_string(),
        ),
        ("POST", "/v1/reconcile", ""),
    ] {
        let r = write(port, &vic, method, path, body);
        assert_eq!(r.status, 403, "{method} {path}: {r:?}");
    }
    assert_eq!(
        f.server.remote_refs(),
        before,
        "no branch moved, none was pushed"
    );
    // The viewer does read the workspace.
    assert_eq!(
        send(Request::get(port, "/v1/workspaces/acme").bearer(&vic)).status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_credential_opens_nothing_of_another_cluster() {
    let f = Fixture::start(None, &[]).await;
    let port = f.port();
    let agent = f.cluster_token("w-acme", "agent");
    let bff = f.cluster_token("w-acme", "bff");
    let report = status_report();
    let registration = r#"{"bff_url":"https://evil.example.com","public_ip":"198.51.100.9"}"#;
    let before = f.server.remote_refs();
    for token in [&agent, &bff] {
        for (method, path, body, expected) in [
            ("GET", "/v1/clusters/w-globex/bundle", "", 403),
            ("POST", "/v1/clusters/w-globex/status", report.as_str(), 403),
            ("GET", "/api/workspaces/globex/config", "", 403),
            ("GET", "/api/workspaces/w-globex/config", "", 403),
            ("POST", "/api/workspaces/globex/register", registration, 403),
            // The user API takes no cluster token at all.
            ("GET", "/v1/clusters/w-globex/status", "", 401),
            ("GET", "/v1/clusters/w-acme/status", "", 401),
            ("GET", "/v1/workspaces/globex", "", 401),
            ("PATCH", "/v1/workspaces/globex", r#"{"spec":{}}"#, 401),
        ] {
            let r = write(port, token, method, path, body);
            assert_eq!(r.status, expected, "{method} {path}: {r:?}");
            assert!(!r.text().contains("cogrion.com"), "{r:?}");
        }
    }
    // Nothing was recorded for globex: no status report, no registration.
    let admin = f.admin();
    let r = send(Request::get(port, "/v1/clusters/w-globex/status").bearer(&admin));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["reported"], Value::Null, "{r:?}");
    let globex_bff = f.cluster_token("w-globex", "bff");
    let r = write(
        port,
        &globex_bff,
        "GET",
        "/api/workspaces/globex/config",
        "",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["registered_url"], Value::Null, "{r:?}");
    assert!(!send(Request::get(port, "/lookup/w-globex"))
        .text()
        .contains("evil"));
    assert_eq!(f.server.remote_refs(), before);
    // At home the same credentials work: the 403s were about the cluster.
    assert_eq!(
        write(port, &agent, "GET", "/v1/clusters/w-acme/bundle", "").status,
        200
    );
    assert_eq!(
        write(port, &bff, "GET", "/api/workspaces/acme/config", "").status,
        200
    );
}

/// A Workspace document (JSON) for `id` in `account`, like the template's.
fn workspace_document(id: &str, account: &str) -> Value {
    json!({
        "apiVersion": "cplane/v1",
        "kind": "Workspace",
        "metadata": {"name": id},
        "spec": {
            "region": "sgp-1",
            "environment": "prod",
            "account": account,
            "aws": {"accountId": "111111111111", "roleArn": "arn:aws:iam::111111111111:role/p", "externalId": "ext-123"},
            "stacks": [{"name": "bff"}],
        },
    })
}

/// An agent's status report (valid as such).
fn status_report() -> String {
    json!({"digest": format!("sha256:{}", "0".repeat(64)), "generation": 1, "healthy": true, "message": "ok", "objects": []})
        .to_string()
}

/// `method path` with `token` and a JSON (or merge patch) `body`.
fn write(port: u16, token: &str, method: &str, path: &str, body: &str) -> Response {
    let content_type = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    send(
        Request::new(port, method, path)
            .bearer(token)
            .header("Content-Type", content_type)
            .body(body),
    )
}

// ---------------------------------------------------------------------------------------------
// Path traversal.

/// Ids an attacker puts where an id goes (already percent-encoded for a path segment).
fn hostile_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        "..",
        "%2e%2e",
        "..%2Fcplane.yaml",
        "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "acme%2F..%2F..%2Fx",
        "acme%2F..%2Fglobex",
        "w-acme%2F..%2Fw-globex",
        "..%5C..%5Cx",
        "%2Fetc%2Fpasswd",
        "%2Ftmp%2Fx",
        "acme%00",
        "acme%00.yaml",
        "%00",
        ".git%2Fconfig",
        "acme.yaml",
        "ACME",
        "acme%0a",
        "%E2%80%AEacme",
        "~root",
        "%25",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    ids.push("a".repeat(300));
    ids.push("w-".to_owned() + &"a".repeat(4000));
    ids
}

/// What a refused id may answer: never a success, never a server error.
fn assert_refused(r: &Response, what: &str) {
    assert!(
        matches!(r.status, 400 | 403 | 404 | 405 | 414 | 422),
        "{what}: {r:?}"
    );
    let text = r.text();
    assert!(
        !text.contains("root:x:0:0"),
        "{what} read /etc/passwd: {r:?}"
    );
    assert!(
        !text.contains("SENTINEL"),
        "{what} read a file outside: {r:?}"
    );
}

/// Every file under `dir` except the server's mirror (which fetches write) and database.
fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(dir).expect("under").display().to_string();
            if rel.starts_with("mirror.git") || rel.starts_with("cplane.db") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// Reads with every hostile id in every route that takes one, each with a credential that
/// opens the route for a good id (an admin's JWT, the agent's and the BFF's tokens of w-acme),
/// so that only the id is refused.
async fn traversal_ids_read_nothing(database: Option<&str>) {
    // The front door's rate limit is not what is tested here.
    let f = Fixture::start(database, &["--edge-rate-limit", "100000"]).await;
    let port = f.port();
    let admin = f.admin();
    let agent = f.cluster_token("w-acme", "agent");
    let bff = f.cluster_token("w-acme", "bff");
    std::fs::write(f.dir.path().join("cplane.yaml"), "SENTINEL\n").expect("sentinel");
    std::fs::write(f.dir.path().join("x.yaml"), "SENTINEL\n").expect("sentinel");
    // The good ids work with these credentials.
    for (path, token) in [
        ("/v1/workspaces/acme".to_owned(), &admin),
        ("/v1/clusters/w-acme/status".to_owned(), &admin),
        ("/v1/clusters/w-acme/bundle".to_owned(), &agent),
        ("/api/workspaces/acme/config".to_owned(), &bff),
    ] {
        assert_eq!(
            send(Request::get(port, &path).bearer(token)).status,
            200,
            "{path}"
        );
    }
    assert_eq!(send(Request::get(port, "/lookup/w-acme")).status, 200);
    for id in hostile_ids() {
        for (path, token) in [
            (format!("/v1/workspaces/{id}"), &admin),
            (format!("/v1/clusters/{id}/status"), &admin),
            (format!("/v1/clusters/{id}/bundle"), &agent),
            (format!("/api/workspaces/{id}/config"), &bff),
        ] {
            assert_refused(&send(Request::get(port, &path).bearer(token)), &path);
        }
        for path in [
            format!("/lookup/{id}"),
            format!("/v1/public/route?host={id}"),
            format!("/v1/public/tls-authorize?domain={id}"),
        ] {
            assert_refused(&send(Request::get(port, &path)), &path);
        }
        // Under a workspace's zone, a name that is a host name is routed (every name under
        // the zone is the workspace's), one that is not is refused; either way never to
        // anything but that workspace's upstream.
        let path = format!("/v1/public/route?host={id}.w-acme.sgp-1.cogrion.com");
        let r = send(Request::get(port, &path));
        if r.status == 200 {
            assert_eq!(
                r.header("x-cplane-upstream"),
                Some("bff.w-acme.sgp-1.cogrion.com:443"),
                "{path}: {r:?}"
            );
            assert_eq!(r.json()["workspace"], "w-acme", "{path}: {r:?}");
        } else {
            assert_refused(&r, &path);
        }
    }
    // Segments that are not one id: the router matches no route.
    for path in [
        "/v1/workspaces/acme/../../x",
        "/v1/workspaces/../cplane.yaml",
        "/v1/clusters/w-acme/../w-globex/bundle",
        "/api/workspaces/../../etc/passwd/config",
        "/lookup/../../etc/passwd",
    ] {
        assert_refused(&send(Request::get(port, path).bearer(&admin)), path);
    }
    assert!(
        files_under(&f.server.cwd).is_empty(),
        "{:?}",
        files_under(&f.server.cwd)
    );
    // Still healthy.
    assert_eq!(
        send(Request::get(port, "/v1/workspaces/acme").bearer(&admin)).status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_ids_read_nothing_sqlite() {
    traversal_ids_read_nothing(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_ids_read_nothing_postgres() {
    let pg = cplane_e2e::pg::PgDatabase::create().await;
    traversal_ids_read_nothing(Some(&pg.url)).await;
}

/// Writes with every hostile id, as an admin (whom no account check stops), and as the agent
/// and the BFF: nothing moves in the state repo, no file appears anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_ids_write_nothing() {
    let f = Fixture::start(None, &[]).await;
    let port = f.port();
    let admin = f.admin();
    let agent = f.cluster_token("w-acme", "agent");
    let bff = f.cluster_token("w-acme", "bff");
    let refs = f.server.remote_refs();
    let files = files_under(f.dir.path());
    let report = status_report();
    for id in hostile_ids() {
        let document = workspace_document(&id, "acme-corp").to_string();
        let writes = [
            (
                "PUT",
                format!("/v1/workspaces/{id}"),
                document.as_str(),
                &admin,
            ),
            (
                "PUT",
                format!("/v1/workspaces/{id}?mode=pr"),
                document.as_str(),
                &admin,
            ),
            (
                "PATCH",
                format!("/v1/workspaces/{id}"),
                r#"{"spec":{"environment":"dev"}}"#,
                &admin,
            ),
            ("DELETE", format!("/v1/workspaces/{id}"), "", &admin),
            (
                "PUT",
                format!("/v1/workspaces/{id}/stacks/trino"),
                r#"{"values":{}}"#,
                &admin,
            ),
            (
                "PUT",
                format!("/v1/workspaces/acme/stacks/{id}"),
                r#"{"values":{}}"#,
                &admin,
            ),
            (
                "PATCH",
                format!("/v1/workspaces/acme/stacks/{id}"),
                r#"{"values":{"a":1}}"#,
                &admin,
            ),
            (
                "DELETE",
                format!("/v1/workspaces/acme/stacks/{id}"),
                "",
                &admin,
            ),
            (
                "PUT",
                format!("/v1/workspaces/acme/stacks/{id}?mode=pr"),
                r#"{"values":{}}"#,
                &admin,
            ),
            (
                "POST",
                format!("/v1/clusters/{id}/status"),
                report.as_str(),
                &agent,
            ),
            (
                "POST",
                format!("/api/workspaces/{id}/register"),
                r#"{"bff_url":"https://bff.example.com","public_ip":"198.51.100.9"}"#,
                &bff,
            ),
        ];
        for (method, path, body, token) in writes {
            assert_refused(
                &write(port, token, method, &path, body),
                &format!("{method} {path}"),
            );
        }
    }
    assert_eq!(f.server.remote_refs(), refs, "the state repo did not move");
    assert_eq!(files_under(f.dir.path()), files, "no file appeared");
    // A good write still goes through.
    assert_writes(port, &admin);
}

// ---------------------------------------------------------------------------------------------
// Oversized bodies.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_on_every_route() {
    let f = Fixture::start(None, &[]).await;
    let port = f.port();
    let admin = f.admin();
    let agent = f.cluster_token("w-acme", "agent");
    let bff = f.cluster_token("w-acme", "bff");
    let refs = f.server.remote_refs();
    // Valid JSON, 3 MiB of it: a parser that got to read it would accept its shape.
    let big = |prefix: &str, suffix: &str| format!("{prefix}\"{}\"{suffix}", "x".repeat(3 << 20));
    let workspace = big(
        r#"{"apiVersion":"cplane/v1","kind":"Workspace","metadata":{"name":"acme"},"junk":"#,
        "}",
    );
    let values = big(r#"{"values":{"junk":"#, "}}");
    let report = big(
        &format!(
            r#"{{"digest":"sha256:{}","generation":1,"healthy":true,"objects":[],"message":"#,
            "0".repeat(64)
        ),
        "}",
    );
    let registration = big(
        r#"{"bff_url":"https://x.example.com","public_ip":"198.51.100.9","junk":"#,
        "}",
    );
    let push = big(
        &format!(r#"{{"ref":"refs/heads/{}","junk":"#, f.server.branch),
        "}",
    );
    let push_sig = format!("sha256={}", hmac_hex(SECRET.as_bytes(), push.as_bytes()));
    let cases: Vec<(&str, &str, &String, &str)> = vec![
        ("PUT", "/v1/workspaces/acme", &workspace, admin.as_str()),
        ("PATCH", "/v1/workspaces/acme", &workspace, admin.as_str()),
        (
            "PUT",
            "/v1/workspaces/acme/stacks/trino",
            &values,
            admin.as_str(),
        ),
        (
            "PATCH",
            "/v1/workspaces/acme/stacks/trino",
            &values,
            admin.as_str(),
        ),
        (
            "POST",
            "/v1/clusters/w-acme/status",
            &report,
            agent.as_str(),
        ),
        (
            "POST",
            "/api/workspaces/acme/register",
            &registration,
            bff.as_str(),
        ),
    ];
    for (method, path, body, token) in cases {
        let r = write(port, token, method, path, body);
        assert_eq!(r.status, 413, "{method} {path}: {}", r.head());
    }
    let r = hook(
        port,
        &[
            ("X-Cplane-Signature-256", push_sig),
            ("X-Cplane-Delivery", "big".into()),
        ],
        push.as_bytes(),
    );
    assert_eq!(r.status, 413, "webhook: {}", r.head());
    // Sent chunked, without a length to refuse it by.
    let r = chunked(
        port,
        "/v1/clusters/w-acme/status",
        &agent,
        report.as_bytes(),
    );
    assert!(
        r.starts_with("HTTP/1.1 413"),
        "chunked status report: {}",
        r.lines().next().unwrap_or("")
    );
    // Nothing was taken in; the server still serves.
    assert_eq!(f.server.remote_refs(), refs);
    assert_eq!(acted_on(port), 0);
    assert_eq!(send(Request::get(port, "/healthz")).status, 200);
    assert_writes(port, &admin);
    assert_eq!(
        write(
            port,
            &agent,
            "POST",
            "/v1/clusters/w-acme/status",
            &status_report()
        )
        .status,
        204
    );
}

/// `POST path` with `body` in 64 KiB chunks (`Transfer-Encoding: chunked`, no length), over a
/// raw socket: the response head as text (empty if the server closed without answering).
fn chunked(port: u16, path: &str, token: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).expect("head");
    for chunk in body.chunks(64 << 10) {
        let sent = s
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .and_then(|()| s.write_all(chunk))
            .and_then(|()| s.write_all(b"\r\n"));
        if sent.is_err() {
            break; // the server stopped reading: its answer is waiting
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Slow clients.

/// Slowloris that keeps each gap under the timeout: the timeout bounds the whole head, so the
/// drip is cut off, and other clients are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_dripped_byte_by_byte_is_cut_off_while_others_are_served() {
    let f = Fixture::start(None, &["--header-read-timeout", "1s"]).await;
    let port = f.port();
    let head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let drips: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                let started = Instant::now();
                for (i, byte) in head.iter().enumerate() {
                    std::thread::sleep(Duration::from_millis(200));
                    if s.write_all(&[*byte]).is_err() {
                        return (started.elapsed(), i, String::new());
                    }
                }
                // Every byte went out (the drip outlasted the connection, or was served).
                let mut answer = String::new();
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let _ = s.read_to_string(&mut answer);
                (started.elapsed(), head.len(), answer)
            })
        })
        .collect();
    // Meanwhile, others are served, promptly.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        assert_eq!(send(Request::get(port, "/healthz")).status, 200);
        // Under the timeout: a server that served the drips' connections one at a time
        // would keep this request waiting at least that long.
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "a request waited {:?} behind the drips",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for drip in drips {
        let (took, sent, answer) = tokio::task::block_in_place(|| drip.join().expect("drip"));
        assert!(
            !answer.starts_with("HTTP/1.1 200"),
            "a head dripped over {took:?} was served: {answer}"
        );
        assert!(sent < head.len(), "the server kept reading for {took:?}");
        assert!(took < Duration::from_secs(5), "cut off after {took:?}");
    }
}
