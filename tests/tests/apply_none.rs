//! `cplane plan` / `cplane apply` with `--cloud none` (database only) on SQLite and PostgreSQL:
//! rows, bundles, refusal of invalid revisions, and the plan's JSON form.

use std::process::{Command, Output};

use cplane_e2e::pg::{sqlite_url, PgDatabase};
use sqlx::Row;

fn cplane(args: &[&str]) -> Output {
    Command::new(cplane_e2e::cargo_bin("cplane"))
        .args(args)
        .env_remove("CPLANE_DATABASE_URL")
        .env_remove("CPLANE_CLOUD")
        .output()
        .expect("run cplane")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn count(url: &str, sql: &str) -> i64 {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.expect("connect");
    let row = sqlx::query(sql).fetch_one(&pool).await.expect("query");
    row.try_get::<i64, _>(0).expect("count")
}

async fn database_only_apply(db: &str) {
    let repo = cplane_e2e::template_repo();
    let repo_path = repo.path().to_str().expect("utf-8");

    let plan = cplane(&[
        "plan",
        "--repo",
        repo_path,
        "--database",
        db,
        "--format",
        "json",
    ]);
    assert!(plan.status.success(), "{}", text(&plan));
    let v: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("plan JSON");
    let steps = v["plan"]["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 3 * 9, "nine steps per workspace");
    assert_eq!(steps[1]["action"], "create_zone");
    assert_eq!(steps[1]["workspace"], "acme");
    assert_eq!(steps[1]["caller_reference"], "cplane/sgp-1/w-acme/g1");
    assert!(v["notes"][0]
        .as_str()
        .expect("note")
        .contains("cloud: none"));
    // plan writes nothing.
    assert_eq!(count(db, "SELECT COUNT(*) FROM workspaces").await, 0);

    let out = cplane(&["apply", "--repo", repo_path, "--database", db]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("note: cloud: none"), "{all}");
    assert!(all.contains("acme: + route53 hosted zone w-acme.sgp-1.cogrion.com (tenant account) ... skipped (--cloud none: AWS not called)"), "{all}");
    assert!(all.contains("5 bundles published"), "{all}");
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM tenants WHERE status = 'active'").await,
        3
    );
    assert_eq!(count(db, "SELECT COUNT(*) FROM tenant_lookup").await, 3);
    assert_eq!(count(db, "SELECT COUNT(*) FROM clusters").await, 5);
    // Without the cloud, nothing is marked active and no journal step is done.
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) FROM workspaces WHERE status = 'provisioning'"
        )
        .await,
        3
    );
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM journal WHERE state = 'done'").await,
        0
    );

    // Again: bundles unchanged, nothing republished.
    let again = cplane(&["apply", "--repo", repo_path, "--database", db]);
    assert!(
        text(&again).contains("0 bundles published"),
        "{}",
        text(&again)
    );

    // An invalid revision is refused whole: nothing applied, the last good revision stays.
    let good: String = {
        let pool = sqlx::AnyPool::connect(db).await.expect("connect");
        sqlx::query("SELECT commit_id FROM applied_revisions")
            .fetch_one(&pool)
            .await
            .expect("row")
            .try_get(0)
            .expect("commit")
    };
    let acme = repo.path().join("workspaces/acme.yaml");
    let broken = std::fs::read_to_string(&acme)
        .expect("read")
        .replace("region: sgp-1", "region: sgp-9");
    std::fs::write(&acme, broken).expect("write");
    std::fs::remove_file(repo.path().join("workspaces/globex.yaml")).expect("rm");
    cplane_e2e::commit_all(repo.path(), "broken");
    let refused = cplane(&["apply", "--repo", repo_path, "--database", db]);
    assert_eq!(refused.status.code(), Some(2));
    let all = text(&refused);
    assert!(
        all.contains("workspaces/acme.yaml:9:11: spec.region: region `sgp-9` does not exist"),
        "{all}"
    );
    assert!(all.contains("nothing was applied"), "{all}");
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM tenant_lookup").await,
        3,
        "globex's removal was not applied"
    );
    let pool = sqlx::AnyPool::connect(db).await.expect("connect");
    let still: String = sqlx::query("SELECT commit_id FROM applied_revisions")
        .fetch_one(&pool)
        .await
        .expect("row")
        .try_get(0)
        .expect("commit");
    assert_eq!(still, good);
    let stalled: String = sqlx::query("SELECT message FROM entity_status WHERE kind = 'platform' AND condition = 'Stalled' AND status = 'True'")
        .fetch_one(&pool)
        .await
        .expect("stalled condition")
        .try_get(0)
        .expect("message");
    assert!(
        stalled.contains("region `sgp-9` does not exist") && stalled.contains(&good),
        "{stalled}"
    );
}

#[tokio::test]
async fn database_only_apply_on_sqlite() {
    let (_dir, url) = sqlite_url();
    database_only_apply(&url).await;
}

#[tokio::test]
async fn database_only_apply_on_postgres() {
    let pg = PgDatabase::create().await;
    database_only_apply(&pg.url).await;
}

/// One control plane per region × environment (reference doc 001): `--environment prod`
/// provisions only prod workspaces and publishes only prod clusters; a workspace that moves to
/// another environment is refused as a move, never deprovisioned as if it were removed.
#[tokio::test]
async fn environment_scoped_control_plane() {
    let (_dir, db) = sqlite_url();
    let repo = cplane_e2e::template_repo();
    let repo_path = repo.path().to_str().expect("utf-8");
    let prod = |db: &str| {
        cplane(&[
            "apply",
            "--repo",
            repo_path,
            "--database",
            db,
            "--region",
            "sgp-1",
            "--environment",
            "prod",
        ])
    };
    let out = prod(&db);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM workspaces WHERE environment = 'prod'"
        )
        .await,
        2
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM workspaces").await,
        2,
        "no dev workspace"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM clusters WHERE environment <> 'prod'"
        )
        .await,
        0,
        "only prod clusters are published"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM applied_revisions WHERE scope = 'sgp-1/prod'"
        )
        .await,
        1
    );
    // The region's readiness counts the workspaces of the scope's environment only.
    assert_eq!(
        condition(&db, "region", "sgp-1", "Ready").await.2,
        "2 of 2 workspaces ready"
    );

    let acme = repo.path().join("workspaces/acme.yaml");
    let moved = std::fs::read_to_string(&acme)
        .expect("read")
        .replace("environment: prod", "environment: dev");
    std::fs::write(&acme, moved).expect("write");
    cplane_e2e::commit_all(repo.path(), "acme to dev");
    let out = prod(&db);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("workspace acme moved from sgp-1/prod to sgp-1/dev"),
        "{all}"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM workspaces WHERE id = 'acme' AND status = 'provisioning'"
        )
        .await,
        1,
        "not deprovisioned"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM tenant_lookup").await, 2);
    assert_eq!(
        condition(&db, "region", "sgp-1", "Ready").await,
        (
            "False".into(),
            "WorkspacesNotReady".into(),
            "1 of 2 workspaces ready; not ready: acme".into()
        )
    );
}

/// (status, reason, message) of one condition.
async fn condition(url: &str, kind: &str, id: &str, name: &str) -> (String, String, String) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.expect("connect");
    let row = sqlx::query(
        "SELECT status, reason, message FROM entity_status WHERE kind = $1 AND id = $2 AND condition = $3",
    )
    .bind(kind)
    .bind(id)
    .bind(name)
    .fetch_optional(&pool)
    .await
    .expect("query")
    .unwrap_or_else(|| panic!("no {name} condition for {kind} {id}"));
    (
        row.try_get(0).expect("status"),
        row.try_get(1).expect("reason"),
        row.try_get(2).expect("message"),
    )
}

/// A workspace whose change is refused (it moved region) is `Stalled`; once a later revision
/// no longer refuses it (moved back), it is not. The region's `Ready` condition counts the
/// workspaces ready there throughout.
async fn stalled_clears_once_a_workspace_is_no_longer_refused(db: &str) {
    let repo = cplane_e2e::template_repo();
    let repo_path = repo.path().to_str().expect("utf-8");
    let apply = || cplane(&["apply", "--repo", repo_path, "--database", db]);
    let out = apply();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        condition(db, "region", "sgp-1", "Ready").await,
        (
            "True".into(),
            "WorkspacesReady".into(),
            "3 of 3 workspaces ready".into()
        )
    );

    let acme = repo.path().join("workspaces/acme.yaml");
    let original = std::fs::read_to_string(&acme).expect("read");
    std::fs::write(&acme, original.replace("region: sgp-1", "region: fra-1")).expect("write");
    cplane_e2e::commit_all(repo.path(), "move acme to Frankfurt");
    let out = apply();
    assert!(!out.status.success(), "{}", text(&out));
    let (status, reason, message) = condition(db, "workspace", "acme", "Stalled").await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Refused"));
    assert!(
        message.contains("moved from sgp-1/prod to fra-1/prod"),
        "{message}"
    );
    assert_eq!(
        condition(db, "region", "sgp-1", "Ready").await,
        (
            "False".into(),
            "WorkspacesNotReady".into(),
            "2 of 3 workspaces ready; not ready: acme".into()
        )
    );

    std::fs::write(&acme, &original).expect("write");
    let back = cplane_e2e::commit_all(repo.path(), "acme stays in Singapore");
    let out = apply();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (status, reason, message) = condition(db, "workspace", "acme", "Stalled").await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Accepted"));
    assert!(message.contains(&back), "{message}");
    assert_eq!(
        condition(db, "region", "sgp-1", "Ready").await,
        (
            "True".into(),
            "WorkspacesReady".into(),
            "3 of 3 workspaces ready".into()
        )
    );
    // The region the workspace was refused into has no workspace of this control plane.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(db).await.expect("connect");
    let fra: i64 =
        sqlx::query("SELECT COUNT(*) FROM entity_status WHERE kind = 'region' AND id = 'fra-1'")
            .fetch_one(&pool)
            .await
            .expect("count")
            .try_get(0)
            .expect("count");
    assert_eq!(fra, 0);
}

#[tokio::test]
async fn stalled_clears_once_a_workspace_is_no_longer_refused_on_sqlite() {
    let (_dir, url) = sqlite_url();
    stalled_clears_once_a_workspace_is_no_longer_refused(&url).await;
}

#[tokio::test]
async fn stalled_clears_once_a_workspace_is_no_longer_refused_on_postgres() {
    let pg = PgDatabase::create().await;
    stalled_clears_once_a_workspace_is_no_longer_refused(&pg.url).await;
}
