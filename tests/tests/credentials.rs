//! Separate credentials (issue 13, item 3), end to end: `cplane serve` on 127.0.0.1 with SQLite
//! and with PostgreSQL, tokens made by the `cplane` binary as an operator would.
//!
//! - An `agent` token reads its cluster's bundle and posts its status, and nothing of the BFF's;
//!   a `bff` token reads its workspace's config and registers, and nothing of the agent's.
//! - `cplane cluster token rotate --overlap` keeps the old token working until the overlap ends.
//! - `--expires-in` tokens are refused (401) once expired, even though never revoked.
//! - `cplane cluster token list` shows ids, scopes and states, never a token.

use std::process::Command;
use std::time::{Duration, Instant};

use cplane_e2e::serve::{http, wait_for, Serve, Server};

/// `cplane serve` on a free port against `db`, with the template's clusters published.
fn serve(dir: &std::path::Path, db: &str) -> (Server, u16) {
    let server = Serve::new(dir)
        .database(db)
        .args(["--insecure-open-read"])
        .start();
    let port = server.port;
    (server, port)
}

/// `cplane cluster token ARGS --database DB`: (success, stdout, stderr).
fn cplane_token(db: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(["cluster", "token"])
        .args(args)
        .args(["--database", db])
        .output()
        .expect("run cplane");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A new token from `create` or `rotate` (the one line on stdout).
fn new_token(db: &str, args: &[&str]) -> String {
    let (ok, out, err) = cplane_token(db, args);
    assert!(ok, "{args:?}: {err}");
    let token = out.trim().to_owned();
    assert!(token.starts_with("cpt_"), "{out}");
    token
}

fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

/// `GET /v1/clusters/{cluster}/bundle` with `token`: the status.
fn bundle(port: u16, cluster: &str, token: &str) -> u16 {
    http(
        port,
        "GET",
        &format!("/v1/clusters/{cluster}/bundle"),
        &[bearer(token)],
        b"",
    )
    .0
}

/// `GET /api/workspaces/{id}/config` with `token`: (status, body).
fn config(port: u16, id: &str, token: &str) -> (u16, String) {
    http(
        port,
        "GET",
        &format!("/api/workspaces/{id}/config"),
        &[bearer(token)],
        b"",
    )
}

fn register(port: u16, id: &str, token: &str) -> u16 {
    http(
        port,
        "POST",
        &format!("/api/workspaces/{id}/register"),
        &[
            bearer(token),
            ("Content-Type", "application/json".to_owned()),
        ],
        format!(
            r#"{{"bff_url":"https://bff.w-{id}.sgp-1.cogrion.com","public_ip":"203.0.113.7"}}"#
        )
        .as_bytes(),
    )
    .0
}

fn report(port: u16, cluster: &str, token: &str) -> u16 {
    let digest = format!("sha256:{}", "0".repeat(64));
    http(
        port,
        "POST",
        &format!("/v1/clusters/{cluster}/status"),
        &[
            bearer(token),
            ("Content-Type", "application/json".to_owned()),
        ],
        format!(
            r#"{{"digest":"{digest}","generation":1,"healthy":true,"message":"ok","objects":[]}}"#
        )
        .as_bytes(),
    )
    .0
}

/// Scope separation both ways, on the database at `db`.
fn scopes_are_separate(db: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_server, port) = serve(tmp.path(), db);
    let agent = new_token(db, &["create", "w-acme"]);
    let bff = new_token(db, &["create", "w-acme", "--scope", "bff"]);
    let globex_bff = new_token(db, &["create", "w-globex", "--scope", "bff"]);

    // The agent's token: its bundle and its status, not the BFF's endpoints.
    assert_eq!(bundle(port, "w-acme", &agent), 200);
    assert_eq!(report(port, "w-acme", &agent), 204);
    let (status, body) = config(port, "acme", &agent);
    assert_eq!(
        status, 403,
        "an agent token is not the BFF's credential: {body}"
    );
    assert!(body.contains("agent token"), "{body}");
    assert_eq!(register(port, "acme", &agent), 403);

    // The BFF's token: its config and registration, not the agent's endpoints.
    let (status, body) = config(port, "acme", &bff);
    assert_eq!(status, 200, "{body}");
    // Without spec.keycloak: the naming convention's realm; the client id is still w-{id}.
    let cfg: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let issuer = "https://auth.sgp-1.cogrion.com/realms/cogrion";
    assert_eq!(cfg["auth"]["issuer"], issuer, "{body}");
    assert_eq!(
        cfg["auth"]["token_endpoint"],
        format!("{issuer}/protocol/openid-connect/token")
    );
    assert_eq!(
        cfg["auth"]["authorization_endpoint"],
        format!("{issuer}/protocol/openid-connect/auth")
    );
    assert_eq!(cfg["auth"]["client_id"], "w-acme");
    assert_eq!(cfg["auth"]["client_provisioned"], false);
    assert_eq!(
        cfg["temporal"]["address"],
        "temporal.sgp-1.cogrion.com:7233"
    );
    assert_eq!(cfg["features"], serde_json::json!({}));
    assert_eq!(register(port, "acme", &bff), 200);
    assert_eq!(
        bundle(port, "w-acme", &bff),
        403,
        "a BFF token reads no bundle"
    );
    assert_eq!(
        report(port, "w-acme", &bff),
        403,
        "a BFF token posts no status"
    );

    // Another workspace's BFF token: 403 here, 200 at home.
    assert_eq!(config(port, "acme", &globex_bff).0, 403);
    assert_eq!(config(port, "globex", &globex_bff).0, 200);
    assert_eq!(register(port, "acme", &globex_bff), 403);

    // Revoking only the BFF's tokens leaves the agent's working.
    let (ok, out, err) = cplane_token(db, &["revoke", "w-acme", "--scope", "bff"]);
    assert!(ok, "{err}");
    assert!(out.contains("revoked 1 token"), "{out}");
    wait_for("the revoked BFF token refused", || {
        config(port, "acme", &bff).0 == 401
    });
    assert_eq!(bundle(port, "w-acme", &agent), 200);
}

#[test]
fn agent_and_bff_tokens_are_separate_sqlite() {
    let (_dir, db) = cplane_e2e::pg::sqlite_url();
    scopes_are_separate(&db);
}

#[test]
fn agent_and_bff_tokens_are_separate_postgres() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pg = rt.block_on(cplane_e2e::pg::PgDatabase::create());
    scopes_are_separate(&pg.url);
}

/// Rotation with an overlap, expiry, and the list, on the database at `db`.
fn rotation_and_expiry(db: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_server, port) = serve(tmp.path(), db);

    // Rotate with a 3 s overlap: the old token works until it ends, then is refused; the new
    // one works throughout. The BFF's token (another scope) is untouched.
    let old = new_token(db, &["create", "w-acme"]);
    let bff = new_token(db, &["create", "w-acme", "--scope", "bff"]);
    assert_eq!(bundle(port, "w-acme", &old), 200, "cached as verified");
    let rotated_at = Instant::now();
    let new = new_token(db, &["rotate", "w-acme", "--overlap", "3s"]);
    assert_ne!(new, old);
    assert_eq!(bundle(port, "w-acme", &new), 200);
    assert_eq!(bundle(port, "w-acme", &old), 200, "within the overlap");
    assert!(
        rotated_at.elapsed() < Duration::from_millis(2800),
        "the checks within the overlap took too long to mean anything"
    );
    std::thread::sleep(Duration::from_millis(3100).saturating_sub(rotated_at.elapsed()));
    let (status, body) = http(
        port,
        "GET",
        "/v1/clusters/w-acme/bundle",
        &[bearer(&old)],
        b"",
    );
    assert_eq!(status, 401, "after the overlap: {body}");
    assert!(body.contains("expired"), "{body}");
    assert_eq!(bundle(port, "w-acme", &new), 200);
    assert_eq!(
        config(port, "acme", &bff).0,
        200,
        "rotating agent tokens kept the BFF's"
    );

    // `--overlap 0` ends the old tokens at once (on SQLite within the revocation check, 1 s).
    let newer = new_token(db, &["rotate", "w-acme", "--overlap", "0"]);
    wait_for("the replaced token refused", || {
        bundle(port, "w-acme", &new) == 401
    });
    assert_eq!(bundle(port, "w-acme", &newer), 200);

    // A token with an expiry works until then and is refused after, though never revoked.
    let brief = new_token(
        db,
        &["create", "w-globex", "--scope", "bff", "--expires-in", "2s"],
    );
    let made = Instant::now();
    assert_eq!(config(port, "globex", &brief).0, 200);
    std::thread::sleep(Duration::from_millis(2100).saturating_sub(made.elapsed()));
    let (status, body) = config(port, "globex", &brief);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("expired token"), "{body}");

    // The list: every token of the cluster with its scope and state, no secret.
    let (ok, out, err) = cplane_token(db, &["list", "w-acme", "--format", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let tokens = v["tokens"].as_array().expect("tokens");
    let states: Vec<(String, String)> = tokens
        .iter()
        .map(|t| {
            (
                t["scope"].as_str().unwrap_or_default().to_owned(),
                t["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let count = |scope: &str, state: &str| {
        states
            .iter()
            .filter(|(sc, st)| sc == scope && st == state)
            .count()
    };
    assert_eq!(count("agent", "expired"), 2, "{out}");
    assert_eq!(count("agent", "active"), 1, "{out}");
    assert_eq!(count("bff", "active"), 1, "{out}");
    assert!(tokens
        .iter()
        .all(|t| t["id"].as_str().map(str::len) == Some(12)));
    assert!(tokens.iter().any(|t| t["expires_at"].is_null()));
    for t in [&old, &new, &newer, &bff] {
        assert!(!out.contains(t.as_str()), "the list shows no token");
    }
    let (ok, text, _) = cplane_token(db, &["list", "w-acme"]);
    assert!(ok);
    assert!(text.starts_with("ID "), "{text}");
    assert_eq!(text.lines().count(), 5, "{text}");

    // Unknown clusters are refused by create and rotate alike.
    let (ok, _, err) = cplane_token(db, &["rotate", "w-acmee"]);
    assert!(!ok);
    assert!(err.contains("w-acme"), "{err}");
}

#[test]
fn rotation_overlaps_and_expired_tokens_are_refused_sqlite() {
    let (_dir, db) = cplane_e2e::pg::sqlite_url();
    rotation_and_expiry(&db);
}

#[test]
fn rotation_overlaps_and_expired_tokens_are_refused_postgres() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pg = rt.block_on(cplane_e2e::pg::PgDatabase::create());
    rotation_and_expiry(&pg.url);
}

/// A database made before scopes existed (migrations up to 0005, a token created then) keeps
/// its token working after the upgrade, as an agent token that does not expire.
async fn old_tokens_become_agent_tokens(url: &str) {
    sqlx::any::install_default_drivers();
    let old = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(cplane_e2e::root().join("reconciler/migrations")).expect("dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.get(..4).is_some_and(|n| n <= "0005") {
            std::fs::copy(&path, old.path().join(name)).expect("copy");
        }
    }
    let hash = cplane_reconciler::db::token_hash("cpt_from_before");
    {
        let opts = if url.starts_with("sqlite:") {
            format!("{url}?mode=rwc")
        } else {
            url.to_owned()
        };
        let pool = sqlx::AnyPool::connect(&opts).await.expect("connect");
        sqlx::migrate::Migrator::new(old.path())
            .await
            .expect("old migrations")
            .run(&pool)
            .await
            .expect("migrate to 0005");
        sqlx::query(
            "INSERT INTO cluster_tokens (token_hash, cluster_id, created_at) VALUES ($1, $2, $3)",
        )
        .bind(&hash)
        .bind("w-acme")
        .bind(1_i64)
        .execute(&pool)
        .await
        .expect("a token of then");
        pool.close().await;
    }
    let db = cplane_reconciler::db::Db::connect(url)
        .await
        .expect("upgrade");
    let grants = db
        .token_grants(std::slice::from_ref(&hash))
        .await
        .expect("grants");
    assert_eq!(
        grants.get(&hash),
        Some(&cplane_reconciler::db::TokenGrant {
            cluster: "w-acme".into(),
            scope: cplane_reconciler::db::TokenScope::Agent,
            expires_at: None,
        })
    );
    let listed = db.cluster_tokens("w-acme").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state(cplane_reconciler::db::now_ms()), "active");
}

#[tokio::test]
async fn tokens_from_before_scopes_are_agent_tokens_sqlite() {
    let (_dir, url) = cplane_e2e::pg::sqlite_url();
    old_tokens_become_agent_tokens(&url).await;
}

#[tokio::test]
async fn tokens_from_before_scopes_are_agent_tokens_postgres() {
    let pg = cplane_e2e::pg::PgDatabase::create().await;
    old_tokens_become_agent_tokens(&pg.url).await;
}
