//! AWS calls, counted at our proxy in front of moto: per provisioned workspace (a full
//! `reconcile::run` until converged) and per no-op drift check of N workspaces.
//!
//! `cargo bench -p cplane-reconciler --bench aws_calls` (env `CPLANE_BENCH_PROVISION`, default
//! 20 workspaces; `CPLANE_BENCH_DRIFT`, default 1000 delegations).
//!
//! Before/after, 2026-12-06 (issue 12 "Done when"): the tree at 78ab27a ("before") and after the
//! issue 12 sessions (e37b0da plus the validate work), release builds, each bench run in both
//! trees back to back; the machine was shared with other builds (load printed), so figures move
//! by tens of percent between runs of one tree.
//! - Counts, not times, so the load does not matter: 20 workspaces provisioned with 165 AWS
//!   calls (8.2 per workspace) before and after, by the same operations; a no-op drift check of
//!   1,000 workspaces costs 5 reads and 0 writes before and after.

// The tests' harness, shared; the bench uses only part of it.
#[allow(dead_code)]
#[path = "../../tests/src/fault_proxy.rs"]
mod fault_proxy;
#[allow(dead_code, unused_imports)] // the bench uses part of it; its unit tests are not built here
#[path = "../../tests/src/faults.rs"]
mod faults;
#[allow(dead_code)]
#[path = "../../tests/src/moto.rs"]
mod moto;
#[path = "../../tests/src/venv.rs"]
mod venv;

use std::collections::BTreeMap;
use std::sync::Arc;

use cplane_reconciler::aws::observe;
use cplane_reconciler::aws::{Aws, RecordSet, Target};
use cplane_reconciler::db::Db;
use cplane_reconciler::plan::{self, Options};
use cplane_reconciler::reconcile::{self, Request, RunResult};
use cplane_reconciler::{source, synthetic};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let provision = if quick {
        2
    } else {
        env_or("CPLANE_BENCH_PROVISION", 20)
    };
    let drift = if quick {
        10
    } else {
        env_or("CPLANE_BENCH_DRIFT", 1000)
    };
    let moto = moto::Moto::start();
    let proxy = fault_proxy::FaultProxy::start(&moto.endpoint).await;
    let aws = Aws::from_sdk_config(moto::Moto::sdk_config(&proxy.url).await);

    // 1. Provisioning: one region, `provision` workspaces, until converged.
    let dir = tempfile::tempdir().expect("tempdir");
    synthetic::generate(
        dir.path(),
        synthetic::Shape {
            workspaces: provision,
            regions: 1,
        },
    )
    .expect("generate");
    aws.create_zone(Target::Operator, "sgp-1.cogrion.com", "bench-parent")
        .await
        .expect("parent");
    let db = Db::connect(&format!("sqlite://{}", dir.path().join("b.db").display()))
        .await
        .expect("db");
    let repo = source::open(dir.path()).expect("open");
    proxy.reset_counts();
    let mut runs = 0;
    loop {
        runs += 1;
        let snapshot = source::read(&repo, "HEAD").expect("read");
        let request = Request {
            scope: plan::Scope::all(),
            options: Options::default(),
            dry_run: false,
            drift: cplane_reconciler::aws::observe::Sample::HOURLY,
            memo: None,
        };
        let RunResult::Planned { plan, report, .. } = reconcile::run(
            snapshot,
            &db,
            Some(aws.clone()),
            request,
            Arc::new(|_, _| {}),
        )
        .await
        .expect("run") else {
            panic!("refused");
        };
        use cplane_reconciler::status::{outcome, RunOutcome};
        match outcome(&plan, &report.expect("applied")) {
            RunOutcome::Converged => break,
            RunOutcome::Converging => {
                tokio::time::sleep(std::time::Duration::from_millis(700)).await
            }
            other => panic!("{other}"),
        }
        assert!(runs < 60, "no convergence");
    }
    let provisioning: BTreeMap<String, u64> = proxy.counts();
    let total: u64 = provisioning.values().sum();
    println!("provisioned {provision} workspaces in {runs} runs: {total} AWS calls = {:.1} per workspace", total as f64 / provision as f64);
    println!("  by operation: {provisioning:?}");

    // 2. No-op drift check over `drift` delegations in one parent zone.
    let parent = aws
        .create_zone(Target::Operator, "drift.cogrion.com", "bench-drift")
        .await
        .expect("parent")
        .id;
    let mut desired = BTreeMap::new();
    let model_ws = plan::desired_workspaces(
        &cplane_schema::load(source::read(&repo, "HEAD").expect("read").files)
            .into_valid()
            .expect("valid"),
        &plan::Scope::all(),
    );
    let template = model_ws.values().next().expect("one workspace").clone();
    let mut records = Vec::new();
    for i in 0..drift {
        let mut w = template.clone();
        w.id = format!("d{i:05}");
        w.zone_name = format!("w-d{i:05}.drift.cogrion.com");
        w.parent_zone = "drift.cogrion.com".into();
        records.push(RecordSet {
            name: w.zone_name.clone(),
            rtype: "NS".into(),
            ttl: 300,
            values: vec!["ns-1.example".into(), "ns-2.example".into()],
        });
        desired.insert(w.id.clone(), w);
    }
    for chunk in records.chunks(200) {
        aws.upsert_records(Target::Operator, &parent, chunk)
            .await
            .expect("seed delegations");
    }
    proxy.reset_counts();
    let before = proxy.mutations();
    let found = observe::delegations(&aws, &desired)
        .await
        .expect("drift check");
    assert_eq!(found.len(), drift);
    let reads = proxy.total();
    println!(
        "no-op drift check of {drift} workspaces: {reads} reads (goal <= {}), {} writes; {:?}",
        drift / 100 + 5,
        proxy.mutations() - before,
        proxy.counts()
    );
}
