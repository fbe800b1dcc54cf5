//! Re-plan after a one-file commit vs a cold plan, on a synthetic 10,000-workspace repo.
//!
//! `cargo bench -p cplane-reconciler --bench replan` (env `CPLANE_BENCH_WORKSPACES`, default
//! 10000). Cold plan = read the commit, load + validate + render every cluster, observe the
//! database, plan everything. Re-plan = tree diff, re-read/validate/render the one changed
//! workspace, observe and plan it. The database is SQLite, holding the 10,000 workspaces as
//! provisioned rows (written in one transaction before timing).
//!
//! Before/after, 2026-12-06 (issue 12 "Done when"): the tree at 78ab27a ("before") and after the
//! issue 12 sessions (e37b0da plus the validate work), release builds, each bench run in both
//! trees back to back; the machine was shared with other builds (load printed), so figures move
//! by tens of percent between runs of one tree.
//! - load 5.3-8.3: cold plan 1063 ms before, 1016 ms after; re-plan after a one-file commit
//!   11.9 ms (1.12 % of cold) before, 11.1 ms (1.09 %) after.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use cplane_reconciler::db::Db;
use cplane_reconciler::incremental::Incremental;
use cplane_reconciler::plan::{self, Options, Status};
use cplane_reconciler::synthetic;

use common::commit_all;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let workspaces: usize = if quick {
        30
    } else {
        std::env::var("CPLANE_BENCH_WORKSPACES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000)
    };
    let runs = if quick { 1 } else { 7 };
    let dir = tempfile::tempdir().expect("tempdir");
    synthetic::generate(
        dir.path(),
        synthetic::Shape {
            workspaces,
            regions: 4,
        },
    )
    .expect("generate");
    let _ = Command::new("git")
        .args(["repack", "-adq"])
        .current_dir(dir.path())
        .status();
    let repo = git2::Repository::open(dir.path()).expect("open");
    let db_path = dir.path().join("bench.db");
    let db = Db::connect(&format!("sqlite://{}", db_path.display()))
        .await
        .expect("db");

    // The database as after provisioning: every workspace row present and active.
    let state = Incremental::cold(&repo, "HEAD", plan::Scope::all())
        .expect("read")
        .expect("valid");
    let desired = plan::desired_workspaces(state.model(), &plan::Scope::all());
    sqlx::query("BEGIN")
        .execute(db.pool())
        .await
        .expect("begin");
    for w in desired.values() {
        db.write_workspace(w, 1, Status::Active, "bench")
            .await
            .expect("row");
    }
    sqlx::query("COMMIT")
        .execute(db.pool())
        .await
        .expect("commit");
    drop(state);

    let mut cold = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let mut state = Incremental::cold(&repo, "HEAD", plan::Scope::all())
            .expect("read")
            .expect("valid");
        let desired = plan::desired_workspaces(state.model(), &plan::Scope::all());
        let observed = db.observe(&plan::Scope::all()).await.expect("observe");
        let p = plan::plan(&desired, &observed, Options::default());
        cold.push(t.elapsed());
        assert!(!p.steps.is_empty());
        let _ = &mut state;
    }

    let mut state = Incremental::cold(&repo, "HEAD", plan::Scope::all())
        .expect("read")
        .expect("valid");
    let mut warm = Vec::new();
    for i in 0..runs {
        let path = dir.path().join("workspaces/ws00042.yaml");
        let text = std::fs::read_to_string(&path).expect("read");
        let text: String = text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("externalId:") {
                    format!("    externalId: ws00042-rotated-{i}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(&path, text).expect("write");
        commit_all(dir.path(), "rotate one external id");
        let t = Instant::now();
        let r = state
            .replan(&repo, "HEAD", &db, Options::default())
            .await
            .expect("replan");
        warm.push(t.elapsed());
        assert_eq!(
            (r.mode, r.workspaces),
            ("incremental", 1),
            "{:?}",
            r.diagnostics
        );
        assert!(r.diagnostics.is_empty());
    }
    let (c, w) = (median(cold), median(warm));
    println!("workspaces: {workspaces}");
    println!(
        "cold plan (read + validate + render all + observe + plan)   {:9.1} ms",
        c.as_secs_f64() * 1e3
    );
    println!(
        "re-plan after a one-file commit (incremental)              {:9.2} ms  = {:.3} % of cold",
        w.as_secs_f64() * 1e3,
        100.0 * w.as_secs_f64() / c.as_secs_f64()
    );
}
