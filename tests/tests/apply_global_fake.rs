//! Steps 8 and 9 (the global lookup entry, the Keycloak client) through the real reconcile
//! run against in-memory ports (`cplane_e2e::fake_global`, with `fake_cloud` for AWS) on
//! SQLite: provisioning exactly once, a crash or a lost answer at every one of their mutating
//! calls, drift repair, and removal by deletion policy. The adapters' own tests run against
//! the test Keycloak, the recording Workers KV server and moto (`apply_global_moto.rs`).

use std::sync::Arc;

use cplane_e2e::fake_cloud::FakeCloud;
use cplane_e2e::fake_global::FakeGlobal;
use cplane_reconciler::aws::observe::Sample;
use cplane_reconciler::cloud::{Cloud, Target};
use cplane_reconciler::db::Db;
use cplane_reconciler::global::{Identity, LookupSink};
use cplane_reconciler::plan::{Options, Plan, Scope};
use cplane_reconciler::reconcile::{self, GlobalPorts, Request, RunResult};
use cplane_reconciler::status::{self, RunOutcome};

/// What the template's cplane.yaml gets: Keycloak (realm `cogrion`) and a DynamoDB sink.
const CONFIG: &str = "  keycloak:
    url: http://127.0.0.1:9
    adminClientId: cplane
    adminClientSecret:
      env: CPLANE_TEST_KEYCLOAK_SECRET
  tenantLookup:
    dynamodb:
      table: tenant-region-map
";

const IDS: [(&str, &str); 3] = [
    ("acme", "w-acme.sgp-1.cogrion.com"),
    ("globex", "w-globex.sgp-1.cogrion.com"),
    ("initech", "w-initech.dev.sgp-1.cogrion.com"),
];

/// The template with steps 8 and 9 configured: (repo, that commit).
fn configured_repo() -> (Arc<tempfile::TempDir>, String) {
    let repo = cplane_e2e::template_repo();
    let path = repo.path().join("cplane.yaml");
    let mut text = std::fs::read_to_string(&path).expect("cplane.yaml");
    text.push_str(CONFIG);
    std::fs::write(&path, text).expect("write");
    let rev = cplane_e2e::commit_all(repo.path(), "configure keycloak and the lookup sink");
    (Arc::new(repo), rev)
}

struct Rig {
    cloud: Arc<FakeCloud>,
    global: Arc<FakeGlobal>,
    db: Db,
    repo: Arc<tempfile::TempDir>,
    rev: String,
}

impl Rig {
    async fn new(repo: &Arc<tempfile::TempDir>, rev: &str) -> Self {
        let cloud = Arc::new(FakeCloud::new().issue_after(0));
        cloud
            .create_zone(Target::Operator, "sgp-1.cogrion.com", "operator-parent")
            .await
            .expect("parent zone");
        Self {
            cloud,
            global: Arc::new(FakeGlobal::new()),
            db: Db::connect("sqlite::memory:").await.expect("database"),
            repo: repo.clone(),
            rev: rev.to_owned(),
        }
    }

    async fn run(&self, dry_run: bool) -> (Plan, RunOutcome, Vec<String>) {
        let snapshot = {
            let repo = git2::Repository::open(self.repo.path()).expect("repo");
            cplane_reconciler::source::read(&repo, &self.rev).expect("snapshot")
        };
        let request = Request {
            scope: Scope::all(),
            options: Options {
                confirmed: true,
                ..Options::default()
            },
            dry_run,
            drift: Sample::All,
            memo: None,
        };
        let cloud: Arc<dyn Cloud> = self.cloud.clone();
        let identity: Arc<dyn Identity> = self.global.clone();
        let lookup_sink: Arc<dyn LookupSink> = self.global.clone();
        let ports = GlobalPorts::Given {
            identity: Some(identity),
            lookup_sink: Some(lookup_sink),
        };
        match reconcile::run_ports(
            snapshot,
            &self.db,
            Some(cloud),
            ports,
            request,
            Arc::new(|_, _| {}),
        )
        .await
        .expect("run")
        {
            RunResult::Refused(errors) => panic!("refused: {errors:?}"),
            RunResult::Planned {
                plan,
                report,
                notes,
                ..
            } => {
                let outcome = report
                    .as_ref()
                    .map_or(RunOutcome::Converging, |r| status::outcome(&plan, r));
                let errors = report
                    .as_ref()
                    .map(|r| status::errors(&plan, r))
                    .unwrap_or_default();
                let mut info = notes;
                info.extend(errors);
                (plan, outcome, info)
            }
        }
    }

    async fn converge(&self) {
        for n in 1..=10 {
            let (_, outcome, info) = self.run(false).await;
            match outcome {
                RunOutcome::Converged => return,
                RunOutcome::Converging | RunOutcome::Failed if n < 10 => {}
                other => panic!("run {n}: {other}: {info:?}"),
            }
        }
        panic!("no convergence in 10 runs");
    }

    async fn assert_nothing_to_do(&self, what: &str) {
        let (plan, _, _) = self.run(true).await;
        assert!(plan.is_empty(), "{what}: planned again: {:#?}", plan.steps);
    }

    /// One enabled client per workspace with its redirect URIs, one entry per workspace.
    fn assert_steps_8_and_9_once(&self, what: &str, ids: &[(&str, &str)]) {
        let clients = self.global.clients("cogrion");
        assert_eq!(clients.len(), ids.len(), "{what}: {clients:#?}");
        for (id, zone) in ids {
            let named: Vec<_> = clients
                .iter()
                .filter(|(_, c)| c.client_id == format!("w-{id}"))
                .collect();
            assert_eq!(named.len(), 1, "{what}: one client w-{id}: {clients:#?}");
            assert_eq!(
                named[0].1.redirect_uris,
                [format!("https://*.{zone}/*")],
                "{what}"
            );
            assert!(named[0].1.enabled, "{what}");
            let entry = self.global.entries().get(&format!("w-{id}")).cloned();
            let entry = entry.unwrap_or_else(|| panic!("{what}: entry of w-{id}"));
            assert_eq!(entry.bff_url, format!("https://bff.{zone}"), "{what}");
            assert_eq!(entry.region, "sgp-1", "{what}");
        }
        assert_eq!(self.global.entries().len(), ids.len(), "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_8_and_9_run_once_then_nothing_is_planned() {
    let (repo, rev) = configured_repo();
    let rig = Rig::new(&repo, &rev).await;
    let (plan, outcome, info) = rig.run(false).await;
    assert_eq!(outcome, RunOutcome::Converged, "{info:?}");
    let acme: Vec<String> = plan
        .steps
        .iter()
        .filter(|s| s.workspace == "acme")
        .map(|s| s.action.to_string())
        .collect();
    assert!(
        acme.contains(
            &"dynamodb lookup entry -> sgp-1 https://bff.w-acme.sgp-1.cogrion.com".into()
        ) && acme.contains(&"keycloak client w-acme in realm cogrion".into()),
        "{acme:#?}"
    );
    rig.assert_steps_8_and_9_once("first run", &IDS);
    // Workspaces run concurrently: each one's calls in order, six in all.
    let log = rig.global.mutation_log();
    assert_eq!(log.len(), 6, "{log:#?}");
    for (id, _) in IDS {
        let own: Vec<&String> = log
            .iter()
            .filter(|l| l.ends_with(&format!(" w-{id}")))
            .collect();
        assert_eq!(
            own,
            [
                &format!("sink:put w-{id}"),
                &format!("keycloak:create w-{id}")
            ],
            "step 8, then step 9"
        );
    }
    rig.global.reset_counts();
    rig.assert_nothing_to_do("second run").await;
    let (_, outcome, _) = rig.run(false).await;
    assert_eq!(outcome, RunOutcome::Converged);
    assert!(rig.global.mutation_log().is_empty(), "no writes");
    let calls = rig.global.calls();
    assert_eq!(
        (calls.get("sink:batch_get"), calls.get("keycloak:list")),
        (Some(&2), Some(&2)),
        "the drift check reads the sink in one batch and the realm in one listing per run: {calls:?}"
    );
}

/// The mutating calls of provisioning the configured template from scratch.
async fn provisioning_calls(repo: &Arc<tempfile::TempDir>, rev: &str) -> Vec<String> {
    let rig = Rig::new(repo, rev).await;
    rig.converge().await;
    rig.global.mutation_log()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_or_lost_answer_at_every_call_of_steps_8_and_9_never_duplicates() {
    let (repo, rev) = configured_repo();
    let calls = provisioning_calls(&repo, &rev).await;
    assert_eq!(calls.len(), 6, "{calls:#?}");
    for call in &calls {
        for crash in [true, false] {
            let what = format!("{} at {call}", if crash { "crash" } else { "lost answer" });
            let rig = Rig::new(&repo, &rev).await;
            if crash {
                rig.global.crash_at(call);
            } else {
                rig.global.lose_answer(call);
            }
            let (_, outcome, _) = rig.run(false).await;
            assert!(rig.global.fault_fired(), "{what}: the call came");
            assert_eq!(outcome, RunOutcome::Failed, "{what}");
            rig.global.heal();
            rig.converge().await;
            rig.assert_steps_8_and_9_once(&what, &IDS);
            rig.assert_nothing_to_do(&what).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_entry_and_an_edited_or_deleted_client_are_restored() {
    let (repo, rev) = configured_repo();
    let rig = Rig::new(&repo, &rev).await;
    rig.converge().await;
    assert!(rig.global.remove_entry("w-globex"));
    assert!(rig
        .global
        .edit_redirects("cogrion", "w-acme", &["https://evil.example/*"]));
    assert!(rig.global.remove_client("cogrion", "w-initech"));
    let (plan, outcome, info) = rig.run(false).await;
    assert_eq!(outcome, RunOutcome::Converged, "{info:?}");
    let repairs: Vec<String> = plan
        .steps
        .iter()
        .map(|s| format!("{}: {} [{}]", s.workspace, s.action, s.reason))
        .collect();
    assert_eq!(
        repairs,
        [
            "acme: keycloak client w-acme in realm cogrion (drift: restore) [drift: keycloak client edited]",
            "globex: dynamodb lookup entry -> sgp-1 https://bff.w-globex.sgp-1.cogrion.com (drift: restore) [drift: global lookup entry missing]",
            "initech: keycloak client w-initech in realm cogrion (drift: restore) [drift: keycloak client missing]",
        ]
    );
    rig.assert_steps_8_and_9_once("repaired", &IDS);
    rig.assert_nothing_to_do("repaired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_unpublishes_and_deletes_or_disables_the_client_even_after_a_crash() {
    let (repo, first) = configured_repo();
    std::fs::remove_file(repo.path().join("workspaces/initech.yaml")).expect("rm");
    std::fs::remove_file(repo.path().join("workspaces/acme.yaml")).expect("rm");
    let second = cplane_e2e::commit_all(repo.path(), "offboard initech and acme");
    let calls = {
        let mut rig = Rig::new(&repo, &first).await;
        rig.converge().await;
        rig.global.reset_counts();
        rig.rev = second.clone();
        rig.converge().await;
        rig.global.mutation_log()
    };
    // initech (Delete): entry, client deleted; acme (Retain): entry, client disabled.
    assert_eq!(calls.len(), 4, "{calls:#?}");
    for call in calls.iter().map(Some).chain([None]) {
        let what = format!("crash at {call:?}");
        let mut rig = Rig::new(&repo, &first).await;
        rig.converge().await;
        rig.rev = second.clone();
        if let Some(call) = call {
            rig.global.crash_at(call);
            rig.run(false).await;
            assert!(rig.global.fault_fired(), "{what}");
            rig.global.heal();
        }
        rig.converge().await;
        let clients = rig.global.clients("cogrion");
        let find = |id: &str| {
            clients
                .iter()
                .filter(|(_, c)| c.client_id == id)
                .map(|(_, c)| c.enabled)
                .collect::<Vec<_>>()
        };
        assert_eq!(find("w-initech"), [] as [bool; 0], "{what}: deleted");
        assert_eq!(find("w-acme"), [false], "{what}: kept, disabled");
        assert_eq!(find("w-globex"), [true], "{what}");
        assert_eq!(
            rig.global.entries().keys().collect::<Vec<_>>(),
            ["w-globex"],
            "{what}"
        );
        rig.assert_nothing_to_do(&what).await;
    }
    // acme comes back: its client is enabled again, its entry written.
    let mut rig = Rig::new(&repo, &first).await;
    rig.converge().await;
    rig.rev = second.clone();
    rig.converge().await;
    rig.rev = first;
    rig.converge().await;
    let acme: Vec<_> = rig
        .global
        .clients("cogrion")
        .into_iter()
        .filter(|(_, c)| c.client_id == "w-acme")
        .collect();
    assert_eq!(acme.len(), 1);
    assert!(acme[0].1.enabled, "re-enabled");
    assert!(rig.global.entries().contains_key("w-acme"));
    rig.assert_nothing_to_do("acme back").await;
}

/// A workspace added by a commit that touches only `workspaces/` is planned incrementally by
/// `cplane serve`: it gets steps 8 and 9 in that run, not at the next full one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_added_by_an_incremental_commit_gets_steps_8_and_9() {
    use cplane_reconciler::incremental::{Incremental, Prepared};
    use cplane_reconciler::plan::Action;
    let (repo, rev) = configured_repo();
    let git = git2::Repository::open(repo.path()).expect("repo");
    let mut state = Incremental::cold(&git, &rev, Scope::all())
        .expect("read")
        .expect("valid");
    let text = std::fs::read_to_string(repo.path().join("workspaces/globex.yaml")).expect("globex");
    std::fs::write(
        repo.path().join("workspaces/hooli.yaml"),
        text.replace("name: globex", "name: hooli")
            .replace("externalId: globex", "externalId: hooli"),
    )
    .expect("write hooli");
    cplane_e2e::commit_all(repo.path(), "add hooli");
    let Prepared::Staged(staged) = state.prepare(&git, "HEAD").expect("prepare") else {
        panic!("a workspaces-only commit is incremental");
    };
    let global = Arc::new(FakeGlobal::new());
    let identity: Arc<dyn Identity> = global.clone();
    let lookup_sink: Arc<dyn LookupSink> = global.clone();
    let mut notes = Vec::new();
    let ports = reconcile::global_ports(
        state.model(),
        GlobalPorts::Given {
            identity: Some(identity),
            lookup_sink: Some(lookup_sink),
        },
        &mut notes,
    );
    assert!(notes.is_empty(), "{notes:?}");
    let db = Db::connect("sqlite::memory:").await.expect("database");
    let r = state
        .finish(staged, &db, Options::default(), &ports)
        .await
        .expect("finish");
    assert_eq!((r.mode, r.workspaces), ("incremental", 1));
    let hooli: Vec<&Action> = r
        .plan
        .steps
        .iter()
        .filter(|s| s.workspace == "hooli")
        .map(|s| &s.action)
        .collect();
    assert!(
        hooli
            .iter()
            .any(|a| matches!(a, Action::PublishLookup { .. })),
        "step 8 planned: {hooli:#?}"
    );
    assert!(
        hooli
            .iter()
            .any(|a| matches!(a, Action::EnsureIdentityClient { .. })),
        "step 9 planned: {hooli:#?}"
    );
    // Without the ports (no cloud), neither is planned, as in a full run.
    let mut again = Incremental::cold(&git, &rev, Scope::all())
        .expect("read")
        .expect("valid");
    let Prepared::Staged(staged) = again.prepare(&git, "HEAD").expect("prepare") else {
        panic!("incremental");
    };
    let r = again
        .finish(
            staged,
            &db,
            Options::default(),
            &reconcile::Ports::default(),
        )
        .await
        .expect("finish");
    assert!(r.plan.steps.iter().all(|s| !matches!(
        s.action,
        Action::PublishLookup { .. } | Action::EnsureIdentityClient { .. }
    )));
}
