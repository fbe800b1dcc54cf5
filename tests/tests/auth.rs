//! OIDC authentication and authorization against a real local issuer: keys generated here, the
//! JWKS served on 127.0.0.1 at Keycloak's path, tokens signed per test; real SQLite and
//! PostgreSQL for principals and memberships; the real middleware and `Principal` extractor
//! (in-process), and the real `cplane` binary end to end (`serve`, `up`, two regions).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use cplane_e2e::oidc::{b64, claims, hs256, now, TestIssuer, TestKey};
use cplane_reconciler::auth::{self, principals, Auth, Config, Principal};
use cplane_reconciler::db::Db;
use serde_json::{json, Value};
use tower::ServiceExt as _;

const AUD: &str = "cplane";

fn config(issuers: &[&str]) -> Config {
    Config {
        issuers: issuers.iter().map(|s| (*s).to_owned()).collect(),
        audience: Some(AUD.into()),
        jwks_min_refetch: Duration::from_millis(300),
        ..Config::default()
    }
}

async fn sqlite() -> (tempfile::TempDir, Db) {
    let (dir, url) = cplane_e2e::pg::sqlite_url();
    (dir, Db::connect(&url).await.expect("sqlite"))
}

/// A write route the way API handlers use the interface: `Principal` + `can_write_account`.
async fn write(
    State(db): State<Db>,
    principal: Principal,
    Path(account): Path<String>,
) -> (StatusCode, String) {
    match principal.can_write_account(&db, &account).await {
        Ok(true) => (StatusCode::OK, format!("written by {}", principal.email)),
        Ok(false) => (
            StatusCode::FORBIDDEN,
            format!("{} may not write {account}", principal.email),
        ),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A server like `cplane serve`'s: a read route, a write route and `/v1/me` behind the users'
/// layer, and the open and inter-region routes beside them.
fn app(auth: Arc<Auth>, db: Db) -> Router {
    let users = Router::new()
        .route("/v1/workspaces", get(|| async { "[]" }))
        .route("/v1/accounts/{account}/workspaces", post(write))
        .with_state(db)
        .merge(auth::user_routes(auth.clone()))
        .route_layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            auth::require_user,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(auth::routes(auth))
        .merge(users)
}

struct Answer {
    status: StatusCode,
    challenge: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

async fn call(app: &Router, method: &str, path: &str, token: Option<&str>) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    Answer {
        status,
        challenge,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Asserts a 401 whose message contains `why`.
async fn refused(app: &Router, token: &str, why: &str) {
    let a = call(app, "GET", "/v1/workspaces", Some(token)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{why}: {}", a.body);
    assert!(
        a.json()["error"].as_str().unwrap_or("").contains(why),
        "expected `{why}` in {}",
        a.body
    );
    assert!(
        a.challenge
            .as_deref()
            .is_some_and(|c| c.starts_with("Bearer")),
        "{:?}",
        a.challenge
    );
    assert!(!a.body.contains(token), "the token is never echoed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_verified_against_the_issuers_jwks() {
    let (rsa, ec) = (TestKey::rsa("rsa-1"), TestKey::ec("ec-1"));
    let issuer = TestIssuer::start("/realms/cogrion", &[&rsa, &ec]).await;
    let stranger_key = TestKey::rsa("stranger-1");
    let stranger = TestIssuer::start("/realms/evil", &[&stranger_key]).await;
    let (_dir, db) = sqlite().await;
    let auth = Arc::new(Auth::new(config(&[&issuer.url]), db.clone()));
    let app = app(auth.clone(), db);
    let good = claims(&issuer.url, AUD, "alice@example.com", 300);

    // Valid tokens, RS256 and ES256.
    for token in [rsa.token(&good), ec.token(&good)] {
        let a = call(&app, "GET", "/v1/workspaces", Some(&token)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    }
    let fetched = issuer.fetches();
    assert_eq!(fetched, 1, "keys are cached");

    // No token.
    let a = call(&app, "GET", "/v1/workspaces", None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a
        .challenge
        .as_deref()
        .is_some_and(|c| c.starts_with("Bearer")));
    assert!(a.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("bearer token is required")));
    // Public paths need none.
    assert_eq!(
        call(&app, "GET", "/healthz", None).await.status,
        StatusCode::OK
    );

    // Time: expired beyond the leeway, not yet valid.
    let mut c = good.clone();
    c["exp"] = json!(now() - 120);
    c["iat"] = json!(now() - 420);
    c["nbf"] = json!(now() - 420);
    refused(&app, &rsa.token(&c), "expired").await;
    let mut c = good.clone();
    c["nbf"] = json!(now() + 600);
    refused(&app, &rsa.token(&c), "not valid yet").await;
    // Within the leeway is fine.
    let mut c = good.clone();
    c["exp"] = json!(now() - 5);
    let a = call(&app, "GET", "/v1/workspaces", Some(&rsa.token(&c))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    // Audience.
    refused(
        &app,
        &rsa.token(&claims(&issuer.url, "account", "alice@example.com", 300)),
        "wrong audience",
    )
    .await;
    let mut c = good.clone();
    c.as_object_mut().expect("object").remove("aud");
    refused(&app, &rsa.token(&c), "missing claim aud").await;

    // An issuer not on the allow-list: refused without any fetch from it.
    let theirs = claims(&stranger.url, AUD, "alice@example.com", 300);
    refused(&app, &stranger_key.token(&theirs), "is not allowed").await;
    assert_eq!(stranger.fetches(), 0, "nothing fetched for a stranger");
    // Claiming the allowed issuer with a key it does not publish.
    refused(&app, &stranger_key.token(&good), "publishes no signing key").await;

    // alg none, with and without a signature part.
    let none_header = json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"});
    let unsigned = format!(
        "{}.{}.",
        b64(none_header.to_string().as_bytes()),
        b64(good.to_string().as_bytes())
    );
    refused(&app, &unsigned, "invalid token").await;
    refused(&app, unsigned.trim_end_matches('.'), "invalid token").await;

    // HS256 "signed" with the public key (key confusion): the RSA key allows RS* only.
    let hs_header = json!({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"});
    refused(
        &app,
        &hs256(&hs_header, &good, &rsa.public_der()),
        "not allowed for key",
    )
    .await;
    let n = rsa.jwk()["n"].as_str().expect("n").to_owned();
    refused(&app, &hs256(&hs_header, &good, n.as_bytes()), "not allowed").await;
    let hs_ec = json!({"alg": "HS256", "typ": "JWT", "kid": "ec-1"});
    refused(&app, &hs256(&hs_ec, &good, &ec.public_der()), "not allowed").await;
    // RS256 claimed for the EC key.
    let rs_on_ec = rsa.sign(&json!({"alg": "RS256", "kid": "ec-1"}), &good);
    refused(&app, &rs_on_ec, "not allowed for key").await;

    // Tampering: a changed signature, and changed claims under the old signature.
    let token = rsa.token(&good);
    let (head, sig) = token.rsplit_once('.').expect("three parts");
    let mut bytes = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig)
        .expect("b64");
    bytes[10] ^= 0x01;
    refused(&app, &format!("{head}.{}", b64(&bytes)), "bad signature").await;
    let mut evil = good.clone();
    evil["email"] = json!("admin@example.com");
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(evil.to_string().as_bytes()),
        parts[2]
    );
    refused(&app, &forged, "bad signature").await;
    refused(&app, "not-a-jwt", "malformed").await;

    // Identity claims.
    let mut c = good.clone();
    c.as_object_mut().expect("object").remove("email");
    refused(&app, &rsa.token(&c), "no email claim").await;
    let mut c = good.clone();
    c["email_verified"] = json!(false);
    refused(&app, &rsa.token(&c), "not verified").await;

    // The issuer was asked once more only for the key it does not publish.
    assert!(issuer.fetches() <= 2, "{} fetches", issuer.fetches());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refetches_keys_at_most_once_per_interval() {
    let (old, new) = (TestKey::rsa("2026-01"), TestKey::ec("2026-02"));
    let issuer = TestIssuer::start("/realms/cogrion", &[&old]).await;
    let (_dir, db) = sqlite().await;
    let auth = Arc::new(Auth::new(config(&[&issuer.url]), db.clone()));
    let app = app(auth.clone(), db);
    let c = claims(&issuer.url, AUD, "alice@example.com", 300);
    assert_eq!(
        call(&app, "GET", "/v1/workspaces", Some(&old.token(&c)))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(issuer.fetches(), 1);

    // Keycloak rotates its key: the first token with the new kid makes one refetch.
    issuer.publish(&[&new]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let a = call(&app, "GET", "/v1/workspaces", Some(&new.token(&c))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(issuer.fetches(), 2);
    // The retired key no longer verifies anything.
    refused(&app, &old.token(&c), "publishes no signing key").await;

    // A flood of made-up kids, concurrently: at most one fetch per refetch interval (300 ms
    // here) however many arrive, so at most 1 + elapsed / 300 ms.
    let before = issuer.fetches();
    let started = std::time::Instant::now();
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..100 {
        let app = app.clone();
        let token = new.sign(&json!({"alg": "ES256", "kid": format!("forged-{i}")}), &c);
        flood.spawn(async move {
            call(&app, "GET", "/v1/workspaces", Some(&token))
                .await
                .status
        });
    }
    while let Some(status) = flood.join_next().await {
        assert_eq!(status.expect("task"), StatusCode::UNAUTHORIZED);
    }
    let allowed = 1 + (started.elapsed().as_millis() / 300) as usize;
    let made = issuer.fetches() - before;
    assert!(
        made <= allowed,
        "100 forged kids made {made} fetches (at most {allowed})"
    );
    assert_eq!(auth.jwks_fetches() as usize, issuer.fetches());
    // And valid tokens kept working throughout.
    assert_eq!(
        call(&app, "GET", "/v1/workspaces", Some(&new.token(&c)))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_issuer_is_unavailable_not_unauthorized() {
    let port = cplane_e2e::moto::free_port();
    let url = format!("http://127.0.0.1:{port}/realms/down");
    let key = TestKey::ec("k");
    let (_dir, db) = sqlite().await;
    let app = app(Arc::new(Auth::new(config(&[&url]), db.clone())), db);
    let a = call(
        &app,
        "GET",
        "/v1/workspaces",
        Some(&key.token(&claims(&url, AUD, "a@example.com", 300))),
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert!(a.body.contains("cannot verify tokens"), "{}", a.body);
}

/// Admin, member, viewer and non-member through a real write route, on one database.
async fn authorization_on(db: Db) {
    let key = TestKey::ec("k1");
    let issuer = TestIssuer::start("/realms/cogrion", &[&key]).await;
    let auth = Arc::new(Auth::new(config(&[&issuer.url]), db.clone()));
    let app = app(auth.clone(), db.clone());
    let token = |email: &str| key.token(&claims(&issuer.url, AUD, email, 300));

    // Granted before their first sign-in, as `cplane principal grant-admin` and
    // `cplane membership add` do.
    principals::set_role(&db, "root@example.com", principals::ROLE_ADMIN, true)
        .await
        .expect("grant");
    auth.add_membership("Maria@Example.com", "acme-corp", "member")
        .await
        .expect("member");
    auth.add_membership("vic@example.com", "acme-corp", "viewer")
        .await
        .expect("viewer");
    assert!(auth
        .add_membership("vic@example.com", "acme-corp", "owner")
        .await
        .is_err());

    let write = |email: &str, account: &str| {
        let (app, token) = (app.clone(), token(email));
        let path = format!("/v1/accounts/{account}/workspaces");
        async move { call(&app, "POST", &path, Some(&token)).await.status }
    };
    assert_eq!(write("root@example.com", "acme-corp").await, StatusCode::OK);
    assert_eq!(write("root@example.com", "globex").await, StatusCode::OK);
    assert_eq!(
        write("maria@example.com", "acme-corp").await,
        StatusCode::OK
    );
    assert_eq!(
        write("MARIA@example.com", "acme-corp").await,
        StatusCode::OK
    );
    assert_eq!(
        write("maria@example.com", "globex").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        write("vic@example.com", "acme-corp").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        write("nobody@example.com", "acme-corp").await,
        StatusCode::FORBIDDEN
    );
    // Everyone authenticated reads.
    for who in ["nobody@example.com", "vic@example.com"] {
        assert_eq!(
            call(&app, "GET", "/v1/workspaces", Some(&token(who)))
                .await
                .status,
            StatusCode::OK
        );
    }

    // First encounter created the principal: kind user, no roles, sub recorded; principals
    // created ahead of sign-in got their sub on the first request.
    let nobody = principals::find(&db, "nobody@example.com")
        .await
        .expect("find")
        .expect("created on first encounter");
    assert_eq!(nobody.kind, "user");
    assert!(nobody.system_roles.is_empty());
    assert_eq!(nobody.external_id, "sub-nobody@example.com");
    let root = principals::find(&db, "ROOT@example.com")
        .await
        .expect("find")
        .expect("root");
    assert_eq!(root.external_id, "sub-root@example.com");
    assert_eq!(root.system_roles, ["admin"]);

    // /v1/me and can_write_account directly.
    let me = call(&app, "GET", "/v1/me", Some(&token("maria@example.com")))
        .await
        .json();
    assert_eq!(me["principal"]["email"], "maria@example.com");
    assert_eq!(me["principal"]["admin"], false);
    assert_eq!(
        me["memberships"],
        json!([{"account": "acme-corp", "role": "member"}])
    );
    let maria_uid = me["principal"]["uid"].as_str().expect("uid").to_owned();
    let maria = Principal {
        subject: "s".into(),
        email: "maria@example.com".into(),
        name: "Maria".into(),
        admin: false,
        uid: maria_uid,
        kind: "user".into(),
        system_roles: vec![],
        issuer: issuer.url.clone(),
    };
    assert!(maria.can_write_account(&db, "acme-corp").await.expect("db"));
    assert!(!maria.can_write_account(&db, "globex").await.expect("db"));
    let admin = Principal {
        admin: true,
        uid: String::new(),
        ..maria.clone()
    };
    assert!(admin.can_write_account(&db, "anything").await.expect("db"));

    // Removing the membership and the admin role takes effect on the next request.
    assert!(auth
        .remove_membership("maria@example.com", "acme-corp")
        .await
        .expect("remove"));
    assert_eq!(
        write("maria@example.com", "acme-corp").await,
        StatusCode::FORBIDDEN
    );
    auth.set_admin("root@example.com", false)
        .await
        .expect("revoke");
    assert_eq!(
        write("root@example.com", "globex").await,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_and_members_write_others_read_sqlite() {
    let (_dir, db) = sqlite().await;
    authorization_on(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_and_members_write_others_read_postgres() {
    let pg = cplane_e2e::pg::PgDatabase::create().await;
    authorization_on(Db::connect(&pg.url).await.expect("pg")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_issuer_the_api_is_closed_unless_open_read_and_writes_refused() {
    let (_dir, db) = sqlite().await;
    let closed = app(
        Arc::new(Auth::new(Config::default(), db.clone())),
        db.clone(),
    );
    let r = call(&closed, "GET", "/v1/workspaces", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.contains("--insecure-open-read"), "{}", r.body);
    let open_read = Config {
        insecure_open_read: true,
        ..Config::default()
    };
    let app = app(Arc::new(Auth::new(open_read, db.clone())), db);
    assert_eq!(
        call(&app, "GET", "/v1/workspaces", None).await.status,
        StatusCode::OK
    );
    let a = call(&app, "POST", "/v1/accounts/acme-corp/workspaces", None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.body.contains("no OIDC issuer configured"), "{}", a.body);
    assert!(a
        .challenge
        .as_deref()
        .is_some_and(|c| c.starts_with("Bearer")));
    // A token is no way around it: nothing can verify it.
    let key = TestKey::ec("k");
    let token = key.token(&claims("http://127.0.0.1:1/realms/x", AUD, "a@b.c", 300));
    let a = call(
        &app,
        "POST",
        "/v1/accounts/acme-corp/workspaces",
        Some(&token),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_principals_needs_the_inter_region_token() {
    let (_dir, db) = sqlite().await;
    let with_token = Config {
        service_token: Some("inter-region-secret".into()),
        ..Config::default()
    };
    let app = app(Arc::new(Auth::new(with_token, db.clone())), db.clone());
    let p = principals::set_role(&db, "root@example.com", "admin", true)
        .await
        .expect("grant");
    let path = "/internal/principals?email=Root%40example.com";
    assert_eq!(
        call(&app, "GET", path, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&app, "GET", path, Some("inter-region-secreT"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&app, "GET", path, Some("inter-region-secret-and-more"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let a = call(&app, "GET", path, Some("inter-region-secret")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        a.json(),
        json!({"uid": p.uid, "externalId": "", "kind": "user", "systemRoles": ["admin"]})
    );
    let a = call(
        &app,
        "GET",
        "/internal/principals?email=ghost%40example.com",
        Some("inter-region-secret"),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.body);
    // Without a configured token the endpoint refuses everyone.
    let app = app_without_token(db).await;
    assert_eq!(
        call(&app, "GET", path, Some("")).await.status,
        StatusCode::UNAUTHORIZED
    );
}

async fn app_without_token(db: Db) -> Router {
    app(Arc::new(Auth::new(Config::default(), db.clone())), db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_region_takes_identity_from_the_primary_and_memberships_locally() {
    let key = TestKey::ec("k1");
    let issuer = TestIssuer::start("/realms/frankfurt", &[&key]).await;
    let token = |email: &str| key.token(&claims(&issuer.url, AUD, email, 300));
    let secret = "shared-inter-region-secret";

    // The primary (sgp-1): principals live here.
    let (_d1, primary_db) = sqlite().await;
    let primary_auth = Arc::new(Auth::new(
        Config {
            service_token: Some(secret.into()),
            ..config(&[&issuer.url])
        },
        primary_db.clone(),
    ));
    let primary_app = app(primary_auth, primary_db.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let primary_url = format!("http://{}", listener.local_addr().expect("addr"));
    let primary = tokio::spawn(async move {
        let _ = axum::serve(listener, primary_app).await;
    });
    let root = principals::set_role(&primary_db, "root@example.com", "admin", true)
        .await
        .expect("grant");
    let maria = principals::resolve(&primary_db, "maria@example.com", "")
        .await
        .expect("maria");

    // The secondary (frankfurt-1): no principals of its own; memberships are local.
    let (_d2, db) = sqlite().await;
    let secondary_auth = Arc::new(Auth::new(
        Config {
            primary: Some(primary_url.clone()),
            service_token: Some(secret.into()),
            ..config(&[&issuer.url])
        },
        db.clone(),
    ));
    let uid = secondary_auth
        .add_membership("maria@example.com", "acme-corp", "member")
        .await
        .expect("membership via the primary's uid");
    assert_eq!(uid, maria.uid);
    assert!(matches!(
        secondary_auth.set_admin("x@example.com", true).await,
        Err(auth::Error::NotPrimary(_))
    ));
    assert!(matches!(
        secondary_auth
            .add_membership("ghost@example.com", "acme-corp", "member")
            .await,
        Err(auth::Error::UnknownAtPrimary(_))
    ));
    let app = app(secondary_auth, db.clone());

    let me = call(&app, "GET", "/v1/me", Some(&token("root@example.com")))
        .await
        .json();
    assert_eq!(me["principal"]["uid"], root.uid.as_str(), "{me}");
    assert_eq!(me["principal"]["admin"], true);
    let me = call(&app, "GET", "/v1/me", Some(&token("maria@example.com")))
        .await
        .json();
    assert_eq!(me["principal"]["uid"], maria.uid.as_str(), "{me}");
    assert_eq!(
        me["memberships"],
        json!([{"account": "acme-corp", "role": "member"}])
    );
    let post = |email: &str, account: &str| {
        let (app, token) = (app.clone(), token(email));
        let path = format!("/v1/accounts/{account}/workspaces");
        async move { call(&app, "POST", &path, Some(&token)).await.status }
    };
    assert_eq!(post("root@example.com", "globex").await, StatusCode::OK);
    assert_eq!(post("maria@example.com", "acme-corp").await, StatusCode::OK);
    assert_eq!(
        post("maria@example.com", "globex").await,
        StatusCode::FORBIDDEN
    );
    // Someone the primary does not know yet reads, and writes nothing; nothing is created
    // in the secondary.
    let t = token("newbie@example.com");
    assert_eq!(
        call(&app, "GET", "/v1/workspaces", Some(&t)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        post("newbie@example.com", "acme-corp").await,
        StatusCode::FORBIDDEN
    );
    assert!(principals::find(&db, "newbie@example.com")
        .await
        .expect("find")
        .is_none());
    // The secondary's own /internal/principals is not a directory.
    let a = call(
        &app,
        "GET",
        "/internal/principals?email=root%40example.com",
        Some(secret),
    )
    .await;
    assert_eq!(a.status, StatusCode::MISDIRECTED_REQUEST, "{}", a.body);

    // The primary goes down: identities cached within the TTL still resolve; a new one
    // answers 503 (a hard dependency), never a silent downgrade.
    primary.abort();
    let _ = primary.await;
    assert_eq!(post("maria@example.com", "acme-corp").await, StatusCode::OK);
    let a = call(
        &app,
        "GET",
        "/v1/workspaces",
        Some(&token("carol@example.com")),
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert!(a.body.contains("primary region"), "{}", a.body);
}

// ---------------------------------------------------------------------------------------------
// End to end with the `cplane` binary.

use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};

/// One blocking request, with a bearer token if given: (status, body). Status 0 when nothing
/// answers (the body then says why).
fn http(port: u16, method: &str, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut request = cplane_e2e::http::Request::new(port, method, path);
    if let Some(t) = bearer {
        request = request.bearer(t);
    }
    match request.send() {
        Ok(r) => (r.status, r.text()),
        Err(e) => (0, e.to_string()),
    }
}

fn wait_for(what: &str, f: impl FnMut() -> bool) {
    cplane_e2e::serve::wait_up_to(what, Duration::from_secs(60), f);
}

fn ready(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        && http(port, "GET", "/readyz", None).0 == 200
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A bare remote seeded with the template; returns its file:// URL and branch.
fn remote(dir: &std::path::Path) -> (String, String) {
    let seed = cplane_e2e::template_repo();
    let remote = dir.join("remote.git");
    let repo = git2::build::RepoBuilder::new()
        .bare(true)
        .clone(&format!("file://{}", seed.path().display()), &remote)
        .expect("bare remote");
    let branch = repo
        .head()
        .expect("head")
        .shorthand()
        .expect("branch")
        .to_owned();
    (format!("file://{}", remote.display()), branch)
}

/// `cplane serve` on a free port with its own SQLite database under `dir/name`.
fn serve(
    dir: &std::path::Path,
    name: &str,
    (url, branch): &(String, String),
    issuer: &str,
    env: &[(&str, &str)],
) -> (Server, u16, String) {
    let port = cplane_e2e::moto::free_port();
    let db = format!("sqlite://{}", dir.join(format!("{name}.db")).display());
    let mut cmd = Command::new(cplane_e2e::cargo_bin("cplane"));
    cmd.args([
        "serve",
        "--repo-url",
        url,
        "--branch",
        branch,
        "--poll",
        "1h",
    ])
    .args([
        "--mirror",
        dir.join(format!("{name}-mirror.git"))
            .to_str()
            .expect("utf-8"),
    ])
    .args(["--database", &db, "--listen", &format!("127.0.0.1:{port}")])
    .args(["--oidc-issuer", issuer, "--oidc-audience", AUD])
    .env_remove("PRIMARY_CPLANE_API_URL")
    .env_remove("INTER_REGION_SERVICE_TOKEN")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let server = Server(cmd.spawn().expect("start cplane serve"));
    wait_for("/readyz", || ready(port));
    (server, port, db)
}

/// Runs `cplane ARGS` with extra environment: (success, stdout + stderr).
fn cplane(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(cplane_e2e::cargo_bin("cplane"));
    cmd.args(args)
        .env_remove("PRIMARY_CPLANE_API_URL")
        .env_remove("INTER_REGION_SERVICE_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run cplane");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_requires_a_token_on_the_user_api_only() {
    let key = TestKey::rsa("k1");
    let issuer = TestIssuer::start("/realms/cogrion", &[&key]).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = remote(tmp.path());
    let (_server, port, db) = serve(tmp.path(), "sgp-1", &repo, &issuer.url, &[]);
    let token = key.token(&claims(&issuer.url, AUD, "ops@example.com", 300));

    for path in [
        "/v1/workspaces",
        "/v1/workspaces/acme",
        "/v1/regions",
        "/v1/stacks",
        "/v1/clusters",
        "/v1/status",
        "/v1/clusters/w-acme/status",
        "/v1/me",
    ] {
        assert_eq!(
            http(port, "GET", path, None).0,
            401,
            "{path} without a token"
        );
        // Signed in without memberships: the platform's reads, none of a tenant's.
        let expected = if path.contains("acme") { 404 } else { 200 };
        let (status, body) = http(port, "GET", path, Some(&token));
        assert_eq!(status, expected, "{path}: {body}");
    }
    let (_, body) = http(port, "GET", "/v1/workspaces", Some(&token));
    assert_eq!(body, "[]");
    let wrong = key.token(&claims(&issuer.url, "other-client", "ops@example.com", 300));
    assert_eq!(http(port, "GET", "/v1/workspaces", Some(&wrong)).0, 401);

    // Paths with their own authentication (or none) are unchanged.
    assert_eq!(http(port, "GET", "/healthz", None).0, 200);
    assert_eq!(http(port, "GET", "/metrics", None).0, 200);
    assert_eq!(http(port, "GET", "/lookup/w-acme", None).0, 200);
    assert_eq!(http(port, "GET", "/openapi.json", None).0, 200);
    assert_eq!(
        http(port, "GET", "/v1/nonexistent", None).0,
        404,
        "an unknown path is not a user route"
    );
    assert_eq!(
        http(port, "POST", "/v1/webhooks/git", None).0,
        404,
        "no webhook secret: not served"
    );
    assert_eq!(http(port, "GET", "/v1/clusters/w-acme/bundle", None).0, 401);
    assert_eq!(
        http(port, "GET", "/v1/clusters/w-acme/bundle", Some(&token)).0,
        401,
        "a user's JWT is not a cluster token"
    );
    let (ok, out) = cplane(
        &["cluster", "token", "create", "w-acme", "--database", &db],
        &[],
    );
    assert!(ok, "{out}");
    let cluster_token = out
        .lines()
        .find(|l| l.starts_with("cpt_"))
        .expect("token")
        .trim()
        .to_owned();
    assert_eq!(
        http(
            port,
            "GET",
            "/v1/clusters/w-acme/bundle",
            Some(&cluster_token)
        )
        .0,
        200
    );
    assert_eq!(
        http(
            port,
            "GET",
            "/api/workspaces/acme/config",
            Some(&cluster_token)
        )
        .0,
        403,
        "an agent token is not the BFF's (tests/credentials.rs)"
    );
    assert_eq!(
        http(
            port,
            "GET",
            "/internal/principals?email=ops%40example.com",
            Some(&token)
        )
        .0,
        401
    );
}

/// Reads scoped by role, through `serve`: an admin sees everything; a member their account's
/// workspaces with the tenant's AWS identifiers; a viewer the same without them, and writes
/// nothing; another user none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_scoped_by_account_and_role() {
    let key = TestKey::rsa("k1");
    let issuer = TestIssuer::start("/realms/cogrion", &[&key]).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = remote(tmp.path());
    let (_server, port, db) = serve(tmp.path(), "sgp-1", &repo, &issuer.url, &[]);
    let token = |email: &str| key.token(&claims(&issuer.url, AUD, email, 300));
    let grant = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--database", db.as_str()]);
        let (ok, out) = cplane(&all, &[]);
        assert!(ok, "{out}");
    };
    for email in [
        "root@example.com",
        "mia@example.com",
        "vic@example.com",
        "eve@example.com",
    ] {
        assert_eq!(http(port, "GET", "/v1/me", Some(&token(email))).0, 200);
    }
    grant(&["principal", "grant-admin", "root@example.com"]);
    grant(&[
        "membership",
        "add",
        "mia@example.com",
        "acme-corp",
        "--role",
        "member",
    ]);
    grant(&[
        "membership",
        "add",
        "vic@example.com",
        "acme-corp",
        "--role",
        "viewer",
    ]);
    // Wait for the first run, so clusters and rows exist.
    wait_for("published clusters", || {
        http(
            port,
            "GET",
            "/v1/clusters",
            Some(&token("root@example.com")),
        )
        .1
        .contains("w-acme")
    });

    let ids = |email: &str, path: &str| -> Vec<String> {
        let (status, body) = http(port, "GET", path, Some(&token(email)));
        assert_eq!(status, 200, "{email} {path}: {body}");
        serde_json::from_str::<Vec<Value>>(&body)
            .expect("a JSON list")
            .iter()
            .map(|v| v["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let all = ids("root@example.com", "/v1/workspaces");
    assert!(
        all.len() >= 3 && all.contains(&"globex".to_owned()),
        "{all:?}"
    );
    assert_eq!(ids("mia@example.com", "/v1/workspaces"), ["acme"]);
    assert_eq!(ids("vic@example.com", "/v1/workspaces"), ["acme"]);
    assert!(ids("eve@example.com", "/v1/workspaces").is_empty());
    assert!(
        ids("root@example.com", "/v1/clusters").len() > all.len(),
        "platform clusters too"
    );
    assert_eq!(ids("mia@example.com", "/v1/clusters"), ["w-acme"]);
    assert_eq!(ids("vic@example.com", "/v1/clusters"), ["w-acme"]);
    assert!(ids("eve@example.com", "/v1/clusters").is_empty());

    // The tenant's AWS identifiers: admins and members only.
    let aws = |email: &str| {
        let (status, body) = http(port, "GET", "/v1/workspaces/acme", Some(&token(email)));
        assert_eq!(status, 200, "{email}: {body}");
        serde_json::from_str::<Value>(&body).expect("json")["spec"]["aws"].clone()
    };
    for email in ["root@example.com", "mia@example.com"] {
        let aws = aws(email);
        assert!(
            aws["roleArn"].is_string() && aws["externalId"].is_string(),
            "{email}: {aws}"
        );
    }
    let hidden = aws("vic@example.com");
    for key in ["accountId", "roleArn", "externalId"] {
        assert!(hidden.get(key).is_none(), "viewer sees {key}: {hidden}");
    }
    assert_eq!(
        http(
            port,
            "GET",
            "/v1/workspaces/globex",
            Some(&token("mia@example.com"))
        )
        .0,
        404,
        "another account's workspace is not found"
    );
    assert_eq!(
        http(
            port,
            "GET",
            "/v1/clusters/w-globex/status",
            Some(&token("vic@example.com"))
        )
        .0,
        404
    );
    assert_eq!(
        http(
            port,
            "GET",
            "/v1/clusters/w-acme/status",
            Some(&token("vic@example.com"))
        )
        .0,
        200
    );

    // The plan: only the steps of readable workspaces; run errors only for admins.
    for email in ["mia@example.com", "eve@example.com"] {
        let (status, body) = http(port, "GET", "/v1/plan", Some(&token(email)));
        assert_eq!(status, 200, "{body}");
        let plan: Value = serde_json::from_str(&body).expect("json");
        let steps = plan["plan"]["steps"].as_array().expect("steps");
        assert!(
            steps
                .iter()
                .all(|s| email.starts_with("mia") && s["workspace"] == "acme"),
            "{email}: {plan}"
        );
        let (_, body) = http(port, "GET", "/v1/status", Some(&token(email)));
        let status: Value = serde_json::from_str(&body).expect("json");
        assert!(status["last_run"].get("errors").is_none(), "{status}");
    }
    let (_, body) = http(port, "GET", "/v1/status", Some(&token("root@example.com")));
    let status: Value = serde_json::from_str(&body).expect("json");
    assert!(status["last_run"]["errors"].is_array(), "{status}");

    // A viewer changes nothing; nor does a member of another account.
    let body = br#"{"values":{}}"#;
    for email in ["vic@example.com", "eve@example.com"] {
        let (status, out) = cplane_e2e::serve::http(
            port,
            "PUT",
            "/v1/workspaces/acme/stacks/trino",
            &[
                ("Authorization", format!("Bearer {}", token(email))),
                ("Content-Type", "application/json".into()),
            ],
            body,
        );
        assert_eq!(status, 403, "{email}: {out}");
    }
    assert_eq!(
        http(
            port,
            "POST",
            "/v1/reconcile",
            Some(&token("mia@example.com"))
        )
        .0,
        403,
        "only admins start a reconcile"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_share_identity_through_the_primary() {
    let key = TestKey::ec("k1");
    let issuer = TestIssuer::start("/realms/cogrion", &[&key]).await;
    let token = |email: &str| key.token(&claims(&issuer.url, AUD, email, 300));
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = remote(tmp.path());
    let secret = ("INTER_REGION_SERVICE_TOKEN", "inter-region-test-secret");
    let (mut primary, p_port, p_db) = serve(tmp.path(), "sgp-1", &repo, &issuer.url, &[secret]);
    let primary_url = format!("http://127.0.0.1:{p_port}");
    let to_primary = ("PRIMARY_CPLANE_API_URL", primary_url.as_str());
    let (_secondary, s_port, s_db) = serve(
        tmp.path(),
        "fra-1",
        &repo,
        &issuer.url,
        &[secret, to_primary],
    );

    // Identity is administered in the primary; memberships in each region.
    let (ok, out) = cplane(
        &[
            "principal",
            "grant-admin",
            "root@example.com",
            "--database",
            &p_db,
        ],
        &[],
    );
    assert!(ok && out.contains("system roles [admin]"), "{out}");
    let (ok, out) = cplane(
        &[
            "principal",
            "grant-admin",
            "x@example.com",
            "--database",
            &s_db,
        ],
        &[secret, to_primary],
    );
    assert!(
        !ok && out.contains("principals live in the primary region"),
        "{out}"
    );
    let (ok, out) = cplane(
        &[
            "membership",
            "add",
            "maria@example.com",
            "acme-corp",
            "--database",
            &s_db,
        ],
        &[secret, to_primary],
    );
    assert!(
        !ok && out.contains("knows no principal maria@example.com"),
        "{out}"
    );
    // Maria signs in once at the primary; now the secondary can name her.
    let (status, body) = http(p_port, "GET", "/v1/me", Some(&token("maria@example.com")));
    assert_eq!(status, 200, "{body}");
    let maria_uid = serde_json::from_str::<Value>(&body).expect("json")["principal"]["uid"]
        .as_str()
        .expect("uid")
        .to_owned();
    let (ok, out) = cplane(
        &[
            "membership",
            "add",
            "maria@example.com",
            "acme-corp",
            "--database",
            &s_db,
        ],
        &[secret, to_primary],
    );
    assert!(ok && out.contains(&maria_uid), "{out}");

    let me = |port: u16, email: &str| {
        let (status, body) = http(port, "GET", "/v1/me", Some(&token(email)));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).expect("json")
    };
    let m = me(s_port, "maria@example.com");
    assert_eq!(m["principal"]["uid"], maria_uid.as_str());
    assert_eq!(
        m["memberships"],
        json!([{"account": "acme-corp", "role": "member"}])
    );
    assert_eq!(
        me(p_port, "maria@example.com")["memberships"],
        json!([]),
        "memberships are per region"
    );
    let r = me(s_port, "root@example.com");
    assert_eq!(r["principal"]["admin"], true);
    assert_eq!(
        r["principal"]["uid"],
        me(p_port, "root@example.com")["principal"]["uid"]
    );

    // The primary is a hard dependency: down, a principal not cached answers 503.
    let _ = primary.0.kill();
    let _ = primary.0.wait();
    let (status, body) = http(
        s_port,
        "GET",
        "/v1/workspaces",
        Some(&token("carol@example.com")),
    );
    assert_eq!(status, 503, "{body}");
}

#[test]
fn up_prints_an_admin_token_that_the_api_accepts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("try");
    let port = cplane_e2e::moto::free_port();
    let mut child = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args([
            "up",
            "--dir",
            dir.to_str().expect("utf-8"),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cplane up");
    let stdout = child.stdout.take().expect("stdout");
    let _server = Server(child);
    // Read stdout to the end on a thread of its own (a closed pipe would stop `up`).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(t) = line.trim().strip_prefix("token") {
                let _ = tx.send(t.trim().to_owned());
            }
        }
    });
    let token = rx.recv_timeout(Duration::from_secs(60)).ok();
    let token = token.expect("cplane up prints a token");
    wait_for("/readyz", || ready(port));

    assert_eq!(http(port, "GET", "/v1/workspaces", None).0, 401);
    let (status, body) = http(port, "GET", "/v1/workspaces", Some(&token));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"acme\""), "{body}");
    let (status, body) = http(port, "GET", "/v1/me", Some(&token));
    assert_eq!(status, 200, "{body}");
    let me: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(me["principal"]["admin"], true, "{me}");
    assert_eq!(
        me["principal"]["issuer"],
        format!("http://127.0.0.1:{port}/dev-issuer")
    );
    // The same JWT path as production: the JWKS is served at the Keycloak path.
    let (status, jwks) = http(
        port,
        "GET",
        "/dev-issuer/protocol/openid-connect/certs",
        None,
    );
    assert_eq!(status, 200);
    assert!(
        jwks.contains("\"kty\":\"EC\"") && !jwks.contains("\"d\""),
        "{jwks}"
    );

    // The key and token stay in DIR, private and out of git.
    use std::os::unix::fs::PermissionsExt as _;
    for f in ["dev-issuer.p8", "admin.token"] {
        let mode = std::fs::metadata(dir.join(f))
            .expect(f)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("admin.token")).expect("token file"),
        token
    );
    assert!(std::fs::read_to_string(dir.join(".gitignore"))
        .expect("ignore")
        .contains('*'));
    let state = git2::Repository::open(dir.join("state")).expect("state repo");
    assert!(
        state.statuses(None).expect("status").is_empty(),
        "nothing new in the state repo"
    );
}
