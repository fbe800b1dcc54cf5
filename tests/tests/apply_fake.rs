//! Apply against the in-memory cloud (`cplane_e2e::fake_cloud`): the real reconcile run
//! (`reconcile::run_with`: git snapshot → validate → observe database and cloud → plan → apply →
//! status) on SQLite, with the cloud's answers lost at every mutating call, and a property test:
//! over generated workspace histories with drift, after each apply, observing and planning again
//! finds nothing to do. Milliseconds per run, where the moto tests (`apply_moto.rs`) take seconds.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cplane_e2e::fake_cloud::{FakeCloud, Trigger, OPERATOR};
use cplane_reconciler::apply::Report;
use cplane_reconciler::aws::observe::Sample;
use cplane_reconciler::check::RenderMemo;
use cplane_reconciler::cloud::{Cloud, Target};
use cplane_reconciler::db::Db;
use cplane_reconciler::plan::{Options, Plan, Scope, Status};
use cplane_reconciler::reconcile::{self, Request, RunResult};
use cplane_reconciler::status::{self, RunOutcome};
use proptest::prelude::*;

const PARENT: &str = "sgp-1.cogrion.com";

/// The template's workspaces: (id, tenant account, zone).
const TEMPLATE: [(&str, &str, &str); 3] = [
    ("acme", "111111111111", "w-acme.sgp-1.cogrion.com"),
    ("globex", "222222222222", "w-globex.sgp-1.cogrion.com"),
    ("initech", "333333333333", "w-initech.dev.sgp-1.cogrion.com"),
];

/// A state repo, a database and a cloud holding the region's parent zone.
struct Rig {
    cloud: Arc<FakeCloud>,
    db: Db,
    repo: Arc<tempfile::TempDir>,
    rev: String,
    parent: String,
    memo: Arc<Mutex<RenderMemo>>,
    /// Planning options of every run (deletions confirmed).
    options: Options,
}

impl Rig {
    /// A fresh database and cloud for the revision `rev` of `repo` (shared between rigs: only
    /// the property test commits to its own).
    async fn new(cloud: FakeCloud, repo: &Arc<tempfile::TempDir>, rev: &str) -> Self {
        let cloud = Arc::new(cloud);
        let parent = cloud
            .create_zone(Target::Operator, PARENT, "operator-parent")
            .await
            .expect("parent zone")
            .id;
        cloud.reset_counts();
        let db = Db::connect("sqlite::memory:").await.expect("database");
        Self {
            cloud,
            db,
            repo: repo.clone(),
            rev: rev.to_owned(),
            parent,
            memo: Arc::default(),
            options: Options {
                confirmed: true,
                ..Options::default()
            },
        }
    }

    /// One reconcile of HEAD; `(plan, report, outcome)` (no report on a dry run).
    async fn run(&self, dry_run: bool) -> (Plan, Option<Report>, RunOutcome) {
        let snapshot = {
            let repo = git2::Repository::open(self.repo.path()).expect("repo");
            cplane_reconciler::source::read(&repo, &self.rev).expect("snapshot")
        };
        let request = Request {
            scope: Scope::all(),
            options: self.options,
            dry_run,
            drift: Sample::All,
            // Clusters whose inputs did not change are not rendered again (as in `serve`).
            memo: Some(self.memo.clone()),
        };
        let cloud: Arc<dyn Cloud> = self.cloud.clone();
        match reconcile::run_with(
            snapshot,
            &self.db,
            Some(cloud),
            request,
            Arc::new(|_, _| {}),
        )
        .await
        .expect("run")
        {
            RunResult::Refused(errors) => panic!("revision refused: {errors:?}"),
            RunResult::Planned { plan, report, .. } => {
                let outcome = report
                    .as_ref()
                    .map_or(RunOutcome::Converging, |r| status::outcome(&plan, r));
                (plan, report, outcome)
            }
        }
    }

    /// Applies until converged (at most 10 runs); every run after the first must not fail.
    async fn converge(&self, first_may_fail: bool) -> usize {
        for n in 1..=10 {
            let (plan, report, outcome) = self.run(false).await;
            match outcome {
                RunOutcome::Converged => return n,
                RunOutcome::Converging => {}
                RunOutcome::Failed if first_may_fail && n == 1 => {}
                other => panic!(
                    "run {n}: {other}: {:?}",
                    status::errors(&plan, &report.expect("applied"))
                ),
            }
        }
        panic!("no convergence in 10 runs")
    }

    /// The zones named `zone` in `account`.
    fn zones(&self, account: &str, zone: &str) -> Vec<cplane_reconciler::cloud::HostedZone> {
        self.cloud
            .zones(account)
            .into_iter()
            .filter(|z| z.name == zone)
            .collect()
    }

    /// The NS delegation of `zone` in the parent zone.
    fn delegation(&self, zone: &str) -> Option<Vec<String>> {
        self.cloud
            .records(&self.parent)
            .into_iter()
            .find(|r| r.name == zone && r.rtype == "NS")
            .map(|r| r.values)
    }

    /// The certificates for `*.zone` in `account`: (status, tags).
    fn certificates(&self, account: &str, zone: &str) -> Vec<(String, Vec<(String, String)>)> {
        let domain = format!("*.{zone}");
        self.cloud
            .certificates(account)
            .into_iter()
            .filter(|c| c.domain == domain)
            .map(|c| (c.status, c.tags))
            .collect()
    }

    /// Exactly one zone (in the tenant account, none in the operator's), one delegation to its
    /// name servers and one ISSUED certificate of generation `generation` for `zone`.
    fn assert_provisioned_once(&self, what: &str, account: &str, zone: &str, generation: i64) {
        let zones = self.zones(account, zone);
        assert_eq!(
            zones.len(),
            1,
            "{what}: one zone {zone} in {account}: {zones:?}"
        );
        assert!(
            self.zones(OPERATOR, zone).is_empty(),
            "{what}: no zone {zone} in the operator account"
        );
        assert_eq!(
            self.delegation(zone).as_ref(),
            Some(&zones[0].name_servers),
            "{what}: the delegation of {zone} points at its name servers"
        );
        let certs = self.certificates(account, zone);
        assert_eq!(
            certs.len(),
            1,
            "{what}: one certificate for {zone}: {certs:?}"
        );
        assert_eq!(certs[0].0, "ISSUED", "{what}: {zone}");
        let id = zone
            .trim_start_matches("w-")
            .split('.')
            .next()
            .expect("an id");
        assert!(
            certs[0]
                .1
                .contains(&("cplane:workspace".into(), format!("w-{id}/g{generation}"))),
            "{what}: owner tag of generation {generation}: {:?}",
            certs[0].1
        );
    }

    /// Nothing of `zone` is left: no zone, no delegation, no certificate.
    fn assert_gone(&self, what: &str, account: &str, zone: &str) {
        assert!(
            self.zones(account, zone).is_empty(),
            "{what}: zone {zone} deleted"
        );
        assert_eq!(
            self.delegation(zone),
            None,
            "{what}: no dangling delegation of {zone}"
        );
        assert!(
            self.certificates(account, zone).is_empty(),
            "{what}: certificate of {zone} deleted"
        );
    }

    /// A workspace removed with `Retain`: its zone and certificate stay in the tenant account,
    /// its delegation in the operator's parent zone is gone.
    fn assert_retained(&self, what: &str, account: &str, zone: &str) {
        assert_eq!(
            self.zones(account, zone).len(),
            1,
            "{what}: zone {zone} kept"
        );
        assert_eq!(
            self.certificates(account, zone).len(),
            1,
            "{what}: certificate of {zone} kept"
        );
        assert_eq!(
            self.delegation(zone),
            None,
            "{what}: no dangling delegation of retained {zone}"
        );
    }

    /// The template's three workspaces, provisioned once, with their rows.
    async fn assert_template_provisioned(&self, what: &str) {
        for (id, account, zone) in TEMPLATE {
            self.assert_provisioned_once(&format!("{what}, {id}"), account, zone, 1);
            assert_eq!(
                self.cloud.zones(account).len(),
                1,
                "{what}: {id}: no other zone"
            );
            assert_eq!(
                self.cloud.certificates(account).len(),
                1,
                "{what}: {id}: no other certificate"
            );
        }
        let observed = self.db.observe(&Scope::all()).await.expect("observe");
        assert_eq!(observed.tenants.len(), 3, "{what}: tenants rows");
        assert!(
            observed.tenants.values().all(|t| t.status == "active"),
            "{what}: {:?}",
            observed.tenants
        );
        assert_eq!(observed.lookup.len(), 3, "{what}: lookup entries");
        assert!(
            observed
                .workspaces
                .values()
                .all(|w| w.status == Status::Active),
            "{what}: workspaces active"
        );
    }

    /// A dry run plans nothing.
    async fn assert_nothing_to_do(&self, what: &str) {
        let (plan, _, _) = self.run(true).await;
        assert!(plan.is_empty(), "{what}: planned again: {:#?}", plan);
    }
}

fn template() -> Arc<tempfile::TempDir> {
    Arc::new(cplane_e2e::template_repo())
}

/// The mutating calls of provisioning the template from scratch, in order.
async fn provisioning_calls(repo: &Arc<tempfile::TempDir>) -> Vec<String> {
    let rig = Rig::new(FakeCloud::new(), repo, "HEAD").await;
    rig.converge(false).await;
    rig.assert_template_provisioned("clean run").await;
    rig.cloud.mutation_log()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_every_mutating_call_then_rerun_provisions_exactly_once() {
    let started = Instant::now();
    let repo = template();
    let calls = provisioning_calls(&repo).await;
    // 3 workspaces x (zone, delegation, certificate, validation record), as against moto.
    assert_eq!(calls.len(), 12, "{calls:#?}");
    for (k, call) in calls.iter().enumerate() {
        let what = format!("crash after call {} ({call})", k + 1);
        let rig = Rig::new(FakeCloud::new(), &repo, "HEAD").await;
        rig.cloud.crash_at(Trigger::Label(call.clone()));
        let (_, _, outcome) = rig.run(false).await;
        assert!(rig.cloud.fault_fired(), "{what}: the call came");
        assert_eq!(outcome, RunOutcome::Failed, "{what}");
        rig.cloud.heal();
        rig.converge(false).await;
        rig.assert_template_provisioned(&what).await;
        rig.assert_nothing_to_do(&what).await;
    }
    eprintln!("12 crashes and recoveries in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_at_every_mutating_call_is_resolved_without_duplicates() {
    let repo = template();
    let calls = provisioning_calls(&repo).await;
    for (k, call) in calls.iter().enumerate() {
        let what = format!("answer {} lost ({call})", k + 1);
        let rig = Rig::new(FakeCloud::new(), &repo, "HEAD").await;
        rig.cloud.lose_answer(Trigger::Nth(k as u64 + 1));
        rig.converge(true).await;
        assert!(rig.cloud.fault_fired(), "{what}");
        rig.assert_template_provisioned(&what).await;
    }
}

/// The template, then a commit removing initech (deletionPolicy Delete) and acme (Retain):
/// (repo, template commit, offboarding commit).
fn offboarding() -> (Arc<tempfile::TempDir>, String, String) {
    let repo = cplane_e2e::template_repo();
    let first = git2::Repository::open(repo.path())
        .and_then(|r| r.head()?.peel_to_commit().map(|c| c.id().to_string()))
        .expect("head");
    std::fs::remove_file(repo.path().join("workspaces/initech.yaml")).expect("rm");
    std::fs::remove_file(repo.path().join("workspaces/acme.yaml")).expect("rm");
    let second = cplane_e2e::commit_all(repo.path(), "offboard initech and acme");
    (Arc::new(repo), first, second)
}

/// The template provisioned, ready to apply the offboarding commit.
async fn provisioned(
    cloud: FakeCloud,
    repo: &Arc<tempfile::TempDir>,
    first: &str,
    second: &str,
) -> Rig {
    let mut rig = Rig::new(cloud, repo, first).await;
    rig.converge(false).await;
    rig.rev = second.to_owned();
    rig.cloud.reset_counts();
    rig
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_every_deprovisioning_call_then_rerun_deletes_exactly_initech() {
    let (repo, first, second) = offboarding();
    let calls = {
        let rig = provisioned(FakeCloud::new(), &repo, &first, &second).await;
        rig.converge(false).await;
        rig.cloud.mutation_log()
    };
    // acme (Retain): its delegation. initech: delegation, certificate, validation record, zone.
    assert_eq!(calls.len(), 5, "{calls:#?}");
    for (k, call) in calls.iter().enumerate() {
        let what = format!("crash after call {} ({call})", k + 1);
        let rig = provisioned(FakeCloud::new(), &repo, &first, &second).await;
        rig.cloud.crash_at(Trigger::Label(call.clone()));
        rig.run(false).await;
        assert!(rig.cloud.fault_fired(), "{what}");
        rig.cloud.heal();
        rig.converge(false).await;
        rig.assert_gone(&what, "333333333333", "w-initech.dev.sgp-1.cogrion.com");
        rig.assert_retained(&what, "111111111111", "w-acme.sgp-1.cogrion.com");
        rig.assert_provisioned_once(&what, "222222222222", "w-globex.sgp-1.cogrion.com", 1);
        let observed = rig.db.observe(&Scope::all()).await.expect("observe");
        let status = |id: &str| observed.tenants.get(id).map(|t| t.status.clone());
        assert_eq!(status("initech").as_deref(), Some("deleted"), "{what}");
        assert_eq!(status("acme").as_deref(), Some("retained"), "{what}");
        assert_eq!(
            observed.lookup.keys().collect::<Vec<_>>(),
            ["globex"],
            "{what}"
        );
        rig.assert_nothing_to_do(&what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_keeps_the_route53_and_acm_rules_apply_relies_on() {
    let fake = FakeCloud::new().issue_after(1);
    let tenant = Target::Tenant {
        role_arn: "arn:aws:iam::444444444444:role/p",
        external_id: "x",
        aws_region: "ap-southeast-1",
    };
    let parent = fake
        .create_zone(Target::Operator, "example.com", "p")
        .await
        .expect("parent");
    // A reused CallerReference returns the zone created with it, never a second one.
    let z = fake
        .create_zone(tenant, "w-a.example.com", "ref-1")
        .await
        .expect("zone");
    let again = fake
        .create_zone(tenant, "w-a.example.com", "ref-1")
        .await
        .expect("same zone");
    assert_eq!(again, z);
    assert_eq!(fake.zones("444444444444").len(), 1);
    assert_eq!(
        fake.calls().get(&(
            "route53:CreateHostedZone".into(),
            "HostedZoneAlreadyExists".into()
        )),
        Some(&1)
    );
    // Once its zone is deleted, the CallerReference stays used.
    fake.delete_zone(tenant, &z.id).await.expect("delete");
    fake.delete_zone(tenant, &z.id).await.expect("gone is fine");
    let err = fake
        .create_zone(tenant, "w-a.example.com", "ref-1")
        .await
        .expect_err("reused after delete");
    assert!(err.to_string().contains("HostedZoneAlreadyExists"), "{err}");
    let z = fake
        .create_zone(tenant, "w-a.example.com", "ref-2")
        .await
        .expect("zone");

    // DELETE must match; a record already gone is fine (and the batch is not applied).
    let ns = |values: Vec<String>| cplane_reconciler::cloud::RecordSet {
        name: "w-a.example.com".into(),
        rtype: "NS".into(),
        ttl: 300,
        values,
    };
    fake.upsert_records(Target::Operator, &parent.id, &[ns(z.name_servers.clone())])
        .await
        .expect("delegate");
    let err = fake
        .delete_records(
            Target::Operator,
            &parent.id,
            &[ns(vec!["other.example".into()])],
        )
        .await
        .expect_err("mismatch");
    assert!(
        !err.is_retryable() && err.to_string().contains("do not match"),
        "{err}"
    );
    fake.delete_records(Target::Operator, &parent.id, &[ns(z.name_servers.clone())])
        .await
        .expect("delete");
    fake.delete_records(Target::Operator, &parent.id, &[ns(z.name_servers.clone())])
        .await
        .expect("already gone");

    // Same token and tags: same ARN; issued after validation is resolvable (delegated) and
    // one more describe; in use: a retryable error.
    let tags = [("cplane:workspace", "w-a/g1")];
    let request = || {
        fake.request_certificate(
            tenant,
            "*.w-a.example.com",
            &["w-a.example.com"],
            "tok",
            &tags,
        )
    };
    let arn = request().await.expect("request");
    assert_eq!(request().await.expect("again"), arn);
    let cert = fake
        .describe_certificate(tenant, &arn)
        .await
        .expect("describe");
    assert_eq!(
        cert.validation_records.len(),
        1,
        "wildcard and apex share one"
    );
    fake.upsert_records(tenant, &z.id, &cert.validation_records)
        .await
        .expect("validation record");
    let status = || async {
        fake.describe_certificate(tenant, &arn)
            .await
            .expect("describe")
            .status
    };
    assert_eq!(
        status().await,
        "PENDING_VALIDATION",
        "not delegated: not resolvable"
    );
    fake.upsert_records(Target::Operator, &parent.id, &[ns(z.name_servers.clone())])
        .await
        .expect("delegate");
    assert_eq!(
        status().await,
        "PENDING_VALIDATION",
        "first describe that resolves"
    );
    assert_eq!(status().await, "ISSUED");
    fake.set_in_use("444444444444", &arn, true);
    let err = fake
        .delete_certificate(tenant, &arn)
        .await
        .expect_err("in use");
    assert!(err.is_retryable(), "{err}");
    fake.set_in_use("444444444444", &arn, false);
    fake.delete_certificate(tenant, &arn).await.expect("delete");
    fake.delete_certificate(tenant, &arn)
        .await
        .expect("gone is fine");
    let err = fake
        .delete_zone(tenant, &z.id)
        .await
        .expect_err("validation record still there");
    assert!(err.to_string().contains("HostedZoneNotEmpty"), "{err}");

    // A lost answer: the change stands, the caller sees a retryable error.
    fake.lose_answer(Trigger::Nth(1));
    let err = fake
        .delete_records(tenant, &z.id, &cert.validation_records)
        .await
        .expect_err("lost");
    assert!(err.is_retryable() && fake.fault_fired(), "{err}");
    fake.delete_zone(tenant, &z.id).await.expect("now empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_recreated_after_deletion_converges_in_one_run() {
    let (repo, first, second) = offboarding();
    // Certificates issue at once, so the run re-creating initech goes all the way to `active`.
    let cloud = FakeCloud::new().issue_after(0);
    let mut rig = provisioned(cloud, &repo, &first, &second).await;
    rig.converge(false).await;
    rig.assert_gone(
        "offboarded",
        "333333333333",
        "w-initech.dev.sgp-1.cogrion.com",
    );
    // Back again: generation 2, new keys; the journal of generation 1 is cleared once, and
    // what this run journals stays.
    rig.rev = first;
    let (plan, report, outcome) = rig.run(false).await;
    assert_eq!(
        outcome,
        RunOutcome::Converged,
        "{:?}",
        plan.steps
            .iter()
            .zip(&report.as_ref().expect("applied").outcomes)
            .map(|(s, o)| format!("{} {}: {o:?}", s.workspace, s.action))
            .collect::<Vec<_>>()
    );
    rig.assert_nothing_to_do("re-created").await;
    rig.assert_provisioned_once(
        "re-created",
        "333333333333",
        "w-initech.dev.sgp-1.cogrion.com",
        2,
    );
    // acme was retained: same generation, same zone and certificate, delegated again.
    rig.assert_provisioned_once("re-added", "111111111111", "w-acme.sgp-1.cogrion.com", 1);
}

/// A zone that still holds records cplane did not create (external-dns's) is not deleted and
/// not retried into `HostedZoneNotEmpty`: the step waits and names them; with
/// `delete_foreign_records` they go with the zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_with_foreign_records_waits_and_lists_them_until_told_to_delete_them() {
    let (repo, first, second) = offboarding();
    let mut rig = provisioned(FakeCloud::new(), &repo, &first, &second).await;
    let zone = "w-initech.dev.sgp-1.cogrion.com";
    let account = "333333333333";
    let zone_id = rig.zones(account, zone)[0].id.clone();
    let tenant = Target::Tenant {
        role_arn: "arn:aws:iam::333333333333:role/cogrion-provisioner",
        external_id: "initech-0d5e8a17",
        aws_region: "ap-southeast-1",
    };
    let foreign = [
        ("trino.w-initech.dev.sgp-1.cogrion.com", "A", "203.0.113.7"),
        (
            "superset.w-initech.dev.sgp-1.cogrion.com",
            "A",
            "203.0.113.8",
        ),
    ]
    .map(|(name, rtype, value)| cplane_reconciler::cloud::RecordSet {
        name: name.into(),
        rtype: rtype.into(),
        ttl: 60,
        values: vec![value.into()],
    });
    rig.cloud
        .upsert_records(tenant, &zone_id, &foreign)
        .await
        .expect("external-dns writes");
    for run in 1..=3 {
        let (plan, report, outcome) = rig.run(false).await;
        assert_eq!(outcome, RunOutcome::Converging, "run {run}");
        let report = report.expect("applied");
        let waiting: Vec<String> = plan
            .steps
            .iter()
            .zip(&report.outcomes)
            .filter_map(|(s, o)| match o {
                cplane_reconciler::apply::Outcome::Waiting(why) => {
                    Some(format!("{}: {why}", s.workspace))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            waiting,
            ["initech: zone holds 2 record set(s) cplane did not create: superset.w-initech.dev.sgp-1.cogrion.com A, trino.w-initech.dev.sgp-1.cogrion.com A; delete them, or run with --delete-foreign-records to delete them with the zone"],
            "run {run}"
        );
    }
    assert_eq!(rig.zones(account, zone).len(), 1, "not deleted");
    assert_eq!(rig.delegation(zone), None, "but no longer delegated");
    assert_eq!(
        rig.cloud.calls().get(&(
            "route53:DeleteHostedZone".into(),
            "HostedZoneNotEmpty".into()
        )),
        None,
        "never tried into HostedZoneNotEmpty"
    );
    assert!(
        rig.cloud.records(&zone_id).len() >= 4,
        "the foreign records are untouched"
    );

    rig.options.delete_foreign_records = true;
    rig.converge(false).await;
    rig.assert_gone("forced", account, zone);
    rig.assert_nothing_to_do("forced").await;
}

// The property: plan(apply(plan(desired, observed))) is empty, over generated histories.

/// Regions × environments of the template: sgp-1 is live, fra-1 planned (out of scope).
const PLACES: [(&str, &str); 3] = [("sgp-1", "prod"), ("sgp-1", "dev"), ("fra-1", "prod")];
const IDS: [&str; 5] = ["alpha", "bravo", "charlie", "delta", "echo"];
const GENERATIONS: usize = 3;

#[derive(Debug, Clone)]
struct Generated {
    place: usize,
    account: u8,
    /// Per generation: present, and with deletionPolicy Delete.
    present: [bool; GENERATIONS],
    delete: [bool; GENERATIONS],
    /// After generation g is applied: delete its delegation, its validation record.
    drop_delegation: [bool; GENERATIONS],
    drop_validation: [bool; GENERATIONS],
}

fn generated() -> impl Strategy<Value = Generated> {
    (
        0..PLACES.len(),
        0u8..3,
        any::<[bool; GENERATIONS]>(),
        any::<[bool; GENERATIONS]>(),
        any::<[bool; GENERATIONS]>(),
        any::<[bool; GENERATIONS]>(),
    )
        .prop_map(
            |(place, account, present, delete, drop_delegation, drop_validation)| Generated {
                place,
                account,
                present,
                delete,
                drop_delegation,
                drop_validation,
            },
        )
}

fn account_id(n: u8) -> String {
    format!("5000000000{n:02}")
}

fn workspace_yaml(id: &str, w: &Generated, g: usize) -> String {
    let (region, env) = PLACES[w.place];
    let account = account_id(w.account);
    let policy = if w.delete[g] { "Delete" } else { "Retain" };
    format!(
        "apiVersion: cplane/v1\nkind: Workspace\nmetadata:\n  name: {id}\nspec:\n  region: {region}\n  environment: {env}\n  account: customer-{n}\n  aws:\n    accountId: \"{account}\"\n    roleArn: arn:aws:iam::{account}:role/cogrion-provisioner\n    externalId: ext-{id}\n  deletionPolicy: {policy}\n",
        n = w.account
    )
}

fn zone_of(id: &str, w: &Generated) -> String {
    match PLACES[w.place] {
        ("sgp-1", "prod") => format!("w-{id}.sgp-1.cogrion.com"),
        ("sgp-1", "dev") => format!("w-{id}.dev.sgp-1.cogrion.com"),
        _ => format!("w-{id}.fra-1.cogrion.com"),
    }
}

/// What the cloud should hold for one workspace after a generation.
#[derive(Debug, Clone, Copy, Default)]
struct Expect {
    /// Provisioned (present, or removed with Retain) with this generation's keys.
    provisioned: Option<i64>,
    /// The generation its next provisioning uses.
    generation: i64,
    /// Its last removal deleted it: the next provisioning is one generation up.
    deleted: bool,
    /// Drift was applied and not repaired since (it was removed with Retain: kept as it is).
    drifted: bool,
    /// Removed with Retain: zone and certificate kept, delegation removed.
    retained: bool,
}

async fn check_history(workspaces: Vec<Generated>) {
    let repo = template();
    let rig = Rig::new(FakeCloud::new().issue_after(0), &repo, "HEAD").await;
    let dir = rig.repo.path().join("workspaces");
    let mut expect: BTreeMap<&str, Expect> = IDS
        .iter()
        .map(|id| {
            let e = Expect {
                generation: 1,
                ..Expect::default()
            };
            (*id, e)
        })
        .collect();
    for g in 0..GENERATIONS {
        write_generation(&dir, &workspaces, g);
        cplane_e2e::commit_all(repo.path(), &format!("generation {g}"));
        let what = format!("generation {g} of {workspaces:#?}");
        let (plan, report, outcome) = rig.run(false).await;
        assert_eq!(
            outcome,
            RunOutcome::Converged,
            "{what}: one run converges: {:?}",
            status::errors(&plan, &report.expect("applied"))
        );
        rig.assert_nothing_to_do(&what).await;

        for (id, w) in IDS.iter().zip(&workspaces) {
            let e = expect.get_mut(id).expect("every id");
            if PLACES[w.place].0 != "sgp-1" {
                continue; // fra-1 is planned, not live: out of scope
            }
            if w.present[g] {
                if e.deleted {
                    e.generation += 1;
                    e.deleted = false;
                }
                e.provisioned = Some(e.generation);
                e.drifted = false;
                e.retained = false;
            } else if e.provisioned.is_some() && w.delete[last_present(w, g)] {
                e.provisioned = None;
                e.deleted = true;
                e.drifted = false;
            } else if e.provisioned.is_some() {
                e.retained = true;
            }
        }
        for (id, w) in IDS.iter().zip(&workspaces) {
            let account = account_id(w.account);
            let zone = zone_of(id, w);
            let e = expect[id];
            match e.provisioned {
                None => rig.assert_gone(&what, &account, &zone),
                Some(_) if e.retained => rig.assert_retained(&what, &account, &zone),
                Some(generation) if e.drifted => {
                    assert_eq!(
                        rig.zones(&account, &zone).len(),
                        1,
                        "{what}: {zone} retained"
                    );
                    assert_eq!(rig.certificates(&account, &zone).len(), 1, "{what}: {zone}");
                    let _ = generation;
                }
                Some(generation) => rig.assert_provisioned_once(&what, &account, &zone, generation),
            }
        }

        // Drift between generations: hand-deleted delegations and validation records.
        for (id, w) in IDS.iter().zip(&workspaces) {
            let e = expect.get_mut(id).expect("every id");
            if e.provisioned.is_none() || !w.present[g] {
                continue;
            }
            let zone = zone_of(id, w);
            if w.drop_delegation[g] {
                assert!(rig.cloud.remove_record(&rig.parent, &zone, "NS"), "{zone}");
                e.drifted = true;
            }
            if w.drop_validation[g] {
                let z = &rig.zones(&account_id(w.account), &zone)[0];
                for r in rig.cloud.records(&z.id) {
                    if r.rtype == "CNAME" {
                        assert!(rig.cloud.remove_record(&z.id, &r.name, "CNAME"));
                    }
                }
                e.drifted = true;
            }
        }
    }
}

/// The last generation up to `g` in which `w` was present (its row's deletion policy).
fn last_present(w: &Generated, g: usize) -> usize {
    (0..=g).rev().find(|i| w.present[*i]).unwrap_or(0)
}

fn write_generation(dir: &Path, workspaces: &[Generated], g: usize) {
    for entry in std::fs::read_dir(dir).expect("workspaces dir") {
        std::fs::remove_file(entry.expect("entry").path()).expect("rm");
    }
    for (id, w) in IDS.iter().zip(workspaces) {
        if w.present[g] {
            std::fs::write(dir.join(format!("{id}.yaml")), workspace_yaml(id, w, g))
                .expect("write workspace");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn after_apply_planning_again_finds_nothing_to_do(
        workspaces in prop::collection::vec(generated(), 1..=IDS.len())
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(check_history(workspaces));
    }
}

// Drift in tenant accounts (issue 14, item 6): zones and certificates found wrong are repaired
// or reported, once each, and every zone is read at least once an hour.

/// The template provisioned; acme's zone id and certificate ARN.
async fn provisioned_template() -> (Rig, String, String) {
    let rig = Rig::new(FakeCloud::new().issue_after(0), &template(), "HEAD").await;
    rig.converge(false).await;
    let zone_id = rig.zones("111111111111", "w-acme.sgp-1.cogrion.com")[0]
        .id
        .clone();
    let arn = rig.cloud.certificates("111111111111")[0].arn.clone();
    rig.cloud.reset_counts();
    (rig, zone_id, arn)
}

/// One run's steps with their reasons: `workspace action (reason)`.
fn planned(plan: &Plan) -> Vec<String> {
    plan.steps
        .iter()
        .map(|s| {
            format!(
                "{} {} {} ({})",
                s.workspace,
                s.action.symbol(),
                s.action,
                s.reason
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_zone_deleted_by_hand_is_created_again_delegated_and_validated() {
    let (rig, zone_id, _) = provisioned_template().await;
    assert!(rig.cloud.drop_zone(&zone_id));
    let (plan, _, outcome) = rig.run(false).await;
    assert_eq!(outcome, RunOutcome::Converged, "{:#?}", planned(&plan));
    assert_eq!(
        planned(&plan),
        [
            "acme + route53 hosted zone w-acme.sgp-1.cogrion.com (tenant account) (drift: tenant zone deleted)",
            "acme ~ route53 NS w-acme.sgp-1.cogrion.com in sgp-1.cogrion.com (drift: restore) (drift: tenant zone created again)",
            "acme ~ route53 validation CNAMEs in w-acme.sgp-1.cogrion.com (drift: restore) (drift: tenant zone created again)",
        ]
    );
    let zones = rig.zones("111111111111", "w-acme.sgp-1.cogrion.com");
    assert_eq!(zones.len(), 1, "{zones:?}");
    assert_ne!(zones[0].id, zone_id, "a new zone");
    rig.assert_provisioned_once(
        "re-created zone",
        "111111111111",
        "w-acme.sgp-1.cogrion.com",
        1,
    );
    let cert = &rig.cloud.certificates("111111111111")[0];
    let cname = rig
        .cloud
        .records(&zones[0].id)
        .into_iter()
        .filter(|r| r.rtype == "CNAME")
        .count();
    assert_eq!(
        cname, 1,
        "the validation record is in the new zone ({cert:?})"
    );
    rig.assert_nothing_to_do("re-created zone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_of_the_same_name_made_by_someone_else_is_reported_not_guessed_at() {
    let (rig, zone_id, _) = provisioned_template().await;
    assert!(rig.cloud.drop_zone(&zone_id));
    let tenant = Target::Tenant {
        role_arn: "arn:aws:iam::111111111111:role/cogrion-provisioner",
        external_id: "acme-7f3c2a9e",
        aws_region: "ap-southeast-1",
    };
    let theirs = rig
        .cloud
        .create_zone(tenant, "w-acme.sgp-1.cogrion.com", "someone-else")
        .await
        .expect("their zone");
    let (plan, _, outcome) = rig.run(false).await;
    assert_eq!(outcome, RunOutcome::Failed);
    assert!(
        plan.steps.iter().all(|s| s.workspace != "acme"),
        "{:#?}",
        planned(&plan)
    );
    assert_eq!(plan.refused.len(), 1);
    assert_eq!(
        plan.refused[0].message,
        format!("drift: hosted zone {zone_id} (w-acme.sgp-1.cogrion.com) was deleted from the tenant account, which now holds other zones of that name ({}) that cplane did not create: delete them, and cplane creates the zone again", theirs.id)
    );
    assert_eq!(
        rig.zones("111111111111", "w-acme.sgp-1.cogrion.com").len(),
        1,
        "no zone added"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_failed_and_expiring_certificates_are_replaced_once() {
    let domain = "*.w-acme.sgp-1.cogrion.com";
    // (what happens to the certificate, the step's reason, whether the old one is kept)
    let soon = std::time::SystemTime::now() + std::time::Duration::from_secs(10 * 24 * 3600);
    for (case, reason, old_kept) in [
        ("deleted", "drift: certificate deleted".to_owned(), false),
        ("failed", "drift: certificate FAILED".to_owned(), false),
        (
            "expiring",
            format!(
                "drift: certificate expires {}, not renewed",
                humantime::format_rfc3339_seconds(soon)
            ),
            true,
        ),
    ] {
        let (rig, _, arn) = provisioned_template().await;
        let tenant = Target::Tenant {
            role_arn: "arn:aws:iam::111111111111:role/cogrion-provisioner",
            external_id: "acme-7f3c2a9e",
            aws_region: "ap-southeast-1",
        };
        match case {
            "deleted" => rig
                .cloud
                .delete_certificate(tenant, &arn)
                .await
                .expect("delete"),
            "failed" => assert!(rig.cloud.set_certificate(&arn, "FAILED", None)),
            _ => assert!(rig.cloud.set_certificate(&arn, "ISSUED", Some(soon))),
        }
        let (plan, _, outcome) = rig.run(false).await;
        assert_eq!(
            outcome,
            RunOutcome::Converged,
            "{case}: {:#?}",
            planned(&plan)
        );
        assert_eq!(
            planned(&plan),
            [
                format!("acme + acm certificate {domain} + w-acme.sgp-1.cogrion.com (tenant account) ({reason})"),
                "acme ~ route53 validation CNAMEs in w-acme.sgp-1.cogrion.com (drift: restore) (drift: certificate replaced)".to_owned(),
                format!("acme ~ wait for acm certificate {domain} to be ISSUED (drift: certificate replaced)"),
            ],
            "{case}"
        );
        let certs = rig.cloud.certificates("111111111111");
        let new: Vec<_> = certs.iter().filter(|c| c.arn != arn).collect();
        assert_eq!(new.len(), 1, "{case}: one replacement: {certs:#?}");
        assert_eq!(new[0].status, "ISSUED", "{case}");
        assert_eq!(new[0].region, "ap-southeast-1", "{case}");
        assert_eq!(
            certs.iter().any(|c| c.arn == arn),
            old_kept,
            "{case}: the old certificate kept only while it can still serve"
        );
        rig.assert_nothing_to_do(case).await;
        let (again, _, _) = rig.run(false).await;
        assert!(again.is_empty(), "{case}: {:#?}", planned(&again));
    }
}

/// Crash after every call of a certificate replacement and of a zone re-creation: resumed
/// with the key it was begun with, never a second certificate or zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_every_drift_repair_call_never_duplicates() {
    let calls = {
        let (rig, zone_id, arn) = provisioned_template().await;
        assert!(rig.cloud.drop_zone(&zone_id));
        assert!(rig.cloud.set_certificate(&arn, "FAILED", None));
        rig.converge(false).await;
        rig.cloud.mutation_log()
    };
    // zone, delegation, certificate, the failed one deleted, validation record.
    assert_eq!(calls.len(), 5, "{calls:#?}");
    for (k, call) in calls.iter().enumerate() {
        let what = format!("crash after repair call {} ({call})", k + 1);
        let (rig, zone_id, arn) = provisioned_template().await;
        assert!(rig.cloud.drop_zone(&zone_id));
        assert!(rig.cloud.set_certificate(&arn, "FAILED", None));
        rig.cloud.crash_at(Trigger::Label(call.clone()));
        rig.run(false).await;
        assert!(rig.cloud.fault_fired(), "{what}");
        rig.cloud.heal();
        rig.converge(false).await;
        assert_eq!(
            rig.zones("111111111111", "w-acme.sgp-1.cogrion.com").len(),
            1,
            "{what}: one zone"
        );
        let certs = rig.cloud.certificates("111111111111");
        assert_eq!(certs.len(), 1, "{what}: one certificate: {certs:#?}");
        assert_eq!(certs[0].status, "ISSUED", "{what}");
        rig.assert_provisioned_once(&what, "111111111111", "w-acme.sgp-1.cogrion.com", 1);
        rig.assert_nothing_to_do(&what).await;
    }
}

/// An hour of drift checks every 3 minutes over 10,000 provisioned workspaces: every tenant
/// zone and certificate is read at least once, and the calls of that hour are counted (the
/// figure the README gives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tenant_zone_is_checked_once_an_hour_at_ten_thousand_workspaces() {
    use cplane_reconciler::aws::observe;
    use cplane_reconciler::plan::{
        DesiredWorkspace, JournalEntry, JournalState, ObservedWorkspace, Policy, StepResult,
    };
    const N: usize = 10_000;
    let cloud = FakeCloud::new();
    let mut desired = BTreeMap::new();
    let mut observed = cplane_reconciler::plan::Observed::default();
    for i in 0..N {
        let id = format!("t{i:05}");
        let account = format!("{:012}", 100_000_000_000u64 + i as u64);
        let w = DesiredWorkspace {
            id: id.clone(),
            region: "sgp-1".into(),
            environment: "prod".into(),
            account: id.clone(),
            aws_account_id: account.clone(),
            aws_region: "ap-southeast-1".into(),
            role_arn: format!("arn:aws:iam::{account}:role/p"),
            external_id: format!("x-{id}"),
            zone_name: format!("w-{id}.sgp-1.cogrion.com"),
            parent_zone: PARENT.into(),
            bff_url: format!("https://bff.w-{id}.sgp-1.cogrion.com"),
            deletion_policy: Policy::Retain,
        };
        let tenant = Target::Tenant {
            role_arn: &w.role_arn,
            external_id: &w.external_id,
            aws_region: &w.aws_region,
        };
        let zone = cloud
            .create_zone(tenant, &w.zone_name, &id)
            .await
            .expect("zone");
        let domain = format!("*.{}", w.zone_name);
        let arn = cloud
            .request_certificate(tenant, &domain, &[], &format!("tok{i}"), &[])
            .await
            .expect("certificate");
        let valid_for_a_year =
            std::time::SystemTime::now() + std::time::Duration::from_secs(365 * 86_400);
        assert!(cloud.set_certificate(&arn, "ISSUED", Some(valid_for_a_year)));
        let done = |result| JournalEntry {
            state: JournalState::Done,
            result: Some(result),
        };
        for entry in [
            done(StepResult::CreateZone {
                zone_id: zone.id,
                name_servers: zone.name_servers,
            }),
            done(StepResult::ValidationRecords { records: vec![] }),
            done(StepResult::RequestCertificate { arn: arn.clone() }),
            done(StepResult::AwaitCertificate {
                arn: Some(arn),
                status: "ISSUED".into(),
            }),
        ] {
            let kind = entry.result.as_ref().expect("result").kind();
            observed.journal.insert((id.clone(), kind), entry);
        }
        observed.workspaces.insert(
            id.clone(),
            ObservedWorkspace {
                applied: w.clone(),
                generation: 1,
                status: Status::Active,
            },
        );
        desired.insert(id, w);
    }
    cloud.reset_counts();
    let mut reads: BTreeMap<String, usize> = BTreeMap::new();
    let start = 1_700_000_000_000i64;
    let mut previous = Some(start - 3 * 60_000);
    let mut now = start;
    let mut checks = 0;
    while now <= start + 3_600_000 - 3 * 60_000 {
        let window = observe::Sample::HOURLY.window(previous, now);
        let found = observe::tenants(
            &cloud,
            &desired,
            &observed,
            window,
            std::time::SystemTime::now(),
        )
        .await
        .expect("check");
        for id in found.validation.keys() {
            *reads.entry(id.clone()).or_default() += 1;
        }
        checks += 1;
        previous = Some(now);
        now += 3 * 60_000;
    }
    assert_eq!(checks, 20);
    assert_eq!(reads.len(), N, "every zone read within the hour");
    assert!(reads.values().all(|n| *n == 1), "each exactly once");
    let calls = cloud.calls();
    let total: u64 = calls.values().sum();
    eprintln!("an hour of drift checks (20, every 3 minutes) over {N} tenant zones: {total} calls: {calls:?}");
    for op in ["route53:ListResourceRecordSets", "acm:DescribeCertificate"] {
        assert_eq!(
            calls.get(&(op.into(), "ok".into())),
            Some(&(N as u64)),
            "{op}"
        );
    }
    assert_eq!(total, 2 * N as u64, "nothing else: {calls:?}");
}
