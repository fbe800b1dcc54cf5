//! The driver's gate judging against real databases (SQLite and PostgreSQL): a gate passes with
//! its wave's last report and not before, a report judged open and then failing fails it, a
//! cluster judged done stays done, and a driver that forgot what it judged (a restart, another
//! replica) reaches the same verdicts.

use super::*;
use crate::db::test_support::{sqlite, with_postgres};
use crate::db::ClusterReport;

const OLD: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

/// A rollout of clusters `c1`..`c3` (wave `first`) and `c4` (wave `second`), each brought
/// `digest(i)`, every cluster first pointed at `OLD`.
async fn rollout(db: &Db, health_timeout: &str) -> String {
    let clusters = ["c1", "c2", "c3", "c4"];
    let pointed: Vec<_> = clusters
        .iter()
        .map(|c| (*c, "tenant", "sgp-1", "prod", OLD))
        .collect();
    db.point_clusters(&pointed).await.expect("point");
    let wave = |name: &str| cplane_schema::rollout::Wave {
        name: name.into(),
        ids: Vec::new(),
        labels: BTreeMap::new(),
        count: None,
        percent: None,
    };
    let row = RolloutRow {
        id: "r-1-abc".into(),
        commit: "abc".into(),
        stacks: vec!["bff".into()],
        policy: RolloutPolicy {
            waves: vec![wave("first"), wave("second")],
            max_unavailable: None,
            health_timeout: health_timeout.into(),
            bake_time: "0s".into(),
            on_failure: Default::default(),
        },
        state: "progressing".into(),
        wave: 0,
        wave_started_at: 1,
        gate_passed_at: None,
        reason: String::new(),
        created_at: 1,
        updated_at: 1,
    };
    let members: Vec<RolloutCluster> = clusters
        .iter()
        .zip(1u8..)
        .map(|(c, i)| RolloutCluster {
            cluster: (*c).into(),
            kind: "tenant".into(),
            region: "sgp-1".into(),
            environment: "prod".into(),
            wave: i64::from(i == 4),
            digest: digest(i),
            state: "pending".into(),
            windows: Vec::new(),
            suspended: false,
            published_at: None,
            message: String::new(),
        })
        .collect();
    db.create_rollout(&row, &members).await.expect("rollout");
    row.id
}

/// `cluster`'s agent reports `digest(i)` applied: healthy, or with its one object `result`
/// (`configured`, `failed`) and `health`.
async fn report(db: &Db, cluster: &str, i: u8, result: &str, health: &str) {
    let report = ClusterReport {
        digest: digest(i),
        generation: 2,
        healthy: result != "failed" && health == "Healthy",
        message: String::new(),
        objects: serde_json::json!([{
            "kind": "ConfigMap", "namespace": "bff", "name": "settings",
            "result": result, "message": if result == "failed" { "admission denied" } else { "" },
            "health": health,
        }]),
        agent_version: String::new(),
    };
    db.report_cluster_status(cluster, &report)
        .await
        .expect("report");
    // Reports are told apart by their time (milliseconds).
    tokio::time::sleep(Duration::from_millis(3)).await;
}

async fn states(db: &Db, id: &str) -> Vec<(String, String)> {
    db.rollout_clusters(id, None)
        .await
        .expect("clusters")
        .into_iter()
        .map(|c| (c.cluster, c.state))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

async fn head(db: &Db, cluster: &str) -> String {
    db.cluster_heads(Some(cluster)).await.expect("heads")[0]
        .1
        .clone()
}

async fn gate_passes_with_the_last_report(db: Db) {
    let id = rollout(&db, "15m").await;
    let mut judged = Judged::default();
    let now = crate::db::now_ms();
    let done = advance_remembering(&db, now, &mut judged)
        .await
        .expect("advance");
    assert_eq!(done.published, ["c1", "c2", "c3"]);
    assert_eq!(head(&db, "c1").await, digest(1));

    report(&db, "c1", 1, "configured", "Healthy").await;
    // Applied, not healthy yet: still open, its objects read once.
    report(&db, "c2", 2, "configured", "Progressing").await;
    // An older bundle's report does not count.
    report(&db, "c3", 9, "configured", "Healthy").await;
    for _ in 0..2 {
        let done = advance_remembering(&db, now, &mut judged)
            .await
            .expect("advance");
        assert!(done.gates_passed.is_empty() && done.published.is_empty());
    }
    assert_eq!(
        states(&db, &id).await,
        pairs(&[
            ("c1", "done"),
            ("c2", "published"),
            ("c3", "published"),
            ("c4", "pending")
        ])
    );
    assert_eq!(judged.wave(&id, 0).keys().collect::<Vec<_>>(), ["c2"]);

    // Counted done, then failing: done stays done (the gate judged that report).
    report(&db, "c1", 1, "failed", "Healthy").await;
    report(&db, "c2", 2, "configured", "Healthy").await;
    let done = advance_remembering(&db, now, &mut judged)
        .await
        .expect("advance");
    assert!(done.gates_passed.is_empty(), "c3 has not reported");
    assert_eq!(head(&db, "c4").await, OLD, "the next wave waits");

    // The wave's last report passes the gate and publishes the next wave in the same move.
    report(&db, "c3", 3, "configured", "Healthy").await;
    let done = advance_remembering(&db, now, &mut judged)
        .await
        .expect("advance");
    assert_eq!(done.gates_passed, [(id.clone(), 0)]);
    assert_eq!(done.published, ["c4"]);
    assert_eq!(head(&db, "c4").await, digest(4));
    assert!(
        judged.wave(&id, 1).is_empty(),
        "the first wave's is forgotten"
    );

    report(&db, "c4", 4, "configured", "Healthy").await;
    let done = advance_remembering(&db, now, &mut judged)
        .await
        .expect("advance");
    assert_eq!(done.gates_passed, [(id.clone(), 1)]);
    let r = db.rollout(&id).await.expect("rollout").expect("exists");
    assert_eq!(r.state, "completed");
    assert_eq!(
        states(&db, &id).await,
        pairs(&[
            ("c1", "done"),
            ("c2", "done"),
            ("c3", "done"),
            ("c4", "done")
        ])
    );
}

async fn report_judged_open_then_failing_fails_the_gate(db: Db) {
    let id = rollout(&db, "1m").await;
    let mut judged = Judged::default();
    let now = crate::db::now_ms();
    advance_remembering(&db, now, &mut judged)
        .await
        .expect("advance");
    report(&db, "c1", 1, "configured", "Healthy").await;
    report(&db, "c2", 2, "configured", "Progressing").await;
    report(&db, "c3", 3, "configured", "Progressing").await;
    advance_remembering(&db, now, &mut judged)
        .await
        .expect("advance");
    assert_eq!(judged.wave(&id, 0).len(), 2, "c2 and c3 judged open");

    // A new report of the same digest, now with an object failed: read despite the memory.
    report(&db, "c2", 2, "failed", "Healthy").await;
    let done = advance_remembering(&db, now, &mut judged)
        .await
        .expect("advance");
    assert!(done.gates_passed.is_empty());
    let r = db.rollout(&id).await.expect("rollout").expect("exists");
    assert_eq!(r.state, "paused");
    assert_eq!(
        r.reason,
        "gate of wave first failed: c2: ConfigMap/bff/settings: admission denied"
    );
    assert_eq!(
        head(&db, "c4").await,
        OLD,
        "a failed gate publishes nothing more"
    );

    // Resumed, c2 gets a fresh gate; a driver that remembers nothing (a restart, another
    // replica) judges the timeouts: c3 applied but never healthy, its object named.
    control(&db, &id, Control::Resume, "ops@example.com")
        .await
        .expect("resume");
    report(&db, "c2", 2, "configured", "Healthy").await;
    let later = crate::db::now_ms() + 61_000;
    let done = advance(&db, later).await.expect("advance");
    assert!(done.gates_passed.is_empty());
    let r = db.rollout(&id).await.expect("rollout").expect("exists");
    assert_eq!(r.state, "paused");
    assert_eq!(
        r.reason,
        "gate of wave first failed: c3: ConfigMap/bff/settings: "
    );
    assert_eq!(
        states(&db, &id).await,
        pairs(&[
            ("c1", "done"),
            ("c2", "done"),
            ("c3", "failed"),
            ("c4", "pending")
        ])
    );
}

#[tokio::test]
async fn gate_passes_with_the_last_report_sqlite() {
    let (_dir, db) = sqlite().await;
    gate_passes_with_the_last_report(db).await;
}

#[tokio::test]
async fn gate_passes_with_the_last_report_postgres() {
    with_postgres(gate_passes_with_the_last_report).await;
}

#[tokio::test]
async fn report_judged_open_then_failing_fails_the_gate_sqlite() {
    let (_dir, db) = sqlite().await;
    report_judged_open_then_failing_fails_the_gate(db).await;
}

#[tokio::test]
async fn report_judged_open_then_failing_fails_the_gate_postgres() {
    with_postgres(report_judged_open_then_failing_fails_the_gate).await;
}
