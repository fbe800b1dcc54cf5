//! The database adapter on both engines: SQLite (embedded default) and PostgreSQL (a fresh
//! database per test).

use cplane_e2e::pg::{sqlite_url, PgDatabase};
use cplane_reconciler::db::{Condition, Db};
use cplane_reconciler::plan::{
    DesiredWorkspace, JournalState, LookupRow, Policy, Scope, Status, StepKind, StepResult,
    TenantRow,
};
use cplane_reconciler::render::{Cluster, ClusterKind};

fn acme() -> DesiredWorkspace {
    DesiredWorkspace {
        id: "acme".into(),
        region: "sgp-1".into(),
        environment: "prod".into(),
        account: "acme-corp".into(),
        aws_account_id: "111111111111".into(),
        aws_region: "ap-southeast-1".into(),
        role_arn: "arn:aws:iam::111111111111:role/p".into(),
        external_id: "ext-1".into(),
        zone_name: "w-acme.sgp-1.cogrion.com".into(),
        parent_zone: "sgp-1.cogrion.com".into(),
        bff_url: "https://bff.w-acme.sgp-1.cogrion.com".into(),
        deletion_policy: Policy::Delete,
    }
}

async fn round_trip(url: &str) {
    let db = Db::connect(url).await.expect("connect + migrate");
    // Migrations are idempotent: connecting again is fine.
    let db2 = Db::connect(url).await.expect("second connect");
    drop(db2);

    let w = acme();
    db.write_workspace(&w, 1, Status::Provisioning, "c1")
        .await
        .expect("write");
    db.write_workspace(&w, 1, Status::Active, "c2")
        .await
        .expect("upsert");
    db.write_tenant(&TenantRow {
        workspace_id: "w-acme".into(),
        region: "sgp-1".into(),
        delegated_zone: w.zone_name.clone(),
        status: "active".into(),
        bff_url: w.bff_url.clone(),
    })
    .await
    .expect("tenant");
    db.write_lookup(
        "acme",
        &LookupRow {
            region: "sgp-1".into(),
            bff_url: w.bff_url.clone(),
        },
    )
    .await
    .expect("lookup");

    assert_eq!(
        db.journal_begin("acme", StepKind::CreateZone, "cplane/sgp-1/w-acme/g1")
            .await
            .expect("begin"),
        1
    );
    // A second begin without done: the first attempt's outcome is unknown.
    assert_eq!(
        db.journal_begin("acme", StepKind::CreateZone, "cplane/sgp-1/w-acme/g1")
            .await
            .expect("begin"),
        2
    );
    let zone = StepResult::CreateZone {
        zone_id: "Z1".into(),
        name_servers: vec!["a".into(), "b".into()],
    };
    db.journal_done("acme", &zone).await.expect("done");
    db.journal_begin("acme", StepKind::RequestCertificate, "tok")
        .await
        .expect("begin");
    db.journal_failed("acme", StepKind::RequestCertificate, "throttled")
        .await
        .expect("failed");

    let observed = db.observe(&Scope::all()).await.expect("observe");
    let row = &observed.workspaces["acme"];
    assert_eq!(row.applied, w);
    assert_eq!(row.status, Status::Active);
    assert_eq!(row.generation, 1);
    assert_eq!(observed.tenants["acme"].status, "active");
    assert_eq!(observed.lookup["acme"].region, "sgp-1");
    assert_eq!(
        observed.journal[&("acme".to_owned(), StepKind::CreateZone)].state,
        JournalState::Done
    );
    assert_eq!(
        observed.journal[&("acme".to_owned(), StepKind::RequestCertificate)].state,
        JournalState::Failed
    );
    assert_eq!(
        db.journal_result("acme", StepKind::CreateZone)
            .await
            .expect("result"),
        Some(zone.clone())
    );
    assert_eq!(
        observed.journal[&("acme".to_owned(), StepKind::CreateZone)].result,
        Some(zone)
    );
    // Scoped observation: by region, and by environment (with everything that hangs off the
    // workspace: tenants row, lookup, journal).
    let scope = |regions: &[&str], environments: &[&str]| Scope {
        regions: regions.iter().map(|r| (*r).to_owned()).collect(),
        environments: environments.iter().map(|e| (*e).to_owned()).collect(),
    };
    assert!(db
        .observe(&scope(&["fra-1"], &[]))
        .await
        .expect("observe")
        .workspaces
        .is_empty());
    let other_env = db
        .observe(&scope(&["sgp-1"], &["dev"]))
        .await
        .expect("observe");
    assert!(other_env.workspaces.is_empty() && other_env.tenants.is_empty());
    assert!(other_env.lookup.is_empty() && other_env.journal.is_empty());
    let own_env = db
        .observe(&scope(&["sgp-1"], &["prod"]))
        .await
        .expect("observe");
    assert_eq!(own_env.workspaces.len(), 1);
    assert!(!own_env.journal.is_empty());
    assert!(db
        .observe_only(&["acme".to_owned()], &scope(&[], &["dev"]))
        .await
        .expect("observe only")
        .workspaces
        .is_empty());

    db.delete_lookup("acme").await.expect("delete lookup");
    db.clear_journal("acme").await.expect("clear");
    let observed = db.observe(&Scope::all()).await.expect("observe");
    assert!(observed.lookup.is_empty());
    assert!(observed.journal.is_empty());

    // Bundles: content-addressed, generation bumps only on change.
    let c = Cluster {
        id: "w-acme".into(),
        kind: ClusterKind::Tenant,
        region: "sgp-1".into(),
        environment: "prod".into(),
        workspace: Some("acme".into()),
    };
    assert_eq!(
        db.publish_bundle(&c, "sha256:a", "{}\n")
            .await
            .expect("publish"),
        1
    );
    assert_eq!(
        db.publish_bundle(&c, "sha256:a", "{}\n")
            .await
            .expect("publish"),
        1
    );
    assert_eq!(
        db.publish_bundle(&c, "sha256:b", "{}\n{}\n")
            .await
            .expect("publish"),
        2
    );
    assert_eq!(
        db.cluster_digests().await.expect("digests")["w-acme"],
        "sha256:b"
    );

    db.set_condition(&Condition {
        kind: "workspace",
        id: "acme",
        condition: "Ready",
        status: false,
        reason: "Waiting",
        message: "certificate pending",
        commit: "c2",
    })
    .await
    .expect("cond");
    db.set_condition(&Condition {
        kind: "workspace",
        id: "acme",
        condition: "Ready",
        status: true,
        reason: "Reconciled",
        message: "ok",
        commit: "c3",
    })
    .await
    .expect("cond");
    let conds = db.conditions("workspace", "acme").await.expect("conds");
    assert_eq!(
        conds["Ready"],
        (true, "Reconciled".to_owned(), "ok".to_owned())
    );

    assert_eq!(db.applied_revision("*").await.expect("rev"), None);
    db.set_applied_revision("*", "c3").await.expect("set");
    db.set_applied_revision("*", "c4").await.expect("set");
    assert_eq!(
        db.applied_revision("*").await.expect("rev").as_deref(),
        Some("c4")
    );
    db.record_run(
        "r1",
        "c4",
        "*",
        &serde_json::json!({"steps": []}),
        "converged",
        &[],
        1,
        2,
    )
    .await
    .expect("run");
}

#[tokio::test]
async fn sqlite_schema_and_queries() {
    let (_dir, url) = sqlite_url();
    round_trip(&url).await;
}

#[tokio::test]
async fn postgres_schema_and_queries() {
    let pg = PgDatabase::create().await;
    round_trip(&pg.url).await;
}

#[tokio::test]
async fn bad_database_url_is_a_clear_error_without_credentials() {
    let err = Db::connect("postgres://admin:s3cret@127.0.0.1:1/x")
        .await
        .err()
        .expect("no server on port 1");
    let msg = err.to_string();
    assert!(
        msg.starts_with("connecting to postgres://…@127.0.0.1:1/x"),
        "{msg}"
    );
    assert!(!msg.contains("s3cret"), "{msg}");
}

async fn runs_are_kept_bounded(url: &str) {
    use cplane_reconciler::db::Retention;
    let db = Db::connect(url)
        .await
        .expect("connect")
        .with_retention(Retention {
            keep: 3,
            max_age: std::time::Duration::from_secs(3600),
            ..Retention::default()
        });
    let now = cplane_reconciler::db::now_ms();
    let plan = serde_json::json!(null);
    // Five runs of one scope, and one run of another scope two hours old.
    for i in 0..5 {
        db.record_run(
            &format!("r{i}"),
            &format!("c{i}"),
            "sgp-1",
            &plan,
            "converged",
            &[],
            now + i,
            1,
        )
        .await
        .expect("record");
    }
    let other = Db::connect(url).await.expect("connect");
    other
        .record_run(
            "old",
            "c",
            "fra-1",
            &plan,
            "refused",
            &["bad".into()],
            now - 2 * 3600 * 1000,
            1,
        )
        .await
        .expect("record");
    let kept: Vec<String> = db
        .runs("sgp-1", 100)
        .await
        .expect("runs")
        .into_iter()
        .map(|(id, ..)| id)
        .collect();
    assert_eq!(kept, ["r4", "r3", "r2"], "the newest three");
    // The other scope's run is pruned by age only when that scope records a run.
    assert_eq!(db.runs("fra-1", 100).await.expect("runs").len(), 1);
    db.record_run("new", "c", "fra-1", &plan, "converged", &[], now, 1)
        .await
        .expect("record");
    let fra = db.runs("fra-1", 100).await.expect("runs");
    assert_eq!(fra.len(), 1, "the two-hour-old run is past max_age");
    assert_eq!(fra[0].0, "new");
}

#[tokio::test]
async fn sqlite_keeps_runs_bounded() {
    let (_dir, url) = sqlite_url();
    runs_are_kept_bounded(&url).await;
}

#[tokio::test]
async fn postgres_keeps_runs_bounded() {
    let pg = PgDatabase::create().await;
    runs_are_kept_bounded(&pg.url).await;
}

/// A rollout of `stack` at `at` over `clusters` (each pending), created as the reconciler does
/// (superseding the active one).
async fn rollout(db: &Db, id: &str, stack: &str, at: i64, clusters: &[&str]) {
    use cplane_reconciler::db::{RolloutCluster, RolloutRow};
    let row = RolloutRow {
        id: id.into(),
        commit: format!("c-{id}"),
        stacks: vec![stack.into()],
        policy: serde_json::from_value(serde_json::json!({"waves": [{"name": "all"}]}))
            .expect("policy"),
        state: "progressing".into(),
        wave: 0,
        wave_started_at: at,
        gate_passed_at: None,
        reason: String::new(),
        created_at: at,
        updated_at: at,
    };
    let clusters: Vec<RolloutCluster> = clusters
        .iter()
        .map(|c| RolloutCluster {
            cluster: (*c).into(),
            kind: "tenant".into(),
            region: "sgp-1".into(),
            environment: "prod".into(),
            wave: 0,
            digest: format!("sha256:{id}"),
            state: "pending".into(),
            windows: Vec::new(),
            suspended: false,
            published_at: None,
            message: String::new(),
        })
        .collect();
    db.create_rollout(&row, &clusters).await.expect("create");
}

async fn finish(db: &Db, id: &str, to: &str) {
    assert!(db
        .move_rollout(
            id,
            ("progressing", 0),
            (to, 0),
            None,
            "",
            "cplane",
            (to, "")
        )
        .await
        .expect("move"));
}

async fn rollouts_are_kept_bounded(url: &str) {
    let db = Db::connect(url).await.expect("connect");
    // Stack a: superseded, completed, completed, active. Stack b: an aborted rollout whose
    // cluster a newer one took over, an aborted one still holding w-x back, two completed.
    rollout(&db, "a1", "a", 1, &["w-y"]).await;
    rollout(&db, "b0", "b", 2, &["w-y"]).await; // supersedes a1
    finish(&db, "b0", "aborted").await;
    rollout(&db, "b1", "b", 3, &["w-x"]).await;
    finish(&db, "b1", "aborted").await;
    rollout(&db, "a2", "a", 4, &["w-z"]).await;
    finish(&db, "a2", "completed").await;
    rollout(&db, "b2", "b", 5, &["w-y"]).await;
    finish(&db, "b2", "completed").await;
    rollout(&db, "a3", "a", 6, &["w-z"]).await;
    finish(&db, "a3", "completed").await;
    rollout(&db, "b3", "b", 7, &["w-y"]).await;
    finish(&db, "b3", "completed").await;
    rollout(&db, "a4", "a", 8, &["w-z"]).await;
    let all: Vec<String> = db
        .rollouts(false, 100)
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(all.len(), 8, "{all:?}");

    assert_eq!(db.prune_rollouts(2).await.expect("prune"), 3);
    let mut left: Vec<String> = db
        .rollouts(false, 100)
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.id)
        .collect();
    left.sort();
    assert_eq!(left, ["a3", "a4", "b1", "b2", "b3"]);
    for gone in ["a1", "a2", "b0"] {
        assert!(db
            .rollout_clusters(gone, None)
            .await
            .expect("clusters")
            .is_empty());
        assert!(db.rollout_events(gone).await.expect("events").is_empty());
    }
    // The aborted rollout still decides w-x's bundle; pruning again deletes nothing.
    assert_eq!(
        db.rollout_targets().await.expect("targets").get("w-x"),
        Some(&"sha256:b1".to_owned())
    );
    assert_eq!(db.prune_rollouts(2).await.expect("prune"), 0);
    // Once a newer rollout covers w-x, the aborted one goes too.
    rollout(&db, "b4", "b", 9, &["w-x"]).await;
    assert_eq!(db.prune_rollouts(2).await.expect("prune"), 2, "b1 and b2");
}

#[tokio::test]
async fn sqlite_keeps_rollouts_bounded() {
    let (_dir, url) = sqlite_url();
    rollouts_are_kept_bounded(&url).await;
}

#[tokio::test]
async fn postgres_keeps_rollouts_bounded() {
    let pg = PgDatabase::create().await;
    rollouts_are_kept_bounded(&pg.url).await;
}
