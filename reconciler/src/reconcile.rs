//! One reconcile run, as `cplane plan` and `cplane apply` perform it:
//! fetch → validate + render → observe (database, batched cloud reads) → plan → apply →
//! publish bundles → status. Every exit path records the run and the status conditions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::apply::{self, Context, Progress, Report};
use crate::aws::observe::{self, Sample};
use crate::aws::Aws;
use crate::check::{check_memo, Keep, RenderMemo};
use crate::cloud::Cloud;
use crate::db::Db;
use crate::global::{Identity, LookupSink};
use crate::manifests::ClusterChanges;
use crate::plan::{self, Options, Plan, Providers};
use crate::render::Cluster;
use crate::source::Snapshot;

/// A bundle to publish: its cluster, digest and gzip-compressed canonical form.
pub type Publishable = (Cluster, String, Vec<u8>);

/// What a run was asked to do.
pub struct Request {
    /// Regions and environments in scope.
    pub scope: plan::Scope,
    /// Deletion threshold and confirmation.
    pub options: Options,
    /// Only plan.
    pub dry_run: bool,
    /// Which tenant zones the drift check reads (parent zones are always read in full):
    /// [`Sample::HOURLY`] by default.
    pub drift: Sample,
    /// Digests of earlier runs' bundles: clusters whose inputs did not change are not rendered
    /// again (a long-running server keeps one; one-shot runs pass `None`).
    pub memo: Option<Arc<Mutex<RenderMemo>>>,
}

/// How a run ended.
pub enum RunResult {
    /// The revision failed validation: nothing applied; every error.
    Refused(Vec<String>),
    /// Planned (and applied, unless a dry run).
    Planned {
        /// The plan.
        plan: Plan,
        /// Outcomes, when applied.
        report: Option<Report>,
        /// Bundles whose digest changed and were published: (cluster, digest, generation).
        published: Vec<(String, String, i64)>,
        /// Notes for the user (drift check skipped, cloud none, ...).
        notes: Vec<String>,
        /// The validated model of the revision (for incremental runs that follow).
        model: Option<Box<cplane_schema::Model>>,
        /// What the revision changes in each cluster in scope against its published bundle
        /// (dry runs only; empty for applied runs, which publish instead).
        clusters: Vec<ClusterChanges>,
    },
}

/// `Cplane-Confirm-Deletions: N` in the commit message confirms removing up to N workspaces.
pub fn confirmed_by_commit(message: &str) -> Option<usize> {
    message.lines().rev().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim().eq_ignore_ascii_case("Cplane-Confirm-Deletions"))
            .then(|| v.trim().parse().ok())?
    })
}

/// The ports of steps 8 and 9 (the global lookup sink, Keycloak) for a run with a cloud.
pub enum GlobalPorts {
    /// Built from the revision's `cplane.yaml` (Keycloak, Workers KV; DynamoDB with this AWS
    /// configuration).
    FromConfig(Option<Box<aws_config::SdkConfig>>),
    /// Given (tests: in-memory fakes); used when `cplane.yaml` configures the step.
    Given {
        /// Step 9's identity provider.
        identity: Option<Arc<dyn Identity>>,
        /// Step 8's lookup sink.
        lookup_sink: Option<Arc<dyn LookupSink>>,
    },
}

/// Runs one reconcile of `snapshot` against AWS (or no cloud).
pub async fn run(
    snapshot: Snapshot,
    db: &Db,
    cloud: Option<Aws>,
    request: Request,
    progress: Progress,
) -> Result<RunResult, crate::db::Error> {
    let global = GlobalPorts::FromConfig(cloud.as_ref().map(|a| Box::new(a.sdk_config().clone())));
    run_ports(snapshot, db, port(cloud), global, request, progress).await
}

fn port(aws: Option<Aws>) -> Option<Arc<dyn Cloud>> {
    aws.map(|a| Arc::new(a) as Arc<dyn Cloud>)
}

/// Runs one reconcile of `snapshot` against any [`Cloud`] (or no cloud); steps 8 and 9 use
/// the adapters `cplane.yaml` configures (DynamoDB is not available this way).
pub async fn run_with(
    snapshot: Snapshot,
    db: &Db,
    cloud: Option<Arc<dyn Cloud>>,
    request: Request,
    progress: Progress,
) -> Result<RunResult, crate::db::Error> {
    run_ports(
        snapshot,
        db,
        cloud,
        GlobalPorts::FromConfig(None),
        request,
        progress,
    )
    .await
}

/// Runs one reconcile of `snapshot` against any [`Cloud`] (or no cloud) and the ports of
/// steps 8 and 9 `global` gives. Without a cloud (`--cloud none`) no outside system is
/// called: steps 8 and 9 are not planned either.
pub async fn run_ports(
    snapshot: Snapshot,
    db: &Db,
    cloud: Option<Arc<dyn Cloud>>,
    global: GlobalPorts,
    request: Request,
    progress: Progress,
) -> Result<RunResult, crate::db::Error> {
    let started = Instant::now();
    let started_at = crate::db::now_ms();
    let Snapshot {
        commit,
        files,
        message,
    } = snapshot;
    let scope = request.scope.label();
    let run_id = format!("{started_at}-{}", &commit[..12.min(commit.len())]);

    // Validate and render; keep the bundles of the clusters in scope whose digest differs from
    // the published one (to publish them). Unchanged bundles are dropped as soon as they are
    // digested, so memory stays flat however many clusters there are.
    // Compared with what rollouts decided too: a cluster waiting in a rollout is no change.
    let published = crate::rollout::decided_digests(db).await?;
    // A dry run keeps the parsed objects, to say what changes in each cluster.
    let changed = if request.dry_run {
        Keep::Bundle
    } else {
        Keep::Gzip
    };
    let keep = |c: &Cluster, digest: &str| {
        if request.scope.includes(&c.region, true, &c.environment)
            && published.get(&c.id).map(String::as_str) != Some(digest)
        {
            changed
        } else {
            Keep::Nothing
        }
    };
    let checked = match &request.memo {
        Some(memo) => check_memo(files, keep, Some(&mut memo.lock().expect("render memo"))),
        None => check_memo(files, keep, None),
    };
    if !checked.is_valid() {
        let errors: Vec<String> = checked
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .collect();
        if !request.dry_run {
            let run = Run {
                db,
                commit: &commit,
                scope: &scope,
                run_id: &run_id,
                started,
                started_at,
                rollout: None,
            };
            record_refusal(run, &errors).await?;
        }
        return Ok(RunResult::Refused(errors));
    }
    let model = checked.model.as_ref().expect("valid implies a model");
    let mut desired = plan::desired_workspaces(model, &request.scope);
    let mut observed = db.observe(&request.scope).await?;
    plan::add_moved_out(model, &request.scope, &observed, &mut desired);
    cplane_core::rollout::hold_suspended(model, &mut desired, &mut observed);
    let mut notes = Vec::new();
    match &cloud {
        Some(cloud) => {
            let aws = cloud.as_ref();
            match observe::delegations(aws, &desired).await {
                Ok(found) => observed.delegations = Some(found),
                Err(e) => notes.push(format!("drift check of NS delegations skipped: {e}")),
            }
            // The tenant zones whose slot fell since the previous check (each at least once
            // per period); a dry run reads the same window and records nothing.
            let previous = db.drift_checked_until(&scope).await?;
            let window = request.drift.window(previous, started_at);
            match observe::tenants(
                aws,
                &desired,
                &observed,
                window,
                std::time::SystemTime::now(),
            )
            .await
            {
                Ok(found) => {
                    observed.validation = found.validation;
                    observed.tenant_drift = found.drift;
                    if !request.dry_run {
                        db.set_drift_checked_until(&scope, started_at).await?;
                    }
                }
                Err(e) => notes.push(format!("drift check of validation records skipped: {e}")),
            }
        }
        None => notes.push(
            "cloud: none — AWS is not called; only the database is planned and written".into(),
        ),
    }
    let ports = if cloud.is_some() {
        global_ports(model, global, &mut notes)
    } else {
        Ports::default()
    };
    observe_global(&ports, &desired, &mut observed, &mut notes).await;
    let mut options = request.options;
    if let Some(n) = confirmed_by_commit(&message) {
        let removing = observed
            .workspaces
            .iter()
            .filter(|(id, w)| !desired.contains_key(*id) && !w.status.is_gone())
            .count();
        if n >= removing {
            options.confirmed = true;
        }
    }
    let plan = plan::plan_with(&desired, &observed, options, &ports.providers);
    if request.dry_run {
        let clusters = cluster_changes(db, &checked.clusters).await?;
        return Ok(RunResult::Planned {
            plan,
            report: None,
            published: Vec::new(),
            notes,
            model: None,
            clusters,
        });
    }

    let bundles: Vec<Publishable> = checked
        .clusters
        .into_iter()
        .filter_map(|r| r.gz.map(|gz| (r.cluster, r.digest, gz)))
        .collect();
    let rollout_input = crate::rollout::Input::from_model(model);
    let run = Run {
        db,
        commit: &commit,
        scope: &scope,
        run_id: &run_id,
        started,
        started_at,
        rollout: Some(&rollout_input),
    };
    let (report, published) = apply_and_record_ports(
        run, cloud, ports, &plan, desired, observed, bundles, progress,
    )
    .await?;
    let model = checked.model.expect("valid implies a model");
    Ok(RunResult::Planned {
        plan,
        report: Some(report),
        published,
        notes,
        model: Some(Box::new(model)),
        clusters: Vec::new(),
    })
}

/// What a revision changes in each cluster in `scope`: `rendered` is every cluster of the
/// revision, with its bundle kept ([`Keep::Bundle`]) where its digest differs from the
/// published one; the published bundles are read from the database. A cluster the revision no
/// longer has (a removed workspace) is not listed: its published bundle stays as it is (the
/// plan's steps say what happens to the workspace). Clusters without changes are left out;
/// the order is the renderer's (platform clusters first, then tenant clusters by id).
pub async fn cluster_changes(
    db: &Db,
    rendered: &[crate::check::Rendered],
) -> Result<Vec<ClusterChanges>, crate::db::Error> {
    let heads = db.clusters().await?;
    let published: BTreeMap<&str, &str> = heads
        .iter()
        .map(|(id, _, _, _, digest, _)| (id.as_str(), digest.as_str()))
        .collect();
    let wanted: Vec<String> = rendered
        .iter()
        .filter(|r| r.bundle.is_some())
        .filter_map(|r| published.get(r.cluster.id.as_str()).map(|d| d.to_string()))
        .collect();
    let bodies = db.bundle_bodies(&wanted).await?;
    let objects_of = |digest: Option<&str>| -> Result<Vec<serde_json::Value>, crate::db::Error> {
        let Some(gz) = digest.and_then(|d| bodies.get(d)) else {
            return Ok(Vec::new());
        };
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text)
            .map_err(|e| crate::db::Error::Corrupt(format!("a published bundle: {e}")))?;
        crate::manifests::parse_canonical(&text)
            .map_err(|e| crate::db::Error::Corrupt(format!("a published bundle: {e}")))
    };
    let mut out = Vec::new();
    for r in rendered {
        let Some(bundle) = &r.bundle else { continue };
        let from = published.get(r.cluster.id.as_str()).copied();
        let new: Vec<serde_json::Value> = bundle.objects.iter().map(|o| o.value.clone()).collect();
        let base = ClusterChanges {
            cluster: r.cluster.id.clone(),
            kind: match r.cluster.kind {
                crate::render::ClusterKind::Platform => "platform",
                crate::render::ClusterKind::Tenant => "tenant",
            }
            .into(),
            region: r.cluster.region.clone(),
            environment: r.cluster.environment.clone(),
            from: from.map(str::to_owned),
            to: Some(r.digest.clone()),
            added: Vec::new(),
            changed: Vec::new(),
            removed: Vec::new(),
        };
        let changes = crate::manifests::diff(base, &objects_of(from)?, &new);
        if !changes.is_empty() {
            out.push(changes);
        }
    }
    Ok(out)
}

/// Records a refused revision: the run, and a `Stalled` condition carrying every error while
/// the last good revision stays in force.
pub async fn record_refusal(run: Run<'_>, errors: &[String]) -> Result<(), crate::db::Error> {
    let Run {
        db,
        commit,
        scope,
        run_id,
        started,
        started_at,
        rollout: _,
    } = run;
    let last = db.applied_revision(scope).await?;
    let (outcome, conditions) = crate::status::refused(errors, commit, last.as_deref());
    db.record_run(
        run_id,
        commit,
        scope,
        &serde_json::json!(null),
        outcome.label(),
        errors,
        started_at,
        elapsed(started),
    )
    .await?;
    db.set_conditions(scope, commit, &conditions).await
}

/// Identity of one run, for recording it.
#[derive(Clone, Copy)]
pub struct Run<'a> {
    /// Database.
    pub db: &'a Db,
    /// Commit applied.
    pub commit: &'a str,
    /// Regions in scope (`*` for all).
    pub scope: &'a str,
    /// Run id.
    pub run_id: &'a str,
    /// When it started.
    pub started: Instant,
    /// When it started, unix millis.
    pub started_at: i64,
    /// What publishing needs of the revision (rollout policies, workspaces' labels, suspend
    /// and sync windows); `None`: publish every change at once.
    pub rollout: Option<&'a crate::rollout::Input>,
}

/// Applies `plan`, publishes the bundles whose digest changed, and records the status
/// conditions, the run and the applied revision. Shared by full and incremental runs.
pub async fn apply_and_record(
    run: Run<'_>,
    cloud: Option<Aws>,
    plan: &Plan,
    desired: BTreeMap<String, crate::plan::DesiredWorkspace>,
    observed: crate::plan::Observed,
    bundles: Vec<Publishable>,
    progress: Progress,
) -> Result<(Report, Vec<(String, String, i64)>), crate::db::Error> {
    apply_and_record_with(run, port(cloud), plan, desired, observed, bundles, progress).await
}

/// [`apply_and_record`] against any [`Cloud`] (or no cloud).
pub async fn apply_and_record_with(
    run: Run<'_>,
    cloud: Option<Arc<dyn Cloud>>,
    plan: &Plan,
    desired: BTreeMap<String, crate::plan::DesiredWorkspace>,
    observed: crate::plan::Observed,
    bundles: Vec<Publishable>,
    progress: Progress,
) -> Result<(Report, Vec<(String, String, i64)>), crate::db::Error> {
    let ports = Ports::default();
    apply_and_record_ports(
        run, cloud, ports, plan, desired, observed, bundles, progress,
    )
    .await
}

/// The ports of steps 8 and 9 a run uses, and what the planner is told of them.
#[derive(Default)]
pub struct Ports {
    /// What is configured and reachable (what the planner plans steps 8 and 9 for).
    pub providers: Providers,
    /// Step 9's identity provider.
    pub identity: Option<Arc<dyn Identity>>,
    /// Step 8's lookup sink.
    pub lookup_sink: Option<Arc<dyn LookupSink>>,
}

/// The ports `cplane.yaml` configures, from `global`; a configured step whose port cannot be
/// had is left out of the plan, and the notes say why.
pub fn global_ports(
    model: &cplane_schema::Model,
    global: GlobalPorts,
    notes: &mut Vec<String>,
) -> Ports {
    let mut providers = Providers::from_model(model);
    let spec = &model.platform.doc.spec;
    let (identity, lookup_sink) = match global {
        GlobalPorts::Given {
            identity,
            lookup_sink,
        } => (identity, lookup_sink),
        GlobalPorts::FromConfig(aws) => {
            let identity = spec.keycloak.as_ref().map(|k| {
                Arc::new(crate::adapters::keycloak::Keycloak::new(k)) as Arc<dyn Identity>
            });
            let sink = spec.tenant_lookup.as_ref().and_then(|l| {
                crate::adapters::lookup::from_spec(l, aws.as_deref())
                    .map_err(|e| notes.push(format!("step 8 skipped: {e}")))
                    .ok()
            });
            (identity, sink)
        }
    };
    if identity.is_none() {
        providers.identity = None;
    }
    if lookup_sink.is_none() {
        providers.lookup_sink = None;
    }
    notes.extend(providers.skipped());
    Ports {
        providers,
        identity: identity.filter(|_| model.platform.doc.spec.keycloak.is_some()),
        lookup_sink: lookup_sink.filter(|_| model.platform.doc.spec.tenant_lookup.is_some()),
    }
}

/// The drift checks of steps 8 and 9: the sink's entries (batched) and the realms' workspace
/// clients (paged), for the workspaces desired or being removed. A read that fails leaves
/// the observation `None` (the planner then trusts the journal) and says so in the notes.
pub async fn observe_global(
    ports: &Ports,
    desired: &BTreeMap<String, crate::plan::DesiredWorkspace>,
    observed: &mut crate::plan::Observed,
    notes: &mut Vec<String>,
) {
    let removing: Vec<&crate::plan::DesiredWorkspace> = observed
        .workspaces
        .iter()
        .filter(|(id, w)| !desired.contains_key(*id) && !w.status.is_gone())
        .map(|(_, w)| &w.applied)
        .collect();
    if let Some(sink) = &ports.lookup_sink {
        let ids = desired.keys().chain(removing.iter().map(|w| &w.id));
        match crate::global::observe_lookup(sink.as_ref(), ids).await {
            Ok(found) => observed.lookup_sink = Some(found),
            Err(e) => notes.push(format!(
                "drift check of the {} lookup sink skipped: {e}",
                sink.name()
            )),
        }
    }
    if let Some(idp) = &ports.identity {
        let realms: Vec<&crate::plan::Realm> = desired
            .values()
            .chain(removing.iter().copied())
            .filter_map(|w| ports.providers.realm(&w.region, &w.environment))
            .collect();
        match crate::global::observe_identity(idp.as_ref(), realms).await {
            Ok(found) => observed.identity_clients = Some(found),
            Err(e) => notes.push(format!("drift check of Keycloak clients skipped: {e}")),
        }
    }
}

/// [`apply_and_record_with`] with the ports of steps 8 and 9.
#[allow(clippy::too_many_arguments)] // the run's parts, each used once; a struct would only rename them
pub async fn apply_and_record_ports(
    run: Run<'_>,
    cloud: Option<Arc<dyn Cloud>>,
    ports: Ports,
    plan: &Plan,
    desired: BTreeMap<String, crate::plan::DesiredWorkspace>,
    observed: crate::plan::Observed,
    bundles: Vec<Publishable>,
    progress: Progress,
) -> Result<(Report, Vec<(String, String, i64)>), crate::db::Error> {
    let Run {
        db,
        commit,
        scope,
        run_id,
        started,
        started_at,
        rollout,
    } = run;
    let commit = commit.to_owned();
    let scope = scope.to_owned();
    // Every workspace this run decides about: desired ones and those with steps (removals).
    let decided: std::collections::BTreeSet<String> = desired
        .keys()
        .cloned()
        .chain(plan.steps.iter().map(|s| s.workspace.clone()))
        .collect();
    let mut ctx = Context::new(db.clone(), cloud, commit.clone(), desired, observed);
    ctx.identity = ports.identity;
    ctx.lookup_sink = ports.lookup_sink;
    let report = apply::apply(&ctx, plan, progress).await;
    // Drift found and repaired: facts about the cloud, which no database write holds, so
    // they go to the outbox in a transaction of their own.
    let drift = crate::events::drift_events(plan, &report, |ws| ctx.workspace_place(ws));
    if !drift.is_empty() {
        db.record_events(&drift).await?;
    }

    // Publish changed bundles (content-addressed; the cluster's generation bumps on change):
    // at once, or wave by wave when a stack change has a rollout policy ([`crate::rollout`]),
    // whose first wave goes out now.
    let published =
        crate::rollout::publish(db, &commit, rollout, &bundles, crate::db::now_ms()).await?;
    crate::rollout::advance(db, crate::db::now_ms()).await?;
    // Status: the outcome and conditions of the run, decided by the pure core; written with
    // the stalled workspaces this run clears and the regions' readiness after it.
    let (outcome, mut conditions) = crate::status::summarize(plan, &report);
    let stalled = db.entities_with("workspace", "Stalled").await?;
    conditions.extend(crate::status::unstalled(
        plan,
        &commit,
        stalled.iter().map(String::as_str),
        |ws| decided.contains(ws),
    ));
    db.set_conditions(&scope, &commit, &conditions).await?;
    let regions = crate::status::regions(&scope, &db.workspace_readiness().await?);
    db.set_conditions(&scope, &commit, &regions).await?;
    let errors = crate::status::errors(plan, &report);
    let plan_json = serde_json::to_value(plan).expect("plans serialize");
    db.record_run(
        run_id,
        &commit,
        &scope,
        &plan_json,
        outcome.label(),
        &errors,
        started_at,
        elapsed(started),
    )
    .await?;
    db.set_applied_revision(&scope, &commit).await?;
    Ok((report, published))
}

fn elapsed(started: Instant) -> i64 {
    i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_trailer_confirms_deletions() {
        assert_eq!(
            confirmed_by_commit("Remove trial tenants\n\nCplane-Confirm-Deletions: 7\n"),
            Some(7)
        );
        assert_eq!(confirmed_by_commit("Remove trial tenants"), None);
        assert_eq!(
            confirmed_by_commit("x\n\ncplane-confirm-deletions: many"),
            None
        );
    }
}
