//! Incremental re-planning from the git tree diff.

use cplane_e2e::pg::sqlite_url;
use cplane_reconciler::db::Db;
use cplane_reconciler::incremental::Incremental;
use cplane_reconciler::plan::{Action, Options};

#[tokio::test]
async fn one_workspace_commit_replans_only_that_workspace_and_bad_ones_are_refused() {
    let repo_dir = cplane_e2e::template_repo();
    let repo = git2::Repository::open(repo_dir.path()).expect("open");
    let (_db_dir, url) = sqlite_url();
    let db = Db::connect(&url).await.expect("db");
    let mut state = Incremental::cold(&repo, "HEAD", cplane_reconciler::plan::Scope::all())
        .expect("read")
        .expect("valid");
    let first = state.commit().to_owned();

    // Only acme changes.
    let acme = repo_dir.path().join("workspaces/acme.yaml");
    let text = std::fs::read_to_string(&acme).expect("read");
    std::fs::write(
        &acme,
        text.replace("externalId: acme-7f3c2a9e", "externalId: acme-rotated"),
    )
    .expect("write");
    cplane_e2e::commit_all(repo_dir.path(), "rotate acme's external id");
    let r = state
        .replan(&repo, "HEAD", &db, Options::default())
        .await
        .expect("replan");
    assert_eq!((r.mode, r.workspaces), ("incremental", 1));
    assert!(r.diagnostics.is_empty(), "{:?}", r.diagnostics);
    assert!(r.plan.steps.iter().all(|s| s.workspace == "acme"));
    assert!(
        matches!(r.plan.steps[1].action, Action::CreateZone { .. }),
        "empty database: full provisioning of acme"
    );
    assert_ne!(state.commit(), first);

    // A broken workspace is refused whole; the previous revision stays in force.
    let good = state.commit().to_owned();
    let text = std::fs::read_to_string(&acme).expect("read");
    std::fs::write(&acme, text.replace("region: sgp-1", "region: sgp-9")).expect("write");
    cplane_e2e::commit_all(repo_dir.path(), "break acme");
    let r = state
        .replan(&repo, "HEAD", &db, Options::default())
        .await
        .expect("replan");
    assert_eq!(
        r.diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["workspaces/acme.yaml:9:11: spec.region: region `sgp-9` does not exist (no regions/sgp-9.yaml)"]
    );
    assert!(r.plan.steps.is_empty());
    assert_eq!(state.commit(), good);
    assert_eq!(
        state.model().workspaces["acme"].doc.spec.region,
        "sgp-1",
        "the model in force is the last good one"
    );

    // A stack change is not confined to workspaces: full reload.
    let bff = repo_dir.path().join("stacks/bff/stack.yaml");
    let text = std::fs::read_to_string(&bff).expect("read");
    std::fs::write(&bff, text.replace("default: 2\n", "default: 3\n")).expect("write");
    std::fs::write(
        &acme,
        std::fs::read_to_string(&acme)
            .expect("read")
            .replace("region: sgp-9", "region: sgp-1"),
    )
    .expect("write");
    cplane_e2e::commit_all(repo_dir.path(), "bff: 3 replicas by default");
    let r = state
        .replan(&repo, "HEAD", &db, Options::default())
        .await
        .expect("replan");
    assert_eq!((r.mode, r.workspaces), ("full", 3));
    assert!(r.diagnostics.is_empty(), "{:?}", r.diagnostics);
}

#[tokio::test]
async fn an_incremental_refusal_reports_every_shape_error_of_the_file() {
    let repo_dir = cplane_e2e::template_repo();
    let repo = git2::Repository::open(repo_dir.path()).expect("open");
    let (_db_dir, url) = sqlite_url();
    let db = Db::connect(&url).await.expect("db");
    let mut state = Incremental::cold(&repo, "HEAD", cplane_reconciler::plan::Scope::all())
        .expect("read")
        .expect("valid");
    let acme = repo_dir.path().join("workspaces/acme.yaml");
    let text = std::fs::read_to_string(&acme).expect("read");
    std::fs::write(
        &acme,
        text.replace("  region: sgp-1", "  regoin: sgp-1").replace(
            "  deletionPolicy: Retain",
            "  deletionPolicy: Retain\n  colour: blue",
        ),
    )
    .expect("write");
    cplane_e2e::commit_all(repo_dir.path(), "two mistakes in acme");
    let r = state
        .replan(&repo, "HEAD", &db, Options::default())
        .await
        .expect("replan");
    assert_eq!(r.mode, "incremental");
    let errors: Vec<String> = r.diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].starts_with("workspaces/acme.yaml:9:3:")
            && errors[0].contains("unknown field `regoin`")
            && errors[0].contains("did you mean `region`?"),
        "{errors:#?}"
    );
    assert!(errors[1].contains("unknown field `colour`"), "{errors:#?}");
}
